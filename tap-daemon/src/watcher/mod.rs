//! One KMS's watcher: a control task owns the set of taps on that KMS; discovery events, a periodic
//! rescan, control requests, lease changes and KMS reconnections all come to it through channels.
//! The daemon runs one per KMS it watches and wires them to what they share.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use kurento_client::prelude::*;
use kurento_client::{ConnectionState, KurentoClient};
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

pub mod command;

pub(crate) use command::{Command, ConsentAnswer, ControlAnswer, ControlRefusal};
pub use command::{ControlRequest, TapStatus};

use crate::discovery::{self, Examined, Participant};
use crate::kms::orphans::{orphans, OwnedKind, OwnedObject, PublisherState};
use crate::kms::release::release_bounded;
use crate::metrics::{Metrics, ReasonLabel};
use crate::settings::DaemonConfig;
use crate::tap::{media_list, Tap, TapContext};

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
    /// Not a publisher, or one we do not tap (excluded, detached by control).
    Ignored,
    /// A publisher not analysed for want of consent (opted out, or not opted in under `opt-in`):
    /// examined again on every scan (its tags re-read), and at once on a consent request.
    NoConsent(Box<Participant>),
    /// Not negotiated or not live yet.
    Waiting,
    /// The tap failed; retry after this instant.
    Failed(Instant),
    /// Under `--host openvidu`: a publisher WebRtcEndpoint whose tap is kept under its
    /// PassThrough's id (here), so that a reconnect (a new WebRtcEndpoint on the same
    /// PassThrough) keeps the tap.
    Via(String),
}

/// Releases RtpEndpoints this owner left behind (a crashed daemon's taps outlive it: the app's
/// session co-owns them through the pipeline).
pub(crate) async fn sweep_leftovers(kms: &KurentoClient, config: &DaemonConfig) {
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

/// The watcher of one KMS.
pub(crate) struct KmsWatcher {
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
    /// In cluster mode: the rooms this daemon may tap.
    leases: Option<RoomLeases>,
    /// This KMS's name (status, lease keys).
    kms_name: String,
    /// When each publisher endpoint not yet tapped was created (its ObjectCreated event) or first
    /// seen by a scan: `time_to_tap_seconds` and `time_to_first_chunk_seconds` count from here.
    first_seen: HashMap<String, Instant>,
    /// Endpoints announced by ObjectCreated, looked at on their own, soon and with backoff, until
    /// tapped or given up (the periodic scan still finds them): a new participant does not wait
    /// for the next scan of every room, nor behind it.
    fresh: HashMap<String, Fresh>,
    /// Consent given or withdrawn by control request, shared with the setups.
    control_consent: crate::privacy::consent::ControlDecisions,
    /// Whether each publisher examined was last decided analysed (consent), to log changes only.
    consent_seen: HashMap<String, bool>,
    /// The keys of the running taps, shared with the setups: under `--host openvidu` a setup
    /// that finds a PassThrough already tapped (a publisher reconnected) adopts that tap.
    tapped: Arc<std::sync::Mutex<HashSet<String>>>,
}

/// An endpoint announced by ObjectCreated and not yet tapped: when to look at it next.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Fresh {
    pub(crate) pipeline: String,
    pub(crate) next: Instant,
    pub(crate) delay: Duration,
}

/// The first look at a fresh endpoint (it is rarely negotiated at creation), the longest pause
/// between looks, and how long after creation the fast path gives up (the scan goes on).
const FRESH_FIRST: Duration = Duration::from_millis(50);
const FRESH_MAX_DELAY: Duration = Duration::from_millis(800);
const FRESH_GIVE_UP: Duration = Duration::from_secs(15);

/// A WebRTC endpoint's id as KMS writes it (`<pipeline id>/<uuid>_kurento.WebRtcEndpoint`): the
/// pipeline's id, or None for any other object.
pub(crate) fn webrtc_endpoint_pipeline(object: &str) -> Option<&str> {
    let (pipeline, own) = object.split_once('/')?;
    (own.ends_with("_kurento.WebRtcEndpoint") && !pipeline.is_empty()).then_some(pipeline)
}

impl Fresh {
    /// A new endpoint of `pipeline`, first looked at `FRESH_FIRST` after `now`.
    pub(crate) fn new(pipeline: &str, now: Instant) -> Self {
        Fresh {
            pipeline: pipeline.to_owned(),
            next: now + FRESH_FIRST,
            delay: FRESH_FIRST,
        }
    }

    /// Not ready yet at `now`: the next look, backing off (x2 up to `FRESH_MAX_DELAY`), or None
    /// when the endpoint was created more than `FRESH_GIVE_UP` ago.
    pub(crate) fn again(&self, now: Instant, created: Instant) -> Option<Self> {
        if now.duration_since(created) >= FRESH_GIVE_UP {
            return None;
        }
        let delay = (self.delay * 2).min(FRESH_MAX_DELAY);
        Some(Fresh {
            pipeline: self.pipeline.clone(),
            next: now + delay,
            delay,
        })
    }
}

/// The watcher's view of the room leases.
pub(crate) struct RoomLeases {
    /// This KMS's name in lease keys.
    pub(crate) kms: String,
    pub(crate) link: crate::cluster::LeaseLink,
    /// Held rooms already swept of a previous holder's objects.
    pub(crate) swept: HashSet<String>,
}

/// What a setup found and did.
enum Setup {
    Tapped(Box<Tap>),
    /// A new publisher WebRtcEndpoint feeding a PassThrough already tapped (OpenVidu's publisher
    /// reconnect): the tap goes on.
    Adopt(Box<Participant>),
    Ignored,
    NoConsent(Box<Participant>),
    Waiting,
    Gone,
    Failed,
}

impl KmsWatcher {
    /// A watcher for the KMS of `ctx`.
    pub(crate) fn new(
        ctx: TapContext,
        kms_name: String,
        leases: Option<RoomLeases>,
        mood_events: Option<mpsc::Sender<crate::mood::MoodEvent>>,
        presenter_announce: Option<async_nats::Client>,
    ) -> Self {
        KmsWatcher {
            config: ctx.config.clone(),
            kms: ctx.kms.clone(),
            metrics: ctx.metrics.clone(),
            ctx,
            known: HashMap::new(),
            setups: tokio::task::JoinSet::new(),
            owned_cache: HashMap::new(),
            mood_events,
            presenter_announce,
            leases,
            kms_name,
            first_seen: HashMap::new(),
            fresh: HashMap::new(),
            control_consent: Default::default(),
            consent_seen: HashMap::new(),
            tapped: Default::default(),
        }
    }

    pub(crate) async fn run(
        mut self,
        mut cmd_rx: mpsc::Receiver<Command>,
        mut created: kurento_client::EventStream<ObjectCreated>,
        mut destroyed: kurento_client::EventStream<ObjectDestroyed>,
    ) {
        let mut state = self.kms.state();
        let mut tick = tokio::time::interval(self.config.rescan_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut leases_valid = self.leases.as_ref().map(|l| l.link.valid.clone());
        let mut fresh_tick = tokio::time::interval(Duration::from_millis(50));
        fresh_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                Ok(()) = async {
                    match leases_valid.as_mut() {
                        Some(v) => v.changed().await,
                        None => std::future::pending().await,
                    }
                } => self.on_leases_changed().await,
                Some(ev) = destroyed.recv() => {
                    if let Ok(ev) = ev { self.on_destroyed(&ev.object_id).await; }
                }
                Some(ev) = created.recv() => {
                    if let Ok(ev) = ev {
                        debug!(object = %ev.object, "object created");
                        if let Some(pipeline) = webrtc_endpoint_pipeline(&ev.object) {
                            let now = Instant::now();
                            self.first_seen.entry(ev.object.clone()).or_insert(now);
                            if self.config.lookup_new_endpoints {
                                self.fresh.insert(ev.object.clone(), Fresh::new(pipeline, now));
                            }
                        }
                    }
                }
                _ = fresh_tick.tick(), if !self.fresh.is_empty() => self.look_at_fresh(),
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
                    Some(Command::Consent(req, reply)) => { let r = self.control_consent(req).await; let _ = reply.send(r); }
                    Some(Command::Detach(req, reply)) => {
                        let r = if !self.may_serve(&req.pipeline) {
                            Err(ControlRefusal::NotHolder)
                        } else if self.detach(&req.endpoint, true).await {
                            self.known.insert(req.endpoint.clone(), Known::Ignored);
                            Ok("detached".to_owned())
                        } else {
                            Err(ControlRefusal::NotHere)
                        };
                        let _ = reply.send(r);
                    }
                },
            }
            self.metrics
                .kms_decode_errors
                .set(self.kms.stats().decode_errors as i64);
            self.tell_tapping();
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
                    kms: self.kms_name.clone(),
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
                    display: t.participant.display.clone(),
                    publisher: t.participant.publisher.clone(),
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
        self.fresh
            .retain(|ep, _| ep != id && !ep.starts_with(&format!("{id}/")));
        self.first_seen
            .retain(|ep, _| ep != id && !ep.starts_with(&format!("{id}/")));
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
            Some(Known::Via(passthrough)) => {
                // OpenVidu: a publisher endpoint went (a reconnect, or the unpublish that
                // releases its PassThrough too): the tap follows the PassThrough, not it.
                debug!(endpoint, passthrough = %passthrough, why, "publisher endpoint gone; its PassThrough decides the tap");
                self.known.remove(endpoint);
                self.fresh.remove(endpoint);
                self.first_seen.remove(endpoint);
                self.consent_seen.remove(endpoint);
            }
            _ => {
                self.known.remove(endpoint);
                self.fresh.remove(endpoint);
                self.first_seen.remove(endpoint);
                self.consent_seen.remove(endpoint);
            }
        }
    }

    /// Starts a setup of `ep` beside the others (the room's name read first when not known).
    fn spawn_setup(&mut self, room: Option<String>, pipeline: MediaPipeline, ep: WebRtcEndpoint) {
        let id = ep.id().to_owned();
        let first_seen = *self
            .first_seen
            .entry(id.clone())
            .or_insert_with(Instant::now);
        self.known.insert(id.clone(), Known::Pending);
        let ctx = self.ctx.clone();
        let decisions = self.control_consent.clone();
        let tapped = self.tapped.clone();
        self.metrics.setups_in_flight.inc();
        self.setups.spawn(async move {
            let started = Instant::now();
            let room = match room {
                Some(r) => Ok(r),
                None => discovery::room_name(&pipeline, &ctx.config.tags).await,
            };
            let outcome = match room {
                Ok(room) => {
                    setup(
                        ctx.clone(),
                        room,
                        pipeline,
                        ep,
                        first_seen,
                        decisions,
                        tapped,
                    )
                    .await
                }
                Err(e) if e.is_object_not_found() => Setup::Gone,
                Err(_) => Setup::Waiting,
            };
            ctx.metrics.setups_in_flight.dec();
            if matches!(outcome, Setup::Tapped(_)) {
                ctx.metrics
                    .setup_seconds
                    .observe(started.elapsed().as_secs_f64());
                ctx.metrics
                    .time_to_tap
                    .observe(first_seen.elapsed().as_secs_f64());
            }
            (id, outcome)
        });
        let running = self.setups.len() as i64;
        if running > self.metrics.setups_peak.get() {
            self.metrics.setups_peak.set(running);
        }
    }

    /// Looks at the endpoints announced by ObjectCreated whose turn it is (no scan of the rooms).
    fn look_at_fresh(&mut self) {
        if !self.kms_connected() {
            return;
        }
        let now = Instant::now();
        let due: Vec<(String, String)> = self
            .fresh
            .iter()
            .filter(|(_, f)| f.next <= now)
            .map(|(id, f)| (id.clone(), f.pipeline.clone()))
            .collect();
        for (id, pipeline_id) in due {
            let ready = matches!(self.known.get(&id), None | Some(Known::Waiting));
            // In cluster mode only rooms held and already swept of a previous holder's objects.
            let ours = self.leases.as_ref().is_none_or(|l| {
                let key = tap_protocol::lease::room_key(&l.kms, &pipeline_id);
                l.link.valid.borrow().contains(&key) && l.swept.contains(&key)
            });
            let handles = self
                .kms
                .object::<MediaPipeline>(&pipeline_id)
                .and_then(|p| Ok((p, self.kms.object::<WebRtcEndpoint>(&id)?)));
            match (ready && ours, handles) {
                (true, Ok((pipeline, ep))) => {
                    // Rescheduled (or dropped) when the setup ends: not looked at meanwhile.
                    if let Some(f) = self.fresh.get_mut(&id) {
                        f.next = now + FRESH_GIVE_UP;
                    }
                    self.spawn_setup(None, pipeline, ep);
                }
                _ => {
                    self.fresh.remove(&id);
                }
            }
        }
    }

    async fn on_setup_done(&mut self, endpoint: String, outcome: Setup) {
        // The fast path: not negotiated yet, look again soon; anything else ends it.
        match (&outcome, self.fresh.get(&endpoint)) {
            (Setup::Waiting, Some(f)) => {
                let created = self
                    .first_seen
                    .get(&endpoint)
                    .copied()
                    .unwrap_or_else(Instant::now);
                match f.again(Instant::now(), created) {
                    Some(next) => {
                        self.fresh.insert(endpoint.clone(), next);
                    }
                    None => {
                        self.fresh.remove(&endpoint);
                    }
                }
            }
            (Setup::Waiting, None) => {}
            _ => {
                self.fresh.remove(&endpoint);
            }
        }
        if !matches!(outcome, Setup::Waiting | Setup::Failed) {
            self.first_seen.remove(&endpoint);
        }
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
        match &outcome {
            Setup::Tapped(t) => self.note_consent(&endpoint, &t.participant, true),
            Setup::NoConsent(p) => self.note_consent(&endpoint, p, false),
            _ => {}
        }
        let k = match outcome {
            Setup::NoConsent(p) => Known::NoConsent(p),
            Setup::Adopt(p) => {
                let key = p.endpoint.clone();
                match self.known.get_mut(&key) {
                    Some(Known::Tapped(t)) => {
                        info!(room = %t.participant.room, participant = %t.participant.name, publisher = p.publisher_endpoint(), "publisher reconnected onto its PassThrough: the tap goes on");
                        t.participant.publisher = p.publisher.clone();
                        if p.display.is_some() {
                            t.participant.display = p.display.clone();
                        }
                        Known::Via(key)
                    }
                    // The tap went meanwhile: look again (the next scan taps it).
                    _ => Known::Waiting,
                }
            }
            Setup::Tapped(t) if t.participant.endpoint != endpoint => {
                // Under --host openvidu: kept under its PassThrough; the endpoint points there.
                let key = t.participant.endpoint.clone();
                if matches!(self.known.get(&key), Some(Known::Tapped(_))) {
                    // Two setups raced to the same PassThrough: one tap is enough.
                    t.stop(&self.kms, self.kms_connected()).await;
                    self.known.insert(endpoint, Known::Via(key));
                    return;
                }
                info!(room = %t.participant.room, participant = %t.participant.name, display = ?t.participant.display, stream = ?t.participant.stream.as_ref().map(|s| s.id.as_str()), publisher = t.participant.publisher_endpoint(), passthrough = %key, tap = %t.tap.id(), media = ?media_list(&t.participant), "tapping");
                self.metrics.taps_active.inc();
                self.kms_taps().inc();
                self.metrics.taps_total.inc();
                self.tapped
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(key.clone());
                self.known.insert(key.clone(), Known::Tapped(t));
                Known::Via(key)
            }
            Setup::Tapped(t) => {
                info!(room = %t.participant.room, participant = %t.participant.name, tap = %t.tap.id(), media = ?media_list(&t.participant), "tapping");
                self.metrics.taps_active.inc();
                self.kms_taps().inc();
                self.metrics.taps_total.inc();
                if t.participant.presenter {
                    self.tell_mood(crate::mood::MoodEvent::Presenter {
                        room: tap_protocol::safe_token(&t.participant.room),
                        participant: Some(tap_protocol::safe_token(&t.participant.name)),
                        source: room_mood::PresenterSource::Tag,
                    });
                }
                self.tapped
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(endpoint.clone());
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
        let mut consenting: Vec<(MediaPipeline, String, WebRtcEndpoint)> = Vec::new();
        let mut wanted = std::collections::BTreeMap::new();
        self.sweep_new_rooms(&pipelines).await;
        for pipeline in pipelines {
            // Lost KMS mid-scan: requests would queue until reconnection; look again then.
            if !self.kms_connected() {
                return;
            }
            let Ok(room) = discovery::room_name(&pipeline, &self.config.tags).await else {
                continue;
            };
            if let Some(l) = &self.leases {
                let key = tap_protocol::lease::room_key(&l.kms, pipeline.id());
                if room_allowed(&self.config, &room) {
                    wanted.insert(
                        key.clone(),
                        crate::cluster::WantedRoom {
                            room: room.clone(),
                            pipeline: pipeline.id().to_owned(),
                            kms: l.kms.clone(),
                        },
                    );
                }
                // Another daemon's room (or nobody's yet), or ours but not yet cleared of what its
                // previous holder left: not looked into.
                if !l.link.valid.borrow().contains(&key) || !l.swept.contains(&key) {
                    continue;
                }
            }
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
                    // Their consent tags are read again below.
                    Some(Known::Tapped(_)) | Some(Known::NoConsent(_)) => {
                        consenting.push((pipeline.clone(), room.clone(), ep.clone()));
                        false
                    }
                    Some(_) => false,
                };
                if due {
                    self.spawn_setup(Some(room.clone()), pipeline.clone(), ep);
                }
            }
        }
        self.recheck_consent(consenting).await;
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
        // Creation times of endpoints in rooms that are gone (a lost ObjectDestroyed) go too.
        self.first_seen
            .retain(|id, _| live_pipelines.contains(id.split('/').next().unwrap_or_default()));
        self.release_orphans(owned).await;
        if let Some(l) = &self.leases {
            l.link.wanted.send_if_modified(|w| {
                if *w != wanted {
                    *w = wanted;
                    true
                } else {
                    false
                }
            });
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
                let gated = stats
                    .video_frames_before_keyframe
                    .load(std::sync::atomic::Ordering::Relaxed);
                self.metrics
                    .receiver_frames_before_keyframe
                    .inc_by(gated.saturating_sub(t.gated_seen));
                t.gated_seen = gated;
                let unusable = stats
                    .sender_clock_unusable
                    .load(std::sync::atomic::Ordering::Relaxed);
                self.metrics
                    .sender_clocks_unusable
                    .inc_by(unusable.saturating_sub(t.clocks_unusable_seen));
                t.clocks_unusable_seen = unusable;
                let refused = stats.srtp_rejected();
                self.metrics
                    .srtp_packets_rejected
                    .inc_by(refused.saturating_sub(t.srtp_rejected_seen));
                t.srtp_rejected_seen = refused;
            }
        }
    }

    fn kms_taps(&self) -> prometheus_client::metrics::gauge::Gauge {
        self.metrics
            .taps_by_kms
            .get_or_create(&crate::metrics::KmsLabel {
                kms: self.kms_name.clone(),
            })
            .clone()
    }

    /// Tells the lease task which rooms still have taps or setups of ours (cluster mode).
    fn tell_tapping(&self) {
        let Some(l) = &self.leases else {
            return;
        };
        let rooms: std::collections::BTreeSet<String> = self
            .known
            .iter()
            .filter(|(_, k)| {
                matches!(
                    k,
                    Known::Tapped(_) | Known::Pending | Known::Cancelled { .. }
                )
            })
            .map(|(ep, _)| {
                tap_protocol::lease::room_key(&l.kms, ep.split('/').next().unwrap_or_default())
            })
            .collect();
        l.link.tapping.send_if_modified(|t| {
            if *t != rooms {
                *t = rooms;
                true
            } else {
                false
            }
        });
    }

    /// Whether this daemon answers for a room: always alone, only as its holder in cluster mode.
    fn may_serve(&self, pipeline: &str) -> bool {
        self.leases.as_ref().is_none_or(|l| {
            l.link
                .valid
                .borrow()
                .contains(&tap_protocol::lease::room_key(&l.kms, pipeline))
        })
    }

    /// The rooms this daemon may tap changed: stop what is no longer ours, look for what is new.
    async fn on_leases_changed(&mut self) {
        let Some(l) = &self.leases else {
            return;
        };
        let valid = l.link.valid.borrow().clone();
        let kms = l.kms.clone();
        let ours = |endpoint: &str| {
            let pipeline = endpoint.split('/').next().unwrap_or_default();
            valid.contains(&tap_protocol::lease::room_key(&kms, pipeline))
        };
        let lost: Vec<String> = self.known.keys().filter(|ep| !ours(ep)).cloned().collect();
        let release = self.kms_connected();
        for ep in lost {
            // Unproven ownership: stop now (whoever takes the room sweeps what is left).
            self.forget(&ep, release, "lease lost").await;
        }
        if let Some(l) = self.leases.as_mut() {
            l.swept.retain(|k| valid.contains(k));
        }
        self.rescan().await;
    }

    /// Rooms that just became ours, all at once: see [`Self::sweep_previous_holder`].
    async fn sweep_new_rooms(&mut self, pipelines: &[MediaPipeline]) {
        let Some(l) = &self.leases else {
            return;
        };
        let valid = l.link.valid.borrow().clone();
        let new: Vec<(String, &MediaPipeline)> = pipelines
            .iter()
            .map(|p| (tap_protocol::lease::room_key(&l.kms, p.id()), p))
            .filter(|(k, _)| valid.contains(k) && !l.swept.contains(k))
            .collect();
        if new.is_empty() {
            return;
        }
        let done =
            futures_util::future::join_all(new.iter().map(|(_, p)| self.sweep_previous_holder(p)))
                .await;
        // A room not swept whole is not tapped yet (the rescan skips it) and swept again next time.
        if let Some(l) = self.leases.as_mut() {
            l.swept.extend(
                new.into_iter()
                    .zip(done)
                    .filter(|(_, ok)| *ok)
                    .map(|((k, _), _)| k),
            );
        }
    }

    /// A room just became ours: release what a previous holder (another daemon, by owner tag) left
    /// in it. Objects without our owner tag key are the app's and are never touched. True when the
    /// room was read whole and everything foreign in it released.
    async fn sweep_previous_holder(&self, pipeline: &MediaPipeline) -> bool {
        let Ok(children) = pipeline.get_children().await else {
            return false;
        };
        // All at once: a takeover sweeps a dead daemon's taps in every room it held, and one round
        // trip each, in turn, on a loaded KMS, delayed the new taps by seconds.
        let candidates: Vec<&MediaObject> = children
            .iter()
            .filter(|c| {
                c.downcast::<RtpEndpoint>().is_some() || c.downcast::<WebRtcEndpoint>().is_some()
            })
            .collect();
        let tags = futures_util::future::join_all(candidates.iter().map(|c| c.get_tags())).await;
        let mut complete = true;
        let mut foreign: Vec<&MediaObject> = Vec::new();
        for (c, tags) in candidates.into_iter().zip(tags) {
            match tags {
                Ok(tags) => {
                    if tags
                        .iter()
                        .any(|t| t.key == self.config.tags.owner && t.value != self.config.owner)
                    {
                        foreign.push(c);
                    }
                }
                // Released meanwhile: nothing to sweep. Anything else: look again.
                Err(e) if e.is_object_not_found() => {}
                Err(_) => complete = false,
            }
        }
        let released = futures_util::future::join_all(foreign.into_iter().map(|c| async move {
            info!(
                object = c.id(),
                "releasing an object of the room's previous holder"
            );
            self.metrics.lease_events("swept");
            match tokio::time::timeout(crate::kms::release::RELEASE_TIMEOUT, c.release()).await {
                Ok(Ok(())) => true,
                Ok(Err(e)) => e.is_object_not_found(),
                Err(_) => false,
            }
        }))
        .await;
        complete && released.into_iter().all(|r| r)
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
        // Rooms with a setup running: an object of ours there whose tag names something not yet
        // known may be that setup's own (an OpenVidu tap is tagged with the PassThrough it hangs
        // from, found inside the setup, while the setup is keyed by the publisher endpoint).
        let setting_up: HashSet<&str> = known
            .iter()
            .filter(|(_, k)| matches!(k, Known::Pending | Known::Cancelled { .. }))
            .map(|(ep, _)| ep.split('/').next().unwrap_or_default())
            .collect();
        let to_release: Vec<String> = orphans(&owned, |publisher| match known.get(publisher) {
            Some(Known::Tapped(t)) => PublisherState::Tapped { tap: t.tap.id() },
            Some(Known::Pending) | Some(Known::Cancelled { .. }) => PublisherState::SettingUp,
            None if setting_up.contains(publisher.split('/').next().unwrap_or_default()) => {
                PublisherState::SettingUp
            }
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

    async fn control_attach(&mut self, req: ControlRequest) -> ControlAnswer {
        if !self.may_serve(&req.pipeline) {
            return Err(ControlRefusal::NotHolder);
        }
        match self.known.get(&req.endpoint) {
            Some(Known::Tapped(t)) => return Ok(t.tap.id().to_owned()),
            Some(Known::Pending) => {
                return Err(ControlRefusal::Failed(
                    "a tap for it is being set up".into(),
                ))
            }
            _ => {}
        }
        let failed = |e: String| ControlRefusal::Failed(e);
        let pipeline: MediaPipeline = self
            .kms
            .object(&req.pipeline)
            .map_err(|e| failed(e.to_string()))?;
        let ep: WebRtcEndpoint = self
            .kms
            .object(&req.endpoint)
            .map_err(|e| failed(e.to_string()))?;
        // The room's name is read even when given: it proves the pipeline is on this KMS.
        let tagged_room = match discovery::room_name(&pipeline, &self.config.tags).await {
            Ok(r) => r,
            Err(e) if e.is_object_not_found() => return Err(ControlRefusal::NotHere),
            Err(e) => return Err(failed(e.to_string())),
        };
        let room = req.room.clone().unwrap_or(tagged_room);
        let mut p = match discovery::examine(&room, &pipeline, &ep, &self.config.tags)
            .await
            .map_err(|e| failed(e.to_string()))?
        {
            Examined::Publisher(p) => p,
            Examined::NotYet(why) => return Err(failed(format!("endpoint not ready: {why}"))),
            Examined::Gone => return Err(failed("endpoint not found".into())),
            Examined::Other => return Err(failed("not a publisher endpoint".into())),
        };
        let control = self
            .control_consent
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&crate::privacy::consent::key(&p.room, &p.name))
            .copied();
        if !crate::privacy::consent::analysed(self.config.consent, p.consent_tag, control) {
            return Err(failed(
                if p.consent_tag == Some(false) || control == Some(false) {
                    "participant opted out (consent withdrawn)".into()
                } else {
                    "participant has not consented (consent = opt-in)".into()
                },
            ));
        }
        if let Some(name) = req.participant {
            p.name = name;
        }
        p.room = room;
        let endpoint = p.endpoint.clone();
        let outcome = attach(&self.ctx, p, Instant::now()).await;
        let reply = match &outcome {
            Setup::Tapped(t) => Ok(t.tap.id().to_owned()),
            _ => Err(failed("tap failed (see the daemon's log)".to_owned())),
        };
        self.known.insert(endpoint.clone(), Known::Pending);
        self.on_setup_done(endpoint, outcome).await;
        reply
    }

    /// Records whether a publisher examined is analysed (consent): a change made by its tag is
    /// logged and counted (control changes are recorded where the request is served); entering
    /// "not analysed" counts in `participants_not_tapped_total` once.
    fn note_consent(&mut self, endpoint: &str, p: &Participant, analysed: bool) {
        let before = self.consent_seen.insert(endpoint.to_owned(), analysed);
        if let Some(c) = crate::privacy::consent::change(before, analysed, p.consent_tag.is_some())
        {
            record_consent(
                &self.metrics,
                &p.room,
                &p.name,
                c,
                crate::privacy::consent::Source::Tag,
            );
        }
        if !analysed && before != Some(false) {
            self.count_not_analysed(p);
        }
    }

    /// Logs and counts a publisher entering "not analysed" for want of consent (`opt_out`: a tag
    /// or a control request said no; `no_consent`: nobody said yes under `opt-in`).
    fn count_not_analysed(&self, p: &Participant) {
        let control = self
            .control_consent
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&crate::privacy::consent::key(&p.room, &p.name))
            .copied();
        let reason = if p.consent_tag == Some(false) || control == Some(false) {
            "opt_out"
        } else {
            "no_consent"
        };
        info!(room = %p.room, participant = %p.name, reason, "not tapping");
        self.metrics
            .not_tapped
            .get_or_create(&ReasonLabel {
                reason: reason.into(),
            })
            .inc();
    }

    /// Re-reads the consent tag of every publisher examined (tapped, or not for want of consent),
    /// all at once: a tapped one whose consent is gone is stopped, one whose consent came is set
    /// up (tapped) now. A tag change takes effect within one scan.
    async fn recheck_consent(&mut self, publishers: Vec<(MediaPipeline, String, WebRtcEndpoint)>) {
        if publishers.is_empty() {
            return;
        }
        let tags =
            futures_util::future::join_all(publishers.iter().map(|(_, _, ep)| ep.get_tags())).await;
        for ((pipeline, room, ep), tags) in publishers.into_iter().zip(tags) {
            // Unreadable (gone, or KMS busy): the scan's own checks and the next scan see to it.
            let Ok(tags) = tags else {
                continue;
            };
            let tag = crate::privacy::consent::tag_value(
                tags.iter()
                    .find(|t| t.key == self.config.tags.consent)
                    .map(|t| t.value.as_str()),
            );
            let (p, was) = match self.known.get_mut(ep.id()) {
                Some(Known::Tapped(t)) => (&mut t.participant, true),
                Some(Known::NoConsent(p)) => (&mut **p, false),
                _ => continue,
            };
            p.consent_tag = tag;
            p.consent = tag != Some(false);
            let p = p.clone();
            let control = self
                .control_consent
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .get(&crate::privacy::consent::key(&p.room, &p.name))
                .copied();
            let now = crate::privacy::consent::analysed(self.config.consent, tag, control);
            match (was, now) {
                (true, false) => {
                    // The room lives on: our objects for this publisher are released.
                    self.detach(ep.id(), self.kms_connected()).await;
                    self.note_consent(ep.id(), &p, false);
                    self.known
                        .insert(ep.id().to_owned(), Known::NoConsent(Box::new(p)));
                }
                // Examined again and tapped by a setup (which logs the change).
                (false, true) => self.spawn_setup(Some(room), pipeline, ep),
                _ => {}
            }
        }
    }

    /// A consent request (`tap.v1.ctl.consent`): recorded for the participant, logged and counted,
    /// and applied at once to each of their publishers here: a withdrawal stops the tap, a grant
    /// taps them now. `NotHere` when no publisher of that name is known on this KMS.
    async fn control_consent(
        &mut self,
        req: crate::privacy::consent::ConsentRequest,
    ) -> ConsentAnswer {
        let key = crate::privacy::consent::key(&req.room, &req.participant);
        let matching: Vec<String> = self
            .known
            .iter()
            .filter_map(|(ep, k)| {
                let p = match k {
                    Known::Tapped(t) => &t.participant,
                    Known::NoConsent(p) => p,
                    _ => return None,
                };
                (crate::privacy::consent::key(&p.room, &p.name) == key).then(|| ep.clone())
            })
            .collect();
        if matching.is_empty() {
            return Err(ControlRefusal::NotHere);
        }
        {
            let mut d = self
                .control_consent
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            if !d.contains_key(&key) && d.len() >= crate::privacy::consent::MAX_CONTROL_DECISIONS {
                return Err(ControlRefusal::Failed(format!(
                    "too many consent decisions remembered ({})",
                    crate::privacy::consent::MAX_CONTROL_DECISIONS
                )));
            }
            d.insert(key, req.consent);
        }
        let change = if req.consent {
            crate::privacy::consent::Change::Granted
        } else {
            crate::privacy::consent::Change::Withdrawn
        };
        record_consent(
            &self.metrics,
            &req.room,
            &req.participant,
            change,
            crate::privacy::consent::Source::Control,
        );
        let mut analysed_now = false;
        for ep in matching {
            let (p, was) = match self.known.get(&ep) {
                Some(Known::Tapped(t)) => (t.participant.clone(), true),
                Some(Known::NoConsent(p)) => ((**p).clone(), false),
                _ => continue,
            };
            let now = crate::privacy::consent::analysed(
                self.config.consent,
                p.consent_tag,
                Some(req.consent),
            );
            // Recorded first: the change is the control request's, already logged.
            self.consent_seen.insert(ep.clone(), now);
            match (was, now) {
                (true, false) => {
                    self.detach(&ep, self.kms_connected()).await;
                    self.count_not_analysed(&p);
                    self.known.insert(ep, Known::NoConsent(Box::new(p)));
                }
                (false, true) if !p.live => {
                    // Its browser sends nothing yet: the scan taps it when it does.
                    self.known.insert(ep, Known::Waiting);
                }
                (false, true) => {
                    let outcome = attach(&self.ctx, p, Instant::now()).await;
                    analysed_now |= matches!(outcome, Setup::Tapped(_));
                    self.known.insert(ep.clone(), Known::Pending);
                    self.on_setup_done(ep, outcome).await;
                }
                (was, _) => analysed_now |= was,
            }
        }
        Ok(analysed_now)
    }

    /// Stops a tap; releases our objects when `release` (never anything else).
    async fn detach(&mut self, endpoint: &str, release: bool) -> bool {
        let Some(Known::Tapped(t)) = self.known.remove(endpoint) else {
            return false;
        };
        self.tapped
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(endpoint);
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
        self.kms_taps().dec();
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
/// Logs a consent change (who, when, what, from where; no media, no results) and counts it.
fn record_consent(
    metrics: &Metrics,
    room: &str,
    participant: &str,
    change: crate::privacy::consent::Change,
    source: crate::privacy::consent::Source,
) {
    let at_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    info!(
        room,
        participant,
        at_ms,
        consent = change.as_str(),
        source = source.as_str(),
        "consent changed"
    );
    metrics.consent_change(change.as_str(), source.as_str());
}

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
    first_seen: Instant,
    decisions: crate::privacy::consent::ControlDecisions,
    tapped: Arc<std::sync::Mutex<HashSet<String>>>,
) -> Setup {
    let examined = match ctx.config.host {
        crate::discovery::openvidu::Host::Kurento => {
            discovery::examine(&room, &pipeline, &ep, &ctx.config.tags).await
        }
        crate::discovery::openvidu::Host::OpenVidu => {
            discovery::examine_openvidu(
                &room,
                &pipeline,
                &ep,
                &ctx.config.tags,
                ctx.openvidu.as_deref(),
                &ctx.metrics,
                first_seen.elapsed() < discovery::OPENVIDU_NAME_WAIT,
            )
            .await
        }
    };
    let examined = match examined {
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
    // A PassThrough already tapped (OpenVidu: the publisher reconnected onto it).
    if p.publisher.is_some()
        && tapped
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains(&p.endpoint)
    {
        return Setup::Adopt(Box::new(p));
    }
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
    // Consent, from the tags just read and the control requests: nothing of a participant
    // without it is tapped (logged and counted by the watcher, on changes only).
    let control = decisions
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .get(&crate::privacy::consent::key(&p.room, &p.name))
        .copied();
    if !crate::privacy::consent::analysed(ctx.config.consent, p.consent_tag, control) {
        return Setup::NoConsent(Box::new(p));
    }
    if !p.live {
        return Setup::Waiting;
    }
    attach(&ctx, p, first_seen).await
}

async fn attach(ctx: &TapContext, p: Participant, first_seen: Instant) -> Setup {
    match ctx.make_tap(p.clone(), first_seen).await {
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

/// Whether the configuration lets this daemon tap a room.
fn room_allowed(config: &DaemonConfig, room: &str) -> bool {
    (config.include_rooms.is_empty()
        || config
            .include_rooms
            .iter()
            .any(|pat| discovery::matches(pat, room)))
        && !config
            .exclude_rooms
            .iter()
            .any(|pat| discovery::matches(pat, room))
}

/// Why a publisher is not tapped by configuration, if it is not (consent is decided apart, and
/// looked at again on every scan).
fn not_tapped_reason(config: &DaemonConfig, p: &Participant) -> Option<&'static str> {
    let screen = p
        .stream
        .as_ref()
        .is_some_and(|s| s.kind == crate::discovery::openvidu::StreamKind::Screen);
    if screen && !config.openvidu.include_screens {
        Some("screen_share")
    } else if !room_allowed(config, &p.room) {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_webrtc_endpoints_are_fresh_publishers_to_look_at() {
        let ep = "0b9e_kurento.MediaPipeline/77a1_kurento.WebRtcEndpoint";
        assert_eq!(
            webrtc_endpoint_pipeline(ep),
            Some("0b9e_kurento.MediaPipeline")
        );
        for other in [
            "0b9e_kurento.MediaPipeline",
            "0b9e_kurento.MediaPipeline/1_kurento.RtpEndpoint",
            "0b9e_kurento.MediaPipeline/1_kurento.PassThrough",
            "/1_kurento.WebRtcEndpoint",
            "",
        ] {
            assert_eq!(webrtc_endpoint_pipeline(other), None, "{other}");
        }
    }

    #[test]
    fn a_fresh_endpoint_is_looked_at_soon_then_less_often_then_left_to_the_scan() {
        let t0 = Instant::now();
        let f = Fresh::new("p", t0);
        assert_eq!(f.next, t0 + FRESH_FIRST);
        let mut delays = Vec::new();
        let mut cur = f;
        let mut now = t0;
        while let Some(next) = cur.again(now, t0) {
            delays.push(next.delay.as_millis());
            now = next.next;
            cur = next;
        }
        assert_eq!(&delays[..5], &[100, 200, 400, 800, 800]);
        assert!(now.duration_since(t0) >= FRESH_GIVE_UP - FRESH_MAX_DELAY);
        assert!(now.duration_since(t0) <= FRESH_GIVE_UP + FRESH_MAX_DELAY);
    }
}
