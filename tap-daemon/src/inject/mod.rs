//! Results back into the call, through Kurento DataChannels.
//!
//! KMS has no API that writes into a DataChannel: DATA only flows between WebRtcEndpoints. So, per
//! tapped participant whose endpoint has a DataChannel, the daemon creates a WebRtcEndpoint of its
//! own (`useDataChannels`, tagged as ours), becomes its WebRTC peer (data-only offer from
//! `webrtcbin`, ICE over `IceCandidateFound`/`addIceCandidate`, DTLS, SCTP), lets KMS open the
//! channel (`createDataChannel`: webrtcbin's own DCEP priority would make KMS reset it), and then
//! `connect(own, participant, DATA)`. KMS forwards what we send into the participant's channel.
//!
//! One endpoint per participant because results are per participant and a sink takes one DATA
//! source. Messages are small JSON ([`DataChannelMessage`]), latest-per-model, paced per
//! participant ([`Pacer`]), and dropped (counted) rather than queued when the channel is slow.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kurento_client::prelude::*;
use kurento_client::KurentoClient;
use tap_protocol::ResultMessage;
use tokio::sync::broadcast;
use tracing::{debug, info, warn};

pub mod config;
mod context;
mod messages;
pub mod openvidu_signals;
pub mod pacer;
mod session;

pub use config::{Audience, InjectorConfig};
pub use context::InjectorContext;
pub use messages::affect_message;
pub use pacer::{Offered, Pacer};
use session::SetupError;

use crate::discovery::Participant;

/// The DataChannel path of one tapped participant.
pub struct Injector {
    kms: KurentoClient,
    task: tokio::task::JoinHandle<()>,
    endpoint: Arc<Mutex<Option<WebRtcEndpoint>>>,
}

impl Drop for Injector {
    fn drop(&mut self) {
        // Dropped without `stop` (the control actor itself stopped): the session must not outlive it.
        self.task.abort();
    }
}

impl Injector {
    /// Starts the DataChannel path for a participant; it waits for the participant's channel if
    /// there is none yet.
    pub fn start(
        ctx: InjectorContext,
        participant: Participant,
        results: broadcast::Receiver<Arc<ResultMessage>>,
    ) -> Injector {
        let endpoint = Arc::new(Mutex::new(None));
        let kms = ctx.kms.clone();
        let task = tokio::spawn(run(ctx, participant, results, endpoint.clone()));
        Injector {
            kms,
            task,
            endpoint,
        }
    }

    /// Stops; releases our endpoint when `release` (never anything else).
    pub async fn stop(mut self, release: bool) {
        self.task.abort();
        let _ = (&mut self.task).await;
        let ep = self.endpoint.lock().expect("endpoint lock").take();
        if let (true, Some(ep)) = (release, ep) {
            crate::kms::release::release_bounded(&self.kms, ep.id(), ep.release()).await;
        }
    }
}

async fn run(
    ctx: InjectorContext,
    p: Participant,
    mut results: broadcast::Receiver<Arc<ResultMessage>>,
    slot: Arc<Mutex<Option<WebRtcEndpoint>>>,
) {
    let Ok(publisher) = ctx.kms.object::<WebRtcEndpoint>(&p.endpoint) else {
        return;
    };
    if !p.media.data_channels {
        // The app may not use DataChannels at all; if it does, the browser's channel opens later.
        let Ok(mut opened) = publisher.on::<DataChannelOpened>().await else {
            return;
        };
        debug!(participant = %p.name, "waiting for the participant's DataChannel");
        loop {
            match opened.recv().await {
                Some(Ok(_)) => break,
                Some(Err(_)) => continue,
                None => return,
            }
        }
    }
    let mut backoff = Duration::from_secs(2);
    // An endpoint whose release failed (KMS unreachable then): released before the next session.
    let mut unreleased: Option<WebRtcEndpoint> = None;
    loop {
        if let Some(ep) = unreleased.take() {
            if let Err(e) = ep.release().await {
                if !e.is_object_not_found() {
                    unreleased = Some(ep);
                }
            }
        }
        let started = Instant::now();
        let mut affect = ctx.affect.as_ref().map(|tx| tx.subscribe());
        let outcome =
            session::session(&ctx, &p, &publisher, &mut results, &mut affect, &slot).await;
        // The endpoint of a failed or finished session is ours to release.
        let ep = slot.lock().expect("endpoint lock").take();
        if let Some(ep) = ep {
            if let Err(e) = ep.release().await {
                if !e.is_object_not_found() {
                    debug!(endpoint = ep.id(), error = %e, "release failed; will retry");
                    unreleased = Some(ep);
                }
            }
        }
        match outcome {
            Ok(()) => {
                info!(participant = %p.name, "DataChannel closed; setting it up again");
                ctx.metrics.datachannel_setup("closed");
            }
            Err(SetupError::DataSourceInUse(by)) => {
                warn!(participant = %p.name, source = %by, "not injecting: the app feeds this participant's DATA itself (set datachannel.replace_data_source to override)");
                ctx.metrics.datachannel_setup("data_source_in_use");
                return;
            }
            Err(e) => {
                warn!(participant = %p.name, error = %e, "DataChannel setup failed; retrying in {backoff:?}");
                ctx.metrics.datachannel_setup(e.outcome());
            }
        }
        if started.elapsed() > Duration::from_secs(60) {
            backoff = Duration::from_secs(2);
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(60));
    }
}
