//! What the injector negotiates and sends, decided without KMS or a peer (pure): which results and
//! updates are a participant's to receive, whether their DATA input may be taken, how candidates
//! are named.

use kurento_client::IceCandidate;
use tap_protocol::ResultMessage;

use crate::mood::AffectUpdate;

use super::config::Audience;

/// Whether a result goes to this participant's channel: theirs only, or their room's with
/// `audience = "room"` (`room_token` is the room as a subject token).
pub fn wanted(audience: Audience, r: &ResultMessage, endpoint: &str, room_token: &str) -> bool {
    match audience {
        Audience::Participant => r.endpoint == endpoint,
        Audience::Room => r.room == room_token,
    }
}

/// Whether the DATA link from `source` into the participant may be replaced by ours: KMS keeps
/// one DATA source per sink, so an app's own link is never silently taken over; a self-loop and
/// our own endpoints (one whose release failed) may be, and anything with `replace` set.
pub fn may_replace_data_source(
    source: &str,
    participant_endpoint: &str,
    replace: bool,
    ours: bool,
) -> bool {
    source == participant_endpoint || replace || ours
}

/// A short, stable name for the participant's peer (the endpoint's own UUID, first 8 characters;
/// ids start with the room pipeline's).
pub fn peer_name(endpoint: &str) -> String {
    let short: String = endpoint
        .rsplit('/')
        .next()
        .unwrap_or(endpoint)
        .chars()
        .take(8)
        .collect();
    format!("tap-dc-{short}")
}

/// KMS's candidate for our peer's m-line (by index; the mid from our offer when known).
pub fn ice_candidate(mids: &[String], sdp_mline_index: u32, candidate: String) -> IceCandidate {
    IceCandidate {
        candidate,
        sdp_mid: mids
            .get(sdp_mline_index as usize)
            .cloned()
            .unwrap_or_else(|| sdp_mline_index.to_string()),
        sdp_m_line_index: sdp_mline_index as i32,
    }
}

/// The text for this participant, if the update is theirs to receive: their own state (everyone's
/// in their room with `audience = "room"`), or their room's mood when they present. Both come once
/// a second at most (the fusion's tick), so they need no pacing of their own.
pub fn affect_message(
    u: &AffectUpdate,
    room: &str,
    me: &str,
    audience: Audience,
    max_bytes: usize,
) -> Option<String> {
    let text = match u {
        AffectUpdate::Room(m) if m.room == room && m.presenter.as_deref() == Some(me) => {
            serde_json::to_string(m).ok()?
        }
        AffectUpdate::State(s)
            if s.room == room && (s.participant == me || audience == Audience::Room) =>
        {
            serde_json::to_string(s).ok()?
        }
        _ => return None,
    };
    (text.len() <= max_bytes).then_some(text)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tap_protocol::{MediaKind, WorkerReply};

    fn result(room: &str, endpoint: &str) -> ResultMessage {
        ResultMessage {
            v: 1,
            room: room.into(),
            participant: "p".into(),
            endpoint: endpoint.into(),
            kms: None,
            model: "m".into(),
            version: "1".into(),
            media: MediaKind::Video,
            seq: 1,
            capture_ms: 0.0,
            output: WorkerReply::default(),
            latency_ms: 0.0,
            round_trip_ms: 0.0,
        }
    }

    #[test]
    fn a_participant_gets_their_own_results_or_their_rooms() {
        let r = result("r1", "e1");
        assert!(wanted(Audience::Participant, &r, "e1", "r1"));
        assert!(!wanted(Audience::Participant, &r, "e2", "r1"));
        assert!(wanted(Audience::Room, &r, "e2", "r1"));
        assert!(!wanted(Audience::Room, &r, "e1", "r2"));
    }

    #[test]
    fn an_apps_own_data_link_is_never_taken_over_silently() {
        assert!(!may_replace_data_source("app-ep", "me", false, false));
        assert!(
            may_replace_data_source("me", "me", false, false),
            "a self-loop"
        );
        assert!(may_replace_data_source("app-ep", "me", false, true), "ours");
        assert!(
            may_replace_data_source("app-ep", "me", true, false),
            "replace set"
        );
    }

    #[test]
    fn peers_are_named_by_the_endpoints_uuid_and_candidates_by_mid() {
        assert_eq!(
            peer_name("pipe-uuid/0123456789ab_kurento.WebRtcEndpoint"),
            "tap-dc-01234567"
        );
        assert_eq!(peer_name("x"), "tap-dc-x");
        let c = ice_candidate(&["data".into()], 0, "candidate:1".into());
        assert_eq!((c.sdp_mid.as_str(), c.sdp_m_line_index), ("data", 0));
        assert_eq!(ice_candidate(&[], 2, "c".into()).sdp_mid, "2");
    }

    #[test]
    fn states_go_to_their_participant_and_room_moods_to_the_presenter() {
        use tap_protocol::affect::{ParticipantState, RoomMood};
        let state = |who: &str| {
            AffectUpdate::State(ParticipantState {
                v: 1,
                kind: "kurento-tap.state".into(),
                room: "r".into(),
                participant: who.into(),
                at_ms: 0.0,
                valence: None,
                arousal: None,
                emotion: None,
                confidence: 0.0,
                face_visible: None,
                speaking: None,
                attentive: None,
                modalities: vec![],
                face_emotion: None,
                voice_emotion: None,
                conflict: None,
            })
        };
        let mood = AffectUpdate::Room(RoomMood {
            v: 1,
            kind: "kurento-tap.room".into(),
            room: "r".into(),
            at_ms: 0.0,
            presenter: Some("pat".into()),
            presenter_source: Some("tag".into()),
            contributors: 0,
            participants: 2,
            published: false,
            emotions: Default::default(),
            valence: None,
            arousal: None,
            attentive_share: None,
            valence_trend: None,
            arousal_trend: None,
            conflicted: None,
            expressions: None,
        });
        let p = Audience::Participant;
        assert!(affect_message(&state("ana"), "r", "ana", p, 4096).is_some());
        assert!(affect_message(&state("ben"), "r", "ana", p, 4096).is_none());
        assert!(affect_message(&state("ben"), "r", "ana", Audience::Room, 4096).is_some());
        assert!(affect_message(&state("ana"), "other", "ana", Audience::Room, 4096).is_none());
        assert!(affect_message(&mood, "r", "pat", p, 4096).is_some());
        assert!(affect_message(&mood, "r", "ana", Audience::Room, 4096).is_none());
        assert!(
            affect_message(&mood, "r", "pat", p, 64).is_none(),
            "oversize"
        );
    }
}
