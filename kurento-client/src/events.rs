//! Event subscriptions: one server subscription per (object, event type), fanned out locally to any
//! number of typed streams. Delivery never blocks the connection task: a subscriber whose buffer is
//! full loses that event, and the loss is counted ([`crate::StatsSnapshot::events_dropped`]).

use std::collections::HashMap;
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::{Arc, Weak};
use std::task::{Context, Poll};

use serde::de::DeserializeOwned;
use serde_json::Value;
use tokio::sync::mpsc;

use crate::connection::Command;
use crate::protocol::EventNotification;

/// A typed Kurento event (generated for every event in the module definitions).
pub trait Event: DeserializeOwned + Send + 'static {
    /// The event's name on the wire (7.x).
    const NAME: &'static str;
}

/// Marker: objects of type `Self` emit event `E` (generated from the module definitions), so that
/// `endpoint.on::<IceCandidateFound>()` only compiles where KMS can send it.
pub trait Emits<E: Event> {}

/// 6.x names of events that 7.x renamed; tried in order when the 7.x name answers 40106.
pub fn legacy_event_names(name: &str) -> &'static [&'static str] {
    match name {
        "IceCandidateFound" => &["OnIceCandidate"],
        "IceGatheringDone" => &["OnIceGatheringDone"],
        "IceComponentStateChanged" => &["OnIceComponentStateChanged"],
        "NewCandidatePairSelected" => &["NewCandidatePairSelected"],
        "DataChannelOpened" => &["OnDataChannelOpened", "DataChannelOpen"],
        "DataChannelClosed" => &["OnDataChannelClosed", "DataChannelClose"],
        "MediaFlowInStateChanged" => &["MediaFlowInStateChange"],
        "MediaFlowOutStateChanged" => &["MediaFlowOutStateChange"],
        "MediaTranscodingStateChanged" => &["MediaTranscodingStateChange"],
        "MediaStateChanged" => &["MediaStateChange"],
        "ConnectionStateChanged" => &["ConnectionStateChange"],
        _ => &[],
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct SubscriptionKey {
    pub object: String,
    pub event_type: String,
}

struct Subscriber {
    local_id: u64,
    tx: mpsc::Sender<Arc<EventNotification>>,
}

struct Entry {
    /// The server's subscription id (None while the subscribe request is in flight).
    server_id: Option<String>,
    /// The name the server accepted (a 6.x legacy name, possibly).
    wire_name: String,
    subscribers: Vec<Subscriber>,
}

/// Routes events to local subscribers. Owned behind a mutex shared by the client and the actor.
#[derive(Default)]
pub(crate) struct EventRouter {
    entries: HashMap<SubscriptionKey, Entry>,
    /// Events arrive under the name the server accepted; maps (object, wire name) to our key.
    by_wire: HashMap<(String, String), SubscriptionKey>,
    next_local: u64,
}

impl EventRouter {
    /// Adds a local subscriber. Returns its id and whether the key is new (so the caller must make
    /// the server subscription).
    pub fn add(
        &mut self,
        key: &SubscriptionKey,
        tx: mpsc::Sender<Arc<EventNotification>>,
    ) -> (u64, bool) {
        self.next_local += 1;
        let local_id = self.next_local;
        let mut created = false;
        let entry = self.entries.entry(key.clone()).or_insert_with(|| {
            created = true;
            Entry {
                server_id: None,
                wire_name: key.event_type.clone(),
                subscribers: Vec::new(),
            }
        });
        entry.subscribers.push(Subscriber { local_id, tx });
        if created {
            self.by_wire
                .insert((key.object.clone(), key.event_type.clone()), key.clone());
        }
        (local_id, created)
    }

    /// Records the server subscription (and the name it was accepted under).
    pub fn confirm(&mut self, key: &SubscriptionKey, server_id: String, wire_name: &str) {
        if let Some(e) = self.entries.get_mut(key) {
            e.server_id = Some(server_id);
            if e.wire_name != wire_name {
                self.by_wire
                    .remove(&(key.object.clone(), e.wire_name.clone()));
                e.wire_name = wire_name.to_owned();
                self.by_wire
                    .insert((key.object.clone(), wire_name.to_owned()), key.clone());
            }
        }
    }

    pub fn set_server_subscription(&mut self, key: &SubscriptionKey, server_id: String) {
        if let Some(e) = self.entries.get_mut(key) {
            e.server_id = Some(server_id);
        }
    }

    /// Removes one local subscriber; returns the server subscription to cancel if it was the last.
    pub fn remove(&mut self, key: &SubscriptionKey, local_id: u64) -> Option<Option<String>> {
        let entry = self.entries.get_mut(key)?;
        entry.subscribers.retain(|s| s.local_id != local_id);
        if !entry.subscribers.is_empty() {
            return None;
        }
        let entry = self.entries.remove(key)?;
        self.by_wire.remove(&(key.object.clone(), entry.wire_name));
        Some(entry.server_id)
    }

    /// Ends every stream of a key (its object is gone).
    pub fn close_key(&mut self, key: &SubscriptionKey) {
        if let Some(entry) = self.entries.remove(key) {
            self.by_wire.remove(&(key.object.clone(), entry.wire_name));
        }
    }

    pub fn close_all(&mut self) {
        self.entries.clear();
        self.by_wire.clear();
    }

    /// Keys to subscribe again on a new session, under the names the server accepted before.
    pub fn keys_for_resubscribe(&self) -> Vec<SubscriptionKey> {
        self.entries
            .iter()
            .map(|(k, e)| SubscriptionKey {
                object: k.object.clone(),
                event_type: e.wire_name.clone(),
            })
            .collect()
    }

    /// Delivers an event to every subscriber of its key; returns how many deliveries were dropped.
    pub fn dispatch(&mut self, ev: EventNotification) -> usize {
        let Some(key) = self
            .by_wire
            .get(&(ev.object.clone(), ev.event_type.clone()))
            .cloned()
        else {
            return 0;
        };
        let Some(entry) = self.entries.get_mut(&key) else {
            return 0;
        };
        let ev = Arc::new(ev);
        let mut dropped = 0;
        entry
            .subscribers
            .retain(|s| match s.tx.try_send(ev.clone()) {
                Ok(()) => true,
                Err(mpsc::error::TrySendError::Full(_)) => {
                    dropped += 1;
                    true
                }
                // The stream was dropped; its Drop removes it too, this is just earlier.
                Err(mpsc::error::TrySendError::Closed(_)) => false,
            });
        dropped
    }
}

pub(crate) struct StreamGuard {
    pub key: SubscriptionKey,
    pub local_id: u64,
    pub shared: Weak<crate::connection::Shared>,
    pub cmd_tx: mpsc::Sender<Command>,
}

impl Drop for StreamGuard {
    fn drop(&mut self) {
        let Some(shared) = self.shared.upgrade() else {
            return;
        };
        let last = shared
            .router
            .lock()
            .map(|mut r| r.remove(&self.key, self.local_id))
            .ok()
            .flatten();
        if let Some(Some(subscription)) = last {
            // Best effort: if the command queue is full the server subscription lingers until the
            // session ends; KMS only sends events we then ignore.
            let _ = self.cmd_tx.try_send(Command::Unsubscribe {
                object: self.key.object.clone(),
                subscription,
            });
        }
    }
}

/// A stream of events of type `T` from one object. Ends when the object is gone after a reconnection
/// to a new server, or when the client closes. Dropping it unsubscribes (when it was the last).
pub struct EventStream<T> {
    rx: mpsc::Receiver<Arc<EventNotification>>,
    _guard: StreamGuard,
    _type: PhantomData<fn() -> T>,
}

impl<T> EventStream<T> {
    pub(crate) fn new(rx: mpsc::Receiver<Arc<EventNotification>>, guard: StreamGuard) -> Self {
        EventStream {
            rx,
            _guard: guard,
            _type: PhantomData,
        }
    }

    /// The object this stream listens to.
    pub fn object(&self) -> &str {
        &self._guard.key.object
    }
}

/// An event that arrived but did not decode into its typed form (kept whole).
#[derive(Debug, Clone)]
pub struct UndecodableEvent {
    /// The raw notification.
    pub raw: Arc<EventNotification>,
    /// Why it did not decode.
    pub reason: String,
}

impl<T: DeserializeOwned> EventStream<T> {
    /// The next event, decoded. `None` when the stream ended.
    pub async fn recv(&mut self) -> Option<Result<T, UndecodableEvent>> {
        let raw = self.rx.recv().await?;
        Some(decode_event::<T>(raw))
    }
}

fn decode_event<T: DeserializeOwned>(raw: Arc<EventNotification>) -> Result<T, UndecodableEvent> {
    T::deserialize(&raw.data).map_err(|e| UndecodableEvent {
        reason: e.to_string(),
        raw: raw.clone(),
    })
}

impl EventStream<RawEvent> {
    /// The next raw notification.
    pub async fn recv_raw(&mut self) -> Option<Arc<EventNotification>> {
        self.rx.recv().await
    }
}

/// Any event, undecoded: the `data` object as the server sent it.
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(transparent)]
pub struct RawEvent(pub Value);

impl<T: DeserializeOwned> futures_core::Stream for EventStream<T> {
    type Item = Result<T, UndecodableEvent>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        match self.rx.poll_recv(cx) {
            Poll::Ready(Some(raw)) => Poll::Ready(Some(decode_event::<T>(raw))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(object: &str, ty: &str) -> EventNotification {
        EventNotification {
            object: object.into(),
            event_type: ty.into(),
            data: serde_json::json!({"type": ty}),
        }
    }

    #[test]
    fn fan_out_and_full_buffers_are_counted() {
        let mut r = EventRouter::default();
        let key = SubscriptionKey {
            object: "o".into(),
            event_type: "E".into(),
        };
        let (tx1, mut rx1) = mpsc::channel(1);
        let (tx2, mut rx2) = mpsc::channel(4);
        assert!(r.add(&key, tx1).1);
        assert!(!r.add(&key, tx2).1);
        assert_eq!(r.dispatch(ev("o", "E")), 0);
        assert_eq!(r.dispatch(ev("o", "E")), 1, "second event overflows rx1");
        assert_eq!(r.dispatch(ev("other", "E")), 0);
        assert!(rx1.try_recv().is_ok());
        assert!(rx1.try_recv().is_err());
        assert!(rx2.try_recv().is_ok() && rx2.try_recv().is_ok());
    }

    #[test]
    fn legacy_wire_name_routes_to_key() {
        let mut r = EventRouter::default();
        let key = SubscriptionKey {
            object: "o".into(),
            event_type: "IceCandidateFound".into(),
        };
        let (tx, mut rx) = mpsc::channel(4);
        r.add(&key, tx);
        r.confirm(&key, "sub".into(), "OnIceCandidate");
        r.dispatch(ev("o", "OnIceCandidate"));
        assert!(rx.try_recv().is_ok());
        assert_eq!(r.remove(&key, 1), Some(Some("sub".into())));
    }
}
