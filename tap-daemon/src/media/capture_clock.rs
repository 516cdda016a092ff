//! Capture times in this host's clock, from whatever time a stream's sender claims.
//!
//! A tapped stream carries two clocks: the sender's (RTCP sender reports map RTP timestamps to the
//! sender's NTP time; rtpbin stamps each buffer with it) and ours (when the buffer arrived). The
//! sender of a tap is KMS, which re-times what it forwards: its sender-report clock need not be the
//! wall clock at all, and it differs from ours by an offset that can be seconds or years. Taken as a
//! Unix time it made every video frame look seconds old, so every chunk was dropped as stale after
//! the first sender report (the first real-KMS run: 2 chunks per participant, then none).
//!
//! Worse, KMS 7.3's tap sender reports do not even keep time: measured on a real KMS, the sender
//! clock of an Opus tap advanced 3.3 s while 18 s passed (and started 4–5 s behind ours). So the
//! sender's time is only used while it behaves like a clock: anchored to ours as
//! `capture = sender + offset`, where `offset` is the smallest `arrival - sender` seen recently (the
//! least-delayed frame's transit), which keeps the spacing of frames free of network jitter. When the
//! sender's clock already agrees with ours (offset between 0 and [`TRUSTED_TRANSIT_US`]) its times
//! are used as they are. The minimum creeps up slowly so that drift is followed, and is re-learnt
//! when the sender's clock jumps (a restarted sender). A sender whose clock falls behind arrival by
//! more than [`UNUSABLE_LAG_US`] (three frames in a row) is judged unusable for the rest of the
//! stream, and arrival time (de-jittered by the jitterbuffer) is used from then on.
//!
//! Guarantees, for any input: a capture time is never after its arrival (unless the previous one
//! already was), and later than the previous capture time of the same stream whenever arrival
//! allows (chunk cadence and deadlines rely on both).

/// A sender clock within this much of ours (ahead of arrival by up to this) is taken as synchronised.
pub const TRUSTED_TRANSIT_US: i64 = 1_000_000;
/// How fast the learnt minimum transit may rise (µs per second of arrival time): follows a sender
/// clock up to 0.2 % slow, while jitter and one late frame change nothing.
const CREEP_US_PER_S: i64 = 2_000;
/// A change of apparent transit this large means the sender's clock jumped: re-learn.
const JUMP_US: i64 = 5_000_000;
/// A frame this much later than the anchored sender clock predicts means the sender's clock does
/// not advance with real time (the jitterbuffer's de-jittered arrival times do not wander that far
/// on a LAN; a congested path that does is as well served by arrival times).
pub const UNUSABLE_LAG_US: i64 = 300_000;
/// Consecutive late frames before the sender's clock is given up.
const UNUSABLE_AFTER: u32 = 3;

/// One stream's mapping from sender time to local capture time.
#[derive(Debug, Default, Clone)]
pub struct CaptureClock {
    /// Smallest `arrival - sender` seen (with creep), µs.
    min_transit_us: Option<i64>,
    /// Arrival time of the last update, µs.
    last_arrival_us: u64,
    /// Last capture time handed out.
    last_capture_us: u64,
    /// Sender times mapped (the rest were arrival times).
    pub mapped: u64,
    /// Sender clock jumps seen.
    pub jumps: u64,
    /// Consecutive frames later than [`UNUSABLE_LAG_US`].
    late_in_a_row: u32,
    /// The sender's clock was judged unusable: arrival times only.
    pub unusable: bool,
}

impl CaptureClock {
    /// The capture time of a buffer that arrived at `arrival_us` (our Unix µs), whose sender says it
    /// was captured at `sender_us` (sender's clock, µs; `None` before the first sender report).
    pub fn capture_us(&mut self, sender_us: Option<u64>, arrival_us: u64) -> u64 {
        // i128: any pair of u64 times differs by less than its range, so nothing can overflow.
        let raw = match sender_us.filter(|_| !self.unusable) {
            Some(s) => {
                let transit = arrival_us as i128 - s as i128;
                let min = match self.min_transit_us.map(i128::from) {
                    Some(m) if (transit - m).abs() > i128::from(JUMP_US) => {
                        self.jumps += 1;
                        transit
                    }
                    Some(m) => {
                        let elapsed_us = arrival_us.saturating_sub(self.last_arrival_us) as i128;
                        let crept = m + i128::from(CREEP_US_PER_S) * elapsed_us / 1_000_000;
                        transit.min(crept)
                    }
                    None => transit,
                };
                self.min_transit_us = Some(min.clamp(i64::MIN.into(), i64::MAX.into()) as i64);
                self.mapped += 1;
                if transit - min > i128::from(UNUSABLE_LAG_US) {
                    self.late_in_a_row += 1;
                    if self.late_in_a_row >= UNUSABLE_AFTER {
                        self.unusable = true;
                    }
                } else {
                    self.late_in_a_row = 0;
                }
                if self.unusable {
                    arrival_us
                } else if (0..=i128::from(TRUSTED_TRANSIT_US)).contains(&min) {
                    s
                } else {
                    (s as i128 + min).clamp(0, u64::MAX.into()) as u64
                }
            }
            None => arrival_us,
        };
        self.last_arrival_us = self.last_arrival_us.max(arrival_us);
        // Strictly increasing while arrival allows it: two frames are never captured at once.
        let floor = if self.last_capture_us < arrival_us {
            self.last_capture_us + 1
        } else {
            self.last_capture_us
        };
        let capture = raw.min(arrival_us).max(floor);
        self.last_capture_us = capture;
        capture
    }

    /// The learnt offset between the sender's clock and ours (transit included), µs.
    pub fn offset_us(&self) -> Option<i64> {
        self.min_transit_us
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_780_000_000_000_000;

    /// Frames every 66.7 ms, sender clock `skew_us` off ours, transit 5 ms + jitter.
    fn stream(skew_us: i64, n: usize) -> Vec<(u64, u64)> {
        (0..n)
            .map(|i| {
                let capture = NOW + i as u64 * 66_667;
                let jitter = (i as u64 * 7919) % 30_000;
                let arrival = capture + 5_000 + jitter;
                ((capture as i64 + skew_us) as u64, arrival)
            })
            .collect()
    }

    #[test]
    fn a_sender_clock_seconds_behind_ours_gives_fresh_capture_times() {
        // The real-KMS failure: the sender report's clock is 7 s behind.
        let mut c = CaptureClock::default();
        for (sender, arrival) in stream(-7_000_000, 300) {
            let cap = c.capture_us(Some(sender), arrival);
            assert!(cap <= arrival);
            assert!(
                arrival - cap < 40_000,
                "captured {} µs before arrival",
                arrival - cap
            );
        }
    }

    #[test]
    fn a_sender_clock_ahead_or_years_off_is_anchored_too() {
        for skew in [3_000_000i64, 86_400_000_000, -3_155_760_000_000_000] {
            let mut c = CaptureClock::default();
            for (sender, arrival) in stream(skew, 100) {
                let cap = c.capture_us(Some(sender), arrival);
                assert!(cap <= arrival && arrival - cap < 40_000, "skew {skew}");
            }
        }
    }

    #[test]
    fn a_synchronised_sender_is_taken_as_it_is() {
        let mut c = CaptureClock::default();
        for (sender, arrival) in stream(0, 50) {
            assert_eq!(c.capture_us(Some(sender), arrival), sender);
        }
    }

    #[test]
    fn spacing_follows_the_sender_not_the_jitter() {
        let mut c = CaptureClock::default();
        let caps: Vec<u64> = stream(-7_000_000, 60)
            .into_iter()
            .map(|(s, a)| c.capture_us(Some(s), a))
            .collect();
        // After the first frames (min transit learnt), frames are 66.7 ms apart to within the
        // creep (0.13 ms a frame, until a less-delayed frame re-anchors), not the 30 ms of jitter.
        for w in caps[30..].windows(2) {
            assert!((w[1] - w[0]).abs_diff(66_667) <= 3_000, "{}", w[1] - w[0]);
        }
    }

    #[test]
    fn monotonic_across_the_switch_from_arrival_to_sender_time() {
        let mut c = CaptureClock::default();
        let mut last = 0;
        for (i, (sender, arrival)) in stream(-7_000_000, 100).into_iter().enumerate() {
            let cap = c.capture_us((i >= 10).then_some(sender), arrival);
            assert!(cap > last);
            last = cap;
        }
    }

    #[test]
    fn a_jump_of_the_sender_clock_is_relearnt() {
        let mut c = CaptureClock::default();
        for (s, a) in stream(-7_000_000, 50) {
            c.capture_us(Some(s), a);
        }
        // The sender restarts with another clock: times stay fresh.
        for (s, a) in stream(-100_000_000_000, 100).into_iter().skip(50) {
            let cap = c.capture_us(Some(s), a);
            assert!(a - cap < 40_000);
        }
        assert_eq!(c.jumps, 1);
    }

    #[test]
    fn drift_is_followed() {
        // The sender's clock runs 0.1 % slow: after 60 s it is 60 ms behind its start offset.
        let mut c = CaptureClock::default();
        for i in 0..900u64 {
            let capture = NOW + i * 66_667;
            let sender = capture - 7_000_000 - capture.saturating_sub(NOW) / 1000;
            let arrival = capture + 5_000;
            let cap = c.capture_us(Some(sender), arrival);
            assert!(arrival - cap < 40_000, "frame {i}: {} µs", arrival - cap);
        }
    }

    #[test]
    fn a_sender_clock_that_does_not_keep_time_is_given_up() {
        // Measured on KMS 7.3 (Opus tap): 3.3 s of sender time in 18 s, starting 5 s behind.
        let mut c = CaptureClock::default();
        let mut worst_late = 0;
        for i in 0..900u64 {
            let arrival = NOW + i * 20_000;
            let sender = NOW - 5_000_000 + i * 20_000 * 33 / 180;
            let cap = c.capture_us(Some(sender), arrival);
            if i > 100 {
                worst_late = worst_late.max(arrival - cap);
            }
        }
        assert!(c.unusable);
        assert_eq!(
            worst_late, 0,
            "arrival time once the sender clock is given up"
        );
    }

    #[test]
    fn one_late_frame_does_not_condemn_a_good_clock() {
        let mut c = CaptureClock::default();
        for (i, (s, a)) in stream(-7_000_000, 200).into_iter().enumerate() {
            let late = if i == 100 { 800_000 } else { 0 };
            c.capture_us(Some(s), a + late);
        }
        assert!(!c.unusable);
    }

    #[test]
    fn hostile_values_never_panic() {
        let mut c = CaptureClock::default();
        for (s, a) in [
            (0, 0),
            (u64::MAX, 0),
            (0, u64::MAX),
            (u64::MAX, u64::MAX),
            (5, 3),
        ] {
            let cap = c.capture_us(Some(s), a);
            assert!(cap <= a.max(c.last_capture_us));
        }
    }
}
