#!/usr/bin/env bash
# This machine as a lab, for Ray's cluster launcher, for real (make test-fleet runs it):
#
#   cluster/loopback.sh OUT
#
# Inside a private PID, network and mount namespace it starts sshd (Debian's
# openssh-server) on port 22 and runs, exactly as on a lab's boards:
#
#   ray up cluster/loopback.yaml              head 127.0.0.2, boards x86-cpu 127.0.0.3, local 127.0.0.4
#   ... waits until every board kind's resource is live (deltann devices, through ray exec)
#   ray submit cluster/loopback.yaml run.py -- --study studies/loopback.toml
#   ray rsync-down cluster/loopback.yaml '~/results/loopback/' OUT/results/
#   ray down cluster/loopback.yaml
#
# then the namespace ends, and with it every process still in it. OUT receives the results,
# the live boards (devices.out), each step's seconds (steps.tsv), the namespace's id
# (namespace), the board claims left after `ray down` (boards-after-down.json) and the logs. cluster/loopback.yaml is generated from the same source as
# ray_cluster.yaml (cluster/fleet.toml; deltann/fleet/launcher.py says what it takes).
#
# Why the namespace: Ray listens on every interface whatever --node-ip-address says, and
# `ray stop` (which `ray down` runs) kills every Ray process of the machine by name. Inside,
# only loopback exists and only our own processes can be seen, so other Ray clusters on the
# machine are safe and no Ray port is reachable from outside.
#
# The x86-cpu board runs its units in the deltann/x86-cpu image through the engine that
# DOCKER_HOST names (cluster/engine.sh start; deltann images build x86-cpu): its socket is
# a file, reachable from inside. Needs root (namespaces, sshd); installs openssh-server and
# rsync when missing. The boards log in as `deltann` (uid 0, home a fresh folder under /tmp),
# a user that exists only inside the namespace.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
CONFIG=cluster/loopback.yaml
STUDY=studies/loopback.toml
RESULTS=results/loopback

if [ "${1:-}" != "--inside" ]; then
    [ $# -eq 1 ] || { echo "usage: $0 OUT" >&2; exit 2; }
    [ "$(id -u)" -eq 0 ] || { echo "$0: needs root (unshare, sshd)" >&2; exit 2; }
    OUT=$(realpath -m "$1")
    mkdir -p "$OUT"
    missing=()
    [ -x /usr/sbin/sshd ] || missing+=(openssh-server)
    command -v rsync >/dev/null 2>&1 || missing+=(rsync)
    if [ ${#missing[@]} -gt 0 ]; then
        echo "loopback: installing ${missing[*]} (Debian packages)" >&2
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
    fi
    # The boards' home: a short path (Ray's socket paths must stay under 108 characters),
    # outside the namespace's private mounts so the engine can mount the units' job folders.
    HOME_L=$(mktemp -d /tmp/dl-XXXXXX)
    chmod 755 "$HOME_L"
    trap 'rm -rf "$HOME_L"' EXIT
    unshare --pid --net --mount --fork --mount-proc "$0" --inside "$HOME_L" "$OUT"
    exit
fi

# --- inside the namespace: this script is PID 1; its exit ends every process left here ---
HOME_L=$2
OUT=$3
readlink /proc/self/ns/pid >"$OUT/namespace"
: >"$OUT/steps.tsv"
step() {  # step NAME COMMAND...: run it, log its output, record its seconds
    local name=$1 t0=$SECONDS
    shift
    echo "loopback: $name" >&2
    "$@" >>"$OUT/launcher.log" 2>&1 || { echo "loopback: $name failed; see $OUT/launcher.log:" >&2
                                        tail -n 25 "$OUT/launcher.log" >&2; exit 1; }
    printf '%s\t%s\n' "$name" "$((SECONDS - t0))" >>"$OUT/steps.tsv"
}

ip link set lo up
mount -t tmpfs -o mode=755 tmpfs /run   # sshd's privilege separation folder, ours only
mkdir -p /run/sshd

# The `deltann` login, for this namespace only (a private copy of /etc/passwd). It comes
# first, so uid 0 is `deltann` with home HOME_L for every process here: ssh expands the
# launcher's `~/.ssh/deltann_fleet` from the passwd entry, not from $HOME.
{ echo "deltann:x:0:0:deltann loopback:$HOME_L:/bin/bash"; cat /etc/passwd; } >"$HOME_L/.passwd"
mount --bind "$HOME_L/.passwd" /etc/passwd

mkdir -p "$HOME_L/.ssh" "$HOME_L/.sshd"
ssh-keygen -q -t ed25519 -N '' -f "$HOME_L/.ssh/deltann_fleet"
cp "$HOME_L/.ssh/deltann_fleet.pub" "$HOME_L/.ssh/authorized_keys"
ssh-keygen -q -t ed25519 -N '' -f "$HOME_L/.sshd/host_key"
cat >"$HOME_L/.sshd/config" <<EOF
Port 22
ListenAddress 0.0.0.0
HostKey $HOME_L/.sshd/host_key
PidFile $HOME_L/.sshd/pid
AuthorizedKeysFile $HOME_L/.ssh/authorized_keys
PermitRootLogin prohibit-password
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
AcceptEnv LANG LC_*
EOF
/usr/sbin/sshd -f "$HOME_L/.sshd/config" -E "$OUT/sshd.log"

# Every node's login shell: the venv first on PATH (ray submit runs `python ~/run.py`
# through it), this checkout's deltann, and the engine the x86-cpu board uses.
cat >"$HOME_L/.bashrc" <<EOF
export PATH="$ROOT/.venv/bin:\$PATH"
export PYTHONPATH="$ROOT"
export RAY_USAGE_STATS_ENABLED=0
${DOCKER_HOST:+export DOCKER_HOST="$DOCKER_HOST"}
EOF
echo '. ~/.bashrc' >"$HOME_L/.profile"
export HOME=$HOME_L   # ray up's side shares the boards' home: one StaticBoards state file
export PATH="$ROOT/.venv/bin:$PATH" PYTHONPATH="$ROOT" RAY_USAGE_STATS_ENABLED=0
cd "$ROOT"

wait_for_boards() {  # until every board kind of the loopback has a live node
    local i
    for i in $(seq 1 60); do
        if ray exec "$CONFIG" "deltann devices --address auto --json" 2>/dev/null \
                | python -c '
import json, sys
text = sys.stdin.read()
kinds = json.loads(text[text.index("{"):])["kinds"]
sys.exit(0 if kinds["x86-cpu"]["boards"] and kinds["local"]["boards"] else 1)'; then
            return 0
        fi
        sleep 2
    done
    echo "boards did not join within 2 minutes" >&2
    return 1
}

devices() { ray exec "$CONFIG" "deltann devices --address auto --json" >"$OUT/devices.out"; }

step "ray up" ray up -y --no-config-cache "$CONFIG"
step "boards joined" wait_for_boards
step "devices" devices
step "ray submit" ray submit "$CONFIG" run.py -- --study "$STUDY" --out "$RESULTS"
step "ray rsync-down" ray rsync-down "$CONFIG" "~/$RESULTS/" "$OUT/results/"
step "ray down" ray down -y "$CONFIG"
cp "$HOME_L/.deltann/deltann-boards-deltann.json" "$OUT/boards-after-down.json"  # the one state file
kill "$(cat "$HOME_L/.sshd/pid")"
echo "loopback: done; results in $OUT/results" >&2
