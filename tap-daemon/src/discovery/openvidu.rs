//! OpenVidu 2.x as the host application: the pure core (no KMS, no HTTP, no clock of its own).
//!
//! What OpenVidu 2 (openvidu-server, v2.32.x) builds in KMS, read in its source
//! (`docs/integration.md`, "OpenVidu 2"): one unnamed MediaPipeline per session; per publisher a
//! WebRtcEndpoint named after creation with its streamId, `str_<TYP>_<4 chars>_<connectionId>`,
//! and an unnamed PassThrough every subscriber, recorder and filter hangs from; subscribers'
//! WebRtcEndpoints are named `<subscriberConnectionId>_<streamId>`. Session ids and `clientData`
//! are not in KMS: they come from OpenVidu's REST API (`GET /openvidu/api/sessions`).
//!
//! This module recognises that graph from what discovery reads (ids, names, sink connections),
//! parses the REST answers, builds signal requests, parses HTTP/1.1 responses, and keeps the
//! REST status (with its backoff). `openvidu_rest.rs` is the adapter doing the I/O.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use serde::Deserialize;

/// The application the daemon sits beside.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Host {
    /// Any Kurento application: publishers by tags or by their browser's `sendonly` offer, tapped
    /// at their WebRtcEndpoint (the default).
    #[default]
    Kurento,
    /// OpenVidu 2.x: publishers by their streamId names, tapped at their PassThrough.
    OpenVidu,
}

impl std::str::FromStr for Host {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "kurento" => Ok(Host::Kurento),
            "openvidu" => Ok(Host::OpenVidu),
            _ => Err(format!("host {s:?}: expected kurento or openvidu")),
        }
    }
}

/// What a publisher sends, from the `<TYP>` of its streamId (the first three letters of
/// OpenVidu's `typeOfVideo`, or `MIC` for `MICRO`, audio only).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamKind {
    /// `CAM`: a camera (with or without audio).
    Camera,
    /// `SCR`: a screen share (not a face to analyse by default).
    Screen,
    /// `MIC`: audio only.
    Audio,
    /// `CUS`: a custom MediaStream (analysed like a camera).
    Custom,
    /// `IPC`: an IP camera (a PlayerEndpoint in OpenVidu; never a WebRtcEndpoint).
    IpCam,
}

impl StreamKind {
    fn from_code(code: &str) -> Option<Self> {
        Some(match code {
            "CAM" => StreamKind::Camera,
            "SCR" => StreamKind::Screen,
            "MIC" => StreamKind::Audio,
            "CUS" => StreamKind::Custom,
            "IPC" => StreamKind::IpCam,
            _ => return None,
        })
    }

    /// Its name in logs, metrics and the status.
    pub fn as_str(self) -> &'static str {
        match self {
            StreamKind::Camera => "camera",
            StreamKind::Screen => "screen",
            StreamKind::Audio => "audio",
            StreamKind::Custom => "custom",
            StreamKind::IpCam => "ipcam",
        }
    }
}

/// A parsed OpenVidu streamId.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamId {
    /// The whole id (the publisher endpoint's name).
    pub id: String,
    /// What it sends.
    pub kind: StreamKind,
    /// The publishing connection (`con_…`, or `ipc_…` for IP cameras): the participant.
    pub connection: String,
}

/// Longest name looked at (OpenVidu's are under 100 characters; a custom connection id is bounded
/// by the application).
pub const MAX_NAME_LEN: usize = 256;

/// What an endpoint's name says it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Named {
    /// A publisher's WebRtcEndpoint.
    Publisher(StreamId),
    /// A subscriber's WebRtcEndpoint (never tapped): who receives which stream.
    Subscriber {
        /// The receiving connection.
        connection: String,
        /// The stream received.
        stream: StreamId,
    },
    /// Still named with its id (OpenVidu names it right after `ObjectCreated`): look again later.
    NotNamedYet,
    /// A name OpenVidu does not make (another application's endpoint, or a malformed name).
    Unrecognised(&'static str),
}

/// A connection id as OpenVidu makes them: `con_` + one letter + 9 alphanumerics, or
/// `con_<custom>` with the custom part reduced to `[A-Za-z0-9_]` (`SessionManager`), or an IP
/// camera's `ipc_…`.
pub fn valid_connection_id(s: &str) -> bool {
    let rest = s.strip_prefix("con_").or_else(|| s.strip_prefix("ipc_"));
    match rest {
        Some(r) => {
            !r.is_empty()
                && s.len() <= MAX_NAME_LEN
                && r.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
        }
        None => false,
    }
}

/// Parses `str_<TYP>_<4 alphanumerics>_<connectionId>` (`KurentoParticipant.generateStreamId`).
pub fn parse_stream_id(s: &str) -> Option<StreamId> {
    if s.len() > MAX_NAME_LEN {
        return None;
    }
    let rest = s.strip_prefix("str_")?;
    let (code, rest) = rest.split_once('_')?;
    let kind = StreamKind::from_code(code)?;
    let (random, connection) = rest.split_once('_')?;
    if random.len() != 4 || !random.bytes().all(|b| b.is_ascii_alphanumeric()) {
        return None;
    }
    valid_connection_id(connection).then(|| StreamId {
        id: s.to_owned(),
        kind,
        connection: connection.to_owned(),
    })
}

/// What an endpoint is, from its id and its name as KMS reports them.
pub fn classify(id: &str, name: &str) -> Named {
    // KMS's default name is the object's id (`MediaObjectImpl::getName`).
    if name.is_empty() || name == id {
        return Named::NotNamedYet;
    }
    if name.len() > MAX_NAME_LEN {
        return Named::Unrecognised("name too long");
    }
    if name.starts_with("str_") {
        return match parse_stream_id(name) {
            Some(s) => Named::Publisher(s),
            None => Named::Unrecognised("malformed streamId"),
        };
    }
    // `<subscriberConnectionId>_<streamId>`: the first split where both halves are valid (custom
    // connection ids may themselves hold `_str_`).
    let mut from = 0;
    while let Some(at) = name[from..].find("_str_") {
        let split = from + at;
        let (conn, stream) = (&name[..split], &name[split + 1..]);
        if valid_connection_id(conn) {
            if let Some(stream) = parse_stream_id(stream) {
                return Named::Subscriber {
                    connection: conn.to_owned(),
                    stream,
                };
            }
        }
        from = split + 1;
    }
    Named::Unrecognised("not an OpenVidu endpoint name")
}

/// The class of a Kurento object from its id (`…/<uuid>_kurento.PassThrough` → `PassThrough`).
pub fn class_of(id: &str) -> &str {
    let last = id.rsplit('/').next().unwrap_or(id);
    let type_part = last.rsplit_once('_').map(|(_, t)| t).unwrap_or("");
    type_part.rsplit('.').next().unwrap_or("")
}

/// Elements that may sit between a publisher and its PassThrough: OpenVidu's filters
/// (`GenericMediaElement` of any module: `FaceOverlayFilter`, `GStreamerFilter`, `ZBarFilter`…).
/// Endpoints, hubs, pipelines and PassThroughs are not.
fn is_intermediate(id: &str) -> bool {
    let class = class_of(id);
    !class.is_empty()
        && class != "PassThrough"
        && !class.ends_with("Endpoint")
        && !class.contains("Hub")
        && class != "MediaPipeline"
}

/// How many filters deep the PassThrough is looked for (OpenVidu applies one at a time).
pub const MAX_FILTER_DEPTH: usize = 4;

/// Where a publisher's PassThrough search stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PassThroughSearch {
    /// The PassThrough, and the filters between the publisher and it, publisher side first.
    Found {
        /// The PassThrough's id: the tap source.
        passthrough: String,
        /// Filters in between.
        filters: Vec<String>,
    },
    /// The sink connections of this element are needed to go on.
    Need(String),
    /// The publisher does not feed a PassThrough (muted by the server, being reconnected, not yet
    /// published): look again later.
    NotConnected,
}

/// Follows a publisher's sink connections (`sinks`: element id → the ids it feeds, as read so
/// far) to its PassThrough, through at most [`MAX_FILTER_DEPTH`] filters.
pub fn find_passthrough(
    publisher: &str,
    sinks: &HashMap<String, Vec<String>>,
) -> PassThroughSearch {
    let mut at = publisher.to_owned();
    let mut filters = Vec::new();
    loop {
        let Some(out) = sinks.get(&at) else {
            return PassThroughSearch::Need(at);
        };
        if let Some(pt) = out.iter().find(|s| class_of(s) == "PassThrough") {
            return PassThroughSearch::Found {
                passthrough: pt.clone(),
                filters,
            };
        }
        let next = out
            .iter()
            .find(|s| is_intermediate(s) && *s != publisher && !filters.contains(*s));
        match next {
            Some(n) if filters.len() < MAX_FILTER_DEPTH => {
                filters.push(n.clone());
                at = n.clone();
            }
            _ => return PassThroughSearch::NotConnected,
        }
    }
}

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
// HTTP/1.1 responses

/// A parsed HTTP response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpResponse {
    /// Status code.
    pub status: u16,
    /// Body (chunked transfer decoded).
    pub body: Vec<u8>,
}

/// Parses a whole HTTP/1.1 response as read until the server closed the connection (requests
/// are sent with `Connection: close`): status line, headers, and a body by `Content-Length`,
/// chunked transfer, or up to the end. Anything else is [`RestError::BadAnswer`].
pub fn parse_http_response(raw: &[u8], max_body: usize) -> Result<HttpResponse, RestError> {
    let bad = |m: &str| RestError::BadAnswer(m.to_owned());
    let head_end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| bad("no end of headers"))?;
    if head_end > 64 * 1024 {
        return Err(bad("headers too long"));
    }
    let head = std::str::from_utf8(&raw[..head_end]).map_err(|_| bad("headers not text"))?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let mut parts = status_line.splitn(3, ' ');
    let version = parts.next().unwrap_or_default();
    if !version.starts_with("HTTP/1.") {
        return Err(bad("not an HTTP/1.x answer"));
    }
    let status: u16 = parts
        .next()
        .and_then(|s| s.parse().ok())
        .filter(|s| (100..600).contains(s))
        .ok_or_else(|| bad("bad status line"))?;
    let mut length: Option<usize> = None;
    let mut chunked = false;
    for line in lines {
        let Some((k, v)) = line.split_once(':') else {
            return Err(bad("bad header line"));
        };
        let (k, v) = (k.trim(), v.trim());
        if k.eq_ignore_ascii_case("content-length") {
            length = Some(v.parse().map_err(|_| bad("bad Content-Length"))?);
        } else if k.eq_ignore_ascii_case("transfer-encoding") {
            chunked = v.to_ascii_lowercase().contains("chunked");
        }
    }
    let rest = &raw[head_end + 4..];
    let body = if chunked {
        decode_chunked(rest, max_body)?
    } else if let Some(n) = length {
        if n > max_body {
            return Err(bad("body too large"));
        }
        if rest.len() < n {
            return Err(bad("body shorter than Content-Length"));
        }
        rest[..n].to_vec()
    } else {
        if rest.len() > max_body {
            return Err(bad("body too large"));
        }
        rest.to_vec()
    };
    Ok(HttpResponse { status, body })
}

fn decode_chunked(mut rest: &[u8], max_body: usize) -> Result<Vec<u8>, RestError> {
    let bad = |m: &str| RestError::BadAnswer(m.to_owned());
    let mut out = Vec::new();
    loop {
        let line_end = rest
            .windows(2)
            .position(|w| w == b"\r\n")
            .ok_or_else(|| bad("truncated chunk size"))?;
        let size_text =
            std::str::from_utf8(&rest[..line_end]).map_err(|_| bad("bad chunk size"))?;
        let size_text = size_text.split(';').next().unwrap_or_default().trim();
        let size = usize::from_str_radix(size_text, 16).map_err(|_| bad("bad chunk size"))?;
        rest = &rest[line_end + 2..];
        if size == 0 {
            return Ok(out);
        }
        if out.len().saturating_add(size) > max_body {
            return Err(bad("body too large"));
        }
        if rest.len() < size + 2 {
            return Err(bad("truncated chunk"));
        }
        out.extend_from_slice(&rest[..size]);
        rest = &rest[size + 2..];
    }
}

/// `http://host:port[/prefix]` → (host, port, prefix without a trailing `/`). Only plain HTTP:
/// the daemon runs beside openvidu-server (port 5443 on its host in OpenVidu's deployment).
pub fn parse_base_url(url: &str) -> Result<(String, u16, String), String> {
    let rest = url.strip_prefix("http://").ok_or_else(|| {
        format!("openvidu_url {url:?}: expected http://host:port (openvidu-server's own port, 5443 in OpenVidu's deployment; https is not supported)")
    })?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], rest[i..].trim_end_matches('/')),
        None => (rest, ""),
    };
    if authority.contains('@') {
        return Err("openvidu_url must not carry credentials: use the secret file".into());
    }
    let (host, port) = match authority.rsplit_once(':') {
        Some((h, p)) => (
            h,
            p.parse::<u16>()
                .map_err(|_| format!("openvidu_url {url:?}: bad port"))?,
        ),
        None => (authority, 80),
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty()
        || !host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-.:".contains(&b))
    {
        return Err(format!("openvidu_url {url:?}: bad host"));
    }
    if !path
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"-._~/".contains(&b))
    {
        return Err(format!("openvidu_url {url:?}: bad path"));
    }
    Ok((host.to_owned(), port, path.to_owned()))
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

#[cfg(test)]
mod tests {
    use super::*;

    const PUB: &str = "0b9e_kurento.MediaPipeline/77a1_kurento.WebRtcEndpoint";

    #[test]
    fn publisher_names_as_generate_stream_id_makes_them() {
        // KurentoParticipant.generateStreamId: "str_" + type[0..3] + "_" + 1 upper letter +
        // 3 alphanumerics + "_" + connectionId ("con_" + 1 upper letter + 9 alphanumerics).
        let n = classify(PUB, "str_CAM_Xk9q_con_Ab12CdEf34");
        assert_eq!(
            n,
            Named::Publisher(StreamId {
                id: "str_CAM_Xk9q_con_Ab12CdEf34".into(),
                kind: StreamKind::Camera,
                connection: "con_Ab12CdEf34".into(),
            })
        );
        let kinds = [
            ("str_SCR_Qw3e_con_Zz00000000", StreamKind::Screen),
            ("str_MIC_Rt5y_con_Zz00000000", StreamKind::Audio),
            ("str_CUS_Ui7o_con_Zz00000000", StreamKind::Custom),
            ("str_IPC_Pa1s_ipc_IPCAM_rtsp_192_168_1_2", StreamKind::IpCam),
        ];
        for (name, kind) in kinds {
            match classify(PUB, name) {
                Named::Publisher(s) => assert_eq!(s.kind, kind, "{name}"),
                other => panic!("{name}: {other:?}"),
            }
        }
        // A custom connection id (openviduCustomConnectionId: [A-Za-z0-9_] after "con_").
        match classify(PUB, "str_CAM_Ab1c_con_my_custom_id") {
            Named::Publisher(s) => assert_eq!(s.connection, "con_my_custom_id"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn subscriber_names_are_the_receiver_then_the_stream() {
        // KurentoParticipant.calculateSubscriberEndpointName.
        let n = classify(PUB, "con_Rcv0000001_str_CAM_Xk9q_con_Ab12CdEf34");
        assert_eq!(
            n,
            Named::Subscriber {
                connection: "con_Rcv0000001".into(),
                stream: parse_stream_id("str_CAM_Xk9q_con_Ab12CdEf34").unwrap(),
            }
        );
        // A custom receiver id holding "_str_" is still split where both halves are valid.
        match classify(PUB, "con_a_str_b_str_SCR_Zz9z_con_X000000000") {
            Named::Subscriber { connection, stream } => {
                assert_eq!(connection, "con_a_str_b");
                assert_eq!(stream.kind, StreamKind::Screen);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_name_equal_to_the_id_is_not_yet_known_and_others_are_not_openvidu() {
        assert_eq!(classify(PUB, PUB), Named::NotNamedYet);
        assert_eq!(classify(PUB, ""), Named::NotNamedYet);
        for bad in [
            "alice",
            "str_",
            "str_CAM",
            "str_CAM_Xk9q",
            "str_CAM_Xk9_con_Ab12CdEf34",   // 3 random chars
            "str_CAM_Xk9q!_con_Ab12CdEf34", // 5, one not alphanumeric
            "str_VID_Xk9q_con_Ab12CdEf34",  // unknown type
            "str_CAM_Xk9q_usr_Ab12CdEf34",  // not a connection id
            "str_CAM_Xk9q_con_",            // empty connection id
            "str_CAM_Xk9q_con_a.b",         // non-word character
            "str_CAM_Xk9q_con_a b",
            "con_A_str_CAM_Xk9q",
            "con_A_",
            "_str_CAM_Xk9q_con_Ab12CdEf34",
            "str_CAM_Xk9q_con_Ab12CdEf34\n",
            "str_CAM_Xk9q_con_Ab12CdEf34\u{0}",
        ] {
            assert!(
                matches!(classify(PUB, bad), Named::Unrecognised(_)),
                "{bad:?}: {:?}",
                classify(PUB, bad)
            );
        }
        let long = format!("str_CAM_Xk9q_con_{}", "a".repeat(300));
        assert_eq!(classify(PUB, &long), Named::Unrecognised("name too long"));
    }

    fn sinks(pairs: &[(&str, &[&str])]) -> HashMap<String, Vec<String>> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.iter().map(|s| s.to_string()).collect()))
            .collect()
    }

    #[test]
    fn the_passthrough_is_found_directly_or_behind_filters() {
        let pt = "p/2_kurento.PassThrough";
        let filter = "p/3_kurento.FaceOverlayFilter";
        let gst = "p/4_kurento.GStreamerFilter";
        // PublisherEndpoint.innerConnect: webrtc -> passThru (one entry per media type).
        let s = sinks(&[(PUB, &[pt, pt, pt])]);
        assert_eq!(
            find_passthrough(PUB, &s),
            PassThroughSearch::Found {
                passthrough: pt.into(),
                filters: vec![]
            }
        );
        // apply(filter): webrtc -> filter -> passThru; the filter's sinks are needed first.
        let s = sinks(&[(PUB, &[filter])]);
        assert_eq!(
            find_passthrough(PUB, &s),
            PassThroughSearch::Need(filter.into())
        );
        let s = sinks(&[(PUB, &[filter]), (filter, &[gst]), (gst, &[pt])]);
        assert_eq!(
            find_passthrough(PUB, &s),
            PassThroughSearch::Found {
                passthrough: pt.into(),
                filters: vec![filter.into(), gst.into()]
            }
        );
        // Muted (disconnected from its PassThrough), or feeding only endpoints: not connected.
        assert_eq!(
            find_passthrough(PUB, &sinks(&[(PUB, &[])])),
            PassThroughSearch::NotConnected
        );
        let sub = "p/9_kurento.WebRtcEndpoint";
        let rec = "p/8_kurento.RecorderEndpoint";
        assert_eq!(
            find_passthrough(PUB, &sinks(&[(PUB, &[sub, rec])])),
            PassThroughSearch::NotConnected
        );
        // A filter loop ends.
        let s = sinks(&[(PUB, &[filter]), (filter, &[gst]), (gst, &[filter])]);
        assert_eq!(find_passthrough(PUB, &s), PassThroughSearch::NotConnected);
        // Too deep.
        let fs: Vec<String> = (0..6)
            .map(|i| format!("p/f{i}_kurento.GStreamerFilter"))
            .collect();
        let mut m = HashMap::new();
        m.insert(PUB.to_owned(), vec![fs[0].clone()]);
        for w in fs.windows(2) {
            m.insert(w[0].clone(), vec![w[1].clone()]);
        }
        m.insert(fs[5].clone(), vec![pt.to_owned()]);
        assert_eq!(find_passthrough(PUB, &m), PassThroughSearch::NotConnected);
    }

    #[test]
    fn classes_from_ids() {
        assert_eq!(
            class_of("a_kurento.MediaPipeline/b_kurento.PassThrough"),
            "PassThrough"
        );
        assert_eq!(class_of("a/b_chroma.ChromaFilter"), "ChromaFilter");
        assert_eq!(class_of("garbage"), "");
    }

    const SESSIONS: &str = r#"{"numberOfElements":2,"content":[
      {"id":"ses_Standup","object":"session","sessionId":"ses_Standup","createdAt":1,"recording":false,
       "connections":{"numberOfElements":3,"content":[
         {"id":"con_Ab12CdEf34","object":"connection","status":"active","sessionId":"ses_Standup",
          "clientData":"{\"clientData\":\"Alice\"}","serverData":"{\"role\":\"host\"}",
          "publishers":[{"createdAt":5,"streamId":"str_CAM_Xk9q_con_Ab12CdEf34",
             "mediaOptions":{"hasAudio":true,"audioActive":true,"hasVideo":true,"videoActive":true,"typeOfVideo":"CAMERA","frameRate":30,"videoDimensions":"{}","filter":{}}}],
          "subscribers":[]},
         {"id":"con_Bob0000000","status":"active","clientData":"Bob \u0007 Builder",
          "publishers":[{"streamId":"str_SCR_Zz9z_con_Bob0000000","mediaOptions":{"hasVideo":true,"typeOfVideo":"SCREEN"}},
                        {"streamId":"str_CAM_Zz9z_con_SOMEONE_ELSE"}]},
         {"id":"tok_not_a_connection","publishers":[]},
         {"id":"con_Pending000","status":"pending","clientData":null,"publishers":null}
       ]}},
      {"id":"bad session id!","connections":{"content":[]}},
      {"no":"id"}
    ]}"#;

    #[test]
    fn sessions_give_rooms_and_display_names_by_stream() {
        let d = parse_sessions(SESSIONS.as_bytes()).unwrap();
        assert_eq!(d.sessions, 1);
        let alice = &d.streams["str_CAM_Xk9q_con_Ab12CdEf34"];
        assert_eq!(alice.session, "ses_Standup");
        assert_eq!(alice.connection, "con_Ab12CdEf34");
        assert_eq!(alice.display.as_deref(), Some("Alice"));
        assert_eq!(alice.type_of_video.as_deref(), Some("CAMERA"));
        let bob = &d.streams["str_SCR_Zz9z_con_Bob0000000"];
        assert_eq!(bob.display.as_deref(), Some("Bob  Builder"));
        // Another connection's stream under Bob, a token id, two bad sessions: skipped.
        assert!(!d.streams.contains_key("str_CAM_Zz9z_con_SOMEONE_ELSE"));
        assert_eq!(d.skipped, 4);
        assert_eq!(d.connections.len(), 3);
        assert_eq!(d.connections["con_Pending000"], "ses_Standup");
    }

    #[test]
    fn bad_sessions_answers_are_errors_not_panics() {
        for bad in [
            &b""[..],
            b"null",
            b"[]",
            b"{\"content\":7}",
            b"<html>500</html>",
            b"\xff\xfe",
        ] {
            assert!(
                matches!(parse_sessions(bad), Err(RestError::BadAnswer(_))),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        // Entries of the wrong type are skipped.
        let d = parse_sessions(br#"{"content":[7,"x",{"id":5},{"id":"s","connections":{"content":[null,{"id":"con_X","publishers":[3,{"streamId":9}]}]}}]}"#).unwrap();
        assert_eq!((d.sessions, d.streams.len(), d.skipped), (1, 0, 6));
    }

    #[test]
    fn display_names_are_cleaned_and_bounded() {
        assert_eq!(
            display_name("{\"clientData\":\"Ana\"}").as_deref(),
            Some("Ana")
        );
        assert_eq!(display_name("plain").as_deref(), Some("plain"));
        assert_eq!(
            display_name("{\"other\":1}").as_deref(),
            Some("{\"other\":1}")
        );
        assert_eq!(display_name("  \n\t "), None);
        assert_eq!(
            display_name(&"é".repeat(200)).unwrap().chars().count(),
            MAX_DISPLAY_CHARS
        );
    }

    #[test]
    fn signal_bodies_follow_the_rest_api() {
        let to = vec!["con_Ab12CdEf34".to_owned()];
        let b: serde_json::Value =
            serde_json::from_str(&signal_body("ses_S", Some(&to), "kurento-tap", "{\"a\":1}"))
                .unwrap();
        assert_eq!(b["session"], "ses_S");
        assert_eq!(b["to"][0], "con_Ab12CdEf34");
        assert_eq!(b["type"], "kurento-tap");
        assert_eq!(
            b["data"], "{\"a\":1}",
            "data is a string, as OpenVidu requires"
        );
        let b: serde_json::Value = serde_json::from_str(&signal_body("s", None, "t", "d")).unwrap();
        assert!(b.get("to").is_none(), "no `to`: everyone in the session");
        assert_eq!(
            signal_to(SignalAudience::Participant, "con_A"),
            Some(vec!["con_A".into()])
        );
        assert_eq!(signal_to(SignalAudience::Room, "con_A"), None);
        assert_eq!(
            [200, 400, 401, 404, 406, 500].map(signal_outcome),
            [
                "sent",
                "rejected",
                "unauthorized",
                "no_session",
                "no_connection",
                "http_error"
            ]
        );
    }

    #[test]
    fn http_responses_by_length_chunks_or_close() {
        let r =
            parse_http_response(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhixx", 100).unwrap();
        assert_eq!((r.status, r.body.as_slice()), (200, &b"hi"[..]));
        let r = parse_http_response(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3;x=y\r\nabc\r\n2\r\nde\r\n0\r\n\r\n",
            100,
        )
        .unwrap();
        assert_eq!(r.body, b"abcde");
        let r = parse_http_response(b"HTTP/1.0 401 Unauthorized\r\nX: y\r\n\r\nno", 100).unwrap();
        assert_eq!((r.status, r.body.as_slice()), (401, &b"no"[..]));
        for bad in [
            &b""[..],
            b"garbage",
            b"SSH-2.0-OpenSSH\r\n\r\n",
            b"HTTP/1.1 abc OK\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\nshort",
            b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nab",
            b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nbroken header\r\n\r\n",
        ] {
            assert!(
                parse_http_response(bad, 100).is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        // Over the cap, whichever way the body comes.
        let big = format!("HTTP/1.1 200 OK\r\n\r\n{}", "x".repeat(200));
        assert!(parse_http_response(big.as_bytes(), 100).is_err());
        let chunks = format!(
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n{}",
            "40\r\n".to_owned() + &"y".repeat(64) + "\r\n"
        )
        .repeat(1)
            + "40\r\n"
            + &"y".repeat(64)
            + "\r\n0\r\n\r\n";
        assert!(parse_http_response(chunks.as_bytes(), 100).is_err());
    }

    #[test]
    fn base_urls() {
        assert_eq!(
            parse_base_url("http://127.0.0.1:5443").unwrap(),
            ("127.0.0.1".into(), 5443, "".into())
        );
        assert_eq!(
            parse_base_url("http://openvidu.local/prefix/").unwrap(),
            ("openvidu.local".into(), 80, "/prefix".into())
        );
        for bad in [
            "https://x:443",
            "ftp://x",
            "http://OPENVIDUAPP:secret@x:5443",
            "http://x:99999",
            "http://",
            "http://x y:1",
            "http://x:1/a?b",
        ] {
            assert!(parse_base_url(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_status_backs_off_while_down_and_reports_changes_once() {
        let t0 = Instant::now();
        let mut s = RestStatus::new(Duration::from_secs(5), Duration::from_secs(60));
        assert!(s.due(t0));
        assert_eq!(s.record(Ok(()), t0), Some(RestState::Up));
        assert!(!s.due(t0 + Duration::from_secs(4)) && s.due(t0 + Duration::from_secs(5)));
        assert_eq!(s.record(Ok(()), t0), None, "still up: nothing to report");
        let e = || Err(RestError::Unreachable("refused".into()));
        assert!(matches!(s.record(e(), t0), Some(RestState::Down(_))));
        assert_eq!(s.next_at(), Some(t0 + Duration::from_secs(10)));
        assert_eq!(s.record(e(), t0), None, "the same failure is reported once");
        assert_eq!(s.next_at(), Some(t0 + Duration::from_secs(20)));
        for _ in 0..10 {
            s.record(e(), t0);
        }
        assert_eq!(s.next_at(), Some(t0 + Duration::from_secs(60)), "capped");
        // Down: a hurry does not shorten the backoff.
        s.hurry(t0);
        assert!(!s.due(t0));
        // Another failure kind is reported.
        assert!(matches!(
            s.record(Err(RestError::Unauthorized(401)), t0),
            Some(RestState::Down(RestError::Unauthorized(401)))
        ));
        assert!(!s.up());
        assert_eq!(s.record(Ok(()), t0), Some(RestState::Up));
        assert!(s.up());
        // Up: a hurry brings the next refresh forward.
        s.hurry(t0 + Duration::from_secs(1));
        assert!(s.due(t0 + Duration::from_secs(1)));
    }
}
