//! Turning a checked-in fixture into real layer directories in one whiteout
//! dialect.
//!
//! Kernel facts this relies on, verified on Linux 6.18 (Debian 12 host):
//!
//! * `mount -t overlay -o lowerdir=A` with a single lower and no upper is
//!   refused ("at least 2 lowerdir are needed while upperdir nonexistent"),
//!   so [`super::KernelOverlay`] adds an empty bottom layer when given one.
//! * xattr whiteouts ("xwhiteouts"): an empty regular file carrying
//!   `trusted.overlay.whiteout` hides NAME for both lookup and readdir only
//!   when its parent directory carries `trusted.overlay.opaque=x`. Without
//!   the marker, lookup treats the file as a whiteout but readdir still lists
//!   it (an entry that `ls -l` shows as `?????????`). The older 6.7-era parent
//!   marker `trusted.overlay.whiteouts` is *not* honoured by 6.18. The value of
//!   `trusted.overlay.whiteout` does not matter: both "y" and "" work; we
//!   write "y". A directory marked `opaque=x` is not opaque.
//! * Inside an `opaque=y` directory the kernel does not look for xwhiteouts
//!   in readdir (the file is listed, lookup fails), so the xwhiteout
//!   converter drops whiteouts there: they hide nothing anyway.
//! * Readdir also lists, while lookup says ENOENT: xwhiteouts in the bottom
//!   layer (even in a merged dir), and char-dev 0/0 whiteouts in a directory
//!   that is not merged (present in one layer only; its readdir is passed
//!   through to the real dir, whose `..` then also carries the real parent's
//!   inode). Such whiteouts hide nothing; the oracle drops these
//!   listed-but-absent names (`Tree::drop_listed_but_absent`) instead of
//!   the converters avoiding them, so layerfs still meets them.
//! * `trusted.overlay.*` xattrs are never listed through the mount; with
//!   `-o userxattr` the same holds for `user.overlay.*`.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::{Path, PathBuf};

use super::sys;

/// How whiteouts and opaque directories are written in the layer dirs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Dialect {
    /// `.wh.NAME` files and `.wh..wh..opq` markers, as checked in.
    Oci,
    /// char device 0/0 named NAME; `trusted.overlay.opaque=y` (kernel default).
    OverlayTrusted,
    /// char device 0/0; `user.overlay.opaque=y` (kernel `-o userxattr`).
    OverlayUser,
    /// empty file NAME with `trusted.overlay.whiteout=y`, parent marked
    /// `trusted.overlay.opaque=x`; opaque dirs as OverlayTrusted.
    OverlayXwhiteout,
}

impl Dialect {
    pub const ALL: [Dialect; 4] = [
        Dialect::Oci,
        Dialect::OverlayTrusted,
        Dialect::OverlayUser,
        Dialect::OverlayXwhiteout,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Dialect::Oci => "oci",
            Dialect::OverlayTrusted => "overlay-trusted",
            Dialect::OverlayUser => "overlay-user",
            Dialect::OverlayXwhiteout => "overlay-xwhiteout",
        }
    }
}

impl std::fmt::Display for Dialect {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

pub const OCI_PREFIX: &[u8] = b".wh.";
pub const OCI_OPAQUE: &[u8] = b".wh..wh..opq";
pub const TRUSTED_OPAQUE: &[u8] = b"trusted.overlay.opaque";
pub const USER_OPAQUE: &[u8] = b"user.overlay.opaque";
pub const TRUSTED_WHITEOUT: &[u8] = b"trusted.overlay.whiteout";

/// Seconds of the mtime given to everything in layer 0; layer `i` gets
/// `BASE_MTIME + i * 86400`, so higher layers are newer.
pub const BASE_MTIME: i64 = 1_704_067_200; // 2024-01-01T00:00:00Z

/// The checked-in fixtures directory.
pub fn fixtures_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("layers-fixtures")
}

/// Every fixture: a directory under `layers-fixtures` holding layer dirs.
pub fn fixture_names() -> Vec<String> {
    let dir = fixtures_dir();
    let mut names: Vec<String> = fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
        .map(|e| e.expect("readdir of layers-fixtures"))
        .filter(|e| e.file_type().map(|t| t.is_dir()).unwrap_or(false))
        .map(|e| {
            e.file_name()
                .into_string()
                .expect("fixture names are UTF-8")
        })
        .filter(|name| !layer_names(name).is_empty())
        .collect();
    names.sort();
    names
}

/// The layer directory names of a fixture, BOTTOM first (sorted by name).
pub fn layer_names(fixture: &str) -> Vec<String> {
    let dir = fixtures_dir().join(fixture);
    let mut names: Vec<String> = fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("reading fixture {}: {e}", dir.display()))
        .map(|e| e.expect("readdir of a fixture"))
        .filter(|e| e.file_type().map(|t| t.is_dir()).unwrap_or(false))
        .map(|e| {
            e.file_name()
                .into_string()
                .expect("layer dir names are UTF-8")
        })
        .collect();
    names.sort();
    names
}

/// Copies fixture `fixture` into `dest` (which must exist), applies its
/// `meta`, converts whiteouts to `dialect` and sets deterministic mtimes.
/// Returns the layer dirs TOP first, the order `lowerdir=` takes.
pub fn materialize(fixture: &str, dialect: Dialect, dest: &Path) -> Vec<PathBuf> {
    let src = fixtures_dir().join(fixture);
    let layers = layer_names(fixture);
    assert!(!layers.is_empty(), "fixture {fixture} has no layer dirs");
    let dests: Vec<PathBuf> = layers.iter().map(|l| dest.join(l)).collect();
    for (l, d) in layers.iter().zip(&dests) {
        copy_tree(&src.join(l), d);
    }
    let meta_path = src.join("meta");
    let mut mtimes = BTreeMap::new();
    if meta_path.exists() {
        let text = fs::read_to_string(&meta_path)
            .unwrap_or_else(|e| panic!("reading {}: {e}", meta_path.display()));
        let ops =
            super::meta::parse(&text).unwrap_or_else(|e| panic!("{}: {e}", meta_path.display()));
        mtimes = super::meta::apply(dest, &ops);
    }
    for d in &dests {
        convert_dir(d, dialect);
    }
    for (i, d) in dests.iter().enumerate() {
        let secs = BASE_MTIME + i as i64 * 86_400;
        let nsecs = 250_000_000 + i as i64;
        set_tree_times(d, secs, nsecs, &mtimes);
    }
    dests.into_iter().rev().collect()
}

/// Copies a checked-in layer: dirs, regular files and symlinks only, with
/// modes normalized (0755 dirs, 0755/0644 files by the owner-x bit) so the
/// result does not depend on the checkout's umask.
fn copy_tree(src: &Path, dst: &Path) {
    fs::create_dir(dst).unwrap_or_else(|e| panic!("mkdir {}: {e}", dst.display()));
    fs::set_permissions(dst, fs::Permissions::from_mode(0o755)).expect("chmod layer dir");
    let mut entries: Vec<_> = fs::read_dir(src)
        .unwrap_or_else(|e| panic!("reading {}: {e}", src.display()))
        .map(|e| e.expect("readdir of a fixture layer"))
        .collect();
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let (s, d) = (e.path(), dst.join(e.file_name()));
        let md = fs::symlink_metadata(&s).unwrap_or_else(|e| panic!("lstat {}: {e}", s.display()));
        let ft = md.file_type();
        if ft.is_dir() {
            copy_tree(&s, &d);
        } else if ft.is_symlink() {
            let t = fs::read_link(&s).expect("readlink in fixture");
            symlink(&t, &d).unwrap_or_else(|e| panic!("symlink {}: {e}", d.display()));
        } else if ft.is_file() {
            fs::copy(&s, &d).unwrap_or_else(|e| panic!("copy {}: {e}", s.display()));
            let mode = if md.permissions().mode() & 0o100 != 0 {
                0o755
            } else {
                0o644
            };
            fs::set_permissions(&d, fs::Permissions::from_mode(mode)).expect("chmod copy");
        } else {
            panic!(
                "{}: checked-in fixtures hold only dirs, files and symlinks",
                s.display()
            );
        }
    }
}

fn is_opaque_xattr(dir: &Path) -> bool {
    [TRUSTED_OPAQUE, USER_OPAQUE].iter().any(|n| {
        sys::lgetxattr(dir, n)
            .unwrap_or_else(|e| panic!("getxattr {}: {e}", dir.display()))
            .as_deref()
            == Some(b"y")
    })
}

fn set_xattr(p: &Path, name: &[u8], value: &[u8]) {
    sys::lsetxattr(p, name, value)
        .unwrap_or_else(|e| panic!("setxattr {} {}: {e}", p.display(), name.escape_ascii()));
}

fn mark_opaque(dir: &Path, dialect: Dialect) {
    match dialect {
        Dialect::Oci => unreachable!("OCI layers keep their markers"),
        Dialect::OverlayUser => set_xattr(dir, USER_OPAQUE, b"y"),
        Dialect::OverlayTrusted | Dialect::OverlayXwhiteout => set_xattr(dir, TRUSTED_OPAQUE, b"y"),
    }
}

/// Converts the OCI whiteouts of one layer directory (recursively).
fn convert_dir(dir: &Path, dialect: Dialect) {
    let mut names: Vec<Vec<u8>> = fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
        .map(|e| {
            e.expect("readdir in a layer")
                .file_name()
                .as_bytes()
                .to_vec()
        })
        .collect();
    names.sort();
    let path_of = |n: &[u8]| dir.join(std::ffi::OsStr::from_bytes(n));

    // Validate: whiteouts and markers are empty regular files.
    for n in names.iter().filter(|n| n.starts_with(OCI_PREFIX)) {
        let p = path_of(n);
        let md = fs::symlink_metadata(&p).expect("lstat whiteout");
        assert!(
            md.file_type().is_file() && md.len() == 0,
            "{}: an OCI whiteout must be an empty regular file",
            p.display()
        );
        let target = &n[OCI_PREFIX.len()..];
        assert!(
            n.as_slice() == OCI_OPAQUE || (!target.is_empty() && !target.starts_with(OCI_PREFIX)),
            "{}: unsupported whiteout name",
            p.display()
        );
    }

    if dialect != Dialect::Oci {
        let mut opaque = is_opaque_xattr(dir);
        if names.iter().any(|n| n.as_slice() == OCI_OPAQUE) {
            fs::remove_file(path_of(OCI_OPAQUE)).expect("remove opaque marker");
            mark_opaque(dir, dialect);
            opaque = true;
        }
        for n in names
            .iter()
            .filter(|n| n.starts_with(OCI_PREFIX) && n.as_slice() != OCI_OPAQUE)
        {
            let wh = path_of(n);
            let target_name = &n[OCI_PREFIX.len()..];
            let target = path_of(target_name);
            fs::remove_file(&wh).unwrap_or_else(|e| panic!("rm {}: {e}", wh.display()));
            if let Ok(md) = fs::symlink_metadata(&target) {
                // OCI: a whiteout applies only to lower layers; an entry of the
                // same name in this layer replaces what it hid. In overlay
                // form that is the entry itself, made opaque if a directory.
                if md.is_dir() {
                    mark_opaque(&target, dialect);
                }
                continue;
            }
            match dialect {
                Dialect::Oci => unreachable!(),
                Dialect::OverlayTrusted | Dialect::OverlayUser => {
                    sys::mknod(&target, libc::S_IFCHR, 0, 0, 0)
                        .unwrap_or_else(|e| panic!("mknod whiteout {}: {e}", target.display()));
                }
                Dialect::OverlayXwhiteout => {
                    if opaque {
                        // Nothing below shows through; the kernel would list
                        // an xwhiteout here, so leave it out.
                        continue;
                    }
                    fs::write(&target, b"").expect("create xwhiteout");
                    set_xattr(&target, TRUSTED_WHITEOUT, b"y");
                    set_xattr(dir, TRUSTED_OPAQUE, b"x");
                }
            }
        }
    }

    for n in &names {
        let p = path_of(n);
        if fs::symlink_metadata(&p)
            .map(|m| m.is_dir())
            .unwrap_or(false)
        {
            convert_dir(&p, dialect);
        }
    }
}

fn set_tree_times(root: &Path, secs: i64, nsecs: i64, overrides: &BTreeMap<PathBuf, i64>) {
    let md = fs::symlink_metadata(root).expect("lstat for mtime");
    if md.is_dir() {
        for e in fs::read_dir(root).expect("readdir for mtime") {
            set_tree_times(&e.expect("readdir entry").path(), secs, nsecs, overrides);
        }
    }
    let (s, ns) = match overrides.get(root) {
        Some(&o) => (o, 0),
        None => (secs, nsecs),
    };
    sys::set_times(root, s, ns).unwrap_or_else(|e| panic!("utimensat {}: {e}", root.display()));
}
