//! The shipped models compute the same answers on every x86-64 CPU, and a model that does not is
//! refused loudly (or, for the optional int8 detector, replaced by fp32), never run silently.
//!
//! ONNX Runtime picks its int8 kernels by the CPU's features: the first int8 detector agreed with
//! fp32 on a CPU with VNNI and found no face at all on an AVX2-only AMD EPYC. These tests run the
//! worker on an emulated AVX2-only CPU (`qemu-x86_64 -cpu Haswell`, Debian's qemu-user, installed by
//! scripts/setup) whatever the machine running them has.

use std::path::{Path, PathBuf};
use std::process::Command;

use classifier_sdk::onnx::OnnxError;
use fer_worker::{default_models_dir, EmotionNet, FerPipeline, ModelPaths, Precision};

fn testdata(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("testdata")
        .join(name)
}

/// `qemu-x86_64`, or None (and the test says it was skipped) off CI when it is not installed.
fn qemu() -> Option<PathBuf> {
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|p| p.join("qemu-x86_64"))
            .find(|p| p.is_file())
    });
    if found.is_none() {
        assert!(
            std::env::var_os("CI").is_none(),
            "qemu-x86_64 is missing: scripts/setup installs Debian's qemu-user"
        );
        eprintln!("SKIPPED: qemu-x86_64 not installed (scripts/setup installs qemu-user)");
    }
    found
}

/// `fer-worker ARGS classify IMAGE`, on an emulated AVX2-only CPU (Haswell: AVX2 and FMA, no
/// AVX-512, no VNNI) or natively.
fn classify(emulated: Option<&Path>, args: &[&str], image: &Path) -> std::process::Output {
    let worker = env!("CARGO_BIN_EXE_fer-worker");
    let mut cmd = match emulated {
        Some(qemu) => {
            let mut c = Command::new(qemu);
            c.args(["-cpu", "Haswell", worker]);
            c
        }
        None => Command::new(worker),
    };
    cmd.args(args).arg("classify").arg(image);
    cmd.output().expect("fer-worker runs")
}

/// The faces' boxes and top labels printed by `classify`.
fn faces(out: &std::process::Output) -> Vec<([f64; 4], String)> {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    v["faces"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| {
            let b: Vec<f64> = f["box"]
                .as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_f64().unwrap())
                .collect();
            let labels = f["labels"].as_object().unwrap();
            let top = labels
                .iter()
                .max_by(|a, b| a.1.as_f64().unwrap().total_cmp(&b.1.as_f64().unwrap()))
                .unwrap()
                .0
                .clone();
            ([b[0], b[1], b[2], b[3]], top)
        })
        .collect()
}

#[test]
fn the_int8_detector_finds_the_same_faces_on_an_avx2_only_cpu() {
    let Some(qemu) = qemu() else { return };
    for image in ["astronaut_256.png", "two_faces.png"] {
        let image = testdata(image);
        let fp32 = faces(&classify(None, &[], &image));
        let int8 = faces(&classify(
            Some(&qemu),
            &["--detector-precision", "int8"],
            &image,
        ));
        assert!(!fp32.is_empty());
        let (mut int8, mut fp32) = (int8, fp32);
        for faces in [&mut int8, &mut fp32] {
            faces.sort_by(|a, b| a.0[0].total_cmp(&b.0[0]));
        }
        assert_eq!(
            int8.len(),
            fp32.len(),
            "int8 on AVX2 {int8:?}, fp32 {fp32:?}"
        );
        for ((a, la), (b, lb)) in int8.iter().zip(&fp32) {
            assert_eq!(la, lb);
            for k in 0..4 {
                assert!((a[k] - b[k]).abs() < 4.0, "int8 on AVX2 {a:?}, fp32 {b:?}");
            }
        }
    }
}

#[test]
fn a_model_that_is_wrong_on_this_cpu_is_refused_with_what_to_do() {
    let Some(qemu) = qemu() else { return };
    // The first int8 detector (8-bit weights): right with VNNI, no face without. Beside it, the
    // shipped int8 detector's check file (same reference input, fp32 outputs, tolerance).
    let dir = std::env::temp_dir().join(format!("fer-portable-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let model = dir.join("detector_8bit_weights.onnx");
    std::fs::copy(testdata("blazeface_int8_8bit_weights.onnx"), &model).unwrap();
    std::fs::copy(
        default_models_dir().join("blazeface_front_128_int8.onnx.check.json"),
        dir.join("detector_8bit_weights.onnx.check.json"),
    )
    .unwrap();
    let out = classify(
        Some(&qemu),
        &["--detector", model.to_str().unwrap()],
        &testdata("astronaut_256.png"),
    );
    let _ = std::fs::remove_dir_all(&dir);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "refused, not run: {err}");
    assert!(out.stdout.is_empty(), "no answer printed");
    assert!(
        err.contains("detector_8bit_weights.onnx")
            && err.contains("failed its numeric self-check")
            && err.contains("no VNNI")
            && err.contains("--detector-precision fp32"),
        "{err}"
    );
}

/// A copy of the shipped int8 detector whose check demands more than int8 can give (so it fails on
/// every CPU), in its own folder.
fn int8_failing_its_check(dir: &Path) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    let model = dir.join("blazeface_front_128_int8.onnx");
    std::fs::copy(
        default_models_dir().join("blazeface_front_128_int8.onnx"),
        &model,
    )
    .unwrap();
    let check = std::fs::read_to_string(
        default_models_dir().join("blazeface_front_128_int8.onnx.check.json"),
    )
    .unwrap();
    let strict = check.replacen(
        "\"tolerance_rel_l2\": 0.3",
        "\"tolerance_rel_l2\": 1e-06",
        1,
    );
    assert_ne!(check, strict, "the check file names its tolerance");
    std::fs::write(dir.join("blazeface_front_128_int8.onnx.check.json"), strict).unwrap();
    model
}

#[test]
fn an_int8_detector_failing_its_check_falls_back_to_fp32_and_says_so() {
    let dir = std::env::temp_dir().join(format!("fer-fallback-{}", std::process::id()));
    let model = int8_failing_its_check(&dir);
    let mut paths =
        ModelPaths::vendored_with(&default_models_dir(), EmotionNet::Fer, Precision::Int8);
    paths.detector = model;
    paths.detector_sha256 = None;

    // With the fallback (as `--detector-precision int8` sets it): fp32 serves, and it is counted.
    let mut pipeline = FerPipeline::load(&paths).expect("falls back to fp32");
    let img = image::open(testdata("astronaut_256.png"))
        .unwrap()
        .to_rgb8();
    let (faces, _) = pipeline
        .analyze(img.as_raw(), img.width() as usize, img.height() as usize)
        .unwrap();
    assert_eq!(faces.len(), 1);
    let metrics = classifier_sdk::WorkerMetrics::new().encode();
    assert!(
        metrics.contains(
            "tap_worker_model_precision_fallbacks_total{model=\"blazeface_front_128_int8.onnx\"} 1"
        ),
        "{metrics}"
    );
    assert!(
        metrics.contains("tap_worker_model_self_check_error{model=\"blazeface_front_128.onnx\"}")
    );

    // Without one: refused, naming the model, the output, the CPU.
    paths.detector_fallback = None;
    let err = FerPipeline::load(&paths).err().expect("refused");
    let _ = std::fs::remove_dir_all(&dir);
    assert!(matches!(err, OnnxError::SelfCheck { .. }), "{err}");
    let text = err.to_string();
    assert!(
        text.contains("blazeface_front_128_int8.onnx")
            && text.contains("CPU:")
            && text.contains("Identity"),
        "{text}"
    );
}

#[test]
fn every_shipped_model_passes_its_self_check_here() {
    // Each vendored model loads through the checked path (a missing or broken check file, or a
    // model off its reference, is an error).
    for net in [EmotionNet::Fer, EmotionNet::Human, EmotionNet::Tap] {
        for precision in [Precision::Fp32, Precision::Int8] {
            let mut paths = ModelPaths::vendored_with(&default_models_dir(), net, precision);
            paths.detector_fallback = None;
            FerPipeline::load(&paths).unwrap_or_else(|e| panic!("{net:?} {precision:?}: {e}"));
        }
    }
}

#[test]
fn a_shipped_model_without_its_check_file_is_refused() {
    let dir = std::env::temp_dir().join(format!("fer-nocheck-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for f in ["blazeface_front_128.onnx", "fer_mini_xception.onnx"] {
        std::fs::copy(default_models_dir().join(f), dir.join(f)).unwrap();
    }
    std::fs::copy(
        default_models_dir().join("fer_mini_xception.onnx.check.json"),
        dir.join("fer_mini_xception.onnx.check.json"),
    )
    .unwrap();
    let err = FerPipeline::load(&ModelPaths::vendored(&dir, EmotionNet::Fer))
        .err()
        .expect("refused");
    let _ = std::fs::remove_dir_all(&dir);
    assert!(matches!(err, OnnxError::CheckFile { .. }), "{err}");
    assert!(
        err.to_string()
            .contains("blazeface_front_128.onnx.check.json"),
        "{err}"
    );
}
