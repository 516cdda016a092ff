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
