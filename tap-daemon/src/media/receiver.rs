//! The GStreamer side of a tap: RTP in, decoded frames and samples out, built in code.
//!
//! ```text
//! udpsrc(rtp) ─▶ rtpbin session 0/1 (jitterbuffer, 100 ms, drop-on-latency) ─▶ depay ─▶ decode ─▶ appsink
//! udpsrc(rtcp) ─▶ rtpbin ─▶ udpsink(KMS RTCP port): receiver reports, PLI/FIR for keyframes
//! ```
//! Video leaves as I420 at the stream's size, audio as mono F32 at 48 kHz; the chunker converts only
//! the frames and windows a model asked for. Appsinks hold at most one (video) or a few (audio)
//! buffers and drop the oldest, so nothing queues without bound if the chunker falls behind.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use gstreamer as gst;
use gstreamer::prelude::*;
use gstreamer_app as gst_app;
use gstreamer_video as gst_video;
use tracing::{debug, warn};

use crate::media::capture_clock::CaptureClock;
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
    /// Jitterbuffer latency in ms.
    pub latency_ms: u32,
    /// SRTP: our key (for the RTCP we send KMS). KMS's key comes later, from its answer, through
    /// [`Receiver::set_kms_keys`]; until then nothing is decrypted.
    pub srtp: Option<SdesKey>,
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
    /// Keyframe requests sent upstream (rtpsession turns them into RTCP PLI/FIR to KMS, which
    /// forwards them to the browser): after loss, on a new tap, or from the watcher.
    pub keyframe_requests: AtomicU64,
    /// H.264 frames dropped before the first keyframe (nothing to decode them against).
    pub video_frames_before_keyframe: AtomicU64,
    /// Keyframe requests held back because one was sent less than [`KEYFRAME_REQUEST_INTERVAL`] ago.
    pub keyframe_requests_throttled: AtomicU64,
    /// SRTP/SRTCP packets received (before decryption).
    pub srtp_packets_in: AtomicU64,
    /// SRTP/SRTCP packets that came out decrypted; the difference was rejected by libsrtp
    /// (authentication failed, a replay, or no key for the stream yet).
    pub srtp_packets_out: AtomicU64,
    /// Packets dropped before KMS's keys were known (KMS may send RTCP between its answer and our
    /// `connect`): expected, not refusals.
    pub srtp_dropped_before_keys: AtomicU64,
}

impl ReceiverStats {
    /// SRTP/SRTCP packets refused once the keys were known (authentication failed, a replay).
    pub fn srtp_rejected(&self) -> u64 {
        self.srtp_packets_in
            .load(Ordering::Relaxed)
            .saturating_sub(self.srtp_packets_out.load(Ordering::Relaxed))
            .saturating_sub(self.srtp_dropped_before_keys.load(Ordering::Relaxed))
    }
}

/// KMS's keys, per session, once its answer is read.
type KmsKeys = Arc<Mutex<[Option<SdesKey>; 2]>>;
/// The `srtpdec` of each session, once rtpbin asked for it.
type SrtpDecoders = Arc<Mutex<[Option<gst::Element>; 2]>>;

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

fn make(name: &'static str) -> Result<gst::Element, ReceiverError> {
    gst::ElementFactory::make(name)
        .build()
        .map_err(|_| ReceiverError::MissingElement(name))
}

fn gst_err(e: impl std::fmt::Display) -> ReceiverError {
    ReceiverError::Gst(e.to_string())
}

/// A running receiver. Stops (sockets closed, threads joined) when dropped.
pub struct Receiver {
    pipeline: gst::Pipeline,
    rtcp_sinks: [Option<gst::Element>; 2],
    kms_keys: KmsKeys,
    srtp_decoders: SrtpDecoders,
    /// Counters.
    pub stats: Arc<ReceiverStats>,
}

const AUDIO: usize = 0;
const VIDEO: usize = 1;

/// At most one keyframe request upstream per this interval and tap. Under packet loss the
/// depayloader asks for a keyframe after every lost packet; each request reaches the publisher's
/// browser, whose keyframes are several times larger than delta frames: unthrottled, loss would
/// raise the sender's bitrate and with it the loss.
pub const KEYFRAME_REQUEST_INTERVAL: std::time::Duration = std::time::Duration::from_millis(500);

fn unix_us_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_micros() as u64
}

/// The sender's capture time of a buffer, µs on the sender's NTP clock taken as Unix time: the
/// reference timestamp rtpbin derives from RTCP sender reports. Not comparable with our clock as it
/// is (KMS's sender-report clock is its own): [`CaptureClock`] anchors it.
fn sender_us(buffer: &gst::BufferRef) -> Option<u64> {
    let ntp_caps = gst::Caps::new_empty_simple("timestamp/x-ntp");
    buffer
        .iter_meta::<gst::ReferenceTimestampMeta>()
        .find(|meta| meta.reference().can_intersect(&ntp_caps))
        // NTP epoch 1900 → Unix epoch 1970 (wrapping: a sender clock near 1900 is still a clock).
        .map(|meta| (meta.timestamp().nseconds() / 1000).wrapping_sub(2_208_988_800 * 1_000_000))
}

/// When a buffer arrived, our Unix µs: the running time the jitterbuffer gave it (socket arrival,
/// de-jittered) on the wall clock; never after now.
fn arrival_us(buffer: &gst::BufferRef, clock_to_unix: &ClockMap) -> u64 {
    let now = unix_us_now();
    match buffer.pts() {
        Some(pts) => clock_to_unix.unix_us(pts).min(now),
        None => now,
    }
}

/// Capture time of a buffer in our clock (see [`CaptureClock`]).
fn capture_us(
    buffer: &gst::BufferRef,
    clock_to_unix: &ClockMap,
    clock: &Mutex<CaptureClock>,
    stats: &ReceiverStats,
    media: &'static str,
) -> u64 {
    let sender = sender_us(buffer);
    let arrival = arrival_us(buffer, clock_to_unix);
    let mut c = clock.lock().unwrap_or_else(|e| e.into_inner());
    let was_usable = !c.unusable;
    let capture = c.capture_us(sender, arrival);
    if was_usable && c.unusable {
        stats.sender_clock_unusable.fetch_add(1, Ordering::Relaxed);
        debug!(
            media,
            offset_us = c.offset_us(),
            "the sender's RTCP clock does not keep time (KMS re-times taps): using arrival times"
        );
    }
    if let Some(s) = sender {
        stats.ntp_timestamps.fetch_add(1, Ordering::Relaxed);
        if c.mapped == 1 || c.mapped.is_multiple_of(900) {
            debug!(
                media,
                sender_us = s,
                arrival_us = arrival,
                offset_us = c.offset_us(),
                "sender clock anchored"
            );
        }
    }
    capture
}

/// Maps pipeline running time to Unix time (the pipeline clock is monotonic).
#[derive(Clone)]
struct ClockMap {
    pipeline: gst::Pipeline,
}

impl ClockMap {
    fn unix_us(&self, running: gst::ClockTime) -> u64 {
        let (Some(clock), Some(base)) = (self.pipeline.clock(), self.pipeline.base_time()) else {
            return unix_us_now();
        };
        let now = clock.time();
        let at = base + running;
        let now_unix = unix_us_now();
        if now >= at {
            now_unix.saturating_sub((now - at).useconds())
        } else {
            now_unix + (at - now).useconds()
        }
    }
}

impl Receiver {
    /// Binds the sockets and starts the pipeline (before KMS is told to connect, so the first
    /// keyframe is not lost).
    pub fn start(config: &ReceiverConfig, sink: Arc<dyn MediaSink>) -> Result<Self, ReceiverError> {
        gst::init().map_err(gst_err)?;
        let pipeline = gst::Pipeline::new();
        let rtpbin = make("rtpbin")?;
        rtpbin.set_property("latency", config.latency_ms);
        rtpbin.set_property("drop-on-latency", true);
        rtpbin.set_property_from_str("rtp-profile", "avpf");
        rtpbin.set_property("add-reference-timestamp-meta", true);
        pipeline.add(&rtpbin).map_err(gst_err)?;
        let stats = Arc::new(ReceiverStats::default());
        let mut rtcp_sinks = [None, None];
        let bind = config.bind_ip.to_string();

        let kms_keys: KmsKeys = Arc::new(Mutex::new([None, None]));
        let srtp_decoders: SrtpDecoders = Arc::new(Mutex::new([None, None]));
        // SRTCP out: one srtpenc with our key, a pad pair per session between rtpbin and the
        // RTCP sink (linked by hand: rtpbin's encoder signals want src pads srtpenc makes only
        // once its sink is requested).
        let rtcp_encoder = match &config.srtp {
            Some(ours) => {
                install_srtp(
                    &rtpbin,
                    kms_keys.clone(),
                    srtp_decoders.clone(),
                    stats.clone(),
                )?;
                let enc = make("srtpenc")?;
                enc.set_property("key", gst::Buffer::from_slice(ours.key.bytes().to_vec()));
                for (p, v) in [
                    ("rtp-cipher", ours.suite.gst_cipher()),
                    ("rtcp-cipher", ours.suite.gst_cipher()),
                    ("rtp-auth", ours.suite.gst_auth()),
                    ("rtcp-auth", ours.suite.gst_auth()),
                ] {
                    enc.set_property_from_str(p, v);
                }
                pipeline.add(&enc).map_err(gst_err)?;
                Some(enc)
            }
            None => None,
        };
        let encrypted = config.srtp.is_some();
        let mut add_session =
            |session: usize, port: u16, caps: gst::Caps| -> Result<(), ReceiverError> {
                // With SRTP the sockets carry SRTP/SRTCP: rtpbin hands them to srtpdec first.
                let caps = if encrypted {
                    let mut c = caps;
                    if let Some(st) = c.make_mut().structure_mut(0) {
                        st.set_name("application/x-srtp");
                    }
                    c
                } else {
                    caps
                };
                let rtp_src = make("udpsrc")?;
                rtp_src.set_property("address", &bind);
                rtp_src.set_property("port", port as i32);
                rtp_src.set_property("caps", &caps);
                let rtcp_src = make("udpsrc")?;
                rtcp_src.set_property("address", &bind);
                rtcp_src.set_property("port", port as i32 + 1);
                rtcp_src.set_property(
                    "caps",
                    gst::Caps::new_empty_simple(if encrypted {
                        "application/x-srtcp"
                    } else {
                        "application/x-rtcp"
                    }),
                );
                let rtcp_sink = make("udpsink")?;
                // Until KMS's answer says where its RTCP port is, reports go nowhere useful.
                rtcp_sink.set_property("host", "127.0.0.1");
                rtcp_sink.set_property("port", 9i32);
                rtcp_sink.set_property("sync", false);
                rtcp_sink.set_property("async", false);
                pipeline
                    .add_many([&rtp_src, &rtcp_src, &rtcp_sink])
                    .map_err(gst_err)?;
                rtp_src
                    .link_pads(
                        Some("src"),
                        &rtpbin,
                        Some(&format!("recv_rtp_sink_{session}")),
                    )
                    .map_err(gst_err)?;
                rtcp_src
                    .link_pads(
                        Some("src"),
                        &rtpbin,
                        Some(&format!("recv_rtcp_sink_{session}")),
                    )
                    .map_err(gst_err)?;
                match &rtcp_encoder {
                    Some(enc) => {
                        rtpbin
                            .link_pads(
                                Some(&format!("send_rtcp_src_{session}")),
                                enc,
                                Some(&format!("rtcp_sink_{session}")),
                            )
                            .map_err(gst_err)?;
                        enc.link_pads(
                            Some(&format!("rtcp_src_{session}")),
                            &rtcp_sink,
                            Some("sink"),
                        )
                        .map_err(gst_err)?;
                    }
                    None => rtpbin
                        .link_pads(
                            Some(&format!("send_rtcp_src_{session}")),
                            &rtcp_sink,
                            Some("sink"),
                        )
                        .map_err(gst_err)?,
                }
                rtcp_sinks[session] = Some(rtcp_sink);
                Ok(())
            };

        if let Some(a) = &config.audio {
            let caps = gst::Caps::builder("application/x-rtp")
                .field("media", "audio")
                .field("encoding-name", "OPUS")
                .field("clock-rate", 48000i32)
                .field("payload", a.payload_type as i32)
                .build();
            add_session(AUDIO, a.rtp_port, caps)?;
        }
        let mut video_codec = None;
        if let Some((v, codec)) = &config.video {
            let enc = codec.encoding.to_ascii_uppercase();
            if !matches!(enc.as_str(), "VP8" | "VP9" | "H264") {
                return Err(ReceiverError::Codec(enc));
            }
            // The rtcp-fb fields make rtpsession turn a force-key-unit event into PLI/FIR.
            let caps = gst::Caps::builder("application/x-rtp")
                .field("media", "video")
                .field("encoding-name", enc.as_str())
                .field("clock-rate", 90000i32)
                .field("payload", v.payload_type as i32)
                .field("rtcp-fb-nack-pli", true)
                .field("rtcp-fb-ccm-fir", true)
                .build();
            add_session(VIDEO, v.rtp_port, caps)?;
            video_codec = Some(enc);
        }

        let clock_map = ClockMap {
            pipeline: pipeline.clone(),
        };
        let weak_pipeline = pipeline.downgrade();
        let pad_stats = stats.clone();
        rtpbin.connect_pad_added(move |_, pad| {
            let name = pad.name();
            let Some(rest) = name.strip_prefix("recv_rtp_src_") else {
                return;
            };
            let Some(pipeline) = weak_pipeline.upgrade() else {
                return;
            };
            let session: usize = rest
                .split('_')
                .next()
                .and_then(|s| s.parse().ok())
                .unwrap_or(99);
            let result = if session == VIDEO {
                link_video(
                    &pipeline,
                    pad,
                    video_codec.as_deref().unwrap_or("VP8"),
                    sink.clone(),
                    clock_map.clone(),
                    pad_stats.clone(),
                )
            } else if session == AUDIO {
                link_audio(
                    &pipeline,
                    pad,
                    sink.clone(),
                    clock_map.clone(),
                    pad_stats.clone(),
                )
            } else {
                return;
            };
            if let Err(e) = result {
                pad_stats.errors.fetch_add(1, Ordering::Relaxed);
                warn!(pad = %name, error = %e, "cannot link the decoder");
            }
        });

        let bus_stats = stats.clone();
        if let Some(bus) = pipeline.bus() {
            bus.set_sync_handler(move |_, msg| {
                match msg.view() {
                    gst::MessageView::Error(e) => {
                        bus_stats.errors.fetch_add(1, Ordering::Relaxed);
                        warn!(error = %e.error(), debug = ?e.debug(), "receiver error");
                    }
                    gst::MessageView::Warning(w) => {
                        debug!(warning = %w.error(), "receiver warning")
                    }
                    _ => {}
                }
                gst::BusSyncReply::Drop
            });
        }
        pipeline
            .set_state(gst::State::Playing)
            .map_err(|e| ReceiverError::Gst(format!("cannot start: {e}")))?;
        Ok(Receiver {
            pipeline,
            rtcp_sinks,
            kms_keys,
            srtp_decoders,
            stats,
        })
    }

    /// KMS's SRTP keys from its answer (SRTP taps; call before KMS is told to connect, so the
    /// first packets decrypt). The decoders forget what they had, so a stream refused for want
    /// of a key (early RTCP) asks again.
    pub fn set_kms_keys(&self, audio: Option<SdesKey>, video: Option<SdesKey>) {
        if let Ok(mut keys) = self.kms_keys.lock() {
            // What was dropped until now had no key to be checked against.
            let s = &self.stats;
            let before = s
                .srtp_packets_in
                .load(Ordering::Relaxed)
                .saturating_sub(s.srtp_packets_out.load(Ordering::Relaxed));
            s.srtp_dropped_before_keys.store(before, Ordering::Relaxed);
            keys[AUDIO] = audio;
            keys[VIDEO] = video;
        }
        if let Ok(decoders) = self.srtp_decoders.lock() {
            for d in decoders.iter().flatten() {
                d.emit_by_name::<()>("clear-keys", &[]);
            }
        }
    }

    /// Where KMS listens for RTCP of `video` (true) or audio.
    pub fn set_kms_rtcp(&self, video: bool, addr: SocketAddr) {
        if let Some(sink) = &self.rtcp_sinks[if video { VIDEO } else { AUDIO }] {
            sink.set_property("host", addr.ip().to_string());
            sink.set_property("port", addr.port() as i32);
        }
    }

    /// Asks for a keyframe: a force-key-unit event upstream from the depayloader, which rtpsession
    /// sends to KMS as PLI (and KMS forwards to the browser).
    pub fn request_keyframe(&self) -> bool {
        let Some(depay) = self.pipeline.by_name("video-depay") else {
            return false;
        };
        let Some(pad) = depay.static_pad("sink") else {
            return false;
        };
        let event = gst_video::UpstreamForceKeyUnitEvent::builder()
            .all_headers(true)
            .build();
        pad.push_event(event)
    }

    /// A handle that can ask for keyframes from another task.
    pub fn keyframe_requester(&self) -> KeyframeRequester {
        KeyframeRequester {
            pipeline: self.pipeline.downgrade(),
        }
    }
}

/// Sends PLI for a receiver (see [`Receiver::request_keyframe`]).
#[derive(Clone)]
pub struct KeyframeRequester {
    pipeline: gst::glib::WeakRef<gst::Pipeline>,
}

impl KeyframeRequester {
    /// True if the request was sent (the video depayloader exists: RTP has arrived).
    pub fn request(&self) -> bool {
        let Some(pipeline) = self.pipeline.upgrade() else {
            return false;
        };
        let Some(depay) = pipeline.by_name("video-depay") else {
            return false;
        };
        let Some(pad) = depay.static_pad("sink") else {
            return false;
        };
        pad.push_event(
            gst_video::UpstreamForceKeyUnitEvent::builder()
                .all_headers(true)
                .build(),
        )
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        let _ = self.pipeline.set_state(gst::State::Null);
    }
}

fn link_video(
    pipeline: &gst::Pipeline,
    pad: &gst::Pad,
    encoding: &str,
    sink: Arc<dyn MediaSink>,
    clock_map: ClockMap,
    stats: Arc<ReceiverStats>,
) -> Result<(), ReceiverError> {
    let (depay, decoder): (gst::Element, Vec<gst::Element>) = match encoding {
        "H264" => (
            make("rtph264depay")?,
            vec![make("h264parse")?, make("avdec_h264")?],
        ),
        "VP9" => (make("rtpvp9depay")?, vec![make("vp9dec")?]),
        _ => (make("rtpvp8depay")?, vec![make("vp8dec")?]),
    };
    depay.set_property("name", "video-depay");
    if depay.has_property("wait-for-keyframe") {
        // Not `wait-for-keyframe`, for any codec: measured on KMS 7.3's tap RTP, a single lost or
        // reordered packet left the depayloader waiting for a keyframe that never counted as one.
        // VP8: 0 frames decoded for the rest of the call at 5 % loss. H.264: 10 frames in 15 s for
        // two publishers at 5 % loss, and 25 in 35 s for three on a busy machine: an H.264 IDR
        // frame is tens of packets, so under loss most keyframes arrive damaged and the wait
        // starts again. Decoding past loss gives a few smeared frames until the requested keyframe
        // arrives (avdec_h264 and vp8dec conceal the damage); the models still see a face.
        depay.set_property("wait-for-keyframe", false);
        depay.set_property("request-keyframe", true);
    }
    if encoding == "H264" {
        // H.264 cannot start anywhere: the decoder needs SPS/PPS (Chrome sends them only with an
        // IDR frame) and an IDR to reference. Until the first keyframe has left the parser,
        // frames are dropped and a keyframe is asked for (the throttle below bounds the asks);
        // from then on everything passes, as for VP8.
        if let Some(parse) = decoder.first() {
            gate_until_first_keyframe(parse, &depay, stats.clone());
        }
    }
    throttle_keyframe_requests(&depay, stats.clone());
    let convert = make("videoconvert")?;
    let appsink = gst_app::AppSink::builder()
        .caps(
            &gst::Caps::builder("video/x-raw")
                .field("format", "I420")
                .build(),
        )
        .max_buffers(1)
        .drop(true)
        .sync(false)
        .build();
    let mut chain = vec![depay.clone()];
    chain.extend(decoder);
    chain.push(convert);
    chain.push(appsink.clone().upcast());
    add_chain(pipeline, &chain)?;
    let clock = Mutex::new(CaptureClock::default());
    appsink.set_callbacks(
        gst_app::AppSinkCallbacks::builder()
            .new_sample(move |s| {
                let sample = s.pull_sample().map_err(|_| gst::FlowError::Eos)?;
                let (Some(buffer), Some(caps)) = (sample.buffer_owned(), sample.caps()) else {
                    return Ok(gst::FlowSuccess::Ok);
                };
                let Ok(info) = gst_video::VideoInfo::from_caps(caps) else {
                    return Ok(gst::FlowSuccess::Ok);
                };
                stats.video_frames.fetch_add(1, Ordering::Relaxed);
                let capture_us = capture_us(&buffer, &clock_map, &clock, &stats, "video");
                sink.video(DecodedFrame {
                    buffer,
                    info,
                    capture_us,
                });
                Ok(gst::FlowSuccess::Ok)
            })
            .build(),
    );
    link_to(pad, &depay)?;
    debug!(encoding, "video decoder linked");
    Ok(())
}

fn link_audio(
    pipeline: &gst::Pipeline,
    pad: &gst::Pad,
    sink: Arc<dyn MediaSink>,
    clock_map: ClockMap,
    stats: Arc<ReceiverStats>,
) -> Result<(), ReceiverError> {
    let depay = make("rtpopusdepay")?;
    let decoder = make("opusdec")?;
    let convert = make("audioconvert")?;
    let resample = make("audioresample")?;
    let appsink = gst_app::AppSink::builder()
        .caps(
            &gst::Caps::builder("audio/x-raw")
                .field("format", "F32LE")
                .field("rate", 48000i32)
                .field("channels", 1i32)
                .field("layout", "interleaved")
                .build(),
        )
        .max_buffers(8)
        .drop(true)
        .sync(false)
        .build();
    let chain: Vec<gst::Element> = vec![
        depay.clone(),
        decoder,
        convert,
        resample,
        appsink.clone().upcast(),
    ];
    add_chain(pipeline, &chain)?;
    let clock = Mutex::new(CaptureClock::default());
    appsink.set_callbacks(
        gst_app::AppSinkCallbacks::builder()
            .new_sample(move |s| {
                let sample = s.pull_sample().map_err(|_| gst::FlowError::Eos)?;
                let Some(buffer) = sample.buffer() else {
                    return Ok(gst::FlowSuccess::Ok);
                };
                let Ok(map) = buffer.map_readable() else {
                    return Ok(gst::FlowSuccess::Ok);
                };
                let bytes = map.as_slice();
                let samples: Vec<f32> = bytes
                    .chunks_exact(4)
                    .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                    .collect();
                stats.audio_buffers.fetch_add(1, Ordering::Relaxed);
                let capture_us = capture_us(buffer, &clock_map, &clock, &stats, "audio");
                sink.audio(DecodedAudio {
                    samples: &samples,
                    capture_us,
                });
                Ok(gst::FlowSuccess::Ok)
            })
            .build(),
    );
    link_to(pad, &depay)?;
    debug!("audio decoder linked");
    Ok(())
}

/// Counts the keyframe requests leaving the depayloader upstream and lets at most one through per
/// [`KEYFRAME_REQUEST_INTERVAL`]. A request held back is not lost: it is remembered and sent with
/// the first packet after the interval (a decoder that asked for a sync point discards its input
/// until a keyframe comes; swallowing its request left video stalled until the sender's next
/// periodic keyframe).
fn throttle_keyframe_requests(depay: &gst::Element, stats: Arc<ReceiverStats>) {
    struct State {
        last: Option<std::time::Instant>,
        pending: bool,
    }
    let Some(pad) = depay.static_pad("sink") else {
        return;
    };
    let state = Arc::new(Mutex::new(State {
        last: None,
        pending: false,
    }));
    let held = state.clone();
    pad.add_probe(gst::PadProbeType::EVENT_UPSTREAM, move |_, info| {
        let Some(gst::PadProbeData::Event(ev)) = &info.data else {
            return gst::PadProbeReturn::Ok;
        };
        if !gst_video::ForceKeyUnitEvent::is(ev) {
            return gst::PadProbeReturn::Ok;
        }
        let mut st = held.lock().unwrap_or_else(|e| e.into_inner());
        let now = std::time::Instant::now();
        if st
            .last
            .is_some_and(|t| now.duration_since(t) < KEYFRAME_REQUEST_INTERVAL)
        {
            st.pending = true;
            stats
                .keyframe_requests_throttled
                .fetch_add(1, Ordering::Relaxed);
            // Consumed here (Handled, not Drop: with Drop the event was released twice,
            // "gst_mini_object_unref: assertion 'mini_object != NULL' failed").
            drop(info.take_event());
            return gst::PadProbeReturn::Handled;
        }
        st.last = Some(now);
        st.pending = false;
        stats.keyframe_requests.fetch_add(1, Ordering::Relaxed);
        gst::PadProbeReturn::Ok
    });
    pad.add_probe(gst::PadProbeType::BUFFER, move |pad, _| {
        let due = {
            let st = state.lock().unwrap_or_else(|e| e.into_inner());
            st.pending
                && st
                    .last
                    .is_none_or(|t| t.elapsed() >= KEYFRAME_REQUEST_INTERVAL)
        };
        if due {
            // Goes through the probe above, which lets it pass and records it.
            let ev = gst_video::UpstreamForceKeyUnitEvent::builder()
                .all_headers(true)
                .build();
            let _ = pad.push_event(ev);
        }
        gst::PadProbeReturn::Ok
    });
}

/// Drops what leaves `parser` until its first keyframe (a buffer without DELTA_UNIT: for
/// h264parse, an IDR access unit with its SPS/PPS), asking `depay` for a keyframe as it drops
/// (through the throttle of [`throttle_keyframe_requests`]); then lets everything through.
fn gate_until_first_keyframe(
    parser: &gst::Element,
    depay: &gst::Element,
    stats: Arc<ReceiverStats>,
) {
    let (Some(src), Some(depay_sink)) = (parser.static_pad("src"), depay.static_pad("sink")) else {
        return;
    };
    let depay_sink = depay_sink.downgrade();
    src.add_probe(gst::PadProbeType::BUFFER, move |_, info| {
        let Some(buffer) = info.buffer() else {
            return gst::PadProbeReturn::Ok;
        };
        if !buffer.flags().contains(gst::BufferFlags::DELTA_UNIT) {
            debug!("first H.264 keyframe: decoding starts");
            return gst::PadProbeReturn::Remove;
        }
        stats
            .video_frames_before_keyframe
            .fetch_add(1, Ordering::Relaxed);
        if let Some(pad) = depay_sink.upgrade() {
            let _ = pad.push_event(
                gst_video::UpstreamForceKeyUnitEvent::builder()
                    .all_headers(true)
                    .build(),
            );
        }
        gst::PadProbeReturn::Drop
    });
}

/// SRTP in: rtpbin asks for a decoder per session (one `srtpdec` for its RTP and RTCP; its
/// `request-key` answered from KMS's keys, by session). Packets in and out of the decoders are
/// counted: the difference is what libsrtp refused (bad authentication, a replay; what went before
/// KMS's keys were known is set apart, [`ReceiverStats::srtp_rejected`]).
fn install_srtp(
    rtpbin: &gst::Element,
    kms_keys: KmsKeys,
    decoders: SrtpDecoders,
    stats: Arc<ReceiverStats>,
) -> Result<(), ReceiverError> {
    let decoder_for = {
        let decoders = decoders.clone();
        move |session: u32| -> Option<gst::Element> {
            let idx = session as usize;
            if idx > VIDEO {
                return None;
            }
            let mut all = decoders.lock().ok()?;
            if let Some(d) = &all[idx] {
                return Some(d.clone());
            }
            let dec = gst::ElementFactory::make("srtpdec").build().ok()?;
            let keys = kms_keys.clone();
            dec.connect("request-key", false, move |args| {
                let ssrc = args.get(1).and_then(|v| v.get::<u32>().ok()).unwrap_or(0);
                let key = keys.lock().ok().and_then(|k| k[idx].clone())?;
                Some(srtp_caps(ssrc, &key).to_value())
            });
            for (pad, counter) in [
                ("rtp_sink", true),
                ("rtcp_sink", true),
                ("rtp_src", false),
                ("rtcp_src", false),
            ] {
                if let Some(p) = dec.static_pad(pad) {
                    let stats = stats.clone();
                    p.add_probe(gst::PadProbeType::BUFFER, move |_, _| {
                        let c = if counter {
                            &stats.srtp_packets_in
                        } else {
                            &stats.srtp_packets_out
                        };
                        c.fetch_add(1, Ordering::Relaxed);
                        gst::PadProbeReturn::Ok
                    });
                }
            }
            all[idx] = Some(dec.clone());
            Some(dec)
        }
    };
    let for_rtp = decoder_for.clone();
    rtpbin.connect("request-rtp-decoder", false, move |args| {
        let session = args.get(1).and_then(|v| v.get::<u32>().ok())?;
        for_rtp(session).map(|d| d.to_value())
    });
    rtpbin.connect("request-rtcp-decoder", false, move |args| {
        let session = args.get(1).and_then(|v| v.get::<u32>().ok())?;
        decoder_for(session).map(|d| d.to_value())
    });
    // Fail here, not silently at the first packet, when the plugin is missing.
    for name in ["srtpdec", "srtpenc"] {
        if gst::ElementFactory::find(name).is_none() {
            return Err(ReceiverError::MissingElement(name));
        }
    }
    Ok(())
}

/// The caps `srtpdec` wants for a stream: KMS's key and suite (KMS uses the suite's tag length on
/// SRTCP too).
fn srtp_caps(ssrc: u32, key: &SdesKey) -> gst::Caps {
    gst::Caps::builder("application/x-srtp")
        .field("ssrc", ssrc)
        .field(
            "srtp-key",
            gst::Buffer::from_slice(key.key.bytes().to_vec()),
        )
        .field("srtp-cipher", key.suite.gst_cipher())
        .field("srtp-auth", key.suite.gst_auth())
        .field("srtcp-cipher", key.suite.gst_cipher())
        .field("srtcp-auth", key.suite.gst_auth())
        .build()
}

/// Links rtpbin's new source pad to the first element of a decode chain.
fn link_to(pad: &gst::Pad, first: &gst::Element) -> Result<(), ReceiverError> {
    let sink = first
        .static_pad("sink")
        .ok_or_else(|| ReceiverError::Gst("depayloader without sink pad".into()))?;
    pad.link(&sink).map_err(gst_err)?;
    Ok(())
}

/// Adds a chain to the pipeline, links it in order and brings it to the pipeline's state.
fn add_chain(pipeline: &gst::Pipeline, chain: &[gst::Element]) -> Result<(), ReceiverError> {
    pipeline.add_many(chain.iter()).map_err(gst_err)?;
    gst::Element::link_many(chain.iter()).map_err(gst_err)?;
    for e in chain {
        e.sync_state_with_parent().map_err(gst_err)?;
    }
    Ok(())
}
