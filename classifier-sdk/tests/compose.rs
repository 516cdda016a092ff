//! compose/ is consistent (no container engine here to start it): the structure, references and
//! scrape targets, and every metric the Grafana dashboard queries is exported by the daemon or a
//! worker — the names come from the real metric registries.

use std::path::Path;
use std::process::Command;

/// Sample names a registry exposes (`_total` for counters, `_bucket`/`_sum`/`_count` for histograms).
fn names(exposition: &str) -> Vec<String> {
    let mut out = Vec::new();
    for line in exposition.lines() {
        let mut parts = line.split_whitespace();
        if parts.next() != Some("#") || parts.next() != Some("TYPE") {
            continue;
        }
        let (Some(name), Some(kind)) = (parts.next(), parts.next()) else {
            continue;
        };
        match kind {
            "counter" => out.push(format!("{name}_total")),
            "histogram" => out.extend(["_bucket", "_sum", "_count"].map(|s| format!("{name}{s}"))),
            _ => out.push(name.to_owned()),
        }
    }
    out
}

#[test]
fn compose_is_consistent_with_what_the_services_export() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    use tap_daemon::metrics::{DropLabel, MediaLabel, Metrics, ModelLabel, ReasonLabel};
    // Labelled families are only exposed once they have a series: create one of each.
    let daemon = Metrics::new();
    let model = ModelLabel {
        model: "m@1".into(),
    };
    let reason = ReasonLabel { reason: "r".into() };
    let _ = daemon.tap_errors.get_or_create(&reason);
    let _ = daemon.not_tapped.get_or_create(&reason);
    let _ = daemon.specs_rejected.get_or_create(&reason);
    let _ = daemon.decoded.get_or_create(&MediaLabel {
        media: "video".into(),
    });
    let _ = daemon.chunks_sent.get_or_create(&model);
    let _ = daemon.chunks_dropped.get_or_create(&DropLabel {
        model: "m@1".into(),
        reason: "r".into(),
    });
    let _ = daemon.in_flight.get_or_create(&model);
    let _ = daemon.results.get_or_create(&model);
    let _ = daemon.capture_to_result.get_or_create(&model);
    daemon.datachannel_setup("opened");
    daemon.datachannel_message("sent");
    let worker = classifier_sdk::WorkerMetrics::new();
    worker.drop_reason("stale");
    let mut exported = names(&daemon.encode());
    exported.extend(names(&worker.encode()));
    assert!(
        exported.contains(&"kurento_tap_capture_to_dispatch_seconds_bucket".to_owned()),
        "{exported:?}"
    );
    let file = std::env::temp_dir().join(format!("tap-metric-names-{}", std::process::id()));
    std::fs::write(&file, exported.join("\n")).unwrap();
    let python = root.join(".venv/bin/python");
    assert!(
        python.exists(),
        "run scripts/setup (it creates .venv with PyYAML)"
    );
    let out = Command::new(python)
        .arg(root.join("compose/validate.py"))
        .arg("--metrics")
        .arg(&file)
        .output()
        .unwrap();
    let _ = std::fs::remove_file(file);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.starts_with("compose: ok"), "{text}");
}
