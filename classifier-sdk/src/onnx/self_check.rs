//! The numeric self-check a shipped model runs when it loads.
//!
//! Next to each shipped model, `<model>.check.json` (written by `models/tools/make_checks.py`)
//! holds a reference input and the outputs the fp32 model computes for it, and a tolerance. A model
//! that loads is run once on that input; when any output strays further than the tolerance
//! (relative L2 error), the model computes wrong answers on this CPU and must not serve. That
//! happened: an int8 face detector that agreed with fp32 on a CPU with VNNI found no face at all on
//! an AVX2-only one (8-bit weights saturate the 16-bit sums of `vpmaddubsw`), and nothing said so.
//!
//! The parsing and the comparison are pure (tested without ONNX Runtime); [`SelfCheck::run`] is
//! the only part that touches a session.

use std::path::{Path, PathBuf};

use base64::Engine as _;
use ort::session::Session;
use ort::value::TensorRef;
use serde::Deserialize;

/// A check file that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum CheckFileError {
    /// Not JSON of the expected shape.
    #[error("not a model check file: {0}")]
    Json(#[from] serde_json::Error),
    /// A tensor's data does not decode or does not fill its shape.
    #[error("tensor {name}: {problem}")]
    Tensor {
        /// Tensor name.
        name: String,
        /// What is wrong.
        problem: String,
    },
    /// Tolerance missing, negative or not finite.
    #[error("tolerance {0} is not a positive number")]
    Tolerance(f64),
}

#[derive(Deserialize)]
struct RawTensor {
    name: String,
    shape: Vec<usize>,
    dtype: String,
    #[serde(default)]
    encoding: Option<String>,
    #[serde(default)]
    scale: Option<f32>,
    #[serde(default)]
    offset: Option<f32>,
    data: String,
}

#[derive(Deserialize)]
struct RawCheck {
    model: String,
    reference: String,
    tolerance_rel_l2: f64,
    inputs: Vec<RawTensor>,
    outputs: Vec<RawTensor>,
}

/// Values of one reference tensor.
#[derive(Debug, Clone, PartialEq)]
pub enum CheckData {
    /// 32-bit floats.
    F32(Vec<f32>),
    /// 64-bit integers (e.g. Silero VAD's sample rate).
    I64(Vec<i64>),
}

/// One named reference tensor.
#[derive(Debug, Clone, PartialEq)]
pub struct CheckTensor {
    /// Input or output name in the model.
    pub name: String,
    /// Shape (empty for a scalar).
    pub shape: Vec<usize>,
    /// Values.
    pub data: CheckData,
}

/// A model's reference input, the fp32 outputs for it, and the tolerance.
#[derive(Debug, Clone, PartialEq)]
pub struct SelfCheck {
    /// The model file this check belongs to.
    pub model: String,
    /// Where the reference outputs came from.
    pub reference: String,
    /// Largest relative L2 error any output may have.
    pub tolerance: f32,
    /// Reference inputs.
    pub inputs: Vec<CheckTensor>,
    /// Reference outputs (f32).
    pub outputs: Vec<CheckTensor>,
}

/// How far a model's outputs were from the reference.
#[derive(Debug, Clone, PartialEq)]
pub struct CheckOutcome {
    /// Relative L2 error of each output, in the check file's order.
    pub errors: Vec<(String, f32)>,
    /// The allowed maximum.
    pub tolerance: f32,
}

impl CheckOutcome {
    /// The output furthest off, and by how much.
    pub fn worst(&self) -> (&str, f32) {
        self.errors
            .iter()
            .map(|(n, e)| (n.as_str(), *e))
            .fold(("", 0.0), |acc, (n, e)| {
                // NaN counts as the worst possible error.
                if e.is_nan() || acc.1.is_nan() {
                    if acc.1.is_nan() {
                        acc
                    } else {
                        (n, f32::NAN)
                    }
                } else if e > acc.1 {
                    (n, e)
                } else {
                    acc
                }
            })
    }

    /// Every output within the tolerance (a NaN never is).
    pub fn passed(&self) -> bool {
        self.errors
            .iter()
            .all(|(_, e)| e.is_finite() && *e <= self.tolerance)
    }
}

/// `||got - reference|| / ||reference||` (the absolute error when the reference is all zeros);
/// NaN when the lengths differ or a value is not finite.
pub fn relative_l2(got: &[f32], reference: &[f32]) -> f32 {
    if got.len() != reference.len() || got.iter().any(|v| !v.is_finite()) {
        return f32::NAN;
    }
    let (mut diff, mut norm) = (0f64, 0f64);
    for (g, r) in got.iter().zip(reference) {
        let d = f64::from(*g) - f64::from(*r);
        diff += d * d;
        norm += f64::from(*r) * f64::from(*r);
    }
    let diff = diff.sqrt();
    let norm = norm.sqrt();
    (if norm > 1e-12 { diff / norm } else { diff }) as f32
}

fn decode(t: RawTensor) -> Result<CheckTensor, CheckFileError> {
    let bad = |problem: String| CheckFileError::Tensor {
        name: t.name.clone(),
        problem,
    };
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(t.data.as_bytes())
        .map_err(|e| bad(format!("data is not base64: {e}")))?;
    let count = t
        .shape
        .iter()
        .try_fold(1usize, |acc, d| acc.checked_mul(*d))
        .ok_or_else(|| bad("shape overflows".into()))?;
    let data = match (t.dtype.as_str(), t.encoding.as_deref()) {
        ("f32", Some("u8")) => {
            // 8-bit values v stored for v * scale + offset (images: exact and a quarter the size).
            let (scale, offset) = (t.scale.unwrap_or(1.0), t.offset.unwrap_or(0.0));
            if bytes.len() != count {
                return Err(bad(format!("{} bytes for {count} values", bytes.len())));
            }
            CheckData::F32(
                bytes
                    .iter()
                    .map(|&v| f32::from(v) * scale + offset)
                    .collect(),
            )
        }
        ("f32", None) => {
            if bytes.len() != count * 4 {
                return Err(bad(format!("{} bytes for {count} f32 values", bytes.len())));
            }
            CheckData::F32(
                bytes
                    .chunks_exact(4)
                    .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                    .collect(),
            )
        }
        ("i64", None) => {
            if bytes.len() != count * 8 {
                return Err(bad(format!("{} bytes for {count} i64 values", bytes.len())));
            }
            CheckData::I64(
                bytes
                    .chunks_exact(8)
                    .map(|b| i64::from_le_bytes(b.try_into().unwrap_or([0; 8])))
                    .collect(),
            )
        }
        (dtype, encoding) => {
            return Err(bad(format!(
                "unsupported dtype {dtype} / encoding {encoding:?}"
            )))
        }
    };
    Ok(CheckTensor {
        name: t.name,
        shape: t.shape,
        data,
    })
}

impl SelfCheck {
    /// Where a model's check file is: `<model file>.check.json` beside it.
    pub fn path_for(model: &Path) -> PathBuf {
        let mut name = model.file_name().unwrap_or_default().to_os_string();
        name.push(".check.json");
        model.with_file_name(name)
    }

    /// Parses a check file.
    pub fn parse(json: &str) -> Result<Self, CheckFileError> {
        let raw: RawCheck = serde_json::from_str(json)?;
        if !(raw.tolerance_rel_l2.is_finite() && raw.tolerance_rel_l2 > 0.0) {
            return Err(CheckFileError::Tolerance(raw.tolerance_rel_l2));
        }
        let inputs = raw
            .inputs
            .into_iter()
            .map(decode)
            .collect::<Result<Vec<_>, _>>()?;
        let outputs = raw
            .outputs
            .into_iter()
            .map(decode)
            .collect::<Result<Vec<_>, _>>()?;
        if let Some(o) = outputs
            .iter()
            .find(|o| !matches!(o.data, CheckData::F32(_)))
        {
            return Err(CheckFileError::Tensor {
                name: o.name.clone(),
                problem: "reference outputs must be f32".into(),
            });
        }
        Ok(SelfCheck {
            model: raw.model,
            reference: raw.reference,
            tolerance: raw.tolerance_rel_l2 as f32,
            inputs,
            outputs,
        })
    }

    /// Compares outputs (by name) with the reference; a missing output counts as NaN.
    pub fn compare(&self, got: &[(String, Vec<f32>)]) -> CheckOutcome {
        let errors = self
            .outputs
            .iter()
            .map(|reference| {
                let CheckData::F32(want) = &reference.data else {
                    return (reference.name.clone(), f32::NAN);
                };
                let error = got
                    .iter()
                    .find(|(n, _)| *n == reference.name)
                    .map_or(f32::NAN, |(_, v)| relative_l2(v, want));
                (reference.name.clone(), error)
            })
            .collect();
        CheckOutcome {
            errors,
            tolerance: self.tolerance,
        }
    }

    /// Runs the reference input through `session` and compares.
    pub fn run(&self, session: &mut Session) -> Result<CheckOutcome, ort::Error> {
        let mut inputs: Vec<(String, ort::session::SessionInputValue<'_>)> = Vec::new();
        for t in &self.inputs {
            let value: ort::session::SessionInputValue<'_> = match &t.data {
                CheckData::F32(v) => {
                    TensorRef::from_array_view((t.shape.clone(), v.as_slice()))?.into()
                }
                CheckData::I64(v) => {
                    TensorRef::from_array_view((t.shape.clone(), v.as_slice()))?.into()
                }
            };
            inputs.push((t.name.clone(), value));
        }
        let outputs = session.run(inputs)?;
        let mut got = Vec::new();
        for reference in &self.outputs {
            if let Some(value) = outputs.get(reference.name.as_str()) {
                let (_, data) = value.try_extract_tensor::<f32>()?;
                got.push((reference.name.clone(), data.to_vec()));
            }
        }
        Ok(self.compare(&got))
    }
}

/// The CPU and the features that decide which int8 and fp32 kernels ONNX Runtime picks, for error
/// messages: e.g. "AMD EPYC 7B12 [sse4.1 avx avx2 fma, no VNNI]". The features are asked of the
/// CPU itself (CPUID, as ONNX Runtime does), not read from /proc/cpuinfo, which an emulator or a
/// container may not match.
pub fn cpu_kernel_flags() -> String {
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, m)| m.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".to_owned());
    describe_cpu(&model, &cpu_features())
}

#[cfg(target_arch = "x86_64")]
fn cpu_features() -> Vec<(&'static str, bool)> {
    vec![
        ("sse4.1", std::arch::is_x86_feature_detected!("sse4.1")),
        ("avx", std::arch::is_x86_feature_detected!("avx")),
        ("avx2", std::arch::is_x86_feature_detected!("avx2")),
        ("fma", std::arch::is_x86_feature_detected!("fma")),
        ("avx512f", std::arch::is_x86_feature_detected!("avx512f")),
        ("avx512bw", std::arch::is_x86_feature_detected!("avx512bw")),
        (
            "avx512vnni",
            std::arch::is_x86_feature_detected!("avx512vnni"),
        ),
        ("avxvnni", std::arch::is_x86_feature_detected!("avxvnni")),
    ]
}

#[cfg(not(target_arch = "x86_64"))]
fn cpu_features() -> Vec<(&'static str, bool)> {
    Vec::new()
}

/// "MODEL [present features, no VNNI]" (pure: the formatting of [`cpu_kernel_flags`]).
pub fn describe_cpu(model: &str, features: &[(&str, bool)]) -> String {
    let present: Vec<&str> = features.iter().filter(|f| f.1).map(|f| f.0).collect();
    let vnni = if present.iter().any(|f| f.contains("vnni")) || features.is_empty() {
        ""
    } else {
        ", no VNNI"
    };
    format!("{model} [{}{vnni}]", present.join(" "))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b64(bytes: &[u8]) -> String {
        base64::engine::general_purpose::STANDARD.encode(bytes)
    }

    fn f32s(v: &[f32]) -> String {
        b64(&v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<_>>())
    }

    fn check_file(tolerance: f64, out: &[f32]) -> String {
        serde_json::json!({
            "model": "m.onnx",
            "reference": "test",
            "tolerance_rel_l2": tolerance,
            "inputs": [
                {"name": "x", "shape": [1, 2], "dtype": "f32", "encoding": "u8", "scale": 0.5, "offset": -1.0, "data": b64(&[0, 4])},
                {"name": "sr", "shape": [], "dtype": "i64", "data": b64(&16000i64.to_le_bytes())},
            ],
            "outputs": [{"name": "y", "shape": [out.len()], "dtype": "f32", "data": f32s(out)}],
        })
        .to_string()
    }

    #[test]
    fn a_check_file_decodes_its_inputs_and_outputs() {
        let c = SelfCheck::parse(&check_file(0.1, &[1.0, 2.0])).unwrap();
        assert_eq!(c.inputs[0].data, CheckData::F32(vec![-1.0, 1.0]));
        assert_eq!(c.inputs[1].data, CheckData::I64(vec![16000]));
        assert!(c.inputs[1].shape.is_empty());
        assert_eq!(c.outputs[0].data, CheckData::F32(vec![1.0, 2.0]));
        assert_eq!(c.tolerance, 0.1);
    }

    #[test]
    fn outputs_within_the_tolerance_pass_and_strays_fail() {
        let c = SelfCheck::parse(&check_file(0.1, &[3.0, 4.0])).unwrap();
        let close = c.compare(&[("y".into(), vec![3.1, 4.0])]);
        assert!(close.passed(), "{close:?}");
        assert!((close.worst().1 - 0.02).abs() < 1e-4);
        let far = c.compare(&[("y".into(), vec![0.0, 0.0])]);
        assert!(!far.passed());
        assert_eq!(far.worst(), ("y", 1.0));
    }

    #[test]
    fn a_missing_output_a_nan_or_a_wrong_length_fails() {
        let c = SelfCheck::parse(&check_file(0.5, &[3.0, 4.0])).unwrap();
        assert!(!c.compare(&[]).passed());
        assert!(!c.compare(&[("y".into(), vec![3.0, f32::NAN])]).passed());
        assert!(!c.compare(&[("y".into(), vec![3.0])]).passed());
        assert!(c
            .compare(&[("y".into(), vec![f32::NAN])])
            .worst()
            .1
            .is_nan());
    }

    #[test]
    fn broken_check_files_are_refused_with_the_reason() {
        assert!(matches!(
            SelfCheck::parse("{}"),
            Err(CheckFileError::Json(_))
        ));
        assert!(matches!(
            SelfCheck::parse(&check_file(0.0, &[1.0])),
            Err(CheckFileError::Tolerance(_))
        ));
        let short = check_file(0.1, &[1.0]).replace(&f32s(&[1.0]), &b64(&[1, 2]));
        let e = SelfCheck::parse(&short).unwrap_err().to_string();
        assert!(e.contains("tensor y") && e.contains("2 bytes"), "{e}");
        let overflow = check_file(0.1, &[1.0]).replace(
            "\"shape\":[1]",
            &format!("\"shape\":[{},{}]", usize::MAX, 3),
        );
        assert!(SelfCheck::parse(&overflow).is_err());
    }

    #[test]
    fn the_check_file_sits_beside_the_model() {
        assert_eq!(
            SelfCheck::path_for(Path::new("/m/blazeface_front_128_int8.onnx")),
            Path::new("/m/blazeface_front_128_int8.onnx.check.json")
        );
    }

    #[test]
    fn the_cpu_is_described_by_its_int8_kernels_and_a_missing_vnni() {
        let avx2 = [("avx2", true), ("fma", true), ("avx512vnni", false)];
        assert_eq!(
            describe_cpu("AMD EPYC 7B12", &avx2),
            "AMD EPYC 7B12 [avx2 fma, no VNNI]"
        );
        let vnni = [("avx2", true), ("avx512f", true), ("avx512vnni", true)];
        assert_eq!(
            describe_cpu("Xeon", &vnni),
            "Xeon [avx2 avx512f avx512vnni]"
        );
        // The running CPU: whatever it is, its description names its model.
        assert!(cpu_kernel_flags().contains('['));
    }
}
