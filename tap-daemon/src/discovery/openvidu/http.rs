//! HTTP/1.1 as the REST client needs it: responses (plain and chunked, bounded) and base URLs.

use super::sessions::RestError;

// ---------------------------------------------------------------------------------------------
// HTTP/1.1 responses

/// A parsed HTTP response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpResponse {
    /// Status code.
    pub status: u16,
    /// Body (chunked transfer decoded).
    pub body: Vec<u8>,
}

/// Parses a whole HTTP/1.1 response as read until the server closed the connection (requests
/// are sent with `Connection: close`): status line, headers, and a body by `Content-Length`,
/// chunked transfer, or up to the end. Anything else is [`RestError::BadAnswer`].
pub fn parse_http_response(raw: &[u8], max_body: usize) -> Result<HttpResponse, RestError> {
    let bad = |m: &str| RestError::BadAnswer(m.to_owned());
    let head_end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| bad("no end of headers"))?;
    if head_end > 64 * 1024 {
        return Err(bad("headers too long"));
    }
    let head = std::str::from_utf8(&raw[..head_end]).map_err(|_| bad("headers not text"))?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let mut parts = status_line.splitn(3, ' ');
    let version = parts.next().unwrap_or_default();
    if !version.starts_with("HTTP/1.") {
        return Err(bad("not an HTTP/1.x answer"));
    }
    let status: u16 = parts
        .next()
        .and_then(|s| s.parse().ok())
        .filter(|s| (100..600).contains(s))
        .ok_or_else(|| bad("bad status line"))?;
    let mut length: Option<usize> = None;
    let mut chunked = false;
    for line in lines {
        let Some((k, v)) = line.split_once(':') else {
            return Err(bad("bad header line"));
        };
        let (k, v) = (k.trim(), v.trim());
        if k.eq_ignore_ascii_case("content-length") {
            length = Some(v.parse().map_err(|_| bad("bad Content-Length"))?);
        } else if k.eq_ignore_ascii_case("transfer-encoding") {
            chunked = v.to_ascii_lowercase().contains("chunked");
        }
    }
    let rest = &raw[head_end + 4..];
    let body = if chunked {
        decode_chunked(rest, max_body)?
    } else if let Some(n) = length {
        if n > max_body {
            return Err(bad("body too large"));
        }
        if rest.len() < n {
            return Err(bad("body shorter than Content-Length"));
        }
        rest[..n].to_vec()
    } else {
        if rest.len() > max_body {
            return Err(bad("body too large"));
        }
        rest.to_vec()
    };
    Ok(HttpResponse { status, body })
}

fn decode_chunked(mut rest: &[u8], max_body: usize) -> Result<Vec<u8>, RestError> {
    let bad = |m: &str| RestError::BadAnswer(m.to_owned());
    let mut out = Vec::new();
    loop {
        let line_end = rest
            .windows(2)
            .position(|w| w == b"\r\n")
            .ok_or_else(|| bad("truncated chunk size"))?;
        let size_text =
            std::str::from_utf8(&rest[..line_end]).map_err(|_| bad("bad chunk size"))?;
        let size_text = size_text.split(';').next().unwrap_or_default().trim();
        let size = usize::from_str_radix(size_text, 16).map_err(|_| bad("bad chunk size"))?;
        rest = &rest[line_end + 2..];
        if size == 0 {
            return Ok(out);
        }
        if out.len().saturating_add(size) > max_body {
            return Err(bad("body too large"));
        }
        if rest.len() < size + 2 {
            return Err(bad("truncated chunk"));
        }
        out.extend_from_slice(&rest[..size]);
        rest = &rest[size + 2..];
    }
}

/// `http://host:port[/prefix]` → (host, port, prefix without a trailing `/`). Only plain HTTP:
/// the daemon runs beside openvidu-server (port 5443 on its host in OpenVidu's deployment).
pub fn parse_base_url(url: &str) -> Result<(String, u16, String), String> {
    let rest = url.strip_prefix("http://").ok_or_else(|| {
        format!("openvidu_url {url:?}: expected http://host:port (openvidu-server's own port, 5443 in OpenVidu's deployment; https is not supported)")
    })?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], rest[i..].trim_end_matches('/')),
        None => (rest, ""),
    };
    if authority.contains('@') {
        return Err("openvidu_url must not carry credentials: use the secret file".into());
    }
    let (host, port) = match authority.rsplit_once(':') {
        Some((h, p)) => (
            h,
            p.parse::<u16>()
                .map_err(|_| format!("openvidu_url {url:?}: bad port"))?,
        ),
        None => (authority, 80),
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty()
        || !host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-.:".contains(&b))
    {
        return Err(format!("openvidu_url {url:?}: bad host"));
    }
    if !path
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"-._~/".contains(&b))
    {
        return Err(format!("openvidu_url {url:?}: bad path"));
    }
    Ok((host.to_owned(), port, path.to_owned()))
}
