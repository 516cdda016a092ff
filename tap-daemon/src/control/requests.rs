//! Attach/detach requests over NATS (`tap.v1.ctl.attach` / `.detach`), handed to the KMS watchers.

use std::sync::Arc;

use futures_util::StreamExt;
use serde_json::json;
use tokio::sync::{mpsc, oneshot};

use crate::metrics::Metrics;
use crate::watcher::{Command, ControlRefusal, ControlRequest};

/// Serves attach/detach requests: the request's `kms` names the watcher; without it, each watcher
/// is asked in turn until one has the pipeline.
pub(crate) async fn serve_control(
    nats: async_nats::Client,
    mut attach: async_nats::Subscriber,
    mut detach: async_nats::Subscriber,
    watchers: Vec<mpsc::Sender<Command>>,
    names: Vec<String>,
    metrics: Arc<Metrics>,
) {
    loop {
        let (msg, is_attach) = tokio::select! {
            Some(m) = attach.next() => (m, true),
            Some(m) = detach.next() => (m, false),
            else => return,
        };
        let Some(reply) = msg.reply.clone() else {
            continue;
        };
        let answer = match ControlRequest::parse(&msg.payload) {
            Err(e) => {
                metrics.bad_control_requests.inc();
                Some(json!({"ok": false, "error": e}))
            }
            Ok(req) => {
                let chosen: Vec<&mpsc::Sender<Command>> = match &req.kms {
                    Some(k) => names
                        .iter()
                        .position(|n| n == k)
                        .map(|i| vec![&watchers[i]])
                        .unwrap_or_default(),
                    None => watchers.iter().collect(),
                };
                if chosen.is_empty() {
                    metrics.bad_control_requests.inc();
                    Some(
                        json!({"ok": false, "error": format!("no KMS named {:?} here", req.kms.unwrap_or_default())}),
                    )
                } else {
                    ask_watchers(&chosen, &req, is_attach).await
                }
            }
        };
        // In cluster mode a room's holder answers; the other daemons stay silent.
        if let Some(answer) = answer {
            let _ = nats.publish(reply, answer.to_string().into()).await;
        }
    }
}

/// The first watcher that serves the request answers; `None` when another daemon holds the room.
async fn ask_watchers(
    watchers: &[&mpsc::Sender<Command>],
    req: &ControlRequest,
    is_attach: bool,
) -> Option<serde_json::Value> {
    let mut not_holder = false;
    for w in watchers {
        let (tx, rx) = oneshot::channel();
        let cmd = if is_attach {
            Command::Attach(req.clone(), tx)
        } else {
            Command::Detach(req.clone(), tx)
        };
        if w.send(cmd).await.is_err() {
            continue;
        }
        match rx.await {
            Ok(Ok(tap)) => return Some(json!({"ok": true, "tap": tap})),
            Ok(Err(ControlRefusal::Failed(e))) => return Some(json!({"ok": false, "error": e})),
            Ok(Err(ControlRefusal::NotHolder)) => not_holder = true,
            Ok(Err(ControlRefusal::NotHere)) | Err(_) => {}
        }
    }
    if not_holder {
        return None;
    }
    let error = if is_attach {
        format!("pipeline {} not found on any KMS", req.pipeline)
    } else {
        format!("{} is not tapped", req.endpoint)
    };
    Some(json!({"ok": false, "error": error}))
}
