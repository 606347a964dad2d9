#!/usr/bin/env bash
# kube-build.sh: build (once) and cache the real Kubernetes binaries that dev-cluster.sh runs:
# kube-apiserver, kube-controller-manager, kube-scheduler and kubelet v1.20.2, etcd, and the
# pod sandbox ("pause") program. The one place for their versions and where they are cached.
#
#   scripts/kube-build.sh              build unless the cache is valid, then print where the
#                                      binaries are (KEY=VALUE lines, as --print-env)
#   scripts/kube-build.sh --check      exit 0 if the cache is valid, 1 if not (builds nothing)
#   scripts/kube-build.sh --print-env  print KUBE_VERSION, KUBE_CACHE_DIR and one NAME_BIN per
#                                      binary (KUBE_APISERVER_BIN, KUBELET_BIN, ..., ETCD_BIN,
#                                      PAUSE_BIN), quoted for the shell (eval or source them);
#                                      builds and checks nothing
#
# Where the binaries come from (see docs/design.md): Debian bookworm's `kubernetes` source package
# ships the full v1.20.2 tree with vendor/, so the Kubernetes commands build offline with
# bookworm's Go 1.19; etcd is bookworm's etcd-server. One vendored package is replaced: the tree's
# github.com/modern-go/reflect2 1.0.1 crashes on Go 1.18 and later (kube-apiserver died with
# "fatal error: fault" whenever it pretty-printed JSON, as it does for curl), so Debian's 1.0.2
# (golang-github-modern-go-reflect2-dev) is put in its place. The pause program is the tree's own
# build/pause/linux/pause.c, compiled static with the machine's gcc. All downloads go through
# apt, using the Debian sources this machine is already configured with (no host name lives in
# this script). The build needs about 2.5 GB of scratch disk and 10-13 minutes on 2 idle cores;
# only the binaries (about 250 MB) are kept, in ${TETHER_CACHE:-$HOME/.cache/tether}/kube-1.20.2/.
# Concurrent runs take turns on a lock: the second waits and then finds the cache filled.
#
# Environment knobs:
#   TETHER_CACHE       cache root (default $HOME/.cache/tether)
#   TETHER_BUILD_TMP   where the temporary build tree goes (default: the cache root)

set -euo pipefail
# shellcheck source=scripts/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

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
# What `go build ./cmd/NAME` makes from the source tree, each installed as CACHE_DIR/NAME and
# checked with `NAME --version`. Adding a component (kubelet, kube-scheduler, ...) is adding
# its name here: the cache is then invalid until it is built too.
KUBE_COMMANDS=(kube-apiserver kube-controller-manager kube-scheduler kubelet)
# What the cache was built by: a cache from an older recipe is built again. 2: reflect2 1.0.2,
# the node's commands and pause.
RECIPE=2
REFLECT2_PACKAGE=golang-github-modern-go-reflect2-dev

CACHE_ROOT=${TETHER_CACHE:-${HOME:?HOME is not set; set TETHER_CACHE}/.cache/tether}
CACHE_DIR=$CACHE_ROOT/kube-${KUBE_VERSION#v}
ETCD_BIN=$CACHE_DIR/etcd
PAUSE_BIN=$CACHE_DIR/pause

# bin_var NAME: the variable --print-env names NAME's path with (kube-apiserver -> KUBE_APISERVER_BIN).
bin_var() { local v=${1^^}; printf '%s_BIN' "${v//-/_}"; }

# print_env: where the binaries are, as KEY=VALUE lines a shell can eval or source.
print_env() {
  local c
  printf 'KUBE_VERSION=%q\n' "$KUBE_VERSION"
  printf 'KUBE_CACHE_DIR=%q\n' "$CACHE_DIR"
  for c in "${KUBE_COMMANDS[@]}"; do printf '%s=%q\n' "$(bin_var "$c")" "$CACHE_DIR/$c"; done
  printf 'ETCD_BIN=%q\n' "$ETCD_BIN"
  printf 'PAUSE_BIN=%q\n' "$PAUSE_BIN"
}

usage() {
  cat >&2 <<USAGE
usage: $PROG [--check | --print-env]

builds ${KUBE_COMMANDS[*]} $KUBE_VERSION and fetches etcd once, into $CACHE_DIR
USAGE
  exit 2
}

# ----------------------------------------------------------------------------------------------
# build: make sure the cached binaries exist
# ----------------------------------------------------------------------------------------------
# cache_ok: every binary is in the cache and answers --version as expected. A half-written or
# foreign binary must not pass.
cache_ok() {
  local c
  [[ $(cat "$CACHE_DIR/RECIPE" 2>/dev/null) == "$RECIPE" ]] || return 1
  [[ -x $PAUSE_BIN ]] || return 1
  for c in "${KUBE_COMMANDS[@]}"; do
    [[ -x $CACHE_DIR/$c ]] || return 1
    [[ $("$CACHE_DIR/$c" --version 2>/dev/null) == "Kubernetes $KUBE_VERSION" ]] || return 1
  done
  [[ -x $ETCD_BIN ]] && "$ETCD_BIN" --version >/dev/null 2>&1
}

# kube_names: the commands' names for messages ("kube-apiserver", "a and b", "a, b and c").
kube_names() {
  local n=${#KUBE_COMMANDS[@]} i out=${KUBE_COMMANDS[0]}
  for ((i = 1; i < n; i++)); do
    if ((i == n - 1)); then out+=" and ${KUBE_COMMANDS[i]}"; else out+=", ${KUBE_COMMANDS[i]}"; fi
  done
  printf '%s' "$out"
}

BUILD_START=0
BUILD_STEP_TOTAL=8
# step N TEXT: a progress line with the time since the build began, so a user sees where it is.
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

# do_build: unless the cache is valid, build into a scratch tree (removed however we leave),
# holding the lock, and install the binaries into the cache.
do_build() {
  if cache_ok; then
    local listed
    listed=$(printf '%s, ' "${KUBE_COMMANDS[@]/#/$CACHE_DIR/}")
    log "cached binaries present: ${listed%, } ($KUBE_VERSION), $ETCD_BIN"
    return 0
  fi
  need_cmds apt-get apt-cache dpkg dpkg-source make awk flock tar gcc

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
    die "building $(kube_names) needs about 3 GB of free disk in $build_parent (found $((avail_kb / 1024)) MB). Free some space or set TETHER_BUILD_TMP to a directory on a larger filesystem."
  fi

  BUILD_DIR=$(mktemp -d "$build_parent/build-kube-${KUBE_VERSION#v}.XXXXXX")
  # The build tree is about 2.3 GB: remove it however we leave (success, error, Ctrl-C).
  trap 'rm -rf "${BUILD_DIR:?}"' EXIT
  trap 'exit 130' INT TERM
  BUILD_START=$SECONDS
  log "building $(kube_names) $KUBE_VERSION from Debian's '$DEB_SRC_PACKAGE' source package (one time, about 5 minutes on 2 cores; scratch dir $BUILD_DIR)"

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
  local -a debs=("golang-$GO_SERIES-go" "golang-$GO_SERIES-src" "$ETCD_PACKAGE" "$REFLECT2_PACKAGE")
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

  # The vendored reflect2 1.0.1 reads map internals the way Go 1.17 laid them out; 1.0.2 knows
  # Go 1.18's. Same import path, so the tree compiles against it unchanged.
  local REFLECT2=vendor/github.com/modern-go/reflect2
  [[ -d $SRC/$REFLECT2 && -f $ROOT/usr/share/gocode/src/github.com/modern-go/reflect2/reflect2.go ]] ||
    die "cannot replace $REFLECT2: the source tree or $REFLECT2_PACKAGE did not unpack as expected"
  rm -rf "${SRC:?}/$REFLECT2"
  cp -r "$ROOT/usr/share/gocode/src/github.com/modern-go/reflect2" "$SRC/$REFLECT2"
  rm -f "$SRC/$REFLECT2/go.mod" "$SRC/$REFLECT2"/*_test.go

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
  step 6 "compiling $(kube_names) (go build, about 9-12 minutes on 2 cores)"
  # One go build per command, sharing GOCACHE, so a later command reuses the packages compiled
  # for an earlier one. cd through the GOPATH symlink: in GOPATH mode the package path comes
  # from the directory.
  local c
  for c in "${KUBE_COMMANDS[@]}"; do
    ((${#KUBE_COMMANDS[@]} == 1)) || log "  go build ./cmd/$c"
    (cd "$GOPATH_DIR/src/k8s.io/kubernetes" && run_logged "$BUILD_DIR/go-build-$c.log" \
      env "${GOENV_VARS[@]}" go build -trimpath -tags selinux,notest -ldflags "$ldflags" \
      -o "$BUILD_DIR/out/$c" "./cmd/$c")
  done
  log "  gcc -static build/pause/linux/pause.c"
  run_logged "$BUILD_DIR/pause.log" gcc -Os -static -Wall -Werror -DVERSION=v3.4.1 \
    -o "$BUILD_DIR/out/pause" "$SRC/build/pause/linux/pause.c"

  # -- install into the cache (step 7), clean up (step 8) --
  step 7 "installing $(kube_names) and etcd into $CACHE_DIR"
  local got
  for c in "${KUBE_COMMANDS[@]}"; do
    got=$("$BUILD_DIR/out/$c" --version 2>&1 || true)
    [[ $got == "Kubernetes $KUBE_VERSION" ]] ||
      die "the built $c reports '$got', expected 'Kubernetes $KUBE_VERSION' (version stamping failed)"
  done
  mkdir -p "$CACHE_DIR"
  # Copy under a temporary name, then rename: a binary in the cache is always complete.
  cp "$ROOT/usr/bin/etcd" "$CACHE_DIR/.etcd.tmp" && mv -f "$CACHE_DIR/.etcd.tmp" "$ETCD_BIN"
  for c in "${KUBE_COMMANDS[@]}" pause; do
    cp "$BUILD_DIR/out/$c" "$CACHE_DIR/.$c.tmp" && mv -f "$CACHE_DIR/.$c.tmp" "$CACHE_DIR/$c"
  done
  echo "$RECIPE" >"$CACHE_DIR/RECIPE"
  {
    echo "$(kube_names) $KUBE_VERSION built $(date -u +%Y-%m-%dT%H:%M:%SZ) (compiled in $((SECONDS - BUILD_START))s)"
    echo "source package: $DEB_SRC_PACKAGE $DEB_SRC_VERSION"
    echo "go: $(env "${GOENV_VARS[@]}" go version)"
    echo "etcd: $ETCD_PACKAGE $(dpkg-deb -f "$DL"/${ETCD_PACKAGE}_*.deb Version)"
    echo "reflect2: $REFLECT2_PACKAGE $(dpkg-deb -f "$DL"/${REFLECT2_PACKAGE}_*.deb Version) (in place of the vendored 1.0.1)"
    echo "recipe: $RECIPE"
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
main() {
  if (($# == 0)); then
    do_build
    print_env
    return
  fi
  (($# == 1)) || usage
  case $1 in
    --check) cache_ok ;;
    --print-env) print_env ;;
    *) usage ;;
  esac
}

main "$@"
