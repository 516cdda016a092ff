//! Benchmark (prints figures): the protocol's overhead without inference, and the latency of delivered
//! results against offered load, using the daemon's real dispatch (lanes, NATS request, result
//! publishing) and the SDK's real worker runtime, over a nats-server on loopback.
//!
//! `cargo bench -p classifier-sdk --bench overhead`

use std::sync::Arc;
use std::time::{Duration, Instant};

use classifier_sdk::*;
use tap_daemon::dispatch::{now_us, Dispatcher, TapDispatch, TapIdent, TapSink};
use tap_daemon::media::chunker::{Chunk as TapChunk, ChunkSink};
use tap_daemon::metrics::Metrics;
use tap_test_support::nats::Nats;

struct Sleepy {
    spec: ModelSpec,
    cost: Duration,
}

impl Classifier for Sleepy {
    fn spec(&self) -> ModelSpec {
        self.spec.clone()
    }
    fn predict(&mut self, _chunk: &Chunk<'_>) -> Result<Prediction, ClassifierError> {
        if !self.cost.is_zero() {
            std::thread::sleep(self.cost);
        }
        Ok(Prediction::scores([("x", 1.0)]))
    }
}

fn pct(v: &mut [f64], p: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[((v.len() - 1) as f64 * p).round() as usize]
}

async fn results_stream(client: &async_nats::Client) {
    async_nats::jetstream::new(client.clone())
        .get_or_create_stream(async_nats::jetstream::stream::Config {
            name: tap_protocol::RESULTS_STREAM.into(),
            subjects: vec![tap_protocol::RESULT_SUBJECTS.into()],
            max_age: Duration::from_secs(600),
            ..Default::default()
        })
        .await
        .unwrap();
}

fn taps(dispatcher: &Arc<Dispatcher>, n: usize) -> Vec<TapSink> {
    (0..n)
        .map(|i| {
            TapSink(TapDispatch::new(
                TapIdent {
                    room: "bench".into(),
                    participant: format!("p{i}"),
                    endpoint: format!("e{i}"),
                    kms: "bench".into(),
                    instance: format!("i{i}"),
                },
                dispatcher.clone(),
            ))
        })
        .collect()
}

async fn overhead(nats: &Nats, label: &str, spec: ModelSpec, payload: bytes::Bytes) {
    let worker = Worker::new({
        let spec = spec.clone();
        move || Sleepy {
            spec: spec.clone(),
            cost: Duration::ZERO,
        }
    })
    .options(WorkerOptions::new(&nats.url))
    .start()
    .await
    .unwrap();
    let client = async_nats::connect(&nats.url).await.unwrap();
    let dispatcher = Dispatcher::new(client, Arc::new(Metrics::new()));
    let mut results = dispatcher.subscribe_results();
    let tap = taps(&dispatcher, 1).remove(0);
    let spec = Arc::new(spec);
    let mut total = Vec::new();
    let mut without_inference = Vec::new();
    for i in 0..1100 {
        let offered = now_us();
        tap.offer(TapChunk {
            spec: spec.clone(),
            capture_us: offered,
            payload: payload.clone(),
        });
        let r = tokio::time::timeout(Duration::from_secs(2), results.recv())
            .await
            .unwrap()
            .unwrap();
        if i >= 100 {
            total.push(r.latency_ms);
            without_inference.push(r.latency_ms - r.output.inference_ms);
        }
    }
    println!(
        "{label}: chunk ready → worker → result at the daemon: p50 {:.3} ms, p99 {:.3} ms; excluding inference: p50 {:.3} ms, p99 {:.3} ms (1,000 chunks)",
        pct(&mut total, 0.5),
        pct(&mut total, 0.99),
        pct(&mut without_inference, 0.5),
        pct(&mut without_inference, 0.99)
    );
    worker.stop().await.unwrap();
}

/// How a load row runs.
#[derive(Clone, Copy)]
struct Scenario {
    /// The model's time per chunk.
    cost_ms: u64,
    /// Time already spent when a chunk is offered (an audio window is dated at its start: a 1 s
    /// window is offered 1 s after its capture time).
    age_ms: u64,
    /// The worker's deadline-aware admission.
    admission: bool,
}

const PLAIN: Scenario = Scenario {
    cost_ms: 20,
    age_ms: 0,
    admission: true,
};

async fn load(nats: &Nats, workers: usize, factor: f64, scenario: Scenario) {
    let cost = Duration::from_millis(scenario.cost_ms);
    let capacity = 1000.0 / scenario.cost_ms as f64 * workers as f64;
    let participants = 10;
    let per_participant_rate = capacity * factor / participants as f64;
    let spec = {
        let mut s = ModelSpec::video(
            "load",
            "1",
            VideoChunkSpec::fps(30.0, 64, 48, PixelFormat::Gray8),
            &["x"],
        );
        s.deadline_ms = 1000;
        s
    };
    let mut running = Vec::new();
    for _ in 0..workers {
        let spec = spec.clone();
        running.push(
            Worker::new(move || Sleepy {
                spec: spec.clone(),
                cost,
            })
            .options(WorkerOptions {
                deadline_admission: scenario.admission,
                ..WorkerOptions::new(&nats.url)
            })
            .start()
            .await
            .unwrap(),
        );
    }
    let client = async_nats::connect(&nats.url).await.unwrap();
    let metrics = Arc::new(Metrics::new());
    let dispatcher = Dispatcher::new(client, metrics.clone());
    let mut results = dispatcher.subscribe_results();
    let sinks = Arc::new(taps(&dispatcher, participants));
    let spec = Arc::new(spec);
    let payload = bytes::Bytes::from(vec![0u8; 64 * 48]);
    let run_for = Duration::from_secs(6);
    let producer = tokio::spawn({
        let (sinks, spec) = (sinks.clone(), spec.clone());
        async move {
            let interval = Duration::from_secs_f64(1.0 / per_participant_rate);
            let start = Instant::now();
            let mut next = start;
            while start.elapsed() < run_for {
                for s in sinks.iter() {
                    s.offer(TapChunk {
                        spec: spec.clone(),
                        capture_us: now_us() - scenario.age_ms * 1000,
                        payload: payload.clone(),
                    });
                }
                next += interval;
                tokio::time::sleep_until(next.into()).await;
            }
        }
    });
    let mut lat = Vec::new();
    let mut late_half = Vec::new();
    let t0 = Instant::now();
    while t0.elapsed() < run_for {
        if let Ok(Ok(r)) = tokio::time::timeout(Duration::from_millis(200), results.recv()).await {
            if t0.elapsed() > Duration::from_secs(1) {
                lat.push(r.latency_ms);
                if t0.elapsed() > run_for / 2 {
                    late_half.push(r.latency_ms);
                }
            }
        }
    }
    producer.await.unwrap();
    let delivered = lat.len() as f64 / (run_for.as_secs_f64() - 1.0);
    let m = metrics.encode();
    let count = |reason: Option<&str>| -> f64 {
        m.lines()
            .filter(|l| l.starts_with("kurento_tap_chunks_dropped_total{"))
            .filter(|l| reason.is_none_or(|r| l.contains(&format!("reason=\"{r}\""))))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum::<f64>()
            + 0.0 // an empty sum is -0.0
    };
    let dropped = count(None);
    println!(
        "{workers} worker(s) × {} ms, chunks {} ms old, admission {}, offered {:>5.0}/s ({factor:>4.1}x capacity): delivered {delivered:>5.1}/s, latency p50 {:>6.1} ms p95 {:>6.1} ms max {:>6.1} ms, second half p50 {:>6.1} ms; dropped {dropped:.0} (timeout {:.0}, worker_stale {:.0})",
        scenario.cost_ms,
        scenario.age_ms,
        if scenario.admission { "on" } else { "off" },
        capacity * factor,
        pct(&mut lat.clone(), 0.5),
        pct(&mut lat.clone(), 0.95),
        lat.iter().cloned().fold(0.0, f64::max),
        pct(&mut late_half, 0.5),
        count(Some("timeout")),
        count(Some("worker_stale")),
    );
    for w in running {
        w.stop().await.unwrap();
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let nats = Nats::start().await;
    let client = async_nats::connect(&nats.url).await.unwrap();
    results_stream(&client).await;
    overhead(
        &nats,
        "320x240 RGB frame (230,400 B)",
        ModelSpec::video(
            "ovh-video",
            "1",
            VideoChunkSpec::fps(30.0, 320, 240, PixelFormat::Rgb24),
            &["x"],
        ),
        bytes::Bytes::from(vec![0u8; 320 * 240 * 3]),
    )
    .await;
    overhead(
        &nats,
        "1 s of 16 kHz mono F32 audio (64,000 B)",
        ModelSpec::audio(
            "ovh-audio",
            "1",
            AudioChunkSpec {
                window_ms: 1000,
                hop_ms: 1000,
                sample_rate: 16000,
                channels: 1,
                format: SampleFormat::F32,
            },
            &["x"],
        ),
        bytes::Bytes::from(vec![0u8; 64_000]),
    )
    .await;
    for workers in [1, 3] {
        for factor in [1.0, 3.0, 10.0] {
            load(&nats, workers, factor, PLAIN).await;
        }
    }
    // A tight budget, side by side with and without the worker's deadline-aware admission: chunks
    // offered with 300 ms left (a voice window's shape: dated at its start), a model at 50 ms, so a
    // worker's subscription buffer (8) holds more waiting work than the budget covers.
    for factor in [1.0, 3.0] {
        for admission in [false, true] {
            let tight = Scenario {
                cost_ms: 50,
                age_ms: 700,
                admission,
            };
            load(&nats, 1, factor, tight).await;
        }
    }
}
