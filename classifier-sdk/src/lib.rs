//! The model author's side of kurento-tap.
//!
//! Implement [`Classifier`] (declare a [`ModelSpec`], write `predict`), then run a [`Worker`]: it
//! registers the model in the NATS registry (and keeps it alive), serves chunks in the model's queue
//! group, drops chunks past their deadline instead of running them late, answers malformed chunks with
//! an error instead of crashing, runs `predict` off the async runtime, exposes the NATS service API
//! (`$SRV.PING|INFO|STATS`) and Prometheus metrics, and drains on shutdown.
//!
//! ```no_run
//! use classifier_sdk::*;
//!
//! struct Brightness;
//!
//! impl Classifier for Brightness {
//!     fn spec(&self) -> ModelSpec {
//!         ModelSpec::video("brightness", "1", VideoChunkSpec::fps(2.0, 64, 48, PixelFormat::Gray8), &["brightness"])
//!     }
//!     fn predict(&mut self, chunk: &Chunk<'_>) -> Result<Prediction, ClassifierError> {
//!         let Data::Video(frame) = &chunk.data else { return Err(ClassifierError::Unsupported) };
//!         let mean = frame.pixels.iter().map(|&p| p as f64).sum::<f64>() / frame.pixels.len() as f64;
//!         Ok(Prediction::scores([("brightness", mean / 255.0)]))
//!     }
//! }
//!
//! # async fn run() -> Result<(), WorkerError> {
//! Worker::new(|| Brightness).options(WorkerOptions::new("nats://127.0.0.1:4222")).run(shutdown_signal()).await
//! # }
//! ```

pub mod admission;
mod chunk;
mod metrics;
#[cfg(feature = "onnx")]
pub mod onnx;
pub mod waiting_room;
mod worker;

pub use chunk::{AudioWindow, Chunk, Data, Frame, Samples};
pub use metrics::{record_model_check, record_model_fallback, WorkerMetrics};
pub use tap_protocol::affect;
pub use tap_protocol::{
    AudioChunkSpec, ChunkMeta, Layout, MediaKind, ModelId, ModelQuality, ModelSpec,
    OutputDeclaration, PixelFormat, SampleFormat, VideoChunkSpec,
};
pub use worker::{shutdown_signal, RunningWorker, Worker, WorkerError, WorkerOptions};

use std::collections::BTreeMap;

/// What `predict` returns.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Prediction {
    /// Label → score.
    pub labels: BTreeMap<String, f64>,
    /// The top label (defaults to the highest score when `labels` is not empty).
    pub top: Option<String>,
    /// Structured extras (face boxes, pitch…).
    pub extras: serde_json::Value,
}

impl Prediction {
    /// Scores only; `top` is the highest.
    pub fn scores<'a>(scores: impl IntoIterator<Item = (&'a str, f64)>) -> Self {
        let labels: BTreeMap<String, f64> =
            scores.into_iter().map(|(k, v)| (k.to_owned(), v)).collect();
        let top = labels
            .iter()
            .max_by(|a, b| a.1.partial_cmp(b.1).unwrap_or(std::cmp::Ordering::Equal))
            .map(|(k, _)| k.clone());
        Prediction {
            labels,
            top,
            extras: serde_json::Value::Null,
        }
    }

    /// Adds structured extras.
    pub fn with_extras(mut self, extras: serde_json::Value) -> Self {
        self.extras = extras;
        self
    }
}

/// Why `predict` failed (answered to the daemon as `Tap-Error: internal`, counted, logged).
#[derive(Debug, thiserror::Error)]
pub enum ClassifierError {
    /// The model does not handle this kind of chunk.
    #[error("unsupported chunk")]
    Unsupported,
    /// Anything else.
    #[error("{0}")]
    Failed(String),
}

/// A model. One instance per concurrent inference (the worker builds `concurrency` of them), so
/// `predict` may keep per-instance state (`&mut self`, as ONNX Runtime sessions need).
pub trait Classifier: Send + 'static {
    /// What the model wants and is.
    fn spec(&self) -> ModelSpec;

    /// Runs the model on one chunk. Runs on a blocking thread, never on the async runtime.
    fn predict(&mut self, chunk: &Chunk<'_>) -> Result<Prediction, ClassifierError>;

    /// Runs the model on several chunks at once (models that batch efficiently override it; the
    /// default calls `predict` on each). Used when `WorkerOptions::max_batch` > 1 and several
    /// chunks are waiting. Must return one result per chunk, in order.
    fn predict_batch(&mut self, chunks: &[Chunk<'_>]) -> Vec<Result<Prediction, ClassifierError>> {
        chunks.iter().map(|c| self.predict(c)).collect()
    }
}

/// Convenience constructors for specs.
pub trait SpecExt {
    /// A video model.
    fn video(name: &str, version: &str, video: VideoChunkSpec, labels: &[&str]) -> ModelSpec;
    /// An audio model.
    fn audio(name: &str, version: &str, audio: AudioChunkSpec, labels: &[&str]) -> ModelSpec;
}

impl SpecExt for ModelSpec {
    fn video(name: &str, version: &str, video: VideoChunkSpec, labels: &[&str]) -> ModelSpec {
        base(name, version, MediaKind::Video, Some(video), None, labels)
    }
    fn audio(name: &str, version: &str, audio: AudioChunkSpec, labels: &[&str]) -> ModelSpec {
        base(name, version, MediaKind::Audio, None, Some(audio), labels)
    }
}

fn base(
    name: &str,
    version: &str,
    media: MediaKind,
    video: Option<VideoChunkSpec>,
    audio: Option<AudioChunkSpec>,
    labels: &[&str],
) -> ModelSpec {
    ModelSpec {
        protocol: tap_protocol::VERSION,
        id: ModelId::new(name, version),
        media,
        video,
        audio,
        labels: labels.iter().map(|s| (*s).to_owned()).collect(),
        output: "labels".into(),
        max_in_flight: 1,
        deadline_ms: 1000,
        heartbeat_ms: 2000,
        updated_ms: 0,
        affect: None,
        quality: None,
        outputs: None,
    }
}

/// Convenience constructors for chunk specs.
pub trait VideoSpecExt {
    /// Frames at `fps`, scaled to `width`×`height`.
    fn fps(fps: f64, width: u32, height: u32, format: PixelFormat) -> VideoChunkSpec;
}

impl VideoSpecExt for VideoChunkSpec {
    fn fps(fps: f64, width: u32, height: u32, format: PixelFormat) -> VideoChunkSpec {
        VideoChunkSpec {
            fps: Some(fps),
            every_nth: None,
            width,
            height,
            format,
        }
    }
}
