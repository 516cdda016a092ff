//! The simulator must agree with KMS: the request cache, RTP to the offer's ports with our payload
//! types, keyframes on PLI, H.264, and the group-call room lifecycle.

use std::net::UdpSocket;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use kms_sim::{Scenario, SimOptions, SimServer};
use kurento_client::prelude::*;
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

async fn start(scenario: Scenario) -> SimServer {
    SimServer::start(SimOptions {
        scenario,
        announce_ip: Some([127, 0, 0, 1].into()),
        port_range: (46000, 49999),
        ..Default::default()
    })
    .await
    .unwrap()
}

#[tokio::test]
async fn a_reused_request_id_is_answered_from_the_cache() {
    let sim = start(Scenario::default()).await;
    let (mut ws, _) = tokio_tungstenite::connect_async(sim.url()).await.unwrap();
    let mut call = async |frame: Value| -> Value {
        ws.send(Message::text(frame.to_string())).await.unwrap();
        loop {
            if let Some(Ok(Message::Text(t))) = ws.next().await {
                let v: Value = serde_json::from_str(t.as_str()).unwrap();
                if v.get("id").is_some() {
                    return v;
                }
            }
        }
    };
    let first = call(json!({"jsonrpc":"2.0","id":5,"method":"create","params":{"type":"MediaPipeline","constructorParams":{},"properties":{}}})).await;
    let session = first["result"]["sessionId"].as_str().unwrap().to_owned();
    let again = call(json!({"jsonrpc":"2.0","id":5,"method":"create","params":{"type":"MediaPipeline","constructorParams":{},"properties":{},"sessionId":session}})).await;
    assert_eq!(
        first, again,
        "same id within 20 s: the cached answer, nothing created"
    );
    let pipelines = call(json!({"jsonrpc":"2.0","id":6,"method":"invoke","params":{"object":"manager_ServerManager","operation":"getPipelines","sessionId":session}})).await;
    assert_eq!(pipelines["result"]["value"].as_array().unwrap().len(), 1);
    // A reconnecting client's `connect` with an id the session used before gets that old answer.
    let (mut ws2, _) = tokio_tungstenite::connect_async(sim.url()).await.unwrap();
    ws2.send(Message::text(
        json!({"jsonrpc":"2.0","id":5,"method":"connect","params":{"sessionId":session}})
            .to_string(),
    ))
    .await
    .unwrap();
    let Some(Ok(Message::Text(t))) = ws2.next().await else {
        panic!()
    };
    let v: Value = serde_json::from_str(t.as_str()).unwrap();
    assert_eq!(v, first, "the observed KMS pitfall");
}

fn port_pair() -> (UdpSocket, UdpSocket) {
    loop {
        let rtp = UdpSocket::bind("127.0.0.1:0").unwrap();
        let port = rtp.local_addr().unwrap().port();
        if port.is_multiple_of(2) {
            if let Ok(rtcp) = UdpSocket::bind(("127.0.0.1", port + 1)) {
                return (rtp, rtcp);
            }
        }
    }
}

/// VP8 RTP payload: is this packet the first of a key frame? (RFC 7741 descriptor, then the VP8
/// frame tag whose lowest bit is 0 for key frames.)
fn vp8_keyframe_start(payload: &[u8]) -> bool {
    let Some(&b0) = payload.first() else {
        return false;
    };
    let (x, s, pid) = (b0 & 0x80 != 0, b0 & 0x10 != 0, b0 & 0x07);
    if !s || pid != 0 {
        return false;
    }
    let mut i = 1;
    if x {
        let Some(&ext) = payload.get(1) else {
            return false;
        };
        i = 2;
        if ext & 0x80 != 0 {
            i += if payload.get(i).is_some_and(|b| b & 0x80 != 0) {
                2
            } else {
                1
            };
        }
        if ext & 0x40 != 0 {
            i += 1;
        }
        if ext & 0x30 != 0 {
            i += 1;
        }
    }
    payload.get(i).is_some_and(|b| b & 0x01 == 0)
}

fn rtp_payload(pkt: &[u8]) -> Option<(u8, &[u8])> {
    if pkt.len() < 12 || pkt[0] >> 6 != 2 {
        return None;
    }
    let cc = (pkt[0] & 0x0f) as usize;
    let mut off = 12 + 4 * cc;
    if pkt[0] & 0x10 != 0 {
        let len = u16::from_be_bytes([*pkt.get(off + 2)?, *pkt.get(off + 3)?]) as usize;
        off += 4 + 4 * len;
    }
    Some((pkt[1] & 0x7f, pkt.get(off..)?))
}

/// KMS's RTCP port (`a=rtcp`) and media SSRC (`a=ssrc`) from its answer to a tap's offer.
fn rtcp_port_and_ssrc(answer: &str) -> (u16, u32) {
    let kms_rtcp = answer
        .lines()
        .find_map(|l| l.strip_prefix("a=rtcp:"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let media_ssrc = answer
        .lines()
        .find_map(|l| l.strip_prefix("a=ssrc:"))
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .parse()
        .unwrap();
    (kms_rtcp, media_ssrc)
}

async fn first_publisher(kms: &KurentoClient, codec: &str) -> (MediaPipeline, WebRtcEndpoint) {
    for _ in 0..100 {
        for p in kms.server_manager().get_pipelines().await.unwrap() {
            for c in p.get_children().await.unwrap() {
                if let Some(ep) = c.downcast::<WebRtcEndpoint>() {
                    if let Ok(local) = ep.get_local_session_descriptor().await {
                        let remote = ep.get_remote_session_descriptor().await.unwrap();
                        if remote.contains("a=sendonly") && local.contains(codec) {
                            return (p, ep);
                        }
                    }
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("no {codec} publisher");
}

/// A tap's leg on the simulator: a tap of the first `codec` publisher of `scenario`, offered one
/// video m-line (`media(port)`: from `m=` on), answered but not yet connected.
struct TapLeg {
    _sim: SimServer,
    _kms: KurentoClient,
    publisher: WebRtcEndpoint,
    tap: RtpEndpoint,
    rtp: UdpSocket,
    rtcp: UdpSocket,
    answer: String,
}

async fn tap_leg(scenario: &str, codec: &str, media: impl Fn(u16) -> String) -> TapLeg {
    let sim = start(Scenario::parse(scenario).unwrap()).await;
    let kms = KurentoClient::connect(sim.url()).await.unwrap();
    let (room, publisher) = first_publisher(&kms, codec).await;
    let (rtp, rtcp) = port_pair();
    let port = rtp.local_addr().unwrap().port();
    let tap = room.create::<RtpEndpoint>().await.unwrap();
    let answer = tap
        .process_offer(&format!(
            "v=0\r\no=- 0 0 IN IP4 127.0.0.1\r\ns=t\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n{}",
            media(port)
        ))
        .await
        .unwrap();
    TapLeg {
        _sim: sim,
        _kms: kms,
        publisher,
        tap,
        rtp,
        rtcp,
        answer,
    }
}

/// Compound RTCP as a receiver sends it: an empty receiver report (SSRC 7), then one feedback
/// message (`pt` 205 transport / 206 payload-specific, `fmt`) about `media_ssrc` with its FCI.
fn rtcp_feedback(pt: u8, fmt: u8, media_ssrc: u32, fci: &[u8]) -> Vec<u8> {
    let words = (12 + fci.len()) / 4 - 1;
    let mut pkt = vec![0x80, 201, 0, 1, 0, 0, 0, 7];
    pkt.extend_from_slice(&[0x80 | fmt, pt, 0, words as u8, 0, 0, 0, 7]);
    pkt.extend_from_slice(&media_ssrc.to_be_bytes());
    pkt.extend_from_slice(fci);
    pkt
}

/// As KMS 7.x: a tap's RTCP PLI does not reach the publisher (GStreamer >= 1.20 puts the tap's
/// SSRC in the keyframe request, which the publisher's session does not know), and
/// `requestKeyframe` on the tap does (KMS sends the browser a FIR).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tap_s_pli_brings_no_keyframe_and_request_keyframe_does() {
    // Keyframes every 600 frames (40 s at 15 fps): any second keyframe within the test is asked for.
    let TapLeg {
        publisher,
        tap,
        rtp,
        rtcp,
        answer,
        _sim,
        _kms,
    } = tap_leg(
        "[[room]]\nname='r'\n[[room.participant]]\nname='p'\nvideo={codec='VP8', keyframe_interval=600}\n",
        "VP8",
        |port| format!("m=video {port} RTP/AVPF 100\r\na=rtpmap:100 VP8/90000\r\na=rtcp-fb:100 nack pli\r\na=rtcp-fb:100 ccm fir\r\na=recvonly\r\n"),
    )
    .await;
    let (kms_rtcp, media_ssrc) = rtcp_port_and_ssrc(&answer);
    publisher.connect(&tap, MediaType::Video).await.unwrap();
    let api_request = {
        let tap = tap.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(2700)).await;
            tap.request_keyframe().await
        })
    };

    let keyframes = tokio::task::spawn_blocking(move || {
        rtp.set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        let mut buf = [0u8; 2048];
        let mut keyframes = Vec::new();
        let mut first_packet = None;
        let mut pli_sent = false;
        let start = Instant::now();
        while start.elapsed() < Duration::from_millis(4500) {
            if start.elapsed() > Duration::from_millis(1500) && !pli_sent {
                // PLI (PT 206, FMT 1) for KMS's SSRC.
                let pkt = rtcp_feedback(206, 1, media_ssrc, &[]);
                rtcp.send_to(&pkt, ("127.0.0.1", kms_rtcp)).unwrap();
                pli_sent = true;
            }
            let Ok(n) = rtp.recv(&mut buf) else { continue };
            let Some((pt, payload)) = rtp_payload(&buf[..n]) else {
                continue;
            };
            assert_eq!(pt, 100);
            first_packet.get_or_insert_with(|| vp8_keyframe_start(payload));
            if vp8_keyframe_start(payload) {
                keyframes.push(start.elapsed());
            }
        }
        (first_packet, keyframes)
    })
    .await
    .unwrap();
    assert_eq!(
        keyframes.0,
        Some(true),
        "a new connection starts on a keyframe"
    );
    api_request.await.unwrap().unwrap();
    let after_pli: Vec<&Duration> = keyframes
        .1
        .iter()
        .filter(|t| **t > Duration::from_millis(1500) && **t < Duration::from_millis(2700))
        .collect();
    assert!(
        after_pli.is_empty(),
        "the PLI brought no keyframe: {:?}",
        keyframes.1
    );
    assert!(
        keyframes.1.iter().any(|t| *t > Duration::from_millis(2700)),
        "requestKeyframe brought one: {:?}",
        keyframes.1
    );
}

/// As KMS's RtpEndpoint (its `rtprtxqueue` keeps the last 512 packets sent): a generic NACK from
/// the tap makes the simulator send the packet again, same sequence number, in-band.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nack_from_the_tap_is_answered_with_the_packet_again() {
    let TapLeg {
        publisher,
        tap,
        rtp,
        rtcp,
        answer,
        _sim,
        _kms,
    } = tap_leg(
        "[[room]]\nname='r'\n[[room.participant]]\nname='p'\nvideo={codec='VP8'}\n",
        "VP8",
        |port| format!("m=video {port} RTP/AVPF 100\r\na=rtpmap:100 VP8/90000\r\na=rtcp-fb:100 nack\r\na=rtcp-fb:100 nack pli\r\na=recvonly\r\n"),
    )
    .await;
    assert!(answer.contains("a=rtcp-fb:100 nack\r\n"), "{answer}");
    let (kms_rtcp, media_ssrc) = rtcp_port_and_ssrc(&answer);
    publisher.connect(&tap, MediaType::Video).await.unwrap();
    let (asked, again) = tokio::task::spawn_blocking(move || {
        rtp.set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        let mut buf = [0u8; 2048];
        let mut seen: Vec<u16> = Vec::new();
        let mut asked = None;
        let mut again = 0;
        let start = Instant::now();
        while start.elapsed() < Duration::from_millis(3000) {
            if asked.is_none() && start.elapsed() > Duration::from_millis(1500) && seen.len() > 20 {
                // A packet received a while ago, as if it had been lost: a generic NACK (PT 205,
                // FMT 1) for KMS's SSRC, its sequence number as PID and no more (BLP 0).
                let seq = seen[seen.len() - 10];
                let [hi, lo] = seq.to_be_bytes();
                let pkt = rtcp_feedback(205, 1, media_ssrc, &[hi, lo, 0, 0]);
                rtcp.send_to(&pkt, ("127.0.0.1", kms_rtcp)).unwrap();
                asked = Some(seq);
            }
            let Ok(n) = rtp.recv(&mut buf) else { continue };
            if n < 12 {
                continue;
            }
            let seq = u16::from_be_bytes([buf[2], buf[3]]);
            if Some(seq) == asked {
                again += 1;
            }
            seen.push(seq);
        }
        (asked, again)
    })
    .await
    .unwrap();
    assert!(asked.is_some(), "packets flowed before the NACK");
    assert_eq!(again, 1, "packet {asked:?} sent again once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h264_publishers_are_tapped_in_h264() {
    // `_sim` and `_kms` bound, not `..`: the simulator and the client live to the test's end.
    let TapLeg {
        publisher,
        tap,
        rtp,
        rtcp: _rtcp,
        _sim,
        _kms,
        ..
    } = tap_leg(
        "[[room]]\nname='r'\n[[room.participant]]\nname='safari'\nvideo={codec='H264'}\n",
        "H264",
        |port| format!("m=video {port} RTP/AVPF 103\r\na=rtpmap:103 H264/90000\r\na=fmtp:103 packetization-mode=1;profile-level-id=42e01f;level-asymmetry-allowed=1\r\na=rtcp-fb:103 nack pli\r\na=recvonly\r\n"),
    )
    .await;
    publisher.connect(&tap, MediaType::Video).await.unwrap();
    let nal_types = tokio::task::spawn_blocking(move || {
        rtp.set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        let mut buf = [0u8; 2048];
        let mut types = std::collections::BTreeSet::new();
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(3) && !types.contains(&5) {
            if let Ok(n) = rtp.recv(&mut buf) {
                if let Some((103, payload)) = rtp_payload(&buf[..n]) {
                    let t = payload[0] & 0x1f;
                    // FU-A (28) and STAP-A (24) carry the NAL type inside.
                    let inner = match t {
                        28 => payload[1] & 0x1f,
                        24 => payload[3] & 0x1f,
                        t => t,
                    };
                    types.insert(inner);
                }
            }
        }
        types
    })
    .await
    .unwrap();
    assert!(
        nal_types.contains(&7) && nal_types.contains(&5),
        "SPS and an IDR slice first: {nal_types:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn participants_join_and_leave_on_schedule() {
    let scenario = Scenario::parse(
        "[[room]]\nname='r'\n[[room.participant]]\nname='a'\nvideo={}\nleave_ms=600\n[[room.participant]]\nname='b'\naudio={}\njoin_ms=200\nleave_ms=900\n",
    )
    .unwrap();
    let sim = start(scenario).await;
    let kms = KurentoClient::connect(sim.url()).await.unwrap();
    let mut destroyed = kms.server_manager().on::<ObjectDestroyed>().await.unwrap();
    tokio::time::sleep(Duration::from_millis(400)).await;
    let pipelines = kms.server_manager().get_pipelines().await.unwrap();
    assert_eq!(pipelines.len(), 1);
    // a and b publish; each watches the other: 4 WebRtcEndpoints.
    assert_eq!(pipelines[0].get_children().await.unwrap().len(), 4);
    let mut gone = Vec::new();
    while let Ok(Some(Ok(ev))) =
        tokio::time::timeout(Duration::from_secs(2), destroyed.recv()).await
    {
        gone.push(ev.object_id);
        if gone.iter().any(|g| g == pipelines[0].id()) {
            break;
        }
    }
    assert!(
        gone.iter().any(|g| g == pipelines[0].id()),
        "the room closed with its last participant"
    );
    assert!(kms
        .server_manager()
        .get_pipelines()
        .await
        .unwrap()
        .is_empty());
    assert_eq!(sim.media_set().object_ids(), vec!["manager_ServerManager"]);
}

/// A client's data-only session with a `useDataChannels` endpoint, as KMS runs it: a real answer,
/// candidates only after `gatherCandidates`, `createDataChannel` (40111 before negotiation) opening
/// the channel from the server side, `DataChannelOpened` twice, and DATA forwarded to a peer-backed
/// sink endpoint.
#[tokio::test]
async fn data_channels_are_real_and_behave_like_kms() {
    use kurento_client::ErrorCode;
    use webrtc_data::{DataPeer, PeerEvent, PeerOptions};
    let sim = start(Scenario::default()).await;
    let kms = KurentoClient::connect(&sim.url()).await.unwrap();
    let pipeline = kms.create_pipeline().await.unwrap();
    let plain = pipeline.create::<WebRtcEndpoint>().await.unwrap();
    let e = plain.create_data_channel(()).await.unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::MediaObjectOperationNotSupported));

    // Two client peers, A and B, each on its own endpoint; A's messages are forwarded to B.
    let mut sides = Vec::new();
    for name in ["a", "b"] {
        let ep = pipeline
            .create::<WebRtcEndpoint>()
            .use_data_channels(true)
            .await
            .unwrap();
        let e = ep.create_data_channel(()).await.unwrap_err();
        assert_eq!(
            e.code(),
            Some(ErrorCode::MediaObjectOperationNotSupported),
            "not negotiated yet"
        );
        let (peer, events) = DataPeer::start(PeerOptions {
            name: format!("fidelity-{name}"),
            ..Default::default()
        })
        .unwrap();
        let mut candidates = ep.on::<IceCandidateFound>().await.unwrap();
        let opened = ep.on::<DataChannelOpened>().await.unwrap();
        let offer = peer.create_offer().await.unwrap();
        let answer = ep.process_offer(&offer).await.unwrap();
        assert!(answer.contains("m=application") && answer.contains("a=fingerprint"));
        peer.accept_answer(&answer).await.unwrap();
        // KMS reports candidates only after gatherCandidates.
        assert!(
            tokio::time::timeout(Duration::from_millis(300), candidates.recv())
                .await
                .is_err(),
            "no candidate before gatherCandidates"
        );
        ep.gather_candidates().await.unwrap();
        ep.create_data_channel("results").await.unwrap();
        sides.push((ep, peer, events, candidates, opened));
    }
    let [(ep_a, peer_a, mut ev_a, mut c_a, mut o_a), (ep_b, peer_b, mut ev_b, mut c_b, mut o_b)] =
        <[_; 2]>::try_from(sides).ok().unwrap();
    ep_a.connect(&ep_b, MediaType::Data).await.unwrap();
    let mut open = [false, false];
    let mut opened_events = [0, 0];
    let mut received = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while received.len() < 5 {
        tokio::select! {
            Some(ev) = ev_a.recv() => match ev {
                PeerEvent::LocalCandidate { sdp_mline_index, candidate } => {
                    ep_a.add_ice_candidate(&IceCandidate { candidate, sdp_mid: "0".into(), sdp_m_line_index: sdp_mline_index as i32 }).await.unwrap();
                }
                PeerEvent::ChannelOpen { label, .. } => {
                    assert_eq!(label, "results");
                    open[0] = true;
                }
                _ => {}
            },
            Some(ev) = ev_b.recv() => match ev {
                PeerEvent::LocalCandidate { sdp_mline_index, candidate } => {
                    ep_b.add_ice_candidate(&IceCandidate { candidate, sdp_mid: "0".into(), sdp_m_line_index: sdp_mline_index as i32 }).await.unwrap();
                }
                PeerEvent::ChannelOpen { .. } => open[1] = true,
                PeerEvent::Text { text, .. } => received.push(text),
                _ => {}
            },
            Some(Ok(c)) = c_a.recv() => peer_a.add_remote_candidate(c.candidate.sdp_m_line_index as u32, &c.candidate.candidate),
            Some(Ok(c)) = c_b.recv() => peer_b.add_remote_candidate(c.candidate.sdp_m_line_index as u32, &c.candidate.candidate),
            Some(Ok(_)) = o_a.recv() => opened_events[0] += 1,
            Some(Ok(_)) = o_b.recv() => opened_events[1] += 1,
            _ = tokio::time::sleep(Duration::from_millis(100)) => {
                if open == [true, true] {
                    let n = received.len();
                    let _ = peer_a.send_text(&format!("m{n}"));
                }
            }
            _ = tokio::time::sleep_until(deadline) => panic!("open {open:?}, received {received:?}"),
        }
    }
    assert!(received.iter().all(|m| m.starts_with('m')));
    // Let the second DataChannelOpened of each endpoint arrive.
    for _ in 0..20 {
        if opened_events == [2, 2] {
            break;
        }
        tokio::select! {
            Some(Ok(_)) = o_a.recv() => opened_events[0] += 1,
            Some(Ok(_)) = o_b.recv() => opened_events[1] += 1,
            _ = tokio::time::sleep(Duration::from_millis(100)) => {}
        }
    }
    assert_eq!(
        opened_events,
        [2, 2],
        "DataChannelOpened fires twice, as on KMS 7.3"
    );
    assert_eq!(sim.media_set().webrtc_peers(), 2);
    pipeline.release().await.unwrap();
    assert_eq!(
        sim.media_set().webrtc_peers(),
        0,
        "released with the pipeline"
    );
}
