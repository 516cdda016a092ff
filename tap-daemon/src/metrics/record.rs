//! Recording an event in the right metric and label, so callers name what happened, not how it
//! is counted.

use super::labels::*;
use super::Metrics;

impl Metrics {
    /// Counts a `requestKeyframe` call by KMS's answer.
    pub fn kms_keyframe_request(&self, outcome: &str) {
        self.kms_keyframe_requests
            .get_or_create(&OutcomeLabel {
                outcome: outcome.into(),
            })
            .inc();
    }

    /// Counts a DataChannel setup outcome.
    pub fn datachannel_setup(&self, outcome: &str) {
        self.datachannel_setups
            .get_or_create(&OutcomeLabel {
                outcome: outcome.to_owned(),
            })
            .inc();
    }

    /// Shows the processing policy in force.
    pub fn set_policy(&self, policy: crate::privacy::policy::Policy) {
        for p in crate::privacy::policy::Policy::ALL {
            self.policy
                .get_or_create(&PolicyLabel {
                    policy: p.as_str().into(),
                })
                .set(i64::from(p == policy));
        }
    }

    /// Counts one result the policy kept in the daemon.
    pub fn policy_withheld(&self, reason: &str) {
        self.policy_withheld
            .get_or_create(&ReasonLabel {
                reason: reason.into(),
            })
            .inc();
    }

    /// Shows the consent mode in force.
    pub fn set_consent_mode(&self, mode: crate::privacy::consent::ConsentMode) {
        for m in [
            crate::privacy::consent::ConsentMode::OptOut,
            crate::privacy::consent::ConsentMode::OptIn,
        ] {
            self.consent_mode
                .get_or_create(&ModeLabel {
                    mode: m.as_str().into(),
                })
                .set(i64::from(m == mode));
        }
    }

    /// Counts one consent change.
    pub fn consent_change(&self, change: &str, source: &str) {
        self.consent_changes
            .get_or_create(&ConsentLabel {
                change: change.into(),
                source: source.into(),
            })
            .inc();
    }

    /// Counts one refused consent request.
    pub fn consent_refused(&self, reason: &str) {
        self.consent_refused
            .get_or_create(&ReasonLabel {
                reason: reason.into(),
            })
            .inc();
    }

    /// Counts one fusion outcome.
    pub fn affect_result(&self, outcome: &str) {
        self.affect_results
            .get_or_create(&OutcomeLabel {
                outcome: outcome.into(),
            })
            .inc();
    }

    /// Counts one room mood.
    pub fn room_mood(&self, published: bool) {
        let outcome = if published { "published" } else { "withheld" };
        self.room_moods
            .get_or_create(&OutcomeLabel {
                outcome: outcome.into(),
            })
            .inc();
    }

    /// Counts an OpenVidu REST request.
    pub fn openvidu_request(&self, op: &str, outcome: &str) {
        self.openvidu_requests
            .get_or_create(&OpOutcomeLabel {
                op: op.into(),
                outcome: outcome.into(),
            })
            .inc();
    }

    /// Counts OpenVidu signals.
    pub fn openvidu_signal(&self, outcome: &str, n: u64) {
        self.openvidu_signals
            .get_or_create(&OutcomeLabel {
                outcome: outcome.into(),
            })
            .inc_by(n);
    }

    /// Counts an endpoint examined under `--host openvidu`.
    pub fn openvidu_endpoint(&self, what: &str) {
        self.openvidu_endpoints
            .get_or_create(&ReasonLabel {
                reason: what.into(),
            })
            .inc();
    }

    /// Counts a DataChannel message outcome.
    pub fn datachannel_message(&self, outcome: &str) {
        self.datachannel_messages_n(outcome, 1);
    }

    /// Counts `n` DataChannel messages with one outcome.
    pub fn datachannel_messages_n(&self, outcome: &str, n: u64) {
        self.datachannel_messages
            .get_or_create(&OutcomeLabel {
                outcome: outcome.to_owned(),
            })
            .inc_by(n);
    }

    /// Counts a lease event.
    pub fn lease_events(&self, outcome: &str) {
        self.lease_events
            .get_or_create(&OutcomeLabel {
                outcome: outcome.to_owned(),
            })
            .inc();
    }

    /// Counts a dropped chunk.
    pub fn dropped(&self, model: &str, reason: &str) {
        self.chunks_dropped
            .get_or_create(&DropLabel {
                model: model.to_owned(),
                reason: reason.to_owned(),
            })
            .inc();
    }
}
