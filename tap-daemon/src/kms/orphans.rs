//! Which of our objects in KMS nothing of ours stands for any more (pure: no KMS, no time).
//!
//! Every object the daemon creates carries its owner tag and the publisher it serves. A leave, a
//! rejoin, a lost event, an answer lost with a dropped socket: whatever race leaves one of them
//! behind, the periodic rescan finds it here and releases it, so what the daemon holds in KMS
//! always converges to exactly its running taps. Only objects tagged with this daemon's owner id
//! are ever considered, never the application's.

/// Kinds of objects the daemon creates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OwnedKind {
    /// An RtpEndpoint (a tap).
    Tap,
    /// A WebRtcEndpoint (the DataChannel peer's).
    DataPeer,
}

/// One object found in KMS with our owner tag.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OwnedObject {
    /// Its Kurento id.
    pub id: String,
    /// What it is.
    pub kind: OwnedKind,
    /// The publisher endpoint it serves (its `tapped_endpoint` tag).
    pub serves: Option<String>,
}

/// What the daemon is doing for a publisher right now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PublisherState<'a> {
    /// Tapped by the tap with this RtpEndpoint id.
    Tapped {
        /// Our current RtpEndpoint for it.
        tap: &'a str,
    },
    /// A setup is in flight: objects for it may exist that the daemon has not recorded yet.
    SettingUp,
    /// Not tapped (left, never tapped, detached, failed).
    NotTapped,
}

/// The ids of owned objects to release.
pub fn orphans<'a, 'k>(
    owned: &'a [OwnedObject],
    state: impl Fn(&str) -> PublisherState<'k>,
) -> Vec<&'a str> {
    owned
        .iter()
        .filter(|o| {
            let Some(publisher) = o.serves.as_deref() else {
                return true;
            };
            match (state(publisher), o.kind) {
                (PublisherState::SettingUp, _) => false,
                (PublisherState::Tapped { tap }, OwnedKind::Tap) => tap != o.id,
                // The injector manages its own peer (and retries replace it).
                (PublisherState::Tapped { .. }, OwnedKind::DataPeer) => false,
                (PublisherState::NotTapped, _) => true,
            }
        })
        .map(|o| o.id.as_str())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obj(id: &str, kind: OwnedKind, serves: Option<&str>) -> OwnedObject {
        OwnedObject {
            id: id.into(),
            kind,
            serves: serves.map(Into::into),
        }
    }

    #[test]
    fn only_what_no_running_tap_stands_for() {
        let owned = vec![
            obj("tap-a", OwnedKind::Tap, Some("pub-a")),
            obj("peer-a", OwnedKind::DataPeer, Some("pub-a")),
            // A rejoined participant's old publisher: left, its tap and peer stayed behind.
            obj("tap-old", OwnedKind::Tap, Some("pub-old")),
            obj("peer-old", OwnedKind::DataPeer, Some("pub-old")),
            // A second tap for a tapped publisher (an answer lost, a retried setup).
            obj("tap-a2", OwnedKind::Tap, Some("pub-a")),
            // Being set up right now: not recorded yet, not an orphan.
            obj("tap-b", OwnedKind::Tap, Some("pub-b")),
            obj("peer-b", OwnedKind::DataPeer, Some("pub-b")),
            // Ours without a publisher tag.
            obj("stray", OwnedKind::Tap, None),
        ];
        let state = |p: &str| match p {
            "pub-a" => PublisherState::Tapped { tap: "tap-a" },
            "pub-b" => PublisherState::SettingUp,
            _ => PublisherState::NotTapped,
        };
        assert_eq!(
            orphans(&owned, state),
            vec!["tap-old", "peer-old", "tap-a2", "stray"]
        );
    }

    #[test]
    fn nothing_owned_nothing_released() {
        assert!(orphans(&[], |_| PublisherState::NotTapped).is_empty());
    }
}
