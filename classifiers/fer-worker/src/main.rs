//! `fer-worker`: facial emotion for every participant.
//!
//! - `fer-worker run --nats URL` serves the model `fer@1` (RGB 320x240 at 5 fps by default).
//! - `fer-worker classify IMAGE…` prints one JSON object per image.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use classifier_sdk::*;
use fer_worker::{
    default_models_dir, EmotionNet, FerClassifier, FerPipeline, ModelPaths, Precision, LABELS,
};

#[derive(Parser)]
#[command(
    version,
    about = "Facial emotion (BlazeFace + FER2013) for kurento-tap, on ONNX Runtime"
)]
struct Cli {
    /// Folder with the vendored models (default: the repository's models/, or $TAP_MODELS_DIR).
    #[arg(long, global = true)]
    models_dir: Option<PathBuf>,
    /// Emotion network.
    #[arg(long, global = true, value_enum, default_value = "fer")]
    net: EmotionNet,
    /// Your own face detector (same contract as blazeface_front_128.onnx; not checksummed).
    #[arg(long, global = true)]
    detector: Option<PathBuf>,
    /// Your own emotion model (same contract as fer_mini_xception.onnx; not checksummed).
    #[arg(long, global = true)]
    emotion: Option<PathBuf>,
    /// The vendored face detector's precision: fp32, or the int8 model made by
    /// models/tools/quantize.py (faster, see docs/benchmarks.md for its agreement with fp32).
    #[arg(long, global = true, value_enum, default_value = "fp32")]
    detector_precision: Precision,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve chunks from the daemon.
    Run {
        /// NATS URL.
        #[arg(long, env = "TAP_NATS", default_value = "nats://127.0.0.1:4222")]
        nats: String,
        /// Model version to register (run several side by side).
        #[arg(long, default_value = "1")]
        version: String,
        /// Frames per second per participant.
        #[arg(long, default_value_t = 5.0)]
        fps: f64,
        /// Frame size asked of the daemon.
        #[arg(long, default_value_t = 320)]
        width: u32,
        /// Frame size asked of the daemon.
        #[arg(long, default_value_t = 240)]
        height: u32,
        /// Smoothing of each participant's scores: weight of the newest frame (1 = off).
        #[arg(long, default_value_t = 1.0)]
        smoothing: f32,
        /// Concurrent inferences (one model instance each).
        #[arg(long, default_value_t = 1)]
        concurrency: usize,
        /// /metrics address.
        #[arg(long)]
        metrics: Option<std::net::SocketAddr>,
        /// Run the face detector every N frames of a participant and track faces in between
        /// (1: detect on every frame). 5 is the least frequent that keeps the quality bar on
        /// the moving-face clip (docs/benchmarks.md).
        #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..=30))]
        detect_interval: u32,
    },
    /// Classify image files (PNG, JPEG); prints JSON per image.
    Classify {
        /// Images.
        images: Vec<PathBuf>,
    },
}

fn paths(cli: &Cli) -> ModelPaths {
    let mut p = ModelPaths::vendored_with(
        &cli.models_dir.clone().unwrap_or_else(default_models_dir),
        cli.net,
        cli.detector_precision,
    );
    if let Some(d) = &cli.detector {
        p.detector = d.clone();
        p.detector_sha256 = None;
    }
    if let Some(e) = &cli.emotion {
        p.emotion = e.clone();
        p.emotion_sha256 = None;
    }
    p
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let model_paths = paths(&cli);
    match &cli.command {
        Command::Classify { images } => {
            let mut pipeline = FerPipeline::load(&model_paths)?;
            for path in images {
                let img = image::open(path)
                    .with_context(|| format!("cannot read {}", path.display()))?
                    .to_rgb8();
                let (w, h) = img.dimensions();
                let (faces, _) = pipeline.analyze(img.as_raw(), w as usize, h as usize)?;
                println!("{}", serde_json::json!({"image": path, "faces": faces}));
            }
            Ok(())
        }
        Command::Run {
            nats,
            version,
            fps,
            width,
            height,
            smoothing,
            concurrency,
            metrics,
            detect_interval,
        } => {
            // Fail here, clearly, rather than inside the worker.
            FerPipeline::load(&model_paths)?;
            let mut spec = ModelSpec::video(
                "fer",
                version,
                VideoChunkSpec::fps(*fps, *width, *height, PixelFormat::Rgb24),
                &LABELS,
            );
            spec.deadline_ms = 1000;
            // What the labels mean to the room mood (both nets use FER2013's seven labels).
            spec.affect = Some(classifier_sdk::affect::fer2013_declaration());
            let (alpha, paths) = (*smoothing, model_paths.clone());
            let tracking = (*detect_interval > 1).then(|| fer_worker::track::TrackerConfig {
                detect_interval: *detect_interval,
                ..Default::default()
            });
            let trackers = fer_worker::SharedTrackers::default();
            let factory = move || {
                let c = FerClassifier::new(
                    FerPipeline::load(&paths).expect("models checked at start"),
                    spec.clone(),
                    alpha,
                );
                match tracking {
                    Some(cfg) => c.with_tracking(cfg, trackers.clone()),
                    None => c,
                }
            };
            let mut options = WorkerOptions::new(nats.clone()).concurrency(*concurrency);
            options.http_listen = *metrics;
            Worker::new(factory)
                .options(options)
                .run(shutdown_signal())
                .await?;
            Ok(())
        }
    }
}
