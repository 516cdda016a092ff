//! Scenario files: which rooms exist and who joins them when, playing what.
//!
//! ```toml
//! [[room]]
//! name = "standup"
//! tag = true                      # pipeline tagged kurento-tap.room=standup
//!
//! [[room.participant]]
//! name = "alice"
//! video = { codec = "VP8", pattern = "ball", width = 320, height = 240, fps = 15 }
//! audio = { tone = 440.0 }
//! join_ms = 0
//! leave_ms = 60000                # optional
//! tags = true                     # endpoint tagged with room/participant/role
//! data_channels = false
//! loopback = false                # the hello-world tutorial's self-connection
//! ```

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::media::{AudioSource, VideoSource, VideoSpec};

/// A whole scenario.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    /// Rooms (one pipeline each).
    #[serde(default, rename = "room")]
    pub rooms: Vec<Room>,
    /// Tag keys (defaults are kurento-tap's).
    #[serde(default)]
    pub tag_keys: TagKeys,
}

/// The tag keys a simulated app sets when `tags = true`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TagKeys {
    /// Room name key.
    pub room: String,
    /// Participant name key.
    pub participant: String,
    /// Role key (`publisher` / `subscriber`).
    pub role: String,
}

impl Default for TagKeys {
    fn default() -> Self {
        TagKeys {
            room: "kurento-tap.room".into(),
            participant: "kurento-tap.participant".into(),
            role: "kurento-tap.role".into(),
        }
    }
}

/// A room.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Room {
    /// Name.
    pub name: String,
    /// Tag the pipeline with the room name.
    #[serde(default = "yes")]
    pub tag: bool,
    /// Participants.
    #[serde(default, rename = "participant")]
    pub participants: Vec<Participant>,
    /// Who builds the room: `kurento` (default: the group-call tutorial's graph, tagged) or
    /// `openvidu` (openvidu-server 2.x's graph: unnamed pipeline, streamId-named publishers, a
    /// PassThrough each, subscribers from it, no tags).
    #[serde(default)]
    pub host: Host,
}

/// The application whose object graph a room copies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Host {
    /// Kurento's group-call tutorial.
    #[default]
    Kurento,
    /// openvidu-server 2.x.
    Openvidu,
}

fn yes() -> bool {
    true
}

/// A participant.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Participant {
    /// Name.
    pub name: String,
    /// Video, if the participant publishes video.
    #[serde(default)]
    pub video: Option<VideoConfig>,
    /// Audio, if the participant publishes audio.
    #[serde(default)]
    pub audio: Option<AudioConfig>,
    /// Join time after start.
    #[serde(default)]
    pub join_ms: u64,
    /// Leave time after start.
    #[serde(default)]
    pub leave_ms: Option<u64>,
    /// Tag the publisher endpoint (room, participant, role).
    #[serde(default = "yes")]
    pub tags: bool,
    /// Extra tags on the publisher endpoint (e.g. `{"kurento-tap.consent" = "false"}`).
    #[serde(default)]
    pub extra_tags: std::collections::BTreeMap<String, String>,
    /// Create the publisher with `useDataChannels`.
    #[serde(default)]
    pub data_channels: bool,
    /// Connect the publisher to itself (hello-world style); the group-call app does not.
    #[serde(default)]
    pub loopback: bool,
    /// Also share a screen (OpenVidu rooms: a second, video-only stream `str_SCR_…`).
    #[serde(default)]
    pub screen: bool,
}

/// Video settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VideoConfig {
    /// `VP8` (default), `H264` or `VP9`.
    #[serde(default = "vp8")]
    pub codec: String,
    /// `videotestsrc` pattern name.
    #[serde(default)]
    pub pattern: Option<String>,
    /// A PNG/JPEG still (relative to the scenario file).
    #[serde(default)]
    pub image: Option<PathBuf>,
    /// Width (default 320).
    #[serde(default = "w320")]
    pub width: u32,
    /// Height (default 240).
    #[serde(default = "h240")]
    pub height: u32,
    /// Frame rate (default 15).
    #[serde(default = "fps15")]
    pub fps: u32,
    /// Frames between keyframes (default 300).
    #[serde(default = "kf")]
    pub keyframe_interval: u32,
    /// Send no keyframe until a PLI/FIR arrives (tests a receiver's recovery).
    #[serde(default)]
    pub withhold_keyframe: bool,
    /// Codec written in the publisher's SDP when it differs from what is sent (a fault: tests how a
    /// tap handles a codec it cannot decode).
    #[serde(default)]
    pub advertise_codec: Option<String>,
}

fn vp8() -> String {
    "VP8".into()
}
fn w320() -> u32 {
    320
}
fn h240() -> u32 {
    240
}
fn fps15() -> u32 {
    15
}
fn kf() -> u32 {
    300
}

/// Audio settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AudioConfig {
    /// Sine tone frequency.
    #[serde(default)]
    pub tone: Option<f64>,
    /// WAV file (relative to the scenario file).
    #[serde(default)]
    pub wav: Option<PathBuf>,
}

/// Errors loading a scenario.
#[derive(Debug, thiserror::Error)]
pub enum ScenarioError {
    /// Unreadable file.
    #[error("cannot read scenario {0}: {1}")]
    Io(PathBuf, std::io::Error),
    /// Not valid TOML for a scenario.
    #[error("invalid scenario: {0}")]
    Toml(#[from] toml::de::Error),
    /// Semantically wrong.
    #[error("invalid scenario: {0}")]
    Invalid(String),
}

impl Scenario {
    /// Loads and checks a scenario file; media paths are resolved against its folder.
    pub fn load(path: &Path) -> Result<Self, ScenarioError> {
        let text =
            std::fs::read_to_string(path).map_err(|e| ScenarioError::Io(path.to_owned(), e))?;
        let mut s = Self::parse(&text)?;
        let base = path.parent().unwrap_or(Path::new("."));
        for room in &mut s.rooms {
            for p in &mut room.participants {
                if let Some(v) = &mut p.video {
                    if let Some(img) = &mut v.image {
                        *img = base.join(&*img);
                    }
                }
                if let Some(a) = &mut p.audio {
                    if let Some(w) = &mut a.wav {
                        *w = base.join(&*w);
                    }
                }
            }
        }
        Ok(s)
    }

    /// Parses and checks scenario text.
    pub fn parse(text: &str) -> Result<Self, ScenarioError> {
        let s: Scenario = toml::from_str(text)?;
        for room in &s.rooms {
            let mut names = std::collections::BTreeSet::new();
            for p in &room.participants {
                if !names.insert(p.name.as_str()) {
                    return Err(ScenarioError::Invalid(format!(
                        "room {}: participant {} appears twice",
                        room.name, p.name
                    )));
                }
                if let Some(v) = &p.video {
                    if !matches!(
                        v.codec.to_ascii_uppercase().as_str(),
                        "VP8" | "H264" | "VP9"
                    ) {
                        return Err(ScenarioError::Invalid(format!(
                            "{}: unsupported video codec {}",
                            p.name, v.codec
                        )));
                    }
                    if v.width == 0
                        || v.height == 0
                        || v.fps == 0
                        || v.width > 4096
                        || v.height > 4096
                        || v.fps > 120
                    {
                        return Err(ScenarioError::Invalid(format!(
                            "{}: bad video size or rate",
                            p.name
                        )));
                    }
                }
                if p.leave_ms.is_some_and(|l| l <= p.join_ms) {
                    return Err(ScenarioError::Invalid(format!(
                        "{}: leave_ms must be after join_ms",
                        p.name
                    )));
                }
            }
        }
        Ok(s)
    }

    /// The built-in room: two participants, VP8 test patterns and tones, tagged, always present.
    pub fn builtin() -> Self {
        Self::parse(BUILTIN).expect("built-in scenario is valid")
    }
}

const BUILTIN: &str = r#"
[[room]]
name = "demo"

[[room.participant]]
name = "alice"
video = { codec = "VP8", pattern = "ball" }
audio = { tone = 440.0 }

[[room.participant]]
name = "bob"
video = { codec = "VP8", pattern = "smpte" }
audio = { tone = 660.0 }
"#;

impl Participant {
    /// The video this participant plays, if any.
    pub fn video_spec(&self) -> Option<(String, VideoSpec)> {
        let v = self.video.as_ref()?;
        let source = match (&v.image, &v.pattern) {
            (Some(img), _) => VideoSource::Image(img.clone()),
            (None, Some(p)) => VideoSource::Pattern(p.clone()),
            (None, None) => VideoSource::Pattern("ball".into()),
        };
        Some((
            v.codec.to_ascii_uppercase(),
            VideoSpec {
                source,
                width: v.width,
                height: v.height,
                fps: v.fps,
                keyframe_interval: v.keyframe_interval.max(1),
                withhold_keyframe: v.withhold_keyframe,
            },
        ))
    }

    /// The audio this participant plays, if any.
    pub fn audio_source(&self) -> Option<AudioSource> {
        let a = self.audio.as_ref()?;
        Some(match (&a.wav, a.tone) {
            (Some(w), _) => AudioSource::Wav(w.clone()),
            (None, Some(f)) => AudioSource::Tone(f),
            (None, None) => AudioSource::Tone(440.0),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_has_two_participants() {
        let s = Scenario::builtin();
        assert_eq!(s.rooms.len(), 1);
        assert_eq!(s.rooms[0].participants.len(), 2);
    }

    #[test]
    fn rejects_bad_scenarios() {
        assert!(Scenario::parse(
            "[[room]]\nname='a'\n[[room.participant]]\nname='x'\n[[room.participant]]\nname='x'\n"
        )
        .is_err());
        assert!(Scenario::parse(
            "[[room]]\nname='a'\n[[room.participant]]\nname='x'\nvideo={codec='AV1'}\n"
        )
        .is_err());
        assert!(Scenario::parse("[[room]]\nname='a'\nbogus=1\n").is_err());
        assert!(Scenario::parse(
            "[[room]]\nname='a'\n[[room.participant]]\nname='x'\njoin_ms=5\nleave_ms=5\n"
        )
        .is_err());
    }
}
