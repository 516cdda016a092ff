//! Handles to remote objects and the plumbing the generated API is built on.

use std::future::Future;
use std::sync::Arc;

use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::{Map, Value};

use crate::client::KurentoClient;
use crate::error::{Error, Result};
use crate::events::{Emits, Event, EventStream};

/// A reference to a server-side object: its id and the client that talks to its server.
#[derive(Clone)]
pub struct ObjectRef {
    id: Arc<str>,
    client: KurentoClient,
}

impl std::fmt::Debug for ObjectRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("ObjectRef").field(&self.id).finish()
    }
}

impl PartialEq for ObjectRef {
    fn eq(&self, other: &Self) -> bool {
        self.id == other.id
    }
}
impl Eq for ObjectRef {}

impl std::hash::Hash for ObjectRef {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.id.hash(state)
    }
}

impl ObjectRef {
    /// Wraps an id. No request is made.
    pub fn new(client: &KurentoClient, id: impl Into<Arc<str>>) -> Self {
        ObjectRef {
            id: id.into(),
            client: client.clone(),
        }
    }

    /// The object id, e.g. `5f87…_kurento.MediaPipeline/121d…_kurento.RtpEndpoint`.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The client this object belongs to.
    pub fn client(&self) -> &KurentoClient {
        &self.client
    }

    /// Calls an operation and decodes the answer with `decode`. Used by the generated API.
    #[doc(hidden)]
    pub fn call<R: Send + 'static>(
        &self,
        operation: &'static str,
        params: Params,
        decode: fn(&KurentoClient, &'static str, Value) -> Result<R>,
    ) -> impl Future<Output = Result<R>> + Send + 'static {
        let client = self.client.clone();
        let id = self.id.clone();
        async move {
            let params = params.finish()?;
            let value = client.invoke(&id, operation, params).await?;
            decode(&client, operation, value)
        }
    }
}

/// The type name encoded in a Kurento object id: `…_kurento.WebRtcEndpoint` → (`kurento`,
/// `WebRtcEndpoint`). KMS builds ids as `<parent>/<uuid>_<module>.<Type>`.
pub fn type_from_id(id: &str) -> Option<(&str, &str)> {
    let last = id.rsplit('/').next()?;
    let (_, qualified) = last.rsplit_once('_')?;
    let (module, ty) = qualified.split_once('.')?;
    if module.is_empty() || ty.is_empty() {
        return None;
    }
    Some((module, ty))
}

/// Every typed handle (generated for each remote class).
pub trait RemoteObject: Clone + Send + Sync + 'static {
    /// The class name, e.g. `WebRtcEndpoint`.
    const TYPE_NAME: &'static str;
    /// The module that defines it, e.g. `kurento`.
    const MODULE: &'static str;
    /// Wraps a reference without checking its type.
    fn from_ref(r: ObjectRef) -> Self;
    /// The underlying reference.
    fn object_ref(&self) -> &ObjectRef;
    /// The object id.
    fn id(&self) -> &str {
        self.object_ref().id()
    }
    /// True when `type_name` is this class or one of its subclasses.
    fn accepts_type(type_name: &str) -> bool;
}

/// `Self` is a `T` (the same class or a subclass): it can be passed where the API wants a `T`.
pub trait IsA<T: RemoteObject>: RemoteObject {
    /// Upcasts the handle.
    fn upcast(&self) -> T {
        T::from_ref(self.object_ref().clone())
    }
}

/// Subscribing to typed events, for every object.
pub trait Subscribe: RemoteObject {
    /// Subscribes to `E` on this object; `E` must be an event this class emits. On a 6.x server the
    /// older event name is tried when the 7.x name is refused (40106).
    fn on<E: Event>(&self) -> impl Future<Output = Result<EventStream<E>>> + Send
    where
        Self: Emits<E>,
    {
        let client = self.object_ref().client().clone();
        let id = self.id().to_owned();
        async move { client.subscribe::<E>(&id, E::NAME).await }
    }

    /// Releases the object on the server.
    ///
    /// **Release is global in KMS**: it destroys the object for every session, the application's
    /// included. Only release objects your own code created; releasing an application's endpoint
    /// ends that participant's call.
    fn release(&self) -> impl Future<Output = Result<()>> + Send {
        let client = self.object_ref().client().clone();
        let id = self.id().to_owned();
        async move { client.release(&id).await }
    }

    /// Views the handle as another class, checking the type encoded in the id.
    fn downcast<T: RemoteObject>(&self) -> Option<T> {
        let (_, ty) = type_from_id(self.id())?;
        T::accepts_type(ty).then(|| T::from_ref(self.object_ref().clone()))
    }
}

impl<T: RemoteObject> Subscribe for T {}

/// Something that builds an object on the server (generated for each class with a constructor).
pub trait ObjectBuilder {
    /// The class built.
    type Object: RemoteObject;
    /// The client to create it with.
    fn client(&self) -> &KurentoClient;
    /// The `constructorParams` object, or the error found while collecting it.
    fn constructor_params(&self) -> Result<Value>;
}

/// Creates the object described by a builder.
pub async fn build<B: ObjectBuilder>(builder: B) -> Result<B::Object> {
    let params = builder.constructor_params()?;
    let client = builder.client().clone();
    let id = client.create_raw(B::Object::TYPE_NAME, params).await?;
    Ok(B::Object::from_ref(ObjectRef::new(&client, id)))
}

/// Classes created inside a pipeline with no other required constructor parameter, so that
/// `pipeline.create::<RtpEndpoint>()` works.
pub trait PipelineElement: RemoteObject {
    /// Its builder.
    type Builder: ObjectBuilder<Object = Self>;
    /// A builder for an element of `pipeline`.
    fn builder_in(pipeline: &crate::MediaPipeline) -> Self::Builder;
}

/// Operation parameters under construction. Errors are kept and reported when the call is made.
#[doc(hidden)]
#[derive(Default, Clone)]
pub struct Params {
    map: Map<String, Value>,
    error: Option<String>,
}

impl Params {
    /// No parameters.
    pub fn new() -> Self {
        Params::default()
    }

    /// Adds a serializable value.
    pub fn put<T: Serialize + ?Sized>(mut self, key: &str, value: &T) -> Self {
        match serde_json::to_value(value) {
            Ok(v) => {
                self.map.insert(key.to_owned(), v);
            }
            Err(e) => self.error = Some(format!("{key}: {e}")),
        }
        self
    }

    /// Adds a value when present.
    pub fn put_opt<T: Serialize>(self, key: &str, value: &Option<T>) -> Self {
        match value {
            Some(v) => self.put(key, v),
            None => self,
        }
    }

    /// Adds an object reference (sent as its id).
    pub fn put_object<T: RemoteObject>(mut self, key: &str, value: &T) -> Self {
        self.map
            .insert(key.to_owned(), Value::String(value.id().to_owned()));
        self
    }

    /// Adds an object reference inside a transaction: an existing object's id or `newref:N`.
    pub fn put_tx_object<A: crate::transaction::TxObject>(mut self, key: &str, value: A) -> Self {
        self.map
            .insert(key.to_owned(), Value::String(value.tx_target().wire()));
        self
    }

    /// Adds object references.
    pub fn put_objects<T: RemoteObject>(mut self, key: &str, values: &[T]) -> Self {
        let ids = values
            .iter()
            .map(|v| Value::String(v.id().to_owned()))
            .collect();
        self.map.insert(key.to_owned(), Value::Array(ids));
        self
    }

    /// The finished parameter object.
    pub fn finish(self) -> Result<Value> {
        match self.error {
            Some(e) => Err(Error::Encode(e)),
            None => Ok(Value::Object(self.map)),
        }
    }
}

/// Decoders used by the generated API.
#[doc(hidden)]
pub mod decode {
    use super::*;

    /// Void operations: any value is accepted (KMS answers `null` or nothing).
    pub fn unit(_: &KurentoClient, _: &'static str, _: Value) -> Result<()> {
        Ok(())
    }

    /// A plain value.
    pub fn value<T: DeserializeOwned>(_: &KurentoClient, op: &'static str, v: Value) -> Result<T> {
        serde_json::from_value(v).map_err(|e| Error::UnexpectedResponse {
            operation: op.to_owned(),
            reason: e.to_string(),
        })
    }

    /// One object reference.
    pub fn object<T: RemoteObject>(c: &KurentoClient, op: &'static str, v: Value) -> Result<T> {
        match v {
            Value::String(id) => Ok(T::from_ref(ObjectRef::new(c, id))),
            other => Err(Error::UnexpectedResponse {
                operation: op.to_owned(),
                reason: format!("expected an object id, got {other}"),
            }),
        }
    }

    /// A list of object references.
    pub fn objects<T: RemoteObject>(
        c: &KurentoClient,
        op: &'static str,
        v: Value,
    ) -> Result<Vec<T>> {
        let ids: Vec<String> = value(c, op, v)?;
        Ok(ids
            .into_iter()
            .map(|id| T::from_ref(ObjectRef::new(c, id)))
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::type_from_id;

    #[test]
    fn parses_type_from_ids() {
        assert_eq!(
            type_from_id("5f87a1_kurento.MediaPipeline"),
            Some(("kurento", "MediaPipeline"))
        );
        assert_eq!(
            type_from_id("5f87_kurento.MediaPipeline/121d-aa_kurento.RtpEndpoint"),
            Some(("kurento", "RtpEndpoint"))
        );
        assert_eq!(
            type_from_id("x/y_platedetector.PlateDetectorFilter"),
            Some(("platedetector", "PlateDetectorFilter"))
        );
        assert_eq!(type_from_id("manager_ServerManager"), None);
        assert_eq!(type_from_id("garbage"), None);
    }
}
