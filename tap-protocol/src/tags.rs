//! The Kurento tags kurento-tap reads and writes (`addTag` on pipelines and endpoints). An app
//! names its rooms and participants with them; the daemon marks what it created. Every key can be
//! renamed in the daemon's `[tags]` table; these are the defaults.

/// On a room's MediaPipeline (or an endpoint): the room's name.
pub const ROOM: &str = "kurento-tap.room";
/// On a publisher endpoint: the participant's name.
pub const PARTICIPANT: &str = "kurento-tap.participant";
/// On endpoints: [`ROLE_PUBLISHER`], [`ROLE_PRESENTER`] or `subscriber`.
pub const ROLE: &str = "kurento-tap.role";
/// On a publisher: `false` never analyses them; `true` is consent (needed under `opt-in`).
pub const CONSENT: &str = "kurento-tap.consent";
/// On objects kurento-tap created: the owning daemon's id.
pub const OWNER: &str = "kurento-tap.owner";
/// On a tap or DataChannel peer: the publisher endpoint it serves.
pub const TAPPED_ENDPOINT: &str = "kurento-tap.endpoint";

/// A participant who publishes.
pub const ROLE_PUBLISHER: &str = "publisher";
/// A publisher who presents (receives the room's mood).
pub const ROLE_PRESENTER: &str = "presenter";
/// A participant who only receives.
pub const ROLE_SUBSCRIBER: &str = "subscriber";
