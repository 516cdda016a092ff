//! Results back into the call, through Kurento DataChannels.
//!
//! KMS has no API that writes into a DataChannel: DATA only flows between WebRtcEndpoints. So, per
//! tapped participant whose endpoint has a DataChannel, the daemon creates a WebRtcEndpoint of its
//! own (`useDataChannels`, tagged as ours), becomes its WebRTC peer (data-only offer from
//! `webrtcbin`, ICE over `IceCandidateFound`/`addIceCandidate`, DTLS, SCTP), lets KMS open the
//! channel (`createDataChannel`: webrtcbin's own DCEP priority would make KMS reset it), and then
//! `connect(own, participant, DATA)`. KMS forwards what we send into the participant's channel.
//!
//! One endpoint per participant because results are per participant and a sink takes one DATA
//! source. Messages are small JSON ([`DataChannelMessage`]), latest-per-model, paced per
//! participant ([`Pacer`]), and dropped (counted) rather than queued when the channel is slow.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kurento_client::prelude::*;
use kurento_client::{Error as KmsError, KurentoClient};
use serde_json::json;
use tap_protocol::{DataChannelMessage, ResultMessage};
use tokio::sync::broadcast;
use tracing::{debug, info, warn};
use webrtc_data::{application_ports, DataPeer, PeerEvent, PeerOptions, SendError};

use crate::discovery::{Participant, TagKeys};
use crate::metrics::Metrics;
use crate::mood::AffectUpdate;

/// How results reach participants' DataChannels.
#[derive(Debug, Clone)]
pub struct InjectorConfig {
    /// Off: results only go to NATS.
    pub enabled: bool,
    /// Messages per second per participant, at most (all models together).
    pub max_rate_hz: f64,
    /// Label of the channel KMS opens towards the daemon.
    pub label: String,
    /// Largest message sent; larger ones go without labels, or not at all.
    pub max_message_bytes: usize,
    /// A result waiting longer than this for its turn is dropped as stale.
    pub max_wait: Duration,
    /// Time allowed from endpoint creation to an open channel.
    pub setup_timeout: Duration,
    /// Connect even when another element already feeds the participant's DATA (KMS keeps one
    /// DATA source per sink, so that source would be replaced). A self-loop is always replaced.
    pub replace_data_source: bool,
    /// Whose results each participant receives.
    pub audience: Audience,
    /// UDP ports for the peers' ICE (inclusive); `None`: any the OS gives.
    pub ice_ports: Option<(u16, u16)>,
}

/// Whose results a participant's DataChannel carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Audience {
    /// Only results about this participant (the default: nobody else's inferred emotions are
    /// shared without the application deciding so).
    #[default]
    Participant,
    /// Results about everyone in the room (each message names its participant).
    Room,
}

impl std::str::FromStr for Audience {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "participant" => Ok(Audience::Participant),
            "room" => Ok(Audience::Room),
            _ => Err(format!("audience {s:?}: expected participant or room")),
        }
    }
}

impl Default for InjectorConfig {
    fn default() -> Self {
        InjectorConfig {
            enabled: true,
            max_rate_hz: 4.0,
            label: "kurento-tap".into(),
            max_message_bytes: 4096,
            max_wait: Duration::from_secs(2),
            setup_timeout: Duration::from_secs(20),
            replace_data_source: false,
            audience: Audience::Participant,
            ice_ports: None,
        }
    }
}

/// Paces one participant's messages: a token bucket (`rate` per second, burst of `max(1, rate)`)
/// in front of a latest-per-model slot. Nothing queues beyond one result per model.
#[derive(Debug)]
pub struct Pacer {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
    max_wait: Duration,
    /// (model key, result, when it arrived), oldest arrival first.
    pending: VecDeque<(String, Arc<ResultMessage>, Instant)>,
}

/// What [`Pacer::offer`] did with a result.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Offered {
    /// Waiting for its turn.
    Queued,
    /// Replaced an unsent older result of the same model (which is thereby dropped).
    Superseded,
}

impl Pacer {
    /// A pacer allowing `rate` messages per second.
    pub fn new(rate: f64, max_wait: Duration, now: Instant) -> Self {
        let rate = if rate.is_finite() && rate > 0.0 {
            rate
        } else {
            1.0
        };
        let burst = rate.max(1.0);
        Pacer {
            rate,
            burst,
            tokens: burst,
            last: now,
            max_wait,
            pending: VecDeque::new(),
        }
    }

    /// A new result for the participant.
    pub fn offer(&mut self, r: Arc<ResultMessage>, now: Instant) -> Offered {
        let key = format!("{}/{}@{}", r.participant, r.model, r.version);
        if let Some(slot) = self.pending.iter_mut().find(|(k, _, _)| *k == key) {
            // Keep its place in line (it has waited), carry the newest result.
            slot.1 = r;
            return Offered::Superseded;
        }
        self.pending.push_back((key, r, now));
        Offered::Queued
    }

    fn refill(&mut self, now: Instant) {
        let dt = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + dt * self.rate).min(self.burst);
    }

    /// The results to send now (as many as the bucket allows, oldest first) and how many were
    /// dropped for waiting longer than `max_wait`.
    pub fn take(&mut self, now: Instant) -> (Vec<Arc<ResultMessage>>, u64) {
        self.refill(now);
        let before = self.pending.len();
        let max_wait = self.max_wait;
        self.pending
            .retain(|(_, _, at)| now.saturating_duration_since(*at) <= max_wait);
        let stale = (before - self.pending.len()) as u64;
        let mut out = Vec::new();
        while self.tokens >= 1.0 {
            let Some((_, r, _)) = self.pending.pop_front() else {
                break;
            };
            self.tokens -= 1.0;
            out.push(r);
        }
        (out, stale)
    }

    /// When [`Pacer::take`] will next have something to send (`None`: nothing waits).
    pub fn next_due(&self, now: Instant) -> Option<Instant> {
        if self.pending.is_empty() {
            return None;
        }
        let missing = (1.0 - self.tokens).max(0.0);
        Some(now + Duration::from_secs_f64(missing / self.rate))
    }

    /// Results waiting.
    pub fn waiting(&self) -> usize {
        self.pending.len()
    }
}

/// Everything an injector needs from the daemon.
#[derive(Clone)]
pub struct InjectorContext {
    /// KMS.
    pub kms: KurentoClient,
    /// Settings.
    pub config: InjectorConfig,
    /// Tag keys.
    pub tags: TagKeys,
    /// Owner tag value.
    pub owner: String,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// Fused states and room moods (absent with the fusion off): each participant receives their
    /// own state, and the presenter their room's mood.
    pub affect: Option<broadcast::Sender<Arc<AffectUpdate>>>,
}

/// The DataChannel path of one tapped participant.
pub struct Injector {
    kms: KurentoClient,
    task: tokio::task::JoinHandle<()>,
    endpoint: Arc<Mutex<Option<WebRtcEndpoint>>>,
}

#[derive(Debug, thiserror::Error)]
enum SetupError {
    #[error(transparent)]
    Kms(#[from] KmsError),
    #[error("WebRTC peer: {0}")]
    Peer(#[from] webrtc_data::PeerError),
    #[error("KMS rejected the data channel section of our offer")]
    Rejected,
    #[error("another element feeds the participant's DATA ({0}); not replacing it")]
    DataSourceInUse(String),
    #[error("no open channel after {0:?}")]
    Timeout(Duration),
    #[error("the peer connection {0}")]
    Connection(String),
}

impl SetupError {
    fn outcome(&self) -> &'static str {
        match self {
            SetupError::Kms(_) => "kms_error",
            SetupError::Peer(_) => "peer_error",
            SetupError::Rejected => "rejected",
            SetupError::DataSourceInUse(_) => "data_source_in_use",
            SetupError::Timeout(_) => "timeout",
            SetupError::Connection(_) => "connection_failed",
        }
    }
}

impl Drop for Injector {
    fn drop(&mut self) {
        // Dropped without `stop` (the control actor itself stopped): the session must not outlive it.
        self.task.abort();
    }
}

/// Keeps the open-channels gauge right however the session ends (including abort).
struct OpenGuard {
    metrics: Arc<Metrics>,
}

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.metrics.datachannels_open.dec();
    }
}

impl Injector {
    /// Starts the DataChannel path for a participant; it waits for the participant's channel if
    /// there is none yet.
    pub fn start(
        ctx: InjectorContext,
        participant: Participant,
        results: broadcast::Receiver<Arc<ResultMessage>>,
    ) -> Injector {
        let endpoint = Arc::new(Mutex::new(None));
        let kms = ctx.kms.clone();
        let task = tokio::spawn(run(ctx, participant, results, endpoint.clone()));
        Injector {
            kms,
            task,
            endpoint,
        }
    }

    /// Stops; releases our endpoint when `release` (never anything else).
    pub async fn stop(mut self, release: bool) {
        self.task.abort();
        let _ = (&mut self.task).await;
        let ep = self.endpoint.lock().expect("endpoint lock").take();
        if let (true, Some(ep)) = (release, ep) {
            crate::daemon::release_bounded(&self.kms, ep.id(), ep.release()).await;
        }
    }
}

async fn run(
    ctx: InjectorContext,
    p: Participant,
    mut results: broadcast::Receiver<Arc<ResultMessage>>,
    slot: Arc<Mutex<Option<WebRtcEndpoint>>>,
) {
    let Ok(publisher) = ctx.kms.object::<WebRtcEndpoint>(&p.endpoint) else {
        return;
    };
    if !p.media.data_channels {
        // The app may not use DataChannels at all; if it does, the browser's channel opens later.
        let Ok(mut opened) = publisher.on::<DataChannelOpened>().await else {
            return;
        };
        debug!(participant = %p.name, "waiting for the participant's DataChannel");
        loop {
            match opened.recv().await {
                Some(Ok(_)) => break,
                Some(Err(_)) => continue,
                None => return,
            }
        }
    }
    let mut backoff = Duration::from_secs(2);
    // An endpoint whose release failed (KMS unreachable then): released before the next session.
    let mut unreleased: Option<WebRtcEndpoint> = None;
    loop {
        if let Some(ep) = unreleased.take() {
            if let Err(e) = ep.release().await {
                if !e.is_object_not_found() {
                    unreleased = Some(ep);
                }
            }
        }
        let started = Instant::now();
        let mut affect = ctx.affect.as_ref().map(|tx| tx.subscribe());
        let outcome = session(&ctx, &p, &publisher, &mut results, &mut affect, &slot).await;
        // The endpoint of a failed or finished session is ours to release.
        let ep = slot.lock().expect("endpoint lock").take();
        if let Some(ep) = ep {
            if let Err(e) = ep.release().await {
                if !e.is_object_not_found() {
                    debug!(endpoint = ep.id(), error = %e, "release failed; will retry");
                    unreleased = Some(ep);
                }
            }
        }
        match outcome {
            Ok(()) => {
                info!(participant = %p.name, "DataChannel closed; setting it up again");
                ctx.metrics.datachannel_setup("closed");
            }
            Err(SetupError::DataSourceInUse(by)) => {
                warn!(participant = %p.name, source = %by, "not injecting: the app feeds this participant's DATA itself (set datachannel.replace_data_source to override)");
                ctx.metrics.datachannel_setup("data_source_in_use");
                return;
            }
            Err(e) => {
                warn!(participant = %p.name, error = %e, "DataChannel setup failed; retrying in {backoff:?}");
                ctx.metrics.datachannel_setup(e.outcome());
            }
        }
        if started.elapsed() > Duration::from_secs(60) {
            backoff = Duration::from_secs(2);
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(60));
    }
}

fn ice_candidate(mids: &[String], sdp_mline_index: u32, candidate: String) -> IceCandidate {
    IceCandidate {
        candidate,
        sdp_mid: mids
            .get(sdp_mline_index as usize)
            .cloned()
            .unwrap_or_else(|| sdp_mline_index.to_string()),
        sdp_m_line_index: sdp_mline_index as i32,
    }
}

/// One endpoint + peer, from creation until the channel closes (Ok) or fails (Err).
async fn session(
    ctx: &InjectorContext,
    p: &Participant,
    publisher: &WebRtcEndpoint,
    results: &mut broadcast::Receiver<Arc<ResultMessage>>,
    affect: &mut Option<broadcast::Receiver<Arc<AffectUpdate>>>,
    slot: &Arc<Mutex<Option<WebRtcEndpoint>>>,
) -> Result<(), SetupError> {
    let cfg = &ctx.config;
    // Results from before this session (while waiting or backing off) are stale: start from now.
    *results = results.resubscribe();
    // KMS keeps one DATA source per sink: never silently take over a link the app made. A self-loop
    // and our own endpoints (e.g. one whose release failed) may be replaced.
    for c in publisher.get_source_connections(MediaType::Data).await? {
        if c.source == p.endpoint || cfg.replace_data_source {
            continue;
        }
        let ours = match ctx.kms.object::<WebRtcEndpoint>(&c.source) {
            Ok(src) => src
                .get_tags()
                .await
                .map(|tags| {
                    tags.iter()
                        .any(|t| t.key == ctx.tags.owner && t.value == ctx.owner)
                })
                .unwrap_or(false),
            Err(_) => false,
        };
        if !ours {
            return Err(SetupError::DataSourceInUse(c.source));
        }
    }
    let pipeline: MediaPipeline = ctx.kms.object(&p.pipeline)?;
    let mut tx = ctx.kms.transaction();
    let ep_ref = tx.create(
        WebRtcEndpoint::builder(&pipeline)
            .use_data_channels(true)
            .certificate_key_type(CertificateKeyType::Ecdsa),
    )?;
    tx.invoke(
        &ep_ref,
        "addTag",
        json!({"key": ctx.tags.owner, "value": ctx.owner}),
    );
    tx.invoke(
        &ep_ref,
        "addTag",
        json!({"key": ctx.tags.tapped_endpoint, "value": p.endpoint}),
    );
    let results_tx = tx.commit().await?;
    let created = results_tx.object(&ep_ref).ok();
    if let Some(ep) = &created {
        *slot.lock().expect("endpoint lock") = Some(ep.clone());
    }
    results_tx.check()?;
    let Some(ep) = created else {
        return Err(SetupError::Kms(KmsError::UnexpectedResponse {
            operation: "create".into(),
            reason: "no endpoint id".into(),
        }));
    };

    // Subscribe before anything can fire.
    let mut kms_candidates = ep.on::<IceCandidateFound>().await?;
    let mut channel_closed = ep.on::<DataChannelClosed>().await?;

    // The endpoint's own UUID (ids start with the room pipeline's).
    let short: String = p
        .endpoint
        .rsplit('/')
        .next()
        .unwrap_or(&p.endpoint)
        .chars()
        .take(8)
        .collect();
    let (peer, mut peer_events) = DataPeer::start(PeerOptions {
        name: format!("tap-dc-{short}"),
        event_capacity: 256,
        max_backlog_bytes: 64 * 1024,
        ice_ports: cfg.ice_ports,
    })?;
    let offer = peer.create_offer().await?;
    let mids: Vec<String> = webrtc_data::media_ids(&offer);
    let answer = ep.process_offer(&offer).await?;
    if !application_ports(&answer).iter().any(|port| *port != 0) {
        return Err(SetupError::Rejected);
    }
    peer.accept_answer(&answer).await?;
    ep.gather_candidates().await?;
    // KMS opens the channel once SCTP is up (it queues the request until then).
    ep.create_data_channel(CreateDataChannelOptions {
        label: Some(cfg.label.clone()),
        ordered: Some(true),
        ..Default::default()
    })
    .await?;

    let room_token = tap_protocol::safe_token(&p.room);
    let me = tap_protocol::safe_token(&p.name);
    let wanted = |r: &ResultMessage| match cfg.audience {
        Audience::Participant => r.endpoint == p.endpoint,
        Audience::Room => r.room == room_token,
    };
    let deadline = tokio::time::Instant::now() + cfg.setup_timeout;
    let mut pacer = Pacer::new(cfg.max_rate_hz, cfg.max_wait, Instant::now());
    let mut guard: Option<OpenGuard> = None;
    loop {
        let due = pacer
            .next_due(Instant::now())
            .filter(|_| guard.is_some())
            .map(tokio::time::Instant::from_std);
        tokio::select! {
            ev = peer_events.recv() => match ev {
                None => return Ok(()),
                Some(PeerEvent::LocalCandidate { sdp_mline_index, candidate }) => {
                    ep.add_ice_candidate(&ice_candidate(&mids, sdp_mline_index, candidate)).await?;
                }
                Some(PeerEvent::ChannelOpen { label, id }) if guard.is_none() => {
                    // Our channel is up: only now take the participant's DATA input.
                    ep.connect(publisher, MediaType::Data).await?;
                    ctx.metrics.datachannels_open.inc();
                    guard = Some(OpenGuard { metrics: ctx.metrics.clone() });
                    ctx.metrics.datachannel_setup("opened");
                    info!(room = %p.room, participant = %p.name, endpoint = ep.id(), label, id, "results flow into the participant's DataChannel");
                }
                Some(PeerEvent::ChannelClosed { .. }) if guard.is_some() => return Ok(()),
                Some(PeerEvent::Connection(s)) if s == "failed" || s == "closed" => {
                    return Err(SetupError::Connection(s));
                }
                Some(PeerEvent::Error(e)) => debug!(participant = %p.name, error = %e, "peer error"),
                Some(_) => {}
            },
            Some(ev) = kms_candidates.recv() => {
                if let Ok(ev) = ev {
                    peer.add_remote_candidate(ev.candidate.sdp_m_line_index.max(0) as u32, &ev.candidate.candidate);
                }
            }
            Some(_) = channel_closed.recv(), if guard.is_some() => return Ok(()),
            r = results.recv() => match r {
                Ok(r) if wanted(&r) => {
                    if pacer.offer(r, Instant::now()) == Offered::Superseded {
                        ctx.metrics.datachannel_message("superseded");
                    }
                    if guard.is_some() {
                        send_due(ctx, &peer, &mut pacer);
                    }
                }
                Ok(_) => {}
                Err(broadcast::error::RecvError::Lagged(n)) => ctx.metrics.datachannel_messages_n("lagged", n),
                Err(broadcast::error::RecvError::Closed) => return Ok(()),
            },
            u = next_affect(affect) => match u {
                Ok(u) => {
                    if guard.is_some() {
                        if let Some(text) = affect_message(&u, &room_token, &me, cfg.audience, cfg.max_message_bytes) {
                            send_text(ctx, &peer, &text);
                        }
                    }
                }
                Err(broadcast::error::RecvError::Lagged(n)) => ctx.metrics.datachannel_messages_n("lagged", n),
                Err(broadcast::error::RecvError::Closed) => *affect = None,
            },
            _ = async { tokio::time::sleep_until(due.expect("guarded")).await }, if due.is_some() => {
                send_due(ctx, &peer, &mut pacer);
            }
            _ = tokio::time::sleep_until(deadline), if guard.is_none() => {
                return Err(SetupError::Timeout(cfg.setup_timeout));
            }
        }
    }
}

async fn next_affect(
    rx: &mut Option<broadcast::Receiver<Arc<AffectUpdate>>>,
) -> Result<Arc<AffectUpdate>, broadcast::error::RecvError> {
    match rx {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

/// The text for this participant, if the update is theirs to receive: their own state (everyone's
/// in their room with `audience = "room"`), or their room's mood when they present. Both come once
/// a second at most (the fusion's tick), so they need no pacing of their own.
pub fn affect_message(
    u: &AffectUpdate,
    room: &str,
    me: &str,
    audience: Audience,
    max_bytes: usize,
) -> Option<String> {
    let text = match u {
        AffectUpdate::Room(m) if m.room == room && m.presenter.as_deref() == Some(me) => {
            serde_json::to_string(m).ok()?
        }
        AffectUpdate::State(s)
            if s.room == room && (s.participant == me || audience == Audience::Room) =>
        {
            serde_json::to_string(s).ok()?
        }
        _ => return None,
    };
    (text.len() <= max_bytes).then_some(text)
}

fn send_text(ctx: &InjectorContext, peer: &DataPeer, text: &str) {
    let outcome = match peer.send_text(text) {
        Ok(()) => "sent",
        Err(SendError::Backlog) => "backlog",
        Err(SendError::NotOpen) => "closed",
        Err(SendError::Refused) => "refused",
    };
    ctx.metrics.datachannel_message(outcome);
}

fn send_due(ctx: &InjectorContext, peer: &DataPeer, pacer: &mut Pacer) {
    let (due, stale) = pacer.take(Instant::now());
    if stale > 0 {
        ctx.metrics.datachannel_messages_n("stale", stale);
    }
    for r in due {
        let Some(text) = DataChannelMessage::from_result(&r).encode(ctx.config.max_message_bytes)
        else {
            ctx.metrics.datachannel_message("oversize");
            continue;
        };
        send_text(ctx, peer, &text);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_go_to_their_participant_and_room_moods_to_the_presenter() {
        use tap_protocol::affect::{ParticipantState, RoomMood};
        let state = |who: &str| {
            AffectUpdate::State(ParticipantState {
                v: 1,
                kind: "kurento-tap.state".into(),
                room: "r".into(),
                participant: who.into(),
                at_ms: 0.0,
                valence: None,
                arousal: None,
                emotion: None,
                confidence: 0.0,
                face_visible: None,
                speaking: None,
                attentive: None,
                modalities: vec![],
            })
        };
        let mood = AffectUpdate::Room(RoomMood {
            v: 1,
            kind: "kurento-tap.room".into(),
            room: "r".into(),
            at_ms: 0.0,
            presenter: Some("pat".into()),
            presenter_source: Some("tag".into()),
            contributors: 0,
            participants: 2,
            published: false,
            emotions: Default::default(),
            valence: None,
            arousal: None,
            attentive_share: None,
            valence_trend: None,
            arousal_trend: None,
            expressions: None,
        });
        let p = Audience::Participant;
        assert!(affect_message(&state("ana"), "r", "ana", p, 4096).is_some());
        assert!(affect_message(&state("ben"), "r", "ana", p, 4096).is_none());
        assert!(affect_message(&state("ben"), "r", "ana", Audience::Room, 4096).is_some());
        assert!(affect_message(&state("ana"), "other", "ana", Audience::Room, 4096).is_none());
        assert!(affect_message(&mood, "r", "pat", p, 4096).is_some());
        assert!(affect_message(&mood, "r", "ana", Audience::Room, 4096).is_none());
        assert!(
            affect_message(&mood, "r", "pat", p, 64).is_none(),
            "oversize"
        );
    }
    use tap_protocol::{MediaKind, WorkerReply};

    fn result(model: &str, seq: u64) -> Arc<ResultMessage> {
        Arc::new(ResultMessage {
            v: 1,
            room: "r".into(),
            participant: "p".into(),
            endpoint: "e".into(),
            kms: None,
            model: model.into(),
            version: "1".into(),
            media: MediaKind::Video,
            seq,
            capture_ms: 0.0,
            output: WorkerReply::default(),
            latency_ms: 0.0,
            round_trip_ms: 0.0,
        })
    }

    #[test]
    fn pacer_keeps_the_latest_per_model_and_the_rate() {
        let t0 = Instant::now();
        let mut p = Pacer::new(2.0, Duration::from_secs(2), t0);
        // Burst of 2 allowed at once.
        assert_eq!(p.offer(result("fer", 1), t0), Offered::Queued);
        assert_eq!(p.offer(result("voice", 1), t0), Offered::Queued);
        assert_eq!(p.offer(result("fer", 2), t0), Offered::Superseded);
        let (sent, stale) = p.take(t0);
        assert_eq!(stale, 0);
        assert_eq!(
            sent.iter()
                .map(|r| (r.model.as_str(), r.seq))
                .collect::<Vec<_>>(),
            vec![("fer", 2), ("voice", 1)]
        );
        // Bucket empty: 30 results in the next 100 ms leave one per model waiting.
        for s in 3..33 {
            p.offer(result(if s % 2 == 0 { "fer" } else { "voice" }, s), t0);
        }
        assert_eq!(p.waiting(), 2);
        assert!(p.take(t0 + Duration::from_millis(100)).0.is_empty());
        let due = p.next_due(t0 + Duration::from_millis(100)).unwrap();
        assert_eq!(due, t0 + Duration::from_millis(500));
        let (sent, _) = p.take(due);
        assert_eq!(sent.len(), 1);
        // voice (seq 3) waited longest; it carries its newest result, not the first.
        assert_eq!((sent[0].model.as_str(), sent[0].seq), ("voice", 31));
        // Over the next 10 s at most 2/s go out, whatever arrives.
        let mut total = 0;
        for ms in (600..10_600).step_by(50) {
            let now = t0 + Duration::from_millis(ms);
            p.offer(result("fer", ms), now);
            total += p.take(now).0.len();
        }
        assert!((19..=21).contains(&total), "{total}");
    }

    #[test]
    fn pacer_drops_what_waited_too_long() {
        let t0 = Instant::now();
        let mut p = Pacer::new(0.1, Duration::from_secs(2), t0);
        p.offer(result("a", 1), t0);
        assert_eq!(p.take(t0).0.len(), 1);
        p.offer(result("a", 2), t0);
        let (sent, stale) = p.take(t0 + Duration::from_secs(3));
        assert!(sent.is_empty());
        assert_eq!(stale, 1);
        assert_eq!(p.waiting(), 0);
        assert_eq!(p.next_due(t0), None);
        // Nonsense rates fall back to 1/s instead of dividing by zero.
        let mut q = Pacer::new(f64::NAN, Duration::from_secs(1), t0);
        q.offer(result("a", 1), t0);
        assert_eq!(q.take(t0).0.len(), 1);
    }
}
