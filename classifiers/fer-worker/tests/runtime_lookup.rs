//! The worker finds ONNX Runtime the way a user expects, with no environment variable: a workspace
//! build finds `vendor/onnxruntime/` (put there by scripts/setup); a wrong explicit path fails with
//! an error naming it.

use std::process::Command;

fn photo() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/astronaut_256.png")
}

#[test]
fn classify_works_without_ort_dylib_path() {
    let out = Command::new(env!("CARGO_BIN_EXE_fer-worker"))
        .arg("classify")
        .arg(photo())
        .env_remove("ORT_DYLIB_PATH")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}{}",
        stdout,
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_str(stdout.lines().next().unwrap()).unwrap();
    assert_eq!(v["faces"].as_array().map(|f| f.len()), Some(1), "{v}");
}

#[test]
fn a_wrong_explicit_path_is_named_in_the_error() {
    let out = Command::new(env!("CARGO_BIN_EXE_fer-worker"))
        .arg("classify")
        .arg(photo())
        .env("ORT_DYLIB_PATH", "/nowhere/libonnxruntime.so.1.31.1")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("/nowhere/libonnxruntime.so.1.31.1: no such file"),
        "{stderr}"
    );
}
