//! `audio-worker features` (what the speech-emotion model trains on) and `audio-worker
//! evaluate-emotion` (how often it is right on speech it was not trained on).

use std::collections::{BTreeMap, HashSet};
use std::io::Write;
use std::path::Path;

use crate::corpus::{list, Item};
use crate::emotion::{feature_names, order_key, EmotionModel, FrontEnd, SpeakerNorm, Utterance};
use crate::{read_wav, Vad, RATE, SILERO_SHA256};

/// Windows of `window` samples (the whole file when 0), each with its speech probabilities.
fn windows(samples: &[f32], window: usize) -> Vec<&[f32]> {
    if window == 0 {
        vec![samples]
    } else {
        samples
            .chunks(window)
            .filter(|w| w.len() >= window / 2)
            .collect()
    }
}

/// Writes the functionals of every labelled file (and window) under `dir` as CSV.
pub fn features(vad_path: &Path, dir: &Path, out: &Path, window_ms: u32) -> anyhow::Result<()> {
    let items = list(dir)?;
    let mut vad = Vad::load(vad_path, Some(SILERO_SHA256))?;
    let fe = FrontEnd::default();
    let mut w = std::io::BufWriter::new(std::fs::File::create(out)?);
    writeln!(
        w,
        "corpus,speaker,class,file,window,order,clipped,high_band,frames,{}",
        feature_names().join(",")
    )?;
    let window = RATE as usize * window_ms as usize / 1000;
    let started = std::time::Instant::now();
    let (mut rows, mut empty, mut unreadable) = (0, 0, 0);
    for item in &items {
        let Some(samples) = read_or_skip(item, &mut unreadable) else {
            continue;
        };
        let mut sizes = vec![0usize];
        if window > 0 {
            sizes.push(window);
        }
        for size in sizes {
            for (i, part) in windows(&samples, size).into_iter().enumerate() {
                let probs = vad.probabilities(part)?;
                let Some((f, q)) = fe.functionals(part, &probs) else {
                    empty += 1;
                    continue;
                };
                let label = if size == 0 { -1 } else { i as i64 };
                write!(
                    w,
                    "{},{},{},{},{label},{},{},{},{}",
                    item.corpus,
                    item.speaker,
                    item.class,
                    item.name,
                    order_key(&item.name),
                    q.clipped,
                    q.high_band,
                    q.frames
                )?;
                for v in f {
                    write!(w, ",{v}")?;
                }
                writeln!(w)?;
                rows += 1;
            }
        }
    }
    eprintln!(
        "{} files, {rows} rows, {empty} without enough speech, {unreadable} unreadable (skipped), {:.1} s",
        items.len(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// A corpus file's samples, or `None` (said on stderr and counted) when it cannot be read: one
/// truncated file in a public copy of a corpus must not stop the figures for the other thousands.
fn read_or_skip(item: &Item, unreadable: &mut usize) -> Option<Vec<f32>> {
    match read_wav(&item.path) {
        Ok(s) => Some(s),
        Err(e) => {
            eprintln!("skipped: {e:#}");
            *unreadable += 1;
            None
        }
    }
}

/// Recall per class, UAR and confusion counts.
#[derive(Debug, Default, Clone)]
pub struct Tally {
    /// (truth, predicted) → count.
    pub confusion: BTreeMap<(String, String), usize>,
    /// Verdicts marked low confidence.
    pub low: usize,
    /// All verdicts.
    pub n: usize,
    /// Why verdicts were marked low confidence → how many.
    pub reasons: BTreeMap<String, usize>,
}

impl Tally {
    /// Adds one verdict and why it was marked low confidence.
    pub fn add(&mut self, truth: &str, predicted: &str, low: bool, reason: Option<&str>) {
        if let (true, Some(r)) = (low, reason) {
            *self.reasons.entry(r.to_owned()).or_default() += 1;
        }
        *self
            .confusion
            .entry((truth.to_owned(), predicted.to_owned()))
            .or_default() += 1;
        self.n += 1;
        self.low += usize::from(low);
    }

    /// Recall of each class present.
    pub fn recalls(&self, labels: &[String]) -> Vec<(String, f64)> {
        labels
            .iter()
            .filter_map(|t| {
                let total: usize = labels
                    .iter()
                    .map(|p| {
                        self.confusion
                            .get(&(t.clone(), p.clone()))
                            .copied()
                            .unwrap_or(0)
                    })
                    .sum();
                (total > 0).then(|| {
                    let hit = self
                        .confusion
                        .get(&(t.clone(), t.clone()))
                        .copied()
                        .unwrap_or(0);
                    (t.clone(), hit as f64 / total as f64)
                })
            })
            .collect()
    }

    /// Unweighted average recall over the classes present.
    pub fn uar(&self, labels: &[String]) -> f64 {
        let r = self.recalls(labels);
        r.iter().map(|(_, v)| v).sum::<f64>() / r.len().max(1) as f64
    }

    fn print(&self, title: &str, labels: &[String]) {
        println!(
            "{title}: UAR {:.1} % over {} verdicts ({:.1} % marked low confidence)",
            self.uar(labels) * 100.0,
            self.n,
            self.low as f64 * 100.0 / self.n.max(1) as f64
        );
        let recalls: Vec<String> = self
            .recalls(labels)
            .iter()
            .map(|(l, r)| format!("{l} {:.1} %", r * 100.0))
            .collect();
        println!("  recall: {}", recalls.join(", "));
        if !self.reasons.is_empty() {
            let r: Vec<String> = self
                .reasons
                .iter()
                .map(|(k, n)| format!("{k} {n}"))
                .collect();
            println!("  marked low confidence because: {}", r.join(", "));
        }
        println!(
            "  confusion (rows truth, columns predicted): {:>9}",
            labels.iter().map(|l| format!("{l:>9}")).collect::<String>()
        );
        for t in labels {
            let row: String = labels
                .iter()
                .map(|p| {
                    format!(
                        "{:>9}",
                        self.confusion
                            .get(&(t.clone(), p.clone()))
                            .copied()
                            .unwrap_or(0)
                    )
                })
                .collect();
            println!("  {t:>50}{row}");
        }
    }
}

/// Prints the figures of the model at `model_path` on the labelled speech under `dir`.
pub fn evaluate(
    vad_path: &Path,
    model_path: &Path,
    sha256: Option<&str>,
    dir: &Path,
    window_ms: u32,
    include_trained: bool,
    noise_snr_db: Option<f32>,
) -> anyhow::Result<()> {
    let mut items = list(dir)?;
    let mut model = EmotionModel::load(model_path, sha256)?;
    let mut vad = Vad::load(vad_path, Some(SILERO_SHA256))?;
    let labels = model.card.labels.clone();
    let trained: HashSet<String> = model.card.speakers.iter().cloned().collect();
    println!(
        "model {} ({} classes: {}), trained on {} ({} speakers)",
        model_path.display(),
        labels.len(),
        labels.join(", "),
        model.card.corpora.join(", "),
        trained.len()
    );
    let skipped = items
        .iter()
        .filter(|i| trained.contains(&i.speaker))
        .count();
    if skipped > 0 && !include_trained {
        println!("{skipped} files of speakers it was trained on left out (not honest to score)");
        items.retain(|i| !trained.contains(&i.speaker));
    }
    // Each speaker's files in a fixed order unrelated to their labels; the baseline hears every
    // file of the speaker (classes the model lacks too), as a call would.
    items.sort_by_key(|i| (i.corpus.clone(), i.speaker.clone(), order_key(&i.name)));
    let window = RATE as usize * window_ms as usize / 1000;
    let mut per_file: BTreeMap<String, Tally> = BTreeMap::new();
    let mut per_window: BTreeMap<String, Tally> = BTreeMap::new();
    // The windows' verdicts over their utterance so far, as the worker serves them.
    let mut per_utterance: BTreeMap<String, Tally> = BTreeMap::new();
    // Each speaker's clock: files are utterances 5 s apart.
    let mut clocks: std::collections::HashMap<String, f64> = Default::default();
    let mut other: BTreeMap<String, BTreeMap<String, usize>> = BTreeMap::new();
    let mut file_norms: std::collections::HashMap<String, SpeakerNorm> = Default::default();
    let mut window_norms: std::collections::HashMap<String, SpeakerNorm> = Default::default();
    let mut model_time = std::time::Duration::ZERO;
    let mut model_runs = 0u32;
    let mut no_speech = 0;
    // The shipped arousal model on the same windows, each speaker against a causal baseline:
    // (corpus) → (predicted high, truly high).
    let mut arousal: BTreeMap<String, (Vec<bool>, Vec<bool>)> = BTreeMap::new();
    let mut baselines = crate::arousal::Baselines::new(
        crate::arousal::EMODB_POPULATION,
        crate::arousal::BaselineConfig::default(),
        1 << 20,
    );
    if let Some(snr) = noise_snr_db {
        println!("with room-like noise at {snr} dB SNR (against each file's speech level)");
    }
    let mut unreadable = 0;
    for item in &items {
        let Some(mut samples) = read_or_skip(item, &mut unreadable) else {
            continue;
        };
        if let Some(snr) = noise_snr_db {
            add_noise(&mut samples, snr, order_key(&item.name));
        }
        let clock = clocks.entry(item.speaker.clone()).or_insert(0.0);
        let file_start_ms = *clock;
        *clock += samples.len() as f64 * 1000.0 / f64::from(RATE) + 5_000.0;
        for (size, norms, tallies) in [
            (0usize, &mut file_norms, &mut per_file),
            (window, &mut window_norms, &mut per_window),
        ] {
            for (index, part) in windows(&samples, size).into_iter().enumerate() {
                let probs = vad.probabilities(part)?;
                if size == window {
                    let w = crate::analyze_with_vad(&probs, part, 0.0);
                    let high = match item.class.as_str() {
                        "angry" | "happy" | "fear" | "surprise" => Some(true),
                        "sad" | "neutral" | "calm" | "boredom" => Some(false),
                        _ => None,
                    };
                    let f = w
                        .speaking
                        .then(|| {
                            crate::arousal::VoiceFeatures::new(
                                w.loudness_dbfs,
                                w.f0_median_hz,
                                w.f0_std_hz,
                            )
                        })
                        .flatten();
                    if let Some(f) = f {
                        let (p, _) = baselines.score(
                            &format!("arousal/{}", item.speaker),
                            &f,
                            &crate::arousal::EMODB_MODEL,
                        );
                        if let Some(h) = high {
                            let e = arousal.entry(item.corpus.clone()).or_default();
                            e.0.push(p > 0.5);
                            e.1.push(h);
                        }
                    }
                }
                let t0 = std::time::Instant::now();
                let Some((f, q)) = model.front().functionals(part, &probs) else {
                    if size == 0 {
                        no_speech += 1;
                    }
                    continue;
                };
                let norm = norms
                    .entry(item.speaker.clone())
                    .or_insert_with(|| SpeakerNorm::new(&model.card));
                let v = model.classify(&f, &q, norm)?;
                if size == window {
                    model_time += t0.elapsed();
                    model_runs += 1;
                    let start_ms =
                        file_start_ms + (index * window) as f64 * 1000.0 / f64::from(RATE);
                    let end_ms = start_ms + part.len() as f64 * 1000.0 / f64::from(RATE);
                    let u = norm.utterance.add(start_ms, end_ms, v.clone());
                    if labels.contains(&item.class) {
                        per_utterance.entry(item.corpus.clone()).or_default().add(
                            &item.class,
                            &u.top,
                            u.low_confidence,
                            u.reason.as_deref(),
                        );
                    }
                }
                if labels.contains(&item.class) {
                    tallies.entry(item.corpus.clone()).or_default().add(
                        &item.class,
                        &v.top,
                        v.low_confidence,
                        v.reason.as_deref(),
                    );
                } else if size == 0 {
                    *other
                        .entry(item.class.clone())
                        .or_default()
                        .entry(v.top.clone())
                        .or_default() += 1;
                }
            }
        }
    }
    println!(
        "{} files scored ({no_speech} without enough speech, {unreadable} unreadable and skipped); features + model {:.2} ms per {window_ms} ms window (VAD not included)",
        items.len() - unreadable,
        model_time.as_secs_f64() * 1e3 / f64::from(model_runs.max(1))
    );
    for (corpus, t) in &per_file {
        t.print(&format!("{corpus}, per file"), &labels);
        if let Some(w) = per_window.get(corpus) {
            w.print(
                &format!("{corpus}, per {window_ms} ms window alone"),
                &labels,
            );
        }
        if let Some(w) = per_utterance.get(corpus) {
            w.print(
                &format!(
                    "{corpus}, per {window_ms} ms window over its utterance so far (at most {:.0} s of audio; as served)",
                    Utterance::HORIZON_MS / 1000.0 + f64::from(window_ms) / 1000.0
                ),
                &labels,
            );
        }
    }
    for (corpus, (pred, truth)) in &arousal {
        println!(
            "arousal (the shipped model, fitted on EmoDB{}), high (angry, happy, fear, surprise) vs low (sad, neutral, calm, boredom), per {window_ms} ms window, causal baseline: {corpus} balanced accuracy {:.1} % over {} windows",
            if corpus == "emodb" { ": NOT an honest figure here" } else { "" },
            crate::arousal::balanced_accuracy(pred, truth) * 100.0,
            pred.len()
        );
    }
    for (class, preds) in &other {
        let p: Vec<String> = preds.iter().map(|(l, n)| format!("{l} {n}")).collect();
        println!("not a model class: {class} read as {}", p.join(", "));
    }
    Ok(())
}

/// Adds low-passed white noise (a one-pole filter at about 1 kHz: a room's hum and fans more
/// than hiss) at `snr_db` below the speech level: the RMS of the loudest half of the 32 ms frames.
pub fn add_noise(samples: &mut [f32], snr_db: f32, seed: u64) {
    let mut energies: Vec<f32> = samples
        .chunks(512)
        .map(|c| c.iter().map(|v| v * v).sum::<f32>() / c.len() as f32)
        .collect();
    energies.sort_by(|a, b| b.partial_cmp(a).unwrap_or(std::cmp::Ordering::Equal));
    let top = &energies[..energies.len().div_ceil(2)];
    let speech_rms = (top.iter().sum::<f32>() / top.len().max(1) as f32).sqrt();
    let mut x = seed | 1;
    let mut y = 0f32;
    let noise: Vec<f32> = samples
        .iter()
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let white = (x >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0;
            y += 0.33 * (white - y);
            y
        })
        .collect();
    let noise_rms = (noise.iter().map(|v| v * v).sum::<f32>() / noise.len().max(1) as f32).sqrt();
    let gain = speech_rms / noise_rms.max(1e-12) * 10f32.powf(-snr_db / 20.0);
    for (s, n) in samples.iter_mut().zip(noise) {
        *s += gain * n;
    }
}

/// For tests: the corpus items of a folder.
pub fn items(dir: &Path) -> anyhow::Result<Vec<Item>> {
    list(dir)
}

#[cfg(test)]
mod tests {
    #[test]
    fn noise_is_added_at_the_asked_snr() {
        let clean: Vec<f32> = (0..32000).map(|i| 0.3 * (i as f32 * 0.05).sin()).collect();
        let mut noisy = clean.clone();
        super::add_noise(&mut noisy, 10.0, 7);
        let p = |v: &[f32]| v.iter().map(|x| x * x).sum::<f32>() / v.len() as f32;
        let n: Vec<f32> = noisy.iter().zip(&clean).map(|(a, b)| a - b).collect();
        let snr = 10.0 * (p(&clean) / p(&n)).log10();
        assert!((snr - 10.0).abs() < 0.5, "{snr}");
    }
}
