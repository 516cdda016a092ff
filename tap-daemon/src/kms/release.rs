//! Releasing what we created, without letting a slow or dead KMS hold anything up.

use std::time::Duration;

use kurento_client::{Error as KmsError, KurentoClient};
use tracing::debug;

/// Longest wait for KMS to release one of our objects when stopping a tap (a dead KMS must not
/// hold up shutdown; a restart sweeps what is left).
pub const RELEASE_TIMEOUT: Duration = Duration::from_secs(5);

/// Releases one of our objects, giving up after [`RELEASE_TIMEOUT`] or as soon as KMS is
/// unreachable (then nothing can be released; the next start sweeps it).
pub async fn release_bounded(
    kms: &KurentoClient,
    id: &str,
    release: impl std::future::Future<Output = Result<(), KmsError>>,
) {
    let mut state = kms.state();
    tokio::select! {
        r = tokio::time::timeout(RELEASE_TIMEOUT, release) => match r {
            Ok(Ok(())) => {}
            Ok(Err(e)) => debug!(object = id, error = %e, "release failed"),
            Err(_) => debug!(object = id, "release timed out"),
        },
        _ = state.wait_for(|s| !s.is_connected()) => {
            debug!(object = id, "KMS unreachable: not released");
        }
    }
}
