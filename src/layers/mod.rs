//! One layer on disk: safe path resolution inside it, and how its entries
//! are read — every whiteout dialect and opaque marker lives here and
//! nowhere else. No FUSE types.

mod at;
pub mod index;
pub mod override_stat;
pub mod probe;
pub mod sys;
pub mod upper;
pub mod whiteout;

use std::ffi::{CStr, CString, OsStr, OsString};
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

pub use sys::{
    Stat, receive_fd, send_fd, set_window_size, spawn_in_namespaces, take_inherited_fd, window_size,
};
pub use upper::{NewObject, Upper, WhiteoutFormat};
pub use whiteout::{DirMarks, FileKind, FileMarks, RawKind, Redirect};

/// A path inside a layer, relative to its root, without a leading slash.
/// The layer root itself is `"."`.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct RelPath(CString);

impl RelPath {
    pub fn root() -> RelPath {
        RelPath(CString::from(c"."))
    }

    pub fn is_root(&self) -> bool {
        self.0.as_bytes() == b"."
    }

    /// The path of `name` inside this directory. `name` is one component
    /// as the kernel gave it: never empty, no `/`, no NUL.
    pub fn join(&self, name: &OsStr) -> io::Result<RelPath> {
        let name = name.as_bytes();
        if name.is_empty() || name.contains(&b'/') || name == b"." || name == b".." {
            return Err(io::Error::from_raw_os_error(libc::EINVAL));
        }
        let mut bytes = Vec::with_capacity(self.0.as_bytes().len() + 1 + name.len());
        if !self.is_root() {
            bytes.extend_from_slice(self.0.as_bytes());
            bytes.push(b'/');
        }
        bytes.extend_from_slice(name);
        CString::new(bytes)
            .map(RelPath)
            .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))
    }

    /// Split into the parent directory and the last component.
    pub fn split(&self) -> (RelPath, &OsStr) {
        let bytes = self.0.as_bytes();
        match bytes.iter().rposition(|&b| b == b'/') {
            Some(i) => {
                // Cannot contain NUL: it is a prefix of a CString.
                let parent = CString::new(&bytes[..i]).unwrap_or_else(|_| CString::from(c"."));
                (RelPath(parent), OsStr::from_bytes(&bytes[i + 1..]))
            }
            None if self.is_root() => (RelPath::root(), OsStr::from_bytes(b".")),
            None => (RelPath::root(), OsStr::from_bytes(bytes)),
        }
    }

    /// A path from its bytes (`a/b/c`; empty for the root). None when a
    /// component is empty, `.` or `..`, or it holds a NUL.
    pub fn from_bytes(bytes: &[u8]) -> Option<RelPath> {
        let trimmed = bytes.strip_suffix(b"/").unwrap_or(bytes);
        if trimmed.is_empty() {
            return Some(RelPath::root());
        }
        let ok = trimmed
            .split(|&b| b == b'/')
            .all(|c| !c.is_empty() && c != b"." && c != b"..");
        if !ok {
            return None;
        }
        CString::new(trimmed).ok().map(RelPath)
    }

    /// This path moved from below `old` to below `new`: the new path, or
    /// None when it is not below (or at) `old`.
    pub fn rebase(&self, old: &RelPath, new: &RelPath) -> Option<RelPath> {
        let (me, old_b) = (self.0.as_bytes(), old.0.as_bytes());
        if old.is_root() {
            return None;
        }
        let rest = me.strip_prefix(old_b)?;
        if !(rest.is_empty() || rest.starts_with(b"/")) {
            return None;
        }
        let mut bytes = if new.is_root() {
            rest.strip_prefix(b"/").unwrap_or(rest).to_vec()
        } else {
            let mut b = new.0.as_bytes().to_vec();
            b.extend_from_slice(rest);
            b
        };
        if bytes.is_empty() {
            bytes = b".".to_vec();
        }
        CString::new(bytes).ok().map(RelPath)
    }

    pub fn as_c_str(&self) -> &CStr {
        &self.0
    }

    pub fn as_os_str(&self) -> &OsStr {
        OsStr::from_bytes(self.0.as_bytes())
    }
}

impl std::fmt::Debug for RelPath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}", self.as_os_str())
    }
}

impl std::fmt::Display for RelPath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.is_root() {
            write!(f, "/")
        } else {
            write!(f, "/{}", self.as_os_str().to_string_lossy())
        }
    }
}

/// What a path names in one layer, for walking down the lower layers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DirLookup {
    /// A directory; an opaque one's redirect is not read (the kernel
    /// ignores it too).
    Dir {
        opaque: bool,
        redirect: Option<Vec<u8>>,
    },
    /// A whiteout or a non-directory: layers below do not show through.
    Stop,
    Absent,
}

/// What one path is in one layer, for explaining a stack path by path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Probe {
    /// Nothing there (or its parent is no directory in this layer).
    Absent,
    /// A whiteout (any dialect) and no object of the same name.
    Whiteout,
    Object {
        kind: FileKind,
        stat: Stat,
        /// A directory marked opaque (by xattr or OCI marker).
        opaque: bool,
        /// An OCI `.wh.NAME` sits beside the object: names below are
        /// hidden even though this layer shows its own object.
        whiteout_too: bool,
    },
}

/// One entry of one directory of one layer, classified.
#[derive(Debug, Clone)]
pub struct RawEntry {
    pub name: OsString,
    pub ino: u64,
    pub kind: RawKind,
}

/// One directory of one layer, read in full.
#[derive(Debug, Default)]
pub struct RawDir {
    pub marks: DirMarks,
    pub entries: Vec<RawEntry>,
}

/// A read-only layer: a directory tree opened once at mount time.
#[derive(Debug)]
pub struct Layer {
    path: PathBuf,
    root: OwnedFd,
    dev: u64,
    /// `.wh.` names are read as OCI whiteouts and markers. Off for an
    /// upper written in overlay format, where they are ordinary files.
    oci_names: bool,
}

impl Layer {
    pub fn open(path: &Path) -> io::Result<Layer> {
        let root = sys::open_dir_path(path)?;
        let dev = sys::fstat(root.as_fd())?.dev;
        Ok(Layer {
            path: path.to_path_buf(),
            root,
            dev,
            oci_names: true,
        })
    }

    /// Read this layer in the kernel's overlay dialects only: `.wh.` names
    /// are files like any other (an upper written in overlay format).
    pub fn ignore_oci_names(&mut self) {
        self.oci_names = false;
    }

    /// Where the layer lives on the host (for messages).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The device the layer's root lives on.
    pub fn dev(&self) -> u64 {
        self.dev
    }

    pub fn root_fd(&self) -> BorrowedFd<'_> {
        self.root.as_fd()
    }

    /// Open `rel` beneath the root without following any symlink on the
    /// way, so a layer's `etc -> /` can never lead the daemon to the host.
    /// A symlink as the last component is opened itself when `flags`
    /// holds `O_PATH | O_NOFOLLOW`, and refused otherwise.
    pub fn open_beneath(&self, rel: &RelPath, flags: i32) -> io::Result<OwnedFd> {
        sys::openat_beneath(self.root.as_fd(), rel.as_c_str(), flags)
    }

    /// An upper-layer directory, opened for *at calls.
    pub fn open_dir(&self, rel: &RelPath) -> io::Result<OwnedFd> {
        self.open_beneath(rel, libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW)
    }

    /// lstat of `rel`, resolved safely.
    pub fn stat(&self, rel: &RelPath) -> io::Result<Stat> {
        let fd = self.open_beneath(rel, libc::O_PATH | libc::O_NOFOLLOW)?;
        sys::fstat(fd.as_fd())
    }

    /// Read a symlink's target.
    pub fn readlink(&self, rel: &RelPath) -> io::Result<Vec<u8>> {
        let fd = self.open_beneath(rel, libc::O_PATH | libc::O_NOFOLLOW)?;
        sys::readlink_fd(fd.as_fd())
    }

    /// Open a regular file for reading.
    pub fn open_file(&self, rel: &RelPath) -> io::Result<std::fs::File> {
        let fd = self.open_beneath(rel, libc::O_RDONLY | libc::O_NOFOLLOW)?;
        Ok(std::fs::File::from(fd))
    }

    /// Read one directory in full and classify every entry: whiteouts in
    /// every dialect, opaque markers, and real objects.
    pub fn read_dir(&self, rel: &RelPath) -> io::Result<RawDir> {
        let fd = self.open_beneath(rel, libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW)?;
        let mut marks = whiteout::dir_marks(fd.as_fd())?;
        let dup = fd.try_clone()?;
        let mut dir = nix::dir::Dir::from_fd(dup).map_err(io::Error::from)?;
        let mut entries = Vec::new();
        for entry in dir.iter() {
            let entry = entry.map_err(io::Error::from)?;
            let name = entry.file_name();
            let bytes = name.to_bytes();
            if bytes == b"." || bytes == b".." {
                continue;
            }
            match whiteout::classify(fd.as_fd(), name, entry.file_type(), marks, self.oci_names)? {
                whiteout::Classified::OpaqueMarker => marks.opaque = true,
                whiteout::Classified::Hidden => {}
                whiteout::Classified::Whiteout(target) => entries.push(RawEntry {
                    name: target,
                    ino: entry.ino(),
                    kind: RawKind::Whiteout,
                }),
                whiteout::Classified::Object(kind) => entries.push(RawEntry {
                    name: OsStr::from_bytes(bytes).to_os_string(),
                    ino: entry.ino(),
                    kind: RawKind::Object(kind),
                }),
            }
        }
        Ok(RawDir { marks, entries })
    }

    /// The redirect a renamed directory carries (`trusted.overlay.redirect`
    /// or `user.overlay.redirect`): where its lower content lives.
    pub fn redirect(&self, rel: &RelPath) -> io::Result<Option<Vec<u8>>> {
        let fd = self.open_dir(rel)?;
        whiteout::redirect(fd.as_fd())
    }

    /// The overlay marks of the regular file `rel` (metacopy, redirect).
    pub fn file_marks(&self, rel: &RelPath) -> io::Result<FileMarks> {
        self.with_xattr_target(rel, false, |target| match target {
            sys::XattrTarget::Path(p) => whiteout::file_marks(p),
            sys::XattrTarget::Fd(_) => Ok(FileMarks::default()),
        })
    }

    /// Whether the directory `dir` is marked opaque (by xattr, or by the
    /// OCI marker in a layer that uses OCI names).
    fn marked_opaque(&self, dir: BorrowedFd<'_>) -> bool {
        let marker = CString::new(whiteout::OCI_OPAQUE_MARKER).unwrap_or_default();
        whiteout::dir_marks(dir).is_ok_and(|m| m.opaque)
            || (self.oci_names && sys::fstatat_nofollow(dir, &marker).is_ok())
    }

    /// What a lookup of `rel` finds in this layer, for walking a path
    /// down the layers: `Dir { opaque, redirect }`, `Stop` for a whiteout
    /// or a non-directory, or `Absent`.
    pub fn lookup_dir(&self, rel: &RelPath) -> DirLookup {
        let (parent, name) = rel.split();
        let Ok(pfd) = self.open_beneath(&parent, libc::O_PATH | libc::O_DIRECTORY) else {
            return DirLookup::Absent;
        };
        let mut wh = whiteout::OCI_WHITEOUT_PREFIX.to_vec();
        wh.extend_from_slice(name.as_bytes());
        let (Ok(cname), Ok(wh)) = (CString::new(name.as_bytes()), CString::new(wh)) else {
            return DirLookup::Absent;
        };
        // An OCI whiteout hides the name in the layers below only: an
        // object of its own layer still shows, as if opaque.
        let whited_out = self.oci_names && sys::fstatat_nofollow(pfd.as_fd(), &wh).is_ok();
        match sys::fstatat_nofollow(pfd.as_fd(), &cname) {
            Err(_) if whited_out => DirLookup::Stop,
            Err(_) => DirLookup::Absent,
            Ok(st) if !st.is_dir() => DirLookup::Stop,
            Ok(_) => {
                let Ok(fd) = self.open_dir(rel) else {
                    return DirLookup::Absent;
                };
                let opaque = whited_out || self.marked_opaque(fd.as_fd());
                let redirect = if opaque {
                    None
                } else {
                    whiteout::redirect(fd.as_fd()).ok().flatten()
                };
                DirLookup::Dir { opaque, redirect }
            }
        }
    }

    /// What `rel` is in this layer: a whiteout, an object (with its stat
    /// and opaque mark), or absent. Never follows a symlink.
    pub fn probe(&self, rel: &RelPath) -> io::Result<Probe> {
        let absent = |e: &io::Error| {
            matches!(
                e.raw_os_error(),
                Some(libc::ENOENT | libc::ENOTDIR | libc::ELOOP | libc::EXDEV)
            )
        };
        if rel.is_root() {
            let stat = self.stat(rel)?;
            return Ok(Probe::Object {
                kind: FileKind::Dir,
                stat,
                opaque: false,
                whiteout_too: false,
            });
        }
        let (parent, name) = rel.split();
        let pfd = match self.open_dir(&parent) {
            Ok(fd) => fd,
            Err(e) if absent(&e) => return Ok(Probe::Absent),
            Err(e) => return Err(e),
        };
        let cname = CString::new(name.as_bytes())
            .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
        let mut wh = whiteout::OCI_WHITEOUT_PREFIX.to_vec();
        wh.extend_from_slice(name.as_bytes());
        let wh = CString::new(wh).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
        let oci_whiteout = self.oci_names && sys::fstatat_nofollow(pfd.as_fd(), &wh).is_ok();
        let stat = match sys::fstatat_nofollow(pfd.as_fd(), &cname) {
            Ok(st) => st,
            Err(e) if absent(&e) => {
                return Ok(if oci_whiteout {
                    Probe::Whiteout
                } else {
                    Probe::Absent
                });
            }
            Err(e) => return Err(e),
        };
        let marks = whiteout::dir_marks(pfd.as_fd())?;
        match whiteout::classify(pfd.as_fd(), &cname, None, marks, self.oci_names)? {
            whiteout::Classified::Whiteout(_) => Ok(Probe::Whiteout),
            whiteout::Classified::OpaqueMarker | whiteout::Classified::Hidden => Ok(Probe::Absent),
            whiteout::Classified::Object(kind) => Ok(Probe::Object {
                kind,
                stat,
                opaque: kind == FileKind::Dir
                    && self
                        .open_dir(rel)
                        .is_ok_and(|fd| self.marked_opaque(fd.as_fd())),
                whiteout_too: oci_whiteout,
            }),
        }
    }

    /// The xattrs of `rel` as the mount shows them (overlay's own hidden,
    /// escaped ones unescaped).
    pub fn list_xattrs(&self, rel: &RelPath, is_dir: bool) -> io::Result<Vec<OsString>> {
        let names = self.with_xattr_target(rel, is_dir, sys::list_xattrs)?;
        Ok(names
            .into_iter()
            .filter_map(|n| whiteout::shown_xattr_name(n.as_bytes()))
            .map(std::os::unix::ffi::OsStringExt::from_vec)
            .collect())
    }

    /// One xattr of `rel`, by the name the mount shows.
    pub fn get_xattr(&self, rel: &RelPath, is_dir: bool, name: &OsStr) -> io::Result<Vec<u8>> {
        let stored = whiteout::stored_xattr_name(name.as_bytes());
        let cname = CString::new(stored).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
        self.with_xattr_target(rel, is_dir, |target| sys::get_xattr(target, &cname))
    }

    /// Xattr calls need a real file or a path: an O_PATH fd does not do.
    /// Directories are opened; anything else (a fifo or a device must not
    /// be opened) is reached as `/proc/self/fd/PARENT/NAME` with the l*
    /// calls, where PARENT was resolved safely and NAME is not followed.
    fn with_xattr_target<T>(
        &self,
        rel: &RelPath,
        is_dir: bool,
        f: impl FnOnce(sys::XattrTarget<'_>) -> io::Result<T>,
    ) -> io::Result<T> {
        if is_dir {
            let fd =
                self.open_beneath(rel, libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW)?;
            f(sys::XattrTarget::Fd(fd.as_fd()))
        } else {
            let (parent, name) = rel.split();
            let pfd = self.open_beneath(&parent, libc::O_PATH | libc::O_DIRECTORY)?;
            let mut path = format!("/proc/self/fd/{}/", pfd.as_raw_fd()).into_bytes();
            path.extend_from_slice(name.as_bytes());
            let path =
                CString::new(path).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
            f(sys::XattrTarget::Path(&path))
        }
    }

    /// statfs of the layer's filesystem.
    pub fn statfs(&self) -> io::Result<libc::statfs> {
        sys::fstatfs(self.root.as_fd())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relpath_join_and_split() {
        let root = RelPath::root();
        let a = root.join(OsStr::new("a")).unwrap();
        let b = a.join(OsStr::new("b c")).unwrap();
        assert_eq!(b.as_os_str(), "a/b c");
        let (parent, name) = b.split();
        assert_eq!(parent.as_os_str(), "a");
        assert_eq!(name, "b c");
        let (parent, name) = a.split();
        assert!(parent.is_root());
        assert_eq!(name, "a");
        assert!(root.join(OsStr::new("x/y")).is_err());
        assert!(root.join(OsStr::new("..")).is_err());
        assert!(root.join(OsStr::new("")).is_err());
        let moved = b.rebase(&a, &root.join(OsStr::new("z")).unwrap()).unwrap();
        assert_eq!(moved.as_os_str(), "z/b c");
        assert!(b.rebase(&root.join(OsStr::new("b")).unwrap(), &a).is_none());
        let ab = root.join(OsStr::new("ab")).unwrap();
        assert!(ab.rebase(&a, &root).is_none(), "a is not a prefix of ab");
    }
}
