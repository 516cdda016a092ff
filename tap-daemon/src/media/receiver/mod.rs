//! The GStreamer side of a tap: RTP in, decoded frames and samples out, built in code.
//!
//! ```text
//! udpsrc(rtp) ─▶ rtpbin session 0/1 (jitterbuffer: audio 100 ms, video 300 ms) ─▶ depay ─▶ decode ─▶ probe+fakesink (video) / appsink (audio)
//! udpsrc(rtcp) ─▶ rtpbin ─▶ udpsink(KMS RTCP port): receiver reports, NACK, PLI/FIR for keyframes
//! ```
//! Video leaves as I420 at the stream's size, audio as mono F32 at 48 kHz; the chunker converts only
//! the frames and windows a model asked for. Appsinks hold at most one (video) or a few (audio)
//! buffers and drop the oldest, so nothing queues without bound if the chunker falls behind.

mod branches;
mod clock;
pub mod frame_pool;
mod gst_util;
mod shared;
mod srtp_session;
mod types;

pub use shared::CONTEXT_WAIT_MS;
pub use types::{
    DecodedAudio, DecodedFrame, MediaPorts, MediaSink, ReceiveThreads, ReceiverConfig,
    ReceiverError, ReceiverStats, TapLegPackets, VideoCodec, KEYFRAME_REQUEST_INTERVAL,
};

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use gstreamer as gst;
use gstreamer::prelude::*;
use gstreamer_video as gst_video;
use tracing::{debug, warn};

use crate::media::srtp::SdesKey;

use branches::{link_audio, link_video};
use clock::ClockMap;
use gst_util::{gst_err, make};
use srtp_session::install_srtp;
use types::{KmsKeys, SrtpDecoders, VideoJitterbuffer, AUDIO, VIDEO};

/// A running receiver. Stops (sockets closed, threads joined) when dropped.
pub struct Receiver {
    pipeline: gst::Pipeline,
    rtcp_sinks: [Option<gst::Element>; 2],
    kms_keys: KmsKeys,
    srtp_decoders: SrtpDecoders,
    /// The video stream's jitterbuffer, once rtpbin made it (none on shared receive threads).
    video_jitterbuffer: VideoJitterbuffer,
    /// Whether this receiver is on the shared threads (a reorder step instead of a jitterbuffer).
    shared: bool,
    /// Counters.
    pub stats: Arc<ReceiverStats>,
}

impl Receiver {
    /// Binds the sockets and starts the pipeline (before KMS is told to connect, so the first
    /// keyframe is not lost).
    pub fn start(config: &ReceiverConfig, sink: Arc<dyn MediaSink>) -> Result<Self, ReceiverError> {
        gst::init().map_err(gst_err)?;
        if let ReceiveThreads::Shared(context) = &config.threads {
            return Self::start_shared(config, context, sink);
        }
        let pipeline = gst::Pipeline::new();
        let rtpbin = make("rtpbin")?;
        rtpbin.set_property("latency", config.latency_ms);
        rtpbin.set_property("drop-on-latency", true);
        rtpbin.set_property_from_str("rtp-profile", "avpf");
        rtpbin.set_property("add-reference-timestamp-meta", true);
        // Video only: ask KMS to resend what the tap leg lost (generic NACK). KMS's RtpEndpoint
        // keeps the packets it sent (rtprtxqueue) and resends them in-band, as it does for a
        // browser's NACKs; without it a tap fell behind a browser subscribing to the same H.264
        // publisher under loss (36 % of the face rate where the browser decoded 80 % of the
        // frames). Audio is not resent (Opus conceals, and KMS offers no NACK for it).
        let video_jitterbuffer: VideoJitterbuffer = Arc::new(Mutex::new(None));
        let jb_slot = video_jitterbuffer.clone();
        let video_latency_ms = config.video_latency_ms;
        rtpbin.connect("new-jitterbuffer", false, move |args| {
            let session = args.get(2).and_then(|v| v.get::<u32>().ok());
            if session == Some(VIDEO as u32) {
                if let Some(jb) = args.get(1).and_then(|v| v.get::<gst::Element>().ok()) {
                    jb.set_property("latency", video_latency_ms);
                    jb.set_property("do-retransmission", true);
                    *jb_slot.lock().unwrap_or_else(|e| e.into_inner()) = Some(jb.downgrade());
                }
            }
            None
        });
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
                let caps = on_the_wire(caps, encrypted);
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
            add_session(AUDIO, a.rtp_port, audio_caps(a.payload_type))?;
        }
        let mut video_codec = None;
        if let Some((v, codec)) = &config.video {
            let enc = video_encoding(codec)?;
            add_session(VIDEO, v.rtp_port, video_caps(&enc, v.payload_type))?;
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

        watch_bus(&pipeline, stats.clone());
        pipeline
            .set_state(gst::State::Playing)
            .map_err(|e| ReceiverError::Gst(format!("cannot start: {e}")))?;
        Ok(Receiver {
            pipeline,
            rtcp_sinks,
            kms_keys,
            srtp_decoders,
            video_jitterbuffer,
            shared: false,
            stats,
        })
    }

    /// The receive path on shared threads ([`ReceiveThreads::Shared`]): a `ts-udpsrc` per stream
    /// on `context`, no rtpbin, no RTCP; the same decoding branches.
    fn start_shared(
        config: &ReceiverConfig,
        context: &str,
        sink: Arc<dyn MediaSink>,
    ) -> Result<Self, ReceiverError> {
        let pipeline = gst::Pipeline::new();
        let stats = Arc::new(ReceiverStats::default());
        let kms_keys: KmsKeys = Arc::new(Mutex::new([None, None]));
        let srtp_decoders: SrtpDecoders = Arc::new(Mutex::new([None, None]));
        let bind = config.bind_ip.to_string();
        let clock_map = ClockMap {
            pipeline: pipeline.clone(),
        };
        let encrypted = |caps: gst::Caps| on_the_wire(caps, config.srtp.is_some());
        let srtp = |idx: usize| {
            config
                .srtp
                .as_ref()
                .map(|_| (idx, &kms_keys, &srtp_decoders))
        };
        if let Some(a) = &config.audio {
            let pad = shared::add_stream(
                &pipeline,
                context,
                &bind,
                a.rtp_port,
                encrypted(audio_caps(a.payload_type)),
                AUDIO,
                config.latency_ms,
                srtp(AUDIO),
                &stats,
            )?;
            link_audio(
                &pipeline,
                &pad,
                sink.clone(),
                clock_map.clone(),
                stats.clone(),
            )?;
        }
        if let Some((v, codec)) = &config.video {
            let enc = video_encoding(codec)?;
            let pad = shared::add_stream(
                &pipeline,
                context,
                &bind,
                v.rtp_port,
                encrypted(video_caps(&enc, v.payload_type)),
                VIDEO,
                // No NACK on this path: the hold is for reordering only.
                config.latency_ms,
                srtp(VIDEO),
                &stats,
            )?;
            link_video(&pipeline, &pad, &enc, sink, clock_map, stats.clone())?;
        }
        watch_bus(&pipeline, stats.clone());
        pipeline
            .set_state(gst::State::Playing)
            .map_err(|e| ReceiverError::Gst(format!("cannot start: {e}")))?;
        Ok(Receiver {
            pipeline,
            rtcp_sinks: [None, None],
            kms_keys,
            srtp_decoders,
            video_jitterbuffer: Arc::new(Mutex::new(None)),
            shared: true,
            stats,
        })
    }

    /// KMS's SRTP keys from its answer (SRTP taps; call before KMS is told to connect, so the
    /// first packets decrypt). The decoders forget what they had, so a stream refused for want
    /// of a key (early RTCP) asks again.
    pub fn set_kms_keys(&self, audio: Option<SdesKey>, video: Option<SdesKey>) {
        if let Ok(mut keys) = self.kms_keys.lock() {
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
    /// sends to KMS as RTCP. KMS 7.x does not forward it to the browser (the event it makes keeps
    /// the tap's SSRC, unknown to the publisher's session): the watcher's `requestKeyframe` does.
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

impl Receiver {
    /// What the tap leg did to the video stream's packets so far: the jitterbuffer's counts
    /// (`None` before the first packet), or on shared receive threads the reorder step's.
    pub fn tap_leg_video(&self) -> Option<TapLegPackets> {
        if self.shared {
            let n = |c: &std::sync::atomic::AtomicU64| c.load(Ordering::Relaxed);
            return Some(TapLegPackets {
                lost: n(&self.stats.video_reorder_lost),
                late: n(&self.stats.video_reorder_late),
                retransmission_requests: 0,
                reordered: n(&self.stats.video_reordered),
            });
        }
        let jb = self
            .video_jitterbuffer
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()?
            .upgrade()?;
        let stats = jb.property::<gst::Structure>("stats");
        let n = |field: &str| stats.get::<u64>(field).unwrap_or(0);
        Some(TapLegPackets {
            lost: n("num-lost"),
            late: n("num-late"),
            retransmission_requests: n("rtx-count"),
            // rtpjitterbuffer does not count them apart.
            reordered: 0,
        })
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        let _ = self.pipeline.set_state(gst::State::Null);
    }
}

/// Pipeline errors counted and logged (the bus is read synchronously: no thread of its own).
fn watch_bus(pipeline: &gst::Pipeline, bus_stats: Arc<ReceiverStats>) {
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
}

/// A stream's caps as its socket receives it: SRTP when the tap leg is encrypted.
fn on_the_wire(mut caps: gst::Caps, srtp: bool) -> gst::Caps {
    if srtp {
        if let Some(st) = caps.make_mut().structure_mut(0) {
            st.set_name("application/x-srtp");
        }
    }
    caps
}

/// The caps of a tap's Opus stream.
fn audio_caps(payload_type: u8) -> gst::Caps {
    gst::Caps::builder("application/x-rtp")
        .field("media", "audio")
        .field("encoding-name", "OPUS")
        .field("clock-rate", 48000i32)
        .field("payload", payload_type as i32)
        .build()
}

/// The codec's name as GStreamer's caps spell it, if the receiver decodes it.
fn video_encoding(codec: &VideoCodec) -> Result<String, ReceiverError> {
    let enc = codec.encoding.to_ascii_uppercase();
    if !matches!(enc.as_str(), "VP8" | "VP9" | "H264") {
        return Err(ReceiverError::Codec(enc));
    }
    Ok(enc)
}

/// The caps of a tap's video stream. The rtcp-fb fields make rtpsession turn a force-key-unit
/// event into PLI/FIR (with rtpbin).
fn video_caps(encoding: &str, payload_type: u8) -> gst::Caps {
    gst::Caps::builder("application/x-rtp")
        .field("media", "video")
        .field("encoding-name", encoding)
        .field("clock-rate", 90000i32)
        .field("payload", payload_type as i32)
        .field("rtcp-fb-nack", true)
        .field("rtcp-fb-nack-pli", true)
        .field("rtcp-fb-ccm-fir", true)
        .build()
}
