//! Differential test of the writable container layer: seeded random
//! operation sequences run against two mounts of identical copies of a
//! fixture, each with a fresh upper and work dir; every call's result must
//! match, then the merged trees, then (unmounted) the two upper dirs.
//!
//! The reference is always the kernel's overlayfs
//! (`-o upperdir=U,workdir=W,redirect_dir=on,index=on`); it also drives the
//! generator (operations are drawn from what the reference shows at that
//! moment), so a seed means the same sequence whatever the other side does.
//!
//! * `kernel_vs_kernel`: the other side is a second kernel mount. It must
//!   find nothing: it proves the harness is deterministic.
//! * `layerfs_vs_kernel` (ignored until layerfs mounts an upper): the other
//!   side is `layerfs mount -o lowerdir=...,upperdir=U2,workdir=W2`.
//!
//! Environment:
//! * `LAYERFS_DIFF_SEED=N` or `=A..B`: run these seeds instead of the fixed
//!   list; `LAYERFS_DIFF_OPS=N` operations per seed (default 2000 with a
//!   seed, else the fixed list's count); `LAYERFS_DIFF_FIXTURE=NAME` instead
//!   of the seed's fixture (`FIXTURES[seed % 9]`).
//! * `LAYERFS_DIFF_REMOUNT_EVERY=N`: unmount and mount both sides again
//!   every N operations (default 100; 0 never), then compare the merged
//!   trees: each side must read back what it wrote.
//! * `LAYERFS_DIFF_RESTACK=1`: every second remount first stacks each
//!   side's upper as its top lower layer under a fresh upper (a committed
//!   layer and a new container), so the redirects, whiteouts and opaque
//!   dirs each side wrote are read back as a lower layer's. Off in `make
//!   test`: it finds known differences (docs/reliability.md): `.wh.` names
//!   an overlay upper holds are OCI whiteouts to layerfs once it is a
//!   lower, and hard-link groups of copied-up lower files differ.
//! * `LAYERFS_DIFF_CHECK_EVERY=N`: compare the merged trees every N
//!   operations instead of every 50 (1 finds the very operation that made
//!   a difference only a tree comparison sees).
//! * `LAYERFS_DIFF_SHRINK=0`: on failure, do not search for a shorter
//!   sequence that still fails (by default the first two failures of a run
//!   are shrunk: shortest failing prefix, then chunks down to single
//!   operations dropped,
//!   each candidate replayed on fresh mounts, at most a minute each;
//!   `LAYERFS_DIFF_SHRINK_SECS=N` gives each N seconds instead).
//!
//! What is compared:
//! * after every operation: its outcome (the value, or the errno), and for
//!   operations that change something, `lstat` of each path it names (type,
//!   mode, owner, size and link count of non-directories, rdev);
//! * every 50 operations and at the end: the merged trees (`common::tree`
//!   snapshots: types, modes, owners, sizes, contents, symlink targets,
//!   devices, xattrs, mtimes, link counts, hard-link groups);
//! * unmounted (at each remount and at the end), the upper dirs: the same, whiteouts included (char devices
//!   0/0), with `trusted.overlay.opaque` and `trusted.overlay.redirect`
//!   (kernel vs kernel: its value; layerfs: only that it is there), and the
//!   escaped `trusted.overlay.overlay.*` the kernel stores for overlay
//!   xattrs set through the mount.
//!
//! With `whiteout=oci`, after a rename refused with ENOTEMPTY the source's
//! parent gets one fixed mtime on both sides: the kernel's RENAME_WHITEOUT
//! makes ext4 touch it even when refused, and an OCI upper never uses it.
//!
//! What is not: directory sizes, atime and ctime, inode and device numbers
//! (only which names share an inode), an mtime set during the run (any such
//! mtime counts as "now", shown as -1.000000000; the generator's explicit
//! times all lie in the past), `trusted.overlay.{origin,impure,nlink,uuid,
//! upper,index}` and the work dirs, the link count of upper whiteouts (the
//! kernel hard-links them to one inode) and, for layerfs, link counts in the
//! upper (the kernel's index holds an extra link). Names the kernel lists
//! but cannot look up (unfiltered whiteouts) count as absent on its side.
//!
//! A layerfs daemon that does not answer one step within 20 s is killed (by
//! pid: our own child), so a hang shows as a failure naming the operation.
//!
//! e.g. `LAYERFS_DIFF_SEED=7 LAYERFS_DIFF_OPS=20000 cargo test --test
//! differential kernel_vs_kernel -- --nocapture` (add `--ignored` and name
//! `layerfs_vs_kernel` for layerfs). Needs root.

mod common;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::sync::{Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::ops::{self, Gen, Op, Outcome, RelPath};
use common::{
    Dialect, DiffOptions, KernelOverlay, LayerfsMount, Tree, diff_with, escape_opt_path,
    is_mounted, materialize, snapshot,
};

/// The fixtures a seed picks from (`FIXTURES[seed % len]`): the checked-in
/// ones and [`LONG_PATHS`].
const FIXTURES: [&str; 9] = [
    "whiteouts",
    "opaque",
    "replace",
    "links",
    "names",
    "special",
    "deep",
    "demo",
    LONG_PATHS,
];

/// A fixture built by [`build_layers`] rather than checked in: lower
/// directories whose paths are longer than overlayfs' `redirect_max` (256
/// bytes), which the kernel refuses to move to another parent (EXDEV).
const LONG_PATHS: &str = "long-paths";

/// The fixed seeds of `make test`: two per fixture.
const FIXED_SEEDS: std::ops::Range<u64> = 1..19;
/// Operations per fixed seed (18 x 500 = 9000 operations, 4 remounts each).
const FIXED_OPS: usize = 500;
/// Default operations per seed given in `LAYERFS_DIFF_SEED`.
const ENV_OPS: usize = 2000;
/// Merged trees are compared every this many operations, and at the end
/// (`LAYERFS_DIFF_CHECK_EVERY=N` instead: 1 pins a difference to its op).
const CHECK_EVERY: usize = 50;
/// Both sides are unmounted every this many operations (and
/// `LAYERFS_DIFF_REMOUNT_EVERY=N` instead, 0 never), their upper dirs
/// compared, then mounted again and the merged trees compared once more:
/// what each wrote must read back the same.
const REMOUNT_EVERY: usize = 100;
/// Parallel runs (each in its own thread with its own umask).
const WORKERS: usize = 3;

/// A layerfs daemon that takes longer than this for one step (an operation
/// and its checks, or a tree comparison) is killed.
const STEP_TIMEOUT: Duration = Duration::from_secs(20);
/// Failing sequences shrunk per test run (each takes up to
/// [`SHRINK_TIME`]); the others are reported as found.
const SHRINK_AT_MOST: usize = 2;
const SHRINK_TIME: Duration = Duration::from_secs(60);

/// Kernel overlay mount options for a writable mount.
const KERNEL_OPTS: &str = "redirect_dir=on,index=on";
/// What both sides add in `layerfs_metacopy_vs_kernel`.
const METACOPY_OPTS: &str = "metacopy=on";
/// `layerfs_metacopy_vs_kernel` without LAYERFS_DIFF_SEED: this many of
/// the fixed seeds (a short run: the other variants cover the rest).
const METACOPY_SEEDS: usize = 6;
/// The same in a user namespace (`layerfs_rootless_vs_kernel`): the kernel
/// takes `user.overlay.*` markers there, and neither redirects nor an index.
const KERNEL_OPTS_ROOTLESS: &str = "userxattr";
/// What layerfs is given there, to do what that kernel mount does.
const LAYERFS_OPTS_ROOTLESS: &str = "userxattr,redirect_dir=nofollow";
/// Set (to [`USERNS_INNER`]) in the run that
/// `layerfs_rootless_vs_kernel` starts inside a user namespace.
const USERNS_ENV: &str = "LAYERFS_DIFF_USERNS";
const USERNS_INNER: &str = "inner";

/// Held (shared) by every test here that mounts, and exclusively by
/// `layerfs_rootless_vs_kernel` while its run in a new mount namespace
/// lives: that namespace starts as a copy of ours, and a copy of another
/// test's layerfs mount would keep its daemon serving after that test
/// unmounts it (seen: "daemon ended with None" at a remount).
static MOUNT_NAMESPACE: RwLock<()> = RwLock::new(());

fn mounting() -> std::sync::RwLockReadGuard<'static, ()> {
    MOUNT_NAMESPACE
        .read()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Whether this run is the one inside the user namespace.
fn rootless() -> bool {
    std::env::var(USERNS_ENV).is_ok_and(|v| v == USERNS_INNER)
}

/// Overlay's private xattrs that the two uppers may legitimately differ in:
/// file handles of lower inodes (origin, and the index they key), the
/// hard-link count bookkeeping, the uuid of the upper, d_ino consistency
/// markers. `opaque` and `redirect` are compared (see [`UpperPolicy`]), and
/// so is anything else, e.g. `trusted.overlay.overlay.X`: since Linux 6.7 an
/// overlay xattr set through the mount (`trusted.overlay.X`) is stored
/// escaped like that, and read back through the mount unescaped.
const IGNORED_UPPER_XATTRS: &[&[u8]] = &[
    b"trusted.overlay.origin",
    b"trusted.overlay.impure",
    b"trusted.overlay.nlink",
    b"trusted.overlay.uuid",
    b"trusted.overlay.upper",
    b"trusted.overlay.index",
];
const REDIRECT: &[u8] = b"trusted.overlay.redirect";

/// An mtime set during the run shows as this in messages (-1.000000000).
const NOW_MARK: (i64, i64) = (-1, 0);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Target {
    Kernel,
    Layerfs,
    /// layerfs writing OCI-style whiteouts (`whiteout=oci`): the kernel
    /// cannot read that upper, so only outcomes and merged trees count.
    LayerfsOci,
    /// Both sides with `metacopy=on`: the reference is
    /// [`Target::KernelMetacopy`].
    LayerfsMetacopy,
    KernelMetacopy,
}

impl Target {
    fn label(self) -> &'static str {
        match self {
            Target::Kernel => "kernel",
            Target::Layerfs => "layerfs",
            Target::LayerfsOci => "layerfs-oci",
            Target::LayerfsMetacopy => "layerfs-metacopy",
            Target::KernelMetacopy => "kernel-metacopy",
        }
    }

    /// Its name in messages, as the side compared with the reference.
    fn other_label(self) -> &'static str {
        match self {
            Target::Kernel => "kernel#2",
            Target::Layerfs => "layerfs",
            Target::LayerfsOci => "layerfs (whiteout=oci)",
            Target::LayerfsMetacopy => "layerfs (metacopy=on)",
            Target::KernelMetacopy => "kernel#2 (metacopy=on)",
        }
    }

    fn test_name(self) -> &'static str {
        match self {
            Target::Kernel => "kernel_vs_kernel -- --nocapture",
            Target::Layerfs => "layerfs_vs_kernel -- --nocapture",
            Target::LayerfsOci => "layerfs_oci_vs_kernel -- --nocapture",
            Target::LayerfsMetacopy => "layerfs_metacopy_vs_kernel -- --nocapture",
            Target::KernelMetacopy => "kernel_vs_kernel -- --nocapture",
        }
    }

    /// The kernel mount the generator reads and `self` is compared with.
    fn reference(self) -> Target {
        match self {
            Target::LayerfsMetacopy | Target::KernelMetacopy => Target::KernelMetacopy,
            _ => Target::Kernel,
        }
    }

    fn is_kernel(self) -> bool {
        matches!(self, Target::Kernel | Target::KernelMetacopy)
    }
}

/// How strictly the upper dirs must agree.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum UpperPolicy {
    /// Two kernels: link counts (the index holds a link of every copied-up
    /// hard-linked file) and redirect values must agree too.
    Strict,
    /// layerfs vs kernel: a redirect must be there (its value may be
    /// relative or absolute), link counts are the kernel's bookkeeping.
    Compatible,
}

enum Mounted {
    Kernel(KernelOverlay),
    Layerfs(LayerfsMount),
}

/// One fixture copy, its upper and work dirs, and its mount.
struct Side {
    target: Target,
    /// Declared first: dropped (unmounted) before the temp dir goes.
    mount: Option<Mounted>,
    mnt: PathBuf,
    layers: Vec<PathBuf>,
    upper: PathBuf,
    /// `upperdir=U,workdir=W`.
    uw: String,
    _dir: tempfile::TempDir,
}

/// Mount `layers` with the upper and work dirs in `uw` as `target` does.
fn mount_side(target: Target, layers: &[PathBuf], uw: &str) -> Mounted {
    match target {
        Target::Kernel if rootless() => Mounted::Kernel(KernelOverlay::mount(
            layers,
            &format!("{uw},{KERNEL_OPTS_ROOTLESS}"),
        )),
        Target::Kernel => {
            Mounted::Kernel(KernelOverlay::mount(layers, &format!("{uw},{KERNEL_OPTS}")))
        }
        Target::Layerfs => Mounted::Layerfs(LayerfsMount::mount(layers, uw)),
        Target::LayerfsOci if rootless() => Mounted::Layerfs(LayerfsMount::mount(
            layers,
            &format!("{uw},whiteout=oci,{LAYERFS_OPTS_ROOTLESS}"),
        )),
        Target::LayerfsOci => {
            Mounted::Layerfs(LayerfsMount::mount(layers, &format!("{uw},whiteout=oci")))
        }
        Target::KernelMetacopy => Mounted::Kernel(KernelOverlay::mount(
            layers,
            &format!("{uw},{KERNEL_OPTS},{METACOPY_OPTS}"),
        )),
        Target::LayerfsMetacopy => Mounted::Layerfs(LayerfsMount::mount(
            layers,
            &format!("{uw},{METACOPY_OPTS}"),
        )),
    }
}

fn mount_path(m: &Mounted) -> PathBuf {
    match m {
        Mounted::Kernel(m) => m.path().to_path_buf(),
        Mounted::Layerfs(m) => m.path().to_path_buf(),
    }
}

impl Side {
    fn new(fixture: &str, target: Target) -> Side {
        let dir = common::tempdir(&format!("diff-{}-", target.label()));
        let lower_root = dir.path().join("layers");
        let (upper, work) = (dir.path().join("upper"), dir.path().join("work"));
        for d in [&lower_root, &upper, &work] {
            std::fs::create_dir(d).unwrap_or_else(|e| panic!("mkdir {}: {e}", d.display()));
        }
        let layers = build_layers(fixture, &lower_root);
        let uw = format!(
            "upperdir={},workdir={}",
            escape_opt_path(&upper),
            escape_opt_path(&work)
        );
        let mount = mount_side(target, &layers, &uw);
        Side {
            target,
            mnt: mount_path(&mount),
            mount: Some(mount),
            layers,
            upper,
            uw,
            _dir: dir,
        }
    }

    /// After [`Side::unmount`]: the upper becomes the top lower layer and a
    /// fresh upper and work dir go on top (an image layer committed, a new
    /// container on it), so the next mount reads what this one wrote —
    /// redirects, whiteouts, opaque dirs — as a lower layer.
    fn restack(&mut self, n: usize) {
        let (upper, work) = (
            self._dir.path().join(format!("upper{n}")),
            self._dir.path().join(format!("work{n}")),
        );
        for d in [&upper, &work] {
            std::fs::create_dir(d).unwrap_or_else(|e| panic!("mkdir {}: {e}", d.display()));
        }
        let old = std::mem::replace(&mut self.upper, upper);
        self.layers.insert(0, old);
        self.uw = format!(
            "upperdir={},workdir={}",
            escape_opt_path(&self.upper),
            escape_opt_path(&work)
        );
    }

    /// Mount again after [`Side::unmount`] (at a new mount point).
    fn mount_again(&mut self) {
        let mount = mount_side(self.target, &self.layers, &self.uw);
        self.mnt = mount_path(&mount);
        self.mount = Some(mount);
    }

    fn root(&self) -> &Path {
        &self.mnt
    }

    /// The layerfs daemon's pid, while it runs.
    fn daemon_pid(&self) -> Option<u32> {
        match &self.mount {
            Some(Mounted::Layerfs(m)) => m.pid(),
            _ => None,
        }
    }

    /// Unmounts; an error when the daemon did not end cleanly or something
    /// is still mounted.
    fn unmount(&mut self) -> Result<(), String> {
        let mut out = Ok(());
        match self.mount.take() {
            Some(Mounted::Kernel(m)) => drop(m),
            Some(Mounted::Layerfs(m)) => {
                let exit = m.unmount();
                if !exit.status.is_some_and(|s| s.success()) {
                    out = Err(format!(
                        "layerfs daemon ended with {:?}; its output:\n{}",
                        exit.status, exit.log
                    ));
                }
            }
            None => {}
        }
        if is_mounted(&self.mnt) {
            return Err(format!("{} is still mounted", self.mnt.display()));
        }
        out
    }
}

/// The layer dirs of `fixture` under `dest`, top first, in overlay format
/// (whiteouts as char devices 0/0, `trusted.overlay.opaque`).
fn build_layers(fixture: &str, dest: &Path) -> Vec<PathBuf> {
    if fixture != LONG_PATHS {
        let dialect = if rootless() {
            Dialect::OverlayUser
        } else {
            Dialect::OverlayTrusted
        };
        return materialize(fixture, dialect, dest);
    }
    use std::os::unix::fs::PermissionsExt;
    let (base, top) = (dest.join("00-base"), dest.join("01-top"));
    let long = |c: &str, n: usize| c.repeat(n);
    // 120 + 1 + 120 bytes: a child dir's path is past 256 bytes.
    let deep = format!("{}/{}", long("d", 120), long("e", 120));
    let dirs = [
        base.join(&deep).join(long("f", 40)).join("inner"),
        base.join(&deep).join("short"),
        base.join(long("g", 250)).join("h"),
        base.join("other"),
        top.join(&deep).join("short"),
        top.join("other").join("sub"),
    ];
    let files = [
        (
            base.join(&deep).join(long("f", 40)).join("inner/file"),
            "base\n",
        ),
        (base.join(&deep).join("short/file"), "base short\n"),
        (base.join(long("g", 250)).join("h/file"), "g\n"),
        (top.join(&deep).join("short/top-file"), "top\n"),
        (top.join(&deep).join("top-file"), "top\n"),
    ];
    for d in &dirs {
        std::fs::create_dir_all(d).unwrap_or_else(|e| panic!("mkdir {}: {e}", d.display()));
    }
    for (f, text) in &files {
        std::fs::write(f, text).unwrap_or_else(|e| panic!("write {}: {e}", f.display()));
    }
    // A whiteout in the top layer hides a base file.
    common::sys::mknod(&top.join(&deep).join("short/file"), libc::S_IFCHR, 0, 0, 0)
        .expect("mknod whiteout");
    // Fixed modes and times, so that two copies are identical.
    let mut stack = vec![base.clone(), top.clone()];
    while let Some(p) = stack.pop() {
        let md = std::fs::symlink_metadata(&p).expect("lstat in a built layer");
        if md.is_dir() {
            for e in std::fs::read_dir(&p).expect("readdir in a built layer") {
                stack.push(e.expect("readdir entry").path());
            }
        }
        if !md.file_type().is_char_device() {
            let mode = if md.is_dir() { 0o755 } else { 0o644 };
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode))
                .expect("chmod in a built layer");
        }
        common::sys::set_times(&p, 1_704_067_200, 250_000_000).expect("utimensat");
    }
    vec![top, base]
}

/// Counts of outcome classes per operation kind.
#[derive(Default)]
struct Stats(BTreeMap<&'static str, BTreeMap<String, usize>>);

impl Stats {
    fn add(&mut self, op: &Op, o: &Outcome) {
        *self
            .0
            .entry(op.kind_name())
            .or_default()
            .entry(ops::outcome_class(o))
            .or_default() += 1;
    }

    fn merge(&mut self, other: Stats) {
        for (k, m) in other.0 {
            let e = self.0.entry(k).or_default();
            for (c, n) in m {
                *e.entry(c).or_default() += n;
            }
        }
    }

    fn total(&self) -> usize {
        self.0.values().flat_map(|m| m.values()).sum()
    }

    fn show(&self) -> String {
        let mut s = String::new();
        for (k, m) in &self.0 {
            let parts: Vec<String> = m.iter().map(|(c, n)| format!("{c} {n}")).collect();
            let _ = writeln!(s, "  {k:<17} {}", parts.join(", "));
        }
        s
    }
}

/// Where the operations come from.
enum Plan<'a> {
    Generate { seed: u64, nops: usize },
    Replay(&'a [Op]),
}

struct Failure {
    /// The operation whose outcome differed, if that is what failed.
    op_index: Option<usize>,
    msg: String,
}

struct Run {
    ops: Vec<Op>,
    /// The reference's outcome of each operation in `ops` (None: skipped).
    outcomes: Vec<Option<Outcome>>,
    failure: Option<Failure>,
    stats: Stats,
    /// What the reference's upper dir ended up holding.
    upper_summary: String,
}

fn now_secs() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs() as i64
}

/// Replaces mtimes set during the run (whatever "now" was on each side)
/// by [`NOW_MARK`]; the generator's explicit times all lie before any run.
fn normalize_times(t: &mut Tree, since: i64) {
    for e in t.entries.values_mut() {
        if e.mtime.0 >= since {
            e.mtime = NOW_MARK;
        }
    }
}

fn merged_problems(a: &Side, b: &Side, since: i64) -> Vec<String> {
    let snap = |s: &Side| {
        let mut t = snapshot(s.root());
        if s.target.is_kernel() {
            // Whiteouts the kernel lists but cannot look up are not there.
            t.drop_listed_but_absent();
        }
        normalize_times(&mut t, since);
        t
    };
    let opts = DiffOptions {
        dir_sizes: false,
        // See [`comparable`].
        hardlinks: !rootless(),
        nlink: !rootless(),
        ..DiffOptions::default()
    };
    diff_with(&snap(a), &snap(b), &opts)
}

/// An outcome as compared. In a user namespace the kernel's overlayfs has
/// no index (`index=on` needs `trusted.*`), so a copy-up breaks a lower
/// file's hard links there and its link counts follow; layerfs keeps them
/// (as the kernel with an index does): link counts and hard-link groups
/// are not compared in that run.
fn comparable(o: ops::Outcome) -> ops::Outcome {
    match o {
        Ok(ops::Value::Stat(mut st)) if rootless() => {
            st.nlink = None;
            Ok(ops::Value::Stat(st))
        }
        other => other,
    }
}

fn is_whiteout(e: &common::Entry) -> bool {
    e.kind == common::Kind::CharDev && e.rdev == Some((0, 0))
}

/// An upper dir as far as the two sides must agree on it.
fn upper_view(upper: &Path, policy: UpperPolicy, since: i64) -> Tree {
    let mut t = snapshot(upper);
    normalize_times(&mut t, since);
    let mut whiteouts = Vec::new();
    for (rel, e) in t.entries.iter_mut() {
        e.xattrs
            .retain(|k, _| !IGNORED_UPPER_XATTRS.contains(&k.as_slice()));
        if policy == UpperPolicy::Compatible
            && let Some(v) = e.xattrs.get_mut(REDIRECT)
        {
            *v = b"(present)".to_vec();
        }
        if is_whiteout(e) {
            // The kernel shares one whiteout inode between many names.
            e.nlink = None;
            whiteouts.push(rel.clone());
        }
    }
    t.hardlinks = std::mem::take(&mut t.hardlinks)
        .into_iter()
        .map(|g| {
            g.into_iter()
                .filter(|p| !whiteouts.contains(p))
                .collect::<Vec<_>>()
        })
        .filter(|g| g.len() > 1)
        .collect();
    t
}

/// The upper dirs of two unmounted sides compared as the other side's
/// target allows (an OCI upper is not the kernel's format: not compared).
fn upper_problems_of(a: &Side, b: &Side, since: i64) -> Vec<String> {
    let policy = match b.target {
        Target::Kernel | Target::KernelMetacopy => UpperPolicy::Strict,
        Target::Layerfs | Target::LayerfsMetacopy => UpperPolicy::Compatible,
        Target::LayerfsOci => return Vec::new(),
    };
    upper_problems(a, b, policy, since)
}

fn upper_problems(a: &Side, b: &Side, policy: UpperPolicy, since: i64) -> Vec<String> {
    let opts = DiffOptions {
        dir_sizes: false,
        nlink: policy == UpperPolicy::Strict,
        ..DiffOptions::default()
    };
    let (mut ua, mut ub) = (
        upper_view(&a.upper, policy, since),
        upper_view(&b.upper, policy, since),
    );
    if policy == UpperPolicy::Compatible {
        // FUSE names an inode, not the name it was reached by: when a
        // lower file with several names is changed, layerfs copies up the
        // name it knows, the kernel the one used. Both keep such copies
        // linked into their index (outside the upper tree), which is how
        // they are told apart here. The merged trees (data, link groups)
        // must still agree; which of those names the upper holds may not.
        let mut indexed = indexed_paths(&ua);
        indexed.extend(indexed_paths(&ub));
        for t in [&mut ua, &mut ub] {
            t.entries.retain(|rel, _| !indexed.contains(rel));
            t.hardlinks = std::mem::take(&mut t.hardlinks)
                .into_iter()
                .map(|g| {
                    g.into_iter()
                        .filter(|p| !indexed.contains(p))
                        .collect::<Vec<_>>()
                })
                .filter(|g| g.len() > 1)
                .collect();
        }
    }
    diff_with(&ua, &ub, &opts)
}

/// Whether an op names a path with a `.wh.` component.
fn touches_oci_reserved(op: &Op) -> bool {
    op.paths()
        .iter()
        .any(|p| p.0.split(|&b| b == b'/').any(|c| c.starts_with(b".wh.")))
}

/// Upper entries with a link outside the upper tree (an index entry).
fn indexed_paths(t: &Tree) -> std::collections::BTreeSet<Vec<u8>> {
    t.entries
        .iter()
        .filter(|(_, e)| e.kind != common::Kind::Dir)
        .filter(|(rel, e)| {
            let names = t
                .hardlinks
                .iter()
                .find(|g| g.contains(rel))
                .map_or(1, |g| g.len() as u64);
            e.nlink.is_some_and(|n| n > names)
        })
        .map(|(rel, _)| rel.clone())
        .collect()
}

fn show_problems(what: &str, problems: &[String]) -> String {
    let shown: Vec<&String> = problems.iter().take(40).collect();
    let mut s = format!(
        "{what}: {} difference(s) (\"expected\" is the kernel reference):\n",
        problems.len()
    );
    for p in shown {
        let _ = writeln!(s, "    {p}");
    }
    if problems.len() > 40 {
        let _ = writeln!(s, "    ...");
    }
    s
}

/// A one-line account of an upper dir: what kinds of overlay objects the
/// sequence made.
fn summarize_upper(t: &Tree) -> String {
    let count = |f: &dyn Fn(&common::Entry) -> bool| t.entries.values().filter(|e| f(e)).count();
    let has = |e: &common::Entry, name: &[u8]| e.xattrs.contains_key(name);
    format!(
        "upper: {} entries, {} whiteouts, {} opaque dirs, {} redirects, {} escaped overlay xattrs",
        t.entries.len().saturating_sub(1),
        count(&|e| is_whiteout(e)),
        count(&|e| has(e, b"trusted.overlay.opaque")),
        count(&|e| has(e, REDIRECT)),
        count(&|e| {
            e.xattrs
                .keys()
                .any(|k| k.starts_with(b"trusted.overlay.overlay."))
        }),
    )
}

/// Kills a layerfs daemon that stops answering, so that a hang becomes a
/// failure (the blocked calls return ENOTCONN) instead of a stuck test.
#[derive(Default)]
struct Watchdog {
    /// What is being waited for, since when.
    current: Mutex<Option<(String, Instant)>>,
    /// The daemon to kill (0: none); changes when the side is remounted.
    pid: AtomicU32,
    done: AtomicBool,
    /// What was running when the daemon was killed.
    fired: Mutex<Option<String>>,
}

impl Watchdog {
    fn doing(&self, what: impl FnOnce() -> String) {
        *lock(&self.current) = Some((what(), Instant::now()));
    }

    /// Runs until `finish`; kills the daemon (our own child) when one step
    /// takes longer than [`STEP_TIMEOUT`].
    fn watch(&self) {
        while !self.done.load(Ordering::SeqCst) {
            std::thread::sleep(Duration::from_millis(100));
            let stuck = match &*lock(&self.current) {
                Some((what, since)) if since.elapsed() > STEP_TIMEOUT => what.clone(),
                _ => continue,
            };
            let pid = self.pid.load(Ordering::SeqCst);
            if pid == 0 {
                continue;
            }
            // SAFETY: kill has no memory-safety preconditions; `pid` is our
            // unreaped child, so it cannot name another process.
            unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
            *lock(&self.fired) = Some(stuck);
            return;
        }
    }

    fn finish(&self) {
        self.done.store(true, Ordering::SeqCst);
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Runs one sequence on a fresh pair of mounts of `fixture`. `sabotage`
/// (for testing the harness) is an operation done on the other side only,
/// after the operation of that index.
fn run(fixture: &str, other: Target, plan: Plan<'_>, sabotage: Option<&(usize, Op)>) -> Run {
    let since = now_secs() - 1;
    let mut a = Side::new(fixture, other.reference());
    let mut b = Side::new(fixture, other);
    let mut run = Run {
        ops: Vec::new(),
        outcomes: Vec::new(),
        failure: None,
        stats: Stats::default(),
        upper_summary: String::new(),
    };
    let dog = Watchdog::default();
    std::thread::scope(|s| {
        if let Some(pid) = b.daemon_pid() {
            dog.pid.store(pid, Ordering::SeqCst);
            let dog = &dog;
            s.spawn(move || dog.watch());
        }
        drive(&mut a, &mut b, plan, sabotage, since, &mut run, &dog);
        dog.finish();
    });
    if let Some(what) = lock(&dog.fired).take() {
        let note = format!(
            "{} did not answer within {} s ({what}): its daemon was killed\n",
            other.other_label(),
            STEP_TIMEOUT.as_secs()
        );
        match &mut run.failure {
            Some(f) => f.msg.push_str(&note),
            None => {
                run.failure = Some(Failure {
                    op_index: None,
                    msg: note,
                })
            }
        }
    }
    let unmounted = [a.unmount(), b.unmount()];
    run.upper_summary = summarize_upper(&snapshot(&a.upper));
    if run.failure.is_none() {
        if let Some(Err(e)) = unmounted.iter().find(|r| r.is_err()) {
            run.failure = Some(Failure {
                op_index: None,
                msg: format!("unmounting: {e}\n"),
            });
        } else {
            let problems = upper_problems_of(&a, &b, since);
            if !problems.is_empty() {
                run.failure = Some(Failure {
                    op_index: None,
                    msg: show_problems("upper dirs", &problems),
                });
            }
        }
    }
    run
}

/// The operations of one run on the two live mounts, with their checks;
/// stops at the first difference.
fn drive(
    a: &mut Side,
    b: &mut Side,
    plan: Plan<'_>,
    sabotage: Option<&(usize, Op)>,
    since: i64,
    run: &mut Run,
    dog: &Watchdog,
) {
    let (la, lb) = (a.target.label(), b.target.other_label());
    let (mut generator, nops) = match plan {
        Plan::Generate { seed, nops } => (Some(Gen::new(seed, ops::layer_paths(&a.layers))), nops),
        Plan::Replay(ops) => (None, ops.len()),
    };
    let check_every = env("LAYERFS_DIFF_CHECK_EVERY")
        .and_then(|v| v.parse::<usize>().ok())
        .filter(|&n| n > 0)
        .unwrap_or(CHECK_EVERY);
    let remount_every = env("LAYERFS_DIFF_REMOUNT_EVERY")
        .and_then(|v| v.parse::<usize>().ok())
        .unwrap_or(REMOUNT_EVERY);
    let mut fail = |i: Option<usize>, msg: String| {
        run.failure = Some(Failure { op_index: i, msg });
    };
    for i in 0..nops {
        let op = match (&mut generator, &plan) {
            (Some(g), _) => g.next_op(a.root()),
            (None, Plan::Replay(ops)) => ops[i].clone(),
            (None, Plan::Generate { .. }) => unreachable!(),
        };
        // An OCI layer cannot hold a name starting with `.wh.` (it is a
        // whiteout there): layerfs refuses those with EINVAL by design.
        // In a user namespace, hard links are not compared (see
        // [`comparable`]): none are made.
        let skipped = rootless() && op.kind_name() == "link";
        if skipped || (b.target == Target::LayerfsOci && touches_oci_reserved(&op)) {
            run.ops.push(op); // kept, so op numbers stay those of the seed
            run.outcomes.push(None);
            continue;
        }
        dog.doing(|| format!("op #{i}: {op}"));
        let (oa, ob) = (
            comparable(ops::apply(a.root(), &op)),
            comparable(ops::apply(b.root(), &op)),
        );
        run.stats.add(&op, &oa);
        run.ops.push(op.clone());
        run.outcomes.push(Some(oa.clone()));
        if oa != ob {
            fail(
                Some(i),
                format!("op #{i}: {op}\n  {la}: {oa:?}\n  {lb}: {ob:?}\n"),
            );
            return;
        }
        // The kernel renames with RENAME_WHITEOUT; refusing that with
        // ENOTEMPTY, ext4 has already touched the source's parent. An OCI
        // upper never uses the flag, so the harness settles that mtime on
        // both sides (a side effect of the upper filesystem, not of overlay).
        if b.target == Target::LayerfsOci
            && let Op::Rename { from, .. } = &op
            && oa == Err(ops::Errno(libc::ENOTEMPTY))
        {
            let settle = Op::Utimens {
                path: RelPath(from.split().0.to_vec()),
                atime: ops::Time::Omit,
                mtime: ops::Time::At(1_500_000_000, 0),
            };
            let _ = (ops::apply(a.root(), &settle), ops::apply(b.root(), &settle));
        }
        if !op.is_read_only() {
            for p in op.paths() {
                let st = Op::Stat { path: p.clone() };
                let (sa, sb) = (
                    comparable(ops::apply(a.root(), &st)),
                    comparable(ops::apply(b.root(), &st)),
                );
                if sa != sb {
                    fail(
                        Some(i),
                        format!(
                            "op #{i}: {op} (both {oa:?})\n  then lstat {p}:\n  {la}: {sa:?}\n  {lb}: {sb:?}\n"
                        ),
                    );
                    return;
                }
            }
        }
        if let Some((at, extra)) = sabotage
            && *at == i
        {
            let _ = ops::apply(b.root(), extra);
        }
        if (i + 1) % check_every == 0 && i + 1 < nops {
            dog.doing(|| format!("comparing the merged trees after op #{i}"));
            let problems = merged_problems(a, b, since);
            if !problems.is_empty() {
                fail(
                    None,
                    show_problems(&format!("merged trees after op #{i}"), &problems),
                );
                return;
            }
        }
        if remount_every > 0 && (i + 1) % remount_every == 0 && i + 1 < nops {
            dog.doing(|| format!("remounting after op #{i}"));
            // The daemon being replaced is reaped by its unmount.
            dog.pid.store(0, Ordering::SeqCst);
            if let Err(e) = a.unmount().and_then(|()| b.unmount()) {
                fail(None, format!("unmounting after op #{i}: {e}\n"));
                return;
            }
            let problems = upper_problems_of(a, b, since);
            if !problems.is_empty() {
                fail(
                    None,
                    show_problems(&format!("upper dirs after op #{i}"), &problems),
                );
                return;
            }
            // With LAYERFS_DIFF_RESTACK=1, every second remount stacks the
            // upper as a lower layer.
            let remounts = (i + 1) / remount_every;
            if remounts.is_multiple_of(2) && env("LAYERFS_DIFF_RESTACK").is_some_and(|v| v == "1") {
                a.restack(remounts);
                b.restack(remounts);
            }
            a.mount_again();
            b.mount_again();
            dog.pid.store(b.daemon_pid().unwrap_or(0), Ordering::SeqCst);
            dog.doing(|| format!("comparing the merged trees after the remount at op #{i}"));
            let problems = merged_problems(a, b, since);
            if !problems.is_empty() {
                fail(
                    None,
                    show_problems(
                        &format!("merged trees after a remount at op #{i}"),
                        &problems,
                    ),
                );
                return;
            }
        }
    }
    dog.doing(|| "comparing the merged trees at the end".to_string());
    let problems = merged_problems(a, b, since);
    if !problems.is_empty() {
        fail(None, show_problems("merged trees at the end", &problems));
    }
}

/// Looks for a shorter sequence that still fails: the shortest failing
/// prefix, then drops chunks of operations (halves, quarters... down to
/// single operations) while it keeps failing. Bounded in time
/// (`LAYERFS_DIFF_SHRINK_SECS`, default [`SHRINK_TIME`]); returns the
/// sequence and its last run (with its failure).
fn shrink(fixture: &str, other: Target, ops: &[Op], first: &Failure) -> (Vec<Op>, Run) {
    let limit = env("LAYERFS_DIFF_SHRINK_SECS")
        .and_then(|v| v.parse().ok())
        .map_or(SHRINK_TIME, Duration::from_secs);
    let deadline = Instant::now() + limit;
    let more = || Instant::now() < deadline;
    let try_ops = |ops: &[Op]| -> Option<Run> {
        let r = run(fixture, other, Plan::Replay(ops), None);
        r.failure.is_some().then_some(r)
    };
    let mut best: Vec<Op> = match first.op_index {
        Some(i) => ops[..=i].to_vec(),
        None => ops.to_vec(),
    };
    let mut best_run = None;
    // Shortest failing prefix (binary search; failing is close enough to
    // monotonic in the prefix length).
    let (mut lo, mut hi) = (0usize, best.len());
    while lo < hi && more() {
        let mid = (lo + hi) / 2;
        match try_ops(&best[..mid]) {
            Some(r) => {
                hi = mid;
                best_run = Some(r);
            }
            None => lo = mid + 1,
        }
    }
    best.truncate(hi);
    // Drop chunks, last first, halving the chunk size down to one.
    let mut chunk = best.len().div_ceil(2).max(1);
    loop {
        let mut end = best.len();
        while end > 0 && more() {
            let start = end.saturating_sub(chunk);
            let mut candidate = best.clone();
            candidate.drain(start..end);
            if let Some(r) = try_ops(&candidate) {
                best = candidate;
                best_run = Some(r);
            }
            end = start;
        }
        if chunk == 1 || !more() {
            break;
        }
        chunk = chunk.div_ceil(2);
    }
    let last = best_run.unwrap_or_else(|| {
        try_ops(&best).unwrap_or_else(|| Run {
            ops: best.clone(),
            outcomes: Vec::new(),
            failure: Some(Failure {
                op_index: None,
                msg: first.msg.clone(),
            }),
            stats: Stats::default(),
            upper_summary: String::new(),
        })
    });
    (best, last)
}

struct Case {
    fixture: String,
    seed: u64,
    nops: usize,
}

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

/// The cases to run: the fixed list, or what the environment asks for.
fn cases() -> Vec<Case> {
    let ops_env = env("LAYERFS_DIFF_OPS").map(|v| {
        v.parse::<usize>()
            .unwrap_or_else(|_| panic!("LAYERFS_DIFF_OPS={v}: not a number"))
    });
    let (seeds, nops) = match env("LAYERFS_DIFF_SEED") {
        Some(v) => {
            let parse = |s: &str| {
                s.trim()
                    .parse::<u64>()
                    .unwrap_or_else(|_| panic!("LAYERFS_DIFF_SEED={v}: want N or A..B"))
            };
            let seeds = match v.split_once("..") {
                Some((a, b)) => parse(a)..parse(b),
                None => parse(&v)..parse(&v) + 1,
            };
            (seeds, ops_env.unwrap_or(ENV_OPS))
        }
        None => (FIXED_SEEDS, ops_env.unwrap_or(FIXED_OPS)),
    };
    let fixture = env("LAYERFS_DIFF_FIXTURE");
    if let Some(f) = &fixture {
        assert!(
            f == LONG_PATHS || common::fixture_names().contains(f),
            "LAYERFS_DIFF_FIXTURE={f}: no such fixture"
        );
    }
    seeds
        .map(|seed| Case {
            fixture: fixture
                .clone()
                .unwrap_or_else(|| FIXTURES[(seed % FIXTURES.len() as u64) as usize].to_string()),
            seed,
            nops,
        })
        .collect()
}

/// Runs one case; on failure, the full report (with a shorter reproducer
/// unless disabled).
fn run_case(case: &Case, other: Target) -> (Stats, Option<String>) {
    // apply() sets the umask; keep that to this thread.
    ops::private_umask();
    let started = Instant::now();
    let r = run(
        &case.fixture,
        other,
        Plan::Generate {
            seed: case.seed,
            nops: case.nops,
        },
        None,
    );
    let Some(f) = &r.failure else {
        eprintln!(
            "{}: seed {} ({}), {} ops: same on both sides ({:.1} s); {}",
            other.label(),
            case.seed,
            case.fixture,
            r.ops.len(),
            started.elapsed().as_secs_f64(),
            r.upper_summary
        );
        return (r.stats, None);
    };
    let mut report = format!(
        "\n==== kernel overlay vs {}: fixture `{}`, seed {}, {} ops ====\n{}\
         rerun: LAYERFS_DIFF_SEED={} LAYERFS_DIFF_OPS={} LAYERFS_DIFF_FIXTURE={} \
         cargo test --test differential {}\n",
        other.label(),
        case.fixture,
        case.seed,
        case.nops,
        f.msg,
        case.seed,
        case.nops,
        case.fixture,
        other.test_name()
    );
    static SHRUNK: AtomicUsize = AtomicUsize::new(0);
    if env("LAYERFS_DIFF_SHRINK").as_deref() == Some("0") {
        // Asked not to.
    } else if SHRUNK.fetch_add(1, Ordering::SeqCst) >= SHRINK_AT_MOST {
        let _ = writeln!(
            report,
            "(not shrunk: only the first {SHRINK_AT_MOST} failures of a run are)"
        );
    } else {
        let (ops, last) = shrink(&case.fixture, other, &r.ops, f);
        let _ = writeln!(
            report,
            "a sequence of {} op(s) that fails too (replayed on fresh mounts; \
             the reference's outcome after each):",
            ops.len()
        );
        for (i, op) in ops.iter().enumerate() {
            let outcome = match last.outcomes.get(i) {
                Some(Some(o)) => format!("{o:?}"),
                Some(None) => "skipped".to_string(),
                None => "not reached".to_string(),
            };
            let _ = writeln!(report, "  {i:>4}: {op}  => {outcome}");
        }
        let msg = last.failure.map(|f| f.msg).unwrap_or_default();
        let _ = write!(report, "its failure:\n{msg}");
    }
    (r.stats, Some(report))
}

/// Runs every case over `WORKERS` threads; panics with all failures.
fn differential(other: Target) {
    common::require_root();
    let _mounting = mounting();
    let mut cases = cases();
    if other == Target::LayerfsMetacopy && env("LAYERFS_DIFF_SEED").is_none() {
        cases.truncate(METACOPY_SEEDS);
    }
    if rootless() {
        // Device nodes cannot be made in a user namespace; hard-linked
        // lower files are not compared there (see [`comparable`]).
        cases.retain(|c| c.fixture != "special" && c.fixture != "links");
    }
    let next = AtomicUsize::new(0);
    let results = Mutex::new((Stats::default(), Vec::<String>::new()));
    std::thread::scope(|s| {
        for _ in 0..WORKERS.min(cases.len()) {
            s.spawn(|| {
                loop {
                    let i = next.fetch_add(1, Ordering::SeqCst);
                    let Some(case) = cases.get(i) else { break };
                    let (stats, failure) = run_case(case, other);
                    let mut r = lock(&results);
                    r.0.merge(stats);
                    r.1.extend(failure);
                }
            });
        }
    });
    let (stats, failures) = results.into_inner().unwrap_or_else(|e| e.into_inner());
    eprintln!(
        "{} operations; outcomes on the kernel side:\n{}",
        stats.total(),
        stats.show()
    );
    assert!(
        failures.is_empty(),
        "{} of {} sequence(s) differ:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}

/// Two kernel overlay mounts must agree on everything: this is the harness
/// checking itself (determinism of the generator, the comparisons and what
/// they ignore).
#[test]
fn kernel_vs_kernel() {
    differential(Target::Kernel);
}

/// layerfs against the kernel: outcomes, merged trees and upper dirs.
#[test]
fn layerfs_vs_kernel() {
    differential(Target::Layerfs);
}

/// layerfs against the kernel, both with `metacopy=on`: outcomes, merged
/// trees and upper dirs (metacopy marks and redirects of files included).
#[test]
fn layerfs_metacopy_vs_kernel() {
    differential(Target::LayerfsMetacopy);
}

/// layerfs writing OCI whiteouts against the kernel: outcomes and merged
/// trees.
#[test]
fn layerfs_oci_vs_kernel() {
    differential(Target::LayerfsOci);
}

/// Rootless: layerfs as root of a user namespace (`unshare -Urm`, /dev/fuse
/// opened by itself, `user.overlay.*` markers, OCI whiteouts) against the
/// kernel's overlayfs mounted in the same namespace with `userxattr`: the
/// outcomes and merged trees. This test runs itself again inside the
/// namespace (ids 0-65535 mapped as they are, no capability outside it);
/// there neither mount may set `trusted.*` xattrs or make device nodes,
/// and neither moves a directory with lower content (EXDEV, as without
/// redirects). The `special` fixture (device nodes) cannot be built there;
/// hard links are left out (see [`comparable`]).
#[test]
fn layerfs_rootless_vs_kernel() {
    if rootless() {
        differential(Target::LayerfsOci);
        return;
    }
    common::require_root();
    let _alone = MOUNT_NAMESPACE
        .write()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    // `unshare -Urm` maps only root, and the fixtures have files of other
    // owners: the namespace maps ids 0-65535 as they are (written from
    // here, as newuidmap would for a user), and the run waits for that.
    let mut child = std::process::Command::new("unshare")
        .args(["--user", "--mount", "--propagation", "private", "--"])
        .args(["sh", "-c", "read go && exec \"$0\" \"$@\""])
        .arg(std::env::current_exe().expect("the test binary"))
        .args([
            "--exact",
            "layerfs_rootless_vs_kernel",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(USERNS_ENV, USERNS_INNER)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("running unshare");
    let ns = |pid: &str| std::fs::read_link(format!("/proc/{pid}/ns/user")).ok();
    let pid = child.id().to_string();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while ns(&pid) == ns("self") && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    for map in ["uid_map", "gid_map"] {
        std::fs::write(format!("/proc/{pid}/{map}"), "0 0 65536\n")
            .unwrap_or_else(|e| panic!("writing {map} of the namespace: {e}"));
    }
    if let Some(mut go) = child.stdin.take() {
        std::io::Write::write_all(&mut go, b"go\n").expect("starting the run");
    }
    let out = child.wait_with_output().expect("waiting for the run");
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!("{said}");
    assert!(
        out.status.success() && said.contains("1 passed"),
        "the run in a user namespace failed ({}):\n{said}",
        out.status
    );
}

// ---- the harness itself --------------------------------------------------

/// The comparisons notice a change made on one side only: in the merged
/// tree, and in the upper dir alone (a copy-up that changes nothing
/// visible).
#[test]
fn harness_notices_differences() {
    common::require_root();
    let _mounting = mounting();
    ops::private_umask();
    let p = |s: &str| RelPath(s.as_bytes().to_vec());
    let script = [
        Op::Mkdir {
            path: p("etc/new"),
            mode: 0o755,
            umask: 0o022,
        },
        Op::Unlink {
            path: p("etc/new.conf"),
        },
        Op::Rename {
            from: p("var/cache"),
            to: p("srv/cache"),
            flags: ops::RenameFlags::None,
        },
    ];
    let same = run("whiteouts", Target::Kernel, Plan::Replay(&script), None);
    assert!(same.failure.is_none(), "{}", same.failure.unwrap().msg);
    let visible = (
        1,
        Op::Mkdir {
            path: p("sabotage"),
            mode: 0o755,
            umask: 0,
        },
    );
    let f = run(
        "whiteouts",
        Target::Kernel,
        Plan::Replay(&script),
        Some(&visible),
    )
    .failure
    .expect("an extra directory on one side goes unnoticed");
    assert!(f.msg.contains("/sabotage"), "{}", f.msg);
    // chown -1:-1 copies `etc/keep.conf` up on one side and changes nothing
    // else.
    let hidden = (
        1,
        Op::Chown {
            path: p("etc/keep.conf"),
            uid: None,
            gid: None,
        },
    );
    let f = run(
        "whiteouts",
        Target::Kernel,
        Plan::Replay(&script),
        Some(&hidden),
    )
    .failure
    .expect("a copy-up on one side goes unnoticed");
    assert!(
        f.msg.contains("upper dirs") && f.msg.contains("/etc/keep.conf"),
        "{}",
        f.msg
    );
}

/// The same seed and the same tree give the same operations.
#[test]
fn generator_is_deterministic() {
    let dir = common::tempdir("diff-gen-");
    let layers = materialize("whiteouts", Dialect::OverlayTrusted, dir.path());
    let tree = ops::listing(&layers[0]);
    let paths = ops::layer_paths(&layers);
    let draw = |seed| {
        let mut g = Gen::new(seed, paths.clone());
        (0..500).map(|_| g.draw(&tree)).collect::<Vec<_>>()
    };
    assert_eq!(draw(3), draw(3));
    assert_ne!(draw(3), draw(4));
    let kinds: std::collections::BTreeSet<&str> = draw(5).iter().map(Op::kind_name).collect();
    assert!(kinds.len() >= 20, "500 ops cover few kinds: {kinds:?}");
}

/// `apply` never resolves a symlink in a path, and never opens a device.
#[test]
fn apply_stays_beneath_the_root() {
    common::require_root();
    ops::private_umask();
    let dir = common::tempdir("diff-apply-");
    let root = dir.path();
    std::os::unix::fs::symlink("/", root.join("etc")).unwrap();
    std::os::unix::fs::symlink(root.join("inside"), root.join("abs")).unwrap();
    std::fs::create_dir(root.join("inside")).unwrap();
    common::sys::mknod(&root.join("null"), libc::S_IFCHR, 0o666, 1, 3).unwrap();
    let p = |s: &str| RelPath(s.as_bytes().to_vec());
    let data = ops::Data { len: 3, seed: 1 };
    let cases = [
        (
            Op::CreateFile {
                path: p("etc/layerfs-differential-escape"),
                mode: 0o644,
                umask: 0,
                excl: true,
            },
            Err(ops::Errno(libc::ELOOP)),
        ),
        (
            Op::Mkdir {
                path: p("abs/x"),
                mode: 0o755,
                umask: 0,
            },
            Err(ops::Errno(libc::ELOOP)),
        ),
        (
            Op::WriteAt {
                path: p("etc"),
                offset: 0,
                data,
            },
            Err(ops::Errno(libc::ELOOP)),
        ),
        (
            Op::WriteAt {
                path: p("null"),
                offset: 0,
                data,
            },
            Ok(ops::Value::NotOpened(common::Kind::CharDev)),
        ),
        (
            Op::Chmod {
                path: p("etc"),
                mode: 0o700,
            },
            Err(ops::Errno(libc::EOPNOTSUPP)),
        ),
        (
            Op::ReadLink { path: p("etc") },
            Ok(ops::Value::Bytes(b"/".to_vec())),
        ),
        (
            Op::CreateFile {
                path: p("inside/f"),
                mode: 0o666,
                umask: 0o022,
                excl: true,
            },
            Ok(ops::Value::Done),
        ),
    ];
    for (op, want) in cases {
        assert_eq!(ops::apply(root, &op), want, "{op}");
    }
    assert!(!Path::new("/layerfs-differential-escape").exists());
    let st = common::sys::lstat(&root.join("inside/f")).unwrap();
    assert_eq!(st.st_mode & 0o7777, 0o644, "umask applied");
}
