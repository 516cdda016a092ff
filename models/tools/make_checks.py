"""Writes the numeric self-check of every shipped model: `models/<model>.check.json` holds a
reference input and the outputs the fp32 model computes for it (onnxruntime 1.31.1, this script),
and the tolerance a correct run stays within. The workers run the reference input through the model
they load and refuse it (or, for an optional precision, fall back to fp32) when its outputs stray:
a model that computes wrong answers on some CPU (int8 kernels differ between CPUs with and without
VNNI) must never run silently. classifier_sdk::onnx::SelfCheck reads these files.

    python3 -m venv /tmp/q && /tmp/q/bin/pip install onnx==1.23.2 onnxruntime==1.31.1 numpy pillow
    /tmp/q/bin/python models/tools/make_checks.py          # writes the files
    /tmp/q/bin/python models/tools/make_checks.py --report # prints each model's error, writes nothing

Reference inputs come from the repository's committed test images (classifiers/fer-worker/testdata)
and a synthetic vowel for the voice activity detector, so the check exercises the model on the kind
of input it serves (a face for the detector, a face crop for the emotion nets, speech for the VAD).

The error measure is, per output tensor, the relative L2 error ||y - y_ref|| / ||y_ref||; the
tolerance bounds the largest over the outputs. fp32 models get 1e-3 (different CPUs' fp32 kernels
differ by ~1e-6); the int8 detector gets 0.3: its quantization error is 0.05-0.16 per output on
CPUs with and without VNNI (identical on both with 7-bit weights), while the 8-bit-weight model
that found no face on an AVX2-only CPU was off by 0.15-9.5 there (0.81 and 9.5 on two outputs).
"""
import base64
import json
import os
import sys

import numpy as np
import onnxruntime as ort
from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from quantize import letterbox  # noqa: E402  (the same letterbox the int8 calibration uses)

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MODELS = os.path.join(ROOT, "models")
TESTDATA = os.path.join(ROOT, "classifiers", "fer-worker", "testdata")


def b64(a, dtype):
    return base64.b64encode(np.ascontiguousarray(a, dtype=dtype).tobytes()).decode()


def frame_with_face():
    src = Image.open(os.path.join(TESTDATA, "astronaut_256.png")).convert("RGB")
    img = src.resize((200, 200), Image.BILINEAR)
    frame = Image.new("RGB", (320, 240), (120, 118, 110))
    frame.paste(img, (60, 20))
    return np.asarray(frame)


def detector_input():
    x = letterbox(frame_with_face())  # [-1, 1], NHWC, from 8-bit pixels
    # Stored as the 8-bit values they came from (x = u8 / 127.5 - 1): exact, and a quarter the size.
    u8 = np.clip(np.rint((x + 1.0) * 127.5), 0, 255).astype(np.uint8)
    return {"name": "input:0", "shape": list(x.shape), "dtype": "f32", "encoding": "u8",
            "scale": 1.0 / 127.5, "offset": -1.0, "data": b64(u8, np.uint8)}, u8.astype(np.float32) / 127.5 - 1.0


def crop_input(name):
    g = np.asarray(Image.open(os.path.join(TESTDATA, "astronaut_256.png")).convert("L"))
    # The astronaut's face: about (85..140, 35..95) in the 256x256 picture.
    c = Image.fromarray(g[30:100, 78:148]).resize((64, 64), Image.BILINEAR)
    u8 = np.asarray(c).astype(np.uint8)
    x = (u8.astype(np.float32) / 255.0 - 0.5) * 2.0
    return {"name": name, "shape": [1, 64, 64, 1], "dtype": "f32", "encoding": "u8",
            "scale": 2.0 / 255.0, "offset": -1.0, "data": b64(u8, np.uint8)}, x[None, :, :, None]


def vad_inputs():
    rate, n = 16000, 64 + 512
    t = np.arange(n) / rate
    # A vowel-like tone: 140 Hz fundamental and harmonics, formant-weighted.
    x = sum(a * np.sin(2 * np.pi * 140 * k * t) for k, a in [(1, 0.5), (2, 0.3), (3, 0.25), (5, 0.15), (7, 0.1)])
    x = (0.3 * x).astype(np.float32)[None]
    state = np.zeros((2, 1, 128), np.float32)
    sr = np.array(16000, np.int64)
    specs = [
        {"name": "input", "shape": [1, n], "dtype": "f32", "data": b64(x, "<f4")},
        {"name": "state", "shape": [2, 1, 128], "dtype": "f32", "data": b64(state, "<f4")},
        {"name": "sr", "shape": [], "dtype": "i64", "data": b64(sr, "<i8")},
    ]
    return specs, {"input": x, "state": state, "sr": sr}


def session(path):
    o = ort.SessionOptions()
    o.intra_op_num_threads = 1
    return ort.InferenceSession(path, o, providers=["CPUExecutionProvider"])


def rel_errors(got, ref):
    return {k: float(np.linalg.norm(got[k] - ref[k]) / max(np.linalg.norm(ref[k]), 1e-12)) for k in ref}


def run(path, feeds):
    s = session(path)
    names = [o.name for o in s.get_outputs()]
    return dict(zip(names, s.run(names, feeds)))


def main():
    report = "--report" in sys.argv
    d_spec, d_x = detector_input()
    jobs = []
    jobs.append(("blazeface_front_128.onnx", "blazeface_front_128.onnx", [d_spec], {"input:0": d_x}, 1e-3))
    jobs.append(("blazeface_front_128_int8.onnx", "blazeface_front_128.onnx", [d_spec], {"input:0": d_x}, 0.3))
    for model in ["fer_mini_xception.onnx", "fer_tap_cnn.onnx", "human_emotion.onnx"]:
        name = session(os.path.join(MODELS, model)).get_inputs()[0].name
        spec, x = crop_input(name)
        jobs.append((model, model, [spec], {name: x}, 1e-3))
    v_specs, v_feeds = vad_inputs()
    jobs.append(("silero_vad.onnx", "silero_vad.onnx", v_specs, v_feeds, 1e-3))
    for model, reference_model, specs, feeds, tol in jobs:
        ref = run(os.path.join(MODELS, reference_model), feeds)
        got = run(os.path.join(MODELS, model), feeds)
        err = rel_errors(got, ref)
        worst = max(err.values())
        print(f"{model}: relative L2 error per output {err} (tolerance {tol}){'  ** FAILS **' if worst > tol else ''}")
        if report:
            continue
        doc = {
            "model": model,
            "reference": f"outputs of {reference_model} (fp32) from onnxruntime {ort.__version__}, models/tools/make_checks.py",
            "tolerance_rel_l2": tol,
            "inputs": specs,
            "outputs": [{"name": k, "shape": list(v.shape), "dtype": "f32", "data": b64(v, "<f4")} for k, v in ref.items()],
        }
        with open(os.path.join(MODELS, model + ".check.json"), "w") as f:
            json.dump(doc, f, indent=1)
            f.write("\n")


if __name__ == "__main__":
    sys.exit(main())
