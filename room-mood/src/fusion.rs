//! One participant's fused affect: per modality, time-aware smoothing of what the models said;
//! across modalities, a confidence-weighted blend that falls back to whatever is still fresh.

use std::collections::BTreeMap;

use tap_protocol::affect::{
    AffectDeclaration, Modality, ModalityConflict, ParticipantState, STATE_TYPE,
};

use crate::MoodConfig;

/// What one model result says, read through its model's declaration.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Observation {
    /// Weighted mean valence of the declared labels, and the weight it carries (0..1).
    pub valence: Option<(f64, f64)>,
    /// Weighted mean arousal of the declared labels, and its weight.
    pub arousal: Option<(f64, f64)>,
    /// Emotion category → probability (declared emotions only).
    pub emotions: Vec<(String, f64)>,
    /// Probability of speech, if the model declares a speech label and gave it.
    pub speech: Option<f64>,
    /// A face was seen (face models): `extras.no_face` if given, else "any score at all".
    pub face_visible: Option<bool>,
    /// The face is turned to the screen (`extras.attentive`, if the model gives it).
    pub attentive: Option<bool>,
}

impl Observation {
    /// Reads a result's scores and extras through `decl`.
    pub fn read(
        decl: &AffectDeclaration,
        scores: &BTreeMap<String, f64>,
        extras: &serde_json::Value,
    ) -> Observation {
        let mut o = Observation::default();
        let (mut vs, mut vw, mut as_, mut aw, mut peak) = (0.0, 0.0, 0.0, 0.0, 0.0f64);
        for (label, point) in &decl.labels {
            let Some(&s) = scores.get(label) else {
                continue;
            };
            if !s.is_finite() {
                continue;
            }
            let s = s.clamp(0.0, 1.0);
            if let Some(v) = point.valence {
                vs += s * v;
                vw += s;
            }
            if let Some(a) = point.arousal {
                as_ += s * a;
                aw += s;
            }
            peak = peak.max(s);
        }
        // A flat output (every class equally likely) says little: its peak is low.
        let weight = peak.clamp(0.0, 1.0);
        if vw > 1e-9 {
            o.valence = Some(((vs / vw).clamp(-1.0, 1.0), weight));
        }
        if aw > 1e-9 {
            o.arousal = Some(((as_ / aw).clamp(0.0, 1.0), weight));
        }
        // An emotion the model left out of an output it did give has probability 0 (it must
        // fade, not keep its last value).
        if peak > 0.0 {
            for e in &decl.emotions {
                let s = scores
                    .get(e)
                    .copied()
                    .filter(|s| s.is_finite())
                    .unwrap_or(0.0);
                o.emotions.push((e.clone(), s.clamp(0.0, 1.0)));
            }
        }
        if let Some(l) = &decl.speech_label {
            o.speech = scores
                .get(l)
                .copied()
                .filter(|s| s.is_finite())
                .map(|s| s.clamp(0.0, 1.0));
        }
        if decl.modality == Modality::Face {
            o.face_visible = Some(match extras.get("no_face").and_then(|v| v.as_bool()) {
                Some(no_face) => !no_face,
                None => decl.labels.keys().any(|l| scores.contains_key(l)),
            });
            o.attentive = extras.get("attentive").and_then(|v| v.as_bool());
        }
        o
    }
}

/// One modality of one participant.
#[derive(Debug, Clone, Default)]
struct Channel {
    /// Last result of any kind, ms.
    last_ms: Option<f64>,
    /// Last result that carried valence or arousal, ms.
    affect_ms: Option<f64>,
    valence: Option<f64>,
    arousal: Option<f64>,
    /// Smoothed weight of the affect it carried.
    weight: f64,
    /// Smoothed emotion probabilities.
    emotions: BTreeMap<String, f64>,
    /// The dominant emotion, changed only when another leads by the margin.
    dominant: Option<String>,
    /// Smoothed probability of speech.
    speech: Option<f64>,
    face_visible: Option<bool>,
    attentive: Option<bool>,
}

fn blend(old: Option<f64>, new: f64, alpha: f64) -> f64 {
    match old {
        Some(o) => o + alpha * (new - o),
        None => new,
    }
}

impl Channel {
    fn update(&mut self, at_ms: f64, o: &Observation, cfg: &MoodConfig) {
        let alpha = match self.last_ms {
            Some(last) => 1.0 - (-(at_ms - last).max(0.0) / (cfg.smoothing_s * 1000.0)).exp(),
            None => 1.0,
        };
        // After a long silence the old values mean nothing: start afresh.
        let fresh = self
            .affect_ms
            .is_none_or(|t| at_ms - t > cfg.stale_s * 1000.0);
        let alpha_affect = if fresh { 1.0 } else { alpha };
        self.last_ms = Some(at_ms);
        if o.valence.is_some() || o.arousal.is_some() {
            if let Some((v, w)) = o.valence {
                self.valence = Some(blend(self.valence.filter(|_| !fresh), v, alpha_affect));
                self.weight = blend(Some(self.weight).filter(|_| !fresh), w, alpha_affect);
            }
            if let Some((a, w)) = o.arousal {
                self.arousal = Some(blend(self.arousal.filter(|_| !fresh), a, alpha_affect));
                if o.valence.is_none() {
                    self.weight = blend(Some(self.weight).filter(|_| !fresh), w, alpha_affect);
                }
            }
            self.affect_ms = Some(at_ms);
        }
        if !o.emotions.is_empty() {
            if fresh {
                self.emotions.clear();
                self.dominant = None;
            }
            for (e, p) in &o.emotions {
                let old = self.emotions.get(e).copied();
                self.emotions
                    .insert(e.clone(), blend(old, *p, alpha_affect));
            }
            self.pick_dominant(cfg.emotion_margin);
        }
        if let Some(s) = o.speech {
            self.speech = Some(blend(self.speech, s, alpha));
        }
        if o.face_visible.is_some() {
            self.face_visible = o.face_visible;
            // No face, no gaze: the last known attention does not carry over.
            self.attentive = if o.face_visible == Some(true) {
                o.attentive
            } else {
                None
            };
        }
    }

    fn pick_dominant(&mut self, margin: f64) {
        let Some((best, p)) = self
            .emotions
            .iter()
            .max_by(|a, b| a.1.total_cmp(b.1))
            .map(|(e, p)| (e.clone(), *p))
        else {
            return;
        };
        let current = self
            .dominant
            .as_ref()
            .and_then(|d| self.emotions.get(d).copied());
        match current {
            Some(c) if p <= c + margin => {}
            _ => self.dominant = Some(best),
        }
    }

    /// This channel's affect weight at `now`: its smoothed weight, fading with the age of its last
    /// affect input; zero once stale.
    fn affect_confidence(&self, now_ms: f64, cfg: &MoodConfig) -> f64 {
        match self.affect_ms {
            Some(t) if now_ms - t <= cfg.stale_s * 1000.0 => {
                self.weight * (-(now_ms - t).max(0.0) / (cfg.decay_s * 1000.0)).exp()
            }
            _ => 0.0,
        }
    }

    fn fresh(&self, now_ms: f64, cfg: &MoodConfig) -> bool {
        self.last_ms
            .is_some_and(|t| now_ms - t <= cfg.stale_s * 1000.0)
    }
}

/// One participant: a channel per modality, and how much they spoke lately.
#[derive(Debug, Clone, Default)]
pub struct Participant {
    channels: BTreeMap<Modality, Channel>,
    /// Seconds of speech, fading with the speaker window (for the dominant speaker).
    talk_s: f64,
    talk_ms: Option<f64>,
    /// Newest input of any kind, ms.
    pub last_ms: f64,
}

/// Modalities a full state rests on: with one missing, confidence is at most half.
const EXPECTED_MODALITIES: f64 = 2.0;

impl Participant {
    /// Takes in one observation from a model of `modality`, captured at `at_ms`. Older than what
    /// the channel already holds: ignored (false), since late results must not rewind the state.
    pub fn observe(
        &mut self,
        modality: Modality,
        at_ms: f64,
        o: &Observation,
        cfg: &MoodConfig,
    ) -> bool {
        let ch = self.channels.entry(modality).or_default();
        if ch.last_ms.is_some_and(|t| at_ms < t) {
            return false;
        }
        if let Some(s) = o.speech {
            let fade = match self.talk_ms {
                Some(t) => (-(at_ms - t).max(0.0) / (cfg.speaker_window_s * 1000.0)).exp(),
                None => 1.0,
            };
            let dt = self
                .talk_ms
                .map_or(0.0, |t| ((at_ms - t) / 1000.0).clamp(0.0, 1.0));
            self.talk_s = self.talk_s * fade + s * dt;
            self.talk_ms = Some(at_ms);
        }
        ch.update(at_ms, o, cfg);
        self.last_ms = self.last_ms.max(at_ms);
        true
    }

    /// Recent speech, seconds (fading), as of `now_ms`.
    pub fn talk(&self, now_ms: f64, cfg: &MoodConfig) -> f64 {
        match self.talk_ms {
            Some(t) => {
                self.talk_s * (-(now_ms - t).max(0.0) / (cfg.speaker_window_s * 1000.0)).exp()
            }
            None => 0.0,
        }
    }

    /// The fused state at `now_ms`.
    pub fn state(
        &self,
        room: &str,
        participant: &str,
        now_ms: f64,
        cfg: &MoodConfig,
    ) -> ParticipantState {
        let (mut vs, mut vw, mut as_, mut aw, mut conf) = (0.0, 0.0, 0.0, 0.0, 0.0);
        let mut modalities = Vec::new();
        for (m, ch) in &self.channels {
            let c = ch.affect_confidence(now_ms, cfg);
            if c <= 0.0 {
                continue;
            }
            modalities.push(*m);
            conf += c;
            if let Some(v) = ch.valence {
                vs += c * v;
                vw += c;
            }
            if let Some(a) = ch.arousal {
                as_ += c * a;
                aw += c;
            }
        }
        let face = self
            .channels
            .get(&Modality::Face)
            .filter(|c| c.fresh(now_ms, cfg));
        let voice = self
            .channels
            .get(&Modality::Voice)
            .filter(|c| c.fresh(now_ms, cfg));
        // What each modality reads on its own: its dominant emotion while its affect counts.
        fn reading<'a>(
            ch: Option<&'a Channel>,
            now_ms: f64,
            cfg: &MoodConfig,
        ) -> Option<(String, &'a Channel)> {
            ch.filter(|c| c.affect_confidence(now_ms, cfg) > 0.0)
                .and_then(|c| Some((c.dominant.clone()?, c)))
        }
        let (face_reading, voice_reading) =
            (reading(face, now_ms, cfg), reading(voice, now_ms, cfg));
        let mut valence = (vw > 0.0).then(|| vs / vw);
        let mut arousal = (aw > 0.0).then(|| as_ / aw);
        // The face leads the category when it has one (faces are read 5 times a second, voices
        // only while someone speaks).
        let mut emotion = face_reading
            .as_ref()
            .or(voice_reading.as_ref())
            .map(|(e, _)| e.clone());
        let mut conflict = None;
        if let (Some((fe, fc)), Some((ve, vc))) = (&face_reading, &voice_reading) {
            if let (Some(fv), Some(vv)) = (fc.valence, vc.valence) {
                if (fv - vv).abs() >= cfg.conflict_valence_gap {
                    // A blend of a smile and an angry voice would read neutral, which neither
                    // says: show both, and follow the more confident one.
                    let lead =
                        if fc.affect_confidence(now_ms, cfg) >= vc.affect_confidence(now_ms, cfg) {
                            (fc, fe)
                        } else {
                            (vc, ve)
                        };
                    valence = lead.0.valence;
                    arousal = lead.0.arousal.or(arousal);
                    emotion = Some(lead.1.clone());
                    conflict = Some(ModalityConflict {
                        face: fe.clone(),
                        face_valence: round3(fv),
                        voice: ve.clone(),
                        voice_valence: round3(vv),
                    });
                }
            }
        }
        ParticipantState {
            v: tap_protocol::VERSION,
            kind: STATE_TYPE.into(),
            room: room.to_owned(),
            participant: participant.to_owned(),
            at_ms: now_ms,
            valence: valence.map(round3),
            arousal: arousal.map(round3),
            emotion,
            confidence: round3((conf / EXPECTED_MODALITIES).clamp(0.0, 1.0)),
            face_visible: face.and_then(|c| c.face_visible),
            speaking: voice
                .and_then(|c| c.speech)
                .map(|s| s >= cfg.speaking_threshold),
            attentive: face.and_then(|c| c.attentive),
            modalities,
            face_emotion: face_reading.map(|(e, _)| e),
            voice_emotion: voice_reading.map(|(e, _)| e),
            conflict,
        }
    }
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}
