#!/usr/bin/env bash
# Added latency of end-user identity: the same small GET through relay +
# agent on a route without identity rules and on one that verifies the
# caller's token (cached after the first request), matches its groups,
# fills Impersonate-* headers from the claims and evaluates a small Rego
# policy; plus the direct call. The issuer is the test OpenID provider
# (tests/support/oidc, `npm ci --prefix tests/support/oidc`) on 127.0.0.1.
# wrk with 1 connection (latency) and 32 connections (throughput), 10 s
# each. The uncached cost (signature check of a token not seen before) is
# measured in process: `cargo bench --bench identity` (benches/identity.rs).
# Everything on 127.0.0.1; processes stopped by PID.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v wrk >/dev/null || { echo "needs wrk (apt-get install wrk)" >&2; exit 1; }
[ -d tests/support/oidc/node_modules/oidc-provider ] \
  || npm ci --prefix tests/support/oidc --no-audit --no-fund --silent
duration=${DURATION:-10s}

cargo build --release --workspace --quiet
STACK_BIN=target/release
STACK_WORK=$(mktemp -d)

(cd tests/support/oidc && PORT=0 KID=bench exec node issuer.mjs) >"$STACK_WORK/issuer.out" 2>/dev/null &
ISSUER_PID=$!
for _ in $(seq 300); do grep -q '^listening' "$STACK_WORK/issuer.out" && break; sleep 0.1; done
ISSUER="http://127.0.0.1:$(awk '/^listening/ {print $2}' "$STACK_WORK/issuer.out")"
TOKEN=$(curl -fs -X POST "$ISSUER/token" -d grant_type=client_credentials -d client_id=jane \
  -d client_secret=secret-jane -d scope=api -d resource=urn:tether | sed 's/.*"access_token":"\([^"]*\)".*/\1/')

cat >"$STACK_WORK/policy.rego" <<'REGO'
package tether

default allow := false

allow if {
	input.method == "GET"
	"group:default/platform" in input.groups
}
REGO

stack_agent_extra() {
  cat <<TOML
[identity]
issuer = "$ISSUER"
jwks_url = "$ISSUER/jwks"
audiences = ["tether"]
groups_claim = "groups"

[routes.with_identity]
url = "http://$UPSTREAM"
paths = ["/**"]
groups = ["group:default/platform"]
policy = "$STACK_WORK/policy.rego"
headers = { Impersonate-User = "\${{ user.name }}", Impersonate-Group = "tether:\${{ user.groups }}" }
TOML
}
# shellcheck source=scripts/stack.sh
source scripts/stack.sh
trap 'stack_stop; kill "$ISSUER_PID" 2>/dev/null || true; rm -rf "$STACK_WORK"' EXIT
stack_start

auth="Proxy-Authorization: Bearer $KEY"
user="Authorization: Bearer $TOKEN"
run() { # name url connections [header...]
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

curl -fs -H "$auth" -H "$user" "http://$PUBLIC/v1/routes/with_identity/echo" | grep -q 'tether:group:default/platform' \
  || { echo "identity headers were not filled" >&2; exit 1; }

echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ); machine: $(nproc) cores; wrk $duration per row"
echo
echo "| path | connections | req/s | p50 | p99 |"
echo "|---|---|---|---|---|"
for c in 1 32; do
  run "direct" "http://$UPSTREAM/echo" "$c"
  run "tunnel, no identity" "http://$PUBLIC/v1/routes/sample/echo" "$c" -H "$auth" -H "$user"
  run "tunnel, identity (cached) + groups + policy + impersonation" \
    "http://$PUBLIC/v1/routes/with_identity/echo" "$c" -H "$auth" -H "$user"
done
