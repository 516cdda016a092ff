//! Reading the daemon's HTTP endpoints and what they count: a bare HTTP/1.1 GET, histogram
//! quantiles from Prometheus text, and quantiles of samples (benches).

/// GET /metrics with a bare HTTP/1.1 request.
pub async fn reqwest_metrics(addr: std::net::SocketAddr) -> String {
    http_get(addr, "/metrics").await
}

/// GET `path` with a bare HTTP/1.1 request; the whole response, headers included.
pub async fn http_get(addr: std::net::SocketAddr, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    out
}

/// The `q` quantile of a Prometheus histogram in `text`, interpolated linearly within its bucket.
pub fn histogram_quantile(text: &str, name: &str, q: f64) -> f64 {
    let prefix = format!("{name}_bucket{{le=\"");
    let mut buckets: Vec<(f64, f64)> = text
        .lines()
        .filter_map(|l| {
            let rest = l.strip_prefix(&prefix)?;
            let (le, count) = rest.split_once("\"} ")?;
            let le = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().ok()?
            };
            Some((le, count.trim().parse().ok()?))
        })
        .collect();
    buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    let total = buckets.last().map_or(0.0, |b| b.1);
    if total == 0.0 {
        return f64::NAN;
    }
    let want = q * total;
    let (mut lo, mut below) = (0.0, 0.0);
    for (le, count) in buckets {
        if count >= want {
            if le.is_infinite() {
                return lo;
            }
            let share = if count > below {
                (want - below) / (count - below)
            } else {
                0.0
            };
            return lo + (le - lo) * share;
        }
        lo = le;
        below = count;
    }
    f64::NAN
}

/// The `p` quantile (0..=1) of `v`, by rank (NaN when empty). (Benches.)
pub fn pct(v: &mut [f64], p: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    v[((v.len() - 1) as f64 * p).round() as usize]
}
