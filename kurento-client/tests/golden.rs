//! Frames a real KMS 7.3 sent (kms-observed.md, ids shortened) and the shapes documented from its
//! source (kurento-mechanics.md §1.2), decoded by the client's decoder and typed API.

use kurento_client::protocol::{decode_server_message, ServerMessage};
use kurento_client::*;

fn response(
    frame: &str,
) -> (
    u64,
    Result<kurento_client::protocol::RpcResult, ServerError>,
) {
    match decode_server_message(frame).expect("decodes") {
        ServerMessage::Response { id, result } => (id, result),
        other => panic!("not a response: {other:?}"),
    }
}

fn event<E: Event>(frame: &str) -> (String, E) {
    match decode_server_message(frame).expect("decodes") {
        ServerMessage::Event(ev) => {
            assert_eq!(ev.event_type, E::NAME);
            let typed = serde_json::from_value(ev.data.clone()).expect("typed event");
            (ev.object, typed)
        }
        other => panic!("not an event: {other:?}"),
    }
}

#[test]
fn ping_answer_has_no_session() {
    let (id, r) = response(r#"{"id":1,"jsonrpc":"2.0","result":{"value":"pong"}}"#);
    let r = r.unwrap();
    assert_eq!(id, 1);
    assert_eq!(r.value(), "pong");
    assert_eq!(r.session_id(), None);
}

#[test]
fn first_create_assigns_the_session() {
    let (_, r) = response(
        r#"{"id":2,"jsonrpc":"2.0","result":{"sessionId":"80ad","value":"5f87_kurento.MediaPipeline"}}"#,
    );
    let r = r.unwrap();
    assert_eq!(r.session_id(), Some("80ad"));
    assert_eq!(
        type_from_id(r.value().as_str().unwrap()),
        Some(("kurento", "MediaPipeline"))
    );
}

#[test]
fn process_offer_answer_is_a_string() {
    let (_, r) = response(
        r#"{"id":7,"jsonrpc":"2.0","result":{"sessionId":"80ad","value":"v=0\r\no=- 4004999646 4004999646 IN IP4 127.0.0.2\r\ns=Kurento Media Server\r\nc=IN IP4 127.0.0.2\r\nt=0 0\r\nm=audio 40266 RTP/AVP 96\r\na=sendonly\r\na=rtcp:40267\r\na=rtpmap:96 opus/48000/2\r\n"}}"#,
    );
    assert!(r
        .unwrap()
        .value()
        .as_str()
        .unwrap()
        .contains("a=rtcp:40267"));
}

#[test]
fn void_operation_answers_null() {
    let (_, r) = response(r#"{"id":8,"jsonrpc":"2.0","result":{"sessionId":"80ad","value":null}}"#);
    assert!(r.unwrap().value().is_null());
    let (_, r) = response(r#"{"id":15,"jsonrpc":"2.0","result":{"sessionId":"80ad"}}"#);
    assert!(r.unwrap().value().is_null());
}

#[test]
fn ice_candidate_found_event() {
    let (object, ev): (_, IceCandidateFound) = event(
        r#"{"jsonrpc":"2.0","method":"onEvent","params":{"value":{"data":{"candidate":{"__module__":"kurento","__type__":"IceCandidate","candidate":"candidate:1 1 UDP 2015363583 127.0.0.1 40150 typ host","sdpMLineIndex":0,"sdpMid":"audio0"},"source":"P/W_kurento.WebRtcEndpoint","tags":[],"timestampMillis":"1796010846163","type":"IceCandidateFound"},"object":"P/W_kurento.WebRtcEndpoint","type":"IceCandidateFound"}}}"#,
    );
    assert_eq!(object, "P/W_kurento.WebRtcEndpoint");
    assert_eq!(ev.source, "P/W_kurento.WebRtcEndpoint");
    assert_eq!(ev.timestamp_millis, "1796010846163");
    assert_eq!(ev.candidate.sdp_mid, "audio0");
}

#[test]
fn server_manager_events() {
    let (_, created): (_, ObjectCreated) = event(
        r#"{"jsonrpc":"2.0","method":"onEvent","params":{"value":{"data":{"object":"PIPE/b2c3_kurento.WebRtcEndpoint","source":"manager_ServerManager","tags":[],"timestampMillis":"1714000000123","type":"ObjectCreated"},"object":"manager_ServerManager","type":"ObjectCreated"}}}"#,
    );
    assert_eq!(created.object, "PIPE/b2c3_kurento.WebRtcEndpoint");
    let (_, destroyed): (_, ObjectDestroyed) = event(
        r#"{"jsonrpc":"2.0","method":"onEvent","params":{"value":{"data":{"objectId":"PIPE/b2c3_kurento.WebRtcEndpoint","source":"manager_ServerManager","tags":[],"timestampMillis":"1","type":"ObjectDestroyed"},"object":"manager_ServerManager","type":"ObjectDestroyed"}}}"#,
    );
    assert_eq!(destroyed.object_id, "PIPE/b2c3_kurento.WebRtcEndpoint");
    let (_, connected): (_, ElementConnected) = event(
        r#"{"jsonrpc":"2.0","method":"onEvent","params":{"value":{"data":{"source":"PUB","sink":"TAP","mediaType":"VIDEO","sourceMediaDescription":"default","sinkMediaDescription":"default","tags":[],"timestampMillis":"1","type":"ElementConnected"},"object":"PUB","type":"ElementConnected"}}}"#,
    );
    assert_eq!(
        (connected.sink.as_str(), connected.media_type),
        ("TAP", MediaType::Video)
    );
    let (_, flow): (_, MediaFlowOutStateChanged) = event(
        r#"{"jsonrpc":"2.0","method":"onEvent","params":{"value":{"data":{"state":"FLOWING","padName":"default","mediaType":"AUDIO","source":"PUB","tags":[],"timestampMillis":"1","type":"MediaFlowOutStateChanged"},"object":"PUB","type":"MediaFlowOutStateChanged"}}}"#,
    );
    assert_eq!(flow.state, MediaFlowState::Flowing);
}

#[test]
fn get_info_is_typed() {
    let (_, r) = response(
        r#"{"id":13,"jsonrpc":"2.0","result":{"sessionId":"80ad","value":{"__module__":"kurento","__type__":"ServerInfo","capabilities":["transactions"],"modules":[{"__module__":"kurento","__type__":"ModuleInfo","factories":["MediaPipeline"],"generationTime":"x","name":"core","version":"7.3.1"}],"type":"KMS","version":"7.3.1~55.g2e4bf5524"}}}"#,
    );
    let info: ServerInfo = serde_json::from_value(r.unwrap().into_value()).unwrap();
    assert_eq!(info.version, "7.3.1~55.g2e4bf5524");
    assert_eq!(info.r#type, ServerType::Kms);
    assert_eq!(info.modules[0].factories, vec!["MediaPipeline"]);
}

#[test]
fn errors_keep_code_message_and_data() {
    let (id, r) = response(
        r#"{"error":{"code":40008,"data":{"type":"MALFORMED_TRANSACTION"},"message":"Method 'getNotExisting' with 0 parameters not found"},"id":14,"jsonrpc":"2.0"}"#,
    );
    let e = r.unwrap_err();
    assert_eq!(id, 14);
    assert_eq!(e.code, ErrorCode::MalformedTransaction);
    assert_eq!(e.code.kms_type(), Some("MALFORMED_TRANSACTION"));
    assert_eq!(
        e.message,
        "Method 'getNotExisting' with 0 parameters not found"
    );
    let (_, r) = response(
        r#"{"error":{"code":40101,"data":{"type":"MEDIA_OBJECT_NOT_FOUND"},"message":"Object 'x_kurento.RtpEndpoint' not found"},"id":16,"jsonrpc":"2.0"}"#,
    );
    assert_eq!(r.unwrap_err().code, ErrorCode::MediaObjectNotFound);
}

#[test]
fn stats_keep_subtype_fields() {
    let v = serde_json::json!({"a": {"__module__":"kurento","__type__":"RTCInboundRTPStreamStats","id":"a","type":"inboundrtp","timestampMillis":1,"packetsReceived":42}});
    let stats: std::collections::HashMap<String, Stats> = serde_json::from_value(v).unwrap();
    let s = &stats["a"];
    assert_eq!(s.r#type, StatsType::Inboundrtp);
    assert_eq!(s.concrete_type.as_deref(), Some("RTCInboundRTPStreamStats"));
    assert_eq!(s.extra["packetsReceived"], 42);
}

#[test]
fn unknown_enum_values_do_not_fail_decoding() {
    let t: MediaType = serde_json::from_str("\"HOLOGRAM\"").unwrap();
    assert_eq!(t, MediaType::Unknown);
}
