#!/usr/bin/env bash
# `make demo`: the whole system on this machine, in one command.
#
# Starts moto (the local AWS), the development Kubernetes API server, the
# operator and the node simulator (a real agent and real Chromium per
# instance), applies the CRDs and examples/fleet-demo.yaml in namespace
# `demo`, waits for the fleet to be Ready, sends a burst of session requests
# and shows the fleet scale out and back in to its minimum, then applies
# examples/session-demo.yaml (a BrowserSession), uses it over CDP with the
# token from its Secret and deletes it. Then it waits for Ctrl-C. On Ctrl-C, on a failure or on any exit it stops everything it
# started and removes its temporary directory (logs of every component are
# there while it runs; on a failure their tails are printed).
#
# Environment:
#   DEMO_EXIT_WHEN_DONE=1  exit 0 once the fleet is back at its minimum
#                          instead of waiting for Ctrl-C (for tests and CI)
#   DEMO_BINARY=PATH       the browserfleet binary to run, and
#   DEMO_DEV_BINARY=PATH   the browserfleet-dev binary (development API server
#                          and node simulator); without both the script builds
#                          target/debug/browserfleet{,-dev}
#   CARGO                  cargo to build with (default: cargo)
#
# Every wait has a deadline; only loopback addresses are contacted.
set -Eeuo pipefail
trap 'echo "demo failed: line $LINENO: $BASH_COMMAND" >&2' ERR

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
readonly ROOT
readonly NAMESPACE=demo FLEET=demo
readonly REQUESTS=6 TTL_SECONDS=40
readonly INSTANCE_PROFILE=browserfleet-demo-node
readonly PYTHON="$ROOT/.venv/bin/python"
readonly KUBECTL="$ROOT/.venv/bin/kubectl"
readonly AWS_HELPER="$ROOT/scripts/demo-aws.py"
readonly CDP_CLIENT="$ROOT/scripts/demo-cdp.py"
readonly SESSION=demo-session
readonly EXIT_WHEN_DONE="${DEMO_EXIT_WHEN_DONE:-0}"

# Deadlines, in seconds.
readonly START_DEADLINE=60      # a component prints its address
readonly READY_DEADLINE=90      # apply to Ready at the minimum
readonly SCALE_OUT_DEADLINE=90  # burst sent to every session ready
readonly SCALE_IN_DEADLINE=$((TTL_SECONDS + 90)) # to the minimum again
readonly SESSION_DEADLINE=90    # a BrowserSession applied to Ready, or deleted to gone
readonly STOP_GRACE=20          # SIGTERM to exit, per component

WORK=""
declare -a STARTED=()    # names, in start order
declare -A PID=()        # name -> pid
declare -a TRANSCRIPT=() # what happened, one line each
REPLY_LINES=0
LAST_ROW=""
INTERACTIVE=0
[[ -t 1 && "${TERM:-dumb}" != dumb ]] && INTERACTIVE=1

say() { printf '%(%H:%M:%S)T  %s\n' -1 "$*"; }

fail() {
  printf '\ndemo failed: %s\n' "$*" >&2
  exit 1
}

# Whether process $1 exists and is not a zombie.
alive() {
  local stat
  stat="$(cat "/proc/$1/stat" 2>/dev/null)" || return 1
  stat="${stat##*) }"
  [[ "${stat%% *}" != Z ]]
}

# Fails when a component the demo started has exited.
check_components() {
  local name
  for name in "${STARTED[@]}"; do
    alive "${PID[$name]}" || fail "$name exited (see its log below)"
  done
}

# wait_until SECONDS WHAT COMMAND...: runs COMMAND every half second until it
# succeeds; fails after SECONDS, or as soon as a component has exited.
wait_until() {
  local seconds=$1 what=$2
  shift 2
  local deadline=$((SECONDS + seconds))
  until "$@"; do
    check_components
    if ((SECONDS >= deadline)); then
      "${ON_TIMEOUT:-true}"
      fail "timed out after ${seconds}s waiting for $what"
    fi
    sleep 0.5
  done
}

# start NAME COMMAND...: runs COMMAND in a session of its own (a Ctrl-C
# reaches only this script, which then stops the components in order), its
# output in $WORK/NAME.log, its input from $STDIN. BROWSERFLEET_DEMO_RUN
# marks it and everything it starts (agents, browsers), so that nothing is
# left behind unnoticed.
STDIN=/dev/null
start() {
  local name=$1
  shift
  BROWSERFLEET_DEMO_RUN="$WORK" setsid "$@" <"$STDIN" >"$WORK/$name.log" 2>&1 9>&- &
  PID[$name]=$!
  STARTED+=("$name")
}

# The first line of $WORK/NAME.log that starts with PREFIX, without it.
printed() { sed -n "s|^$2||p" "$WORK/$1.log" 2>/dev/null | head -n 1; }
has_printed() { [[ -n "$(printed "$1" "$2")" ]]; }

stop() {
  local name=$1 pid=${PID[$1]}
  alive "$pid" || return 0
  kill -TERM "$pid" 2>/dev/null || return 0
  local deadline=$((SECONDS + STOP_GRACE))
  while alive "$pid"; do
    if ((SECONDS >= deadline)); then
      echo "$name did not stop within ${STOP_GRACE}s; killing it" >&2
      kill -KILL "$pid" 2>/dev/null || true
      break
    fi
    sleep 0.2
  done
  wait "$pid" 2>/dev/null || true
}

# Processes marked as this run's (see start), by pid.
leftovers() {
  local environ pid
  for environ in /proc/[0-9]*/environ; do
    pid="${environ#/proc/}"
    pid="${pid%/environ}"
    if grep -qzxF "BROWSERFLEET_DEMO_RUN=$WORK" "$environ" 2>/dev/null; then
      echo "$pid"
    fi
  done
}

# Ctrl-C or SIGTERM: the way to end the demo once it is complete (exit 0),
# an interruption before (128 + the signal); no logs are printed either way.
COMPLETE=0 INTERRUPTED=0
interrupted() {
  INTERRUPTED=1
  ((COMPLETE)) && exit 0
  exit "$1"
}

cleanup() {
  local status=$?
  # Stopping has deadlines of its own; a second Ctrl-C does not cut it short.
  trap - EXIT
  trap '' INT TERM
  [[ -n "$WORK" ]] || exit "$status"
  if ((status != 0 && !INTERRUPTED)) && [[ -d "$WORK" ]]; then
    local log
    for log in "$WORK"/*.log "$WORK"/nodes/*.log; do
      [[ -s "$log" ]] || continue
      printf '\n--- last lines of %s ---\n' "${log#"$WORK"/}" >&2
      tail -n 15 "$log" >&2
    done
  fi
  echo >&2
  echo "stopping: ${STARTED[*]:-nothing started}" >&2
  # The operator first, so that it does not replace the nodes going away;
  # then the nodes (their agents and browsers), the API server, moto.
  local name
  for name in replies operator nodes apiserver moto; do
    [[ -z "${PID[$name]:-}" ]] || stop "$name"
  done
  exec 9>&-
  local stray=()
  mapfile -t stray < <(leftovers)
  if ((${#stray[@]})); then
    echo "left behind, killing:" >&2
    ps -o pid=,args= -p "$(IFS=,; echo "${stray[*]}")" >&2 || true
    kill -KILL "${stray[@]}" 2>/dev/null || true
    ((status != 0)) || status=1
  fi
  rm -rf "$WORK"
  echo "stopped; removed $WORK" >&2
  exit "$status"
}

kubectl() { "$KUBECTL" --kubeconfig "$WORK/kubeconfig" --request-timeout=10s "$@"; }

# The fleet's status, read into these (0 while the operator has written
# none), and a note for each new scale decision.
DESIRED=0 CURRENT=0 READY=0 DRAINING=0 SESSIONS=0 READY_CONDITION="" DECIDED_AT=""
read_status() {
  local fields
  fields="$(kubectl get bfleet "$FLEET" -n "$NAMESPACE" -o jsonpath='{.status.desiredInstances}|{.status.currentInstances}|{.status.readyInstances}|{.status.drainingInstances}|{.status.activeSessions}|{.status.conditions[?(@.type=="Ready")].status}|{.status.lastScaleDecision.time}|{.status.lastScaleDecision.from}|{.status.lastScaleDecision.to}|{.status.lastScaleDecision.reason}' 2>/dev/null)" || return 1
  local decided_at from to reason
  IFS='|' read -r DESIRED CURRENT READY DRAINING SESSIONS READY_CONDITION decided_at from to reason <<<"$fields"
  DESIRED=${DESIRED:-0} CURRENT=${CURRENT:-0} READY=${READY:-0}
  DRAINING=${DRAINING:-0} SESSIONS=${SESSIONS:-0}
  if [[ -n "$decided_at" && "$decided_at" != "$DECIDED_AT" ]]; then
    DECIDED_AT=$decided_at
    note "scale  $from -> $to instances: $reason"
  fi
}

# Prints a line and keeps it for the live view's redraws.
note() {
  local line
  line="$(say "$@")"
  TRANSCRIPT+=("$line")
  echo "$line"
}

# One frame of the live view: the fleet's table (its printer columns), the
# instances EC2 still has, replies that arrived. On a terminal the screen is
# redrawn; otherwise a changed row is printed as a line.
VIEW_STATUS=""
refresh() {
  local table="" lines=()
  table="$(kubectl get bfleet -n "$NAMESPACE" 2>/dev/null)" || table="(kubectl get bfleet failed)"
  read_status || true
  if [[ -f "$WORK/replies.log" ]]; then
    mapfile -t -s "$REPLY_LINES" lines <"$WORK/replies.log"
    local line
    for line in "${lines[@]}"; do
      note "reply  $line"
    done
    REPLY_LINES=$((REPLY_LINES + ${#lines[@]}))
  fi
  local instances="instances: $CURRENT ($DRAINING draining)"
  if ((INTERACTIVE)); then
    printf '\033[H\033[2J'
    printf 'browserfleet demo  (logs in %s)\n\n' "$WORK"
    printf '$ kubectl get bfleet -n %s\n%s\n%s\n\n' "$NAMESPACE" "$table" "$instances"
    local first=$((${#TRANSCRIPT[@]} > 30 ? ${#TRANSCRIPT[@]} - 30 : 0))
    printf '%s\n' "${TRANSCRIPT[@]:first}"
    [[ -z "$VIEW_STATUS" ]] || printf '\n%s\n' "$VIEW_STATUS"
  else
    # The table's row without AGE.
    local row
    row="$(tail -n 1 <<<"$table" | awk '{NF--; print}')   $instances"
    if [[ "$row" != "$LAST_ROW" ]]; then
      [[ -n "$LAST_ROW" ]] || say "table  $(head -n 1 <<<"$table" | awk '{NF--; print}')"
      say "table  $row"
      LAST_ROW="$row"
    fi
  fi
}

# live_view_until SECONDS WHAT CHECK: the live view every 2 s until CHECK
# holds; fails after SECONDS.
live_view_until() {
  local seconds=$1 what=$2 check=$3
  local deadline=$((SECONDS + seconds)) next=0
  VIEW_STATUS="waiting for $what ..."
  while true; do
    if ((SECONDS >= next)); then
      refresh
      next=$((SECONDS + 2))
    fi
    if "$check"; then
      # What the check saw (replies, counts) shows before the next line.
      refresh
      break
    fi
    check_components
    if ((SECONDS >= deadline)); then
      "${ON_TIMEOUT:-true}"
      fail "timed out after ${seconds}s waiting for $what"
    fi
    sleep 0.5
  done
  VIEW_STATUS=""
}

# How many replies of type $1 arrived.
replies_of() {
  local count
  count="$(grep -c "^$1 " "$WORK/replies.log" 2>/dev/null)" || true
  echo "${count:-0}"
}

# The checks the phases wait for.
PEAK_READY=0
at_minimum_and_ready() {
  read_status || return 1
  [[ "$READY_CONDITION" == True ]] && ((READY >= 1))
}
all_sessions_ready() {
  read_status || return 1
  if ((READY > PEAK_READY)); then PEAK_READY=$READY; fi
  (($(replies_of session.ready) >= REQUESTS))
}
back_at_minimum() {
  read_status || return 1
  # Desired, existing and ready instances at the minimum, no session left.
  ((DESIRED == 1 && CURRENT == 1 && READY == 1 && SESSIONS == 0))
}

session_phase() {
  kubectl get bsess "$SESSION" -n "$NAMESPACE" -o jsonpath='{.status.phase}' 2>/dev/null
}
session_ready() { [[ "$(session_phase)" == Ready ]]; }
show_session() { kubectl get bsess "$SESSION" -n "$NAMESPACE" -o yaml >&2 || true; }
session_gone() {
  ! kubectl get bsess "$SESSION" -n "$NAMESPACE" >/dev/null 2>&1
}

preflight() {
  "$PYTHON" -c 'import boto3, moto' 2>/dev/null ||
    fail "moto is missing from .venv/: run \`make demo\` or bash scripts/install-moto.sh"
  [[ -x "$KUBECTL" ]] || fail "kubectl is missing from .venv/: run \`make demo\` or bash scripts/install-kubectl.sh"
  /usr/bin/chromium --version >/dev/null 2>&1 ||
    fail "/usr/bin/chromium does not run: run \`make demo\` or bash scripts/install-chromium.sh"
  command -v setsid >/dev/null || fail "setsid (util-linux) is missing"
}

main() {
  preflight
  # The product binary (operator, agent) and the development cluster's
  # (API server, node simulator), which cargo builds side by side.
  local bin="${DEMO_BINARY:-}" dev="${DEMO_DEV_BINARY:-}"
  if [[ -z "$bin" || -z "$dev" ]]; then
    say "building browserfleet and browserfleet-dev (cargo build --locked)"
    (cd "$ROOT" && "${CARGO:-cargo}" build --locked --quiet --bins)
    bin="${bin:-$ROOT/target/debug/browserfleet}"
    dev="${dev:-$ROOT/target/debug/browserfleet-dev}"
  fi
  [[ -x "$bin" ]] || fail "$bin is not an executable"
  [[ -x "$dev" ]] || fail "$dev is not an executable"

  WORK="$(mktemp -d "${TMPDIR:-/tmp}/browserfleet-demo.XXXXXX")"
  trap cleanup EXIT
  trap 'interrupted 130' INT
  trap 'interrupted 143' TERM
  say "logs in $WORK"

  # moto exits when its standard input closes: fd 9 here, closed in every
  # other component, so it goes when this script goes, however it goes.
  mkfifo "$WORK/moto.stdin"
  exec 9<>"$WORK/moto.stdin"
  STDIN="$WORK/moto.stdin" start moto "$PYTHON" "$ROOT/scripts/moto-server.py" \
    --instance-profile "$INSTANCE_PROFILE"
  wait_until "$START_DEADLINE" "moto to listen" has_printed moto "PORT "
  AWS_ENDPOINT_URL="http://127.0.0.1:$(printed moto "PORT ")"
  export AWS_ENDPOINT_URL
  export AWS_REGION=us-east-1 AWS_ACCESS_KEY_ID=demo AWS_SECRET_ACCESS_KEY=demo
  export AWS_EC2_METADATA_DISABLED=true
  unset AWS_PROFILE AWS_SESSION_TOKEN AWS_DEFAULT_REGION
  note "moto on $AWS_ENDPOINT_URL"

  start apiserver "$dev" apiserver --listen 127.0.0.1:0 --kubeconfig "$WORK/kubeconfig"
  wait_until "$START_DEADLINE" "the API server to listen" has_printed apiserver "listening on "
  export KUBECONFIG="$WORK/kubeconfig"
  note "Kubernetes API (development server) on $(printed apiserver "listening on ")"

  kubectl apply -f "$ROOT/crds/" >"$WORK/kubectl.log"
  # Applied, not `kubectl create namespace`: that one sends protobuf, which
  # the development API server does not read.
  kubectl apply -f - >>"$WORK/kubectl.log" <<EOF
{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "$NAMESPACE"}}
EOF
  local ids image subnet_a subnet_b group
  ids="$("$PYTHON" "$AWS_HELPER" setup --security-group browserfleet-demo)"
  read -r image subnet_a subnet_b group <<<"$ids"
  [[ "$image" =~ ^ami-[0-9a-f]+$ && "$subnet_a" =~ ^subnet-[0-9a-f]+$ &&
    "$subnet_b" =~ ^subnet-[0-9a-f]+$ && "$group" =~ ^sg-[0-9a-f]+$ ]] ||
    fail "unexpected ids from moto: $ids"
  sed -e "s/ami-00000000/$image/" -e "s/subnet-0000000a/$subnet_a/" \
    -e "s/subnet-0000000b/$subnet_b/" -e "s/sg-00000000/$group/" \
    "$ROOT/examples/fleet-demo.yaml" >"$WORK/fleet-demo.yaml"
  note "CRDs applied, namespace $NAMESPACE created; in moto: image $image, subnets $subnet_a $subnet_b, security group $group"

  start operator "$bin" operator --namespace "$NAMESPACE" --listen 127.0.0.1:0 \
    --resync 2s --queue-poll 500ms --events-wait 1s --unresponsive-after 20s \
    --backoff-base 2s --backoff-cap 8s
  wait_until "$START_DEADLINE" "the operator to listen" has_printed operator "listening on "
  note "operator serving health and metrics on $(printed operator "listening on ")"
  # Browser ports below the kernel's ephemeral range (32768 on), where no
  # outgoing connection takes them, and below the tests' (20000 on).
  # As root, nodes boot from the fleet's real user data: the agent runs as
  # browserfleet and Chromium, sandboxed, as browserfleet-browser (both users
  # are created on this machine). Otherwise agents and browsers run as the
  # invoking user, which Chromium's sandbox accepts too.
  local boot=direct
  if [[ "$(id -u)" -eq 0 ]]; then
    boot=user-data
    chmod 755 "$WORK"
  fi
  start nodes "$dev" nodes --agent-binary "$bin" --work-dir "$WORK/nodes" --boot-delay 2s \
    --poll-interval 500ms --fleet "$NAMESPACE/$FLEET" --boot "$boot" \
    --browser-ports 19000-19999 --ports-per-node 16
  wait_until "$START_DEADLINE" "the node simulator to start" has_printed nodes "simulating nodes in "
  note "node simulator: an agent and Chromium per running moto instance (logs in nodes/)"

  kubectl apply -n "$NAMESPACE" -f "$WORK/fleet-demo.yaml" >>"$WORK/kubectl.log"
  note "applied examples/fleet-demo.yaml: minimum 1 instance, maximum 4, 2 sessions each"
  live_view_until "$READY_DEADLINE" "the fleet to be Ready at its minimum" at_minimum_and_ready
  note "phase 1/4: fleet Ready with its minimum of 1 instance"

  local requests reply_queue
  requests="$(kubectl get bfleet "$FLEET" -n "$NAMESPACE" -o jsonpath='{.status.queues.requests}')"
  [[ -n "$requests" ]] || fail "the fleet has no request queue in its status"
  reply_queue="$("$PYTHON" "$AWS_HELPER" send --queue "$requests" --reply-queue demo-replies \
    --count "$REQUESTS" --ttl "$TTL_SECONDS")"
  start replies "$PYTHON" -u "$AWS_HELPER" replies --queue "$reply_queue"
  note "sent $REQUESTS session requests (TTL ${TTL_SECONDS}s) to the request queue; replies go to demo-replies"
  live_view_until "$SCALE_OUT_DEADLINE" "$REQUESTS sessions to be ready" all_sessions_ready
  note "phase 2/4: scaled out: $REQUESTS sessions ready, up to $PEAK_READY instances ready"

  live_view_until "$SCALE_IN_DEADLINE" "the sessions to expire and the fleet to scale back in" back_at_minimum
  note "phase 3/4: scaled back in to the minimum of 1 instance"

  kubectl apply -n "$NAMESPACE" -f "$ROOT/examples/session-demo.yaml" >>"$WORK/kubectl.log"
  note "applied examples/session-demo.yaml: one BrowserSession, the Kubernetes way"
  ON_TIMEOUT=show_session live_view_until "$SESSION_DEADLINE" "the BrowserSession to be Ready" session_ready
  local row url secret token used
  row="$(kubectl get bsess "$SESSION" -n "$NAMESPACE" --no-headers)"
  note "\$ kubectl get bsess: $(tr -s ' ' <<<"$row")"
  url="$(kubectl get bsess "$SESSION" -n "$NAMESPACE" -o jsonpath='{.status.endpoints.webSocketDebuggerUrl}')"
  secret="$(kubectl get bsess "$SESSION" -n "$NAMESPACE" -o jsonpath='{.status.credentialsSecret}')"
  token="$(kubectl get secret "$secret" -n "$NAMESPACE" -o jsonpath='{.data.token}' | base64 -d)"
  [[ -n "$url" && -n "$token" ]] || fail "the Ready session has no endpoint or token"
  note "its DevTools endpoint is $url; the token is in Secret $secret"
  used="$("$PYTHON" "$CDP_CLIENT" --url "$url" --token "$token")" || fail "the CDP client failed"
  note "a CDP client connected with the token: $used"
  kubectl delete bsess "$SESSION" -n "$NAMESPACE" --wait=false >>"$WORK/kubectl.log"
  live_view_until "$SESSION_DEADLINE" "the BrowserSession and its browser to go" session_gone
  note "phase 4/4: deleted the BrowserSession: its browser ended before the resource went"
  refresh
  COMPLETE=1
  if [[ "$EXIT_WHEN_DONE" == 1 ]]; then
    say "demo complete"
    exit 0
  fi
  VIEW_STATUS="demo complete; Ctrl-C to stop"
  ((INTERACTIVE)) || say "$VIEW_STATUS"
  # Until Ctrl-C: the live view goes on (the fleet stays at its minimum).
  while true; do
    refresh
    check_components
    sleep 2
  done
}

main "$@"
