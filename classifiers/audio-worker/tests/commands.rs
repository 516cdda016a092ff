//! `audio-worker features` and `evaluate-emotion` on a small synthesized corpus.

use std::path::Path;
use std::process::Command;

fn speak(path: &Path, args: &[&str], text: &str) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let ok = Command::new("espeak-ng")
        .args(args)
        .arg("-w")
        .arg(path)
        .arg(text)
        .status()
        .expect("espeak-ng (scripts/setup installs it)")
        .success();
    assert!(ok);
}

#[test]
fn features_and_evaluate_emotion_run_on_a_labelled_folder() {
    let dir = std::env::temp_dir().join(format!("ser-corpus-{}", std::process::id()));
    let corpus = dir.join("synth");
    let texts = [
        "The boats came in late this evening and nobody was there.",
        "I told you twice already, put the box back where you found it.",
    ];
    // Two "speakers" (voices), two classes rendered by pitch and speed (not real emotions: this
    // checks the plumbing, not the accuracy).
    for (spk, voice) in [("s1", "en"), ("s2", "en+f3")] {
        for (i, t) in texts.iter().enumerate() {
            speak(
                &corpus.join("angry").join(format!("{spk}_a{i}.wav")),
                &["-v", voice, "-p", "80", "-s", "200", "-a", "180"],
                t,
            );
            speak(
                &corpus.join("sad").join(format!("{spk}_s{i}.wav")),
                &["-v", voice, "-p", "20", "-s", "110", "-a", "60"],
                t,
            );
        }
    }
    let bin = env!("CARGO_BIN_EXE_audio-worker");
    let csv = dir.join("f.csv");
    let out = Command::new(bin)
        .args(["features"])
        .arg(&corpus)
        .arg("--out")
        .arg(&csv)
        .args(["--window-ms", "1000"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = std::fs::read_to_string(&csv).unwrap();
    let mut lines = text.lines();
    let header: Vec<&str> = lines.next().unwrap().split(',').collect();
    assert_eq!(header.len(), 9 + audio_worker::emotion::N_FEATURES);
    let rows: Vec<Vec<&str>> = lines.map(|l| l.split(',').collect()).collect();
    // 8 whole files, plus windows.
    assert_eq!(rows.iter().filter(|r| r[4] == "-1").count(), 8);
    assert!(rows.iter().all(|r| r.len() == header.len()));
    assert!(rows.iter().any(|r| r[1] == "synth/s2" && r[2] == "sad"));

    let out = Command::new(bin)
        .args(["evaluate-emotion"])
        .arg(&corpus)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("synth, per file: UAR"), "{stdout}");
    assert!(
        stdout.contains("synth, per 1000 ms window alone: UAR"),
        "{stdout}"
    );
    assert!(
        stdout.contains("synth, per 1000 ms window over its utterance so far"),
        "{stdout}"
    );
    assert!(stdout.contains("confusion"), "{stdout}");
    assert!(stdout.contains("arousal (the shipped model"), "{stdout}");
    let _ = std::fs::remove_dir_all(dir);
}
