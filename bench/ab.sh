#!/usr/bin/env bash
# A/B of two builds on bulk transfers: a stack (sample upstream, relay,
# agent auditing to a file; scripts/stack.sh) from each of the binary
# dirs $1 and $2, side by side on 127.0.0.1; three alternating rounds of
# one 1 GiB download, one 1 GiB upload (curl) and 3 s of 1 MiB responses
# over 8 connections (wrk) through each. For levers whose effect is
# within bench/run.sh's run-to-run spread. Everything is stopped by PID.
# Usage: bench/ab.sh BIN_DIR_A BIN_DIR_B
set -euo pipefail
cd "$(dirname "$0")/.."
: "${1:?BIN_DIR_A}" "${2:?BIN_DIR_B}"
command -v wrk >/dev/null || { apt-get update -qq && apt-get install -y -qq wrk; }
declare -A pub key
works=()
startone() { # name bindir
  STACK_BIN=$2; STACK_WORK=$(mktemp -d); works+=("$STACK_WORK")
  stack_agent_extra() { printf '[audit]\nfile = "%s/audit.jsonl"\n' "$STACK_WORK"; }
  stack_start
  pub[$1]=$PUBLIC; key[$1]=$KEY
}
source scripts/stack.sh
trap 'stack_stop; rm -rf "${works[@]}"' EXIT
startone A "$1"; startone B "$2"
for r in 1 2 3; do
  for s in A B; do
    d=$(curl -sS -o /dev/null -w '%{speed_download}' -H "Proxy-Authorization: Bearer ${key[$s]}" "http://${pub[$s]}/v1/routes/sample/bytes/1073741824")
    u=$(head -c 1073741824 /dev/zero | curl -sS -o /dev/null -w '%{speed_upload}' -T - -X PUT -H "Proxy-Authorization: Bearer ${key[$s]}" "http://${pub[$s]}/v1/routes/sample/upload")
    m=$(wrk -t2 -c8 -d3s -H "Proxy-Authorization: Bearer ${key[$s]}" "http://${pub[$s]}/v1/routes/sample/bytes/1048576" | awk '/Requests\/sec/ {print $2}')
    echo "$s round $r: down $((${d%.*}/1000000)) MB/s up $((${u%.*}/1000000)) MB/s 1MiB ${m} req/s"
  done
done
