#!/usr/bin/env python3
"""Makes a call-condition copy of a labelled speech folder, for `audio-worker evaluate-emotion`:
each file gets room noise at a given SNR (optional), then goes through Opus at a browser's bitrate
and back (GStreamer's opusenc/opusdec, i.e. libopus, as a browser encodes and the tap decodes), at
48 kHz mono as WebRTC carries it.

    ser_call_conditions.py SER OUT --kbps 32 [--snr-db 15] [--jobs 2]

SER and OUT are laid out as `audio-worker features` reads them (`<corpus>/<class>/<file>.wav`);
speaker prefixes and `speakers.csv` are kept. The noise is seeded per file (low-passed white
noise, a room's fans and hum more than hiss) against the speech level: the RMS of the loudest
half of the 32 ms frames.
"""
import argparse
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import wave
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from scipy.signal import lfilter


def read(path):
    with wave.open(str(path)) as w:
        n, ch, width, rate = w.getnframes(), w.getnchannels(), w.getsampwidth(), w.getframerate()
        raw = w.readframes(n)
    if width != 2:
        raise ValueError(f"{path}: {width * 8}-bit samples (16-bit expected)")
    x = np.frombuffer(raw, dtype="<i2").astype(np.float32) / 32768.0
    return x.reshape(-1, ch).mean(1), rate


def write(path, x, rate):
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes((np.clip(x, -1, 1) * 32767).astype("<i2").tobytes())


def add_noise(x, snr_db, seed):
    frames = len(x) // 512
    if frames == 0:
        return x
    e = np.sort((x[: frames * 512].reshape(frames, 512) ** 2).mean(1))[::-1]
    speech_rms = np.sqrt(e[: (frames + 1) // 2].mean())
    rng = np.random.default_rng(seed)
    white = rng.uniform(-1, 1, len(x)).astype(np.float32)
    # One-pole low-pass, y += 0.33 (x − y): ~1 kHz at 16 kHz.
    noise = lfilter([0.33], [1.0, -0.67], white).astype(np.float32)
    gain = speech_rms / max(np.sqrt((noise ** 2).mean()), 1e-12) * 10 ** (-snr_db / 20)
    return x + gain * noise


def opus_round_trip(src, dst, kbps):
    """src WAV → 48 kHz mono → opusenc → opusdec → dst WAV (48 kHz)."""
    cmd = ["gst-launch-1.0", "-q", "filesrc", f"location={src}", "!", "wavparse", "!",
           "audioconvert", "!", "audioresample", "!", "audio/x-raw,rate=48000,channels=1", "!",
           "opusenc", f"bitrate={kbps * 1000}", "audio-type=voice", "frame-size=20", "!",
           "opusdec", "!", "audioconvert", "!", "audio/x-raw,format=S16LE", "!", "wavenc", "!",
           "filesink", f"location={dst}"]
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def one(src, dst, kbps, snr_db, tmp):
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        x, rate = read(src)
    except Exception as e:  # a truncated file in a public copy: said and skipped
        return f"skipped {src}: {e}"
    if snr_db is not None:
        seed = int.from_bytes(hashlib.sha256(src.name.encode()).digest()[:8], "little")
        x = add_noise(x, snr_db, seed)
    noisy = Path(tmp) / (hashlib.sha256(str(src).encode()).hexdigest()[:16] + ".wav")
    write(noisy, x, rate)
    try:
        opus_round_trip(noisy, dst, kbps)
    finally:
        noisy.unlink(missing_ok=True)
    return None


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("src")
    ap.add_argument("out")
    ap.add_argument("--kbps", type=int, default=32)
    ap.add_argument("--snr-db", type=float)
    ap.add_argument("--jobs", type=int, default=2)
    a = ap.parse_args()
    src, out = Path(a.src), Path(a.out)
    files = sorted(p for p in src.rglob("*.wav"))
    for extra in src.rglob("speakers.csv"):
        (out / extra.relative_to(src)).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(extra, out / extra.relative_to(src))
    with tempfile.TemporaryDirectory() as tmp, ThreadPoolExecutor(a.jobs) as pool:
        results = list(pool.map(
            lambda f: one(f, out / f.relative_to(src), a.kbps, a.snr_db, tmp), files))
    problems = [r for r in results if r]
    for p in problems:
        print(p, file=sys.stderr)
    print(f"{len(files) - len(problems)} files through Opus {a.kbps} kbps"
          + (f" with noise at {a.snr_db} dB SNR" if a.snr_db is not None else "")
          + f" → {out} ({len(problems)} skipped)")


if __name__ == "__main__":
    main()
