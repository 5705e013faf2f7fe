#!/usr/bin/env python3
"""layerfs import benchmark: `layerfs import` of a Debian-sized image (about
200 MB, 6-7k files, three gzip layers built by umoci from this machine's
/usr) against `umoci unpack` of the same image and plain `tar -xzf` of its
layer blobs, in one interleaved run; then a second import of an image that
shares every layer. Prints medians and ratios; see docs/performance.md.

Usage (as root):  python3 bench/import.py [--bin target/release/layerfs]
Knobs (environment): BENCH_REPS (default 5, 1..9), BENCH_KEEP_TMP=1 (leave
the temp dir).

Nothing is mounted; every copy it makes lives in one temp dir, removed at
the end (also on an error or a signal).
"""

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time

# The image's layers, bottom first: host directories copied into the rootfs
# (those that exist), then paths removed in that layer (whiteouts).
LAYERS = (
    (("/usr/lib/gcc", "/usr/share/perl", "/usr/lib/x86_64-linux-gnu/perl"), ()),
    (("/usr/lib/python3.11", "/usr/share/i18n"), ("usr/share/perl/5.36/unicore",)),
    (("/usr/share/zoneinfo", "/usr/sbin"), ("usr/lib/python3.11/test",)),
)


def log(msg):
    print(msg, flush=True)


def run(cmd, **kw):
    return subprocess.run(cmd, check=True, **kw)


def timed(cmd):
    t0 = time.perf_counter()
    run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - t0


def tree_stats(root):
    files, size = 0, 0
    for dirpath, dirs, names in os.walk(root):
        files += len(dirs) + len(names)
        for n in names:
            st = os.lstat(os.path.join(dirpath, n))
            size += st.st_size
    return files, size


def build_image(tmp):
    """An OCI layout with tag `img`, and a second layout whose image `img2`
    has another config but the same layer blobs (hard-linked)."""
    layout = os.path.join(tmp, "layout")
    bundle = os.path.join(tmp, "bundle")
    run(["umoci", "init", "--layout", layout])
    run(["umoci", "new", "--image", f"{layout}:img"])
    run(["umoci", "unpack", "--image", f"{layout}:img", bundle], stdout=subprocess.DEVNULL)
    rootfs = os.path.join(bundle, "rootfs")
    for sources, removed in LAYERS:
        for src in sources:
            if os.path.isdir(src):
                dst = os.path.join(rootfs, src.lstrip("/"))
                os.makedirs(os.path.dirname(dst), exist_ok=True)
                run(["cp", "-a", src, dst])
        for rel in removed:
            shutil.rmtree(os.path.join(rootfs, rel), ignore_errors=True)
        # --refresh-bundle: the next repack diffs against this layer.
        run(["umoci", "repack", "--refresh-bundle", "--image", f"{layout}:img", bundle],
            stdout=subprocess.DEVNULL)
    files, size = tree_stats(rootfs)
    shutil.rmtree(bundle)
    second = os.path.join(tmp, "layout2")
    run(["cp", "-al", layout, second])
    run(["umoci", "config", "--image", f"{second}:img", "--tag", "img2",
         "--config.env", "BENCH=second"])
    run(["umoci", "rm", "--image", f"{second}:img"])
    return layout, second, files, size


def layer_blobs(layout):
    def read_blob(digest):
        with open(os.path.join(layout, "blobs", *digest.split(":")), "rb") as f:
            return json.load(f)
    with open(os.path.join(layout, "index.json")) as f:
        index = json.load(f)
    manifest = read_blob(index["manifests"][0]["digest"])
    return [os.path.join(layout, "blobs", *l["digest"].split(":")) for l in manifest["layers"]]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bin", default="target/release/layerfs")
    args = ap.parse_args()
    reps = int(os.environ.get("BENCH_REPS", "5"))
    if not 1 <= reps <= 9:
        sys.exit("import bench: BENCH_REPS must be 1..9")
    if os.geteuid() != 0:
        sys.exit("import bench: must run as root (umoci unpack and tar keep owners)")
    binary = os.path.abspath(args.bin)
    if not os.access(binary, os.X_OK):
        sys.exit(f"import bench: {binary}: not built (run `make build`)")
    if not shutil.which("umoci"):
        sys.exit("import bench: umoci is missing (apt-get install -y umoci)")

    def on_signal(sig, _frame):
        raise SystemExit(128 + sig)

    for s in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(s, on_signal)

    tmp = tempfile.mkdtemp(prefix="layerfs-bench-import.")
    status = 0
    try:
        t0 = time.perf_counter()
        layout, second, files, size = build_image(tmp)
        blobs = layer_blobs(layout)
        gz = sum(os.path.getsize(b) for b in blobs)
        log(f"layerfs import bench, {time.strftime('%Y-%m-%d %H:%M %Z')}, {os.cpu_count()} CPUs, "
            f"{reps} runs each; image: {len(blobs)} gzip layers, {gz / 2**20:.0f} MiB compressed, "
            f"{size / 2**20:.0f} MiB in {files} entries unpacked (built in "
            f"{time.perf_counter() - t0:.0f}s)")
        out = os.path.join(tmp, "out")
        store = os.path.join(tmp, "store")

        def umoci_unpack():
            return timed(["umoci", "unpack", "--image", f"{layout}:img", out])

        def tar_layers():
            os.mkdir(out)
            t = 0.0
            for b in blobs:
                t += timed(["tar", "-xzf", b, "-C", out])
            return t

        def layerfs_import():
            return timed([binary, "import", layout, "--name", "bench:1", "--store", store])

        def second_import():
            # The store holds the first image; every layer is shared.
            run([binary, "import", layout, "--name", "bench:1", "--store", store],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            return timed([binary, "import", second, "--name", "bench:2", "--store", store])

        cases = (("umoci unpack", umoci_unpack), ("tar -xzf of the layers", tar_layers),
                 ("layerfs import", layerfs_import),
                 ("layerfs import, every layer already stored", second_import))
        times = {name: [] for name, _ in cases}
        for _ in range(reps):
            for name, fn in cases:  # interleaved: the machine's noise hits all alike
                times[name].append(fn())
                shutil.rmtree(out, ignore_errors=True)
                shutil.rmtree(store, ignore_errors=True)
        med = {name: statistics.median(v) for name, v in times.items()}
        log("")
        log("| workload | median | layerfs import / it |")
        log("|---|---|---|")
        for name, _ in cases[:3]:
            log(f"| {name} | {med[name]:.2f} s | {med['layerfs import'] / med[name]:.2f} |")
        name = cases[3][0]
        log(f"| {name} | {med[name]:.3f} s | |")
    except subprocess.CalledProcessError as e:
        log(f"import bench: {' '.join(map(str, e.cmd))}: exit {e.returncode}")
        status = 1
    except SystemExit as e:
        log(f"import bench: stopped by signal {e.code - 128}")
        status = e.code
    finally:
        if os.environ.get("BENCH_KEEP_TMP") == "1":
            log(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    return status


if __name__ == "__main__":
    sys.exit(main())
