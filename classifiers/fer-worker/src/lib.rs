//! Facial emotion: BlazeFace (front, 128) finds faces; an emotion net trained on FER2013 (by default
//! the one trained here, `fer_tap_cnn.onnx`; or mini-XCEPTION, or human's) classifies a square gray
//! 64x64 crop of each into 7 emotions.
//!
//! Contracts and preprocessing follow `models/PROVENANCE.md`: letterboxed RGB in [-1, 1] for the
//! detector, 896 anchors (16x16x2 + 8x8x6), sigmoid scores, weighted NMS at IoU 0.3; the crop is a
//! square around the box centre with 20 % margin per side, gray (0.299, 0.587, 0.114), [-1, 1].

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use classifier_sdk::onnx::ort::value::TensorRef;
use classifier_sdk::onnx::{self, gray_crop, letterbox_rgb, sigmoid, OnnxError, Session};
use serde::Serialize;

pub mod evaluate;
pub mod track;

/// FER2013 label order (index 0..6).
pub const LABELS: [&str; 7] = [
    "angry", "disgust", "fear", "happy", "sad", "surprise", "neutral",
];

/// sha256 of the vendored models (checked at load).
pub const BLAZEFACE_SHA256: &str =
    "af5db35512441e80e5b143d8fabdafea05adc2cc6ca480c4d7458759ec5d7148";
/// sha256 of `fer_mini_xception.onnx`.
pub const FER_SHA256: &str = "77258c4b293a28f33cf996bcd1ae39ed14d1cecaf82f8d9a368a9fab6db64c8a";
/// sha256 of `blazeface_front_128_int8.onnx` (models/tools/quantize.py: 7-bit weights, so that it
/// computes the same on CPUs with and without VNNI).
pub const BLAZEFACE_INT8_SHA256: &str =
    "d456ccfb046626fbe221910e0d4331d8d435b47e969db43ce33adf2cb0af0bf1";
/// sha256 of `fer_tap_cnn.onnx` (trained here: models/tools/train_fer.py).
pub const TAP_CNN_SHA256: &str = "f075055ab2d5688ee022a8311771c482f4e063457078b795343b062d49149207";
/// sha256 of `human_emotion.onnx`.
pub const HUMAN_SHA256: &str = "21351b2bbe94b02ed3a9da274dafd87ca71a1b726eaceeaa75d6a8e997903d70";

const DETECTOR_SIZE: usize = 128;

/// Which emotion network.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum EmotionNet {
    /// `fer_mini_xception.onnx` (58k parameters, 0.17 ms).
    Fer,
    /// `human_emotion.onnx` (205k parameters, 0.57 ms).
    Human,
    /// `fer_tap_cnn.onnx`, trained here on FER2013's train split (334k parameters;
    /// models/tools/train_fer.py, docs/models.md).
    Tap,
}

impl EmotionNet {
    /// The net's measured quality on FER2013's private test split, 6 classes (`fer-worker
    /// evaluate`, docs/models.md).
    pub fn quality(self) -> classifier_sdk::ModelQuality {
        let value = match self {
            EmotionNet::Fer => 0.560,
            EmotionNet::Human => 0.540,
            EmotionNet::Tap => 0.652,
        };
        classifier_sdk::ModelQuality {
            dataset: "FER2013 private test, 6 classes (docs/models.md)".into(),
            metric: "balanced accuracy".into(),
            value,
            classes: 6,
        }
    }
}

/// Where the models are, and which.
#[derive(Debug, Clone)]
pub struct ModelPaths {
    /// Face detector.
    pub detector: PathBuf,
    /// Emotion classifier.
    pub emotion: PathBuf,
    /// Expected checksums (None for user-supplied models).
    pub detector_sha256: Option<&'static str>,
    /// Expected checksum of the emotion model.
    pub emotion_sha256: Option<&'static str>,
    /// The detector to load instead when `detector` fails its numeric self-check on this CPU (an
    /// optional precision falls back to fp32, with one warning and a metric), and its checksum.
    pub detector_fallback: Option<(PathBuf, Option<&'static str>)>,
}

/// Numeric precision of a vendored model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Precision {
    /// The original float model.
    #[default]
    Fp32,
    /// The static int8 (QDQ) version made by `models/tools/quantize.py`.
    Int8,
}

impl ModelPaths {
    /// The vendored models in `dir`, with the face detector at `detector` precision. (There is
    /// no int8 emotion net: quantized, mini-XCEPTION disagreed with fp32 on every frame.)
    pub fn vendored_with(dir: &Path, net: EmotionNet, detector: Precision) -> Self {
        let mut p = Self::vendored(dir, net);
        if detector == Precision::Int8 {
            p.detector_fallback = Some((p.detector.clone(), p.detector_sha256));
            p.detector = dir.join("blazeface_front_128_int8.onnx");
            p.detector_sha256 = Some(BLAZEFACE_INT8_SHA256);
        }
        p
    }

    /// The vendored models in `dir`.
    pub fn vendored(dir: &Path, net: EmotionNet) -> Self {
        let (file, sha) = match net {
            EmotionNet::Fer => ("fer_mini_xception.onnx", FER_SHA256),
            EmotionNet::Human => ("human_emotion.onnx", HUMAN_SHA256),
            EmotionNet::Tap => ("fer_tap_cnn.onnx", TAP_CNN_SHA256),
        };
        ModelPaths {
            detector: dir.join("blazeface_front_128.onnx"),
            emotion: dir.join(file),
            detector_sha256: Some(BLAZEFACE_SHA256),
            emotion_sha256: Some(sha),
            detector_fallback: None,
        }
    }
}

/// The vendored models' folder (`$TAP_MODELS_DIR`, else the repository's `models/`).
pub use classifier_sdk::onnx::models_dir as default_models_dir;

/// One detected face.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Face {
    /// `[x0, y0, x1, y1]` in frame pixels.
    #[serde(rename = "box")]
    pub bbox: [f32; 4],
    /// Detection score.
    pub score: f32,
    /// Emotion probabilities by label.
    pub labels: std::collections::BTreeMap<String, f32>,
    /// BlazeFace's keypoints in frame pixels: eyes, nose tip, mouth, ear tragions.
    pub keypoints: [[f32; 2]; 6],
    /// Turned to the camera ([`frontal`]).
    pub attentive: bool,
}

impl Face {
    /// The most probable emotion.
    pub fn top(&self) -> Option<(&str, f32)> {
        self.labels
            .iter()
            .max_by(|a, b| a.1.partial_cmp(b.1).unwrap_or(std::cmp::Ordering::Equal))
            .map(|(k, v)| (k.as_str(), *v))
    }
}

/// Time spent per stage of one frame, ms.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct StageTimes {
    /// Letterbox + normalise.
    pub preprocess_ms: f64,
    /// BlazeFace.
    pub detect_ms: f64,
    /// Crops + emotion net.
    pub classify_ms: f64,
    /// Following faces between detections (template matching).
    pub track_ms: f64,
}

/// Detector + classifier.
pub struct FerPipeline {
    detector: Session,
    emotion: Session,
    /// The emotion net's input and output names (a user's model need not use ours).
    emotion_io: (String, String),
    anchors: Vec<(f32, f32)>,
    /// Minimum detection score (default 0.75).
    pub threshold: f32,
    /// Crop margin per side, as a fraction of the box (default 0.2).
    pub margin: f32,
}

fn anchors() -> Vec<(f32, f32)> {
    let mut a = Vec::with_capacity(896);
    for (cells, per) in [(16usize, 2usize), (8, 6)] {
        for y in 0..cells {
            for x in 0..cells {
                for _ in 0..per {
                    a.push((
                        (x as f32 + 0.5) / cells as f32,
                        (y as f32 + 0.5) / cells as f32,
                    ));
                }
            }
        }
    }
    a
}

fn iou(a: &[f32; 4], b: &[f32; 4]) -> f32 {
    let ix = (a[2].min(b[2]) - a[0].max(b[0])).max(0.0);
    let iy = (a[3].min(b[3]) - a[1].max(b[1])).max(0.0);
    let inter = ix * iy;
    let union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter;
    if union <= 0.0 {
        0.0
    } else {
        inter / union
    }
}

/// Weighted non-maximum suppression: boxes overlapping the best one by IoU ≥ `threshold` are merged
/// into their score-weighted mean; the merged score is the best one's.
pub fn weighted_nms<const N: usize>(
    mut candidates: Vec<([f32; N], f32)>,
    threshold: f32,
) -> Vec<([f32; N], f32)> {
    // The first four values are the box; any further ones (keypoints) are merged alike.
    let bx = |g: &[f32; N]| [g[0], g[1], g[2], g[3]];
    candidates.sort_by(|a, b| b.1.partial_cmp(&a.1).unwrap_or(std::cmp::Ordering::Equal));
    let mut out = Vec::new();
    while let Some((best, best_score)) = candidates.first().cloned() {
        let (group, rest): (Vec<_>, Vec<_>) = candidates
            .into_iter()
            .partition(|(b, _)| iou(&bx(b), &bx(&best)) >= threshold);
        let total: f32 = group.iter().map(|(_, s)| s).sum();
        let mut merged = [0.0f32; N];
        for (b, s) in &group {
            for i in 0..N {
                merged[i] += b[i] * s / total;
            }
        }
        out.push((merged, best_score));
        candidates = rest;
    }
    out
}

/// Whether a face is turned to the camera, from BlazeFace's keypoints (eyes, nose tip, mouth):
/// the nose tip sits between the eyes across (yaw) and between eyes and mouth down (pitch). Turned
/// away by more than about 30°, it leaves the middle band.
pub fn frontal(keypoints: &[[f32; 2]; 6]) -> bool {
    let [eye_a, eye_b, nose, mouth, ..] = *keypoints;
    let span_x = eye_b[0] - eye_a[0];
    let eyes_y = (eye_a[1] + eye_b[1]) / 2.0;
    let span_y = mouth[1] - eyes_y;
    if span_x.abs() < 1e-3 || span_y.abs() < 1e-3 {
        return false;
    }
    let across = (nose[0] - eye_a[0]) / span_x;
    let down = (nose[1] - eyes_y) / span_y;
    (0.25..=0.75).contains(&across) && (0.15..=0.9).contains(&down)
}

fn ort_err(e: impl std::fmt::Display) -> OnnxError {
    OnnxError::Ort(e.to_string())
}

/// The detector, or its fallback when it fails its numeric self-check on this CPU.
fn load_detector(paths: &ModelPaths) -> Result<onnx::Session, OnnxError> {
    match (
        onnx::load(&paths.detector, paths.detector_sha256),
        &paths.detector_fallback,
    ) {
        (Err(e @ OnnxError::SelfCheck { .. }), Some((fallback, sha))) => {
            // Every worker slot loads its own pipeline: say it once per process, count every time.
            static WARNED: std::sync::Once = std::sync::Once::new();
            WARNED.call_once(|| {
                tracing::warn!(
                    "{e}; falling back to {} (metric tap_worker_model_precision_fallbacks_total)",
                    fallback.display()
                );
            });
            classifier_sdk::record_model_fallback(&onnx::model_label(&paths.detector));
            onnx::load(fallback, *sha)
        }
        (result, _) => result,
    }
}

impl FerPipeline {
    /// Loads both models (checksums verified for the vendored ones, and every model's numeric
    /// self-check run: a model that computes wrong answers on this CPU is refused, or for the
    /// optional int8 detector replaced by the fp32 one).
    pub fn load(paths: &ModelPaths) -> Result<Self, OnnxError> {
        let emotion = onnx::load(&paths.emotion, paths.emotion_sha256)?;
        let (inputs, outputs) = (emotion.inputs(), emotion.outputs());
        if inputs.len() != 1 || outputs.is_empty() {
            return Err(OnnxError::Ort(format!(
                "{}: an emotion net takes one input (N×64×64×1) and gives 7 probabilities; this one has {} inputs and {} outputs",
                paths.emotion.display(),
                inputs.len(),
                outputs.len()
            )));
        }
        let emotion_io = (inputs[0].name().to_owned(), outputs[0].name().to_owned());
        Ok(FerPipeline {
            detector: load_detector(paths)?,
            emotion,
            emotion_io,
            anchors: anchors(),
            threshold: 0.75,
            margin: 0.2,
        })
    }

    /// Faces in an RGB24 frame, each with its emotions; timings per stage. Runs the detector.
    pub fn analyze(
        &mut self,
        rgb: &[u8],
        w: usize,
        h: usize,
    ) -> Result<(Vec<Face>, StageTimes), OnnxError> {
        let mut times = StageTimes::default();
        let boxes = self.detect(rgb, w, h, &mut times)?;
        let faces = self.classify(rgb, w, h, &boxes, &mut times)?;
        Ok((faces, times))
    }

    /// The same, with the detector only when `tracker` says so (track::Tracker); the faces it
    /// followed otherwise. The third value tells whether the detector ran.
    pub fn analyze_tracked(
        &mut self,
        tracker: &mut track::Tracker,
        rgb: &[u8],
        w: usize,
        h: usize,
        at_ms: f64,
        seq: Option<u64>,
    ) -> Result<(Vec<Face>, StageTimes, bool), OnnxError> {
        let mut times = StageTimes::default();
        let frame = track::Rgb { pixels: rgb, w, h };
        let t = std::time::Instant::now();
        let step = tracker.step(frame, at_ms, seq);
        times.track_ms = t.elapsed().as_secs_f64() * 1e3;
        let (boxes, detected) = match step {
            track::Step::Tracked(faces) => (
                faces.into_iter().map(|(g, score, _)| (g, score)).collect(),
                false,
            ),
            track::Step::Detect(_) => {
                let boxes = self.detect(rgb, w, h, &mut times)?;
                tracker.detected(frame, &boxes);
                (boxes, true)
            }
        };
        let faces = self.classify(rgb, w, h, &boxes, &mut times)?;
        Ok((faces, times, detected))
    }

    /// BlazeFace: boxes with keypoints (frame pixels) and scores.
    fn detect(
        &mut self,
        rgb: &[u8],
        w: usize,
        h: usize,
        times: &mut StageTimes,
    ) -> Result<Vec<([f32; 16], f32)>, OnnxError> {
        let t = std::time::Instant::now();
        let (input, lb) = letterbox_rgb(rgb, w, h, DETECTOR_SIZE);
        times.preprocess_ms = t.elapsed().as_secs_f64() * 1e3;
        let t = std::time::Instant::now();
        let boxes = {
            let tensor =
                TensorRef::from_array_view(([1usize, DETECTOR_SIZE, DETECTOR_SIZE, 3], &input[..]))
                    .map_err(ort_err)?;
            let out = self
                .detector
                .run(classifier_sdk::onnx::ort::inputs!["input:0" => tensor])
                .map_err(ort_err)?;
            let get = |name: &str| -> Result<Vec<f32>, OnnxError> {
                let (_, data) = out[name].try_extract_tensor::<f32>().map_err(ort_err)?;
                Ok(data.to_vec())
            };
            let mut logits = get("Identity:0")?;
            logits.extend(get("Identity_1:0")?);
            let mut reg = get("Identity_2:0")?;
            reg.extend(get("Identity_3:0")?);
            let s = DETECTOR_SIZE as f32;
            let mut candidates = Vec::new();
            for (i, &logit) in logits.iter().enumerate().take(self.anchors.len()) {
                let score = sigmoid(logit);
                if score < self.threshold {
                    continue;
                }
                let r = &reg[i * 16..i * 16 + 16];
                let (ax, ay) = self.anchors[i];
                let (cx, cy, bw, bh) = (ax + r[0] / s, ay + r[1] / s, r[2] / s, r[3] / s);
                let (x0, y0) = lb.to_frame(cx - bw / 2.0, cy - bh / 2.0, DETECTOR_SIZE);
                let (x1, y1) = lb.to_frame(cx + bw / 2.0, cy + bh / 2.0, DETECTOR_SIZE);
                let mut g = [0.0f32; 16];
                g[..4].copy_from_slice(&[x0, y0, x1, y1]);
                // Six keypoints, offsets from the anchor like the box centre.
                for k in 0..6 {
                    let (kx, ky) =
                        lb.to_frame(ax + r[4 + 2 * k] / s, ay + r[5 + 2 * k] / s, DETECTOR_SIZE);
                    g[4 + 2 * k] = kx;
                    g[5 + 2 * k] = ky;
                }
                candidates.push((g, score));
            }
            weighted_nms(candidates, 0.3)
        };
        times.detect_ms = t.elapsed().as_secs_f64() * 1e3;
        Ok(boxes)
    }

    /// The emotion net on prepared crops: N×64×64 grey values in [-1, 1] (as
    /// `classifier_sdk::onnx::gray_crop` makes them), one call; probabilities in [`LABELS`] order.
    pub fn emotions(&mut self, crops: &[f32]) -> Result<Vec<[f32; 7]>, OnnxError> {
        let n = crops.len() / (64 * 64);
        if n == 0 || crops.len() != n * 64 * 64 {
            return Err(OnnxError::Ort(format!(
                "{} values are not a whole number of 64x64 crops",
                crops.len()
            )));
        }
        let tensor = TensorRef::from_array_view(([n, 64usize, 64, 1], crops)).map_err(ort_err)?;
        let out = self
            .emotion
            .run(classifier_sdk::onnx::ort::inputs![self.emotion_io.0.as_str() => tensor])
            .map_err(ort_err)?;
        let (_, probs) = out
            .get(&self.emotion_io.1)
            .ok_or_else(|| OnnxError::Ort("the emotion net gave no output".into()))?
            .try_extract_tensor::<f32>()
            .map_err(ort_err)?;
        if probs.len() < n * 7 {
            return Err(OnnxError::Ort(
                "the emotion net gave too few outputs".into(),
            ));
        }
        Ok((0..n)
            .map(|i| std::array::from_fn(|k| probs[i * 7 + k]))
            .collect())
    }

    /// The emotion net on each box's grey crop (one batch).
    fn classify(
        &mut self,
        rgb: &[u8],
        w: usize,
        h: usize,
        boxes: &[([f32; 16], f32)],
        times: &mut StageTimes,
    ) -> Result<Vec<Face>, OnnxError> {
        let t = std::time::Instant::now();
        let mut faces = Vec::with_capacity(boxes.len());
        if !boxes.is_empty() {
            let mut batch = Vec::with_capacity(boxes.len() * 64 * 64);
            for (b, _) in boxes {
                let (cx, cy) = ((b[0] + b[2]) / 2.0, (b[1] + b[3]) / 2.0);
                let side = (b[2] - b[0]).max(b[3] - b[1]) * (1.0 + 2.0 * self.margin);
                batch.extend(gray_crop(rgb, w, h, (cx, cy), side, 64));
            }
            let probs = self.emotions(&batch)?;
            for (i, (b, score)) in boxes.iter().enumerate() {
                let p = &probs[i];
                let labels = LABELS
                    .iter()
                    .zip(p)
                    .map(|(l, v)| ((*l).to_owned(), *v))
                    .collect();
                let clamp = |v: f32, max: usize| v.clamp(0.0, max as f32);
                let keypoints: [[f32; 2]; 6] =
                    std::array::from_fn(|k| [b[4 + 2 * k], b[5 + 2 * k]]);
                faces.push(Face {
                    attentive: frontal(&keypoints),
                    keypoints,
                    bbox: [
                        clamp(b[0], w),
                        clamp(b[1], h),
                        clamp(b[2], w),
                        clamp(b[3], h),
                    ],
                    score: *score,
                    labels,
                });
            }
        }
        times.classify_ms = t.elapsed().as_secs_f64() * 1e3;
        Ok(faces)
    }
}

/// Per-participant exponential smoothing of the dominant face's scores.
#[derive(Debug, Default)]
pub struct Smoother {
    alpha: f32,
    state: HashMap<String, [f32; 7]>,
}

impl Smoother {
    /// `alpha` = weight of the newest result (1 = no smoothing).
    pub fn new(alpha: f32) -> Self {
        Smoother {
            alpha: alpha.clamp(0.01, 1.0),
            state: HashMap::new(),
        }
    }

    /// Blends `scores` into the participant's running scores; returns the blended ones.
    pub fn update(&mut self, who: &str, scores: [f32; 7]) -> [f32; 7] {
        let a = self.alpha;
        let entry = self.state.entry(who.to_owned()).or_insert(scores);
        for i in 0..7 {
            entry[i] = a * scores[i] + (1.0 - a) * entry[i];
        }
        *entry
    }
}

/// The dominant face: the largest box.
pub fn dominant(faces: &[Face]) -> Option<usize> {
    faces
        .iter()
        .enumerate()
        .max_by(|a, b| {
            let area = |f: &Face| (f.bbox[2] - f.bbox[0]) * (f.bbox[3] - f.bbox[1]);
            area(a.1)
                .partial_cmp(&area(b.1))
                .unwrap_or(std::cmp::Ordering::Equal)
        })
        .map(|(i, _)| i)
}

/// What the worker's outputs are, for the daemon's processing policy: the seven emotion labels and
/// `extras.faces` (each face carries its emotions) infer emotion; whether a face is visible
/// (`no_face`, `dominant`, `detected`), whether it faces the camera (`attentive`, from the head's
/// keypoints) and the stage timings are observable measures. Under `--policy expressions` only the
/// latter leave the daemon.
pub fn output_declaration() -> classifier_sdk::OutputDeclaration {
    let mut emotion: Vec<String> = LABELS.iter().map(|l| (*l).to_owned()).collect();
    emotion.push("faces".into());
    classifier_sdk::OutputDeclaration {
        emotion,
        expression: ["no_face", "dominant", "detected", "attentive", "stages_ms"]
            .iter()
            .map(|s| (*s).to_owned())
            .collect(),
    }
}

/// The worker's classifier: the dominant face's (optionally smoothed) emotions as labels, every face
/// with its box, score and emotions in `extras.faces`; no face is a result (`extras.no_face`), not an
/// error.
pub struct FerClassifier {
    pipeline: FerPipeline,
    smoother: Smoother,
    spec: classifier_sdk::ModelSpec,
    /// Detect-then-track per participant (None: the detector on every frame).
    tracking: Option<track::TrackerConfig>,
    /// Trackers by participant, with the capture time of their last frame (bounded: the least
    /// recently seen goes first). Shared by the model instances of one worker process (see
    /// [`FerClassifier::with_tracking`]); a participant's chunks spread over several processes
    /// show as sequence gaps there, and those fall back to detection (track::DetectReason::Gap).
    trackers: SharedTrackers,
}

/// Trackers shared by a worker process's model instances.
pub type SharedTrackers = std::sync::Arc<std::sync::Mutex<HashMap<String, (track::Tracker, f64)>>>;

/// Participants tracked per worker instance, at most.
pub const MAX_TRACKED_PARTICIPANTS: usize = 512;

impl FerClassifier {
    /// A classifier serving `spec` (RGB24 frames), smoothing with `alpha` (1 = off).
    pub fn new(pipeline: FerPipeline, spec: classifier_sdk::ModelSpec, alpha: f32) -> Self {
        FerClassifier {
            pipeline,
            smoother: Smoother::new(alpha),
            spec,
            tracking: None,
            trackers: SharedTrackers::default(),
        }
    }

    /// Detects every `cfg.detect_interval` frames of a participant and tracks in between, with
    /// trackers in `trackers` (give every instance of one process the same: a participant's
    /// chunks go to whichever instance is free).
    pub fn with_tracking(mut self, cfg: track::TrackerConfig, trackers: SharedTrackers) -> Self {
        self.tracking = Some(cfg);
        self.trackers = trackers;
        self
    }
}

impl classifier_sdk::Classifier for FerClassifier {
    fn spec(&self) -> classifier_sdk::ModelSpec {
        self.spec.clone()
    }

    fn predict(
        &mut self,
        chunk: &classifier_sdk::Chunk<'_>,
    ) -> Result<classifier_sdk::Prediction, classifier_sdk::ClassifierError> {
        use classifier_sdk::{ClassifierError, Data, PixelFormat, Prediction};
        let Data::Video(f) = &chunk.data else {
            return Err(ClassifierError::Unsupported);
        };
        if f.format != PixelFormat::Rgb24 {
            return Err(ClassifierError::Unsupported);
        }
        let (w, h) = (f.width as usize, f.height as usize);
        let (faces, times, detected) = match self.tracking {
            None => {
                let (faces, times) = self
                    .pipeline
                    .analyze(f.pixels, w, h)
                    .map_err(|e| ClassifierError::Failed(e.to_string()))?;
                (faces, times, true)
            }
            Some(cfg) => {
                let who = format!("{}/{}", chunk.meta.room, chunk.meta.participant);
                let at_ms = chunk.meta.capture_us as f64 / 1e3;
                // Taken out while in use: the daemon sends one chunk per participant at a time
                // (max_in_flight 1), and another instance finding none starts afresh (detects).
                let mut tracker = {
                    let mut map = self.trackers.lock().unwrap_or_else(|e| e.into_inner());
                    match map.remove(&who) {
                        Some((t, _)) => t,
                        None => {
                            if map.len() >= MAX_TRACKED_PARTICIPANTS {
                                let oldest = map
                                    .iter()
                                    .min_by(|a, b| a.1 .1.total_cmp(&b.1 .1))
                                    .map(|(k, _)| k.clone());
                                if let Some(k) = oldest {
                                    map.remove(&k);
                                }
                            }
                            track::Tracker::new(cfg)
                        }
                    }
                };
                let out = self
                    .pipeline
                    .analyze_tracked(&mut tracker, f.pixels, w, h, at_ms, Some(chunk.meta.seq))
                    .map_err(|e| ClassifierError::Failed(e.to_string()));
                self.trackers
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(who, (tracker, at_ms));
                out?
            }
        };
        let main = dominant(&faces);
        let mut prediction = Prediction::default();
        if let Some(i) = main {
            let mut scores = [0.0f32; 7];
            for (k, l) in LABELS.iter().enumerate() {
                scores[k] = faces[i].labels[*l];
            }
            let who = format!("{}/{}", chunk.meta.room, chunk.meta.participant);
            let smoothed = self.smoother.update(&who, scores);
            prediction =
                Prediction::scores(LABELS.iter().zip(smoothed).map(|(l, v)| (*l, f64::from(v))));
        }
        let attentive = main.map(|i| faces[i].attentive);
        Ok(prediction.with_extras(serde_json::json!({
            "faces": faces, "dominant": main, "no_face": faces.is_empty(), "stages_ms": times,
            "attentive": attentive, "detected": detected,
        })))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_output_is_declared_once_and_emotions_are_not_expressions() {
        let d = output_declaration();
        d.validate().unwrap();
        for l in LABELS {
            assert!(d.emotion.iter().any(|e| e == l) && !d.is_expression(l));
        }
        assert!(!d.is_expression("faces"), "each face carries its emotions");
        assert!(d.is_expression("attentive") && d.is_expression("no_face"));
    }

    #[test]
    fn anchors_are_896_in_output_order() {
        let a = anchors();
        assert_eq!(a.len(), 896);
        assert_eq!(a[0], (0.5 / 16.0, 0.5 / 16.0));
        assert_eq!(a[2], (1.5 / 16.0, 0.5 / 16.0));
        assert_eq!(a[512], (0.5 / 8.0, 0.5 / 8.0));
    }

    #[test]
    fn nms_merges_overlaps_and_keeps_separate_faces() {
        let out = weighted_nms(
            vec![
                ([0.0, 0.0, 10.0, 10.0], 0.9),
                ([1.0, 1.0, 11.0, 11.0], 0.8),
                ([50.0, 50.0, 60.0, 60.0], 0.7),
            ],
            0.3,
        );
        assert_eq!(out.len(), 2);
        assert_eq!(out[0].1, 0.9);
        assert!(
            out[0].0[0] > 0.0 && out[0].0[0] < 1.0,
            "weighted mean: {:?}",
            out[0].0
        );
    }

    #[test]
    fn smoothing_converges() {
        let mut s = Smoother::new(0.5);
        let mut happy = [0.0; 7];
        happy[3] = 1.0;
        let mut sad = [0.0; 7];
        sad[4] = 1.0;
        s.update("p", happy);
        let v = s.update("p", sad);
        assert!((v[3] - 0.5).abs() < 1e-6 && (v[4] - 0.5).abs() < 1e-6);
    }
}
