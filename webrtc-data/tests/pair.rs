//! Two peers over real ICE/DTLS/SCTP on this machine: the "daemon" offers, the "KMS" side answers
//! and opens the channel, text flows both ways.

use std::time::Duration;

use tokio::sync::mpsc;
use webrtc_data::{application_ports, DataPeer, PeerEvent, PeerOptions, SendError};

fn peer(name: &str) -> (DataPeer, mpsc::Receiver<PeerEvent>) {
    DataPeer::start(PeerOptions {
        name: name.into(),
        ..Default::default()
    })
    .expect("webrtcbin available")
}

/// Relays candidates both ways until `until` matches an event of `b`; returns the events seen.
async fn pump(
    a: &DataPeer,
    ra: &mut mpsc::Receiver<PeerEvent>,
    b: &DataPeer,
    rb: &mut mpsc::Receiver<PeerEvent>,
    mut until: impl FnMut(&PeerEvent, bool) -> bool,
) -> Vec<(bool, PeerEvent)> {
    let mut seen = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let (from_a, ev) = tokio::select! {
            Some(ev) = ra.recv() => (true, ev),
            Some(ev) = rb.recv() => (false, ev),
            _ = tokio::time::sleep_until(deadline) => panic!("timed out; saw {seen:?}"),
        };
        if let PeerEvent::LocalCandidate {
            sdp_mline_index,
            candidate,
        } = &ev
        {
            let other = if from_a { b } else { a };
            other.add_remote_candidate(*sdp_mline_index, candidate);
        }
        let done = until(&ev, from_a);
        seen.push((from_a, ev));
        if done {
            return seen;
        }
    }
}

#[tokio::test]
async fn offer_answer_channel_from_the_answerer_and_text_both_ways() {
    let (daemon, mut rd) = peer("daemon");
    let (kms, mut rk) = peer("kms");
    let offer = daemon.create_offer().await.unwrap();
    assert_eq!(application_ports(&offer).len(), 1, "{offer}");
    assert!(!offer.contains("bundle-only"), "{offer}");
    assert!(!offer.contains("m=audio") && !offer.contains("m=video"));
    let answer = kms.answer_offer(&offer).await.unwrap();
    assert_ne!(application_ports(&answer), vec![0], "{answer}");
    daemon.accept_answer(&answer).await.unwrap();
    assert_eq!(daemon.send_text("early"), Err(SendError::NotOpen));

    // The answerer opens the channel once SCTP is up, as KMS does on createDataChannel.
    let mut opened_here = false;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !opened_here {
        let (from_d, ev) = tokio::select! {
            Some(ev) = rd.recv() => (true, ev),
            Some(ev) = rk.recv() => (false, ev),
            _ = tokio::time::sleep_until(deadline) => panic!("no connection"),
        };
        match ev {
            PeerEvent::LocalCandidate {
                sdp_mline_index,
                candidate,
            } => {
                if from_d {
                    kms.add_remote_candidate(sdp_mline_index, &candidate)
                } else {
                    daemon.add_remote_candidate(sdp_mline_index, &candidate)
                }
            }
            PeerEvent::Connection(s) if s == "connected" && !from_d => {
                kms.open_channel("kurento-tap", true).unwrap();
                opened_here = true;
            }
            _ => {}
        }
    }
    let seen = pump(&daemon, &mut rd, &kms, &mut rk, |ev, from_d| {
        from_d && matches!(ev, PeerEvent::ChannelOpen { .. })
    })
    .await;
    let label = seen.iter().find_map(|(d, e)| match e {
        PeerEvent::ChannelOpen { label, .. } if *d => Some(label.clone()),
        _ => None,
    });
    assert_eq!(label.as_deref(), Some("kurento-tap"));

    for i in 0..20 {
        daemon.send_text(&format!("{{\"n\":{i}}}")).unwrap();
    }
    let mut got = Vec::new();
    pump(&daemon, &mut rd, &kms, &mut rk, |ev, from_d| {
        if let (false, PeerEvent::Text { text, .. }) = (from_d, ev) {
            got.push(text.clone());
        }
        got.len() == 20
    })
    .await;
    assert_eq!(got[0], "{\"n\":0}");
    assert_eq!(got[19], "{\"n\":19}");

    kms.send_text("back").unwrap();
    let seen = pump(&daemon, &mut rd, &kms, &mut rk, |ev, from_d| {
        from_d && matches!(ev, PeerEvent::Text { .. })
    })
    .await;
    assert!(matches!(&seen.last().unwrap().1, PeerEvent::Text { text, .. } if text == "back"));
}

#[tokio::test]
async fn garbage_sdp_is_an_error_not_a_panic() {
    let (kms, _rk) = peer("kms-bad");
    assert!(kms.answer_offer("not sdp at all").await.is_err());
    assert!(kms.answer_offer("v=0\r\n").await.is_err());
    // A candidate that is not one is ignored.
    kms.add_remote_candidate(0, "hello");
    kms.add_remote_candidate(7, "candidate:garbage");
}

#[tokio::test]
async fn ice_ports_are_kept_within_the_configured_range() {
    let (peer, mut events) = DataPeer::start(PeerOptions {
        name: "ranged".into(),
        ice_ports: Some((47110, 47119)),
        ..Default::default()
    })
    .unwrap();
    peer.create_offer().await.unwrap();
    let mut ports = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        tokio::select! {
            Some(ev) = events.recv() => match ev {
                PeerEvent::LocalCandidate { candidate, .. } => {
                    // candidate:<foundation> <component> <transport> <priority> <address> <port> typ ...
                    let f: Vec<&str> = candidate.split_whitespace().collect();
                    assert_eq!(f[2].to_ascii_uppercase(), "UDP", "no ICE-TCP: {candidate}");
                    ports.push(f[5].parse::<u16>().unwrap());
                }
                PeerEvent::GatheringDone => break,
                _ => {}
            },
            _ = tokio::time::sleep_until(deadline) => break,
        }
    }
    assert!(!ports.is_empty(), "host candidates gathered");
    assert!(
        ports.iter().all(|p| (47110..=47119).contains(p)),
        "{ports:?}"
    );
}

/// A server daemon's ICE agent must not multicast SSDP (UPnP-IGD discovery) onto the operator's LAN:
/// libnice enables it by default.
#[tokio::test]
async fn the_ice_agent_never_runs_upnp_discovery() {
    let (a, _ra) = peer("upnp");
    assert_eq!(a.upnp_enabled(), Some(false), "libnice agent with UPnP off");
}
