//! A real nats-server with JetStream, one per test, on a port of its own.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// A nats-server process, stopped on drop.
pub struct Nats {
    child: Child,
    pub url: String,
    pub port: u16,
    dir: PathBuf,
}

static NEXT_DIR: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

fn nats_binary() -> String {
    for p in [
        "/usr/sbin/nats-server",
        "/usr/bin/nats-server",
        "/usr/local/bin/nats-server",
    ] {
        if std::path::Path::new(p).exists() {
            return p.into();
        }
    }
    "nats-server".into()
}

impl Nats {
    /// A server on a port the server picks itself (`-p -1`, read back from its ports file): no
    /// window in which another test's server or connection could take it, so tests never share a
    /// server.
    pub async fn start() -> Nats {
        let dir = std::env::temp_dir().join(format!(
            "tap-nats-{}-{}",
            std::process::id(),
            NEXT_DIR.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let mut child = Command::new(nats_binary())
            .args(["-a", "127.0.0.1", "-p", "-1", "-js", "-sd"])
            .arg(dir.join("js"))
            .arg("--ports_file_dir")
            .arg(&dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("nats-server runs (scripts/setup installs it)");
        let ports_file = dir.join(format!("nats-server_{}.ports", child.id()));
        for _ in 0..200 {
            if let Ok(Some(status)) = child.try_wait() {
                panic!("nats-server exited: {status}");
            }
            let port = std::fs::read_to_string(&ports_file).ok().and_then(|t| {
                let v: serde_json::Value = serde_json::from_str(&t).ok()?;
                let url = v["nats"][0].as_str()?.to_owned();
                url.rsplit(':').next()?.parse::<u16>().ok()
            });
            if let Some(port) = port {
                return Nats {
                    child,
                    url: format!("nats://127.0.0.1:{port}"),
                    port,
                    dir,
                };
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        let _ = child.kill();
        panic!("nats-server wrote no ports file in 5 s");
    }

    /// A new server on the same port and store directory (a restart).
    pub async fn start_on_reusing(port: u16, previous: &Nats) -> Nats {
        Self::start_in(port, previous.dir.clone()).await
    }

    async fn start_in(port: u16, dir: PathBuf) -> Nats {
        Self::try_start_in(port, dir)
            .await
            .unwrap_or_else(|| panic!("nats-server did not start on port {port}"))
    }

    /// Starts a server on `port`; `None` if it exited (port taken) instead of listening.
    async fn try_start_in(port: u16, dir: PathBuf) -> Option<Nats> {
        std::fs::create_dir_all(&dir).unwrap();
        let mut child = Command::new(nats_binary())
            .args(["-a", "127.0.0.1", "-p", &port.to_string(), "-js", "-sd"])
            .arg(dir.join("js"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("nats-server runs (scripts/setup installs it)");
        for _ in 0..100 {
            if let Ok(Some(_)) = child.try_wait() {
                let _ = std::fs::remove_dir_all(&dir);
                return None;
            }
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                // Listening, and still ours (a server that lost the port exits at once).
                tokio::time::sleep(Duration::from_millis(20)).await;
                if let Ok(Some(_)) = child.try_wait() {
                    let _ = std::fs::remove_dir_all(&dir);
                    return None;
                }
                return Some(Nats {
                    child,
                    url: format!("nats://127.0.0.1:{port}"),
                    port,
                    dir,
                });
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let _ = child.kill();
        let _ = child.wait();
        None
    }

    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Nats {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
