#!/usr/bin/env bash
# Builds a real kube-apiserver and kube-controller-manager (upstream v1.20.2,
# from Debian bookworm's `kubernetes` source package) and installs Debian's
# etcd, so that `make test` can run the conformance and kubectl suites against
# the real API server as well as against the development one.
#
# Idempotent and cached: the binaries land in $BROWSERFLEET_CACHE_DIR
# (default ~/.cache/browserfleet), outside the checkout, so fresh clones on the
# same machine reuse them; a second run with them in place does nothing. The
# first run takes about six minutes on two cores. Needs root (or sudo) and
# access to Debian's package mirrors (binary and source).
#
# Why a source build: there is no kube-apiserver binary in Debian, and the
# machine reaches no download site but the package registries. Debian builds
# Kubernetes 1.20 with its own Go (1.19) in GOPATH mode; one fix is needed for
# Go >= 1.18: the vendored github.com/modern-go/reflect2 1.0.1 reads Go's
# runtime map internals the old way, and the API server segfaults when it
# encodes a custom resource's metadata maps. Debian's reflect2 1.0.2 is the
# upstream fix and replaces the vendored copy as it is.
set -euo pipefail

K8S_SOURCE_VERSION="1.20.5+really1.20.2-1.1+deb12u1"
K8S_UPSTREAM="v1.20.2"
CACHE="${BROWSERFLEET_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/browserfleet}"
PREFIX="$CACHE/kubernetes-$K8S_UPSTREAM"
BIN="$PREFIX/bin"

have_binaries() {
  [ -x "$BIN/kube-apiserver" ] && [ -x "$BIN/kube-controller-manager" ] || return 1
  "$BIN/kube-apiserver" --version 2>/dev/null | grep -q "Kubernetes $K8S_UPSTREAM" || return 1
  # What scripts/with-kube-apiserver.sh and tests/suite/crds.rs run besides.
  command -v etcd >/dev/null && command -v go >/dev/null \
    && command -v openssl >/dev/null && command -v curl >/dev/null
}

if have_binaries; then
  exit 0
fi

as_root=()
if [ "$(id -u)" -ne 0 ]; then
  command -v sudo >/dev/null || { echo "installing etcd and Go needs root or sudo" >&2; exit 1; }
  as_root=(sudo)
fi
export DEBIAN_FRONTEND=noninteractive

# deb-src entries for bookworm, added once beside the machine's own sources.
SRC_LIST=/etc/apt/sources.list.d/browserfleet-src.sources
if [ ! -f "$SRC_LIST" ]; then
  echo "adding Debian bookworm deb-src entries ($SRC_LIST)" >&2
  "${as_root[@]}" tee "$SRC_LIST" >/dev/null <<'EOF'
Types: deb-src
URIs: http://deb.debian.org/debian
Suites: bookworm
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF
  "${as_root[@]}" apt-get update >/dev/null
fi

packages=(golang-go etcd-server golang-github-modern-go-reflect2-dev dpkg-dev rsync openssl curl)
if ! "${as_root[@]}" apt-get install -y --no-install-recommends "${packages[@]}" >/dev/null; then
  "${as_root[@]}" apt-get update >/dev/null
  "${as_root[@]}" apt-get install -y --no-install-recommends "${packages[@]}" >/dev/null
fi

# Only packages were missing: the cached build stays.
if have_binaries; then
  exit 0
fi

WORK="$(mktemp -d "${TMPDIR:-/tmp}/bf-kube-build.XXXXXX")"
trap 'rm -rf "$WORK"' EXIT
echo "building kube-apiserver $K8S_UPSTREAM from Debian's source package (about 6 minutes)" >&2
(
  cd "$WORK"
  # Stale package lists (or deb-src entries added by a run whose update
  # failed) are refreshed once.
  if ! apt-get source --download-only "kubernetes=$K8S_SOURCE_VERSION" >/dev/null 2>"$WORK/source.err"; then
    "${as_root[@]}" apt-get update >/dev/null
    apt-get source --download-only "kubernetes=$K8S_SOURCE_VERSION" >/dev/null \
      || { echo "apt-get source kubernetes failed" >&2; exit 1; }
  fi
  # apt checked the files against the signed Sources index; the .dsc's own
  # signature needs the maintainer's key, which the machine does not have.
  dpkg-source --no-check -x ./*.dsc src >/dev/null
  rm -rf src/vendor/github.com/modern-go/reflect2
  cp -r /usr/share/gocode/src/github.com/modern-go/reflect2 src/vendor/github.com/modern-go/reflect2
  mkdir -p src/.go/src/k8s.io home
  ln -sfn ../../.. src/.go/src/k8s.io/kubernetes
  cd src/.go/src/k8s.io/kubernetes
  env GOPATH="$WORK/src/.go" GO111MODULE=off CGO_ENABLED=0 HOME="$WORK/home" \
    GOCACHE="$WORK/gocache" \
    make WHAT="cmd/kube-apiserver cmd/kube-controller-manager" >"$WORK/build.log" 2>&1 \
    || { tail -40 "$WORK/build.log" >&2; exit 1; }
)
mkdir -p "$BIN"
install -m 0755 "$WORK/src/_output/bin/kube-apiserver" "$WORK/src/_output/bin/kube-controller-manager" "$BIN/"
have_binaries || { echo "kube-apiserver did not install correctly into $BIN" >&2; exit 1; }
