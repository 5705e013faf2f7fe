//! Snapshots of a directory tree (without following symlinks) and
//! human-readable differences between two of them.

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsStr;
use std::fs;
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use super::sys;

/// The type of an entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    File,
    Dir,
    Symlink,
    Fifo,
    Socket,
    CharDev,
    BlockDev,
}

impl Kind {
    pub fn of(ft: fs::FileType) -> Kind {
        if ft.is_dir() {
            Kind::Dir
        } else if ft.is_symlink() {
            Kind::Symlink
        } else if ft.is_file() {
            Kind::File
        } else if ft.is_fifo() {
            Kind::Fifo
        } else if ft.is_socket() {
            Kind::Socket
        } else if ft.is_char_device() {
            Kind::CharDev
        } else if ft.is_block_device() {
            Kind::BlockDev
        } else {
            panic!("unknown file type {ft:?}")
        }
    }

    /// From `st_mode`.
    pub fn from_mode(mode: u32) -> Kind {
        match mode & libc::S_IFMT {
            libc::S_IFDIR => Kind::Dir,
            libc::S_IFLNK => Kind::Symlink,
            libc::S_IFREG => Kind::File,
            libc::S_IFIFO => Kind::Fifo,
            libc::S_IFSOCK => Kind::Socket,
            libc::S_IFCHR => Kind::CharDev,
            libc::S_IFBLK => Kind::BlockDev,
            other => panic!("unknown file type in mode {other:o}"),
        }
    }

    /// The matching `d_type`.
    pub fn dt(self) -> u8 {
        match self {
            Kind::File => libc::DT_REG,
            Kind::Dir => libc::DT_DIR,
            Kind::Symlink => libc::DT_LNK,
            Kind::Fifo => libc::DT_FIFO,
            Kind::Socket => libc::DT_SOCK,
            Kind::CharDev => libc::DT_CHR,
            Kind::BlockDev => libc::DT_BLK,
        }
    }
}

/// Everything recorded about one path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub kind: Kind,
    /// Permission bits including setuid/setgid/sticky (`mode & 0o7777`).
    pub perm: u32,
    pub uid: u32,
    pub gid: u32,
    pub size: u64,
    /// Link count; None for directories (overlayfs reports 1 for merged dirs).
    pub nlink: Option<u64>,
    /// Hex sha256 of the contents of a regular file.
    pub sha256: Option<String>,
    /// Target of a symlink.
    pub target: Option<Vec<u8>>,
    /// (major, minor) of a device.
    pub rdev: Option<(u32, u32)>,
    pub xattrs: BTreeMap<Vec<u8>, Vec<u8>>,
    /// (seconds, nanoseconds).
    pub mtime: (i64, i64),
    /// Informational only; never compared.
    pub ino: u64,
    /// Informational only; never compared.
    pub dev: u64,
}

/// A snapshot: relative path (bytes; the root is the empty path) -> entry,
/// plus the hard-link groups (paths of non-directories sharing an inode).
#[derive(Debug, Clone, Default)]
pub struct Tree {
    pub entries: BTreeMap<Vec<u8>, Entry>,
    pub hardlinks: BTreeSet<Vec<Vec<u8>>>,
    /// Paths that were listed but could not be recorded, and why.
    pub errors: BTreeMap<Vec<u8>, SnapError>,
}

impl Tree {
    /// The entry at `rel` ("" for the root), if any.
    pub fn get(&self, rel: &str) -> Option<&Entry> {
        self.entries.get(rel.as_bytes())
    }

    /// Names (relative paths) of all entries.
    pub fn paths(&self) -> impl Iterator<Item = &[u8]> {
        self.entries.keys().map(Vec::as_slice)
    }
}

/// Shows a relative path for messages: "/" for the root, non-printable and
/// non-ASCII bytes escaped.
pub fn show(rel: &[u8]) -> String {
    format!("/{}", rel.escape_ascii())
}

/// Joins a relative byte path to `root`.
pub fn join(root: &Path, rel: &[u8]) -> PathBuf {
    if rel.is_empty() {
        root.to_path_buf()
    } else {
        root.join(OsStr::from_bytes(rel))
    }
}

fn child_rel(parent: &[u8], name: &[u8]) -> Vec<u8> {
    let mut r = parent.to_vec();
    if !r.is_empty() {
        r.push(b'/');
    }
    r.extend_from_slice(name);
    r
}

fn hash_file(p: &Path) -> Result<String, SnapError> {
    let err = |op: &'static str, e: std::io::Error| SnapError::new(op, &e);
    let mut f = fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(p)
        .map_err(|e| err("open", e))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        let n = f.read(&mut buf).map_err(|e| err("read", e))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(h.finalize().iter().map(|b| format!("{b:02x}")).collect())
}

/// Why a listed path could not be recorded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapError {
    /// The call that failed ("lstat", "open", "read", "readlink",
    /// "listxattr", "readdir").
    pub op: &'static str,
    pub errno: Option<i32>,
    pub msg: String,
}

impl SnapError {
    fn new(op: &'static str, e: &std::io::Error) -> SnapError {
        SnapError {
            op,
            errno: e.raw_os_error(),
            msg: e.to_string(),
        }
    }
}

impl std::fmt::Display for SnapError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} failed: {}", self.op, self.msg)
    }
}

fn entry_of(p: &Path) -> Result<Entry, SnapError> {
    let md = fs::symlink_metadata(p).map_err(|e| SnapError::new("lstat", &e))?;
    let kind = Kind::of(md.file_type());
    let rdev = md.rdev();
    let sha256 = match kind {
        Kind::File => Some(hash_file(p)?),
        _ => None,
    };
    let target = match kind {
        Kind::Symlink => Some(
            fs::read_link(p)
                .map_err(|e| SnapError::new("readlink", &e))?
                .into_os_string()
                .into_vec(),
        ),
        _ => None,
    };
    Ok(Entry {
        kind,
        perm: md.mode() & 0o7777,
        uid: md.uid(),
        gid: md.gid(),
        size: md.size(),
        nlink: (kind != Kind::Dir).then_some(md.nlink()),
        sha256,
        target,
        rdev: matches!(kind, Kind::CharDev | Kind::BlockDev)
            .then(|| (libc::major(rdev), libc::minor(rdev))),
        xattrs: sys::lxattrs(p).map_err(|e| SnapError::new("listxattr", &e))?,
        mtime: (md.mtime(), md.mtime_nsec()),
        ino: md.ino(),
        dev: md.dev(),
    })
}

use std::os::unix::ffi::OsStringExt;

/// Walks `root` without following symlinks and records every path. A path
/// that is listed but cannot be read is recorded in [`Tree::errors`].
pub fn snapshot(root: &Path) -> Tree {
    let mut tree = Tree::default();
    let mut stack: Vec<Vec<u8>> = vec![Vec::new()];
    while let Some(rel) = stack.pop() {
        let p = join(root, &rel);
        let e = match entry_of(&p) {
            Ok(e) => e,
            Err(err) => {
                tree.errors.insert(rel, err);
                continue;
            }
        };
        if e.kind == Kind::Dir {
            let listed: Result<Vec<_>, _> = fs::read_dir(&p).and_then(|rd| rd.collect());
            match listed {
                Ok(list) => {
                    for de in list {
                        stack.push(child_rel(&rel, de.file_name().as_bytes()));
                    }
                }
                Err(err) => {
                    tree.errors
                        .insert(rel.clone(), SnapError::new("readdir", &err));
                }
            }
        }
        tree.entries.insert(rel, e);
    }
    let mut by_ino: BTreeMap<(u64, u64), Vec<Vec<u8>>> = BTreeMap::new();
    for (rel, e) in &tree.entries {
        if e.kind != Kind::Dir {
            by_ino.entry((e.dev, e.ino)).or_default().push(rel.clone());
        }
    }
    tree.hardlinks = by_ino
        .into_values()
        .filter(|g| g.len() > 1)
        .map(|mut g| {
            g.sort();
            g
        })
        .collect();
    tree
}

impl Tree {
    /// Drops the paths that were listed by readdir but do not exist for
    /// lstat (ENOENT), returning them. The kernel's overlayfs does this with
    /// whiteouts it does not filter from readdir: char-dev whiteouts in a
    /// directory that is not merged (exists in one layer only), and
    /// xwhiteouts in the bottom layer. Such a name hides nothing and is not
    /// there for lookup, so the oracle treats it as absent.
    pub fn drop_listed_but_absent(&mut self) -> Vec<Vec<u8>> {
        let gone: Vec<Vec<u8>> = self
            .errors
            .iter()
            .filter(|(_, e)| e.op == "lstat" && e.errno == Some(libc::ENOENT))
            .map(|(p, _)| p.clone())
            .collect();
        for p in &gone {
            self.errors.remove(p);
        }
        gone
    }
}

/// What [`diff_with`] compares besides type and content.
#[derive(Debug, Clone, Copy)]
pub struct DiffOptions {
    /// Compare `st_size` of directories (it is the topmost real dir's size,
    /// which depends on what that layer dir holds on disk).
    pub dir_sizes: bool,
    pub mtimes: bool,
    pub nlink: bool,
    pub owners: bool,
    pub xattrs: bool,
    pub hardlinks: bool,
}

impl Default for DiffOptions {
    fn default() -> Self {
        DiffOptions {
            dir_sizes: true,
            mtimes: true,
            nlink: true,
            owners: true,
            xattrs: true,
            hardlinks: true,
        }
    }
}

/// Differences between two snapshots, comparing everything.
pub fn diff(expected: &Tree, actual: &Tree) -> Vec<String> {
    diff_with(expected, actual, &DiffOptions::default())
}

fn show_xattrs(x: &BTreeMap<Vec<u8>, Vec<u8>>) -> String {
    let parts: Vec<String> = x
        .iter()
        .map(|(k, v)| format!("{}={:?}", k.escape_ascii(), v.escape_ascii().to_string()))
        .collect();
    format!("{{{}}}", parts.join(", "))
}

/// Human-readable differences (empty when equal under `opts`).
pub fn diff_with(expected: &Tree, actual: &Tree, opts: &DiffOptions) -> Vec<String> {
    let mut out = Vec::new();
    for (rel, e) in &expected.errors {
        out.push(format!("{}: expected side: {e}", show(rel)));
    }
    for (rel, e) in &actual.errors {
        out.push(format!("{}: {e}", show(rel)));
    }
    let all: BTreeSet<&Vec<u8>> = expected
        .entries
        .keys()
        .chain(actual.entries.keys())
        .collect();
    for rel in all {
        let (e, a) = (expected.entries.get(rel), actual.entries.get(rel));
        let path = show(rel);
        let (e, a) = match (e, a) {
            (Some(e), Some(a)) => (e, a),
            (Some(e), None) => {
                out.push(format!("{path}: missing (expected a {:?})", e.kind));
                continue;
            }
            (None, Some(a)) => {
                out.push(format!("{path}: unexpected {:?}", a.kind));
                continue;
            }
            // Listed on one side but unreadable: reported above.
            (None, None) => continue,
        };
        if e.kind != a.kind {
            out.push(format!("{path}: type {:?}, expected {:?}", a.kind, e.kind));
            continue;
        }
        let mut field = |name: &str, exp: String, act: String| {
            if exp != act {
                out.push(format!("{path}: {name} {act}, expected {exp}"));
            }
        };
        field("mode", format!("{:04o}", e.perm), format!("{:04o}", a.perm));
        if opts.owners {
            field(
                "owner",
                format!("{}:{}", e.uid, e.gid),
                format!("{}:{}", a.uid, a.gid),
            );
        }
        if e.kind != Kind::Dir || opts.dir_sizes {
            field("size", e.size.to_string(), a.size.to_string());
        }
        if opts.nlink {
            field("nlink", format!("{:?}", e.nlink), format!("{:?}", a.nlink));
        }
        field(
            "sha256",
            format!("{:?}", e.sha256),
            format!("{:?}", a.sha256),
        );
        field(
            "symlink target",
            format!(
                "{:?}",
                e.target.as_ref().map(|t| t.escape_ascii().to_string())
            ),
            format!(
                "{:?}",
                a.target.as_ref().map(|t| t.escape_ascii().to_string())
            ),
        );
        field("rdev", format!("{:?}", e.rdev), format!("{:?}", a.rdev));
        if opts.xattrs {
            field("xattrs", show_xattrs(&e.xattrs), show_xattrs(&a.xattrs));
        }
        if opts.mtimes {
            field(
                "mtime",
                format!("{}.{:09}", e.mtime.0, e.mtime.1),
                format!("{}.{:09}", a.mtime.0, a.mtime.1),
            );
        }
    }
    if opts.hardlinks {
        let fmt = |g: &Vec<Vec<u8>>| g.iter().map(|p| show(p)).collect::<Vec<_>>().join(" = ");
        for g in expected.hardlinks.difference(&actual.hardlinks) {
            out.push(format!("hard-link group missing: {}", fmt(g)));
        }
        for g in actual.hardlinks.difference(&expected.hardlinks) {
            out.push(format!("unexpected hard-link group: {}", fmt(g)));
        }
    }
    out
}

pub use super::sys::{RawDirEntry, read_dir_raw};

/// Checks every directory under `root` (a mount): `getdents64` returns one
/// `.` and one `..` and no duplicate names; each entry's `d_ino` equals the
/// `st_ino` of `lstat` on it and its `d_type` (if not DT_UNKNOWN) matches;
/// `.`'s `d_ino` is the dir's own inode and, below the root, `..`'s is the
/// parent's. Returns the problems found.
pub fn readdir_problems(root: &Path) -> Vec<String> {
    readdir_problems_with(root, false)
}

/// As [`readdir_problems`]; with `kernel_quirks`, two things the kernel's
/// overlayfs does are not problems: listing a name for which lstat says
/// ENOENT (whiteouts it does not filter, see [`Tree::drop_listed_but_absent`]),
/// and, in a directory that is not merged (its readdir is passed through to
/// the one real dir), a `..` whose `d_ino` is the real parent's inode in that
/// layer rather than the overlay parent's.
pub fn readdir_problems_with(root: &Path, kernel_quirks: bool) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack: Vec<Vec<u8>> = vec![Vec::new()];
    while let Some(rel) = stack.pop() {
        let dir = join(root, &rel);
        let here = match sys::lstat(&dir) {
            Ok(st) => st,
            Err(e) => {
                out.push(format!("{}: lstat: {e}", show(&rel)));
                continue;
            }
        };
        let ents = match read_dir_raw(&dir) {
            Ok(v) => v,
            Err(e) => {
                out.push(format!("{}: getdents64: {e}", show(&rel)));
                continue;
            }
        };
        let mut seen = BTreeSet::new();
        for d in &ents {
            if !seen.insert(d.name.clone()) {
                out.push(format!(
                    "{}: name {:?} listed twice",
                    show(&rel),
                    d.name.escape_ascii().to_string()
                ));
            }
        }
        for (dot, want) in [(&b"."[..], Some(here.st_ino)), (&b".."[..], None)] {
            let found: Vec<&RawDirEntry> = ents.iter().filter(|d| d.name == dot).collect();
            if found.len() != 1 {
                out.push(format!(
                    "{}: `{}` listed {} times",
                    show(&rel),
                    dot.escape_ascii(),
                    found.len()
                ));
                continue;
            }
            let want = match want {
                Some(w) => w,
                None if rel.is_empty() || kernel_quirks => continue,
                None => match sys::lstat(&dir.join("..")) {
                    Ok(st) => st.st_ino,
                    Err(e) => {
                        out.push(format!("{}: lstat ..: {e}", show(&rel)));
                        continue;
                    }
                },
            };
            if found[0].ino != want {
                out.push(format!(
                    "{}: `{}` has d_ino {}, but lstat says {}",
                    show(&rel),
                    dot.escape_ascii(),
                    found[0].ino,
                    want
                ));
            }
        }
        for d in ents.iter().filter(|d| d.name != b"." && d.name != b"..") {
            let crel = child_rel(&rel, &d.name);
            let st = match sys::lstat(&join(root, &crel)) {
                Ok(st) => st,
                Err(e) if kernel_quirks && e.raw_os_error() == Some(libc::ENOENT) => continue,
                Err(e) => {
                    out.push(format!("{}: listed, but lstat fails: {e}", show(&crel)));
                    continue;
                }
            };
            if d.ino != st.st_ino {
                out.push(format!(
                    "{}: d_ino {} but st_ino {}",
                    show(&crel),
                    d.ino,
                    st.st_ino
                ));
            }
            let kind = Kind::from_mode(st.st_mode);
            if d.d_type != libc::DT_UNKNOWN && d.d_type != kind.dt() {
                out.push(format!(
                    "{}: d_type {} but lstat says {:?}",
                    show(&crel),
                    d.d_type,
                    kind
                ));
            }
            if kind == Kind::Dir {
                stack.push(crel);
            }
        }
    }
    out
}

/// The result of `lstat` reduced to what two mounts must agree on.
fn lookup_outcome(p: &Path) -> Result<Kind, i32> {
    sys::lstat(p)
        .map(|st| Kind::from_mode(st.st_mode))
        .map_err(|e| e.raw_os_error().unwrap_or(-1))
}

fn errno_name(e: i32) -> String {
    match e {
        libc::ENOENT => "ENOENT".into(),
        libc::ENOTDIR => "ENOTDIR".into(),
        libc::ELOOP => "ELOOP".into(),
        other => format!("errno {other}"),
    }
}

/// Looks up every path of `probes` in both mounts and reports where they
/// disagree (exists vs not, type, or errno). This catches names that readdir
/// hides but lookup still finds, and the reverse. Probes below a symlink of
/// the `expected` tree are skipped (lstat would follow it, maybe to the host).
pub fn lookup_problems(
    expected_root: &Path,
    expected: &Tree,
    actual_root: &Path,
    probes: &BTreeSet<Vec<u8>>,
) -> Vec<String> {
    let mut out = Vec::new();
    'probe: for rel in probes {
        for (i, _) in rel.iter().enumerate().filter(|(_, b)| **b == b'/') {
            if expected
                .entries
                .get(&rel[..i])
                .is_some_and(|e| e.kind == Kind::Symlink)
            {
                continue 'probe;
            }
        }
        let (e, a) = (
            lookup_outcome(&join(expected_root, rel)),
            lookup_outcome(&join(actual_root, rel)),
        );
        if e != a {
            let fmt = |r: &Result<Kind, i32>| match r {
                Ok(k) => format!("a {k:?}"),
                Err(e) => errno_name(*e),
            };
            out.push(format!(
                "lookup {}: got {}, expected {}",
                show(rel),
                fmt(&a),
                fmt(&e)
            ));
        }
    }
    out
}

/// Every relative path that exists in any of the given (OCI-format) layer
/// dirs, plus, for each `.wh.NAME`, NAME itself: candidates for
/// [`lookup_problems`].
pub fn probe_paths(layers: &[PathBuf]) -> BTreeSet<Vec<u8>> {
    let mut out = BTreeSet::new();
    for layer in layers {
        let mut stack: Vec<Vec<u8>> = vec![Vec::new()];
        while let Some(rel) = stack.pop() {
            let p = join(layer, &rel);
            for de in fs::read_dir(&p).unwrap_or_else(|e| panic!("readdir {}: {e}", p.display())) {
                let de = de.expect("readdir entry");
                let name = de.file_name().into_vec();
                let crel = child_rel(&rel, &name);
                if let Some(target) = name.strip_prefix(b".wh.")
                    && !target.starts_with(b".wh.")
                {
                    out.insert(child_rel(&rel, target));
                }
                if de.file_type().expect("file type").is_dir() {
                    stack.push(crel.clone());
                }
                out.insert(crel);
            }
        }
    }
    out
}
