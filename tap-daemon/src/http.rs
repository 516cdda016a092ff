//! `/metrics` (Prometheus text) and `/healthz`.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use kurento_client::ConnectionState;
use tokio::sync::watch;

use crate::metrics::Metrics;

#[derive(Clone)]
struct AppState {
    metrics: Arc<Metrics>,
    kms: watch::Receiver<ConnectionState>,
    nats: async_nats::Client,
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
) -> anyhow::Result<(tokio::task::JoinHandle<()>, SocketAddr)> {
    let app = Router::new()
        .route("/metrics", get(self::metrics))
        .route("/healthz", get(healthz))
        .with_state(AppState { metrics, kms, nats });
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {addr} for /metrics: {e}"))?;
    let bound = listener.local_addr()?;
    let task = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Ok((task, bound))
}
