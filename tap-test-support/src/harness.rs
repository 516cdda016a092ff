//! The simulator tier's set-up, repeated by most daemon tests: a nats-server, kms-sim playing a
//! scenario, and the daemon configured for both — [`Harness`] starts them in that order and stops
//! them in the reverse. The free functions are its parts, for tests that arrange things otherwise
//! (two simulators, a daemon process, a bench's own loop).

use std::net::SocketAddr;
use std::ops::RangeInclusive;
use std::time::Duration;

use kms_sim::{Scenario, SimOptions, SimServer};
use tap_daemon::{Daemon, DaemonConfig, TapStatus};

use crate::metrics::reqwest_metrics;
use crate::nats::Nats;

/// The simulator's options for `scenario` (TOML) with media on `ports`, announced on 127.0.0.1.
pub fn sim_options(scenario: &str, ports: (u16, u16)) -> SimOptions {
    SimOptions {
        scenario: Scenario::parse(scenario).unwrap(),
        announce_ip: Some([127, 0, 0, 1].into()),
        port_range: ports,
        ..Default::default()
    }
}

/// kms-sim playing `scenario`, its media on `ports`.
pub async fn sim(scenario: &str, ports: (u16, u16)) -> SimServer {
    SimServer::start(sim_options(scenario, ports))
        .await
        .unwrap()
}

/// The daemon's configuration for `sim` and `nats`, receiving on `ports`: HTTP on a free port of
/// 127.0.0.1, a rescan every 200 ms, the rest the defaults.
pub fn config(sim: &SimServer, nats: &Nats, ports: (u16, u16)) -> DaemonConfig {
    DaemonConfig {
        kurento_url: sim.url(),
        nats_url: nats.url.clone(),
        ports,
        http_listen: Some(([127, 0, 0, 1], 0).into()),
        rescan_interval: Duration::from_millis(200),
        ..Default::default()
    }
}

/// Waits (up to 10 s) until `d` has at least `n` taps; their status.
pub async fn wait_taps(d: &Daemon, n: usize) -> Vec<TapStatus> {
    for _ in 0..100 {
        let s = d.status().await;
        if s.len() >= n {
            return s;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("expected {n} taps, have {:?}", d.status().await);
}

/// Tests that measure media rates in one test binary take turns: on 2 cores, several simulated
/// calls encoding VP8/H.264 side by side starve each other's media (one run saw 9 frames decoded
/// in 4 s), which is the machine, not the daemon.
static MEDIA_RATE_TESTS: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Held for the whole of a test that asserts media rates.
pub async fn one_media_rate_test_at_a_time() -> tokio::sync::MutexGuard<'static, ()> {
    MEDIA_RATE_TESTS.lock().await
}

/// A running set-up: the daemon tapping the simulator's rooms, both on the nats-server.
///
/// There is no `Drop` of its own: the fields drop in their order, daemon, simulator, nats-server,
/// as the tests' locals did. [`Harness::stop`] shuts the daemon down (releasing its KMS objects)
/// first; `h.daemon.shutdown().await` alone leaves `h.sim` to be examined afterwards.
///
/// ```ignore
/// let h = Harness::new()
///     .scenario(SCENARIO)
///     .sim_ports(54000..=54999)
///     .tap_ports(55000..=55999)
///     .configure(|c| c.datachannel.enabled = false)
///     .start()
///     .await;
/// let taps = h.wait_taps(3).await;
/// h.stop().await;
/// ```
pub struct Harness {
    pub daemon: Daemon,
    pub sim: SimServer,
    pub nats: Nats,
}

impl Harness {
    /// A builder: set the scenario and both port ranges, then [`HarnessBuilder::start`].
    #[allow(clippy::new_ret_no_self)] // `Harness::new()…start()` reads as what it makes
    pub fn new() -> HarnessBuilder {
        HarnessBuilder {
            scenario: String::new(),
            sim_ports: None,
            tap_ports: None,
            nats: None,
            sim_options: Vec::new(),
            configure: Vec::new(),
        }
    }

    /// Waits (up to 10 s) until the daemon has at least `n` taps; their status.
    pub async fn wait_taps(&self, n: usize) -> Vec<TapStatus> {
        wait_taps(&self.daemon, n).await
    }

    /// The daemon's HTTP address (`/metrics`, `/healthz`, the dashboard).
    pub fn http(&self) -> SocketAddr {
        self.daemon.http_addr.unwrap()
    }

    /// The daemon's `/metrics` now.
    pub async fn metrics(&self) -> String {
        reqwest_metrics(self.http()).await
    }

    /// A new client of the nats-server.
    pub async fn client(&self) -> async_nats::Client {
        async_nats::connect(&self.nats.url).await.unwrap()
    }

    /// Shuts the daemon down, then stops the simulator and the nats-server.
    pub async fn stop(self) {
        let Harness { daemon, sim, nats } = self;
        daemon.shutdown().await;
        drop(sim);
        drop(nats);
    }
}

type SimTweak = Box<dyn FnOnce(&mut SimOptions) + Send>;
type ConfigTweak = Box<dyn FnOnce(&mut DaemonConfig) + Send>;

/// What [`Harness::new`] sets up; nothing runs until [`HarnessBuilder::start`] (or
/// [`HarnessBuilder::start_sim`]).
#[must_use = "nothing starts until .start().await"]
pub struct HarnessBuilder {
    scenario: String,
    sim_ports: Option<(u16, u16)>,
    tap_ports: Option<(u16, u16)>,
    nats: Option<Nats>,
    sim_options: Vec<SimTweak>,
    configure: Vec<ConfigTweak>,
}

impl HarnessBuilder {
    /// The simulator's scenario (TOML, kms-sim's format); none: an empty server.
    pub fn scenario(mut self, toml: impl Into<String>) -> Self {
        self.scenario = toml.into();
        self
    }

    /// The simulator's media ports.
    pub fn sim_ports(mut self, ports: RangeInclusive<u16>) -> Self {
        self.sim_ports = Some((*ports.start(), *ports.end()));
        self
    }

    /// The daemon's receive ports (the tap leg).
    pub fn tap_ports(mut self, ports: RangeInclusive<u16>) -> Self {
        self.tap_ports = Some((*ports.start(), *ports.end()));
        self
    }

    /// Uses a nats-server the test started itself (to register models or subscribe before the
    /// simulator and the daemon start); otherwise [`Nats::start`] makes one.
    pub fn nats(mut self, nats: Nats) -> Self {
        self.nats = Some(nats);
        self
    }

    /// Changes the simulator's options after [`sim_options`] made them (several calls: in order).
    pub fn sim_options(mut self, f: impl FnOnce(&mut SimOptions) + Send + 'static) -> Self {
        self.sim_options.push(Box::new(f));
        self
    }

    /// Changes the daemon's configuration after [`config`] made it (several calls: in order).
    pub fn configure(mut self, f: impl FnOnce(&mut DaemonConfig) + Send + 'static) -> Self {
        self.configure.push(Box::new(f));
        self
    }

    /// Starts the nats-server (unless given) and the simulator, and makes the daemon's
    /// configuration; the daemon is not started (see [`SimStarted::start_daemon`]).
    pub async fn start_sim(self) -> SimStarted {
        let sim_ports = self
            .sim_ports
            .expect("Harness: set .sim_ports(…) (each test its own range)");
        let tap_ports = self
            .tap_ports
            .expect("Harness: set .tap_ports(…) (each test its own range)");
        let nats = match self.nats {
            Some(nats) => nats,
            None => Nats::start().await,
        };
        let mut options = sim_options(&self.scenario, sim_ports);
        for f in self.sim_options {
            f(&mut options);
        }
        let sim = SimServer::start(options).await.unwrap();
        let mut cfg = config(&sim, &nats, tap_ports);
        for f in self.configure {
            f(&mut cfg);
        }
        SimStarted {
            config: cfg,
            sim,
            nats,
        }
    }

    /// Starts the nats-server (unless given), the simulator and the daemon.
    pub async fn start(self) -> Harness {
        self.start_sim().await.start_daemon().await
    }
}

/// The nats-server and the simulator running, the daemon's configuration made but not started:
/// for a test that acts as the application before the daemon comes (or changes `config` itself).
pub struct SimStarted {
    pub config: DaemonConfig,
    pub sim: SimServer,
    pub nats: Nats,
}

impl SimStarted {
    /// Starts the daemon with `config`.
    pub async fn start_daemon(self) -> Harness {
        let SimStarted { config, sim, nats } = self;
        let daemon = Daemon::start(config).await.unwrap();
        Harness { daemon, sim, nats }
    }
}
