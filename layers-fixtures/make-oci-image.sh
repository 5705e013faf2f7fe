#!/bin/sh
# make-oci-image.sh OUT LAYER_DIR... [-- CMD...]
#
# Packs layer directories (bottom first, OCI `.wh.` whiteouts as they are)
# into an OCI image layout at OUT, uncompressed, with CMD as the image's
# Cmd. Only tar, sha256sum and printf: `make demo` uses it to turn the
# bundled fixture into an image for `layerfs import`.
set -eu

out=$1
shift
mkdir -p "$out/blobs/sha256"
printf '{"imageLayoutVersion":"1.0.0"}' >"$out/oci-layout"

blob() { # FILE -> prints its digest, moves it into blobs/
    d=$(sha256sum "$1" | cut -d' ' -f1)
    mv "$1" "$out/blobs/sha256/$d"
    echo "$d"
}

diff_ids=""
layers=""
history=""
while [ $# -gt 0 ] && [ "$1" != "--" ]; do
    tar --sort=name --numeric-owner --owner=0 --group=0 --mtime=@1704067200 \
        -C "$1" -cf "$out/layer.tar" .
    size=$(stat -c %s "$out/layer.tar")
    d=$(blob "$out/layer.tar")
    sep=${diff_ids:+,}
    diff_ids="$diff_ids$sep\"sha256:$d\""
    layers="$layers$sep{\"mediaType\":\"application/vnd.oci.image.layer.v1.tar\",\"digest\":\"sha256:$d\",\"size\":$size}"
    history="$history$sep{\"created\":\"2024-01-01T00:00:00Z\",\"created_by\":\"COPY $(basename "$1") /\"}"
    shift
done
[ $# -gt 0 ] && shift
cmd=""
for a in "$@"; do
    cmd="$cmd${cmd:+,}\"$a\""
done

printf '{"architecture":"%s","os":"linux","config":{"Env":["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],"Cmd":[%s]},"rootfs":{"type":"layers","diff_ids":[%s]},"history":[%s]}' \
    "$(dpkg --print-architecture 2>/dev/null || echo amd64)" "$cmd" "$diff_ids" "$history" >"$out/config.json"
config_size=$(stat -c %s "$out/config.json")
config=$(blob "$out/config.json")

printf '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:%s","size":%s},"layers":[%s]}' \
    "$config" "$config_size" "$layers" >"$out/manifest.json"
manifest_size=$(stat -c %s "$out/manifest.json")
manifest=$(blob "$out/manifest.json")

printf '{"schemaVersion":2,"manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:%s","size":%s,"annotations":{"org.opencontainers.image.ref.name":"latest"}}]}' \
    "$manifest" "$manifest_size" >"$out/index.json"
