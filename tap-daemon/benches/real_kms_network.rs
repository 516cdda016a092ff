//! Results under real network conditions and CPU load, on a real KMS 7.3 with Chromium participants:
//! one call per codec (two VP8 publishers, then two H.264 publishers; the fer and voice workers, the
//! daemon), each measured in phases, the codecs side by side:
//!
//! - clean: loopback as it is;
//! - cpu load: both cores kept busy by two other processes (plain busy loops);
//! - tap leg: 5 % loss and 30 ± 30 ms delay (packets reorder) on KMS → daemon RTP only;
//! - whole path: the same on every UDP packet of the namespace (browsers → KMS, KMS → browsers, the
//!   tap leg, RTCP both ways).
//!
//! Prints, per phase: results per participant and second (video, voice), capture→result latency
//! (p50/p95), frames decoded, keyframe requests sent and held back by the throttle, packets dropped.
//! Needs root and the KMS bundle (see tap-daemon/tests/real_kms.rs). The daemon and workers are the
//! workspace's binaries of the same profile as this bench, built first:
//!
//! ```text
//! cargo build --workspace --bins --release && cargo bench -p tap-daemon --bench real_kms_network
//! cargo build --workspace --bins && cargo bench --profile dev -p tap-daemon --bench real_kms_network
//! ```

use std::time::{Duration, Instant};

use tap_test_support::call::*;
use tap_test_support::kms;
use tap_test_support::metrics::http_get;
use tap_test_support::netem;

const PHASE: Duration = Duration::from_secs(20);
const SETTLE: Duration = Duration::from_secs(5);

struct Phase {
    name: &'static str,
    /// (loss, delay, jitter, ports): None for a clean phase.
    impairment: Option<(f64, u64, u64, Option<&'static str>)>,
    /// Busy loops beside the call.
    busy: usize,
}

async fn measure(call: &Call, codec: &str, phase: &Phase) {
    let _load = (phase.busy > 0).then(|| CpuLoad::start(phase.busy));
    let impairment = phase.impairment.map(|(loss, delay, jitter, ports)| {
        netem::Netem::start_on(
            loss,
            Duration::from_millis(delay),
            Duration::from_millis(jitter),
            ports,
        )
    });
    tokio::time::sleep(SETTLE).await;
    let decoded0 = call
        .metric("kurento_tap_decoded_total{media=\"video\"}")
        .await;
    let requests0 = call
        .metric("kurento_tap_receiver_keyframe_requests_total")
        .await;
    let throttled0 = call
        .metric("kurento_tap_receiver_keyframe_requests_throttled_total")
        .await;
    let (dropped0, passed0) = impairment.as_ref().map_or((0, 0), counts);
    let start = Instant::now();
    tokio::time::sleep(PHASE).await;
    let secs = PHASE.as_secs_f64();
    let decoded = call
        .metric("kurento_tap_decoded_total{media=\"video\"}")
        .await
        - decoded0;
    let requests = call
        .metric("kurento_tap_receiver_keyframe_requests_total")
        .await
        - requests0;
    let throttled = call
        .metric("kurento_tap_receiver_keyframe_requests_throttled_total")
        .await
        - throttled0;
    let (dropped, passed) = impairment.as_ref().map_or((0, 0), |n| {
        let (d, p) = counts(n);
        (d - dropped0, p - passed0)
    });
    if let Some(n) = impairment {
        n.stop();
    }
    let seen = call.results_since(start);
    let per = per_participant(&seen);
    let rate = |media: &str| {
        let v: Vec<f64> = per
            .iter()
            .filter(|((_, m), _)| m == media)
            .map(|(_, n)| *n as f64 / secs)
            .collect();
        let min = v.iter().copied().fold(f64::INFINITY, f64::min);
        (v.len(), if v.is_empty() { 0.0 } else { min })
    };
    let (video_n, video_min) = rate("video");
    let (voice_n, voice_min) = rate("audio");
    let lat = |media: &str| {
        let v: Vec<f64> = seen
            .iter()
            .filter(|s| s.media == media)
            .map(|s| s.latency_ms)
            .collect();
        (percentile(v.clone(), 0.5), percentile(v, 0.95))
    };
    let (v50, v95) = lat("video");
    let (a50, a95) = lat("audio");
    println!(
        "| {codec:<5} | {:<10} | {video_n} × {video_min:.1}/s | {voice_n} × {voice_min:.1}/s | {v50:.0} / {v95:.0} ms | {a50:.0} / {a95:.0} ms | {:.1}/s | {requests:.0} / {throttled:.0} | {} |",
        phase.name,
        decoded / secs,
        if dropped + passed > 0 {
            format!("{dropped} of {}", dropped + passed)
        } else {
            "-".into()
        }
    );
}

fn counts(n: &netem::Netem) -> (u64, u64) {
    use std::sync::atomic::Ordering::Relaxed;
    (n.stats.dropped.load(Relaxed), n.stats.passed.load(Relaxed))
}

fn main() {
    // `cargo bench` passes --bench; a filter that is not ours means another bench was asked for.
    if std::env::args()
        .skip(1)
        .any(|a| !a.starts_with('-') && !"real_kms_network".contains(a.as_str()))
    {
        return;
    }
    println!(
        "two publishers per codec, fer at {FER_FPS} fps, voice every 0.5 s; {PHASE:?} per phase after {SETTLE:?}"
    );
    println!("| codec | phase | video results (participants × min rate) | voice results | video capture→result p50 / p95 | voice p50 / p95 | frames decoded | keyframe requests sent / held back | UDP packets dropped |");
    println!("|---|---|---|---|---|---|---|---|---|");
    for codec in ["vp8", "h264"] {
        kms::with_kms("real_kms_network bench", |kms| async move {
            let mut call = Call::start(kms, &[]).await;
            call.join("bench", "ana", &format!("codec={codec}"));
            call.join("bench", "ben", &format!("codec={codec}"));
            call.wait_connected(Duration::from_secs(60)).await;
            call.start_workers();
            call.start_daemon("tap-bench-net").await;
            assert!(
                call.wait_metric("kurento_tap_taps_active", 2.0, Duration::from_secs(40))
                    .await,
                "two taps:\n{}",
                call.daemon_output()
            );
            tokio::time::sleep(Duration::from_secs(3)).await;
            for phase in [
                Phase {
                    name: "clean",
                    impairment: None,
                    busy: 0,
                },
                Phase {
                    name: "cpu load",
                    impairment: None,
                    busy: 2,
                },
                Phase {
                    name: "tap leg",
                    impairment: Some((0.05, 30, 30, Some(TAP_PORTS))),
                    busy: 0,
                },
                Phase {
                    name: "whole path",
                    impairment: Some((0.05, 30, 30, None)),
                    busy: 0,
                },
                Phase {
                    name: "recovered",
                    impairment: None,
                    busy: 0,
                },
            ] {
                measure(&call, codec, &phase).await;
            }
            let text = http_get(call.metrics.unwrap(), "/metrics").await;
            println!("\n{codec}: daemon counters at the end:");
            for line in text.lines().filter(|l| {
                !l.starts_with('#')
                    && [
                        "chunks_dropped",
                        "chunks_sent",
                        "decoded_total",
                        "sender_clocks",
                        "results_total",
                        "frames_before_keyframe",
                    ]
                    .iter()
                    .any(|k| l.contains(k))
            }) {
                println!("  {line}");
            }
            println!();
            assert!(call.stop_daemon());
        });
    }
}
