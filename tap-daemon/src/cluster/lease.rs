//! Room leases among several daemons: which rooms this daemon may tap (pure core; the NATS KV
//! adapter is [`crate::cluster`]).
//!
//! A lease is per room, not per participant: a room's taps share its DataChannel peers, its
//! presenter and its mood fusion, which need every participant's results in one process; and a room
//! is what an operator thinks of as placed. The bucket's entries expire `ttl` after their last
//! write; a holder rewrites its rooms every `renew_every` with compare-and-set on the revision it
//! last wrote. It treats a room as its own only until `ttl - margin` after the *sending* of its last
//! confirmed write: the server expires the entry `ttl` after *receiving* it, so the holder stops
//! tapping before anyone else can take the room, whatever happened to the network in between.
//!
//! Placement: a daemon contends at once for an unheld room while it holds no more rooms than the
//! least loaded live member and fewer than its fair share; otherwise only after `placement_delay`
//! (someone less loaded should have taken it by then; if they are gone, it still gets tapped).
//! Rooms held by a live daemon are never moved: a new daemon takes new rooms and the rooms of
//! daemons that died, so nothing running is re-tapped.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::{Duration, Instant};

/// Timing of leases.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LeaseSettings {
    /// Entries expire this long after their last write (the bucket's `max_age`).
    pub ttl: Duration,
    /// How often held rooms are rewritten.
    pub renew_every: Duration,
    /// A room is ours until `ttl - margin` after the sending of its last confirmed write.
    pub margin: Duration,
    /// How long a more loaded daemon leaves an unheld room to less loaded ones.
    pub placement_delay: Duration,
    /// A daemon holding more than its fair share + 1 hands one room over this often (zero: never),
    /// so a daemon that joins ends up with its share without a mass re-tap: one room at a time,
    /// each re-tapped by the least loaded daemon within a second or two.
    pub rebalance_every: Duration,
}

impl Default for LeaseSettings {
    fn default() -> Self {
        LeaseSettings {
            ttl: Duration::from_secs(3),
            renew_every: Duration::from_millis(1000),
            margin: Duration::from_millis(1000),
            placement_delay: Duration::from_millis(1500),
            rebalance_every: Duration::from_secs(30),
        }
    }
}

impl LeaseSettings {
    /// Checks that a holder renews before it stops trusting its lease, and stops before the
    /// server lets anyone else take it.
    pub fn validate(&self) -> Result<(), String> {
        if self.ttl.is_zero() || self.renew_every.is_zero() {
            return Err("lease ttl and renew interval must be positive".into());
        }
        if self.margin >= self.ttl {
            return Err("lease margin must be shorter than the ttl".into());
        }
        if self.renew_every * 2 > self.ttl - self.margin {
            return Err(format!(
                "a lease is renewed every {} ms but trusted only {} ms: renew at least twice in that time",
                self.renew_every.as_millis(),
                (self.ttl - self.margin).as_millis()
            ));
        }
        Ok(())
    }
}

/// What the bucket says about a room, as last read.
#[derive(Debug, Clone, PartialEq)]
pub enum Observed {
    /// No entry (never taken, released, or expired).
    Free,
    /// Held, by this daemon id, at this revision.
    Held {
        /// Holder.
        daemon: String,
        /// The entry's revision.
        revision: u64,
    },
    /// Could not be read now.
    Unknown,
}

/// A write the adapter should make.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LeaseOp {
    /// Create the key (fails if someone holds it).
    Acquire {
        /// Room key.
        key: String,
    },
    /// Rewrite the key if its revision is still `revision`.
    Renew {
        /// Room key.
        key: String,
        /// The revision last written by us.
        revision: u64,
    },
    /// Delete the key if its revision is still `revision` (the room is gone here).
    Release {
        /// Room key.
        key: String,
        /// The revision last written by us.
        revision: u64,
    },
}

/// How a write ended.
#[derive(Debug, Clone, PartialEq)]
pub enum WriteOutcome {
    /// Written; the new revision.
    Written(u64),
    /// Refused by the server: someone else holds it, or our revision is no longer the last.
    Refused,
    /// No answer (NATS unreachable, timeout): nothing learnt.
    Failed,
}

#[derive(Debug, Clone)]
struct Held {
    revision: u64,
    /// When the last confirmed write was sent.
    confirmed_sent: Instant,
    /// A write for it is in flight.
    writing: bool,
    /// Being handed over: no longer tapped here, released once no tap of ours is left in it.
    handing_over: bool,
}

#[derive(Debug, Clone)]
struct Member {
    rooms: u32,
    seen: Instant,
}

/// One daemon's view of the leases.
#[derive(Debug)]
pub struct LeaseBook {
    me: String,
    settings: LeaseSettings,
    held: BTreeMap<String, Held>,
    /// Acquisitions in flight.
    acquiring: BTreeMap<String, Instant>,
    /// Rooms seen free, since when.
    free_since: HashMap<String, Instant>,
    members: HashMap<String, Member>,
    /// The first plan: free rooms are contended one renew interval later, once the members that
    /// started alongside have been heard (daemons started together split the rooms).
    started: Option<Instant>,
    /// The last room handed over for balance.
    last_handover: Option<Instant>,
    /// Rooms this daemon still has taps (or setups) in, as its watchers last said.
    tapping: BTreeSet<String>,
}

impl LeaseBook {
    /// A book for daemon `me`.
    pub fn new(me: impl Into<String>, settings: LeaseSettings) -> Self {
        LeaseBook {
            me: me.into(),
            settings,
            held: BTreeMap::new(),
            acquiring: BTreeMap::new(),
            free_since: HashMap::new(),
            members: HashMap::new(),
            started: None,
            last_handover: None,
            tapping: BTreeSet::new(),
        }
    }

    /// This daemon's id.
    pub fn me(&self) -> &str {
        &self.me
    }

    /// The settings.
    pub fn settings(&self) -> &LeaseSettings {
        &self.settings
    }

    /// A member entry was read (other daemons' load; ours is ignored).
    pub fn member_seen(&mut self, daemon: &str, rooms: u32, now: Instant) {
        if daemon != self.me {
            self.members
                .insert(daemon.to_owned(), Member { rooms, seen: now });
        }
    }

    /// Members heard from within two renew intervals (they write every half interval), with their
    /// room counts, ourselves included. A member silent longer is presumed gone for placement: its
    /// rooms are about to be free, and counting it would hold the takeover back by the placement
    /// delay.
    pub fn live_members(&self, now: Instant) -> Vec<(String, u32)> {
        let mut out: Vec<(String, u32)> = self
            .members
            .iter()
            .filter(|(_, m)| now.saturating_duration_since(m.seen) < self.settings.renew_every * 2)
            .map(|(d, m)| (d.clone(), m.rooms))
            .collect();
        out.push((self.me.clone(), self.held.len() as u32));
        out.sort();
        out
    }

    /// Rooms this daemon may tap now.
    pub fn valid(&self, now: Instant) -> Vec<String> {
        self.held
            .iter()
            .filter(|(_, h)| !h.handing_over && self.trusted_until(h) > now)
            .map(|(k, _)| k.clone())
            .collect()
    }

    /// Whether this daemon may tap `key` now.
    pub fn holds(&self, key: &str, now: Instant) -> bool {
        self.held
            .get(key)
            .is_some_and(|h| !h.handing_over && self.trusted_until(h) > now)
    }

    /// The rooms this daemon's watchers still have taps or setups in. A room handed over is
    /// released only once it is not among them: whoever takes it next never finds our tap still
    /// running (or about to be made by a setup in flight).
    pub fn set_tapping(&mut self, tapping: BTreeSet<String>) {
        self.tapping = tapping;
    }

    /// Rooms held (written and not known lost), valid or not.
    pub fn held_count(&self) -> usize {
        self.held.len()
    }

    fn trusted_until(&self, h: &Held) -> Instant {
        h.confirmed_sent + (self.settings.ttl - self.settings.margin)
    }

    /// Decides the writes of this tick. `wanted`: the rooms present on our KMS that we would tap,
    /// with what the bucket says about each (rooms we hold need no reading).
    pub fn plan(&mut self, now: Instant, wanted: &BTreeMap<String, Observed>) -> Vec<LeaseOp> {
        let mut ops = Vec::new();
        // Ours: release what is gone, renew what is due, drop what ran out without an answer
        // (it may have expired on the server: take it again from scratch if still free).
        let keys: Vec<String> = self.held.keys().cloned().collect();
        for key in keys {
            let Some(h) = self.held.get_mut(&key) else {
                continue;
            };
            if h.writing {
                continue;
            }
            if h.handing_over && !self.tapping.contains(&key) {
                ops.push(LeaseOp::Release {
                    key: key.clone(),
                    revision: h.revision,
                });
                self.held.remove(&key);
                // Not ours to take straight back: it waits for the placement delay like any
                // room a busier daemon sees free.
                self.free_since.insert(key, now);
                continue;
            }
            if !wanted.contains_key(&key) {
                ops.push(LeaseOp::Release {
                    key: key.clone(),
                    revision: h.revision,
                });
                self.held.remove(&key);
                continue;
            }
            if now >= h.confirmed_sent + self.settings.ttl {
                self.held.remove(&key);
                continue;
            }
            if now >= h.confirmed_sent + self.settings.renew_every {
                h.writing = true;
                ops.push(LeaseOp::Renew {
                    key,
                    revision: h.revision,
                });
            }
        }
        self.free_since.retain(|k, _| wanted.contains_key(k));
        self.acquiring.retain(|k, _| wanted.contains_key(k));
        // Load: ours against the least loaded live member and the fair share.
        let members = self.live_members(now);
        let least = members.iter().map(|(_, n)| *n).min().unwrap_or(0);
        let total = wanted.len();
        let fair = total.div_ceil(members.len().max(1));
        let mine = self.held.len() + self.acquiring.len();
        let mut budget = fair.saturating_sub(mine);
        let eager = mine as u32 <= least;
        let started = *self.started.get_or_insert(now);
        let settled = now.saturating_duration_since(started) >= self.settings.renew_every;
        // Balance: over the fair share by more than one, with a less loaded live member to take
        // it, hand over one room per interval (the last in our own order, so each daemon picks
        // differently).
        let since_last = self
            .last_handover
            .map_or(Duration::MAX, |t| now.saturating_duration_since(t));
        if settled
            && !self.settings.rebalance_every.is_zero()
            && since_last >= self.settings.rebalance_every
            && self.held.len() > fair + 1
            && (least as usize) + 1 < self.held.len()
        {
            let give = self
                .held
                .iter()
                .filter(|(_, h)| !h.writing && !h.handing_over)
                .map(|(k, _)| k.clone())
                .max_by_key(|k| spread(&self.me, k));
            // Stop tapping it first (it leaves `valid` now); the lease goes once the watchers
            // say nothing of ours is left in it (above, on a later plan).
            if let Some(h) = give.and_then(|k| self.held.get_mut(&k)) {
                h.handing_over = true;
                self.last_handover = Some(now);
            }
        }
        // Free rooms, in an order of our own (daemons that start together do not all go for the
        // same rooms first).
        let mut free: Vec<(&String, &Observed)> = wanted
            .iter()
            .filter(|(k, _)| !self.held.contains_key(*k) && !self.acquiring.contains_key(*k))
            .collect();
        free.sort_by_key(|(k, _)| spread(&self.me, k));
        for (key, observed) in free {
            match observed {
                Observed::Free => {
                    let since = *self.free_since.entry(key.clone()).or_insert(now);
                    let waited =
                        now.saturating_duration_since(since) >= self.settings.placement_delay;
                    if settled && ((eager && budget > 0) || waited) {
                        budget = budget.saturating_sub(1);
                        self.acquiring.insert(key.clone(), now);
                        ops.push(LeaseOp::Acquire { key: key.clone() });
                    }
                }
                // Ours from an earlier life of this daemon (same id): adopt it (what that life made
                // was swept at start).
                Observed::Held { daemon, revision } if *daemon == self.me => {
                    self.free_since.remove(key);
                    self.acquiring.insert(key.clone(), now);
                    ops.push(LeaseOp::Renew {
                        key: key.clone(),
                        revision: *revision,
                    });
                }
                Observed::Held { .. } => {
                    self.free_since.remove(key);
                }
                Observed::Unknown => {}
            }
        }
        ops
    }

    /// The outcome of an [`LeaseOp::Acquire`] (or an adopting renew) sent at `sent`.
    pub fn acquired(&mut self, key: &str, sent: Instant, outcome: WriteOutcome) {
        self.acquiring.remove(key);
        if let WriteOutcome::Written(revision) = outcome {
            self.free_since.remove(key);
            self.held.insert(
                key.to_owned(),
                Held {
                    revision,
                    confirmed_sent: sent,
                    writing: false,
                    handing_over: false,
                },
            );
        }
    }

    /// The outcome of a [`LeaseOp::Renew`] of a held room, sent at `sent`.
    pub fn renewed(&mut self, key: &str, sent: Instant, outcome: WriteOutcome) {
        if self.acquiring.contains_key(key) {
            return self.acquired(key, sent, outcome);
        }
        let Some(h) = self.held.get_mut(key) else {
            return;
        };
        h.writing = false;
        match outcome {
            WriteOutcome::Written(revision) => {
                h.revision = revision;
                h.confirmed_sent = sent;
            }
            // Expired and taken (or rewritten) by someone else: it is theirs.
            WriteOutcome::Refused => {
                self.held.remove(key);
            }
            // The lease runs out on its own unless a later renewal gets through.
            WriteOutcome::Failed => {}
        }
    }
}

/// A per-daemon order of room keys (FNV-1a of daemon id and key).
fn spread(me: &str, key: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in me.bytes().chain([0]).chain(key.bytes()) {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A book past its start-up settling (as one whose daemon has run a while).
    fn settled(me: &str, t0: Instant) -> LeaseBook {
        let s = LeaseSettings::default();
        let mut b = LeaseBook::new(me, s);
        b.plan(t0.checked_sub(s.renew_every).unwrap(), &BTreeMap::new());
        b
    }

    #[test]
    fn a_daemon_starting_listens_for_its_peers_before_taking_rooms() {
        let t0 = Instant::now();
        let mut b = LeaseBook::new("a", LeaseSettings::default());
        let w = wanted(&[("r", Observed::Free)]);
        assert!(b.plan(t0, &w).is_empty());
        assert!(b.plan(t0 + ms(500), &w).is_empty());
        assert_eq!(
            b.plan(t0 + ms(1000), &w),
            vec![LeaseOp::Acquire { key: "r".into() }]
        );
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn wanted(rooms: &[(&str, Observed)]) -> BTreeMap<String, Observed> {
        rooms
            .iter()
            .map(|(k, o)| (k.to_string(), o.clone()))
            .collect()
    }

    fn acquire_all(book: &mut LeaseBook, ops: &[LeaseOp], at: Instant, rev: u64) {
        for op in ops {
            if let LeaseOp::Acquire { key } = op {
                book.acquired(key, at, WriteOutcome::Written(rev));
            }
        }
    }

    #[test]
    fn default_settings_are_consistent() {
        LeaseSettings::default().validate().unwrap();
        let bad = LeaseSettings {
            renew_every: ms(1500),
            ..LeaseSettings::default()
        };
        assert!(bad.validate().is_err());
    }

    #[test]
    fn a_lone_daemon_takes_every_free_room_and_renews_them() {
        let t0 = Instant::now();
        let mut b = settled("a", t0);
        let w = wanted(&[("r1", Observed::Free), ("r2", Observed::Free)]);
        let ops = b.plan(t0, &w);
        assert_eq!(ops.len(), 2);
        assert!(!b.holds("r1", t0), "not ours before the server says so");
        acquire_all(&mut b, &ops, t0, 7);
        assert!(b.holds("r1", t0) && b.holds("r2", t0));
        // Nothing due before renew_every.
        assert!(b.plan(t0 + ms(500), &w).is_empty());
        let ops = b.plan(t0 + ms(1000), &w);
        assert!(ops.contains(&LeaseOp::Renew {
            key: "r1".into(),
            revision: 7
        }));
        // No second renewal while one is in flight.
        assert!(b.plan(t0 + ms(1100), &w).is_empty());
        b.renewed("r1", t0 + ms(1000), WriteOutcome::Written(9));
        assert!(b.holds("r1", t0 + ms(2900)));
        // r2's renewal never came back: trusted until ttl - margin after its last confirmed write.
        assert!(b.holds("r2", t0 + ms(1900)));
        assert!(!b.holds("r2", t0 + ms(2000)));
    }

    #[test]
    fn a_holder_that_cannot_renew_stops_before_the_server_frees_the_room() {
        let t0 = Instant::now();
        let s = LeaseSettings::default();
        let mut b = LeaseBook::new("a", s);
        let w = wanted(&[("r", Observed::Free)]);
        let ops = b.plan(t0, &w);
        acquire_all(&mut b, &ops, t0, 1);
        let mut now = t0;
        while now < t0 + ms(5000) {
            for op in b.plan(now, &w) {
                if let LeaseOp::Renew { key, .. } = op {
                    b.renewed(&key, now, WriteOutcome::Failed);
                }
            }
            // The server (receiving the write at t0 at the earliest) frees it at t0 + ttl.
            if now >= t0 + s.ttl {
                assert!(!b.holds("r", now), "still trusted at {:?}", now - t0);
            }
            now += ms(100);
        }
        assert!(b.valid(now).is_empty());
    }

    #[test]
    fn a_refused_renewal_loses_the_room_and_a_room_held_elsewhere_is_left_alone() {
        let t0 = Instant::now();
        let mut b = settled("a", t0);
        let w = wanted(&[("r", Observed::Free)]);
        let ops = b.plan(t0, &w);
        acquire_all(&mut b, &ops, t0, 1);
        b.plan(t0 + ms(1000), &w);
        b.renewed("r", t0 + ms(1000), WriteOutcome::Refused);
        assert!(!b.holds("r", t0 + ms(1001)));
        let taken = wanted(&[(
            "r",
            Observed::Held {
                daemon: "b".into(),
                revision: 5,
            },
        )]);
        assert!(b.plan(t0 + ms(5000), &taken).is_empty());
    }

    #[test]
    fn rooms_gone_from_kms_are_released() {
        let t0 = Instant::now();
        let mut b = settled("a", t0);
        let ops = b.plan(t0, &wanted(&[("r", Observed::Free)]));
        acquire_all(&mut b, &ops, t0, 3);
        let ops = b.plan(t0 + ms(10), &wanted(&[]));
        assert_eq!(
            ops,
            vec![LeaseOp::Release {
                key: "r".into(),
                revision: 3
            }]
        );
        assert_eq!(b.held_count(), 0);
    }

    #[test]
    fn an_earlier_life_of_the_same_daemon_is_adopted() {
        let t0 = Instant::now();
        let mut b = settled("a", t0);
        let w = wanted(&[(
            "r",
            Observed::Held {
                daemon: "a".into(),
                revision: 11,
            },
        )]);
        let ops = b.plan(t0, &w);
        assert_eq!(
            ops,
            vec![LeaseOp::Renew {
                key: "r".into(),
                revision: 11
            }]
        );
        b.renewed("r", t0, WriteOutcome::Written(12));
        assert!(b.holds("r", t0));
    }

    #[test]
    fn new_rooms_go_to_the_least_loaded_daemon_first() {
        let t0 = Instant::now();
        let mut busy = settled("busy", t0);
        let rooms: Vec<(String, Observed)> =
            (0..4).map(|i| (format!("r{i}"), Observed::Free)).collect();
        let w: BTreeMap<String, Observed> = rooms.into_iter().collect();
        let ops = busy.plan(t0, &w);
        acquire_all(&mut busy, &ops, t0, 1);
        assert_eq!(busy.held_count(), 4);
        // A newcomer with nothing; a new room appears.
        busy.member_seen("idle", 0, t0);
        let mut w2 = w.clone();
        w2.insert("new".into(), Observed::Free);
        let ops = busy.plan(t0 + ms(10), &w2);
        assert!(
            !ops.contains(&LeaseOp::Acquire { key: "new".into() }),
            "the loaded daemon waits"
        );
        let mut idle = settled("idle", t0);
        idle.member_seen("busy", 4, t0);
        let mut w3: BTreeMap<String, Observed> = w
            .keys()
            .map(|k| {
                (
                    k.clone(),
                    Observed::Held {
                        daemon: "busy".into(),
                        revision: 1,
                    },
                )
            })
            .collect();
        w3.insert("new".into(), Observed::Free);
        assert_eq!(
            idle.plan(t0 + ms(10), &w3),
            vec![LeaseOp::Acquire { key: "new".into() }],
            "the idle one takes it at once, and nothing running moves"
        );
        // Had the idle daemon died, the busy one takes the room after the placement delay.
        let ops = busy.plan(t0 + ms(10) + LeaseSettings::default().placement_delay, &w2);
        assert!(ops.contains(&LeaseOp::Acquire { key: "new".into() }));
    }

    #[test]
    fn a_dead_daemons_rooms_are_taken_as_soon_as_they_expire() {
        let t0 = Instant::now();
        let mut a = settled("a", t0);
        let mine = wanted(&[("a1", Observed::Free), ("a2", Observed::Free)]);
        let ops = a.plan(t0, &mine);
        acquire_all(&mut a, &ops, t0, 1);
        // b held two rooms and was last heard at t0; its leases expire at t0 + ttl.
        a.member_seen("b", 2, t0);
        let at = t0 + LeaseSettings::default().ttl;
        let mut w = mine.clone();
        w.insert("b1".into(), Observed::Free);
        w.insert("b2".into(), Observed::Free);
        let ops = a.plan(at, &w);
        for k in ["b1", "b2"] {
            assert!(
                ops.contains(&LeaseOp::Acquire { key: k.into() }),
                "no placement delay for a silent member's rooms: {ops:?}"
            );
        }
    }

    #[test]
    fn a_daemon_that_joins_gets_its_share_one_room_at_a_time() {
        let t0 = Instant::now();
        let mut busy = settled("busy", t0);
        let mut w: BTreeMap<String, Observed> =
            (0..6).map(|i| (format!("r{i}"), Observed::Free)).collect();
        let ops = busy.plan(t0, &w);
        acquire_all(&mut busy, &ops, t0, 1);
        assert_eq!(busy.held_count(), 6);
        // A newcomer with nothing (fair share 3). Every half second: the newcomer takes what was
        // handed over; busy renews what it keeps. Handovers are counted with their times.
        let mut handovers = Vec::new();
        let mut now = t0;
        for _ in 0..160 {
            now += ms(500);
            let theirs = w
                .values()
                .filter(|o| matches!(o, Observed::Held { daemon, .. } if daemon == "new"))
                .count() as u32;
            busy.member_seen("new", theirs, now);
            for op in busy.plan(now, &w) {
                match op {
                    LeaseOp::Renew { key, .. } => busy.renewed(&key, now, WriteOutcome::Written(2)),
                    LeaseOp::Release { key, .. } => {
                        handovers.push(now - t0);
                        w.insert(
                            key,
                            Observed::Held {
                                daemon: "new".into(),
                                revision: 9,
                            },
                        );
                    }
                    LeaseOp::Acquire { key } => panic!("busy took {key} back"),
                }
            }
        }
        // 6 → 4 (fair share + 1), one room per interval: no mass re-tap.
        assert_eq!(busy.held_count(), 4);
        assert_eq!(handovers.len(), 2, "{handovers:?}");
        assert!(handovers[1] - handovers[0] >= LeaseSettings::default().rebalance_every);
    }

    #[test]
    fn a_room_handed_over_is_released_only_once_nothing_of_ours_taps_it() {
        let t0 = Instant::now();
        let mut busy = settled("busy", t0);
        let w: BTreeMap<String, Observed> =
            (0..6).map(|i| (format!("r{i}"), Observed::Free)).collect();
        let ops = busy.plan(t0, &w);
        acquire_all(&mut busy, &ops, t0, 1);
        busy.set_tapping(w.keys().cloned().collect());
        busy.member_seen("new", 0, t0);
        let ops = busy.plan(t0 + ms(10), &w);
        assert!(ops.iter().all(|o| !matches!(o, LeaseOp::Release { .. })));
        let given: Vec<String> = w
            .keys()
            .filter(|k| !busy.holds(k, t0 + ms(10)))
            .cloned()
            .collect();
        assert_eq!(given.len(), 1, "one room stops being tapped here at once");
        // Its tap is still being released: the lease stays (renewed), nobody else can take it.
        for i in 1..6 {
            let now = t0 + ms(10 + i * 500);
            busy.member_seen("new", 0, now);
            for op in busy.plan(now, &w) {
                match op {
                    LeaseOp::Renew { key, .. } => busy.renewed(&key, now, WriteOutcome::Written(2)),
                    LeaseOp::Release { key, .. } => panic!("{key} released while still tapped"),
                    LeaseOp::Acquire { .. } => {}
                }
            }
        }
        // Nothing of ours left in it: released.
        busy.set_tapping(w.keys().filter(|k| **k != given[0]).cloned().collect());
        let ops = busy.plan(t0 + ms(3100), &w);
        assert!(
            ops.contains(&LeaseOp::Release {
                key: given[0].clone(),
                revision: 2
            }),
            "{ops:?}"
        );
    }

    #[test]
    fn two_daemons_starting_together_split_the_rooms() {
        let t0 = Instant::now();
        let mut a = settled("a", t0);
        let mut b = settled("b", t0);
        a.member_seen("b", 0, t0);
        b.member_seen("a", 0, t0);
        let keys: Vec<String> = (0..20).map(|i| format!("room.k.p{i}")).collect();
        // The server: first create wins.
        let mut holder: BTreeMap<String, &str> = BTreeMap::new();
        let mut now = t0;
        for _ in 0..10 {
            for (book, name) in [(&mut a, "a"), (&mut b, "b")] {
                let w: BTreeMap<String, Observed> = keys
                    .iter()
                    .map(|k| {
                        let o = match holder.get(k) {
                            None => Observed::Free,
                            Some(d) => Observed::Held {
                                daemon: d.to_string(),
                                revision: 1,
                            },
                        };
                        (k.clone(), o)
                    })
                    .collect();
                for op in book.plan(now, &w) {
                    match op {
                        LeaseOp::Acquire { key } => {
                            let outcome = if holder.contains_key(&key) {
                                WriteOutcome::Refused
                            } else {
                                holder.insert(key.clone(), name);
                                WriteOutcome::Written(1)
                            };
                            book.acquired(&key, now, outcome);
                        }
                        LeaseOp::Renew { key, .. } => {
                            book.renewed(&key, now, WriteOutcome::Written(2))
                        }
                        LeaseOp::Release { .. } => {}
                    }
                }
            }
            a.member_seen("b", b.held_count() as u32, now);
            b.member_seen("a", a.held_count() as u32, now);
            now += ms(500);
        }
        assert_eq!(holder.len(), 20, "every room taken");
        let of_a = holder.values().filter(|d| **d == "a").count();
        assert!((8..=12).contains(&of_a), "a holds {of_a} of 20");
        // Exactly one holder each, by construction of the server; and each book agrees.
        for k in &keys {
            assert_ne!(a.holds(k, now), b.holds(k, now), "{k}");
        }
    }
}
