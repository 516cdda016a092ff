//! An endpoint's life in the watcher: set up (beside the others), recorded, forgotten, detached.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use kurento_client::prelude::*;
use tracing::{debug, info, warn};

use crate::discovery::{self, Examined, Participant};
use crate::metrics::ReasonLabel;
use crate::tap::{media_list, TapContext};

use super::decide::{self, not_tapped_reason, FRESH_GIVE_UP};
use super::state::{KmsWatcher, Known, QueuedSetup, Setup, MAX_SETUPS_IN_FLIGHT};

impl KmsWatcher {
    pub(super) async fn on_destroyed(&mut self, id: &str) {
        self.owned_cache.remove(id);
        self.fresh.retain(|ep, _| !decide::is_or_inside(ep, id));
        self.first_seen
            .retain(|ep, _| !decide::is_or_inside(ep, id));
        let affected = decide::destroyed(
            id,
            self.known.iter().map(|(ep, k)| {
                let tap = match k {
                    Known::Tapped(t) => Some(t.tap.id()),
                    _ => None,
                };
                (ep.as_str(), tap)
            }),
        );
        for (ep, release) in affected {
            self.forget(&ep, release, "destroyed").await;
        }
    }

    /// A publisher is gone (event, or no longer listed): stop its tap, or cancel its setup.
    pub(super) async fn forget(&mut self, endpoint: &str, release: bool, why: &'static str) {
        match self.known.get(endpoint) {
            Some(Known::Pending) => {
                self.known
                    .insert(endpoint.to_owned(), Known::Cancelled { release });
            }
            Some(Known::Cancelled { .. }) => {}
            Some(Known::Tapped(t)) => {
                info!(room = %t.participant.room, participant = %t.participant.name, why, "participant left");
                self.detach(endpoint, release).await;
            }
            Some(Known::Via(passthrough)) => {
                // OpenVidu: a publisher endpoint went (a reconnect, or the unpublish that
                // releases its PassThrough too): the tap follows the PassThrough, not it.
                debug!(endpoint, passthrough = %passthrough, why, "publisher endpoint gone; its PassThrough decides the tap");
                self.known.remove(endpoint);
                self.fresh.remove(endpoint);
                self.first_seen.remove(endpoint);
                self.consent_seen.remove(endpoint);
            }
            _ => {
                self.known.remove(endpoint);
                self.fresh.remove(endpoint);
                self.first_seen.remove(endpoint);
                self.consent_seen.remove(endpoint);
            }
        }
    }

    /// Starts a setup of `ep` beside the others (the room's name read first when not known).
    pub(super) fn spawn_setup(
        &mut self,
        room: Option<String>,
        pipeline: MediaPipeline,
        ep: WebRtcEndpoint,
    ) {
        let id = ep.id().to_owned();
        // Seen now, whether it starts now or waits its turn (time to tap counts from here).
        self.first_seen
            .entry(id.clone())
            .or_insert_with(Instant::now);
        self.known.insert(id, Known::Pending);
        if self.setups.len() >= MAX_SETUPS_IN_FLIGHT {
            // Pending already: scans leave it alone while it waits its turn.
            self.queued_setups
                .push_back(QueuedSetup { room, pipeline, ep });
            self.metrics
                .setups_queued
                .set(self.queued_setups.len() as i64);
            return;
        }
        self.launch_setup(room, pipeline, ep);
    }

    /// Starts queued setups while there is room beside the running ones. An endpoint that went
    /// (or whose KMS restarted) while queued ends as a setup that found it gone.
    pub(super) async fn start_queued_setups(&mut self) {
        while self.setups.len() < MAX_SETUPS_IN_FLIGHT {
            let Some(QueuedSetup { room, pipeline, ep }) = self.queued_setups.pop_front() else {
                break;
            };
            self.metrics
                .setups_queued
                .set(self.queued_setups.len() as i64);
            let id = ep.id().to_owned();
            if matches!(self.known.get(&id), Some(Known::Pending)) {
                self.launch_setup(room, pipeline, ep);
            } else {
                self.on_setup_done(id, Setup::Gone).await;
            }
        }
    }

    fn launch_setup(&mut self, room: Option<String>, pipeline: MediaPipeline, ep: WebRtcEndpoint) {
        let id = ep.id().to_owned();
        let first_seen = *self
            .first_seen
            .entry(id.clone())
            .or_insert_with(Instant::now);
        let ctx = self.ctx.clone();
        let decisions = self.control_consent.clone();
        let tapped = self.tapped.clone();
        self.metrics.setups_in_flight.inc();
        self.setups.spawn(async move {
            let started = Instant::now();
            let room = match room {
                Some(r) => Ok(r),
                None => discovery::room_name(&pipeline, &ctx.config.tags).await,
            };
            let outcome = match room {
                Ok(room) => {
                    setup(
                        ctx.clone(),
                        room,
                        pipeline,
                        ep,
                        first_seen,
                        decisions,
                        tapped,
                    )
                    .await
                }
                Err(e) if e.is_object_not_found() => Setup::Gone,
                Err(_) => Setup::Waiting,
            };
            ctx.metrics.setups_in_flight.dec();
            if matches!(outcome, Setup::Tapped(_)) {
                ctx.metrics
                    .setup_seconds
                    .observe(started.elapsed().as_secs_f64());
                ctx.metrics
                    .time_to_tap
                    .observe(first_seen.elapsed().as_secs_f64());
            }
            (id, outcome)
        });
        let running = self.setups.len() as i64;
        if running > self.metrics.setups_peak.get() {
            self.metrics.setups_peak.set(running);
        }
    }

    /// Looks at the endpoints announced by ObjectCreated whose turn it is (no scan of the rooms).
    pub(super) fn look_at_fresh(&mut self) {
        if !self.kms_connected() {
            return;
        }
        let now = Instant::now();
        for (id, pipeline_id) in decide::fresh_due(&self.fresh, now) {
            let ready = decide::fresh_ready(
                self.known.get(&id).map(Known::phase),
                self.room_open(&pipeline_id),
            );
            let handles = self
                .kms
                .object::<MediaPipeline>(&pipeline_id)
                .and_then(|p| Ok((p, self.kms.object::<WebRtcEndpoint>(&id)?)));
            match (ready, handles) {
                (true, Ok((pipeline, ep))) => {
                    // Rescheduled (or dropped) when the setup ends: not looked at meanwhile.
                    if let Some(f) = self.fresh.get_mut(&id) {
                        f.next = now + FRESH_GIVE_UP;
                    }
                    self.spawn_setup(None, pipeline, ep);
                }
                _ => {
                    self.fresh.remove(&id);
                }
            }
        }
    }

    pub(super) async fn on_setup_done(&mut self, endpoint: String, outcome: Setup) {
        // The fast path: not negotiated yet, look again soon; anything else ends it.
        match (&outcome, self.fresh.get(&endpoint)) {
            (Setup::Waiting, Some(f)) => {
                let created = self
                    .first_seen
                    .get(&endpoint)
                    .copied()
                    .unwrap_or_else(Instant::now);
                match f.again(Instant::now(), created) {
                    Some(next) => {
                        self.fresh.insert(endpoint.clone(), next);
                    }
                    None => {
                        self.fresh.remove(&endpoint);
                    }
                }
            }
            (Setup::Waiting, None) => {}
            _ => {
                self.fresh.remove(&endpoint);
            }
        }
        if !matches!(outcome, Setup::Waiting | Setup::Failed) {
            self.first_seen.remove(&endpoint);
        }
        let cancelled = decide::cancelled_setup(self.known.get(&endpoint).map(Known::phase));
        if let Some(release) = cancelled {
            self.known.remove(&endpoint);
            if let Setup::Tapped(t) = outcome {
                info!(
                    endpoint,
                    "participant left while being tapped; stopping its tap"
                );
                t.stop(&self.kms, release && self.kms_connected()).await;
            }
            return;
        }
        match &outcome {
            Setup::Tapped(t) => self.note_consent(&endpoint, &t.participant, true),
            Setup::NoConsent(p) => self.note_consent(&endpoint, p, false),
            _ => {}
        }
        let k = match outcome {
            Setup::NoConsent(p) => Known::NoConsent(p),
            Setup::Adopt(p) => {
                let key = p.endpoint.clone();
                match self.known.get_mut(&key) {
                    Some(Known::Tapped(t)) => {
                        info!(room = %t.participant.room, participant = %t.participant.name, publisher = p.publisher_endpoint(), "publisher reconnected onto its PassThrough: the tap goes on");
                        t.participant.publisher = p.publisher.clone();
                        if p.display.is_some() {
                            t.participant.display = p.display.clone();
                        }
                        Known::Via(key)
                    }
                    // The tap went meanwhile: look again (the next scan taps it).
                    _ => Known::Waiting,
                }
            }
            Setup::Tapped(t) if t.participant.endpoint != endpoint => {
                // Under --host openvidu: kept under its PassThrough; the endpoint points there.
                let key = t.participant.endpoint.clone();
                if matches!(self.known.get(&key), Some(Known::Tapped(_))) {
                    // Two setups raced to the same PassThrough: one tap is enough.
                    t.stop(&self.kms, self.kms_connected()).await;
                    self.known.insert(endpoint, Known::Via(key));
                    return;
                }
                info!(room = %t.participant.room, participant = %t.participant.name, display = ?t.participant.display, stream = ?t.participant.stream.as_ref().map(|s| s.id.as_str()), publisher = t.participant.publisher_endpoint(), passthrough = %key, tap = %t.tap.id(), media = ?media_list(&t.participant), "tapping");
                self.metrics.taps_active.inc();
                self.kms_taps().inc();
                self.metrics.taps_total.inc();
                self.tapped
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(key.clone());
                self.known.insert(key.clone(), Known::Tapped(t));
                Known::Via(key)
            }
            Setup::Tapped(t) => {
                info!(room = %t.participant.room, participant = %t.participant.name, tap = %t.tap.id(), media = ?media_list(&t.participant), "tapping");
                self.metrics.taps_active.inc();
                self.kms_taps().inc();
                self.metrics.taps_total.inc();
                if t.participant.presenter {
                    self.tell_mood(crate::mood::MoodEvent::Presenter {
                        room: tap_protocol::safe_token(&t.participant.room),
                        participant: Some(tap_protocol::safe_token(&t.participant.name)),
                        source: room_mood::PresenterSource::Tag,
                    });
                }
                self.tapped
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(endpoint.clone());
                Known::Tapped(t)
            }
            Setup::Ignored => Known::Ignored,
            Setup::Waiting => Known::Waiting,
            Setup::Failed => Known::Failed(Instant::now() + Duration::from_secs(15)),
            Setup::Gone => {
                self.known.remove(&endpoint);
                return;
            }
        };
        self.known.insert(endpoint, k);
    }

    /// Stops a tap; releases our objects when `release` (never anything else).
    pub(super) async fn detach(&mut self, endpoint: &str, release: bool) -> bool {
        let Some(Known::Tapped(t)) = self.known.remove(endpoint) else {
            return false;
        };
        self.tapped
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(endpoint);
        let (room, name) = (
            tap_protocol::safe_token(&t.participant.room),
            tap_protocol::safe_token(&t.participant.name),
        );
        if t.participant.presenter {
            self.tell_mood(crate::mood::MoodEvent::Presenter {
                room: room.clone(),
                participant: None,
                source: room_mood::PresenterSource::Tag,
            });
        }
        self.tell_mood(crate::mood::MoodEvent::Left {
            room,
            participant: name,
        });
        t.stop(&self.kms, release).await;
        self.metrics.taps_active.dec();
        self.kms_taps().dec();
        true
    }

    pub(super) async fn detach_all(&mut self, release: bool) {
        let tapped: Vec<String> = self
            .known
            .iter()
            .filter(|(_, k)| matches!(k, Known::Tapped(_)))
            .map(|(e, _)| e.clone())
            .collect();
        for ep in tapped {
            self.detach(&ep, release).await;
        }
    }
}

/// Looks at one endpoint and taps it if it is a live publisher we may tap (runs concurrently).
pub(super) async fn setup(
    ctx: TapContext,
    room: String,
    pipeline: MediaPipeline,
    ep: WebRtcEndpoint,
    first_seen: Instant,
    decisions: crate::privacy::consent::ControlDecisions,
    tapped: Arc<std::sync::Mutex<HashSet<String>>>,
) -> Setup {
    let examined = match ctx.config.host {
        crate::discovery::openvidu::Host::Kurento => {
            discovery::examine(&room, &pipeline, &ep, &ctx.config.tags).await
        }
        crate::discovery::openvidu::Host::OpenVidu => {
            discovery::examine_openvidu(
                &room,
                &pipeline,
                &ep,
                &ctx.config.tags,
                ctx.openvidu.as_deref(),
                &ctx.metrics,
                first_seen.elapsed() < discovery::OPENVIDU_NAME_WAIT,
            )
            .await
        }
    };
    let examined = match examined {
        Ok(e) => e,
        Err(e) => {
            debug!(endpoint = ep.id(), error = %e, "cannot examine endpoint");
            return Setup::Waiting;
        }
    };
    let p = match examined {
        Examined::Publisher(p) => p,
        Examined::Other => return Setup::Ignored,
        Examined::NotYet(_) => return Setup::Waiting,
        Examined::Gone => return Setup::Gone,
    };
    // A PassThrough already tapped (OpenVidu: the publisher reconnected onto it).
    if p.publisher.is_some()
        && tapped
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains(&p.endpoint)
    {
        return Setup::Adopt(Box::new(p));
    }
    if let Some(reason) = not_tapped_reason(&ctx.config, &p) {
        info!(room = %p.room, participant = %p.name, reason, "not tapping");
        ctx.metrics
            .not_tapped
            .get_or_create(&ReasonLabel {
                reason: reason.into(),
            })
            .inc();
        return Setup::Ignored;
    }
    // Consent, from the tags just read and the control requests: nothing of a participant
    // without it is tapped (logged and counted by the watcher, on changes only).
    let control = crate::privacy::consent::control_decision(&decisions, &p.room, &p.name);
    if !crate::privacy::consent::analysed(ctx.config.consent, p.consent_tag, control) {
        return Setup::NoConsent(Box::new(p));
    }
    if !p.live {
        return Setup::Waiting;
    }
    attach(&ctx, p, first_seen).await
}

pub(super) async fn attach(ctx: &TapContext, p: Participant, first_seen: Instant) -> Setup {
    match ctx.make_tap(p.clone(), first_seen).await {
        Ok(tap) => Setup::Tapped(Box::new(tap)),
        Err(e) => {
            warn!(room = %p.room, participant = %p.name, error = %e, "cannot tap participant");
            ctx.metrics
                .tap_errors
                .get_or_create(&ReasonLabel {
                    reason: e.reason().into(),
                })
                .inc();
            Setup::Failed
        }
    }
}
