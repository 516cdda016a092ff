"""Reads `kurento-tap results --format jsonl` from stdin; once a second prints each participant's
latest result per model, computed by the workers. Argument: seconds to run (the demo's limit)."""
import json
import sys
import time


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
        return f"{extras.get('arousal')} {extras.get('arousal_score', 0):.2f}, speech {labels.get('speech', 0):.2f}, {pitch}, {extras.get('loudness_dbfs', 0):.0f} dBFS"
    return "  ".join(f"{k} {v:.3f}" for k, v in sorted(labels.items()))


def main():
    limit = float(sys.argv[1]) if len(sys.argv) > 1 else float("inf")
    latest, last_print, started = {}, 0.0, time.time()
    for line in sys.stdin:
        r = json.loads(line)
        latest[(r["room"], r["participant"], r["model"])] = r
        now = time.time()
        if now - last_print >= 1.0:
            last_print = now
            for (room, who, model), r in sorted(latest.items()):
                print(f"{room}/{who:<6} {model + '@' + r['version']:<9} {describe(r):<58} capture->result {r['latency_ms']:6.1f} ms", flush=True)
            print(flush=True)
        if now - started > limit:
            break


try:
    main()
except KeyboardInterrupt:
    pass
