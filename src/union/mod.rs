//! The union semantics over a stack of read-only layers: top-down lookup,
//! whiteouts, opaque directories, merged directory listings and stable
//! inode numbers. Plain Rust over `layers::Layer`; no FUSE types, so all of
//! it can be tested without a mount.

mod inos;

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::ffi::{OsStr, OsString};
use std::path::Path;

pub use inos::InoMap;

use crate::error::{Error, Result};
use crate::layers::{FileKind, Layer, RawKind, RelPath, Stat};

/// Index of a layer in the stack; 0 is the top.
pub type LayerIdx = u32;

/// The layers of one mount, top first.
#[derive(Debug)]
pub struct LayerStack {
    layers: Vec<Layer>,
    inos: InoMap,
}

/// A directory as the union sees it: its path and the layers, top first,
/// that hold a directory there which may show through (a non-directory or
/// a whiteout in between ends the list; opaque markers are applied when
/// the directory is read).
#[derive(Debug, Clone)]
pub struct MergedDir {
    pub path: RelPath,
    pub layers: Vec<LayerIdx>,
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
    /// For a directory: every layer whose directory merges into it.
    pub dir_layers: Vec<LayerIdx>,
}

/// The merged content of one directory, read once: lower layers never
/// change while mounted, so it stays valid for the life of the mount.
#[derive(Debug, Default)]
pub struct Listing {
    pub entries: Vec<Child>,
    by_name: HashMap<OsString, usize>,
}

impl Listing {
    pub fn get(&self, name: &OsStr) -> Option<&Child> {
        self.by_name.get(name).map(|&i| &self.entries[i])
    }
}

/// A name resolved in the union, with what its topmost layer says of it.
#[derive(Debug, Clone)]
pub struct Resolved {
    pub ino: u64,
    pub kind: FileKind,
    pub layer: LayerIdx,
    pub path: RelPath,
    pub stat: Stat,
    /// Set for directories.
    pub dir: Option<MergedDir>,
}

/// How a name stands while layers are merged top-down.
enum Slot {
    /// Shown as `entries[index]`; `open` while lower directories may still
    /// merge into it.
    Shown { index: usize, open: bool },
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
        Ok(LayerStack { layers, inos })
    }

    pub fn len(&self) -> usize {
        self.layers.len()
    }

    pub fn is_empty(&self) -> bool {
        self.layers.is_empty()
    }

    pub fn layer(&self, idx: LayerIdx) -> &Layer {
        &self.layers[idx as usize]
    }

    pub fn inos(&self) -> &InoMap {
        &self.inos
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
            stat,
            dir: Some(MergedDir {
                path,
                layers: (0..self.layers.len() as LayerIdx).collect(),
            }),
        })
    }

    /// Read and merge a directory across its layers.
    pub fn read_dir(&self, dir: &MergedDir) -> Result<Listing> {
        let mut listing = Listing::default();
        let mut slots: HashMap<OsString, Slot> = HashMap::new();
        for &layer_idx in &dir.layers {
            let layer = self.layer(layer_idx);
            let raw = layer
                .read_dir(&dir.path)
                .map_err(|e| Error::io(e, "readdir", layer_display(layer, &dir.path)))?;
            // Objects first: a whiteout hides names in lower layers only,
            // never an object of its own layer (OCI allows both in one).
            for entry in raw.entries.iter() {
                let RawKind::Object(kind) = entry.kind else {
                    continue;
                };
                match slots.entry(entry.name.clone()) {
                    Entry::Vacant(v) => {
                        let is_dir = kind == FileKind::Dir;
                        v.insert(Slot::Shown {
                            index: listing.entries.len(),
                            open: is_dir,
                        });
                        listing.entries.push(Child {
                            name: entry.name.clone(),
                            kind,
                            layer: layer_idx,
                            ino: self.inos.map(layer_idx, entry.ino),
                            dir_layers: if is_dir { vec![layer_idx] } else { Vec::new() },
                        });
                    }
                    Entry::Occupied(mut o) => {
                        // A lower non-directory ends the merge.
                        if let Slot::Shown { index, open } = o.get_mut()
                            && *open
                        {
                            if kind == FileKind::Dir {
                                listing.entries[*index].dir_layers.push(layer_idx);
                            } else {
                                *open = false;
                            }
                        }
                    }
                }
            }
            for entry in raw.entries.iter() {
                if entry.kind != RawKind::Whiteout {
                    continue;
                }
                match slots.entry(entry.name.clone()) {
                    Entry::Vacant(v) => {
                        v.insert(Slot::Hidden);
                    }
                    Entry::Occupied(mut o) => {
                        if let Slot::Shown { open, .. } = o.get_mut() {
                            *open = false;
                        }
                    }
                }
            }
            if raw.marks.opaque && !dir.path.is_root() {
                break;
            }
        }
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
        let path = parent
            .path
            .join(&child.name)
            .map_err(|e| Error::io(e, "lookup", parent.path.to_string()))?;
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
        let dir = (kind == FileKind::Dir).then(|| MergedDir {
            path: path.clone(),
            layers: child.dir_layers.clone(),
        });
        Ok(Resolved {
            ino: self.inos.map(child.layer, stat.ino),
            kind,
            layer: child.layer,
            path,
            stat,
            dir,
        })
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
