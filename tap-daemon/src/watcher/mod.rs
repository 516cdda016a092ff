//! One KMS's watcher: a control task owns the set of taps on that KMS; discovery events, a periodic
//! rescan, control requests, lease changes and KMS reconnections all come to it through channels.
//! The daemon runs one per KMS it watches and wires them to what they share.

pub mod command;
mod control;
pub mod decide;
mod lifecycle;
mod scan;
mod state;

use std::time::{Duration, Instant};

use kurento_client::prelude::*;
use kurento_client::{ConnectionState, KurentoClient};
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

pub(crate) use command::{Command, ControlRefusal};
pub use command::{ControlRequest, TapStatus};
pub(crate) use state::{KmsWatcher, RoomLeases};

use crate::settings::DaemonConfig;
use crate::tap::media_list;
use decide::{webrtc_endpoint_pipeline, Fresh};
use state::{Known, Setup};

/// Releases RtpEndpoints this owner left behind (a crashed daemon's taps outlive it: the app's
/// session co-owns them through the pipeline).
pub(crate) async fn sweep_leftovers(kms: &KurentoClient, config: &DaemonConfig) {
    let Ok(pipelines) = kms.server_manager().get_pipelines().await else {
        return;
    };
    for p in pipelines {
        let Ok(children) = p.get_children().await else {
            continue;
        };
        for c in children {
            // Ours are RtpEndpoints (taps) and WebRtcEndpoints (DataChannel peers), tagged.
            let tags = if let Some(rtp) = c.downcast::<RtpEndpoint>() {
                rtp.get_tags().await
            } else if let Some(webrtc) = c.downcast::<WebRtcEndpoint>() {
                webrtc.get_tags().await
            } else {
                continue;
            };
            let Ok(tags) = tags else {
                continue;
            };
            if tags
                .iter()
                .any(|t| t.key == config.tags.owner && t.value == config.owner)
            {
                info!(
                    object = c.id(),
                    "releasing a leftover object of a previous run"
                );
                let _ = c.release().await;
            }
        }
    }
}

impl KmsWatcher {
    pub(crate) async fn run(
        mut self,
        mut cmd_rx: mpsc::Receiver<Command>,
        mut created: kurento_client::EventStream<ObjectCreated>,
        mut destroyed: kurento_client::EventStream<ObjectDestroyed>,
    ) {
        let mut state = self.kms.state();
        let mut tick = tokio::time::interval(self.config.rescan_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut leases_valid = self.leases.as_ref().map(|l| l.link.valid.clone());
        let mut fresh_tick = tokio::time::interval(Duration::from_millis(50));
        fresh_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                Ok(()) = async {
                    match leases_valid.as_mut() {
                        Some(v) => v.changed().await,
                        None => std::future::pending().await,
                    }
                } => self.on_leases_changed().await,
                Some(ev) = destroyed.recv() => {
                    if let Ok(ev) = ev { self.on_destroyed(&ev.object_id).await; }
                }
                Some(ev) = created.recv() => {
                    if let Ok(ev) = ev {
                        debug!(object = %ev.object, "object created");
                        if let Some(pipeline) = webrtc_endpoint_pipeline(&ev.object) {
                            let now = Instant::now();
                            self.first_seen.entry(ev.object.clone()).or_insert(now);
                            if self.config.lookup_new_endpoints {
                                self.fresh.insert(ev.object.clone(), Fresh::new(pipeline, now));
                            }
                        }
                    }
                }
                _ = fresh_tick.tick(), if !self.fresh.is_empty() => self.look_at_fresh(),
                Some(done) = self.setups.join_next() => {
                    if let Ok((endpoint, outcome)) = done {
                        self.on_setup_done(endpoint, outcome).await;
                    }
                }
                _ = tick.tick() => self.rescan().await,
                Ok(()) = state.changed() => {
                    let s = state.borrow_and_update().clone();
                    self.on_connection(s).await;
                }
                cmd = cmd_rx.recv() => match cmd {
                    None => { self.stop_all().await; return; }
                    Some(Command::Shutdown(done)) => { self.stop_all().await; let _ = done.send(()); return; }
                    Some(Command::Status(reply)) => { let _ = reply.send(self.status()); }
                    Some(Command::Attach(req, reply)) => { let r = self.control_attach(req).await; let _ = reply.send(r); }
                    Some(Command::Consent(req, reply)) => { let r = self.control_consent(req).await; let _ = reply.send(r); }
                    Some(Command::Detach(req, reply)) => {
                        let r = if !self.may_serve(&req.pipeline) {
                            Err(ControlRefusal::NotHolder)
                        } else if self.detach(&req.endpoint, true).await {
                            self.known.insert(req.endpoint.clone(), Known::Ignored);
                            Ok("detached".to_owned())
                        } else {
                            Err(ControlRefusal::NotHere)
                        };
                        let _ = reply.send(r);
                    }
                },
            }
            self.start_queued_setups().await;
            self.metrics
                .kms_decode_errors
                .set(self.kms.stats().decode_errors as i64);
            self.tell_tapping();
        }
    }

    /// Waits for setups in flight (so nothing they create escapes release), then stops every tap.
    async fn stop_all(&mut self) {
        let release = self.kms_connected();
        // Never started: nothing of theirs exists on KMS.
        self.queued_setups.clear();
        self.metrics.setups_queued.set(0);
        while let Some(done) = self.setups.join_next().await {
            if let Ok((_, Setup::Tapped(t))) = done {
                t.stop(&self.kms, release).await;
            }
        }
        self.detach_all(release).await;
    }

    fn status(&self) -> Vec<TapStatus> {
        let mut out: Vec<TapStatus> = self
            .known
            .values()
            .filter_map(|k| match k {
                Known::Tapped(t) => Some(TapStatus {
                    kms: self.kms_name.clone(),
                    room: t.participant.room.clone(),
                    participant: t.participant.name.clone(),
                    endpoint: t.participant.endpoint.clone(),
                    tap: t.tap.id().to_owned(),
                    media: media_list(&t.participant),
                    video_frames: t
                        .receiver
                        .stats
                        .video_frames
                        .load(std::sync::atomic::Ordering::Relaxed),
                    audio_buffers: t
                        .receiver
                        .stats
                        .audio_buffers
                        .load(std::sync::atomic::Ordering::Relaxed),
                    display: t.participant.display.clone(),
                    publisher: t.participant.publisher.clone(),
                }),
                _ => None,
            })
            .collect();
        out.sort_by(|a, b| (&a.room, &a.participant).cmp(&(&b.room, &b.participant)));
        out
    }

    async fn on_connection(&mut self, s: ConnectionState) {
        if let ConnectionState::Connected { recovery, .. } = s {
            match recovery {
                kurento_client::Recovery::Initial => {}
                kurento_client::Recovery::NewServer => {
                    warn!("KMS restarted: every tap is gone; rediscovering");
                    self.metrics.kms_reconnects.inc();
                    // Setups in flight talk to a server that is gone: their objects went with it.
                    for k in self.known.values_mut() {
                        if matches!(k, Known::Pending) {
                            *k = Known::Cancelled { release: false };
                        }
                    }
                    self.detach_all(false).await;
                    self.known
                        .retain(|_, k| matches!(k, Known::Cancelled { .. }));
                    self.owned_cache.clear();
                }
                r => {
                    info!(recovery = ?r, "reconnected to KMS; resynchronizing");
                    self.metrics.kms_reconnects.inc();
                }
            }
        }
    }

    fn kms_taps(&self) -> prometheus_client::metrics::gauge::Gauge {
        self.metrics
            .taps_by_kms
            .get_or_create(&crate::metrics::KmsLabel {
                kms: self.kms_name.clone(),
            })
            .clone()
    }

    /// Tells the fusion, without waiting: a full queue drops the event (the fusion forgets silent
    /// participants by itself; a presenter is named again on their next tap).
    fn tell_mood(&self, ev: crate::mood::MoodEvent) {
        if let Some(tx) = &self.mood_events {
            if tx.try_send(ev).is_err() {
                self.metrics.affect_result("event_dropped");
            }
        } else if let (
            Some(nats),
            crate::mood::MoodEvent::Presenter {
                room, participant, ..
            },
        ) = (&self.presenter_announce, ev)
        {
            let req = tap_protocol::affect::PresenterRequest {
                room,
                participant,
                source: Some("tag".into()),
            };
            let (nats, body) = (nats.clone(), serde_json::to_vec(&req).unwrap_or_default());
            tokio::spawn(async move {
                let _ = nats
                    .publish(tap_protocol::affect::CTL_PRESENTER, body.into())
                    .await;
            });
        }
    }

    /// With KMS unreachable nothing can be released (the next start sweeps what is left).
    fn kms_connected(&self) -> bool {
        self.kms.state().borrow().is_connected()
    }
}
