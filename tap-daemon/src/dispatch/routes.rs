//! Results to the injectors of their own room only: one small channel per room with a subscriber,
//! so a result reaches the few taps of its room instead of every tap of the daemon (each then
//! filtering out what is not theirs: 50 participants meant 50 deliveries per result).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tap_protocol::ResultMessage;
use tokio::sync::broadcast;

/// Results a room's injectors may be behind by before they lag (and count what they missed).
pub const ROOM_CAPACITY: usize = 64;

/// The rooms with subscribers, and their channels.
#[derive(Default)]
pub struct RoomRoutes {
    rooms: Mutex<HashMap<String, broadcast::Sender<Arc<ResultMessage>>>>,
}

impl RoomRoutes {
    /// Results of `room` (a subject token, as results carry it) from now on.
    pub fn subscribe(&self, room: &str) -> broadcast::Receiver<Arc<ResultMessage>> {
        let mut rooms = self.rooms.lock().unwrap_or_else(|e| e.into_inner());
        rooms
            .entry(room.to_owned())
            .or_insert_with(|| broadcast::channel(ROOM_CAPACITY).0)
            .subscribe()
    }

    /// Hands a result to its room's subscribers: how many received it. A room whose subscribers
    /// are all gone is forgotten.
    pub fn route(&self, result: &Arc<ResultMessage>) -> usize {
        let mut rooms = self.rooms.lock().unwrap_or_else(|e| e.into_inner());
        let Some(tx) = rooms.get(&result.room) else {
            return 0;
        };
        match tx.send(result.clone()) {
            Ok(n) => n,
            Err(_) => {
                rooms.remove(&result.room);
                0
            }
        }
    }

    /// Rooms with a channel now.
    pub fn rooms(&self) -> usize {
        self.rooms.lock().unwrap_or_else(|e| e.into_inner()).len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tap_protocol::{MediaKind, WorkerReply};

    fn result(room: &str) -> Arc<ResultMessage> {
        Arc::new(ResultMessage {
            v: 1,
            room: room.into(),
            participant: "p".into(),
            endpoint: "e".into(),
            kms: None,
            model: "m".into(),
            version: "1".into(),
            media: MediaKind::Video,
            seq: 1,
            capture_ms: 0.0,
            output: WorkerReply::default(),
            latency_ms: 0.0,
            round_trip_ms: 0.0,
        })
    }

    #[test]
    fn a_result_reaches_only_its_rooms_subscribers() {
        let routes = RoomRoutes::default();
        let mut a1 = routes.subscribe("a");
        let mut a2 = routes.subscribe("a");
        let mut b = routes.subscribe("b");
        assert_eq!(routes.route(&result("a")), 2);
        assert_eq!(a1.try_recv().unwrap().room, "a");
        assert_eq!(a2.try_recv().unwrap().room, "a");
        assert!(b.try_recv().is_err(), "room b got nothing");
        assert_eq!(routes.route(&result("nobody")), 0);
    }

    #[test]
    fn a_room_without_subscribers_is_forgotten_and_a_slow_one_lags_bounded() {
        let routes = RoomRoutes::default();
        let rx = routes.subscribe("a");
        drop(rx);
        assert_eq!(routes.rooms(), 1);
        assert_eq!(routes.route(&result("a")), 0);
        assert_eq!(routes.rooms(), 0);
        let mut slow = routes.subscribe("a");
        for _ in 0..ROOM_CAPACITY + 10 {
            routes.route(&result("a"));
        }
        assert!(matches!(
            slow.try_recv(),
            Err(broadcast::error::TryRecvError::Lagged(10))
        ));
    }
}
