#!/usr/bin/env bash
# Builds the Debian packages of the agent and the relay with cargo-deb
# (installed if missing): one release build of the workspace, then
# `cargo deb --no-build` per package. Prints the .deb paths and their
# contents. Not run by .ci/run: CI builds once, in debug.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v cargo-deb >/dev/null 2>&1; then
  cargo install cargo-deb --locked
fi
cargo build --release --workspace --locked
cargo deb --no-build -p tether-agent
cargo deb --no-build -p tether-relay
for deb in target/debian/*.deb; do
  echo "==> $deb"
  dpkg-deb --info "$deb" | sed -n '/Package:/,/Description:/p'
  dpkg-deb --contents "$deb"
done
