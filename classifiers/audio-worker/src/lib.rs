//! An honest audio worker: it reports what can be measured, and how well (docs/models.md):
//!
//! - **speech**: Silero VAD (`silero_vad.onnx`) on 32 ms frames at 16 kHz; a window is speech when at
//!   least 30 % of its frames have p(speech) > 0.5;
//! - **loudness**: RMS level of the speech frames in dBFS;
//! - **pitch (F0)**: per voiced frame, the normalised autocorrelation peak between 70 and 400 Hz
//!   (accepted above 0.45), and its median and standard deviation over the window;
//! - **arousal**: each participant's voice against its own running baseline ([`arousal`]): the
//!   z-scores of log F0 and relative F0 spread against what this voice usually does, through a
//!   logistic model fitted on Berlin EmoDB leave-one-speaker-out (94.5 % balanced accuracy on high
//!   vs low arousal, women 95.1 %, men 93.8 %; the earlier fixed formula on absolute loudness and
//!   pitch: 70.0 %, women 59.8 %, men 83.1 %). A new voice is scored against population values
//!   until its own baseline fills; `extras.baseline_windows` says how much has been heard. It says
//!   nothing about valence (happy vs angry). `analyze` still prints the fixed formula's score.
//!
//! - **speech emotion** ([`emotion`], default): angry, happy, neutral, sad from acoustic
//!   functionals of the window, each voice against its own causal baseline, through
//!   `ser_tap.onnx` (trained here by `models/tools/train_ser.py` on EmoDB and RAVDESS; measured
//!   cross-corpus UAR ~40–50 %, docs/models.md). Clipped, narrow-band or unfamiliar windows are
//!   marked low confidence.
//!
//! Another speech-emotion model plugs in by configuration ([`ser::SerConfig`]: an ONNX model with a
//! declared log-mel or MFCC front-end); its probabilities are added on speech windows.

pub mod arousal;
pub mod corpus;
pub mod emotion;
pub mod emotion_eval;
pub mod evaluate;
pub mod ser;

use std::path::Path;

use classifier_sdk::onnx::ort::value::TensorRef;
use classifier_sdk::onnx::{self, OnnxError, Session};
use serde::Serialize;

/// sha256 of the vendored `silero_vad.onnx`.
pub const SILERO_SHA256: &str = "1a153a22f4509e292a94e67d6f9b85e8deb25b4988682b7e174c65279d8788e3";
/// The bundled speech-emotion model (trained here by `models/tools/train_ser.py`).
pub const SER_TAP_FILE: &str = "ser_tap.onnx";
/// Its sha256.
pub const SER_TAP_SHA256: &str = "70bf94187ede1a0fd8ee0b369063af37535be99186dec7525aedecd6e6f0fc38";
/// Sample rate the worker analyses at.
pub const RATE: u32 = 16_000;
const FRAME: usize = 512;
const CONTEXT: usize = 64;

/// The vendored models' folder (`$TAP_MODELS_DIR`, else the repository's `models/`).
pub use classifier_sdk::onnx::models_dir as default_models_dir;

fn ort_err(e: impl std::fmt::Display) -> OnnxError {
    OnnxError::Ort(e.to_string())
}

/// Silero VAD, frame by frame.
pub struct Vad {
    session: Session,
}

impl Vad {
    /// Loads (checksum verified when `sha256` is given).
    pub fn load(path: &Path, sha256: Option<&str>) -> Result<Self, OnnxError> {
        Ok(Vad {
            session: onnx::load(path, sha256)?,
        })
    }

    /// p(speech) for every 512-sample frame of 16 kHz `samples` (state carried across frames).
    pub fn probabilities(&mut self, samples: &[f32]) -> Result<Vec<f32>, OnnxError> {
        let mut state = vec![0f32; 2 * 128];
        let mut context = vec![0f32; CONTEXT];
        let sr = [i64::from(RATE)];
        let mut out = Vec::with_capacity(samples.len() / FRAME);
        for frame in samples.chunks_exact(FRAME) {
            let mut input = Vec::with_capacity(CONTEXT + FRAME);
            input.extend_from_slice(&context);
            input.extend_from_slice(frame);
            let outputs = self
                .session
                .run(classifier_sdk::onnx::ort::inputs![
                    "input" => TensorRef::from_array_view(([1usize, CONTEXT + FRAME], &input[..])).map_err(ort_err)?,
                    "state" => TensorRef::from_array_view(([2usize, 1, 128], &state[..])).map_err(ort_err)?,
                    "sr" => TensorRef::from_array_view(((), &sr[..])).map_err(ort_err)?,
                ])
                .map_err(ort_err)?;
            let (_, p) = outputs["output"]
                .try_extract_tensor::<f32>()
                .map_err(ort_err)?;
            out.push(p.first().copied().unwrap_or(0.0));
            let (_, s) = outputs["stateN"]
                .try_extract_tensor::<f32>()
                .map_err(ort_err)?;
            let n = state.len();
            state.copy_from_slice(&s[..n]);
            context.copy_from_slice(&frame[FRAME - CONTEXT..]);
        }
        Ok(out)
    }
}

/// F0 of one frame by normalised autocorrelation (None when unvoiced).
pub fn pitch(frame: &[f32], rate: u32) -> Option<f32> {
    pitch_and_periodicity(frame, rate).0
}

/// F0 (None when unvoiced) and the normalised autocorrelation peak (0: none) of one frame.
pub fn pitch_and_periodicity(frame: &[f32], rate: u32) -> (Option<f32>, f32) {
    let min_lag = (rate / 400) as usize;
    let max_lag = (rate / 70) as usize;
    if frame.len() < max_lag * 2 {
        return (None, 0.0);
    }
    let mean = frame.iter().sum::<f32>() / frame.len() as f32;
    let x: Vec<f32> = frame.iter().map(|v| v - mean).collect();
    let energy: f32 = x.iter().map(|v| v * v).sum();
    if energy < 1e-6 {
        return (None, 0.0);
    }
    let n = x.len() - max_lag;
    let mut best = (0usize, 0f32);
    for lag in min_lag..=max_lag {
        let (mut num, mut e1, mut e2) = (0f32, 0f32, 0f32);
        for i in 0..n {
            num += x[i] * x[i + lag];
            e1 += x[i] * x[i];
            e2 += x[i + lag] * x[i + lag];
        }
        let r = num / (e1 * e2).sqrt().max(1e-12);
        if r > best.1 {
            best = (lag, r);
        }
    }
    ((best.1 > 0.45).then(|| rate as f32 / best.0 as f32), best.1)
}

/// Calm / moderate / aroused (the middle class is not `neutral`: that is an emotion category).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Arousal {
    /// Score < 0.35.
    Calm,
    /// 0.35 ≤ score < 0.6.
    Moderate,
    /// Score ≥ 0.6.
    Aroused,
}

/// What one window says.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct WindowAnalysis {
    /// Start of the window, seconds from the start of the input (for `analyze`).
    pub start_s: f64,
    /// Mean p(speech).
    pub speech_probability: f32,
    /// Fraction of frames with p(speech) > 0.5.
    pub speech_ratio: f32,
    /// Speech detected.
    pub speaking: bool,
    /// RMS level of the speech frames (of all frames when silent), dBFS.
    pub loudness_dbfs: f32,
    /// Median F0 of voiced speech frames, Hz.
    pub f0_median_hz: Option<f32>,
    /// Spread of F0 (1.4826 × median absolute deviation, robust to octave errors), Hz.
    pub f0_std_hz: Option<f32>,
    /// Fraction of speech frames that are voiced.
    pub voiced_ratio: f32,
    /// Voice energy: RMS level of the speech frames, dBFS (speech only; a physical measure, not
    /// affect).
    pub voice_energy_dbfs: Option<f32>,
    /// Pitch variability: robust spread (1.4826 × median absolute deviation) of the voiced
    /// frames' F0 in semitones around their median (speech with at least two voiced frames; a
    /// physical measure, independent of the voice's register, not affect).
    pub pitch_variability_st: Option<f32>,
    /// Arousal score in [0, 1] (speech only).
    pub arousal_score: Option<f32>,
    /// Arousal class (speech only).
    pub arousal: Option<Arousal>,
}

fn map(v: f32, lo: f32, hi: f32) -> f32 {
    ((v - lo) / (hi - lo)).clamp(0.0, 1.0)
}

/// Analyses one window of 16 kHz mono samples.
pub fn analyze_window(
    vad: &mut Vad,
    samples: &[f32],
    start_s: f64,
) -> Result<WindowAnalysis, OnnxError> {
    let probs = vad.probabilities(samples)?;
    Ok(analyze_with_vad(&probs, samples, start_s))
}

/// [`analyze_window`] given Silero's p(speech) per 512-sample frame.
pub fn analyze_with_vad(probs: &[f32], samples: &[f32], start_s: f64) -> WindowAnalysis {
    let frames: Vec<&[f32]> = samples.chunks_exact(FRAME).collect();
    let n = probs.len().max(1) as f32;
    let speech_probability = probs.iter().sum::<f32>() / n;
    let speech_ratio = probs.iter().filter(|p| **p > 0.5).count() as f32 / n;
    let speaking = speech_ratio >= 0.3;
    let chosen: Vec<&[f32]> = frames
        .iter()
        .zip(probs)
        .filter(|(_, p)| !speaking || **p > 0.5)
        .map(|(f, _)| *f)
        .collect();
    let (sum_sq, count) = chosen.iter().fold((0f64, 0usize), |(s, c), f| {
        (
            s + f.iter().map(|v| f64::from(*v) * f64::from(*v)).sum::<f64>(),
            c + f.len(),
        )
    });
    let rms = (sum_sq / count.max(1) as f64).sqrt() as f32;
    let loudness_dbfs = 20.0 * rms.max(1e-7).log10();
    let mut f0: Vec<f32> = if speaking {
        chosen.iter().filter_map(|f| pitch(f, RATE)).collect()
    } else {
        vec![]
    };
    f0.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
    let voiced_ratio = if speaking {
        f0.len() as f32 / chosen.len().max(1) as f32
    } else {
        0.0
    };
    let f0_median_hz = (!f0.is_empty()).then(|| f0[f0.len() / 2]);
    // A robust spread (1.4826 × median absolute deviation ≈ σ for normal data): autocorrelation
    // pitch makes octave errors, which a plain standard deviation would turn into "variability".
    let f0_std_hz = (f0.len() > 1).then(|| robust_spread(&f0, f0[f0.len() / 2]));
    let pitch_variability_st = (f0.len() > 1).then(|| {
        let m = f0[f0.len() / 2];
        let st: Vec<f32> = f0.iter().map(|f| 12.0 * (f / m).log2()).collect();
        robust_spread(&st, 0.0)
    });
    let voice_energy_dbfs = speaking.then_some(loudness_dbfs);
    let (arousal_score, arousal) = if speaking {
        let score = 0.5 * map(loudness_dbfs, -45.0, -10.0)
            + 0.3 * f0_median_hz.map(|f| map(f, 90.0, 300.0)).unwrap_or(0.0)
            + 0.2 * f0_std_hz.map(|s| map(s, 5.0, 60.0)).unwrap_or(0.0);
        let class = if score < 0.35 {
            Arousal::Calm
        } else if score < 0.6 {
            Arousal::Moderate
        } else {
            Arousal::Aroused
        };
        (Some(score), Some(class))
    } else {
        (None, None)
    };
    WindowAnalysis {
        start_s,
        speech_probability,
        speech_ratio,
        speaking,
        loudness_dbfs,
        f0_median_hz,
        f0_std_hz,
        voiced_ratio,
        voice_energy_dbfs,
        pitch_variability_st,
        arousal_score,
        arousal,
    }
}

/// 1.4826 × the median absolute deviation of `values` from `centre` (≈ σ for normal data, robust
/// to outliers such as autocorrelation pitch's octave errors).
fn robust_spread(values: &[f32], centre: f32) -> f32 {
    let mut dev: Vec<f32> = values.iter().map(|v| (v - centre).abs()).collect();
    dev.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
    dev.get(dev.len() / 2).map_or(0.0, |d| 1.4826 * d)
}

/// The worker's outputs (label names, `top` values and top-level `extras` keys) that measure voice
/// activity and physical properties of the voice: what may leave the daemon under
/// `--policy expressions`. `speech` is Silero's p(speech) label (and the `top` of a speech window
/// without an arousal class), `silent` the `top` of a window without speech.
pub const EXPRESSION_OUTPUTS: [&str; 9] = [
    "speech",
    "silent",
    "start_s",
    "speech_probability",
    "speech_ratio",
    "speaking",
    "voiced_ratio",
    "voice_energy_dbfs",
    "pitch_variability_st",
];

/// The worker's outputs that infer affect: the arousal classes (labels, `top`, `extras.arousal`,
/// `extras.arousal_score`) and what the arousal baseline has heard (`baseline_windows`), the
/// speech-emotion verdict (`extras.emotion`) and a plugged-in model's scores (`extras.ser`). The raw
/// prosody the arousal model scores against each voice's baseline (`loudness_dbfs` over all frames,
/// `f0_median_hz`, `f0_std_hz`) is declared with them: under `expressions` only the two named
/// physical measures leave (`voice_energy_dbfs`, `pitch_variability_st`), not the arousal model's
/// inputs in full. The categorical emotion labels come from the model's card
/// ([`output_declaration`]).
pub const AFFECT_OUTPUTS: [&str; 11] = [
    "calm",
    "moderate",
    "aroused",
    "arousal",
    "arousal_score",
    "baseline_windows",
    "emotion",
    "ser",
    "loudness_dbfs",
    "f0_median_hz",
    "f0_std_hz",
];

/// What the worker's outputs are, for the daemon's processing policy (the registry entry's
/// `outputs`): [`AFFECT_OUTPUTS`] and the categorical speech-emotion labels (`emotion_labels`,
/// from the model's card; empty with `--no-emotion`) are `emotion`; [`EXPRESSION_OUTPUTS`] are
/// `expression`. Under `--policy expressions` only speaking, voice energy and pitch variability
/// (and the speech measures beside them) leave the daemon.
pub fn output_declaration(emotion_labels: &[String]) -> classifier_sdk::OutputDeclaration {
    let mut emotion: Vec<String> = AFFECT_OUTPUTS.iter().map(|s| (*s).to_owned()).collect();
    for l in emotion_labels {
        if !emotion.contains(l) {
            emotion.push(l.clone());
        }
    }
    classifier_sdk::OutputDeclaration {
        emotion,
        expression: EXPRESSION_OUTPUTS.iter().map(|s| (*s).to_owned()).collect(),
    }
}

/// Resamples mono audio linearly (enough for VAD and pitch; the daemon delivers 16 kHz already).
pub fn resample(samples: &[f32], from: u32, to: u32) -> Vec<f32> {
    if from == to || samples.is_empty() {
        return samples.to_vec();
    }
    let n = (samples.len() as u64 * u64::from(to) / u64::from(from)) as usize;
    (0..n)
        .map(|i| {
            let pos = i as f64 * f64::from(from) / f64::from(to);
            let i0 = pos.floor() as usize;
            let i1 = (i0 + 1).min(samples.len() - 1);
            let f = (pos - i0 as f64) as f32;
            samples[i0] * (1.0 - f) + samples[i1] * f
        })
        .collect()
}

/// Reads a WAV file as mono f32 at 16 kHz.
pub fn read_wav(path: &Path) -> anyhow::Result<Vec<f32>> {
    use anyhow::Context as _;
    read_wav_inner(path).with_context(|| format!("{}: not a readable WAV file", path.display()))
}

fn read_wav_inner(path: &Path) -> anyhow::Result<Vec<f32>> {
    let mut r = hound::WavReader::open(path)?;
    let spec = r.spec();
    let ch = spec.channels.max(1) as usize;
    let raw: Vec<f32> = match spec.sample_format {
        hound::SampleFormat::Float => r.samples::<f32>().collect::<Result<_, _>>()?,
        hound::SampleFormat::Int => {
            let scale = (1i64 << (spec.bits_per_sample - 1)) as f32;
            r.samples::<i32>()
                .map(|s| s.map(|v| v as f32 / scale))
                .collect::<Result<_, _>>()?
        }
    };
    let mono: Vec<f32> = raw
        .chunks(ch)
        .map(|c| c.iter().sum::<f32>() / c.len() as f32)
        .collect();
    Ok(resample(&mono, spec.sample_rate, RATE))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pitch_of_a_tone() {
        let tone: Vec<f32> = (0..512)
            .map(|i| (2.0 * std::f32::consts::PI * 200.0 * i as f32 / 16000.0).sin() * 0.5)
            .collect();
        let f = pitch(&tone, 16000).unwrap();
        assert!((f - 200.0).abs() < 6.0, "{f}");
        assert_eq!(pitch(&[0.0; 512], 16000), None);
    }

    /// A voiced test signal: a sine whose frequency follows `f0(t)` (phase-continuous).
    fn voice(f0: impl Fn(f32) -> f32, amplitude: f32, seconds: f32) -> Vec<f32> {
        let n = (seconds * RATE as f32) as usize;
        let mut phase = 0f32;
        (0..n)
            .map(|i| {
                let t = i as f32 / RATE as f32;
                phase += 2.0 * std::f32::consts::PI * f0(t) / RATE as f32;
                amplitude * phase.sin()
            })
            .collect()
    }

    fn speech(samples: &[f32]) -> WindowAnalysis {
        analyze_with_vad(&vec![0.9; samples.len() / FRAME], samples, 0.0)
    }

    #[test]
    fn voice_energy_and_pitch_variability_are_measured_from_the_signal() {
        let steady = speech(&voice(|_| 150.0, 0.5, 1.0));
        // RMS of a sine of amplitude 0.5: 0.5 / sqrt(2), -9.03 dBFS.
        let e = steady.voice_energy_dbfs.unwrap();
        assert!((e + 9.03).abs() < 0.2, "{e}");
        let quieter = speech(&voice(|_| 150.0, 0.25, 1.0));
        assert!((e - quieter.voice_energy_dbfs.unwrap() - 6.02).abs() < 0.2);
        let flat = steady.pitch_variability_st.unwrap();
        assert!(flat < 0.3, "a steady tone varies by {flat} semitones");
        // ±3 semitones of vibrato at 2 Hz: a spread of a few semitones, whatever the register.
        let lively = |base: f32| {
            speech(&voice(
                move |t| {
                    base * 2f32.powf(3.0 * (2.0 * std::f32::consts::PI * 2.0 * t).sin() / 12.0)
                },
                0.5,
                1.0,
            ))
            .pitch_variability_st
            .unwrap()
        };
        let (low, high) = (lively(110.0), lively(220.0));
        assert!(low > 1.5 && low < 4.5, "{low}");
        assert!((low - high).abs() < 0.6, "register-free: {low} vs {high}");
        // No speech: no voice measures (loudness is still the level of the window).
        let silent = analyze_with_vad(&[0.01; 31], &voice(|_| 150.0, 0.5, 1.0), 0.0);
        assert!(!silent.speaking);
        assert_eq!(
            (silent.voice_energy_dbfs, silent.pitch_variability_st),
            (None, None)
        );
    }

    #[test]
    fn every_output_is_declared_once_and_affect_is_not_expression() {
        let labels: Vec<String> = ["angry", "happy", "neutral", "sad"]
            .map(String::from)
            .to_vec();
        let d = output_declaration(&labels);
        d.validate().expect("no output is both");
        // Every extras key a window gives, and those the worker adds, are declared.
        let w = serde_json::to_value(speech(&voice(|_| 150.0, 0.5, 1.0))).unwrap();
        let keys = w.as_object().unwrap().keys().map(String::as_str).chain([
            "baseline_windows",
            "emotion",
            "ser",
        ]);
        for k in keys {
            assert!(
                d.is_expression(k) ^ d.emotion.iter().any(|e| e == k),
                "{k} declared once"
            );
        }
        for affect in [
            "calm",
            "moderate",
            "aroused",
            "arousal",
            "arousal_score",
            "emotion",
        ]
        .into_iter()
        .chain(labels.iter().map(String::as_str))
        {
            assert!(!d.is_expression(affect), "{affect}");
        }
        for expression in [
            "speech",
            "speaking",
            "voice_energy_dbfs",
            "pitch_variability_st",
        ] {
            assert!(d.is_expression(expression), "{expression}");
        }
        // The middle arousal class reads `moderate` everywhere (`neutral` is an emotion category).
        assert_eq!(serde_json::json!(Arousal::Moderate), "moderate");
    }

    #[test]
    fn resampling_keeps_duration() {
        let s = vec![0.5f32; 22050];
        assert_eq!(resample(&s, 22050, 16000).len(), 16000);
    }
}
