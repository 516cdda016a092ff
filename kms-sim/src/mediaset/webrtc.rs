//! WebRtcEndpoints with DataChannels, for real: when a client offers a data-only session to an
//! endpoint built with `useDataChannels`, the simulator answers with a real WebRTC peer
//! (`webrtcbin`, through the `webrtc-data` crate), so the client's ICE, DTLS and SCTP run for real.
//! Candidates travel as KMS sends them (`IceCandidateFound` after `gatherCandidates`,
//! `addIceCandidate`), `createDataChannel` opens the channel from this side as KMS does, and
//! `DataChannelOpened` fires twice, as observed on KMS 7.3.
//!
//! Messages that arrive on the channel follow the endpoint's DATA links, as KMS's data tee does:
//! into another peer-backed endpoint's channel, or into a simulated participant's "browser", whose
//! inbox tests read with [`MediaSet::data_received`]. The hop between endpoints is in memory; only
//! the client's leg is a network conversation.

use std::collections::VecDeque;
use std::sync::Arc;

use serde_json::{json, Value};
use tokio::sync::mpsc;
use tracing::{debug, info, warn};
use webrtc_data::{application_ports, DataPeer, PeerEvent, PeerOptions};

use super::{get_str, obj_map, Kind, MediaSet, Obj, Raised, RpcError, State};

/// Messages kept per simulated participant (oldest dropped first).
const INBOX_CAPACITY: usize = 512;

pub(super) struct PeerState {
    peer: Arc<DataPeer>,
    /// Candidates found before `gatherCandidates` (KMS only reports them after it).
    pending: Vec<(u32, String)>,
    gathering: bool,
    gathering_done: bool,
    channel_requested: bool,
    /// `a=mid` of each m-line of our answer, for `IceCandidate.sdpMid`.
    mids: Vec<String>,
}

/// What a simulated participant's browser received on its DataChannel.
#[derive(Default)]
pub(super) struct Inbox {
    messages: VecDeque<String>,
    total: u64,
}

impl MediaSet {
    /// The offer to answer with a real peer, when `op` is `processOffer` on a data-channel
    /// endpoint of a client (not a simulated participant) and the offer is data-only.
    pub(super) fn peer_negotiation(&self, id: &str, op: &str, p: &Value) -> Option<String> {
        if op != "processOffer" {
            return None;
        }
        let offer = p.get("offer")?.as_str()?;
        let st = self.lock();
        match &st.objects.get(id)?.kind {
            Kind::WebRtc(w)
                if w.data_channels && w.publisher.is_none() && w.remote_sdp.is_none() => {}
            _ => return None,
        }
        let has_media = offer
            .lines()
            .any(|l| l.starts_with("m=audio") || l.starts_with("m=video"));
        // KMS rejects a bundle-only (port 0) application section: that case stays SDP-only.
        let ports = application_ports(offer);
        (!has_media && ports.iter().any(|p| *p != 0)).then(|| offer.to_owned())
    }

    /// `processOffer` answered by a real `webrtcbin` peer.
    pub(super) async fn answer_with_peer(
        &self,
        id: &str,
        offer: String,
    ) -> Result<Value, RpcError> {
        let (state, events, answer) = answering_peer("kms-sim-dc", id, &offer, false)
            .await
            .map_err(|e| match e {
                webrtc_data::PeerError::Sdp(m) => RpcError::new(40201, "SDP_PARSE_ERROR", m),
                e => RpcError::new(40205, "SDP_END_POINT_PROCESS_OFFER_ERROR", e.to_string()),
            })?;
        {
            let mut st = self.lock();
            let Some(w) = webrtc_mut(&mut st, id) else {
                return Err(RpcError::not_found(id));
            };
            if w.remote_sdp.is_some() {
                return Err(RpcError::new(
                    40208,
                    "SDP_END_POINT_ALREADY_NEGOTIATED",
                    "Endpoint already negotiated",
                ));
            }
            w.remote_sdp = Some(offer);
            w.local_sdp = Some(answer.clone());
            w.peer = Some(state);
        }
        tokio::spawn(pump(self.me.clone(), id.to_owned(), events));
        info!(endpoint = %id, "data-only WebRTC session answered by a real peer");
        Ok(answer.into())
    }

    /// Puts a real WebRTC peer (a browser under test) behind a simulated participant's DataChannel:
    /// its media stays simulated, its channel becomes real. `offer` is the peer's data-only offer
    /// (a channel created before `createOffer`, as kurento-utils does with `dataChannels: true`);
    /// the answer is returned. ICE then goes through the KMS API like any endpoint's
    /// (`gatherCandidates`, `IceCandidateFound`, `addIceCandidate`), and DATA sent to the
    /// participant reaches the peer.
    pub async fn connect_browser(&self, publisher: &str, offer: &str) -> Result<String, String> {
        {
            let st = self.lock();
            match st.objects.get(publisher).map(|o| &o.kind) {
                Some(Kind::WebRtc(w)) if w.publisher.is_some() && w.data_channels => {
                    if w.peer.is_some() {
                        return Err("a peer is already connected".into());
                    }
                }
                _ => {
                    return Err(format!(
                        "{publisher} is not a participant with data channels"
                    ))
                }
            }
        }
        // The browser opened the channel itself; KMS keeps one per endpoint.
        let (state, events, answer) = answering_peer("kms-sim-browser", publisher, offer, true)
            .await
            .map_err(|e| e.to_string())?;
        {
            let mut st = self.lock();
            let Some(w) = webrtc_mut(&mut st, publisher) else {
                return Err("the participant left".into());
            };
            w.peer = Some(state);
        }
        tokio::spawn(pump(self.me.clone(), publisher.to_owned(), events));
        Ok(answer)
    }

    pub(super) fn gather_candidates(&self, st: &mut State, id: &str, raised: &mut Vec<Raised>) {
        let Some(w) = webrtc_mut(st, id) else {
            return;
        };
        let Some(ps) = w.peer.as_mut() else {
            return;
        };
        if ps.gathering {
            return;
        }
        ps.gathering = true;
        for (mline, cand) in std::mem::take(&mut ps.pending) {
            raised.push(candidate_event(id, &ps.mids, mline, &cand));
        }
        if ps.gathering_done {
            raised.push(Raised {
                object: id.to_owned(),
                ty: "IceGatheringDone",
                data: obj_map(json!({})),
            });
        }
    }

    pub(super) fn add_ice_candidate(
        &self,
        st: &State,
        id: &str,
        p: &Value,
    ) -> Result<(), RpcError> {
        let cand = p
            .get("candidate")
            .filter(|c| c.is_object())
            .ok_or_else(|| RpcError::param("candidate"))?;
        let line = get_str(cand, "candidate")?;
        let mline = cand
            .get("sdpMLineIndex")
            .and_then(Value::as_u64)
            .unwrap_or(0)
            .min(u64::from(u32::MAX)) as u32;
        if let Some(Kind::WebRtc(w)) = st.objects.get(id).map(|o| &o.kind) {
            if let Some(ps) = &w.peer {
                ps.peer.add_remote_candidate(mline, line);
            }
        }
        Ok(())
    }

    pub(super) fn create_data_channel(
        &self,
        st: &mut State,
        id: &str,
        p: &Value,
    ) -> Result<(), RpcError> {
        let Some(w) = webrtc_mut(st, id) else {
            return Ok(());
        };
        let negotiated = w
            .local_sdp
            .as_deref()
            .is_some_and(|s| application_ports(s).iter().any(|p| *p != 0));
        if !negotiated {
            return Err(RpcError::new(
                40111,
                "MEDIA_OBJECT_OPERATION_NOT_SUPPORTED",
                "Cannot create data channel: no data session negotiated",
            ));
        }
        let Some(ps) = w.peer.as_mut() else {
            // A simulated participant's channel is its browser's; nothing to open.
            return Ok(());
        };
        if ps.channel_requested {
            // KMS keeps one channel per endpoint and destroys further ones.
            debug!(endpoint = %id, "second createDataChannel ignored (one channel per endpoint)");
            return Ok(());
        }
        let label = p.get("label").and_then(Value::as_str).unwrap_or("");
        let ordered = p.get("ordered").and_then(Value::as_bool).unwrap_or(true);
        ps.peer.open_channel(label, ordered).map_err(|e| {
            RpcError::new(40111, "MEDIA_OBJECT_OPERATION_NOT_SUPPORTED", e.to_string())
        })?;
        ps.channel_requested = true;
        Ok(())
    }

    /// What the simulated participant behind publisher `endpoint` received on its DataChannel,
    /// oldest first (the last 512), and how many messages in all.
    pub fn data_received(&self, endpoint: &str) -> (Vec<String>, u64) {
        match self.lock().objects.get(endpoint).map(|o| &o.kind) {
            Some(Kind::WebRtc(w)) => (w.inbox.messages.iter().cloned().collect(), w.inbox.total),
            _ => (Vec::new(), 0),
        }
    }

    /// Endpoints answered by a real WebRTC peer (for tests and leak checks).
    pub fn webrtc_peers(&self) -> usize {
        self.lock()
            .objects
            .values()
            .filter(|o| matches!(&o.kind, Kind::WebRtc(w) if w.peer.is_some()))
            .count()
    }

    fn on_peer_event(&self, id: &str, ev: PeerEvent) {
        let mut raised = Vec::new();
        let mut relay: Vec<Arc<DataPeer>> = Vec::new();
        {
            let mut st = self.lock();
            let Some(w) = webrtc_mut(&mut st, id) else {
                return;
            };
            let Some(ps) = w.peer.as_mut() else {
                return;
            };
            match &ev {
                PeerEvent::LocalCandidate {
                    sdp_mline_index,
                    candidate,
                } => {
                    if ps.gathering {
                        raised.push(candidate_event(id, &ps.mids, *sdp_mline_index, candidate));
                    } else {
                        ps.pending.push((*sdp_mline_index, candidate.clone()));
                    }
                }
                PeerEvent::GatheringDone => {
                    ps.gathering_done = true;
                    if ps.gathering {
                        raised.push(Raised {
                            object: id.to_owned(),
                            ty: "IceGatheringDone",
                            data: obj_map(json!({})),
                        });
                    }
                }
                PeerEvent::ChannelOpen { id: channel, .. } => {
                    // KMS 7.3 raises it twice per endpoint.
                    for _ in 0..2 {
                        raised.push(Raised {
                            object: id.to_owned(),
                            ty: "DataChannelOpened",
                            data: obj_map(json!({ "channelId": channel })),
                        });
                    }
                }
                PeerEvent::ChannelClosed { id: channel } => raised.push(Raised {
                    object: id.to_owned(),
                    ty: "DataChannelClosed",
                    data: obj_map(json!({ "channelId": channel })),
                }),
                PeerEvent::Connection(state) => debug!(endpoint = %id, state, "peer connection"),
                PeerEvent::Error(e) => warn!(endpoint = %id, error = %e, "peer error"),
                PeerEvent::Text { .. } | PeerEvent::Binary { .. } => {}
            }
            let text = match ev {
                PeerEvent::Text { text, .. } => Some(text),
                // KMS keeps the PPID between channels; the simulated browser records binary as a note.
                PeerEvent::Binary { bytes, .. } => Some(format!("<binary {} bytes>", bytes.len())),
                _ => None,
            };
            if let Some(text) = text {
                let sinks: Vec<String> = st
                    .links
                    .iter()
                    .filter(|l| l.source == id && l.media == "DATA" && l.sink != id)
                    .map(|l| l.sink.clone())
                    .collect();
                for sink in sinks {
                    let Some(Obj {
                        kind: Kind::WebRtc(s),
                        name,
                        ..
                    }) = st.objects.get_mut(&sink)
                    else {
                        continue;
                    };
                    if let Some(ps) = &s.peer {
                        relay.push(ps.peer.clone());
                    } else if s.publisher.is_some() && s.data_channels {
                        if s.inbox.messages.len() == INBOX_CAPACITY {
                            s.inbox.messages.pop_front();
                        }
                        s.inbox.messages.push_back(text.clone());
                        s.inbox.total += 1;
                        info!(participant = name.as_deref().unwrap_or(&sink), text = %text, "DataChannel message delivered");
                    }
                }
                for peer in relay.drain(..) {
                    if let Err(e) = peer.send_text(&text) {
                        debug!(error = %e, "relay to a peer-backed endpoint failed");
                    }
                }
            }
        }
        self.deliver(raised);
    }
}

/// The WebRtcEndpoint `id`, if it is one.
fn webrtc_mut<'a>(st: &'a mut State, id: &str) -> Option<&'a mut super::WebRtc> {
    match st.objects.get_mut(id) {
        Some(Obj {
            kind: Kind::WebRtc(w),
            ..
        }) => Some(w),
        _ => None,
    }
}

/// Starts a peer, answers `offer` with it, and returns its state, events and answer.
async fn answering_peer(
    kind: &str,
    id: &str,
    offer: &str,
    channel_requested: bool,
) -> Result<(PeerState, mpsc::Receiver<PeerEvent>, String), webrtc_data::PeerError> {
    let short: String = id
        .rsplit('/')
        .next()
        .unwrap_or(id)
        .chars()
        .take(8)
        .collect();
    let (peer, events) = DataPeer::start(PeerOptions {
        name: format!("{kind}-{short}"),
        ..Default::default()
    })?;
    let answer = peer.answer_offer(offer).await?;
    let mids = webrtc_data::media_ids(&answer);
    let state = PeerState {
        peer: Arc::new(peer),
        pending: Vec::new(),
        gathering: false,
        gathering_done: false,
        channel_requested,
        mids,
    };
    Ok((state, events, answer))
}

fn candidate_event(id: &str, mids: &[String], mline: u32, candidate: &str) -> Raised {
    let mid = mids
        .get(mline as usize)
        .cloned()
        .unwrap_or_else(|| mline.to_string());
    Raised {
        object: id.to_owned(),
        ty: "IceCandidateFound",
        data: obj_map(json!({"candidate": {
            "__module__": "kurento", "__type__": "IceCandidate",
            "candidate": candidate, "sdpMLineIndex": mline, "sdpMid": mid}})),
    }
}

/// Delivers a peer's events until the peer is gone (released with its endpoint).
async fn pump(me: std::sync::Weak<MediaSet>, id: String, mut events: mpsc::Receiver<PeerEvent>) {
    while let Some(ev) = events.recv().await {
        let Some(ms) = me.upgrade() else {
            return;
        };
        ms.on_peer_event(&id, ev);
    }
}
