//! Opening and reading files: the layer a handle reads, passthrough to the
//! backing file where the kernel allows it, and a handle that follows its
//! file when a write through another handle copies it up.

use std::fs::File;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::sync::atomic::Ordering;
use std::sync::{Arc, PoisonError};

use fuser::{BackingId, FileHandle, INodeNo, OpenFlags, ReplyOpen};
use tracing::info;

use super::{FileHandleState, Handle, LayerFs, Node, stale};
use crate::error::{Error, Result};
use crate::union::layer_display;

impl LayerFs {
    pub(super) fn do_open(
        &self,
        ino: INodeNo,
        flags: OpenFlags,
        reply: &ReplyOpen,
    ) -> Result<(u64, Option<Arc<BackingId>>)> {
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
        let backing = if self.passthrough.load(Ordering::Relaxed) && !self.stack.is_writable() {
            self.backing_for(&node, &file, reply)
        } else {
            None
        };
        let fh = self.next_handle.fetch_add(1, Ordering::Relaxed);
        self.handles.insert(
            fh,
            Handle::File(FileHandleState {
                file,
                layer: obj.data_location().0,
                ino: node.ino,
                _backing: backing.clone(),
            }),
        );
        Ok((fh, backing))
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

    /// The backing id of `node`, registering `file` if it has none open.
    pub(super) fn backing_for(
        &self,
        node: &Node,
        file: &File,
        reply: &ReplyOpen,
    ) -> Option<Arc<BackingId>> {
        let mut slot = node.backing.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(id) = slot.upgrade() {
            return Some(id);
        }
        match reply.open_backing(file) {
            Ok(id) => {
                let id = Arc::new(id);
                *slot = Arc::downgrade(&id);
                Some(id)
            }
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
