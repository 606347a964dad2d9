#!/usr/bin/env bash
# dev-node.sh: a real node for the dev cluster in DIR (run by dev-cluster.sh; root only):
# containerd + runc + the CNI plugins from Debian, kubelet v1.20.2 (built by kube-build.sh) and a
# pause image built here, so that real pods run from real images.
#
#   scripts/dev-node.sh start DIR     start containerd and kubelet, wait until the node is Ready
#   scripts/dev-node.sh stop DIR      remove the pods, end every process it started, unmount,
#                                     delete the bridge, the cgroups and the NAT rule, restore the
#                                     sysctls kubelet and CNI changed
#   scripts/dev-node.sh import DIR ARCHIVE   load an OCI image archive into the node
#   scripts/dev-node.sh --print-env   the pod network's constants, for dev-cluster.sh
#
# The node is the machine: kubelet's port, the cgroup hierarchies and the pod network belong to
# it, so one node runs at a time (a lock in /run names the cluster that has it; starting a
# second one is refused with that name). Everything else lives under DIR/node: containerd's
# root, state and socket, kubelet's root, CNI configuration and address leases, logs, pid files.
#
# How pods reach things: the bridge tether-dev0 holds 10.244.77.1, the pods' gateway, which is
# the host: a stub listening on 0.0.0.0 (or 10.244.77.1) is reachable from every pod there. The
# API server's Service address 10.0.0.1:443 (what kubelet tells pods in KUBERNETES_SERVICE_HOST)
# is a NAT rule to the API server, as kube-proxy would make it. What was learned making a node
# work on this machine kind (restricted oom_score_adj, no loopback node IP, relaxed eviction) is
# in the comments where it applies.
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=scripts/lib.sh
. "$HERE/lib.sh"

NODE_BRIDGE=tether-dev0
POD_SUBNET=10.244.77.0/24
NODE_GATEWAY=10.244.77.1
SERVICE_IP=10.0.0.1
PAUSE_IMAGE=localhost/pause:3.4.1
CNI_BIN_DIR=/usr/lib/cni
LOCK=/run/tether-dev-node
# What kubelet (vm.*, kernel.*) and the bridge plugin (ip_forward) change on the host.
SYSCTLS=(vm.overcommit_memory kernel.panic kernel.panic_on_oops net.ipv4.ip_forward)
NODE_READY_TIMEOUT=${DEV_NODE_READY_TIMEOUT:-120}
STOP_TIMEOUT=20

print_env() {
  printf '%s=%q\n' NODE_BRIDGE "$NODE_BRIDGE" POD_SUBNET "$POD_SUBNET" NODE_GATEWAY "$NODE_GATEWAY" \
    SERVICE_IP "$SERVICE_IP" PAUSE_IMAGE "$PAUSE_IMAGE"
}

usage() {
  sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//' >&2
  exit 2
}

# preflight: what a node needs here, or a message that says what to install.
preflight() {
  (($(id -u) == 0)) || die "a node needs root (containerd, kubelet, network namespaces); start the cluster with --no-node instead"
  need_cmds containerd runc ctr iptables ip umoci jq findmnt kubectl
  [[ -x $CNI_BIN_DIR/bridge && -x $CNI_BIN_DIR/host-local && -x $CNI_BIN_DIR/loopback ]] ||
    die "no CNI plugins in $CNI_BIN_DIR: apt-get install --no-install-recommends containernetworking-plugins"
  [[ -d /sys/fs/cgroup/memory && -d /sys/fs/cgroup/cpu ]] ||
    die "kubelet here needs the cgroup v1 hierarchies (memory, cpu, ...) under /sys/fs/cgroup"
}

# kube_env: where the Kubernetes binaries are (kube-build.sh) and the cluster's own (DIR/env).
kube_env() {
  local dir=$1 env
  env=$(bash "$HERE/kube-build.sh" --print-env) || die "scripts/kube-build.sh --print-env failed"
  eval "$env"
  [[ -f $dir/env ]] || die "$dir/env is missing: start the cluster with scripts/dev-cluster.sh start $dir"
  # shellcheck disable=SC1091
  . "$dir/env"
  NODE=$dir/node
  SOCK=$NODE/containerd.sock
  NODE_NAME=$(hostname | tr '[:upper:]' '[:lower:]')
}

ctr_node() { ctr --address "$SOCK" -n k8s.io "$@"; }
kubectl_admin() {
  HOME="$DEV_CLUSTER_DIR/.kube-home" KUBECACHEDIR="$DEV_CLUSTER_DIR/.kube-cache" \
    kubectl --kubeconfig "$ADMIN_KUBECONFIG" "$@"
}

# nat_rule DIR: sets NAT_RULE to the rule that makes SERVICE_IP:443 the API server of DIR (its
# comment names DIR, so that stop removes exactly this one).
nat_rule() {
  NAT_RULE=(PREROUTING -d "$SERVICE_IP/32" -p tcp --dport 443 -m comment --comment "tether-dev:$1"
    -j DNAT --to-destination "$NODE_GATEWAY:$APISERVER_PORT")
}

node_ready() {
  [[ $(kubectl_admin get node "$NODE_NAME" -o 'jsonpath={.status.conditions[?(@.type=="Ready")].status}' 2>/dev/null) == True ]]
}

containerd_up() { ctr --address "$SOCK" version >/dev/null 2>&1; }

do_start() {
  local dir=$1
  preflight
  kube_env "$dir"
  if [[ -f $LOCK ]]; then
    local owner
    owner=$(cat "$LOCK")
    if [[ $owner != "$dir" ]] && { running "$(cat "$owner/node/kubelet.pid" 2>/dev/null)" "$KUBELET_BIN" ||
      running "$(cat "$owner/node/containerd.pid" 2>/dev/null)"; }; then
      die "a node already runs here, for the dev cluster in $owner: one node per machine (kubelet's port, the cgroups and the pod network are the machine's). Stop that cluster first, or start this one with --no-node."
    fi
  fi
  echo "$dir" >"$LOCK"
  mkdir -p "$NODE"/{containerd/root,containerd/state,cni,cni-ipam,kubelet,kubelet-pki,volume-plugins,opt}
  # The host's values before anything changes them, once: a restart must not record its own.
  if [[ ! -f $NODE/sysctls ]]; then
    local s
    for s in "${SYSCTLS[@]}"; do printf '%s=%s\n' "$s" "$(sysctl -n "$s")"; done >"$NODE/sysctls"
  fi

  # -- containerd, all of its state under NODE --
  cat >"$NODE/containerd.toml" <<EOF
version = 2
root = "$NODE/containerd/root"
state = "$NODE/containerd/state"
[grpc]
  address = "$SOCK"
[ttrpc]
  address = "$SOCK.ttrpc"
[debug]
  address = ""
[plugins."io.containerd.internal.v1.opt"]
  path = "$NODE/opt"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "$PAUSE_IMAGE"
  # This machine does not grant CAP_SYS_RESOURCE: a negative oom_score_adj fails runc.
  restrict_oom_score_adj = true
  # Pod network namespaces under our state, not in the host's /run/netns.
  netns_mounts_under_state_dir = true
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "$CNI_BIN_DIR"
    conf_dir = "$NODE/cni"
  [plugins."io.containerd.grpc.v1.cri".containerd]
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
EOF
  cat >"$NODE/cni/10-tether-dev.conflist" <<EOF
{
  "cniVersion": "0.4.0",
  "name": "tether-dev",
  "plugins": [
    {
      "type": "bridge", "bridge": "$NODE_BRIDGE", "isGateway": true, "ipMasq": false, "hairpinMode": true,
      "ipam": { "type": "host-local", "subnet": "$POD_SUBNET", "dataDir": "$NODE/cni-ipam",
                "routes": [ { "dst": "0.0.0.0/0" } ] }
    },
    { "type": "portmap", "capabilities": { "portMappings": true } }
  ]
}
EOF
  log "starting containerd (state in $NODE/containerd)"
  daemon "$NODE/containerd.pid" "$NODE/containerd.log" containerd --config "$NODE/containerd.toml"
  local rc=0
  poll_until "$(cat "$NODE/containerd.pid")" 30 containerd_up || rc=$?
  ((rc == 0)) || { tail -n 20 "$NODE/containerd.log" >&2; do_stop "$dir"; die "containerd did not start (log: $NODE/containerd.log)"; }

  # -- the pause image: the sandbox every pod's namespaces hang on --
  local rootfs=$NODE/pause-rootfs
  rm -rf "$rootfs" && mkdir -p "$rootfs"
  cp "$PAUSE_BIN" "$rootfs/pause"
  oci_archive "$rootfs" "${PAUSE_IMAGE%:*}" "${PAUSE_IMAGE##*:}" "$NODE/pause.tar" \
    --config.entrypoint /pause --config.user 65535:65535 >/dev/null
  rm -rf "$rootfs"
  ctr_node images import "$NODE/pause.tar" >/dev/null || { do_stop "$dir"; die "ctr could not import the pause image"; }

  # -- the Service address of the API server, as kube-proxy would make it --
  nat_rule "$dir"
  iptables -t nat -C "${NAT_RULE[@]}" 2>/dev/null || iptables -t nat -A "${NAT_RULE[@]}"

  # -- kubelet --
  # A cgroup root of our own, so that stop removes exactly what kubelet made.
  local h
  for h in /sys/fs/cgroup/*/; do
    [[ -f $h/cgroup.procs ]] && mkdir -p "$h/tether-dev"
  done
  log "starting kubelet $KUBE_VERSION (node $NODE_NAME)"
  # No --node-ip: kubelet refuses a loopback one; the node takes the hostname, which /etc/hosts
  # maps to 127.0.0.1, and kubelet listens there. Eviction and image GC thresholds are relaxed
  # so that a small test disk evicts nothing. --sync-frequency: a replaced Secret reaches its
  # pods' files within seconds (certificate rotation).
  daemon "$NODE/kubelet.pid" "$NODE/kubelet.log" "$KUBELET_BIN" \
    --kubeconfig="$ADMIN_KUBECONFIG" \
    --container-runtime=remote --container-runtime-endpoint="unix://$SOCK" \
    --cgroup-driver=cgroupfs --cgroup-root=/tether-dev --fail-swap-on=false \
    --address=127.0.0.1 --read-only-port=0 --healthz-port=0 \
    --anonymous-auth=true --authorization-mode=AlwaysAllow \
    --make-iptables-util-chains=false \
    --pod-infra-container-image="$PAUSE_IMAGE" \
    --root-dir="$NODE/kubelet" --cert-dir="$NODE/kubelet-pki" --volume-plugin-dir="$NODE/volume-plugins" \
    --eviction-hard='memory.available<50Mi,nodefs.available<1%,imagefs.available<1%' \
    --image-gc-high-threshold=100 --image-gc-low-threshold=99 \
    --sync-frequency=5s \
    --v=1
  rc=0
  local t0=$SECONDS
  poll_until "$(cat "$NODE/kubelet.pid")" "$NODE_READY_TIMEOUT" node_ready || rc=$?
  if ((rc != 0)); then
    tail -n 30 "$NODE/kubelet.log" >&2
    do_stop "$dir"
    ((rc == 1)) && die "kubelet exited during startup (log: $NODE/kubelet.log)"
    die "node $NODE_NAME was not Ready within ${NODE_READY_TIMEOUT}s (log: $NODE/kubelet.log)"
  fi
  log "node $NODE_NAME Ready after $((SECONDS - t0))s (pods reach the host at $NODE_GATEWAY)"
  {
    printf '%s=%q\n' NODE_NAME "$NODE_NAME" CONTAINERD_SOCK "$SOCK" KUBELET_LOG "$NODE/kubelet.log" \
      CONTAINERD_LOG "$NODE/containerd.log"
    print_env
  } >"$NODE/env"
}

# import DIR ARCHIVE: an OCI image archive into the node's containerd (pods use it with
# imagePullPolicy IfNotPresent or Never).
do_import() {
  local dir=$1 archive=$2
  kube_env "$dir"
  containerd_up || die "no node runs for the dev cluster in $dir"
  ctr_node images import "$archive" >/dev/null || die "ctr could not import $archive"
}

do_stop() {
  local dir=$1
  [[ -d $dir/node ]] || return 0
  kube_env "$dir"
  local pid t0=$SECONDS
  # kubelet first, so that it starts nothing new; then every container it left, through
  # containerd. Their network namespaces live under NODE (unmounted below), so the pods' veths
  # go with them, and the address leases with NODE.
  pid=$(cat "$NODE/kubelet.pid" 2>/dev/null || true)
  [[ -z $pid ]] || stop_pid "$pid" kubelet "$STOP_TIMEOUT" "$KUBELET_BIN" || true
  rm -f "$NODE/kubelet.pid"
  # Whatever kubelet left running goes with containerd's help, then containerd itself.
  if containerd_up; then
    local task
    for task in $(ctr_node tasks ls -q 2>/dev/null); do
      ctr_node tasks kill -s SIGKILL "$task" >/dev/null 2>&1 || true
      ctr_node tasks delete -f "$task" >/dev/null 2>&1 || true
    done
  fi
  pid=$(cat "$NODE/containerd.pid" 2>/dev/null || true)
  [[ -z $pid ]] || stop_pid "$pid" containerd "$STOP_TIMEOUT" || true
  rm -f "$NODE/containerd.pid"
  # containerd's shims run on their own; ours name our socket.
  for pid in $(pgrep -f "containerd-shim-runc-v2 .*-address $SOCK" || true); do
    kill -KILL "$pid" 2>/dev/null || true
  done
  # Mounts under NODE (secrets, root filesystems, network namespaces), deepest first.
  local mnt
  for mnt in $(findmnt -rn -o TARGET | awk -v p="$NODE/" 'index($0, p) == 1' | sort -r); do
    umount "$mnt" 2>/dev/null || umount -l "$mnt" 2>/dev/null || log "could not unmount $mnt"
  done
  ip link show "$NODE_BRIDGE" >/dev/null 2>&1 && ip link delete "$NODE_BRIDGE"
  nat_rule "$dir"
  while iptables -t nat -C "${NAT_RULE[@]}" 2>/dev/null; do iptables -t nat -D "${NAT_RULE[@]}"; done
  # kubelet's cgroups, deepest first (empty once the pods are gone).
  find /sys/fs/cgroup/*/tether-dev -depth -type d -exec rmdir {} + 2>/dev/null || true
  if [[ -f $NODE/sysctls ]]; then
    local kv
    while read -r kv; do sysctl -q -w "$kv" >/dev/null || log "could not restore $kv"; done <"$NODE/sysctls"
    rm -f "$NODE/sysctls"
  fi
  [[ $(cat "$LOCK" 2>/dev/null) == "$dir" ]] && rm -f "$LOCK"
  log "stopped the node of $dir in $((SECONDS - t0))s"
}

main() {
  (($# >= 1)) || usage
  local cmd=$1
  shift
  case $cmd in
    --print-env) print_env ;;
    start) (($# == 1)) || usage; do_start "$(cd "$1" && pwd)" ;;
    stop) (($# == 1)) || usage; [[ -d $1 ]] || exit 0; do_stop "$(cd "$1" && pwd)" ;;
    import) (($# == 2)) || usage; do_import "$(cd "$1" && pwd)" "$2" ;;
    -h | --help | help) usage ;;
    *) log "unknown command: $cmd"; usage ;;
  esac
}

main "$@"
