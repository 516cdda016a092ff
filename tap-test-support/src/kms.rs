//! The real-KMS tier's harness: a real Kurento Media Server 7.3 (the bundle in `../shared/kms`, or
//! `$KURENTO_TAP_KMS_BUNDLE`) in a network namespace of its own, the test's thread moved into that
//! namespace (so the test, nats-server, the group-call app, Chromium participants, the daemon and
//! the workers all share KMS's loopback); the project's binaries run as child processes
//! ([`crate::proc::Proc`]).
//!
//! Each test gets its own namespace and KMS; the tier runs its tests one at a time (`serial()`),
//! since one real call with three Chromium participants already loads a 2-core machine.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

static NEXT: AtomicU64 = AtomicU64::new(0);
static SERIAL: Mutex<()> = Mutex::new(());

/// One real-KMS test at a time (a poisoned lock from a failed test does not stop the others).
pub fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// The KMS bundle directory (with `start` and `stop`), or why the tier cannot run here.
pub fn bundle() -> Result<PathBuf, String> {
    let dir = std::env::var_os("KURENTO_TAP_KMS_BUNDLE")
        .map(PathBuf::from)
        .unwrap_or_else(|| crate::workspace_root().join("../shared/kms"));
    if !dir.join("start").exists() {
        return Err(format!(
            "no KMS bundle at {} (set KURENTO_TAP_KMS_BUNDLE)",
            dir.display()
        ));
    }
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Err("not root (network namespaces need CAP_SYS_ADMIN)".into());
    }
    Ok(dir)
}

/// Runs `body` in a fresh namespace with a real KMS, or prints a loud skip and returns.
pub fn with_kms<F, Fut>(test: &str, body: F)
where
    F: FnOnce(Arc<RealKms>) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let bundle = match bundle() {
        Ok(b) => b,
        Err(why) => {
            eprintln!("\n*** SKIPPED real-KMS test {test}: {why} ***\n");
            return;
        }
    };
    let _one_at_a_time = serial();
    let kms = Arc::new(RealKms::start(&bundle));
    kms.enter();
    // Built after entering the namespace: every runtime thread, socket and child inherits it.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(body(kms.clone()));
    rt.shutdown_timeout(Duration::from_secs(5));
}

/// A real KMS in its own namespace; stopped (and the namespace deleted) on drop.
pub struct RealKms {
    bundle: PathBuf,
    pub netns: String,
    pub dir: PathBuf,
    pub port: u16,
    pub url: String,
}

impl RealKms {
    fn start(bundle: &Path) -> RealKms {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let netns = format!("ktap{}-{n}", std::process::id());
        let dir = std::env::temp_dir().join(format!("kurento-tap-kms-{netns}"));
        let kms = RealKms {
            bundle: bundle.to_owned(),
            netns,
            dir,
            port: 8888,
            url: "ws://127.0.0.1:8888/kurento".into(),
        };
        kms.run_start();
        kms
    }

    fn run_start(&self) {
        let out = Command::new("bash")
            .arg(self.bundle.join("start"))
            .args(["--netns", &self.netns, "--port", &self.port.to_string()])
            .args(["--rtp-ports", "42000-42999", "--dir"])
            .arg(&self.dir)
            .output()
            .expect("bash runs the KMS start script");
        assert!(
            out.status.success(),
            "KMS did not start: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Stops KMS (SIGTERM, as an operator would) and starts it again in the same namespace.
    pub fn restart(&self) {
        self.stop();
        self.run_start();
    }

    pub fn stop(&self) {
        let _ = Command::new("bash")
            .arg(self.bundle.join("stop"))
            .arg("--dir")
            .arg(&self.dir)
            .output();
    }

    /// Moves the calling thread into the namespace (threads and processes it starts follow).
    pub fn enter(&self) {
        let path = format!("/var/run/netns/{}", self.netns);
        let f = std::fs::File::open(&path).expect("the namespace exists");
        use std::os::fd::AsRawFd;
        // SAFETY: a valid namespace fd; CLONE_NEWNET only changes this thread's network namespace.
        let r = unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(r, 0, "setns: {}", std::io::Error::last_os_error());
    }

    /// Runs a command inside the namespace (e.g. `tc` for netem).
    pub fn ip_netns_exec(&self, args: &[&str]) -> std::process::Output {
        Command::new("ip")
            .args(["netns", "exec", &self.netns])
            .args(args)
            .output()
            .expect("ip runs")
    }

    pub fn log_tail(&self, lines: usize) -> String {
        let log = std::fs::read_to_string(self.dir.join("kms.log")).unwrap_or_default();
        let all: Vec<&str> = log.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }
}

impl Drop for RealKms {
    fn drop(&mut self) {
        self.stop();
        let _ = Command::new("ip")
            .args(["netns", "del", &self.netns])
            .output();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
