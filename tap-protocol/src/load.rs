//! Load reports: what each worker instance did in the last period, so daemons (and through their
//! metrics, a scaler) can tell how much of the models' capacity the offered chunks need.
//!
//! Queue length says nothing here: with latest-wins lanes a backlog never forms, the daemon simply
//! supersedes chunks it cannot place. Capacity has to be measured where the work is done: an
//! instance that answered `answered` chunks while busy for `busy_ms` of `period_ms × slots` could
//! answer `answered / busy_ms × period_ms × slots` in the same period at full load.

use serde::{Deserialize, Serialize};

use crate::{safe_token, ModelId};

/// Subjects of every load report (`tap.v1.load.<name>.<version>`).
pub const LOAD_SUBJECTS: &str = "tap.v1.load.>";

/// Longest instance id accepted.
pub const MAX_INSTANCE_LEN: usize = 128;

/// Longest period a report may cover (a report is published every second).
pub const MAX_PERIOD_MS: u64 = 600_000;

/// Most inference slots one instance may claim.
pub const MAX_SLOTS: u32 = 1024;

/// The load subject of a model.
pub fn load_subject(model: &ModelId) -> String {
    format!(
        "tap.v1.load.{}.{}",
        safe_token(&model.name),
        safe_token(&model.version)
    )
}

/// One worker instance's last period.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LoadReport {
    /// Protocol version (1).
    pub v: u32,
    /// The model served.
    pub model: ModelId,
    /// The instance (unique per worker process).
    pub instance: String,
    /// Inferences it can run at once.
    pub slots: u32,
    /// Wall time the report covers, ms.
    pub period_ms: u64,
    /// Inference time summed over its slots, ms (≤ `period_ms × slots`).
    pub busy_ms: f64,
    /// Chunks answered with a prediction.
    pub answered: u64,
    /// Chunks refused (stale, would miss their deadline, malformed, internal error).
    pub refused: u64,
}

/// Why a load report was refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum LoadReportError {
    /// Not JSON of the right shape.
    #[error("unreadable load report: {0}")]
    Unreadable(String),
    /// Readable but impossible.
    #[error("invalid load report: {0}")]
    Invalid(&'static str),
}

impl LoadReport {
    /// Reads and checks a report.
    pub fn parse(payload: &[u8]) -> Result<LoadReport, LoadReportError> {
        let r: LoadReport = serde_json::from_slice(payload)
            .map_err(|e| LoadReportError::Unreadable(e.to_string()))?;
        if r.v != crate::VERSION {
            return Err(LoadReportError::Invalid("unknown version"));
        }
        if r.instance.is_empty() || r.instance.len() > MAX_INSTANCE_LEN {
            return Err(LoadReportError::Invalid("instance id empty or too long"));
        }
        if r.slots == 0 || r.slots > MAX_SLOTS {
            return Err(LoadReportError::Invalid("slots out of range"));
        }
        if r.period_ms == 0 || r.period_ms > MAX_PERIOD_MS {
            return Err(LoadReportError::Invalid("period out of range"));
        }
        // A little slack: busy time is measured around the inference, the period by a timer.
        let most = r.period_ms as f64 * f64::from(r.slots) * 1.1;
        if !r.busy_ms.is_finite() || r.busy_ms < 0.0 || r.busy_ms > most {
            return Err(LoadReportError::Invalid("busy time out of range"));
        }
        // Nothing answers faster than 1 µs a chunk.
        if r.answered
            > r.period_ms
                .saturating_mul(1000)
                .saturating_mul(u64::from(r.slots))
        {
            return Err(LoadReportError::Invalid(
                "more answers than the period allows",
            ));
        }
        if r.model.name.is_empty() || r.model.version.is_empty() {
            return Err(LoadReportError::Invalid("empty model id"));
        }
        Ok(r)
    }

    /// Fraction of its slots' time the instance spent inferring, 0..=1.
    pub fn busy_fraction(&self) -> f64 {
        (self.busy_ms / (self.period_ms as f64 * f64::from(self.slots))).clamp(0.0, 1.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report() -> LoadReport {
        LoadReport {
            v: 1,
            model: ModelId::new("fer", "1"),
            instance: "i-1".into(),
            slots: 2,
            period_ms: 1000,
            busy_ms: 500.0,
            answered: 100,
            refused: 3,
        }
    }

    #[test]
    fn good_reports_are_read_back() {
        let r = report();
        let body = serde_json::to_vec(&r).unwrap();
        assert_eq!(LoadReport::parse(&body).unwrap(), r);
        assert!((r.busy_fraction() - 0.25).abs() < 1e-9);
        assert_eq!(load_subject(&r.model), "tap.v1.load.fer.1");
    }

    #[test]
    fn impossible_reports_are_refused() {
        let bad = [
            LoadReport { v: 2, ..report() },
            LoadReport {
                slots: 0,
                ..report()
            },
            LoadReport {
                period_ms: 0,
                ..report()
            },
            LoadReport {
                busy_ms: 5000.0,
                ..report()
            },
            LoadReport {
                busy_ms: -1.0,
                ..report()
            },
            LoadReport {
                instance: String::new(),
                ..report()
            },
            LoadReport {
                answered: u64::MAX,
                ..report()
            },
        ];
        for r in bad {
            let body = serde_json::to_vec(&r).unwrap();
            assert!(
                matches!(LoadReport::parse(&body), Err(LoadReportError::Invalid(_))),
                "{r:?}"
            );
        }
        assert!(matches!(
            LoadReport::parse(b"{"),
            Err(LoadReportError::Unreadable(_))
        ));
    }
}
