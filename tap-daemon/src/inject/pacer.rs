//! Pacing one participant's results (pure): a token bucket in front of a latest-per-model slot.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tap_protocol::ResultMessage;

/// Paces one participant's messages: a token bucket (`rate` per second, burst of `max(1, rate)`)
/// in front of a latest-per-model slot. Nothing queues beyond one result per model.
#[derive(Debug)]
pub struct Pacer {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
    max_wait: Duration,
    /// (model key, result, when it arrived), oldest arrival first.
    pending: VecDeque<(String, Arc<ResultMessage>, Instant)>,
}

/// What [`Pacer::offer`] did with a result.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Offered {
    /// Waiting for its turn.
    Queued,
    /// Replaced an unsent older result of the same model (which is thereby dropped).
    Superseded,
}

impl Pacer {
    /// A pacer allowing `rate` messages per second.
    pub fn new(rate: f64, max_wait: Duration, now: Instant) -> Self {
        let rate = if rate.is_finite() && rate > 0.0 {
            rate
        } else {
            1.0
        };
        let burst = rate.max(1.0);
        Pacer {
            rate,
            burst,
            tokens: burst,
            last: now,
            max_wait,
            pending: VecDeque::new(),
        }
    }

    /// A new result for the participant.
    pub fn offer(&mut self, r: Arc<ResultMessage>, now: Instant) -> Offered {
        let key = format!("{}/{}@{}", r.participant, r.model, r.version);
        if let Some(slot) = self.pending.iter_mut().find(|(k, _, _)| *k == key) {
            // Keep its place in line (it has waited), carry the newest result.
            slot.1 = r;
            return Offered::Superseded;
        }
        self.pending.push_back((key, r, now));
        Offered::Queued
    }

    fn refill(&mut self, now: Instant) {
        let dt = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + dt * self.rate).min(self.burst);
    }

    /// The results to send now (as many as the bucket allows, oldest first) and how many were
    /// dropped for waiting longer than `max_wait`.
    pub fn take(&mut self, now: Instant) -> (Vec<Arc<ResultMessage>>, u64) {
        self.refill(now);
        let before = self.pending.len();
        let max_wait = self.max_wait;
        self.pending
            .retain(|(_, _, at)| now.saturating_duration_since(*at) <= max_wait);
        let stale = (before - self.pending.len()) as u64;
        let mut out = Vec::new();
        while self.tokens >= 1.0 {
            let Some((_, r, _)) = self.pending.pop_front() else {
                break;
            };
            self.tokens -= 1.0;
            out.push(r);
        }
        (out, stale)
    }

    /// When [`Pacer::take`] will next have something to send (`None`: nothing waits).
    pub fn next_due(&self, now: Instant) -> Option<Instant> {
        if self.pending.is_empty() {
            return None;
        }
        let missing = (1.0 - self.tokens).max(0.0);
        Some(now + Duration::from_secs_f64(missing / self.rate))
    }

    /// Results waiting.
    pub fn waiting(&self) -> usize {
        self.pending.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tap_protocol::{MediaKind, WorkerReply};

    fn result(model: &str, seq: u64) -> Arc<ResultMessage> {
        Arc::new(ResultMessage {
            v: 1,
            room: "r".into(),
            participant: "p".into(),
            endpoint: "e".into(),
            kms: None,
            model: model.into(),
            version: "1".into(),
            media: MediaKind::Video,
            seq,
            capture_ms: 0.0,
            output: WorkerReply::default(),
            latency_ms: 0.0,
            round_trip_ms: 0.0,
        })
    }

    #[test]
    fn pacer_keeps_the_latest_per_model_and_the_rate() {
        let t0 = Instant::now();
        let mut p = Pacer::new(2.0, Duration::from_secs(2), t0);
        // Burst of 2 allowed at once.
        assert_eq!(p.offer(result("fer", 1), t0), Offered::Queued);
        assert_eq!(p.offer(result("voice", 1), t0), Offered::Queued);
        assert_eq!(p.offer(result("fer", 2), t0), Offered::Superseded);
        let (sent, stale) = p.take(t0);
        assert_eq!(stale, 0);
        assert_eq!(
            sent.iter()
                .map(|r| (r.model.as_str(), r.seq))
                .collect::<Vec<_>>(),
            vec![("fer", 2), ("voice", 1)]
        );
        // Bucket empty: 30 results in the next 100 ms leave one per model waiting.
        for s in 3..33 {
            p.offer(result(if s % 2 == 0 { "fer" } else { "voice" }, s), t0);
        }
        assert_eq!(p.waiting(), 2);
        assert!(p.take(t0 + Duration::from_millis(100)).0.is_empty());
        let due = p.next_due(t0 + Duration::from_millis(100)).unwrap();
        assert_eq!(due, t0 + Duration::from_millis(500));
        let (sent, _) = p.take(due);
        assert_eq!(sent.len(), 1);
        // voice (seq 3) waited longest; it carries its newest result, not the first.
        assert_eq!((sent[0].model.as_str(), sent[0].seq), ("voice", 31));
        // Over the next 10 s at most 2/s go out, whatever arrives.
        let mut total = 0;
        for ms in (600..10_600).step_by(50) {
            let now = t0 + Duration::from_millis(ms);
            p.offer(result("fer", ms), now);
            total += p.take(now).0.len();
        }
        assert!((19..=21).contains(&total), "{total}");
    }

    #[test]
    fn pacer_drops_what_waited_too_long() {
        let t0 = Instant::now();
        let mut p = Pacer::new(0.1, Duration::from_secs(2), t0);
        p.offer(result("a", 1), t0);
        assert_eq!(p.take(t0).0.len(), 1);
        p.offer(result("a", 2), t0);
        let (sent, stale) = p.take(t0 + Duration::from_secs(3));
        assert!(sent.is_empty());
        assert_eq!(stale, 1);
        assert_eq!(p.waiting(), 0);
        assert_eq!(p.next_due(t0), None);
        // Nonsense rates fall back to 1/s instead of dividing by zero.
        let mut q = Pacer::new(f64::NAN, Duration::from_secs(1), t0);
        q.offer(result("a", 1), t0);
        assert_eq!(q.take(t0).0.len(), 1);
    }
}
