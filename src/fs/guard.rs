//! The daemon never dies of a panic in a request handler: each handler
//! runs under `catch_unwind`. fuser answers a request whose reply was
//! dropped unsent with EIO, so the caller gets EIO; we log the operation
//! and the path, and the mount keeps serving (fuser would otherwise end the
//! whole session when one of its worker threads panicked). Locks taken in a
//! handler are poison-tolerant (nodes.rs), so what a panicking handler held
//! does not break later requests.
//!
//! Every method `LayerFs` implements must be forwarded here: one it lacks
//! would answer ENOSYS.

use std::ffi::{OsStr, OsString};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::time::SystemTime;

use fuser::{
    AccessFlags, BsdFileFlags, FileHandle, Filesystem, INodeNo, KernelConfig, LockOwner, OpenFlags,
    RenameFlags, ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory, ReplyDirectoryPlus, ReplyEmpty,
    ReplyEntry, ReplyLseek, ReplyOpen, ReplyStatfs, ReplyWrite, ReplyXattr, Request, TimeOrNow,
    WriteFlags,
};
use tracing::error;

use super::LayerFs;

/// `LayerFs`, with each request handler guarded against panics.
pub struct Guarded {
    fs: LayerFs,
    panic_name: Option<OsString>,
}

/// What a request names, for the log line of a panic.
struct Target<'a> {
    ino: Option<INodeNo>,
    name: Option<&'a OsStr>,
}

/// Fault injection for the tests (docs/reliability.md): a request naming
/// this file name panics in its handler.
const PANIC_NAME_VAR: &str = "LAYERFS_INJECT_PANIC_NAME";

impl Guarded {
    pub fn new(fs: LayerFs) -> Guarded {
        Guarded {
            fs,
            panic_name: std::env::var_os(PANIC_NAME_VAR),
        }
    }

    fn guarded(&self, op: &'static str, target: Target<'_>, handler: impl FnOnce()) {
        let inject = self.panic_name.as_deref();
        let result = catch_unwind(AssertUnwindSafe(|| {
            if inject.is_some() && target.name == inject {
                panic!("injected panic ({PANIC_NAME_VAR})");
            }
            handler()
        }));
        if let Err(payload) = result {
            let why = payload
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "(no message)".into());
            let path = target
                .ino
                .and_then(|ino| self.fs.nodes.get(ino.0))
                .map(|n| {
                    let dir = n.obj().upath.to_string();
                    match target.name {
                        Some(name) => format!("{}/{}", dir.trim_end_matches('/'), name.display()),
                        None => dir,
                    }
                });
            error!(
                op,
                path = path.as_deref().unwrap_or("?"),
                "panic in the handler, answered EIO: {why}"
            );
        }
    }
}

impl Filesystem for Guarded {
    fn init(&mut self, req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        self.fs.init(req, config)
    }

    fn lookup(&self, req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        self.guarded(
            "lookup",
            Target {
                ino: Some(parent),
                name: Some(name),
            },
            || self.fs.lookup(req, parent, name, reply),
        );
    }

    fn forget(&self, req: &Request, ino: INodeNo, nlookup: u64) {
        self.guarded(
            "forget",
            Target {
                ino: Some(ino),
                name: None,
            },
            || self.fs.forget(req, ino, nlookup),
        );
    }

    fn getattr(&self, req: &Request, ino: INodeNo, fh: Option<FileHandle>, reply: ReplyAttr) {
        self.guarded(
            "getattr",
            Target {
                ino: Some(ino),
                name: None,
            },
            || self.fs.getattr(req, ino, fh, reply),
        );
    }

    fn readlink(&self, req: &Request, ino: INodeNo, reply: ReplyData) {
        self.guarded(
            "readlink",
            Target {
                ino: Some(ino),
                name: None,
            },
            || self.fs.readlink(req, ino, reply),
        );
    }

    fn open(&self, req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        self.guarded(
            "open",
            Target {
                ino: Some(ino),
                name: None,
            },
            || self.fs.open(req, ino, flags, reply),
        );
    }

    fn read(
        &self,
        req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        flags: OpenFlags,
        lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        self.guarded(
            "read",
            Target {
                ino: Some(ino),
                name: None,
            },
            || {
                self.fs
                    .read(req, ino, fh, offset, size, flags, lock_owner, reply)
            },
        );
    }

    fn flush(
        &self,
        req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        self.guarded(
            "flush",
            Target {
                ino: Some(ino),
                name: None,
            },
            || self.fs.flush(req, ino, fh, lock_owner, reply),
        );
    }

    fn release(
        &self,
        req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        flags: OpenFlags,
        lock_owner: Option<LockOwner>,
        flush: bool,
        reply: ReplyEmpty,
    ) {
        self.guarded(
            "release",
            Target {
                ino: Some(ino),
                name: None,
            },
            || {
                self.fs
                    .release(req, ino, fh, flags, lock_owner, flush, reply)
            },
        );
    }

    fn fsync(
        &self,
        req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        datasync: bool,
        reply: ReplyEmpty,
    ) {
        self.guarded(
            "fsync",
            Target {
                ino: Some(ino),
                name: None,
            },
            || self.fs.fsync(req, ino, fh, datasync, reply),
        );
    }

    fn opendir(&self, req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        self.guarded(
            "opendir",
            Target {
                ino: Some(ino),
                name: None,
            },
            || self.fs.opendir(req, ino, flags, reply),
        );
    }

    fn readdir(
        &self,
        req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        reply: ReplyDirectory,
    ) {
        self.guarded(
            "readdir",
            Target {
                ino: Some(ino),
                name: None,
            },
            || self.fs.readdir(req, ino, fh, offset, reply),
        );
    }

    fn readdirplus(
        &self,
        req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        reply: ReplyDirectoryPlus,
    ) {
        self.guarded(
            "readdirplus",
            Target {
                ino: Some(ino),
                name: None,
            },
            || self.fs.readdirplus(req, ino, fh, offset, reply),
        );
    }

    fn releasedir(
        &self,
        req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        self.guarded(
            "releasedir",
            Target {
                ino: Some(ino),
                name: None,
            },
            || self.fs.releasedir(req, ino, fh, flags, reply),
        );
    }

    fn fsyncdir(
        &self,
        req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        datasync: bool,
        reply: ReplyEmpty,
    ) {
        self.guarded(
            "fsyncdir",
            Target {
                ino: Some(ino),
                name: None,
            },
            || self.fs.fsyncdir(req, ino, fh, datasync, reply),
        );
    }

    fn statfs(&self, req: &Request, ino: INodeNo, reply: ReplyStatfs) {
        self.guarded(
            "statfs",
            Target {
                ino: Some(ino),
                name: None,
            },
            || self.fs.statfs(req, ino, reply),
        );
    }

    fn getxattr(&self, req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        self.guarded(
            "getxattr",
            Target {
                ino: Some(ino),
                name: Some(name),
            },
            || self.fs.getxattr(req, ino, name, size, reply),
        );
    }

    fn listxattr(&self, req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        self.guarded(
            "listxattr",
            Target {
                ino: Some(ino),
                name: None,
            },
            || self.fs.listxattr(req, ino, size, reply),
        );
    }

    fn access(&self, req: &Request, ino: INodeNo, mask: AccessFlags, reply: ReplyEmpty) {
        self.guarded(
            "access",
            Target {
                ino: Some(ino),
                name: None,
            },
            || self.fs.access(req, ino, mask, reply),
        );
    }

    fn lseek(
        &self,
        req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: i64,
        whence: i32,
        reply: ReplyLseek,
    ) {
        self.guarded(
            "lseek",
            Target {
                ino: Some(ino),
                name: None,
            },
            || self.fs.lseek(req, ino, fh, offset, whence, reply),
        );
    }

    fn mknod(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        rdev: u32,
        reply: ReplyEntry,
    ) {
        self.guarded(
            "mknod",
            Target {
                ino: Some(parent),
                name: Some(name),
            },
            || self.fs.mknod(req, parent, name, mode, umask, rdev, reply),
        );
    }

    fn mkdir(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        reply: ReplyEntry,
    ) {
        self.guarded(
            "mkdir",
            Target {
                ino: Some(parent),
                name: Some(name),
            },
            || self.fs.mkdir(req, parent, name, mode, umask, reply),
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
        self.guarded(
            "symlink",
            Target {
                ino: Some(parent),
                name: Some(link_name),
            },
            || self.fs.symlink(req, parent, link_name, target, reply),
        );
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        self.guarded(
            "create",
            Target {
                ino: Some(parent),
                name: Some(name),
            },
            || self.fs.create(req, parent, name, mode, umask, flags, reply),
        );
    }

    fn unlink(&self, req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        self.guarded(
            "unlink",
            Target {
                ino: Some(parent),
                name: Some(name),
            },
            || self.fs.unlink(req, parent, name, reply),
        );
    }

    fn rmdir(&self, req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        self.guarded(
            "rmdir",
            Target {
                ino: Some(parent),
                name: Some(name),
            },
            || self.fs.rmdir(req, parent, name, reply),
        );
    }

    fn rename(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        self.guarded(
            "rename",
            Target {
                ino: Some(parent),
                name: Some(name),
            },
            || {
                self.fs
                    .rename(req, parent, name, newparent, newname, flags, reply)
            },
        );
    }

    fn link(
        &self,
        req: &Request,
        ino: INodeNo,
        newparent: INodeNo,
        newname: &OsStr,
        reply: ReplyEntry,
    ) {
        self.guarded(
            "link",
            Target {
                ino: Some(ino),
                name: None,
            },
            || self.fs.link(req, ino, newparent, newname, reply),
        );
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
        ctime: Option<SystemTime>,
        fh: Option<FileHandle>,
        crtime: Option<SystemTime>,
        chgtime: Option<SystemTime>,
        bkuptime: Option<SystemTime>,
        flags: Option<BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        self.guarded(
            "setattr",
            Target {
                ino: Some(ino),
                name: None,
            },
            || {
                self.fs.setattr(
                    req, ino, mode, uid, gid, size, atime, mtime, ctime, fh, crtime, chgtime,
                    bkuptime, flags, reply,
                )
            },
        );
    }

    fn write(
        &self,
        req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        write_flags: WriteFlags,
        flags: OpenFlags,
        lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        self.guarded(
            "write",
            Target {
                ino: Some(ino),
                name: None,
            },
            || {
                self.fs.write(
                    req,
                    ino,
                    fh,
                    offset,
                    data,
                    write_flags,
                    flags,
                    lock_owner,
                    reply,
                )
            },
        );
    }

    fn fallocate(
        &self,
        req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        self.guarded(
            "fallocate",
            Target {
                ino: Some(ino),
                name: None,
            },
            || self.fs.fallocate(req, ino, fh, offset, length, mode, reply),
        );
    }

    fn setxattr(
        &self,
        req: &Request,
        ino: INodeNo,
        name: &OsStr,
        value: &[u8],
        flags: i32,
        position: u32,
        reply: ReplyEmpty,
    ) {
        self.guarded(
            "setxattr",
            Target {
                ino: Some(ino),
                name: Some(name),
            },
            || {
                self.fs
                    .setxattr(req, ino, name, value, flags, position, reply)
            },
        );
    }

    fn ioctl(
        &self,
        req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        flags: fuser::IoctlFlags,
        cmd: u32,
        in_data: &[u8],
        out_size: u32,
        reply: fuser::ReplyIoctl,
    ) {
        self.guarded(
            "ioctl",
            Target {
                ino: Some(ino),
                name: None,
            },
            || {
                self.fs
                    .ioctl(req, ino, fh, flags, cmd, in_data, out_size, reply)
            },
        );
    }

    fn poll(
        &self,
        req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        ph: fuser::PollNotifier,
        events: fuser::PollEvents,
        flags: fuser::PollFlags,
        reply: fuser::ReplyPoll,
    ) {
        self.guarded(
            "poll",
            Target {
                ino: Some(ino),
                name: None,
            },
            || self.fs.poll(req, ino, fh, ph, events, flags, reply),
        );
    }

    fn removexattr(&self, req: &Request, ino: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        self.guarded(
            "removexattr",
            Target {
                ino: Some(ino),
                name: Some(name),
            },
            || self.fs.removexattr(req, ino, name, reply),
        );
    }
}
