#!/usr/bin/env bash
# busybox-image.sh: a small image to exec into, attach to, copy files to and port-forward to:
# Debian's static busybox (sh, cat, tar, httpd and the rest of its applets), built with umoci
# like the tether image, as localhost/busybox:tether-test. The node tests and the demo run their
# pods from it.
#
#   scripts/busybox-image.sh OUT      write the OCI archive to OUT
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
# shellcheck source=scripts/lib.sh
. "$root/scripts/lib.sh"

(($# == 1)) || die "usage: $PROG OUT"
out=$1
busybox=$(command -v busybox) || die "no busybox here: apt-get install busybox-static"
[[ $(ldd "$busybox" 2>&1) == *"not a dynamic executable"* ]] ||
  die "$busybox is not statically linked: apt-get install busybox-static"

work=$(mktemp -d "${TMPDIR:-/tmp}/busybox-image.XXXXXX")
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/rootfs/bin" "$work/rootfs/tmp" "$work/rootfs/etc"
cp "$busybox" "$work/rootfs/bin/busybox"
for applet in $("$busybox" --list); do
  [[ $applet == busybox ]] || ln -s busybox "$work/rootfs/bin/$applet"
done
chmod 1777 "$work/rootfs/tmp"
printf 'root:x:0:0:root:/:/bin/sh\n' >"$work/rootfs/etc/passwd"
digest=$(oci_archive "$work/rootfs" localhost/busybox tether-test "$out" \
  --config.entrypoint /bin/sh --config.env PATH=/bin)
log "image localhost/busybox:tether-test ($digest) in $out"
