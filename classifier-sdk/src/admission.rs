//! Deadline-aware admission: a chunk the model cannot finish before its deadline is refused before
//! inference, not computed and thrown away.
//!
//! Why: on a saturated worker, every chunk that starts with less time left than an inference takes
//! is wasted work: the daemon has stopped waiting when the answer comes. Computing it anyway makes
//! the next chunk start later still, and a worker slightly over capacity ends up answering almost
//! nothing in time (seen on the real-KMS tier with both cores busy: 88 of 106 voice chunks timed
//! out at the daemon while the worker computed every one). Refusing what would miss keeps the
//! worker's time for chunks that can make it. Pure: times are passed in.

/// A running estimate of one inference's duration (exponentially weighted mean, µs).
#[derive(Debug, Clone, Copy)]
pub struct InferenceEstimate {
    mean_us: Option<f64>,
}

/// Weight of the newest observation.
const ALPHA: f64 = 0.2;

impl Default for InferenceEstimate {
    fn default() -> Self {
        Self::new()
    }
}

impl InferenceEstimate {
    /// No observation yet: every chunk is admitted until the first inference is timed.
    pub const fn new() -> Self {
        InferenceEstimate { mean_us: None }
    }

    /// Takes in one inference's duration per chunk.
    pub fn observe(&mut self, per_chunk_us: u64) {
        let x = per_chunk_us as f64;
        self.mean_us = Some(match self.mean_us {
            None => x,
            Some(m) => m + ALPHA * (x - m),
        });
    }

    /// A chunk was refused. The estimate is only measured by inferences, so a refusal lowers it:
    /// one slow outlier (a first call, a pause of the machine) must not refuse chunks forever; a
    /// few refusals later a chunk is admitted again and measures the model afresh.
    pub fn refused(&mut self) {
        if let Some(m) = &mut self.mean_us {
            *m *= 1.0 - ALPHA;
        }
    }

    /// The estimate, µs (0 before any observation).
    pub fn mean_us(&self) -> u64 {
        self.mean_us.unwrap_or(0.0) as u64
    }

    /// Whether a chunk due at `deadline_us` would be answered too late if inference started at
    /// `now_us`.
    pub fn would_miss(&self, now_us: u64, deadline_us: u64) -> bool {
        now_us.saturating_add(self.mean_us()) >= deadline_us
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nothing_is_refused_before_the_first_measurement() {
        let e = InferenceEstimate::new();
        assert!(!e.would_miss(1_000, 1_001));
        assert!(e.would_miss(1_001, 1_001), "past its deadline already");
    }

    #[test]
    fn chunks_with_less_time_left_than_an_inference_are_refused() {
        let mut e = InferenceEstimate::new();
        e.observe(50_000);
        assert!(e.would_miss(1_000_000, 1_040_000));
        assert!(!e.would_miss(1_000_000, 1_060_000));
    }

    #[test]
    fn the_estimate_follows_a_slowdown_and_a_recovery() {
        let mut e = InferenceEstimate::new();
        e.observe(10_000);
        for _ in 0..20 {
            e.observe(100_000);
        }
        assert!(e.mean_us() > 95_000, "{}", e.mean_us());
        for _ in 0..20 {
            e.observe(10_000);
        }
        assert!(e.mean_us() < 15_000, "{}", e.mean_us());
        assert_eq!(InferenceEstimate::new().mean_us(), 0);
        let mut outlier = InferenceEstimate::new();
        outlier.observe(2_000_000);
        let (now, deadline) = (1_000_000, 1_100_000);
        let mut refusals = 0;
        while outlier.would_miss(now, deadline) {
            outlier.refused();
            refusals += 1;
            assert!(refusals < 100, "refuses forever");
        }
        assert!(
            refusals > 5,
            "an outlier is not forgotten at once: {refusals}"
        );
        let mut huge = InferenceEstimate::new();
        huge.observe(u64::MAX);
        assert!(huge.would_miss(u64::MAX - 1, u64::MAX), "no overflow");
    }
}
