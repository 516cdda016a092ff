//! deploy/helm/kurento-tap renders (`helm template`, KEDA and HPA variants), its objects are wired to
//! one another and to what the binaries accept and export (deploy/helm/validate.py), and its probes
//! hit real endpoints: the daemon and both workers are started with the rendered environment and
//! arguments and every probe path answers 200 on the probe's port. No cluster runs here: see
//! docs/operations.md for what was not exercised.

#[path = "common/exported.rs"]
mod exported;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// A binary of the workspace, built by `cargo build --workspace --bins` (scripts/test does).
fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let b = exe.parent().and_then(Path::parent).unwrap().join(name);
    assert!(
        b.exists(),
        "{} not built: run `cargo build --workspace --bins`",
        b.display()
    );
    b
}

fn helm() -> PathBuf {
    let vendored = root().join("vendor/helm/helm");
    assert!(
        vendored.exists(),
        "run scripts/setup (it installs helm into vendor/helm)"
    );
    vendored
}

/// The chart without its NATS dependency (the official chart is fetched by `helm dependency build`
/// at deploy time; no network to its repository here), symlinks resolved.
fn chart_copy(dir: &Path) -> PathBuf {
    let copy = dir.join("kurento-tap");
    let status = Command::new("cp")
        .arg("-rL")
        .arg(root().join("deploy/helm/kurento-tap"))
        .arg(&copy)
        .status()
        .unwrap();
    assert!(status.success());
    let chart = std::fs::read_to_string(copy.join("Chart.yaml")).unwrap();
    let cut = chart
        .find("dependencies:")
        .expect("the chart declares its NATS dependency");
    std::fs::write(copy.join("Chart.yaml"), &chart[..cut]).unwrap();
    copy
}

fn try_render(chart: &Path, sets: &[String]) -> Result<String, String> {
    let mut cmd = Command::new(helm());
    cmd.args(["template", "tap"]).arg(chart);
    for s in sets {
        cmd.args(["--set", s]);
    }
    let out = cmd.output().unwrap();
    if out.status.success() {
        Ok(String::from_utf8(out.stdout).unwrap())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

fn render(chart: &Path, sets: &[String]) -> String {
    try_render(chart, sets).unwrap_or_else(|e| panic!("helm template: {e}"))
}

fn help(binary: &str) -> String {
    let out = Command::new(bin(binary))
        .args(["run", "--help"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{binary} run --help");
    String::from_utf8(out.stdout).unwrap()
}

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// GET `path` on 127.0.0.1:`port` until it answers 200 (or gives up after ~30 s).
async fn answers_200(port: u16, path: &str) -> String {
    let mut last = String::new();
    for _ in 0..150 {
        if let Ok(addr) = format!("127.0.0.1:{port}").parse() {
            if std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                last = tap_test_support::prelude::http_get(addr, path).await;
                if last.starts_with("HTTP/1.1 200") {
                    return last;
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!("GET {path} on port {port} never answered 200; last: {last}");
}

/// GET `path` with the data token as a bearer credential; the whole response.
async fn get_with_token(addr: std::net::SocketAddr, path: &str, token: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let req = format!(
        "GET {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\nConnection: close\r\n\r\n"
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_chart_renders_is_wired_and_its_probes_hit_real_endpoints() {
    let dir = std::env::temp_dir().join(format!("tap-helm-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let chart = chart_copy(&dir);
    let nats = tap_test_support::prelude::Nats::start().await;
    let (daemon_port, fer_port, voice_port) = (
        tap_test_support::prelude::free_port(),
        tap_test_support::prelude::free_port(),
        tap_test_support::prelude::free_port(),
    );
    let data_port = tap_test_support::prelude::free_port();
    let base = vec![
        "nats.enabled=false".to_owned(),
        format!("nats.url={}", nats.url),
        format!("daemon.httpPort={daemon_port}"),
        format!("daemon.data.port={data_port}"),
        format!("workers.fer.metricsPort={fer_port}"),
        format!("workers.voice.metricsPort={voice_port}"),
    ];

    let (daemon_metrics, worker_metrics) = exported::expositions();
    let mut names = exported::names(&daemon_metrics);
    names.extend(exported::names(&worker_metrics));
    let mut labels = exported::label_keys(&daemon_metrics);
    labels.extend(exported::label_keys(&worker_metrics));
    let write = |name: &str, text: &str| {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p
    };
    let names = write("names", &names.join("\n"));
    let labels = write("labels", &labels.join("\n"));
    let daemon_help = write("daemon-help", &help("kurento-tap"));
    let fer_help = write("fer-help", &help("fer-worker"));
    let voice_help = write("voice-help", &help("audio-worker"));
    let validate = |manifests: &Path, expect: &str| {
        let out = Command::new(root().join(".venv/bin/python"))
            .arg(root().join("deploy/helm/validate.py"))
            .arg("--manifests")
            .arg(manifests)
            .arg("--metrics")
            .arg(&names)
            .arg("--labels")
            .arg(&labels)
            .arg("--daemon-help")
            .arg(&daemon_help)
            .arg(format!("--worker-help=fer-worker={}", fer_help.display()))
            .arg(format!(
                "--worker-help=audio-worker={}",
                voice_help.display()
            ))
            .args(["--expect", expect])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "{text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(text.starts_with("helm: ok"), "{text}");
        text
    };

    let keda = write("keda.yaml", &render(&chart, &base));
    let summary = validate(&keda, "keda");
    let mut hpa_sets = base.clone();
    hpa_sets.push("autoscaling.keda.enabled=false".into());
    hpa_sets.push("autoscaling.hpa.enabled=true".into());
    let hpa = write("hpa.yaml", &render(&chart, &hpa_sets));
    validate(&hpa, "hpa");

    // The data endpoints on the node's addresses: only with a credential.
    let mut exposed = base.clone();
    exposed.push("daemon.data.expose=true".into());
    let refused = try_render(&chart, &exposed).expect_err("exposed without a credential");
    assert!(refused.contains("daemon.data.tokenSecret"), "{refused}");
    exposed.push("daemon.data.tokenSecret=kurento-tap-token".into());
    let with_token = write("exposed.yaml", &render(&chart, &exposed));
    validate(&with_token, "keda");
    // Beside OpenVidu: the host profile, its REST URL and the secret from a Secret's file; the
    // whole daemon environment still one the binary reads (validated).
    let mut ov = base.clone();
    ov.push("daemon.host=openvidu".into());
    ov.push("daemon.openvidu.url=http://openvidu:5443".into());
    ov.push("daemon.openvidu.secretName=openvidu-secret".into());
    let ov_text = render(&chart, &ov);
    for want in [
        "KURENTO_TAP_HOST",
        "value: \"openvidu\"",
        "KURENTO_TAP_OPENVIDU_SECRET_FILE",
        "secretName: openvidu-secret",
    ] {
        assert!(ov_text.contains(want), "{want} in the OpenVidu render");
    }
    validate(&write("openvidu.yaml", &ov_text), "keda");
    let mut bad_host = base.clone();
    bad_host.push("daemon.host=jitsi".into());
    let refused = try_render(&chart, &bad_host).expect_err("an unknown host");
    assert!(refused.contains("daemon.host"), "{refused}");

    // An unknown processing policy is refused at render time.
    let mut unknown = base.clone();
    unknown.push("daemon.policy=emotion-free".into());
    let refused = try_render(&chart, &unknown).expect_err("an unknown policy");
    assert!(refused.contains("daemon.policy"), "{refused}");
    let mut proxied = base.clone();
    proxied.push("daemon.data.expose=true".into());
    proxied.push("daemon.data.authProxyHeader=X-Forwarded-User".into());
    validate(&write("proxied.yaml", &render(&chart, &proxied)), "keda");

    // Start what the manifests describe; the probes must answer.
    let summary: serde_json::Value = serde_json::from_str(summary.lines().last().unwrap()).unwrap();
    let sim = tap_test_support::prelude::sim(
        "[[room]]\nname='r'\n[[room.participant]]\nname='p'\naudio={}\n",
        (45000, 45099),
    )
    .await;
    let mut daemon = Command::new(bin("kurento-tap"));
    daemon
        .arg("run")
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    for (k, v) in summary["daemon"]["env"].as_object().unwrap() {
        let v = v.as_str().unwrap().replace("$(NODE_NAME)", "helm-test");
        daemon.env(k, v);
    }
    // The token the chart made, where the Secret would be mounted.
    let token = summary["daemon"]["data_token"]
        .as_str()
        .expect("the chart makes a data token when none is given")
        .to_owned();
    assert!(token.len() >= 24);
    let token_file = dir.join("token");
    std::fs::write(&token_file, &token).unwrap();
    daemon.env("KURENTO_TAP_TOKEN_FILE", &token_file);
    // What Kubernetes fills in (downward API) or the node provides.
    daemon
        .env("KURENTO_TAP_BIND", "127.0.0.1")
        .env("KURENTO_TAP_KURENTO", format!("kms-0={}", sim.url()))
        .env("KURENTO_TAP_PORTS", "45100-45199");
    let _daemon = Killed(daemon.spawn().unwrap());
    for p in summary["daemon"]["probes"].as_array().unwrap() {
        answers_200(
            p["port"].as_u64().unwrap() as u16,
            p["path"].as_str().unwrap(),
        )
        .await;
    }
    // The data endpoints answer on their own (loopback) port, not on the probes', and only with
    // the token.
    let data_addr: std::net::SocketAddr = ([127, 0, 0, 1], data_port).into();
    let without = tap_test_support::prelude::http_get(data_addr, "/models").await;
    assert!(without.starts_with("HTTP/1.1 401"), "{without}");
    let with = get_with_token(data_addr, "/models", &token).await;
    assert!(with.starts_with("HTTP/1.1 200"), "{with}");
    let on_probes =
        tap_test_support::prelude::http_get(([127, 0, 0, 1], daemon_port).into(), "/models").await;
    assert!(on_probes.starts_with("HTTP/1.1 404"), "{on_probes}");
    let mut running = Vec::new();
    for w in summary["workers"].as_array().unwrap() {
        let args: Vec<&str> = w["args"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a.as_str().unwrap())
            .collect();
        let child = Command::new(bin(w["command"].as_str().unwrap()))
            .args(&args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        running.push(Killed(child));
        for p in w["probes"].as_array().unwrap() {
            answers_200(
                p["port"].as_u64().unwrap() as u16,
                p["path"].as_str().unwrap(),
            )
            .await;
        }
    }
    drop(running);
    let _ = std::fs::remove_dir_all(&dir);
}
