//! Finding rooms and participants in a KMS the application owns, without changing the application.
//!
//! One room = one MediaPipeline. A participant = its publisher WebRtcEndpoint: by tags when the app
//! sets them (`kurento-tap.role=publisher`), otherwise because the browser's offer (the endpoint's
//! remote SDP) says `sendonly` — the Java group-call app has no self-loop to go by. Names come from
//! tags, or are short ids derived from the Kurento ids (which contain `.` and `/`, unusable in NATS
//! subject tokens).

pub mod openvidu;

use kurento_client::prelude::*;
use kurento_client::{Error as KmsError, ErrorCode};
use serde::Serialize;

use crate::media::sdp_offer::{publisher_media, PublisherMedia};

/// Tag keys (configurable).
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct TagKeys {
    /// Room name on the pipeline (or the endpoint).
    pub room: String,
    /// Participant name on the publisher endpoint.
    pub participant: String,
    /// `publisher` / `subscriber` on endpoints.
    pub role: String,
    /// On a publisher: `false` = never tap it; `true` = consent given (needed with `consent =
    /// "opt-in"`).
    pub consent: String,
    /// On objects kurento-tap created: its owner id.
    pub owner: String,
    /// On a tap: the endpoint it taps.
    pub tapped_endpoint: String,
}

impl Default for TagKeys {
    fn default() -> Self {
        TagKeys {
            room: tap_protocol::tags::ROOM.into(),
            participant: tap_protocol::tags::PARTICIPANT.into(),
            role: tap_protocol::tags::ROLE.into(),
            consent: tap_protocol::tags::CONSENT.into(),
            owner: tap_protocol::tags::OWNER.into(),
            tapped_endpoint: tap_protocol::tags::TAPPED_ENDPOINT.into(),
        }
    }
}

/// A participant found in a room.
#[derive(Debug, Clone, PartialEq)]
pub struct Participant {
    /// Room name (tag or derived).
    pub room: String,
    /// The room's pipeline id.
    pub pipeline: String,
    /// Participant name (tag or derived).
    pub name: String,
    /// The publisher endpoint id.
    pub endpoint: String,
    /// What it sends.
    pub media: PublisherMedia,
    /// False when tagged `consent=false`.
    pub consent: bool,
    /// What the consent tag says: `Some(true)` for `true`, `Some(false)` for `false`, `None`
    /// without a tag or with another value ([`crate::privacy::consent::tag_value`]).
    pub consent_tag: Option<bool>,
    /// True when media flows out of the publisher (its browser is sending).
    pub live: bool,
    /// Tagged `role=presenter`: excluded from the room mood, and receives it.
    pub presenter: bool,
    /// Under `--host openvidu`: the publisher's WebRtcEndpoint (its SDP gives the codec), while
    /// `endpoint` is the PassThrough the tap hangs from. `None`: `endpoint` is the publisher.
    pub publisher: Option<String>,
    /// Under `--host openvidu`: the streamId and what it sends.
    pub stream: Option<crate::discovery::openvidu::StreamId>,
    /// A display name (OpenVidu's `clientData`), when the host has one.
    pub display: Option<String>,
}

impl Participant {
    /// The publisher's WebRtcEndpoint (the SDP, the transcoding events).
    pub fn publisher_endpoint(&self) -> &str {
        self.publisher.as_deref().unwrap_or(&self.endpoint)
    }
}

/// What an endpoint turned out to be (short-lived: the size of the publisher variant does not
/// matter).
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq)]
pub enum Examined {
    /// A participant's publisher.
    Publisher(Participant),
    /// Something else (a viewer endpoint, our own, another element).
    Other,
    /// Cannot tell yet (not negotiated): look again later.
    NotYet(String),
    /// Released meanwhile.
    Gone,
}

/// A short, stable, subject-safe id from a Kurento id: the first 8 hex digits of its UUID.
pub fn short_id(prefix: &str, kurento_id: &str) -> String {
    let last = kurento_id.rsplit('/').next().unwrap_or(kurento_id);
    let hex: String = last
        .chars()
        .filter(|c| c.is_ascii_hexdigit())
        .take(8)
        .collect();
    format!(
        "{prefix}-{}",
        if hex.is_empty() {
            "x".to_owned()
        } else {
            hex.to_ascii_lowercase()
        }
    )
}

fn tag<'a>(tags: &'a [Tag], key: &str) -> Option<&'a str> {
    tags.iter().find(|t| t.key == key).map(|t| t.value.as_str())
}

/// The room name of a pipeline.
pub async fn room_name(pipeline: &MediaPipeline, keys: &TagKeys) -> Result<String, KmsError> {
    let tags = pipeline.get_tags().await?;
    Ok(tag(&tags, &keys.room)
        .map(str::to_owned)
        .unwrap_or_else(|| short_id("room", pipeline.id())))
}

/// Examines one endpoint of a room.
pub async fn examine(
    room: &str,
    pipeline: &MediaPipeline,
    ep: &WebRtcEndpoint,
    keys: &TagKeys,
) -> Result<Examined, KmsError> {
    let tags = match ep.get_tags().await {
        Ok(t) => t,
        Err(e) if e.is_object_not_found() => return Ok(Examined::Gone),
        Err(e) => return Err(e),
    };
    if tag(&tags, &keys.owner).is_some() {
        return Ok(Examined::Other);
    }
    let role = tag(&tags, &keys.role);
    if role == Some("subscriber") {
        return Ok(Examined::Other);
    }
    let media = match negotiated_media(ep).await? {
        Ok(m) => m,
        Err(not_yet) => return Ok(not_yet),
    };
    let is_publisher = matches!(
        role,
        Some(tap_protocol::tags::ROLE_PUBLISHER | tap_protocol::tags::ROLE_PRESENTER)
    ) || media.sendonly;
    if !is_publisher {
        return Ok(Examined::Other);
    }
    if media.video.is_none() && !media.audio {
        return Ok(Examined::NotYet("no audio or video negotiated".into()));
    }
    let live = {
        let video = if media.video.is_some() {
            ep.is_media_flowing_out(MediaType::Video, ())
                .await
                .unwrap_or(false)
        } else {
            false
        };
        video
            || (media.audio
                && ep
                    .is_media_flowing_out(MediaType::Audio, ())
                    .await
                    .unwrap_or(false))
    };
    Ok(Examined::Publisher(Participant {
        room: tag(&tags, &keys.room)
            .map(str::to_owned)
            .unwrap_or_else(|| room.to_owned()),
        pipeline: pipeline.id().to_owned(),
        name: tag(&tags, &keys.participant)
            .map(str::to_owned)
            .unwrap_or_else(|| short_id("p", ep.id())),
        endpoint: ep.id().to_owned(),
        consent: tag(&tags, &keys.consent) != Some("false"),
        consent_tag: crate::privacy::consent::tag_value(tag(&tags, &keys.consent)),
        presenter: role == Some(tap_protocol::tags::ROLE_PRESENTER),
        media,
        live,
        publisher: None,
        stream: None,
        display: None,
    }))
}

/// How long a new OpenVidu publisher waits for the REST API to list it (to be named by its
/// session and `clientData`) before it is tapped under its connection id anyway.
pub const OPENVIDU_NAME_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// What a publisher endpoint negotiated, read from its SDP (local = KMS's answer to the browser):
/// `Err` with what discovery concludes when it is not negotiated yet, gone, or not media at all.
/// An unsupported codec is still a publisher; the tap will report it.
async fn negotiated_media(
    ep: &WebRtcEndpoint,
) -> Result<Result<PublisherMedia, Examined>, KmsError> {
    let local = match ep.get_local_session_descriptor().await {
        Ok(s) => s,
        Err(e) if e.code() == Some(ErrorCode::SdpEndPointNoLocalSdpError) => {
            return Ok(Err(Examined::NotYet("not negotiated yet".into())))
        }
        Err(e) if e.is_object_not_found() => return Ok(Err(Examined::Gone)),
        Err(e) => return Err(e),
    };
    let remote = match ep.get_remote_session_descriptor().await {
        Ok(s) => Some(s),
        Err(e) if e.code() == Some(ErrorCode::SdpEndPointNoRemoteSdpError) => None,
        Err(e) if e.is_object_not_found() => return Ok(Err(Examined::Gone)),
        Err(e) => return Err(e),
    };
    Ok(match publisher_media(&local, remote.as_deref()) {
        Ok(m) => Ok(m),
        Err(crate::media::sdp_offer::SdpError::UnsupportedCodec(c)) => Ok(PublisherMedia {
            video: Some(crate::media::receiver::VideoCodec {
                encoding: c,
                fmtp: None,
            }),
            audio: false,
            sendonly: true,
            data_channels: false,
        }),
        Err(_) => Err(Examined::Other),
    })
}

/// Examines one WebRtcEndpoint of an OpenVidu session (`--host openvidu`, [`crate::discovery::openvidu`]):
/// publishers by their streamId name, tapped at their PassThrough (found through their sink
/// connections, behind any filter); subscribers and other endpoints are not publishers. `young`:
/// the endpoint was created moments ago, so a publisher OpenVidu does not list yet is looked at
/// again rather than tapped unnamed.
pub async fn examine_openvidu(
    room: &str,
    pipeline: &MediaPipeline,
    ep: &WebRtcEndpoint,
    keys: &TagKeys,
    ov: Option<&crate::discovery::openvidu::client::OpenVidu>,
    metrics: &crate::metrics::Metrics,
    young: bool,
) -> Result<Examined, KmsError> {
    use crate::discovery::openvidu::{classify, find_passthrough, Named, PassThroughSearch};
    let tags = match ep.get_tags().await {
        Ok(t) => t,
        Err(e) if e.is_object_not_found() => return Ok(Examined::Gone),
        Err(e) => return Err(e),
    };
    if tag(&tags, &keys.owner).is_some() {
        return Ok(Examined::Other);
    }
    let name = match ep.get_name().await {
        Ok(n) => n,
        Err(e) if e.is_object_not_found() => return Ok(Examined::Gone),
        Err(e) => return Err(e),
    };
    let stream = match classify(ep.id(), &name) {
        Named::Publisher(s) => {
            metrics.openvidu_endpoint("publisher");
            s
        }
        Named::Subscriber { .. } => {
            metrics.openvidu_endpoint("subscriber");
            return Ok(Examined::Other);
        }
        Named::NotNamedYet => {
            metrics.openvidu_endpoint("not_named_yet");
            return Ok(Examined::NotYet("not named by OpenVidu yet".into()));
        }
        Named::Unrecognised(why) => {
            metrics.openvidu_endpoint("unrecognised");
            tracing::debug!(endpoint = ep.id(), name = %name.escape_debug().to_string().chars().take(80).collect::<String>(), why, "not an OpenVidu endpoint name; not tapped");
            return Ok(Examined::Other);
        }
    };
    // The PassThrough: the publisher's sinks, through filters (PublisherEndpoint.innerConnect).
    let mut sinks = std::collections::HashMap::new();
    let passthrough = loop {
        match find_passthrough(ep.id(), &sinks) {
            PassThroughSearch::Found { passthrough, .. } => break passthrough,
            PassThroughSearch::NotConnected => {
                return Ok(Examined::NotYet(
                    "not connected to its PassThrough (muted, reconnecting or not published)"
                        .into(),
                ))
            }
            PassThroughSearch::Need(id) => {
                let element: MediaElement = match ep.object_ref().client().object(&id) {
                    Ok(e) => e,
                    Err(_) => return Ok(Examined::Other),
                };
                let conns = match element.get_sink_connections(()).await {
                    Ok(c) => c,
                    Err(e) if e.is_object_not_found() => return Ok(Examined::Gone),
                    Err(e) => return Err(e),
                };
                let mut out: Vec<String> = conns.into_iter().map(|c| c.sink).collect();
                out.sort();
                out.dedup();
                sinks.insert(id, out);
            }
        }
    };
    let mut media = match negotiated_media(ep).await? {
        Ok(m) => m,
        Err(not_yet) => return Ok(not_yet),
    };
    // OpenVidu never negotiates DataChannels (MediaEndpoint: useDataChannels commented out).
    media.data_channels = false;
    if media.video.is_none() && !media.audio {
        return Ok(Examined::NotYet("no audio or video negotiated".into()));
    }
    // Named by OpenVidu when it lists the stream; a young publisher waits for it a moment.
    let info = ov.and_then(|o| o.stream(&stream.id));
    if info.is_none() {
        if let Some(o) = ov.filter(|o| o.rest_configured()) {
            o.ask_refresh();
            // Not yet asked counts as "may come": a daemon started on a live session sees its
            // publishers before the first sessions refresh has answered.
            if young && o.names_may_come() {
                return Ok(Examined::NotYet("not listed by OpenVidu yet".into()));
            }
        }
    }
    let live = {
        let video = media.video.is_some()
            && ep
                .is_media_flowing_out(MediaType::Video, ())
                .await
                .unwrap_or(false);
        video
            || (media.audio
                && ep
                    .is_media_flowing_out(MediaType::Audio, ())
                    .await
                    .unwrap_or(false))
    };
    Ok(Examined::Publisher(Participant {
        room: info
            .as_ref()
            .map(|i| i.session.clone())
            .unwrap_or_else(|| room.to_owned()),
        pipeline: pipeline.id().to_owned(),
        name: stream.connection.clone(),
        endpoint: passthrough,
        publisher: Some(ep.id().to_owned()),
        display: info.and_then(|i| i.display),
        stream: Some(stream),
        consent: tag(&tags, &keys.consent) != Some("false"),
        consent_tag: crate::privacy::consent::tag_value(tag(&tags, &keys.consent)),
        presenter: false,
        media,
        live,
    }))
}

/// A simple pattern: `*` matches any run of characters; everything else literally.
pub fn matches(pattern: &str, text: &str) -> bool {
    let parts: Vec<&str> = pattern.split('*').collect();
    if parts.len() == 1 {
        return pattern == text;
    }
    let mut rest = text;
    for (i, part) in parts.iter().enumerate() {
        if i == 0 {
            let Some(r) = rest.strip_prefix(part) else {
                return false;
            };
            rest = r;
        } else if i == parts.len() - 1 {
            return rest.ends_with(part);
        } else {
            match rest.find(part) {
                Some(at) => rest = &rest[at + part.len()..],
                None => return false,
            }
        }
    }
    true
}

/// One room in the `rooms` listing.
#[derive(Debug, Clone, Serialize)]
pub struct RoomReport {
    /// Room name.
    pub room: String,
    /// Pipeline id.
    pub pipeline: String,
    /// Its participants.
    pub participants: Vec<ParticipantReport>,
}

/// One participant in the `rooms` listing.
#[derive(Debug, Clone, Serialize)]
pub struct ParticipantReport {
    /// Name.
    pub name: String,
    /// Publisher endpoint id.
    pub endpoint: String,
    /// `audio`, `video:VP8`…, and `datachannel` when results can go into the call.
    pub media: Vec<String>,
    /// A tap of ours exists for it.
    pub tapped: bool,
    /// False when opted out.
    pub consent: bool,
    /// Media flows from the browser.
    pub live: bool,
}

/// Lists rooms, participants and tap state as KMS shows them right now.
pub async fn list_rooms(kms: &KurentoClient, keys: &TagKeys) -> Result<Vec<RoomReport>, KmsError> {
    let mut out = Vec::new();
    for pipeline in kms.server_manager().get_pipelines().await? {
        let Ok(room) = room_name(&pipeline, keys).await else {
            continue;
        };
        let Ok(children) = pipeline.get_children().await else {
            continue;
        };
        let mut tapped = std::collections::BTreeSet::new();
        let mut participants = Vec::new();
        for child in &children {
            if let Some(rtp) = child.downcast::<RtpEndpoint>() {
                if let Ok(tags) = rtp.get_tags().await {
                    if tag(&tags, &keys.owner).is_some() {
                        if let Some(ep) = tag(&tags, &keys.tapped_endpoint) {
                            tapped.insert(ep.to_owned());
                        }
                    }
                }
            }
        }
        for child in &children {
            let Some(ep) = child.downcast::<WebRtcEndpoint>() else {
                continue;
            };
            if let Ok(Examined::Publisher(p)) = examine(&room, &pipeline, &ep, keys).await {
                let mut media = Vec::new();
                if p.media.audio {
                    media.push("audio".to_owned());
                }
                if let Some(v) = &p.media.video {
                    media.push(format!("video:{}", v.encoding));
                }
                if p.media.data_channels {
                    media.push("datachannel".to_owned());
                }
                participants.push(ParticipantReport {
                    tapped: tapped.contains(&p.endpoint),
                    name: p.name,
                    endpoint: p.endpoint,
                    media,
                    consent: p.consent,
                    live: p.live,
                });
            }
        }
        participants.sort_by(|a, b| a.name.cmp(&b.name));
        out.push(RoomReport {
            room,
            pipeline: pipeline.id().to_owned(),
            participants,
        });
    }
    out.sort_by(|a, b| a.room.cmp(&b.room));
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_ids_are_subject_safe() {
        let id = "5f87a1b2-0000-4000-8000-000000000000_kurento.MediaPipeline/121dabcd-1111_kurento.WebRtcEndpoint";
        assert_eq!(short_id("p", id), "p-121dabcd");
        assert_eq!(
            short_id("room", "5f87a1b2-0000_kurento.MediaPipeline"),
            "room-5f87a1b2"
        );
        assert_eq!(
            tap_protocol::safe_token(&short_id("p", id)),
            short_id("p", id)
        );
    }

    #[test]
    fn patterns() {
        assert!(matches("*", "anything"));
        assert!(matches("demo", "demo") && !matches("demo", "demo2"));
        assert!(matches("team-*", "team-a") && !matches("team-*", "xteam-a"));
        assert!(
            matches("*-test", "a-test") && matches("a*c*e", "abcde") && !matches("a*c*e", "abde")
        );
    }
}
