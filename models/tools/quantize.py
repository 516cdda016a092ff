"""Produces the int8 version of the vendored face detector, offline (`fer-worker --detector-precision
int8` selects it). The FER2013 mini-XCEPTION is not shipped quantized: this same recipe gave a model
whose top label disagreed with fp32 on every frame of the moving-face clip, and it was slower
(0.79 against 0.44 ms): its separable convolutions do not gain from QDQ int8 on this CPU.

    python3 -m venv /tmp/q && /tmp/q/bin/pip install onnx==1.23.2 onnxruntime==1.31.1 numpy pillow
    /tmp/q/bin/python models/tools/quantize.py

Static QDQ quantization with onnxruntime.quantization (int8 weights per channel, uint8 activations),
calibrated on frames built from the repository's committed test images only (the astronaut photo
and two_faces.png from scikit-image's data, scaled, shifted, mirrored, brightened and darkened, as
classifiers/fer-worker/testdata/make_testdata.py describes their origin). Prints the sha256 of each
output for models/PROVENANCE.md and classifiers/fer-worker/src/lib.rs.
"""
import hashlib
import os
import sys

import numpy as np
import onnx
from onnx import version_converter
from PIL import Image, ImageEnhance, ImageOps
from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
from onnxruntime.quantization.shape_inference import quant_pre_process

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MODELS = os.path.join(ROOT, "models")
TESTDATA = os.path.join(ROOT, "classifiers", "fer-worker", "testdata")


def variants():
    """Frames (RGB, uint8) a webcam participant could send, from the committed images."""
    out = []
    for name in ["astronaut_256.png", "two_faces.png"]:
        src = Image.open(os.path.join(TESTDATA, name)).convert("RGB")
        for side in [160, 200, 240, 300]:
            for dx in [-40, 0, 40]:
                for flip in [False, True]:
                    for light in [0.6, 1.0, 1.4]:
                        img = src.resize((side, side), Image.BILINEAR)
                        if flip:
                            img = ImageOps.mirror(img)
                        img = ImageEnhance.Brightness(img).enhance(light)
                        frame = Image.new("RGB", (320, 240), (120, 118, 110))
                        frame.paste(img, ((320 - side) // 2 + dx, (240 - side) // 2))
                        out.append(np.asarray(frame))
    return out


def letterbox(frame, size=128):
    """As classifier_sdk::onnx::letterbox_rgb: the frame scaled into a square, [-1, 1], NHWC."""
    h, w, _ = frame.shape
    side = max(w, h)
    canvas = np.zeros((side, side, 3), dtype=np.uint8)
    canvas[(side - h) // 2:(side - h) // 2 + h, (side - w) // 2:(side - w) // 2 + w] = frame
    img = Image.fromarray(canvas).resize((size, size), Image.BILINEAR)
    x = np.asarray(img).astype(np.float32) / 127.5 - 1.0
    pad = np.full((size, size, 3), -1.0, dtype=np.float32)
    # Outside the frame the Rust letterbox leaves -1 (black after scaling): the same here.
    top = int(round((side - h) / 2 / side * size))
    bottom = size - top
    pad[top:bottom] = x[top:bottom]
    return pad[None]


def face_crops(frame):
    """Grey 64x64 crops in [-1, 1] around where faces are in the calibration frames, and around."""
    crops = []
    g = np.asarray(Image.fromarray(frame).convert("L"))
    for cx in range(100, 221, 30):
        for cy in range(60, 181, 30):
            for side in [50, 70, 90]:
                x0, y0 = cx - side // 2, cy - side // 2
                if x0 < 0 or y0 < 0 or x0 + side > 320 or y0 + side > 240:
                    continue
                c = Image.fromarray(g[y0:y0 + side, x0:x0 + side]).resize((64, 64), Image.BILINEAR)
                crops.append(((np.asarray(c).astype(np.float32) / 255.0 - 0.5) * 2.0)[None, :, :, None])
    return crops


# Why the weights are 7-bit: on x86-64 CPUs without VNNI (AVX2 only, e.g. AMD EPYC before Zen 4)
# ONNX Runtime's u8 x s8 kernels multiply with vpmaddubsw, which adds pairs of products into a
# saturating int16: with full 8-bit weights large products clip, and the detector made with the
# first recipe ("s8") found no face at all there while it was right on a VNNI CPU. 7-bit weights
# (reduce_range) keep every pair sum inside int16 on every CPU; u8 weights ("u8u8") take another
# kernel. tests/portable.rs in fer-worker runs the shipped model on an emulated AVX2-only CPU.
RECIPES = {
    "s8": dict(activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8),
    "reduce_range": dict(activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, reduce_range=True),
    "u8u8": dict(activation_type=QuantType.QUInt8, weight_type=QuantType.QUInt8),
}


class Reader(CalibrationDataReader):
    def __init__(self, name, tensors):
        self.items = iter([{name: t} for t in tensors])

    def get_next(self):
        return next(self.items, None)


def sha256(path):
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


def quantize(src, dst, input_name, tensors, recipe="reduce_range"):
    # Per-channel DequantizeLinear needs opset 13 (BlazeFace comes at 12).
    model = onnx.load(os.path.join(MODELS, src))
    if model.opset_import[0].version < 13:
        model = version_converter.convert_version(model, 13)
    up = dst + ".opset13.onnx"
    onnx.save(model, up)
    pre = dst + ".pre.onnx"
    quant_pre_process(up, pre, skip_symbolic_shape=True)
    os.remove(up)
    quantize_static(
        pre,
        os.path.join(MODELS, dst),
        Reader(input_name, tensors),
        quant_format=QuantFormat.QDQ,
        per_channel=True,
        **RECIPES[recipe],
    )
    os.remove(pre)
    print(f"{dst}: {len(tensors)} calibration inputs, sha256 {sha256(os.path.join(MODELS, dst))}")


def main():
    recipe = sys.argv[1] if len(sys.argv) > 1 else "reduce_range"
    dst = sys.argv[2] if len(sys.argv) > 2 else "blazeface_front_128_int8.onnx"
    frames = variants()
    quantize("blazeface_front_128.onnx", dst, "input:0", [letterbox(f) for f in frames], recipe)


if __name__ == "__main__":
    sys.exit(main())
