#!/usr/bin/env bash
# Builds the Debian packages of the agent and the relay with cargo-deb
# (installed if missing): one release build of the workspace, then
# `cargo deb --no-build` per package. Prints the .deb paths and their
# contents, and checks that each carries what its unit needs: the binary,
# the unit, and a postinst creating the group the unit reads its
# configuration through (docs/install-systemd.md). Not run by .ci/run: CI
# builds once, in debug.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v cargo-deb >/dev/null 2>&1; then
  cargo install cargo-deb --locked
fi
cargo build --release --workspace --locked
cargo deb --no-build -p tether-agent
cargo deb --no-build -p tether-relay
for program in tether-agent tether-relay; do
  debs=(target/debian/"${program}"_*.deb)
  deb=${debs[-1]}
  echo "==> $deb"
  dpkg-deb --info "$deb" | sed -n '/Package:/,/Description:/p'
  dpkg-deb --contents "$deb"
  contents=$(dpkg-deb --contents "$deb")
  grep -q "/usr/bin/$program\$" <<<"$contents" || { echo "FAIL: $deb lacks /usr/bin/$program"; exit 1; }
  grep -q "/systemd/system/$program.service\$" <<<"$contents" || { echo "FAIL: $deb lacks the unit"; exit 1; }
  dpkg-deb --info "$deb" postinst | grep -q "groupadd --system $program-config" ||
    { echo "FAIL: $deb's postinst does not create the group $program-config"; exit 1; }
  echo "    ok: binary, unit, postinst creating group $program-config"
done
