//! The file's shape: every table and key, all optional.

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::discovery::TagKeys;

/// The file's contents.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// KMS URL.
    pub kurento: Option<String>,
    /// NATS URL.
    pub nats: Option<String>,
    /// NATS credentials file.
    pub nats_creds: Option<PathBuf>,
    /// NATS token.
    pub nats_token: Option<String>,
    /// Receive address.
    pub bind: Option<IpAddr>,
    /// Receive ports `MIN-MAX`.
    pub ports: Option<String>,
    /// HTTP listen address, or "" to disable.
    pub http: Option<String>,
    /// The data endpoints' own listen address (default: `http`'s).
    pub data_http: Option<String>,
    /// File holding the data token (the dashboard, /events, /history, /models need it).
    pub token_file: Option<PathBuf>,
    /// Header an authenticating reverse proxy sets (trusted only when named here).
    pub auth_proxy_header: Option<String>,
    /// Owner tag value.
    pub owner: Option<String>,
    /// Processing policy: `emotions` (default), `expressions` or `aggregate` (`crate::privacy::policy`).
    pub policy: Option<String>,
    /// Tap leg protection: `auto`, `sdes` or `off` (`crate::media::srtp`).
    pub tap_crypto: Option<String>,
    /// SRTP suite of encrypted taps.
    pub srtp_suite: Option<String>,
    /// Threads that receive and decode taps: a number shared by all (default 2) or `per-tap`.
    pub receive_threads: Option<String>,
    /// Jitterbuffer latency (audio).
    pub latency_ms: Option<u32>,
    /// Jitterbuffer latency of video.
    pub video_latency_ms: Option<u32>,
    /// Rooms to tap.
    pub include_rooms: Option<Vec<String>>,
    /// Rooms never tapped.
    pub exclude_rooms: Option<Vec<String>>,
    /// Participants never tapped.
    pub exclude_participants: Option<Vec<String>>,
    /// Consent mode: `opt-out` (default) or `opt-in` (`crate::privacy::consent`).
    pub consent: Option<String>,
    /// Result history.
    pub results_max_age_s: Option<u64>,
    /// Results kept per subject.
    pub results_per_subject: Option<i64>,
    /// Tag keys.
    pub tags: Option<TagKeys>,
    /// DataChannel injection.
    pub datachannel: Option<DataChannelFile>,
    /// Fusion and room mood.
    pub mood: Option<MoodFile>,
    /// This KMS's name.
    pub kms_name: Option<String>,
    /// Several daemons.
    pub cluster: Option<ClusterFile>,
    /// The host application: `kurento` (default) or `openvidu`.
    pub host: Option<String>,
    /// OpenVidu's REST API and signals.
    pub openvidu: Option<OpenViduFile>,
}

/// The `[openvidu]` table.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OpenViduFile {
    /// openvidu-server's `http://host:port`.
    pub url: Option<String>,
    /// File holding OpenVidu's secret.
    pub secret_file: Option<PathBuf>,
    /// Analyse screen shares too.
    pub include_screens: Option<bool>,
    /// Sessions refresh interval.
    pub refresh_ms: Option<u64>,
    /// Request time limit.
    pub timeout_ms: Option<u64>,
    /// Results as signals on/off.
    pub signals: Option<bool>,
    /// Signal type.
    pub signal_type: Option<String>,
    /// Signals per second per participant.
    pub signal_rate_hz: Option<f64>,
    /// `participant` or `room`.
    pub signal_audience: Option<crate::discovery::openvidu::SignalAudience>,
}

/// The `[cluster]` table.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterFile {
    /// On/off.
    pub enabled: Option<bool>,
    /// Lease entries expire this long after their last write.
    pub lease_ttl_ms: Option<u64>,
    /// Renewal interval.
    pub renew_ms: Option<u64>,
    /// Trust margin.
    pub margin_ms: Option<u64>,
    /// Placement delay.
    pub placement_delay_ms: Option<u64>,
    /// Rebalancing interval (0: off).
    pub rebalance_ms: Option<u64>,
}

/// The `[mood]` table.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MoodFile {
    /// On/off.
    pub enabled: Option<bool>,
    /// Contributors needed for a room aggregate.
    pub min_group: Option<usize>,
    /// Publish per-participant states on NATS.
    pub publish_states: Option<bool>,
    /// Smoothing time constant, seconds.
    pub smoothing_s: Option<f64>,
    /// A modality without input this long is dropped, seconds.
    pub stale_s: Option<f64>,
    /// JetStream history, seconds.
    pub max_age_s: Option<u64>,
    /// JetStream history, messages per subject.
    pub per_subject: Option<i64>,
}

/// The `[datachannel]` table.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataChannelFile {
    /// On/off.
    pub enabled: Option<bool>,
    /// Messages per second per participant.
    pub max_rate_hz: Option<f64>,
    /// Largest message.
    pub max_message_bytes: Option<usize>,
    /// Longest wait before a result is dropped as stale.
    pub max_wait_ms: Option<u64>,
    /// Channel label.
    pub label: Option<String>,
    /// Replace a DATA link the app made.
    pub replace_data_source: Option<bool>,
    /// `participant` or `room`.
    pub audience: Option<crate::inject::Audience>,
    /// ICE UDP ports `MIN-MAX`.
    pub ice_ports: Option<String>,
}

/// A bad configuration value.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// Unreadable.
    #[error("cannot read {0}: {1}")]
    Io(PathBuf, std::io::Error),
    /// Not valid TOML or unknown keys.
    #[error("{0}: {1}")]
    Toml(PathBuf, toml::de::Error),
    /// A value out of range.
    #[error("{0}")]
    Invalid(String),
}

impl FileConfig {
    /// Reads a file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text =
            std::fs::read_to_string(path).map_err(|e| ConfigError::Io(path.to_owned(), e))?;
        Self::parse(&text, path)
    }

    /// Reads a file's text (`origin` names it in errors).
    pub fn parse(text: &str, origin: &Path) -> Result<Self, ConfigError> {
        toml::from_str(text).map_err(|e| ConfigError::Toml(origin.to_owned(), e))
    }
}
