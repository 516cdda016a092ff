//! compose/ is consistent (no container engine here to start it): the structure, references and
//! scrape targets, and every metric the Grafana dashboard queries is exported by the daemon or a
//! worker — the names come from the real metric registries.

#[path = "common/exported.rs"]
mod exported;

use std::path::Path;
use std::process::Command;

#[test]
fn compose_is_consistent_with_what_the_services_export() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let (daemon, worker) = exported::expositions();
    let mut exported = exported::names(&daemon);
    exported.extend(exported::names(&worker));
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
