//! Client configuration.

use std::sync::Arc;
use std::time::Duration;

/// How the client reconnects after the socket drops.
#[derive(Debug, Clone)]
pub struct ReconnectPolicy {
    /// Reconnect at all (default true).
    pub enabled: bool,
    /// First delay (default 200 ms).
    pub initial_delay: Duration,
    /// Upper bound of the delay (default 5 s).
    pub max_delay: Duration,
    /// Give up after this many failed attempts in a row; `None` (default) retries forever.
    pub max_attempts: Option<u32>,
}

impl Default for ReconnectPolicy {
    fn default() -> Self {
        ReconnectPolicy {
            enabled: true,
            initial_delay: Duration::from_millis(200),
            max_delay: Duration::from_secs(5),
            max_attempts: None,
        }
    }
}

impl ReconnectPolicy {
    /// Delay before attempt `attempt` (0-based): exponential, capped, with ±25 % jitter so that many
    /// clients of one restarted KMS do not reconnect in lockstep. The first attempt is immediate.
    pub fn delay(&self, attempt: u32) -> Duration {
        if attempt == 0 {
            return Duration::ZERO;
        }
        let exp = self
            .initial_delay
            .saturating_mul(1u32 << (attempt - 1).min(16));
        let base = exp.min(self.max_delay);
        let jitter = 0.75 + fastrand::f64() * 0.5;
        base.mul_f64(jitter)
    }
}

/// Everything the client can be tuned with. Build with [`ClientConfig::new`] and the `with_*` setters.
#[derive(Clone)]
pub struct ClientConfig {
    /// `ws://host:8888/kurento` or `wss://host:8433/kurento`.
    pub url: String,
    /// Time allowed for one request's answer (default 20 s, KMS's own request-cache horizon).
    pub request_timeout: Duration,
    /// Time allowed to open the socket and attach the session (default 10 s).
    pub connect_timeout: Duration,
    /// Interval of keep-alive `ping`s; `None` disables them (default 10 s). A ping unanswered for two
    /// intervals (or the request timeout, if shorter) drops the socket and starts a reconnection.
    pub keepalive_interval: Option<Duration>,
    /// Reconnection behaviour.
    pub reconnect: ReconnectPolicy,
    /// Largest message accepted from the server (default 16 MiB); larger frames drop the socket.
    pub max_message_size: usize,
    /// Events buffered per subscriber before deliveries are dropped and counted (default 1024).
    pub event_buffer: usize,
    /// Requests held while disconnected (default 10 000); more fail at once.
    pub max_queued_while_disconnected: usize,
    /// TLS settings for `wss://` (default: rustls with the webpki roots).
    pub tls: Option<Arc<rustls::ClientConfig>>,
}

impl std::fmt::Debug for ClientConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientConfig")
            .field("url", &self.url)
            .field("request_timeout", &self.request_timeout)
            .field("connect_timeout", &self.connect_timeout)
            .field("keepalive_interval", &self.keepalive_interval)
            .field("reconnect", &self.reconnect)
            .field("max_message_size", &self.max_message_size)
            .field("event_buffer", &self.event_buffer)
            .field("custom_tls", &self.tls.is_some())
            .finish()
    }
}

impl ClientConfig {
    /// Defaults for the given URL.
    pub fn new(url: impl Into<String>) -> Self {
        ClientConfig {
            url: url.into(),
            request_timeout: Duration::from_secs(20),
            connect_timeout: Duration::from_secs(10),
            keepalive_interval: Some(Duration::from_secs(10)),
            reconnect: ReconnectPolicy::default(),
            max_message_size: 16 << 20,
            event_buffer: 1024,
            max_queued_while_disconnected: 10_000,
            tls: None,
        }
    }

    /// Sets the per-request timeout.
    pub fn with_request_timeout(mut self, t: Duration) -> Self {
        self.request_timeout = t;
        self
    }

    /// Sets the connect timeout.
    pub fn with_connect_timeout(mut self, t: Duration) -> Self {
        self.connect_timeout = t;
        self
    }

    /// Sets (or disables) the keep-alive interval.
    pub fn with_keepalive(mut self, every: Option<Duration>) -> Self {
        self.keepalive_interval = every;
        self
    }

    /// Sets the reconnection policy.
    pub fn with_reconnect(mut self, policy: ReconnectPolicy) -> Self {
        self.reconnect = policy;
        self
    }

    /// Sets the largest accepted message.
    pub fn with_max_message_size(mut self, bytes: usize) -> Self {
        self.max_message_size = bytes;
        self
    }

    /// Sets the per-subscriber event buffer.
    pub fn with_event_buffer(mut self, events: usize) -> Self {
        self.event_buffer = events.max(1);
        self
    }

    /// Uses a custom rustls configuration (private CA, client certificates) for `wss://`.
    pub fn with_tls(mut self, tls: Arc<rustls::ClientConfig>) -> Self {
        self.tls = Some(tls);
        self
    }

    pub(crate) fn keepalive_timeout(&self) -> Duration {
        let interval = self.keepalive_interval.unwrap_or(self.request_timeout);
        (interval * 2).min(self.request_timeout)
    }
}
