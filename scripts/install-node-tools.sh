#!/usr/bin/env bash
# Installs what the node tests need from Debian when it is missing:
# shellcheck (the generated Linux boot scripts are checked with it) and
# nftables (the node simulator runs those scripts, which load the browsers'
# egress rule with nft). Idempotent: with both commands present it does
# nothing. Needs root (or sudo) and access to Debian's package mirrors.
set -euo pipefail

missing=()
command -v shellcheck >/dev/null || missing+=(shellcheck)
command -v nft >/dev/null || [ -x /usr/sbin/nft ] || missing+=(nftables)
if [ "${#missing[@]}" -eq 0 ]; then
  exit 0
fi

as_root=()
if [ "$(id -u)" -ne 0 ]; then
  command -v sudo >/dev/null || { echo "installing ${missing[*]} needs root or sudo" >&2; exit 1; }
  as_root=(sudo)
fi

echo "installing Debian's ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
if ! "${as_root[@]}" apt-get install -y --no-install-recommends "${missing[@]}" >/dev/null; then
  # A fresh machine may have no package lists yet.
  "${as_root[@]}" apt-get update >/dev/null
  "${as_root[@]}" apt-get install -y --no-install-recommends "${missing[@]}" >/dev/null
fi
command -v shellcheck >/dev/null && [ -x /usr/sbin/nft ] ||
  { echo "shellcheck or nftables did not install correctly" >&2; exit 1; }
