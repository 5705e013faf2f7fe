//! The inode table: every object the kernel holds a reference to, keyed by
//! its union inode number, with the kernel's lookup count.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};

use dashmap::DashMap;
use dashmap::mapref::entry::Entry;
use fuser::BackingId;

use crate::error::{Error, Result};
use crate::layers::FileKind;
use crate::union::{LayerStack, Listing, Resolved};

/// One object known to the kernel.
#[derive(Debug)]
pub struct Node {
    pub ino: u64,
    /// The inode number of the directory it was first found in (`..`).
    pub parent: u64,
    pub obj: Resolved,
    /// The merged listing of a directory, read on first use.
    listing: OnceLock<Arc<Listing>>,
    lookups: AtomicU64,
    /// The kernel wants one backing id per inode while any passthrough
    /// handle to it is open; handles hold the strong references.
    pub backing: Mutex<Weak<BackingId>>,
}

impl Node {
    pub fn new(parent: u64, obj: Resolved) -> Node {
        Node {
            ino: obj.ino,
            parent,
            obj,
            listing: OnceLock::new(),
            lookups: AtomicU64::new(0),
            backing: Mutex::new(Weak::new()),
        }
    }

    pub fn is_dir(&self) -> bool {
        self.obj.kind == FileKind::Dir
    }

    /// The merged listing of this directory (ENOTDIR for anything else).
    pub fn listing(&self, stack: &LayerStack) -> Result<Arc<Listing>> {
        if let Some(l) = self.listing.get() {
            return Ok(l.clone());
        }
        let dir = self
            .obj
            .dir
            .as_ref()
            .ok_or_else(|| Error::errno(libc::ENOTDIR, "readdir", &self.obj.path))?;
        let listing = Arc::new(stack.read_dir(dir)?);
        // Two threads may read at once; both results are equal, keep one.
        Ok(self.listing.get_or_init(|| listing).clone())
    }
}

#[derive(Debug, Default)]
pub struct NodeTable {
    nodes: DashMap<u64, Arc<Node>>,
}

impl NodeTable {
    pub fn get(&self, ino: u64) -> Option<Arc<Node>> {
        self.nodes.get(&ino).map(|n| n.clone())
    }

    /// Insert the root, which is never forgotten.
    pub fn insert_root(&self, node: Node) {
        node.lookups.store(u64::MAX / 2, Ordering::Relaxed);
        self.nodes.insert(node.ino, Arc::new(node));
    }

    /// Count one kernel lookup of `obj`, creating its node if new. Names of
    /// one hard-linked file resolve to the same node.
    pub fn remember(&self, parent: u64, obj: Resolved) -> Result<Arc<Node>> {
        // Count changes happen under the shard lock, so a concurrent forget
        // cannot drop a node a lookup is about to return.
        match self.nodes.entry(obj.ino) {
            Entry::Occupied(o) => {
                let node = o.get();
                if node.obj.kind != obj.kind || node.obj.stat.ino != obj.stat.ino {
                    return Err(Error::new(
                        libc::EIO,
                        "lookup",
                        &obj.path,
                        "inode number collision between two objects",
                    ));
                }
                node.lookups.fetch_add(1, Ordering::Relaxed);
                Ok(node.clone())
            }
            Entry::Vacant(v) => {
                let node = Arc::new(Node::new(parent, obj));
                node.lookups.store(1, Ordering::Relaxed);
                v.insert(node.clone());
                Ok(node)
            }
        }
    }

    /// The kernel dropped `n` references.
    pub fn forget(&self, ino: u64, n: u64) {
        if let Entry::Occupied(o) = self.nodes.entry(ino) {
            let before = o.get().lookups.load(Ordering::Relaxed);
            let after = before.saturating_sub(n);
            o.get().lookups.store(after, Ordering::Relaxed);
            if after == 0 {
                o.remove();
            }
        }
    }

    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }
}
