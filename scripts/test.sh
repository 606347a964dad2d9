#!/usr/bin/env bash
# What CI runs, and what a developer runs before pushing: formatting, lints, then every test
# (unit, property and end-to-end tests with real processes on loopback).
#
#   scripts/test.sh            everything
#   scripts/test.sh NAME       only tests whose name contains NAME
#
# Installs what the tests need that a fresh machine may lack. Tests write nothing into the repo.
set -euo pipefail
cd "$(dirname "$0")/.."

say() { printf '\n== %s\n' "$*" >&2; }

if ! command -v cargo >/dev/null; then
  echo "error: cargo is not installed; install the Rust toolchain (rustup) first" >&2
  exit 1
fi

say "real kube-apiserver and etcd for the end-to-end tests (built once, cached outside the repo)"
# The first run on a machine builds kube-apiserver v1.20.2 from Debian's source package (about
# 5-9 minutes on 2 cores); later runs find it in ${TETHER_CACHE:-~/.cache/tether}.
bash scripts/kube-build.sh
if ! command -v kubectl >/dev/null; then
  echo "error: kubectl is not installed; the end-to-end tests drive the real kubectl" >&2
  exit 1
fi

say "formatting (cargo fmt --check)"
cargo fmt --all -- --check

say "lints (cargo clippy --all-targets)"
cargo clippy --all-targets --quiet -- -D warnings

say "tests (cargo test)"
cargo test --all-targets "$@"
