//! The bundled speech-emotion model on synthesized input: speech gets a verdict; silence, music,
//! clipping, a telephone band and two voices at once get "no speech" or a low-confidence verdict,
//! never a confident category.

use std::process::Command;

use audio_worker::emotion::{EmotionModel, SpeakerNorm, Verdict};
use audio_worker::{
    default_models_dir, read_wav, resample, Vad, SER_TAP_FILE, SER_TAP_SHA256, SILERO_SHA256,
};

const TEXT: &str =
    "I can hardly believe what happened this morning, it was really something else. \
                    We went down to the harbour and watched the boats come in.";

fn speak(name: &str, args: &[&str]) -> Vec<f32> {
    let out = std::env::temp_dir().join(format!("ser-{}-{name}.wav", std::process::id()));
    let status = Command::new("espeak-ng")
        .args(args)
        .arg("-w")
        .arg(&out)
        .arg(TEXT)
        .status()
        .expect("espeak-ng (scripts/setup installs it)");
    assert!(status.success());
    let s = read_wav(&out).unwrap();
    let _ = std::fs::remove_file(out);
    s
}

fn model() -> EmotionModel {
    EmotionModel::load(
        &default_models_dir().join(SER_TAP_FILE),
        Some(SER_TAP_SHA256),
    )
    .expect("the bundled model loads (ORT_DYLIB_PATH set?)")
}

fn vad() -> Vad {
    Vad::load(
        &default_models_dir().join("silero_vad.onnx"),
        Some(SILERO_SHA256),
    )
    .unwrap()
}

/// Verdicts for each 2 s window (None: no speech), the speaker's baseline first warmed on
/// `warm` (ordinary speech of the same "participant").
fn verdicts(warm: &[f32], samples: &[f32]) -> Vec<Option<Verdict>> {
    let mut m = model();
    let mut v = vad();
    let mut norm = SpeakerNorm::new(&m.card);
    for w in warm.chunks(32000).filter(|w| w.len() == 32000) {
        let p = v.probabilities(w).unwrap();
        if let Some((f, q)) = m.front().functionals(w, &p) {
            m.classify(&f, &q, &mut norm).unwrap();
        }
    }
    samples
        .chunks(32000)
        .filter(|w| w.len() == 32000)
        .map(|w| {
            let p = v.probabilities(w).unwrap();
            let (f, q) = m.front().functionals(w, &p)?;
            Some(m.classify(&f, &q, &mut norm).unwrap())
        })
        .collect()
}

fn never_confident(what: &str, v: &[Option<Verdict>]) {
    assert!(!v.is_empty());
    for x in v.iter().flatten() {
        assert!(
            x.low_confidence && x.confidence < 0.5,
            "{what}: a confident category: {x:?}"
        );
    }
    eprintln!(
        "{what}: {} windows, {} with speech, all low confidence: {:?}",
        v.len(),
        v.iter().flatten().count(),
        v.iter()
            .flatten()
            .map(|x| x.reason.clone().unwrap_or_default())
            .collect::<Vec<_>>()
    );
}

#[test]
fn speech_gets_a_verdict_that_sums_to_one() {
    let s = speak("plain", &["-s", "150"]);
    let v = verdicts(&s, &s);
    let got: Vec<&Verdict> = v.iter().flatten().collect();
    assert!(!got.is_empty(), "speech found");
    for x in got {
        let sum: f32 = x.scores.iter().map(|(_, p)| p).sum();
        assert!((sum - 1.0).abs() < 1e-3, "{x:?}");
        assert_eq!(x.scores.len(), 4);
    }
}

#[test]
fn silence_is_no_speech() {
    let v = verdicts(&[], &vec![0.0; 16000 * 6]);
    assert!(v.iter().all(Option::is_none), "{v:?}");
    // Faint noise too.
    let mut x = 12345u32;
    let noise: Vec<f32> = (0..16000 * 6)
        .map(|_| {
            x = x.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            (x >> 8) as f32 / (1u32 << 24) as f32 * 0.002 - 0.001
        })
        .collect();
    assert!(verdicts(&[], &noise).iter().all(Option::is_none));
}

#[test]
fn music_is_never_a_confident_category() {
    // Chords of harmonic tones, a new chord every 250 ms, with a percussive click.
    let notes = [220.0f32, 277.2, 329.6, 246.9, 311.1, 370.0, 196.0, 293.7];
    let music: Vec<f32> = (0..16000 * 8)
        .map(|i| {
            let t = i as f32 / 16000.0;
            let chord = (i / 4000) % notes.len();
            let mut v = 0.0;
            for (k, f) in [notes[chord], notes[(chord + 2) % notes.len()] * 1.5]
                .iter()
                .enumerate()
            {
                for h in 1..6 {
                    v += (2.0 * std::f32::consts::PI * f * h as f32 * t).sin() * 0.08
                        / h as f32
                        / (k + 1) as f32;
                }
            }
            let click =
                (-((i % 4000) as f32) / 200.0).exp() * ((i * 7919 % 97) as f32 / 97.0 - 0.5);
            v + 0.3 * click
        })
        .collect();
    let warm = speak("warm-music", &[]);
    never_confident("music", &verdicts(&warm, &music));
}

#[test]
fn clipped_speech_is_never_a_confident_category() {
    let s = speak("clip", &[]);
    let clipped: Vec<f32> = s.iter().map(|v| (v * 30.0).clamp(-1.0, 1.0)).collect();
    never_confident("clipped", &verdicts(&s, &clipped));
}

#[test]
fn a_telephone_band_is_never_a_confident_category() {
    let s = speak("tel", &[]);
    // 8 kHz telephone audio delivered at 16 kHz: low-passed at 3.4 kHz (a 63-tap Hann-windowed
    // sinc), decimated to 8 kHz, upsampled and low-passed again.
    let lowpass = |x: &[f32]| -> Vec<f32> {
        let fc = 3400.0 / 16000.0;
        let taps: Vec<f32> = (0..63)
            .map(|i| {
                let n = i as f32 - 31.0;
                let sinc = if n == 0.0 {
                    2.0 * fc
                } else {
                    (2.0 * std::f32::consts::PI * fc * n).sin() / (std::f32::consts::PI * n)
                };
                sinc * (0.5 - 0.5 * (2.0 * std::f32::consts::PI * i as f32 / 62.0).cos())
            })
            .collect();
        (0..x.len())
            .map(|i| {
                taps.iter()
                    .enumerate()
                    .map(|(k, t)| t * x.get((i + k).wrapping_sub(31)).copied().unwrap_or(0.0))
                    .sum()
            })
            .collect()
    };
    let tel = lowpass(&resample(&resample(&lowpass(&s), 16000, 8000), 8000, 16000));
    never_confident("8 kHz", &verdicts(&s, &tel));
}

/// Known limitation: two synthetic voices at once are not told from one (their mixture is still
/// periodic enough, and its functionals are within the training distribution); run with
/// `--ignored` to see it fail.
#[test]
#[ignore = "known limitation: two voices at once are not detected (docs/models.md)"]
fn two_voices_at_once_are_never_a_confident_category() {
    let a = speak("a", &["-p", "30", "-s", "160"]);
    let b = speak("b", &["-v", "en+f3", "-p", "75", "-s", "140"]);
    let n = a.len().min(b.len());
    let mix: Vec<f32> = (0..n).map(|i| 0.6 * a[i] + 0.6 * b[i]).collect();
    never_confident("two voices", &verdicts(&a, &mix));
}
