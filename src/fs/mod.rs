//! The FUSE glue: maps fuser requests onto the union engine and its errors
//! onto errnos. The mount's state (inode and handle tables, TTLs,
//! passthrough) and lookup live here; the request handlers in ops.rs.

mod attr;
mod caller;
mod dir;
mod fusermount;
mod guard;
pub mod mount;
mod nodes;
mod ops;
mod read;
pub mod view;
mod write;

use std::ffi::OsStr;
use std::fs::File;
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use dashmap::DashMap;
use fuser::{AccessFlags, Errno, FileAttr, FileType, Generation, INodeNo, Request};
use tracing::{debug, warn};

pub use nodes::{Node, NodeState, NodeTable};

use crate::error::{Error, Result};
use crate::layers::FileKind;
use crate::union::{LayerIdx, LayerStack, Listing, fuser_root_ino};

/// Lower layers never change while mounted, so the kernel may cache what
/// it learns of them for as long as it likes.
const LOWER_TTL: Duration = Duration::from_secs(24 * 3600);

/// The longest name any layer's filesystem takes (the kernel's NAME_MAX).
const NAME_MAX: usize = 255;

/// Give freed memory back to the system after this many nodes are freed.
const RETURN_MEMORY_EVERY: u64 = 4096;

/// What an open handle holds.
enum Handle {
    /// The listing as it was at opendir: offsets stay valid for the
    /// handle's life, so a resumed readdir never skips nor repeats.
    Dir(Arc<Listing>),
    File(FileHandleState),
}

struct FileHandleState {
    file: File,
    /// The layer the file was opened in: a read-only handle opened before
    /// a copy-up moves to the upper copy, as the kernel's overlayfs does.
    layer: LayerIdx,
    ino: u64,
    /// Passthrough or page cache; keeps its inode's mode while open.
    _io: read::HandleIo,
}

/// A union mount served over FUSE.
pub struct LayerFs {
    stack: LayerStack,
    nodes: NodeTable,
    handles: DashMap<u64, Handle>,
    next_handle: AtomicU64,
    /// Whether the kernel accepted FUSE passthrough; cleared on the first
    /// refusal so we stop asking. Writable mounts pass through only files
    /// whose data is in the upper layer (read::handle_io says why).
    passthrough: AtomicBool,
    /// Mutations are serialised: each touches a few listings and nodes
    /// that must change together. Reads never take it.
    write_lock: Mutex<()>,
    /// Nodes freed by FORGET so far (see `forget`).
    nodes_freed: AtomicU64,
    /// Tells the kernel to drop what it cached, once the session exists.
    notifier: Arc<std::sync::OnceLock<fuser::Notifier>>,
    /// Owners and modes as container engines want them shown.
    view: view::AttrView,
}

impl LayerFs {
    pub fn new(stack: LayerStack) -> Result<LayerFs> {
        let nodes = NodeTable::default();
        nodes.insert_root(Node::new(NodeState {
            parent: fuser_root_ino(),
            name: Default::default(),
            obj: stack.root()?,
            generation: 0,
            aliases: Vec::new(),
        }));
        Ok(LayerFs {
            stack,
            nodes,
            handles: DashMap::new(),
            next_handle: AtomicU64::new(1),
            passthrough: AtomicBool::new(false),
            nodes_freed: AtomicU64::new(0),
            write_lock: Mutex::new(()),
            notifier: Arc::default(),
            view: view::AttrView::default(),
        })
    }

    /// Show owners and modes through `view` (id mappings, squashing,
    /// override xattrs); see [`view`].
    pub fn with_view(mut self, view: view::AttrView) -> LayerFs {
        self.view = view;
        self
    }

    /// The layer stack served, for setting up a view.
    pub fn stack(&self) -> &LayerStack {
        &self.stack
    }

    /// Where the session puts its notifier (see [`invalidate_attrs`]).
    ///
    /// [`invalidate_attrs`]: LayerFs::invalidate_attrs
    pub fn notifier_slot(&self) -> Arc<std::sync::OnceLock<fuser::Notifier>> {
        self.notifier.clone()
    }

    /// The kernel drops its cached attributes of `ino`: for changes it
    /// does not expect, such as a failed call that still touched the upper.
    fn invalidate_attrs(&self, ino: INodeNo) {
        if let Some(n) = self.notifier.get() {
            // A negative offset leaves the page cache alone.
            if let Err(e) = n.inval_inode(ino, -1, 0) {
                debug!(ino = ino.0, error = %e, "attribute invalidation refused");
            }
        }
    }

    fn node(&self, ino: INodeNo, op: &'static str) -> Result<Arc<Node>> {
        self.nodes.get(ino.0).ok_or_else(|| {
            Error::new(
                libc::ESTALE,
                op,
                format!("inode {}", ino.0),
                "unknown inode",
            )
        })
    }

    /// Look `name` up in `parent` and count the kernel's reference to it
    /// (`moves`: see [`NodeTable::remember`]).
    fn do_lookup(
        &self,
        parent: INodeNo,
        name: &OsStr,
        moves: bool,
    ) -> Result<Option<(FileAttr, Generation)>> {
        if name.len() > NAME_MAX {
            return Err(Error::errno(
                libc::ENAMETOOLONG,
                "lookup",
                name.to_string_lossy(),
            ));
        }
        let dir = self.node(parent, "lookup")?;
        let listing = dir.listing(&self.stack)?;
        let Some(child) = listing.get(name) else {
            return Ok(None);
        };
        let merged = dir.read(|s| s.obj.dir.clone());
        let Some(merged) = merged else {
            return Err(Error::errno(
                libc::ENOTDIR,
                "lookup",
                name.to_string_lossy(),
            ));
        };
        let obj = self.stack.resolve(&merged, child)?;
        let listed = obj.ino;
        let node = self
            .nodes
            .remember(&self.stack, dir.ino, name, obj, moves)?;
        drop(listing);
        self.renumbered(&dir, name, &node, listed)?;
        Ok(Some((self.attr(&node), Self::generation(&node))))
    }

    /// [`Self::do_lookup`]; reads take no lock, so a change may be half
    /// seen (the listing says one thing, the upper on disk another). Under
    /// the write lock the two agree: an error then is a serial order's.
    fn lookup_retrying(
        &self,
        parent: INodeNo,
        name: &OsStr,
        moves: bool,
    ) -> Result<Option<(FileAttr, Generation)>> {
        match self.do_lookup(parent, name, moves) {
            Err(_) if self.stack.is_writable() => {
                let _w = self.lock_writes();
                self.do_lookup(parent, name, moves)
            }
            other => other,
        }
    }

    /// How long the kernel may keep a name and its attributes. A name of a
    /// hard-linked file on a writable mount is looked up on every path
    /// walk: the node then knows which name is in use (see
    /// NodeTable::remember).
    fn entry_ttl(&self, attr: &FileAttr) -> Duration {
        if self.stack.is_writable() && attr.kind != FileType::Directory && attr.nlink > 1 {
            Duration::ZERO
        } else {
            LOWER_TTL
        }
    }

    /// The node of `dir/name` got another number than its listing shows
    /// (see [`NodeTable::insert_new`]): the listing shows the node's.
    fn renumbered(&self, dir: &Node, name: &OsStr, node: &Node, listed: u64) -> Result<()> {
        if node.ino == listed {
            return Ok(());
        }
        dir.edit_listing(&self.stack, |l| {
            l.set_ino(name, node.ino);
            Ok(())
        })
    }

    fn check_access(&self, req: &Request, node: &Node, mask: AccessFlags) -> Result<()> {
        let obj = node.obj();
        let (path, is_dir) = (obj.path.clone(), obj.kind == FileKind::Dir);
        let st = if self.view.is_identity() {
            obj.stat
        } else {
            self.view.shown(&self.stack, &obj, obj.stat)
        };
        let want = mask.bits() & (libc::R_OK | libc::W_OK | libc::X_OK);
        if want & libc::W_OK != 0 && !self.stack.is_writable() {
            return Err(Error::errno(libc::EROFS, "access", &path));
        }
        let mode = st.mode;
        let granted = if req.uid() == 0 {
            // root may read and write anything, and execute what anyone may
            let x = if is_dir || mode & 0o111 != 0 {
                libc::X_OK
            } else {
                0
            };
            libc::R_OK | libc::W_OK | x
        } else {
            let bits = if req.uid() == st.uid {
                mode >> 6
            } else if req.gid() == st.gid {
                mode >> 3
            } else {
                mode
            } & 0o7;
            bits as i32
        };
        if want & !granted != 0 {
            return Err(Error::errno(libc::EACCES, "access", &path));
        }
        Ok(())
    }

    /// Override xattrs hold owners, not data: the mount never shows them.
    fn hides_xattr(&self, name: &OsStr) -> bool {
        self.view.uses_overrides()
            && crate::layers::override_stat::OverrideXattr::is_override_name(
                std::os::unix::ffi::OsStrExt::as_bytes(name),
            )
    }

    /// Where a node's data and xattrs live now.
    fn location(
        &self,
        ino: INodeNo,
        op: &'static str,
    ) -> Result<(Arc<Node>, crate::union::Resolved)> {
        let node = self.node(ino, op)?;
        let obj = node.obj();
        Ok((node, obj))
    }
}

/// ENOENT for a node whose object is gone, or whose number a new object
/// took: the request came after the removal.
fn stale(node: &Node, op: &'static str) -> Error {
    Error::new(
        libc::ENOENT,
        op,
        node.read(|s| s.obj.upath.to_string()),
        "removed meanwhile",
    )
}

/// Log an error once, at a level matching how unusual it is, and return
/// the errno for the kernel.
fn errno_of(err: &Error) -> Errno {
    if err.is_routine() {
        debug!(%err);
    } else {
        warn!(%err);
    }
    Errno::from_i32(err.raw_errno())
}
