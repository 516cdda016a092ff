"""Prints what went into the call through DataChannels during the demo: the daemon's counters (from
its /metrics) and, per participant, the last message their (simulated) browser received (from the
simulator's log). Arguments: the daemon's metrics URL, the simulator's log file."""
import json
import re
import sys
import urllib.request

metrics_url, sim_log = sys.argv[1], sys.argv[2]
try:
    text = urllib.request.urlopen(metrics_url, timeout=2).read().decode()
except OSError as e:
    print(f"DataChannels: daemon metrics unavailable ({e})")
    sys.exit(0)
open_now, outcomes = 0, {}
for line in text.splitlines():
    if line.startswith("kurento_tap_datachannels_open "):
        open_now = int(float(line.split()[-1]))
    m = re.match(r'kurento_tap_datachannel_messages_total\{outcome="(\w+)"\} (\S+)', line)
    if m:
        outcomes[m.group(1)] = int(float(m.group(2)))
dropped = ", ".join(f"{k} {v}" for k, v in sorted(outcomes.items()) if k != "sent") or "none"
print(f"DataChannels: {open_now} open; {outcomes.get('sent', 0)} messages sent into the call "
      f"(paced; not sent: {dropped})")
last = {}
ansi = re.compile(r"\x1b\[[0-9;]*m")
try:
    for line in open(sim_log, encoding="utf-8", errors="replace"):
        line = ansi.sub("", line)
        if "DataChannel message delivered" not in line:
            continue
        who = re.search(r"participant=\"?([^\"\s]+)", line)
        msg = line[line.find("text=") + len("text="):].strip() if "text=" in line else ""
        msg = msg[: msg.rfind("}") + 1]
        if who and msg:
            last[who.group(1)] = msg
except OSError:
    pass
for who, msg in sorted(last.items()):
    try:
        m = json.loads(msg)
        what = f"{m['model']}: {m.get('top') or 'no label'}"
        if m.get("score") is not None:
            what += f" {m['score']:.2f}"
        print(f"  {who}'s browser last received: {what} (about {m['participant']}, {len(msg)} bytes)")
    except (ValueError, KeyError):
        print(f"  {who}'s browser last received: {msg[:120]}")
