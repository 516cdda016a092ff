#!/usr/bin/env python3
"""Trains the categorical speech-emotion model (`models/ser_tap*.onnx`) on functionals computed by
the worker's own Rust front-end (`audio-worker features DIR --out X.csv --window-ms 1000`), so
training and inference see the same numbers.

    python train_ser.py --csv all.csv --corpora emodb ravdess --out ../ser_tap.onnx   # the shipped model
    python train_ser.py --csv all.csv --corpora emodb --out ../ser_tap_emodb.onnx      # for cross-corpus
    python train_ser.py --csv all.csv --corpora emodb ravdess --report                 # figures

Each speaker's functionals are z-scored against their own causal running mean and spread (the
same update as `audio_worker::emotion::SpeakerNorm`: files in FNV order of their names, every
class heard, the current file not included; files and windows separately), starting from the
training population's. The classifier is an RBF support-vector machine with Platt-scaled
probabilities (class-balanced, C 0.3), trained on whole files and their 1 s windows; fixed seeds;
exported with skl2onnx. `SER_MODEL=lr|mlp`, `SER_SCALE=0`, `--files-only` and `--C` give the
variants compared in docs/models.md.

Figures printed (`--report`): speakers left out (10 folds of speakers) over all corpora given, per
corpus, per file, per 1 s window and per window over its utterance (as the worker serves it);
with three corpora or more, each corpus tested by a model trained on all the others; and pairwise,
trained on one corpus and tested on each other.
"""
import argparse
import csv
import json
import sys
from pathlib import Path

import warnings

import numpy as np
from sklearn.linear_model import LogisticRegression

LABELS = ["angry", "happy", "neutral", "sad"]
META = 9  # corpus,speaker,class,file,window,order,clipped,high_band,frames
import os
PRIOR_WEIGHT = float(os.environ.get("SER_PRIOR", "1"))
DROPPED = []
DROP = [p for p in os.environ.get("SER_DROP", "speech_ratio").split(",") if p]
# Each voice z-scored by its own running standard deviation too (not only its mean).
SCALE = os.environ.get("SER_SCALE", "1") == "1"
MEMORY = 200.0


def load(paths):
    rows = []
    for p in paths:
        with open(p) as f:
            r = csv.reader(f)
            header = next(r)
            for row in r:
                rows.append(row)
    names = header[META:]
    corpus = np.array([r[0] for r in rows])
    speaker = np.array([r[1] for r in rows])
    cls = np.array([r[2] for r in rows])
    file = np.array([r[3] for r in rows])
    window = np.array([int(r[4]) for r in rows])
    order = [int(r[5]) for r in rows]
    x = np.array([[float(v) for v in r[META:]] for r in rows], dtype=np.float64)
    # Functionals left out (weight 0, z fixed at 0): the speech ratio measures how a corpus was
    # cut (EmoDB's copy is padded to 2 s), not the voice.
    drop = [i for i, n in enumerate(names) if any(n.startswith(p) for p in DROP)]
    x[:, drop] = 0.0
    DROPPED[:] = drop
    return dict(corpus=corpus, speaker=speaker, cls=cls, file=file, window=window, order=order, x=x,
                names=names)


def population(d, mask):
    m = mask & (d["window"] == -1)
    mean = d["x"][m].mean(0)
    std = d["x"][m].std(0) + 1e-6
    return mean, std


def normalise(d, mean, std):
    """Causal per-speaker z-scores, separately for whole files (window -1) and for windows."""
    z = np.zeros_like(d["x"])
    n = len(d["x"])
    keep = 1.0 - 1.0 / MEMORY
    for level in ("file", "window"):
        idx = [i for i in range(n) if (d["window"][i] == -1) == (level == "file")]
        idx.sort(key=lambda i: (d["corpus"][i], d["speaker"][i], d["order"][i], d["window"][i]))
        state = {}
        for i in idx:
            s = d["speaker"][i]
            w, m, m2 = state.get(s, (PRIOR_WEIGHT, mean.copy(), std ** 2 * PRIOR_WEIGHT))
            x = d["x"][i]
            sd = np.sqrt(m2 / w) if SCALE else std
            z[i] = np.clip((x - m) / np.maximum(sd, 1e-6), -8, 8)
            w = w * keep + 1.0
            m2 = m2 * keep
            delta = x - m
            m = m + delta / w
            m2 = m2 + delta * (x - m)
            state[s] = (w, m, m2)
    return z


def fit(z, y, c):
    kind = os.environ.get("SER_MODEL", "svc")
    if kind == "svc":
        from sklearn.svm import SVC
        # SVC(probability=True) is deprecated from scikit-learn 1.9 on but still what skl2onnx
        # converts (Platt scaling inside the ONNX graph).
        warnings.filterwarnings("ignore", message=".*probability.*deprecated", category=FutureWarning)
        clf = SVC(C=c, kernel="rbf", gamma="scale", probability=True, class_weight="balanced",
                  random_state=0)
    elif kind == "mlp":
        from sklearn.neural_network import MLPClassifier
        clf = MLPClassifier(hidden_layer_sizes=(64,), alpha=c, max_iter=500, early_stopping=False,
                            random_state=0)
    else:
        clf = LogisticRegression(C=c, max_iter=3000, class_weight="balanced", random_state=0)
    clf.fit(z, y)
    return clf


def predict(clf, z):
    """The label of the highest probability, as the worker reads the ONNX output (an SVC's own
    `predict` votes, which can differ from its Platt-scaled probabilities)."""
    return clf.classes_[np.argmax(clf.predict_proba(z), axis=1)]


def uar(truth, pred):
    r = [np.mean(pred[truth == c] == c) for c in LABELS if np.any(truth == c)]
    return float(np.mean(r)), dict(zip([c for c in LABELS if np.any(truth == c)], r))


def train_rows(d, mask, windows):
    m = mask & np.isin(d["cls"], LABELS)
    if not windows:
        m &= d["window"] == -1
    return m


HORIZON_WINDOWS = 3  # `Utterance`: windows that started within 2 s of the newest (1 s windows)


def utterance_predictions(d, clf, z, rows):
    """Per window, the verdict over its utterance so far as the worker serves it: the mean of the
    probabilities of the file's windows that started within the horizon (`emotion::Utterance`)."""
    idx = np.where(rows & (d["window"] >= 0))[0]
    p = clf.predict_proba(z[idx])
    key = {}
    for j in np.lexsort((d["window"][idx], d["file"][idx], d["speaker"][idx])):
        key.setdefault((d["speaker"][idx][j], d["file"][idx][j]), []).append(j)
    pred = np.empty(len(idx), dtype=object)
    for js in key.values():
        for n, j in enumerate(js):
            recent = js[max(0, n - HORIZON_WINDOWS + 1):n + 1]
            pred[j] = clf.classes_[int(np.argmax(p[recent].mean(0)))]
    return idx, pred.astype(str)


def line(title, truth, pred):
    u, r = uar(truth, pred)
    return (f"  {title:34s} UAR {u*100:5.1f} %  " + " ".join(f"{k} {v*100:.1f}" for k, v in r.items())
            + f"  (n={len(truth)})")


def figures(d, clf, z, rows, title):
    """Per file, per window alone, per window over its utterance."""
    out = []
    f = rows & (d["window"] == -1)
    out.append(line(f"{title} file", d["cls"][f], predict(clf, z[f])))
    w = rows & (d["window"] >= 0)
    out.append(line(f"{title} 1 s window", d["cls"][w], predict(clf, z[w])))
    idx, pred = utterance_predictions(d, clf, z, rows)
    out.append(line(f"{title} utterance", d["cls"][idx], pred))
    return out


FOLDS = 10


def report(d, c, windows):
    corpora = sorted(set(d["corpus"]))
    labelled = np.isin(d["cls"], LABELS)
    print(f"C={c} model={os.environ.get('SER_MODEL', 'svc')} scale={SCALE} train on windows too={windows}")
    # Leave speakers out over everything: speakers in FOLDS groups (deterministic: sorted, dealt
    # round-robin), each group tested by a model that never heard it.
    speakers = sorted(set(d["speaker"]))
    fold_of = {s: i % FOLDS for i, s in enumerate(speakers)}
    fold = np.array([fold_of[s] for s in d["speaker"]])
    pred = np.array([""] * len(d["x"]), dtype=object)
    upred = {}
    for k in range(min(FOLDS, len(speakers))):
        train = fold != k
        mean, std = population(d, train)
        z = normalise(d, mean, std)
        m = train_rows(d, train, windows)
        clf = fit(z[m], d["cls"][m], c)
        test = (fold == k) & labelled
        pred[test] = predict(clf, z[test])
        idx, p = utterance_predictions(d, clf, z, test)
        upred.update(zip(idx, p))
    for corpus in corpora + ["all"]:
        in_corpus = (d["corpus"] == corpus) | (corpus == "all")
        f = labelled & in_corpus & (d["window"] == -1)
        print(line(f"speakers out {corpus} file", d["cls"][f], pred[f].astype(str)))
        w = labelled & in_corpus & (d["window"] >= 0)
        print(line(f"speakers out {corpus} 1 s window", d["cls"][w], pred[w].astype(str)))
        u = np.array([i for i in np.where(w)[0] if i in upred])
        print(line(f"speakers out {corpus} utterance", d["cls"][u],
                   np.array([upred[i] for i in u])))
    # Every corpus not trained on: trained on all the others.
    if len(corpora) > 2:
        for b in corpora:
            train = d["corpus"] != b
            mean, std = population(d, train)
            z = normalise(d, mean, std)
            m = train_rows(d, train, windows)
            clf = fit(z[m], d["cls"][m], c)
            for l in figures(d, clf, z, labelled & (d["corpus"] == b), f"others -> {b}"):
                print(l)
    # Pairwise: trained on one corpus, tested on each other.
    if os.environ.get("SER_PAIRWISE", "1") == "1":
        for a in corpora:
            train = d["corpus"] == a
            mean, std = population(d, train)
            z = normalise(d, mean, std)
            m = train_rows(d, train, windows)
            clf = fit(z[m], d["cls"][m], c)
            for b in corpora:
                if b != a:
                    for l in figures(d, clf, z, labelled & (d["corpus"] == b), f"{a} -> {b}"):
                        print(l)


HIGH_AROUSAL = {"angry", "happy", "fear", "surprise"}
LOW_AROUSAL = {"sad", "neutral", "calm", "boredom"}


def report_arousal(d, c):
    """Arousal high/low from the same functionals, trained on one corpus and tested on each other,
    balanced accuracy (the comparison with the pitch model in docs/models.md)."""
    y = np.array([1 if k in HIGH_AROUSAL else 0 if k in LOW_AROUSAL else -1 for k in d["cls"]])
    corpora = sorted(set(d["corpus"]))
    for a in corpora:
        train = d["corpus"] == a
        mean, std = population(d, train)
        z = normalise(d, mean, std)
        m = train & (y >= 0) & (d["window"] == -1)
        clf = fit(z[m], y[m], c)
        for b in corpora:
            if b == a:
                continue
            for level, lm in (("file", d["window"] == -1), ("1 s window", d["window"] >= 0)):
                t = (d["corpus"] == b) & (y >= 0) & lm
                p = predict(clf, z[t])
                acc = (np.mean(p[y[t] == 1] == 1) + np.mean(p[y[t] == 0] == 0)) / 2
                print(f"  arousal {a} -> {b} {level:10s} balanced {acc * 100:5.1f} %  (n={t.sum()})")


def export(d, c, windows, out):
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import FloatTensorType
    import onnx

    everything = np.ones(len(d["x"]), dtype=bool)
    mean, std = population(d, everything)
    z = normalise(d, mean, std)
    m = train_rows(d, everything, windows)
    clf = fit(z[m], d["cls"][m], c)
    assert list(clf.classes_) == LABELS, clf.classes_
    model = convert_sklearn(clf, initial_types=[("features", FloatTensorType([None, z.shape[1]]))],
                            options={id(clf): {"zipmap": False}}, target_opset=17)
    # Keep only the probabilities output.
    for o in list(model.graph.output):
        if o.name != "probabilities":
            model.graph.output.remove(o)
    onnx.checker.check_model(model)
    out = Path(out)
    out.write_bytes(model.SerializeToString())
    dist = (z ** 2).mean(1)
    # Left-out functionals: a huge standard deviation makes their z-scores 0 in the worker too.
    mean[DROPPED] = 0.0
    std[DROPPED] = 1e6
    card = dict(
        labels=LABELS, mean=[float(v) for v in mean], std=[float(v) for v in std],
        prior_weight=PRIOR_WEIGHT, memory=MEMORY, scale=SCALE,
        ood_threshold=float(np.percentile(dist, 99.5) * 1.5),
        corpora=sorted(set(d["corpus"])), speakers=sorted(set(d["speaker"])),
        input="features", output="probabilities",
        dropped=[d["names"][i] for i in DROPPED],
        trained=dict(C=c, windows=windows, model=os.environ.get("SER_MODEL", "svc"), files=int(((d["window"] == -1) & m).sum()),
                     rows=int(m.sum()), tool="models/tools/train_ser.py"),
    )
    out.with_suffix(".json").write_text(json.dumps(card, indent=1) + "\n")
    # Self-check reference: the first angry file's z-scores and onnxruntime's output.
    import onnxruntime as ort
    i = int(np.where((d["cls"] == "angry") & (d["window"] == -1))[0][0])
    ref = z[i:i + 1].astype(np.float32)
    sess = ort.InferenceSession(str(out))
    p = sess.run(["probabilities"], {"features": ref})[0]
    import base64

    def b64(a):
        return base64.b64encode(np.ascontiguousarray(a, dtype="<f4").tobytes()).decode()

    # The format of models/tools/make_checks.py (read by classifier-sdk at load).
    check = {
        "model": out.name,
        "reference": f"outputs of {out.name} (fp32) from onnxruntime {ort.__version__}, "
                     "models/tools/train_ser.py (an angry EmoDB file's z-scores)",
        "tolerance_rel_l2": 1e-3,
        "inputs": [{"name": "features", "shape": list(ref.shape), "dtype": "f32", "data": b64(ref)}],
        "outputs": [{"name": "probabilities", "shape": list(p.shape), "dtype": "f32", "data": b64(p)}],
    }
    Path(str(out) + ".check.json").write_text(json.dumps(check, indent=1) + "\n")
    print(f"wrote {out} ({out.stat().st_size} bytes), its card and self-check; reference p = {p}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--csv", nargs="+", required=True)
    ap.add_argument("--out")
    ap.add_argument("--report", action="store_true")
    ap.add_argument("--C", type=float, nargs="+", default=[0.3])
    ap.add_argument("--files-only", action="store_true",
                    help="train on whole files only (default: 1-s windows as well, the unit served)")
    ap.add_argument("--corpora", nargs="+", help="use only these corpora of the CSVs")
    ap.add_argument("--report-arousal", action="store_true",
                    help="arousal high/low from the functionals, corpus to corpus")
    a = ap.parse_args()
    a.windows = not a.files_only
    np.random.seed(0)
    d = load(a.csv)
    if a.corpora:
        keep = np.isin(d["corpus"], a.corpora)
        for k in ("corpus", "speaker", "cls", "file", "window", "x"):
            d[k] = d[k][keep]
        d["order"] = [o for o, k in zip(d["order"], keep) if k]
    print(f"{len(d['x'])} rows, {d['x'].shape[1]} features, corpora {sorted(set(d['corpus']))}",
          file=sys.stderr)
    if a.report:
        for c in a.C:
            report(d, c, a.windows)
    if a.report_arousal:
        for c in a.C:
            report_arousal(d, c)
    if a.out:
        export(d, a.C[0], a.windows, a.out)


if __name__ == "__main__":
    main()
