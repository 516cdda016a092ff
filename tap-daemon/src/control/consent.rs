//! Consent requests over NATS (`tap.v1.ctl.consent`, [`crate::privacy::consent`] decides), handed
//! to the KMS watchers.

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use serde_json::json;
use tokio::sync::{mpsc, oneshot};

use crate::metrics::Metrics;
use crate::privacy::consent::{ConsentRequest, CTL_CONSENT};
use crate::watcher::{Command, ControlRefusal};

/// Subscribes to [`CTL_CONSENT`] (every daemon: in cluster mode the one tapping the room
/// answers).
pub async fn subscribe(nats: &async_nats::Client) -> anyhow::Result<async_nats::Subscriber> {
    nats.subscribe(CTL_CONSENT)
        .await
        .map_err(|e| anyhow::anyhow!("cannot subscribe to {CTL_CONSENT}: {e}"))
}

/// Answers consent requests until the subscription ends: each watcher is asked; those that know
/// the participant apply the request at once. A participant no watcher knows is refused (an error
/// reply and `kurento_tap_consent_refused_total{reason="unknown_participant"}`); in cluster mode a
/// daemon that does not know them stays silent (the room may be another daemon's).
pub(crate) async fn serve(
    nats: async_nats::Client,
    mut sub: async_nats::Subscriber,
    watchers: Vec<mpsc::Sender<Command>>,
    cluster: bool,
    metrics: Arc<Metrics>,
) {
    while let Some(msg) = sub.next().await {
        let answer = match ConsentRequest::parse(&msg.payload) {
            Err(e) => {
                metrics.bad_control_requests.inc();
                metrics.consent_refused("bad_request");
                Some(json!({"ok": false, "error": e}))
            }
            Ok(req) => ask(&watchers, &req, cluster, &metrics).await,
        };
        if let (Some(answer), Some(reply)) = (answer, msg.reply) {
            let _ = nats.publish(reply, answer.to_string().into()).await;
        }
    }
}

/// Longest wait for a watcher to apply a consent request (a grant taps the participant at once).
const WATCHER_TIMEOUT: Duration = Duration::from_secs(20);

async fn ask(
    watchers: &[mpsc::Sender<Command>],
    req: &ConsentRequest,
    cluster: bool,
    metrics: &Metrics,
) -> Option<serde_json::Value> {
    let mut known = None;
    let mut failure = None;
    for w in watchers {
        let (tx, rx) = oneshot::channel();
        if w.send(Command::Consent(req.clone(), tx)).await.is_err() {
            continue;
        }
        match tokio::time::timeout(WATCHER_TIMEOUT, rx).await {
            Ok(Ok(Ok(analysed))) => known = Some(known.unwrap_or(false) || analysed),
            Ok(Ok(Err(ControlRefusal::Failed(e)))) => failure = Some(e),
            Ok(Ok(Err(_))) | Ok(Err(_)) => {}
            Err(_) => failure = Some("the watcher did not answer in time".into()),
        }
    }
    let consent = if req.consent { "granted" } else { "withdrawn" };
    match (known, failure) {
        (_, Some(e)) => {
            metrics.consent_refused("failed");
            Some(json!({"ok": false, "error": e}))
        }
        (Some(analysed), None) => {
            Some(json!({"ok": true, "consent": consent, "analysed": analysed}))
        }
        (None, None) if cluster => None,
        (None, None) => {
            metrics.consent_refused("unknown_participant");
            Some(json!({
                "ok": false,
                "error": format!(
                    "unknown participant {:?} in room {:?}: no publisher of that name is known here",
                    req.participant, req.room
                )
            }))
        }
    }
}
