//! Checks that can fail, on committed images derived from scikit-image's photos
//! (testdata/make_testdata.py). Needs ORT_DYLIB_PATH (scripts/test sets it).

use std::path::Path;
use std::process::Command;

use fer_worker::{default_models_dir, EmotionNet, FerPipeline, ModelPaths};

fn rgb(name: &str) -> (Vec<u8>, usize, usize) {
    let img = image::open(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("testdata")
            .join(name),
    )
    .unwrap()
    .to_rgb8();
    let (w, h) = img.dimensions();
    (img.into_raw(), w as usize, h as usize)
}

fn pipeline(net: EmotionNet) -> FerPipeline {
    FerPipeline::load(&ModelPaths::vendored(&default_models_dir(), net))
        .expect("models load (is ORT_DYLIB_PATH set? run scripts/setup)")
}

#[test]
fn the_smiling_astronaut_is_one_happy_face() {
    for net in [EmotionNet::Tap, EmotionNet::Fer, EmotionNet::Human] {
        let mut p = pipeline(net);
        let (img, w, h) = rgb("astronaut_256.png");
        let (faces, _) = p.analyze(&img, w, h).unwrap();
        assert_eq!(faces.len(), 1, "{net:?}: {faces:?}");
        let (label, score) = faces[0].top().unwrap();
        assert_eq!(label, "happy", "{net:?}");
        // The net trained here was trained with label smoothing (0.1): its confident answers top
        // out near 0.9 instead of saturating at 1.
        let confident = if net == EmotionNet::Tap { 0.7 } else { 0.9 };
        assert!(score >= confident, "{net:?}: happy {score}");
        // The face is where it is: x 177–272, y 81–175 on the 512 px original, halved here.
        let b = faces[0].bbox;
        assert!(
            (b[0] - 88.5).abs() < 8.0
                && (b[2] - 136.0).abs() < 8.0
                && (b[1] - 40.5).abs() < 8.0
                && (b[3] - 87.5).abs() < 8.0,
            "{b:?}"
        );
    }
}

#[test]
fn noise_has_no_face() {
    let (img, w, h) = rgb("noise.png");
    let (faces, _) = pipeline(EmotionNet::Fer).analyze(&img, w, h).unwrap();
    assert!(faces.is_empty(), "{faces:?}");
}

#[test]
fn a_mirrored_face_gets_the_same_label() {
    let (img, w, h) = rgb("astronaut_256.png");
    let mut flipped = img.clone();
    for y in 0..h {
        for x in 0..w {
            for c in 0..3 {
                flipped[(y * w + x) * 3 + c] = img[(y * w + (w - 1 - x)) * 3 + c];
            }
        }
    }
    let mut p = pipeline(EmotionNet::Fer);
    let (a, _) = p.analyze(&img, w, h).unwrap();
    let (b, _) = p.analyze(&flipped, w, h).unwrap();
    assert_eq!(b.len(), 1);
    assert_eq!(a[0].top().unwrap().0, b[0].top().unwrap().0);
    // Mirrored position.
    assert!((b[0].bbox[0] - (w as f32 - a[0].bbox[2])).abs() < 6.0);
}

#[test]
fn two_faces_give_two_boxes() {
    let (img, w, h) = rgb("two_faces.png");
    let (faces, _) = pipeline(EmotionNet::Fer).analyze(&img, w, h).unwrap();
    assert_eq!(faces.len(), 2, "{faces:?}");
    let mut xs: Vec<f32> = faces
        .iter()
        .map(|f| (f.bbox[0] + f.bbox[2]) / 2.0)
        .collect();
    xs.sort_by(|a, b| a.partial_cmp(b).unwrap());
    assert!(xs[0] < 160.0 && xs[1] > 160.0, "one face per half: {xs:?}");
}

#[test]
fn classify_prints_json_per_image() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata");
    let out = Command::new(env!("CARGO_BIN_EXE_fer-worker"))
        .arg("classify")
        .arg(dir.join("astronaut_256.png"))
        .arg(dir.join("noise.png"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<serde_json::Value> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2);
    assert!(lines[0]["image"]
        .as_str()
        .unwrap()
        .ends_with("astronaut_256.png"));
    assert_eq!(lines[0]["faces"][0]["box"].as_array().unwrap().len(), 4);
    let labels = lines[0]["faces"][0]["labels"].as_object().unwrap();
    let top = labels
        .iter()
        .max_by(|a, b| a.1.as_f64().unwrap().total_cmp(&b.1.as_f64().unwrap()))
        .unwrap();
    assert_eq!(top.0, "happy", "{labels:?}");
    assert!(top.1.as_f64().unwrap() > 0.5, "{labels:?}");
    assert_eq!(lines[1]["faces"], serde_json::json!([]));
}

#[test]
fn a_missing_runtime_names_the_variable_and_the_setup() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata");
    let out = Command::new(env!("CARGO_BIN_EXE_fer-worker"))
        .env("ORT_DYLIB_PATH", "/nonexistent/libonnxruntime.so")
        .arg("classify")
        .arg(dir.join("noise.png"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("ORT_DYLIB_PATH") && err.contains("scripts/setup"),
        "{err}"
    );
}

#[test]
fn a_tampered_model_is_refused() {
    let dir = std::env::temp_dir().join(format!("fer-tamper-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for f in ["blazeface_front_128.onnx", "fer_mini_xception.onnx"] {
        std::fs::copy(default_models_dir().join(f), dir.join(f)).unwrap();
    }
    let mut bytes = std::fs::read(dir.join("fer_mini_xception.onnx")).unwrap();
    let n = bytes.len();
    bytes[n - 1] ^= 1;
    std::fs::write(dir.join("fer_mini_xception.onnx"), bytes).unwrap();
    let err = FerPipeline::load(&ModelPaths::vendored(&dir, EmotionNet::Fer))
        .err()
        .expect("refused");
    assert!(err.to_string().contains("sha256"), "{err}");
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn a_user_model_of_the_wrong_kind_is_an_error_not_a_crash() {
    // The face detector given as the emotion net: one input, but not 64×64×1 and not 7 outputs.
    let dir = default_models_dir();
    let paths = ModelPaths {
        detector: dir.join("blazeface_front_128.onnx"),
        emotion: dir.join("blazeface_front_128.onnx"),
        detector_sha256: None,
        detector_fallback: None,
        emotion_sha256: None,
    };
    let (img, w, h) = rgb("astronaut_256.png");
    match FerPipeline::load(&paths) {
        Err(e) => assert!(!e.to_string().is_empty()),
        Ok(mut p) => assert!(
            p.analyze(&img, w, h).is_err(),
            "a detector does not classify emotions"
        ),
    }
}

#[test]
fn keypoints_sit_on_the_face_and_a_frontal_face_is_attentive() {
    let (img, w, h) = rgb("astronaut_256.png");
    let (faces, _) = pipeline(EmotionNet::Fer).analyze(&img, w, h).unwrap();
    let f = &faces[0];
    let [x0, y0, x1, y1] = f.bbox;
    for [x, y] in &f.keypoints[..4] {
        assert!(
            (x0..=x1).contains(x) && (y0..=y1).contains(y),
            "eyes, nose and mouth inside the box: {f:?}"
        );
    }
    let [eye_a, eye_b, nose, mouth, ..] = f.keypoints;
    assert!(
        eye_a[1].max(eye_b[1]) < nose[1] && nose[1] < mouth[1],
        "{f:?}"
    );
    assert!(f.attentive, "the astronaut faces the camera: {f:?}");
}

#[test]
fn a_face_turned_aside_is_not_frontal() {
    use fer_worker::frontal;
    // Eyes at x 40 and 60, nose tip in the middle, mouth below: frontal.
    let mut k = [
        [40.0, 50.0],
        [60.0, 50.0],
        [50.0, 60.0],
        [50.0, 70.0],
        [30.0, 55.0],
        [70.0, 55.0],
    ];
    assert!(frontal(&k));
    // Nose tip past one eye (head turned ~45° or more): not frontal.
    k[2] = [63.0, 60.0];
    assert!(!frontal(&k));
    // Nose tip level with the eyes (head tilted far back): not frontal.
    k[2] = [50.0, 50.5];
    assert!(!frontal(&k));
}

#[test]
fn the_int8_detector_finds_the_same_face() {
    let (img, w, h) = rgb("astronaut_256.png");
    let fp32 = pipeline(EmotionNet::Fer).analyze(&img, w, h).unwrap().0;
    let mut int8 = FerPipeline::load(&fer_worker::ModelPaths::vendored_with(
        &default_models_dir(),
        EmotionNet::Fer,
        fer_worker::Precision::Int8,
    ))
    .expect("the int8 detector loads and its checksum matches");
    let (faces, _) = int8.analyze(&img, w, h).unwrap();
    assert_eq!(faces.len(), 1, "{faces:?}");
    assert_eq!(faces[0].top().unwrap().0, "happy");
    let (a, b) = (faces[0].bbox, fp32[0].bbox);
    for k in 0..4 {
        assert!((a[k] - b[k]).abs() < 4.0, "int8 {a:?} vs fp32 {b:?}");
    }
    // Nothing where there is nothing.
    let (noise, w, h) = rgb("noise.png");
    assert!(int8.analyze(&noise, w, h).unwrap().0.is_empty());
}

#[test]
fn emotions_on_prepared_crops_checks_its_input() {
    let mut p = pipeline(EmotionNet::Fer);
    assert!(p.emotions(&[0.0; 100]).is_err(), "not a whole crop");
    assert!(p.emotions(&[]).is_err(), "no crop");
    let two = p.emotions(&vec![0.0; 2 * 64 * 64]).unwrap();
    assert_eq!(two.len(), 2);
    assert!(
        (two[0].iter().sum::<f32>() - 1.0).abs() < 1e-3,
        "{:?}",
        two[0]
    );
}
