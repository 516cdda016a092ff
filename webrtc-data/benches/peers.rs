//! What the offering peer costs and delivers, on this machine, over loopback, for both offerers
//! side by side in one run: `webrtcbin` ([`DataPeer`]) and str0m on a tokio task ([`TaskPeer`],
//! the daemon's). The answerer is always `webrtcbin` (the simulator's stand-in for KMS).
//! Setup time (offer → channel open on the offerer), one-way message latency at the daemon's
//! pace, burst throughput, and threads/RSS per connected pair.
//!
//! `cargo bench -p webrtc-data --bench peers`

use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use webrtc_data::{DataPeer, PeerEvent, PeerOptions, SendError, TaskPeer};

#[derive(Clone, Copy, PartialEq)]
enum Kind {
    Webrtcbin,
    Task,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Webrtcbin => "webrtcbin offerer",
            Kind::Task => "TaskPeer offerer (str0m)",
        }
    }
}

enum Offerer {
    Webrtcbin(DataPeer),
    Task(TaskPeer),
}

impl Offerer {
    fn add_remote_candidate(&self, i: u32, c: &str) {
        match self {
            Offerer::Webrtcbin(p) => p.add_remote_candidate(i, c),
            Offerer::Task(p) => p.add_remote_candidate(i, c),
        }
    }
    fn send_text(&self, t: &str) -> Result<(), SendError> {
        match self {
            Offerer::Webrtcbin(p) => p.send_text(t),
            Offerer::Task(p) => p.send_text(t),
        }
    }
}

struct Pair {
    offerer: Offerer,
    off_events: mpsc::Receiver<PeerEvent>,
    answerer: DataPeer,
    ans_events: mpsc::Receiver<PeerEvent>,
}

fn options(name: &str) -> PeerOptions {
    PeerOptions {
        name: name.into(),
        event_capacity: 4096,
        max_backlog_bytes: 1 << 20,
        ice_ports: None,
    }
}

fn peer(name: &str) -> (DataPeer, mpsc::Receiver<PeerEvent>) {
    DataPeer::start(options(name)).expect("webrtcbin")
}

/// Negotiates a pair the way the daemon and KMS do; returns it with the setup time.
async fn connect(kind: Kind, i: usize) -> (Pair, Duration) {
    let t0 = Instant::now();
    let (answerer, mut ans_events) = peer(&format!("ans{i}"));
    let (offerer, mut off_events) = match kind {
        Kind::Webrtcbin => {
            let (offerer, events) = peer(&format!("off{i}"));
            let offer = offerer.create_offer().await.unwrap();
            let answer = answerer.answer_offer(&offer).await.unwrap();
            offerer.accept_answer(&answer).await.unwrap();
            (Offerer::Webrtcbin(offerer), events)
        }
        Kind::Task => {
            let (offerer, events) = TaskPeer::start(options(&format!("off{i}"))).expect("sockets");
            let offer = offerer.create_offer().unwrap();
            let answer = answerer.answer_offer(&offer).await.unwrap();
            offerer.accept_answer(&answer).unwrap();
            (Offerer::Task(offerer), events)
        }
    };
    answerer.open_channel("bench", true).unwrap();
    loop {
        tokio::select! {
            Some(ev) = off_events.recv() => match ev {
                PeerEvent::LocalCandidate { sdp_mline_index, candidate } => answerer.add_remote_candidate(sdp_mline_index, &candidate),
                PeerEvent::ChannelOpen { .. } => break,
                _ => {}
            },
            Some(ev) = ans_events.recv() => if let PeerEvent::LocalCandidate { sdp_mline_index, candidate } = ev {
                offerer.add_remote_candidate(sdp_mline_index, &candidate);
            },
        }
    }
    (
        Pair {
            offerer,
            off_events,
            answerer,
            ans_events,
        },
        t0.elapsed(),
    )
}

fn pct(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(f64::total_cmp);
    v[((v.len() - 1) as f64 * p).round() as usize]
}

fn proc_status(key: &str) -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find(|l| l.starts_with(key))
        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        .unwrap_or(0.0)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    // Warm-up (plugin loading, first certificate).
    drop(connect(Kind::Webrtcbin, 0).await);
    drop(connect(Kind::Task, 0).await);
    for kind in [Kind::Webrtcbin, Kind::Task] {
        println!("== {}", kind.name());
        measure(kind).await;
    }
}

async fn measure(kind: Kind) {
    let mut setup = Vec::new();
    for i in 0..20 {
        let (pair, t) = connect(kind, i + 1).await;
        setup.push(t.as_secs_f64() * 1000.0);
        drop(pair);
    }
    println!(
        "setup (offer → channel open), 20 pairs: p50 {:.1} ms, p95 {:.1} ms, max {:.1} ms",
        pct(&mut setup, 0.5),
        pct(&mut setup, 0.95),
        pct(&mut setup, 1.0)
    );

    // One-way latency at a paced rate; a message the size of a v1 result (~260 bytes).
    let (mut pair, _) = connect(kind, 100).await;
    let pad = "x".repeat(220);
    let origin = Instant::now();
    let mut lat = Vec::new();
    for _ in 0..500 {
        let sent = origin.elapsed().as_secs_f64() * 1000.0;
        pair.offerer.send_text(&format!("{sent:.4} {pad}")).unwrap();
        loop {
            if let Some(PeerEvent::Text { text, .. }) = pair.ans_events.recv().await {
                let t: f64 = text.split(' ').next().unwrap().parse().unwrap();
                lat.push(origin.elapsed().as_secs_f64() * 1000.0 - t);
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(4)).await;
    }
    println!(
        "one-way latency, 500 messages of {} bytes, one at a time: p50 {:.3} ms, p99 {:.3} ms",
        pad.len() + 10,
        pct(&mut lat, 0.5),
        pct(&mut lat, 0.99)
    );

    // Burst: as fast as SCTP accepts, backing off when the backlog limit is hit.
    let n = 20_000;
    let t0 = Instant::now();
    let mut backlog_waits = 0u64;
    let mut sent = 0;
    let mut got = 0;
    while got < n {
        while sent < n {
            match pair.offerer.send_text(&pad) {
                Ok(()) => sent += 1,
                Err(SendError::Backlog) => {
                    backlog_waits += 1;
                    break;
                }
                Err(e) => panic!("{e}"),
            }
        }
        let next = tokio::time::timeout(Duration::from_millis(1), pair.ans_events.recv()).await;
        if let Ok(Some(PeerEvent::Text { .. })) = next {
            got += 1;
        }
        while let Ok(PeerEvent::Text { .. }) = pair.ans_events.try_recv() {
            got += 1;
        }
    }
    let secs = t0.elapsed().as_secs_f64();
    println!(
        "burst: {n} messages of {} bytes in {:.2} s = {:.0} msg/s ({:.1} MB/s); sender held back {backlog_waits} times by the 1 MiB backlog limit",
        pad.len(),
        secs,
        n as f64 / secs,
        n as f64 * pad.len() as f64 / secs / 1e6
    );
    let _ = &pair.off_events;
    let _ = &pair.answerer;
    drop(pair);

    // Footprint: threads and RSS per connected pair (an offerer and a webrtcbin answerer).
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (threads0, rss0) = (proc_status("Threads:"), proc_status("VmRSS:"));
    let mut pairs = Vec::new();
    for i in 0..10 {
        pairs.push(connect(kind, 200 + i).await.0);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (threads1, rss1) = (proc_status("Threads:"), proc_status("VmRSS:"));
    println!(
        "footprint: {:.1} threads and {:.2} MiB RSS per connected pair (10 pairs: {threads0} → {threads1} threads, {:.1} → {:.1} MiB)",
        (threads1 - threads0) / 10.0,
        (rss1 - rss0) / 1024.0 / 10.0,
        rss0 / 1024.0,
        rss1 / 1024.0
    );
    drop(pairs);
}
