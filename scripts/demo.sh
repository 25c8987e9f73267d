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

STACK_BIN=target/debug
STACK_WORK=$(mktemp -d)
# shellcheck source=scripts/stack.sh
source scripts/stack.sh
trap 'stack_stop; rm -rf "$STACK_WORK"' EXIT
trap 'exit 130' INT TERM
stack_start

echo "==> sample upstream  http://$UPSTREAM"
echo "==> relay            http://$PUBLIC  (admin http://$ADMIN)"
echo "==> agent            demo-agent, 2 sessions, route 'sample' -> http://$UPSTREAM"
echo "                     admin http://$AGENT_ADMIN/healthz  http://$AGENT_ADMIN/metrics"
echo
url="http://$PUBLIC/v1/routes/sample/echo/hello?from=demo"
echo "\$ curl -i -H 'Proxy-Authorization: Bearer ttk_…' '$url'"
response=$(curl -sS -i -H "Proxy-Authorization: Bearer $KEY" "$url")
printf '%s\n\n' "$response"
echo "==> the agent's audit line for it:"
grep 'tether::audit' "$STACK_WORK/agent.log" | tail -n1
if ! head -n1 <<<"$response" | grep -q ' 200'; then
  echo "demo: the request through the tunnel failed" >&2
  exit 1
fi

echo
echo "==> a path the route does not allow is refused by the agent (403 denied):"
denied=$(curl -sS -H "Proxy-Authorization: Bearer $KEY" -X DELETE "http://$PUBLIC/v1/routes/sample/echo/x")
printf '%s\n' "$denied"
grep -q '"code":"denied"' <<<"$denied" || { echo "demo: expected a denial" >&2; exit 1; }

echo
echo "==> a streamed response (server-sent events, one every 200 ms, not buffered):"
curl -sS -N -H "Proxy-Authorization: Bearer $KEY" "http://$PUBLIC/v1/routes/sample/sse/3"

echo "==> connected agents, from the relay's admin API:"
echo "\$ TETHER_RELAY_ADMIN_KEY=\$(cat admin.key) tether-relay --config relay.toml agents --admin $ADMIN"
TETHER_RELAY_ADMIN_KEY=$(cat "$STACK_WORK/admin.key") \
  "$STACK_BIN/tether-relay" --config "$STACK_WORK/relay.toml" agents --admin "$ADMIN"

if $once; then
  echo "==> demo OK"
  exit 0
fi
echo
echo "Try it yourself (Ctrl-C stops the demo):"
echo "  curl -i -H 'Proxy-Authorization: Bearer $KEY' 'http://$PUBLIC/v1/routes/sample/echo/anything'"
echo "  curl -s -H 'Proxy-Authorization: Bearer $KEY' 'http://$PUBLIC/v1/routes/sample/bytes/1048576' | wc -c"
echo "  curl -s 'http://$AGENT_ADMIN/metrics' | grep tether_agent_requests"
echo "  TETHER_RELAY_ADMIN_KEY=$(cat "$STACK_WORK/admin.key") $STACK_BIN/tether-relay --config $STACK_WORK/relay.toml agents --admin $ADMIN"
wait
