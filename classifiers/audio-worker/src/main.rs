//! `audio-worker`: speech, loudness, pitch and arousal for every participant.
//!
//! - `audio-worker run --nats URL` serves `voice@1` (1 s windows every 0.5 s, 16 kHz mono).
//! - `audio-worker analyze WAV…` prints one JSON object per window.

use std::path::PathBuf;

use std::sync::{Arc, Mutex};

use audio_worker::arousal::{
    class_scores, BaselineConfig, Baselines, VoiceFeatures, EMODB_MODEL, EMODB_POPULATION,
};
use audio_worker::emotion::{EmotionModel, SpeakerNorms};
use audio_worker::ser::{Features, Layout, Ser, SerConfig};
use audio_worker::Arousal;
use audio_worker::{
    analyze_window, analyze_with_vad, default_models_dir, read_wav, Vad, RATE, SER_TAP_FILE,
    SER_TAP_SHA256, SILERO_SHA256,
};
use clap::{Parser, Subcommand};
use classifier_sdk::affect::voice_emotion_declaration;
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
    /// The categorical speech-emotion model (default: the bundled models/ser_tap.onnx, trained
    /// here; its card is `<model>.json`).
    #[arg(long, global = true)]
    emotion_model: Option<PathBuf>,
    /// Serve arousal only, without the categorical model.
    #[arg(long, global = true)]
    no_emotion: bool,
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
        /// Windows analysed at once (one model instance each; a participant's windows stay in
        /// order, the daemon sends one at a time per participant). 2 on a 2-core node with many
        /// participants (docs/benchmarks.md).
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=64))]
        concurrency: u16,
    },
    /// Measures arousal on Berlin EmoDB (its `wav/` folder) leave-one-speaker-out, against the
    /// fixed formula, and prints the model fitted on all speakers.
    EvaluateArousal {
        /// Folder of EmoDB's WAV files (names like 03a01Wa.wav).
        emodb: PathBuf,
    },
    /// Prints the speech-emotion functionals of every labelled file under DIR (`DIR/<class>/*.wav`
    /// or `DIR/<corpus>/<class>/*.wav`) as CSV: what `models/tools/train_ser.py` trains on.
    Features {
        /// Labelled folder.
        dir: PathBuf,
        /// Output CSV.
        #[arg(long)]
        out: PathBuf,
        /// Also one row per window of this length (0: whole files only).
        #[arg(long, default_value_t = 0)]
        window_ms: u32,
    },
    /// Measures the speech-emotion model on labelled speech it was not trained on: per-class
    /// recall, UAR and confusion matrix per corpus, per file and per window, each speaker against
    /// their own causal baseline.
    EvaluateEmotion {
        /// Labelled folder (`DIR/<class>/*.wav` or `DIR/<corpus>/<class>/*.wav`).
        dir: PathBuf,
        /// The model (default: the bundled models/ser_tap.onnx); its card is `<model>.json`.
        #[arg(long)]
        model: Option<PathBuf>,
        /// Window length for the per-window figures.
        #[arg(long, default_value_t = 1000)]
        window_ms: u32,
        /// Score speakers the model was trained on too (their figures are not honest).
        #[arg(long)]
        include_trained: bool,
        /// Add room-like noise (seeded, low-passed white noise) at this SNR against each file's
        /// speech level.
        #[arg(long)]
        noise_snr_db: Option<f32>,
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

/// `audio-worker evaluate-emotion` under call conditions (`models/tools/ser_call_conditions.py
/// --kbps 32 --snr-db 15`: room noise 15 dB below the speech, then Opus at 32 kbps and back), per
/// 1 s window over its utterance (as served), the worse direction: `models/ser_tap_ravdess.onnx`
/// on EmoDB (docs/models.md).
const CROSS_CORPUS_UAR: f64 = 0.409;
/// The same run with `models/ser_tap_emodb.onnx` on RAVDESS: the arousal model (fitted on EmoDB),
/// 1 s windows, causal baseline, balanced accuracy, under the same call conditions.
const AROUSAL_RAVDESS: f64 = AROUSAL_RAVDESS_PERCENT / 100.0;
const AROUSAL_RAVDESS_PERCENT: f64 = 71.6;
const ROUND_AROUSAL_RAVDESS: &str = "71.6";

/// What the registry shows of the voice model's quality: figures on speech neither model was
/// trained or fitted on, under call conditions, per window as served (docs/models.md).
fn voice_quality(categorical: bool) -> ModelQuality {
    if categorical {
        ModelQuality {
            dataset: format!(
                "cross-corpus EmoDB/RAVDESS, worse direction, Opus 32 kbps, noise 15 dB, 1 s windows over the utterance; arousal on RAVDESS {ROUND_AROUSAL_RAVDESS} % (docs/models.md)"
            ),
            metric: "unweighted average recall".into(),
            value: CROSS_CORPUS_UAR,
            classes: 4,
        }
    } else {
        ModelQuality {
            dataset: "arousal high/low on RAVDESS (not fitted on), Opus 32 kbps, noise 15 dB, 1 s windows, causal baseline (docs/models.md)".into(),
            metric: "balanced accuracy".into(),
            value: AROUSAL_RAVDESS,
            classes: 2,
        }
    }
}

/// Voices remembered per worker process (the least recently heard is forgotten first).
const MAX_SPEAKERS: usize = 4096;

struct Voice {
    vad: Vad,
    ser: Option<Ser>,
    emotion: Option<EmotionModel>,
    /// Every participant's baseline of the emotion functionals.
    norms: Arc<Mutex<SpeakerNorms>>,
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
        let samples = a.samples.to_f32();
        let probs = self
            .vad
            .probabilities(&samples)
            .map_err(|e| ClassifierError::Failed(e.to_string()))?;
        let mut w = analyze_with_vad(&probs, &samples, 0.0);
        let speaker = format!("{}/{}", chunk.meta.room, chunk.meta.endpoint);
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
                Arousal::Moderate
            });
            baseline_windows = Some(heard);
            scores.extend(classes);
        }
        let mut verdict = None;
        let mut emotion_scores: Vec<(String, f64)> = Vec::new();
        if let (Some(model), true) = (&mut self.emotion, w.speaking) {
            if let Some((f, q)) = model.front().functionals(&samples, &probs) {
                let mut norms = self.norms.lock().unwrap_or_else(|e| e.into_inner());
                let norm = norms.get(&speaker, &model.card);
                let v = model
                    .classify(&f, &q, norm)
                    .map_err(|e| ClassifierError::Failed(e.to_string()))?;
                // Over the utterance so far (up to 3 s of audio), not this window alone.
                let start_ms = chunk.meta.capture_us as f64 / 1000.0;
                let end_ms = start_ms + samples.len() as f64 * 1000.0 / f64::from(RATE);
                let v = norm.utterance.add(start_ms, end_ms, v);
                // Low-confidence windows publish no category scores (the fusion must not read
                // a category from music, noise, a telephone band or two voices at once).
                if !v.low_confidence {
                    emotion_scores = v
                        .scores
                        .iter()
                        .map(|(l, p)| (l.clone(), f64::from(*p)))
                        .collect();
                }
                verdict = Some(v);
            }
        }
        let mut scores: Vec<(String, f64)> =
            scores.into_iter().map(|(l, p)| (l.to_owned(), p)).collect();
        scores.extend(emotion_scores);
        let ser = match (&mut self.ser, w.speaking) {
            (Some(model), true) => Some(
                model
                    .classify(&a.samples.to_f32())
                    .map_err(|e| ClassifierError::Failed(e.to_string()))?,
            ),
            _ => None,
        };
        let mut p = Prediction::scores(scores.iter().map(|(l, v)| (l.as_str(), *v)));
        p.top = w
            .arousal
            .map(|a| {
                // The same names as the labels and `extras.arousal` (`moderate`, not `neutral`:
                // that is the emotion category).
                match a {
                    Arousal::Moderate => "moderate",
                    Arousal::Calm => "calm",
                    Arousal::Aroused => "aroused",
                }
                .to_owned()
            })
            .or_else(|| Some(if w.speaking { "speech" } else { "silent" }.to_owned()));
        let mut extras = serde_json::to_value(&w).unwrap_or_default();
        if let Some(heard) = baseline_windows {
            // How much of this voice the baseline has heard: below ~20 windows it is mostly the
            // population's.
            extras["baseline_windows"] = serde_json::json!(heard.round());
        }
        if let Some(v) = verdict {
            extras["emotion"] = serde_json::to_value(&v).unwrap_or_default();
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
        Command::Features {
            dir,
            out,
            window_ms,
        } => audio_worker::emotion_eval::features(&vad_path, &dir, &out, window_ms),
        Command::EvaluateEmotion {
            dir,
            model,
            window_ms,
            include_trained,
            noise_snr_db,
        } => {
            let (model, sha) = match model {
                Some(m) => (m, None),
                None => (
                    cli.models_dir
                        .clone()
                        .unwrap_or_else(default_models_dir)
                        .join(audio_worker::SER_TAP_FILE),
                    Some(audio_worker::SER_TAP_SHA256),
                ),
            };
            audio_worker::emotion_eval::evaluate(
                &vad_path,
                &model,
                sha,
                &dir,
                window_ms,
                include_trained,
                noise_snr_db,
            )
        }
        Command::Analyze { wavs, window_ms } => {
            let mut vad = Vad::load(&vad_path, Some(SILERO_SHA256))?;
            let mut ser = ser_config.map(Ser::load).transpose()?;
            let mut emotion = emotion_source(&cli.models_dir, &cli.emotion_model, cli.no_emotion)
                .map(|(p, sha)| EmotionModel::load(&p, sha))
                .transpose()?;
            let window = (RATE as usize * window_ms as usize / 1000).max(512);
            for path in wavs {
                let samples = read_wav(&path)?;
                // Each file is one voice: its baseline builds over its windows.
                let mut norm = emotion
                    .as_ref()
                    .map(|m| audio_worker::emotion::SpeakerNorm::new(&m.card));
                for (i, w) in samples.chunks(window).enumerate() {
                    if w.len() < 512 {
                        continue;
                    }
                    let a =
                        analyze_window(&mut vad, w, i as f64 * window as f64 / f64::from(RATE))?;
                    let mut v = serde_json::to_value(&a)?;
                    if let (Some(model), Some(norm), true) = (&mut emotion, &mut norm, a.speaking) {
                        let probs = vad.probabilities(w)?;
                        if let Some((f, q)) = model.front().functionals(w, &probs) {
                            v["emotion"] = serde_json::to_value(model.classify(&f, &q, norm)?)?;
                        }
                    }
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
            concurrency,
        } => {
            Vad::load(&vad_path, Some(SILERO_SHA256))?;
            let emotion = emotion_source(&cli.models_dir, &cli.emotion_model, cli.no_emotion);
            let mut labels = vec!["speech", "calm", "moderate", "aroused"];
            let card = match &emotion {
                Some((path, sha)) => Some(EmotionModel::load(path, *sha)?.card),
                None => None,
            };
            if let Some(card) = &card {
                labels.extend(card.labels.iter().map(String::as_str));
            }
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
                &labels,
            );
            spec.deadline_ms = window_ms + 1000;
            spec.affect = Some(voice_emotion_declaration(
                card.as_ref().map(|c| &c.labels[..]).unwrap_or_default(),
            ));
            // Emotion vs expression outputs, for the daemon's processing policy.
            spec.outputs = Some(audio_worker::output_declaration(
                card.as_ref().map(|c| &c.labels[..]).unwrap_or_default(),
            ));
            // Figures on speech not trained or fitted on, per window as served (docs/models.md;
            // `audio-worker evaluate-emotion`).
            spec.quality = Some(voice_quality(card.is_some()));
            let baselines = Arc::new(Mutex::new(Baselines::new(
                EMODB_POPULATION,
                BaselineConfig::default(),
                MAX_SPEAKERS,
            )));
            let norms = Arc::new(Mutex::new(SpeakerNorms::new(MAX_SPEAKERS)));
            let factory = move || Voice {
                baselines: baselines.clone(),
                vad: Vad::load(&vad_path, Some(SILERO_SHA256)).expect("checked at start"),
                ser: ser_config
                    .clone()
                    .map(|c| Ser::load(c).expect("checked at start")),
                emotion: emotion
                    .as_ref()
                    .map(|(p, sha)| EmotionModel::load(p, *sha).expect("checked at start")),
                norms: norms.clone(),
                spec: spec.clone(),
            };
            let mut options = WorkerOptions::new(nats).concurrency(usize::from(concurrency));
            options.http_listen = metrics;
            Worker::new(factory)
                .options(options)
                .run(shutdown_signal())
                .await?;
            Ok(())
        }
    }
}

/// The emotion model to serve: `--emotion-model`, else the bundled one (checksummed), unless
/// `--no-emotion`.
fn emotion_source(
    models_dir: &Option<PathBuf>,
    model: &Option<PathBuf>,
    off: bool,
) -> Option<(PathBuf, Option<&'static str>)> {
    if off {
        return None;
    }
    Some(match model {
        Some(m) => (m.clone(), None),
        None => (
            models_dir
                .clone()
                .unwrap_or_else(default_models_dir)
                .join(SER_TAP_FILE),
            Some(SER_TAP_SHA256),
        ),
    })
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
        "fixed formula (aroused = high; calm, moderate = low)",
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_declared_quality_passes_the_registry_s_checks() {
        for categorical in [true, false] {
            let mut spec = ModelSpec::audio(
                "voice",
                "1",
                AudioChunkSpec {
                    window_ms: 1000,
                    hop_ms: 500,
                    sample_rate: RATE,
                    channels: 1,
                    format: SampleFormat::F32,
                },
                &["speech", "calm", "moderate", "aroused"],
            );
            spec.quality = Some(voice_quality(categorical));
            spec.validate()
                .unwrap_or_else(|e| panic!("{categorical}: {e:?}"));
        }
    }

    #[test]
    fn the_voice_declaration_places_the_emotions_and_keeps_arousal() {
        let labels: Vec<String> = ["angry", "happy", "neutral", "sad"]
            .map(String::from)
            .to_vec();
        let d = voice_emotion_declaration(&labels);
        d.validate().expect("a valid declaration");
        assert_eq!(d.emotions, labels);
        // Valence from the categories (prosody alone has none), arousal classes unchanged.
        assert!(d.labels["angry"].valence.unwrap() < 0.0);
        assert!(d.labels["happy"].valence.unwrap() > 0.0);
        assert!(d.labels["moderate"].valence.is_none());
        assert!(d.labels.contains_key("calm") && d.labels.contains_key("aroused"));
        assert_eq!(d.speech_label.as_deref(), Some("speech"));
        // Without the model: arousal only.
        let d = voice_emotion_declaration(&[]);
        assert!(d.emotions.is_empty() && !d.labels.contains_key("neutral"));
    }
}
