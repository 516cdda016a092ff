//! Room leases: how several daemons watching the same KMS share its rooms, each tapped by exactly
//! one of them (`docs/protocol.md`, "Leases").
//!
//! The bucket [`LEASE_BUCKET`] is a JetStream KV whose entries expire [`LeaseValue`]'s TTL after
//! their last write (the bucket's `max_age`). A daemon holds a room while it keeps rewriting the
//! room's key with the revision it last wrote (compare-and-set); a key that expired or was deleted
//! can be created by anyone. Daemons also keep a member entry, so each can tell how many rooms the
//! others hold and leave new rooms to the least loaded.

use serde::{Deserialize, Serialize};

/// The KV bucket of leases and members.
pub const LEASE_BUCKET: &str = "tap_leases_v1";

/// Prefix of room lease keys: `room.<kms>.<pipeline>`.
pub const ROOM_PREFIX: &str = "room.";

/// Prefix of member keys: `daemon.<daemon>`.
pub const MEMBER_PREFIX: &str = "daemon.";

/// Longest key token (KV keys are subjects; Kurento ids are ~60 characters).
pub const MAX_KEY_TOKEN: usize = 200;

/// Makes a KV key token: ASCII letters, digits, `-` and `_` kept, everything else `_`, at most
/// [`MAX_KEY_TOKEN`] characters (unlike [`crate::safe_token`], long Kurento ids are not cut at 64).
pub fn key_token(s: &str) -> String {
    crate::token_of_at_most(s, MAX_KEY_TOKEN)
}

/// The lease key of a room (one pipeline of one KMS).
pub fn room_key(kms: &str, pipeline: &str) -> String {
    format!("{ROOM_PREFIX}{}.{}", key_token(kms), key_token(pipeline))
}

/// The member key of a daemon.
pub fn member_key(daemon: &str) -> String {
    format!("{MEMBER_PREFIX}{}", key_token(daemon))
}

/// A room's lease, as its holder writes it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LeaseValue {
    /// Protocol version (1).
    pub v: u32,
    /// The holder's daemon id (also the owner tag of the objects it makes).
    pub daemon: String,
    /// The KMS the room lives on (its name in the holder's configuration).
    pub kms: String,
    /// The room's pipeline id.
    pub pipeline: String,
    /// The room's name, when known.
    #[serde(default)]
    pub room: Option<String>,
    /// When the holder first took it, ms since the epoch.
    pub since_ms: u64,
}

/// A daemon's member entry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MemberValue {
    /// Protocol version (1).
    pub v: u32,
    /// Daemon id.
    pub daemon: String,
    /// The KMS it watches.
    pub kms: Vec<String>,
    /// Rooms it holds now.
    pub rooms: u32,
    /// Its HTTP address (`/metrics`), when it serves one.
    #[serde(default)]
    pub http: Option<String>,
}

/// Bounds on what is read back from the bucket (any process may write it).
fn plausible(s: &str) -> bool {
    !s.is_empty() && s.len() <= MAX_KEY_TOKEN * 2
}

impl LeaseValue {
    /// Reads and checks a lease entry.
    pub fn parse(payload: &[u8]) -> Result<LeaseValue, String> {
        let v: LeaseValue =
            serde_json::from_slice(payload).map_err(|e| format!("unreadable lease: {e}"))?;
        if v.v != crate::VERSION || !plausible(&v.daemon) || !plausible(&v.pipeline) {
            return Err("invalid lease".into());
        }
        Ok(v)
    }
}

impl MemberValue {
    /// Reads and checks a member entry.
    pub fn parse(payload: &[u8]) -> Result<MemberValue, String> {
        let v: MemberValue =
            serde_json::from_slice(payload).map_err(|e| format!("unreadable member: {e}"))?;
        if v.v != crate::VERSION || !plausible(&v.daemon) || v.kms.len() > 256 {
            return Err("invalid member".into());
        }
        Ok(v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_subject_safe_and_keep_long_ids_whole() {
        let p = "0b6d3a1c-86a3-4d2b-9d60-4b3f7e1b8c11_kurento.MediaPipeline";
        let k = room_key("kms-a:8888", p);
        assert_eq!(
            k,
            "room.kms-a_8888.0b6d3a1c-86a3-4d2b-9d60-4b3f7e1b8c11_kurento_MediaPipeline"
        );
        assert!(k.len() > 64);
        assert_eq!(member_key("tap 1"), "daemon.tap_1");
    }

    #[test]
    fn entries_are_checked() {
        let good = LeaseValue {
            v: 1,
            daemon: "d1".into(),
            kms: "k".into(),
            pipeline: "p".into(),
            room: None,
            since_ms: 1,
        };
        let body = serde_json::to_vec(&good).unwrap();
        assert_eq!(LeaseValue::parse(&body).unwrap(), good);
        let bad = LeaseValue {
            daemon: String::new(),
            ..good
        };
        assert!(LeaseValue::parse(&serde_json::to_vec(&bad).unwrap()).is_err());
        assert!(MemberValue::parse(b"[]").is_err());
    }
}
