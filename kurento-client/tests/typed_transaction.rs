//! Typed calls inside a transaction (`tx.on(&object).operation(..)`): the exact operations they
//! send, and the same transaction run against the KMS simulator with its answers read back typed.

use std::time::Duration;

use kms_sim::{Scenario, SimOptions, SimServer};
use kurento_client::prelude::*;
use kurento_client::{ConnectOptions, Error, ErrorCode};
use serde_json::json;

const OFFER: &str = "v=0\r\no=- 0 0 IN IP4 127.0.0.1\r\ns=t\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=video 49170 RTP/AVPF 96\r\na=rtpmap:96 VP8/90000\r\na=recvonly\r\n";

async fn sim() -> SimServer {
    SimServer::start(SimOptions {
        listen: ([127, 0, 0, 1], 0).into(),
        scenario: Scenario::default(),
        announce_ip: Some([127, 0, 0, 1].into()),
        port_range: (41000, 45999),
        ..Default::default()
    })
    .await
    .expect("simulator starts")
}

async fn client(server: &SimServer) -> KurentoClient {
    KurentoClient::connect_with(
        ClientConfig::new(server.url()).with_request_timeout(Duration::from_secs(5)),
    )
    .await
    .unwrap()
}

#[tokio::test]
async fn typed_calls_send_exactly_the_expected_operations_and_decode_their_answers() {
    let server = sim().await;
    let kms = client(&server).await;
    let p = kms.create_pipeline().await.unwrap();
    let publisher = p.create::<WebRtcEndpoint>().await.unwrap();

    let mut tx = kms.transaction();
    let tap = tx.create(RtpEndpoint::builder(&p)).unwrap();
    // Targets and object parameters: a TxRef or an existing object; each class gets the
    // operations of its ancestors (addTag/setName from MediaObject, connect from MediaElement,
    // processOffer from SdpEndpoint).
    let tagged = tx.on(&tap).add_tag("kurento-tap.room", "r1");
    tx.on(&tap).set_name("tap-r1");
    tx.on(&publisher).connect(&tap, MediaType::Audio);
    tx.on(&publisher).connect(
        &tap,
        ConnectOptions {
            media_type: Some(MediaType::Video),
            ..Default::default()
        },
    );
    let answer = tx.on(&tap).process_offer(OFFER);
    let name = tx.on(&tap).get_name();
    let pipeline = tx.on(&tap).get_media_pipeline();
    let source_links = tx.on(&tap).get_source_connections(());

    assert_eq!(
        (tap.index(), tagged.index(), answer.index(), name.index()),
        (0, 1, 5, 6)
    );
    assert_eq!(answer.operation(), "processOffer");
    let invoke = |i: usize, object: &str, operation: &str, params: serde_json::Value| {
        json!({"jsonrpc": "2.0", "id": i, "method": "invoke",
               "params": {"object": object, "operation": operation, "operationParams": params}})
    };
    let expected = vec![
        json!({"jsonrpc": "2.0", "id": 0, "method": "create",
               "params": {"type": "RtpEndpoint", "constructorParams": {"mediaPipeline": p.id()},
                          "properties": {}}}),
        invoke(
            1,
            "newref:0",
            "addTag",
            json!({"key": "kurento-tap.room", "value": "r1"}),
        ),
        invoke(2, "newref:0", "setName", json!({"name": "tap-r1"})),
        invoke(
            3,
            publisher.id(),
            "connect",
            json!({"sink": "newref:0", "mediaType": "AUDIO"}),
        ),
        invoke(
            4,
            publisher.id(),
            "connect",
            json!({"sink": "newref:0", "mediaType": "VIDEO"}),
        ),
        invoke(5, "newref:0", "processOffer", json!({"offer": OFFER})),
        invoke(6, "newref:0", "getName", json!({})),
        invoke(7, "newref:0", "getMediaPipeline", json!({})),
        invoke(8, "newref:0", "getSourceConnections", json!({})),
    ];
    assert_eq!(tx.operations(), expected.as_slice());

    // The escape hatch sends the same thing for the same call.
    let mut raw = kms.transaction();
    let raw_tap = raw.create(RtpEndpoint::builder(&p)).unwrap();
    raw.invoke(
        &raw_tap,
        "addTag",
        json!({"key": "kurento-tap.room", "value": "r1"}),
    );
    assert_eq!(raw.operations(), &expected[..2]);

    let results = tx.commit().await.unwrap();
    results.check().unwrap();
    let tap = results.object(&tap).unwrap();
    results.get(tagged).unwrap();
    let answer: String = results.get(answer).unwrap();
    assert!(answer.contains("VP8"), "{answer}");
    assert_eq!(results.get(name).unwrap(), "tap-r1");
    let pipeline: MediaPipeline = results.get(pipeline).unwrap();
    assert_eq!(pipeline, p);
    let links: Vec<ElementConnectionData> = results.get(source_links).unwrap();
    assert!(
        links.iter().all(|l| l.source == publisher.id()),
        "{links:?}"
    );
    assert!(
        links.iter().any(|l| l.r#type == MediaType::Video),
        "{links:?}"
    );

    // The server did what the operations said.
    assert_eq!(tap.get_tag("kurento-tap.room").await.unwrap(), "r1");
    assert_eq!(tap.get_name().await.unwrap(), "tap-r1");
    tap.release().await.unwrap();
}

#[tokio::test]
async fn typed_results_say_which_operation_failed_and_which_did_not_run() {
    let server = sim().await;
    let kms = client(&server).await;
    let p = kms.create_pipeline().await.unwrap();

    let mut tx = kms.transaction();
    let extra = tx.create(RtpEndpoint::builder(&p)).unwrap();
    let missing = tx.on(&extra).get_tag("no-such-tag");
    let after = tx.on(&extra).add_tag("k", "v");
    let results = tx.commit().await.unwrap();

    match results.get(missing).unwrap_err() {
        Error::TransactionFailed { index, error } => {
            assert_eq!(index, 1);
            assert_eq!(error.code, ErrorCode::MediaObjectTagKeyNotFound);
        }
        other => panic!("{other}"),
    }
    let not_run = results.get(after).unwrap_err();
    assert!(
        matches!(
            &not_run,
            Error::TransactionNotRun { index: 2, operation, failed_at: Some(1) } if operation == "addTag"
        ),
        "{not_run:?}"
    );
    assert_eq!(
        not_run.to_string(),
        "transaction operation 2 (addTag) did not run: the transaction stopped at operation 1, which failed"
    );
    // What was created before the failure can be released.
    results.object(&extra).unwrap().release().await.unwrap();
}
