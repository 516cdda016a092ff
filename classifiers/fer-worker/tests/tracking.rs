//! Detect-then-track must not cost quality: on a moving-face clip made from the committed photo
//! (the face slides in, zooms, pans, slides out; no external data), the tracked path's per-frame
//! top label agrees with the every-frame fp32 path on ≥ 98 % of frames with a face, its box has
//! IoU ≥ 0.8 on ≥ 95 % of them, and it reports no face on frames without one.

use std::path::Path;

use fer_worker::track::TrackerConfig;
use fer_worker::{default_models_dir, EmotionNet, Face, FerPipeline, ModelPaths};

pub const W: usize = 320;
pub const H: usize = 240;

/// The clip: 150 frames at 15 fps (10 s).
pub fn clip() -> Vec<Vec<u8>> {
    let src = image::open(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("testdata")
            .join("astronaut_256.png"),
    )
    .unwrap()
    .to_rgb8();
    let lerp = |a: f32, b: f32, t: f32| a + (b - a) * t;
    (0..150)
        .map(|i| {
            let t = i as f32;
            // (left edge, top edge, side) of the photo in the frame.
            let (x, y, side) = match i {
                0..=19 => (330.0, 0.0, 240.0), // not in view
                20..=49 => (lerp(330.0, 40.0, (t - 20.0) / 30.0), 0.0, 240.0), // slides in
                50..=89 => {
                    let k = (t - 50.0) / 40.0;
                    (
                        lerp(40.0, 10.0, k),
                        lerp(0.0, -30.0, k),
                        lerp(240.0, 300.0, k),
                    ) // zoom
                }
                90..=119 => (lerp(10.0, -110.0, (t - 90.0) / 30.0), -30.0, 300.0), // pans
                _ => (lerp(-110.0, -420.0, (t - 120.0) / 30.0), -30.0, 300.0),     // leaves
            };
            compose(&src, x, y, side)
        })
        .collect()
}

fn compose(src: &image::RgbImage, x: f32, y: f32, side: f32) -> Vec<u8> {
    let mut out = vec![0u8; W * H * 3];
    for py in 0..H {
        for px in 0..W {
            // A plain wall behind the photo, slightly graded.
            let mut c = [
                120 + (py / 8) as u8,
                118 + (py / 8) as u8,
                110 + (py / 8) as u8,
            ];
            let (u, v) = ((px as f32 - x) / side, (py as f32 - y) / side);
            if (0.0..1.0).contains(&u) && (0.0..1.0).contains(&v) {
                let p = src.get_pixel((u * 256.0) as u32, (v * 256.0) as u32);
                c = p.0;
            }
            out[(py * W + px) * 3..(py * W + px) * 3 + 3].copy_from_slice(&c);
        }
    }
    out
}

fn pipeline() -> FerPipeline {
    FerPipeline::load(&ModelPaths::vendored(
        &default_models_dir(),
        EmotionNet::Fer,
    ))
    .expect("models load (is ORT_DYLIB_PATH set? run scripts/setup)")
}

fn dominant(faces: &[Face]) -> Option<&Face> {
    faces.iter().max_by(|a, b| area(a).total_cmp(&area(b)))
}

fn area(f: &Face) -> f32 {
    (f.bbox[2] - f.bbox[0]) * (f.bbox[3] - f.bbox[1])
}

fn iou(a: &[f32; 4], b: &[f32; 4]) -> f32 {
    let ix = (a[2].min(b[2]) - a[0].max(b[0])).max(0.0);
    let iy = (a[3].min(b[3]) - a[1].max(b[1])).max(0.0);
    let inter = ix * iy;
    inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)
}

/// Agreement of the tracked path with `interval` against the every-frame reference.
struct Agreement {
    face_frames: usize,
    label_agree: usize,
    iou_ok: usize,
    empty_frames: usize,
    phantom: usize,
    detections: usize,
}

fn agreement(frames: &[Vec<u8>], interval: u32) -> Agreement {
    let mut reference = pipeline();
    let mut fast = pipeline();
    let mut tracker = fer_worker::track::Tracker::new(TrackerConfig {
        detect_interval: interval,
        ..Default::default()
    });
    let mut a = Agreement {
        face_frames: 0,
        label_agree: 0,
        iou_ok: 0,
        empty_frames: 0,
        phantom: 0,
        detections: 0,
    };
    for (i, f) in frames.iter().enumerate() {
        let (want, _) = reference.analyze(f, W, H).unwrap();
        let (got, _, detected) = fast
            .analyze_tracked(&mut tracker, f, W, H, i as f64 * 66.7)
            .unwrap();
        a.detections += usize::from(detected);
        match (dominant(&want), dominant(&got)) {
            (Some(w), Some(g)) => {
                a.face_frames += 1;
                a.label_agree += usize::from(w.top().map(|t| t.0) == g.top().map(|t| t.0));
                a.iou_ok += usize::from(iou(&w.bbox, &g.bbox) >= 0.8);
            }
            (Some(_), None) => a.face_frames += 1,
            (None, got) => {
                a.empty_frames += 1;
                a.phantom += usize::from(got.is_some());
            }
        }
    }
    a
}

#[test]
fn the_tracked_path_agrees_with_detection_on_every_frame() {
    let frames = clip();
    let default = TrackerConfig::default().detect_interval;
    for interval in [3, default, 10] {
        let a = agreement(&frames, interval);
        let label = a.label_agree as f64 / a.face_frames as f64;
        let boxes = a.iou_ok as f64 / a.face_frames as f64;
        eprintln!(
            "every {interval}: {} face frames, label agreement {:.1} %, IoU ≥ 0.8 on {:.1} %, {} of {} empty frames with a face reported, {} detections for {} frames",
            a.face_frames,
            label * 100.0,
            boxes * 100.0,
            a.phantom,
            a.empty_frames,
            a.detections,
            frames.len()
        );
        assert!(
            a.face_frames >= 80 && a.empty_frames >= 20,
            "the clip has both"
        );
        assert_eq!(a.phantom, 0, "every {interval}: a face where there is none");
        assert!(
            a.detections < frames.len(),
            "every {interval}: the detector ran on every frame"
        );
        // The bar holds for the default and anything more frequent; every 10 frames is measured
        // (docs/benchmarks.md), not required: it is why the default is 5.
        if interval > default {
            continue;
        }
        assert!(label >= 0.98, "every {interval}: label agreement {label}");
        assert!(boxes >= 0.95, "every {interval}: IoU ≥ 0.8 on {boxes}");
    }
}
