//! The client against a scripted fake server: what it sends must match the frames a real KMS 7.3
//! accepted (golden shapes from `kms-observed.md`), and whatever comes back — malformed JSON, unknown
//! ids, wrong types, binary and oversized frames — must give errors and counters, never a panic.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use kurento_client::prelude::*;
use kurento_client::{Error, ErrorCode, ReconnectPolicy};
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::Message;

type Script = Arc<dyn Fn(&Value) -> Vec<Message> + Send + Sync>;

struct Fake {
    url: String,
    requests: Arc<Mutex<Vec<Value>>>,
}

fn answer(req: &Value, result: Value) -> Message {
    Message::text(json!({"jsonrpc": "2.0", "id": req["id"], "result": result}).to_string())
}

/// Serves every connection: `connect` is answered with session S / server X; everything else goes
/// to `script`, which returns the frames to send back.
async fn fake(script: Script) -> Fake {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("ws://{}/kurento", listener.local_addr().unwrap());
    let requests = Arc::new(Mutex::new(Vec::new()));
    let log = requests.clone();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let script = script.clone();
            let log = log.clone();
            tokio::spawn(async move {
                let Ok(mut ws) = tokio_tungstenite::accept_async(stream).await else {
                    return;
                };
                while let Some(Ok(msg)) = ws.next().await {
                    let Message::Text(t) = msg else { continue };
                    let req: Value = serde_json::from_str(t.as_str()).unwrap();
                    log.lock().unwrap().push(req.clone());
                    let out = if req["method"] == "connect" {
                        vec![answer(&req, json!({"sessionId": "S", "serverId": "X"}))]
                    } else {
                        script(&req)
                    };
                    for m in out {
                        if ws.send(m).await.is_err() {
                            return;
                        }
                    }
                }
            });
        }
    });
    Fake { url, requests }
}

fn config(url: &str) -> ClientConfig {
    ClientConfig::new(url)
        .with_request_timeout(Duration::from_secs(3))
        .with_keepalive(None)
        .with_reconnect(ReconnectPolicy {
            initial_delay: Duration::from_millis(20),
            max_delay: Duration::from_millis(100),
            ..Default::default()
        })
}

#[tokio::test]
async fn requests_have_the_shapes_kms_accepts() {
    let f = fake(Arc::new(|req: &Value| {
        let value = match (req["method"].as_str(), req["params"]["operation"].as_str()) {
            (Some("create"), _) => json!("P_kurento.MediaPipeline"),
            (Some("subscribe"), _) => json!("sub-1"),
            (Some("invoke"), Some("getName")) => json!("n"),
            _ => Value::Null,
        };
        vec![answer(req, json!({"sessionId": "S", "value": value}))]
    }))
    .await;
    let kms = KurentoClient::connect_with(config(&f.url)).await.unwrap();
    let p = kms.create_pipeline().await.unwrap();
    assert_eq!(p.id(), "P_kurento.MediaPipeline");
    let _events = p.on::<ErrorEvent>().await;
    p.add_tag("room", "r1").await.unwrap();
    assert_eq!(p.get_name().await.unwrap(), "n");
    p.release().await.unwrap();
    kms.ping().await.unwrap();
    let reqs = f.requests.lock().unwrap().clone();
    let ids: Vec<u64> = reqs.iter().map(|r| r["id"].as_u64().unwrap()).collect();
    assert!(
        ids.windows(2).all(|w| w[0] < w[1]),
        "ids strictly increase: {ids:?}"
    );
    // The first request is a parameterless connect: KMS opens a new session for it.
    assert_eq!(
        reqs[0],
        json!({"jsonrpc": "2.0", "id": ids[0], "method": "connect"})
    );
    let strip_id = |mut r: Value| {
        r.as_object_mut().unwrap().remove("id");
        r
    };
    assert_eq!(
        strip_id(reqs[1].clone()),
        json!({"jsonrpc":"2.0","method":"create","params":{"type":"MediaPipeline","constructorParams":{},"properties":{},"sessionId":"S"}})
    );
    assert_eq!(
        strip_id(reqs[2].clone()),
        json!({"jsonrpc":"2.0","method":"subscribe","params":{"type":"Error","object":"P_kurento.MediaPipeline","sessionId":"S"}})
    );
    assert_eq!(
        strip_id(reqs[3].clone()),
        json!({"jsonrpc":"2.0","method":"invoke","params":{"object":"P_kurento.MediaPipeline","operation":"addTag","operationParams":{"key":"room","value":"r1"},"sessionId":"S"}})
    );
    assert_eq!(
        strip_id(reqs[4].clone()),
        json!({"jsonrpc":"2.0","method":"invoke","params":{"object":"P_kurento.MediaPipeline","operation":"getName","operationParams":{},"sessionId":"S"}})
    );
    assert_eq!(
        strip_id(reqs[5].clone()),
        json!({"jsonrpc":"2.0","method":"release","params":{"object":"P_kurento.MediaPipeline","sessionId":"S"}})
    );
    assert_eq!(
        strip_id(reqs[6].clone()),
        json!({"jsonrpc":"2.0","method":"ping","params":{"interval":240000,"sessionId":"S"}})
    );
}

#[tokio::test]
async fn hostile_frames_give_errors_and_counters_not_panics() {
    let f = fake(Arc::new(|req: &Value| {
        let op = req["params"]["operation"].as_str().unwrap_or_default();
        let id = req["id"].clone();
        let mut out = vec![
            Message::text("{not json"),
            Message::text("[1,2,3]"),
            Message::text(json!({"jsonrpc":"2.0","id": 999_999,"result":{"value":1}}).to_string()),
            Message::text(json!({"jsonrpc":"2.0","id": "abc","result":{}}).to_string()),
            Message::text(json!({"jsonrpc":"2.0","id": id,"error":"boom"}).to_string()),
            Message::text(
                json!({"jsonrpc":"2.0","method":"onEvent","params":{"value":7}}).to_string(),
            ),
            Message::binary(vec![0u8; 64]),
            // 10 MB of garbage within the frame limit.
            Message::text("x".repeat(10 << 20)),
        ];
        let value = match op {
            // A wrong type for a typed call.
            "getName" => json!(42),
            _ => json!("pong"),
        };
        out.push(Message::text(
            json!({"jsonrpc":"2.0","id": id,"result":{"value": value, "sessionId":"S"}})
                .to_string(),
        ));
        out
    }))
    .await;
    let kms = KurentoClient::connect_with(config(&f.url)).await.unwrap();
    kms.ping()
        .await
        .expect("the real answer still arrives after the garbage");
    let p: MediaPipeline = kms.object("P_kurento.MediaPipeline").unwrap();
    let err = p.get_name().await.unwrap_err();
    assert!(matches!(err, Error::UnexpectedResponse { .. }), "{err}");
    let stats = kms.stats();
    // Per request: not-JSON, array, the bad `id`, the bad `error`, the bad event, binary, 10 MB garbage.
    assert!(stats.decode_errors >= 14, "{stats:?}");
    assert!(stats.unknown_responses >= 2, "{stats:?}");
    assert!(kms.state().borrow().is_connected());
}

#[tokio::test]
async fn an_oversized_frame_drops_the_socket_and_the_client_reconnects() {
    let f = fake(Arc::new(|req: &Value| {
        if req["params"]["operation"] == "getName" {
            vec![Message::text(format!("\"{}\"", "y".repeat(2 << 20)))]
        } else {
            vec![answer(req, json!({"sessionId": "S", "value": "pong"}))]
        }
    }))
    .await;
    let kms = KurentoClient::connect_with(config(&f.url).with_max_message_size(1 << 20))
        .await
        .unwrap();
    let p: MediaPipeline = kms.object("P_kurento.MediaPipeline").unwrap();
    let err = p.get_name().await.unwrap_err();
    assert!(matches!(err, Error::ConnectionLost { .. }), "{err}");
    let mut rx = kms.state();
    tokio::time::timeout(
        Duration::from_secs(5),
        rx.wait_for(
            |s| matches!(s, ConnectionState::Connected { generation, .. } if *generation >= 2),
        ),
    )
    .await
    .unwrap()
    .unwrap();
    kms.ping().await.unwrap();
}

#[tokio::test]
async fn a_6x_server_gets_the_old_event_name() {
    let f = fake(Arc::new(|req: &Value| {
        let id = req["id"].clone();
        match (req["method"].as_str(), req["params"]["type"].as_str()) {
            (Some("subscribe"), Some("IceCandidateFound")) => vec![Message::text(
                json!({"jsonrpc":"2.0","id":id,"error":{"code":40106,"message":"Event 'IceCandidateFound' not supported","data":{"type":"MEDIA_OBJECT_EVENT_NOT_SUPPORTED"}}}).to_string(),
            )],
            (Some("subscribe"), Some("OnIceCandidate")) => vec![
                answer(req, json!({"sessionId": "S", "value": "sub-6x"})),
                Message::text(json!({"jsonrpc":"2.0","method":"onEvent","params":{"value":{"data":{
                    "candidate":{"__module__":"kurento","__type__":"IceCandidate","candidate":"candidate:1 1 UDP 2015363583 127.0.0.1 40150 typ host","sdpMLineIndex":0,"sdpMid":"audio0"},
                    "source":"P/W_kurento.WebRtcEndpoint","tags":[],"timestamp":"1796010846","timestampMillis":"1796010846163","type":"OnIceCandidate"},
                    "object":"P/W_kurento.WebRtcEndpoint","type":"OnIceCandidate"}}}).to_string()),
            ],
            _ => vec![answer(req, json!({"sessionId": "S"}))],
        }
    }))
    .await;
    let kms = KurentoClient::connect_with(config(&f.url)).await.unwrap();
    let ep: WebRtcEndpoint = kms.object("P/W_kurento.WebRtcEndpoint").unwrap();
    let mut found = ep.on::<IceCandidateFound>().await.unwrap();
    let ev = tokio::time::timeout(Duration::from_secs(3), found.recv())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(ev.candidate.sdp_mid, "audio0");
    assert_eq!(ev.candidate.sdp_m_line_index, 0);
    assert!(ev.candidate.candidate.contains("typ host"));
    let _ = ErrorCode::MediaObjectEventNotSupported;
}
