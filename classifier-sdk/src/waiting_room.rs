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
    /// Newer chunks of the same lane arrived while this one waited.
    Superseded,
    /// The room was full when this chunk arrived.
    Full,
}

struct Waiting<T> {
    lane: String,
    deadline_us: u64,
    arrival: u64,
    item: T,
}

/// Chunks waiting for a model, by lane.
pub struct WaitingRoom<T> {
    capacity: usize,
    per_lane: usize,
    arrivals: u64,
    waiting: Vec<Waiting<T>>,
    /// When each lane was last served (a count of chunks taken), for the order of service.
    served: HashMap<String, u64>,
    takes: u64,
}

impl<T> WaitingRoom<T> {
    /// A room for at most `capacity` chunks, `per_lane` of one lane (each at least one). A
    /// well-behaved daemon has at most the model's `max_in_flight` chunks of a lane out at once,
    /// so with `per_lane` = `max_in_flight` only a daemon sending more sees its chunks superseded.
    pub fn new(capacity: usize, per_lane: usize) -> Self {
        WaitingRoom {
            capacity: capacity.max(1),
            per_lane: per_lane.max(1),
            arrivals: 0,
            waiting: Vec::new(),
            served: HashMap::new(),
            takes: 0,
        }
    }

    /// Chunks waiting.
    pub fn len(&self) -> usize {
        self.waiting.len()
    }

    /// Whether nothing waits.
    pub fn is_empty(&self) -> bool {
        self.waiting.is_empty()
    }

    /// Takes in a chunk of `lane` due at `deadline_us`. Returns the chunk that must be answered
    /// at once instead of computed, if any: the lane's oldest when it already has `per_lane`
    /// waiting, or this one when the room is full.
    pub fn admit(&mut self, lane: &str, deadline_us: u64, item: T) -> Option<(T, Refusal)> {
        self.arrivals += 1;
        let waiting = Waiting {
            lane: lane.to_owned(),
            deadline_us,
            arrival: self.arrivals,
            item,
        };
        let mut of_lane = self
            .waiting
            .iter()
            .enumerate()
            .filter(|(_, w)| w.lane == lane);
        let oldest = of_lane
            .clone()
            .min_by_key(|(_, w)| w.arrival)
            .map(|(i, _)| i);
        if of_lane.nth(self.per_lane - 1).is_some() {
            if let Some(i) = oldest {
                let old = std::mem::replace(&mut self.waiting[i], waiting);
                return Some((old.item, Refusal::Superseded));
            }
        }
        if self.waiting.len() >= self.capacity {
            return Some((waiting.item, Refusal::Full));
        }
        self.waiting.push(waiting);
        None
    }

    /// Takes up to `max` chunks, one at a time: the lane served least recently first (never
    /// served: first of all), then the earliest deadline, then first come. Whether each can still
    /// make its deadline is the caller's check when it starts them.
    pub fn take(&mut self, max: usize) -> Vec<T> {
        let mut out = Vec::new();
        while out.len() < max {
            let Some(i) = self
                .waiting
                .iter()
                .enumerate()
                .min_by_key(|(_, w)| {
                    let last = self.served.get(&w.lane).copied().unwrap_or(0);
                    (last, w.deadline_us, w.arrival)
                })
                .map(|(i, _)| i)
            else {
                break;
            };
            let w = self.waiting.swap_remove(i);
            self.takes += 1;
            self.served.insert(w.lane, self.takes);
            out.push(w.item);
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
        self.waiting.drain(..).map(|w| w.item).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn among_lanes_never_served_the_chunk_due_first_goes_first() {
        let mut room = WaitingRoom::new(8, 1);
        assert!(room.admit("b", 300, "b").is_none());
        assert!(room.admit("a", 100, "a").is_none());
        assert!(room.admit("c", 200, "c").is_none());
        assert_eq!(room.take(2), vec!["a", "c"]);
        assert_eq!(room.take(2), vec!["b"]);
        assert!(room.take(2).is_empty());
    }

    #[test]
    fn equal_deadlines_are_served_in_arrival_order() {
        let mut room = WaitingRoom::new(8, 1);
        for lane in ["x", "y", "z"] {
            room.admit(lane, 500, lane);
        }
        assert_eq!(room.take(8), vec!["x", "y", "z"]);
    }

    #[test]
    fn the_lane_served_least_recently_goes_first_even_when_due_later() {
        let mut room = WaitingRoom::new(8, 1);
        room.admit("a", 100, "a1");
        assert_eq!(room.take(1), vec!["a1"]);
        room.admit("a", 200, "a2");
        room.admit("b", 900, "b1");
        assert_eq!(room.take(1), vec!["b1"], "b has not had its turn");
        assert_eq!(room.take(1), vec!["a2"]);
        // Memory of lanes stays bounded.
        let mut small = WaitingRoom::new(1, 1);
        for i in 0..100 {
            small.admit(&format!("l{i}"), i, i);
            small.take(1);
        }
        assert!(small.served.len() <= 4, "{}", small.served.len());
    }

    #[test]
    fn a_newer_chunk_of_a_lane_replaces_the_waiting_one_which_is_answered() {
        let mut room = WaitingRoom::new(8, 1);
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
    fn a_lane_may_have_as_many_waiting_as_its_model_allows_in_flight() {
        let mut room = WaitingRoom::new(8, 2);
        assert!(room.admit("a", 100, 1).is_none());
        assert!(room.admit("a", 200, 2).is_none(), "two of a lane may wait");
        assert_eq!(
            room.admit("a", 300, 3),
            Some((1, Refusal::Superseded)),
            "the oldest goes"
        );
        assert!(room.admit("b", 250, 4).is_none());
        // Lanes in turn: a (earliest deadline), then b (never served), then a again.
        assert_eq!(room.take(8), vec![2, 4, 3]);
    }

    #[test]
    fn a_full_room_refuses_the_newcomer_and_keeps_what_it_holds() {
        let mut room = WaitingRoom::new(2, 1);
        room.admit("a", 100, "a");
        room.admit("b", 100, "b");
        assert_eq!(room.admit("c", 50, "c"), Some(("c", Refusal::Full)));
        // A lane already inside is still refreshed when the room is full.
        assert_eq!(room.admit("a", 200, "a2"), Some(("a", Refusal::Superseded)));
        assert_eq!(room.drain().len(), 2);
        assert!(room.is_empty());
        assert_eq!(
            WaitingRoom::<u8>::new(0, 0).admit("x", 1, 1),
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
        let mut room = WaitingRoom::new(256, 1);
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
