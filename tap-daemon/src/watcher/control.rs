//! Control requests a watcher serves: attach a publisher, and consent (by request or by tag).

use std::time::Instant;

use kurento_client::prelude::*;
use tracing::info;

use crate::discovery::{self, Examined, Participant};
use crate::metrics::{Metrics, ReasonLabel};

use super::command::{ConsentAnswer, ControlAnswer, ControlRefusal, ControlRequest};
use super::lifecycle::attach;
use super::state::{KmsWatcher, Known, Setup};

impl KmsWatcher {
    pub(super) async fn control_attach(&mut self, req: ControlRequest) -> ControlAnswer {
        if !self.may_serve(&req.pipeline) {
            return Err(ControlRefusal::NotHolder);
        }
        match self.known.get(&req.endpoint) {
            Some(Known::Tapped(t)) => return Ok(t.tap.id().to_owned()),
            Some(Known::Pending) => {
                return Err(ControlRefusal::Failed(
                    "a tap for it is being set up".into(),
                ))
            }
            _ => {}
        }
        let failed = |e: String| ControlRefusal::Failed(e);
        let pipeline: MediaPipeline = self
            .kms
            .object(&req.pipeline)
            .map_err(|e| failed(e.to_string()))?;
        let ep: WebRtcEndpoint = self
            .kms
            .object(&req.endpoint)
            .map_err(|e| failed(e.to_string()))?;
        // The room's name is read even when given: it proves the pipeline is on this KMS.
        let tagged_room = match discovery::room_name(&pipeline, &self.config.tags).await {
            Ok(r) => r,
            Err(e) if e.is_object_not_found() => return Err(ControlRefusal::NotHere),
            Err(e) => return Err(failed(e.to_string())),
        };
        let room = req.room.clone().unwrap_or(tagged_room);
        let mut p = match discovery::examine(&room, &pipeline, &ep, &self.config.tags)
            .await
            .map_err(|e| failed(e.to_string()))?
        {
            Examined::Publisher(p) => p,
            Examined::NotYet(why) => return Err(failed(format!("endpoint not ready: {why}"))),
            Examined::Gone => return Err(failed("endpoint not found".into())),
            Examined::Other => return Err(failed("not a publisher endpoint".into())),
        };
        let control =
            crate::privacy::consent::control_decision(&self.control_consent, &p.room, &p.name);
        if !crate::privacy::consent::analysed(self.config.consent, p.consent_tag, control) {
            return Err(failed(
                if p.consent_tag == Some(false) || control == Some(false) {
                    "participant opted out (consent withdrawn)".into()
                } else {
                    "participant has not consented (consent = opt-in)".into()
                },
            ));
        }
        if let Some(name) = req.participant {
            p.name = name;
        }
        p.room = room;
        let endpoint = p.endpoint.clone();
        let outcome = attach(&self.ctx, p, Instant::now()).await;
        let reply = match &outcome {
            Setup::Tapped(t) => Ok(t.tap.id().to_owned()),
            _ => Err(failed("tap failed (see the daemon's log)".to_owned())),
        };
        self.known.insert(endpoint.clone(), Known::Pending);
        self.on_setup_done(endpoint, outcome).await;
        reply
    }

    /// Records whether a publisher examined is analysed (consent): a change made by its tag is
    /// logged and counted (control changes are recorded where the request is served); entering
    /// "not analysed" counts in `participants_not_tapped_total` once.
    pub(super) fn note_consent(&mut self, endpoint: &str, p: &Participant, analysed: bool) {
        let before = self.consent_seen.insert(endpoint.to_owned(), analysed);
        if let Some(c) = crate::privacy::consent::change(before, analysed, p.consent_tag.is_some())
        {
            record_consent(
                &self.metrics,
                &p.room,
                &p.name,
                c,
                crate::privacy::consent::Source::Tag,
            );
        }
        if !analysed && before != Some(false) {
            self.count_not_analysed(p);
        }
    }

    /// Logs and counts a publisher entering "not analysed" for want of consent (`opt_out`: a tag
    /// or a control request said no; `no_consent`: nobody said yes under `opt-in`).
    pub(super) fn count_not_analysed(&self, p: &Participant) {
        let control =
            crate::privacy::consent::control_decision(&self.control_consent, &p.room, &p.name);
        let reason = if p.consent_tag == Some(false) || control == Some(false) {
            "opt_out"
        } else {
            "no_consent"
        };
        info!(room = %p.room, participant = %p.name, reason, "not tapping");
        self.metrics
            .not_tapped
            .get_or_create(&ReasonLabel {
                reason: reason.into(),
            })
            .inc();
    }

    /// Re-reads the consent tag of every publisher examined (tapped, or not for want of consent),
    /// all at once: a tapped one whose consent is gone is stopped, one whose consent came is set
    /// up (tapped) now. A tag change takes effect within one scan.
    pub(super) async fn recheck_consent(
        &mut self,
        publishers: Vec<(MediaPipeline, String, WebRtcEndpoint)>,
    ) {
        if publishers.is_empty() {
            return;
        }
        let tags =
            futures_util::future::join_all(publishers.iter().map(|(_, _, ep)| ep.get_tags())).await;
        for ((pipeline, room, ep), tags) in publishers.into_iter().zip(tags) {
            // Unreadable (gone, or KMS busy): the scan's own checks and the next scan see to it.
            let Ok(tags) = tags else {
                continue;
            };
            let tag = crate::privacy::consent::tag_value(
                tags.iter()
                    .find(|t| t.key == self.config.tags.consent)
                    .map(|t| t.value.as_str()),
            );
            let (p, was) = match self.known.get_mut(ep.id()) {
                Some(Known::Tapped(t)) => (&mut t.participant, true),
                Some(Known::NoConsent(p)) => (&mut **p, false),
                _ => continue,
            };
            p.consent_tag = tag;
            p.consent = tag != Some(false);
            let p = p.clone();
            let control =
                crate::privacy::consent::control_decision(&self.control_consent, &p.room, &p.name);
            let now = crate::privacy::consent::analysed(self.config.consent, tag, control);
            match (was, now) {
                (true, false) => {
                    // The room lives on: our objects for this publisher are released.
                    self.detach(ep.id(), self.kms_connected()).await;
                    self.note_consent(ep.id(), &p, false);
                    self.known
                        .insert(ep.id().to_owned(), Known::NoConsent(Box::new(p)));
                }
                // Examined again and tapped by a setup (which logs the change).
                (false, true) => self.spawn_setup(Some(room), pipeline, ep),
                _ => {}
            }
        }
    }

    /// A consent request (`tap.v1.ctl.consent`): recorded for the participant, logged and counted,
    /// and applied at once to each of their publishers here: a withdrawal stops the tap, a grant
    /// taps them now. `NotHere` when no publisher of that name is known on this KMS.
    pub(super) async fn control_consent(
        &mut self,
        req: crate::privacy::consent::ConsentRequest,
    ) -> ConsentAnswer {
        let key = crate::privacy::consent::key(&req.room, &req.participant);
        let matching: Vec<String> = self
            .known
            .iter()
            .filter_map(|(ep, k)| {
                let p = match k {
                    Known::Tapped(t) => &t.participant,
                    Known::NoConsent(p) => p,
                    _ => return None,
                };
                (crate::privacy::consent::key(&p.room, &p.name) == key).then(|| ep.clone())
            })
            .collect();
        if matching.is_empty() {
            return Err(ControlRefusal::NotHere);
        }
        {
            let mut d = self
                .control_consent
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            if !d.contains_key(&key) && d.len() >= crate::privacy::consent::MAX_CONTROL_DECISIONS {
                return Err(ControlRefusal::Failed(format!(
                    "too many consent decisions remembered ({})",
                    crate::privacy::consent::MAX_CONTROL_DECISIONS
                )));
            }
            d.insert(key, req.consent);
        }
        let change = if req.consent {
            crate::privacy::consent::Change::Granted
        } else {
            crate::privacy::consent::Change::Withdrawn
        };
        record_consent(
            &self.metrics,
            &req.room,
            &req.participant,
            change,
            crate::privacy::consent::Source::Control,
        );
        let mut analysed_now = false;
        for ep in matching {
            let (p, was) = match self.known.get(&ep) {
                Some(Known::Tapped(t)) => (t.participant.clone(), true),
                Some(Known::NoConsent(p)) => ((**p).clone(), false),
                _ => continue,
            };
            let now = crate::privacy::consent::analysed(
                self.config.consent,
                p.consent_tag,
                Some(req.consent),
            );
            // Recorded first: the change is the control request's, already logged.
            self.consent_seen.insert(ep.clone(), now);
            match (was, now) {
                (true, false) => {
                    self.detach(&ep, self.kms_connected()).await;
                    self.count_not_analysed(&p);
                    self.known.insert(ep, Known::NoConsent(Box::new(p)));
                }
                (false, true) if !p.live => {
                    // Its browser sends nothing yet: the scan taps it when it does.
                    self.known.insert(ep, Known::Waiting);
                }
                (false, true) => {
                    let outcome = attach(&self.ctx, p, Instant::now()).await;
                    analysed_now |= matches!(outcome, Setup::Tapped(_));
                    self.known.insert(ep.clone(), Known::Pending);
                    self.on_setup_done(ep, outcome).await;
                }
                (was, _) => analysed_now |= was,
            }
        }
        Ok(analysed_now)
    }
}

/// Logs a consent change (who, when, what, from where; no media, no results) and counts it.
fn record_consent(
    metrics: &Metrics,
    room: &str,
    participant: &str,
    change: crate::privacy::consent::Change,
    source: crate::privacy::consent::Source,
) {
    let at_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    info!(
        room,
        participant,
        at_ms,
        consent = change.as_str(),
        source = source.as_str(),
        "consent changed"
    );
    metrics.consent_change(change.as_str(), source.as_str());
}
