//! Whiteouts and opaque markers in every dialect we read:
//!
//! * overlayfs: a character device 0/0 named NAME; an opaque directory has
//!   `trusted.overlay.opaque=y` or `user.overlay.opaque=y`;
//! * overlayfs xattr whiteouts ("xwhiteouts", Linux 6.7+): a zero-size
//!   regular file with `trusted.overlay.whiteout` or `user.overlay.whiteout`.
//!   As the kernel does, they are honoured only in a directory marked
//!   `overlay.opaque=x`, so that reading a directory does not cost an xattr
//!   call per empty file;
//! * OCI / Docker: an empty file `.wh.NAME`; an opaque directory holds
//!   `.wh..wh..opq`. Other `.wh..wh.` names are aufs bookkeeping, hidden too.

use std::ffi::{CStr, CString, OsStr, OsString};
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::os::unix::ffi::OsStrExt;

use super::sys;

pub const OCI_WHITEOUT_PREFIX: &[u8] = b".wh.";
pub const OCI_OPAQUE_MARKER: &[u8] = b".wh..wh..opq";
const AUFS_META_PREFIX: &[u8] = b".wh..wh.";

const OPAQUE_XATTRS: [&CStr; 2] = [c"trusted.overlay.opaque", c"user.overlay.opaque"];
const WHITEOUT_XATTRS: [&CStr; 2] = [c"trusted.overlay.whiteout", c"user.overlay.whiteout"];

/// The type of a real object in a layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FileKind {
    Regular,
    Dir,
    Symlink,
    Fifo,
    CharDev,
    BlockDev,
    Socket,
}

impl FileKind {
    pub fn from_mode(mode: u32) -> Option<FileKind> {
        Some(match mode & libc::S_IFMT {
            libc::S_IFREG => FileKind::Regular,
            libc::S_IFDIR => FileKind::Dir,
            libc::S_IFLNK => FileKind::Symlink,
            libc::S_IFIFO => FileKind::Fifo,
            libc::S_IFCHR => FileKind::CharDev,
            libc::S_IFBLK => FileKind::BlockDev,
            libc::S_IFSOCK => FileKind::Socket,
            _ => return None,
        })
    }
}

/// What an entry of a layer directory is, once whiteouts are recognised.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RawKind {
    /// Hides the name in every layer below.
    Whiteout,
    Object(FileKind),
}

/// Marks on one directory of one layer.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DirMarks {
    /// Nothing below this layer shows through this directory.
    pub opaque: bool,
    /// The directory may hold xattr whiteouts (`overlay.opaque=x`).
    pub xwhiteouts: bool,
}

/// The outcome of classifying one directory entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Classified {
    /// `.wh..wh..opq`: the directory holding it is opaque.
    OpaqueMarker,
    /// Format bookkeeping never shown (aufs `.wh..wh.*`).
    Hidden,
    /// A whiteout hiding the given name in lower layers.
    Whiteout(OsString),
    Object(FileKind),
}

const REDIRECT_XATTRS: [&CStr; 2] = [c"trusted.overlay.redirect", c"user.overlay.redirect"];

/// The redirect of a directory, if it has one.
pub fn redirect(dir: BorrowedFd<'_>) -> io::Result<Option<Vec<u8>>> {
    for name in REDIRECT_XATTRS {
        if let Some(v) = sys::fget_xattr_opt(dir, name)? {
            return Ok(Some(v));
        }
    }
    Ok(None)
}

/// A redirect's value, as the kernel accepts it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Redirect<'a> {
    /// `/a/b`: walked from the root of every layer below (given here
    /// without its leading `/`).
    FromRoot(&'a [u8]),
    /// One name: another name in the same directory.
    Renamed(&'a OsStr),
}

impl<'a> Redirect<'a> {
    /// None for what the kernel refuses as a bad redirect: an empty
    /// component ("//", or "/" alone) in an absolute one; a `/`, or a name
    /// that is none (".", ".."), in a relative one.
    pub fn parse(value: &'a [u8]) -> Option<Redirect<'a>> {
        match value.strip_prefix(b"/") {
            Some(abs) if abs.split(|&b| b == b'/').any(<[u8]>::is_empty) => None,
            Some(abs) => Some(Redirect::FromRoot(abs)),
            None if value.contains(&b'/') || super::RelPath::from_bytes(value).is_none() => None,
            None => Some(Redirect::Renamed(OsStr::from_bytes(value))),
        }
    }
}

const METACOPY_XATTRS: [&CStr; 2] = [c"trusted.overlay.metacopy", c"user.overlay.metacopy"];

/// What overlayfs records on a regular file of a layer.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FileMarks {
    /// A metadata-only copy (`overlay.metacopy`, empty or holding an
    /// fs-verity digest): its data is the file a lookup finds below it.
    pub metacopy: bool,
    /// Where a lookup below goes on (`overlay.redirect`); only read on a
    /// metacopy file, as the kernel reads it only there.
    pub redirect: Option<Vec<u8>>,
}

/// The marks of the regular file at `path` (`/proc/self/fd/DIR/NAME`, not
/// followed).
pub fn file_marks(path: &CStr) -> io::Result<FileMarks> {
    let get = |name: &CStr| match sys::get_xattr(sys::XattrTarget::Path(path), name) {
        Ok(v) => Ok(Some(v)),
        Err(e) if matches!(e.raw_os_error(), Some(libc::ENODATA) | Some(libc::ENOTSUP)) => Ok(None),
        Err(e) => Err(e),
    };
    let mut marks = FileMarks::default();
    for name in METACOPY_XATTRS {
        if get(name)?.is_some() {
            marks.metacopy = true;
            break;
        }
    }
    if marks.metacopy {
        for name in REDIRECT_XATTRS {
            if let Some(v) = get(name)? {
                marks.redirect = Some(v);
                break;
            }
        }
    }
    Ok(marks)
}

/// Read a directory's own marks from its xattrs.
pub fn dir_marks(dir: BorrowedFd<'_>) -> io::Result<DirMarks> {
    let mut marks = DirMarks::default();
    for name in OPAQUE_XATTRS {
        match sys::fget_xattr_opt(dir, name)?.as_deref() {
            Some(b"y") => marks.opaque = true,
            Some(b"x") => marks.xwhiteouts = true,
            _ => {}
        }
    }
    Ok(marks)
}

/// Classify the entry `name` of the directory open at `dir`. `dtype` is
/// the type getdents reported, when it did. Without `oci_names`, `.wh.`
/// names are ordinary entries (the kernel's own dialects only).
pub fn classify(
    dir: BorrowedFd<'_>,
    name: &CStr,
    dtype: Option<nix::dir::Type>,
    marks: DirMarks,
    oci_names: bool,
) -> io::Result<Classified> {
    let bytes = name.to_bytes();
    if oci_names && bytes == OCI_OPAQUE_MARKER {
        return Ok(Classified::OpaqueMarker);
    }
    if oci_names && bytes.starts_with(AUFS_META_PREFIX) {
        return Ok(Classified::Hidden);
    }
    if let Some(target) = bytes
        .strip_prefix(OCI_WHITEOUT_PREFIX)
        .filter(|_| oci_names)
    {
        // `.wh.` alone names nothing: show it as the odd file it is.
        if !target.is_empty() {
            return Ok(Classified::Whiteout(
                OsStr::from_bytes(target).to_os_string(),
            ));
        }
    }
    use nix::dir::Type;
    let kind = match dtype {
        Some(Type::Directory) => FileKind::Dir,
        Some(Type::Symlink) => FileKind::Symlink,
        Some(Type::Fifo) => FileKind::Fifo,
        Some(Type::BlockDevice) => FileKind::BlockDev,
        Some(Type::Socket) => FileKind::Socket,
        Some(Type::File) if !marks.xwhiteouts => FileKind::Regular,
        // Char devices may be whiteouts, regular files in a marked dir may
        // be xwhiteouts, unknown types need a stat anyway.
        _ => {
            let st = sys::fstatat_nofollow(dir, name)?;
            let kind = FileKind::from_mode(st.mode)
                .ok_or_else(|| io::Error::from_raw_os_error(libc::EIO))?;
            if kind == FileKind::CharDev && st.rdev == 0 {
                return Ok(Classified::Whiteout(
                    OsStr::from_bytes(bytes).to_os_string(),
                ));
            }
            if kind == FileKind::Regular
                && marks.xwhiteouts
                && st.size == 0
                && has_whiteout_xattr(dir, name)?
            {
                return Ok(Classified::Whiteout(
                    OsStr::from_bytes(bytes).to_os_string(),
                ));
            }
            kind
        }
    };
    Ok(Classified::Object(kind))
}

fn has_whiteout_xattr(dir: BorrowedFd<'_>, name: &CStr) -> io::Result<bool> {
    let mut path = format!("/proc/self/fd/{}/", dir.as_raw_fd()).into_bytes();
    path.extend_from_slice(name.to_bytes());
    let path = CString::new(path).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    for xattr in WHITEOUT_XATTRS {
        match sys::get_xattr(sys::XattrTarget::Path(&path), xattr) {
            Ok(_) => return Ok(true),
            Err(e) if matches!(e.raw_os_error(), Some(libc::ENODATA) | Some(libc::ENOTSUP)) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(false)
}

const OVERLAY_XATTR_PREFIXES: [&[u8]; 2] = [b"trusted.overlay.", b"user.overlay."];

/// The name an xattr stored in a layer shows through the mount: overlay's
/// own (`trusted.overlay.*`, `user.overlay.*`) are hidden, except escaped
/// ones (`trusted.overlay.overlay.X`), which show as `trusted.overlay.X` —
/// the kernel's escaping, which lets an overlay be a layer of another.
pub fn shown_xattr_name(stored: &[u8]) -> Option<Vec<u8>> {
    for prefix in OVERLAY_XATTR_PREFIXES {
        if let Some(rest) = stored.strip_prefix(prefix) {
            return rest
                .strip_prefix(b"overlay.")
                .map(|escaped| [prefix, escaped].concat());
        }
    }
    Some(stored.to_vec())
}

/// The name under which an xattr set through the mount is stored.
pub fn stored_xattr_name(shown: &[u8]) -> Vec<u8> {
    for prefix in OVERLAY_XATTR_PREFIXES {
        if let Some(rest) = shown.strip_prefix(prefix) {
            return [prefix, b"overlay.".as_slice(), rest].concat();
        }
    }
    shown.to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redirects_as_the_kernel_takes_them() {
        assert_eq!(Redirect::parse(b"/a/b"), Some(Redirect::FromRoot(b"a/b")));
        assert_eq!(
            Redirect::parse(b"x"),
            Some(Redirect::Renamed(OsStr::new("x")))
        );
        for bad in [&b"/"[..], b"//a", b"/a//b", b"/a/", b"a/b", b".", b".."] {
            assert_eq!(Redirect::parse(bad), None, "{:?}", OsStr::from_bytes(bad));
        }
    }

    #[test]
    fn overlay_xattrs_are_hidden_or_escaped() {
        assert_eq!(shown_xattr_name(b"trusted.overlay.opaque"), None);
        assert_eq!(shown_xattr_name(b"user.overlay.whiteout"), None);
        assert_eq!(
            shown_xattr_name(b"trusted.overlay.overlay.opaque").as_deref(),
            Some(&b"trusted.overlay.opaque"[..])
        );
        assert_eq!(
            shown_xattr_name(b"user.overlayish").as_deref(),
            Some(&b"user.overlayish"[..])
        );
        assert_eq!(
            stored_xattr_name(b"trusted.overlay.redirect"),
            b"trusted.overlay.overlay.redirect"
        );
        assert_eq!(stored_xattr_name(b"user.mime_type"), b"user.mime_type");
    }
}
