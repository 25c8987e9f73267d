#!/usr/bin/env bash
# One-command local demo: builds the workspace, then starts on 127.0.0.1
# a sample upstream, a relay (SQLite store in a temp dir) and an agent,
# sends one real request through the tunnel and prints it, with the curl
# command to send more. Stops everything on Ctrl-C (or at once with --once).
set -euo pipefail
cd "$(dirname "$0")/.."

once=false
[[ "${1:-}" == "--once" || "${CI:-}" == "true" ]] && once=true

command -v curl >/dev/null || { echo "demo: curl is needed (apt-get install curl)" >&2; exit 1; }

echo "==> building (cargo build --workspace)"
cargo build --workspace --quiet
bin=target/debug

work=$(mktemp -d)
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT INT TERM

# Wait for a pattern in a file (a process's log), up to 20 s.
wait_for() {
  local file=$1 pattern=$2
  for _ in $(seq 200); do
    grep -q "$pattern" "$file" 2>/dev/null && return 0
    sleep 0.1
  done
  echo "demo: timed out waiting for '$pattern' in $file" >&2
  cat "$file" >&2
  return 1
}

"$bin/tether-sample-upstream" 127.0.0.1:0 >"$work/upstream.addr" 2>"$work/upstream.log" &
pids+=($!)
wait_for "$work/upstream.addr" ':'
upstream=$(head -n1 "$work/upstream.addr")

cat >"$work/relay.toml" <<TOML
[listen]
public = "127.0.0.1:0"
admin = "127.0.0.1:0"
[store]
url = "sqlite://$work/relay.db"
TOML
token=$("$bin/tether-relay" --config "$work/relay.toml" tokens create --account demo --name demo-agent 2>/dev/null)
key=$("$bin/tether-relay" --config "$work/relay.toml" keys create --account demo --name demo-caller 2>/dev/null)

"$bin/tether-relay" --config "$work/relay.toml" serve 2>"$work/relay.log" &
pids+=($!)
wait_for "$work/relay.log" 'listening'
public=$(grep -o 'public=[0-9.:]*' "$work/relay.log" | head -n1 | cut -d= -f2)
admin=$(grep -o 'admin=Some([0-9.:]*' "$work/relay.log" | head -n1 | sed 's/admin=Some(//')

printf '%s\n' "$token" >"$work/token"
chmod 600 "$work/token"
cat >"$work/agent.toml" <<TOML
[relay]
url = "ws://$public/v1/agent/connect"
token_file = "$work/token"
connections = 2

[agent]
name = "demo-agent"
tags = ["demo"]

[admin]
listen = "127.0.0.1:0"

[routes.sample]
url = "http://$upstream"
methods = ["GET", "POST"]
paths = ["/**"]
TOML
"$bin/tether-agent" run --config "$work/agent.toml" 2>"$work/agent.log" &
pids+=($!)
for _ in $(seq 200); do
  curl -fs "http://$admin/metrics" | grep -q '^tether_relay_agent_sessions 2' && break
  sleep 0.1
done

echo "==> sample upstream  http://$upstream"
echo "==> relay            http://$public  (admin http://$admin)"
echo "==> agent            demo-agent, 2 sessions, route 'sample' -> http://$upstream"
echo
request=(curl -sS -i -H "Proxy-Authorization: Bearer $key" "http://$public/v1/routes/sample/echo/hello?from=demo")
echo "\$ curl -i -H 'Proxy-Authorization: Bearer ttk_…' 'http://$public/v1/routes/sample/echo/hello?from=demo'"
"${request[@]}"
echo
echo
echo "==> the agent's audit line for it:"
grep 'tether::audit' "$work/agent.log" | tail -n1
if ! "${request[@]}" | head -n1 | grep -q ' 200'; then
  echo "demo: request through the tunnel failed" >&2
  exit 1
fi

if $once; then
  echo "==> demo OK"
  exit 0
fi
echo
echo "Try it yourself (Ctrl-C stops the demo):"
echo "  curl -i -H 'Proxy-Authorization: Bearer $key' 'http://$public/v1/routes/sample/echo/anything'"
echo "  curl -s -H 'Proxy-Authorization: Bearer $key' 'http://$public/v1/routes/sample/bytes/1048576' | wc -c"
wait
