//! The inode table: every object the kernel holds a reference to, keyed by
//! its union inode number, with the kernel's lookup count.
//!
//! Lock order: the mount's write lock, then a directory's listing (two
//! listings only under the write lock, source first), then a node's state;
//! a table shard before the state of a node in it. A node's state is a leaf:
//! it is only reached through [`Node::read`] and [`Node::update`], whose
//! closures take no other lock.

use std::ffi::OsString;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock};

use dashmap::DashMap;
use dashmap::mapref::entry::Entry;

use crate::error::{Error, Result};
use crate::layers::{FileKind, RelPath};
use crate::union::{LayerStack, Listing, Resolved};

/// Where a node is and what it is; changes with copy-up and rename.
#[derive(Debug, Clone)]
pub struct NodeState {
    /// The directory it was found in (`..` of a directory).
    pub parent: u64,
    pub name: OsString,
    pub obj: Resolved,
    /// Bumped when a new object takes over a reused inode number, so the
    /// kernel drops what it cached of the old one.
    pub generation: u64,
    /// Other names of a hard-linked upper file made through the mount
    /// (parent inode, name, union path): where the node moves when the
    /// name it knows is removed.
    pub aliases: Vec<(u64, OsString, RelPath)>,
}

/// One object known to the kernel.
#[derive(Debug)]
pub struct Node {
    pub ino: u64,
    state: RwLock<NodeState>,
    /// The merged listing of a directory, read on first use and kept in
    /// step with every change made through the mount.
    listing: Mutex<Option<Arc<Listing>>>,
    lookups: AtomicU64,
    /// How the kernel does this file's I/O while handles are open
    /// (passthrough or page cache); handles keep a reference.
    pub io: Mutex<super::read::IoMode>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Node {
    pub fn new(state: NodeState) -> Node {
        Node {
            ino: state.obj.ino,
            state: RwLock::new(state),
            listing: Mutex::new(None),
            lookups: AtomicU64::new(0),
            io: Mutex::default(),
        }
    }

    /// Look at the state. The guard lives only inside `f`, which must not
    /// take any other lock: std's RwLock queues new readers behind a
    /// waiting writer, so a second read of a node already read (the same
    /// directory on both sides of a rename) would deadlock.
    pub fn read<T>(&self, f: impl FnOnce(&NodeState) -> T) -> T {
        f(&self.state.read().unwrap_or_else(PoisonError::into_inner))
    }

    /// Where the node is now (a copy: the node may move meanwhile).
    pub fn obj(&self) -> Resolved {
        self.read(|s| s.obj.clone())
    }

    pub fn update(&self, f: impl FnOnce(&mut NodeState)) {
        let mut s = self.state.write().unwrap_or_else(PoisonError::into_inner);
        f(&mut s);
    }

    pub fn is_dir(&self) -> bool {
        self.read(|s| s.obj.kind == FileKind::Dir)
    }

    /// The merged listing of this directory (ENOTDIR for anything else).
    pub fn listing(&self, stack: &LayerStack) -> Result<Arc<Listing>> {
        let mut slot = lock(&self.listing);
        self.load(stack, &mut slot)
    }

    fn load(&self, stack: &LayerStack, slot: &mut Option<Arc<Listing>>) -> Result<Arc<Listing>> {
        if let Some(l) = slot {
            return Ok(l.clone());
        }
        let (dir, path) = self.read(|s| (s.obj.dir.clone(), s.obj.path.clone()));
        let dir = dir.ok_or_else(|| Error::errno(libc::ENOTDIR, "readdir", &path))?;
        let listing = Arc::new(stack.read_dir(&dir)?);
        *slot = Some(listing.clone());
        Ok(listing)
    }

    /// A directory just made (empty, nothing below shows through it): its
    /// listing is known without reading it from disk.
    pub fn set_empty_listing(&self) {
        *lock(&self.listing) = Some(Arc::new(Listing::default()));
    }

    /// Change the listing; open directory handles keep the copy they have.
    pub fn edit_listing<T>(
        &self,
        stack: &LayerStack,
        f: impl FnOnce(&mut Listing) -> Result<T>,
    ) -> Result<T> {
        let mut slot = lock(&self.listing);
        self.load(stack, &mut slot)?;
        let arc = slot
            .as_mut()
            .ok_or_else(|| Error::errno(libc::EIO, "readdir", "listing"))?;
        f(Arc::make_mut(arc))
    }

    /// Two listings at once (a rename across directories). Callers hold
    /// the mount's write lock, so the lock order cannot deadlock.
    pub fn edit_two_listings<T>(
        &self,
        other: &Node,
        stack: &LayerStack,
        f: impl FnOnce(&mut Listing, &mut Listing) -> Result<T>,
    ) -> Result<T> {
        let mut a = lock(&self.listing);
        let mut b = lock(&other.listing);
        self.load(stack, &mut a)?;
        other.load(stack, &mut b)?;
        let (Some(la), Some(lb)) = (a.as_mut(), b.as_mut()) else {
            return Err(Error::errno(libc::EIO, "readdir", "listing"));
        };
        f(Arc::make_mut(la), Arc::make_mut(lb))
    }
}

/// A new node holding `lookups` kernel references.
fn counted_node(
    parent: u64,
    name: &std::ffi::OsStr,
    obj: Resolved,
    generation: u64,
    lookups: u64,
) -> Arc<Node> {
    let node = Node::new(NodeState {
        parent,
        name: name.to_os_string(),
        obj,
        generation,
        aliases: Vec::new(),
    });
    node.lookups.store(lookups, Ordering::Relaxed);
    Arc::new(node)
}

/// Whether `obj` is still where it was found.
fn still_there(stack: &LayerStack, obj: &Resolved) -> bool {
    stack.restat(obj).is_ok_and(|st| st.same_object(&obj.stat))
}

#[derive(Debug, Default)]
pub struct NodeTable {
    nodes: DashMap<u64, Arc<Node>>,
    /// Numbers handed out so far to objects whose own number the kernel
    /// still holds for an object of another type (see `insert_new`).
    fresh: AtomicU64,
}

/// Where the numbers of [`NodeTable::insert_new`]'s fresh nodes start:
/// the top quarter, above any real inode number (folded ones are hashed
/// into the top half; a clash is checked).
const FRESH_BASE: u64 = 3 << 62;

impl NodeTable {
    pub fn get(&self, ino: u64) -> Option<Arc<Node>> {
        self.nodes.get(&ino).map(|n| n.clone())
    }

    /// Insert the root, which is never forgotten.
    pub fn insert_root(&self, node: Node) {
        node.lookups.store(u64::MAX / 2, Ordering::Relaxed);
        self.nodes.insert(node.ino, Arc::new(node));
    }

    /// Count one kernel lookup of an existing object, creating its node if
    /// new. Names of one hard-linked file resolve to the same node; with
    /// `moves` (a LOOKUP, not a READDIRPLUS listing every name) the node
    /// takes this name.
    pub fn remember(
        &self,
        stack: &LayerStack,
        parent: u64,
        name: &std::ffi::OsStr,
        obj: Resolved,
        moves: bool,
    ) -> Result<Arc<Node>> {
        // Count changes happen under the shard lock, so a concurrent forget
        // cannot drop a node a lookup is about to return.
        match self.nodes.entry(obj.ino) {
            Entry::Occupied(o) => {
                let node = o.get();
                let same = node.read(|s| s.obj.kind == obj.kind && s.obj.stat.ino == obj.stat.ino);
                if !same {
                    // A reused inode number: the old object is gone.
                    drop(o);
                    return Ok(self.insert_new(parent, name, obj));
                }
                // Another name of a hard-linked file. FUSE names no path in
                // open or setattr, so the node takes the name looked up
                // last: the one a copy-up then puts in the upper, as the
                // kernel copies up the name used (such names get no entry
                // cache, so every path walk looks them up). The name it
                // knew stays an alias while it is there.
                let known = node.obj();
                if moves && known.upath != obj.upath {
                    let keep_known = still_there(stack, &known);
                    node.update(|s| {
                        s.aliases.retain(|a| a.2 != obj.upath);
                        if keep_known {
                            s.aliases
                                .push((s.parent, s.name.clone(), s.obj.upath.clone()));
                        }
                        let index_key = obj.index_key.clone().or(s.obj.index_key.take());
                        s.parent = parent;
                        s.name = name.to_os_string();
                        s.obj = obj;
                        s.obj.index_key = index_key;
                    });
                }
                node.lookups.fetch_add(1, Ordering::Relaxed);
                Ok(node.clone())
            }
            Entry::Vacant(v) => {
                let node = counted_node(parent, name, obj, 0, 1);
                v.insert(node.clone());
                Ok(node)
            }
        }
    }

    /// Count one kernel reference to an object just created (or found
    /// under a number a node of another object holds).
    /// FUSE's node id is the inode number, and the kernel marks an inode
    /// bad (EIO for whoever holds it) when a reply gives its id another
    /// type or generation. So while the kernel still holds the old object
    /// (removed, its inode number reused at once by the upper filesystem),
    /// the new object gets a fresh number instead; the caller records it
    /// in the listing. The old node keeps answering for what was removed.
    pub fn insert_new(&self, parent: u64, name: &std::ffi::OsStr, obj: Resolved) -> Arc<Node> {
        match self.nodes.entry(obj.ino) {
            Entry::Occupied(o) if o.get().lookups.load(Ordering::Relaxed) > 0 => {
                drop(o);
                self.insert_fresh(parent, name, obj)
            }
            Entry::Occupied(mut o) => {
                let old = o.get();
                let generation = old.read(|s| s.generation) + 1;
                let lookups = old.lookups.load(Ordering::Relaxed) + 1;
                let node = counted_node(parent, name, obj, generation, lookups);
                o.insert(node.clone());
                node
            }
            Entry::Vacant(v) => {
                let node = counted_node(parent, name, obj, 0, 1);
                v.insert(node.clone());
                node
            }
        }
    }

    /// A new node under a number no other node has.
    fn insert_fresh(&self, parent: u64, name: &std::ffi::OsStr, mut obj: Resolved) -> Arc<Node> {
        loop {
            let n = self.fresh.fetch_add(1, Ordering::Relaxed);
            let id = FRESH_BASE | (n & !FRESH_BASE);
            if let Entry::Vacant(v) = self.nodes.entry(id) {
                obj.ino = id;
                let node = counted_node(parent, name, obj, 0, 1);
                v.insert(node.clone());
                return node;
            }
        }
    }

    /// One more kernel reference to a node (link(2) returns an existing one).
    pub fn count_lookup(&self, node: &Node) {
        node.lookups.fetch_add(1, Ordering::Relaxed);
    }

    /// The kernel dropped `n` references; whether that freed the node.
    pub fn forget(&self, ino: u64, n: u64) -> bool {
        if let Entry::Occupied(o) = self.nodes.entry(ino) {
            let before = o.get().lookups.load(Ordering::Relaxed);
            let after = before.saturating_sub(n);
            o.get().lookups.store(after, Ordering::Relaxed);
            if after == 0 {
                o.remove();
                return true;
            }
        }
        false
    }

    /// After directories moved from `old` to `new` in the union (the
    /// directory nodes themselves, given by inode, are done already), every
    /// node below them. Paths in lower layers do not move.
    pub fn rebase_below(&self, moves: &[(RelPath, RelPath, u64)]) {
        if moves.is_empty() {
            return;
        }
        for entry in self.nodes.iter() {
            if moves.iter().any(|m| m.2 == *entry.key()) {
                continue;
            }
            entry.value().update(|s| {
                let moved = moves
                    .iter()
                    .filter(|(old, _, _)| s.obj.upath != *old)
                    .find_map(|(old, new, _)| s.obj.upath.rebase(old, new));
                if let Some(p) = moved {
                    if s.obj.layer == 0 {
                        s.obj.path = p.clone();
                    }
                    if let Some(d) = s.obj.dir.as_mut() {
                        d.path = p.clone();
                    }
                    s.obj.upath = p;
                }
                for alias in s.aliases.iter_mut() {
                    let moved = moves
                        .iter()
                        .filter(|(old, _, _)| alias.2 != *old)
                        .find_map(|(old, new, _)| alias.2.rebase(old, new));
                    if let Some(p) = moved {
                        alias.2 = p;
                    }
                }
            });
        }
    }
}
