//! Categorical speech emotion (angry, happy, sad, neutral) from acoustic functionals, each voice
//! against its own running baseline.
//!
//! The features are computed by this module at training time (`audio-worker features`, read by
//! `models/tools/train_ser.py`) and at inference, so the model sees the same numbers in both:
//!
//! - **frame descriptors** on the speech frames (Silero VAD p > 0.5) of 25 ms Hann windows every
//!   10 ms: log energy, MFCC 1–12 (26 HTK mel bands, 0–8 kHz), spectral centroid, flatness, 85 %
//!   roll-off, alpha ratio (50 Hz–1 kHz against 1–5 kHz) and spectral flux; and on 32 ms frames the
//!   autocorrelation F0 ([`crate::pitch`]) in semitones;
//! - **functionals** over the window ([`functionals`]): mean, standard deviation, 10th and 90th
//!   percentile of each spectral descriptor; of F0 the same plus its range and mean absolute
//!   frame-to-frame change; the voiced and speech ratios and a syllable-rate proxy (energy peaks
//!   per second) — [`N_FEATURES`] numbers;
//! - **speaker adaptation** ([`SpeakerNorm`]): each functional minus the running mean of this
//!   speaker's previous windows (shrunk towards the training population's mean while few are
//!   known), over the population's standard deviation: causal, as a call allows;
//! - **classifier**: an ONNX model (multinomial logistic regression, trained by
//!   `models/tools/train_ser.py`) on those z-scores; its sidecar JSON holds the population, labels
//!   and what it was trained on.
//!
//! **Bad input** ([`Quality`]): a clipped window, a narrow-band one (no energy above 4 kHz: a
//! telephone stream), or one whose features lie far outside the training distribution (music, two
//! voices at once, noise) is marked `low_confidence` and its scores are pulled towards uniform.

use std::collections::HashMap;
use std::path::Path;

use classifier_sdk::onnx::ort::value::TensorRef;
use classifier_sdk::onnx::{self, OnnxError, Session};
use serde::{Deserialize, Serialize};

use crate::ser::{dct, mel_filters};

const WIN: usize = 400;
const HOP: usize = 160;
const N_FFT: usize = 512;
const VAD_FRAME: usize = 512;
/// Spectral descriptors per frame.
const N_SPECTRAL: usize = 18;
/// Number of functionals.
pub const N_FEATURES: usize = N_SPECTRAL * 4 + 6 + 3 + N_DYNAMIC;

/// The second block (appended, so the first 81 keep their meaning): spectral slopes and
/// Hammarberg index, MFCC and energy dynamics, harmonics-to-noise, pitch movement and the rhythm
/// of voiced stretches (the eGeMAPS families the first block lacked).
const N_DYNAMIC: usize = 4 + 2 + 12 + 1 + 2 + 2 + 1 + 4;

/// Names of the functionals, in order (for the CSV header and the model card).
pub fn feature_names() -> Vec<String> {
    let mut lld: Vec<String> = vec!["logE".into()];
    lld.extend((1..=12).map(|i| format!("mfcc{i}")));
    lld.extend(
        ["centroid", "flatness", "rolloff", "alpha", "flux"]
            .iter()
            .map(|s| s.to_string()),
    );
    let mut out = Vec::new();
    for l in &lld {
        for f in ["mean", "std", "p10", "p90"] {
            out.push(format!("{l}_{f}"));
        }
    }
    for f in ["mean", "std", "p10", "p90", "range", "delta"] {
        out.push(format!("f0st_{f}"));
    }
    out.extend(["voiced_ratio", "speech_ratio", "peak_rate"].map(String::from));
    for f in ["slope0_500", "slope500_1500"] {
        out.push(format!("{f}_mean"));
        out.push(format!("{f}_std"));
    }
    out.extend(["hammarberg_mean", "hammarberg_std"].map(String::from));
    out.extend((1..=12).map(|i| format!("dmfcc{i}_mean_abs")));
    out.push("dlogE_mean_abs".into());
    out.extend(["hnr_mean", "hnr_std", "f0st_rise", "f0st_fall", "f0st_p50"].map(String::from));
    out.extend(
        [
            "voiced_seg_mean",
            "voiced_seg_std",
            "unvoiced_seg_mean",
            "voiced_seg_rate",
        ]
        .map(String::from),
    );
    out
}

/// Below this median periodicity a window is not taken for one clear voice.
pub const MIN_PERIODICITY: f32 = 0.6;

/// What is known about a window's signal, apart from the features.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Default)]
pub struct Quality {
    /// Fraction of samples at or near full scale.
    pub clipped: f32,
    /// 95th percentile over speech frames of the share of a frame's energy above 4 kHz (the
    /// fricatives of wide-band speech put energy there; a telephone band has none).
    pub high_band: f32,
    /// Speech frames used.
    pub frames: usize,
    /// Median autocorrelation peak of the speech frames: one voice is periodic; two voices at
    /// once, music with several notes, or noise are less so.
    pub periodicity: f32,
}

impl Quality {
    /// Why the window cannot be trusted, if it cannot.
    pub fn problem(&self) -> Option<&'static str> {
        if self.frames < 20 {
            Some("too little speech")
        } else if self.clipped > 0.005 {
            Some("clipped")
        } else if self.high_band < 0.002 {
            Some("narrow band (telephone?)")
        } else if self.periodicity < MIN_PERIODICITY {
            Some("not one clear voice")
        } else {
            None
        }
    }
}

fn percentile(sorted: &[f32], q: f32) -> f32 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() - 1) as f32 * q).round() as usize;
    sorted[i]
}

fn stats4(v: &[f32], out: &mut Vec<f32>) {
    if v.is_empty() {
        out.extend([0.0; 4]);
        return;
    }
    let n = v.len() as f32;
    let mean = v.iter().sum::<f32>() / n;
    let var = v.iter().map(|x| (x - mean) * (x - mean)).sum::<f32>() / n;
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
    out.extend([mean, var.sqrt(), percentile(&s, 0.1), percentile(&s, 0.9)]);
}

/// Slope of the power spectrum in dB per kHz between `lo` and `hi` (least squares over the bins).
fn db_slope(power: &[f32], bin_hz: f32, lo: f32, hi: f32) -> f32 {
    let (a, b) = ((lo / bin_hz).ceil() as usize, (hi / bin_hz) as usize);
    let bins = a.min(power.len())..(b + 1).min(power.len());
    let n = bins.len() as f32;
    if n < 2.0 {
        return 0.0;
    }
    let (mut sx, mut sy, mut sxx, mut sxy) = (0f32, 0f32, 0f32, 0f32);
    for k in bins {
        let x = k as f32 * bin_hz / 1000.0;
        let y = 10.0 * power[k].log10();
        sx += x;
        sy += y;
        sxx += x * x;
        sxy += x * y;
    }
    let den = n * sxx - sx * sx;
    if den.abs() < 1e-9 {
        0.0
    } else {
        (n * sxy - sx * sy) / den
    }
}

/// The front-end's fixed tables.
pub struct FrontEnd {
    /// Per mel band: first power bin and its weights (the non-zero part of the triangle).
    mel: Vec<(usize, Vec<f32>)>,
    hann: Vec<f32>,
    /// cos and sin of −2πk/N_FFT.
    twiddle: Vec<(f32, f32)>,
    /// DCT-II basis, 13 × 26.
    dct: Vec<Vec<f32>>,
}

impl FrontEnd {
    /// Radix-2 FFT of N_FFT points with the precomputed twiddles.
    fn fft(&self, re: &mut [f32], im: &mut [f32]) {
        crate::ser::fft_with(re, im, &self.twiddle);
    }
}

impl Default for FrontEnd {
    fn default() -> Self {
        let mel = mel_filters(26)
            .into_iter()
            .map(|f| {
                let first = f.iter().position(|w| *w > 0.0).unwrap_or(0);
                let last = f.iter().rposition(|w| *w > 0.0).unwrap_or(first);
                (first, f[first..=last].to_vec())
            })
            .collect();
        // The DCT basis: `dct` of unit vectors.
        let dct_basis: Vec<Vec<f32>> = (0..26)
            .map(|i| {
                let mut e = vec![0f32; 26];
                e[i] = 1.0;
                dct(&e, 13)
            })
            .collect();
        let dct = (0..13)
            .map(|k| dct_basis.iter().map(|col| col[k]).collect())
            .collect();
        FrontEnd {
            mel,
            hann: (0..WIN)
                .map(|i| 0.5 - 0.5 * (2.0 * std::f32::consts::PI * i as f32 / WIN as f32).cos())
                .collect(),
            twiddle: crate::ser::twiddles(N_FFT),
            dct,
        }
    }
}

impl FrontEnd {
    /// Functionals of a window of 16 kHz samples given Silero's p(speech) per 512-sample frame;
    /// None when it holds too little speech to say anything.
    pub fn functionals(&self, samples: &[f32], vad: &[f32]) -> Option<(Vec<f32>, Quality)> {
        let is_speech = |sample: usize| {
            vad.get(sample / VAD_FRAME)
                .or(vad.last())
                .is_some_and(|p| *p > 0.5)
        };
        let clipped =
            samples.iter().filter(|v| v.abs() >= 0.99).count() as f32 / samples.len().max(1) as f32;
        let mut lld: Vec<Vec<f32>> = vec![Vec::new(); N_SPECTRAL];
        let mut log_e_all = Vec::new();
        let mut shares = Vec::new();
        let mut prev: Option<Vec<f32>> = None;
        // Second block's frame-level descriptors.
        let (mut slope_lo, mut slope_mid, mut hammarberg) = (Vec::new(), Vec::new(), Vec::new());
        let mut dmfcc = [0f32; 12];
        let (mut dlog_e, mut n_delta) = (0f32, 0usize);
        let mut prev_frame: Option<(Vec<f32>, f32)> = None;
        let bin_hz = 16_000.0 / N_FFT as f32;
        let mut start = 0;
        let mut frames = 0;
        while start + WIN <= samples.len() {
            let speech = is_speech(start + WIN / 2);
            let mut re = vec![0f32; N_FFT];
            let mut im = vec![0f32; N_FFT];
            for i in 0..WIN {
                re[i] = samples[start + i] * self.hann[i];
            }
            start += HOP;
            self.fft(&mut re, &mut im);
            let power: Vec<f32> = (0..=N_FFT / 2)
                .map(|k| re[k] * re[k] + im[k] * im[k] + 1e-10)
                .collect();
            let e: f32 = power.iter().sum();
            let log_e = e.ln();
            log_e_all.push((log_e, speech));
            if !speech {
                prev = None;
                prev_frame = None;
                continue;
            }
            frames += 1;
            let mags: Vec<f32> = power.iter().map(|p| p.sqrt()).collect();
            let logmel: Vec<f32> = self
                .mel
                .iter()
                .map(|(first, f)| {
                    (f.iter()
                        .zip(&power[*first..])
                        .map(|(a, b)| a * b)
                        .sum::<f32>()
                        + 1e-6)
                        .ln()
                })
                .collect();
            let mfcc: Vec<f32> = self
                .dct
                .iter()
                .map(|row| row.iter().zip(&logmel).map(|(a, b)| a * b).sum())
                .collect();
            let centroid = power
                .iter()
                .enumerate()
                .map(|(k, p)| k as f32 * bin_hz * p)
                .sum::<f32>()
                / e;
            let flatness = {
                let lg = power.iter().map(|p| p.ln()).sum::<f32>() / power.len() as f32;
                (lg.exp() / (e / power.len() as f32)).max(1e-10).log10()
            };
            let mut acc = 0f32;
            let mut rolloff = 0f32;
            for (k, p) in power.iter().enumerate() {
                acc += p;
                if acc >= 0.85 * e {
                    rolloff = k as f32 * bin_hz;
                    break;
                }
            }
            let band = |lo: f32, hi: f32| -> f32 {
                let (a, b) = ((lo / bin_hz).ceil() as usize, (hi / bin_hz).ceil() as usize);
                power[a.min(power.len())..b.min(power.len())]
                    .iter()
                    .sum::<f32>()
            };
            let alpha = (band(50.0, 1000.0) / band(1000.0, 5000.0).max(1e-10)).log10();
            shares.push((e, band(4000.0, 8000.0) / e));
            let flux = match &prev {
                Some(p) => {
                    let n1 = mags.iter().map(|m| m * m).sum::<f32>().sqrt().max(1e-10);
                    let n0 = p.iter().map(|m| m * m).sum::<f32>().sqrt().max(1e-10);
                    mags.iter()
                        .zip(p)
                        .map(|(a, b)| (a / n1 - b / n0).powi(2))
                        .sum::<f32>()
                }
                None => f32::NAN,
            };
            slope_lo.push(db_slope(&power, bin_hz, 0.0, 500.0));
            slope_mid.push(db_slope(&power, bin_hz, 500.0, 1500.0));
            let peak = |lo: f32, hi: f32| -> f32 {
                let (a, b) = ((lo / bin_hz).ceil() as usize, (hi / bin_hz).ceil() as usize);
                power[a.min(power.len())..b.min(power.len())]
                    .iter()
                    .fold(1e-10f32, |m, p| m.max(*p))
            };
            hammarberg.push(10.0 * (peak(0.0, 2000.0) / peak(2000.0, 5000.0)).log10());
            if let Some((pm, pe)) = &prev_frame {
                for (i, d) in dmfcc.iter_mut().enumerate() {
                    *d += (mfcc[i + 1] - pm[i + 1]).abs();
                }
                dlog_e += (log_e - pe).abs();
                n_delta += 1;
            }
            prev_frame = Some((mfcc.clone(), log_e));
            lld[0].push(log_e);
            for i in 1..=12 {
                lld[i].push(mfcc[i]);
            }
            lld[13].push(centroid / 1000.0);
            lld[14].push(flatness);
            lld[15].push(rolloff / 1000.0);
            lld[16].push(alpha);
            if flux.is_finite() {
                lld[17].push(flux);
            }
            prev = Some(mags);
        }
        let mut quality = Quality {
            clipped,
            high_band: {
                // Frames within 30 dB of the loudest (not the near-silent ones VAD keeps).
                let loudest = shares.iter().map(|(e, _)| *e).fold(0f32, f32::max);
                let mut v: Vec<f32> = shares
                    .iter()
                    .filter(|(e, _)| *e >= loudest * 1e-3)
                    .map(|(_, s)| *s)
                    .collect();
                v.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
                percentile(&v, 0.95)
            },
            frames,
            periodicity: 0.0,
        };
        if frames < 10 {
            return None;
        }
        let mut out = Vec::with_capacity(N_FEATURES);
        for l in &lld {
            stats4(l, &mut out);
        }
        // F0 on the 32 ms VAD frames.
        let mut f0 = Vec::new();
        let mut delta = Vec::new();
        let mut last: Option<f32> = None;
        let mut speech_frames = 0usize;
        let mut periodicity = Vec::new();
        let (mut hnr, mut rise, mut fall) = (Vec::new(), Vec::new(), Vec::new());
        // Runs of voiced and of unvoiced speech frames (pauses outside speech do not count).
        let (mut voiced_runs, mut unvoiced_runs) = (Vec::new(), Vec::new());
        let mut run: Option<(bool, usize)> = None;
        let mut close_run = |run: &mut Option<(bool, usize)>| {
            if let Some((voiced, n)) = run.take() {
                if voiced {
                    voiced_runs.push(n as f32 * VAD_FRAME as f32 / 16_000.0);
                } else {
                    unvoiced_runs.push(n as f32 * VAD_FRAME as f32 / 16_000.0);
                }
            }
        };
        for (i, frame) in samples.chunks_exact(VAD_FRAME).enumerate() {
            if !vad.get(i).is_some_and(|p| *p > 0.5) {
                last = None;
                close_run(&mut run);
                continue;
            }
            speech_frames += 1;
            let (hz, r) = crate::pitch_and_periodicity(frame, crate::RATE);
            periodicity.push(r);
            let voiced = hz.is_some();
            match &mut run {
                Some((v, n)) if *v == voiced => *n += 1,
                _ => {
                    close_run(&mut run);
                    run = Some((voiced, 1));
                }
            }
            match hz {
                Some(hz) => {
                    let st = 12.0 * (hz / 27.5).log2();
                    if let Some(l) = last {
                        let d = (st - l).clamp(-12.0, 12.0);
                        delta.push(d.abs());
                        if d > 0.0 {
                            rise.push(d);
                        } else {
                            fall.push(-d);
                        }
                    }
                    last = Some(st);
                    f0.push(st);
                    let r = r.clamp(0.01, 0.999);
                    hnr.push(10.0 * (r / (1.0 - r)).log10());
                }
                None => last = None,
            }
        }
        close_run(&mut run);
        periodicity.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
        quality.periodicity = percentile(&periodicity, 0.5);
        stats4(&f0, &mut out);
        let range = out[out.len() - 1] - out[out.len() - 2];
        out.push(range);
        out.push(if delta.is_empty() {
            0.0
        } else {
            delta.iter().sum::<f32>() / delta.len() as f32
        });
        out.push(f0.len() as f32 / speech_frames.max(1) as f32);
        let n_vad = samples.len() / VAD_FRAME;
        out.push(speech_frames as f32 / n_vad.max(1) as f32);
        // Syllable-rate proxy: peaks of the smoothed speech energy above its median, per second of
        // speech.
        let smooth: Vec<(f32, bool)> = log_e_all
            .windows(5)
            .map(|w| (w.iter().map(|(e, _)| e).sum::<f32>() / 5.0, w[2].1))
            .collect();
        let mut sp: Vec<f32> = smooth.iter().filter(|(_, s)| *s).map(|(e, _)| *e).collect();
        sp.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
        let med = percentile(&sp, 0.5);
        let peaks = smooth
            .windows(3)
            .filter(|w| w[1].1 && w[1].0 > w[0].0 && w[1].0 >= w[2].0 && w[1].0 > med)
            .count();
        let speech_seconds = frames as f32 * HOP as f32 / 16_000.0;
        out.push(peaks as f32 / speech_seconds);
        // Second block.
        let mean_std = |v: &[f32], out: &mut Vec<f32>| {
            let mut s = Vec::with_capacity(4);
            stats4(v, &mut s);
            out.extend(&s[..2]);
        };
        mean_std(&slope_lo, &mut out);
        mean_std(&slope_mid, &mut out);
        mean_std(&hammarberg, &mut out);
        let n_delta = n_delta.max(1) as f32;
        out.extend(dmfcc.iter().map(|d| d / n_delta));
        out.push(dlog_e / n_delta);
        mean_std(&hnr, &mut out);
        let mean = |v: &[f32]| v.iter().sum::<f32>() / v.len().max(1) as f32;
        out.push(mean(&rise));
        out.push(mean(&fall));
        let mut sorted_f0 = f0.clone();
        sorted_f0.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
        out.push(percentile(&sorted_f0, 0.5));
        mean_std(&voiced_runs, &mut out);
        out.push(mean(&unvoiced_runs));
        out.push(voiced_runs.len() as f32 / speech_seconds);
        debug_assert_eq!(out.len(), N_FEATURES);
        Some((out, quality))
    }
}

/// What the model was trained on and how it normalises (the sidecar `<model>.json`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ModelCard {
    /// Output labels, in order.
    pub labels: Vec<String>,
    /// Population mean of each functional (training data).
    pub mean: Vec<f32>,
    /// Population standard deviation of each functional.
    pub std: Vec<f32>,
    /// Pseudo-windows of population mean a new speaker starts with.
    pub prior_weight: f32,
    /// Windows a baseline remembers (forgetting factor 1 − 1/memory).
    pub memory: f32,
    /// Each voice is also scaled by its own running standard deviation (starting from the
    /// population's), not only centred on its running mean. Absent from older cards: false.
    #[serde(default)]
    pub scale: bool,
    /// Functionals the model leaves out (named as in [`feature_names`]): held at 0, so their
    /// z-scores are 0 however long a voice is heard.
    #[serde(default)]
    pub dropped: Vec<String>,
    /// Mean squared z-score above which a window is out of distribution.
    pub ood_threshold: f32,
    /// Corpora trained on.
    pub corpora: Vec<String>,
    /// Speakers trained on (as `evaluate-emotion` names them).
    pub speakers: Vec<String>,
    /// ONNX input and output names.
    pub input: String,
    /// Output tensor (probabilities).
    pub output: String,
}

/// One speaker's running mean of the functionals.
#[derive(Debug, Clone)]
pub struct SpeakerNorm {
    weight: f32,
    mean: Vec<f32>,
    /// Running sum of squared deviations (Welford, with the same forgetting), for `card.scale`.
    m2: Vec<f32>,
    /// The voice's current utterance.
    pub utterance: Utterance,
}

impl SpeakerNorm {
    /// A baseline that knows only the population.
    pub fn new(card: &ModelCard) -> Self {
        SpeakerNorm {
            weight: card.prior_weight,
            mean: card.mean.clone(),
            m2: card.std.iter().map(|s| s * s * card.prior_weight).collect(),
            utterance: Utterance::default(),
        }
    }

    /// z-scores of `x` against this speaker's past (not including `x`), then takes `x` in (the
    /// update of `models/tools/train_ser.py`'s `normalise`, which the model was trained through).
    pub fn z_then_update(&mut self, x: &[f32], card: &ModelCard) -> Vec<f32> {
        let z: Vec<f32> = x
            .iter()
            .zip(&self.mean)
            .zip(card.std.iter().zip(&self.m2))
            .map(|((x, m), (s, m2))| {
                let sd = if card.scale {
                    (m2 / self.weight).sqrt()
                } else {
                    *s
                };
                ((x - m) / sd.max(1e-6)).clamp(-8.0, 8.0)
            })
            .collect();
        let keep = 1.0 - 1.0 / card.memory.max(2.0);
        self.weight = self.weight * keep + 1.0;
        for ((m, m2), v) in self.mean.iter_mut().zip(self.m2.iter_mut()).zip(x) {
            *m2 *= keep;
            let delta = v - *m;
            *m += delta / self.weight;
            *m2 += delta * (v - *m);
        }
        z
    }

    /// Windows heard (with the prior's pseudo-windows, after forgetting).
    pub fn weight(&self) -> f32 {
        self.weight
    }
}

/// An emotion verdict for one window.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Verdict {
    /// Label → probability (pulled towards uniform when the window is not trusted).
    pub scores: Vec<(String, f32)>,
    /// The most probable label.
    pub top: String,
    /// Its probability.
    pub confidence: f32,
    /// True when the answer should not be shown as a category.
    pub low_confidence: bool,
    /// Why, when it is low.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Mean squared z-score (distance from the training data).
    pub distance: f32,
    /// Windows of the utterance the verdict rests on ([`Utterance`]; 1: this window alone).
    pub windows: usize,
}

/// Below this top probability a verdict is marked low confidence.
pub const MIN_CONFIDENCE: f32 = 0.5;

/// The categorical model.
pub struct EmotionModel {
    session: Session,
    /// Its card.
    pub card: ModelCard,
    front: FrontEnd,
    /// Indices of `card.dropped`.
    dropped: Vec<usize>,
}

impl EmotionModel {
    /// Loads `model.onnx` and its card `model.json` (sha256 checked when given).
    pub fn load(path: &Path, sha256: Option<&str>) -> anyhow::Result<Self> {
        let card_path = path.with_extension("json");
        let card: ModelCard =
            serde_json::from_slice(&std::fs::read(&card_path).map_err(|e| {
                anyhow::anyhow!("{}: {e} (the model's card)", card_path.display())
            })?)?;
        anyhow::ensure!(
            card.mean.len() == N_FEATURES && card.std.len() == N_FEATURES,
            "{}: {} features, this build computes {N_FEATURES}",
            card_path.display(),
            card.mean.len()
        );
        let names = feature_names();
        let mut dropped = Vec::new();
        for d in &card.dropped {
            let i = names.iter().position(|n| n == d).ok_or_else(|| {
                anyhow::anyhow!("{}: drops {d}, not a functional", card_path.display())
            })?;
            dropped.push(i);
        }
        Ok(EmotionModel {
            session: onnx::load(path, sha256)?,
            card,
            front: FrontEnd::default(),
            dropped,
        })
    }

    /// The front-end.
    pub fn front(&self) -> &FrontEnd {
        &self.front
    }

    /// Probabilities for z-scored functionals.
    pub fn probabilities(&mut self, z: &[f32]) -> Result<Vec<f32>, OnnxError> {
        let err = |e: classifier_sdk::onnx::ort::Error| OnnxError::Ort(e.to_string());
        let outputs = self
            .session
            .run(classifier_sdk::onnx::ort::inputs![
                self.card.input.as_str() => TensorRef::from_array_view(([1usize, z.len()], z)).map_err(err)?,
            ])
            .map_err(err)?;
        let (_, p) = outputs[self.card.output.as_str()]
            .try_extract_tensor::<f32>()
            .map_err(err)?;
        Ok(p.to_vec())
    }

    /// A verdict for a window's functionals, against (and then into) the speaker's baseline.
    pub fn classify(
        &mut self,
        x: &[f32],
        quality: &Quality,
        speaker: &mut SpeakerNorm,
    ) -> Result<Verdict, OnnxError> {
        let mut x = x.to_vec();
        for i in &self.dropped {
            x[*i] = 0.0;
        }
        let z = speaker.z_then_update(&x, &self.card);
        let distance = z.iter().map(|v| v * v).sum::<f32>() / z.len() as f32;
        let p = self.probabilities(&z)?;
        let mut reason = quality.problem().map(str::to_owned);
        if reason.is_none() && distance > self.card.ood_threshold {
            reason = Some("unlike the speech it was trained on".into());
        }
        // Untrusted windows: the scores are mixed with uniform so no category stands out.
        let k = p.len().max(1) as f32;
        let trust = if reason.is_some() { 0.25 } else { 1.0 };
        let p: Vec<f32> = p.iter().map(|v| trust * v + (1.0 - trust) / k).collect();
        let (i, confidence) = top(&p);
        if reason.is_none() && confidence < MIN_CONFIDENCE {
            reason = Some(NO_CATEGORY.into());
        }
        Ok(Verdict {
            scores: self
                .card
                .labels
                .iter()
                .cloned()
                .zip(p.iter().copied())
                .collect(),
            top: self.card.labels.get(i).cloned().unwrap_or_default(),
            confidence,
            low_confidence: reason.is_some(),
            reason,
            distance,
            windows: 1,
        })
    }
}

/// The evidence of one voice's current utterance: an emotion lasts longer than a 1 s window
/// carries it, so a verdict combines the trusted windows of the same utterance that started
/// within `HORIZON_MS` of the newest (at most 3 s of audio); a pause longer than `GAP_MS` starts
/// a new utterance. Pure: times are passed in.
#[derive(Debug, Clone, Default)]
pub struct Utterance {
    /// (window start ms, probabilities) of the trusted windows kept.
    windows: std::collections::VecDeque<(f64, Vec<f32>)>,
    /// End of the last window that held speech, ms.
    last_speech_end_ms: Option<f64>,
}

impl Utterance {
    /// Windows that started this long before the newest still count.
    pub const HORIZON_MS: f64 = 2_000.0;
    /// A pause this long ends an utterance.
    pub const GAP_MS: f64 = 1_000.0;

    /// Takes in a speech window `[start_ms, end_ms)` and its verdict; returns the verdict over the
    /// utterance so far: the mean of the kept windows' probabilities, with this window's quality
    /// checks (an untrusted window is returned as it is and not kept).
    pub fn add(&mut self, start_ms: f64, end_ms: f64, v: Verdict) -> Verdict {
        let new_utterance = self
            .last_speech_end_ms
            .is_none_or(|end| start_ms - end > Self::GAP_MS || end - start_ms > 60_000.0);
        if new_utterance {
            self.windows.clear();
        }
        self.last_speech_end_ms = Some(end_ms);
        if v.low_confidence && v.reason.as_deref() != Some(NO_CATEGORY) {
            return v;
        }
        self.windows
            .push_back((start_ms, v.scores.iter().map(|(_, p)| *p).collect()));
        while self
            .windows
            .front()
            .is_some_and(|(t, _)| *t < start_ms - Self::HORIZON_MS)
        {
            self.windows.pop_front();
        }
        let k = v.scores.len();
        let mut mean = vec![0f32; k];
        let n = self.windows.len() as f32;
        for (_, p) in &self.windows {
            for (m, x) in mean.iter_mut().zip(p) {
                *m += x / n;
            }
        }
        let (i, confidence) = top(&mean);
        let low = confidence < MIN_CONFIDENCE;
        Verdict {
            top: v.scores.get(i).map(|(l, _)| l.clone()).unwrap_or_default(),
            scores: v.scores.iter().map(|(l, _)| l.clone()).zip(mean).collect(),
            confidence,
            low_confidence: low,
            reason: low.then(|| NO_CATEGORY.to_owned()),
            distance: v.distance,
            windows: self.windows.len(),
        }
    }
}

/// Index and value of the highest probability (the first of equals).
fn top(p: &[f32]) -> (usize, f32) {
    p.iter()
        .copied()
        .enumerate()
        .fold((0, f32::MIN), |b, (i, v)| if v > b.1 { (i, v) } else { b })
}

/// The reason given when no category leads clearly.
pub const NO_CATEGORY: &str = "no category stands out";

/// Speakers' baselines, least recently heard forgotten first.
pub struct SpeakerNorms {
    map: HashMap<String, (SpeakerNorm, u64)>,
    tick: u64,
    capacity: usize,
}

impl SpeakerNorms {
    /// Up to `capacity` speakers.
    pub fn new(capacity: usize) -> Self {
        SpeakerNorms {
            map: HashMap::new(),
            tick: 0,
            capacity,
        }
    }

    /// This speaker's baseline.
    pub fn get(&mut self, speaker: &str, card: &ModelCard) -> &mut SpeakerNorm {
        self.tick += 1;
        if !self.map.contains_key(speaker) && self.map.len() >= self.capacity {
            if let Some(old) = self
                .map
                .iter()
                .min_by_key(|(_, (_, t))| *t)
                .map(|(k, _)| k.clone())
            {
                self.map.remove(&old);
            }
        }
        let tick = self.tick;
        let e = self
            .map
            .entry(speaker.to_owned())
            .or_insert_with(|| (SpeakerNorm::new(card), tick));
        e.1 = tick;
        &mut e.0
    }
}

/// FNV-1a of a name: the order in which an evaluation presents a speaker's clips (deterministic,
/// unrelated to the label; `train_ser.py` uses the same).
pub fn order_key(name: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in name.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    fn verdict(p: [f32; 4], reason: Option<&str>) -> Verdict {
        let labels = ["angry", "happy", "neutral", "sad"];
        let (i, c) = top(&p);
        Verdict {
            scores: labels.iter().map(|l| l.to_string()).zip(p).collect(),
            top: labels[i].into(),
            confidence: c,
            low_confidence: reason.is_some(),
            reason: reason.map(String::from),
            distance: 1.0,
            windows: 1,
        }
    }

    #[test]
    fn an_utterance_combines_its_recent_windows_and_a_pause_starts_afresh() {
        let mut u = Utterance::default();
        let sad = [0.05, 0.05, 0.1, 0.8];
        let unsure = [0.1, 0.1, 0.45, 0.35];
        let v = u.add(0.0, 1000.0, verdict(sad, None));
        assert_eq!((v.top.as_str(), v.windows), ("sad", 1));
        // A window that alone says nothing clear leans on the utterance so far.
        let v = u.add(500.0, 1500.0, verdict(unsure, Some(NO_CATEGORY)));
        assert_eq!((v.top.as_str(), v.windows), ("sad", 2), "{v:?}");
        assert!(!v.low_confidence, "{v:?}");
        // Clipped: returned as it is, and kept out of the evidence.
        let v = u.add(1000.0, 2000.0, verdict(sad, Some("clipped")));
        assert_eq!((v.windows, v.low_confidence), (1, true));
        // Windows older than the horizon leave.
        let v = u.add(2600.0, 3600.0, verdict(unsure, Some(NO_CATEGORY)));
        assert_eq!(v.windows, 1, "the windows at 0 and 500 ms are out: {v:?}");
        assert_eq!(v.top, "neutral");
        assert!(v.low_confidence);
        // After a pause longer than the gap, nothing of before counts.
        let v = u.add(
            3600.0 + Utterance::GAP_MS + 1.0,
            6000.0,
            verdict(unsure, Some(NO_CATEGORY)),
        );
        assert_eq!((v.windows, v.top.as_str()), (1, "neutral"));
    }

    #[test]
    fn names_match_count() {
        assert_eq!(feature_names().len(), N_FEATURES);
    }

    #[test]
    fn a_voiced_tone_gives_features_and_silence_none() {
        let fe = FrontEnd::default();
        let tone: Vec<f32> = (0..32000)
            .map(|i| {
                let t = i as f32 / 16000.0;
                0.3 * (2.0 * std::f32::consts::PI * 150.0 * t).sin()
                    + 0.1 * (2.0 * std::f32::consts::PI * 4500.0 * t).sin()
            })
            .collect();
        let vad = vec![1.0; tone.len() / 512];
        let (f, q) = fe.functionals(&tone, &vad).unwrap();
        assert_eq!(f.len(), N_FEATURES);
        assert!(f.iter().all(|v| v.is_finite()));
        // F0 in semitones above 27.5 Hz: 150 Hz ≈ 29.4 (the 90th percentile: on a pure tone the
        // autocorrelation at two periods ties with one, so some frames read an octave lower).
        let i = N_SPECTRAL * 4;
        assert!((f[i + 3] - 29.4).abs() < 1.0, "{}", f[i + 3]);
        assert!(q.high_band > 0.01);
        assert!(fe.functionals(&tone, &vec![0.0; vad.len()]).is_none());
    }

    /// A card of `n` functionals with population mean 0 and spread 1, never forgetting.
    fn card(n: usize, prior_weight: f32, scale: bool) -> ModelCard {
        ModelCard {
            labels: vec![],
            mean: vec![0.0; n],
            std: vec![1.0; n],
            prior_weight,
            memory: 1e9,
            ood_threshold: 10.0,
            corpora: vec![],
            speakers: vec![],
            input: String::new(),
            output: String::new(),
            scale,
            dropped: vec![],
        }
    }

    #[test]
    fn a_scaled_norm_divides_by_the_voice_s_own_running_spread() {
        let card = card(1, 1.0, true);
        let mut s = SpeakerNorm::new(&card);
        // First: the population's spread.
        assert_eq!(s.z_then_update(&[2.0], &card), vec![2.0]);
        // Then mean (0 + 2) / 2 = 1, m2 = 1 + 2 · (2 − 1) = 3, spread √(3 / 2).
        let z = s.z_then_update(&[3.0], &card)[0];
        assert!((z - 2.0 / 1.5f32.sqrt()).abs() < 1e-5, "{z}");
    }

    #[test]
    fn speaker_norm_is_causal() {
        let card = card(2, 2.0, false);
        let mut s = SpeakerNorm::new(&card);
        assert_eq!(s.z_then_update(&[3.0, 3.0], &card), vec![3.0, 3.0]);
        // Mean now (2·0 + 3) / 3 = 1.
        let z = s.z_then_update(&[3.0, 1.0], &card);
        assert!((z[0] - 2.0).abs() < 1e-5 && z[1].abs() < 1e-5, "{z:?}");
    }
}
