#!/usr/bin/env bash
# Lints what CI cannot run: the Dockerfile, the YAML, the Kubernetes manifests against the
# Kubernetes schemas, and the Prometheus rules with their unit tests. Installs its tools on a
# fresh machine: deploy/requirements-ops.txt into deploy/.venv, Debian's prometheus for promtool.
set -euo pipefail
cd "$(dirname "$0")/.."

OPS=deploy/.venv
STAMP="$OPS/.installed"
if [ ! -f "$STAMP" ] || [ deploy/requirements-ops.txt -nt "$STAMP" ]; then
  python3 -m venv "$OPS"
  "$OPS/bin/python" -m pip install --quiet --disable-pip-version-check --require-hashes \
    -r deploy/requirements-ops.txt
  touch "$STAMP"
fi
if ! command -v promtool >/dev/null 2>&1; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus >/dev/null
fi

echo "deploy-lint: hadolint Dockerfile"
"$OPS/bin/hadolint" Dockerfile

echo "deploy-lint: yamllint"
"$OPS/bin/yamllint" --strict deploy/ docker-compose.yml

rendered="$(mktemp -d)"
trap 'rm -rf "$rendered"' EXIT
for target in deploy/k8s/base deploy/k8s/overlays/*/; do
  name="$(basename "$target")"
  echo "deploy-lint: kubernetes-validate $target"
  "$OPS/bin/python" deploy/k8s/render.py "$target" >"$rendered/$name.yaml"
  "$OPS/bin/kubernetes-validate" --strict --quiet "$rendered/$name.yaml"
done

echo "deploy-lint: deploy/check.py"
"$OPS/bin/python" deploy/check.py

echo "deploy-lint: promtool"
promtool check rules deploy/monitoring/alerts.yaml
promtool test rules deploy/monitoring/tests/*.yaml
echo "deploy-lint: ok"
