#!/usr/bin/env bash
# Installs Debian's Lua 5.1 interpreter when it is missing: the Argo CD
# health checks in config/argocd/health/ are tested with it
# (tests/suite/gitops_health.rs). Argo CD runs them with gopher-lua, which
# implements Lua 5.1, so 5.1 is the interpreter that tells whether they
# work there. Idempotent: with lua5.1 answering -v it does nothing. Needs
# root (or sudo) and access to Debian's package mirrors.
set -euo pipefail

LUA="${BROWSERFLEET_LUA:-lua5.1}"

if "$LUA" -v >/dev/null 2>&1; then
  exit 0
fi

as_root=()
if [ "$(id -u)" -ne 0 ]; then
  command -v sudo >/dev/null || { echo "installing lua5.1 needs root or sudo" >&2; exit 1; }
  as_root=(sudo)
fi

echo "installing Debian's lua5.1 package" >&2
export DEBIAN_FRONTEND=noninteractive
if ! "${as_root[@]}" apt-get install -y --no-install-recommends lua5.1 >/dev/null; then
  # A fresh machine may have no package lists yet.
  "${as_root[@]}" apt-get update >/dev/null
  "${as_root[@]}" apt-get install -y --no-install-recommends lua5.1 >/dev/null
fi
"$LUA" -v >/dev/null 2>&1 || { echo "lua5.1 did not install correctly" >&2; exit 1; }
