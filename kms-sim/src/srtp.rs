//! SDES-keyed SRTP as KMS's RtpEndpoint does it (kmsrtpendpoint.c, RtpEndpointImpl.cpp): created
//! with `crypto: {crypto: <suite>[, key | keyBase64]}` (no key: KMS draws one), it answers only
//! `RTP/SAVPF` sections whose first `a=crypto` line has its suite, with its own key under the
//! offer's tag, encrypts RTP and RTCP with its key and decrypts the peer's RTCP with the offered one.

use base64::Engine as _;
use serde_json::Value;

/// One of KMS's four suites.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Suite {
    /// Kurento's name (`AES_128_CM_HMAC_SHA1_80`).
    pub kurento: &'static str,
    /// SDP's name (`AES_CM_128_HMAC_SHA1_80`).
    pub sdp: &'static str,
    /// Master key + salt bytes.
    pub key_len: usize,
    /// GStreamer cipher.
    pub cipher: &'static str,
    /// GStreamer auth (KMS uses it for SRTCP too).
    pub auth: &'static str,
}

const SUITES: [Suite; 4] = [
    Suite {
        kurento: "AES_128_CM_HMAC_SHA1_32",
        sdp: "AES_CM_128_HMAC_SHA1_32",
        key_len: 30,
        cipher: "aes-128-icm",
        auth: "hmac-sha1-32",
    },
    Suite {
        kurento: "AES_128_CM_HMAC_SHA1_80",
        sdp: "AES_CM_128_HMAC_SHA1_80",
        key_len: 30,
        cipher: "aes-128-icm",
        auth: "hmac-sha1-80",
    },
    Suite {
        kurento: "AES_256_CM_HMAC_SHA1_32",
        sdp: "AES_256_CM_HMAC_SHA1_32",
        key_len: 46,
        cipher: "aes-256-icm",
        auth: "hmac-sha1-32",
    },
    Suite {
        kurento: "AES_256_CM_HMAC_SHA1_80",
        sdp: "AES_256_CM_HMAC_SHA1_80",
        key_len: 46,
        cipher: "aes-256-icm",
        auth: "hmac-sha1-80",
    },
];

/// An endpoint's SRTP: suite and its own master key.
#[derive(Clone, PartialEq, Eq)]
pub struct EndpointCrypto {
    /// The suite.
    pub suite: Suite,
    /// KMS's key.
    pub key: Vec<u8>,
}

impl std::fmt::Debug for EndpointCrypto {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "EndpointCrypto({}, key redacted)", self.suite.kurento)
    }
}

/// Reads the constructor's `crypto` parameter as KMS does: absent or without `crypto` → plain;
/// an unknown suite or a key of the wrong size → the error message KMS gives.
pub fn from_constructor(param: Option<&Value>) -> Result<Option<EndpointCrypto>, String> {
    let Some(p) = param.filter(|p| !p.is_null()) else {
        return Ok(None);
    };
    let Some(name) = p.get("crypto").and_then(Value::as_str) else {
        return Ok(None);
    };
    let suite = SUITES
        .into_iter()
        .find(|s| s.kurento == name)
        .ok_or_else(|| "Invalid crypto suite".to_owned())?;
    let key = if let Some(k) = p.get("key").and_then(Value::as_str) {
        k.as_bytes().to_vec()
    } else if let Some(b) = p.get("keyBase64").and_then(Value::as_str) {
        base64::engine::general_purpose::STANDARD
            .decode(b)
            .map_err(|_| "Master key is not valid Base64".to_owned())?
    } else {
        let mut k = vec![0u8; suite.key_len];
        getrandom::fill(&mut k).map_err(|e| format!("no randomness: {e}"))?;
        return Ok(Some(EndpointCrypto { suite, key: k }));
    };
    if key.len() != suite.key_len {
        return Err("Master key size is wrong".to_owned());
    }
    Ok(Some(EndpointCrypto { suite, key }))
}

/// The offered key KMS takes from a section's `a=crypto` values: the first line only (KMS looks
/// at index 0 of the offered keys), which must be of the endpoint's suite. Returns (tag, key).
pub fn offered_key(values: &[String], ours: &EndpointCrypto) -> Option<(u32, Vec<u8>)> {
    let first = values.first()?;
    let mut parts = first.split_whitespace();
    let tag = parts.next()?.parse::<u32>().ok()?;
    if parts.next()? != ours.suite.sdp {
        return None;
    }
    let inline = parts.next()?.strip_prefix("inline:")?;
    let b64 = inline.split('|').next()?;
    let key = base64::engine::general_purpose::STANDARD.decode(b64).ok()?;
    (key.len() == ours.suite.key_len).then_some((tag, key))
}

/// KMS's `a=crypto` value for the answer.
pub fn answer_attribute(tag: u32, ours: &EndpointCrypto) -> String {
    format!(
        "{tag} {} inline:{}",
        ours.suite.sdp,
        base64::engine::general_purpose::STANDARD.encode(&ours.key)
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn constructor_params_are_read_as_kms_reads_them() {
        assert_eq!(from_constructor(None), Ok(None));
        assert_eq!(from_constructor(Some(&json!({}))), Ok(None));
        let c = from_constructor(Some(&json!({"crypto": "AES_256_CM_HMAC_SHA1_80"})))
            .unwrap()
            .unwrap();
        assert_eq!(c.key.len(), 46);
        assert_eq!(
            from_constructor(Some(&json!({"crypto": "AES_192"}))),
            Err("Invalid crypto suite".into())
        );
        assert_eq!(
            from_constructor(Some(
                &json!({"crypto": "AES_128_CM_HMAC_SHA1_80", "key": "short"})
            )),
            Err("Master key size is wrong".into())
        );
        let k = from_constructor(Some(
            &json!({"crypto": "AES_128_CM_HMAC_SHA1_80", "key": "0123456789abcdef0123456789abcd"}),
        ))
        .unwrap()
        .unwrap();
        assert_eq!(k.key, b"0123456789abcdef0123456789abcd");
        assert!(!format!("{k:?}").contains("0123"));
    }

    #[test]
    fn only_the_first_offered_line_counts() {
        let ours = from_constructor(Some(&json!({"crypto": "AES_128_CM_HMAC_SHA1_80"})))
            .unwrap()
            .unwrap();
        let key = base64::engine::general_purpose::STANDARD.encode([5u8; 30]);
        let good = format!("1 AES_CM_128_HMAC_SHA1_80 inline:{key}");
        let other = format!("2 AES_CM_128_HMAC_SHA1_32 inline:{key}");
        assert_eq!(
            offered_key(std::slice::from_ref(&good), &ours),
            Some((1, vec![5; 30]))
        );
        assert_eq!(offered_key(&[other, good], &ours), None);
        assert_eq!(offered_key(&[], &ours), None);
        assert!(answer_attribute(1, &ours).starts_with("1 AES_CM_128_HMAC_SHA1_80 inline:"));
    }
}
