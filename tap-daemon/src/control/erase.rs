//! The right to erasure (issue 24): a `tap.v1.ctl.erase` request naming a room and a participant
//! purges every result of theirs kept in JetStream (`TAP_RESULTS_V1`, every model) and every fused
//! state (`TAP_AFFECT_V1`), and answers how many messages went. Room moods are aggregates (from
//! `min_group` contributors on) and stay. Served by one daemon of a cluster (a queue group).

use async_nats::jetstream;
use futures_util::StreamExt;
use serde::Deserialize;
use serde_json::json;
use tap_protocol::affect::{state_subject, AFFECT_STREAM};
use tap_protocol::{safe_token, CTL_ERASE, RESULTS_STREAM};
use tracing::{info, warn};

use crate::metrics::Metrics;

/// Queue group of the daemons serving erasure requests.
pub const QUEUE: &str = "tap-daemons.erase";

/// An erasure request.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EraseRequest {
    /// Room (name or safe token, as in subjects).
    pub room: String,
    /// Participant (name or safe token).
    pub participant: String,
}

impl EraseRequest {
    /// Reads and checks a request body: JSON, non-empty names of at most
    /// [`MAX_CONTROL_NAME`](tap_protocol::affect::MAX_CONTROL_NAME) bytes.
    pub fn parse(payload: &[u8]) -> Result<EraseRequest, String> {
        let req: EraseRequest =
            serde_json::from_slice(payload).map_err(|e| format!("bad request: {e}"))?;
        tap_protocol::affect::check_control_names(&req.room, &req.participant)?;
        Ok(req)
    }

    /// The subjects to purge: (stream, filter). Names become safe tokens, so a request cannot
    /// widen the filter with `*` or `>`.
    pub fn filters(&self) -> [(&'static str, String); 2] {
        [
            (
                RESULTS_STREAM,
                format!(
                    "tap.v1.result.{}.{}.>",
                    safe_token(&self.room),
                    safe_token(&self.participant)
                ),
            ),
            (AFFECT_STREAM, state_subject(&self.room, &self.participant)),
        ]
    }
}

/// Purges the participant's stored results and states; (results, states) purged. A stream that
/// does not exist (the fusion off) holds nothing.
pub async fn erase(js: &jetstream::Context, req: &EraseRequest) -> Result<(u64, u64), String> {
    let mut purged = [0u64; 2];
    for (i, (stream, filter)) in req.filters().into_iter().enumerate() {
        let s = match js.get_stream(stream).await {
            Ok(s) => s,
            Err(e)
                if matches!(
                    e.kind(),
                    jetstream::context::GetStreamErrorKind::JetStream(j)
                        if j.error_code() == jetstream::ErrorCode::STREAM_NOT_FOUND
                ) =>
            {
                continue
            }
            Err(e) => return Err(format!("{stream}: {e}")),
        };
        purged[i] = s
            .purge()
            .filter(filter)
            .await
            .map_err(|e| format!("{stream}: {e}"))?
            .purged;
    }
    Ok((purged[0], purged[1]))
}

/// Answers erasure requests until the subscription ends.
pub async fn serve(
    nats: async_nats::Client,
    mut sub: async_nats::Subscriber,
    metrics: std::sync::Arc<Metrics>,
) {
    let js = jetstream::new(nats.clone());
    while let Some(msg) = sub.next().await {
        let answer = match EraseRequest::parse(&msg.payload) {
            Err(e) => {
                metrics.bad_control_requests.inc();
                json!({"ok": false, "error": e})
            }
            Ok(req) => match erase(&js, &req).await {
                Ok((results, states)) => {
                    // The audit trail: who was erased, and how much (no result content).
                    info!(room = %req.room, participant = %req.participant, results, states, "erased stored results and states");
                    json!({"ok": true, "erased": {"results": results, "states": states}})
                }
                Err(e) => {
                    warn!(error = %e, "erasure failed");
                    json!({"ok": false, "error": format!("erasure failed: {e}")})
                }
            },
        };
        if let Some(reply) = msg.reply {
            let _ = nats.publish(reply, answer.to_string().into()).await;
        }
    }
}

/// Subscribes to [`CTL_ERASE`] in the daemons' queue group.
pub async fn subscribe(nats: &async_nats::Client) -> anyhow::Result<async_nats::Subscriber> {
    nats.queue_subscribe(CTL_ERASE, QUEUE.into())
        .await
        .map_err(|e| anyhow::anyhow!("cannot subscribe to {CTL_ERASE}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_checked_and_cannot_widen_the_filter() {
        let r = EraseRequest::parse(br#"{"room":"class","participant":"ana"}"#).unwrap();
        assert_eq!(r.filters()[0].1, "tap.v1.result.class.ana.>");
        assert_eq!(r.filters()[1].1, "tap.v1.state.class.ana");
        let wild = EraseRequest::parse(br#"{"room":"*","participant":">"}"#).unwrap();
        assert_eq!(wild.filters()[0].1, "tap.v1.result._._.>");
        for bad in [
            &br#"{"room":"","participant":"a"}"#[..],
            br#"{"room":"r"}"#,
            br#"{"room":"r","participant":"a","extra":1}"#,
            b"not json",
        ] {
            assert!(EraseRequest::parse(bad).is_err());
        }
        let long = format!(r#"{{"room":"r","participant":"{}"}}"#, "x".repeat(300));
        assert!(EraseRequest::parse(long.as_bytes())
            .unwrap_err()
            .contains("longer"));
    }
}
