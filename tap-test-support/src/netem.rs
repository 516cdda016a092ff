//! Packet loss and jitter on the media path of a real-KMS namespace, like `tc netem`.
//!
//! These machines' kernel has no queueing disciplines at all (`tc qdisc add … netem` answers
//! "Specified qdisc kind is unknown"), so the impairment is made with netfilter instead: every UDP
//! packet leaving a process in the namespace (browser → KMS, KMS → browsers, KMS → the tap, RTCP
//! back) goes to an NFQUEUE; this thread drops it with probability `loss`, or releases it after a
//! delay drawn uniformly from `delay ± jitter` (so packets reorder, as with netem's jitter). TCP
//! (signalling, the KMS API, NATS) is left alone. `--queue-bypass` lets packets through should the
//! thread stop. The calling thread must already be in the namespace (the queue is per namespace).

use std::collections::BinaryHeap;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const QUEUE: u16 = 7;

/// Counters of an impairment.
#[derive(Debug, Default)]
pub struct NetemStats {
    pub passed: AtomicU64,
    pub dropped: AtomicU64,
}

pub struct Netem {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
    pub stats: Arc<NetemStats>,
    rule: Vec<String>,
}

struct Held {
    due: Instant,
    msg: nfq::Message,
}

impl PartialEq for Held {
    fn eq(&self, other: &Self) -> bool {
        self.due == other.due
    }
}
impl Eq for Held {}
impl PartialOrd for Held {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Held {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        other.due.cmp(&self.due) // min-heap on due time
    }
}

fn iptables(args: &[String]) -> bool {
    Command::new("iptables")
        .args(args)
        .status()
        .is_ok_and(|s| s.success())
}

impl Netem {
    /// Starts dropping `loss` (0..1) of UDP packets and delaying the rest by `delay ± jitter`.
    pub fn start(loss: f64, delay: Duration, jitter: Duration) -> Netem {
        Self::start_on(loss, delay, jitter, None)
    }

    /// The same, on UDP packets to `ports` (MIN:MAX) only, e.g. the tap leg KMS → daemon.
    pub fn start_on(loss: f64, delay: Duration, jitter: Duration, ports: Option<&str>) -> Netem {
        let mut rule: Vec<String> = ["OUTPUT", "-o", "lo", "-p", "udp"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        if let Some(p) = ports {
            rule.extend(["--dport".to_string(), p.to_string()]);
        }
        rule.extend(
            [
                "-j",
                "NFQUEUE",
                "--queue-num",
                &QUEUE.to_string(),
                "--queue-bypass",
            ]
            .iter()
            .map(|s| s.to_string()),
        );
        let stop = Arc::new(AtomicBool::new(false));
        let stats = Arc::new(NetemStats::default());
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let thread = {
            let (stop, stats) = (stop.clone(), stats.clone());
            std::thread::spawn(move || {
                let mut q = nfq::Queue::open().expect("netlink queue (run as root)");
                q.bind(QUEUE).expect("bind the NFQUEUE");
                // A full queue lets packets through rather than dropping more than asked.
                let _ = q.set_fail_open(QUEUE, true);
                let _ = q.set_queue_max_len(QUEUE, 8192);
                let _ = q.set_recv_enobufs(false);
                q.set_nonblocking(true);
                let _ = ready_tx.send(());
                let mut held: BinaryHeap<Held> = BinaryHeap::new();
                let mut rng = fastrand::Rng::with_seed(7);
                while !stop.load(Ordering::Relaxed) || !held.is_empty() {
                    let now = Instant::now();
                    while held.peek().is_some_and(|h| h.due <= now) {
                        let mut h = held.pop().unwrap();
                        h.msg.set_verdict(nfq::Verdict::Accept);
                        let _ = q.verdict(h.msg);
                        stats.passed.fetch_add(1, Ordering::Relaxed);
                    }
                    match q.recv() {
                        Ok(mut msg) => {
                            if stop.load(Ordering::Relaxed) {
                                msg.set_verdict(nfq::Verdict::Accept);
                                let _ = q.verdict(msg);
                            } else if rng.f64() < loss {
                                msg.set_verdict(nfq::Verdict::Drop);
                                let _ = q.verdict(msg);
                                stats.dropped.fetch_add(1, Ordering::Relaxed);
                            } else {
                                let spread = jitter.as_micros() as i64;
                                let offset = rng.i64(-spread..=spread);
                                let d = (delay.as_micros() as i64 + offset).max(0) as u64;
                                held.push(Held {
                                    due: Instant::now() + Duration::from_micros(d),
                                    msg,
                                });
                            }
                        }
                        Err(_) => std::thread::sleep(Duration::from_micros(300)),
                    }
                }
            })
        };
        ready_rx
            .recv_timeout(Duration::from_secs(5))
            .expect("the impairment thread binds its queue");
        let mut add = vec!["-I".to_string()];
        add.extend(rule.iter().cloned());
        assert!(iptables(&add), "iptables NFQUEUE rule");
        Netem {
            stop,
            thread: Some(thread),
            stats,
            rule,
        }
    }

    pub fn stop(mut self) {
        self.halt();
    }

    fn halt(&mut self) {
        let Some(thread) = self.thread.take() else {
            return;
        };
        let mut del = vec!["-D".to_string()];
        del.extend(self.rule.iter().cloned());
        let _ = iptables(&del);
        self.stop.store(true, Ordering::Relaxed);
        let _ = thread.join();
    }
}

impl Drop for Netem {
    fn drop(&mut self) {
        self.halt();
    }
}

/// A copy of the UDP packets to `ports` (MIN:MAX) leaving processes in the namespace, every one
/// let through untouched: what an eavesdropper on the tap leg would see.
pub struct Capture {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<Vec<Vec<u8>>>>,
    rule: Vec<String>,
}

impl Capture {
    pub fn start_on(ports: &str, max_packets: usize) -> Capture {
        let rule: Vec<String> = [
            "OUTPUT",
            "-o",
            "lo",
            "-p",
            "udp",
            "--dport",
            ports,
            "-j",
            "NFQUEUE",
            "--queue-num",
            &(QUEUE + 1).to_string(),
            "--queue-bypass",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let stop = Arc::new(AtomicBool::new(false));
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let thread = {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut q = nfq::Queue::open().expect("netlink queue (run as root)");
                q.bind(QUEUE + 1).expect("bind the NFQUEUE");
                let _ = q.set_fail_open(QUEUE + 1, true);
                q.set_nonblocking(true);
                let _ = ready_tx.send(());
                let mut seen = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    match q.recv() {
                        Ok(mut msg) => {
                            if seen.len() < max_packets {
                                seen.push(msg.get_payload().to_vec());
                            }
                            msg.set_verdict(nfq::Verdict::Accept);
                            let _ = q.verdict(msg);
                        }
                        Err(_) => std::thread::sleep(Duration::from_micros(300)),
                    }
                }
                seen
            })
        };
        ready_rx
            .recv_timeout(Duration::from_secs(5))
            .expect("the capture thread binds its queue");
        let mut add = vec!["-I".to_string()];
        add.extend(rule.iter().cloned());
        assert!(iptables(&add), "iptables NFQUEUE rule");
        Capture {
            stop,
            thread: Some(thread),
            rule,
        }
    }

    /// Stops and returns the IP packets seen.
    pub fn finish(mut self) -> Vec<Vec<u8>> {
        self.halt().unwrap_or_default()
    }

    fn halt(&mut self) -> Option<Vec<Vec<u8>>> {
        let thread = self.thread.take()?;
        let mut del = vec!["-D".to_string()];
        del.extend(self.rule.iter().cloned());
        let _ = iptables(&del);
        self.stop.store(true, Ordering::Relaxed);
        thread.join().ok()
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        self.halt();
    }
}

/// The RTP payloads (SSRC, payload) in captured IPv4/UDP packets; RTCP and anything else skipped.
pub fn rtp_payloads(packets: &[Vec<u8>]) -> Vec<(u32, Vec<u8>)> {
    let mut out = Vec::new();
    for p in packets {
        if p.len() < 20 || p[0] >> 4 != 4 || p[9] != 17 {
            continue;
        }
        let udp = &p[((p[0] & 0x0f) as usize) * 4..];
        if udp.len() < 8 + 12 {
            continue;
        }
        let rtp = &udp[8..];
        let pt = rtp[1] & 0x7f;
        if rtp[0] >> 6 != 2 || (72..=76).contains(&pt) {
            continue; // not RTP, or RTCP (200-204 with the marker bit)
        }
        let mut at = 12 + 4 * (rtp[0] & 0x0f) as usize;
        if rtp[0] & 0x10 != 0 && rtp.len() >= at + 4 {
            at += 4 + 4 * u16::from_be_bytes([rtp[at + 2], rtp[at + 3]]) as usize;
        }
        if rtp.len() > at {
            let ssrc = u32::from_be_bytes([rtp[8], rtp[9], rtp[10], rtp[11]]);
            out.push((ssrc, rtp[at..].to_vec()));
        }
    }
    out
}

/// Per SSRC: the share of packets whose first payload byte is one of the stream's two most common
/// (Opus TOC bytes and VP8/H.264 payload headers repeat; ciphertext does not), and the count.
pub fn header_regularity(payloads: &[(u32, Vec<u8>)]) -> Vec<(u32, f64, usize)> {
    let mut by: std::collections::BTreeMap<u32, Vec<u8>> = Default::default();
    for (ssrc, p) in payloads {
        by.entry(*ssrc).or_default().push(p[0]);
    }
    by.into_iter()
        .map(|(ssrc, firsts)| {
            let mut counts = [0usize; 256];
            for b in &firsts {
                counts[*b as usize] += 1;
            }
            counts.sort_unstable_by(|a, b| b.cmp(a));
            (
                ssrc,
                (counts[0] + counts[1]) as f64 / firsts.len() as f64,
                firsts.len(),
            )
        })
        .collect()
}
