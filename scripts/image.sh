#!/usr/bin/env bash
# image.sh: the tether container image, localhost/tether:<version>, with no Docker and no
# registry: an OCI image built with umoci, written as an archive that `ctr images import` (and
# any OCI tool) loads.
#
#   scripts/image.sh [--binary FILE] [--out FILE]
#
# What is in it, and nothing else: the tether binary (stripped), the shared libraries it links
# (libc, libm, libgcc_s and the loader, copied from this machine's Debian packages), the CA
# certificates, and /etc/passwd naming the non-root user 65532 it runs as. No shell. The image's
# entrypoint is /tether; the manifest `tether register` prints gives its arguments.
#
#   --binary FILE  package this tether binary instead of building the release one
#                  (the tests package the debug build they already have, stripped)
#   --out FILE     where the archive goes (default target/image/tether-<version>.tar)
#
# Prints the image's name, size and digest; the last line is the archive's path.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
# shellcheck source=scripts/lib.sh
. "$root/scripts/lib.sh"

binary=
out=
while (($# > 0)); do
  case $1 in
    --binary) binary=${2:?--binary needs a file}; shift ;;
    --out) out=${2:?--out needs a file}; shift ;;
    -h | --help) sed -n '2,17p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) die "unknown argument: $1 (usage: $PROG [--binary FILE] [--out FILE])" ;;
  esac
  shift
done
need_cmds umoci jq ldd strip tar

version=$(sed -n 's/^version = "\(.*\)"/\1/p' "$root/Cargo.toml" | head -1)
[[ -n $version ]] || die "cannot read the version from Cargo.toml"
name=localhost/tether
out=${out:-$root/target/image/tether-$version.tar}
mkdir -p "$(dirname "$out")"

if [[ -z $binary ]]; then
  log "building the release binary (cargo build --release)"
  cargo build --release --quiet --manifest-path "$root/Cargo.toml" --bin tether
  binary=$root/target/release/tether
fi
[[ -x $binary ]] || die "$binary is not an executable"

work=$(mktemp -d "${TMPDIR:-/tmp}/tether-image.XXXXXX")
trap 'rm -rf "$work"' EXIT
rootfs=$work/rootfs
mkdir -p "$rootfs/etc/ssl/certs"
strip -o "$rootfs/tether" "$binary"

# The libraries the binary links, at the paths the loader looks for them.
while read -r lib; do
  [[ -n $lib ]] || continue
  mkdir -p "$rootfs$(dirname "$lib")"
  cp -L "$lib" "$rootfs$lib"
done < <(ldd "$binary" | awk '/=> \// { print $3 } /^\t\/.*ld-linux/ { print $1 }')
[[ -e $rootfs/lib64/ld-linux-x86-64.so.2 ]] || die "ldd named no loader for $binary (not a dynamically linked x86_64 binary?)"

if [[ -f /etc/ssl/certs/ca-certificates.crt ]]; then
  cp /etc/ssl/certs/ca-certificates.crt "$rootfs/etc/ssl/certs/"
else
  log "no /etc/ssl/certs/ca-certificates.crt here (package ca-certificates): the image has none"
fi
printf 'root:x:0:0:root:/:/sbin/nologin\ntether:x:65532:65532:tether:/:/sbin/nologin\n' >"$rootfs/etc/passwd"
printf 'root:x:0:\ntether:x:65532:\n' >"$rootfs/etc/group"

"$rootfs/lib64/ld-linux-x86-64.so.2" --library-path "$rootfs/lib/x86_64-linux-gnu" "$rootfs/tether" --version >/dev/null ||
  die "the packaged binary does not run with the packaged libraries"

digest=$(oci_archive "$rootfs" "$name" "$version" "$out" \
  --config.user 65532:65532 --config.entrypoint /tether --config.workingdir / \
  --config.env SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt \
  --config.label "org.opencontainers.image.version=$version")

log "image $name:$version"
log "  content: $(du -sh "$rootfs" | cut -f1) ($(find "$rootfs" -type f | wc -l) files), archive $(du -h "$out" | cut -f1)"
log "  digest:  $digest"
log "  load it: ctr -n k8s.io images import $out"
echo "$out"
