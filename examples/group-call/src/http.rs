//! One listener for the page (static files) and the signalling WebSocket (`/groupcall`).

use std::path::PathBuf;
use std::sync::Arc;

use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tracing::debug;

use crate::rooms::App;

pub async fn serve(listener: TcpListener, dir: PathBuf, app: Arc<App>) -> anyhow::Result<()> {
    loop {
        let (stream, peer) = listener.accept().await?;
        let (dir, app) = (dir.clone(), app.clone());
        tokio::spawn(async move {
            if let Err(e) = handle(stream, dir, app).await {
                debug!(%peer, error = %e, "connection ended");
            }
        });
    }
}

async fn handle(stream: TcpStream, dir: PathBuf, app: Arc<App>) -> anyhow::Result<()> {
    // Peek (not read) the request head: a WebSocket handshake is then read by tungstenite itself.
    let mut head = vec![0u8; 4096];
    let mut n = 0;
    for _ in 0..50 {
        n = stream.peek(&mut head).await?;
        if head[..n].windows(4).any(|w| w == b"\r\n\r\n") || n == head.len() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    let text = String::from_utf8_lossy(&head[..n]).to_ascii_lowercase();
    let path = text.split_whitespace().nth(1).unwrap_or("/").to_owned();
    if text.contains("upgrade: websocket") && path.starts_with("/groupcall") {
        let ws = tokio_tungstenite::accept_async(stream).await?;
        crate::rooms::session(app, ws).await;
        return Ok(());
    }
    if path.starts_with("/openvidu/api/") {
        return rest(stream, app).await;
    }
    if let Some(rest) = path.strip_prefix("/admin/") {
        // POST /admin/<mute|unmute|filter>?room=..&name=.. (tests: openvidu-server's own actions)
        let (action, query) = rest.split_once('?').unwrap_or((rest, ""));
        let arg = |k: &str| {
            query
                .split('&')
                .find_map(|kv| kv.strip_prefix(&format!("{k}=")))
                .unwrap_or_default()
                .to_owned()
        };
        let status = app.openvidu_admin(action, &arg("room"), &arg("name")).await;
        return reply(stream, status).await;
    }
    static_file(stream, &dir, &path).await
}

async fn static_file(
    mut stream: TcpStream,
    dir: &std::path::Path,
    path: &str,
) -> anyhow::Result<()> {
    use tokio::io::AsyncReadExt;
    // Consume the request we peeked.
    let mut sink = [0u8; 4096];
    let _ =
        tokio::time::timeout(std::time::Duration::from_millis(50), stream.read(&mut sink)).await;
    let file = path
        .split('?')
        .next()
        .unwrap_or("/")
        .trim_start_matches('/');
    let file = if file.is_empty() { "index.html" } else { file };
    let (status, body, kind) = match (file.contains(".."), std::fs::read(dir.join(file))) {
        (false, Ok(body)) => {
            let kind = if file.ends_with(".js") {
                "text/javascript"
            } else {
                "text/html"
            };
            ("200 OK", body, kind)
        }
        _ => ("404 Not Found", b"not found".to_vec(), "text/plain"),
    };
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {kind}; charset=utf-8\r\nContent-Length: {}\r\nCache-Control: no-store\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(&body).await?;
    Ok(())
}

/// OpenVidu's REST surface (`--openvidu-shape --openvidu-secret`): the request and answer shapes of
/// openvidu-server 2.x's `SessionRestController` for what kurento-tap uses.
async fn rest(mut stream: TcpStream, app: Arc<App>) -> anyhow::Result<()> {
    use tokio::io::AsyncReadExt;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        let n = tokio::time::timeout(std::time::Duration::from_secs(5), stream.read(&mut chunk))
            .await??;
        if n == 0 {
            anyhow::bail!("closed before the request head");
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        if buf.len() > 64 * 1024 {
            anyhow::bail!("request head too large");
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
    let mut lines = head.lines();
    let request_line = lines.next().unwrap_or_default().to_owned();
    let mut length = 0usize;
    let mut auth = None;
    for l in lines {
        if let Some((k, v)) = l.split_once(':') {
            match k.trim().to_ascii_lowercase().as_str() {
                "content-length" => length = v.trim().parse().unwrap_or(0).min(1 << 20),
                "authorization" => auth = Some(v.trim().to_owned()),
                _ => {}
            }
        }
    }
    while buf.len() < head_end + length {
        let n = tokio::time::timeout(std::time::Duration::from_secs(5), stream.read(&mut chunk))
            .await??;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let body = &buf[head_end..buf.len().min(head_end + length)];
    let mut parts = request_line.split_whitespace();
    let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let (status, answer) = app.openvidu_rest(method, path, auth.as_deref(), body).await;
    let reason = match status {
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        404 => "Not Found",
        406 => "Not Acceptable",
        _ => "Error",
    };
    let head = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        answer.len()
    );
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(answer.as_bytes()).await?;
    Ok(())
}

async fn reply(mut stream: TcpStream, status: u16) -> anyhow::Result<()> {
    use tokio::io::AsyncReadExt;
    let mut sink = [0u8; 4096];
    let _ =
        tokio::time::timeout(std::time::Duration::from_millis(50), stream.read(&mut sink)).await;
    let head = format!("HTTP/1.1 {status} X\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
    stream.write_all(head.as_bytes()).await?;
    Ok(())
}
