#!/usr/bin/env bash
# Relay memory held by sessions that carried bulk traffic: a relay, a
# sample upstream and four agents (2 + 3 x 16 = 50 sessions) from the
# binaries in BIN_DIR (scripts/stack.sh); relay RSS idle, then after 64
# callers fetch 1 MiB answers for 4 s, twice, each followed by 2 s idle.
# For comparing builds (HTTP/2 frame size, buffers). Stopped by PID.
# Usage: bench/session_memory.sh BIN_DIR
set -euo pipefail
cd "$(dirname "$0")/.."
STACK_BIN=${1:?BIN_DIR}; STACK_WORK=$(mktemp -d)
# shellcheck source=scripts/stack.sh
source scripts/stack.sh
trap 'stack_stop; rm -rf "$STACK_WORK"' EXIT
stack_start
# 3 more agents of 16 sessions each (the first has 2)
for i in 1 2 3; do
  sed -e "s/connections = 2/connections = 16/" -e "s/name = \"demo-agent\"/name = \"agent-$i\"/" "$STACK_WORK/agent.toml" > "$STACK_WORK/agent$i.toml"
  "$STACK_BIN/tether-agent" run --config "$STACK_WORK/agent$i.toml" 2>"$STACK_WORK/agent$i.log" &
  STACK_PIDS+=($!)
done
for _ in $(seq 100); do curl -fs "http://$ADMIN/metrics" | grep -q '^tether_relay_agent_sessions 50' && break; sleep 0.1; done
sleep 1
r0=$(awk '/^VmRSS/ {print $2}' /proc/$RELAY_PID/status)
wrk -t2 -c64 -d4s -H "Proxy-Authorization: Bearer $KEY" "http://$PUBLIC/v1/routes/sample/bytes/1048576" | grep Requests/sec
sleep 2
r1=$(awk '/^VmRSS/ {print $2}' /proc/$RELAY_PID/status)
wrk -t2 -c64 -d4s -H "Proxy-Authorization: Bearer $KEY" "http://$PUBLIC/v1/routes/sample/bytes/1048576" >/dev/null
sleep 2
r2=$(awk '/^VmRSS/ {print $2}' /proc/$RELAY_PID/status)
echo "sessions $(curl -fs "http://$ADMIN/metrics" | awk '/^tether_relay_agent_sessions / {print $2}') relay RSS idle $r0 kB, after bulk $r1 kB, after a second round $r2 kB: +$(( (r2 - r0) / 50 )) kB per session"
