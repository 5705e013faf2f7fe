//! Opening and reading files: the layer a handle reads, passthrough to the
//! backing file where the kernel allows it, and a handle that follows its
//! file when a write through another handle copies it up.

use std::fs::File;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::sync::atomic::Ordering;
use std::sync::{Arc, PoisonError, Weak};

use fuser::{BackingId, FileHandle, FopenFlags, INodeNo, OpenFlags, ReplyOpen};
use tracing::info;

use super::{FileHandleState, Handle, LayerFs, Node, stale};
use crate::error::{Error, Result};
use crate::union::{INDEX_LAYER, layer_display};

impl LayerFs {
    pub(super) fn do_open(
        &self,
        ino: INodeNo,
        flags: OpenFlags,
        reply: &ReplyOpen,
    ) -> Result<(u64, Opened)> {
        let node = self.node(ino, "open")?;
        if node.is_dir() {
            // The kernel opens directories with opendir: the number names
            // a new directory now, the object opened was removed.
            return Err(stale(&node, "open"));
        }
        let access = flags.0 & libc::O_ACCMODE;
        let (file, obj) = if access != libc::O_RDONLY {
            if !self.stack.is_writable() {
                return Err(Error::errno(
                    libc::EROFS,
                    "open",
                    node.read(|s| s.obj.path.clone()),
                ));
            }
            let _w = self.lock_writes();
            self.ensure_upper(&node)?;
            self.open_node(&node, flags)?
        } else {
            match self.open_node(&node, flags) {
                // Changes take the write lock: under it the node and the
                // layers agree, so what fails now fails in a serial order.
                Err(_) if self.stack.is_writable() => {
                    let _w = self.lock_writes();
                    self.open_node(&node, flags)?
                }
                other => other?,
            }
        };
        let prefer = self.prefers_passthrough(&obj, access == libc::O_RDONLY);
        let io = self.handle_io(&node, &file, prefer, |f| reply.open_backing(f));
        let opened = io.opened();
        let fh = self.next_handle.fetch_add(1, Ordering::Relaxed);
        self.handles.insert(
            fh,
            Handle::File(FileHandleState {
                file,
                layer: obj.data_location().0,
                ino: node.ino,
                _io: io,
            }),
        );
        Ok((fh, opened))
    }

    /// Open the object `node` stands for, and make sure it is that object:
    /// a change made meanwhile may have put another at its path (ENOENT:
    /// in a serial order the open came after the removal).
    pub(super) fn open_node(
        &self,
        node: &Node,
        flags: OpenFlags,
    ) -> Result<(File, crate::union::Resolved)> {
        let obj = node.obj();
        // A metacopy file's data is below it (union/metacopy.rs).
        let (layer_idx, path, expect) = obj.data_location();
        let layer = self.stack.layer(layer_idx);
        let access = flags.0 & libc::O_ACCMODE;
        // O_APPEND is not passed on: the kernel sends the offset to write at.
        let keep = libc::O_SYNC | libc::O_DSYNC | libc::O_NOATIME;
        let fd = layer
            .open_beneath(path, access | (flags.0 & keep) | libc::O_NOFOLLOW)
            .map_err(|e| Error::io(e, "open", layer_display(layer, path)))?;
        let file = File::from(fd);
        let st = file
            .metadata()
            .map_err(|e| Error::io(e, "open", layer_display(layer, path)))?;
        let same = (st.dev(), st.ino(), st.mode() & libc::S_IFMT)
            == (expect.dev, expect.ino, expect.file_type());
        if !same {
            return Err(stale(node, "open"));
        }
        Ok((file, obj))
    }

    /// Whether a new handle of `obj` should be passed through to a backing
    /// file, if its inode allows it (see [`Self::handle_io`]):
    /// - read-only mounts: yes, the data never changes;
    /// - writable mounts: only where the data is in the upper layer, where
    ///   nothing but this mount changes it and no copy-up will move it. A
    ///   lower file stays in the page cache: a copy-up cannot move an open
    ///   backing file, and the kernel's overlayfs shows a handle opened
    ///   before a copy-up the copy; through the page cache (one FUSE inode,
    ///   written only through this mount) it does.
    ///
    /// A small file opened to read is read by one READ and then from the
    /// page cache, where a backing file would cost two more syscalls per
    /// open and close: it stays in the page cache.
    pub(super) fn prefers_passthrough(&self, obj: &crate::union::Resolved, reading: bool) -> bool {
        // A metacopy file's data is below, whatever layer it is in.
        let (data_layer, _, data) = obj.data_location();
        let data_upper = data_layer == 0 || data_layer == INDEX_LAYER;
        let small = data.size < PASSTHROUGH_MIN_READ;
        (!self.stack.is_writable() || data_upper) && !(reading && small)
    }

    /// How a new handle of `node` does its I/O. The kernel lets an inode be
    /// open through the page cache or passed through to one backing file,
    /// never both (an open that would mix them fails with EIO), so the
    /// choice is made per inode, under its lock: an inode already passed
    /// through keeps that backing for this handle too; while a page-cache
    /// handle is open, this one uses the page cache as well; otherwise
    /// `prefer` (from [`Self::prefers_passthrough`]) decides.
    pub(super) fn handle_io(
        &self,
        node: &Arc<Node>,
        file: &File,
        prefer: bool,
        register: impl FnOnce(&File) -> std::io::Result<BackingId>,
    ) -> HandleIo {
        let mut io = node.io.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(id) = io.backing.upgrade() {
            return HandleIo::Passthrough(id);
        }
        let may_pass = prefer && io.cached == 0 && self.passthrough.load(Ordering::Relaxed);
        if let Some(id) = may_pass
            .then(|| self.register_backing(node, file, register))
            .flatten()
        {
            let id = Arc::new(id);
            io.backing = Arc::downgrade(&id);
            io.passed_through = true;
            return HandleIo::Passthrough(id);
        }
        io.cached += 1;
        // Writes through a backing file went around the page cache.
        let keep_cache = !io.passed_through;
        HandleIo::Cached(CachedOpen {
            node: node.clone(),
            keep_cache,
        })
    }

    /// Register `file` (on a writable mount, a read-write open of the same
    /// object: every later handle of the inode, reading or writing, goes
    /// through this one backing file) as the inode's backing file.
    fn register_backing(
        &self,
        node: &Node,
        file: &File,
        register: impl FnOnce(&File) -> std::io::Result<BackingId>,
    ) -> Option<BackingId> {
        let read_write;
        let backing = if self.stack.is_writable() && !opened_read_write(file) {
            // Immutable, or run as a program outside the mount (ETXTBSY):
            // the page cache serves it.
            read_write = self.open_node(node, OpenFlags(libc::O_RDWR)).ok()?.0;
            &read_write
        } else {
            file
        };
        match register(backing) {
            Ok(id) => Some(id),
            Err(e) => {
                if self.passthrough.swap(false, Ordering::Relaxed) {
                    info!(error = %e, "FUSE passthrough refused; serving reads in the daemon");
                }
                None
            }
        }
    }

    pub(super) fn do_read(&self, fh: FileHandle, offset: u64, size: u32) -> Result<Vec<u8>> {
        let bad = || Error::errno(libc::EBADF, "read", format!("handle {}", fh.0));
        let mut handle = self.handles.get_mut(&fh.0).ok_or_else(bad)?;
        let Handle::File(h) = &mut *handle else {
            return Err(Error::errno(
                libc::EISDIR,
                "read",
                format!("handle {}", fh.0),
            ));
        };
        if h.layer != 0 && self.stack.is_writable() {
            self.follow_copy_up(h)?;
        }
        let mut buf = vec![0u8; size as usize];
        let mut filled = 0;
        while filled < buf.len() {
            match h.file.read_at(&mut buf[filled..], offset + filled as u64) {
                Ok(0) => break,
                Ok(n) => filled += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(Error::io(e, "read", format!("handle {}", fh.0))),
            }
        }
        buf.truncate(filled);
        Ok(buf)
    }

    /// A lower file copied up since the handle opened: read the copy.
    pub(super) fn follow_copy_up(&self, h: &mut FileHandleState) -> Result<()> {
        let Some(node) = self.nodes.get(h.ino) else {
            return Ok(());
        };
        let obj = node.obj();
        let (layer_idx, path, _) = obj.data_location();
        if layer_idx == h.layer {
            return Ok(());
        }
        let layer = self.stack.layer(layer_idx);
        h.file = layer
            .open_file(path)
            .map_err(|e| Error::io(e, "read", layer_display(layer, path)))?;
        h.layer = layer_idx;
        Ok(())
    }
}

/// Below this size a file opened to read is served from the page cache
/// (one FUSE readahead window: a cold read of it is one READ anyway).
const PASSTHROUGH_MIN_READ: u64 = 128 << 10;

fn opened_read_write(file: &File) -> bool {
    nix::fcntl::fcntl(file, nix::fcntl::FcntlArg::F_GETFL)
        .is_ok_and(|flags| flags & libc::O_ACCMODE == libc::O_RDWR)
}

/// An inode's I/O mode while handles to it are open.
#[derive(Debug, Default)]
pub struct IoMode {
    /// The backing file of its passthrough handles; they hold the strong
    /// references, so it goes when the last of them is released.
    backing: Weak<BackingId>,
    /// Handles open through the page cache.
    cached: u32,
    /// A backing file was written through once: the page cache may be
    /// older than the file.
    passed_through: bool,
}

/// How one handle does its I/O.
pub(super) enum HandleIo {
    Passthrough(Arc<BackingId>),
    Cached(CachedOpen),
}

/// A page-cache handle, counted in its inode's [`IoMode`] while it lives.
pub(super) struct CachedOpen {
    node: Arc<Node>,
    keep_cache: bool,
}

impl Drop for CachedOpen {
    fn drop(&mut self) {
        let mut io = self.node.io.lock().unwrap_or_else(PoisonError::into_inner);
        io.cached = io.cached.saturating_sub(1);
    }
}

/// What an open is answered with.
pub(super) enum Opened {
    Passthrough(Arc<BackingId>),
    Cached(FopenFlags),
}

impl HandleIo {
    pub(super) fn opened(&self) -> Opened {
        match self {
            HandleIo::Passthrough(id) => Opened::Passthrough(id.clone()),
            // Lower data never changes and upper data only through this
            // mount: the page cache may survive reopening.
            HandleIo::Cached(c) if c.keep_cache => Opened::Cached(FopenFlags::FOPEN_KEEP_CACHE),
            HandleIo::Cached(_) => Opened::Cached(FopenFlags::empty()),
        }
    }
}
