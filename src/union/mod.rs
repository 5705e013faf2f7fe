//! The union semantics over a stack of read-only layers: top-down lookup,
//! whiteouts, opaque directories, merged directory listings and stable
//! inode numbers. Plain Rust over `layers::Layer`; no FUSE types, so all of
//! it can be tested without a mount.

mod inos;
mod lookup;
mod metacopy;
mod write;

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::ffi::{OsStr, OsString};
use std::path::Path;

pub use inos::InoMap;
pub use metacopy::{CopyUp, LowerData};
pub use write::{AttrChange, UpperSpec, xattr_op};

use crate::error::{Error, Result};
use crate::layers::{DirLookup, FileKind, Layer, RawKind, RelPath, Stat, Upper, WhiteoutFormat};

/// Index of a layer in the stack; 0 is the top.
pub type LayerIdx = u32;

/// Where an object lives when it is the shared upper copy of a
/// hard-linked lower file, reached through a name not copied up yet.
pub const INDEX_LAYER: LayerIdx = LayerIdx::MAX;

/// The layers of one mount, top first. With a writable upper layer, it is
/// layer 0 and `upper` holds its work directory.
#[derive(Debug)]
pub struct LayerStack {
    layers: Vec<Layer>,
    inos: InoMap,
    upper: Option<Upper>,
    redirect_dir: RedirectDir,
    /// The kernel's `metacopy=on`: metadata changes copy up metadata only,
    /// and metacopy files in the upper are read (else refused, EPERM).
    metacopy: bool,
}

/// The kernel's `redirect_dir` option: whether renaming a directory with
/// lower content records a redirect (else EXDEV, and callers such as mv
/// copy the tree), and whether the redirects layers hold are followed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RedirectDir {
    #[default]
    On,
    /// Followed, not created.
    Follow,
    /// Neither followed nor created.
    NoFollow,
}

impl RedirectDir {
    pub fn creates(self) -> bool {
        self == RedirectDir::On
    }

    pub fn follows(self) -> bool {
        self != RedirectDir::NoFollow
    }
}

/// A directory as the union sees it: its path and the layers, top first,
/// that hold a directory there which shows through, each with where it
/// is in that layer (a lookup found them as the kernel's does: see
/// `lookup.rs`).
#[derive(Debug, Clone)]
pub struct MergedDir {
    /// Its path in the union, which is its path in the upper layer.
    pub path: RelPath,
    /// The name a lookup asks the first lower layer for: its union path
    /// with the upper's redirects applied (those of lower layers are not).
    /// What a redirect made now records, as the kernel's does.
    pub lower_path: RelPath,
    /// Each layer, top first, with the directory's path in it. The upper's
    /// entry is kept at `path` (see [`MergedDir::path_in`]).
    pub layers: Vec<(LayerIdx, RelPath)>,
}

impl MergedDir {
    /// Where this directory lives in `layer` (one of its layers).
    pub fn path_in(&self, layer: LayerIdx, has_upper: bool) -> &RelPath {
        if layer == 0 && has_upper {
            return &self.path;
        }
        self.layers
            .iter()
            .find(|(l, _)| *l == layer)
            .map_or(&self.lower_path, |(_, p)| p)
    }

    /// Whether `layer` is one of its layers.
    pub fn has_layer(&self, layer: LayerIdx) -> bool {
        self.layers.iter().any(|(l, _)| *l == layer)
    }
}

/// One visible entry of a merged directory.
#[derive(Debug, Clone)]
pub struct Child {
    pub name: OsString,
    pub kind: FileKind,
    /// The topmost layer holding the name: the one that is shown.
    pub layer: LayerIdx,
    /// The union inode number (equal to the st_ino a lookup reports).
    pub ino: u64,
    /// The name exists below the upper layer (as the first thing found
    /// there, not a whiteout): removing it from the upper needs a whiteout.
    pub lower: bool,
}

/// The merged content of one directory, read once: lower layers never
/// change while mounted, so it stays valid for the life of the mount.
#[derive(Debug, Default, Clone)]
pub struct Listing {
    pub entries: Vec<Child>,
    by_name: HashMap<OsString, usize>,
    /// Names whited out in the upper layer, with whether the name exists
    /// below (so a new object there must keep hiding it when removed).
    upper_whiteouts: HashMap<OsString, bool>,
    /// Some lower layer's directory shows through (after opaque marks):
    /// once the directory is in the upper it is of the kernel's "merge"
    /// type, in which new directories are made opaque.
    pub has_lower: bool,
}

impl Listing {
    pub fn get(&self, name: &OsStr) -> Option<&Child> {
        self.by_name.get(name).map(|&i| &self.entries[i])
    }

    fn get_mut(&mut self, name: &OsStr) -> Option<&mut Child> {
        self.by_name.get(name).map(|&i| &mut self.entries[i])
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Show the entry `name` under another inode number (the FUSE glue's
    /// choice when the kernel still holds its own number for another
    /// object).
    pub fn set_ino(&mut self, name: &OsStr, ino: u64) {
        if let Some(c) = self.get_mut(name) {
            c.ino = ino;
        }
    }

    /// Add or replace an entry.
    fn upsert(&mut self, child: Child) {
        match self.by_name.get(&child.name) {
            Some(&i) => self.entries[i] = child,
            None => {
                self.by_name.insert(child.name.clone(), self.entries.len());
                self.entries.push(child);
            }
        }
    }

    /// Drop an entry (the order of the others may change).
    fn remove(&mut self, name: &OsStr) -> Option<Child> {
        let i = self.by_name.remove(name)?;
        let child = self.entries.swap_remove(i);
        if let Some(moved) = self.entries.get(i) {
            self.by_name.insert(moved.name.clone(), i);
        }
        Some(child)
    }
}

/// A name resolved in the union, with what its topmost layer says of it.
#[derive(Debug, Clone)]
pub struct Resolved {
    pub ino: u64,
    pub kind: FileKind,
    pub layer: LayerIdx,
    /// Where it is in `layer`.
    pub path: RelPath,
    /// Where it is in the union (and so where a copy-up puts it).
    pub upath: RelPath,
    pub stat: Stat,
    /// Set for directories.
    pub dir: Option<MergedDir>,
    /// For a hard-linked lower file with an index copy: its index entry,
    /// where the node goes when the upper name it had is removed.
    pub index_key: Option<RelPath>,
    /// For a metacopy file (metadata copied up, data not): where its data
    /// is. Attributes are `layer`/`path`'s, data is read from here.
    pub data: Option<LowerData>,
}

/// How a name stands while layers are merged top-down.
enum Slot {
    /// Shown as `entries[index]`.
    Shown { index: usize },
    /// Whited out above: nothing below may show.
    Hidden,
}

impl LayerStack {
    /// Open every layer (top first).
    pub fn open(paths: &[impl AsRef<Path>]) -> Result<LayerStack> {
        if paths.is_empty() {
            return Err(Error::new(
                libc::EINVAL,
                "open layers",
                "",
                "no lower layer",
            ));
        }
        let layers = paths
            .iter()
            .map(|p| {
                Layer::open(p.as_ref())
                    .map_err(|e| Error::io(e, "open layer", p.as_ref().display()))
            })
            .collect::<Result<Vec<_>>>()?;
        let inos = InoMap::new(layers.iter().map(Layer::dev));
        Ok(LayerStack {
            layers,
            inos,
            upper: None,
            redirect_dir: RedirectDir::On,
            metacopy: false,
        })
    }

    /// Open a writable stack: `spec.upper` becomes layer 0 above `lowers`.
    pub fn open_writable(lowers: &[impl AsRef<Path>], spec: &UpperSpec) -> Result<LayerStack> {
        let mut paths: Vec<&Path> = vec![spec.upper.as_path()];
        paths.extend(lowers.iter().map(AsRef::as_ref));
        let mut stack = LayerStack::open(&paths)?;
        if spec.format == WhiteoutFormat::Overlay {
            // What the kernel reads in this upper, we read: `.wh.` names
            // are files there.
            stack.layers[0].ignore_oci_names();
        }
        let upper = Upper::open(
            &spec.work,
            spec.format,
            spec.userxattr,
            spec.durable,
            &stack.layers[1..],
        )
        .map_err(|e| Error::io(e, "open work dir", spec.work.display()))?;
        stack.upper = Some(upper);
        Ok(stack)
    }

    pub fn is_writable(&self) -> bool {
        self.upper.is_some()
    }

    /// Set the `redirect_dir` mode (on unless asked).
    pub fn set_redirect_dir(&mut self, mode: RedirectDir) {
        self.redirect_dir = mode;
    }

    /// Set `metacopy` (off unless asked, as in the kernel).
    pub fn set_metacopy(&mut self, on: bool) {
        self.metacopy = on;
    }

    pub fn len(&self) -> usize {
        self.layers.len()
    }

    pub fn is_empty(&self) -> bool {
        self.layers.is_empty()
    }

    pub fn layer(&self, idx: LayerIdx) -> &Layer {
        match (&self.upper, idx) {
            (Some(upper), INDEX_LAYER) => upper.index().layer(),
            _ => &self.layers[idx as usize],
        }
    }

    /// The root directory: every layer merges into it. As in the kernel,
    /// opaque marks on a layer's root are not honoured.
    pub fn root(&self) -> Result<Resolved> {
        let path = RelPath::root();
        let stat = self
            .layer(0)
            .stat(&path)
            .map_err(|e| Error::io(e, "stat", self.layer(0).path().display()))?;
        Ok(Resolved {
            ino: fuser_root_ino(),
            kind: FileKind::Dir,
            layer: 0,
            path: path.clone(),
            upath: path.clone(),
            stat,
            dir: Some(MergedDir {
                path: path.clone(),
                lower_path: path.clone(),
                layers: (0..self.layers.len() as LayerIdx)
                    .map(|l| (l, path.clone()))
                    .collect(),
            }),
            index_key: None,
            data: None,
        })
    }

    /// What the union shows at `path` (components separated by `/`,
    /// symlinks not followed), or None.
    pub fn lookup_path(&self, path: &str) -> Result<Option<Resolved>> {
        let mut here = self.root()?;
        for name in path.split('/').filter(|c| !c.is_empty()) {
            let Some(dir) = here.dir.as_ref() else {
                return Ok(None);
            };
            let listing = self.read_dir(dir)?;
            let Some(child) = listing.get(OsStr::new(name)) else {
                return Ok(None);
            };
            here = self.resolve(dir, child)?;
        }
        Ok(Some(here))
    }

    /// Read and merge a directory across its layers.
    pub fn read_dir(&self, dir: &MergedDir) -> Result<Listing> {
        let mut listing = Listing::default();
        let mut slots: HashMap<OsString, Slot> = HashMap::new();
        // Names settled below the upper layer: the first lower layer that
        // holds a name decides whether it exists below.
        let mut settled_below: std::collections::HashSet<OsString> = Default::default();
        let upper_idx = self.upper.as_ref().map(|_| 0);
        let mut lower_parts = 0;
        for &(layer_idx, _) in &dir.layers {
            let below_upper = upper_idx.is_some() && layer_idx > 0;
            let layer = self.layer(layer_idx);
            let at = dir.path_in(layer_idx, upper_idx.is_some());
            let raw = layer
                .read_dir(at)
                .map_err(|e| Error::io(e, "readdir", layer_display(layer, at)))?;
            // Copy-ups the kernel made carry only its origin xattr, in a
            // directory it marked impure.
            let impure = match &self.upper {
                Some(upper) if layer_idx == 0 => upper.dir_is_impure(layer, at),
                _ => false,
            };
            // Objects first: a whiteout hides names in lower layers only,
            // never an object of its own layer (OCI allows both in one).
            for entry in raw.entries.iter() {
                let RawKind::Object(kind) = entry.kind else {
                    continue;
                };
                if below_upper && settled_below.insert(entry.name.clone()) {
                    if let Some(Slot::Shown { index, .. }) = slots.get(&entry.name) {
                        listing.entries[*index].lower = true;
                    }
                    if let Some(pos) = listing.upper_whiteouts.get_mut(&entry.name) {
                        *pos = true;
                    }
                }
                // The topmost object of a name is the one shown; which
                // layers merge into a directory is a lookup's to find
                // (redirects may rename it in the layers below).
                if let Entry::Vacant(v) = slots.entry(entry.name.clone()) {
                    v.insert(Slot::Shown {
                        index: listing.entries.len(),
                    });
                    listing.entries.push(Child {
                        name: entry.name.clone(),
                        kind,
                        layer: layer_idx,
                        ino: match &self.upper {
                            Some(upper) if impure && upper.origin_of(entry.ino).is_none() => upper
                                .kernel_origin(layer, at, &entry.name, entry.ino, &self.layers[1..])
                                .and_then(|(dev, ino)| self.inos.map_dev(dev, ino))
                                .unwrap_or_else(|| self.inos.map(0, entry.ino)),
                            _ => self.child_ino(layer_idx, entry.ino),
                        },
                        lower: below_upper,
                    });
                }
            }
            for entry in raw.entries.iter() {
                if entry.kind != RawKind::Whiteout {
                    continue;
                }
                if upper_idx == Some(layer_idx) {
                    listing.upper_whiteouts.insert(entry.name.clone(), false);
                } else if below_upper {
                    settled_below.insert(entry.name.clone());
                }
                slots.entry(entry.name.clone()).or_insert(Slot::Hidden);
            }
            if layer_idx > 0 || upper_idx.is_none() {
                lower_parts += 1;
            }
            if raw.marks.opaque && !dir.path.is_root() {
                break;
            }
        }
        listing.has_lower = lower_parts > 0;
        listing.by_name = listing
            .entries
            .iter()
            .enumerate()
            .map(|(i, c)| (c.name.clone(), i))
            .collect();
        Ok(listing)
    }

    /// Resolve `child` (an entry of a listing of `parent`) to what its
    /// topmost layer holds.
    pub fn resolve(&self, parent: &MergedDir, child: &Child) -> Result<Resolved> {
        let join = |base: &RelPath| {
            base.join(&child.name)
                .map_err(|e| Error::io(e, "lookup", base.to_string()))
        };
        let upath = join(&parent.path)?;
        let path = join(parent.path_in(child.layer, self.upper.is_some()))?;
        let layer = self.layer(child.layer);
        let stat = layer
            .stat(&path)
            .map_err(|e| Error::io(e, "stat", layer_display(layer, &path)))?;
        let kind = FileKind::from_mode(stat.mode).ok_or_else(|| {
            Error::new(
                libc::EIO,
                "stat",
                layer_display(layer, &path),
                "unknown file type",
            )
        })?;
        if kind != child.kind {
            // The layer changed under us, or the name is a mount point:
            // refuse rather than mix two objects.
            return Err(Error::new(
                libc::EIO,
                "lookup",
                layer_display(layer, &path),
                "file type changed in a read-only layer",
            ));
        }
        let dir = if kind == FileKind::Dir {
            Some(self.child_dir(parent, child, &upath)?)
        } else {
            None
        };
        // Another name of a hard-linked lower file was copied up: this
        // name shows that copy too.
        if let Some((key, st)) = self.indexed(child.layer, &path, kind, &stat) {
            // A metacopy index copy (the kernel's) reads this lower name.
            let data = self.index_data(&key, child.layer, &path, &stat)?;
            return Ok(Resolved {
                ino: child.ino,
                kind,
                layer: INDEX_LAYER,
                path: key.clone(),
                upath,
                stat: st,
                dir: None,
                index_key: Some(key),
                data,
            });
        }
        // Metacopy files: in the upper always (refused without
        // metacopy=on), in lower layers (old uppers) with metacopy=on.
        let upper_file = child.layer == 0 && self.upper.is_some();
        let data = if kind == FileKind::Regular && (upper_file || self.metacopy) {
            self.metacopy_data(parent, &child.name, child.layer, &path)?
        } else {
            None
        };
        Ok(Resolved {
            // The listing's number: the same one readdir reports, and the
            // one a copied-up object keeps.
            ino: child.ino,
            kind,
            layer: child.layer,
            path,
            upath,
            stat,
            dir,
            index_key: None,
            data,
        })
    }

    /// The union inode number of an entry: its real one, or, for an upper
    /// copy of a lower object, the lower object's, so a copied-up object
    /// (and every name of a hard-linked one) keeps its number, also after
    /// a remount.
    fn child_ino(&self, layer: LayerIdx, real: u64) -> u64 {
        let origin = match &self.upper {
            Some(upper) if layer == 0 => upper.origin_of(real),
            _ => None,
        };
        origin
            .and_then(|(dev, ino)| self.inos.map_dev(dev, ino))
            .unwrap_or_else(|| self.inos.map(layer, real))
    }

    /// The index entry of a hard-linked lower object, if it was copied up.
    pub fn indexed(
        &self,
        layer: LayerIdx,
        path: &RelPath,
        kind: FileKind,
        st: &Stat,
    ) -> Option<(RelPath, Stat)> {
        let upper = self.upper.as_ref()?;
        if layer == 0 || layer == INDEX_LAYER || kind == FileKind::Dir || st.nlink < 2 {
            return None;
        }
        upper.index().find(self.layer(layer), path, st)
    }

    /// The link count the union shows for an object with real stat `st`.
    pub fn shown_nlink(&self, obj: &Resolved, st: &Stat) -> u64 {
        // An indexed copy has one link of its own (the index entry).
        let indexed = obj.layer == INDEX_LAYER || (obj.layer == 0 && st.nlink > 1);
        match &self.upper {
            Some(upper) if indexed && obj.kind != FileKind::Dir => {
                let diff = upper
                    .nlink_diff(self.layer(obj.layer), &obj.path)
                    .unwrap_or(0);
                u64::try_from(i64::try_from(st.nlink).unwrap_or(1) + diff)
                    .unwrap_or(1)
                    .max(1)
            }
            _ => st.nlink,
        }
    }

    /// Whether lower layers show through the directory `dir` (the kernel's
    /// "merge" type): some lower layer holds it, and its upper directory,
    /// if any, is not opaque. (`MergedDir::layers` leaves opaque marks to
    /// whoever reads the directory.)
    pub fn shows_lower(&self, dir: &MergedDir) -> bool {
        if !dir.layers.iter().any(|&(l, _)| l > 0) {
            return false;
        }
        let upper_first = self.upper.is_some() && dir.layers.first().is_some_and(|p| p.0 == 0);
        !(upper_first
            && !dir.path.is_root()
            && matches!(
                self.layer(0).lookup_dir(&dir.path),
                DirLookup::Dir { opaque: true, .. }
            ))
    }
}

/// The inode number FUSE reserves for the root.
pub const fn fuser_root_ino() -> u64 {
    1
}

/// `LAYER/PATH` for messages.
pub fn layer_display(layer: &Layer, path: &RelPath) -> String {
    if path.is_root() {
        layer.path().display().to_string()
    } else {
        format!(
            "{}/{}",
            layer.path().display(),
            path.as_os_str().to_string_lossy()
        )
    }
}

#[cfg(test)]
mod tests;
