#!/bin/sh
# Join a board the cluster launcher does not manage to a running DeltaNN cluster.
#
#   cluster/bootstrap.sh HEAD_ADDRESS KIND        e.g. cluster/bootstrap.sh 10.0.0.10:6379 arm-hikey
#
# Run it on the board itself, inside the venv that has deltann installed (the same
# version as the head: `deltann --version`). It reads KIND's Ray resource from the
# device catalogue (cluster/devices.toml, or $DELTANN_DEVICES) and starts a Ray worker
# node that advertises it, so board actors of that kind land here. Where the kind runs in
# a container (container = true), the board also needs a Docker-compatible engine and the
# kind's image (`deltann images build KIND`); the actor runs the units inside it.
set -eu

if [ "$#" -ne 2 ]; then
    echo "usage: $0 HEAD_ADDRESS KIND" >&2
    exit 2
fi
HEAD="$1"
KIND="$2"
PY="${PYTHON:-python3}"

# The resource name comes from the catalogue: one source of truth, no name typed twice.
RESOURCE=$("$PY" -m deltann devices --json | "$PY" -c '
import json, sys
kind = sys.argv[1]
kinds = json.load(sys.stdin)["kinds"]
if kind not in kinds:
    sys.exit(f"unknown kind {kind!r}; kinds: {sorted(kinds)}")
print(kinds[kind]["resource"])
' "$KIND")

# One unit of the kind's resource per board; actors ask for a fraction of it.
exec ray start --address="$HEAD" --resources="{\"$RESOURCE\": 1}" --disable-usage-stats --block
