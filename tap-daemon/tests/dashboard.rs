//! The live dashboard in headless Chromium (Debian's `chromium`, installed by scripts/setup), driven
//! over the DevTools protocol: the page served by the daemon shows the room and its participants,
//! and its values update. A screenshot is saved as a test artefact (target/artefacts/dashboard.png).

use std::path::PathBuf;
use std::time::Duration;

use futures_util::StreamExt;
use serde_json::json;
use tap_protocol::PixelFormat;
use tap_test_support::browser::{launch, open_page, serve_dir};
use tap_test_support::prelude::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_shows_participants_and_updates() {
    let h = Harness::new()
        .scenario("[[room]]\nname='standup'\n[[room.participant]]\nname='ana'\nvideo={}\n[[room.participant]]\nname='ben'\nvideo={pattern='snow'}\n")
        .sim_ports(35000..=35499)
        .tap_ports(35500..=35999)
        .start()
        .await;
    let client = h.client().await;
    h.wait_taps(2).await;
    let mut spec = video_spec("mood", Some(5.0), None, 64, 48, PixelFormat::Rgb24);
    spec.quality = Some(tap_protocol::ModelQuality {
        dataset: "a test set".into(),
        metric: "balanced accuracy".into(),
        value: 0.56,
        classes: 6,
    });
    let (_seen, _w) = worker(&client, &spec.id, Duration::ZERO).await;
    let _reg = Registration::new(&client, spec).await;

    let browser = launch(&format!("http://{}/", h.http()), &[]);
    let mut page = open_page(&browser).await;
    let mut first = 0u64;
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(200)).await;
        first = page
            .eval("Number(document.body.dataset.results || 0)")
            .await
            .as_u64()
            .unwrap_or(0);
        if first > 0
            && page
                .eval("document.querySelectorAll('[data-participant]').length")
                .await
                == json!(2)
        {
            break;
        }
    }
    assert!(first > 0, "the page received results");
    assert_eq!(
        page.eval("document.querySelector('[data-room]').dataset.room")
            .await,
        json!("standup")
    );
    let names = page.eval("[...document.querySelectorAll('[data-participant]')].map(e => e.dataset.participant).join(',')").await;
    assert_eq!(names, json!("ana,ben"));
    let shown = page.eval("document.querySelector('[data-participant=\"ana\"] [data-field=\"video-top\"]').textContent").await;
    assert!(
        shown.as_str().unwrap_or_default().starts_with("a "),
        "the worker's top label is shown: {shown}"
    );
    assert_eq!(
        page.eval("document.getElementById('status').textContent")
            .await,
        json!("live")
    );
    // The model's declared accuracy is shown with its answers (from GET /models).
    let mut caption = json!(null);
    for _ in 0..50 {
        caption = page.eval("document.querySelector('[data-participant=\"ana\"] [data-field=\"quality\"]').textContent").await;
        if caption == json!("right 56% (balanced accuracy, chance 17%)") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(caption, json!("right 56% (balanced accuracy, chance 17%)"));
    let models = http_get(h.http(), "/models").await;
    assert!(
        models.contains("\"quality\":{\"dataset\":\"a test set\""),
        "{models}"
    );

    tokio::time::sleep(Duration::from_secs(2)).await;
    let later = page
        .eval("Number(document.body.dataset.results)")
        .await
        .as_u64()
        .unwrap();
    assert!(later > first + 5, "values update: {first} then {later}");

    assert!(page.screenshot("dashboard.png").await > 5_000);

    // The overlay (examples/group-call-overlay) fed by the NATS relay path: this test plays the
    // application's signaling server, forwarding results from NATS to the page.
    let overlay =
        serve_dir(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../examples/group-call-overlay"))
            .await;
    page.call(
        "Page.navigate",
        json!({ "url": format!("http://{overlay}/index.html") }),
    )
    .await;
    for _ in 0..50 {
        if page.eval("typeof KurentoTapOverlay").await == json!("object") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut relay = client.subscribe("tap.v1.result.standup.>").await.unwrap();
    let mut shown = 0;
    while shown < 6 {
        let msg = tokio::time::timeout(Duration::from_secs(5), relay.next())
            .await
            .unwrap()
            .unwrap();
        let body = String::from_utf8(msg.payload.to_vec()).unwrap();
        if page.eval(&format!("KurentoTapOverlay.show({body})")).await == json!(true) {
            shown += 1;
        }
    }
    for who in ["ana", "ben"] {
        let badge = page.eval(&format!("document.querySelector('.kurento-tap-badge[data-participant=\"{who}\"]').textContent")).await;
        assert!(
            badge.as_str().unwrap_or_default().contains("a 75%"),
            "{who}: {badge}"
        );
    }
    page.screenshot("overlay.png").await;
    drop(browser);
    h.stop().await;
}
