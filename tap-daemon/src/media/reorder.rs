//! Puts RTP packets back in sequence order on the shared receive threads, which have no
//! jitterbuffer (threadshare 0.15 has none, and rtpjitterbuffer brings two threads per stream).
//!
//! Why: a depayloader drops a packet that arrives after a later one. Under jitter that reorders
//! (measured on KMS 7.3 with 30 ± 30 ms on the path) every H.264 keyframe, tens of packets, arrived
//! with holes: one publisher got 1 % of its face rate where a browser decoded 96 % of its frames.
//! A packet ahead of a hole is held until the hole fills, until `max_hold_us` has passed since the
//! oldest held packet arrived, or until `max_held` packets wait; then the hole is given up on and
//! what follows it goes on in order. There is no timer: holds are judged when packets arrive, so a
//! hold can outlast `max_hold_us` by one packet interval (tens of ms for video, 20 ms for Opus).
//! Pure: sequence numbers and arrival times are passed in.

/// What one packet did to the stream (for the counters).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ReorderCounts {
    /// Packets that arrived after a later one and were put back in place.
    pub reordered: u64,
    /// Packets given up on (the hole was not filled in time).
    pub lost: u64,
    /// Packets dropped because their place had passed (too late) or they came twice.
    pub late: u64,
}

/// The reorder state of one stream.
pub struct Reorder<T> {
    max_hold_us: u64,
    max_held: usize,
    /// The next sequence number owed downstream (none before the first packet).
    expected: Option<u16>,
    /// Packets ahead of a hole: (sequence number, arrival µs, packet), unordered (a few at most).
    held: Vec<(u16, u64, T)>,
    /// Running totals.
    pub counts: ReorderCounts,
}

/// A jump this far from the expected number is a new sequence (a sender restart), not disorder.
const RESTART_DISTANCE: i32 = 3000;

impl<T> Reorder<T> {
    /// Holds packets at most `max_hold_us` and at most `max_held` of them (at least one).
    pub fn new(max_hold_us: u64, max_held: usize) -> Self {
        Reorder {
            max_hold_us,
            max_held: max_held.max(1),
            expected: None,
            held: Vec::new(),
            counts: ReorderCounts::default(),
        }
    }

    /// Packets waiting for a hole to fill.
    pub fn held(&self) -> usize {
        self.held.len()
    }

    /// Takes in packet `seq` that arrived at `arrival_us`; returns the packets to pass on, in
    /// sequence order (often just this one; none while it waits; several when it fills a hole).
    pub fn push(&mut self, seq: u16, arrival_us: u64, packet: T) -> Vec<T> {
        let mut out = Vec::new();
        self.push_into(seq, arrival_us, packet, &mut out);
        out
    }

    /// [`Reorder::push`] appending to `out` (a buffer the caller reuses: no allocation per
    /// packet on the media path).
    pub fn push_into(&mut self, seq: u16, arrival_us: u64, packet: T, out: &mut Vec<T>) {
        let Some(expected) = self.expected else {
            self.expected = Some(seq.wrapping_add(1));
            out.push(packet);
            return;
        };
        let distance = i32::from(seq.wrapping_sub(expected) as i16);
        if distance.abs() >= RESTART_DISTANCE {
            // A new sequence: what waits goes first, in its order, then the new one.
            self.flush(out);
            self.expected = Some(seq.wrapping_add(1));
            out.push(packet);
            return;
        }
        if distance < 0 || self.held.iter().any(|(s, _, _)| *s == seq) {
            self.counts.late += 1;
            return;
        }
        if distance == 0 {
            if !self.held.is_empty() {
                self.counts.reordered += 1;
            }
            out.push(packet);
            self.expected = Some(seq.wrapping_add(1));
            self.release_run(out);
        } else {
            self.held.push((seq, arrival_us, packet));
        }
        // Give up on holes that have waited long enough, oldest first.
        while let Some(oldest) = self.held.iter().map(|(_, a, _)| *a).min() {
            let waited = arrival_us.saturating_sub(oldest);
            if waited < self.max_hold_us && self.held.len() <= self.max_held {
                break;
            }
            let Some(expected) = self.expected else { break };
            let next = self
                .held
                .iter()
                .map(|(s, _, _)| *s)
                .min_by_key(|s| s.wrapping_sub(expected))
                .unwrap_or(expected);
            self.counts.lost += u64::from(next.wrapping_sub(expected));
            self.expected = Some(next);
            self.release_run(out);
        }
    }

    /// Passes on the held packets that now follow in order.
    fn release_run(&mut self, out: &mut Vec<T>) {
        while let Some(expected) = self.expected {
            let Some(i) = self.held.iter().position(|(s, _, _)| *s == expected) else {
                break;
            };
            let (_, _, packet) = self.held.swap_remove(i);
            out.push(packet);
            self.expected = Some(expected.wrapping_add(1));
        }
    }

    /// Everything held, in sequence order (holes given up on), onto `out`.
    fn flush(&mut self, out: &mut Vec<T>) {
        let Some(expected) = self.expected else {
            return;
        };
        self.held.sort_by_key(|(s, _, _)| s.wrapping_sub(expected));
        out.extend(self.held.drain(..).map(|(_, _, p)| p));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(r: &mut Reorder<u16>, packets: &[(u16, u64)]) -> Vec<u16> {
        packets
            .iter()
            .flat_map(|&(seq, at)| r.push(seq, at, seq))
            .collect()
    }

    #[test]
    fn packets_in_order_pass_at_once() {
        let mut r = Reorder::new(100_000, 64);
        for seq in 10..20u16 {
            assert_eq!(r.push(seq, u64::from(seq) * 1000, seq), vec![seq]);
        }
        assert_eq!(r.counts, ReorderCounts::default());
    }

    #[test]
    fn a_packet_overtaken_by_later_ones_is_put_back_in_its_place() {
        let mut r = Reorder::new(100_000, 64);
        let out = run(
            &mut r,
            &[(1, 0), (3, 1_000), (4, 2_000), (2, 3_000), (5, 4_000)],
        );
        assert_eq!(out, vec![1, 2, 3, 4, 5]);
        assert_eq!(r.counts.reordered, 1);
        assert_eq!((r.counts.lost, r.counts.late), (0, 0));
    }

    #[test]
    fn a_hole_is_given_up_on_after_the_hold_time_and_what_follows_goes_on() {
        let mut r = Reorder::new(50_000, 64);
        let out = run(&mut r, &[(1, 0), (3, 10_000), (4, 20_000), (5, 40_000)]);
        assert_eq!(out, vec![1], "3, 4, 5 wait for 2");
        assert_eq!(r.held(), 3);
        let out = run(&mut r, &[(6, 61_000)]);
        assert_eq!(out, vec![3, 4, 5, 6], "2 is lost after 50 ms");
        assert_eq!(r.counts.lost, 1);
        // 2 turning up now is too late, and is dropped.
        assert!(run(&mut r, &[(2, 70_000)]).is_empty());
        assert_eq!(r.counts.late, 1);
    }

    #[test]
    fn at_most_max_held_packets_wait() {
        let mut r = Reorder::new(10_000_000, 3);
        let out = run(&mut r, &[(1, 0), (3, 1), (4, 2), (5, 3)]);
        assert_eq!(out, vec![1]);
        let out = run(&mut r, &[(6, 4)]);
        assert_eq!(out, vec![3, 4, 5, 6], "a fourth would exceed 3 held");
        assert_eq!(r.counts.lost, 1);
    }

    #[test]
    fn sequence_numbers_wrap() {
        let mut r = Reorder::new(100_000, 64);
        let out = run(
            &mut r,
            &[(65534, 0), (0, 1_000), (65535, 2_000), (1, 3_000)],
        );
        assert_eq!(out, vec![65534, 65535, 0, 1]);
    }

    #[test]
    fn duplicates_are_dropped_and_a_restart_is_not_a_hole() {
        let mut r = Reorder::new(100_000, 64);
        let out = run(&mut r, &[(7, 0), (7, 1), (9, 2), (9, 3)]);
        assert_eq!(out, vec![7]);
        assert_eq!(r.counts.late, 2);
        // The sender starts again far away: 9 goes first, then the new sequence.
        let out = run(&mut r, &[(40_000, 4), (40_001, 5)]);
        assert_eq!(out, vec![9, 40_000, 40_001]);
    }

    /// A burst of a keyframe's packets shuffled within a small window comes out whole and in
    /// order (the case the depayloader could not survive).
    #[test]
    fn a_shuffled_keyframe_comes_out_whole() {
        let mut r = Reorder::new(100_000, 64);
        let order: [u16; 12] = [100, 102, 101, 104, 103, 107, 105, 106, 110, 108, 109, 111];
        let out: Vec<u16> = order
            .iter()
            .enumerate()
            .flat_map(|(i, &s)| r.push(s, i as u64 * 2_000, s))
            .collect();
        assert_eq!(out, (100..=111).collect::<Vec<_>>());
        assert_eq!(r.counts.lost, 0);
    }
}
