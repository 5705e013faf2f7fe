//! Attributes as the kernel is given them: a node's stat as the union and
//! the id/override view show it, in FUSE's types.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fuser::{FileAttr, FileType, Generation, INodeNo};

use super::{LayerFs, Node};
use crate::layers::{FileKind, Stat};
use crate::union::INDEX_LAYER;

impl LayerFs {
    /// The attributes to report. Upper objects change under our own
    /// writes, so they are read again; lower ones never change.
    pub(super) fn attr(&self, node: &Node) -> FileAttr {
        self.attr_of(node, true)
    }

    /// Attributes of `node`; `restat`: read those of an upper copy again
    /// (false only where the caller has just made it and knows them).
    pub(super) fn attr_of(&self, node: &Node, restat: bool) -> FileAttr {
        let mut obj = node.obj();
        // A lower name of a hard-linked file whose index copy was made
        // since (through another name): it shows that copy from now on.
        if let Some((key, st)) = self
            .stack
            .indexed(obj.layer, &obj.path, obj.kind, &obj.stat)
        {
            // Made without its data (metacopy=on): the data is this name's.
            let data = self
                .stack
                .index_data(&key, obj.layer, &obj.path, &obj.stat)
                .unwrap_or_default();
            node.update(|s| {
                s.obj.data = data;
                s.obj.layer = INDEX_LAYER;
                s.obj.path = key.clone();
                s.obj.stat = st;
                s.obj.index_key = Some(key);
            });
            obj = node.obj();
        }
        let upper_copy = obj.layer == 0 || obj.layer == INDEX_LAYER;
        let stale = restat && upper_copy && self.stack.is_writable();
        let stat = if stale {
            match self.stack.restat(&obj) {
                Ok(st) if st.same_object(&obj.stat) => {
                    node.update(|s| s.obj.stat = st);
                    st
                }
                // Unlinked while open, or its name now holds another
                // object: what we last knew.
                _ => obj.stat,
            }
        } else {
            obj.stat
        };
        let stat = obj.shown_stat(stat);
        let mut nlink = self.stack.shown_nlink(&obj, &stat);
        // As the kernel's overlayfs: counting subdirectories of a merged
        // directory is not worth it, and find(1) is happy with 1.
        if obj.dir.as_ref().is_some_and(|d| d.layers.len() > 1)
            || (self.view.static_nlink && obj.kind == FileKind::Dir)
        {
            nlink = 1;
        }
        let stat = if self.view.is_identity() {
            stat
        } else {
            self.view.shown(&self.stack, &obj, stat)
        };
        file_attr(node.ino, &stat, nlink)
    }

    pub(super) fn generation(node: &Node) -> Generation {
        Generation(node.read(|s| s.generation))
    }
}

pub(super) fn to_system_time((secs, nsecs): (i64, i64)) -> SystemTime {
    let nsecs = u32::try_from(nsecs).unwrap_or(0);
    if secs >= 0 {
        UNIX_EPOCH + Duration::new(secs as u64, nsecs)
    } else {
        UNIX_EPOCH - Duration::from_secs(secs.unsigned_abs())
            + Duration::from_nanos(u64::from(nsecs))
    }
}

pub(super) fn file_type(kind: FileKind) -> FileType {
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

pub(super) fn file_attr(ino: u64, st: &Stat, nlink: u64) -> FileAttr {
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

pub(super) fn encode_dev(rdev: u64) -> u32 {
    let major = libc::major(rdev);
    let minor = libc::minor(rdev);
    (minor & 0xff) | (major << 8) | ((minor & !0xff) << 12)
}

/// A negative entry: the kernel caches "no such name" for the TTL.
pub(super) fn negative_entry() -> FileAttr {
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

/// The dev_t FUSE carries in 32 bits (new_encode_dev), decoded.
pub(super) fn decode_dev(dev: u32) -> u64 {
    let major = (dev & 0xfff00) >> 8;
    let minor = (dev & 0xff) | ((dev >> 12) & 0xfff00);
    libc::makedev(major, minor)
}
