//! The room from observable expressions only ("3 of 4 faces visible, 2 of 4 speaking, attention
//! 75 %"): what the presenter gets under the `expressions` processing policy, where no emotion,
//! valence or arousal may leave the daemon.
//!
//! Built from the expression parts of the fused states (face visible, speaking, attentive) and
//! nothing else, so it reads the same whether the states still carry affect or not. Published only
//! from `min_group` contributors on, like the room mood: below that it gives how many contribute
//! and nothing else.
//!
//! Smiles are not counted: no shipped model measures a smile (BlazeFace's six keypoints have one
//! mouth point, no corners; a FER net's `happy` probability infers an emotion and is declared
//! one), and a count of "smiling" people read out of emotion scores would be emotion inference
//! under another name.

use tap_protocol::affect::{ExpressionSummary, ParticipantState};

/// Summarises `audience` (the room's participants, presenter excluded) from their expression
/// outputs. A participant contributes when a face or a voice model observes them now (their state
/// has `face_visible` or `speaking`); the summary is published from `min_group` contributors on
/// (at least 1).
pub fn summarize(audience: &[ParticipantState], min_group: usize) -> ExpressionSummary {
    let contributors: Vec<&ParticipantState> = audience
        .iter()
        .filter(|s| s.face_visible.is_some() || s.speaking.is_some())
        .collect();
    let published = contributors.len() >= min_group.max(1);
    if !published {
        return ExpressionSummary {
            contributors: contributors.len(),
            published,
            faces_observed: None,
            faces_visible: None,
            voices_observed: None,
            speaking: None,
            attentive_share: None,
            text: format!(
                "{} contributing: fewer than {}, no summary",
                contributors.len(),
                min_group.max(1)
            ),
        };
    }
    let count = |f: &dyn Fn(&ParticipantState) -> Option<bool>| -> Option<(usize, usize)> {
        let known: Vec<bool> = contributors.iter().filter_map(|s| f(s)).collect();
        (!known.is_empty()).then(|| (known.iter().filter(|b| **b).count(), known.len()))
    };
    let faces = count(&|s| s.face_visible);
    let voices = count(&|s| s.speaking);
    let attention = count(&|s| s.attentive);
    let attentive_share = attention.map(|(yes, of)| round3(yes as f64 / of as f64));
    let mut parts = Vec::new();
    if let Some((visible, of)) = faces {
        parts.push(format!("{visible} of {of} faces visible"));
    }
    if let Some((speaking, of)) = voices {
        parts.push(format!("{speaking} of {of} speaking"));
    }
    if let Some(share) = attentive_share {
        parts.push(format!("attention {:.0} %", share * 100.0));
    }
    ExpressionSummary {
        contributors: contributors.len(),
        published,
        faces_observed: faces.map(|f| f.1),
        faces_visible: faces.map(|f| f.0),
        voices_observed: voices.map(|v| v.1),
        speaking: voices.map(|v| v.0),
        attentive_share,
        text: parts.join(", "),
    }
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;
    use tap_protocol::affect::{Modality, STATE_TYPE};

    fn state(
        name: &str,
        face: Option<bool>,
        speaking: Option<bool>,
        attentive: Option<bool>,
    ) -> ParticipantState {
        ParticipantState {
            v: 1,
            kind: STATE_TYPE.into(),
            room: "r".into(),
            participant: name.into(),
            at_ms: 1.0,
            valence: Some(0.8),
            arousal: Some(0.9),
            emotion: Some("happy".into()),
            confidence: 0.9,
            face_visible: face,
            speaking,
            attentive,
            modalities: vec![Modality::Face],
            face_emotion: None,
            voice_emotion: None,
            conflict: None,
        }
    }

    #[test]
    fn counts_faces_speakers_and_attention_of_those_observed() {
        let audience = [
            state("a", Some(true), Some(true), Some(true)),
            state("b", Some(true), Some(false), Some(true)),
            state("c", Some(true), Some(true), Some(false)),
            state("d", Some(false), Some(false), None),
            // No fresh face or voice result: not a contributor, whatever its affect says.
            state("e", None, None, None),
        ];
        let s = summarize(&audience, 3);
        assert_eq!(s.contributors, 4);
        assert!(s.published);
        assert_eq!((s.faces_visible, s.faces_observed), (Some(3), Some(4)));
        assert_eq!((s.speaking, s.voices_observed), (Some(2), Some(4)));
        assert_eq!(s.attentive_share, Some(0.667));
        assert_eq!(
            s.text,
            "3 of 4 faces visible, 2 of 4 speaking, attention 67 %"
        );
    }

    #[test]
    fn nothing_but_the_count_below_min_group() {
        let audience = [
            state("a", Some(true), Some(true), Some(true)),
            state("b", Some(true), None, Some(false)),
        ];
        let s = summarize(&audience, 3);
        assert_eq!((s.contributors, s.published), (2, false));
        assert_eq!(
            (
                s.faces_visible,
                s.faces_observed,
                s.speaking,
                s.voices_observed,
                s.attentive_share
            ),
            (None, None, None, None, None)
        );
        assert_eq!(s.text, "2 contributing: fewer than 3, no summary");
        // min_group 0 still needs someone.
        assert!(!summarize(&[], 0).published);
    }

    #[test]
    fn says_only_what_is_observed_and_never_affect() {
        // Voice only (no face model): no face count, no attention.
        let audience: Vec<ParticipantState> = ["a", "b", "c"]
            .iter()
            .map(|n| state(n, None, Some(*n == "a"), None))
            .collect();
        let s = summarize(&audience, 3);
        assert_eq!((s.faces_observed, s.attentive_share), (None, None));
        assert_eq!(s.text, "1 of 3 speaking");
        let text = serde_json::to_string(&s).unwrap();
        for word in ["happy", "valence", "arousal", "emotion", "smil"] {
            assert!(!text.contains(word), "{word} in {text}");
        }
        // The same states without their affect give the same summary (what `expressions` sees).
        let stripped: Vec<ParticipantState> = audience
            .iter()
            .cloned()
            .map(|mut s| {
                s.valence = None;
                s.arousal = None;
                s.emotion = None;
                s.confidence = 0.0;
                s
            })
            .collect();
        assert_eq!(summarize(&stripped, 3), s);
    }
}
