//! The fusion and the room mood on synthetic result streams with known truth: no NATS, no media,
//! time passed in.

use std::collections::BTreeMap;

use room_mood::*;
use tap_protocol::affect::{
    fer2013_declaration, voice_arousal_declaration, voice_emotion_declaration, AffectPoint,
};
use tap_protocol::{MediaKind, ResultMessage, WorkerReply};

const T0: f64 = 1_800_000_000_000.0;

fn engine(config: MoodConfig) -> MoodEngine {
    let mut e = MoodEngine::new(config);
    e.declare("fer", "1", fer2013_declaration());
    e.declare("voice", "1", voice_arousal_declaration());
    e
}

fn result(room: &str, who: &str, model: &str, at_ms: f64, labels: &[(&str, f64)]) -> ResultMessage {
    let media = if model == "voice" {
        MediaKind::Audio
    } else {
        MediaKind::Video
    };
    ResultMessage {
        v: 1,
        room: room.into(),
        participant: who.into(),
        endpoint: format!("ep-{who}"),
        kms: None,
        model: model.into(),
        version: "1".into(),
        media,
        seq: 0,
        capture_ms: at_ms,
        output: WorkerReply {
            labels: labels.iter().map(|(l, s)| (l.to_string(), *s)).collect(),
            top: None,
            extras: serde_json::json!({}),
            queue_ms: 0.0,
            inference_ms: 0.0,
        },
        latency_ms: 0.0,
        round_trip_ms: 0.0,
    }
}

fn face(room: &str, who: &str, at_ms: f64, labels: &[(&str, f64)]) -> ResultMessage {
    result(room, who, "fer", at_ms, labels)
}

fn voice(room: &str, who: &str, at_ms: f64, speech: f64, arousal: &[(&str, f64)]) -> ResultMessage {
    let mut l = vec![("speech", speech)];
    l.extend_from_slice(arousal);
    result(room, who, "voice", at_ms, &l)
}

const HAPPY: &[(&str, f64)] = &[("happy", 0.9), ("neutral", 0.1)];
const SAD: &[(&str, f64)] = &[("sad", 0.9), ("neutral", 0.1)];

/// Feeds `who` a face result every `step_ms` from `from` to `to`.
fn feed_face(
    e: &mut MoodEngine,
    who: &str,
    from: f64,
    to: f64,
    step_ms: f64,
    labels: &[(&str, f64)],
) {
    let mut t = from;
    while t < to {
        assert_eq!(e.observe(&face("r", who, t, labels)), Observed::Fused);
        t += step_ms;
    }
}

#[test]
fn a_constant_input_is_reached_within_three_time_constants() {
    let cfg = MoodConfig::default();
    let settle_ms = 3.0 * cfg.smoothing_s * 1000.0;
    let mut e = engine(cfg);
    feed_face(&mut e, "ana", T0, T0 + 10_000.0, 200.0, SAD);
    let sad = e.state("r", "ana", T0 + 10_000.0).unwrap().valence.unwrap();
    assert!((sad - (-0.63)).abs() < 0.01, "sad valence {sad}");
    feed_face(
        &mut e,
        "ana",
        T0 + 10_000.0,
        T0 + 10_000.0 + settle_ms,
        200.0,
        HAPPY,
    );
    let now = T0 + 10_000.0 + settle_ms;
    let s = e.state("r", "ana", now).unwrap();
    let target = 0.72;
    // Within 5 % of the distance travelled (1.35) after 3 time constants.
    assert!(
        (s.valence.unwrap() - target).abs() < 0.05 * (target - sad),
        "{s:?}"
    );
    assert_eq!(s.emotion.as_deref(), Some("happy"));
    assert_eq!(s.face_visible, Some(true));
}

#[test]
fn alternating_labels_do_not_flicker() {
    let mut e = engine(MoodConfig::default());
    let a: &[(&str, f64)] = &[("happy", 0.55), ("sad", 0.45)];
    let b: &[(&str, f64)] = &[("sad", 0.55), ("happy", 0.45)];
    let mut changes = 0;
    let mut last = None;
    for i in 0..200 {
        let t = T0 + i as f64 * 200.0;
        e.observe(&face("r", "ana", t, if i % 2 == 0 { a } else { b }));
        let now = e.state("r", "ana", t).unwrap().emotion;
        if last.is_some() && now != last {
            changes += 1;
        }
        last = now;
    }
    assert_eq!(changes, 0, "the dominant emotion flickered");
    // A real change still comes through.
    for i in 0..30 {
        e.observe(&face("r", "ana", T0 + 40_000.0 + i as f64 * 200.0, SAD));
    }
    assert_eq!(
        e.state("r", "ana", T0 + 46_000.0)
            .unwrap()
            .emotion
            .as_deref(),
        Some("sad")
    );
}

#[test]
fn a_stopped_modality_lowers_confidence_and_then_the_state_decays_to_unknown() {
    let cfg = MoodConfig::default();
    let stale_ms = cfg.stale_s * 1000.0;
    let mut e = engine(cfg);
    for i in 0..50 {
        let t = T0 + i as f64 * 200.0;
        e.observe(&face("r", "ana", t, HAPPY));
        if i % 2 == 0 {
            e.observe(&voice(
                "r",
                "ana",
                t,
                0.9,
                &[("aroused", 0.8), ("neutral", 0.2)],
            ));
        }
    }
    let both = e.state("r", "ana", T0 + 10_000.0).unwrap();
    assert_eq!(both.modalities, vec![Modality::Face, Modality::Voice]);
    assert_eq!(both.speaking, Some(true));
    // The camera goes off: voice goes on, face stops.
    for i in 0..100 {
        let t = T0 + 10_000.0 + i as f64 * 400.0;
        e.observe(&voice(
            "r",
            "ana",
            t,
            0.9,
            &[("aroused", 0.8), ("neutral", 0.2)],
        ));
    }
    let voice_only = e.state("r", "ana", T0 + 50_000.0).unwrap();
    assert!(
        voice_only.confidence < both.confidence,
        "{voice_only:?} vs {both:?}"
    );
    assert_eq!(voice_only.modalities, vec![Modality::Voice]);
    assert_eq!(voice_only.valence, None, "voice says nothing of valence");
    assert_eq!(voice_only.emotion, None);
    assert_eq!(voice_only.face_visible, None);
    assert!(voice_only.arousal.unwrap() > 0.6);
    // Everything stops: confidence fades, then the state is unknown.
    let last = T0 + 10_000.0 + 99.0 * 400.0;
    let fading: Vec<f64> = [1_000.0, 3_000.0, 6_000.0]
        .iter()
        .map(|d| e.state("r", "ana", last + d).unwrap().confidence)
        .collect();
    assert!(fading.windows(2).all(|w| w[1] < w[0]), "{fading:?}");
    let gone = e.state("r", "ana", last + stale_ms + 1.0).unwrap();
    assert_eq!(
        (
            gone.valence,
            gone.arousal,
            gone.emotion.clone(),
            gone.confidence
        ),
        (None, None, None, 0.0),
        "{gone:?}"
    );
}

#[test]
fn no_face_is_a_state_too() {
    let mut e = engine(MoodConfig::default());
    feed_face(&mut e, "ana", T0, T0 + 2_000.0, 200.0, HAPPY);
    let mut r = face("r", "ana", T0 + 2_000.0, &[]);
    r.output.extras = serde_json::json!({"no_face": true});
    e.observe(&r);
    let s = e.state("r", "ana", T0 + 2_000.0).unwrap();
    assert_eq!(s.face_visible, Some(false));
    assert_eq!(s.attentive, None);
    // The last expression still counts, fading.
    assert_eq!(s.emotion.as_deref(), Some("happy"));
}

#[test]
fn uneven_and_dropped_inputs_give_the_state_regular_ones_give() {
    let mut regular = engine(MoodConfig::default());
    let mut uneven = engine(MoodConfig::default());
    feed_face(&mut regular, "ana", T0, T0 + 8_000.0, 200.0, SAD);
    feed_face(&mut uneven, "ana", T0, T0 + 8_000.0, 200.0, SAD);
    feed_face(
        &mut regular,
        "ana",
        T0 + 8_000.0,
        T0 + 16_000.0,
        200.0,
        HAPPY,
    );
    // The same change seen through irregular gaps and a 1.5 s hole (dropped results).
    let mut t = T0 + 8_000.0;
    let mut k = 0u64;
    while t < T0 + 16_000.0 {
        if !(T0 + 10_000.0..T0 + 11_500.0).contains(&t) {
            uneven.observe(&face("r", "ana", t, HAPPY));
        }
        k += 1;
        t += [90.0, 450.0, 130.0, 700.0, 200.0][(k % 5) as usize];
    }
    let now = T0 + 16_000.0;
    let a = regular.state("r", "ana", now).unwrap().valence.unwrap();
    let b = uneven.state("r", "ana", now).unwrap().valence.unwrap();
    assert!((a - b).abs() < 0.05, "regular {a}, uneven {b}");
    // A late result (captured before what the state holds) does not rewind it.
    assert_eq!(
        uneven.observe(&face("r", "ana", T0 + 9_000.0, SAD)),
        Observed::Late
    );
    assert!((uneven.state("r", "ana", now).unwrap().valence.unwrap() - b).abs() < 1e-9);
}

fn room_of(e: &mut MoodEngine, names: &[&str], from: f64, to: f64, labels: &[(&str, f64)]) {
    for n in names {
        feed_face(e, n, from, to, 200.0, labels);
    }
}

#[test]
fn no_aggregate_below_min_group() {
    let mut e = engine(MoodConfig::default());
    room_of(&mut e, &["ana", "ben"], T0, T0 + 5_000.0, HAPPY);
    let m = &e.tick(T0 + 5_000.0)[0];
    assert_eq!((m.contributors, m.published), (2, false));
    assert_eq!(
        (m.valence, m.arousal, m.attentive_share),
        (None, None, None)
    );
    assert!(m.emotions.is_empty(), "no distribution either: {m:?}");
    room_of(&mut e, &["cyd"], T0 + 4_000.0, T0 + 5_000.0, HAPPY);
    let m = &e.tick(T0 + 5_000.0)[0];
    assert_eq!((m.contributors, m.published), (3, true));
    assert_eq!(m.emotions.get("happy"), Some(&3));
    assert!((m.valence.unwrap() - 0.72).abs() < 0.01, "{m:?}");
}

#[test]
fn the_presenter_is_excluded_from_the_aggregate() {
    let mut e = engine(MoodConfig::default());
    room_of(&mut e, &["ana", "ben", "cyd"], T0, T0 + 5_000.0, HAPPY);
    room_of(&mut e, &["pat"], T0, T0 + 5_000.0, SAD);
    e.set_presenter("r", Some("pat"), PresenterSource::Tag);
    let m = &e.tick(T0 + 5_000.0)[0];
    assert_eq!(m.presenter.as_deref(), Some("pat"));
    assert_eq!(m.presenter_source.as_deref(), Some("tag"));
    assert_eq!((m.participants, m.contributors), (3, 3));
    assert_eq!(m.emotions.get("sad"), None);
    assert!((m.valence.unwrap() - 0.72).abs() < 0.01);
    // A control request wins over the tag; taking it back falls back to the tag.
    e.set_presenter("r", Some("ana"), PresenterSource::Control);
    assert_eq!(e.presenter("r"), Some(("ana", PresenterSource::Control)));
    let m = &e.tick(T0 + 5_000.0)[0];
    assert_eq!(m.emotions.get("sad"), Some(&1), "pat counts again: {m:?}");
    e.set_presenter("r", None, PresenterSource::Control);
    assert_eq!(e.presenter("r"), Some(("pat", PresenterSource::Tag)));
    e.set_presenter("r", None, PresenterSource::Tag);
    assert_eq!(e.presenter("r"), None);
}

#[test]
fn without_a_named_presenter_the_dominant_speaker_presents() {
    let mut e = engine(MoodConfig::default());
    room_of(
        &mut e,
        &["ana", "ben", "cyd", "pat"],
        T0,
        T0 + 12_000.0,
        HAPPY,
    );
    for i in 0..24 {
        let t = T0 + i as f64 * 500.0;
        e.observe(&voice("r", "pat", t, 0.95, &[("neutral", 1.0)]));
        // ana says a word now and then.
        e.observe(&voice(
            "r",
            "ana",
            t,
            if i % 6 == 0 { 0.9 } else { 0.05 },
            &[],
        ));
    }
    let m = &e.tick(T0 + 12_000.0)[0];
    assert_eq!(m.presenter.as_deref(), Some("pat"), "{m:?}");
    assert_eq!(m.presenter_source.as_deref(), Some("speaker"));
    assert_eq!(m.participants, 3);
    // A control request wins over the guess.
    e.set_presenter("r", Some("ben"), PresenterSource::Control);
    assert_eq!(e.tick(T0 + 12_500.0)[0].presenter.as_deref(), Some("ben"));
}

#[test]
fn a_room_brightening_over_a_minute_is_rising() {
    let mut e = engine(MoodConfig::default());
    let names = ["ana", "ben", "cyd"];
    let mut trend = None;
    for s in 0..60 {
        let t = T0 + s as f64 * 1000.0;
        // From sad to happy over the minute.
        let h = s as f64 / 60.0;
        let labels = [("happy", h), ("sad", 1.0 - h)];
        for n in names {
            for k in 0..5 {
                e.observe(&face("r", n, t + k as f64 * 200.0, &labels));
            }
        }
        trend = e.tick(t + 1_000.0)[0].valence_trend;
    }
    assert_eq!(trend, Some(Trend::Rising));
    let mut steady = engine(MoodConfig::default());
    for s in 0..60 {
        let t = T0 + s as f64 * 1000.0;
        room_of(&mut steady, &names, t, t + 1_000.0, HAPPY);
        trend = steady.tick(t + 1_000.0)[0].valence_trend;
    }
    assert_eq!(trend, Some(Trend::Steady));
}

#[test]
fn a_new_model_joins_by_its_declaration_alone() {
    let mut e = engine(MoodConfig::default());
    let mut labels = BTreeMap::new();
    labels.insert(
        "engaged".to_string(),
        AffectPoint {
            valence: Some(0.5),
            arousal: Some(0.7),
        },
    );
    labels.insert(
        "bored".to_string(),
        AffectPoint {
            valence: Some(-0.3),
            arousal: Some(0.1),
        },
    );
    let r = result("r", "ana", "engagement", T0, &[("engaged", 1.0)]);
    assert_eq!(e.observe(&r), Observed::Undeclared);
    e.declare(
        "engagement",
        "1",
        AffectDeclaration {
            modality: Modality::Face,
            labels,
            emotions: vec!["engaged".into(), "bored".into()],
            speech_label: None,
        },
    );
    assert_eq!(e.observe(&r), Observed::Fused);
    let s = e.state("r", "ana", T0).unwrap();
    assert_eq!(s.emotion.as_deref(), Some("engaged"));
    assert_eq!(s.valence, Some(0.5));
    e.undeclare("engagement", "1");
    assert_eq!(e.observe(&r), Observed::Undeclared);
}

#[test]
fn hostile_values_neither_panic_nor_poison_the_state() {
    let mut e = engine(MoodConfig {
        max_rooms: 2,
        max_participants: 2,
        ..Default::default()
    });
    assert_eq!(
        e.observe(&face("r", "ana", f64::NAN, HAPPY)),
        Observed::Invalid
    );
    assert_eq!(e.observe(&face("r", "ana", -5.0, HAPPY)), Observed::Invalid);
    let bad = [
        ("happy", f64::NAN),
        ("sad", f64::INFINITY),
        ("neutral", 7.0),
    ];
    assert_eq!(e.observe(&face("r", "ana", T0, &bad)), Observed::Fused);
    let s = e.state("r", "ana", T0).unwrap();
    assert!(s.valence.is_none_or(|v| (-1.0..=1.0).contains(&v)), "{s:?}");
    assert!((0.0..=1.0).contains(&s.confidence));
    // Capacity: a third participant and a third room are refused.
    assert_eq!(e.observe(&face("r", "ben", T0, HAPPY)), Observed::Fused);
    assert_eq!(
        e.observe(&face("r", "cyd", T0, HAPPY)),
        Observed::OverCapacity
    );
    assert_eq!(e.observe(&face("s", "ana", T0, HAPPY)), Observed::Fused);
    assert_eq!(
        e.observe(&face("t", "ana", T0, HAPPY)),
        Observed::OverCapacity
    );
    // Declarations with values off the plane are refused by validation.
    let mut d = fer2013_declaration();
    d.labels.get_mut("happy").unwrap().valence = Some(3.0);
    assert!(d.validate().is_err());
    assert!(fer2013_declaration().validate().is_ok());
    assert!(voice_arousal_declaration().validate().is_ok());
}

#[test]
fn silent_participants_are_forgotten_and_leaving_drops_the_state() {
    let cfg = MoodConfig::default();
    let forget_ms = cfg.forget_s * 1000.0;
    let mut e = engine(cfg);
    room_of(&mut e, &["ana", "ben"], T0, T0 + 1_000.0, HAPPY);
    e.leave("r", "ben");
    assert!(e.state("r", "ben", T0 + 1_000.0).is_none());
    assert_eq!(e.tick(T0 + 1_000.0)[0].participants, 1);
    assert!(e.tick(T0 + 1_000.0 + forget_ms + 1.0).is_empty());
}

/// An engine whose voice model also reads emotion categories, as audio-worker's does.
fn engine_with_voice_emotions() -> MoodEngine {
    let mut e = MoodEngine::new(MoodConfig::default());
    e.declare("fer", "1", fer2013_declaration());
    let labels: Vec<String> = ["angry", "happy", "neutral", "sad"]
        .map(String::from)
        .to_vec();
    e.declare("voice", "1", voice_emotion_declaration(&labels));
    e
}

/// Face results every 200 ms and voice results every 500 ms for `who`, from `from` to `to`.
fn feed_both(
    e: &mut MoodEngine,
    who: &str,
    from: f64,
    to: f64,
    face_labels: &[(&str, f64)],
    voice_labels: &[(&str, f64)],
) {
    let mut t = from;
    while t < to {
        e.observe(&face("r", who, t, face_labels));
        if ((t - from) as i64) % 500 == 0 {
            e.observe(&voice("r", who, t, 0.95, voice_labels));
        }
        t += 100.0;
    }
}

#[test]
fn a_smile_over_an_angry_voice_is_shown_as_a_conflict_not_as_neutral() {
    let mut e = engine_with_voice_emotions();
    let angry_voice = &[
        ("angry", 0.8),
        ("neutral", 0.1),
        ("happy", 0.05),
        ("sad", 0.05),
    ];
    feed_both(&mut e, "ana", T0, T0 + 8_000.0, HAPPY, angry_voice);
    let s = e.state("r", "ana", T0 + 8_000.0).unwrap();
    assert_eq!(s.face_emotion.as_deref(), Some("happy"), "{s:?}");
    assert_eq!(s.voice_emotion.as_deref(), Some("angry"), "{s:?}");
    let c = s.conflict.as_ref().expect("face and voice disagree");
    assert_eq!((c.face.as_str(), c.voice.as_str()), ("happy", "angry"));
    assert!(c.face_valence > 0.5 && c.voice_valence < -0.3, "{c:?}");
    // Not blended into neutrality: the state follows one of the two readings.
    let v = s.valence.unwrap();
    assert!(v.abs() > 0.3, "valence {v} sits between the two: {s:?}");
    assert!(
        (v - c.face_valence).abs() < 1e-6 || (v - c.voice_valence).abs() < 1e-6,
        "{s:?}"
    );
    assert_eq!(
        s.emotion.as_deref(),
        Some(if v > 0.0 { "happy" } else { "angry" })
    );
    // The room counts the disagreement.
    feed_both(&mut e, "ben", T0, T0 + 8_000.0, HAPPY, angry_voice);
    feed_both(
        &mut e,
        "cyd",
        T0,
        T0 + 8_000.0,
        HAPPY,
        &[("happy", 0.8), ("neutral", 0.2)],
    );
    // A named presenter (else the dominant speaker, one of the three, would present).
    feed_face(&mut e, "pat", T0, T0 + 8_000.0, 200.0, HAPPY);
    e.set_presenter("r", Some("pat"), PresenterSource::Tag);
    let m = &e.tick(T0 + 8_000.0)[0];
    assert!(m.published, "{m:?}");
    assert_eq!(m.conflicted, Some(2), "{m:?}");
}

#[test]
fn a_face_and_a_voice_that_agree_are_blended_and_a_voice_alone_gives_the_emotion() {
    let mut e = engine_with_voice_emotions();
    feed_both(
        &mut e,
        "ana",
        T0,
        T0 + 8_000.0,
        HAPPY,
        &[("happy", 0.7), ("neutral", 0.3)],
    );
    let s = e.state("r", "ana", T0 + 8_000.0).unwrap();
    assert_eq!(s.conflict, None, "{s:?}");
    assert_eq!(
        (s.face_emotion.as_deref(), s.voice_emotion.as_deref()),
        (Some("happy"), Some("happy"))
    );
    assert_eq!(s.emotion.as_deref(), Some("happy"));
    // Only a voice (camera off): its category is the participant's emotion.
    let mut t = T0;
    while t < T0 + 8_000.0 {
        e.observe(&voice(
            "r",
            "ben",
            t,
            0.9,
            &[("sad", 0.8), ("neutral", 0.2)],
        ));
        t += 500.0;
    }
    let s = e.state("r", "ben", T0 + 8_000.0).unwrap();
    assert_eq!(
        (
            s.emotion.as_deref(),
            s.face_emotion.as_deref(),
            s.voice_emotion.as_deref()
        ),
        (Some("sad"), None, Some("sad"))
    );
    assert_eq!(s.conflict, None);
    assert!(s.valence.unwrap() < -0.4, "{s:?}");
}
