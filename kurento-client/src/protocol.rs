//! The JSON-RPC 2.0 messages KMS exchanges, and a decoder that never panics on what the server sends.
//!
//! Shapes follow what a real KMS 7.3 sends (see `docs/simulator.md`): answers carry `result.value` and
//! `result.sessionId`; `describe` answers carry `hierarchy`/`qualifiedType`/`type` beside `sessionId`;
//! events are `onEvent` notifications (no `id`) whose `params.value` holds `{data, object, type}`.

use serde_json::{Map, Value};

use crate::error::{DecodeError, ErrorCode, ServerError};

/// Methods the KMS JSON-RPC server registers (`ServerMethods.cpp`).
pub mod method {
    /// Attach to (or create) a session; returns `sessionId` and `serverId`.
    pub const CONNECT: &str = "connect";
    /// Create an object.
    pub const CREATE: &str = "create";
    /// Call an operation on an object.
    pub const INVOKE: &str = "invoke";
    /// Subscribe to an event of an object.
    pub const SUBSCRIBE: &str = "subscribe";
    /// Remove a subscription.
    pub const UNSUBSCRIBE: &str = "unsubscribe";
    /// Release an object (global in KMS: every session loses it).
    pub const RELEASE: &str = "release";
    /// Learn an object's type; also refs it into the session.
    pub const DESCRIBE: &str = "describe";
    /// Liveness check.
    pub const PING: &str = "ping";
    /// Several operations in one request.
    pub const TRANSACTION: &str = "transaction";
    /// Keep a session alive.
    pub const KEEP_ALIVE: &str = "keepAlive";
    /// Reference an object from this session.
    pub const REF: &str = "ref";
    /// Drop this session's reference.
    pub const UNREF: &str = "unref";
    /// Event notification from the server.
    pub const ON_EVENT: &str = "onEvent";
}

/// Encodes a request frame. `params` is sent as given (the connection adds `sessionId`).
/// A `null` `params` is left out: KMS reads a missing `params` as "none" (`connect` then opens a new
/// session).
pub fn encode_request(id: u64, method: &str, params: &Value) -> String {
    let frame = if params.is_null() {
        serde_json::json!({"jsonrpc": "2.0", "id": id, "method": method})
    } else {
        serde_json::json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params})
    };
    frame.to_string()
}

/// A successful answer: the whole `result` object, with helpers for its members.
#[derive(Debug, Clone, PartialEq)]
pub struct RpcResult(pub Map<String, Value>);

impl RpcResult {
    /// `result.value`, or `null` when absent (void operations answer with no value or `null`).
    pub fn value(&self) -> &Value {
        self.0.get("value").unwrap_or(&Value::Null)
    }

    /// Takes `result.value` out.
    pub fn into_value(mut self) -> Value {
        self.0.remove("value").unwrap_or(Value::Null)
    }

    /// `result.sessionId`, if the server sent one.
    pub fn session_id(&self) -> Option<&str> {
        self.0.get("sessionId").and_then(Value::as_str)
    }
}

/// One event notification: `params.value` of an `onEvent` message.
#[derive(Debug, Clone, PartialEq)]
pub struct EventNotification {
    /// The object the subscription was made on.
    pub object: String,
    /// Event type name, e.g. `ObjectCreated`.
    pub event_type: String,
    /// The event's payload (`source`, `timestampMillis`, `tags`, `type` and the event's own fields).
    pub data: Value,
}

/// A message from the server.
#[derive(Debug, Clone, PartialEq)]
pub enum ServerMessage {
    /// An answer to one of our requests.
    Response {
        /// The id of the request it answers.
        id: u64,
        /// Success or the server's error.
        result: Result<RpcResult, ServerError>,
    },
    /// An error answer the server could not tie to a request (`id` null: it could not parse ours).
    UncorrelatedError(ServerError),
    /// An `onEvent` notification.
    Event(EventNotification),
    /// Some other server-to-client request or notification (KMS sends none today; kept for logging).
    Other {
        /// Method name.
        method: String,
    },
}

/// Decodes one text frame from the server. Total: every input yields a value or an error.
pub fn decode_server_message(text: &str) -> Result<ServerMessage, DecodeError> {
    let value: Value = serde_json::from_str(text).map_err(|e| DecodeError::Json(e.to_string()))?;
    decode_value(value)
}

fn shape(msg: impl Into<String>) -> DecodeError {
    DecodeError::Shape(msg.into())
}

/// Decodes an already parsed JSON value (also used for the answers inside a transaction).
pub fn decode_value(value: Value) -> Result<ServerMessage, DecodeError> {
    let Value::Object(mut obj) = value else {
        return Err(shape("message is not a JSON object"));
    };
    if let Some(method) = obj.get("method") {
        let method = method
            .as_str()
            .ok_or_else(|| shape("`method` is not a string"))?
            .to_owned();
        if method != method::ON_EVENT {
            return Ok(ServerMessage::Other { method });
        }
        let params = obj.remove("params").unwrap_or(Value::Null);
        return decode_event(params).map(ServerMessage::Event);
    }
    let id = match obj.get("id") {
        Some(Value::Number(n)) => Some(
            n.as_u64()
                .ok_or_else(|| shape(format!("`id` {n} is not an unsigned integer")))?,
        ),
        // KMS answers with the id as sent; we only send integers, but accept a numeric string.
        Some(Value::String(s)) => Some(
            s.parse::<u64>()
                .map_err(|_| shape(format!("`id` {s:?} is not ours")))?,
        ),
        Some(Value::Null) | None => None,
        Some(other) => return Err(shape(format!("`id` has type {}", type_name(other)))),
    };
    if let Some(err) = obj.remove("error") {
        let err = decode_error(err)?;
        return Ok(match id {
            Some(id) => ServerMessage::Response {
                id,
                result: Err(err),
            },
            None => ServerMessage::UncorrelatedError(err),
        });
    }
    let id = id.ok_or_else(|| shape("response without `id`"))?;
    match obj.remove("result") {
        Some(Value::Object(result)) => Ok(ServerMessage::Response {
            id,
            result: Ok(RpcResult(result)),
        }),
        // Not what KMS sends, but a bare result is unambiguous: keep it as the value.
        Some(Value::Null) => Ok(ServerMessage::Response {
            id,
            result: Ok(RpcResult(Map::new())),
        }),
        Some(other) => {
            let mut map = Map::new();
            map.insert("value".into(), other);
            Ok(ServerMessage::Response {
                id,
                result: Ok(RpcResult(map)),
            })
        }
        None => Err(shape(format!(
            "message {id} has neither `result` nor `error`"
        ))),
    }
}

fn decode_error(err: Value) -> Result<ServerError, DecodeError> {
    let Value::Object(mut err) = err else {
        return Err(shape("`error` is not an object"));
    };
    let code = err
        .get("code")
        .and_then(Value::as_i64)
        .ok_or_else(|| shape("`error.code` is missing or not an integer"))?;
    let message = match err.remove("message") {
        Some(Value::String(s)) => s,
        Some(other) => other.to_string(),
        None => String::new(),
    };
    Ok(ServerError {
        code: ErrorCode::from_code(code),
        message,
        data: err.remove("data"),
    })
}

fn decode_event(params: Value) -> Result<EventNotification, DecodeError> {
    let Value::Object(mut params) = params else {
        return Err(shape("onEvent `params` is not an object"));
    };
    let Some(Value::Object(mut value)) = params.remove("value") else {
        return Err(shape("onEvent without an object `params.value`"));
    };
    let data = value.remove("data").unwrap_or(Value::Null);
    let event_type = match value.remove("type") {
        Some(Value::String(s)) => s,
        _ => data
            .get("type")
            .and_then(Value::as_str)
            .map(str::to_owned)
            .ok_or_else(|| shape("onEvent without `type`"))?,
    };
    let object = match value.remove("object") {
        Some(Value::String(s)) => s,
        _ => data
            .get("source")
            .and_then(Value::as_str)
            .map(str::to_owned)
            .ok_or_else(|| shape("onEvent without `object`"))?,
    };
    Ok(EventNotification {
        object,
        event_type,
        data,
    })
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "bool",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn rejects_garbage_without_panicking() {
        for bad in [
            "",
            "nul",
            "[]",
            "42",
            "{\"id\":-1,\"result\":{}}",
            "{\"id\":1.5,\"result\":{}}",
            "{\"id\":[],\"result\":{}}",
            "{\"id\":1}",
            "{\"method\":7}",
            "{\"method\":\"onEvent\",\"params\":[]}",
            "{\"method\":\"onEvent\",\"params\":{\"value\":3}}",
            "{\"id\":1,\"error\":\"boom\"}",
            "{\"id\":1,\"error\":{\"message\":\"no code\"}}",
            "{\"id\":\"abc\",\"result\":{}}",
        ] {
            assert!(decode_server_message(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn error_with_null_id_is_uncorrelated() {
        let m = decode_server_message(
            r#"{"jsonrpc":"2.0","id":null,"error":{"code":-32700,"message":"Parse error"}}"#,
        )
        .unwrap();
        assert!(
            matches!(m, ServerMessage::UncorrelatedError(e) if e.code == ErrorCode::ParseError)
        );
    }

    #[test]
    fn encode_request_shape() {
        let s = encode_request(7, "ping", &json!({"interval": 240000}));
        let v: Value = serde_json::from_str(&s).unwrap();
        assert_eq!(
            v,
            json!({"jsonrpc":"2.0","id":7,"method":"ping","params":{"interval":240000}})
        );
    }
}
