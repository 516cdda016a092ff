//! Benchmark (prints figures): FER pipeline frames per second on one core (one intra-op thread),
//! with and without a face, at 320x240 and 640x480, and the time of each stage.
//!
//! `ORT_DYLIB_PATH=… cargo bench -p fer-worker --bench fer`

use std::path::Path;
use std::time::Instant;

use fer_worker::{default_models_dir, EmotionNet, FerPipeline, ModelPaths, StageTimes};

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

fn main() {
    let mut pipeline = FerPipeline::load(&ModelPaths::vendored(
        &default_models_dir(),
        EmotionNet::Fer,
    ))
    .expect("set ORT_DYLIB_PATH");
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
}
