# Sourced by scripts/demo.sh and bench/*.sh: starts a sample upstream, a
# relay (SQLite in $STACK_WORK) and an agent on 127.0.0.1 from the binaries
# in $STACK_BIN, and sets UPSTREAM, PUBLIC, ADMIN, KEY and the PIDs
# UPSTREAM_PID, RELAY_PID, AGENT_PID, and AGENT_ADMIN (the agent's admin
# listener). The relay's admin API key is in $STACK_WORK/admin.key. `stack_stop` stops them by PID.
# If the caller defines a function `stack_agent_extra`, its output (TOML,
# which may use $UPSTREAM) is appended to the agent's config; the output
# of `stack_relay_listen_extra`, if defined, to the relay's [listen]
# (e.g. route_domain for bench/grpc_unary.py).

STACK_PIDS=()

stack_stop() {
  local pid
  for pid in "${STACK_PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${STACK_PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
  STACK_PIDS=()
}

# Waits up to 20 s for a pattern in a file (a process's log).
stack_wait_for() {
  local file=$1 pattern=$2
  for _ in $(seq 200); do
    grep -q "$pattern" "$file" 2>/dev/null && return 0
    sleep 0.1
  done
  echo "timed out waiting for '$pattern' in $file" >&2
  cat "$file" >&2
  return 1
}

stack_start() {
  : "${STACK_BIN:?}" "${STACK_WORK:?}"
  "$STACK_BIN/tether-sample-upstream" 127.0.0.1:0 >"$STACK_WORK/upstream.addr" 2>"$STACK_WORK/upstream.log" &
  UPSTREAM_PID=$!
  STACK_PIDS+=("$UPSTREAM_PID")
  stack_wait_for "$STACK_WORK/upstream.addr" ':'
  UPSTREAM=$(head -n1 "$STACK_WORK/upstream.addr")

  cat >"$STACK_WORK/relay.toml" <<TOML
[listen]
public = "127.0.0.1:0"
admin = "127.0.0.1:0"
$(declare -F stack_relay_listen_extra >/dev/null && stack_relay_listen_extra)
[store]
url = "sqlite://$STACK_WORK/relay.db"
[admin]
key_file = "$STACK_WORK/admin.key"
TOML
  # The admin HTTP API (what `tether-relay agents` asks) needs a bearer key.
  (umask 077 && head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$STACK_WORK/admin.key")
  local relay=("$STACK_BIN/tether-relay" --config "$STACK_WORK/relay.toml")
  local token
  token=$("${relay[@]}" tokens create --account demo --name demo-agent 2>/dev/null)
  KEY=$("${relay[@]}" keys create --account demo --name demo-caller 2>/dev/null)

  "${relay[@]}" serve 2>"$STACK_WORK/relay.log" &
  RELAY_PID=$!
  STACK_PIDS+=("$RELAY_PID")
  stack_wait_for "$STACK_WORK/relay.log" 'listening'
  PUBLIC=$(grep -o 'public=[0-9.:]*' "$STACK_WORK/relay.log" | head -n1 | cut -d= -f2)
  ADMIN=$(grep -o 'admin=[0-9.:]*' "$STACK_WORK/relay.log" | head -n1 | cut -d= -f2)

  (umask 077 && printf '%s\n' "$token" >"$STACK_WORK/token")
  cat >"$STACK_WORK/agent.toml" <<TOML
[relay]
url = "ws://$PUBLIC/v1/agent/connect"
token_file = "$STACK_WORK/token"
connections = 2

[agent]
name = "demo-agent"
tags = ["demo"]

[admin]
listen = "127.0.0.1:0"

[routes.sample]
url = "http://$UPSTREAM"
methods = ["GET", "POST", "PUT"]
paths = ["/**"]

$(declare -F stack_agent_extra >/dev/null && stack_agent_extra)
TOML
  "$STACK_BIN/tether-agent" run --config "$STACK_WORK/agent.toml" 2>"$STACK_WORK/agent.log" &
  AGENT_PID=$!
  STACK_PIDS+=("$AGENT_PID")
  stack_wait_for "$STACK_WORK/agent.log" 'starting'
  AGENT_ADMIN=$(grep -o 'admin=[0-9.:]*' "$STACK_WORK/agent.log" | head -n1 | cut -d= -f2)
  for _ in $(seq 200); do
    curl -fs "http://$ADMIN/metrics" | grep -q '^tether_relay_agent_sessions 2' && return 0
    sleep 0.1
  done
  echo "agent sessions did not come up" >&2
  cat "$STACK_WORK/agent.log" >&2
  return 1
}
