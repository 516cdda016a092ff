//! Typed views of a chunk's payload.

use tap_protocol::{ChunkError, ChunkMeta, Layout, PixelFormat, SampleFormat};

/// A video frame.
#[derive(Debug)]
pub struct Frame<'a> {
    /// Width.
    pub width: u32,
    /// Height.
    pub height: u32,
    /// Layout of `pixels` (tightly packed rows).
    pub format: PixelFormat,
    /// The pixels.
    pub pixels: &'a [u8],
}

/// Samples, decoded from the payload's little-endian bytes.
#[derive(Debug)]
pub enum Samples {
    /// Float in [-1, 1].
    F32(Vec<f32>),
    /// 16-bit.
    S16(Vec<i16>),
}

impl Samples {
    /// As floats in [-1, 1] (16-bit samples scaled).
    pub fn to_f32(&self) -> Vec<f32> {
        match self {
            Samples::F32(v) => v.clone(),
            Samples::S16(v) => v.iter().map(|&s| s as f32 / 32768.0).collect(),
        }
    }
}

/// An audio window.
#[derive(Debug)]
pub struct AudioWindow {
    /// Sample rate.
    pub rate: u32,
    /// Channels (interleaved).
    pub channels: u16,
    /// The samples.
    pub samples: Samples,
}

/// The payload.
#[derive(Debug)]
pub enum Data<'a> {
    /// A frame.
    Video(Frame<'a>),
    /// A window.
    Audio(AudioWindow),
}

/// A chunk: who, when, and the data.
#[derive(Debug)]
pub struct Chunk<'a> {
    /// Headers.
    pub meta: ChunkMeta,
    /// Data.
    pub data: Data<'a>,
}

impl<'a> Chunk<'a> {
    /// Reads a chunk from its headers and payload, checking the payload against the declared layout.
    pub fn parse<'h>(
        get: impl Fn(&str) -> Option<&'h str>,
        payload: &'a [u8],
    ) -> Result<Self, ChunkError> {
        let meta = ChunkMeta::from_headers(get, payload.len())?;
        let data = match meta.layout {
            Layout::Video {
                format,
                width,
                height,
            } => Data::Video(Frame {
                width,
                height,
                format,
                pixels: payload,
            }),
            Layout::Audio {
                format,
                rate,
                channels,
            } => Data::Audio(AudioWindow {
                rate,
                channels,
                samples: match format {
                    SampleFormat::F32 => Samples::F32(
                        payload
                            .chunks_exact(4)
                            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                            .collect(),
                    ),
                    SampleFormat::S16 => Samples::S16(
                        payload
                            .chunks_exact(2)
                            .map(|b| i16::from_le_bytes([b[0], b[1]]))
                            .collect(),
                    ),
                },
            }),
        };
        Ok(Chunk { meta, data })
    }
}
