//! Errors: what the server said (typed by Kurento's codes) and what went wrong on our side.

use serde_json::Value;

/// Kurento and JSON-RPC error codes, as sent by KMS.
///
/// Sources: `KurentoException.hpp` and `JsonRpcException.hpp` in the Kurento tree; the codes seen on a
/// real KMS 7.3 are listed in the project's `docs/simulator.md`. Codes this enum does not know are kept
/// in [`ErrorCode::Other`], so nothing the server says is lost.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorCode {
    /// -32700: the server could not parse our JSON.
    ParseError,
    /// -32600: not a valid JSON-RPC request.
    InvalidRequest,
    /// -32601: unknown method.
    MethodNotFound,
    /// -32602: `params` missing or malformed.
    InvalidParams,
    /// -32603: internal JSON-RPC error.
    InternalError,
    /// -32000: a required parameter (`object`, `operation`…) is missing or has the wrong type.
    ServerError,
    /// 40001: an operation parameter has the wrong type.
    MarshallError,
    /// 40002: the media server is shutting down or an unexpected internal error.
    UnexpectedError,
    /// 40003: the server-side object could not be created or is in a bad state.
    MediaObjectIllegalState,
    /// 40004: `connect` across pipelines, or the element has no pad for that type.
    ConnectError,
    /// 40005: unsupported media type.
    UnsupportedMediaType,
    /// 40006: media profile not supported.
    NotEnoughResourcesProfile,
    /// 40007: unknown session (for example after a KMS restart).
    InvalidSession,
    /// 40008: unknown operation on an object (KMS reports it as a malformed transaction).
    MalformedTransaction,
    /// 40009: `create` above the server's resource limit.
    NotEnoughResources,
    /// 40100: the type's module is not installed.
    MediaObjectTypeNotFound,
    /// 40101: the object does not exist (released, or never existed).
    MediaObjectNotFound,
    /// 40104: wrong constructor.
    MediaObjectConstructorNotFound,
    /// 40105: method not found.
    MediaObjectMethodNotFound,
    /// 40106: no such event on this object (often a 6.x/7.x naming difference).
    MediaObjectEventNotSupported,
    /// 40107: the object has the wrong type for that operation.
    MediaObjectIllegalParamError,
    /// 40108: `create` of a type the server does not provide.
    MediaObjectNotAvailable,
    /// 40109: a null parameter where one is required.
    MediaObjectNullParam,
    /// 40110: no tag with that key.
    MediaObjectTagKeyNotFound,
    /// 40111: operation not available in the object's current state.
    MediaObjectOperationNotSupported,
    /// 40112: the object failed during an operation.
    MediaObjectErrorOnOperation,
    /// 40200: SDP could not be created.
    SdpCreateError,
    /// 40201: SDP parse error.
    SdpParseError,
    /// 40202: no local SDP yet (negotiation not started).
    SdpEndPointNoLocalSdpError,
    /// 40203: no remote SDP yet.
    SdpEndPointNoRemoteSdpError,
    /// 40204: failed generating the local SDP.
    SdpEndPointGenerateOfferError,
    /// 40205: failed processing the remote offer.
    SdpEndPointProcessOfferError,
    /// 40206: failed processing the remote answer.
    SdpEndPointProcessAnswerError,
    /// 40207: SDP configuration error.
    SdpConfigurationError,
    /// 40208: the endpoint was already negotiated (KMS does not renegotiate).
    SdpEndPointAlreadyNegotiated,
    /// Any other code.
    Other(i64),
}

impl ErrorCode {
    /// Maps a numeric code from the wire.
    pub fn from_code(code: i64) -> Self {
        use ErrorCode::*;
        match code {
            -32700 => ParseError,
            -32600 => InvalidRequest,
            -32601 => MethodNotFound,
            -32602 => InvalidParams,
            -32603 => InternalError,
            -32000 => ServerError,
            40001 => MarshallError,
            40002 => UnexpectedError,
            40003 => MediaObjectIllegalState,
            40004 => ConnectError,
            40005 => UnsupportedMediaType,
            40006 => NotEnoughResourcesProfile,
            40007 => InvalidSession,
            40008 => MalformedTransaction,
            40009 => NotEnoughResources,
            40100 => MediaObjectTypeNotFound,
            40101 => MediaObjectNotFound,
            40104 => MediaObjectConstructorNotFound,
            40105 => MediaObjectMethodNotFound,
            40106 => MediaObjectEventNotSupported,
            40107 => MediaObjectIllegalParamError,
            40108 => MediaObjectNotAvailable,
            40109 => MediaObjectNullParam,
            40110 => MediaObjectTagKeyNotFound,
            40111 => MediaObjectOperationNotSupported,
            40112 => MediaObjectErrorOnOperation,
            40200 => SdpCreateError,
            40201 => SdpParseError,
            40202 => SdpEndPointNoLocalSdpError,
            40203 => SdpEndPointNoRemoteSdpError,
            40204 => SdpEndPointGenerateOfferError,
            40205 => SdpEndPointProcessOfferError,
            40206 => SdpEndPointProcessAnswerError,
            40207 => SdpConfigurationError,
            40208 => SdpEndPointAlreadyNegotiated,
            other => Other(other),
        }
    }

    /// The numeric code as sent on the wire.
    pub fn code(self) -> i64 {
        use ErrorCode::*;
        match self {
            ParseError => -32700,
            InvalidRequest => -32600,
            MethodNotFound => -32601,
            InvalidParams => -32602,
            InternalError => -32603,
            ServerError => -32000,
            MarshallError => 40001,
            UnexpectedError => 40002,
            MediaObjectIllegalState => 40003,
            ConnectError => 40004,
            UnsupportedMediaType => 40005,
            NotEnoughResourcesProfile => 40006,
            InvalidSession => 40007,
            MalformedTransaction => 40008,
            NotEnoughResources => 40009,
            MediaObjectTypeNotFound => 40100,
            MediaObjectNotFound => 40101,
            MediaObjectConstructorNotFound => 40104,
            MediaObjectMethodNotFound => 40105,
            MediaObjectEventNotSupported => 40106,
            MediaObjectIllegalParamError => 40107,
            MediaObjectNotAvailable => 40108,
            MediaObjectNullParam => 40109,
            MediaObjectTagKeyNotFound => 40110,
            MediaObjectOperationNotSupported => 40111,
            MediaObjectErrorOnOperation => 40112,
            SdpCreateError => 40200,
            SdpParseError => 40201,
            SdpEndPointNoLocalSdpError => 40202,
            SdpEndPointNoRemoteSdpError => 40203,
            SdpEndPointGenerateOfferError => 40204,
            SdpEndPointProcessOfferError => 40205,
            SdpEndPointProcessAnswerError => 40206,
            SdpConfigurationError => 40207,
            SdpEndPointAlreadyNegotiated => 40208,
            Other(c) => c,
        }
    }

    /// The symbolic name KMS puts in `error.data.type` (for codes it names).
    pub fn kms_type(self) -> Option<&'static str> {
        use ErrorCode::*;
        Some(match self {
            MarshallError => "MARSHALL_ERROR",
            UnexpectedError => "UNEXPECTED_ERROR",
            MediaObjectIllegalState => "MEDIA_OBJECT_ILLEGAL_STATE",
            ConnectError => "CONNECT_ERROR",
            UnsupportedMediaType => "UNSUPPORTED_MEDIA_TYPE",
            NotEnoughResourcesProfile => "NOT_IMPLEMENTED",
            InvalidSession => "INVALID_SESSION",
            MalformedTransaction => "MALFORMED_TRANSACTION",
            NotEnoughResources => "NOT_ENOUGH_RESOURCES",
            MediaObjectTypeNotFound => "MEDIA_OBJECT_TYPE_NOT_FOUND",
            MediaObjectNotFound => "MEDIA_OBJECT_NOT_FOUND",
            MediaObjectConstructorNotFound => "MEDIA_OBJECT_CONSTRUCTOR_NOT_FOUND",
            MediaObjectMethodNotFound => "MEDIA_OBJECT_METHOD_NOT_FOUND",
            MediaObjectEventNotSupported => "MEDIA_OBJECT_EVENT_NOT_SUPPORTED",
            MediaObjectIllegalParamError => "MEDIA_OBJECT_ILLEGAL_PARAM_ERROR",
            MediaObjectNotAvailable => "MEDIA_OBJECT_NOT_AVAILABLE",
            MediaObjectNullParam => "MEDIA_OBJECT_NULL_PARAM",
            MediaObjectTagKeyNotFound => "MEDIA_OBJECT_TAG_KEY_NOT_FOUND",
            MediaObjectOperationNotSupported => "MEDIA_OBJECT_OPERATION_NOT_SUPPORTED",
            MediaObjectErrorOnOperation => "MEDIA_OBJECT_ERROR_ON_OPERATION",
            SdpCreateError => "SDP_CREATE_ERROR",
            SdpParseError => "SDP_PARSE_ERROR",
            SdpEndPointNoLocalSdpError => "SDP_END_POINT_NO_LOCAL_SDP_ERROR",
            SdpEndPointNoRemoteSdpError => "SDP_END_POINT_NO_REMOTE_SDP_ERROR",
            SdpEndPointGenerateOfferError => "SDP_END_POINT_GENERATE_OFFER_ERROR",
            SdpEndPointProcessOfferError => "SDP_END_POINT_PROCESS_OFFER_ERROR",
            SdpEndPointProcessAnswerError => "SDP_END_POINT_PROCESS_ANSWER_ERROR",
            SdpConfigurationError => "SDP_CONFIGURATION_ERROR",
            SdpEndPointAlreadyNegotiated => "SDP_END_POINT_ALREADY_NEGOTIATED",
            _ => return None,
        })
    }
}

/// An `error` object from the server, kept whole.
#[derive(Debug, Clone, PartialEq)]
pub struct ServerError {
    /// The typed code.
    pub code: ErrorCode,
    /// The server's message, verbatim.
    pub message: String,
    /// The server's `data` member, verbatim (KMS puts `{"type": "…"}` there).
    pub data: Option<Value>,
}

impl std::fmt::Display for ServerError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({}", self.message, self.code.code())?;
        if let Some(t) = self
            .data
            .as_ref()
            .and_then(|d| d.get("type"))
            .and_then(Value::as_str)
        {
            write!(f, " {t}")?;
        }
        write!(f, ")")
    }
}

/// Everything a client call can fail with.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The server answered with an error.
    #[error("server error: {0}")]
    Server(ServerError),
    /// No answer within the request timeout.
    #[error("request {id} ({method}) timed out after {timeout:?}")]
    Timeout {
        /// Request id.
        id: u64,
        /// JSON-RPC method.
        method: String,
        /// The timeout that expired.
        timeout: std::time::Duration,
    },
    /// The socket dropped while the request was in flight; the server may or may not have executed it.
    #[error("connection lost while request {id} ({method}) was in flight")]
    ConnectionLost {
        /// Request id.
        id: u64,
        /// JSON-RPC method.
        method: String,
    },
    /// The client was closed.
    #[error("client closed")]
    Closed,
    /// The WebSocket could not be opened.
    #[error("cannot connect to {url}: {reason}")]
    Connect {
        /// The URL tried.
        url: String,
        /// Why it failed.
        reason: String,
    },
    /// The server's answer did not have the shape the API expects.
    #[error("unexpected response to {operation}: {reason}")]
    UnexpectedResponse {
        /// What was called.
        operation: String,
        /// What was wrong.
        reason: String,
    },
    /// A message from the server could not be decoded.
    #[error(transparent)]
    Decode(#[from] DecodeError),
    /// A required parameter was not given to a builder.
    #[error("missing required parameter `{0}`")]
    MissingParameter(&'static str),
    /// A value could not be serialized into request parameters.
    #[error("cannot encode parameters: {0}")]
    Encode(String),
    /// Operation `index` of a transaction failed (KMS stops at the first failure).
    #[error("transaction operation {index} failed: {error}")]
    TransactionFailed {
        /// Position of the failed operation.
        index: usize,
        /// The server's error.
        error: ServerError,
    },
    /// Operation `index` of a transaction did not run: the transaction stopped before it (KMS stops
    /// at the first failure, operation `failed_at`).
    #[error("transaction operation {index} ({operation}) did not run{}", not_run_reason(*.failed_at))]
    TransactionNotRun {
        /// Position of the operation.
        index: usize,
        /// Its name.
        operation: String,
        /// The failed operation the transaction stopped at, if any answered with an error.
        failed_at: Option<usize>,
    },
    /// An object id does not have the type the caller asked for.
    #[error("object {id} is a {actual}, not a {expected}")]
    WrongType {
        /// Object id.
        id: String,
        /// Type requested.
        expected: &'static str,
        /// Type found.
        actual: String,
    },
}

fn not_run_reason(failed_at: Option<usize>) -> String {
    match failed_at {
        Some(i) => format!(": the transaction stopped at operation {i}, which failed"),
        None => ": the server answered fewer operations than were sent".to_owned(),
    }
}

impl Error {
    /// The server error code, when the server answered with an error.
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            Error::Server(e) => Some(e.code),
            _ => None,
        }
    }

    /// True when the server said the object does not exist (40101).
    pub fn is_object_not_found(&self) -> bool {
        self.code() == Some(ErrorCode::MediaObjectNotFound)
    }
}

/// A server message that is not valid JSON-RPC as KMS speaks it.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// Not JSON at all.
    #[error("malformed JSON: {0}")]
    Json(String),
    /// JSON, but not a JSON-RPC message we understand.
    #[error("invalid JSON-RPC message: {0}")]
    Shape(String),
    /// A frame larger than the configured maximum.
    #[error("message of {size} bytes exceeds the limit of {limit} bytes")]
    TooLarge {
        /// Size of the message.
        size: usize,
        /// Configured limit.
        limit: usize,
    },
    /// A binary frame (KMS only sends text).
    #[error("unexpected binary frame of {0} bytes")]
    Binary(usize),
}

/// Result alias for client calls.
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_named_code_round_trips() {
        for code in [
            -32700, -32600, -32601, -32602, -32603, -32000, 40001, 40002, 40003, 40004, 40005,
            40006, 40007, 40008, 40009, 40100, 40101, 40104, 40105, 40106, 40107, 40108, 40109,
            40110, 40111, 40112, 40200, 40201, 40202, 40203, 40204, 40205, 40206, 40207, 40208,
        ] {
            let typed = ErrorCode::from_code(code);
            assert!(!matches!(typed, ErrorCode::Other(_)), "{code} not named");
            assert_eq!(typed.code(), code);
        }
        assert_eq!(ErrorCode::from_code(12345), ErrorCode::Other(12345));
    }

    #[test]
    fn display_keeps_message_and_type() {
        let e = ServerError {
            code: ErrorCode::MediaObjectNotFound,
            message: "Object 'x' not found".into(),
            data: Some(serde_json::json!({"type":"MEDIA_OBJECT_NOT_FOUND"})),
        };
        assert_eq!(
            e.to_string(),
            "Object 'x' not found (40101 MEDIA_OBJECT_NOT_FOUND)"
        );
    }
}
