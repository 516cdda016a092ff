//! The pluggable speech-emotion contract: any ONNX model whose input is a log-mel or MFCC front-end
//! of 16 kHz speech plugs in by configuration. The front-end is declared, not guessed:
//! 25 ms Hann windows every 10 ms (n_fft 512), HTK mel filters from 0 to 8 kHz, natural log of the
//! mel power (+1e-6); MFCC = orthonormal DCT-II of the log-mel. Layouts: `frames` [1, T, F],
//! `mean` [1, F] (mean over frames), `mean-column` [1, F, 1].

use std::path::PathBuf;

use classifier_sdk::onnx::ort::value::TensorRef;
use classifier_sdk::onnx::{self, OnnxError, Session};

/// Which features.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Features {
    /// Log-mel energies (`bins` mel bands).
    Logmel,
    /// MFCC (`bins` coefficients of 40 mel bands, or of `bins` bands when more).
    Mfcc,
}

/// How the features are laid out for the model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Layout {
    /// `[1, T, F]`.
    Frames,
    /// `[1, F]`.
    Mean,
    /// `[1, F, 1]`.
    MeanColumn,
}

/// A speech-emotion model and its front-end.
#[derive(Debug, Clone)]
pub struct SerConfig {
    /// ONNX file.
    pub model: PathBuf,
    /// Labels, in output order.
    pub labels: Vec<String>,
    /// Front-end.
    pub features: Features,
    /// Mel bands or coefficients.
    pub bins: usize,
    /// Layout.
    pub layout: Layout,
    /// Input tensor name.
    pub input: String,
    /// Output tensor name (probabilities or logits; softmax is applied when they do not sum to 1).
    pub output: String,
}

/// A loaded SER model.
pub struct Ser {
    session: Session,
    config: SerConfig,
    mel: Vec<Vec<f32>>,
}

const N_FFT: usize = 512;
const WIN: usize = 400;
const HOP: usize = 160;
const RATE: f32 = 16_000.0;

fn hz_to_mel(f: f32) -> f32 {
    2595.0 * (1.0 + f / 700.0).log10()
}

fn mel_to_hz(m: f32) -> f32 {
    700.0 * (10f32.powf(m / 2595.0) - 1.0)
}

/// Triangular HTK mel filters over the `N_FFT / 2 + 1` power bins.
pub fn mel_filters(n_mels: usize) -> Vec<Vec<f32>> {
    let bins = N_FFT / 2 + 1;
    let (lo, hi) = (hz_to_mel(0.0), hz_to_mel(RATE / 2.0));
    let points: Vec<f32> = (0..n_mels + 2)
        .map(|i| mel_to_hz(lo + (hi - lo) * i as f32 / (n_mels + 1) as f32))
        .collect();
    let freq = |k: usize| k as f32 * RATE / N_FFT as f32;
    (0..n_mels)
        .map(|m| {
            let (l, c, r) = (points[m], points[m + 1], points[m + 2]);
            (0..bins)
                .map(|k| {
                    let f = freq(k);
                    if f <= l || f >= r {
                        0.0
                    } else if f <= c {
                        (f - l) / (c - l).max(1e-6)
                    } else {
                        (r - f) / (r - c).max(1e-6)
                    }
                })
                .collect()
        })
        .collect()
}

/// The twiddle factors of an `n`-point FFT: e^(-2πik/n) for k < n/2 (computed in f64).
pub(crate) fn twiddles(n: usize) -> Vec<(f32, f32)> {
    (0..n / 2)
        .map(|k| {
            let a = -2.0 * std::f64::consts::PI * k as f64 / n as f64;
            (a.cos() as f32, a.sin() as f32)
        })
        .collect()
}

/// In-place radix-2 FFT of (re, im), length a power of two, with `twiddle = twiddles(len)`.
pub(crate) fn fft_with(re: &mut [f32], im: &mut [f32], twiddle: &[(f32, f32)]) {
    let n = re.len();
    let mut j = 0;
    for i in 1..n {
        let mut bit = n >> 1;
        while j & bit != 0 {
            j ^= bit;
            bit >>= 1;
        }
        j |= bit;
        if i < j {
            re.swap(i, j);
            im.swap(i, j);
        }
    }
    let mut len = 2;
    while len <= n {
        let step = n / len;
        for start in (0..n).step_by(len) {
            for k in 0..len / 2 {
                let (wr, wi) = twiddle[k * step];
                let (a, b) = (start + k, start + k + len / 2);
                let (tr, ti) = (re[b] * wr - im[b] * wi, re[b] * wi + im[b] * wr);
                re[b] = re[a] - tr;
                im[b] = im[a] - ti;
                re[a] += tr;
                im[a] += ti;
            }
        }
        len <<= 1;
    }
}

/// In-place radix-2 FFT of (re, im), length a power of two.
#[cfg(test)]
fn fft(re: &mut [f32], im: &mut [f32]) {
    let t = twiddles(re.len());
    fft_with(re, im, &t);
}

/// Log-mel frames of 16 kHz samples: T × n_mels.
pub fn logmel(samples: &[f32], filters: &[Vec<f32>]) -> Vec<Vec<f32>> {
    let hann: Vec<f32> = (0..WIN)
        .map(|i| 0.5 - 0.5 * (2.0 * std::f32::consts::PI * i as f32 / WIN as f32).cos())
        .collect();
    let twiddle = twiddles(N_FFT);
    let mut out = Vec::new();
    let mut start = 0;
    while start + WIN <= samples.len() {
        let mut re = vec![0f32; N_FFT];
        let mut im = vec![0f32; N_FFT];
        for i in 0..WIN {
            re[i] = samples[start + i] * hann[i];
        }
        fft_with(&mut re, &mut im, &twiddle);
        let power: Vec<f32> = (0..=N_FFT / 2)
            .map(|k| re[k] * re[k] + im[k] * im[k])
            .collect();
        out.push(
            filters
                .iter()
                .map(|f| (f.iter().zip(&power).map(|(a, b)| a * b).sum::<f32>() + 1e-6).ln())
                .collect(),
        );
        start += HOP;
    }
    out
}

/// Orthonormal DCT-II of one frame, first `n` coefficients.
pub fn dct(frame: &[f32], n: usize) -> Vec<f32> {
    let m = frame.len() as f32;
    (0..n)
        .map(|k| {
            let s: f32 = frame
                .iter()
                .enumerate()
                .map(|(i, v)| v * (std::f32::consts::PI * k as f32 * (i as f32 + 0.5) / m).cos())
                .sum();
            s * if k == 0 {
                (1.0 / m).sqrt()
            } else {
                (2.0 / m).sqrt()
            }
        })
        .collect()
}

impl Ser {
    /// Loads the model (user-supplied: no checksum).
    pub fn load(config: SerConfig) -> Result<Self, OnnxError> {
        let n_mels = match config.features {
            Features::Logmel => config.bins,
            Features::Mfcc => config.bins.max(40),
        };
        Ok(Ser {
            session: onnx::load(&config.model, None)?,
            mel: mel_filters(n_mels),
            config,
        })
    }

    /// Label → probability for a window of 16 kHz speech.
    pub fn classify(&mut self, samples: &[f32]) -> Result<Vec<(String, f32)>, OnnxError> {
        let mut frames = logmel(samples, &self.mel);
        if self.config.features == Features::Mfcc {
            frames = frames.iter().map(|f| dct(f, self.config.bins)).collect();
        }
        let f = self.config.bins;
        let t = frames.len().max(1);
        let (shape, data): (Vec<usize>, Vec<f32>) = match self.config.layout {
            Layout::Frames => (vec![1, t, f], frames.iter().flatten().copied().collect()),
            Layout::Mean | Layout::MeanColumn => {
                let mut mean = vec![0f32; f];
                for fr in &frames {
                    for (m, v) in mean.iter_mut().zip(fr) {
                        *m += v / t as f32;
                    }
                }
                let shape = if self.config.layout == Layout::Mean {
                    vec![1, f]
                } else {
                    vec![1, f, 1]
                };
                (shape, mean)
            }
        };
        let tensor = TensorRef::from_array_view((shape, &data[..]))
            .map_err(|e| OnnxError::Ort(e.to_string()))?;
        let outputs = self
            .session
            .run(classifier_sdk::onnx::ort::inputs![self.config.input.as_str() => tensor])
            .map_err(|e| OnnxError::Ort(e.to_string()))?;
        let (_, out) = outputs[self.config.output.as_str()]
            .try_extract_tensor::<f32>()
            .map_err(|e| OnnxError::Ort(e.to_string()))?;
        let mut p: Vec<f32> = out.iter().take(self.config.labels.len()).copied().collect();
        if (p.iter().sum::<f32>() - 1.0).abs() > 1e-3 || p.iter().any(|v| *v < 0.0) {
            onnx::softmax(&mut p);
        }
        Ok(self.config.labels.iter().cloned().zip(p).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fft_finds_a_tone() {
        let mut re: Vec<f32> = (0..512)
            .map(|i| (2.0 * std::f32::consts::PI * 32.0 * i as f32 / 512.0).cos())
            .collect();
        let mut im = vec![0.0; 512];
        fft(&mut re, &mut im);
        let peak = (0..256)
            .max_by(|&a, &b| {
                (re[a].hypot(im[a]))
                    .partial_cmp(&re[b].hypot(im[b]))
                    .unwrap()
            })
            .unwrap();
        assert_eq!(peak, 32);
    }

    #[test]
    fn mel_energy_follows_the_tone() {
        let filters = mel_filters(16);
        let low: Vec<f32> = (0..16000)
            .map(|i| (2.0 * std::f32::consts::PI * 300.0 * i as f32 / 16000.0).sin())
            .collect();
        let high: Vec<f32> = (0..16000)
            .map(|i| (2.0 * std::f32::consts::PI * 5000.0 * i as f32 / 16000.0).sin())
            .collect();
        let argmax = |v: &[Vec<f32>]| {
            let m: Vec<f32> = (0..16)
                .map(|b| v.iter().map(|f| f[b]).sum::<f32>())
                .collect();
            (0..16)
                .max_by(|&a, &b| m[a].partial_cmp(&m[b]).unwrap())
                .unwrap()
        };
        assert!(argmax(&logmel(&low, &filters)) < 6);
        assert!(argmax(&logmel(&high, &filters)) > 10);
        let d = dct(&[1.0; 8], 3);
        assert!((d[0] - 8f32.sqrt()).abs() < 1e-4 && d[1].abs() < 1e-4);
    }
}
