//! Fifty participants fully analysed on one node: kms-sim (pre-encoded: every publisher replays a
//! clip of a face, VP8 320x240@15, and an Opus tone), the daemon (`kurento-tap run`), one face
//! worker and one voice worker — each its own process, all release builds — on this machine.
//! Prints per process CPU, threads and RSS, and per model the result rate of every participant
//! (slowest and fastest against the asked rate) and capture→result latency.
//!
//! ```text
//! cargo build --release -p kms-sim -p tap-daemon -p fer-worker -p audio-worker --bins
//! cargo bench -p tap-daemon --bench node50            # NODE_PARTICIPANTS=50 NODE_SECONDS=20
//! ```

use std::collections::HashMap;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use tap_test_support::metrics::{http_get, pct};
use tap_test_support::nats::Nats;
use tap_test_support::proc::{cpu_seconds_of, free_port};

fn release_bin(name: &str) -> String {
    format!("{}/../target/release/{name}", env!("CARGO_MANIFEST_DIR"))
}

fn spawn(name: &str, args: &[&str]) -> Child {
    Command::new(release_bin(name))
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| {
            panic!("{name}: {e} (cargo build --release -p kms-sim -p tap-daemon -p fer-worker -p audio-worker --bins)")
        })
}

/// (CPU seconds, threads, RSS MiB) of a process.
fn usage(pid: u32) -> (f64, u64, f64) {
    let cpu = cpu_seconds_of(&pid.to_string());
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |k: &str| -> u64 {
        status
            .lines()
            .find(|l| l.starts_with(k))
            .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
            .unwrap_or(0)
    };
    (cpu, field("Threads:"), field("VmRSS:") as f64 / 1024.0)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let n: usize = std::env::var("NODE_PARTICIPANTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(50);
    let seconds: u64 = std::env::var("NODE_SECONDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20);
    let face = format!(
        "{}/../classifiers/fer-worker/testdata/astronaut_256.png",
        env!("CARGO_MANIFEST_DIR")
    );
    let mut scenario = String::from("[[room]]\nname='node'\n");
    for i in 0..n {
        scenario.push_str(&format!(
            "[[room.participant]]\nname='p{i:02}'\nvideo={{codec='VP8', width=320, height=240, fps=15, image='{face}'}}\naudio={{tone={}}}\n",
            200 + (i % 10) * 40
        ));
    }
    let path = std::env::temp_dir().join(format!("node50-{}.toml", std::process::id()));
    std::fs::write(&path, scenario).unwrap();
    let nats = Nats::start().await;
    let sim_port = free_port();
    let mut sim = spawn(
        "kms-sim",
        &[
            "--listen",
            &format!("127.0.0.1:{sim_port}"),
            "--announce-ip",
            "127.0.0.1",
            "--ports",
            "36000-36999",
            "--scenario",
            path.to_str().unwrap(),
            "--pre-encoded",
        ],
    );
    tokio::time::sleep(Duration::from_millis(800)).await;
    let client = async_nats::connect(&nats.url).await.unwrap();
    let mut results = client.subscribe("tap.v1.result.>").await.unwrap();
    let fer_slots = std::env::var("NODE_FER_CONCURRENCY").unwrap_or_else(|_| "1".into());
    let (fer_http, voice_http) = (free_port(), free_port());
    let fer_metrics = format!("127.0.0.1:{fer_http}");
    let voice_metrics = format!("127.0.0.1:{voice_http}");
    let mut fer = spawn(
        "fer-worker",
        &[
            "run",
            "--metrics",
            &fer_metrics,
            "--nats",
            &nats.url,
            "--fps",
            "5",
            "--concurrency",
            &fer_slots,
        ],
    );
    let voice_slots = std::env::var("NODE_VOICE_CONCURRENCY").unwrap_or_else(|_| "1".into());
    let mut voice = spawn(
        "audio-worker",
        &[
            "run",
            "--metrics",
            &voice_metrics,
            "--nats",
            &nats.url,
            "--concurrency",
            &voice_slots,
        ],
    );
    let http = free_port();
    let mut daemon = spawn(
        "kurento-tap",
        &[
            "run",
            "--kurento",
            &format!("ws://127.0.0.1:{sim_port}/kurento"),
            "--nats",
            &nats.url,
            "--bind",
            "127.0.0.1",
            "--ports",
            "37000-37999",
            "--http",
            &format!("127.0.0.1:{http}"),
            "--datachannels",
            "false",
        ],
    );
    // Until every participant has results from both models, then settle.
    let start = Instant::now();
    let mut seen: HashMap<(String, String), usize> = HashMap::new();
    while start.elapsed() < Duration::from_secs(90) {
        if let Ok(Some(m)) = tokio::time::timeout(Duration::from_millis(500), results.next()).await
        {
            if let Ok(r) = serde_json::from_slice::<tap_protocol::ResultMessage>(&m.payload) {
                *seen.entry((r.participant, r.model)).or_default() += 1;
            }
        }
        if seen.len() >= 2 * n {
            break;
        }
    }
    println!(
        "{} of {} participant×model pairs with results after {:.1} s",
        seen.len(),
        2 * n,
        start.elapsed().as_secs_f64()
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    while let Ok(Some(_)) = tokio::time::timeout(Duration::from_millis(1), results.next()).await {}

    let procs = [
        ("kms-sim", sim.id()),
        ("kurento-tap", daemon.id()),
        ("fer-worker", fer.id()),
        ("audio-worker", voice.id()),
    ];
    let before: Vec<(f64, u64, f64)> = procs.iter().map(|(_, p)| usage(*p)).collect();
    let t0 = Instant::now();
    let mut counts: HashMap<(String, String), usize> = HashMap::new();
    let mut latency: HashMap<String, Vec<f64>> = HashMap::new();
    let until = tokio::time::Instant::now() + Duration::from_secs(seconds);
    while let Ok(Some(m)) = tokio::time::timeout_at(until, results.next()).await {
        if let Ok(r) = serde_json::from_slice::<tap_protocol::ResultMessage>(&m.payload) {
            latency
                .entry(r.model.clone())
                .or_default()
                .push(r.latency_ms);
            *counts.entry((r.participant, r.model)).or_default() += 1;
        }
    }
    let wall = t0.elapsed().as_secs_f64();
    println!(
        "{n} participants (VP8 320x240@15 face clip + Opus tone, pre-encoded), fer-worker --concurrency {fer_slots}, audio-worker --concurrency {voice_slots}, {wall:.0} s:"
    );
    let mut total_cpu = 0.0;
    for ((name, pid), b) in procs.iter().zip(&before) {
        let a = usage(*pid);
        let cpu = (a.0 - b.0) / wall * 100.0;
        total_cpu += cpu;
        println!(
            "  {name:<13} CPU {cpu:>5.1} % of a core, {} threads, RSS {:.1} MiB{}",
            a.1,
            a.2,
            if *name == "kurento-tap" {
                format!(
                    " ({:.1} threads, {:.2} MiB, {:.2} % CPU per participant)",
                    a.1 as f64 / n as f64,
                    a.2 / n as f64,
                    cpu / n as f64
                )
            } else {
                String::new()
            }
        );
    }
    println!("  all four      CPU {total_cpu:.1} % of a core (the node has 200 %)");
    for (model, asked) in [("fer", 5.0), ("voice", 2.0)] {
        let rates: Vec<f64> = (0..n)
            .map(|i| {
                counts
                    .iter()
                    .filter(|((p, m), _)| p == &format!("p{i:02}") && m == model)
                    .map(|(_, c)| *c as f64 / wall)
                    .sum()
            })
            .collect();
        let mut sorted = rates.clone();
        let (slowest, fastest) = (pct(&mut sorted, 0.0), pct(&mut sorted, 1.0));
        let mut lat = latency.get(model).cloned().unwrap_or_default();
        println!(
            "  {model:<6} results/s per participant: slowest {slowest:.2}, fastest {fastest:.2}{}; capture→result p50 {:.0} ms, p95 {:.0} ms, p99 {:.0} ms ({} results)",
            if asked > 0.0 {
                format!(" (asked {asked:.1}: slowest at {:.0} %)", slowest / asked * 100.0)
            } else {
                String::new()
            },
            pct(&mut lat, 0.5),
            pct(&mut lat, 0.95),
            pct(&mut lat, 0.99),
            lat.len()
        );
    }
    // Where the chunks that gave no result went (the daemon's counters over the whole run).
    let metrics = http_get(([127, 0, 0, 1], http).into(), "/metrics").await;
    for l in metrics.lines().filter(|l| {
        (l.starts_with("kurento_tap_chunks_dropped_total")
            || l.starts_with("kurento_tap_chunks_sent_total")
            || l.starts_with("kurento_tap_chunks_offered_total"))
            && !l.ends_with(" 0")
    }) {
        println!("  {l}");
    }
    // And the workers' side: what they refused and why, how long chunks waited for a model.
    for (name, port) in [("fer-worker", fer_http), ("audio-worker", voice_http)] {
        let text = http_get(([127, 0, 0, 1], port).into(), "/metrics").await;
        let mean = |base: &str| -> Option<f64> {
            let value = |suffix: &str| -> Option<f64> {
                text.lines()
                    .find(|l| l.starts_with(&format!("{base}{suffix}")))
                    .and_then(|l| l.rsplit(' ').next()?.parse().ok())
            };
            let (sum, count) = (value("_sum")?, value("_count")?);
            (count > 0.0).then(|| sum / count * 1e3)
        };
        let counters: Vec<&str> = text
            .lines()
            .filter(|l| {
                (l.starts_with("tap_worker_chunks_") || l.starts_with("tap_worker_predictions"))
                    && !l.ends_with(" 0")
            })
            .collect();
        println!(
            "  {name}: queue wait mean {:.1} ms, inference mean {:.1} ms; {}",
            mean("tap_worker_queue_wait_seconds").unwrap_or(f64::NAN),
            mean("tap_worker_inference_seconds").unwrap_or(f64::NAN),
            counters.join(", ")
        );
    }
    for c in [&mut daemon, &mut fer, &mut voice, &mut sim] {
        let _ = c.kill();
        let _ = c.wait();
    }
    let _ = std::fs::remove_file(path);
}
