//! Writing a container's upper layer as an OCI layer tar (for `commit`).
//!
//! The upper is in overlay form; the tar must say the same in OCI form:
//! a whiteout becomes `.wh.NAME`, an opaque directory `.wh..wh..opq`, and
//! a directory renamed with a redirect (whose content stays in the lower
//! layers) is written whole under its new name, marked opaque, while the
//! whiteout the rename left at the old name is written as `.wh.OLD`.
//! Overlay's own xattrs (`trusted.overlay.*`, `user.overlay.*`) never go
//! into the tar. Order: depth-first, per directory its opaque marker,
//! then its whiteouts, then its entries, each sorted by name.

use std::collections::{HashMap, HashSet};
use std::ffi::OsStr;
use std::io::{self, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use serde::Serialize;

use super::diff::open_container;
use super::index::HardLinkIndex;
use super::show_path;
use crate::error::{Error, Result};
use crate::layers::whiteout::{OCI_OPAQUE_MARKER, OCI_WHITEOUT_PREFIX};
use crate::layers::{FileKind, RelPath};
use crate::union::{LayerStack, MergedDir, Resolved};

/// What went into a layer tar.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct LayerTarSummary {
    /// Tar entries written (PAX headers not counted).
    pub entries: u64,
    pub files: u64,
    pub dirs: u64,
    pub symlinks: u64,
    /// Names written as hard links to an earlier entry.
    pub hardlinks: u64,
    /// Devices and fifos.
    pub specials: u64,
    pub whiteouts: u64,
    pub opaque_dirs: u64,
    /// Directories renamed with a redirect, written whole.
    pub redirected_dirs: u64,
    /// Sockets cannot be put in a tar; they are left out.
    pub skipped_sockets: u64,
    /// Bytes of regular-file data.
    pub bytes: u64,
}

/// Write `upper` (a container layer over `lowers`, top first) to `out` as
/// an uncompressed OCI layer tar. `lowers` are read only for directories
/// renamed with a redirect, whose content lives there.
pub fn write_layer_tar(
    upper: &Path,
    lowers: &[PathBuf],
    out: impl Write,
) -> Result<LayerTarSummary> {
    write_container_layer_tar(upper, None, lowers, out)
}

/// As [`write_layer_tar`], for a container layerfs ran with the work dir
/// `work`: a lower file with several names changed through one of them
/// lives in the work dir's hard-link index and shows under every name, so
/// every such name goes into the tar, with the index copy's data, as one
/// hard-link group with the upper's names. The work dir is only read.
pub fn write_container_layer_tar(
    upper: &Path,
    work: Option<&Path>,
    lowers: &[PathBuf],
    out: impl Write,
) -> Result<LayerTarSummary> {
    let view = open_container(upper, lowers)?;
    let index = HardLinkIndex::open(work)?;
    let stack = &view.stack;
    let root = stack
        .root()?
        .dir
        .ok_or_else(|| Error::new(libc::EIO, "commit", upper.display(), "root is no directory"))?;
    let mut w = TarWriter {
        builder: tar::Builder::new(out),
        stack,
        links: HashMap::new(),
        summary: LayerTarSummary::default(),
        upper: upper.to_path_buf(),
        index: index.as_ref(),
        wanted: HashSet::new(),
    };
    if let Some(index) = w.index {
        w.wanted = index.showing_names(stack, &root)?;
    }
    w.upper_dir(&root)?;
    w.builder
        .finish()
        .map_err(|e| Error::io(e, "write tar", upper.display()))?;
    Ok(w.summary)
}

struct TarWriter<'a, W: Write> {
    builder: tar::Builder<W>,
    stack: &'a LayerStack,
    /// First tar name of each hard-linked inode written, by (dev, ino).
    links: HashMap<(u64, u64), Vec<u8>>,
    summary: LayerTarSummary,
    upper: PathBuf,
    /// The container's hard-link index, when its work dir was given.
    index: Option<&'a HardLinkIndex>,
    /// Lower-only names showing an index copy, and their parents.
    wanted: HashSet<Vec<u8>>,
}

/// `a/b` for the tar (no leading slash).
fn tar_name(rel: &RelPath) -> Vec<u8> {
    rel.as_os_str().as_bytes().to_vec()
}

/// One PAX extended-header record: `LEN KEY=VALUE\n`, LEN counting itself.
pub(super) fn pax_record(key: &[u8], value: &[u8]) -> Vec<u8> {
    let body = key.len() + value.len() + 3; // ' ', '=', '\n'
    let mut len = body + 1;
    while len != body + len.to_string().len() {
        len = body + len.to_string().len();
    }
    let mut rec = format!("{len} ").into_bytes();
    rec.extend_from_slice(key);
    rec.push(b'=');
    rec.extend_from_slice(value);
    rec.push(b'\n');
    rec
}

/// Fails instead of writing a corrupt archive when a file shrank after it
/// was stat'ed (a container still running).
struct Exact<R> {
    inner: R,
    left: u64,
    path: String,
}

impl<R: Read> Read for Exact<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.left == 0 {
            return Ok(0);
        }
        let max = buf
            .len()
            .min(usize::try_from(self.left).unwrap_or(usize::MAX));
        let n = self.inner.read(&mut buf[..max])?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("{} shrank while being written", self.path),
            ));
        }
        self.left -= n as u64;
        Ok(n)
    }
}

fn is_overlay_xattr(name: &[u8]) -> bool {
    name.starts_with(b"trusted.overlay.") || name.starts_with(b"user.overlay.")
}

impl<W: Write> TarWriter<'_, W> {
    fn err(&self, e: io::Error, op: &'static str, rel: &RelPath) -> Error {
        Error::io(e, op, format!("{}{}", self.upper.display(), show_path(rel)))
    }

    /// A directory of the upper: its marks, whiteouts and entries.
    fn upper_dir(&mut self, dir: &MergedDir) -> Result<()> {
        let upper = self.stack.layer(0);
        let raw = upper
            .read_dir(&dir.path)
            .map_err(|e| self.err(e, "readdir", &dir.path))?;
        if raw.marks.opaque && !dir.path.is_root() {
            self.marker(&dir.path, OsStr::from_bytes(OCI_OPAQUE_MARKER))?;
            self.summary.opaque_dirs += 1;
        }
        let mut whiteouts: Vec<&OsStr> = raw
            .entries
            .iter()
            .filter(|e| e.kind == crate::layers::RawKind::Whiteout)
            .map(|e| e.name.as_os_str())
            .collect();
        whiteouts.sort();
        for name in whiteouts {
            let wh = [OCI_WHITEOUT_PREFIX, name.as_bytes()].concat();
            self.marker(&dir.path, OsStr::from_bytes(&wh))?;
            self.summary.whiteouts += 1;
        }
        let listing = self.stack.read_dir(dir)?;
        let mut objects = Vec::new();
        for child in &listing.entries {
            let path = dir
                .path
                .join(&child.name)
                .map_err(|e| self.err(e, "readdir", &dir.path))?;
            if child.layer == 0 || self.wanted.contains(&tar_name(&path)) {
                objects.push(child);
            }
        }
        objects.sort_by(|a, b| a.name.cmp(&b.name));
        for child in objects {
            let r = self.stack.resolve(dir, child)?;
            self.entry(&r)?;
            let Some(sub) = &r.dir else {
                continue;
            };
            if child.layer != 0 {
                // A lower-only directory on the way to an index copy.
                self.wanted_dir(sub)?;
                continue;
            }
            let redirect = upper
                .redirect(&r.upath)
                .map_err(|e| self.err(e, "read redirect", &r.upath))?;
            if redirect.is_some() {
                // Its content is where the redirect points: write it all
                // and hide whatever a lower layer has under the new name.
                self.summary.redirected_dirs += 1;
                self.summary.opaque_dirs += 1;
                self.marker(&r.upath, OsStr::from_bytes(OCI_OPAQUE_MARKER))?;
                self.full_dir(sub)?;
            } else {
                self.upper_dir(sub)?;
            }
        }
        Ok(())
    }

    /// The wanted names of a directory that only lower layers hold.
    fn wanted_dir(&mut self, dir: &MergedDir) -> Result<()> {
        let listing = self.stack.read_dir(dir)?;
        let mut children = Vec::new();
        for child in &listing.entries {
            let path = dir
                .path
                .join(&child.name)
                .map_err(|e| self.err(e, "readdir", &dir.path))?;
            if self.wanted.contains(&tar_name(&path)) {
                children.push(child);
            }
        }
        children.sort_by(|a, b| a.name.cmp(&b.name));
        for child in children {
            let r = self.stack.resolve(dir, child)?;
            self.entry(&r)?;
            if let Some(sub) = &r.dir {
                self.wanted_dir(sub)?;
            }
        }
        Ok(())
    }

    /// A directory written whole, as the container shows it.
    fn full_dir(&mut self, dir: &MergedDir) -> Result<()> {
        let listing = self.stack.read_dir(dir)?;
        let mut children: Vec<_> = listing.entries.iter().collect();
        children.sort_by(|a, b| a.name.cmp(&b.name));
        for child in children {
            let r = self.stack.resolve(dir, child)?;
            self.entry(&r)?;
            if let Some(sub) = &r.dir {
                self.full_dir(sub)?;
            }
        }
        Ok(())
    }

    /// An empty marker file (`.wh.NAME`, `.wh..wh..opq`) in `dir`.
    fn marker(&mut self, dir: &RelPath, name: &OsStr) -> Result<()> {
        let rel = dir.join(name).map_err(|e| self.err(e, "write tar", dir))?;
        let mut header = tar::Header::new_ustar();
        header.set_entry_type(tar::EntryType::Regular);
        header.set_mode(0o644);
        header.set_size(0);
        header.set_mtime(0);
        self.append(header, &rel, None, Vec::new(), io::empty())
    }

    /// One object, with its metadata, xattrs and data.
    fn entry(&mut self, r: &Resolved) -> Result<()> {
        let copy = self
            .index
            .and_then(|i| Some((i.layer(), i.copy_of(self.stack, r)?)));
        // Data is read where the union reads it (a metacopy file's is
        // below it); attributes and xattrs are the object's own.
        let (layer, src, st, data) = match copy {
            Some((index, (key, st))) => {
                // An index copy made without its data (metacopy=on): the
                // data is the lower name's.
                let data = if index.file_marks(&key).is_ok_and(|m| m.metacopy) {
                    (self.stack.layer(r.layer), r.path.clone())
                } else {
                    (index, key.clone())
                };
                (index, key, st, data)
            }
            None => {
                let (l, p, _) = r.data_location();
                let data = (self.stack.layer(l), p.clone());
                (self.stack.layer(r.layer), r.path.clone(), r.stat, data)
            }
        };
        let name = tar_name(&r.upath);
        let mut header = tar::Header::new_ustar();
        header.set_mode(st.mode & 0o7777);
        header.set_uid(u64::from(st.uid));
        header.set_gid(u64::from(st.gid));
        header.set_mtime(u64::try_from(st.mtime.0).unwrap_or(0));
        header.set_size(0);
        let mut pax = Vec::new();
        if st.mtime.1 != 0 && st.mtime.0 >= 0 {
            let value = format!("{}.{:09}", st.mtime.0, st.mtime.1);
            pax.extend(pax_record(b"mtime", value.as_bytes()));
        }
        if r.kind != FileKind::Dir && st.nlink > 1 {
            if let Some(first) = self.links.get(&(st.dev, st.ino)).cloned() {
                header.set_entry_type(tar::EntryType::Link);
                self.summary.hardlinks += 1;
                return self.append(header, &r.upath, Some(&first), Vec::new(), io::empty());
            }
            self.links.insert((st.dev, st.ino), name);
        }
        let is_dir = r.kind == FileKind::Dir;
        let xattrs = match layer.list_xattrs(&src, is_dir) {
            Ok(names) => names,
            Err(e) if e.raw_os_error() == Some(libc::ENOTSUP) => Vec::new(),
            Err(e) => return Err(self.err(e, "listxattr", &r.upath)),
        };
        let mut xattrs: Vec<_> = xattrs
            .into_iter()
            .filter(|n| !is_overlay_xattr(n.as_bytes()))
            .collect();
        xattrs.sort();
        for xname in xattrs {
            let value = layer
                .get_xattr(&src, is_dir, &xname)
                .map_err(|e| self.err(e, "getxattr", &r.upath))?;
            let key = [b"SCHILY.xattr.".as_slice(), xname.as_bytes()].concat();
            pax.extend(pax_record(&key, &value));
        }
        match r.kind {
            FileKind::Regular => {
                header.set_entry_type(tar::EntryType::Regular);
                header.set_size(st.size);
                let file = data
                    .0
                    .open_file(&data.1)
                    .map_err(|e| self.err(e, "open", &r.upath))?;
                self.summary.files += 1;
                self.summary.bytes += st.size;
                let data = Exact {
                    inner: file,
                    left: st.size,
                    path: show_path(&r.upath),
                };
                return self.append(header, &r.upath, None, pax, data);
            }
            FileKind::Dir => {
                header.set_entry_type(tar::EntryType::Directory);
                self.summary.dirs += 1;
            }
            FileKind::Symlink => {
                header.set_entry_type(tar::EntryType::Symlink);
                let target = layer
                    .readlink(&src)
                    .map_err(|e| self.err(e, "readlink", &r.upath))?;
                self.summary.symlinks += 1;
                return self.append(header, &r.upath, Some(&target), pax, io::empty());
            }
            FileKind::CharDev | FileKind::BlockDev => {
                header.set_entry_type(if r.kind == FileKind::CharDev {
                    tar::EntryType::Char
                } else {
                    tar::EntryType::Block
                });
                let (major, minor) = (
                    nix::sys::stat::major(st.rdev),
                    nix::sys::stat::minor(st.rdev),
                );
                let too_big = |_| {
                    Error::new(
                        libc::EOVERFLOW,
                        "write tar",
                        show_path(&r.upath),
                        "device number too large",
                    )
                };
                header
                    .set_device_major(u32::try_from(major).map_err(too_big)?)
                    .map_err(|e| self.err(e, "write tar", &r.upath))?;
                header
                    .set_device_minor(u32::try_from(minor).map_err(too_big)?)
                    .map_err(|e| self.err(e, "write tar", &r.upath))?;
                self.summary.specials += 1;
            }
            FileKind::Fifo => {
                header.set_entry_type(tar::EntryType::Fifo);
                self.summary.specials += 1;
            }
            FileKind::Socket => {
                tracing::warn!(path = %show_path(&r.upath), "a socket cannot go into a tar; left out");
                self.summary.skipped_sockets += 1;
                return Ok(());
            }
        }
        self.append(header, &r.upath, None, pax, io::empty())
    }

    /// Append one entry, preceded by a PAX header when it has records or
    /// its name or link target does not fit the ustar fields.
    fn append(
        &mut self,
        mut header: tar::Header,
        rel: &RelPath,
        link: Option<&[u8]>,
        mut pax: Vec<u8>,
        data: impl Read,
    ) -> Result<()> {
        let name = tar_name(rel);
        if header.set_path(OsStr::from_bytes(&name)).is_err() {
            pax.extend(pax_record(b"path", &name));
            // Readers take the PAX path; this is only a fallback.
            let short: Vec<u8> = name.iter().rev().take(99).rev().copied().collect();
            let short = short
                .split(|&b| b == b'/')
                .next_back()
                .filter(|s| !s.is_empty())
                .unwrap_or(b"long-name");
            header
                .set_path(OsStr::from_bytes(short))
                .map_err(|e| self.err(e, "write tar", rel))?;
        }
        if let Some(target) = link
            && header.set_link_name_literal(target).is_err()
        {
            pax.extend(pax_record(b"linkpath", target));
        }
        if !pax.is_empty() {
            let mut ext = tar::Header::new_ustar();
            ext.set_entry_type(tar::EntryType::XHeader);
            ext.set_path("PaxHeader")
                .map_err(|e| self.err(e, "write tar", rel))?;
            ext.set_mode(0o644);
            ext.set_mtime(0);
            ext.set_size(pax.len() as u64);
            ext.set_cksum();
            self.builder
                .append(&ext, pax.as_slice())
                .map_err(|e| self.err(e, "write tar", rel))?;
        }
        header.set_cksum();
        self.builder
            .append(&header, data)
            .map_err(|e| self.err(e, "write tar", rel))?;
        self.summary.entries += 1;
        Ok(())
    }
}
