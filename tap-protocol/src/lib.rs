//! The NATS wire contract between the kurento-tap daemon and model workers, version 1.
//! `docs/protocol.md` is the normative text; this crate is its Rust form, shared by the daemon and
//! the classifier SDK so both sides agree by construction.
//!
//! - Models register a [`ModelSpec`] in the JetStream KV bucket [`REGISTRY_BUCKET`] under
//!   [`ModelId::key`], and refresh it every `heartbeat_ms`.
//! - The daemon sends each chunk as a NATS request on [`chunk_subject`]: raw payload (pixels or
//!   samples), metadata in headers ([`ChunkMeta`]). Workers answer in a queue group with a JSON
//!   [`WorkerReply`], or an empty body and the [`header::ERROR`] header.
//! - The daemon publishes every result as a [`ResultMessage`] on [`result_subject`].

use std::fmt;

use serde::{Deserialize, Serialize};

pub mod affect;
pub mod lease;
pub mod load;
#[cfg(feature = "nats")]
pub mod nats;
pub mod tags;

/// Protocol version carried in subjects (`tap.v1.…`) and in the [`header::VERSION`] header.
pub const VERSION: u32 = 1;

/// JetStream KV bucket holding the model registry.
pub const REGISTRY_BUCKET: &str = "tap_models_v1";

/// JetStream stream keeping results (history and latest per subject).
pub const RESULTS_STREAM: &str = "TAP_RESULTS_V1";

/// Subjects of every result (`tap.v1.result.<room>.<participant>.<model>`).
pub const RESULT_SUBJECTS: &str = "tap.v1.result.>";

/// Request/reply subject to attach a tap explicitly.
pub const CTL_ATTACH: &str = "tap.v1.ctl.attach";
/// Request/reply subject to detach a tap explicitly.
pub const CTL_DETACH: &str = "tap.v1.ctl.detach";
/// Request/reply subject erasing a participant's stored results and fused states (the right to
/// erasure): `{"room": "…", "participant": "…"}`.
pub const CTL_ERASE: &str = "tap.v1.ctl.erase";

/// Header names (NATS headers; values are ASCII).
pub mod header {
    /// Protocol version, `1`.
    pub const VERSION: &str = "Tap-Version";
    /// Room (safe token).
    pub const ROOM: &str = "Tap-Room";
    /// Participant (safe token).
    pub const PARTICIPANT: &str = "Tap-Participant";
    /// Kurento endpoint id of the participant's publisher (may contain `/` and `.`).
    pub const ENDPOINT: &str = "Tap-Endpoint";
    /// `video` or `audio`.
    pub const MEDIA: &str = "Tap-Media";
    /// Model the chunk was cut for, `name@version`.
    pub const MODEL: &str = "Tap-Model";
    /// Per (participant, model) sequence number, from 0.
    pub const SEQ: &str = "Tap-Seq";
    /// Capture time of the chunk's first sample, Unix microseconds.
    pub const CAPTURE_US: &str = "Tap-Capture-Us";
    /// When the daemon sent the chunk, Unix microseconds.
    pub const SENT_US: &str = "Tap-Sent-Us";
    /// After this instant (Unix microseconds) the result is useless: drop the chunk.
    pub const DEADLINE_US: &str = "Tap-Deadline-Us";
    /// Pixel or sample format (`RGB24`, `GRAY8`, `I420`, `F32LE`, `S16LE`).
    pub const FORMAT: &str = "Tap-Format";
    /// Frame width (video).
    pub const WIDTH: &str = "Tap-Width";
    /// Frame height (video).
    pub const HEIGHT: &str = "Tap-Height";
    /// Sample rate (audio).
    pub const RATE: &str = "Tap-Rate";
    /// Channels (audio, interleaved).
    pub const CHANNELS: &str = "Tap-Channels";
    /// Worker's error (`stale`, `malformed`, `internal`) on an error reply.
    pub const ERROR: &str = "Tap-Error";
}

/// The chunk subject of a model.
pub fn chunk_subject(model: &ModelId) -> String {
    format!(
        "tap.v1.chunk.{}.{}",
        safe_token(&model.name),
        safe_token(&model.version)
    )
}

/// The queue group workers of a model join.
pub fn queue_group(model: &ModelId) -> String {
    format!(
        "tap-workers.{}.{}",
        safe_token(&model.name),
        safe_token(&model.version)
    )
}

/// The result subject of (room, participant, model).
pub fn result_subject(room: &str, participant: &str, model: &ModelId) -> String {
    format!(
        "tap.v1.result.{}.{}.{}",
        safe_token(room),
        safe_token(participant),
        safe_token(&model.to_string())
    )
}

/// Makes a string safe as one NATS subject token: ASCII letters, digits, `-` and `_` are kept, every
/// other character becomes `_` (Kurento ids contain `.` and `/`, which subjects cannot carry in a
/// token); empty becomes `_`; at most 64 characters.
pub fn safe_token(s: &str) -> String {
    token_of_at_most(s, 64)
}

/// `s` with every character but ASCII letters, digits, `-` and `_` made `_`, cut at `max`
/// characters; empty becomes `_`.
pub(crate) fn token_of_at_most(s: &str, max: usize) -> String {
    let t: String = s
        .chars()
        .take(max)
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    if t.is_empty() {
        "_".into()
    } else {
        t
    }
}

/// A model's identity.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ModelId {
    /// Name, e.g. `fer`.
    pub name: String,
    /// Version, e.g. `1`. Versions of one name run side by side.
    pub version: String,
}

impl ModelId {
    /// A model id.
    pub fn new(name: impl Into<String>, version: impl Into<String>) -> Self {
        ModelId {
            name: name.into(),
            version: version.into(),
        }
    }

    /// The registry key: `name.version` in safe tokens.
    pub fn key(&self) -> String {
        format!("{}.{}", safe_token(&self.name), safe_token(&self.version))
    }
}

impl fmt::Display for ModelId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}", self.name, self.version)
    }
}

/// Audio or video.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MediaKind {
    /// Video frames.
    Video,
    /// Audio windows.
    Audio,
}

impl MediaKind {
    /// `video` / `audio`.
    pub fn as_str(self) -> &'static str {
        match self {
            MediaKind::Video => "video",
            MediaKind::Audio => "audio",
        }
    }
}

/// Pixel formats a model can ask for; tightly packed rows (stride = width × bytes per pixel).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum PixelFormat {
    /// 8-bit R, G, B interleaved.
    #[serde(rename = "RGB24")]
    Rgb24,
    /// 8-bit luma.
    #[serde(rename = "GRAY8")]
    Gray8,
    /// Planar Y, then U and V at half resolution (width and height must be even).
    #[serde(rename = "I420")]
    I420,
}

impl PixelFormat {
    /// Bytes of one frame.
    pub fn frame_size(self, width: u32, height: u32) -> usize {
        let (w, h) = (width as usize, height as usize);
        match self {
            PixelFormat::Rgb24 => w * h * 3,
            PixelFormat::Gray8 => w * h,
            PixelFormat::I420 => w * h + 2 * (w.div_ceil(2) * h.div_ceil(2)),
        }
    }

    /// Header value.
    pub fn as_str(self) -> &'static str {
        match self {
            PixelFormat::Rgb24 => "RGB24",
            PixelFormat::Gray8 => "GRAY8",
            PixelFormat::I420 => "I420",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "RGB24" => PixelFormat::Rgb24,
            "GRAY8" => PixelFormat::Gray8,
            "I420" => PixelFormat::I420,
            _ => return None,
        })
    }
}

/// Sample formats; interleaved channels, little endian.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum SampleFormat {
    /// 32-bit float in [-1, 1].
    #[serde(rename = "F32LE")]
    F32,
    /// 16-bit signed.
    #[serde(rename = "S16LE")]
    S16,
}

impl SampleFormat {
    /// Bytes per sample.
    pub fn bytes(self) -> usize {
        match self {
            SampleFormat::F32 => 4,
            SampleFormat::S16 => 2,
        }
    }

    /// Header value.
    pub fn as_str(self) -> &'static str {
        match self {
            SampleFormat::F32 => "F32LE",
            SampleFormat::S16 => "S16LE",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "F32LE" => SampleFormat::F32,
            "S16LE" => SampleFormat::S16,
            _ => return None,
        })
    }
}

/// What a video model wants.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct VideoChunkSpec {
    /// Frames per second to deliver (at most the stream's rate); ignored when `every_nth` is set.
    #[serde(default)]
    pub fps: Option<f64>,
    /// Deliver every Nth decoded frame instead.
    #[serde(default)]
    pub every_nth: Option<u32>,
    /// Output width (the frame is scaled, aspect not preserved: models letterbox themselves).
    pub width: u32,
    /// Output height.
    pub height: u32,
    /// Pixel format.
    pub format: PixelFormat,
}

/// What an audio model wants.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct AudioChunkSpec {
    /// Window length.
    pub window_ms: u32,
    /// Distance between window starts (≤ window for overlap; > window skips audio).
    pub hop_ms: u32,
    /// Sample rate: one of 8000, 12000, 16000, 24000, 48000.
    pub sample_rate: u32,
    /// Channels (1 or 2).
    pub channels: u16,
    /// Sample format.
    pub format: SampleFormat,
}

/// Sample rates the daemon produces (divisors of Opus's 48 kHz).
pub const SAMPLE_RATES: [u32; 5] = [8000, 12000, 16000, 24000, 48000];

/// A model's registration (the KV value).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelSpec {
    /// Protocol version, 1.
    pub protocol: u32,
    /// Identity.
    #[serde(flatten)]
    pub id: ModelId,
    /// Which media.
    pub media: MediaKind,
    /// Video chunking (media = video).
    #[serde(default)]
    pub video: Option<VideoChunkSpec>,
    /// Audio chunking (media = audio).
    #[serde(default)]
    pub audio: Option<AudioChunkSpec>,
    /// Labels, in output order.
    #[serde(default)]
    pub labels: Vec<String>,
    /// What the output is (`labels`, `regression`, `features`…), informational.
    #[serde(default = "default_output")]
    pub output: String,
    /// Chunks in flight per participant (default 1: latest wins).
    #[serde(default = "one")]
    pub max_in_flight: u32,
    /// A chunk's useful life, from capture (default 1000 ms).
    #[serde(default = "deadline")]
    pub deadline_ms: u32,
    /// The worker refreshes the entry at this interval; 3 missed refreshes = gone.
    #[serde(default = "heartbeat")]
    pub heartbeat_ms: u32,
    /// When this entry was written (Unix ms).
    #[serde(default)]
    pub updated_ms: u64,
    /// What the labels mean for the fusion (valence/arousal, emotions, speech); absent: the
    /// model's results are not fused. Additive to v1: older readers ignore it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub affect: Option<affect::AffectDeclaration>,
    /// How often the model is right, as its author measured it on labelled data: shown next to its
    /// answers, because a score is not a probability of being right (`docs/models.md`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quality: Option<ModelQuality>,
    /// Which of the model's outputs (label names and top-level `extras` keys) infer emotion and
    /// which only measure observable expression or activity: what the daemon may let out under its
    /// processing policy (`expressions` drops emotion outputs and undeclared ones, and the results
    /// of models without this declaration). Additive to v1: older readers ignore it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outputs: Option<OutputDeclaration>,
}

/// What a model's outputs are (see [`ModelSpec::outputs`]): names of labels and of top-level
/// `extras` keys. A name in neither list is undeclared.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct OutputDeclaration {
    /// Outputs that infer an emotion or affect (emotion categories, valence, arousal).
    #[serde(default)]
    pub emotion: Vec<String>,
    /// Outputs that measure an observable expression or activity (face visible, smile intensity,
    /// head pose, speaking, voice energy, pitch variability), named as physical measures.
    #[serde(default)]
    pub expression: Vec<String>,
}

/// Most names an [`OutputDeclaration`] list may hold.
pub const MAX_DECLARED_OUTPUTS: usize = 256;

impl OutputDeclaration {
    /// Checks sizes and that no output is both.
    pub fn validate(&self) -> Result<(), String> {
        if self.emotion.len() > MAX_DECLARED_OUTPUTS || self.expression.len() > MAX_DECLARED_OUTPUTS
        {
            return Err(format!(
                "outputs: at most {MAX_DECLARED_OUTPUTS} names per list"
            ));
        }
        if let Some(n) = self
            .emotion
            .iter()
            .chain(&self.expression)
            .find(|n| n.is_empty() || n.len() > 256)
        {
            return Err(format!("outputs: bad name {n:?}"));
        }
        if let Some(both) = self.expression.iter().find(|n| self.emotion.contains(n)) {
            return Err(format!(
                "outputs: {both:?} is declared both emotion and expression"
            ));
        }
        Ok(())
    }

    /// Whether `name` is declared an expression output.
    pub fn is_expression(&self, name: &str) -> bool {
        self.expression.iter().any(|n| n == name)
    }
}

/// A model's measured quality (see [`ModelSpec::quality`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelQuality {
    /// What it was measured on, e.g. `FER2013 private test, 6 classes`.
    pub dataset: String,
    /// The metric, e.g. `balanced accuracy`.
    pub metric: String,
    /// Its value in [0, 1].
    pub value: f64,
    /// Classes the metric is over (chance is 1 / classes for a balanced accuracy).
    pub classes: u32,
}

fn default_output() -> String {
    "labels".into()
}
fn one() -> u32 {
    1
}
fn deadline() -> u32 {
    1000
}
fn heartbeat() -> u32 {
    2000
}

/// A spec that cannot be served.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpecError {
    /// Bad value.
    #[error("model {model}: {reason}")]
    Invalid {
        /// Model.
        model: String,
        /// Why.
        reason: String,
    },
}

impl ModelSpec {
    /// Checks the spec; the daemon ignores (and counts) invalid ones.
    pub fn validate(&self) -> Result<(), SpecError> {
        let bad = |reason: &str| {
            Err(SpecError::Invalid {
                model: self.id.to_string(),
                reason: reason.to_owned(),
            })
        };
        if self.protocol != VERSION {
            return bad("unsupported protocol version");
        }
        if self.id.name.is_empty() || self.id.version.is_empty() {
            return bad("empty name or version");
        }
        if self.max_in_flight == 0 || self.max_in_flight > 64 {
            return bad("max_in_flight must be 1..=64");
        }
        if self.deadline_ms == 0 || self.heartbeat_ms < 100 {
            return bad("deadline_ms must be > 0 and heartbeat_ms ≥ 100");
        }
        match (self.media, &self.video, &self.audio) {
            (MediaKind::Video, Some(v), _) => {
                if v.width == 0 || v.height == 0 || v.width > 4096 || v.height > 4096 {
                    return bad("video size must be 1..=4096");
                }
                if v.format == PixelFormat::I420
                    && (!v.width.is_multiple_of(2) || !v.height.is_multiple_of(2))
                {
                    return bad("I420 needs even width and height");
                }
                match (v.fps, v.every_nth) {
                    (_, Some(0)) => return bad("every_nth must be ≥ 1"),
                    (Some(f), None) if !(f > 0.0 && f <= 120.0) => {
                        return bad("fps must be in (0, 120]")
                    }
                    (None, None) => return bad("video needs fps or every_nth"),
                    _ => {}
                }
            }
            (MediaKind::Audio, _, Some(a)) => {
                if !SAMPLE_RATES.contains(&a.sample_rate) {
                    return bad("sample_rate must be 8000, 12000, 16000, 24000 or 48000");
                }
                if !(1..=2).contains(&a.channels) {
                    return bad("channels must be 1 or 2");
                }
                if a.window_ms < 10 || a.window_ms > 30_000 || a.hop_ms < 10 || a.hop_ms > 30_000 {
                    return bad("window_ms and hop_ms must be 10..=30000");
                }
            }
            _ => return bad("the chunk spec does not match the media kind"),
        }
        if let Some(a) = &self.affect {
            if let Err(e) = a.validate() {
                return bad(&e.to_string());
            }
        }
        if let Some(o) = &self.outputs {
            if let Err(e) = o.validate() {
                return bad(&e);
            }
        }
        if let Some(q) = &self.quality {
            if !(0.0..=1.0).contains(&q.value)
                || q.classes < 2
                || q.dataset.is_empty()
                || q.metric.is_empty()
                || q.dataset.len() > 200
                || q.metric.len() > 64
            {
                return bad("quality needs a dataset (at most 200 bytes), a metric (at most 64), a value in [0, 1] and ≥ 2 classes");
            }
        }
        Ok(())
    }

    /// Bytes of one chunk.
    pub fn chunk_size(&self) -> usize {
        match (self.media, &self.video, &self.audio) {
            (MediaKind::Video, Some(v), _) => v.format.frame_size(v.width, v.height),
            (MediaKind::Audio, _, Some(a)) => {
                (a.sample_rate as usize * a.window_ms as usize / 1000)
                    * a.channels as usize
                    * a.format.bytes()
            }
            _ => 0,
        }
    }

    /// True when the entry was refreshed within 3 heartbeats of `now_ms`.
    pub fn is_live(&self, now_ms: u64) -> bool {
        now_ms.saturating_sub(self.updated_ms) <= 3 * u64::from(self.heartbeat_ms)
    }
}

/// What a chunk's headers say.
#[derive(Debug, Clone, PartialEq)]
pub struct ChunkMeta {
    /// Room token.
    pub room: String,
    /// Participant token.
    pub participant: String,
    /// Kurento endpoint id.
    pub endpoint: String,
    /// Model.
    pub model: ModelId,
    /// Sequence number.
    pub seq: u64,
    /// Capture time, Unix µs.
    pub capture_us: u64,
    /// Send time, Unix µs.
    pub sent_us: u64,
    /// Deadline, Unix µs.
    pub deadline_us: u64,
    /// Layout of the payload.
    pub layout: Layout,
}

/// The payload's layout.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Layout {
    /// A frame.
    Video {
        /// Format.
        format: PixelFormat,
        /// Width.
        width: u32,
        /// Height.
        height: u32,
    },
    /// A window of samples.
    Audio {
        /// Format.
        format: SampleFormat,
        /// Rate.
        rate: u32,
        /// Channels.
        channels: u16,
    },
}

impl Layout {
    /// `video` / `audio`.
    pub fn media(&self) -> MediaKind {
        match self {
            Layout::Video { .. } => MediaKind::Video,
            Layout::Audio { .. } => MediaKind::Audio,
        }
    }
}

/// A chunk message that does not follow the protocol.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChunkError {
    /// A required header is absent.
    #[error("missing header {0}")]
    Missing(&'static str),
    /// A header has a bad value.
    #[error("bad header {0}: {1:?}")]
    Bad(&'static str, String),
    /// The payload size does not match the declared layout.
    #[error("payload is {actual} bytes, the declared layout needs {expected}")]
    Size {
        /// Bytes needed.
        expected: usize,
        /// Bytes received.
        actual: usize,
    },
}

impl ChunkMeta {
    /// Header pairs to send.
    pub fn to_headers(&self) -> Vec<(&'static str, String)> {
        use header::*;
        let mut h = vec![
            (VERSION, crate::VERSION.to_string()),
            (ROOM, self.room.clone()),
            (PARTICIPANT, self.participant.clone()),
            (ENDPOINT, self.endpoint.clone()),
            (MEDIA, self.layout.media().as_str().to_owned()),
            (MODEL, self.model.to_string()),
            (SEQ, self.seq.to_string()),
            (CAPTURE_US, self.capture_us.to_string()),
            (SENT_US, self.sent_us.to_string()),
            (DEADLINE_US, self.deadline_us.to_string()),
        ];
        match self.layout {
            Layout::Video {
                format,
                width,
                height,
            } => {
                h.push((FORMAT, format.as_str().to_owned()));
                h.push((WIDTH, width.to_string()));
                h.push((HEIGHT, height.to_string()));
            }
            Layout::Audio {
                format,
                rate,
                channels,
            } => {
                h.push((FORMAT, format.as_str().to_owned()));
                h.push((RATE, rate.to_string()));
                h.push((CHANNELS, channels.to_string()));
            }
        }
        h
    }

    /// Reads and checks the headers of a chunk with a payload of `payload_len` bytes.
    pub fn from_headers<'a>(
        get: impl Fn(&str) -> Option<&'a str>,
        payload_len: usize,
    ) -> Result<Self, ChunkError> {
        use header::*;
        let s = |k: &'static str| get(k).ok_or(ChunkError::Missing(k));
        let n = |k: &'static str| -> Result<u64, ChunkError> {
            let v = s(k)?;
            v.trim()
                .parse()
                .map_err(|_| ChunkError::Bad(k, v.to_owned()))
        };
        if n(VERSION)? != u64::from(crate::VERSION) {
            return Err(ChunkError::Bad(VERSION, s(VERSION)?.to_owned()));
        }
        let model = s(MODEL)?;
        let (name, version) = model
            .rsplit_once('@')
            .ok_or_else(|| ChunkError::Bad(MODEL, model.to_owned()))?;
        let fmt = s(FORMAT)?;
        let small = |k: &'static str, max: u64| -> Result<u32, ChunkError> {
            let v = n(k)?;
            if v == 0 || v > max {
                return Err(ChunkError::Bad(k, v.to_string()));
            }
            Ok(v as u32)
        };
        let layout = match s(MEDIA)? {
            "video" => {
                let format = PixelFormat::parse(fmt)
                    .ok_or_else(|| ChunkError::Bad(FORMAT, fmt.to_owned()))?;
                Layout::Video {
                    format,
                    width: small(WIDTH, 8192)?,
                    height: small(HEIGHT, 8192)?,
                }
            }
            "audio" => {
                let format = SampleFormat::parse(fmt)
                    .ok_or_else(|| ChunkError::Bad(FORMAT, fmt.to_owned()))?;
                Layout::Audio {
                    format,
                    rate: small(RATE, 192_000)?,
                    channels: small(CHANNELS, 8)? as u16,
                }
            }
            other => return Err(ChunkError::Bad(MEDIA, other.to_owned())),
        };
        let expected = match layout {
            Layout::Video {
                format,
                width,
                height,
            } => format.frame_size(width, height),
            Layout::Audio {
                format, channels, ..
            } => {
                let frame = format.bytes() * channels as usize;
                if !payload_len.is_multiple_of(frame) || payload_len == 0 {
                    return Err(ChunkError::Size {
                        expected: frame,
                        actual: payload_len,
                    });
                }
                payload_len
            }
        };
        if expected != payload_len {
            return Err(ChunkError::Size {
                expected,
                actual: payload_len,
            });
        }
        Ok(ChunkMeta {
            room: s(ROOM)?.to_owned(),
            participant: s(PARTICIPANT)?.to_owned(),
            endpoint: get(ENDPOINT).unwrap_or_default().to_owned(),
            model: ModelId::new(name, version),
            seq: n(SEQ)?,
            capture_us: n(CAPTURE_US)?,
            sent_us: n(SENT_US)?,
            deadline_us: n(DEADLINE_US)?,
            layout,
        })
    }
}

/// What a worker answers (JSON body of the reply).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct WorkerReply {
    /// Label → score (probabilities for classifiers).
    #[serde(default)]
    pub labels: std::collections::BTreeMap<String, f64>,
    /// The top label, if any.
    #[serde(default)]
    pub top: Option<String>,
    /// Model-specific structured output (face boxes, pitch…).
    #[serde(default)]
    pub extras: serde_json::Value,
    /// Time the chunk waited in the worker before inference, ms.
    #[serde(default)]
    pub queue_ms: f64,
    /// Inference time, ms.
    #[serde(default)]
    pub inference_ms: f64,
}

/// A result as the daemon publishes it on [`result_subject`] (JSON; schema in
/// `docs/schemas/result.v1.json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ResultMessage {
    /// Protocol version.
    pub v: u32,
    /// Room.
    pub room: String,
    /// Participant.
    pub participant: String,
    /// Kurento endpoint id of the participant's publisher.
    pub endpoint: String,
    /// The KMS the room lives on (the daemon's name for it; absent from daemons before it was
    /// added, and optional for readers).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kms: Option<String>,
    /// Model name.
    pub model: String,
    /// Model version.
    pub version: String,
    /// `video` / `audio`.
    pub media: MediaKind,
    /// Chunk sequence number.
    pub seq: u64,
    /// Capture time, Unix ms.
    pub capture_ms: f64,
    /// The worker's output.
    #[serde(flatten)]
    pub output: WorkerReply,
    /// Capture → result at the daemon, ms.
    pub latency_ms: f64,
    /// Chunk sent → reply received, ms.
    pub round_trip_ms: f64,
}

/// Value of [`DataChannelMessage::kind`].
pub const DATACHANNEL_RESULT_TYPE: &str = "kurento-tap.result";

/// What a participant's browser receives on its DataChannel for one result (JSON text; schema in
/// `docs/schemas/datachannel.v1.json`). Deliberately small: the top labels only, no model extras
/// (the full result stays on NATS).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DataChannelMessage {
    /// Protocol version (1).
    pub v: u32,
    /// Always [`DATACHANNEL_RESULT_TYPE`], so pages can share the channel with other messages.
    #[serde(rename = "type")]
    pub kind: String,
    /// Room.
    pub room: String,
    /// Participant the result is about.
    pub participant: String,
    /// Model name.
    pub model: String,
    /// Model version.
    pub version: String,
    /// `video` / `audio`.
    pub media: MediaKind,
    /// Capture time of the analysed media, Unix ms.
    pub capture_ms: f64,
    /// The top label, if the model gave one.
    #[serde(default)]
    pub top: Option<String>,
    /// Its score.
    #[serde(default)]
    pub score: Option<f64>,
    /// The highest-scoring labels (at most [`DataChannelMessage::MAX_LABELS`]), label → score.
    #[serde(default)]
    pub labels: std::collections::BTreeMap<String, f64>,
    /// Capture → result at the daemon, ms.
    pub latency_ms: f64,
}

impl DataChannelMessage {
    /// Labels carried at most.
    pub const MAX_LABELS: usize = 8;

    /// The message for a result.
    pub fn from_result(r: &ResultMessage) -> Self {
        let mut ranked: Vec<(&String, &f64)> = r
            .output
            .labels
            .iter()
            .filter(|(_, s)| s.is_finite())
            .collect();
        ranked.sort_by(|a, b| b.1.total_cmp(a.1).then_with(|| a.0.cmp(b.0)));
        let labels = ranked
            .into_iter()
            .take(Self::MAX_LABELS)
            .map(|(k, v)| (k.clone(), round4(*v)))
            .collect();
        let score = r
            .output
            .top
            .as_ref()
            .and_then(|t| r.output.labels.get(t))
            .copied()
            .filter(|s| s.is_finite())
            .map(round4);
        DataChannelMessage {
            v: VERSION,
            kind: DATACHANNEL_RESULT_TYPE.into(),
            room: r.room.clone(),
            participant: r.participant.clone(),
            model: r.model.clone(),
            version: r.version.clone(),
            media: r.media,
            capture_ms: r.capture_ms.round(),
            top: r.output.top.clone(),
            score,
            labels,
            latency_ms: (r.latency_ms * 10.0).round() / 10.0,
        }
    }

    /// The JSON text, or `None` when it would exceed `max_bytes` even with the labels left out.
    pub fn encode(mut self, max_bytes: usize) -> Option<String> {
        let text = serde_json::to_string(&self).ok()?;
        if text.len() <= max_bytes {
            return Some(text);
        }
        self.labels.clear();
        let text = serde_json::to_string(&self).ok()?;
        (text.len() <= max_bytes).then_some(text)
    }
}

fn round4(x: f64) -> f64 {
    (x * 10_000.0).round() / 10_000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn datachannel_message_is_small_and_ranked() {
        let mut labels = std::collections::BTreeMap::new();
        for (i, l) in ["a", "b", "c", "d", "e", "f", "g", "h", "i", "j"]
            .iter()
            .enumerate()
        {
            labels.insert((*l).to_owned(), i as f64 / 10.0 + 0.012345);
        }
        labels.insert("nan".into(), f64::NAN);
        let r = ResultMessage {
            v: 1,
            room: "r".into(),
            participant: "p".into(),
            endpoint: "e".into(),
            kms: None,
            model: "fer".into(),
            version: "1".into(),
            media: MediaKind::Video,
            seq: 3,
            capture_ms: 1_700_000_000_123.4,
            output: WorkerReply {
                labels,
                top: Some("j".into()),
                extras: serde_json::json!({"faces": [[1, 2, 3, 4]]}),
                queue_ms: 1.0,
                inference_ms: 2.0,
            },
            latency_ms: 12.345,
            round_trip_ms: 3.0,
        };
        let m = DataChannelMessage::from_result(&r);
        assert_eq!(m.labels.len(), DataChannelMessage::MAX_LABELS);
        assert!(!m.labels.contains_key("a") && !m.labels.contains_key("nan"));
        assert_eq!(m.score, Some(0.9123));
        let text = m.clone().encode(4096).unwrap();
        assert!(!text.contains("faces"), "{text}");
        let back: DataChannelMessage = serde_json::from_str(&text).unwrap();
        assert_eq!(back, m);
        assert_eq!(back.kind, DATACHANNEL_RESULT_TYPE);
        // Too big with labels: sent without them; too big even so: not sent.
        let small = m.clone().encode(230).unwrap();
        assert!(small.contains("\"labels\":{}"), "{small}");
        assert!(m.encode(50).is_none());
    }

    /// The published JSON Schemas name exactly the fields the types serialize.
    #[test]
    fn schemas_match_the_types() {
        fn check(schema: &str, value: serde_json::Value) {
            let schema: serde_json::Value = serde_json::from_str(schema).unwrap();
            let props = schema["properties"].as_object().unwrap();
            let obj = value.as_object().unwrap();
            for k in obj.keys() {
                assert!(props.contains_key(k), "{k} is not in the schema");
            }
            for k in props.keys() {
                assert!(obj.contains_key(k), "{k} is in the schema, not in the type");
            }
            for r in schema["required"].as_array().unwrap() {
                assert!(obj.contains_key(r.as_str().unwrap()));
            }
        }
        let r = ResultMessage {
            v: 1,
            room: "r".into(),
            participant: "p".into(),
            endpoint: "e".into(),
            kms: Some("kms-a".into()),
            model: "m".into(),
            version: "1".into(),
            media: MediaKind::Audio,
            seq: 1,
            capture_ms: 1.0,
            output: WorkerReply {
                top: Some("x".into()),
                labels: [("x".to_owned(), 1.0)].into(),
                ..Default::default()
            },
            latency_ms: 1.0,
            round_trip_ms: 1.0,
        };
        check(
            include_str!("../../docs/schemas/result.v1.json"),
            serde_json::to_value(&r).unwrap(),
        );
        check(
            include_str!("../../docs/schemas/datachannel.v1.json"),
            serde_json::to_value(DataChannelMessage::from_result(&r)).unwrap(),
        );
    }

    #[test]
    fn tokens_are_safe() {
        assert_eq!(
            safe_token("a1b2_kurento.MediaPipeline/x"),
            "a1b2_kurento_MediaPipeline_x"
        );
        assert_eq!(safe_token(""), "_");
        assert_eq!(safe_token("héllo wörld*>"), "h_llo_w_rld__");
        assert_eq!(safe_token(&"x".repeat(100)).len(), 64);
        let m = ModelId::new("fer", "2");
        assert_eq!(chunk_subject(&m), "tap.v1.chunk.fer.2");
        assert_eq!(
            result_subject("r.1", "alice", &m),
            "tap.v1.result.r_1.alice.fer_2"
        );
    }

    fn meta() -> ChunkMeta {
        ChunkMeta {
            room: "r".into(),
            participant: "p".into(),
            endpoint: "P/E_kurento.WebRtcEndpoint".into(),
            model: ModelId::new("fer", "1"),
            seq: 3,
            capture_us: 1,
            sent_us: 2,
            deadline_us: 3,
            layout: Layout::Video {
                format: PixelFormat::Rgb24,
                width: 4,
                height: 2,
            },
        }
    }

    #[test]
    fn headers_round_trip_and_sizes_are_checked() {
        let m = meta();
        let h = m.to_headers();
        let get = |k: &str| h.iter().find(|(n, _)| *n == k).map(|(_, v)| v.as_str());
        assert_eq!(ChunkMeta::from_headers(get, 24).unwrap(), m);
        assert_eq!(
            ChunkMeta::from_headers(get, 23),
            Err(ChunkError::Size {
                expected: 24,
                actual: 23
            })
        );
        let none = |_: &str| None;
        assert!(matches!(
            ChunkMeta::from_headers(none, 0),
            Err(ChunkError::Missing(_))
        ));
    }

    #[test]
    fn specs_are_validated() {
        let mut s = ModelSpec {
            protocol: 1,
            id: ModelId::new("fer", "1"),
            media: MediaKind::Video,
            video: Some(VideoChunkSpec {
                fps: Some(5.0),
                every_nth: None,
                width: 64,
                height: 64,
                format: PixelFormat::Gray8,
            }),
            audio: None,
            labels: vec![],
            output: "labels".into(),
            max_in_flight: 1,
            deadline_ms: 500,
            heartbeat_ms: 1000,
            updated_ms: 10_000,
            affect: None,
            quality: None,
            outputs: None,
        };
        s.validate().unwrap();
        s.outputs = Some(OutputDeclaration {
            emotion: vec!["happy".into()],
            expression: vec!["face".into(), "happy".into()],
        });
        assert!(s.validate().unwrap_err().to_string().contains("both"));
        s.outputs.as_mut().unwrap().expression.pop();
        s.validate().unwrap();
        let json = serde_json::to_value(&s).unwrap();
        assert_eq!(json["outputs"]["expression"][0], "face");
        let back: ModelSpec = serde_json::from_value(json).unwrap();
        assert!(back.outputs.unwrap().is_expression("face"));
        s.outputs = None;
        assert_eq!(s.chunk_size(), 64 * 64);
        assert!(s.is_live(12_000) && !s.is_live(13_001));
        s.media = MediaKind::Audio;
        assert!(s.validate().is_err());
        let json = serde_json::to_value(&s).unwrap();
        assert_eq!(json["name"], "fer");
        assert_eq!(json["video"]["format"], "GRAY8");
    }
}
