"""Reads `kurento-tap results --format jsonl` from stdin; prints the latest result per participant
once a second. Argument: seconds to run (the demo's limit)."""
import json
import sys
import time

limit = float(sys.argv[1]) if len(sys.argv) > 1 else float("inf")
latest, last_print, started = {}, 0.0, time.time()
for line in sys.stdin:
    r = json.loads(line)
    latest[(r["room"], r["participant"], r["model"])] = r
    now = time.time()
    if now - last_print >= 1.0:
        last_print = now
        for (room, who, model), r in sorted(latest.items()):
            labels = "  ".join(f"{k} {v:.3f}" for k, v in sorted(r["labels"].items()))
            print(f"{room}/{who:<8} {model}@{r['version']}  {labels}  "
                  f"capture->result {r['latency_ms']:6.1f} ms  inference {r['inference_ms']:.3f} ms", flush=True)
    if now - started > limit:
        break
