//! The worker's Prometheus metrics.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use std::sync::atomic::AtomicU64;
use std::sync::LazyLock;

/// `reason` label.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Reason {
    /// Why.
    pub reason: String,
}

/// `model` label (the model file's name), and where a fallback went.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ModelLabel {
    /// Model file name.
    pub model: String,
}

/// The models' self-checks and precision fallbacks: process-wide, since models load before and
/// outside any one worker (every [`WorkerMetrics`] exports them).
struct ModelChecks {
    /// Worst relative L2 error of the last self-check, by model.
    error: Family<ModelLabel, Gauge<f64, AtomicU64>>,
    /// Loads of an optional precision that failed its self-check and fell back, by model.
    fallbacks: Family<ModelLabel, Counter>,
}

static MODEL_CHECKS: LazyLock<ModelChecks> = LazyLock::new(|| ModelChecks {
    error: Family::default(),
    fallbacks: Family::default(),
});

/// Records a model's self-check error (`tap_worker_model_self_check_error`).
pub fn record_model_check(model: &str, error: f32) {
    MODEL_CHECKS
        .error
        .get_or_create(&ModelLabel {
            model: model.to_owned(),
        })
        .set(f64::from(error));
}

/// Counts a model that failed its self-check and was replaced by another precision
/// (`tap_worker_model_precision_fallbacks_total`).
pub fn record_model_fallback(model: &str) {
    MODEL_CHECKS
        .fallbacks
        .get_or_create(&ModelLabel {
            model: model.to_owned(),
        })
        .inc();
}

/// Counters and timings of one worker process.
pub struct WorkerMetrics {
    registry: Registry,
    /// Chunks received.
    pub received: Counter,
    /// Chunks answered with a prediction.
    pub predicted: Counter,
    /// Chunks not processed, by reason (`stale`, `would_miss`, `superseded`, `busy`,
    /// `slow_consumer`, `malformed`, `internal`, `stopping`).
    pub dropped: Family<Reason, Counter>,
    /// Inferences running.
    pub busy: Gauge,
    /// Chunks in the waiting room (see [`crate::waiting_room`]).
    pub waiting: Gauge,
    /// Time from receipt to inference start, seconds.
    pub queue_wait: Histogram,
    /// Inference time, seconds.
    pub inference: Histogram,
    /// Capture → reply sent, seconds.
    pub capture_to_result: Histogram,
    /// Inference time summed over the slots, microseconds (the load reports' busy time).
    pub busy_us: Counter,
    /// Chunks refused (every drop reason), for the load reports.
    pub refused: Counter,
}

impl Default for WorkerMetrics {
    fn default() -> Self {
        Self::new()
    }
}

impl WorkerMetrics {
    /// Registers everything under `tap_worker`.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("tap_worker");
        let h = || Histogram::new(exponential_buckets(0.0001, 2.0, 18));
        let m = WorkerMetrics {
            registry: Registry::default(),
            received: Counter::default(),
            predicted: Counter::default(),
            dropped: Family::default(),
            busy: Gauge::default(),
            waiting: Gauge::default(),
            queue_wait: h(),
            inference: h(),
            capture_to_result: h(),
            busy_us: Counter::default(),
            refused: Counter::default(),
        };
        registry.register("chunks_received", "Chunks received", m.received.clone());
        registry.register(
            "predictions",
            "Chunks answered with a prediction",
            m.predicted.clone(),
        );
        registry.register(
            "chunks_dropped",
            "Chunks not processed, by reason",
            m.dropped.clone(),
        );
        registry.register("busy", "Inferences running", m.busy.clone());
        registry.register(
            "waiting",
            "Chunks in the waiting room, one per lane at most",
            m.waiting.clone(),
        );
        registry.register(
            "queue_wait_seconds",
            "Receipt to inference start",
            m.queue_wait.clone(),
        );
        registry.register("inference_seconds", "Inference time", m.inference.clone());
        registry.register(
            "capture_to_result_seconds",
            "Capture to reply sent",
            m.capture_to_result.clone(),
        );
        registry.register(
            "busy_microseconds",
            "Inference time summed over the slots (load reports: busy / (period × slots))",
            m.busy_us.clone(),
        );
        registry.register(
            "model_self_check_error",
            "Worst relative L2 error of a model's outputs on its reference input at load (models/*.check.json)",
            MODEL_CHECKS.error.clone(),
        );
        registry.register(
            "model_precision_fallbacks",
            "Loads of an optional model precision that failed its self-check and fell back to fp32",
            MODEL_CHECKS.fallbacks.clone(),
        );
        WorkerMetrics { registry, ..m }
    }

    /// Counts a dropped chunk.
    pub fn drop_reason(&self, reason: &str) {
        self.refused.inc();
        self.dropped
            .get_or_create(&Reason {
                reason: reason.to_owned(),
            })
            .inc();
    }

    /// Prometheus text.
    pub fn encode(&self) -> String {
        let mut s = String::new();
        let _ = prometheus_client::encoding::text::encode(&mut s, &self.registry);
        s
    }
}
