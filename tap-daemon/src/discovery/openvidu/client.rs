//! OpenVidu's REST API, the adapter: a small HTTP/1.1 client (Basic auth `OPENVIDUAPP:<secret>`,
//! one connection per request, bounded in time and size), the sessions refresh that names rooms
//! and participants, and the signals that put results into the call. Decisions and parsing are in
//! [`crate::discovery::openvidu`] (pure); this module only does the I/O.
//!
//! Nothing here is on the media path: discovery reads the last directory without waiting, and
//! signals leave from a task of their own fed by the lossy results broadcast through per-
//! participant pacers (latest per model), so a slow or dead OpenVidu drops results (counted) and
//! never holds a tap.

use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use base64::Engine;
use tap_protocol::{DataChannelMessage, ResultMessage};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::Notify;
use tracing::{debug, info, warn};

use crate::discovery::openvidu::{
    self, Directory, RestError, RestState, RestStatus, SignalAudience, StreamInfo,
};
use crate::metrics::Metrics;

/// OpenVidu's secret (from a file or the environment): never printed, never logged.
#[derive(Clone)]
pub struct OpenViduSecret(String);

impl std::fmt::Debug for OpenViduSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("OpenViduSecret(…)")
    }
}

impl OpenViduSecret {
    /// A secret from its text (surrounding whitespace, e.g. a file's newline, ignored).
    pub fn new(text: &str) -> Result<Self, String> {
        let t = text.trim();
        if t.is_empty() || t.len() > 1024 || t.chars().any(|c| c.is_control()) {
            return Err("the OpenVidu secret must be 1 to 1024 printable characters".into());
        }
        Ok(OpenViduSecret(t.to_owned()))
    }

    /// The secret in a file.
    pub fn from_file(path: &std::path::Path) -> Result<Self, String> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            format!(
                "cannot read the OpenVidu secret file {}: {e}",
                path.display()
            )
        })?;
        Self::new(&text)
    }

    fn basic_auth(&self) -> String {
        let raw = format!("OPENVIDUAPP:{}", self.0);
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(raw)
        )
    }
}

/// The `[openvidu]` settings (used with `host = "openvidu"`).
#[derive(Debug, Clone)]
pub struct OpenViduSettings {
    /// `http://host:port` of openvidu-server (its REST API); `None`: no names from OpenVidu, no
    /// signals (taps go on under connection ids).
    pub url: Option<String>,
    /// OpenVidu's secret.
    pub secret: Option<OpenViduSecret>,
    /// Analyse screen shares too (`SCR` streams; off: a screen is not a face).
    pub include_screens: bool,
    /// Sessions refreshed this often while the API answers.
    pub refresh: Duration,
    /// Each request's whole time limit.
    pub timeout: Duration,
    /// Results into the call as signals.
    pub signals: bool,
    /// The signals' `type` (the page listens to `signal:<type>`).
    pub signal_type: String,
    /// Signals per second per participant, all models together.
    pub signal_rate_hz: f64,
    /// Whose results each connection receives.
    pub signal_audience: SignalAudience,
    /// A result waiting longer for its turn is dropped.
    pub signal_max_wait: Duration,
    /// Largest signal `data`.
    pub signal_max_bytes: usize,
}

impl Default for OpenViduSettings {
    fn default() -> Self {
        OpenViduSettings {
            url: None,
            secret: None,
            include_screens: false,
            refresh: Duration::from_secs(5),
            timeout: Duration::from_secs(3),
            signals: true,
            signal_type: "kurento-tap".into(),
            signal_rate_hz: 4.0,
            signal_audience: SignalAudience::Participant,
            signal_max_wait: Duration::from_secs(2),
            signal_max_bytes: 4096,
        }
    }
}

/// Largest answer to a signal read.
const MAX_SIGNAL_ANSWER: usize = 64 * 1024;

/// A plain HTTP/1.1 endpoint with Basic auth.
#[derive(Clone)]
struct Endpoint {
    host: String,
    port: u16,
    prefix: String,
    auth: String,
    timeout: Duration,
}

impl Endpoint {
    /// One request (`Connection: close`), read to the end within the timeout.
    async fn request(
        &self,
        method: &str,
        path: &str,
        body: Option<&str>,
        max_body: usize,
    ) -> Result<openvidu::HttpResponse, RestError> {
        let work = async {
            let mut stream = tokio::net::TcpStream::connect((self.host.as_str(), self.port))
                .await
                .map_err(|e| RestError::Unreachable(e.to_string()))?;
            let host_header = if self.host.contains(':') {
                format!("[{}]:{}", self.host, self.port)
            } else {
                format!("{}:{}", self.host, self.port)
            };
            let mut req = format!(
                "{method} {}{path} HTTP/1.1\r\nHost: {host_header}\r\nAuthorization: {}\r\nAccept: application/json\r\nConnection: close\r\n",
                self.prefix, self.auth
            );
            if let Some(b) = body {
                req.push_str(&format!(
                    "Content-Type: application/json\r\nContent-Length: {}\r\n",
                    b.len()
                ));
            }
            req.push_str("\r\n");
            if let Some(b) = body {
                req.push_str(b);
            }
            stream
                .write_all(req.as_bytes())
                .await
                .map_err(|e| RestError::Unreachable(e.to_string()))?;
            let mut raw = Vec::new();
            let limit = (max_body + 64 * 1024) as u64;
            (&mut stream)
                .take(limit + 1)
                .read_to_end(&mut raw)
                .await
                .map_err(|e| RestError::Unreachable(e.to_string()))?;
            if raw.len() as u64 > limit {
                return Err(RestError::BadAnswer("answer too large".into()));
            }
            openvidu::parse_http_response(&raw, max_body)
        };
        match tokio::time::timeout(self.timeout, work).await {
            Ok(r) => r,
            Err(_) => Err(RestError::Timeout(self.timeout)),
        }
    }
}

/// OpenVidu as seen by the daemon: the last directory of sessions, the API's status, and the
/// means to refresh and signal. Shared by the watchers (read only) and the two tasks.
pub struct OpenVidu {
    settings: OpenViduSettings,
    endpoint: Option<Endpoint>,
    directory: RwLock<Arc<Directory>>,
    status: Mutex<RestStatus>,
    hurry: Notify,
    metrics: Arc<Metrics>,
}

impl std::fmt::Debug for OpenVidu {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpenVidu")
            .field("url", &self.settings.url)
            .finish_non_exhaustive()
    }
}

impl OpenVidu {
    /// From the settings (the URL checked by the configuration already).
    pub fn new(settings: OpenViduSettings, metrics: Arc<Metrics>) -> Result<Arc<Self>, String> {
        let endpoint = match (&settings.url, &settings.secret) {
            (Some(url), Some(secret)) => {
                let (host, port, prefix) = openvidu::parse_base_url(url)?;
                Some(Endpoint {
                    host,
                    port,
                    prefix,
                    auth: secret.basic_auth(),
                    timeout: settings.timeout,
                })
            }
            (Some(_), None) => {
                return Err("openvidu_url needs the secret: openvidu_secret_file or KURENTO_TAP_OPENVIDU_SECRET".into())
            }
            _ => None,
        };
        Ok(Arc::new(OpenVidu {
            status: Mutex::new(RestStatus::new(settings.refresh, Duration::from_secs(60))),
            settings,
            endpoint,
            directory: RwLock::new(Arc::new(Directory::default())),
            hurry: Notify::new(),
            metrics,
        }))
    }

    /// The settings.
    pub fn settings(&self) -> &OpenViduSettings {
        &self.settings
    }

    /// Whether the REST API is configured.
    pub fn rest_configured(&self) -> bool {
        self.endpoint.is_some()
    }

    /// What OpenVidu last said about a stream (never waits).
    pub fn stream(&self, stream_id: &str) -> Option<StreamInfo> {
        self.directory
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .streams
            .get(stream_id)
            .cloned()
    }

    /// The session of a connection, as OpenVidu last said.
    pub fn session_of(&self, connection: &str) -> Option<String> {
        self.directory
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .connections
            .get(connection)
            .cloned()
    }

    /// Whether a stream not listed yet may still be named soon (see [`RestStatus::names_may_come`]).
    pub fn names_may_come(&self) -> bool {
        self.status
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .names_may_come()
    }

    /// A publisher OpenVidu does not list yet: refresh soon (unless the API is down).
    pub fn ask_refresh(&self) {
        self.status
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .hurry(Instant::now());
        self.hurry.notify_one();
    }

    /// The API's state for `/healthz` and logs: `up`, `down: …`, `unknown`, or `not configured`.
    pub fn state_text(&self) -> String {
        if self.endpoint.is_none() {
            return "not configured".into();
        }
        match &self.status.lock().unwrap_or_else(|e| e.into_inner()).state {
            RestState::Unknown => "unknown".into(),
            RestState::Up => "up".into(),
            RestState::Down(e) => format!("down: {e}"),
        }
    }

    /// One sessions refresh.
    async fn refresh_once(&self) -> Result<(), RestError> {
        let Some(ep) = &self.endpoint else {
            return Ok(());
        };
        let r = ep
            .request(
                "GET",
                "/openvidu/api/sessions",
                None,
                openvidu::MAX_SESSIONS_BODY,
            )
            .await?;
        match r.status {
            200 => {}
            401 | 403 => return Err(RestError::Unauthorized(r.status)),
            s => return Err(RestError::Status(s)),
        }
        let dir = openvidu::parse_sessions(&r.body)?;
        if dir.skipped > 0 {
            debug!(
                skipped = dir.skipped,
                "OpenVidu sessions: malformed entries skipped"
            );
            self.metrics.openvidu_request("sessions", "entries_skipped");
        }
        *self.directory.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(dir);
        Ok(())
    }

    /// Refreshes the sessions while the daemon runs (every `refresh`, backing off while down;
    /// sooner when discovery asks). The directory is kept through failures: taps keep their
    /// names, and new ones go on under connection ids.
    pub async fn run_refresh(self: Arc<Self>) {
        if self.endpoint.is_none() {
            return;
        }
        loop {
            let wait = {
                let s = self.status.lock().unwrap_or_else(|e| e.into_inner());
                s.next_at()
                    .map(|n| n.saturating_duration_since(Instant::now()))
                    .unwrap_or_default()
            };
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = self.hurry.notified() => {}
            }
            if !self
                .status
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .due(Instant::now())
            {
                continue;
            }
            let outcome = self.refresh_once().await;
            self.metrics.openvidu_request(
                "sessions",
                outcome.as_ref().map(|_| "ok").unwrap_or_else(|e| e.label()),
            );
            self.metrics.openvidu_up.set(i64::from(outcome.is_ok()));
            let changed = self
                .status
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .record(outcome, Instant::now());
            match changed {
                Some(RestState::Up) => {
                    info!("OpenVidu REST API answers: sessions name rooms and participants")
                }
                Some(RestState::Down(e)) => {
                    warn!(error = %e, "OpenVidu REST API unusable: taps go on under connection ids, signals are dropped")
                }
                _ => {}
            }
        }
    }

    /// Whether results go out as signals (the REST API is configured and signals are on).
    pub fn signals_on(&self) -> bool {
        self.endpoint.is_some() && self.settings.signals
    }

    /// Sends one signal; the outcome's metric label.
    pub async fn signal(&self, session: &str, to: Option<&[String]>, data: &str) -> &'static str {
        let Some(ep) = &self.endpoint else {
            return "not_configured";
        };
        let body = openvidu::signal_body(session, to, &self.settings.signal_type, data);
        match ep
            .request(
                "POST",
                "/openvidu/api/signal",
                Some(&body),
                MAX_SIGNAL_ANSWER,
            )
            .await
        {
            Ok(r) => openvidu::signal_outcome(r.status),
            Err(e) => e.label(),
        }
    }

    /// Sends one result as a signal to its participant (or their room); the outcome's metric label.
    pub async fn signal_result(&self, r: &ResultMessage) -> &'static str {
        // The participant is the connection id; its session from OpenVidu (the room is the
        // session id only when OpenVidu was reachable when the tap began).
        let Some(session) = self.session_of(&r.participant) else {
            return "no_session";
        };
        let Some(data) = DataChannelMessage::from_result(r).encode(self.settings.signal_max_bytes)
        else {
            return "oversize";
        };
        let to = openvidu::signal_to(self.settings.signal_audience, &r.participant);
        self.signal(&session, to.as_deref(), &data).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;

    /// A one-shot fake openvidu-server: answers each connection with `answer(request)` after
    /// `delay`, and hands the requests it saw to the test.
    async fn fake(
        answer: fn(&str) -> String,
        delay: Duration,
    ) -> (String, tokio::sync::mpsc::UnboundedReceiver<String>) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", l.local_addr().unwrap());
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                let tx = tx.clone();
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 65536];
                    let mut got = Vec::new();
                    // Headers, then the body by Content-Length.
                    loop {
                        let n = s.read(&mut buf).await.unwrap_or(0);
                        if n == 0 {
                            break;
                        }
                        got.extend_from_slice(&buf[..n]);
                        let text = String::from_utf8_lossy(&got).to_string();
                        if let Some(end) = text.find("\r\n\r\n") {
                            let len = text
                                .lines()
                                .find_map(|l| l.strip_prefix("Content-Length: "))
                                .and_then(|v| v.trim().parse::<usize>().ok())
                                .unwrap_or(0);
                            if got.len() >= end + 4 + len {
                                break;
                            }
                        }
                    }
                    let req = String::from_utf8_lossy(&got).to_string();
                    let _ = tx.send(req.clone());
                    tokio::time::sleep(delay).await;
                    let _ = s.write_all(answer(&req).as_bytes()).await;
                });
            }
        });
        (url, rx)
    }

    fn settings(url: &str, secret: &str) -> OpenViduSettings {
        OpenViduSettings {
            url: Some(url.to_owned()),
            secret: Some(OpenViduSecret::new(secret).unwrap()),
            timeout: Duration::from_millis(300),
            ..Default::default()
        }
    }

    const EXPECTED_AUTH: &str = "Authorization: Basic T1BFTlZJRFVBUFA6czNjcjN0"; // OPENVIDUAPP:s3cr3t

    fn openvidu_like(req: &str) -> String {
        if !req.contains(EXPECTED_AUTH) {
            return "HTTP/1.1 401 Unauthorized\r\nContent-Length: 0\r\n\r\n".into();
        }
        if req.starts_with("GET /openvidu/api/sessions ") {
            let body = r#"{"numberOfElements":1,"content":[{"id":"ses_Standup","connections":{"numberOfElements":1,"content":[{"id":"con_Ab12CdEf34","clientData":"{\"clientData\":\"Alice\"}","publishers":[{"streamId":"str_CAM_Xk9q_con_Ab12CdEf34","mediaOptions":{"typeOfVideo":"CAMERA"}}]}]}}]}"#;
            // Chunked, as Spring may answer.
            return format!(
                "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n{body}\r\n0\r\n\r\n",
                body.len()
            );
        }
        if req.starts_with("POST /openvidu/api/signal ") {
            return "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n".into();
        }
        "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n".into()
    }

    #[tokio::test]
    async fn sessions_name_streams_and_signals_carry_basic_auth() {
        let (url, mut seen) = fake(openvidu_like, Duration::ZERO).await;
        let ov = OpenVidu::new(settings(&url, "s3cr3t"), Arc::new(Metrics::new())).unwrap();
        assert_eq!(ov.refresh_once().await, Ok(()));
        let s = ov.stream("str_CAM_Xk9q_con_Ab12CdEf34").unwrap();
        assert_eq!(
            (s.session.as_str(), s.display.as_deref()),
            ("ses_Standup", Some("Alice"))
        );
        assert_eq!(
            ov.session_of("con_Ab12CdEf34").as_deref(),
            Some("ses_Standup")
        );
        assert!(seen.recv().await.unwrap().contains(EXPECTED_AUTH));
        let to = vec!["con_Ab12CdEf34".to_owned()];
        assert_eq!(
            ov.signal("ses_Standup", Some(&to), "{\"x\":1}").await,
            "sent"
        );
        let req = seen.recv().await.unwrap();
        let body = &req[req.find("\r\n\r\n").unwrap() + 4..];
        let v: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(v["session"], "ses_Standup");
        assert_eq!(v["to"][0], "con_Ab12CdEf34");
        assert_eq!(v["type"], "kurento-tap");
        assert_eq!(v["data"], "{\"x\":1}");
    }

    #[tokio::test]
    async fn a_wrong_secret_garbage_a_500_and_a_slow_server_are_clear_errors() {
        let (url, _seen) = fake(openvidu_like, Duration::ZERO).await;
        let ov = OpenVidu::new(settings(&url, "wrong"), Arc::new(Metrics::new())).unwrap();
        assert_eq!(ov.refresh_once().await, Err(RestError::Unauthorized(401)));
        assert_eq!(ov.signal("s", None, "d").await, "unauthorized");
        let (url, _s) = fake(
            |_| "HTTP/1.1 500 Oops\r\nContent-Length: 0\r\n\r\n".into(),
            Duration::ZERO,
        )
        .await;
        let ov = OpenVidu::new(settings(&url, "s3cr3t"), Arc::new(Metrics::new())).unwrap();
        assert_eq!(ov.refresh_once().await, Err(RestError::Status(500)));
        let (url, _s) = fake(|_| "\u{0}\u{1}garbage".into(), Duration::ZERO).await;
        let ov = OpenVidu::new(settings(&url, "s3cr3t"), Arc::new(Metrics::new())).unwrap();
        assert!(matches!(
            ov.refresh_once().await,
            Err(RestError::BadAnswer(_))
        ));
        let (url, _s) = fake(
            |_| "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n<html".into(),
            Duration::ZERO,
        )
        .await;
        let ov = OpenVidu::new(settings(&url, "s3cr3t"), Arc::new(Metrics::new())).unwrap();
        assert!(matches!(
            ov.refresh_once().await,
            Err(RestError::BadAnswer(_))
        ));
        let (url, _s) = fake(openvidu_like, Duration::from_secs(5)).await;
        let ov = OpenVidu::new(settings(&url, "s3cr3t"), Arc::new(Metrics::new())).unwrap();
        let t = Instant::now();
        assert!(matches!(
            ov.refresh_once().await,
            Err(RestError::Timeout(_))
        ));
        assert!(
            t.elapsed() < Duration::from_secs(2),
            "bounded by the timeout"
        );
        // Nobody listening.
        let port = TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let ov = OpenVidu::new(
            settings(&format!("http://127.0.0.1:{port}"), "s3cr3t"),
            Arc::new(Metrics::new()),
        )
        .unwrap();
        assert!(matches!(
            ov.refresh_once().await,
            Err(RestError::Unreachable(_))
        ));
        assert!(ov.stream("str_CAM_Xk9q_con_Ab12CdEf34").is_none());
    }

    #[test]
    fn the_secret_never_shows() {
        let s = OpenVidu::new(
            settings("http://127.0.0.1:5443", "VERY-SECRET"),
            Arc::new(Metrics::new()),
        )
        .unwrap();
        assert!(!format!("{s:?}{:?}", s.settings()).contains("VERY-SECRET"));
        assert!(OpenViduSecret::new(" \n").is_err());
        assert!(OpenVidu::new(
            OpenViduSettings {
                url: Some("http://x:1".into()),
                ..Default::default()
            },
            Arc::new(Metrics::new())
        )
        .is_err());
    }
}
