//! The demo's services end with the demo, however it ends: a SIGKILL of `scripts/demo` (or a closed
//! terminal) must not leave nats-server, the simulator, the daemon or the workers running and
//! holding their ports. The mechanism (`scripts/lib/services.sh`: a session of their own, and the
//! kernel's parent-death signal) is run here with a real nats-server, and the demo is checked to
//! start every service through it.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn repo() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
}

/// Running, and not a zombie waiting to be reaped.
fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            s.rsplit(')')
                .next()
                .map(|r| !r.trim_start().starts_with('Z'))
        })
        .unwrap_or(false)
}

#[test]
fn services_end_when_the_script_that_started_them_is_killed() {
    let port = tap_test_support::proc::free_port();
    let store = std::env::temp_dir().join(format!("demo-services-{}", std::process::id()));
    let script = format!(
        r#"
        . scripts/lib/services.sh
        service nats-server -a 127.0.0.1 -p {port} -js -sd {store} >/dev/null 2>&1 & echo "pid $!"
        service sleep 3001 >/dev/null 2>&1 & echo "pid $!"
        with_parent sleep 3002 | with_parent sleep 3003 &
        sleep 0.2
        for p in $(pgrep -P $$ -x sleep); do echo "pid $p"; done
        echo ready
        exec sleep 600
        "#,
        store = store.display()
    );
    let mut demo = Command::new("bash")
        .arg("-c")
        .arg(script)
        .current_dir(repo())
        .env(
            "PATH",
            format!("{}:/usr/sbin", std::env::var("PATH").unwrap_or_default()),
        )
        .stdout(Stdio::piped())
        // Nothing of the script may hold the test runner's output open after it is killed.
        .stderr(Stdio::null())
        .spawn()
        .expect("bash");
    let mut pids = Vec::new();
    for line in BufReader::new(demo.stdout.take().unwrap()).lines() {
        let line = line.unwrap();
        if line == "ready" {
            break;
        }
        if let Some(p) = line.strip_prefix("pid ") {
            pids.push(p.parse::<u32>().unwrap());
        }
    }
    // nats-server, the service sleep, and the pipeline's two (the script's own `sleep 0.2` is over).
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "nats-server did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    let services: Vec<u32> = pids.iter().copied().filter(|p| alive(*p)).collect();
    assert!(services.len() >= 4, "{pids:?}");

    // The script dies without a chance to clean up.
    demo.kill().unwrap(); // SIGKILL
    let _ = demo.wait();
    let deadline = Instant::now() + Duration::from_secs(10);
    while services.iter().any(|p| alive(*p)) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    let left: Vec<u32> = services.iter().copied().filter(|p| alive(*p)).collect();
    for p in &left {
        let _ = Command::new("kill").arg("-9").arg(p.to_string()).status();
    }
    let _ = std::fs::remove_dir_all(&store);
    assert!(
        left.is_empty(),
        "still running after the script was killed: {left:?}"
    );
    // And the port is free again.
    std::net::TcpListener::bind(("127.0.0.1", port)).expect("nats-server's port is free");
}

#[test]
fn the_demo_starts_every_background_service_through_the_helper() {
    let demo = std::fs::read_to_string(repo().join("scripts/demo")).unwrap();
    assert!(demo.contains(". scripts/lib/services.sh"));
    let mut started = 0;
    let mut command = String::new();
    for line in demo.lines() {
        // Join continued lines into one command.
        command.push_str(line.trim_end_matches('\\'));
        if line.ends_with('\\') {
            continue;
        }
        let c = std::mem::take(&mut command);
        let c = c.trim();
        if c.contains("& pids+=") {
            started += 1;
            assert!(c.starts_with("service "), "not through `service`: {c}");
        }
        assert!(
            !c.starts_with("setsid "),
            "a bare setsid outlives the demo: {c}"
        );
    }
    assert!(
        started >= 5,
        "nats, simulator, daemon and two workers: {started}"
    );
}
