//! Packet loss and jitter on the media path of a real-KMS namespace, like `tc netem`.
//!
//! These machines' kernel has no queueing disciplines at all (`tc qdisc add … netem` answers
//! "Specified qdisc kind is unknown"), so the impairment is made with netfilter instead: every UDP
//! packet leaving a process in the namespace (browser → KMS, KMS → browsers, KMS → the tap, RTCP
//! back) goes to an NFQUEUE; this thread drops it with probability `loss`, or releases it after a
//! delay drawn uniformly from `delay ± jitter` (so packets reorder, as with netem's jitter). TCP
//! (signalling, the KMS API, NATS) is left alone. `--queue-bypass` lets packets through should the
//! thread stop. The calling thread must already be in the namespace (the queue is per namespace).
#![allow(dead_code)]

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
