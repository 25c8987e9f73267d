#!/usr/bin/env bash
# Measures the relay with a swarm of idle agents (crates/swarm: the real
# agent connection loop, N agents in one process): relay RSS per session,
# then the reconnect storm after the relay is SIGKILLed and restarted on
# the same port — how long from the new relay listening until 50 %, 90 %
# and 100 % of the agents are back. Everything on 127.0.0.1, stopped by PID.
# Usage: bench/swarm.sh [AGENTS]   (default 1000)
set -euo pipefail
cd "$(dirname "$0")/.."
agents=${1:-1000}

# Each session is one socket in the swarm and one in the relay (separate
# processes); both inherit this limit.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
if (( $(ulimit -n) < agents + 200 )); then
  echo "ulimit -n is $(ulimit -n): too low for $agents agents" >&2
  exit 1
fi

cargo build --release --workspace --quiet
bin=target/release
work=$(mktemp -d)
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT

now_ms() { date +%s%3N; }
rss() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status"; }
wait_for() { # file pattern seconds
  for _ in $(seq $(( $3 * 10 ))); do
    grep -q "$2" "$1" 2>/dev/null && return 0
    sleep 0.1
  done
  echo "timed out waiting for '$2' in $1" >&2; tail -5 "$1" >&2; return 1
}
# Waits until the swarm's last report says `up` == $1; prints that report's time.
wait_up() {
  for _ in $(seq 1200); do
    line=$(tail -n1 "$work/swarm.jsonl" 2>/dev/null || true)
    if [[ "$line" == *"\"up\":$1}"* ]]; then
      sed -E 's/.*"t_ms":([0-9]+).*/\1/' <<<"$line"; return 0
    fi
    sleep 0.1
  done
  echo "swarm never reached $1 sessions: $(tail -n1 "$work/swarm.jsonl")" >&2; return 1
}
# First report time at which up >= $1, after time $2.
first_at_least() {
  awk -v n="$1" -v after="$2" -F'[:,}]' \
    '{ t=$2; u=$4; if (t >= after && u >= n) { print t; exit } }' "$work/swarm.jsonl"
}

cat >"$work/relay.toml" <<TOML
[listen]
public = "127.0.0.1:0"
admin = "127.0.0.1:0"
[store]
url = "sqlite://$work/relay.db"
TOML
relay=("$bin/tether-relay" --config "$work/relay.toml")
"${relay[@]}" tokens create --account swarm --name swarm >"$work/token" 2>/dev/null
TETHER_LOG=warn,tether_relay=info "${relay[@]}" serve 2>"$work/relay.log" &
relay_pid=$!; pids+=("$relay_pid")
wait_for "$work/relay.log" listening 20
public=$(grep -o 'public=[0-9.:]*' "$work/relay.log" | head -n1 | cut -d= -f2)
admin=$(grep -o 'admin=[0-9.:]*' "$work/relay.log" | head -n1 | cut -d= -f2)
# The restarted relay must come back on the same ports.
sed -i "s/^public = .*/public = \"$public\"/; s/^admin = .*/admin = \"$admin\"/" "$work/relay.toml"
sleep 0.5
idle=$(rss "$relay_pid")

"$bin/tether-swarm" --relay "ws://$public/v1/agent/connect" --token-file "$work/token" \
  --agents "$agents" >"$work/swarm.jsonl" 2>"$work/swarm.log" &
swarm_pid=$!; pids+=("$swarm_pid")
started=$(now_ms)
echo "waiting for $agents sessions" >&2
all_up=$(wait_up "$agents")
sleep 2
loaded=$(rss "$relay_pid")
swarm_rss=$(rss "$swarm_pid")

kill -9 "$relay_pid"; wait "$relay_pid" 2>/dev/null || true
killed=$(now_ms)
wait_up 0 >/dev/null
sleep 1
TETHER_LOG=warn,tether_relay=info "${relay[@]}" serve 2>"$work/relay2.log" &
relay_pid=$!; pids+=("$relay_pid")
wait_for "$work/relay2.log" listening 20
listening=$(now_ms)
back=$(wait_up "$agents")
half=$(first_at_least $(( agents / 2 )) "$listening")
ninety=$(first_at_least $(( agents * 9 / 10 )) "$listening")

echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
echo "machine: $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), $(uname -sr)"
echo "agents: $agents (one session each, one swarm process)"
echo "first connect: all up $(( all_up - started )) ms after the swarm started"
echo "relay RSS: idle $(( idle )) KiB, with $agents sessions $(( loaded )) KiB, $(awk -v a="$idle" -v b="$loaded" -v n="$agents" 'BEGIN { printf "%.1f", (b - a) / n }') KiB per session"
echo "swarm RSS: $(( swarm_rss / 1024 )) MiB"
echo "relay SIGKILLed; restarted $(( listening - killed )) ms later (1 s pause + start)"
echo "reconnect after the relay listened: 50 % in $(( half - listening )) ms, 90 % in $(( ninety - listening )) ms, 100 % in $(( back - listening )) ms"
