//! What a scaler needs per model: offered and answered chunks per second, the share superseded,
//! the workers' capacity and the saturation (offered / capacity). Pure core: counters and load
//! reports in, figures out, time passed in.
//!
//! Why saturation and not queue length: with latest-wins lanes the daemon never queues more than
//! one chunk per (participant, model); when workers fall behind, chunks are superseded, not queued,
//! so a queue stays short whether the workers keep up or answer one chunk in ten. And the answered
//! rate alone cannot tell "all answered" from "all the workers can do". Capacity comes from the
//! workers' own reports (answers per busy second × slots), so `offered / capacity` reads 0.5 when
//! half the workers would do, 2.0 when twice as many are needed, whatever the backlog looks like.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::time::{Duration, Instant};

use tap_protocol::load::LoadReport;

/// Tuning of the figures.
#[derive(Debug, Clone, Copy)]
pub struct ScalingSettings {
    /// Rates are averaged over this window.
    pub window: Duration,
    /// A worker instance not heard from this long is gone.
    pub instance_timeout: Duration,
    /// Below this busy fraction a report says too little about capacity (kept from earlier ones).
    pub min_busy_fraction: f64,
}

impl Default for ScalingSettings {
    fn default() -> Self {
        ScalingSettings {
            window: Duration::from_secs(10),
            instance_timeout: Duration::from_secs(5),
            min_busy_fraction: 0.05,
        }
    }
}

/// Saturation reported when chunks are offered and no worker reports any capacity: finite (a
/// scaler reads it as "many more") and unmistakable.
pub const NO_CAPACITY_SATURATION: f64 = 1000.0;

/// Cumulative counters of one model at one instant (from the daemon's metrics).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct ModelCounters {
    /// Chunks offered.
    pub offered: u64,
    /// Results received.
    pub answered: u64,
    /// Chunks superseded before sending.
    pub superseded: u64,
}

/// The figures of one model.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct ModelLoad {
    /// Chunks offered per second.
    pub offered_per_s: f64,
    /// Results per second.
    pub answered_per_s: f64,
    /// Superseded / offered over the window.
    pub superseded_share: f64,
    /// What the live workers could answer per second at full load.
    pub capacity_per_s: f64,
    /// Worker instances heard from.
    pub workers: usize,
    /// offered / capacity.
    pub saturation: f64,
}

#[derive(Debug)]
struct Instance {
    /// Answers per second at full load, when a report said.
    capacity: Option<f64>,
    /// Busy fraction of the last report.
    busy: f64,
    seen: Instant,
}

#[derive(Debug, Default)]
struct Model {
    samples: VecDeque<(Instant, ModelCounters)>,
    instances: HashMap<String, Instance>,
}

/// Per-model load figures over a sliding window.
#[derive(Debug, Default)]
pub struct ScalingBook {
    settings: ScalingSettings,
    models: BTreeMap<String, Model>,
}

impl ScalingBook {
    /// A book.
    pub fn new(settings: ScalingSettings) -> Self {
        ScalingBook {
            settings,
            models: BTreeMap::new(),
        }
    }

    /// Records a model's cumulative counters at `now`.
    pub fn sample(&mut self, model: &str, now: Instant, counters: ModelCounters) {
        let m = self.models.entry(model.to_owned()).or_default();
        m.samples.push_back((now, counters));
        // Keep one sample at or before the window's start, so the window is always spanned.
        while m.samples.len() > 2
            && now.saturating_duration_since(m.samples[1].0) >= self.settings.window
        {
            m.samples.pop_front();
        }
    }

    /// Takes a worker instance's load report (checked by [`LoadReport::parse`]).
    pub fn report(&mut self, model: &str, now: Instant, r: &LoadReport) {
        let min_busy = self.settings.min_busy_fraction;
        let m = self.models.entry(model.to_owned()).or_default();
        let busy = r.busy_fraction();
        let measured = (busy >= min_busy && r.answered > 0).then(|| {
            let per_s = r.answered as f64 / (r.period_ms as f64 / 1000.0);
            per_s / busy
        });
        let inst = m.instances.entry(r.instance.clone()).or_insert(Instance {
            capacity: None,
            busy,
            seen: now,
        });
        inst.busy = busy;
        inst.seen = now;
        if let Some(c) = measured {
            // Smoothed: one report covers one second of a noisy load.
            inst.capacity = Some(match inst.capacity {
                Some(old) => old * 0.7 + c * 0.3,
                None => c,
            });
        }
    }

    /// The figures of every model known, at `now`.
    pub fn figures(&mut self, now: Instant) -> BTreeMap<String, ModelLoad> {
        let timeout = self.settings.instance_timeout;
        let mut out = BTreeMap::new();
        for (name, m) in self.models.iter_mut() {
            m.instances
                .retain(|_, i| now.saturating_duration_since(i.seen) < timeout);
            let mut load = ModelLoad {
                workers: m.instances.len(),
                ..ModelLoad::default()
            };
            if let (Some((t0, c0)), Some((t1, c1))) = (m.samples.front(), m.samples.back()) {
                let secs = t1.saturating_duration_since(*t0).as_secs_f64();
                let offered = c1.offered.saturating_sub(c0.offered) as f64;
                if secs > 0.0 {
                    load.offered_per_s = offered / secs;
                    load.answered_per_s = c1.answered.saturating_sub(c0.answered) as f64 / secs;
                }
                if offered > 0.0 {
                    load.superseded_share =
                        (c1.superseded.saturating_sub(c0.superseded) as f64 / offered).min(1.0);
                }
            }
            // Instances with no measured capacity yet (idle since they started) count as the
            // average of those measured: same model, usually the same hardware.
            let known: Vec<f64> = m.instances.values().filter_map(|i| i.capacity).collect();
            if !known.is_empty() {
                let mean = known.iter().sum::<f64>() / known.len() as f64;
                load.capacity_per_s = m
                    .instances
                    .values()
                    .map(|i| i.capacity.unwrap_or(mean))
                    .sum();
            }
            load.saturation = if load.offered_per_s <= 0.0 {
                0.0
            } else if load.capacity_per_s > 0.0 {
                load.offered_per_s / load.capacity_per_s
            } else if load.workers > 0 {
                // Workers there, none busy enough to measure: they idle, which is what the mean
                // busy fraction says.
                m.instances.values().map(|i| i.busy).sum::<f64>() / load.workers as f64
            } else {
                NO_CAPACITY_SATURATION
            };
            out.insert(name.clone(), load);
        }
        out
    }

    /// Forgets a model that left the registry.
    pub fn forget(&mut self, model: &str) {
        self.models.remove(model);
    }
}

/// The adapter: takes the workers' load reports off NATS, samples the daemon's counters every
/// second, and writes the figures into the `kurento_tap_model_*` gauges.
pub async fn run(
    nats: async_nats::Client,
    live: crate::media::chunker::LiveSpecs,
    metrics: std::sync::Arc<crate::metrics::Metrics>,
    settings: ScalingSettings,
) {
    use crate::metrics::{DropLabel, ModelLabel, ScalingLabel};
    use futures_util::StreamExt;
    let mut reports = match nats.subscribe(tap_protocol::load::LOAD_SUBJECTS).await {
        Ok(s) => Some(s),
        Err(e) => {
            tracing::warn!(error = %e, "cannot subscribe to worker load reports; capacity unknown");
            None
        }
    };
    let mut book = ScalingBook::new(settings);
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut shown: Vec<String> = Vec::new();
    loop {
        tokio::select! {
            Some(msg) = async { match reports.as_mut() { Some(r) => r.next().await, None => None } } => {
                match LoadReport::parse(&msg.payload) {
                    Ok(r) => book.report(&r.model.to_string(), Instant::now(), &r),
                    Err(e) => {
                        tracing::debug!(error = %e, "load report refused");
                        metrics.load_reports_rejected.inc();
                    }
                }
            }
            _ = tick.tick() => {
                let now = Instant::now();
                let specs = live.read().map(|s| s.clone()).unwrap_or_default();
                let names: Vec<String> = specs.iter().map(|s| s.id.to_string()).collect();
                for model in &names {
                    let label = ModelLabel { model: model.clone() };
                    let superseded = DropLabel { model: model.clone(), reason: "superseded".into() };
                    book.sample(model, now, ModelCounters {
                        offered: metrics.chunks_offered.get_or_create(&label).get(),
                        answered: metrics.results.get_or_create(&label).get(),
                        superseded: metrics.chunks_dropped.get_or_create(&superseded).get(),
                    });
                }
                for gone in shown.iter().filter(|m| !names.contains(m)) {
                    book.forget(gone);
                    let label = ScalingLabel::of(gone);
                    metrics.model_offered_rate.remove(&label);
                    metrics.model_answered_rate.remove(&label);
                    metrics.model_superseded_share.remove(&label);
                    metrics.model_capacity.remove(&label);
                    metrics.model_saturation.remove(&label);
                    metrics.model_workers.remove(&label);
                }
                for (model, f) in book.figures(now) {
                    if !names.contains(&model) {
                        continue;
                    }
                    let label = ScalingLabel::of(&model);
                    metrics.model_offered_rate.get_or_create(&label).set(f.offered_per_s);
                    metrics.model_answered_rate.get_or_create(&label).set(f.answered_per_s);
                    metrics.model_superseded_share.get_or_create(&label).set(f.superseded_share);
                    metrics.model_capacity.get_or_create(&label).set(f.capacity_per_s);
                    metrics.model_saturation.get_or_create(&label).set(f.saturation);
                    metrics.model_workers.get_or_create(&label).set(f.workers as i64);
                }
                shown = names;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tap_protocol::ModelId;

    fn report(instance: &str, busy_ms: f64, answered: u64) -> LoadReport {
        LoadReport {
            v: 1,
            model: ModelId::new("fer", "1"),
            instance: instance.into(),
            slots: 1,
            period_ms: 1000,
            busy_ms,
            answered,
            refused: 0,
        }
    }

    fn counters(offered: u64, answered: u64, superseded: u64) -> ModelCounters {
        ModelCounters {
            offered,
            answered,
            superseded,
        }
    }

    #[test]
    fn an_overloaded_model_reads_above_one_and_an_idle_one_below() {
        let t0 = Instant::now();
        let mut b = ScalingBook::new(ScalingSettings::default());
        // 100 chunks/s offered, the one worker answers 50/s and is busy all the time.
        for s in 0..=10u64 {
            let now = t0 + Duration::from_secs(s);
            b.sample("fer@1", now, counters(100 * s, 50 * s, 50 * s));
            b.report("fer@1", now, &report("w1", 1000.0, 50));
        }
        let f = b.figures(t0 + Duration::from_secs(10))["fer@1"];
        assert!((f.offered_per_s - 100.0).abs() < 1e-6);
        assert!((f.answered_per_s - 50.0).abs() < 1e-6);
        assert!((f.superseded_share - 0.5).abs() < 1e-6);
        assert!((f.capacity_per_s - 50.0).abs() < 1e-6);
        assert!((f.saturation - 2.0).abs() < 1e-6, "{f:?}");
        // A second worker like it: capacity doubles, saturation halves (same offered load).
        let now = t0 + Duration::from_secs(11);
        b.sample("fer@1", now, counters(1100, 550, 550));
        b.report("fer@1", now, &report("w1", 1000.0, 50));
        b.report("fer@1", now, &report("w2", 1000.0, 50));
        let f = b.figures(now)["fer@1"];
        assert_eq!(f.workers, 2);
        assert!((f.saturation - 1.0).abs() < 1e-6, "{f:?}");
    }

    #[test]
    fn a_model_keeping_up_with_room_to_spare_reads_its_utilisation() {
        let t0 = Instant::now();
        let mut b = ScalingBook::new(ScalingSettings::default());
        // 20/s offered and answered; the worker is busy 20 % of the time → capacity 100/s.
        for s in 0..=10u64 {
            let now = t0 + Duration::from_secs(s);
            b.sample("fer@1", now, counters(20 * s, 20 * s, 0));
            b.report("fer@1", now, &report("w1", 200.0, 20));
        }
        let f = b.figures(t0 + Duration::from_secs(10))["fer@1"];
        assert!((f.capacity_per_s - 100.0).abs() < 1e-6);
        assert!((f.saturation - 0.2).abs() < 1e-6, "{f:?}");
        assert_eq!(f.superseded_share, 0.0);
    }

    #[test]
    fn gone_workers_and_no_workers() {
        let t0 = Instant::now();
        let mut b = ScalingBook::new(ScalingSettings::default());
        b.sample("fer@1", t0, counters(0, 0, 0));
        b.report("fer@1", t0, &report("w1", 1000.0, 50));
        b.sample("fer@1", t0 + Duration::from_secs(10), counters(100, 0, 100));
        let f = b.figures(t0 + Duration::from_secs(10))["fer@1"];
        assert_eq!(f.workers, 0, "not heard from for 10 s");
        assert_eq!(f.saturation, NO_CAPACITY_SATURATION);
        // Nothing offered: nothing to do, whatever the workers.
        let mut idle = ScalingBook::new(ScalingSettings::default());
        idle.sample("x@1", t0, counters(5, 5, 0));
        idle.sample("x@1", t0 + Duration::from_secs(5), counters(5, 5, 0));
        assert_eq!(
            idle.figures(t0 + Duration::from_secs(5))["x@1"].saturation,
            0.0
        );
    }

    #[test]
    fn an_idle_new_worker_counts_as_its_measured_peers() {
        let t0 = Instant::now();
        let mut b = ScalingBook::new(ScalingSettings::default());
        b.sample("fer@1", t0, counters(0, 0, 0));
        b.sample("fer@1", t0 + Duration::from_secs(1), counters(60, 60, 0));
        b.report(
            "fer@1",
            t0 + Duration::from_secs(1),
            &report("w1", 600.0, 60),
        );
        b.report("fer@1", t0 + Duration::from_secs(1), &report("w2", 0.0, 0));
        let f = b.figures(t0 + Duration::from_secs(1))["fer@1"];
        assert!((f.capacity_per_s - 200.0).abs() < 1e-6, "{f:?}");
        assert!((f.saturation - 0.3).abs() < 1e-6);
    }

    #[test]
    fn the_window_slides() {
        let t0 = Instant::now();
        let mut b = ScalingBook::new(ScalingSettings {
            window: Duration::from_secs(2),
            ..ScalingSettings::default()
        });
        // 10/s for 10 s, then 100/s for 3 s: the window sees only the last rate.
        let mut offered = 0;
        for s in 0..=13u64 {
            if s > 0 {
                offered += if s <= 10 { 10 } else { 100 };
            }
            b.sample("m", t0 + Duration::from_secs(s), counters(offered, 0, 0));
        }
        let f = b.figures(t0 + Duration::from_secs(13))["m"];
        assert!((f.offered_per_s - 100.0).abs() < 1e-6, "{f:?}");
    }
}
