//! The hard-link index in the kernel's overlayfs format, so an upper and
//! work dir move between layerfs and the kernel (`index=on`) with hard
//! links intact. The shared upper copy of a hard-linked lower file is
//! `WORK/index/HEX`, HEX the lowercase hex of the lower's encoded file
//! handle (the kernel's `struct ovl_fb`: version 0, magic 0xfb, length,
//! flags, handle type, the lower filesystem's uuid, then the handle
//! bytes of name_to_handle_at). The copy carries the same bytes as its
//! `overlay.origin` xattr, which the kernel checks against the name.
//!
//! Where the lower filesystem has no file handles, entries keep the name
//! older layerfs versions gave every entry: `WORK/layerfs-index/DEV-INO`
//! (lower device and inode, hex). Entries of that form an older version
//! left are moved to their kernel name when the work dir is opened
//! ([`Index::migrate`]).
//!
//! Keys are paths inside the work dir (`index/HEX` or
//! `layerfs-index/DEV-INO`), so the index reads like a layer whose root
//! is the work dir.

use std::collections::{HashMap, HashSet};
use std::ffi::{CString, OsStr};
use std::io;
use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use super::{FileKind, Layer, RawKind, RelPath, Stat, sys};

/// The kernel's index dir inside the work dir.
pub const KERNEL_DIR: &str = "index";
/// layerfs's own dir inside the work dir: entries where file handles are
/// not supported, entries of older versions, and the copy-up origin log.
pub const LEGACY_DIR: &str = "layerfs-index";

/// `struct ovl_fb` header: version, magic, len, flags, type, uuid[16].
const FB_HEADER: usize = 5 + 16;
const FB_MAGIC: u8 = 0xfb;
/// OVL_FH_FLAG_BIG_ENDIAN: the handle was encoded on a big-endian host.
const FLAG_BIG_ENDIAN: u8 = 1 << 0;

/// The hard-link index of one work dir.
#[derive(Debug)]
pub struct Index {
    /// The work dir, read as a layer: keys are paths in it.
    work: Layer,
    /// Lower filesystem uuids by device.
    uuids: Mutex<HashMap<u64, [u8; 16]>>,
    /// Keys by lower (dev, ino): lower layers never change while mounted.
    keys: Mutex<HashMap<(u64, u64), RelPath>>,
    /// Set once a lower filesystem refused file handles (logged once).
    no_handles: AtomicBool,
    /// Upper inode number of each copied-up object (index entries
    /// included) → the lower (dev, ino) it copies, so it keeps the lower's
    /// inode number whenever its directory is read, also after a remount.
    origins: Mutex<HashMap<u64, (u64, u64)>>,
    /// Where copy-ups record their origin ([`ORIGIN_LOG`]). Opened for
    /// each record, never held open: a file open for writing would keep
    /// the upper's filesystem from being remounted read-only, which the
    /// kernel's overlayfs allows.
    origin_log: Mutex<PathBuf>,
    /// Upper inodes found without a kernel origin this mount.
    no_origin: Mutex<HashSet<u64>>,
}

/// The log of copy-up origins, in [`LEGACY_DIR`] (its name is no index
/// key): records of three little-endian u64, upper inode, lower dev, lower
/// inode; a later record for an inode wins, a torn last record is ignored.
/// An inode the upper filesystem reuses for a new object keeps a stale
/// origin: that object shows the number of a lower object the copy-up
/// hid, which nothing else shows. (The kernel reads `overlay.origin`
/// instead, which copy-ups record too.)
const ORIGIN_LOG: &str = "origins.log";
const ORIGIN_RECORD: usize = 24;

impl Index {
    /// Open the index of `work_dir`, making its two dirs when `create`;
    /// None when not creating and neither is there.
    pub fn open(work_dir: &Path, create: bool) -> io::Result<Option<Index>> {
        let mut found = false;
        for sub in [KERNEL_DIR, LEGACY_DIR] {
            let dir = work_dir.join(sub);
            if create {
                let made =
                    std::os::unix::fs::DirBuilderExt::mode(&mut std::fs::DirBuilder::new(), 0o700)
                        .create(&dir);
                match made {
                    Err(e) if e.kind() != io::ErrorKind::AlreadyExists => return Err(e),
                    _ => {}
                }
            }
            found |= dir.is_dir();
        }
        if !found {
            return Ok(None);
        }
        Ok(Some(Index {
            work: Layer::open(work_dir)?,
            uuids: Mutex::default(),
            keys: Mutex::default(),
            no_handles: AtomicBool::new(false),
            origins: Mutex::default(),
            no_origin: Mutex::default(),
            origin_log: Mutex::new(Index::legacy_path(work_dir).join(ORIGIN_LOG)),
        }))
    }

    /// Open the index of the work dir of a writable mount over `lowers`:
    /// made if missing, older entries moved to their kernel names, and
    /// the origins of earlier copy-ups read. `xattr_prefix`: where the
    /// upper keeps overlay xattrs (`trusted.overlay.`).
    pub fn open_writable(
        work_dir: &Path,
        lowers: &[Layer],
        xattr_prefix: &str,
    ) -> io::Result<Index> {
        let index = Index::open(work_dir, true)?
            .ok_or_else(|| io::Error::from_raw_os_error(libc::ENOENT))?;
        let origin_key = xattr_name(xattr_prefix, "origin");
        let moved = index.migrate(lowers, |work, rel, fb| {
            let (parent, name) = rel.split();
            let pfd = work.open_dir(&parent)?;
            let mut p = format!("/proc/self/fd/{}/", pfd.as_raw_fd()).into_bytes();
            p.extend_from_slice(name.as_bytes());
            let p = CString::new(p).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
            sys::set_xattr(sys::XattrTarget::Path(&p), &origin_key, fb)
        })?;
        if moved > 0 {
            tracing::info!(moved, work = %work_dir.display(), "moved hard-link index entries to the kernel's names");
        }
        let mut origins: HashMap<u64, (u64, u64)> =
            index.entry_origins(lowers).into_iter().collect();
        let log_path = index
            .origin_log
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        match std::fs::read(&log_path) {
            Ok(bytes) => {
                for rec in bytes.chunks_exact(ORIGIN_RECORD) {
                    let word = |i: usize| {
                        let mut b = [0u8; 8];
                        b.copy_from_slice(&rec[i * 8..i * 8 + 8]);
                        u64::from_le_bytes(b)
                    };
                    origins.insert(word(0), (word(1), word(2)));
                }
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        *index
            .origins
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = origins;
        Ok(index)
    }

    /// The lower (dev, ino) an upper inode is a copy of.
    pub fn origin_of(&self, upper_ino: u64) -> Option<(u64, u64)> {
        let map = self
            .origins
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        map.get(&upper_ino).copied()
    }

    /// Whether `upper_ino` was found to have no origin this mount.
    pub fn known_without_origin(&self, upper_ino: u64) -> bool {
        self.no_origin
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .contains(&upper_ino)
    }

    /// Remember the origin (kernel `fb` bytes, decoded against `lowers`)
    /// of the upper inode `upper_ino`, or that it has none, for the life
    /// of the mount; return it as (dev, ino).
    pub fn remember_origin(
        &self,
        upper_ino: u64,
        fb: Option<&[u8]>,
        lowers: &[Layer],
    ) -> Option<(u64, u64)> {
        match fb.and_then(|fb| self.decode(fb, lowers)) {
            Some(st) => {
                let origin = (st.dev, st.ino);
                self.origins
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .insert(upper_ino, origin);
                Some(origin)
            }
            None => {
                self.no_origin
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .insert(upper_ino);
                None
            }
        }
    }

    /// Record that the upper inode `upper_ino` is a copy of `lower`.
    pub fn note_origin(&self, upper_ino: u64, lower: &Stat) {
        let mut rec = Vec::with_capacity(ORIGIN_RECORD);
        for w in [upper_ino, lower.dev, lower.ino] {
            rec.extend_from_slice(&w.to_le_bytes());
        }
        let log = self
            .origin_log
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let appended = std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .open(&*log)
            .and_then(|mut f| std::io::Write::write_all(&mut f, &rec));
        if let Err(e) = appended {
            // Only inode numbers after a remount depend on it.
            tracing::warn!(error = %e, path = %log.display(), "cannot record a copy-up's origin");
        }
        drop(log);
        self.origins
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(upper_ino, (lower.dev, lower.ino));
    }

    /// Whether no entry is indexed (in either place).
    pub fn is_empty(&self) -> bool {
        self.entries(KERNEL_DIR).is_empty()
            && !self
                .entries(LEGACY_DIR)
                .iter()
                .any(|(name, _)| parse_legacy(name).is_some())
    }

    /// Where the origin log and older entries live.
    pub fn legacy_path(work_dir: &Path) -> PathBuf {
        work_dir.join(LEGACY_DIR)
    }

    /// The work dir as a layer: index keys are paths in it.
    pub fn layer(&self) -> &Layer {
        &self.work
    }

    /// The key the index copy of the lower file `path` of `layer` (stat
    /// `st`) has: its kernel name, or the older one where the lower's
    /// filesystem has no file handles.
    pub fn key(&self, layer: &Layer, path: &RelPath, st: &Stat) -> RelPath {
        let cached = self
            .keys
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(&(st.dev, st.ino))
            .cloned();
        if let Some(k) = cached {
            return k;
        }
        let key = match self.encode(layer, path) {
            Ok(fb) => kernel_key(&fb),
            Err(e) => {
                if e.raw_os_error() != Some(libc::ENOENT)
                    && !self.no_handles.swap(true, Ordering::Relaxed)
                {
                    tracing::warn!(
                        error = %e,
                        layer = %layer.path().display(),
                        "no file handles on this lower layer: its hard-link index entries get \
                         layerfs names (WORK/layerfs-index), which the kernel's overlayfs does not read"
                    );
                }
                legacy_key(st)
            }
        };
        self.keys
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert((st.dev, st.ino), key.clone());
        key
    }

    /// The index copy of a lower file, if there is one: under its kernel
    /// name, else under the name older versions gave it.
    pub fn find(&self, layer: &Layer, path: &RelPath, st: &Stat) -> Option<(RelPath, Stat)> {
        let key = self.key(layer, path, st);
        if let Ok(entry) = self.work.stat(&key) {
            return Some((key, entry));
        }
        let old = legacy_key(st);
        self.work.stat(&old).ok().map(|entry| (old, entry))
    }

    /// The kernel's origin of the lower object `path` of `layer`: its
    /// `struct ovl_fb` bytes, the value of `overlay.origin`.
    pub fn encode(&self, layer: &Layer, path: &RelPath) -> io::Result<Vec<u8>> {
        let fd = layer.open_beneath(path, libc::O_PATH | libc::O_NOFOLLOW)?;
        let (handle_type, bytes) = sys::file_handle(fd.as_fd())?;
        let uuid = self.uuid(layer)?;
        let handle_type =
            u8::try_from(handle_type).map_err(|_| io::Error::from_raw_os_error(libc::EOVERFLOW))?;
        let len = u8::try_from(FB_HEADER + bytes.len())
            .map_err(|_| io::Error::from_raw_os_error(libc::EOVERFLOW))?;
        let flags = if cfg!(target_endian = "big") {
            FLAG_BIG_ENDIAN
        } else {
            0
        };
        let mut fb = vec![0, FB_MAGIC, len, flags, handle_type];
        fb.extend_from_slice(&uuid);
        fb.extend_from_slice(&bytes);
        Ok(fb)
    }

    fn uuid(&self, layer: &Layer) -> io::Result<[u8; 16]> {
        let mut map = self
            .uuids
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(u) = map.get(&layer.dev()) {
            return Ok(*u);
        }
        let u = sys::fs_uuid(open_root(layer)?.as_fd())?;
        map.insert(layer.dev(), u);
        Ok(u)
    }

    /// Every index entry's upper inode number with the lower (dev, ino)
    /// it copies: older names say it; kernel names are decoded against
    /// the lower layers whose uuid they carry (needs CAP_DAC_READ_SEARCH;
    /// entries that do not decode are left out).
    fn entry_origins(&self, lowers: &[Layer]) -> Vec<(u64, (u64, u64))> {
        let mut out = Vec::new();
        for (name, ino) in self.entries(LEGACY_DIR) {
            if let Some(origin) = parse_legacy(&name) {
                out.push((ino, origin));
            }
        }
        for (name, ino) in self.entries(KERNEL_DIR) {
            let Some(fb) = unhex(&name) else { continue };
            if let Some(st) = self.decode(&fb, lowers) {
                out.push((ino, (st.dev, st.ino)));
            }
        }
        out
    }

    /// The lower object a kernel origin names, if it is in `lowers`.
    fn decode(&self, fb: &[u8], lowers: &[Layer]) -> Option<Stat> {
        if fb.len() < FB_HEADER || fb[1] != FB_MAGIC || usize::from(fb[2]) != fb.len() {
            return None;
        }
        let uuid = &fb[5..FB_HEADER];
        let mut tried = HashSet::new();
        for layer in lowers {
            if !tried.insert(layer.dev()) || self.uuid(layer).ok()?.as_slice() != uuid {
                continue;
            }
            let Ok(root) = open_root(layer) else {
                continue;
            };
            if let Ok(fd) = sys::open_by_file_handle(root.as_fd(), fb[4].into(), &fb[FB_HEADER..]) {
                return sys::fstat(fd.as_fd()).ok();
            }
        }
        None
    }

    /// Names and inode numbers of the entries of one of the index dirs.
    fn entries(&self, sub: &str) -> Vec<(Vec<u8>, u64)> {
        let Some(rel) = RelPath::from_bytes(sub.as_bytes()) else {
            return Vec::new();
        };
        match self.work.read_dir(&rel) {
            Ok(dir) => dir
                .entries
                .into_iter()
                .filter(|e| matches!(e.kind, RawKind::Object(k) if k != FileKind::Dir))
                .map(|e| (e.name.as_bytes().to_vec(), e.ino))
                .collect(),
            Err(_) => Vec::new(),
        }
    }

    /// Move the entries an older layerfs named `DEV-INO` to their kernel
    /// names, found by walking the lower layers on that device for that
    /// inode; `set_origin(dir, name, fb)` records the kernel origin on
    /// the entry first. Entries whose lower file is not found, or whose
    /// filesystem has no file handles, stay where they are (lookups read
    /// both names). Returns how many moved.
    fn migrate(
        &self,
        lowers: &[Layer],
        set_origin: impl Fn(&Layer, &RelPath, &[u8]) -> io::Result<()>,
    ) -> io::Result<usize> {
        let mut wanted: HashMap<(u64, u64), Vec<u8>> = HashMap::new();
        for (name, _) in self.entries(LEGACY_DIR) {
            if let Some(origin) = parse_legacy(&name) {
                wanted.insert(origin, name);
            }
        }
        if wanted.is_empty() {
            return Ok(0);
        }
        let mut moved = 0;
        for layer in lowers {
            // Nothing to move where the filesystem has no file handles:
            // its entries keep the older name, and need no walk.
            if !wanted.keys().any(|(dev, _)| *dev == layer.dev())
                || self.encode(layer, &RelPath::root()).is_err()
            {
                continue;
            }
            let mut found = Vec::new();
            walk(layer, &RelPath::root(), &wanted, &mut found)?;
            for (path, origin) in found {
                let Some(name) = wanted.remove(&origin) else {
                    continue;
                };
                let Ok(fb) = self.encode(layer, &path) else {
                    continue;
                };
                let old = legacy_rel(&name);
                set_origin(&self.work, &old, &fb)?;
                let new = kernel_key(&fb);
                let root = self.work.root_fd();
                let (from, to) = (CString::from(old.as_c_str()), CString::from(new.as_c_str()));
                // SAFETY: valid fd and C strings.
                let r = unsafe {
                    libc::renameat2(
                        root.as_raw_fd(),
                        from.as_ptr(),
                        root.as_raw_fd(),
                        to.as_ptr(),
                        libc::RENAME_NOREPLACE,
                    )
                };
                if r == 0 {
                    moved += 1;
                } else {
                    let e = io::Error::last_os_error();
                    tracing::warn!(error = %e, entry = %old, "cannot move a hard-link index entry to its kernel name");
                }
            }
            if wanted.is_empty() {
                break;
            }
        }
        Ok(moved)
    }
}

/// A layer's root opened for real: ioctls and open_by_handle_at refuse
/// the O_PATH fd the layer keeps.
fn open_root(layer: &Layer) -> io::Result<std::os::fd::OwnedFd> {
    layer.open_beneath(&RelPath::root(), libc::O_RDONLY | libc::O_DIRECTORY)
}

/// Find the paths of the lower files in `wanted` below `dir` of `layer`.
fn walk(
    layer: &Layer,
    dir: &RelPath,
    wanted: &HashMap<(u64, u64), Vec<u8>>,
    found: &mut Vec<(RelPath, (u64, u64))>,
) -> io::Result<()> {
    let raw = layer.read_dir(dir)?;
    for e in raw.entries {
        let RawKind::Object(kind) = e.kind else {
            continue;
        };
        let path = dir.join(&e.name)?;
        if kind == FileKind::Dir {
            walk(layer, &path, wanted, found)?;
        } else if wanted.contains_key(&(layer.dev(), e.ino)) {
            found.push((path, (layer.dev(), e.ino)));
        }
    }
    Ok(())
}

/// The key of an entry under its kernel name.
fn kernel_key(fb: &[u8]) -> RelPath {
    let mut name = format!("{KERNEL_DIR}/").into_bytes();
    for b in fb {
        name.extend_from_slice(format!("{b:02x}").as_bytes());
    }
    RelPath::from_bytes(&name).unwrap_or_else(RelPath::root)
}

/// The key older versions gave the copy of lower inode `st`.
pub fn legacy_key(st: &Stat) -> RelPath {
    legacy_rel(format!("{:x}-{:x}", st.dev, st.ino).as_bytes())
}

fn legacy_rel(name: &[u8]) -> RelPath {
    let mut p = format!("{LEGACY_DIR}/").into_bytes();
    p.extend_from_slice(name);
    RelPath::from_bytes(&p).unwrap_or_else(RelPath::root)
}

/// The kernel origin a key names, for keys under the kernel's dir.
pub fn key_origin(key: &RelPath) -> Option<Vec<u8>> {
    let (dir, name) = key.split();
    (dir.as_os_str() == OsStr::new(KERNEL_DIR))
        .then(|| unhex(name.as_bytes()))
        .flatten()
}

fn parse_legacy(name: &[u8]) -> Option<(u64, u64)> {
    let (d, i) = std::str::from_utf8(name).ok()?.split_once('-')?;
    Some((
        u64::from_str_radix(d, 16).ok()?,
        u64::from_str_radix(i, 16).ok()?,
    ))
}

fn unhex(name: &[u8]) -> Option<Vec<u8>> {
    if !name.len().is_multiple_of(2) {
        return None;
    }
    name.chunks(2)
        .map(|p| u8::from_str_radix(std::str::from_utf8(p).ok()?, 16).ok())
        .collect()
}

/// The overlay xattr name `what` under `prefix` (`trusted.overlay.`).
pub fn xattr_name(prefix: &str, what: &str) -> CString {
    CString::new(format!("{prefix}{what}")).unwrap_or_else(|_| CString::from(c"trusted.overlay."))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip() {
        let fb = [0u8, 0xfb, 0x1d, 0, 1, 0xab];
        let key = kernel_key(&fb);
        assert_eq!(key.as_os_str(), OsStr::new("index/00fb1d0001ab"));
        assert_eq!(key_origin(&key).as_deref(), Some(&fb[..]));
        assert_eq!(parse_legacy(b"fd01-a2dcb1"), Some((0xfd01, 0xa2dcb1)));
        assert_eq!(parse_legacy(b"origins.log"), None);
        assert_eq!(unhex(b"0g"), None);
        let old = legacy_rel(b"1-2");
        assert_eq!(key_origin(&old), None);
    }
}
