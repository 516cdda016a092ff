//! Building pipelines in code: elements by name, errors, links.

use gstreamer as gst;
use gstreamer::prelude::*;

use super::types::ReceiverError;

pub(super) fn make(name: &'static str) -> Result<gst::Element, ReceiverError> {
    gst::ElementFactory::make(name)
        .build()
        .map_err(|_| ReceiverError::MissingElement(name))
}

pub(super) fn gst_err(e: impl std::fmt::Display) -> ReceiverError {
    ReceiverError::Gst(e.to_string())
}

/// Links rtpbin's new source pad to the first element of a decode chain.
pub(super) fn link_to(pad: &gst::Pad, first: &gst::Element) -> Result<(), ReceiverError> {
    let sink = first
        .static_pad("sink")
        .ok_or_else(|| ReceiverError::Gst("depayloader without sink pad".into()))?;
    pad.link(&sink).map_err(gst_err)?;
    Ok(())
}

/// Adds a chain to the pipeline, links it in order and brings it to the pipeline's state.
pub(super) fn add_chain(
    pipeline: &gst::Pipeline,
    chain: &[gst::Element],
) -> Result<(), ReceiverError> {
    pipeline.add_many(chain.iter()).map_err(gst_err)?;
    gst::Element::link_many(chain.iter()).map_err(gst_err)?;
    for e in chain {
        e.sync_state_with_parent().map_err(gst_err)?;
    }
    Ok(())
}
