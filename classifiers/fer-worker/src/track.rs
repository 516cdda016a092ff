//! Detect, then track: the face detector runs every `detect_interval` frames of a participant, and
//! in between each face is followed by matching its appearance at detection time (a small
//! normalised grey template) over a search window around its last place, at three scales. Pure: no
//! model, no clock (capture times passed in).
//!
//! Why template matching: between two detections a webcam face moves a few pixels and barely
//! changes size; a 16×16 normalised cross-correlation over ±25 % of the face's size, then at
//! three scales, costs ~40 patches (~0.1 ms), against 1.9 ms for BlazeFace and its letterbox, and fails loudly
//! (low correlation) when the face turns away, is covered or leaves, which is when the detector
//! must run again anyway. Keypoint-based tracking would need the keypoints re-estimated, i.e. the
//! detector. The template is the one taken at the last detection, never updated from tracked
//! frames, so errors cannot accumulate.
//!
//! The detector runs early when: no face is known (a participant with no face in view is
//! re-checked every frame, so a face that enters is found at once), a tracked face's correlation
//! falls below `min_similarity` or its box leaves the frame, the picture changes as a whole (scene
//! change: a 16×12 thumbnail differs by more than `scene_change`), or frames of this participant
//! stopped for `max_gap_ms`, or a chunk's sequence number is not the one after the last seen: the
//! frames in between went to another worker process of the queue group (or were dropped), so what
//! is tracked here is older than it looks. Within one process the trackers are shared by its
//! model instances (`FerClassifier`), so `--concurrency` does not cause gaps.

/// Tuning of the tracker.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TrackerConfig {
    /// Frames between two detections (1 = detect every frame).
    pub detect_interval: u32,
    /// Correlation below which a tracked face counts as lost (−1…1).
    pub min_similarity: f32,
    /// A gap between two frames of the participant longer than this means: detect.
    pub max_gap_ms: f64,
    /// Mean absolute thumbnail difference (0…1) from which the scene counts as changed.
    pub scene_change: f32,
}

impl Default for TrackerConfig {
    fn default() -> Self {
        TrackerConfig {
            detect_interval: 5,
            min_similarity: 0.6,
            max_gap_ms: 600.0,
            scene_change: 0.08,
        }
    }
}

/// Side of the grey template, pixels.
const TPL: usize = 16;
/// Thumbnail for scene changes.
const THUMB_W: usize = 16;
const THUMB_H: usize = 12;

/// An RGB24 frame.
#[derive(Clone, Copy)]
pub struct Rgb<'a> {
    /// Pixels, row-major, 3 bytes each.
    pub pixels: &'a [u8],
    /// Width.
    pub w: usize,
    /// Height.
    pub h: usize,
}

impl Rgb<'_> {
    /// Grey value (0…1) at the nearest pixel, clamped to the frame.
    fn grey(&self, x: f32, y: f32) -> f32 {
        let xi = (x.round().max(0.0) as usize).min(self.w.saturating_sub(1));
        let yi = (y.round().max(0.0) as usize).min(self.h.saturating_sub(1));
        let i = (yi * self.w + xi) * 3;
        match self.pixels.get(i..i + 3) {
            Some(p) => {
                (77 * u32::from(p[0]) + 150 * u32::from(p[1]) + 29 * u32::from(p[2])) as f32
                    / (256.0 * 255.0)
            }
            None => 0.0,
        }
    }

    fn thumbnail(&self) -> [f32; THUMB_W * THUMB_H] {
        let mut out = [0f32; THUMB_W * THUMB_H];
        for j in 0..THUMB_H {
            for i in 0..THUMB_W {
                out[j * THUMB_W + i] = self.grey(
                    (i as f32 + 0.5) * self.w as f32 / THUMB_W as f32,
                    (j as f32 + 0.5) * self.h as f32 / THUMB_H as f32,
                );
            }
        }
        out
    }
}

/// Grey values of a square region of the frame at half a template pixel per cell (each cell the
/// mean of four samples): built once per face and frame, so that the ~90 patches the search
/// compares are read from a small array instead of converting RGB pixels each time.
struct Grid {
    x0: f32,
    y0: f32,
    cell: f32,
    n: usize,
    v: Vec<f32>,
}

impl Grid {
    /// The region of half-width `reach` around (cx, cy), for templates of side `side`.
    fn new(frame: Rgb<'_>, cx: f32, cy: f32, side: f32, reach: f32) -> Grid {
        let cell = side / TPL as f32 / 2.0;
        let n = ((2.0 * reach / cell).ceil() as usize + 1).min(512);
        let (x0, y0) = (cx - reach, cy - reach);
        let q = cell / 4.0;
        let mut v = Vec::with_capacity(n * n);
        for j in 0..n {
            for i in 0..n {
                let (x, y) = (x0 + (i as f32 + 0.5) * cell, y0 + (j as f32 + 0.5) * cell);
                v.push(
                    (frame.grey(x - q, y - q)
                        + frame.grey(x + q, y - q)
                        + frame.grey(x - q, y + q)
                        + frame.grey(x + q, y + q))
                        / 4.0,
                );
            }
        }
        Grid { x0, y0, cell, n, v }
    }

    fn at(&self, x: f32, y: f32) -> f32 {
        let i = (((x - self.x0) / self.cell) as isize).clamp(0, self.n as isize - 1) as usize;
        let j = (((y - self.y0) / self.cell) as isize).clamp(0, self.n as isize - 1) as usize;
        self.v[j * self.n + i]
    }

    /// The normalised `TPL`×`TPL` patch of the square of side `side` centred on (cx, cy): each
    /// template pixel the mean of the four grid cells it covers.
    fn patch(&self, cx: f32, cy: f32, side: f32) -> [f32; TPL * TPL] {
        let mut out = [0f32; TPL * TPL];
        let step = side / TPL as f32;
        let (x0, y0) = (cx - side / 2.0 + step / 2.0, cy - side / 2.0 + step / 2.0);
        let q = step / 4.0;
        let mut sum = 0.0;
        for j in 0..TPL {
            let y = y0 + j as f32 * step;
            for i in 0..TPL {
                let x = x0 + i as f32 * step;
                let v = (self.at(x - q, y - q)
                    + self.at(x + q, y - q)
                    + self.at(x - q, y + q)
                    + self.at(x + q, y + q))
                    / 4.0;
                out[j * TPL + i] = v;
                sum += v;
            }
        }
        normalise(&mut out, sum);
        out
    }
}

fn normalise(p: &mut [f32; TPL * TPL], sum: f32) {
    let mean = sum / (TPL * TPL) as f32;
    let mut norm = 0.0;
    for v in p.iter_mut() {
        *v -= mean;
        norm += *v * *v;
    }
    let norm = norm.sqrt();
    if norm > 1e-6 {
        for v in p.iter_mut() {
            *v /= norm;
        }
    }
}

/// How far the search reaches from a face's centre, in face sides: the largest patch (scale
/// 1.075) at the largest offset (0.3 + refinement).
const REACH: f32 = 0.5 * 1.075 + 0.35;

fn dot(a: &[f32; TPL * TPL], b: &[f32; TPL * TPL]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// A face being followed: its geometry (box `[x0, y0, x1, y1]` then six keypoints, frame pixels),
/// detection score, and its template.
#[derive(Debug, Clone)]
struct Tracked {
    geom: [f32; 16],
    score: f32,
    template: [f32; TPL * TPL],
}

/// What to do with a frame.
#[derive(Debug, Clone, PartialEq)]
pub enum Step {
    /// Run the detector (and hand its faces to [`Tracker::detected`]).
    Detect(DetectReason),
    /// The faces, followed: (geometry, detection score, correlation).
    Tracked(Vec<([f32; 16], f32, f32)>),
}

/// Why the detector runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DetectReason {
    /// Its turn (every `detect_interval` frames).
    Interval,
    /// No face known: look every frame.
    NoFace,
    /// A tracked face was lost (low correlation, or out of the frame).
    Lost,
    /// The picture changed as a whole.
    SceneChange,
    /// Frames of this participant stopped for a while (or this is the first).
    Gap,
}

/// One participant's tracker (bounded: at most [`MAX_FACES`] faces).
#[derive(Debug, Clone)]
pub struct Tracker {
    cfg: TrackerConfig,
    faces: Vec<Tracked>,
    since_detect: u32,
    last_ms: Option<f64>,
    last_seq: Option<u64>,
    thumb: [f32; THUMB_W * THUMB_H],
}

/// Faces followed per participant, at most.
pub const MAX_FACES: usize = 8;

impl Tracker {
    /// A tracker that detects on its first frame.
    pub fn new(cfg: TrackerConfig) -> Tracker {
        Tracker {
            cfg,
            faces: Vec::new(),
            since_detect: 0,
            last_ms: None,
            last_seq: None,
            thumb: [0.0; THUMB_W * THUMB_H],
        }
    }

    /// Decides for the frame captured at `at_ms` (chunk sequence number `seq`, if known):
    /// detect, or the tracked faces.
    pub fn step(&mut self, frame: Rgb<'_>, at_ms: f64, seq: Option<u64>) -> Step {
        let time_gap = self
            .last_ms
            .is_none_or(|t| !(0.0..=self.cfg.max_gap_ms).contains(&(at_ms - t)));
        let seq_gap = match (self.last_seq, seq) {
            (Some(last), Some(s)) => s != last.wrapping_add(1),
            _ => false,
        };
        let gap = time_gap || seq_gap;
        self.last_ms = Some(at_ms);
        self.last_seq = seq;
        if gap {
            return Step::Detect(DetectReason::Gap);
        }
        if self.faces.is_empty() {
            return Step::Detect(DetectReason::NoFace);
        }
        if self.since_detect + 1 >= self.cfg.detect_interval.max(1) {
            return Step::Detect(DetectReason::Interval);
        }
        let thumb = frame.thumbnail();
        let change = thumb
            .iter()
            .zip(&self.thumb)
            .map(|(a, b)| (a - b).abs())
            .sum::<f32>()
            / thumb.len() as f32;
        if change > self.cfg.scene_change {
            return Step::Detect(DetectReason::SceneChange);
        }
        let mut out = Vec::with_capacity(self.faces.len());
        for f in &self.faces {
            match follow(frame, f) {
                Some((geom, sim)) if sim >= self.cfg.min_similarity => {
                    out.push((geom, f.score, sim))
                }
                _ => return Step::Detect(DetectReason::Lost),
            }
        }
        self.since_detect += 1;
        for (f, (geom, _, _)) in self.faces.iter_mut().zip(&out) {
            f.geom = *geom;
        }
        Step::Tracked(out)
    }

    /// The detector's faces for the frame just stepped: they become the templates.
    pub fn detected(&mut self, frame: Rgb<'_>, faces: &[([f32; 16], f32)]) {
        self.faces = faces
            .iter()
            .take(MAX_FACES)
            .map(|(geom, score)| {
                let (cx, cy, side) = square(geom);
                let grid = Grid::new(frame, cx, cy, side, side * 0.55);
                Tracked {
                    geom: *geom,
                    score: *score,
                    template: grid.patch(cx, cy, side),
                }
            })
            .collect();
        self.since_detect = 0;
        self.thumb = frame.thumbnail();
    }
}

/// Centre and side of the square around a box.
fn square(g: &[f32; 16]) -> (f32, f32, f32) {
    (
        (g[0] + g[2]) / 2.0,
        (g[1] + g[3]) / 2.0,
        (g[2] - g[0]).max(g[3] - g[1]).max(1.0),
    )
}

/// The face's best match around its last place: coarse grid over ±30 % of its size at three
/// scales, then a one-template-pixel refinement. `None` when it left the frame.
fn follow(frame: Rgb<'_>, f: &Tracked) -> Option<([f32; 16], f32)> {
    let (cx, cy, side) = square(&f.geom);
    let px = side / TPL as f32;
    let grid = Grid::new(frame, cx, cy, side, side * REACH);
    // Where it went (a grid over ±4 template pixels at its size), then whether it grew or
    // shrank there, then the refinements: ~40 patches.
    let mut best = (f32::MIN, 0.0f32, 0.0f32, 1.0f32);
    for dy in (-4..=4).step_by(2) {
        for dx in (-4..=4).step_by(2) {
            let (ox, oy) = (dx as f32 * px, dy as f32 * px);
            let sim = dot(&f.template, &grid.patch(cx + ox, cy + oy, side));
            if sim > best.0 {
                best = (sim, ox, oy, 1.0);
            }
        }
    }
    let (_, bx, by, _) = best;
    for scale in [0.93f32, 1.075] {
        let sim = dot(&f.template, &grid.patch(cx + bx, cy + by, side * scale));
        if sim > best.0 {
            best = (sim, bx, by, scale);
        }
    }
    // Refine: one template pixel, then half of one, around the best.
    for frac in [1.0f32, 0.5] {
        let (_, bx, by, bs) = best;
        for dy in -1..=1 {
            for dx in -1..=1 {
                if dx == 0 && dy == 0 {
                    continue;
                }
                let (ox, oy) = (bx + dx as f32 * px * frac, by + dy as f32 * px * frac);
                let sim = dot(&f.template, &grid.patch(cx + ox, cy + oy, side * bs));
                if sim > best.0 {
                    best = (sim, ox, oy, bs);
                }
            }
        }
    }
    let (sim, ox, oy, s) = best;
    let (ncx, ncy) = (cx + ox, cy + oy);
    let mut g = f.geom;
    for k in 0..8 {
        g[2 * k] = ncx + (g[2 * k] - cx) * s;
        g[2 * k + 1] = ncy + (g[2 * k + 1] - cy) * s;
    }
    // Mostly out of the frame: the face left.
    let (w, h) = (frame.w as f32, frame.h as f32);
    let inside_x = (g[2].min(w) - g[0].max(0.0)).max(0.0) / (g[2] - g[0]).max(1.0);
    let inside_y = (g[3].min(h) - g[1].max(0.0)).max(0.0) / (g[3] - g[1]).max(1.0);
    if inside_x * inside_y < 0.6 {
        return None;
    }
    Some((g, sim))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A 320×240 frame with a textured square "face" of side `side` centred at (cx, cy).
    fn frame(cx: f32, cy: f32, side: f32) -> Vec<u8> {
        let (w, h) = (320usize, 240usize);
        let mut px = vec![90u8; w * h * 3];
        for y in 0..h {
            for x in 0..w {
                let (u, v) = ((x as f32 - cx) / side, (y as f32 - cy) / side);
                if u.abs() < 0.5 && v.abs() < 0.5 {
                    // Eyes, a nose, a mouth: structure to correlate on.
                    let dark = ((u + 0.2).powi(2) + (v + 0.15).powi(2) < 0.01)
                        || ((u - 0.2).powi(2) + (v + 0.15).powi(2) < 0.01)
                        || (u.abs() < 0.05 && (-0.05..0.1).contains(&v))
                        || (u.abs() < 0.25 && (0.22..0.3).contains(&v));
                    let val = if dark { 40 } else { 200 - (v * 60.0) as i32 } as u8;
                    px[(y * w + x) * 3..(y * w + x) * 3 + 3].copy_from_slice(&[val, val, val]);
                }
            }
        }
        px
    }

    fn geom(cx: f32, cy: f32, side: f32) -> [f32; 16] {
        let mut g = [0f32; 16];
        g[..4].copy_from_slice(&[
            cx - side / 2.0,
            cy - side / 2.0,
            cx + side / 2.0,
            cy + side / 2.0,
        ]);
        g
    }

    fn rgb(p: &[u8]) -> Rgb<'_> {
        Rgb {
            pixels: p,
            w: 320,
            h: 240,
        }
    }

    #[test]
    fn follows_a_moving_face_between_detections_and_detects_on_interval() {
        let mut t = Tracker::new(TrackerConfig::default());
        let f0 = frame(160.0, 120.0, 60.0);
        assert_eq!(t.step(rgb(&f0), 0.0, None), Step::Detect(DetectReason::Gap));
        t.detected(rgb(&f0), &[(geom(160.0, 120.0, 60.0), 0.9)]);
        for i in 1..5 {
            let (cx, cy) = (160.0 + 3.0 * i as f32, 120.0 - 2.0 * i as f32);
            let f = frame(cx, cy, 60.0);
            match t.step(rgb(&f), i as f64 * 66.0, None) {
                Step::Tracked(faces) => {
                    let g = faces[0].0;
                    let (tx, ty) = ((g[0] + g[2]) / 2.0, (g[1] + g[3]) / 2.0);
                    assert!(
                        (tx - cx).abs() < 3.0 && (ty - cy).abs() < 3.0,
                        "{tx},{ty} vs {cx},{cy}"
                    );
                    assert!(faces[0].2 > 0.8, "similarity {}", faces[0].2);
                }
                other => panic!("frame {i}: {other:?}"),
            }
        }
        let f = frame(175.0, 110.0, 60.0);
        assert_eq!(
            t.step(rgb(&f), 5.0 * 66.0, None),
            Step::Detect(DetectReason::Interval)
        );
    }

    #[test]
    fn a_face_that_leaves_or_a_gap_or_no_face_means_detect() {
        let mut t = Tracker::new(TrackerConfig::default());
        let f0 = frame(160.0, 120.0, 60.0);
        t.step(rgb(&f0), 0.0, None);
        t.detected(rgb(&f0), &[(geom(160.0, 120.0, 60.0), 0.9)]);
        // The face is gone (empty background): correlation collapses.
        let empty = vec![90u8; 320 * 240 * 3];
        assert!(matches!(
            t.step(rgb(&empty), 66.0, None),
            Step::Detect(DetectReason::Lost | DetectReason::SceneChange)
        ));
        t.detected(rgb(&empty), &[]);
        assert_eq!(
            t.step(rgb(&empty), 132.0, None),
            Step::Detect(DetectReason::NoFace)
        );
        t.detected(rgb(&f0), &[(geom(160.0, 120.0, 60.0), 0.9)]);
        assert_eq!(
            t.step(rgb(&f0), 2_000.0, None),
            Step::Detect(DetectReason::Gap)
        );
        // Frames out of order (another instance took some): detect too.
        t.detected(rgb(&f0), &[(geom(160.0, 120.0, 60.0), 0.9)]);
        assert_eq!(
            t.step(rgb(&f0), 1_000.0, None),
            Step::Detect(DetectReason::Gap)
        );
    }

    #[test]
    fn a_skipped_sequence_number_means_detect() {
        let mut t = Tracker::new(TrackerConfig::default());
        let f0 = frame(160.0, 120.0, 60.0);
        t.step(rgb(&f0), 0.0, Some(7));
        t.detected(rgb(&f0), &[(geom(160.0, 120.0, 60.0), 0.9)]);
        assert!(matches!(t.step(rgb(&f0), 66.0, Some(8)), Step::Tracked(_)));
        // Chunk 9 went to another worker process.
        assert_eq!(
            t.step(rgb(&f0), 200.0, Some(10)),
            Step::Detect(DetectReason::Gap)
        );
    }

    #[test]
    fn follows_a_zoom() {
        let mut t = Tracker::new(TrackerConfig::default());
        let f0 = frame(160.0, 120.0, 60.0);
        t.step(rgb(&f0), 0.0, None);
        t.detected(rgb(&f0), &[(geom(160.0, 120.0, 60.0), 0.9)]);
        let f1 = frame(160.0, 120.0, 64.0);
        let Step::Tracked(faces) = t.step(rgb(&f1), 66.0, None) else {
            panic!("tracked")
        };
        let side = faces[0].0[2] - faces[0].0[0];
        assert!((side - 64.0).abs() < 4.0, "side {side}");
    }
}
