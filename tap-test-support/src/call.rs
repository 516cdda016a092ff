//! A real-KMS call for tests and benchmarks: nats-server, the group-call app, Chromium
//! participants (with a fake camera and microphone), the daemon and the workers as processes, and
//! what they report.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use kurento_client::prelude::*;
use serde_json::Value;

use crate::browser;
use crate::kms::RealKms;
use crate::metrics::http_get;
use crate::nats::Nats;
use crate::proc::{workspace_bin, Proc};

pub const OWNER_KEY: &str = "kurento-tap.owner";
pub const FER_FPS: f64 = 5.0;
/// The daemon's RTP port range in these calls (iptables' MIN:MAX form): the tap leg KMS → daemon.
pub const TAP_PORTS: &str = "44000:44999";
/// The workers' /metrics, inside the call's own network namespace.
const FER_METRICS: &str = "127.0.0.1:9471";
const VOICE_METRICS: &str = "127.0.0.1:9472";

/// One result seen on NATS.
#[derive(Debug, Clone)]
pub struct Seen {
    pub at: Instant,
    pub participant: String,
    pub media: String,
    pub latency_ms: f64,
    pub room: String,
}

/// The call under test: nats-server, the app, participants, the daemon and workers.
pub struct Call {
    pub kms: Arc<RealKms>,
    pub nats: Nats,
    pub app: Proc,
    pub app_url: String,
    pub observer: KurentoClient,
    pub participants: HashMap<String, browser::Browser>,
    pub daemon: Option<Proc>,
    pub metrics: Option<SocketAddr>,
    pub workers: Vec<Proc>,
    pub results: Arc<Mutex<Vec<Seen>>>,
}

impl Call {
    pub async fn start(kms: Arc<RealKms>, app_args: &[&str]) -> Call {
        let nats = Nats::start().await;
        let mut cmd = Command::new(workspace_bin("group-call"));
        cmd.args(["--kms", &kms.url, "--listen", "127.0.0.1:0"])
            .args(app_args)
            .env("RUST_LOG", "info");
        let app = Proc::spawn("group-call", cmd);
        let line = app
            .wait_line("listening on http://", Duration::from_secs(20))
            .await
            .expect("the group-call app starts");
        let app_url = line
            .split("listening on ")
            .nth(1)
            .unwrap()
            .trim()
            .trim_end_matches('/')
            .to_owned();
        let observer = KurentoClient::connect(&kms.url).await.unwrap();
        let results = Arc::new(Mutex::new(Vec::new()));
        let client = async_nats::connect(&nats.url).await.unwrap();
        let mut sub = client.subscribe("tap.v1.result.>").await.unwrap();
        let sink = results.clone();
        tokio::spawn(async move {
            let _client = client;
            while let Some(m) = sub.next().await {
                let Ok(v) = serde_json::from_slice::<Value>(&m.payload) else {
                    continue;
                };
                sink.lock().unwrap().push(Seen {
                    at: Instant::now(),
                    participant: v["participant"].as_str().unwrap_or_default().into(),
                    media: v["media"].as_str().unwrap_or_default().into(),
                    latency_ms: v["latency_ms"].as_f64().unwrap_or(-1.0),
                    room: v["room"].as_str().unwrap_or_default().into(),
                });
            }
        });
        Call {
            kms,
            nats,
            app,
            app_url,
            observer,
            participants: HashMap::new(),
            daemon: None,
            metrics: None,
            workers: Vec::new(),
            results,
        }
    }

    pub fn join(&mut self, room: &str, name: &str, query: &str) {
        let b = participant(&self.app_url, room, name, query);
        self.participants.insert(name.to_owned(), b);
    }

    pub async fn page(&self, name: &str) -> browser::Page {
        browser::open_page(&self.participants[name]).await
    }

    /// Waits until every participant's own connection is up and its subscriptions too.
    pub async fn wait_connected(&self, limit: Duration) {
        for name in self.participants.keys() {
            let mut page = self.page(name).await;
            let ok = page
                .wait_for(
                    "window.gc && gc.connection === 'connected' && Object.values(gc.peers).every(s => s === 'connected')",
                    limit,
                )
                .await;
            let state = page.eval("JSON.stringify(window.gc)").await;
            assert!(
                ok,
                "{name} did not connect: {state}\napp:\n{}",
                self.app.output()
            );
        }
    }

    pub fn start_workers(&mut self) {
        let mut fer = Command::new(workspace_bin("fer-worker"));
        fer.args([
            "run",
            "--nats",
            &self.nats.url,
            "--fps",
            &FER_FPS.to_string(),
            "--metrics",
            FER_METRICS,
        ]);
        self.workers.push(Proc::spawn("fer-worker", fer));
        let mut voice = Command::new(workspace_bin("audio-worker"));
        voice.args(["run", "--nats", &self.nats.url, "--metrics", VOICE_METRICS]);
        self.workers.push(Proc::spawn("audio-worker", voice));
    }

    /// What the daemon and the workers count: the story of a failed rate assertion.
    pub async fn all_metrics(&self) -> String {
        let mut out = String::new();
        if let Some(daemon) = self.metrics {
            out += &format!("--- kurento-tap\n{}", http_get(daemon, "/metrics").await);
        }
        for (name, addr) in [("fer-worker", FER_METRICS), ("audio-worker", VOICE_METRICS)] {
            let text = http_get(addr.parse().expect("address"), "/metrics").await;
            let counted: String = text
                .lines()
                .filter(|l| !l.starts_with('#') && !l.contains("_bucket"))
                .map(|l| format!("{l}\n"))
                .collect();
            out += &format!("--- {name}\n{counted}");
        }
        out
    }

    pub async fn start_daemon(&mut self, owner: &str) {
        self.start_daemon_with(owner, &[]).await
    }

    /// [`Call::start_daemon`] with more command-line arguments.
    pub async fn start_daemon_with(&mut self, owner: &str, extra: &[&str]) {
        let mut cmd = Command::new(workspace_bin("kurento-tap"));
        cmd.args(["run", "--kurento", &self.kms.url, "--nats", &self.nats.url])
            .args([
                "--bind",
                "127.0.0.1",
                "--ports",
                &TAP_PORTS.replace(':', "-"),
            ])
            .args(["--http", "127.0.0.1:0", "--owner", owner])
            .args(extra)
            .env("RUST_LOG", "info,tap_daemon=debug");
        let daemon = Proc::spawn("kurento-tap", cmd);
        let line = daemon
            .wait_line("metrics on http://", Duration::from_secs(30))
            .await
            .unwrap_or_else(|| panic!("the daemon starts:\n{}", daemon.output()));
        let addr = line
            .split("http://")
            .nth(1)
            .unwrap()
            .trim_end_matches("/metrics")
            .parse()
            .unwrap();
        self.metrics = Some(addr);
        self.daemon = Some(daemon);
    }

    /// Stops the daemon as an operator does (SIGTERM); true if it exited by itself.
    pub fn stop_daemon(&mut self) -> bool {
        let mut d = self.daemon.take().expect("daemon running");
        let clean = d.terminate(Duration::from_secs(40));
        if !clean {
            eprintln!("daemon did not exit:\n{}", d.output());
        }
        clean
    }

    pub async fn metric(&self, name: &str) -> f64 {
        let text = http_get(self.metrics.unwrap(), "/metrics").await;
        metric_sum(&text, name)
    }

    pub async fn wait_metric(&self, name: &str, want: f64, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if self.metric(name).await == want {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        false
    }

    /// Objects in KMS tagged with `owner` by the daemon: (RtpEndpoints, WebRtcEndpoints).
    /// The RtpEndpoints (taps) `owner` made, in every pipeline.
    pub async fn taps_of(&self, owner: &str) -> Vec<kurento_client::RtpEndpoint> {
        let mut out = Vec::new();
        for p in self
            .observer
            .server_manager()
            .get_pipelines()
            .await
            .unwrap()
        {
            for c in p.get_children().await.unwrap_or_default() {
                if !c.id().ends_with("_kurento.RtpEndpoint") {
                    continue;
                }
                let tags = c.get_tags().await.unwrap_or_default();
                if tags.iter().any(|t| t.key == OWNER_KEY && t.value == owner) {
                    out.push(self.observer.object(c.id()).unwrap());
                }
            }
        }
        out
    }

    pub async fn owned(&self, owner: &str) -> (usize, usize) {
        let mut rtp = 0;
        let mut webrtc = 0;
        for p in self
            .observer
            .server_manager()
            .get_pipelines()
            .await
            .unwrap()
        {
            let Ok(children) = p.get_children().await else {
                continue;
            };
            for c in children {
                let Ok(tags) = c.get_tags().await else {
                    continue;
                };
                if tags.iter().any(|t| t.key == OWNER_KEY && t.value == owner) {
                    if c.id().ends_with("RtpEndpoint") && !c.id().ends_with("WebRtcEndpoint") {
                        rtp += 1;
                    } else {
                        webrtc += 1;
                    }
                }
            }
        }
        (rtp, webrtc)
    }

    /// The app's WebRtcEndpoints (not tagged by any kurento-tap).
    pub async fn app_endpoints(&self) -> usize {
        let mut n = 0;
        for p in self
            .observer
            .server_manager()
            .get_pipelines()
            .await
            .unwrap()
        {
            for c in p.get_children().await.unwrap_or_default() {
                if !c.id().ends_with("_kurento.WebRtcEndpoint") {
                    continue;
                }
                let tags = c.get_tags().await.unwrap_or_default();
                if !tags.iter().any(|t| t.key == OWNER_KEY) {
                    n += 1;
                }
            }
        }
        n
    }

    /// Waits (up to `limit`) until the app's endpoints number `want`; returns the last count. The
    /// browsers report their connections before KMS lists every endpoint the app made for them
    /// (seen once: 8 of 9 right after `wait_connected`).
    pub async fn wait_app_endpoints(&self, want: usize, limit: Duration) -> usize {
        let deadline = Instant::now() + limit;
        loop {
            let n = self.app_endpoints().await;
            if n == want || Instant::now() >= deadline {
                return n;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    pub fn results_since(&self, since: Instant) -> Vec<Seen> {
        self.results
            .lock()
            .unwrap()
            .iter()
            .filter(|s| s.at >= since)
            .cloned()
            .collect()
    }

    pub fn daemon_output(&self) -> String {
        self.daemon.as_ref().map(|d| d.output()).unwrap_or_default()
    }
}

/// Sum of every sample of a metric family (all label sets).
pub fn metric_sum(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with(' ') || rest.starts_with('{'))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Counts results per (participant, media) in `window`.
pub fn per_participant(results: &[Seen]) -> HashMap<(String, String), usize> {
    let mut m = HashMap::new();
    for r in results {
        *m.entry((r.participant.clone(), r.media.clone()))
            .or_default() += 1;
    }
    m
}

/// The `p` quantile (0..=1) of `v`, by rank (NaN when empty): [`crate::metrics::pct`].
pub fn percentile(mut v: Vec<f64>, p: f64) -> f64 {
    crate::metrics::pct(&mut v, p)
}

/// Busy loops on every core, as on the machine where the leave/rejoin leak showed.
pub struct CpuLoad {
    _busy: Vec<Proc>,
}

impl CpuLoad {
    pub fn start(n: usize) -> CpuLoad {
        CpuLoad {
            _busy: (0..n)
                .map(|_| {
                    let mut c = Command::new("sh");
                    c.args(["-c", "while :; do :; done"]);
                    Proc::spawn("cpu-load", c)
                })
                .collect(),
        }
    }
}

/// Fake camera and microphone files for Chromium: the committed face photo as a 320x240 I420 y4m
/// clip, and espeak-ng speech as a 48 kHz mono wav (made once per test process).
pub fn fake_media() -> (PathBuf, PathBuf) {
    static MEDIA: std::sync::OnceLock<(PathBuf, PathBuf)> = std::sync::OnceLock::new();
    MEDIA
        .get_or_init(|| {
            let dir = std::env::temp_dir().join(format!("kurento-tap-media-{}", std::process::id()));
            std::fs::create_dir_all(&dir).unwrap();
            let photo =
                crate::workspace_root().join("classifiers/fer-worker/testdata/astronaut_256.png");
            let y4m = dir.join("face.y4m");
            let wav = dir.join("speech.wav");
            let raw = dir.join("speech-raw.wav");
            // A gentle pan across the photo, so the encoder sees motion as from a camera.
            let gst = |args: &[&str]| {
                let out = Command::new("gst-launch-1.0")
                    .arg("-q")
                    .args(args)
                    .output()
                    .expect("gst-launch-1.0 (gstreamer1.0-tools, installed by scripts/setup)");
                assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
            };
            gst(&[
                "filesrc", &format!("location={}", photo.display()), "!", "pngdec", "!",
                "imagefreeze", "num-buffers=90", "!", "videoconvert", "!", "videoscale", "!",
                "video/x-raw,format=I420,width=320,height=240,framerate=15/1", "!", "y4menc",
                "!", "filesink", &format!("location={}", y4m.display()),
            ]);
            let out = Command::new("espeak-ng")
                .args(["-a", "160", "-s", "160", "-w"])
                .arg(&raw)
                .arg("Good morning everyone. I am really glad to see you all here today, this is great news for the whole team.")
                .output()
                .expect("espeak-ng (installed by scripts/setup)");
            assert!(out.status.success());
            gst(&[
                "filesrc", &format!("location={}", raw.display()), "!", "wavparse", "!",
                "audioconvert", "!", "audioresample", "!",
                "audio/x-raw,format=S16LE,rate=48000,channels=1", "!", "wavenc", "!", "filesink",
                &format!("location={}", wav.display()),
            ]);
            (y4m, wav)
        })
        .clone()
}

/// A Chromium participant of the group-call app (one browser process each, as real participants).
pub fn participant(app: &str, room: &str, name: &str, query: &str) -> browser::Browser {
    let (y4m, wav) = fake_media();
    let url = format!("{app}/?room={room}&name={name}&{query}");
    browser::launch(
        &url,
        &[
            "--allow-loopback-in-peer-connection",
            "--disable-features=WebRtcHideLocalIpsWithMdns",
            "--use-fake-ui-for-media-stream",
            "--use-fake-device-for-media-stream",
            &format!("--use-file-for-fake-video-capture={}", y4m.display()),
            &format!("--use-file-for-fake-audio-capture={}", wav.display()),
            "--autoplay-policy=no-user-gesture-required",
        ],
    )
}
