#!/usr/bin/env bash
# make test-fleet: the container and launcher tests on real parts, none skipped.
#
# Starts what they need (a private Docker engine and the imported Debian base image:
# cluster/engine.sh; the x86-cpu board image: deltann images build; the launcher's
# namespace with sshd: cluster/loopback.sh, run by tests/fleet/test_loopback.py), runs
# them with DELTANN_REQUIRE_ENGINE=1 (a missing engine or image fails instead of skipping),
# and stops the engine whatever happened. Prints the seconds of each part.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
BASE=${DELTANN_BASE_IMAGE:-local/debian:bookworm}
# Extra CA certificates of this machine's network, if any: pip inside the build needs them
# where TLS is re-signed.
CA=${DELTANN_CA_CERTS:-/usr/local/share/ca-certificates}

t0=$SECONDS
cluster/engine.sh start
trap 'cluster/engine.sh stop' EXIT
eval "$(cluster/engine.sh env)"
engine_s=$((SECONDS - t0))

t0=$SECONDS
certs=()
if compgen -G "$CA/*.crt" >/dev/null; then certs=(--ca-certs "$CA"); fi
"$PY" -m deltann images build x86-cpu --base "$BASE" "${certs[@]}" | tail -n 1
build_s=$((SECONDS - t0))

t0=$SECONDS
status=0
DELTANN_REQUIRE_ENGINE=1 "$PY" -m pytest -q -s -ra -m "slow or not slow" -p no:cacheprovider \
    tests/fleet/test_images.py tests/fleet/test_container.py tests/fleet/test_loopback.py \
    tests/hardening/test_security.py || status=$?
echo "test-fleet: engine start ${engine_s} s, image build ${build_s} s, tests $((SECONDS - t0)) s"
exit "$status"
