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
//! REST status (with its backoff). [`client`] is the adapter doing the I/O.

pub mod client;
mod graph;
mod http;
mod sessions;
#[cfg(test)]
mod tests;

pub use graph::*;
pub use http::*;
pub use sessions::*;
