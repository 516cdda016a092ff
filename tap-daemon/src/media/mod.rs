//! Media out of KMS: the tap's SDP offer and keys, the UDP ports, the GStreamer receiver that
//! depayloads and decodes, the capture clock that dates what it decodes, and the chunker that cuts
//! frames and audio windows to each model's asks.

pub mod capture_clock;
pub mod chunker;
pub mod ports;
pub mod receiver;
pub mod reorder;
pub mod sdp_offer;
pub mod srtp;
