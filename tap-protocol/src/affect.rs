//! Affect, additive to v1: what a model's labels mean (declared in its registration, so a new model
//! joins the fusion without code changes), and what the fusion publishes: one fused state per
//! participant (`tap.v1.state.<room>.<participant>`) and one mood per room
//! (`tap.v1.room.<room>`). Schemas: `docs/schemas/state.v1.json`, `docs/schemas/room.v1.json`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::safe_token;

/// JetStream stream keeping fused states and room moods (history: the room timeline).
pub const AFFECT_STREAM: &str = "TAP_AFFECT_V1";
/// Subjects of every fused state.
pub const STATE_SUBJECTS: &str = "tap.v1.state.>";
/// Subjects of every room mood.
pub const ROOM_SUBJECTS: &str = "tap.v1.room.>";
/// Value of [`RoomMood::kind`] and of the DataChannel message carrying it.
pub const ROOM_MOOD_TYPE: &str = "kurento-tap.room";
/// Value of [`ParticipantState::kind`] and of the DataChannel message carrying it.
pub const STATE_TYPE: &str = "kurento-tap.state";

/// Request/reply subject naming (or un-naming) a room's presenter: [`PresenterRequest`].
pub const CTL_PRESENTER: &str = "tap.v1.ctl.presenter";

/// Names the presenter of a room (JSON body of a [`CTL_PRESENTER`] request); answered with
/// `{"ok": true}` or `{"ok": false, "error": "…"}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PresenterRequest {
    /// Room (name or safe token).
    pub room: String,
    /// The presenter; absent or null un-names the one this source named.
    #[serde(default)]
    pub participant: Option<String>,
    /// `control` (default): an operator or the application; `tag`: a daemon passing on the
    /// `kurento-tap.role=presenter` tag to a fusion running elsewhere (`kurento-tap mood`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
}

/// Longest room or participant name a control request may carry (bytes).
pub const MAX_CONTROL_NAME: usize = 256;

/// The check every control request naming a participant makes: a room and a participant, both
/// non-empty and at most [`MAX_CONTROL_NAME`] bytes (the error is the reply's text).
pub fn check_control_names(room: &str, participant: &str) -> Result<(), String> {
    if room.is_empty() || participant.is_empty() {
        return Err("bad request: empty room or participant".into());
    }
    if room.len() > MAX_CONTROL_NAME || participant.len() > MAX_CONTROL_NAME {
        return Err(format!(
            "bad request: a name is longer than {MAX_CONTROL_NAME} bytes"
        ));
    }
    Ok(())
}

/// Who names a presenter in a [`PresenterRequest`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PresenterRequestSource {
    /// An operator or the application.
    Control,
    /// A daemon passing on the `kurento-tap.role=presenter` tag.
    Tag,
}

impl PresenterRequest {
    /// Reads and checks a request body: JSON, a non-empty room, names of at most
    /// [`MAX_CONTROL_NAME`] bytes, a known source.
    pub fn parse(payload: &[u8]) -> Result<(PresenterRequest, PresenterRequestSource), String> {
        let req: PresenterRequest =
            serde_json::from_slice(payload).map_err(|e| format!("bad request: {e}"))?;
        if req.room.is_empty() {
            return Err("bad request: empty room".into());
        }
        if req.room.len() > MAX_CONTROL_NAME
            || req
                .participant
                .as_ref()
                .is_some_and(|p| p.len() > MAX_CONTROL_NAME)
        {
            return Err(format!(
                "bad request: a name is longer than {MAX_CONTROL_NAME} bytes"
            ));
        }
        let source = match req.source.as_deref() {
            None | Some("control") => PresenterRequestSource::Control,
            Some("tag") => PresenterRequestSource::Tag,
            Some(other) => return Err(format!("bad request: unknown source {other:?}")),
        };
        Ok((req, source))
    }
}

/// The subject of a participant's fused state.
pub fn state_subject(room: &str, participant: &str) -> String {
    format!(
        "tap.v1.state.{}.{}",
        safe_token(room),
        safe_token(participant)
    )
}

/// The subject of a room's mood.
pub fn room_subject(room: &str) -> String {
    format!("tap.v1.room.{}", safe_token(room))
}

/// Which channel of expression a model observes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Modality {
    /// Facial expression (video).
    Face,
    /// Voice (audio).
    Voice,
}

/// Where a label sits on the valence/arousal plane (Russell's circumplex); either may be unknown
/// (an arousal class says nothing of valence).
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct AffectPoint {
    /// −1 (unpleasant) … 1 (pleasant).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub valence: Option<f64>,
    /// 0 (calm) … 1 (excited).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub arousal: Option<f64>,
}

/// What a model's output means, declared in its [`crate::ModelSpec`] (`affect`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AffectDeclaration {
    /// What the model observes.
    pub modality: Modality,
    /// Label → where it sits on the valence/arousal plane (labels not listed are ignored).
    #[serde(default)]
    pub labels: BTreeMap<String, AffectPoint>,
    /// Labels that are emotion categories, candidates for the dominant emotion.
    #[serde(default)]
    pub emotions: Vec<String>,
    /// The label whose score is the probability that the participant speaks (voice activity).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub speech_label: Option<String>,
}

/// Why a declaration cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("affect declaration: {0}")]
pub struct AffectError(pub String);

impl AffectDeclaration {
    /// Checks ranges and that emotion labels are declared.
    pub fn validate(&self) -> Result<(), AffectError> {
        for (label, p) in &self.labels {
            if p.valence.is_some_and(|v| !(-1.0..=1.0).contains(&v)) {
                return Err(AffectError(format!("{label}: valence outside -1..1")));
            }
            if p.arousal.is_some_and(|a| !(0.0..=1.0).contains(&a)) {
                return Err(AffectError(format!("{label}: arousal outside 0..1")));
            }
        }
        if let Some(e) = self.emotions.iter().find(|e| !self.labels.contains_key(*e)) {
            return Err(AffectError(format!("emotion {e} has no affect point")));
        }
        if self.labels.len() > 64 {
            return Err(AffectError("more than 64 labels".into()));
        }
        Ok(())
    }
}

/// The face models' FER2013 labels on the circumplex (after Russell 1980 and the placements used
/// by AffectNet's valence/arousal annotations; rounded: the fusion needs the quadrant and rough
/// intensity, not decimals).
pub fn fer2013_declaration() -> AffectDeclaration {
    let p = |v: f64, a: f64| AffectPoint {
        valence: Some(v),
        arousal: Some(a),
    };
    let labels: BTreeMap<String, AffectPoint> = [
        ("angry", p(-0.6, 0.8)),
        ("disgust", p(-0.7, 0.5)),
        ("fear", p(-0.6, 0.8)),
        ("happy", p(0.8, 0.55)),
        ("sad", p(-0.7, 0.25)),
        ("surprise", p(0.3, 0.85)),
        ("neutral", p(0.0, 0.3)),
    ]
    .into_iter()
    .map(|(l, p)| (l.to_owned(), p))
    .collect();
    AffectDeclaration {
        modality: Modality::Face,
        emotions: labels.keys().cloned().collect(),
        labels,
        speech_label: None,
    }
}

/// The voice worker's labels: arousal classes (no valence from prosody) and speech activity.
pub fn voice_arousal_declaration() -> AffectDeclaration {
    let a = |a: f64| AffectPoint {
        valence: None,
        arousal: Some(a),
    };
    AffectDeclaration {
        modality: Modality::Voice,
        labels: [
            ("calm", a(0.15)),
            ("neutral", a(0.45)),
            ("aroused", a(0.85)),
        ]
        .into_iter()
        .map(|(l, p)| (l.to_owned(), p))
        .collect(),
        emotions: Vec::new(),
        speech_label: Some("speech".into()),
    }
}

/// The voice worker's labels with a categorical speech-emotion model: arousal classes (the middle
/// one named `moderate`, since `neutral` is an emotion category), speech activity, and each emotion
/// category placed on the valence/arousal plane where the face models place it, so that a face and
/// a voice can be compared (and found to disagree).
pub fn voice_emotion_declaration(emotions: &[String]) -> AffectDeclaration {
    let mut d = voice_arousal_declaration();
    if let Some(middle) = d.labels.remove("neutral") {
        d.labels.insert("moderate".into(), middle);
    }
    let face = fer2013_declaration();
    for e in emotions {
        let point = face.labels.get(e).cloned().unwrap_or(AffectPoint {
            valence: None,
            arousal: None,
        });
        d.labels.insert(e.clone(), point);
        d.emotions.push(e.clone());
    }
    d
}

/// One participant's fused affect (published on [`state_subject`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ParticipantState {
    /// Protocol version (1).
    pub v: u32,
    /// Always [`STATE_TYPE`].
    #[serde(rename = "type")]
    pub kind: String,
    /// Room.
    pub room: String,
    /// Participant.
    pub participant: String,
    /// When this state holds, Unix ms.
    pub at_ms: f64,
    /// −1…1, absent while unknown.
    pub valence: Option<f64>,
    /// 0…1, absent while unknown.
    pub arousal: Option<f64>,
    /// The dominant emotion (with hysteresis), absent while unknown.
    pub emotion: Option<String>,
    /// 0…1: how much the state rests on fresh, confident inputs (falls as inputs stop).
    pub confidence: f64,
    /// A face is seen now (absent: no face model result lately).
    pub face_visible: Option<bool>,
    /// Speaking now (absent: no voice model result lately).
    pub speaking: Option<bool>,
    /// The face is turned to the screen (absent: unknown, e.g. no keypoints).
    pub attentive: Option<bool>,
    /// Modalities the state rests on now.
    pub modalities: Vec<Modality>,
    /// What the face alone reads (dominant emotion), absent while unknown. Additive to v1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub face_emotion: Option<String>,
    /// What the voice alone reads (dominant emotion category), absent while unknown. Additive to
    /// v1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub voice_emotion: Option<String>,
    /// Face and voice read emotions far apart on the valence axis (a smile over an angry voice,
    /// say): both readings, instead of a blend that would sit near neutral. `valence`, `arousal`
    /// and `emotion` then follow the more confident modality. Absent when they agree or one is
    /// missing. Additive to v1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub conflict: Option<ModalityConflict>,
}

/// Face and voice disagree (see [`ParticipantState::conflict`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModalityConflict {
    /// The face's dominant emotion.
    pub face: String,
    /// The face's valence, −1…1.
    pub face_valence: f64,
    /// The voice's dominant emotion.
    pub voice: String,
    /// The voice's valence, −1…1.
    pub voice_valence: f64,
}

/// A short trend over the last minute.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Trend {
    /// Up by more than the threshold per minute.
    Rising,
    /// Down by more than the threshold per minute.
    Falling,
    /// Neither.
    Steady,
}

/// The aggregate of a room (published on [`room_subject`], at most once a second).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RoomMood {
    /// Protocol version (1).
    pub v: u32,
    /// Always [`ROOM_MOOD_TYPE`].
    #[serde(rename = "type")]
    pub kind: String,
    /// Room.
    pub room: String,
    /// When, Unix ms.
    pub at_ms: f64,
    /// The presenter (excluded from the aggregate), and how it was chosen.
    pub presenter: Option<String>,
    /// `tag`, `control`, `speaker` (dominant speaker of the last seconds), absent with no presenter.
    pub presenter_source: Option<String>,
    /// Participants (presenter excluded) whose state is known now.
    pub contributors: usize,
    /// Participants in the room, presenter excluded.
    pub participants: usize,
    /// False when fewer than `min_group` contribute: then no aggregate is given.
    pub published: bool,
    /// Dominant emotion → participants (only when published).
    pub emotions: BTreeMap<String, usize>,
    /// Mean valence of contributors (only when published).
    pub valence: Option<f64>,
    /// Mean arousal of contributors (only when published).
    pub arousal: Option<f64>,
    /// Share of contributors whose attention is known that are attentive (only when published).
    pub attentive_share: Option<f64>,
    /// Valence over the last minute (only when published).
    pub valence_trend: Option<Trend>,
    /// Arousal over the last minute (only when published).
    pub arousal_trend: Option<Trend>,
    /// Contributors whose face and voice disagree now (see [`ParticipantState::conflict`]; only
    /// when published). Additive to v1: absent (null) from older daemons.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub conflicted: Option<usize>,
    /// The room summarised from observable expressions and activity only (no emotion, valence or
    /// arousal): what the presenter gets under the `expressions` policy. Additive to v1: absent
    /// (null) from older daemons.
    #[serde(default)]
    pub expressions: Option<ExpressionSummary>,
}

/// A room summarised from expression outputs only: faces visible, speaking, attention (presenter
/// excluded). Smiles are not in it: no shipped model measures one (a FER net's `happy` probability
/// infers an emotion; it is not a smile intensity).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExpressionSummary {
    /// Participants (presenter excluded) a face or voice model observes now.
    pub contributors: usize,
    /// False when fewer than `min_group` contribute: then only `contributors` is given.
    pub published: bool,
    /// Contributors a face model observes now (only when published; absent: no face model).
    pub faces_observed: Option<usize>,
    /// Of those, how many show a face.
    pub faces_visible: Option<usize>,
    /// Contributors a voice model observes now (only when published; absent: no voice model).
    pub voices_observed: Option<usize>,
    /// Of those, how many speak.
    pub speaking: Option<usize>,
    /// Share of the contributors whose attention is known (a face turned to the screen or not) that
    /// are attentive (only when published).
    pub attentive_share: Option<f64>,
    /// The same in words, e.g. `3 of 4 faces visible, 2 of 4 speaking, attention 67 %`.
    pub text: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every field of the type is in the schema and the other way round (the schema is the
    /// contract other languages read).
    fn check(schema: &str, v: serde_json::Value) {
        let schema: serde_json::Value = serde_json::from_str(schema).unwrap();
        let props = schema["properties"].as_object().unwrap();
        let obj = v.as_object().unwrap();
        for k in obj.keys() {
            assert!(props.contains_key(k), "{k} is not in the schema");
        }
        for k in props.keys() {
            assert!(obj.contains_key(k), "{k} is in the schema, not in the type");
        }
        for r in schema["required"].as_array().unwrap() {
            assert!(obj.contains_key(r.as_str().unwrap()), "{r} required");
        }
    }

    #[test]
    fn states_and_room_moods_match_their_schemas() {
        let s = ParticipantState {
            v: 1,
            kind: STATE_TYPE.into(),
            room: "r".into(),
            participant: "p".into(),
            at_ms: 1.0,
            valence: Some(0.5),
            arousal: None,
            emotion: Some("happy".into()),
            confidence: 0.4,
            face_visible: Some(true),
            speaking: None,
            attentive: Some(true),
            modalities: vec![Modality::Face, Modality::Voice],
            face_emotion: Some("happy".into()),
            voice_emotion: Some("angry".into()),
            conflict: Some(ModalityConflict {
                face: "happy".into(),
                face_valence: 0.8,
                voice: "angry".into(),
                voice_valence: -0.6,
            }),
        };
        check(
            include_str!("../../docs/schemas/state.v1.json"),
            serde_json::to_value(&s).unwrap(),
        );
        let m = RoomMood {
            v: 1,
            kind: ROOM_MOOD_TYPE.into(),
            room: "r".into(),
            at_ms: 1.0,
            presenter: Some("p".into()),
            presenter_source: Some("tag".into()),
            contributors: 3,
            participants: 4,
            published: true,
            emotions: [("happy".to_owned(), 3)].into(),
            valence: Some(0.2),
            arousal: Some(0.4),
            attentive_share: Some(1.0),
            valence_trend: Some(Trend::Rising),
            arousal_trend: None,
            conflicted: Some(1),
            expressions: Some(ExpressionSummary {
                contributors: 3,
                published: true,
                faces_observed: Some(3),
                faces_visible: Some(3),
                voices_observed: Some(2),
                speaking: Some(1),
                attentive_share: Some(0.667),
                text: "3 of 3 faces visible, 1 of 2 speaking, attention 67 %".into(),
            }),
        };
        let v = serde_json::to_value(&m).unwrap();
        assert_eq!(v["valence_trend"], "rising");
        check(include_str!("../../docs/schemas/room.v1.json"), v.clone());
        let e = &v["expressions"];
        let schema: serde_json::Value =
            serde_json::from_str(include_str!("../../docs/schemas/room.v1.json")).unwrap();
        let props = schema["properties"]["expressions"]["properties"]
            .as_object()
            .unwrap();
        assert_eq!(
            props.keys().collect::<Vec<_>>(),
            e.as_object().unwrap().keys().collect::<Vec<_>>(),
            "the expression summary's fields are the schema's"
        );
        // A room mood of an older daemon (no summary) still reads.
        let mut old = v.clone();
        old.as_object_mut().unwrap().remove("expressions");
        assert_eq!(
            serde_json::from_value::<RoomMood>(old).unwrap().expressions,
            None
        );
    }

    #[test]
    fn a_spec_without_affect_reads_as_before_and_one_with_it_round_trips() {
        let old = r#"{"protocol":1,"name":"x","version":"1","media":"audio","audio":{"window_ms":500,"hop_ms":500,"sample_rate":16000,"channels":1,"format":"S16LE"}}"#;
        let spec: crate::ModelSpec = serde_json::from_str(old).unwrap();
        assert!(spec.affect.is_none());
        assert!(!serde_json::to_string(&spec).unwrap().contains("affect"));
        let mut with = spec.clone();
        with.affect = Some(voice_arousal_declaration());
        let back: crate::ModelSpec =
            serde_json::from_str(&serde_json::to_string(&with).unwrap()).unwrap();
        assert_eq!(back.affect, with.affect);
        with.validate().unwrap();
        with.affect.as_mut().unwrap().emotions = vec!["joy".into()];
        assert!(
            with.validate().is_err(),
            "an emotion without an affect point"
        );
    }
}
