#!/usr/bin/env bash
# Where a small keep-alive request's CPU goes: starts a sample upstream,
# relay and agent (scripts/stack.sh) from the binaries in $1 (default
# target/release, built here if missing), loads them with wrk (small GET,
# 32 keep-alive connections, the agent auditing to a file, as bench/run.sh
# does) and samples relay and agent with `perf record -e cpu-clock`
# (software clock: this machine has no hardware counters). Prints, per
# process: CPU µs and context switches per request over the profiled run,
# the top symbols by self time, and self time grouped by where it is spent
# (kernel, allocator, memcpy, h2, hyper, tokio, tether, ...).
#
# Usage: bench/profile.sh [bin_dir] [out_dir]   SECS=N (default 10)
# Needs `perf` (Debian linux-perf) and wrk. Everything is stopped by PID.
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${SECS:-10}
STACK_BIN=${1:-target/release}
out=${2:-$(mktemp -d)}
mkdir -p "$out"
command -v perf >/dev/null || { echo "perf missing (apt-get install linux-perf)" >&2; exit 1; }
command -v wrk >/dev/null || { apt-get update -qq && apt-get install -y -qq wrk; }
[[ -x "$STACK_BIN/tether-agent" ]] || cargo build --release --workspace --quiet
STACK_WORK=$(mktemp -d)
stack_agent_extra() { printf '[audit]\nfile = "%s/audit.jsonl"\n' "$STACK_WORK"; }
# shellcheck source=scripts/stack.sh
source scripts/stack.sh
perf_pids=()
cleanup() {
  for pid in "${perf_pids[@]}"; do kill -INT "$pid" 2>/dev/null || true; done
  for pid in "${perf_pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  stack_stop
  rm -rf "$STACK_WORK"
}
trap cleanup EXIT
stack_start
url="http://$PUBLIC/v1/routes/sample/bytes/64"
auth="Proxy-Authorization: Bearer $KEY"
# Warm up (connections, pools, caches) before sampling.
wrk -t2 -c32 -d2s -H "$auth" "$url" >/dev/null

ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
switches() {
  cat /proc/"$1"/task/*/status 2>/dev/null |
    awk '/^(voluntary|nonvoluntary)_ctxt_switches/ {s += $2} END {print s + 0}'
}
declare -A t0 c0
for name in relay agent; do
  pid=$([[ $name == relay ]] && echo "$RELAY_PID" || echo "$AGENT_PID")
  t0[$name]=$(ticks "$pid")
  c0[$name]=$(switches "$pid")
  perf record -q -e cpu-clock -F 999 -p "$pid" -o "$out/$name.data" 2>/dev/null &
  perf_pids+=($!)
done
sleep 0.5
wrk -t2 -c32 -d"${secs}s" -H "$auth" "$url" >"$out/wrk.txt"
for pid in "${perf_pids[@]}"; do kill -INT "$pid" 2>/dev/null || true; done
for pid in "${perf_pids[@]}"; do wait "$pid" 2>/dev/null || true; done
perf_pids=()
requests=$(awk '/requests in/ {print $1}' "$out/wrk.txt")
hz=$(getconf CLK_TCK)
echo "binaries: $STACK_BIN; $requests requests in ${secs} s ($(awk '/Requests\/sec/ {print $2}' "$out/wrk.txt") req/s)"
for name in relay agent; do
  pid=$([[ $name == relay ]] && echo "$RELAY_PID" || echo "$AGENT_PID")
  awk -v d=$(($(ticks "$pid") - t0[$name])) -v c=$(($(switches "$pid") - c0[$name])) -v n="$requests" -v hz="$hz" -v p="$name" \
    'BEGIN { printf "\n== %s: %.1f CPU µs/request (incl. perf sampling), %.2f context switches/request\n", p, d * 1e6 / hz / n, c / n }'
  perf report -i "$out/$name.data" --no-children --sort sym --percent-limit 1.2 --stdio 2>/dev/null |
    grep -E '^ +[0-9.]+%' | head -25 >"$out/$name.top.txt"
  cat "$out/$name.top.txt"
  echo "-- self time by where it is spent"
  perf report -i "$out/$name.data" --no-children --sort dso,sym --stdio 2>/dev/null |
    awk -f bench/profile-groups.awk
done
echo
echo "perf data and reports: $out"
