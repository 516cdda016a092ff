//! The decoding branches rtpbin's pads are linked to: video (depayload, keyframe handling,
//! decode) and audio (depayload, decode, resample); video frames are taken by a pad probe before a
//! fakesink, audio by an appsink.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use gstreamer as gst;
use gstreamer::prelude::*;
use gstreamer_app as gst_app;
use gstreamer_video as gst_video;
use tracing::debug;

use crate::media::capture_clock::CaptureClock;

use super::clock::{capture_us, ClockMap};
use super::frame_pool;
use super::gst_util::{add_chain, gst_err, link_to, make};
use super::types::{
    DecodedAudio, DecodedFrame, MediaSink, ReceiverError, ReceiverStats, KEYFRAME_REQUEST_INTERVAL,
};

pub(super) fn link_video(
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
    // One decoding thread: the one media arrives on. libvpx and libav otherwise start threads of
    // their own per decoder (one more thread per tapped participant, and frame threading adds a
    // frame of latency); the models' sizes decode in a few ms on one core.
    for d in &decoder {
        if d.has_property("threads") {
            d.set_property("threads", 1u32);
        } else if d.has_property("max-threads") {
            d.set_property("max-threads", 1i32);
        }
    }
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
    let i420 = make("capsfilter")?;
    i420.set_property(
        "caps",
        gst::Caps::builder("video/x-raw")
            .field("format", "I420")
            .build(),
    );
    // Frames are taken by a pad probe in front of a fakesink, not by an appsink: appsink keeps the
    // last buffer it handed out inside its reusable sample until the next one comes, so the
    // decoder needed a second frame buffer per participant (measured with GST_DEBUG=bufferpool:6:
    // frame N's buffer went back to the pool only after frame N+1 was pushed; 115 KB at
    // 320x240, 460 KB at 640x480). The probe runs on the same streaming thread; the sink drops
    // the buffer at once.
    let sink_element = make("fakesink")?;
    sink_element.set_property("sync", false);
    // No preroll: on shared receive threads a sink waiting for preroll would hold the thread
    // every other tap on it needs (and the live sources never preroll anyway).
    sink_element.set_property("async", false);
    sink_element.set_property("enable-last-sample", false);
    let mut chain = vec![depay.clone()];
    chain.extend(decoder);
    chain.push(convert);
    chain.push(i420);
    chain.push(sink_element.clone());
    add_chain(pipeline, &chain)?;
    let clock = Mutex::new(CaptureClock::default());
    let sink_pad = sink_element
        .static_pad("sink")
        .ok_or_else(|| gst_err("fakesink without a sink pad"))?;
    if encoding != "H264" {
        // libvpx decodes into reference frames of its own and copies each picture out into a
        // buffer from downstream's pool: that buffer can come from the shelf every tap shares.
        // (avdec_h264 decodes straight into pool buffers it keeps as references when the pool
        // offers video alignment; that pool stays the decoder's own.)
        frame_pool::offer_to_decoder(&sink_pad);
    }
    let video_info: Mutex<Option<(gst::Caps, gst_video::VideoInfo)>> = Mutex::new(None);
    sink_pad.add_probe(gst::PadProbeType::BUFFER, move |pad, info| {
        let Some(buffer) = info.buffer() else {
            return gst::PadProbeReturn::Ok;
        };
        let Some(caps) = pad.current_caps() else {
            return gst::PadProbeReturn::Ok;
        };
        // Caps are parsed once per negotiation, not once per frame.
        let info = {
            let mut known = video_info.lock().unwrap_or_else(|e| e.into_inner());
            match &*known {
                Some((c, info)) if c.as_ptr() == caps.as_ptr() => info.clone(),
                _ => {
                    let Ok(info) = gst_video::VideoInfo::from_caps(&caps) else {
                        return gst::PadProbeReturn::Ok;
                    };
                    *known = Some((caps, info.clone()));
                    info
                }
            }
        };
        stats.video_frames.fetch_add(1, Ordering::Relaxed);
        let capture_us = capture_us(buffer, &clock_map, &clock, &stats, "video");
        sink.video(DecodedFrame {
            buffer: buffer.clone(),
            info,
            capture_us,
        });
        gst::PadProbeReturn::Ok
    });
    link_to(pad, &depay)?;
    debug!(encoding, "video decoder linked");
    Ok(())
}

pub(super) fn link_audio(
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
        // No preroll: on shared receive threads a sink waiting for preroll would hold the thread
        // every other tap on it needs (and the live sources never preroll anyway).
        .async_(false)
        // No `last-sample` (as for video): nothing holds a window after we took it.
        .enable_last_sample(false)
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
pub(super) fn throttle_keyframe_requests(depay: &gst::Element, stats: Arc<ReceiverStats>) {
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
pub(super) fn gate_until_first_keyframe(
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
        // Consumed here and Handled, not Drop: gstreamer-rs releases a dropped buffer itself and
        // GStreamer 1.22 then releases the emptied slot again ("gst_mini_object_unref: assertion
        // 'mini_object != NULL' failed" for every frame before the first keyframe).
        drop(info.take_buffer());
        gst::PadProbeReturn::Handled
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use kms_sim::media::gst_criticals_logged;
    use std::sync::atomic::AtomicU64;

    /// appsrc → identity (the depayloader) → identity (the parser) → appsink.
    fn chain() -> (
        gst::Pipeline,
        gst_app::AppSrc,
        gst::Element,
        gst::Element,
        gst_app::AppSink,
    ) {
        gst::init().unwrap();
        let pipeline = gst::Pipeline::new();
        let src = gst_app::AppSrc::builder().format(gst::Format::Time).build();
        let depay = make("identity").unwrap();
        let parse = make("identity").unwrap();
        let sink = gst_app::AppSink::builder().sync(false).build();
        let chain: Vec<gst::Element> = vec![
            src.clone().upcast(),
            depay.clone(),
            parse.clone(),
            sink.clone().upcast(),
        ];
        add_chain(&pipeline, &chain).unwrap();
        pipeline.set_state(gst::State::Playing).unwrap();
        (pipeline, src, depay, parse, sink)
    }

    fn frame(delta: bool) -> gst::Buffer {
        let mut b = gst::Buffer::with_size(16).unwrap();
        if delta {
            b.get_mut().unwrap().set_flags(gst::BufferFlags::DELTA_UNIT);
        }
        b
    }

    #[test]
    fn frames_before_the_first_keyframe_are_consumed_cleanly_and_counted() {
        let criticals = gst_criticals_logged();
        let (pipeline, src, depay, parse, sink) = chain();
        let stats = Arc::new(ReceiverStats::default());
        gate_until_first_keyframe(&parse, &depay, stats.clone());
        for delta in [true, true, false, true] {
            src.push_buffer(frame(delta)).unwrap();
        }
        let passed: Vec<bool> = (0..2)
            .map(|_| {
                let s = sink
                    .try_pull_sample(gst::ClockTime::from_seconds(5))
                    .expect("a frame through the gate");
                s.buffer()
                    .unwrap()
                    .flags()
                    .contains(gst::BufferFlags::DELTA_UNIT)
            })
            .collect();
        assert_eq!(passed, [false, true], "the keyframe, then everything");
        assert!(sink
            .try_pull_sample(gst::ClockTime::from_mseconds(100))
            .is_none());
        assert_eq!(
            stats.video_frames_before_keyframe.load(Ordering::Relaxed),
            2
        );
        pipeline.set_state(gst::State::Null).unwrap();
        assert_eq!(gst_criticals_logged(), criticals, "no GStreamer critical");
    }

    #[test]
    fn a_held_back_keyframe_request_is_consumed_cleanly_then_sent_later() {
        let criticals = gst_criticals_logged();
        let (pipeline, src, depay, _parse, _sink) = chain();
        let stats = Arc::new(ReceiverStats::default());
        throttle_keyframe_requests(&depay, stats.clone());
        // What reaches the source: the requests the throttle let through.
        let reached = Arc::new(AtomicU64::new(0));
        let r = reached.clone();
        src.static_pad("src").unwrap().add_probe(
            gst::PadProbeType::EVENT_UPSTREAM,
            move |_, info| {
                if let Some(gst::PadProbeData::Event(ev)) = &info.data {
                    if gst_video::ForceKeyUnitEvent::is(ev) {
                        r.fetch_add(1, Ordering::Relaxed);
                    }
                }
                gst::PadProbeReturn::Ok
            },
        );
        let ask = || {
            depay.static_pad("sink").unwrap().push_event(
                gst_video::UpstreamForceKeyUnitEvent::builder()
                    .all_headers(true)
                    .build(),
            )
        };
        ask();
        ask();
        assert_eq!(stats.keyframe_requests.load(Ordering::Relaxed), 1);
        assert_eq!(stats.keyframe_requests_throttled.load(Ordering::Relaxed), 1);
        assert_eq!(reached.load(Ordering::Relaxed), 1);
        // After the interval, the next packet carries the held-back request.
        std::thread::sleep(KEYFRAME_REQUEST_INTERVAL + std::time::Duration::from_millis(50));
        src.push_buffer(frame(true)).unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while reached.load(Ordering::Relaxed) < 2 && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        assert_eq!(
            reached.load(Ordering::Relaxed),
            2,
            "the held-back request went out"
        );
        assert_eq!(stats.keyframe_requests.load(Ordering::Relaxed), 2);
        pipeline.set_state(gst::State::Null).unwrap();
        assert_eq!(gst_criticals_logged(), criticals, "no GStreamer critical");
    }
}
