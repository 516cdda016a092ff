//! The watcher's state: what it knows of each endpoint, and the handles it works with.

use std::collections::{HashMap, HashSet};

use crate::kms::orphans::OwnedKind;
use std::sync::Arc;
use std::time::Instant;

use kurento_client::KurentoClient;
use tokio::sync::mpsc;

use crate::discovery::Participant;
use crate::metrics::Metrics;
use crate::settings::DaemonConfig;
use crate::tap::{Tap, TapContext};

use super::decide::{Fresh, Phase};

pub(crate) enum Known {
    Tapped(Box<Tap>),
    /// A setup (examine + tap) is running for it.
    Pending,
    /// It went away while its setup ran: when the setup returns, stop what it made (and release
    /// our objects when `release`: the room lives on).
    Cancelled {
        /// Release our objects (false when the whole pipeline went).
        release: bool,
    },
    /// Not a publisher, or one we do not tap (excluded, detached by control).
    Ignored,
    /// A publisher not analysed for want of consent (opted out, or not opted in under `opt-in`):
    /// examined again on every scan (its tags re-read), and at once on a consent request.
    NoConsent(Box<Participant>),
    /// Not negotiated or not live yet.
    Waiting,
    /// The tap failed; retry after this instant.
    Failed(Instant),
    /// Under `--host openvidu`: a publisher WebRtcEndpoint whose tap is kept under its
    /// PassThrough's id (here), so that a reconnect (a new WebRtcEndpoint on the same
    /// PassThrough) keeps the tap.
    Via(String),
}

impl Known {
    /// Where the watcher stands, without the payload (what [`super::decide`] works on).
    pub(crate) fn phase(&self) -> Phase {
        match self {
            Known::Tapped(_) => Phase::Tapped,
            Known::Pending => Phase::Pending,
            Known::Cancelled { release } => Phase::Cancelled { release: *release },
            Known::Ignored => Phase::Ignored,
            Known::NoConsent(_) => Phase::NoConsent,
            Known::Waiting => Phase::Waiting,
            Known::Failed(at) => Phase::Failed(*at),
            Known::Via(_) => Phase::Via,
        }
    }
}

/// The watcher of one KMS.
pub(crate) struct KmsWatcher {
    pub(crate) ctx: TapContext,
    pub(crate) config: Arc<DaemonConfig>,
    pub(crate) kms: KurentoClient,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) known: HashMap<String, Known>,
    /// Setups running concurrently (one per endpoint): a room's participants are tapped side by
    /// side, and the actor keeps answering events while KMS works.
    pub(crate) setups: tokio::task::JoinSet<(String, Setup)>,
    /// Setups waiting for one of the [`MAX_SETUPS_IN_FLIGHT`] places, oldest first (each
    /// endpoint at most once: it is `Pending` meanwhile).
    pub(crate) queued_setups: std::collections::VecDeque<QueuedSetup>,
    /// Objects already looked at by the orphan sweep: `Some(publisher)` if ours.
    pub(crate) owned_cache: HashMap<String, Option<(OwnedKind, Option<String>)>>,
    /// Presenters named by tag, and leaves, for the fusion (absent with it off).
    pub(crate) mood_events: Option<mpsc::Sender<crate::mood::MoodEvent>>,
    /// With the fusion off here: where presenter tags are announced for a fusion elsewhere.
    pub(crate) presenter_announce: Option<async_nats::Client>,
    /// In cluster mode: the rooms this daemon may tap.
    pub(crate) leases: Option<RoomLeases>,
    /// This KMS's name (status, lease keys).
    pub(crate) kms_name: String,
    /// When each publisher endpoint not yet tapped was created (its ObjectCreated event) or first
    /// seen by a scan: `time_to_tap_seconds` and `time_to_first_chunk_seconds` count from here.
    pub(crate) first_seen: HashMap<String, Instant>,
    /// Endpoints announced by ObjectCreated, looked at on their own, soon and with backoff, until
    /// tapped or given up (the periodic scan still finds them): a new participant does not wait
    /// for the next scan of every room, nor behind it.
    pub(crate) fresh: HashMap<String, Fresh>,
    /// Consent given or withdrawn by control request, shared with the setups.
    pub(crate) control_consent: crate::privacy::consent::ControlDecisions,
    /// Whether each publisher examined was last decided analysed (consent), to log changes only.
    pub(crate) consent_seen: HashMap<String, bool>,
    /// The keys of the running taps, shared with the setups: under `--host openvidu` a setup
    /// that finds a PassThrough already tapped (a publisher reconnected) adopts that tap.
    pub(crate) tapped: Arc<std::sync::Mutex<HashSet<String>>>,
}

/// The watcher's view of the room leases.
pub(crate) struct RoomLeases {
    /// This KMS's name in lease keys.
    pub(crate) kms: String,
    pub(crate) link: crate::cluster::LeaseLink,
    /// Held rooms already swept of a previous holder's objects.
    pub(crate) swept: HashSet<String>,
}

/// What a setup found and did.
/// Setups (examine + tap) that run at once; more wait their turn in order.
///
/// Why a bound: a room of n participants in the group-call shape has n publishers and n(n-1)
/// subscriber endpoints, and each endpoint is examined. Unbounded, 100 participants started
/// 10,000 setups at once (`kurento_tap_tap_setups_peak` read 10,000): ~45 MB of task state at the
/// same time, left as heap the daemon kept, and 10,000 conversations with KMS interleaved. 64
/// keep KMS busy (a setup mostly waits for its answers) without that.
pub(crate) const MAX_SETUPS_IN_FLIGHT: usize = 64;

/// A setup waiting for its place.
pub(crate) struct QueuedSetup {
    pub(crate) room: Option<String>,
    pub(crate) pipeline: kurento_client::prelude::MediaPipeline,
    pub(crate) ep: kurento_client::prelude::WebRtcEndpoint,
}

pub(crate) enum Setup {
    Tapped(Box<Tap>),
    /// A new publisher WebRtcEndpoint feeding a PassThrough already tapped (OpenVidu's publisher
    /// reconnect): the tap goes on.
    Adopt(Box<Participant>),
    Ignored,
    NoConsent(Box<Participant>),
    Waiting,
    Gone,
    Failed,
}

impl KmsWatcher {
    /// A watcher for the KMS of `ctx`.
    pub(crate) fn new(
        ctx: TapContext,
        kms_name: String,
        leases: Option<RoomLeases>,
        mood_events: Option<mpsc::Sender<crate::mood::MoodEvent>>,
        presenter_announce: Option<async_nats::Client>,
    ) -> Self {
        KmsWatcher {
            config: ctx.config.clone(),
            kms: ctx.kms.clone(),
            metrics: ctx.metrics.clone(),
            ctx,
            known: HashMap::new(),
            setups: tokio::task::JoinSet::new(),
            queued_setups: std::collections::VecDeque::new(),
            owned_cache: HashMap::new(),
            mood_events,
            presenter_announce,
            leases,
            kms_name,
            first_seen: HashMap::new(),
            fresh: HashMap::new(),
            control_consent: Default::default(),
            consent_seen: HashMap::new(),
            tapped: Default::default(),
        }
    }
}
