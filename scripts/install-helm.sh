#!/usr/bin/env bash
# Installs helm-sdkpy (Python bindings that carry Helm v4's own Go library)
# into .venv/ when it is missing; tests/suite/chart.rs lints and installs the chart
# with it through tests/python/helm_chart.py. No helm binary is downloaded:
# the library ships inside the wheel. Idempotent: a second run with the right
# version in place does nothing. Needs Python 3 with venv and pip, and access
# to PyPI.
#
# The wheel declares Python >= 3.12; on 3.11 (Debian bookworm's) it works all
# the same (it is a cffi binding to a Go shared library), so it is installed
# with --ignore-requires-python. PyYAML reads values files for the CLI.
set -euo pipefail
cd "$(dirname "$0")/.."

HELM_SDKPY_VERSION="0.1.32"
VENV="${HELM_VENV:-.venv}"
PYTHON="${PYTHON:-python3}"

have_helm() {
  "$VENV/bin/python" - "$HELM_SDKPY_VERSION" <<'PY' 2>/dev/null
import sys
from importlib.metadata import version
import yaml  # noqa: F401
import helm_sdkpy
helm_sdkpy.get_version()  # loads the Go library
sys.exit(0 if version("helm-sdkpy") == sys.argv[1] else 1)
PY
}

if [ -x "$VENV/bin/python" ] && have_helm; then
  exit 0
fi

echo "installing helm-sdkpy==$HELM_SDKPY_VERSION into $VENV" >&2
if [ ! -x "$VENV/bin/python" ]; then
  "$PYTHON" -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install --quiet --disable-pip-version-check \
  --ignore-requires-python "helm-sdkpy==$HELM_SDKPY_VERSION" "PyYAML>=6,<7"
have_helm || { echo "helm-sdkpy did not install correctly into $VENV" >&2; exit 1; }
