//! The data endpoints (dashboard, /events, /history, /models) need the data token; the probes
//! (/metrics, /healthz) stay open and carry no personal data; a token in a URL is refused; the
//! browser's login gives a session cookie that is not the token.

use std::net::SocketAddr;
use std::time::Duration;

use tap_daemon::auth::{DataAuth, SecretToken};
use tap_test_support::prelude::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const TOKEN: &str = "s3cr3t-0123456789abcdef-0123456789";

/// One raw HTTP/1.1 request; the response's status code and whole text.
async fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> (u16, String) {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    req.push_str(body);
    s.write_all(req.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    // /events is a stream: the head and the first bytes are enough.
    let _ = tokio::time::timeout(Duration::from_secs(2), s.read_to_end(&mut out)).await;
    let text = String::from_utf8_lossy(&out).into_owned();
    let code = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (code, text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_endpoints_need_the_token_and_probes_do_not() {
    let h = Harness::new()
        .scenario("[[room]]\nname='r'\n")
        .sim_ports(57000..=57099)
        .tap_ports(57100..=57199)
        .configure(|c| {
            c.data_http_listen = Some(([127, 0, 0, 1], 0).into());
            c.data_auth = DataAuth {
                token: Some(SecretToken::new(TOKEN).unwrap()),
                proxy_header: None,
            };
        })
        .start()
        .await;
    let (probes, data) = (h.http(), h.daemon.data_http_addr.unwrap());
    assert_ne!(probes, data, "two listeners");

    // Probes: open, and nothing personal in them.
    let (code, metrics) = request(probes, "GET", "/metrics", &[], "").await;
    assert_eq!(code, 200);
    assert!(
        !metrics.contains("participant=") && !metrics.contains("room="),
        "no personal labels"
    );
    assert_eq!(request(probes, "GET", "/healthz", &[], "").await.0, 200);
    // The data endpoints are not on the probes' listener.
    assert_eq!(request(probes, "GET", "/models", &[], "").await.0, 404);

    // Without a credential: 401 everywhere, the page a login form with no data.
    for path in ["/", "/events", "/history", "/models"] {
        let (code, text) = request(data, "GET", path, &[], "").await;
        assert_eq!(code, 401, "{path}: {text}");
        assert!(
            text.to_ascii_lowercase()
                .contains("www-authenticate: bearer"),
            "{text}"
        );
    }
    let (_, login_page) = request(data, "GET", "/", &[], "").await;
    assert!(login_page.contains("data token") && !login_page.contains("EventSource"));
    let wrong = format!("Bearer {}x", &TOKEN[..TOKEN.len() - 1]);
    assert_eq!(
        request(data, "GET", "/models", &[("Authorization", &wrong)], "")
            .await
            .0,
        401
    );

    // With the bearer token: served.
    let bearer = format!("Bearer {TOKEN}");
    let (code, models) = request(data, "GET", "/models", &[("Authorization", &bearer)], "").await;
    assert_eq!(code, 200, "{models}");
    assert!(models.ends_with("[]"), "{models}");
    let (code, events) = request(data, "GET", "/events", &[("Authorization", &bearer)], "").await;
    assert_eq!(code, 200);
    assert!(events.contains("text/event-stream"), "{events}");
    // In the URL: refused, even when right.
    let q = format!("/models?token={TOKEN}");
    assert_eq!(request(data, "GET", &q, &[], "").await.0, 400);

    // The browser's login: a wrong token gets nothing; the right one a cookie that is a digest.
    assert_eq!(request(data, "POST", "/login", &[], "wrong").await.0, 401);
    let (code, resp) = request(data, "POST", "/login", &[], TOKEN).await;
    assert_eq!(code, 204, "{resp}");
    let cookie = resp
        .lines()
        .find_map(|l| {
            l.strip_prefix("set-cookie: ")
                .or_else(|| l.strip_prefix("Set-Cookie: "))
        })
        .expect("a session cookie")
        .to_owned();
    assert!(
        cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"),
        "{cookie}"
    );
    assert!(!cookie.contains(TOKEN));
    let session = cookie.split(';').next().unwrap().to_owned();
    let (code, page) = request(data, "GET", "/", &[("Cookie", &session)], "").await;
    assert_eq!(code, 200);
    assert!(page.contains("EventSource"), "the dashboard itself");

    // Every refusal counted, by reason; the token never in the metrics.
    let (_, metrics) = request(probes, "GET", "/metrics", &[], "").await;
    for reason in [
        "no_credential",
        "wrong_token",
        "credential_in_query",
        "wrong_login",
    ] {
        assert!(
            metrics.contains(&format!(
                "kurento_tap_http_refused_total{{reason=\"{reason}\"}}"
            )),
            "{reason}"
        );
    }
    assert!(!metrics.contains(TOKEN));
    h.stop().await;
}
