//! A stable-toolchain companion of the cargo-fuzz target: thousands of mutations of real KMS frames
//! (bytes flipped, cut, duplicated, nested) through the decoder and the typed event decoding. Any
//! panic fails the test; errors are the expected outcome for most inputs.

use kurento_client::protocol::{decode_server_message, ServerMessage};

const SEEDS: &[&str] = &[
    r#"{"id":1,"jsonrpc":"2.0","result":{"value":"pong"}}"#,
    r#"{"id":2,"jsonrpc":"2.0","result":{"sessionId":"80ad","value":"5f87_kurento.MediaPipeline"}}"#,
    r#"{"error":{"code":40008,"data":{"type":"MALFORMED_TRANSACTION"},"message":"Method 'x' with 0 parameters not found"},"id":14,"jsonrpc":"2.0"}"#,
    r#"{"jsonrpc":"2.0","method":"onEvent","params":{"value":{"data":{"candidate":{"__module__":"kurento","__type__":"IceCandidate","candidate":"candidate:1 1 UDP 2015363583 127.0.0.1 40150 typ host","sdpMLineIndex":0,"sdpMid":"audio0"},"source":"W","tags":[],"timestampMillis":"1796010846163","type":"IceCandidateFound"},"object":"W","type":"IceCandidateFound"}}}"#,
    r#"{"jsonrpc":"2.0","method":"onEvent","params":{"value":{"data":{"object":"P/E","source":"manager_ServerManager","tags":[],"timestampMillis":"1","type":"ObjectCreated"},"object":"manager_ServerManager","type":"ObjectCreated"}}}"#,
    r#"{"id":3,"jsonrpc":"2.0","result":{"sessionId":"S","value":[{"id":0,"result":{"value":"P/R_kurento.RtpEndpoint"}},{"id":1,"error":{"code":40101,"message":"m"}}]}}"#,
];

const TOKENS: &[&str] = &[
    "{",
    "}",
    "[",
    "]",
    "\"",
    ":",
    ",",
    "null",
    "-1",
    "1e999",
    "\\u0000",
    "\u{1F600}",
    "18446744073709551616",
];

fn mutate(rng: &mut fastrand::Rng, s: &str) -> String {
    let mut b: Vec<u8> = s.as_bytes().to_vec();
    for _ in 0..rng.usize(1..6) {
        if b.is_empty() {
            break;
        }
        let at = rng.usize(..b.len());
        match rng.u8(..5) {
            0 => b[at] = rng.u8(..),
            1 => b.truncate(at),
            2 => {
                let t = TOKENS[rng.usize(..TOKENS.len())];
                b.splice(at..at, t.bytes());
            }
            3 => {
                let end = (at + rng.usize(1..40)).min(b.len());
                let chunk = b[at..end].to_vec();
                b.splice(at..at, chunk);
            }
            _ => {
                b.remove(at);
            }
        }
    }
    String::from_utf8_lossy(&b).into_owned()
}

#[test]
fn mutated_frames_never_panic() {
    let mut rng = fastrand::Rng::with_seed(0x006b_7572_656e_746f);
    let (mut ok, mut err) = (0u32, 0u32);
    for i in 0..30_000 {
        let input = mutate(&mut rng, SEEDS[i % SEEDS.len()]);
        match decode_server_message(&input) {
            Ok(ServerMessage::Event(ev)) => {
                ok += 1;
                let _ =
                    serde_json::from_value::<kurento_client::IceCandidateFound>(ev.data.clone());
                let _ = serde_json::from_value::<kurento_client::ObjectCreated>(ev.data);
            }
            Ok(_) => ok += 1,
            Err(_) => err += 1,
        }
    }
    // Both outcomes must occur, or the mutations are not exercising the decoder.
    assert!(ok > 100 && err > 100, "ok {ok} err {err}");
}

#[test]
fn deep_nesting_is_an_error_not_a_stack_overflow() {
    let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
    assert!(decode_server_message(&deep).is_err());
    let deep_obj = format!(
        "{{\"id\":1,\"result\":{}{}}}",
        "{\"a\":".repeat(50_000),
        "}".repeat(50_001)
    );
    assert!(decode_server_message(&deep_obj).is_err());
}
