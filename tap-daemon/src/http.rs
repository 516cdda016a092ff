//! `/metrics` (Prometheus text), `/healthz`, and the live dashboard: `/` (a page with no build step)
//! fed by `/events` (Server-Sent Events: every result as it arrives, after the latest one per
//! room, participant and model for a page that just opened).

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{Html, IntoResponse};
use axum::routing::get;
use axum::Router;
use kurento_client::ConnectionState;
use tokio::sync::watch;

use crate::dispatch::Dispatcher;
use crate::metrics::Metrics;
use tap_protocol::ResultMessage;

type Latest =
    Arc<std::sync::Mutex<std::collections::HashMap<(String, String, String), Arc<ResultMessage>>>>;

#[derive(Clone)]
struct AppState {
    metrics: Arc<Metrics>,
    kms: watch::Receiver<ConnectionState>,
    nats: async_nats::Client,
    dispatcher: Arc<Dispatcher>,
    latest: Latest,
}

const DASHBOARD: &str = include_str!("../dashboard/index.html");

async fn dashboard() -> impl IntoResponse {
    Html(DASHBOARD)
}

/// Keeps the newest result per (room, participant, model); forgets those older than 5 minutes.
async fn keep_latest(
    mut results: tokio::sync::broadcast::Receiver<Arc<ResultMessage>>,
    latest: Latest,
) {
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
            Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
            Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
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
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return None,
            }
        }
    });
    Sse::new(futures_util::StreamExt::chain(first, live)).keep_alive(KeepAlive::default())
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
    let kms_ok = s.kms.borrow().is_connected();
    let nats_ok = s.nats.connection_state() == async_nats::connection::State::Connected;
    let body = format!(
        "kms: {}\nnats: {}\n",
        if kms_ok { "ok" } else { "down" },
        if nats_ok { "ok" } else { "down" }
    );
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
    kms: watch::Receiver<ConnectionState>,
    nats: async_nats::Client,
    dispatcher: Arc<Dispatcher>,
) -> anyhow::Result<(tokio::task::JoinHandle<()>, SocketAddr)> {
    let latest: Latest = Default::default();
    let keeper = tokio::spawn(keep_latest(dispatcher.subscribe_results(), latest.clone()));
    let app = Router::new()
        .route("/", get(dashboard))
        .route("/events", get(events))
        .route("/metrics", get(self::metrics))
        .route("/healthz", get(healthz))
        .with_state(AppState {
            metrics,
            kms,
            nats,
            dispatcher,
            latest,
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
