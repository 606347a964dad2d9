#!/usr/bin/env bash
# oidc-provider.sh: install (once) the OpenID Connect provider that the tests use as the hub's
# identity provider: scripts/oidc-provider/provider.mjs and its npm dependencies (oidc-provider,
# pinned by scripts/oidc-provider/package-lock.json), in a cache directory outside the repo.
#
#   scripts/oidc-provider.sh install   install node and npm if missing (apt-get, as root), then
#                                      `npm ci` into the cache directory unless it is already
#                                      there; prints the directory on stdout
#   scripts/oidc-provider.sh dir       print the cache directory if it is installed (exit 1 if
#                                      not); refreshes its copy of provider.mjs if the repo's
#                                      differs
#
# The cache directory is ${XDG_CACHE_HOME:-$HOME/.cache}/tether/oidc-provider-<the first 12 hex
# digits of package-lock.json's SHA-256>: a new lock file means a new directory, installed next to
# the old one. Run the provider there: `cd DIR && node provider.mjs` (its header says how to
# configure it). npm uses the registry npm is configured with; no host name lives here.

set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=scripts/lib.sh
. "$HERE/lib.sh"

SRC=$HERE/oidc-provider
FILES=(package.json package-lock.json provider.mjs)
CACHE_ROOT=${XDG_CACHE_HOME:-${HOME:?HOME is not set; set XDG_CACHE_HOME}/.cache}/tether
# The oldest Node.js that oidc-provider 9 was tried with (it asks for 22, and works on 20).
NODE_MIN_MAJOR=20

usage() {
  cat >&2 <<USAGE
usage: $PROG install | dir

install  installs node and npm if missing (as root, with apt-get), and the provider
         ($SRC) with its npm dependencies into
         $CACHE_ROOT/oidc-provider-<lock hash>; prints that directory
dir      prints that directory if it is installed; exit 1 if not
USAGE
  exit 2
}

[[ -f $SRC/package-lock.json ]] || die "missing $SRC/package-lock.json"
LOCK_HASH=$(sha256sum "$SRC/package-lock.json" | cut -c1-12)
DIR=$CACHE_ROOT/oidc-provider-$LOCK_HASH

# installed: DIR holds a completed install (the marker is written last).
installed() { [[ -f $DIR/.installed && -d $DIR/node_modules/oidc-provider ]]; }

# refresh_provider: DIR's provider.mjs is the repo's (copied under a temporary name, then
# renamed, so a running test never reads a half-written file). provider.mjs is not part of the
# lock hash: editing it must not cost a new npm ci.
refresh_provider() {
  cmp -s "$SRC/provider.mjs" "$DIR/provider.mjs" && return 0
  cp "$SRC/provider.mjs" "$DIR/.provider.mjs.$$" && mv -f "$DIR/.provider.mjs.$$" "$DIR/provider.mjs"
}

# need_node: node and npm are installed (installing Debian's nodejs and npm as root if not).
need_node() {
  if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
    if (($(id -u) != 0)); then
      die "node and npm are not installed, and installing them needs root: run as root, or install Node.js $NODE_MIN_MAJOR or later with npm (apt-get install nodejs npm), then run $PROG install again"
    fi
    need_cmds apt-get
    log "installing nodejs and npm (apt-get)"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends nodejs npm >/dev/null
    if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
      die "apt-get installed nodejs and npm, but node or npm is still not on PATH"
    fi
  fi
  local major
  major=$(node -p 'process.versions.node.split(".")[0]' 2>/dev/null) || die "node does not run"
  if ((major < NODE_MIN_MAJOR)); then
    log "warning: node $(node --version) is older than $NODE_MIN_MAJOR, which the provider was tried with; trying anyway"
  fi
}

do_install() {
  if installed; then
    refresh_provider
    log "already installed in $DIR"
    printf '%s\n' "$DIR"
    return 0
  fi
  need_node
  need_cmds flock
  mkdir -p "$CACHE_ROOT"
  # Concurrent installs take turns; the second one finds the directory filled.
  exec 9>"$CACHE_ROOT/oidc-provider.lock"
  if ! flock -n 9; then
    log "another install is running (lock $CACHE_ROOT/oidc-provider.lock); waiting for it..."
    flock 9
  fi
  if ! installed; then
    local tmp f t0=$SECONDS
    tmp=$(mktemp -d "$CACHE_ROOT/.oidc-provider-$LOCK_HASH.XXXXXX")
    # Removed however we leave; after the rename below it no longer exists.
    trap 'rm -rf "${tmp:?}"' EXIT
    for f in "${FILES[@]}"; do cp "$SRC/$f" "$tmp/$f"; done
    log "npm ci in $tmp (node $(node --version), npm $(npm --version))"
    if ! (cd "$tmp" && npm ci --no-audit --no-fund --ignore-scripts >"$tmp/npm-ci.log" 2>&1); then
      tail -n 30 "$tmp/npm-ci.log" >&2 || true
      die "npm ci failed for $SRC (log above)"
    fi
    [[ -d $tmp/node_modules/oidc-provider ]] || die "npm ci did not install oidc-provider"
    date -u +%Y-%m-%dT%H:%M:%SZ >"$tmp/.installed"
    rm -rf "${DIR:?}"
    mv "$tmp" "$DIR"
    trap - EXIT
    log "installed in $DIR ($((SECONDS - t0))s)"
  else
    log "installed by another process in $DIR"
  fi
  refresh_provider
  exec 9>&-
  printf '%s\n' "$DIR"
}

do_dir() {
  installed || {
    log "not installed (no $DIR); run: scripts/oidc-provider.sh install"
    return 1
  }
  refresh_provider
  printf '%s\n' "$DIR"
}

main() {
  (($# == 1)) || usage
  case $1 in
    install) do_install ;;
    dir) do_dir ;;
    -h | --help | help) usage ;;
    *) log "unknown command: $1"; usage ;;
  esac
}

main "$@"
