//! The client: a cheap-to-clone handle on the connection actor.

use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};

use serde_json::{json, Value};
use tokio::sync::{mpsc, oneshot, watch};
use tracing::debug;

use crate::config::ClientConfig;
use crate::connection::{self, Actor, Command, ConnectionState, Shared, StatsSnapshot};
use crate::error::{Error, ErrorCode, Result};
use crate::events::{legacy_event_names, EventRouter, EventStream, StreamGuard, SubscriptionKey};
use crate::object::{type_from_id, ObjectRef, RemoteObject};
use crate::protocol::{method, RpcResult};
use crate::transaction::Transaction;
use crate::{MediaPipeline, ServerManager};

/// The fixed id of KMS's ServerManager.
pub const SERVER_MANAGER_ID: &str = "manager_ServerManager";

struct Inner {
    cmd_tx: mpsc::Sender<Command>,
    shared: Arc<Shared>,
    state_rx: watch::Receiver<ConnectionState>,
    config: ClientConfig,
    /// Serializes subscribe/unsubscribe so one (object, event) never gets two server subscriptions.
    subscribe_lock: tokio::sync::Mutex<()>,
}

/// An async client for one Kurento Media Server.
///
/// Cloning is cheap; every clone talks through the same connection. The connection is closed when
/// [`KurentoClient::close`] is called or the last clone is dropped.
#[derive(Clone)]
pub struct KurentoClient {
    inner: Arc<Inner>,
}

/// What `describe` says about an object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Description {
    /// Short type, e.g. `WebRtcEndpoint`.
    pub type_name: String,
    /// Qualified type, e.g. `kurento.WebRtcEndpoint`.
    pub qualified_type: String,
    /// Qualified ancestors, e.g. `["kurento.BaseRtpEndpoint", …, "kurento.MediaObject"]`.
    pub hierarchy: Vec<String>,
}

impl KurentoClient {
    /// Connects with default settings to `ws://host:8888/kurento` (or `wss://…`).
    pub async fn connect(url: impl Into<String>) -> Result<Self> {
        Self::connect_with(ClientConfig::new(url)).await
    }

    /// Connects with the given settings. Fails if the first connection cannot be made; after that the
    /// client reconnects by itself according to [`ClientConfig::reconnect`].
    pub async fn connect_with(mut config: ClientConfig) -> Result<Self> {
        if config.url.starts_with("wss:") && config.tls.is_none() {
            config.tls = Some(default_tls());
        }
        let shared = Arc::new(Shared {
            ids: AtomicU64::new(1),
            stats: Default::default(),
            router: Mutex::new(EventRouter::default()),
            session: Mutex::new(None),
        });
        let mut socket = connection::open_socket(&config).await?;
        let first = connection::first_attach(&mut socket, &shared, config.connect_timeout).await?;
        let (cmd_tx, cmd_rx) = mpsc::channel(1024);
        let (state_tx, state_rx) = watch::channel(ConnectionState::Connecting { attempt: 1 });
        let actor = Actor::new(config.clone(), shared.clone(), cmd_rx, state_tx);
        tokio::spawn(actor.run(socket, first));
        let client = KurentoClient {
            inner: Arc::new(Inner {
                cmd_tx,
                shared,
                state_rx,
                config,
                subscribe_lock: tokio::sync::Mutex::new(()),
            }),
        };
        // The actor publishes Connected synchronously at start; wait for it so state() is meaningful.
        let mut rx = client.state();
        let _ = rx
            .wait_for(|s| !matches!(s, ConnectionState::Connecting { .. }))
            .await;
        Ok(client)
    }

    /// The connection state, as a `watch` receiver: await `changed()` to learn about reconnections and
    /// whether the session survived them ([`crate::Recovery`]).
    pub fn state(&self) -> watch::Receiver<ConnectionState> {
        self.inner.state_rx.clone()
    }

    /// The current session id.
    pub fn session_id(&self) -> Option<String> {
        self.inner
            .shared
            .session
            .lock()
            .expect("session lock")
            .clone()
    }

    /// Counters about the connection (decode errors, dropped events, reconnections…).
    pub fn stats(&self) -> StatsSnapshot {
        self.inner.shared.stats.snapshot()
    }

    /// The configuration in use.
    pub fn config(&self) -> &ClientConfig {
        &self.inner.config
    }

    /// Sends one JSON-RPC request and waits for its answer (the lowest level; prefer the typed API).
    pub async fn request(&self, method: &'static str, params: Value) -> Result<RpcResult> {
        let id = self.inner.shared.next_id();
        let (reply, rx) = oneshot::channel();
        self.inner
            .cmd_tx
            .send(Command::Request {
                id,
                method,
                params,
                reply,
            })
            .await
            .map_err(|_| Error::Closed)?;
        let timeout = self.inner.config.request_timeout;
        match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(Error::Closed),
            Err(_) => {
                let _ = self.inner.cmd_tx.try_send(Command::Forget(id));
                Err(Error::Timeout {
                    id,
                    method: method.to_owned(),
                    timeout,
                })
            }
        }
    }

    /// Calls `operation` on `object` with `params` (an object, or `null` for none) and returns
    /// `result.value`. The untyped escape hatch for operations of custom modules.
    pub async fn invoke(&self, object: &str, operation: &str, params: Value) -> Result<Value> {
        let mut p = json!({"object": object, "operation": operation});
        if !params.is_null() {
            p["operationParams"] = params;
        }
        Ok(self.request(method::INVOKE, p).await?.into_value())
    }

    /// Creates an object of `type_name` with the given constructor parameters; returns its id.
    pub async fn create_raw(&self, type_name: &str, constructor_params: Value) -> Result<String> {
        let params =
            json!({"type": type_name, "constructorParams": constructor_params, "properties": {}});
        let result = self.request(method::CREATE, params).await?;
        match result.into_value() {
            Value::String(id) => Ok(id),
            other => Err(Error::UnexpectedResponse {
                operation: "create".into(),
                reason: format!("expected an object id, got {other}"),
            }),
        }
    }

    /// Creates a new media pipeline (a room, in a group-call application).
    pub async fn create_pipeline(&self) -> Result<MediaPipeline> {
        MediaPipeline::builder(self).await
    }

    /// Releases an object. **Global in KMS**: see [`crate::Subscribe::release`]; only release what
    /// your code created.
    pub async fn release(&self, object: &str) -> Result<()> {
        self.request(method::RELEASE, json!({ "object": object }))
            .await
            .map(|_| ())
    }

    /// Asks the server for an object's type (this also refs the object into our session).
    pub async fn describe(&self, object: &str) -> Result<Description> {
        let r = self
            .request(method::DESCRIBE, json!({ "object": object }))
            .await?;
        let field = |name: &str| {
            r.0.get(name)
                .and_then(Value::as_str)
                .map(str::to_owned)
                .ok_or_else(|| Error::UnexpectedResponse {
                    operation: "describe".into(),
                    reason: format!("missing `{name}`"),
                })
        };
        let hierarchy =
            r.0.get("hierarchy")
                .and_then(Value::as_array)
                .map(|a| {
                    a.iter()
                        .filter_map(Value::as_str)
                        .map(str::to_owned)
                        .collect()
                })
                .unwrap_or_default();
        Ok(Description {
            type_name: field("type")?,
            qualified_type: field("qualifiedType")?,
            hierarchy,
        })
    }

    /// A typed handle for an object another client created, checked against the type in its id.
    pub fn object<T: RemoteObject>(&self, id: &str) -> Result<T> {
        match type_from_id(id) {
            Some((_, ty)) if T::accepts_type(ty) => Ok(T::from_ref(ObjectRef::new(self, id))),
            Some((_, ty)) => Err(Error::WrongType {
                id: id.to_owned(),
                expected: T::TYPE_NAME,
                actual: ty.to_owned(),
            }),
            None => Err(Error::WrongType {
                id: id.to_owned(),
                expected: T::TYPE_NAME,
                actual: "an id without a type".into(),
            }),
        }
    }

    /// A typed handle for an existing object, checked with `describe` (works for any id form).
    pub async fn describe_as<T: RemoteObject>(&self, id: &str) -> Result<T> {
        let d = self.describe(id).await?;
        let qualified = format!("{}.{}", T::MODULE, T::TYPE_NAME);
        if d.type_name == T::TYPE_NAME
            || d.qualified_type == qualified
            || d.hierarchy.contains(&qualified)
        {
            Ok(T::from_ref(ObjectRef::new(self, id)))
        } else {
            Err(Error::WrongType {
                id: id.to_owned(),
                expected: T::TYPE_NAME,
                actual: d.qualified_type,
            })
        }
    }

    /// The server manager (`manager_ServerManager`): info, pipelines, sessions, load, and the
    /// `ObjectCreated`/`ObjectDestroyed` events of every object on the server.
    pub fn server_manager(&self) -> ServerManager {
        ServerManager::from_ref(ObjectRef::new(self, SERVER_MANAGER_ID))
    }

    /// Application-level ping (`ping`); KMS answers `pong`.
    pub async fn ping(&self) -> Result<()> {
        self.request(method::PING, json!({"interval": 240000}))
            .await
            .map(|_| ())
    }

    /// Starts a transaction: several operations in one round trip.
    pub fn transaction(&self) -> Transaction {
        Transaction::new(self.clone())
    }

    /// Subscribes to an event by name, untyped (the escape hatch for custom modules' events).
    pub async fn subscribe_raw(
        &self,
        object: &str,
        event_type: &str,
    ) -> Result<EventStream<crate::events::RawEvent>> {
        self.subscribe(object, event_type).await
    }

    pub(crate) async fn subscribe<T>(
        &self,
        object: &str,
        event_type: &str,
    ) -> Result<EventStream<T>> {
        let _guard = self.inner.subscribe_lock.lock().await;
        let key = SubscriptionKey {
            object: object.to_owned(),
            event_type: event_type.to_owned(),
        };
        let (tx, rx) = mpsc::channel(self.inner.config.event_buffer);
        let router = &self.inner.shared.router;
        let (local_id, created) = router.lock().expect("router lock").add(&key, tx);
        let stream_guard = StreamGuard {
            key: key.clone(),
            local_id,
            shared: Arc::downgrade(&self.inner.shared),
            cmd_tx: self.inner.cmd_tx.clone(),
        };
        if created {
            let mut names = vec![event_type];
            names.extend_from_slice(legacy_event_names(event_type));
            let mut last_err = None;
            for name in names {
                match self
                    .request(method::SUBSCRIBE, json!({"type": name, "object": object}))
                    .await
                {
                    Ok(r) => {
                        let sub = r.value().as_str().unwrap_or_default().to_owned();
                        router.lock().expect("router lock").confirm(&key, sub, name);
                        last_err = None;
                        break;
                    }
                    Err(e) if e.code() == Some(ErrorCode::MediaObjectEventNotSupported) => {
                        debug!(
                            object,
                            event = name,
                            "event name refused, trying the 6.x name"
                        );
                        last_err = Some(e);
                    }
                    Err(e) => {
                        last_err = Some(e);
                        break;
                    }
                }
            }
            if let Some(e) = last_err {
                drop(stream_guard);
                return Err(e);
            }
        }
        Ok(EventStream::new(rx, stream_guard))
    }

    /// Drops the current socket as if the network failed (the client then reconnects). For tests of
    /// recovery paths.
    #[doc(hidden)]
    pub async fn drop_socket_for_test(&self) {
        let _ = self.inner.cmd_tx.send(Command::DropSocket).await;
    }

    /// Closes the connection. Pending requests fail with [`Error::Closed`]; event streams end.
    /// Nothing is released on the server.
    pub async fn close(&self) {
        let _ = self.inner.cmd_tx.send(Command::Close).await;
        let mut rx = self.state();
        let _ = rx
            .wait_for(|s| matches!(s, ConnectionState::Closed { .. }))
            .await;
    }
}

fn default_tls() -> Arc<rustls::ClientConfig> {
    let roots = rustls::RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("ring supports the default TLS versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    Arc::new(config)
}
