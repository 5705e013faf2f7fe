//! Thin wrappers over the few syscalls the test helpers need that std lacks:
//! xattrs without following symlinks, mknod, utimensat, getdents64.

use std::collections::BTreeMap;
use std::ffi::CString;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

/// The path as a C string (paths from the fixtures never hold NUL).
pub fn cpath(p: &Path) -> CString {
    CString::new(p.as_os_str().as_bytes())
        .unwrap_or_else(|_| panic!("path {} holds a NUL byte", p.display()))
}

fn cname(name: &[u8]) -> CString {
    CString::new(name)
        .unwrap_or_else(|_| panic!("xattr name {} holds a NUL byte", name.escape_ascii()))
}

/// `lsetxattr(path, name, value, 0)`.
pub fn lsetxattr(p: &Path, name: &[u8], value: &[u8]) -> io::Result<()> {
    let (c, n) = (cpath(p), cname(name));
    // SAFETY: valid NUL-terminated strings and a valid buffer.
    let rc = unsafe {
        libc::lsetxattr(
            c.as_ptr(),
            n.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// `lremovexattr(path, name)`.
pub fn lremovexattr(p: &Path, name: &[u8]) -> io::Result<()> {
    let (c, n) = (cpath(p), cname(name));
    // SAFETY: valid NUL-terminated strings.
    let rc = unsafe { libc::lremovexattr(c.as_ptr(), n.as_ptr()) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// `lgetxattr(path, name)`; `Ok(None)` when the attribute is absent.
pub fn lgetxattr(p: &Path, name: &[u8]) -> io::Result<Option<Vec<u8>>> {
    let (c, n) = (cpath(p), cname(name));
    loop {
        // SAFETY: a NULL buffer of size 0 asks for the size.
        let size = unsafe { libc::lgetxattr(c.as_ptr(), n.as_ptr(), std::ptr::null_mut(), 0) };
        if size < 0 {
            let e = io::Error::last_os_error();
            return match e.raw_os_error() {
                Some(libc::ENODATA) => Ok(None),
                _ => Err(e),
            };
        }
        let mut buf = vec![0u8; size as usize + 1];
        // SAFETY: buf is valid for buf.len() bytes.
        let got =
            unsafe { libc::lgetxattr(c.as_ptr(), n.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
        if got < 0 {
            let e = io::Error::last_os_error();
            match e.raw_os_error() {
                Some(libc::ERANGE) => continue,
                Some(libc::ENODATA) => return Ok(None),
                _ => return Err(e),
            }
        }
        buf.truncate(got as usize);
        return Ok(Some(buf));
    }
}

/// Every xattr of `p` (not following a final symlink), name -> value.
pub fn lxattrs(p: &Path) -> io::Result<BTreeMap<Vec<u8>, Vec<u8>>> {
    let c = cpath(p);
    let list = loop {
        // SAFETY: a NULL buffer of size 0 asks for the size.
        let size = unsafe { libc::llistxattr(c.as_ptr(), std::ptr::null_mut(), 0) };
        if size < 0 {
            return Err(io::Error::last_os_error());
        }
        let mut buf = vec![0u8; size as usize + 1];
        // SAFETY: buf is valid for buf.len() bytes.
        let got = unsafe { libc::llistxattr(c.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
        if got < 0 {
            let e = io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::ERANGE) {
                continue;
            }
            return Err(e);
        }
        buf.truncate(got as usize);
        break buf;
    };
    let mut out = BTreeMap::new();
    for name in list.split(|b| *b == 0).filter(|n| !n.is_empty()) {
        // An attribute listed but gone by the time we read it is skipped.
        if let Some(v) = lgetxattr(p, name)? {
            out.insert(name.to_vec(), v);
        }
    }
    Ok(out)
}

/// `mknod(path, kind | perm, makedev(major, minor))`.
pub fn mknod(
    p: &Path,
    kind: libc::mode_t,
    perm: libc::mode_t,
    major: u32,
    minor: u32,
) -> io::Result<()> {
    let c = cpath(p);
    // SAFETY: valid NUL-terminated path.
    let rc = unsafe { libc::mknod(c.as_ptr(), kind | perm, libc::makedev(major, minor)) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Sets atime and mtime of `p` without following a final symlink.
pub fn set_times(p: &Path, secs: i64, nsecs: i64) -> io::Result<()> {
    let c = cpath(p);
    let ts = libc::timespec {
        tv_sec: secs,
        tv_nsec: nsecs,
    };
    let times = [ts, ts];
    // SAFETY: valid path and a two-element timespec array.
    let rc = unsafe {
        libc::utimensat(
            libc::AT_FDCWD,
            c.as_ptr(),
            times.as_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// One record of `getdents64`, `.` and `..` included.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawDirEntry {
    pub name: Vec<u8>,
    /// `d_ino` as the filesystem reported it.
    pub ino: u64,
    /// `d_type` (`libc::DT_*`; `DT_UNKNOWN` is legal).
    pub d_type: u8,
}

/// Reads a directory with raw `getdents64`, in the order the filesystem
/// returns entries, including `.` and `..`.
pub fn read_dir_raw(path: &Path) -> io::Result<Vec<RawDirEntry>> {
    let c = cpath(path);
    // SAFETY: valid path; the fd is closed below.
    let fd = unsafe {
        libc::open(
            c.as_ptr(),
            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC | libc::O_NOFOLLOW,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut out = Vec::new();
    let mut buf = vec![0u8; 32 * 1024];
    let result = loop {
        // SAFETY: buf is valid for buf.len() bytes; fd is open.
        let n = unsafe { libc::syscall(libc::SYS_getdents64, fd, buf.as_mut_ptr(), buf.len()) };
        if n < 0 {
            break Err(io::Error::last_os_error());
        }
        if n == 0 {
            break Ok(());
        }
        let mut off = 0usize;
        while off < n as usize {
            // struct linux_dirent64 { u64 d_ino; i64 d_off; u16 d_reclen; u8 d_type; char d_name[]; }
            let rec = &buf[off..n as usize];
            let ino = u64::from_ne_bytes(rec[0..8].try_into().expect("8 bytes"));
            let reclen = u16::from_ne_bytes(rec[16..18].try_into().expect("2 bytes")) as usize;
            let d_type = rec[18];
            let name_area = &rec[19..reclen];
            let len = name_area
                .iter()
                .position(|b| *b == 0)
                .unwrap_or(name_area.len());
            out.push(RawDirEntry {
                name: name_area[..len].to_vec(),
                ino,
                d_type,
            });
            off += reclen;
        }
    };
    // SAFETY: fd is ours.
    unsafe { libc::close(fd) };
    result.map(|()| out)
}

/// `lstat`, returning the raw struct.
pub fn lstat(p: &Path) -> io::Result<libc::stat> {
    let c = cpath(p);
    // SAFETY: zeroed stat is a valid out-parameter.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: valid path and out pointer.
    let rc = unsafe { libc::lstat(c.as_ptr(), &mut st) };
    if rc == 0 {
        Ok(st)
    } else {
        Err(io::Error::last_os_error())
    }
}

nix::ioctl_read!(fs_ioc_shutdown, b'X', 125, u32);

/// Shut the filesystem holding `dir` down, as after a fatal device error:
/// its journal is flushed first, then every call on it fails with EIO
/// until it is mounted again (`FS_IOC_SHUTDOWN`, ext4 and xfs).
pub fn shut_down_filesystem(dir: &Path) -> io::Result<()> {
    let f = std::fs::File::open(dir)?;
    let mut flags: u32 = 1; // LOGFLUSH
    // SAFETY: an open fd and a valid pointer to the u32 the ioctl reads.
    unsafe { fs_ioc_shutdown(std::os::fd::AsRawFd::as_raw_fd(&f), &mut flags) }
        .map(|_| ())
        .map_err(io::Error::from)
}

/// Write `data` at `offset` of `file` through a shared mapping of its first
/// `len` bytes, then msync it.
pub fn write_through_shared_map(
    file: &std::fs::File,
    len: usize,
    offset: usize,
    data: &[u8],
) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    assert!(offset + data.len() <= len, "write past the mapping");
    // SAFETY: a fresh mapping of an open fd; checked for MAP_FAILED.
    let addr = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED,
            file.as_raw_fd(),
            0,
        )
    };
    if addr == libc::MAP_FAILED {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the range lies inside the mapping (asserted above), which is
    // unmapped right after and never shared with safe code.
    let rc = unsafe {
        std::ptr::copy_nonoverlapping(data.as_ptr(), addr.cast::<u8>().add(offset), data.len());
        let rc = libc::msync(addr, len, libc::MS_SYNC);
        libc::munmap(addr, len);
        rc
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}
