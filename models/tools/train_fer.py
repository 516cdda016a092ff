"""Trains fer_tap_cnn.onnx, kurento-tap's facial-emotion classifier, on FER2013's train split, CPU
only, in well under an hour on two cores; exports it with the contract of the bundled nets
(N×64×64×1 grey in [-1, 1] → 7 probabilities in fer-worker's LABELS order).

    python models/tools/train_fer.py --data DIR --out models/fer_tap_cnn.onnx [--epochs 30]

DIR holds FER2013 as images: DIR/train/<class>/*.png|jpg (48×48 grey), as in the public repository
RecepTahirGunlu/Duygu-Tanima (fetch it; do not commit it). The test split is never read here:
`fer-worker evaluate DIR/test --net tap` measures the result (docs/models.md).

Choices (measured, docs/models.md): disgust is left out of training (its train folder is mostly
augmented copies of a few hundred faces; the test split is scored on 6 classes) and exported with a
constant near-zero probability; 10 % of train, stratified, is held out for validation and picks the
best epoch; augmentation is a random affine (±10°, ×0.9–1.1, ±6 % shift) and a horizontal flip on
the batch; label smoothing 0.1; AdamW with a one-cycle schedule. Fixed seeds; the run prints the
validation accuracy per epoch and the sha256 of the export.
"""
import argparse
import hashlib
import pathlib
import random
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image

LABELS = ["angry", "disgust", "fear", "happy", "sad", "surprise", "neutral"]
TRAINED = [l for l in LABELS if l != "disgust"]


def load_split(root: pathlib.Path):
    xs, ys = [], []
    for k, label in enumerate(TRAINED):
        files = sorted(p for p in (root / label).iterdir() if p.suffix.lower() in (".png", ".jpg", ".jpeg"))
        for f in files:
            img = Image.open(f).convert("L")
            if img.size != (48, 48):
                img = img.resize((48, 48), Image.BILINEAR)
            xs.append(np.asarray(img, dtype=np.uint8))
            ys.append(k)
    return np.stack(xs), np.array(ys, dtype=np.int64)


def to_input(x_uint8: torch.Tensor) -> torch.Tensor:
    """48×48 uint8 → 64×64 in [-1, 1], bilinear at pixel centres (as the worker's gray_crop)."""
    x = x_uint8.float().unsqueeze(1) / 255.0
    x = F.interpolate(x, size=(64, 64), mode="bilinear", align_corners=False)
    return (x - 0.5) * 2.0


def augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    n = x.shape[0]
    angle = (torch.rand(n, generator=gen) * 2 - 1) * (10 * np.pi / 180)
    scale = 0.9 + torch.rand(n, generator=gen) * 0.2
    shift = (torch.rand(n, 2, generator=gen) * 2 - 1) * 0.12
    flip = torch.where(torch.rand(n, generator=gen) < 0.5, -1.0, 1.0)
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0] = cos * flip
    theta[:, 0, 1] = -sin
    theta[:, 1, 0] = sin * flip
    theta[:, 1, 1] = cos
    theta[:, :, 2] = shift
    grid = F.affine_grid(theta, x.shape, align_corners=False)
    out = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
    # Brightness and contrast, as webcams differ.
    gain = 0.8 + torch.rand(n, 1, 1, 1, generator=gen) * 0.4
    bias = (torch.rand(n, 1, 1, 1, generator=gen) * 2 - 1) * 0.2
    return (out * gain + bias).clamp(-1, 1)


def block(cin, cout):
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
        nn.Conv2d(cout, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
    )


class TapCnn(nn.Module):
    """A small VGG-style net: a strided stem to 32×32, three double-conv blocks, global pooling."""

    def __init__(self, width=24, classes=len(TRAINED)):
        super().__init__()
        w = width
        self.stem = nn.Sequential(nn.Conv2d(1, w, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(w), nn.ReLU(inplace=True))
        self.b1 = block(w, w)
        self.b2 = block(w, 2 * w)
        self.b3 = block(2 * w, 4 * w)
        self.b4 = nn.Sequential(nn.Conv2d(4 * w, 8 * w, 3, padding=1, bias=False), nn.BatchNorm2d(8 * w), nn.ReLU(inplace=True))
        self.drop = nn.Dropout(0.3)
        self.fc = nn.Linear(8 * w, classes)

    def forward(self, x):
        x = self.stem(x)
        x = F.max_pool2d(self.b1(x), 2)
        x = F.max_pool2d(self.b2(x), 2)
        x = F.max_pool2d(self.b3(x), 2)
        x = self.b4(x)
        x = x.mean(dim=(2, 3))
        return self.fc(self.drop(x))


class Exported(nn.Module):
    """The worker's contract: NHWC input, 7 probabilities in LABELS order (disgust ~0)."""

    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, x):
        logits = self.net(x.permute(0, 3, 1, 2))
        disgust = torch.full_like(logits[:, :1], -30.0)
        full = torch.cat([logits[:, :1], disgust, logits[:, 1:]], dim=1)
        return torch.softmax(full, dim=1)


def evaluate(net, x, y, batch=512):
    net.eval()
    right = 0
    with torch.no_grad():
        for i in range(0, len(x), batch):
            logits = net(to_input(x[i:i + batch]))
            right += (logits.argmax(1) == y[i:i + batch]).sum().item()
    return right / len(x)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", required=True, type=pathlib.Path)
    ap.add_argument("--out", required=True, type=pathlib.Path)
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--width", type=int, default=24)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)
    t0 = time.time()
    x, y = load_split(args.data / "train")
    # Stratified 10 % validation, fixed seed.
    rng = np.random.default_rng(0)
    val_idx = np.concatenate([rng.permutation(np.where(y == k)[0])[: len(np.where(y == k)[0]) // 10] for k in range(len(TRAINED))])
    mask = np.ones(len(y), dtype=bool)
    mask[val_idx] = False
    xt, yt = torch.from_numpy(x[mask]), torch.from_numpy(y[mask])
    xv, yv = torch.from_numpy(x[~mask]), torch.from_numpy(y[~mask])
    print(f"train {len(yt)}, validation {len(yv)} ({time.time() - t0:.0f} s to load)", flush=True)

    net = TapCnn(width=args.width)
    params = sum(p.numel() for p in net.parameters())
    opt = torch.optim.AdamW(net.parameters(), lr=args.lr, weight_decay=5e-4)
    steps = args.epochs * ((len(yt) + args.batch - 1) // args.batch)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=args.lr, total_steps=steps, pct_start=0.2)
    loss_fn = nn.CrossEntropyLoss(label_smoothing=0.1)
    gen = torch.Generator().manual_seed(0)
    best, best_state = -1.0, None
    for epoch in range(args.epochs):
        net.train()
        order = torch.randperm(len(yt), generator=gen)
        started = time.time()
        total = 0.0
        for i in range(0, len(order), args.batch):
            idx = order[i:i + args.batch]
            inp = augment(to_input(xt[idx]), gen)
            loss = loss_fn(net(inp), yt[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item() * len(idx)
        acc = evaluate(net, xv, yv)
        if acc > best:
            best, best_state = acc, {k: v.clone() for k, v in net.state_dict().items()}
        print(f"epoch {epoch + 1}/{args.epochs}: loss {total / len(yt):.3f}, validation {acc * 100:.1f} % "
              f"({time.time() - started:.0f} s)", flush=True)
    net.load_state_dict(best_state)
    net.eval()
    model = Exported(net)
    dummy = torch.zeros(1, 64, 64, 1)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    torch.onnx.export(model, dummy, str(args.out), input_names=["input"], output_names=["probabilities"],
                      dynamic_axes={"input": {0: "n"}, "probabilities": {0: "n"}}, opset_version=17,
                      dynamo=False)
    digest = hashlib.sha256(args.out.read_bytes()).hexdigest()
    print(f"best validation accuracy {best * 100:.1f} %, {params} parameters, "
          f"{(time.time() - t0) / 60:.1f} min in all")
    print(f"wrote {args.out} sha256 {digest}")


if __name__ == "__main__":
    main()
