//! Results into an OpenVidu session as signals (`POST /openvidu/api/signal`, type `kurento-tap`):
//! OpenVidu has no DataChannel path, its browsers receive `session.on('signal:kurento-tap')`.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tap_protocol::ResultMessage;
use tokio::sync::broadcast;

use crate::discovery::openvidu::client::OpenVidu;
use crate::metrics::Metrics;

use super::pacer::{Offered, Pacer};

/// Puts results into the call as signals: per participant a pacer (latest per model, a token
/// bucket of `signal_rate_hz`), sent one at a time by this task. Results wait in the pacers,
/// never in a queue: while OpenVidu is slow they are superseded or go stale (counted).
pub async fn run(
    ov: Arc<OpenVidu>,
    metrics: Arc<Metrics>,
    mut results: broadcast::Receiver<Arc<ResultMessage>>,
) {
    if !ov.signals_on() {
        return;
    }
    let mut pacers: HashMap<String, (Pacer, Instant)> = HashMap::new();
    let mut tick = tokio::time::interval(Duration::from_millis(50));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        tokio::select! {
            r = results.recv() => match r {
                Ok(r) => {
                    let now = Instant::now();
                    let (pacer, seen) = pacers.entry(r.participant.clone()).or_insert_with(|| {
                        (Pacer::new(ov.settings().signal_rate_hz, ov.settings().signal_max_wait, now), now)
                    });
                    *seen = now;
                    if pacer.offer(r, now) == Offered::Superseded {
                        metrics.openvidu_signal("superseded", 1);
                    }
                }
                Err(broadcast::error::RecvError::Lagged(n)) => metrics.openvidu_signal("lagged", n),
                Err(broadcast::error::RecvError::Closed) => return,
            },
            _ = tick.tick() => {
                let now = Instant::now();
                let mut due = Vec::new();
                for (pacer, _) in pacers.values_mut() {
                    let (ready, stale) = pacer.take(now);
                    if stale > 0 {
                        metrics.openvidu_signal("stale", stale);
                    }
                    due.extend(ready);
                }
                // Participants silent for a minute are forgotten.
                pacers.retain(|_, (p, seen)| p.waiting() > 0 || now.duration_since(*seen) < Duration::from_secs(60));
                for r in due {
                    let outcome = ov.signal_result(&r).await;
                    metrics.openvidu_signal(outcome, 1);
                    metrics.openvidu_request("signal", outcome);
                }
            }
        }
    }
}
