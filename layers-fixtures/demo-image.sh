#!/bin/sh
# demo-image.sh LAYERFS_BIN FIXTURE_DIR
#
# The second half of `make demo`: the bundled fixture packed as an OCI
# image (plus a busybox layer, so it has a shell), imported into a private
# store, explained, run, changed, committed and run again. Everything lives
# in one temp dir, removed at the end.
set -eu

bin=$1
fixture=$2
here=$(cd "$(dirname "$0")" && pwd)
tmp=$(mktemp -d /tmp/layerfs-demo-image.XXXXXX)
store="$tmp/store"
mnt="$tmp/mnt"
cleanup() {
    "$bin" umount "$mnt" 2>/dev/null || true
    rm -rf "$tmp"
}
trap cleanup EXIT
run() {
    echo "+ layerfs $*"
    "$bin" "$@"
}

busybox=$(command -v busybox || true)
layers=""
for d in "$fixture"/*/; do
    layers="$layers ${d%/}"
    if [ "$(basename "$d")" = 00-base ] && [ -n "$busybox" ]; then
        # A shell for `layerfs run`: busybox-static as /usr/bin/sh.
        mkdir -p "$tmp/busybox/usr/bin"
        cp "$busybox" "$tmp/busybox/usr/bin/busybox"
        ln -s busybox "$tmp/busybox/usr/bin/sh"
        layers="$layers $tmp/busybox"
    fi
done
# shellcheck disable=SC2086
"$here/make-oci-image.sh" "$tmp/oci" $layers -- hello

run import "$tmp/oci" --name demo:latest --store "$store"
run images --store "$store"
run history demo --store "$store"
run whiteouts demo --store "$store"
mkdir "$mnt"
run mount --image demo --store "$store" "$mnt"
echo "+ cat $mnt/etc/os-release"
cat "$mnt/etc/os-release"
run which /usr/bin/hello --image demo --store "$store"
run umount "$mnt"

if [ -z "$busybox" ]; then
    echo "(busybox-static is not installed: skipping layerfs run)"
    exit 0
fi
run run --store "$store" --name demo-ctr --hostname demo demo sh -c 'hello; echo "I am PID $$ on $(hostname)"; echo changed > /etc/motd; rm /usr/bin/uname'
run diff demo-ctr --store "$store"
run commit demo-ctr --image demo:changed --message "motd changed, uname removed" --store "$store"
run history demo:changed --store "$store"
run run --store "$store" --rm demo:changed sh -c 'cat /etc/motd; ls /usr/bin'
run rm demo-ctr --store "$store"
run images --store "$store"
