#!/usr/bin/env bash
# Side-by-side benchmark on 127.0.0.1: the same upstream (the workspace's
# Rust sample upstream) reached directly, through Tether (relay + agent,
# full HTTP with policy), through rathole and through bore (TCP tunnels
# that only copy bytes). For each path: small GET keep-alive (32
# connections), a new connection per request, 1,000 concurrent
# connections, 1 MiB responses, and a 1 GiB download; req/s, p50/p99,
# MB/s and the ratio to the direct call of the same run; RSS of relay and
# agent idle and at peak. Installs what it needs (wrk from Debian; rathole
# and bore with cargo install). Everything is stopped by PID.
#
# Usage: bench/run.sh [--quick]   (--quick: 1 s per load, no 1 GiB run)
set -euo pipefail
cd "$(dirname "$0")/.."
quick=false
[[ "${1:-}" == "--quick" ]] && quick=true
secs=5; $quick && secs=1

command -v wrk >/dev/null || { apt-get update -qq && apt-get install -y -qq wrk; }
if ! command -v rathole >/dev/null; then
  dpkg -s libssl-dev pkg-config >/dev/null 2>&1 || apt-get install -y -qq libssl-dev pkg-config
  # Not --locked: its lock file pins time 0.3.29, which no longer builds
  # with current Rust.
  cargo install rathole
fi
command -v bore >/dev/null || cargo install bore-cli --locked
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

cargo build --release --workspace --quiet
STACK_BIN=target/release
STACK_WORK=$(mktemp -d)
# shellcheck source=scripts/stack.sh
source scripts/stack.sh
extra_pids=()
cleanup() {
  for pid in "${extra_pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${extra_pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  stack_stop
  rm -rf "$STACK_WORK"
}
trap cleanup EXIT
stack_start
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() { for _ in $(seq 100); do (echo >"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.1; done; echo "port $1 never opened" >&2; return 1; }
upstream_port=${UPSTREAM##*:}

# rathole: server and client, service "up" -> the upstream.
rh_ctrl=$(free_port); rh_svc=$(free_port)
cat >"$STACK_WORK/rh-server.toml" <<TOML
[server]
bind_addr = "127.0.0.1:$rh_ctrl"
[server.services.up]
token = "bench"
bind_addr = "127.0.0.1:$rh_svc"
TOML
cat >"$STACK_WORK/rh-client.toml" <<TOML
[client]
remote_addr = "127.0.0.1:$rh_ctrl"
[client.services.up]
token = "bench"
local_addr = "127.0.0.1:$upstream_port"
TOML
rathole --server "$STACK_WORK/rh-server.toml" >"$STACK_WORK/rh-server.log" 2>&1 & extra_pids+=($!)
wait_port "$rh_ctrl"
rathole --client "$STACK_WORK/rh-client.toml" >"$STACK_WORK/rh-client.log" 2>&1 & extra_pids+=($!)
wait_port "$rh_svc"

# bore: its control port is fixed (7835) by bore itself; the tunnel port is
# chosen here.
bore_port=$(free_port)
bore server --bind-addr 127.0.0.1 --min-port "$bore_port" --max-port "$bore_port" >"$STACK_WORK/bore-server.log" 2>&1 & extra_pids+=($!)
wait_port 7835
bore local "$upstream_port" --local-host 127.0.0.1 --to 127.0.0.1 --port "$bore_port" >"$STACK_WORK/bore-client.log" 2>&1 & extra_pids+=($!)
wait_port "$bore_port"
sleep 1

declare -A base=(
  [direct]="http://$UPSTREAM"
  [tether]="http://$PUBLIC/v1/routes/sample"
  [rathole]="http://127.0.0.1:$rh_svc"
  [bore]="http://127.0.0.1:$bore_port"
)
paths=(direct tether rathole bore)
auth_for() { [[ "$1" == tether ]] && echo "Proxy-Authorization: Bearer $KEY" || echo "X-Bench: 1"; }

rss() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status"; }
idle_relay=$(rss "$RELAY_PID"); idle_agent=$(rss "$AGENT_PID")
# RSS of relay and agent every 200 ms for the whole run; peaks at the end.
( while kill -0 "$RELAY_PID" 2>/dev/null; do
    echo "$(rss "$RELAY_PID") $(rss "$AGENT_PID")" >>"$STACK_WORK/rss"; sleep 0.2
  done ) & extra_pids+=($!)

# wrk → "rps p50_ms p99_ms"
to_ms() { awk -v v="$1" 'BEGIN { n=v+0; if (v ~ /us$/) n/=1000; else if (v ~ /ms$/) n=n; else if (v ~ /s$/) n*=1000; printf "%.3f", n }'; }
load() { # path conns url_suffix [extra header]
  local path=$1 conns=$2 suffix=$3 extra=${4:-"X-Bench: 1"} out
  out=$(wrk -t2 -c"$conns" -d"${secs}s" --latency -H "$(auth_for "$path")" -H "$extra" "${base[$path]}$suffix" 2>&1)
  local rps p50 p99 errors
  rps=$(awk '/Requests\/sec/ {print $2}' <<<"$out")
  p50=$(to_ms "$(awk '$1=="50%" {print $2}' <<<"$out")")
  p99=$(to_ms "$(awk '$1=="99%" {print $2}' <<<"$out")")
  errors=$(awk '/Non-2xx|Socket errors/ {printf "%s ", $0}' <<<"$out")
  echo "$rps $p50 $p99 ${errors:-}" | tee -a "$STACK_WORK/raw.txt" >/dev/null
  echo "$out" >>"$STACK_WORK/raw.txt"
  echo "$rps $p50 $p99"
}
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "-" }'; }

scenario() { # title conns suffix extra-header
  local title=$1 conns=$2 suffix=$3 extra=${4:-"X-Bench: 1"}
  echo
  echo "### $title"
  echo
  echo "| path | req/s | ratio | p50 ms | p99 ms |"
  echo "|---|---|---|---|---|"
  local direct_rps=""
  for path in "${paths[@]}"; do
    read -r rps p50 p99 < <(load "$path" "$conns" "$suffix" "$extra")
    [[ $path == direct ]] && direct_rps=$rps
    echo "| $path | $rps | $(ratio "$rps" "$direct_rps") | $p50 | $p99 |"
  done
}

echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
echo "machine: $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), $(uname -sr)"
echo "tools: $(wrk --version 2>&1 | head -n1 | cut -d' ' -f1-2), $(rathole --version 2>&1 | head -n1), $(bore --version 2>&1 | head -n1)"
echo "load: wrk -t2, ${secs} s per cell; all processes share the cores"
scenario "small GET, keep-alive, 32 connections" 32 /bytes/64
scenario "small GET, a new connection per request, 32 at a time" 32 /bytes/64 "Connection: close"
scenario "small GET, 1,000 concurrent connections" 1000 /bytes/64
scenario "1 MiB responses, 8 connections (MB/s = req/s)" 8 /bytes/1048576

if ! $quick; then
  echo
  echo "### 1 GiB download"
  echo
  echo "| path | MB/s | ratio |"
  echo "|---|---|---|"
  direct_speed=""
  for path in "${paths[@]}"; do
    speed=$(curl -sS -o /dev/null -w '%{speed_download}' -H "$(auth_for "$path")" "${base[$path]}/bytes/1073741824")
    [[ $path == direct ]] && direct_speed=$speed
    echo "| $path | $(awk -v s="$speed" 'BEGIN { printf "%.0f", s / 1048576 }') | $(ratio "$speed" "$direct_speed") |"
  done
fi

peak_relay=$(awk '$1 > m { m = $1 } END { print m }' "$STACK_WORK/rss")
peak_agent=$(awk '$2 > m { m = $2 } END { print m }' "$STACK_WORK/rss")
echo
echo "| Tether process | idle RSS MiB | peak RSS MiB (during the runs above) |"
echo "|---|---|---|"
echo "| tether-relay | $(awk -v k="$idle_relay" 'BEGIN { printf "%.1f", k/1024 }') | $(awk -v k="$peak_relay" 'BEGIN { printf "%.1f", k/1024 }') |"
echo "| tether-agent | $(awk -v k="$idle_agent" 'BEGIN { printf "%.1f", k/1024 }') | $(awk -v k="$peak_agent" 'BEGIN { printf "%.1f", k/1024 }') |"
mkdir -p bench/results
cp "$STACK_WORK/raw.txt" "bench/results/$(date -u +%Y-%m-%d)-run-raw.txt"
