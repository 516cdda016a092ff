//! `cargo +nightly fuzz run decode_server_message` (from kurento-client/): every byte string the
//! server could send must decode to a message or an error, and typed decoding of what decodes must
//! not panic either.
#![no_main]

use kurento_client::protocol::{decode_server_message, ServerMessage};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Ok(ServerMessage::Event(ev)) = decode_server_message(text) {
        let _ = serde_json::from_value::<kurento_client::IceCandidateFound>(ev.data.clone());
        let _ = serde_json::from_value::<kurento_client::ObjectCreated>(ev.data);
    }
});
