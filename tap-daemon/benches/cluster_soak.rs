//! The scale-out soak: several kms-sim instances with many participants each, several daemons in
//! cluster mode watching all of them, FER and voice workers, and faults on a timeline: a daemon
//! killed with SIGKILL and restarted, a worker killed, two workers added, nats-server restarted.
//! Prints, and writes to target/soak/report.md: how long each fault left participants untapped,
//! duplicate taps (must be 0), leaked KMS objects at the end (must be 0), results per second per
//! model and capture→result p50/p95 per minute, and the saturation gauge over time.
//!
//! `scripts/cluster-soak` builds the release binaries and runs it. Knobs (environment):
//! SOAK_SECONDS (300), SOAK_KMS (3), SOAK_PARTICIPANTS (20 per KMS), SOAK_DAEMONS (3).

use std::collections::BTreeMap;
use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use kurento_client::prelude::*;

const OWNER_KEY: &str = "kurento-tap.owner";
const TAPPED_KEY: &str = "kurento-tap.endpoint";

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let b = exe.parent().and_then(Path::parent).unwrap().join(name);
    assert!(
        b.exists(),
        "{} missing: scripts/cluster-soak builds it",
        b.display()
    );
    b
}

/// The workspace's target/soak (cargo runs benches from the package's folder).
fn soak_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/soak")
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A child process logging to target/soak/<name>.log, killed on drop.
struct Proc {
    name: String,
    child: Option<Child>,
    cmd: Vec<String>,
    env: Vec<(String, String)>,
}

impl Proc {
    fn start(name: &str, program: &Path, args: &[String], env: &[(String, String)]) -> Proc {
        let mut p = Proc {
            name: name.to_owned(),
            child: None,
            cmd: std::iter::once(program.display().to_string())
                .chain(args.iter().cloned())
                .collect(),
            env: env.to_vec(),
        };
        p.spawn();
        p
    }

    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(soak_dir().join(format!("{}.log", self.name)))
            .unwrap();
        let child = Command::new(&self.cmd[0])
            .args(&self.cmd[1..])
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdout(Stdio::from(log.try_clone().unwrap()))
            .stderr(Stdio::from(log))
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", self.name));
        self.child = Some(child);
    }

    fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn terminate(&mut self) {
        if let Some(mut c) = self.child.take() {
            // SAFETY: a signal to our own child.
            unsafe {
                libc::kill(c.id() as i32, libc::SIGTERM);
            }
            for _ in 0..300 {
                if let Ok(Some(_)) = c.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill9();
    }
}

async fn http_get(addr: SocketAddr, path: &str) -> Option<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::time::timeout(Duration::from_secs(1), tokio::net::TcpStream::connect(addr))
        .await
        .ok()?
        .ok()?;
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes())
        .await
        .ok()?;
    let mut out = String::new();
    tokio::time::timeout(Duration::from_secs(2), s.read_to_string(&mut out))
        .await
        .ok()?
        .ok()?;
    Some(out)
}

/// Sum of a gauge's samples with `model="…"` per model.
fn gauge_by_model(text: &str, name: &str) -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    for line in text
        .lines()
        .filter(|l| l.starts_with(name) && l.as_bytes().get(name.len()) == Some(&b'{'))
    {
        let Some(model) = line
            .split("model=\"")
            .nth(1)
            .and_then(|r| r.split('"').next())
        else {
            continue;
        };
        if let Some(v) = line.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()) {
            *out.entry(model.to_owned()).or_default() += v;
        }
    }
    out
}

/// (publishers tapped once by a live daemon, publishers tapped more than once, objects tagged by
/// any owner).
async fn census(kms: &[KurentoClient], dead: &[String]) -> (usize, usize, usize) {
    let mut taps: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut owned = 0;
    for k in kms {
        for p in k.server_manager().get_pipelines().await.unwrap_or_default() {
            let Ok(children) = p.get_children().await else {
                continue;
            };
            for c in children {
                if !(c.id().ends_with("RtpEndpoint") || c.id().ends_with("WebRtcEndpoint")) {
                    continue;
                }
                let Ok(tags) = c.get_tags().await else {
                    continue;
                };
                if !tags.iter().any(|t| t.key == OWNER_KEY) {
                    continue;
                }
                owned += 1;
                let is_tap = c.id().ends_with("RtpEndpoint") && !c.id().ends_with("WebRtcEndpoint");
                if let (true, Some(ep)) = (is_tap, tags.iter().find(|t| t.key == TAPPED_KEY)) {
                    let owner = tags
                        .iter()
                        .find(|t| t.key == OWNER_KEY)
                        .map(|t| t.value.clone());
                    taps.entry(ep.value.clone())
                        .or_default()
                        .push(owner.unwrap_or_default());
                }
            }
        }
    }
    let dup = taps.values().filter(|o| o.len() > 1).count();
    // A dead daemon's taps stay in KMS until another daemon takes the room over: not tapped.
    let live = taps
        .values()
        .filter(|o| o.len() == 1 && !dead.contains(&o[0]))
        .count();
    (live, dup, owned)
}

fn percentile(v: &mut [f64], p: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    v[((v.len() - 1) as f64 * p).round() as usize]
}

#[derive(Default)]
struct Seen {
    /// (second since start, model) → results.
    per_second: BTreeMap<(u64, String), u64>,
    /// (minute, model) → capture→result latencies, ms.
    latency: BTreeMap<(u64, String), Vec<f64>>,
}

fn start_nats(port: u16, store: &Path) -> Proc {
    let nats = ["/usr/sbin/nats-server", "/usr/bin/nats-server"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .unwrap_or("nats-server");
    let args: Vec<String> = [
        "-a",
        "127.0.0.1",
        "-p",
        &port.to_string(),
        "-js",
        "-sd",
        &store.display().to_string(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    Proc::start("nats-server", Path::new(nats), &args, &[])
}

async fn wait_tcp(port: u16) {
    for _ in 0..200 {
        if tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("nothing listens on {port}");
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let seconds = env_or("SOAK_SECONDS", 300);
    let n_kms = env_or("SOAK_KMS", 3) as usize;
    let n_participants = env_or("SOAK_PARTICIPANTS", 20) as usize;
    let n_daemons = env_or("SOAK_DAEMONS", 3) as usize;
    let scale = |at: u64| Duration::from_secs(at * seconds / 300);
    std::fs::create_dir_all(soak_dir()).unwrap();
    for f in std::fs::read_dir(soak_dir()).unwrap().flatten() {
        let _ = std::fs::remove_file(f.path());
    }
    let store = std::env::temp_dir().join(format!("tap-soak-{}", std::process::id()));
    let nats_port = free_port();
    let mut nats = start_nats(nats_port, &store);
    wait_tcp(nats_port).await;
    let nats_url = format!("nats://127.0.0.1:{nats_port}");
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let face = root.join("classifiers/fer-worker/testdata/astronaut_256.png");

    // KMS: participants in rooms of 5, each with a face and a voice-like tone.
    let mut sims = Vec::new();
    let mut kms_list = Vec::new();
    for k in 0..n_kms {
        let mut scenario = String::new();
        for p in 0..n_participants {
            if p % 5 == 0 {
                scenario.push_str(&format!("[[room]]\nname = 'k{k}-room{}'\n", p / 5));
            }
            scenario.push_str(&format!(
                "[[room.participant]]\nname = 'p{p}'\nvideo = {{ codec = 'VP8', image = '{}', width = 160, height = 120, fps = 5 }}\naudio = {{ tone = {} }}\n",
                face.display(),
                200.0 + 20.0 * p as f64
            ));
        }
        let file = soak_dir()
            .join(format!("kms{k}.toml"))
            .display()
            .to_string();
        std::fs::write(&file, scenario).unwrap();
        let port = free_port();
        let base = 20000 + k as u16 * 1000;
        let args = vec![
            "--listen".into(),
            format!("127.0.0.1:{port}"),
            "--scenario".into(),
            file,
            "--ports".into(),
            format!("{base}-{}", base + 999),
            "--announce-ip".into(),
            "127.0.0.1".into(),
        ];
        sims.push(Proc::start(&format!("kms{k}"), &bin("kms-sim"), &args, &[]));
        wait_tcp(port).await;
        kms_list.push(format!("k{k}=ws://127.0.0.1:{port}/kurento"));
    }
    let kms_arg = kms_list.join(",");
    let mut observers = Vec::new();
    for item in &kms_list {
        let url = item.split_once('=').unwrap().1;
        observers.push(KurentoClient::connect(url).await.unwrap());
    }

    let mut daemon_http = Vec::new();
    let mut daemons: Vec<Proc> = (0..n_daemons)
        .map(|d| {
            let http = free_port();
            daemon_http.push(SocketAddr::from(([127, 0, 0, 1], http)));
            let base = 30000 + d as u16 * 1000;
            let args: Vec<String> = [
                "run",
                "--kurento",
                &kms_arg,
                "--nats",
                &nats_url,
                "--cluster",
                "true",
                "--owner",
                &format!("soak-d{d}"),
                "--ports",
                &format!("{base}-{}", base + 999),
                "--http",
                &format!("127.0.0.1:{http}"),
                "--datachannels",
                "false",
            ]
            .iter()
            .map(|s| s.to_string())
            .collect();
            Proc::start(&format!("daemon{d}"), &bin("kurento-tap"), &args, &[])
        })
        .collect();
    let worker_env = vec![("ORT_DISABLE_TELEMETRY".to_owned(), "1".to_owned())];
    let fer = |i: usize| {
        let args: Vec<String> = ["run", "--nats", &nats_url]
            .iter()
            .map(|s| s.to_string())
            .collect();
        Proc::start(&format!("fer{i}"), &bin("fer-worker"), &args, &worker_env)
    };
    let mut fers = vec![fer(0), fer(1)];
    let _voice = Proc::start(
        "voice0",
        &bin("audio-worker"),
        &["run".to_owned(), "--nats".to_owned(), nats_url.clone()],
        &worker_env,
    );

    // Observers: results off NATS (reconnecting through the NATS restart), taps off KMS.
    let start = Instant::now();
    let seen = Arc::new(Mutex::new(Seen::default()));
    {
        let seen = seen.clone();
        let url = nats_url.clone();
        tokio::spawn(async move {
            let client = async_nats::ConnectOptions::new()
                .retry_on_initial_connect()
                .connect(url)
                .await
                .unwrap();
            let mut sub = client.subscribe("tap.v1.result.>").await.unwrap();
            while let Some(m) = sub.next().await {
                let Ok(r) = serde_json::from_slice::<tap_protocol::ResultMessage>(&m.payload)
                else {
                    continue;
                };
                let t = start.elapsed().as_secs();
                let model = format!("{}@{}", r.model, r.version);
                let mut s = seen.lock().unwrap();
                *s.per_second.entry((t, model.clone())).or_default() += 1;
                s.latency
                    .entry((t / 60, model))
                    .or_default()
                    .push(r.latency_ms);
            }
        });
    }
    let total = n_kms * n_participants;
    let faults: Vec<(Duration, &str)> = vec![
        (scale(40), "kill -9 daemon0"),
        (scale(80), "restart daemon0"),
        (scale(110), "kill -9 fer0"),
        (scale(140), "add fer2, fer3"),
        (scale(190), "restart nats-server"),
    ];
    let mut next_fault = 0;
    let mut dead: Vec<String> = Vec::new();
    let mut recoveries: Vec<(String, f64, Option<f64>)> = Vec::new();
    let mut pending: Option<(String, Instant)> = None;
    let mut max_dup = 0;
    let mut first_full: Option<f64> = None;
    let mut saturation: Vec<(f64, BTreeMap<String, f64>)> = Vec::new();
    let mut last_sample = Instant::now() - Duration::from_secs(10);
    while start.elapsed() < Duration::from_secs(seconds) {
        let now = start.elapsed();
        if next_fault < faults.len() && now >= faults[next_fault].0 {
            let what = faults[next_fault].1;
            match what {
                "kill -9 daemon0" => {
                    daemons[0].kill9();
                    dead.push("soak-d0".to_owned());
                }
                "restart daemon0" => {
                    daemons[0].spawn();
                    dead.clear();
                }
                "kill -9 fer0" => fers[0].kill9(),
                "add fer2, fer3" => {
                    fers.push(fer(2));
                    fers.push(fer(3));
                }
                "restart nats-server" => {
                    nats.kill9();
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    nats.spawn();
                    wait_tcp(nats_port).await;
                }
                _ => {}
            }
            println!("{:>6.1} s  fault: {what}", start.elapsed().as_secs_f64());
            pending = Some((what.to_owned(), Instant::now()));
            recoveries.push((what.to_owned(), now.as_secs_f64(), None));
            next_fault += 1;
        }
        let (tapped, dup, _) = census(&observers, &dead).await;
        max_dup = max_dup.max(dup);
        if tapped == total && dup == 0 {
            if first_full.is_none() {
                first_full = Some(start.elapsed().as_secs_f64());
                println!(
                    "{:>6.1} s  all {total} participants tapped once",
                    first_full.unwrap()
                );
            }
            if let Some((what, at)) = pending.take() {
                let took = at.elapsed().as_secs_f64();
                if let Some(r) = recoveries.iter_mut().rev().find(|r| r.0 == what) {
                    r.2 = Some(took);
                }
            }
        }
        if last_sample.elapsed() >= Duration::from_secs(5) {
            last_sample = Instant::now();
            let mut sum: BTreeMap<String, f64> = BTreeMap::new();
            for addr in &daemon_http {
                if let Some(text) = http_get(*addr, "/metrics").await {
                    for (m, v) in gauge_by_model(&text, "kurento_tap_model_saturation") {
                        *sum.entry(m).or_default() += v;
                    }
                }
            }
            saturation.push((start.elapsed().as_secs_f64(), sum));
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }

    // Clean stop: every daemon hands over and releases; nothing of ours may remain in KMS.
    for d in daemons.iter_mut() {
        d.terminate();
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (_, _, leaked) = census(&observers, &[]).await;
    drop(fers);
    drop(nats);
    let _ = std::fs::remove_dir_all(&store);

    let seen = seen.lock().unwrap();
    let mut out = String::new();
    let w = |out: &mut String, s: String| {
        println!("{s}");
        out.push_str(&s);
        out.push('\n');
    };
    w(&mut out, format!("# cluster soak: {n_kms} kms-sim × {n_participants} participants, {n_daemons} daemons, 2 FER + 1 voice worker, {seconds} s"));
    w(&mut out, String::new());
    w(
        &mut out,
        format!(
            "all participants tapped once after {:.1} s",
            first_full.unwrap_or(f64::NAN)
        ),
    );
    w(&mut out, String::new());
    w(
        &mut out,
        "| fault | at (s) | every participant tapped once by a live daemon after (s) |".into(),
    );
    w(&mut out, "|---|---|---|".into());
    for (what, at, took) in &recoveries {
        w(
            &mut out,
            format!(
                "| {what} | {at:.0} | {} |",
                took.map(|t| format!("{t:.1}"))
                    .unwrap_or_else(|| "never".into())
            ),
        );
    }
    w(&mut out, String::new());
    w(
        &mut out,
        format!("duplicate taps (most at one look): {max_dup}"),
    );
    w(
        &mut out,
        format!("KMS objects left by the daemons after they stopped: {leaked}"),
    );
    w(&mut out, String::new());
    let models: Vec<String> = {
        let mut m: Vec<String> = seen.per_second.keys().map(|(_, m)| m.clone()).collect();
        m.sort();
        m.dedup();
        m
    };
    w(
        &mut out,
        format!(
            "| window (s) | {} |",
            models
                .iter()
                .map(|m| format!("{m} results/s"))
                .collect::<Vec<_>>()
                .join(" | ")
        ),
    );
    w(&mut out, format!("|---|{}", "---|".repeat(models.len())));
    let step = (seconds / 15).max(10);
    let mut t = 0;
    while t < seconds {
        let cells: Vec<String> = models
            .iter()
            .map(|m| {
                let n: u64 = (t..t + step)
                    .map(|s| seen.per_second.get(&(s, m.clone())).copied().unwrap_or(0))
                    .sum();
                format!("{:.1}", n as f64 / step as f64)
            })
            .collect();
        w(
            &mut out,
            format!("| {t}–{} | {} |", t + step, cells.join(" | ")),
        );
        t += step;
    }
    w(&mut out, String::new());
    w(
        &mut out,
        "| minute | model | results | capture→result p50 (ms) | p95 (ms) |".into(),
    );
    w(&mut out, "|---|---|---|---|---|".into());
    for ((minute, model), lat) in &seen.latency {
        let mut v = lat.clone();
        let (p50, p95) = (percentile(&mut v, 0.5), percentile(&mut v, 0.95));
        w(
            &mut out,
            format!(
                "| {minute} | {model} | {} | {p50:.0} | {p95:.0} |",
                lat.len()
            ),
        );
    }
    w(&mut out, String::new());
    w(
        &mut out,
        format!(
            "| t (s) | {} |",
            models
                .iter()
                .map(|m| format!("saturation {m}"))
                .collect::<Vec<_>>()
                .join(" | ")
        ),
    );
    w(&mut out, format!("|---|{}", "---|".repeat(models.len())));
    for (t, sums) in saturation.iter().step_by(2) {
        let cells: Vec<String> = models
            .iter()
            .map(|m| {
                sums.get(m)
                    .map(|v| format!("{v:.2}"))
                    .unwrap_or_else(|| "–".into())
            })
            .collect();
        w(&mut out, format!("| {t:.0} | {} |", cells.join(" | ")));
    }
    let mut f = std::fs::File::create(soak_dir().join("report.md")).unwrap();
    f.write_all(out.as_bytes()).unwrap();
    println!("\nreport: target/soak/report.md, logs: target/soak/*.log");
    if max_dup > 0 || leaked > 0 {
        std::process::exit(1);
    }
}
