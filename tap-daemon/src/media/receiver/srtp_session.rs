//! SRTP on the tap leg, receiver side: a decoder per rtpbin session keyed from KMS's answer.

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;

use gstreamer as gst;
use gstreamer::prelude::*;

use crate::media::srtp::refusals::{self, Settled};
use crate::media::srtp::SdesKey;

use super::types::{KmsKeys, ReceiverError, ReceiverStats, SrtpDecoders, VIDEO};

/// SRTP in: rtpbin asks for a decoder per session (one `srtpdec` for its RTP and RTCP; its
/// `request-key` answered from KMS's keys, by session). What libsrtp refused (bad authentication, a
/// replay) is counted per packet; what went before KMS's keys were known is set apart
/// ([`ReceiverStats::srtp_rejected`]).
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
/// refusals counted (`refusals`).
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
    // Per pad (RTP, RTCP), the state of its last packet: settled as passed when it comes out,
    // as refused when the next one goes in first (`refusals`: a packet in flight is never counted).
    for (sink, src) in [("rtp_sink", "rtp_src"), ("rtcp_sink", "rtcp_src")] {
        let (Some(sink), Some(src)) = (dec.static_pad(sink), dec.static_pad(src)) else {
            continue;
        };
        let pending = Arc::new(AtomicU8::new(refusals::NONE));
        let (stats_in, keys_in, pending_in) = (stats.clone(), kms_keys.clone(), pending.clone());
        sink.add_probe(gst::PadProbeType::BUFFER, move |_, _| {
            let keys_known = keys_in.lock().is_ok_and(|k| k[idx].is_some());
            let previous = pending_in.swap(refusals::entering(keys_known), Ordering::AcqRel);
            // What went before KMS's keys were known had nothing to be checked against: not
            // a refusal.
            if refusals::settle(previous) == Settled::Refused {
                stats_in.srtp_refused.fetch_add(1, Ordering::Relaxed);
            }
            gst::PadProbeReturn::Ok
        });
        src.add_probe(gst::PadProbeType::BUFFER, move |_, _| {
            pending.store(refusals::NONE, Ordering::Release);
            gst::PadProbeReturn::Ok
        });
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
