//! Detect-then-track must not cost quality: on a moving-face clip made from the committed photo
//! (the face slides in, zooms, pans, slides out; no external data), the tracked path's per-frame
//! top label agrees with the every-frame fp32 path on ≥ 98 % of frames with a face, its box has
//! IoU ≥ 0.8 on ≥ 95 % of them, and it reports no face on frames without one.

use fer_worker::track::TrackerConfig;
use fer_worker::{default_models_dir, EmotionNet, Face, FerPipeline, ModelPaths};

#[path = "support/clip.rs"]
mod clip;

use clip::{clip, H, W};

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
            .analyze_tracked(&mut tracker, f, W, H, i as f64 * 66.7, Some(i as u64))
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

/// A participant's chunks spread over two worker processes (a queue group): each sees every other
/// chunk, the sequence gaps make it detect instead of tracking from a frame two back, and quality
/// holds. (Tracking from two frames back measured IoU ≥ 0.8 on only 93 % of face frames.)
#[test]
fn chunks_spread_over_two_instances_keep_the_quality() {
    let frames = clip();
    let mut reference = pipeline();
    let mut instances = [pipeline(), pipeline()];
    let mut trackers = [
        fer_worker::track::Tracker::new(TrackerConfig::default()),
        fer_worker::track::Tracker::new(TrackerConfig::default()),
    ];
    let (mut face_frames, mut agree, mut boxes, mut phantom) = (0, 0, 0, 0);
    for (i, f) in frames.iter().enumerate() {
        let k = i % 2;
        let (want, _) = reference.analyze(f, W, H).unwrap();
        let (got, _, _) = instances[k]
            .analyze_tracked(&mut trackers[k], f, W, H, i as f64 * 66.7, Some(i as u64))
            .unwrap();
        match (dominant(&want), dominant(&got)) {
            (Some(w), Some(g)) => {
                face_frames += 1;
                agree += usize::from(w.top().map(|t| t.0) == g.top().map(|t| t.0));
                boxes += usize::from(iou(&w.bbox, &g.bbox) >= 0.8);
            }
            (Some(_), None) => face_frames += 1,
            (None, got) => phantom += usize::from(got.is_some()),
        }
    }
    let (label, iou_share) = (
        agree as f64 / face_frames as f64,
        boxes as f64 / face_frames as f64,
    );
    eprintln!("two instances: label agreement {label:.3}, IoU ≥ 0.8 on {iou_share:.3}");
    assert!(label >= 0.98 && iou_share >= 0.95, "{label} {iou_share}");
    assert_eq!(phantom, 0);
}
