//! The scaling signal end to end: real SDK workers publish their load, the daemon turns it into
//! `kurento_tap_model_saturation` and friends. Asserts the direction (more workers, lower
//! saturation; an overloaded model reads above 1), not timings.

use std::time::Duration;

use classifier_sdk::*;
use tap_test_support::prelude::*;

/// 100 ms a frame, by the clock, whatever the machine's load: one instance answers ~10 per second.
struct Slow;

impl Classifier for Slow {
    fn spec(&self) -> ModelSpec {
        let mut spec = ModelSpec::video(
            "slow",
            "1",
            VideoChunkSpec::fps(15.0, 32, 32, PixelFormat::Gray8),
            &["x"],
        );
        spec.max_in_flight = 2;
        spec.deadline_ms = 2000;
        spec.heartbeat_ms = 500;
        spec
    }

    fn predict(&mut self, _chunk: &Chunk<'_>) -> Result<Prediction, ClassifierError> {
        std::thread::sleep(Duration::from_millis(100));
        Ok(Prediction::scores([("x", 1.0)]))
    }
}

async fn worker(nats: &str) -> classifier_sdk::RunningWorker {
    Worker::new(|| Slow)
        .options(WorkerOptions::new(nats))
        .start()
        .await
        .unwrap()
}

fn gauge(text: &str, name: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(name) && l.contains("model=\"slow@1\""))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(f64::NAN)
}

/// Reads the gauges once the window has seen `workers` instances for a while.
async fn settled(addr: std::net::SocketAddr, workers: f64) -> (f64, String) {
    for _ in 0..60 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        if gauge(&reqwest_metrics(addr).await, "kurento_tap_model_workers") == workers {
            break;
        }
    }
    // A full window with that many workers.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let text = reqwest_metrics(addr).await;
    (gauge(&text, "kurento_tap_model_saturation"), text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn saturation_follows_offered_load_over_worker_capacity() {
    let _turn = one_media_rate_test_at_a_time().await;
    let scenario = "[[room]]\nname='r'\n[[room.participant]]\nname='a'\nvideo={width=160,height=120,fps=15}\n[[room.participant]]\nname='b'\nvideo={width=160,height=120,fps=15}\n";
    let h = Harness::new()
        .scenario(scenario)
        .sim_ports(46000..=46499)
        .tap_ports(46500..=46999)
        .configure(|c| {
            c.scaling_window = Duration::from_secs(3);
            c.datachannel.enabled = false;
        })
        .start()
        .await;
    let addr = h.http();
    h.wait_taps(2).await;

    // ~30 chunks/s offered, one instance answers ~10/s: about 3.
    let w1 = worker(&h.nats.url).await;
    let (one, text) = settled(addr, 1.0).await;
    assert!(one > 1.5, "one slow worker is saturated: {one}\n{text}");
    let offered = gauge(&text, "kurento_tap_model_offered_per_second");
    let capacity = gauge(&text, "kurento_tap_model_capacity_per_second");
    let superseded = gauge(&text, "kurento_tap_model_superseded_share");
    assert!(offered > 0.0 && capacity > 0.0, "{text}");
    assert!(
        superseded > 0.0,
        "latest-wins supersedes what one worker cannot take: {text}"
    );
    eprintln!("1 worker: offered {offered:.1}/s, capacity {capacity:.1}/s, saturation {one:.2}, superseded {superseded:.2}");

    // Three more: capacity ×4, the same offer; the gauge drops.
    let more = [
        worker(&h.nats.url).await,
        worker(&h.nats.url).await,
        worker(&h.nats.url).await,
    ];
    let (four, text) = settled(addr, 4.0).await;
    eprintln!(
        "4 workers: offered {:.1}/s, capacity {:.1}/s, saturation {four:.2}",
        gauge(&text, "kurento_tap_model_offered_per_second"),
        gauge(&text, "kurento_tap_model_capacity_per_second")
    );
    assert!(
        four < one * 0.6,
        "saturation {one:.2} → {four:.2} with 4x the workers\n{text}"
    );

    // Workers gone: the model leaves the registry, and its figures leave /metrics.
    for w in more {
        w.stop().await.unwrap();
    }
    w1.stop().await.unwrap();
    let mut gone = false;
    for _ in 0..40 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        if gauge(&reqwest_metrics(addr).await, "kurento_tap_model_saturation").is_nan() {
            gone = true;
            break;
        }
    }
    assert!(gone, "{}", reqwest_metrics(addr).await);
    h.stop().await;
}
