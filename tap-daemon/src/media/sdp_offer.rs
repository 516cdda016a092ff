//! The tap's SDP: our `recvonly` offer (built with the `sdp` crate, exactly the publisher's codec so
//! KMS never transcodes) and the checks on KMS's answer.

use std::io::Cursor;
use std::net::{IpAddr, SocketAddr};

use sdp::description::common::{Address, Attribute, ConnectionInformation};
use sdp::description::media::{MediaDescription, MediaName, RangedPort};
use sdp::description::session::{Origin, SessionDescription, TimeDescription, Timing};

use crate::media::receiver::VideoCodec;
use crate::media::srtp::{answer_key, crypto_attribute, SdesKey, Suite};

/// Payload type we offer for Opus.
pub const OPUS_PT: u8 = 111;
/// Payload type we offer for video.
pub const VIDEO_PT: u8 = 96;

/// SDP problems, each a clear reason to give up on one participant.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SdpError {
    /// Unparsable.
    #[error("cannot parse SDP: {0}")]
    Parse(String),
    /// The publisher's SDP has no usable video codec.
    #[error("the publisher sends video in {0}, which the tap cannot decode")]
    UnsupportedCodec(String),
    /// KMS rejected a section (port 0) or answered something else than asked.
    #[error("KMS answer: {0}")]
    Answer(String),
}

fn parse(text: &str) -> Result<SessionDescription, SdpError> {
    SessionDescription::unmarshal(&mut Cursor::new(text.as_bytes()))
        .map_err(|e| SdpError::Parse(redact_keys(&e.to_string())))
}

/// The parser quotes the line it stopped at, which may be an `a=crypto` line: its key never
/// reaches an error (or a log).
fn redact_keys(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find("inline:") {
        out.push_str(&rest[..at + "inline:".len()]);
        out.push_str("(redacted)");
        rest = &rest[at + "inline:".len()..];
        let end = rest.find(char::is_whitespace).unwrap_or(rest.len());
        rest = &rest[end..];
    }
    out.push_str(rest);
    out
}

fn attrs<'a>(m: &'a MediaDescription, key: &'a str) -> impl Iterator<Item = &'a str> + 'a {
    m.attributes
        .iter()
        .filter(move |a| a.key == key)
        .filter_map(|a| a.value.as_deref())
}

/// What a publisher sends, read from its local SDP (KMS's answer to the browser): the first video
/// format is the codec the browser uses; audio is present if an Opus section was accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublisherMedia {
    /// Video codec, if the publisher sends video.
    pub video: Option<VideoCodec>,
    /// True if it sends Opus audio.
    pub audio: bool,
    /// True if the browser offered `sendonly` on a media section (a publisher, in group-call apps).
    pub sendonly: bool,
    /// True if KMS accepted a DataChannel section (`m=application` with a port): the app built the
    /// endpoint with `useDataChannels` and the browser offered a channel.
    pub data_channels: bool,
}

/// Reads a publisher's SDP (local = KMS's answer; remote = the browser's offer).
pub fn publisher_media(
    local_sdp: &str,
    remote_sdp: Option<&str>,
) -> Result<PublisherMedia, SdpError> {
    let local = parse(local_sdp)?;
    let mut out = PublisherMedia {
        video: None,
        audio: false,
        sendonly: false,
        data_channels: false,
    };
    for m in &local.media_descriptions {
        if m.media_name.port.value == 0 {
            continue;
        }
        if m.media_name.media == "application" {
            out.data_channels = true;
            continue;
        }
        let Some(first) = m.media_name.formats.first() else {
            continue;
        };
        let prefix = format!("{first} ");
        let Some(map) = attrs(m, "rtpmap").find_map(|v| v.strip_prefix(prefix.as_str())) else {
            continue;
        };
        let encoding = map
            .split('/')
            .next()
            .unwrap_or_default()
            .to_ascii_uppercase();
        match m.media_name.media.as_str() {
            "video" => {
                if !matches!(encoding.as_str(), "VP8" | "VP9" | "H264") {
                    return Err(SdpError::UnsupportedCodec(encoding));
                }
                let fmtp = attrs(m, "fmtp")
                    .find_map(|v| v.strip_prefix(prefix.as_str()))
                    .map(|s| s.trim().to_owned());
                out.video = Some(VideoCodec { encoding, fmtp });
            }
            "audio" => out.audio = encoding == "OPUS",
            _ => {}
        }
    }
    if let Some(remote) = remote_sdp {
        let remote = parse(remote)?;
        out.sendonly = remote
            .media_descriptions
            .iter()
            .filter(|m| m.media_name.media == "audio" || m.media_name.media == "video")
            .any(|m| m.attributes.iter().any(|a| a.key == "sendonly"));
    }
    Ok(out)
}

fn media(
    kind: &str,
    port: u16,
    proto: &str,
    pt: u8,
    attributes: Vec<Attribute>,
) -> MediaDescription {
    MediaDescription {
        media_name: MediaName {
            media: kind.into(),
            port: RangedPort {
                value: port as isize,
                range: None,
            },
            protos: proto.split('/').map(str::to_owned).collect(),
            formats: vec![pt.to_string()],
        },
        media_title: None,
        connection_information: None,
        bandwidth: vec![],
        encryption_key: None,
        attributes,
    }
}

fn attr(key: &str, value: Option<String>) -> Attribute {
    Attribute::new(key.to_owned(), value)
}

/// Our recvonly offer: Opus on `audio_port`, the publisher's video codec on `video_port`, with
/// `nack` (lost packets resent), `nack pli` and `ccm fir` (keyframes on request) and no `goog-remb` (a tap must never lower the
/// browser's bitrate).
pub fn tap_offer(ip: IpAddr, audio_port: Option<u16>, video: Option<(u16, &VideoCodec)>) -> String {
    tap_offer_with(ip, audio_port, video, None)
}

/// [`tap_offer`], encrypted when `srtp` is given: every section `RTP/SAVPF` with one `a=crypto`
/// line holding our key (KMS keys our RTCP with it). The result holds the key: never log it.
pub fn tap_offer_with(
    ip: IpAddr,
    audio_port: Option<u16>,
    video: Option<(u16, &VideoCodec)>,
    srtp: Option<&SdesKey>,
) -> String {
    let crypto = srtp.map(|k| attr("crypto", Some(crypto_attribute(k))));
    let (audio_proto, video_proto) = if srtp.is_some() {
        ("RTP/SAVPF", "RTP/SAVPF")
    } else {
        ("RTP/AVP", "RTP/AVPF")
    };
    let ip_s = ip.to_string();
    let addr_type = if ip.is_ipv4() { "IP4" } else { "IP6" };
    let mut desc = SessionDescription {
        version: 0,
        origin: Origin {
            username: "-".into(),
            session_id: u64::from(fastrand::u32(..)),
            session_version: 1,
            network_type: "IN".into(),
            address_type: addr_type.into(),
            unicast_address: ip_s.clone(),
        },
        session_name: "kurento-tap".into(),
        session_information: None,
        uri: None,
        email_address: None,
        phone_number: None,
        connection_information: Some(ConnectionInformation {
            network_type: "IN".into(),
            address_type: addr_type.into(),
            address: Some(Address {
                address: ip_s,
                ttl: None,
                range: None,
            }),
        }),
        bandwidth: vec![],
        time_descriptions: vec![TimeDescription {
            timing: Timing {
                start_time: 0,
                stop_time: 0,
            },
            repeat_times: vec![],
        }],
        time_zones: vec![],
        encryption_key: None,
        attributes: vec![],
        media_descriptions: vec![],
    };
    if let Some(port) = audio_port {
        let mut a = vec![attr("rtpmap", Some(format!("{OPUS_PT} opus/48000/2")))];
        a.extend(crypto.clone());
        a.push(attr("recvonly", None));
        desc.media_descriptions
            .push(media("audio", port, audio_proto, OPUS_PT, a));
    }
    if let Some((port, codec)) = video {
        let mut a = vec![attr(
            "rtpmap",
            Some(format!("{VIDEO_PT} {}/90000", codec.encoding)),
        )];
        if let Some(f) = &codec.fmtp {
            a.push(attr("fmtp", Some(format!("{VIDEO_PT} {f}"))));
        }
        a.push(attr("rtcp-fb", Some(format!("{VIDEO_PT} nack"))));
        a.push(attr("rtcp-fb", Some(format!("{VIDEO_PT} nack pli"))));
        a.push(attr("rtcp-fb", Some(format!("{VIDEO_PT} ccm fir"))));
        a.extend(crypto);
        a.push(attr("recvonly", None));
        desc.media_descriptions
            .push(media("video", port, video_proto, VIDEO_PT, a));
    }
    desc.marshal()
}

/// Where KMS sends from and takes RTCP, per media, read from its answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AnswerPorts {
    /// KMS's RTCP address for audio.
    pub audio_rtcp: Option<SocketAddr>,
    /// KMS's RTCP address for video.
    pub video_rtcp: Option<SocketAddr>,
    /// KMS's SRTP key for audio (SRTP taps only).
    pub audio_key: Option<SdesKey>,
    /// KMS's SRTP key for video (SRTP taps only).
    pub video_key: Option<SdesKey>,
}

/// Checks KMS's answer: every offered section accepted (port ≠ 0) with the payload type we offered
/// first; returns KMS's RTCP destinations (`a=rtcp` or port + 1, on the answer's address).
pub fn check_answer(
    answer: &str,
    want_audio: bool,
    want_video: bool,
) -> Result<AnswerPorts, SdpError> {
    check_answer_with(answer, want_audio, want_video, None)
}

/// [`check_answer`] for an offer made with `srtp` (the suite offered): each section must also be
/// `RTP/SAVPF` with KMS's key for that suite in its `a=crypto`, returned in [`AnswerPorts`].
pub fn check_answer_with(
    answer: &str,
    want_audio: bool,
    want_video: bool,
    srtp: Option<Suite>,
) -> Result<AnswerPorts, SdpError> {
    read_answer(answer, want_audio, want_video, srtp).map_err(|e| match e {
        SdpError::Answer(m) => SdpError::Answer(redact_keys(&m)),
        SdpError::Parse(m) => SdpError::Parse(redact_keys(&m)),
        other => other,
    })
}

fn read_answer(
    answer: &str,
    want_audio: bool,
    want_video: bool,
    srtp: Option<Suite>,
) -> Result<AnswerPorts, SdpError> {
    let d = parse(answer)?;
    let session_ip = d
        .connection_information
        .as_ref()
        .and_then(|c| c.address.as_ref())
        .map(|a| a.address.clone());
    let mut out = AnswerPorts {
        audio_rtcp: None,
        video_rtcp: None,
        audio_key: None,
        video_key: None,
    };
    for m in &d.media_descriptions {
        let kind = m.media_name.media.as_str();
        let (wanted, pt) = match kind {
            "audio" => (want_audio, OPUS_PT),
            "video" => (want_video, VIDEO_PT),
            _ => continue,
        };
        if !wanted {
            continue;
        }
        if m.media_name.port.value <= 0 {
            return Err(SdpError::Answer(match srtp {
                Some(suite) => format!(
                    "{kind} rejected (port 0): KMS refused SRTP with {} (its RtpEndpoint takes \
                     only the suite it was created with)",
                    suite.sdp_name()
                ),
                None => format!("{kind} rejected (port 0)"),
            }));
        }
        let key = match srtp {
            Some(suite) => {
                if m.media_name.protos.join("/") != "RTP/SAVPF" {
                    return Err(SdpError::Answer(format!(
                        "{kind} answered {} to an SRTP offer",
                        m.media_name.protos.join("/")
                    )));
                }
                Some(
                    answer_key(kind, attrs(m, "crypto"), suite)
                        .map_err(|e| SdpError::Answer(e.to_string()))?,
                )
            }
            None => None,
        };
        let port = u16::try_from(m.media_name.port.value).map_err(|_| {
            SdpError::Answer(format!(
                "{kind} port {} out of range",
                m.media_name.port.value
            ))
        })?;
        if m.media_name.formats.first().map(String::as_str) != Some(pt.to_string().as_str()) {
            return Err(SdpError::Answer(format!(
                "{kind} answered with formats {:?}, not {pt}",
                m.media_name.formats
            )));
        }
        let ip = m
            .connection_information
            .as_ref()
            .and_then(|c| c.address.as_ref())
            .map(|a| a.address.clone())
            .or_else(|| session_ip.clone())
            .ok_or_else(|| SdpError::Answer("no connection address".into()))?;
        let ip: IpAddr = ip
            .parse()
            .map_err(|_| SdpError::Answer(format!("bad address {ip}")))?;
        // `a=rtcp` when given (RFC 3605), else the RTP port + 1; never port 0.
        let rtcp_port = match attrs(m, "rtcp").next() {
            Some(v) => v
                .split_whitespace()
                .next()
                .and_then(|p| p.parse::<u16>().ok())
                .filter(|p| *p != 0)
                .ok_or_else(|| SdpError::Answer(format!("{kind} a=rtcp:{v} is not a port")))?,
            None => port.checked_add(1).ok_or_else(|| {
                SdpError::Answer(format!(
                    "{kind} port {port} leaves no room for RTCP at port + 1"
                ))
            })?,
        };
        let addr = Some(SocketAddr::new(ip, rtcp_port));
        if kind == "audio" {
            out.audio_rtcp = addr;
            out.audio_key = key;
        } else {
            out.video_rtcp = addr;
            out.video_key = key;
        }
    }
    if want_audio && out.audio_rtcp.is_none() {
        return Err(SdpError::Answer("no audio section".into()));
    }
    if want_video && out.video_rtcp.is_none() {
        return Err(SdpError::Answer("no video section".into()));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_with_ports_out_of_range_are_refused() {
        let base = "v=0\r\no=- 1 1 IN IP4 10.0.0.7\r\ns=-\r\nc=IN IP4 10.0.0.7\r\nt=0 0\r\nm=audio PORT RTP/AVP 111\r\nRTCPa=rtpmap:111 opus/48000/2\r\n";
        let answer = |port: &str, rtcp: &str| base.replace("PORT", port).replace("RTCP", rtcp);
        assert!(check_answer(&answer("65535", ""), true, false).is_err());
        assert!(check_answer(&answer("70000", ""), true, false).is_err());
        assert!(check_answer(&answer("40000", "a=rtcp:0\r\n"), true, false).is_err());
        assert!(check_answer(&answer("40000", "a=rtcp:x\r\n"), true, false).is_err());
        let ok = check_answer(&answer("65535", "a=rtcp:40001\r\n"), true, false).unwrap();
        assert_eq!(ok.audio_rtcp.unwrap().port(), 40001);
        let ok = check_answer(&answer("40000", ""), true, false).unwrap();
        assert_eq!(ok.audio_rtcp.unwrap().port(), 40001);
    }

    #[test]
    fn offer_has_the_publishers_codec_and_no_remb() {
        let codec = VideoCodec {
            encoding: "H264".into(),
            fmtp: Some("packetization-mode=1;profile-level-id=42e01f".into()),
        };
        let o = tap_offer(
            "127.0.0.1".parse().unwrap(),
            Some(40000),
            Some((40002, &codec)),
        );
        assert!(o.contains("c=IN IP4 127.0.0.1\r\n"));
        assert!(
            o.contains("m=audio 40000 RTP/AVP 111\r\na=rtpmap:111 opus/48000/2\r\na=recvonly\r\n"),
            "{o}"
        );
        assert!(o.contains("m=video 40002 RTP/AVPF 96\r\na=rtpmap:96 H264/90000\r\na=fmtp:96 packetization-mode=1;profile-level-id=42e01f\r\na=rtcp-fb:96 nack\r\na=rtcp-fb:96 nack pli\r\na=rtcp-fb:96 ccm fir\r\na=recvonly\r\n"), "{o}");
        assert!(!o.contains("goog-remb"));
    }

    #[test]
    fn answers_are_checked() {
        let ok = "v=0\r\no=- 1 1 IN IP4 10.0.0.7\r\ns=Kurento Media Server\r\nc=IN IP4 10.0.0.7\r\nt=0 0\r\nm=audio 40266 RTP/AVP 111\r\na=sendonly\r\na=rtcp:40267\r\na=rtpmap:111 opus/48000/2\r\nm=video 40462 RTP/AVPF 96\r\na=sendonly\r\na=rtpmap:96 VP8/90000\r\n";
        let p = check_answer(ok, true, true).unwrap();
        assert_eq!(p.audio_rtcp, Some("10.0.0.7:40267".parse().unwrap()));
        assert_eq!(
            p.video_rtcp,
            Some("10.0.0.7:40463".parse().unwrap()),
            "port + 1 without a=rtcp"
        );
        assert!(matches!(
            check_answer(&ok.replace("m=video 40462", "m=video 0"), true, true),
            Err(SdpError::Answer(_))
        ));
        assert!(matches!(
            check_answer(&ok.replace("RTP/AVPF 96", "RTP/AVPF 97"), true, true),
            Err(SdpError::Answer(_))
        ));
        assert!(matches!(
            check_answer("garbage", true, true),
            Err(SdpError::Parse(_))
        ));
    }

    #[test]
    fn srtp_offers_carry_our_key_and_answers_must_carry_kms_key() {
        use crate::media::srtp::MasterKey;
        let codec = VideoCodec {
            encoding: "VP8".into(),
            fmtp: None,
        };
        let ours = SdesKey {
            suite: Suite::Aes128Sha80,
            key: MasterKey::generate(Suite::Aes128Sha80).unwrap(),
        };
        let o = tap_offer_with(
            "10.0.0.2".parse().unwrap(),
            Some(40000),
            Some((40002, &codec)),
            Some(&ours),
        );
        assert!(o.contains("m=audio 40000 RTP/SAVPF 111\r\n"), "{o}");
        assert!(o.contains("m=video 40002 RTP/SAVPF 96\r\n"), "{o}");
        let line = format!("a=crypto:{}\r\n", crypto_attribute(&ours));
        assert_eq!(o.matches(&line).count(), 2, "{o}");

        // KMS answers with its own key, one per section (the same for both, as KMS does).
        use base64::Engine as _;
        let kms = base64::engine::general_purpose::STANDARD.encode([3u8; 30]);
        let ok = format!("v=0\r\no=- 1 1 IN IP4 10.0.0.7\r\ns=Kurento Media Server\r\nc=IN IP4 10.0.0.7\r\nt=0 0\r\nm=audio 40266 RTP/SAVPF 111\r\na=sendonly\r\na=rtpmap:111 opus/48000/2\r\na=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:{kms}\r\nm=video 40462 RTP/SAVPF 96\r\na=sendonly\r\na=rtpmap:96 VP8/90000\r\na=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:{kms}\r\n");
        let p = check_answer_with(&ok, true, true, Some(Suite::Aes128Sha80)).unwrap();
        assert_eq!(p.video_key.as_ref().unwrap().key.bytes(), &[3u8; 30]);
        assert_eq!(p.audio_key.as_ref().unwrap().suite, Suite::Aes128Sha80);
        // A plain answer to an SRTP offer, a missing key, another suite: refused, key unshown.
        for (bad, want) in [
            (
                ok.replace("RTP/SAVPF 96", "RTP/AVPF 96"),
                "RTP/AVPF to an SRTP offer",
            ),
            (
                ok.replace(
                    &format!("a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:{kms}\r\nm=video"),
                    "m=video",
                ),
                "audio: no a=crypto",
            ),
            (
                ok.replace("m=video 40462", "m=video 0"),
                "refused SRTP with AES_CM_128_HMAC_SHA1_80",
            ),
        ] {
            let e = check_answer_with(&bad, true, true, Some(Suite::Aes128Sha80))
                .unwrap_err()
                .to_string();
            assert!(e.contains(want), "{e}");
            assert!(!e.contains(&kms), "{e}");
        }
        let e = check_answer_with(&ok, true, true, Some(Suite::Aes256Sha80))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("where AES_256_CM_HMAC_SHA1_80 was offered"),
            "{e}"
        );
        // A plain check ignores a=crypto.
        assert!(check_answer(&ok.replace("SAVPF", "AVPF"), true, true)
            .unwrap()
            .video_key
            .is_none());
    }

    #[test]
    fn publisher_media_reads_the_first_video_format() {
        let local = "v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=rtpmap:111 opus/48000/2\r\nm=video 9 UDP/TLS/RTP/SAVPF 103 96\r\na=rtpmap:103 H264/90000\r\na=fmtp:103 profile-level-id=42e01f\r\na=rtpmap:96 VP8/90000\r\n";
        let remote = local.replace("a=rtpmap:111", "a=sendonly\r\na=rtpmap:111");
        let m = publisher_media(local, Some(&remote)).unwrap();
        assert!(m.audio && m.sendonly);
        assert_eq!(
            m.video.unwrap(),
            VideoCodec {
                encoding: "H264".into(),
                fmtp: Some("profile-level-id=42e01f".into())
            }
        );
        let av1 = local
            .replace("103 96", "45 96")
            .replace("a=rtpmap:103 H264", "a=rtpmap:45 AV1");
        assert_eq!(
            publisher_media(&av1, None),
            Err(SdpError::UnsupportedCodec("AV1".into()))
        );
    }
}
