//! Metadata-only copies, the kernel's `metacopy=on` (fs/overlayfs): a
//! change of metadata alone (chmod, chown, utimes, xattrs, link, rename)
//! copies a lower regular file up without its data, marked
//! `overlay.metacopy`. Its attributes are the upper file's; its data is
//! the file a lookup finds below it: by its name in the layers of its
//! parent, or where its `overlay.redirect` points (one name: the same
//! directory; `/a/b`: from the root of every layer below). The first
//! change of data copies the data into the upper file in place.

use std::ffi::OsStr;
use std::os::fd::BorrowedFd;
use std::os::unix::ffi::OsStrExt;

use super::{LayerIdx, LayerStack, MergedDir, Resolved, layer_display};
use crate::error::{Error, Result};
use crate::layers::{FileKind, FileMarks, Probe, Redirect, RelPath, Stat};

/// What a copy-up is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CopyUp {
    /// The data will change (open for write, truncate): copy it.
    Data,
    /// Only metadata will (chmod, chown, utimes, xattrs, link, rename):
    /// with `metacopy=on`, a regular file is copied without its data.
    Metadata,
}

/// Where the data of a metacopy file is.
#[derive(Debug, Clone)]
pub struct LowerData {
    pub layer: LayerIdx,
    /// Its path in `layer`.
    pub path: RelPath,
    pub stat: Stat,
}

/// The longest redirect written, as the kernel's default `redirect_max`.
pub(super) const REDIRECT_MAX: usize = 256;

impl Resolved {
    /// Where its data is read: a metacopy file's lower data, else itself
    /// (layer, path in it, and the stat of what is there).
    pub fn data_location(&self) -> (LayerIdx, &RelPath, &Stat) {
        match &self.data {
            Some(d) => (d.layer, &d.path, &d.stat),
            None => (self.layer, &self.path, &self.stat),
        }
    }

    /// `st` (its own attributes) as the union shows them: a metacopy file
    /// reports the blocks of its data, as the kernel's `ovl_getattr` does.
    pub fn shown_stat(&self, mut st: Stat) -> Stat {
        if let Some(d) = &self.data {
            st.blocks = d.stat.blocks;
        }
        st
    }
}

impl LayerStack {
    /// Whether a copy-up of a `kind` object for a change of metadata only
    /// leaves its data below (metacopy=on, an upper in the kernel's format).
    pub(super) fn writes_metacopy(&self, kind: FileKind) -> bool {
        self.metacopy
            && kind == FileKind::Regular
            && self.upper.as_ref().is_some_and(|u| u.writes_metacopy())
    }

    /// The data of the regular file `path` of layer `from` (the entry
    /// `name` of `parent`), if it is a metacopy file. Without
    /// `metacopy=on` such a file is refused (EPERM), as the kernel refuses
    /// to follow it.
    pub(super) fn metacopy_data(
        &self,
        parent: &MergedDir,
        name: &OsStr,
        from: LayerIdx,
        path: &RelPath,
    ) -> Result<Option<LowerData>> {
        let layer = self.layer(from);
        let shown = || layer_display(layer, path);
        let Some(marks) = self.metacopy_marks(from, path)? else {
            return Ok(None);
        };
        if marks.redirect.is_some() && !self.redirect_dir.follows() {
            return Err(Error::new(
                libc::EPERM,
                "lookup",
                shown(),
                "refusing to follow a redirect (redirect_dir=nofollow)",
            ));
        }
        match self.find_data(parent, name, marks.redirect.as_deref(), from, path)? {
            Some(d) => Ok(Some(d)),
            None => Err(Error::new(
                libc::EIO,
                "lookup",
                shown(),
                "metacopy file with no lower data",
            )),
        }
    }

    /// The marks of `path` in layer `from` if it is a metacopy file. Without
    /// `metacopy=on` such a file is refused (EPERM), as the kernel refuses
    /// to follow it.
    fn metacopy_marks(&self, from: LayerIdx, path: &RelPath) -> Result<Option<FileMarks>> {
        let layer = self.layer(from);
        let marks = layer
            .file_marks(path)
            .map_err(|e| Error::io(e, "lookup", layer_display(layer, path)))?;
        if !marks.metacopy {
            return Ok(None);
        }
        if !self.metacopy {
            return Err(Error::new(
                libc::EPERM,
                "lookup",
                layer_display(layer, path),
                "refusing to follow a metacopy file (mount with metacopy=on)",
            ));
        }
        Ok(Some(marks))
    }

    /// A metacopy index entry `key` (a hard-linked lower file changed in
    /// metadata only) reads the lower name it was reached by (`layer`,
    /// `path`, with `stat`).
    pub fn index_data(
        &self,
        key: &RelPath,
        layer: LayerIdx,
        path: &RelPath,
        stat: &Stat,
    ) -> Result<Option<LowerData>> {
        if self.metacopy_marks(super::INDEX_LAYER, key)?.is_none() {
            return Ok(None);
        }
        Ok(Some(LowerData {
            layer,
            path: path.clone(),
            stat: *stat,
        }))
    }

    /// The regular file holding the data of the metacopy file `name` of
    /// `parent` (at `at` in layer `from`): looked up as `redirect` says
    /// (or by its own name) in the layers below `from`. A metacopy file
    /// met on the way (an old upper stacked as a lower) is passed, its
    /// redirect followed, as `ovl_lookup` does. A whiteout or another kind
    /// of object means no data (None).
    fn find_data(
        &self,
        parent: &MergedDir,
        name: &OsStr,
        redirect: Option<&[u8]>,
        from: LayerIdx,
        at: &RelPath,
    ) -> Result<Option<LowerData>> {
        let mut dirs: Vec<(LayerIdx, RelPath)> = if self.shows_lower(parent) {
            parent
                .layers
                .iter()
                .filter(|(l, _)| *l > from)
                .map(|(l, _)| (*l, parent.path_in(*l, self.upper.is_some()).clone()))
                .collect()
        } else {
            Vec::new()
        };
        let mut target = name.to_os_string();
        if let Some(r) = redirect {
            self.redirect_search(r, from, at, &mut dirs, &mut target)?;
        }
        let mut i = 0;
        while let Some((l, dir)) = dirs.get(i).cloned() {
            i += 1;
            let layer = self.layer(l);
            let path = dir
                .join(&target)
                .map_err(|e| Error::io(e, "lookup", layer_display(layer, &dir)))?;
            let probe = layer
                .probe(&path)
                .map_err(|e| Error::io(e, "lookup", layer_display(layer, &path)))?;
            let stat = match probe {
                Probe::Absent => continue,
                Probe::Object {
                    kind: FileKind::Regular,
                    stat,
                    ..
                } => stat,
                Probe::Whiteout | Probe::Object { .. } => return Ok(None),
            };
            let marks = layer
                .file_marks(&path)
                .map_err(|e| Error::io(e, "lookup", layer_display(layer, &path)))?;
            if !marks.metacopy {
                return Ok(Some(LowerData {
                    layer: l,
                    path,
                    stat,
                }));
            }
            if let Some(r) = marks.redirect {
                dirs.drain(..i);
                i = 0;
                self.redirect_search(&r, l, &path, &mut dirs, &mut target)?;
            }
        }
        Ok(None)
    }

    /// Apply the redirect `r` of the metacopy file `at` in layer `from` to
    /// where the layers below are asked (`dirs`, top first) and for what
    /// name (`target`): one name renames it in the same directories, a
    /// path is walked from the root of every layer below `from`.
    fn redirect_search(
        &self,
        r: &[u8],
        from: LayerIdx,
        at: &RelPath,
        dirs: &mut Vec<(LayerIdx, RelPath)>,
        target: &mut std::ffi::OsString,
    ) -> Result<()> {
        let bad = || {
            Error::new(
                libc::EIO,
                "lookup",
                layer_display(self.layer(from), at),
                "bad redirect",
            )
        };
        match Redirect::parse(r).ok_or_else(bad)? {
            Redirect::FromRoot(abs) => {
                let path = RelPath::from_bytes(abs).ok_or_else(bad)?;
                let (dir, file) = path.split();
                *target = file.to_os_string();
                *dirs = self.dirs_from_root(&dir, from + 1)?;
            }
            Redirect::Renamed(name) => *target = name.to_os_string(),
        }
        Ok(())
    }

    /// Copy the data of the metacopy file `obj` into its upper file in
    /// place (first open for write, truncate); returns it as a plain
    /// upper file. Anything else comes back as it is.
    pub fn copy_up_data(&self, obj: &Resolved) -> Result<Resolved> {
        let Some(data) = &obj.data else {
            return Ok(obj.clone());
        };
        let upper = self
            .upper
            .as_ref()
            .ok_or_else(|| Error::errno(libc::EROFS, "copy up", &obj.path))?;
        let (dst, src) = (self.layer(obj.layer), self.layer(data.layer));
        let stat = upper
            .copy_data_in_place(dst, &obj.path, src, &data.path, data.stat.size)
            .map_err(|e| Error::io(e, "copy up", layer_display(src, &data.path)))?;
        let mut copied = obj.clone();
        copied.stat = stat;
        copied.data = None;
        Ok(copied)
    }

    /// Give the upper file `name` of `parent` (open at `dir`) the redirect
    /// it needs before it gets another name, if it is a metacopy file.
    pub(super) fn redirect_metacopy(
        &self,
        parent: &Resolved,
        dir: BorrowedFd<'_>,
        name: &OsStr,
        absolute: bool,
    ) -> Result<()> {
        let pdir = parent
            .dir
            .as_ref()
            .ok_or_else(|| Error::errno(libc::ENOTDIR, "rename", &parent.upath))?;
        let Some(r) = self.metacopy_redirect(pdir, name, absolute)? else {
            return Ok(());
        };
        let upper = self
            .upper
            .as_ref()
            .ok_or_else(|| Error::errno(libc::EROFS, "rename", &parent.upath))?;
        upper
            .set_redirect(dir, name, &r)
            .map_err(|e| Error::io(e, "rename", layer_display(self.layer(0), &pdir.path)))
    }

    /// The redirect the upper file `name` of `pdir` must carry before it
    /// gets another name (rename, or with `absolute`, a hard link or a
    /// move to another directory), if it is a metacopy file: its lower
    /// name, relative when it stays in its directory and the lower file
    /// has one link, else absolute — the kernel's `ovl_set_redirect`. None
    /// when it needs none or the one it has will do.
    fn metacopy_redirect(
        &self,
        pdir: &MergedDir,
        name: &OsStr,
        absolute: bool,
    ) -> Result<Option<Vec<u8>>> {
        let layer = self.layer(0);
        let path = pdir
            .path
            .join(name)
            .map_err(|e| Error::io(e, "rename", &pdir.path))?;
        let marks = layer
            .file_marks(&path)
            .map_err(|e| Error::io(e, "rename", layer_display(layer, &path)))?;
        if !marks.metacopy {
            return Ok(None);
        }
        let redirect = marks.redirect.as_deref();
        let data = self.find_data(pdir, name, redirect, 0, &path)?;
        let absolute = absolute || data.is_some_and(|d| d.stat.nlink > 1);
        if let Some(r) = redirect
            && (!absolute || r.starts_with(b"/"))
        {
            return Ok(None);
        }
        let lower_name = redirect.map_or(name, OsStr::from_bytes);
        if !absolute {
            return Ok(Some(lower_name.as_bytes().to_vec()));
        }
        let lower = pdir
            .lower_path
            .join(lower_name)
            .map_err(|e| Error::io(e, "rename", &pdir.lower_path))?;
        absolute_redirect(&lower, &path).map(Some)
    }
}

/// `/LOWER` as a redirect; EXDEV past the kernel's `redirect_max`, where
/// it too answers EXDEV and the caller copies instead.
pub(super) fn absolute_redirect(lower: &RelPath, at: &RelPath) -> Result<Vec<u8>> {
    let mut abs = b"/".to_vec();
    if !lower.is_root() {
        abs.extend_from_slice(lower.as_os_str().as_bytes());
    }
    if abs.len() > REDIRECT_MAX {
        return Err(Error::new(libc::EXDEV, "rename", at, "redirect too long"));
    }
    Ok(abs)
}
