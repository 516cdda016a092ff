//! What a receiver is configured with, hands out and counts.

use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use gstreamer as gst;
use gstreamer_video as gst_video;

use crate::media::srtp::SdesKey;

/// A video codec the tap can receive (the publisher's, so KMS never transcodes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VideoCodec {
    /// `VP8`, `H264` or `VP9`.
    pub encoding: String,
    /// `a=fmtp` parameters (H.264 profile and packetization mode).
    pub fmtp: Option<String>,
}

/// One media of the receiver.
#[derive(Debug, Clone)]
pub struct MediaPorts {
    /// Even RTP port (RTCP = +1).
    pub rtp_port: u16,
    /// Payload type of our offer.
    pub payload_type: u8,
}

/// What to receive.
#[derive(Debug, Clone)]
pub struct ReceiverConfig {
    /// Address the sockets bind to (and the offer announces).
    pub bind_ip: IpAddr,
    /// Audio (Opus), if tapped.
    pub audio: Option<MediaPorts>,
    /// Video and its codec, if tapped.
    pub video: Option<(MediaPorts, VideoCodec)>,
    /// Jitterbuffer latency in ms (audio).
    pub latency_ms: u32,
    /// Jitterbuffer latency in ms (video).
    pub video_latency_ms: u32,
    /// SRTP: our key (for the RTCP we send KMS). KMS's key comes later, from its answer, through
    /// [`Receiver::set_kms_keys`]; until then nothing is decrypted.
    pub srtp: Option<SdesKey>,
    /// Which threads receive and decode.
    pub threads: ReceiveThreads,
}

/// Which threads receive a tap's packets and decode them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum ReceiveThreads {
    /// rtpbin per tap (the default): sockets, jitterbuffers and RTCP each on threads of their own,
    /// about eleven per tapped participant. Reorders packets within `latency_ms`; sends RTCP
    /// receiver reports and PLI; reads the sender's clock from its reports.
    #[default]
    PerTap,
    /// Sockets polled and media decoded on threads shared by every tap (GStreamer threadshare
    /// contexts, one thread each; this is the context's name): no thread per tapped participant.
    /// No jitterbuffer (a packet arriving after a later one is dropped by the depayloader and
    /// concealed like a loss) and no RTCP (keyframes are asked of KMS through its API; capture
    /// times are arrival times). For a daemon beside KMS, where packets do not reorder.
    Shared(String),
}

/// A decoded video frame.
pub struct DecodedFrame {
    /// The frame (I420), shared with GStreamer: no copy.
    pub buffer: gst::Buffer,
    /// Its layout.
    pub info: gst_video::VideoInfo,
    /// Capture time, Unix µs.
    pub capture_us: u64,
}

/// Decoded audio.
pub struct DecodedAudio<'a> {
    /// Mono F32 samples at 48 kHz.
    pub samples: &'a [f32],
    /// Capture time of the first sample, Unix µs.
    pub capture_us: u64,
}

/// Where decoded media goes (called on GStreamer streaming threads: keep it short).
pub trait MediaSink: Send + Sync + 'static {
    /// A decoded video frame.
    fn video(&self, frame: DecodedFrame);
    /// Decoded audio.
    fn audio(&self, audio: DecodedAudio<'_>);
}

/// Counters of one receiver.
#[derive(Debug, Default)]
pub struct ReceiverStats {
    /// Video frames decoded.
    pub video_frames: AtomicU64,
    /// Audio buffers decoded.
    pub audio_buffers: AtomicU64,
    /// GStreamer errors seen on the bus.
    pub errors: AtomicU64,
    /// Buffers whose capture time came from RTCP sender reports (anchored to our clock; the rest:
    /// arrival time).
    pub ntp_timestamps: AtomicU64,
    /// Streams whose sender clock was judged unusable (capture times from arrival instead).
    pub sender_clock_unusable: AtomicU64,
    /// Keyframe requests sent upstream (rtpsession turns them into RTCP PLI/FIR to KMS; KMS 7.x
    /// does not forward them to the browser): after loss, on a new tap, or from the watcher.
    pub keyframe_requests: AtomicU64,
    /// H.264 frames dropped before the first keyframe (nothing to decode them against).
    pub video_frames_before_keyframe: AtomicU64,
    /// Keyframe requests held back because one was sent less than [`KEYFRAME_REQUEST_INTERVAL`] ago.
    pub keyframe_requests_throttled: AtomicU64,
    /// Packets libsrtp refused with KMS's keys known (authentication failed, a replay), each
    /// counted when the next packet on its pad went in first (a packet in flight is not one).
    /// What was dropped before the keys were known (KMS may send RTCP between its answer and our
    /// `connect`) is expected and not counted.
    pub srtp_refused: AtomicU64,
    /// Shared receive threads: video packets put back in order, given up on, dropped as late.
    pub video_reordered: AtomicU64,
    /// See `video_reordered`.
    pub video_reorder_lost: AtomicU64,
    /// See `video_reordered`.
    pub video_reorder_late: AtomicU64,
}

impl ReceiverStats {
    /// SRTP/SRTCP packets refused once the keys were known (authentication failed, a replay).
    pub fn srtp_rejected(&self) -> u64 {
        self.srtp_refused.load(Ordering::Relaxed)
    }
}

/// KMS's keys, per session, once its answer is read.
pub(crate) type KmsKeys = Arc<Mutex<[Option<SdesKey>; 2]>>;
/// The `srtpdec` of each session, once rtpbin asked for it.
pub(crate) type SrtpDecoders = Arc<Mutex<[Option<gst::Element>; 2]>>;
/// The video session's jitterbuffer (rtpbin makes it when the first packet arrives).
pub(crate) type VideoJitterbuffer = Arc<Mutex<Option<gst::glib::WeakRef<gst::Element>>>>;

/// What the tap leg did to a video stream's packets, as its jitterbuffer counts them (running
/// totals since the tap started).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TapLegPackets {
    /// Packets given up on: never arrived, nor their retransmission, within the latency.
    pub lost: u64,
    /// Packets that arrived after they had been given up on (reordered beyond the latency, or a
    /// retransmission too late).
    pub late: u64,
    /// Retransmissions asked of KMS (RTCP generic NACK; none on shared receive threads).
    pub retransmission_requests: u64,
    /// Packets that arrived after a later one and were put back in order.
    pub reordered: u64,
}

/// Receiver errors.
#[derive(Debug, thiserror::Error)]
pub enum ReceiverError {
    /// Missing plugin.
    #[error("GStreamer element `{0}` is missing: run scripts/setup (GStreamer plugins good/bad/ugly/libav)")]
    MissingElement(&'static str),
    /// Codec not supported.
    #[error("cannot receive video codec {0}")]
    Codec(String),
    /// Anything else from GStreamer.
    #[error("GStreamer: {0}")]
    Gst(String),
}

/// The two sessions of a tap, by index (rtpbin's session ids).
pub(crate) const AUDIO: usize = 0;
pub(crate) const VIDEO: usize = 1;

/// At most one keyframe request upstream per this interval and tap. Under packet loss the
/// depayloader asks for a keyframe after every lost packet; each request reaches the publisher's
/// browser, whose keyframes are several times larger than delta frames: unthrottled, loss would
/// raise the sender's bitrate and with it the loss.
pub const KEYFRAME_REQUEST_INTERVAL: std::time::Duration = std::time::Duration::from_millis(500);
