//! `/metrics` (Prometheus text) and `/healthz`, open to probes (no personal data in them), and the
//! data endpoints, behind a credential ([`crate::auth`]) and optionally on a listener of their own:
//! the live dashboard: `/` (a page with no build step)
//! fed by `/events` (Server-Sent Events: every result as it arrives, after the latest one per
//! room, participant and model for a page that just opened; and, with the fusion on, every room
//! mood and fused state), `/history` (the room moods of the last 30 minutes, from JetStream) and
//! `/models` (the live model specs, with each model's declared quality); `/login` turns the token
//! into the dashboard's session cookie.

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

use crate::auth::{DataAuth, Verdict, SESSION_COOKIE};
use crate::dispatch::Dispatcher;
use crate::media::chunker::LiveSpecs;
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
    auth: Arc<DataAuth>,
}

/// Lets a data request through only with a credential ([`DataAuth::check`]); counts refusals.
async fn require_credential(
    State(s): State<AppState>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let verdict = s.auth.check(
        req.headers()
            .iter()
            .filter_map(|(k, v)| Some((k.as_str(), v.to_str().ok()?))),
        req.uri().query(),
    );
    let refuse = |reason: &str| {
        s.metrics
            .http_refused
            .get_or_create(&crate::metrics::ReasonLabel {
                reason: reason.into(),
            })
            .inc();
    };
    match verdict {
        Verdict::Allowed => next.run(req).await,
        Verdict::CredentialInQuery => {
            refuse("credential_in_query");
            (
                StatusCode::BAD_REQUEST,
                "credentials in a URL are refused (URLs end up in logs and browser history): send Authorization: Bearer <token>, or log in at /\n",
            )
                .into_response()
        }
        Verdict::Unauthorized(reason) => {
            refuse(&reason.replace(' ', "_"));
            let page = req.uri().path() == "/";
            let mut r = if page {
                (StatusCode::UNAUTHORIZED, Html(LOGIN)).into_response()
            } else {
                (
                    StatusCode::UNAUTHORIZED,
                    "a credential is required: Authorization: Bearer <token> (the daemon's data token), or the dashboard's session\n",
                )
                    .into_response()
            };
            r.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static("Bearer realm=\"kurento-tap\""),
            );
            r
        }
    }
}

const LOGIN: &str = include_str!("../../dashboard/login.html");

/// `POST /login` with the token as the body: sets the session cookie (a digest of the token).
async fn login(State(s): State<AppState>, body: String) -> impl IntoResponse {
    let token = body
        .strip_prefix("token=")
        .map(str::to_owned)
        .unwrap_or(body);
    match &s.auth.token {
        Some(t) if t.matches(&token) => {
            let cookie = format!(
                "{SESSION_COOKIE}={}; HttpOnly; SameSite=Strict; Path=/",
                t.session_value()
            );
            (
                StatusCode::NO_CONTENT,
                [(header::SET_COOKIE, cookie)],
                String::new(),
            )
        }
        _ => {
            s.metrics
                .http_refused
                .get_or_create(&crate::metrics::ReasonLabel {
                    reason: "wrong_login".into(),
                })
                .inc();
            (
                StatusCode::UNAUTHORIZED,
                [(header::SET_COOKIE, String::new())],
                "wrong token\n".to_owned(),
            )
        }
    }
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

const DASHBOARD: &str = include_str!("../../dashboard/index.html");

async fn dashboard(State(s): State<AppState>) -> impl IntoResponse {
    // The processing policy in the header (what this dashboard may show at all).
    Html(DASHBOARD.replace("{{POLICY}}", s.dispatcher.policy().as_str()))
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
    // The consent mode in force, as the metrics show it (set once at start).
    let opt_in = s
        .metrics
        .consent_mode
        .get_or_create(&crate::metrics::ModeLabel {
            mode: crate::privacy::consent::ConsentMode::OptIn.as_str().into(),
        })
        .get()
        == 1;
    let mut body = format!(
        "kms: {}\nnats: {}\npolicy: {}\nconsent: {}\n",
        word(kms_ok && up.iter().all(|(_, ok)| *ok)),
        word(nats_ok),
        s.dispatcher.policy(),
        if opt_in { "opt-in" } else { "opt-out" }
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

/// Where the HTTP endpoints listen and who may read the data ones.
#[derive(Debug, Clone)]
pub struct HttpSettings {
    /// `/metrics` and `/healthz` (and the data endpoints too when `data` is None).
    pub probes: SocketAddr,
    /// The data endpoints on a listener of their own.
    pub data: Option<SocketAddr>,
    /// Who may read the data endpoints.
    pub auth: DataAuth,
}

/// The listeners' tasks and bound addresses.
pub struct Served {
    /// Both listeners' tasks.
    pub tasks: Vec<tokio::task::JoinHandle<()>>,
    /// Where the probes answer.
    pub probes: SocketAddr,
    /// Where the data endpoints answer (the probes' address when they share it).
    pub data: SocketAddr,
}

async fn listen(addr: SocketAddr, what: &str) -> anyhow::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {addr} for {what}: {e}"))
}

/// Serves until aborted.
#[allow(clippy::too_many_arguments)]
pub async fn serve(
    settings: HttpSettings,
    metrics: Arc<Metrics>,
    kms: Vec<(String, watch::Receiver<ConnectionState>)>,
    nats: async_nats::Client,
    dispatcher: Arc<Dispatcher>,
    affect: Option<broadcast::Sender<Arc<AffectUpdate>>>,
    live: LiveSpecs,
) -> anyhow::Result<Served> {
    let latest: Latest = Default::default();
    let keeper = tokio::spawn(keep_latest(dispatcher.subscribe_results(), latest.clone()));
    let state = AppState {
        metrics,
        kms,
        nats,
        dispatcher,
        latest,
        affect,
        live,
        auth: Arc::new(settings.auth.clone()),
    };
    let probes = Router::new()
        .route("/metrics", get(self::metrics))
        .route("/healthz", get(healthz))
        .with_state(state.clone());
    let data = Router::new()
        .route("/", get(dashboard))
        .route("/events", get(events))
        .route("/history", get(history))
        .route("/models", get(models))
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            require_credential,
        ))
        .route("/login", axum::routing::post(login))
        .with_state(state);
    let probe_listener = listen(settings.probes, "/metrics and /healthz").await?;
    let probes_bound = probe_listener.local_addr()?;
    let mut tasks = Vec::new();
    let data_bound = match settings.data {
        None => {
            let app = probes.merge(data);
            tasks.push(tokio::spawn(async move {
                let _ = axum::serve(probe_listener, app).await;
                keeper.abort();
            }));
            probes_bound
        }
        Some(addr) => {
            let data_listener = listen(addr, "the dashboard and data endpoints").await?;
            let bound = data_listener.local_addr()?;
            tasks.push(tokio::spawn(async move {
                let _ = axum::serve(probe_listener, probes).await;
            }));
            tasks.push(tokio::spawn(async move {
                let _ = axum::serve(data_listener, data).await;
                keeper.abort();
            }));
            bound
        }
    };
    Ok(Served {
        tasks,
        probes: probes_bound,
        data: data_bound,
    })
}
