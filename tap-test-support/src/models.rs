//! Models as the daemon sees them: specs, a registration kept alive by heartbeats, and a test worker
//! that answers every chunk and records what it saw.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream;
use futures_util::StreamExt;
use tap_protocol::*;

use crate::now_ms;

pub fn video_spec(
    name: &str,
    fps: Option<f64>,
    every_nth: Option<u32>,
    w: u32,
    h: u32,
    format: PixelFormat,
) -> ModelSpec {
    ModelSpec {
        protocol: 1,
        id: ModelId::new(name, "1"),
        media: MediaKind::Video,
        video: Some(VideoChunkSpec {
            fps,
            every_nth,
            width: w,
            height: h,
            format,
        }),
        audio: None,
        labels: vec!["a".into(), "b".into()],
        output: "labels".into(),
        max_in_flight: 1,
        deadline_ms: 1000,
        heartbeat_ms: 500,
        updated_ms: 0,
        affect: None,
        quality: None,
        outputs: None,
    }
}

pub fn audio_spec(name: &str) -> ModelSpec {
    ModelSpec {
        protocol: 1,
        id: ModelId::new(name, "1"),
        media: MediaKind::Audio,
        video: None,
        audio: Some(AudioChunkSpec {
            window_ms: 500,
            hop_ms: 500,
            sample_rate: 16000,
            channels: 1,
            format: SampleFormat::S16,
        }),
        labels: vec![],
        output: "labels".into(),
        max_in_flight: 1,
        deadline_ms: 1000,
        heartbeat_ms: 500,
        updated_ms: 0,
        affect: None,
        quality: None,
        outputs: None,
    }
}

/// Keeps a spec registered (refreshing it every heartbeat) until dropped.
pub struct Registration {
    task: tokio::task::JoinHandle<()>,
    kv: jetstream::kv::Store,
    key: String,
}

impl Registration {
    pub async fn new(client: &async_nats::Client, spec: ModelSpec) -> Registration {
        let js = jetstream::new(client.clone());
        // The daemon's registry bucket (`tap_daemon`'s `open_bucket` is this call).
        let kv = tap_protocol::nats::open_registry(&js).await.unwrap();
        let key = spec.id.key();
        let (kv2, key2) = (kv.clone(), key.clone());
        let task = tokio::spawn(async move {
            loop {
                let mut s = spec.clone();
                s.updated_ms = now_ms();
                let _ = kv2.put(&key2, serde_json::to_vec(&s).unwrap().into()).await;
                tokio::time::sleep(Duration::from_millis(u64::from(spec.heartbeat_ms) / 2)).await;
            }
        });
        Registration { task, kv, key }
    }

    /// Deletes the entry (the model leaves).
    pub async fn remove(self) {
        self.task.abort();
        let _ = self.kv.delete(&self.key).await;
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// One chunk a test worker saw.
#[derive(Debug, Clone)]
pub struct Seen {
    pub meta: ChunkMeta,
    pub len: usize,
    pub at_ms: u64,
}

/// A worker that answers every chunk of `model` after `delay`, recording what it saw.
pub async fn worker(
    client: &async_nats::Client,
    model: &ModelId,
    delay: Duration,
) -> (Arc<Mutex<Vec<Seen>>>, tokio::task::JoinHandle<()>) {
    let mut sub = client
        .queue_subscribe(chunk_subject(model), queue_group(model))
        .await
        .unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let (log, client) = (seen.clone(), client.clone());
    let task = tokio::spawn(async move {
        while let Some(msg) = sub.next().await {
            let headers = msg.headers.clone().unwrap_or_default();
            let meta =
                ChunkMeta::from_headers(|k| headers.get(k).map(|v| v.as_str()), msg.payload.len())
                    .expect("valid chunk");
            log.lock().unwrap().push(Seen {
                meta,
                len: msg.payload.len(),
                at_ms: now_ms(),
            });
            if !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            if let Some(reply) = msg.reply {
                let body = WorkerReply {
                    labels: [("a".to_owned(), 0.75), ("b".to_owned(), 0.25)].into(),
                    top: Some("a".into()),
                    ..Default::default()
                };
                let _ = client
                    .publish(reply, serde_json::to_vec(&body).unwrap().into())
                    .await;
            }
        }
    });
    (seen, task)
}
