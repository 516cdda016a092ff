//! Real RTP out of the simulator: one GStreamer pipeline per (tap, media) encodes the participant's
//! source and sends it to the address and ports of the tap's offer, with RTCP both ways through
//! `rtpbin` (sender reports out; PLI/FIR in, which makes the encoder produce a keyframe, as a
//! browser does when KMS forwards a keyframe request; NACKs in, answered from a packet history as
//! KMS does).

use std::net::SocketAddr;
use std::path::PathBuf;

use gstreamer as gst;
use gstreamer::prelude::*;
use tracing::{debug, warn};

use crate::sdp::Format;

/// What a participant's video shows.
#[derive(Debug, Clone, PartialEq)]
pub enum VideoSource {
    /// `videotestsrc` with this pattern name (`ball`, `smpte`, `snow`…).
    Pattern(String),
    /// A PNG or JPEG still, frozen into a live stream.
    Image(PathBuf),
}

/// What a participant's audio plays.
#[derive(Debug, Clone, PartialEq)]
pub enum AudioSource {
    /// A sine tone at this frequency (Hz).
    Tone(f64),
    /// A WAV file, decoded and looped.
    Wav(PathBuf),
}

/// Video parameters of a participant.
#[derive(Debug, Clone, PartialEq)]
pub struct VideoSpec {
    /// Source.
    pub source: VideoSource,
    /// Width.
    pub width: u32,
    /// Height.
    pub height: u32,
    /// Frames per second.
    pub fps: u32,
    /// Frames between keyframes (browsers send few; KMS asks for one on each new connection).
    pub keyframe_interval: u32,
    /// Send delta frames only until a PLI/FIR arrives (a receiver that missed the first keyframe).
    pub withhold_keyframe: bool,
}

/// What to send.
#[derive(Debug, Clone)]
pub enum Payload {
    /// Video.
    Video(VideoSpec),
    /// Audio.
    Audio(AudioSource),
}

/// Where to send it and with which negotiated format.
#[derive(Debug, Clone)]
pub struct SendTarget {
    /// The negotiated format (payload type from the tap's offer).
    pub format: Format,
    /// The offer's RTP address and port.
    pub rtp_dest: SocketAddr,
    /// The offer's RTCP address and port.
    pub rtcp_dest: SocketAddr,
    /// Our (KMS-side) RTP port: packets leave from it (symmetric RTP).
    pub local_rtp_port: u16,
    /// Our RTCP port, where the tap's receiver reports and PLI/FIR arrive.
    pub local_rtcp_port: u16,
    /// The SSRC announced in the answer.
    pub ssrc: u32,
    /// Payload MTU (KMS default 1200).
    pub mtu: u32,
    /// SRTP, when the RtpEndpoint was created with `crypto`.
    pub srtp: Option<SenderSrtp>,
}

/// SRTP of a sender, as KMS's srtp connection sets it: RTP and RTCP out under our key, the peer's
/// RTCP in under its key, the suite's tag length on both.
#[derive(Clone)]
pub struct SenderSrtp {
    /// GStreamer cipher (`aes-128-icm`).
    pub cipher: &'static str,
    /// GStreamer auth (`hmac-sha1-80`).
    pub auth: &'static str,
    /// Our (KMS's) master key.
    pub key: Vec<u8>,
    /// The tap's master key, from its offer (none when its suite was not the endpoint's: KMS then
    /// answers without a key and nothing it receives decrypts).
    pub peer_key: Option<Vec<u8>>,
}

impl std::fmt::Debug for SenderSrtp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "SenderSrtp({}, {}, keys redacted)",
            self.cipher, self.auth
        )
    }
}

/// Errors building a sender.
#[derive(Debug, thiserror::Error)]
pub enum MediaError {
    /// An element is missing (GStreamer plugin not installed).
    #[error(
        "GStreamer element `{0}` is not available: install the GStreamer plugins (scripts/setup)"
    )]
    MissingElement(String),
    /// Codec the simulator cannot produce.
    #[error("the simulator cannot send {0}")]
    Codec(String),
    /// Linking or starting failed.
    #[error("GStreamer: {0}")]
    Gst(String),
}

/// A running sender; stops when dropped.
pub struct RtpSender {
    pipeline: gst::Pipeline,
    description: String,
    /// Ends a pre-encoded replay's thread.
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    /// The payloader's src pad, where `requestKeyframe` enters (video senders).
    keyframes: Option<gst::Pad>,
}

/// The field marking a keyframe request made through KMS's API (`requestKeyframe`), the only kind
/// that reaches the publisher: real KMS 7.x drops the force-key-unit event rtpsession makes from a
/// tap's RTCP PLI/FIR (GStreamer >= 1.20 puts the tap's own SSRC in it, which the publisher's
/// session does not know), so the simulator drops those too.
pub const API_KEYFRAME_REQUEST: &str = "kms-sim-api-request";

/// Whether an upstream event is a keyframe request made through the API.
pub(crate) fn is_api_keyframe_request(ev: &gst::Event) -> bool {
    ev.structure().is_some_and(|s| {
        s.name() == "GstForceKeyUnit" && s.get::<bool>(API_KEYFRAME_REQUEST).unwrap_or(false)
    })
}

/// Drops the keyframe requests a tap's RTCP makes (as KMS 7.x does): only API requests pass.
fn drop_rtcp_keyframe_requests(pay: &gst::Element) {
    if let Some(src) = pay.static_pad("src") {
        src.add_probe(gst::PadProbeType::EVENT_UPSTREAM, |_, info| {
            if let Some(gst::PadProbeData::Event(ev)) = &info.data {
                let is_request = ev
                    .structure()
                    .is_some_and(|s| s.name() == "GstForceKeyUnit");
                if is_request && !is_api_keyframe_request(ev) {
                    // Consumed here and Handled: with Drop, gstreamer-rs released the event and
                    // GStreamer then released the emptied slot ("gst_mini_object_unref:
                    // assertion 'mini_object != NULL' failed" on every tap PLI).
                    drop(info.take_event());
                    return gst::PadProbeReturn::Handled;
                }
            }
            gst::PadProbeReturn::Ok
        });
    }
}

/// A raw video source at the spec's size and `fps` (I420), ending in its caps filter: live, or
/// `frames` buffers as fast as they come (to encode a clip once).
pub(crate) fn raw_video(
    spec: &VideoSpec,
    fps: u32,
    frames: Option<i32>,
) -> Result<Vec<gst::Element>, MediaError> {
    let mut chain = Vec::new();
    match &spec.source {
        VideoSource::Pattern(p) => {
            let src = make("videotestsrc")?;
            src.set_property_from_str("pattern", p);
            match frames {
                Some(n) => src.set_property("num-buffers", n),
                None => src.set_property("is-live", true),
            }
            chain.push(src);
        }
        VideoSource::Image(path) => {
            let src = make("filesrc")?;
            src.set_property("location", path.to_string_lossy().to_string());
            chain.push(src);
            let is_png = path
                .extension()
                .is_some_and(|e| e.eq_ignore_ascii_case("png"));
            chain.push(make(if is_png { "pngdec" } else { "jpegdec" })?);
            let freeze = make("imagefreeze")?;
            match frames {
                Some(n) => freeze.set_property("num-buffers", n),
                None => freeze.set_property("is-live", true),
            }
            chain.push(freeze);
        }
    }
    chain.push(make("videoconvert")?);
    chain.push(make("videoscale")?);
    chain.push(make("videorate")?);
    let filter = make("capsfilter")?;
    filter.set_property(
        "caps",
        gst::Caps::builder("video/x-raw")
            .field("format", "I420")
            .field("width", spec.width as i32)
            .field("height", spec.height as i32)
            .field("framerate", gst::Fraction::new(fps as i32, 1))
            .build(),
    );
    chain.push(filter);
    Ok(chain)
}

/// The encoder of `encoding` as browsers' are set (low latency, ~300 kbit/s, a keyframe every
/// `keyframe_interval` frames), with H.264's constrained-baseline caps after it.
pub(crate) fn video_encoder(
    encoding: &str,
    keyframe_interval: u32,
) -> Result<Vec<gst::Element>, MediaError> {
    Ok(match encoding {
        "VP8" => {
            let enc = make("vp8enc")?;
            enc.set_property("deadline", 1i64);
            enc.set_property("cpu-used", 8i32);
            enc.set_property("keyframe-max-dist", keyframe_interval as i32);
            enc.set_property("target-bitrate", 300_000i32);
            vec![enc]
        }
        "VP9" => {
            let enc = make("vp9enc")?;
            enc.set_property("deadline", 1i64);
            enc.set_property("cpu-used", 8i32);
            enc.set_property("keyframe-max-dist", keyframe_interval as i32);
            vec![enc]
        }
        "H264" => {
            let enc = make("x264enc")?;
            enc.set_property_from_str("tune", "zerolatency");
            enc.set_property_from_str("speed-preset", "ultrafast");
            enc.set_property("key-int-max", keyframe_interval);
            enc.set_property("bitrate", 300u32);
            // Browsers send no access-unit delimiters.
            enc.set_property("aud", false);
            let profile = make("capsfilter")?;
            profile.set_property(
                "caps",
                gst::Caps::builder("video/x-h264")
                    .field("profile", "constrained-baseline")
                    .build(),
            );
            vec![enc, profile]
        }
        other => return Err(MediaError::Codec(other.to_owned())),
    })
}

/// The RTP payloader of a video `encoding`.
pub(crate) fn video_payloader(encoding: &str) -> Result<gst::Element, MediaError> {
    Ok(match encoding {
        "VP8" => {
            let pay = make("rtpvp8pay")?;
            pay.set_property_from_str("picture-id-mode", "15-bit");
            pay
        }
        "VP9" => make("rtpvp9pay")?,
        "H264" => {
            let pay = make("rtph264pay")?;
            pay.set_property("config-interval", 1i32);
            pay
        }
        other => return Err(MediaError::Codec(other.to_owned())),
    })
}

pub(crate) fn make(factory: &str) -> Result<gst::Element, MediaError> {
    gst::ElementFactory::make(factory)
        .build()
        .map_err(|_| MediaError::MissingElement(factory.to_owned()))
}

pub(crate) fn gst_err(e: impl std::fmt::Display) -> MediaError {
    MediaError::Gst(e.to_string())
}

/// Initializes GStreamer once.
pub fn init() -> Result<(), MediaError> {
    gst::init().map_err(gst_err)
}

impl RtpSender {
    /// Builds and starts a sender.
    pub fn start(payload: &Payload, target: &SendTarget) -> Result<Self, MediaError> {
        init()?;
        let pipeline = gst::Pipeline::new();
        let encoding = target.format.encoding.to_ascii_uppercase();
        let mut chain: Vec<gst::Element> = Vec::new();
        // Pre-encoded (`--pre-encoded`): the clip's appsrc and the payloader, no encoder here.
        let mut replay: Option<(gstreamer_app::AppSrc, std::sync::Arc<crate::replay::Clip>)> = None;
        if crate::replay::pre_encoded() {
            let clip = match payload {
                Payload::Video(spec) if !spec.withhold_keyframe => {
                    Some(crate::replay::video_clip(&encoding, spec)?)
                }
                Payload::Audio(source) => crate::replay::audio_clip(&encoding, source)?,
                _ => None,
            };
            if let Some(clip) = clip {
                let src = crate::replay::source_for(&clip);
                chain.push(src.clone().upcast());
                if encoding == "H264" {
                    let parse = make("h264parse")?;
                    chain.push(parse);
                }
                chain.push(match encoding.as_str() {
                    "OPUS" => make("rtpopuspay")?,
                    video => video_payloader(video)?,
                });
                replay = Some((src, clip));
            }
        }
        match payload {
            _ if replay.is_some() => {}
            Payload::Video(spec) => {
                chain.extend(raw_video(spec, spec.fps, None)?);
                stamp_at_delivery(chain.last().expect("a caps filter"));
                chain.extend(video_encoder(&encoding, spec.keyframe_interval)?);
                chain.push(video_payloader(&encoding)?);
            }
            Payload::Audio(source) => {
                match source {
                    AudioSource::Tone(freq) => {
                        let src = make("audiotestsrc")?;
                        src.set_property("is-live", true);
                        src.set_property("freq", *freq);
                        src.set_property("volume", 0.3f64);
                        chain.push(src);
                    }
                    AudioSource::Wav(path) => {
                        // Decoded once, then played in a loop in real time, like a microphone:
                        // timestamps keep increasing across loops (a file source would restart them).
                        let (samples, rate) = read_wav_mono(path)?;
                        let src = gstreamer_app::AppSrc::builder()
                            .caps(
                                &gst::Caps::builder("audio/x-raw")
                                    .field("format", "F32LE")
                                    .field("rate", rate as i32)
                                    .field("channels", 1i32)
                                    .field("layout", "interleaved")
                                    .build(),
                            )
                            .is_live(true)
                            .format(gst::Format::Time)
                            .build();
                        looping_player(src.clone(), samples, rate);
                        chain.push(src.upcast());
                    }
                }
                chain.push(make("audioconvert")?);
                chain.push(make("audioresample")?);
                match encoding.as_str() {
                    "OPUS" => {
                        chain.push(make("opusenc")?);
                        chain.push(make("rtpopuspay")?);
                    }
                    "PCMU" => {
                        chain.push(make("mulawenc")?);
                        chain.push(make("rtppcmupay")?);
                    }
                    "PCMA" => {
                        chain.push(make("alawenc")?);
                        chain.push(make("rtppcmapay")?);
                    }
                    other => return Err(MediaError::Codec(other.to_owned())),
                }
            }
        }
        let pay = chain.last().expect("payloader").clone();
        let is_video = matches!(payload, Payload::Video(_));
        if is_video {
            drop_rtcp_keyframe_requests(&pay);
        }
        if let Payload::Video(VideoSpec {
            withhold_keyframe: true,
            ..
        }) = payload
        {
            withhold_keyframes_until_requested(&pay);
        }
        pay.set_property("pt", target.format.pt as u32);
        pay.set_property("ssrc", target.ssrc);
        pay.set_property("mtu", target.mtu);

        let rtpbin = make("rtpbin")?;
        rtpbin.set_property_from_str("rtp-profile", "avpf");
        let rtp_sink = make("udpsink")?;
        rtp_sink.set_property("host", target.rtp_dest.ip().to_string());
        rtp_sink.set_property("port", target.rtp_dest.port() as i32);
        rtp_sink.set_property("bind-port", target.local_rtp_port as i32);
        rtp_sink.set_property("sync", false);
        rtp_sink.set_property("async", false);
        let rtcp_sink = make("udpsink")?;
        rtcp_sink.set_property("host", target.rtcp_dest.ip().to_string());
        rtcp_sink.set_property("port", target.rtcp_dest.port() as i32);
        rtcp_sink.set_property("sync", false);
        rtcp_sink.set_property("async", false);
        let rtcp_src = make("udpsrc")?;
        rtcp_src.set_property("port", target.local_rtcp_port as i32);
        rtcp_src.set_property(
            "caps",
            gst::Caps::new_empty_simple(if target.srtp.is_some() {
                "application/x-srtcp"
            } else {
                "application/x-rtcp"
            }),
        );
        let encoder = match &target.srtp {
            Some(srtp) => Some(install_srtp(&rtpbin, srtp)?),
            None => None,
        };

        // As KMS's RtpEndpoint (kmsbasertpendpoint.c's aux sender): the packets sent are kept
        // and resent in-band (same SSRC and payload type) when a generic NACK asks for them.
        let history = make("rtprtxqueue")?;
        history.set_property("max-size-packets", 512u32);

        pipeline.add_many(chain.iter()).map_err(gst_err)?;
        pipeline
            .add_many([&history, &rtpbin, &rtp_sink, &rtcp_sink, &rtcp_src])
            .map_err(gst_err)?;
        gst::Element::link_many(chain.iter()).map_err(gst_err)?;
        pay.link(&history).map_err(gst_err)?;
        history
            .link_pads(Some("src"), &rtpbin, Some("send_rtp_sink_0"))
            .map_err(gst_err)?;
        match &encoder {
            // rtpbin → srtpenc → sockets, linked by hand (rtpbin's encoder signal wants an RTP
            // src pad that srtpenc makes only once its sink is requested).
            Some(enc) => {
                pipeline.add(enc).map_err(gst_err)?;
                for (from, to, sink) in [
                    ("send_rtp_src_0", "rtp_sink_0", &rtp_sink),
                    ("send_rtcp_src_0", "rtcp_sink_0", &rtcp_sink),
                ] {
                    rtpbin
                        .link_pads(Some(from), enc, Some(to))
                        .map_err(gst_err)?;
                    enc.link_pads(Some(&to.replace("sink", "src")), sink, Some("sink"))
                        .map_err(gst_err)?;
                }
            }
            None => {
                rtpbin
                    .link_pads(Some("send_rtp_src_0"), &rtp_sink, Some("sink"))
                    .map_err(gst_err)?;
                rtpbin
                    .link_pads(Some("send_rtcp_src_0"), &rtcp_sink, Some("sink"))
                    .map_err(gst_err)?;
            }
        }
        rtcp_src
            .link_pads(Some("src"), &rtpbin, Some("recv_rtcp_sink_0"))
            .map_err(gst_err)?;
        if let Some(pad) = rtpbin.static_pad("send_rtcp_src_0") {
            retime_sender_reports_as_kms(&pad);
        }

        let description = format!(
            "{encoding} pt {} -> {} (rtcp {}), from :{}",
            target.format.pt, target.rtp_dest, target.rtcp_dest, target.local_rtp_port
        );
        watch_bus(&pipeline, description.clone());
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        pipeline
            .set_state(gst::State::Playing)
            .map_err(|e| MediaError::Gst(format!("cannot start {description}: {e}")))?;
        if let Some((src, clip)) = replay {
            let restart = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
            crate::replay::restart_on_keyframe_request(&pay, restart.clone());
            crate::replay::play(src, clip, stop.clone(), restart);
        }
        debug!(%description, "RTP sender started");
        Ok(RtpSender {
            pipeline,
            description,
            stop,
            keyframes: if is_video {
                pay.static_pad("src")
            } else {
                None
            },
        })
    }

    /// A keyframe asked for through the API (`requestKeyframe` on the tap): the encoder (or the
    /// replayed clip) starts one. False for an audio sender.
    pub fn request_keyframe(&self) -> bool {
        let Some(pad) = &self.keyframes else {
            return false;
        };
        // What gst_video_event_new_upstream_force_key_unit makes, marked as the API's.
        let ev = gst::event::CustomUpstream::new(
            gst::Structure::builder("GstForceKeyUnit")
                .field("all-headers", true)
                .field(API_KEYFRAME_REQUEST, true)
                .build(),
        );
        pad.send_event(ev)
    }

    /// What this sender sends where.
    pub fn description(&self) -> &str {
        &self.description
    }
}

fn read_wav_mono(path: &std::path::Path) -> Result<(Vec<f32>, u32), MediaError> {
    let mut r = hound::WavReader::open(path)
        .map_err(|e| MediaError::Gst(format!("{}: {e}", path.display())))?;
    let spec = r.spec();
    let ch = spec.channels.max(1) as usize;
    let raw: Vec<f32> = match spec.sample_format {
        hound::SampleFormat::Float => r.samples::<f32>().filter_map(Result::ok).collect(),
        hound::SampleFormat::Int => {
            let scale = (1i64 << (spec.bits_per_sample.max(1) - 1)) as f32;
            r.samples::<i32>()
                .filter_map(Result::ok)
                .map(|v| v as f32 / scale)
                .collect()
        }
    };
    let mono: Vec<f32> = raw
        .chunks(ch)
        .map(|c| c.iter().sum::<f32>() / c.len() as f32)
        .collect();
    if mono.is_empty() {
        return Err(MediaError::Gst(format!("{}: no samples", path.display())));
    }
    Ok((mono, spec.sample_rate))
}

/// Feeds `samples` to `src` in 20 ms buffers, forever, paced by the wall clock; stops when the
/// pipeline goes away.
fn looping_player(src: gstreamer_app::AppSrc, samples: Vec<f32>, rate: u32) {
    let weak = src.downgrade();
    std::thread::spawn(move || {
        let per = (rate as usize / 50).max(1);
        let start = std::time::Instant::now();
        let (mut pos, mut n) = (0usize, 0u64);
        loop {
            let Some(src) = weak.upgrade() else { return };
            let mut bytes = Vec::with_capacity(per * 4);
            for _ in 0..per {
                bytes.extend_from_slice(&samples[pos].to_le_bytes());
                pos = (pos + 1) % samples.len();
            }
            let mut buffer = gst::Buffer::from_mut_slice(bytes);
            {
                let b = buffer.get_mut().expect("new buffer");
                b.set_pts(gst::ClockTime::from_mseconds(20 * n));
                b.set_duration(gst::ClockTime::from_mseconds(20));
            }
            if src.push_buffer(buffer).is_err() {
                return;
            }
            drop(src);
            n += 1;
            let due = start + std::time::Duration::from_millis(20 * n);
            if let Some(wait) = due.checked_duration_since(std::time::Instant::now()) {
                std::thread::sleep(wait);
            }
        }
    });
}

/// A live GStreamer source stamps a frame with the start of its interval and delivers it at the end;
/// a browser's camera stamps a frame when it is delivered. Moving the timestamp to the end of the
/// interval makes the RTP timestamps (and so the capture times a receiver derives from RTCP sender
/// reports) mean what they mean coming from a browser.
fn stamp_at_delivery(element: &gst::Element) {
    let Some(src) = element.static_pad("src") else {
        return;
    };
    src.add_probe(gst::PadProbeType::BUFFER, |_, info| {
        if let Some(gst::PadProbeData::Buffer(buffer)) = &mut info.data {
            if let (Some(pts), Some(duration)) = (buffer.pts(), buffer.duration()) {
                let b = buffer.make_mut();
                b.set_pts(pts + duration);
            }
        }
        gst::PadProbeReturn::Ok
    });
}

/// How KMS 7.3's RtpEndpoint sender reports look to a tap (measured on a real KMS with Chromium
/// publishers): their NTP clock starts seconds behind the wall clock and advances far slower than
/// real time (3.3 s of sender time in 18 s for an Opus tap). A receiver that trusted them saw every
/// video frame as seconds old. The simulator's reports follow: 5 s behind, then a fifth of real time.
pub const SR_CLOCK_BEHIND_S: f64 = 5.0;
/// See [`SR_CLOCK_BEHIND_S`].
pub const SR_CLOCK_RATE: f64 = 0.2;

/// Rewrites the NTP timestamp of outgoing RTCP sender reports as KMS's would read.
fn retime_sender_reports_as_kms(pad: &gst::Pad) {
    let first = std::sync::Mutex::new(None::<f64>);
    pad.add_probe(gst::PadProbeType::BUFFER, move |_, info| {
        let Some(gst::PadProbeData::Buffer(buffer)) = &mut info.data else {
            return gst::PadProbeReturn::Ok;
        };
        let buffer = buffer.make_mut();
        let Ok(mut map) = buffer.map_writable() else {
            return gst::PadProbeReturn::Ok;
        };
        let data = map.as_mut_slice();
        // A compound packet starts with the SR (PT 200): NTP seconds and fraction at bytes 8..16.
        if data.len() >= 16 && data[1] == 200 {
            let secs = u32::from_be_bytes([data[8], data[9], data[10], data[11]]) as f64;
            let frac = u32::from_be_bytes([data[12], data[13], data[14], data[15]]) as f64;
            let ntp = secs + frac / 4_294_967_296.0;
            let start = *first
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .get_or_insert(ntp);
            let kms = start - SR_CLOCK_BEHIND_S + (ntp - start) * SR_CLOCK_RATE;
            let (s, f) = (kms.trunc(), kms.fract());
            data[8..12].copy_from_slice(&(s as u32).to_be_bytes());
            data[12..16].copy_from_slice(&((f * 4_294_967_296.0) as u32).to_be_bytes());
        }
        gst::PadProbeReturn::Ok
    });
}

/// Drops key frames on their way to the payloader until a keyframe is requested through the API
/// (`requestKeyframe`; a tap's RTCP PLI/FIR does not reach the publisher in KMS 7.x).
fn withhold_keyframes_until_requested(pay: &gst::Element) {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    let released = Arc::new(AtomicBool::new(false));
    if let Some(src) = pay.static_pad("src") {
        let r = released.clone();
        src.add_probe(gst::PadProbeType::EVENT_UPSTREAM, move |_, info| {
            if let Some(gst::PadProbeData::Event(ev)) = &info.data {
                if is_api_keyframe_request(ev) {
                    r.store(true, Ordering::Relaxed);
                }
            }
            gst::PadProbeReturn::Ok
        });
    }
    if let Some(sink) = pay.static_pad("sink") {
        sink.add_probe(gst::PadProbeType::BUFFER, move |_, info| {
            if released.load(Ordering::Relaxed) {
                return gst::PadProbeReturn::Ok;
            }
            let keyframe = matches!(&info.data,
                Some(gst::PadProbeData::Buffer(b)) if !b.flags().contains(gst::BufferFlags::DELTA_UNIT));
            if keyframe {
                // Consume it here: the frame is never sent.
                drop(info.take_buffer());
                return gst::PadProbeReturn::Handled;
            }
            gst::PadProbeReturn::Ok
        });
    }
}

/// One `srtpenc` for our RTP and RTCP (returned, to be linked), one `srtpdec` for the tap's RTCP
/// (keyed by `request-key`).
fn install_srtp(rtpbin: &gst::Element, srtp: &SenderSrtp) -> Result<gst::Element, MediaError> {
    let enc = make("srtpenc")?;
    enc.set_property("key", gst::Buffer::from_slice(srtp.key.clone()));
    for (p, v) in [
        ("rtp-cipher", srtp.cipher),
        ("rtcp-cipher", srtp.cipher),
        ("rtp-auth", srtp.auth),
        ("rtcp-auth", srtp.auth),
    ] {
        enc.set_property_from_str(p, v);
    }
    let dec = make("srtpdec")?;
    let (peer, cipher, auth) = (srtp.peer_key.clone(), srtp.cipher, srtp.auth);
    dec.connect("request-key", false, move |args| {
        let ssrc = args.get(1).and_then(|v| v.get::<u32>().ok()).unwrap_or(0);
        let peer = peer.clone()?;
        Some(
            gst::Caps::builder("application/x-srtp")
                .field("ssrc", ssrc)
                .field("srtp-key", gst::Buffer::from_slice(peer))
                .field("srtp-cipher", cipher)
                .field("srtp-auth", auth)
                .field("srtcp-cipher", cipher)
                .field("srtcp-auth", auth)
                .build()
                .to_value(),
        )
    });
    rtpbin.connect("request-rtcp-decoder", false, move |_| Some(dec.to_value()));
    Ok(enc)
}

fn watch_bus(pipeline: &gst::Pipeline, description: String) {
    let Some(bus) = pipeline.bus() else { return };
    bus.set_sync_handler(move |_, msg| {
        if let gst::MessageView::Error(err) = msg.view() {
            warn!(sender = %description, error = %err.error(), debug = ?err.debug(), "RTP sender error");
        }
        gst::BusSyncReply::Drop
    });
}

impl Drop for RtpSender {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let _ = self.pipeline.set_state(gst::State::Null);
        debug!(description = %self.description, "RTP sender stopped");
    }
}

/// GStreamer criticals logged in this process since the first call (which starts counting them;
/// each is also printed). For tests: a pad probe that returns the wrong verdict shows up only as
/// "gst_mini_object_unref: assertion 'mini_object != NULL' failed", never as an error.
pub fn gst_criticals_logged() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNT: AtomicU64 = AtomicU64::new(0);
    static HANDLER: std::sync::OnceLock<()> = std::sync::OnceLock::new();
    HANDLER.get_or_init(|| {
        gst::glib::log_set_handler(
            Some("GStreamer"),
            gst::glib::LogLevels::LEVEL_CRITICAL,
            false,
            false,
            |_, _, message| {
                eprintln!("GStreamer-CRITICAL: {message}");
                COUNT.fetch_add(1, Ordering::Relaxed);
            },
        );
    });
    COUNT.load(Ordering::Relaxed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Arc;

    #[test]
    fn rtcp_keyframe_requests_stop_at_the_payloader_and_api_requests_pass() {
        init().unwrap();
        let criticals = gst_criticals_logged();
        // appsrc (the encoder) → identity (the payloader) → fakesink.
        let pipeline = gst::Pipeline::new();
        let src = make("appsrc").unwrap();
        let pay = make("identity").unwrap();
        let sink = make("fakesink").unwrap();
        pipeline.add_many([&src, &pay, &sink]).unwrap();
        gst::Element::link_many([&src, &pay, &sink]).unwrap();
        pipeline.set_state(gst::State::Playing).unwrap();
        drop_rtcp_keyframe_requests(&pay);
        let reached = Arc::new(AtomicU64::new(0));
        let r = reached.clone();
        src.static_pad("src").unwrap().add_probe(
            gst::PadProbeType::EVENT_UPSTREAM,
            move |_, info| {
                if matches!(&info.data, Some(gst::PadProbeData::Event(ev))
                    if ev.structure().is_some_and(|s| s.name() == "GstForceKeyUnit"))
                {
                    r.fetch_add(1, Ordering::Relaxed);
                }
                gst::PadProbeReturn::Ok
            },
        );
        let request = |api: bool| {
            let mut s = gst::Structure::builder("GstForceKeyUnit").field("all-headers", true);
            if api {
                s = s.field(API_KEYFRAME_REQUEST, true);
            }
            sink.static_pad("sink")
                .unwrap()
                .push_event(gst::event::CustomUpstream::new(s.build()))
        };
        request(false);
        request(false);
        assert_eq!(reached.load(Ordering::Relaxed), 0, "a tap's PLI stops here");
        request(true);
        assert_eq!(reached.load(Ordering::Relaxed), 1, "requestKeyframe passes");
        pipeline.set_state(gst::State::Null).unwrap();
        assert_eq!(gst_criticals_logged(), criticals, "no GStreamer critical");
    }
}
