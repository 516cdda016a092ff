//! The daemon: one control task owns the set of taps; discovery events, a periodic rescan, control
//! requests and KMS reconnections all come to it through channels.

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream;
use futures_util::StreamExt;
use kurento_client::prelude::*;
use kurento_client::{ConnectionState, Error as KmsError, ReconnectPolicy};
use serde::{Deserialize, Serialize};
use serde_json::json;
use tap_protocol::{CTL_ATTACH, CTL_DETACH, RESULTS_STREAM, RESULT_SUBJECTS};
use tokio::sync::{broadcast, mpsc, oneshot, watch};
use tracing::{debug, info, warn};

use crate::chunker::LiveSpecs;
use crate::discovery::{self, Examined, Participant, TagKeys};
use crate::dispatch::Dispatcher;
use crate::injector::InjectorConfig;
use crate::metrics::{Metrics, ReasonLabel};
use crate::orphans::{orphans, OwnedKind, OwnedObject, PublisherState};
use crate::ports::PortPool;
use crate::registry;
use crate::tap::{media_list, Tap, TapContext};

pub use crate::tap::TapError;

/// Longest wait for KMS to release one of our objects when stopping a tap (a dead KMS must not
/// hold up shutdown; a restart sweeps what is left).
pub(crate) const RELEASE_TIMEOUT: Duration = Duration::from_secs(5);

/// Releases one of our objects, giving up after [`RELEASE_TIMEOUT`] or as soon as KMS is
/// unreachable (then nothing can be released; the next start sweeps it).
pub(crate) async fn release_bounded(
    kms: &KurentoClient,
    id: &str,
    release: impl std::future::Future<Output = Result<(), KmsError>>,
) {
    let mut state = kms.state();
    tokio::select! {
        r = tokio::time::timeout(RELEASE_TIMEOUT, release) => match r {
            Ok(Ok(())) => {}
            Ok(Err(e)) => debug!(object = id, error = %e, "release failed"),
            Err(_) => debug!(object = id, "release timed out"),
        },
        _ = state.wait_for(|s| !s.is_connected()) => {
            debug!(object = id, "KMS unreachable: not released");
        }
    }
}

/// How long a shutdown waits for the control actor to release what is ours.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// Everything the daemon is configured with.
#[derive(Debug, Clone)]
pub struct DaemonConfig {
    /// `ws://host:8888/kurento`.
    pub kurento_url: String,
    /// `nats://host:4222`.
    pub nats_url: String,
    /// NATS credentials file (`.creds`), if any.
    pub nats_creds: Option<std::path::PathBuf>,
    /// NATS token, if any.
    pub nats_token: Option<String>,
    /// Address our receive sockets bind to and our offers announce (must be reachable from KMS).
    pub bind_ip: IpAddr,
    /// Receive port range.
    pub ports: (u16, u16),
    /// Tag keys.
    pub tags: TagKeys,
    /// This daemon's owner id, tagged on what it creates (leftovers are swept at start).
    pub owner: String,
    /// Rooms to tap (patterns with `*`); empty = all.
    pub include_rooms: Vec<String>,
    /// Rooms never tapped.
    pub exclude_rooms: Vec<String>,
    /// Participants never tapped (name patterns).
    pub exclude_participants: Vec<String>,
    /// Jitterbuffer latency.
    pub latency_ms: u32,
    /// Where `/metrics` and `/healthz` are served.
    pub http_listen: Option<SocketAddr>,
    /// Result history kept in JetStream.
    pub results_max_age: Duration,
    /// Results kept per (room, participant, model) subject.
    pub results_per_subject: i64,
    /// How often rooms are re-read (catches anything events missed).
    pub rescan_interval: Duration,
    /// Results into participants' DataChannels.
    pub datachannel: InjectorConfig,
    /// Fused states and room moods.
    pub mood: crate::mood::MoodSettings,
}

impl Default for DaemonConfig {
    fn default() -> Self {
        DaemonConfig {
            kurento_url: "ws://127.0.0.1:8888/kurento".into(),
            nats_url: "nats://127.0.0.1:4222".into(),
            nats_creds: None,
            nats_token: None,
            bind_ip: [127, 0, 0, 1].into(),
            ports: (40000, 40999),
            tags: TagKeys::default(),
            owner: "kurento-tap".into(),
            include_rooms: vec![],
            exclude_rooms: vec![],
            exclude_participants: vec![],
            latency_ms: 100,
            http_listen: Some(([127, 0, 0, 1], 9464).into()),
            results_max_age: Duration::from_secs(24 * 3600),
            results_per_subject: 1000,
            rescan_interval: Duration::from_secs(1),
            datachannel: InjectorConfig::default(),
            mood: crate::mood::MoodSettings::default(),
        }
    }
}

/// A tap's state, as reported by [`Daemon::status`].
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct TapStatus {
    /// Room.
    pub room: String,
    /// Participant.
    pub participant: String,
    /// Publisher endpoint id.
    pub endpoint: String,
    /// Our RtpEndpoint id.
    pub tap: String,
    /// Tapped media.
    pub media: Vec<String>,
    /// Video frames decoded so far.
    pub video_frames: u64,
    /// Audio buffers decoded so far.
    pub audio_buffers: u64,
}

/// An explicit attach/detach request (`tap.v1.ctl.attach` / `.detach`).
#[derive(Debug, Clone, Deserialize)]
pub struct ControlRequest {
    /// The room's pipeline id.
    pub pipeline: String,
    /// The publisher endpoint id.
    pub endpoint: String,
    /// Room name to use.
    #[serde(default)]
    pub room: Option<String>,
    /// Participant name to use.
    #[serde(default)]
    pub participant: Option<String>,
}

impl ControlRequest {
    /// Reads and checks a request body: JSON, non-empty ids, names of at most
    /// [`MAX_CONTROL_NAME`](tap_protocol::affect::MAX_CONTROL_NAME) bytes.
    pub fn parse(payload: &[u8]) -> Result<ControlRequest, String> {
        let req: ControlRequest =
            serde_json::from_slice(payload).map_err(|e| format!("bad request: {e}"))?;
        if req.pipeline.is_empty() || req.endpoint.is_empty() {
            return Err("bad request: empty pipeline or endpoint".into());
        }
        let max = tap_protocol::affect::MAX_CONTROL_NAME;
        let too_long = [Some(&req.pipeline), Some(&req.endpoint)]
            .into_iter()
            .chain([req.room.as_ref(), req.participant.as_ref()])
            .flatten()
            .any(|s| s.len() > max);
        if too_long {
            return Err(format!("bad request: a field is longer than {max} bytes"));
        }
        Ok(req)
    }
}

enum Command {
    Attach(ControlRequest, oneshot::Sender<Result<String, String>>),
    Detach(ControlRequest, oneshot::Sender<Result<String, String>>),
    Status(oneshot::Sender<Vec<TapStatus>>),
    Shutdown(oneshot::Sender<()>),
}

enum Known {
    Tapped(Box<Tap>),
    /// A setup (examine + tap) is running for it.
    Pending,
    /// It went away while its setup ran: when the setup returns, stop what it made (and release
    /// our objects when `release`: the room lives on).
    Cancelled {
        /// Release our objects (false when the whole pipeline went).
        release: bool,
    },
    /// Not a publisher, or one we do not tap (opt-out, excluded, detached by control).
    Ignored,
    /// Not negotiated or not live yet.
    Waiting,
    /// The tap failed; retry after this instant.
    Failed(Instant),
}

/// A running daemon.
pub struct Daemon {
    cmd_tx: mpsc::Sender<Command>,
    /// Its metrics.
    pub metrics: Arc<Metrics>,
    /// Its dispatcher (results stream for the DataChannel injector and tests).
    pub dispatcher: Arc<Dispatcher>,
    /// The live model specs.
    pub live_models: LiveSpecs,
    /// Ticks when the live model set changes.
    pub models_changed: watch::Receiver<u64>,
    /// The receive port pool (`in_use()` for leak checks).
    pub ports: PortPool,
    /// The HTTP address actually bound, if any.
    pub http_addr: Option<SocketAddr>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    actor: Option<tokio::task::JoinHandle<()>>,
    nats: async_nats::Client,
    kms: KurentoClient,
}

/// Connects to NATS with the configured credentials.
pub async fn connect_nats(config: &DaemonConfig) -> anyhow::Result<async_nats::Client> {
    let mut opts = async_nats::ConnectOptions::new().name("kurento-tap");
    if let Some(creds) = &config.nats_creds {
        opts = async_nats::ConnectOptions::with_credentials_file(creds.clone())
            .await?
            .name("kurento-tap");
    }
    if let Some(token) = &config.nats_token {
        opts = opts.token(token.clone());
    }
    opts.connect(config.nats_url.as_str())
        .await
        .map_err(|e| anyhow::anyhow!("cannot connect to NATS at {}: {e}", config.nats_url))
}

impl Daemon {
    /// Connects to NATS and KMS, checks the registry against the server's `max_payload`, sweeps
    /// leftover taps of this owner, and starts tapping.
    pub async fn start(config: DaemonConfig) -> anyhow::Result<Daemon> {
        let metrics = Arc::new(Metrics::new());
        let nats = connect_nats(&config).await?;
        let max_payload = nats.server_info().max_payload;
        let js = jetstream::new(nats.clone());
        js.get_or_create_stream(jetstream::stream::Config {
            name: RESULTS_STREAM.into(),
            description: Some("kurento-tap results (protocol v1)".into()),
            subjects: vec![RESULT_SUBJECTS.into()],
            max_age: config.results_max_age,
            max_messages_per_subject: config.results_per_subject,
            storage: jetstream::stream::StorageType::File,
            duplicate_window: Duration::from_secs(120),
            ..Default::default()
        })
        .await
        .map_err(|e| anyhow::anyhow!("cannot create the results stream {RESULTS_STREAM}: {e}"))?;
        let kv = registry::open_bucket(&js).await?;
        let registered = registry::snapshot(&kv).await?;
        for spec in &registered {
            if spec.validate().is_ok() {
                if let Some(reason) = registry::reject_reason(spec, max_payload) {
                    anyhow::bail!("{reason}");
                }
            }
        }
        // Models registered before the start are served from the first frame, not from the watch's
        // first pass.
        let live = registry::empty();
        registry::seed(&live, &registered, max_payload, &metrics);
        let (changed_tx, models_changed) = watch::channel(0);
        let mut tasks = vec![tokio::spawn(registry::watch(
            kv,
            live.clone(),
            changed_tx,
            max_payload,
            metrics.clone(),
        ))];

        let kms = KurentoClient::connect_with(
            kurento_client::ClientConfig::new(&config.kurento_url)
                .with_reconnect(ReconnectPolicy::default()),
        )
        .await
        .map_err(|e| anyhow::anyhow!("cannot connect to KMS at {}: {e}", config.kurento_url))?;
        let manager = kms.server_manager();
        let created = manager.on::<ObjectCreated>().await?;
        let destroyed = manager.on::<ObjectDestroyed>().await?;
        sweep_leftovers(&kms, &config).await;

        let dispatcher = Dispatcher::new(nats.clone(), metrics.clone());
        let (cmd_tx, cmd_rx) = mpsc::channel(64);
        let attach = nats
            .subscribe(CTL_ATTACH)
            .await
            .map_err(|e| anyhow::anyhow!("cannot subscribe to {CTL_ATTACH}: {e}"))?;
        let detach = nats
            .subscribe(CTL_DETACH)
            .await
            .map_err(|e| anyhow::anyhow!("cannot subscribe to {CTL_DETACH}: {e}"))?;
        tasks.push(tokio::spawn(serve_control(
            nats.clone(),
            attach,
            detach,
            cmd_tx.clone(),
            metrics.clone(),
        )));
        let config_mood_enabled = config.mood.enabled;
        let (affect, mood_events) = if config.mood.enabled {
            crate::mood::ensure_stream(&js, &config.mood).await?;
            let (affect_tx, _) = broadcast::channel(256);
            let (events_tx, events_rx) = mpsc::channel(256);
            let presenter_requests = crate::mood::subscribe_control(&nats).await?;
            tasks.push(tokio::spawn(crate::mood::run(
                config.mood.clone(),
                crate::mood::broadcast_results(dispatcher.subscribe_results(), metrics.clone()),
                crate::mood::MoodLinks {
                    live: live.clone(),
                    models_changed: models_changed.clone(),
                    events: events_rx,
                    nats: nats.clone(),
                    updates: affect_tx.clone(),
                    metrics: metrics.clone(),
                    presenter_requests,
                },
            )));
            (Some(affect_tx), Some(events_tx))
        } else {
            (None, None)
        };
        let http_addr = match config.http_listen {
            Some(addr) => {
                let (task, bound) = crate::http::serve(
                    addr,
                    metrics.clone(),
                    kms.state(),
                    nats.clone(),
                    dispatcher.clone(),
                    affect.clone(),
                    live.clone(),
                )
                .await?;
                tasks.push(task);
                Some(bound)
            }
            None => None,
        };
        let pool = PortPool::new(config.bind_ip, config.ports.0, config.ports.1);
        let config = Arc::new(config);
        let actor = Actor {
            ctx: TapContext {
                config: config.clone(),
                kms: kms.clone(),
                metrics: metrics.clone(),
                dispatcher: dispatcher.clone(),
                live: live.clone(),
                pool: pool.clone(),
                affect: affect.clone(),
            },
            config,
            kms: kms.clone(),
            metrics: metrics.clone(),
            known: HashMap::new(),
            setups: tokio::task::JoinSet::new(),
            owned_cache: HashMap::new(),
            // With the fusion elsewhere (`kurento-tap mood`), presenter tags are passed on to it.
            presenter_announce: (!config_mood_enabled).then(|| nats.clone()),
            mood_events,
        };
        let actor = tokio::spawn(actor.run(cmd_rx, created, destroyed));
        // Ready when this returns: control requests sent at once find their subscribers.
        tap_protocol::nats::confirm_with_server(&nats, Duration::from_secs(10))
            .await
            .map_err(|e| anyhow::anyhow!("NATS: {e}"))?;
        Ok(Daemon {
            cmd_tx,
            metrics,
            dispatcher,
            live_models: live,
            models_changed,
            ports: pool,
            http_addr,
            tasks,
            actor: Some(actor),
            nats,
            kms,
        })
    }

    /// The current taps.
    pub async fn status(&self) -> Vec<TapStatus> {
        let (tx, rx) = oneshot::channel();
        if self.cmd_tx.send(Command::Status(tx)).await.is_err() {
            return vec![];
        }
        rx.await.unwrap_or_default()
    }

    /// Waits until the actor ends (it ends only on shutdown).
    pub async fn wait(&mut self) {
        if let Some(a) = self.actor.as_mut() {
            let _ = a.await;
        }
    }

    /// Releases every tap this daemon made, stops receivers, drains NATS, closes KMS.
    pub async fn shutdown(mut self) {
        // The actor may be inside a KMS request that only times out (KMS gone): give it a bounded
        // grace, then stop it where it is (taps and peers stop on drop; the next start sweeps KMS).
        let graceful = async {
            let (tx, rx) = oneshot::channel();
            if self.cmd_tx.send(Command::Shutdown(tx)).await.is_ok() {
                let _ = rx.await;
            }
        };
        if tokio::time::timeout(SHUTDOWN_GRACE, graceful)
            .await
            .is_err()
        {
            warn!("shutdown: KMS did not answer in time; stopping without releasing");
        }
        if let Some(a) = self.actor.take() {
            a.abort();
            let _ = a.await;
        }
        for t in self.tasks.drain(..) {
            t.abort();
        }
        let _ = tokio::time::timeout(SHUTDOWN_GRACE, self.nats.drain()).await;
        let _ = tokio::time::timeout(Duration::from_secs(2), self.kms.close()).await;
    }
}

/// Releases RtpEndpoints this owner left behind (a crashed daemon's taps outlive it: the app's
/// session co-owns them through the pipeline).
async fn sweep_leftovers(kms: &KurentoClient, config: &DaemonConfig) {
    let Ok(pipelines) = kms.server_manager().get_pipelines().await else {
        return;
    };
    for p in pipelines {
        let Ok(children) = p.get_children().await else {
            continue;
        };
        for c in children {
            // Ours are RtpEndpoints (taps) and WebRtcEndpoints (DataChannel peers), tagged.
            let tags = if let Some(rtp) = c.downcast::<RtpEndpoint>() {
                rtp.get_tags().await
            } else if let Some(webrtc) = c.downcast::<WebRtcEndpoint>() {
                webrtc.get_tags().await
            } else {
                continue;
            };
            let Ok(tags) = tags else {
                continue;
            };
            if tags
                .iter()
                .any(|t| t.key == config.tags.owner && t.value == config.owner)
            {
                info!(
                    object = c.id(),
                    "releasing a leftover object of a previous run"
                );
                let _ = c.release().await;
            }
        }
    }
}

async fn serve_control(
    nats: async_nats::Client,
    mut attach: async_nats::Subscriber,
    mut detach: async_nats::Subscriber,
    cmd_tx: mpsc::Sender<Command>,
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
                json!({"ok": false, "error": e})
            }
            Ok(req) => {
                let (tx, rx) = oneshot::channel();
                let cmd = if is_attach {
                    Command::Attach(req, tx)
                } else {
                    Command::Detach(req, tx)
                };
                if cmd_tx.send(cmd).await.is_err() {
                    return;
                }
                match rx.await {
                    Ok(Ok(tap)) => json!({"ok": true, "tap": tap}),
                    Ok(Err(e)) => json!({"ok": false, "error": e}),
                    Err(_) => return,
                }
            }
        };
        let _ = nats.publish(reply, answer.to_string().into()).await;
    }
}

struct Actor {
    ctx: TapContext,
    config: Arc<DaemonConfig>,
    kms: KurentoClient,
    metrics: Arc<Metrics>,
    known: HashMap<String, Known>,
    /// Setups running concurrently (one per endpoint): a room's participants are tapped side by
    /// side, and the actor keeps answering events while KMS works.
    setups: tokio::task::JoinSet<(String, Setup)>,
    /// Objects already looked at by the orphan sweep: `Some(publisher)` if ours.
    owned_cache: HashMap<String, Option<(OwnedKind, Option<String>)>>,
    /// Presenters named by tag, and leaves, for the fusion (absent with it off).
    mood_events: Option<mpsc::Sender<crate::mood::MoodEvent>>,
    /// With the fusion off here: where presenter tags are announced for a fusion elsewhere.
    presenter_announce: Option<async_nats::Client>,
}

/// What a setup found and did.
enum Setup {
    Tapped(Box<Tap>),
    Ignored,
    Waiting,
    Gone,
    Failed,
}

impl Actor {
    async fn run(
        mut self,
        mut cmd_rx: mpsc::Receiver<Command>,
        mut created: kurento_client::EventStream<ObjectCreated>,
        mut destroyed: kurento_client::EventStream<ObjectDestroyed>,
    ) {
        let mut state = self.kms.state();
        let mut tick = tokio::time::interval(self.config.rescan_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                Some(ev) = destroyed.recv() => {
                    if let Ok(ev) = ev { self.on_destroyed(&ev.object_id).await; }
                }
                Some(ev) = created.recv() => {
                    // A new endpoint is looked at by the next rescan, once it is negotiated.
                    if let Ok(ev) = ev { debug!(object = %ev.object, "object created"); }
                }
                Some(done) = self.setups.join_next() => {
                    if let Ok((endpoint, outcome)) = done {
                        self.on_setup_done(endpoint, outcome).await;
                    }
                }
                _ = tick.tick() => self.rescan().await,
                Ok(()) = state.changed() => {
                    let s = state.borrow_and_update().clone();
                    self.on_connection(s).await;
                }
                cmd = cmd_rx.recv() => match cmd {
                    None => { self.stop_all().await; return; }
                    Some(Command::Shutdown(done)) => { self.stop_all().await; let _ = done.send(()); return; }
                    Some(Command::Status(reply)) => { let _ = reply.send(self.status()); }
                    Some(Command::Attach(req, reply)) => { let r = self.control_attach(req).await; let _ = reply.send(r); }
                    Some(Command::Detach(req, reply)) => {
                        let r = if self.detach(&req.endpoint, true).await {
                            self.known.insert(req.endpoint.clone(), Known::Ignored);
                            Ok("detached".to_owned())
                        } else {
                            Err(format!("{} is not tapped", req.endpoint))
                        };
                        let _ = reply.send(r);
                    }
                },
            }
            self.metrics
                .kms_decode_errors
                .set(self.kms.stats().decode_errors as i64);
        }
    }

    /// Waits for setups in flight (so nothing they create escapes release), then stops every tap.
    async fn stop_all(&mut self) {
        let release = self.kms_connected();
        while let Some(done) = self.setups.join_next().await {
            if let Ok((_, Setup::Tapped(t))) = done {
                t.stop(&self.kms, release).await;
            }
        }
        self.detach_all(release).await;
    }

    fn status(&self) -> Vec<TapStatus> {
        let mut out: Vec<TapStatus> = self
            .known
            .values()
            .filter_map(|k| match k {
                Known::Tapped(t) => Some(TapStatus {
                    room: t.participant.room.clone(),
                    participant: t.participant.name.clone(),
                    endpoint: t.participant.endpoint.clone(),
                    tap: t.tap.id().to_owned(),
                    media: media_list(&t.participant),
                    video_frames: t
                        .receiver
                        .stats
                        .video_frames
                        .load(std::sync::atomic::Ordering::Relaxed),
                    audio_buffers: t
                        .receiver
                        .stats
                        .audio_buffers
                        .load(std::sync::atomic::Ordering::Relaxed),
                }),
                _ => None,
            })
            .collect();
        out.sort_by(|a, b| (&a.room, &a.participant).cmp(&(&b.room, &b.participant)));
        out
    }

    async fn on_connection(&mut self, s: ConnectionState) {
        if let ConnectionState::Connected { recovery, .. } = s {
            match recovery {
                kurento_client::Recovery::Initial => {}
                kurento_client::Recovery::NewServer => {
                    warn!("KMS restarted: every tap is gone; rediscovering");
                    self.metrics.kms_reconnects.inc();
                    // Setups in flight talk to a server that is gone: their objects went with it.
                    for k in self.known.values_mut() {
                        if matches!(k, Known::Pending) {
                            *k = Known::Cancelled { release: false };
                        }
                    }
                    self.detach_all(false).await;
                    self.known
                        .retain(|_, k| matches!(k, Known::Cancelled { .. }));
                    self.owned_cache.clear();
                }
                r => {
                    info!(recovery = ?r, "reconnected to KMS; resynchronizing");
                    self.metrics.kms_reconnects.inc();
                }
            }
        }
    }

    async fn on_destroyed(&mut self, id: &str) {
        self.owned_cache.remove(id);
        let affected: Vec<String> = self
            .known
            .iter()
            .filter(|(ep, k)| {
                *ep == id
                    || ep.starts_with(&format!("{id}/"))
                    || matches!(k, Known::Tapped(t) if t.tap.id() == id)
            })
            .map(|(ep, _)| ep.clone())
            .collect();
        for ep in affected {
            // When the room's pipeline went, everything in it went too. When only the publisher
            // (or one of our objects) went, the room lives on: release what is ours in it.
            let pipeline_gone = ep.starts_with(&format!("{id}/"));
            self.forget(&ep, !pipeline_gone, "destroyed").await;
        }
    }

    /// A publisher is gone (event, or no longer listed): stop its tap, or cancel its setup.
    async fn forget(&mut self, endpoint: &str, release: bool, why: &'static str) {
        match self.known.get(endpoint) {
            Some(Known::Pending) => {
                self.known
                    .insert(endpoint.to_owned(), Known::Cancelled { release });
            }
            Some(Known::Cancelled { .. }) => {}
            Some(Known::Tapped(t)) => {
                info!(room = %t.participant.room, participant = %t.participant.name, why, "participant left");
                self.detach(endpoint, release).await;
            }
            _ => {
                self.known.remove(endpoint);
            }
        }
    }

    async fn on_setup_done(&mut self, endpoint: String, outcome: Setup) {
        let cancelled = match self.known.get(&endpoint) {
            Some(Known::Pending) => None,
            Some(Known::Cancelled { release }) => Some(*release),
            // Forgotten meanwhile (KMS restarted): nothing it made survives.
            _ => Some(false),
        };
        if let Some(release) = cancelled {
            self.known.remove(&endpoint);
            if let Setup::Tapped(t) = outcome {
                info!(
                    endpoint,
                    "participant left while being tapped; stopping its tap"
                );
                t.stop(&self.kms, release && self.kms_connected()).await;
            }
            return;
        }
        let k = match outcome {
            Setup::Tapped(t) => {
                info!(room = %t.participant.room, participant = %t.participant.name, tap = %t.tap.id(), media = ?media_list(&t.participant), "tapping");
                self.metrics.taps_active.inc();
                self.metrics.taps_total.inc();
                if t.participant.presenter {
                    self.tell_mood(crate::mood::MoodEvent::Presenter {
                        room: tap_protocol::safe_token(&t.participant.room),
                        participant: Some(tap_protocol::safe_token(&t.participant.name)),
                        source: room_mood::PresenterSource::Tag,
                    });
                }
                Known::Tapped(t)
            }
            Setup::Ignored => Known::Ignored,
            Setup::Waiting => Known::Waiting,
            Setup::Failed => Known::Failed(Instant::now() + Duration::from_secs(15)),
            Setup::Gone => {
                self.known.remove(&endpoint);
                return;
            }
        };
        self.known.insert(endpoint, k);
    }

    async fn rescan(&mut self) {
        if !self.kms.state().borrow().is_connected() {
            return;
        }
        let Ok(pipelines) = self.kms.server_manager().get_pipelines().await else {
            return;
        };
        let live_pipelines: HashSet<String> = pipelines.iter().map(|p| p.id().to_owned()).collect();
        // Pipelines whose children were read: only their endpoints can be judged gone.
        let mut listed = HashSet::new();
        let mut seen = HashSet::new();
        let mut owned = Vec::new();
        for pipeline in pipelines {
            // Lost KMS mid-scan: requests would queue until reconnection; look again then.
            if !self.kms_connected() {
                return;
            }
            let Ok(room) = discovery::room_name(&pipeline, &self.config.tags).await else {
                continue;
            };
            let Ok(children) = pipeline.get_children().await else {
                continue;
            };
            listed.insert(pipeline.id().to_owned());
            self.learn_owners(&children).await;
            for child in children {
                seen.insert(child.id().to_owned());
                if let Some(o) = self.owned_object(&child) {
                    owned.push(o);
                    continue;
                }
                let Some(ep) = child.downcast::<WebRtcEndpoint>() else {
                    continue;
                };
                let due = match self.known.get(ep.id()) {
                    None | Some(Known::Waiting) => true,
                    Some(Known::Failed(at)) => Instant::now() >= *at,
                    Some(_) => false,
                };
                if due {
                    self.known.insert(ep.id().to_owned(), Known::Pending);
                    let ctx = self.ctx.clone();
                    let (room, pipeline, id) = (room.clone(), pipeline.clone(), ep.id().to_owned());
                    self.metrics.setups_in_flight.inc();
                    self.setups.spawn(async move {
                        let started = Instant::now();
                        let outcome = setup(ctx.clone(), room, pipeline, ep).await;
                        ctx.metrics.setups_in_flight.dec();
                        if matches!(outcome, Setup::Tapped(_)) {
                            ctx.metrics
                                .setup_seconds
                                .observe(started.elapsed().as_secs_f64());
                        }
                        (id, outcome)
                    });
                    let running = self.setups.len() as i64;
                    if running > self.metrics.setups_peak.get() {
                        self.metrics.setups_peak.set(running);
                    }
                }
            }
        }
        // Publishers that vanished without an event we handled yet (the event may still be queued
        // behind this scan, or was lost while disconnected). The room may live on (a participant
        // left or rejoined): then our objects for it are released, not abandoned.
        let vanished: Vec<(String, bool)> = self
            .known
            .keys()
            .filter(|k| !seen.contains(*k))
            .filter_map(|k| {
                let pipeline = k.split('/').next().unwrap_or_default();
                if live_pipelines.contains(pipeline) && !listed.contains(pipeline) {
                    return None; // not read this time: no verdict
                }
                Some((k.clone(), live_pipelines.contains(pipeline)))
            })
            .collect();
        for (ep, room_lives) in vanished {
            self.forget(&ep, room_lives, "vanished").await;
        }
        self.owned_cache.retain(|id, _| seen.contains(id));
        self.release_orphans(owned).await;
        // Receiver errors since the last look.
        for k in self.known.values_mut() {
            if let Known::Tapped(t) = k {
                let errors = t
                    .receiver
                    .stats
                    .errors
                    .load(std::sync::atomic::Ordering::Relaxed);
                if errors > t.errors_seen {
                    self.metrics.decode_errors.inc_by(errors - t.errors_seen);
                    t.errors_seen = errors;
                }
                let stats = &t.receiver.stats;
                let sent = stats
                    .keyframe_requests
                    .load(std::sync::atomic::Ordering::Relaxed);
                let held = stats
                    .keyframe_requests_throttled
                    .load(std::sync::atomic::Ordering::Relaxed);
                let (seen_sent, seen_held) = t.keyframes_seen;
                self.metrics
                    .receiver_keyframe_requests
                    .inc_by(sent.saturating_sub(seen_sent));
                self.metrics
                    .receiver_keyframe_requests_throttled
                    .inc_by(held.saturating_sub(seen_held));
                t.keyframes_seen = (sent, held);
                let unusable = stats
                    .sender_clock_unusable
                    .load(std::sync::atomic::Ordering::Relaxed);
                self.metrics
                    .sender_clocks_unusable
                    .inc_by(unusable.saturating_sub(t.clocks_unusable_seen));
                t.clocks_unusable_seen = unusable;
            }
        }
    }

    /// Reads the tags of the endpoints not seen before, all at once: a busy room adds dozens of
    /// endpoints between two rescans, and one round trip each, in turn, held the control actor for
    /// over a second on a loaded machine (setups finished but not recorded, leaves seen late).
    async fn learn_owners(&mut self, children: &[MediaObject]) {
        let new: Vec<&MediaObject> = children
            .iter()
            .filter(|c| owned_kind(c.id()).is_some() && !self.owned_cache.contains_key(c.id()))
            .collect();
        let tags = futures_util::future::join_all(new.iter().map(|c| c.get_tags())).await;
        for (child, tags) in new.into_iter().zip(tags) {
            // Unreadable (being released): looked at again by the next rescan.
            let (Ok(tags), Some(kind)) = (tags, owned_kind(child.id())) else {
                continue;
            };
            let ours = tags
                .iter()
                .any(|t| t.key == self.config.tags.owner && t.value == self.config.owner);
            let serves = tags
                .iter()
                .find(|t| t.key == self.config.tags.tapped_endpoint)
                .map(|t| t.value.clone());
            self.owned_cache
                .insert(child.id().to_owned(), ours.then_some((kind, serves)));
        }
    }

    /// Our object (by owner tag) with the publisher it serves, as [`Self::learn_owners`] read it.
    fn owned_object(&self, child: &MediaObject) -> Option<OwnedObject> {
        let (kind, serves) = self.owned_cache.get(child.id())?.clone()?;
        Some(OwnedObject {
            id: child.id().to_owned(),
            kind,
            serves,
        })
    }

    async fn release_orphans(&mut self, owned: Vec<OwnedObject>) {
        let known = &self.known;
        let to_release: Vec<String> = orphans(&owned, |publisher| match known.get(publisher) {
            Some(Known::Tapped(t)) => PublisherState::Tapped { tap: t.tap.id() },
            Some(Known::Pending) | Some(Known::Cancelled { .. }) => PublisherState::SettingUp,
            _ => PublisherState::NotTapped,
        })
        .into_iter()
        .map(str::to_owned)
        .collect();
        for id in to_release {
            warn!(object = %id, "releasing an object of ours that no tap stands for");
            self.metrics.orphans_released.inc();
            release_bounded(&self.kms, &id, self.kms.release(&id)).await;
            self.owned_cache.remove(&id);
        }
    }

    async fn control_attach(&mut self, req: ControlRequest) -> Result<String, String> {
        match self.known.get(&req.endpoint) {
            Some(Known::Tapped(t)) => return Ok(t.tap.id().to_owned()),
            Some(Known::Pending) => return Err("a tap for it is being set up".into()),
            _ => {}
        }
        let pipeline: MediaPipeline = self.kms.object(&req.pipeline).map_err(|e| e.to_string())?;
        let ep: WebRtcEndpoint = self.kms.object(&req.endpoint).map_err(|e| e.to_string())?;
        let room = match &req.room {
            Some(r) => r.clone(),
            None => discovery::room_name(&pipeline, &self.config.tags)
                .await
                .map_err(|e| e.to_string())?,
        };
        let mut p = match discovery::examine(&room, &pipeline, &ep, &self.config.tags)
            .await
            .map_err(|e| e.to_string())?
        {
            Examined::Publisher(p) => p,
            Examined::NotYet(why) => return Err(format!("endpoint not ready: {why}")),
            Examined::Gone => return Err("endpoint not found".into()),
            Examined::Other => return Err("not a publisher endpoint".into()),
        };
        if !p.consent {
            return Err("participant opted out (consent=false)".into());
        }
        if let Some(name) = req.participant {
            p.name = name;
        }
        p.room = room;
        let endpoint = p.endpoint.clone();
        let outcome = attach(&self.ctx, p).await;
        let reply = match &outcome {
            Setup::Tapped(t) => Ok(t.tap.id().to_owned()),
            _ => Err("tap failed (see the daemon's log)".to_owned()),
        };
        self.known.insert(endpoint.clone(), Known::Pending);
        self.on_setup_done(endpoint, outcome).await;
        reply
    }

    /// Stops a tap; releases our objects when `release` (never anything else).
    async fn detach(&mut self, endpoint: &str, release: bool) -> bool {
        let Some(Known::Tapped(t)) = self.known.remove(endpoint) else {
            return false;
        };
        let (room, name) = (
            tap_protocol::safe_token(&t.participant.room),
            tap_protocol::safe_token(&t.participant.name),
        );
        if t.participant.presenter {
            self.tell_mood(crate::mood::MoodEvent::Presenter {
                room: room.clone(),
                participant: None,
                source: room_mood::PresenterSource::Tag,
            });
        }
        self.tell_mood(crate::mood::MoodEvent::Left {
            room,
            participant: name,
        });
        t.stop(&self.kms, release).await;
        self.metrics.taps_active.dec();
        true
    }

    /// Tells the fusion, without waiting: a full queue drops the event (the fusion forgets silent
    /// participants by itself; a presenter is named again on their next tap).
    fn tell_mood(&self, ev: crate::mood::MoodEvent) {
        if let Some(tx) = &self.mood_events {
            if tx.try_send(ev).is_err() {
                self.metrics.affect_result("event_dropped");
            }
        } else if let (
            Some(nats),
            crate::mood::MoodEvent::Presenter {
                room, participant, ..
            },
        ) = (&self.presenter_announce, ev)
        {
            let req = tap_protocol::affect::PresenterRequest {
                room,
                participant,
                source: Some("tag".into()),
            };
            let (nats, body) = (nats.clone(), serde_json::to_vec(&req).unwrap_or_default());
            tokio::spawn(async move {
                let _ = nats
                    .publish(tap_protocol::affect::CTL_PRESENTER, body.into())
                    .await;
            });
        }
    }

    /// With KMS unreachable nothing can be released (the next start sweeps what is left).
    fn kms_connected(&self) -> bool {
        self.kms.state().borrow().is_connected()
    }

    async fn detach_all(&mut self, release: bool) {
        let tapped: Vec<String> = self
            .known
            .iter()
            .filter(|(_, k)| matches!(k, Known::Tapped(_)))
            .map(|(e, _)| e.clone())
            .collect();
        for ep in tapped {
            self.detach(&ep, release).await;
        }
    }
}

/// The kinds of object the daemon creates, by id.
fn owned_kind(id: &str) -> Option<OwnedKind> {
    if id.ends_with("_kurento.WebRtcEndpoint") {
        Some(OwnedKind::DataPeer)
    } else if id.ends_with("_kurento.RtpEndpoint") {
        Some(OwnedKind::Tap)
    } else {
        None
    }
}

/// Looks at one endpoint and taps it if it is a live publisher we may tap (runs concurrently).
async fn setup(
    ctx: TapContext,
    room: String,
    pipeline: MediaPipeline,
    ep: WebRtcEndpoint,
) -> Setup {
    let examined = match discovery::examine(&room, &pipeline, &ep, &ctx.config.tags).await {
        Ok(e) => e,
        Err(e) => {
            debug!(endpoint = ep.id(), error = %e, "cannot examine endpoint");
            return Setup::Waiting;
        }
    };
    let p = match examined {
        Examined::Publisher(p) => p,
        Examined::Other => return Setup::Ignored,
        Examined::NotYet(_) => return Setup::Waiting,
        Examined::Gone => return Setup::Gone,
    };
    if let Some(reason) = not_tapped_reason(&ctx.config, &p) {
        info!(room = %p.room, participant = %p.name, reason, "not tapping");
        ctx.metrics
            .not_tapped
            .get_or_create(&ReasonLabel {
                reason: reason.into(),
            })
            .inc();
        return Setup::Ignored;
    }
    if !p.live {
        return Setup::Waiting;
    }
    attach(&ctx, p).await
}

async fn attach(ctx: &TapContext, p: Participant) -> Setup {
    match ctx.make_tap(p.clone()).await {
        Ok(tap) => Setup::Tapped(Box::new(tap)),
        Err(e) => {
            warn!(room = %p.room, participant = %p.name, error = %e, "cannot tap participant");
            ctx.metrics
                .tap_errors
                .get_or_create(&ReasonLabel {
                    reason: e.reason().into(),
                })
                .inc();
            Setup::Failed
        }
    }
}

/// Why a publisher is not tapped by configuration or consent, if it is not.
fn not_tapped_reason(config: &DaemonConfig, p: &Participant) -> Option<&'static str> {
    let room_allowed = (config.include_rooms.is_empty()
        || config
            .include_rooms
            .iter()
            .any(|pat| discovery::matches(pat, &p.room)))
        && !config
            .exclude_rooms
            .iter()
            .any(|pat| discovery::matches(pat, &p.room));
    if !p.consent {
        Some("opt_out")
    } else if !room_allowed {
        Some("room_excluded")
    } else if config
        .exclude_participants
        .iter()
        .any(|x| discovery::matches(x, &p.name))
    {
        Some("participant_excluded")
    } else {
        None
    }
}
