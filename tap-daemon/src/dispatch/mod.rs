//! Sends chunks to workers with bounded latency: per (participant, model) one "lane" with a single
//! pending slot (a newer chunk replaces the waiting one) and at most `max_in_flight` requests out.
//! Stale chunks, missing workers and timeouts drop the chunk and count why; nothing queues.

pub mod registry;
pub mod routes;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_nats::client::RequestErrorKind;
use async_nats::jetstream;
use bytes::Bytes;
use tap_protocol::{
    chunk_subject, header, result_subject, ChunkMeta, Layout, ModelId, ModelSpec, ResultMessage,
    WorkerReply,
};
use tokio::sync::{broadcast, Notify, Semaphore};
use tracing::{debug, warn};

use crate::media::chunker::{Chunk, ChunkSink};
use crate::metrics::{Metrics, ModelLabel};
use crate::privacy::policy::{Outcome, Policy};

/// Unix time in µs.
pub fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_micros() as u64
}

/// Shared by every tap.
pub struct Dispatcher {
    nats: async_nats::Client,
    js: jetstream::Context,
    metrics: Arc<Metrics>,
    runtime: tokio::runtime::Handle,
    results: broadcast::Sender<Arc<ResultMessage>>,
    /// The same results, per room, for the rooms' injectors.
    routes: routes::RoomRoutes,
    /// Every result, whatever the policy, for the fusion in this process only.
    fusion: broadcast::Sender<Arc<ResultMessage>>,
    /// What may leave the daemon ([`crate::privacy::policy`]).
    policy: Policy,
    /// Bounds the JetStream acknowledgements awaited at once.
    store_permits: Arc<Semaphore>,
}

impl Dispatcher {
    /// A dispatcher publishing through `nats`.
    pub fn new(nats: async_nats::Client, metrics: Arc<Metrics>) -> Arc<Self> {
        Self::with_policy(nats, metrics, Policy::default())
    }

    /// A dispatcher letting out only what `policy` allows.
    pub fn with_policy(
        nats: async_nats::Client,
        metrics: Arc<Metrics>,
        policy: Policy,
    ) -> Arc<Self> {
        let js = jetstream::new(nats.clone());
        let (results, _) = broadcast::channel(1024);
        let (fusion, _) = broadcast::channel(1024);
        Arc::new(Dispatcher {
            nats,
            js,
            metrics,
            runtime: tokio::runtime::Handle::current(),
            results,
            routes: routes::RoomRoutes::default(),
            fusion,
            policy,
            store_permits: Arc::new(Semaphore::new(1024)),
        })
    }

    /// Every result that may leave the daemon under its policy, as it arrives (for the DataChannel
    /// injector, the dashboard and tests): nothing under `aggregate`, expression outputs only under
    /// `expressions`. Slow receivers lag.
    pub fn subscribe_results(&self) -> broadcast::Receiver<Arc<ResultMessage>> {
        self.results.subscribe()
    }

    /// The results of one room (a subject token) that may leave the daemon, for its injectors: a
    /// result is delivered to its own room's taps only. Slow receivers lag.
    pub fn subscribe_room(&self, room: &str) -> broadcast::Receiver<Arc<ResultMessage>> {
        self.routes.subscribe(room)
    }

    /// Every result for the fusion in this process (under `aggregate` the unfiltered results, which
    /// never leave; otherwise what [`Self::subscribe_results`] gives).
    pub fn subscribe_fusion(&self) -> broadcast::Receiver<Arc<ResultMessage>> {
        self.fusion.subscribe()
    }

    /// The processing policy.
    pub fn policy(&self) -> Policy {
        self.policy
    }
}

/// Who a tap is.
#[derive(Debug, Clone)]
pub struct TapIdent {
    /// Room (safe token).
    pub room: String,
    /// Participant (safe token).
    pub participant: String,
    /// The publisher's endpoint id.
    pub endpoint: String,
    /// The KMS's name.
    pub kms: String,
    /// Unique per tap instance (message ids for JetStream de-duplication).
    pub instance: String,
}

struct Lane {
    pending: Mutex<Option<Chunk>>,
    notify: Notify,
    seq: AtomicU64,
    task: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

/// One tap's dispatch: a lane per model.
pub struct TapDispatch {
    ident: TapIdent,
    dispatcher: Arc<Dispatcher>,
    lanes: Mutex<HashMap<ModelId, Arc<Lane>>>,
    closed: AtomicBool,
}

impl TapDispatch {
    /// Dispatch for one tap.
    pub fn new(ident: TapIdent, dispatcher: Arc<Dispatcher>) -> Arc<Self> {
        Arc::new(TapDispatch {
            ident,
            dispatcher,
            lanes: Mutex::default(),
            closed: AtomicBool::new(false),
        })
    }

    /// Stops every lane (pending chunks are dropped, requests in flight abandoned).
    pub fn close(&self) {
        self.closed.store(true, Ordering::Relaxed);
        let lanes: Vec<_> = self
            .lanes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .drain()
            .collect();
        for (_, lane) in lanes {
            if let Some(t) = lane.task.lock().unwrap_or_else(|e| e.into_inner()).take() {
                t.abort();
            }
        }
    }

    fn lane(self: &Arc<Self>, spec: &Arc<ModelSpec>) -> Arc<Lane> {
        // A lane of a model that left stays idle (one parked task) until the tap ends.
        let mut lanes = self.lanes.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(l) = lanes.get(&spec.id) {
            return l.clone();
        }
        let lane = Arc::new(Lane {
            pending: Mutex::new(None),
            notify: Notify::new(),
            seq: AtomicU64::new(0),
            task: Mutex::new(None),
        });
        let task = self.dispatcher.runtime.spawn(run_lane(
            self.clone(),
            lane.clone(),
            spec.max_in_flight.max(1) as usize,
        ));
        *lane.task.lock().unwrap_or_else(|e| e.into_inner()) = Some(task);
        lanes.insert(spec.id.clone(), lane.clone());
        lane
    }
}

impl Drop for TapDispatch {
    fn drop(&mut self) {
        self.close();
    }
}

/// The ChunkSink side needs `Arc<TapDispatch>`; this wrapper provides it.
pub struct TapSink(pub Arc<TapDispatch>);

impl ChunkSink for TapSink {
    fn offer(&self, chunk: Chunk) {
        let tap = &self.0;
        if tap.closed.load(Ordering::Relaxed) {
            return;
        }
        let lane = tap.lane(&chunk.spec);
        let label = ModelLabel {
            model: chunk.spec.id.to_string(),
        };
        tap.dispatcher
            .metrics
            .chunks_offered
            .get_or_create(&label)
            .inc();
        let replaced = lane
            .pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .replace(chunk);
        if replaced.is_some() {
            // Latest wins: the older chunk was never sent.
            tap.dispatcher.metrics.dropped(&label.model, "superseded");
        }
        lane.notify.notify_one();
    }

    fn converted(&self, _model: &ModelId, micros: u64) {
        self.0
            .dispatcher
            .metrics
            .conversion
            .observe(micros as f64 / 1e6);
    }
}

async fn run_lane(tap: Arc<TapDispatch>, lane: Arc<Lane>, max_in_flight: usize) {
    let permits = Arc::new(Semaphore::new(max_in_flight));
    loop {
        let Ok(permit) = permits.clone().acquire_owned().await else {
            return;
        };
        let chunk = loop {
            if let Some(c) = lane
                .pending
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .take()
            {
                break c;
            }
            lane.notify.notified().await;
        };
        let seq = lane.seq.fetch_add(1, Ordering::Relaxed);
        let tap = tap.clone();
        if max_in_flight == 1 {
            send(&tap, chunk, seq).await;
            drop(permit);
        } else {
            tokio::spawn(async move {
                send(&tap, chunk, seq).await;
                drop(permit);
            });
        }
    }
}

async fn send(tap: &TapDispatch, chunk: Chunk, seq: u64) {
    let d = &tap.dispatcher;
    let spec = &chunk.spec;
    let model = spec.id.to_string();
    let deadline_us = chunk.capture_us + u64::from(spec.deadline_ms) * 1000;
    let sent_us = now_us();
    if sent_us >= deadline_us {
        d.metrics.dropped(&model, "stale");
        return;
    }
    let layout = match (spec.video, spec.audio) {
        (Some(v), _) => Layout::Video {
            format: v.format,
            width: v.width,
            height: v.height,
        },
        (None, Some(a)) => Layout::Audio {
            format: a.format,
            rate: a.sample_rate,
            channels: a.channels,
        },
        (None, None) => return,
    };
    let meta = ChunkMeta {
        room: tap.ident.room.clone(),
        participant: tap.ident.participant.clone(),
        endpoint: tap.ident.endpoint.clone(),
        model: spec.id.clone(),
        seq,
        capture_us: chunk.capture_us,
        sent_us,
        deadline_us,
        layout,
    };
    let mut headers = async_nats::HeaderMap::new();
    for (k, v) in meta.to_headers() {
        headers.insert(k, v.as_str());
    }
    let label = ModelLabel {
        model: model.clone(),
    };
    d.metrics
        .capture_to_dispatch
        .observe(sent_us.saturating_sub(chunk.capture_us) as f64 / 1e6);
    d.metrics.chunks_sent.get_or_create(&label).inc();
    let in_flight = d.metrics.in_flight.get_or_create(&label).clone();
    in_flight.inc();
    let request = async_nats::Request::new()
        .payload(chunk.payload)
        .headers(headers)
        .timeout(Some(Duration::from_micros(deadline_us - sent_us)));
    let reply = d.nats.send_request(chunk_subject(&spec.id), request).await;
    in_flight.dec();
    let msg = match reply {
        Ok(m) => m,
        Err(e) => {
            let reason = match e.kind() {
                RequestErrorKind::NoResponders => "no_responders",
                RequestErrorKind::TimedOut => "timeout",
                _ => "nats_error",
            };
            debug!(%model, %reason, error = %e, "chunk not answered");
            d.metrics.dropped(&model, reason);
            return;
        }
    };
    let received_us = now_us();
    let error = msg
        .headers
        .as_ref()
        .and_then(|h| h.get(header::ERROR))
        .map(|v| v.as_str());
    let output = match read_reply(error, &msg.payload) {
        Ok(r) => r,
        Err(rejected) => {
            if let ReplyRejected::Unreadable(e) = &rejected {
                warn!(%model, error = %e, "unreadable worker reply");
            }
            d.metrics.dropped(&model, rejected.reason());
            return;
        }
    };
    let latency_ms = received_us.saturating_sub(chunk.capture_us) as f64 / 1e3;
    d.metrics.results.get_or_create(&label).inc();
    d.metrics
        .capture_to_result
        .get_or_create(&label)
        .observe(latency_ms / 1e3);
    let mut result = ResultMessage {
        v: tap_protocol::VERSION,
        room: tap.ident.room.clone(),
        participant: tap.ident.participant.clone(),
        endpoint: tap.ident.endpoint.clone(),
        kms: Some(tap.ident.kms.clone()),
        model: spec.id.name.clone(),
        version: spec.id.version.clone(),
        media: spec.media,
        seq,
        capture_ms: chunk.capture_us as f64 / 1e3,
        output,
        latency_ms,
        round_trip_ms: received_us.saturating_sub(sent_us) as f64 / 1e3,
    };
    // The policy, before anything leaves: NATS, JetStream, DataChannels, the dashboard.
    match d.policy {
        Policy::Emotions => {}
        Policy::Aggregate => {
            d.metrics.policy_withheld("aggregate");
            // The fusion sees it (room moods from `min_group` contributors on); nothing else does.
            let _ = d.fusion.send(Arc::new(result));
            return;
        }
        Policy::Expressions => {
            let output = std::mem::take(&mut result.output);
            match crate::privacy::policy::apply(d.policy, spec.outputs.as_ref(), output) {
                Outcome::Leaves(o) => result.output = o,
                Outcome::Withheld(reason) => {
                    d.metrics.policy_withheld(reason);
                    return;
                }
            }
        }
    }
    let result = Arc::new(result);
    let _ = d.results.send(result.clone());
    d.routes.route(&result);
    let _ = d.fusion.send(result.clone());
    store(d, &tap.ident, &spec.id, result);
}

/// Why a worker's reply gives no result.
#[derive(Debug, Clone, PartialEq)]
pub enum ReplyRejected {
    /// The worker answered with an error header (`stale`, `malformed`, anything else).
    Worker(String),
    /// The body is not a v1 reply.
    Unreadable(String),
    /// More labels than [`MAX_REPLY_LABELS`], or a label name longer than [`MAX_LABEL_LEN`].
    TooLarge,
}

impl ReplyRejected {
    /// The `reason` label of `kurento_tap_chunks_dropped_total`.
    pub fn reason(&self) -> &'static str {
        match self {
            ReplyRejected::Worker(e) if e == "stale" => "worker_stale",
            ReplyRejected::Worker(e) if e == "malformed" => "worker_malformed",
            ReplyRejected::Worker(e) if e == "busy" => "worker_busy",
            ReplyRejected::Worker(_) => "worker_error",
            ReplyRejected::Unreadable(_) | ReplyRejected::TooLarge => "bad_reply",
        }
    }
}

/// Most labels a reply may carry (a classifier's classes; the DataChannel sends the top 8).
pub const MAX_REPLY_LABELS: usize = 1024;
/// Longest label name in a reply (bytes).
pub const MAX_LABEL_LEN: usize = 256;

/// Reads a worker's reply: its error header, if any, then the JSON body.
pub fn read_reply(error: Option<&str>, payload: &[u8]) -> Result<WorkerReply, ReplyRejected> {
    if let Some(e) = error {
        return Err(ReplyRejected::Worker(e.to_owned()));
    }
    let reply: WorkerReply =
        serde_json::from_slice(payload).map_err(|e| ReplyRejected::Unreadable(e.to_string()))?;
    if reply.labels.len() > MAX_REPLY_LABELS
        || reply.labels.keys().any(|l| l.len() > MAX_LABEL_LEN)
        || reply.top.as_ref().is_some_and(|t| t.len() > MAX_LABEL_LEN)
    {
        return Err(ReplyRejected::TooLarge);
    }
    Ok(reply)
}

/// Publishes a result to JetStream with a message id (a retried publish is stored once).
fn store(d: &Dispatcher, ident: &TapIdent, model: &ModelId, result: Arc<ResultMessage>) {
    let Ok(permit) = d.store_permits.clone().try_acquire_owned() else {
        d.metrics.results_unstored.inc();
        return;
    };
    let subject = result_subject(&ident.room, &ident.participant, model);
    let msg_id = format!("{}-{}-{}", ident.instance, model.key(), result.seq);
    let body = match serde_json::to_vec(&*result) {
        Ok(b) => Bytes::from(b),
        Err(_) => return,
    };
    let js = d.js.clone();
    let metrics = d.metrics.clone();
    d.runtime.spawn(async move {
        let _permit = permit;
        for attempt in 0..2 {
            let mut headers = async_nats::HeaderMap::new();
            headers.insert("Nats-Msg-Id", msg_id.as_str());
            headers.insert(
                header::CAPTURE_US,
                ((result.capture_ms * 1e3) as u64).to_string().as_str(),
            );
            match js
                .publish_with_headers(subject.clone(), headers, body.clone())
                .await
            {
                Ok(ack) => match ack.await {
                    Ok(_) => return,
                    Err(e) => debug!(attempt, error = %e, "result not acknowledged"),
                },
                Err(e) => debug!(attempt, error = %e, "result not published"),
            }
        }
        metrics.results_unstored.inc();
    });
}
