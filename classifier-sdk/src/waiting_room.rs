//! The chunks a worker holds between NATS and its models: bounded, at most one per lane (a
//! participant's stream for one model), served earliest deadline first.
//!
//! Why: NATS hands a worker requests in bursts (a daemon decodes many participants' frames at
//! once). Before, the only buffer was the NATS subscription's channel (8 messages); when a burst
//! overflowed it, async-nats dropped the rest without a word, the daemon waited for each until its
//! deadline (`timeout`), its lane stayed busy meanwhile and superseded the participant's next
//! chunks. Whoever came late in every burst lost every time: at fifty participants on two cores the
//! slowest participant got 38–73 % of the asked face rate while the fastest got 100 %.
//! Here everything is taken off the socket at once, a newer chunk of a lane replaces the one still
//! waiting (it would be answered after it anyway), a full room refuses at once with `busy`, and the
//! models take next the chunk of the lane served least recently (then the one due first): under
//! overload every lane gets its share of the model in turn, where first-come or earliest-deadline
//! alone would serve the same lanes every burst. Refusals are answered immediately, so a daemon's
//! lane is never held by a chunk nobody will compute. Pure: deadlines are passed in.

use std::collections::HashMap;

/// Why a chunk left the room without being computed (answered at once).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// A newer chunk of the same lane arrived while this one waited.
    Superseded,
    /// The room was full when this chunk arrived.
    Full,
}

struct Waiting<T> {
    deadline_us: u64,
    arrival: u64,
    item: T,
}

/// Chunks waiting for a model, by lane.
pub struct WaitingRoom<T> {
    capacity: usize,
    arrivals: u64,
    lanes: HashMap<String, Waiting<T>>,
    /// When each lane was last served (a count of chunks taken), for the order of service.
    served: HashMap<String, u64>,
    takes: u64,
}

impl<T> WaitingRoom<T> {
    /// A room for at most `capacity` chunks (at least one).
    pub fn new(capacity: usize) -> Self {
        WaitingRoom {
            capacity: capacity.max(1),
            arrivals: 0,
            lanes: HashMap::new(),
            served: HashMap::new(),
            takes: 0,
        }
    }

    /// Chunks waiting.
    pub fn len(&self) -> usize {
        self.lanes.len()
    }

    /// Whether nothing waits.
    pub fn is_empty(&self) -> bool {
        self.lanes.is_empty()
    }

    /// Takes in a chunk of `lane` due at `deadline_us`. Returns the chunk that must be answered
    /// at once instead of computed, if any: the one it replaced, or itself when the room is full.
    pub fn admit(&mut self, lane: &str, deadline_us: u64, item: T) -> Option<(T, Refusal)> {
        self.arrivals += 1;
        let waiting = Waiting {
            deadline_us,
            arrival: self.arrivals,
            item,
        };
        if let Some(slot) = self.lanes.get_mut(lane) {
            let old = std::mem::replace(slot, waiting);
            return Some((old.item, Refusal::Superseded));
        }
        if self.lanes.len() >= self.capacity {
            return Some((waiting.item, Refusal::Full));
        }
        self.lanes.insert(lane.to_owned(), waiting);
        None
    }

    /// Takes up to `max` chunks: lanes served least recently first (never served: first of all),
    /// then the earliest deadline, then first come. Whether each can still make its deadline is
    /// the caller's check when it starts them.
    pub fn take(&mut self, max: usize) -> Vec<T> {
        let mut order: Vec<(u64, u64, u64, String)> = self
            .lanes
            .iter()
            .map(|(lane, w)| {
                let last = self.served.get(lane).copied().unwrap_or(0);
                (last, w.deadline_us, w.arrival, lane.clone())
            })
            .collect();
        order.sort_unstable();
        let mut out = Vec::new();
        for (_, _, _, lane) in order.into_iter().take(max) {
            if let Some(w) = self.lanes.remove(&lane) {
                self.takes += 1;
                self.served.insert(lane, self.takes);
                out.push(w.item);
            }
        }
        // Remember lanes in proportion to the room: the oldest memories go first.
        if self.served.len() > 4 * self.capacity {
            let mut stamps: Vec<u64> = self.served.values().copied().collect();
            stamps.sort_unstable();
            let cut = stamps[stamps.len() / 2];
            self.served.retain(|_, t| *t > cut);
        }
        out
    }

    /// Empties the room (shutdown): every chunk, to be answered.
    pub fn drain(&mut self) -> Vec<T> {
        self.lanes.drain().map(|(_, w)| w.item).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn among_lanes_never_served_the_chunk_due_first_goes_first() {
        let mut room = WaitingRoom::new(8);
        assert!(room.admit("b", 300, "b").is_none());
        assert!(room.admit("a", 100, "a").is_none());
        assert!(room.admit("c", 200, "c").is_none());
        assert_eq!(room.take(2), vec!["a", "c"]);
        assert_eq!(room.take(2), vec!["b"]);
        assert!(room.take(2).is_empty());
    }

    #[test]
    fn equal_deadlines_are_served_in_arrival_order() {
        let mut room = WaitingRoom::new(8);
        for lane in ["x", "y", "z"] {
            room.admit(lane, 500, lane);
        }
        assert_eq!(room.take(8), vec!["x", "y", "z"]);
    }

    #[test]
    fn the_lane_served_least_recently_goes_first_even_when_due_later() {
        let mut room = WaitingRoom::new(8);
        room.admit("a", 100, "a1");
        assert_eq!(room.take(1), vec!["a1"]);
        room.admit("a", 200, "a2");
        room.admit("b", 900, "b1");
        assert_eq!(room.take(1), vec!["b1"], "b has not had its turn");
        assert_eq!(room.take(1), vec!["a2"]);
        // Memory of lanes stays bounded.
        let mut small = WaitingRoom::new(1);
        for i in 0..100 {
            small.admit(&format!("l{i}"), i, i);
            small.take(1);
        }
        assert!(small.served.len() <= 4, "{}", small.served.len());
    }

    #[test]
    fn a_newer_chunk_of_a_lane_replaces_the_waiting_one_which_is_answered() {
        let mut room = WaitingRoom::new(8);
        room.admit("alice/fer", 100, 1);
        room.admit("bob/fer", 150, 2);
        assert_eq!(
            room.admit("alice/fer", 300, 3),
            Some((1, Refusal::Superseded))
        );
        assert_eq!(room.len(), 2, "one per lane");
        // Alice's newer chunk takes its own deadline's place.
        assert_eq!(room.take(8), vec![2, 3]);
    }

    #[test]
    fn a_full_room_refuses_the_newcomer_and_keeps_what_it_holds() {
        let mut room = WaitingRoom::new(2);
        room.admit("a", 100, "a");
        room.admit("b", 100, "b");
        assert_eq!(room.admit("c", 50, "c"), Some(("c", Refusal::Full)));
        // A lane already inside is still refreshed when the room is full.
        assert_eq!(room.admit("a", 200, "a2"), Some(("a", Refusal::Superseded)));
        assert_eq!(room.drain().len(), 2);
        assert!(room.is_empty());
        assert_eq!(
            WaitingRoom::<u8>::new(0).admit("x", 1, 1),
            None,
            "at least one"
        );
    }

    /// The starvation this room was built against: fifty lanes arriving in the same order every
    /// period, the model able to compute 80 % of them before the next burst. Every lane gets its
    /// share, not the first forty everything and the last ten nothing.
    #[test]
    fn a_worker_short_of_capacity_shares_it_between_lanes() {
        let lanes = 50;
        let period_us = 200_000u64;
        let per_chunk_us = period_us / 40; // 40 of 50 per period
        let deadline_us = 500_000u64;
        let mut room = WaitingRoom::new(256);
        let mut served = vec![0u32; lanes];
        let mut now = 0u64;
        let mut busy_until = 0u64;
        for period in 0..100u64 {
            let burst_at = period * period_us;
            // The model works until the burst comes.
            while busy_until < burst_at {
                now = busy_until.max(now);
                let Some(item) = room.take(1).pop() else {
                    break;
                };
                let (lane, due): (usize, u64) = item;
                if now + per_chunk_us <= due {
                    served[lane] += 1;
                    busy_until = now + per_chunk_us;
                } else {
                    busy_until = now; // refused as stale: no model time spent
                }
            }
            now = burst_at;
            busy_until = busy_until.max(now);
            for (lane, _) in served.iter().enumerate() {
                room.admit(
                    &format!("p{lane}"),
                    burst_at + deadline_us,
                    (lane, burst_at + deadline_us),
                );
            }
        }
        let (min, max) = (served.iter().min().unwrap(), served.iter().max().unwrap());
        assert!(*max > 0);
        assert!(
            f64::from(*min) >= 0.8 * f64::from(*max),
            "every lane gets its share: {min}..{max} of 100"
        );
    }
}
