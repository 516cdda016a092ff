//! Benchmark (prints figures): facial emotion end to end — kms-sim participants showing a face
//! (real VP8 RTP) → kurento-tap → NATS → fer-worker → result — capture→result latency at a rate that
//! fits one worker, and with 10 participants at every frame.
//!
//! `ORT_DYLIB_PATH=… cargo bench -p fer-worker --bench e2e`

use std::time::Duration;

use classifier_sdk::{
    ModelSpec, PixelFormat, SpecExt, VideoChunkSpec, VideoSpecExt, Worker, WorkerOptions,
};
use fer_worker::{default_models_dir, EmotionNet, FerClassifier, FerPipeline, ModelPaths, LABELS};
use tap_daemon::Daemon;
use tap_test_support::prelude::*;

fn pct(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[((v.len() - 1) as f64 * p).round() as usize]
}

async fn run(label: &str, participants: usize, fps: u32, spec: VideoChunkSpec, ports: u16) {
    let image = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/astronaut_256.png");
    let mut scenario = String::from("[[room]]\nname='bench'\n");
    for i in 0..participants {
        scenario.push_str(&format!(
            "[[room.participant]]\nname='p{i}'\nvideo={{image='{}', width=320, height=240, fps={fps}}}\n",
            image.display()
        ));
    }
    let nats = Nats::start().await;
    let sim = sim(&scenario, (ports, ports + 999)).await;
    let mut cfg = config(&sim, &nats, (ports + 1000, ports + 1999));
    cfg.http_listen = None;
    let daemon = Daemon::start(cfg).await.unwrap();
    wait_taps(&daemon, participants).await;
    let mut model = ModelSpec::video("fer", "1", spec, &LABELS);
    model.deadline_ms = 1000;
    let paths = ModelPaths::vendored(&default_models_dir(), EmotionNet::Fer);
    // The worker's defaults: detector every 5 frames, faces tracked in between.
    let trackers = fer_worker::SharedTrackers::default();
    let worker = Worker::new(move || {
        FerClassifier::new(FerPipeline::load(&paths).unwrap(), model.clone(), 1.0).with_tracking(
            fer_worker::track::TrackerConfig::default(),
            trackers.clone(),
        )
    })
    .options(WorkerOptions::new(&nats.url))
    .start()
    .await
    .unwrap();
    let mut results = daemon.dispatcher.subscribe_results();
    let warm = tokio::time::Instant::now() + Duration::from_secs(2);
    let until = warm + Duration::from_secs(10);
    let (mut all, mut first, mut second, mut happy, mut faces) =
        (Vec::new(), Vec::new(), Vec::new(), 0usize, 0usize);
    while tokio::time::Instant::now() < until {
        let Ok(Ok(r)) = tokio::time::timeout(Duration::from_millis(500), results.recv()).await
        else {
            continue;
        };
        if tokio::time::Instant::now() < warm {
            continue;
        }
        all.push(r.latency_ms);
        if tokio::time::Instant::now() < warm + Duration::from_secs(5) {
            first.push(r.latency_ms);
        } else {
            second.push(r.latency_ms);
        }
        faces += usize::from(r.output.extras["no_face"] == false);
        happy += usize::from(r.output.top.as_deref() == Some("happy"));
    }
    let n = all.len();
    println!(
        "{label}: {n} results in 10 s ({:.1}/s), {faces} with a face, {happy} happy; capture→result p50 {:.1} ms p95 {:.1} ms; first 5 s p50 {:.1} ms, last 5 s p50 {:.1} ms",
        n as f64 / 10.0,
        pct(&mut all, 0.5),
        pct(&mut all, 0.95),
        pct(&mut first, 0.5),
        pct(&mut second, 0.5)
    );
    worker.stop().await.unwrap();
    daemon.shutdown().await;
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    run(
        "FER 320x240, 1 participant at 15 fps, 5 fps analysed",
        1,
        15,
        VideoChunkSpec::fps(5.0, 320, 240, PixelFormat::Rgb24),
        36000,
    )
    .await;
    run(
        "FER 320x240, 10 participants at 30 fps, every frame (step 1)",
        10,
        30,
        VideoChunkSpec {
            fps: None,
            every_nth: Some(1),
            width: 320,
            height: 240,
            format: PixelFormat::Rgb24,
        },
        38000,
    )
    .await;
}
