//! Objects made, changed and removed relative to a directory fd in the
//! upper layer or its work dir: owners, modes and times, new files and
//! nodes, renames, removal of trees, and copying file data. `upper.rs`
//! decides what is done; this is how, one call at a time.

use std::ffi::{CStr, CString};
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};

use nix::sys::time::TimeSpec;

use super::upper::{NewObject, cstr, cvt};
use super::{FileKind, sys};

/// Change owner, mode or times of an upper object.
pub fn set_owner_mode(
    dir: BorrowedFd<'_>,
    name: &CStr,
    kind: FileKind,
    uid: u32,
    gid: u32,
    perm: u32,
) -> io::Result<()> {
    // SAFETY: valid fd and C string.
    cvt(unsafe {
        libc::fchownat(
            dir.as_raw_fd(),
            name.as_ptr(),
            uid,
            gid,
            libc::AT_SYMLINK_NOFOLLOW,
        )
    })?;
    if kind != FileKind::Symlink {
        // After chown, which clears setuid/setgid.
        // SAFETY: valid fd and C string.
        cvt(unsafe { libc::fchmodat(dir.as_raw_fd(), name.as_ptr(), perm, 0) })?;
    }
    Ok(())
}

/// (sec, nsec) as nix takes it; nsec may be UTIME_NOW or UTIME_OMIT.
fn timespec((sec, nsec): (i64, i64)) -> TimeSpec {
    TimeSpec::new(sec, nsec)
}

/// utimensat with AT_SYMLINK_NOFOLLOW; nsec may be UTIME_NOW/UTIME_OMIT.
pub fn set_times(
    dir: BorrowedFd<'_>,
    name: &CStr,
    atime: (i64, i64),
    mtime: (i64, i64),
) -> io::Result<()> {
    nix::sys::stat::utimensat(
        dir,
        name,
        &timespec(atime),
        &timespec(mtime),
        nix::sys::stat::UtimensatFlags::NoFollowSymlink,
    )
    .map_err(io::Error::from)
}

pub(super) fn set_fd_times(
    fd: BorrowedFd<'_>,
    atime: (i64, i64),
    mtime: (i64, i64),
) -> io::Result<()> {
    nix::sys::stat::futimens(fd, &timespec(atime), &timespec(mtime)).map_err(io::Error::from)
}

pub(super) fn set_xattr_at(
    dir: BorrowedFd<'_>,
    name: &CStr,
    key: &CStr,
    value: &[u8],
) -> io::Result<()> {
    with_proc_path(dir, name, |p| {
        // SAFETY: valid C strings and buffer.
        cvt(unsafe {
            libc::lsetxattr(
                p.as_ptr(),
                key.as_ptr(),
                value.as_ptr().cast(),
                value.len(),
                0,
            )
        })
    })
}

/// Run `f` on `/proc/self/fd/DIR/NAME`: a path the l*xattr calls take
/// whose last component is not followed.
pub(super) fn with_proc_path<T>(
    dir: BorrowedFd<'_>,
    name: &CStr,
    f: impl FnOnce(&CStr) -> io::Result<T>,
) -> io::Result<T> {
    let mut p = format!("/proc/self/fd/{}/", dir.as_raw_fd()).into_bytes();
    p.extend_from_slice(name.to_bytes());
    let p = CString::new(p).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    f(&p)
}

pub(super) fn make_object(
    dir: BorrowedFd<'_>,
    name: &CStr,
    obj: &NewObject<'_>,
    perm: u32,
    uid: u32,
    gid: u32,
) -> io::Result<()> {
    let kind = match obj {
        NewObject::File => FileKind::Regular,
        NewObject::Dir => FileKind::Dir,
        NewObject::Symlink(_) => FileKind::Symlink,
        NewObject::Node { mode, .. } => {
            FileKind::from_mode(*mode).ok_or_else(|| io::Error::from_raw_os_error(libc::EINVAL))?
        }
    };
    // Private to the daemon until its owner and mode are set.
    let private = if kind == FileKind::Dir { 0o700 } else { 0o600 };
    make_entry(dir, name, obj, private)?;
    set_owner_mode(dir, name, kind, uid, gid, perm)
}

/// Make `obj` as `dir/name` with permission bits `perm` (a symlink has
/// none), failing if the name is taken; a regular file comes back open
/// read-write.
fn make_entry(
    dir: BorrowedFd<'_>,
    name: &CStr,
    obj: &NewObject<'_>,
    perm: u32,
) -> io::Result<Option<OwnedFd>> {
    use nix::fcntl::OFlag;
    use nix::sys::stat::{Mode, SFlag};
    let mode = Mode::from_bits_truncate(perm & 0o7777);
    let made = match obj {
        NewObject::File => {
            let flags = OFlag::O_RDWR | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_CLOEXEC;
            nix::fcntl::openat(dir, name, flags, mode).map(Some)
        }
        NewObject::Dir => nix::sys::stat::mkdirat(dir, name, mode).map(|()| None),
        NewObject::Symlink(target) => {
            nix::unistd::symlinkat(&*cstr(target)?, dir, name).map(|()| None)
        }
        NewObject::Node { mode: full, rdev } => {
            let kind = SFlag::from_bits_truncate(full & libc::S_IFMT);
            nix::sys::stat::mknodat(dir, name, kind, mode, *rdev).map(|()| None)
        }
    };
    made.map_err(io::Error::from)
}

/// A new name `to` in `to_dir` for `from` in `from_dir` (never following
/// a symlink).
pub(super) fn link_at(
    from_dir: BorrowedFd<'_>,
    from: &CStr,
    to_dir: BorrowedFd<'_>,
    to: &CStr,
) -> io::Result<()> {
    nix::unistd::linkat(from_dir, from, to_dir, to, nix::fcntl::AtFlags::empty())
        .map_err(io::Error::from)
}

/// Create a new empty regular file (mode 0600), failing if the name is
/// taken.
pub(super) fn create_excl(dir: BorrowedFd<'_>, name: &CStr) -> io::Result<OwnedFd> {
    use nix::fcntl::OFlag;
    let flags = OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_CLOEXEC;
    nix::fcntl::openat(
        dir,
        name,
        flags,
        nix::sys::stat::Mode::from_bits_truncate(0o600),
    )
    .map_err(io::Error::from)
}

/// Make `obj` as `dir/name` as its owner (sys::ActingOwner): owner and
/// mode are right from the first moment, with one call; a regular file
/// comes back open read-write. None where this thread cannot act as
/// another owner, or the object came out with another owner or mode (a
/// default ACL of the directory, an id the namespace does not map): it
/// is removed again and the caller makes it another way.
pub(super) fn create_as_owner(
    dir: BorrowedFd<'_>,
    name: &CStr,
    obj: &NewObject<'_>,
    perm: u32,
    uid: u32,
    gid: u32,
) -> io::Result<Option<(Option<OwnedFd>, sys::Stat)>> {
    let Some(owner) = sys::ActingOwner::assume(uid, gid) else {
        return Ok(None);
    };
    let made = make_entry(dir, name, obj, perm);
    drop(owner);
    let fd = made?;
    let st = match &fd {
        Some(fd) => sys::fstat(fd.as_fd()),
        None => sys::fstatat_nofollow(dir, name),
    };
    // A symlink's mode is always 0777.
    let want_perm = matches!(obj, NewObject::Symlink(_))
        .then_some(0o777)
        .unwrap_or(perm);
    if let Ok(st) = st
        && (st.uid, st.gid, st.mode & 0o7777) == (uid, gid, want_perm & 0o7777)
    {
        return Ok(Some((fd, st)));
    }
    let flag = match obj {
        NewObject::Dir => nix::unistd::UnlinkatFlags::RemoveDir,
        _ => nix::unistd::UnlinkatFlags::NoRemoveDir,
    };
    nix::unistd::unlinkat(dir, name, flag)?;
    st.map(|_| None)
}

pub(super) fn create_empty(dir: BorrowedFd<'_>, name: &CStr) -> io::Result<()> {
    create_excl(dir, name).map(drop)
}

pub fn rename2(
    from_dir: BorrowedFd<'_>,
    from: &CStr,
    to_dir: BorrowedFd<'_>,
    to: &CStr,
    flags: u32,
) -> io::Result<()> {
    // SAFETY: valid fds and C strings.
    cvt(unsafe {
        libc::renameat2(
            from_dir.as_raw_fd(),
            from.as_ptr(),
            to_dir.as_raw_fd(),
            to.as_ptr(),
            flags,
        )
    })
}

/// Remove a file, or a directory with everything in it, without ever
/// following a symlink.
pub(super) fn remove_entry(dir: BorrowedFd<'_>, name: &CStr) -> io::Result<()> {
    // SAFETY: valid fd and C string.
    if unsafe { libc::unlinkat(dir.as_raw_fd(), name.as_ptr(), 0) } == 0 {
        return Ok(());
    }
    let e = io::Error::last_os_error();
    if e.raw_os_error() != Some(libc::EISDIR) {
        return Err(e);
    }
    let sub = sys::openat_beneath(
        dir,
        name,
        libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW,
    )?;
    remove_contents(sub.as_fd())?;
    // SAFETY: valid fd and C string.
    cvt(unsafe { libc::unlinkat(dir.as_raw_fd(), name.as_ptr(), libc::AT_REMOVEDIR) })
}

pub(super) fn remove_contents(dir: BorrowedFd<'_>) -> io::Result<()> {
    let dup = dir.try_clone_to_owned()?;
    let mut d = nix::dir::Dir::from_fd(dup).map_err(io::Error::from)?;
    let names: Vec<CString> = d
        .iter()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_owned())
        .filter(|n| n.to_bytes() != b"." && n.to_bytes() != b"..")
        .collect();
    for n in names {
        remove_entry(dir, &n)?;
    }
    Ok(())
}

/// Copy `size` bytes, keeping holes: data extents found with SEEK_DATA /
/// SEEK_HOLE are copied with copy_file_range (a reflink where the
/// filesystem can), and the length is set at the end.
pub(super) fn copy_data(input: BorrowedFd<'_>, out: BorrowedFd<'_>, size: u64) -> io::Result<()> {
    let (i, o) = (input.as_raw_fd(), out.as_raw_fd());
    let size = i64::try_from(size).map_err(|_| io::Error::from_raw_os_error(libc::EFBIG))?;
    let mut pos: i64 = 0;
    while pos < size {
        // SAFETY: valid fd.
        let data = unsafe { libc::lseek(i, pos, libc::SEEK_DATA) };
        if data < 0 {
            let e = io::Error::last_os_error();
            match e.raw_os_error() {
                Some(libc::ENXIO) => break, // only a hole remains
                Some(libc::EINVAL) | Some(libc::EOPNOTSUPP) => {
                    copy_range(i, o, pos, size - pos)?;
                    break;
                }
                _ => return Err(e),
            }
        }
        // SAFETY: valid fd.
        let hole = unsafe { libc::lseek(i, data, libc::SEEK_HOLE) };
        let end = if hole < 0 { size } else { hole.min(size) };
        copy_range(i, o, data, end - data)?;
        pos = end;
    }
    // SAFETY: valid fd.
    cvt(unsafe { libc::ftruncate(o, size) })
}

pub(super) fn copy_range(i: i32, o: i32, start: i64, len: i64) -> io::Result<()> {
    let mut off_in = start;
    let mut off_out = start;
    let mut left = len;
    while left > 0 {
        let chunk = left.min(1 << 30) as usize;
        // SAFETY: valid fds and offsets we own.
        let n = unsafe { libc::copy_file_range(i, &mut off_in, o, &mut off_out, chunk, 0) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if matches!(
                e.raw_os_error(),
                Some(libc::EXDEV)
                    | Some(libc::EINVAL)
                    | Some(libc::EOPNOTSUPP)
                    | Some(libc::ENOSYS)
            ) {
                return copy_plain(i, o, off_in, off_out, left);
            }
            return Err(e);
        }
        if n == 0 {
            break; // the source is shorter than it said: keep what is there
        }
        left -= n as i64;
    }
    Ok(())
}

pub(super) fn copy_plain(
    i: i32,
    o: i32,
    mut off_in: i64,
    mut off_out: i64,
    mut left: i64,
) -> io::Result<()> {
    let mut buf = vec![0u8; 1 << 20];
    while left > 0 {
        let want = (left as usize).min(buf.len());
        // SAFETY: buf is valid for `want` bytes.
        let n = unsafe { libc::pread(i, buf.as_mut_ptr().cast(), want, off_in) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        if n == 0 {
            break;
        }
        let mut done = 0usize;
        while done < n as usize {
            // SAFETY: the slice is within buf.
            let w = unsafe {
                libc::pwrite(
                    o,
                    buf[done..].as_ptr().cast(),
                    n as usize - done,
                    off_out + done as i64,
                )
            };
            if w < 0 {
                return Err(io::Error::last_os_error());
            }
            done += w as usize;
        }
        off_in += n as i64;
        off_out += n as i64;
        left -= n as i64;
    }
    Ok(())
}
