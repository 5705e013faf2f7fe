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

/// Remove an xattr of an open file; false if it had none.
pub fn fremove_xattr_opt(fd: BorrowedFd<'_>, name: &CStr) -> io::Result<bool> {
    // SAFETY: valid fd and C string.
    match cvt(unsafe { libc::fremovexattr(fd.as_raw_fd(), name.as_ptr()) }) {
        Ok(_) => Ok(true),
        Err(e) if e.raw_os_error() == Some(libc::ENODATA) => Ok(false),
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

/// The longest file handle the kernel hands out (MAX_HANDLE_SZ).
const MAX_HANDLE_SZ: usize = 128;

/// `struct file_handle` with room for the longest handle, u32-aligned.
#[repr(C)]
struct FileHandleBuf {
    handle_bytes: libc::c_uint,
    handle_type: libc::c_int,
    f_handle: [u8; MAX_HANDLE_SZ],
}

/// The file handle of the object open at `fd` (any fd, O_PATH too), as
/// name_to_handle_at encodes it without its parent: (type, bytes).
/// EOPNOTSUPP where the filesystem cannot encode handles.
pub fn file_handle(fd: BorrowedFd<'_>) -> io::Result<(i32, Vec<u8>)> {
    let mut fh = FileHandleBuf {
        handle_bytes: MAX_HANDLE_SZ as libc::c_uint,
        handle_type: 0,
        f_handle: [0; MAX_HANDLE_SZ],
    };
    let mut mount_id: libc::c_int = 0;
    // SAFETY: valid fd, C string, and a file_handle with handle_bytes of
    // room after its header; mount_id is ours.
    cvt(unsafe {
        libc::name_to_handle_at(
            fd.as_raw_fd(),
            c"".as_ptr(),
            (&mut fh as *mut FileHandleBuf).cast(),
            &mut mount_id,
            libc::AT_EMPTY_PATH,
        )
    })?;
    let len = (fh.handle_bytes as usize).min(MAX_HANDLE_SZ);
    Ok((fh.handle_type, fh.f_handle[..len].to_vec()))
}

/// Open the object a file handle of [`file_handle`] names, on the
/// filesystem `mount_fd` lives on (needs CAP_DAC_READ_SEARCH).
pub fn open_by_file_handle(
    mount_fd: BorrowedFd<'_>,
    handle_type: i32,
    bytes: &[u8],
) -> io::Result<OwnedFd> {
    if bytes.len() > MAX_HANDLE_SZ {
        return Err(io::Error::from_raw_os_error(libc::EINVAL));
    }
    let mut fh = FileHandleBuf {
        handle_bytes: bytes.len() as libc::c_uint,
        handle_type,
        f_handle: [0; MAX_HANDLE_SZ],
    };
    fh.f_handle[..bytes.len()].copy_from_slice(bytes);
    // SAFETY: valid fd and a file_handle holding handle_bytes bytes; the
    // returned fd is owned below.
    let fd = cvt(unsafe {
        libc::open_by_handle_at(
            mount_fd.as_raw_fd(),
            (&mut fh as *mut FileHandleBuf).cast(),
            libc::O_PATH | libc::O_NOFOLLOW | libc::O_CLOEXEC,
        )
    })?;
    // SAFETY: the kernel just returned this fd; nobody else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// `struct fsuuid2` of FS_IOC_GETFSUUID.
#[repr(C)]
pub struct FsUuid2 {
    len: u8,
    uuid: [u8; 16],
}

nix::ioctl_read!(fs_ioc_getfsuuid, 0x15, 0, FsUuid2);

/// The uuid of the filesystem `fd` lives on (the superblock's s_uuid,
/// zero-padded to 16 bytes); all zero where it has none (ENOTTY), as
/// the kernel's overlayfs then records it.
pub fn fs_uuid(fd: BorrowedFd<'_>) -> io::Result<[u8; 16]> {
    let mut out = FsUuid2 {
        len: 16,
        uuid: [0; 16],
    };
    // SAFETY: a valid fd and a pointer to an fsuuid2 we own.
    match unsafe { fs_ioc_getfsuuid(fd.as_raw_fd(), &mut out) } {
        Ok(_) => {
            let len = usize::from(out.len).min(16);
            let mut uuid = [0u8; 16];
            uuid[..len].copy_from_slice(&out.uuid[..len]);
            Ok(uuid)
        }
        Err(nix::errno::Errno::ENOTTY) => Ok([0; 16]),
        Err(e) => Err(e.into()),
    }
}

/// Hand the allocator's free memory back to the system (glibc keeps what
/// was freed in its arenas for later use). Costs a walk of the free lists.
pub fn return_free_memory() {
    // SAFETY: malloc_trim takes no pointers and is safe to call at any time.
    unsafe {
        libc::malloc_trim(0);
    }
}

thread_local! {
    /// Whether this thread may act as another owner and keep its
    /// capabilities (see [`ActingOwner`]); found out on first use.
    static KEEPS_CAPS_AS_OWNER: std::cell::Cell<Option<bool>> =
        const { std::cell::Cell::new(None) };
}

/// This thread's filesystem uid and gid set to a new object's owner, so
/// what it creates is owned by them from the start, as the kernel's
/// overlayfs creates with the caller's fsuid. Changing the fsuid away
/// from 0 would drop the thread's file capabilities (and the caller's
/// permission was checked on the merged directory already, groups and
/// all), so the thread first sets SECBIT_NO_SETUID_FIXUP: securebits
/// are per thread, and only the FUSE workers that create files set it.
/// Dropping the value restores the ids.
#[derive(Debug)]
pub struct ActingOwner {
    uid: nix::unistd::Uid,
    gid: nix::unistd::Gid,
}

impl ActingOwner {
    /// None where the thread cannot keep its capabilities (no
    /// CAP_SETPCAP: not root in its namespace): the caller sets the
    /// owner after creating instead.
    pub fn assume(uid: u32, gid: u32) -> Option<ActingOwner> {
        let keeps = KEEPS_CAPS_AS_OWNER.with(|k| {
            let keeps = k
                .get()
                .unwrap_or_else(|| nix::unistd::geteuid().is_root() && keep_caps_on_id_change());
            k.set(Some(keeps));
            keeps
        });
        if !keeps {
            return None;
        }
        let gid = nix::unistd::setfsgid(nix::unistd::Gid::from_raw(gid));
        let uid = nix::unistd::setfsuid(nix::unistd::Uid::from_raw(uid));
        Some(ActingOwner { uid, gid })
    }
}

impl Drop for ActingOwner {
    fn drop(&mut self) {
        nix::unistd::setfsuid(self.uid);
        nix::unistd::setfsgid(self.gid);
    }
}

/// Set SECBIT_NO_SETUID_FIXUP for this thread; whether it holds now.
fn keep_caps_on_id_change() -> bool {
    // SAFETY: prctl with integer arguments only.
    let bits = unsafe { libc::prctl(libc::PR_GET_SECUREBITS) };
    if bits < 0 {
        return false;
    }
    let want = bits | libc::SECBIT_NO_SETUID_FIXUP;
    // SAFETY: as above.
    want == bits
        || unsafe {
            libc::prctl(
                libc::PR_SET_SECUREBITS,
                libc::c_ulong::try_from(want).unwrap_or(0),
            )
        } == 0
}
