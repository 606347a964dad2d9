#!/usr/bin/env bash
# demo.sh: tether end to end on this machine. A real Kubernetes cluster (scripts/dev-cluster.sh:
# kube-apiserver, controllers and, as root, a real node), a stub, the agent installed as two pods
# by `tether register`'s manifest (as root; otherwise two agent processes on this machine) that
# dial the stub and forward as their service account impersonating the caller, and kubectl as
# user `alice` (who may `view` in namespace default, and exec into its pods) going through the
# tunnel, into a real container.
#
#   scripts/demo.sh            run the demo, then stay up until Ctrl-C (kubectl away as alice)
#   scripts/demo.sh --smoke    run the demo, stop everything, exit 0 only if every step
#                              behaved as expected
#
# Everything lives in a fresh directory under ${TMPDIR:-/tmp} (certificates from
# scripts/bootstrap-certs.sh, the dev cluster, logs, alice's kubeconfig); the repository's certs/
# is not touched. It is removed when the demo ends well, and kept (path printed) when a step
# failed. Ports are chosen by the kernel. On exit (Ctrl-C, SIGTERM, a failure) the script stops
# exactly what it started: the agents and the stub by PID, the dev cluster (and its node, with
# the agent pods) by `dev-cluster.sh stop DIR`.
#
# The first run builds the Kubernetes binaries from Debian's source package (5 to 12 minutes;
# progress is printed); later runs start in about 40 seconds with a node, 10 without.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
# shellcheck source=scripts/lib.sh
. "$root/scripts/lib.sh"

smoke=false
case ${1:-} in
  "") ;;
  --smoke) smoke=true ;;
  -h | --help) sed -n '2,18p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
  *) echo "usage: $PROG [--smoke]" >&2; exit 2 ;;
esac

# How long to wait for a process to log that it is ready, or for RBAC to apply.
PATIENCE=${DEMO_PATIENCE:-60}

if [[ -t 1 ]]; then bold=$'\e[1m' green=$'\e[32m' red=$'\e[31m' off=$'\e[0m'
else bold='' green='' red='' off=''; fi
DIE_COLOR=$red # lib.sh's die prints its line in red
step() { printf '\n%s==> %s%s\n' "$bold" "$*" "$off"; }
info() { printf '    %s\n' "$*"; }

need_cmds cargo kubectl

demo=$(mktemp -d "${TMPDIR:-/tmp}/tether-demo.XXXXXX")
certs=$demo/certs
cluster=$demo/cluster
tether=$root/target/debug/tether
# kubectl's caches go here, not into the user's home.
export KUBECACHEDIR=$demo/kube-cache
unset KUBECONFIG

# -- cleanup: exactly what this script started ----------------------------------------------------
# The stub and the agents are started with lib.sh's spawn, which remembers them for stop_spawned.
cluster_started=false
failures=0

# shellcheck disable=SC2317 # runs from the EXIT trap, which shellcheck 0.9 takes for unreachable
cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  set +e
  if ((${#SPAWNED[@]})); then
    step "stopping the agents and the stub"
    # Agents first (they drain), then the stub: reverse order of start.
    stop_spawned
  fi
  if $cluster_started; then
    step "stopping the dev cluster"
    "$root/scripts/dev-cluster.sh" stop "$cluster"
  fi
  # Ctrl-C or SIGTERM is how an interactive demo ends: that is no reason to keep the files.
  if ((failures == 0)) && [[ $rc == 0 || $rc == 130 || $rc == 143 ]]; then
    rm -rf "$demo"
  else
    info "logs and state kept in $demo"
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# -- 1. build and certificates ---------------------------------------------------------------------
step "building tether (cargo build)"
cargo build --manifest-path "$root/Cargo.toml" --bin tether
info "binary: $tether"

# A node (real pods) needs root; without it the agents run as processes on this machine.
node=false
if (($(id -u) == 0)); then node=true; fi
eval "$(bash "$root/scripts/dev-node.sh" --print-env)" # NODE_GATEWAY: where pods reach this machine

step "bootstrapping certificates in $certs"
TETHER=$tether "$root/scripts/bootstrap-certs.sh" "$certs" dev
if $node; then
  # The agent pods reach the stub at the pod network's gateway: the stub's certificate names it.
  "$tether" certs stub --dir "$certs" --san localhost --san 127.0.0.1 --san "$NODE_GATEWAY" --force >/dev/null
  info "stub certificate reissued for localhost, 127.0.0.1 and $NODE_GATEWAY (the pods' gateway)"
fi

# -- 2. a real Kubernetes cluster ------------------------------------------------------------------
cluster_started=true
if $node; then
  step "starting the dev cluster (etcd, kube-apiserver, controllers v1.20.2, and a node: containerd + kubelet)"
  "$root/scripts/dev-cluster.sh" start "$cluster"
else
  step "starting the dev cluster (etcd, kube-apiserver, controllers v1.20.2; not root, so no node)"
  "$root/scripts/dev-cluster.sh" start --no-node "$cluster"
fi
# shellcheck disable=SC1091
. "$cluster/env"
admin() { kubectl --kubeconfig "$ADMIN_KUBECONFIG" "$@"; }

# -- 3. stub and agents ----------------------------------------------------------------------------
step "starting the stub"
listen=127.0.0.1
if $node; then listen=0.0.0.0; fi # the pods reach it through the pod network's gateway
spawn stub "$demo/stub.log" "$tether" stub --certs "$certs" --quic-listen "$listen:0" \
  --https-listen 127.0.0.1:0 --audit-log "$demo/stub-audit.log"
stub_pid=$SPAWNED_PID
line=$(wait_for_line "$demo/stub.log" "stub listening" "$stub_pid" stub "$PATIENCE")
quic=$(field "$line" quic)
https=$(field "$line" https)
[[ -n $quic && -n $https ]] || die "cannot read the stub's addresses from: $line"
stub_url=https://$https
info "pid $stub_pid: QUIC for agents on $quic, HTTPS front door on $stub_url"
info "its audit log: $demo/stub-audit.log"

if $node; then
  step "the tether image (scripts/image.sh) and a small one to exec into (scripts/busybox-image.sh), loaded into the node"
  "$root/scripts/image.sh" --binary "$tether" --out "$demo/tether-image.tar" >/dev/null
  "$root/scripts/busybox-image.sh" "$demo/busybox-image.tar" 2>/dev/null
  "$root/scripts/dev-node.sh" import "$cluster" "$demo/tether-image.tar"
  "$root/scripts/dev-node.sh" import "$cluster" "$demo/busybox-image.tar"
  info "localhost/tether:$("$tether" --version | awk '{print $2}') and localhost/busybox:tether-test"

  step "as the cluster's admin: install the agent (tether register ... | kubectl apply -f -)"
  "$tether" register --certs "$certs" --cluster dev --stub "$NODE_GATEWAY:${quic##*:}" >"$demo/agent.yaml"
  admin apply -f "$demo/agent.yaml" 2>&1 | grep -v 'minor version skew' | sed 's/^/    /'
  deadline=$((SECONDS + PATIENCE * 2))
  until [[ $(admin get pods -n tether-system -l app.kubernetes.io/name=tether-agent --no-headers 2>/dev/null | grep -c ' 1/1 *Running') == 2 ]]; do
    ((SECONDS < deadline)) || die "the two agent pods were not Ready within $((PATIENCE * 2))s"
    sleep 0.5
  done
  admin get pods -n tether-system -o wide 2>&1 | grep -v 'minor version skew' | sed 's/^/    /'
  wait_for_line "$demo/stub.log" "agent connected" "$stub_pid" stub "$PATIENCE" >/dev/null
  agent_identity=system:serviceaccount:tether-system:tether-agent
  verdict_later="the agent runs as two pods, connected to the stub"
else
  step "starting two agents for cluster dev (credential: $AGENT_KUBECONFIG, may only impersonate)"
  for name in agent-0 agent-1; do
    spawn "$name" "$demo/$name.log" "$tether" agent --certs "$certs" --cluster dev --name "$name" \
      --stub "localhost:${quic##*:}" --kubeconfig "$AGENT_KUBECONFIG"
    pid=$SPAWNED_PID
    wait_for_line "$demo/$name.log" "connected to stub" "$pid" "$name" "$PATIENCE" >/dev/null
    info "$name (pid $pid) connected to the stub"
  done
  agent_identity=$AGENT_USER
  verdict_later=
fi

# -- 4. RBAC and alice's kubeconfig ----------------------------------------------------------------
step "as the cluster admin: alice may view namespace default and exec into its pods; a ConfigMap and a Secret to look at"
admin apply -f - <<'EOF'
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata:
  name: alice-view
  namespace: default
roleRef:
  apiGroup: rbac.authorization.k8s.io
  kind: ClusterRole
  name: view
subjects:
- apiGroup: rbac.authorization.k8s.io
  kind: User
  name: alice
---
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata:
  name: pod-exec
  namespace: default
rules:
- apiGroups: [""]
  resources: ["pods/exec"]
  verbs: ["create"]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata:
  name: alice-exec
  namespace: default
roleRef:
  apiGroup: rbac.authorization.k8s.io
  kind: Role
  name: pod-exec
subjects:
- apiGroup: rbac.authorization.k8s.io
  kind: User
  name: alice
---
apiVersion: v1
kind: ConfigMap
metadata:
  name: hello
  namespace: default
data:
  greeting: hello through tether
---
apiVersion: v1
kind: Secret
metadata:
  name: db-password
  namespace: kube-system
stringData:
  password: not-for-alice
EOF
if $node; then
  admin apply -f - <<'EOF'
apiVersion: v1
kind: Pod
metadata:
  name: web
  namespace: default
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: web
    image: localhost/busybox:tether-test
    imagePullPolicy: Never
    command: ["sh", "-c", "mkdir -p /tmp/www && echo hello from a real container > /tmp/www/index.html && exec httpd -f -p 8080 -h /tmp/www"]
EOF
  admin wait --for=condition=Ready pod/web -n default --timeout="${PATIENCE}s" >/dev/null
fi
# The RBAC authorizer reads bindings from a cache: wait (bounded) until it counts.
deadline=$((SECONDS + PATIENCE))
until admin auth can-i list configmaps --namespace default --as alice >/dev/null 2>&1; do
  ((SECONDS < deadline)) || die "the RoleBinding for alice did not take effect within ${PATIENCE}s"
  sleep 0.2
done

alice=$demo/alice.kubeconfig
step "alice's kubeconfig (tether kubeconfig --user alice --cluster dev)"
"$tether" kubeconfig --certs "$certs" --stub "$stub_url" --cluster dev --user alice --ttl 12h >"$alice"
info "$alice"
info "server: $(kubectl --kubeconfig "$alice" config view -o jsonpath='{.clusters[0].cluster.server}')"

# -- 5. kubectl as alice, through stub and agents --------------------------------------------------
# check EXPECT NEEDLE WHAT -- ARGS...: runs `kubectl --kubeconfig alice.kubeconfig ARGS`, prints
# the command and its output, and checks the outcome: EXPECT is "ok" (exit 0) or "refused"
# (non-zero exit), and the output must contain NEEDLE. WHAT says what a pass demonstrates.
check() {
  local expect=$1 needle=$2 what=$3 out rc=0
  shift 4
  printf '\n  %s$ kubectl --kubeconfig alice.kubeconfig %s%s\n' "$bold" "$*" "$off"
  out=$(kubectl --kubeconfig "$alice" "$@" 2>&1) || rc=$?
  # The 1.32 client warns that the 1.20 server is old; that is not the point here.
  out=$(grep -v 'exceeds the supported minor version skew' <<<"$out" || true)
  [[ -z $out ]] || printf '%s\n' "$out" | sed 's/^/    /'
  if [[ $expect == ok ]] && ((rc != 0)); then
    verdict bad "expected success, got exit $rc"
  elif [[ $expect == refused ]] && ((rc == 0)); then
    verdict bad "expected a refusal, but it succeeded"
  elif [[ $out != *"$needle"* ]]; then
    verdict bad "expected the output to contain: $needle"
  else
    verdict good "$what"
  fi
}
verdict() {
  if [[ $1 == good ]]; then
    printf '    %s✓ %s%s\n' "$green" "$2" "$off"
  else
    printf '    %s✗ %s%s\n' "$red" "$2" "$off"
    failures=$((failures + 1))
  fi
}

step "kubectl as alice, through the stub and an agent"
[[ -z $verdict_later ]] || verdict good "$verdict_later"
check ok "configmap/hello" "alice lists ConfigMaps in default (RoleBinding to view)" -- \
  get configmaps -n default -o name
check ok "hello through tether" "and reads the one the admin created" -- \
  get configmap hello -n default -o 'jsonpath={.data.greeting}'
if $node; then
  check ok "web" "alice lists Pods in default" -- get pods -n default
  check ok "hello from a real container" "kubectl exec through the tunnel, into a real container" -- \
    exec web -n default -- cat /tmp/www/index.html
else
  check ok "" "alice lists Pods in default (there are none: no node here)" -- get pods -n default
fi
check refused 'User "alice" cannot list resource "namespaces"' \
  "listing namespaces: the API server's own 403, naming alice" -- get namespaces
check refused 'User "alice" cannot get resource "secrets"' \
  "reading a Secret in kube-system: denied by the API server's RBAC" -- get secret db-password -n kube-system
check refused 'may not impersonate user "system:admin"' \
  "--as=system:admin: the agent asks the cluster whether alice may impersonate; it says no" -- \
  --as=system:admin --as-group=system:masters get secret db-password -n kube-system

# -- 6. what the API server and the stub recorded ---------------------------------------------------
step "the API server's audit log: who it saw"
if command -v jq >/dev/null; then
  query='select(.stage == "ResponseComplete" and .impersonatedUser.username == "alice"
    and (.requestURI | contains("db-password")))'
  # Events are written as requests finish: give the last one a moment (bounded).
  deadline=$((SECONDS + PATIENCE))
  until (($(jq -c "$query" "$AUDIT_LOG" | wc -l) >= 1)) || ((SECONDS >= deadline)); do sleep 0.2; done
  jq -c "$query | {user: .user.username, impersonatedUser: .impersonatedUser.username,
    groups: .impersonatedUser.groups, verb, requestURI, code: .responseStatus.code}" "$AUDIT_LOG" |
    sed 's/^/    /'
  seen=$(jq -c "$query" "$AUDIT_LOG" | wc -l)
  by_agent=$(jq -c "$query | select(.user.username == \"$agent_identity\")" "$AUDIT_LOG" | wc -l)
  as_admin=$(jq -c 'select(.impersonatedUser.username == "system:admin")' "$AUDIT_LOG" | wc -l)
  # One: alice's own read. Her --as=system:admin read never reached the API server (the agent's
  # review said no), so only its SelfSubjectAccessReview did, as alice.
  if ((seen == 1 && seen == by_agent)); then
    verdict good "alice's Secret read arrived as $agent_identity impersonating alice; her --as read never arrived"
  else
    verdict bad "expected 1 Secret read as $agent_identity impersonating alice; saw $seen ($by_agent by the agent)"
  fi
  if ((as_admin == 0)); then
    verdict good "no request ever impersonated system:admin"
  else
    verdict bad "$as_admin request(s) impersonated system:admin"
  fi
else
  info "(jq is not installed: skipping the look at $AUDIT_LOG)"
fi

step "the stub's audit log (one JSON line per request): the last three"
tail -n 3 "$demo/stub-audit.log" | sed 's/^/    /'
if grep -q '"user":"alice"' "$demo/stub-audit.log"; then
  verdict good "the stub recorded alice's requests"
else
  verdict bad "no line with user alice in $demo/stub-audit.log"
fi

# -- 7. the end --------------------------------------------------------------------------------------
if ((failures > 0)); then
  step "${red}$failures step(s) did not behave as expected${off}"
  exit 1
fi
step "${green}every step behaved as expected${off}"
if $smoke; then
  exit 0
fi

cat <<EOF

tether is up. In another terminal:

    export KUBECONFIG=$alice
    kubectl get configmaps -n default
    kubectl get configmaps -n default -w        # a watch through the tunnel
    kubectl get secrets -n kube-system          # 403 from the API server
$($node && printf '    kubectl exec -it web -- sh                  # a shell in a real container, through the tunnel\n')

  cluster admin, straight to the API server: KUBECONFIG=$ADMIN_KUBECONFIG
  $($node && echo "the agent pods: kubectl --kubeconfig \$ADMIN_KUBECONFIG -n tether-system get pods; their logs: ... logs -l app.kubernetes.io/name=tether-agent" || echo "agent logs: $demo/{agent-0,agent-1}.log")
  stub log: $demo/stub.log; API server audit log: $AUDIT_LOG

Press Ctrl-C to stop the agents, the stub and the dev cluster.
EOF
# Until Ctrl-C (the INT trap exits; cleanup stops everything), or until one of our processes
# dies, which ends the demo with an error.
rc=0
wait -n "${SPAWNED[@]%%:*}" || rc=$?
die "a tether process exited (status $rc); see the logs in $demo"
