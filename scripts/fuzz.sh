#!/usr/bin/env bash
# fuzz.sh: the frame decoder (what a hostile peer's bytes meet first) under libFuzzer, for a
# bounded time.
#
#   scripts/fuzz.sh [SECONDS]      default 60
#
# Installs cargo-fuzz if it is missing. The machine has only the stable toolchain, so the
# sanitizer flags cargo-fuzz needs are enabled with RUSTC_BOOTSTRAP=1. The fuzz crate is
# tests/fuzz (its own workspace); its build is cached in ~/.cache/tether/fuzz-target (the first
# build takes several minutes), the corpus and any crash in tests/fuzz/{corpus,artifacts}
# (git-ignored). Exits non-zero if the fuzzer finds a crash, and prints how to reproduce it.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
seconds=${1:-60}
case $seconds in '' | *[!0-9]*) echo "usage: ${0##*/} [SECONDS]" >&2; exit 2 ;; esac

if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "fuzz.sh: installing cargo-fuzz (once)" >&2
  cargo install cargo-fuzz --locked
fi
export RUSTC_BOOTSTRAP=1
export CARGO_TARGET_DIR=${XDG_CACHE_HOME:-$HOME/.cache}/tether/fuzz-target
cd "$root"
echo "fuzz.sh: frame_decoder for ${seconds}s (build cached in $CARGO_TARGET_DIR)" >&2
cargo fuzz run --fuzz-dir tests/fuzz frame_decoder -- -max_total_time="$seconds" -print_final_stats=1
