//! The daemon: one control task owns the set of taps; discovery events, a periodic rescan, control
//! requests and KMS reconnections all come to it through channels.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream;
use futures_util::StreamExt;
use kurento_client::prelude::*;
use kurento_client::{ConnectionState, Error as KmsError, ReconnectPolicy};
use serde::{Deserialize, Serialize};
use serde_json::json;
use tap_protocol::{safe_token, CTL_ATTACH, CTL_DETACH, RESULTS_STREAM, RESULT_SUBJECTS};
use tokio::sync::{mpsc, oneshot, watch};
use tracing::{debug, info, warn};

use crate::chunker::{Chunker, LiveSpecs};
use crate::discovery::{self, Examined, Participant, TagKeys};
use crate::dispatch::{Dispatcher, TapDispatch, TapIdent, TapSink};
use crate::injector::{Injector, InjectorConfig, InjectorContext};
use crate::metrics::{MediaLabel, Metrics, ReasonLabel};
use crate::ports::{PortPair, PortPool};
use crate::receiver::{
    DecodedAudio, DecodedFrame, MediaPorts, MediaSink, Receiver, ReceiverConfig,
};
use crate::registry;
use crate::sdp_offer::{check_answer, tap_offer, OPUS_PT, VIDEO_PT};

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

enum Command {
    Attach(ControlRequest, oneshot::Sender<Result<String, String>>),
    Detach(ControlRequest, oneshot::Sender<Result<String, String>>),
    Status(oneshot::Sender<Vec<TapStatus>>),
    Shutdown(oneshot::Sender<()>),
}

/// Why a tap could not be made.
#[derive(Debug, thiserror::Error)]
pub enum TapError {
    /// The port range is exhausted.
    #[error("no free receive ports in the configured range")]
    NoPorts,
    /// GStreamer.
    #[error(transparent)]
    Receiver(#[from] crate::receiver::ReceiverError),
    /// KMS refused something.
    #[error("KMS: {0}")]
    Kms(#[from] KmsError),
    /// KMS's answer is unusable.
    #[error(transparent)]
    Sdp(#[from] crate::sdp_offer::SdpError),
}

impl TapError {
    fn reason(&self) -> &'static str {
        match self {
            TapError::NoPorts => "no_ports",
            TapError::Receiver(_) => "receiver",
            TapError::Kms(_) => "kms",
            TapError::Sdp(_) => "sdp",
        }
    }
}

/// Counts decoded media, then hands it to the chunker.
struct CountingSink {
    chunker: Chunker,
    metrics: Arc<Metrics>,
}

impl MediaSink for CountingSink {
    fn video(&self, frame: DecodedFrame) {
        self.metrics
            .decoded
            .get_or_create(&MediaLabel {
                media: "video".into(),
            })
            .inc();
        self.chunker.video(frame);
    }
    fn audio(&self, audio: DecodedAudio<'_>) {
        self.metrics
            .decoded
            .get_or_create(&MediaLabel {
                media: "audio".into(),
            })
            .inc();
        self.chunker.audio(audio);
    }
}

struct Tap {
    participant: Participant,
    tap: RtpEndpoint,
    receiver: Receiver,
    dispatch: Arc<TapDispatch>,
    _ports: Vec<PortPair>,
    watcher: tokio::task::JoinHandle<()>,
    errors_seen: u64,
    injector: Option<Injector>,
}

enum Known {
    Tapped(Box<Tap>),
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
        for spec in registry::snapshot(&kv).await? {
            if spec.validate().is_ok() {
                if let Some(reason) = registry::reject_reason(&spec, max_payload) {
                    anyhow::bail!("{reason}");
                }
            }
        }
        let live = registry::empty();
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
        tasks.push(tokio::spawn(serve_control(
            nats.clone(),
            cmd_tx.clone(),
            metrics.clone(),
        )));
        let http_addr = match config.http_listen {
            Some(addr) => {
                let (task, bound) = crate::http::serve(
                    addr,
                    metrics.clone(),
                    kms.state(),
                    nats.clone(),
                    dispatcher.clone(),
                )
                .await?;
                tasks.push(task);
                Some(bound)
            }
            None => None,
        };
        let pool = PortPool::new(config.bind_ip, config.ports.0, config.ports.1);
        let actor = Actor {
            config,
            kms: kms.clone(),
            metrics: metrics.clone(),
            dispatcher: dispatcher.clone(),
            live: live.clone(),
            pool: pool.clone(),
            known: HashMap::new(),
        };
        let actor = tokio::spawn(actor.run(cmd_rx, created, destroyed));
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
    cmd_tx: mpsc::Sender<Command>,
    metrics: Arc<Metrics>,
) {
    let (Ok(mut attach), Ok(mut detach)) = (
        nats.subscribe(CTL_ATTACH).await,
        nats.subscribe(CTL_DETACH).await,
    ) else {
        warn!("cannot subscribe to the control subjects");
        return;
    };
    loop {
        let (msg, is_attach) = tokio::select! {
            Some(m) = attach.next() => (m, true),
            Some(m) = detach.next() => (m, false),
            else => return,
        };
        let Some(reply) = msg.reply.clone() else {
            continue;
        };
        let answer = match serde_json::from_slice::<ControlRequest>(&msg.payload) {
            Err(e) => {
                metrics.bad_control_requests.inc();
                json!({"ok": false, "error": format!("bad request: {e}")})
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
    config: DaemonConfig,
    kms: KurentoClient,
    metrics: Arc<Metrics>,
    dispatcher: Arc<Dispatcher>,
    live: LiveSpecs,
    pool: PortPool,
    known: HashMap<String, Known>,
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
                _ = tick.tick() => self.rescan().await,
                Ok(()) = state.changed() => {
                    let s = state.borrow_and_update().clone();
                    self.on_connection(s).await;
                }
                cmd = cmd_rx.recv() => match cmd {
                    None => { self.detach_all(self.kms_connected()).await; return; }
                    Some(Command::Shutdown(done)) => { self.detach_all(self.kms_connected()).await; let _ = done.send(()); return; }
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
                    self.detach_all(false).await;
                    self.known.clear();
                }
                r => {
                    info!(recovery = ?r, "reconnected to KMS; resynchronizing");
                    self.metrics.kms_reconnects.inc();
                }
            }
        }
    }

    async fn on_destroyed(&mut self, id: &str) {
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
            self.detach(&ep, !pipeline_gone).await;
            self.known.remove(&ep);
        }
    }

    fn room_allowed(&self, room: &str) -> bool {
        let included = self.config.include_rooms.is_empty()
            || self
                .config
                .include_rooms
                .iter()
                .any(|p| discovery::matches(p, room));
        included
            && !self
                .config
                .exclude_rooms
                .iter()
                .any(|p| discovery::matches(p, room))
    }

    async fn rescan(&mut self) {
        if !self.kms.state().borrow().is_connected() {
            return;
        }
        let Ok(pipelines) = self.kms.server_manager().get_pipelines().await else {
            return;
        };
        let mut seen = std::collections::HashSet::new();
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
            for child in children {
                let Some(ep) = child.downcast::<WebRtcEndpoint>() else {
                    continue;
                };
                seen.insert(ep.id().to_owned());
                let due = match self.known.get(ep.id()) {
                    None | Some(Known::Waiting) => true,
                    Some(Known::Failed(at)) => Instant::now() >= *at,
                    Some(_) => false,
                };
                if due {
                    self.consider(&room, &pipeline, &ep).await;
                }
            }
        }
        // Endpoints that vanished without an event we saw (e.g. while disconnected).
        let vanished: Vec<String> = self
            .known
            .keys()
            .filter(|k| !seen.contains(*k))
            .cloned()
            .collect();
        for ep in vanished {
            self.detach(&ep, false).await;
            self.known.remove(&ep);
        }
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
            }
        }
    }

    async fn consider(&mut self, room: &str, pipeline: &MediaPipeline, ep: &WebRtcEndpoint) {
        let examined = match discovery::examine(room, pipeline, ep, &self.config.tags).await {
            Ok(e) => e,
            Err(e) => {
                debug!(endpoint = ep.id(), error = %e, "cannot examine endpoint");
                return;
            }
        };
        let p = match examined {
            Examined::Publisher(p) => p,
            Examined::Other => {
                self.known.insert(ep.id().to_owned(), Known::Ignored);
                return;
            }
            Examined::NotYet(_) => {
                self.known.insert(ep.id().to_owned(), Known::Waiting);
                return;
            }
            Examined::Gone => {
                self.known.remove(ep.id());
                return;
            }
        };
        let ignore = if !p.consent {
            Some("opt_out")
        } else if !self.room_allowed(&p.room) {
            Some("room_excluded")
        } else if self
            .config
            .exclude_participants
            .iter()
            .any(|x| discovery::matches(x, &p.name))
        {
            Some("participant_excluded")
        } else {
            None
        };
        if let Some(reason) = ignore {
            info!(room = %p.room, participant = %p.name, reason, "not tapping");
            self.metrics
                .not_tapped
                .get_or_create(&ReasonLabel {
                    reason: reason.into(),
                })
                .inc();
            self.known.insert(p.endpoint.clone(), Known::Ignored);
            return;
        }
        if !p.live {
            self.known.insert(p.endpoint.clone(), Known::Waiting);
            return;
        }
        self.attach(p).await;
    }

    async fn attach(&mut self, p: Participant) -> Option<String> {
        let endpoint = p.endpoint.clone();
        match self.make_tap(p.clone()).await {
            Ok(tap) => {
                let id = tap.tap.id().to_owned();
                info!(room = %p.room, participant = %p.name, tap = %id, media = ?media_list(&p), "tapping");
                self.metrics.taps_active.inc();
                self.metrics.taps_total.inc();
                self.known.insert(endpoint, Known::Tapped(Box::new(tap)));
                Some(id)
            }
            Err(e) => {
                warn!(room = %p.room, participant = %p.name, error = %e, "cannot tap participant");
                self.metrics
                    .tap_errors
                    .get_or_create(&ReasonLabel {
                        reason: e.reason().into(),
                    })
                    .inc();
                self.known.insert(
                    endpoint,
                    Known::Failed(Instant::now() + Duration::from_secs(15)),
                );
                None
            }
        }
    }

    async fn control_attach(&mut self, req: ControlRequest) -> Result<String, String> {
        if let Some(Known::Tapped(t)) = self.known.get(&req.endpoint) {
            return Ok(t.tap.id().to_owned());
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
        self.attach(p)
            .await
            .ok_or_else(|| "tap failed (see the daemon's log)".to_owned())
    }

    async fn make_tap(&mut self, p: Participant) -> Result<Tap, TapError> {
        let pool = self.pool.clone();
        let audio_ports = if p.media.audio {
            Some(pool.take().ok_or(TapError::NoPorts)?)
        } else {
            None
        };
        let video_ports = if p.media.video.is_some() {
            Some(pool.take().ok_or(TapError::NoPorts)?)
        } else {
            None
        };
        let codec = p.media.video.clone();
        let ident = TapIdent {
            room: safe_token(&p.room),
            participant: safe_token(&p.name),
            endpoint: p.endpoint.clone(),
            instance: uuid::Uuid::new_v4().simple().to_string(),
        };
        let dispatch = TapDispatch::new(ident, self.dispatcher.clone());
        let sink = Arc::new(CountingSink {
            chunker: Chunker::new(self.live.clone(), Arc::new(TapSink(dispatch.clone()))),
            metrics: self.metrics.clone(),
        });
        // The receiver listens before KMS is told to connect: the first keyframe must not be lost.
        let receiver = Receiver::start(
            &ReceiverConfig {
                bind_ip: self.config.bind_ip,
                audio: audio_ports.as_ref().map(|a| MediaPorts {
                    rtp_port: a.rtp,
                    payload_type: OPUS_PT,
                }),
                video: match (&video_ports, &codec) {
                    (Some(v), Some(c)) => Some((
                        MediaPorts {
                            rtp_port: v.rtp,
                            payload_type: VIDEO_PT,
                        },
                        c.clone(),
                    )),
                    _ => None,
                },
                latency_ms: self.config.latency_ms,
            },
            sink,
        )?;
        let offer = tap_offer(
            self.config.bind_ip,
            audio_ports.as_ref().map(|a| a.rtp),
            video_ports
                .as_ref()
                .zip(codec.as_ref())
                .map(|(v, c)| (v.rtp, c)),
        );
        let pipeline: MediaPipeline = self.kms.object(&p.pipeline)?;
        let publisher: WebRtcEndpoint = self.kms.object(&p.endpoint)?;
        let mut tx = self.kms.transaction();
        let tap_ref = tx.create(RtpEndpoint::builder(&pipeline))?;
        tx.invoke(
            &tap_ref,
            "addTag",
            json!({"key": self.config.tags.owner, "value": self.config.owner}),
        );
        tx.invoke(
            &tap_ref,
            "addTag",
            json!({"key": self.config.tags.tapped_endpoint, "value": p.endpoint}),
        );
        let offer_index = tx.invoke(&tap_ref, "processOffer", json!({ "offer": offer }));
        if audio_ports.is_some() {
            tx.invoke(
                &publisher,
                "connect",
                json!({"sink": tap_ref.newref(), "mediaType": "AUDIO"}),
            );
        }
        if video_ports.is_some() {
            tx.invoke(
                &publisher,
                "connect",
                json!({"sink": tap_ref.newref(), "mediaType": "VIDEO"}),
            );
        }
        let results = tx.commit().await?;
        // From here on, a failure must release the endpoint we created, and nothing else.
        let created = results.object(&tap_ref).ok();
        let outcome = (|| -> Result<crate::sdp_offer::AnswerPorts, TapError> {
            results.check()?;
            let answer = results
                .value(offer_index)?
                .as_str()
                .unwrap_or_default()
                .to_owned();
            Ok(check_answer(
                &answer,
                audio_ports.is_some(),
                video_ports.is_some(),
            )?)
        })();
        let answer = match outcome {
            Ok(a) => a,
            Err(e) => {
                if let Some(t) = created {
                    let _ = t.release().await;
                }
                return Err(e);
            }
        };
        let Some(tap) = created else {
            return Err(TapError::Kms(KmsError::UnexpectedResponse {
                operation: "create".into(),
                reason: "no tap id".into(),
            }));
        };
        if let Some(a) = answer.audio_rtcp {
            receiver.set_kms_rtcp(false, a);
        }
        if let Some(v) = answer.video_rtcp {
            receiver.set_kms_rtcp(true, v);
            // Best effort (7.x; 40111 when nothing flows yet). The receiver also sends PLI itself.
            let _ = tap.request_keyframe().await;
        }
        let watcher = tokio::spawn(watch_publisher(
            publisher,
            tap.clone(),
            self.metrics.clone(),
            receiver.stats.clone(),
            receiver.keyframe_requester(),
        ));
        let mut ports = Vec::new();
        ports.extend(audio_ports);
        ports.extend(video_ports);
        let injector = self.config.datachannel.enabled.then(|| {
            Injector::start(
                InjectorContext {
                    kms: self.kms.clone(),
                    config: self.config.datachannel.clone(),
                    tags: self.config.tags.clone(),
                    owner: self.config.owner.clone(),
                    metrics: self.metrics.clone(),
                },
                p.clone(),
                self.dispatcher.subscribe_results(),
            )
        });
        Ok(Tap {
            participant: p,
            tap,
            receiver,
            dispatch,
            _ports: ports,
            watcher,
            errors_seen: 0,
            injector,
        })
    }

    /// Stops a tap; releases our RtpEndpoint when `release` (never anything else).
    async fn detach(&mut self, endpoint: &str, release: bool) -> bool {
        let Some(Known::Tapped(mut t)) = self.known.remove(endpoint) else {
            return false;
        };
        t.watcher.abort();
        t.dispatch.close();
        if let Some(injector) = t.injector.take() {
            injector.stop(release).await;
        }
        if release {
            release_bounded(&self.kms, t.tap.id(), t.tap.release()).await;
        }
        drop(t);
        self.metrics.taps_active.dec();
        true
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

fn media_list(p: &Participant) -> Vec<String> {
    let mut m = Vec::new();
    if p.media.audio {
        m.push("audio".to_owned());
    }
    if let Some(v) = &p.media.video {
        m.push(format!("video:{}", v.encoding));
    }
    m
}

/// Per tap: warns when KMS starts transcoding for the publisher (our offer should prevent it), and
/// asks for a keyframe if no frame decodes in the first seconds.
async fn watch_publisher(
    publisher: WebRtcEndpoint,
    tap: RtpEndpoint,
    metrics: Arc<Metrics>,
    stats: Arc<crate::receiver::ReceiverStats>,
    pli: crate::receiver::KeyframeRequester,
) {
    let transcoding = publisher.on::<MediaTranscodingStateChanged>().await.ok();
    let keyframe_check = async {
        for _ in 0..5 {
            tokio::time::sleep(Duration::from_secs(1)).await;
            if stats
                .video_frames
                .load(std::sync::atomic::Ordering::Relaxed)
                > 0
            {
                return;
            }
            // RTCP PLI from our receiver (forwarded by KMS to the browser), and on 7.x the API call.
            if pli.request() {
                metrics.keyframe_requests.inc();
            }
            let _ = tap.request_keyframe().await;
        }
    };
    let watch_transcoding = async {
        let Some(mut events) = transcoding else {
            return std::future::pending().await;
        };
        while let Some(Ok(ev)) = events.recv().await {
            if ev.state == MediaTranscodingState::Transcoding {
                metrics.transcoding.inc();
                warn!(publisher = publisher.id(), media = ?ev.media_type, "KMS is transcoding for a tapped publisher");
            }
        }
    };
    tokio::join!(keyframe_check, watch_transcoding);
}
