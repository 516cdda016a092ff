//! `/metrics` (Prometheus text), `/healthz`, and the live dashboard: `/` (a page with no build step)
//! fed by `/events` (Server-Sent Events: every result as it arrives, after the latest one per
//! room, participant and model for a page that just opened; and, with the fusion on, every room
//! mood and fused state), `/history` (the room moods of the last 30 minutes, from JetStream) and
//! `/models` (the live model specs, with each model's declared quality).

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{Html, IntoResponse};
use axum::routing::get;
use axum::Router;
use kurento_client::ConnectionState;
use std::time::Duration;

use futures_util::StreamExt as _;
use tap_protocol::affect::AFFECT_STREAM;
use tokio::sync::{broadcast, watch};

use crate::chunker::LiveSpecs;
use crate::dispatch::Dispatcher;
use crate::metrics::Metrics;
use crate::mood::AffectUpdate;
use tap_protocol::ResultMessage;

type Latest =
    Arc<std::sync::Mutex<std::collections::HashMap<(String, String, String), Arc<ResultMessage>>>>;

#[derive(Clone)]
struct AppState {
    metrics: Arc<Metrics>,
    kms: Vec<(String, watch::Receiver<ConnectionState>)>,
    nats: async_nats::Client,
    dispatcher: Arc<Dispatcher>,
    latest: Latest,
    affect: Option<broadcast::Sender<Arc<AffectUpdate>>>,
    live: LiveSpecs,
}

/// The live model specs (what the registry holds and the daemon serves), as JSON.
async fn models(State(s): State<AppState>) -> impl IntoResponse {
    let specs = s.live.read().unwrap_or_else(|e| e.into_inner()).clone();
    let list: Vec<&tap_protocol::ModelSpec> = specs.iter().map(|s| &**s).collect();
    let body = serde_json::to_string(&list).unwrap_or_else(|_| "[]".into());
    ([(header::CONTENT_TYPE, "application/json")], body)
}

/// Room moods kept in JetStream for a page that just opened, oldest first.
const HISTORY: Duration = Duration::from_secs(30 * 60);
/// At most this many (a 30-minute timeline of ~11 rooms at one a second).
const HISTORY_MAX: usize = 20_000;

async fn history(State(s): State<AppState>) -> impl IntoResponse {
    match read_history(&s.nats).await {
        Ok(moods) => (
            StatusCode::OK,
            [(header::CONTENT_TYPE, "application/json")],
            serde_json::to_string(&moods).unwrap_or_else(|_| "[]".into()),
        ),
        Err(e) => (
            StatusCode::SERVICE_UNAVAILABLE,
            [(header::CONTENT_TYPE, "text/plain")],
            format!("no history: {e}"),
        ),
    }
}

async fn read_history(nats: &async_nats::Client) -> anyhow::Result<Vec<serde_json::Value>> {
    use async_nats::jetstream::{self, consumer};
    let js = jetstream::new(nats.clone());
    let stream = js.get_stream(AFFECT_STREAM).await?;
    let mut consumer = stream
        .create_consumer(consumer::pull::OrderedConfig {
            filter_subject: tap_protocol::affect::ROOM_SUBJECTS.into(),
            deliver_policy: consumer::DeliverPolicy::ByStartTime {
                start_time: time::OffsetDateTime::now_utc() - HISTORY,
            },
            ..Default::default()
        })
        .await?;
    let mut out = Vec::new();
    if consumer.info().await?.num_pending == 0 {
        return Ok(out);
    }
    let mut messages = consumer.messages().await?;
    while let Ok(Some(msg)) = tokio::time::timeout(Duration::from_secs(2), messages.next()).await {
        let msg = msg?;
        let remaining = msg.info().map(|i| i.pending).unwrap_or(0);
        // Only well-formed room moods reach the page.
        if let Ok(m) = serde_json::from_slice::<tap_protocol::affect::RoomMood>(&msg.payload) {
            out.push(serde_json::to_value(m)?);
        }
        if remaining == 0 || out.len() >= HISTORY_MAX {
            break;
        }
    }
    Ok(out)
}

const DASHBOARD: &str = include_str!("../dashboard/index.html");

async fn dashboard() -> impl IntoResponse {
    Html(DASHBOARD)
}

/// Keeps the newest result per (room, participant, model); forgets those older than 5 minutes.
async fn keep_latest(mut results: broadcast::Receiver<Arc<ResultMessage>>, latest: Latest) {
    loop {
        match results.recv().await {
            Ok(r) => {
                let mut map = latest.lock().unwrap_or_else(|e| e.into_inner());
                let horizon = r.capture_ms - 300_000.0;
                map.retain(|_, v| v.capture_ms >= horizon);
                map.insert(
                    (
                        r.room.clone(),
                        r.participant.clone(),
                        format!("{}@{}", r.model, r.version),
                    ),
                    r,
                );
            }
            Err(broadcast::error::RecvError::Lagged(_)) => continue,
            Err(broadcast::error::RecvError::Closed) => return,
        }
    }
}

async fn events(
    State(s): State<AppState>,
) -> Sse<impl futures_util::Stream<Item = Result<Event, std::convert::Infallible>>> {
    let rx = s.dispatcher.subscribe_results();
    let snapshot: Vec<Arc<ResultMessage>> = s
        .latest
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .values()
        .cloned()
        .collect();
    let first = futures_util::stream::iter(snapshot.into_iter().map(|r| Ok(result_event(&r))));
    let live = futures_util::stream::unfold(rx, |mut rx| async move {
        loop {
            match rx.recv().await {
                Ok(r) => return Some((Ok(result_event(&r)), rx)),
                // A slow page skips results rather than holding the daemon's memory.
                Err(broadcast::error::RecvError::Lagged(_)) => continue,
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        }
    });
    let affect = s.affect.as_ref().map(|tx| tx.subscribe());
    let moods = futures_util::stream::unfold(affect, |rx| async move {
        let mut rx = rx?;
        loop {
            match rx.recv().await {
                Ok(u) => return Some((Ok(affect_event(&u)), Some(rx))),
                Err(broadcast::error::RecvError::Lagged(_)) => continue,
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        }
    });
    let all = futures_util::stream::select(futures_util::StreamExt::chain(first, live), moods);
    Sse::new(all).keep_alive(KeepAlive::default())
}

fn affect_event(u: &AffectUpdate) -> Event {
    let (name, data) = match u {
        AffectUpdate::Room(m) => ("room", serde_json::to_string(m)),
        AffectUpdate::State(s) => ("state", serde_json::to_string(s)),
    };
    Event::default().event(name).data(data.unwrap_or_default())
}

fn result_event(r: &ResultMessage) -> Event {
    Event::default()
        .event("result")
        .data(serde_json::to_string(r).unwrap_or_default())
}

async fn metrics(State(s): State<AppState>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        s.metrics.encode(),
    )
}

async fn healthz(State(s): State<AppState>) -> impl IntoResponse {
    let up: Vec<(&str, bool)> = s
        .kms
        .iter()
        .map(|(name, state)| (name.as_str(), state.borrow().is_connected()))
        .collect();
    // Ready while some KMS is reachable: a daemon watching several must not be restarted for one.
    let kms_ok = up.iter().any(|(_, ok)| *ok);
    let nats_ok = s.nats.connection_state() == async_nats::connection::State::Connected;
    let word = |ok: bool| if ok { "ok" } else { "down" };
    let mut body = format!(
        "kms: {}\nnats: {}\n",
        word(kms_ok && up.iter().all(|(_, ok)| *ok)),
        word(nats_ok)
    );
    if up.len() > 1 {
        for (name, ok) in &up {
            body.push_str(&format!("kms {name}: {}\n", word(*ok)));
        }
    }
    let code = if kms_ok && nats_ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, body)
}

/// Serves until aborted; returns the task and the bound address.
pub async fn serve(
    addr: SocketAddr,
    metrics: Arc<Metrics>,
    kms: Vec<(String, watch::Receiver<ConnectionState>)>,
    nats: async_nats::Client,
    dispatcher: Arc<Dispatcher>,
    affect: Option<broadcast::Sender<Arc<AffectUpdate>>>,
    live: LiveSpecs,
) -> anyhow::Result<(tokio::task::JoinHandle<()>, SocketAddr)> {
    let latest: Latest = Default::default();
    let keeper = tokio::spawn(keep_latest(dispatcher.subscribe_results(), latest.clone()));
    let app = Router::new()
        .route("/", get(dashboard))
        .route("/events", get(events))
        .route("/history", get(history))
        .route("/models", get(models))
        .route("/metrics", get(self::metrics))
        .route("/healthz", get(healthz))
        .with_state(AppState {
            metrics,
            kms,
            nats,
            dispatcher,
            latest,
            affect,
            live,
        });
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {addr} for /metrics: {e}"))?;
    let bound = listener.local_addr()?;
    let task = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
        keeper.abort();
    });
    Ok((task, bound))
}
