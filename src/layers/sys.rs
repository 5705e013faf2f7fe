//! Thin, safe wrappers over the few syscalls the layer code needs that
//! std does not offer (openat2, fd-relative stat, xattrs).

use std::ffi::{CStr, CString, OsString};
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::Path;

/// The parts of `struct stat` the union needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stat {
    pub dev: u64,
    pub ino: u64,
    pub mode: u32,
    pub nlink: u64,
    pub uid: u32,
    pub gid: u32,
    pub rdev: u64,
    pub size: u64,
    pub blocks: u64,
    pub blksize: u64,
    pub atime: (i64, i64),
    pub mtime: (i64, i64),
    pub ctime: (i64, i64),
}

impl Stat {
    pub fn file_type(&self) -> u32 {
        self.mode & libc::S_IFMT
    }

    pub fn is_dir(&self) -> bool {
        self.file_type() == libc::S_IFDIR
    }

    /// Whether both describe one object: device, inode number and type
    /// (a filesystem reuses the number of a removed inode, perhaps for
    /// an object of another type, at once).
    pub fn same_object(&self, other: &Stat) -> bool {
        (self.dev, self.ino, self.file_type()) == (other.dev, other.ino, other.file_type())
    }

    fn from_libc(st: &libc::stat) -> Stat {
        Stat {
            dev: st.st_dev,
            ino: st.st_ino,
            mode: st.st_mode,
            nlink: st.st_nlink,
            uid: st.st_uid,
            gid: st.st_gid,
            rdev: st.st_rdev,
            size: u64::try_from(st.st_size).unwrap_or(0),
            blocks: u64::try_from(st.st_blocks).unwrap_or(0),
            blksize: u64::try_from(st.st_blksize).unwrap_or(4096),
            atime: (st.st_atime, st.st_atime_nsec),
            mtime: (st.st_mtime, st.st_mtime_nsec),
            ctime: (st.st_ctime, st.st_ctime_nsec),
        }
    }
}

fn cvt(ret: libc::c_int) -> io::Result<libc::c_int> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

fn cvt_size(ret: libc::ssize_t) -> io::Result<usize> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret as usize)
    }
}

/// Open a host directory (a layer root) as an O_PATH fd.
pub fn open_dir_path(path: &Path) -> io::Result<OwnedFd> {
    let c = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    // SAFETY: a valid C string; the returned fd is owned below.
    let fd = cvt(unsafe {
        libc::open(
            c.as_ptr(),
            libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC,
        )
    })?;
    // SAFETY: fd was just returned by open and is ours.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// The longest path one openat2 call resolves (PATH_MAX less the NUL),
/// rounded down to leave room: longer paths are walked in chunks.
const CHUNK_MAX: usize = 4000;

/// openat2 with RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS: no component may be
/// a symlink and nothing may resolve outside `dir`. A path longer than one
/// call takes (PATH_MAX) is walked in chunks, each opened relative to the
/// directory the one before it reached, so a layer has no depth limit
/// (the kernel's overlayfs has none). Paths never hold `..`, so every
/// chunk beneath its directory is beneath `dir` too.
pub fn openat_beneath(dir: BorrowedFd<'_>, path: &CStr, flags: i32) -> io::Result<OwnedFd> {
    let bytes = path.to_bytes();
    if bytes.len() <= CHUNK_MAX {
        return openat2_beneath(dir, path, flags);
    }
    let mut base: Option<OwnedFd> = None;
    let mut rest = bytes;
    while rest.len() > CHUNK_MAX {
        // The last `/` that leaves a head no longer than a chunk; a single
        // component is at most NAME_MAX, so one is always there.
        let cut = rest[..=CHUNK_MAX]
            .iter()
            .rposition(|&b| b == b'/')
            .filter(|&i| i > 0)
            .ok_or_else(|| io::Error::from_raw_os_error(libc::ENAMETOOLONG))?;
        let head =
            CString::new(&rest[..cut]).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
        let at = base.as_ref().map_or(dir, |b| b.as_fd());
        base = Some(openat2_beneath(
            at,
            &head,
            libc::O_PATH | libc::O_DIRECTORY,
        )?);
        rest = &rest[cut + 1..];
    }
    let tail = CString::new(rest).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    let at = base.as_ref().map_or(dir, |b| b.as_fd());
    openat2_beneath(at, &tail, flags)
}

fn openat2_beneath(dir: BorrowedFd<'_>, path: &CStr, flags: i32) -> io::Result<OwnedFd> {
    // SAFETY: open_how is plain old data; all-zero is a valid value.
    let mut how: libc::open_how = unsafe { std::mem::zeroed() };
    how.flags = (flags | libc::O_CLOEXEC) as u64;
    how.resolve = libc::RESOLVE_BENEATH | libc::RESOLVE_NO_SYMLINKS | libc::RESOLVE_NO_MAGICLINKS;
    loop {
        // SAFETY: valid fd, C string and open_how of the size we pass.
        let ret = unsafe {
            libc::syscall(
                libc::SYS_openat2,
                dir.as_raw_fd(),
                path.as_ptr(),
                &how as *const libc::open_how,
                std::mem::size_of::<libc::open_how>(),
            )
        };
        if ret >= 0 {
            // SAFETY: the kernel returned a new fd that nobody else owns.
            return Ok(unsafe { OwnedFd::from_raw_fd(ret as i32) });
        }
        let err = io::Error::last_os_error();
        // EAGAIN: a concurrent rename elsewhere on the fs; retrying is what
        // the man page asks for.
        if err.raw_os_error() != Some(libc::EAGAIN) {
            return Err(err);
        }
    }
}

pub fn fstat(fd: BorrowedFd<'_>) -> io::Result<Stat> {
    // SAFETY: zeroed stat is valid; fstat fills it.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    cvt(unsafe { libc::fstat(fd.as_raw_fd(), &mut st) })?;
    Ok(Stat::from_libc(&st))
}

/// lstat of one name inside an already safely opened directory.
pub fn fstatat_nofollow(dir: BorrowedFd<'_>, name: &CStr) -> io::Result<Stat> {
    // SAFETY: as above.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    cvt(unsafe {
        libc::fstatat(
            dir.as_raw_fd(),
            name.as_ptr(),
            &mut st,
            libc::AT_SYMLINK_NOFOLLOW,
        )
    })?;
    Ok(Stat::from_libc(&st))
}

/// The target of the symlink `fd` (an O_PATH|O_NOFOLLOW fd) refers to.
pub fn readlink_fd(fd: BorrowedFd<'_>) -> io::Result<Vec<u8>> {
    let mut buf = vec![0u8; 256];
    loop {
        // SAFETY: buf is valid for buf.len() bytes.
        let n = cvt_size(unsafe {
            libc::readlinkat(
                fd.as_raw_fd(),
                c"".as_ptr(),
                buf.as_mut_ptr().cast(),
                buf.len(),
            )
        })?;
        if n < buf.len() {
            buf.truncate(n);
            return Ok(buf);
        }
        buf.resize(buf.len() * 2, 0);
    }
}

pub fn fstatfs(fd: BorrowedFd<'_>) -> io::Result<libc::statfs> {
    // SAFETY: zeroed statfs is valid; fstatfs fills it.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    cvt(unsafe { libc::fstatfs(fd.as_raw_fd(), &mut st) })?;
    Ok(st)
}

/// What an xattr call works on: an open fd, or a path whose last
/// component is not followed.
#[derive(Clone, Copy)]
pub enum XattrTarget<'a> {
    Fd(BorrowedFd<'a>),
    Path(&'a CStr),
}

/// Read a value, growing the buffer as needed. `call(buf_ptr, len)`.
fn read_sized(
    mut call: impl FnMut(*mut libc::c_void, usize) -> libc::ssize_t,
) -> io::Result<Vec<u8>> {
    loop {
        let size = cvt_size(call(std::ptr::null_mut(), 0))?;
        let mut buf = vec![0u8; size.max(1)];
        match cvt_size(call(buf.as_mut_ptr().cast(), buf.len())) {
            Ok(n) => {
                buf.truncate(n);
                return Ok(buf);
            }
            // The value grew between the two calls: ask again.
            Err(e) if e.raw_os_error() == Some(libc::ERANGE) => continue,
            Err(e) => return Err(e),
        }
    }
}

pub fn get_xattr(target: XattrTarget<'_>, name: &CStr) -> io::Result<Vec<u8>> {
    read_sized(|buf, len| match target {
        // SAFETY: buf is null with len 0, or valid for len bytes.
        XattrTarget::Fd(fd) => unsafe { libc::fgetxattr(fd.as_raw_fd(), name.as_ptr(), buf, len) },
        XattrTarget::Path(p) => unsafe { libc::lgetxattr(p.as_ptr(), name.as_ptr(), buf, len) },
    })
}

pub fn list_xattrs(target: XattrTarget<'_>) -> io::Result<Vec<OsString>> {
    let raw = read_sized(|buf, len| match target {
        // SAFETY: as in get_xattr.
        XattrTarget::Fd(fd) => unsafe { libc::flistxattr(fd.as_raw_fd(), buf.cast(), len) },
        XattrTarget::Path(p) => unsafe { libc::llistxattr(p.as_ptr(), buf.cast(), len) },
    })?;
    Ok(raw
        .split(|&b| b == 0)
        .filter(|n| !n.is_empty())
        .map(|n| OsString::from_vec(n.to_vec()))
        .collect())
}

/// An xattr of an fd, or None when it is absent (or xattrs are not
/// supported there).
pub fn fget_xattr_opt(fd: BorrowedFd<'_>, name: &CStr) -> io::Result<Option<Vec<u8>>> {
    match get_xattr(XattrTarget::Fd(fd), name) {
        Ok(v) => Ok(Some(v)),
        Err(e) if matches!(e.raw_os_error(), Some(libc::ENODATA) | Some(libc::ENOTSUP)) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Set an xattr (create or replace).
pub fn set_xattr(target: XattrTarget<'_>, name: &CStr, value: &[u8]) -> io::Result<()> {
    let (ptr, len) = (value.as_ptr().cast(), value.len());
    // SAFETY: value is valid for len bytes; name is a C string.
    cvt(match target {
        XattrTarget::Fd(fd) => unsafe {
            libc::fsetxattr(fd.as_raw_fd(), name.as_ptr(), ptr, len, 0)
        },
        XattrTarget::Path(p) => unsafe { libc::lsetxattr(p.as_ptr(), name.as_ptr(), ptr, len, 0) },
    })
    .map(drop)
}

/// Start the program at `path` as the first process of new namespaces
/// (`flags`: CLONE_NEW*), with SIGCHLD to the caller when it ends. nix's
/// clone is unsafe because the child shares nothing but must not touch
/// locks another thread held; it only calls execve here, with everything
/// built beforehand. Returns the child's pid.
pub fn spawn_in_namespaces(
    path: &CStr,
    argv: &[CString],
    env: &[CString],
    flags: nix::sched::CloneFlags,
) -> io::Result<nix::unistd::Pid> {
    let mut argv_ptrs: Vec<*const libc::c_char> = argv.iter().map(|a| a.as_ptr()).collect();
    argv_ptrs.push(std::ptr::null());
    let mut env_ptrs: Vec<*const libc::c_char> = env.iter().map(|e| e.as_ptr()).collect();
    env_ptrs.push(std::ptr::null());
    let mut stack = vec![0u8; 256 * 1024];
    let child = Box::new(|| {
        // SAFETY: pointers into arrays that live until this call returns;
        // execve only returns on failure.
        unsafe { libc::execve(path.as_ptr(), argv_ptrs.as_ptr(), env_ptrs.as_ptr()) };
        127
    });
    // SAFETY: the child only calls execve (no allocation, no locks).
    unsafe { nix::sched::clone(child, &mut stack, flags, Some(libc::SIGCHLD)) }
        .map_err(io::Error::from)
}

nix::ioctl_read_bad!(tiocgwinsz, libc::TIOCGWINSZ, libc::winsize);
nix::ioctl_write_ptr_bad!(tiocswinsz, libc::TIOCSWINSZ, libc::winsize);

/// The window size of the terminal `fd`.
pub fn window_size(fd: BorrowedFd<'_>) -> io::Result<libc::winsize> {
    // SAFETY: winsize is plain old data; the ioctl fills it.
    let mut ws: libc::winsize = unsafe { std::mem::zeroed() };
    // SAFETY: a valid fd and a pointer to a winsize we own.
    unsafe { tiocgwinsz(fd.as_raw_fd(), &mut ws) }.map_err(io::Error::from)?;
    Ok(ws)
}

/// Give the terminal `fd` this window size (its foreground group gets
/// SIGWINCH).
pub fn set_window_size(fd: BorrowedFd<'_>, ws: &libc::winsize) -> io::Result<()> {
    // SAFETY: a valid fd and a pointer to a winsize we own.
    unsafe { tiocswinsz(fd.as_raw_fd(), ws) }.map_err(io::Error::from)?;
    Ok(())
}

/// Send `fd` over the unix socket `sock` (SCM_RIGHTS).
pub fn send_fd(sock: BorrowedFd<'_>, fd: BorrowedFd<'_>) -> io::Result<()> {
    use nix::sys::socket::{ControlMessage, MsgFlags, UnixAddr, sendmsg};
    let fds = [fd.as_raw_fd()];
    let iov = [io::IoSlice::new(b"fd")];
    sendmsg::<UnixAddr>(
        sock.as_raw_fd(),
        &iov,
        &[ControlMessage::ScmRights(&fds)],
        MsgFlags::empty(),
        None,
    )
    .map_err(io::Error::from)?;
    Ok(())
}

/// Receive one fd sent with [`send_fd`]; None when the peer closed the
/// socket without sending one.
pub fn receive_fd(sock: BorrowedFd<'_>) -> io::Result<Option<OwnedFd>> {
    use nix::sys::socket::{ControlMessageOwned, MsgFlags, UnixAddr, recvmsg};
    let mut buf = [0u8; 2];
    let mut iov = [io::IoSliceMut::new(&mut buf)];
    let mut space = nix::cmsg_space!([std::os::fd::RawFd; 1]);
    let msg = loop {
        match recvmsg::<UnixAddr>(
            sock.as_raw_fd(),
            &mut iov,
            Some(&mut space),
            MsgFlags::MSG_CMSG_CLOEXEC,
        ) {
            Err(nix::errno::Errno::EINTR) => continue,
            other => break other.map_err(io::Error::from)?,
        }
    };
    for cmsg in msg.cmsgs().map_err(io::Error::from)? {
        if let ControlMessageOwned::ScmRights(fds) = cmsg
            && let Some(&raw) = fds.first()
        {
            // SAFETY: the kernel just installed this fd for us.
            return Ok(Some(unsafe { OwnedFd::from_raw_fd(raw) }));
        }
    }
    Ok(None)
}

/// Own an fd this process inherited by number (named in a spec passed by
/// its parent), after checking that it is open.
pub fn take_inherited_fd(fd: std::os::fd::RawFd) -> io::Result<OwnedFd> {
    // SAFETY: F_GETFD only reads the fd's flags; it fails on a closed fd.
    cvt(unsafe { libc::fcntl(fd, libc::F_GETFD) })?;
    // SAFETY: open (checked above), and nothing else in this process owns
    // it: it was inherited across exec for this one use.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}
