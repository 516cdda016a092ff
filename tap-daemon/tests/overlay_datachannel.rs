//! The whole DataChannel path with a real browser at the end: headless Chromium is the participant
//! "ana" (a data channel created before its offer, as kurento-utils does with `dataChannels:
//! true`), negotiated through kms-sim by this test acting as the application's signaling server;
//! kurento-tap puts the results of both participants (audience = room) into ana's channel, and the
//! overlay (examples/group-call-overlay) shows them. Screenshot: target/artefacts/overlay-datachannel.png.

use std::path::PathBuf;
use std::time::Duration;

use kurento_client::prelude::*;
use serde_json::json;
use tap_daemon::inject::Audience;
use tap_protocol::PixelFormat;
use tap_test_support::browser::{launch, open_page, serve_dir};
use tap_test_support::prelude::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_overlay_shows_results_received_on_its_datachannel() {
    let mut staged = Harness::new()
        .scenario("[[room]]\nname='live'\n[[room.participant]]\nname='ana'\nvideo={width=160,height=120}\ndata_channels=true\nextra_tags={'kurento-tap.role'='presenter'}\n[[room.participant]]\nname='ben'\nvideo={width=160,height=120,pattern='snow'}\ndata_channels=true\n")
        .sim_ports(36000..=36499)
        .tap_ports(36500..=36999)
        .start_sim()
        .await;
    let client = async_nats::connect(&staged.nats.url).await.unwrap();
    let mut spec = video_spec("mood", Some(5.0), None, 64, 48, PixelFormat::Rgb24);
    // The test worker's labels `a` and `b`, declared for the fusion.
    let point = |v: f64, a: f64| tap_protocol::affect::AffectPoint {
        valence: Some(v),
        arousal: Some(a),
    };
    spec.affect = Some(tap_protocol::affect::AffectDeclaration {
        modality: tap_protocol::affect::Modality::Face,
        labels: [
            ("a".to_owned(), point(0.6, 0.5)),
            ("b".to_owned(), point(-0.4, 0.3)),
        ]
        .into(),
        emotions: vec!["a".into(), "b".into()],
        speech_label: None,
    });
    let (_seen, _w) = worker(&client, &spec.id, Duration::ZERO).await;
    let _reg = Registration::new(&client, spec).await;
    staged.config.datachannel.audience = Audience::Room;
    // ana presents (tag); ben alone is the audience here.
    staged.config.mood.engine.min_group = 1;
    let h = staged.start_daemon().await;
    let taps = h.wait_taps(2).await;
    let ana = taps.iter().find(|t| t.participant == "ana").unwrap();

    // The page: the overlay with a tile per participant, plus the browser side of ana's call.
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../examples/group-call-overlay");
    let site = serve_dir(dir).await;
    let browser = launch(
        &format!("http://{site}/index.html"),
        // Host candidates as addresses (KMS cannot resolve mDNS names either).
        &["--disable-features=WebRtcHideLocalIpsWithMdns"],
    );
    let mut page = open_page(&browser).await;
    assert!(
        page.wait_for(
            "typeof KurentoTapOverlay === 'object'",
            Duration::from_secs(10)
        )
        .await
    );
    let offer = page
        .eval_async(
            "(async () => {
               window.pc = new RTCPeerConnection();
               window.localCandidates = [];
               pc.onicecandidate = e => { if (e.candidate) localCandidates.push(e.candidate.toJSON()); };
               const dc = pc.createDataChannel('kurento-tap');
               dc.onmessage = KurentoTapOverlay.onDataChannelMessage;
               dc.onopen = () => { document.body.dataset.channel = 'open'; };
               await pc.setLocalDescription(await pc.createOffer());
               return pc.localDescription.sdp;
             })()",
        )
        .await;
    let offer = offer.as_str().expect("an offer").to_owned();
    assert!(offer.contains("m=application"), "{offer}");

    // The signaling server's part: processOffer, candidates both ways through the KMS API.
    let answer = h
        .sim
        .media_set()
        .connect_browser(&ana.endpoint, &offer)
        .await
        .unwrap();
    page.eval_async(&format!(
        "pc.setRemoteDescription({{type: 'answer', sdp: {}}}).then(() => true)",
        json!(answer)
    ))
    .await;
    let app = KurentoClient::connect(&h.sim.url()).await.unwrap();
    let ana_ep: WebRtcEndpoint = app.object(&ana.endpoint).unwrap();
    let mut kms_candidates = ana_ep.on::<IceCandidateFound>().await.unwrap();
    ana_ep.gather_candidates().await.unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        while let Ok(Some(Ok(ev))) =
            tokio::time::timeout(Duration::from_millis(50), kms_candidates.recv()).await
        {
            let c = json!({"candidate": ev.candidate.candidate, "sdpMid": ev.candidate.sdp_mid,
                "sdpMLineIndex": ev.candidate.sdp_m_line_index});
            page.eval_async(&format!("pc.addIceCandidate({c}).then(() => true)"))
                .await;
        }
        let mine = page.eval("localCandidates.splice(0)").await;
        for c in mine.as_array().into_iter().flatten() {
            ana_ep
                .add_ice_candidate(&IceCandidate {
                    candidate: c["candidate"].as_str().unwrap_or_default().to_owned(),
                    sdp_mid: c["sdpMid"].as_str().unwrap_or_default().to_owned(),
                    sdp_m_line_index: c["sdpMLineIndex"].as_i64().unwrap_or(0) as i32,
                })
                .await
                .unwrap();
        }
        let shown = page
            .eval("[...document.querySelectorAll('.kurento-tap-badge')].every(b => b.textContent.includes('a 75%'))")
            .await;
        if shown == json!(true) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "channel {:?}, badges {:?}",
            page.eval("document.body.dataset.channel").await,
            page.eval(
                "[...document.querySelectorAll('.kurento-tap-badge')].map(b => b.textContent)"
            )
            .await
        );
    }
    assert_eq!(
        page.eval("document.body.dataset.channel").await,
        json!("open")
    );
    // Both tiles updated from ana's one channel: results about ben reach ana (audience = room).
    for who in ["ana", "ben"] {
        let updated = page
            .eval(&format!(
                "Number(document.querySelector('.kurento-tap-badge[data-participant=\"{who}\"]').dataset.updated || 0)"
            ))
            .await;
        assert!(updated.as_f64().unwrap_or(0.0) > 0.0, "{who}: {updated}");
    }
    // ana presents: her channel also carries the room mood, drawn as the bar at the top.
    assert!(
        page.wait_for(
            "(document.querySelector('.kurento-tap-room') || {dataset: {}}).dataset.published === 'true'",
            Duration::from_secs(15)
        )
        .await,
        "room bar: {:?}",
        page.eval("(document.querySelector('.kurento-tap-room') || {}).textContent").await
    );
    let valence = page
        .eval("Number(document.querySelector('.kurento-tap-room').dataset.valence)")
        .await;
    // ben's face is `a` 0.75 / `b` 0.25: valence 0.75·0.6 + 0.25·(−0.4) = 0.35.
    assert!(
        (valence.as_f64().unwrap_or(9.0) - 0.35).abs() < 0.05,
        "{valence}"
    );
    page.screenshot("overlay-datachannel.png").await;
    drop(browser);
    h.stop().await;
}
