//! OpenVidu's REST API, pure: the sessions answer, signal bodies and audiences, the REST status.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use serde::Deserialize;

use super::graph::{parse_stream_id, valid_connection_id};

// ---------------------------------------------------------------------------------------------
// REST: GET /openvidu/api/sessions

/// Why an OpenVidu REST answer is unusable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RestError {
    /// Not reachable (connection refused, DNS, reset).
    #[error("unreachable: {0}")]
    Unreachable(String),
    /// No answer in time.
    #[error("timed out after {0:?}")]
    Timeout(Duration),
    /// 401/403: the secret is wrong.
    #[error("refused the credentials (HTTP {0}): check the OpenVidu secret")]
    Unauthorized(u16),
    /// Another HTTP status.
    #[error("answered HTTP {0}")]
    Status(u16),
    /// Not HTTP, or a body that does not parse.
    #[error("bad answer: {0}")]
    BadAnswer(String),
}

impl RestError {
    /// The metric label.
    pub fn label(&self) -> &'static str {
        match self {
            RestError::Unreachable(_) => "unreachable",
            RestError::Timeout(_) => "timeout",
            RestError::Unauthorized(_) => "unauthorized",
            RestError::Status(_) => "http_error",
            RestError::BadAnswer(_) => "bad_answer",
        }
    }
}

/// A published stream as OpenVidu's REST API lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamInfo {
    /// The session (the room).
    pub session: String,
    /// The publishing connection.
    pub connection: String,
    /// A display name from the connection's `clientData` ([`display_name`]), if any.
    pub display: Option<String>,
    /// `typeOfVideo` (`CAMERA`, `SCREEN`, …) when it has video.
    pub type_of_video: Option<String>,
}

/// What OpenVidu's sessions say, by streamId.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Directory {
    /// streamId → its session and connection.
    pub streams: HashMap<String, StreamInfo>,
    /// Connection id → its session (every active connection, publishing or not).
    pub connections: HashMap<String, String>,
    /// Sessions listed.
    pub sessions: usize,
    /// Entries skipped as malformed (ids OpenVidu would not make, oversized fields).
    pub skipped: usize,
}

/// Largest `GET /sessions` body read.
pub const MAX_SESSIONS_BODY: usize = 8 << 20;
/// Most sessions, and connections per session, taken from one answer.
pub const MAX_ENTRIES: usize = 10_000;
/// Longest display name kept (characters).
pub const MAX_DISPLAY_CHARS: usize = 64;

#[derive(Deserialize)]
struct SessionsJson {
    content: Vec<serde_json::Value>,
}

/// A session id as OpenVidu accepts them (`customSessionId`: `[a-zA-Z0-9_-]`, or `ses_…`).
pub fn valid_session_id(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 100
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// A display name from `clientData`: OpenVidu's tutorials send `{"clientData": "<name>"}` as
/// the connection's metadata; anything else is used as it is. Control characters removed, at
/// most [`MAX_DISPLAY_CHARS`] characters; `None` when nothing is left.
pub fn display_name(client_data: &str) -> Option<String> {
    let inner = serde_json::from_str::<serde_json::Value>(client_data)
        .ok()
        .and_then(|v| {
            v.get("clientData")
                .and_then(|c| c.as_str())
                .map(str::to_owned)
        });
    let raw = inner.as_deref().unwrap_or(client_data);
    let clean: String = raw
        .chars()
        .filter(|c| !c.is_control())
        .take(MAX_DISPLAY_CHARS)
        .collect();
    let clean = clean.trim().to_owned();
    (!clean.is_empty()).then_some(clean)
}

/// Parses the body of `GET /openvidu/api/sessions` (`{numberOfElements, content: [session]}`,
/// each session `{id, connections: {content: [connection]}}`, each connection `{id, status,
/// clientData, publishers: [{streamId, mediaOptions: {typeOfVideo}}]}`). Malformed entries are
/// skipped and counted, never fatal; a body that is not that shape at all is an error.
pub fn parse_sessions(body: &[u8]) -> Result<Directory, RestError> {
    if body.len() > MAX_SESSIONS_BODY {
        return Err(RestError::BadAnswer(format!(
            "body of {} bytes (at most {MAX_SESSIONS_BODY})",
            body.len()
        )));
    }
    let parsed: SessionsJson = serde_json::from_slice(body)
        .map_err(|e| RestError::BadAnswer(format!("not a sessions list: {e}")))?;
    let mut dir = Directory::default();
    for session in parsed.content.iter().take(MAX_ENTRIES) {
        let Some(sid) = session.get("id").and_then(|v| v.as_str()) else {
            dir.skipped += 1;
            continue;
        };
        if !valid_session_id(sid) {
            dir.skipped += 1;
            continue;
        }
        dir.sessions += 1;
        let connections = session
            .get("connections")
            .and_then(|c| c.get("content"))
            .and_then(|c| c.as_array());
        for conn in connections.into_iter().flatten().take(MAX_ENTRIES) {
            let Some(cid) = conn.get("id").and_then(|v| v.as_str()) else {
                dir.skipped += 1;
                continue;
            };
            if !valid_connection_id(cid) {
                dir.skipped += 1;
                continue;
            }
            dir.connections.insert(cid.to_owned(), sid.to_owned());
            let display = conn
                .get("clientData")
                .and_then(|v| v.as_str())
                .filter(|s| s.len() <= 64 * 1024)
                .and_then(display_name);
            let publishers = conn.get("publishers").and_then(|p| p.as_array());
            for p in publishers.into_iter().flatten().take(16) {
                let Some(stream) = p.get("streamId").and_then(|v| v.as_str()) else {
                    dir.skipped += 1;
                    continue;
                };
                // The stream must be this connection's: a mismatch is not OpenVidu's.
                match parse_stream_id(stream) {
                    Some(s) if s.connection == cid => {
                        let type_of_video = p
                            .get("mediaOptions")
                            .and_then(|m| m.get("typeOfVideo"))
                            .and_then(|t| t.as_str())
                            .filter(|t| t.len() <= 16)
                            .map(str::to_owned);
                        dir.streams.insert(
                            stream.to_owned(),
                            StreamInfo {
                                session: sid.to_owned(),
                                connection: cid.to_owned(),
                                display: display.clone(),
                                type_of_video,
                            },
                        );
                    }
                    _ => dir.skipped += 1,
                }
            }
        }
    }
    Ok(dir)
}

// ---------------------------------------------------------------------------------------------
// REST: POST /openvidu/api/signal

/// The body of `POST /openvidu/api/signal`: `{session, to: [connectionIds], type, data}`
/// (`SessionRestController.signal`; `to` absent = everyone in the session). The browser gets it
/// with `session.on('signal:<type>', e => e.data)`.
pub fn signal_body(session: &str, to: Option<&[String]>, kind: &str, data: &str) -> String {
    let mut body = serde_json::json!({ "session": session, "type": kind, "data": data });
    if let Some(to) = to {
        body["to"] = serde_json::json!(to);
    }
    body.to_string()
}

/// What an answer to a signal means (OpenVidu: 200 sent; 400 bad body; 404 no such session;
/// 406 session without participants, or no valid connection in `to`).
pub fn signal_outcome(status: u16) -> &'static str {
    match status {
        200 => "sent",
        401 | 403 => "unauthorized",
        404 => "no_session",
        406 => "no_connection",
        400 => "rejected",
        _ => "http_error",
    }
}

// ---------------------------------------------------------------------------------------------
// The REST status

/// OpenVidu's REST API as last seen.
#[derive(Debug, Clone, PartialEq)]
pub enum RestState {
    /// Not asked yet.
    Unknown,
    /// The last refresh worked.
    Up,
    /// The last refresh failed this way (taps go on under connection ids).
    Down(RestError),
}

/// When to refresh the sessions and what the API's state is: refreshes every `interval` while
/// up, and with a doubling backoff (up to `max_backoff`) while down. A change of state is
/// reported once (for a log line), not every attempt.
#[derive(Debug, Clone)]
pub struct RestStatus {
    /// The state.
    pub state: RestState,
    interval: Duration,
    max_backoff: Duration,
    failures: u32,
    next: Option<Instant>,
}

impl RestStatus {
    /// A status refreshing every `interval` (backoff up to `max_backoff`).
    pub fn new(interval: Duration, max_backoff: Duration) -> Self {
        RestStatus {
            state: RestState::Unknown,
            interval,
            max_backoff: max_backoff.max(interval),
            failures: 0,
            next: None,
        }
    }

    /// Whether a refresh is due at `now`.
    pub fn due(&self, now: Instant) -> bool {
        self.next.is_none_or(|n| now >= n)
    }

    /// When the next refresh is due.
    pub fn next_at(&self) -> Option<Instant> {
        self.next
    }

    /// Asks for a refresh as soon as possible (a publisher not in the directory), unless the API
    /// is down (then the backoff stands).
    pub fn hurry(&mut self, now: Instant) {
        if !matches!(self.state, RestState::Down(_)) {
            self.next = Some(self.next.map_or(now, |n| n.min(now)));
        }
    }

    /// Records a refresh's outcome at `now`; `Some(new state)` when the state changed (in kind,
    /// or to another error).
    pub fn record(&mut self, outcome: Result<(), RestError>, now: Instant) -> Option<RestState> {
        let new = match outcome {
            Ok(()) => {
                self.failures = 0;
                self.next = Some(now + self.interval);
                RestState::Up
            }
            Err(e) => {
                self.failures = self.failures.saturating_add(1);
                let backoff = self
                    .interval
                    .saturating_mul(1u32 << self.failures.min(16))
                    .min(self.max_backoff);
                self.next = Some(now + backoff);
                RestState::Down(e)
            }
        };
        let changed = match (&self.state, &new) {
            (RestState::Up, RestState::Up) => false,
            (RestState::Down(a), RestState::Down(b)) => a.label() != b.label(),
            _ => true,
        };
        // The same kind of failure again keeps the first message (the log said it already).
        if changed {
            self.state = new.clone();
            Some(new)
        } else {
            None
        }
    }

    /// True when the last refresh worked.
    pub fn up(&self) -> bool {
        self.state == RestState::Up
    }

    /// Whether a stream the directory lacks may still be named soon: the API is up, or not asked
    /// yet (a daemon starting on a live session asks before its first pass ends). Only a
    /// failing API means waiting for names is pointless.
    pub fn names_may_come(&self) -> bool {
        !matches!(self.state, RestState::Down(_))
    }
}

// ---------------------------------------------------------------------------------------------
// Signals: who receives a result

/// Whose results a connection receives as signals.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SignalAudience {
    /// Each participant's results go to their own connection only (the default).
    #[default]
    Participant,
    /// Everyone's results go to everyone in the session (`to` omitted).
    Room,
}

impl std::str::FromStr for SignalAudience {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "participant" => Ok(SignalAudience::Participant),
            "room" => Ok(SignalAudience::Room),
            _ => Err(format!(
                "openvidu signal audience {s:?}: expected participant or room"
            )),
        }
    }
}

/// The `to` of a signal about `connection`: that connection alone, or everyone (`None`).
pub fn signal_to(audience: SignalAudience, connection: &str) -> Option<Vec<String>> {
    match audience {
        SignalAudience::Participant => Some(vec![connection.to_owned()]),
        SignalAudience::Room => None,
    }
}
