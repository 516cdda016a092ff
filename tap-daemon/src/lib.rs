//! kurento-tap: discovers the rooms of a Kurento Media Server, forks every participant's media out of
//! KMS through RtpEndpoints, decodes it with GStreamer, cuts it into the chunks each model asks for,
//! and dispatches them over NATS with bounded latency.
//!
//! The modules are layered; each imports only from the layers below it (a test checks it, see
//! `tests/imports.rs`):
//!
//! | layer | modules |
//! |---|---|
//! | vocabulary | [`kms`] (release, orphans, tags), [`metrics`], [`memory`] (allocator settings) |
//! | pure and media | [`media`] (receiver, capture clock, chunker, SDP, SRTP, ports), [`privacy`] (policy, consent, erasure) |
//! | services | [`dispatch`] (NATS chunks, model registry), [`discovery`] (walk, host profiles), [`inject`] (results into the call), [`mood`], [`cluster`] (leases, scaling) |
//! | taps | [`settings`] (the daemon's configuration), [`tap`] (one participant's tap) |
//! | per-KMS actor | [`watcher`] |
//! | the process | [`control`] (HTTP, control requests, results export), [`daemon`], [`config`] (file, env, flags) |

pub mod auth;
pub mod cluster;
pub mod config;
pub mod control;
pub mod daemon;
pub mod discovery;
pub mod dispatch;
pub mod inject;
pub mod kms;
pub mod media;
pub mod memory;
pub mod metrics;
pub mod mood;
pub mod privacy;
pub mod settings;
pub mod tap;
pub mod watcher;

pub use daemon::Daemon;
pub use settings::DaemonConfig;
pub use watcher::TapStatus;
