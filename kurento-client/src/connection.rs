//! The connection actor: one task owns the WebSocket, correlates answers to requests by id, fans events
//! out to subscribers without ever awaiting them, pings, and reconnects with session recovery.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot, watch};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use tracing::{debug, info, warn};

use crate::config::ClientConfig;
use crate::error::{Error, ErrorCode, ServerError};
use crate::events::{EventRouter, SubscriptionKey};
use crate::protocol::{self, method, RpcResult, ServerMessage};

type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;
pub(crate) type Reply = oneshot::Sender<Result<RpcResult, Error>>;

/// What the server session looks like after a (re)connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recovery {
    /// First connection of this client.
    Initial,
    /// The socket was re-established and the server kept our session: object handles, subscriptions
    /// and everything created before are still valid. Events raised while disconnected are lost.
    SameSession,
    /// Same server, but our session was gone (error 40007): objects owned only by us may have been
    /// garbage-collected; subscriptions were re-made where their objects still exist.
    NewSession,
    /// A different server instance (`serverId` changed: KMS restarted). Every object id from before is
    /// stale; only subscriptions on `manager_ServerManager` survive (re-made).
    NewServer,
}

/// The connection's state, published on a `watch` channel ([`crate::KurentoClient::state`]).
#[derive(Debug, Clone, PartialEq)]
pub enum ConnectionState {
    /// Opening the socket (attempt number, from 1).
    Connecting {
        /// Attempt number since the last loss.
        attempt: u32,
    },
    /// Connected and attached to a session.
    Connected {
        /// Our session id.
        session_id: String,
        /// The server instance id (`serverId`), if the server reports one.
        server_id: Option<String>,
        /// How this connection relates to the previous one.
        recovery: Recovery,
        /// Increases on every successful (re)connection.
        generation: u64,
    },
    /// The socket dropped; waiting before the next attempt.
    Disconnected {
        /// Why.
        reason: String,
        /// Attempts so far.
        attempt: u32,
    },
    /// The client is closed (by the user, or reconnection gave up).
    Closed {
        /// Why.
        reason: String,
    },
}

impl ConnectionState {
    /// True when connected.
    pub fn is_connected(&self) -> bool {
        matches!(self, ConnectionState::Connected { .. })
    }
}

/// Counters describing what the connection saw; cheap to read at any time.
#[derive(Debug, Default)]
pub struct ClientStats {
    pub(crate) decode_errors: AtomicU64,
    pub(crate) unknown_responses: AtomicU64,
    pub(crate) events_received: AtomicU64,
    pub(crate) events_dropped: AtomicU64,
    pub(crate) reconnects: AtomicU64,
    pub(crate) requests_sent: AtomicU64,
}

/// A snapshot of [`ClientStats`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct StatsSnapshot {
    /// Server frames that were not valid JSON-RPC (each also logged).
    pub decode_errors: u64,
    /// Answers whose id matched no request in flight (late answers to timed-out requests included).
    pub unknown_responses: u64,
    /// Event notifications received.
    pub events_received: u64,
    /// Event deliveries dropped because a subscriber's buffer was full.
    pub events_dropped: u64,
    /// Successful reconnections.
    pub reconnects: u64,
    /// Requests written to the socket.
    pub requests_sent: u64,
}

impl ClientStats {
    pub(crate) fn snapshot(&self) -> StatsSnapshot {
        StatsSnapshot {
            decode_errors: self.decode_errors.load(Ordering::Relaxed),
            unknown_responses: self.unknown_responses.load(Ordering::Relaxed),
            events_received: self.events_received.load(Ordering::Relaxed),
            events_dropped: self.events_dropped.load(Ordering::Relaxed),
            reconnects: self.reconnects.load(Ordering::Relaxed),
            requests_sent: self.requests_sent.load(Ordering::Relaxed),
        }
    }
}

pub(crate) enum Command {
    Request {
        id: u64,
        method: &'static str,
        params: Value,
        reply: Reply,
    },
    /// The caller gave up (timeout): drop the pending entry so it does not leak.
    Forget(u64),
    /// The last local subscriber of a server subscription went away.
    Unsubscribe {
        object: String,
        subscription: String,
    },
    /// Drop the socket now (used by tests and by keep-alive failure).
    DropSocket,
    Close,
}

enum Waiter {
    User { method: &'static str, reply: Reply },
    Resubscribe(SubscriptionKey),
    Ping,
    Ignore,
}

struct Outgoing {
    id: u64,
    method: &'static str,
    params: Value,
    waiter: Waiter,
}

pub(crate) struct Shared {
    pub ids: AtomicU64,
    pub stats: ClientStats,
    pub router: Mutex<EventRouter>,
    pub session: Mutex<Option<String>>,
}

impl Shared {
    pub fn next_id(&self) -> u64 {
        self.ids.fetch_add(1, Ordering::Relaxed)
    }
}

pub(crate) struct Actor {
    config: ClientConfig,
    shared: Arc<Shared>,
    cmd_rx: mpsc::Receiver<Command>,
    state_tx: watch::Sender<ConnectionState>,
    pending: HashMap<u64, Waiter>,
    waiting: VecDeque<Outgoing>,
    session_id: Option<String>,
    server_id: Option<String>,
    generation: u64,
    outstanding_ping: Option<(u64, Instant)>,
}

enum Exit {
    /// The socket is gone; reconnect.
    Lost(String),
    /// Close the client.
    Close,
}

/// Opens a WebSocket to the configured URL within the connect timeout.
pub(crate) async fn open_socket(config: &ClientConfig) -> Result<Socket, Error> {
    let ws_config = WebSocketConfig::default()
        .max_message_size(Some(config.max_message_size))
        .max_frame_size(Some(config.max_message_size));
    let connector = config.tls.clone().map(tokio_tungstenite::Connector::Rustls);
    let fut = tokio_tungstenite::connect_async_tls_with_config(
        config.url.as_str(),
        Some(ws_config),
        true,
        connector,
    );
    match tokio::time::timeout(config.connect_timeout, fut).await {
        Ok(Ok((socket, _response))) => Ok(socket),
        Ok(Err(e)) => Err(Error::Connect {
            url: config.url.clone(),
            reason: e.to_string(),
        }),
        Err(_) => Err(Error::Connect {
            url: config.url.clone(),
            reason: format!("no answer within {:?}", config.connect_timeout),
        }),
    }
}

impl Actor {
    pub fn new(
        config: ClientConfig,
        shared: Arc<Shared>,
        cmd_rx: mpsc::Receiver<Command>,
        state_tx: watch::Sender<ConnectionState>,
    ) -> Self {
        Actor {
            config,
            shared,
            cmd_rx,
            state_tx,
            pending: HashMap::new(),
            waiting: VecDeque::new(),
            session_id: None,
            server_id: None,
            generation: 0,
            outstanding_ping: None,
        }
    }

    /// Runs the actor, starting from an already opened and attached socket.
    pub async fn run(mut self, mut socket: Socket, first: RpcResult) {
        self.adopt_session(&first, Recovery::Initial);
        loop {
            let exit = self.serve(&mut socket).await;
            let reason = match exit {
                Exit::Close => {
                    let _ = socket.close(None).await;
                    self.shutdown("closed by the client".into());
                    return;
                }
                Exit::Lost(reason) => reason,
            };
            warn!(url = %self.config.url, %reason, "Kurento connection lost");
            self.fail_pending(|id, method| Error::ConnectionLost {
                id,
                method: method.to_owned(),
            });
            match self.reconnect(reason).await {
                Some(s) => socket = s,
                None => return,
            }
        }
    }

    fn shutdown(&mut self, reason: String) {
        self.fail_pending(|_, _| Error::Closed);
        for out in self.waiting.drain(..) {
            if let Waiter::User { reply, .. } = out.waiter {
                let _ = reply.send(Err(Error::Closed));
            }
        }
        self.shared.router.lock().expect("router lock").close_all();
        let _ = self.state_tx.send(ConnectionState::Closed { reason });
        // Anything still queued in the command channel gets answered too.
        self.cmd_rx.close();
        while let Ok(cmd) = self.cmd_rx.try_recv() {
            if let Command::Request { reply, .. } = cmd {
                let _ = reply.send(Err(Error::Closed));
            }
        }
    }

    fn fail_pending(&mut self, err: impl Fn(u64, &str) -> Error) {
        for (id, waiter) in self.pending.drain() {
            if let Waiter::User { method, reply } = waiter {
                let _ = reply.send(Err(err(id, method)));
            }
        }
        self.outstanding_ping = None;
    }

    fn adopt_session(&mut self, result: &RpcResult, recovery: Recovery) {
        let session = result.session_id().map(str::to_owned);
        let server = result
            .0
            .get("serverId")
            .and_then(Value::as_str)
            .map(str::to_owned);
        self.session_id = session.clone();
        self.server_id = server.clone();
        *self.shared.session.lock().expect("session lock") = session.clone();
        self.generation += 1;
        info!(session = ?session, server = ?server, ?recovery, "attached to Kurento session");
        let _ = self.state_tx.send(ConnectionState::Connected {
            session_id: session.unwrap_or_default(),
            server_id: server,
            recovery,
            generation: self.generation,
        });
    }

    /// Reconnects with backoff; returns the new socket, or None when the client closed or gave up.
    async fn reconnect(&mut self, mut reason: String) -> Option<Socket> {
        let policy = self.config.reconnect.clone();
        let mut attempt: u32 = 0;
        loop {
            if !policy.enabled || policy.max_attempts.is_some_and(|max| attempt >= max) {
                self.shutdown(format!("gave up reconnecting: {reason}"));
                return None;
            }
            let _ = self.state_tx.send(ConnectionState::Disconnected {
                reason: reason.clone(),
                attempt,
            });
            let delay = policy.delay(attempt);
            if !self.idle_for(delay).await {
                self.shutdown("closed by the client".into());
                return None;
            }
            attempt += 1;
            let _ = self.state_tx.send(ConnectionState::Connecting { attempt });
            let mut socket = match open_socket(&self.config).await {
                Ok(s) => s,
                Err(e) => {
                    debug!(attempt, error = %e, "reconnect attempt failed");
                    reason = e.to_string();
                    continue;
                }
            };
            match self.reattach(&mut socket).await {
                Ok(()) => {
                    self.shared.stats.reconnects.fetch_add(1, Ordering::Relaxed);
                    return Some(socket);
                }
                Err(Exit::Close) => {
                    self.shutdown("closed by the client".into());
                    return None;
                }
                Err(Exit::Lost(r)) => {
                    reason = r;
                }
            }
        }
    }

    /// Waits `delay` while still accepting commands (queued for later). False if the client closed.
    async fn idle_for(&mut self, delay: Duration) -> bool {
        let sleep = tokio::time::sleep(delay);
        tokio::pin!(sleep);
        loop {
            tokio::select! {
                _ = &mut sleep => return true,
                cmd = self.cmd_rx.recv() => match cmd {
                    None | Some(Command::Close) => return false,
                    Some(cmd) => self.queue_while_disconnected(cmd),
                },
            }
        }
    }

    fn queue_while_disconnected(&mut self, cmd: Command) {
        match cmd {
            Command::Request {
                id,
                method,
                params,
                reply,
            } => {
                if self.waiting.len() >= self.config.max_queued_while_disconnected {
                    let _ = reply.send(Err(Error::ConnectionLost {
                        id,
                        method: method.to_owned(),
                    }));
                } else {
                    self.waiting.push_back(Outgoing {
                        id,
                        method,
                        params,
                        waiter: Waiter::User { method, reply },
                    });
                }
            }
            Command::Forget(id) => self.waiting.retain(|o| o.id != id),
            // The server subscription dies with the session or is re-made; nothing to send now.
            Command::Unsubscribe { .. } | Command::DropSocket | Command::Close => {}
        }
    }

    /// Re-attaches to our session on a fresh socket (`connect {sessionId}`), falling back to a new
    /// session on 40007; then re-subscribes if the session changed and flushes queued requests.
    async fn reattach(&mut self, socket: &mut Socket) -> Result<(), Exit> {
        let params = match &self.session_id {
            Some(s) => json!({ "sessionId": s }),
            None => Value::Null,
        };
        let result = match self.handshake(socket, params).await? {
            Ok(r) => r,
            Err(e) if e.code == ErrorCode::InvalidSession => {
                info!("Kurento session expired (40007); starting a new one");
                self.session_id = None;
                match self.handshake(socket, Value::Null).await? {
                    Ok(r) => r,
                    Err(e) => return Err(Exit::Lost(format!("connect failed: {e}"))),
                }
            }
            Err(e) => return Err(Exit::Lost(format!("connect failed: {e}"))),
        };
        let new_server = result
            .0
            .get("serverId")
            .and_then(Value::as_str)
            .map(str::to_owned);
        let recovery = if new_server.is_some() && new_server != self.server_id {
            Recovery::NewServer
        } else if result.session_id() != self.session_id.as_deref() {
            Recovery::NewSession
        } else {
            Recovery::SameSession
        };
        self.adopt_session(&result, recovery);
        if recovery != Recovery::SameSession {
            self.resubscribe_all(socket).await?;
        }
        let queued: Vec<Outgoing> = self.waiting.drain(..).collect();
        for out in queued {
            self.send(socket, out).await?;
        }
        Ok(())
    }

    async fn resubscribe_all(&mut self, socket: &mut Socket) -> Result<(), Exit> {
        let keys = self
            .shared
            .router
            .lock()
            .expect("router lock")
            .keys_for_resubscribe();
        for key in keys {
            let id = self.shared.next_id();
            let params = json!({"type": key.event_type, "object": key.object});
            self.send(
                socket,
                Outgoing {
                    id,
                    method: method::SUBSCRIBE,
                    params,
                    waiter: Waiter::Resubscribe(key),
                },
            )
            .await?;
        }
        Ok(())
    }

    /// Sends `connect` and waits for its answer, queueing commands and routing events meanwhile.
    async fn handshake(
        &mut self,
        socket: &mut Socket,
        params: Value,
    ) -> Result<Result<RpcResult, ServerError>, Exit> {
        let id = self.shared.next_id();
        let frame = protocol::encode_request(id, method::CONNECT, &params);
        write(socket, frame).await?;
        let deadline = tokio::time::sleep(self.config.request_timeout);
        tokio::pin!(deadline);
        loop {
            tokio::select! {
                _ = &mut deadline => return Err(Exit::Lost("no answer to connect".into())),
                cmd = self.cmd_rx.recv() => match cmd {
                    None | Some(Command::Close) => return Err(Exit::Close),
                    Some(cmd) => self.queue_while_disconnected(cmd),
                },
                msg = socket.next() => {
                    let text = match read_text(msg, &self.shared.stats)? {
                        Some(t) => t,
                        None => continue,
                    };
                    match protocol::decode_server_message(&text) {
                        Ok(ServerMessage::Response { id: rid, result }) if rid == id => return Ok(result),
                        Ok(ServerMessage::Event(ev)) => self.route_event(ev),
                        Ok(_) => { self.shared.stats.unknown_responses.fetch_add(1, Ordering::Relaxed); }
                        Err(e) => self.count_decode_error(&e, &text),
                    }
                }
            }
        }
    }

    /// Serves a connected socket until it drops or the client closes.
    async fn serve(&mut self, socket: &mut Socket) -> Exit {
        let mut ping = self.config.keepalive_interval.map(|every| {
            let mut t = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
            t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            t
        });
        loop {
            tokio::select! {
                cmd = self.cmd_rx.recv() => {
                    let result = match cmd {
                        None | Some(Command::Close) => return Exit::Close,
                        Some(Command::DropSocket) => return Exit::Lost("socket dropped on request".into()),
                        Some(Command::Forget(id)) => { self.pending.remove(&id); Ok(()) }
                        Some(Command::Unsubscribe { object, subscription }) => {
                            let id = self.shared.next_id();
                            let params = json!({"subscription": subscription, "object": object});
                            self.send(socket, Outgoing { id, method: method::UNSUBSCRIBE, params, waiter: Waiter::Ignore }).await
                        }
                        Some(Command::Request { id, method, params, reply }) => {
                            self.send(socket, Outgoing { id, method, params, waiter: Waiter::User { method, reply } }).await
                        }
                    };
                    if let Err(exit) = result { return exit; }
                }
                msg = socket.next() => {
                    match read_text(msg, &self.shared.stats) {
                        Err(exit) => return exit,
                        Ok(None) => {}
                        Ok(Some(text)) => self.handle_text(&text),
                    }
                }
                _ = tick(&mut ping) => {
                    if let Some((_, sent)) = self.outstanding_ping {
                        if sent.elapsed() >= self.config.keepalive_timeout() {
                            return Exit::Lost("keep-alive ping unanswered".into());
                        }
                        continue;
                    }
                    let id = self.shared.next_id();
                    let interval = self.config.keepalive_interval.unwrap_or_default().as_millis() as u64;
                    self.outstanding_ping = Some((id, Instant::now()));
                    if let Err(exit) = self.send(socket, Outgoing { id, method: method::PING, params: json!({"interval": interval}), waiter: Waiter::Ping }).await {
                        return exit;
                    }
                }
            }
        }
    }

    async fn send(&mut self, socket: &mut Socket, mut out: Outgoing) -> Result<(), Exit> {
        // Every request carries our session id, as KMS's own clients do; `connect` is handled apart.
        if let (Some(session), Value::Object(map)) = (&self.session_id, &mut out.params) {
            map.entry("sessionId")
                .or_insert_with(|| Value::String(session.clone()));
        } else if let (Some(session), Value::Null) = (&self.session_id, &out.params) {
            out.params = json!({ "sessionId": session });
        }
        let frame = protocol::encode_request(out.id, out.method, &out.params);
        self.pending.insert(out.id, out.waiter);
        self.shared
            .stats
            .requests_sent
            .fetch_add(1, Ordering::Relaxed);
        write(socket, frame).await
    }

    fn handle_text(&mut self, text: &str) {
        match protocol::decode_server_message(text) {
            Ok(ServerMessage::Response { id, result }) => self.complete(id, result),
            Ok(ServerMessage::Event(ev)) => self.route_event(ev),
            Ok(ServerMessage::UncorrelatedError(e)) => {
                warn!(error = %e, "server error not tied to a request");
            }
            Ok(ServerMessage::Other { method }) => {
                debug!(%method, "ignoring server request");
            }
            Err(e) => self.count_decode_error(&e, text),
        }
    }

    fn count_decode_error(&self, e: &crate::error::DecodeError, text: &str) {
        self.shared
            .stats
            .decode_errors
            .fetch_add(1, Ordering::Relaxed);
        let head: String = text.chars().take(200).collect();
        warn!(error = %e, frame = %head, "undecodable message from Kurento");
    }

    fn complete(&mut self, id: u64, result: Result<RpcResult, ServerError>) {
        let Some(waiter) = self.pending.remove(&id) else {
            self.shared
                .stats
                .unknown_responses
                .fetch_add(1, Ordering::Relaxed);
            debug!(id, "answer for no request in flight");
            return;
        };
        match waiter {
            Waiter::User { reply, .. } => {
                let _ = reply.send(result.map_err(Error::Server));
            }
            Waiter::Ping => {
                if self.outstanding_ping.is_some_and(|(pid, _)| pid == id) {
                    self.outstanding_ping = None;
                }
            }
            Waiter::Resubscribe(key) => {
                let mut router = self.shared.router.lock().expect("router lock");
                match result {
                    Ok(r) => match r.value().as_str() {
                        Some(sub) => router.set_server_subscription(&key, sub.to_owned()),
                        None => router.close_key(&key),
                    },
                    Err(e) => {
                        debug!(object = %key.object, event = %key.event_type, error = %e, "subscription not restored");
                        router.close_key(&key);
                    }
                }
            }
            Waiter::Ignore => {}
        }
    }

    fn route_event(&self, ev: protocol::EventNotification) {
        let stats = &self.shared.stats;
        stats.events_received.fetch_add(1, Ordering::Relaxed);
        let dropped = self.shared.router.lock().expect("router lock").dispatch(ev);
        if dropped > 0 {
            stats
                .events_dropped
                .fetch_add(dropped as u64, Ordering::Relaxed);
        }
    }
}

async fn tick(interval: &mut Option<tokio::time::Interval>) {
    match interval {
        Some(i) => {
            i.tick().await;
        }
        None => std::future::pending().await,
    }
}

async fn write(socket: &mut Socket, frame: String) -> Result<(), Exit> {
    socket
        .send(Message::text(frame))
        .await
        .map_err(|e| Exit::Lost(format!("write failed: {e}")))
}

/// Turns a socket item into text to decode, `None` for frames to skip, or the reason the socket is gone.
fn read_text(
    msg: Option<Result<Message, tokio_tungstenite::tungstenite::Error>>,
    stats: &ClientStats,
) -> Result<Option<String>, Exit> {
    match msg {
        None => Err(Exit::Lost("server closed the socket".into())),
        Some(Err(e)) => Err(Exit::Lost(format!("read failed: {e}"))),
        Some(Ok(Message::Text(t))) => Ok(Some(t.as_str().to_owned())),
        Some(Ok(Message::Binary(b))) => {
            stats.decode_errors.fetch_add(1, Ordering::Relaxed);
            warn!("{}", crate::error::DecodeError::Binary(b.len()));
            Ok(None)
        }
        Some(Ok(Message::Close(frame))) => Err(Exit::Lost(format!(
            "server closed the socket: {}",
            frame.map(|f| f.reason.to_string()).unwrap_or_default()
        ))),
        Some(Ok(_)) => Ok(None),
    }
}

/// Performs the first attach on a new client: `connect` with no params (a new session).
pub(crate) async fn first_attach(
    socket: &mut Socket,
    shared: &Shared,
    timeout: Duration,
) -> Result<RpcResult, Error> {
    let id = shared.next_id();
    write(
        socket,
        protocol::encode_request(id, method::CONNECT, &Value::Null),
    )
    .await
    .map_err(|_| Error::ConnectionLost {
        id,
        method: method::CONNECT.into(),
    })?;
    let wait = async {
        loop {
            let msg = socket.next().await;
            let text = match read_text(msg, &shared.stats) {
                Ok(Some(t)) => t,
                Ok(None) => continue,
                Err(_) => {
                    return Err(Error::ConnectionLost {
                        id,
                        method: method::CONNECT.into(),
                    })
                }
            };
            match protocol::decode_server_message(&text) {
                Ok(ServerMessage::Response { id: rid, result }) if rid == id => {
                    return result.map_err(Error::Server)
                }
                Ok(_) => {}
                Err(e) => return Err(Error::Decode(e)),
            }
        }
    };
    tokio::time::timeout(timeout, wait)
        .await
        .map_err(|_| Error::Timeout {
            id,
            method: method::CONNECT.into(),
            timeout,
        })?
}
