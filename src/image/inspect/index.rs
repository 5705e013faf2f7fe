//! A container's hard-link index, read-only: the shared upper copy of a
//! hard-linked lower file changed through one of its names, which the
//! container shows under every name (`WORK/index`, in the kernel's
//! format, or `WORK/layerfs-index`: see `layers::index`). The union
//! reading the upper with a private work dir does not see it; `diff` and
//! the layer tar ask here.

use std::collections::HashSet;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use crate::error::{Error, Result};
use crate::layers::index::Index;
use crate::layers::{FileKind, Layer, RelPath, Stat};
use crate::union::{LayerStack, MergedDir, Resolved};

pub(super) struct HardLinkIndex {
    index: Index,
}

impl HardLinkIndex {
    /// The index of the work dir `work`; None without a work dir or when
    /// it holds no index (an upper the kernel wrote, or nothing indexed).
    pub fn open(work: Option<&Path>) -> Result<Option<HardLinkIndex>> {
        let Some(work) = work else {
            return Ok(None);
        };
        let index =
            Index::open(work, false).map_err(|e| Error::io(e, "open index", work.display()))?;
        Ok(index
            .filter(|i| !i.is_empty())
            .map(|index| HardLinkIndex { index }))
    }

    /// Where index keys are paths.
    pub fn layer(&self) -> &Layer {
        self.index.layer()
    }

    /// The index entry (its name and stat) a lower non-directory shows.
    pub fn copy_of(&self, stack: &LayerStack, r: &Resolved) -> Option<(RelPath, Stat)> {
        if r.layer == 0 || r.kind == FileKind::Dir || r.stat.nlink < 2 {
            return None;
        }
        self.index.find(stack.layer(r.layer), &r.path, &r.stat)
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
            } else if self.copy_of(stack, &r).is_some() {
                let mut path = r.upath.clone();
                while !path.is_root() && out.insert(path.as_os_str().as_bytes().to_vec()) {
                    path = path.split().0;
                }
            }
        }
        Ok(())
    }
}
