#!/usr/bin/env bash
# Installs Debian's Chromium when it is missing; the agent's tests and
# benchmarks start real browsers with it. Idempotent: with /usr/bin/chromium
# answering --version it does nothing. Needs root (or sudo) and access to
# Debian's package mirrors.
set -euo pipefail

CHROMIUM="${BROWSERFLEET_CHROMIUM:-/usr/bin/chromium}"

if "$CHROMIUM" --version >/dev/null 2>&1; then
  exit 0
fi

as_root=()
if [ "$(id -u)" -ne 0 ]; then
  command -v sudo >/dev/null || { echo "installing chromium needs root or sudo" >&2; exit 1; }
  as_root=(sudo)
fi

echo "installing Debian's chromium package" >&2
export DEBIAN_FRONTEND=noninteractive
if ! "${as_root[@]}" apt-get install -y --no-install-recommends chromium >/dev/null; then
  # A fresh machine may have no package lists yet.
  "${as_root[@]}" apt-get update >/dev/null
  "${as_root[@]}" apt-get install -y --no-install-recommends chromium >/dev/null
fi
"$CHROMIUM" --version >/dev/null 2>&1 || { echo "chromium did not install correctly" >&2; exit 1; }
