//! ONNX Runtime helpers for model authors (feature `onnx`): one environment per process with
//! telemetry off, sessions from checksummed model files, and the image and score helpers emotion
//! models need.
//!
//! The runtime library is not linked: `scripts/setup` extracts `libonnxruntime.so` from PyPI's
//! `onnxruntime` wheel into `vendor/onnxruntime/`. It is found, in this order: `$ORT_DYLIB_PATH`
//! (only that, when set); next to the executable (and its `../lib`); a `vendor/onnxruntime/` in a
//! folder above the executable (a workspace's `target/release/fer-worker` finds the workspace's);
//! this source tree's `vendor/onnxruntime/`; the system library path (`libonnxruntime.so.1`,
//! `libonnxruntime.so`, as `dlopen` resolves them). When none loads, the error names every path
//! tried and why each failed.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use sha2::{Digest, Sha256};

pub mod self_check;
pub use self_check::{cpu_kernel_flags, CheckOutcome, SelfCheck};

pub use ort;
pub use ort::session::Session;

/// ONNX Runtime problems, with what to do about them.
#[derive(Debug, thiserror::Error)]
pub enum OnnxError {
    /// The runtime library could not be loaded.
    #[error(
        "cannot load ONNX Runtime; tried:\n{tried}\nSet ORT_DYLIB_PATH to libonnxruntime.so.1.31.1, put it next \
         to the binary, or run scripts/setup (it puts the library in vendor/onnxruntime/)"
    )]
    Runtime {
        /// Every path tried, one per line, with why it failed.
        tried: String,
    },
    /// A model file is missing or unreadable.
    #[error("cannot read model {0}: {1}")]
    Read(PathBuf, std::io::Error),
    /// A model file is not the expected one.
    #[error("model {path} has sha256 {actual}, expected {expected}: a different or corrupt file")]
    Checksum {
        /// File.
        path: PathBuf,
        /// Found.
        actual: String,
        /// Expected.
        expected: String,
    },
    /// The runtime refused the model or an inference.
    #[error("ONNX Runtime: {0}")]
    Ort(String),
    /// A shipped model has no usable self-check file beside it.
    #[error("model {path}: its self-check {check} cannot be used: {problem} (every shipped model has one; models/tools/make_checks.py writes them)")]
    CheckFile {
        /// Model file.
        path: PathBuf,
        /// Check file.
        check: PathBuf,
        /// Why it cannot be used.
        problem: String,
    },
    /// The model computes wrong answers on this CPU (its numeric self-check failed).
    #[error(
        "model {path} failed its numeric self-check on this CPU: output {output} is off by {error} \
         (relative L2) where {tolerance} is allowed; reference: {reference}. CPU: {cpu}. \
         This model would compute wrong answers here: use its fp32 version (for the face detector, \
         `--detector-precision fp32`), or a build of ONNX Runtime that is right on this CPU, and \
         report the CPU and the error"
    )]
    SelfCheck {
        /// Model file.
        path: PathBuf,
        /// The output furthest off.
        output: String,
        /// Its relative L2 error.
        error: f32,
        /// The largest allowed.
        tolerance: f32,
        /// Where the reference outputs came from.
        reference: String,
        /// The CPU and its kernel-relevant flags.
        cpu: String,
    },
}

fn ort_err(e: impl std::fmt::Display) -> OnnxError {
    OnnxError::Ort(e.to_string())
}

static ENVIRONMENT: OnceLock<Result<ort::environment::Environment, String>> = OnceLock::new();

/// Where an ONNX Runtime library may be, in the order tried.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RuntimeCandidate {
    /// A file path (tried only if it exists).
    File(PathBuf),
    /// A bare library name, resolved by the dynamic loader (system library path).
    System(String),
}

impl std::fmt::Display for RuntimeCandidate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RuntimeCandidate::File(p) => write!(f, "{}", p.display()),
            RuntimeCandidate::System(n) => write!(f, "{n} (system library path)"),
        }
    }
}

/// The ONNX Runtime library files in `dir`, the project's pinned version first.
fn libraries_in(dir: &Path) -> Vec<PathBuf> {
    let mut found: Vec<PathBuf> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("libonnxruntime.so"))
        })
        .collect();
    // Pinned version, then the longest (most specific) names, newest versions first.
    found.sort_by_key(|p| {
        let name = p
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default()
            .to_owned();
        (!name.ends_with(".so.1.31.1"), std::cmp::Reverse(name))
    });
    found
}

/// The candidates, in order, for an explicit path (`ORT_DYLIB_PATH`), the running executable and
/// this source tree. Pure: the file system is only listed, nothing is loaded.
pub fn runtime_candidates(
    explicit: Option<&std::ffi::OsStr>,
    exe: Option<&Path>,
    source_tree: &Path,
) -> Vec<RuntimeCandidate> {
    if let Some(p) = explicit.filter(|p| !p.is_empty()) {
        return vec![RuntimeCandidate::File(PathBuf::from(p))];
    }
    let mut out = Vec::new();
    let push_dir = |dir: &Path, out: &mut Vec<RuntimeCandidate>| {
        let found = libraries_in(dir);
        if found.is_empty() {
            out.push(RuntimeCandidate::File(dir.join("libonnxruntime.so.1.31.1")));
        }
        out.extend(found.into_iter().map(RuntimeCandidate::File));
    };
    if let Some(bin_dir) = exe.and_then(Path::parent) {
        push_dir(bin_dir, &mut out);
        push_dir(&bin_dir.join("../lib"), &mut out);
        // target/release/fer-worker → the workspace's vendor/onnxruntime/.
        for ancestor in bin_dir.ancestors().skip(1).take(4) {
            let vendor = ancestor.join("vendor/onnxruntime");
            if vendor.is_dir() {
                push_dir(&vendor, &mut out);
                break;
            }
        }
    }
    push_dir(&source_tree.join("vendor/onnxruntime"), &mut out);
    out.push(RuntimeCandidate::System("libonnxruntime.so.1".into()));
    out.push(RuntimeCandidate::System("libonnxruntime.so".into()));
    let mut seen = std::collections::HashSet::new();
    out.retain(|c| match c {
        RuntimeCandidate::File(p) => seen.insert(p.canonicalize().unwrap_or_else(|_| p.clone())),
        RuntimeCandidate::System(n) => seen.insert(PathBuf::from(n)),
    });
    out
}

/// The first candidate that is an ONNX Runtime (a loadable library exporting `OrtGetApiBase`),
/// or every reason why not.
fn find_runtime(candidates: &[RuntimeCandidate]) -> Result<String, String> {
    let mut tried = Vec::new();
    for c in candidates {
        let name = match c {
            RuntimeCandidate::File(p) if !p.exists() => {
                tried.push(format!("  {c}: no such file"));
                continue;
            }
            RuntimeCandidate::File(p) => p.display().to_string(),
            RuntimeCandidate::System(n) => n.clone(),
        };
        // Probe before handing the path to ort, which keeps the first path it is given.
        // SAFETY: loading ONNX Runtime runs only its initialisers, as ort's own load would.
        match unsafe { libloading::Library::new(&name) } {
            Ok(lib) => {
                // SAFETY: only the symbol's presence is checked; it is not called.
                let exported =
                    unsafe { lib.get::<unsafe extern "C" fn()>(b"OrtGetApiBase\0") }.is_ok();
                if exported {
                    return Ok(name);
                }
                tried.push(format!("  {c}: not an ONNX Runtime (no OrtGetApiBase)"));
            }
            Err(e) => tried.push(format!("  {c}: {e}")),
        }
    }
    Err(tried.join("\n"))
}

/// The process's ONNX Runtime environment (loaded once; telemetry disabled).
pub fn environment() -> Result<&'static ort::environment::Environment, OnnxError> {
    ENVIRONMENT
        .get_or_init(|| {
            // Also read by the library itself: no device id file, no event queue on disk.
            if std::env::var_os("ORT_DISABLE_TELEMETRY").is_none() {
                // SAFETY: set once, before the library is loaded and before any thread reads it.
                unsafe { std::env::set_var("ORT_DISABLE_TELEMETRY", "1") };
            }
            let candidates = runtime_candidates(
                std::env::var_os("ORT_DYLIB_PATH").as_deref(),
                std::env::current_exe().ok().as_deref(),
                &Path::new(env!("CARGO_MANIFEST_DIR")).join(".."),
            );
            let path = find_runtime(&candidates)?;
            tracing::debug!(library = %path, "ONNX Runtime found");
            let builder = ort::init_from(&path).map_err(|e| format!("  {path}: {e}"))?;
            builder
                .with_name("kurento-tap")
                .with_telemetry(false)
                .build()
                .map_err(|e| format!("  {path}: {e}"))
        })
        .as_ref()
        .map_err(|tried| OnnxError::Runtime {
            tried: tried.clone(),
        })
}

/// The vendored models' folder: `$TAP_MODELS_DIR`, else the repository's `models/`.
pub fn models_dir() -> PathBuf {
    std::env::var_os("TAP_MODELS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../models"))
}

/// The sha256 of a file, hex.
pub fn sha256_hex(bytes: &[u8]) -> String {
    let digest = Sha256::digest(bytes);
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// Reads a model, checks its sha256 when `expected` is given, builds a session (one intra-op
/// thread: workers scale with concurrency, not threads per inference) and runs the model's numeric
/// self-check ([`SelfCheck`]): required for a shipped model (one with an expected sha256), run for
/// any other model that has a check file beside it. A model that fails it is refused
/// ([`OnnxError::SelfCheck`]): it would compute wrong answers on this CPU.
pub fn load(path: &Path, expected_sha256: Option<&str>) -> Result<Session, OnnxError> {
    let mut session = load_unchecked(path, expected_sha256)?;
    let check_path = SelfCheck::path_for(path);
    let check = match std::fs::read_to_string(&check_path) {
        Ok(text) => SelfCheck::parse(&text).map_err(|e| OnnxError::CheckFile {
            path: path.to_owned(),
            check: check_path.clone(),
            problem: e.to_string(),
        })?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && expected_sha256.is_none() => {
            return Ok(session)
        }
        Err(e) => {
            return Err(OnnxError::CheckFile {
                path: path.to_owned(),
                check: check_path,
                problem: e.to_string(),
            })
        }
    };
    let outcome = check.run(&mut session).map_err(ort_err)?;
    let (output, error) = outcome.worst();
    crate::metrics::record_model_check(&model_label(path), error);
    if !outcome.passed() {
        return Err(OnnxError::SelfCheck {
            path: path.to_owned(),
            output: output.to_owned(),
            error,
            tolerance: outcome.tolerance,
            reference: check.reference.clone(),
            cpu: cpu_kernel_flags(),
        });
    }
    tracing::debug!(model = %path.display(), error, tolerance = outcome.tolerance, "model self-check passed");
    Ok(session)
}

/// The model's file name, as metrics label it.
pub fn model_label(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// [`load`] without the numeric self-check (benchmarks, and tools that run the check themselves).
pub fn load_unchecked(path: &Path, expected_sha256: Option<&str>) -> Result<Session, OnnxError> {
    let bytes = std::fs::read(path).map_err(|e| OnnxError::Read(path.to_owned(), e))?;
    if let Some(expected) = expected_sha256 {
        let actual = sha256_hex(&bytes);
        if actual != expected {
            return Err(OnnxError::Checksum {
                path: path.to_owned(),
                actual,
                expected: expected.to_owned(),
            });
        }
    }
    let env = environment()?;
    Session::builder(env)
        .map_err(ort_err)?
        .with_optimization_level(ort::session::builder::GraphOptimizationLevel::Level3)
        .map_err(ort_err)?
        .with_intra_threads(1)
        .map_err(ort_err)?
        // An idle worker must cost nothing: no thread spinning while waiting for work.
        .with_intra_op_spinning(false)
        .map_err(ort_err)?
        .with_inter_op_spinning(false)
        .map_err(ort_err)?
        .commit_from_memory(&bytes)
        .map_err(ort_err)
}

/// Softmax in place.
pub fn softmax(v: &mut [f32]) {
    let max = v.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
    let mut sum = 0.0;
    for x in v.iter_mut() {
        *x = (*x - max).exp();
        sum += *x;
    }
    if sum > 0.0 {
        v.iter_mut().for_each(|x| *x /= sum);
    }
}

/// NHWC → NCHW for one image of `h`×`w`×`c` (for models that want channels first).
pub fn nhwc_to_nchw(data: &[f32], h: usize, w: usize, c: usize) -> Vec<f32> {
    let mut out = vec![0.0; data.len()];
    for y in 0..h {
        for x in 0..w {
            for ch in 0..c {
                out[(ch * h + y) * w + x] = data[(y * w + x) * c + ch];
            }
        }
    }
    out
}

/// Pairs labels with scores (extra scores or labels are ignored).
pub fn label_map(labels: &[&str], scores: &[f32]) -> std::collections::BTreeMap<String, f32> {
    labels
        .iter()
        .zip(scores)
        .map(|(l, s)| ((*l).to_owned(), *s))
        .collect()
}

/// Logistic function.
pub fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + (-x).exp())
}

/// Where a letterboxed square image sits in the original frame.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Letterbox {
    /// Original pixels per square pixel.
    pub scale: f32,
    /// Left padding, in original pixels.
    pub pad_x: f32,
    /// Top padding, in original pixels.
    pub pad_y: f32,
}

impl Letterbox {
    /// Maps a point in [0, 1] square coordinates back to frame pixels.
    pub fn to_frame(&self, x: f32, y: f32, size: usize) -> (f32, f32) {
        (
            x * size as f32 * self.scale - self.pad_x,
            y * size as f32 * self.scale - self.pad_y,
        )
    }
}

/// Bilinear sample of one RGB24 pixel channel at (x, y), clamped to the frame.
fn sample(rgb: &[u8], w: usize, h: usize, x: f32, y: f32, c: usize) -> f32 {
    let x = x.clamp(0.0, (w - 1) as f32);
    let y = y.clamp(0.0, (h - 1) as f32);
    let (x0, y0) = (x.floor() as usize, y.floor() as usize);
    let (x1, y1) = ((x0 + 1).min(w - 1), (y0 + 1).min(h - 1));
    let (fx, fy) = (x - x0 as f32, y - y0 as f32);
    let p = |xx: usize, yy: usize| f32::from(rgb[(yy * w + xx) * 3 + c]);
    let top = p(x0, y0) * (1.0 - fx) + p(x1, y0) * fx;
    let bottom = p(x0, y1) * (1.0 - fx) + p(x1, y1) * fx;
    top * (1.0 - fy) + bottom * fy
}

/// Letterboxes an RGB24 frame into a `size`×`size` NHWC float tensor in [-1, 1] (padding is black,
/// i.e. -1). Returns the tensor data and the mapping back to the frame.
pub fn letterbox_rgb(rgb: &[u8], w: usize, h: usize, size: usize) -> (Vec<f32>, Letterbox) {
    let side = w.max(h) as f32;
    let scale = side / size as f32;
    let pad_x = (side - w as f32) / 2.0;
    let pad_y = (side - h as f32) / 2.0;
    let mut out = vec![-1.0f32; size * size * 3];
    for yy in 0..size {
        for xx in 0..size {
            let fx = (xx as f32 + 0.5) * scale - 0.5 - pad_x;
            let fy = (yy as f32 + 0.5) * scale - 0.5 - pad_y;
            if fx < -0.5 || fy < -0.5 || fx > w as f32 - 0.5 || fy > h as f32 - 0.5 {
                continue;
            }
            for c in 0..3 {
                out[(yy * size + xx) * 3 + c] = sample(rgb, w, h, fx, fy, c) / 127.5 - 1.0;
            }
        }
    }
    (
        out,
        Letterbox {
            scale,
            pad_x,
            pad_y,
        },
    )
}

/// A square crop of an RGB24 frame centred on `centre` with side `side` pixels, to gray
/// (0.299 R + 0.587 G + 0.114 B), resized bilinearly to `out`×`out`, scaled to [-1, 1].
pub fn gray_crop(
    rgb: &[u8],
    w: usize,
    h: usize,
    centre: (f32, f32),
    side: f32,
    out: usize,
) -> Vec<f32> {
    let mut v = Vec::with_capacity(out * out);
    let step = side / out as f32;
    let x0 = centre.0 - side / 2.0;
    let y0 = centre.1 - side / 2.0;
    for yy in 0..out {
        for xx in 0..out {
            let x = x0 + (xx as f32 + 0.5) * step - 0.5;
            let y = y0 + (yy as f32 + 0.5) * step - 0.5;
            let g = 0.299 * sample(rgb, w, h, x, y, 0)
                + 0.587 * sample(rgb, w, h, x, y, 1)
                + 0.114 * sample(rgb, w, h, x, y, 2);
            v.push((g / 255.0 - 0.5) * 2.0);
        }
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("ort-lookup-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn an_explicit_path_is_the_only_candidate() {
        let c = runtime_candidates(Some("/x/lib.so".as_ref()), None, Path::new("/src"));
        assert_eq!(c, vec![RuntimeCandidate::File("/x/lib.so".into())]);
    }

    #[test]
    fn lookup_order_binary_dir_then_workspace_vendor_then_system() {
        // A workspace: ws/target/release/fer-worker and ws/vendor/onnxruntime/libonnxruntime.so.1.31.1
        let ws = scratch("ws");
        std::fs::create_dir_all(ws.join("target/release")).unwrap();
        std::fs::create_dir_all(ws.join("vendor/onnxruntime")).unwrap();
        let vendored = ws.join("vendor/onnxruntime/libonnxruntime.so.1.31.1");
        std::fs::write(&vendored, b"").unwrap();
        let exe = ws.join("target/release/fer-worker");
        let c = runtime_candidates(None, Some(&exe), Path::new("/nonexistent-source"));
        let shown: Vec<String> = c.iter().map(|c| c.to_string()).collect();
        let pos = |needle: &str| shown.iter().position(|s| s.contains(needle)).unwrap();
        assert!(
            pos("target/release/libonnxruntime")
                < pos("vendor/onnxruntime/libonnxruntime.so.1.31.1")
        );
        assert!(pos("vendor/onnxruntime/libonnxruntime.so.1.31.1") < pos("/nonexistent-source/"));
        assert_eq!(
            c.last(),
            Some(&RuntimeCandidate::System("libonnxruntime.so".into()))
        );
        // A library next to the binary comes first.
        std::fs::write(ws.join("target/release/libonnxruntime.so.1"), b"").unwrap();
        let c = runtime_candidates(None, Some(&exe), Path::new("/nonexistent-source"));
        assert_eq!(
            c[0],
            RuntimeCandidate::File(ws.join("target/release/libonnxruntime.so.1"))
        );
    }

    #[test]
    fn a_failed_lookup_names_every_path_and_why() {
        let d = scratch("bad");
        let not_a_library = d.join("libonnxruntime.so.1.31.1");
        std::fs::write(&not_a_library, b"not an ELF file").unwrap();
        let err = find_runtime(&[
            RuntimeCandidate::File(d.join("missing.so")),
            RuntimeCandidate::File(not_a_library.clone()),
            RuntimeCandidate::System("libonnxruntime-that-does-not-exist.so".into()),
        ])
        .unwrap_err();
        assert!(err.contains("missing.so: no such file"), "{err}");
        assert!(err.contains(&not_a_library.display().to_string()), "{err}");
        assert!(
            err.contains("libonnxruntime-that-does-not-exist.so (system library path)"),
            "{err}"
        );
        assert_eq!(err.lines().count(), 3);
    }

    #[test]
    fn a_library_without_the_onnx_runtime_api_is_refused() {
        // libm loads but is no ONNX Runtime.
        let err = find_runtime(&[RuntimeCandidate::System("libm.so.6".into())]).unwrap_err();
        assert!(err.contains("no OrtGetApiBase"), "{err}");
    }

    #[test]
    fn softmax_sums_to_one() {
        let mut v = [1.0, 2.0, 3.0];
        softmax(&mut v);
        assert!((v.iter().sum::<f32>() - 1.0).abs() < 1e-6 && v[2] > v[1]);
    }

    #[test]
    fn layouts_and_labels() {
        // 1x2 image, 3 channels: NHWC [r0 g0 b0 r1 g1 b1] → NCHW [r0 r1 g0 g1 b0 b1].
        assert_eq!(
            nhwc_to_nchw(&[1., 2., 3., 4., 5., 6.], 1, 2, 3),
            vec![1., 4., 2., 5., 3., 6.]
        );
        let m = label_map(&["a", "b"], &[0.25, 0.75, 9.0]);
        assert_eq!(m.len(), 2);
        assert_eq!(m["b"], 0.75);
    }

    #[test]
    fn letterbox_maps_back() {
        let rgb = vec![255u8; 200 * 100 * 3];
        let (t, lb) = letterbox_rgb(&rgb, 200, 100, 100);
        // The frame fills the middle half: rows 25..75 white (1.0), the rest black (-1.0).
        assert!((t[(50 * 100 + 50) * 3] - 1.0).abs() < 1e-3);
        assert_eq!(t[(5 * 100 + 50) * 3], -1.0);
        let (x, y) = lb.to_frame(0.5, 0.5, 100);
        assert!((x - 100.0).abs() < 1e-3 && (y - 50.0).abs() < 1e-3);
    }

    #[test]
    fn checksums_are_enforced() {
        let dir = std::env::temp_dir().join(format!("onnx-sum-{}", std::process::id()));
        std::fs::write(&dir, b"not a model").unwrap();
        let e = load(&dir, Some("00")).unwrap_err();
        assert!(matches!(e, OnnxError::Checksum { .. }), "{e}");
        let _ = std::fs::remove_file(dir);
    }
}
