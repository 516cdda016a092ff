//! The presenter's view end to end on kms-sim: a room of four, the presenter named by a tag; a face
//! model that declares its labels' meaning; room moods on NATS (and kept in JetStream), into the
//! presenter's DataChannel only; everyone else gets their own results and state, nobody else's.

mod support;

use std::time::{Duration, Instant};

use async_nats::jetstream;
use futures_util::StreamExt;
use support::*;
use tap_daemon::Daemon;
use tap_protocol::affect::{fer2013_declaration, ParticipantState, RoomMood, AFFECT_STREAM};
use tap_protocol::{chunk_subject, queue_group, ChunkMeta, ModelId, PixelFormat, WorkerReply};

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

    let sim = sim(SCENARIO, (57000, 57499)).await;
    let mut cfg = config(&sim, &nats, (57500, 57999));
    cfg.datachannel.ice_ports = Some((58000, 58099));
    let daemon = Daemon::start(cfg).await.unwrap();
    let taps = wait_taps(&daemon, 4).await;
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
            panic!(
                "no published room mood; metrics:\n{}",
                reqwest_metrics(daemon.http_addr.unwrap()).await
            );
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
        let (p, _) = sim.media_set().data_received(&pat);
        let (a, _) = sim.media_set().data_received(&ana);
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
            reqwest_metrics(daemon.http_addr.unwrap()).await
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for text in sim.media_set().data_received(&ana).0 {
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_ne!(
            v["type"], "kurento-tap.room",
            "the audience gets no room mood"
        );
        assert_eq!(v["participant"], "ana", "only about herself: {text}");
    }
    for text in sim.media_set().data_received(&pat).0 {
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        if v["type"] == "kurento-tap.room" {
            let m: RoomMood = serde_json::from_value(v).unwrap();
            assert_eq!(m.presenter.as_deref(), Some("pat"));
        }
    }
    let metrics = reqwest_metrics(daemon.http_addr.unwrap()).await;
    assert!(
        metrics.contains("kurento_tap_affect_results_total{outcome=\"fused\"}"),
        "{metrics}"
    );
    assert!(metrics.contains("kurento_tap_room_moods_total{outcome=\"published\"}"));
    daemon.shutdown().await;
}
