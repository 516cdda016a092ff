//! A data-only WebRTC peer (ICE, DTLS, SCTP, DataChannels) on GStreamer's `webrtcbin`, driven from
//! async Rust.
//!
//! It exists for one conversation: a service talking to a Kurento `WebRtcEndpoint` that has
//! `useDataChannels` set. Two facts of Kurento shape it:
//!
//! - KMS resets a channel whose DCEP OPEN carries a priority outside 0/128/256/512/1024, and
//!   `webrtcbin` can only send 64/192/384/768. So this peer never opens a channel itself towards
//!   KMS: the KMS side creates it (`WebRtcEndpoint.createDataChannel`) and the peer adopts it from
//!   `on-data-channel`.
//! - `webrtcbin` only puts an `m=application` section in its offer when a channel exists. The peer
//!   therefore adds one *pre-negotiated* channel on a high stream id before offering
//!   ([`DataPeer::create_offer`]); pre-negotiated channels send no DCEP OPEN, so KMS never sees it,
//!   and nothing is ever sent on it.
//!
//! The peer is also the simulator's stand-in for the KMS side of the same conversation
//! ([`DataPeer::answer_offer`], [`DataPeer::open_channel`]).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use gst::prelude::*;
use gstreamer as gst;
use gstreamer_sdp as gst_sdp;
use gstreamer_webrtc as gst_webrtc;
use gstreamer_webrtc::{WebRTCDataChannel, WebRTCDataChannelState, WebRTCSDPType};
use tokio::sync::{mpsc, oneshot};
use tracing::debug;

mod dtls;
pub mod task_peer;
pub use task_peer::TaskPeer;

/// Stream id of the pre-negotiated channel that makes `webrtcbin` offer `m=application`. High, so
/// it never collides with the ids either side picks for real channels (0, 1, 2, ...).
pub const SDP_PLACEHOLDER_STREAM: i32 = 1001;
const SDP_PLACEHOLDER_LABEL: &str = "sdp-placeholder";
const NEGOTIATION_TIMEOUT: Duration = Duration::from_secs(10);

/// What can go wrong.
#[derive(Debug, thiserror::Error)]
pub enum PeerError {
    /// A GStreamer element is missing (`webrtcbin` needs gst-plugins-bad and libnice's plugin).
    #[error("GStreamer element '{0}' is not available (install gstreamer1.0-plugins-bad and gstreamer1.0-nice)")]
    MissingElement(&'static str),
    /// GStreamer refused something.
    #[error("GStreamer: {0}")]
    Gst(String),
    /// The remote description could not be parsed or applied.
    #[error("bad SDP: {0}")]
    Sdp(String),
    /// No socket for ICE (no local address, or no free port in the range).
    #[error("network: {0}")]
    Network(String),
    /// No DTLS certificate (the TLS library failed to make one).
    #[error("DTLS: {0}")]
    Dtls(String),
    /// A negotiation step did not finish in time.
    #[error("{0} timed out")]
    Timeout(&'static str),
}

/// Why a message was not sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SendError {
    /// No channel is open (yet, or any more).
    #[error("no open data channel")]
    NotOpen,
    /// More than the allowed bytes are still queued in SCTP: the receiver or the path is slow.
    #[error("data channel backlog over the limit")]
    Backlog,
    /// The stack refused the message.
    #[error("data channel refused the message")]
    Refused,
}

/// What the peer reports, in order, through the bounded channel returned by [`DataPeer::start`].
#[derive(Debug, Clone, PartialEq)]
pub enum PeerEvent {
    /// A local ICE candidate to send to the remote side (`a=candidate:` text without the prefix
    /// `a=`, as in SDP and in Kurento's `IceCandidate.candidate`).
    LocalCandidate {
        /// The m-line the candidate belongs to.
        sdp_mline_index: u32,
        /// The candidate line.
        candidate: String,
    },
    /// ICE gathering finished.
    GatheringDone,
    /// A channel is open: adopted from the remote side or opened here.
    ChannelOpen {
        /// Label.
        label: String,
        /// SCTP stream id.
        id: i32,
    },
    /// A channel closed.
    ChannelClosed {
        /// SCTP stream id.
        id: i32,
    },
    /// A text message arrived.
    Text {
        /// SCTP stream id it came on.
        id: i32,
        /// The message.
        text: String,
    },
    /// A binary message arrived.
    Binary {
        /// SCTP stream id it came on.
        id: i32,
        /// The message.
        bytes: Vec<u8>,
    },
    /// The peer connection state changed (`new`, `connecting`, `connected`, `failed`, ...).
    Connection(String),
    /// GStreamer reported an error on the peer's pipeline.
    Error(String),
}

/// Settings of a peer.
#[derive(Debug, Clone)]
pub struct PeerOptions {
    /// Name of the GStreamer pipeline (shows in logs).
    pub name: String,
    /// Capacity of the event channel; events beyond it are dropped and counted (see
    /// [`DataPeer::dropped_events`]).
    pub event_capacity: usize,
    /// Bytes allowed to wait in SCTP before [`DataPeer::send_text`] refuses with
    /// [`SendError::Backlog`].
    pub max_backlog_bytes: u64,
    /// UDP ports the ICE agent may use (inclusive), for firewalls; `None`: any.
    pub ice_ports: Option<(u16, u16)>,
}

impl Default for PeerOptions {
    fn default() -> Self {
        PeerOptions {
            name: "webrtc-data".into(),
            event_capacity: 256,
            max_backlog_bytes: 64 * 1024,
            ice_ports: None,
        }
    }
}

struct Shared {
    events: mpsc::Sender<PeerEvent>,
    /// Channels in use (never the SDP placeholder), oldest first.
    channels: Mutex<Vec<WebRTCDataChannel>>,
    dropped: std::sync::atomic::AtomicU64,
}

impl Shared {
    fn emit(&self, ev: PeerEvent) {
        if self.events.try_send(ev).is_err() {
            self.dropped
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
    }

    /// `ChannelOpen` for `channel`, unless `reported` says it went out already.
    fn report_open(&self, channel: &WebRTCDataChannel, reported: &std::sync::atomic::AtomicBool) {
        if !reported.swap(true, std::sync::atomic::Ordering::SeqCst) {
            self.emit(PeerEvent::ChannelOpen {
                label: channel.label().map(|l| l.to_string()).unwrap_or_default(),
                id: channel.id(),
            });
        }
    }

    fn adopt(self: &Arc<Self>, channel: &WebRTCDataChannel) {
        if channel.label().as_deref() == Some(SDP_PLACEHOLDER_LABEL) {
            return;
        }
        // Listed before any handler can report it open: a `ChannelOpen` event means sendable.
        self.channels
            .lock()
            .expect("channels lock")
            .push(channel.clone());
        // Reported open once: the channel may open between this handler's connection and the
        // state check below (a channel created once SCTP is up opens within milliseconds).
        let reported = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let weak = Arc::downgrade(self);
        let reported_here = reported.clone();
        channel.connect_on_open(move |ch| {
            if let Some(s) = weak.upgrade() {
                s.report_open(ch, &reported_here);
            }
        });
        let weak = Arc::downgrade(self);
        channel.connect_on_close(move |ch| {
            if let Some(s) = weak.upgrade() {
                s.channels
                    .lock()
                    .expect("channels lock")
                    .retain(|c| c != ch);
                s.emit(PeerEvent::ChannelClosed { id: ch.id() });
            }
        });
        let weak = Arc::downgrade(self);
        channel.connect_on_error(move |ch, err| {
            if let Some(s) = weak.upgrade() {
                s.emit(PeerEvent::Error(format!("data channel {}: {err}", ch.id())));
            }
        });
        let weak = Arc::downgrade(self);
        channel.connect_on_message_string(move |ch, text| {
            if let Some(s) = weak.upgrade() {
                s.emit(PeerEvent::Text {
                    id: ch.id(),
                    text: text.unwrap_or_default().to_owned(),
                });
            }
        });
        let weak = Arc::downgrade(self);
        channel.connect_on_message_data(move |ch, bytes| {
            if let Some(s) = weak.upgrade() {
                s.emit(PeerEvent::Binary {
                    id: ch.id(),
                    bytes: bytes.map(|b| b.to_vec()).unwrap_or_default(),
                });
            }
        });
        // A channel announced by the remote side may already be open when we get it.
        if channel.ready_state() == WebRTCDataChannelState::Open {
            self.report_open(channel, &reported);
        }
    }
}

/// One data-only WebRTC peer: a GStreamer pipeline holding a `webrtcbin`.
pub struct DataPeer {
    pipeline: gst::Pipeline,
    webrtc: gst::Element,
    shared: Arc<Shared>,
    max_backlog: u64,
    placeholder: Mutex<Option<WebRTCDataChannel>>,
}

impl std::fmt::Debug for DataPeer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DataPeer")
            .field("pipeline", &self.pipeline.name())
            .finish()
    }
}

impl DataPeer {
    /// Builds and starts the peer. Events arrive on the returned receiver.
    pub fn start(options: PeerOptions) -> Result<(DataPeer, mpsc::Receiver<PeerEvent>), PeerError> {
        gst::init().map_err(|e| PeerError::Gst(e.to_string()))?;
        let (tx, rx) = mpsc::channel(options.event_capacity.max(1));
        let shared = Arc::new(Shared {
            events: tx,
            channels: Mutex::new(Vec::new()),
            dropped: Default::default(),
        });
        let pipeline = gst::Pipeline::with_name(&options.name);
        let webrtc = gst::ElementFactory::make("webrtcbin")
            .name("webrtc")
            .build()
            .map_err(|_| PeerError::MissingElement("webrtcbin"))?;
        if gst::ElementFactory::find("nicesrc").is_none() {
            return Err(PeerError::MissingElement("nicesrc"));
        }
        // Kurento rejects the bundle-only m=application of a max-bundle offer.
        webrtc.set_property("bundle-policy", gst_webrtc::WebRTCBundlePolicy::MaxCompat);
        configure_ice(&webrtc, options.ice_ports);
        pipeline
            .add(&webrtc)
            .map_err(|e| PeerError::Gst(e.to_string()))?;

        let weak = Arc::downgrade(&shared);
        webrtc.connect("on-ice-candidate", false, move |args| {
            let mline = args[1].get::<u32>().ok()?;
            let candidate = args[2].get::<String>().ok()?;
            if let Some(s) = weak.upgrade() {
                s.emit(PeerEvent::LocalCandidate {
                    sdp_mline_index: mline,
                    candidate,
                });
            }
            None
        });
        let weak = Arc::downgrade(&shared);
        webrtc.connect("on-data-channel", false, move |args| {
            let channel = args[1].get::<WebRTCDataChannel>().ok()?;
            if let Some(s) = weak.upgrade() {
                debug!(label = ?channel.label(), id = channel.id(), priority = ?channel.priority(), "remote data channel");
                s.adopt(&channel);
            }
            None
        });
        let weak = Arc::downgrade(&shared);
        webrtc.connect_notify(Some("ice-gathering-state"), move |w, _| {
            let state = w.property::<gst_webrtc::WebRTCICEGatheringState>("ice-gathering-state");
            if state == gst_webrtc::WebRTCICEGatheringState::Complete {
                if let Some(s) = weak.upgrade() {
                    s.emit(PeerEvent::GatheringDone);
                }
            }
        });
        let weak = Arc::downgrade(&shared);
        webrtc.connect_notify(Some("connection-state"), move |w, _| {
            let state = w.property::<gst_webrtc::WebRTCPeerConnectionState>("connection-state");
            if let Some(s) = weak.upgrade() {
                s.emit(PeerEvent::Connection(connection_state_name(state).into()));
            }
        });
        let bus = pipeline.bus().expect("a pipeline has a bus");
        let weak = Arc::downgrade(&shared);
        bus.set_sync_handler(move |_, msg| {
            if let gst::MessageView::Error(err) = msg.view() {
                if let Some(s) = weak.upgrade() {
                    s.emit(PeerEvent::Error(format!(
                        "{}: {}",
                        err.src()
                            .map(|s| s.path_string().to_string())
                            .unwrap_or_default(),
                        err.error()
                    )));
                }
            }
            gst::BusSyncReply::Drop
        });
        pipeline
            .set_state(gst::State::Playing)
            .map_err(|e| PeerError::Gst(format!("cannot start webrtcbin: {e}")))?;
        Ok((
            DataPeer {
                pipeline,
                webrtc,
                shared,
                max_backlog: options.max_backlog_bytes,
                placeholder: Mutex::new(None),
            },
            rx,
        ))
    }

    /// Creates an offer with one `m=application` section (and nothing else), sets it as the local
    /// description and returns its text.
    pub async fn create_offer(&self) -> Result<String, PeerError> {
        {
            let mut placeholder = self.placeholder.lock().expect("placeholder lock");
            if placeholder.is_none() {
                let init = gst::Structure::builder("config")
                    .field("negotiated", true)
                    .field("id", SDP_PLACEHOLDER_STREAM)
                    .build();
                let ch = self
                    .webrtc
                    .emit_by_name::<Option<WebRTCDataChannel>>(
                        "create-data-channel",
                        &[&SDP_PLACEHOLDER_LABEL, &init],
                    )
                    .ok_or_else(|| PeerError::Gst("create-data-channel refused".into()))?;
                *placeholder = Some(ch);
            }
        }
        self.create_and_set_local("create-offer", "offer").await
    }

    /// Applies the remote answer to our offer.
    pub async fn accept_answer(&self, answer: &str) -> Result<(), PeerError> {
        let desc = description(WebRTCSDPType::Answer, answer)?;
        self.set_description("set-remote-description", desc).await
    }

    /// Applies a remote offer and returns our answer (already set as the local description).
    pub async fn answer_offer(&self, offer: &str) -> Result<String, PeerError> {
        let desc = description(WebRTCSDPType::Offer, offer)?;
        self.set_description("set-remote-description", desc).await?;
        self.create_and_set_local("create-answer", "answer").await
    }

    /// `create-offer` / `create-answer`, then `set-local-description`; returns the SDP text.
    async fn create_and_set_local(
        &self,
        signal: &'static str,
        field: &'static str,
    ) -> Result<String, PeerError> {
        let reply = self
            .promise(signal, |p| {
                [None::<gst::Structure>.to_value(), p.to_value()]
            })
            .await?;
        let desc = reply
            .and_then(|s| s.get::<gst_webrtc::WebRTCSessionDescription>(field).ok())
            .ok_or_else(|| PeerError::Sdp(format!("{signal} gave no {field}")))?;
        let text = desc
            .sdp()
            .as_text()
            .map_err(|e| PeerError::Sdp(e.to_string()))?;
        self.set_description("set-local-description", desc).await?;
        Ok(text)
    }

    /// Adds a remote ICE candidate (`candidate:...`, with or without the `a=` prefix). Malformed
    /// candidates are ignored by the ICE agent, as browsers do.
    pub fn add_remote_candidate(&self, sdp_mline_index: u32, candidate: &str) {
        let candidate = candidate.trim().trim_start_matches("a=");
        if candidate.is_empty() || !candidate.starts_with("candidate:") {
            return;
        }
        self.webrtc
            .emit_by_name::<()>("add-ice-candidate", &[&sdp_mline_index, &candidate]);
    }

    /// Opens a channel from this side (what KMS does on `createDataChannel`).
    pub fn open_channel(&self, label: &str, ordered: bool) -> Result<(), PeerError> {
        // GStreamer 1.22's webrtcbin sends the DCEP OPEN twice when a channel is created while
        // its SCTP association comes up (create-data-channel and the transport's state handler
        // both start the negotiation; observed), and a peer that follows RFC 8832 to the letter
        // (str0m, the daemon's) closes a channel that gets a second OPEN. KMS queues
        // createDataChannel until its association is up and sends one OPEN; so does this, by
        // creating the channel only once the association is up.
        let transport = self
            .webrtc
            .property::<Option<gst_webrtc::WebRTCSCTPTransport>>("sctp-transport");
        let Some(transport) = transport else {
            return create_channel(&self.webrtc, &self.shared, label, ordered);
        };
        let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let deferred = {
            let webrtc = self.webrtc.clone();
            let shared = Arc::downgrade(&self.shared);
            let done = done.clone();
            let label = label.to_owned();
            move || {
                if done.swap(true, std::sync::atomic::Ordering::SeqCst) {
                    return;
                }
                let Some(shared) = shared.upgrade() else {
                    return;
                };
                // Not from inside the transport's notify (webrtcbin's own handler runs there):
                // a thread of its own, once per channel.
                let (webrtc, label) = (webrtc.clone(), label.clone());
                std::thread::spawn(move || {
                    if let Err(e) = create_channel(&webrtc, &shared, &label, ordered) {
                        shared.emit(PeerEvent::Error(e.to_string()));
                    }
                });
            }
        };
        let on_connected = deferred.clone();
        transport.connect_state_notify(move |t| {
            if t.state() == gst_webrtc::WebRTCSCTPTransportState::Connected {
                on_connected();
            }
        });
        if transport.state() == gst_webrtc::WebRTCSCTPTransportState::Connected {
            deferred();
        }
        Ok(())
    }

    fn open_channel_handle(&self) -> Option<WebRTCDataChannel> {
        self.shared
            .channels
            .lock()
            .expect("channels lock")
            .iter()
            .find(|c| c.ready_state() == WebRTCDataChannelState::Open)
            .cloned()
    }

    /// Sends a text message on the open channel, unless too much is still queued.
    pub fn send_text(&self, text: &str) -> Result<(), SendError> {
        let ch = self.open_channel_handle().ok_or(SendError::NotOpen)?;
        if ch.buffered_amount() > self.max_backlog {
            return Err(SendError::Backlog);
        }
        ch.send_string_full(Some(text))
            .map_err(|_| SendError::Refused)
    }

    /// Whether the ICE agent would run UPnP-IGD discovery (it never should; `None` when the ICE
    /// implementation is not libnice).
    pub fn upnp_enabled(&self) -> Option<bool> {
        upnp_enabled(&self.webrtc)
    }

    /// Events lost because the consumer did not keep up.
    pub fn dropped_events(&self) -> u64 {
        self.shared
            .dropped
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    async fn set_description(
        &self,
        signal: &'static str,
        desc: gst_webrtc::WebRTCSessionDescription,
    ) -> Result<(), PeerError> {
        self.promise(signal, move |p| [desc.to_value(), p.to_value()])
            .await
            .map(|_| ())
    }

    /// Emits a promise-taking action signal and waits for the reply; an `error` field in the
    /// reply becomes an error.
    async fn promise<const N: usize>(
        &self,
        signal: &'static str,
        args: impl FnOnce(&gst::Promise) -> [glib::Value; N],
    ) -> Result<Option<gst::Structure>, PeerError> {
        let (tx, rx) = oneshot::channel();
        let promise = gst::Promise::with_change_func(move |reply| {
            let _ = tx.send(match reply {
                Ok(s) => Ok(s.map(|s| s.to_owned())),
                Err(e) => Err(format!("{e:?}")),
            });
        });
        {
            // GLib values are not Send: emit in a scope that ends before the await.
            let values = args(&promise);
            let refs: Vec<&dyn ToValue> = values.iter().map(|v| v as &dyn ToValue).collect();
            self.webrtc.emit_by_name::<()>(signal, &refs);
        }
        drop(promise);
        let reply = tokio::time::timeout(NEGOTIATION_TIMEOUT, rx)
            .await
            .map_err(|_| PeerError::Timeout(signal))?
            .map_err(|_| PeerError::Gst(format!("{signal}: promise dropped")))?
            .map_err(|e| PeerError::Gst(format!("{signal}: {e}")))?;
        if let Some(s) = &reply {
            if let Ok(err) = s.get::<glib::Error>("error") {
                return Err(PeerError::Sdp(format!("{signal}: {err}")));
            }
        }
        Ok(reply)
    }
}

impl Drop for DataPeer {
    fn drop(&mut self) {
        for ch in self
            .shared
            .channels
            .lock()
            .map(|mut c| std::mem::take(&mut *c))
            .unwrap_or_default()
        {
            ch.close();
        }
        let _ = self.pipeline.set_state(gst::State::Null);
    }
}

use gst::glib;

/// UDP only (KMS does not need ICE-TCP), within `ports` when given.
fn configure_ice(webrtc: &gst::Element, ports: Option<(u16, u16)>) {
    if webrtc.find_property("ice-agent").is_none() {
        return;
    }
    let ice = webrtc.property::<gst::Object>("ice-agent");
    if ice.find_property("ice-tcp").is_some() {
        ice.set_property("ice-tcp", false);
    }
    // libnice runs UPnP-IGD discovery by default: SSDP multicast to 239.255.255.250 from a server
    // daemon onto the operator's LAN, several times a second per peer. The call needs none of it.
    if let Some(agent) = nice_agent(&ice) {
        if agent.find_property("upnp").is_some() {
            agent.set_property("upnp", false);
        }
    }
    if let Some((min, max)) = ports {
        if ice.find_property("min-rtp-port").is_some()
            && ice.find_property("max-rtp-port").is_some()
        {
            // Max first: the agent refuses a minimum above the current maximum.
            ice.set_property("max-rtp-port", u32::from(max));
            ice.set_property("min-rtp-port", u32::from(min));
        }
    }
}

/// The libnice `NiceAgent` behind webrtcbin's ICE object (GStreamer ≥ 1.20 exposes it as `agent`).
fn nice_agent(ice: &gst::Object) -> Option<glib::Object> {
    ice.find_property("agent")?;
    ice.property::<Option<glib::Object>>("agent")
}

/// Whether an ICE agent would run UPnP discovery (`None`: no libnice agent to ask).
fn upnp_enabled(webrtc: &gst::Element) -> Option<bool> {
    let ice = webrtc.property::<gst::Object>("ice-agent");
    let agent = nice_agent(&ice)?;
    agent.find_property("upnp")?;
    Some(agent.property::<bool>("upnp"))
}

fn description(
    kind: WebRTCSDPType,
    text: &str,
) -> Result<gst_webrtc::WebRTCSessionDescription, PeerError> {
    gst::init().map_err(|e| PeerError::Gst(e.to_string()))?;
    let msg = gst_sdp::SDPMessage::parse_buffer(text.as_bytes())
        .map_err(|_| PeerError::Sdp("unparseable SDP".into()))?;
    if msg.medias().len() == 0 {
        return Err(PeerError::Sdp("no media section".into()));
    }
    Ok(gst_webrtc::WebRTCSessionDescription::new(kind, msg))
}

fn connection_state_name(s: gst_webrtc::WebRTCPeerConnectionState) -> &'static str {
    use gst_webrtc::WebRTCPeerConnectionState as S;
    match s {
        S::New => "new",
        S::Connecting => "connecting",
        S::Connected => "connected",
        S::Disconnected => "disconnected",
        S::Failed => "failed",
        S::Closed => "closed",
        _ => "unknown",
    }
}

/// Creates a channel on `webrtc` and adopts it.
fn create_channel(
    webrtc: &gst::Element,
    shared: &Arc<Shared>,
    label: &str,
    ordered: bool,
) -> Result<(), PeerError> {
    let init = gst::Structure::builder("config")
        .field("ordered", ordered)
        .build();
    let ch = webrtc
        .emit_by_name::<Option<WebRTCDataChannel>>("create-data-channel", &[&label, &init])
        .ok_or_else(|| PeerError::Gst("create-data-channel refused".into()))?;
    shared.adopt(&ch);
    Ok(())
}

/// The `a=mid` of each m-line of an SDP, in order (`IceCandidate.sdpMid` for an m-line index).
pub fn media_ids(sdp: &str) -> Vec<String> {
    sdp.lines()
        .filter_map(|l| l.trim_end().strip_prefix("a=mid:"))
        .map(str::to_owned)
        .collect()
}

/// The `m=application` sections' ports of an SDP, to check what a remote side accepted (0 =
/// rejected).
pub fn application_ports(sdp: &str) -> Vec<u16> {
    sdp.lines()
        .filter_map(|l| l.trim_end().strip_prefix("m=application "))
        .filter_map(|rest| rest.split_whitespace().next()?.parse().ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn application_sections_and_their_ports() {
        let sdp = "v=0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\nm=application 9 UDP/DTLS/SCTP webrtc-datachannel\r\nm=application 0 UDP/DTLS/SCTP webrtc-datachannel\r\nm=application x\r\n";
        assert_eq!(application_ports(sdp), vec![9, 0]);
        assert!(application_ports("garbage").is_empty());
        assert_eq!(
            media_ids("m=application 9 x\r\na=mid:0\r\nm=audio 9 y\r\na=mid:audio1\r\n"),
            vec!["0", "audio1"]
        );
    }

    #[test]
    fn descriptions_need_a_media_section() {
        assert!(matches!(
            description(
                WebRTCSDPType::Offer,
                "v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\n"
            ),
            Err(PeerError::Sdp(_))
        ));
    }
}
