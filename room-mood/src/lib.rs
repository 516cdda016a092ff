//! The presenter's view: each participant's fused affect and a live room mood, computed from the
//! per-model results kurento-tap publishes.
//!
//! A pure core: results in, [`ParticipantState`]s and [`RoomMood`]s out, time passed in explicitly.
//! No NATS, no media, no clock: the daemon runs it on its own results (in process), and
//! `kurento-tap mood` runs it on the NATS results of many daemons; both only carry messages.
//!
//! - **Fusion by declared meaning.** A model's registration may declare where its labels sit on the
//!   valence/arousal plane, which are emotion categories and which is speech activity
//!   ([`AffectDeclaration`]); results of undeclared models are ignored. A new model joins with no
//!   code change.
//! - **Time-aware.** Each modality is smoothed with a time constant, not per result (results come
//!   at uneven rates and may be dropped); its weight fades with the age of its last input, and
//!   after `stale_s` it is gone: the state decays to unknown when inputs stop. Missing modalities
//!   (camera off, muted, silent) lower the confidence instead of breaking the state.
//! - **Room mood** once a second per room, presenter excluded, published only when at least
//!   `min_group` participants contribute (no individual can be read out of it); with it, the
//!   room summarised from expression outputs only ([`expressions`]: faces visible, speaking,
//!   attention), gated the same way, for the `expressions` processing policy.

pub mod expressions;
pub mod fusion;

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;

pub use tap_protocol::affect::{
    AffectDeclaration, ExpressionSummary, Modality, ParticipantState, RoomMood, Trend,
    ROOM_MOOD_TYPE,
};
use tap_protocol::ResultMessage;

use fusion::{Observation, Participant};

/// Tuning of the fusion and the room aggregate.
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MoodConfig {
    /// Face and voice are shown as disagreeing (not blended) when their valences lie this far
    /// apart (0..2; the emotion placements are those of the face models).
    pub conflict_valence_gap: f64,
    /// Participants (presenter excluded) that must contribute before a room aggregate is published.
    pub min_group: usize,
    /// Time constant of the smoothing, seconds (a constant input is reached to 95 % in 3×).
    pub smoothing_s: f64,
    /// Time constant with which a modality's weight fades after its last input, seconds.
    pub decay_s: f64,
    /// A modality without input this long is dropped, seconds.
    pub stale_s: f64,
    /// A new dominant emotion must lead the current one by this much (0..1): no flicker.
    pub emotion_margin: f64,
    /// Smoothed speech probability from which a participant counts as speaking.
    pub speaking_threshold: f64,
    /// A state counts in the room aggregate from this confidence on.
    pub min_confidence: f64,
    /// Window of the dominant-speaker estimate, seconds.
    pub speaker_window_s: f64,
    /// Seconds of recent speech before someone can be taken for the presenter.
    pub speaker_min_talk_s: f64,
    /// Window of the trend, seconds.
    pub trend_window_s: f64,
    /// Change per minute above which a trend is rising or falling.
    pub trend_threshold_per_min: f64,
    /// A participant without any input this long is forgotten, seconds.
    pub forget_s: f64,
    /// Rooms tracked at most (inputs beyond are refused and counted).
    pub max_rooms: usize,
    /// Participants per room at most.
    pub max_participants: usize,
}

impl Default for MoodConfig {
    fn default() -> Self {
        MoodConfig {
            conflict_valence_gap: 0.9,
            min_group: 3,
            smoothing_s: 2.0,
            decay_s: 4.0,
            stale_s: 10.0,
            emotion_margin: 0.15,
            speaking_threshold: 0.5,
            min_confidence: 0.15,
            speaker_window_s: 10.0,
            speaker_min_talk_s: 2.0,
            trend_window_s: 60.0,
            trend_threshold_per_min: 0.1,
            forget_s: 60.0,
            max_rooms: 10_000,
            max_participants: 1_000,
        }
    }
}

/// Who presents, and who said so.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PresenterSource {
    /// The application tagged the publisher (`kurento-tap.role=presenter`).
    Tag,
    /// A control request named them.
    Control,
    /// Nobody named one: the dominant speaker of the last seconds.
    Speaker,
}

impl PresenterSource {
    fn as_str(self) -> &'static str {
        match self {
            PresenterSource::Tag => "tag",
            PresenterSource::Control => "control",
            PresenterSource::Speaker => "speaker",
        }
    }
}

/// What became of one result.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Observed {
    /// Taken into the participant's state.
    Fused,
    /// Its model declared no affect meaning.
    Undeclared,
    /// Older than what the state already holds (a late or reordered result).
    Late,
    /// Too many rooms or participants: refused.
    OverCapacity,
    /// Not a usable time.
    Invalid,
}

#[derive(Debug, Default)]
struct Room {
    participants: BTreeMap<String, Participant>,
    /// Named by a control request: wins over the tag.
    controlled: Option<String>,
    /// Named by the application's tag.
    tagged: Option<String>,
    speaker: Option<String>,
    /// (ms, mean valence, mean arousal) of published aggregates within the trend window.
    history: VecDeque<(f64, Option<f64>, Option<f64>)>,
}

/// The engine: declarations of the models, and every room's participants.
#[derive(Debug, Default)]
pub struct MoodEngine {
    config: MoodConfig,
    /// model name → version → declaration (looked up without allocating, per result).
    declarations: HashMap<String, HashMap<String, Arc<AffectDeclaration>>>,
    rooms: HashMap<String, Room>,
}

impl MoodEngine {
    /// An engine with `config`.
    pub fn new(config: MoodConfig) -> Self {
        MoodEngine {
            config,
            ..Default::default()
        }
    }

    /// The configuration.
    pub fn config(&self) -> &MoodConfig {
        &self.config
    }

    /// Declares what the labels of model `name@version` mean (from its registration).
    pub fn declare(&mut self, name: &str, version: &str, decl: AffectDeclaration) {
        self.declarations
            .entry(name.to_owned())
            .or_default()
            .insert(version.to_owned(), Arc::new(decl));
    }

    /// The model is gone from the registry.
    pub fn undeclare(&mut self, name: &str, version: &str) {
        if let Some(v) = self.declarations.get_mut(name) {
            v.remove(version);
            if v.is_empty() {
                self.declarations.remove(name);
            }
        }
    }

    /// Takes in one result (its capture time is the observation's time).
    pub fn observe(&mut self, r: &ResultMessage) -> Observed {
        let Some(decl) = self
            .declarations
            .get(&r.model)
            .and_then(|v| v.get(&r.version))
        else {
            return Observed::Undeclared;
        };
        if !r.capture_ms.is_finite() || r.capture_ms <= 0.0 {
            return Observed::Invalid;
        }
        let o = Observation::read(decl, &r.output.labels, &r.output.extras);
        let modality = decl.modality;
        let Some(p) = participant_mut(&mut self.rooms, &self.config, &r.room, &r.participant)
        else {
            return Observed::OverCapacity;
        };
        if p.observe(modality, r.capture_ms, &o, &self.config) {
            Observed::Fused
        } else {
            Observed::Late
        }
    }

    /// Names (or, with `None`, un-names) the presenter of `room` for one source. A control
    /// request's naming wins over the tag's, and either over the dominant-speaker guess; un-naming
    /// one falls back to the next.
    pub fn set_presenter(
        &mut self,
        room: &str,
        participant: Option<&str>,
        source: PresenterSource,
    ) {
        let r = self.rooms.entry(room.to_owned()).or_default();
        let slot = match source {
            PresenterSource::Control => &mut r.controlled,
            PresenterSource::Tag => &mut r.tagged,
            // The guess is the engine's own.
            PresenterSource::Speaker => return,
        };
        *slot = participant.map(str::to_owned);
    }

    /// The participant left: their state is dropped at once.
    pub fn leave(&mut self, room: &str, participant: &str) {
        if let Some(r) = self.rooms.get_mut(room) {
            r.participants.remove(participant);
        }
    }

    /// Every participant's state at `now_ms`.
    pub fn states(&self, now_ms: f64) -> Vec<ParticipantState> {
        let mut out = Vec::new();
        for (room, r) in &self.rooms {
            for (name, p) in &r.participants {
                out.push(p.state(room, name, now_ms, &self.config));
            }
        }
        out
    }

    /// One participant's state at `now_ms`.
    pub fn state(&self, room: &str, participant: &str, now_ms: f64) -> Option<ParticipantState> {
        let p = self.rooms.get(room)?.participants.get(participant)?;
        Some(p.state(room, participant, now_ms, &self.config))
    }

    /// The presenter of `room` now, and how they were chosen.
    pub fn presenter(&self, room: &str) -> Option<(&str, PresenterSource)> {
        let r = self.rooms.get(room)?;
        r.presenter()
    }

    /// Every room's mood at `now_ms` (call once a second): forgets silent participants, picks the
    /// dominant speaker, aggregates, and records the trend history.
    pub fn tick(&mut self, now_ms: f64) -> Vec<RoomMood> {
        let cfg = &self.config;
        let mut out = Vec::with_capacity(self.rooms.len());
        self.rooms.retain(|_, r| {
            r.participants
                .retain(|_, p| now_ms - p.last_ms <= cfg.forget_s * 1000.0);
            !r.participants.is_empty() || r.controlled.is_some() || r.tagged.is_some()
        });
        for (name, r) in &mut self.rooms {
            r.speaker = dominant_speaker(r, now_ms, cfg);
            let presenter = r.presenter().map(|(p, s)| (p.to_owned(), s));
            out.push(aggregate(name, r, presenter, now_ms, cfg));
        }
        out.sort_by(|a, b| a.room.cmp(&b.room));
        out
    }
}

/// The participant's entry, created if room and participant caps allow.
fn participant_mut<'a>(
    rooms: &'a mut HashMap<String, Room>,
    cfg: &MoodConfig,
    room: &str,
    participant: &str,
) -> Option<&'a mut Participant> {
    if !rooms.contains_key(room) && rooms.len() >= cfg.max_rooms {
        return None;
    }
    let r = rooms.entry(room.to_owned()).or_default();
    if !r.participants.contains_key(participant) && r.participants.len() >= cfg.max_participants {
        return None;
    }
    Some(r.participants.entry(participant.to_owned()).or_default())
}

impl Room {
    fn presenter(&self) -> Option<(&str, PresenterSource)> {
        if let Some(p) = &self.controlled {
            return Some((p, PresenterSource::Control));
        }
        if let Some(p) = &self.tagged {
            return Some((p, PresenterSource::Tag));
        }
        self.speaker
            .as_deref()
            .map(|p| (p, PresenterSource::Speaker))
    }
}

/// The participant who spoke most over the speaker window, if they spoke enough; the current one
/// keeps the role unless someone spoke clearly more (1.5×), so turn-taking does not flip it.
fn dominant_speaker(r: &Room, now_ms: f64, cfg: &MoodConfig) -> Option<String> {
    let talk: Vec<(&String, f64)> = r
        .participants
        .iter()
        .map(|(n, p)| (n, p.talk(now_ms, cfg)))
        .collect();
    let (best, best_talk) = talk
        .iter()
        .max_by(|a, b| a.1.total_cmp(&b.1))
        .map(|(n, t)| ((*n).clone(), *t))?;
    if best_talk < cfg.speaker_min_talk_s {
        return None;
    }
    if let Some(current) = &r.speaker {
        if let Some((_, t)) = talk.iter().find(|(n, _)| *n == current) {
            if *t >= cfg.speaker_min_talk_s && best_talk < 1.5 * t {
                return Some(current.clone());
            }
        }
    }
    Some(best)
}

fn aggregate(
    room: &str,
    r: &mut Room,
    presenter: Option<(String, PresenterSource)>,
    now_ms: f64,
    cfg: &MoodConfig,
) -> RoomMood {
    let audience: Vec<ParticipantState> = r
        .participants
        .iter()
        .filter(|(n, _)| presenter.as_ref().is_none_or(|(p, _)| p != *n))
        .map(|(n, p)| p.state(room, n, now_ms, cfg))
        .collect();
    let contributors: Vec<&ParticipantState> = audience
        .iter()
        .filter(|s| s.confidence >= cfg.min_confidence)
        .collect();
    let published = contributors.len() >= cfg.min_group.max(1);
    let mut mood = RoomMood {
        v: tap_protocol::VERSION,
        kind: ROOM_MOOD_TYPE.into(),
        room: room.to_owned(),
        at_ms: now_ms,
        presenter: presenter.as_ref().map(|(p, _)| p.clone()),
        presenter_source: presenter.as_ref().map(|(_, s)| s.as_str().to_owned()),
        contributors: contributors.len(),
        participants: audience.len(),
        published,
        emotions: BTreeMap::new(),
        valence: None,
        arousal: None,
        attentive_share: None,
        valence_trend: None,
        arousal_trend: None,
        conflicted: None,
        // From expression outputs only, gated by min_group on its own contributors.
        expressions: Some(expressions::summarize(&audience, cfg.min_group)),
    };
    let horizon = now_ms - cfg.trend_window_s * 1000.0;
    while r.history.front().is_some_and(|(t, _, _)| *t < horizon) {
        r.history.pop_front();
    }
    if !published {
        return mood;
    }
    for s in &contributors {
        if let Some(e) = &s.emotion {
            *mood.emotions.entry(e.clone()).or_default() += 1;
        }
    }
    let mean = |f: &dyn Fn(&ParticipantState) -> Option<f64>| {
        let v: Vec<f64> = contributors.iter().filter_map(|s| f(s)).collect();
        (!v.is_empty()).then(|| round3(v.iter().sum::<f64>() / v.len() as f64))
    };
    mood.conflicted = Some(contributors.iter().filter(|s| s.conflict.is_some()).count());
    mood.valence = mean(&|s| s.valence);
    mood.arousal = mean(&|s| s.arousal);
    let attention: Vec<bool> = contributors.iter().filter_map(|s| s.attentive).collect();
    mood.attentive_share = (!attention.is_empty())
        .then(|| round3(attention.iter().filter(|a| **a).count() as f64 / attention.len() as f64));
    r.history.push_back((now_ms, mood.valence, mood.arousal));
    mood.valence_trend = trend(r.history.iter().map(|(t, v, _)| (*t, *v)), cfg);
    mood.arousal_trend = trend(r.history.iter().map(|(t, _, a)| (*t, *a)), cfg);
    mood
}

/// Least-squares slope over the window, per minute; needs a third of the window covered.
fn trend(points: impl Iterator<Item = (f64, Option<f64>)>, cfg: &MoodConfig) -> Option<Trend> {
    let pts: Vec<(f64, f64)> = points
        .filter_map(|(t, v)| v.map(|v| (t / 60_000.0, v)))
        .collect();
    if pts.len() < 5 {
        return None;
    }
    let span_min = pts.last()?.0 - pts.first()?.0;
    if span_min * 60.0 < cfg.trend_window_s / 3.0 {
        return None;
    }
    let n = pts.len() as f64;
    let (mt, mv) = (
        pts.iter().map(|p| p.0).sum::<f64>() / n,
        pts.iter().map(|p| p.1).sum::<f64>() / n,
    );
    let cov: f64 = pts.iter().map(|(t, v)| (t - mt) * (v - mv)).sum();
    let var: f64 = pts.iter().map(|(t, _)| (t - mt).powi(2)).sum();
    if var <= 0.0 {
        return None;
    }
    let slope = cov / var;
    Some(if slope > cfg.trend_threshold_per_min {
        Trend::Rising
    } else if slope < -cfg.trend_threshold_per_min {
        Trend::Falling
    } else {
        Trend::Steady
    })
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}
