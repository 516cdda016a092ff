//! Dating what the receiver decodes: the sender's capture time (RTCP sender reports) anchored on
//! our clock ([`CaptureClock`]), or arrival times when the sender's clock does not keep time.

use std::sync::atomic::Ordering;
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use gstreamer as gst;
use gstreamer::prelude::*;
use tracing::debug;

use crate::media::capture_clock::CaptureClock;

use super::types::ReceiverStats;

pub(super) fn unix_us_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_micros() as u64
}

/// The sender's capture time of a buffer, µs on the sender's NTP clock taken as Unix time: the
/// reference timestamp rtpbin derives from RTCP sender reports. Not comparable with our clock as it
/// is (KMS's sender-report clock is its own): [`CaptureClock`] anchors it.
pub(super) fn sender_us(buffer: &gst::BufferRef) -> Option<u64> {
    let ntp_caps = gst::Caps::new_empty_simple("timestamp/x-ntp");
    buffer
        .iter_meta::<gst::ReferenceTimestampMeta>()
        .find(|meta| meta.reference().can_intersect(&ntp_caps))
        // NTP epoch 1900 → Unix epoch 1970 (wrapping: a sender clock near 1900 is still a clock).
        .map(|meta| (meta.timestamp().nseconds() / 1000).wrapping_sub(2_208_988_800 * 1_000_000))
}

/// When a buffer arrived, our Unix µs: the running time the jitterbuffer gave it (socket arrival,
/// de-jittered) on the wall clock; never after now.
pub(super) fn arrival_us(buffer: &gst::BufferRef, clock_to_unix: &ClockMap) -> u64 {
    let now = unix_us_now();
    match buffer.pts() {
        Some(pts) => clock_to_unix.unix_us(pts).min(now),
        None => now,
    }
}

/// Capture time of a buffer in our clock (see [`CaptureClock`]).
pub(super) fn capture_us(
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
pub(super) struct ClockMap {
    pub(super) pipeline: gst::Pipeline,
}

impl ClockMap {
    pub(super) fn unix_us(&self, running: gst::ClockTime) -> u64 {
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
