//! The Python worker (examples/python-worker), written from docs/protocol.md alone, against the
//! daemon and the simulator: the proof that the protocol document is enough.

use std::process::{Command, Stdio};
use std::time::Duration;

use futures_util::StreamExt;
use tap_protocol::{ResultMessage, RESULT_SUBJECTS};
use tap_test_support::prelude::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_python_worker_speaks_the_protocol() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let python = std::env::var("TAP_PYTHON")
        .unwrap_or_else(|_| root.join(".venv/bin/python").to_string_lossy().into_owned());
    assert!(
        std::path::Path::new(&python).exists(),
        "{python} missing: run scripts/setup (it creates .venv)"
    );
    let h = Harness::new()
        .scenario("[[room]]\nname='py'\n[[room.participant]]\nname='dark'\nvideo={pattern='black'}\n[[room.participant]]\nname='moving'\nvideo={pattern='ball'}\n")
        .sim_ports(34000..=34499)
        .tap_ports(34500..=34999)
        .start()
        .await;
    let client = h.client().await;
    h.wait_taps(2).await;
    let mut results = client.subscribe(RESULT_SUBJECTS).await.unwrap();
    let mut worker = Command::new(&python)
        .arg(root.join("examples/python-worker/worker.py"))
        .args(["--nats", &h.nats.url])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut got: Vec<ResultMessage> = Vec::new();
    let until = tokio::time::Instant::now() + Duration::from_secs(15);
    while got.len() < 12 {
        match tokio::time::timeout_at(until, results.next()).await {
            Ok(Some(m)) => got.push(serde_json::from_slice(&m.payload).unwrap()),
            _ => break,
        }
    }
    // A malformed chunk gets the protocol's error answer, and the worker keeps serving.
    let mut headers = async_nats::HeaderMap::new();
    headers.insert("Tap-Version", "1");
    let bad = client
        .request_with_headers("tap.v1.chunk.py-brightness.1", headers, "x".into())
        .await
        .unwrap();
    let err = bad
        .headers
        .as_ref()
        .and_then(|h| h.get("Tap-Error"))
        .map(|v| v.as_str().to_owned());
    terminate(&mut worker);
    assert!(
        got.len() >= 12,
        "results from the Python worker: {}",
        got.len()
    );
    assert!(got
        .iter()
        .all(|r| r.model == "py-brightness" && r.output.extras["worker"] == "python"));
    let last = |p: &str| {
        got.iter()
            .rev()
            .find(|r| r.participant == p)
            .unwrap()
            .output
            .labels
            .clone()
    };
    assert!(
        last("dark")["brightness"] < 0.05,
        "a black frame is dark: {:?}",
        last("dark")
    );
    assert!(last("moving")["brightness"] > last("dark")["brightness"]);
    assert!(
        got.iter()
            .filter(|r| r.participant == "moving")
            .any(|r| r.output.labels["motion"] > 0.0),
        "the ball moves"
    );
    assert_eq!(err.as_deref(), Some("malformed"));
    h.stop().await;
}

fn terminate(child: &mut std::process::Child) {
    // SIGTERM lets the worker drain; fall back to kill.
    let _ = Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .status();
    for _ in 0..30 {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = child.kill();
    let _ = child.wait();
}
