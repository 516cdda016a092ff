//! Pre-encoded media: each distinct stream (codec, source, size, rate) is encoded **once**, into a
//! clip that starts with a keyframe, and every sender asking for it replays the clip at real time
//! with fresh timestamps (its own RTP timestamps, sequence numbers and sender reports come from its
//! own payloader and rtpbin). Fifty simulated publishers then cost a few packets' work each instead
//! of fifty encoders, so a benchmark measures the daemon and not the simulator.
//!
//! A keyframe request (PLI/FIR reaching the payloader as an upstream force-key-unit) restarts the
//! clip at its keyframe, as a live encoder would make one.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use gstreamer as gst;
use gstreamer::prelude::*;
use gstreamer_app as gst_app;

use crate::media::{gst_err, make, raw_video, video_encoder, AudioSource, MediaError, VideoSpec};

static PRE_ENCODED: AtomicBool = AtomicBool::new(false);

/// Turns pre-encoded media on for every sender started afterwards (`kms-sim --pre-encoded`).
pub fn set_pre_encoded(on: bool) {
    PRE_ENCODED.store(on, Ordering::Relaxed);
}

/// Whether senders replay pre-encoded clips.
pub fn pre_encoded() -> bool {
    PRE_ENCODED.load(Ordering::Relaxed)
}

/// An encoded clip: the encoder's output caps and its frames, the first a keyframe.
pub struct Clip {
    /// Caps of the encoded stream (what the payloader takes).
    pub caps: gst::Caps,
    /// Encoded frames in order.
    pub frames: Vec<gst::Buffer>,
    /// Time between frames.
    pub period: Duration,
}

fn clips() -> &'static Mutex<HashMap<String, Arc<Clip>>> {
    static CLIPS: OnceLock<Mutex<HashMap<String, Arc<Clip>>>> = OnceLock::new();
    CLIPS.get_or_init(Default::default)
}

/// Runs `chain` (a non-live source first) to its end into an appsink and keeps what came out.
fn encode_once(chain: Vec<gst::Element>, period: Duration) -> Result<Clip, MediaError> {
    let pipeline = gst::Pipeline::new();
    let sink = gst_app::AppSink::builder().sync(false).build();
    pipeline.add_many(chain.iter()).map_err(gst_err)?;
    pipeline.add(&sink).map_err(gst_err)?;
    gst::Element::link_many(chain.iter()).map_err(gst_err)?;
    chain
        .last()
        .expect("an encoder")
        .link(&sink)
        .map_err(gst_err)?;
    pipeline.set_state(gst::State::Playing).map_err(gst_err)?;
    let mut frames = Vec::new();
    let mut caps = None;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match sink.try_pull_sample(gst::ClockTime::from_mseconds(200)) {
            Some(sample) => {
                if caps.is_none() {
                    caps = sample.caps().map(|c| c.to_owned());
                }
                if let Some(b) = sample.buffer_owned() {
                    frames.push(b);
                }
            }
            None if sink.is_eos() => break,
            None if Instant::now() > deadline => {
                let _ = pipeline.set_state(gst::State::Null);
                return Err(MediaError::Gst("pre-encoding took over 30 s".into()));
            }
            None => {}
        }
    }
    let _ = pipeline.set_state(gst::State::Null);
    if let Some(bus) = pipeline.bus() {
        if let Some(msg) = bus.pop_filtered(&[gst::MessageType::Error]) {
            if let gst::MessageView::Error(e) = msg.view() {
                return Err(MediaError::Gst(format!("pre-encoding: {}", e.error())));
            }
        }
    }
    let caps = caps.ok_or_else(|| MediaError::Gst("the encoder produced nothing".into()))?;
    // Start at the first keyframe.
    let first_key = frames
        .iter()
        .position(|b| !b.flags().contains(gst::BufferFlags::DELTA_UNIT))
        .ok_or_else(|| MediaError::Gst("no keyframe in the pre-encoded clip".into()))?;
    frames.drain(..first_key);
    if frames.is_empty() {
        return Err(MediaError::Gst("empty pre-encoded clip".into()));
    }
    Ok(Clip {
        caps,
        frames,
        period,
    })
}

/// The video clip for `spec` in `encoding`, encoded on first use: four seconds, one keyframe at
/// its start (a replay loops back to it).
pub fn video_clip(encoding: &str, spec: &VideoSpec) -> Result<Arc<Clip>, MediaError> {
    let key = format!(
        "{encoding}/{:?}/{}x{}@{}",
        spec.source, spec.width, spec.height, spec.fps
    );
    if let Some(c) = clips().lock().ok().and_then(|c| c.get(&key).cloned()) {
        return Ok(c);
    }
    let fps = spec.fps.max(1);
    let frames = (fps * 4) as i32;
    // One keyframe, at the start: a replay loops back to it.
    let mut chain = raw_video(spec, fps, Some(frames))?;
    chain.extend(video_encoder(encoding, frames as u32)?);
    let clip = Arc::new(encode_once(
        chain,
        Duration::from_secs_f64(1.0 / fps as f64),
    )?);
    if let Ok(mut c) = clips().lock() {
        c.insert(key, clip.clone());
    }
    Ok(clip)
}

/// The Opus clip of a tone (two seconds of 20 ms frames); other audio sources are encoded live.
pub fn audio_clip(encoding: &str, source: &AudioSource) -> Result<Option<Arc<Clip>>, MediaError> {
    let (AudioSource::Tone(freq), "OPUS") = (source, encoding) else {
        return Ok(None);
    };
    let key = format!("OPUS/tone/{freq}");
    if let Some(c) = clips().lock().ok().and_then(|c| c.get(&key).cloned()) {
        return Ok(Some(c));
    }
    let src = make("audiotestsrc")?;
    src.set_property("freq", *freq);
    src.set_property("volume", 0.3f64);
    src.set_property("samplesperbuffer", 960i32);
    src.set_property("num-buffers", 100i32);
    let chain = vec![
        src,
        make("audioconvert")?,
        make("audioresample")?,
        make("opusenc")?,
    ];
    let clip = Arc::new(encode_once(chain, Duration::from_millis(20))?);
    if let Ok(mut c) = clips().lock() {
        c.insert(key, clip.clone());
    }
    Ok(Some(clip))
}

/// A live `appsrc` for a clip (timestamps taken when each frame is pushed).
pub fn source_for(clip: &Clip) -> gst_app::AppSrc {
    gst_app::AppSrc::builder()
        .caps(&clip.caps)
        .is_live(true)
        .do_timestamp(true)
        .format(gst::Format::Time)
        .max_bytes(1 << 20)
        .build()
}

/// Pushes the clip into `src` at real time until `stop` or the pipeline stops taking buffers;
/// a keyframe request (`restart`) starts the clip again at its keyframe.
pub fn play(
    src: gst_app::AppSrc,
    clip: Arc<Clip>,
    stop: Arc<AtomicBool>,
    restart: Arc<AtomicBool>,
) {
    std::thread::Builder::new()
        .name("kms-sim-replay".into())
        .spawn(move || {
            let mut next = Instant::now();
            let mut i = 0usize;
            while !stop.load(Ordering::Relaxed) {
                if restart.swap(false, Ordering::Relaxed) {
                    i = 0;
                }
                let frame = &clip.frames[i];
                let mut b = gst::Buffer::with_size(0).expect("an empty buffer");
                {
                    let bm = b.get_mut().expect("a new buffer is writable");
                    for m in frame.iter_memories_owned() {
                        bm.append_memory(m);
                    }
                    bm.set_flags(frame.flags());
                    bm.set_duration(gst::ClockTime::from_nseconds(clip.period.as_nanos() as u64));
                }
                match src.push_buffer(b) {
                    Ok(_) => {}
                    // Not flowing yet (the pipeline still on its way to PLAYING) or flushing:
                    // the sender stops this thread through `stop`, so wait and go on.
                    Err(gst::FlowError::Flushing) => {
                        std::thread::sleep(Duration::from_millis(20));
                        continue;
                    }
                    Err(_) => break,
                }
                i = (i + 1) % clip.frames.len();
                next += clip.period;
                let now = Instant::now();
                if next > now {
                    std::thread::sleep(next - now);
                } else if now - next > Duration::from_secs(1) {
                    next = now; // far behind (a stopped machine): do not burst to catch up
                }
            }
        })
        .expect("a replay thread");
}

/// Sets `restart` when a keyframe is requested through the API (`requestKeyframe`; as in KMS 7.x a
/// tap's RTCP PLI/FIR does not reach the publisher).
pub fn restart_on_keyframe_request(pay: &gst::Element, restart: Arc<AtomicBool>) {
    if let Some(src) = pay.static_pad("src") {
        src.add_probe(gst::PadProbeType::EVENT_UPSTREAM, move |_, info| {
            if let Some(gst::PadProbeData::Event(ev)) = &info.data {
                if crate::media::is_api_keyframe_request(ev) {
                    restart.store(true, Ordering::Relaxed);
                }
            }
            gst::PadProbeReturn::Ok
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::media::VideoSource;

    #[test]
    fn clips_are_encoded_once_and_start_with_a_keyframe() {
        gst::init().unwrap();
        let spec = VideoSpec {
            source: VideoSource::Pattern("ball".into()),
            width: 160,
            height: 120,
            fps: 15,
            keyframe_interval: 300,
            withhold_keyframe: false,
        };
        for codec in ["VP8", "H264"] {
            let a = video_clip(codec, &spec).unwrap();
            let b = video_clip(codec, &spec).unwrap();
            assert!(Arc::ptr_eq(&a, &b), "{codec}: one encoding, shared");
            assert!(a.frames.len() >= 50, "{codec}: {} frames", a.frames.len());
            assert!(!a.frames[0].flags().contains(gst::BufferFlags::DELTA_UNIT));
            assert!(a.frames[1..]
                .iter()
                .all(|f| f.flags().contains(gst::BufferFlags::DELTA_UNIT)));
        }
        let tone = audio_clip("OPUS", &AudioSource::Tone(440.0))
            .unwrap()
            .unwrap();
        // Two seconds of 20 ms frames (the encoder may add one for its lookahead).
        assert!(
            (100..=101).contains(&tone.frames.len()),
            "{}",
            tone.frames.len()
        );
        assert!(audio_clip("PCMU", &AudioSource::Tone(440.0))
            .unwrap()
            .is_none());
    }
}
