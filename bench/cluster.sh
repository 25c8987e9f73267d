#!/usr/bin/env bash
# Cost of a peer hop in cluster mode: two relay replicas on one PostgreSQL
# (Debian's server, started here in a temp dir on a run-time port), one
# agent whose single session is on replica 1, the sample upstream. The same
# small GET through replica 1 (local session) and through replica 2 (one
# HTTP/2 hop to replica 1), with wrk: sequential (1 connection) and 32
# keep-alive connections; req/s, p50/p99 and the ratio. Release build.
# Everything on 127.0.0.1, stopped by PID.
# Usage: bench/cluster.sh [SECONDS]   (per cell, default 5)
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-5}
command -v wrk >/dev/null || { apt-get update -qq && apt-get install -y -qq wrk; }
pg_bin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n1)
if [[ -z "$pg_bin" ]]; then
  apt-get update -qq && apt-get install -y -qq postgresql
  pg_bin=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n1)
fi

cargo build --release --workspace --quiet
bin=target/release
work=$(mktemp -d)
chmod 777 "$work"
pids=()
as_pg() { if [[ $(id -u) == 0 ]]; then runuser -u postgres -- "$@"; else "$@"; fi; }
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  as_pg "$pg_bin/pg_ctl" -D "$work/pg" -m immediate stop >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_for() { # file pattern
  for _ in $(seq 200); do grep -q "$2" "$1" 2>/dev/null && return 0; sleep 0.1; done
  echo "timed out waiting for '$2' in $1" >&2; tail -5 "$1" >&2; return 1
}

pg_port=$(free_port)
as_pg "$pg_bin/initdb" -D "$work/pg" -A trust -U postgres --no-sync >/dev/null
as_pg "$pg_bin/pg_ctl" -D "$work/pg" -o "-p $pg_port -k $work -c listen_addresses=127.0.0.1 -c fsync=off" \
  -w -t 30 start >/dev/null
store="postgres://postgres@127.0.0.1:$pg_port/postgres"

"$bin/tether-sample-upstream" 127.0.0.1:0 >"$work/upstream.addr" 2>"$work/upstream.log" & pids+=($!)
wait_for "$work/upstream.addr" ':'
upstream=$(head -n1 "$work/upstream.addr")

printf 'bench-peer-key-0123456789\n' >"$work/peer.key"
for i in 1 2; do
  cat >"$work/relay-$i.toml" <<TOML
[listen]
public = "127.0.0.1:0"
admin = "127.0.0.1:0"
[store]
url = "$store"
[cluster]
replica_id = "relay-$i"
peer_listen = "127.0.0.1:$(free_port)"
peer_key_file = "$work/peer.key"
TOML
done
relay() { "$bin/tether-relay" --config "$work/relay-$1.toml" "${@:2}"; }
token=$(relay 1 tokens create --account bench 2>/dev/null)
key=$(relay 1 keys create --account bench 2>/dev/null)
declare -A public
for i in 1 2; do
  relay "$i" serve 2>"$work/relay-$i.log" & pids+=($!)
  wait_for "$work/relay-$i.log" listening
  public[$i]=$(grep -o 'public=[0-9.:]*' "$work/relay-$i.log" | head -n1 | cut -d= -f2)
done
printf '%s\n' "$token" >"$work/token"
cat >"$work/agent.toml" <<TOML
[relay]
url = "ws://${public[1]}/v1/agent/connect"
token_file = "$work/token"
connections = 1
[agent]
name = "bench-agent"
[admin]
listen = "127.0.0.1:0"
[routes.sample]
url = "http://$upstream"
methods = ["GET"]
paths = ["/**"]
TOML
"$bin/tether-agent" run --config "$work/agent.toml" 2>"$work/agent.log" & pids+=($!)
wait_for "$work/agent.log" 'session up'
# Until replica 2 has heard of the agent (NOTIFY).
for _ in $(seq 100); do
  code=$(curl -s -o /dev/null -w '%{http_code}' -H "Proxy-Authorization: Bearer $key" \
    "http://${public[2]}/v1/routes/sample/bytes/64")
  [[ $code == 200 ]] && break
  sleep 0.1
done
[[ $code == 200 ]] || { echo "replica 2 never routed to the agent (last status $code)" >&2; exit 1; }

to_ms() { awk -v v="$1" 'BEGIN { n=v+0; if (v ~ /us$/) n/=1000; else if (v ~ /ms$/) n=n; else if (v ~ /s$/) n*=1000; printf "%.3f", n }'; }
cell() { # replica conns → "rps p50 p99"
  local out
  out=$(wrk -t1 -c"$2" -d"${secs}s" --latency -H "Proxy-Authorization: Bearer $key" \
    "http://${public[$1]}/v1/routes/sample/bytes/64")
  echo "$out" >>"$work/raw.txt"
  echo "$(awk '/Requests\/sec/ {print $2}' <<<"$out") $(to_ms "$(awk '$1=="50%" {print $2}' <<<"$out")") $(to_ms "$(awk '$1=="99%" {print $2}' <<<"$out")")"
}
echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ); $(nproc) cores; wrk ${secs} s per cell; release build"
echo
echo "| connections | path | req/s | p50 ms | p99 ms |"
echo "|---|---|---|---|---|"
for conns in 1 32; do
  read -r l_rps l_p50 l_p99 < <(cell 1 "$conns")
  read -r h_rps h_p50 h_p99 < <(cell 2 "$conns")
  echo "| $conns | local session (replica 1) | $l_rps | $l_p50 | $l_p99 |"
  echo "| $conns | one peer hop (replica 2 → 1) | $h_rps | $h_p50 | $h_p99 |"
  echo "| $conns | hop ÷ local | $(awk -v a="$h_rps" -v b="$l_rps" 'BEGIN { printf "%.2f", a/b }') | +$(awk -v a="$h_p50" -v b="$l_p50" 'BEGIN { printf "%.3f", a-b }') | |"
done
mkdir -p bench/results
cp "$work/raw.txt" "bench/results/$(date -u +%Y-%m-%d)-cluster-raw.txt"
