//! The presenter's view end to end on kms-sim: a room of four, the presenter named by a tag; a face
//! model that declares its labels' meaning; room moods on NATS (and kept in JetStream), into the
//! presenter's DataChannel only; everyone else gets their own results and state, nobody else's.

use std::time::{Duration, Instant};

use async_nats::jetstream;
use futures_util::StreamExt;
use tap_protocol::affect::{fer2013_declaration, ParticipantState, RoomMood, AFFECT_STREAM};
use tap_protocol::{chunk_subject, queue_group, ChunkMeta, ModelId, PixelFormat, WorkerReply};
use tap_test_support::browser;
use tap_test_support::prelude::*;

const SCENARIO: &str = "
[[room]]
name = 'talk'
[[room.participant]]
name = 'pat'
video = { width = 160, height = 120, fps = 10 }
data_channels = true
extra_tags = { 'kurento-tap.role' = 'presenter', 'kurento-tap.participant' = 'pat' }
[[room.participant]]
name = 'ana'
video = { width = 160, height = 120, fps = 10 }
data_channels = true
extra_tags = { 'kurento-tap.participant' = 'ana' }
[[room.participant]]
name = 'ben'
video = { width = 160, height = 120, fps = 10 }
extra_tags = { 'kurento-tap.participant' = 'ben' }
[[room.participant]]
name = 'cyd'
video = { width = 160, height = 120, fps = 10 }
extra_tags = { 'kurento-tap.participant' = 'cyd' }
";

/// A face model whose answer depends on who is on camera: the presenter looks sad, the audience
/// happy (so the aggregate shows whether the presenter was left out).
async fn face_worker(client: &async_nats::Client) -> tokio::task::JoinHandle<()> {
    let model = ModelId::new("face", "1");
    let mut sub = client
        .queue_subscribe(chunk_subject(&model), queue_group(&model))
        .await
        .unwrap();
    let client = client.clone();
    tokio::spawn(async move {
        while let Some(msg) = sub.next().await {
            let headers = msg.headers.clone().unwrap_or_default();
            let Ok(meta) =
                ChunkMeta::from_headers(|k| headers.get(k).map(|v| v.as_str()), msg.payload.len())
            else {
                continue;
            };
            let labels = if meta.participant == "pat" {
                [("sad".to_owned(), 0.9), ("neutral".to_owned(), 0.1)]
            } else {
                [("happy".to_owned(), 0.9), ("neutral".to_owned(), 0.1)]
            };
            let body = WorkerReply {
                labels: labels.into(),
                extras: serde_json::json!({"no_face": false, "attentive": meta.participant != "cyd"}),
                ..Default::default()
            };
            if let Some(reply) = msg.reply {
                let _ = client
                    .publish(reply, serde_json::to_vec(&body).unwrap().into())
                    .await;
            }
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_presenter_sees_the_room_mood_and_the_audience_only_itself() {
    let nats = Nats::start().await;
    let client = async_nats::connect(&nats.url).await.unwrap();
    let mut spec = video_spec("face", Some(5.0), None, 64, 48, PixelFormat::Rgb24);
    spec.labels = fer2013_declaration().labels.keys().cloned().collect();
    spec.affect = Some(fer2013_declaration());
    let _reg = Registration::new(&client, spec).await;
    let _worker = face_worker(&client).await;
    let mut moods = client.subscribe("tap.v1.room.>").await.unwrap();
    let mut states = client.subscribe("tap.v1.state.talk.*").await.unwrap();

    let h = Harness::new()
        .nats(nats)
        .scenario(SCENARIO)
        .sim_ports(57000..=57499)
        .tap_ports(57500..=57999)
        .configure(|c| c.datachannel.ice_ports = Some((58000, 58099)))
        .start()
        .await;
    let taps = h.wait_taps(4).await;
    let endpoint = |name: &str| {
        taps.iter()
            .find(|t| t.participant == name)
            .unwrap_or_else(|| panic!("{name} tapped: {taps:?}"))
            .endpoint
            .clone()
    };

    // The room mood on NATS: the presenter named by the tag, left out of the aggregate.
    let deadline = Instant::now() + Duration::from_secs(40);
    let mood = loop {
        let Ok(Some(msg)) = tokio::time::timeout_at(deadline.into(), moods.next()).await else {
            panic!("no published room mood; metrics:\n{}", h.metrics().await);
        };
        let m: RoomMood = serde_json::from_slice(&msg.payload).expect("room mood v1");
        if m.published && m.contributors == 3 {
            break m;
        }
    };
    assert_eq!(mood.room, "talk");
    assert_eq!(mood.presenter.as_deref(), Some("pat"), "{mood:?}");
    assert_eq!(mood.presenter_source.as_deref(), Some("tag"));
    assert_eq!(mood.participants, 3);
    assert_eq!(mood.emotions.get("happy"), Some(&3), "{mood:?}");
    assert!(
        (mood.valence.unwrap() - 0.72).abs() < 0.05,
        "the presenter's sadness is not in the mean: {mood:?}"
    );
    assert!(
        (mood.attentive_share.unwrap() - 2.0 / 3.0).abs() < 0.01,
        "{mood:?}"
    );

    // Per-participant states on NATS, each about one participant.
    let msg = tokio::time::timeout(Duration::from_secs(5), states.next())
        .await
        .unwrap()
        .unwrap();
    let s: ParticipantState = serde_json::from_slice(&msg.payload).unwrap();
    assert_eq!(
        msg.subject.as_str(),
        format!("tap.v1.state.talk.{}", s.participant)
    );

    // Kept in JetStream: the room timeline can be read back.
    let js = jetstream::new(client.clone());
    let mut stream = js.get_stream(AFFECT_STREAM).await.unwrap();
    let info = stream.info().await.unwrap();
    assert!(info.state.messages > 0, "{info:?}");
    let last = stream
        .get_last_raw_message_by_subject("tap.v1.room.talk")
        .await
        .unwrap();
    let stored: RoomMood = serde_json::from_slice(&last.payload).unwrap();
    assert_eq!(stored.room, "talk");

    // DataChannels: pat receives room moods; ana receives her own results and state only.
    let (pat, ana) = (endpoint("pat"), endpoint("ana"));
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (p, _) = h.sim.media_set().data_received(&pat);
        let (a, _) = h.sim.media_set().data_received(&ana);
        let rooms = p
            .iter()
            .filter(|t| t.contains("\"kurento-tap.room\""))
            .count();
        let own = a
            .iter()
            .filter(|t| t.contains("\"kurento-tap.state\""))
            .count();
        if rooms >= 2 && own >= 2 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "pat got {rooms} room moods, ana {own} states; metrics:\n{}",
            h.metrics().await
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for text in h.sim.media_set().data_received(&ana).0 {
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_ne!(
            v["type"], "kurento-tap.room",
            "the audience gets no room mood"
        );
        assert_eq!(v["participant"], "ana", "only about herself: {text}");
    }
    for text in h.sim.media_set().data_received(&pat).0 {
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        if v["type"] == "kurento-tap.room" {
            let m: RoomMood = serde_json::from_value(v).unwrap();
            assert_eq!(m.presenter.as_deref(), Some("pat"));
        }
    }
    // The dashboard: the room's mood with its timeline (loaded from history when the page opens),
    // and each participant's fused state.
    let browser = browser::launch(&format!("http://{}/", h.http()), &[]);
    let mut page = browser::open_page(&browser).await;
    let mut shown = serde_json::Value::Null;
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(200)).await;
        shown = page
            .eval("(document.querySelector('[data-mood=\"talk\"] [data-field=\"mood-valence\"]') || {}).textContent || null")
            .await;
        if shown.is_string() {
            break;
        }
    }
    assert!(
        shown
            .as_str()
            .unwrap_or_default()
            .starts_with("valence 0.7"),
        "the room mood on the dashboard: {shown}"
    );
    assert!(
        page.wait_for(
            "Number(document.body.dataset.history) >= 2",
            Duration::from_secs(10)
        )
        .await,
        "moods loaded at open: {}",
        page.eval("document.body.dataset.history").await
    );
    assert!(
        page.wait_for(
            "Number((document.querySelector('[data-timeline=\"talk\"]') || {dataset: {}}).dataset.points) >= 2",
            Duration::from_secs(10)
        )
        .await
    );
    assert_eq!(
        page.eval(
            "document.querySelector('[data-mood=\"talk\"] [data-emotion=\"happy\"]') !== null"
        )
        .await,
        serde_json::json!(true)
    );
    // States come once a second over the event stream (the mood may have come from history).
    assert!(
        page.wait_for(
            "document.querySelector('[data-participant=\"ana\"] [data-field=\"state\"]') !== null",
            Duration::from_secs(10)
        )
        .await
    );
    let ana_state = page
        .eval("document.querySelector('[data-participant=\"ana\"] [data-field=\"state\"]').textContent")
        .await;
    assert!(
        ana_state.as_str().unwrap_or_default().starts_with("happy"),
        "{ana_state}"
    );
    assert!(page.screenshot("dashboard-mood.png").await > 5_000);
    drop(browser);

    // A control request names another presenter: it wins over the tag.
    let answer = client
        .request(
            tap_protocol::affect::CTL_PRESENTER,
            r#"{"room":"talk","participant":"ben"}"#.into(),
        )
        .await
        .unwrap();
    assert_eq!(answer.payload.as_ref(), br#"{"ok":true}"#);
    let bad = client
        .request(tap_protocol::affect::CTL_PRESENTER, "{nope".into())
        .await
        .unwrap();
    assert!(String::from_utf8_lossy(&bad.payload).contains("\"ok\":false"));
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let Ok(Some(msg)) = tokio::time::timeout_at(deadline.into(), moods.next()).await else {
            panic!("no room mood with the presenter named by control");
        };
        let m: RoomMood = serde_json::from_slice(&msg.payload).unwrap();
        if m.presenter.as_deref() == Some("ben") {
            assert_eq!(m.presenter_source.as_deref(), Some("control"));
            // pat is in the audience now, with a sad face.
            assert_eq!(m.emotions.get("sad"), Some(&1), "{m:?}");
            break;
        }
    }

    let metrics = h.metrics().await;
    assert!(
        metrics.contains("kurento_tap_affect_results_total{outcome=\"fused\"}"),
        "{metrics}"
    );
    assert!(metrics.contains("kurento_tap_room_moods_total{outcome=\"published\"}"));
    h.stop().await;
}

/// `kurento-tap mood` on its own: results from NATS (any daemon's), a presenter passed on as a tag,
/// hostile messages skipped; the room timeline exported as CSV.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_standalone_fusion_reads_any_daemons_results_and_the_timeline_exports() {
    use tap_protocol::{MediaKind, ResultMessage};
    let nats = Nats::start().await;
    let client = async_nats::connect(&nats.url).await.unwrap();
    let mut spec = video_spec("face", Some(5.0), None, 64, 48, PixelFormat::Rgb24);
    spec.affect = Some(fer2013_declaration());
    let _reg = Registration::new(&client, spec).await;
    let mut moods = client.subscribe("tap.v1.room.hall").await.unwrap();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let metrics = std::sync::Arc::new(tap_daemon::metrics::Metrics::new());
    let fusion = tokio::spawn(tap_daemon::mood::run_standalone(
        client.clone(),
        tap_daemon::mood::MoodSettings::default(),
        metrics.clone(),
        async {
            let _ = stop_rx.await;
        },
    ));
    // The registry watch needs a moment to see the model.
    tokio::time::sleep(Duration::from_millis(800)).await;
    // A daemon elsewhere passes on its presenter tag.
    client
        .publish(
            tap_protocol::affect::CTL_PRESENTER,
            r#"{"room":"hall","participant":"pat","source":"tag"}"#.into(),
        )
        .await
        .unwrap();
    let publish = |who: &'static str, t: f64, happy: f64| {
        let client = client.clone();
        async move {
            let r = ResultMessage {
                v: 1,
                room: "hall".into(),
                participant: who.into(),
                endpoint: String::new(),
                kms: None,
                model: "face".into(),
                version: "1".into(),
                media: MediaKind::Video,
                seq: 0,
                capture_ms: t,
                output: WorkerReply {
                    labels: [("happy".to_owned(), happy), ("sad".to_owned(), 1.0 - happy)].into(),
                    ..Default::default()
                },
                latency_ms: 0.0,
                round_trip_ms: 0.0,
            };
            client
                .publish(
                    format!("tap.v1.result.hall.{who}.face_1"),
                    serde_json::to_vec(&r).unwrap().into(),
                )
                .await
                .unwrap();
        }
    };
    // Garbage on a result subject: skipped and counted.
    client
        .publish("tap.v1.result.hall.x.face_1", "{not json".into())
        .await
        .unwrap();
    let start = now_ms() as f64;
    let deadline = Instant::now() + Duration::from_secs(20);
    let mood = 'wait: loop {
        let t = now_ms() as f64;
        for who in ["ana", "ben", "cyd"] {
            publish(who, t, 0.9).await;
        }
        publish("pat", t, 0.1).await;
        while let Ok(Some(msg)) =
            tokio::time::timeout(Duration::from_millis(200), moods.next()).await
        {
            let m: RoomMood = serde_json::from_slice(&msg.payload).unwrap();
            if m.published && m.presenter.as_deref() == Some("pat") && t - start > 2000.0 {
                break 'wait m;
            }
        }
        assert!(
            Instant::now() < deadline,
            "no room mood from the standalone fusion"
        );
    };
    assert_eq!(mood.presenter_source.as_deref(), Some("tag"));
    assert_eq!((mood.participants, mood.contributors), (3, 3));
    assert_eq!(mood.emotions.get("happy"), Some(&3), "{mood:?}");
    let m = metrics.encode();
    assert!(
        m.contains("kurento_tap_affect_results_total{outcome=\"undecodable\"} 1"),
        "{m}"
    );

    // The room timeline, exported as CSV.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut csv = Vec::new();
    let n = tap_daemon::control::results::export(
        client.clone(),
        tap_daemon::control::results::Kind::Room,
        Some("hall"),
        Some(tap_daemon::control::results::parse_since("10m").unwrap()),
        false,
        tap_daemon::control::results::Format::Csv,
        &mut csv,
    )
    .await
    .unwrap();
    let text = String::from_utf8(csv).unwrap();
    assert!(n >= 1, "{text}");
    assert!(text
        .starts_with("at_ms,room,presenter,presenter_source,participants,contributors,published,"));
    assert!(text.contains(",hall,pat,tag,3,3,true,"), "{text}");
    assert!(text.contains("happy=3"), "{text}");
    assert!(tap_daemon::control::results::parse_since("10x").is_err());
    let _ = stop_tx.send(());
    fusion.await.unwrap().unwrap();
}
