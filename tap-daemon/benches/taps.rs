//! Benchmark (prints figures): the daemon's CPU, memory and threads per tapped participant (with and
//! without a DataChannel peer each), capture→dispatch latency, and the cost of publishing a 320x240
//! RGB chunk.
//!
//! `cargo build --release -p kms-sim && cargo bench -p tap-daemon --bench taps`
//!
//! kms-sim runs as a separate process (its encoders' CPU is not counted); nats-server too. The
//! daemon runs in this process with one registered model (RGB 224x224 at 5 fps) answered by a
//! worker in a child process (this binary again, `TAPS_BENCH_WORKER_NATS` set) that replies at
//! once: its NATS buffers and its CPU are a worker's, not the daemon's (until stop 34 it ran in
//! this process and its read buffer, up to ~10 MB at 50 participants, counted as the daemon's).
//! CPU and RSS are this process's.

use std::io::{BufRead, BufReader, Write as _};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use tap_daemon::{Daemon, DaemonConfig};
use tap_protocol::*;
use tap_test_support::prelude::*;

fn cpu_seconds() -> f64 {
    cpu_seconds_of("self")
}

/// This process's threads by name, digits folded (`udpsrc12:src` → `udpsrc#:src`), most first.
fn thread_names() -> String {
    let mut counts: std::collections::BTreeMap<String, usize> = Default::default();
    if let Ok(dir) = std::fs::read_dir("/proc/self/task") {
        for t in dir.flatten() {
            let name = std::fs::read_to_string(t.path().join("comm")).unwrap_or_default();
            let mut folded = String::new();
            for c in name.trim().chars() {
                if c.is_ascii_digit() {
                    if !folded.ends_with('#') {
                        folded.push('#');
                    }
                } else {
                    folded.push(c);
                }
            }
            *counts.entry(folded).or_default() += 1;
        }
    }
    let mut v: Vec<(String, usize)> = counts.into_iter().collect();
    v.sort_by_key(|e| std::cmp::Reverse(e.1));
    v.iter()
        .take(12)
        .map(|(n, c)| format!("{n} ×{c}"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn rss_mib() -> f64 {
    proc_status("VmRSS:") as f64 / 1024.0
}

fn sim_binary() -> String {
    std::env::var("KMS_SIM_BIN")
        .unwrap_or_else(|_| format!("{}/../target/release/kms-sim", env!("CARGO_MANIFEST_DIR")))
}

/// One measured configuration.
struct Run {
    participants: usize,
    width: u32,
    height: u32,
    fps: u32,
    port_base: u16,
    data_channels: bool,
    /// SRTP on the tap leg (the simulator encrypts as KMS does).
    srtp: bool,
    /// Receive threads shared by every tap (`None`: rtpbin per tap).
    shared: Option<usize>,
}

async fn run(nats: &Nats, client: &async_nats::Client, r: Run) {
    let Run {
        participants: n,
        width: w,
        height: h,
        fps,
        port_base,
        data_channels,
        srtp,
        shared,
    } = r;
    let mut scenario = String::from("[[room]]\nname='bench'\n");
    for i in 0..n {
        scenario.push_str(&format!(
            "[[room.participant]]\nname='p{i}'\nvideo={{codec='VP8', width={w}, height={h}, fps={fps}}}\naudio={{tone={}}}\ndata_channels={data_channels}\n",
            300 + i * 10
        ));
    }
    let path = std::env::temp_dir().join(format!("tap-bench-{}-{n}-{w}.toml", std::process::id()));
    std::fs::write(&path, scenario).unwrap();
    let sim_port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let sim = Command::new(sim_binary())
        .args([
            "--listen",
            &format!("127.0.0.1:{sim_port}"),
            "--announce-ip",
            "127.0.0.1",
            "--ports",
        ])
        .arg(format!("{}-{}", port_base, port_base + 999))
        .arg("--scenario")
        .arg(&path)
        // Each stream encoded once and replayed: the simulator's encoders would otherwise take
        // the cores the daemon is measured on (TAPS_BENCH_LIVE_ENCODERS=1 for the old way).
        .args(
            std::env::var("TAPS_BENCH_LIVE_ENCODERS")
                .is_err()
                .then_some("--pre-encoded"),
        )
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map(KilledOnDrop)
        .expect("build kms-sim first: cargo build --release -p kms-sim");
    tokio::time::sleep(Duration::from_millis(800)).await;
    let daemon = Daemon::start(DaemonConfig {
        kurento_url: format!("ws://127.0.0.1:{sim_port}/kurento"),
        nats_url: nats.url.clone(),
        ports: (port_base + 1000, port_base + 1999),
        http_listen: None,
        rescan_interval: Duration::from_millis(500),
        tap_crypto: if srtp {
            tap_daemon::media::srtp::TapCrypto::Sdes
        } else {
            tap_daemon::media::srtp::TapCrypto::Off
        },
        receive_threads: shared,
        ..Default::default()
    })
    .await
    .unwrap();
    let spec = bench_spec();
    let mut bench_worker = BenchWorker::start(&nats.url).await;
    let reg = Registration::new(client, spec).await;
    for _ in 0..100 {
        if daemon.status().await.len() >= n {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let taps = daemon.status().await.len();
    tokio::time::sleep(Duration::from_secs(3)).await;
    bench_worker.ask("clear").await;
    let (c0, t0) = (cpu_seconds(), Instant::now());
    let frames0: u64 = daemon.status().await.iter().map(|s| s.video_frames).sum();
    tokio::time::sleep(Duration::from_secs(10)).await;
    let cpu = (cpu_seconds() - c0) / t0.elapsed().as_secs_f64();
    let frames: u64 = daemon
        .status()
        .await
        .iter()
        .map(|s| s.video_frames)
        .sum::<u64>()
        - frames0;
    let rss = rss_mib();
    let threads = proc_status("Threads:");
    let text = daemon.metrics.encode();
    let metric = |prefix: &str| -> f64 {
        text.lines()
            .find(|l| l.starts_with(prefix))
            .and_then(|l| l.rsplit(' ').next()?.parse().ok())
            .unwrap_or(0.0)
    };
    let channels = metric("kurento_tap_datachannels_open ");
    let sent = metric("kurento_tap_datachannel_messages_total{outcome=\"sent\"}");
    // "<chunks> <p50 ms> <p99 ms>" of capture→dispatch, from the worker.
    let report = bench_worker.ask("report").await;
    let figures: Vec<f64> = report
        .split_whitespace()
        .filter_map(|f| f.parse().ok())
        .collect();
    let [chunks, p50, p99] = figures[..] else {
        panic!("the bench worker answered {report:?}");
    };
    let chunks = chunks as usize;
    let leg = if srtp { "SRTP" } else { "RTP " };
    let receive = match shared {
        None => "per-tap rtpbin".to_owned(),
        Some(k) => format!("{k} shared threads"),
    };
    println!(
        "{w}x{h}@{fps} VP8+Opus {leg} {receive:>16} {n:>2} participants ({taps} tapped, {channels} DataChannels, {sent} messages sent): CPU {:>5.1}% of a core = {:>4.2}%/participant → {:>5.0} taps/core; \
         decoded {:>5.1} fps/participant; RSS {rss:>6.1} MiB; {threads} threads; capture→dispatch p50 {:.1} ms p99 {:.1} ms ({chunks} chunks)",
        cpu * 100.0,
        cpu * 100.0 / n as f64,
        n as f64 / cpu,
        frames as f64 / 10.0 / n as f64,
        p50,
        p99,
    );
    if std::env::var("TAPS_BENCH_THREADS").is_ok() {
        println!("  threads by name: {}", thread_names());
    }
    // TAPS_BENCH_METRICS=<prefix>: the daemon's metrics whose lines start with it.
    if let Ok(prefix) = std::env::var("TAPS_BENCH_METRICS") {
        for line in text.lines().filter(|l| l.starts_with(prefix.as_str())) {
            println!("  {line}");
        }
    }
    reg.remove().await;
    bench_worker.stop();
    daemon.shutdown().await;
    drop(sim);
    let _ = std::fs::remove_file(path);
}

async fn publish_cost(client: &async_nats::Client) {
    let payload = bytes::Bytes::from(vec![7u8; 320 * 240 * 3]);
    let n = 2000;
    let t = Instant::now();
    for _ in 0..n {
        client.publish("bench.sink", payload.clone()).await.unwrap();
    }
    client.flush().await.unwrap();
    let per = t.elapsed().as_secs_f64() / n as f64 * 1e6;
    println!(
        "publish 320x240 RGB (230,400 B), no subscriber: {per:.1} µs/chunk ({:.0} chunks/s)",
        1e6 / per
    );

    let mut sub = client.subscribe("bench.echo").await.unwrap();
    let responder = client.clone();
    let task = tokio::spawn(async move {
        use futures_util::StreamExt;
        while let Some(m) = sub.next().await {
            if let Some(r) = m.reply {
                let _ = responder.publish(r, "{}".into()).await;
            }
        }
    });
    let mut rtt = Vec::new();
    for _ in 0..500 {
        let t = Instant::now();
        client.request("bench.echo", payload.clone()).await.unwrap();
        rtt.push(t.elapsed().as_secs_f64() * 1e3);
    }
    println!(
        "request/reply with a 320x240 RGB chunk via nats-server: p50 {:.3} ms, p99 {:.3} ms (500 round trips)",
        pct(&mut rtt, 0.5),
        pct(&mut rtt, 0.99)
    );
    task.abort();
}

/// A child process stopped when the bench lets go of it, a panic included (a bench whose output
/// pipe closed early left its simulator replaying media, and the next measurements shared the
/// cores with it).
struct KilledOnDrop(std::process::Child);

impl Drop for KilledOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The model the bench registers: RGB 224x224 at 5 fps.
fn bench_spec() -> ModelSpec {
    let mut spec = video_spec("bench", Some(5.0), None, 224, 224, PixelFormat::Rgb24);
    spec.heartbeat_ms = 1000;
    spec
}

/// The worker in its child process, driven by lines on its stdin: `clear` forgets what it saw,
/// `report` answers `<chunks> <p50 ms> <p99 ms>` (capture→dispatch); end of input ends it.
struct BenchWorker {
    child: KilledOnDrop,
    replies: std::sync::Arc<std::sync::Mutex<BufReader<std::process::ChildStdout>>>,
}

impl BenchWorker {
    async fn start(nats_url: &str) -> Self {
        let mut child = KilledOnDrop(
            Command::new(std::env::current_exe().unwrap())
                .env("TAPS_BENCH_WORKER_NATS", nats_url)
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .spawn()
                .unwrap(),
        );
        let replies = std::sync::Arc::new(std::sync::Mutex::new(BufReader::new(
            child.0.stdout.take().unwrap(),
        )));
        let mut worker = BenchWorker { child, replies };
        let ready = worker.read_line().await;
        assert_eq!(ready, "ready", "the bench worker did not start");
        worker
    }

    async fn read_line(&mut self) -> String {
        let replies = self.replies.clone();
        tokio::task::spawn_blocking(move || {
            let mut line = String::new();
            replies.lock().unwrap().read_line(&mut line).unwrap();
            line.trim().to_owned()
        })
        .await
        .unwrap()
    }

    async fn ask(&mut self, command: &str) -> String {
        let stdin = self.child.0.stdin.as_mut().unwrap();
        writeln!(stdin, "{command}").unwrap();
        stdin.flush().unwrap();
        self.read_line().await
    }

    fn stop(mut self) {
        // End of input ends it; the drop then only reaps it.
        drop(self.child.0.stdin.take());
        let _ = self.child.0.wait();
    }
}

/// The child process's side of [`BenchWorker`].
fn run_bench_worker(nats_url: String) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async move {
        let client = async_nats::connect(&nats_url).await.unwrap();
        let (seen, task) = worker(&client, &bench_spec().id, Duration::ZERO).await;
        client.flush().await.unwrap();
        let (tx, mut commands) = tokio::sync::mpsc::channel::<String>(4);
        std::thread::spawn(move || {
            for line in std::io::stdin().lock().lines() {
                let Ok(line) = line else { break };
                if tx.blocking_send(line).is_err() {
                    break;
                }
            }
        });
        println!("ready");
        while let Some(command) = commands.recv().await {
            match command.trim() {
                "clear" => {
                    seen.lock().unwrap().clear();
                    println!("cleared");
                }
                "report" => {
                    let mut lat: Vec<f64> = seen
                        .lock()
                        .unwrap()
                        .iter()
                        .map(|s| (s.meta.sent_us as f64 - s.meta.capture_us as f64) / 1e3)
                        .collect();
                    let chunks = lat.len();
                    let (p50, p99) = (pct(&mut lat, 0.5), pct(&mut lat, 0.99));
                    println!("{chunks} {p50} {p99}");
                }
                other => println!("unknown command {other:?}"),
            }
        }
        task.abort();
    });
}

fn main() {
    if let Ok(nats_url) = std::env::var("TAPS_BENCH_WORKER_NATS") {
        run_bench_worker(nats_url);
        return;
    }
    // As `kurento-tap` does, before any thread: the daemon measured here is the one that ships
    // (MALLOC_ARENA_MAX=16, glibc's default on 2 cores, measures without it).
    let arenas = tap_daemon::memory::limit_malloc_arenas();
    println!("malloc arenas: {arenas}");
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
        .block_on(all_rows());
}

async fn all_rows() {
    let nats = Nats::start().await;
    let client = async_nats::connect(&nats.url).await.unwrap();
    publish_cost(&client).await;
    // (participants, width, height, fps, first port, DataChannels, SRTP); the 10-participant rows
    // run side by side: plain, with a DataChannel peer per participant, and with SRTP taps.
    // TAPS_BENCH_ONLY=<participants> runs only the rows with that many participants.
    let only: Option<usize> = std::env::var("TAPS_BENCH_ONLY")
        .ok()
        .and_then(|v| v.parse().ok());
    // The rows with `shared` receive every tap on 2 threads shared by all (receive_threads = 2)
    // beside the same rows on rtpbin per tap. TAPS_BENCH_RECEIVE=per-tap|shared keeps one kind.
    let receive = std::env::var("TAPS_BENCH_RECEIVE").ok();
    for (participants, width, height, fps, port_base, data_channels, srtp, shared) in [
        (1, 320, 240, 15, 20000, false, false, None),
        (10, 320, 240, 15, 22000, false, false, None),
        (10, 320, 240, 15, 36000, false, false, Some(2)),
        (10, 320, 240, 15, 30000, true, false, None),
        (10, 320, 240, 15, 32000, false, true, None),
        (30, 320, 240, 15, 24000, false, false, None),
        (50, 320, 240, 15, 34000, false, false, None),
        (50, 320, 240, 15, 38000, false, false, Some(2)),
        // The shared path's growth: 1, 10, 30, 50 and 100 participants.
        (1, 320, 240, 15, 44000, false, false, Some(2)),
        (30, 320, 240, 15, 46000, false, false, Some(2)),
        (100, 320, 240, 15, 48000, false, false, Some(2)),
        // Shared threads with a DataChannel peer per participant (issue 22 counts it in the RSS).
        (10, 320, 240, 15, 50000, true, false, Some(2)),
        (50, 320, 240, 15, 52000, true, false, Some(2)),
        (1, 640, 480, 30, 26000, false, false, None),
        (5, 640, 480, 30, 28000, false, false, None),
        (10, 640, 480, 15, 40000, false, false, None),
        (10, 640, 480, 15, 42000, false, false, Some(2)),
    ] {
        if receive.as_deref() == Some("shared") && shared.is_none()
            || receive.as_deref() == Some("per-tap") && shared.is_some()
        {
            continue;
        }
        if only.is_some_and(|o| o != participants) {
            continue;
        }
        let r = Run {
            srtp,
            shared,
            participants,
            width,
            height,
            fps,
            port_base,
            data_channels,
        };
        run(&nats, &client, r).await;
        println!(
            "  decoded-frame buffers so far: {} allocated, {} reused from the shared shelf",
            tap_daemon::media::receiver::frame_pool::frames_allocated(),
            tap_daemon::media::receiver::frame_pool::frames_reused()
        );
    }
}
