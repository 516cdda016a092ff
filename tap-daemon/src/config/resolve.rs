//! File + flags/environment + defaults → the daemon's configuration, every value checked.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use crate::settings::DaemonConfig;

use super::file::*;
use super::parse::*;

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
    /// Receive threads: `per-tap` or a number.
    pub receive_threads: Option<String>,
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
    let receive_threads = match o.receive_threads.or(file.receive_threads) {
        Some(s) => parse_receive_threads(&s)?,
        None => d.receive_threads,
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
    let video_latency_ms = file.video_latency_ms.unwrap_or(d.video_latency_ms);
    if video_latency_ms > 2000 {
        return Err(ConfigError::Invalid(
            "video_latency_ms must be ≤ 2000".into(),
        ));
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
        video_latency_ms,
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
        receive_threads,
        srtp_suite,
    })
}

/// The `[openvidu]` table + overrides → settings (the URL checked, the secret read; it is never
/// put in an error message).
fn resolve_openvidu(
    f: OpenViduFile,
    o: &Overrides,
) -> Result<crate::discovery::openvidu::client::OpenViduSettings, ConfigError> {
    use crate::discovery::openvidu::client::{OpenViduSecret, OpenViduSettings};
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
