//! The mutating requests: what each needs copied up first, which nodes and
//! listings change, and what the kernel is answered. The rules themselves
//! (whiteouts, opaque directories, where data goes) are `union::write`'s.

use std::ffi::OsStr;
use std::os::unix::fs::{FileExt, PermissionsExt};
use std::sync::{Arc, MutexGuard, PoisonError};

use fuser::{FileAttr, FileHandle, Generation, INodeNo, Request, TimeOrNow};

use super::{Handle, LayerFs, Node};
use crate::error::{Error, Result};
use crate::layers::{FileKind, NewObject, RelPath};
use crate::union::{AttrChange, CopyUp, Resolved};

impl LayerFs {
    pub(super) fn lock_writes(&self) -> MutexGuard<'_, ()> {
        self.write_lock
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn writable(&self, op: &'static str, node: &Node) -> Result<()> {
        if self.stack.is_writable() {
            Ok(())
        } else {
            Err(Error::errno(
                libc::EROFS,
                op,
                node.read(|s| s.obj.path.clone()),
            ))
        }
    }

    /// Copy `node` (with its data) and every directory above it into the
    /// upper layer. Callers hold the write lock.
    pub(super) fn ensure_upper(&self, node: &Arc<Node>) -> Result<()> {
        self.copy_node_up(node, CopyUp::Data)
    }

    /// As [`LayerFs::ensure_upper`], before a change of metadata only
    /// (with metacopy=on a regular file's data stays below).
    pub(super) fn ensure_upper_meta(&self, node: &Arc<Node>) -> Result<()> {
        self.copy_node_up(node, CopyUp::Metadata)
    }

    fn copy_node_up(&self, node: &Arc<Node>, how: CopyUp) -> Result<()> {
        let (layer, parent_ino, obj) = node.read(|s| (s.obj.layer, s.parent, s.obj.clone()));
        if layer == 0 {
            if how == CopyUp::Data && obj.data.is_some() {
                let copied = self.stack.copy_up_data(&obj)?;
                node.update(|s| {
                    s.obj.stat = copied.stat;
                    s.obj.data = None;
                });
                self.data_copied(node, &obj.stat, &copied.stat);
            }
            return Ok(());
        }
        let parent = self
            .nodes
            .get(parent_ino)
            .ok_or_else(|| Error::new(libc::EIO, "copy up", &obj.path, "parent no longer known"))?;
        self.ensure_upper(&parent)?;
        let copied = parent.edit_listing(&self.stack, |l| self.stack.copy_up(&obj, l, how))?;
        let stat = copied.stat;
        node.update(|s| s.obj = copied);
        self.data_copied(node, &obj.stat, &stat);
        Ok(())
    }

    /// Data copied into a metacopy file in place took the time of the
    /// copy as its mtime (as the kernel's does): the kernel's cached
    /// attributes of it are dropped.
    fn data_copied(&self, node: &Node, before: &crate::layers::Stat, after: &crate::layers::Stat) {
        if before.mtime != after.mtime {
            self.invalidate_attrs(fuser::INodeNo(node.ino));
        }
    }

    /// Owner and permission bits of a new object, as the kernel's
    /// overlayfs gives them: the caller's ids, the group of a setgid
    /// parent (whose directories inherit the bit).
    fn new_owner(
        &self,
        req: &Request,
        parent: &Resolved,
        kind: FileKind,
        perm: u32,
    ) -> (u32, u32, u32) {
        let setgid_parent = parent.stat.mode & libc::S_ISGID != 0;
        // The caller's ids as they are kept on disk (uidmapping=).
        let (uid, req_gid) = self.view.stored_ids(req.uid(), req.gid());
        let gid = if setgid_parent {
            parent.stat.gid
        } else {
            req_gid
        };
        let perm = if setgid_parent && kind == FileKind::Dir {
            perm | libc::S_ISGID
        } else {
            perm
        };
        (uid, gid, perm & 0o7777)
    }

    /// create, mkdir, mknod, symlink. A new regular file may come back
    /// open read-write already (the handle `create` answers with).
    pub(super) fn do_create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        obj: NewObject<'_>,
        perm: u32,
    ) -> Result<(FileAttr, Generation, Option<std::os::fd::OwnedFd>)> {
        let dir = self.node(parent, "create")?;
        self.writable("create", &dir)?;
        let _w = self.lock_writes();
        // Refuse before copying anything up.
        if dir.listing(&self.stack)?.get(name).is_some() {
            return Err(Error::errno(libc::EEXIST, "create", name.to_string_lossy()));
        }
        self.ensure_upper(&dir)?;
        let parent_obj = dir.obj();
        let kind = match &obj {
            NewObject::File => FileKind::Regular,
            NewObject::Dir => FileKind::Dir,
            NewObject::Symlink(_) => FileKind::Symlink,
            NewObject::Node { mode, .. } => FileKind::from_mode(*mode).unwrap_or(FileKind::Regular),
        };
        let (uid, gid, perm) = self.new_owner(req, &parent_obj, kind, perm);
        let rdev = match &obj {
            NewObject::Node { rdev, .. } => *rdev,
            _ => 0,
        };
        let override_name = self.view.upper_override().filter(|n| n.fits(kind));
        // With override xattrs the inode belongs to the daemon, which can
        // always use it, and the xattr says what is shown.
        let (real_uid, real_gid, real_perm) = match override_name {
            Some(_) => (
                nix::unistd::geteuid().as_raw(),
                nix::unistd::getegid().as_raw(),
                perm & 0o777 | if kind == FileKind::Dir { 0o700 } else { 0o600 },
            ),
            None => (uid, gid, perm),
        };
        let (created, fd) = dir.edit_listing(&self.stack, |l| {
            self.stack
                .create(&parent_obj, l, name, obj, real_perm, real_uid, real_gid)
        })?;
        let listed = created.ino;
        if let Some(xname) = override_name {
            let value = super::view::AttrView::override_value(uid, gid, perm, kind, rdev);
            self.stack.write_xattr(
                &created,
                OsStr::new(xname.name()),
                Some(value.as_bytes()),
                0,
            )?;
        }
        let node = self.nodes.insert_new(dir.ino, name, created);
        if kind == FileKind::Dir {
            // New and empty: its first lookup need not read it back.
            node.set_empty_listing();
        }
        self.renumbered(&dir, name, &node, listed)?;
        // Its stat is the one just taken, unless an override xattr was
        // written since (a new ctime).
        let attr = self.attr_of(&node, override_name.is_some());
        Ok((attr, Self::generation(&node), fd))
    }

    pub(super) fn do_remove(&self, parent: INodeNo, name: &OsStr, want_dir: bool) -> Result<()> {
        let op = if want_dir { "rmdir" } else { "unlink" };
        let dir = self.node(parent, op)?;
        self.writable(op, &dir)?;
        let _w = self.lock_writes();
        // Refuse before copying anything up.
        let parent_obj = dir.obj();
        let listing = dir.listing(&self.stack)?;
        let child = self
            .stack
            .check_remove(&parent_obj, &listing, name, want_dir)?;
        // Let go of it: a listing still shared is copied whole on edit.
        drop(listing);
        let gone = child.ino;
        self.ensure_upper(&dir)?;
        let parent_obj = dir.obj();
        dir.edit_listing(&self.stack, |l| self.stack.remove(&parent_obj, l, child))?;
        self.name_removed(gone, &parent_obj, name);
        Ok(())
    }

    /// The name `parent/name` of node `ino` is gone: a hard-linked node
    /// moves to another of its names, so it stays reachable.
    fn name_removed(&self, ino: u64, parent: &Resolved, name: &OsStr) {
        let (Some(node), Ok(path)) = (self.nodes.get(ino), parent.upath.join(name)) else {
            return;
        };
        node.update(|s| {
            s.aliases.retain(|a| a.2 != path);
            if s.obj.upath != path {
                return;
            }
            let Some((p, n, alias)) = s.aliases.pop() else {
                if let Some(key) = s.obj.index_key.clone() {
                    // Its other names are lower ones: they show the index
                    // copy.
                    s.obj.layer = crate::union::INDEX_LAYER;
                    s.obj.path = key;
                } else {
                    // No other name known: its path is gone, so getattr
                    // keeps what we last knew, less the link just removed.
                    s.obj.stat.nlink = s.obj.stat.nlink.saturating_sub(1);
                }
                return;
            };
            s.parent = p;
            s.name = n;
            s.obj.upath = alias.clone();
            let in_upper = self
                .stack
                .layer(0)
                .stat(&alias)
                .is_ok_and(|st| st.same_object(&s.obj.stat));
            if in_upper {
                s.obj.layer = 0;
                s.obj.path = alias;
            } else if let Some(key) = s.obj.index_key.clone() {
                // A lower name: it shows the index copy.
                s.obj.layer = crate::union::INDEX_LAYER;
                s.obj.path = key;
            }
        });
    }

    pub(super) fn do_rename(
        &self,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: u32,
    ) -> Result<()> {
        let src_dir = self.node(parent, "rename")?;
        let dst_dir = self.node(newparent, "rename")?;
        self.writable("rename", &src_dir)?;
        let _w = self.lock_writes();
        // Refuse before copying anything up, as the kernel does.
        let (sp, dp) = (src_dir.obj(), dst_dir.obj());
        let src_listing = src_dir.listing(&self.stack)?;
        let dst_listing = dst_dir.listing(&self.stack)?;
        let distinct = src_dir.ino != dst_dir.ino;
        let checked = self.stack.check_rename(
            &sp,
            &src_listing,
            name,
            &dp,
            distinct.then_some(&*dst_listing),
            newname,
            flags,
        )?;
        // Let go of them: a listing still shared is copied whole on edit.
        drop((src_listing, dst_listing));
        if checked.is_none() {
            return Ok(()); // two names of one file
        }
        self.ensure_upper(&src_dir)?;
        self.ensure_upper(&dst_dir)?;
        // The objects moved must be in the upper: copy them up through
        // their nodes, looking them up if the kernel has not.
        let src = self.child_node(&src_dir, name)?;
        let src =
            src.ok_or_else(|| Error::errno(libc::ENOENT, "rename", name.to_string_lossy()))?;
        let target = self.child_node(&dst_dir, newname)?;
        let replaced = target.as_ref().map(|t| t.ino);
        // (A directory is copied up alone: its content stays below and is
        // found again through the redirect the rename records.)
        self.ensure_name_upper(&src_dir, name, &src)?;
        if flags & libc::RENAME_EXCHANGE != 0
            && let Some(t) = &target
        {
            self.ensure_name_upper(&dst_dir, newname, t)?;
        }
        let (sp, dp) = (src_dir.obj(), dst_dir.obj());
        if src_dir.ino == dst_dir.ino {
            src_dir.edit_listing(&self.stack, |l| {
                self.stack.rename(&sp, l, name, &dp, None, newname, flags)
            })?;
        } else {
            src_dir.edit_two_listings(&dst_dir, &self.stack, |ls, ld| {
                self.stack
                    .rename(&sp, ls, name, &dp, Some(ld), newname, flags)
            })?;
        }
        if flags & libc::RENAME_EXCHANGE == 0
            && let Some(ino) = replaced
            && ino != src.ino
        {
            self.name_removed(ino, &dp, newname);
        }
        let join = |p: &Resolved, n: &OsStr| {
            p.upath
                .join(n)
                .map_err(|e| Error::io(e, "rename", &p.upath))
        };
        let mut moves = vec![(src.clone(), join(&sp, name)?, dst_dir.ino, newname, &dp)];
        if flags & libc::RENAME_EXCHANGE != 0
            && let Some(t) = &target
        {
            moves.push((t.clone(), join(&dp, newname)?, src_dir.ino, name, &sp));
        }
        self.moved(&moves);
        Ok(())
    }

    /// Copy up the name `dir/name` of `node` itself. A hard-linked file has
    /// one node for all its names, and a rename must move the name it was
    /// given, which may not be the one the node knows.
    fn ensure_name_upper(&self, dir: &Arc<Node>, name: &OsStr, node: &Arc<Node>) -> Result<()> {
        // (The listing is let go at once: one still shared is copied whole
        // on edit.)
        let child = dir.listing(&self.stack)?.get(name).cloned();
        let Some(child) = child else {
            return Err(Error::errno(
                libc::ENOENT,
                "copy up",
                name.to_string_lossy(),
            ));
        };
        if child.layer == 0 {
            return Ok(());
        }
        let merged = dir.read(|s| s.obj.dir.clone());
        let merged =
            merged.ok_or_else(|| Error::errno(libc::ENOTDIR, "copy up", name.to_string_lossy()))?;
        let obj = self.stack.resolve(&merged, &child)?;
        let copied = dir.edit_listing(&self.stack, |l| {
            self.stack.copy_up(&obj, l, CopyUp::Metadata)
        })?;
        node.update(|s| {
            if s.obj.upath == copied.upath || s.obj.layer != 0 {
                // The name the node knows (or a node not in the upper yet).
                s.parent = dir.ino;
                s.name = name.to_os_string();
                s.obj = copied;
            } else if !s.aliases.iter().any(|a| a.2 == copied.upath) {
                s.aliases
                    .push((dir.ino, name.to_os_string(), copied.upath.clone()));
            }
        });
        Ok(())
    }

    /// The node of `name` in `dir`, resolving it when the kernel holds none
    /// (the caller does not count a kernel reference for it).
    fn child_node(&self, dir: &Arc<Node>, name: &OsStr) -> Result<Option<Arc<Node>>> {
        let listing = dir.listing(&self.stack)?;
        let Some(child) = listing.get(name) else {
            return Ok(None);
        };
        if let Some(n) = self.nodes.get(child.ino) {
            return Ok(Some(n));
        }
        let merged = dir.read(|s| s.obj.dir.clone());
        let merged =
            merged.ok_or_else(|| Error::errno(libc::ENOTDIR, "rename", name.to_string_lossy()))?;
        let obj = self.stack.resolve(&merged, child)?;
        // A private node: not in the table, so nothing to forget later.
        Ok(Some(Arc::new(Node::new(super::NodeState {
            parent: dir.ino,
            name: name.to_os_string(),
            obj,
            generation: 0,
            aliases: Vec::new(),
        }))))
    }

    /// Nodes now live at `parent/name` (they are in the upper). Applied at
    /// once, so the two sides of an exchange do not move each other back.
    /// Each move: the node, the union path of the name that moved, and
    /// where it went.
    fn moved(&self, moves: &[(Arc<Node>, RelPath, u64, &OsStr, &Resolved)]) {
        let mut rebases = Vec::new();
        for (node, old_path, parent_ino, name, parent) in moves {
            let Ok(new_path) = parent.upath.join(name) else {
                continue;
            };
            if node.read(|s| s.obj.upath != *old_path) {
                // Another name of a hard-linked file moved.
                node.update(|s| {
                    for alias in s.aliases.iter_mut().filter(|a| a.2 == *old_path) {
                        *alias = (*parent_ino, name.to_os_string(), new_path.clone());
                    }
                });
                continue;
            }
            let old_path = old_path.clone();
            node.update(|s| {
                s.parent = *parent_ino;
                s.name = name.to_os_string();
                s.obj.upath = new_path.clone();
                s.obj.path = new_path.clone();
                if let Some(d) = s.obj.dir.as_mut() {
                    d.path = new_path.clone();
                }
            });
            if node.is_dir() {
                rebases.push((old_path, new_path, node.ino));
            }
        }
        // Everything below a moved directory moves with it.
        self.nodes.rebase_below(&rebases);
    }

    pub(super) fn do_link(
        &self,
        ino: INodeNo,
        newparent: INodeNo,
        newname: &OsStr,
    ) -> Result<(FileAttr, Generation)> {
        let node = self.node(ino, "link")?;
        let dir = self.node(newparent, "link")?;
        self.writable("link", &dir)?;
        if node.is_dir() {
            return Err(Error::errno(
                libc::EPERM,
                "link",
                node.read(|s| s.obj.path.clone()),
            ));
        }
        let _w = self.lock_writes();
        self.ensure_upper(&dir)?;
        self.ensure_upper_meta(&node)?;
        let obj = node.obj();
        let parent_obj = dir.obj();
        let obj_parent = self
            .nodes
            .get(node.read(|s| s.parent))
            .ok_or_else(|| Error::new(libc::EIO, "link", &obj.path, "parent no longer known"))?
            .obj();
        let stat = dir.edit_listing(&self.stack, |l| {
            self.stack.link(&obj, &obj_parent, &parent_obj, l, newname)
        })?;
        let alias = parent_obj
            .upath
            .join(newname)
            .map_err(|e| Error::io(e, "link", &parent_obj.upath))?;
        node.update(|s| {
            s.obj.stat = stat;
            s.aliases.push((dir.ino, newname.to_os_string(), alias));
        });
        self.nodes.count_lookup(&node);
        Ok((self.attr(&node), Self::generation(&node)))
    }

    pub(super) fn do_setattr(
        &self,
        req: &Request,
        ino: INodeNo,
        change: &AttrChange,
        fh: Option<FileHandle>,
    ) -> Result<FileAttr> {
        let node = self.node(ino, "setattr")?;
        self.writable("setattr", &node)?;
        // A change like any other: under the write lock, so the node and
        // the upper agree (its path never holds a whiteout made meanwhile).
        let _w = self.lock_writes();
        if change.size.is_some() {
            self.ensure_upper(&node)?;
        } else {
            self.ensure_upper_meta(&node)?;
        }
        let obj = node.obj();
        // Removed (or its name reused) since the kernel looked it up: only
        // a truncate through an open handle still reaches it.
        let now = self.stack.restat(&obj).ok();
        let gone = !now.is_some_and(|st| st.same_object(&obj.stat));
        let mut change = change.clone();
        // A truncate, or the empty setattr of a chown -1 -1 or of the
        // kernel removing privileges before a write, by a caller without
        // CAP_FSETID clears setuid and setgid bits: with
        // FUSE_HANDLE_KILLPRIV_V2 the kernel leaves that to us. (What a
        // chown -1 -1 clears for anyone, the upper's own chown does.)
        let st = now.unwrap_or(obj.stat);
        let kill = ((change.size.is_some() || change.is_empty())
            && st.mode & (libc::S_ISUID | libc::S_ISGID) != 0)
            .then(|| super::caller::Caller::of(req).mode_after_write(st.mode, st.gid))
            .filter(|kept| *kept != st.mode)
            .map(|kept| kept & 0o7777);
        change.mode = change.mode.or(kill);
        let mut change = self.owner_change(&obj, &change)?;
        // Truncating an open file goes through its handle: the path may be
        // unlinked already.
        if let (Some(size), Some(fh)) = (change.size, fh)
            && let Some(h) = self.handles.get(&fh.0)
            && let Handle::File(f) = &*h
            && f.layer == 0
        {
            f.file
                .set_len(size)
                .map_err(|e| Error::io(e, "truncate", &obj.path))?;
            change.size = None;
            if let Some(mode) = kill.filter(|_| self.view.is_identity()) {
                // What the truncate clears goes through the handle too.
                f.file
                    .set_permissions(std::fs::Permissions::from_mode(mode))
                    .map_err(|e| Error::io(e, "truncate", &obj.path))?;
                change.mode = None;
            }
            if change.is_empty() {
                // ftruncate alone: done, and no empty setattr (which would
                // touch ctime with a chown that clears setuid bits).
                let stat = self.stack.restat(&obj)?;
                node.update(|s| s.obj.stat = stat);
                return Ok(self.attr(&node));
            }
        }
        if gone {
            return Err(super::stale(&node, "setattr"));
        }
        let stat = self.stack.set_attr(&obj, &change)?;
        node.update(|s| s.obj.stat = stat);
        Ok(self.attr(&node))
    }

    /// The owner and mode part of a setattr of the upper object `obj`, as
    /// container engines want it: ids stored mapped back, ignored when
    /// squashed, written to the override xattr instead of the inode under
    /// `xattr_permissions`. Returns what is left for the inode.
    fn owner_change(&self, obj: &Resolved, change: &AttrChange) -> Result<AttrChange> {
        let mut change = change.clone();
        if self.view.is_identity() {
            return Ok(change);
        }
        let (uid, gid) = self
            .view
            .stored_ids(change.uid.unwrap_or(0), change.gid.unwrap_or(0));
        change.uid = change.uid.map(|_| uid);
        change.gid = change.gid.map(|_| gid);
        if self.view.ignores_chown() && (change.uid.is_some() || change.gid.is_some()) {
            // As fuse-overlayfs: the owner is still stored where it can be,
            // but every owner shows as the squashed one, so a refusal
            // (rootless) is no error.
            let owner = AttrChange {
                uid: change.uid.take(),
                gid: change.gid.take(),
                ..AttrChange::default()
            };
            if self.view.upper_override().is_none()
                && let Err(e) = self.stack.set_attr(obj, &owner)
            {
                tracing::debug!(%e, "chown under squash_to_*: ignored");
            }
        }
        let Some(xname) = self.view.upper_override() else {
            return Ok(change);
        };
        if !xname.fits(obj.kind)
            || (change.uid.is_none() && change.gid.is_none() && change.mode.is_none())
        {
            return Ok(change);
        }
        let Some(mut now) = self.view.stored_override(&self.stack, obj) else {
            return Ok(change);
        };
        if let Some(u) = change.uid.take() {
            now.uid = u;
        }
        if let Some(g) = change.gid.take() {
            now.gid = g;
        }
        if let Some(m) = change.mode.take() {
            now.perm = m & 0o7777;
        }
        let value = super::view::AttrView::override_value(
            now.uid,
            now.gid,
            now.perm,
            obj.kind,
            obj.stat.rdev,
        );
        self.stack
            .write_xattr(obj, OsStr::new(xname.name()), Some(value.as_bytes()), 0)?;
        Ok(change)
    }

    pub(super) fn do_write(&self, fh: FileHandle, offset: u64, data: &[u8]) -> Result<u32> {
        let handle = self
            .handles
            .get(&fh.0)
            .ok_or_else(|| Error::errno(libc::EBADF, "write", format!("handle {}", fh.0)))?;
        let Handle::File(h) = &*handle else {
            return Err(Error::errno(
                libc::EISDIR,
                "write",
                format!("handle {}", fh.0),
            ));
        };
        h.file
            .write_all_at(data, offset)
            .map_err(|e| Error::io(e, "write", format!("inode {}", h.ino)))?;
        Ok(u32::try_from(data.len()).unwrap_or(u32::MAX))
    }

    pub(super) fn do_fsync(&self, fh: FileHandle, datasync: bool) -> Result<()> {
        let Some(handle) = self.handles.get(&fh.0) else {
            return Ok(());
        };
        let Handle::File(h) = &*handle else {
            return Ok(());
        };
        if h.layer != 0 {
            return Ok(()); // nothing of ours is dirty in a lower layer
        }
        let r = if datasync {
            h.file.sync_data()
        } else {
            h.file.sync_all()
        };
        r.map_err(|e| Error::io(e, "fsync", format!("inode {}", h.ino)))
    }

    pub(super) fn do_fallocate(
        &self,
        fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
    ) -> Result<()> {
        let handle = self
            .handles
            .get(&fh.0)
            .ok_or_else(|| Error::errno(libc::EBADF, "fallocate", format!("handle {}", fh.0)))?;
        let Handle::File(h) = &*handle else {
            return Err(Error::errno(
                libc::EISDIR,
                "fallocate",
                format!("handle {}", fh.0),
            ));
        };
        let (off, len) = (
            i64::try_from(offset).map_err(|_| Error::errno(libc::EFBIG, "fallocate", h.ino))?,
            i64::try_from(length).map_err(|_| Error::errno(libc::EFBIG, "fallocate", h.ino))?,
        );
        nix::fcntl::fallocate(
            &h.file,
            nix::fcntl::FallocateFlags::from_bits_retain(mode),
            off,
            len,
        )
        .map_err(|e| Error::io(e.into(), "fallocate", format!("inode {}", h.ino)))
    }

    pub(super) fn do_write_xattr(
        &self,
        ino: INodeNo,
        key: &OsStr,
        value: Option<&[u8]>,
        flags: i32,
    ) -> Result<()> {
        let op = crate::union::xattr_op(value);
        if self.hides_xattr(key) {
            return Err(Error::errno(libc::EPERM, op, key.to_string_lossy()));
        }
        let node = self.node(ino, op)?;
        self.writable(op, &node)?;
        let _w = self.lock_writes();
        let obj = node.obj();
        if value.is_none() && obj.layer != 0 {
            // Nothing to remove means nothing to copy up (ENODATA).
            let layer = self.stack.layer(obj.layer);
            layer
                .get_xattr(&obj.path, obj.kind == FileKind::Dir, key)
                .map_err(|e| Error::io(e, op, crate::union::layer_display(layer, &obj.path)))?;
        }
        self.ensure_upper_meta(&node)?;
        let obj = node.obj();
        self.stack.write_xattr(&obj, key, value, flags)
    }
}

/// A fuser time as (sec, nsec), UTIME_NOW for "now".
pub(super) fn time_spec(t: TimeOrNow) -> (i64, i64) {
    match t {
        TimeOrNow::Now => (0, libc::UTIME_NOW),
        TimeOrNow::SpecificTime(st) => match st.duration_since(std::time::UNIX_EPOCH) {
            Ok(d) => (d.as_secs() as i64, i64::from(d.subsec_nanos())),
            Err(e) => {
                let d = e.duration();
                let (mut s, mut n) = (-(d.as_secs() as i64), -i64::from(d.subsec_nanos()));
                if n < 0 {
                    s -= 1;
                    n += 1_000_000_000;
                }
                (s, n)
            }
        },
    }
}

impl LayerFs {
    /// The handle `create` returns with its entry: the file as it was
    /// made, when it came back open, else opened by its path.
    pub(super) fn open_created(
        &self,
        ino: INodeNo,
        flags: i32,
        made: Option<std::os::fd::OwnedFd>,
        register: impl FnOnce(&std::fs::File) -> std::io::Result<fuser::BackingId>,
    ) -> Result<(u64, super::read::Opened)> {
        let node = self.node(ino, "create")?;
        let obj = node.obj();
        let fd = match made {
            Some(fd) => fd,
            None => {
                let access = flags & libc::O_ACCMODE;
                let layer = self.stack.layer(obj.layer);
                layer
                    .open_beneath(&obj.path, access | libc::O_NOFOLLOW)
                    .map_err(|e| {
                        Error::io(e, "create", crate::union::layer_display(layer, &obj.path))
                    })?
            }
        };
        let file = std::fs::File::from(fd);
        let io = self.handle_io(
            &node,
            &file,
            self.prefers_passthrough(&obj, false),
            register,
        );
        let opened = io.opened();
        let fh = self
            .next_handle
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.handles.insert(
            fh,
            Handle::File(super::FileHandleState {
                file,
                layer: obj.layer,
                ino: node.ino,
                _io: io,
            }),
        );
        Ok((fh, opened))
    }
}
