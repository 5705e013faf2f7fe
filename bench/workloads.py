"""The workloads of bench/run.py: each is called as fn(mount, rep) and
returns (seconds, output) -- or (seconds, output, {row: seconds}) for the
side rows of a workload that times two things (the concurrency rows) --
where output is compared between the implementations (counts, never times).
"""

import collections
import errno
import os
import subprocess
import time

from stack import (N_CHMOD, N_COPYUP, N_CREATE_DIRS, N_CREATE_FILES, N_CW, N_HARDLINKED,
                   N_LAYERS, N_RENAME, N_RM_DIRS, N_RM_L0, N_RM_L1, N_WIDE, lookups128)

CMD_TIMEOUT = 300  # seconds; a hung mount must not hang `make bench`
N_WRITERS_FILES = 2000  # files each of the two concurrent writers makes


def run(cmd, check=True, **kw):
    return subprocess.run(
        cmd, check=check, timeout=CMD_TIMEOUT, stdin=subprocess.DEVNULL, **kw
    )


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


def w_wide_readdir(m, rep):
    return sh(f"ls -f {m.mnt}/wide | wc -l")


def w_wide_stat(m, rep):
    return sh(f"find {m.mnt}/wide -printf '%s %m\\n' | wc -l")


def w_stat128(m, rep):
    names = [f"{m.mnt}/{p}" for p in lookups128()]

    def go():
        found = 0
        for n in names:
            try:
                os.lstat(n)
                found += 1
            except FileNotFoundError:
                pass
        return str(found)

    return timed(go)


def w_readdir128(m, rep):
    return sh(f"cd {m.mnt} && ls -f a? a?/b? | wc -l")


N_WALKS = 8  # each walker walks tree/ this many times (about 0.2 s warm)
WALK = f"for i in $(seq {N_WALKS}); do find {{mnt}}/tree -printf '%s %m\\n'; done | wc -l"


def walkers(m, k):
    """k walkers of the same tree at once; wall time until the last ends."""
    cmd = WALK.format(mnt=m.mnt)
    t0 = time.perf_counter()
    procs = [subprocess.Popen(["bash", "-c", cmd], stdin=subprocess.DEVNULL,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(k)]
    outs = []
    for p in procs:  # every one is waited for, even if one fails
        try:
            out, err = p.communicate(timeout=CMD_TIMEOUT)
        except subprocess.TimeoutExpired:
            p.kill()
            out, err = p.communicate()
        outs.append((p.returncode, out.strip(), err.strip()))
    dt = time.perf_counter() - t0
    for rc, _, err in outs:
        if rc != 0:
            raise RuntimeError(f"`{cmd}` failed ({rc}): {err[:300]}")
    return dt, " ".join(o for _, o, _ in outs)


def w_two_walkers(m, rep):
    """T1 (one walker alone) and T2 (two at once), in alternating order."""
    if rep % 2:
        t2, out2 = walkers(m, 2)
        t1, out1 = walkers(m, 1)
    else:
        t1, out1 = walkers(m, 1)
        t2, out2 = walkers(m, 2)
    return t2, f"{out1} / {out2}", {ONE_WALKER: t1}


def creators(dirs, n):
    """One forked process per directory, each creating+writing+closing n
    4 KiB files in it, started together; wall time until the last ends."""
    gos, pids = [], []
    for d in dirs:
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child: never returns into the bench
            code = 1
            try:
                os.close(w)
                os.read(r, 1)
                data = b"x" * 4096
                flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC
                for k in range(n):
                    fd = os.open(f"{d}/f{k:04}", flags, 0o644)
                    os.write(fd, data)
                    os.close(fd)
                code = 0
            finally:
                os._exit(code)
        os.close(r)
        gos.append(w)
        pids.append(pid)
    t0 = time.perf_counter()
    for w in gos:
        os.write(w, b"g")
        os.close(w)
    failed = 0
    for pid in pids:
        _, status = os.waitpid(pid, 0)
        failed += not (os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0)
    dt = time.perf_counter() - t0
    if failed:
        raise RuntimeError(f"{failed} of {len(dirs)} writers failed in {dirs}")
    return dt


def w_two_writers(m, rep):
    """T1 (one writer alone) and T2 (two at once, in two directories)."""
    base = f"{m.mnt}/wr{rep}"  # upper-only: no lower holds it
    one, a, b = f"{base}/one", f"{base}/a", f"{base}/b"
    for d in (one, a, b):
        os.makedirs(d)
    if rep % 2:
        t2 = creators([a, b], N_WRITERS_FILES)
        t1 = creators([one], N_WRITERS_FILES)
    else:
        t1 = creators([one], N_WRITERS_FILES)
        t2 = creators([a, b], N_WRITERS_FILES)
    out = " ".join(str(len(os.listdir(d))) for d in (one, a, b))
    return t2, out, {ONE_WRITER: t1}


# when: "cold" = fresh mount + dropped caches before each run; "fresh" =
# fresh mount only (the lower layers stay in the kernel's caches; one
# untimed run first fills them); "warm" = one untimed run first, then the
# timed runs on the same mount; "as is" = the writing workloads, each run
# in its own fresh subtree. stack: "main" (l2:l1:l0) or "s128" (128 layers).
# side: the name of the side row (T1) of a concurrency workload, whose main
# row is T2; the summary prints 2*T1/T2.
Workload = collections.namedtuple("Workload", "name fn when modes stack side",
                                  defaults=("main", None))
RW, BOTH = ("rw",), ("rw", "ro")
ONE_WALKER = f"one walker, {N_WALKS} x stat every entry, alone, warm (T1)"
ONE_WRITER = f"one writer, {N_WRITERS_FILES} files, alone (T1)"
WIDE = f"{N_WIDE // 1000}k-entry merged dir"
WORKLOADS = [
    Workload("stat every entry, cold", w_stat_all, "cold", BOTH),
    Workload("stat every entry, fresh mount, lower cached", w_stat_all, "fresh", BOTH),
    Workload("stat every entry, warm", w_stat_all, "warm", BOTH),
    Workload("read small files, cold", w_read_small, "cold", BOTH),
    Workload("read small files, warm", w_read_small, "warm", BOTH),
    Workload("read 64 MiB file, cold", w_read_big, "cold", BOTH),
    Workload("read 64 MiB file, warm", w_read_big, "warm", BOTH),
    Workload(f"copy-up: append to {N_COPYUP} files", w_copyup_small, "as is", RW),
    Workload("copy-up: append to 32 MiB file", w_copyup_big, "as is", RW),
    Workload(f"create {N_CREATE_DIRS * N_CREATE_FILES} x 4 KiB files", w_create, "as is", RW),
    Workload(f"rename lower dir ({N_RENAME} entries)", w_rename, "as is", RW),
    Workload(f"rm -rf lower tree ({N_RM_DIRS * (N_RM_L0 + N_RM_L1)} files)", w_rm, "as is", RW),
    Workload(f"create+write 4 KiB+close, {N_CW} files", w_create_many, "as is", RW),
    Workload(f"unlink those {N_CW} files", w_unlink_many, "as is", RW),
    Workload("untar a rootfs-like tree", w_untar, "as is", RW),
    Workload("rm -rf of it", w_rm_untarred, "as is", RW),
    Workload(f"chmod of {N_CHMOD} lower files", w_chmod_lower, "as is", RW),
    Workload(f"stat {N_HARDLINKED} hard-linked lower files, warm", w_stat_hardlinked, "warm",
             BOTH),
    Workload(f"{N_LAYERS} layers: stat 1000 paths, cold", w_stat128, "cold", BOTH, "s128"),
    Workload(f"{N_LAYERS} layers: readdir of 20 merged dirs, cold", w_readdir128, "cold", BOTH,
             "s128"),
    Workload(f"{WIDE}: readdir, cold", w_wide_readdir, "cold", RW),
    Workload(f"{WIDE}: readdir, warm", w_wide_readdir, "warm", RW),
    Workload(f"{WIDE}: stat every entry, cold", w_wide_stat, "cold", RW),
    Workload(f"{WIDE}: stat every entry, warm", w_wide_stat, "warm", RW),
    Workload(f"two walkers at once, {N_WALKS} x stat every entry each, warm (T2)", w_two_walkers,
             "warm", BOTH, side=ONE_WALKER),
    Workload(f"two writers, {N_WRITERS_FILES} files each, two dirs (T2)", w_two_writers,
             "as is", RW, side=ONE_WRITER),
]
USE_WIDE = (w_wide_readdir, w_wide_stat)  # need wide/ built
# The memory rows after the table (not a timed workload; BENCH_ONLY selects
# it by this name too).
MEMORY = "daemon memory per cached inode"
