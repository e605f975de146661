#!/usr/bin/env bash
# Installs moto's server (the local AWS that the cloud tests and the
# fleet-observation benchmark run against) into .venv/ when it is missing.
# Idempotent: a second run with the right version in place does nothing.
# Needs only Python 3 with venv and pip, and access to PyPI.
set -euo pipefail
cd "$(dirname "$0")/.."

MOTO_VERSION="5.2.1"
VENV="${MOTO_VENV:-.venv}"
PYTHON="${PYTHON:-python3}"

have_moto() {
  "$VENV/bin/python" - "$MOTO_VERSION" <<'PY' 2>/dev/null
import sys
import boto3, flask, flask_cors, moto  # noqa: F401  (server-mode extras)
from moto.moto_server.threaded_moto_server import ThreadedMotoServer  # noqa: F401
sys.exit(0 if moto.__version__ == sys.argv[1] else 1)
PY
}

if [ -x "$VENV/bin/python" ] && have_moto; then
  exit 0
fi

echo "installing moto[server]==$MOTO_VERSION into $VENV" >&2
if [ ! -x "$VENV/bin/python" ]; then
  "$PYTHON" -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install --quiet --disable-pip-version-check \
  "moto[server]==$MOTO_VERSION"
have_moto || { echo "moto did not install correctly into $VENV" >&2; exit 1; }
