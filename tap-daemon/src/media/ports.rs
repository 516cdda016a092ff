//! Receive ports: even RTP ports and RTP+1 for RTCP, from a configured range, returned on teardown.

use std::collections::BTreeSet;
use std::net::{IpAddr, UdpSocket};
use std::sync::{Arc, Mutex};

/// A pool of port pairs.
#[derive(Clone)]
pub struct PortPool {
    inner: Arc<Mutex<PoolState>>,
}

struct PoolState {
    bind: IpAddr,
    min: u16,
    max: u16,
    next: u16,
    used: BTreeSet<u16>,
}

/// A reserved pair; returned to the pool when dropped.
pub struct PortPair {
    /// The even RTP port.
    pub rtp: u16,
    pool: Arc<Mutex<PoolState>>,
}

impl Drop for PortPair {
    fn drop(&mut self) {
        if let Ok(mut p) = self.pool.lock() {
            p.used.remove(&self.rtp);
        }
    }
}

impl PortPool {
    /// Ports `min..=max` on `bind`.
    pub fn new(bind: IpAddr, min: u16, max: u16) -> Self {
        let min = min + (min % 2);
        PortPool {
            inner: Arc::new(Mutex::new(PoolState {
                bind,
                min,
                max,
                next: min,
                used: BTreeSet::new(),
            })),
        }
    }

    /// Reserves a pair whose two ports are free on the host right now.
    pub fn take(&self) -> Option<PortPair> {
        let mut p = self.inner.lock().ok()?;
        let span = (p.max.saturating_sub(p.min) / 2).max(1);
        for _ in 0..span {
            let port = p.next;
            p.next = if port + 3 > p.max { p.min } else { port + 2 };
            if p.used.contains(&port) {
                continue;
            }
            let free = UdpSocket::bind((p.bind, port)).is_ok()
                && UdpSocket::bind((p.bind, port + 1)).is_ok();
            if free {
                p.used.insert(port);
                return Some(PortPair {
                    rtp: port,
                    pool: self.inner.clone(),
                });
            }
        }
        None
    }

    /// Pairs in use.
    pub fn in_use(&self) -> usize {
        self.inner.lock().map(|p| p.used.len()).unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pairs_are_even_distinct_and_returned() {
        let pool = PortPool::new("127.0.0.1".parse().unwrap(), 47001, 47020);
        let a = pool.take().unwrap();
        let b = pool.take().unwrap();
        assert!(
            a.rtp.is_multiple_of(2) && b.rtp.is_multiple_of(2) && a.rtp != b.rtp && a.rtp >= 47002
        );
        assert_eq!(pool.in_use(), 2);
        drop(a);
        assert_eq!(pool.in_use(), 1);
        let all: Vec<_> = std::iter::from_fn(|| pool.take()).collect();
        assert!(all.len() <= 9);
        assert!(all.iter().all(|p| p.rtp <= 47019));
    }
}
