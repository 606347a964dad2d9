#!/usr/bin/env bash
# lib.sh: the helpers that demo.sh, bench.sh, dev-cluster.sh and kube-build.sh share, written once.
# Sourced, not run:   . "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
#
# Safe under `set -euo pipefail`: a helper that answers a question (alive, pid_is) returns
# non-zero only as its answer, meant for `if` / `||`; a helper that cannot do its job dies.
# Linux only (it reads /proc), like the scripts themselves.

if [[ ${BASH_SOURCE[0]} == "$0" ]]; then
  echo "lib.sh holds the helpers the other scripts source; it does nothing when run" >&2
  exit 2
fi

# The calling script's name, which prefixes every log line ("dev-cluster.sh: ...").
PROG=${0##*/}

# log MESSAGE: one line on stderr, prefixed with the script's name, so output of nested
# scripts (demo.sh -> dev-cluster.sh -> kube-build.sh) says who speaks.
log() { printf '%s: %s\n' "$PROG" "$*" >&2; }

# die MESSAGE: log "error: MESSAGE" and exit 1. DIE_COLOR (an escape sequence such as red)
# colours the line; demo.sh sets it when it prints in colour.
die() {
  printf '%s%s: error: %s%s\n' "${DIE_COLOR:-}" "$PROG" "$*" "${DIE_COLOR:+$'\e[0m'}" >&2
  exit 1
}

# need_cmds CMD...: die naming every missing command at once, so one install fixes them all.
need_cmds() {
  local missing=() c
  for c in "$@"; do command -v "$c" >/dev/null 2>&1 || missing+=("$c"); done
  if ((${#missing[@]})); then
    die "missing command(s): ${missing[*]}. Install them and try again (on Debian: dpkg-source is in dpkg-dev; flock and setsid in util-linux; kubectl is the project's kubectl dispatcher)."
  fi
}

# alive PID: the process runs. An exited child stays a zombie until it is reaped, and
# `kill -0` succeeds on a zombie, so the state letter in /proc/PID/stat is what counts.
alive() {
  local stat
  [[ ${1:-} =~ ^[0-9]+$ ]] || return 1
  { read -r stat <"/proc/$1/stat"; } 2>/dev/null || return 1
  stat=${stat##*) } # the command name in parentheses may hold spaces: skip past it
  [[ $stat != [ZX]* ]]
}

# pid_is PID BIN: PID runs and its executable is BIN. Guards against PID reuse (after a reboot
# or a long time): never signal a process that is not the binary we started.
pid_is() {
  local pid=$1 bin=$2 exe
  alive "$pid" || return 1
  exe=$(readlink "/proc/$pid/exe" 2>/dev/null) || return 1
  [[ ${exe% (deleted)} == "$bin" ]]
}

# Background processes started by `spawn` and not yet stopped, as PID:NAME, oldest first.
SPAWNED=()
SPAWNED_PID=

# spawn NAME LOG CMD...: start CMD in the background with stdout and stderr in LOG; sets
# SPAWNED_PID and remembers the process so that stop_spawned stops it. Call it in the script's
# own shell (not in $(...)), or the process is not remembered.
spawn() {
  local name=$1 logf=$2
  shift 2
  # Empty LOG here, not in the child: a reused LOG still holding an earlier process's ready line
  # would otherwise satisfy a wait_for_line that runs before the child has truncated it.
  : >"$logf"
  "$@" </dev/null >>"$logf" 2>&1 &
  SPAWNED_PID=$!
  SPAWNED+=("$SPAWNED_PID:$name")
}

# running PID [BIN]: PID runs and, if BIN is given, is BIN (the check stop_pid repeats).
running() { if [[ -n ${2:-} ]]; then pid_is "$1" "$2"; else alive "$1"; fi; }

# stop_pid PID NAME [SECONDS] [BIN]: SIGTERM (agents drain, the stub says goodbye), wait up to
# SECONDS (default 10), then SIGKILL; reap it if it is our child and wait until its PID is gone,
# so that a caller's check right after sees it gone. With BIN, a PID that is not BIN is left
# alone (pid_is). Forgets PID in SPAWNED. Returns 1 only if it survived SIGKILL.
stop_pid() {
  local pid=$1 name=$2 secs=${3:-10} bin=${4:-} i kept=() e signalled=false
  [[ $pid =~ ^[0-9]+$ ]] || return 0
  for e in "${SPAWNED[@]}"; do [[ ${e%%:*} == "$pid" ]] || kept+=("$e"); done
  SPAWNED=("${kept[@]}")
  if running "$pid" "$bin"; then
    signalled=true
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < secs * 10; i++)); do running "$pid" "$bin" || break; sleep 0.1; done
    if running "$pid" "$bin"; then
      log "$name (pid $pid) did not exit within ${secs}s; sending SIGKILL"
      kill -KILL "$pid" 2>/dev/null || true
      for ((i = 0; i < 50; i++)); do running "$pid" "$bin" || break; sleep 0.1; done
      if running "$pid" "$bin"; then
        log "$name (pid $pid) survived SIGKILL"
        return 1
      fi
    fi
  fi
  wait "$pid" 2>/dev/null || true
  # A process that is not our child (a daemon reparented to init) stays a zombie until init
  # reaps it: give that a moment (best effort; a zombie holds no ports or files).
  if $signalled; then
    for ((i = 0; i < 30; i++)); do [[ -e /proc/$pid ]] || break; sleep 0.1; done
  fi
  return 0
}

# stop_spawned: stop every process that spawn started and nothing stopped yet, newest first
# (agents before the stub they talk to, the stub before the link it lives behind).
stop_spawned() {
  local e
  while ((${#SPAWNED[@]})); do
    e=${SPAWNED[${#SPAWNED[@]} - 1]}
    stop_pid "${e%%:*}" "${e#*:}" || true # it forgets the entry either way
  done
}

# poll_until PID SECONDS CMD...: run CMD every 0.1 s until it succeeds (returns 0). Returns 1 at
# once when PID has exited (after one last try of CMD, so that a line written just before exiting
# counts), 2 when SECONDS pass. Waiting out the timeout for a process that is already dead only
# hides the failure for longer.
poll_until() {
  local pid=$1 secs=$2 deadline dead
  shift 2
  deadline=$((SECONDS + secs))
  while :; do
    dead=false
    alive "$pid" || dead=true
    "$@" && return 0
    $dead && return 1
    ((SECONDS < deadline)) || return 2
    sleep 0.1
  done
}

# wait_for_line FILE NEEDLE PID NAME [SECONDS]: wait until FILE (the log of process PID, called
# NAME in messages) has a line containing NEEDLE, and print that line. Dies with the log's tail
# at once if the process exits first (as the Rust test harness does), or after SECONDS (30).
wait_for_line() {
  local file=$1 needle=$2 pid=$3 name=$4 secs=${5:-30} rc=0
  poll_until "$pid" "$secs" grep -s -m1 -F -- "$needle" "$file" || rc=$?
  ((rc != 0)) || return 0
  tail -n 20 "$file" >&2 || true
  if ((rc == 1)); then
    die "$name exited without logging \"$needle\" (log: $file)"
  fi
  die "$name did not log \"$needle\" within ${secs}s (log: $file)"
}

# field LINE KEY: the value of " KEY=VALUE" in a log line (tracing's fields), up to a blank.
field() { sed -n "s/.*[[:space:]]$2=\([^[:space:]]*\).*/\1/p" <<<"$1"; }

# oci_archive ROOTFS NAME TAG OUT [CONFIG...]: pack the directory ROOTFS as a one-layer OCI image
# NAME:TAG into the archive OUT (a tar of an OCI image layout, which `ctr images import` and any
# OCI tool load; its index carries containerd's io.containerd.image.name annotation, so the
# import names the image NAME:TAG), with CONFIG as umoci's image-configuration options (such as
# --config.entrypoint /tether). No daemon and no registry: umoci writes the layout directly.
# Prints the image's manifest digest.
oci_archive() {
  local rootfs=$1 name=$2 tag=$3 out=$4 work digest
  shift 4
  need_cmds umoci jq tar
  work=$(mktemp -d "${TMPDIR:-/tmp}/oci.XXXXXX")
  (
    set -e
    umoci init --layout "$work/oci"
    umoci new --image "$work/oci:$tag"
    umoci insert --image "$work/oci:$tag" "$rootfs" /
    if (($# > 0)); then umoci config --image "$work/oci:$tag" "$@"; fi
    umoci gc --layout "$work/oci"
    jq --arg name "$name:$tag" '.manifests |= map(.annotations["io.containerd.image.name"] = $name)' \
      "$work/oci/index.json" >"$work/index.json"
    mv "$work/index.json" "$work/oci/index.json"
  ) >"$work/umoci.log" 2>&1 || { cat "$work/umoci.log" >&2; rm -rf "$work"; die "umoci could not build image $name:$tag"; }
  digest=$(jq -r '.manifests[0].digest' "$work/oci/index.json")
  tar -C "$work/oci" -cf "$out.tmp" . && mv "$out.tmp" "$out"
  rm -rf "$work"
  printf '%s\n' "$digest"
}

# daemon PIDFILE LOG CMD...: start CMD detached (its own session, stdin from /dev/null, output
# appended to LOG) so it outlives the calling script and holds no caller's pipe open; its PID
# goes to PIDFILE. In a non-interactive bash the background child is not a process-group leader,
# so setsid calls setsid() and execs in place: the PID is the daemon's own (pid_is checks it).
daemon() {
  local pidfile=$1 logf=$2
  shift 2
  setsid "$@" </dev/null >>"$logf" 2>&1 &
  echo $! >"$pidfile"
}
