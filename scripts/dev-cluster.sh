#!/usr/bin/env bash
# dev-cluster.sh: a real Kubernetes v1.20.2 cluster on this machine, for tether's end-to-end
# tests and demos: etcd, kube-apiserver, kube-controller-manager and kube-scheduler on loopback,
# and (as root) a real node that runs real pods (scripts/dev-node.sh: containerd, runc, CNI,
# kubelet).
#
#   scripts/dev-cluster.sh start [--no-node] [--apiserver-flag FLAG]... DIR
#                               build if needed (kube-build.sh), start the control plane (and the
#                               node, unless --no-node), write DIR/{admin,agent}.kubeconfig,
#                               DIR/env, pid files, logs; wait until it serves (and the node is
#                               Ready). Each --apiserver-flag FLAG (repeatable) is appended to
#                               kube-apiserver's command line, e.g.
#                               --apiserver-flag --oidc-issuer-url=https://127.0.0.1:1234
#   scripts/dev-cluster.sh stop DIR     stop exactly what `start DIR` started, and undo what the
#                                       node changed on the host
#   scripts/dev-cluster.sh status DIR   say whether the cluster in DIR is running
#   scripts/dev-cluster.sh build        the same as scripts/kube-build.sh
#
# Two clusters in two directories are independent; only one of them may have a node (the node
# is the machine's), and starting a second one with a node is refused naming the first. The
# binaries, their versions and where they are cached are kube-build.sh's business; this script
# asks it (--print-env) and only runs them.
#
# Environment knobs:
#   TETHER_CACHE       cache root (default $HOME/.cache/tether; read by kube-build.sh)
#   DEV_CLUSTER_READY_TIMEOUT  seconds to wait for /readyz (default 90)

set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=scripts/lib.sh
. "$HERE/lib.sh"

# ----------------------------------------------------------------------------------------------
# Constants
# ----------------------------------------------------------------------------------------------
# KUBE_VERSION, KUBE_CACHE_DIR, KUBE_APISERVER_BIN and ETCD_BIN, from the one place that knows.
kube_env=$(bash "$HERE/kube-build.sh" --print-env) || die "scripts/kube-build.sh --print-env failed"
eval "$kube_env"
: "${KUBE_VERSION:?}" "${KUBE_CACHE_DIR:?}" "${KUBE_APISERVER_BIN:?}" "${ETCD_BIN:?}"
: "${KUBE_CONTROLLER_MANAGER_BIN:?}" "${KUBE_SCHEDULER_BIN:?}"
# NODE_GATEWAY and SERVICE_IP: where pods reach the host and the API server.
eval "$(bash "$HERE/dev-node.sh" --print-env)"

READY_TIMEOUT=${DEV_CLUSTER_READY_TIMEOUT:-90}
ETCD_TIMEOUT=30
STOP_TIMEOUT=20

AGENT_USER=tether-agent
ADMIN_USER=tether-admin

usage() {
  cat >&2 <<EOF
usage: $PROG start [--no-node] [--apiserver-flag FLAG]... DIR
       $PROG stop DIR
       $PROG status DIR
       $PROG build

start   starts etcd, kube-apiserver, kube-controller-manager and kube-scheduler $KUBE_VERSION
        (free ports on 127.0.0.1) and, unless --no-node (or not root), a node with containerd
        and kubelet; writes kubeconfigs and DIR/env; builds the binaries first if
        $KUBE_CACHE_DIR lacks them. --apiserver-flag FLAG (repeatable) appends FLAG to
        kube-apiserver's command line (e.g. --apiserver-flag --oidc-issuer-url=https://...)
stop    stops the processes recorded in DIR (idempotent)
status  says whether the cluster in DIR is running (exit 0 running, 3 not running, 1 partly)
build   builds kube-apiserver $KUBE_VERSION and fetches etcd once, into $KUBE_CACHE_DIR
        (the same as scripts/kube-build.sh)
EOF
  exit 2
}

# ----------------------------------------------------------------------------------------------
# start / stop / status
# ----------------------------------------------------------------------------------------------

# free_ports N: prints N distinct TCP ports free on 127.0.0.1 now. The kernel picks them (bind to
# port 0); all sockets stay open until all are chosen so that they differ. They are released
# before the daemon binds them, so another process may take one meanwhile: the callers pick
# them just before the start and start again on new ones if the daemon says so (port_taken).
free_ports() {
  local n=$1
  if command -v python3 >/dev/null 2>&1; then
    python3 - "$n" <<'EOF'
import socket, sys
socks = []
for _ in range(int(sys.argv[1])):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.bind(("127.0.0.1", 0))
    socks.append(s)
print(" ".join(str(s.getsockname()[1]) for s in socks))
EOF
  else
    # Fallback: random ports in the ephemeral range that nothing listens on.
    local lo hi ports=() p
    read -r lo hi </proc/sys/net/ipv4/ip_local_port_range
    while ((${#ports[@]} < n)); do
      p=$((lo + (RANDOM * 32768 + RANDOM) % (hi - lo)))
      [[ " ${ports[*]} " == *" $p "* ]] && continue
      (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null && continue
      ports+=("$p")
    done
    echo "${ports[*]}"
  fi
}

# How many times etcd or kube-apiserver is started on new ports when one was taken meanwhile.
PORT_TRIES=3

# port_taken LOG: the daemon writing LOG exited because a port it was to listen on was taken.
port_taken() { grep -qs "address already in use" "$1"; }

# Runs the machine's kubectl with a private HOME and cache (the installed kubectl is a
# dispatcher that caches per HOME/KUBECACHEDIR) so the user's ~/.kube is never touched.
kubectl_dev() {
  local dir=$1; shift
  mkdir -p "$dir/.kube-home" "$dir/.kube-cache"
  HOME="$dir/.kube-home" KUBECACHEDIR="$dir/.kube-cache" KUBECONFIG="$dir/admin.kubeconfig" \
    kubectl "$@"
}

# write_kubeconfig FILE URL CA_B64 USER TOKEN: a kubeconfig (mode 600) for USER with a bearer token.
write_kubeconfig() {
  local file=$1 url=$2 ca_b64=$3 user=$4 token=$5
  (umask 077 && cat >"$file" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: tether-dev
  cluster:
    server: $url
    certificate-authority-data: $ca_b64
users:
- name: $user
  user:
    token: $token
contexts:
- name: $user@tether-dev
  context:
    cluster: tether-dev
    user: $user
current-context: $user@tether-dev
EOF
  )
}

# tail_logs DIR: the last lines of etcd's and kube-apiserver's logs, when a start fails.
tail_logs() {
  local dir=$1 f
  for f in "$dir/etcd.log" "$dir/apiserver.log"; do
    [[ -f $f ]] || continue
    log "---- last lines of $f ----"
    tail -n 25 "$f" >&2 || true
  done
}

# started_with DIR: the binaries the cluster in DIR was started with, from DIR/env. The cache's
# place depends on HOME, which may differ now (under sudo, say), and pid_is must compare a
# process with the binary it really runs.
started_with() {
  [[ -f $1/env ]] || return 0
  eval "$(grep -E '^(KUBE_APISERVER|ETCD|KUBE_CONTROLLER_MANAGER|KUBE_SCHEDULER)_BIN=' "$1/env")"
}

# Is the cluster recorded in DIR running? 0: both processes, 1: none, 2: only one of them.
cluster_state() {
  local dir=$1 n=0 ep ap
  ep=$(cat "$dir/etcd.pid" 2>/dev/null || true)
  ap=$(cat "$dir/apiserver.pid" 2>/dev/null || true)
  pid_is "$ep" "$ETCD_BIN" && n=$((n + 1))
  pid_is "$ap" "$KUBE_APISERVER_BIN" && n=$((n + 1))
  case $n in 2) return 0 ;; 0) return 1 ;; *) return 2 ;; esac
}

# stop_pidfile DIR NAME BIN: stop the process in DIR/NAME.pid if it is still BIN (SIGTERM, then
# SIGKILL after STOP_TIMEOUT seconds), and remove the pid file.
stop_pidfile() {
  local dir=$1 name=$2 bin=$3 pid
  local pf=$dir/$name.pid
  [[ -f $pf ]] || return 0
  pid=$(cat "$pf" 2>/dev/null || true)
  if pid_is "$pid" "$bin"; then
    log "stopping $name (pid $pid)"
    # The daemons were reparented to PID 1 (they run in their own session); stop_pid also waits
    # for init to reap them, so that a caller's `kill -0 PID` right after `stop` sees them gone.
    stop_pid "$pid" "$name" "$STOP_TIMEOUT" "$bin" || die "$name (pid $pid) survived SIGKILL"
  fi
  rm -f "$pf"
}

do_stop() {
  local dir=$1
  if [[ ! -d $dir ]]; then
    log "nothing to stop: $dir does not exist"
    return 0
  fi
  dir=$(cd "$dir" && pwd)
  if [[ ! -f $dir/apiserver.pid && ! -f $dir/etcd.pid && ! -d $dir/node ]]; then
    log "nothing running in $dir"
    return 0
  fi
  started_with "$dir"
  # The node first, then the controllers, then kube-apiserver, so it does not spin on a vanished
  # etcd.
  bash "$HERE/dev-node.sh" stop "$dir"
  stop_pidfile "$dir" scheduler "$KUBE_SCHEDULER_BIN"
  stop_pidfile "$dir" controller-manager "$KUBE_CONTROLLER_MANAGER_BIN"
  stop_pidfile "$dir" apiserver "$KUBE_APISERVER_BIN"
  stop_pidfile "$dir" etcd "$ETCD_BIN"
  log "stopped the dev cluster in $dir"
}

do_status() {
  local dir=$1 rc=0
  [[ -d $dir ]] || { echo "not running ($dir does not exist)"; return 3; }
  dir=$(cd "$dir" && pwd)
  started_with "$dir"
  cluster_state "$dir" || rc=$?
  case $rc in
    0)
      echo "running: $(grep -E '^APISERVER_URL=' "$dir/env" 2>/dev/null | cut -d= -f2-) (etcd pid $(cat "$dir/etcd.pid"), kube-apiserver pid $(cat "$dir/apiserver.pid"))"
      if [[ -f $dir/node/kubelet.pid ]]; then echo "node: kubelet pid $(cat "$dir/node/kubelet.pid"), containerd pid $(cat "$dir/node/containerd.pid" 2>/dev/null)"; fi
      ;;
    1) echo "not running"; return 3 ;;
    *) echo "partly running (one of etcd / kube-apiserver is gone); run: $PROG stop $dir"; return 1 ;;
  esac
}

# etcd_healthy URL: etcd at URL answers its health check with "health": "true".
etcd_healthy() { curl -fsS --max-time 2 "$1/health" 2>/dev/null | grep -q '"health":"true"'; }

# apiserver_ready URL CA TOKEN: the kube-apiserver at URL answers /readyz with "ok".
apiserver_ready() {
  curl -fsS --max-time 3 --cacert "$2" -H "Authorization: Bearer $3" "$1/readyz" 2>/dev/null | grep -qx ok
}

# start_daemon DIR NAME LOG BIN ARGS...: lib.sh's daemon, its PID in DIR/NAME.pid.
start_daemon() {
  local dir=$1 name=$2 logf=$3
  shift 3
  daemon "$dir/$name.pid" "$logf" "$@"
}

# control_plane_ready URL CA TOKEN: kube-controller-manager has done what users of the cluster
# rely on: the `default` ServiceAccount exists (without it, the ServiceAccount admission plugin
# refuses every pod in `default`) and the aggregated ClusterRole `view` has its rules (without
# them, binding `view` grants nothing).
control_plane_ready() {
  local url=$1 ca=$2 token=$3
  curl -fsS --max-time 3 --cacert "$ca" -H "Authorization: Bearer $token" \
    "$url/api/v1/namespaces/default/serviceaccounts/default" >/dev/null 2>&1 &&
    curl -fsS --max-time 3 --cacert "$ca" -H "Authorization: Bearer $token" \
      "$url/apis/rbac.authorization.k8s.io/v1/clusterroles/view" 2>/dev/null |
    python3 -c 'import json, sys; sys.exit(0 if json.load(sys.stdin).get("rules") else 1)'
}

do_start() {
  local dir=$1 node=$2
  shift 2
  # Extra kube-apiserver flags (--apiserver-flag), appended after the script's own.
  local apiserver_flags=("$@")
  need_cmds openssl curl setsid kubectl base64 awk python3
  if $node && (($(id -u) != 0)); then
    die "a node (real pods) needs root; as $(id -un), start the cluster with --no-node"
  fi
  mkdir -p "$dir"
  dir=$(cd "$dir" && pwd)

  local st=0
  (started_with "$dir" && cluster_state "$dir") || st=$?
  if ((st == 0)); then
    log "already running in $dir ($(grep -E '^APISERVER_URL=' "$dir/env" 2>/dev/null | cut -d= -f2-)); nothing to do"
    return 0
  elif ((st == 2)); then
    log "a previous cluster in $dir is only partly running; stopping what is left of it"
    do_stop "$dir"
  fi

  # Builds the binaries if the cache lacks them (minutes, once), else says they are there.
  bash "$HERE/kube-build.sh" >/dev/null

  # Fresh state on every start: etcd data, keys, tokens and logs of a stopped cluster are
  # discarded (only the files this script writes; nothing else in DIR is touched).
  bash "$HERE/dev-node.sh" stop "$dir"
  rm -rf "$dir/etcd-data" "$dir/pki" "$dir/.kube-cache" "$dir/.kube-home" "$dir/node"
  rm -f "$dir"/{etcd,apiserver,controller-manager,scheduler}.{pid,log} \
    "$dir"/{audit.log,audit-policy.yaml,tokens.csv,env} "$dir"/{admin,agent}.kubeconfig
  mkdir -p "$dir/pki"
  chmod 700 "$dir/pki"

  # -- keys and certificates --
  # A throw-away CA and a serving certificate for 127.0.0.1/localhost (and, with a node, the
  # addresses pods use: the Service address and the pods' gateway), so kubeconfigs carry a real
  # CA (no insecure-skip-tls-verify); and a service-account signing key.
  local P=$dir/pki sans="IP:127.0.0.1,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc"
  local bind=127.0.0.1
  if $node; then
    sans+=",IP:$SERVICE_IP,IP:$NODE_GATEWAY"
    # Pods reach the API server through the pods' gateway (the NAT rule for SERVICE_IP).
    bind=0.0.0.0
  fi
  (
    umask 077
    openssl req -x509 -newkey rsa:2048 -nodes -sha256 -days 3650 \
      -subj "/CN=tether-dev-ca" -keyout "$P/ca.key" -out "$P/ca.crt" \
      -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign"
    openssl req -newkey rsa:2048 -nodes -sha256 -subj "/CN=kube-apiserver" \
      -keyout "$P/apiserver.key" -out "$P/apiserver.csr"
    printf '%s\n' "subjectAltName=$sans" \
      "basicConstraints=critical,CA:FALSE" "keyUsage=critical,digitalSignature,keyEncipherment" \
      "extendedKeyUsage=serverAuth" >"$P/apiserver.ext"
    openssl x509 -req -sha256 -days 3650 -in "$P/apiserver.csr" -CA "$P/ca.crt" -CAkey "$P/ca.key" \
      -CAcreateserial -extfile "$P/apiserver.ext" -out "$P/apiserver.crt"
    openssl genrsa -out "$P/sa.key" 2048
    openssl rsa -in "$P/sa.key" -pubout -out "$P/sa.pub"
  ) >"$P/openssl.log" 2>&1 || { cat "$P/openssl.log" >&2; die "openssl failed to create the keys in $P"; }
  chmod 644 "$P/ca.crt"

  # -- tokens: the admin and the agent; and alice and bob (group "people"), who log in to this
  # cluster only when it plays the hub for the console. Users of clusters behind an agent arrive
  # there via impersonation. --
  local admin_token agent_token alice_token bob_token
  admin_token=$(openssl rand -hex 32)
  agent_token=$(openssl rand -hex 32)
  alice_token=$(openssl rand -hex 32)
  bob_token=$(openssl rand -hex 32)
  (umask 077 && printf '%s\n' \
    "$admin_token,$ADMIN_USER,$ADMIN_USER,\"system:masters\"" \
    "$agent_token,$AGENT_USER,$AGENT_USER" \
    "$alice_token,alice,alice,\"people\"" \
    "$bob_token,bob,bob,\"people\"" >"$dir/tokens.csv")

  # -- audit policy: every request at Metadata level (who, impersonated whom, verb, URI, code) --
  cat >"$dir/audit-policy.yaml" <<'EOF'
apiVersion: audit.k8s.io/v1
kind: Policy
rules:
- level: Metadata
EOF

  # -- etcd --
  local etcd_port etcd_peer_port etcd_url etcd_pid rc tries=0
  while :; do
    read -r etcd_port etcd_peer_port < <(free_ports 2) || true
    [[ -n $etcd_peer_port ]] || die "could not find free TCP ports on 127.0.0.1"
    etcd_url=http://127.0.0.1:$etcd_port
    log "starting etcd on $etcd_url"
    : >"$dir/etcd.log"
    start_daemon "$dir" etcd "$dir/etcd.log" "$ETCD_BIN" \
      --name tether-dev \
      --data-dir "$dir/etcd-data" \
      --listen-client-urls "$etcd_url" --advertise-client-urls "$etcd_url" \
      --listen-peer-urls "http://127.0.0.1:$etcd_peer_port" \
      --initial-advertise-peer-urls "http://127.0.0.1:$etcd_peer_port" \
      --initial-cluster "tether-dev=http://127.0.0.1:$etcd_peer_port" \
      --initial-cluster-state new \
      --logger zap --log-outputs stderr
    etcd_pid=$(cat "$dir/etcd.pid")
    rc=0
    poll_until "$etcd_pid" "$ETCD_TIMEOUT" etcd_healthy "$etcd_url" || rc=$?
    if ((rc == 1)) && port_taken "$dir/etcd.log" && ((++tries < PORT_TRIES)); then
      log "a port of etcd ($etcd_port or $etcd_peer_port) was taken before etcd bound it; trying two others"
      rm -rf "$dir/etcd-data"
      continue
    fi
    break
  done
  if ((rc == 1)); then
    tail_logs "$dir"; rm -f "$dir/etcd.pid"
    die "etcd exited during startup (log: $dir/etcd.log)"
  elif ((rc != 0)); then
    tail_logs "$dir"; do_stop "$dir"
    die "etcd did not become healthy within ${ETCD_TIMEOUT}s (log: $dir/etcd.log)"
  fi
  pid_is "$etcd_pid" "$ETCD_BIN" || { do_stop "$dir"; die "pid $etcd_pid is not $ETCD_BIN (was setsid run with job control?)"; }

  # -- kube-apiserver --
  local api_port api_url api_pid api_t0=$SECONDS
  tries=0
  while :; do
    read -r api_port < <(free_ports 1) || true
    [[ -n $api_port ]] || { do_stop "$dir"; die "could not find a free TCP port on 127.0.0.1"; }
    api_url=https://127.0.0.1:$api_port
    log "starting kube-apiserver $KUBE_VERSION on $api_url"
    if ((${#apiserver_flags[@]})); then log "  extra kube-apiserver flags: ${apiserver_flags[*]}"; fi
    : >"$dir/apiserver.log"
    start_daemon "$dir" apiserver "$dir/apiserver.log" "$KUBE_APISERVER_BIN" \
      --etcd-servers="$etcd_url" \
      --bind-address="$bind" --advertise-address=127.0.0.1 \
      --secure-port="$api_port" --insecure-port=0 \
      --cert-dir="$P" --tls-cert-file="$P/apiserver.crt" --tls-private-key-file="$P/apiserver.key" \
      --token-auth-file="$dir/tokens.csv" \
      --authorization-mode=RBAC \
      --audit-policy-file="$dir/audit-policy.yaml" --audit-log-path="$dir/audit.log" \
      --audit-log-format=json \
      --service-account-issuer=https://kubernetes.default.svc.cluster.local \
      --service-account-key-file="$P/sa.pub" --service-account-signing-key-file="$P/sa.key" \
      --service-cluster-ip-range=10.0.0.0/24 \
      --endpoint-reconciler-type=none \
      --profiling=false \
      "${apiserver_flags[@]}"
    api_pid=$(cat "$dir/apiserver.pid")
    rc=0
    poll_until "$api_pid" "$READY_TIMEOUT" apiserver_ready "$api_url" "$P/ca.crt" "$admin_token" || rc=$?
    if ((rc == 1)) && port_taken "$dir/apiserver.log" && ((++tries < PORT_TRIES)); then
      log "port $api_port was taken before kube-apiserver bound it; trying another"
      continue
    fi
    break
  done
  if ((rc == 1)); then
    tail_logs "$dir"; do_stop "$dir"
    die "kube-apiserver exited during startup (log: $dir/apiserver.log)"
  elif ((rc != 0)); then
    tail_logs "$dir"; do_stop "$dir"
    die "kube-apiserver did not become ready within ${READY_TIMEOUT}s (log: $dir/apiserver.log; raise DEV_CLUSTER_READY_TIMEOUT on a slow machine)"
  fi
  pid_is "$api_pid" "$KUBE_APISERVER_BIN" || { do_stop "$dir"; die "pid $api_pid is not $KUBE_APISERVER_BIN"; }
  log "kube-apiserver ready after $((SECONDS - api_t0))s"

  # -- kubeconfigs --
  local ca_b64
  ca_b64=$(base64 -w0 <"$P/ca.crt")
  write_kubeconfig "$dir/admin.kubeconfig" "$api_url" "$ca_b64" "$ADMIN_USER" "$admin_token"
  write_kubeconfig "$dir/agent.kubeconfig" "$api_url" "$ca_b64" "$AGENT_USER" "$agent_token"

  # -- the agent may impersonate users and groups (and name the caller of a kubectl --as in the
  # extra field tether-caller), and nothing else --
  if ! kubectl_dev "$dir" apply -f - >"$dir/.rbac.log" 2>&1 <<EOF
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata:
  name: tether-agent-impersonator
rules:
- apiGroups: [""]
  resources: ["users", "groups"]
  verbs: ["impersonate"]
- apiGroups: ["authentication.k8s.io"]
  resources: ["userextras/tether-caller"]
  verbs: ["impersonate"]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata:
  name: tether-agent-impersonator
roleRef:
  apiGroup: rbac.authorization.k8s.io
  kind: ClusterRole
  name: tether-agent-impersonator
subjects:
- apiGroup: rbac.authorization.k8s.io
  kind: User
  name: $AGENT_USER
EOF
  then
    cat "$dir/.rbac.log" >&2
    do_stop "$dir"
    die "could not create the agent's ClusterRole/ClusterRoleBinding with kubectl (see above)"
  fi
  rm -f "$dir/.rbac.log"

  # -- kube-controller-manager and kube-scheduler (no serving ports, no leader election) --
  log "starting kube-controller-manager and kube-scheduler"
  start_daemon "$dir" controller-manager "$dir/controller-manager.log" "$KUBE_CONTROLLER_MANAGER_BIN" \
    --kubeconfig="$dir/admin.kubeconfig" --leader-elect=false --port=0 --secure-port=0 \
    --service-account-private-key-file="$P/sa.key" --root-ca-file="$P/ca.crt" \
    --use-service-account-credentials=false
  start_daemon "$dir" scheduler "$dir/scheduler.log" "$KUBE_SCHEDULER_BIN" \
    --kubeconfig="$dir/admin.kubeconfig" --leader-elect=false --port=0 --secure-port=0
  rc=0
  poll_until "$(cat "$dir/controller-manager.pid")" "$READY_TIMEOUT" \
    control_plane_ready "$api_url" "$P/ca.crt" "$admin_token" || rc=$?
  if ((rc != 0)); then
    tail -n 25 "$dir/controller-manager.log" >&2 || true
    do_stop "$dir"
    die "kube-controller-manager did not fill the default ServiceAccount and aggregated roles within ${READY_TIMEOUT}s (log: $dir/controller-manager.log)"
  fi
  running "$(cat "$dir/scheduler.pid")" "$KUBE_SCHEDULER_BIN" || {
    tail -n 25 "$dir/scheduler.log" >&2 || true
    do_stop "$dir"
    die "kube-scheduler exited (log: $dir/scheduler.log)"
  }

  # -- env file --
  (
    umask 077
    {
      echo "# written by $PROG start; source it: . $dir/env"
      local kv
      for kv in \
        "DEV_CLUSTER_DIR=$dir" \
        "KUBE_VERSION=$KUBE_VERSION" \
        "APISERVER_URL=$api_url" "APISERVER_PORT=$api_port" "APISERVER_PID=$api_pid" \
        "ETCD_URL=$etcd_url" "ETCD_PORT=$etcd_port" "ETCD_PEER_PORT=$etcd_peer_port" "ETCD_PID=$etcd_pid" \
        "CA_FILE=$P/ca.crt" \
        "ADMIN_KUBECONFIG=$dir/admin.kubeconfig" "AGENT_KUBECONFIG=$dir/agent.kubeconfig" \
        "ADMIN_USER=$ADMIN_USER" "ADMIN_TOKEN=$admin_token" \
        "AGENT_USER=$AGENT_USER" "AGENT_TOKEN=$agent_token" \
        "ALICE_TOKEN=$alice_token" "BOB_TOKEN=$bob_token" \
        "AUDIT_LOG=$dir/audit.log" "APISERVER_LOG=$dir/apiserver.log" "ETCD_LOG=$dir/etcd.log" \
        "APISERVER_PID_FILE=$dir/apiserver.pid" "ETCD_PID_FILE=$dir/etcd.pid" \
        "KUBE_APISERVER_BIN=$KUBE_APISERVER_BIN" "ETCD_BIN=$ETCD_BIN" \
        "KUBE_CONTROLLER_MANAGER_BIN=$KUBE_CONTROLLER_MANAGER_BIN" "KUBE_SCHEDULER_BIN=$KUBE_SCHEDULER_BIN" \
        "KUBELET_BIN=$KUBELET_BIN" "NODE=$node"; do
        printf '%s=%q\n' "${kv%%=*}" "${kv#*=}"
      done
    } >"$dir/env"
  )

  # -- the node --
  if $node; then
    bash "$HERE/dev-node.sh" start "$dir" || { do_stop "$dir"; die "the node did not start (see above)"; }
    cat "$dir/node/env" >>"$dir/env"
  fi

  log "dev cluster up: $api_url (etcd $etcd_url)"
  log "  admin: KUBECONFIG=$dir/admin.kubeconfig kubectl get ns"
  log "  agent: $dir/agent.kubeconfig (user $AGENT_USER: may impersonate users and groups only)"
  log "  env:   . $dir/env        audit log: $dir/audit.log"
  log "  stop:  $0 stop $dir"
}

# ----------------------------------------------------------------------------------------------
main() {
  (($# >= 1)) || usage
  local cmd=$1; shift
  case $cmd in
    build) (($# == 0)) || usage; exec bash "$HERE/kube-build.sh" ;;
    start)
      local node=true apiserver_flags=()
      while (($#)); do
        case $1 in
          --no-node) node=false; shift ;;
          --apiserver-flag) (($# >= 2)) || usage; apiserver_flags+=("$2"); shift 2 ;;
          *) break ;;
        esac
      done
      (($# == 1)) || usage
      do_start "$1" "$node" "${apiserver_flags[@]}"
      ;;
    stop) (($# == 1)) || usage; do_stop "$1" ;;
    status) (($# == 1)) || usage; do_status "$1" ;;
    -h | --help | help) usage ;;
    *) log "unknown command: $cmd"; usage ;;
  esac
}

main "$@"
