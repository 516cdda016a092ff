//! The daemon: wires what every KMS watcher shares (NATS, the model registry, the dispatcher, the
//! fusion, HTTP, leases) to one [`KmsWatcher`] per KMS, and serves control requests.

use std::collections::HashSet;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream;
use futures_util::StreamExt;
use kurento_client::prelude::*;
use kurento_client::{Error as KmsError, ReconnectPolicy};
use serde::{Deserialize, Serialize};
use serde_json::json;
use tap_protocol::{CTL_ATTACH, CTL_DETACH, RESULTS_STREAM, RESULT_SUBJECTS};
use tokio::sync::{broadcast, mpsc, oneshot, watch};
use tracing::{debug, info, warn};

use crate::chunker::LiveSpecs;
use crate::discovery::TagKeys;
use crate::dispatch::Dispatcher;
use crate::injector::InjectorConfig;
use crate::metrics::Metrics;
use crate::ports::PortPool;
use crate::registry;
use crate::tap::TapContext;
use crate::watcher::{sweep_leftovers, Command, ControlRefusal, KmsWatcher, RoomLeases};

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
    /// Who is analysed: everyone but those who opted out (default), or only those who opted in
    /// ([`crate::consent`]).
    pub consent: crate::consent::ConsentMode,
    /// Jitterbuffer latency.
    pub latency_ms: u32,
    /// Where `/metrics` and `/healthz` are served (and the data endpoints, unless
    /// `data_http_listen` gives them a listener of their own).
    pub http_listen: Option<SocketAddr>,
    /// The dashboard, `/events`, `/history` and `/models` on their own listener.
    pub data_http_listen: Option<SocketAddr>,
    /// Who may read the data endpoints (a token, a trusted proxy header; nothing: loopback only).
    pub data_auth: crate::auth::DataAuth,
    /// Result history kept in JetStream.
    pub results_max_age: Duration,
    /// Results kept per (room, participant, model) subject.
    pub results_per_subject: i64,
    /// How often rooms are re-read (catches anything events missed).
    pub rescan_interval: Duration,
    /// Look at a WebRTC endpoint as soon as KMS announces it (ObjectCreated), on its own, instead
    /// of waiting for the next scan of every room (on by default; off only to measure the scan).
    pub lookup_new_endpoints: bool,
    /// Results into participants' DataChannels.
    pub datachannel: InjectorConfig,
    /// Fused states and room moods.
    pub mood: crate::mood::MoodSettings,
    /// What may leave the daemon ([`crate::policy`]; also the fusion's, whatever `mood.policy` says).
    pub policy: crate::policy::Policy,
    /// Tap leg protection (`crate::srtp`): SRTP unless KMS is in this namespace, by default.
    pub tap_crypto: crate::srtp::TapCrypto,
    /// The SRTP suite of encrypted taps.
    pub srtp_suite: crate::srtp::Suite,
    /// This KMS's name in lease keys, logs and the cluster view (default: its URL's host:port).
    pub kms_name: String,
    /// More KMS watched by this daemon, besides `kurento_url`.
    pub additional_kms: Vec<KmsTarget>,
    /// Sharing rooms with other daemons.
    pub cluster: crate::cluster::ClusterSettings,
    /// The host application: any Kurento app (default) or OpenVidu 2.x (`crate::openvidu`).
    pub host: crate::openvidu::Host,
    /// OpenVidu's REST API and signals (with `host = openvidu`).
    pub openvidu: crate::openvidu_rest::OpenViduSettings,
    /// The scaling figures' averaging window (`kurento_tap_model_*`).
    pub scaling_window: Duration,
}

/// A KMS to watch.
#[derive(Debug, Clone, PartialEq)]
pub struct KmsTarget {
    /// Its name (lease keys, status, metrics).
    pub name: String,
    /// `ws://host:8888/kurento`.
    pub url: String,
}

impl DaemonConfig {
    /// Every KMS watched: `kurento_url` first.
    pub fn targets(&self) -> Vec<KmsTarget> {
        let mut all = vec![KmsTarget {
            name: self.kms_name.clone(),
            url: self.kurento_url.clone(),
        }];
        all.extend(self.additional_kms.iter().cloned());
        all
    }
}

/// Whether this KMS's tap legs are SRTP (and with which suite): `auto` resolves the KMS's host and
/// encrypts unless every address is this namespace's own.
async fn tap_leg_crypto(config: &DaemonConfig, target: &KmsTarget) -> Option<crate::srtp::Suite> {
    use crate::srtp::{local_address, wants_srtp, TapCrypto};
    let mut addrs = Vec::new();
    if config.tap_crypto == TapCrypto::Auto {
        let authority = kms_name_from_url(&target.url);
        let with_port = if authority
            .rsplit_once(':')
            .is_some_and(|(_, p)| p.parse::<u16>().is_ok())
        {
            authority
        } else {
            format!("{authority}:8888")
        };
        if let Ok(found) = tokio::net::lookup_host(with_port.clone()).await {
            addrs.extend(found.map(|a| a.ip()));
        }
    }
    let srtp = wants_srtp(config.tap_crypto, &addrs, local_address);
    info!(
        kms = %target.name,
        mode = %config.tap_crypto,
        tap_leg = if srtp { "SRTP" } else { "plain RTP" },
        suite = %config.srtp_suite,
        "tap leg protection"
    );
    srtp.then_some(config.srtp_suite)
}

/// A KMS's default name: the host and port of its URL.
pub fn kms_name_from_url(url: &str) -> String {
    let rest = url.split_once("://").map(|(_, r)| r).unwrap_or(url);
    let authority = rest.split('/').next().unwrap_or(rest);
    if authority.is_empty() {
        "kms".into()
    } else {
        authority.to_owned()
    }
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
            consent: crate::consent::ConsentMode::default(),
            latency_ms: 100,
            http_listen: Some(([127, 0, 0, 1], 9464).into()),
            data_http_listen: None,
            data_auth: crate::auth::DataAuth::default(),
            results_max_age: Duration::from_secs(24 * 3600),
            results_per_subject: 1000,
            rescan_interval: Duration::from_secs(1),
            lookup_new_endpoints: true,
            datachannel: InjectorConfig::default(),
            mood: crate::mood::MoodSettings::default(),
            policy: crate::policy::Policy::default(),
            tap_crypto: crate::srtp::TapCrypto::default(),
            srtp_suite: crate::srtp::Suite::default(),
            kms_name: "127.0.0.1:8888".into(),
            additional_kms: vec![],
            scaling_window: crate::scaling::ScalingSettings::default().window,
            cluster: crate::cluster::ClusterSettings::default(),
            host: crate::openvidu::Host::default(),
            openvidu: crate::openvidu_rest::OpenViduSettings::default(),
        }
    }
}

/// A tap's state, as reported by [`Daemon::status`].
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct TapStatus {
    /// The KMS the room lives on (its configured name).
    pub kms: String,
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
    /// A display name from the host (OpenVidu's `clientData`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub display: Option<String>,
    /// Under `--host openvidu`: the publisher's WebRtcEndpoint (`endpoint` is its PassThrough).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub publisher: Option<String>,
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
    /// The KMS the pipeline is on (its configured name); needed only to skip asking every KMS.
    #[serde(default)]
    pub kms: Option<String>,
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
            .chain([
                req.room.as_ref(),
                req.participant.as_ref(),
                req.kms.as_ref(),
            ])
            .flatten()
            .any(|s| s.len() > max);
        if too_long {
            return Err(format!("bad request: a field is longer than {max} bytes"));
        }
        Ok(req)
    }
}

/// A running daemon.
pub struct Daemon {
    /// One command channel per KMS watcher, in the order of [`DaemonConfig::targets`].
    watchers: Vec<mpsc::Sender<Command>>,
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
    /// The HTTP address actually bound, if any (`/metrics`, `/healthz`).
    pub http_addr: Option<SocketAddr>,
    /// Where the dashboard and data endpoints answer (`http_addr` when they share it).
    pub data_http_addr: Option<SocketAddr>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    /// The lease task: ends after the actor, handing the rooms over.
    leases_task: Option<tokio::task::JoinHandle<()>>,
    actors: Vec<tokio::task::JoinHandle<()>>,
    nats: async_nats::Client,
    kms: Vec<KurentoClient>,
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

        let targets = config.targets();
        let mut names = HashSet::new();
        if let Some(dup) = targets.iter().find(|t| !names.insert(t.name.clone())) {
            anyhow::bail!("two KMS are named {:?}: give each its own name", dup.name);
        }
        let mut connections = Vec::with_capacity(targets.len());
        for target in &targets {
            let kms = KurentoClient::connect_with(
                kurento_client::ClientConfig::new(&target.url)
                    .with_reconnect(ReconnectPolicy::default()),
            )
            .await
            .map_err(|e| {
                anyhow::anyhow!(
                    "cannot connect to KMS {} at {}: {e}",
                    target.name,
                    target.url
                )
            })?;
            let manager = kms.server_manager();
            let created = manager.on::<ObjectCreated>().await?;
            let destroyed = manager.on::<ObjectDestroyed>().await?;
            sweep_leftovers(&kms, &config).await;
            connections.push((target.name.clone(), kms, created, destroyed));
        }
        let kms: Vec<KurentoClient> = connections.iter().map(|c| c.1.clone()).collect();
        let (watchers, mut command_rxs): (Vec<_>, Vec<_>) =
            connections.iter().map(|_| mpsc::channel(64)).unzip();

        let dispatcher = Dispatcher::with_policy(nats.clone(), metrics.clone(), config.policy);
        metrics.set_policy(config.policy);
        let attach = nats
            .subscribe(CTL_ATTACH)
            .await
            .map_err(|e| anyhow::anyhow!("cannot subscribe to {CTL_ATTACH}: {e}"))?;
        let detach = nats
            .subscribe(CTL_DETACH)
            .await
            .map_err(|e| anyhow::anyhow!("cannot subscribe to {CTL_DETACH}: {e}"))?;
        tasks.push(tokio::spawn(crate::erase::serve(
            nats.clone(),
            crate::erase::subscribe(&nats).await?,
            metrics.clone(),
        )));
        metrics.set_consent_mode(config.consent);
        tasks.push(tokio::spawn(crate::consent::serve(
            nats.clone(),
            crate::consent::subscribe(&nats).await?,
            watchers.clone(),
            config.cluster.enabled,
            metrics.clone(),
        )));
        tasks.push(tokio::spawn(serve_control(
            nats.clone(),
            attach,
            detach,
            watchers.clone(),
            targets.iter().map(|t| t.name.clone()).collect(),
            metrics.clone(),
        )));
        let config_mood_enabled = config.mood.enabled;
        let (affect, mood_events) = if config.mood.enabled {
            crate::mood::ensure_stream(&js, &config.mood).await?;
            let (affect_tx, _) = broadcast::channel(256);
            let (events_tx, events_rx) = mpsc::channel(256);
            let presenter_requests = crate::mood::subscribe_control(&nats).await?;
            tasks.push(tokio::spawn(crate::mood::run(
                crate::mood::MoodSettings {
                    policy: config.policy,
                    ..config.mood.clone()
                },
                crate::mood::broadcast_results(dispatcher.subscribe_fusion(), metrics.clone()),
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
        let (http_addr, data_http_addr) = match config.http_listen {
            Some(addr) => {
                let served = crate::http::serve(
                    crate::http::HttpSettings {
                        probes: addr,
                        data: config.data_http_listen,
                        auth: config.data_auth.clone(),
                    },
                    metrics.clone(),
                    connections
                        .iter()
                        .map(|c| (c.0.clone(), c.1.state()))
                        .collect(),
                    nats.clone(),
                    dispatcher.clone(),
                    affect.clone(),
                    live.clone(),
                )
                .await?;
                tasks.extend(served.tasks);
                (Some(served.probes), Some(served.data))
            }
            None => (None, None),
        };
        tasks.push(tokio::spawn(crate::scaling::run(
            nats.clone(),
            live.clone(),
            metrics.clone(),
            crate::scaling::ScalingSettings {
                window: config.scaling_window,
                ..Default::default()
            },
        )));
        let mut leases_task = None;
        let leases = if config.cluster.enabled {
            config
                .cluster
                .lease
                .validate()
                .map_err(|e| anyhow::anyhow!("cluster: {e}"))?;
            let kv = tap_protocol::nats::open_leases(&js, config.cluster.lease.ttl)
                .await
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            // The bucket's age limit is the one the server applies: trust leases by it.
            let mut lease = config.cluster.lease;
            if let Ok(status) = kv.status().await {
                let ttl = status.info.config.max_age;
                if !ttl.is_zero() && ttl != lease.ttl {
                    warn!(
                        bucket_ttl_ms = ttl.as_millis() as u64,
                        configured_ms = lease.ttl.as_millis() as u64,
                        "the lease bucket exists with another ttl; using the bucket's"
                    );
                    lease.ttl = ttl;
                    lease.margin = lease.margin.min(ttl / 3);
                    lease.renew_every = lease.renew_every.min(ttl / 4);
                }
            }
            let names: Vec<String> = targets.iter().map(|t| t.name.clone()).collect();
            let (links, lease_task) = crate::cluster::start(
                kv,
                config.owner.clone(),
                lease,
                http_addr.map(|a| a.to_string()),
                names.clone(),
                metrics.clone(),
            );
            leases_task = Some(lease_task);
            info!(daemon = %config.owner, kms = ?names, "cluster mode: tapping the rooms this daemon leases");
            links
                .into_iter()
                .zip(names)
                .map(|(link, kms)| {
                    Some(RoomLeases {
                        kms,
                        link,
                        swept: HashSet::new(),
                    })
                })
                .collect()
        } else {
            targets.iter().map(|_| None).collect::<Vec<_>>()
        };
        let openvidu = if config.host == crate::openvidu::Host::OpenVidu {
            let ov = crate::openvidu_rest::OpenVidu::new(config.openvidu.clone(), metrics.clone())
                .map_err(|e| anyhow::anyhow!("openvidu: {e}"))?;
            info!(
                rest = %ov.state_text(),
                url = ?config.openvidu.url,
                include_screens = config.openvidu.include_screens,
                signals = config.openvidu.signals && ov.rest_configured(),
                "host: OpenVidu 2 (publishers by streamId, tapped at their PassThrough)"
            );
            tasks.push(tokio::spawn(ov.clone().run_refresh()));
            tasks.push(tokio::spawn(
                ov.clone().run_signals(dispatcher.subscribe_results()),
            ));
            Some(ov)
        } else {
            None
        };
        let pool = PortPool::new(config.bind_ip, config.ports.0, config.ports.1);
        let config = Arc::new(config);
        let mut actors = Vec::new();
        let mut crypto = Vec::new();
        for t in &targets {
            crypto.push(tap_leg_crypto(&config, t).await);
        }
        for (((name, kms, created, destroyed), leases), srtp) in
            connections.into_iter().zip(leases).zip(crypto)
        {
            let cmd_rx = command_rxs.remove(0);
            let ctx = TapContext {
                config: config.clone(),
                kms,
                kms_name: name.clone(),
                metrics: metrics.clone(),
                dispatcher: dispatcher.clone(),
                live: live.clone(),
                pool: pool.clone(),
                affect: affect.clone(),
                srtp,
                openvidu: openvidu.clone(),
            };
            // With the fusion elsewhere (`kurento-tap mood`), presenter tags are passed on to it.
            let announce = (!config_mood_enabled).then(|| nats.clone());
            let watcher = KmsWatcher::new(ctx, name, leases, mood_events.clone(), announce);
            actors.push(tokio::spawn(watcher.run(cmd_rx, created, destroyed)));
        }
        // Ready when this returns: control requests sent at once find their subscribers.
        tap_protocol::nats::confirm_with_server(&nats, Duration::from_secs(10))
            .await
            .map_err(|e| anyhow::anyhow!("NATS: {e}"))?;
        Ok(Daemon {
            watchers,
            metrics,
            dispatcher,
            live_models: live,
            models_changed,
            ports: pool,
            http_addr,
            data_http_addr,
            tasks,
            leases_task,
            actors,
            nats,
            kms,
        })
    }

    /// The current taps, on every KMS.
    pub async fn status(&self) -> Vec<TapStatus> {
        let mut all = Vec::new();
        for w in &self.watchers {
            let (tx, rx) = oneshot::channel();
            if w.send(Command::Status(tx)).await.is_ok() {
                all.extend(rx.await.unwrap_or_default());
            }
        }
        all.sort_by(|a, b| {
            (&a.kms, &a.room, &a.participant).cmp(&(&b.kms, &b.room, &b.participant))
        });
        all
    }

    /// Waits until the watchers end (they end only on shutdown).
    pub async fn wait(&mut self) {
        for a in self.actors.iter_mut() {
            let _ = a.await;
        }
    }

    /// Releases every tap this daemon made, stops receivers, drains NATS, closes KMS.
    pub async fn shutdown(mut self) {
        // The actor may be inside a KMS request that only times out (KMS gone): give it a bounded
        // grace, then stop it where it is (taps and peers stop on drop; the next start sweeps KMS).
        let graceful = futures_util::future::join_all(self.watchers.iter().map(|w| async move {
            let (tx, rx) = oneshot::channel();
            if w.send(Command::Shutdown(tx)).await.is_ok() {
                let _ = rx.await;
            }
        }));
        if tokio::time::timeout(SHUTDOWN_GRACE, graceful)
            .await
            .is_err()
        {
            warn!("shutdown: KMS did not answer in time; stopping without releasing");
        }
        for a in self.actors.drain(..) {
            a.abort();
            let _ = a.await;
        }
        // The watchers (and with them the lease links) are gone: the lease task releases the rooms.
        if let Some(t) = self.leases_task.take() {
            if tokio::time::timeout(Duration::from_secs(3), t)
                .await
                .is_err()
            {
                warn!(
                    "shutdown: the room leases were not released in time; they expire on their own"
                );
            }
        }
        for t in self.tasks.drain(..) {
            t.abort();
        }
        let _ = tokio::time::timeout(SHUTDOWN_GRACE, self.nats.drain()).await;
        for kms in &self.kms {
            let _ = tokio::time::timeout(Duration::from_secs(2), kms.close()).await;
        }
    }
}

/// Serves attach/detach requests: the request's `kms` names the watcher; without it, each watcher
/// is asked in turn until one has the pipeline.
async fn serve_control(
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
