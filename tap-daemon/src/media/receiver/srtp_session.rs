//! SRTP on the tap leg, receiver side: a decoder per rtpbin session keyed from KMS's answer.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use gstreamer as gst;
use gstreamer::prelude::*;

use crate::media::srtp::SdesKey;

use super::types::{KmsKeys, ReceiverError, ReceiverStats, SrtpDecoders, VIDEO};

/// SRTP in: rtpbin asks for a decoder per session (one `srtpdec` for its RTP and RTCP; its
/// `request-key` answered from KMS's keys, by session). Packets in and out of the decoders are
/// counted: the difference is what libsrtp refused (bad authentication, a replay; what went before
/// KMS's keys were known is set apart, [`ReceiverStats::srtp_rejected`]).
pub(super) fn install_srtp(
    rtpbin: &gst::Element,
    kms_keys: KmsKeys,
    decoders: SrtpDecoders,
    stats: Arc<ReceiverStats>,
) -> Result<(), ReceiverError> {
    let decoder_for = {
        let decoders = decoders.clone();
        move |session: u32| srtp_decoder(session as usize, &kms_keys, &decoders, &stats)
    };
    let for_rtp = decoder_for.clone();
    rtpbin.connect("request-rtp-decoder", false, move |args| {
        let session = args.get(1).and_then(|v| v.get::<u32>().ok())?;
        for_rtp(session).map(|d| d.to_value())
    });
    rtpbin.connect("request-rtcp-decoder", false, move |args| {
        let session = args.get(1).and_then(|v| v.get::<u32>().ok())?;
        decoder_for(session).map(|d| d.to_value())
    });
    // Fail here, not silently at the first packet, when the plugin is missing.
    for name in ["srtpdec", "srtpenc"] {
        if gst::ElementFactory::find(name).is_none() {
            return Err(ReceiverError::MissingElement(name));
        }
    }
    Ok(())
}

/// The `srtpdec` of a session (made on first use): keyed by `request-key` from KMS's keys, its
/// packets counted in and out.
pub(super) fn srtp_decoder(
    idx: usize,
    kms_keys: &KmsKeys,
    decoders: &SrtpDecoders,
    stats: &Arc<ReceiverStats>,
) -> Option<gst::Element> {
    if idx > VIDEO {
        return None;
    }
    let mut all = decoders.lock().ok()?;
    if let Some(d) = &all[idx] {
        return Some(d.clone());
    }
    let dec = gst::ElementFactory::make("srtpdec").build().ok()?;
    let keys = kms_keys.clone();
    dec.connect("request-key", false, move |args| {
        let ssrc = args.get(1).and_then(|v| v.get::<u32>().ok()).unwrap_or(0);
        let key = keys.lock().ok().and_then(|k| k[idx].clone())?;
        Some(srtp_caps(ssrc, &key).to_value())
    });
    for (pad, counter) in [
        ("rtp_sink", true),
        ("rtcp_sink", true),
        ("rtp_src", false),
        ("rtcp_src", false),
    ] {
        if let Some(p) = dec.static_pad(pad) {
            let stats = stats.clone();
            p.add_probe(gst::PadProbeType::BUFFER, move |_, _| {
                let c = if counter {
                    &stats.srtp_packets_in
                } else {
                    &stats.srtp_packets_out
                };
                c.fetch_add(1, Ordering::Relaxed);
                gst::PadProbeReturn::Ok
            });
        }
    }
    all[idx] = Some(dec.clone());
    Some(dec)
}

/// The caps `srtpdec` wants for a stream: KMS's key and suite (KMS uses the suite's tag length on
/// SRTCP too).
pub(super) fn srtp_caps(ssrc: u32, key: &SdesKey) -> gst::Caps {
    gst::Caps::builder("application/x-srtp")
        .field("ssrc", ssrc)
        .field(
            "srtp-key",
            gst::Buffer::from_slice(key.key.bytes().to_vec()),
        )
        .field("srtp-cipher", key.suite.gst_cipher())
        .field("srtp-auth", key.suite.gst_auth())
        .field("srtcp-cipher", key.suite.gst_cipher())
        .field("srtcp-auth", key.suite.gst_auth())
        .build()
}
