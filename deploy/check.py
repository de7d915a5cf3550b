"""Cross-checks no schema catches: the rendered manifests agree with each other and with the
Dockerfile, the example Secret holds only placeholders, and every metric the alerts and the
dashboard query is one docs/operations.md lists.

    python deploy/check.py            (run by deploy/lint.sh)
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "deploy" / "k8s"))

from render import render  # noqa: E402

Doc = dict[str, Any]
problems: list[str] = []


def fail(message: str) -> None:
    problems.append(message)


def _pod(doc: Doc) -> Doc:
    template: Doc = doc["spec"]["template"]
    return template


def _subset(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


def _dockerfile() -> tuple[int, set[int]]:
    text = (ROOT / "Dockerfile").read_text()
    user = re.findall(r"^USER (\d+)", text, re.M)[-1]
    ports = {int(p) for line in re.findall(r"^EXPOSE (.+)$", text, re.M) for p in line.split()}
    return int(user), ports


def check_manifests(name: str, docs: list[Doc], *, needs_secret: bool) -> None:
    by_kind: dict[str, list[Doc]] = {}
    for doc in docs:
        by_kind.setdefault(doc["kind"], []).append(doc)
    uid, exposed = _dockerfile()
    configmaps = {d["metadata"]["name"] for d in by_kind.get("ConfigMap", [])}
    secrets = {d["metadata"]["name"] for d in by_kind.get("Secret", [])}
    workloads = by_kind.get("Deployment", []) + by_kind.get("Job", [])
    api = next(d for d in by_kind["Deployment"] if d["metadata"]["name"] == "fiat-onramp")
    api_labels = _pod(api)["metadata"]["labels"]

    for doc in workloads:
        where = f"{name}: {doc['kind']}/{doc['metadata']['name']}"
        pod = _pod(doc)
        if doc["kind"] == "Deployment" and not _subset(
            doc["spec"]["selector"]["matchLabels"], pod["metadata"]["labels"]
        ):
            fail(f"{where}: selector does not match its pod labels")
        security = pod["spec"].get("securityContext", {})
        if security.get("runAsNonRoot") is not True or security.get("runAsUser") != uid:
            fail(f"{where}: must run as non-root user {uid} (the Dockerfile's USER)")
        for container in pod["spec"]["containers"]:
            ctx = container.get("securityContext", {})
            if ctx.get("readOnlyRootFilesystem") is not True:
                fail(f"{where}: {container['name']} needs readOnlyRootFilesystem")
            if ctx.get("allowPrivilegeEscalation") is not False:
                fail(f"{where}: {container['name']} must not allow privilege escalation")
            resources = container.get("resources", {})
            if not resources.get("requests") or "memory" not in resources.get("limits", {}):
                fail(f"{where}: {container['name']} needs requests and a memory limit")
            for source in container.get("envFrom", []):
                if (ref := source.get("configMapRef")) and ref["name"] not in configmaps:
                    fail(f"{where}: ConfigMap {ref['name']} is not in the output")
                if needs_secret and (ref := source.get("secretRef")) and ref["name"] not in secrets:
                    fail(f"{where}: Secret {ref['name']} is not in the output")
            for p in container.get("ports", []):
                if p["containerPort"] not in exposed:
                    fail(f"{where}: port {p['containerPort']} is not one the image exposes")

    strategy = api["spec"]["strategy"]["rollingUpdate"]
    if strategy.get("maxUnavailable") != 0:
        fail(f"{name}: the API Deployment must roll with maxUnavailable: 0")
    container = _pod(api)["spec"]["containers"][0]
    probes = {
        "livenessProbe": "/healthz",
        "readinessProbe": "/readyz",
        "startupProbe": "/healthz",
    }
    for probe, path in probes.items():
        if container.get(probe, {}).get("httpGet", {}).get("path") != path:
            fail(f"{name}: the API container's {probe} must GET {path}")
    # INTERNAL_PORT (the ConfigMap) is the container port named `internal`, and the probes and
    # the scrape name ports the container has.
    container_ports = {p["name"]: p["containerPort"] for p in container.get("ports", [])}
    config = {k: v for d in by_kind.get("ConfigMap", []) for k, v in d.get("data", {}).items()}
    internal = config.get("INTERNAL_PORT", "")
    if internal and container_ports.get("internal") != int(internal):
        fail(f"{name}: INTERNAL_PORT {internal} is not the container port named `internal`")
    for probe in probes:
        port_name = container.get(probe, {}).get("httpGet", {}).get("port")
        if port_name not in container_ports:
            fail(f"{name}: the {probe} asks port {port_name}, which the container lacks")
    for kind in ("Service", "PodDisruptionBudget"):
        for doc in by_kind.get(kind, []):
            selector = doc["spec"]["selector"]
            selector = selector.get("matchLabels", selector)
            if not _subset(selector, api_labels):
                fail(f"{name}: {kind}/{doc['metadata']['name']} does not select the API pods")
    service = by_kind["Service"][0]
    for monitor in by_kind.get("ServiceMonitor", []):
        if not _subset(monitor["spec"]["selector"]["matchLabels"], service["metadata"]["labels"]):
            fail(f"{name}: the ServiceMonitor does not select the Service")
        ports = {p["name"]: p["targetPort"] for p in service["spec"]["ports"]}
        for endpoint in monitor["spec"]["endpoints"]:
            if endpoint["port"] not in ports:
                fail(f"{name}: ServiceMonitor port {endpoint['port']} is not a Service port")
            elif internal and ports[endpoint["port"]] != "internal":
                fail(f"{name}: with INTERNAL_PORT set, /metrics is scraped on the internal port")
    for monitor in by_kind.get("PodMonitor", []):
        selector = monitor["spec"]["selector"]["matchLabels"]
        pods = [
            _pod(d)
            for d in by_kind.get("Deployment", [])
            if _subset(selector, _pod(d)["metadata"]["labels"])
        ]
        if not pods:
            fail(f"{name}: PodMonitor/{monitor['metadata']['name']} selects no pods")
        for endpoint in monitor["spec"]["podMetricsEndpoints"]:
            for pod in pods:
                named = {
                    p.get("name") for c in pod["spec"]["containers"] for p in c.get("ports", [])
                }
                if endpoint["port"] not in named:
                    fail(f"{name}: PodMonitor port {endpoint['port']} is not a port of its pods")
    for secret in by_kind.get("Secret", []):
        for key, value in secret.get("stringData", {}).items():
            if value and "PLACEHOLDER" not in value:
                fail(f"{name}: Secret key {key} holds a value that is not marked PLACEHOLDER")
        if secret.get("data"):
            fail(f"{name}: the example Secret must use stringData placeholders, not data")


_METRIC = re.compile(r"\b(fiat_onramp_[a-z0-9_]+)")
_HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")


def check_metrics() -> None:
    documented = set(
        re.findall(
            r"^\| `(fiat_onramp_[a-z0-9_]+)`", (ROOT / "docs" / "operations.md").read_text(), re.M
        )
    )
    if not documented:
        fail("docs/operations.md has no metrics table")
    used: dict[str, set[str]] = {}
    rules = yaml.safe_load((ROOT / "deploy" / "monitoring" / "alerts.yaml").read_text())
    for group in rules["groups"]:
        for rule in group["rules"]:
            for metric in _METRIC.findall(rule["expr"]):
                used.setdefault(metric, set()).add(f"alert {rule['alert']}")
    dashboard = json.loads((ROOT / "deploy" / "monitoring" / "grafana-dashboard.json").read_text())
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            for metric in _METRIC.findall(target["expr"]):
                used.setdefault(metric, set()).add(f"panel {panel['title']!r}")
    for metric, users in sorted(used.items()):
        base = next((metric[: -len(s)] for s in _HISTOGRAM_SUFFIXES if metric.endswith(s)), metric)
        if metric not in documented and base not in documented:
            fail(f"{metric} (used by {', '.join(sorted(users))}) is not in docs/operations.md")


def main() -> int:
    overlays = sorted((ROOT / "deploy" / "k8s" / "overlays").iterdir())
    check_manifests("base", render(ROOT / "deploy" / "k8s" / "base"), needs_secret=False)
    for overlay in overlays:
        check_manifests(f"overlay {overlay.name}", render(overlay), needs_secret=True)
    check_metrics()
    for problem in problems:
        print(f"deploy/check.py: {problem}", file=sys.stderr)  # noqa: T201
    return 1 if problems else 0


if __name__ == "__main__":
    raise SystemExit(main())
