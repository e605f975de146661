#!/usr/bin/env bash
# Installs Playwright for Python into .venv/ when it is missing; the gateway
# tests drive sessions with its `connect_over_cdp`, a CDP client no one here
# wrote. Only the library and its bundled driver are installed: it connects
# to browsers the agent started (Debian's chromium), so no browser download
# (`playwright install`) is needed or attempted. Idempotent: a second run with
# the right version in place does nothing. Needs Python 3 with venv and pip,
# and access to PyPI.
set -euo pipefail
cd "$(dirname "$0")/.."

PLAYWRIGHT_VERSION="1.65.2"
VENV="${PLAYWRIGHT_VENV:-.venv}"
PYTHON="${PYTHON:-python3}"

have_playwright() {
  "$VENV/bin/python" - "$PLAYWRIGHT_VERSION" <<'PY' 2>/dev/null
import sys
from importlib.metadata import version
from playwright.async_api import async_playwright  # noqa: F401
sys.exit(0 if version("playwright") == sys.argv[1] else 1)
PY
}

if [ -x "$VENV/bin/python" ] && have_playwright; then
  exit 0
fi

echo "installing playwright==$PLAYWRIGHT_VERSION into $VENV" >&2
if [ ! -x "$VENV/bin/python" ]; then
  "$PYTHON" -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install --quiet --disable-pip-version-check \
  "playwright==$PLAYWRIGHT_VERSION"
have_playwright || { echo "playwright did not install correctly into $VENV" >&2; exit 1; }
