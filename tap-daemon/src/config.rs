//! The configuration file (TOML). Every key is optional; command-line flags and `KURENTO_TAP_*`
//! environment variables override it.
//!
//! ```toml
//! kurento = "ws://127.0.0.1:8888/kurento"   # or several: "a=ws://10.0.0.1:8888/kurento,b=ws://…"
//! kms_name = "kms-a"              # this KMS in lease keys, results and the cluster view (default: host:port)
//! nats = "nats://127.0.0.1:4222"
//! nats_creds = "/etc/kurento-tap/tap.creds"   # or nats_token = "…"
//! bind = "127.0.0.1"              # receive address, announced to KMS: must be reachable from it
//! ports = "40000-40999"           # receive ports (2 per tapped medium)
//! http = "127.0.0.1:9464"         # /metrics and /healthz ("" to disable), and the data endpoints unless data_http
//! data_http = "127.0.0.1:9465"    # the dashboard, /events, /history, /models on a listener of their own
//! token_file = "/etc/kurento-tap/token"   # the data token they require (Authorization: Bearer; ≥ 24 chars)
//! auth_proxy_header = "X-Forwarded-User"  # or: trust an authenticating reverse proxy's header
//! policy = "emotions"            # what may leave the daemon: emotions, expressions, aggregate (docs/privacy.md)
//! tap_crypto = "auto"             # tap leg: auto (SRTP unless KMS is in this namespace), sdes, off
//! srtp_suite = "AES_128_CM_HMAC_SHA1_80"
//! host = "kurento"                # or "openvidu": OpenVidu 2.x sessions (docs/integration.md, "OpenVidu 2")
//! owner = "kurento-tap"           # tag value on what this daemon creates
//! latency_ms = 100                # jitterbuffer
//! include_rooms = ["*"]
//! exclude_rooms = ["test-*"]
//! exclude_participants = ["recorder"]
//! consent = "opt-out"             # or "opt-in": only participants tagged kurento-tap.consent=true or granted by tap.v1.ctl.consent
//! results_max_age_s = 86400
//! results_per_subject = 1000
//!
//! [datachannel]                 # results into participants' DataChannels (docs/integration.md)
//! enabled = true
//! max_rate_hz = 4.0               # messages per second per participant, all models together
//! max_message_bytes = 4096
//! max_wait_ms = 2000              # a result waiting longer for its turn is dropped
//! label = "kurento-tap"
//! replace_data_source = false     # never take over a DATA link the app made
//! audience = "participant"        # or "room": everyone's results to everyone in the room
//! ice_ports = "41000-41099"       # UDP ports of the peers' ICE (default: any), apart from `ports`
//!
//! [mood]                        # fused states and room moods (docs/architecture.md, docs/privacy.md)
//! enabled = true
//! min_group = 3                   # no room aggregate from fewer contributors (presenter excluded)
//! publish_states = true           # per-participant states on tap.v1.state.* (NATS only)
//! smoothing_s = 2.0               # time constant of the smoothing
//! stale_s = 10.0                  # a modality without input this long is dropped
//! max_age_s = 86400               # history kept in JetStream TAP_AFFECT_V1
//! per_subject = 14400             # and at most this many per participant / room (4 h at 1/s)
//!
//! [cluster]                     # several daemons share the KMS's rooms (docs/operations.md)
//! enabled = false
//! lease_ttl_ms = 3000             # a dead daemon's rooms are taken over after this (+ ~1 s)
//! renew_ms = 1000
//! margin_ms = 1000                # a holder stops trusting its lease ttl - margin after renewing
//! placement_delay_ms = 1500       # a busier daemon leaves a new room to idler ones this long
//! rebalance_ms = 30000            # over fair share + 1: hand one room over this often (0: never)
//!
//! [openvidu]                    # with host = "openvidu"
//! url = "http://127.0.0.1:5443"   # openvidu-server's REST API (optional: names and signals)
//! secret_file = "/etc/kurento-tap/openvidu-secret"   # or KURENTO_TAP_OPENVIDU_SECRET
//! include_screens = false         # analyse screen shares too
//! refresh_ms = 5000               # GET /openvidu/api/sessions this often
//! timeout_ms = 3000               # each request's limit
//! signals = true                  # results into the call as signals
//! signal_type = "kurento-tap"     # the page listens to signal:kurento-tap
//! signal_rate_hz = 4.0
//! signal_audience = "participant" # or "room"
//!
//! [tags]
//! room = "kurento-tap.room"
//! participant = "kurento-tap.participant"
//! role = "kurento-tap.role"
//! consent = "kurento-tap.consent"
//! owner = "kurento-tap.owner"
//! tapped_endpoint = "kurento-tap.endpoint"
//! ```

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::discovery::TagKeys;
use crate::settings::DaemonConfig;

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
    /// Jitterbuffer latency.
    pub latency_ms: Option<u32>,
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

/// Parses `MIN-MAX` (at least 4 ports, even start used).
pub fn parse_ports(s: &str) -> Result<(u16, u16), ConfigError> {
    let (a, b) = s
        .split_once('-')
        .ok_or_else(|| ConfigError::Invalid(format!("ports {s:?}: expected MIN-MAX")))?;
    let (a, b): (u16, u16) = (
        a.trim()
            .parse()
            .map_err(|_| ConfigError::Invalid(format!("ports {s:?}: bad MIN")))?,
        b.trim()
            .parse()
            .map_err(|_| ConfigError::Invalid(format!("ports {s:?}: bad MAX")))?,
    );
    if a < 1024 || b <= a || b - a < 3 {
        return Err(ConfigError::Invalid(format!(
            "ports {s:?}: need MIN ≥ 1024 and at least 4 ports"
        )));
    }
    Ok((a, b))
}

/// Values given on the command line or in the environment (they win over the file).
#[derive(Debug, Default, Clone)]
pub struct Overrides {
    /// KMS URL.
    pub kurento: Option<String>,
    /// NATS URL.
    pub nats: Option<String>,
    /// Receive address.
    pub bind: Option<IpAddr>,
    /// Ports.
    pub ports: Option<String>,
    /// HTTP address or "".
    pub http: Option<String>,
    /// The data endpoints' own address.
    pub data_http: Option<String>,
    /// File holding the data token.
    pub token_file: Option<PathBuf>,
    /// The data token itself (from the environment; a file is preferred).
    pub token: Option<String>,
    /// A trusted proxy's header.
    pub auth_proxy_header: Option<String>,
    /// Owner id.
    pub owner: Option<String>,
    /// Processing policy.
    pub policy: Option<String>,
    /// Consent mode.
    pub consent: Option<String>,
    /// Tap leg protection.
    pub tap_crypto: Option<String>,
    /// SRTP suite.
    pub srtp_suite: Option<String>,
    /// DataChannel injection on/off.
    pub datachannels: Option<bool>,
    /// DataChannel messages per second per participant.
    pub datachannel_rate: Option<f64>,
    /// Whose results each participant receives.
    pub datachannel_audience: Option<crate::inject::Audience>,
    /// Cluster mode on/off.
    pub cluster: Option<bool>,
    /// This KMS's name.
    pub kms_name: Option<String>,
    /// The host application.
    pub host: Option<String>,
    /// openvidu-server's URL.
    pub openvidu_url: Option<String>,
    /// File holding OpenVidu's secret.
    pub openvidu_secret_file: Option<PathBuf>,
    /// OpenVidu's secret itself (from the environment only; a file is preferred).
    pub openvidu_secret: Option<String>,
    /// Analyse screen shares.
    pub openvidu_include_screens: Option<bool>,
    /// Results as OpenVidu signals.
    pub openvidu_signals: Option<bool>,
}

/// Parses the KMS list: `ws://h:8888/kurento`, or several as `name=url` separated by commas
/// (a bare URL is named by its host:port).
pub fn parse_kms_list(s: &str) -> Result<Vec<crate::settings::KmsTarget>, ConfigError> {
    let mut out: Vec<crate::settings::KmsTarget> = Vec::new();
    for item in s.split(',').map(str::trim).filter(|i| !i.is_empty()) {
        let (name, url) = match item.split_once('=') {
            Some((n, u)) if !n.contains("://") => (n.trim().to_owned(), u.trim().to_owned()),
            _ => (crate::settings::kms_name_from_url(item), item.to_owned()),
        };
        if !(url.starts_with("ws://") || url.starts_with("wss://")) {
            return Err(ConfigError::Invalid(format!(
                "kurento {item:?}: expected ws://host:port/kurento (or name=ws://…)"
            )));
        }
        check_kms_name(&name)?;
        if out.iter().any(|t| t.name == name) {
            return Err(ConfigError::Invalid(format!(
                "kurento: two KMS named {name:?}; name them (name=url,…)"
            )));
        }
        out.push(crate::settings::KmsTarget { name, url });
    }
    if out.is_empty() {
        return Err(ConfigError::Invalid("kurento: no KMS URL".into()));
    }
    if out.len() > 64 {
        return Err(ConfigError::Invalid(
            "kurento: at most 64 KMS per daemon".into(),
        ));
    }
    Ok(out)
}

fn check_kms_name(name: &str) -> Result<(), ConfigError> {
    if name.is_empty() || name.len() > 100 {
        return Err(ConfigError::Invalid(
            "a KMS name must be 1 to 100 characters".into(),
        ));
    }
    Ok(())
}

/// This machine's host name (a pod's name on Kubernetes).
fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "host".into())
}

/// Longest history kept in JetStream, seconds (ten years).
pub const MAX_HISTORY_S: u64 = 10 * 365 * 86_400;

/// File + overrides + defaults → the daemon's configuration.
pub fn resolve(mut file: FileConfig, o: Overrides) -> Result<DaemonConfig, ConfigError> {
    let d = DaemonConfig::default();
    let openvidu = resolve_openvidu(file.openvidu.take().unwrap_or_default(), &o)?;
    let ports = match o.ports.or(file.ports) {
        Some(p) => parse_ports(&p)?,
        None => d.ports,
    };
    let http = match o.http.or(file.http) {
        Some(h) if h.is_empty() => None,
        Some(h) => Some(
            h.parse::<SocketAddr>()
                .map_err(|_| ConfigError::Invalid(format!("http {h:?}: expected HOST:PORT")))?,
        ),
        None => d.http_listen,
    };
    let data_http =
        match o.data_http.or(file.data_http) {
            None => None,
            Some(h) => Some(h.parse::<SocketAddr>().map_err(|_| {
                ConfigError::Invalid(format!("data_http {h:?}: expected HOST:PORT"))
            })?),
        };
    let token = match (o.token, o.token_file.or(file.token_file)) {
        (Some(t), _) => Some(crate::auth::SecretToken::new(&t)),
        (None, Some(path)) => Some(crate::auth::SecretToken::from_file(&path)),
        (None, None) => None,
    }
    .transpose()
    .map_err(|e| ConfigError::Invalid(e.to_string()))?;
    let data_auth = crate::auth::DataAuth {
        token,
        proxy_header: None,
    }
    .with_proxy_header(o.auth_proxy_header.or(file.auth_proxy_header))
    .map_err(|e| ConfigError::Invalid(e.to_string()))?;
    // Every participant's results must not be open to the network: without a credential the data
    // endpoints may only listen on loopback.
    if let Some(addr) = data_http.or(http) {
        if !data_auth.enabled() && !addr.ip().is_loopback() {
            return Err(ConfigError::Invalid(format!(
                "the dashboard and data endpoints would listen on {addr} without a credential: set \
                 token_file (or KURENTO_TAP_TOKEN_FILE / KURENTO_TAP_TOKEN) or auth_proxy_header, or \
                 give them a loopback address of their own with data_http (e.g. 127.0.0.1:9465)"
            )));
        }
    }
    let policy = match o.policy.or(file.policy) {
        Some(p) => p
            .parse::<crate::privacy::policy::Policy>()
            .map_err(|e| ConfigError::Invalid(e.to_string()))?,
        None => d.policy,
    };
    let tap_crypto = match o.tap_crypto.or(file.tap_crypto) {
        Some(c) => c
            .parse::<crate::media::srtp::TapCrypto>()
            .map_err(|e| ConfigError::Invalid(e.to_string()))?,
        None => d.tap_crypto,
    };
    let srtp_suite = match o.srtp_suite.or(file.srtp_suite) {
        Some(c) => c
            .parse::<crate::media::srtp::Suite>()
            .map_err(|e| ConfigError::Invalid(e.to_string()))?,
        None => d.srtp_suite,
    };
    let consent = match o.consent.or(file.consent) {
        Some(c) => c
            .parse::<crate::privacy::consent::ConsentMode>()
            .map_err(|e| ConfigError::Invalid(e.to_string()))?,
        None => d.consent,
    };
    let latency_ms = file.latency_ms.unwrap_or(d.latency_ms);
    if latency_ms > 2000 {
        return Err(ConfigError::Invalid("latency_ms must be ≤ 2000".into()));
    }
    let dc_file = file.datachannel.unwrap_or_default();
    let dc = d.datachannel.clone();
    let max_rate_hz = o
        .datachannel_rate
        .or(dc_file.max_rate_hz)
        .unwrap_or(dc.max_rate_hz);
    if !(max_rate_hz.is_finite() && (0.01..=100.0).contains(&max_rate_hz)) {
        return Err(ConfigError::Invalid(
            "datachannel max_rate_hz must be between 0.01 and 100".into(),
        ));
    }
    let max_message_bytes = dc_file.max_message_bytes.unwrap_or(dc.max_message_bytes);
    if !(256..=65_536).contains(&max_message_bytes) {
        return Err(ConfigError::Invalid(
            "datachannel max_message_bytes must be between 256 and 65536".into(),
        ));
    }
    let ice_ports = match &dc_file.ice_ports {
        Some(r) => {
            let (a, b) = parse_ports(r)?;
            if a <= ports.1 && ports.0 <= b {
                return Err(ConfigError::Invalid(format!(
                    "datachannel ice_ports {r:?} overlaps the receive ports {}-{}",
                    ports.0, ports.1
                )));
            }
            Some((a, b))
        }
        None => None,
    };
    let max_wait_ms = dc_file
        .max_wait_ms
        .unwrap_or(dc.max_wait.as_millis() as u64);
    if !(1..=60_000).contains(&max_wait_ms) {
        return Err(ConfigError::Invalid(
            "datachannel max_wait_ms must be between 1 and 60000".into(),
        ));
    }
    let datachannel = crate::inject::InjectorConfig {
        enabled: o.datachannels.or(dc_file.enabled).unwrap_or(dc.enabled),
        max_rate_hz,
        max_message_bytes,
        max_wait: Duration::from_millis(max_wait_ms),
        label: dc_file.label.unwrap_or(dc.label),
        replace_data_source: dc_file
            .replace_data_source
            .unwrap_or(dc.replace_data_source),
        setup_timeout: dc.setup_timeout,
        audience: o
            .datachannel_audience
            .or(dc_file.audience)
            .unwrap_or(dc.audience),
        ice_ports,
    };
    let mood_file = file.mood.unwrap_or_default();
    let md = crate::mood::MoodSettings::default();
    let mut engine = md.engine.clone();
    engine.min_group = mood_file.min_group.unwrap_or(engine.min_group);
    engine.smoothing_s = mood_file.smoothing_s.unwrap_or(engine.smoothing_s);
    engine.stale_s = mood_file.stale_s.unwrap_or(engine.stale_s);
    if engine.min_group == 0 || engine.min_group > 1000 {
        return Err(ConfigError::Invalid(
            "mood min_group must be between 1 and 1000".into(),
        ));
    }
    if !(0.1..=60.0).contains(&engine.smoothing_s) || !(1.0..=600.0).contains(&engine.stale_s) {
        return Err(ConfigError::Invalid(
            "mood smoothing_s must be 0.1..60 and stale_s 1..600".into(),
        ));
    }
    let history = |key: &str, secs: Option<u64>, default: Duration| match secs {
        // JetStream keeps ages in nanoseconds (i64): ten years is far inside, and far beyond use.
        Some(s) if s == 0 || s > MAX_HISTORY_S => Err(ConfigError::Invalid(format!(
            "{key} must be between 1 and {MAX_HISTORY_S} (ten years)"
        ))),
        Some(s) => Ok(Duration::from_secs(s)),
        None => Ok(default),
    };
    let mood = crate::mood::MoodSettings {
        enabled: mood_file.enabled.unwrap_or(md.enabled),
        engine,
        publish_states: mood_file.publish_states.unwrap_or(md.publish_states),
        max_age: history("mood max_age_s", mood_file.max_age_s, md.max_age)?,
        per_subject: mood_file.per_subject.unwrap_or(md.per_subject),
        policy,
    };
    if mood.per_subject == 0 || mood.per_subject < -1 {
        return Err(ConfigError::Invalid(
            "mood per_subject must be positive (or -1: unlimited)".into(),
        ));
    }
    let cluster_file = file.cluster.unwrap_or_default();
    let ls = crate::cluster::lease::LeaseSettings::default();
    let lease_ms = |key: &str, v: Option<u64>, default: Duration| match v {
        Some(ms) if ms > 600_000 => Err(ConfigError::Invalid(format!(
            "{key} must be at most 600000"
        ))),
        Some(ms) => Ok(Duration::from_millis(ms)),
        None => Ok(default),
    };
    let lease = crate::cluster::lease::LeaseSettings {
        ttl: lease_ms("cluster lease_ttl_ms", cluster_file.lease_ttl_ms, ls.ttl)?,
        renew_every: lease_ms("cluster renew_ms", cluster_file.renew_ms, ls.renew_every)?,
        margin: lease_ms("cluster margin_ms", cluster_file.margin_ms, ls.margin)?,
        placement_delay: lease_ms(
            "cluster placement_delay_ms",
            cluster_file.placement_delay_ms,
            ls.placement_delay,
        )?,
        rebalance_every: match cluster_file.rebalance_ms {
            Some(ms) if ms > 86_400_000 => {
                return Err(ConfigError::Invalid(
                    "cluster rebalance_ms must be at most 86400000 (a day)".into(),
                ))
            }
            Some(ms) => Duration::from_millis(ms),
            None => ls.rebalance_every,
        },
    };
    lease
        .validate()
        .map_err(|e| ConfigError::Invalid(format!("cluster: {e}")))?;
    let cluster = crate::cluster::ClusterSettings {
        enabled: o.cluster.or(cluster_file.enabled).unwrap_or(false),
        lease,
    };
    let mut targets = match o.kurento.or(file.kurento) {
        Some(list) => parse_kms_list(&list)?,
        None => vec![crate::settings::KmsTarget {
            name: crate::settings::kms_name_from_url(&d.kurento_url),
            url: d.kurento_url.clone(),
        }],
    };
    if let Some(name) = o.kms_name.or(file.kms_name) {
        if targets.len() > 1 {
            return Err(ConfigError::Invalid(
                "kms_name names one KMS: with several, name each in the list (name=url,…)".into(),
            ));
        }
        check_kms_name(&name)?;
        targets[0].name = name;
    }
    let first = targets.remove(0);
    let (kurento_url, kms_name, additional_kms) = (first.url, first.name, targets);
    let owner = match o.owner.or(file.owner) {
        Some(owner) => owner,
        // Daemons sharing a KMS tell their objects apart by owner: one per host by default.
        None if cluster.enabled => format!("{}-{}", d.owner, host_name()),
        None => d.owner,
    };
    if owner.is_empty() || owner.len() > 200 {
        return Err(ConfigError::Invalid(
            "owner must be 1 to 200 characters".into(),
        ));
    }
    let host = match o.host.clone().or(file.host) {
        Some(h) => h
            .parse::<crate::discovery::openvidu::Host>()
            .map_err(ConfigError::Invalid)?,
        None => d.host,
    };
    if host != crate::discovery::openvidu::Host::OpenVidu && openvidu.url.is_some() {
        return Err(ConfigError::Invalid(
            "openvidu url is set but host is not \"openvidu\" (--host openvidu)".into(),
        ));
    }
    Ok(DaemonConfig {
        host,
        openvidu,
        kurento_url,
        kms_name,
        additional_kms,
        cluster,
        scaling_window: d.scaling_window,
        nats_url: o.nats.or(file.nats).unwrap_or(d.nats_url),
        nats_creds: file.nats_creds,
        nats_token: file.nats_token,
        bind_ip: o.bind.or(file.bind).unwrap_or(d.bind_ip),
        ports,
        tags: file.tags.unwrap_or_default(),
        owner,
        include_rooms: file.include_rooms.unwrap_or_default(),
        exclude_rooms: file.exclude_rooms.unwrap_or_default(),
        exclude_participants: file.exclude_participants.unwrap_or_default(),
        consent,
        latency_ms,
        http_listen: http,
        data_http_listen: data_http,
        data_auth,
        results_max_age: history(
            "results_max_age_s",
            file.results_max_age_s,
            d.results_max_age,
        )?,
        results_per_subject: file.results_per_subject.unwrap_or(d.results_per_subject),
        rescan_interval: d.rescan_interval,
        lookup_new_endpoints: d.lookup_new_endpoints,
        datachannel,
        mood,
        policy,
        tap_crypto,
        srtp_suite,
    })
}

/// The `[openvidu]` table + overrides → settings (the URL checked, the secret read; it is never
/// put in an error message).
fn resolve_openvidu(
    f: OpenViduFile,
    o: &Overrides,
) -> Result<crate::discovery::openvidu_rest::OpenViduSettings, ConfigError> {
    use crate::discovery::openvidu_rest::{OpenViduSecret, OpenViduSettings};
    let d = OpenViduSettings::default();
    let url = o.openvidu_url.clone().or(f.url);
    if let Some(u) = &url {
        crate::discovery::openvidu::parse_base_url(u).map_err(ConfigError::Invalid)?;
    }
    let secret = match (
        &o.openvidu_secret,
        o.openvidu_secret_file.clone().or(f.secret_file),
    ) {
        (Some(s), _) => Some(OpenViduSecret::new(s).map_err(ConfigError::Invalid)?),
        (None, Some(path)) => Some(OpenViduSecret::from_file(&path).map_err(ConfigError::Invalid)?),
        (None, None) => None,
    };
    if url.is_some() && secret.is_none() {
        return Err(ConfigError::Invalid(
            "openvidu url needs OpenVidu's secret: openvidu secret_file (--openvidu-secret-file, \
             KURENTO_TAP_OPENVIDU_SECRET_FILE) or KURENTO_TAP_OPENVIDU_SECRET"
                .into(),
        ));
    }
    let ms = |key: &str, v: Option<u64>, default: Duration, min: u64, max: u64| match v {
        Some(v) if !(min..=max).contains(&v) => Err(ConfigError::Invalid(format!(
            "openvidu {key} must be between {min} and {max}"
        ))),
        Some(v) => Ok(Duration::from_millis(v)),
        None => Ok(default),
    };
    let signal_rate_hz = f.signal_rate_hz.unwrap_or(d.signal_rate_hz);
    if !(signal_rate_hz.is_finite() && (0.01..=50.0).contains(&signal_rate_hz)) {
        return Err(ConfigError::Invalid(
            "openvidu signal_rate_hz must be between 0.01 and 50".into(),
        ));
    }
    let signal_type = f.signal_type.unwrap_or(d.signal_type);
    if signal_type.is_empty()
        || signal_type.len() > 64
        || !signal_type
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b))
    {
        return Err(ConfigError::Invalid(
            "openvidu signal_type must be 1 to 64 of [A-Za-z0-9-_.:]".into(),
        ));
    }
    Ok(OpenViduSettings {
        url,
        secret,
        include_screens: o
            .openvidu_include_screens
            .or(f.include_screens)
            .unwrap_or(d.include_screens),
        refresh: ms("refresh_ms", f.refresh_ms, d.refresh, 500, 600_000)?,
        timeout: ms("timeout_ms", f.timeout_ms, d.timeout, 100, 60_000)?,
        signals: o.openvidu_signals.or(f.signals).unwrap_or(d.signals),
        signal_type,
        signal_rate_hz,
        signal_audience: f.signal_audience.unwrap_or(d.signal_audience),
        signal_max_wait: d.signal_max_wait,
        signal_max_bytes: d.signal_max_bytes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_openvidu_host_and_table_are_read_and_checked_and_the_secret_never_shows() {
        let d = resolve(FileConfig::default(), Overrides::default()).unwrap();
        assert_eq!(
            d.host,
            crate::discovery::openvidu::Host::Kurento,
            "today's behaviour by default"
        );
        let secret = std::env::temp_dir().join(format!("ov-secret-{}", std::process::id()));
        std::fs::write(&secret, "MY_SECRET_value\n").unwrap();
        let file: FileConfig = toml::from_str(&format!(
            "host = 'openvidu'\n[openvidu]\nurl = 'http://127.0.0.1:5443'\nsecret_file = '{}'\ninclude_screens = true\nsignal_audience = 'room'\n",
            secret.display()
        ))
        .unwrap();
        let c = resolve(file, Overrides::default()).unwrap();
        assert_eq!(c.host, crate::discovery::openvidu::Host::OpenVidu);
        assert!(c.openvidu.include_screens);
        assert_eq!(
            c.openvidu.signal_audience,
            crate::discovery::openvidu::SignalAudience::Room
        );
        assert!(
            !format!("{c:?}").contains("MY_SECRET"),
            "the secret never shows"
        );
        let _ = std::fs::remove_file(&secret);
        // From the environment, with flags winning.
        let o = Overrides {
            host: Some("openvidu".into()),
            openvidu_url: Some("http://ov:5443".into()),
            openvidu_secret: Some("env-secret".into()),
            ..Default::default()
        };
        let c = resolve(FileConfig::default(), o).unwrap();
        assert_eq!(c.openvidu.url.as_deref(), Some("http://ov:5443"));
        for (bad, says) in [
            (
                Overrides {
                    host: Some("jitsi".into()),
                    ..Default::default()
                },
                "expected kurento or openvidu",
            ),
            (
                Overrides {
                    host: Some("openvidu".into()),
                    openvidu_url: Some("http://ov:5443".into()),
                    ..Default::default()
                },
                "secret",
            ),
            (
                Overrides {
                    host: Some("openvidu".into()),
                    openvidu_url: Some("https://ov".into()),
                    openvidu_secret: Some("s".into()),
                    ..Default::default()
                },
                "https is not supported",
            ),
            (
                Overrides {
                    openvidu_url: Some("http://ov:5443".into()),
                    openvidu_secret: Some("s".into()),
                    ..Default::default()
                },
                "host is not",
            ),
            (
                Overrides {
                    host: Some("openvidu".into()),
                    openvidu_secret_file: Some("/nonexistent/ov".into()),
                    ..Default::default()
                },
                "cannot read",
            ),
        ] {
            let e = resolve(FileConfig::default(), bad).unwrap_err().to_string();
            assert!(e.contains(says), "{e}");
        }
        let o = Overrides {
            host: Some("openvidu".into()),
            openvidu_url: Some("http://ov:5443".into()),
            openvidu_secret: Some("TOPSECRET".into()),
            ..Default::default()
        };
        let file: FileConfig = toml::from_str("[openvidu]\nsignal_rate_hz = 0\n").unwrap();
        let e = resolve(file, o).unwrap_err().to_string();
        assert!(
            e.contains("signal_rate_hz") && !e.contains("TOPSECRET"),
            "{e}"
        );
        assert!(
            toml::from_str::<FileConfig>("[openvidu]\nsecret = 'x'\n").is_err(),
            "no secret in the file itself"
        );
    }

    #[test]
    fn the_policy_is_read_from_the_file_or_an_override_and_unknown_names_are_refused() {
        use crate::privacy::policy::Policy;
        let d = resolve(FileConfig::default(), Overrides::default()).unwrap();
        assert_eq!(
            (d.policy, d.mood.policy),
            (Policy::Emotions, Policy::Emotions)
        );
        let file: FileConfig = toml::from_str("policy = 'expressions'\n").unwrap();
        let c = resolve(file, Overrides::default()).unwrap();
        assert_eq!(
            (c.policy, c.mood.policy),
            (Policy::Expressions, Policy::Expressions)
        );
        let file: FileConfig = toml::from_str("policy = 'expressions'\n").unwrap();
        let o = Overrides {
            policy: Some("aggregate".into()),
            ..Default::default()
        };
        assert_eq!(resolve(file, o).unwrap().policy, Policy::Aggregate);
        let o = Overrides {
            policy: Some("emotion-free".into()),
            ..Default::default()
        };
        let e = resolve(FileConfig::default(), o).unwrap_err().to_string();
        assert!(
            e.contains("unknown policy") && e.contains("aggregate"),
            "{e}"
        );
    }

    #[test]
    fn the_consent_mode_is_read_from_the_file_or_an_override_and_unknown_ones_are_refused() {
        use crate::privacy::consent::ConsentMode;
        let d = resolve(FileConfig::default(), Overrides::default()).unwrap();
        assert_eq!(
            d.consent,
            ConsentMode::OptOut,
            "today's behaviour by default"
        );
        let file: FileConfig = toml::from_str("consent = 'opt-in'\n").unwrap();
        assert_eq!(
            resolve(file, Overrides::default()).unwrap().consent,
            ConsentMode::OptIn
        );
        let file: FileConfig = toml::from_str("consent = 'opt-in'\n").unwrap();
        let o = Overrides {
            consent: Some("opt-out".into()),
            ..Default::default()
        };
        assert_eq!(resolve(file, o).unwrap().consent, ConsentMode::OptOut);
        let o = Overrides {
            consent: Some("yes".into()),
            ..Default::default()
        };
        let e = resolve(FileConfig::default(), o).unwrap_err().to_string();
        assert!(
            e.contains("unknown consent mode") && e.contains("opt-in"),
            "{e}"
        );
    }

    #[test]
    fn the_cluster_table_and_kms_lists_are_read_and_checked() {
        let file: FileConfig = toml::from_str(
            "kurento = \"a=ws://10.0.0.1:8888/kurento, b=ws://10.0.0.2:8888/kurento\"\n[cluster]\nenabled = true\nrebalance_ms = 0\n",
        )
        .unwrap();
        let c = resolve(file, Overrides::default()).unwrap();
        assert!(c.cluster.enabled);
        assert!(c.cluster.lease.rebalance_every.is_zero());
        assert!(
            c.owner.starts_with("kurento-tap-"),
            "one owner per host in cluster mode"
        );
        let names: Vec<String> = c.targets().into_iter().map(|t| t.name).collect();
        assert_eq!(names, ["a", "b"]);
        let bare = parse_kms_list("ws://h1:8888/kurento").unwrap();
        assert_eq!(bare[0].name, "h1:8888");
        for bad in [
            "[cluster]\nrenew_ms = 2000\n",
            "[cluster]\nmargin_ms = 3000\n",
            "kurento = \"a=ws://x/kurento,a=ws://y/kurento\"\n",
            "kurento = \"http://x\"\n",
            "kurento = \"a=ws://x/kurento,b=ws://y/kurento\"\nkms_name = \"c\"\n",
        ] {
            let file: FileConfig = toml::from_str(bad).unwrap();
            assert!(resolve(file, Overrides::default()).is_err(), "{bad}");
        }
    }

    #[test]
    fn data_endpoints_leave_loopback_only_with_a_credential() {
        let token = std::env::temp_dir().join(format!("tap-token-{}", std::process::id()));
        std::fs::write(&token, "0123456789abcdef0123456789abcdef\n").unwrap();
        let parse = |text: String| {
            let file: FileConfig = toml::from_str(&text).unwrap();
            resolve(file, Overrides::default())
        };
        // Open to the network without a credential: refused, saying what to do.
        let e = parse("http = '0.0.0.0:9464'\n".into())
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("without a credential") && e.contains("token_file"),
            "{e}"
        );
        // Probes on the network, data on loopback: fine without a token.
        let c = parse("http = '0.0.0.0:9464'\ndata_http = '127.0.0.1:9465'\n".into()).unwrap();
        assert_eq!(c.data_http_listen, Some("127.0.0.1:9465".parse().unwrap()));
        assert!(!c.data_auth.enabled());
        // With a token file, anywhere.
        let c = parse(format!(
            "http = '0.0.0.0:9464'\ntoken_file = '{}'\n",
            token.display()
        ))
        .unwrap();
        assert!(c
            .data_auth
            .token
            .as_ref()
            .unwrap()
            .matches("0123456789abcdef0123456789abcdef"));
        // Or behind a proxy that authenticates.
        let c = parse("http = '0.0.0.0:9464'\nauth_proxy_header = 'X-Forwarded-User'\n".into())
            .unwrap();
        assert_eq!(
            c.data_auth.proxy_header.as_deref(),
            Some("x-forwarded-user")
        );
        // A short token, a missing file, a bad header name, a bad address: clear errors.
        std::fs::write(&token, "short\n").unwrap();
        let e = parse(format!("token_file = '{}'\n", token.display()))
            .unwrap_err()
            .to_string();
        assert!(e.contains("at least 24"), "{e}");
        let _ = std::fs::remove_file(&token);
        let e = parse(format!("token_file = '{}'\n", token.display()))
            .unwrap_err()
            .to_string();
        assert!(e.contains(&token.display().to_string()), "{e}");
        assert!(parse("auth_proxy_header = 'X User'\n".into()).is_err());
        assert!(parse("data_http = 'nowhere'\n".into()).is_err());
        // The token never shows in the configuration's debug print.
        let c = resolve(
            FileConfig::default(),
            Overrides {
                token: Some("0123456789abcdef0123456789abcdef".into()),
                ..Default::default()
            },
        )
        .unwrap();
        assert!(!format!("{c:?}").contains("0123456789abcdef"));
    }

    #[test]
    fn the_mood_table_is_read_and_checked() {
        let file: FileConfig =
            toml::from_str("[mood]\nmin_group = 5\nenabled = false\nper_subject = 100\n").unwrap();
        let c = resolve(file, Overrides::default()).unwrap();
        assert_eq!(c.mood.engine.min_group, 5);
        assert!(!c.mood.enabled);
        assert_eq!(c.mood.per_subject, 100);
        for bad in [
            "[mood]\nmin_group = 0\n",
            "[mood]\nstale_s = 0.1\n",
            "[mood]\nper_subject = 0\n",
        ] {
            let file: FileConfig = toml::from_str(bad).unwrap();
            assert!(resolve(file, Overrides::default()).is_err(), "{bad}");
        }
        assert!(toml::from_str::<FileConfig>("[mood]\nmin_grop = 3\n").is_err());
    }

    #[test]
    fn flags_win_over_the_file() {
        let file: FileConfig = toml::from_str(
            "kurento = 'ws://a/kurento'\nports = '41000-41999'\nhttp = ''\n[tags]\nroom = 'room'\n",
        )
        .unwrap();
        let c = resolve(
            file,
            Overrides {
                kurento: Some("ws://b/kurento".into()),
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!(c.kurento_url, "ws://b/kurento");
        assert_eq!(c.ports, (41000, 41999));
        assert_eq!(c.http_listen, None);
        assert_eq!(c.tags.room, "room");
        assert_eq!(c.tags.participant, "kurento-tap.participant");
    }

    #[test]
    fn bad_values_are_clear_errors() {
        assert!(toml::from_str::<FileConfig>("kurentoo = 'x'").is_err());
        assert!(parse_ports("10-20").is_err());
        assert!(parse_ports("50000").is_err());
        let e = resolve(
            FileConfig::default(),
            Overrides {
                http: Some("nowhere".into()),
                ..Default::default()
            },
        )
        .unwrap_err();
        assert!(e.to_string().contains("HOST:PORT"));
        let file: FileConfig = toml::from_str("[datachannel]\nmax_rate_hz = 0\n").unwrap();
        let e = resolve(file, Overrides::default()).unwrap_err();
        assert!(e.to_string().contains("max_rate_hz"), "{e}");
        assert!(toml::from_str::<FileConfig>("[datachannel]\nrate = 1\n").is_err());
        let file: FileConfig =
            toml::from_str("ports = '40000-40999'\n[datachannel]\nice_ports = '40500-40600'\n")
                .unwrap();
        let e = resolve(file, Overrides::default()).unwrap_err();
        assert!(e.to_string().contains("overlaps"), "{e}");
        let file: FileConfig =
            toml::from_str("[datachannel]\nice_ports = '41000-41099'\n").unwrap();
        let c = resolve(file, Overrides::default()).unwrap();
        assert_eq!(c.datachannel.ice_ports, Some((41000, 41099)));
    }

    #[test]
    fn datachannel_settings_from_file_and_flags() {
        let file: FileConfig = toml::from_str(
            "[datachannel]\nenabled = true\nmax_rate_hz = 1.5\nmax_wait_ms = 500\nlabel = 'ai'\naudience = 'room'\n",
        )
        .unwrap();
        let c = resolve(
            file,
            Overrides {
                datachannels: Some(false),
                ..Default::default()
            },
        )
        .unwrap();
        assert!(!c.datachannel.enabled);
        assert_eq!(c.datachannel.max_rate_hz, 1.5);
        assert_eq!(c.datachannel.max_wait, Duration::from_millis(500));
        assert_eq!(c.datachannel.label, "ai");
        assert_eq!(c.datachannel.audience, crate::inject::Audience::Room);
        assert!(toml::from_str::<FileConfig>("[datachannel]\naudience = 'all'\n").is_err());
    }
}
