//! The simulator's conformance to KMS 7.3: one scripted JSON-RPC exchange, run against kms-sim and
//! against a real KMS on the same wire; the answers and events are normalised (ids, sessions, times,
//! ports) and compared step by step. A difference not in [`KNOWN_DIFFERENCES`] fails the test: the
//! simulator is corrected, or the difference is understood, listed there and in docs/simulator.md.
//!
//! [`assert_simulator_matches`] is the whole check; [`run`] and [`differences`] are its parts.

use std::collections::HashMap;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

/// Differences between kms-sim and KMS 7.3 in the scripted exchange that are understood (each step
/// prefix with why it does not matter to any client); docs/simulator.md lists them too.
pub const KNOWN_DIFFERENCES: &[(&str, &str)] = &[
    (
        "getInfo: answer.result.value.modules",
        "the simulator carries the three modules the client is generated from (core, elements, \
         filters) with its own version and build time; this KMS build also has chroma and \
         datachannelexample",
    ),
    (
        "getInfo: answer.result.value.version",
        "the simulator names itself in its version (7.3.0~kms-sim-…), so a log tells which server answered",
    ),
];

/// Starts a kms-sim (no rooms) on `sim_ports`, runs the script against the KMS at `kms_url` and
/// then against the simulator, prints every difference, and fails on one not in
/// [`KNOWN_DIFFERENCES`], or when the exchange did not run to its end on KMS.
pub async fn assert_simulator_matches(kms_url: &str, sim_ports: (u16, u16)) {
    let sim = kms_sim::SimServer::start(kms_sim::SimOptions {
        scenario: kms_sim::Scenario::default(),
        announce_ip: Some([127, 0, 0, 1].into()),
        port_range: sim_ports,
        ..Default::default()
    })
    .await
    .unwrap();
    let real = run(kms_url).await;
    let simulated = run(&sim.url()).await;
    let diffs = differences(&real, &simulated);
    for d in &diffs {
        eprintln!("{d}");
    }
    let unexplained = unexplained(&diffs);
    assert!(
        unexplained.is_empty(),
        "the simulator answers differently from KMS 7.3:\n{}",
        unexplained
            .iter()
            .map(|s| s.as_str())
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert_eq!(real.len(), simulated.len());
    assert!(real.len() >= 35, "the exchange ran to its end on KMS");
}

/// The differences not in [`KNOWN_DIFFERENCES`].
pub fn unexplained(diffs: &[String]) -> Vec<&String> {
    diffs
        .iter()
        .filter(|d| {
            !KNOWN_DIFFERENCES
                .iter()
                .any(|(step, _)| d.starts_with(step))
        })
        .collect()
}

/// What one step got: its answer, and the events that arrived until the next step's answer.
pub struct Step {
    pub label: &'static str,
    pub answer: Value,
    pub events: Vec<Value>,
}

const OFFER: &str =
    "v=0\r\no=- 0 0 IN IP4 127.0.0.1\r\ns=kurento-tap\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n\
m=audio 44000 RTP/AVPF 96\r\na=rtpmap:96 opus/48000/2\r\na=rtcp:44001\r\na=recvonly\r\n\
m=video 44002 RTP/AVPF 97 98\r\na=rtpmap:97 VP8/90000\r\na=rtpmap:98 H264/90000\r\n\
a=fmtp:98 packetization-mode=1;profile-level-id=42e01f\r\na=rtcp-fb:97 nack pli\r\n\
a=rtcp-fb:98 nack pli\r\na=rtcp:44003\r\na=recvonly\r\n";

/// The same offer encrypted (SDES, our key: 30 bytes of 0x2a).
const SRTP_OFFER: &str =
    "v=0\r\no=- 0 0 IN IP4 127.0.0.1\r\ns=kurento-tap\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n\
m=audio 44000 RTP/SAVPF 96\r\na=rtpmap:96 opus/48000/2\r\na=rtcp:44001\r\n\
a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:KioqKioqKioqKioqKioqKioqKioqKioqKioqKioq\r\na=recvonly\r\n\
m=video 44002 RTP/SAVPF 97\r\na=rtpmap:97 VP8/90000\r\na=rtcp-fb:97 nack pli\r\na=rtcp:44003\r\n\
a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:KioqKioqKioqKioqKioqKioqKioqKioqKioqKioq\r\na=recvonly\r\n";

/// The script: method and params, with `$name` standing for the object a `create` named.
fn script() -> Vec<(&'static str, &'static str, Value)> {
    let inv = |object: &str, operation: &str, params: Value| json!({"object": object, "operation": operation, "operationParams": params});
    vec![
        ("ping", "ping", json!({"interval": 240000})),
        (
            "create pipeline",
            "create",
            json!({"type": "MediaPipeline", "constructorParams": {}, "properties": {}}),
        ),
        (
            "create webrtc",
            "create",
            json!({"type": "WebRtcEndpoint", "constructorParams": {"mediaPipeline": "$pipeline"}, "properties": {}}),
        ),
        (
            "create rtp",
            "create",
            json!({"type": "RtpEndpoint", "constructorParams": {"mediaPipeline": "$pipeline"}, "properties": {}}),
        ),
        (
            "create unknown type",
            "create",
            json!({"type": "NoSuchElement", "constructorParams": {"mediaPipeline": "$pipeline"}, "properties": {}}),
        ),
        ("describe rtp", "describe", json!({"object": "$rtp"})),
        (
            "subscribe ElementConnected on the sink",
            "subscribe",
            json!({"object": "$rtp", "type": "ElementConnected"}),
        ),
        (
            "subscribe ElementConnected on the source",
            "subscribe",
            json!({"object": "$webrtc", "type": "ElementConnected"}),
        ),
        (
            "subscribe ElementDisconnected on the sink",
            "subscribe",
            json!({"object": "$rtp", "type": "ElementDisconnected"}),
        ),
        (
            "subscribe ElementDisconnected on the source",
            "subscribe",
            json!({"object": "$webrtc", "type": "ElementDisconnected"}),
        ),
        (
            "subscribe unknown event",
            "subscribe",
            json!({"object": "$rtp", "type": "NoSuchEvent"}),
        ),
        (
            "subscribe ObjectCreated",
            "subscribe",
            json!({"object": "manager_ServerManager", "type": "ObjectCreated"}),
        ),
        (
            "subscribe ObjectDestroyed",
            "subscribe",
            json!({"object": "manager_ServerManager", "type": "ObjectDestroyed"}),
        ),
        (
            "addTag",
            "invoke",
            inv(
                "$rtp",
                "addTag",
                json!({"key": "kurento-tap.owner", "value": "conformance"}),
            ),
        ),
        ("getTags", "invoke", inv("$rtp", "getTags", json!({}))),
        (
            "getTag missing",
            "invoke",
            inv("$rtp", "getTag", json!({"key": "absent"})),
        ),
        (
            "setName",
            "invoke",
            inv("$rtp", "setName", json!({"name": "tap"})),
        ),
        ("getName", "invoke", inv("$rtp", "getName", json!({}))),
        (
            "connect video",
            "invoke",
            inv(
                "$webrtc",
                "connect",
                json!({"sink": "$rtp", "mediaType": "VIDEO"}),
            ),
        ),
        (
            "getSourceConnections",
            "invoke",
            inv("$rtp", "getSourceConnections", json!({})),
        ),
        (
            "getSinkConnections",
            "invoke",
            inv("$webrtc", "getSinkConnections", json!({})),
        ),
        (
            "getChildren",
            "invoke",
            inv("$pipeline", "getChildren", json!({})),
        ),
        (
            "getMediaPipeline",
            "invoke",
            inv("$rtp", "getMediaPipeline", json!({})),
        ),
        ("getParent", "invoke", inv("$rtp", "getParent", json!({}))),
        (
            "isMediaFlowingIn",
            "invoke",
            inv("$rtp", "isMediaFlowingIn", json!({"mediaType": "VIDEO"})),
        ),
        (
            "getRemoteSessionDescriptor early",
            "invoke",
            inv("$rtp", "getRemoteSessionDescriptor", json!({})),
        ),
        (
            "getLocalSessionDescriptor early",
            "invoke",
            inv("$rtp", "getLocalSessionDescriptor", json!({})),
        ),
        (
            "unknown operation",
            "invoke",
            inv("$rtp", "noSuchOperation", json!({})),
        ),
        (
            "unknown object",
            "invoke",
            inv(
                "0b7a2c9e-0000-4000-8000-000000000000_kurento.MediaPipeline",
                "getName",
                json!({}),
            ),
        ),
        (
            "processOffer",
            "invoke",
            inv("$rtp", "processOffer", json!({"offer": OFFER})),
        ),
        (
            "processOffer again",
            "invoke",
            inv("$rtp", "processOffer", json!({"offer": OFFER})),
        ),
        (
            "create srtp",
            "create",
            json!({"type": "RtpEndpoint", "constructorParams": {"mediaPipeline": "$pipeline", "crypto": {"crypto": "AES_128_CM_HMAC_SHA1_80"}}, "properties": {}}),
        ),
        (
            "processOffer srtp",
            "invoke",
            inv("$srtp", "processOffer", json!({"offer": SRTP_OFFER})),
        ),
        (
            "create srtp2",
            "create",
            json!({"type": "RtpEndpoint", "constructorParams": {"mediaPipeline": "$pipeline", "crypto": {"crypto": "AES_256_CM_HMAC_SHA1_80"}}, "properties": {}}),
        ),
        (
            "processOffer with another suite",
            "invoke",
            inv("$srtp2", "processOffer", json!({"offer": SRTP_OFFER})),
        ),
        (
            "create srtp with a short key",
            "create",
            json!({"type": "RtpEndpoint", "constructorParams": {"mediaPipeline": "$pipeline", "crypto": {"crypto": "AES_128_CM_HMAC_SHA1_80", "key": "short"}}, "properties": {}}),
        ),
        (
            "create rtp3",
            "create",
            json!({"type": "RtpEndpoint", "constructorParams": {"mediaPipeline": "$pipeline"}, "properties": {}}),
        ),
        (
            "processOffer srtp to a plain endpoint",
            "invoke",
            inv("$rtp3", "processOffer", json!({"offer": SRTP_OFFER})),
        ),
        (
            "transaction",
            "transaction",
            json!({"operations": [
                {"jsonrpc": "2.0", "id": 0, "method": "create", "params": {"type": "PassThrough", "constructorParams": {"mediaPipeline": "$pipeline"}, "properties": {}}},
                {"jsonrpc": "2.0", "id": 1, "method": "invoke", "params": {"object": "newref:0", "operation": "getName", "operationParams": {}}}
            ]}),
        ),
        (
            "disconnect video",
            "invoke",
            inv(
                "$webrtc",
                "disconnect",
                json!({"sink": "$rtp", "mediaType": "VIDEO"}),
            ),
        ),
        ("release rtp", "release", json!({"object": "$rtp"})),
        ("release rtp again", "release", json!({"object": "$rtp"})),
        (
            "getName released",
            "invoke",
            inv("$rtp", "getName", json!({})),
        ),
        (
            "release pipeline",
            "release",
            json!({"object": "$pipeline"}),
        ),
        (
            "getPipelines",
            "invoke",
            inv("manager_ServerManager", "getPipelines", json!({})),
        ),
        (
            "getInfo",
            "invoke",
            inv("manager_ServerManager", "getInfo", json!({})),
        ),
    ]
}

fn substitute(v: &Value, names: &HashMap<String, String>) -> Value {
    match v {
        Value::String(s) if s.starts_with('$') => {
            Value::String(names.get(&s[1..]).cloned().unwrap_or_else(|| s.clone()))
        }
        Value::Array(a) => Value::Array(a.iter().map(|x| substitute(x, names)).collect()),
        Value::Object(o) => Value::Object(
            o.iter()
                .map(|(k, x)| (k.clone(), substitute(x, names)))
                .collect(),
        ),
        other => other.clone(),
    }
}

/// Runs the script against the server at `url`, one request at a time.
pub async fn run(url: &str) -> Vec<Step> {
    let (mut ws, _) = tokio_tungstenite::connect_async(url)
        .await
        .unwrap_or_else(|e| panic!("connect to {url}: {e}"));
    let mut names: HashMap<String, String> = HashMap::new();
    let mut session: Option<String> = None;
    let mut steps = Vec::new();
    let mut pending_events: Vec<Value> = Vec::new();
    for (id, (label, method, params)) in script().into_iter().enumerate() {
        let mut params = substitute(&params, &names);
        if let (Some(s), Some(o)) = (&session, params.as_object_mut()) {
            if method != "ping" {
                o.insert("sessionId".into(), Value::String(s.clone()));
            }
        }
        let frame = json!({"jsonrpc": "2.0", "id": id + 1, "method": method, "params": params});
        ws.send(Message::text(frame.to_string())).await.unwrap();
        let answer = loop {
            let msg = tokio::time::timeout(Duration::from_secs(10), ws.next())
                .await
                .unwrap_or_else(|_| panic!("{url}: no answer to {label}"));
            let Some(Ok(Message::Text(t))) = msg else {
                continue;
            };
            let v: Value = serde_json::from_str(t.as_str()).unwrap();
            if v.get("id").is_some() {
                break v;
            }
            pending_events.push(v);
        };
        if let Some(s) = answer["result"]["sessionId"].as_str() {
            session.get_or_insert_with(|| s.to_owned());
        }
        if let (Some(name), Some(v)) = (
            label.strip_prefix("create "),
            answer["result"]["value"].as_str(),
        ) {
            names.insert(name.to_owned(), v.to_owned());
        }
        // Events raised by this step (KMS raises some after it answered).
        let settle = tokio::time::Instant::now() + Duration::from_millis(300);
        while let Ok(Some(Ok(msg))) = tokio::time::timeout_at(settle, ws.next()).await {
            if let Message::Text(t) = msg {
                pending_events.push(serde_json::from_str(t.as_str()).unwrap());
            }
        }
        // Events of one step in a canonical order (KMS raises them from several threads).
        let mut events: Vec<Value> = pending_events
            .drain(..)
            .map(|e| normalise(&e, &names, session.as_deref()))
            .collect();
        events.sort_by_key(|e| e.to_string());
        steps.push(Step {
            label,
            answer: normalise(&answer, &names, session.as_deref()),
            events,
        });
    }
    steps
}

/// Object ids become the script's names, other ids `<id>`, sessions `<session>`, times `<t>`,
/// SDP a summary of what a client reads from it.
fn normalise(v: &Value, names: &HashMap<String, String>, session: Option<&str>) -> Value {
    match v {
        Value::String(s) => {
            if Some(s.as_str()) == session {
                return json!("<session>");
            }
            if let Some((name, _)) = names.iter().find(|(_, id)| *id == s) {
                return Value::String(format!("${name}"));
            }
            if s.starts_with("v=0") {
                return Value::String(sdp_summary(s));
            }
            if s.contains("_kurento.") {
                let ty = s.rsplit('.').next().unwrap_or("");
                return Value::String(format!("<id of {ty}>"));
            }
            if is_uuid(s) {
                return json!("<uuid>");
            }
            v.clone()
        }
        Value::Array(a) => {
            let mut items: Vec<Value> = a.iter().map(|x| normalise(x, names, session)).collect();
            // Lists of ids (children, pipelines) come in KMS's map order, which is no order.
            if items.iter().all(Value::is_string) {
                items.sort_by_key(|x| x.to_string());
            }
            Value::Array(items)
        }
        Value::Object(o) => Value::Object(
            o.iter()
                .map(|(k, x)| {
                    let x = match k.as_str() {
                        "timestamp" | "timestampMillis" | "creationTime" => json!("<t>"),
                        "message" if x.as_str().is_some_and(|m| m.contains("_kurento.")) => {
                            json!("<message naming an object>")
                        }
                        _ => normalise(x, names, session),
                    };
                    (k.clone(), x)
                })
                .collect(),
        ),
        other => other.clone(),
    }
}

fn is_uuid(s: &str) -> bool {
    s.len() == 36
        && s.char_indices().all(|(i, c)| {
            if [8, 13, 18, 23].contains(&i) {
                c == '-'
            } else {
                c.is_ascii_hexdigit()
            }
        })
}

/// The lines of an SDP that matter to a client, with addresses, ports, SSRCs and origin dropped.
fn sdp_summary(sdp: &str) -> String {
    sdp.lines()
        .filter_map(|l| {
            let l = l.trim();
            if let Some(m) = l.strip_prefix("m=") {
                let mut f: Vec<&str> = m.split(' ').collect();
                if f.len() > 1 && f[1] != "0" {
                    f[1] = "<port>";
                }
                return Some(format!("m={}", f.join(" ")));
            }
            if let Some(c) = l.strip_prefix("a=crypto:") {
                let key_at = c.find("inline:").map(|i| i + "inline:".len());
                return Some(match key_at {
                    Some(i) => format!("a=crypto:{}<key>", &c[..i]),
                    None => format!("a=crypto:{c}"),
                });
            }
            let keep = [
                "a=rtpmap",
                "a=fmtp",
                "a=rtcp-fb",
                "a=sendonly",
                "a=recvonly",
                "a=sendrecv",
                "a=inactive",
            ];
            keep.iter().any(|p| l.starts_with(p)).then(|| l.to_owned())
        })
        .collect::<Vec<_>>()
        .join(" | ")
}

/// Step by step, where the simulator's answer or events differ from KMS's.
pub fn differences(real: &[Step], sim: &[Step]) -> Vec<String> {
    let mut out = Vec::new();
    for (r, s) in real.iter().zip(sim) {
        diff(
            &format!("{}: answer", r.label),
            &r.answer,
            &s.answer,
            &mut out,
        );
        let kinds = |e: &[Value]| {
            let mut k: Vec<String> = e
                .iter()
                .map(|e| {
                    e["params"]["value"]["type"]
                        .as_str()
                        .unwrap_or("?")
                        .to_owned()
                })
                .collect();
            k.sort();
            k
        };
        if kinds(&r.events) != kinds(&s.events) {
            out.push(format!(
                "{}: events: KMS {}, simulator {}",
                r.label,
                Value::from(r.events.clone()),
                Value::from(s.events.clone())
            ));
        } else {
            for (re, se) in r.events.iter().zip(&s.events) {
                diff(&format!("{}: event", r.label), re, se, &mut out);
            }
        }
    }
    if real.len() != sim.len() {
        out.push(format!(
            "steps: KMS {}, simulator {}",
            real.len(),
            sim.len()
        ));
    }
    out
}

fn diff(at: &str, real: &Value, sim: &Value, out: &mut Vec<String>) {
    match (real, sim) {
        (Value::Object(r), Value::Object(s)) => {
            for k in r.keys().chain(s.keys().filter(|k| !r.contains_key(*k))) {
                let here = format!("{at}.{k}");
                match (r.get(k), s.get(k)) {
                    (Some(a), Some(b)) => diff(&here, a, b, out),
                    (a, b) => out.push(format!("{here}: KMS {a:?}, simulator {b:?}")),
                }
            }
        }
        (Value::Array(r), Value::Array(s)) if r.len() == s.len() => {
            for (i, (a, b)) in r.iter().zip(s).enumerate() {
                diff(&format!("{at}[{i}]"), a, b, out);
            }
        }
        (a, b) if a != b => out.push(format!("{at}: KMS {a}, simulator {b}")),
        _ => {}
    }
}
