//! The processing policy (issue 24): what the daemon lets out of itself, chosen by the operator and
//! enforced here, before a result reaches NATS, JetStream, a DataChannel or the dashboard.
//!
//! - `emotions`: every result as the model gave it (the default, today's behaviour);
//! - `expressions`: only outputs a model declares `expression` in its registry entry
//!   ([`tap_protocol::OutputDeclaration`]); emotion and undeclared outputs are removed, and a model
//!   without declarations gives nothing at all (counted). Fused states and room moods lose every
//!   emotion, valence and arousal field;
//! - `aggregate`: no per-participant result or state leaves the daemon; the fusion still sees the
//!   results in process and room moods (from `min_group` contributors on) are published.
//!
//! A pure core: a policy, a model's declarations and a worker's reply in, what may leave out.
//! Choosing the policy is the operator's legal responsibility ([privacy](../../docs/privacy.md)).

use std::fmt;
use std::str::FromStr;

use tap_protocol::affect::{ParticipantState, RoomMood};
use tap_protocol::{OutputDeclaration, WorkerReply};

/// What the daemon lets out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Hash)]
pub enum Policy {
    /// Every result (emotion inference included).
    #[default]
    Emotions,
    /// Observable expressions and activity only; no emotion category, valence or arousal.
    Expressions,
    /// Room-level summaries only; nothing per participant.
    Aggregate,
}

/// An unknown policy name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown policy {0:?}: expected emotions, expressions or aggregate")]
pub struct UnknownPolicy(pub String);

impl Policy {
    /// Every policy, in order.
    pub const ALL: [Policy; 3] = [Policy::Emotions, Policy::Expressions, Policy::Aggregate];

    /// Its name (`emotions`, `expressions`, `aggregate`).
    pub fn as_str(self) -> &'static str {
        match self {
            Policy::Emotions => "emotions",
            Policy::Expressions => "expressions",
            Policy::Aggregate => "aggregate",
        }
    }

    /// Whether per-participant results and states may leave the daemon at all.
    pub fn per_participant(self) -> bool {
        self != Policy::Aggregate
    }
}

impl fmt::Display for Policy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Policy {
    type Err = UnknownPolicy;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Policy::ALL
            .into_iter()
            .find(|p| p.as_str() == s.trim())
            .ok_or_else(|| UnknownPolicy(s.chars().take(64).collect()))
    }
}

/// What becomes of one result under a policy.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// It leaves the daemon as it is (`emotions`), or with its emotion and undeclared outputs
    /// removed (`expressions`).
    Leaves(WorkerReply),
    /// It stays in the daemon (the fusion may still see it, under `aggregate`); the reason is the
    /// `reason` label of `kurento_tap_policy_withheld_total`.
    Withheld(&'static str),
}

/// Applies `policy` to a worker's reply for a model with `declared` outputs. Under `expressions`:
/// labels and top-level `extras` keys not declared `expression` go; `top` goes unless it is one;
/// extras that are not a JSON object go whole (nothing in them is declared); a reply left with
/// nothing is withheld, as is every reply of a model without declarations.
pub fn apply(policy: Policy, declared: Option<&OutputDeclaration>, reply: WorkerReply) -> Outcome {
    match policy {
        Policy::Emotions => Outcome::Leaves(reply),
        Policy::Aggregate => Outcome::Withheld("aggregate"),
        Policy::Expressions => {
            let Some(d) = declared else {
                return Outcome::Withheld("undeclared_model");
            };
            let mut r = reply;
            r.labels.retain(|name, _| d.is_expression(name));
            if r.top.as_deref().is_some_and(|t| !d.is_expression(t)) {
                r.top = None;
            }
            r.extras = match r.extras {
                serde_json::Value::Object(mut m) => {
                    m.retain(|k, _| d.is_expression(k));
                    if m.is_empty() {
                        serde_json::Value::Null
                    } else {
                        serde_json::Value::Object(m)
                    }
                }
                _ => serde_json::Value::Null,
            };
            if r.labels.is_empty() && r.extras.is_null() {
                Outcome::Withheld("no_expression_outputs")
            } else {
                Outcome::Leaves(r)
            }
        }
    }
}

/// A fused state as it may leave under `policy`: `None` under `aggregate`; under `expressions`
/// without valence, arousal or emotion (face visible, speaking, attentive stay).
pub fn state(policy: Policy, mut s: ParticipantState) -> Option<ParticipantState> {
    match policy {
        Policy::Emotions => Some(s),
        Policy::Aggregate => None,
        Policy::Expressions => {
            s.valence = None;
            s.arousal = None;
            s.emotion = None;
            s.face_emotion = None;
            s.voice_emotion = None;
            s.conflict = None;
            Some(s)
        }
    }
}

/// A room mood as it may leave under `policy`. Under `expressions` the presenter gets the
/// expression summary instead of an emotion mood: no emotion counts, valence, arousal or trends,
/// and `contributors`, `published` and `attentive_share` are the expression summary's (who a face
/// or voice model observes; published from `min_group` of them on), so a reader of the usual
/// fields sees the expression basis. Room moods are aggregates (published only from `min_group`
/// contributors on) under every policy.
pub fn room(policy: Policy, mut m: RoomMood) -> RoomMood {
    if policy == Policy::Expressions {
        m.emotions.clear();
        m.conflicted = None;
        m.valence = None;
        m.arousal = None;
        m.valence_trend = None;
        m.arousal_trend = None;
        match &m.expressions {
            Some(e) => {
                m.contributors = e.contributors;
                m.published = e.published;
                m.attentive_share = e.attentive_share;
            }
            None => {
                m.contributors = 0;
                m.published = false;
                m.attentive_share = None;
            }
        }
    }
    m
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn reply() -> WorkerReply {
        WorkerReply {
            labels: BTreeMap::from([
                ("happy".into(), 0.7),
                ("sad".into(), 0.1),
                ("smile".into(), 0.8),
                ("mystery".into(), 0.5),
            ]),
            top: Some("happy".into()),
            extras: serde_json::json!({"faces": [[1, 2, 3, 4]], "valence": 0.4, "pitch_hz": 120}),
            queue_ms: 1.0,
            inference_ms: 2.0,
        }
    }

    fn declared() -> OutputDeclaration {
        OutputDeclaration {
            emotion: vec!["happy".into(), "sad".into(), "valence".into()],
            expression: vec!["smile".into(), "faces".into(), "pitch_hz".into()],
        }
    }

    #[test]
    fn names_parse_and_unknown_ones_are_errors() {
        for p in Policy::ALL {
            assert_eq!(p.as_str().parse::<Policy>().unwrap(), p);
        }
        assert_eq!(" expressions\n".parse::<Policy>(), Ok(Policy::Expressions));
        let e = "Emotion".parse::<Policy>().unwrap_err();
        assert!(e.to_string().contains("emotions, expressions or aggregate"));
        assert!("x".repeat(10_000).parse::<Policy>().unwrap_err().0.len() <= 64);
        assert_eq!(Policy::default(), Policy::Emotions);
    }

    #[test]
    fn emotions_lets_everything_out() {
        assert_eq!(
            apply(Policy::Emotions, None, reply()),
            Outcome::Leaves(reply())
        );
    }

    #[test]
    fn expressions_keeps_only_declared_expression_outputs() {
        let Outcome::Leaves(r) = apply(Policy::Expressions, Some(&declared()), reply()) else {
            panic!("withheld")
        };
        assert_eq!(r.labels, BTreeMap::from([("smile".into(), 0.8)]));
        assert_eq!(r.top, None, "the top label was an emotion");
        assert_eq!(
            r.extras,
            serde_json::json!({"faces": [[1, 2, 3, 4]], "pitch_hz": 120})
        );
        let text = serde_json::to_string(&r).unwrap();
        for gone in ["happy", "sad", "valence", "mystery"] {
            assert!(!text.contains(gone), "{gone} in {text}");
        }
    }

    #[test]
    fn expressions_withholds_undeclared_models_and_empty_results() {
        assert_eq!(
            apply(Policy::Expressions, None, reply()),
            Outcome::Withheld("undeclared_model")
        );
        let only_emotions = OutputDeclaration {
            emotion: vec!["happy".into()],
            expression: vec![],
        };
        assert_eq!(
            apply(Policy::Expressions, Some(&only_emotions), reply()),
            Outcome::Withheld("no_expression_outputs")
        );
        // Extras that are not an object cannot carry a declared key: they go whole.
        let mut r = reply();
        r.extras = serde_json::json!([0.4, "happy"]);
        r.labels.clear();
        assert_eq!(
            apply(Policy::Expressions, Some(&declared()), r),
            Outcome::Withheld("no_expression_outputs")
        );
    }

    #[test]
    fn aggregate_lets_no_result_out() {
        assert_eq!(
            apply(Policy::Aggregate, Some(&declared()), reply()),
            Outcome::Withheld("aggregate")
        );
        assert!(!Policy::Aggregate.per_participant());
    }

    #[test]
    fn states_and_moods_lose_their_affect_under_expressions() {
        let s: ParticipantState = serde_json::from_value(serde_json::json!({
            "v": 1, "type": "kurento-tap.state", "room": "r", "participant": "p", "at_ms": 1.0,
            "valence": 0.5, "arousal": 0.4, "emotion": "happy", "confidence": 0.9,
            "face_visible": true, "speaking": false, "attentive": true, "modalities": ["face"],
            "face_emotion": "happy", "voice_emotion": "angry",
            "conflict": {"face": "happy", "face_valence": 0.8, "voice": "angry", "voice_valence": -0.6}
        }))
        .unwrap();
        assert!(s.conflict.is_some());
        assert_eq!(state(Policy::Emotions, s.clone()), Some(s.clone()));
        assert_eq!(state(Policy::Aggregate, s.clone()), None);
        let e = state(Policy::Expressions, s).unwrap();
        assert_eq!(
            (e.valence, e.arousal, e.emotion.as_deref()),
            (None, None, None)
        );
        assert_eq!(e.face_visible, Some(true));
        let text = serde_json::to_string(&e).unwrap();
        assert!(
            !text.contains("happy") && !text.contains("angry") && !text.contains("valence\":0"),
            "{text}"
        );
    }

    #[test]
    fn under_expressions_the_presenter_gets_the_expression_summary() {
        let m: RoomMood = serde_json::from_value(serde_json::json!({
            "v": 1, "type": "kurento-tap.room", "room": "r", "at_ms": 1.0,
            "presenter": "pat", "presenter_source": "tag", "contributors": 0, "participants": 4,
            "published": false, "emotions": {"happy": 3}, "valence": 0.5, "arousal": 0.4,
            "attentive_share": null, "valence_trend": "rising", "arousal_trend": null,
            "expressions": {"contributors": 4, "published": true, "faces_observed": 4,
                "faces_visible": 3, "voices_observed": 4, "speaking": 2, "attentive_share": 0.75,
                "text": "3 of 4 faces visible, 2 of 4 speaking, attention 75 %"}
        }))
        .unwrap();
        assert_eq!(room(Policy::Emotions, m.clone()), m);
        assert_eq!(room(Policy::Aggregate, m.clone()), m);
        let e = room(Policy::Expressions, m.clone());
        assert!(e.emotions.is_empty() && e.valence.is_none() && e.valence_trend.is_none());
        assert_eq!(
            (e.contributors, e.published, e.attentive_share),
            (4, true, Some(0.75))
        );
        assert_eq!(e.expressions, m.expressions);
        // Without a summary (an older fusion): nothing is published.
        let mut old = m;
        old.expressions = None;
        old.published = true;
        let e = room(Policy::Expressions, old);
        assert!(!e.published && e.contributors == 0);
    }
}
