//! The periodic scan of every room (and what it catches that events missed), the room leases'
//! changes and sweeps, and our own objects no tap stands for.

use std::collections::HashSet;
use std::time::Instant;

use kurento_client::prelude::*;
use tracing::{info, warn};

use crate::discovery;
use crate::kms::orphans::{orphans, OwnedObject, PublisherState};
use crate::kms::release::release_bounded;
use crate::metrics::labels::OutcomeLabel;

use super::decide::{self, owned_kind, room_allowed, ScanLook};
use super::state::{KmsWatcher, Known};

impl KmsWatcher {
    pub(super) async fn rescan(&mut self) {
        if !self.kms.state().borrow().is_connected() {
            return;
        }
        let Ok(pipelines) = self.kms.server_manager().get_pipelines().await else {
            return;
        };
        let live_pipelines: HashSet<String> = pipelines.iter().map(|p| p.id().to_owned()).collect();
        // Pipelines whose children were read: only their endpoints can be judged gone.
        let mut listed = HashSet::new();
        let mut seen = HashSet::new();
        let mut owned = Vec::new();
        let mut consenting: Vec<(MediaPipeline, String, WebRtcEndpoint)> = Vec::new();
        let mut wanted = std::collections::BTreeMap::new();
        self.sweep_new_rooms(&pipelines).await;
        for pipeline in pipelines {
            // Lost KMS mid-scan: requests would queue until reconnection; look again then.
            if !self.kms_connected() {
                return;
            }
            let Ok(room) = discovery::room_name(&pipeline, &self.config.tags).await else {
                continue;
            };
            if let Some(l) = &self.leases {
                let key = tap_protocol::lease::room_key(&l.kms, pipeline.id());
                if room_allowed(&self.config, &room) {
                    wanted.insert(
                        key.clone(),
                        crate::cluster::WantedRoom {
                            room: room.clone(),
                            pipeline: pipeline.id().to_owned(),
                            kms: l.kms.clone(),
                        },
                    );
                }
                // Another daemon's room (or nobody's yet), or ours but not yet cleared of what its
                // previous holder left: not looked into.
                if !self.room_open(pipeline.id()) {
                    continue;
                }
            }
            let Ok(children) = pipeline.get_children().await else {
                continue;
            };
            listed.insert(pipeline.id().to_owned());
            self.learn_owners(&children).await;
            for child in children {
                seen.insert(child.id().to_owned());
                if let Some(o) = self.owned_object(&child) {
                    owned.push(o);
                    continue;
                }
                let Some(ep) = child.downcast::<WebRtcEndpoint>() else {
                    continue;
                };
                match decide::scan_look(self.known.get(ep.id()).map(Known::phase), Instant::now()) {
                    ScanLook::Setup => self.spawn_setup(Some(room.clone()), pipeline.clone(), ep),
                    // Their consent tags are read again below, all at once.
                    ScanLook::RecheckConsent => {
                        consenting.push((pipeline.clone(), room.clone(), ep.clone()))
                    }
                    ScanLook::Leave => {}
                }
            }
        }
        self.recheck_consent(consenting).await;
        // Publishers that vanished without an event we handled yet (the event may still be queued
        // behind this scan, or was lost while disconnected). The room may live on (a participant
        // left or rejoined): then our objects for it are released, not abandoned.
        let vanished = decide::vanished(
            self.known.keys().map(String::as_str),
            &seen,
            &live_pipelines,
            &listed,
        );
        for (ep, room_lives) in vanished {
            self.forget(&ep, room_lives, "vanished").await;
        }
        self.owned_cache.retain(|id, _| seen.contains(id));
        // Creation times of endpoints in rooms that are gone (a lost ObjectDestroyed) go too.
        self.first_seen
            .retain(|id, _| live_pipelines.contains(decide::pipeline_of(id)));
        self.release_orphans(owned).await;
        if let Some(l) = &self.leases {
            l.link.wanted.send_if_modified(|w| {
                if *w != wanted {
                    *w = wanted;
                    true
                } else {
                    false
                }
            });
        }
        // Receiver errors since the last look.
        for k in self.known.values_mut() {
            if let Known::Tapped(t) = k {
                let errors = t
                    .receiver
                    .stats
                    .errors
                    .load(std::sync::atomic::Ordering::Relaxed);
                self.metrics
                    .decode_errors
                    .inc_by(decide::growth(errors, &mut t.errors_seen));
                let stats = &t.receiver.stats;
                let sent = stats
                    .keyframe_requests
                    .load(std::sync::atomic::Ordering::Relaxed);
                let held = stats
                    .keyframe_requests_throttled
                    .load(std::sync::atomic::Ordering::Relaxed);
                self.metrics
                    .receiver_keyframe_requests
                    .inc_by(decide::growth(sent, &mut t.keyframes_seen.0));
                self.metrics
                    .receiver_keyframe_requests_throttled
                    .inc_by(decide::growth(held, &mut t.keyframes_seen.1));
                let gated = stats
                    .video_frames_before_keyframe
                    .load(std::sync::atomic::Ordering::Relaxed);
                self.metrics
                    .receiver_frames_before_keyframe
                    .inc_by(decide::growth(gated, &mut t.gated_seen));
                if let Some(leg) = t.receiver.tap_leg_video() {
                    let seen = &mut t.tap_leg_seen;
                    for (outcome, now, before) in [
                        ("lost", leg.lost, &mut seen.0),
                        ("late", leg.late, &mut seen.1),
                        (
                            "retransmission_requested",
                            leg.retransmission_requests,
                            &mut seen.2,
                        ),
                        ("reordered", leg.reordered, &mut seen.3),
                    ] {
                        self.metrics
                            .tap_leg_video_packets
                            .get_or_create(&OutcomeLabel {
                                outcome: outcome.into(),
                            })
                            .inc_by(decide::growth(now, before));
                    }
                }
                let unusable = stats
                    .sender_clock_unusable
                    .load(std::sync::atomic::Ordering::Relaxed);
                self.metrics
                    .sender_clocks_unusable
                    .inc_by(decide::growth(unusable, &mut t.clocks_unusable_seen));
                let refused = stats.srtp_rejected();
                self.metrics
                    .srtp_packets_rejected
                    .inc_by(decide::growth(refused, &mut t.srtp_rejected_seen));
            }
        }
    }

    /// Tells the lease task which rooms still have taps or setups of ours (cluster mode).
    pub(super) fn tell_tapping(&self) {
        let Some(l) = &self.leases else {
            return;
        };
        let rooms = decide::tapping_rooms(
            &l.kms,
            self.known.iter().map(|(ep, k)| (ep.as_str(), k.phase())),
        );
        l.link.tapping.send_if_modified(|t| {
            if *t != rooms {
                *t = rooms;
                true
            } else {
                false
            }
        });
    }

    /// Whether a room may be looked into: alone always; in cluster mode only when held and already
    /// swept of what a previous holder left.
    pub(super) fn room_open(&self, pipeline: &str) -> bool {
        decide::room_open(self.leases.as_ref().map(|l| {
            let key = tap_protocol::lease::room_key(&l.kms, pipeline);
            (l.link.valid.borrow().contains(&key), l.swept.contains(&key))
        }))
    }

    /// Whether this daemon answers for a room: always alone, only as its holder in cluster mode.
    pub(super) fn may_serve(&self, pipeline: &str) -> bool {
        self.leases.as_ref().is_none_or(|l| {
            l.link
                .valid
                .borrow()
                .contains(&tap_protocol::lease::room_key(&l.kms, pipeline))
        })
    }

    /// The rooms this daemon may tap changed: stop what is no longer ours, look for what is new.
    pub(super) async fn on_leases_changed(&mut self) {
        let Some(l) = &self.leases else {
            return;
        };
        let valid = l.link.valid.borrow().clone();
        let lost = decide::outside_leases(&l.kms, self.known.keys().map(String::as_str), &valid);
        let release = self.kms_connected();
        for ep in lost {
            // Unproven ownership: stop now (whoever takes the room sweeps what is left).
            self.forget(&ep, release, "lease lost").await;
        }
        if let Some(l) = self.leases.as_mut() {
            l.swept.retain(|k| valid.contains(k));
        }
        self.rescan().await;
    }

    /// Rooms that just became ours, all at once: see [`Self::sweep_previous_holder`].
    pub(super) async fn sweep_new_rooms(&mut self, pipelines: &[MediaPipeline]) {
        let Some(l) = &self.leases else {
            return;
        };
        let valid = l.link.valid.borrow().clone();
        let new: Vec<(String, &MediaPipeline)> =
            decide::rooms_to_sweep(&l.kms, pipelines.iter().map(|p| p.id()), &valid, &l.swept)
                .into_iter()
                .filter_map(|(k, id)| pipelines.iter().find(|p| p.id() == id).map(|p| (k, p)))
                .collect();
        if new.is_empty() {
            return;
        }
        let done =
            futures_util::future::join_all(new.iter().map(|(_, p)| self.sweep_previous_holder(p)))
                .await;
        // A room not swept whole is not tapped yet (the rescan skips it) and swept again next time.
        if let Some(l) = self.leases.as_mut() {
            l.swept.extend(
                new.into_iter()
                    .zip(done)
                    .filter(|(_, ok)| *ok)
                    .map(|((k, _), _)| k),
            );
        }
    }

    /// A room just became ours: release what a previous holder (another daemon, by owner tag) left
    /// in it. Objects without our owner tag key are the app's and are never touched. True when the
    /// room was read whole and everything foreign in it released.
    pub(super) async fn sweep_previous_holder(&self, pipeline: &MediaPipeline) -> bool {
        let Ok(children) = pipeline.get_children().await else {
            return false;
        };
        // All at once: a takeover sweeps a dead daemon's taps in every room it held, and one round
        // trip each, in turn, on a loaded KMS, delayed the new taps by seconds.
        let candidates: Vec<&MediaObject> = children
            .iter()
            .filter(|c| {
                c.downcast::<RtpEndpoint>().is_some() || c.downcast::<WebRtcEndpoint>().is_some()
            })
            .collect();
        let tags = futures_util::future::join_all(candidates.iter().map(|c| c.get_tags())).await;
        let mut complete = true;
        let mut foreign: Vec<&MediaObject> = Vec::new();
        for (c, tags) in candidates.into_iter().zip(tags) {
            match tags {
                Ok(tags) => {
                    if tags
                        .iter()
                        .any(|t| t.key == self.config.tags.owner && t.value != self.config.owner)
                    {
                        foreign.push(c);
                    }
                }
                // Released meanwhile: nothing to sweep. Anything else: look again.
                Err(e) if e.is_object_not_found() => {}
                Err(_) => complete = false,
            }
        }
        let released = futures_util::future::join_all(foreign.into_iter().map(|c| async move {
            info!(
                object = c.id(),
                "releasing an object of the room's previous holder"
            );
            self.metrics.lease_events("swept");
            match tokio::time::timeout(crate::kms::release::RELEASE_TIMEOUT, c.release()).await {
                Ok(Ok(())) => true,
                Ok(Err(e)) => e.is_object_not_found(),
                Err(_) => false,
            }
        }))
        .await;
        complete && released.into_iter().all(|r| r)
    }

    /// Reads the tags of the endpoints not seen before, all at once: a busy room adds dozens of
    /// endpoints between two rescans, and one round trip each, in turn, held the control actor for
    /// over a second on a loaded machine (setups finished but not recorded, leaves seen late).
    pub(super) async fn learn_owners(&mut self, children: &[MediaObject]) {
        let new: Vec<&MediaObject> = children
            .iter()
            .filter(|c| owned_kind(c.id()).is_some() && !self.owned_cache.contains_key(c.id()))
            .collect();
        let tags = futures_util::future::join_all(new.iter().map(|c| c.get_tags())).await;
        for (child, tags) in new.into_iter().zip(tags) {
            // Unreadable (being released): looked at again by the next rescan.
            let (Ok(tags), Some(kind)) = (tags, owned_kind(child.id())) else {
                continue;
            };
            let ours = tags
                .iter()
                .any(|t| t.key == self.config.tags.owner && t.value == self.config.owner);
            let serves = tags
                .iter()
                .find(|t| t.key == self.config.tags.tapped_endpoint)
                .map(|t| t.value.clone());
            self.owned_cache
                .insert(child.id().to_owned(), ours.then_some((kind, serves)));
        }
    }

    /// Our object (by owner tag) with the publisher it serves, as [`Self::learn_owners`] read it.
    pub(super) fn owned_object(&self, child: &MediaObject) -> Option<OwnedObject> {
        let (kind, serves) = self.owned_cache.get(child.id())?.clone()?;
        Some(OwnedObject {
            id: child.id().to_owned(),
            kind,
            serves,
        })
    }

    pub(super) async fn release_orphans(&mut self, owned: Vec<OwnedObject>) {
        let known = &self.known;
        // Rooms with a setup running: an object of ours there whose tag names something not yet
        // known may be that setup's own (an OpenVidu tap is tagged with the PassThrough it hangs
        // from, found inside the setup, while the setup is keyed by the publisher endpoint).
        let setting_up: HashSet<&str> =
            decide::rooms_setting_up(known.iter().map(|(ep, k)| (ep.as_str(), k.phase())));
        let to_release: Vec<String> = orphans(&owned, |publisher| match known.get(publisher) {
            Some(Known::Tapped(t)) => PublisherState::Tapped { tap: t.tap.id() },
            Some(Known::Pending) | Some(Known::Cancelled { .. }) => PublisherState::SettingUp,
            None if setting_up.contains(decide::pipeline_of(publisher)) => {
                PublisherState::SettingUp
            }
            _ => PublisherState::NotTapped,
        })
        .into_iter()
        .map(str::to_owned)
        .collect();
        for id in to_release {
            warn!(object = %id, "releasing an object of ours that no tap stands for");
            self.metrics.orphans_released.inc();
            release_bounded(&self.kms, &id, self.kms.release(&id)).await;
            self.owned_cache.remove(&id);
        }
    }
}
