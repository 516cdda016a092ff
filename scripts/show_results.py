"""Reads `kurento-tap results --format jsonl` from stdin; once a second prints each participant's
latest result per model, computed by the workers, and each room's latest mood. Arguments: seconds to
run (the demo's limit), then the command that prints room moods as JSON lines
(`kurento-tap results --kind room --follow --format jsonl ...`)."""
import json
import os
import subprocess
import urllib.request
import sys
import threading
import time

moods = {}
moods_lock = threading.Lock()


def follow_moods(cmd):
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    for line in proc.stdout:
        try:
            m = json.loads(line)
        except ValueError:
            continue
        with moods_lock:
            moods[m["room"]] = m


def describe_mood(m):
    who = f"presenter {m['presenter']} ({m['presenter_source']})" if m.get("presenter") else "no presenter"
    if not m.get("published"):
        return f"{who}; waiting: {m['contributors']} of {m['participants']} contribute (min 3)"
    ex = m.get("expressions") or {}
    if m.get("valence") is None and m.get("arousal") is None and ex.get("published"):
        # The expressions policy: the room from expression outputs only.
        return f"{who}; {m['contributors']} of {m['participants']} contribute: {ex['text']}"
    arrow = {"rising": " rising", "falling": " falling", "steady": ""}
    val = "-" if m.get("valence") is None else f"{m['valence']:+.2f}{arrow.get(m.get('valence_trend'), '')}"
    aro = "-" if m.get("arousal") is None else f"{m['arousal']:.2f}{arrow.get(m.get('arousal_trend'), '')}"
    att = "-" if m.get("attentive_share") is None else f"{m['attentive_share'] * 100:.0f}%"
    emotions = ", ".join(f"{e} {n}" for e, n in sorted(m.get("emotions", {}).items())) or "none yet"
    # Face and voice disagreeing (a smile over an angry voice) are counted, not blended away.
    conflicted = f"; {m['conflicted']} with face and voice disagreeing" if m.get("conflicted") else ""
    return f"{who}; {m['contributors']} of {m['participants']} contribute: valence {val}, arousal {aro}, attentive {att}; {emotions}{conflicted}"


quality = {}


def load_quality():
    """Each model's declared accuracy (the daemon's /models): a score is not the chance of being
    right, so the demo says how often the model is (docs/models.md)."""
    url = os.environ.get("TAP_MODELS_URL")
    if not url:
        return
    # /models is a data endpoint: it needs the daemon's data token (a file, never the URL).
    headers = {}
    token_file = os.environ.get("TAP_TOKEN_FILE")
    if token_file:
        with open(token_file) as f:
            headers["Authorization"] = "Bearer " + f.read().strip()
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=2) as resp:
            for m in json.load(resp):
                if m.get("quality"):
                    quality[m["name"]] = m["quality"]
    except (OSError, ValueError):
        pass


def describe_quality(model):
    q = quality.get(model)
    if not q:
        return "accuracy not declared"
    return f"right {q['value'] * 100:.0f}% ({q['metric']}, chance {100 / q['classes']:.0f}%)"


def describe(r):
    labels, extras = r.get("labels", {}), r.get("extras") or {}
    if r["model"] == "fer":
        if extras.get("no_face"):
            return "no face"
        top = max(labels, key=labels.get)
        return f"{top} {labels[top]:.2f} ({len(extras.get('faces', []))} face)"
    if r["model"] == "voice":
        if not extras.get("speaking"):
            return f"silent (p(speech) {labels.get('speech', 0):.2f})"
        f0 = extras.get("f0_median_hz")
        pitch = f"{f0:.0f} Hz" if f0 else "unvoiced"
        # The categorical voice emotion (angry, happy, neutral, sad), or why it is withheld.
        emo = extras.get("emotion") or {}
        if emo.get("top") and not emo.get("low_confidence"):
            category = f"{emo['top']} {emo.get('confidence', 0):.2f}"
        elif emo:
            category = f"emotion unsure ({emo.get('reason') or 'no category stands out'})"
        else:
            category = "no emotion model"
        return f"{category}; {extras.get('arousal')} {extras.get('arousal_score', 0):.2f}, speech {labels.get('speech', 0):.2f}, {pitch}, {extras.get('loudness_dbfs', 0):.0f} dBFS"
    return "  ".join(f"{k} {v:.3f}" for k, v in sorted(labels.items()))


def main():
    limit = float(sys.argv[1]) if len(sys.argv) > 1 else float("inf")
    if len(sys.argv) > 2:
        threading.Thread(target=follow_moods, args=(sys.argv[2:],), daemon=True).start()
    latest, last_print, started = {}, 0.0, time.time()
    for line in sys.stdin:
        r = json.loads(line)
        latest[(r["room"], r["participant"], r["model"])] = r
        now = time.time()
        if now - last_print >= 1.0:
            if any(m not in quality for (_, _, m) in latest) and now - started < 60:
                load_quality()
            last_print = now
            for (room, who, model), r in sorted(latest.items()):
                print(f"{room}/{who:<6} {model + '@' + r['version']:<9} {describe(r):<58} capture->result {r['latency_ms']:6.1f} ms  [{describe_quality(model)}]", flush=True)
            with moods_lock:
                for room, m in sorted(moods.items()):
                    print(f"{room} room mood: {describe_mood(m)}", flush=True)
            print(flush=True)
        if now - started > limit:
            break


try:
    main()
except KeyboardInterrupt:
    pass
