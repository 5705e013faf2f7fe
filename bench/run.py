#!/usr/bin/env python3
"""layerfs benchmark: layerfs against the kernel's overlayfs and
fuse-overlayfs, in the same run, on identical copies of one synthetic layer
stack. Prints medians and ratios; see docs/performance.md.

Usage (as root):  python3 bench/run.py [--bin target/release/layerfs]
Knobs (environment): BENCH_REPS (default 5, 1..9), BENCH_VERBOSE=1 (every
repetition's time), BENCH_KEEP_TMP=1 (leave the temp dir, never a mount),
BENCH_ONLY=REGEX (only the workloads whose name matches),
BENCH_LAYERFS_THREADS=N (layerfs mount --threads N), BENCH_FO2=0 (never
build fuse-overlayfs 2.0), BENCH_FO2_ROOT=DIR (where it is built).

Everything it mounts is unmounted and every daemon it started is waited for
before it exits, also on an error or a signal; the temp dir is removed only
once nothing is mounted below it.
"""

import argparse
import ctypes
import errno
import os
import random
import re
import shutil
import signal
import stat
import statistics
import subprocess
import sys
import tempfile
import time

MiB = 1 << 20
CMD_TIMEOUT = 300  # seconds; a hung mount must not hang `make bench`

# Sizes of the synthetic stack (one rep subtree per repetition).
BIG_READ = 64 * MiB  # big/blob: sequential read
BIG_COPYUP = 32 * MiB  # cubig<i>/blob: copy-up of a large file
N_COPYUP = 200  # cu<i>/: small lower files appended to
N_CREATE_DIRS, N_CREATE_FILES = 10, 100  # new<i>/: 1000 new 4 KiB files
N_RENAME = 1000  # ren<i>/src: entries in the renamed lower directory
N_RM_DIRS, N_RM_L0, N_RM_L1 = 10, 70, 30  # rm<i>/: 1000 files in 10 dirs
N_CW = 4000  # cw<i>/: new 4 KiB files made (and unlinked) in one upper-only dir
N_CHMOD = 2000  # chm<i>/: lower files chmod'ed (copy-up of metadata)
N_HARDLINKED = 1000  # hl/ and hl2/: two names of each of these lower files
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


# ---------------------------------------------------------------- the stack


def make_stack(root, reps):
    """Three lower layers l0 (bottom) .. l2 (top), overlayfs whiteouts."""
    rng = random.Random(42)
    pool = rng.randbytes(MiB)

    def blob(n):
        off = rng.randrange(0, MiB - n) if n < MiB else 0
        return pool[off : off + n]

    def write(path, data):
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as f:
            f.write(data)

    def write_big(path, size):
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as f:
            for i in range(size // MiB):
                # Different data per MiB so nothing dedups or compresses.
                f.write(pool[i % 997 :] + pool[: i % 997])

    def whiteout(path):
        os.makedirs(os.path.dirname(path), exist_ok=True)
        os.mknod(path, stat.S_IFCHR | 0o000, os.makedev(0, 0))

    l0, l1, l2 = (os.path.join(root, f"l{i}") for i in range(3))
    for layer in (l0, l1, l2):
        os.makedirs(layer)

    # tree/: a few thousand small files across nested, merged dirs.
    for a in range(12):
        for b in range(10):
            d = f"tree/d{a:02}/e{b:02}"
            for c in range(15):
                write(f"{l0}/{d}/f{c:02}", blob(rng.randint(64, 8192)))
            for c in range(10):
                write(f"{l1}/{d}/g{c:02}", blob(rng.randint(64, 8192)))
            for c in range(8):
                write(f"{l2}/{d}/h{c:02}", blob(rng.randint(64, 8192)))
            for c in range(0, 15, 7):  # l1 overrides some l0 files
                write(f"{l1}/{d}/f{c:02}", blob(rng.randint(64, 8192)))
            for c in range(3, 15, 5):  # l1 deletes some l0 files
                whiteout(f"{l1}/{d}/f{c:02}")
            for c in range(1, 10, 4):  # l2 deletes some l1 files
                whiteout(f"{l2}/{d}/g{c:02}")
    # l2 makes one dir opaque and deletes a whole lower dir.
    opq = f"{l2}/tree/d03/e05"
    os.setxattr(opq, "trusted.overlay.opaque", b"y")
    shutil.rmtree(f"{l2}/tree/d11/e09")
    whiteout(f"{l2}/tree/d11/e09")

    write_big(f"{l0}/big/blob", BIG_READ)
    write(f"{l1}/big/README", b"big/ is a merged dir\n")

    for i in range(reps):
        write_big(f"{l0}/cubig{i}/blob", BIG_COPYUP)
        for k in range(N_COPYUP):
            write(f"{l0}/cu{i}/f{k:03}", blob(4096))
        for k in range(0, N_COPYUP, 4):
            write(f"{l1}/cu{i}/f{k:03}", blob(4096))
        n0 = N_RENAME * 6 // 10
        for k in range(n0 - 100):
            write(f"{l0}/ren{i}/src/f{k:04}", blob(rng.randint(64, 4096)))
        for k in range(100):
            write(f"{l0}/ren{i}/src/sub/f{k:03}", blob(256))
        for k in range(N_RENAME - n0):
            write(f"{l1}/ren{i}/src/g{k:04}", blob(rng.randint(64, 4096)))
        for j in range(N_RM_DIRS):
            for k in range(N_RM_L0):
                write(f"{l0}/rm{i}/d{j}/f{k:03}", blob(rng.randint(64, 4096)))
            for k in range(N_RM_L1):
                write(f"{l1}/rm{i}/d{j}/g{k:03}", blob(rng.randint(64, 4096)))
            whiteout(f"{l1}/rm{i}/d{j}/f000")
        for k in range(N_CHMOD):
            write(f"{l0}/chm{i}/f{k:04}", blob(1024))
    # Hard-linked lower files (a store that dedups by links): two names each.
    for k in range(N_HARDLINKED):
        write(f"{l0}/hl/f{k:04}", blob(512))
        os.makedirs(f"{l0}/hl2", exist_ok=True)
        os.link(f"{l0}/hl/f{k:04}", f"{l0}/hl2/f{k:04}")
    return [l2, l1, l0]  # top first


# ---------------------------------------------------------------- processes


def run(cmd, check=True, **kw):
    return subprocess.run(
        cmd, check=check, timeout=CMD_TIMEOUT, stdin=subprocess.DEVNULL, **kw
    )


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


def vm_hwm_kib(pid):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


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


def drop_caches():
    os.sync()
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("3\n")


# ---------------------------------------------------------------- mounts


class Mount:
    """One mount under test: an implementation, rw or ro, on its own copy."""

    def __init__(self, bench, impl, mode, base):
        self.bench, self.impl, self.mode, self.base = bench, impl, mode, base
        self.mnt = os.path.join(base, "mnt")
        self.lowers = [os.path.join(base, f"l{i}") for i in (2, 1, 0)]
        self.upper = os.path.join(base, "upper")
        self.work = os.path.join(base, "work")
        self.pid = None
        self.hwm = 0  # peak VmHWM over this variant's daemons, KiB
        self.mounted = False

    @property
    def label(self):
        return f"{self.impl}-{self.mode}"

    def options(self):
        o = "lowerdir=" + ":".join(self.lowers)
        if self.mode == "rw":
            o += f",upperdir={self.upper},workdir={self.work}"
        return o

    def mount(self):
        o = self.options()
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
        r = run(cmd, check=False, capture_output=True, text=True)
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


# ---------------------------------------------------------------- workloads


def sh(cmd):
    """Run a bash snippet; its wall time and stdout."""
    t0 = time.perf_counter()
    r = run(["bash", "-c", cmd], capture_output=True, text=True, check=False)
    dt = time.perf_counter() - t0
    if r.returncode != 0:
        raise RuntimeError(f"`{cmd}` failed ({r.returncode}): {r.stderr.strip()[:300]}")
    return dt, r.stdout


def w_stat_all(m, rep):
    return sh(f"find {m.mnt}/tree -printf '%s %m\\n' | wc -l")


def w_read_small(m, rep):
    return sh(f"find {m.mnt}/tree -type f -exec cat {{}} + | wc -c")


def w_read_big(m, rep):
    return sh(f"dd if={m.mnt}/big/blob of=/dev/null bs=1M status=none")


def w_copyup_small(m, rep):
    return sh(f'for f in {m.mnt}/cu{rep}/*; do printf x >> "$f"; done')


def w_copyup_big(m, rep):
    return sh(f"printf x >> {m.mnt}/cubig{rep}/blob")


def w_create(m, rep):
    return sh(
        f"d={m.mnt}/new{rep}; mkdir $d; data=$(printf '%4096s' ''); "
        f"for j in {{1..{N_CREATE_DIRS}}}; do mkdir $d/$j; "
        f"for k in {{1..{N_CREATE_FILES}}}; do printf '%s' \"$data\" > $d/$j/$k; done; done"
    )


def w_rename(m, rep):
    # rename(2) itself: mv would fall back to copying on EXDEV.
    src, dst = f"{m.mnt}/ren{rep}/src", f"{m.mnt}/ren{rep}/dst"
    os.stat(src)  # the lookup is not what we time
    t0 = time.perf_counter()
    try:
        os.rename(src, dst)
    except OSError as e:
        return (errno.errorcode.get(e.errno, str(e.errno)), "")
    return time.perf_counter() - t0, ""


def w_rm(m, rep):
    return sh(f"rm -rf {m.mnt}/rm{rep}")


def timed(fn):
    """Time a call in-process; (seconds, its output)."""
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def w_create_many(m, rep):
    d = f"{m.mnt}/cw{rep}"
    os.mkdir(d)  # upper-only: no lower holds it
    data = b"x" * 4096
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC

    def go():
        for k in range(N_CW):
            fd = os.open(f"{d}/f{k:04}", flags, 0o644)
            os.write(fd, data)
            os.close(fd)
        return str(len(os.listdir(d)))

    return timed(go)


def w_unlink_many(m, rep):
    d = f"{m.mnt}/cw{rep}"
    names = [f"{d}/f{k:04}" for k in range(N_CW)]

    def go():
        for n in names:
            os.unlink(n)
        return str(len(os.listdir(d)))

    return timed(go)


def w_untar(m, rep):
    return sh(f"mkdir {m.mnt}/untar{rep} && tar -xf {m.bench.rootfs_tar} -C {m.mnt}/untar{rep}")


def w_rm_untarred(m, rep):
    return sh(f"rm -rf {m.mnt}/untar{rep}")


def w_chmod_lower(m, rep):
    names = [f"{m.mnt}/chm{rep}/f{k:04}" for k in range(N_CHMOD)]

    def go():
        for n in names:
            os.chmod(n, 0o600)
        return ""

    return timed(go)


def w_stat_hardlinked(m, rep):
    names = [f"{m.mnt}/hl/f{k:04}" for k in range(N_HARDLINKED)]

    def go():
        for n in names:
            os.lstat(n)
        return ""

    return timed(go)


# name, function, cold (fresh mount + dropped caches before each run), modes
WORKLOADS = [
    ("stat every entry, cold", w_stat_all, True, ("rw", "ro")),
    ("stat every entry, warm", w_stat_all, False, ("rw", "ro")),
    ("read small files, cold", w_read_small, True, ("rw", "ro")),
    ("read small files, warm", w_read_small, False, ("rw", "ro")),
    ("read 64 MiB file, cold", w_read_big, True, ("rw", "ro")),
    ("read 64 MiB file, warm", w_read_big, False, ("rw", "ro")),
    (f"copy-up: append to {N_COPYUP} files", w_copyup_small, False, ("rw",)),
    ("copy-up: append to 32 MiB file", w_copyup_big, False, ("rw",)),
    (f"create {N_CREATE_DIRS * N_CREATE_FILES} x 4 KiB files", w_create, False, ("rw",)),
    (f"rename lower dir ({N_RENAME} entries)", w_rename, False, ("rw",)),
    (f"rm -rf lower tree ({N_RM_DIRS * (N_RM_L0 + N_RM_L1)} files)", w_rm, False, ("rw",)),
    (f"create+write 4 KiB+close, {N_CW} files", w_create_many, False, ("rw",)),
    (f"unlink those {N_CW} files", w_unlink_many, False, ("rw",)),
    ("untar a rootfs-like tree", w_untar, False, ("rw",)),
    ("rm -rf of it", w_rm_untarred, False, ("rw",)),
    (f"chmod of {N_CHMOD} lower files", w_chmod_lower, False, ("rw",)),
    (f"stat {N_HARDLINKED} hard-linked lower files, warm", w_stat_hardlinked, False, ("rw", "ro")),
]
# BENCH_ONLY=REGEX runs only the workloads whose name matches (quick checks).
if os.environ.get("BENCH_ONLY"):
    WORKLOADS = [w for w in WORKLOADS if re.search(os.environ["BENCH_ONLY"], w[0])]
WARMED = (w_stat_all, w_read_small, w_read_big, w_stat_hardlinked)


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
        self.mounts = []
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
        for impl, mode in variants:
            base = os.path.join(self.tmp, f"{impl}-{mode}")
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
            os.mkdir(os.path.join(base, "mnt"))
            if mode == "rw":
                os.mkdir(os.path.join(base, "upper"))
                os.mkdir(os.path.join(base, "work"))
            self.mounts.append(Mount(self, impl, mode, base))
        shutil.rmtree(stack)
        log(f"stack built and copied {len(self.mounts)}x in {time.perf_counter() - t0:.1f}s "
            f"under {self.tmp}")
        t0 = time.perf_counter()
        for m in self.mounts:
            m.mount()
        self.check_same_trees()
        log(f"mounted and compared in {time.perf_counter() - t0:.1f}s")

    def check_same_trees(self):
        """Every mount must show the same tree, or the numbers mean nothing."""
        listings = {}
        for m in self.mounts:
            _, out = sh(f"cd {m.mnt} && find . -printf '%y %s %p\\n' | LC_ALL=C sort | md5sum")
            listings.setdefault(m.mode, {}).setdefault(out.split()[0], []).append(m.label)
        for mode, sums in listings.items():
            if len(sums) != 1:
                log(f"bench: WARNING: the {mode} mounts show different trees: {list(sums.values())}")
        _, n = sh(f"find {self.mounts[0].mnt} | wc -l")
        _, nf = sh(f"find {self.mounts[0].mnt}/tree -type f | wc -l")
        log(f"each mount shows {n.strip()} entries ({nf.strip()} small files under tree/); "
            f"identical trees: {'yes' if all(len(s) == 1 for s in listings.values()) else 'NO'}")

    def measure(self):
        results = {}  # (workload, label) -> [seconds or error name]
        outputs = {}  # (workload, mode) -> {label: stdout} (sanity check)
        for w_i, (name, fn, cold, modes) in enumerate(WORKLOADS):
            t_w = time.perf_counter()
            ms = [m for m in self.mounts if m.mode in modes]
            if not cold:
                for m in ms:  # warm-up run, for the read workloads
                    if fn in WARMED:
                        fn(m, 0)
            for rep in range(self.reps):
                # Rotate the order so no implementation always goes first.
                order = ms[rep % len(ms) :] + ms[: rep % len(ms)]
                for m in order:
                    if cold:
                        m.remount()
                        drop_caches()
                    dt, out = fn(m, rep)
                    results.setdefault((name, m.label), []).append(dt)
                    outputs.setdefault((name, m.mode), {})[m.label] = out.strip()
                    m.sample_hwm()
            for (wname, mode), outs in outputs.items():
                if wname == name and len(set(outs.values())) > 1:
                    log(f"bench: WARNING: {name} [{mode}]: outputs differ: {outs}")
            log(f"  [{w_i + 1}/{len(WORKLOADS)}] {name}: {time.perf_counter() - t_w:.1f}s")
        return results

    def cleanup(self):
        t0 = time.perf_counter()
        ok = True
        for m in reversed(self.mounts):
            try:
                ok = m.umount() and ok
            except Exception as e:  # keep going: every mount must go
                log(f"bench: unmounting {m.mnt}: {e}")
                ok = False
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


def report(bench, results):
    rows = []
    for name, _, _, modes in WORKLOADS:
        for mode in modes:
            med = {}
            for impl in IMPLS:
                vals = results.get((name, f"{impl}-{mode}"))
                med[impl] = median(vals) if vals else None
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
        report(bench, results)
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
