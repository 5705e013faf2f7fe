//! The writable upper layer: copy-up, creating objects, whiteouts on
//! removal, rename and link — the kernel overlayfs's rules, on a stack
//! whose layer 0 is the upper. Every change lands in the upper only.
//!
//! Callers serialise mutations and keep the listings they pass in step
//! with what is on disk; each function here updates the listings it is
//! given to match what it did.

use std::ffi::OsStr;
use std::io;
use std::path::PathBuf;

use super::metacopy::CopyUp;
use super::{Child, LayerStack, Listing, MergedDir, Resolved};
use crate::error::{Error, Result};
use crate::layers::{FileKind, NewObject, RelPath, Stat, Upper, WhiteoutFormat, upper, whiteout};

/// Where the writable layer lives and how it is written.
#[derive(Debug, Clone)]
pub struct UpperSpec {
    pub upper: PathBuf,
    pub work: PathBuf,
    pub format: WhiteoutFormat,
    pub userxattr: bool,
    /// fsync copied-up data before it becomes visible (off with `volatile`).
    pub durable: bool,
}

/// What a setattr changes. Times are (sec, nsec); nsec may be UTIME_NOW.
#[derive(Debug, Clone, Default)]
pub struct AttrChange {
    pub mode: Option<u32>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub size: Option<u64>,
    pub atime: Option<(i64, i64)>,
    pub mtime: Option<(i64, i64)>,
}

impl AttrChange {
    /// Nothing to change (a setattr with no attribute: chown -1 -1).
    pub fn is_empty(&self) -> bool {
        self.mode.is_none()
            && self.uid.is_none()
            && self.gid.is_none()
            && self.size.is_none()
            && self.atime.is_none()
            && self.mtime.is_none()
    }
}

/// The two names of a rename, checked (see [`LayerStack::check_rename`]).
#[derive(Debug)]
pub struct RenameCheck {
    pub src: Child,
    pub target: Option<Child>,
    /// The target is an upper directory to clear of whiteouts first.
    pub clear_target: bool,
    /// The target is a directory with lower content.
    pub target_lower: bool,
}

impl LayerStack {
    fn upper_layer(&self, op: &'static str, path: &RelPath) -> Result<&Upper> {
        self.upper
            .as_ref()
            .ok_or_else(|| Error::errno(libc::EROFS, op, path))
    }

    fn upper_dir(&self, op: &'static str, dir: &RelPath) -> Result<std::os::fd::OwnedFd> {
        self.layer(0)
            .open_dir(dir)
            .map_err(|e| Error::io(e, op, super::layer_display(self.layer(0), dir)))
    }

    fn upper_stat(&self, op: &'static str, path: &RelPath) -> Result<Stat> {
        self.layer(0)
            .stat(path)
            .map_err(|e| Error::io(e, op, super::layer_display(self.layer(0), path)))
    }

    /// Copy a lower object up into the upper (its parent must be there
    /// already) and update the parent's listing. The inode number stays.
    /// For data, a metacopy file already up gets its data (in place).
    pub fn copy_up(
        &self,
        obj: &Resolved,
        parent_listing: &mut Listing,
        how: CopyUp,
    ) -> Result<Resolved> {
        let upper = self.upper_layer("copy up", &obj.path)?;
        if obj.layer == 0 {
            return match how {
                CopyUp::Data => self.copy_up_data(obj),
                CopyUp::Metadata => Ok(obj.clone()),
            };
        }
        let (parent, name) = obj.upath.split();
        let dir = self.upper_dir("copy up", &parent)?;
        let src = self.layer(obj.layer);
        let index_key = if obj.layer == super::INDEX_LAYER {
            Some(obj.path.clone())
        } else if obj.kind != FileKind::Dir && obj.stat.nlink > 1 {
            Some(upper.index().key(src, &obj.path, &obj.stat))
        } else {
            None
        };
        // A lower metacopy file (an old upper) is copied up as one.
        let metacopy =
            (how == CopyUp::Metadata || obj.data.is_some()) && self.writes_metacopy(obj.kind);
        let stat = upper
            .copy_up(
                src,
                &obj.path,
                &obj.stat,
                std::os::fd::AsFd::as_fd(&dir),
                name,
                index_key.as_ref(),
                metacopy,
            )
            .map_err(|e| Error::io(e, "copy up", super::layer_display(src, &obj.path)))?;
        let mut copied = obj.clone();
        // Where its data is now: below, for a metacopy copy (or an index
        // copy an earlier name made as one).
        match &index_key {
            _ if obj.layer == super::INDEX_LAYER || obj.data.is_some() => {}
            Some(key) => copied.data = self.index_data(key, obj.layer, &obj.path, &obj.stat)?,
            None if metacopy => {
                copied.data = Some(super::LowerData {
                    layer: obj.layer,
                    path: obj.path.clone(),
                    stat: obj.stat,
                })
            }
            None => {}
        }
        copied.index_key = index_key;
        copied.layer = 0;
        copied.path = obj.upath.clone();
        copied.stat = stat;
        if let Some(d) = copied.dir.as_mut() {
            d.layers.insert(0, (0, obj.upath.clone()));
        }
        if let Some(child) = parent_listing.get_mut(name) {
            child.layer = 0;
            child.lower = true;
        }
        if how == CopyUp::Data && copied.data.is_some() {
            // An index copy made without its data: it gets it now.
            return self.copy_up_data(&copied);
        }
        Ok(copied)
    }

    /// Create `name` in the upper directory `parent` (already copied up).
    /// A regular file made where no whiteout is replaced comes back open
    /// read-write too (see [`Upper::create_file_in_place`]).
    #[allow(clippy::too_many_arguments)]
    pub fn create(
        &self,
        parent: &Resolved,
        listing: &mut Listing,
        name: &OsStr,
        obj: NewObject<'_>,
        perm: u32,
        uid: u32,
        gid: u32,
    ) -> Result<(Resolved, Option<std::os::fd::OwnedFd>)> {
        let path = parent
            .path
            .join(name)
            .map_err(|e| Error::io(e, "create", &parent.path))?;
        let upper = self.upper_layer("create", &path)?;
        if listing.get(name).is_some() {
            return Err(Error::errno(libc::EEXIST, "create", &path));
        }
        if is_reserved_name(upper, name) {
            return Err(Error::new(
                libc::EINVAL,
                "create",
                &path,
                "name reserved for OCI whiteouts",
            ));
        }
        let whiteout = listing.upper_whiteouts.get(name).copied();
        // A directory over a whiteout, or in a merged directory, is made
        // opaque (the kernel's rule; in a merged parent it spares lookups
        // in the layers below).
        let hidden = whiteout.is_some() || listing.has_lower;
        let dir = self.upper_dir("create", &parent.path)?;
        let kind = match &obj {
            NewObject::File => FileKind::Regular,
            NewObject::Dir => FileKind::Dir,
            NewObject::Symlink(_) => FileKind::Symlink,
            NewObject::Node { mode, .. } => FileKind::from_mode(*mode)
                .ok_or_else(|| Error::errno(libc::EINVAL, "mknod", &path))?,
        };
        let dir = std::os::fd::AsFd::as_fd(&dir);
        // An opaque directory is made whole in the work dir.
        let in_place = match (&obj, whiteout) {
            (NewObject::Dir, None) if hidden => Ok(None),
            (_, None) => upper.create_in_place(dir, name, &obj, perm, uid, gid),
            _ => Ok(None),
        };
        let in_place = in_place
            .map_err(|e| Error::io(e, "create", super::layer_display(self.layer(0), &path)))?;
        let (stat, fd) = match in_place {
            Some((fd, stat)) => (stat, fd),
            None => {
                let stat = upper
                    .create(dir, name, &obj, perm, uid, gid, whiteout.is_some(), hidden)
                    .map_err(|e| {
                        Error::io(e, "create", super::layer_display(self.layer(0), &path))
                    })?;
                (stat, None)
            }
        };
        listing.upper_whiteouts.remove(name);
        let ino = self.inos.map(0, stat.ino);
        listing.upsert(Child {
            name: name.to_os_string(),
            kind,
            layer: 0,
            ino,
            lower: whiteout.unwrap_or(false),
        });
        let lower_path = parent_dir(parent, "create")?
            .lower_path
            .join(name)
            .map_err(|e| Error::io(e, "create", &parent.path))?;
        let created = Resolved {
            ino,
            kind,
            layer: 0,
            path: path.clone(),
            upath: path.clone(),
            stat,
            dir: (kind == FileKind::Dir).then_some(MergedDir {
                layers: vec![(0, path.clone())],
                path,
                lower_path,
            }),
            index_key: None,
            data: None,
        };
        Ok((created, fd))
    }

    /// unlink or rmdir `child` of `parent` (in the upper already), as
    /// `check_remove` returned it before the caller copied the parent up.
    /// A name that exists below is whited out.
    pub fn remove(&self, parent: &Resolved, listing: &mut Listing, child: Child) -> Result<()> {
        let op = if child.kind == FileKind::Dir {
            "rmdir"
        } else {
            "unlink"
        };
        let name = child.name.as_os_str();
        let path = parent
            .path
            .join(name)
            .map_err(|e| Error::io(e, op, &parent.path))?;
        let upper = self.upper_layer(op, &path)?;
        let dir = self.upper_dir(op, &parent.path)?;
        let dir = std::os::fd::AsFd::as_fd(&dir);
        let indexed = self.lower_alias_key(parent, &child, op)?;
        let result = match (child.layer == 0, child.lower) {
            (true, true) => upper.replace_with_whiteout(dir, name),
            (true, false) => upper.remove(dir, name, child.kind == FileKind::Dir),
            (false, _) => upper.whiteout(dir, name),
        };
        result.map_err(|e| Error::io(e, op, super::layer_display(self.layer(0), &path)))?;
        if let Some(key) = indexed {
            upper
                .adjust_nlink(&key, -1)
                .map_err(|e| Error::io(e, op, super::layer_display(self.layer(0), &path)))?;
        }
        listing.remove(name);
        if child.lower {
            listing.upper_whiteouts.insert(name.to_os_string(), true);
        }
        Ok(())
    }

    /// A lower name of a hard-linked file is about to go: its index copy
    /// (made now if none) keeps count of the names left. Returns the key
    /// whose count must drop once the name is gone.
    fn lower_alias_key(
        &self,
        parent: &Resolved,
        child: &Child,
        op: &'static str,
    ) -> Result<Option<RelPath>> {
        if child.layer == 0 || child.kind == FileKind::Dir {
            return Ok(None);
        }
        let upper = self.upper_layer(op, &parent.upath)?;
        let r = self.resolve(parent_dir(parent, op)?, child)?;
        if r.layer == super::INDEX_LAYER {
            return Ok(Some(r.path));
        }
        if r.stat.nlink < 2 {
            return Ok(None);
        }
        let src = self.layer(r.layer);
        let key = upper.index().key(src, &r.path, &r.stat);
        upper
            .ensure_indexed(src, &r.path, &r.stat, &key, self.writes_metacopy(r.kind))
            .map_err(|e| Error::io(e, op, super::layer_display(src, &r.path)))?;
        Ok(Some(key))
    }

    /// Whether `name` may be removed (ENOENT, ENOTDIR, EISDIR, ENOTEMPTY).
    pub fn check_remove(
        &self,
        parent: &Resolved,
        listing: &Listing,
        name: &OsStr,
        want_dir: bool,
    ) -> Result<Child> {
        let op = if want_dir { "rmdir" } else { "unlink" };
        let path = parent
            .path
            .join(name)
            .map_err(|e| Error::io(e, op, &parent.path))?;
        let child = listing
            .get(name)
            .cloned()
            .ok_or_else(|| Error::errno(libc::ENOENT, op, &path))?;
        let is_dir = child.kind == FileKind::Dir;
        if want_dir && !is_dir {
            return Err(Error::errno(libc::ENOTDIR, op, &path));
        }
        if !want_dir && is_dir {
            return Err(Error::errno(libc::EISDIR, op, &path));
        }
        if is_dir && !self.dir_is_empty(parent, &child, &path)? {
            return Err(Error::errno(libc::ENOTEMPTY, op, &path));
        }
        Ok(child)
    }

    /// Whether a child directory shows nothing through the mount.
    fn dir_is_empty(&self, parent: &Resolved, child: &Child, path: &RelPath) -> Result<bool> {
        let merged = self.child_dir(parent_dir(parent, "readdir")?, child, path)?;
        Ok(self.read_dir(&merged)?.is_empty())
    }

    /// Whether the directory `c` of `parent` has lower content as a lookup
    /// finds it: by name, or through the redirect it already carries.
    fn dir_shows_lower(&self, parent: &Resolved, c: &Child, at: &RelPath) -> Result<bool> {
        if c.kind != FileKind::Dir {
            return Ok(false);
        }
        let dir = self.child_dir(parent_dir(parent, "rename")?, c, at)?;
        Ok(self.shows_lower(&dir))
    }

    /// What rename(2) finds at its two names, checked before anything is
    /// copied up, in the kernel's order: ENOENT, EINVAL for an OCI name,
    /// EEXIST, ENOTDIR/EISDIR, ENOTEMPTY for a target with lower content.
    /// None when both names are one file (nothing to do).
    #[allow(clippy::too_many_arguments)]
    pub fn check_rename(
        &self,
        src_parent: &Resolved,
        src_listing: &Listing,
        name: &OsStr,
        dst_parent: &Resolved,
        dst_listing: Option<&Listing>,
        newname: &OsStr,
        flags: u32,
    ) -> Result<Option<RenameCheck>> {
        let join =
            |p: &Resolved, n: &OsStr| p.path.join(n).map_err(|e| Error::io(e, "rename", &p.path));
        let (from, to) = (join(src_parent, name)?, join(dst_parent, newname)?);
        let upper = self.upper_layer("rename", &from)?;
        let src = src_listing
            .get(name)
            .cloned()
            .ok_or_else(|| Error::errno(libc::ENOENT, "rename", &from))?;
        let target = dst_listing.unwrap_or(src_listing).get(newname).cloned();
        if is_reserved_name(upper, newname) {
            return Err(Error::new(
                libc::EINVAL,
                "rename",
                &to,
                "name reserved for OCI whiteouts",
            ));
        }
        let exchange = flags & libc::RENAME_EXCHANGE != 0;
        if flags & libc::RENAME_NOREPLACE != 0 && target.is_some() {
            return Err(Error::errno(libc::EEXIST, "rename", &to));
        }
        if exchange && target.is_none() {
            return Err(Error::errno(libc::ENOENT, "rename", &to));
        }
        if let Some(t) = &target {
            if t.ino == src.ino && !exchange {
                return Ok(None);
            }
            let (s_dir, t_dir) = (src.kind == FileKind::Dir, t.kind == FileKind::Dir);
            if !exchange && s_dir && !t_dir {
                return Err(Error::errno(libc::ENOTDIR, "rename", &to));
            }
            if !exchange && !s_dir && t_dir {
                return Err(Error::errno(libc::EISDIR, "rename", &to));
            }
        }
        // Without redirects a directory with lower content cannot move
        // (the kernel's EXDEV: mv then copies the tree).
        if !self.redirect_dir.creates() {
            let target_moves = match (&target, exchange) {
                (Some(t), true) => self.dir_shows_lower(dst_parent, t, &to)?,
                _ => false,
            };
            if target_moves || self.dir_shows_lower(src_parent, &src, &from)? {
                return Err(Error::new(
                    libc::EXDEV,
                    "rename",
                    &from,
                    "a directory with lower content moves only with redirect_dir=on",
                ));
            }
        }
        // A target directory with lower content must look empty through
        // the mount, and is cleared of its whiteouts. One without is left
        // to rename(2) to refuse (the kernel too finds out that late, after
        // it has set the source's redirect, and the upper filesystem may
        // touch the source's parent on the way). An OCI upper may hold an
        // opaque marker there: cleared, which refuses real entries.
        let (mut clear_target, mut target_lower) = (false, false);
        if let Some(t) = target.as_ref().filter(|_| !exchange) {
            let t_dir = t.kind == FileKind::Dir;
            target_lower = self.dir_shows_lower(dst_parent, t, &to)?;
            if target_lower && !self.dir_is_empty(dst_parent, t, &to)? {
                return Err(Error::errno(libc::ENOTEMPTY, "rename", &to));
            }
            clear_target =
                t_dir && t.layer == 0 && (target_lower || upper.format() == WhiteoutFormat::Oci);
        }
        Ok(Some(RenameCheck {
            src,
            target,
            clear_target,
            target_lower,
        }))
    }

    /// The redirect to record on a directory that moves from `src_parent`
    /// to `dst_parent`: its lower path, relative when only its name
    /// changes (the kernel's choice), else absolute.
    fn redirect_for(
        &self,
        src_parent: &Resolved,
        child: &Child,
        from: &RelPath,
        same_dir: bool,
    ) -> Result<Vec<u8>> {
        let pdir = parent_dir(src_parent, "rename")?;
        let lower = self.child_dir(pdir, child, from)?.lower_path;
        let (lower_parent, lower_name) = lower.split();
        if same_dir && lower_parent == pdir.lower_path {
            return Ok(std::os::unix::ffi::OsStrExt::as_bytes(lower_name).to_vec());
        }
        super::metacopy::absolute_redirect(&lower, from)
    }

    /// rename(2) inside the union. Both parents and the source (and an
    /// exchanged target) are in the upper already: the caller copied them
    /// up after [`LayerStack::check_rename`] let it through. A directory
    /// is copied up alone; a redirect keeps its lower content. EXDEV only
    /// past the kernel's redirect_max. `dst_listing` is None when both
    /// names are in one directory.
    #[allow(clippy::too_many_arguments)]
    pub fn rename(
        &self,
        src_parent: &Resolved,
        src_listing: &mut Listing,
        name: &OsStr,
        dst_parent: &Resolved,
        mut dst_listing: Option<&mut Listing>,
        newname: &OsStr,
        flags: u32,
    ) -> Result<()> {
        let from = src_parent
            .path
            .join(name)
            .map_err(|e| Error::io(e, "rename", &src_parent.path))?;
        let to = dst_parent
            .path
            .join(newname)
            .map_err(|e| Error::io(e, "rename", &dst_parent.path))?;
        let upper = self.upper_layer("rename", &from)?;
        let Some(RenameCheck {
            src,
            target,
            clear_target,
            target_lower,
        }) = self.check_rename(
            src_parent,
            src_listing,
            name,
            dst_parent,
            dst_listing.as_deref(),
            newname,
            flags,
        )?
        else {
            return Ok(()); // two names of one file: nothing to do
        };
        let dst_view = dst_listing.as_deref().unwrap_or(src_listing);
        let target_whiteout = dst_view.upper_whiteouts.get(newname).copied();
        // The kernel's rule: a directory without lower content moving into
        // a merged directory is made opaque (lookups below it stop there).
        let (dst_merged, src_merged) = (dst_view.has_lower, src_listing.has_lower);
        let exchange = flags & libc::RENAME_EXCHANGE != 0;
        if src.layer != 0 || (exchange && target.as_ref().is_some_and(|t| t.layer != 0)) {
            return Err(Error::new(
                libc::EIO,
                "rename",
                &from,
                "source not copied up",
            ));
        }
        let sdir = self.upper_dir("rename", &src_parent.path)?;
        let ddir = self.upper_dir("rename", &dst_parent.path)?;
        let (sfd, dfd) = (
            std::os::fd::AsFd::as_fd(&sdir),
            std::os::fd::AsFd::as_fd(&ddir),
        );
        let io_err =
            |e: io::Error| Error::io(e, "rename", super::layer_display(self.layer(0), &from));
        // A directory with lower content keeps it through a redirect, in
        // O(1): its content is not copied (the kernel with redirect_dir=on).
        let same_dir = src_parent.upath == dst_parent.upath;
        let src_redirect = (|| -> Result<_> {
            if !self.dir_shows_lower(src_parent, &src, &from)? {
                return Ok(None);
            }
            self.redirect_for(src_parent, &src, &from, same_dir)
                .map(Some)
        })();
        // The target may still hold whiteouts and markers: they are cleared
        // so rename can replace it (ENOTEMPTY if it holds anything else).
        // The kernel empties a target with lower content before it makes
        // the source's redirect; when that fails (EXDEV), the target stays
        // empty and opaque. Other targets (an OCI upper's opaque marker)
        // are cleared where the kernel's rename(2) would find them.
        if clear_target && target_lower {
            upper
                .clear(dfd, newname, src_redirect.is_err())
                .map_err(io_err)?;
        }
        let src_redirect = src_redirect?;
        if clear_target && !target_lower {
            upper.clear(dfd, newname, false).map_err(io_err)?;
        }
        // The source's mark, then the target's (an exchange's), each made
        // before the kernel looks at the next, so a redirect that fails
        // (EXDEV) leaves what the kernel leaves. A directory landing where
        // lower content exists must hide it, unless a redirect says where
        // its own lower content is.
        if let Some(r) = &src_redirect {
            upper.set_redirect(sfd, name, r).map_err(io_err)?;
        } else if src.kind == FileKind::Dir && dst_merged {
            upper.mark_opaque(sfd, &cstring(name)?).map_err(io_err)?;
        } else if src.kind == FileKind::Regular {
            self.redirect_metacopy(src_parent, sfd, name, !same_dir)?;
        }
        if let Some(t) = target
            .as_ref()
            .filter(|t| exchange && t.kind == FileKind::Dir)
        {
            if self.dir_shows_lower(dst_parent, t, &to)? {
                let r = self.redirect_for(dst_parent, t, &to, same_dir)?;
                upper.set_redirect(dfd, newname, &r).map_err(io_err)?;
            } else if src_merged {
                upper.mark_opaque(dfd, &cstring(newname)?).map_err(io_err)?;
            }
        }
        if exchange && target.as_ref().is_some_and(|t| t.kind == FileKind::Regular) {
            self.redirect_metacopy(dst_parent, dfd, newname, !same_dir)?;
        }
        let dst_lower = target
            .as_ref()
            .map(|t| t.lower || t.layer > 0)
            .unwrap_or(false)
            || target_whiteout.unwrap_or(false);

        if exchange {
            let t = target
                .clone()
                .ok_or_else(|| Error::errno(libc::ENOENT, "rename", &to))?;
            upper
                .rename(sfd, name, dfd, newname, libc::RENAME_EXCHANGE, false)
                .map_err(io_err)?;
            let mut moved_src = src.clone();
            moved_src.name = newname.to_os_string();
            moved_src.lower = t.lower || t.layer > 0;
            let mut moved_dst = t;
            moved_dst.name = name.to_os_string();
            moved_dst.lower = src.lower;
            src_listing.upsert(moved_dst);
            dst_listing
                .as_deref_mut()
                .unwrap_or(src_listing)
                .upsert(moved_src);
            return Ok(());
        }

        let replaced_alias = match &target {
            Some(t) if t.ino != src.ino => self.lower_alias_key(dst_parent, t, "rename")?,
            _ => None,
        };
        if target.is_none() && target_whiteout.is_some() {
            upper.rename_over_whiteout(sfd, name, dfd, newname, src.lower)
        } else {
            upper.rename(sfd, name, dfd, newname, 0, src.lower)
        }
        .map_err(io_err)?;
        if let Some(key) = replaced_alias {
            upper.adjust_nlink(&key, -1).map_err(io_err)?;
        }
        src_listing.remove(name);
        if src.lower {
            src_listing
                .upper_whiteouts
                .insert(name.to_os_string(), true);
        }
        let dst = dst_listing.unwrap_or(src_listing);
        dst.upper_whiteouts.remove(newname);
        let mut moved = src;
        moved.name = newname.to_os_string();
        moved.lower = dst_lower;
        dst.upsert(moved);
        Ok(())
    }

    /// link(2): a new name in `parent` for the upper object `obj`, whose
    /// own parent is `obj_parent`.
    pub fn link(
        &self,
        obj: &Resolved,
        obj_parent: &Resolved,
        parent: &Resolved,
        listing: &mut Listing,
        newname: &OsStr,
    ) -> Result<Stat> {
        let to = parent
            .path
            .join(newname)
            .map_err(|e| Error::io(e, "link", &parent.path))?;
        let upper = self.upper_layer("link", &to)?;
        if listing.get(newname).is_some() {
            return Err(Error::errno(libc::EEXIST, "link", &to));
        }
        if obj.layer != 0 {
            return Err(Error::new(
                libc::EIO,
                "link",
                &obj.path,
                "source not copied up",
            ));
        }
        let whiteout = listing.upper_whiteouts.get(newname).copied();
        let (sparent, sname) = obj.path.split();
        let sdir = self.upper_dir("link", &sparent)?;
        // A metacopy file's names may be in other directories: each finds
        // its data through an absolute redirect (ovl_set_link_redirect).
        if obj.data.is_some() && obj.layer == 0 {
            self.redirect_metacopy(obj_parent, std::os::fd::AsFd::as_fd(&sdir), sname, true)?;
        }
        let ddir = self.upper_dir("link", &parent.path)?;
        let stat = upper
            .link(
                std::os::fd::AsFd::as_fd(&sdir),
                sname,
                std::os::fd::AsFd::as_fd(&ddir),
                newname,
                whiteout.is_some(),
            )
            .map_err(|e| Error::io(e, "link", super::layer_display(self.layer(0), &to)))?;
        listing.upper_whiteouts.remove(newname);
        listing.upsert(Child {
            name: newname.to_os_string(),
            kind: obj.kind,
            layer: 0,
            ino: obj.ino,
            lower: whiteout.unwrap_or(false),
        });
        Ok(stat)
    }

    /// Apply a setattr to an upper object; returns its new stat.
    pub fn set_attr(&self, obj: &Resolved, change: &AttrChange) -> Result<Stat> {
        self.upper_layer("setattr", &obj.path)?;
        if obj.layer != 0 {
            return Err(Error::new(libc::EIO, "setattr", &obj.path, "not copied up"));
        }
        let (parent, name) = obj.path.split();
        let dir = self.upper_dir("setattr", &parent)?;
        let dfd = std::os::fd::AsFd::as_fd(&dir);
        let cname = cstring(name)?;
        let err =
            |e: io::Error| Error::io(e, "setattr", super::layer_display(self.layer(0), &obj.path));
        if let Some(size) = change.size {
            let f = self
                .layer(0)
                .open_beneath(&obj.path, libc::O_WRONLY | libc::O_NOFOLLOW)
                .map_err(err)?;
            let len = i64::try_from(size)
                .map_err(|_| Error::errno(libc::EFBIG, "truncate", &obj.path))?;
            nix::unistd::ftruncate(&f, len).map_err(|e| err(e.into()))?;
        }
        // A setattr that changes nothing (chown(path, -1, -1)) still
        // touches ctime, as it does on the kernel's overlayfs and ext4:
        // chown with -1, -1 is how to ask the upper filesystem for that.
        if change.uid.is_some() || change.gid.is_some() || change.is_empty() {
            // None (-1) leaves an id unchanged.
            nix::unistd::fchownat(
                dfd,
                cname.as_c_str(),
                change.uid.map(nix::unistd::Uid::from_raw),
                change.gid.map(nix::unistd::Gid::from_raw),
                nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
            )
            .map_err(|e| err(e.into()))?;
        }
        if let Some(mode) = change.mode {
            nix::sys::stat::fchmodat(
                dfd,
                cname.as_c_str(),
                nix::sys::stat::Mode::from_bits_truncate(mode & 0o7777),
                nix::sys::stat::FchmodatFlags::FollowSymlink,
            )
            .map_err(|e| err(e.into()))?;
        }
        if change.atime.is_some() || change.mtime.is_some() {
            let omit = (0, libc::UTIME_OMIT);
            upper::set_times(
                dfd,
                &cname,
                change.atime.unwrap_or(omit),
                change.mtime.unwrap_or(omit),
            )
            .map_err(err)?;
        }
        self.upper_stat("setattr", &obj.path)
    }

    /// Set (`Some(value)`) or remove (`None`) an xattr of an upper object.
    pub fn write_xattr(
        &self,
        obj: &Resolved,
        key: &OsStr,
        value: Option<&[u8]>,
        flags: i32,
    ) -> Result<()> {
        let op = xattr_op(value);
        let upper = self.upper_layer(op, &obj.path)?;
        let (parent, name) = obj.path.split();
        let dir = self.upper_dir(op, &parent)?;
        let dfd = std::os::fd::AsFd::as_fd(&dir);
        match value {
            Some(v) => upper.set_xattr(dfd, name, key, v, flags),
            None => upper.remove_xattr(dfd, name, key),
        }
        .map_err(|e| Error::io(e, op, super::layer_display(self.layer(0), &obj.path)))
    }

    /// Re-read what the upper says of an upper object.
    pub fn restat(&self, obj: &Resolved) -> Result<Stat> {
        self.layer(obj.layer).stat(&obj.path).map_err(|e| {
            Error::io(
                e,
                "stat",
                super::layer_display(self.layer(obj.layer), &obj.path),
            )
        })
    }
}

/// The name of an xattr write, for messages: set with a value, else remove.
pub fn xattr_op(value: Option<&[u8]>) -> &'static str {
    if value.is_some() {
        "setxattr"
    } else {
        "removexattr"
    }
}

fn parent_dir<'a>(parent: &'a Resolved, op: &'static str) -> Result<&'a MergedDir> {
    parent
        .dir
        .as_ref()
        .ok_or_else(|| Error::errno(libc::ENOTDIR, op, &parent.upath))
}

/// In an OCI-format upper, `.wh.*` names are whiteouts: a file cannot be
/// called that.
fn is_reserved_name(upper: &Upper, name: &OsStr) -> bool {
    upper.format() == WhiteoutFormat::Oci
        && std::os::unix::ffi::OsStrExt::as_bytes(name).starts_with(whiteout::OCI_WHITEOUT_PREFIX)
}

fn cstring(name: &OsStr) -> Result<std::ffi::CString> {
    std::ffi::CString::new(std::os::unix::ffi::OsStrExt::as_bytes(name))
        .map_err(|_| Error::errno(libc::EINVAL, "name", name.to_string_lossy()))
}
