//! The daemon: wires what every KMS watcher shares (NATS, the model registry, the dispatcher, the
//! fusion, HTTP, leases) to one [`KmsWatcher`] per KMS, and serves control requests.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream;
use kurento_client::prelude::*;
use kurento_client::ReconnectPolicy;
use tap_protocol::{CTL_ATTACH, CTL_DETACH, RESULTS_STREAM, RESULT_SUBJECTS};
use tokio::sync::{broadcast, mpsc, oneshot, watch};
use tracing::{info, warn};

use crate::dispatch::registry;
use crate::dispatch::Dispatcher;
use crate::media::chunker::LiveSpecs;
use crate::media::ports::PortPool;
use crate::metrics::Metrics;
use crate::settings::{kms_name_from_url, DaemonConfig, KmsTarget};
use crate::tap::TapContext;
use crate::watcher::{sweep_leftovers, Command, KmsWatcher, RoomLeases, TapStatus};

pub use crate::tap::TapError;

/// How long a shutdown waits for the control actor to release what is ours.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);
/// Whether this KMS's tap legs are SRTP (and with which suite): `auto` resolves the KMS's host and
/// encrypts unless every address is this namespace's own.
async fn tap_leg_crypto(
    config: &DaemonConfig,
    target: &KmsTarget,
) -> Option<crate::media::srtp::Suite> {
    use crate::media::srtp::{local_address, wants_srtp, TapCrypto};
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
        let results_stream = jetstream::stream::Config {
            name: RESULTS_STREAM.into(),
            description: Some("kurento-tap results (protocol v1)".into()),
            subjects: vec![RESULT_SUBJECTS.into()],
            max_age: config.results_max_age,
            max_messages_per_subject: config.results_per_subject,
            storage: jetstream::stream::StorageType::File,
            duplicate_window: Duration::from_secs(120),
            ..Default::default()
        };
        // Daemons of a cluster starting together race to create the stream: the loser's create
        // fails although the stream now exists (seen once in tests/cluster.rs), and a second look
        // finds it. A few tries, then the error.
        let mut attempt = 1;
        loop {
            match js.get_or_create_stream(results_stream.clone()).await {
                Ok(_) => break,
                Err(e) if attempt < 3 => {
                    warn!(error = %e, attempt, "results stream not ready; trying again");
                    attempt += 1;
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
                Err(e) => {
                    return Err(anyhow::anyhow!(
                        "cannot create the results stream {RESULTS_STREAM}: {e}"
                    ))
                }
            }
        }
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
        tasks.push(tokio::spawn(crate::control::erase::serve(
            nats.clone(),
            crate::control::erase::subscribe(&nats).await?,
            metrics.clone(),
        )));
        metrics.set_consent_mode(config.consent);
        tasks.push(tokio::spawn(crate::control::consent::serve(
            nats.clone(),
            crate::control::consent::subscribe(&nats).await?,
            watchers.clone(),
            config.cluster.enabled,
            metrics.clone(),
        )));
        tasks.push(tokio::spawn(crate::control::requests::serve_control(
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
                let served = crate::control::http::serve(
                    crate::control::http::HttpSettings {
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
        tasks.push(tokio::spawn(crate::cluster::scaling::run(
            nats.clone(),
            live.clone(),
            metrics.clone(),
            crate::cluster::scaling::ScalingSettings {
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
        let openvidu = if config.host == crate::discovery::openvidu::Host::OpenVidu {
            let ov = crate::discovery::openvidu::client::OpenVidu::new(
                config.openvidu.clone(),
                metrics.clone(),
            )
            .map_err(|e| anyhow::anyhow!("openvidu: {e}"))?;
            info!(
                rest = %ov.state_text(),
                url = ?config.openvidu.url,
                include_screens = config.openvidu.include_screens,
                signals = config.openvidu.signals && ov.rest_configured(),
                "host: OpenVidu 2 (publishers by streamId, tapped at their PassThrough)"
            );
            tasks.push(tokio::spawn(ov.clone().run_refresh()));
            tasks.push(tokio::spawn(crate::inject::openvidu_signals::run(
                ov.clone(),
                metrics.clone(),
                dispatcher.subscribe_results(),
            )));
            Some(ov)
        } else {
            None
        };
        let pool = PortPool::new(config.bind_ip, config.ports.0, config.ports.1);
        let converters = Arc::new(crate::media::chunker::ConverterPool::default());
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
                converters: converters.clone(),
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
