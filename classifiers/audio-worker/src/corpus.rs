//! Labelled speech for `audio-worker features` and `evaluate-emotion`: `DIR/<class>/<file>.wav`, or
//! `DIR/<corpus>/<class>/<file>.wav` for several corpora. A file's speaker is the part of its name
//! before the first `_`, or given by a `speakers.csv` (`file,speaker`) next to the class folders.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// Class folder names understood.
pub const CLASSES: [&str; 9] = [
    "angry", "boredom", "calm", "disgust", "fear", "happy", "neutral", "sad", "surprise",
];

/// One labelled file.
#[derive(Debug, Clone, PartialEq)]
pub struct Item {
    /// Corpus (the folder above the class folders).
    pub corpus: String,
    /// Speaker, prefixed by the corpus.
    pub speaker: String,
    /// Class.
    pub class: String,
    /// File.
    pub path: PathBuf,
    /// File name.
    pub name: String,
}

fn has_class_dirs(dir: &Path) -> bool {
    CLASSES.iter().any(|c| dir.join(c).is_dir())
}

fn read_corpus(dir: &Path, corpus: &str, out: &mut Vec<Item>) -> anyhow::Result<()> {
    let mut speakers = HashMap::new();
    if let Ok(text) = std::fs::read_to_string(dir.join("speakers.csv")) {
        for line in text.lines() {
            if let Some((f, s)) = line.split_once(',') {
                speakers.insert(f.trim().to_owned(), s.trim().to_owned());
            }
        }
    }
    for class in CLASSES {
        let Ok(entries) = std::fs::read_dir(dir.join(class)) else {
            continue;
        };
        let mut names: Vec<String> = entries
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .filter(|n| n.to_ascii_lowercase().ends_with(".wav"))
            .collect();
        names.sort();
        for name in names {
            let speaker = speakers
                .get(&name)
                .cloned()
                .or_else(|| name.split_once('_').map(|(s, _)| s.to_owned()))
                .unwrap_or_else(|| "unknown".into());
            out.push(Item {
                corpus: corpus.to_owned(),
                speaker: if speaker.starts_with(corpus) {
                    speaker
                } else {
                    format!("{corpus}/{speaker}")
                },
                class: class.to_owned(),
                path: dir.join(class).join(&name),
                name,
            });
        }
    }
    Ok(())
}

/// Every labelled file under `dir`.
pub fn list(dir: &Path) -> anyhow::Result<Vec<Item>> {
    let mut out = Vec::new();
    if has_class_dirs(dir) {
        let corpus = dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "corpus".into());
        read_corpus(dir, &corpus, &mut out)?;
    } else {
        let mut subs: Vec<PathBuf> = std::fs::read_dir(dir)?
            .filter_map(|e| Some(e.ok()?.path()))
            .filter(|p| p.is_dir() && has_class_dirs(p))
            .collect();
        subs.sort();
        for s in subs {
            let corpus = s
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            read_corpus(&s, &corpus, &mut out)?;
        }
    }
    anyhow::ensure!(
        !out.is_empty(),
        "{}: no DIR/<class>/*.wav or DIR/<corpus>/<class>/*.wav (classes: {})",
        dir.display(),
        CLASSES.join(", ")
    );
    Ok(out)
}
