//! The daemon's control surfaces: HTTP (health, metrics, dashboard, data endpoints and their
//! credential), control requests over NATS, and the export of stored results.

pub mod consent;
pub mod erase;
pub mod http;
pub mod requests;
pub mod results;
