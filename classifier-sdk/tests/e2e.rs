//! The worker runtime with the daemon, the simulator and a real nats-server.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use classifier_sdk::*;
use futures_util::StreamExt;
use tap_daemon::Daemon;
use tap_protocol::{chunk_subject, header, ResultMessage, RESULTS_STREAM, RESULT_SUBJECTS};
use tap_test_support::prelude::*;

/// Mean luma of a gray frame, optionally slow, counting its calls.
struct Luma {
    version: &'static str,
    delay: Duration,
    calls: Arc<AtomicUsize>,
    heartbeat_ms: u32,
}

impl Classifier for Luma {
    fn spec(&self) -> ModelSpec {
        let mut s = ModelSpec::video(
            "luma",
            self.version,
            VideoChunkSpec::fps(10.0, 32, 24, PixelFormat::Gray8),
            &["bright"],
        );
        s.heartbeat_ms = self.heartbeat_ms;
        s
    }
    fn predict(&mut self, chunk: &Chunk<'_>) -> Result<Prediction, ClassifierError> {
        self.calls.fetch_add(1, Ordering::Relaxed);
        std::thread::sleep(self.delay);
        let Data::Video(f) = &chunk.data else {
            return Err(ClassifierError::Unsupported);
        };
        let mean = f.pixels.iter().map(|&p| f64::from(p)).sum::<f64>() / f.pixels.len() as f64;
        Ok(Prediction::scores([("bright", mean / 255.0)]))
    }
}

fn luma(
    version: &'static str,
    delay_ms: u64,
    calls: &Arc<AtomicUsize>,
) -> impl Fn() -> Luma + Send + 'static {
    let calls = calls.clone();
    move || Luma {
        version,
        delay: Duration::from_millis(delay_ms),
        calls: calls.clone(),
        heartbeat_ms: 500,
    }
}

async fn start_worker<F: Fn() -> Luma + Send + 'static>(
    nats: &Nats,
    f: F,
    concurrency: usize,
) -> RunningWorker {
    Worker::new(f)
        .options(
            WorkerOptions::new(&nats.url)
                .concurrency(concurrency)
                .metrics_at(([127, 0, 0, 1], 0).into()),
        )
        .start()
        .await
        .unwrap()
}

const ROOM: &str = "[[room]]\nname='r'\n[[room.participant]]\nname='a'\nvideo={fps=15}\n[[room.participant]]\nname='b'\nvideo={fps=15, pattern='snow'}\n";

async fn collect(sub: &mut async_nats::Subscriber, for_ms: u64) -> Vec<ResultMessage> {
    let mut out = Vec::new();
    let until = tokio::time::Instant::now() + Duration::from_millis(for_ms);
    while let Ok(Some(m)) = tokio::time::timeout_at(until, sub.next()).await {
        out.push(serde_json::from_slice(&m.payload).unwrap());
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn register_feed_store_then_unregister() {
    let nats = Nats::start().await;
    let sim = sim(ROOM, (30000, 30499)).await;
    let client = async_nats::connect(&nats.url).await.unwrap();
    let daemon = Daemon::start(config(&sim, &nats, (30500, 30999)))
        .await
        .unwrap();
    wait_taps(&daemon, 2).await;
    let mut results = client.subscribe(RESULT_SUBJECTS).await.unwrap();
    let calls = Arc::new(AtomicUsize::new(0));
    let w = start_worker(&nats, luma("1", 0, &calls), 1).await;
    let got = collect(&mut results, 2500).await;
    assert!(
        got.len() >= 15,
        "two participants at 10 fps for ~2 s: {}",
        got.len()
    );
    assert!(got
        .iter()
        .all(|r| r.model == "luma" && r.version == "1" && r.output.labels.contains_key("bright")));
    let snow = got
        .iter()
        .filter(|r| r.participant == "b")
        .map(|r| r.output.labels["bright"])
        .next_back()
        .unwrap();
    assert!(
        snow > 0.2 && snow < 0.8,
        "a computed value, not a constant: {snow}"
    );
    assert!(got
        .iter()
        .all(|r| r.output.inference_ms >= 0.0 && r.latency_ms >= 0.0 && r.latency_ms < 1000.0));
    // Stored in JetStream too, with the latest per subject available.
    let js = async_nats::jetstream::new(client.clone());
    let info = js
        .get_stream(RESULTS_STREAM)
        .await
        .unwrap()
        .info()
        .await
        .unwrap()
        .clone();
    assert!(info.state.messages as usize >= got.len());
    let m = http_get(w.http_addr.unwrap(), "/metrics").await;
    assert!(m.contains("tap_worker_predictions_total"), "{m}");
    // `kurento-tap results` exports the history.
    let mut csv = Vec::new();
    let n = tap_daemon::control::results::export(
        client.clone(),
        tap_daemon::control::results::Kind::Result,
        Some("r"),
        None,
        false,
        tap_daemon::control::results::Format::Csv,
        &mut csv,
    )
    .await
    .unwrap();
    let text = String::from_utf8(csv).unwrap();
    assert!(n as usize >= got.len(), "{n} exported, {} seen", got.len());
    assert!(text.starts_with(
        "capture_ms,room,participant,model,version,media,seq,top,top_score,latency_ms\n"
    ));
    assert!(
        text.lines().nth(1).unwrap().contains(",r,a,luma,1,video,")
            || text.lines().nth(1).unwrap().contains(",r,b,luma,1,video,")
    );
    let mut none = Vec::new();
    assert_eq!(
        tap_daemon::control::results::export(
            client.clone(),
            tap_daemon::control::results::Kind::Result,
            Some("other-room"),
            None,
            false,
            tap_daemon::control::results::Format::Jsonl,
            &mut none
        )
        .await
        .unwrap(),
        0
    );
    // Unregister: the worker stops and its entry expires (3 heartbeats of 500 ms); feeding stops.
    w.stop().await.unwrap();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let _ = collect(&mut results, 300).await;
    let sent_before = chunks_sent(&daemon).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        chunks_sent(&daemon).await,
        sent_before,
        "no chunk for a model that left"
    );
    daemon.shutdown().await;
}

async fn chunks_sent(d: &Daemon) -> f64 {
    http_get(d.http_addr.unwrap(), "/metrics")
        .await
        .lines()
        .filter(|l| l.starts_with("kurento_tap_chunks_sent_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_versions_side_by_side_and_a_queue_group_of_three() {
    let nats = Nats::start().await;
    let sim = sim(ROOM, (31000, 31499)).await;
    let client = async_nats::connect(&nats.url).await.unwrap();
    let daemon = Daemon::start(config(&sim, &nats, (31500, 31999)))
        .await
        .unwrap();
    wait_taps(&daemon, 2).await;
    let mut results = client.subscribe(RESULT_SUBJECTS).await.unwrap();
    let (c1, c2, c3, c4) = (
        Arc::new(AtomicUsize::new(0)),
        Arc::new(AtomicUsize::new(0)),
        Arc::new(AtomicUsize::new(0)),
        Arc::new(AtomicUsize::new(0)),
    );
    // luma@1 served by three workers (each 30 ms per chunk); luma@2 by one.
    let w1 = start_worker(&nats, luma("1", 30, &c1), 1).await;
    let w2 = start_worker(&nats, luma("1", 30, &c2), 1).await;
    let w3 = start_worker(&nats, luma("1", 30, &c3), 1).await;
    let v2 = start_worker(&nats, luma("2", 0, &c4), 1).await;
    let got = collect(&mut results, 3000).await;
    let v1n = got.iter().filter(|r| r.version == "1").count();
    let v2n = got.iter().filter(|r| r.version == "2").count();
    assert!(v1n >= 15 && v2n >= 15, "both versions fed: {v1n} / {v2n}");
    let shares = [
        c1.load(Ordering::Relaxed),
        c2.load(Ordering::Relaxed),
        c3.load(Ordering::Relaxed),
    ];
    assert!(
        shares.iter().all(|&n| n > 0),
        "the queue group shares the load: {shares:?}"
    );
    // Kill one mid-run: the other two carry on.
    w1.kill();
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let before = (c2.load(Ordering::Relaxed), c3.load(Ordering::Relaxed));
    let got = collect(&mut results, 2000).await;
    assert!(
        got.iter().filter(|r| r.version == "1").count() >= 15,
        "results continue after a worker died"
    );
    assert!(c2.load(Ordering::Relaxed) > before.0 && c3.load(Ordering::Relaxed) > before.1);
    for w in [w2, w3, v2] {
        w.stop().await.unwrap();
    }
    daemon.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_model_gets_fresh_chunks_not_a_backlog() {
    let nats = Nats::start().await;
    let sim = sim(ROOM, (32000, 32499)).await;
    let client = async_nats::connect(&nats.url).await.unwrap();
    let daemon = Daemon::start(config(&sim, &nats, (32500, 32999)))
        .await
        .unwrap();
    wait_taps(&daemon, 2).await;
    let mut results = client.subscribe(RESULT_SUBJECTS).await.unwrap();
    let calls = Arc::new(AtomicUsize::new(0));
    // 20 chunks/s offered (2 × 10 fps), 4 per second served: 5x over capacity.
    let w = start_worker(&nats, luma("1", 250, &calls), 1).await;
    let got = collect(&mut results, 6000).await;
    assert!(got.len() >= 10, "{}", got.len());
    let early: f64 = got[..5].iter().map(|r| r.latency_ms).sum::<f64>() / 5.0;
    let late: f64 = got[got.len() - 5..]
        .iter()
        .map(|r| r.latency_ms)
        .sum::<f64>()
        / 5.0;
    assert!(
        late < 1000.0,
        "results stay younger than the deadline: {late} ms"
    );
    assert!(
        late < early + 300.0,
        "latency does not grow with time: {early} → {late} ms"
    );
    let m = http_get(daemon.http_addr.unwrap(), "/metrics").await;
    assert!(m.contains("reason=\"superseded\""), "{m}");
    w.stop().await.unwrap();
    daemon.shutdown().await;
}

/// A request that must be answered: the worker is reachable once `start` returned.
async fn request(
    client: &async_nats::Client,
    subject: &str,
    headers: async_nats::HeaderMap,
    payload: bytes::Bytes,
) -> async_nats::Message {
    client
        .request_with_headers(subject.to_owned(), headers, payload)
        .await
        .unwrap_or_else(|e| panic!("request failed: {e}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_chunks_get_errors_and_the_worker_keeps_serving() {
    let nats = Nats::start().await;
    let client = async_nats::connect(&nats.url).await.unwrap();
    let calls = Arc::new(AtomicUsize::new(0));
    let w = start_worker(&nats, luma("1", 0, &calls), 1).await;
    let subject = chunk_subject(&ModelId::new("luma", "1"));
    let good = |len: usize, w: &str, h: &str, deadline_us: u64| {
        let mut m = async_nats::HeaderMap::new();
        for (k, v) in [
            (header::VERSION, "1".to_owned()),
            (header::ROOM, "r".into()),
            (header::PARTICIPANT, "p".into()),
            (header::MEDIA, "video".into()),
            (header::MODEL, "luma@1".into()),
            (header::SEQ, "0".into()),
            (header::CAPTURE_US, "1".into()),
            (header::SENT_US, "1".into()),
            (header::DEADLINE_US, deadline_us.to_string()),
            (header::FORMAT, "GRAY8".into()),
            (header::WIDTH, w.into()),
            (header::HEIGHT, h.into()),
        ] {
            m.insert(k, v.as_str());
        }
        (m, bytes::Bytes::from(vec![128u8; len]))
    };
    let far = (now_ms() + 60_000) * 1000;
    let cases: Vec<(async_nats::HeaderMap, bytes::Bytes, &str)> = vec![
        (
            async_nats::HeaderMap::new(),
            bytes::Bytes::from_static(b"garbage"),
            "malformed",
        ),
        {
            let (h, p) = good(10, "32", "24", far);
            (h, p, "malformed")
        }, // wrong size
        {
            let (h, p) = good(32 * 24, "32", "x", far);
            (h, p, "malformed")
        }, // bad number
        {
            let (h, p) = good(0, "0", "0", far);
            (h, p, "malformed")
        }, // zero size
        {
            let (h, p) = good(32 * 24, "32", "24", 1);
            (h, p, "stale")
        }, // past deadline
        {
            let (mut h, p) = good(32 * 24, "32", "24", far);
            h.insert(header::FORMAT, "BGR15");
            (h, p, "malformed")
        },
    ];
    for (h, p, want) in cases {
        let r = request(&client, &subject, h, p).await;
        let err = r
            .headers
            .as_ref()
            .and_then(|h| h.get(header::ERROR))
            .map(|v| v.as_str().to_owned());
        assert_eq!(err.as_deref(), Some(want));
    }
    let (h, p) = good(32 * 24, "32", "24", far);
    let r = request(&client, &subject, h, p).await;
    let reply: tap_protocol::WorkerReply = serde_json::from_slice(&r.payload).unwrap();
    assert!(
        (reply.labels["bright"] - 128.0 / 255.0).abs() < 1e-9,
        "still serving, computing"
    );
    let m = http_get(w.http_addr.unwrap(), "/metrics").await;
    assert!(
        m.contains("tap_worker_chunks_dropped_total{reason=\"malformed\"} 5"),
        "{m}"
    );
    assert!(
        m.contains("tap_worker_chunks_dropped_total{reason=\"stale\"} 1"),
        "{m}"
    );
    // The NATS service API answers discovery pings.
    let ping = client
        .request("$SRV.PING.tap_luma_1", "".into())
        .await
        .unwrap();
    assert!(String::from_utf8_lossy(&ping.payload).contains("tap_luma_1"));
    w.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nats_restart_is_survived_and_stored_results_are_kept() {
    let mut nats = Nats::start().await;
    let sim = sim(ROOM, (33000, 33499)).await;
    let daemon = Daemon::start(config(&sim, &nats, (33500, 33999)))
        .await
        .unwrap();
    wait_taps(&daemon, 2).await;
    let calls = Arc::new(AtomicUsize::new(0));
    let w = start_worker(&nats, luma("1", 0, &calls), 1).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let stored = |url: String| async move {
        let c = async_nats::connect(url).await.unwrap();
        let js = async_nats::jetstream::new(c);
        js.get_stream(RESULTS_STREAM)
            .await
            .unwrap()
            .info()
            .await
            .unwrap()
            .state
            .messages
    };
    let before = stored(nats.url.clone()).await;
    assert!(before > 10);
    let port = nats.port;
    nats.stop();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let nats2 = Nats::start_on_reusing(port, &nats).await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    let after = stored(nats2.url.clone()).await;
    assert!(
        after > before,
        "nothing acknowledged was lost, and results flow again: {before} → {after}"
    );
    w.stop().await.unwrap();
    daemon.shutdown().await;
}

/// Counts the batch sizes it is given.
struct Batcher {
    sizes: Arc<std::sync::Mutex<Vec<usize>>>,
}

impl Classifier for Batcher {
    fn spec(&self) -> ModelSpec {
        ModelSpec::video(
            "batch",
            "1",
            VideoChunkSpec::fps(10.0, 4, 4, PixelFormat::Gray8),
            &["n"],
        )
    }
    fn predict(&mut self, chunk: &Chunk<'_>) -> Result<Prediction, ClassifierError> {
        self.predict_batch(std::slice::from_ref(chunk)).remove(0)
    }
    fn predict_batch(&mut self, chunks: &[Chunk<'_>]) -> Vec<Result<Prediction, ClassifierError>> {
        self.sizes.lock().unwrap().push(chunks.len());
        std::thread::sleep(Duration::from_millis(50));
        chunks
            .iter()
            .map(|c| Ok(Prediction::scores([("n", c.meta.seq as f64)])))
            .collect()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiting_chunks_are_batched_and_each_gets_its_own_answer() {
    let nats = Nats::start().await;
    let client = async_nats::connect(&nats.url).await.unwrap();
    let sizes = Arc::new(std::sync::Mutex::new(Vec::new()));
    let s2 = sizes.clone();
    let w = Worker::new(move || Batcher { sizes: s2.clone() })
        .options(WorkerOptions::new(&nats.url).max_batch(4))
        .start()
        .await
        .unwrap();
    let mut replies = Vec::new();
    for seq in 0..8u64 {
        // Eight participants: one chunk per lane waits (a newer one of the same lane would
        // replace it).
        let h = batch_chunk(&format!("p{seq}"), seq);
        let c = client.clone();
        replies.push(tokio::spawn(async move {
            c.request_with_headers(
                chunk_subject(&ModelId::new("batch", "1")),
                h,
                bytes::Bytes::from(vec![0u8; 16]),
            )
            .await
            .unwrap()
        }));
    }
    for (seq, r) in replies.into_iter().enumerate() {
        let reply: tap_protocol::WorkerReply =
            serde_json::from_slice(&r.await.unwrap().payload).unwrap();
        assert_eq!(
            reply.labels["n"], seq as f64,
            "each chunk gets its own answer"
        );
    }
    let sizes = sizes.lock().unwrap().clone();
    assert_eq!(sizes.iter().sum::<usize>(), 8);
    assert!(
        sizes.iter().any(|&n| n > 1) && sizes.iter().all(|&n| n <= 4),
        "{sizes:?}"
    );
    w.stop().await.unwrap();
}

/// A chunk's headers for the `batch@1` model: `participant`'s lane, sequence `seq`.
fn batch_chunk(participant: &str, seq: u64) -> async_nats::HeaderMap {
    let far = (now_ms() + 60_000) * 1000;
    let mut h = async_nats::HeaderMap::new();
    for (k, v) in [
        (header::VERSION, "1".to_owned()),
        (header::ROOM, "r".into()),
        (header::PARTICIPANT, participant.into()),
        (header::MEDIA, "video".into()),
        (header::MODEL, "batch@1".into()),
        (header::SEQ, seq.to_string()),
        (header::CAPTURE_US, "1".into()),
        (header::SENT_US, "1".into()),
        (header::DEADLINE_US, far.to_string()),
        (header::FORMAT, "GRAY8".into()),
        (header::WIDTH, "4".into()),
        (header::HEIGHT, "4".into()),
    ] {
        h.insert(k, v.as_str());
    }
    h
}

/// A model that holds every inference until the test opens its gate (and says when one starts).
struct Gated {
    gate: Arc<(std::sync::Mutex<(bool, usize)>, std::sync::Condvar)>,
}

impl Classifier for Gated {
    fn spec(&self) -> ModelSpec {
        Batcher {
            sizes: Arc::default(),
        }
        .spec()
    }
    fn predict(&mut self, chunk: &Chunk<'_>) -> Result<Prediction, ClassifierError> {
        let (lock, cv) = &*self.gate;
        let mut state = lock.lock().unwrap();
        state.1 += 1;
        cv.notify_all();
        while !state.0 {
            state = cv.wait(state).unwrap();
        }
        Ok(Prediction::scores([("n", chunk.meta.seq as f64)]))
    }
}

/// The waiting room seen from outside: while the model is busy, a newer chunk of a participant
/// replaces its waiting one, which is answered `stale` at once (not left to time out), and a chunk
/// that finds the room full is answered `busy` at once; the chunks kept are computed afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busy_worker_answers_what_it_will_not_compute_at_once() {
    let nats = Nats::start().await;
    let client = async_nats::connect(&nats.url).await.unwrap();
    let gate = Arc::new((
        std::sync::Mutex::new((false, 0usize)),
        std::sync::Condvar::new(),
    ));
    let g2 = gate.clone();
    let w = Worker::new(move || Gated { gate: g2.clone() })
        .options(WorkerOptions::new(&nats.url).waiting_room(2))
        .start()
        .await
        .unwrap();
    let subject = chunk_subject(&ModelId::new("batch", "1"));
    // Published in order on one connection, each with its own reply inbox.
    let send = async |participant: &str, seq: u64| {
        let inbox = client.new_inbox();
        let sub = client.subscribe(inbox.clone()).await.unwrap();
        client
            .publish_with_reply_and_headers(
                subject.clone(),
                inbox,
                batch_chunk(participant, seq),
                bytes::Bytes::from(vec![0u8; 16]),
            )
            .await
            .unwrap();
        client.flush().await.unwrap();
        sub
    };
    let next = async |sub: &mut async_nats::Subscriber| {
        let reply = tokio::time::timeout(Duration::from_secs(10), sub.next())
            .await
            .expect("a reply")
            .unwrap();
        let error = reply
            .headers
            .as_ref()
            .and_then(|h| h.get(header::ERROR))
            .map(|v| v.as_str().to_owned());
        let n = serde_json::from_slice::<tap_protocol::WorkerReply>(&reply.payload)
            .ok()
            .map(|r| r.labels["n"]);
        (error, n)
    };
    let mut first = send("ann", 0).await;
    // Ann's chunk is in the model (held at the gate) before the others come.
    let started = |n: usize| {
        let (lock, cv) = &*gate;
        let state = lock.lock().unwrap();
        let (_state, timeout) = cv
            .wait_timeout_while(state, Duration::from_secs(10), |s| s.1 < n)
            .unwrap();
        assert!(!timeout.timed_out(), "inference {n} started");
    };
    started(1);
    let mut older = send("bob", 1).await;
    let mut other = send("cyd", 2).await;
    let mut newer = send("bob", 3).await;
    let mut refused = send("dan", 4).await;
    // Answered while the model is still held: nothing waited for it.
    assert_eq!(
        next(&mut older).await,
        (Some("stale".into()), None),
        "superseded"
    );
    assert_eq!(
        next(&mut refused).await,
        (Some("busy".into()), None),
        "room of 2 full"
    );
    {
        let (lock, cv) = &*gate;
        lock.lock().unwrap().0 = true;
        cv.notify_all();
    }
    assert_eq!(next(&mut first).await, (None, Some(0.0)));
    assert_eq!(next(&mut other).await, (None, Some(2.0)));
    assert_eq!(next(&mut newer).await, (None, Some(3.0)));
    let metrics = w.metrics.encode();
    for reason in ["superseded", "busy"] {
        assert!(
            metrics.contains(&format!(
                "tap_worker_chunks_dropped_total{{reason=\"{reason}\"}} 1"
            )),
            "{reason}:\n{metrics}"
        );
    }
    w.stop().await.unwrap();
}
