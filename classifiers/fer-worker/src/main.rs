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
    /// Emotion network: tap (trained here, the default: 66.9 % on FER2013's test split), fer
    /// (mini-XCEPTION, 58.8 %) or human (56.9 %); docs/models.md.
    #[arg(long, global = true, value_enum, default_value = "tap")]
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
    /// Accuracy of the emotion net on labelled face crops: DIR/<class>/<image> with FER2013's class
    /// names (angry, disgust, fear, happy, neutral, sad, surprise). The crops are the faces: no
    /// detection. `disgust` is left out (6 classes), as FER2013 results are usually given here.
    Evaluate {
        /// Folder of class folders (e.g. FER2013's test split).
        dir: PathBuf,
        /// Keep disgust (7 classes).
        #[arg(long)]
        with_disgust: bool,
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
        Command::Evaluate { dir, with_disgust } => evaluate(&model_paths, dir, *with_disgust),
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
            spec.outputs = Some(fer_worker::output_declaration());
            // Measured for the bundled nets only: a user's own model declares nothing.
            if cli.emotion.is_none() {
                spec.quality = Some(cli.net.quality());
            }
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

fn evaluate(paths: &ModelPaths, dir: &std::path::Path, with_disgust: bool) -> anyhow::Result<()> {
    use fer_worker::evaluate::{argmax_among, Confusion};
    let classes: Vec<usize> = (0..LABELS.len())
        .filter(|i| with_disgust || LABELS[*i] != "disgust")
        .collect();
    let mut pipeline = FerPipeline::load(paths)?;
    let mut confusion = Confusion::new(&LABELS);
    let mut inference = std::time::Duration::ZERO;
    let mut unreadable = 0;
    for &class in &classes {
        let folder = dir.join(LABELS[class]);
        let mut files: Vec<PathBuf> = std::fs::read_dir(&folder)
            .with_context(|| format!("{}", folder.display()))?
            .filter_map(|e| Some(e.ok()?.path()))
            .collect();
        files.sort();
        for batch in files.chunks(64) {
            let mut crops = Vec::with_capacity(batch.len() * 64 * 64);
            let mut n = 0;
            for path in batch {
                let Ok(img) = image::open(path) else {
                    unreadable += 1;
                    continue;
                };
                let rgb = img.to_rgb8();
                let (w, h) = (rgb.width() as usize, rgb.height() as usize);
                let side = w.min(h) as f32;
                crops.extend(onnx::gray_crop(
                    rgb.as_raw(),
                    w,
                    h,
                    (w as f32 / 2.0, h as f32 / 2.0),
                    side,
                    64,
                ));
                n += 1;
            }
            if n == 0 {
                continue;
            }
            let t = std::time::Instant::now();
            let scores = pipeline.emotions(&crops)?;
            inference += t.elapsed();
            for s in scores {
                confusion.add(class, argmax_among(&s, &classes));
            }
        }
    }
    let total = confusion.total();
    println!(
        "{} faces in {} classes ({unreadable} unreadable): accuracy {:.1} %, balanced {:.1} %; {:.3} ms per face (batches of 64, one core)",
        total,
        classes.len(),
        confusion.accuracy() * 100.0,
        confusion.balanced_accuracy() * 100.0,
        inference.as_secs_f64() * 1e3 / total.max(1) as f64
    );
    let recalls = confusion.recalls();
    for &c in &classes {
        let row: u64 = confusion.counts[c].iter().sum();
        println!(
            "  {:<9} recall {:5.1} %  ({row} faces)",
            LABELS[c],
            recalls[c] * 100.0
        );
    }
    Ok(())
}
