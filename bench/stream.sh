#!/usr/bin/env bash
# Streams 1 GiB down and 1 GiB up through relay + agent (release build) and
# directly to the upstream in the same run; reports MB/s, the ratio to the
# direct call, and the RSS of relay and agent idle and at peak (from /proc).
# Everything runs on 127.0.0.1 and stops by PID. Usage: bench/stream.sh [BYTES]
set -euo pipefail
cd "$(dirname "$0")/.."
size=${1:-1073741824}

cargo build --release --workspace --quiet
STACK_BIN=target/release
STACK_WORK=$(mktemp -d)
# shellcheck source=scripts/stack.sh
source scripts/stack.sh
trap 'stack_stop; rm -rf "$STACK_WORK"' EXIT
stack_start
sleep 1

rss() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status"; }

# Samples the peak RSS of relay and agent while "$@" runs; prints
# "<curl output> relay_peak_kib agent_peak_kib".
with_peaks() {
  local flag="$STACK_WORK/running" out="$STACK_WORK/peaks"
  : >"$flag"
  (
    r=0 a=0
    while [[ -e "$flag" ]]; do
      cr=$(rss "$RELAY_PID"); ca=$(rss "$AGENT_PID")
      (( cr > r )) && r=$cr
      (( ca > a )) && a=$ca
      sleep 0.1
    done
    echo "$r $a" >"$out"
  ) &
  local sampler=$!
  local result
  result=$("$@")
  rm -f "$flag"
  wait "$sampler"
  echo "$result $(cat "$out")"
}

auth=(-H "Proxy-Authorization: Bearer $KEY")
tunnel="http://$PUBLIC/v1/routes/sample"
direct="http://$UPSTREAM"
fmt='%{http_code} %{size_download} %{size_upload} %{speed_download} %{speed_upload}\n'

idle_relay=$(rss "$RELAY_PID"); idle_agent=$(rss "$AGENT_PID")

read -r d_code d_size _ d_speed _ < <(curl -sS -o /dev/null -w "$fmt" "$direct/bytes/$size")
read -r t_code t_size _ t_speed _ r_down a_down < <(with_peaks curl -sS -o /dev/null -w "$fmt" "${auth[@]}" "$tunnel/bytes/$size")
# curl's size_upload counts chunked framing too: the upstream's answer
# says how many bytes it really received.
upload() {
  head -c "$size" /dev/zero | curl -sS -o "$STACK_WORK/upload.json" -w "$fmt" -T - "$@"
  grep -q "\"length\":$size," "$STACK_WORK/upload.json" || echo "short upload: $(cat "$STACK_WORK/upload.json")" >&2
}
read -r du_code _ _ _ du_speed < <(upload "$direct/upload")
read -r tu_code _ _ _ tu_speed r_up a_up < <(with_peaks upload "${auth[@]}" "$tunnel/upload")

for pair in "$d_code:$d_size" "$t_code:$t_size" "$du_code:$size" "$tu_code:$size"; do
  [[ "$pair" == "200:$size" ]] || { echo "transfer failed: $pair (expected 200:$size)" >&2; exit 1; }
done

mb() { awk -v b="$1" 'BEGIN { printf "%.0f", b / 1048576 }'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", a / b }'; }
mib() { awk -v k="$1" 'BEGIN { printf "%.1f", k / 1024 }'; }

echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
echo "machine: $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), $(uname -sr)"
echo "transfer size: $size bytes"
echo
echo "| path | download MB/s | ratio | upload MB/s | ratio |"
echo "|---|---|---|---|---|"
echo "| direct to upstream | $(mb "$d_speed") | 1.00 | $(mb "$du_speed") | 1.00 |"
echo "| relay + agent (ws://, 2 sessions) | $(mb "$t_speed") | $(ratio "$t_speed" "$d_speed") | $(mb "$tu_speed") | $(ratio "$tu_speed" "$du_speed") |"
echo
echo "| process | idle RSS MiB | peak RSS download MiB | peak RSS upload MiB |"
echo "|---|---|---|---|"
echo "| tether-relay | $(mib "$idle_relay") | $(mib "$r_down") | $(mib "$r_up") |"
echo "| tether-agent | $(mib "$idle_agent") | $(mib "$a_down") | $(mib "$a_up") |"
