//! `kms-sim`: a Kurento Media Server simulator for tests and demos.
//!
//! It speaks KMS's JSON-RPC protocol with KMS's quirks (sessions, the per-(session, id) answer cache,
//! ids, error codes and messages, `onEvent` with string timestamps, transactions, the ServerManager),
//! simulates group-call rooms as the Java tutorial builds them, and sends real GStreamer-encoded RTP
//! (VP8, H.264, VP9, Opus) to RtpEndpoints connected to a participant. What is simulated and what is
//! not is listed in `docs/simulator.md`.

pub mod kmd;
pub mod media;
pub mod mediaset;
pub mod replay;
pub mod scenario;
pub mod sdp;
pub mod server;
pub mod srtp;

pub use scenario::Scenario;
pub use server::{first_non_loopback_ipv4, SimOptions, SimServer};
