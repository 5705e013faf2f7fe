//! A container's hard-link index, read-only: the shared upper copy of a
//! hard-linked lower file changed through one of its names, which the
//! container shows under every name (`WORK/layerfs-index`, named by
//! `Upper::index_key`). The union reading the upper with a private work
//! dir does not see it; `diff` and the layer tar ask here.

use std::collections::HashSet;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use crate::error::{Error, Result};
use crate::layers::{FileKind, Layer, RelPath, Stat, Upper};
use crate::union::{LayerStack, MergedDir, Resolved};

pub(super) struct HardLinkIndex {
    layer: Layer,
}

impl HardLinkIndex {
    /// The index of the work dir `work`; None without a work dir or when
    /// it holds no index (an upper the kernel wrote, or nothing indexed).
    pub fn open(work: Option<&Path>) -> Result<Option<HardLinkIndex>> {
        let Some(dir) = work.map(Upper::index_path) else {
            return Ok(None);
        };
        if !dir.is_dir() {
            return Ok(None);
        }
        let layer = Layer::open(&dir).map_err(|e| Error::io(e, "open index", dir.display()))?;
        let listed = layer
            .read_dir(&RelPath::root())
            .map_err(|e| Error::io(e, "readdir", dir.display()))?;
        Ok((!listed.entries.is_empty()).then_some(HardLinkIndex { layer }))
    }

    pub fn layer(&self) -> &Layer {
        &self.layer
    }

    /// The index entry (its name and stat) a lower non-directory shows.
    pub fn copy_of(&self, r: &Resolved) -> Option<(RelPath, Stat)> {
        if r.layer == 0 || r.kind == FileKind::Dir || r.stat.nlink < 2 {
            return None;
        }
        let key = Upper::index_key(&r.stat);
        self.layer.stat(&key).ok().map(|st| (key, st))
    }

    /// Every lower-only name of the merged tree below `dir` that shows an
    /// index copy, with its parents (paths as in the tar: `a/b`).
    pub fn showing_names(&self, stack: &LayerStack, dir: &MergedDir) -> Result<HashSet<Vec<u8>>> {
        let mut out = HashSet::new();
        self.collect(stack, dir, &mut out)?;
        Ok(out)
    }

    fn collect(
        &self,
        stack: &LayerStack,
        dir: &MergedDir,
        out: &mut HashSet<Vec<u8>>,
    ) -> Result<()> {
        let listing = stack.read_dir(dir)?;
        for child in &listing.entries {
            let r = stack.resolve(dir, child)?;
            if let Some(sub) = &r.dir {
                self.collect(stack, sub, out)?;
            } else if self.copy_of(&r).is_some() {
                let mut path = r.upath.clone();
                while !path.is_root() && out.insert(path.as_os_str().as_bytes().to_vec()) {
                    path = path.split().0;
                }
            }
        }
        Ok(())
    }
}
