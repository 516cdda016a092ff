//! The processing policy end to end on kms-sim (issue 24): under `expressions` no emotion label,
//! valence or arousal leaves the daemon (NATS results, hence JetStream; fused states; room moods;
//! the dashboard's stream) while declared expression outputs flow, and an undeclared model gives
//! nothing; under `aggregate` no per-participant result or state leaves, room moods do.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use tap_daemon::privacy::policy::Policy;
use tap_protocol::affect::{fer2013_declaration, ParticipantState, RoomMood};
use tap_protocol::{
    chunk_subject, queue_group, ModelId, OutputDeclaration, PixelFormat, ResultMessage, WorkerReply,
};
use tap_test_support::prelude::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const SCENARIO: &str = "
[[room]]
name = 'class'
[[room.participant]]
name = 'pat'
video = { width = 160, height = 120, fps = 10 }
extra_tags = { 'kurento-tap.role' = 'presenter', 'kurento-tap.participant' = 'pat' }
[[room.participant]]
name = 'ana'
video = { width = 160, height = 120, fps = 10 }
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

/// Words that must not leave under `expressions`.
const EMOTIONAL: [&str; 5] = ["happy", "neutral", "valence", "arousal", "emotion"];

/// A face model that answers with emotions, a smile intensity and face/attention extras.
async fn face_worker(client: &async_nats::Client) -> tokio::task::JoinHandle<()> {
    let model = ModelId::new("face", "1");
    let mut sub = client
        .queue_subscribe(chunk_subject(&model), queue_group(&model))
        .await
        .unwrap();
    let client = client.clone();
    tokio::spawn(async move {
        while let Some(msg) = sub.next().await {
            let body = WorkerReply {
                labels: [
                    ("happy".to_owned(), 0.8),
                    ("neutral".to_owned(), 0.2),
                    ("smile".to_owned(), 0.7),
                ]
                .into(),
                top: Some("happy".into()),
                extras: serde_json::json!({"no_face": false, "attentive": true, "valence": 0.6}),
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

fn face_spec() -> tap_protocol::ModelSpec {
    let mut spec = video_spec("face", Some(5.0), None, 64, 48, PixelFormat::Rgb24);
    let fer = fer2013_declaration();
    spec.labels = fer.labels.keys().cloned().chain(["smile".into()]).collect();
    spec.outputs = Some(OutputDeclaration {
        emotion: fer
            .labels
            .keys()
            .cloned()
            .chain(["valence".into()])
            .collect(),
        expression: vec!["smile".into(), "no_face".into(), "attentive".into()],
    });
    spec.affect = Some(fer);
    spec
}

/// What the dashboard's stream sends in `for_how_long` (status line and headers included).
async fn dashboard_stream(addr: SocketAddr, for_how_long: Duration) -> String {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(b"GET /events HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(for_how_long, s.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

/// Every message on `sub` for `for_how_long`.
async fn collect(sub: &mut async_nats::Subscriber, until: Instant) -> Vec<String> {
    let mut out = Vec::new();
    while let Ok(Some(m)) = tokio::time::timeout_at(until.into(), sub.next()).await {
        out.push(String::from_utf8_lossy(&m.payload).into_owned());
    }
    out
}

/// What left the daemon in 8 s of the scenario under a policy: NATS results, states and room
/// moods, the dashboard's stream, and the metrics after.
struct Observed {
    results: Vec<String>,
    states: Vec<String>,
    moods: Vec<String>,
    stream: String,
    metrics: String,
    http: SocketAddr,
    /// The daemon, the simulator and the nats-server (the caller's client stays connected).
    h: Harness,
}

/// Runs the scenario under `policy` (on `nats`; simulator ports from `sim_base`, the daemon's from
/// `daemon_base`, 500 each) and collects what left the daemon.
async fn observe(
    client: &async_nats::Client,
    nats: Nats,
    policy: Policy,
    (sim_base, daemon_base): (u16, u16),
) -> Observed {
    let mut results = client.subscribe("tap.v1.result.>").await.unwrap();
    let mut states = client.subscribe("tap.v1.state.>").await.unwrap();
    let mut moods = client.subscribe("tap.v1.room.>").await.unwrap();
    let h = Harness::new()
        .nats(nats)
        .scenario(SCENARIO)
        .sim_ports(sim_base..=sim_base + 499)
        .tap_ports(daemon_base..=daemon_base + 499)
        .configure(move |c| {
            c.datachannel.enabled = false;
            c.policy = policy;
        })
        .start()
        .await;
    let http = h.http();
    h.wait_taps(4).await;
    let stream = tokio::spawn(dashboard_stream(http, Duration::from_secs(8)));
    let until = Instant::now() + Duration::from_secs(8);
    let (results, states, moods) = tokio::join!(
        collect(&mut results, until),
        collect(&mut states, until),
        collect(&mut moods, until)
    );
    let stream = stream.await.unwrap();
    let metrics = reqwest_metrics(http).await;
    Observed {
        results,
        states,
        moods,
        stream,
        metrics,
        http,
        h,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expressions_lets_out_no_emotion_anywhere_and_nothing_of_undeclared_models() {
    let _turn = one_media_rate_test_at_a_time().await;
    let nats = Nats::start().await;
    let client = async_nats::connect(&nats.url).await.unwrap();
    let face = face_spec();
    // A model without declarations: nothing of it may leave under `expressions`.
    let gray = video_spec("gray", Some(2.0), None, 32, 32, PixelFormat::Gray8);
    let (gray_seen, _w2) = worker(&client, &gray.id, Duration::ZERO).await;
    let _w1 = face_worker(&client).await;
    let _r = (
        Registration::new(&client, face).await,
        Registration::new(&client, gray).await,
    );
    let Observed {
        results,
        states,
        moods,
        stream,
        metrics,
        http,
        h,
    } = observe(&client, nats, Policy::Expressions, (48000, 48500)).await;

    assert!(
        !gray_seen.lock().unwrap().is_empty(),
        "the undeclared model was asked"
    );
    assert!(results.len() >= 10, "{} results; {metrics}", results.len());
    for text in &results {
        let r: ResultMessage = serde_json::from_str(text).unwrap();
        assert_eq!(r.model, "face", "undeclared models give nothing: {text}");
        assert_eq!(r.output.labels.keys().collect::<Vec<_>>(), ["smile"]);
        assert_eq!(r.output.top, None);
        assert_eq!(
            r.output.extras,
            serde_json::json!({"no_face": false, "attentive": true})
        );
    }
    assert!(!states.is_empty() && !moods.is_empty(), "{metrics}");
    // Expressions still flow into the fused states.
    let states_read: Vec<ParticipantState> = states
        .iter()
        .map(|s| serde_json::from_str(s).unwrap())
        .collect();
    assert!(
        states_read
            .iter()
            .any(|s| s.face_visible == Some(true) && s.attentive == Some(true)),
        "{states:?}"
    );
    // Room moods carry no emotion counts, valence or arousal: the presenter gets the room from
    // expression outputs only (the three in the audience, presenter excluded).
    let moods_read: Vec<RoomMood> = moods
        .iter()
        .map(|m| serde_json::from_str(m).unwrap())
        .collect();
    for m in &moods_read {
        assert!(m.emotions.is_empty() && m.valence.is_none() && m.arousal.is_none());
        assert_eq!(
            m.published,
            m.expressions.as_ref().is_some_and(|e| e.published),
            "published on the expression basis: {m:?}"
        );
    }
    assert!(
        moods_read.iter().any(|m| m.published
            && m.contributors == 3
            && m.presenter.as_deref() == Some("pat")
            && m.attentive_share == Some(1.0)
            && m.expressions
                .as_ref()
                .is_some_and(|e| e.text == "3 of 3 faces visible, attention 100 %")),
        "{moods:?}"
    );
    assert!(stream.contains("text/event-stream") && stream.contains("smile"));
    for (what, texts) in [
        ("results", &results),
        ("states", &states),
        ("moods", &moods),
        ("dashboard", &vec![stream]),
    ] {
        for t in texts {
            // Absent values are fine (`"valence":null`); any value is not.
            let mut bare = t.clone();
            for key in [
                "valence",
                "arousal",
                "valence_trend",
                "arousal_trend",
                "emotion",
            ] {
                bare = bare.replace(&format!("\"{key}\":null"), "");
            }
            bare = bare.replace("\"emotions\":{}", "");
            for word in EMOTIONAL {
                assert!(!bare.contains(word), "{what}: {word} in {t}");
            }
        }
    }
    assert!(metrics.contains("kurento_tap_policy{policy=\"expressions\"} 1"));
    assert!(metrics.contains("kurento_tap_policy{policy=\"emotions\"} 0"));
    assert!(
        metrics.contains("kurento_tap_policy_withheld_total{reason=\"undeclared_model\"}"),
        "{metrics}"
    );
    assert!(http_get(http, "/healthz")
        .await
        .contains("policy: expressions"));
    h.stop().await;
}

/// A workspace binary (`cargo build --workspace --bins`, which `scripts/test` runs first), run as a
/// child process until dropped; its stderr goes to a file shown when a test fails.
struct Child {
    child: std::process::Child,
    log: std::path::PathBuf,
}

impl Child {
    fn spawn(name: &str, args: &[&str]) -> Child {
        let exe = std::env::current_exe().unwrap();
        let bin = exe.parent().and_then(|d| d.parent()).unwrap().join(name);
        assert!(
            bin.exists(),
            "{} not built: run `cargo build --workspace --bins` first (scripts/test does)",
            bin.display()
        );
        let log = std::env::temp_dir().join(format!("policy-{name}-{}.log", std::process::id()));
        let child = std::process::Command::new(bin)
            .args(args)
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        Child { child, log }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.log);
    }
}

/// Speech made by espeak-ng (installed by scripts/setup).
fn speech_wav(name: &str, args: &[&str], text: &str) -> std::path::PathBuf {
    let out = std::env::temp_dir().join(format!("policy-{}-{name}.wav", std::process::id()));
    let ok = std::process::Command::new("espeak-ng")
        .args(args)
        .arg("-w")
        .arg(&out)
        .arg(text)
        .status()
        .expect("espeak-ng (scripts/setup installs it)")
        .success();
    assert!(ok);
    out
}

/// The shipped voice worker under `expressions`: speaking, voice energy and pitch variability flow
/// (into results and fused states), and none of its arousal classes, speech-emotion categories,
/// verdicts or the arousal model's raw inputs leaves the daemon.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expressions_lets_the_voice_workers_expression_outputs_out_and_no_affect() {
    let _turn = one_media_rate_test_at_a_time().await;
    let nats = Nats::start().await;
    let client = async_nats::connect(&nats.url).await.unwrap();
    let worker = Child::spawn("audio-worker", &["run", "--nats", &nats.url]);
    let ana = speech_wav(
        "ana",
        &["-a", "180", "-p", "80", "-s", "175"],
        "What a great morning! I am so glad to see all of you, this is wonderful news!",
    );
    let ben = speech_wav(
        "ben",
        &["-a", "60", "-p", "25", "-s", "140"],
        "Okay. I have looked at the numbers. They are about the same as last week.",
    );
    let scenario = format!(
        "[[room]]\nname = 'class'\n\
         [[room.participant]]\nname = 'ana'\naudio = {{ wav = {ana:?} }}\n\
         extra_tags = {{ 'kurento-tap.participant' = 'ana' }}\n\
         [[room.participant]]\nname = 'ben'\naudio = {{ wav = {ben:?} }}\n\
         extra_tags = {{ 'kurento-tap.participant' = 'ben' }}\n"
    );
    // The worker has registered (with its output declaration) before the daemon starts.
    let js = async_nats::jetstream::new(client.clone());
    let kv = tap_daemon::dispatch::registry::open_bucket(&js)
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let spec: tap_protocol::ModelSpec = loop {
        if let Ok(Some(v)) = kv.get("voice.1").await {
            break serde_json::from_slice(&v).unwrap();
        }
        assert!(
            Instant::now() < deadline,
            "audio-worker did not register:\n{}",
            worker.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let declared = spec.outputs.expect("the voice worker declares its outputs");
    assert!(declared.is_expression("voice_energy_dbfs") && !declared.is_expression("moderate"));
    let mut results = client.subscribe("tap.v1.result.>").await.unwrap();
    let mut states = client.subscribe("tap.v1.state.>").await.unwrap();

    let h = Harness::new()
        .nats(nats)
        .scenario(scenario)
        .sim_ports(51000..=51499)
        .tap_ports(51500..=51999)
        .configure(|c| {
            c.datachannel.enabled = false;
            c.policy = Policy::Expressions;
        })
        .start()
        .await;
    h.wait_taps(2).await;
    let until = Instant::now() + Duration::from_secs(10);
    let (results, states) = tokio::join!(collect(&mut results, until), collect(&mut states, until));
    let metrics = h.metrics().await;

    assert!(
        results.len() >= 6,
        "{} results; {metrics}\n{}",
        results.len(),
        worker.log()
    );
    let mut measured = 0;
    for text in &results {
        let r: ResultMessage = serde_json::from_str(text).unwrap();
        assert_eq!(r.model, "voice");
        assert!(
            r.output.labels.keys().all(|l| l == "speech"),
            "only the speech label: {text}"
        );
        assert!(
            matches!(r.output.top.as_deref(), None | Some("speech" | "silent")),
            "{text}"
        );
        let extras = r.output.extras.as_object().expect("expression extras");
        for k in extras.keys() {
            assert!(audio_worker_expression(k), "{k} left: {text}");
        }
        if extras.get("speaking") == Some(&serde_json::json!(true))
            && extras["voice_energy_dbfs"].is_number()
            && extras["pitch_variability_st"].is_number()
        {
            measured += 1;
        }
    }
    assert!(
        measured >= 2,
        "speech windows with voice energy and pitch variability: {measured}\n{results:?}"
    );
    let states_read: Vec<ParticipantState> = states
        .iter()
        .map(|s| serde_json::from_str(s).unwrap())
        .collect();
    assert!(
        states_read.iter().any(|s| s.speaking == Some(true)),
        "speaking reaches the fused states: {states:?}"
    );
    for t in results.iter().chain(&states) {
        let mut bare = t.clone();
        for key in ["valence", "arousal", "emotion"] {
            bare = bare.replace(&format!("\"{key}\":null"), "");
        }
        for word in [
            "arousal",
            "calm",
            "moderate",
            "aroused",
            "angry",
            "happy",
            "sad",
            "neutral",
            // Keys, quoted: an object id (hex, then `_kurento`) may hold `f0_`.
            "emotion",
            "valence",
            "\"f0_",
            "\"loudness",
            "\"ser\"",
        ] {
            assert!(!bare.contains(word), "{word} in {t}");
        }
    }
    h.stop().await;
}

/// The voice worker's expression outputs (`audio_worker::EXPRESSION_OUTPUTS`).
fn audio_worker_expression(key: &str) -> bool {
    [
        "start_s",
        "speech_probability",
        "speech_ratio",
        "speaking",
        "voiced_ratio",
        "voice_energy_dbfs",
        "pitch_variability_st",
    ]
    .contains(&key)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aggregate_lets_out_room_moods_only() {
    let _turn = one_media_rate_test_at_a_time().await;
    let nats = Nats::start().await;
    let client = async_nats::connect(&nats.url).await.unwrap();
    let _w = face_worker(&client).await;
    let _r = Registration::new(&client, face_spec()).await;
    let Observed {
        results,
        states,
        moods,
        stream,
        metrics,
        http,
        h,
    } = observe(&client, nats, Policy::Aggregate, (49000, 49500)).await;

    assert!(
        results.is_empty(),
        "per-participant results left: {results:?}"
    );
    assert!(states.is_empty(), "fused states left: {states:?}");
    // The fusion saw everything in process: the room mood of the three in the audience.
    let published: Vec<RoomMood> = moods
        .iter()
        .map(|m| serde_json::from_str::<RoomMood>(m).unwrap())
        .filter(|m| m.published)
        .collect();
    assert!(
        published.iter().any(|m| m.contributors == 3
            && m.emotions.get("happy") == Some(&3)
            && m.presenter.as_deref() == Some("pat")),
        "{moods:?}\n{metrics}"
    );
    assert!(stream.contains("text/event-stream"));
    for p in ["\"participant\":\"ana\"", "kurento-tap.state", "\"model\""] {
        assert!(!stream.contains(p), "{p} on the dashboard: {stream}");
    }
    assert!(metrics.contains("kurento_tap_policy{policy=\"aggregate\"} 1"));
    assert!(
        metrics.contains("kurento_tap_policy_withheld_total{reason=\"aggregate\"}"),
        "{metrics}"
    );
    assert!(http_get(http, "/healthz")
        .await
        .contains("policy: aggregate"));
    let page = http_get(http, "/").await;
    assert!(page.contains("policy: aggregate"), "the dashboard's header");
    h.stop().await;
}

/// The right to erasure: a control request purges one participant's stored results (every model)
/// and fused states, and nobody else's; bad requests are refused and counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_erasure_request_purges_one_participants_stored_results() {
    let _turn = one_media_rate_test_at_a_time().await;
    let nats = Nats::start().await;
    let client = async_nats::connect(&nats.url).await.unwrap();
    let gray = video_spec("gray", Some(5.0), None, 32, 32, PixelFormat::Gray8);
    let (_seen, worker_task) = worker(&client, &gray.id, Duration::ZERO).await;
    let registration = Registration::new(&client, gray).await;
    let h = Harness::new()
        .nats(nats)
        .scenario(SCENARIO)
        .sim_ports(50000..=50499)
        .tap_ports(50500..=50999)
        .configure(|c| c.datachannel.enabled = false)
        .start()
        .await;
    h.wait_taps(4).await;
    let js = async_nats::jetstream::new(client.clone());
    let stream = js.get_stream(tap_protocol::RESULTS_STREAM).await.unwrap();
    let last = |who: &'static str| {
        let stream = stream.clone();
        async move {
            stream
                .get_last_raw_message_by_subject(&format!("tap.v1.result.class.{who}.gray_1"))
                .await
                .is_ok()
        }
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    while !(last("ana").await && last("ben").await) {
        assert!(Instant::now() < deadline, "no stored results");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // The model leaves, so nothing new is stored while we look.
    registration.remove().await;
    worker_task.abort();
    tokio::time::sleep(Duration::from_secs(2)).await;

    let ask = |body: &'static str| {
        let client = client.clone();
        async move {
            let reply = client
                .request(tap_protocol::CTL_ERASE, body.into())
                .await
                .unwrap();
            serde_json::from_slice::<serde_json::Value>(&reply.payload).unwrap()
        }
    };
    // A wildcard is a name like any other: it erases nobody else.
    let wild = ask(r#"{"room":"class","participant":"*"}"#).await;
    assert_eq!(wild["ok"], true, "{wild}");
    assert_eq!(wild["erased"]["results"], 0, "{wild}");
    let done = ask(r#"{"room":"class","participant":"ana"}"#).await;
    assert_eq!(done["ok"], true, "{done}");
    assert!(done["erased"]["results"].as_u64().unwrap() > 0, "{done}");
    assert!(!last("ana").await, "ana's results are gone");
    assert!(last("ben").await, "ben's stay");
    let bad = ask(r#"{"room":"class"}"#).await;
    assert_eq!(bad["ok"], false, "{bad}");
    assert!(bad["error"].as_str().unwrap().contains("bad request"));
    let metrics = h.metrics().await;
    assert!(
        metrics.contains("kurento_tap_bad_control_requests_total 1"),
        "{metrics}"
    );
    h.stop().await;
}
