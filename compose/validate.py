"""Checks compose/ without a container engine: the compose file's structure and references, the
Dockerfiles, the Prometheus targets against the ports the services listen on, and that every metric
the Grafana dashboard queries is one the daemon or the workers export.

    python compose/validate.py --metrics NAMES_FILE      (NAMES_FILE: one exported sample name a line)
Prints `compose: ok` or the problems, exit 1."""
import argparse
import json
import pathlib
import re
import sys

import yaml

here = pathlib.Path(__file__).resolve().parent
root = here.parent
problems = []


def check(cond, msg):
    if not cond:
        problems.append(msg)


parser = argparse.ArgumentParser()
parser.add_argument("--metrics", required=True)
args = parser.parse_args()
exported = set(pathlib.Path(args.metrics).read_text().split())

compose = yaml.safe_load((here / "docker-compose.yml").read_text())
services = compose.get("services", {})
for name in ["kms", "nats", "kurento-tap", "fer-worker", "audio-worker", "prometheus", "grafana"]:
    check(name in services, f"service {name} missing")
for name in ["kms", "kurento-tap"]:
    check(services.get(name, {}).get("network_mode") == "host", f"{name} must use host networking")
for name, svc in services.items():
    build = svc.get("build")
    if build:
        context = (here / build["context"]).resolve()
        check((context / build["dockerfile"]).is_file(), f"{name}: Dockerfile {build['dockerfile']} not found")
    for vol in svc.get("volumes", []):
        src = vol.split(":")[0]
        if src.startswith("."):
            check((here / src).exists(), f"{name}: volume source {src} not found")
    for dep in svc.get("depends_on", []):
        check(dep in services, f"{name} depends on unknown service {dep}")
    if name.endswith("-worker"):
        check(svc.get("environment", {}).get("ORT_DISABLE_TELEMETRY") == "1", f"{name}: ORT_DISABLE_TELEMETRY must be 1")
for vol in compose.get("volumes", {}):
    check(any(v.split(":")[0] == vol for s in services.values() for v in s.get("volumes", [])), f"volume {vol} unused")

# The data endpoints (every participant's results): always with a credential, on loopback too (the
# daemon is on the host network: anything on the host reaches its loopback).
tap = services.get("kurento-tap", {})
tap_env = tap.get("environment", {})
data = tap_env.get("KURENTO_TAP_DATA_HTTP") or tap_env.get("KURENTO_TAP_HTTP", "")
check("KURENTO_TAP_TOKEN_FILE" in tap_env or "KURENTO_TAP_AUTH_PROXY_HEADER" in tap_env,
      f"kurento-tap: data endpoints on {data} without a token file or a trusted proxy header")
token_file = str(tap_env.get("KURENTO_TAP_TOKEN_FILE", ""))
if token_file.startswith("/run/secrets/"):
    secret = token_file.rsplit("/", 1)[1]
    check(secret in tap.get("secrets", []), f"kurento-tap: token file {token_file} but no secret {secret}")
    src = compose.get("secrets", {}).get(secret, {}).get("file", "")
    check(src.startswith("./secrets/"), f"secret {secret}: expected a file under compose/secrets/, got {src!r}")
    ignore = here / "secrets" / ".gitignore"
    check(ignore.is_file() and "*" in ignore.read_text().split(),
          "compose/secrets/.gitignore must keep tokens out of git")
for svc_name, svc in services.items():
    env = svc.get("environment", {})
    check("KURENTO_TAP_TOKEN" not in env, f"{svc_name}: a token in the compose file; use a secret file")

nats_conf = (here / "nats" / "nats.conf").read_text()
check("jetstream" in nats_conf and "websocket" in nats_conf, "nats.conf needs jetstream and websocket")

# Prometheus scrapes the ports the services serve /metrics on.
listen = {"kurento-tap": services["kurento-tap"]["environment"]["KURENTO_TAP_HTTP"].rsplit(":", 1)[1]}
for name in ["fer-worker", "audio-worker"]:
    cmd = services[name]["command"]
    listen[name] = cmd[cmd.index("--metrics") + 1].rsplit(":", 1)[1]
prom = yaml.safe_load((here / "prometheus.yml").read_text())
targets = {t for job in prom["scrape_configs"] for sc in job["static_configs"] for t in sc["targets"]}
for name, port in listen.items():
    check(any(t.endswith(":" + port) for t in targets), f"prometheus does not scrape {name} on port {port}")

for dockerfile in ["daemon.Dockerfile", "workers.Dockerfile"]:
    text = (here / dockerfile).read_text()
    check("--locked" in text, f"{dockerfile}: build with --locked")
workers = (here / "workers.Dockerfile").read_text()
check("onnxruntime==1.31.1" in workers and "ORT_DISABLE_TELEMETRY=1" in workers, "workers.Dockerfile: ORT 1.31.1 with telemetry off")

dash = json.loads((here / "grafana" / "dashboards" / "kurento-tap.json").read_text())
queried = set()
for panel in dash["panels"]:
    check(panel.get("datasource", {}).get("uid") == "prometheus", f"panel {panel.get('title')}: datasource")
    for target in panel.get("targets", []):
        for metric in re.findall(r"\b((?:kurento_tap|tap_worker)_[a-z_]+)", target["expr"]):
            queried.add(metric)
check(queried, "the dashboard queries no metric")
for metric in sorted(queried):
    check(metric in exported, f"dashboard queries {metric}, which nothing exports")
ds = yaml.safe_load((here / "grafana" / "provisioning" / "datasources" / "prometheus.yml").read_text())
check(ds["datasources"][0]["uid"] == "prometheus", "datasource uid must be prometheus")

if problems:
    print("compose: problems:\n  " + "\n  ".join(problems))
    sys.exit(1)
print(f"compose: ok ({len(services)} services, {len(queried)} dashboard metrics, all exported)")
