//! `--host openvidu` on kms-sim rooms built as openvidu-server 2.x builds them (scenario
//! `host = "openvidu"`: unnamed pipeline, streamId-named publishers, a PassThrough each, subscribers
//! hanging from it, no tags). Every camera is tapped once, at its PassThrough, under its
//! connection id; screen shares and subscribers are not; media decodes; leaving and stopping leave
//! nothing of ours.

use std::time::Duration;

use tap_test_support::prelude::*;

const SESSION: &str = "[[room]]\nname='ses_Abc123'\nhost='openvidu'\n\
[[room.participant]]\nname='ana'\nvideo={codec='VP8'}\naudio={tone=300.0}\nscreen=true\n\
[[room.participant]]\nname='ben'\nvideo={codec='H264'}\naudio={tone=400.0}\n\
[[room.participant]]\nname='cyd'\nvideo={codec='VP8'}\naudio={tone=500.0}\nleave_ms=9000\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_camera_is_tapped_once_at_its_passthrough_under_its_connection_id() {
    let h = Harness::new()
        .scenario(SESSION)
        .sim_ports(43600..=43799)
        .tap_ports(43800..=43899)
        .configure(|c| c.host = tap_daemon::discovery::openvidu::Host::OpenVidu)
        .start()
        .await;
    let taps = h.wait_taps(3).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let taps_now = h.daemon.status().await;
    assert_eq!(
        taps_now.len(),
        3,
        "three cameras, the screen share left out: {taps:?}"
    );
    let ids = h.sim.media_set().object_ids();
    for t in &taps_now {
        assert!(
            t.participant.starts_with("con_") && t.participant.len() == 14,
            "participant = connection id: {t:?}"
        );
        assert!(
            t.endpoint.ends_with(".PassThrough"),
            "tapped at the PassThrough: {t:?}"
        );
        assert!(
            t.publisher
                .as_deref()
                .is_some_and(|p| p.ends_with(".WebRtcEndpoint")),
            "{t:?}"
        );
        assert!(
            t.video_frames > 20 && t.audio_buffers > 20,
            "media decodes: {t:?}"
        );
        assert!(ids.contains(&t.endpoint));
    }
    let mut people: Vec<&str> = taps_now.iter().map(|t| t.participant.as_str()).collect();
    people.sort_unstable();
    people.dedup();
    assert_eq!(people.len(), 3, "once each: {taps_now:?}");
    let rtp_taps = ids.iter().filter(|i| i.ends_with(".RtpEndpoint")).count();
    assert_eq!(
        rtp_taps, 3,
        "one RtpEndpoint per camera, none for screens or subscribers"
    );
    let m = h.metrics().await;
    assert!(
        m.contains("kurento_tap_participants_not_tapped_total{reason=\"screen_share\"} 1"),
        "{m}"
    );

    // cyd leaves (openvidu-server releases its endpoints and PassThrough): its tap goes, ours only.
    tokio::time::sleep(Duration::from_secs(6)).await;
    let mut left = h.daemon.status().await.len();
    for _ in 0..50 {
        if left == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        left = h.daemon.status().await.len();
    }
    assert_eq!(left, 2, "cyd's tap ended with its PassThrough");
    h.daemon.shutdown().await;
    let ours: Vec<String> = h
        .sim
        .media_set()
        .object_ids()
        .into_iter()
        .filter(|i| i.ends_with(".RtpEndpoint"))
        .collect();
    assert!(ours.is_empty(), "shutdown releases our taps: {ours:?}");
    // The session's own objects are untouched: 2 participants × (camera + PassThrough) + ana's
    // screen (endpoint + PassThrough) + subscriptions (ana↔ben: 1 + 2).
    let webrtc = h
        .sim
        .media_set()
        .object_ids()
        .into_iter()
        .filter(|i| i.ends_with(".WebRtcEndpoint"))
        .count();
    assert_eq!(webrtc, 3 + 3, "the app's endpoints are its own");
}
