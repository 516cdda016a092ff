//! The receive path without threads of its own ([`ReceiveThreads::Shared`]): a threadshare
//! `ts-udpsrc` per stream polls its socket on a context thread shared by every tap, and the
//! depayloader and decoder run on that thread when a packet arrives.
//!
//! ```text
//! ts-udpsrc(context) ─▶ [srtpdec] ─▶ depay ─▶ decode ─▶ appsink      (no rtpbin, no RTCP)
//! ```

use std::sync::{Arc, Once};

use gstreamer as gst;
use gstreamer::prelude::*;

use super::gst_util::{gst_err, make};
use super::srtp_session::srtp_decoder;
use super::types::{KmsKeys, ReceiverError, ReceiverStats, SrtpDecoders};

/// How long a context thread may wait to gather socket wake-ups into one (threadshare's
/// `context-wait`): the latency it adds at most, and what makes one thread serve many sockets.
pub const CONTEXT_WAIT_MS: u32 = 5;

static REGISTER: Once = Once::new();

/// Registers the threadshare elements with GStreamer (linked in, not a plugin file).
fn register() -> Result<(), ReceiverError> {
    let mut result = Ok(());
    REGISTER.call_once(|| {
        if let Err(e) = gstthreadshare::plugin_register_static() {
            result = Err(gst_err(format!(
                "cannot register the threadshare elements: {e}"
            )));
        }
    });
    result?;
    if gst::ElementFactory::find("ts-udpsrc").is_none() {
        return Err(ReceiverError::MissingElement("ts-udpsrc"));
    }
    Ok(())
}

/// One stream's socket on the shared context, through KMS's SRTP decoder when `srtp`: the pad the
/// decoding branch links to. `idx` is the session (audio or video).
#[allow(clippy::too_many_arguments)]
pub(super) fn add_stream(
    pipeline: &gst::Pipeline,
    context: &str,
    bind: &str,
    port: u16,
    caps: gst::Caps,
    srtp: Option<(usize, &KmsKeys, &SrtpDecoders)>,
    stats: &Arc<ReceiverStats>,
) -> Result<gst::Pad, ReceiverError> {
    register()?;
    let src = make("ts-udpsrc")?;
    src.set_property("context", context);
    src.set_property("context-wait", CONTEXT_WAIT_MS);
    src.set_property("address", bind);
    src.set_property("port", port as i32);
    src.set_property("caps", &caps);
    pipeline.add(&src).map_err(gst_err)?;
    let Some((idx, keys, decoders)) = srtp else {
        return src
            .static_pad("src")
            .ok_or_else(|| gst_err("ts-udpsrc has no src pad"));
    };
    let dec =
        srtp_decoder(idx, keys, decoders, stats).ok_or(ReceiverError::MissingElement("srtpdec"))?;
    pipeline.add(&dec).map_err(gst_err)?;
    src.link_pads(Some("src"), &dec, Some("rtp_sink"))
        .map_err(gst_err)?;
    dec.static_pad("rtp_src")
        .ok_or_else(|| gst_err("srtpdec has no rtp_src pad"))
}
