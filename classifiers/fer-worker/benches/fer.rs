//! Benchmark (prints figures): FER pipeline frames per second on one core (one intra-op thread),
//! with and without a face, at 320x240 and 640x480, and the time of each stage; then
//! detect-then-track side by side (detector every 1, 3, 5, 10 frames) with the agreement of each
//! with the every-frame path on the moving-face clip; then the idle cost.
//!
//! `ORT_DYLIB_PATH=… cargo bench -p fer-worker --bench fer`

use std::path::Path;
use std::time::Instant;

use fer_worker::track::{Tracker, TrackerConfig};
use fer_worker::{
    default_models_dir, EmotionNet, Face, FerPipeline, ModelPaths, Precision, StageTimes,
};

#[path = "../tests/support/clip.rs"]
mod clip;

fn frame(w: usize, h: usize, face: bool) -> Vec<u8> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata");
    let src = image::open(dir.join(if face {
        "astronaut_256.png"
    } else {
        "noise.png"
    }))
    .unwrap()
    .to_rgb8();
    // Scale the picture to the frame's height and centre it (the astronaut's face then takes about
    // a fifth of the frame height, as a webcam participant's would).
    let side = h as u32;
    let scaled = image::imageops::resize(&src, side, side, image::imageops::FilterType::Triangle);
    let mut out = vec![0u8; w * h * 3];
    let x0 = (w - side as usize) / 2;
    for y in 0..h {
        for x in 0..side as usize {
            let p = scaled.get_pixel(x as u32, y as u32);
            out[(y * w + x0 + x) * 3..(y * w + x0 + x) * 3 + 3].copy_from_slice(&p.0);
        }
    }
    out
}

fn load() -> FerPipeline {
    FerPipeline::load(&ModelPaths::vendored(
        &default_models_dir(),
        EmotionNet::Fer,
    ))
    .expect("set ORT_DYLIB_PATH")
}

fn dominant(faces: &[Face]) -> Option<&Face> {
    let area = |f: &Face| (f.bbox[2] - f.bbox[0]) * (f.bbox[3] - f.bbox[1]);
    faces.iter().max_by(|a, b| area(a).total_cmp(&area(b)))
}

fn iou(a: &[f32; 4], b: &[f32; 4]) -> f32 {
    let ix = (a[2].min(b[2]) - a[0].max(b[0])).max(0.0);
    let iy = (a[3].min(b[3]) - a[1].max(b[1])).max(0.0);
    let inter = ix * iy;
    inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)
}

/// CPU seconds this process used so far (user + system).
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit(')')
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // utime and stime are fields 14 and 15 of the line, 12 and 13 after the command name.
    (ticks(11) + ticks(12)) / 100.0
}

fn tracking() {
    let img = frame(320, 240, true);
    let frames = clip::clip();
    println!();
    println!("| 320x240, one face | frames/s per core | ms/frame | detector runs (steady face) | moving clip: label agreement / IoU ≥ 0.8 with every-frame detection | detector runs on the clip |");
    println!("|---|---|---|---|---|---|");
    let dir = default_models_dir();
    // Each net is compared with itself, detecting on every frame.
    let reference = |net| {
        let mut r =
            FerPipeline::load(&ModelPaths::vendored(&dir, net)).expect("set ORT_DYLIB_PATH");
        frames
            .iter()
            .map(|f| r.analyze(f, clip::W, clip::H).unwrap().0)
            .collect::<Vec<Vec<Face>>>()
    };
    let (want_fer, want_tap) = (reference(EmotionNet::Fer), reference(EmotionNet::Tap));
    let configs = [
        ("fp32", EmotionNet::Fer, Precision::Fp32, 1u32),
        ("fp32", EmotionNet::Fer, Precision::Fp32, 3),
        ("fp32", EmotionNet::Fer, Precision::Fp32, 5),
        ("fp32", EmotionNet::Fer, Precision::Fp32, 10),
        ("int8 detector", EmotionNet::Fer, Precision::Int8, 1),
        ("int8 detector", EmotionNet::Fer, Precision::Int8, 3),
        ("int8 detector", EmotionNet::Fer, Precision::Int8, 5),
        (
            "fp32, net trained here",
            EmotionNet::Tap,
            Precision::Fp32,
            1,
        ),
        (
            "fp32, net trained here",
            EmotionNet::Tap,
            Precision::Fp32,
            5,
        ),
    ];
    for (name, net, det, n) in configs {
        let want = if net == EmotionNet::Tap {
            &want_tap
        } else {
            &want_fer
        };
        let with = |d| ModelPaths::vendored_with(&dir, net, d);
        let cfg = TrackerConfig {
            detect_interval: n,
            ..Default::default()
        };
        let load = || FerPipeline::load(&with(det)).expect("set ORT_DYLIB_PATH");
        let mut p = load();
        let mut tracker = Tracker::new(cfg);
        for i in 0..50 {
            p.analyze_tracked(
                &mut tracker,
                &img,
                320,
                240,
                i as f64 * 66.7,
                Some(i as u64),
            )
            .unwrap();
        }
        let count = 2000;
        let mut detections = 0;
        let t = Instant::now();
        for i in 50..50 + count {
            let (_, _, d) = p
                .analyze_tracked(
                    &mut tracker,
                    &img,
                    320,
                    240,
                    i as f64 * 66.7,
                    Some(i as u64),
                )
                .unwrap();
            detections += usize::from(d);
        }
        let per = t.elapsed().as_secs_f64() / count as f64;
        // The clip, against the every-frame reference.
        let mut p = load();
        let mut tracker = Tracker::new(cfg);
        let (mut face_frames, mut agree, mut boxes, mut clip_detections) = (0, 0, 0, 0);
        for (i, (f, w)) in frames.iter().zip(want).enumerate() {
            let (got, _, d) = p
                .analyze_tracked(
                    &mut tracker,
                    f,
                    clip::W,
                    clip::H,
                    i as f64 * 66.7,
                    Some(i as u64),
                )
                .unwrap();
            clip_detections += usize::from(d);
            if let Some(w) = dominant(w) {
                face_frames += 1;
                if let Some(g) = dominant(&got) {
                    agree += usize::from(w.top().map(|t| t.0) == g.top().map(|t| t.0));
                    boxes += usize::from(iou(&w.bbox, &g.bbox) >= 0.8);
                }
            }
        }
        println!(
            "| {name}, detect every {n} | {:.0} | {:.3} | {detections} of {count} | {:.1} % / {:.1} % | {clip_detections} of {} |",
            1.0 / per,
            per * 1e3,
            agree as f64 / face_frames as f64 * 100.0,
            boxes as f64 / face_frames as f64 * 100.0,
            frames.len()
        );
    }
    // Idle: the models loaded, nothing to do.
    let _p = load();
    let before = cpu_seconds();
    std::thread::sleep(std::time::Duration::from_secs(2));
    println!(
        "\nidle, models loaded: {:.2} % of a core over 2 s",
        (cpu_seconds() - before) / 2.0 * 100.0
    );
}

/// Whether batching FER crops of several participants pays: the emotion net on 4 and 8 crops as
/// one call each against one call per crop, on one core, and two instances on two threads.
fn batching() {
    let crops: Vec<f32> = (0..8 * 64 * 64)
        .map(|i| ((i * 7919) % 255) as f32 / 127.5 - 1.0)
        .collect();
    println!();
    println!("| emotion net (mini-XCEPTION, fp32) | ms per crop | crops/s |");
    println!("|---|---|---|");
    let mut p = load();
    for batch in [1usize, 4, 8] {
        let input = &crops[..batch * 64 * 64];
        for _ in 0..50 {
            p.emotions(input).unwrap();
        }
        let calls = 2000 / batch;
        let t = Instant::now();
        for _ in 0..calls {
            p.emotions(input).unwrap();
        }
        let per_crop = t.elapsed().as_secs_f64() / (calls * batch) as f64;
        println!(
            "| one core, {batch} crop(s) per call | {:.3} | {:.0} |",
            per_crop * 1e3,
            1.0 / per_crop
        );
    }
    // Two instances side by side (what --concurrency 2 does), one crop per call each.
    let t = Instant::now();
    let per_thread = 2000;
    std::thread::scope(|s| {
        for _ in 0..2 {
            s.spawn(|| {
                let mut p = load();
                let input = &crops[..64 * 64];
                for _ in 0..per_thread {
                    p.emotions(input).unwrap();
                }
            });
        }
    });
    let per_crop = t.elapsed().as_secs_f64() / (2 * per_thread) as f64;
    println!(
        "| two cores, two instances, 1 crop per call | {:.3} | {:.0} |",
        per_crop * 1e3,
        1.0 / per_crop
    );
}

/// The two models alone in ONNX Runtime (same session options as the worker: one intra-op thread,
/// no spinning), on prepared input tensors: no letterbox, no decoding, no crop. The limit of what
/// any pipeline around them could do; printed with the detect-every-N limits.
fn bare_models() {
    use classifier_sdk::onnx::{self, ort};
    let dir = default_models_dir();
    let mut detector = onnx::load(
        &dir.join("blazeface_front_128.onnx"),
        Some(fer_worker::BLAZEFACE_SHA256),
    )
    .unwrap();
    let mut emotion = onnx::load(
        &dir.join("fer_mini_xception.onnx"),
        Some(fer_worker::FER_SHA256),
    )
    .unwrap();
    let image: Vec<f32> = (0..128 * 128 * 3)
        .map(|i| ((i * 31) % 255) as f32 / 127.5 - 1.0)
        .collect();
    let crop: Vec<f32> = (0..64 * 64)
        .map(|i| ((i * 7919) % 255) as f32 / 127.5 - 1.0)
        .collect();
    let time = |f: &mut dyn FnMut()| {
        for _ in 0..50 {
            f();
        }
        let n = 2000;
        let t = Instant::now();
        for _ in 0..n {
            f();
        }
        t.elapsed().as_secs_f64() / n as f64
    };
    let det = time(&mut || {
        let input =
            ort::value::TensorRef::from_array_view(([1usize, 128, 128, 3], &image[..])).unwrap();
        detector.run(ort::inputs!["input:0" => input]).unwrap();
    });
    let fer = time(&mut || {
        let input =
            ort::value::TensorRef::from_array_view(([1usize, 64, 64, 1], &crop[..])).unwrap();
        emotion.run(ort::inputs!["input" => input]).unwrap();
    });
    println!();
    println!("| bare models in ONNX Runtime (the limit) | ms/frame | frames/s per core |");
    println!("|---|---|---|");
    println!("| BlazeFace alone | {:.3} | {:.0} |", det * 1e3, 1.0 / det);
    println!(
        "| mini-XCEPTION alone | {:.3} | {:.0} |",
        fer * 1e3,
        1.0 / fer
    );
    for n in [1.0, 3.0, 5.0, 10.0] {
        let per = det / n + fer;
        println!(
            "| both, detector every {n} frames | {:.3} | {:.0} |",
            per * 1e3,
            1.0 / per
        );
    }
}

fn main() {
    bare_models();
    let mut pipeline = load();
    for (w, h) in [(320usize, 240usize), (640, 480)] {
        for face in [true, false] {
            let img = frame(w, h, face);
            for _ in 0..50 {
                pipeline.analyze(&img, w, h).unwrap();
            }
            let n = 1000;
            let mut sum = StageTimes::default();
            let mut faces = 0;
            let t = Instant::now();
            for _ in 0..n {
                let (f, times) = pipeline.analyze(&img, w, h).unwrap();
                faces = f.len();
                sum.preprocess_ms += times.preprocess_ms;
                sum.detect_ms += times.detect_ms;
                sum.classify_ms += times.classify_ms;
            }
            let per = t.elapsed().as_secs_f64() / n as f64;
            println!(
                "{w}x{h} {}: {:>6.0} frames/s on one core ({:.3} ms/frame; {faces} face(s)) — letterbox {:.3} ms, BlazeFace {:.3} ms, crop+FER {:.3} ms",
                if face { "one face" } else { "no face " },
                1.0 / per,
                per * 1e3,
                sum.preprocess_ms / n as f64,
                sum.detect_ms / n as f64,
                sum.classify_ms / n as f64,
            );
        }
    }
    tracking();
    batching();
}
