//! Who may read the data endpoints (the dashboard, `/events`, `/history`, `/models`): they carry
//! every participant's results, so they need a credential; `/metrics` and `/healthz` carry no
//! personal data (no room or participant appears in a metric label) and stay open for probes.
//!
//! A pure core: the credential and a request's headers and query in, a verdict out (tested without
//! a server); `http.rs` applies it. Credentials:
//! - a bearer token (`Authorization: Bearer <token>`), from a file or the environment, compared in
//!   constant time, never logged;
//! - a session cookie for browsers (EventSource cannot send headers): the dashboard's login posts
//!   the token once and gets an HttpOnly, SameSite=Strict cookie holding a digest of it, never the
//!   token itself;
//! - an authenticating reverse proxy's header (e.g. `X-Forwarded-User`), trusted only when
//!   configured (the proxy must strip it from clients' requests).
//!
//! A token in a URL query is refused outright: URLs end up in logs, proxies and browser history.

use sha2::{Digest, Sha256};

/// Shortest token accepted (characters): 128 bits of base64 or hex are 22 or 32.
pub const MIN_TOKEN_LEN: usize = 24;
/// Name of the dashboard's session cookie.
pub const SESSION_COOKIE: &str = "kurento_tap_session";

/// A credential that cannot be used.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum AuthError {
    /// The token file cannot be read.
    #[error("token file {path}: {reason}")]
    File {
        /// File.
        path: String,
        /// Why.
        reason: String,
    },
    /// Too short, or with characters a header cannot carry.
    #[error("the data token must be at least {MIN_TOKEN_LEN} printable characters without spaces (make one with `openssl rand -hex 32`); got {0} characters")]
    Weak(usize),
    /// A proxy header name that is not a header name.
    #[error("auth proxy header {0:?} is not a valid header name")]
    ProxyHeader(String),
}

/// The data token. Its text is kept private: `Debug` prints nothing of it.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretToken {
    digest: [u8; 32],
    cookie: String,
}

impl std::fmt::Debug for SecretToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SecretToken(…)")
    }
}

fn digest(domain: &[u8], text: &[u8]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(domain);
    h.update(text);
    h.finalize().into()
}

/// Equal, in a time that does not depend on where they differ.
fn same(a: &[u8; 32], b: &[u8; 32]) -> bool {
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

impl SecretToken {
    /// A token from its text (surrounding whitespace, e.g. a file's newline, is ignored).
    pub fn new(text: &str) -> Result<Self, AuthError> {
        let t = text.trim();
        if t.chars().count() < MIN_TOKEN_LEN || t.chars().any(|c| !c.is_ascii_graphic()) {
            return Err(AuthError::Weak(t.chars().count()));
        }
        let cookie_digest = digest(b"kurento-tap session v1\0", t.as_bytes());
        Ok(SecretToken {
            digest: digest(b"kurento-tap token v1\0", t.as_bytes()),
            cookie: cookie_digest.iter().map(|b| format!("{b:02x}")).collect(),
        })
    }

    /// The token in a file (mode and owner are the operator's: a Kubernetes Secret, a 0600 file).
    pub fn from_file(path: &std::path::Path) -> Result<Self, AuthError> {
        let text = std::fs::read_to_string(path).map_err(|e| AuthError::File {
            path: path.display().to_string(),
            reason: e.to_string(),
        })?;
        Self::new(&text)
    }

    /// Whether `presented` is the token (constant time: both sides are hashed first, so neither
    /// the length nor the first differing byte shows in the timing).
    pub fn matches(&self, presented: &str) -> bool {
        same(
            &self.digest,
            &digest(b"kurento-tap token v1\0", presented.trim().as_bytes()),
        )
    }

    /// The session cookie's value for this token (a digest: the token never sits in a browser).
    pub fn session_value(&self) -> &str {
        &self.cookie
    }

    fn session_matches(&self, presented: &str) -> bool {
        same(
            &digest(b"c\0", self.cookie.as_bytes()),
            &digest(b"c\0", presented.as_bytes()),
        )
    }
}

/// How the data endpoints are protected.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DataAuth {
    /// The bearer token (and the cookie derived from it).
    pub token: Option<SecretToken>,
    /// A header set by an authenticating reverse proxy, trusted when present and not empty.
    pub proxy_header: Option<String>,
}

/// What a request gets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Served.
    Allowed,
    /// 401: no credential, or a wrong one (the reason is for the metric, not the client).
    Unauthorized(&'static str),
    /// 400: a credential in the URL.
    CredentialInQuery,
}

/// Query parameters that look like credentials.
const QUERY_CREDENTIALS: [&str; 5] = ["token", "access_token", "auth", "bearer", "api_key"];

impl DataAuth {
    /// Whether anything is required at all.
    pub fn enabled(&self) -> bool {
        self.token.is_some() || self.proxy_header.is_some()
    }

    /// Checks a proxy header name.
    pub fn with_proxy_header(mut self, name: Option<String>) -> Result<Self, AuthError> {
        if let Some(n) = &name {
            let ok = !n.is_empty()
                && n.len() <= 100
                && n.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
            if !ok {
                return Err(AuthError::ProxyHeader(n.clone()));
            }
        }
        self.proxy_header = name.map(|n| n.to_ascii_lowercase());
        Ok(self)
    }

    /// The verdict for a request, from its headers (`name` lower-case, value) and raw query.
    pub fn check<'a>(
        &self,
        headers: impl IntoIterator<Item = (&'a str, &'a str)>,
        query: Option<&str>,
    ) -> Verdict {
        if let Some(q) = query {
            let credential = q.split('&').any(|kv| {
                let key = kv
                    .split('=')
                    .next()
                    .unwrap_or_default()
                    .to_ascii_lowercase();
                QUERY_CREDENTIALS.contains(&key.as_str())
            });
            if credential {
                return Verdict::CredentialInQuery;
            }
        }
        if !self.enabled() {
            return Verdict::Allowed;
        }
        let mut saw = "no credential";
        for (name, value) in headers {
            match name {
                "authorization" => {
                    if let (Some(t), Some(b)) = (&self.token, bearer(value)) {
                        if t.matches(b) {
                            return Verdict::Allowed;
                        }
                        saw = "wrong token";
                    }
                }
                "cookie" => {
                    if let (Some(t), Some(c)) = (&self.token, cookie(value, SESSION_COOKIE)) {
                        if t.session_matches(c) {
                            return Verdict::Allowed;
                        }
                        saw = "wrong session";
                    }
                }
                n if Some(n) == self.proxy_header.as_deref() && !value.trim().is_empty() => {
                    return Verdict::Allowed;
                }
                _ => {}
            }
        }
        Verdict::Unauthorized(saw)
    }
}

/// The token of an `Authorization: Bearer …` value.
fn bearer(value: &str) -> Option<&str> {
    let (scheme, rest) = value.trim().split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then_some(rest.trim())
}

/// One cookie's value from a `Cookie:` header.
fn cookie<'a>(header: &'a str, name: &str) -> Option<&'a str> {
    header
        .split(';')
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.trim())
}

#[cfg(test)]
mod tests {
    use super::*;

    const TOKEN: &str = "0123456789abcdef0123456789abcdef";

    fn with_token() -> DataAuth {
        DataAuth {
            token: Some(SecretToken::new(TOKEN).unwrap()),
            proxy_header: None,
        }
    }

    #[test]
    fn the_right_bearer_token_is_let_in_and_a_wrong_one_or_none_is_not() {
        let a = with_token();
        let bearer = format!("Bearer {TOKEN}");
        assert_eq!(
            a.check([("authorization", bearer.as_str())], None),
            Verdict::Allowed
        );
        let lower = format!("bearer {TOKEN}");
        assert_eq!(
            a.check([("authorization", lower.as_str())], None),
            Verdict::Allowed
        );
        assert_eq!(
            a.check(
                [("authorization", "Bearer 0123456789abcdef0123456789abcdeX")],
                None
            ),
            Verdict::Unauthorized("wrong token")
        );
        assert_eq!(
            a.check([("authorization", TOKEN)], None),
            Verdict::Unauthorized("no credential"),
            "a bare token is not a bearer credential"
        );
        assert_eq!(a.check([], None), Verdict::Unauthorized("no credential"));
    }

    #[test]
    fn the_session_cookie_holds_a_digest_not_the_token() {
        let a = with_token();
        let value = a.token.as_ref().unwrap().session_value().to_owned();
        assert!(!value.contains(TOKEN));
        assert_eq!(value.len(), 64);
        let header = format!("theme=dark; {SESSION_COOKIE}={value}");
        assert_eq!(
            a.check([("cookie", header.as_str())], None),
            Verdict::Allowed
        );
        let raw = format!("{SESSION_COOKIE}={TOKEN}");
        assert_eq!(
            a.check([("cookie", raw.as_str())], None),
            Verdict::Unauthorized("wrong session")
        );
    }

    #[test]
    fn credentials_in_the_url_are_refused_even_when_right() {
        let a = with_token();
        let bearer = format!("Bearer {TOKEN}");
        for q in [
            format!("token={TOKEN}"),
            "x=1&access_token=abc".into(),
            "API_KEY=1".into(),
        ] {
            assert_eq!(
                a.check([("authorization", bearer.as_str())], Some(&q)),
                Verdict::CredentialInQuery,
                "{q}"
            );
        }
        assert_eq!(
            a.check([("authorization", bearer.as_str())], Some("room=standup")),
            Verdict::Allowed
        );
        // Refused without any auth configured too.
        assert_eq!(
            DataAuth::default().check([], Some("token=x")),
            Verdict::CredentialInQuery
        );
    }

    #[test]
    fn a_proxy_header_counts_only_when_configured_and_not_empty() {
        let a = DataAuth::default()
            .with_proxy_header(Some("X-Forwarded-User".into()))
            .unwrap();
        assert_eq!(
            a.check([("x-forwarded-user", "ana")], None),
            Verdict::Allowed
        );
        assert_eq!(
            a.check([("x-forwarded-user", " ")], None),
            Verdict::Unauthorized("no credential")
        );
        assert_eq!(
            with_token().check([("x-forwarded-user", "ana")], None),
            Verdict::Unauthorized("no credential"),
            "not trusted unless configured"
        );
        assert!(DataAuth::default()
            .with_proxy_header(Some("X-User: a".into()))
            .is_err());
    }

    #[test]
    fn short_or_spaced_tokens_are_refused_and_debug_prints_nothing_of_them() {
        assert_eq!(SecretToken::new("short").unwrap_err(), AuthError::Weak(5));
        assert!(SecretToken::new("0123456789abcdef 0123456789abcdef").is_err());
        let t = SecretToken::new(&format!("  {TOKEN}\n")).unwrap();
        assert!(t.matches(TOKEN));
        assert!(!format!("{t:?}").contains("0123"));
        let e = SecretToken::from_file(std::path::Path::new("/nonexistent/token")).unwrap_err();
        assert!(e.to_string().contains("/nonexistent/token"));
    }

    #[test]
    fn without_any_credential_configured_everything_but_query_tokens_passes() {
        assert!(!DataAuth::default().enabled());
        assert_eq!(DataAuth::default().check([], None), Verdict::Allowed);
    }
}
