//! Unpacking one layer tar into a fresh directory, exactly as the tar says
//! (OCI `.wh.` whiteouts stay files), keeping owners, modes, times, xattrs,
//! hard links, devices and holes — and refusing anything that would reach
//! outside the directory. Every entry's parent is resolved one component
//! at a time from the root's fd with O_NOFOLLOW, so a symlink (also one the
//! same tar made earlier) is never followed.

use std::collections::BTreeMap;
use std::ffi::{CString, OsStr};
use std::fs::File;
use std::io::{self, Read};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileExt;
use std::path::Path;

use nix::errno::Errno;
use nix::fcntl::AtFlags;
use nix::fcntl::{OFlag, openat};
use nix::sys::stat::{FchmodatFlags, Mode, SFlag, UtimensatFlags, fchmod, fchmodat, mkdirat};
use nix::sys::time::TimeSpec;
use nix::unistd::{Gid, Uid, UnlinkatFlags, fchown, fchownat, linkat, symlinkat};

use super::{ImageError, Result};
use crate::layers::sys::{self as lsys, XattrTarget};

/// What a layer may hold at most. Real layers stay far below these; the
/// limits turn a hostile archive into an error instead of a full disk.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_entries: u64,
    /// Largest declared size of one file.
    pub max_file_size: u64,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_entries: 1_000_000,
            max_file_size: 64 << 30,
        }
    }
}

/// What an unpack wrote.
#[derive(Debug, Clone, Copy, Default)]
pub struct Unpacked {
    pub entries: u64,
    /// Sum of the regular files' sizes.
    pub size: u64,
}

/// A path inside the layer: its components, never empty, `.`, `..` or
/// holding `/`. No components is the layer root.
type Components = Vec<Vec<u8>>;

/// Unpack the tar read from `reader` into `root` (an empty directory).
/// Errors name the entry and the reason, in one line.
pub fn unpack(reader: impl Read, root: &Path, limits: &Limits) -> Result<Unpacked> {
    let root_fd = lsys::open_dir_path(root).map_err(|e| io_error("open", root, e))?;
    let mut state = State {
        root: root_fd,
        cached_parent: None,
        dir_times: BTreeMap::new(),
        root_user: nix::unistd::geteuid().is_root(),
        stats: Unpacked::default(),
    };
    let mut archive = tar::Archive::new(reader);
    let entries = archive
        .entries()
        .map_err(|e| ImageError::new(format!("reading the tar: {e}")))?;
    for entry in entries {
        let mut entry = entry.map_err(|e| ImageError::new(format!("reading the tar: {e}")))?;
        let raw_path = entry.path_bytes().into_owned();
        let shown = String::from_utf8_lossy(&raw_path).into_owned();
        state.stats.entries += 1;
        if state.stats.entries > limits.max_entries {
            return Err(ImageError::new(format!(
                "more than {} entries: refusing the layer",
                limits.max_entries
            )));
        }
        state
            .entry(&mut entry, &raw_path, limits)
            .map_err(|e| ImageError::new(format!("entry {shown:?}: {e}")))?;
    }
    state.set_dir_times()?;
    Ok(state.stats)
}

fn io_error(op: &str, path: &Path, e: impl std::fmt::Display) -> ImageError {
    ImageError::new(format!("{op} {}: {e}", path.display()))
}

/// Split a tar path into components, refusing absolute paths and `..`.
fn components(raw: &[u8]) -> std::result::Result<Components, String> {
    if raw.starts_with(b"/") {
        return Err("absolute path: refusing the layer".into());
    }
    let mut out = Vec::new();
    for c in raw.split(|&b| b == b'/') {
        match c {
            b"" | b"." => {}
            b".." => return Err("path with '..': refusing the layer".into()),
            c => out.push(c.to_vec()),
        }
    }
    Ok(out)
}

fn cstr(bytes: &[u8]) -> std::result::Result<CString, String> {
    CString::new(bytes).map_err(|_| "name holds a NUL byte".to_string())
}

fn show(c: &[Vec<u8>]) -> String {
    String::from_utf8_lossy(&c.join(&b'/')).into_owned()
}

struct State {
    root: OwnedFd,
    /// The last parent directory opened, reused for its siblings.
    cached_parent: Option<(Components, OwnedFd)>,
    /// Directory times, set after all content is written.
    dir_times: BTreeMap<Components, (i64, i64)>,
    root_user: bool,
    stats: Unpacked,
}

/// What the header says besides type and content.
struct Meta {
    mode: u32,
    uid: u32,
    gid: u32,
    mtime: (i64, i64),
    xattrs: Vec<(CString, Vec<u8>)>,
}

type EntryResult<T> = std::result::Result<T, String>;

fn errno_text(e: Errno) -> String {
    io::Error::from(e).to_string()
}

impl State {
    fn entry<R: Read>(
        &mut self,
        entry: &mut tar::Entry<'_, R>,
        raw_path: &[u8],
        limits: &Limits,
    ) -> EntryResult<()> {
        use tar::EntryType as T;
        let kind = entry.header().entry_type();
        if matches!(
            kind,
            T::XGlobalHeader | T::XHeader | T::GNULongName | T::GNULongLink
        ) {
            return Ok(());
        }
        let path = components(raw_path)?;
        let meta = meta_of(entry)?;
        if path.is_empty() {
            // `./`: the layer root's own metadata.
            if kind != T::Directory {
                return Err("the layer root is not a directory".into());
            }
            let fd = openat(&self.root, ".", dir_flags(), Mode::empty()).map_err(errno_text)?;
            self.apply_fd_meta(fd.as_fd(), &meta)?;
            self.dir_times.insert(path, meta.mtime);
            return Ok(());
        }
        let (name, parent_path) = path.split_last().ok_or("empty path")?;
        let parent = self.parent(parent_path)?;
        let cname = cstr(name)?;
        match kind {
            T::Directory => {
                match nix::sys::stat::fstatat(
                    parent.as_fd(),
                    cname.as_c_str(),
                    AtFlags::AT_SYMLINK_NOFOLLOW,
                ) {
                    Ok(st) if st.st_mode & libc::S_IFMT == libc::S_IFDIR => {}
                    Ok(_) => {
                        self.remove(parent.as_fd(), &cname)?;
                        mkdirat(
                            parent.as_fd(),
                            cname.as_c_str(),
                            Mode::from_bits_truncate(0o700),
                        )
                        .map_err(errno_text)?;
                    }
                    Err(Errno::ENOENT) => mkdirat(
                        parent.as_fd(),
                        cname.as_c_str(),
                        Mode::from_bits_truncate(0o700),
                    )
                    .map_err(errno_text)?,
                    Err(e) => return Err(errno_text(e)),
                }
                let fd = openat(parent.as_fd(), cname.as_c_str(), dir_flags(), Mode::empty())
                    .map_err(errno_text)?;
                self.apply_fd_meta(fd.as_fd(), &meta)?;
                self.dir_times.insert(path.clone(), meta.mtime);
            }
            T::Regular | T::Continuous | T::GNUSparse => {
                let declared = entry.size();
                if declared > limits.max_file_size {
                    return Err(format!(
                        "declares {declared} bytes, more than the {} allowed for one file: refusing the layer",
                        limits.max_file_size
                    ));
                }
                self.replace(parent.as_fd(), &cname)?;
                let fd = openat(
                    parent.as_fd(),
                    cname.as_c_str(),
                    OFlag::O_WRONLY
                        | OFlag::O_CREAT
                        | OFlag::O_EXCL
                        | OFlag::O_NOFOLLOW
                        | OFlag::O_CLOEXEC,
                    Mode::from_bits_truncate(0o600),
                )
                .map_err(errno_text)?;
                let file = File::from(fd);
                let written = write_sparse(entry, &file).map_err(|e| e.to_string())?;
                if written != declared {
                    return Err(format!("truncated: {written} of {declared} bytes"));
                }
                self.stats.size += written;
                self.apply_fd_meta(file.as_fd(), &meta)?;
                let times = timespecs(meta.mtime);
                nix::sys::stat::futimens(file.as_fd(), &times.0, &times.1).map_err(errno_text)?;
            }
            T::Symlink => {
                let target = entry.link_name_bytes().ok_or("symlink without a target")?;
                self.replace(parent.as_fd(), &cname)?;
                symlinkat(OsStr::from_bytes(&target), parent.as_fd(), cname.as_c_str())
                    .map_err(errno_text)?;
                self.apply_at_meta(parent.as_fd(), &cname, &meta, false)?;
            }
            T::Link => {
                let target = entry
                    .link_name_bytes()
                    .ok_or("hard link without a target")?;
                let target = components(&target)?;
                let (tname, tparent_path) = target
                    .split_last()
                    .ok_or("hard link to the layer root: refusing the layer")?;
                if target == path {
                    return Err("hard link to itself".into());
                }
                let tparent = self
                    .open_existing(tparent_path)
                    .map_err(|e| format!("hard link to {:?}: {e}", show(&target)))?;
                let tcname = cstr(tname)?;
                if let Err(e) = nix::sys::stat::fstatat(
                    tparent.as_fd(),
                    tcname.as_c_str(),
                    AtFlags::AT_SYMLINK_NOFOLLOW,
                ) {
                    return Err(format!(
                        "hard link to {:?}, which is not in the layer: {}",
                        show(&target),
                        errno_text(e)
                    ));
                }
                self.replace(parent.as_fd(), &cname)?;
                linkat(
                    tparent.as_fd(),
                    tcname.as_c_str(),
                    parent.as_fd(),
                    cname.as_c_str(),
                    AtFlags::empty(),
                )
                .map_err(|e| format!("hard link to {:?}: {}", show(&target), errno_text(e)))?;
            }
            T::Char | T::Block | T::Fifo => {
                let sflag = match kind {
                    T::Char => SFlag::S_IFCHR,
                    T::Block => SFlag::S_IFBLK,
                    _ => SFlag::S_IFIFO,
                };
                let major = entry.header().device_major().ok().flatten().unwrap_or(0);
                let minor = entry.header().device_minor().ok().flatten().unwrap_or(0);
                self.replace(parent.as_fd(), &cname)?;
                nix::sys::stat::mknodat(
                    parent.as_fd(),
                    cname.as_c_str(),
                    sflag,
                    Mode::from_bits_truncate(0o600),
                    nix::sys::stat::makedev(u64::from(major), u64::from(minor)),
                )
                .map_err(errno_text)?;
                self.apply_at_meta(parent.as_fd(), &cname, &meta, true)?;
            }
            other => {
                tracing::debug!(kind = ?other, "skipping a tar entry of an unsupported type");
            }
        }
        Ok(())
    }

    /// Open the directory `path` for *at calls, creating missing
    /// components (mode 0755, as tar does for implied parents). Refuses a
    /// component that is a symlink or not a directory.
    fn parent(&mut self, path: &[Vec<u8>]) -> EntryResult<OwnedFd> {
        if let Some((cached, fd)) = &self.cached_parent
            && cached.as_slice() == path
        {
            return fd.try_clone().map_err(|e| e.to_string());
        }
        let fd = self.walk(path, true)?;
        self.cached_parent = Some((path.to_vec(), fd.try_clone().map_err(|e| e.to_string())?));
        Ok(fd)
    }

    /// Open an existing directory without creating anything.
    fn open_existing(&mut self, path: &[Vec<u8>]) -> EntryResult<OwnedFd> {
        self.walk(path, false)
    }

    fn walk(&self, path: &[Vec<u8>], create: bool) -> EntryResult<OwnedFd> {
        let mut cur = self.root.try_clone().map_err(|e| e.to_string())?;
        for (i, comp) in path.iter().enumerate() {
            let c = cstr(comp)?;
            let flags = OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
            let next = match openat(cur.as_fd(), c.as_c_str(), flags, Mode::empty()) {
                Ok(fd) => fd,
                Err(Errno::ENOENT) if create => {
                    mkdirat(cur.as_fd(), c.as_c_str(), Mode::from_bits_truncate(0o755))
                        .map_err(errno_text)?;
                    openat(cur.as_fd(), c.as_c_str(), flags, Mode::empty()).map_err(errno_text)?
                }
                Err(Errno::ENOTDIR | Errno::ELOOP) => {
                    let so_far = show(&path[..=i]);
                    let st = nix::sys::stat::fstatat(
                        cur.as_fd(),
                        c.as_c_str(),
                        AtFlags::AT_SYMLINK_NOFOLLOW,
                    );
                    return Err(match st {
                        Ok(st) if st.st_mode & libc::S_IFMT == libc::S_IFLNK => {
                            format!("path goes through the symlink {so_far:?}: refusing the layer")
                        }
                        _ => format!("{so_far:?} is not a directory"),
                    });
                }
                Err(e) => return Err(format!("{}: {}", show(&path[..=i]), errno_text(e))),
            };
            cur = next;
        }
        Ok(cur)
    }

    /// Make room for a new non-directory `name`: whatever is there goes.
    fn replace(&mut self, parent: BorrowedFd<'_>, name: &CString) -> EntryResult<()> {
        match nix::sys::stat::fstatat(parent, name.as_c_str(), AtFlags::AT_SYMLINK_NOFOLLOW) {
            Err(Errno::ENOENT) => Ok(()),
            Err(e) => Err(errno_text(e)),
            Ok(_) => self.remove(parent, name),
        }
    }

    fn remove(&mut self, parent: BorrowedFd<'_>, name: &CString) -> EntryResult<()> {
        match nix::unistd::unlinkat(parent, name.as_c_str(), UnlinkatFlags::NoRemoveDir) {
            Ok(()) => Ok(()),
            Err(Errno::EISDIR) => {
                // A directory is replaced: forget any fd into it.
                self.cached_parent = None;
                remove_tree(parent, name).map_err(|e| e.to_string())
            }
            Err(e) => Err(errno_text(e)),
        }
    }

    fn chown_ok(&self, res: nix::Result<()>) -> EntryResult<()> {
        match res {
            // Unprivileged imports keep the importer as owner, as tar does.
            Err(Errno::EPERM) if !self.root_user => Ok(()),
            other => other.map_err(errno_text),
        }
    }

    /// Owner, mode and xattrs of an object opened as a real fd.
    fn apply_fd_meta(&self, fd: BorrowedFd<'_>, meta: &Meta) -> EntryResult<()> {
        self.chown_ok(fchown(
            fd,
            Some(Uid::from_raw(meta.uid)),
            Some(Gid::from_raw(meta.gid)),
        ))?;
        fchmod(fd, Mode::from_bits_truncate(meta.mode)).map_err(errno_text)?;
        for (name, value) in &meta.xattrs {
            lsys::set_xattr(XattrTarget::Fd(fd), name, value)
                .map_err(|e| format!("xattr {}: {e}", name.to_string_lossy()))?;
        }
        Ok(())
    }

    /// The same for a symlink, device or fifo, which cannot be opened:
    /// reached by name in its (safely opened) parent, never followed.
    fn apply_at_meta(
        &self,
        parent: BorrowedFd<'_>,
        name: &CString,
        meta: &Meta,
        chmod: bool,
    ) -> EntryResult<()> {
        self.chown_ok(fchownat(
            parent,
            name.as_c_str(),
            Some(Uid::from_raw(meta.uid)),
            Some(Gid::from_raw(meta.gid)),
            AtFlags::AT_SYMLINK_NOFOLLOW,
        ))?;
        if chmod {
            // Not a symlink: we made it just now in a directory only we use.
            fchmodat(
                parent,
                name.as_c_str(),
                Mode::from_bits_truncate(meta.mode),
                FchmodatFlags::FollowSymlink,
            )
            .map_err(errno_text)?;
        }
        if !meta.xattrs.is_empty() {
            let mut path = format!("/proc/self/fd/{}/", parent.as_raw_fd()).into_bytes();
            path.extend_from_slice(name.as_bytes());
            let path = cstr(&path)?;
            for (xname, value) in &meta.xattrs {
                lsys::set_xattr(XattrTarget::Path(&path), xname, value)
                    .map_err(|e| format!("xattr {}: {e}", xname.to_string_lossy()))?;
            }
        }
        let times = timespecs(meta.mtime);
        nix::sys::stat::utimensat(
            parent,
            name.as_c_str(),
            &times.0,
            &times.1,
            UtimensatFlags::NoFollowSymlink,
        )
        .map_err(errno_text)
    }

    /// Directory times last: writing inside a directory changes its mtime.
    fn set_dir_times(&mut self) -> Result<()> {
        self.cached_parent = None;
        let dirs = std::mem::take(&mut self.dir_times);
        for (path, mtime) in dirs.iter().rev() {
            let shown = show(path);
            let fail = |e: String| ImageError::new(format!("entry {shown:?}: set times: {e}"));
            let (parent, name) = match path.split_last() {
                Some((name, parent_path)) => (
                    self.walk(parent_path, false).map_err(fail)?,
                    cstr(name).map_err(fail)?,
                ),
                None => (
                    self.root.try_clone().map_err(|e| fail(e.to_string()))?,
                    CString::from(c"."),
                ),
            };
            let times = timespecs(*mtime);
            nix::sys::stat::utimensat(
                parent.as_fd(),
                name.as_c_str(),
                &times.0,
                &times.1,
                UtimensatFlags::NoFollowSymlink,
            )
            .map_err(|e| fail(errno_text(e)))?;
        }
        Ok(())
    }
}

fn dir_flags() -> OFlag {
    OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC
}

/// (atime, mtime): atime is set to the mtime, as tar does without atime.
fn timespecs(mtime: (i64, i64)) -> (TimeSpec, TimeSpec) {
    let ts = TimeSpec::new(mtime.0, mtime.1);
    (ts, ts)
}

fn meta_of<R: Read>(entry: &mut tar::Entry<'_, R>) -> EntryResult<Meta> {
    let header = entry.header();
    let old = header.as_old();
    let mode = numeric(header.mode().map(u64::from), &old.mode)? as u32 & 0o7777;
    let uid = u32::try_from(numeric(header.uid(), &old.uid)?).map_err(|_| "uid out of range")?;
    let gid = u32::try_from(numeric(header.gid(), &old.gid)?).map_err(|_| "gid out of range")?;
    let secs = i64::try_from(numeric(header.mtime(), &old.mtime)?).unwrap_or(0);
    let mut mtime = (secs, 0);
    let mut xattrs = Vec::new();
    if let Some(pax) = entry.pax_extensions().map_err(|e| e.to_string())? {
        for ext in pax {
            let ext = ext.map_err(|e| e.to_string())?;
            let key = ext.key_bytes();
            if let Some(name) = key.strip_prefix(b"SCHILY.xattr.") {
                xattrs.push((cstr(name)?, ext.value_bytes().to_vec()));
            } else if key == b"mtime"
                && let Some(t) = parse_pax_time(ext.value_bytes())
            {
                mtime = t;
            }
        }
    }
    Ok(Meta {
        mode,
        uid,
        gid,
        mtime,
        xattrs,
    })
}

/// A numeric header field; one left blank (NULs or spaces) is 0, as Go's
/// archive/tar (docker, umoci) reads it.
fn numeric(parsed: io::Result<u64>, raw: &[u8]) -> EntryResult<u64> {
    match parsed {
        Ok(v) => Ok(v),
        Err(_) if raw.iter().all(|&b| b == 0 || b == b' ') => Ok(0),
        Err(e) => Err(e.to_string()),
    }
}

/// A PAX time: `SECONDS[.FRACTION]`.
fn parse_pax_time(bytes: &[u8]) -> Option<(i64, i64)> {
    let text = std::str::from_utf8(bytes).ok()?;
    let (secs, frac) = text.split_once('.').unwrap_or((text, ""));
    let secs: i64 = secs.parse().ok()?;
    let mut nanos: i64 = 0;
    for (i, c) in frac.chars().take(9).enumerate() {
        let d = i64::from(c.to_digit(10)?);
        nanos += d * 10i64.pow(8 - i as u32);
    }
    if secs < 0 && nanos > 0 {
        return Some((secs - 1, 1_000_000_000 - nanos));
    }
    Some((secs, nanos))
}

/// Copy a file's content, leaving runs of zero blocks as holes (GNU sparse
/// entries arrive here with their holes filled in by the tar reader).
fn write_sparse(mut src: impl Read, file: &File) -> io::Result<u64> {
    const BLOCK: usize = 4096;
    let mut buf = vec![0u8; 256 * 1024];
    let mut pos: u64 = 0;
    loop {
        let mut filled = 0;
        while filled < buf.len() {
            let n = src.read(&mut buf[filled..])?;
            if n == 0 {
                break;
            }
            filled += n;
        }
        if filled == 0 {
            break;
        }
        for chunk in buf[..filled].chunks(BLOCK) {
            if chunk.iter().any(|&b| b != 0) {
                file.write_all_at(chunk, pos)?;
            }
            pos += chunk.len() as u64;
        }
        if filled < buf.len() {
            break;
        }
    }
    file.set_len(pos)?;
    Ok(pos)
}

/// Remove the directory `name` in `parent` and all it holds, relative to
/// fds, never following a symlink.
pub fn remove_tree(parent: BorrowedFd<'_>, name: &CString) -> io::Result<()> {
    let fd =
        openat(parent, name.as_c_str(), dir_flags(), Mode::empty()).map_err(io::Error::from)?;
    let mut names = Vec::new();
    {
        let mut dir = nix::dir::Dir::from_fd(fd.try_clone()?).map_err(io::Error::from)?;
        for entry in dir.iter() {
            let entry = entry.map_err(io::Error::from)?;
            let n = entry.file_name().to_bytes();
            if n != b"." && n != b".." {
                names.push(CString::from(entry.file_name()));
            }
        }
    }
    for n in &names {
        match nix::unistd::unlinkat(fd.as_fd(), n.as_c_str(), UnlinkatFlags::NoRemoveDir) {
            Err(Errno::EISDIR) => remove_tree(fd.as_fd(), n)?,
            other => other.map_err(io::Error::from)?,
        }
    }
    nix::unistd::unlinkat(parent, name.as_c_str(), UnlinkatFlags::RemoveDir)
        .map_err(io::Error::from)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    fn file(b: &mut tar::Builder<Vec<u8>>, path: &str, data: &[u8], mtime: u64) {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_mtime(mtime);
        b.append_data(&mut h, path, data).unwrap();
    }

    fn special(b: &mut tar::Builder<Vec<u8>>, kind: tar::EntryType, path: &str, link: &str) {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(kind);
        h.set_size(0);
        h.set_mode(0o755);
        h.set_mtime(1000);
        if !link.is_empty() {
            h.set_link_name(link).unwrap();
        }
        b.append_data(&mut h, path, std::io::empty()).unwrap();
    }

    fn unpack_into(tar: Vec<u8>, limits: &Limits) -> (tempfile::TempDir, Result<Unpacked>) {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("layer");
        std::fs::create_dir(&root).unwrap();
        let res = unpack(&tar[..], &root, limits);
        (dir, res)
    }

    #[test]
    fn components_refuse_escapes() {
        assert_eq!(
            components(b"./a//b/").unwrap(),
            vec![b"a".to_vec(), b"b".to_vec()]
        );
        assert!(components(b"./").unwrap().is_empty());
        assert!(components(b"/etc/passwd").is_err());
        assert!(components(b"a/../../x").is_err());
    }

    #[test]
    fn pax_times() {
        assert_eq!(parse_pax_time(b"12.5"), Some((12, 500_000_000)));
        assert_eq!(parse_pax_time(b"7"), Some((7, 0)));
        assert_eq!(parse_pax_time(b"x"), None);
    }

    #[test]
    fn a_symlink_made_earlier_is_never_written_through() {
        let outside = tempfile::tempdir().unwrap();
        let mut b = tar::Builder::new(Vec::new());
        special(
            &mut b,
            tar::EntryType::Symlink,
            "link",
            outside.path().to_str().unwrap(),
        );
        file(&mut b, "link/x", b"escaped", 1000);
        let (_dir, res) = unpack_into(b.into_inner().unwrap(), &Limits::default());
        let err = res.unwrap_err().to_string();
        assert!(err.contains("through the symlink \"link\""), "{err}");
        assert_eq!(std::fs::read_dir(outside.path()).unwrap().count(), 0);
    }

    #[test]
    fn links_replacements_holes_and_directory_times() {
        let mut b = tar::Builder::new(Vec::new());
        special(&mut b, tar::EntryType::Directory, "d/", "");
        file(&mut b, "d/a", b"aaa", 2000);
        special(&mut b, tar::EntryType::Link, "d/b", "d/a");
        special(&mut b, tar::EntryType::Directory, "x/", "");
        file(&mut b, "x/y", b"y", 2000);
        file(&mut b, "x", b"x is a file now", 2000);
        let mut sparse = vec![0u8; 1 << 20];
        sparse[(1 << 20) - 1] = 1;
        file(&mut b, "sparse", &sparse, 2000);
        file(&mut b, "implied/parent/f", b"f", 2000);
        let (dir, res) = unpack_into(b.into_inner().unwrap(), &Limits::default());
        let stats = res.unwrap();
        assert_eq!(stats.entries, 8);
        let root = dir.path().join("layer");
        let (a, bm) = (
            std::fs::metadata(root.join("d/a")).unwrap(),
            std::fs::metadata(root.join("d/b")).unwrap(),
        );
        assert_eq!((a.ino(), a.nlink()), (bm.ino(), 2));
        assert_eq!(std::fs::read(root.join("x")).unwrap(), b"x is a file now");
        let sp = std::fs::metadata(root.join("sparse")).unwrap();
        assert_eq!(sp.len(), 1 << 20);
        assert!(sp.blocks() * 512 < 1 << 19, "{} blocks", sp.blocks());
        // Set after d/a and d/b were written into it.
        assert_eq!(std::fs::metadata(root.join("d")).unwrap().mtime(), 1000);
        assert!(root.join("implied/parent").is_dir());
    }

    #[test]
    fn hard_links_must_name_an_entry_of_the_layer() {
        let mut b = tar::Builder::new(Vec::new());
        special(&mut b, tar::EntryType::Link, "l", "missing");
        let (_dir, res) = unpack_into(b.into_inner().unwrap(), &Limits::default());
        assert!(res.unwrap_err().to_string().contains("not in the layer"));
    }

    #[test]
    fn limits_are_enforced() {
        let mut b = tar::Builder::new(Vec::new());
        for i in 0..5 {
            file(&mut b, &format!("f{i}"), b"12345", 1);
        }
        let tar = b.into_inner().unwrap();
        let few = Limits {
            max_entries: 3,
            ..Limits::default()
        };
        let (_d, res) = unpack_into(tar.clone(), &few);
        assert!(res.unwrap_err().to_string().contains("more than 3 entries"));
        let small = Limits {
            max_file_size: 4,
            ..Limits::default()
        };
        let (_d, res) = unpack_into(tar, &small);
        assert!(res.unwrap_err().to_string().contains("declares 5 bytes"));
    }
}
