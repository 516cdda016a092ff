//! Speaker-adaptive arousal: each voice is scored against its own running baseline.
//!
//! The fixed formula this replaces (`0.5·L + 0.3·P + 0.2·V` on absolute loudness and pitch) let the
//! microphone gain and the voice's register decide the answer: on Berlin EmoDB, women's calm clips
//! scored above the "aroused" cut while men's scored below it. A call hears each participant for
//! minutes, so the product can do what a listener does: judge a voice against how that voice
//! usually sounds.
//!
//! - **Features** of a speech window: loudness (dBFS), log₂ of the median F0, and the F0 spread
//!   relative to the median (semitone-like, register-free).
//! - **Baseline**: per speaker, an exponentially forgetting mean and variance of each feature over
//!   speech windows ([`Baseline`], about the last `memory` windows), shrunk towards population
//!   values while few windows are known (`prior_weight` pseudo-windows), so the first seconds of a
//!   participant are scored like anyone else and the score becomes personal as speech accumulates.
//! - **Score**: a logistic model on the features' z-scores against the baseline ([`ArousalModel`]);
//!   its weights were fitted on EmoDB leave-one-speaker-out (`audio-worker evaluate-arousal`), and
//!   it gives a probability of high arousal, thresholded at 0.5 (the fit is class-balanced).
//!
//! Pure: no I/O, no clock; the worker keeps one baseline per participant.

use std::collections::HashMap;

/// Features of one speech window.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct VoiceFeatures {
    /// Loudness of the speech frames, dBFS.
    pub loudness_db: f64,
    /// log₂ of the median F0 (Hz).
    pub log_f0: f64,
    /// F0 spread / median F0.
    pub relative_spread: f64,
}

/// Number of features.
pub const FEATURES: usize = 3;

impl VoiceFeatures {
    /// From a window's measurements; None when the window has no pitch (unvoiced or silent).
    pub fn new(
        loudness_db: f32,
        f0_median_hz: Option<f32>,
        f0_spread_hz: Option<f32>,
    ) -> Option<Self> {
        let f0 = f64::from(f0_median_hz?);
        if !(f0.is_finite() && f0 > 0.0 && loudness_db.is_finite()) {
            return None;
        }
        let spread = f64::from(f0_spread_hz.unwrap_or(0.0)).max(0.0);
        Some(VoiceFeatures {
            loudness_db: f64::from(loudness_db),
            log_f0: f0.log2(),
            relative_spread: spread / f0,
        })
    }

    fn as_array(&self) -> [f64; FEATURES] {
        [self.loudness_db, self.log_f0, self.relative_spread]
    }
}

/// Population values a new speaker's baseline starts from (means and standard deviations of the
/// features over all speech windows of EmoDB's ten speakers, both genders pooled).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Population {
    /// Feature means.
    pub mean: [f64; FEATURES],
    /// Feature standard deviations.
    pub std: [f64; FEATURES],
}

/// How baselines learn.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BaselineConfig {
    /// Windows remembered (forgetting factor 1 − 1/memory).
    pub memory: f64,
    /// Pseudo-windows of population values a baseline starts with.
    pub prior_weight: f64,
    /// Smallest standard deviation used, per feature (a monotone voice must not blow up z-scores).
    pub min_std: [f64; FEATURES],
}

impl Default for BaselineConfig {
    fn default() -> Self {
        BaselineConfig {
            memory: 240.0,
            prior_weight: 8.0,
            min_std: [2.0, 0.05, 0.01],
        }
    }
}

/// One speaker's running baseline.
#[derive(Debug, Clone, PartialEq)]
pub struct Baseline {
    weight: f64,
    mean: [f64; FEATURES],
    /// Weighted sum of squared deviations.
    m2: [f64; FEATURES],
}

impl Baseline {
    /// A baseline that knows only the population.
    pub fn new(population: &Population, cfg: &BaselineConfig) -> Self {
        let w = cfg.prior_weight.max(1.0);
        let mut m2 = [0.0; FEATURES];
        for (m, s) in m2.iter_mut().zip(population.std) {
            *m = s * s * w;
        }
        Baseline {
            weight: w,
            mean: population.mean,
            m2,
        }
    }

    /// Speech windows heard so far (including the prior's pseudo-windows, after forgetting).
    pub fn weight(&self) -> f64 {
        self.weight
    }

    /// Takes in one speech window.
    pub fn update(&mut self, f: &VoiceFeatures, cfg: &BaselineConfig) {
        let keep = 1.0 - 1.0 / cfg.memory.max(2.0);
        self.weight *= keep;
        for m in &mut self.m2 {
            *m *= keep;
        }
        self.weight += 1.0;
        for (i, x) in f.as_array().into_iter().enumerate() {
            let delta = x - self.mean[i];
            self.mean[i] += delta / self.weight;
            self.m2[i] += delta * (x - self.mean[i]);
        }
    }

    /// z-scores of a window against this baseline.
    pub fn z(&self, f: &VoiceFeatures, cfg: &BaselineConfig) -> [f64; FEATURES] {
        let mut z = [0.0; FEATURES];
        for (i, x) in f.as_array().into_iter().enumerate() {
            let std = (self.m2[i] / self.weight).sqrt().max(cfg.min_std[i]);
            z[i] = ((x - self.mean[i]) / std).clamp(-6.0, 6.0);
        }
        z
    }
}

/// A logistic model on z-scores: p(high arousal) = σ(bias + Σ wᵢ zᵢ).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ArousalModel {
    /// Weights of loudness, log F0 and relative spread z-scores.
    pub weights: [f64; FEATURES],
    /// Bias.
    pub bias: f64,
}

fn sigmoid(x: f64) -> f64 {
    1.0 / (1.0 + (-x).exp())
}

impl ArousalModel {
    /// p(high arousal) of z-scores.
    pub fn probability(&self, z: &[f64; FEATURES]) -> f64 {
        let logit = self.bias + self.weights.iter().zip(z).map(|(w, z)| w * z).sum::<f64>();
        sigmoid(logit)
    }
}

/// The bundled model and population, fitted on Berlin EmoDB (all ten speakers; the figures in
/// `docs/models.md` are leave-one-speaker-out). Printed by `audio-worker evaluate-arousal`.
pub const EMODB_POPULATION: Population = Population {
    mean: [-17.62, 7.574, 0.2180],
    std: [2.972, 0.4774, 0.09764],
};

/// See [`EMODB_POPULATION`]. Loudness is not used (weight 0, see `evaluate::FITTED`); no bias: a
/// voice at its own baseline scores 0.5, "neutral".
pub const EMODB_MODEL: ArousalModel = ArousalModel {
    weights: [0.0, 4.334, -0.2747],
    bias: 0.0,
};

/// Three classes from p(high arousal), symmetric around the undecided 0.5. The middle class is
/// `moderate` (not `neutral`, which is the speech-emotion model's neutral category).
pub fn class_scores(p: f64) -> [(&'static str, f64); 3] {
    let calm = (1.0 - p / 0.35).clamp(0.0, 1.0);
    let aroused = ((p - 0.65) / 0.35).clamp(0.0, 1.0);
    let neutral = (1.0 - calm - aroused).max(0.0);
    [("calm", calm), ("moderate", neutral), ("aroused", aroused)]
}

/// Fits a logistic model by gradient descent with L2 regularisation, classes weighted to balance
/// (so that 0.5 is the balanced decision threshold). Deterministic. Without `fit_bias` the bias
/// stays 0: a voice at its own baseline scores 0.5, undecided (see the module's docs).
pub fn fit_logistic(
    xs: &[[f64; FEATURES]],
    ys: &[bool],
    l2: f64,
    iterations: usize,
    fit_bias: bool,
) -> ArousalModel {
    let positives = ys.iter().filter(|y| **y).count().max(1) as f64;
    let negatives = ys.iter().filter(|y| !**y).count().max(1) as f64;
    let n = xs.len().max(1) as f64;
    let (wp, wn) = (n / (2.0 * positives), n / (2.0 * negatives));
    let mut m = ArousalModel {
        weights: [0.0; FEATURES],
        bias: 0.0,
    };
    let rate = 0.5;
    for _ in 0..iterations {
        let mut gw = [0.0; FEATURES];
        let mut gb = 0.0;
        for (x, y) in xs.iter().zip(ys) {
            let p = m.probability(x);
            let (target, weight) = if *y { (1.0, wp) } else { (0.0, wn) };
            let err = weight * (p - target);
            for (g, xi) in gw.iter_mut().zip(x) {
                *g += err * xi;
            }
            gb += err;
        }
        for (w, g) in m.weights.iter_mut().zip(gw) {
            *w -= rate * (g / n + l2 * *w);
        }
        if fit_bias {
            m.bias -= rate * gb / n;
        }
    }
    m
}

/// Balanced accuracy (mean of the recalls of both classes) of predictions against truth.
pub fn balanced_accuracy(predicted: &[bool], truth: &[bool]) -> f64 {
    let recall = |class: bool| {
        let (hit, all) = predicted
            .iter()
            .zip(truth)
            .filter(|(_, t)| **t == class)
            .fold((0usize, 0usize), |(h, a), (p, _)| {
                (h + usize::from(*p == class), a + 1)
            });
        if all == 0 {
            f64::NAN
        } else {
            hit as f64 / all as f64
        }
    };
    (recall(true) + recall(false)) / 2.0
}

/// Baselines of many speakers, bounded: the least recently heard is forgotten first.
#[derive(Debug, Clone)]
pub struct Baselines {
    population: Population,
    cfg: BaselineConfig,
    capacity: usize,
    clock: u64,
    speakers: HashMap<String, (u64, Baseline)>,
}

impl Baselines {
    /// At most `capacity` speakers.
    pub fn new(population: Population, cfg: BaselineConfig, capacity: usize) -> Self {
        Baselines {
            population,
            cfg,
            capacity: capacity.max(1),
            clock: 0,
            speakers: HashMap::new(),
        }
    }

    /// Speakers known.
    pub fn len(&self) -> usize {
        self.speakers.len()
    }

    /// None known.
    pub fn is_empty(&self) -> bool {
        self.speakers.is_empty()
    }

    /// Scores a speech window of `speaker` against its baseline (as it was before this window),
    /// then takes the window in. Returns p(high arousal) and the speech windows the baseline had.
    pub fn score(&mut self, speaker: &str, f: &VoiceFeatures, model: &ArousalModel) -> (f64, f64) {
        self.clock += 1;
        if !self.speakers.contains_key(speaker) && self.speakers.len() >= self.capacity {
            if let Some(oldest) = self
                .speakers
                .iter()
                .min_by_key(|(_, (t, _))| *t)
                .map(|(k, _)| k.clone())
            {
                self.speakers.remove(&oldest);
            }
        }
        let (population, cfg, clock) = (self.population, self.cfg, self.clock);
        let entry = self
            .speakers
            .entry(speaker.to_owned())
            .or_insert_with(|| (clock, Baseline::new(&population, &cfg)));
        entry.0 = clock;
        let heard = entry.1.weight() - cfg.prior_weight;
        let p = model.probability(&entry.1.z(f, &cfg));
        entry.1.update(f, &cfg);
        (p, heard.max(0.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f(db: f64, f0: f64) -> VoiceFeatures {
        VoiceFeatures {
            loudness_db: db,
            log_f0: f0.log2(),
            relative_spread: 0.1,
        }
    }

    #[test]
    fn a_voice_is_judged_against_its_own_register() {
        let cfg = BaselineConfig::default();
        let mut low = Baseline::new(&EMODB_POPULATION, &cfg);
        let mut high = Baseline::new(&EMODB_POPULATION, &cfg);
        for _ in 0..200 {
            low.update(&f(-25.0, 110.0), &cfg);
            high.update(&f(-25.0, 230.0), &cfg);
        }
        // The same 230 Hz is the high voice's usual, and far above the low voice's.
        let usual = high.z(&f(-25.0, 230.0), &cfg);
        let raised = low.z(&f(-25.0, 230.0), &cfg);
        assert!(usual[1].abs() < 0.5, "{usual:?}");
        assert!(raised[1] > 3.0, "{raised:?}");
    }

    #[test]
    fn a_new_speaker_starts_from_the_population_and_learns() {
        let cfg = BaselineConfig::default();
        let b = Baseline::new(&EMODB_POPULATION, &cfg);
        let z = b.z(
            &VoiceFeatures {
                loudness_db: EMODB_POPULATION.mean[0],
                log_f0: EMODB_POPULATION.mean[1],
                relative_spread: EMODB_POPULATION.mean[2],
            },
            &cfg,
        );
        assert!(z.iter().all(|v| v.abs() < 1e-9), "{z:?}");
        let mut quiet = Baseline::new(&EMODB_POPULATION, &cfg);
        for _ in 0..50 {
            quiet.update(&f(-40.0, 150.0), &cfg);
        }
        assert!(
            quiet.z(&f(-40.0, 150.0), &cfg)[0].abs() < 0.5,
            "a quiet microphone becomes the norm"
        );
    }

    #[test]
    fn the_fit_separates_what_is_separable_and_balances_classes() {
        // 3 positives far right, 30 negatives left: the balanced fit puts the cut between them.
        let mut xs = Vec::new();
        let mut ys = Vec::new();
        for i in 0..30 {
            xs.push([-1.0 - (i % 3) as f64 * 0.1, 0.0, 0.0]);
            ys.push(false);
        }
        for _ in 0..3 {
            xs.push([1.0, 0.0, 0.0]);
            ys.push(true);
        }
        let m = fit_logistic(&xs, &ys, 1e-3, 2000, true);
        let pred: Vec<bool> = xs.iter().map(|x| m.probability(x) >= 0.5).collect();
        assert_eq!(balanced_accuracy(&pred, &ys), 1.0);
        assert!(m.probability(&[0.0, 0.0, 0.0]) > 0.2 && m.probability(&[0.0, 0.0, 0.0]) < 0.8);
    }

    #[test]
    fn balanced_accuracy_weighs_classes_equally() {
        let truth = [true, false, false, false];
        assert_eq!(balanced_accuracy(&[true, true, true, true], &truth), 0.5);
        assert_eq!(balanced_accuracy(&[true, false, false, false], &truth), 1.0);
    }

    #[test]
    fn baselines_are_bounded_and_forget_the_least_recent() {
        let mut b = Baselines::new(EMODB_POPULATION, BaselineConfig::default(), 2);
        let x = f(-20.0, 150.0);
        b.score("ana", &x, &EMODB_MODEL);
        b.score("ben", &x, &EMODB_MODEL);
        b.score("ana", &x, &EMODB_MODEL);
        b.score("cyd", &x, &EMODB_MODEL);
        assert_eq!(b.len(), 2);
        let (_, heard) = b.score("ana", &x, &EMODB_MODEL);
        assert!(heard > 1.5, "ana kept: {heard}");
        let (_, heard) = b.score("ben", &x, &EMODB_MODEL);
        assert_eq!(heard, 0.0, "ben was forgotten");
    }

    #[test]
    fn hostile_measurements_give_no_features() {
        assert!(VoiceFeatures::new(f32::NAN, Some(120.0), None).is_none());
        assert!(VoiceFeatures::new(-20.0, Some(0.0), None).is_none());
        assert!(VoiceFeatures::new(-20.0, None, None).is_none());
        assert!(VoiceFeatures::new(-20.0, Some(120.0), None).is_some());
    }
}
