//! What the watcher is asked and what it answers: control requests, tap status.

use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;

/// A tap's state, as reported by [`Daemon::status`].
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct TapStatus {
    /// The KMS the room lives on (its configured name).
    pub kms: String,
    /// Room.
    pub room: String,
    /// Participant.
    pub participant: String,
    /// Publisher endpoint id.
    pub endpoint: String,
    /// Our RtpEndpoint id.
    pub tap: String,
    /// Tapped media.
    pub media: Vec<String>,
    /// Video frames decoded so far.
    pub video_frames: u64,
    /// Audio buffers decoded so far.
    pub audio_buffers: u64,
    /// A display name from the host (OpenVidu's `clientData`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub display: Option<String>,
    /// Under `--host openvidu`: the publisher's WebRtcEndpoint (`endpoint` is its PassThrough).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub publisher: Option<String>,
}

/// An explicit attach/detach request (`tap.v1.ctl.attach` / `.detach`).
#[derive(Debug, Clone, Deserialize)]
pub struct ControlRequest {
    /// The room's pipeline id.
    pub pipeline: String,
    /// The publisher endpoint id.
    pub endpoint: String,
    /// Room name to use.
    #[serde(default)]
    pub room: Option<String>,
    /// Participant name to use.
    #[serde(default)]
    pub participant: Option<String>,
    /// The KMS the pipeline is on (its configured name); needed only to skip asking every KMS.
    #[serde(default)]
    pub kms: Option<String>,
}

impl ControlRequest {
    /// Reads and checks a request body: JSON, non-empty ids, names of at most
    /// [`MAX_CONTROL_NAME`](tap_protocol::affect::MAX_CONTROL_NAME) bytes.
    pub fn parse(payload: &[u8]) -> Result<ControlRequest, String> {
        let req: ControlRequest =
            serde_json::from_slice(payload).map_err(|e| format!("bad request: {e}"))?;
        if req.pipeline.is_empty() || req.endpoint.is_empty() {
            return Err("bad request: empty pipeline or endpoint".into());
        }
        let max = tap_protocol::affect::MAX_CONTROL_NAME;
        let too_long = [Some(&req.pipeline), Some(&req.endpoint)]
            .into_iter()
            .chain([
                req.room.as_ref(),
                req.participant.as_ref(),
                req.kms.as_ref(),
            ])
            .flatten()
            .any(|s| s.len() > max);
        if too_long {
            return Err(format!("bad request: a field is longer than {max} bytes"));
        }
        Ok(req)
    }
}

/// Why a watcher did not serve a control request.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum ControlRefusal {
    /// The pipeline is not on this watcher's KMS (another watcher may have it).
    NotHere,
    /// In cluster mode, another daemon holds the room (its holder answers).
    NotHolder,
    /// Served, and failed.
    Failed(String),
}

pub(crate) type ControlAnswer = Result<String, ControlRefusal>;

/// A watcher's answer to a consent request it served: whether the participant is analysed now.
pub(crate) type ConsentAnswer = Result<bool, ControlRefusal>;

pub(crate) enum Command {
    Attach(ControlRequest, oneshot::Sender<ControlAnswer>),
    /// Grant or withdraw a participant's consent (`tap.v1.ctl.consent`).
    Consent(
        crate::privacy::consent::ConsentRequest,
        oneshot::Sender<ConsentAnswer>,
    ),
    Detach(ControlRequest, oneshot::Sender<ControlAnswer>),
    Status(oneshot::Sender<Vec<TapStatus>>),
    Shutdown(oneshot::Sender<()>),
}
