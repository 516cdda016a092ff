//! Several daemons on the same KMS: the NATS KV adapter of the room leases ([`crate::cluster::lease`] decides;
//! this task reads the bucket, makes the writes and tells the control actor which rooms are ours).

pub mod lease;
pub mod scaling;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream::kv::{self, Operation};
use futures_util::StreamExt;
use tap_protocol::lease::{member_key, LeaseValue, MemberValue, MEMBER_PREFIX};
use tokio::sync::watch;
use tracing::{debug, info, warn};

use crate::cluster::lease::{LeaseBook, LeaseOp, LeaseSettings, Observed, WriteOutcome};
use crate::metrics::Metrics;

/// Cluster settings of a daemon.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ClusterSettings {
    /// Share rooms with other daemons through leases (off: tap every room).
    pub enabled: bool,
    /// Lease timing.
    pub lease: LeaseSettings,
}

/// A room the actor would tap, as it tells the lease task.
#[derive(Debug, Clone, PartialEq)]
pub struct WantedRoom {
    /// The room's name.
    pub room: String,
    /// The room's pipeline id.
    pub pipeline: String,
    /// The KMS it lives on.
    pub kms: String,
}

/// The actor's side of the leases.
pub struct LeaseLink {
    /// Rooms present and allowed, by lease key (written by every rescan).
    pub wanted: watch::Sender<BTreeMap<String, WantedRoom>>,
    /// Rooms this daemon may tap now, by lease key.
    pub valid: watch::Receiver<Arc<BTreeSet<String>>>,
    /// Rooms the watcher still has taps or setups in, by lease key (a room handed over is
    /// released only once it leaves this set).
    pub tapping: watch::Sender<BTreeSet<String>>,
}

/// Longest wait for one KV operation (a lease is renewed every second).
const OP_TIMEOUT: Duration = Duration::from_millis(800);

/// Starts the lease task for the KMS named in `kms`: one link per KMS, in that order. The task
/// ends when every link's `wanted` sender is dropped, releasing every room it holds (a daemon
/// stopping cleanly hands its rooms over at once, not after the TTL).
pub fn start(
    kv: kv::Store,
    me: String,
    settings: LeaseSettings,
    http: Option<String>,
    kms: Vec<String>,
    metrics: Arc<Metrics>,
) -> (Vec<LeaseLink>, tokio::task::JoinHandle<()>) {
    let (valid_tx, valid_rx) = watch::channel(Arc::new(BTreeSet::new()));
    let (senders, receivers): (Vec<_>, Vec<_>) =
        kms.iter().map(|_| watch::channel(BTreeMap::new())).unzip();
    let (tapping_tx, tapping_rx): (Vec<_>, Vec<_>) =
        kms.iter().map(|_| watch::channel(BTreeSet::new())).unzip();
    let task = tokio::spawn(run(
        kv,
        LeaseBook::new(me, settings),
        receivers,
        tapping_rx,
        valid_tx,
        MemberInfo { http, kms },
        metrics,
    ));
    let links = senders
        .into_iter()
        .zip(tapping_tx)
        .map(|(wanted, tapping)| LeaseLink {
            wanted,
            valid: valid_rx.clone(),
            tapping,
        })
        .collect();
    (links, task)
}

struct MemberInfo {
    http: Option<String>,
    kms: Vec<String>,
}

async fn run(
    kv: kv::Store,
    mut book: LeaseBook,
    mut wanted_rxs: Vec<watch::Receiver<BTreeMap<String, WantedRoom>>>,
    tapping_rxs: Vec<watch::Receiver<BTreeSet<String>>>,
    valid_tx: watch::Sender<Arc<BTreeSet<String>>>,
    info: MemberInfo,
    metrics: Arc<Metrics>,
) {
    let settings = *book.settings();
    // Half the renew interval: a lost lease is noticed well before the server frees the room.
    let mut tick = tokio::time::interval(settings.renew_every / 2);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut members: Option<kv::Watch> = None;
    let mut since: BTreeMap<String, u64> = BTreeMap::new();
    loop {
        tick.tick().await;
        // Every watcher gone: the daemon is stopping.
        if wanted_rxs.iter().all(|w| w.has_changed().is_err()) {
            break;
        }
        if members.is_none() {
            members = kv
                .watch_with_history(format!("{MEMBER_PREFIX}*"))
                .await
                .ok();
        }
        if let Some(w) = members.as_mut() {
            if !drain_members(w, &mut book) {
                members = None;
            }
        }
        let mut wanted = BTreeMap::new();
        for w in wanted_rxs.iter_mut() {
            wanted.extend(w.borrow_and_update().clone());
        }
        let tapping: BTreeSet<String> = tapping_rxs
            .iter()
            .flat_map(|t| t.borrow().iter().cloned().collect::<Vec<_>>())
            .collect();
        book.set_tapping(tapping);
        let now = Instant::now();
        let observed = observe(&kv, &book, &wanted, now).await;
        let ops = book.plan(Instant::now(), &observed);
        let outcomes = futures_util::future::join_all(ops.into_iter().map(|op| {
            let kv = kv.clone();
            let value = lease_value(&op, &book, &wanted, &mut since);
            async move {
                let sent = Instant::now();
                let outcome = write(&kv, &op, value).await;
                (op, sent, outcome)
            }
        }))
        .await;
        for (op, sent, outcome) in outcomes {
            match op {
                LeaseOp::Acquire { key } => {
                    if matches!(outcome, WriteOutcome::Written(_)) {
                        info!(room = %room_of(&wanted, &key), key, "room lease taken");
                        metrics.lease_events("acquired");
                    }
                    book.acquired(&key, sent, outcome);
                }
                LeaseOp::Renew { key, .. } => {
                    let was_held = book.holds(&key, sent);
                    match &outcome {
                        WriteOutcome::Refused if was_held => {
                            warn!(room = %room_of(&wanted, &key), key, "room lease lost to another daemon");
                            metrics.lease_events("lost");
                        }
                        WriteOutcome::Failed => metrics.lease_events("renew_failed"),
                        WriteOutcome::Written(_) if !was_held => {
                            metrics.lease_events("acquired");
                        }
                        _ => {}
                    }
                    book.renewed(&key, sent, outcome);
                }
                LeaseOp::Release { key, .. } => {
                    since.remove(&key);
                    metrics.lease_events("released");
                }
            }
        }
        let valid: BTreeSet<String> = book.valid(Instant::now()).into_iter().collect();
        metrics.leases_held.set(valid.len() as i64);
        valid_tx.send_if_modified(|v| {
            if **v != valid {
                *v = Arc::new(valid);
                true
            } else {
                false
            }
        });
        let member = MemberValue {
            v: tap_protocol::VERSION,
            daemon: book.me().to_owned(),
            kms: info.kms.clone(),
            rooms: book.held_count() as u32,
            http: info.http.clone(),
        };
        if let Ok(body) = serde_json::to_vec(&member) {
            let _ =
                tokio::time::timeout(OP_TIMEOUT, kv.put(member_key(book.me()), body.into())).await;
        }
    }
    // Stopping: the watchers have released their taps; hand the rooms over now.
    valid_tx.send_replace(Arc::new(BTreeSet::new()));
    book.set_tapping(BTreeSet::new());
    let ops = book.plan(Instant::now(), &BTreeMap::new());
    for op in ops {
        if let LeaseOp::Release { .. } = op {
            let _ = write(&kv, &op, None).await;
        }
    }
    let _ = tokio::time::timeout(OP_TIMEOUT, kv.delete(member_key(book.me()))).await;
    metrics.leases_held.set(0);
}

fn room_of<'a>(wanted: &'a BTreeMap<String, WantedRoom>, key: &str) -> &'a str {
    wanted.get(key).map(|w| w.room.as_str()).unwrap_or("?")
}

/// Reads the member entries the watch has delivered since the last tick. False: the watch ended.
fn drain_members(w: &mut kv::Watch, book: &mut LeaseBook) -> bool {
    loop {
        match futures_util::FutureExt::now_or_never(w.next()) {
            None => return true,
            Some(None) => return false,
            Some(Some(Err(e))) => {
                debug!(error = %e, "member watch failed");
                return false;
            }
            Some(Some(Ok(entry))) => {
                if entry.operation != Operation::Put {
                    continue;
                }
                // Entries written before our start are as old as their write: count them live only
                // when written within the ttl.
                let age = time::OffsetDateTime::now_utc() - entry.created;
                let age = Duration::try_from(age).unwrap_or(Duration::ZERO);
                let Some(seen) = Instant::now().checked_sub(age) else {
                    continue;
                };
                if let Ok(m) = MemberValue::parse(&entry.value) {
                    book.member_seen(&m.daemon, m.rooms, seen);
                }
            }
        }
    }
}

/// What the bucket says about each wanted room (those we hold are not read).
async fn observe(
    kv: &kv::Store,
    book: &LeaseBook,
    wanted: &BTreeMap<String, WantedRoom>,
    now: Instant,
) -> BTreeMap<String, Observed> {
    let reads = futures_util::future::join_all(wanted.keys().map(|key| async move {
        if book.holds(key, now) {
            return (key.clone(), Observed::Free);
        }
        let observed = match tokio::time::timeout(OP_TIMEOUT, kv.entry(key.clone())).await {
            Ok(Ok(None)) => Observed::Free,
            Ok(Ok(Some(e))) if e.operation != Operation::Put => Observed::Free,
            Ok(Ok(Some(e))) => match LeaseValue::parse(&e.value) {
                Ok(v) => Observed::Held {
                    daemon: v.daemon,
                    revision: e.revision,
                },
                // Someone wrote garbage under a room key: not ours to overwrite blindly; it
                // expires with the ttl like any entry.
                Err(_) => Observed::Unknown,
            },
            _ => Observed::Unknown,
        };
        (key.clone(), observed)
    }))
    .await;
    reads.into_iter().collect()
}

fn lease_value(
    op: &LeaseOp,
    book: &LeaseBook,
    wanted: &BTreeMap<String, WantedRoom>,
    since: &mut BTreeMap<String, u64>,
) -> Option<bytes::Bytes> {
    let key = match op {
        LeaseOp::Acquire { key } | LeaseOp::Renew { key, .. } => key,
        LeaseOp::Release { .. } => return None,
    };
    let w = wanted.get(key)?;
    let since_ms = *since
        .entry(key.clone())
        .or_insert_with(|| crate::dispatch::now_us() / 1000);
    let v = LeaseValue {
        v: tap_protocol::VERSION,
        daemon: book.me().to_owned(),
        kms: w.kms.clone(),
        pipeline: w.pipeline.clone(),
        room: Some(w.room.clone()),
        since_ms,
    };
    serde_json::to_vec(&v).ok().map(Into::into)
}

async fn write(kv: &kv::Store, op: &LeaseOp, value: Option<bytes::Bytes>) -> WriteOutcome {
    use async_nats::jetstream::kv::{CreateErrorKind, UpdateErrorKind};
    match op {
        LeaseOp::Acquire { key } => {
            let Some(value) = value else {
                return WriteOutcome::Failed;
            };
            match tokio::time::timeout(OP_TIMEOUT, kv.create(key, value)).await {
                Ok(Ok(rev)) => WriteOutcome::Written(rev),
                Ok(Err(e)) if e.kind() == CreateErrorKind::AlreadyExists => WriteOutcome::Refused,
                _ => WriteOutcome::Failed,
            }
        }
        LeaseOp::Renew { key, revision } => {
            let Some(value) = value else {
                return WriteOutcome::Failed;
            };
            match tokio::time::timeout(OP_TIMEOUT, kv.update(key, value, *revision)).await {
                Ok(Ok(rev)) => WriteOutcome::Written(rev),
                Ok(Err(e)) if e.kind() == UpdateErrorKind::WrongLastRevision => {
                    WriteOutcome::Refused
                }
                _ => WriteOutcome::Failed,
            }
        }
        LeaseOp::Release { key, revision } => {
            match tokio::time::timeout(OP_TIMEOUT, kv.delete_expect_revision(key, Some(*revision)))
                .await
            {
                Ok(Ok(())) => WriteOutcome::Written(*revision),
                _ => WriteOutcome::Failed,
            }
        }
    }
}

/// Who holds what, as `kurento-tap cluster` prints it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ClusterView {
    /// Live daemons.
    pub daemons: Vec<MemberValue>,
    /// Held rooms.
    pub rooms: Vec<LeaseValue>,
}

/// Reads the lease bucket.
pub async fn read_view(kv: &kv::Store) -> Result<ClusterView, String> {
    let mut keys = kv
        .keys()
        .await
        .map_err(|e| format!("cannot list the lease bucket: {e}"))?;
    let mut view = ClusterView {
        daemons: vec![],
        rooms: vec![],
    };
    while let Some(key) = keys.next().await {
        let Ok(key) = key else {
            continue;
        };
        let Ok(Some(value)) = kv.get(key.clone()).await else {
            continue;
        };
        if key.starts_with(MEMBER_PREFIX) {
            if let Ok(m) = MemberValue::parse(&value) {
                view.daemons.push(m);
            }
        } else if let Ok(l) = LeaseValue::parse(&value) {
            view.rooms.push(l);
        }
    }
    view.daemons.sort_by(|a, b| a.daemon.cmp(&b.daemon));
    view.rooms
        .sort_by(|a, b| (&a.kms, &a.room, &a.pipeline).cmp(&(&b.kms, &b.room, &b.pipeline)));
    Ok(view)
}
