//! The client against the KMS simulator, over real sockets: negotiation with real RTP, ordering,
//! timeouts, recovery, restarts, concurrency, events and errors.

use std::net::UdpSocket;
use std::sync::Arc;
use std::time::{Duration, Instant};

use kms_sim::{Scenario, SimOptions, SimServer};
use kurento_client::prelude::*;
use kurento_client::{Error, ErrorCode, ReconnectPolicy};
use serde_json::json;

async fn sim() -> SimServer {
    sim_with(Scenario::builtin(), 0).await
}

async fn sim_with(scenario: Scenario, port: u16) -> SimServer {
    SimServer::start(SimOptions {
        listen: ([127, 0, 0, 1], port).into(),
        scenario,
        announce_ip: Some([127, 0, 0, 1].into()),
        port_range: (41000, 45999),
        ..Default::default()
    })
    .await
    .expect("simulator starts")
}

fn config(url: &str) -> ClientConfig {
    ClientConfig::new(url)
        .with_request_timeout(Duration::from_secs(5))
        .with_reconnect(ReconnectPolicy {
            initial_delay: Duration::from_millis(50),
            max_delay: Duration::from_millis(200),
            ..Default::default()
        })
}

async fn wait_for<F: Fn(&ConnectionState) -> bool>(
    client: &KurentoClient,
    f: F,
) -> ConnectionState {
    let mut rx = client.state();
    let state = tokio::time::timeout(Duration::from_secs(10), rx.wait_for(|s| f(s)))
        .await
        .expect("state reached in time")
        .expect("state channel open")
        .clone();
    state
}

/// Publishers of the built-in room, found the way a second client must: by their sendonly offer.
async fn publishers(kms: &KurentoClient) -> Vec<(MediaPipeline, WebRtcEndpoint)> {
    for _ in 0..50 {
        let mut found = Vec::new();
        for p in kms.server_manager().get_pipelines().await.unwrap() {
            for child in p.get_children().await.unwrap() {
                if let Some(ep) = child.downcast::<WebRtcEndpoint>() {
                    if let Ok(sdp) = ep.get_remote_session_descriptor().await {
                        if sdp.contains("a=sendonly") {
                            found.push((p.clone(), ep));
                        }
                    }
                }
            }
        }
        if found.len() >= 2 {
            return found;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the built-in room never showed two publishers");
}

fn even_port_pair() -> (UdpSocket, UdpSocket) {
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tap_a_publisher_and_receive_real_rtp() {
    let server = sim().await;
    let kms = KurentoClient::connect_with(config(&server.url()))
        .await
        .unwrap();
    let (room, publisher) = publishers(&kms).await.remove(0);
    assert!(publisher
        .is_media_flowing_out(MediaType::Video, ())
        .await
        .unwrap());
    assert!(
        !publisher
            .is_media_flowing_in(MediaType::Video, ())
            .await
            .unwrap(),
        "no self-loop in group-call"
    );
    let codec_sdp = publisher.get_local_session_descriptor().await.unwrap();
    assert!(codec_sdp.contains("VP8/90000"));

    let (video, _video_rtcp) = even_port_pair();
    let port = video.local_addr().unwrap().port();
    let tap = room.create::<RtpEndpoint>().await.unwrap();
    tap.add_tag("owner", "test").await.unwrap();
    let offer = format!(
        "v=0\r\no=- 0 0 IN IP4 127.0.0.1\r\ns=t\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=video {port} RTP/AVPF 97\r\na=rtpmap:97 VP8/90000\r\na=rtcp-fb:97 nack pli\r\na=rtcp-fb:97 ccm fir\r\na=recvonly\r\n"
    );
    let answer = tap.process_offer(&offer).await.unwrap();
    assert!(answer.contains("a=sendonly"), "{answer}");
    assert!(
        answer.contains("a=rtpmap:97 VP8/90000"),
        "payload type kept: {answer}"
    );
    assert!(answer.contains("a=rtcp:"), "{answer}");
    assert!(answer.contains("a=ssrc:"), "{answer}");
    // KMS raises ElementConnected on the source only.
    let mut connected = publisher.on::<ElementConnected>().await.unwrap();
    publisher.connect(&tap, MediaType::Video).await.unwrap();
    let ev = tokio::time::timeout(Duration::from_secs(5), connected.recv())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(ev.media_type, MediaType::Video);
    assert_eq!(ev.sink, tap.id());

    let received = tokio::task::spawn_blocking(move || {
        video
            .set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        let mut buf = [0u8; 2048];
        let (mut packets, mut first_pt) = (0, None);
        let deadline = Instant::now() + Duration::from_secs(3);
        while Instant::now() < deadline && packets < 20 {
            if let Ok(n) = video.recv(&mut buf) {
                assert!(n >= 12 && buf[0] >> 6 == 2, "an RTP v2 packet");
                first_pt.get_or_insert(buf[1] & 0x7f);
                packets += 1;
            }
        }
        (packets, first_pt)
    })
    .await
    .unwrap();
    assert!(received.0 >= 20, "got {} RTP packets", received.0);
    assert_eq!(received.1, Some(97), "payload type of our offer");

    let links = publisher
        .get_sink_connections(MediaType::Video)
        .await
        .unwrap();
    assert!(links.iter().any(|l| l.sink == tap.id()));
    assert_eq!(tap.get_tag("owner").await.unwrap(), "test");
    tap.release().await.unwrap();
    assert_eq!(
        server.media_set().active_senders(),
        0,
        "release stops the RTP"
    );
    // The app's endpoint is untouched.
    assert!(publisher
        .is_media_flowing_out(MediaType::Video, ())
        .await
        .unwrap());
}

#[tokio::test]
async fn answers_are_matched_out_of_order() {
    let server = sim().await;
    let kms = KurentoClient::connect_with(config(&server.url()))
        .await
        .unwrap();
    let manager = kms.server_manager();
    let slow_started = Instant::now();
    let slow = tokio::spawn({
        let manager = manager.clone();
        async move {
            manager.get_used_cpu(600).await.unwrap();
            Instant::now()
        }
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    kms.ping().await.unwrap();
    let ping_done = Instant::now();
    let slow_done = slow.await.unwrap();
    assert!(
        ping_done < slow_done,
        "the later request was answered first"
    );
    assert!(slow_done - slow_started >= Duration::from_millis(600));
}

#[tokio::test]
async fn requests_time_out_and_the_client_carries_on() {
    let server = sim().await;
    let kms = KurentoClient::connect_with(
        config(&server.url()).with_request_timeout(Duration::from_millis(300)),
    )
    .await
    .unwrap();
    let err = kms.server_manager().get_used_cpu(1500).await.unwrap_err();
    assert!(matches!(err, Error::Timeout { .. }), "{err}");
    kms.ping().await.unwrap();
    // The late answer arrives for a request nobody waits for any more: counted, not delivered.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(kms.stats().unknown_responses >= 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_socket_fails_pending_requests_and_recovers_the_session() {
    let server = sim().await;
    let kms = KurentoClient::connect_with(config(&server.url()))
        .await
        .unwrap();
    let session = kms.session_id().unwrap();
    let pipeline = kms.create_pipeline().await.unwrap();
    let mut created = kms.server_manager().on::<ObjectCreated>().await.unwrap();

    let pending = tokio::spawn({
        let m = kms.server_manager();
        async move { m.get_used_cpu(2000).await }
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    server.drop_connections();
    let err = pending.await.unwrap().unwrap_err();
    assert!(matches!(err, Error::ConnectionLost { .. }), "{err}");

    let state = wait_for(
        &kms,
        |s| matches!(s, ConnectionState::Connected { generation, .. } if *generation >= 2),
    )
    .await;
    match state {
        ConnectionState::Connected {
            recovery,
            session_id,
            ..
        } => {
            assert_eq!(recovery, Recovery::SameSession);
            assert_eq!(session_id, session);
        }
        other => panic!("{other:?}"),
    }
    // Objects and subscriptions survive a same-session recovery.
    pipeline.set_name("still-here").await.unwrap();
    assert_eq!(pipeline.get_name().await.unwrap(), "still-here");
    let second = kms.create_pipeline().await.unwrap();
    assert_ne!(
        second.id(),
        pipeline.id(),
        "a new request id, not a cached answer"
    );
    let ev = loop {
        let ev = tokio::time::timeout(Duration::from_secs(5), created.recv())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        if ev.object == second.id() {
            break ev;
        }
    };
    assert_eq!(ev.source, kurento_client::SERVER_MANAGER_ID);
    assert!(ev.timestamp_millis.parse::<u64>().is_ok());
    assert_eq!(kms.stats().reconnects, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_server_is_detected_as_new() {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let first = sim_with(Scenario::default(), port).await;
    let kms = KurentoClient::connect_with(config(&first.url()))
        .await
        .unwrap();
    let old_server = match kms.state().borrow().clone() {
        ConnectionState::Connected { server_id, .. } => server_id.unwrap(),
        other => panic!("{other:?}"),
    };
    let old = kms.create_pipeline().await.unwrap();
    let mut created = kms.server_manager().on::<ObjectCreated>().await.unwrap();
    first.stop();
    drop(first);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let second = sim_with(Scenario::default(), port).await;
    let state = wait_for(
        &kms,
        |s| matches!(s, ConnectionState::Connected { generation, .. } if *generation >= 2),
    )
    .await;
    let ConnectionState::Connected {
        recovery,
        server_id,
        ..
    } = state
    else {
        unreachable!()
    };
    assert_eq!(recovery, Recovery::NewServer);
    assert_ne!(server_id.unwrap(), old_server);
    let err = old.get_name().await.unwrap_err();
    assert_eq!(
        err.code(),
        Some(ErrorCode::MediaObjectNotFound),
        "old handles are stale: {err}"
    );
    // The ServerManager subscription was made again on the new server.
    let fresh = kms.create_pipeline().await.unwrap();
    let ev = tokio::time::timeout(Duration::from_secs(5), created.recv())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(ev.object, fresh.id());
    drop(second);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_concurrent_requests() {
    let server = sim_with(Scenario::default(), 0).await;
    let kms = KurentoClient::connect_with(
        config(&server.url()).with_request_timeout(Duration::from_secs(30)),
    )
    .await
    .unwrap();
    let pipeline = kms.create_pipeline().await.unwrap();
    let mut tasks = Vec::new();
    for i in 0..1000 {
        let p = pipeline.clone();
        tasks.push(tokio::spawn(async move {
            let key = format!("k{i}");
            p.add_tag(&key, &i.to_string()).await.unwrap();
            p.get_tag(&key).await.unwrap()
        }));
    }
    for (i, t) in tasks.into_iter().enumerate() {
        assert_eq!(t.await.unwrap(), i.to_string());
    }
    assert_eq!(pipeline.get_tags().await.unwrap().len(), 1000);
}

#[tokio::test]
async fn events_fan_out_to_every_subscriber() {
    let server = sim_with(Scenario::default(), 0).await;
    let kms = KurentoClient::connect_with(config(&server.url()))
        .await
        .unwrap();
    let manager = kms.server_manager();
    let mut a = manager.on::<ObjectCreated>().await.unwrap();
    let mut b = manager.on::<ObjectCreated>().await.unwrap();
    let mut destroyed = manager.on::<ObjectDestroyed>().await.unwrap();
    let p = kms.create_pipeline().await.unwrap();
    for s in [&mut a, &mut b] {
        let ev = tokio::time::timeout(Duration::from_secs(5), s.recv())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(ev.object, p.id());
    }
    drop(a);
    let q = kms.create_pipeline().await.unwrap();
    let ev = tokio::time::timeout(Duration::from_secs(5), b.recv())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(ev.object, q.id(), "the remaining subscriber still receives");
    q.release().await.unwrap();
    let ev = tokio::time::timeout(Duration::from_secs(5), destroyed.recv())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(ev.object_id, q.id());
}

#[tokio::test]
async fn server_errors_are_typed_and_kept() {
    let server = sim_with(Scenario::default(), 0).await;
    let kms = KurentoClient::connect_with(config(&server.url()))
        .await
        .unwrap();
    let p = kms.create_pipeline().await.unwrap();
    let code = |e: Error| e.code().unwrap();

    let e = kms
        .invoke(p.id(), "getNotExisting", serde_json::Value::Null)
        .await
        .unwrap_err();
    match &e {
        Error::Server(s) => {
            assert_eq!(s.code, ErrorCode::MalformedTransaction);
            assert_eq!(
                s.message,
                "Method 'getNotExisting' with 0 parameters not found"
            );
            assert_eq!(s.data, Some(json!({"type": "MALFORMED_TRANSACTION"})));
        }
        other => panic!("{other}"),
    }
    assert_eq!(
        code(kms.create_raw("NoSuchThing", json!({})).await.unwrap_err()),
        ErrorCode::MediaObjectNotAvailable
    );
    assert_eq!(
        code(p.get_tag("missing").await.unwrap_err()),
        ErrorCode::MediaObjectTagKeyNotFound
    );
    assert_eq!(
        code(
            kms.subscribe_raw(p.id(), "NoSuchEvent")
                .await
                .err()
                .unwrap()
        ),
        ErrorCode::MediaObjectEventNotSupported
    );
    let rtp = p.create::<RtpEndpoint>().await.unwrap();
    assert_eq!(
        code(rtp.get_remote_session_descriptor().await.unwrap_err()),
        ErrorCode::SdpEndPointNoRemoteSdpError
    );
    assert_eq!(
        code(rtp.request_keyframe().await.unwrap_err()),
        ErrorCode::MediaObjectOperationNotSupported
    );
    let offer = "v=0\r\no=- 0 0 IN IP4 127.0.0.1\r\ns=t\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio 49170 RTP/AVP 111\r\na=rtpmap:111 opus/48000/2\r\na=recvonly\r\n";
    rtp.process_offer(offer).await.unwrap();
    assert_eq!(
        code(rtp.process_offer(offer).await.unwrap_err()),
        ErrorCode::SdpEndPointAlreadyNegotiated
    );
    rtp.release().await.unwrap();
    rtp.release()
        .await
        .expect("releasing twice succeeds, as in KMS");
    assert_eq!(
        code(rtp.get_name().await.unwrap_err()),
        ErrorCode::MediaObjectNotFound
    );
    // Typed handles are checked against the id's type.
    assert!(matches!(
        kms.object::<RtpEndpoint>(p.id()),
        Err(Error::WrongType { .. })
    ));
    assert!(kms.describe_as::<MediaPipeline>(p.id()).await.is_ok());
    let d = kms.describe(p.id()).await.unwrap();
    assert_eq!(d.qualified_type, "kurento.MediaPipeline");
    assert_eq!(d.hierarchy, vec!["kurento.MediaObject"]);
}

#[tokio::test]
async fn a_transaction_creates_negotiates_and_connects_in_one_round_trip() {
    let server = sim_with(Scenario::default(), 0).await;
    let kms = KurentoClient::connect_with(config(&server.url()))
        .await
        .unwrap();
    let p = kms.create_pipeline().await.unwrap();
    let source = p.create::<WebRtcEndpoint>().await.unwrap();
    let offer = "v=0\r\no=- 0 0 IN IP4 127.0.0.1\r\ns=t\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=video 49170 RTP/AVPF 96\r\na=rtpmap:96 VP8/90000\r\na=recvonly\r\n";
    let mut tx = kms.transaction();
    let tap = tx.create(RtpEndpoint::builder(&p)).unwrap();
    tx.invoke(&tap, "processOffer", json!({ "offer": offer }));
    tx.invoke(
        &source,
        "connect",
        json!({"sink": tap.newref(), "mediaType": "VIDEO"}),
    );
    let results = tx.commit().await.unwrap();
    results.check().unwrap();
    let tap = results.object(&tap).unwrap();
    assert!(results.value(1).unwrap().as_str().unwrap().contains("VP8"));
    let links = tap.get_source_connections(()).await.unwrap();
    assert_eq!(links.len(), 1);
    assert_eq!(links[0].source, source.id());

    // KMS stops at the first failure; the caller learns where, and can release what was created.
    let mut tx = kms.transaction();
    let extra = tx.create(RtpEndpoint::builder(&p)).unwrap();
    tx.invoke(&extra, "noSuchOperation", serde_json::Value::Null);
    tx.invoke(&extra, "addTag", json!({"key": "k", "value": "v"}));
    let results = tx.commit().await.unwrap();
    match results.check().unwrap_err() {
        Error::TransactionFailed { index, error } => {
            assert_eq!(index, 1);
            assert_eq!(error.code, ErrorCode::MalformedTransaction);
        }
        other => panic!("{other}"),
    }
    assert_eq!(
        results.results().len(),
        2,
        "the third operation did not run"
    );
    results.object(&extra).unwrap().release().await.unwrap();
}

#[tokio::test]
async fn server_manager_lists_sessions_without_padding() {
    let server = sim().await;
    let kms = KurentoClient::connect_with(config(&server.url()))
        .await
        .unwrap();
    let raw = kms.server_manager().get_sessions().await.unwrap();
    assert!(
        raw.iter().any(String::is_empty),
        "the simulator pads like KMS: {raw:?}"
    );
    let sessions: Vec<_> = raw.into_iter().filter(|s| !s.is_empty()).collect();
    assert!(sessions.contains(&kms.session_id().unwrap()));
    let info = kms.server_manager().get_info().await.unwrap();
    assert_eq!(info.r#type, ServerType::Kms);
    assert!(info.capabilities.contains(&"transactions".to_owned()));
    assert!(kms.server_manager().get_used_memory().await.unwrap() > 0);
    let _ = Arc::new(kms);
}

#[tokio::test]
async fn close_fails_nothing_silently() {
    let server = sim_with(Scenario::default(), 0).await;
    let kms = KurentoClient::connect_with(config(&server.url()))
        .await
        .unwrap();
    let mut stream = kms.server_manager().on::<ObjectCreated>().await.unwrap();
    kms.close().await;
    assert!(matches!(kms.ping().await, Err(Error::Closed)));
    assert!(stream.recv().await.is_none(), "event streams end on close");
}
