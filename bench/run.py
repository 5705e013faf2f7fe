#!/usr/bin/env python3
"""layerfs benchmark: layerfs against the kernel's overlayfs and
fuse-overlayfs, in the same run, on identical copies of one synthetic layer
stack (and of a 128-layer one). Prints medians and ratios, the scaling of
two concurrent walkers and writers, and the daemons' memory per cached
inode; see docs/performance.md. The stacks are built by bench/stack.py, the
workloads are in bench/workloads.py.

Usage (as root):  python3 bench/run.py [--bin target/release/layerfs]
Knobs (environment): BENCH_REPS (default 5, 1..9), BENCH_VERBOSE=1 (every
repetition's time), BENCH_KEEP_TMP=1 (leave the temp dir, never a mount),
BENCH_ONLY=REGEX (only the workloads whose name matches; the memory lines
are "daemon memory per cached inode"),
BENCH_METACOPY=layerfs[,kernel] (writable mounts of those with metacopy=on),
BENCH_LAYERFS_THREADS=N (layerfs mount --threads N), BENCH_FO2=0 (never
build fuse-overlayfs 2.0), BENCH_FO2_ROOT=DIR (where it is built).

Everything it mounts is unmounted and every daemon it started is waited for
before it exits, also on an error or a signal; the temp dir is removed only
once nothing is mounted below it.
"""

import argparse
import ctypes
import hashlib
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time

sys.dont_write_bytecode = True  # no __pycache__ of stack/workloads in the tree
from stack import MiB, N_WIDE, layers128, make_stack, make_stack128, make_wide
from workloads import MEMORY, USE_WIDE, WORKLOADS, run, sh

# The rootfs-like tree untarred and removed: a tar of this directory,
# built at setup (never shipped); the first one that exists is used.
ROOTFS_SOURCES = ("/usr/lib/python3.11", "/usr/lib/python3", "/usr/share/perl", "/usr/lib")
FO2_ROOT = os.environ.get("BENCH_FO2_ROOT", "/var/cache/layerfs-bench/fuse-overlayfs-2.0.0")

IMPLS = ("kernel", "fuse-overlayfs", "fuse-overlayfs-2", "layerfs")


def log(msg):
    print(msg, flush=True)


def die(msg):
    print(f"bench: {msg}", file=sys.stderr, flush=True)
    sys.exit(1)


# ---------------------------------------------------------------- processes


def mountpoints():
    """Mount points from /proc/self/mountinfo (octal escapes decoded)."""
    out = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            mp = line.split()[4]
            out.append(re.sub(r"\\([0-7]{3})", lambda m: chr(int(m[1], 8)), mp))
    return out


def daemon_pid(program, mnt):
    """The one process running `program` whose arguments name `mnt`."""
    found = []
    for ent in os.listdir("/proc"):
        if not ent.isdigit():
            continue
        try:
            with open(f"/proc/{ent}/cmdline", "rb") as f:
                argv = [a.decode(errors="replace") for a in f.read().split(b"\0") if a]
            with open(f"/proc/{ent}/stat") as f:
                state = f.read().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state == "Z" or not argv:
            continue
        if os.path.basename(argv[0]) == program and mnt in argv:
            found.append(int(ent))
    if len(found) != 1:
        log(f"bench: warning: {len(found)} {program} processes serve {mnt}")
        return None
    return found[0]


def status_kib(pid, field):
    """A KiB field of /proc/PID/status (VmHWM, VmRSS), or None."""
    if not pid:
        return None
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def vm_hwm_kib(pid):
    return status_kib(pid, "VmHWM")


def vm_rss_kib(pid):
    return status_kib(pid, "VmRSS")


def wait_pid(pid, timeout=20.0):
    """Wait for a daemon to exit; we are its subreaper, so reap it."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            got, _ = os.waitpid(pid, os.WNOHANG)
            if got == pid:
                return True
        except ChildProcessError:
            # Not ours (no subreaper): wait until it is gone or a zombie.
            try:
                with open(f"/proc/{pid}/stat") as f:
                    if f.read().rsplit(")", 1)[1].split()[0] == "Z":
                        return True
            except OSError:
                return True
        time.sleep(0.02)
    return False


def in_children(jobs):
    """Each callable in a forked child of its own, all at once; raises if
    any failed (after all of them ended)."""
    pids = []
    for job in jobs:
        pid = os.fork()
        if pid == 0:  # the child: never returns into the bench
            code = 1
            try:
                job()
                code = 0
            except BaseException as e:
                print(f"bench: setup: {type(e).__name__}: {e}", file=sys.stderr, flush=True)
            finally:
                os._exit(code)
        pids.append(pid)
    failed = 0
    for pid in pids:
        _, status = os.waitpid(pid, 0)
        failed += not (os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0)
    if failed:
        raise RuntimeError(f"{failed} of {len(jobs)} setup jobs failed")


def drop_caches():
    os.sync()
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("3\n")


# ---------------------------------------------------------------- mounts


class Mount:
    """One mount under test: an implementation, rw or ro, on its own copy
    (base/LAYER for each name of `layers`, top first)."""

    def __init__(self, bench, impl, mode, base, layers=("l2", "l1", "l0")):
        self.bench, self.impl, self.mode, self.base = bench, impl, mode, base
        self.mnt = os.path.join(base, "mnt")
        self.layers = list(layers)
        # Upper and work dir, relative to base: in fresh/ when that is an
        # UpperFs of its own (Bench.setup), else plain dirs in base.
        self.upper, self.work = "upper", "work"
        self.upper_fs = None
        self.pid = None
        self.hwm = 0  # peak VmHWM over this variant's daemons, KiB
        self.mounted = False

    @property
    def label(self):
        return f"{self.impl}-{self.mode}"

    def options(self, relative):
        """Relative to base (the kernel's mount options must fit a page:
        128 absolute lower paths do not), or absolute."""
        at = (lambda p: p) if relative else (lambda p: os.path.join(self.base, p))
        o = "lowerdir=" + ":".join(at(p) for p in self.layers)
        if self.mode == "rw":
            o += f",upperdir={at(self.upper)},workdir={at(self.work)}"
            if self.impl in os.environ.get("BENCH_METACOPY", "").split(","):
                o += ",metacopy=on"
        return o

    def mount(self):
        o = self.options(relative=self.impl == "kernel")
        if self.impl == "kernel":
            if self.mode == "rw":
                o += ",redirect_dir=on,index=on"
            cmd = ["mount", "-t", "overlay", "overlay", "-o", o, self.mnt]
        elif self.impl == "fuse-overlayfs":
            cmd = [self.bench.fuse_overlayfs, "-o", o, self.mnt]
        elif self.impl == "fuse-overlayfs-2":
            cmd = [self.bench.fuse_overlayfs2, "-o", o, self.mnt]
        else:
            cmd = [self.bench.bin, "mount", "-o", o, self.mnt]
            if os.environ.get("BENCH_LAYERFS_THREADS"):  # FUSE worker threads
                cmd[2:2] = ["--threads", os.environ["BENCH_LAYERFS_THREADS"]]
        r = run(cmd, check=False, capture_output=True, text=True, cwd=self.base)
        # Record it as ours before anything else can fail.
        if self.mnt in mountpoints():
            self.mounted = True
        if r.returncode != 0 or not self.mounted:
            raise RuntimeError(
                f"{self.label}: mount failed ({' '.join(cmd)}): "
                f"{(r.stderr or r.stdout).strip()}"
            )
        if self.impl.startswith("fuse-overlayfs"):
            self.pid = daemon_pid(os.path.basename(cmd[0]), self.mnt)
        elif self.impl == "layerfs":
            self.pid = daemon_pid(os.path.basename(self.bench.bin), self.mnt)

    def sample_hwm(self):
        if self.pid:
            v = vm_hwm_kib(self.pid)
            if v:
                self.hwm = max(self.hwm, v)

    def umount(self):
        if not self.mounted:
            return True
        self.sample_hwm()
        if self.impl == "kernel":
            tries = [["umount", self.mnt], ["umount", "-l", self.mnt]]
        elif self.impl.startswith("fuse-overlayfs"):
            tries = [["fusermount3", "-u", self.mnt], ["fusermount3", "-u", "-z", self.mnt]]
        else:
            tries = [[self.bench.bin, "umount", self.mnt], [self.bench.bin, "umount", "-l", self.mnt]]
        for i, cmd in enumerate(tries):
            for _ in range(5 if i == 0 else 1):  # busy for a moment? retry
                r = run(cmd, check=False, capture_output=True, text=True)
                if r.returncode == 0 or self.mnt not in mountpoints():
                    break
                time.sleep(0.2)
            if self.mnt not in mountpoints():
                break
            log(f"bench: {' '.join(cmd)}: {r.stderr.strip()}")
        if self.mnt in mountpoints():
            log(f"bench: ERROR: {self.mnt} is still mounted")
            return False
        self.mounted = False
        if self.pid:
            if not wait_pid(self.pid):
                log(f"bench: {self.label} daemon {self.pid} did not exit; sending SIGTERM")
                try:
                    os.kill(self.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
                wait_pid(self.pid, 5)
            self.pid = None
        return True

    def remount(self):
        if not self.umount():
            raise RuntimeError(f"{self.label}: cannot unmount {self.mnt}")
        self.mount()


# The size of an upper's filesystem, at least: one repetition of every
# writing workload left 123 MiB and at most 11 700 inodes in an upper,
# its untarred tree (51 MiB tar here) included, which stays until the
# "rm -rf of it" row (Bench.make_uppers grows the size for a bigger
# tree). The image is sparse: only what is written takes space.
UPPER_FS_GIB = 4
UPPER_PER_REP = 100 * MiB  # what a repetition leaves besides the untarred tree, with room


class UpperFs:
    """A freshly made ext4 of its own, for one writable mount's upper and
    work dir: a sparse image base/fresh.img, loop-mounted at base/fresh.
    Every implementation's creates then start from the same empty inode
    allocator, not from the history of the filesystem under /tmp (whose
    search for a free inode among recently deleted ones made the write
    rows swing tenfold; docs/performance.md)."""

    def __init__(self, base, gib):
        self.image = os.path.join(base, "fresh.img")
        self.dir = os.path.join(base, "fresh")
        self.gib = gib
        self.mounted = False

    def make(self):
        """Raises RuntimeError, with the command's own words, on failure."""
        os.mkdir(self.dir)
        # The inode tables and journal are zeroed by mkfs (cheaply: the
        # image is sparse), so no ext4lazyinit thread writes behind the
        # workloads' back.
        for cmd in (["truncate", "-s", f"{self.gib}G", self.image],
                    ["mkfs.ext4", "-q", "-F", "-E", "lazy_itable_init=0,lazy_journal_init=0",
                     self.image]):
            r = run(cmd, check=False, capture_output=True, text=True)
            if r.returncode != 0:
                raise RuntimeError(f"{' '.join(cmd)}: {(r.stderr or r.stdout).strip()}")
        cmd = ["mount", "-o", "loop", self.image, self.dir]
        r = run(cmd, check=False, capture_output=True, text=True)
        # Record it as ours before anything else can fail.
        if self.dir in mountpoints():
            self.mounted = True
        if r.returncode != 0 or not self.mounted:
            raise RuntimeError(f"{' '.join(cmd)}: {(r.stderr or r.stdout).strip()}")
        for sub in ("upper", "work"):
            os.mkdir(os.path.join(self.dir, sub))

    def loop_devices(self):
        """The loop devices backed by the image (`losetup -j`)."""
        r = run(["losetup", "-j", self.image], check=False, capture_output=True, text=True)
        return [ln.split(":", 1)[0] for ln in r.stdout.splitlines() if ln.strip()]

    def remove(self):
        """Unmount it (after the union mount on it is gone), release its
        loop device and delete the image; False if it is still mounted."""
        # (mountinfo too: a signal may have come between mount and record.)
        if self.mounted or self.dir in mountpoints():
            for _ in range(5):  # busy for a moment? retry
                r = run(["umount", self.dir], check=False, capture_output=True, text=True)
                if self.dir not in mountpoints():
                    break
                time.sleep(0.2)
            if self.dir in mountpoints():
                log(f"bench: ERROR: umount {self.dir}: {r.stderr.strip()}")
                return False
            self.mounted = False
        # mount -o loop sets autoclear: the device goes with the last
        # unmount, perhaps a moment later. Detach it if it stays.
        end = time.monotonic() + 2
        while self.loop_devices() and time.monotonic() < end:
            time.sleep(0.1)
        for dev in self.loop_devices():
            r = run(["losetup", "-d", dev], check=False, capture_output=True, text=True)
            if r.returncode != 0:
                log(f"bench: losetup -d {dev} ({self.image}): {r.stderr.strip()}")
        try:
            os.unlink(self.image)
        except FileNotFoundError:
            pass
        return True


# BENCH_ONLY=REGEX runs only the workloads whose name matches (quick checks).
ONLY = os.environ.get("BENCH_ONLY")
if ONLY:
    WORKLOADS = [w for w in WORKLOADS if re.search(ONLY, w.name)]
RUN_MEMORY = not ONLY or re.search(ONLY, MEMORY)


# ---------------------------------------------------------------- the run


def install_fuse_overlayfs2():
    """fuse-overlayfs 2.0's binary: built once into FO2_ROOT with cargo
    install (BENCH_FO2=0: never try); None, said in one line, if that fails
    (a failure is remembered in FO2_ROOT, delete it to try again)."""
    fo2 = os.path.join(FO2_ROOT, "bin", "fuse-overlayfs")
    failed = os.path.join(FO2_ROOT, "install-failed.log")
    if os.access(fo2, os.X_OK):
        return fo2
    if os.environ.get("BENCH_FO2") == "0" or os.path.exists(failed) or not shutil.which("cargo"):
        return None
    log(f"building fuse-overlayfs 2.0 once into {FO2_ROOT} (cargo install; a few minutes)")
    os.makedirs(FO2_ROOT, exist_ok=True)
    try:
        r = subprocess.run(["cargo", "install", "--locked", "fuse-overlayfs", "--version", "2.0.0",
                            "--root", FO2_ROOT], stdin=subprocess.DEVNULL, capture_output=True,
                           text=True, timeout=3600)
        err, ok = r.stderr, r.returncode == 0
    except subprocess.TimeoutExpired:
        err, ok = "timed out after an hour", False
    if not ok or not os.access(fo2, os.X_OK):
        with open(failed, "w") as f:
            f.write(err)
        log(f"fuse-overlayfs 2.0: cargo install failed, see {failed}")
        return None
    return fo2


class Bench:
    def __init__(self, binary, reps):
        self.bin = binary
        self.reps = reps
        self.tmp = None
        self.mounts = []  # on l2:l1:l0
        self.mounts128 = []  # on the 128-layer stacks
        self.need_wide = RUN_MEMORY or any(w.fn in USE_WIDE for w in WORKLOADS)
        self.need_s128 = any(w.stack == "s128" for w in WORKLOADS)
        self.fuse_overlayfs = shutil.which("fuse-overlayfs")
        # fuse-overlayfs 2.0 (the Rust rewrite), built once with
        # `cargo install fuse-overlayfs --version 2.0.0 --root FO2_ROOT`.
        self.fuse_overlayfs2 = install_fuse_overlayfs2()
        self.rootfs_tar = None

    def setup(self):
        self.tmp = tempfile.mkdtemp(prefix="layerfs-bench.")
        t0 = time.perf_counter()
        stack = os.path.join(self.tmp, "stack")
        make_stack(stack, self.reps)
        self.rootfs_tar = os.path.join(self.tmp, "rootfs.tar")
        src = next(p for p in ROOTFS_SOURCES if os.path.isdir(p))
        run(["tar", "-cf", self.rootfs_tar, "-C", os.path.dirname(src), os.path.basename(src)],
            capture_output=True)
        _, n = sh(f"tar -tf {self.rootfs_tar} | wc -l")
        log(f"rootfs-like tar: {src}, {n.strip()} entries, "
            f"{os.path.getsize(self.rootfs_tar) / MiB:.0f} MiB")
        have = {"fuse-overlayfs": self.fuse_overlayfs, "fuse-overlayfs-2": self.fuse_overlayfs2}
        impls = [i for i in IMPLS if have.get(i, True)]
        variants = [(i, "rw") for i in impls] + [("kernel", "ro"), ("layerfs", "ro")]
        t_copy = time.perf_counter()

        def copy(base, mode):
            os.makedirs(base)
            for layer in ("l0", "l1", "l2"):
                if mode == "rw":
                    run(["cp", "-a", os.path.join(stack, layer), base])
                else:  # the read workloads use tree/ and big/ only
                    os.mkdir(os.path.join(base, layer))
                    shutil.copystat(os.path.join(stack, layer), os.path.join(base, layer))
                    for sub in ("tree", "big", "hl", "hl2"):
                        src = os.path.join(stack, layer, sub)
                        if os.path.lexists(src):
                            run(["cp", "-a", src, os.path.join(base, layer)])
            if mode == "rw" and self.need_wide:  # built again for each: no shared inodes
                make_wide([os.path.join(base, layer) for layer in ("l0", "l1", "l2")])

        jobs = []
        for impl, mode in variants:
            base = os.path.join(self.tmp, f"{impl}-{mode}")
            jobs.append(lambda base=base, mode=mode: copy(base, mode))
            self.mounts.append(Mount(self, impl, mode, base))
            if self.need_s128:
                base128 = os.path.join(self.tmp, f"s128-{impl}-{mode}")
                jobs.append(lambda base128=base128: make_stack128(base128))
                self.mounts128.append(Mount(self, impl, mode, base128, layers128()))
        in_children(jobs)  # each variant at once: the disk waits overlap
        t_copy = time.perf_counter() - t_copy
        for m in self.mounts + self.mounts128:
            os.mkdir(m.mnt)
        self.make_uppers([m for m in self.mounts + self.mounts128 if m.mode == "rw"])
        shutil.rmtree(stack)
        log(f"stack built and copied {len(self.mounts)}x in {time.perf_counter() - t0:.1f}s "
            f"(the copies {t_copy:.1f}s) under {self.tmp}"
            + (f" (with wide/, {N_WIDE} entries, in the rw ones)" if self.need_wide else "")
            + (f"; {len(self.mounts128)} stacks of 128 layers" if self.need_s128 else ""))
        t0 = time.perf_counter()
        for m in self.mounts + self.mounts128:
            m.mount()
        self.check_same_trees(self.mounts)
        if self.mounts128:
            self.check_same_trees(self.mounts128)
        log(f"mounted and compared in {time.perf_counter() - t0:.1f}s")

    def make_uppers(self, mounts):
        """Each writable mount's upper and work dir on an UpperFs of its
        own; plain dirs in its base (as before) if the first cannot be
        made (no mkfs.ext4, no loop devices), said in one line."""
        why = None if shutil.which("mkfs.ext4") else "no mkfs.ext4"
        need = self.reps * (os.path.getsize(self.rootfs_tar) + UPPER_PER_REP)
        gib = max(UPPER_FS_GIB, -(-2 * need // (1 << 30)))  # twice that, rounded up
        for m in mounts:
            if not why:
                fs = UpperFs(m.base, gib)
                m.upper_fs = fs  # cleanup removes it, whatever happens next
                try:
                    fs.make()
                    m.upper, m.work = "fresh/upper", "fresh/work"
                    continue
                except RuntimeError as e:
                    if m is not mounts[0]:
                        raise
                    why = str(e)
                    if not fs.remove():
                        raise RuntimeError(f"cannot remove {fs.dir}") from e
                    m.upper_fs = None
            os.mkdir(os.path.join(m.base, m.upper))
            os.mkdir(os.path.join(m.base, m.work))
        if not mounts:
            return
        if why:
            log(f"uppers: plain dirs on the filesystem of {self.tmp} "
                f"(a fresh ext4 each could not be made: {why})")
        else:
            log(f"uppers: a fresh {gib} GiB ext4 per writable mount "
                f"(loop, {len(mounts)} of them)")

    def check_same_trees(self, mounts):
        """Every mount must show the same tree, or the numbers mean nothing.
        wide/ by its names only (a stat of 100 000 entries per mount would
        cost more than the rest of the setup; its rows compare counts)."""
        listings = {}
        count = {}
        for m in mounts:
            # (find's status is not checked: the kernel lists the whiteouts
            # of tree/d03/e05, opaque in the top lower layer and so not
            # merged, and its lstat of them fails with ENOENT.)
            _, out = sh(f"cd {m.mnt} && {{ find . -path ./wide -prune -o -printf '%y %s %p\\n'; "
                        f"if [ -d wide ]; then ls -f wide | sed 's|^|wide/|'; fi; }} 2>/dev/null")
            lines = sorted(out.splitlines())
            digest = hashlib.md5("\n".join(lines).encode()).hexdigest()
            listings.setdefault(m.mode, {}).setdefault(digest, []).append(m.label)
            count[m.label] = len(lines)
        for mode, sums in listings.items():
            if len(sums) != 1:
                log(f"bench: WARNING: the {mode} mounts show different trees: {list(sums.values())}")
        same = "yes" if all(len(s) == 1 for s in listings.values()) else "NO"
        what = "128-layer mount" if mounts is self.mounts128 else "mount"
        log(f"each {what} shows {count[mounts[0].label]} entries ({mounts[0].label}); "
            f"identical trees: {same}")

    def measure(self):
        results = {}  # (row, label) -> [seconds or error name]
        outputs = {}  # (workload, mode) -> {label: stdout} (sanity check)
        for w_i, w in enumerate(WORKLOADS):
            t_w = time.perf_counter()
            mounts = self.mounts128 if w.stack == "s128" else self.mounts
            ms = [m for m in mounts if m.mode in w.modes]
            if w.when in ("warm", "fresh"):
                for m in ms:  # an untimed run: caches filled
                    w.fn(m, 0)
            for rep in range(self.reps):
                # Rotate the order so no implementation always goes first.
                order = ms[rep % len(ms) :] + ms[: rep % len(ms)]
                for m in order:
                    if w.when in ("cold", "fresh"):
                        m.remount()
                    if w.when == "cold":
                        drop_caches()
                    dt, out, *side = w.fn(m, rep)
                    results.setdefault((w.name, m.label), []).append(dt)
                    for row, v in (side[0] if side else {}).items():
                        results.setdefault((row, m.label), []).append(v)
                    outputs.setdefault((w.name, m.mode), {})[m.label] = out.strip()
                    m.sample_hwm()
            for (wname, mode), outs in outputs.items():
                if wname == w.name and len(set(outs.values())) > 1:
                    log(f"bench: WARNING: {w.name} [{mode}]: outputs differ: {outs}")
            log(f"  [{w_i + 1}/{len(WORKLOADS)}] {w.name}: {time.perf_counter() - t_w:.1f}s")
        return results

    def memory(self):
        """Daemon RSS per inode the kernel looked up: a fresh mount (the
        lower layers still in the kernel's caches: the walk is quick), a
        stat of every entry of wide/, then `echo 2 > drop_caches` (the
        kernel forgets those dentries and inodes and sends FORGET), then the
        same walk again (does the daemon reuse what it freed?). Lines of text."""
        lines = []
        walk = "find {}/wide -printf '%s %m\\n' | wc -l"
        for m in self.mounts:
            if m.mode != "rw" or m.impl == "kernel":
                continue
            m.remount()
            before = vm_rss_kib(m.pid)
            _, n = sh(walk.format(m.mnt))
            n = int(n)
            after = vm_rss_kib(m.pid)
            with open("/proc/sys/vm/drop_caches", "w") as f:
                f.write("2\n")
            # FORGETs arrive asynchronously: wait until RSS stops falling.
            forgot, t_end = vm_rss_kib(m.pid), time.monotonic() + 5
            while time.monotonic() < t_end:
                time.sleep(0.5)
                now = vm_rss_kib(m.pid)
                if now is None or forgot is None or now >= forgot:
                    break
                forgot = now
            sh(walk.format(m.mnt))
            again = vm_rss_kib(m.pid)
            m.sample_hwm()
            if None in (before, after, forgot, again):
                lines.append(f"{m.label}: daemon RSS unknown")
                continue

            def per(kib):
                return f"{kib / 1024:.1f} MiB, {(kib - before) / n:.2f} KiB per inode"

            lines.append(
                f"{m.label} daemon RSS over {n} lookups in wide/: {before / 1024:.1f} MiB "
                f"on a fresh mount; after the walk {per(after)}; after drop_caches 2 "
                f"{per(forgot)}; after the same walk again {per(again)}")
        return lines

    def cleanup(self):
        t0 = time.perf_counter()
        ok = True
        for m in reversed(self.mounts + self.mounts128):
            try:
                ok = m.umount() and ok
            except Exception as e:  # keep going: every mount must go
                log(f"bench: unmounting {m.mnt}: {e}")
                ok = False
        # The uppers' filesystems, once the union mounts on them are gone.
        for m in reversed(self.mounts + self.mounts128):
            if m.upper_fs and not m.mounted:
                try:
                    ok = m.upper_fs.remove() and ok
                except Exception as e:  # keep going: every mount must go
                    log(f"bench: unmounting {m.upper_fs.dir}: {e}")
                    ok = False
            elif m.upper_fs:
                log(f"bench: ERROR: {m.mnt} is still mounted, so is {m.upper_fs.dir}")
        # Reap whatever else we adopted as subreaper (the mount commands'
        # intermediate processes).
        while True:
            try:
                pid, _ = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                break
        log(f"  unmounted in {time.perf_counter() - t0:.1f}s")
        if self.tmp:
            left = [p for p in mountpoints() if p.startswith(self.tmp + "/")]
            if left:
                log(f"bench: ERROR: still mounted, not removing {self.tmp}: {left}")
                return False
            if os.environ.get("BENCH_KEEP_TMP") == "1":
                log(f"bench: kept {self.tmp}")
            else:
                # One rm per variant at once: after drop_caches most of
                # these inodes are read from disk again, so waiting on the
                # disk in parallel is the quicker way.
                rms = [subprocess.Popen(["rm", "-rf", "--one-file-system",
                                         os.path.join(self.tmp, e)], stdin=subprocess.DEVNULL)
                       for e in os.listdir(self.tmp)]
                for p in rms:
                    p.wait()
                run(["rm", "-rf", "--one-file-system", self.tmp], check=False)
        return ok


def fmt_time(v):
    if isinstance(v, str):
        return v
    if v < 1e-3:
        return f"{v * 1e6:.0f} us"
    if v < 1:
        return f"{v * 1e3:.1f} ms"
    return f"{v:.2f} s"


def median(vals):
    errs = [v for v in vals if isinstance(v, str)]
    if errs:
        return errs[0]
    return statistics.median(vals)


def ratio(a, b):
    if a is None or b is None or isinstance(a, str) or isinstance(b, str) or b == 0:
        return "-"
    return f"{a / b:.2f}"


def report(bench, results, memory_lines):
    rows = []
    scaling = []  # summary lines: 2*T1/T2 per implementation
    for w in WORKLOADS:
        for name, mode in [(w.side, m) for m in w.modes if w.side] + [(w.name, m) for m in w.modes]:
            med = {}
            for impl in IMPLS:
                vals = results.get((name, f"{impl}-{mode}"))
                med[impl] = median(vals) if vals else None
            if name == w.name and w.side:
                t1 = {i: median(results[(w.side, f"{i}-{mode}")])
                      for i in IMPLS if (w.side, f"{i}-{mode}") in results}
                ro = " [ro]" if mode == "ro" else ""
                scaling.append(f"scaling, 2*T1/T2 of \"{w.name}\"{ro}: " + ", ".join(
                    f"{i} {2 * t1[i] / med[i]:.2f}" for i in IMPLS
                    if isinstance(t1.get(i), float) and isinstance(med[i], float)))
            label = name if mode == "rw" else f"{name} [ro]"
            rows.append([
                label,
                *(fmt_time(med[i]) if med[i] is not None else "-" for i in IMPLS),
                ratio(med["layerfs"], med["kernel"]),
                ratio(med["layerfs"], med["fuse-overlayfs"]),
                ratio(med["fuse-overlayfs-2"], med["kernel"]),
                ratio(med["layerfs"], med["fuse-overlayfs-2"]),
            ])
    head = ["workload", "kernel", "fuse-overlayfs", "fuse-overlayfs 2.0", "layerfs",
            "layerfs/kernel", "layerfs/fuse-ovl", "fuse-ovl 2.0/kernel", "layerfs/fuse-ovl 2.0"]
    widths = [max(len(r[i]) for r in rows + [head]) for i in range(len(head))]

    def line(r):
        return "| " + " | ".join(
            c.ljust(widths[i]) if i == 0 else c.rjust(widths[i]) for i, c in enumerate(r)
        ) + " |"

    log("")
    log(f"medians of {bench.reps} run{'s' if bench.reps > 1 else ''}; ratios < 1 mean layerfs is faster "
        "([ro] = read-only mounts, no fuse-overlayfs)")
    log(line(head))
    log("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for r in rows:
        log(line(r))
    log("")
    for s in scaling + memory_lines:
        log(s)
    for m in bench.mounts:
        if m.impl != "kernel":
            log(f"peak RSS (VmHWM) of the {m.label} daemon: "
                f"{m.hwm / 1024:.1f} MiB" if m.hwm else f"peak RSS of {m.label}: unknown")
    if os.environ.get("BENCH_VERBOSE") == "1":
        log("")
        for (name, label), vals in results.items():
            log(f"{name} / {label}: {', '.join(fmt_time(v) for v in vals)}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bin", default="target/release/layerfs")
    args = ap.parse_args()
    reps = int(os.environ.get("BENCH_REPS", "5"))
    if not 1 <= reps <= 9:
        die("BENCH_REPS must be 1..9")
    if os.geteuid() != 0:
        die("must run as root (it mounts the kernel's overlayfs and drops caches)")
    binary = os.path.abspath(args.bin)
    if not os.access(binary, os.X_OK):
        die(f"{binary}: not built (run `make build`)")
    if not os.path.exists("/dev/fuse"):
        die("/dev/fuse is missing")
    if not shutil.which("fusermount3"):
        die("fusermount3 is missing (apt-get install -y fuse3)")

    # Become the subreaper of the daemons, so they can be waited for.
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER

    bench = Bench(binary, reps)
    fo_ver = "-"
    if bench.fuse_overlayfs:
        r = run([bench.fuse_overlayfs, "--version"], check=False, capture_output=True, text=True)
        m = re.search(r"fuse-overlayfs: version (\S+)", r.stdout + r.stderr)
        fo_ver = m[1] if m else "?"
    log(f"layerfs bench, {time.strftime('%Y-%m-%d %H:%M %Z')}, kernel {os.uname().release}, "
        f"{os.cpu_count()} CPUs, fuse-overlayfs {fo_ver}"
        f"{' and 2.0' if bench.fuse_overlayfs2 else ''}, {reps} runs per workload")
    if not bench.fuse_overlayfs:
        log("fuse-overlayfs not found (apt-get install -y fuse-overlayfs): skipping its column")
    if not bench.fuse_overlayfs2:
        log(f"fuse-overlayfs 2.0 not in {FO2_ROOT} (cargo install fuse-overlayfs --version 2.0.0 "
            f"--root {FO2_ROOT}): skipping its column")

    def on_signal(sig, _frame):
        raise SystemExit(128 + sig)

    for s in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(s, on_signal)
    # (SIGINT raises KeyboardInterrupt, unless the caller ignores it.)

    status = 0
    t0 = time.perf_counter()
    try:
        bench.setup()
        results = bench.measure()
        memory_lines = bench.memory() if RUN_MEMORY else []
        report(bench, results, memory_lines)
    except (Exception, KeyboardInterrupt) as e:
        log(f"bench: {type(e).__name__}: {e}")
        status = 1
    except SystemExit as e:
        log(f"bench: stopped by signal {e.code - 128}")
        status = e.code
    finally:
        for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(s, signal.SIG_IGN)
        t_c = time.perf_counter()
        if not bench.cleanup():
            status = 1
        log(f"cleaned up in {time.perf_counter() - t_c:.1f}s")
    log(f"total {time.perf_counter() - t0:.0f}s")
    return status


if __name__ == "__main__":
    sys.exit(main())
