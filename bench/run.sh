#!/usr/bin/env bash
# Side-by-side benchmark on 127.0.0.1: the same upstream (the workspace's
# Rust sample upstream) reached directly, through Tether (relay + agent,
# full HTTP with policy), through rathole and through bore (TCP tunnels
# that only copy bytes). For each path: small GET keep-alive (32
# connections), a new connection per request, 1,000 concurrent
# connections, 1 MiB responses, and a 1 GiB download; req/s, p50/p99,
# MB/s, the ratios to the direct call and to rathole of the same run, and
# the CPU time each tunnel's own processes spent per request (utime+stime
# from /proc over the load run ÷ requests: relay+agent for Tether, server+
# client for rathole and bore); RSS of relay and agent idle and at peak.
# The agent writes its audit trail to a file, as in production.
#
# One run on a 2-core machine swings 2–3×, so every figure is the median
# of RUNS alternating runs (direct, Tether, rathole, bore, direct, …) with
# its range. Installs what it needs (wrk from Debian; rathole and bore with
# cargo install). Everything is stopped by PID.
#
# Usage: bench/run.sh [--quick]   (--quick: 1 run of 1 s per cell, no
# 1 GiB transfers: a smoke test). RUNS=N overrides the number of runs;
# SECS=N the seconds per cell. BEFORE_BIN=dir adds a path "before": a
# second relay + agent from the binaries in dir (an earlier build), in the
# same alternating runs, for before/after tables.
set -euo pipefail
cd "$(dirname "$0")/.."
quick=false
[[ "${1:-}" == "--quick" ]] && quick=true
secs=${SECS:-5}; runs=${RUNS:-5}
quick_pings=2000; ws_megabytes=256
$quick && { secs=${SECS:-1}; runs=${RUNS:-1}; quick_pings=200; ws_megabytes=16; }

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
# A WebSocket echo server and a gRPC server (Python `websockets` and
# `grpcio`) for the upgrade and gRPC rows, reached directly and through a
# route of the current build's agent (an earlier build may not know the
# keys those routes need).
python3 -c 'import websockets, grpc' 2>/dev/null ||
  python3 -m pip install --quiet --disable-pip-version-check websockets grpcio
python3 bench/ws_echo.py serve >"$STACK_WORK/ws.port" 2>"$STACK_WORK/ws.log" &
WS_PID=$!
python3 bench/grpc_unary.py serve >"$STACK_WORK/grpc.addr" 2>"$STACK_WORK/grpc.log" &
GRPC_PID=$!
for _ in $(seq 100); do [[ -s "$STACK_WORK/ws.port" ]] && grep -q listening "$STACK_WORK/grpc.addr" && break; sleep 0.1; done
WS_PORT=$(head -n1 "$STACK_WORK/ws.port")
GRPC_PORT=$(awk '{print $2}' "$STACK_WORK/grpc.addr")
# The agent audits every request to a file, as a production agent does.
stack_agent_extra() {
  printf '[audit]\nfile = "%s/audit.jsonl"\n' "$STACK_WORK"
  [[ "$STACK_BIN" == "${BEFORE_BIN:-}" ]] && return 0
  printf '[routes.ws]\nurl = "http://127.0.0.1:%s"\npaths = ["/**"]\nupgrades = ["websocket"]\n' "$WS_PORT"
  printf '[routes.grpc]\nurl = "http://127.0.0.1:%s"\nmethods = ["POST"]\npaths = ["/**"]\nupstream_http2 = true\n' "$GRPC_PORT"
}
stack_relay_listen_extra() {
  [[ "$STACK_BIN" == "${BEFORE_BIN:-}" ]] || echo 'route_domain = "routes.bench.test"'
}
# shellcheck source=scripts/stack.sh
source scripts/stack.sh
extra_pids=($WS_PID $GRPC_PID)
cleanup() {
  for pid in "${extra_pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${extra_pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  stack_stop
  rm -rf "$STACK_WORK" "${before_work:-}"
}
trap cleanup EXIT
if [[ -n "${BEFORE_BIN:-}" ]]; then
  # The earlier build first, in a work dir of its own; its addresses and
  # PIDs are kept before the current build's stack overwrites them.
  main_work=$STACK_WORK main_bin=$STACK_BIN
  STACK_BIN=$BEFORE_BIN STACK_WORK=$(mktemp -d)
  before_work=$STACK_WORK
  stack_start
  BEFORE_PUBLIC=$PUBLIC BEFORE_KEY=$KEY BEFORE_RELAY_PID=$RELAY_PID BEFORE_AGENT_PID=$AGENT_PID
  STACK_BIN=$main_bin STACK_WORK=$main_work
fi
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
RH_SERVER_PID=$!
wait_port "$rh_ctrl"
rathole --client "$STACK_WORK/rh-client.toml" >"$STACK_WORK/rh-client.log" 2>&1 & extra_pids+=($!)
RH_CLIENT_PID=$!
wait_port "$rh_svc"

# bore: its control port is fixed (7835) by bore itself; the tunnel port is
# chosen here.
bore_port=$(free_port)
bore server --bind-addr 127.0.0.1 --min-port "$bore_port" --max-port "$bore_port" >"$STACK_WORK/bore-server.log" 2>&1 & extra_pids+=($!)
BORE_SERVER_PID=$!
wait_port 7835
bore local "$upstream_port" --local-host 127.0.0.1 --to 127.0.0.1 --port "$bore_port" >"$STACK_WORK/bore-client.log" 2>&1 & extra_pids+=($!)
BORE_CLIENT_PID=$!
wait_port "$bore_port"
sleep 1

declare -A base=(
  [direct]="http://$UPSTREAM"
  [tether]="http://$PUBLIC/v1/routes/sample"
  [rathole]="http://127.0.0.1:$rh_svc"
  [bore]="http://127.0.0.1:$bore_port"
)
paths=(direct tether rathole bore)
if [[ -n "${BEFORE_BIN:-}" ]]; then
  base[before]="http://$BEFORE_PUBLIC/v1/routes/sample"
  paths=(direct tether before rathole bore)
fi
auth_for() {
  case $1 in
    tether) echo "Proxy-Authorization: Bearer $KEY" ;;
    before) echo "Proxy-Authorization: Bearer $BEFORE_KEY" ;;
    *) echo "X-Bench: 1" ;;
  esac
}

rss() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status"; }
idle_relay=$(rss "$RELAY_PID"); idle_agent=$(rss "$AGENT_PID")
# RSS of relay and agent every 200 ms for the whole run; peaks at the end.
( while kill -0 "$RELAY_PID" 2>/dev/null; do
    echo "$(rss "$RELAY_PID") $(rss "$AGENT_PID")" >>"$STACK_WORK/rss"; sleep 0.2
  done ) & extra_pids+=($!)

# The tunnel's own processes, whose CPU time is charged to its requests.
declare -A procs=(
  [direct]=""
  [tether]="$RELAY_PID $AGENT_PID"
  [rathole]="$RH_SERVER_PID $RH_CLIENT_PID"
  [bore]="$BORE_SERVER_PID $BORE_CLIENT_PID"
)
[[ -n "${BEFORE_BIN:-}" ]] && procs[before]="$BEFORE_RELAY_PID $BEFORE_AGENT_PID"
clk=$(getconf CLK_TCK)
# utime+stime of the given PIDs, in clock ticks.
cpu_ticks() { local t=0 pid; for pid in "$@"; do t=$((t + $(awk '{print $14 + $15}' "/proc/$pid/stat"))); done; echo "$t"; }

# Context switches (voluntary + not) of every thread of the given PIDs:
# the task hand-offs a request costs.
ctx_switches() {
  local pid
  for pid in "$@"; do cat /proc/"$pid"/task/*/status 2>/dev/null; done |
    awk '/ctxt_switches/ { n += $2 } END { print n + 0 }'
}

# wrk → "rps p50_ms p99_ms cpu_us_per_request ctx_switches_per_request"
to_ms() { awk -v v="$1" 'BEGIN { n=v+0; if (v ~ /us$/) n/=1000; else if (v ~ /ms$/) n=n; else if (v ~ /s$/) n*=1000; printf "%.3f", n }'; }
load() { # path conns url_suffix [extra header]
  local path=$1 conns=$2 suffix=$3 extra=${4:-"X-Bench: 1"} out
  local pids=${procs[$path]} before after cs_before cs_after
  # shellcheck disable=SC2086
  before=$(cpu_ticks $pids); cs_before=$(ctx_switches $pids)
  out=$(wrk -t2 -c"$conns" -d"${secs}s" --latency -H "$(auth_for "$path")" -H "$extra" "${base[$path]}$suffix" 2>&1)
  # shellcheck disable=SC2086
  after=$(cpu_ticks $pids); cs_after=$(ctx_switches $pids)
  local rps p50 p99 errors requests cpu cs
  rps=$(awk '/Requests\/sec/ {print $2}' <<<"$out")
  requests=$(awk '/requests in/ {print $1}' <<<"$out")
  p50=$(to_ms "$(awk '$1=="50%" {print $2}' <<<"$out")")
  p99=$(to_ms "$(awk '$1=="99%" {print $2}' <<<"$out")")
  cpu=$(awk -v d=$((after - before)) -v n="${requests:-0}" -v hz="$clk" \
    'BEGIN { if (n > 0 && d >= 0) printf "%.1f", d * 1e6 / hz / n; else print "-" }')
  cs=$(awk -v d=$((cs_after - cs_before)) -v n="${requests:-0}" \
    'BEGIN { if (n > 0) printf "%.2f", d / n; else print "-" }')
  [[ -z $pids ]] && { cpu="-"; cs="-"; }
  errors=$(awk '/Non-2xx|Socket errors/ {printf "%s ", $0}' <<<"$out")
  echo "$path $conns $suffix: $rps $p50 $p99 cpu_us=$cpu ctx_switches=$cs ${errors:-}" >>"$STACK_WORK/raw.txt"
  echo "$out" >>"$STACK_WORK/raw.txt"
  echo "$rps $p50 $p99 $cpu $cs"
}
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (a != "-" && b > 0) printf "%.2f", a / b; else print "-" }'; }
# "median (min–max)" of numbers on stdin, one a line; "-" if none.
median_range() {
  # Blank lines (the trailing separator) are not values.
  sort -g | awk 'NF && $1 != "-" { v[n++] = $1 } END {
    if (n == 0) { print "-"; exit }
    m = (n % 2) ? v[(n-1)/2] : (v[n/2-1] + v[n/2]) / 2
    if (n == 1) printf "%s", m; else printf "%s (%s–%s)", m, v[0], v[n-1] }'
}
median() { median_range | awk '{print $1}'; }

scenario() { # title conns suffix extra-header
  local title=$1 conns=$2 suffix=$3 extra=${4:-"X-Bench: 1"} r path
  declare -A rps=() p50=() p99=() cpu=() cs=()
  for ((r = 1; r <= runs; r++)); do
    for path in "${paths[@]}"; do
      read -r a b c d e < <(load "$path" "$conns" "$suffix" "$extra")
      rps[$path]+="$a "; p50[$path]+="$b "; p99[$path]+="$c "; cpu[$path]+="$d "; cs[$path]+="$e "
    done
  done
  local direct_rps rathole_rps rathole_cpu
  direct_rps=$(tr ' ' '\n' <<<"${rps[direct]}" | median)
  rathole_rps=$(tr ' ' '\n' <<<"${rps[rathole]}" | median)
  rathole_cpu=$(tr ' ' '\n' <<<"${cpu[rathole]}" | median)
  echo
  echo "### $title"
  echo
  echo "| path | req/s | ÷ direct | ÷ rathole | p50 ms | p99 ms | CPU µs/request | CPU ÷ rathole | context switches/request |"
  echo "|---|---|---|---|---|---|---|---|---|"
  for path in "${paths[@]}"; do
    local m c
    m=$(tr ' ' '\n' <<<"${rps[$path]}" | median)
    c=$(tr ' ' '\n' <<<"${cpu[$path]}" | median)
    echo "| $path | $(tr ' ' '\n' <<<"${rps[$path]}" | median_range) | $(ratio "$m" "$direct_rps") | $(ratio "$m" "$rathole_rps") | $(tr ' ' '\n' <<<"${p50[$path]}" | median) | $(tr ' ' '\n' <<<"${p99[$path]}" | median) | $(tr ' ' '\n' <<<"${cpu[$path]}" | median_range) | $(ratio "$c" "$rathole_cpu") | $(tr ' ' '\n' <<<"${cs[$path]}" | median) |"
  done
}

# One transfer of 1 GiB: MB/s. $1 = path, $2 = download|upload.
transfer() {
  local path=$1 way=$2
  if [[ $way == download ]]; then
    curl -sS -o /dev/null -w '%{speed_download}' -H "$(auth_for "$path")" "${base[$path]}/bytes/1073741824"
  else
    head -c 1073741824 /dev/zero | curl -sS -o /dev/null -w '%{speed_upload}' -T - -X PUT \
      -H "$(auth_for "$path")" "${base[$path]}/upload"
  fi | awk '{ printf "%.0f", $1 / 1048576 }'
}

echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
echo "machine: $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), $(uname -sr)"
echo "tools: $(wrk --version 2>&1 | head -n1 | cut -d' ' -f1-2), $(rathole --version 2>&1 | head -n1), $(bore --version 2>&1 | head -n1)"
echo "load: wrk -t2, ${secs} s per cell, median of ${runs} alternating runs (range in brackets); all processes share the cores; agent audit to a file"
scenario "small GET, keep-alive, 32 connections" 32 /bytes/64
scenario "small GET, a new connection per request, 32 at a time" 32 /bytes/64 "Connection: close"
scenario "small GET, 1,000 concurrent connections" 1000 /bytes/64
scenario "1 MiB responses, 8 connections (MB/s = req/s)" 8 /bytes/1048576

if ! $quick; then
  big_runs=$(( runs < 3 ? runs : 3 ))
  for way in download upload; do
    declare -A speed=()
    for ((r = 1; r <= big_runs; r++)); do
      for path in "${paths[@]}"; do speed[$path]+="$(transfer "$path" "$way") "; done
    done
    echo
    echo "### 1 GiB $way (median of $big_runs alternating runs)"
    echo
    echo "| path | MB/s | ÷ direct | ÷ rathole |"
    echo "|---|---|---|---|"
    d=$(tr ' ' '\n' <<<"${speed[direct]}" | median)
    rh=$(tr ' ' '\n' <<<"${speed[rathole]}" | median)
    for path in "${paths[@]}"; do
      m=$(tr ' ' '\n' <<<"${speed[$path]}" | median)
      echo "| $path | $(tr ' ' '\n' <<<"${speed[$path]}" | median_range) | $(ratio "$m" "$d") | $(ratio "$m" "$rh") |"
    done
    unset speed
  done
fi

echo
echo "### WebSocket echo through a route (upgrades) and gRPC unary through a host-addressed route"
echo
echo '```'
python3 bench/ws_echo.py measure --direct "ws://127.0.0.1:$WS_PORT/" --tether "ws://$PUBLIC/v1/routes/ws/" \
  --key "$KEY" --pings $((quick_pings)) --megabytes $((ws_megabytes))
python3 bench/grpc_unary.py --relay "$PUBLIC" --authority grpc.routes.bench.test --key "$KEY" \
  --direct "127.0.0.1:$GRPC_PORT" --count 2000 --seconds "$secs"
echo '```'

peak_relay=$(awk '$1 > m { m = $1 } END { print m }' "$STACK_WORK/rss")
peak_agent=$(awk '$2 > m { m = $2 } END { print m }' "$STACK_WORK/rss")
echo
echo "| Tether process | idle RSS MiB | peak RSS MiB (during the runs above) |"
echo "|---|---|---|"
echo "| tether-relay | $(awk -v k="$idle_relay" 'BEGIN { printf "%.1f", k/1024 }') | $(awk -v k="$peak_relay" 'BEGIN { printf "%.1f", k/1024 }') |"
echo "| tether-agent | $(awk -v k="$idle_agent" 'BEGIN { printf "%.1f", k/1024 }') | $(awk -v k="$peak_agent" 'BEGIN { printf "%.1f", k/1024 }') |"
mkdir -p bench/results
cp "$STACK_WORK/raw.txt" "bench/results/$(date -u +%Y-%m-%d)-run-raw.txt"
