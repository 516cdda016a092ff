//! Transactions: several operations in one `transaction` request, later ones referring to objects
//! created by earlier ones (`newref:N`). KMS runs them in order and stops at the first failure.

use std::marker::PhantomData;

use serde_json::{json, Value};

use crate::client::KurentoClient;
use crate::error::{Error, Result, ServerError};
use crate::object::{IsA, ObjectBuilder, ObjectRef, Params, RemoteObject};
use crate::protocol::{self, method, ServerMessage};

/// How a generated operation decodes its answer.
type Decoder<R> = fn(&KurentoClient, &'static str, Value) -> Result<R>;

/// An object that the transaction will create; usable as a target or parameter before commit.
#[derive(Debug)]
pub struct TxRef<T> {
    index: usize,
    _type: PhantomData<fn() -> T>,
}

impl<T> Clone for TxRef<T> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<T> Copy for TxRef<T> {}

impl<T> TxRef<T> {
    /// The placeholder KMS replaces with the created object's id (`newref:N`).
    pub fn newref(&self) -> String {
        format!("newref:{}", self.index)
    }

    /// Position of the creating operation.
    pub fn index(&self) -> usize {
        self.index
    }
}

/// The object an operation applies to: an existing one or one created earlier in the transaction.
pub enum TxTarget {
    /// An existing object id.
    Existing(String),
    /// An object created by operation N.
    Pending(usize),
}

impl<T: RemoteObject> From<&T> for TxTarget {
    fn from(o: &T) -> Self {
        TxTarget::Existing(o.id().to_owned())
    }
}

impl<T> From<&TxRef<T>> for TxTarget {
    fn from(r: &TxRef<T>) -> Self {
        TxTarget::Pending(r.index)
    }
}

impl TxTarget {
    /// What is sent: the object id or `newref:N`.
    pub fn wire(&self) -> String {
        match self {
            TxTarget::Existing(id) => id.clone(),
            TxTarget::Pending(i) => format!("newref:{i}"),
        }
    }
}

/// An object of class [`TxObject::Class`] as a transaction sees it: an existing object (`&T`) or one
/// an earlier operation of the same transaction creates (`&TxRef<T>`).
pub trait TxObject {
    /// The object's class.
    type Class: RemoteObject;
    /// The target or parameter value for this object.
    fn tx_target(&self) -> TxTarget;
}

impl<T: RemoteObject> TxObject for &T {
    type Class = T;
    fn tx_target(&self) -> TxTarget {
        TxTarget::Existing(self.id().to_owned())
    }
}

impl<T: RemoteObject> TxObject for &TxRef<T> {
    type Class = T;
    fn tx_target(&self) -> TxTarget {
        TxTarget::Pending(self.index)
    }
}

/// An object parameter of a transaction call that wants a `C`: an existing `&T` or a `&TxRef<T>`
/// where `T` is `C` or one of its subclasses.
///
/// ```no_run
/// # use kurento_client::prelude::*;
/// fn link(tx: &mut Transaction, publisher: &WebRtcEndpoint, tap: TxRef<RtpEndpoint>) {
///     tx.on(publisher).connect(&tap, MediaType::Video);
/// }
/// ```
/// A sink must be a `MediaElement`:
/// ```compile_fail
/// # use kurento_client::prelude::*;
/// fn link(tx: &mut Transaction, publisher: &WebRtcEndpoint, pipeline: TxRef<MediaPipeline>) {
///     tx.on(publisher).connect(&pipeline, MediaType::Video);
/// }
/// ```
/// and only a `MediaElement` has `connect`:
/// ```compile_fail
/// # use kurento_client::prelude::*;
/// fn link(tx: &mut Transaction, pipeline: &MediaPipeline, tap: TxRef<RtpEndpoint>) {
///     tx.on(pipeline).connect(&tap, MediaType::Video);
/// }
/// ```
pub trait TxArg<C: RemoteObject>: TxObject {}

impl<C: RemoteObject, A: TxObject> TxArg<C> for A where A::Class: IsA<C> {}

/// A call being added to a transaction, on an object of class `T` (see [`Transaction::on`]). The
/// generated `<Class>TxMethods` traits give it the operations and properties of `T` and its
/// ancestors; each adds one operation and returns a [`TxResult`].
#[must_use = "a TxCall adds nothing until one of its operations is called"]
pub struct TxCall<'a, T> {
    tx: &'a mut Transaction,
    target: TxTarget,
    _class: PhantomData<fn() -> T>,
}

/// Adds an operation to the transaction a [`TxCall`] belongs to. Used by the generated
/// `<Class>TxMethods` traits; not for direct use (see [`Transaction::invoke`] for that).
#[doc(hidden)]
pub trait TxInvoke: Sized {
    /// Adds `operation` with `params`; its answer will be decoded with `decode`.
    fn push_operation<R>(
        self,
        operation: &'static str,
        params: Params,
        decode: Decoder<R>,
    ) -> TxResult<R>;
}

impl<T: RemoteObject> TxInvoke for TxCall<'_, T> {
    fn push_operation<R>(
        self,
        operation: &'static str,
        params: Params,
        decode: Decoder<R>,
    ) -> TxResult<R> {
        let params = match params.finish() {
            Ok(p) => p,
            Err(e) => {
                // Reported by commit, so that building a transaction reads without `?` at each call.
                let index = self.tx.operations.len();
                self.tx.error.get_or_insert(Error::Encode(format!(
                    "transaction operation {index} ({operation}): {e}"
                )));
                Value::Object(Default::default())
            }
        };
        let index = self.tx.invoke(self.target, operation, params);
        TxResult {
            index,
            operation,
            decode,
        }
    }
}

/// The answer of one operation of a transaction, to read from [`TxResults::get`] after commit; it is
/// decoded as the operation's return type `R`.
///
/// ```no_run
/// # use kurento_client::prelude::*;
/// fn answer(results: &TxResults, offer: TxResult<String>) -> kurento_client::Result<String> {
///     results.get(offer)
/// }
/// ```
/// ```compile_fail
/// # use kurento_client::prelude::*;
/// fn answer(results: &TxResults, offer: TxResult<String>) -> kurento_client::Result<i32> {
///     results.get(offer)
/// }
/// ```
pub struct TxResult<R> {
    index: usize,
    operation: &'static str,
    decode: Decoder<R>,
}

impl<R> Clone for TxResult<R> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<R> Copy for TxResult<R> {}

impl<R> std::fmt::Debug for TxResult<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TxResult")
            .field("index", &self.index)
            .field("operation", &self.operation)
            .finish()
    }
}

impl<R> TxResult<R> {
    /// Position of the operation in the transaction.
    pub fn index(&self) -> usize {
        self.index
    }

    /// The operation's name, e.g. `processOffer`.
    pub fn operation(&self) -> &'static str {
        self.operation
    }
}

/// A transaction under construction. Nothing is sent before [`Transaction::commit`].
///
/// Operations are added with the typed API: [`Transaction::create`] takes a builder and
/// [`Transaction::on`] selects the object a call applies to; the generated `<Class>TxMethods` traits
/// (in the prelude) then offer every operation and property of that class, with the same parameter
/// types as the `<Class>Methods` traits, and return a [`TxResult`] to read the answer with after
/// [`Transaction::commit`]. Object parameters take existing objects (`&T`) or objects the
/// transaction creates (`&TxRef<T>`), checked against the class the operation wants; object ids in
/// options structs are strings, where [`TxRef::newref`] can stand for a created object.
/// [`Transaction::invoke`] remains for operations without generated code.
///
/// ```no_run
/// use kurento_client::prelude::*;
///
/// # async fn demo(kms: &KurentoClient, pipeline: MediaPipeline, publisher: WebRtcEndpoint, sdp: &str)
/// # -> kurento_client::Result<()> {
/// let mut tx = kms.transaction();
/// let tap = tx.create(RtpEndpoint::builder(&pipeline))?;
/// tx.on(&tap).add_tag("kurento-tap.room", "r1");
/// tx.on(&publisher).connect(&tap, MediaType::Video);
/// let answer = tx.on(&tap).process_offer(sdp);
/// let results = tx.commit().await?;
/// let tap: RtpEndpoint = results.object(&tap)?;
/// let answer: String = results.get(answer)?;
/// # Ok(()) }
/// ```
pub struct Transaction {
    client: KurentoClient,
    operations: Vec<Value>,
    /// The first parameter that could not be encoded; commit fails with it.
    error: Option<Error>,
}

impl Transaction {
    pub(crate) fn new(client: KurentoClient) -> Self {
        Transaction {
            client,
            operations: Vec::new(),
            error: None,
        }
    }

    fn push(&mut self, method: &str, params: Value) -> usize {
        let index = self.operations.len();
        self.operations
            .push(json!({"jsonrpc": "2.0", "id": index, "method": method, "params": params}));
        index
    }

    /// Adds the creation of the object a builder describes.
    pub fn create<B: ObjectBuilder>(&mut self, builder: B) -> Result<TxRef<B::Object>> {
        let params = builder.constructor_params()?;
        let index = self.push(
            method::CREATE,
            json!({"type": B::Object::TYPE_NAME, "constructorParams": params, "properties": {}}),
        );
        Ok(TxRef {
            index,
            _type: PhantomData,
        })
    }

    /// Selects the object the next call applies to: an existing object (`&T`) or one created earlier
    /// in this transaction (`&TxRef<T>`). The generated `<Class>TxMethods` traits then add the call:
    /// `tx.on(&tap).process_offer(sdp)`, `tx.on(&publisher).connect(&tap, MediaType::Video)`.
    pub fn on<O: TxObject>(&mut self, target: O) -> TxCall<'_, O::Class> {
        TxCall {
            target: target.tx_target(),
            tx: self,
            _class: PhantomData,
        }
    }

    /// Adds an operation call by name with raw JSON parameters, and returns its position (read its
    /// answer with [`TxResults::value`]). Object parameters may be `TxRef::newref()` strings.
    ///
    /// This is the escape hatch for operations the typed API does not know (custom modules without
    /// generated code); for everything else prefer [`Transaction::on`], which checks the operation,
    /// its parameters and the type of its answer.
    pub fn invoke(&mut self, target: impl Into<TxTarget>, operation: &str, params: Value) -> usize {
        let mut p = json!({"object": target.into().wire(), "operation": operation});
        if !params.is_null() {
            p["operationParams"] = params;
        }
        self.push(method::INVOKE, p)
    }

    /// Number of operations added.
    pub fn len(&self) -> usize {
        self.operations.len()
    }

    /// True when nothing was added.
    pub fn is_empty(&self) -> bool {
        self.operations.is_empty()
    }

    /// The operations as they will be sent (JSON-RPC requests numbered from 0), for tests and logs.
    #[doc(hidden)]
    pub fn operations(&self) -> &[Value] {
        &self.operations
    }

    /// Sends the transaction and returns one result per operation that ran. Fails without sending
    /// anything if a parameter given to a typed call could not be encoded.
    pub async fn commit(self) -> Result<TxResults> {
        if let Some(e) = self.error {
            return Err(e);
        }
        let expected = self.operations.len();
        let result = self
            .client
            .request(method::TRANSACTION, json!({"operations": self.operations}))
            .await?;
        let answers = match result.into_value() {
            Value::Array(a) => a,
            other => {
                return Err(Error::UnexpectedResponse {
                    operation: "transaction".into(),
                    reason: format!("expected an array of answers, got {other}"),
                })
            }
        };
        let mut results = Vec::with_capacity(answers.len());
        for answer in answers {
            match protocol::decode_value(answer).map_err(Error::Decode)? {
                ServerMessage::Response { result, .. } => {
                    results.push(result.map(|r| r.into_value()))
                }
                _ => {
                    return Err(Error::UnexpectedResponse {
                        operation: "transaction".into(),
                        reason: "an answer is not a response".into(),
                    })
                }
            }
        }
        Ok(TxResults {
            client: self.client,
            expected,
            results,
        })
    }
}

/// The answers of a committed transaction.
pub struct TxResults {
    client: KurentoClient,
    expected: usize,
    results: Vec<Result<Value, ServerError>>,
}

impl TxResults {
    /// Ok when every operation ran and succeeded; otherwise the first failure and its position.
    pub fn check(&self) -> Result<()> {
        for (index, r) in self.results.iter().enumerate() {
            if let Err(e) = r {
                return Err(Error::TransactionFailed {
                    index,
                    error: e.clone(),
                });
            }
        }
        if self.results.len() < self.expected {
            return Err(Error::UnexpectedResponse {
                operation: "transaction".into(),
                reason: format!(
                    "{} of {} operations answered",
                    self.results.len(),
                    self.expected
                ),
            });
        }
        Ok(())
    }

    /// The value returned by operation `index`.
    pub fn value(&self, index: usize) -> Result<&Value> {
        match self.results.get(index) {
            Some(Ok(v)) => Ok(v),
            Some(Err(e)) => Err(Error::TransactionFailed {
                index,
                error: e.clone(),
            }),
            None => Err(Error::UnexpectedResponse {
                operation: "transaction".into(),
                reason: format!("operation {index} did not run"),
            }),
        }
    }

    /// The answer of a typed call, decoded as its operation's return type. Fails with
    /// [`Error::TransactionFailed`] if that operation failed, [`Error::TransactionNotRun`] if the
    /// transaction stopped before it (KMS stops at the first failure), or
    /// [`Error::UnexpectedResponse`] if the answer does not have the expected type.
    pub fn get<R>(&self, result: TxResult<R>) -> Result<R> {
        let index = result.index;
        match self.results.get(index) {
            Some(Ok(v)) => (result.decode)(&self.client, result.operation, v.clone()),
            Some(Err(e)) => Err(Error::TransactionFailed {
                index,
                error: e.clone(),
            }),
            None => Err(Error::TransactionNotRun {
                index,
                operation: result.operation.to_owned(),
                failed_at: self.results.iter().position(|r| r.is_err()),
            }),
        }
    }

    /// The object created by a `create` in the transaction (whether or not later operations failed,
    /// so that the caller can release it).
    pub fn object<T: RemoteObject>(&self, r: &TxRef<T>) -> Result<T> {
        match self.value(r.index)? {
            Value::String(id) => Ok(T::from_ref(ObjectRef::new(&self.client, id.as_str()))),
            other => Err(Error::UnexpectedResponse {
                operation: "transaction create".into(),
                reason: format!("expected an object id, got {other}"),
            }),
        }
    }

    /// All results in order.
    pub fn results(&self) -> &[Result<Value, ServerError>] {
        &self.results
    }
}
