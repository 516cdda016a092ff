//! One DataChannel session: our WebRtcEndpoint and peer are negotiated with KMS, then the pump
//! sends the participant's paced results and updates until the channel closes.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kurento_client::prelude::*;
use kurento_client::Error as KmsError;
use tap_protocol::{DataChannelMessage, ResultMessage};
use tokio::sync::broadcast;
use tracing::{debug, info};
use webrtc_data::{application_ports, PeerEvent, PeerOptions, SendError, TaskPeer};

use crate::discovery::Participant;
use crate::metrics::Metrics;
use crate::mood::AffectUpdate;

use super::context::InjectorContext;
use super::messages::{affect_message, ice_candidate, may_replace_data_source, peer_name, wanted};
use super::pacer::{Offered, Pacer};

#[derive(Debug, thiserror::Error)]
pub(super) enum SetupError {
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
    pub(super) fn outcome(&self) -> &'static str {
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

/// Keeps the open-channels gauge right however the session ends (including abort).
struct OpenGuard {
    metrics: Arc<Metrics>,
}

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.metrics.datachannels_open.dec();
    }
}

/// One endpoint + peer, from creation until the channel closes (Ok) or fails (Err).
pub(super) async fn session(
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
        if may_replace_data_source(&c.source, &p.endpoint, cfg.replace_data_source, false) {
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
        if !may_replace_data_source(&c.source, &p.endpoint, cfg.replace_data_source, ours) {
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
    tx.on(&ep_ref).add_tag(&ctx.tags.owner, &ctx.owner);
    tx.on(&ep_ref)
        .add_tag(&ctx.tags.tapped_endpoint, &p.endpoint);
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

    // The peer is a task on the daemon's runtime (str0m), not a webrtcbin pipeline: a peer per
    // participant then costs no threads (webrtcbin ran ten each).
    let (peer, mut peer_events) = TaskPeer::start(PeerOptions {
        name: peer_name(&p.endpoint),
        event_capacity: 256,
        max_backlog_bytes: 64 * 1024,
        ice_ports: cfg.ice_ports,
    })?;
    let offer = peer.create_offer()?;
    let mids: Vec<String> = webrtc_data::media_ids(&offer);
    let answer = ep.process_offer(&offer).await?;
    if !application_ports(&answer).iter().any(|port| *port != 0) {
        return Err(SetupError::Rejected);
    }
    peer.accept_answer(&answer)?;
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
                Ok(r) if wanted(cfg.audience, &r, &p.endpoint, &room_token) => {
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

fn send_text(ctx: &InjectorContext, peer: &TaskPeer, text: &str) {
    let outcome = match peer.send_text(text) {
        Ok(()) => "sent",
        Err(SendError::Backlog) => "backlog",
        Err(SendError::NotOpen) => "closed",
        Err(SendError::Refused) => "refused",
    };
    ctx.metrics.datachannel_message(outcome);
}

fn send_due(ctx: &InjectorContext, peer: &TaskPeer, pacer: &mut Pacer) {
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
