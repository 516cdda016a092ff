//! The real-KMS tier's harness: a real Kurento Media Server 7.3 (the bundle in `../shared/kms`, or
//! `$KURENTO_TAP_KMS_BUNDLE`) in a network namespace of its own, the test's thread moved into that
//! namespace (so the test, nats-server, the group-call app, Chromium participants, the daemon and
//! the workers all share KMS's loopback), and the project's binaries as child processes.
//!
//! Each test gets its own namespace and KMS; the tier runs its tests one at a time (`serial()`),
//! since one real call with three Chromium participants already loads a 2-core machine.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
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
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/kms"));
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

/// A binary of this workspace (built by `cargo build --workspace --bins`, which the README's test
/// command runs first), next to the test executable's `deps/` folder.
pub fn workspace_bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().and_then(Path::parent).unwrap();
    let bin = dir.join(name);
    assert!(
        bin.exists(),
        "{} not built: run `cargo build --workspace --bins` first (scripts/test does)",
        bin.display()
    );
    bin
}

/// A child process whose output is kept (printed when the test fails), killed on drop.
pub struct Proc {
    pub name: String,
    pub child: Child,
    pub lines: Arc<Mutex<Vec<String>>>,
}

impl Proc {
    pub fn spawn(name: &str, mut cmd: Command) -> Proc {
        cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        let lines = Arc::new(Mutex::new(Vec::new()));
        for pipe in [
            child
                .stdout
                .take()
                .map(|p| Box::new(p) as Box<dyn std::io::Read + Send>),
            child
                .stderr
                .take()
                .map(|p| Box::new(p) as Box<dyn std::io::Read + Send>),
        ]
        .into_iter()
        .flatten()
        {
            let lines = lines.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                    let mut l = lines.lock().unwrap();
                    if l.len() > 20_000 {
                        l.drain(..10_000);
                    }
                    l.push(line);
                }
            });
        }
        Proc {
            name: name.to_owned(),
            child,
            lines,
        }
    }

    /// Waits for a line containing `needle`; returns it.
    pub async fn wait_line(&self, needle: &str, limit: Duration) -> Option<String> {
        let deadline = std::time::Instant::now() + limit;
        while std::time::Instant::now() < deadline {
            if let Some(l) = self
                .lines
                .lock()
                .unwrap()
                .iter()
                .find(|l| l.contains(needle))
            {
                return Some(l.clone());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        None
    }

    pub fn count(&self, needle: &str) -> usize {
        self.lines
            .lock()
            .unwrap()
            .iter()
            .filter(|l| l.contains(needle))
            .count()
    }

    pub fn output(&self) -> String {
        let l = self.lines.lock().unwrap();
        l[l.len().saturating_sub(60)..].join("\n")
    }

    /// SIGTERM, then waits up to `limit` for a clean exit; true if it exited by itself.
    pub fn terminate(&mut self, limit: Duration) -> bool {
        // SAFETY: sending a signal to our own child's pid.
        unsafe {
            libc::kill(self.child.id() as i32, libc::SIGTERM);
        }
        let deadline = std::time::Instant::now() + limit;
        while std::time::Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        false
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        if std::thread::panicking() {
            eprintln!("--- last output of {} ---\n{}", self.name, self.output());
        }
    }
}

/// Fake camera and microphone files for Chromium: the committed face photo as a 320x240 I420 y4m
/// clip, and espeak-ng speech as a 48 kHz mono wav (made once per test process).
pub fn fake_media() -> (PathBuf, PathBuf) {
    static MEDIA: std::sync::OnceLock<(PathBuf, PathBuf)> = std::sync::OnceLock::new();
    MEDIA
        .get_or_init(|| {
            let dir = std::env::temp_dir().join(format!("kurento-tap-media-{}", std::process::id()));
            std::fs::create_dir_all(&dir).unwrap();
            let photo = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                .join("../classifiers/fer-worker/testdata/astronaut_256.png");
            let y4m = dir.join("face.y4m");
            let wav = dir.join("speech.wav");
            let raw = dir.join("speech-raw.wav");
            // A gentle pan across the photo, so the encoder sees motion as from a camera.
            let gst = |args: &[&str]| {
                let out = Command::new("gst-launch-1.0")
                    .arg("-q")
                    .args(args)
                    .output()
                    .expect("gst-launch-1.0 (gstreamer1.0-tools, installed by scripts/setup)");
                assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
            };
            gst(&[
                "filesrc", &format!("location={}", photo.display()), "!", "pngdec", "!",
                "imagefreeze", "num-buffers=90", "!", "videoconvert", "!", "videoscale", "!",
                "video/x-raw,format=I420,width=320,height=240,framerate=15/1", "!", "y4menc",
                "!", "filesink", &format!("location={}", y4m.display()),
            ]);
            let out = Command::new("espeak-ng")
                .args(["-a", "160", "-s", "160", "-w"])
                .arg(&raw)
                .arg("Good morning everyone. I am really glad to see you all here today, this is great news for the whole team.")
                .output()
                .expect("espeak-ng (installed by scripts/setup)");
            assert!(out.status.success());
            gst(&[
                "filesrc", &format!("location={}", raw.display()), "!", "wavparse", "!",
                "audioconvert", "!", "audioresample", "!",
                "audio/x-raw,format=S16LE,rate=48000,channels=1", "!", "wavenc", "!", "filesink",
                &format!("location={}", wav.display()),
            ]);
            (y4m, wav)
        })
        .clone()
}

/// A Chromium participant of the group-call app (one browser process each, as real participants).
pub fn participant(app: &str, room: &str, name: &str, query: &str) -> super::browser::Browser {
    let (y4m, wav) = fake_media();
    let url = format!("{app}/?room={room}&name={name}&{query}");
    super::browser::launch(
        &url,
        &[
            "--allow-loopback-in-peer-connection",
            "--disable-features=WebRtcHideLocalIpsWithMdns",
            "--use-fake-ui-for-media-stream",
            "--use-fake-device-for-media-stream",
            &format!("--use-file-for-fake-video-capture={}", y4m.display()),
            &format!("--use-file-for-fake-audio-capture={}", wav.display()),
            "--autoplay-policy=no-user-gesture-required",
        ],
    )
}
