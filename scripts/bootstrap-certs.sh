#!/usr/bin/env bash
# Bootstrap a certificate directory for tether: the CA, a stub certificate for localhost and
# 127.0.0.1, two registered agents (agent-0, agent-1) per cluster, and the token issuer key pair.
#
#   scripts/bootstrap-certs.sh [DIR] [CLUSTER...]      (defaults: certs dev)
#
# Idempotent: whatever already exists is kept, so a second run changes nothing.
# Uses $TETHER if set, else target/debug/tether (built here if missing).
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
dir=${1:-certs}
shift || true
clusters=("$@")
[ ${#clusters[@]} -gt 0 ] || clusters=(dev)

tether=${TETHER:-}
if [ -z "$tether" ]; then
  tether="$root/target/debug/tether"
  if [ ! -x "$tether" ]; then
    echo "building tether (first run)..." >&2
    cargo build --quiet --manifest-path "$root/Cargo.toml" --bin tether
  fi
fi

step() { printf '  %-44s %s\n' "$1" "$2" >&2; }

echo "bootstrapping $dir for cluster(s): ${clusters[*]}" >&2
if [ -e "$dir/ca.crt" ]; then
  step "CA" "kept ($dir/ca.crt)"
else
  "$tether" certs init --dir "$dir" >/dev/null
  step "CA" "created"
fi

if [ -e "$dir/stub.crt" ]; then
  step "stub certificate" "kept"
else
  "$tether" certs stub --dir "$dir" --san localhost --san 127.0.0.1 >/dev/null
  step "stub certificate (localhost, 127.0.0.1)" "created"
fi

for cluster in "${clusters[@]}"; do
  for name in agent-0 agent-1; do
    if [ -e "$dir/agents/$cluster/$name.crt" ]; then
      # Registering again is a no-op, and repairs a run that stopped half way.
      fp=$("$tether" certs register --dir "$dir" --cluster "$cluster" --name "$name" \
        "$dir/agents/$cluster/$name.crt" 2>/dev/null)
      step "agent $cluster/$name" "kept ($fp)"
    else
      fp=$("$tether" certs agent --dir "$dir" --cluster "$cluster" --name "$name" --register 2>/dev/null)
      step "agent $cluster/$name" "created and registered $fp"
    fi
  done
done

if [ -e "$dir/issuer.key" ]; then
  step "token issuer key pair" "kept"
else
  "$tether" certs issuer --dir "$dir" >/dev/null
  step "token issuer key pair" "created"
fi
echo "done: $dir" >&2
