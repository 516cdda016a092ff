use super::*;
use std::collections::HashMap;
use std::time::{Duration, Instant};

const PUB: &str = "0b9e_kurento.MediaPipeline/77a1_kurento.WebRtcEndpoint";

#[test]
fn publisher_names_as_generate_stream_id_makes_them() {
    // KurentoParticipant.generateStreamId: "str_" + type[0..3] + "_" + 1 upper letter +
    // 3 alphanumerics + "_" + connectionId ("con_" + 1 upper letter + 9 alphanumerics).
    let n = classify(PUB, "str_CAM_Xk9q_con_Ab12CdEf34");
    assert_eq!(
        n,
        Named::Publisher(StreamId {
            id: "str_CAM_Xk9q_con_Ab12CdEf34".into(),
            kind: StreamKind::Camera,
            connection: "con_Ab12CdEf34".into(),
        })
    );
    let kinds = [
        ("str_SCR_Qw3e_con_Zz00000000", StreamKind::Screen),
        ("str_MIC_Rt5y_con_Zz00000000", StreamKind::Audio),
        ("str_CUS_Ui7o_con_Zz00000000", StreamKind::Custom),
        ("str_IPC_Pa1s_ipc_IPCAM_rtsp_192_168_1_2", StreamKind::IpCam),
    ];
    for (name, kind) in kinds {
        match classify(PUB, name) {
            Named::Publisher(s) => assert_eq!(s.kind, kind, "{name}"),
            other => panic!("{name}: {other:?}"),
        }
    }
    // A custom connection id (openviduCustomConnectionId: [A-Za-z0-9_] after "con_").
    match classify(PUB, "str_CAM_Ab1c_con_my_custom_id") {
        Named::Publisher(s) => assert_eq!(s.connection, "con_my_custom_id"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn subscriber_names_are_the_receiver_then_the_stream() {
    // KurentoParticipant.calculateSubscriberEndpointName.
    let n = classify(PUB, "con_Rcv0000001_str_CAM_Xk9q_con_Ab12CdEf34");
    assert_eq!(
        n,
        Named::Subscriber {
            connection: "con_Rcv0000001".into(),
            stream: parse_stream_id("str_CAM_Xk9q_con_Ab12CdEf34").unwrap(),
        }
    );
    // A custom receiver id holding "_str_" is still split where both halves are valid.
    match classify(PUB, "con_a_str_b_str_SCR_Zz9z_con_X000000000") {
        Named::Subscriber { connection, stream } => {
            assert_eq!(connection, "con_a_str_b");
            assert_eq!(stream.kind, StreamKind::Screen);
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_name_equal_to_the_id_is_not_yet_known_and_others_are_not_openvidu() {
    assert_eq!(classify(PUB, PUB), Named::NotNamedYet);
    assert_eq!(classify(PUB, ""), Named::NotNamedYet);
    for bad in [
        "alice",
        "str_",
        "str_CAM",
        "str_CAM_Xk9q",
        "str_CAM_Xk9_con_Ab12CdEf34",   // 3 random chars
        "str_CAM_Xk9q!_con_Ab12CdEf34", // 5, one not alphanumeric
        "str_VID_Xk9q_con_Ab12CdEf34",  // unknown type
        "str_CAM_Xk9q_usr_Ab12CdEf34",  // not a connection id
        "str_CAM_Xk9q_con_",            // empty connection id
        "str_CAM_Xk9q_con_a.b",         // non-word character
        "str_CAM_Xk9q_con_a b",
        "con_A_str_CAM_Xk9q",
        "con_A_",
        "_str_CAM_Xk9q_con_Ab12CdEf34",
        "str_CAM_Xk9q_con_Ab12CdEf34\n",
        "str_CAM_Xk9q_con_Ab12CdEf34\u{0}",
    ] {
        assert!(
            matches!(classify(PUB, bad), Named::Unrecognised(_)),
            "{bad:?}: {:?}",
            classify(PUB, bad)
        );
    }
    let long = format!("str_CAM_Xk9q_con_{}", "a".repeat(300));
    assert_eq!(classify(PUB, &long), Named::Unrecognised("name too long"));
}

fn sinks(pairs: &[(&str, &[&str])]) -> HashMap<String, Vec<String>> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.iter().map(|s| s.to_string()).collect()))
        .collect()
}

#[test]
fn the_passthrough_is_found_directly_or_behind_filters() {
    let pt = "p/2_kurento.PassThrough";
    let filter = "p/3_kurento.FaceOverlayFilter";
    let gst = "p/4_kurento.GStreamerFilter";
    // PublisherEndpoint.innerConnect: webrtc -> passThru (one entry per media type).
    let s = sinks(&[(PUB, &[pt, pt, pt])]);
    assert_eq!(
        find_passthrough(PUB, &s),
        PassThroughSearch::Found {
            passthrough: pt.into(),
            filters: vec![]
        }
    );
    // apply(filter): webrtc -> filter -> passThru; the filter's sinks are needed first.
    let s = sinks(&[(PUB, &[filter])]);
    assert_eq!(
        find_passthrough(PUB, &s),
        PassThroughSearch::Need(filter.into())
    );
    let s = sinks(&[(PUB, &[filter]), (filter, &[gst]), (gst, &[pt])]);
    assert_eq!(
        find_passthrough(PUB, &s),
        PassThroughSearch::Found {
            passthrough: pt.into(),
            filters: vec![filter.into(), gst.into()]
        }
    );
    // Muted (disconnected from its PassThrough), or feeding only endpoints: not connected.
    assert_eq!(
        find_passthrough(PUB, &sinks(&[(PUB, &[])])),
        PassThroughSearch::NotConnected
    );
    let sub = "p/9_kurento.WebRtcEndpoint";
    let rec = "p/8_kurento.RecorderEndpoint";
    assert_eq!(
        find_passthrough(PUB, &sinks(&[(PUB, &[sub, rec])])),
        PassThroughSearch::NotConnected
    );
    // A filter loop ends.
    let s = sinks(&[(PUB, &[filter]), (filter, &[gst]), (gst, &[filter])]);
    assert_eq!(find_passthrough(PUB, &s), PassThroughSearch::NotConnected);
    // Too deep.
    let fs: Vec<String> = (0..6)
        .map(|i| format!("p/f{i}_kurento.GStreamerFilter"))
        .collect();
    let mut m = HashMap::new();
    m.insert(PUB.to_owned(), vec![fs[0].clone()]);
    for w in fs.windows(2) {
        m.insert(w[0].clone(), vec![w[1].clone()]);
    }
    m.insert(fs[5].clone(), vec![pt.to_owned()]);
    assert_eq!(find_passthrough(PUB, &m), PassThroughSearch::NotConnected);
}

#[test]
fn classes_from_ids() {
    assert_eq!(
        class_of("a_kurento.MediaPipeline/b_kurento.PassThrough"),
        "PassThrough"
    );
    assert_eq!(class_of("a/b_chroma.ChromaFilter"), "ChromaFilter");
    assert_eq!(class_of("garbage"), "");
}

const SESSIONS: &str = r#"{"numberOfElements":2,"content":[
  {"id":"ses_Standup","object":"session","sessionId":"ses_Standup","createdAt":1,"recording":false,
   "connections":{"numberOfElements":3,"content":[
     {"id":"con_Ab12CdEf34","object":"connection","status":"active","sessionId":"ses_Standup",
      "clientData":"{\"clientData\":\"Alice\"}","serverData":"{\"role\":\"host\"}",
      "publishers":[{"createdAt":5,"streamId":"str_CAM_Xk9q_con_Ab12CdEf34",
         "mediaOptions":{"hasAudio":true,"audioActive":true,"hasVideo":true,"videoActive":true,"typeOfVideo":"CAMERA","frameRate":30,"videoDimensions":"{}","filter":{}}}],
      "subscribers":[]},
     {"id":"con_Bob0000000","status":"active","clientData":"Bob \u0007 Builder",
      "publishers":[{"streamId":"str_SCR_Zz9z_con_Bob0000000","mediaOptions":{"hasVideo":true,"typeOfVideo":"SCREEN"}},
                    {"streamId":"str_CAM_Zz9z_con_SOMEONE_ELSE"}]},
     {"id":"tok_not_a_connection","publishers":[]},
     {"id":"con_Pending000","status":"pending","clientData":null,"publishers":null}
   ]}},
  {"id":"bad session id!","connections":{"content":[]}},
  {"no":"id"}
]}"#;

#[test]
fn sessions_give_rooms_and_display_names_by_stream() {
    let d = parse_sessions(SESSIONS.as_bytes()).unwrap();
    assert_eq!(d.sessions, 1);
    let alice = &d.streams["str_CAM_Xk9q_con_Ab12CdEf34"];
    assert_eq!(alice.session, "ses_Standup");
    assert_eq!(alice.connection, "con_Ab12CdEf34");
    assert_eq!(alice.display.as_deref(), Some("Alice"));
    assert_eq!(alice.type_of_video.as_deref(), Some("CAMERA"));
    let bob = &d.streams["str_SCR_Zz9z_con_Bob0000000"];
    assert_eq!(bob.display.as_deref(), Some("Bob  Builder"));
    // Another connection's stream under Bob, a token id, two bad sessions: skipped.
    assert!(!d.streams.contains_key("str_CAM_Zz9z_con_SOMEONE_ELSE"));
    assert_eq!(d.skipped, 4);
    assert_eq!(d.connections.len(), 3);
    assert_eq!(d.connections["con_Pending000"], "ses_Standup");
}

#[test]
fn bad_sessions_answers_are_errors_not_panics() {
    for bad in [
        &b""[..],
        b"null",
        b"[]",
        b"{\"content\":7}",
        b"<html>500</html>",
        b"\xff\xfe",
    ] {
        assert!(
            matches!(parse_sessions(bad), Err(RestError::BadAnswer(_))),
            "{:?}",
            String::from_utf8_lossy(bad)
        );
    }
    // Entries of the wrong type are skipped.
    let d = parse_sessions(br#"{"content":[7,"x",{"id":5},{"id":"s","connections":{"content":[null,{"id":"con_X","publishers":[3,{"streamId":9}]}]}}]}"#).unwrap();
    assert_eq!((d.sessions, d.streams.len(), d.skipped), (1, 0, 6));
}

#[test]
fn display_names_are_cleaned_and_bounded() {
    assert_eq!(
        display_name("{\"clientData\":\"Ana\"}").as_deref(),
        Some("Ana")
    );
    assert_eq!(display_name("plain").as_deref(), Some("plain"));
    assert_eq!(
        display_name("{\"other\":1}").as_deref(),
        Some("{\"other\":1}")
    );
    assert_eq!(display_name("  \n\t "), None);
    assert_eq!(
        display_name(&"é".repeat(200)).unwrap().chars().count(),
        MAX_DISPLAY_CHARS
    );
}

#[test]
fn signal_bodies_follow_the_rest_api() {
    let to = vec!["con_Ab12CdEf34".to_owned()];
    let b: serde_json::Value =
        serde_json::from_str(&signal_body("ses_S", Some(&to), "kurento-tap", "{\"a\":1}")).unwrap();
    assert_eq!(b["session"], "ses_S");
    assert_eq!(b["to"][0], "con_Ab12CdEf34");
    assert_eq!(b["type"], "kurento-tap");
    assert_eq!(
        b["data"], "{\"a\":1}",
        "data is a string, as OpenVidu requires"
    );
    let b: serde_json::Value = serde_json::from_str(&signal_body("s", None, "t", "d")).unwrap();
    assert!(b.get("to").is_none(), "no `to`: everyone in the session");
    assert_eq!(
        signal_to(SignalAudience::Participant, "con_A"),
        Some(vec!["con_A".into()])
    );
    assert_eq!(signal_to(SignalAudience::Room, "con_A"), None);
    assert_eq!(
        [200, 400, 401, 404, 406, 500].map(signal_outcome),
        [
            "sent",
            "rejected",
            "unauthorized",
            "no_session",
            "no_connection",
            "http_error"
        ]
    );
}

#[test]
fn http_responses_by_length_chunks_or_close() {
    let r = parse_http_response(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhixx", 100).unwrap();
    assert_eq!((r.status, r.body.as_slice()), (200, &b"hi"[..]));
    let r = parse_http_response(
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3;x=y\r\nabc\r\n2\r\nde\r\n0\r\n\r\n",
        100,
    )
    .unwrap();
    assert_eq!(r.body, b"abcde");
    let r = parse_http_response(b"HTTP/1.0 401 Unauthorized\r\nX: y\r\n\r\nno", 100).unwrap();
    assert_eq!((r.status, r.body.as_slice()), (401, &b"no"[..]));
    for bad in [
        &b""[..],
        b"garbage",
        b"SSH-2.0-OpenSSH\r\n\r\n",
        b"HTTP/1.1 abc OK\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\nshort",
        b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nab",
        b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nbroken header\r\n\r\n",
    ] {
        assert!(
            parse_http_response(bad, 100).is_err(),
            "{:?}",
            String::from_utf8_lossy(bad)
        );
    }
    // Over the cap, whichever way the body comes.
    let big = format!("HTTP/1.1 200 OK\r\n\r\n{}", "x".repeat(200));
    assert!(parse_http_response(big.as_bytes(), 100).is_err());
    let chunks = format!(
        "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n{}",
        "40\r\n".to_owned() + &"y".repeat(64) + "\r\n"
    )
    .repeat(1)
        + "40\r\n"
        + &"y".repeat(64)
        + "\r\n0\r\n\r\n";
    assert!(parse_http_response(chunks.as_bytes(), 100).is_err());
}

#[test]
fn base_urls() {
    assert_eq!(
        parse_base_url("http://127.0.0.1:5443").unwrap(),
        ("127.0.0.1".into(), 5443, "".into())
    );
    assert_eq!(
        parse_base_url("http://openvidu.local/prefix/").unwrap(),
        ("openvidu.local".into(), 80, "/prefix".into())
    );
    for bad in [
        "https://x:443",
        "ftp://x",
        "http://OPENVIDUAPP:secret@x:5443",
        "http://x:99999",
        "http://",
        "http://x y:1",
        "http://x:1/a?b",
    ] {
        assert!(parse_base_url(bad).is_err(), "{bad}");
    }
}

#[test]
fn the_status_backs_off_while_down_and_reports_changes_once() {
    let t0 = Instant::now();
    let mut s = RestStatus::new(Duration::from_secs(5), Duration::from_secs(60));
    assert!(s.due(t0));
    assert!(
        !s.up() && s.names_may_come(),
        "not asked yet: names may come"
    );
    assert_eq!(s.record(Ok(()), t0), Some(RestState::Up));
    assert!(s.names_may_come());
    assert!(!s.due(t0 + Duration::from_secs(4)) && s.due(t0 + Duration::from_secs(5)));
    assert_eq!(s.record(Ok(()), t0), None, "still up: nothing to report");
    let e = || Err(RestError::Unreachable("refused".into()));
    assert!(matches!(s.record(e(), t0), Some(RestState::Down(_))));
    assert!(
        !s.names_may_come(),
        "down: tap under connection ids at once"
    );
    assert_eq!(s.next_at(), Some(t0 + Duration::from_secs(10)));
    assert_eq!(s.record(e(), t0), None, "the same failure is reported once");
    assert_eq!(s.next_at(), Some(t0 + Duration::from_secs(20)));
    for _ in 0..10 {
        s.record(e(), t0);
    }
    assert_eq!(s.next_at(), Some(t0 + Duration::from_secs(60)), "capped");
    // Down: a hurry does not shorten the backoff.
    s.hurry(t0);
    assert!(!s.due(t0));
    // Another failure kind is reported.
    assert!(matches!(
        s.record(Err(RestError::Unauthorized(401)), t0),
        Some(RestState::Down(RestError::Unauthorized(401)))
    ));
    assert!(!s.up());
    assert_eq!(s.record(Ok(()), t0), Some(RestState::Up));
    assert!(s.up());
    // Up: a hurry brings the next refresh forward.
    s.hurry(t0 + Duration::from_secs(1));
    assert!(s.due(t0 + Duration::from_secs(1)));
}
