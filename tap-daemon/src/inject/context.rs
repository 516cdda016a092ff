//! What an injector is handed by the daemon.

use std::sync::Arc;

use kurento_client::KurentoClient;
use tokio::sync::broadcast;

use crate::discovery::TagKeys;
use crate::metrics::Metrics;
use crate::mood::AffectUpdate;

use super::config::InjectorConfig;

/// Everything an injector needs from the daemon.
#[derive(Clone)]
pub struct InjectorContext {
    /// KMS.
    pub kms: KurentoClient,
    /// Settings.
    pub config: InjectorConfig,
    /// Tag keys.
    pub tags: TagKeys,
    /// Owner tag value.
    pub owner: String,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// Fused states and room moods (absent with the fusion off): each participant receives their
    /// own state, and the presenter their room's mood.
    pub affect: Option<broadcast::Sender<Arc<AffectUpdate>>>,
}
