//! The room-mood adapter: runs the pure [`room_mood::MoodEngine`] on results (the daemon's own, in
//! process; or, in `kurento-tap mood`, the NATS results of many daemons), keeps its model
//! declarations in step with the registry, and once a second publishes every participant's fused
//! state and every room's mood on NATS (kept in JetStream `TAP_AFFECT_V1`: the room timeline) and
//! hands them to the DataChannel injectors. Everything decided lives in `room-mood`; this only
//! carries messages.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_nats::jetstream;
use futures_util::{Stream, StreamExt};
use room_mood::{MoodConfig, MoodEngine, Observed, PresenterSource};
use tap_protocol::affect::{
    room_subject, state_subject, ParticipantState, PresenterRequest, PresenterRequestSource,
    RoomMood, AFFECT_STREAM, CTL_PRESENTER, ROOM_SUBJECTS, STATE_SUBJECTS,
};
use tap_protocol::{safe_token, ResultMessage};
use tokio::sync::{broadcast, mpsc, watch};
use tracing::{debug, warn};

use crate::media::chunker::LiveSpecs;
use crate::metrics::Metrics;

/// What the fusion publishes, as the injectors receive it.
#[derive(Debug, Clone)]
pub enum AffectUpdate {
    /// A room's mood (for its presenter).
    Room(RoomMood),
    /// A participant's state (for that participant).
    State(ParticipantState),
}

/// What the daemon tells the fusion besides results.
#[derive(Debug, Clone)]
pub enum MoodEvent {
    /// The presenter of a room was named (or un-named with `None`).
    Presenter {
        /// Room (safe token, as in results).
        room: String,
        /// Participant (safe token).
        participant: Option<String>,
        /// Who named them.
        source: PresenterSource,
    },
    /// A participant left: their state goes at once.
    Left {
        /// Room (safe token).
        room: String,
        /// Participant (safe token).
        participant: String,
    },
}

/// Settings of the adapter.
#[derive(Debug, Clone)]
pub struct MoodSettings {
    /// Off: no fusion at all.
    pub enabled: bool,
    /// The engine's tuning (min_group, smoothing, decay…).
    pub engine: MoodConfig,
    /// Publish per-participant states on NATS (room moods are always published).
    pub publish_states: bool,
    /// How long states and room moods are kept in JetStream.
    pub max_age: Duration,
    /// At most this many kept per subject (a participant's states, a room's moods): at one a
    /// second, the default keeps the last 4 hours (a state is ~300 bytes: 4.3 MB per participant).
    pub per_subject: i64,
    /// The processing policy: under `expressions` states and moods lose emotion, valence and
    /// arousal; under `aggregate` no state leaves (room moods only).
    pub policy: crate::privacy::policy::Policy,
}

impl Default for MoodSettings {
    fn default() -> Self {
        MoodSettings {
            enabled: true,
            engine: MoodConfig::default(),
            publish_states: true,
            max_age: Duration::from_secs(24 * 3600),
            per_subject: 4 * 3600,
            policy: crate::privacy::policy::Policy::default(),
        }
    }
}

/// Creates (or finds) the stream keeping states and room moods.
pub async fn ensure_stream(js: &jetstream::Context, settings: &MoodSettings) -> anyhow::Result<()> {
    js.get_or_create_stream(jetstream::stream::Config {
        name: AFFECT_STREAM.into(),
        description: Some("kurento-tap fused states and room moods (protocol v1)".into()),
        subjects: vec![STATE_SUBJECTS.into(), ROOM_SUBJECTS.into()],
        max_age: settings.max_age,
        max_messages_per_subject: settings.per_subject,
        storage: jetstream::stream::StorageType::File,
        ..Default::default()
    })
    .await
    .map_err(|e| anyhow::anyhow!("cannot create the affect stream {AFFECT_STREAM}: {e}"))?;
    Ok(())
}

fn now_ms() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64() * 1000.0)
        .unwrap_or(0.0)
}

/// Declares every live model's affect meaning, and takes back those gone.
fn sync_declarations(
    engine: &mut MoodEngine,
    live: &LiveSpecs,
    declared: &mut Vec<(String, String)>,
) {
    let specs = live.read().map(|s| s.clone()).unwrap_or_default();
    let mut now = Vec::new();
    for spec in specs.iter() {
        if let Some(decl) = &spec.affect {
            if decl.validate().is_ok() {
                engine.declare(&spec.id.name, &spec.id.version, decl.clone());
                now.push((spec.id.name.clone(), spec.id.version.clone()));
            }
        }
    }
    for (name, version) in declared.iter() {
        if !now.contains(&(name.clone(), version.clone())) {
            engine.undeclare(name, version);
        }
    }
    *declared = now;
}

/// What the fusion talks to.
pub struct MoodLinks {
    /// The live model specs (their affect declarations).
    pub live: LiveSpecs,
    /// Ticks when they change.
    pub models_changed: watch::Receiver<u64>,
    /// Presenters named and participants gone.
    pub events: mpsc::Receiver<MoodEvent>,
    /// Where states and room moods are published.
    pub nats: async_nats::Client,
    /// The same, to the DataChannel injectors.
    pub updates: broadcast::Sender<Arc<AffectUpdate>>,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// Presenter control requests (`tap.v1.ctl.presenter`), subscribed by whoever starts the fusion
    /// so that it is reachable when the start returns.
    pub presenter_requests: async_nats::Subscriber,
}

/// Subscribes to presenter control requests (see [`MoodLinks::presenter_requests`]).
pub async fn subscribe_control(
    nats: &async_nats::Client,
) -> anyhow::Result<async_nats::Subscriber> {
    nats.subscribe(CTL_PRESENTER)
        .await
        .map_err(|e| anyhow::anyhow!("cannot subscribe to {CTL_PRESENTER}: {e}"))
}

/// Runs the fusion until `results` ends.
pub async fn run(
    settings: MoodSettings,
    results: impl Stream<Item = Arc<ResultMessage>>,
    links: MoodLinks,
) {
    let MoodLinks {
        live,
        mut models_changed,
        mut events,
        nats,
        updates,
        metrics,
        presenter_requests,
    } = links;
    let mut control = Some(presenter_requests);
    let mut engine = MoodEngine::new(settings.engine.clone());
    let mut declared = Vec::new();
    sync_declarations(&mut engine, &live, &mut declared);
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut results = std::pin::pin!(results);
    loop {
        tokio::select! {
            r = results.next() => {
                let Some(r) = r else { return };
                let outcome = match engine.observe(&r) {
                    Observed::Fused => "fused",
                    Observed::Undeclared => "undeclared",
                    Observed::Late => "late",
                    Observed::OverCapacity => "over_capacity",
                    Observed::Invalid => "invalid",
                };
                metrics.affect_result(outcome);
            }
            Ok(()) = models_changed.changed() => {
                sync_declarations(&mut engine, &live, &mut declared);
            }
            Some(msg) = next_control(&mut control) => {
                let answer = match PresenterRequest::parse(&msg.payload) {
                    Ok((req, source)) => {
                        let source = match source {
                            PresenterRequestSource::Tag => PresenterSource::Tag,
                            PresenterRequestSource::Control => PresenterSource::Control,
                        };
                        engine.set_presenter(
                            &safe_token(&req.room),
                            req.participant.as_deref().map(safe_token).as_deref(),
                            source,
                        );
                        serde_json::json!({"ok": true})
                    }
                    Err(e) => {
                        metrics.bad_control_requests.inc();
                        serde_json::json!({"ok": false, "error": e})
                    }
                };
                if let Some(reply) = msg.reply {
                    let _ = nats.publish(reply, answer.to_string().into()).await;
                }
            }
            Some(ev) = events.recv() => match ev {
                MoodEvent::Presenter { room, participant, source } => {
                    engine.set_presenter(&room, participant.as_deref(), source);
                }
                MoodEvent::Left { room, participant } => engine.leave(&room, &participant),
            },
            _ = tick.tick() => {
                let now = now_ms();
                for mood in engine.tick(now) {
                    let mood = crate::privacy::policy::room(settings.policy, mood);
                    metrics.room_mood(mood.published);
                    publish(&nats, room_subject(&mood.room), &mood).await;
                    let _ = updates.send(Arc::new(AffectUpdate::Room(mood)));
                }
                for state in engine.states(now) {
                    // Under `aggregate` no state leaves: not on NATS, not into a DataChannel.
                    let Some(state) = crate::privacy::policy::state(settings.policy, state) else {
                        continue;
                    };
                    if settings.publish_states {
                        publish(&nats, state_subject(&state.room, &state.participant), &state).await;
                    }
                    let _ = updates.send(Arc::new(AffectUpdate::State(state)));
                }
            }
        }
    }
}

async fn next_control(sub: &mut Option<async_nats::Subscriber>) -> Option<async_nats::Message> {
    match sub {
        Some(s) => s.next().await,
        None => std::future::pending().await,
    }
}

async fn publish<T: serde::Serialize>(nats: &async_nats::Client, subject: String, msg: &T) {
    let Ok(body) = serde_json::to_vec(msg) else {
        return;
    };
    // Core publish: the stream stores it; a slow server must not hold up the fusion.
    if let Err(e) = nats.publish(subject, body.into()).await {
        warn!(error = %e, "cannot publish an affect message");
    }
}

/// Results from the in-process broadcast, skipping over what a lagging reader missed.
pub fn broadcast_results(
    rx: broadcast::Receiver<Arc<ResultMessage>>,
    metrics: Arc<Metrics>,
) -> impl Stream<Item = Arc<ResultMessage>> {
    futures_util::stream::unfold((rx, metrics), |(mut rx, metrics)| async move {
        loop {
            match rx.recv().await {
                Ok(r) => return Some((r, (rx, metrics))),
                Err(broadcast::error::RecvError::Lagged(n)) => {
                    debug!(n, "fusion lagged behind the results");
                    for _ in 0..n {
                        metrics.affect_result("lagged");
                    }
                }
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        }
    })
}

/// Results from NATS (`tap.v1.result.>`): any daemon's. Undecodable messages are counted and
/// skipped.
pub fn nats_results(
    sub: async_nats::Subscriber,
    metrics: Arc<Metrics>,
) -> impl Stream<Item = Arc<ResultMessage>> {
    sub.filter_map(move |msg| {
        let metrics = metrics.clone();
        async move {
            match serde_json::from_slice::<ResultMessage>(&msg.payload) {
                Ok(r) => Some(Arc::new(r)),
                Err(e) => {
                    debug!(subject = %msg.subject, error = %e, "undecodable result");
                    metrics.affect_result("undecodable");
                    None
                }
            }
        }
    })
}

/// `kurento-tap mood`: the fusion on its own, over the NATS results of every daemon (run the daemons
/// with `[mood] enabled = false` and one of these). Presenters come from control requests, from the
/// daemons passing on `role=presenter` tags, or from speech. Runs until `shutdown` resolves.
pub async fn run_standalone(
    nats: async_nats::Client,
    settings: MoodSettings,
    metrics: Arc<Metrics>,
    shutdown: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    let js = jetstream::new(nats.clone());
    ensure_stream(&js, &settings).await?;
    let kv = crate::dispatch::registry::open_bucket(&js).await?;
    let live = crate::dispatch::registry::empty();
    let (changed_tx, changed_rx) = watch::channel(0);
    let max_payload = nats.server_info().max_payload;
    let registry = tokio::spawn(crate::dispatch::registry::watch(
        kv,
        live.clone(),
        changed_tx,
        max_payload,
        metrics.clone(),
    ));
    let sub = nats
        .subscribe(tap_protocol::RESULT_SUBJECTS)
        .await
        .map_err(|e| anyhow::anyhow!("cannot subscribe to results: {e}"))?;
    let presenter_requests = subscribe_control(&nats).await?;
    tap_protocol::nats::confirm_with_server(&nats, Duration::from_secs(10))
        .await
        .map_err(|e| anyhow::anyhow!("NATS: {e}"))?;
    // Nobody listens in process; the channel only has to exist.
    let (updates, _) = broadcast::channel(16);
    let (_events_tx, events) = mpsc::channel(1);
    let fusion = run(
        settings,
        nats_results(sub, metrics.clone()),
        MoodLinks {
            live,
            models_changed: changed_rx,
            events,
            nats: nats.clone(),
            updates,
            metrics,
            presenter_requests,
        },
    );
    tokio::select! {
        _ = fusion => {}
        _ = shutdown => {}
    }
    registry.abort();
    nats.flush().await.ok();
    Ok(())
}
