//! SRTP for the tap leg (KMS → daemon), keyed with SDES (RFC 4568) the way KMS's RtpEndpoint does
//! it: the endpoint is created with a crypto suite and no key (KMS then draws its own master key),
//! our offer carries `RTP/SAVPF` and one `a=crypto` line with our key (KMS decrypts our RTCP with
//! it), and KMS's answer carries its key (we decrypt its RTP and RTCP with it).
//!
//! Pure: suites, keys, `a=crypto` lines and the decision of `auto`; the GStreamer side
//! (`srtpdec`/`srtpenc`) is in [`crate::media::receiver`]. Keys never reach a log: [`MasterKey`]'s
//! `Debug` is redacted and its bytes are wiped when dropped.

use std::fmt;
use std::net::IpAddr;

use base64::Engine as _;
use kurento_client::CryptoSuite;

/// Whether taps are encrypted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TapCrypto {
    /// SRTP unless KMS is in this host and network namespace ([`auto_wants_srtp`]).
    #[default]
    Auto,
    /// Always SRTP (SDES keys).
    Sdes,
    /// Plain RTP.
    Off,
}

impl std::str::FromStr for TapCrypto {
    type Err = SrtpError;
    fn from_str(s: &str) -> Result<Self, SrtpError> {
        match s.trim().to_ascii_lowercase().as_str() {
            "auto" => Ok(Self::Auto),
            "sdes" | "srtp" => Ok(Self::Sdes),
            "off" | "none" | "rtp" => Ok(Self::Off),
            other => Err(SrtpError::Config(format!(
                "unknown tap crypto {other:?}: use auto, sdes or off"
            ))),
        }
    }
}

impl fmt::Display for TapCrypto {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Auto => "auto",
            Self::Sdes => "sdes",
            Self::Off => "off",
        })
    }
}

/// The SRTP suites KMS's RtpEndpoint offers (kmsrtpsdescryptosuite.h).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Suite {
    /// AES-128 counter mode, 80-bit HMAC-SHA1 tag (RFC 4568's default).
    #[default]
    Aes128Sha80,
    /// AES-128, 32-bit tag on RTP.
    Aes128Sha32,
    /// AES-256 (RFC 6188), 80-bit tag.
    Aes256Sha80,
    /// AES-256, 32-bit tag.
    Aes256Sha32,
}

impl Suite {
    /// All, strongest first.
    pub const ALL: [Suite; 4] = [
        Suite::Aes256Sha80,
        Suite::Aes128Sha80,
        Suite::Aes256Sha32,
        Suite::Aes128Sha32,
    ];

    /// The name in SDP's `a=crypto`.
    pub fn sdp_name(self) -> &'static str {
        match self {
            Suite::Aes128Sha80 => "AES_CM_128_HMAC_SHA1_80",
            Suite::Aes128Sha32 => "AES_CM_128_HMAC_SHA1_32",
            Suite::Aes256Sha80 => "AES_256_CM_HMAC_SHA1_80",
            Suite::Aes256Sha32 => "AES_256_CM_HMAC_SHA1_32",
        }
    }

    /// The value of Kurento's `CryptoSuite` (the RtpEndpoint constructor's `crypto.crypto`).
    pub fn kurento(self) -> CryptoSuite {
        match self {
            Suite::Aes128Sha80 => CryptoSuite::Aes128CmHmacSha180,
            Suite::Aes128Sha32 => CryptoSuite::Aes128CmHmacSha132,
            Suite::Aes256Sha80 => CryptoSuite::Aes256CmHmacSha180,
            Suite::Aes256Sha32 => CryptoSuite::Aes256CmHmacSha132,
        }
    }

    /// Master key + salt length in bytes (30 for AES-128, 46 for AES-256).
    pub fn key_len(self) -> usize {
        match self {
            Suite::Aes128Sha80 | Suite::Aes128Sha32 => 30,
            Suite::Aes256Sha80 | Suite::Aes256Sha32 => 46,
        }
    }

    /// GStreamer's `srtp-cipher` / `srtcp-cipher` value.
    pub fn gst_cipher(self) -> &'static str {
        match self {
            Suite::Aes128Sha80 | Suite::Aes128Sha32 => "aes-128-icm",
            Suite::Aes256Sha80 | Suite::Aes256Sha32 => "aes-256-icm",
        }
    }

    /// GStreamer's `srtp-auth` value. KMS uses the same tag length on SRTCP as on SRTP (its
    /// kmssrtpconnection.c sets both from the suite), so we do too.
    pub fn gst_auth(self) -> &'static str {
        match self {
            Suite::Aes128Sha80 | Suite::Aes256Sha80 => "hmac-sha1-80",
            Suite::Aes128Sha32 | Suite::Aes256Sha32 => "hmac-sha1-32",
        }
    }

    /// Bytes SRTP adds to an RTP packet (the authentication tag).
    pub fn tag_len(self) -> usize {
        match self {
            Suite::Aes128Sha80 | Suite::Aes256Sha80 => 10,
            Suite::Aes128Sha32 | Suite::Aes256Sha32 => 4,
        }
    }

    fn from_sdp_name(name: &str) -> Option<Suite> {
        Suite::ALL.into_iter().find(|s| s.sdp_name() == name)
    }
}

impl std::str::FromStr for Suite {
    type Err = SrtpError;
    /// Accepts the SDP name or Kurento's (`AES_128_CM_HMAC_SHA1_80`), any case.
    fn from_str(s: &str) -> Result<Self, SrtpError> {
        let up = s.trim().to_ascii_uppercase();
        Suite::ALL
            .into_iter()
            .find(|x| x.sdp_name() == up || x.kurento().as_str() == up)
            .ok_or_else(|| {
                SrtpError::Config(format!(
                    "unknown SRTP suite {s:?}: use one of {}",
                    Suite::ALL.map(|x| x.kurento().as_str()).join(", ")
                ))
            })
    }
}

impl fmt::Display for Suite {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.kurento().as_str())
    }
}

/// SRTP problems: each a clear reason, none carrying key material.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SrtpError {
    /// A bad setting.
    #[error("{0}")]
    Config(String),
    /// No randomness from the OS.
    #[error("cannot draw a master key from the OS: {0}")]
    Random(String),
    /// KMS's `a=crypto` is unusable.
    #[error("KMS's a=crypto: {0}")]
    Crypto(String),
}

/// A master key + salt. `Debug` never shows it; its bytes are wiped on drop.
#[derive(Clone, PartialEq, Eq)]
pub struct MasterKey {
    bytes: Vec<u8>,
}

impl fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "MasterKey({} bytes, redacted)", self.bytes.len())
    }
}

impl Drop for MasterKey {
    fn drop(&mut self) {
        use zeroize::Zeroize as _;
        self.bytes.zeroize();
    }
}

impl MasterKey {
    /// A fresh key for `suite` from the OS's CSPRNG.
    pub fn generate(suite: Suite) -> Result<MasterKey, SrtpError> {
        let mut bytes = vec![0u8; suite.key_len()];
        getrandom::fill(&mut bytes).map_err(|e| SrtpError::Random(e.to_string()))?;
        Ok(MasterKey { bytes })
    }

    /// The raw bytes (for `srtpenc`/`srtpdec`).
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    fn base64(&self) -> String {
        base64::engine::general_purpose::STANDARD.encode(&self.bytes)
    }
}

/// One side's SDES parameters: suite and master key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SdesKey {
    /// The suite.
    pub suite: Suite,
    /// The key.
    pub key: MasterKey,
}

/// The tag of our single `a=crypto` line (KMS answers with the same tag).
pub const CRYPTO_TAG: u32 = 1;

/// The value of our `a=crypto` attribute (`1 AES_CM_128_HMAC_SHA1_80 inline:<key>`). Goes into
/// the offer only; never log it.
pub fn crypto_attribute(ours: &SdesKey) -> String {
    format!(
        "{CRYPTO_TAG} {} inline:{}",
        ours.suite.sdp_name(),
        ours.key.base64()
    )
}

/// Reads KMS's key from the `a=crypto` values of one answered media section: it must answer our
/// tag with the suite we asked for and a key of that suite's length. Errors name what is wrong,
/// never the key.
pub fn answer_key<'a>(
    media: &str,
    values: impl IntoIterator<Item = &'a str>,
    want: Suite,
) -> Result<SdesKey, SrtpError> {
    let mut seen = Vec::new();
    for v in values {
        let mut parts = v.split_whitespace();
        let (Some(tag), Some(suite), Some(params)) = (parts.next(), parts.next(), parts.next())
        else {
            seen.push("malformed line".to_string());
            continue;
        };
        if tag.parse::<u32>().ok() != Some(CRYPTO_TAG) {
            seen.push(format!("tag {}", truncate(tag)));
            continue;
        }
        let Some(suite) = Suite::from_sdp_name(suite) else {
            seen.push(format!("suite {}", truncate(suite)));
            continue;
        };
        if suite != want {
            return Err(SrtpError::Crypto(format!(
                "{media}: KMS answered {} where {} was offered",
                suite.sdp_name(),
                want.sdp_name()
            )));
        }
        // key-params: "inline:" key-salt ["|" lifetime] ["|" MKI ":" length]; one key only.
        let Some(inline) = params.strip_prefix("inline:") else {
            return Err(SrtpError::Crypto(format!(
                "{media}: key method is not inline"
            )));
        };
        let mut fields = inline.split('|');
        let b64 = fields.next().unwrap_or_default();
        if fields.any(|f| f.contains(':')) {
            return Err(SrtpError::Crypto(format!(
                "{media}: a master key identifier (MKI) is not supported"
            )));
        }
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(b64)
            .map_err(|_| SrtpError::Crypto(format!("{media}: the key is not base64")))?;
        if bytes.len() != want.key_len() {
            return Err(SrtpError::Crypto(format!(
                "{media}: a {}-byte key where {} needs {}",
                bytes.len(),
                want.sdp_name(),
                want.key_len()
            )));
        }
        return Ok(SdesKey {
            suite,
            key: MasterKey { bytes },
        });
    }
    Err(SrtpError::Crypto(if seen.is_empty() {
        format!("{media}: no a=crypto in KMS's answer (is SRTP supported there?)")
    } else {
        format!("{media}: no usable a=crypto ({})", seen.join(", "))
    }))
}

/// A token from KMS's line, quoted in an error only if it looks like a name or a number (never a
/// fragment of a key).
fn truncate(s: &str) -> String {
    if s.len() <= 40 && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
        s.to_owned()
    } else {
        "(malformed)".to_owned()
    }
}

/// `auto`: plain RTP only when KMS is in this host *and* network namespace — its address is
/// loopback or one this process can bind (so the tap leg never leaves the kernel); SRTP otherwise.
/// `can_bind` is passed in (the adapter tries a UDP bind) so this stays testable.
pub fn auto_wants_srtp(kms_addrs: &[IpAddr], can_bind: impl Fn(IpAddr) -> bool) -> bool {
    if kms_addrs.is_empty() {
        return true;
    }
    !kms_addrs
        .iter()
        .all(|ip| ip.is_loopback() || ip.is_unspecified() || can_bind(*ip))
}

/// Whether a tap on this KMS is encrypted.
pub fn wants_srtp(
    mode: TapCrypto,
    kms_addrs: &[IpAddr],
    can_bind: impl Fn(IpAddr) -> bool,
) -> bool {
    match mode {
        TapCrypto::Sdes => true,
        TapCrypto::Off => false,
        TapCrypto::Auto => auto_wants_srtp(kms_addrs, can_bind),
    }
}

/// The adapter's `can_bind`: a UDP socket binds to an address only if it is one of this network
/// namespace's own.
pub fn local_address(ip: IpAddr) -> bool {
    std::net::UdpSocket::bind((ip, 0)).is_ok()
}

/// Telling which packets an SRTP decoder refused, one pad at a time, without mistaking a packet in
/// flight for a refusal.
///
/// Why not "packets in − packets out": a packet is counted in before the decoder works on it and
/// out after, so a reader between the two saw one refusal that was not (the real-KMS SRTP test read
/// `1` on a clean leg), and the metric only grows. A decoder's pad works synchronously on one
/// thread: a packet that went in either comes out before the next one goes in on the same pad, or
/// was refused. So each pad keeps the state of its last packet, and the next packet settles it.
pub mod refusals {
    /// Nothing pending on the pad.
    pub const NONE: u8 = 0;
    /// A packet went in with the keys known, and has not come out yet.
    pub const WITH_KEYS: u8 = 1;
    /// A packet went in before KMS's keys were known, and has not come out yet.
    pub const BEFORE_KEYS: u8 = 2;

    /// What the packet before this one turned out to be.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub enum Settled {
        /// It came out (or there was none).
        Passed,
        /// The decoder refused it with keys to check it against: authentication failed, a replay.
        Refused,
        /// It was dropped for want of a key (KMS may send RTCP before we know its keys):
        /// expected, not a refusal.
        DroppedBeforeKeys,
    }

    /// The pad's state when a packet goes in (`keys_known`: KMS's keys are set).
    pub fn entering(keys_known: bool) -> u8 {
        if keys_known {
            WITH_KEYS
        } else {
            BEFORE_KEYS
        }
    }

    /// What the previous state of the pad, replaced by a packet going in, says of the packet
    /// before it.
    pub fn settle(previous: u8) -> Settled {
        match previous {
            WITH_KEYS => Settled::Refused,
            BEFORE_KEYS => Settled::DroppedBeforeKeys,
            _ => Settled::Passed,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_packet_that_came_out_is_not_a_refusal_and_one_that_did_not_is() {
        use refusals::*;
        // In, out, in: the first passed.
        let mut pad = NONE;
        assert_eq!(
            settle(std::mem::replace(&mut pad, entering(true))),
            Settled::Passed
        );
        pad = NONE; // it came out
        assert_eq!(
            settle(std::mem::replace(&mut pad, entering(true))),
            Settled::Passed
        );
        // In, in: the second found the first still pending: refused.
        assert_eq!(
            settle(std::mem::replace(&mut pad, entering(true))),
            Settled::Refused
        );
        // Before the keys, a packet that does not come out is dropped, not refused.
        let mut pad = entering(false);
        assert_eq!(
            settle(std::mem::replace(&mut pad, entering(true))),
            Settled::DroppedBeforeKeys
        );
        // A packet in flight is pending, never settled as refused until the next one comes.
        assert_eq!(pad, WITH_KEYS);
    }

    fn key(suite: Suite) -> SdesKey {
        SdesKey {
            suite,
            key: MasterKey::generate(suite).unwrap(),
        }
    }

    #[test]
    fn our_line_round_trips_through_the_answer_parser_for_every_suite() {
        for suite in Suite::ALL {
            let ours = key(suite);
            let line = crypto_attribute(&ours);
            assert!(line.starts_with(&format!("1 {} inline:", suite.sdp_name())));
            let back = answer_key("video", [line.as_str()], suite).unwrap();
            assert_eq!(back, ours);
            assert_eq!(back.key.bytes().len(), suite.key_len());
        }
    }

    #[test]
    fn fresh_keys_differ_and_never_print() {
        let a = key(Suite::Aes128Sha80);
        let b = key(Suite::Aes128Sha80);
        assert_ne!(a.key, b.key);
        let shown = format!("{a:?}");
        assert!(shown.contains("redacted"), "{shown}");
        assert!(!shown.contains(&a.key.base64()), "{shown}");
    }

    #[test]
    fn kms_answer_lines_as_kms_writes_them_are_read() {
        // As KMS 7.3 answers (kmssdpsdesext.c): tag, suite, inline key, no lifetime.
        let b64 = base64::engine::general_purpose::STANDARD.encode([7u8; 30]);
        let k = answer_key(
            "audio",
            [format!("1 AES_CM_128_HMAC_SHA1_80 inline:{b64}").as_str()],
            Suite::Aes128Sha80,
        )
        .unwrap();
        assert_eq!(k.key.bytes(), &[7u8; 30]);
        // A lifetime is allowed.
        let with_lifetime = format!("1 AES_CM_128_HMAC_SHA1_80 inline:{b64}|2^31");
        assert!(answer_key("audio", [with_lifetime.as_str()], Suite::Aes128Sha80).is_ok());
    }

    #[test]
    fn bad_answers_are_clear_errors_that_do_not_show_the_key() {
        let b64 = base64::engine::general_purpose::STANDARD.encode([9u8; 30]);
        let cases: Vec<(String, &str)> = vec![
            (String::new(), "no a=crypto"),
            ("garbage".into(), "malformed"),
            (format!("2 AES_CM_128_HMAC_SHA1_80 inline:{b64}"), "tag 2"),
            (format!("1 F8_128_HMAC_SHA1_80 inline:{b64}"), "suite F8"),
            (
                format!("1 AES_CM_128_HMAC_SHA1_32 inline:{b64}"),
                "where AES_CM_128_HMAC_SHA1_80 was offered",
            ),
            (format!("1 AES_CM_128_HMAC_SHA1_80 uri:{b64}"), "not inline"),
            ("1 AES_CM_128_HMAC_SHA1_80 inline:!!!".into(), "not base64"),
            (
                format!(
                    "1 AES_CM_128_HMAC_SHA1_80 inline:{}",
                    base64::engine::general_purpose::STANDARD.encode([1u8; 16])
                ),
                "16-byte key",
            ),
            (
                format!("1 AES_CM_128_HMAC_SHA1_80 inline:{b64}|2^20|1:4"),
                "MKI",
            ),
        ];
        for (line, want) in cases {
            let values: Vec<&str> = if line.is_empty() {
                vec![]
            } else {
                vec![line.as_str()]
            };
            let e = answer_key("video", values, Suite::Aes128Sha80)
                .unwrap_err()
                .to_string();
            assert!(e.contains(want), "{line:?} → {e}");
            assert!(!e.contains(&b64), "{e}");
        }
    }

    #[test]
    fn auto_encrypts_unless_kms_is_in_this_namespace() {
        let lo: IpAddr = "127.0.0.1".parse().unwrap();
        let lan: IpAddr = "10.1.2.3".parse().unwrap();
        let mine: IpAddr = "192.168.5.5".parse().unwrap();
        let local = |ip: IpAddr| ip == mine;
        assert!(!auto_wants_srtp(&[lo], local));
        assert!(!auto_wants_srtp(&["::1".parse().unwrap()], local));
        assert!(!auto_wants_srtp(&[mine], local));
        assert!(auto_wants_srtp(&[lan], local));
        assert!(auto_wants_srtp(&[lo, lan], local), "any remote address");
        assert!(auto_wants_srtp(&[], local), "unresolved: encrypt");
        assert!(wants_srtp(TapCrypto::Sdes, &[lo], local));
        assert!(!wants_srtp(TapCrypto::Off, &[lan], local));
        // The real adapter: loopback binds, a TEST-NET address does not.
        assert!(local_address(lo));
        assert!(!local_address("192.0.2.77".parse().unwrap()));
    }

    #[test]
    fn settings_parse_or_say_what_is_allowed() {
        assert_eq!("SDES".parse::<TapCrypto>().unwrap(), TapCrypto::Sdes);
        assert_eq!("off".parse::<TapCrypto>().unwrap(), TapCrypto::Off);
        assert!("maybe"
            .parse::<TapCrypto>()
            .unwrap_err()
            .to_string()
            .contains("auto, sdes or off"));
        assert_eq!(
            "aes_256_cm_hmac_sha1_80".parse::<Suite>().unwrap(),
            Suite::Aes256Sha80
        );
        assert_eq!(
            "AES_CM_128_HMAC_SHA1_32".parse::<Suite>().unwrap(),
            Suite::Aes128Sha32
        );
        assert!("AES_192".parse::<Suite>().is_err());
    }
}
