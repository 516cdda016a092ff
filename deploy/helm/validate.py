"""Checks manifests rendered from deploy/helm/kurento-tap (no cluster here to apply them): the
objects and their wiring, that every environment variable and flag is one the binaries accept, that
probes and scrapes point at ports and paths the processes serve, and that every metric the
autoscalers and the dashboard read is one the daemon or the workers export.

    python deploy/helm/validate.py --manifests FILE --metrics NAMES --labels LABELS \
        --daemon-help FILE --worker-help NAME=FILE ... [--expect keda|hpa]

NAMES: one exported sample name a line. LABELS: one `metric label,label` a line. Help files: the
`--help` output of `kurento-tap run` and of each worker's `run`.
Prints `helm: ok …` and a JSON summary of what the test then starts (the daemon's environment and
probes, each worker's arguments and probes) on the last line, or the problems, exit 1."""
import base64
import argparse
import json
import pathlib
import re
import sys

import yaml

problems = []


def check(cond, msg):
    if not cond:
        problems.append(msg)


parser = argparse.ArgumentParser()
parser.add_argument("--manifests", required=True)
parser.add_argument("--metrics", required=True)
parser.add_argument("--labels", required=True)
parser.add_argument("--daemon-help", required=True)
parser.add_argument("--worker-help", action="append", default=[])
parser.add_argument("--expect", choices=["keda", "hpa"], default="keda")
args = parser.parse_args()

exported = set(pathlib.Path(args.metrics).read_text().split())
labels = {}
for line in pathlib.Path(args.labels).read_text().splitlines():
    if line.strip():
        name, _, keys = line.partition(" ")
        labels[name] = set(k for k in keys.split(",") if k)
daemon_help = pathlib.Path(args.daemon_help).read_text()
daemon_env = set(re.findall(r"env: (KURENTO_TAP_[A-Z_]+)=", daemon_help))
check("KURENTO_TAP_KURENTO" in daemon_env, "could not read the daemon's environment variables from its --help")
worker_help = {}
for item in args.worker_help:
    cmd, _, path = item.partition("=")
    worker_help[cmd] = pathlib.Path(path).read_text()

docs = [d for d in yaml.safe_load_all(pathlib.Path(args.manifests).read_text()) if d]
by_kind = {}
for d in docs:
    check("apiVersion" in d and "kind" in d and d.get("metadata", {}).get("name"), f"object without apiVersion/kind/name: {d}")
    by_kind.setdefault(d["kind"], []).append(d)


def one(kind):
    items = by_kind.get(kind, [])
    check(len(items) == 1, f"expected one {kind}, found {len(items)}")
    return items[0] if items else {}


def container_ports(container):
    return {p["name"]: p["containerPort"] for p in container.get("ports", [])}


def probe_targets(container, where):
    """(path, port number) of each probe; checks the port name resolves."""
    out = []
    ports = container_ports(container)
    for kind in ["readinessProbe", "livenessProbe"]:
        probe = container.get(kind)
        check(probe is not None, f"{where}: no {kind}")
        if not probe:
            continue
        get = probe.get("httpGet", {})
        port = get.get("port")
        port = ports.get(port, port)
        check(isinstance(port, int), f"{where}: {kind} port {get.get('port')} is not a container port")
        out.append({"probe": kind, "path": get.get("path"), "port": port})
    return out


# The daemon: host network, its environment understood by the binary, probes on its HTTP port.
ds = one("DaemonSet")
pod = ds.get("spec", {}).get("template", {}).get("spec", {})
check(pod.get("hostNetwork") is True, "the daemon must use the host network (KMS sends RTP to it)")
check(pod.get("dnsPolicy") == "ClusterFirstWithHostNet", "a host-network pod needs dnsPolicy ClusterFirstWithHostNet to resolve services")
check(ds["spec"]["selector"]["matchLabels"].items() <= ds["spec"]["template"]["metadata"]["labels"].items(), "DaemonSet selector does not match its pods")
daemon = pod.get("containers", [{}])[0]
env = {e["name"]: e for e in daemon.get("env", [])}
for name in env:
    if name.startswith("KURENTO_TAP_"):
        check(name in daemon_env, f"daemon env {name} is not read by kurento-tap run")
for required in ["KURENTO_TAP_KURENTO", "KURENTO_TAP_NATS", "KURENTO_TAP_BIND", "KURENTO_TAP_HTTP", "KURENTO_TAP_OWNER", "KURENTO_TAP_CLUSTER"]:
    check(required in env, f"daemon env {required} missing")
http_port = int(env.get("KURENTO_TAP_HTTP", {}).get("value", "0:0").rsplit(":", 1)[1])
check(container_ports(daemon).get("http") == http_port, f"daemon containerPort http != KURENTO_TAP_HTTP port {http_port}")
check("$(NODE_NAME)" in env.get("KURENTO_TAP_OWNER", {}).get("value", "") and "NODE_NAME" in env, "daemon owner must be per node (NODE_NAME)")
check(env.get("KURENTO_TAP_BIND", {}).get("valueFrom", {}).get("fieldRef", {}).get("fieldPath") == "status.hostIP", "daemon must announce the host IP")
# The data endpoints (every participant's results): on loopback, or with a credential.
data = env.get("KURENTO_TAP_DATA_HTTP", {}).get("value", "")
check(data, "daemon env KURENTO_TAP_DATA_HTTP missing: the data endpoints would share the probes' 0.0.0.0 listener")
# Always with a credential, loopback or not (anything on the host network reaches the node's
# loopback).
check("KURENTO_TAP_TOKEN_FILE" in env or "KURENTO_TAP_AUTH_PROXY_HEADER" in env,
      f"data endpoints on {data} without a token file or a trusted proxy header")
if "KURENTO_TAP_TOKEN_FILE" in env:
    mounts = {m["mountPath"] for m in daemon.get("volumeMounts", [])}
    token_dir = env["KURENTO_TAP_TOKEN_FILE"]["value"].rsplit("/", 1)[0]
    check(token_dir in mounts, "the token file's folder is not a mounted volume")
# The token the chart made, if it made one (for the test that starts the daemon).
data_token = None
for sec in by_kind.get("Secret", []):
    if sec["metadata"]["name"].endswith("-data-token") and "token" in sec.get("data", {}):
        data_token = base64.b64decode(sec["data"]["token"]).decode()
        check(len(data_token) >= 24, "the generated data token is shorter than 24 characters")
check("NetworkPolicy" in by_kind, "no NetworkPolicy for the workers")
daemon_probes = probe_targets(daemon, "daemon")
for p in daemon_probes:
    check(p["port"] == http_port, f"daemon {p['probe']} on port {p['port']}, the daemon serves {http_port}")
nats_url = env.get("KURENTO_TAP_NATS", {}).get("value")

# Workers: flags the binaries accept, probes on their --metrics port, a Service to scrape.
deployments = {d["metadata"]["name"]: d for d in by_kind.get("Deployment", [])}
check(deployments, "no worker Deployment")
services = by_kind.get("Service", [])
workers = []
for name, dep in deployments.items():
    c = dep["spec"]["template"]["spec"]["containers"][0]
    cmd = c["command"][0]
    argv = c.get("args", [])
    check(cmd in worker_help, f"{name}: unknown worker command {cmd}")
    check(argv[:1] == ["run"], f"{name}: args must start with run")
    for flag in [a for a in argv if a.startswith("--")]:
        check(re.search(r"(^|\s)" + re.escape(flag) + r"\b", worker_help.get(cmd, "")), f"{name}: {cmd} run has no flag {flag}")
    check("--nats" in argv and argv[argv.index("--nats") + 1] == nats_url, f"{name}: NATS URL differs from the daemon's")
    metrics_port = int(argv[argv.index("--metrics") + 1].rsplit(":", 1)[1]) if "--metrics" in argv else None
    check(metrics_port is not None, f"{name}: no --metrics")
    check(container_ports(c).get("metrics") == metrics_port, f"{name}: containerPort metrics != --metrics port")
    env_w = {e["name"]: e.get("value") for e in c.get("env", [])}
    check(env_w.get("ORT_DISABLE_TELEMETRY") == "1", f"{name}: ORT_DISABLE_TELEMETRY must be 1")
    probes = probe_targets(c, name)
    for p in probes:
        check(p["port"] == metrics_port, f"{name}: {p['probe']} on {p['port']}, the worker serves {metrics_port}")
    sel = dep["spec"]["selector"]["matchLabels"]
    check(sel.items() <= dep["spec"]["template"]["metadata"]["labels"].items(), f"{name}: selector does not match its pods")
    check(any(s["spec"].get("selector", {}).items() <= dep["spec"]["template"]["metadata"]["labels"].items()
              and any(p.get("targetPort") == "metrics" for p in s["spec"]["ports"]) for s in services),
          f"{name}: no Service exposes its metrics port")
    workers.append({"name": name, "command": cmd, "args": argv, "probes": probes})
check(any(s["spec"].get("selector", {}).items() <= ds["spec"]["template"]["metadata"]["labels"].items() for s in services),
      "no Service selects the daemon pods")

# Scraping: the ServiceMonitor's ports exist on the Services it selects.
sm = one("ServiceMonitor")
if sm:
    sel = sm["spec"]["selector"]["matchLabels"]
    selected = [s for s in services if sel.items() <= s["metadata"]["labels"].items()]
    port_names = {p["name"] for s in selected for p in s["spec"]["ports"]}
    for ep in sm["spec"]["endpoints"]:
        check(ep["port"] in port_names, f"ServiceMonitor port {ep['port']} on no selected Service")
        check(ep.get("path") == "/metrics", "ServiceMonitor path must be /metrics")

# Autoscaling: on the saturation gauge, targeting the worker Deployments.
scaled = by_kind.get("ScaledObject", [])
hpas = by_kind.get("HorizontalPodAutoscaler", [])
if args.expect == "keda":
    check(len(scaled) == len(deployments) and not hpas, f"expected one ScaledObject per worker ({len(deployments)}), found {len(scaled)} and {len(hpas)} HPAs")
    for so in scaled:
        check(so["spec"]["scaleTargetRef"]["name"] in deployments, f"{so['metadata']['name']}: scales an unknown Deployment")
        for t in so["spec"]["triggers"]:
            check(t["type"] == "prometheus" and t.get("metricType") == "Value", f"{so['metadata']['name']}: prometheus trigger with metricType Value")
            for metric in re.findall(r"\b(kurento_tap_[a-z_]+|tap_worker_[a-z_]+)", t["metadata"]["query"]):
                check(metric in exported, f"{so['metadata']['name']}: queries {metric}, which nothing exports")
            check(float(t["metadata"]["threshold"]) > 0, "threshold must be positive")
else:
    check(len(hpas) == len(deployments) and not scaled, f"expected one HPA per worker, found {len(hpas)} and {len(scaled)} ScaledObjects")
    for h in hpas:
        check(h["spec"]["scaleTargetRef"]["name"] in deployments, f"{h['metadata']['name']}: scales an unknown Deployment")
        for m in h["spec"]["metrics"]:
            ext = m["external"]["metric"]
            check(ext["name"] in exported, f"{h['metadata']['name']}: external metric {ext['name']} not exported")
            for key in ext.get("selector", {}).get("matchLabels", {}):
                check(key in labels.get(ext["name"], set()), f"{h['metadata']['name']}: {ext['name']} has no label {key}")
            check(float(m["external"]["target"]["value"]) > 0, "target must be positive")

# The dashboard ConfigMap carries JSON whose queries are all exported.
cm = [c for c in by_kind.get("ConfigMap", []) if "kurento-tap.json" in c.get("data", {})]
check(len(cm) == 1, "no dashboard ConfigMap")
if cm:
    dash = json.loads(cm[0]["data"]["kurento-tap.json"])
    for panel in dash["panels"]:
        for target in panel.get("targets", []):
            for metric in re.findall(r"\b((?:kurento_tap|tap_worker)_[a-z_]+)", target["expr"]):
                check(metric in exported, f"dashboard queries {metric}, which nothing exports")

if problems:
    print("helm: problems:\n  " + "\n  ".join(problems))
    sys.exit(1)
summary = {
    "daemon": {
        "env": {k: v.get("value") for k, v in env.items() if "value" in v},
        "probes": daemon_probes,
        "data_token": data_token,
    },
    "workers": workers,
}
print(f"helm: ok ({len(docs)} objects: {', '.join(sorted(f'{k} {len(v)}' for k, v in by_kind.items()))})")
print(json.dumps(summary))
