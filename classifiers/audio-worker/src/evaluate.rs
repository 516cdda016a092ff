//! Speaker-independent evaluation of arousal on labelled clips (Berlin EmoDB's naming), and the
//! fit of the bundled model. Pure: the clips' features come in, figures go out.

use std::collections::BTreeMap;

use crate::arousal::{
    balanced_accuracy, fit_logistic, ArousalModel, Baseline, BaselineConfig, Population,
    VoiceFeatures, FEATURES,
};

/// One labelled clip.
#[derive(Debug, Clone)]
pub struct Clip {
    /// File name.
    pub name: String,
    /// Speaker id.
    pub speaker: String,
    /// `f` or `m`.
    pub gender: char,
    /// High arousal (None: not used for arousal, e.g. disgust).
    pub high: Option<bool>,
    /// Features of the clip's speech (None: no voiced speech found).
    pub features: Option<VoiceFeatures>,
    /// The fixed formula's class said "aroused".
    pub formula_aroused: Option<bool>,
}

/// EmoDB's file names: `03a01Wa.wav` = speaker 03, text a01, emotion W (Wut), version a.
/// High arousal: anger (W), fear (A), happiness (F); low: boredom (L), sadness (T), neutral (N);
/// disgust (E) is left out (its arousal is not agreed on).
pub fn emodb_label(file: &str) -> Option<(String, char, Option<bool>)> {
    let b = file.as_bytes();
    if b.len() < 7 || !b[0].is_ascii_digit() || !b[1].is_ascii_digit() {
        return None;
    }
    let speaker = file[..2].to_owned();
    let gender = match speaker.as_str() {
        "03" | "10" | "11" | "12" | "15" => 'm',
        "08" | "09" | "13" | "14" | "16" => 'f',
        _ => return None,
    };
    let high = match b[5] {
        b'W' | b'A' | b'F' => Some(true),
        b'L' | b'T' | b'N' => Some(false),
        b'E' => None,
        _ => return None,
    };
    Some((speaker, gender, high))
}

/// Population statistics of feature vectors.
pub fn population(features: &[VoiceFeatures]) -> Population {
    let n = features.len().max(1) as f64;
    let arr = |f: &VoiceFeatures| [f.loudness_db, f.log_f0, f.relative_spread];
    let mut mean = [0.0; FEATURES];
    for f in features {
        for (m, x) in mean.iter_mut().zip(arr(f)) {
            *m += x / n;
        }
    }
    let mut std = [0.0; FEATURES];
    for f in features {
        for ((s, x), m) in std.iter_mut().zip(arr(f)).zip(mean) {
            *s += (x - m) * (x - m) / n;
        }
    }
    for s in &mut std {
        *s = s.sqrt().max(1e-6);
    }
    Population { mean, std }
}

/// Features the bundled model uses: log F0 and relative F0 spread. Loudness is measured but not
/// fitted: the EmoDB copy this is measured on was level-normalised when it was re-cut to 2 s, so its
/// loudness reflects that normalisation, not vocal effort (fitted anyway, it took a negative weight
/// and added 1.4 points: an artefact of the corpus, not shipped).
pub const FITTED: [bool; FEATURES] = [false, true, true];

fn masked(mut z: [f64; FEATURES]) -> [f64; FEATURES] {
    for (v, used) in z.iter_mut().zip(FITTED) {
        if !used {
            *v = 0.0;
        }
    }
    z
}

/// z-scores of every usable clip of one speaker, each against a baseline built from the speaker's
/// other clips (what a call would have heard of them), in file order.
fn speaker_z(
    clips: &[&Clip],
    pop: &Population,
    cfg: &BaselineConfig,
) -> Vec<(usize, [f64; FEATURES])> {
    let mut out = Vec::new();
    for (i, c) in clips.iter().enumerate() {
        let Some(f) = c.features else { continue };
        let mut b = Baseline::new(pop, cfg);
        for (j, other) in clips.iter().enumerate() {
            if let (true, Some(g)) = (i != j, other.features) {
                b.update(&g, cfg);
            }
        }
        out.push((i, masked(b.z(&f, cfg))));
    }
    out
}

/// Figures of one way of deciding.
#[derive(Debug, Clone, Default)]
pub struct Figures {
    /// Balanced accuracy over every scored clip.
    pub balanced: f64,
    /// Per gender.
    pub by_gender: BTreeMap<char, f64>,
    /// Per speaker.
    pub by_speaker: BTreeMap<String, f64>,
    /// Clips scored.
    pub scored: usize,
}

fn figures(rows: &[(&Clip, bool)]) -> Figures {
    let (p, t): (Vec<bool>, Vec<bool>) = rows
        .iter()
        .map(|(c, p)| (*p, c.high.unwrap_or(false)))
        .unzip();
    let mut out = Figures {
        balanced: balanced_accuracy(&p, &t),
        scored: rows.len(),
        ..Default::default()
    };
    let mut groups: BTreeMap<String, Vec<(bool, bool)>> = BTreeMap::new();
    let mut genders: BTreeMap<char, Vec<(bool, bool)>> = BTreeMap::new();
    for (c, pred) in rows {
        let truth = c.high.unwrap_or(false);
        groups
            .entry(c.speaker.clone())
            .or_default()
            .push((*pred, truth));
        genders.entry(c.gender).or_default().push((*pred, truth));
    }
    let acc = |v: &Vec<(bool, bool)>| {
        let (p, t): (Vec<bool>, Vec<bool>) = v.iter().copied().unzip();
        balanced_accuracy(&p, &t)
    };
    out.by_speaker = groups.iter().map(|(k, v)| (k.clone(), acc(v))).collect();
    out.by_gender = genders.iter().map(|(k, v)| (*k, acc(v))).collect();
    out
}

/// The fixed formula's figures on the same clips.
pub fn formula_figures(clips: &[Clip]) -> Figures {
    let rows: Vec<(&Clip, bool)> = clips
        .iter()
        .filter(|c| c.high.is_some())
        .filter_map(|c| c.formula_aroused.map(|p| (c, p)))
        .collect();
    figures(&rows)
}

/// Training rows (z-scores, label) of a set of speakers, with `pop` as the prior.
fn training_rows(
    clips: &[Clip],
    speakers: &[&String],
    pop: &Population,
    cfg: &BaselineConfig,
) -> (Vec<[f64; FEATURES]>, Vec<bool>) {
    let (mut xs, mut ys) = (Vec::new(), Vec::new());
    for s in speakers {
        let own: Vec<&Clip> = clips.iter().filter(|c| &&c.speaker == s).collect();
        for (i, z) in speaker_z(&own, pop, cfg) {
            if let Some(h) = own[i].high {
                xs.push(z);
                ys.push(h);
            }
        }
    }
    (xs, ys)
}

/// Leave-one-speaker-out: for each speaker, the population and the model come from the other
/// speakers only; the held-out speaker's clips are scored against baselines of their own other
/// clips.
pub fn leave_one_speaker_out(clips: &[Clip], cfg: &BaselineConfig, fit_bias: bool) -> Figures {
    let speakers: Vec<String> = {
        let mut s: Vec<String> = clips.iter().map(|c| c.speaker.clone()).collect();
        s.sort();
        s.dedup();
        s
    };
    let mut rows: Vec<(&Clip, bool)> = Vec::new();
    for held in &speakers {
        let others: Vec<&String> = speakers.iter().filter(|s| *s != held).collect();
        let train_features: Vec<VoiceFeatures> = clips
            .iter()
            .filter(|c| &c.speaker != held)
            .filter_map(|c| c.features)
            .collect();
        let pop = population(&train_features);
        let (xs, ys) = training_rows(clips, &others, &pop, cfg);
        let model = fit_logistic(&xs, &ys, 1e-3, 3000, fit_bias);
        let own: Vec<&Clip> = clips.iter().filter(|c| &c.speaker == held).collect();
        for (i, z) in speaker_z(&own, &pop, cfg) {
            if own[i].high.is_some() {
                rows.push((own[i], model.probability(&z) >= 0.5));
            }
        }
    }
    figures(&rows)
}

/// The model and population fitted on every speaker (what the worker ships).
pub fn fit_all(clips: &[Clip], cfg: &BaselineConfig, fit_bias: bool) -> (Population, ArousalModel) {
    let features: Vec<VoiceFeatures> = clips.iter().filter_map(|c| c.features).collect();
    let pop = population(&features);
    let mut speakers: Vec<&String> = clips.iter().map(|c| &c.speaker).collect();
    speakers.sort();
    speakers.dedup();
    let (xs, ys) = training_rows(clips, &speakers, &pop, cfg);
    (pop, fit_logistic(&xs, &ys, 1e-3, 3000, fit_bias))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emodb_names() {
        assert_eq!(
            emodb_label("03a01Wa.wav"),
            Some(("03".into(), 'm', Some(true)))
        );
        assert_eq!(
            emodb_label("16b10Tb.wav"),
            Some(("16".into(), 'f', Some(false)))
        );
        assert_eq!(emodb_label("08a02Ea.wav"), Some(("08".into(), 'f', None)));
        assert_eq!(emodb_label("99a01Wa.wav"), None);
        assert_eq!(emodb_label("x.wav"), None);
    }

    /// Synthetic speakers whose registers differ: absolute pitch misleads, the baseline does not.
    #[test]
    fn speaker_baselines_beat_register_on_synthetic_voices() {
        let mut clips = Vec::new();
        for (s, gender, base_f0, base_db) in [
            ("03", 'm', 110.0, -30.0),
            ("10", 'm', 120.0, -20.0),
            ("08", 'f', 210.0, -28.0),
            ("09", 'f', 230.0, -18.0),
        ] {
            for k in 0..60 {
                let high = k % 2 == 0;
                let jitter = (k as f64 * 0.37).sin();
                let f0: f64 = base_f0 * if high { 1.25 } else { 1.0 } * (1.0 + 0.03 * jitter);
                let db = base_db + if high { 5.0 } else { 0.0 } + jitter;
                clips.push(Clip {
                    name: format!("{s}-{k}"),
                    speaker: s.into(),
                    gender,
                    high: Some(high),
                    features: Some(VoiceFeatures {
                        loudness_db: db,
                        log_f0: f0.log2(),
                        relative_spread: 0.1,
                    }),
                    formula_aroused: Some(f0 > 160.0),
                });
            }
        }
        let before = formula_figures(&clips);
        let after = leave_one_speaker_out(&clips, &BaselineConfig::default(), false);
        assert!(
            (before.balanced - 0.5).abs() < 0.01,
            "register decides: {before:?}"
        );
        assert!(after.balanced > 0.95, "{after:?}");
        let gap = (after.by_gender[&'f'] - after.by_gender[&'m']).abs();
        assert!(gap < 0.05, "{after:?}");
    }
}
