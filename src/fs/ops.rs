//! The Filesystem trait: each FUSE request, with a span, handed to the
//! `do_*` method that serves it, and its result turned into a reply.

use std::ffi::OsStr;
use std::sync::atomic::Ordering;
use std::time::SystemTime;

use fuser::{
    AccessFlags, BsdFileFlags, Errno, FileAttr, FileHandle, Filesystem, FopenFlags, Generation,
    INodeNo, InitFlags, KernelConfig, LockOwner, OpenFlags, RenameFlags, ReplyAttr, ReplyCreate,
    ReplyData, ReplyDirectory, ReplyDirectoryPlus, ReplyEmpty, ReplyEntry, ReplyLseek, ReplyOpen,
    ReplyStatfs, ReplyWrite, ReplyXattr, Request, TimeOrNow, WriteFlags,
};
use tracing::{debug, info};

use super::attr::{decode_dev, negative_entry};
use super::{Handle, LOWER_TTL, LayerFs, RETURN_MEMORY_EVERY, errno_of, read, stale, write};
use crate::error::{Error, Result};
use crate::layers::{FileKind, NewObject};
use crate::union::{AttrChange, layer_display};
// Every handler here is forwarded by guard.rs, which keeps a panic from
// taking the daemon down: add new ones there too.
impl Filesystem for LayerFs {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        for cap in [
            InitFlags::FUSE_CACHE_SYMLINKS,
            InitFlags::FUSE_PARALLEL_DIROPS,
            // A listing answers the lookups that follow it (ls -l, find):
            // the kernel decides per directory whether to ask for that.
            InitFlags::FUSE_DO_READDIRPLUS,
            InitFlags::FUSE_READDIRPLUS_AUTO,
            InitFlags::FUSE_HANDLE_KILLPRIV_V2,
        ] {
            let _ = config.add_capabilities(cap);
        }
        // Passthrough needs the capability and a stacking depth of at least
        // one; 1 still lets layerfs itself be a layer of an overlay mount.
        let passthrough = nix::unistd::geteuid().is_root()
            && config.add_capabilities(InitFlags::FUSE_PASSTHROUGH).is_ok()
            && config.set_max_stack_depth(1).is_ok();
        self.passthrough.store(passthrough, Ordering::Relaxed);
        if !nix::unistd::geteuid().is_root() {
            info!("FUSE passthrough needs root: reads go through the daemon");
        }
        info!(passthrough, layers = self.stack.len(), "mounted");
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let _span = tracing::debug_span!("lookup", parent = parent.0, ?name).entered();
        match self.lookup_retrying(parent, name, true) {
            Ok(Some((attr, generation))) => reply.entry(&self.entry_ttl(&attr), &attr, generation),
            Ok(None) => reply.entry(&LOWER_TTL, &negative_entry(), Generation(0)),
            Err(e) => reply.error(errno_of(&e)),
        }
    }

    fn forget(&self, _req: &Request, ino: INodeNo, nlookup: u64) {
        if self.nodes.forget(ino.0, nlookup) {
            // The allocator keeps what was freed for later use; when the
            // kernel forgets many nodes (memory pressure, drop_caches),
            // give the memory back.
            let freed = self.nodes_freed.fetch_add(1, Ordering::Relaxed) + 1;
            if freed.is_multiple_of(RETURN_MEMORY_EVERY) {
                crate::layers::sys::return_free_memory();
            }
        }
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
        let result = self.location(ino, "readlink").and_then(|(_, obj)| {
            if obj.kind != FileKind::Symlink {
                return Err(Error::errno(libc::EINVAL, "readlink", &obj.path));
            }
            let layer = self.stack.layer(obj.layer);
            layer
                .readlink(&obj.path)
                .map_err(|e| Error::io(e, "readlink", layer_display(layer, &obj.path)))
        });
        match result {
            Ok(target) => reply.data(&target),
            Err(e) => reply.error(errno_of(&e)),
        }
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let _span = tracing::debug_span!("open", ino = ino.0, flags = flags.0).entered();
        match self.do_open(ino, flags, &reply) {
            Ok((fh, read::Opened::Passthrough(backing))) => {
                reply.opened_passthrough(FileHandle(fh), FopenFlags::empty(), &backing)
            }
            Ok((fh, read::Opened::Cached(flags))) => reply.opened(FileHandle(fh), flags),
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
        // Nothing is buffered here and locks are the kernel's own: ENOSYS
        // tells the kernel so, and it stops sending FLUSH on every close
        // (one round trip less per close).
        reply.error(Errno::ENOSYS);
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
        ino: INodeNo,
        fh: FileHandle,
        datasync: bool,
        reply: ReplyEmpty,
    ) {
        let _span = tracing::debug_span!("fsync", ino = ino.0, datasync).entered();
        match self.do_fsync(fh, datasync) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(errno_of(&e)),
        }
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        let _span = tracing::debug_span!("opendir", ino = ino.0).entered();
        let result = self.node(ino, "opendir").and_then(|node| {
            if !node.is_dir() {
                // The directory was removed and its number reused.
                return Err(stale(&node, "opendir"));
            }
            let listing = match node.listing(&self.stack) {
                // As in lookup: under the write lock no change is half made.
                Err(_) if self.stack.is_writable() => {
                    let _w = self.lock_writes();
                    node.listing(&self.stack)
                }
                other => other,
            };
            // Its path holds no directory: it was removed meanwhile.
            listing.map_err(|e| match e.raw_errno() {
                libc::ENOTDIR => stale(&node, "opendir"),
                _ => e,
            })
        });
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
        let result = self.do_readdir(ino, fh, offset, |entry| {
            reply.add(entry.ino, entry.offset, entry.kind, entry.name)
        });
        match result {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(errno_of(&e)),
        }
    }

    fn readdirplus(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectoryPlus,
    ) {
        let _span = tracing::debug_span!("readdirplus", ino = ino.0, offset).entered();
        match self.do_readdirplus(ino, fh, offset, &mut reply) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(errno_of(&e)),
        }
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
        let result = self.location(ino, "getxattr").and_then(|(_, obj)| {
            if self.hides_xattr(name) {
                return Err(Error::errno(
                    libc::ENODATA,
                    "getxattr",
                    name.to_string_lossy(),
                ));
            }
            let layer = self.stack.layer(obj.layer);
            layer
                .get_xattr(&obj.path, obj.kind == FileKind::Dir, name)
                .map_err(|e| Error::io(e, "getxattr", layer_display(layer, &obj.path)))
        });
        reply_xattr(result, size, reply);
    }

    fn listxattr(&self, _req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        let _span = tracing::debug_span!("listxattr", ino = ino.0).entered();
        let result = self.location(ino, "listxattr").and_then(|(_, obj)| {
            let layer = self.stack.layer(obj.layer);
            let names = layer
                .list_xattrs(&obj.path, obj.kind == FileKind::Dir)
                .map_err(|e| Error::io(e, "listxattr", layer_display(layer, &obj.path)))?;
            let mut out = Vec::new();
            for n in names.into_iter().filter(|n| !self.hides_xattr(n)) {
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
        let Handle::File(h) = &*handle else {
            return reply.error(Errno::EINVAL);
        };
        use nix::unistd::Whence;
        let whence = match whence {
            libc::SEEK_SET => Whence::SeekSet,
            libc::SEEK_CUR => Whence::SeekCur,
            libc::SEEK_END => Whence::SeekEnd,
            libc::SEEK_DATA => Whence::SeekData,
            libc::SEEK_HOLE => Whence::SeekHole,
            _ => return reply.error(Errno::EINVAL),
        };
        match nix::unistd::lseek(&h.file, offset, whence) {
            Ok(pos) => reply.offset(pos),
            Err(e) => reply.error(Errno::from_i32(e as i32)),
        }
    }

    fn mknod(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        rdev: u32,
        reply: ReplyEntry,
    ) {
        let _span = tracing::debug_span!("mknod", parent = parent.0, ?name, mode).entered();
        let rdev = decode_dev(rdev);
        let obj = if mode & libc::S_IFMT == libc::S_IFREG {
            NewObject::File
        } else {
            NewObject::Node { mode, rdev }
        };
        reply_entry(
            self.do_create(req, parent, name, obj, mode & 0o7777)
                .map(|(a, g, _)| (a, g)),
            reply,
        );
    }

    fn mkdir(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        reply: ReplyEntry,
    ) {
        let _span = tracing::debug_span!("mkdir", parent = parent.0, ?name, mode).entered();
        reply_entry(
            self.do_create(req, parent, name, NewObject::Dir, mode & 0o7777)
                .map(|(a, g, _)| (a, g)),
            reply,
        );
    }

    fn symlink(
        &self,
        req: &Request,
        parent: INodeNo,
        link_name: &OsStr,
        target: &std::path::Path,
        reply: ReplyEntry,
    ) {
        let _span = tracing::debug_span!("symlink", parent = parent.0, ?link_name).entered();
        let obj = NewObject::Symlink(target.as_os_str());
        reply_entry(
            self.do_create(req, parent, link_name, obj, 0o777)
                .map(|(a, g, _)| (a, g)),
            reply,
        );
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        let _span = tracing::debug_span!("create", parent = parent.0, ?name, mode, flags).entered();
        let result = self
            .do_create(req, parent, name, NewObject::File, mode & 0o7777)
            .and_then(|(attr, generation, made)| {
                let (fh, opened) =
                    self.open_created(attr.ino, flags, made, |f| reply.open_backing(f))?;
                Ok((attr, generation, fh, opened))
            });
        match result {
            Ok((attr, generation, fh, read::Opened::Passthrough(backing))) => reply
                .created_passthrough(
                    &LOWER_TTL,
                    &attr,
                    generation,
                    FileHandle(fh),
                    FopenFlags::empty(),
                    &backing,
                ),
            Ok((attr, generation, fh, read::Opened::Cached(open_flags))) => {
                reply.created(&LOWER_TTL, &attr, generation, FileHandle(fh), open_flags)
            }
            Err(e) => reply.error(errno_of(&e)),
        }
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let _span = tracing::debug_span!("unlink", parent = parent.0, ?name).entered();
        reply_empty(self.do_remove(parent, name, false), reply);
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let _span = tracing::debug_span!("rmdir", parent = parent.0, ?name).entered();
        reply_empty(self.do_remove(parent, name, true), reply);
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        let _span = tracing::debug_span!(
            "rename",
            parent = parent.0,
            ?name,
            newparent = newparent.0,
            ?newname
        )
        .entered();
        if flags.contains(RenameFlags::RENAME_WHITEOUT) {
            return reply.error(Errno::EINVAL);
        }
        let result = self.do_rename(parent, name, newparent, newname, flags.bits());
        if result.is_err() && self.stack.is_writable() {
            // The upper filesystem may have touched the parents before it
            // refused (ext4 does on ENOTEMPTY with RENAME_WHITEOUT), and
            // the kernel only refreshes them after a rename that worked.
            self.invalidate_attrs(parent);
            self.invalidate_attrs(newparent);
        }
        reply_empty(result, reply);
    }

    fn link(
        &self,
        _req: &Request,
        ino: INodeNo,
        newparent: INodeNo,
        newname: &OsStr,
        reply: ReplyEntry,
    ) {
        let _span =
            tracing::debug_span!("link", ino = ino.0, newparent = newparent.0, ?newname).entered();
        reply_entry(self.do_link(ino, newparent, newname), reply);
    }

    fn setattr(
        &self,
        req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let _span =
            tracing::debug_span!("setattr", ino = ino.0, ?mode, ?uid, ?gid, ?size).entered();
        let change = AttrChange {
            mode,
            uid,
            gid,
            size,
            atime: atime.map(write::time_spec),
            mtime: mtime.map(write::time_spec),
        };
        match self.do_setattr(req, ino, &change, fh) {
            Ok(attr) => reply.attr(&LOWER_TTL, &attr),
            Err(e) => reply.error(errno_of(&e)),
        }
    }

    fn write(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        let _span = tracing::trace_span!("write", ino = ino.0, offset, len = data.len()).entered();
        match self.do_write(fh, offset, data) {
            Ok(n) => reply.written(n),
            Err(e) => reply.error(errno_of(&e)),
        }
    }

    fn fallocate(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        let _span = tracing::debug_span!("fallocate", ino = ino.0, offset, length, mode).entered();
        reply_empty(self.do_fallocate(fh, offset, length, mode), reply);
    }

    fn setxattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        name: &OsStr,
        value: &[u8],
        flags: i32,
        _position: u32,
        reply: ReplyEmpty,
    ) {
        let _span = tracing::debug_span!("setxattr", ino = ino.0, ?name).entered();
        reply_empty(self.do_write_xattr(ino, name, Some(value), flags), reply);
    }

    /// No ioctl is meaningful on a union (the kernel's overlayfs answers
    /// TCGETS on a regular file with ENOTTY too); not worth a warning.
    fn ioctl(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _flags: fuser::IoctlFlags,
        cmd: u32,
        _in_data: &[u8],
        _out_size: u32,
        reply: fuser::ReplyIoctl,
    ) {
        debug!(ino = ino.0, cmd, "ioctl: ENOTTY");
        reply.error(Errno::ENOTTY);
    }

    /// Files of a union are always ready: ENOSYS tells the kernel so once
    /// and for all (it then stops asking).
    fn poll(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _ph: fuser::PollNotifier,
        _events: fuser::PollEvents,
        _flags: fuser::PollFlags,
        reply: fuser::ReplyPoll,
    ) {
        debug!(ino = ino.0, "poll: not needed, always ready");
        reply.error(Errno::ENOSYS);
    }

    fn removexattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let _span = tracing::debug_span!("removexattr", ino = ino.0, ?name).entered();
        reply_empty(self.do_write_xattr(ino, name, None, 0), reply);
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

fn reply_entry(result: Result<(FileAttr, Generation)>, reply: ReplyEntry) {
    match result {
        Ok((attr, generation)) => reply.entry(&LOWER_TTL, &attr, generation),
        Err(e) => reply.error(errno_of(&e)),
    }
}

fn reply_empty(result: Result<()>, reply: ReplyEmpty) {
    match result {
        Ok(()) => reply.ok(),
        Err(e) => reply.error(errno_of(&e)),
    }
}
