//! `audio-worker`: speech, loudness, pitch and arousal for every participant.
//!
//! - `audio-worker run --nats URL` serves `voice@1` (1 s windows every 0.5 s, 16 kHz mono).
//! - `audio-worker analyze WAV…` prints one JSON object per window.

use std::path::PathBuf;

use audio_worker::ser::{Features, Layout, Ser, SerConfig};
use audio_worker::{analyze_window, default_models_dir, read_wav, Vad, RATE, SILERO_SHA256};
use clap::{Parser, Subcommand};
use classifier_sdk::*;

#[derive(Parser)]
#[command(
    version,
    about = "Voice activity, loudness, pitch and arousal for kurento-tap"
)]
struct Cli {
    /// Folder with silero_vad.onnx (default: the repository's models/, or $TAP_MODELS_DIR).
    #[arg(long, global = true)]
    models_dir: Option<PathBuf>,
    /// A speech-emotion ONNX model to run on speech windows (see --ser-*).
    #[arg(long, global = true)]
    ser_model: Option<PathBuf>,
    /// Its labels, comma-separated, in output order.
    #[arg(long, global = true, value_delimiter = ',')]
    ser_labels: Vec<String>,
    /// Its front-end.
    #[arg(long, global = true, value_enum, default_value = "logmel")]
    ser_features: Features,
    /// Mel bands or MFCC coefficients.
    #[arg(long, global = true, default_value_t = 64)]
    ser_bins: usize,
    /// Input layout.
    #[arg(long, global = true, value_enum, default_value = "frames")]
    ser_layout: Layout,
    /// Input tensor name.
    #[arg(long, global = true, default_value = "features")]
    ser_input: String,
    /// Output tensor name.
    #[arg(long, global = true, default_value = "predictions")]
    ser_output: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve audio windows from the daemon.
    Run {
        /// NATS URL.
        #[arg(long, env = "TAP_NATS", default_value = "nats://127.0.0.1:4222")]
        nats: String,
        /// Window length.
        #[arg(long, default_value_t = 1000)]
        window_ms: u32,
        /// Hop between windows.
        #[arg(long, default_value_t = 500)]
        hop_ms: u32,
        /// /metrics address.
        #[arg(long)]
        metrics: Option<std::net::SocketAddr>,
    },
    /// Analyse WAV files; prints JSON per window.
    Analyze {
        /// Files.
        wavs: Vec<PathBuf>,
        /// Window length.
        #[arg(long, default_value_t = 1000)]
        window_ms: u32,
    },
}

struct Voice {
    vad: Vad,
    ser: Option<Ser>,
    spec: ModelSpec,
}

impl Classifier for Voice {
    fn spec(&self) -> ModelSpec {
        self.spec.clone()
    }
    fn predict(&mut self, chunk: &Chunk<'_>) -> Result<Prediction, ClassifierError> {
        let Data::Audio(a) = &chunk.data else {
            return Err(ClassifierError::Unsupported);
        };
        if a.rate != RATE || a.channels != 1 {
            return Err(ClassifierError::Unsupported);
        }
        let w = analyze_window(&mut self.vad, &a.samples.to_f32(), 0.0)
            .map_err(|e| ClassifierError::Failed(e.to_string()))?;
        let mut scores = vec![("speech", f64::from(w.speech_probability))];
        if let Some(s) = w.arousal_score {
            let s = f64::from(s);
            // Soft class scores around the thresholds (0.35, 0.6), summing to 1.
            let calm = (1.0 - s / 0.35).clamp(0.0, 1.0);
            let aroused = ((s - 0.6) / 0.4).clamp(0.0, 1.0);
            let neutral = (1.0 - calm - aroused).max(0.0);
            scores.extend([("calm", calm), ("neutral", neutral), ("aroused", aroused)]);
        }
        let ser = match (&mut self.ser, w.speaking) {
            (Some(model), true) => Some(
                model
                    .classify(&a.samples.to_f32())
                    .map_err(|e| ClassifierError::Failed(e.to_string()))?,
            ),
            _ => None,
        };
        let mut p = Prediction::scores(scores);
        p.top = w
            .arousal
            .map(|a| {
                serde_json::to_value(a)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_owned))
                    .unwrap_or_default()
            })
            .or_else(|| Some(if w.speaking { "speech" } else { "silent" }.to_owned()));
        let mut extras = serde_json::to_value(&w).unwrap_or_default();
        if let Some(ser) = ser {
            extras["ser"] = ser
                .into_iter()
                .map(|(l, v)| (l, serde_json::json!(v)))
                .collect::<serde_json::Map<_, _>>()
                .into();
        }
        Ok(p.with_extras(extras))
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let vad_path = cli
        .models_dir
        .clone()
        .unwrap_or_else(default_models_dir)
        .join("silero_vad.onnx");
    let ser_config = cli.ser_model.clone().map(|model| SerConfig {
        model,
        labels: cli.ser_labels.clone(),
        features: cli.ser_features,
        bins: cli.ser_bins,
        layout: cli.ser_layout,
        input: cli.ser_input.clone(),
        output: cli.ser_output.clone(),
    });
    if let Some(c) = &ser_config {
        anyhow::ensure!(!c.labels.is_empty(), "--ser-model needs --ser-labels");
        Ser::load(c.clone())?;
    }
    match cli.command {
        Command::Analyze { wavs, window_ms } => {
            let mut vad = Vad::load(&vad_path, Some(SILERO_SHA256))?;
            let mut ser = ser_config.map(Ser::load).transpose()?;
            let window = (RATE as usize * window_ms as usize / 1000).max(512);
            for path in wavs {
                let samples = read_wav(&path)?;
                for (i, w) in samples.chunks(window).enumerate() {
                    if w.len() < 512 {
                        continue;
                    }
                    let a =
                        analyze_window(&mut vad, w, i as f64 * window as f64 / f64::from(RATE))?;
                    let mut v = serde_json::to_value(&a)?;
                    if let (Some(model), true) = (&mut ser, a.speaking) {
                        let scores: std::collections::BTreeMap<String, f32> =
                            model.classify(w)?.into_iter().collect();
                        v["ser"] = serde_json::json!(scores);
                    }
                    v["file"] = serde_json::json!(path);
                    println!("{v}");
                }
            }
            Ok(())
        }
        Command::Run {
            nats,
            window_ms,
            hop_ms,
            metrics,
        } => {
            Vad::load(&vad_path, Some(SILERO_SHA256))?;
            let mut spec = ModelSpec::audio(
                "voice",
                "1",
                AudioChunkSpec {
                    window_ms,
                    hop_ms,
                    sample_rate: RATE,
                    channels: 1,
                    format: SampleFormat::F32,
                },
                &["speech", "calm", "neutral", "aroused"],
            );
            spec.deadline_ms = window_ms + 1000;
            spec.affect = Some(classifier_sdk::affect::voice_arousal_declaration());
            let factory = move || Voice {
                vad: Vad::load(&vad_path, Some(SILERO_SHA256)).expect("checked at start"),
                ser: ser_config
                    .clone()
                    .map(|c| Ser::load(c).expect("checked at start")),
                spec: spec.clone(),
            };
            let mut options = WorkerOptions::new(nats);
            options.http_listen = metrics;
            Worker::new(factory)
                .options(options)
                .run(shutdown_signal())
                .await?;
            Ok(())
        }
    }
}
