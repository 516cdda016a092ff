//! `audio-worker`: speech, loudness, pitch and arousal for every participant.
//!
//! - `audio-worker run --nats URL` serves `voice@1` (1 s windows every 0.5 s, 16 kHz mono).
//! - `audio-worker analyze WAV…` prints one JSON object per window.

use std::path::PathBuf;

use std::sync::{Arc, Mutex};

use audio_worker::arousal::{
    class_scores, BaselineConfig, Baselines, VoiceFeatures, EMODB_MODEL, EMODB_POPULATION,
};
use audio_worker::ser::{Features, Layout, Ser, SerConfig};
use audio_worker::Arousal;
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
    /// Measures arousal on Berlin EmoDB (its `wav/` folder) leave-one-speaker-out, against the
    /// fixed formula, and prints the model fitted on all speakers.
    EvaluateArousal {
        /// Folder of EmoDB's WAV files (names like 03a01Wa.wav).
        emodb: PathBuf,
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

/// Voices remembered per worker process (the least recently heard is forgotten first).
const MAX_SPEAKERS: usize = 4096;

struct Voice {
    vad: Vad,
    ser: Option<Ser>,
    spec: ModelSpec,
    /// Every participant's voice baseline, shared by this process's model instances.
    baselines: Arc<Mutex<Baselines>>,
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
        let mut w = analyze_window(&mut self.vad, &a.samples.to_f32(), 0.0)
            .map_err(|e| ClassifierError::Failed(e.to_string()))?;
        let mut scores = vec![("speech", f64::from(w.speech_probability))];
        // Arousal against this participant's own baseline (the window's formula score is not
        // used: register and microphone decided it).
        let features = w
            .speaking
            .then(|| VoiceFeatures::new(w.loudness_dbfs, w.f0_median_hz, w.f0_std_hz))
            .flatten();
        w.arousal_score = None;
        w.arousal = None;
        let mut baseline_windows = None;
        if let Some(f) = features {
            let speaker = format!("{}/{}", chunk.meta.room, chunk.meta.endpoint);
            let (p, heard) = self
                .baselines
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .score(&speaker, &f, &EMODB_MODEL);
            let classes = class_scores(p);
            w.arousal_score = Some(p as f32);
            w.arousal = Some(if classes[0].1 > 0.0 {
                Arousal::Calm
            } else if classes[2].1 > 0.0 {
                Arousal::Aroused
            } else {
                Arousal::Neutral
            });
            baseline_windows = Some(heard);
            scores.extend(classes);
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
        if let Some(heard) = baseline_windows {
            // How much of this voice the baseline has heard: below ~20 windows it is mostly the
            // population's.
            extras["baseline_windows"] = serde_json::json!(heard.round());
        }
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
        Command::EvaluateArousal { emodb } => evaluate_arousal(&vad_path, &emodb),
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
            // `audio-worker evaluate-arousal` on Berlin EmoDB (docs/models.md).
            spec.quality = Some(ModelQuality {
                dataset:
                    "Berlin EmoDB, high vs low arousal, leave-one-speaker-out (docs/models.md)"
                        .into(),
                metric: "balanced accuracy".into(),
                value: 0.945,
                classes: 2,
            });
            let baselines = Arc::new(Mutex::new(Baselines::new(
                EMODB_POPULATION,
                BaselineConfig::default(),
                MAX_SPEAKERS,
            )));
            let factory = move || Voice {
                baselines: baselines.clone(),
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

fn evaluate_arousal(vad_path: &std::path::Path, dir: &std::path::Path) -> anyhow::Result<()> {
    use audio_worker::evaluate::{
        emodb_label, fit_all, formula_figures, leave_one_speaker_out, Clip, Figures,
    };
    let mut vad = Vad::load(vad_path, Some(SILERO_SHA256))?;
    let mut names: Vec<String> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.ends_with(".wav"))
        .collect();
    names.sort();
    let started = std::time::Instant::now();
    let mut clips = Vec::new();
    let mut unlabelled = 0;
    for name in &names {
        let Some((speaker, gender, high)) = emodb_label(name) else {
            unlabelled += 1;
            continue;
        };
        let samples = read_wav(&dir.join(name))?;
        let w = analyze_window(&mut vad, &samples, 0.0)?;
        let features = w
            .speaking
            .then(|| VoiceFeatures::new(w.loudness_dbfs, w.f0_median_hz, w.f0_std_hz))
            .flatten();
        clips.push(Clip {
            name: name.clone(),
            speaker,
            gender,
            high,
            features,
            formula_aroused: w.arousal.map(|a| a == Arousal::Aroused),
        });
    }
    let analysed = started.elapsed();
    let cfg = BaselineConfig::default();
    let used = clips.iter().filter(|c| c.high.is_some()).count();
    let without = clips
        .iter()
        .filter(|c| c.high.is_some() && c.features.is_none())
        .count();
    println!(
        "{} clips ({unlabelled} unlabelled), {used} with an arousal label (disgust left out), {without} without voiced speech; analysed in {:.1} s ({:.1} ms per clip)",
        clips.len(),
        analysed.as_secs_f64(),
        analysed.as_secs_f64() * 1e3 / clips.len().max(1) as f64
    );
    let show = |title: &str, f: &Figures| {
        let speakers: Vec<f64> = f.by_speaker.values().copied().collect();
        let (lo, hi) = speakers
            .iter()
            .fold((f64::MAX, f64::MIN), |(l, h), v| (l.min(*v), h.max(*v)));
        println!(
            "{title:<52} balanced {:5.1} %  women {:5.1} %  men {:5.1} %  gap {:4.1} pts  speakers {:5.1}–{:5.1} %  ({} clips)",
            f.balanced * 100.0,
            f.by_gender.get(&'f').copied().unwrap_or(f64::NAN) * 100.0,
            f.by_gender.get(&'m').copied().unwrap_or(f64::NAN) * 100.0,
            (f.by_gender.get(&'f').copied().unwrap_or(0.0)
                - f.by_gender.get(&'m').copied().unwrap_or(0.0))
            .abs()
                * 100.0,
            lo * 100.0,
            hi * 100.0,
            f.scored
        );
    };
    show(
        "fixed formula (aroused = high; calm, neutral = low)",
        &formula_figures(&clips),
    );
    show(
        "speaker-adaptive, LOSO, bias fitted",
        &leave_one_speaker_out(&clips, &cfg, true),
    );
    show(
        "speaker-adaptive, LOSO, no bias (shipped)",
        &leave_one_speaker_out(&clips, &cfg, false),
    );
    let (pop, model) = fit_all(&clips, &cfg, false);
    println!("fitted on all speakers (the bundled constants):\n  population mean {:?} std {:?}\n  weights {:?} bias {:.4}", pop.mean, pop.std, model.weights, model.bias);
    Ok(())
}
