//! The FUSE glue: maps fuser requests onto the union engine and its errors
//! onto errnos. Inode and handle tables, TTLs and passthrough live here.

pub mod mount;
mod nodes;

use std::ffi::OsStr;
use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use dashmap::DashMap;
use fuser::{
    AccessFlags, BackingId, Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags,
    Generation, INodeNo, InitFlags, KernelConfig, LockOwner, OpenFlags, ReplyAttr, ReplyData,
    ReplyDirectory, ReplyEmpty, ReplyEntry, ReplyLseek, ReplyOpen, ReplyStatfs, ReplyXattr,
    Request,
};
use tracing::{debug, info, warn};

pub use nodes::{Node, NodeTable};

use crate::error::{Error, Result};
use crate::layers::{FileKind, Stat};
use crate::union::{LayerStack, Listing, fuser_root_ino, layer_display};

/// Lower layers never change while mounted, so the kernel may cache what
/// it learns of them for as long as it likes.
const LOWER_TTL: Duration = Duration::from_secs(24 * 3600);

/// What an open handle holds.
enum Handle {
    /// The listing as it was at opendir: offsets stay valid for the
    /// handle's life, so a resumed readdir never skips nor repeats.
    Dir(Arc<Listing>),
    File {
        file: File,
        /// Keeps the passthrough backing id alive while the handle is open.
        _backing: Option<Arc<BackingId>>,
    },
}

/// A read-only union mount served over FUSE.
pub struct LayerFs {
    stack: LayerStack,
    nodes: NodeTable,
    handles: DashMap<u64, Handle>,
    next_handle: AtomicU64,
    /// Whether the kernel accepted FUSE passthrough; cleared on the first
    /// refusal so we stop asking.
    passthrough: AtomicBool,
}

impl LayerFs {
    pub fn new(stack: LayerStack) -> Result<LayerFs> {
        let nodes = NodeTable::default();
        nodes.insert_root(Node::new(fuser_root_ino(), stack.root()?));
        Ok(LayerFs {
            stack,
            nodes,
            handles: DashMap::new(),
            next_handle: AtomicU64::new(1),
            passthrough: AtomicBool::new(false),
        })
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

    fn attr(&self, node: &Node) -> FileAttr {
        let mut nlink = node.obj.stat.nlink;
        // As the kernel's overlayfs: counting subdirectories of a merged
        // directory is not worth it, and find(1) is happy with 1.
        if node.obj.dir.as_ref().is_some_and(|d| d.layers.len() > 1) {
            nlink = 1;
        }
        file_attr(node.ino, &node.obj.stat, nlink)
    }

    fn do_lookup(&self, parent: INodeNo, name: &OsStr) -> Result<Option<FileAttr>> {
        let dir = self.node(parent, "lookup")?;
        let listing = dir.listing(&self.stack)?;
        let Some(child) = listing.get(name) else {
            return Ok(None);
        };
        let Some(merged) = dir.obj.dir.as_ref() else {
            return Err(Error::errno(libc::ENOTDIR, "lookup", &dir.obj.path));
        };
        let obj = self.stack.resolve(merged, child)?;
        let node = self.nodes.remember(dir.ino, obj)?;
        Ok(Some(self.attr(&node)))
    }

    fn do_open(
        &self,
        ino: INodeNo,
        flags: OpenFlags,
        reply: &ReplyOpen,
    ) -> Result<(u64, Option<Arc<BackingId>>)> {
        let node = self.node(ino, "open")?;
        if flags.0 & libc::O_ACCMODE != libc::O_RDONLY {
            return Err(Error::errno(libc::EROFS, "open", &node.obj.path));
        }
        let layer = self.stack.layer(node.obj.layer);
        let file = layer
            .open_file(&node.obj.path)
            .map_err(|e| Error::io(e, "open", layer_display(layer, &node.obj.path)))?;
        let backing = if self.passthrough.load(Ordering::Relaxed) {
            self.backing_for(&node, &file, reply)
        } else {
            None
        };
        let fh = self.next_handle.fetch_add(1, Ordering::Relaxed);
        let file = file;
        self.handles.insert(
            fh,
            Handle::File {
                file,
                _backing: backing.clone(),
            },
        );
        Ok((fh, backing))
    }

    /// The backing id of `node`, registering `file` if it has none open.
    fn backing_for(&self, node: &Node, file: &File, reply: &ReplyOpen) -> Option<Arc<BackingId>> {
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

    fn do_read(&self, fh: FileHandle, offset: u64, size: u32) -> Result<Vec<u8>> {
        let handle = self
            .handles
            .get(&fh.0)
            .ok_or_else(|| Error::errno(libc::EBADF, "read", format!("handle {}", fh.0)))?;
        let Handle::File { file, .. } = &*handle else {
            return Err(Error::errno(
                libc::EISDIR,
                "read",
                format!("handle {}", fh.0),
            ));
        };
        let mut buf = vec![0u8; size as usize];
        let mut filled = 0;
        while filled < buf.len() {
            match file.read_at(&mut buf[filled..], offset + filled as u64) {
                Ok(0) => break,
                Ok(n) => filled += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(Error::io(e, "read", format!("handle {}", fh.0))),
            }
        }
        buf.truncate(filled);
        Ok(buf)
    }

    fn check_access(&self, req: &Request, node: &Node, mask: AccessFlags) -> Result<()> {
        let st = &node.obj.stat;
        let want = mask.bits() & (libc::R_OK | libc::W_OK | libc::X_OK);
        if want & libc::W_OK != 0 {
            return Err(Error::errno(libc::EROFS, "access", &node.obj.path));
        }
        let mode = st.mode;
        let granted = if req.uid() == 0 {
            // root may read anything, and execute what anyone may execute
            let x = if node.is_dir() || mode & 0o111 != 0 {
                libc::X_OK
            } else {
                0
            };
            libc::R_OK | x
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
            return Err(Error::errno(libc::EACCES, "access", &node.obj.path));
        }
        Ok(())
    }

    fn xattr_target(&self, ino: INodeNo, op: &'static str) -> Result<Arc<Node>> {
        self.node(ino, op)
    }
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

fn to_system_time((secs, nsecs): (i64, i64)) -> SystemTime {
    let nsecs = u32::try_from(nsecs).unwrap_or(0);
    if secs >= 0 {
        UNIX_EPOCH + Duration::new(secs as u64, nsecs)
    } else {
        UNIX_EPOCH - Duration::from_secs(secs.unsigned_abs())
            + Duration::from_nanos(u64::from(nsecs))
    }
}

fn file_type(kind: FileKind) -> FileType {
    match kind {
        FileKind::Regular => FileType::RegularFile,
        FileKind::Dir => FileType::Directory,
        FileKind::Symlink => FileType::Symlink,
        FileKind::Fifo => FileType::NamedPipe,
        FileKind::CharDev => FileType::CharDevice,
        FileKind::BlockDev => FileType::BlockDevice,
        FileKind::Socket => FileType::Socket,
    }
}

fn file_attr(ino: u64, st: &Stat, nlink: u64) -> FileAttr {
    FileAttr {
        ino: INodeNo(ino),
        size: st.size,
        blocks: st.blocks,
        atime: to_system_time(st.atime),
        mtime: to_system_time(st.mtime),
        ctime: to_system_time(st.ctime),
        crtime: to_system_time(st.ctime),
        kind: file_type(FileKind::from_mode(st.mode).unwrap_or(FileKind::Regular)),
        perm: (st.mode & 0o7777) as u16,
        nlink: u32::try_from(nlink).unwrap_or(u32::MAX),
        uid: st.uid,
        gid: st.gid,
        // FUSE carries the encoded dev_t in 32 bits (new_encode_dev).
        rdev: encode_dev(st.rdev),
        blksize: u32::try_from(st.blksize).unwrap_or(4096),
        flags: 0,
    }
}

fn encode_dev(rdev: u64) -> u32 {
    let major = libc::major(rdev);
    let minor = libc::minor(rdev);
    (minor & 0xff) | (major << 8) | ((minor & !0xff) << 12)
}

/// A negative entry: the kernel caches "no such name" for the TTL.
fn negative_entry() -> FileAttr {
    let zero = Stat {
        dev: 0,
        ino: 0,
        mode: libc::S_IFREG,
        nlink: 0,
        uid: 0,
        gid: 0,
        rdev: 0,
        size: 0,
        blocks: 0,
        blksize: 4096,
        atime: (0, 0),
        mtime: (0, 0),
        ctime: (0, 0),
    };
    file_attr(0, &zero, 0)
}

impl Filesystem for LayerFs {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        for cap in [
            InitFlags::FUSE_CACHE_SYMLINKS,
            InitFlags::FUSE_PARALLEL_DIROPS,
        ] {
            let _ = config.add_capabilities(cap);
        }
        // Passthrough needs the capability and a stacking depth of at least
        // one; 1 still lets layerfs itself be a layer of an overlay mount.
        let passthrough = nix::unistd::geteuid().is_root()
            && config.add_capabilities(InitFlags::FUSE_PASSTHROUGH).is_ok()
            && config.set_max_stack_depth(1).is_ok();
        self.passthrough.store(passthrough, Ordering::Relaxed);
        info!(passthrough, layers = self.stack.len(), "mounted");
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let _span = tracing::debug_span!("lookup", parent = parent.0, ?name).entered();
        match self.do_lookup(parent, name) {
            Ok(Some(attr)) => reply.entry(&LOWER_TTL, &attr, Generation(0)),
            Ok(None) => reply.entry(&LOWER_TTL, &negative_entry(), Generation(0)),
            Err(e) => reply.error(errno_of(&e)),
        }
    }

    fn forget(&self, _req: &Request, ino: INodeNo, nlookup: u64) {
        self.nodes.forget(ino.0, nlookup);
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        let _span = tracing::debug_span!("getattr", ino = ino.0).entered();
        match self.node(ino, "getattr") {
            Ok(node) => reply.attr(&LOWER_TTL, &self.attr(&node)),
            Err(e) => reply.error(errno_of(&e)),
        }
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        let _span = tracing::debug_span!("readlink", ino = ino.0).entered();
        let result = self.node(ino, "readlink").and_then(|node| {
            if node.obj.kind != FileKind::Symlink {
                return Err(Error::errno(libc::EINVAL, "readlink", &node.obj.path));
            }
            let layer = self.stack.layer(node.obj.layer);
            layer
                .readlink(&node.obj.path)
                .map_err(|e| Error::io(e, "readlink", layer_display(layer, &node.obj.path)))
        });
        match result {
            Ok(target) => reply.data(&target),
            Err(e) => reply.error(errno_of(&e)),
        }
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let _span = tracing::debug_span!("open", ino = ino.0, flags = flags.0).entered();
        match self.do_open(ino, flags, &reply) {
            Ok((fh, Some(backing))) => {
                reply.opened_passthrough(FileHandle(fh), FopenFlags::empty(), &backing)
            }
            // The data never changes: let the page cache survive reopening.
            Ok((fh, None)) => reply.opened(FileHandle(fh), FopenFlags::FOPEN_KEEP_CACHE),
            Err(e) => reply.error(errno_of(&e)),
        }
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let _span = tracing::trace_span!("read", ino = ino.0, offset, size).entered();
        match self.do_read(fh, offset, size) {
            Ok(data) => reply.data(&data),
            Err(e) => reply.error(errno_of(&e)),
        }
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        reply.ok();
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        self.handles.remove(&fh.0);
        reply.ok();
    }

    fn fsync(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        // Nothing of ours is ever dirty on a read-only mount.
        reply.ok();
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        let _span = tracing::debug_span!("opendir", ino = ino.0).entered();
        let result = self
            .node(ino, "opendir")
            .and_then(|node| node.listing(&self.stack));
        match result {
            Ok(listing) => {
                let fh = self.next_handle.fetch_add(1, Ordering::Relaxed);
                self.handles.insert(fh, Handle::Dir(listing));
                reply.opened(
                    FileHandle(fh),
                    FopenFlags::FOPEN_KEEP_CACHE | FopenFlags::FOPEN_CACHE_DIR,
                )
            }
            Err(e) => reply.error(errno_of(&e)),
        }
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let _span = tracing::debug_span!("readdir", ino = ino.0, offset).entered();
        let node = match self.node(ino, "readdir") {
            Ok(n) => n,
            Err(e) => return reply.error(errno_of(&e)),
        };
        let Some(handle) = self.handles.get(&fh.0) else {
            return reply.error(Errno::EBADF);
        };
        let Handle::Dir(listing) = &*handle else {
            return reply.error(Errno::ENOTDIR);
        };
        // Offsets: 1 after ".", 2 after "..", 3 after the first child...
        let dots = [(node.ino, "."), (node.parent, "..")]
            .map(|(ino, name)| (ino, FileType::Directory, OsStr::new(name)));
        let children = listing
            .entries
            .iter()
            .map(|c| (c.ino, file_type(c.kind), c.name.as_os_str()));
        let all = dots.into_iter().chain(children).enumerate();
        for (index, (child_ino, kind, name)) in all.skip(offset as usize) {
            if reply.add(INodeNo(child_ino), index as u64 + 1, kind, name) {
                break;
            }
        }
        reply.ok();
    }

    fn releasedir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        self.handles.remove(&fh.0);
        reply.ok();
    }

    fn fsyncdir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        reply.ok();
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        let layer = self.stack.layer(0);
        match layer.statfs() {
            Ok(st) => reply.statfs(
                st.f_blocks,
                st.f_bfree,
                st.f_bavail,
                st.f_files,
                st.f_ffree,
                u32::try_from(st.f_bsize).unwrap_or(4096),
                u32::try_from(st.f_namelen).unwrap_or(255),
                u32::try_from(st.f_frsize).unwrap_or(4096),
            ),
            Err(e) => reply.error(errno_of(&Error::io(e, "statfs", layer.path().display()))),
        }
    }

    fn getxattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        let _span = tracing::debug_span!("getxattr", ino = ino.0, ?name).entered();
        let result = self.xattr_target(ino, "getxattr").and_then(|node| {
            let layer = self.stack.layer(node.obj.layer);
            layer
                .get_xattr(&node.obj.path, node.is_dir(), name)
                .map_err(|e| Error::io(e, "getxattr", layer_display(layer, &node.obj.path)))
        });
        reply_xattr(result, size, reply);
    }

    fn listxattr(&self, _req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        let _span = tracing::debug_span!("listxattr", ino = ino.0).entered();
        let result = self.xattr_target(ino, "listxattr").and_then(|node| {
            let layer = self.stack.layer(node.obj.layer);
            let names = layer
                .list_xattrs(&node.obj.path, node.is_dir())
                .map_err(|e| Error::io(e, "listxattr", layer_display(layer, &node.obj.path)))?;
            let mut out = Vec::new();
            for n in names {
                out.extend_from_slice(std::os::unix::ffi::OsStrExt::as_bytes(n.as_os_str()));
                out.push(0);
            }
            Ok(out)
        });
        reply_xattr(result, size, reply);
    }

    fn access(&self, req: &Request, ino: INodeNo, mask: AccessFlags, reply: ReplyEmpty) {
        let result = self
            .node(ino, "access")
            .and_then(|node| self.check_access(req, &node, mask));
        match result {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(errno_of(&e)),
        }
    }

    fn lseek(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: i64,
        whence: i32,
        reply: ReplyLseek,
    ) {
        let _span = tracing::debug_span!("lseek", ino = ino.0, offset, whence).entered();
        let Some(handle) = self.handles.get(&fh.0) else {
            return reply.error(Errno::EBADF);
        };
        let Handle::File { file, .. } = &*handle else {
            return reply.error(Errno::EINVAL);
        };
        // SAFETY: a valid fd owned by the handle, which we hold.
        let pos = unsafe { libc::lseek(file.as_raw_fd(), offset, whence) };
        if pos < 0 {
            let err = std::io::Error::last_os_error();
            return reply.error(Errno::from_i32(err.raw_os_error().unwrap_or(libc::EIO)));
        }
        reply.offset(pos);
    }
}

fn reply_xattr(result: Result<Vec<u8>>, size: u32, reply: ReplyXattr) {
    match result {
        Ok(value) if size == 0 => reply.size(u32::try_from(value.len()).unwrap_or(u32::MAX)),
        Ok(value) if value.len() <= size as usize => reply.data(&value),
        Ok(_) => reply.error(Errno::ERANGE),
        Err(e) => reply.error(errno_of(&e)),
    }
}
