//! Values written as text in the file, the environment or flags: port ranges, KMS lists, names.

use super::file::ConfigError;

/// Most threads a shared receiver may have.
pub const MAX_RECEIVE_THREADS: usize = 64;

/// `per-tap` (rtpbin per tap: `None`) or the number of threads shared by every tap (1–64).
pub fn parse_receive_threads(s: &str) -> Result<Option<usize>, ConfigError> {
    let s = s.trim();
    if s == "per-tap" {
        return Ok(None);
    }
    match s.parse::<usize>() {
        Ok(n) if (1..=MAX_RECEIVE_THREADS).contains(&n) => Ok(Some(n)),
        _ => Err(ConfigError::Invalid(format!(
            "receive_threads {s:?}: expected per-tap or a number of threads from 1 to {MAX_RECEIVE_THREADS}"
        ))),
    }
}

/// Parses `MIN-MAX` (at least 4 ports, even start used).
pub fn parse_ports(s: &str) -> Result<(u16, u16), ConfigError> {
    let (a, b) = s
        .split_once('-')
        .ok_or_else(|| ConfigError::Invalid(format!("ports {s:?}: expected MIN-MAX")))?;
    let (a, b): (u16, u16) = (
        a.trim()
            .parse()
            .map_err(|_| ConfigError::Invalid(format!("ports {s:?}: bad MIN")))?,
        b.trim()
            .parse()
            .map_err(|_| ConfigError::Invalid(format!("ports {s:?}: bad MAX")))?,
    );
    if a < 1024 || b <= a || b - a < 3 {
        return Err(ConfigError::Invalid(format!(
            "ports {s:?}: need MIN ≥ 1024 and at least 4 ports"
        )));
    }
    Ok((a, b))
}

/// Parses the KMS list: `ws://h:8888/kurento`, or several as `name=url` separated by commas
/// (a bare URL is named by its host:port).
pub fn parse_kms_list(s: &str) -> Result<Vec<crate::settings::KmsTarget>, ConfigError> {
    let mut out: Vec<crate::settings::KmsTarget> = Vec::new();
    for item in s.split(',').map(str::trim).filter(|i| !i.is_empty()) {
        let (name, url) = match item.split_once('=') {
            Some((n, u)) if !n.contains("://") => (n.trim().to_owned(), u.trim().to_owned()),
            _ => (crate::settings::kms_name_from_url(item), item.to_owned()),
        };
        if !(url.starts_with("ws://") || url.starts_with("wss://")) {
            return Err(ConfigError::Invalid(format!(
                "kurento {item:?}: expected ws://host:port/kurento (or name=ws://…)"
            )));
        }
        check_kms_name(&name)?;
        if out.iter().any(|t| t.name == name) {
            return Err(ConfigError::Invalid(format!(
                "kurento: two KMS named {name:?}; name them (name=url,…)"
            )));
        }
        out.push(crate::settings::KmsTarget { name, url });
    }
    if out.is_empty() {
        return Err(ConfigError::Invalid("kurento: no KMS URL".into()));
    }
    if out.len() > 64 {
        return Err(ConfigError::Invalid(
            "kurento: at most 64 KMS per daemon".into(),
        ));
    }
    Ok(out)
}

pub(super) fn check_kms_name(name: &str) -> Result<(), ConfigError> {
    if name.is_empty() || name.len() > 100 {
        return Err(ConfigError::Invalid(
            "a KMS name must be 1 to 100 characters".into(),
        ));
    }
    Ok(())
}

/// This machine's host name (a pod's name on Kubernetes).
pub(super) fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "host".into())
}
