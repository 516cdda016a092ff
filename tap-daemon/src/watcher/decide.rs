//! The watcher's decisions, over sets and times passed in (no KMS, no NATS, no clock): which
//! endpoints a scan or the fast path looks at, which vanished and whether their room lives on,
//! what an ObjectDestroyed takes with it, which rooms are ours to sweep, keep or give up, and what
//! the configuration excludes. The actor ([`super`]) does the I/O around them.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::time::{Duration, Instant};

use crate::discovery::{self, Participant};
use crate::kms::orphans::OwnedKind;
use crate::settings::DaemonConfig;

/// Where the watcher stands with an endpoint it knows (the payload-free part of its state).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Tapped (the tap is kept under this key).
    Tapped,
    /// A setup is running for it.
    Pending,
    /// It went away while its setup ran; `release`: the room lives on.
    Cancelled { release: bool },
    /// Not a publisher, or one we do not tap.
    Ignored,
    /// A publisher not analysed for want of consent.
    NoConsent,
    /// Not negotiated or not live yet.
    Waiting,
    /// The tap failed; retry after this instant.
    Failed(Instant),
    /// OpenVidu: a publisher endpoint whose tap is kept under its PassThrough.
    Via,
}

/// The room pipeline of an endpoint id (`<pipeline id>/<own id>`).
pub fn pipeline_of(endpoint: &str) -> &str {
    endpoint.split('/').next().unwrap_or_default()
}

/// A WebRTC endpoint's id as KMS writes it (`<pipeline id>/<uuid>_kurento.WebRtcEndpoint`): the
/// pipeline's id, or None for any other object.
pub fn webrtc_endpoint_pipeline(object: &str) -> Option<&str> {
    let (pipeline, own) = object.split_once('/')?;
    (own.ends_with("_kurento.WebRtcEndpoint") && !pipeline.is_empty()).then_some(pipeline)
}

/// The kinds of object the daemon creates, by id.
pub fn owned_kind(id: &str) -> Option<OwnedKind> {
    if id.ends_with("_kurento.WebRtcEndpoint") {
        Some(OwnedKind::DataPeer)
    } else if id.ends_with("_kurento.RtpEndpoint") {
        Some(OwnedKind::Tap)
    } else {
        None
    }
}

/// What a scan does with a WebRTC endpoint it lists.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScanLook {
    /// Examine it (and tap it if it is a publisher we may tap).
    Setup,
    /// Tapped or not analysed for want of consent: re-read its consent tag.
    RecheckConsent,
    /// Nothing to do now.
    Leave,
}

/// What a scan does with an endpoint, by what the watcher knows of it.
pub fn scan_look(known: Option<Phase>, now: Instant) -> ScanLook {
    match known {
        None | Some(Phase::Waiting) => ScanLook::Setup,
        Some(Phase::Failed(at)) if now >= at => ScanLook::Setup,
        Some(Phase::Tapped) | Some(Phase::NoConsent) => ScanLook::RecheckConsent,
        Some(_) => ScanLook::Leave,
    }
}

/// Endpoints known but no longer listed by a scan, each with whether its room lives on (then our
/// objects for it are released, not abandoned). Endpoints of a live pipeline whose children were
/// not read this time (`listed`) get no verdict.
pub fn vanished<'a>(
    known: impl IntoIterator<Item = &'a str>,
    seen: &HashSet<String>,
    live_pipelines: &HashSet<String>,
    listed: &HashSet<String>,
) -> Vec<(String, bool)> {
    known
        .into_iter()
        .filter(|k| !seen.contains(*k))
        .filter_map(|k| {
            let pipeline = pipeline_of(k);
            let room_lives = live_pipelines.contains(pipeline);
            if room_lives && !listed.contains(pipeline) {
                return None;
            }
            Some((k.to_owned(), room_lives))
        })
        .collect()
}

/// The known endpoints an ObjectDestroyed of `id` takes with it, each with whether to release our
/// objects for it: when the room's pipeline went everything in it went too (nothing to release);
/// when only the publisher (or our tap, `taps` maps endpoint → tap id) went, the room lives on.
pub fn destroyed<'a>(
    id: &str,
    known: impl IntoIterator<Item = (&'a str, Option<&'a str>)>,
) -> Vec<(String, bool)> {
    let in_pipeline = format!("{id}/");
    known
        .into_iter()
        .filter(|(ep, tap)| *ep == id || ep.starts_with(&in_pipeline) || *tap == Some(id))
        .map(|(ep, _)| (ep.to_owned(), !ep.starts_with(&in_pipeline)))
        .collect()
}

/// Whether an id is `id` itself or inside it (a pipeline's endpoints).
pub fn is_or_inside(candidate: &str, id: &str) -> bool {
    candidate == id
        || candidate
            .strip_prefix(id)
            .is_some_and(|rest| rest.starts_with('/'))
}

/// What becomes of a setup's outcome, by the endpoint's phase when it returns: `None` to record
/// it, `Some(release)` when the endpoint went meanwhile (stop what it made; release our objects
/// when the room lives on). Forgotten meanwhile (KMS restarted): nothing it made survives.
pub fn cancelled_setup(phase: Option<Phase>) -> Option<bool> {
    match phase {
        Some(Phase::Pending) => None,
        Some(Phase::Cancelled { release }) => Some(release),
        _ => Some(false),
    }
}

/// The rooms (lease keys) with a tap or a setup of ours: the lease task keeps them.
pub fn tapping_rooms<'a>(
    kms: &str,
    known: impl IntoIterator<Item = (&'a str, Phase)>,
) -> BTreeSet<String> {
    known
        .into_iter()
        .filter(|(_, k)| matches!(k, Phase::Tapped | Phase::Pending | Phase::Cancelled { .. }))
        .map(|(ep, _)| tap_protocol::lease::room_key(kms, pipeline_of(ep)))
        .collect()
}

/// Known endpoints in rooms this daemon no longer holds (their taps stop).
pub fn outside_leases<'a>(
    kms: &str,
    known: impl IntoIterator<Item = &'a str>,
    valid: &BTreeSet<String>,
) -> Vec<String> {
    known
        .into_iter()
        .filter(|ep| !valid.contains(&tap_protocol::lease::room_key(kms, pipeline_of(ep))))
        .map(str::to_owned)
        .collect()
}

/// Pipelines just held and not yet swept of a previous holder's objects.
pub fn rooms_to_sweep<'a>(
    kms: &str,
    pipelines: impl IntoIterator<Item = &'a str>,
    valid: &BTreeSet<String>,
    swept: &HashSet<String>,
) -> Vec<(String, &'a str)> {
    pipelines
        .into_iter()
        .map(|p| (tap_protocol::lease::room_key(kms, p), p))
        .filter(|(k, _)| valid.contains(k) && !swept.contains(k))
        .collect()
}

/// Whether a room may be looked into: always alone; in cluster mode only when held and already
/// swept of what a previous holder left.
pub fn room_open(held_and_swept: Option<(bool, bool)>) -> bool {
    held_and_swept.is_none_or(|(held, swept)| held && swept)
}

/// Rooms with a setup running (their objects tagged with something not yet known may be that
/// setup's own).
pub fn rooms_setting_up<'a>(known: impl IntoIterator<Item = (&'a str, Phase)>) -> HashSet<&'a str> {
    known
        .into_iter()
        .filter(|(_, k)| matches!(k, Phase::Pending | Phase::Cancelled { .. }))
        .map(|(ep, _)| pipeline_of(ep))
        .collect()
}

/// An endpoint announced by ObjectCreated and not yet tapped: when to look at it next.
#[derive(Debug, Clone, PartialEq)]
pub struct Fresh {
    pub pipeline: String,
    pub next: Instant,
    pub delay: Duration,
}

/// The first look at a fresh endpoint (it is rarely negotiated at creation), the longest pause
/// between looks, and how long after creation the fast path gives up (the scan goes on).
pub const FRESH_FIRST: Duration = Duration::from_millis(50);
pub const FRESH_MAX_DELAY: Duration = Duration::from_millis(800);
pub const FRESH_GIVE_UP: Duration = Duration::from_secs(15);

impl Fresh {
    /// A new endpoint of `pipeline`, first looked at `FRESH_FIRST` after `now`.
    pub fn new(pipeline: &str, now: Instant) -> Self {
        Fresh {
            pipeline: pipeline.to_owned(),
            next: now + FRESH_FIRST,
            delay: FRESH_FIRST,
        }
    }

    /// Not ready yet at `now`: the next look, backing off (x2 up to `FRESH_MAX_DELAY`), or None
    /// when the endpoint was created more than `FRESH_GIVE_UP` ago.
    pub fn again(&self, now: Instant, created: Instant) -> Option<Self> {
        if now.duration_since(created) >= FRESH_GIVE_UP {
            return None;
        }
        let delay = (self.delay * 2).min(FRESH_MAX_DELAY);
        Some(Fresh {
            pipeline: self.pipeline.clone(),
            next: now + delay,
            delay,
        })
    }
}

/// The fresh endpoints whose turn it is at `now`: (endpoint, pipeline).
pub fn fresh_due(fresh: &HashMap<String, Fresh>, now: Instant) -> Vec<(String, String)> {
    let mut due: Vec<(String, String)> = fresh
        .iter()
        .filter(|(_, f)| f.next <= now)
        .map(|(id, f)| (id.clone(), f.pipeline.clone()))
        .collect();
    due.sort();
    due
}

/// Whether the fast path may set an endpoint up now: not known yet (or waiting), in a room open to
/// this daemon.
pub fn fresh_ready(known: Option<Phase>, room_open: bool) -> bool {
    matches!(known, None | Some(Phase::Waiting)) && room_open
}

/// Whether the configuration lets this daemon tap a room.
pub fn room_allowed(config: &DaemonConfig, room: &str) -> bool {
    (config.include_rooms.is_empty()
        || config
            .include_rooms
            .iter()
            .any(|pat| discovery::matches(pat, room)))
        && !config
            .exclude_rooms
            .iter()
            .any(|pat| discovery::matches(pat, room))
}

/// Why a publisher is not tapped by configuration, if it is not (consent is decided apart, and
/// looked at again on every scan).
pub fn not_tapped_reason(config: &DaemonConfig, p: &Participant) -> Option<&'static str> {
    let screen = p
        .stream
        .as_ref()
        .is_some_and(|s| s.kind == crate::discovery::openvidu::StreamKind::Screen);
    if screen && !config.openvidu.include_screens {
        Some("screen_share")
    } else if !room_allowed(config, &p.room) {
        Some("room_excluded")
    } else if config
        .exclude_participants
        .iter()
        .any(|x| discovery::matches(x, &p.name))
    {
        Some("participant_excluded")
    } else {
        None
    }
}

/// How much a monotonic counter grew since it was last looked at; `seen` moves to `now`.
pub fn growth(now: u64, seen: &mut u64) -> u64 {
    let d = now.saturating_sub(*seen);
    *seen = now;
    d
}

#[cfg(test)]
mod tests {
    use super::*;

    const P1: &str = "p1_kurento.MediaPipeline";
    const P2: &str = "p2_kurento.MediaPipeline";

    fn ep(pipeline: &str, n: u32) -> String {
        format!("{pipeline}/{n}_kurento.WebRtcEndpoint")
    }

    fn set(items: &[&str]) -> HashSet<String> {
        items.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn only_webrtc_endpoints_are_fresh_publishers_to_look_at() {
        let ep = "0b9e_kurento.MediaPipeline/77a1_kurento.WebRtcEndpoint";
        assert_eq!(
            webrtc_endpoint_pipeline(ep),
            Some("0b9e_kurento.MediaPipeline")
        );
        for other in [
            "0b9e_kurento.MediaPipeline",
            "0b9e_kurento.MediaPipeline/1_kurento.RtpEndpoint",
            "0b9e_kurento.MediaPipeline/1_kurento.PassThrough",
            "/1_kurento.WebRtcEndpoint",
            "",
        ] {
            assert_eq!(webrtc_endpoint_pipeline(other), None, "{other}");
        }
    }

    #[test]
    fn a_fresh_endpoint_is_looked_at_soon_then_less_often_then_left_to_the_scan() {
        let t0 = Instant::now();
        let f = Fresh::new("p", t0);
        assert_eq!(f.next, t0 + FRESH_FIRST);
        let mut delays = Vec::new();
        let mut cur = f;
        let mut now = t0;
        while let Some(next) = cur.again(now, t0) {
            delays.push(next.delay.as_millis());
            now = next.next;
            cur = next;
        }
        assert_eq!(&delays[..5], &[100, 200, 400, 800, 800]);
        assert!(now.duration_since(t0) >= FRESH_GIVE_UP - FRESH_MAX_DELAY);
        assert!(now.duration_since(t0) <= FRESH_GIVE_UP + FRESH_MAX_DELAY);
    }

    #[test]
    fn only_fresh_endpoints_whose_turn_came_are_due_and_only_unknown_ones_in_open_rooms_set_up() {
        let t0 = Instant::now();
        let mut fresh = HashMap::new();
        fresh.insert(ep(P1, 1), Fresh::new(P1, t0));
        let mut later = Fresh::new(P2, t0);
        later.next = t0 + Duration::from_secs(1);
        fresh.insert(ep(P2, 2), later);
        assert!(fresh_due(&fresh, t0).is_empty());
        assert_eq!(
            fresh_due(&fresh, t0 + FRESH_FIRST),
            vec![(ep(P1, 1), P1.to_string())]
        );
        assert_eq!(fresh_due(&fresh, t0 + Duration::from_secs(2)).len(), 2);
        assert!(fresh_ready(None, true));
        assert!(fresh_ready(Some(Phase::Waiting), true));
        assert!(!fresh_ready(None, false), "another daemon's room");
        assert!(!fresh_ready(Some(Phase::Pending), true));
        assert!(!fresh_ready(Some(Phase::Tapped), true));
    }

    #[test]
    fn a_scan_sets_up_the_new_and_the_waiting_retries_failures_in_time_and_rechecks_consent() {
        let now = Instant::now();
        assert_eq!(scan_look(None, now), ScanLook::Setup);
        assert_eq!(scan_look(Some(Phase::Waiting), now), ScanLook::Setup);
        let later = now + Duration::from_secs(15);
        assert_eq!(scan_look(Some(Phase::Failed(later)), now), ScanLook::Leave);
        assert_eq!(
            scan_look(Some(Phase::Failed(later)), later),
            ScanLook::Setup
        );
        assert_eq!(
            scan_look(Some(Phase::Tapped), now),
            ScanLook::RecheckConsent
        );
        assert_eq!(
            scan_look(Some(Phase::NoConsent), now),
            ScanLook::RecheckConsent
        );
        for settled in [
            Phase::Pending,
            Phase::Cancelled { release: true },
            Phase::Ignored,
            Phase::Via,
        ] {
            assert_eq!(
                scan_look(Some(settled), now),
                ScanLook::Leave,
                "{settled:?}"
            );
        }
    }

    #[test]
    fn a_publisher_gone_from_a_living_room_is_released_and_one_of_an_unread_room_is_not_judged() {
        let (a, b, c) = (ep(P1, 1), ep(P1, 2), ep(P2, 3));
        let known = [a.as_str(), b.as_str(), c.as_str()];
        let seen = set(&[&a]);
        // P1 read and living: b vanished, its room lives (release ours). P2 gone: c vanished with
        // its room (nothing to release).
        let mut v = vanished(known, &seen, &set(&[P1]), &set(&[P1]));
        v.sort();
        assert_eq!(v, vec![(b.clone(), true), (c.clone(), false)]);
        // P2 living but its children unreadable this time: no verdict on c.
        let v = vanished(known, &seen, &set(&[P1, P2]), &set(&[P1]));
        assert_eq!(v, vec![(b, true)]);
    }

    #[test]
    fn a_destroyed_pipeline_takes_its_endpoints_and_a_destroyed_tap_its_publisher() {
        let (a, b, c) = (ep(P1, 1), ep(P1, 2), ep(P2, 3));
        let tap = format!("{P2}/9_kurento.RtpEndpoint");
        let known = [
            (a.as_str(), None),
            (b.as_str(), None),
            (c.as_str(), Some(tap.as_str())),
        ];
        let mut gone = destroyed(P1, known);
        gone.sort();
        assert_eq!(
            gone,
            vec![(a.clone(), false), (b.clone(), false)],
            "room gone: nothing to release"
        );
        assert_eq!(destroyed(&a, known), vec![(a.clone(), true)], "room lives");
        assert_eq!(
            destroyed(&tap, known),
            vec![(c.clone(), true)],
            "our tap went: its publisher's tap stops"
        );
        assert!(
            destroyed("p1", known).is_empty(),
            "a prefix of an id is not the id"
        );
        assert!(is_or_inside(&a, P1) && is_or_inside(P1, P1) && !is_or_inside(&a, "p1"));
    }

    #[test]
    fn a_setup_that_returns_after_its_endpoint_went_is_undone() {
        assert_eq!(cancelled_setup(Some(Phase::Pending)), None);
        assert_eq!(
            cancelled_setup(Some(Phase::Cancelled { release: true })),
            Some(true)
        );
        assert_eq!(
            cancelled_setup(Some(Phase::Cancelled { release: false })),
            Some(false)
        );
        assert_eq!(
            cancelled_setup(None),
            Some(false),
            "forgotten: KMS restarted"
        );
    }

    #[test]
    fn rooms_with_taps_or_setups_are_kept_and_endpoints_outside_the_leases_stop() {
        let (a, b, c) = (ep(P1, 1), ep(P1, 2), ep(P2, 3));
        let known = [
            (a.as_str(), Phase::Tapped),
            (b.as_str(), Phase::Ignored),
            (c.as_str(), Phase::Cancelled { release: true }),
        ];
        let rooms = tapping_rooms("kms", known);
        assert_eq!(rooms.len(), 2);
        assert!(rooms.contains(&tap_protocol::lease::room_key("kms", P1)));
        let only_p1: BTreeSet<String> = [tap_protocol::lease::room_key("kms", P1)].into();
        assert_eq!(
            outside_leases("kms", [a.as_str(), c.as_str()], &only_p1),
            vec![c.clone()]
        );
        let setting_up =
            rooms_setting_up([(a.as_str(), Phase::Pending), (c.as_str(), Phase::Tapped)]);
        assert_eq!(setting_up, [P1].into());
    }

    #[test]
    fn only_rooms_just_held_are_swept_and_only_held_swept_rooms_are_looked_into() {
        let k1 = tap_protocol::lease::room_key("kms", P1);
        let k2 = tap_protocol::lease::room_key("kms", P2);
        let valid: BTreeSet<String> = [k1.clone(), k2.clone()].into();
        let swept: HashSet<String> = [k1].into();
        assert_eq!(
            rooms_to_sweep("kms", [P1, P2, "p3"], &valid, &swept),
            vec![(k2, P2)]
        );
        assert!(room_open(None), "alone: every room");
        assert!(room_open(Some((true, true))));
        assert!(!room_open(Some((true, false))), "held, not swept yet");
        assert!(!room_open(Some((false, true))), "another daemon's");
    }

    #[test]
    fn configuration_excludes_rooms_participants_and_screens() {
        let mut config = DaemonConfig {
            include_rooms: vec!["team-*".into()],
            exclude_rooms: vec!["team-secret".into()],
            exclude_participants: vec!["recorder*".into()],
            ..DaemonConfig::default()
        };
        assert!(room_allowed(&config, "team-a"));
        assert!(!room_allowed(&config, "team-secret"));
        assert!(!room_allowed(&config, "other"));
        let mut p = Participant {
            room: "team-a".into(),
            pipeline: P1.into(),
            name: "ana".into(),
            endpoint: ep(P1, 1),
            media: crate::media::sdp_offer::PublisherMedia {
                video: None,
                audio: true,
                sendonly: true,
                data_channels: false,
            },
            consent: true,
            consent_tag: None,
            live: true,
            presenter: false,
            publisher: None,
            stream: None,
            display: None,
        };
        assert_eq!(not_tapped_reason(&config, &p), None);
        p.name = "recorder-1".into();
        assert_eq!(not_tapped_reason(&config, &p), Some("participant_excluded"));
        p.room = "other".into();
        assert_eq!(not_tapped_reason(&config, &p), Some("room_excluded"));
        config.include_rooms.clear();
        p.name = "ana".into();
        assert_eq!(not_tapped_reason(&config, &p), None);
    }

    #[test]
    fn counters_grow_by_what_was_not_seen_and_never_backwards() {
        let mut seen = 5;
        assert_eq!(growth(8, &mut seen), 3);
        assert_eq!(seen, 8);
        assert_eq!(
            growth(2, &mut seen),
            0,
            "a restarted receiver does not count down"
        );
        assert_eq!(seen, 2);
    }

    #[test]
    fn our_objects_are_recognised_by_kind() {
        assert_eq!(owned_kind(&ep(P1, 1)), Some(OwnedKind::DataPeer));
        assert_eq!(
            owned_kind(&format!("{P1}/1_kurento.RtpEndpoint")),
            Some(OwnedKind::Tap)
        );
        assert_eq!(owned_kind(&format!("{P1}/1_kurento.PassThrough")), None);
    }
}
