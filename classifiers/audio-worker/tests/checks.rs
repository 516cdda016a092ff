//! Checks on speech made by espeak-ng (installed by scripts/setup) and on silence.

use std::path::{Path, PathBuf};
use std::process::Command;

use audio_worker::{analyze_window, default_models_dir, read_wav, Vad, SILERO_SHA256};

/// A WAV file in the temp folder, removed when dropped (every run used to leave its files).
struct TempWav(PathBuf);

impl std::ops::Deref for TempWav {
    type Target = Path;
    fn deref(&self) -> &Path {
        &self.0
    }
}

impl AsRef<std::ffi::OsStr> for TempWav {
    fn as_ref(&self) -> &std::ffi::OsStr {
        self.0.as_os_str()
    }
}

impl Drop for TempWav {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn speak(name: &str, args: &[&str]) -> TempWav {
    let out = TempWav(
        std::env::temp_dir().join(format!("audio-worker-{}-{name}.wav", std::process::id())),
    );
    let status = Command::new("espeak-ng")
        .args(args)
        .arg("-w")
        .arg(&out)
        .arg("I can hardly believe what happened this morning, it was really something else.")
        .status()
        .expect("espeak-ng (scripts/setup installs it)");
    assert!(status.success());
    out
}

fn vad() -> Vad {
    Vad::load(
        &default_models_dir().join("silero_vad.onnx"),
        Some(SILERO_SHA256),
    )
    .expect("VAD loads (ORT_DYLIB_PATH set?)")
}

fn analyse(path: &Path) -> Vec<audio_worker::WindowAnalysis> {
    let samples = read_wav(path).unwrap();
    let mut v = vad();
    samples
        .chunks(16000)
        .filter(|w| w.len() >= 8000)
        .enumerate()
        .map(|(i, w)| analyze_window(&mut v, w, i as f64).unwrap())
        .collect()
}

#[test]
fn speech_is_speaking_and_silence_is_silent() {
    let speech = analyse(&speak("plain", &[]));
    assert!(
        speech.iter().filter(|w| w.speaking).count() * 2 >= speech.len(),
        "{speech:?}"
    );
    assert!(speech
        .iter()
        .any(|w| w.f0_median_hz.is_some_and(|f| (60.0..400.0).contains(&f))));
    let mut v = vad();
    let silence = analyze_window(&mut v, &vec![0.0f32; 16000], 0.0).unwrap();
    assert!(
        !silence.speaking && silence.speech_probability < 0.1 && silence.arousal.is_none(),
        "{silence:?}"
    );
}

/// Two synthetic voices an octave apart in register: against their own baselines, each one's
/// raised rendition scores high and its usual voice does not, whatever the register.
#[test]
fn arousal_is_judged_against_each_voices_own_baseline() {
    use audio_worker::arousal::{
        BaselineConfig, Baselines, VoiceFeatures, EMODB_MODEL, EMODB_POPULATION,
    };
    let features = |w: &[audio_worker::WindowAnalysis]| -> Vec<VoiceFeatures> {
        w.iter()
            .filter(|w| w.speaking)
            .filter_map(|w| VoiceFeatures::new(w.loudness_dbfs, w.f0_median_hz, w.f0_std_hz))
            .collect()
    };
    let mut baselines = Baselines::new(EMODB_POPULATION, BaselineConfig::default(), 16);
    for (speaker, usual_pitch, raised_pitch) in [("deep", "10", "45"), ("high", "60", "95")] {
        let usual = features(&analyse(&speak(
            &format!("{speaker}-usual"),
            &["-p", usual_pitch],
        )));
        let raised = features(&analyse(&speak(
            &format!("{speaker}-raised"),
            &["-p", raised_pitch],
        )));
        assert!(!usual.is_empty() && !raised.is_empty());
        // A few minutes of the usual voice make the baseline.
        for _ in 0..20 {
            for f in &usual {
                baselines.score(speaker, f, &EMODB_MODEL);
            }
        }
        let mean = |fs: &[VoiceFeatures], b: &mut Baselines| {
            let ps: Vec<f64> = fs
                .iter()
                .map(|f| b.clone().score(speaker, f, &EMODB_MODEL).0)
                .collect();
            ps.iter().sum::<f64>() / ps.len() as f64
        };
        let (u, r) = (mean(&usual, &mut baselines), mean(&raised, &mut baselines));
        assert!(
            u < 0.65,
            "{speaker}: its usual voice reads aroused ({u:.2})"
        );
        assert!(
            r > 0.65 && r > u + 0.3,
            "{speaker}: raised {r:.2} vs usual {u:.2}"
        );
    }
}

#[test]
fn a_louder_higher_rendition_scores_higher_arousal() {
    let mean_arousal = |w: &[audio_worker::WindowAnalysis]| {
        let s: Vec<f32> = w.iter().filter_map(|w| w.arousal_score).collect();
        assert!(!s.is_empty(), "no speech windows");
        s.iter().sum::<f32>() / s.len() as f32
    };
    let flat = analyse(&speak("flat", &["-a", "40", "-p", "15", "-s", "140"]));
    let excited = analyse(&speak("excited", &["-a", "190", "-p", "85", "-s", "190"]));
    let (f, e) = (mean_arousal(&flat), mean_arousal(&excited));
    assert!(e > f + 0.1, "excited {e} vs flat {f}");
    let pitch =
        |w: &[audio_worker::WindowAnalysis]| w.iter().filter_map(|w| w.f0_median_hz).sum::<f32>();
    assert!(pitch(&excited) > pitch(&flat));
}

#[test]
fn analyze_prints_json_per_window() {
    let wav = speak("cli", &[]);
    let out = Command::new(env!("CARGO_BIN_EXE_audio-worker"))
        .arg("analyze")
        .arg(&wav)
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
    assert!(lines.len() >= 2);
    for key in [
        "speech_probability",
        "loudness_dbfs",
        "f0_median_hz",
        "arousal",
        "voice_energy_dbfs",
        "pitch_variability_st",
    ] {
        assert!(lines[0].get(key).is_some(), "{key} in {}", lines[0]);
    }
    // The middle arousal class has the label's name, `moderate` (`neutral` is an emotion).
    let classes: Vec<&str> = lines.iter().filter_map(|l| l["arousal"].as_str()).collect();
    assert!(!classes.is_empty());
    for c in &classes {
        assert!(["calm", "moderate", "aroused"].contains(c), "{c}");
    }
    // Speech windows carry the physical voice measures.
    assert!(lines
        .iter()
        .filter(|l| l["speaking"] == true)
        .all(|l| l["voice_energy_dbfs"].is_number()));
    assert!(lines.iter().any(|l| l["pitch_variability_st"].is_number()));
}

#[test]
fn a_speech_emotion_model_plugs_in_by_configuration() {
    // A plumbing fixture (testdata/make_tiny_ser.py), not an emotion model: 16 mean log-mel bands in.
    let wav = speak("ser", &[]);
    let fixture = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/tiny_ser.onnx");
    let out = Command::new(env!("CARGO_BIN_EXE_audio-worker"))
        .args([
            "analyze",
            "--ser-labels",
            "low,high,flat",
            "--ser-bins",
            "16",
            "--ser-layout",
            "mean",
            "--ser-model",
        ])
        .arg(&fixture)
        .arg(&wav)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let first: serde_json::Value = serde_json::from_str(
        String::from_utf8(out.stdout)
            .unwrap()
            .lines()
            .next()
            .unwrap(),
    )
    .unwrap();
    let ser = first["ser"]
        .as_object()
        .expect("SER output on a speech window");
    assert_eq!(ser.len(), 3);
    let sum: f64 = ser.values().map(|v| v.as_f64().unwrap()).sum();
    assert!((sum - 1.0).abs() < 1e-4, "{ser:?}");
    // Speech energy sits in the low mel bands: the fixture's "low" class must win over "high".
    assert!(
        ser["low"].as_f64().unwrap() > ser["high"].as_f64().unwrap(),
        "{ser:?}"
    );
}
