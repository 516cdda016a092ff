//! Headless Chromium (Debian's `chromium`, installed by scripts/setup) driven over the DevTools
//! protocol, and a tiny static file server for pages under test.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use base64::Engine;
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

pub struct Browser {
    child: Child,
    profile: PathBuf,
    devtools: String,
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.profile);
    }
}

/// Starts Chromium on `url`, with `extra` flags after the standard headless ones.
pub fn launch(url: &str, extra: &[&str]) -> Browser {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    // One profile per browser: several participants run side by side in one test.
    let profile = std::env::temp_dir().join(format!(
        "tap-chromium-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    ));
    let mut child = Command::new("chromium")
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            "--hide-scrollbars",
            "--window-size=1000,600",
            "--remote-debugging-port=0",
        ])
        .args(extra)
        .arg(format!("--user-data-dir={}", profile.display()))
        .arg(url)
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .expect("chromium (scripts/setup installs Debian's package)");
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    // Keep draining stderr for the browser's whole life (a closed pipe would kill it).
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Some(ws) = line.strip_prefix("DevTools listening on ") {
                let _ = tx.send(ws.trim().to_owned());
            }
        }
    });
    let devtools = rx.recv_timeout(Duration::from_secs(30)).unwrap_or_default();
    assert!(
        !devtools.is_empty(),
        "chromium did not start its DevTools endpoint"
    );
    Browser {
        child,
        profile,
        devtools,
    }
}

/// The page's DevTools WebSocket URL (from /json/list on the browser's port).
pub async fn page_socket(browser: &Browser) -> String {
    let host = browser
        .devtools
        .trim_start_matches("ws://")
        .split('/')
        .next()
        .unwrap()
        .to_owned();
    for _ in 0..50 {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut s = tokio::net::TcpStream::connect(&host).await.unwrap();
        s.write_all(
            format!("GET /json/list HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n")
                .as_bytes(),
        )
        .await
        .unwrap();
        // The DevTools server may keep the connection open: read until the body is complete.
        let mut out = Vec::new();
        let mut buf = [0u8; 8192];
        while let Ok(Ok(n)) =
            tokio::time::timeout(Duration::from_millis(500), s.read(&mut buf)).await
        {
            if n == 0 {
                break;
            }
            out.extend_from_slice(&buf[..n]);
            let text = String::from_utf8_lossy(&out);
            if let Some((head, body)) = text.split_once("\r\n\r\n") {
                let len = head.lines().find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length:")
                        .map(|v| v.trim().parse::<usize>().unwrap_or(0))
                });
                if len.is_some_and(|len| body.len() >= len) {
                    break;
                }
            }
        }
        let out = String::from_utf8_lossy(&out).into_owned();
        if let Some(body) = out.split("\r\n\r\n").nth(1) {
            if let Ok(list) = serde_json::from_str::<Vec<Value>>(body) {
                if let Some(p) = list.iter().find(|t| {
                    t["type"] == "page" && t["url"].as_str().is_some_and(|u| u.starts_with("http"))
                }) {
                    return p["webSocketDebuggerUrl"].as_str().unwrap().to_owned();
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("no page target");
}

pub struct Page {
    ws: tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >,
    next: u64,
}

/// Opens the browser's page over DevTools.
pub async fn open_page(browser: &Browser) -> Page {
    let (ws, _) = tokio_tungstenite::connect_async(page_socket(browser).await)
        .await
        .unwrap();
    Page { ws, next: 0 }
}

impl Page {
    pub async fn call(&mut self, method: &str, params: Value) -> Value {
        self.next += 1;
        let id = self.next;
        self.ws
            .send(Message::text(
                json!({"id": id, "method": method, "params": params}).to_string(),
            ))
            .await
            .unwrap();
        while let Some(Ok(msg)) = self.ws.next().await {
            if let Message::Text(t) = msg {
                let v: Value = serde_json::from_str(t.as_str()).unwrap();
                if v["id"] == id {
                    return v["result"].clone();
                }
            }
        }
        panic!("DevTools connection closed");
    }

    pub async fn eval(&mut self, expression: &str) -> Value {
        let r = self
            .call(
                "Runtime.evaluate",
                json!({"expression": expression, "returnByValue": true}),
            )
            .await;
        if r.get("exceptionDetails").is_some() {
            eprintln!("evaluate {expression:?}: {r}");
        }
        r["result"]["value"].clone()
    }

    /// Evaluates an expression whose value is a promise, and returns what it resolves to.
    pub async fn eval_async(&mut self, expression: &str) -> Value {
        let r = self
            .call(
                "Runtime.evaluate",
                json!({"expression": expression, "returnByValue": true, "awaitPromise": true}),
            )
            .await;
        if r.get("exceptionDetails").is_some() {
            eprintln!("evaluate {expression:?}: {r}");
        }
        r["result"]["value"].clone()
    }

    /// Waits until `expression` is true (polling), up to `limit`.
    pub async fn wait_for(&mut self, expression: &str, limit: Duration) -> bool {
        let deadline = std::time::Instant::now() + limit;
        while std::time::Instant::now() < deadline {
            if self.eval(expression).await == json!(true) {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        false
    }

    /// Saves a PNG screenshot as `target/artefacts/<name>` and returns its size in bytes.
    pub async fn screenshot(&mut self, name: &str) -> usize {
        let shot = self
            .call("Page.captureScreenshot", json!({"format": "png"}))
            .await;
        let png = base64::engine::general_purpose::STANDARD
            .decode(shot["data"].as_str().unwrap_or_default())
            .unwrap_or_default();
        assert!(png.starts_with(b"\x89PNG"), "a PNG screenshot");
        let artefacts = crate::workspace_root().join("target/artefacts");
        std::fs::create_dir_all(&artefacts).unwrap();
        std::fs::write(artefacts.join(name), &png).unwrap();
        png.len()
    }
}

/// Serves the files of `dir` over HTTP on a free port (for pages under test).
pub async fn serve_dir(dir: PathBuf) -> std::net::SocketAddr {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let dir = dir.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 4096];
                let n = s.read(&mut buf).await.unwrap_or(0);
                let req = String::from_utf8_lossy(&buf[..n]).into_owned();
                let path = req
                    .split_whitespace()
                    .nth(1)
                    .unwrap_or("/")
                    .trim_start_matches('/')
                    .to_owned();
                let (status, body, kind) = match std::fs::read(dir.join(&path)) {
                    Ok(b) if !path.contains("..") => (
                        "200 OK",
                        b,
                        if path.ends_with(".js") {
                            "text/javascript"
                        } else {
                            "text/html"
                        },
                    ),
                    _ => ("404 Not Found", b"not found".to_vec(), "text/plain"),
                };
                let head = format!("HTTP/1.1 {status}\r\nContent-Type: {kind}; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n", body.len());
                let _ = s.write_all(head.as_bytes()).await;
                let _ = s.write_all(&body).await;
            });
        }
    });
    addr
}
