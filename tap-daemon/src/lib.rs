//! kurento-tap: discovers the rooms of a Kurento Media Server, forks every participant's media out of
//! KMS through RtpEndpoints, decodes it with GStreamer, cuts it into the chunks each model asks for,
//! and dispatches them over NATS with bounded latency.

pub mod auth;
pub mod capture_clock;
pub mod chunker;
pub mod cluster;
pub mod config;
pub mod consent;
pub mod daemon;
pub mod discovery;
pub mod dispatch;
pub mod erase;
pub mod http;
pub mod injector;
pub mod lease;
pub mod metrics;
pub mod mood;
pub mod openvidu;
pub mod openvidu_rest;
pub mod orphans;
pub mod policy;
pub mod ports;
pub mod receiver;
pub mod registry;
pub mod results;
pub mod scaling;
pub mod sdp_offer;
pub mod srtp;
pub mod tap;
pub mod watcher;

pub use daemon::{Daemon, DaemonConfig, TapStatus};
