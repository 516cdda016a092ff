//! The simulated media server's object model and JSON-RPC semantics, after KMS's `ServerMethods.cpp`
//! and `MediaSet.cpp`: sessions, the per-(session, id) answer cache, object ids, refs, events,
//! transactions, the ServerManager, and the error codes and messages KMS sends.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{json, Map, Value};
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use crate::kmd::Kmd;
use crate::media::{AudioSource, Payload, RtpSender, SendTarget, VideoSpec};
use crate::sdp::{self, Format, OfferedMedia};

mod openvidu;
mod webrtc;

pub use openvidu::OpenViduParticipant;

const REQUEST_CACHE_TTL: Duration = Duration::from_secs(20);
/// The id KMS gives its server manager.
pub const SERVER_MANAGER: &str = "manager_ServerManager";

/// A JSON-RPC error as KMS builds it.
#[derive(Debug, Clone)]
pub struct RpcError {
    code: i64,
    message: String,
    kind: Option<&'static str>,
}

impl RpcError {
    fn new(code: i64, kind: &'static str, message: impl Into<String>) -> Self {
        RpcError {
            code,
            message: message.into(),
            kind: Some(kind),
        }
    }
    fn not_found(id: &str) -> Self {
        Self::new(
            40101,
            "MEDIA_OBJECT_NOT_FOUND",
            format!("Object '{id}' not found"),
        )
    }
    fn param(key: &str) -> Self {
        RpcError {
            code: -32000,
            message: format!("'{key}' parameter is required"),
            kind: None,
        }
    }
    fn to_json(&self, id: &Value) -> Value {
        let mut err = json!({"code": self.code, "message": self.message});
        if let Some(k) = self.kind {
            err["data"] = json!({ "type": k });
        }
        json!({"jsonrpc": "2.0", "id": id, "error": err})
    }
}

type RpcResult = Result<Map<String, Value>, RpcError>;

/// Media a simulated participant publishes.
#[derive(Debug, Clone)]
pub struct PublisherMedia {
    /// Participant name.
    pub name: String,
    /// Video codec and spec.
    pub video: Option<(String, VideoSpec)>,
    /// Audio source.
    pub audio: Option<AudioSource>,
}

enum Kind {
    Pipeline,
    ServerManager,
    WebRtc(WebRtc),
    Rtp(Box<Rtp>),
    Plain,
}

struct WebRtc {
    data_channels: bool,
    local_sdp: Option<String>,
    remote_sdp: Option<String>,
    publisher: Option<Arc<PublisherMedia>>,
    since: Instant,
    /// The real WebRTC peer behind a client's data-only negotiation (see `webrtc.rs`).
    peer: Option<webrtc::PeerState>,
    /// What a simulated participant's browser received on its DataChannel.
    inbox: webrtc::Inbox,
}

struct Rtp {
    local_sdp: Option<String>,
    remote_sdp: Option<String>,
    offer: Vec<OfferedMedia>,
    accepted: Vec<Option<(u16, Format)>>,
    ssrcs: Vec<u32>,
    senders: HashMap<&'static str, RtpSender>,
    /// SRTP (SDES), when created with `crypto`.
    crypto: Option<crate::srtp::EndpointCrypto>,
}

struct Obj {
    ty: String,
    parent: Option<String>,
    name: Option<String>,
    tags: Vec<(String, String)>,
    send_tags: bool,
    created: i64,
    kind: Kind,
}

#[derive(Clone, PartialEq)]
struct Link {
    source: String,
    sink: String,
    media: &'static str,
}

struct Session {
    conn: Option<mpsc::Sender<String>>,
    /// subscription id -> (object, event type)
    subs: HashMap<String, (String, String)>,
}

#[derive(Default)]
struct State {
    objects: BTreeMap<String, Obj>,
    links: Vec<Link>,
    sessions: HashMap<String, Session>,
    cache: HashMap<(String, String), (Instant, Value)>,
    /// Cache keys in insertion order, so expiry costs O(expired) per request.
    cache_order: std::collections::VecDeque<(Instant, (String, String))>,
    next_port: u16,
    /// OpenVidu-shaped sessions: session name → pipeline id (its pipelines have no name).
    openvidu_sessions: HashMap<String, String>,
    /// OpenVidu-shaped participants present.
    openvidu_participants: Vec<OpenViduParticipant>,
}

impl State {
    fn expire_cache(&mut self) {
        while let Some((t, _)) = self.cache_order.front() {
            if t.elapsed() < REQUEST_CACHE_TTL {
                break;
            }
            let (_, key) = self.cache_order.pop_front().expect("front exists");
            self.cache.remove(&key);
        }
    }
}

/// One event to deliver after the state lock is released.
struct Raised {
    object: String,
    ty: &'static str,
    data: Map<String, Value>,
}

/// Settings of the simulated server.
#[derive(Debug, Clone)]
pub struct SimConfig {
    /// Address written into SDP answers (KMS: first non-loopback IPv4).
    pub announce_ip: IpAddr,
    /// RTP port range (KMS `minPort`/`maxPort`).
    pub port_range: (u16, u16),
    /// How late `ObjectDestroyed` reaches clients after the object left `getChildren` (KMS raises
    /// it from another thread: a client scanning meanwhile sees the object gone with no event yet).
    pub destroyed_event_delay: std::time::Duration,
}

/// The simulated server state shared by every connection.
pub struct MediaSet {
    me: std::sync::Weak<MediaSet>,
    state: Mutex<State>,
    server_id: String,
    kmd: Kmd,
    config: SimConfig,
}

fn now_millis() -> String {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis()
        .to_string()
}

fn now_secs() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs() as i64
}

fn uuid() -> String {
    uuid::Uuid::new_v4().to_string()
}

fn get_str<'a>(params: &'a Value, key: &str) -> Result<&'a str, RpcError> {
    params
        .get(key)
        .and_then(Value::as_str)
        .ok_or_else(|| RpcError::param(key))
}

fn media_type(v: Option<&Value>) -> Result<Option<&'static str>, RpcError> {
    match v.and_then(Value::as_str) {
        None => Ok(None),
        Some("AUDIO") => Ok(Some("AUDIO")),
        Some("VIDEO") => Ok(Some("VIDEO")),
        Some("DATA") => Ok(Some("DATA")),
        Some(other) => Err(RpcError::new(
            40001,
            "MARSHALL_ERROR",
            format!("Invalid value '{other}' for MediaType"),
        )),
    }
}

/// Who is asking: the connection's session, if bound.
pub struct ConnCtx {
    /// The connection's outbound queue.
    pub tx: mpsc::Sender<String>,
    /// The session bound to this connection (after the first answer carrying one).
    pub session: Mutex<Option<String>>,
}

impl MediaSet {
    /// A new, empty server with a fresh server id.
    pub fn new(kmd: Kmd, config: SimConfig) -> Arc<Self> {
        let ms = Arc::new_cyclic(|me| MediaSet {
            me: me.clone(),
            state: Mutex::new(State {
                // A random start keeps several simulators in one host (parallel tests) apart.
                next_port: (config.port_range.0
                    + fastrand::u16(0..(config.port_range.1 - config.port_range.0).max(2)))
                    & !1,
                ..Default::default()
            }),
            server_id: uuid(),
            kmd,
            config,
        });
        ms.state.lock().expect("state").objects.insert(
            SERVER_MANAGER.into(),
            Obj {
                ty: "ServerManager".into(),
                parent: None,
                name: None,
                tags: vec![],
                send_tags: false,
                created: now_secs(),
                kind: Kind::ServerManager,
            },
        );
        ms
    }

    /// This instance's `serverId`.
    pub fn server_id(&self) -> &str {
        &self.server_id
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Forgets a connection (its session stays, as in KMS, until collected).
    pub fn detach(&self, ctx: &ConnCtx) {
        if let Some(s) = ctx.session.lock().expect("session").clone() {
            if let Some(sess) = self.lock().sessions.get_mut(&s) {
                if sess.conn.as_ref().is_some_and(|c| c.same_channel(&ctx.tx)) {
                    sess.conn = None;
                }
            }
        }
    }

    /// Handles one text frame; returns the answer frame (None for notifications).
    pub async fn handle_frame(&self, ctx: &ConnCtx, text: &str) -> Option<String> {
        let mut req: Value = match serde_json::from_str(text) {
            Ok(v) => v,
            Err(_) => {
                return Some(
                    RpcError {
                        code: -32700,
                        message: "Parse error.".into(),
                        kind: None,
                    }
                    .to_json(&Value::Null)
                    .to_string(),
                )
            }
        };
        let id = req.get("id").cloned();
        let Some(method) = req.get("method").and_then(Value::as_str).map(str::to_owned) else {
            return Some(
                RpcError {
                    code: -32600,
                    message: "Invalid request".into(),
                    kind: None,
                }
                .to_json(&id.unwrap_or(Value::Null))
                .to_string(),
            );
        };
        // injectSessionId: requests on a bound connection get its session.
        let bound = ctx.session.lock().expect("session").clone();
        if let Some(s) = &bound {
            if let Some(p) = req.get_mut("params").and_then(Value::as_object_mut) {
                p.entry("sessionId")
                    .or_insert_with(|| Value::String(s.clone()));
            }
        }
        let params = req.get("params").cloned().unwrap_or(Value::Null);
        let response = self.process(&method, id.clone(), params, ctx).await;
        let id = id?;
        let _ = id;
        Some(response.to_string())
    }

    /// KMS's `handler.process` with the request cache around it; returns the full response object.
    fn process<'a>(
        &'a self,
        method: &'a str,
        id: Option<Value>,
        params: Value,
        ctx: &'a ConnCtx,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Value> + Send + 'a>> {
        Box::pin(async move {
            let id_json = id.clone().unwrap_or(Value::Null);
            let id_key = id.as_ref().map(|v| match v {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            });
            let req_session = params
                .get("sessionId")
                .and_then(Value::as_str)
                .map(str::to_owned);
            if let (Some(s), Some(k)) = (&req_session, &id_key) {
                let mut st = self.lock();
                st.expire_cache();
                if let Some((_, cached)) = st.cache.get(&(s.clone(), k.clone())) {
                    debug!(session = %s, id = %k, "answering from the request cache");
                    return cached.clone();
                }
            }
            let mut raised = Vec::new();
            let result = self.dispatch(method, &params, ctx, &mut raised).await;
            let response = match result {
                Ok(mut r) => {
                    if let Some(Value::String(s)) = r.get("sessionId") {
                        let s = s.clone();
                        self.bind(ctx, &s);
                    }
                    r.retain(|_, _| true);
                    json!({"jsonrpc": "2.0", "id": id_json, "result": Value::Object(r)})
                }
                Err(e) => e.to_json(&id_json),
            };
            let result_session = response
                .pointer("/result/sessionId")
                .and_then(Value::as_str)
                .map(str::to_owned)
                .or(req_session);
            if let (Some(s), Some(k)) = (result_session, id_key) {
                let mut st = self.lock();
                let key = (s, k);
                if !st.cache.contains_key(&key) {
                    let now = Instant::now();
                    st.cache.insert(key.clone(), (now, response.clone()));
                    st.cache_order.push_back((now, key));
                }
            }
            self.deliver(raised);
            response
        })
    }

    fn bind(&self, ctx: &ConnCtx, session: &str) {
        *ctx.session.lock().expect("session") = Some(session.to_owned());
        let mut st = self.lock();
        let s = st.sessions.entry(session.to_owned()).or_insert(Session {
            conn: None,
            subs: HashMap::new(),
        });
        s.conn = Some(ctx.tx.clone());
    }

    fn session_of(params: &Value) -> String {
        params
            .get("sessionId")
            .and_then(Value::as_str)
            .map(str::to_owned)
            .unwrap_or_else(uuid)
    }

    async fn dispatch(
        &self,
        method: &str,
        params: &Value,
        ctx: &ConnCtx,
        raised: &mut Vec<Raised>,
    ) -> RpcResult {
        let requires_params = !matches!(method, "connect" | "ping");
        if requires_params && params.is_null() {
            return Err(RpcError::new(
                -32602,
                "INVALID_PARAMS",
                "'params' is required",
            ));
        }
        let mut out = Map::new();
        match method {
            "ping" => {
                if let Some(s) = params.get("sessionId").and_then(Value::as_str) {
                    out.insert("sessionId".into(), s.into());
                }
                out.insert("value".into(), "pong".into());
            }
            "connect" => {
                let session = match params.get("sessionId").and_then(Value::as_str) {
                    Some(s) => {
                        if !self.lock().sessions.contains_key(s) {
                            return Err(RpcError::new(
                                40007,
                                "INVALID_SESSION",
                                format!("Session '{s}' not found"),
                            ));
                        }
                        s.to_owned()
                    }
                    None => uuid(),
                };
                out.insert("sessionId".into(), session.into());
                out.insert("serverId".into(), self.server_id.clone().into());
            }
            "keepAlive" => {
                let s = get_str(params, "sessionId")?;
                if !self.lock().sessions.contains_key(s) {
                    return Err(RpcError::new(
                        40007,
                        "INVALID_SESSION",
                        format!("Session '{s}' not found"),
                    ));
                }
                out.insert("sessionId".into(), s.into());
            }
            "create" => {
                let ty = get_str(params, "type")?;
                let session = Self::session_of(params);
                let ctor = params
                    .get("constructorParams")
                    .cloned()
                    .unwrap_or(Value::Null);
                let id = self.create(ty, &ctor, raised)?;
                out.insert("value".into(), id.into());
                out.insert("sessionId".into(), session.into());
            }
            "invoke" => {
                let operation = get_str(params, "operation")?.to_owned();
                let object = get_str(params, "object")?.to_owned();
                let session = Self::session_of(params);
                let op_params = params.get("operationParams").cloned().unwrap_or(json!({}));
                // getUsedCpu sleeps on a worker thread in KMS; so does this, without blocking others.
                if object == SERVER_MANAGER && operation == "getUsedCpu" {
                    let interval = op_params
                        .get("interval")
                        .and_then(Value::as_u64)
                        .unwrap_or(1000)
                        .min(60_000);
                    tokio::time::sleep(Duration::from_millis(interval)).await;
                }
                let value = match self.peer_negotiation(&object, &operation, &op_params) {
                    Some(offer) => self.answer_with_peer(&object, offer).await?,
                    None => self.invoke(&object, &operation, &op_params, raised)?,
                };
                out.insert("value".into(), value);
                out.insert("sessionId".into(), session.into());
            }
            "describe" => {
                let object = get_str(params, "object")?;
                let session = Self::session_of(params);
                let st = self.lock();
                let obj = st
                    .objects
                    .get(object)
                    .ok_or_else(|| RpcError::not_found(object))?;
                out.insert("sessionId".into(), session.into());
                out.insert("type".into(), obj.ty.clone().into());
                out.insert("qualifiedType".into(), format!("kurento.{}", obj.ty).into());
                out.insert("hierarchy".into(), json!(self.kmd.hierarchy(&obj.ty)));
            }
            "subscribe" => {
                let ty = get_str(params, "type")?.to_owned();
                let object = get_str(params, "object")?.to_owned();
                let session = Self::session_of(params);
                let mut st = self.lock();
                let obj = st
                    .objects
                    .get(&object)
                    .ok_or_else(|| RpcError::not_found(&object))?;
                if !self.kmd.emits(&obj.ty, &ty) {
                    return Err(RpcError::new(
                        40106,
                        "MEDIA_OBJECT_EVENT_NOT_SUPPORTED",
                        format!("Event '{ty}' not supported"),
                    ));
                }
                let sub = uuid();
                let s = st.sessions.entry(session.clone()).or_insert(Session {
                    conn: None,
                    subs: HashMap::new(),
                });
                if s.conn.is_none() {
                    s.conn = Some(ctx.tx.clone());
                }
                s.subs.insert(sub.clone(), (object, ty));
                out.insert("sessionId".into(), session.into());
                out.insert("value".into(), sub.into());
            }
            "unsubscribe" => {
                let sub = get_str(params, "subscription")?;
                get_str(params, "object")?;
                let session = get_str(params, "sessionId")?.to_owned();
                if let Some(s) = self.lock().sessions.get_mut(&session) {
                    s.subs.remove(sub);
                }
                out.insert("sessionId".into(), session.into());
            }
            "release" => {
                let object = get_str(params, "object")?.to_owned();
                let session = Self::session_of(params);
                // MediaSet::release swallows every error: releasing twice succeeds.
                self.release(&object, raised);
                out.insert("sessionId".into(), session.into());
            }
            "ref" | "unref" => {
                let object = get_str(params, "object")?;
                let session = get_str(params, "sessionId")?.to_owned();
                if !self.lock().objects.contains_key(object) {
                    return Err(RpcError::not_found(object));
                }
                out.insert("sessionId".into(), session.into());
            }
            "closeSession" => {
                let session = get_str(params, "sessionId")?.to_owned();
                self.lock().sessions.remove(&session);
            }
            "transaction" => {
                let session = Self::session_of(params);
                let ops = params
                    .get("operations")
                    .and_then(Value::as_array)
                    .cloned()
                    .ok_or_else(|| RpcError::param("operations"))?;
                let mut responses: Vec<Value> = Vec::new();
                for (i, mut op) in ops.into_iter().enumerate() {
                    if op.get("id").and_then(Value::as_u64) != Some(i as u64) {
                        return Err(RpcError::new(
                            40008,
                            "MALFORMED_TRANSACTION",
                            format!("Id of request '{i}' should be '{i}'"),
                        ));
                    }
                    let m = op
                        .get("method")
                        .and_then(Value::as_str)
                        .unwrap_or_default()
                        .to_owned();
                    let mut p = op.get_mut("params").map(Value::take).unwrap_or(json!({}));
                    if let Some(obj) = p.as_object_mut() {
                        obj.insert("sessionId".into(), session.clone().into());
                    }
                    inject_refs(&mut p, &responses)?;
                    let r = self.process(&m, None, p, ctx).await;
                    let ok = r.get("error").is_none();
                    let mut r = r;
                    r["id"] = json!(i);
                    responses.push(r);
                    if !ok {
                        break;
                    }
                }
                out.insert("value".into(), Value::Array(responses));
                out.insert("sessionId".into(), session.into());
            }
            _ => {
                return Err(RpcError {
                    code: -32601,
                    message: "Method not found.".into(),
                    kind: None,
                })
            }
        }
        Ok(out)
    }

    fn deliver(&self, raised: Vec<Raised>) {
        if raised.is_empty() {
            return;
        }
        let st = self.lock();
        for ev in raised {
            let tags = st
                .objects
                .get(&ev.object)
                .filter(|o| o.send_tags)
                .map(|o| tags_json(&o.tags))
                .unwrap_or_else(|| json!([]));
            let mut data = ev.data;
            data.insert("source".into(), ev.object.clone().into());
            data.insert("tags".into(), tags);
            data.insert("timestampMillis".into(), now_millis().into());
            // KMS 7.3 names the type inside `data` for element events, not for the ServerManager's.
            if !matches!(ev.ty, "ObjectCreated" | "ObjectDestroyed") {
                data.insert("type".into(), ev.ty.into());
            }
            let frame = json!({"jsonrpc": "2.0", "method": "onEvent", "params": {"value": {
                "data": Value::Object(data), "object": ev.object, "type": ev.ty}}})
            .to_string();
            let delay = if ev.ty == "ObjectDestroyed" {
                self.config.destroyed_event_delay
            } else {
                std::time::Duration::ZERO
            };
            for s in st.sessions.values() {
                if s.subs.values().any(|(o, t)| *o == ev.object && t == ev.ty) {
                    if let Some(conn) = &s.conn {
                        let runtime = tokio::runtime::Handle::try_current();
                        match runtime {
                            Ok(rt) if !delay.is_zero() => {
                                let (conn, frame) = (conn.clone(), frame.clone());
                                rt.spawn(async move {
                                    tokio::time::sleep(delay).await;
                                    if conn.try_send(frame).is_err() {
                                        warn!("event dropped: a client is not reading");
                                    }
                                });
                            }
                            _ => {
                                if conn.try_send(frame.clone()).is_err() {
                                    warn!("event dropped: a client is not reading");
                                }
                            }
                        }
                    }
                }
            }
        }
    }

    fn alloc_ports(&self, st: &mut State) -> Result<u16, RpcError> {
        let (min, max) = self.config.port_range;
        let span = (max - min) / 2;
        for _ in 0..span.max(1) {
            let p = st.next_port;
            st.next_port = if p + 2 >= max { (min + 1) & !1 } else { p + 2 };
            let free = UdpSocket::bind(("0.0.0.0", p)).is_ok()
                && UdpSocket::bind(("0.0.0.0", p + 1)).is_ok();
            if free {
                return Ok(p);
            }
        }
        Err(RpcError::new(
            40009,
            "NOT_ENOUGH_RESOURCES",
            "No free RTP ports",
        ))
    }

    /// Creates an object of `ty` (KMS `create`).
    fn create(&self, ty: &str, ctor: &Value, raised: &mut Vec<Raised>) -> Result<String, RpcError> {
        if !self.kmd.creatable(ty) {
            return Err(RpcError::new(
                40108,
                "MEDIA_OBJECT_NOT_AVAILABLE",
                format!("Factory '{ty}' not found"),
            ));
        }
        let mut st = self.lock();
        let (id, parent) = if ty == "MediaPipeline" {
            (format!("{}_kurento.MediaPipeline", uuid()), None)
        } else {
            let pipe = ctor
                .get("mediaPipeline")
                .and_then(Value::as_str)
                .ok_or_else(|| {
                    RpcError::new(
                        40001,
                        "MARSHALL_ERROR",
                        "'mediaPipeline' parameter is required",
                    )
                })?;
            match st.objects.get(pipe) {
                Some(o) if matches!(o.kind, Kind::Pipeline) => {}
                Some(_) => {
                    return Err(RpcError::new(
                        40001,
                        "MARSHALL_ERROR",
                        "'mediaPipeline' is not a MediaPipeline",
                    ))
                }
                None => return Err(RpcError::not_found(pipe)),
            }
            (
                format!("{pipe}/{}_kurento.{ty}", uuid()),
                Some(pipe.to_owned()),
            )
        };
        let kind = match ty {
            "MediaPipeline" => Kind::Pipeline,
            "WebRtcEndpoint" => Kind::WebRtc(WebRtc {
                data_channels: ctor
                    .get("useDataChannels")
                    .and_then(Value::as_bool)
                    .unwrap_or(false),
                local_sdp: None,
                remote_sdp: None,
                publisher: None,
                since: Instant::now(),
                peer: None,
                inbox: Default::default(),
            }),
            "RtpEndpoint" => Kind::Rtp(Box::new(Rtp {
                local_sdp: None,
                remote_sdp: None,
                offer: vec![],
                accepted: vec![],
                ssrcs: vec![],
                senders: HashMap::new(),
                crypto: crate::srtp::from_constructor(ctor.get("crypto"))
                    .map_err(|e| RpcError::new(40107, "MEDIA_OBJECT_ILLEGAL_PARAM_ERROR", e))?,
            })),
            _ => Kind::Plain,
        };
        st.objects.insert(
            id.clone(),
            Obj {
                ty: ty.to_owned(),
                parent,
                name: None,
                tags: vec![],
                send_tags: false,
                created: now_secs(),
                kind,
            },
        );
        raised.push(Raised {
            object: SERVER_MANAGER.into(),
            ty: "ObjectCreated",
            data: obj_map(json!({ "object": id })),
        });
        Ok(id)
    }

    /// Releases an object and its children; unknown ids are ignored (as KMS does).
    fn release(&self, id: &str, raised: &mut Vec<Raised>) {
        if id == SERVER_MANAGER {
            return;
        }
        let mut st = self.lock();
        let mut doomed: Vec<String> = st
            .objects
            .iter()
            .filter(|(oid, o)| *oid == id || o.parent.as_deref() == Some(id))
            .map(|(oid, _)| oid.clone())
            .collect();
        doomed.sort_by_key(|d| std::cmp::Reverse(d.len()));
        for d in doomed {
            st.objects.remove(&d);
            let (gone, kept): (Vec<Link>, Vec<Link>) = std::mem::take(&mut st.links)
                .into_iter()
                .partition(|l| l.source == d || l.sink == d);
            st.links = kept;
            for l in gone {
                let other = if l.source == d { &l.sink } else { &l.source };
                raised.push(Raised {
                    object: other.clone(),
                    ty: "ElementDisconnected",
                    data: obj_map(
                        json!({"source": l.source, "sink": l.sink, "mediaType": l.media,
                        "sourceMediaDescription": "default", "sinkMediaDescription": "default"}),
                    ),
                });
            }
            for s in st.sessions.values_mut() {
                s.subs.retain(|_, (o, _)| *o != d);
            }
            raised.push(Raised {
                object: SERVER_MANAGER.into(),
                ty: "ObjectDestroyed",
                data: obj_map(json!({ "objectId": d })),
            });
        }
        self.reconcile_senders(&mut st);
    }

    fn invoke(
        &self,
        id: &str,
        op: &str,
        p: &Value,
        raised: &mut Vec<Raised>,
    ) -> Result<Value, RpcError> {
        let nparams = p.as_object().map(|m| m.len()).unwrap_or(0);
        let unknown = || {
            RpcError::new(
                40008,
                "MALFORMED_TRANSACTION",
                format!("Method '{op}' with {nparams} parameters not found"),
            )
        };
        let mut st = self.lock();
        let ty = st
            .objects
            .get(id)
            .ok_or_else(|| RpcError::not_found(id))?
            .ty
            .clone();
        let is = |class: &str| self.kmd.is_a(&ty, class);
        if !self.kmd.has_operation(&ty, op) {
            return Err(unknown());
        }
        // MediaObject operations.
        match op {
            "getId" => return Ok(id.into()),
            "getName" => {
                let o = &st.objects[id];
                return Ok(o.name.clone().unwrap_or_else(|| id.to_owned()).into());
            }
            "setName" => {
                let name = get_str(p, "name")?.to_owned();
                st.objects.get_mut(id).expect("exists").name = Some(name);
                return Ok(Value::Null);
            }
            "addTag" => {
                let (k, v) = (
                    get_str(p, "key")?.to_owned(),
                    get_str(p, "value")?.to_owned(),
                );
                let o = st.objects.get_mut(id).expect("exists");
                o.tags.retain(|(tk, _)| *tk != k);
                o.tags.push((k, v));
                return Ok(Value::Null);
            }
            "removeTag" => {
                let k = get_str(p, "key")?;
                st.objects
                    .get_mut(id)
                    .expect("exists")
                    .tags
                    .retain(|(tk, _)| tk != k);
                return Ok(Value::Null);
            }
            "getTag" => {
                let k = get_str(p, "key")?;
                return st.objects[id]
                    .tags
                    .iter()
                    .find(|(tk, _)| tk == k)
                    .map(|(_, v)| Value::String(v.clone()))
                    .ok_or_else(|| {
                        RpcError::new(40110, "MEDIA_OBJECT_TAG_KEY_NOT_FOUND", "Tag key not found")
                    });
            }
            "getTags" => return Ok(tags_json(&st.objects[id].tags)),
            "getSendTagsInEvents" => return Ok(st.objects[id].send_tags.into()),
            "setSendTagsInEvents" => {
                let v = p
                    .get("sendTagsInEvents")
                    .and_then(Value::as_bool)
                    .ok_or_else(|| RpcError::param("sendTagsInEvents"))?;
                st.objects.get_mut(id).expect("exists").send_tags = v;
                return Ok(Value::Null);
            }
            "getCreationTime" => return Ok(st.objects[id].created.into()),
            "getParent" => {
                return Ok(st.objects[id]
                    .parent
                    .clone()
                    .map(Value::String)
                    .unwrap_or(Value::Null))
            }
            "getMediaPipeline" => {
                let o = &st.objects[id];
                return Ok(match o.kind {
                    Kind::Pipeline => id.into(),
                    _ => o.parent.clone().map(Value::String).unwrap_or(Value::Null),
                });
            }
            "getChildren" | "getChilds" => {
                let kids: Vec<Value> = st
                    .objects
                    .iter()
                    .filter(|(_, o)| o.parent.as_deref() == Some(id))
                    .map(|(k, _)| Value::String(k.clone()))
                    .collect();
                return Ok(Value::Array(kids));
            }
            _ => {}
        }
        if ty == "ServerManager" {
            return self.server_manager_op(&st, op, p);
        }
        if ty == "MediaPipeline" {
            return match op {
                "getGstreamerDot" => {
                    Ok(format!("digraph \"{id}\" {{ /* kms-sim: no GStreamer graph */ }}").into())
                }
                "getLatencyStats" => Ok(false.into()),
                "setLatencyStats" | "dumpGstreamerDot" => Ok(Value::Null),
                _ => Err(unknown()),
            };
        }
        if is("MediaElement") {
            if let Some(v) = self.element_op(&mut st, id, op, p, raised)? {
                return Ok(v);
            }
        }
        if is("SdpEndpoint") {
            if let Some(v) = self.sdp_op(&mut st, id, op, p)? {
                return Ok(v);
            }
        }
        match op {
            "requestKeyframe" => {
                let flowing = st.links.iter().any(|l| l.sink == id && l.media == "VIDEO");
                if !flowing {
                    return Err(RpcError::new(
                        40111,
                        "MEDIA_OBJECT_OPERATION_NOT_SUPPORTED",
                        "Keyframe must be requested from a subscriber element",
                    ));
                }
                // As KMS: the request goes up to the publisher, whose next frame is a keyframe.
                if let Some(Obj {
                    kind: Kind::Rtp(r), ..
                }) = st.objects.get(id)
                {
                    if let Some(s) = r.senders.get("VIDEO") {
                        s.request_keyframe();
                    }
                }
                Ok(Value::Null)
            }
            "getMediaState" => Ok(if st.links.iter().any(|l| l.sink == id || l.source == id) {
                "CONNECTED"
            } else {
                "DISCONNECTED"
            }
            .into()),
            "getConnectionState" => Ok("CONNECTED".into()),
            "getMtu" => Ok(1200.into()),
            "gatherCandidates" => {
                self.gather_candidates(&mut st, id, raised);
                Ok(Value::Null)
            }
            "addIceCandidate" => {
                self.add_ice_candidate(&st, id, p)?;
                Ok(Value::Null)
            }
            "closeDataChannel" => Ok(Value::Null),
            "createDataChannel" => match &st.objects[id].kind {
                Kind::WebRtc(w) if w.data_channels => {
                    self.create_data_channel(&mut st, id, p)?;
                    Ok(Value::Null)
                }
                _ => Err(RpcError::new(
                    40111,
                    "MEDIA_OBJECT_OPERATION_NOT_SUPPORTED",
                    "Cannot create data channel: data channels are not enabled",
                )),
            },
            o if o.starts_with("get") => Ok(property_default(&self.kmd, &ty, op)),
            o if o.starts_with("set") => Ok(Value::Null),
            _ => Err(unknown()),
        }
    }

    fn server_manager_op(&self, st: &State, op: &str, p: &Value) -> Result<Value, RpcError> {
        Ok(match op {
            "getInfo" => json!({"__module__": "kurento", "__type__": "ServerInfo",
                "version": concat!("7.3.0~kms-sim-", env!("CARGO_PKG_VERSION")),
                "modules": self.kmd.modules_info(), "type": "KMS", "capabilities": ["transactions"]}),
            "getPipelines" => Value::Array(
                st.objects
                    .iter()
                    .filter(|(_, o)| matches!(o.kind, Kind::Pipeline))
                    .map(|(k, _)| Value::String(k.clone()))
                    .collect(),
            ),
            "getSessions" => {
                // KMS pre-sizes the vector then push_backs: N empty strings, then the N ids.
                let ids: Vec<&String> = st.sessions.keys().collect();
                let mut v: Vec<Value> = ids.iter().map(|_| Value::String(String::new())).collect();
                v.extend(ids.iter().map(|s| Value::String((*s).clone())));
                Value::Array(v)
            }
            "getUsedMemory" => json!(rss_kib()),
            "getUsedCpu" => json!(0.0),
            "getCpuCount" => json!(std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1)),
            "getMetadata" => json!(""),
            "getKmd" => {
                let m = get_str(p, "moduleName")?;
                self.kmd.source(m).map(Value::from).ok_or_else(|| {
                    RpcError::new(
                        40101,
                        "MEDIA_OBJECT_NOT_FOUND",
                        format!("Module '{m}' not found"),
                    )
                })?
            }
            _ => {
                return Err(RpcError::new(
                    40008,
                    "MALFORMED_TRANSACTION",
                    format!("Method '{op}' not found"),
                ))
            }
        })
    }

    fn element_op(
        &self,
        st: &mut State,
        id: &str,
        op: &str,
        p: &Value,
        raised: &mut Vec<Raised>,
    ) -> Result<Option<Value>, RpcError> {
        let v = match op {
            "connect" | "disconnect" => {
                let sink = get_str(p, "sink")?.to_owned();
                let media = media_type(p.get("mediaType"))?;
                let sink_obj = st
                    .objects
                    .get(&sink)
                    .ok_or_else(|| RpcError::not_found(&sink))?;
                if !self.kmd.is_a(&sink_obj.ty, "MediaElement") {
                    return Err(RpcError::new(
                        40001,
                        "MARSHALL_ERROR",
                        "'sink' is not a MediaElement",
                    ));
                }
                if sink_obj.parent != st.objects[id].parent {
                    return Err(RpcError::new(
                        40004,
                        "CONNECT_ERROR",
                        "Elements are in different pipelines",
                    ));
                }
                let medias: Vec<&'static str> = match media {
                    Some(m) => vec![m],
                    None => vec!["AUDIO", "DATA", "VIDEO"],
                };
                for m in medias {
                    let link = Link {
                        source: id.to_owned(),
                        sink: sink.clone(),
                        media: m,
                    };
                    let evdata = obj_map(json!({"source": id, "sink": sink, "mediaType": m,
                        "sourceMediaDescription": "default", "sinkMediaDescription": "default"}));
                    if op == "connect" {
                        // A sink pad takes one source: a new connection replaces the old one.
                        st.links.retain(|l| !(l.sink == sink && l.media == m));
                        st.links.push(link);
                        // On the source only, as KMS 7.3 raises it (checked by the conformance test).
                        raised.push(Raised {
                            object: id.to_owned(),
                            ty: "ElementConnected",
                            data: evdata.clone(),
                        });
                        if m != "DATA" && self.is_publisher_with(st, id, m) {
                            raised.push(Raised { object: sink.clone(), ty: "MediaFlowInStateChanged",
                                data: obj_map(json!({"state": "FLOWING", "padName": "default", "mediaType": m})) });
                        }
                    } else if let Some(pos) = st.links.iter().position(|l| *l == link) {
                        st.links.remove(pos);
                        raised.push(Raised {
                            object: id.to_owned(),
                            ty: "ElementDisconnected",
                            data: evdata.clone(),
                        });
                    }
                }
                self.reconcile_senders(st);
                Value::Null
            }
            "getSourceConnections" | "getSinkConnections" => {
                let media = media_type(p.get("mediaType"))?;
                let list: Vec<Value> = st
                    .links
                    .iter()
                    .filter(|l| if op == "getSourceConnections" { l.sink == id } else { l.source == id })
                    .filter(|l| media.is_none_or(|m| m == l.media))
                    .map(|l| json!({"__module__": "kurento", "__type__": "ElementConnectionData", "source": l.source, "sink": l.sink,
                        "type": l.media, "sourceDescription": "default", "sinkDescription": "default"}))
                    .collect();
                Value::Array(list)
            }
            "isMediaFlowingIn" => {
                let m =
                    media_type(p.get("mediaType"))?.ok_or_else(|| RpcError::param("mediaType"))?;
                st.links
                    .iter()
                    .any(|l| {
                        l.sink == id && l.media == m && self.is_publisher_with(st, &l.source, m)
                    })
                    .into()
            }
            "isMediaFlowingOut" => {
                let m =
                    media_type(p.get("mediaType"))?.ok_or_else(|| RpcError::param("mediaType"))?;
                self.is_publisher_with(st, id, m).into()
            }
            "isMediaTranscoding" => false.into(),
            "getStats" => self.stats(st, id, media_type(p.get("mediaType"))?),
            "getGstreamerDot" => format!("digraph \"{id}\" {{ /* kms-sim */ }}").into(),
            "setAudioFormat" | "setVideoFormat" | "dumpGstreamerDot" => Value::Null,
            _ => return Ok(None),
        };
        Ok(Some(v))
    }

    fn is_publisher_with(&self, st: &State, id: &str, media: &str) -> bool {
        match st.objects.get(id).map(|o| &o.kind) {
            Some(Kind::WebRtc(WebRtc {
                publisher: Some(p), ..
            })) => match media {
                "VIDEO" => p.video.is_some(),
                "AUDIO" => p.audio.is_some(),
                _ => false,
            },
            _ => false,
        }
    }

    fn stats(&self, st: &State, id: &str, media: Option<&str>) -> Value {
        let mut out = Map::new();
        let ts = now_millis().parse::<i64>().unwrap_or_default();
        out.insert(
            format!("{id}_element"),
            json!({"__module__": "kurento", "__type__": "ElementStats",
            "id": format!("{id}_element"), "type": "element", "timestampMillis": ts,
            "inputAudioLatency": 0.0, "inputVideoLatency": 0.0, "inputLatency": []}),
        );
        // Simulated counters: a publisher "receives" what its participant plays, at typical rates.
        if let Some(Kind::WebRtc(WebRtc {
            publisher: Some(p),
            since,
            ..
        })) = st.objects.get(id).map(|o| &o.kind)
        {
            let secs = since.elapsed().as_secs_f64();
            for (m, present, pps, bytes) in [
                ("VIDEO", p.video.is_some(), 45.0, 900.0),
                ("AUDIO", p.audio.is_some(), 50.0, 80.0),
            ] {
                if !present || media.is_some_and(|x| x != m) {
                    continue;
                }
                let packets = (secs * pps) as i64;
                let sid = format!("{id}_inbound_{}", m.to_lowercase());
                out.insert(sid.clone(), json!({"__module__": "kurento", "__type__": "RTCInboundRTPStreamStats",
                    "id": sid, "type": "inboundrtp", "timestampMillis": ts, "ssrc": format!("{}", fastrand::u32(..)),
                    "mediaTrackId": "", "transportId": "", "codecId": "", "firCount": 0, "pliCount": 0, "nackCount": 0,
                    "sliCount": 0, "remb": 0, "packetsLost": 0, "fractionLost": 0.0, "packetsReceived": packets,
                    "bytesReceived": (packets as f64 * bytes) as i64, "jitter": 0.0}));
            }
        }
        Value::Object(out)
    }

    fn sdp_op(
        &self,
        st: &mut State,
        id: &str,
        op: &str,
        p: &Value,
    ) -> Result<Option<Value>, RpcError> {
        let v = match op {
            "getLocalSessionDescriptor" | "getRemoteSessionDescriptor" => {
                let local = op == "getLocalSessionDescriptor";
                let sdp = match &st.objects[id].kind {
                    Kind::WebRtc(w) => {
                        if local {
                            w.local_sdp.clone()
                        } else {
                            w.remote_sdp.clone()
                        }
                    }
                    Kind::Rtp(r) => {
                        if local {
                            r.local_sdp.clone()
                        } else {
                            r.remote_sdp.clone()
                        }
                    }
                    _ => None,
                };
                match sdp {
                    Some(s) => s.into(),
                    None if local => {
                        return Err(RpcError::new(
                            40202,
                            "SDP_END_POINT_NO_LOCAL_SDP_ERROR",
                            "No local SDP",
                        ))
                    }
                    None => {
                        return Err(RpcError::new(
                            40203,
                            "SDP_END_POINT_NO_REMOTE_SDP_ERROR",
                            "No remote SDP",
                        ))
                    }
                }
            }
            "processOffer" => {
                let offer = get_str(p, "offer")?.to_owned();
                let session_id = u64::from(fastrand::u32(..));
                let needs_ports = matches!(st.objects[id].kind, Kind::Rtp(_));
                let negotiated = match &st.objects[id].kind {
                    Kind::WebRtc(w) => w.remote_sdp.is_some(),
                    Kind::Rtp(r) => r.remote_sdp.is_some(),
                    _ => false,
                };
                if negotiated {
                    return Err(RpcError::new(
                        40208,
                        "SDP_END_POINT_ALREADY_NEGOTIATED",
                        "Endpoint already negotiated",
                    ));
                }
                let parsed = sdp::parse(&offer)
                    .map_err(|e| RpcError::new(40201, "SDP_PARSE_ERROR", e.to_string()))?;
                let media = sdp::offered_media(&parsed)
                    .map_err(|e| RpcError::new(40201, "SDP_PARSE_ERROR", e.to_string()))?;
                if needs_ports {
                    let mut ports = Vec::new();
                    for _ in &media {
                        ports.push(self.alloc_ports(st)?);
                    }
                    let ssrcs: Vec<u32> = media.iter().map(|_| fastrand::u32(1..)).collect();
                    let crypto = match &st.objects[id].kind {
                        Kind::Rtp(r) => r.crypto.clone(),
                        _ => None,
                    };
                    let answer = sdp::rtp_answer_with(
                        &media,
                        &self.config.announce_ip.to_string(),
                        &ports,
                        &ssrcs,
                        session_id,
                        crypto.as_ref(),
                    )
                    .map_err(|e| {
                        RpcError::new(40205, "SDP_END_POINT_PROCESS_OFFER_ERROR", e.to_string())
                    })?;
                    let Some(Obj {
                        kind: Kind::Rtp(r), ..
                    }) = st.objects.get_mut(id)
                    else {
                        unreachable!("checked above")
                    };
                    r.remote_sdp = Some(offer);
                    r.local_sdp = Some(answer.text.clone());
                    r.offer = media;
                    r.accepted = answer.accepted;
                    r.ssrcs = ssrcs;
                    let text = answer.text;
                    self.reconcile_senders(st);
                    text.into()
                } else {
                    let (_, answer) = sdp::webrtc_pair(
                        media
                            .iter()
                            .find(|m| m.kind == "video")
                            .and_then(|m| m.formats.first())
                            .map(|f| f.encoding.as_str()),
                        media.iter().any(|m| m.kind == "audio"),
                        media.iter().any(|m| m.kind == "application"),
                        "sendonly",
                        session_id,
                    );
                    if let Some(Obj {
                        kind: Kind::WebRtc(w),
                        ..
                    }) = st.objects.get_mut(id)
                    {
                        w.remote_sdp = Some(offer);
                        w.local_sdp = Some(answer.clone());
                    }
                    answer.into()
                }
            }
            "generateOffer" => {
                let (offer, _) = sdp::webrtc_pair(
                    Some("VP8"),
                    true,
                    false,
                    "sendrecv",
                    u64::from(fastrand::u32(..)),
                );
                if let Some(Obj {
                    kind: Kind::WebRtc(w),
                    ..
                }) = st.objects.get_mut(id)
                {
                    w.local_sdp = Some(offer.clone());
                }
                offer.into()
            }
            "processAnswer" => {
                let answer = get_str(p, "answer")?.to_owned();
                if let Some(Obj {
                    kind: Kind::WebRtc(w),
                    ..
                }) = st.objects.get_mut(id)
                {
                    w.remote_sdp = Some(answer.clone());
                }
                answer.into()
            }
            _ => return Ok(None),
        };
        Ok(Some(v))
    }

    /// Starts a sender for every (publisher → negotiated RtpEndpoint, media) link and stops the rest.
    fn reconcile_senders(&self, st: &mut State) {
        let links = st.links.clone();
        let rtp_ids: Vec<String> = st
            .objects
            .iter()
            .filter(|(_, o)| matches!(o.kind, Kind::Rtp(_)))
            .map(|(k, _)| k.clone())
            .collect();
        for rid in rtp_ids {
            for media in ["AUDIO", "VIDEO"] {
                // Up the links to a publisher, through PassThroughs and filters (OpenVidu hangs
                // everything from a PassThrough; media flows through them in KMS).
                let mut publisher = None;
                let mut at = rid.clone();
                for _ in 0..6 {
                    let Some(l) = links.iter().find(|l| l.sink == at && l.media == media) else {
                        break;
                    };
                    match st.objects.get(&l.source).map(|o| &o.kind) {
                        Some(Kind::WebRtc(WebRtc {
                            publisher: Some(p), ..
                        })) => {
                            publisher = Some(p.clone());
                            break;
                        }
                        Some(Kind::Plain) => at = l.source.clone(),
                        _ => break,
                    }
                }
                let Some(Obj {
                    kind: Kind::Rtp(r), ..
                }) = st.objects.get_mut(&rid)
                else {
                    continue;
                };
                let payload = publisher.and_then(|p| match media {
                    "VIDEO" => p.video.as_ref().map(|(_, v)| Payload::Video(v.clone())),
                    _ => p.audio.clone().map(Payload::Audio),
                });
                let section = r
                    .offer
                    .iter()
                    .position(|m| m.kind.eq_ignore_ascii_case(media));
                let target = section.and_then(|i| {
                    let (port, format) = r.accepted.get(i)?.clone()?;
                    let m = &r.offer[i];
                    let ip: IpAddr = m.address.parse().ok()?;
                    Some(SendTarget {
                        format,
                        rtp_dest: SocketAddr::new(ip, m.port),
                        rtcp_dest: SocketAddr::new(ip, m.rtcp_port),
                        local_rtp_port: port,
                        local_rtcp_port: port + 1,
                        ssrc: r.ssrcs[i],
                        mtu: 1200,
                        srtp: r.crypto.as_ref().map(|c| crate::media::SenderSrtp {
                            cipher: c.suite.cipher,
                            auth: c.suite.auth,
                            key: c.key.clone(),
                            peer_key: crate::srtp::offered_key(&m.crypto, c).map(|(_, k)| k),
                        }),
                    })
                });
                match (payload, target) {
                    (Some(payload), Some(target)) => {
                        if !r.senders.contains_key(media) {
                            match RtpSender::start(&payload, &target) {
                                Ok(s) => {
                                    info!(tap = %rid, sender = s.description(), "sending RTP");
                                    r.senders.insert(media, s);
                                }
                                Err(e) => warn!(tap = %rid, error = %e, "cannot send RTP"),
                            }
                        }
                    }
                    _ => {
                        r.senders.remove(media);
                    }
                }
            }
        }
    }

    /// Adds a simulated participant to a room the way the Java group-call app does, in the app's own
    /// session: publisher endpoint (sendonly browser offer), one viewer endpoint per other participant
    /// in each direction, tags. Returns the publisher's id.
    pub fn join(
        &self,
        room: &str,
        room_tag: Option<(&str, &str)>,
        p: &crate::scenario::Participant,
        keys: &crate::scenario::TagKeys,
    ) -> String {
        let mut raised = Vec::new();
        let pipeline = {
            let st = self.lock();
            st.objects
                .iter()
                .find(|(_, o)| matches!(o.kind, Kind::Pipeline) && o.name.as_deref() == Some(room))
                .map(|(k, _)| k.clone())
        };
        let pipeline = match pipeline {
            Some(p) => p,
            None => {
                let id = self
                    .create("MediaPipeline", &Value::Null, &mut raised)
                    .expect("pipeline");
                let mut st = self.lock();
                let o = st.objects.get_mut(&id).expect("created");
                o.name = Some(room.to_owned());
                if let Some((k, v)) = room_tag {
                    o.tags.push((k.to_owned(), v.to_owned()));
                }
                id
            }
        };
        let media = Arc::new(PublisherMedia {
            name: p.name.clone(),
            video: p.video_spec(),
            audio: p.audio_source(),
        });
        let ctor = json!({"mediaPipeline": pipeline, "useDataChannels": p.data_channels});
        let publisher = self
            .create("WebRtcEndpoint", &ctor, &mut raised)
            .expect("publisher");
        let codec = p
            .video
            .as_ref()
            .and_then(|v| v.advertise_codec.clone())
            .or_else(|| media.video.as_ref().map(|(c, _)| c.clone()));
        let (offer, answer) = sdp::webrtc_pair(
            codec.as_deref(),
            media.audio.is_some(),
            p.data_channels,
            "sendonly",
            u64::from(fastrand::u32(..)),
        );
        let viewers: Vec<(String, String)> = {
            let mut st = self.lock();
            let o = st.objects.get_mut(&publisher).expect("created");
            o.name = Some(format!("{room}/{}", p.name));
            if p.tags {
                o.tags.push((keys.room.clone(), room.to_owned()));
                o.tags.push((keys.participant.clone(), p.name.clone()));
                o.tags.push((keys.role.clone(), "publisher".into()));
            }
            // A tag key holds one value (KMS keeps tags in a map): an extra tag replaces.
            for (k, v) in &p.extra_tags {
                o.tags.retain(|(tk, _)| tk != k);
                o.tags.push((k.clone(), v.clone()));
            }
            if let Kind::WebRtc(w) = &mut o.kind {
                w.remote_sdp = Some(offer);
                w.local_sdp = Some(answer);
                w.publisher = Some(media.clone());
            }
            st.objects
                .iter()
                .filter(|(k, o)| o.parent.as_deref() == Some(&pipeline) && **k != publisher)
                .filter_map(|(k, o)| match &o.kind {
                    Kind::WebRtc(WebRtc {
                        publisher: Some(pm),
                        ..
                    }) => Some((k.clone(), pm.name.clone())),
                    _ => None,
                })
                .collect()
        };
        let mut new_links = Vec::new();
        for (other_id, other_name) in &viewers {
            // The newcomer watches each existing participant, and each of them watches the newcomer.
            for (source, source_name, viewer_name) in [
                (other_id.clone(), other_name.clone(), p.name.clone()),
                (publisher.clone(), p.name.clone(), other_name.clone()),
            ] {
                let incoming = self
                    .create(
                        "WebRtcEndpoint",
                        &json!({"mediaPipeline": pipeline}),
                        &mut raised,
                    )
                    .expect("viewer");
                let (o, a) = sdp::webrtc_pair(
                    codec.as_deref(),
                    true,
                    false,
                    "recvonly",
                    u64::from(fastrand::u32(..)),
                );
                let mut st = self.lock();
                let obj = st.objects.get_mut(&incoming).expect("created");
                obj.name = Some(format!("{room}/{viewer_name}<-{source_name}"));
                if p.tags {
                    obj.tags.push((keys.role.clone(), "subscriber".into()));
                }
                if let Kind::WebRtc(w) = &mut obj.kind {
                    w.remote_sdp = Some(o);
                    w.local_sdp = Some(a);
                }
                for m in ["AUDIO", "DATA", "VIDEO"] {
                    new_links.push(Link {
                        source: source.clone(),
                        sink: incoming.clone(),
                        media: m,
                    });
                }
            }
        }
        if p.loopback {
            for m in ["AUDIO", "DATA", "VIDEO"] {
                new_links.push(Link {
                    source: publisher.clone(),
                    sink: publisher.clone(),
                    media: m,
                });
            }
        }
        {
            let mut st = self.lock();
            st.links.extend(new_links);
        }
        for m in ["AUDIO", "VIDEO"] {
            if self.is_publisher_with(&self.lock(), &publisher, m) {
                raised.push(Raised {
                    object: publisher.clone(),
                    ty: "MediaFlowOutStateChanged",
                    data: obj_map(
                        json!({"state": "FLOWING", "padName": "default", "mediaType": m}),
                    ),
                });
            }
        }
        if p.data_channels {
            // The browser created its channel before its offer; KMS 7.3 reports the open twice.
            for _ in 0..2 {
                raised.push(Raised {
                    object: publisher.clone(),
                    ty: "DataChannelOpened",
                    data: obj_map(json!({ "channelId": 0 })),
                });
            }
        }
        self.deliver(raised);
        info!(room, participant = %p.name, endpoint = %publisher, "participant joined");
        publisher
    }

    /// Removes a participant as the app does on leave: releases the publisher, the endpoints that
    /// showed it, and its own viewer endpoints; the room's pipeline when it was the last one.
    pub fn leave(&self, publisher: &str) {
        let mut raised = Vec::new();
        let (pipeline, mut doomed, last) = {
            let st = self.lock();
            let Some(pipe) = st.objects.get(publisher).and_then(|o| o.parent.clone()) else {
                return;
            };
            let name = match &st.objects[publisher].kind {
                Kind::WebRtc(WebRtc {
                    publisher: Some(p), ..
                }) => p.name.clone(),
                _ => return,
            };
            let mut doomed: BTreeSet<String> = st
                .links
                .iter()
                .filter(|l| l.source == publisher)
                .map(|l| l.sink.clone())
                .collect();
            let mine = format!("/{name}<-");
            doomed.extend(
                st.objects
                    .iter()
                    .filter(|(_, o)| o.name.as_deref().is_some_and(|n| n.contains(&mine)))
                    .map(|(k, _)| k.clone()),
            );
            doomed.insert(publisher.to_owned());
            let others = st.objects.iter().any(|(k, o)| {
                k != publisher
                    && o.parent.as_deref() == Some(&pipe)
                    && matches!(
                        o.kind,
                        Kind::WebRtc(WebRtc {
                            publisher: Some(_),
                            ..
                        })
                    )
            });
            (pipe, doomed, !others)
        };
        // Our own simulated app never releases other clients' objects (taps stay with the pipeline).
        doomed.retain(|d| {
            self.lock()
                .objects
                .get(d)
                .is_some_and(|o| matches!(o.kind, Kind::WebRtc(_)))
        });
        for d in &doomed {
            self.release(d, &mut raised);
        }
        if last {
            self.release(&pipeline, &mut raised);
        }
        self.deliver(raised);
        info!(endpoint = %publisher, "participant left");
    }

    /// Number of RTP senders running (for tests and logs).
    pub fn active_senders(&self) -> usize {
        self.lock()
            .objects
            .values()
            .map(|o| match &o.kind {
                Kind::Rtp(r) => r.senders.len(),
                _ => 0,
            })
            .sum()
    }

    /// Ids of every object (for tests).
    pub fn object_ids(&self) -> Vec<String> {
        self.lock().objects.keys().cloned().collect()
    }

    /// Registers the simulated application's own session (so `getSessions` lists it, as KMS would).
    pub fn register_app_session(&self) -> String {
        let s = format!("{}-sim-app", uuid());
        self.lock().sessions.insert(
            s.clone(),
            Session {
                conn: None,
                subs: HashMap::new(),
            },
        );
        s
    }
}

fn obj_map(v: Value) -> Map<String, Value> {
    match v {
        Value::Object(m) => m,
        _ => Map::new(),
    }
}

fn tags_json(tags: &[(String, String)]) -> Value {
    Value::Array(
        tags.iter()
            .map(|(k, v)| json!({"key": k, "value": v, "__module__": "kurento", "__type__": "Tag"}))
            .collect(),
    )
}

fn property_default(kmd: &Kmd, ty: &str, op: &str) -> Value {
    match kmd.property_type(ty, op).as_deref() {
        Some("boolean") => false.into(),
        Some("int") | Some("int64") => 0.into(),
        Some("float") | Some("double") => 0.0.into(),
        Some(t) if t.ends_with("[]") => json!([]),
        Some("String") => "".into(),
        _ => Value::Null,
    }
}

/// KMS `injectRefs`: replaces `newref:N` strings with operation N's result value.
fn inject_refs(v: &mut Value, responses: &[Value]) -> Result<(), RpcError> {
    match v {
        Value::Object(m) => m.values_mut().try_for_each(|x| inject_refs(x, responses)),
        Value::Array(a) => a.iter_mut().try_for_each(|x| inject_refs(x, responses)),
        Value::String(s) if s.len() > 7 && s.starts_with("newref:") => {
            let idx: usize = s[7..].parse().map_err(|_| {
                RpcError::new(
                    40008,
                    "MALFORMED_TRANSACTION",
                    format!("Invalid index of newref '{}'", &s[7..]),
                )
            })?;
            let value = responses
                .get(idx)
                .and_then(|r| r.pointer("/result/value"))
                .cloned()
                .ok_or_else(|| {
                    RpcError::new(
                        40008,
                        "MALFORMED_TRANSACTION",
                        format!("Result not found on request {idx}"),
                    )
                })?;
            *v = value;
            Ok(())
        }
        _ => Ok(()),
    }
}

fn rss_kib() -> i64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|n| n.parse().ok())
        })
        .unwrap_or(0)
}

impl MediaSet {
    /// Drops every object (stops all RTP senders), as a KMS shutdown would.
    pub fn clear(&self) {
        let mut st = self.lock();
        st.objects.retain(|k, _| k == SERVER_MANAGER);
        st.links.clear();
    }
}
