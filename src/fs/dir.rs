//! Listing directories: READDIR, and READDIRPLUS, which answers the
//! lookups of the names it lists in the same round trip.

use std::ffi::OsStr;
use std::sync::Arc;

use fuser::{FileAttr, FileHandle, FileType, Generation, INodeNo, ReplyDirectoryPlus};

use super::attr::file_type;
use super::{Handle, LayerFs, Node};
use crate::error::{Error, Result};
use crate::union::Listing;

/// One entry of a listing, at its readdir offset.
pub(super) struct DirEntry<'a> {
    pub ino: INodeNo,
    /// The offset to resume after this entry.
    pub offset: u64,
    pub kind: FileType,
    pub name: &'a OsStr,
}

impl LayerFs {
    /// The listing a directory handle reads. A read from the start
    /// (rewinddir, or the kernel refilling its cache after the directory
    /// changed) sees the directory as it is now; an older copy would be
    /// cached under the new version.
    fn handle_listing(&self, node: &Node, fh: FileHandle, offset: u64) -> Result<Arc<Listing>> {
        let bad = |errno| Error::errno(errno, "readdir", format!("handle {}", fh.0));
        let now = if offset == 0 {
            Some(node.listing(&self.stack)?)
        } else {
            None
        };
        let mut handle = self
            .handles
            .get_mut(&fh.0)
            .ok_or_else(|| bad(libc::EBADF))?;
        let Handle::Dir(listing) = &mut *handle else {
            return Err(bad(libc::ENOTDIR));
        };
        if let Some(now) = now {
            *listing = now;
        }
        Ok(listing.clone())
    }

    /// Hand the entries from `offset` on to `add` until it says the reply
    /// is full. Offsets: 1 after ".", 2 after "..", 3 after the first
    /// child...
    pub(super) fn do_readdir(
        &self,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut add: impl FnMut(DirEntry<'_>) -> bool,
    ) -> Result<()> {
        let node = self.node(ino, "readdir")?;
        let listing = self.handle_listing(&node, fh, offset)?;
        let parent = node.read(|s| s.parent);
        let dots = [(node.ino, "."), (parent, "..")]
            .map(|(ino, name)| (ino, FileType::Directory, OsStr::new(name)));
        let children = listing
            .entries
            .iter()
            .map(|c| (c.ino, file_type(c.kind), c.name.as_os_str()));
        let all = dots.into_iter().chain(children).enumerate();
        for (index, (ino, kind, name)) in all.skip(offset as usize) {
            let entry = DirEntry {
                ino: INodeNo(ino),
                offset: index as u64 + 1,
                kind,
                name,
            };
            if add(entry) {
                break;
            }
        }
        Ok(())
    }

    /// READDIRPLUS: every child listed is looked up as LOOKUP would (the
    /// kernel then holds a reference to it), without moving the node of a
    /// hard-linked file to this name: only a path walk says which name is
    /// in use. "." and ".." carry no reference (the kernel skips them).
    pub(super) fn do_readdirplus(
        &self,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        reply: &mut ReplyDirectoryPlus,
    ) -> Result<()> {
        // "." and ".." need a directory's attributes (the kernel reads only
        // the type and number); a read past them does not.
        let dir_attr = if offset < 2 {
            Some(self.attr(&*self.node(ino, "readdirplus")?))
        } else {
            None
        };
        let mut added = 0usize;
        let mut failed = None;
        self.do_readdir(ino, fh, offset, |entry| {
            let (attr, generation) = if let Some(dir_attr) = dir_attr.filter(|_| entry.offset <= 2)
            {
                let attr = FileAttr {
                    ino: entry.ino,
                    ..dir_attr
                };
                (attr, Generation(0))
            } else {
                match self.lookup_retrying(ino, entry.name, false) {
                    Ok(Some(found)) => found,
                    // Removed since the listing was taken: a listing may
                    // leave out what was removed meanwhile.
                    Ok(None) => return false,
                    Err(e) => {
                        failed = Some(e);
                        return true;
                    }
                }
            };
            let ttl = self.entry_ttl(&attr);
            let full = reply.add(attr.ino, entry.offset, entry.name, &ttl, &attr, generation);
            if full && entry.offset > 2 {
                // Not sent: the kernel will not forget it.
                self.nodes.forget(attr.ino.0, 1);
            }
            added += usize::from(!full);
            full
        })?;
        match failed {
            // The next call starts at the entry that failed and says why.
            Some(e) if added == 0 => Err(e),
            _ => Ok(()),
        }
    }
}
