#!/usr/bin/env python3
"""Lays out speech-emotion corpora as `OUT/<corpus>/<class>/<speaker>_<file>.wav` (symlinks), the
layout `audio-worker features` and `audio-worker evaluate-emotion` read.

    ser_prepare.py --emodb DIR_OF_EMODB_WAVS --ravdess DIR_WITH_Actor_XX --out /work/data/ser
    ser_prepare.py --turevdb "TurEV-DB/Sound Source" --urdu URDU-Dataset --out /work/data/other

EmoDB: names like 03a01Wa.wav (speaker 03, emotion letter W); RAVDESS: 03-01-05-01-02-01-12.wav
(emotion field 3, actor field 7; speech only). TurEV-DB (Xeonen/TurEV-DB, `Sound Source/`):
`<Emotion>/<actor>_<code>_<word>.wav`, Angry/Calm/Happy/Sad (calm stays calm: the corpus has no
neutral). URDU (siddiquelatif/URDU-Dataset): `<Emotion>/<speaker>_<n>_<...>.wav`, talk-show speech
in which most speakers carry a single emotion (a poor speaker-independent test; see
docs/models.md).
"""
import argparse
import os
from pathlib import Path

EMODB = {"W": "angry", "L": "boredom", "E": "disgust", "A": "fear", "F": "happy", "T": "sad", "N": "neutral"}
RAVDESS = {"01": "neutral", "02": "calm", "03": "happy", "04": "sad", "05": "angry", "06": "fear",
           "07": "disgust", "08": "surprise"}


def link(src: Path, dst: Path):
    dst.parent.mkdir(parents=True, exist_ok=True)
    if dst.is_symlink() or dst.exists():
        dst.unlink()
    os.symlink(src.resolve(), dst)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--emodb")
    ap.add_argument("--ravdess")
    ap.add_argument("--turevdb")
    ap.add_argument("--urdu")
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    out = Path(a.out)
    n = {}
    if a.emodb:
        for f in sorted(Path(a.emodb).glob("*.wav")):
            c = EMODB.get(f.name[5:6])
            if c:
                link(f, out / "emodb" / c / f"emodb{f.name[:2]}_{f.name}")
                n["emodb"] = n.get("emodb", 0) + 1
    if a.ravdess:
        for f in sorted(Path(a.ravdess).rglob("03-01-*.wav")):
            p = f.stem.split("-")
            c = RAVDESS.get(p[2])
            if c:
                link(f, out / "ravdess" / c / f"ravdess{p[6]}_{f.name}")
                n["ravdess"] = n.get("ravdess", 0) + 1
    for corpus, root in (("turevdb", a.turevdb), ("urdu", a.urdu)):
        if not root:
            continue
        for folder in sorted(Path(root).iterdir()):
            c = folder.name.lower()
            if not folder.is_dir() or c not in ("angry", "calm", "happy", "neutral", "sad"):
                continue
            for f in sorted(folder.glob("*.wav")):
                speaker = f.name.split("_")[0]
                link(f, out / corpus / c / f"{corpus}{speaker}_{f.name}")
                n[corpus] = n.get(corpus, 0) + 1
    print(n)


if __name__ == "__main__":
    main()
