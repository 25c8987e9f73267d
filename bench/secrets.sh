#!/usr/bin/env bash
# Added latency of injecting a cached secret: the same small GET through
# relay + agent on a route without secrets and on one whose header carries
# ${{ secrets.x }} (env source, cached), plus the direct call, in one run.
# wrk with 1 connection (latency) and 32 connections (throughput), 10 s each.
# Everything on 127.0.0.1; processes stopped by PID.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v wrk >/dev/null || { echo "needs wrk (apt-get install wrk)" >&2; exit 1; }
duration=${DURATION:-10s}

cargo build --release --workspace --quiet
STACK_BIN=target/release
STACK_WORK=$(mktemp -d)
export BENCH_SECRET="bench-secret-value"
stack_agent_extra() {
  cat <<TOML
[routes.with_secret]
url = "http://$UPSTREAM"
paths = ["/**"]
headers = { Authorization = "Bearer \${{ secrets.x }}" }

[secrets.x]
env = "BENCH_SECRET"
TOML
}
# shellcheck source=scripts/stack.sh
source scripts/stack.sh
trap 'stack_stop; rm -rf "$STACK_WORK"' EXIT
stack_start

auth="Proxy-Authorization: Bearer $KEY"
run() { # name url connections [header]
  local name=$1 url=$2 conns=$3
  shift 3
  local out
  out=$(wrk -t1 -c"$conns" -d"$duration" --latency "$@" "$url")
  local rps p50 p99
  rps=$(awk '/Requests\/sec/ {print $2}' <<<"$out")
  p50=$(awk '$1 == "50%" {print $2}' <<<"$out")
  p99=$(awk '$1 == "99%" {print $2}' <<<"$out")
  if grep -q "Non-2xx" <<<"$out"; then echo "$name: non-2xx answers" >&2; echo "$out" >&2; exit 1; fi
  printf '| %s | %s | %s | %s | %s |\n' "$name" "$conns" "$rps" "$p50" "$p99"
}

curl -fs -H "$auth" "http://$PUBLIC/v1/routes/with_secret/echo" | grep -q "Bearer $BENCH_SECRET" \
  || { echo "secret was not injected" >&2; exit 1; }

echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ); machine: $(nproc) cores; wrk $duration per row"
echo
echo "| path | connections | req/s | p50 | p99 |"
echo "|---|---|---|---|---|"
for c in 1 32; do
  run "direct" "http://$UPSTREAM/echo" "$c"
  run "tunnel, no secret" "http://$PUBLIC/v1/routes/sample/echo" "$c" -H "$auth"
  run "tunnel, cached secret in a header" "http://$PUBLIC/v1/routes/with_secret/echo" "$c" -H "$auth"
done
