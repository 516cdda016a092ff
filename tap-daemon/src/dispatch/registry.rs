//! The model registry: a JetStream KV bucket that workers keep their spec in. The daemon watches it,
//! keeps the live, valid specs that fit the server's `max_payload`, and publishes them to every
//! chunker. A model appears at the next frame after its entry is written; it disappears when its
//! entry is deleted or three heartbeats pass without a refresh.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use async_nats::jetstream::{self, kv};
use futures_util::StreamExt;
use tap_protocol::ModelSpec;
use tokio::sync::watch;
use tracing::{info, warn};

use crate::dispatch::now_us;
use crate::media::chunker::LiveSpecs;
use crate::metrics::{Metrics, ReasonLabel};

/// Room left in a message for headers, on top of the chunk.
pub const HEADER_ALLOWANCE: usize = 1024;

/// Opens (or creates) the registry bucket.
pub async fn open_bucket(js: &jetstream::Context) -> anyhow::Result<kv::Store> {
    tap_protocol::nats::open_registry(js)
        .await
        .map_err(anyhow::Error::msg)
}

/// Why a registry entry is not used.
pub fn reject_reason(spec: &ModelSpec, max_payload: usize) -> Option<String> {
    if let Err(e) = spec.validate() {
        return Some(e.to_string());
    }
    let size = spec.chunk_size() + HEADER_ALLOWANCE;
    if size > max_payload {
        return Some(format!(
            "model {}: a chunk is {} bytes but the NATS server's max_payload is {max_payload}; \
             raise max_payload in nats-server.conf or ask for smaller chunks",
            spec.id,
            spec.chunk_size()
        ));
    }
    None
}

/// Reads every current entry once (for the start-up check).
pub async fn snapshot(kv: &kv::Store) -> anyhow::Result<Vec<ModelSpec>> {
    let mut out = Vec::new();
    let mut keys = kv.keys().await?;
    while let Some(key) = keys.next().await {
        let key = key?;
        if let Some(value) = kv.get(&key).await? {
            if let Ok(spec) = serde_json::from_slice::<ModelSpec>(&value) {
                out.push(spec);
            }
        }
    }
    Ok(out)
}

/// Puts the live, servable specs among `entries` into `live` (the start-up state the watch then
/// keeps current).
pub fn seed(live: &LiveSpecs, entries: &[ModelSpec], max_payload: usize, metrics: &Metrics) {
    let now_ms = now_us() / 1000;
    let mut specs: Vec<Arc<ModelSpec>> = entries
        .iter()
        .filter(|s| s.is_live(now_ms) && reject_reason(s, max_payload).is_none())
        .map(|s| Arc::new(s.clone()))
        .collect();
    specs.sort_by(|a, b| a.id.cmp(&b.id));
    specs.dedup_by(|a, b| a.id == b.id);
    metrics.models_live.set(specs.len() as i64);
    *live.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(specs);
}

/// Watches the bucket forever, keeping `live` current; `changed` ticks on every change of the set.
pub async fn watch(
    kv: kv::Store,
    live: LiveSpecs,
    changed: watch::Sender<u64>,
    max_payload: usize,
    metrics: Arc<Metrics>,
) {
    let mut entries: HashMap<String, ModelSpec> = HashMap::new();
    let mut rejected: HashMap<String, String> = HashMap::new();
    let mut version = 0u64;
    loop {
        let mut updates = match kv.watch_with_history(">").await {
            Ok(w) => w,
            Err(e) => {
                warn!(error = %e, "cannot watch the model registry; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        let mut sweep = tokio::time::interval(Duration::from_millis(500));
        loop {
            tokio::select! {
                update = updates.next() => {
                    let Some(update) = update else { break };
                    let Ok(entry) = update else { break };
                    match entry.operation {
                        kv::Operation::Put => match serde_json::from_slice::<ModelSpec>(&entry.value) {
                            Ok(spec) => { entries.insert(entry.key.clone(), spec); }
                            Err(e) => {
                                metrics.specs_rejected.get_or_create(&ReasonLabel { reason: "unreadable".into() }).inc();
                                warn!(key = %entry.key, error = %e, "unreadable registry entry");
                                entries.remove(&entry.key);
                            }
                        },
                        kv::Operation::Delete | kv::Operation::Purge => { entries.remove(&entry.key); }
                    }
                }
                _ = sweep.tick() => {}
            }
            let now_ms = now_us() / 1000;
            let mut next: Vec<Arc<ModelSpec>> = Vec::new();
            for (key, spec) in &entries {
                if !spec.is_live(now_ms) {
                    continue;
                }
                match reject_reason(spec, max_payload) {
                    Some(reason) => {
                        if rejected.get(key) != Some(&reason) {
                            warn!(%key, %reason, "model not served");
                            metrics
                                .specs_rejected
                                .get_or_create(&ReasonLabel {
                                    reason: "invalid".into(),
                                })
                                .inc();
                            rejected.insert(key.clone(), reason);
                        }
                    }
                    None => {
                        rejected.remove(key);
                        next.push(Arc::new(spec.clone()));
                    }
                }
            }
            next.sort_by(|a, b| a.id.cmp(&b.id));
            let differs = {
                let cur = live.read().unwrap_or_else(|e| e.into_inner());
                cur.len() != next.len() || cur.iter().zip(&next).any(|(a, b)| !same_serving(a, b))
            };
            if differs {
                let names: Vec<String> = next.iter().map(|s| s.id.to_string()).collect();
                info!(models = ?names, "live models changed");
                metrics.models_live.set(next.len() as i64);
                *live.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(next);
                version += 1;
                let _ = changed.send(version);
            }
        }
        warn!("model registry watch ended; re-opening");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Same model served the same way (heartbeat timestamps aside).
fn same_serving(a: &ModelSpec, b: &ModelSpec) -> bool {
    let mut b2 = b.clone();
    b2.updated_ms = a.updated_ms;
    *a == b2
}

/// An empty live set.
pub fn empty() -> LiveSpecs {
    Arc::new(RwLock::new(Arc::new(Vec::new())))
}
