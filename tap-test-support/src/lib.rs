//! kurento-tap's shared test support, used by tap-daemon's integration tests and benches
//! (`use tap_test_support::prelude::*;` for the everyday part).
//!
//! - [`nats`]: a real nats-server with JetStream, one per test;
//! - [`models`]: model specs, registrations kept alive, a test worker that records what it saw;
//! - [`harness`]: nats-server + kms-sim + daemon set up and torn down together ([`Harness`]);
//! - [`metrics`]: the daemon's HTTP endpoints, Prometheus histogram quantiles, sample quantiles;
//! - [`proc`]: /proc figures, free ports, the workspace's binaries as child processes;
//! - [`browser`]: headless Chromium over DevTools, a static file server for pages under test;
//! - [`kms`]: a real KMS 7.3 from the bundle, in a network namespace of its own;
//! - [`call`]: a real-KMS call (group-call app, Chromium participants, daemon and workers);
//! - [`netem`]: packet loss, delay and capture on a real-KMS namespace's UDP;
//! - [`conformance`]: the scripted JSON-RPC exchange compared between kms-sim and KMS.

pub mod browser;
pub mod call;
pub mod conformance;
pub mod harness;
pub mod kms;
pub mod metrics;
pub mod models;
pub mod nats;
pub mod netem;
pub mod proc;

use std::path::PathBuf;
use std::time::{SystemTime, UNIX_EPOCH};

pub use harness::{Harness, HarnessBuilder, SimStarted};

/// What most simulator tests use, as one glob import.
pub mod prelude {
    pub use crate::harness::{
        config, one_media_rate_test_at_a_time, sim, wait_taps, Harness, SimStarted,
    };
    pub use crate::metrics::{histogram_quantile, http_get, pct, reqwest_metrics};
    pub use crate::models::{audio_spec, video_spec, worker, Registration, Seen};
    pub use crate::nats::Nats;
    pub use crate::now_ms;
    pub use crate::proc::{cpu_seconds_of, free_port, proc_status};
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// The workspace's root folder (this crate's parent).
pub fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the crate is in the workspace")
        .to_owned()
}
