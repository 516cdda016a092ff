//! Everything the daemon is configured with ([`DaemonConfig`]), whatever it was read from (the file,
//! environment and flags are merged into it by [`crate::config`]).

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use crate::discovery::TagKeys;
use crate::inject::InjectorConfig;

/// Receive threads shared by every tap unless configured otherwise. Measured at 50 participants
/// on a 2-core node (docs/benchmarks.md, "Fifty participants on one 2-core node"): 5 threads in all
/// against ~500 with rtpbin per tap, a third less CPU and ~30 MiB less, faces' p95 29 against
/// 238 ms and voice at 100 against 60 % of its rate. What it gives up: RTCP (no NACK asked of
/// KMS, capture times from arrival rather than sender reports); rtpbin per tap
/// (`receive_threads = "per-tap"`) keeps them, for a tap leg that crosses a lossy network.
pub const DEFAULT_RECEIVE_THREADS: usize = 2;

/// Everything the daemon is configured with.
#[derive(Debug, Clone)]
pub struct DaemonConfig {
    /// `ws://host:8888/kurento`.
    pub kurento_url: String,
    /// `nats://host:4222`.
    pub nats_url: String,
    /// NATS credentials file (`.creds`), if any.
    pub nats_creds: Option<std::path::PathBuf>,
    /// NATS token, if any.
    pub nats_token: Option<String>,
    /// Address our receive sockets bind to and our offers announce (must be reachable from KMS).
    pub bind_ip: IpAddr,
    /// Receive port range.
    pub ports: (u16, u16),
    /// Tag keys.
    pub tags: TagKeys,
    /// This daemon's owner id, tagged on what it creates (leftovers are swept at start).
    pub owner: String,
    /// Rooms to tap (patterns with `*`); empty = all.
    pub include_rooms: Vec<String>,
    /// Rooms never tapped.
    pub exclude_rooms: Vec<String>,
    /// Participants never tapped (name patterns).
    pub exclude_participants: Vec<String>,
    /// Who is analysed: everyone but those who opted out (default), or only those who opted in
    /// ([`crate::privacy::consent`]).
    pub consent: crate::privacy::consent::ConsentMode,
    /// Jitterbuffer latency of audio (and of video on shared receive threads' absent rtpbin: unused).
    pub latency_ms: u32,
    /// Jitterbuffer latency of video: how long a gap is waited for (a NACK's retransmission, or
    /// packets KMS holds back) before later frames go on without it.
    pub video_latency_ms: u32,
    /// Where `/metrics` and `/healthz` are served (and the data endpoints, unless
    /// `data_http_listen` gives them a listener of their own).
    pub http_listen: Option<SocketAddr>,
    /// The dashboard, `/events`, `/history` and `/models` on their own listener.
    pub data_http_listen: Option<SocketAddr>,
    /// Who may read the data endpoints (a token, a trusted proxy header; nothing: loopback only).
    pub data_auth: crate::auth::DataAuth,
    /// Result history kept in JetStream.
    pub results_max_age: Duration,
    /// Results kept per (room, participant, model) subject.
    pub results_per_subject: i64,
    /// How often rooms are re-read (catches anything events missed).
    pub rescan_interval: Duration,
    /// Look at a WebRTC endpoint as soon as KMS announces it (ObjectCreated), on its own, instead
    /// of waiting for the next scan of every room (on by default; off only to measure the scan).
    pub lookup_new_endpoints: bool,
    /// Results into participants' DataChannels.
    pub datachannel: InjectorConfig,
    /// Fused states and room moods.
    pub mood: crate::mood::MoodSettings,
    /// What may leave the daemon ([`crate::privacy::policy`]; also the fusion's, whatever `mood.policy` says).
    pub policy: crate::privacy::policy::Policy,
    /// Tap leg protection (`crate::media::srtp`): SRTP unless KMS is in this namespace, by default.
    pub tap_crypto: crate::media::srtp::TapCrypto,
    /// Threads that receive and decode taps: `Some(n)`, n threads shared by every tap (default
    /// [`DEFAULT_RECEIVE_THREADS`]); `None`, rtpbin per tap
    /// ([`crate::media::receiver::ReceiveThreads`]).
    pub receive_threads: Option<usize>,
    /// The SRTP suite of encrypted taps.
    pub srtp_suite: crate::media::srtp::Suite,
    /// This KMS's name in lease keys, logs and the cluster view (default: its URL's host:port).
    pub kms_name: String,
    /// More KMS watched by this daemon, besides `kurento_url`.
    pub additional_kms: Vec<KmsTarget>,
    /// Sharing rooms with other daemons.
    pub cluster: crate::cluster::ClusterSettings,
    /// The host application: any Kurento app (default) or OpenVidu 2.x (`crate::discovery::openvidu`).
    pub host: crate::discovery::openvidu::Host,
    /// OpenVidu's REST API and signals (with `host = openvidu`).
    pub openvidu: crate::discovery::openvidu::client::OpenViduSettings,
    /// The scaling figures' averaging window (`kurento_tap_model_*`).
    pub scaling_window: Duration,
}

/// A KMS to watch.
#[derive(Debug, Clone, PartialEq)]
pub struct KmsTarget {
    /// Its name (lease keys, status, metrics).
    pub name: String,
    /// `ws://host:8888/kurento`.
    pub url: String,
}

impl DaemonConfig {
    /// Every KMS watched: `kurento_url` first.
    pub fn targets(&self) -> Vec<KmsTarget> {
        let mut all = vec![KmsTarget {
            name: self.kms_name.clone(),
            url: self.kurento_url.clone(),
        }];
        all.extend(self.additional_kms.iter().cloned());
        all
    }
}

/// A KMS's default name: the host and port of its URL.
pub fn kms_name_from_url(url: &str) -> String {
    let rest = url.split_once("://").map(|(_, r)| r).unwrap_or(url);
    let authority = rest.split('/').next().unwrap_or(rest);
    if authority.is_empty() {
        "kms".into()
    } else {
        authority.to_owned()
    }
}

impl Default for DaemonConfig {
    fn default() -> Self {
        DaemonConfig {
            kurento_url: "ws://127.0.0.1:8888/kurento".into(),
            nats_url: "nats://127.0.0.1:4222".into(),
            nats_creds: None,
            nats_token: None,
            bind_ip: [127, 0, 0, 1].into(),
            ports: (40000, 40999),
            tags: TagKeys::default(),
            owner: "kurento-tap".into(),
            include_rooms: vec![],
            exclude_rooms: vec![],
            exclude_participants: vec![],
            consent: crate::privacy::consent::ConsentMode::default(),
            latency_ms: 100,
            // Costs nothing while packets come in order (rtpjitterbuffer pushes them at once); on
            // a gap it is the wait for the retransmission, which saves every frame referencing
            // the lost one. Measured on KMS 7.3 with H.264 under 5 % loss and 30 ± 30 ms jitter
            // on the whole path: 100 ms gave the tap 36–85 % of the face rate where a browser
            // subscriber decoded 80–99 % of the frames; 300 ms, 65–100 % where it decoded
            // 73–99 % (docs/benchmarks.md).
            video_latency_ms: 300,
            http_listen: Some(([127, 0, 0, 1], 9464).into()),
            data_http_listen: None,
            data_auth: crate::auth::DataAuth::default(),
            results_max_age: Duration::from_secs(24 * 3600),
            results_per_subject: 1000,
            rescan_interval: Duration::from_secs(1),
            lookup_new_endpoints: true,
            datachannel: InjectorConfig::default(),
            mood: crate::mood::MoodSettings::default(),
            policy: crate::privacy::policy::Policy::default(),
            tap_crypto: crate::media::srtp::TapCrypto::default(),
            receive_threads: Some(DEFAULT_RECEIVE_THREADS),
            srtp_suite: crate::media::srtp::Suite::default(),
            kms_name: "127.0.0.1:8888".into(),
            additional_kms: vec![],
            scaling_window: crate::cluster::scaling::ScalingSettings::default().window,
            cluster: crate::cluster::ClusterSettings::default(),
            host: crate::discovery::openvidu::Host::default(),
            openvidu: crate::discovery::openvidu::client::OpenViduSettings::default(),
        }
    }
}
