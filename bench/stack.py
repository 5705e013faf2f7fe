"""The fixture layer stacks of bench/run.py, built at setup in its temp dir.

Every variant gets its own copy (cp -a, or built again by the same
deterministic code), so no two mounts and no two layers share an inode
unless a workload asks for it (hl/ and hl2/: two names of one file).
"""

import os
import random
import shutil
import stat

MiB = 1 << 20

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
# wide/: one merged directory of 100 000 visible empty files over l0..l2.
WIDE_L0, WIDE_L1, WIDE_L2 = 60000, 30000, 13000  # names made in each layer
WIDE_WHITEOUT_STEP = 30  # l1 whites out every 30th l0 name, l2 every 30th l1 name
N_WIDE = (WIDE_L0 - WIDE_L0 // WIDE_WHITEOUT_STEP) + (WIDE_L1 - WIDE_L1 // WIDE_WHITEOUT_STEP) + WIDE_L2
# The 128-layer stack: every layer holds the same 4 x 4 directories
# (a<i>/b<j>), and files in 4 of the 16 leaves; each layer from the third
# up whites out one file of the layer two below it.
N_LAYERS = 128
N128_FILES_PER_LEAF = 2  # per layer, in each of its 4 leaves: 8 files a layer
N128_LOOKUPS = 1000  # paths stat'ed, spread over all layers (whited-out ones too)


def whiteout(path):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    os.mknod(path, stat.S_IFCHR | 0o000, os.makedev(0, 0))


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


def make_wide(layers):
    """wide/ in the three layers l0, l1, l2 (dirs, bottom first): N_WIDE
    visible empty files, names spread over the layers, some whited out.
    One open/close per file through a directory fd (fast: a few seconds)."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
    ranges = [(0, WIDE_L0), (WIDE_L0, WIDE_L0 + WIDE_L1),
              (WIDE_L0 + WIDE_L1, WIDE_L0 + WIDE_L1 + WIDE_L2)]
    for i, (layer, (lo, hi)) in enumerate(zip(layers, ranges)):
        d = os.path.join(layer, "wide")
        os.makedirs(d)
        dfd = os.open(d, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            for k in range(lo, hi):
                os.close(os.open(f"e{k:06}", flags, 0o644, dir_fd=dfd))
            if i > 0:  # whiteouts of every 30th name of the layer below
                blo, bhi = ranges[i - 1]
                for k in range(blo, bhi, WIDE_WHITEOUT_STEP):
                    os.mknod(f"e{k:06}", stat.S_IFCHR | 0o000, os.makedev(0, 0), dir_fd=dfd)
        finally:
            os.close(dfd)


def leaves128():
    return [f"a{i}/b{j}" for i in range(4) for j in range(4)]


def names128():
    """Every file name the 128 layers make, as (layer, path), bottom first."""
    leaves = leaves128()
    out = []
    for k in range(N_LAYERS):
        for j in range(4):
            leaf = leaves[(k + 4 * j) % 16]
            for i in range(N128_FILES_PER_LEAF):
                out.append((k, f"{leaf}/f{k:03}_{j}{i}"))
    return out


def layers128():
    """The 128 layers' names, top first."""
    return [str(k) for k in reversed(range(N_LAYERS))]


def make_stack128(root):
    """root/0 (bottom) .. root/127 (top); returns the layer names, top first."""
    names = names128()
    for k in range(N_LAYERS):
        for leaf in leaves128():
            os.makedirs(os.path.join(root, str(k), leaf))
    for k, path in names:
        with open(os.path.join(root, str(k), path), "wb") as f:
            f.write(b"x" * (1 + (k * 7 + len(path)) % 200))
    by_layer = {}
    for k, path in names:
        by_layer.setdefault(k, []).append(path)
    for k in range(2, N_LAYERS):  # one file of the layer two below, deleted
        whiteout(os.path.join(root, str(k), by_layer[k - 2][0]))
    return layers128()


def lookups128():
    """N128_LOOKUPS paths spread evenly over all layers' names (whited-out
    ones included), in a fixed shuffled order."""
    names = [p for _, p in names128()]
    picked = [names[i * len(names) // N128_LOOKUPS] for i in range(N128_LOOKUPS)]
    random.Random(128).shuffle(picked)
    return picked
