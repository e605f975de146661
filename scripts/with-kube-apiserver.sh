#!/usr/bin/env bash
# Runs a command against a real, throw-away Kubernetes control plane on
# loopback: etcd, kube-apiserver and kube-controller-manager (garbage
# collection and namespace deletion), built by scripts/install-kube-apiserver.sh.
#
#   bash scripts/with-kube-apiserver.sh cargo test --test suite -- apiserver::
#
# The command sees BROWSERFLEET_TEST_KUBECONFIG (and KUBECONFIG) naming a
# kubeconfig for a cluster administrator over TLS with a bearer token, the way a
# user reaches a real cluster. Everything lives in a temporary directory that
# is removed afterwards, with the three processes, whatever the command's
# outcome; the script exits with the command's status.
set -euo pipefail
cd "$(dirname "$0")/.."

K8S_UPSTREAM="v1.20.2"
CACHE="${BROWSERFLEET_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/browserfleet}"
BIN="$CACHE/kubernetes-$K8S_UPSTREAM/bin"
[ -x "$BIN/kube-apiserver" ] || { echo "$BIN/kube-apiserver is missing: run scripts/install-kube-apiserver.sh" >&2; exit 1; }
[ $# -gt 0 ] || { echo "usage: $0 command [args...]" >&2; exit 2; }

# etcd fsyncs every write; on tmpfs that costs nothing.
base="${TMPDIR:-/tmp}"
[ -d /dev/shm ] && [ -w /dev/shm ] && base=/dev/shm
DIR="$(mktemp -d "$base/bf-kube.XXXXXX")"
pids=()
command_pid=""
cleanup() {
  # The command first (a signal to this script reaches it here), then the
  # control plane.
  if [ -n "$command_pid" ]; then
    kill "$command_pid" 2>/dev/null || true
    wait "$command_pid" 2>/dev/null || true
  fi
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  if [ -n "${BROWSERFLEET_KEEP_KUBE_LOGS:-}" ]; then
    mkdir -p "$BROWSERFLEET_KEEP_KUBE_LOGS" && cp "$DIR"/*.log "$BROWSERFLEET_KEEP_KUBE_LOGS"/ || true
  fi
  rm -rf "$DIR"
}
trap cleanup EXIT
trap 'exit 143' TERM INT

free_ports() {
  python3 - "$1" <<'PY'
import socket, sys
socks = [socket.socket() for _ in range(int(sys.argv[1]))]
for s in socks:
    s.bind(("127.0.0.1", 0))
print(" ".join(str(s.getsockname()[1]) for s in socks))
PY
}
read -r ETCD_CLIENT ETCD_PEER API_PORT < <(free_ports 3)

# A CA, a serving certificate for 127.0.0.1 and the service-account key pair.
openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj "/CN=browserfleet-test-ca" \
  -keyout "$DIR/ca.key" -out "$DIR/ca.crt" 2>/dev/null
openssl req -newkey rsa:2048 -nodes -subj "/CN=kube-apiserver" \
  -keyout "$DIR/apiserver.key" -out "$DIR/apiserver.csr" 2>/dev/null
printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n' >"$DIR/san.ext"
openssl x509 -req -in "$DIR/apiserver.csr" -CA "$DIR/ca.crt" -CAkey "$DIR/ca.key" \
  -CAcreateserial -days 2 -extfile "$DIR/san.ext" -out "$DIR/apiserver.crt" 2>/dev/null
openssl genrsa -out "$DIR/sa.key" 2048 2>/dev/null
openssl rsa -in "$DIR/sa.key" -pubout -out "$DIR/sa.pub" 2>/dev/null

TOKEN="$(python3 -c 'import secrets; print(secrets.token_hex(16))')"
# token,user,uid,"groups": system:masters is the cluster administrator.
printf '%s,browserfleet-test-admin,1,"system:masters"\n' "$TOKEN" >"$DIR/tokens.csv"

cat >"$DIR/kubeconfig" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: kube-apiserver
  cluster:
    server: https://127.0.0.1:$API_PORT
    certificate-authority-data: $(base64 -w0 "$DIR/ca.crt")
users:
- name: admin
  user:
    token: $TOKEN
contexts:
- name: kube-apiserver
  context: {cluster: kube-apiserver, user: admin, namespace: default}
current-context: kube-apiserver
EOF

etcd --name bf-test --data-dir "$DIR/etcd" \
  --listen-client-urls "http://127.0.0.1:$ETCD_CLIENT" \
  --advertise-client-urls "http://127.0.0.1:$ETCD_CLIENT" \
  --listen-peer-urls "http://127.0.0.1:$ETCD_PEER" \
  --initial-advertise-peer-urls "http://127.0.0.1:$ETCD_PEER" \
  --initial-cluster "bf-test=http://127.0.0.1:$ETCD_PEER" \
  >"$DIR/etcd.log" 2>&1 &
pids+=($!)

"$BIN/kube-apiserver" \
  --etcd-servers "http://127.0.0.1:$ETCD_CLIENT" \
  --bind-address 127.0.0.1 --advertise-address 127.0.0.1 --secure-port "$API_PORT" \
  --insecure-port 0 \
  --tls-cert-file "$DIR/apiserver.crt" --tls-private-key-file "$DIR/apiserver.key" \
  --client-ca-file "$DIR/ca.crt" \
  --token-auth-file "$DIR/tokens.csv" \
  --authorization-mode RBAC \
  --service-account-key-file "$DIR/sa.pub" \
  --service-account-signing-key-file "$DIR/sa.key" \
  --service-account-issuer https://kubernetes.default.svc \
  --service-cluster-ip-range 10.96.0.0/16 \
  --enable-priority-and-fairness=false \
  --watch-cache=true \
  >"$DIR/kube-apiserver.log" 2>&1 &
pids+=($!)

# The token goes to curl in a file, not on its command line (visible in ps).
printf 'Authorization: Bearer %s\n' "$TOKEN" >"$DIR/auth.header"
ready() {
  curl -fsS --max-time 2 --cacert "$DIR/ca.crt" -H @"$DIR/auth.header" \
    "https://127.0.0.1:$API_PORT/readyz" >/dev/null 2>&1
}
for _ in $(seq 1 240); do
  ready && break
  for pid in "${pids[@]}"; do
    kill -0 "$pid" 2>/dev/null || { echo "the control plane stopped while starting:" >&2; tail -20 "$DIR"/*.log >&2; exit 1; }
  done
  sleep 0.5
done
ready || { echo "kube-apiserver did not become ready in 120 s:" >&2; tail -30 "$DIR/kube-apiserver.log" >&2; exit 1; }

"$BIN/kube-controller-manager" \
  --kubeconfig "$DIR/kubeconfig" \
  --controllers garbagecollector,namespace \
  --leader-elect=false \
  --port 0 --secure-port 0 \
  --use-service-account-credentials=false \
  >"$DIR/kube-controller-manager.log" 2>&1 &
pids+=($!)
# Tests that need garbage collection would otherwise fail on timeouts.
sleep 1
kill -0 "${pids[-1]}" 2>/dev/null \
  || { echo "kube-controller-manager stopped at start:" >&2; tail -20 "$DIR/kube-controller-manager.log" >&2; exit 1; }

echo "kube-apiserver $K8S_UPSTREAM ready at https://127.0.0.1:$API_PORT" >&2
# In the background, so that a signal to this script ends it too (cleanup).
BROWSERFLEET_TEST_KUBECONFIG="$DIR/kubeconfig" KUBECONFIG="$DIR/kubeconfig" "$@" &
command_pid=$!
status=0
wait "$command_pid" || status=$?
command_pid=""
exit "$status"
