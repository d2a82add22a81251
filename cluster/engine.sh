#!/usr/bin/env bash
# A Docker engine private to this checkout, for `deltann images build` and the container
# tests (make test-fleet). Nothing system-wide is started or changed beyond installing
# Debian's packages when they are missing.
#
#   cluster/engine.sh start    install docker.io and debootstrap when missing, start dockerd
#                              on its own socket, data root and exec root under .work/engine/
#                              (gitignored), and import the base image once
#   cluster/engine.sh stop     stop that dockerd by the PID in its pidfile
#   cluster/engine.sh env      print the DOCKER_HOST line to eval:  eval "$(cluster/engine.sh env)"
#   cluster/engine.sh status   whether it runs, and the base image
#
# Why a base image made here: container registries are unreachable on the machines this
# project tests on, so `FROM` names an image imported from a Debian root file system
# (debootstrap --variant=minbase bookworm, from the mirror apt already uses). The root
# file system is kept as a tarball in ~/.cache/deltann/ so a fresh clone on the same
# machine imports it in seconds instead of bootstrapping again (~1 min).
#
# Settings (environment): DELTANN_WORK (default: <repo>/.work), DELTANN_BASE_IMAGE
# (default: local/debian:bookworm), DEBIAN_MIRROR (default: the first mirror in
# /etc/apt/sources.list*), DELTANN_CACHE (default: ~/.cache/deltann).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
WORK=${DELTANN_WORK:-$ROOT/.work}
ENGINE=$WORK/engine
SOCK=$ENGINE/docker.sock
PIDFILE=$ENGINE/dockerd.pid
LOG=$ENGINE/dockerd.log
BASE_IMAGE=${DELTANN_BASE_IMAGE:-local/debian:bookworm}
CACHE=${DELTANN_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/deltann}
ROOTFS_TAR=$CACHE/debian-bookworm-minbase.tar
export DOCKER_HOST=unix://$SOCK

say() { echo "engine: $*" >&2; }
die() { echo "engine: $*" >&2; exit 1; }

running_pid() {  # the PID of our dockerd, if it runs
    [ -f "$PIDFILE" ] || return 1
    local pid
    pid=$(cat "$PIDFILE")
    [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null && [ "$(cat /proc/"$pid"/comm 2>/dev/null)" = dockerd ] || return 1
    echo "$pid"
}

install_missing() {
    local wanted=()
    command -v dockerd >/dev/null 2>&1 || wanted+=(docker.io)
    command -v debootstrap >/dev/null 2>&1 || wanted+=(debootstrap)
    [ ${#wanted[@]} -eq 0 ] && return 0
    local sudo=""
    [ "$(id -u)" -eq 0 ] || sudo=sudo
    say "installing ${wanted[*]} (Debian packages)"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${wanted[@]}" >/dev/null
}

mirror() {  # the Debian mirror apt uses here (deb822 or one-line sources)
    if [ -n "${DEBIAN_MIRROR:-}" ]; then echo "$DEBIAN_MIRROR"; return; fi
    local uri
    uri=$(cat /etc/apt/sources.list.d/*.sources 2>/dev/null | awk '/^URIs:/ && $2 !~ /security/ {print $2; exit}')
    [ -n "$uri" ] || uri=$(cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null \
        | awk '/^deb / && $0 !~ /security/ {for (i = 2; i <= NF; i++) if ($i ~ /^https?:/) {print $i; exit}}')
    echo "${uri:-http://deb.debian.org/debian}"
}

import_base() {
    if docker image inspect "$BASE_IMAGE" >/dev/null 2>&1; then
        return 0
    fi
    if [ ! -s "$ROOTFS_TAR" ]; then
        local rootfs=$WORK/base/rootfs
        rm -rf "$rootfs"
        mkdir -p "$rootfs" "$CACHE"
        say "debootstrap --variant=minbase bookworm from $(mirror) (about a minute, once per machine)"
        local t0=$SECONDS
        debootstrap --variant=minbase bookworm "$rootfs" "$(mirror)" >"$WORK/base/debootstrap.log" 2>&1 \
            || die "debootstrap failed; see $WORK/base/debootstrap.log"
        tar -C "$rootfs" -cf "$ROOTFS_TAR.tmp" . && mv "$ROOTFS_TAR.tmp" "$ROOTFS_TAR"
        rm -rf "$rootfs"
        say "root file system cached in $ROOTFS_TAR ($((SECONDS - t0)) s)"
    fi
    docker import --change 'CMD ["/bin/bash"]' "$ROOTFS_TAR" "$BASE_IMAGE" >/dev/null
    say "imported $BASE_IMAGE"
}

start() {
    install_missing
    mkdir -p "$ENGINE/data" "$ENGINE/exec"
    if pid=$(running_pid); then
        say "already running (PID $pid, $DOCKER_HOST)"
    else
        local t0
        t0=$(date +%s.%N)
        # Only our own paths: socket, pidfile, data and exec roots; no other daemon is touched.
        dockerd --data-root "$ENGINE/data" --exec-root "$ENGINE/exec" --host "$DOCKER_HOST" \
            --pidfile "$PIDFILE" >"$LOG" 2>&1 &
        local i
        for i in $(seq 1 300); do
            docker version >/dev/null 2>&1 && break
            kill -0 $! 2>/dev/null || die "dockerd exited; see $LOG: $(tail -n 3 "$LOG" | tr '\n' ' ')"
            sleep 0.1
        done
        docker version >/dev/null 2>&1 || die "dockerd did not answer within 30 s; see $LOG"
        say "dockerd ready in $(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN {printf "%.1f", b - a}') s (PID $(cat "$PIDFILE"), $DOCKER_HOST)"
    fi
    import_base
}

stop() {
    local pid
    if ! pid=$(running_pid); then
        say "not running"
        rm -f "$PIDFILE"
        return 0
    fi
    kill "$pid"
    local i
    for i in $(seq 1 300); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    if kill -0 "$pid" 2>/dev/null; then
        say "dockerd $pid still running after 30 s; sending SIGKILL"
        kill -9 "$pid"
    fi
    rm -f "$PIDFILE"
    say "stopped (PID $pid)"
}

case "${1:-}" in
    start) start ;;
    stop) stop ;;
    env) echo "export DOCKER_HOST=$DOCKER_HOST" ;;
    status)
        if pid=$(running_pid); then
            echo "running: PID $pid, DOCKER_HOST=$DOCKER_HOST, base image $BASE_IMAGE: $(docker image inspect -f '{{.Id}}' "$BASE_IMAGE" 2>/dev/null || echo missing)"
        else
            echo "not running"; exit 1
        fi ;;
    *) echo "usage: $0 start|stop|env|status" >&2; exit 2 ;;
esac
