//! Transactions: several operations in one `transaction` request, later ones referring to objects
//! created by earlier ones (`newref:N`). KMS runs them in order and stops at the first failure.

use std::marker::PhantomData;

use serde_json::{json, Value};

use crate::client::KurentoClient;
use crate::error::{Error, Result, ServerError};
use crate::object::{ObjectBuilder, ObjectRef, RemoteObject};
use crate::protocol::{self, method, ServerMessage};

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
    fn wire(&self) -> String {
        match self {
            TxTarget::Existing(id) => id.clone(),
            TxTarget::Pending(i) => format!("newref:{i}"),
        }
    }
}

/// A transaction under construction. Nothing is sent before [`Transaction::commit`].
pub struct Transaction {
    client: KurentoClient,
    operations: Vec<Value>,
}

impl Transaction {
    pub(crate) fn new(client: KurentoClient) -> Self {
        Transaction {
            client,
            operations: Vec::new(),
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

    /// Adds an operation call. Object parameters may be `TxRef::newref()` strings.
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

    /// Sends the transaction and returns one result per operation that ran.
    pub async fn commit(self) -> Result<TxResults> {
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
            expected: self.operations.len(),
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
