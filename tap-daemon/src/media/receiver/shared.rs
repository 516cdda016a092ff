//! The receive path without threads of its own ([`ReceiveThreads::Shared`]): a threadshare
//! `ts-udpsrc` per stream polls its socket on a context thread shared by every tap, and the
//! depayloader and decoder run on that thread when a packet arrives.
//!
//! ```text
//! ts-udpsrc(context) ─▶ [srtpdec] ─▶ (reorder) ─▶ depay ─▶ decode ─▶ probe+fakesink / appsink   (no rtpbin, no RTCP)
//! ```
//! The reorder step is a pad probe ([`crate::media::reorder`]): packets ahead of a hole wait for
//! it on the same thread, for at most the configured latency.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, Once};

use gstreamer as gst;
use gstreamer::prelude::*;

use super::gst_util::{gst_err, make};
use super::srtp_session::srtp_decoder;
use super::types::{KmsKeys, ReceiverError, ReceiverStats, SrtpDecoders, VIDEO};
use crate::media::reorder::{Reorder, ReorderCounts};

/// How long a context thread may wait to gather socket wake-ups into one (threadshare's
/// `context-wait`): the latency it adds at most, and what makes one thread serve many sockets.
pub const CONTEXT_WAIT_MS: u32 = 5;

static REGISTER: Once = Once::new();

/// Registers the threadshare elements with GStreamer (linked in, not a plugin file).
fn register() -> Result<(), ReceiverError> {
    let mut result = Ok(());
    REGISTER.call_once(|| {
        if let Err(e) = gstthreadshare::plugin_register_static() {
            result = Err(gst_err(format!(
                "cannot register the threadshare elements: {e}"
            )));
        }
    });
    result?;
    if gst::ElementFactory::find("ts-udpsrc").is_none() {
        return Err(ReceiverError::MissingElement("ts-udpsrc"));
    }
    Ok(())
}

/// One stream's socket on the shared context, through KMS's SRTP decoder when `srtp`: the pad the
/// decoding branch links to. `idx` is the session (audio or video).
#[allow(clippy::too_many_arguments)]
pub(super) fn add_stream(
    pipeline: &gst::Pipeline,
    context: &str,
    bind: &str,
    port: u16,
    caps: gst::Caps,
    session: usize,
    reorder_ms: u32,
    srtp: Option<(usize, &KmsKeys, &SrtpDecoders)>,
    stats: &Arc<ReceiverStats>,
) -> Result<gst::Pad, ReceiverError> {
    let pad = add_socket(pipeline, context, bind, port, caps, srtp, stats)?;
    put_in_order(&pad, session, reorder_ms, stats.clone());
    Ok(pad)
}

/// The socket, and the SRTP decoder after it when the tap leg is encrypted: the pad RTP leaves by.
fn add_socket(
    pipeline: &gst::Pipeline,
    context: &str,
    bind: &str,
    port: u16,
    caps: gst::Caps,
    srtp: Option<(usize, &KmsKeys, &SrtpDecoders)>,
    stats: &Arc<ReceiverStats>,
) -> Result<gst::Pad, ReceiverError> {
    register()?;
    let src = make("ts-udpsrc")?;
    src.set_property("context", context);
    src.set_property("context-wait", CONTEXT_WAIT_MS);
    src.set_property("address", bind);
    src.set_property("port", port as i32);
    src.set_property("caps", &caps);
    pipeline.add(&src).map_err(gst_err)?;
    let src_pad = src
        .static_pad("src")
        .ok_or_else(|| gst_err("ts-udpsrc has no src pad"))?;
    stamp_arrival(&src_pad, pipeline);
    let Some((idx, keys, decoders)) = srtp else {
        return Ok(src_pad);
    };
    let dec =
        srtp_decoder(idx, keys, decoders, stats).ok_or(ReceiverError::MissingElement("srtpdec"))?;
    pipeline.add(&dec).map_err(gst_err)?;
    src.link_pads(Some("src"), &dec, Some("rtp_sink"))
        .map_err(gst_err)?;
    dec.static_pad("rtp_src")
        .ok_or_else(|| gst_err("srtpdec has no rtp_src pad"))
}

/// `ts-udpsrc` leaves packets without a timestamp, and a decoder then dates its output by counting
/// samples from zero: every lost packet made later audio look 20 ms older (5 % loss: voice windows
/// seconds old and dropped as stale within a minute, measured on a real KMS). Each packet is
/// stamped with its arrival (the pipeline's running time), as `udpsrc` does.
fn stamp_arrival(pad: &gst::Pad, pipeline: &gst::Pipeline) {
    let pipeline = pipeline.downgrade();
    pad.add_probe(gst::PadProbeType::BUFFER, move |_, info| {
        let Some(pipeline) = pipeline.upgrade() else {
            return gst::PadProbeReturn::Ok;
        };
        let (Some(clock), Some(base)) = (pipeline.clock(), pipeline.base_time()) else {
            return gst::PadProbeReturn::Ok;
        };
        if let Some(gst::PadProbeData::Buffer(buffer)) = &mut info.data {
            let running = clock.time().saturating_sub(base);
            buffer.make_mut().set_pts(running);
        }
        gst::PadProbeReturn::Ok
    });
}

/// Puts the RTP leaving `pad` back in sequence order before the depayloader (which drops a packet
/// that comes after a later one): each packet is taken out of the push and what follows in order
/// is handed to the peer on the same thread. The arrival time is the stamp [`stamp_arrival`] put.
fn put_in_order(pad: &gst::Pad, session: usize, reorder_ms: u32, stats: Arc<ReceiverStats>) {
    // 64 packets: a 320x240 keyframe and what follows it within the hold.
    struct State {
        reorder: Reorder<gst::Buffer>,
        // Reused for every packet: the media path allocates nothing here.
        ready: Vec<gst::Buffer>,
    }
    let state = Mutex::new(State {
        reorder: Reorder::new(u64::from(reorder_ms) * 1000, 64),
        ready: Vec::with_capacity(64),
    });
    pad.add_probe(gst::PadProbeType::BUFFER, move |pad, info| {
        let Some(gst::PadProbeData::Buffer(buffer)) = &info.data else {
            return gst::PadProbeReturn::Ok;
        };
        let Some(seq) = rtp_sequence_number(buffer) else {
            // Not RTP: the depayloader says so.
            return gst::PadProbeReturn::Ok;
        };
        let arrival_us = buffer.pts().map_or(0, |t| t.useconds());
        let Some(gst::PadProbeData::Buffer(buffer)) = info.data.take() else {
            return gst::PadProbeReturn::Ok;
        };
        // Only this stream's thread takes the lock, so handing packets on under it is safe.
        let mut st = state.lock().unwrap_or_else(|e| e.into_inner());
        let State { reorder, ready } = &mut *st;
        reorder.push_into(seq, arrival_us, buffer, ready);
        if session == VIDEO {
            record(&stats, reorder.counts);
        }
        let peer = pad.peer();
        for b in ready.drain(..) {
            let Some(peer) = &peer else { continue };
            if let Err(e) = peer.chain(b) {
                if e != gst::FlowError::Flushing {
                    tracing::debug!(error = ?e, "depayloader refused a packet");
                }
            }
        }
        gst::PadProbeReturn::Handled
    });
}

/// The running totals of a video stream's reorder step, as the tap-leg counters.
fn record(stats: &ReceiverStats, counts: ReorderCounts) {
    stats
        .video_reordered
        .store(counts.reordered, Ordering::Relaxed);
    stats
        .video_reorder_lost
        .store(counts.lost, Ordering::Relaxed);
    stats
        .video_reorder_late
        .store(counts.late, Ordering::Relaxed);
}

/// An RTP packet's sequence number (version 2, a whole fixed header), or `None`.
fn rtp_sequence_number(buffer: &gst::BufferRef) -> Option<u16> {
    let mut header = [0u8; 4];
    if buffer.size() < 12 || buffer.copy_to_slice(0, &mut header).is_err() {
        return None;
    }
    (header[0] >> 6 == 2).then(|| u16::from_be_bytes([header[2], header[3]]))
}
