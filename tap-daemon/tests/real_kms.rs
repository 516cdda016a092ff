//! The real-KMS tier: the end-to-end scenarios of the simulator tier, run against a real Kurento
//! Media Server 7.3 with headless Chromium participants of a group-call app modelled on Kurento's
//! tutorial (`examples/group-call`), and the real binaries (`kurento-tap`, `fer-worker`,
//! `audio-worker`). Runs whenever the KMS bundle is at `../shared/kms` and the test runs as root;
//! otherwise each test prints a loud SKIPPED line.

#[path = "support/browser.rs"]
mod browser;
#[path = "support/kms.rs"]
mod kms;
mod support;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use kms::{participant, with_kms, workspace_bin, Proc, RealKms};
use kurento_client::prelude::*;
use serde_json::Value;
use support::Nats;

const OWNER_KEY: &str = "kurento-tap.owner";
const FER_FPS: f64 = 5.0;

/// One result seen on NATS.
#[derive(Debug, Clone)]
struct Seen {
    at: Instant,
    participant: String,
    media: String,
    latency_ms: f64,
}

/// The call under test: nats-server, the app, participants, the daemon and workers.
struct Call {
    kms: Arc<RealKms>,
    nats: Nats,
    app: Proc,
    app_url: String,
    observer: KurentoClient,
    participants: HashMap<String, browser::Browser>,
    daemon: Option<Proc>,
    metrics: Option<SocketAddr>,
    workers: Vec<Proc>,
    results: Arc<Mutex<Vec<Seen>>>,
}

impl Call {
    async fn start(kms: Arc<RealKms>, app_args: &[&str]) -> Call {
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

    fn join(&mut self, room: &str, name: &str, query: &str) {
        let b = participant(&self.app_url, room, name, query);
        self.participants.insert(name.to_owned(), b);
    }

    async fn page(&self, name: &str) -> browser::Page {
        browser::open_page(&self.participants[name]).await
    }

    /// Waits until every participant's own connection is up and its subscriptions too.
    async fn wait_connected(&self, limit: Duration) {
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

    fn start_workers(&mut self) {
        let mut fer = Command::new(workspace_bin("fer-worker"));
        fer.args([
            "run",
            "--nats",
            &self.nats.url,
            "--fps",
            &FER_FPS.to_string(),
        ]);
        self.workers.push(Proc::spawn("fer-worker", fer));
        let mut voice = Command::new(workspace_bin("audio-worker"));
        voice.args(["run", "--nats", &self.nats.url]);
        self.workers.push(Proc::spawn("audio-worker", voice));
    }

    async fn start_daemon(&mut self, owner: &str) {
        let mut cmd = Command::new(workspace_bin("kurento-tap"));
        cmd.args(["run", "--kurento", &self.kms.url, "--nats", &self.nats.url])
            .args(["--bind", "127.0.0.1", "--ports", "44000-44999"])
            .args(["--http", "127.0.0.1:0", "--owner", owner])
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
    fn stop_daemon(&mut self) -> bool {
        let mut d = self.daemon.take().expect("daemon running");
        let clean = d.terminate(Duration::from_secs(40));
        if !clean {
            eprintln!("daemon did not exit:\n{}", d.output());
        }
        clean
    }

    async fn metric(&self, name: &str) -> f64 {
        let text = support::http_get(self.metrics.unwrap(), "/metrics").await;
        metric_sum(&text, name)
    }

    async fn wait_metric(&self, name: &str, want: f64, limit: Duration) -> bool {
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
    async fn owned(&self, owner: &str) -> (usize, usize) {
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
    async fn app_endpoints(&self) -> usize {
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

    fn results_since(&self, since: Instant) -> Vec<Seen> {
        self.results
            .lock()
            .unwrap()
            .iter()
            .filter(|s| s.at >= since)
            .cloned()
            .collect()
    }

    fn daemon_output(&self) -> String {
        self.daemon.as_ref().map(|d| d.output()).unwrap_or_default()
    }
}

/// Sum of every sample of a metric family (all label sets).
fn metric_sum(text: &str, name: &str) -> f64 {
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
fn per_participant(results: &[Seen]) -> HashMap<(String, String), usize> {
    let mut m = HashMap::new();
    for r in results {
        *m.entry((r.participant.clone(), r.media.clone()))
            .or_default() += 1;
    }
    m
}

fn percentile(mut v: Vec<f64>, p: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    v[((v.len() - 1) as f64 * p).round() as usize]
}

/// Every participant in `seen` (there must be `participants`) got each of `media` at the rate its
/// model asked for (fer: 5 frames/s; voice: a window every 0.5 s), until the end of the window.
async fn assert_rates(
    seen: &[Seen],
    media: &[&str],
    participants: usize,
    window: Duration,
    call: &Call,
) {
    let counts = per_participant(seen);
    let names: std::collections::BTreeSet<&String> = counts.keys().map(|(p, _)| p).collect();
    assert_eq!(
        names.len(),
        participants,
        "participants with results: {counts:?}"
    );
    for name in names {
        for m in media {
            let n = counts
                .get(&(name.clone(), m.to_string()))
                .copied()
                .unwrap_or(0);
            let rate = if *m == "video" { FER_FPS } else { 2.0 };
            assert!(
                n as f64 >= 0.6 * rate * window.as_secs_f64(),
                "{name}: {n} {m} results in {window:?} ({counts:?})\nmetrics:\n{}",
                support::http_get(call.metrics.unwrap(), "/metrics").await
            );
            // Still flowing at the end, not a burst at the start.
            let last = seen
                .iter()
                .filter(|s| &s.participant == name && s.media == *m)
                .map(|s| s.at)
                .max()
                .unwrap();
            assert!(
                last.elapsed() < Duration::from_secs(2),
                "{name}: {m} stopped"
            );
        }
    }
}

/// Daemon's UDP sockets bound to the SSDP port (UPnP discovery) in its namespace.
fn ssdp_sockets(pid: u32) -> usize {
    let table = std::fs::read_to_string(format!("/proc/{pid}/net/udp")).unwrap_or_default();
    table
        .lines()
        .skip(1)
        .filter(|l| {
            l.split_whitespace()
                .nth(1)
                .is_some_and(|local| local.ends_with(":076C"))
        })
        .count()
}

#[test]
fn real_kms_tutorial_topology_three_vp8_participants_results_for_the_whole_call_and_clean_shutdown()
{
    with_kms("tutorial_topology", |kms| async move {
        let mut call = Call::start(kms, &[]).await;
        for name in ["ana", "ben", "cyd"] {
            call.join("standup", name, "codec=vp8");
        }
        call.wait_connected(Duration::from_secs(60)).await;
        let app_endpoints = call.app_endpoints().await;
        assert_eq!(app_endpoints, 9, "3 publishers + 6 subscribers");
        call.start_workers();
        let started = Instant::now();
        call.start_daemon("tap-e2e").await;
        assert!(
            call.wait_metric("kurento_tap_taps_active", 3.0, Duration::from_secs(40))
                .await,
            "three taps:\n{}",
            call.daemon_output()
        );
        let all_tapped = started.elapsed();
        eprintln!("time from daemon start to the third tap: {all_tapped:?}");

        // A whole call: results keep coming at the rate each model asked for, for every participant.
        tokio::time::sleep(Duration::from_secs(5)).await;
        let window_start = Instant::now();
        let window = Duration::from_secs(20);
        tokio::time::sleep(window).await;
        let seen = call.results_since(window_start);
        let counts = per_participant(&seen);
        eprintln!("results in {window:?}: {counts:?}");
        // No tags: the daemon names participants after their endpoints.
        assert_rates(&seen, &["video", "audio"], 3, window, &call).await;
        let lat: Vec<f64> = seen
            .iter()
            .filter(|s| s.media == "video")
            .map(|s| s.latency_ms)
            .collect();
        eprintln!(
            "video capture→result: p50 {:.0} ms p95 {:.0} ms",
            percentile(lat.clone(), 0.5),
            percentile(lat, 0.95)
        );
        assert_eq!(call.metric("kurento_tap_transcoding_total").await, 0.0);

        // Results inside the call: every browser's DataChannel received its own.
        // (audience = participant: only results about themselves, one participant id each).
        for name in ["ana", "ben", "cyd"] {
            let mut page = call.page(name).await;
            let got = page
                .eval("gc.results.filter(r => r.msg.type === 'kurento-tap.result').length")
                .await
                .as_u64()
                .unwrap_or(0);
            let subjects = page
                .eval("new Set(gc.results.map(r => r.msg.participant)).size")
                .await;
            assert!(got >= 20, "{name}'s DataChannel got {got} results");
            assert_eq!(subjects, serde_json::json!(1), "{name} got others' results");
        }

        // The daemon's ICE agent sends nothing but the call's traffic: no UPnP/SSDP.
        let pid = call.daemon.as_ref().unwrap().child.id();
        assert_eq!(ssdp_sockets(pid), 0, "SSDP socket open in the daemon");
        assert_eq!(
            call.daemon.as_ref().unwrap().count("SSDP"),
            0,
            "the daemon's ICE agent tried UPnP"
        );

        // Shutdown releases exactly the daemon's objects; the call goes on.
        let (rtp, webrtc) = call.owned("tap-e2e").await;
        assert_eq!(
            (rtp, webrtc),
            (3, 3),
            "one tap and one DataChannel peer each"
        );
        assert!(call.stop_daemon(), "the daemon exits on SIGTERM");
        assert_eq!(
            call.owned("tap-e2e").await,
            (0, 0),
            "objects left after shutdown"
        );
        assert_eq!(
            call.app_endpoints().await,
            app_endpoints,
            "the app's objects"
        );
        call.wait_connected(Duration::from_secs(5)).await;
    });
}

#[test]
fn real_kms_tagged_rooms_h264_audio_only_and_video_only_publishers() {
    with_kms("tagged_h264_audio_video_only", |kms| async move {
        let mut call = Call::start(kms.clone(), &["--tags"]).await;
        call.join("review", "ana", "codec=h264");
        call.join("review", "ben", "video=0");
        call.join("review", "cyd", "audio=0");
        call.wait_connected(Duration::from_secs(60)).await;
        call.start_workers();
        call.start_daemon("tap-e2e-tags").await;
        assert!(
            call.wait_metric("kurento_tap_taps_active", 3.0, Duration::from_secs(40))
                .await,
            "three taps:\n{}",
            call.daemon_output()
        );
        // Discovery by tags: room and participant names are the app's.
        let rooms = Command::new(workspace_bin("kurento-tap"))
            .args(["rooms", "--kurento", &call.kms.url])
            .output()
            .unwrap();
        let listing = String::from_utf8_lossy(&rooms.stdout);
        assert!(listing.contains("room review"), "{listing}");
        for (name, media) in [
            ("ana", "video:H264"),
            ("ben", "audio"),
            ("cyd", "video:VP8"),
        ] {
            let line = listing
                .lines()
                .find(|l| l.contains(name))
                .unwrap_or_else(|| panic!("{name} listed:\n{listing}"));
            assert!(line.contains(media), "{line}");
        }
        tokio::time::sleep(Duration::from_secs(4)).await;
        let start = Instant::now();
        let window = Duration::from_secs(15);
        tokio::time::sleep(window).await;
        let seen = call.results_since(start);
        let counts = per_participant(&seen);
        eprintln!("results in {window:?}: {counts:?}");
        let n = |p: &str, m: &str| counts.get(&(p.into(), m.into())).copied().unwrap_or(0);
        let video_min = (0.6 * FER_FPS * window.as_secs_f64()) as usize;
        let audio_min = (0.6 * 2.0 * window.as_secs_f64()) as usize;
        assert!(n("ana", "video") >= video_min, "H.264 video: {counts:?}");
        assert!(n("ana", "audio") >= audio_min, "{counts:?}");
        assert!(n("ben", "audio") >= audio_min, "audio-only: {counts:?}");
        assert_eq!(n("ben", "video"), 0, "audio-only has no video");
        assert!(n("cyd", "video") >= video_min, "video-only: {counts:?}");
        assert_eq!(n("cyd", "audio"), 0, "video-only has no audio");
        assert_eq!(
            call.metric("kurento_tap_transcoding_total").await,
            0.0,
            "H.264 and VP8 taken as sent"
        );
        assert!(call.stop_daemon());
        assert_eq!(call.owned("tap-e2e-tags").await, (0, 0));
    });
}

/// Busy loops on every core, as on the machine where the leave/rejoin leak showed.
struct CpuLoad(Vec<Proc>);

impl CpuLoad {
    fn start(n: usize) -> CpuLoad {
        CpuLoad(
            (0..n)
                .map(|_| {
                    let mut c = Command::new("sh");
                    c.args(["-c", "while :; do :; done"]);
                    Proc::spawn("cpu-load", c)
                })
                .collect(),
        )
    }
}

#[test]
fn real_kms_leave_and_rejoin_churn_under_cpu_load_leaves_no_object_behind() {
    with_kms("churn", |kms| async move {
        let mut call = Call::start(kms.clone(), &[]).await;
        for name in ["ana", "ben", "cyd"] {
            call.join("churn", name, "codec=vp8");
        }
        call.wait_connected(Duration::from_secs(60)).await;
        call.start_daemon("tap-e2e-churn").await;
        assert!(
            call.wait_metric("kurento_tap_taps_active", 3.0, Duration::from_secs(40))
                .await
        );
        let _load = CpuLoad::start(2);
        let mut page = call.page("cyd").await;
        let cycles = 8;
        for cycle in 0..cycles {
            // Reload: the page leaves (the app releases its endpoints) and joins again with new
            // ones. Every other cycle the next reload comes before the new publisher is tapped.
            page.call("Page.reload", serde_json::json!({"ignoreCache": true}))
                .await;
            let pause = if cycle % 2 == 0 { 600 } else { 2500 };
            tokio::time::sleep(Duration::from_millis(pause)).await;
        }
        call.wait_connected(Duration::from_secs(60)).await;
        // Whatever raced, what the daemon holds converges to one tap and one peer per participant.
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut owned = (0, 0);
        while Instant::now() < deadline {
            owned = call.owned("tap-e2e-churn").await;
            if owned == (3, 3) && call.metric("kurento_tap_taps_active").await == 3.0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        eprintln!(
            "after {cycles} rejoins: owned {owned:?}, taps_total {}, orphans released {}",
            call.metric("kurento_tap_taps_total").await,
            call.metric("kurento_tap_orphans_released_total").await
        );
        assert_eq!(
            owned,
            (3, 3),
            "objects of ours in KMS after churn:\n{}",
            call.daemon_output()
        );
        assert_eq!(call.metric("kurento_tap_taps_active").await, 3.0);
        assert_eq!(
            call.app_endpoints().await,
            9,
            "the app's objects are its own"
        );
        assert!(call.stop_daemon());
        assert_eq!(
            call.owned("tap-e2e-churn").await,
            (0, 0),
            "objects left after shutdown"
        );
    });
}

#[test]
fn real_kms_kms_restart_is_seen_and_the_new_server_is_tapped() {
    with_kms("kms_restart", |kms| async move {
        let mut call = Call::start(kms.clone(), &[]).await;
        call.join("before", "ana", "");
        call.wait_connected(Duration::from_secs(60)).await;
        call.start_workers();
        call.start_daemon("tap-e2e-restart").await;
        assert!(
            call.wait_metric("kurento_tap_taps_active", 1.0, Duration::from_secs(40))
                .await
        );
        let health = || async { support::http_get(call.metrics.unwrap(), "/healthz").await };
        assert!(health().await.starts_with("HTTP/1.1 200"));
        kms.stop();
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut unhealthy = false;
        while Instant::now() < deadline && !unhealthy {
            unhealthy = health().await.starts_with("HTTP/1.1 503");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        assert!(unhealthy, "/healthz says 503 while KMS is down");
        kms.restart();
        let deadline = Instant::now() + Duration::from_secs(40);
        while Instant::now() < deadline && !health().await.starts_with("HTTP/1.1 200") {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        assert!(
            health().await.starts_with("HTTP/1.1 200"),
            "/healthz back to 200"
        );
        assert!(
            call.wait_metric("kurento_tap_taps_active", 0.0, Duration::from_secs(10))
                .await,
            "the old taps are gone with the old server"
        );
        // The app starts afresh on the new server; a participant joins and is tapped.
        call.participants.clear();
        call.join("after", "dan", "");
        call.wait_connected(Duration::from_secs(60)).await;
        assert!(
            call.wait_metric("kurento_tap_taps_active", 1.0, Duration::from_secs(40))
                .await,
            "rediscovered:\n{}",
            call.daemon_output()
        );
        assert!(call.metric("kurento_tap_kms_reconnects_total").await >= 1.0);
        let start = Instant::now();
        tokio::time::sleep(Duration::from_secs(8)).await;
        let video = call
            .results_since(start)
            .iter()
            .filter(|s| s.media == "video")
            .count();
        assert!(video >= 20, "results after the restart: {video}");
        assert!(call.stop_daemon());
        assert_eq!(call.owned("tap-e2e-restart").await, (0, 0));
    });
}
