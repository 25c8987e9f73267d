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
if ! command -v curl >/dev/null 2>&1; then
  echo "==> installing curl (demo smoke test)"
  apt-get update -qq && apt-get install -y -qq curl
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

echo "==> demo smoke test"
scripts/demo.sh --once

if rustup toolchain list 2>/dev/null | grep -q '^nightly'; then
  echo "==> fuzz smoke run"
  scripts/fuzz.sh
else
  echo "==> fuzz smoke run skipped: no nightly toolchain"
fi
