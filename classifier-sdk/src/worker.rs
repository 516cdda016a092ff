//! The worker runtime.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use async_nats::jetstream;
use bytes::Bytes;
use futures_util::StreamExt;
use tap_protocol::{
    chunk_subject, header, queue_group, safe_token, ChunkMeta, ModelSpec, WorkerReply,
};
use tokio::sync::{oneshot, Notify, Semaphore};

use crate::admission::InferenceEstimate;
use tracing::{debug, info, warn};

use crate::chunk::Chunk;
use crate::metrics::WorkerMetrics;
use crate::waiting_room::{Refusal, WaitingRoom};
use crate::Classifier;

/// How to run a worker.
#[derive(Debug, Clone)]
pub struct WorkerOptions {
    /// `nats://host:4222` (user:password@ in the URL works too).
    pub nats_url: String,
    /// A `.creds` file (JWT + nkey).
    pub creds: Option<PathBuf>,
    /// A token.
    pub token: Option<String>,
    /// Inferences at once (one model instance each). Default 1.
    pub concurrency: usize,
    /// Messages the NATS client buffers for the subscription before it drops them as a slow
    /// consumer (default 1024). A reader task empties it into the waiting room at once, so it only
    /// absorbs bursts; drops are counted (`slow_consumer`).
    pub subscription_capacity: usize,
    /// Chunks waiting for a model at most, one per lane (a participant's stream): a newer chunk of
    /// a lane replaces its waiting one (answered `stale`), a chunk finding the room full is
    /// answered `busy` at once; lanes are served in turn (default 256; see
    /// [`crate::waiting_room`]).
    pub waiting_room: usize,
    /// Where `/metrics` is served (None: not served).
    pub http_listen: Option<SocketAddr>,
    /// Chunks handed to one `predict_batch` call when several are waiting (default 1: no batching).
    pub max_batch: usize,
    /// Refuse (answer `stale`) a chunk with less time left than an inference takes, before
    /// inference (default true; see [`crate::admission`]).
    pub deadline_admission: bool,
}

impl WorkerOptions {
    /// Defaults for a NATS URL.
    pub fn new(nats_url: impl Into<String>) -> Self {
        WorkerOptions {
            nats_url: nats_url.into(),
            creds: None,
            token: None,
            concurrency: 1,
            subscription_capacity: 1024,
            waiting_room: 256,
            http_listen: None,
            max_batch: 1,
            deadline_admission: true,
        }
    }

    /// Sets the concurrency.
    pub fn concurrency(mut self, n: usize) -> Self {
        self.concurrency = n.max(1);
        self
    }

    /// Holds at most `n` chunks waiting for a model (one per lane; see [`crate::waiting_room`]).
    pub fn waiting_room(mut self, n: usize) -> Self {
        self.waiting_room = n.max(1);
        self
    }

    /// Batches up to `n` waiting chunks into one `predict_batch` call.
    pub fn max_batch(mut self, n: usize) -> Self {
        self.max_batch = n.max(1);
        self
    }

    /// Serves `/metrics` at `addr`.
    pub fn metrics_at(mut self, addr: SocketAddr) -> Self {
        self.http_listen = Some(addr);
        self
    }
}

/// Worker failures.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    /// The model's spec is invalid.
    #[error("invalid model spec: {0}")]
    Spec(String),
    /// NATS.
    #[error("NATS: {0}")]
    Nats(String),
    /// HTTP.
    #[error("metrics endpoint: {0}")]
    Http(String),
}

fn nats_err(e: impl std::fmt::Display) -> WorkerError {
    WorkerError::Nats(e.to_string())
}

/// A worker for classifier `C`, built by `factory` (once per concurrent inference).
pub struct Worker<C, F> {
    factory: F,
    options: WorkerOptions,
    _c: std::marker::PhantomData<fn() -> C>,
}

/// A started worker.
pub struct RunningWorker {
    /// Its metrics.
    pub metrics: Arc<WorkerMetrics>,
    /// The bound metrics address.
    pub http_addr: Option<SocketAddr>,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<Result<(), WorkerError>>,
}

impl RunningWorker {
    /// Drains: stops taking chunks, finishes those in progress, then disconnects.
    pub async fn stop(mut self) -> Result<(), WorkerError> {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        self.task.await.unwrap_or(Ok(()))
    }

    /// Ends at once, as a crash would (the connection drops; NATS gives its share to the others).
    pub fn kill(self) {
        self.task.abort();
    }
}

fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_micros() as u64
}

/// Resolves on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(t) => t,
                Err(_) => return std::future::pending().await,
            };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = tokio::signal::ctrl_c().await;
}

impl<C: Classifier, F: Fn() -> C + Send + 'static> Worker<C, F> {
    /// A worker with default options (`nats://127.0.0.1:4222`).
    pub fn new(factory: F) -> Self {
        Worker {
            factory,
            options: WorkerOptions::new("nats://127.0.0.1:4222"),
            _c: std::marker::PhantomData,
        }
    }

    /// Sets the options.
    pub fn options(mut self, options: WorkerOptions) -> Self {
        self.options = options;
        self
    }

    /// Runs until `shutdown` resolves, then drains.
    pub async fn run(
        self,
        shutdown: impl std::future::Future<Output = ()>,
    ) -> Result<(), WorkerError> {
        let running = self.start().await?;
        shutdown.await;
        running.stop().await
    }

    /// Connects, registers and starts serving; returns a handle.
    pub async fn start(self) -> Result<RunningWorker, WorkerError> {
        let concurrency = self.options.concurrency.max(1);
        let mut instances: Vec<C> = (0..concurrency).map(|_| (self.factory)()).collect();
        let spec = instances[0].spec();
        spec.validate()
            .map_err(|e| WorkerError::Spec(e.to_string()))?;
        let metrics = Arc::new(WorkerMetrics::new());
        let mut opts = async_nats::ConnectOptions::new();
        if let Some(creds) = &self.options.creds {
            opts = async_nats::ConnectOptions::with_credentials_file(creds.clone())
                .await
                .map_err(nats_err)?;
        }
        let events = metrics.clone();
        let mut opts = opts
            .name(format!("tap-worker {}", spec.id))
            .subscription_capacity(self.options.subscription_capacity.max(1))
            // The client drops what overflows the subscription without a word but this event:
            // each such chunk costs a daemon its deadline, so it is counted.
            .event_callback(move |event| {
                let events = events.clone();
                async move {
                    if let async_nats::Event::SlowConsumer(_) = event {
                        events.drop_reason("slow_consumer");
                    }
                }
            });
        if let Some(token) = &self.options.token {
            opts = opts.token(token.clone());
        }
        let client = opts
            .connect(self.options.nats_url.as_str())
            .await
            .map_err(nats_err)?;
        let kv = tap_protocol::nats::open_registry(&jetstream::new(client.clone()))
            .await
            .map_err(WorkerError::Nats)?;
        let http = match self.options.http_listen {
            Some(addr) => Some(serve_metrics(addr, metrics.clone()).await?),
            None => None,
        };
        let group = queue_group(&spec.id);
        let service = async_nats::service::ServiceExt::service_builder(&client)
            .description(format!("kurento-tap model {} ({:?})", spec.id, spec.media))
            .queue_group(group.clone())
            .start(
                format!(
                    "tap_{}_{}",
                    safe_token(&spec.id.name),
                    safe_token(&spec.id.version)
                ),
                semver(&spec.id.version),
            )
            .await
            .map_err(nats_err)?;
        let endpoint = service
            .endpoint_builder()
            .name("chunks")
            .queue_group(group)
            .add(chunk_subject(&spec.id))
            .await
            .map_err(nats_err)?;
        // Reachable when this returns: the server has registered the endpoint's subscription (a
        // round trip, not a flush) and the registry holds our entry (a JetStream-acknowledged put),
        // so a chunk sent at once finds us and a daemon started at once serves us.
        tap_protocol::nats::confirm_with_server(&client, CONFIRM_TIMEOUT)
            .await
            .map_err(WorkerError::Nats)?;
        register(&kv, &spec).await?;
        info!(model = %spec.id, concurrency, "worker serving");
        let heartbeat = tokio::spawn(keep_registered(kv, spec.clone()));
        let reporter = tokio::spawn(report_load(
            client.clone(),
            spec.id.clone(),
            concurrency as u32,
            metrics.clone(),
        ));
        let pool = Arc::new(Mutex::new(std::mem::take(&mut instances)));
        let (stop_tx, stop_rx) = oneshot::channel();
        let max_batch = self.options.max_batch.max(1);
        let admission = self.options.deadline_admission;
        let task = tokio::spawn(serve(
            endpoint,
            service,
            pool,
            concurrency,
            max_batch,
            self.options.waiting_room,
            // A daemon has at most `max_in_flight` chunks of a lane out at once.
            spec.max_in_flight.max(1) as usize,
            admission,
            metrics.clone(),
            stop_rx,
            heartbeat,
            reporter,
            client,
        ));
        Ok(RunningWorker {
            metrics,
            http_addr: http.map(|(_, a)| a),
            stop: Some(stop_tx),
            task,
        })
    }
}

/// NATS services need a semantic version: `1` → `1.0.0`; anything else not semver → `0.0.0`.
fn semver(v: &str) -> String {
    let parts: Vec<&str> = v.split('.').collect();
    if parts
        .iter()
        .all(|p| !p.is_empty() && p.chars().all(|c| c.is_ascii_digit()))
        && parts.len() <= 3
    {
        let mut p: Vec<String> = parts.iter().map(|s| s.to_string()).collect();
        while p.len() < 3 {
            p.push("0".into());
        }
        p.join(".")
    } else {
        "0.0.0".into()
    }
}

/// Writes the spec every half heartbeat (the daemon drops a model after three missed heartbeats).
/// How long start-up waits for the server to confirm the subscriptions and the registry entry.
const CONFIRM_TIMEOUT: Duration = Duration::from_secs(10);

/// Writes the spec, freshly dated, to the registry.
async fn register(kv: &jetstream::kv::Store, spec: &ModelSpec) -> Result<(), WorkerError> {
    let mut s = spec.clone();
    s.updated_ms = now_us() / 1000;
    let body = serde_json::to_vec(&s).map_err(|e| WorkerError::Spec(e.to_string()))?;
    kv.put(spec.id.key(), body.into())
        .await
        .map(|_| ())
        .map_err(|e| WorkerError::Nats(format!("cannot register {} in the registry: {e}", spec.id)))
}

/// Refreshes the registry entry every half heartbeat (the first write was done by `start`).
async fn keep_registered(kv: jetstream::kv::Store, spec: ModelSpec) {
    let every = Duration::from_millis(u64::from(spec.heartbeat_ms) / 2);
    loop {
        tokio::time::sleep(every).await;
        if let Err(e) = register(&kv, &spec).await {
            debug!(error = %e, "registry heartbeat failed; retrying");
        }
    }
}

/// How often a worker reports its load.
const LOAD_REPORT_EVERY: Duration = Duration::from_secs(1);

/// Publishes, every second, what this instance did in the last period (`tap.v1.load.*`): daemons
/// turn it into the capacity and saturation a scaler reads.
async fn report_load(
    client: async_nats::Client,
    model: tap_protocol::ModelId,
    slots: u32,
    metrics: Arc<WorkerMetrics>,
) {
    let instance = format!(
        "{}-{}",
        std::process::id(),
        client.new_inbox().rsplit('.').next().unwrap_or("x")
    );
    let subject = tap_protocol::load::load_subject(&model);
    let mut last = (
        Instant::now(),
        metrics.busy_us.get(),
        metrics.predicted.get(),
        metrics.refused.get(),
    );
    let mut tick = tokio::time::interval(LOAD_REPORT_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tick.tick().await;
        let now = (
            Instant::now(),
            metrics.busy_us.get(),
            metrics.predicted.get(),
            metrics.refused.get(),
        );
        let period_ms = now.0.duration_since(last.0).as_millis().max(1) as u64;
        let report = tap_protocol::load::LoadReport {
            v: tap_protocol::VERSION,
            model: model.clone(),
            instance: instance.clone(),
            slots,
            period_ms,
            // An inference that straddles two periods is counted whole in the second: clamp.
            busy_ms: ((now.1 - last.1) as f64 / 1e3).min(period_ms as f64 * f64::from(slots)),
            answered: now.2 - last.2,
            refused: now.3 - last.3,
        };
        last = now;
        if let Ok(body) = serde_json::to_vec(&report) {
            let _ = client.publish(subject.clone(), body.into()).await;
        }
    }
}

#[allow(clippy::too_many_arguments)]
async fn serve<C: Classifier>(
    endpoint: async_nats::service::endpoint::Endpoint,
    service: async_nats::service::Service,
    pool: Arc<Mutex<Vec<C>>>,
    concurrency: usize,
    max_batch: usize,
    waiting_room: usize,
    per_lane: usize,
    admission: bool,
    metrics: Arc<WorkerMetrics>,
    mut stop: oneshot::Receiver<()>,
    heartbeat: tokio::task::JoinHandle<()>,
    reporter: tokio::task::JoinHandle<()>,
    client: async_nats::Client,
) -> Result<(), WorkerError> {
    let room = Arc::new(Mutex::new(WaitingRoom::new(waiting_room, per_lane)));
    let arrived = Arc::new(Notify::new());
    let (reader_stop, reader_stopped) = oneshot::channel();
    let reader = tokio::spawn(read_requests(
        endpoint,
        room.clone(),
        arrived.clone(),
        metrics.clone(),
        reader_stopped,
    ));
    let permits = Arc::new(Semaphore::new(concurrency));
    let estimate = Arc::new(Mutex::new(InferenceEstimate::new()));
    'serving: loop {
        let permit = tokio::select! {
            _ = &mut stop => break,
            p = permits.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => break },
        };
        // Chunks already waiting join the batch; none is waited for.
        let batch = loop {
            let batch = room
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .take(max_batch);
            if !batch.is_empty() {
                break batch;
            }
            tokio::select! {
                _ = &mut stop => break 'serving,
                _ = arrived.notified() => {}
            }
        };
        metrics
            .waiting
            .set(room.lock().map(|r| r.len() as i64).unwrap_or(0));
        let pool = pool.clone();
        let metrics = metrics.clone();
        let estimate = estimate.clone();
        tokio::spawn(async move {
            handle(batch, pool, &metrics, admission.then_some(&*estimate)).await;
            drop(permit);
        });
    }
    // Drain: no new chunks; those waiting are answered, those in progress finished.
    let _ = reader_stop.send(());
    if let Ok(mut endpoint) = reader.await {
        let _ = endpoint.stop().await;
    }
    let left = room.lock().map(|mut r| r.drain()).unwrap_or_default();
    for p in left {
        metrics.drop_reason("stopping");
        reply_error(&p.request, "stale").await;
    }
    let _ = permits.acquire_many(concurrency as u32).await;
    heartbeat.abort();
    reporter.abort();
    let _ = service.stop().await;
    let _ = client.drain().await;
    info!("worker stopped");
    Ok(())
}

/// Takes every request off the subscription as it comes into the waiting room; what cannot wait
/// (malformed, superseded, the room full) is answered at once. Returns the endpoint when stopped.
async fn read_requests(
    mut endpoint: async_nats::service::endpoint::Endpoint,
    room: Arc<Mutex<WaitingRoom<Pending>>>,
    arrived: Arc<Notify>,
    metrics: Arc<WorkerMetrics>,
    mut stop: oneshot::Receiver<()>,
) -> async_nats::service::endpoint::Endpoint {
    loop {
        let request = tokio::select! {
            _ = &mut stop => break,
            r = endpoint.next() => match r { Some(r) => r, None => break },
        };
        let received = Instant::now();
        metrics.received.inc();
        let meta = {
            let msg = &request.message;
            let headers = msg.headers.clone().unwrap_or_default();
            ChunkMeta::from_headers(|k| headers.get(k).map(|v| v.as_str()), msg.payload.len())
        };
        let meta = match meta {
            Ok(m) => m,
            Err(e) => {
                debug!(error = %e, "malformed chunk");
                metrics.drop_reason("malformed");
                reply_error(&request, "malformed").await;
                continue;
            }
        };
        // A lane: one participant's stream for this model (the daemon keeps one chunk of it in
        // flight, `max_in_flight` at most).
        let lane = format!(
            "{}\u{1f}{}\u{1f}{}\u{1f}{}",
            meta.room, meta.participant, meta.endpoint, meta.model
        );
        let deadline_us = meta.deadline_us;
        let refused = room.lock().unwrap_or_else(|e| e.into_inner()).admit(
            &lane,
            deadline_us,
            Pending {
                request,
                meta,
                received,
            },
        );
        match refused {
            None => arrived.notify_one(),
            Some((p, Refusal::Superseded)) => {
                metrics.drop_reason("superseded");
                reply_error(&p.request, "stale").await;
                arrived.notify_one();
            }
            Some((p, Refusal::Full)) => {
                metrics.drop_reason("busy");
                reply_error(&p.request, "busy").await;
            }
        }
    }
    endpoint
}

async fn reply_error(request: &async_nats::service::Request, kind: &str) {
    let mut h = async_nats::HeaderMap::new();
    h.insert(header::ERROR, kind);
    let _ = request.respond_with_headers(Ok(Bytes::new()), h).await;
}

/// A chunk in the waiting room: the request to answer and what its headers say.
struct Pending {
    request: async_nats::service::Request,
    meta: ChunkMeta,
    received: Instant,
}

async fn handle<C: Classifier>(
    requests: Vec<Pending>,
    pool: Arc<Mutex<Vec<C>>>,
    metrics: &WorkerMetrics,
    estimate: Option<&Mutex<InferenceEstimate>>,
) {
    let estimate_now = estimate.map(|e| *e.lock().unwrap_or_else(|e| e.into_inner()));
    let mut accepted = Vec::with_capacity(requests.len());
    for p in requests {
        if now_us() >= p.meta.deadline_us {
            metrics.drop_reason("stale");
            reply_error(&p.request, "stale").await;
        } else if estimate_now.is_some_and(|e| e.would_miss(now_us(), p.meta.deadline_us)) {
            // Answered too late to be used: the daemon gets "stale" now, the model's time goes
            // to chunks that can make it.
            if let Some(e) = estimate {
                e.lock().unwrap_or_else(|e| e.into_inner()).refused();
            }
            metrics.drop_reason("would_miss");
            reply_error(&p.request, "stale").await;
        } else {
            accepted.push(p);
        }
    }
    if accepted.is_empty() {
        return;
    }
    let inputs: Vec<(async_nats::HeaderMap, Bytes)> = accepted
        .iter()
        .map(|a| {
            (
                a.request.message.headers.clone().unwrap_or_default(),
                a.request.message.payload.clone(),
            )
        })
        .collect();
    let started = Instant::now();
    metrics.busy.inc();
    let count = inputs.len();
    let outcome = tokio::task::spawn_blocking(move || -> Result<Vec<Result<crate::Prediction, crate::ClassifierError>>, crate::ClassifierError> {
        let mut chunks = Vec::with_capacity(inputs.len());
        for (headers, payload) in &inputs {
            let get = |k: &str| headers.get(k).map(|v| v.as_str());
            chunks.push(Chunk::parse(get, payload).map_err(|e| crate::ClassifierError::Failed(e.to_string()))?);
        }
        let mut instance = pool
            .lock()
            .map_err(|_| crate::ClassifierError::Failed("model pool poisoned".into()))?
            .pop()
            .ok_or_else(|| crate::ClassifierError::Failed("no free model instance".into()))?;
        // A panicking model must not take the worker down: catch it and return the instance.
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            if chunks.len() == 1 {
                vec![instance.predict(&chunks[0])]
            } else {
                instance.predict_batch(&chunks)
            }
        }));
        if let Ok(mut p) = pool.lock() {
            p.push(instance);
        }
        result.map_err(|_| crate::ClassifierError::Failed("the model panicked".into()))
    })
    .await;
    metrics.busy.dec();
    let inference = started.elapsed();
    metrics.busy_us.inc_by(inference.as_micros() as u64);
    let results = match outcome {
        Ok(Ok(r)) if r.len() == count => r,
        Ok(Ok(_)) => vec![],
        Ok(Err(e)) => {
            warn!(error = %e, "prediction failed");
            vec![]
        }
        Err(e) => {
            warn!(error = %e, "prediction task failed");
            vec![]
        }
    };
    if results.is_empty() {
        for a in &accepted {
            metrics.drop_reason("internal");
            reply_error(&a.request, "internal").await;
        }
        return;
    }
    // A batch's inference time is shared by its chunks.
    let inference_ms = inference.as_secs_f64() * 1e3 / count as f64;
    if let Some(e) = estimate {
        e.lock()
            .unwrap_or_else(|e| e.into_inner())
            .observe((inference_ms * 1e3) as u64);
    }
    for (a, result) in accepted.into_iter().zip(results) {
        let prediction = match result {
            Ok(p) => p,
            Err(e) => {
                warn!(error = %e, "prediction failed");
                metrics.drop_reason("internal");
                reply_error(&a.request, "internal").await;
                continue;
            }
        };
        let queue_ms = (started - a.received).as_secs_f64() * 1e3;
        metrics.queue_wait.observe(queue_ms / 1e3);
        metrics.inference.observe(inference_ms / 1e3);
        let reply = WorkerReply {
            labels: prediction.labels,
            top: prediction.top,
            extras: prediction.extras,
            queue_ms,
            inference_ms,
        };
        match serde_json::to_vec(&reply) {
            Ok(body) => {
                let _ = a.request.respond(Ok(body.into())).await;
                metrics.predicted.inc();
                metrics
                    .capture_to_result
                    .observe(now_us().saturating_sub(a.meta.capture_us) as f64 / 1e6);
            }
            Err(_) => {
                metrics.drop_reason("internal");
                reply_error(&a.request, "internal").await;
            }
        }
    }
}

async fn serve_metrics(
    addr: SocketAddr,
    metrics: Arc<WorkerMetrics>,
) -> Result<(tokio::task::JoinHandle<()>, SocketAddr), WorkerError> {
    use axum::routing::get;
    let app = axum::Router::new()
        .route("/metrics", get(move || async move { metrics.encode() }))
        .route("/healthz", get(|| async { "ok\n" }));
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| WorkerError::Http(e.to_string()))?;
    let bound = listener
        .local_addr()
        .map_err(|e| WorkerError::Http(e.to_string()))?;
    let task = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Ok((task, bound))
}

#[cfg(test)]
mod tests {
    #[test]
    fn versions_become_semver() {
        assert_eq!(super::semver("1"), "1.0.0");
        assert_eq!(super::semver("2.1"), "2.1.0");
        assert_eq!(super::semver("1.2.3"), "1.2.3");
        assert_eq!(super::semver("beta"), "0.0.0");
    }
}
