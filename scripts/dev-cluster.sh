#!/usr/bin/env bash
# dev-cluster.sh: a real etcd + a real kube-apiserver v1.20.2 on loopback, for tether's
# end-to-end tests and demos.
#
#   scripts/dev-cluster.sh build        build (once) and cache kube-apiserver + etcd
#   scripts/dev-cluster.sh start DIR    build if needed, start etcd + kube-apiserver, write
#                                       DIR/{admin,agent}.kubeconfig, DIR/env, pid files, logs
#   scripts/dev-cluster.sh stop DIR     stop exactly the processes that `start DIR` started
#   scripts/dev-cluster.sh status DIR   say whether the cluster in DIR is running
#
# Where the binaries come from (see "Real components in tests" in DESIGN.md): Debian bookworm's
# `kubernetes` source package ships the full v1.20.2 tree with vendor/, so kube-apiserver builds
# offline with bookworm's Go 1.19; etcd is bookworm's etcd-server. All downloads go through apt,
# using the Debian sources this machine is already configured with (no host name lives in this
# script). The build needs about 2.3 GB of scratch disk and 5-6 minutes on 2 idle cores (8-9 when
# the machine is busy compiling other things); only the two binaries (about 126 MB) are kept, in
# ${TETHER_CACHE:-$HOME/.cache/tether}/kube-1.20.2/.
#
# Environment knobs:
#   TETHER_CACHE       cache root (default $HOME/.cache/tether)
#   TETHER_BUILD_TMP   where the temporary build tree goes (default: the cache root)
#   DEV_CLUSTER_READY_TIMEOUT  seconds to wait for /readyz (default 90)

set -euo pipefail

# ----------------------------------------------------------------------------------------------
# Constants
# ----------------------------------------------------------------------------------------------
KUBE_VERSION=v1.20.2
KUBE_MAJOR=1
KUBE_MINOR=20
# The upstream commit of v1.20.2 (the tarball's version/base.go carries it via export-subst).
KUBE_COMMIT=faecb196815e248d3ecfb03c680a4507229c2a56
DEB_SRC_PACKAGE=kubernetes
DEB_SRC_VERSION=1.20.5+really1.20.2-1.1+deb12u1
GO_SERIES=1.19                       # golang-1.19-go / golang-1.19-src
ETCD_PACKAGE=etcd-server

CACHE_ROOT=${TETHER_CACHE:-${HOME:?HOME is not set; set TETHER_CACHE}/.cache/tether}
CACHE_DIR=$CACHE_ROOT/kube-${KUBE_VERSION#v}
KUBE_APISERVER_BIN=$CACHE_DIR/kube-apiserver
ETCD_BIN=$CACHE_DIR/etcd

READY_TIMEOUT=${DEV_CLUSTER_READY_TIMEOUT:-90}
ETCD_TIMEOUT=30
STOP_TIMEOUT=20

AGENT_USER=tether-agent
ADMIN_USER=tether-admin

PROG=${0##*/}

# ----------------------------------------------------------------------------------------------
# Small helpers
# ----------------------------------------------------------------------------------------------
log()  { printf '%s: %s\n' "$PROG" "$*" >&2; }
die()  { printf '%s: error: %s\n' "$PROG" "$*" >&2; exit 1; }

usage() {
  cat >&2 <<EOF
usage: $PROG build
       $PROG start DIR
       $PROG stop DIR
       $PROG status DIR

build   builds kube-apiserver $KUBE_VERSION and fetches etcd once, into $CACHE_DIR
start   starts etcd + kube-apiserver on 127.0.0.1 (free ports), writes kubeconfigs and DIR/env
stop    stops the processes recorded in DIR (idempotent)
EOF
  exit 2
}

need_cmds() {
  local missing=() c
  for c in "$@"; do command -v "$c" >/dev/null 2>&1 || missing+=("$c"); done
  if ((${#missing[@]})); then
    die "missing command(s): ${missing[*]}. Install them and try again (on Debian: dpkg-source is in dpkg-dev; flock and setsid in util-linux; kubectl is the project's kubectl dispatcher)."
  fi
}

# True if PID is alive and its executable is BIN (guards against PID reuse after a reboot or a
# long time: we never signal a process that is not the binary we started).
pid_is() {
  local pid=$1 bin=$2 exe
  [[ $pid =~ ^[0-9]+$ ]] || return 1
  kill -0 "$pid" 2>/dev/null || return 1
  exe=$(readlink "/proc/$pid/exe" 2>/dev/null) || return 1
  exe=${exe% (deleted)}
  [[ $exe == "$bin" ]]
}

# ----------------------------------------------------------------------------------------------
# build: make sure the cached binaries exist
# ----------------------------------------------------------------------------------------------
cache_ok() {
  [[ -x $KUBE_APISERVER_BIN && -x $ETCD_BIN ]] || return 1
  # A half-written or foreign binary must not pass: ask it for its version.
  [[ $("$KUBE_APISERVER_BIN" --version 2>/dev/null) == "Kubernetes $KUBE_VERSION" ]] || return 1
  "$ETCD_BIN" --version >/dev/null 2>&1
}

BUILD_START=0
BUILD_STEP_TOTAL=8
step() {
  local n=$1; shift
  printf '%s: [build %d/%d, %3ds] %s\n' "$PROG" "$n" "$BUILD_STEP_TOTAL" \
    $((SECONDS - BUILD_START)) "$*" >&2
}

# run_logged LOG CMD...: run CMD with its output in LOG, print a heartbeat every 20 s so a user
# waiting for the 4-minute compile sees it moving, and show the log's tail if it fails.
# CMD runs in the foreground (Ctrl-C reaches it); the heartbeat is a background loop that
# sleeps in 1 s slices and stops by itself if this script is gone.
run_logged() {
  local logf=$1; shift
  local rc=0 hb parent=$$
  (
    t=0
    while sleep 1 && kill -0 "$parent" 2>/dev/null; do
      t=$((t + 1))
      ((t % 20 == 0)) && printf '%s:     ... still working (%ds in this step)\n' "$PROG" "$t" >&2
    done
  ) 9>&- &
  hb=$!
  "$@" >"$logf" 2>&1 || rc=$?
  kill "$hb" 2>/dev/null || true
  wait "$hb" 2>/dev/null || true
  if ((rc != 0)); then
    log "command failed (exit $rc): $*"
    log "last lines of its log ($logf):"
    tail -n 40 "$logf" >&2 || true
    # The build tree is removed on exit; keep the log next to the cache for a post-mortem.
    mkdir -p "$CACHE_ROOT" && cp "$logf" "$CACHE_ROOT/build-failed.log" 2>/dev/null &&
      log "full log kept at $CACHE_ROOT/build-failed.log"
  fi
  return "$rc"
}

# Write a sources file for a private apt configuration, derived from this machine's own apt
# sources: keep the entries whose suite is this Debian release (e.g. bookworm,
# bookworm-updates, bookworm-security) and enable deb-src on them. Third-party repositories
# (other suites) are dropped. No mirror host name is ever written in this script.
write_private_sources() {
  local out_dir=$1 codename=$2 f base found=0
  mkdir -p "$out_dir"
  # deb822 files (*.sources)
  for f in /etc/apt/sources.list.d/*.sources; do
    [[ -f $f ]] || continue
    base=${f##*/}
    awk -v cn="$codename" '
      function flush(  i) {
        if (n > 0 && keep && enabled) { for (i = 1; i <= n; i++) print lines[i]; print "" }
        n = 0; keep = 0; enabled = 1
      }
      BEGIN { n = 0; keep = 0; enabled = 1 }
      /^[ \t]*$/ { flush(); next }
      /^#/      { next }
      {
        line = $0; key = tolower($1)
        if (key == "types:") line = "Types: deb deb-src"
        if (key == "suites:") for (i = 2; i <= NF; i++) if ($i == cn || index($i, cn "-") == 1) keep = 1
        if (key == "enabled:" && tolower($2) == "no") enabled = 0
        lines[++n] = line
      }
      END { flush() }' "$f" >"$out_dir/$base"
    if [[ -s $out_dir/$base ]]; then found=1; else rm -f "$out_dir/$base"; fi
  done
  # one-line files (sources.list, *.list)
  for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
    [[ -f $f ]] || continue
    base=${f##*/}; [[ $base == *.list ]] || base=$base.list
    awk -v cn="$codename" '
      /^[ \t]*deb[ \t]/ {
        rest = $0; sub(/^[ \t]*deb[ \t]+/, "", rest)
        r = rest; if (r ~ /^\[/) sub(/^\[[^]]*\][ \t]*/, "", r)   # skip [ options ]
        split(r, a, /[ \t]+/)
        if (a[2] == cn || index(a[2], cn "-") == 1) { print "deb " rest; print "deb-src " rest }
      }' "$f" >"$out_dir/$base"
    if [[ -s $out_dir/$base ]]; then found=1; else rm -f "$out_dir/$base"; fi
  done
  ((found)) || die "found no Debian '$codename' entries in /etc/apt/sources.list or /etc/apt/sources.list.d/; this recipe needs this machine's Debian bookworm apt sources."
}

do_build() {
  if cache_ok; then
    log "cached binaries present: $KUBE_APISERVER_BIN ($KUBE_VERSION), $ETCD_BIN"
    return 0
  fi
  need_cmds apt-get apt-cache dpkg dpkg-source make awk flock tar

  mkdir -p "$CACHE_ROOT"
  # Serialize concurrent builds (e.g. several test processes starting at once): the second one
  # waits here and then finds the cache filled.
  exec 9>"$CACHE_ROOT/kube-${KUBE_VERSION#v}.lock"
  if ! flock -n 9; then
    log "another build is running (lock $CACHE_ROOT/kube-${KUBE_VERSION#v}.lock); waiting for it..."
    flock 9
  fi
  if cache_ok; then
    exec 9>&-
    log "cached binaries present (built by another process)"
    return 0
  fi

  local codename
  # shellcheck disable=SC1091
  codename=$(. /etc/os-release && echo "${VERSION_CODENAME:-}")
  [[ -n $codename ]] || die "cannot read VERSION_CODENAME from /etc/os-release; this recipe needs Debian bookworm."

  local build_parent=${TETHER_BUILD_TMP:-$CACHE_ROOT}
  mkdir -p "$build_parent"
  local avail_kb
  avail_kb=$(df -Pk "$build_parent" | awk 'NR == 2 { print $4 }')
  if ((avail_kb < 3 * 1024 * 1024)); then
    die "building kube-apiserver needs about 3 GB of free disk in $build_parent (found $((avail_kb / 1024)) MB). Free some space or set TETHER_BUILD_TMP to a directory on a larger filesystem."
  fi

  BUILD_DIR=$(mktemp -d "$build_parent/build-kube-${KUBE_VERSION#v}.XXXXXX")
  # The build tree is about 2.3 GB: remove it however we leave (success, error, Ctrl-C).
  trap 'rm -rf "${BUILD_DIR:?}"' EXIT
  trap 'exit 130' INT TERM
  BUILD_START=$SECONDS
  log "building kube-apiserver $KUBE_VERSION from Debian's '$DEB_SRC_PACKAGE' source package (one time, about 5 minutes on 2 cores; scratch dir $BUILD_DIR)"

  # -- private apt configuration (steps 1-2) --
  # Only the source list, index and download directories are private; the machine's apt.conf.d
  # (proxies, keyrings, check-valid-until for snapshot mirrors) still applies. Nothing is
  # installed system-wide.
  step 1 "preparing a private apt configuration (deb + deb-src from this machine's Debian sources, suite $codename)"
  local A=$BUILD_DIR/apt
  mkdir -p "$A/lists/partial" "$A/cache/archives/partial"
  write_private_sources "$A/sources.list.d" "$codename"
  local -a APT_OPTS=(
    -o "Dir::Etc::SourceList=/dev/null"
    -o "Dir::Etc::SourceParts=$A/sources.list.d"
    -o "Dir::State::Lists=$A/lists"
    -o "Dir::Cache=$A/cache"
    -o "Dir::Cache::pkgcache=" -o "Dir::Cache::srcpkgcache="
    -o "Acquire::Languages=none"
    # apt drops to the _apt user for downloads, who cannot write into our private dirs.
    -o "APT::Sandbox::User=$(id -un)"
  )
  step 2 "apt-get update (private lists)"
  run_logged "$BUILD_DIR/apt-update.log" apt-get "${APT_OPTS[@]}" update
  if ! apt-cache "${APT_OPTS[@]}" showsrc "$DEB_SRC_PACKAGE" 2>/dev/null |
    grep -qx "Version: $DEB_SRC_VERSION"; then
    die "the Debian sources on this machine do not offer source package $DEB_SRC_PACKAGE=$DEB_SRC_VERSION (it is in bookworm / bookworm-security). Check /etc/apt/sources.list.d/ lists Debian bookworm and bookworm-security."
  fi

  # -- downloads (step 3) --
  local DL=$BUILD_DIR/dl ROOT=$BUILD_DIR/root
  mkdir -p "$DL" "$ROOT"
  local -a debs=("golang-$GO_SERIES-go" "golang-$GO_SERIES-src" "$ETCD_PACKAGE")
  # make gen_openapi copies the generator with rsync. If the machine has none, unpack Debian's
  # rsync (and libpopt0, the one library it needs that a minimal system lacks) next to the
  # toolchain instead of installing it.
  local need_rsync=0
  command -v rsync >/dev/null 2>&1 || { need_rsync=1; debs+=(rsync libpopt0); }
  step 3 "downloading source $DEB_SRC_PACKAGE=$DEB_SRC_VERSION and ${debs[*]} (about 125 MB)"
  (cd "$DL" && run_logged "$BUILD_DIR/apt-source.log" \
    apt-get "${APT_OPTS[@]}" source --download-only "$DEB_SRC_PACKAGE=$DEB_SRC_VERSION")
  (cd "$DL" && run_logged "$BUILD_DIR/apt-download.log" apt-get "${APT_OPTS[@]}" download "${debs[@]}")

  # -- unpack (step 4) --
  step 4 "unpacking the source tree (with Debian's patches) and the Go $GO_SERIES toolchain"
  local SRC=$BUILD_DIR/kubernetes
  run_logged "$BUILD_DIR/unpack.log" dpkg-source -x "$DL/${DEB_SRC_PACKAGE}_${DEB_SRC_VERSION}.dsc" "$SRC"
  local d
  for d in "$DL"/*.deb; do dpkg -x "$d" "$ROOT"; done

  local GOROOT_DIR=$ROOT/usr/lib/go-$GO_SERIES
  [[ -x $GOROOT_DIR/bin/go ]] || die "the golang-$GO_SERIES-go package did not unpack a go binary at $GOROOT_DIR/bin/go"
  local TOOLS=$BUILD_DIR/tools
  mkdir -p "$TOOLS"
  if ((need_rsync)); then
    cat >"$TOOLS/rsync" <<EOF
#!/bin/sh
LD_LIBRARY_PATH='$ROOT/usr/lib/x86_64-linux-gnu:$ROOT/lib/x86_64-linux-gnu'\${LD_LIBRARY_PATH:+:\$LD_LIBRARY_PATH} exec '$ROOT/usr/bin/rsync' "\$@"
EOF
    chmod +x "$TOOLS/rsync"
    "$TOOLS/rsync" --version >/dev/null 2>&1 ||
      die "the unpacked rsync does not run here (missing libraries?). Install rsync (apt-get install rsync) and try again."
  fi

  # Go environment: GOPATH mode (the 1.20 tree builds from vendor/ that way), no module proxy,
  # no network, static binary, caches inside the build tree (so they are removed with it) and
  # GOENV=off so a user's `go env -w` settings cannot interfere.
  local GOPATH_DIR=$BUILD_DIR/gopath
  mkdir -p "$GOPATH_DIR/src/k8s.io"
  ln -s "$SRC" "$GOPATH_DIR/src/k8s.io/kubernetes"
  local -a GOENV_VARS=(
    "PATH=$TOOLS:$GOROOT_DIR/bin:$PATH"
    "GOROOT=$GOROOT_DIR" "GOPATH=$GOPATH_DIR" "GOCACHE=$BUILD_DIR/gocache"
    "GOENV=off" "GOFLAGS=" "GO111MODULE=off" "GOPROXY=off" "GOSUMDB=off" "CGO_ENABLED=0"
    "HOME=$BUILD_DIR/home"
  )
  mkdir -p "$BUILD_DIR/home"

  # -- code generation (step 5) --
  # zz_generated.openapi.go is not in the tarball; kube-apiserver does not compile without it.
  step 5 "generating OpenAPI definitions (make gen_openapi, about 30 s)"
  (cd "$SRC" && run_logged "$BUILD_DIR/gen-openapi.log" env "${GOENV_VARS[@]}" make gen_openapi)

  # -- compile (step 6) --
  # -X stamps the version into both version packages (the vendored import paths, as the
  # upstream hack/lib/version.sh does); without it /version reports v0.0.0. Tags and -s -w as
  # in upstream's build (selinux,notest; stripped).
  local ldflags="-s -w -buildid=" pkg kv build_date
  build_date=$(date -u +%Y-%m-%dT%H:%M:%SZ)
  for pkg in client-go/pkg/version component-base/version; do
    for kv in "gitVersion=$KUBE_VERSION" "gitMajor=$KUBE_MAJOR" "gitMinor=$KUBE_MINOR" \
      "gitCommit=$KUBE_COMMIT" "gitTreeState=clean" "buildDate=$build_date"; do
      ldflags+=" -X k8s.io/kubernetes/vendor/k8s.io/$pkg.$kv"
    done
  done
  step 6 "compiling kube-apiserver (go build, about 4-7 minutes on 2 cores)"
  # cd through the GOPATH symlink: in GOPATH mode the package path comes from the directory.
  (cd "$GOPATH_DIR/src/k8s.io/kubernetes" && run_logged "$BUILD_DIR/go-build.log" \
    env "${GOENV_VARS[@]}" go build -trimpath -tags selinux,notest -ldflags "$ldflags" \
    -o "$BUILD_DIR/out/kube-apiserver" ./cmd/kube-apiserver)

  # -- install into the cache (step 7), clean up (step 8) --
  step 7 "installing kube-apiserver and etcd into $CACHE_DIR"
  local got
  got=$("$BUILD_DIR/out/kube-apiserver" --version 2>&1 || true)
  [[ $got == "Kubernetes $KUBE_VERSION" ]] ||
    die "the built kube-apiserver reports '$got', expected 'Kubernetes $KUBE_VERSION' (version stamping failed)"
  mkdir -p "$CACHE_DIR"
  # Copy under a temporary name, then rename: a binary in the cache is always complete.
  cp "$ROOT/usr/bin/etcd" "$CACHE_DIR/.etcd.tmp" && mv -f "$CACHE_DIR/.etcd.tmp" "$ETCD_BIN"
  cp "$BUILD_DIR/out/kube-apiserver" "$CACHE_DIR/.kube-apiserver.tmp" &&
    mv -f "$CACHE_DIR/.kube-apiserver.tmp" "$KUBE_APISERVER_BIN"
  {
    echo "kube-apiserver $KUBE_VERSION built $(date -u +%Y-%m-%dT%H:%M:%SZ) (compiled in $((SECONDS - BUILD_START))s)"
    echo "source package: $DEB_SRC_PACKAGE $DEB_SRC_VERSION"
    echo "go: $(env "${GOENV_VARS[@]}" go version)"
    echo "etcd: $ETCD_PACKAGE $(dpkg-deb -f "$DL"/${ETCD_PACKAGE}_*.deb Version)"
  } >"$CACHE_DIR/BUILD-INFO"

  # Removing ~2.3 GB in ~100k files can take a minute or more on a busy disk: say so.
  step 8 "removing the build tree (about 2.3 GB)"
  rm -rf "${BUILD_DIR:?}"
  trap - EXIT INT TERM
  exec 9>&-
  cache_ok || die "the cache at $CACHE_DIR does not validate after the build"
  log "done in $((SECONDS - BUILD_START))s; cached $(du -sh "$CACHE_DIR" | cut -f1) in $CACHE_DIR (build tree removed)"
}

# ----------------------------------------------------------------------------------------------
# start / stop / status
# ----------------------------------------------------------------------------------------------

# Prints three distinct free TCP ports on 127.0.0.1. The kernel picks them (bind to port 0);
# all sockets stay open until all are chosen so the three differ.
free_ports() {
  if command -v python3 >/dev/null 2>&1; then
    python3 - <<'EOF'
import socket
socks = []
for _ in range(3):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.bind(("127.0.0.1", 0))
    socks.append(s)
print(" ".join(str(s.getsockname()[1]) for s in socks))
EOF
  else
    # Fallback: random ports in the ephemeral range that nothing listens on.
    local lo hi ports=() p
    read -r lo hi </proc/sys/net/ipv4/ip_local_port_range
    while ((${#ports[@]} < 3)); do
      p=$((lo + (RANDOM * 32768 + RANDOM) % (hi - lo)))
      [[ " ${ports[*]} " == *" $p "* ]] && continue
      (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null && continue
      ports+=("$p")
    done
    echo "${ports[*]}"
  fi
}

# Runs the machine's kubectl with a private HOME and cache (the installed kubectl is a
# dispatcher that caches per HOME/KUBECACHEDIR) so the user's ~/.kube is never touched.
kubectl_dev() {
  local dir=$1; shift
  mkdir -p "$dir/.kube-home" "$dir/.kube-cache"
  HOME="$dir/.kube-home" KUBECACHEDIR="$dir/.kube-cache" KUBECONFIG="$dir/admin.kubeconfig" \
    kubectl "$@"
}

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

tail_logs() {
  local dir=$1 f
  for f in "$dir/etcd.log" "$dir/apiserver.log"; do
    [[ -f $f ]] || continue
    log "---- last lines of $f ----"
    tail -n 25 "$f" >&2 || true
  done
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

# stop_pidfile DIR NAME BIN: SIGTERM the process in DIR/NAME.pid if it is BIN, wait, then
# SIGKILL if it did not exit within STOP_TIMEOUT seconds.
stop_pidfile() {
  local dir=$1 name=$2 bin=$3 pid i
  local pf=$dir/$name.pid
  [[ -f $pf ]] || return 0
  pid=$(cat "$pf" 2>/dev/null || true)
  if pid_is "$pid" "$bin"; then
    log "stopping $name (pid $pid)"
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < STOP_TIMEOUT * 10; i++)); do
      pid_is "$pid" "$bin" || break
      sleep 0.1
    done
    if pid_is "$pid" "$bin"; then
      log "$name (pid $pid) did not exit within ${STOP_TIMEOUT}s; sending SIGKILL"
      kill -KILL "$pid" 2>/dev/null || true
      for ((i = 0; i < 50; i++)); do pid_is "$pid" "$bin" || break; sleep 0.1; done
      pid_is "$pid" "$bin" && die "$name (pid $pid) survived SIGKILL"
    fi
  fi
  # The daemons were reparented to PID 1 (they run in their own session), so after they exit
  # they stay zombies until init reaps them. Give it a moment so that a caller's `kill -0 PID`
  # right after `stop` sees them gone (best effort: a zombie holds no ports or files).
  for ((i = 0; i < 30; i++)); do [[ -e /proc/$pid ]] || break; sleep 0.1; done
  rm -f "$pf"
}

do_stop() {
  local dir=$1
  if [[ ! -d $dir ]]; then
    log "nothing to stop: $dir does not exist"
    return 0
  fi
  dir=$(cd "$dir" && pwd)
  if [[ ! -f $dir/apiserver.pid && ! -f $dir/etcd.pid ]]; then
    log "nothing running in $dir"
    return 0
  fi
  # kube-apiserver first, so it does not spin on a vanished etcd.
  stop_pidfile "$dir" apiserver "$KUBE_APISERVER_BIN"
  stop_pidfile "$dir" etcd "$ETCD_BIN"
  log "stopped the dev cluster in $dir"
}

do_status() {
  local dir=$1 rc=0
  [[ -d $dir ]] || { echo "not running ($dir does not exist)"; return 3; }
  dir=$(cd "$dir" && pwd)
  cluster_state "$dir" || rc=$?
  case $rc in
    0) echo "running: $(grep -E '^APISERVER_URL=' "$dir/env" 2>/dev/null | cut -d= -f2-) (etcd pid $(cat "$dir/etcd.pid"), kube-apiserver pid $(cat "$dir/apiserver.pid"))" ;;
    1) echo "not running"; return 3 ;;
    *) echo "partly running (one of etcd / kube-apiserver is gone); run: $PROG stop $dir"; return 1 ;;
  esac
}

# start_daemon DIR NAME LOG BIN ARGS...: start BIN detached (own session, stdin from /dev/null,
# output to LOG, lock fd closed) so it outlives this script and does not hold a caller's pipe
# open. Writes DIR/NAME.pid.
start_daemon() {
  local dir=$1 name=$2 logf=$3; shift 3
  # In a non-interactive bash the background child is not a process-group leader, so setsid
  # calls setsid() and execs in place: $! is the daemon's own PID (pid_is checks that below).
  setsid "$@" </dev/null >>"$logf" 2>&1 9>&- &
  echo $! >"$dir/$name.pid"
}

# This cluster runs no kube-controller-manager. Two of its jobs matter to anyone using the
# cluster through tether, so they are done once here:
# - the clusterrole-aggregation controller fills the aggregated ClusterRoles (view, edit, admin)
#   from the roles their selectors match; without it, binding `view` grants nothing;
# - the serviceaccount controller creates the `default` ServiceAccount, without which the
#   ServiceAccount admission plugin refuses every pod in `default`.
stand_in_for_controller_manager() {
  local dir=$1 patches
  patches=$(kubectl_dev "$dir" get clusterroles -o json | python3 -c '
import json, sys
roles = json.load(sys.stdin)["items"]
def selected(role, selectors):
    labels = role["metadata"].get("labels") or {}
    return any(all(labels.get(k) == v for k, v in (s.get("matchLabels") or {}).items()) for s in selectors)
changed = {}
for _ in range(5):  # edit includes view, admin includes edit: repeat until nothing changes
    progress = False
    for role in roles:
        selectors = (role.get("aggregationRule") or {}).get("clusterRoleSelectors")
        if not selectors:
            continue
        rules = []
        for source in roles:
            if selected(source, selectors):
                rules += [r for r in source.get("rules") or [] if r not in rules]
        if rules != (role.get("rules") or []):
            role["rules"] = rules
            changed[role["metadata"]["name"]] = rules
            progress = True
    if not progress:
        break
for name, rules in changed.items():
    print(name + "\t" + json.dumps({"rules": rules}))
') || die "could not read the ClusterRoles to aggregate"
  local name patch
  while IFS=$'\t' read -r name patch; do
    [ -n "$name" ] || continue
    kubectl_dev "$dir" patch clusterrole "$name" --type=merge -p "$patch" >/dev/null ||
      die "could not fill the aggregated ClusterRole $name"
  done <<<"$patches"
  kubectl_dev "$dir" apply -f - >/dev/null <<EOF || die "could not create the default ServiceAccount"
apiVersion: v1
kind: ServiceAccount
metadata:
  name: default
  namespace: default
EOF
  log "aggregated ClusterRoles filled and default ServiceAccount created (no controller manager here)"
}

do_start() {
  local dir=$1
  need_cmds openssl curl setsid kubectl base64 awk
  mkdir -p "$dir"
  dir=$(cd "$dir" && pwd)

  local st=0
  cluster_state "$dir" || st=$?
  if ((st == 0)); then
    log "already running in $dir ($(grep -E '^APISERVER_URL=' "$dir/env" 2>/dev/null | cut -d= -f2-)); nothing to do"
    return 0
  elif ((st == 2)); then
    log "a previous cluster in $dir is only partly running; stopping what is left of it"
    do_stop "$dir"
  fi

  do_build

  # Fresh state on every start: etcd data, keys, tokens and logs of a stopped cluster are
  # discarded (only the files this script writes; nothing else in DIR is touched).
  rm -rf "$dir/etcd-data" "$dir/pki" "$dir/.kube-cache" "$dir/.kube-home"
  rm -f "$dir"/{etcd,apiserver}.{pid,log} "$dir"/{audit.log,audit-policy.yaml,tokens.csv,env} \
    "$dir"/{admin,agent}.kubeconfig
  mkdir -p "$dir/pki"
  chmod 700 "$dir/pki"

  local etcd_port etcd_peer_port api_port
  read -r etcd_port etcd_peer_port api_port < <(free_ports) || true
  [[ -n $api_port ]] || die "could not find free TCP ports on 127.0.0.1"
  local api_url=https://127.0.0.1:$api_port etcd_url=http://127.0.0.1:$etcd_port

  # -- keys and certificates --
  # A throw-away CA and a serving certificate for 127.0.0.1/localhost, so kubeconfigs carry a
  # real CA (no insecure-skip-tls-verify); and a service-account signing key.
  local P=$dir/pki
  (
    umask 077
    openssl req -x509 -newkey rsa:2048 -nodes -sha256 -days 3650 \
      -subj "/CN=tether-dev-ca" -keyout "$P/ca.key" -out "$P/ca.crt" \
      -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign"
    openssl req -newkey rsa:2048 -nodes -sha256 -subj "/CN=kube-apiserver" \
      -keyout "$P/apiserver.key" -out "$P/apiserver.csr"
    printf '%s\n' "subjectAltName=IP:127.0.0.1,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc" \
      "basicConstraints=critical,CA:FALSE" "keyUsage=critical,digitalSignature,keyEncipherment" \
      "extendedKeyUsage=serverAuth" >"$P/apiserver.ext"
    openssl x509 -req -sha256 -days 3650 -in "$P/apiserver.csr" -CA "$P/ca.crt" -CAkey "$P/ca.key" \
      -CAcreateserial -extfile "$P/apiserver.ext" -out "$P/apiserver.crt"
    openssl genrsa -out "$P/sa.key" 2048
    openssl rsa -in "$P/sa.key" -pubout -out "$P/sa.pub"
  ) >"$P/openssl.log" 2>&1 || { cat "$P/openssl.log" >&2; die "openssl failed to create the keys in $P"; }
  chmod 644 "$P/ca.crt"

  # -- tokens: only the admin and the agent; users arrive via impersonation --
  local admin_token agent_token
  admin_token=$(openssl rand -hex 32)
  agent_token=$(openssl rand -hex 32)
  (umask 077 && printf '%s\n' \
    "$admin_token,$ADMIN_USER,$ADMIN_USER,\"system:masters\"" \
    "$agent_token,$AGENT_USER,$AGENT_USER" >"$dir/tokens.csv")

  # -- audit policy: every request at Metadata level (who, impersonated whom, verb, URI, code) --
  cat >"$dir/audit-policy.yaml" <<'EOF'
apiVersion: audit.k8s.io/v1
kind: Policy
rules:
- level: Metadata
EOF

  # -- etcd --
  log "starting etcd on $etcd_url"
  start_daemon "$dir" etcd "$dir/etcd.log" "$ETCD_BIN" \
    --name tether-dev \
    --data-dir "$dir/etcd-data" \
    --listen-client-urls "$etcd_url" --advertise-client-urls "$etcd_url" \
    --listen-peer-urls "http://127.0.0.1:$etcd_peer_port" \
    --initial-advertise-peer-urls "http://127.0.0.1:$etcd_peer_port" \
    --initial-cluster "tether-dev=http://127.0.0.1:$etcd_peer_port" \
    --initial-cluster-state new \
    --logger zap --log-outputs stderr
  local etcd_pid deadline
  etcd_pid=$(cat "$dir/etcd.pid")
  deadline=$((SECONDS + ETCD_TIMEOUT))
  until curl -fsS --max-time 2 "$etcd_url/health" 2>/dev/null | grep -q '"health":"true"'; do
    if ! kill -0 "$etcd_pid" 2>/dev/null; then
      tail_logs "$dir"; rm -f "$dir/etcd.pid"
      die "etcd exited during startup (log: $dir/etcd.log). If a port was taken meanwhile, just run start again."
    fi
    if ((SECONDS > deadline)); then
      tail_logs "$dir"; do_stop "$dir"
      die "etcd did not become healthy within ${ETCD_TIMEOUT}s (log: $dir/etcd.log)"
    fi
    sleep 0.2
  done
  pid_is "$etcd_pid" "$ETCD_BIN" || { do_stop "$dir"; die "pid $etcd_pid is not $ETCD_BIN (was setsid run with job control?)"; }

  # -- kube-apiserver --
  log "starting kube-apiserver $KUBE_VERSION on $api_url"
  start_daemon "$dir" apiserver "$dir/apiserver.log" "$KUBE_APISERVER_BIN" \
    --etcd-servers="$etcd_url" \
    --bind-address=127.0.0.1 --advertise-address=127.0.0.1 \
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
    --profiling=false
  local api_pid
  api_pid=$(cat "$dir/apiserver.pid")
  deadline=$((SECONDS + READY_TIMEOUT))
  until curl -fsS --max-time 3 --cacert "$P/ca.crt" -H "Authorization: Bearer $admin_token" \
    "$api_url/readyz" 2>/dev/null | grep -qx ok; do
    if ! kill -0 "$api_pid" 2>/dev/null; then
      tail_logs "$dir"; do_stop "$dir"
      die "kube-apiserver exited during startup (log: $dir/apiserver.log)"
    fi
    if ((SECONDS > deadline)); then
      tail_logs "$dir"; do_stop "$dir"
      die "kube-apiserver did not become ready within ${READY_TIMEOUT}s (log: $dir/apiserver.log; raise DEV_CLUSTER_READY_TIMEOUT on a slow machine)"
    fi
    sleep 0.5
  done
  pid_is "$api_pid" "$KUBE_APISERVER_BIN" || { do_stop "$dir"; die "pid $api_pid is not $KUBE_APISERVER_BIN"; }
  log "kube-apiserver ready after $((SECONDS - deadline + READY_TIMEOUT))s"

  # -- kubeconfigs --
  local ca_b64
  ca_b64=$(base64 -w0 <"$P/ca.crt")
  write_kubeconfig "$dir/admin.kubeconfig" "$api_url" "$ca_b64" "$ADMIN_USER" "$admin_token"
  write_kubeconfig "$dir/agent.kubeconfig" "$api_url" "$ca_b64" "$AGENT_USER" "$agent_token"

  # -- the agent may impersonate users and groups, and nothing else --
  if ! kubectl_dev "$dir" apply -f - >"$dir/.rbac.log" 2>&1 <<EOF
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata:
  name: tether-agent-impersonator
rules:
- apiGroups: [""]
  resources: ["users", "groups"]
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

  # -- what kube-controller-manager would do, which this cluster does not run --
  # (in a subshell, so that its `die` comes back here and the cluster is stopped, not leaked)
  if ! (stand_in_for_controller_manager "$dir"); then
    do_stop "$dir"
    die "could not prepare RBAC roles and the default ServiceAccount (see above)"
  fi

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
        "AUDIT_LOG=$dir/audit.log" "APISERVER_LOG=$dir/apiserver.log" "ETCD_LOG=$dir/etcd.log" \
        "APISERVER_PID_FILE=$dir/apiserver.pid" "ETCD_PID_FILE=$dir/etcd.pid" \
        "KUBE_APISERVER_BIN=$KUBE_APISERVER_BIN" "ETCD_BIN=$ETCD_BIN"; do
        printf '%s=%q\n' "${kv%%=*}" "${kv#*=}"
      done
    } >"$dir/env"
  )

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
    build) (($# == 0)) || usage; do_build ;;
    start) (($# == 1)) || usage; do_start "$1" ;;
    stop) (($# == 1)) || usage; do_stop "$1" ;;
    status) (($# == 1)) || usage; do_status "$1" ;;
    -h | --help | help) usage ;;
    *) log "unknown command: $cmd"; usage ;;
  esac
}

main "$@"
