#!/usr/bin/env bash
# Starts a throwaway S3-compatible server (moto, from PyPI) for the attachment tests of the scale-out
# backend, creates the bucket `sealpost-test`, and prints `PID URL` on stdout.
#
# moto is installed once into a virtualenv under ${SEALPOST_TOOLS_DIR:-~/.cache/sealpost} (pinned version;
# PyPI must be reachable the first time). Usage: scripts/s3-test-server.sh LOGFILE
set -euo pipefail

MOTO_VERSION=5.2.5
TOOLS="${SEALPOST_TOOLS_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/sealpost}"
VENV="$TOOLS/moto-$MOTO_VERSION"
LOG="${1:?usage: $0 LOGFILE}"

# The marker is written last, so an install that broke off is done again.
if [ ! -e "$VENV/.installed" ]; then
    command -v python3 >/dev/null || { echo "python3 is missing; install with: apt-get install -y python3 python3-venv" >&2; exit 1; }
    rm -rf "$VENV"
    mkdir -p "$TOOLS"
    python3 -m venv "$VENV" >&2 ||
        { echo "cannot create a virtualenv; install with: apt-get install -y python3-venv" >&2; exit 1; }
    "$VENV/bin/pip" install --quiet --disable-pip-version-check "moto[server]==$MOTO_VERSION" >&2 ||
        { echo "cannot install moto from PyPI; install with: pip install 'moto[server]==$MOTO_VERSION'" >&2; exit 1; }
    touch "$VENV/.installed"
fi

PORT="$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
"$VENV/bin/moto_server" -H 127.0.0.1 -p "$PORT" >"$LOG" 2>&1 &
PID=$!
URL="http://127.0.0.1:$PORT"
"$VENV/bin/python" - "$URL" <<'PY' || { kill "$PID" 2>/dev/null; cat "$LOG" >&2; echo "moto did not start" >&2; exit 1; }
import sys, time, urllib.request
url = sys.argv[1]
for _ in range(100):
    try:
        urllib.request.urlopen(urllib.request.Request(url + "/sealpost-test", method="PUT"), timeout=1)
        sys.exit(0)
    except Exception:
        time.sleep(0.1)
sys.exit(1)
PY
echo "$PID $URL"
