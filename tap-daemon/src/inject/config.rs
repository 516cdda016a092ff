//! How results reach participants' DataChannels: the injector's settings.

use std::time::Duration;

/// How results reach participants' DataChannels.
#[derive(Debug, Clone)]
pub struct InjectorConfig {
    /// Off: results only go to NATS.
    pub enabled: bool,
    /// Messages per second per participant, at most (all models together).
    pub max_rate_hz: f64,
    /// Label of the channel KMS opens towards the daemon.
    pub label: String,
    /// Largest message sent; larger ones go without labels, or not at all.
    pub max_message_bytes: usize,
    /// A result waiting longer than this for its turn is dropped as stale.
    pub max_wait: Duration,
    /// Time allowed from endpoint creation to an open channel.
    pub setup_timeout: Duration,
    /// Connect even when another element already feeds the participant's DATA (KMS keeps one
    /// DATA source per sink, so that source would be replaced). A self-loop is always replaced.
    pub replace_data_source: bool,
    /// Whose results each participant receives.
    pub audience: Audience,
    /// UDP ports for the peers' ICE (inclusive); `None`: any the OS gives.
    pub ice_ports: Option<(u16, u16)>,
}

/// Whose results a participant's DataChannel carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Audience {
    /// Only results about this participant (the default: nobody else's inferred emotions are
    /// shared without the application deciding so).
    #[default]
    Participant,
    /// Results about everyone in the room (each message names its participant).
    Room,
}

impl std::str::FromStr for Audience {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "participant" => Ok(Audience::Participant),
            "room" => Ok(Audience::Room),
            _ => Err(format!("audience {s:?}: expected participant or room")),
        }
    }
}

impl Default for InjectorConfig {
    fn default() -> Self {
        InjectorConfig {
            enabled: true,
            max_rate_hz: 4.0,
            label: "kurento-tap".into(),
            max_message_bytes: 4096,
            max_wait: Duration::from_secs(2),
            setup_timeout: Duration::from_secs(20),
            replace_data_source: false,
            audience: Audience::Participant,
            ice_ports: None,
        }
    }
}
