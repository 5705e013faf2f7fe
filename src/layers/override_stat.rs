//! The `*.override_stat` xattrs of fuse-overlayfs and containers/storage:
//! an object's owner, mode and (for devices) type, kept in an xattr when
//! the real inode cannot carry them (rootless storage, `force_mask`).
//!
//! Value: `UID:GID:MODE[:TYPE]`, ids in decimal, MODE in octal (permission
//! and setuid/setgid/sticky bits; fuse-overlayfs may also write the type
//! bits, which are then used when no TYPE follows). TYPE is one of `file`,
//! `dir`, `symlink`, `pipe`, `socket`, `block-MAJOR-MINOR`,
//! `char-MAJOR-MINOR` (containers/storage's extended form).
//!
//! Which name a layer uses is decided once, by its root directory, as
//! fuse-overlayfs does: the first of [`OverrideXattr::ALL`] the root holds.

use std::ffi::OsStr;
use std::io;

use super::{FileKind, Layer, RelPath};

/// One of the three override xattr names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OverrideXattr {
    /// `security.fuseoverlayfs.override_stat` (`xattr_permissions=1`).
    Privileged,
    /// `user.containers.override_stat` (`xattr_permissions=2`).
    Containers,
    /// `user.fuseoverlayfs.override_stat` (older fuse-overlayfs, rootless).
    User,
}

impl OverrideXattr {
    /// In the order a layer root is probed.
    pub const ALL: [OverrideXattr; 3] = [
        OverrideXattr::Privileged,
        OverrideXattr::Containers,
        OverrideXattr::User,
    ];

    pub fn name(self) -> &'static str {
        match self {
            OverrideXattr::Privileged => "security.fuseoverlayfs.override_stat",
            OverrideXattr::Containers => "user.containers.override_stat",
            OverrideXattr::User => "user.fuseoverlayfs.override_stat",
        }
    }

    /// The name `xattr_permissions=N` writes.
    pub fn for_level(level: u8) -> Option<OverrideXattr> {
        match level {
            1 => Some(OverrideXattr::Privileged),
            2 => Some(OverrideXattr::Containers),
            _ => None,
        }
    }

    /// Whether an object of `kind` can hold this xattr: `user.*` xattrs
    /// only go on regular files and directories, no xattr on a symlink.
    pub fn fits(self, kind: FileKind) -> bool {
        match self {
            OverrideXattr::Privileged => kind != FileKind::Symlink,
            _ => matches!(kind, FileKind::Regular | FileKind::Dir),
        }
    }

    /// Whether `name` is one of the override names (hidden from listings).
    pub fn is_override_name(name: &[u8]) -> bool {
        Self::ALL.iter().any(|x| x.name().as_bytes() == name)
    }

    /// The name `layer`'s root holds, if any.
    pub fn of_layer(layer: &Layer) -> Option<OverrideXattr> {
        Self::ALL.into_iter().find(|x| {
            layer
                .get_xattr(&RelPath::root(), true, OsStr::new(x.name()))
                .is_ok()
        })
    }
}

/// What an override xattr says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OverrideStat {
    pub uid: u32,
    pub gid: u32,
    /// Permission bits with setuid/setgid/sticky (0o7777).
    pub perm: u32,
    /// The type, when the value names one, and the device number of a device.
    pub kind: Option<(FileKind, u64)>,
}

impl OverrideStat {
    /// Parses a value; `None` when it is not in the format (then the real
    /// inode's metadata is shown, as for an object without the xattr).
    pub fn parse(value: &[u8]) -> Option<OverrideStat> {
        let text = std::str::from_utf8(value).ok()?;
        let text = text.trim_end_matches('\0');
        let mut parts = text.splitn(4, ':');
        let uid = parts.next()?.parse().ok()?;
        let gid = parts.next()?.parse().ok()?;
        let mode = u32::from_str_radix(parts.next()?, 8).ok()?;
        let kind = match parts.next() {
            Some(t) => Some(parse_type(t)?),
            None => FileKind::from_mode(mode & libc::S_IFMT)
                .filter(|_| mode & libc::S_IFMT != 0)
                .map(|k| (k, 0)),
        };
        Some(OverrideStat {
            uid,
            gid,
            perm: mode & 0o7777,
            kind,
        })
    }

    /// The value in containers/storage's extended form, which
    /// fuse-overlayfs and containers/storage both read.
    pub fn format(&self, kind: FileKind, rdev: u64) -> String {
        let typ = match kind {
            FileKind::Regular => "file".to_string(),
            FileKind::Dir => "dir".to_string(),
            FileKind::Symlink => "symlink".to_string(),
            FileKind::Fifo => "pipe".to_string(),
            FileKind::Socket => "socket".to_string(),
            FileKind::BlockDev => format!("block-{}-{}", libc::major(rdev), libc::minor(rdev)),
            FileKind::CharDev => format!("char-{}-{}", libc::major(rdev), libc::minor(rdev)),
        };
        format!("{}:{}:{:04o}:{typ}", self.uid, self.gid, self.perm & 0o7777)
    }
}

fn parse_type(t: &str) -> Option<(FileKind, u64)> {
    let device = |rest: &str| -> Option<u64> {
        let mut it = rest.split('-');
        let major: u32 = it.next()?.parse().ok()?;
        let minor: u32 = it.next()?.parse().ok()?;
        Some(libc::makedev(major, minor))
    };
    Some(match t {
        "file" => (FileKind::Regular, 0),
        "dir" => (FileKind::Dir, 0),
        "symlink" => (FileKind::Symlink, 0),
        "pipe" => (FileKind::Fifo, 0),
        "socket" => (FileKind::Socket, 0),
        _ => {
            if let Some(rest) = t.strip_prefix("block-") {
                (FileKind::BlockDev, device(rest)?)
            } else if let Some(rest) = t.strip_prefix("char-") {
                (FileKind::CharDev, device(rest)?)
            } else {
                return None;
            }
        }
    })
}

/// The override of `rel` in `layer` under `name`; `None` when it has none
/// (or an unreadable one).
pub fn read(
    layer: &Layer,
    rel: &RelPath,
    is_dir: bool,
    name: OverrideXattr,
) -> Option<OverrideStat> {
    let value = layer.get_xattr(rel, is_dir, OsStr::new(name.name())).ok()?;
    OverrideStat::parse(&value)
}

/// Mark `layer` as keeping overrides under `name`, as fuse-overlayfs marks
/// its upper: the root holds its own override (its current owner and mode).
pub fn mark_layer_root(layer: &Layer, name: OverrideXattr) -> io::Result<()> {
    let st = layer.stat(&RelPath::root())?;
    let value = OverrideStat {
        uid: st.uid,
        gid: st.gid,
        perm: st.mode & 0o7777,
        kind: None,
    }
    .format(FileKind::Dir, 0);
    let cname = std::ffi::CString::new(name.name())
        .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    // The root fd is O_PATH, which xattr calls do not take.
    let dir = layer.open_dir(&RelPath::root())?;
    super::sys::set_xattr(
        super::sys::XattrTarget::Fd(std::os::fd::AsFd::as_fd(&dir)),
        &cname,
        value.as_bytes(),
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_form() {
        let p = |s: &str| OverrideStat::parse(s.as_bytes());
        assert_eq!(
            p("0:0:0755"),
            Some(OverrideStat {
                uid: 0,
                gid: 0,
                perm: 0o755,
                kind: None
            })
        );
        // fuse-overlayfs writes the whole st_mode.
        let s = p("1000:100:100644").unwrap();
        assert_eq!((s.uid, s.gid, s.perm), (1000, 100, 0o644));
        assert_eq!(s.kind, Some((FileKind::Regular, 0)));
        let s = p("0:0:4755:file").unwrap();
        assert_eq!(s.perm, 0o4755);
        assert_eq!(s.kind, Some((FileKind::Regular, 0)));
        assert_eq!(p("0:0:0755:dir").unwrap().kind, Some((FileKind::Dir, 0)));
        assert_eq!(
            p("0:0:0666:char-1-3").unwrap().kind,
            Some((FileKind::CharDev, libc::makedev(1, 3)))
        );
        assert_eq!(
            p("0:6:0660:block-8-1").unwrap().kind,
            Some((FileKind::BlockDev, libc::makedev(8, 1)))
        );
        for bad in [
            "",
            "0:0",
            "x:0:0644",
            "0:0:9",
            "0:0:0644:widget",
            "0:0:0644:char-1",
        ] {
            assert_eq!(p(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn formats_as_containers_storage_does() {
        let s = OverrideStat {
            uid: 0,
            gid: 0,
            perm: 0o644,
            kind: None,
        };
        assert_eq!(s.format(FileKind::Regular, 0), "0:0:0644:file");
        assert_eq!(s.format(FileKind::Dir, 0), "0:0:0644:dir");
        assert_eq!(
            s.format(FileKind::CharDev, libc::makedev(1, 3)),
            "0:0:0644:char-1-3"
        );
        let back = OverrideStat::parse(s.format(FileKind::Symlink, 0).as_bytes()).unwrap();
        assert_eq!(back.kind, Some((FileKind::Symlink, 0)));
    }

    #[test]
    fn names() {
        assert!(OverrideXattr::is_override_name(
            b"user.containers.override_stat"
        ));
        assert!(!OverrideXattr::is_override_name(b"user.other"));
        assert_eq!(OverrideXattr::for_level(2), Some(OverrideXattr::Containers));
        assert_eq!(OverrideXattr::for_level(0), None);
    }
}
