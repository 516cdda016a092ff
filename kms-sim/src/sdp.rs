//! SDP handling the way KMS's RtpEndpoint and WebRtcEndpoint answer, on top of the `sdp` crate.

use std::io::Cursor;

use sdp::description::common::{Address, Attribute, ConnectionInformation};
use sdp::description::media::{MediaDescription, MediaName, RangedPort};
use sdp::description::session::{Origin, SessionDescription, TimeDescription, Timing};

/// Codecs KMS 7.x negotiates (`SdpEndpoint.conf.json`), by encoding name (lower case).
const SUPPORTED: &[&str] = &["opus", "pcmu", "pcma", "amr", "vp8", "vp9", "h264"];

/// One payload format of a media section.
#[derive(Debug, Clone, PartialEq)]
pub struct Format {
    /// Payload type.
    pub pt: u8,
    /// Encoding name as written (`VP8`, `opus`).
    pub encoding: String,
    /// Clock rate.
    pub clock_rate: u32,
    /// Channels or other encoding parameters (`2` for opus).
    pub params: Option<String>,
    /// `a=fmtp` value.
    pub fmtp: Option<String>,
    /// `a=rtcp-fb` values.
    pub feedback: Vec<String>,
}

/// What the simulator needs from one offered m-line.
#[derive(Debug, Clone, PartialEq)]
pub struct OfferedMedia {
    /// `audio`, `video` or `application`.
    pub kind: String,
    /// Where the offerer wants RTP.
    pub address: String,
    /// RTP port (0 = rejected).
    pub port: u16,
    /// RTCP port (`a=rtcp` or port + 1).
    pub rtcp_port: u16,
    /// Transport protocol (`RTP/AVP`, `RTP/AVPF`, …).
    pub proto: String,
    /// Formats in offer order.
    pub formats: Vec<Format>,
    /// Direction attribute (`recvonly`, `sendonly`, `sendrecv`, `inactive`).
    pub direction: String,
    /// `a=crypto` values (SDES), in offer order.
    pub crypto: Vec<String>,
}

/// A parse or negotiation failure (KMS answers 40205 SDP_END_POINT_PROCESS_OFFER_ERROR).
#[derive(Debug, thiserror::Error)]
pub enum SdpError {
    /// Not SDP.
    #[error("cannot parse SDP: {0}")]
    Parse(String),
    /// Nothing usable.
    #[error("{0}")]
    Negotiation(String),
}

/// Parses an SDP text.
pub fn parse(text: &str) -> Result<SessionDescription, SdpError> {
    let mut cursor = Cursor::new(text.as_bytes());
    SessionDescription::unmarshal(&mut cursor).map_err(|e| SdpError::Parse(e.to_string()))
}

fn attr<'a>(m: &'a MediaDescription, key: &str) -> impl Iterator<Item = &'a str> + 'a {
    let key = key.to_owned();
    m.attributes
        .iter()
        .filter(move |a| a.key == key)
        .filter_map(|a| a.value.as_deref())
}

/// Reads the offered media sections.
pub fn offered_media(sdp: &SessionDescription) -> Result<Vec<OfferedMedia>, SdpError> {
    let session_addr = sdp
        .connection_information
        .as_ref()
        .and_then(|c| c.address.as_ref())
        .map(|a| a.address.clone());
    let mut out = Vec::new();
    for m in &sdp.media_descriptions {
        let address = m
            .connection_information
            .as_ref()
            .and_then(|c| c.address.as_ref())
            .map(|a| a.address.clone())
            .or_else(|| session_addr.clone())
            .unwrap_or_else(|| "0.0.0.0".to_owned());
        let port = u16::try_from(m.media_name.port.value)
            .map_err(|_| SdpError::Parse(format!("bad port {}", m.media_name.port.value)))?;
        let rtcp_port = attr(m, "rtcp")
            .next()
            .and_then(|v| v.split_whitespace().next())
            .and_then(|p| p.parse().ok())
            .unwrap_or(port.saturating_add(1));
        let mut formats = Vec::new();
        for f in &m.media_name.formats {
            let Ok(pt) = f.parse::<u8>() else { continue };
            let prefix = format!("{pt} ");
            let rtpmap = attr(m, "rtpmap").find_map(|v| v.strip_prefix(&prefix));
            let (encoding, clock_rate, params) = match rtpmap {
                Some(map) => {
                    let mut parts = map.trim().split('/');
                    let enc = parts.next().unwrap_or_default().to_owned();
                    let rate = parts.next().and_then(|r| r.parse().ok()).unwrap_or(0);
                    let params = parts.next().map(str::to_owned);
                    (enc, rate, params)
                }
                None => match pt {
                    0 => ("PCMU".to_owned(), 8000, None),
                    8 => ("PCMA".to_owned(), 8000, None),
                    _ => continue,
                },
            };
            let fmtp = attr(m, "fmtp")
                .find_map(|v| v.strip_prefix(&prefix))
                .map(|s| s.trim().to_owned());
            let feedback = attr(m, "rtcp-fb")
                .filter_map(|v| v.strip_prefix(&prefix).or_else(|| v.strip_prefix("* ")))
                .map(|s| s.trim().to_owned())
                .collect();
            formats.push(Format {
                pt,
                encoding,
                clock_rate,
                params,
                fmtp,
                feedback,
            });
        }
        let direction = ["recvonly", "sendonly", "sendrecv", "inactive"]
            .into_iter()
            .find(|d| m.attributes.iter().any(|a| a.key == *d))
            .unwrap_or("sendrecv")
            .to_owned();
        out.push(OfferedMedia {
            kind: m.media_name.media.clone(),
            address,
            port,
            rtcp_port,
            proto: m.media_name.protos.join("/"),
            formats,
            direction,
            crypto: attr(m, "crypto").map(str::to_owned).collect(),
        });
    }
    Ok(out)
}

/// The answer KMS's RtpEndpoint gives: for each offered section, the supported formats in offer order,
/// the reversed direction, our ports with `a=rtcp`, the rtcp-fb values KMS echoes, and an `a=ssrc`.
pub struct RtpAnswer {
    /// The SDP text (CRLF line ends).
    pub text: String,
    /// Per offered section: (our RTP port or 0 if rejected, the chosen first format).
    pub accepted: Vec<Option<(u16, Format)>>,
}

/// Builds an RtpEndpoint answer. `ports[i]` is the even RTP port for section i (RTCP = +1).
pub fn rtp_answer(
    offer: &[OfferedMedia],
    local_ip: &str,
    ports: &[u16],
    ssrcs: &[u32],
    session_id: u64,
) -> Result<RtpAnswer, SdpError> {
    rtp_answer_with(offer, local_ip, ports, ssrcs, session_id, None)
}

/// [`rtp_answer`] for an endpoint created with SRTP: only `RTP/SAVPF` sections with a usable
/// first `a=crypto` are accepted (each answered with KMS's key under the offer's tag), plain
/// sections are rejected; without SRTP, SAVP sections are rejected.
pub fn rtp_answer_with(
    offer: &[OfferedMedia],
    local_ip: &str,
    ports: &[u16],
    ssrcs: &[u32],
    session_id: u64,
    crypto: Option<&crate::srtp::EndpointCrypto>,
) -> Result<RtpAnswer, SdpError> {
    let mut desc = base_session(local_ip, session_id);
    let mut accepted = Vec::new();
    let mut proto_rejections = 0;
    for (i, m) in offer.iter().enumerate() {
        let formats: Vec<&Format> = m
            .formats
            .iter()
            .filter(|f| SUPPORTED.contains(&f.encoding.to_ascii_lowercase().as_str()))
            .filter(|f| (m.kind == "audio") == is_audio(&f.encoding))
            .collect();
        // As KMS 7.3 answers (seen on the real KMS): an SRTP endpoint accepts RTP/SAVPF sections,
        // with its key only when the offer's first a=crypto has its suite (else none, silently);
        // a plain endpoint answers an SRTP section with port 0 and a=inactive, not an error.
        let offered_key = crypto.and_then(|c| crate::srtp::offered_key(&m.crypto, c));
        let proto_ok = match crypto {
            Some(_) => m.proto == "RTP/SAVPF",
            None => m.proto.starts_with("RTP/AVP"),
        };
        if !proto_ok {
            proto_rejections += 1;
        }
        let rejected = m.port == 0
            || formats.is_empty()
            || !(m.kind == "audio" || m.kind == "video")
            || !proto_ok;
        let port = if rejected { 0 } else { ports[i] };
        let mut md = MediaDescription {
            media_name: MediaName {
                media: m.kind.clone(),
                port: RangedPort {
                    value: port as isize,
                    range: None,
                },
                protos: m.proto.split('/').map(str::to_owned).collect(),
                formats: if rejected {
                    m.formats.iter().map(|f| f.pt.to_string()).collect()
                } else {
                    formats.iter().map(|f| f.pt.to_string()).collect()
                },
            },
            media_title: None,
            connection_information: None,
            bandwidth: vec![],
            encryption_key: None,
            attributes: vec![],
        };
        if rejected {
            md.attributes.push(Attribute::new("inactive".into(), None));
            accepted.push(None);
            desc.media_descriptions.push(md);
            continue;
        }
        let direction = match m.direction.as_str() {
            "recvonly" => "sendonly",
            "sendonly" => "recvonly",
            "inactive" => "inactive",
            _ => "sendrecv",
        };
        // KMS 7.3 writes a=crypto first, then the direction (seen on the real KMS).
        if let (Some(c), Some((tag, _))) = (crypto, &offered_key) {
            md.attributes.push(Attribute::new(
                "crypto".into(),
                Some(crate::srtp::answer_attribute(*tag, c)),
            ));
        }
        md.attributes
            .push(Attribute::new(direction.to_owned(), None));
        md.attributes
            .push(Attribute::new("rtcp".into(), Some((port + 1).to_string())));
        // KMS's order: every rtpmap, then every rtcp-fb, then every fmtp. (An SRTP endpoint
        // offered another suite writes no rtpmap at all: seen on KMS 7.3.)
        let keyless = crypto.is_some() && offered_key.is_none();
        for f in formats.iter().filter(|_| !keyless) {
            let mut map = format!("{} {}/{}", f.pt, f.encoding, f.clock_rate);
            if let Some(p) = &f.params {
                map.push('/');
                map.push_str(p);
            }
            md.attributes
                .push(Attribute::new("rtpmap".into(), Some(map)));
        }
        for f in &formats {
            for fb in &f.feedback {
                if matches!(fb.as_str(), "nack" | "nack pli" | "ccm fir" | "goog-remb") {
                    md.attributes.push(Attribute::new(
                        "rtcp-fb".into(),
                        Some(format!("{} {fb}", f.pt)),
                    ));
                }
            }
        }
        for f in &formats {
            if let Some(fmtp) = &f.fmtp {
                md.attributes.push(Attribute::new(
                    "fmtp".into(),
                    Some(format!("{} {fmtp}", f.pt)),
                ));
            }
        }
        md.attributes.push(Attribute::new(
            "ssrc".into(),
            Some(format!(
                "{} cname:user{}@host-kms-sim",
                ssrcs[i],
                session_id % 1_000_000_000
            )),
        ));
        accepted.push(Some((port, (*formats[0]).clone())));
        desc.media_descriptions.push(md);
    }
    if accepted.iter().all(Option::is_none) && proto_rejections < offer.len() {
        return Err(SdpError::Negotiation(
            "no media section of the offer could be accepted".into(),
        ));
    }
    Ok(RtpAnswer {
        text: desc.marshal(),
        accepted,
    })
}

fn is_audio(encoding: &str) -> bool {
    matches!(
        encoding.to_ascii_lowercase().as_str(),
        "opus" | "pcmu" | "pcma" | "amr"
    )
}

fn base_session(ip: &str, session_id: u64) -> SessionDescription {
    SessionDescription {
        version: 0,
        origin: Origin {
            username: "-".into(),
            session_id,
            session_version: session_id,
            network_type: "IN".into(),
            address_type: "IP4".into(),
            unicast_address: ip.into(),
        },
        session_name: "Kurento Media Server".into(),
        session_information: None,
        uri: None,
        email_address: None,
        phone_number: None,
        connection_information: Some(ConnectionInformation {
            network_type: "IN".into(),
            address_type: "IP4".into(),
            address: Some(Address {
                address: ip.into(),
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
    }
}

/// A browser-like offer of a group-call participant (what KMS stores as the publisher's remote SDP),
/// and KMS's answer to it (its local SDP). `direction` is `sendonly` for a publisher, `recvonly` for a
/// viewer. Simplified WebRTC SDP: ICE/DTLS lines are present but nothing is negotiated for real.
pub fn webrtc_pair(
    video_codec: Option<&str>,
    audio: bool,
    data: bool,
    direction: &str,
    session_id: u64,
) -> (String, String) {
    let answer_dir = if direction == "sendonly" {
        "recvonly"
    } else {
        "sendonly"
    };
    let mut offer =
        format!("v=0\r\no=- {session_id} 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\na=group:BUNDLE");
    let mut mids = Vec::new();
    if audio {
        mids.push("0");
    }
    if video_codec.is_some() {
        mids.push("1");
    }
    if data {
        mids.push("2");
    }
    for m in &mids {
        offer.push(' ');
        offer.push_str(m);
    }
    offer.push_str("\r\na=msid-semantic: WMS\r\n");
    let mut answer = format!(
        "v=0\r\no=- {} {} IN IP4 0.0.0.0\r\ns=Kurento Media Server\r\nc=IN IP4 0.0.0.0\r\nt=0 0\r\na=group:BUNDLE{}\r\n",
        session_id + 1,
        session_id + 1,
        mids.iter().map(|m| format!(" {m}")).collect::<String>()
    );
    let ice = "a=ice-ufrag:sim1\r\na=ice-pwd:simsimsimsimsimsimsimsim\r\na=fingerprint:sha-256 00:11:22:33:44:55:66:77:88:99:AA:BB:CC:DD:EE:FF:00:11:22:33:44:55:66:77:88:99:AA:BB:CC:DD:EE:FF\r\n";
    if audio {
        let m = format!("m=audio 9 UDP/TLS/RTP/SAVPF 111\r\nc=IN IP4 0.0.0.0\r\na=rtcp:9 IN IP4 0.0.0.0\r\n{ice}a=mid:0\r\na=rtcp-mux\r\na=rtpmap:111 opus/48000/2\r\na=fmtp:111 minptime=10;useinbandfec=1\r\n");
        offer.push_str(&m);
        offer.push_str(&format!("a=setup:actpass\r\na={direction}\r\n"));
        answer.push_str(&m);
        answer.push_str(&format!("a=setup:active\r\na={answer_dir}\r\n"));
    }
    if let Some(codec) = video_codec {
        let (pt, map, fmtp) = match codec.to_ascii_uppercase().as_str() {
            "H264" => (
                103,
                "H264/90000",
                Some("level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=42e01f"),
            ),
            "VP9" => (98, "VP9/90000", None),
            "AV1" => (45, "AV1/90000", None),
            _ => (96, "VP8/90000", None),
        };
        let mut m = format!("m=video 9 UDP/TLS/RTP/SAVPF {pt}\r\nc=IN IP4 0.0.0.0\r\na=rtcp:9 IN IP4 0.0.0.0\r\n{ice}a=mid:1\r\na=rtcp-mux\r\na=rtpmap:{pt} {map}\r\n");
        if let Some(f) = fmtp {
            m.push_str(&format!("a=fmtp:{pt} {f}\r\n"));
        }
        m.push_str(&format!("a=rtcp-fb:{pt} goog-remb\r\na=rtcp-fb:{pt} ccm fir\r\na=rtcp-fb:{pt} nack\r\na=rtcp-fb:{pt} nack pli\r\n"));
        offer.push_str(&m);
        offer.push_str(&format!("a=setup:actpass\r\na={direction}\r\n"));
        answer.push_str(&m);
        answer.push_str(&format!("a=setup:active\r\na={answer_dir}\r\n"));
    }
    if data {
        let m = format!("m=application 9 UDP/DTLS/SCTP webrtc-datachannel\r\nc=IN IP4 0.0.0.0\r\n{ice}a=mid:2\r\na=sctp-port:5000\r\n");
        offer.push_str(&m);
        offer.push_str("a=setup:actpass\r\n");
        answer.push_str(&m);
        answer.push_str("a=setup:active\r\n");
    }
    (offer, answer)
}

#[cfg(test)]
mod tests {
    use super::*;

    const TAP_OFFER: &str = "v=0\r\no=- 0 0 IN IP4 127.0.0.1\r\ns=tap\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio 40000 RTP/AVP 111\r\na=rtpmap:111 opus/48000/2\r\na=recvonly\r\nm=video 40002 RTP/AVPF 96\r\na=rtpmap:96 VP8/90000\r\na=rtcp-fb:96 nack pli\r\na=rtcp-fb:96 ccm fir\r\na=recvonly\r\n";

    #[test]
    fn answers_like_kms() {
        let offer = offered_media(&parse(TAP_OFFER).unwrap()).unwrap();
        assert_eq!(offer[1].rtcp_port, 40003);
        let a = rtp_answer(&offer, "10.0.0.7", &[50000, 50002], &[1, 2], 42).unwrap();
        assert!(
            a.text.contains("m=audio 50000 RTP/AVP 111\r\n"),
            "{}",
            a.text
        );
        assert!(a.text.contains("a=sendonly\r\na=rtcp:50001\r\n"));
        assert!(a.text.contains(
            "a=rtpmap:96 VP8/90000\r\na=rtcp-fb:96 nack pli\r\na=rtcp-fb:96 ccm fir\r\n"
        ));
        assert!(a.text.contains("c=IN IP4 10.0.0.7\r\n"));
        assert_eq!(a.accepted[1].as_ref().unwrap().1.pt, 96);
    }

    #[test]
    fn rejects_unsupported_sections() {
        let offer = TAP_OFFER.replace("VP8/90000", "AV1X/90000");
        let media = offered_media(&parse(&offer).unwrap()).unwrap();
        let a = rtp_answer(&media, "10.0.0.7", &[50000, 50002], &[1, 2], 1).unwrap();
        assert!(a.text.contains("m=video 0 RTP/AVPF 96"));
        assert!(a.accepted[1].is_none());
    }

    #[test]
    fn webrtc_publisher_offer_is_sendonly() {
        let (offer, answer) = webrtc_pair(Some("VP8"), true, false, "sendonly", 7);
        let o = offered_media(&parse(&offer).unwrap()).unwrap();
        assert!(o.iter().all(|m| m.direction == "sendonly"));
        let a = offered_media(&parse(&answer).unwrap()).unwrap();
        assert_eq!(a[1].formats[0].encoding, "VP8");
    }
}
