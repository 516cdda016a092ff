//! Recognising OpenVidu's graph in KMS: hosts, stream ids, publishers, subscribers, and the
//! PassThrough a publisher feeds.

use std::collections::HashMap;

/// The application the daemon sits beside.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Host {
    /// Any Kurento application: publishers by tags or by their browser's `sendonly` offer, tapped
    /// at their WebRtcEndpoint (the default).
    #[default]
    Kurento,
    /// OpenVidu 2.x: publishers by their streamId names, tapped at their PassThrough.
    OpenVidu,
}

impl std::str::FromStr for Host {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "kurento" => Ok(Host::Kurento),
            "openvidu" => Ok(Host::OpenVidu),
            _ => Err(format!("host {s:?}: expected kurento or openvidu")),
        }
    }
}

/// What a publisher sends, from the `<TYP>` of its streamId (the first three letters of
/// OpenVidu's `typeOfVideo`, or `MIC` for `MICRO`, audio only).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamKind {
    /// `CAM`: a camera (with or without audio).
    Camera,
    /// `SCR`: a screen share (not a face to analyse by default).
    Screen,
    /// `MIC`: audio only.
    Audio,
    /// `CUS`: a custom MediaStream (analysed like a camera).
    Custom,
    /// `IPC`: an IP camera (a PlayerEndpoint in OpenVidu; never a WebRtcEndpoint).
    IpCam,
}

impl StreamKind {
    fn from_code(code: &str) -> Option<Self> {
        Some(match code {
            "CAM" => StreamKind::Camera,
            "SCR" => StreamKind::Screen,
            "MIC" => StreamKind::Audio,
            "CUS" => StreamKind::Custom,
            "IPC" => StreamKind::IpCam,
            _ => return None,
        })
    }

    /// Its name in logs, metrics and the status.
    pub fn as_str(self) -> &'static str {
        match self {
            StreamKind::Camera => "camera",
            StreamKind::Screen => "screen",
            StreamKind::Audio => "audio",
            StreamKind::Custom => "custom",
            StreamKind::IpCam => "ipcam",
        }
    }
}

/// A parsed OpenVidu streamId.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamId {
    /// The whole id (the publisher endpoint's name).
    pub id: String,
    /// What it sends.
    pub kind: StreamKind,
    /// The publishing connection (`con_…`, or `ipc_…` for IP cameras): the participant.
    pub connection: String,
}

/// Longest name looked at (OpenVidu's are under 100 characters; a custom connection id is bounded
/// by the application).
pub const MAX_NAME_LEN: usize = 256;

/// What an endpoint's name says it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Named {
    /// A publisher's WebRtcEndpoint.
    Publisher(StreamId),
    /// A subscriber's WebRtcEndpoint (never tapped): who receives which stream.
    Subscriber {
        /// The receiving connection.
        connection: String,
        /// The stream received.
        stream: StreamId,
    },
    /// Still named with its id (OpenVidu names it right after `ObjectCreated`): look again later.
    NotNamedYet,
    /// A name OpenVidu does not make (another application's endpoint, or a malformed name).
    Unrecognised(&'static str),
}

/// A connection id as OpenVidu makes them: `con_` + one letter + 9 alphanumerics, or
/// `con_<custom>` with the custom part reduced to `[A-Za-z0-9_]` (`SessionManager`), or an IP
/// camera's `ipc_…`.
pub fn valid_connection_id(s: &str) -> bool {
    let rest = s.strip_prefix("con_").or_else(|| s.strip_prefix("ipc_"));
    match rest {
        Some(r) => {
            !r.is_empty()
                && s.len() <= MAX_NAME_LEN
                && r.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
        }
        None => false,
    }
}

/// Parses `str_<TYP>_<4 alphanumerics>_<connectionId>` (`KurentoParticipant.generateStreamId`).
pub fn parse_stream_id(s: &str) -> Option<StreamId> {
    if s.len() > MAX_NAME_LEN {
        return None;
    }
    let rest = s.strip_prefix("str_")?;
    let (code, rest) = rest.split_once('_')?;
    let kind = StreamKind::from_code(code)?;
    let (random, connection) = rest.split_once('_')?;
    if random.len() != 4 || !random.bytes().all(|b| b.is_ascii_alphanumeric()) {
        return None;
    }
    valid_connection_id(connection).then(|| StreamId {
        id: s.to_owned(),
        kind,
        connection: connection.to_owned(),
    })
}

/// What an endpoint is, from its id and its name as KMS reports them.
pub fn classify(id: &str, name: &str) -> Named {
    // KMS's default name is the object's id (`MediaObjectImpl::getName`).
    if name.is_empty() || name == id {
        return Named::NotNamedYet;
    }
    if name.len() > MAX_NAME_LEN {
        return Named::Unrecognised("name too long");
    }
    if name.starts_with("str_") {
        return match parse_stream_id(name) {
            Some(s) => Named::Publisher(s),
            None => Named::Unrecognised("malformed streamId"),
        };
    }
    // `<subscriberConnectionId>_<streamId>`: the first split where both halves are valid (custom
    // connection ids may themselves hold `_str_`).
    let mut from = 0;
    while let Some(at) = name[from..].find("_str_") {
        let split = from + at;
        let (conn, stream) = (&name[..split], &name[split + 1..]);
        if valid_connection_id(conn) {
            if let Some(stream) = parse_stream_id(stream) {
                return Named::Subscriber {
                    connection: conn.to_owned(),
                    stream,
                };
            }
        }
        from = split + 1;
    }
    Named::Unrecognised("not an OpenVidu endpoint name")
}

/// The class of a Kurento object from its id (`…/<uuid>_kurento.PassThrough` → `PassThrough`).
pub fn class_of(id: &str) -> &str {
    let last = id.rsplit('/').next().unwrap_or(id);
    let type_part = last.rsplit_once('_').map(|(_, t)| t).unwrap_or("");
    type_part.rsplit('.').next().unwrap_or("")
}

/// Elements that may sit between a publisher and its PassThrough: OpenVidu's filters
/// (`GenericMediaElement` of any module: `FaceOverlayFilter`, `GStreamerFilter`, `ZBarFilter`…).
/// Endpoints, hubs, pipelines and PassThroughs are not.
fn is_intermediate(id: &str) -> bool {
    let class = class_of(id);
    !class.is_empty()
        && class != "PassThrough"
        && !class.ends_with("Endpoint")
        && !class.contains("Hub")
        && class != "MediaPipeline"
}

/// How many filters deep the PassThrough is looked for (OpenVidu applies one at a time).
pub const MAX_FILTER_DEPTH: usize = 4;

/// Where a publisher's PassThrough search stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PassThroughSearch {
    /// The PassThrough, and the filters between the publisher and it, publisher side first.
    Found {
        /// The PassThrough's id: the tap source.
        passthrough: String,
        /// Filters in between.
        filters: Vec<String>,
    },
    /// The sink connections of this element are needed to go on.
    Need(String),
    /// The publisher does not feed a PassThrough (muted by the server, being reconnected, not yet
    /// published): look again later.
    NotConnected,
}

/// Follows a publisher's sink connections (`sinks`: element id → the ids it feeds, as read so
/// far) to its PassThrough, through at most [`MAX_FILTER_DEPTH`] filters.
pub fn find_passthrough(
    publisher: &str,
    sinks: &HashMap<String, Vec<String>>,
) -> PassThroughSearch {
    let mut at = publisher.to_owned();
    let mut filters = Vec::new();
    loop {
        let Some(out) = sinks.get(&at) else {
            return PassThroughSearch::Need(at);
        };
        if let Some(pt) = out.iter().find(|s| class_of(s) == "PassThrough") {
            return PassThroughSearch::Found {
                passthrough: pt.clone(),
                filters,
            };
        }
        let next = out
            .iter()
            .find(|s| is_intermediate(s) && *s != publisher && !filters.contains(*s));
        match next {
            Some(n) if filters.len() < MAX_FILTER_DEPTH => {
                filters.push(n.clone());
                at = n.clone();
            }
            _ => return PassThroughSearch::NotConnected,
        }
    }
}
