//! Random filesystem operations for the differential tests: an [`Op`] type,
//! a seeded generator biased toward names that exist in the union (or in one
//! of its layers), and [`apply`], which performs one operation on a mounted
//! tree with raw syscalls and reports a comparable [`Outcome`].
//!
//! Safety against the host: a mount under test may hold symlinks such as
//! `etc -> /`. Every parent directory is opened with `openat2(RESOLVE_BENEATH
//! | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS | RESOLVE_NO_XDEV)` from the
//! mount root, and the final component is handled with the `*at` call in its
//! no-follow form (`O_NOFOLLOW`, `AT_SYMLINK_NOFOLLOW`, `l*xattr`, no
//! `AT_SYMLINK_FOLLOW` for `linkat`). Devices, fifos and sockets are never
//! opened: an operation that would open one reports [`Value::NotOpened`]
//! instead (on both sides alike, since it is decided by the type the mount
//! shows).
//!
//! Creating operations carry the umask to create with; [`apply`] sets the
//! umask around the call. Call [`private_umask`] first in the thread that
//! runs it, so that the change stays in that thread.

use std::ffi::CString;
use std::fmt;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;

use super::sys;
use super::tree::Kind;

// ---- paths -----------------------------------------------------------------

/// A path relative to the mount root, `/`-separated bytes; empty for the root.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct RelPath(pub Vec<u8>);

impl RelPath {
    pub fn root() -> RelPath {
        RelPath(Vec::new())
    }

    pub fn is_root(&self) -> bool {
        self.0.is_empty()
    }

    /// `self/name`.
    pub fn child(&self, name: &[u8]) -> RelPath {
        let mut v = self.0.clone();
        if !v.is_empty() {
            v.push(b'/');
        }
        v.extend_from_slice(name);
        RelPath(v)
    }

    /// The parent directory and the last component; the root is `("", ".")`.
    pub fn split(&self) -> (&[u8], &[u8]) {
        if self.0.is_empty() {
            return (b"", b".");
        }
        match self.0.iter().rposition(|b| *b == b'/') {
            Some(i) => (&self.0[..i], &self.0[i + 1..]),
            None => (b"", &self.0[..]),
        }
    }
}

impl fmt::Debug for RelPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "\"{}\"", self.0.escape_ascii())
    }
}

impl fmt::Display for RelPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "/{}", self.0.escape_ascii())
    }
}

/// Bytes shown escaped and quoted.
struct Shown<'a>(&'a [u8]);

impl fmt::Display for Shown<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "\"{}\"", self.0.escape_ascii())
    }
}

// ---- operations ------------------------------------------------------------

/// File data written by an operation: `len` deterministic bytes from `seed`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Data {
    pub len: u32,
    pub seed: u64,
}

impl Data {
    pub fn bytes(&self) -> Vec<u8> {
        let mut rng = Rng::new(self.seed);
        let mut out = Vec::with_capacity(self.len as usize + 8);
        while out.len() < self.len as usize {
            // Printable-ish text most of the time, so failures read well.
            let w = rng.next_u64();
            for b in w.to_le_bytes() {
                out.push(b'a' + (b % 26));
            }
            out.push(b"\n \0\xff"[(w >> 60) as usize % 4]);
        }
        out.truncate(self.len as usize);
        out
    }
}

/// A timestamp argument of `utimensat`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Time {
    Now,
    Omit,
    At(i64, u32),
}

impl Time {
    fn timespec(self) -> libc::timespec {
        match self {
            Time::Now => libc::timespec {
                tv_sec: 0,
                tv_nsec: libc::UTIME_NOW,
            },
            Time::Omit => libc::timespec {
                tv_sec: 0,
                tv_nsec: libc::UTIME_OMIT,
            },
            Time::At(s, ns) => libc::timespec {
                tv_sec: s,
                tv_nsec: i64::from(ns),
            },
        }
    }
}

impl fmt::Display for Time {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Time::Now => f.write_str("UTIME_NOW"),
            Time::Omit => f.write_str("UTIME_OMIT"),
            Time::At(s, ns) => write!(f, "{s}.{ns:09}"),
        }
    }
}

/// `renameat2` flags.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RenameFlags {
    None,
    NoReplace,
    Exchange,
}

impl RenameFlags {
    fn bits(self) -> libc::c_uint {
        match self {
            RenameFlags::None => 0,
            RenameFlags::NoReplace => libc::RENAME_NOREPLACE,
            RenameFlags::Exchange => libc::RENAME_EXCHANGE,
        }
    }
}

/// `setxattr` flags.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum XattrFlags {
    Any,
    Create,
    Replace,
}

impl XattrFlags {
    fn bits(self) -> libc::c_int {
        match self {
            XattrFlags::Any => 0,
            XattrFlags::Create => libc::XATTR_CREATE,
            XattrFlags::Replace => libc::XATTR_REPLACE,
        }
    }
}

/// One operation on the mounted tree. Paths are relative to the mount root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// `openat(O_CREAT|O_WRONLY[|O_EXCL], mode)` under `umask`, then close.
    CreateFile {
        path: RelPath,
        mode: u32,
        umask: u32,
        excl: bool,
    },
    /// `open(O_WRONLY)` + `pwrite(data, offset)`.
    WriteAt {
        path: RelPath,
        offset: u64,
        data: Data,
    },
    /// `open(O_WRONLY)` + `ftruncate(len)` (`truncate(2)` has no nofollow form).
    Truncate {
        path: RelPath,
        len: u64,
    },
    /// `fchmodat2(AT_SYMLINK_NOFOLLOW)`.
    Chmod {
        path: RelPath,
        mode: u32,
    },
    /// `fchownat(AT_SYMLINK_NOFOLLOW)`; None is -1 (unchanged).
    Chown {
        path: RelPath,
        uid: Option<u32>,
        gid: Option<u32>,
    },
    /// `utimensat(AT_SYMLINK_NOFOLLOW)`.
    Utimens {
        path: RelPath,
        atime: Time,
        mtime: Time,
    },
    Mkdir {
        path: RelPath,
        mode: u32,
        umask: u32,
    },
    Rmdir {
        path: RelPath,
    },
    Unlink {
        path: RelPath,
    },
    /// `renameat2(from, to, flags)`.
    Rename {
        from: RelPath,
        to: RelPath,
        flags: RenameFlags,
    },
    /// `linkat(from, to, 0)`: never follows a symlink `from`.
    Link {
        from: RelPath,
        to: RelPath,
    },
    Symlink {
        target: Vec<u8>,
        path: RelPath,
    },
    /// `mknodat(S_IFIFO | mode)` under `umask`.
    Mkfifo {
        path: RelPath,
        mode: u32,
        umask: u32,
    },
    SetXattr {
        path: RelPath,
        name: Vec<u8>,
        value: Vec<u8>,
        flags: XattrFlags,
    },
    RemoveXattr {
        path: RelPath,
        name: Vec<u8>,
    },
    GetXattr {
        path: RelPath,
        name: Vec<u8>,
    },
    /// `llistxattr`, names sorted.
    ListXattr {
        path: RelPath,
    },
    /// `open(O_WRONLY|O_TRUNC)` + `write(data)`.
    OpenTrunc {
        path: RelPath,
        data: Data,
    },
    /// `open(O_WRONLY|O_APPEND)` + `write(data)`.
    Append {
        path: RelPath,
        data: Data,
    },
    /// `open(O_RDONLY)` + read to the end.
    ReadFile {
        path: RelPath,
    },
    /// `fstatat(AT_SYMLINK_NOFOLLOW)`.
    Stat {
        path: RelPath,
    },
    /// `getdents64`, names sorted, `.`/`..` and names lstat cannot find left out.
    ReadDir {
        path: RelPath,
    },
    ReadLink {
        path: RelPath,
    },
}

impl Op {
    /// A short name of the operation, for statistics.
    pub fn kind_name(&self) -> &'static str {
        match self {
            Op::CreateFile { .. } => "create",
            Op::WriteAt { .. } => "write_at",
            Op::Truncate { .. } => "truncate",
            Op::Chmod { .. } => "chmod",
            Op::Chown { .. } => "chown",
            Op::Utimens { .. } => "utimens",
            Op::Mkdir { .. } => "mkdir",
            Op::Rmdir { .. } => "rmdir",
            Op::Unlink { .. } => "unlink",
            Op::Rename { flags, .. } => match flags {
                RenameFlags::None => "rename",
                RenameFlags::NoReplace => "rename_noreplace",
                RenameFlags::Exchange => "rename_exchange",
            },
            Op::Link { .. } => "link",
            Op::Symlink { .. } => "symlink",
            Op::Mkfifo { .. } => "mkfifo",
            Op::SetXattr { .. } => "setxattr",
            Op::RemoveXattr { .. } => "removexattr",
            Op::GetXattr { .. } => "getxattr",
            Op::ListXattr { .. } => "listxattr",
            Op::OpenTrunc { .. } => "open_trunc",
            Op::Append { .. } => "append",
            Op::ReadFile { .. } => "read_file",
            Op::Stat { .. } => "stat",
            Op::ReadDir { .. } => "readdir",
            Op::ReadLink { .. } => "readlink",
        }
    }

    /// The paths the operation names (for a follow-up `lstat`).
    pub fn paths(&self) -> Vec<&RelPath> {
        match self {
            Op::Rename { from, to, .. } | Op::Link { from, to } => vec![from, to],
            Op::CreateFile { path, .. }
            | Op::WriteAt { path, .. }
            | Op::Truncate { path, .. }
            | Op::Chmod { path, .. }
            | Op::Chown { path, .. }
            | Op::Utimens { path, .. }
            | Op::Mkdir { path, .. }
            | Op::Rmdir { path }
            | Op::Unlink { path }
            | Op::Symlink { path, .. }
            | Op::Mkfifo { path, .. }
            | Op::SetXattr { path, .. }
            | Op::RemoveXattr { path, .. }
            | Op::GetXattr { path, .. }
            | Op::ListXattr { path }
            | Op::OpenTrunc { path, .. }
            | Op::Append { path, .. }
            | Op::ReadFile { path }
            | Op::Stat { path }
            | Op::ReadDir { path }
            | Op::ReadLink { path } => vec![path],
        }
    }

    /// True for operations that cannot change the tree.
    pub fn is_read_only(&self) -> bool {
        matches!(
            self,
            Op::GetXattr { .. }
                | Op::ListXattr { .. }
                | Op::ReadFile { .. }
                | Op::Stat { .. }
                | Op::ReadDir { .. }
                | Op::ReadLink { .. }
        )
    }
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Op::CreateFile {
                path,
                mode,
                umask,
                excl,
            } => write!(
                f,
                "create {path} mode={mode:04o} umask={umask:03o}{}",
                if *excl { " O_EXCL" } else { "" }
            ),
            Op::WriteAt { path, offset, data } => write!(
                f,
                "write {path} offset={offset} len={} seed={:#x}",
                data.len, data.seed
            ),
            Op::Truncate { path, len } => write!(f, "truncate {path} {len}"),
            Op::Chmod { path, mode } => write!(f, "chmod {mode:04o} {path}"),
            Op::Chown { path, uid, gid } => {
                let id = |v: &Option<u32>| v.map_or("-1".to_string(), |v| v.to_string());
                write!(f, "chown {}:{} {path}", id(uid), id(gid))
            }
            Op::Utimens { path, atime, mtime } => {
                write!(f, "utimens {path} atime={atime} mtime={mtime}")
            }
            Op::Mkdir { path, mode, umask } => {
                write!(f, "mkdir {path} mode={mode:04o} umask={umask:03o}")
            }
            Op::Rmdir { path } => write!(f, "rmdir {path}"),
            Op::Unlink { path } => write!(f, "unlink {path}"),
            Op::Rename { from, to, flags } => {
                write!(f, "rename {from} -> {to}")?;
                match flags {
                    RenameFlags::None => Ok(()),
                    RenameFlags::NoReplace => f.write_str(" RENAME_NOREPLACE"),
                    RenameFlags::Exchange => f.write_str(" RENAME_EXCHANGE"),
                }
            }
            Op::Link { from, to } => write!(f, "link {from} -> {to}"),
            Op::Symlink { target, path } => {
                write!(f, "symlink {path} -> {}", Shown(target))
            }
            Op::Mkfifo { path, mode, umask } => {
                write!(f, "mkfifo {path} mode={mode:04o} umask={umask:03o}")
            }
            Op::SetXattr {
                path,
                name,
                value,
                flags,
            } => write!(
                f,
                "setxattr {path} {}={} {flags:?}",
                Shown(name),
                Shown(value)
            ),
            Op::RemoveXattr { path, name } => {
                write!(f, "removexattr {path} {}", Shown(name))
            }
            Op::GetXattr { path, name } => write!(f, "getxattr {path} {}", Shown(name)),
            Op::ListXattr { path } => write!(f, "listxattr {path}"),
            Op::OpenTrunc { path, data } => write!(
                f,
                "open O_TRUNC {path} + write len={} seed={:#x}",
                data.len, data.seed
            ),
            Op::Append { path, data } => {
                write!(f, "append {path} len={} seed={:#x}", data.len, data.seed)
            }
            Op::ReadFile { path } => write!(f, "read {path}"),
            Op::Stat { path } => write!(f, "lstat {path}"),
            Op::ReadDir { path } => write!(f, "readdir {path}"),
            Op::ReadLink { path } => write!(f, "readlink {path}"),
        }
    }
}

// ---- outcomes --------------------------------------------------------------

/// An errno, shown by name.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Errno(pub i32);

impl Errno {
    fn last() -> Errno {
        Errno(
            std::io::Error::last_os_error()
                .raw_os_error()
                .unwrap_or(libc::EIO),
        )
    }

    pub fn name(self) -> String {
        let n = match self.0 {
            libc::EPERM => "EPERM",
            libc::ENOENT => "ENOENT",
            libc::EIO => "EIO",
            libc::ENXIO => "ENXIO",
            libc::EBADF => "EBADF",
            libc::EACCES => "EACCES",
            libc::EBUSY => "EBUSY",
            libc::EEXIST => "EEXIST",
            libc::EXDEV => "EXDEV",
            libc::ENODEV => "ENODEV",
            libc::ENOTDIR => "ENOTDIR",
            libc::EISDIR => "EISDIR",
            libc::EINVAL => "EINVAL",
            libc::EFBIG => "EFBIG",
            libc::ENOSPC => "ENOSPC",
            libc::EROFS => "EROFS",
            libc::EMLINK => "EMLINK",
            libc::ERANGE => "ERANGE",
            libc::ENAMETOOLONG => "ENAMETOOLONG",
            libc::ENOSYS => "ENOSYS",
            libc::ENOTEMPTY => "ENOTEMPTY",
            libc::ELOOP => "ELOOP",
            libc::ENODATA => "ENODATA",
            libc::EOPNOTSUPP => "EOPNOTSUPP",
            libc::ESTALE => "ESTALE",
            libc::ETXTBSY => "ETXTBSY",
            libc::E2BIG => "E2BIG",
            libc::ENOTCONN => "ENOTCONN",
            other => return format!("errno {other}"),
        };
        n.to_string()
    }
}

impl fmt::Debug for Errno {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name())
    }
}

impl fmt::Display for Errno {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name())
    }
}

/// What `lstat` says, minus what two correct mounts may disagree on
/// (inode and device numbers, times, directory sizes and link counts).
#[derive(Clone, PartialEq, Eq)]
pub struct StatInfo {
    pub kind: Kind,
    pub perm: u32,
    pub uid: u32,
    pub gid: u32,
    /// None for directories.
    pub size: Option<u64>,
    /// None for directories.
    pub nlink: Option<u64>,
    /// (major, minor) of a device.
    pub rdev: Option<(u32, u32)>,
}

impl fmt::Debug for StatInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:?} {:04o} {}:{}",
            self.kind, self.perm, self.uid, self.gid
        )?;
        if let Some(s) = self.size {
            write!(f, " size={s}")?;
        }
        if let Some(n) = self.nlink {
            write!(f, " nlink={n}")?;
        }
        if let Some((ma, mi)) = self.rdev {
            write!(f, " rdev={ma}:{mi}")?;
        }
        Ok(())
    }
}

impl StatInfo {
    fn of(st: &libc::stat) -> StatInfo {
        let kind = Kind::from_mode(st.st_mode);
        let dir = kind == Kind::Dir;
        StatInfo {
            kind,
            perm: st.st_mode & 0o7777,
            uid: st.st_uid,
            gid: st.st_gid,
            size: (!dir).then_some(st.st_size as u64),
            nlink: (!dir).then_some(st.st_nlink),
            rdev: matches!(kind, Kind::CharDev | Kind::BlockDev)
                .then(|| (libc::major(st.st_rdev), libc::minor(st.st_rdev))),
        }
    }
}

/// File contents, summarized.
#[derive(Clone, PartialEq, Eq)]
pub struct Content {
    pub len: u64,
    /// FNV-1a 64 of the whole contents.
    pub hash: u64,
    /// The first bytes, for messages.
    pub head: Vec<u8>,
}

impl fmt::Debug for Content {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} bytes, fnv {:016x}, starting {}",
            self.len,
            self.hash,
            Shown(&self.head)
        )
    }
}

/// What a successful operation returned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    Done,
    /// Bytes written.
    Written(usize),
    Content(Content),
    Stat(StatInfo),
    /// Directory entries or xattr names, sorted.
    Names(Vec<Vec<u8>>),
    /// A symlink target or an xattr value.
    Bytes(Vec<u8>),
    /// The path is of this type, which the harness never opens (a device
    /// could be the host's; a fifo would block).
    NotOpened(Kind),
}

/// The result of one operation: comparable between two mounts.
pub type Outcome = Result<Value, Errno>;

/// `Ok(Done)`, `Err(ENOENT)` ...: the outcome without its data, for
/// statistics.
pub fn outcome_class(o: &Outcome) -> String {
    match o {
        Ok(Value::NotOpened(k)) => format!("not opened ({k:?})"),
        Ok(_) => "ok".to_string(),
        Err(e) => e.name(),
    }
}

// ---- performing operations -------------------------------------------------

fn cvt(rc: libc::c_int) -> Result<libc::c_int, Errno> {
    if rc < 0 { Err(Errno::last()) } else { Ok(rc) }
}

fn cvt_size(rc: isize) -> Result<usize, Errno> {
    if rc < 0 {
        Err(Errno::last())
    } else {
        Ok(rc as usize)
    }
}

fn cvt_long(rc: libc::c_long) -> Result<libc::c_long, Errno> {
    if rc < 0 { Err(Errno::last()) } else { Ok(rc) }
}

fn cstr(b: &[u8]) -> Result<CString, Errno> {
    CString::new(b).map_err(|_| Errno(libc::EINVAL))
}

/// A parent directory (an `O_PATH` fd) and the last component of a path.
struct At {
    dir: OwnedFd,
    name: CString,
}

impl At {
    /// `/proc/self/fd/N/NAME`: a path for the calls without an `*at` form
    /// (xattrs); the magic link resolves to the parent, NAME is not followed
    /// by the `l*` calls.
    fn proc_path(&self) -> CString {
        let mut p = format!("/proc/self/fd/{}/", self.dir.as_raw_fd()).into_bytes();
        p.extend_from_slice(self.name.as_bytes());
        CString::new(p).expect("no NUL in an At name")
    }
}

fn open_root(root: &Path) -> OwnedFd {
    let c = sys::cpath(root);
    // SAFETY: valid path.
    let fd = unsafe {
        libc::open(
            c.as_ptr(),
            libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC,
        )
    };
    assert!(
        fd >= 0,
        "opening the mount root {}: {}",
        root.display(),
        std::io::Error::last_os_error()
    );
    // SAFETY: fd is a fresh descriptor we own.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

/// Opens the parent of `rel` beneath `root` without following any symlink.
fn resolve(root: &OwnedFd, rel: &RelPath) -> Result<At, Errno> {
    let (parent, name) = rel.split();
    let parent = if parent.is_empty() { b"." } else { parent };
    let cparent = cstr(parent)?;
    // SAFETY: open_how is plain old data; zero is a valid value for it.
    let mut how: libc::open_how = unsafe { std::mem::zeroed() };
    how.flags = (libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC) as u64;
    how.resolve = libc::RESOLVE_BENEATH
        | libc::RESOLVE_NO_SYMLINKS
        | libc::RESOLVE_NO_MAGICLINKS
        | libc::RESOLVE_NO_XDEV;
    // SAFETY: valid fd, path and open_how of the size passed.
    let fd = cvt_long(unsafe {
        libc::syscall(
            libc::SYS_openat2,
            root.as_raw_fd(),
            cparent.as_ptr(),
            &how as *const libc::open_how,
            std::mem::size_of::<libc::open_how>(),
        )
    })?;
    Ok(At {
        // SAFETY: fd is a fresh descriptor we own.
        dir: unsafe { OwnedFd::from_raw_fd(fd as libc::c_int) },
        name: cstr(name)?,
    })
}

fn fstatat(at: &At) -> Result<libc::stat, Errno> {
    // SAFETY: zeroed stat is a valid out-parameter.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: valid fd, name and out pointer.
    cvt(unsafe {
        libc::fstatat(
            at.dir.as_raw_fd(),
            at.name.as_ptr(),
            &mut st,
            libc::AT_SYMLINK_NOFOLLOW,
        )
    })?;
    Ok(st)
}

/// Opens `at` with `flags` (always `O_NOFOLLOW|O_NONBLOCK|O_CLOEXEC` too),
/// unless it is something the harness never opens.
fn open_file(at: &At, flags: libc::c_int, mode: u32) -> Result<Result<OwnedFd, Kind>, Errno> {
    match fstatat(at) {
        Ok(st) => {
            let kind = Kind::from_mode(st.st_mode);
            if !matches!(kind, Kind::File | Kind::Dir | Kind::Symlink) {
                return Ok(Err(kind));
            }
        }
        Err(Errno(libc::ENOENT)) if flags & libc::O_CREAT != 0 => {}
        Err(e) => return Err(e),
    }
    let flags = flags | libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC;
    // SAFETY: valid fd and name.
    let fd = cvt(unsafe {
        libc::openat(
            at.dir.as_raw_fd(),
            at.name.as_ptr(),
            flags,
            mode as libc::c_uint,
        )
    })?;
    // SAFETY: fd is a fresh descriptor we own.
    Ok(Ok(unsafe { OwnedFd::from_raw_fd(fd) }))
}

fn write_all_at(fd: &OwnedFd, data: &[u8], offset: Option<u64>) -> Result<usize, Errno> {
    let mut done = 0;
    while done < data.len() {
        let rest = &data[done..];
        // SAFETY: rest is valid for rest.len() bytes.
        let n = cvt_size(unsafe {
            match offset {
                Some(o) => libc::pwrite(
                    fd.as_raw_fd(),
                    rest.as_ptr().cast(),
                    rest.len(),
                    (o + done as u64) as libc::off_t,
                ),
                None => libc::write(fd.as_raw_fd(), rest.as_ptr().cast(), rest.len()),
            }
        })?;
        if n == 0 {
            return Err(Errno(libc::EIO));
        }
        done += n;
    }
    Ok(done)
}

fn fnv1a(h: &mut u64, data: &[u8]) {
    for &b in data {
        *h ^= u64::from(b);
        *h = h.wrapping_mul(0x0000_0100_0000_01B3);
    }
}

fn read_all(fd: &OwnedFd) -> Result<Content, Errno> {
    let mut c = Content {
        len: 0,
        hash: 0xcbf2_9ce4_8422_2325,
        head: Vec::new(),
    };
    let mut buf = vec![0u8; 128 * 1024];
    loop {
        // SAFETY: buf is valid for buf.len() bytes.
        let n =
            cvt_size(unsafe { libc::read(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) })?;
        if n == 0 {
            return Ok(c);
        }
        fnv1a(&mut c.hash, &buf[..n]);
        if c.head.len() < 24 {
            let take = (24 - c.head.len()).min(n);
            c.head.extend_from_slice(&buf[..take]);
        }
        c.len += n as u64;
    }
}

/// Names in an open directory (without `.` and `..`), sorted, leaving out
/// names lstat cannot find: the kernel's overlayfs lists some whiteouts it
/// does not filter (see `Tree::drop_listed_but_absent`).
fn list_dir(fd: &OwnedFd) -> Result<Vec<Vec<u8>>, Errno> {
    let mut names = Vec::new();
    let mut buf = vec![0u8; 32 * 1024];
    loop {
        // SAFETY: buf is valid for buf.len() bytes; fd is open.
        let n = cvt_long(unsafe {
            libc::syscall(
                libc::SYS_getdents64,
                fd.as_raw_fd(),
                buf.as_mut_ptr(),
                buf.len(),
            )
        })? as usize;
        if n == 0 {
            break;
        }
        let mut off = 0;
        while off < n {
            let rec = &buf[off..n];
            let reclen = u16::from_ne_bytes([rec[16], rec[17]]) as usize;
            let area = &rec[19..reclen];
            let len = area.iter().position(|b| *b == 0).unwrap_or(area.len());
            let name = area[..len].to_vec();
            if name != b"." && name != b".." {
                names.push(name);
            }
            off += reclen;
        }
    }
    let mut out = Vec::new();
    for name in names {
        let c = cstr(&name)?;
        // SAFETY: zeroed stat is a valid out-parameter.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        // SAFETY: valid fd, name and out pointer.
        let rc = unsafe {
            libc::fstatat(
                fd.as_raw_fd(),
                c.as_ptr(),
                &mut st,
                libc::AT_SYMLINK_NOFOLLOW,
            )
        };
        if rc < 0 && Errno::last() == Errno(libc::ENOENT) {
            continue;
        }
        out.push(name);
    }
    out.sort();
    Ok(out)
}

/// Gives the calling thread its own umask (and cwd/root): `unshare(CLONE_FS)`.
/// Call it first in a thread that runs [`apply`], which changes the umask,
/// so that other threads of the test binary keep theirs.
pub fn private_umask() {
    // SAFETY: unshare(CLONE_FS) only detaches this thread's fs context.
    let rc = unsafe { libc::unshare(libc::CLONE_FS) };
    assert_eq!(
        rc,
        0,
        "unshare(CLONE_FS): {}",
        std::io::Error::last_os_error()
    );
}

/// Runs `f` with the umask set to `mask`.
fn with_umask<T>(mask: u32, f: impl FnOnce() -> T) -> T {
    // SAFETY: umask has no preconditions.
    let old = unsafe { libc::umask(mask as libc::mode_t) };
    let r = f();
    // SAFETY: as above.
    unsafe { libc::umask(old) };
    r
}

/// Performs `op` on the tree mounted at `root`.
pub fn apply(root: &Path, op: &Op) -> Outcome {
    let rootfd = open_root(root);
    let r = &rootfd;
    match op {
        Op::CreateFile {
            path,
            mode,
            umask,
            excl,
        } => {
            let at = resolve(r, path)?;
            let excl = if *excl { libc::O_EXCL } else { 0 };
            let flags = libc::O_CREAT | libc::O_WRONLY | excl;
            Ok(match with_umask(*umask, || open_file(&at, flags, *mode))? {
                Ok(_fd) => Value::Done,
                Err(kind) => Value::NotOpened(kind),
            })
        }
        Op::WriteAt { path, offset, data } => {
            let at = resolve(r, path)?;
            match open_file(&at, libc::O_WRONLY, 0)? {
                Ok(fd) => Ok(Value::Written(write_all_at(
                    &fd,
                    &data.bytes(),
                    Some(*offset),
                )?)),
                Err(kind) => Ok(Value::NotOpened(kind)),
            }
        }
        Op::Truncate { path, len } => {
            let at = resolve(r, path)?;
            match open_file(&at, libc::O_WRONLY, 0)? {
                Ok(fd) => {
                    // SAFETY: valid fd.
                    cvt(unsafe { libc::ftruncate(fd.as_raw_fd(), *len as libc::off_t) })?;
                    Ok(Value::Done)
                }
                Err(kind) => Ok(Value::NotOpened(kind)),
            }
        }
        Op::OpenTrunc { path, data } | Op::Append { path, data } => {
            let at = resolve(r, path)?;
            let flags = if matches!(op, Op::Append { .. }) {
                libc::O_WRONLY | libc::O_APPEND
            } else {
                libc::O_WRONLY | libc::O_TRUNC
            };
            match open_file(&at, flags, 0)? {
                Ok(fd) => Ok(Value::Written(write_all_at(&fd, &data.bytes(), None)?)),
                Err(kind) => Ok(Value::NotOpened(kind)),
            }
        }
        Op::ReadFile { path } => {
            let at = resolve(r, path)?;
            match open_file(&at, libc::O_RDONLY, 0)? {
                Ok(fd) => Ok(Value::Content(read_all(&fd)?)),
                Err(kind) => Ok(Value::NotOpened(kind)),
            }
        }
        Op::Chmod { path, mode } => {
            let at = resolve(r, path)?;
            // SAFETY: valid fd and name.
            cvt_long(unsafe {
                libc::syscall(
                    libc::SYS_fchmodat2,
                    at.dir.as_raw_fd(),
                    at.name.as_ptr(),
                    *mode as libc::c_uint,
                    libc::AT_SYMLINK_NOFOLLOW,
                )
            })?;
            Ok(Value::Done)
        }
        Op::Chown { path, uid, gid } => {
            let at = resolve(r, path)?;
            // SAFETY: valid fd and name.
            cvt(unsafe {
                libc::fchownat(
                    at.dir.as_raw_fd(),
                    at.name.as_ptr(),
                    uid.unwrap_or(u32::MAX),
                    gid.unwrap_or(u32::MAX),
                    libc::AT_SYMLINK_NOFOLLOW,
                )
            })?;
            Ok(Value::Done)
        }
        Op::Utimens { path, atime, mtime } => {
            let at = resolve(r, path)?;
            let ts = [atime.timespec(), mtime.timespec()];
            // SAFETY: valid fd, name and a two-element array.
            cvt(unsafe {
                libc::utimensat(
                    at.dir.as_raw_fd(),
                    at.name.as_ptr(),
                    ts.as_ptr(),
                    libc::AT_SYMLINK_NOFOLLOW,
                )
            })?;
            Ok(Value::Done)
        }
        Op::Mkdir { path, mode, umask } => {
            let at = resolve(r, path)?;
            // SAFETY: valid fd and name.
            with_umask(*umask, || {
                cvt(unsafe {
                    libc::mkdirat(at.dir.as_raw_fd(), at.name.as_ptr(), *mode as libc::mode_t)
                })
            })?;
            Ok(Value::Done)
        }
        Op::Mkfifo { path, mode, umask } => {
            let at = resolve(r, path)?;
            // SAFETY: valid fd and name.
            with_umask(*umask, || {
                cvt(unsafe {
                    libc::mknodat(
                        at.dir.as_raw_fd(),
                        at.name.as_ptr(),
                        libc::S_IFIFO | (*mode as libc::mode_t & 0o7777),
                        0,
                    )
                })
            })?;
            Ok(Value::Done)
        }
        Op::Rmdir { path } | Op::Unlink { path } => {
            let at = resolve(r, path)?;
            let flags = if matches!(op, Op::Rmdir { .. }) {
                libc::AT_REMOVEDIR
            } else {
                0
            };
            // SAFETY: valid fd and name.
            cvt(unsafe { libc::unlinkat(at.dir.as_raw_fd(), at.name.as_ptr(), flags) })?;
            Ok(Value::Done)
        }
        Op::Rename { from, to, flags } => {
            let (a, b) = (resolve(r, from)?, resolve(r, to)?);
            // SAFETY: valid fds and names.
            cvt_long(unsafe {
                libc::syscall(
                    libc::SYS_renameat2,
                    a.dir.as_raw_fd(),
                    a.name.as_ptr(),
                    b.dir.as_raw_fd(),
                    b.name.as_ptr(),
                    flags.bits(),
                )
            })?;
            Ok(Value::Done)
        }
        Op::Link { from, to } => {
            let (a, b) = (resolve(r, from)?, resolve(r, to)?);
            // SAFETY: valid fds and names; flags 0 never follows `from`.
            cvt(unsafe {
                libc::linkat(
                    a.dir.as_raw_fd(),
                    a.name.as_ptr(),
                    b.dir.as_raw_fd(),
                    b.name.as_ptr(),
                    0,
                )
            })?;
            Ok(Value::Done)
        }
        Op::Symlink { target, path } => {
            let at = resolve(r, path)?;
            let t = cstr(target)?;
            // SAFETY: valid strings and fd.
            cvt(unsafe { libc::symlinkat(t.as_ptr(), at.dir.as_raw_fd(), at.name.as_ptr()) })?;
            Ok(Value::Done)
        }
        Op::SetXattr {
            path,
            name,
            value,
            flags,
        } => {
            let at = resolve(r, path)?;
            let (p, n) = (at.proc_path(), cstr(name)?);
            // SAFETY: valid strings and buffer.
            cvt(unsafe {
                libc::lsetxattr(
                    p.as_ptr(),
                    n.as_ptr(),
                    value.as_ptr().cast(),
                    value.len(),
                    flags.bits(),
                )
            })?;
            Ok(Value::Done)
        }
        Op::RemoveXattr { path, name } => {
            let at = resolve(r, path)?;
            let (p, n) = (at.proc_path(), cstr(name)?);
            // SAFETY: valid strings.
            cvt(unsafe { libc::lremovexattr(p.as_ptr(), n.as_ptr()) })?;
            Ok(Value::Done)
        }
        Op::GetXattr { path, name } => {
            let at = resolve(r, path)?;
            let (p, n) = (at.proc_path(), cstr(name)?);
            let mut buf = vec![0u8; 64 * 1024];
            // SAFETY: buf is valid for buf.len() bytes.
            let got = cvt_size(unsafe {
                libc::lgetxattr(p.as_ptr(), n.as_ptr(), buf.as_mut_ptr().cast(), buf.len())
            })?;
            buf.truncate(got);
            Ok(Value::Bytes(buf))
        }
        Op::ListXattr { path } => {
            let at = resolve(r, path)?;
            let p = at.proc_path();
            let mut buf = vec![0u8; 64 * 1024];
            // SAFETY: buf is valid for buf.len() bytes.
            let got = cvt_size(unsafe {
                libc::llistxattr(p.as_ptr(), buf.as_mut_ptr().cast(), buf.len())
            })?;
            let mut names: Vec<Vec<u8>> = buf[..got]
                .split(|b| *b == 0)
                .filter(|n| !n.is_empty())
                .map(<[u8]>::to_vec)
                .collect();
            names.sort();
            Ok(Value::Names(names))
        }
        Op::Stat { path } => {
            let at = resolve(r, path)?;
            Ok(Value::Stat(StatInfo::of(&fstatat(&at)?)))
        }
        Op::ReadDir { path } => {
            let at = resolve(r, path)?;
            // SAFETY: valid fd and name.
            let fd = cvt(unsafe {
                libc::openat(
                    at.dir.as_raw_fd(),
                    at.name.as_ptr(),
                    libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC,
                )
            })?;
            // SAFETY: fd is a fresh descriptor we own.
            let fd = unsafe { OwnedFd::from_raw_fd(fd) };
            Ok(Value::Names(list_dir(&fd)?))
        }
        Op::ReadLink { path } => {
            let at = resolve(r, path)?;
            let mut buf = vec![0u8; libc::PATH_MAX as usize + 1];
            // SAFETY: buf is valid for buf.len() bytes.
            let n = cvt_size(unsafe {
                libc::readlinkat(
                    at.dir.as_raw_fd(),
                    at.name.as_ptr(),
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                )
            })?;
            buf.truncate(n);
            Ok(Value::Bytes(buf))
        }
    }
}

// ---- what is there ---------------------------------------------------------

/// One path of a tree and its type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    pub path: RelPath,
    pub kind: Kind,
}

fn kind_of_dtype(d: u8) -> Option<Kind> {
    Some(match d {
        libc::DT_REG => Kind::File,
        libc::DT_DIR => Kind::Dir,
        libc::DT_LNK => Kind::Symlink,
        libc::DT_FIFO => Kind::Fifo,
        libc::DT_SOCK => Kind::Socket,
        libc::DT_CHR => Kind::CharDev,
        libc::DT_BLK => Kind::BlockDev,
        _ => return None,
    })
}

/// Every path under `root` (the root itself first, as the empty path), by
/// readdir, without following symlinks; sorted. Names the directory lists
/// are included even if lstat cannot find them (the kernel's unfiltered
/// whiteouts): operations on them are as interesting as any.
pub fn listing(root: &Path) -> Vec<Node> {
    let mut out = vec![Node {
        path: RelPath::root(),
        kind: Kind::Dir,
    }];
    let mut stack = vec![RelPath::root()];
    while let Some(dir) = stack.pop() {
        let p = super::tree::join(root, &dir.0);
        let Ok(ents) = sys::read_dir_raw(&p) else {
            continue;
        };
        for e in ents {
            if e.name == b"." || e.name == b".." {
                continue;
            }
            let path = dir.child(&e.name);
            let kind = match kind_of_dtype(e.d_type) {
                Some(k) => k,
                None => match sys::lstat(&super::tree::join(root, &path.0)) {
                    Ok(st) => Kind::from_mode(st.st_mode),
                    Err(_) => continue,
                },
            };
            if kind == Kind::Dir {
                stack.push(path.clone());
            }
            out.push(Node { path, kind });
        }
    }
    out.sort_by(|a, b| a.path.cmp(&b.path));
    out
}

/// Every relative path found in any of `layers` (plain directories),
/// whiteouts included: names that may be hidden in the union, good targets
/// for creating things over whiteouts and in opaque directories.
pub fn layer_paths(layers: &[std::path::PathBuf]) -> Vec<RelPath> {
    let mut out = std::collections::BTreeSet::new();
    for layer in layers {
        for n in listing(layer) {
            if !n.path.is_root() {
                out.insert(n.path);
            }
        }
    }
    out.into_iter().collect()
}

// ---- randomness ------------------------------------------------------------

/// splitmix64: tiny, seedable, good enough for test generation.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed ^ 0x6A09_E667_F3BC_C909)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (n > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        ((u128::from(self.next_u64()) * u128::from(n)) >> 64) as u64
    }

    /// True with probability `pct`%.
    pub fn chance(&mut self, pct: u64) -> bool {
        self.below(100) < pct
    }

    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> Option<&'a T> {
        if items.is_empty() {
            None
        } else {
            Some(&items[self.below(items.len() as u64) as usize])
        }
    }

    /// One of `items`, with probability proportional to its weight.
    pub fn weighted<T: Copy>(&mut self, items: &[(u32, T)]) -> T {
        let total: u64 = items.iter().map(|(w, _)| u64::from(*w)).sum();
        let mut x = self.below(total);
        for (w, t) in items {
            if x < u64::from(*w) {
                return *t;
            }
            x -= u64::from(*w);
        }
        unreachable!("weights sum to {total}")
    }
}

// ---- the generator ---------------------------------------------------------

/// Fresh names, reused often so that names get created, deleted and created
/// again (whiteouts, then replacements of whiteouts).
const FRESH: &[&[u8]] = &[
    b"a", b"b", b"c", b"new", b"n1", b"n2", b"f.txt", b"d", b"sub", b"x",
];

/// Rare names that are legal but odd for a union: OCI-looking names (an
/// overlayfs-format upper must keep them as plain files), a non-UTF-8 name,
/// trailing space, newline.
const ODD: &[&[u8]] = &[
    b".wh.oci-looking",
    b".wh..wh..opq",
    b"\xff\xfe-bytes",
    b"trailing ",
    b"new\nline",
];

const MODES: &[u32] = &[
    0o644, 0o600, 0o755, 0o700, 0o777, 0o000, 0o444, 0o4755, 0o2755, 0o1777, 0o2775, 0o640,
];

const UMASKS: &[u32] = &[0o022, 0o022, 0o000, 0o077, 0o027];

const IDS: &[u32] = &[0, 1000, 65534, 1234, 100];

const XATTR_NAMES: &[&[u8]] = &[
    b"user.a",
    b"user.b",
    b"user.comment",
    b"user.dirattr",
    b"user.empty",
    b"trusted.t",
];

/// Names in overlayfs's own namespace (rarely tried): set through a mount
/// they are stored escaped (`trusted.overlay.overlay.X`). `user.overlay.*`
/// is left out on purpose: without `userxattr` the kernel treats it as an
/// ordinary xattr, while layerfs reads that namespace as overlay markers in
/// every layer (the userxattr dialect) and so escapes it too.
const PRIVATE_XATTRS: &[&[u8]] = &[b"trusted.overlay.opaque", b"trusted.overlay.redirect"];

const SYMLINK_TARGETS: &[&[u8]] = &[
    b"a",
    b"../a",
    b"/etc/passwd",
    b"/",
    b"dangling",
    b".",
    b"sub/x",
];

/// Explicit timestamps: all before any test run, so the comparison can tell
/// them from "now".
const TIMES: &[(i64, u32)] = &[
    (0, 0),
    (1, 1),
    (978_307_200, 0),             // 2001-01-01
    (1_234_567_890, 123_456_789), // 2009
    (1_600_000_000, 999_999_999), // 2020
    (1_704_067_200, 250_000_000), // the fixtures' base time
];

/// Operation kinds and their weights.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum K {
    Create,
    WriteAt,
    Truncate,
    Chmod,
    Chown,
    Utimens,
    Mkdir,
    Rmdir,
    Unlink,
    Rename,
    Link,
    Symlink,
    Mkfifo,
    SetXattr,
    RemoveXattr,
    GetXattr,
    ListXattr,
    OpenTrunc,
    Append,
    ReadFile,
    Stat,
    ReadDir,
    ReadLink,
}

const WEIGHTS: &[(u32, K)] = &[
    (8, K::Create),
    (8, K::WriteAt),
    (5, K::Truncate),
    (5, K::Chmod),
    (4, K::Chown),
    (4, K::Utimens),
    (7, K::Mkdir),
    (6, K::Rmdir),
    (7, K::Unlink),
    (14, K::Rename),
    (4, K::Link),
    (4, K::Symlink),
    (2, K::Mkfifo),
    (5, K::SetXattr),
    (3, K::RemoveXattr),
    (1, K::GetXattr),
    (2, K::ListXattr),
    (3, K::OpenTrunc),
    (4, K::Append),
    (4, K::ReadFile),
    (2, K::Stat),
    (3, K::ReadDir),
    (1, K::ReadLink),
];

/// A seeded generator of operations. Each operation is drawn from the state
/// of a reference mount at that moment ([`listing`]), so the sequence for a
/// seed is reproducible as long as the reference behaves the same.
pub struct Gen {
    rng: Rng,
    layer_paths: Vec<RelPath>,
    /// Paths in the union when the first operation was drawn.
    initial: Option<usize>,
}

impl Gen {
    /// `layer_paths`: see [`layer_paths`].
    pub fn new(seed: u64, layer_paths: Vec<RelPath>) -> Gen {
        Gen {
            rng: Rng::new(seed),
            layer_paths,
            initial: None,
        }
    }

    /// The next operation, drawn from what the reference mount at `root`
    /// holds now.
    pub fn next_op(&mut self, root: &Path) -> Op {
        let union = listing(root);
        let op = self.draw(&union);
        // xattr names that exist are more interesting to get, replace and
        // remove: ask the reference which the chosen path has.
        match op {
            Op::SetXattr {
                path,
                name,
                value,
                flags,
            } => Op::SetXattr {
                name: self.known_xattr(root, &path, name, 40),
                path,
                value,
                flags,
            },
            Op::RemoveXattr { path, name } => Op::RemoveXattr {
                name: self.known_xattr(root, &path, name, 70),
                path,
            },
            Op::GetXattr { path, name } => Op::GetXattr {
                name: self.known_xattr(root, &path, name, 70),
                path,
            },
            op => op,
        }
    }

    /// With probability `pct`%, one of the xattrs `path` has (if any).
    fn known_xattr(&mut self, root: &Path, path: &RelPath, name: Vec<u8>, pct: u64) -> Vec<u8> {
        if !self.rng.chance(pct) {
            return name;
        }
        match apply(root, &Op::ListXattr { path: path.clone() }) {
            Ok(Value::Names(names)) => self.rng.pick(&names).cloned().unwrap_or(name),
            _ => name,
        }
    }

    /// The next operation, given what the reference holds.
    pub fn draw(&mut self, union: &[Node]) -> Op {
        // Keep the tree near its first size over long runs: favour creating
        // when it has shrunk, deleting when it has grown.
        let (n, base) = (union.len(), *self.initial.get_or_insert(union.len()));
        let (grow, shrink) = if n * 10 < base * 6 {
            (3, 1)
        } else if n * 10 > base * 15 {
            (1, 3)
        } else {
            (2, 2)
        };
        let weights: Vec<(u32, K)> = WEIGHTS
            .iter()
            .map(|&(w, k)| match k {
                K::Create | K::Mkdir | K::Symlink | K::Mkfifo | K::Link => (w * grow, k),
                K::Unlink | K::Rmdir => (w * shrink, k),
                _ => (w * 2, k),
            })
            .collect();
        let k = self.rng.weighted(&weights);
        match k {
            K::Create => Op::CreateFile {
                path: self.target(union),
                mode: self.mode(),
                umask: self.umask(),
                excl: self.rng.chance(50),
            },
            K::WriteAt => Op::WriteAt {
                path: self.file_mostly(union),
                offset: self.offset(),
                data: self.data(),
            },
            K::Truncate => Op::Truncate {
                path: self.file_mostly(union),
                len: *self
                    .rng
                    .pick(&[0, 1, 7, 100, 4095, 4096, 5000, 65_536, 1_048_579])
                    .expect("non-empty"),
            },
            K::Chmod => Op::Chmod {
                path: self.any_or_root(union),
                mode: self.mode(),
            },
            K::Chown => Op::Chown {
                path: self.any_or_root(union),
                uid: self.id(),
                gid: self.id(),
            },
            K::Utimens => Op::Utimens {
                path: self.any_or_root(union),
                atime: self.time(),
                mtime: self.time(),
            },
            K::Mkdir => Op::Mkdir {
                path: self.target(union),
                mode: self.mode() | if self.rng.chance(80) { 0o700 } else { 0 },
                umask: self.umask(),
            },
            K::Rmdir => {
                // Mostly directories that look empty (they may still hold
                // whited-out lower entries), so that the tree does not only
                // grow.
                let parents: std::collections::BTreeSet<&[u8]> =
                    union.iter().map(|n| n.path.split().0).collect();
                let path = if self.rng.chance(60) {
                    self.existing_where(union, 100, |n| {
                        n.kind == Kind::Dir && !parents.contains(n.path.0.as_slice())
                    })
                } else {
                    self.existing_where(union, 80, |n| n.kind == Kind::Dir)
                };
                Op::Rmdir { path }
            }
            K::Unlink => Op::Unlink {
                path: self.existing_where(union, 85, |n| n.kind != Kind::Dir),
            },
            K::Rename => self.rename(union),
            K::Link => Op::Link {
                from: self.existing_where(union, 90, |n| n.kind != Kind::Dir),
                to: self.target(union),
            },
            K::Symlink => Op::Symlink {
                target: self.symlink_target(union),
                path: self.target(union),
            },
            K::Mkfifo => Op::Mkfifo {
                path: self.target(union),
                mode: self.mode() & 0o777,
                umask: self.umask(),
            },
            K::SetXattr => {
                let len = *self.rng.pick(&[0u32, 1, 5, 40, 300]).expect("non-empty");
                Op::SetXattr {
                    path: self.any_or_root(union),
                    name: self.xattr_name(),
                    value: Data {
                        len,
                        seed: self.rng.next_u64(),
                    }
                    .bytes(),
                    flags: self.rng.weighted(&[
                        (6, XattrFlags::Any),
                        (2, XattrFlags::Create),
                        (2, XattrFlags::Replace),
                    ]),
                }
            }
            K::RemoveXattr => Op::RemoveXattr {
                path: self.any_or_root(union),
                name: self.xattr_name(),
            },
            K::GetXattr => Op::GetXattr {
                path: self.any_or_root(union),
                name: self.xattr_name(),
            },
            K::ListXattr => Op::ListXattr {
                path: self.any_or_root(union),
            },
            K::OpenTrunc => Op::OpenTrunc {
                path: self.file_mostly(union),
                data: self.data(),
            },
            K::Append => Op::Append {
                path: self.file_mostly(union),
                data: self.data(),
            },
            K::ReadFile => Op::ReadFile {
                path: self.file_mostly(union),
            },
            K::Stat => Op::Stat {
                path: if self.rng.chance(70) {
                    self.any_or_root(union)
                } else {
                    self.target(union)
                },
            },
            K::ReadDir => Op::ReadDir {
                path: if self.rng.chance(10) {
                    RelPath::root()
                } else {
                    self.existing_where(union, 90, |n| n.kind == Kind::Dir)
                },
            },
            K::ReadLink => Op::ReadLink {
                path: self.existing_where(union, 80, |n| n.kind == Kind::Symlink),
            },
        }
    }

    fn rename(&mut self, union: &[Node]) -> Op {
        let flags = self.rng.weighted(&[
            (14, RenameFlags::None),
            (3, RenameFlags::NoReplace),
            (3, RenameFlags::Exchange),
        ]);
        // Directories are the interesting (redirect) case: pick them often.
        let from = if self.rng.chance(45) {
            self.existing_where(union, 100, |n| n.kind == Kind::Dir)
        } else {
            self.existing_where(union, 90, |n| n.kind != Kind::Dir)
        };
        let to = match self.rng.below(100) {
            // Over an existing target, often of the same type.
            0..=34 => {
                let kind = union.iter().find(|n| n.path == from).map(|n| n.kind);
                self.existing_where(union, 60, |n| Some(n.kind) == kind)
            }
            // A new name in the same directory.
            35..=49 => {
                let parent = RelPath(from.split().0.to_vec());
                parent.child(self.fresh_name())
            }
            _ => self.target(union),
        };
        Op::Rename { from, to, flags }
    }

    fn fresh_name(&mut self) -> &'static [u8] {
        if self.rng.chance(4) {
            self.rng.pick(ODD).expect("non-empty")
        } else {
            self.rng.pick(FRESH).expect("non-empty")
        }
    }

    /// A path to create something at: mostly a fresh name in an existing
    /// directory or a name from a layer (maybe hidden by a whiteout), else
    /// an existing path (EEXIST and friends) or a broken one.
    fn target(&mut self, union: &[Node]) -> RelPath {
        match self.rng.below(100) {
            0..=44 => {
                let dir = self.dir(union);
                dir.child(self.fresh_name())
            }
            45..=64 => match self.rng.pick(&self.layer_paths) {
                Some(p) => p.clone(),
                None => RelPath::root().child(b"a"),
            },
            65..=91 => self.existing_where(union, 0, |_| true),
            _ => self.broken(union),
        }
    }

    /// A path that cannot be resolved: a missing parent, a parent that is
    /// not a directory, a symlink as parent, a name too long.
    fn broken(&mut self, union: &[Node]) -> RelPath {
        match self.rng.below(4) {
            0 => RelPath(b"no-such-dir/x".to_vec()),
            1 => self
                .existing_where(union, 100, |n| n.kind == Kind::File)
                .child(b"x"),
            2 => self
                .existing_where(union, 100, |n| n.kind == Kind::Symlink)
                .child(b"x"),
            _ => self.dir(union).child(&[b'N'; 256]),
        }
    }

    fn dir(&mut self, union: &[Node]) -> RelPath {
        let dirs: Vec<&Node> = union.iter().filter(|n| n.kind == Kind::Dir).collect();
        match self.rng.pick(&dirs) {
            Some(n) => n.path.clone(),
            None => RelPath::root(),
        }
    }

    /// An existing non-root path; with probability `pct`% one matching
    /// `pred` (when there is one).
    fn existing_where(
        &mut self,
        union: &[Node],
        pct: u64,
        pred: impl Fn(&Node) -> bool,
    ) -> RelPath {
        let all: Vec<&Node> = union.iter().filter(|n| !n.path.is_root()).collect();
        let matching: Vec<&Node> = all.iter().copied().filter(|n| pred(n)).collect();
        let pool = if !matching.is_empty() && self.rng.chance(pct) {
            matching
        } else {
            all
        };
        match self.rng.pick(&pool) {
            Some(n) => n.path.clone(),
            None => RelPath::root().child(self.fresh_name()),
        }
    }

    fn file_mostly(&mut self, union: &[Node]) -> RelPath {
        if self.rng.chance(8) {
            return self.target(union);
        }
        self.existing_where(union, 85, |n| n.kind == Kind::File)
    }

    fn any_or_root(&mut self, union: &[Node]) -> RelPath {
        if self.rng.chance(4) {
            return RelPath::root();
        }
        if self.rng.chance(5) {
            return self.target(union);
        }
        self.existing_where(union, 0, |_| true)
    }

    fn mode(&mut self) -> u32 {
        if self.rng.chance(15) {
            self.rng.below(0o10000) as u32
        } else {
            *self.rng.pick(MODES).expect("non-empty")
        }
    }

    fn umask(&mut self) -> u32 {
        *self.rng.pick(UMASKS).expect("non-empty")
    }

    fn id(&mut self) -> Option<u32> {
        if self.rng.chance(20) {
            None
        } else {
            Some(*self.rng.pick(IDS).expect("non-empty"))
        }
    }

    fn time(&mut self) -> Time {
        match self.rng.below(10) {
            0..=2 => Time::Now,
            3..=4 => Time::Omit,
            _ => {
                let (s, ns) = *self.rng.pick(TIMES).expect("non-empty");
                Time::At(s, ns)
            }
        }
    }

    fn offset(&mut self) -> u64 {
        match self.rng.below(10) {
            0..=3 => 0,
            4..=6 => self.rng.below(5000),
            7..=8 => 4096 * self.rng.below(8),
            _ => 1_048_576 + self.rng.below(100_000),
        }
    }

    fn data(&mut self) -> Data {
        let len = match self.rng.below(10) {
            0 => 0,
            1..=5 => self.rng.below(64),
            6..=8 => self.rng.below(9000),
            _ => self.rng.below(200_000),
        } as u32;
        Data {
            len,
            seed: self.rng.next_u64(),
        }
    }

    fn xattr_name(&mut self) -> Vec<u8> {
        if self.rng.chance(5) {
            self.rng.pick(PRIVATE_XATTRS).expect("non-empty").to_vec()
        } else {
            self.rng.pick(XATTR_NAMES).expect("non-empty").to_vec()
        }
    }

    fn symlink_target(&mut self, union: &[Node]) -> Vec<u8> {
        if self.rng.chance(50)
            && let Some(n) = self.rng.pick(union)
        {
            return n.path.0.clone();
        }
        self.rng.pick(SYMLINK_TARGETS).expect("non-empty").to_vec()
    }
}
