//! Consent (issue 24): whether a participant may be analysed at all, decided before anything of
//! theirs is tapped.
//!
//! - `opt-out` (default, the behaviour before consent modes): everyone is analysed unless their
//!   publisher endpoint is tagged `kurento-tap.consent=false` or a control request withdrew them;
//! - `opt-in`: nobody is analysed until their endpoint is tagged `kurento-tap.consent=true` or a
//!   `tap.v1.ctl.consent` request grants it.
//!
//! A withdrawal from either source wins (a control grant does not override a tag saying `false`,
//! nor a tag saying `true` a control withdrawal). The watcher re-reads every publisher's tags on
//! each scan (a tag change takes effect within one scan, 1 s by default); a control request takes
//! effect at once. Each change is logged at info (room, participant, when, granted or withdrawn,
//! tag or control: never media or results) and counted (`kurento_tap_consent_changes_total`).
//!
//! A pure core ([`analysed`], [`change`], [`ConsentRequest::parse`]) and the daemon's serving of
//! control requests ([`serve`]).

use std::collections::HashMap;
use std::fmt;
use std::str::FromStr;
use std::sync::{Arc, Mutex};

use serde::Deserialize;
use tap_protocol::safe_token;

/// Request/reply subject granting or withdrawing a participant's consent.
pub const CTL_CONSENT: &str = "tap.v1.ctl.consent";

/// Grants and withdrawals remembered from control requests, at most (a request beyond is refused
/// and counted).
pub const MAX_CONTROL_DECISIONS: usize = 100_000;

/// How participants come to be analysed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Hash)]
pub enum ConsentMode {
    /// Analysed unless they opted out (tag `false` or a control withdrawal).
    #[default]
    OptOut,
    /// Analysed only once they opted in (tag `true` or a control grant).
    OptIn,
}

/// An unknown consent mode.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown consent mode {0:?}: expected opt-out or opt-in")]
pub struct UnknownConsentMode(pub String);

impl ConsentMode {
    /// Its name (`opt-out`, `opt-in`).
    pub fn as_str(self) -> &'static str {
        match self {
            ConsentMode::OptOut => "opt-out",
            ConsentMode::OptIn => "opt-in",
        }
    }
}

impl fmt::Display for ConsentMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for ConsentMode {
    type Err = UnknownConsentMode;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim() {
            "opt-out" => Ok(ConsentMode::OptOut),
            "opt-in" => Ok(ConsentMode::OptIn),
            other => Err(UnknownConsentMode(other.chars().take(64).collect())),
        }
    }
}

/// What a consent tag's value says: `true` grants, `false` withdraws, anything else (or no tag)
/// says nothing.
pub fn tag_value(value: Option<&str>) -> Option<bool> {
    match value.map(str::trim) {
        Some("true") => Some(true),
        Some("false") => Some(false),
        _ => None,
    }
}

/// Whether a participant may be analysed under `mode`, given what their tag says and what the
/// last control request about them said (None: nothing). A withdrawal from either source wins.
pub fn analysed(mode: ConsentMode, tag: Option<bool>, control: Option<bool>) -> bool {
    if tag == Some(false) || control == Some(false) {
        return false;
    }
    match mode {
        ConsentMode::OptOut => true,
        ConsentMode::OptIn => tag == Some(true) || control == Some(true),
    }
}

/// A change of whether a participant is analysed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// From not analysed (or first seen) to analysed.
    Granted,
    /// From analysed (or first seen) to not analysed.
    Withdrawn,
}

impl Change {
    /// `granted` / `withdrawn` (the `change` label of the metric, and the log's `consent`).
    pub fn as_str(self) -> &'static str {
        match self {
            Change::Granted => "granted",
            Change::Withdrawn => "withdrawn",
        }
    }
}

/// What changed between the decision `before` (None: first seen) and `now`. A participant seen
/// for the first time is a change only when a tag says something about them (`tag_says`):
/// analysing someone because of the default of `opt-out`, or not analysing them because of the
/// default of `opt-in`, is nobody's decision to log.
pub fn change(before: Option<bool>, now: bool, tag_says: bool) -> Option<Change> {
    let to = if now {
        Change::Granted
    } else {
        Change::Withdrawn
    };
    match before {
        Some(b) if b == now => None,
        Some(_) => Some(to),
        None if tag_says => Some(to),
        None => None,
    }
}

/// Where a consent change came from (the `source` label and the log's `source`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// The endpoint's `kurento-tap.consent` tag.
    Tag,
    /// A `tap.v1.ctl.consent` request.
    Control,
}

impl Source {
    /// `tag` / `control`.
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Tag => "tag",
            Source::Control => "control",
        }
    }
}

/// Grants and withdrawals by control request: (room token, participant token) → granted. Shared
/// by a watcher and its setups.
pub type ControlDecisions = Arc<Mutex<HashMap<(String, String), bool>>>;

/// The key of a participant in [`ControlDecisions`]: names as safe tokens (as in subjects).
pub fn key(room: &str, participant: &str) -> (String, String) {
    (safe_token(room), safe_token(participant))
}

/// What a control request last decided for a participant (`None`: nothing).
pub fn control_decision(
    decisions: &ControlDecisions,
    room: &str,
    participant: &str,
) -> Option<bool> {
    decisions
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .get(&key(room, participant))
        .copied()
}

/// A consent request (`tap.v1.ctl.consent`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConsentRequest {
    /// Room (name or safe token, as in subjects).
    pub room: String,
    /// Participant (name or safe token).
    pub participant: String,
    /// `true` grants consent, `false` withdraws it.
    pub consent: bool,
}

impl ConsentRequest {
    /// Reads and checks a request body: JSON, non-empty names of at most [`MAX_CONTROL_NAME`](tap_protocol::affect::MAX_CONTROL_NAME)
    /// bytes, a boolean `consent`.
    pub fn parse(payload: &[u8]) -> Result<ConsentRequest, String> {
        let req: ConsentRequest =
            serde_json::from_slice(payload).map_err(|e| format!("bad request: {e}"))?;
        tap_protocol::affect::check_control_names(&req.room, &req.participant)?;
        Ok(req)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tap_protocol::affect::MAX_CONTROL_NAME;

    #[test]
    fn modes_parse_and_unknown_ones_are_errors() {
        assert_eq!("opt-in".parse::<ConsentMode>(), Ok(ConsentMode::OptIn));
        assert_eq!(" opt-out\n".parse::<ConsentMode>(), Ok(ConsentMode::OptOut));
        assert_eq!(ConsentMode::default(), ConsentMode::OptOut);
        let e = "optin".parse::<ConsentMode>().unwrap_err();
        assert!(e.to_string().contains("opt-out or opt-in"), "{e}");
        assert!(
            "x".repeat(10_000)
                .parse::<ConsentMode>()
                .unwrap_err()
                .0
                .len()
                <= 64
        );
    }

    #[test]
    fn tags_say_true_false_or_nothing() {
        assert_eq!(tag_value(Some("true")), Some(true));
        assert_eq!(tag_value(Some("false")), Some(false));
        for nothing in [None, Some(""), Some("yes"), Some("TRUE")] {
            assert_eq!(tag_value(nothing), None, "{nothing:?}");
        }
    }

    #[test]
    fn opt_out_analyses_unless_someone_said_no() {
        use ConsentMode::OptOut;
        assert!(analysed(OptOut, None, None));
        assert!(analysed(OptOut, Some(true), None));
        assert!(analysed(OptOut, None, Some(true)));
        assert!(!analysed(OptOut, Some(false), None));
        assert!(!analysed(OptOut, None, Some(false)));
        // A control grant does not override the application's tag saying no.
        assert!(!analysed(OptOut, Some(false), Some(true)));
    }

    #[test]
    fn opt_in_analyses_only_after_a_yes_and_a_no_wins() {
        use ConsentMode::OptIn;
        assert!(!analysed(OptIn, None, None));
        assert!(analysed(OptIn, Some(true), None));
        assert!(analysed(OptIn, None, Some(true)));
        assert!(
            !analysed(OptIn, Some(true), Some(false)),
            "withdrawn by control"
        );
        assert!(
            !analysed(OptIn, Some(false), Some(true)),
            "withdrawn by tag"
        );
        assert!(!analysed(OptIn, Some(false), None));
    }

    #[test]
    fn changes_are_transitions_and_tagged_first_sights() {
        assert_eq!(change(Some(false), true, false), Some(Change::Granted));
        assert_eq!(change(Some(true), false, false), Some(Change::Withdrawn));
        assert_eq!(change(Some(true), true, true), None);
        assert_eq!(change(Some(false), false, true), None);
        // First seen: logged only when a tag decided it.
        assert_eq!(change(None, true, true), Some(Change::Granted));
        assert_eq!(change(None, false, true), Some(Change::Withdrawn));
        assert_eq!(change(None, true, false), None);
        assert_eq!(change(None, false, false), None);
    }

    #[test]
    fn requests_are_checked() {
        let r = ConsentRequest::parse(br#"{"room":"class","participant":"ana","consent":true}"#)
            .unwrap();
        assert!(r.consent);
        assert_eq!(key(&r.room, &r.participant), key("class", "ana"));
        assert_eq!(key("a.b", "*"), ("a_b".to_owned(), "_".to_owned()));
        for bad in [
            &br#"{"room":"class","participant":"ana"}"#[..],
            br#"{"room":"class","participant":"ana","consent":"yes"}"#,
            br#"{"room":"","participant":"ana","consent":true}"#,
            br#"{"room":"r","participant":"a","consent":true,"x":1}"#,
            b"\xff\xfe",
        ] {
            let e = ConsentRequest::parse(bad).unwrap_err();
            assert!(e.starts_with("bad request"), "{e}");
        }
        let long = format!(
            r#"{{"room":"r","participant":"{}","consent":false}}"#,
            "x".repeat(MAX_CONTROL_NAME + 1)
        );
        assert!(ConsentRequest::parse(long.as_bytes())
            .unwrap_err()
            .contains("longer"));
    }
}
