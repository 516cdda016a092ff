//! The daemon's peer ([`TaskPeer`], str0m on a tokio task) against a `webrtcbin` answerer that
//! plays KMS's part (answers, opens the channel once connected): real ICE/DTLS/SCTP on this
//! machine, text both ways, the backlog limit, the end of the conversation, and bad input.

use std::time::Duration;

use tokio::sync::mpsc;
use webrtc_data::{application_ports, DataPeer, PeerEvent, PeerOptions, SendError, TaskPeer};

struct Pair {
    daemon: TaskPeer,
    rd: mpsc::Receiver<PeerEvent>,
    kms: DataPeer,
    rk: mpsc::Receiver<PeerEvent>,
}

impl Pair {
    /// Handles one event from either side (candidates relayed); returns it with its side.
    async fn next(&mut self, deadline: tokio::time::Instant) -> (bool, PeerEvent) {
        let (from_d, ev) = tokio::select! {
            Some(ev) = self.rd.recv() => (true, ev),
            Some(ev) = self.rk.recv() => (false, ev),
            _ = tokio::time::sleep_until(deadline) => panic!("timed out"),
        };
        if let PeerEvent::LocalCandidate {
            sdp_mline_index,
            candidate,
        } = &ev
        {
            if from_d {
                self.kms.add_remote_candidate(*sdp_mline_index, candidate);
            } else {
                self.daemon
                    .add_remote_candidate(*sdp_mline_index, candidate);
            }
        }
        (from_d, ev)
    }

    async fn until(
        &mut self,
        mut done: impl FnMut(bool, &PeerEvent) -> bool,
    ) -> Vec<(bool, PeerEvent)> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        let mut seen = Vec::new();
        loop {
            let (d, ev) = self.next(deadline).await;
            let stop = done(d, &ev);
            seen.push((d, ev));
            if stop {
                return seen;
            }
        }
    }
}

async fn connected_pair(max_backlog_bytes: u64) -> Pair {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    let (daemon, rd) = TaskPeer::start(PeerOptions {
        name: "task-daemon".into(),
        max_backlog_bytes,
        ..Default::default()
    })
    .expect("sockets");
    let (kms, rk) = DataPeer::start(PeerOptions {
        name: "kms-standin".into(),
        ..Default::default()
    })
    .expect("webrtcbin available");
    let offer = daemon.create_offer().unwrap();
    assert_eq!(application_ports(&offer).len(), 1, "{offer}");
    assert!(
        !offer.contains("m=audio") && !offer.contains("m=video"),
        "{offer}"
    );
    let answer = kms.answer_offer(&offer).await.unwrap();
    assert_ne!(application_ports(&answer), vec![0], "{answer}");
    daemon.accept_answer(&answer).unwrap();
    assert_eq!(daemon.send_text("early"), Err(SendError::NotOpen));
    let mut pair = Pair {
        daemon,
        rd,
        kms,
        rk,
    };
    // The answerer opens the channel once connected, as KMS does on createDataChannel.
    pair.until(|d, ev| !d && matches!(ev, PeerEvent::Connection(s) if s == "connected"))
        .await;
    pair.kms.open_channel("kurento-tap", true).unwrap();
    let seen = pair
        .until(|d, ev| d && matches!(ev, PeerEvent::ChannelOpen { .. }))
        .await;
    let label = seen.iter().find_map(|(d, e)| match e {
        PeerEvent::ChannelOpen { label, .. } if *d => Some(label.clone()),
        _ => None,
    });
    assert_eq!(
        label.as_deref(),
        Some("kurento-tap"),
        "the placeholder is never reported"
    );
    pair
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_peer_adopts_the_answerers_channel_and_text_flows_both_ways() {
    let mut pair = connected_pair(64 * 1024).await;
    for i in 0..50 {
        pair.daemon.send_text(&format!("{{\"n\":{i}}}")).unwrap();
    }
    let mut got = Vec::new();
    pair.until(|d, ev| {
        if let (false, PeerEvent::Text { text, .. }) = (d, ev) {
            got.push(text.clone());
        }
        got.len() == 50
    })
    .await;
    let expected: Vec<String> = (0..50).map(|i| format!("{{\"n\":{i}}}")).collect();
    assert_eq!(got, expected, "in order, none lost");

    pair.kms.send_text("back").unwrap();
    let seen = pair
        .until(|d, ev| d && matches!(ev, PeerEvent::Text { .. }))
        .await;
    assert!(matches!(&seen.last().unwrap().1, PeerEvent::Text { text, .. } if text == "back"));

    // The remote side goes away: the channel closes (or ICE gives up), never a hang.
    drop(pair.kms);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(40);
    loop {
        let ev = tokio::select! {
            Some(ev) = pair.rd.recv() => ev,
            _ = tokio::time::sleep_until(deadline) => panic!("no end reported"),
        };
        if matches!(ev, PeerEvent::ChannelClosed { .. })
            || matches!(&ev, PeerEvent::Connection(s) if s == "failed")
        {
            break;
        }
    }
    assert_eq!(pair.daemon.send_text("late"), Err(SendError::NotOpen));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_channel_refuses_beyond_the_backlog_instead_of_queueing() {
    let pair = connected_pair(4 * 1024).await;
    let big = "x".repeat(1000);
    let mut refused = 0;
    for _ in 0..200 {
        match pair.daemon.send_text(&big) {
            Ok(()) => {}
            Err(SendError::Backlog) => refused += 1,
            Err(e) => panic!("{e} after {refused} refused"),
        }
    }
    assert!(refused > 0, "200 KB at once must hit a 4 KB backlog limit");
}

#[tokio::test]
async fn bad_answers_and_candidates_are_errors_not_panics() {
    let (daemon, _rd) = TaskPeer::start(PeerOptions::default()).unwrap();
    assert!(daemon.accept_answer("v=0\r\n").is_err(), "no offer yet");
    daemon.create_offer().unwrap();
    assert!(daemon.accept_answer("not sdp at all").is_err());
    daemon.add_remote_candidate(0, "hello");
    daemon.add_remote_candidate(7, "candidate:garbage");
    daemon.add_remote_candidate(
        0,
        "candidate:1 1 TCP 1015021823 10.0.0.1 9 typ host tcptype active",
    );
    assert_eq!(daemon.send_text("x"), Err(SendError::NotOpen));
}

#[tokio::test]
async fn ice_ports_are_kept_within_the_configured_range() {
    let (daemon, _rd) = TaskPeer::start(PeerOptions {
        ice_ports: Some((47120, 47129)),
        ..Default::default()
    })
    .unwrap();
    let addrs = daemon.local_addresses();
    assert!(!addrs.is_empty());
    assert!(
        addrs.iter().all(|a| (47120..=47129).contains(&a.port())),
        "{addrs:?}"
    );
    let offer = daemon.create_offer().unwrap();
    for a in &addrs {
        assert!(
            offer.contains(&format!("{} {}", a.ip(), a.port())),
            "{offer}"
        );
    }
}
