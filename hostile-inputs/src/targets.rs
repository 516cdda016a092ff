//! The parsers of untrusted input, each run through the product's own code.

use std::path::Path;
use std::time::Duration;

use classifier_sdk::{Chunk, Data, Samples};
use kurento_client::protocol::{decode_server_message, ServerMessage};
use room_mood::{MoodConfig, MoodEngine};
use tap_daemon::config::{resolve, FileConfig, Overrides};
use tap_daemon::dispatch::read_reply;
use tap_daemon::media::sdp_offer::{check_answer, check_answer_with, publisher_media};
use tap_daemon::watcher::ControlRequest;
use tap_protocol::affect::{fer2013_declaration, PresenterRequest};
use tap_protocol::{ChunkMeta, DataChannelMessage, MediaKind, ModelSpec, ResultMessage};

use crate::{Target, Verdict};

/// Every target, in the order reports list them.
pub fn all() -> Vec<Box<dyn Target>> {
    vec![
        Box::new(JsonRpc),
        Box::new(SdpAnswer),
        Box::new(ChunkHeaders),
        Box::new(WorkerReplies),
        Box::new(RegistryEntries),
        Box::new(ControlRequests),
        Box::new(ConfigFile),
        Box::new(ClusterEntries),
        Box::new(OpenViduAnswers),
        Box::new(DataChannelAnswer),
    ]
}

/// KMS's answer to the daemon's data-only offer and its ICE candidates, through the DataChannel
/// peer's negotiation (`webrtc_data::task_peer::negotiate_offline`: str0m's SDP and candidate
/// parsers and its state machine). `$MID` in the input stands for the offer's random mid; every
/// line holding `candidate:` is also given as a trickled candidate.
pub struct DataChannelAnswer;

const DC_ANSWERS: &[&str] = &[
    "v=0\r\no=- 3917045237 3917045237 IN IP4 0.0.0.0\r\ns=Kurento Media Server\r\nc=IN IP4 0.0.0.0\r\nt=0 0\r\na=group:BUNDLE $MID\r\nm=application 9 UDP/DTLS/SCTP webrtc-datachannel\r\na=setup:active\r\na=mid:$MID\r\na=ice-ufrag:Ab1c\r\na=ice-pwd:0123456789abcdefghijklmn\r\na=fingerprint:sha-256 0A:1B:2C:3D:4E:5F:60:71:82:93:A4:B5:C6:D7:E8:F9:0A:1B:2C:3D:4E:5F:60:71:82:93:A4:B5:C6:D7:E8:F9\r\na=sctp-port:5000\r\na=max-message-size:262144\r\na=candidate:1 1 UDP 2015363327 10.0.0.7 40150 typ host\r\na=candidate:2 1 TCP 1015021823 10.0.0.7 9 typ host tcptype active\r\n",
    "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=Kurento Media Server\r\nc=IN IP4 0.0.0.0\r\nt=0 0\r\na=group:BUNDLE $MID\r\nm=application 9 UDP/DTLS/SCTP webrtc-datachannel\r\na=setup:passive\r\na=mid:$MID\r\na=ice-ufrag:xyzw\r\na=ice-pwd:abcdefghijklmnopqrstuvwx\r\na=fingerprint:sha-256 00:11:22:33:44:55:66:77:88:99:AA:BB:CC:DD:EE:FF:00:11:22:33:44:55:66:77:88:99:AA:BB:CC:DD:EE:FF\r\na=sctp-port:5000\r\na=max-message-size:65536\r\na=candidate:4 1 UDP 1677729535 203.0.113.9 50001 typ srflx raddr 10.0.0.7 rport 50001\r\n",
];

impl Target for DataChannelAnswer {
    fn name(&self) -> &'static str {
        "dc-answer"
    }
    fn seeds(&self) -> Vec<Vec<u8>> {
        DC_ANSWERS.iter().map(|s| s.as_bytes().to_vec()).collect()
    }
    fn dictionary(&self) -> &'static [&'static str] {
        &[
            "\r\n",
            "$MID",
            "m=application ",
            "a=setup:active",
            "a=setup:actpass",
            "a=fingerprint:sha-1 ",
            "a=sctp-port:",
            "a=max-message-size:",
            "a=candidate:",
            " typ srflx raddr 0.0.0.0 rport 0",
            " UDP ",
            " 65535 ",
            " 4294967295 ",
            "a=ice-ufrag:",
            "m=audio 9 UDP/TLS/RTP/SAVPF 111\r\n",
            "a=rtpmap:111 opus/48000/2",
            "=",
            ":",
        ]
    }
    fn check(&self, input: &[u8]) -> Verdict {
        let template = text(input);
        let candidates: Vec<&str> = template
            .lines()
            .filter(|l| l.contains("candidate:"))
            .collect();
        let r = webrtc_data::task_peer::negotiate_offline(
            |offer| {
                let mid = webrtc_data::media_ids(offer)
                    .into_iter()
                    .next()
                    .unwrap_or_default();
                template.replace("$MID", &mid)
            },
            &candidates,
        );
        verdict(&r)
    }
    fn cost(&self) -> u64 {
        10
    }
}

fn verdict<T, E>(r: &Result<T, E>) -> Verdict {
    if r.is_ok() {
        Verdict::Accepted
    } else {
        Verdict::Rejected
    }
}

fn text(input: &[u8]) -> std::borrow::Cow<'_, str> {
    String::from_utf8_lossy(input)
}

/// Frames from KMS (real KMS 7.3 frames as seeds), through the decoder and the typed events.
pub struct JsonRpc;

const KMS_FRAMES: &[&str] = &[
    r#"{"id":1,"jsonrpc":"2.0","result":{"value":"pong"}}"#,
    r#"{"id":2,"jsonrpc":"2.0","result":{"sessionId":"80ad","value":"5f87_kurento.MediaPipeline"}}"#,
    r#"{"error":{"code":40008,"data":{"type":"MALFORMED_TRANSACTION"},"message":"Method 'x' with 0 parameters not found"},"id":14,"jsonrpc":"2.0"}"#,
    r#"{"jsonrpc":"2.0","method":"onEvent","params":{"value":{"data":{"candidate":{"__module__":"kurento","__type__":"IceCandidate","candidate":"candidate:1 1 UDP 2015363583 127.0.0.1 40150 typ host","sdpMLineIndex":0,"sdpMid":"audio0"},"source":"W","tags":[],"timestampMillis":"1796010846163","type":"IceCandidateFound"},"object":"W","type":"IceCandidateFound"}}}"#,
    r#"{"jsonrpc":"2.0","method":"onEvent","params":{"value":{"data":{"object":"P/E","source":"manager_ServerManager","tags":[],"timestampMillis":"1","type":"ObjectCreated"},"object":"manager_ServerManager","type":"ObjectCreated"}}}"#,
    r#"{"jsonrpc":"2.0","method":"onEvent","params":{"value":{"data":{"objectId":"5f87_kurento.MediaPipeline/1a2b_kurento.WebRtcEndpoint","source":"manager_ServerManager","tags":[{"key":"kurento-tap.room","value":"r"}],"timestampMillis":"2","type":"ObjectDestroyed"},"object":"manager_ServerManager","type":"ObjectDestroyed"}}}"#,
    r#"{"id":3,"jsonrpc":"2.0","result":{"sessionId":"S","value":[{"id":0,"result":{"value":"P/R_kurento.RtpEndpoint"}},{"id":1,"error":{"code":40101,"message":"m"}}]}}"#,
    r#"{"id":4,"jsonrpc":"2.0","result":{"hierarchy":["kurento.BaseRtpEndpoint","kurento.SdpEndpoint","kurento.SessionEndpoint","kurento.Endpoint","kurento.MediaElement","kurento.MediaObject"],"qualifiedType":"kurento.WebRtcEndpoint","sessionId":"S","type":"WebRtcEndpoint"}}"#,
];

impl Target for JsonRpc {
    fn name(&self) -> &'static str {
        "jsonrpc"
    }
    fn seeds(&self) -> Vec<Vec<u8>> {
        KMS_FRAMES.iter().map(|s| s.as_bytes().to_vec()).collect()
    }
    fn dictionary(&self) -> &'static [&'static str] {
        &[
            "{",
            "}",
            "[",
            "]",
            "\"",
            ":",
            ",",
            "null",
            "true",
            "\"\"",
            "\\u0000",
            "\\ud800",
            "\u{1F600}",
            "\"id\":",
            "\"result\":",
            "\"error\":",
            "\"method\":\"onEvent\"",
            "\"params\":",
            "\"value\":",
            "\"data\":",
            "\"type\":",
            "\"object\":",
            "\"code\":",
            "\"sessionId\":",
            "ObjectCreated",
            "IceCandidateFound",
            "_kurento.",
            "/",
        ]
    }
    fn check(&self, input: &[u8]) -> Verdict {
        let message = decode_server_message(&text(input));
        if let Ok(ServerMessage::Event(ev)) = &message {
            let _ = serde_json::from_value::<kurento_client::IceCandidateFound>(ev.data.clone());
            let _ = serde_json::from_value::<kurento_client::ObjectCreated>(ev.data.clone());
            let _ = serde_json::from_value::<kurento_client::ObjectDestroyed>(ev.data.clone());
            let _ = serde_json::from_value::<kurento_client::ElementConnected>(ev.data.clone());
        }
        verdict(&message)
    }
}

/// KMS's SDP answers to the tap's offer, and the publishers' SDPs the daemon reads.
pub struct SdpAnswer;

const SDPS: &[&str] = &[
    "v=0\r\no=- 1 1 IN IP4 10.0.0.7\r\ns=Kurento Media Server\r\nc=IN IP4 10.0.0.7\r\nt=0 0\r\nm=audio 40266 RTP/AVP 111\r\na=sendonly\r\na=rtcp:40267\r\na=rtpmap:111 opus/48000/2\r\nm=video 40462 RTP/AVPF 96\r\na=sendonly\r\na=rtpmap:96 VP8/90000\r\n",
    "v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=rtpmap:111 opus/48000/2\r\nm=video 9 UDP/TLS/RTP/SAVPF 103 96\r\na=rtpmap:103 H264/90000\r\na=fmtp:103 profile-level-id=42e01f\r\na=rtpmap:96 VP8/90000\r\n",
    "v=0\r\no=- 2 1 IN IP4 10.0.0.7\r\ns=Kurento Media Server\r\nc=IN IP4 10.0.0.7\r\nt=0 0\r\nm=audio 40266 RTP/SAVPF 111\r\na=sendonly\r\na=rtcp:40267\r\na=rtpmap:111 opus/48000/2\r\na=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:AwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMD\r\nm=video 40462 RTP/SAVPF 96\r\na=sendonly\r\na=rtpmap:96 VP8/90000\r\na=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:AwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMD|2^31\r\n",
    "v=0\r\no=- 3 1 IN IP4 127.0.0.1\r\ns=Kurento Media Server\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\na=group:BUNDLE 0 1\r\nm=video 9 UDP/TLS/RTP/SAVPF 96\r\na=mid:0\r\na=sendrecv\r\na=rtpmap:96 H264/90000\r\na=fmtp:96 packetization-mode=1;profile-level-id=42e01f\r\nm=application 9 UDP/DTLS/SCTP webrtc-datachannel\r\na=mid:1\r\na=sctp-port:5000\r\n",
];

impl Target for SdpAnswer {
    fn name(&self) -> &'static str {
        "sdp"
    }
    fn seeds(&self) -> Vec<Vec<u8>> {
        SDPS.iter().map(|s| s.as_bytes().to_vec()).collect()
    }
    fn dictionary(&self) -> &'static [&'static str] {
        &[
            "\r\n",
            "\n",
            "m=audio ",
            "m=video ",
            "m=application ",
            "a=rtcp:",
            "a=rtpmap:",
            "a=fmtp:",
            "a=mid:",
            "c=IN IP4 ",
            "c=IN IP6 ::1",
            "a=sendonly",
            "a=inactive",
            " RTP/AVP ",
            "opus/48000/2",
            "VP8/90000",
            "H264/90000",
            " 0 ",
            " 65535 ",
            "=",
            "a=crypto:",
            " AES_CM_128_HMAC_SHA1_80 inline:",
            " AES_256_CM_HMAC_SHA1_32 inline:",
            " RTP/SAVPF ",
            "|2^31",
            "|1:4",
        ]
    }
    fn check(&self, input: &[u8]) -> Verdict {
        let sdp = text(input);
        let both = check_answer(&sdp, true, true);
        let _ = check_answer(&sdp, true, false);
        let _ = check_answer(&sdp, false, true);
        // SRTP answers: a key comes back only with the suite's length, and no error shows one.
        for suite in tap_daemon::media::srtp::Suite::ALL {
            match check_answer_with(&sdp, true, true, Some(suite)) {
                Ok(p) => {
                    for k in [p.audio_key, p.video_key].into_iter().flatten() {
                        assert_eq!(
                            k.key.bytes().len(),
                            suite.key_len(),
                            "key of the suite's size"
                        );
                    }
                }
                Err(e) => {
                    let e = e.to_string();
                    let quoted = e
                        .split("inline:")
                        .skip(1)
                        .any(|after| !after.starts_with("(redacted)") && !after.is_empty());
                    assert!(!quoted, "an SRTP error quotes key material: {e}");
                }
            }
        }
        let media = publisher_media(&sdp, Some(&sdp));
        let _ = webrtc_data::application_ports(&sdp);
        let _ = webrtc_data::media_ids(&sdp);
        if let Ok(ports) = &both {
            for addr in [ports.audio_rtcp, ports.video_rtcp].into_iter().flatten() {
                assert!(addr.port() != 0, "an accepted answer names RTCP port 0");
            }
        }
        if both.is_ok() || media.is_ok() {
            Verdict::Accepted
        } else {
            Verdict::Rejected
        }
    }
}

/// A chunk as a worker receives it. Harness format: `Name: value` header lines, then a line
/// `#payload N` giving the payload's size (N bytes of zeros, at most [`MAX_PAYLOAD`]: NATS
/// delivers nothing larger than its `max_payload`).
pub struct ChunkHeaders;

/// The largest payload NATS delivers by default.
pub const MAX_PAYLOAD: usize = 1024 * 1024;

fn chunk_seed(meta: &ChunkMeta, payload: usize) -> Vec<u8> {
    let mut s = String::new();
    for (k, v) in meta.to_headers() {
        s.push_str(&format!("{k}: {v}\n"));
    }
    s.push_str(&format!("#payload {payload}\n"));
    s.into_bytes()
}

impl Target for ChunkHeaders {
    fn name(&self) -> &'static str {
        "chunk"
    }
    fn seeds(&self) -> Vec<Vec<u8>> {
        use tap_protocol::{Layout, ModelId, PixelFormat, SampleFormat};
        let meta = |layout| ChunkMeta {
            room: "room-1".into(),
            participant: "ana".into(),
            endpoint: "5f87_kurento.MediaPipeline/1a2b_kurento.WebRtcEndpoint".into(),
            model: ModelId::new("fer", "1"),
            seq: 42,
            capture_us: 1_796_010_846_163_000,
            sent_us: 1_796_010_846_170_000,
            deadline_us: 1_796_010_846_663_000,
            layout,
        };
        vec![
            chunk_seed(
                &meta(Layout::Video {
                    format: PixelFormat::Rgb24,
                    width: 64,
                    height: 48,
                }),
                64 * 48 * 3,
            ),
            chunk_seed(
                &meta(Layout::Video {
                    format: PixelFormat::Gray8,
                    width: 48,
                    height: 48,
                }),
                48 * 48,
            ),
            chunk_seed(
                &meta(Layout::Audio {
                    format: SampleFormat::F32,
                    rate: 16_000,
                    channels: 1,
                }),
                16_000 * 4 / 10,
            ),
            chunk_seed(
                &meta(Layout::Audio {
                    format: SampleFormat::S16,
                    rate: 48_000,
                    channels: 2,
                }),
                48_000 * 2 * 2 / 10,
            ),
        ]
    }
    fn dictionary(&self) -> &'static [&'static str] {
        &[
            "\n",
            ": ",
            "Tap-",
            "RGB24",
            "GRAY8",
            "I420",
            "F32LE",
            "S16LE",
            "video",
            "audio",
            "#payload ",
            "fer@1",
            "@",
            "0",
            "-1",
            "4294967295",
        ]
    }
    fn check(&self, input: &[u8]) -> Verdict {
        let text = text(input);
        let mut headers: Vec<(&str, &str)> = Vec::new();
        let mut payload_len = 0usize;
        for line in text.lines() {
            if let Some(n) = line.strip_prefix("#payload ") {
                payload_len = n.trim().parse::<usize>().unwrap_or(0).min(MAX_PAYLOAD);
            } else if let Some((k, v)) = line.split_once(": ") {
                headers.push((k, v));
            }
        }
        let payload = vec![0u8; payload_len];
        let get = |name: &str| {
            headers
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(name))
                .map(|(_, v)| *v)
        };
        let chunk = Chunk::parse(get, &payload);
        if let Ok(c) = &chunk {
            match &c.data {
                Data::Video(f) => {
                    let need = f.format.frame_size(f.width, f.height);
                    assert_eq!(f.pixels.len(), need, "accepted frame of the wrong size");
                    assert!(f.width > 0 && f.height > 0, "accepted an empty frame");
                }
                Data::Audio(a) => {
                    assert!(
                        a.rate > 0 && a.channels > 0,
                        "accepted audio without a rate"
                    );
                    let bytes = match &a.samples {
                        Samples::F32(s) => s.len() * 4,
                        Samples::S16(s) => s.len() * 2,
                    };
                    assert_eq!(bytes, payload.len(), "samples lost in the window");
                }
            }
        }
        verdict(&chunk)
    }
}

/// Workers' replies, on to the result the daemon publishes, the DataChannel message, and the
/// fusion. Harness format: an optional first line `error: X` (the `Tap-Error` header), then the
/// body.
pub struct WorkerReplies;

impl Target for WorkerReplies {
    fn name(&self) -> &'static str {
        "reply"
    }
    fn seeds(&self) -> Vec<Vec<u8>> {
        [
            r#"{"labels":{"angry":0.02,"fear":0.01,"happy":0.91,"neutral":0.04,"sad":0.01,"surprise":0.01},"top":"happy","extras":{"box":[0.31,0.22,0.4,0.52],"keypoints":[[0.4,0.35],[0.6,0.35],[0.5,0.45],[0.5,0.6],[0.3,0.4],[0.7,0.4]],"attentive":true},"queue_ms":0.4,"inference_ms":1.1}"#,
            r#"{"labels":{},"top":null,"extras":{"no_face":true},"queue_ms":0.1,"inference_ms":0.9}"#,
            r#"{"labels":{"speech":0.8,"aroused":0.66,"calm":0.34},"top":"aroused","extras":{"pitch_hz":182.5,"rms_db":-23.1}}"#,
            "error: stale\n",
            "error: malformed\n{}",
        ]
        .iter()
        .map(|s| s.as_bytes().to_vec())
        .collect()
    }
    fn dictionary(&self) -> &'static [&'static str] {
        &[
            "{",
            "}",
            "[",
            "]",
            "\"",
            ":",
            ",",
            "null",
            "true",
            "1e308",
            "-1e308",
            "\"labels\":",
            "\"top\":",
            "\"extras\":",
            "\"no_face\":",
            "\"attentive\":",
            "\"happy\":",
            "\"speech\":",
            "error: ",
            "\n",
        ]
    }
    fn check(&self, input: &[u8]) -> Verdict {
        let text = text(input);
        let (error, body) = match text.strip_prefix("error: ") {
            Some(rest) => {
                let (e, body) = rest.split_once('\n').unwrap_or((rest, ""));
                (Some(e), body)
            }
            None => (None, &*text),
        };
        let Ok(output) = read_reply(error, body.as_bytes()) else {
            return Verdict::Rejected;
        };
        let result = ResultMessage {
            v: tap_protocol::VERSION,
            room: "room-1".into(),
            participant: "ana".into(),
            endpoint: "E".into(),
            kms: None,
            model: "fer".into(),
            version: "1".into(),
            media: MediaKind::Video,
            seq: 1,
            capture_ms: 1_796_010_846_163.0,
            output,
            latency_ms: 12.0,
            round_trip_ms: 3.0,
        };
        serde_json::to_vec(&result).expect("an accepted result is publishable");
        let dc = DataChannelMessage::from_result(&result);
        let dc_json = serde_json::to_vec(&dc).expect("its DataChannel message encodes");
        assert!(dc.labels.len() <= 8, "DataChannel message over 8 labels");
        assert!(
            dc_json.len() < 16 * 1024,
            "DataChannel message of {} bytes",
            dc_json.len()
        );
        let mut engine = MoodEngine::new(MoodConfig::default());
        engine.declare("fer", "1", fer2013_declaration());
        engine.observe(&result);
        for state in engine.states(result.capture_ms + 100.0) {
            for v in [state.valence, state.arousal].into_iter().flatten() {
                assert!((-1.0..=1.0).contains(&v), "fused value {v} out of range");
            }
            assert!(
                (0.0..=1.0).contains(&state.confidence),
                "confidence out of range"
            );
        }
        let _ = engine.tick(result.capture_ms + 1000.0);
        Verdict::Accepted
    }
}

/// Model registry entries (workers write them; the daemon trusts none).
pub struct RegistryEntries;

impl Target for RegistryEntries {
    fn name(&self) -> &'static str {
        "registry"
    }
    fn seeds(&self) -> Vec<Vec<u8>> {
        let video = r#"{"protocol":1,"name":"fer","version":"1","media":"video","video":{"fps":5.0,"width":320,"height":240,"format":"RGB24"},"labels":["angry","fear","happy","neutral","sad","surprise"],"max_in_flight":2,"deadline_ms":500,"heartbeat_ms":2000,"updated_ms":1796010846163}"#;
        let audio = r#"{"protocol":1,"name":"voice","version":"1","media":"audio","audio":{"window_ms":1000,"hop_ms":500,"sample_rate":16000,"channels":1,"format":"F32LE"},"labels":["calm","aroused","speech"],"deadline_ms":1500}"#;
        let mut with_affect: ModelSpec = serde_json::from_str(video).expect("seed spec");
        with_affect.affect = Some(fer2013_declaration());
        with_affect.quality = Some(tap_protocol::ModelQuality {
            dataset: "FER2013 private test, 6 classes".into(),
            metric: "balanced accuracy".into(),
            value: 0.56,
            classes: 6,
        });
        vec![
            video.as_bytes().to_vec(),
            audio.as_bytes().to_vec(),
            serde_json::to_vec(&with_affect).expect("spec encodes"),
        ]
    }
    fn dictionary(&self) -> &'static [&'static str] {
        &[
            "{",
            "}",
            "[",
            "]",
            "\"",
            ":",
            ",",
            "null",
            "0",
            "-1",
            "4294967295",
            "65535",
            "1e9",
            "\"width\":",
            "\"height\":",
            "\"fps\":",
            "\"sample_rate\":",
            "\"window_ms\":",
            "\"deadline_ms\":",
            "\"affect\":",
            "\"valence\":",
            "\"arousal\":",
        ]
    }
    fn check(&self, input: &[u8]) -> Verdict {
        let Ok(spec) = serde_json::from_slice::<ModelSpec>(input) else {
            return Verdict::Rejected;
        };
        let reason = tap_daemon::dispatch::registry::reject_reason(&spec, MAX_PAYLOAD);
        let _ = spec.is_live(1_796_010_846_163);
        let _ = tap_protocol::chunk_subject(&spec.id);
        if reason.is_some() {
            return Verdict::Rejected;
        }
        assert!(
            spec.chunk_size() > 0,
            "an accepted spec asks for empty chunks"
        );
        assert!(
            spec.chunk_size() + tap_daemon::dispatch::registry::HEADER_ALLOWANCE <= MAX_PAYLOAD,
            "an accepted spec's chunks do not fit the server"
        );
        Verdict::Accepted
    }
}

/// Control requests (`tap.v1.ctl.attach`, `.detach`, `.presenter`, `.erase`).
pub struct ControlRequests;

impl Target for ControlRequests {
    fn name(&self) -> &'static str {
        "control"
    }
    fn seeds(&self) -> Vec<Vec<u8>> {
        [
            r#"{"pipeline":"5f87_kurento.MediaPipeline","endpoint":"5f87_kurento.MediaPipeline/1a2b_kurento.WebRtcEndpoint","room":"standup","participant":"ana"}"#,
            r#"{"pipeline":"P","endpoint":"P/E"}"#,
            r#"{"room":"standup","participant":"ana"}"#,
            r#"{"room":"standup","participant":null,"source":"tag"}"#,
        ]
        .iter()
        .map(|s| s.as_bytes().to_vec())
        .collect()
    }
    fn dictionary(&self) -> &'static [&'static str] {
        &[
            "{",
            "}",
            "\"",
            ":",
            ",",
            "null",
            "\"\"",
            "\"pipeline\":",
            "\"endpoint\":",
            "\"room\":",
            "\"participant\":",
            "\"source\":",
            "\"control\"",
            "\"tag\"",
        ]
    }
    fn check(&self, input: &[u8]) -> Verdict {
        let attach = ControlRequest::parse(input);
        if let Ok(r) = &attach {
            assert!(!r.pipeline.is_empty() && !r.endpoint.is_empty());
        }
        let presenter = PresenterRequest::parse(input);
        if let Ok((r, _)) = &presenter {
            assert!(!r.room.is_empty());
            let _ = tap_protocol::safe_token(&r.room);
        }
        let erase = tap_daemon::control::erase::EraseRequest::parse(input);
        if let Ok(r) = &erase {
            // The filter never holds a wildcard but its own trailing `>`.
            for (_, f) in r.filters() {
                let body = f.strip_suffix(".>").unwrap_or(&f);
                assert!(!body.contains('*') && !body.contains('>'), "{f}");
            }
        }
        if attach.is_ok() || presenter.is_ok() || erase.is_ok() {
            Verdict::Accepted
        } else {
            Verdict::Rejected
        }
    }
}

/// The daemon's config file, parsed and resolved as `kurento-tap run --config` does.
pub struct ConfigFile;

/// The example in `tap-daemon/src/config/mod.rs`'s documentation: the seed stays what users copy.
fn documented_config() -> String {
    let source = include_str!("../../tap-daemon/src/config/mod.rs");
    let mut out = String::new();
    let mut inside = false;
    for line in source.lines() {
        let Some(doc) = line.strip_prefix("//!") else {
            continue;
        };
        let doc = doc.strip_prefix(' ').unwrap_or(doc);
        if doc.starts_with("```") {
            if inside {
                break;
            }
            inside = doc.starts_with("```toml");
            continue;
        }
        if inside {
            out.push_str(doc);
            out.push('\n');
        }
    }
    out
}

impl Target for ConfigFile {
    fn name(&self) -> &'static str {
        "config"
    }
    fn seeds(&self) -> Vec<Vec<u8>> {
        // Without the token and OpenVidu secret file lines: they name paths that only exist on a
        // server (and are read when the configuration is resolved); without the secret, no
        // OpenVidu URL either (refused alone, rightly).
        let doc: String = documented_config()
            .lines()
            .filter(|l| {
                !l.starts_with("token_file")
                    && !l.starts_with("secret_file")
                    && !l.starts_with("url = ")
            })
            .map(|l| format!("{l}\n"))
            .collect();
        let minimal = "kurento = \"ws://kms:8888/kurento\"\nports = \"40000-40099\"\n[mood]\nenabled = false\n";
        vec![doc.into_bytes(), minimal.as_bytes().to_vec()]
    }
    fn dictionary(&self) -> &'static [&'static str] {
        &[
            "\n",
            " = ",
            "\"",
            "[",
            "]",
            "[mood]\n",
            "[datachannel]\n",
            "policy = \"expressions\"\n",
            "policy = \"aggregate\"\n",
            "[tags]\n",
            "true",
            "-1",
            "1e308",
            "nan",
            "inf",
            "18446744073709551615",
            "max_wait_ms",
            "max_age_s",
            "results_max_age_s",
            "smoothing_s",
            "ports",
            "ice_ports",
            "#",
        ]
    }
    fn check(&self, input: &[u8]) -> Verdict {
        let Ok(file) = FileConfig::parse(&text(input), Path::new("fuzz.toml")) else {
            return Verdict::Rejected;
        };
        let Ok(config) = resolve(file, Overrides::default()) else {
            return Verdict::Rejected;
        };
        // Durations end up added to `Instant`s: a resolved config must not overflow them.
        let now = std::time::Instant::now();
        for d in [
            config.datachannel.max_wait,
            config.results_max_age,
            config.mood.max_age,
            Duration::from_millis(u64::from(config.latency_ms)),
        ] {
            assert!(
                now.checked_add(d).is_some(),
                "duration {d:?} overflows an Instant"
            );
            assert!(
                d <= Duration::from_secs(10 * 365 * 86_400),
                "duration {d:?} accepted"
            );
        }
        assert!(config.ports.0 < config.ports.1, "port range reversed");
        Verdict::Accepted
    }
}

/// What other processes write for the scale-out: worker load reports (`tap.v1.load.*`) and the
/// lease bucket's room and member entries. Accepted reports go through the scaling figures.
pub struct ClusterEntries;

impl Target for ClusterEntries {
    fn name(&self) -> &'static str {
        "cluster"
    }
    fn seeds(&self) -> Vec<Vec<u8>> {
        vec![
            br#"{"v":1,"model":{"name":"fer","version":"1"},"instance":"4711-abc","slots":2,"period_ms":1000,"busy_ms":612.5,"answered":140,"refused":3}"#.to_vec(),
            br#"{"v":1,"daemon":"kurento-tap-node1","kms":"kms-a","pipeline":"0b6d3a1c-86a3-4d2b-9d60-4b3f7e1b8c11_kurento.MediaPipeline","room":"standup","since_ms":1796010846163}"#.to_vec(),
            br#"{"v":1,"daemon":"kurento-tap-node1","kms":["kms-a","kms-b"],"rooms":12,"http":"10.0.0.11:9464"}"#.to_vec(),
        ]
    }
    fn dictionary(&self) -> &'static [&'static str] {
        &[
            "{",
            "}",
            "[",
            "]",
            "\"",
            ":",
            ",",
            "null",
            "0",
            "-1",
            "1e308",
            "NaN",
            "18446744073709551615",
            "4294967295",
            "\"slots\":",
            "\"period_ms\":",
            "\"busy_ms\":",
            "\"answered\":",
            "\"daemon\":",
            "\"rooms\":",
        ]
    }
    fn check(&self, input: &[u8]) -> Verdict {
        use tap_daemon::cluster::scaling::{ModelCounters, ScalingBook, ScalingSettings};
        let mut accepted = false;
        if let Ok(r) = tap_protocol::load::LoadReport::parse(input) {
            accepted = true;
            let b = r.busy_fraction();
            assert!((0.0..=1.0).contains(&b), "busy fraction {b} out of range");
            let t0 = std::time::Instant::now();
            let mut book = ScalingBook::new(ScalingSettings::default());
            let model = r.model.to_string();
            book.sample(&model, t0, ModelCounters::default());
            book.report(&model, t0, &r);
            book.sample(
                &model,
                t0 + Duration::from_secs(1),
                ModelCounters {
                    offered: 100,
                    answered: 50,
                    superseded: 50,
                },
            );
            let f = book.figures(t0 + Duration::from_secs(1))[&model];
            for v in [
                f.offered_per_s,
                f.answered_per_s,
                f.superseded_share,
                f.capacity_per_s,
                f.saturation,
            ] {
                assert!(
                    v.is_finite() && v >= 0.0,
                    "a figure from an accepted report is {v}: {f:?}"
                );
            }
        }
        if let Ok(l) = tap_protocol::lease::LeaseValue::parse(input) {
            accepted = true;
            let key = tap_protocol::lease::room_key(&l.kms, &l.pipeline);
            assert!(
                key.bytes()
                    .all(|c| c.is_ascii_alphanumeric() || b"-_.".contains(&c)),
                "lease key {key:?} is not a valid KV key"
            );
        }
        if let Ok(m) = tap_protocol::lease::MemberValue::parse(input) {
            accepted = true;
            let key = tap_protocol::lease::member_key(&m.daemon);
            assert!(key
                .bytes()
                .all(|c| c.is_ascii_alphanumeric() || b"-_.".contains(&c)));
        }
        if accepted {
            Verdict::Accepted
        } else {
            Verdict::Rejected
        }
    }
}

/// What openvidu-server's REST API answers (`--host openvidu`): whole HTTP/1.1 responses as the
/// daemon's client reads them, and `GET /openvidu/api/sessions` bodies.
pub struct OpenViduAnswers;

const SESSIONS: &str = r#"{"numberOfElements":1,"content":[{"id":"ses_tap","object":"session","connections":{"numberOfElements":2,"content":[{"id":"con_Ab12CdEf34","object":"connection","status":"active","clientData":"{\"clientData\":\"ana\"}","publishers":[{"streamId":"str_CAM_Xk9q_con_Ab12CdEf34","mediaOptions":{"typeOfVideo":"CAMERA"}},{"streamId":"str_SCR_Qw3e_con_Ab12CdEf34","mediaOptions":{"typeOfVideo":"SCREEN"}}]},{"id":"con_Zz00000000","clientData":"ben","publishers":[]}]}}]}"#;

impl Target for OpenViduAnswers {
    fn name(&self) -> &'static str {
        "openvidu"
    }
    fn seeds(&self) -> Vec<Vec<u8>> {
        vec![
            SESSIONS.as_bytes().to_vec(),
            format!(
                "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{SESSIONS}",
                SESSIONS.len()
            )
            .into_bytes(),
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4\r\n{\"a\"\r\n3\r\n:1}\r\n0\r\n\r\n".to_vec(),
            b"HTTP/1.1 401 Unauthorized\r\nContent-Length: 0\r\n\r\n".to_vec(),
        ]
    }
    fn dictionary(&self) -> &'static [&'static str] {
        &[
            "\r\n",
            "Content-Length: ",
            "Transfer-Encoding: chunked",
            "HTTP/1.1 ",
            " 500 ",
            "ffffffff",
            "\"id\":",
            "\"connections\":",
            "\"content\":",
            "\"clientData\":",
            "\"publishers\":",
            "\"streamId\":",
            "str_CAM_",
            "str_SCR_",
            "con_",
            "_con_",
            "\\u0000",
            "null",
            "[]",
        ]
    }
    fn check(&self, input: &[u8]) -> Verdict {
        use tap_daemon::discovery::openvidu::{
            parse_http_response, parse_sessions, MAX_DISPLAY_CHARS,
        };
        let http = parse_http_response(input, 1 << 20);
        if let Ok(r) = &http {
            assert!(r.body.len() <= 1 << 20, "a body over the limit was kept");
        }
        let dir = parse_sessions(input);
        if let Ok(d) = &dir {
            for s in d.streams.values() {
                assert!(d.connections.get(&s.connection) == Some(&s.session));
                if let Some(name) = &s.display {
                    assert!(!name.is_empty() && name.chars().count() <= MAX_DISPLAY_CHARS);
                    assert!(
                        !name.chars().any(char::is_control),
                        "a control character in a name"
                    );
                }
            }
        }
        if http.is_ok() || dir.is_ok() {
            Verdict::Accepted
        } else {
            Verdict::Rejected
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_seed_is_accepted() {
        for target in all() {
            for (i, seed) in target.seeds().iter().enumerate() {
                if target.name() == "reply" && seed.starts_with(b"error: ") {
                    assert_eq!(target.check(seed), Verdict::Rejected);
                    continue;
                }
                assert_eq!(
                    target.check(seed),
                    Verdict::Accepted,
                    "{} seed {i}: {}",
                    target.name(),
                    crate::show_input(seed, 400)
                );
            }
        }
    }

    #[test]
    fn the_documented_config_is_found() {
        let doc = documented_config();
        assert!(
            doc.contains("[datachannel]") && doc.contains("[mood]"),
            "{doc}"
        );
    }
}
