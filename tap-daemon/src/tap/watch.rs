//! Watching a tapped publisher: a stalled video asks KMS for a keyframe ([`StallWatch`], pure),
//! and KMS transcoding for it is reported.

use std::sync::Arc;
use std::time::Duration;

use kurento_client::prelude::*;
use tracing::{debug, warn};

use crate::metrics::Metrics;

/// How often a tap's video is checked for a stall.
pub(crate) const STALL_TICK: Duration = Duration::from_millis(300);

/// Stalled ticks on which a keyframe is asked for every time (10 s), before every fifth.
pub(crate) const STALL_EVERY_TICK: u32 = 33;

/// Whether a tap's video has stalled, judged every [`STALL_TICK`] from its decoded-frame count: a
/// tick with no new frame is a stall (a camera sends at least 5 frames/s), and a keyframe is asked
/// for on every stalled tick for [`STALL_EVERY_TICK`] ticks, then every fifth (a publisher whose
/// camera is off is not asked three times a second forever).
///
/// Why after the start too: under loss KMS itself drops a publisher's H.264 until the next keyframe
/// ("DISCONTINUITY at non-keyframe; will drop until keyframe") and then sends the tap nothing, so
/// the receiver sees no loss and asks for nothing; if KMS's own request is lost, the picture stays
/// frozen for every subscriber until the browser's next keyframe. Why every tick: what reaches the
/// browser is KMS's `requestKeyframe` (a FIR with a fresh sequence number, merged into one per RTCP
/// packet, nothing in KMS limits it; Chrome makes at most one keyframe per 300 ms), and each lost
/// FIR or damaged keyframe cost 1.5 s when only every fifth tick asked.
#[derive(Debug, Default)]
pub(crate) struct StallWatch {
    last_frames: u64,
    stalled_ticks: u32,
}

impl StallWatch {
    /// One tick with `frames` decoded so far; true when a keyframe should be asked for now.
    pub(crate) fn tick(&mut self, frames: u64) -> bool {
        if frames != self.last_frames {
            self.last_frames = frames;
            self.stalled_ticks = 0;
            return false;
        }
        self.stalled_ticks = self.stalled_ticks.saturating_add(1);
        self.stalled_ticks <= STALL_EVERY_TICK || self.stalled_ticks.is_multiple_of(5)
    }
}

/// Per tap: warns when KMS starts transcoding for the publisher (our offer should prevent it), and
/// asks for a keyframe whenever video stops decoding ([`StallWatch`]), from the start on.
pub(super) async fn watch_publisher(
    publisher: WebRtcEndpoint,
    tap: RtpEndpoint,
    metrics: Arc<Metrics>,
    stats: Arc<crate::media::receiver::ReceiverStats>,
    pli: crate::media::receiver::KeyframeRequester,
    has_video: bool,
) {
    let transcoding = publisher.on::<MediaTranscodingStateChanged>().await.ok();
    let keyframe_check = async {
        if !has_video {
            return;
        }
        let mut watch = StallWatch::default();
        loop {
            tokio::time::sleep(STALL_TICK).await;
            let frames = stats
                .video_frames
                .load(std::sync::atomic::Ordering::Relaxed);
            if !watch.tick(frames) {
                continue;
            }
            // KMS's API call, which makes the publisher's session send its browser a FIR; and RTCP
            // from our receiver, which KMS 7.x (GStreamer >= 1.20) does not forward: its
            // force-key-unit event carries the tap's SSRC, which the publisher's session does
            // not know. Kept for KMS versions that forward it; harmless.
            if pli.request() {
                metrics.keyframe_requests.inc();
            }
            let outcome = match tap.request_keyframe().await {
                Ok(()) => "ok",
                Err(e)
                    if e.code()
                        == Some(kurento_client::ErrorCode::MediaObjectOperationNotSupported) =>
                {
                    "not_flowing"
                }
                Err(e) if e.is_object_not_found() => "gone",
                Err(e) => {
                    debug!(tap = tap.id(), error = %e, "requestKeyframe failed");
                    "error"
                }
            };
            metrics.kms_keyframe_request(outcome);
        }
    };
    let watch_transcoding = async {
        let Some(mut events) = transcoding else {
            return std::future::pending().await;
        };
        while let Some(Ok(ev)) = events.recv().await {
            if ev.state == MediaTranscodingState::Transcoding {
                metrics.transcoding.inc();
                warn!(publisher = publisher.id(), media = ?ev.media_type, "KMS is transcoding for a tapped publisher");
            }
        }
    };
    tokio::join!(keyframe_check, watch_transcoding);
}

#[cfg(test)]
mod tests {
    use super::StallWatch;

    #[test]
    fn flowing_video_asks_for_nothing() {
        let mut w = StallWatch::default();
        assert!((1..=20).all(|n| !w.tick(n * 15)));
    }

    #[test]
    fn a_stall_asks_at_once_then_backs_off_and_a_frame_resets_it() {
        let mut w = StallWatch::default();
        assert!(!w.tick(30));
        let asks: Vec<bool> = (0..45).map(|_| w.tick(30)).collect();
        // Every tick asks for 10 s (33 ticks), then only every fifth (35, 40, 45).
        let asked: Vec<usize> = asks
            .iter()
            .enumerate()
            .filter(|(_, a)| **a)
            .map(|(i, _)| i + 1)
            .collect();
        let mut expected: Vec<usize> = (1..=33).collect();
        expected.extend([35, 40, 45]);
        assert_eq!(asked, expected);
        assert!(!w.tick(31), "frames again: no ask");
        assert!(w.tick(31), "a new stall asks at once");
    }

    #[test]
    fn a_tap_that_never_decoded_asks_from_the_first_tick() {
        let mut w = StallWatch::default();
        assert!(w.tick(0));
    }
}
