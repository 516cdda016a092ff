//! Shared by the daemon's integration tests: a real nats-server on a free port with JetStream in a
//! temporary directory, model registration with heartbeats, and test workers.
#![allow(dead_code)]

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_nats::jetstream;
use futures_util::StreamExt;
use kms_sim::{Scenario, SimOptions, SimServer};
use tap_daemon::{Daemon, DaemonConfig};
use tap_protocol::*;

/// A nats-server process, stopped on drop.
pub struct Nats {
    child: Child,
    pub url: String,
    pub port: u16,
    dir: PathBuf,
}

static NEXT_DIR: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

fn nats_binary() -> String {
    for p in [
        "/usr/sbin/nats-server",
        "/usr/bin/nats-server",
        "/usr/local/bin/nats-server",
    ] {
        if std::path::Path::new(p).exists() {
            return p.into();
        }
    }
    "nats-server".into()
}

impl Nats {
    /// A server on a port the server picks itself (`-p -1`, read back from its ports file): no
    /// window in which another test's server or connection could take it, so tests never share a
    /// server.
    pub async fn start() -> Nats {
        let dir = std::env::temp_dir().join(format!(
            "tap-nats-{}-{}",
            std::process::id(),
            NEXT_DIR.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let mut child = Command::new(nats_binary())
            .args(["-a", "127.0.0.1", "-p", "-1", "-js", "-sd"])
            .arg(dir.join("js"))
            .arg("--ports_file_dir")
            .arg(&dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("nats-server runs (scripts/setup installs it)");
        let ports_file = dir.join(format!("nats-server_{}.ports", child.id()));
        for _ in 0..200 {
            if let Ok(Some(status)) = child.try_wait() {
                panic!("nats-server exited: {status}");
            }
            let port = std::fs::read_to_string(&ports_file).ok().and_then(|t| {
                let v: serde_json::Value = serde_json::from_str(&t).ok()?;
                let url = v["nats"][0].as_str()?.to_owned();
                url.rsplit(':').next()?.parse::<u16>().ok()
            });
            if let Some(port) = port {
                return Nats {
                    child,
                    url: format!("nats://127.0.0.1:{port}"),
                    port,
                    dir,
                };
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        let _ = child.kill();
        panic!("nats-server wrote no ports file in 5 s");
    }

    /// A new server on the same port and store directory (a restart).
    pub async fn start_on_reusing(port: u16, previous: &Nats) -> Nats {
        Self::start_in(port, previous.dir.clone()).await
    }

    async fn start_in(port: u16, dir: PathBuf) -> Nats {
        Self::try_start_in(port, dir)
            .await
            .unwrap_or_else(|| panic!("nats-server did not start on port {port}"))
    }

    /// Starts a server on `port`; `None` if it exited (port taken) instead of listening.
    async fn try_start_in(port: u16, dir: PathBuf) -> Option<Nats> {
        std::fs::create_dir_all(&dir).unwrap();
        let mut child = Command::new(nats_binary())
            .args(["-a", "127.0.0.1", "-p", &port.to_string(), "-js", "-sd"])
            .arg(dir.join("js"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("nats-server runs (scripts/setup installs it)");
        for _ in 0..100 {
            if let Ok(Some(_)) = child.try_wait() {
                let _ = std::fs::remove_dir_all(&dir);
                return None;
            }
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                // Listening, and still ours (a server that lost the port exits at once).
                tokio::time::sleep(Duration::from_millis(20)).await;
                if let Ok(Some(_)) = child.try_wait() {
                    let _ = std::fs::remove_dir_all(&dir);
                    return None;
                }
                return Some(Nats {
                    child,
                    url: format!("nats://127.0.0.1:{port}"),
                    port,
                    dir,
                });
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let _ = child.kill();
        let _ = child.wait();
        None
    }

    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Nats {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

pub fn video_spec(
    name: &str,
    fps: Option<f64>,
    every_nth: Option<u32>,
    w: u32,
    h: u32,
    format: PixelFormat,
) -> ModelSpec {
    ModelSpec {
        protocol: 1,
        id: ModelId::new(name, "1"),
        media: MediaKind::Video,
        video: Some(VideoChunkSpec {
            fps,
            every_nth,
            width: w,
            height: h,
            format,
        }),
        audio: None,
        labels: vec!["a".into(), "b".into()],
        output: "labels".into(),
        max_in_flight: 1,
        deadline_ms: 1000,
        heartbeat_ms: 500,
        updated_ms: 0,
        affect: None,
        quality: None,
        outputs: None,
    }
}

pub fn audio_spec(name: &str) -> ModelSpec {
    ModelSpec {
        protocol: 1,
        id: ModelId::new(name, "1"),
        media: MediaKind::Audio,
        video: None,
        audio: Some(AudioChunkSpec {
            window_ms: 500,
            hop_ms: 500,
            sample_rate: 16000,
            channels: 1,
            format: SampleFormat::S16,
        }),
        labels: vec![],
        output: "labels".into(),
        max_in_flight: 1,
        deadline_ms: 1000,
        heartbeat_ms: 500,
        updated_ms: 0,
        affect: None,
        quality: None,
        outputs: None,
    }
}

/// Keeps a spec registered (refreshing it every heartbeat) until dropped.
pub struct Registration {
    task: tokio::task::JoinHandle<()>,
    kv: jetstream::kv::Store,
    key: String,
}

impl Registration {
    pub async fn new(client: &async_nats::Client, spec: ModelSpec) -> Registration {
        let js = jetstream::new(client.clone());
        let kv = tap_daemon::dispatch::registry::open_bucket(&js)
            .await
            .unwrap();
        let key = spec.id.key();
        let (kv2, key2) = (kv.clone(), key.clone());
        let task = tokio::spawn(async move {
            loop {
                let mut s = spec.clone();
                s.updated_ms = now_ms();
                let _ = kv2.put(&key2, serde_json::to_vec(&s).unwrap().into()).await;
                tokio::time::sleep(Duration::from_millis(u64::from(spec.heartbeat_ms) / 2)).await;
            }
        });
        Registration { task, kv, key }
    }

    /// Deletes the entry (the model leaves).
    pub async fn remove(self) {
        self.task.abort();
        let _ = self.kv.delete(&self.key).await;
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// One chunk a test worker saw.
#[derive(Debug, Clone)]
pub struct Seen {
    pub meta: ChunkMeta,
    pub len: usize,
    pub at_ms: u64,
}

/// A worker that answers every chunk of `model` after `delay`, recording what it saw.
pub async fn worker(
    client: &async_nats::Client,
    model: &ModelId,
    delay: Duration,
) -> (Arc<Mutex<Vec<Seen>>>, tokio::task::JoinHandle<()>) {
    let mut sub = client
        .queue_subscribe(chunk_subject(model), queue_group(model))
        .await
        .unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let (log, client) = (seen.clone(), client.clone());
    let task = tokio::spawn(async move {
        while let Some(msg) = sub.next().await {
            let headers = msg.headers.clone().unwrap_or_default();
            let meta =
                ChunkMeta::from_headers(|k| headers.get(k).map(|v| v.as_str()), msg.payload.len())
                    .expect("valid chunk");
            log.lock().unwrap().push(Seen {
                meta,
                len: msg.payload.len(),
                at_ms: now_ms(),
            });
            if !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            if let Some(reply) = msg.reply {
                let body = WorkerReply {
                    labels: [("a".to_owned(), 0.75), ("b".to_owned(), 0.25)].into(),
                    top: Some("a".into()),
                    ..Default::default()
                };
                let _ = client
                    .publish(reply, serde_json::to_vec(&body).unwrap().into())
                    .await;
            }
        }
    });
    (seen, task)
}

pub async fn sim(scenario: &str, ports: (u16, u16)) -> SimServer {
    SimServer::start(SimOptions {
        scenario: Scenario::parse(scenario).unwrap(),
        announce_ip: Some([127, 0, 0, 1].into()),
        port_range: ports,
        ..Default::default()
    })
    .await
    .unwrap()
}

pub fn config(sim: &SimServer, nats: &Nats, ports: (u16, u16)) -> DaemonConfig {
    DaemonConfig {
        kurento_url: sim.url(),
        nats_url: nats.url.clone(),
        ports,
        http_listen: Some(([127, 0, 0, 1], 0).into()),
        rescan_interval: Duration::from_millis(200),
        ..Default::default()
    }
}

pub async fn wait_taps(d: &Daemon, n: usize) -> Vec<tap_daemon::TapStatus> {
    for _ in 0..100 {
        let s = d.status().await;
        if s.len() >= n {
            return s;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("expected {n} taps, have {:?}", d.status().await);
}

/// GET /metrics with a bare HTTP/1.1 request.
pub async fn reqwest_metrics(addr: std::net::SocketAddr) -> String {
    http_get(addr, "/metrics").await
}

/// GET `path` with a bare HTTP/1.1 request; the whole response, headers included.
pub async fn http_get(addr: std::net::SocketAddr, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    out
}

/// A numeric field of /proc/self/status (`VmRSS:` in KiB, `Threads:`).
pub fn proc_status(key: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find(|l| l.starts_with(key))
        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        .unwrap()
}

/// CPU seconds (user + system) a process has used so far: `pid` a number or `self`. (Benches.)
pub fn cpu_seconds_of(pid: &str) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let Some(i) = stat.rfind(')') else {
        return 0.0;
    };
    let f: Vec<&str> = stat[i + 2..].split_whitespace().collect();
    // Fields 14 and 15 (utime, stime) are at 11 and 12 after the command name.
    let ticks = f.get(11).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0)
        + f.get(12).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    static HZ: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
    let hz = *HZ.get_or_init(|| {
        std::process::Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok()?.trim().parse().ok())
            .unwrap_or(100.0)
    });
    ticks / hz
}

/// The `p` quantile (0..=1) of `v`, by rank (NaN when empty). (Benches.)
pub fn pct(v: &mut [f64], p: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    v[((v.len() - 1) as f64 * p).round() as usize]
}

/// Tests that measure media rates in one test binary take turns: on 2 cores, several simulated
/// calls encoding VP8/H.264 side by side starve each other's media (one run saw 9 frames decoded
/// in 4 s), which is the machine, not the daemon.
static MEDIA_RATE_TESTS: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Held for the whole of a test that asserts media rates.
pub async fn one_media_rate_test_at_a_time() -> tokio::sync::MutexGuard<'static, ()> {
    MEDIA_RATE_TESTS.lock().await
}

/// The `q` quantile of a Prometheus histogram in `text`, interpolated linearly within its bucket.
pub fn histogram_quantile(text: &str, name: &str, q: f64) -> f64 {
    let prefix = format!("{name}_bucket{{le=\"");
    let mut buckets: Vec<(f64, f64)> = text
        .lines()
        .filter_map(|l| {
            let rest = l.strip_prefix(&prefix)?;
            let (le, count) = rest.split_once("\"} ")?;
            let le = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().ok()?
            };
            Some((le, count.trim().parse().ok()?))
        })
        .collect();
    buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    let total = buckets.last().map_or(0.0, |b| b.1);
    if total == 0.0 {
        return f64::NAN;
    }
    let want = q * total;
    let (mut lo, mut below) = (0.0, 0.0);
    for (le, count) in buckets {
        if count >= want {
            if le.is_infinite() {
                return lo;
            }
            let share = if count > below {
                (want - below) / (count - below)
            } else {
                0.0
            };
            return lo + (le - lo) * share;
        }
        lo = le;
        below = count;
    }
    f64::NAN
}

/// A TCP port free on 127.0.0.1 right now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}
