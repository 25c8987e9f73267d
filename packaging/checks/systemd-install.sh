#!/usr/bin/env bash
# Replays docs/install-systemd.md ("The relay", then "By hand" for the
# agent) literally, as root, in a private mount namespace whose /usr/bin,
# /lib, /etc, /var/lib and /run are throw-away overlays (the host is not
# changed), then starts each program the way its unit does and shows that
# the service reads its configuration:
#   - the unit's ExecStart=, as an unrelated uid (setpriv) with the unit's
#     SupplementaryGroups= and no other group, in a user namespace mapping
#     only that uid (PrivateUsers=yes), with the credentials directory
#     LoadCredential= gives and the StateDirectory= it owns;
#   - the agent opens a session with the relay (/readyz), and re-reads its
#     edited configuration on SIGHUP (ExecReload=).
# Replay deviations, each printed: the debug build for target/release and
# no cargo build; a configuration on 127.0.0.1 for the guide's "edit" step
# and the token the relay created for "tta_…"; the emulated start for
# systemctl (no systemd as PID 1 here); journalctl skipped. The relay's
# group comes from the .deb's postinst (the agent's from the guide's
# groupadd). Needs target/debug built; run as root.
set -euo pipefail
cd "$(dirname "$0")/../.."
repo=$PWD

if [[ ${1:-} != --inside ]]; then
  exec unshare --mount --propagation private "$0" --inside
fi

work=$(mktemp -d)
pids=()
declare -A unit_pid
cleanup() {
  local pid
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  umount -l /usr/bin /lib /etc /var/lib /run "$work" 2>/dev/null || true
  rmdir "$work"
}
trap cleanup EXIT
mount -t tmpfs tmpfs "$work"
for dir in /usr/bin /lib /etc /var/lib /run; do
  name=${dir//\//_}
  mkdir -p "$work/upper$name" "$work/work$name"
  mount -t overlay overlay -o "lowerdir=$dir,upperdir=$work/upper$name,workdir=$work/work$name" "$dir"
done
echo "    (PID 1 is $(ps -o comm= -p 1): starting services as their units would, not through systemd)"

free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
relay_public=$(free_port) relay_admin=$(free_port) agent_admin=$(free_port)
token=""

# The guide's fenced shell block under heading $1.
guide_block() {
  awk -v h="$1" '$0 == h {s = 1; next} s && /^```sh$/ {b = 1; next} b && /^```$/ {exit} b' docs/install-systemd.md
}

unit_value() { sed -n "s/^$2=//p" "/lib/systemd/system/$1"; }

# Starts the installed unit $1 as uid $2 the way systemd would.
start_unit() {
  local unit=$1 uid=$2 creds=/run/credentials/$1 groups="" name id path dir
  for name in $(unit_value "$unit" SupplementaryGroups); do
    groups+=${groups:+,}$(getent group "$name" | cut -d: -f3)
  done
  mkdir -p "$creds"
  while IFS=: read -r id path; do
    [[ -n $id ]] || continue
    install -m 0400 -o "$uid" -g "$uid" "$path" "$creds/$id"
  done < <(unit_value "$unit" LoadCredential)
  chown "$uid:$uid" "$creds" && chmod 0500 "$creds"
  for dir in $(unit_value "$unit" StateDirectory); do
    install -d -m 0700 -o "$uid" -g "$uid" "/var/lib/$dir"
  done
  local exec_start group_args=(--clear-groups)
  [[ -z $groups ]] || group_args=(--groups="$groups")
  exec_start=$(unit_value "$unit" ExecStart)
  exec_start=${exec_start//%d/$creds}
  echo "    (systemd: $unit as uid $uid, groups ${groups:-none}, PrivateUsers, CREDENTIALS_DIRECTORY=$creds: $exec_start)"
  # shellcheck disable=SC2086 # ExecStart= is split on whitespace, as systemd does here
  setpriv --reuid="$uid" --regid="$uid" "${group_args[@]}" \
    --inh-caps=-all --bounding-set=-all --no-new-privs -- \
    unshare --user --map-user="$uid" --map-group="$uid" -- \
    env -i PATH=/usr/bin:/bin CREDENTIALS_DIRECTORY="$creds" TETHER_LOG=info $exec_start \
    </dev/null >"$work/$unit.log" 2>&1 &
  pids+=($!)
  unit_pid[$unit]=$!
}

wait_ok() {
  local url=$1 unit=$2 pid=$3 i
  for ((i = 0; i < 150; i++)); do
    kill -0 "$pid" 2>/dev/null || { echo "FAIL: $unit exited:"; cat "$work/$unit.log"; exit 1; }
    curl -fsS --noproxy '*' -o /dev/null "$url" 2>/dev/null && return 0
    sleep 0.1
  done
  echo "FAIL: $unit: $url never answered"; cat "$work/$unit.log"; exit 1
}

# The test's stand-in for the guide's "edit" step of file $1.
edit() {
  case $1 in
    /etc/tether/relay.toml) cat >"$1" <<EOF
[listen]
public = "127.0.0.1:$relay_public"
admin = "127.0.0.1:$relay_admin"
[store]
url = "sqlite:///var/lib/tether-relay/relay.db"
EOF
      ;;
    /etc/tether/agent.toml) cat >"$1" <<EOF
[relay]
url = "ws://127.0.0.1:$relay_public/v1/agent/connect"
token_file = "/etc/tether/token"
[agent]
name = "systemd-replay"
[admin]
listen = "127.0.0.1:$agent_admin"
EOF
      ;;
  esac
}

replay() {
  local line
  while IFS= read -r line; do
    [[ -n $line ]] || continue
    case $line in
      "cargo build"*) echo "    (replay: the debug build instead of: $line)"; continue ;;
      "journalctl"*) echo "    (replay: skipped: $line)"; continue ;;
      "systemctl daemon-reload && systemctl enable --now "*)
        echo "    \$ $line"
        unit=${line##* }.service
        [[ -f /lib/systemd/system/$unit ]] || { echo "FAIL: $unit not installed"; exit 1; }
        if [[ $unit == tether-relay.service ]]; then
          start_unit "$unit" 61235
          wait_ok "http://127.0.0.1:$relay_admin/healthz" "$unit" "${unit_pid[$unit]}"
          token=$(tether-relay --config /etc/tether/relay.toml tokens create --account REPLAY </dev/null 2>/dev/null)
        else
          start_unit "$unit" 61234
          wait_ok "http://127.0.0.1:$agent_admin/readyz" "$unit" "${unit_pid[$unit]}"
        fi
        echo "    ok: $unit is up"
        continue ;;
    esac
    line=${line//target\/release\//target/debug/}
    echo "    \$ $line"
    [[ $line != *"tta_…"* ]] || echo "    (replay: the token tether-relay tokens create printed for tta_…)"
    line=${line//tta_…/$token}
    (cd "$repo" && bash -euo pipefail -c "$line" </dev/null)
    if [[ $line == *"# edit"* ]]; then
      read -ra words <<<"${line%%#*}"
      file=${words[-1]}
      edit "$file"
      echo "    (replay: edited $file: $(stat -c '%U:%G %a' "$file"))"
    fi
  done
}

echo "==> the tether-relay .deb's postinst"
packaging/deb/tether-relay/postinst configure
getent group tether-relay-config >/dev/null
echo "==> docs/install-systemd.md, The relay"
replay < <(guide_block "## The relay")
echo "==> docs/install-systemd.md, By hand (the agent)"
replay < <(guide_block "## By hand")

echo "==> the agent re-reads its configuration on SIGHUP (systemctl reload)"
printf '\n[routes.added]\nurl = "http://127.0.0.1:9"\npaths = ["/**"]\n' >>/etc/tether/agent.toml
reload=$(unit_value tether-agent.service ExecReload)
reload=${reload//\$MAINPID/${unit_pid[tether-agent.service]}}
$reload
for ((i = 0; i < 100; i++)); do
  grep -q 'configuration reloaded' "$work/tether-agent.service.log" && break
  sleep 0.1
done
grep 'configuration reloaded' "$work/tether-agent.service.log" | grep -q 'routes=1' || {
  echo "FAIL: no reload"; cat "$work/tether-agent.service.log"; exit 1; }
echo "    ok: reloaded with the added route"

echo "==> the tether-agent .deb's postinst (group already there)"
packaging/deb/tether-agent/postinst configure
echo "==> systemd install replay: ok"
