//! Benchmark (prints figures): how long a participant waits to be tapped and analysed, on an idle
//! machine and with both cores kept busy by two other processes, with the daemon's look at new
//! endpoints (ObjectCreated → examine at once) and without it (the periodic scan alone), side by
//! side in one run.
//!
//! `cargo bench -p tap-daemon --bench time_to_tap`
//!
//! Each run: nats-server, the simulator (in this process) with a room that 40 participants join
//! one every 250 ms, each staying 4 s (160x120 video, audio), a registered video model at 5 fps and
//! a voice model (chunks are offered; no worker is needed for that), and the daemon (rescan every
//! 200 ms, as the tests run it). Read from the daemon's /metrics: `time_to_tap_seconds` (endpoint
//! created → tap running), `time_to_first_chunk_seconds` (→ first chunk offered to a model) and
//! `tap_setup_seconds` (the setup alone), p50/p95/p99 interpolated within the histogram buckets,
//! and how many of the 40 were tapped while present.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use tap_daemon::Daemon;
use tap_test_support::prelude::*;

const PARTICIPANTS: usize = 40;

fn value(text: &str, name: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(&format!("{name} ")))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap_or(f64::NAN)
}

struct Busy(Vec<Child>);

impl Busy {
    fn start(n: usize) -> Busy {
        Busy(
            (0..n)
                .map(|_| {
                    Command::new("sh")
                        .args(["-c", "while :; do :; done"])
                        .stdout(Stdio::null())
                        .spawn()
                        .expect("sh")
                })
                .collect(),
        )
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

async fn run(lookup: bool, busy: usize, ports: u16) -> String {
    let nats = Nats::start().await;
    let mut scenario = String::from("[[room]]\nname='ttt'\n");
    for i in 0..PARTICIPANTS {
        scenario.push_str(&format!(
            "[[room.participant]]\nname='p{i}'\nvideo={{width=160, height=120}}\naudio={{}}\njoin_ms={}\nleave_ms={}\n",
            300 + i * 250,
            300 + i * 250 + 4000
        ));
    }
    let client = async_nats::connect(&nats.url).await.unwrap();
    let video = Registration::new(
        &client,
        video_spec(
            "ttt-video",
            Some(5.0),
            None,
            64,
            48,
            tap_protocol::PixelFormat::Gray8,
        ),
    )
    .await;
    let audio = Registration::new(&client, audio_spec("ttt-voice")).await;
    let _load = Busy::start(busy);
    let sim = sim(&scenario, (ports, ports + 1999)).await;
    let mut config = config(&sim, &nats, (ports + 2000, ports + 2999));
    config.lookup_new_endpoints = lookup;
    let daemon = Daemon::start(config).await.unwrap();
    tokio::time::sleep(Duration::from_millis(
        300 + PARTICIPANTS as u64 * 250 + 4500,
    ))
    .await;
    let m = reqwest_metrics(daemon.http_addr.unwrap()).await;
    daemon.shutdown().await;
    video.remove().await;
    audio.remove().await;
    let q = |name: &str| {
        format!(
            "{:.0} / {:.0} / {:.0} ms",
            histogram_quantile(&m, name, 0.5) * 1000.0,
            histogram_quantile(&m, name, 0.95) * 1000.0,
            histogram_quantile(&m, name, 0.99) * 1000.0
        )
    };
    format!(
        "| {} | {} | {:.0} of {PARTICIPANTS} | {} | {} | {} |",
        if lookup {
            "look at new endpoints"
        } else {
            "scan only (before)"
        },
        if busy > 0 {
            format!("{busy} busy loops")
        } else {
            "idle".into()
        },
        value(&m, "kurento_tap_taps_total"),
        q("kurento_tap_time_to_tap_seconds"),
        q("kurento_tap_time_to_first_chunk_seconds"),
        q("kurento_tap_tap_setup_seconds"),
    )
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    // `cargo bench` passes --bench; a filter that is not ours means another bench was asked for.
    if std::env::args()
        .skip(1)
        .any(|a| !a.starts_with('-') && !"time_to_tap".contains(a.as_str()))
    {
        return;
    }
    println!(
        "{PARTICIPANTS} participants join one every 250 ms and stay 4 s; rescan every 200 ms; p50 / p95 / p99"
    );
    println!("| discovery | machine | tapped | endpoint created → tap running | → first chunk | setup alone |");
    println!("|---|---|---|---|---|---|");
    let mut ports = 20000;
    for busy in [0, 2] {
        for lookup in [false, true] {
            println!("{}", run(lookup, busy, ports).await);
            ports += 3000;
        }
    }
}
