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

say "packages for the real-node tests (containerd, runc, CNI plugins, umoci, iptables, busybox), the hub's load balancers (nftables, haproxy) and the agent's egress proxy (tinyproxy)"
# Debian's, installed once as root; without root those tests print SKIPPED.
packages=(containerd runc containernetworking-plugins umoci iptables busybox-static jq nftables haproxy tinyproxy-bin)
if [ "$(id -u)" = 0 ]; then
  missing=()
  for p in "${packages[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
  # The OIDC login tests' scripted browser (tests/support/oidc_browser.py) needs python3's requests.
  python3 -c 'import requests' 2>/dev/null || missing+=(python3-requests)
  if ((${#missing[@]})); then
    echo "installing ${missing[*]}" >&2
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  fi
else
  echo "not root: the real-node and load-balancer tests will be skipped (they need containerd and kubelet, network namespaces and nftables)" >&2
fi

say "real Kubernetes binaries for the end-to-end tests (built once, cached outside the repo)"
# The first run on a machine builds kube-apiserver, kube-controller-manager, kube-scheduler and
# kubelet v1.20.2 from Debian's source package (about 5-12 minutes on 2 cores); later runs find
# them in ${TETHER_CACHE:-~/.cache/tether}.
bash scripts/kube-build.sh >/dev/null
if ! command -v kubectl >/dev/null; then
  echo "error: kubectl is not installed; the end-to-end tests drive the real kubectl" >&2
  exit 1
fi

say "the OpenID Connect provider for the login tests (npm oidc-provider, installed once, cached outside the repo)"
# Installs node and npm first if missing (as root); the tests find it with scripts/oidc-provider.sh dir.
bash scripts/oidc-provider.sh install >/dev/null

say "formatting (cargo fmt --check)"
cargo fmt --all -- --check

say "lints (cargo clippy --all-targets)"
cargo clippy --all-targets --quiet -- -D warnings

say "tests (cargo test)"
cargo test --all-targets "$@"
