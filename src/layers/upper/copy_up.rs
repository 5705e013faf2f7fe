//! Copy-up: a lower object copied into the upper layer, built whole in
//! the work dir and renamed into place (or linked from the hard-link
//! index, or, with metacopy, without its data).

use std::ffi::{CStr, CString, OsStr};
use std::io;
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::ffi::OsStrExt;

use super::super::at::{
    copy_data, create_excl, link_at, make_object, set_fd_times, set_owner_mode, set_times,
    set_xattr_at,
};
use super::super::{FileKind, Layer, RelPath, Stat, sys, whiteout};
use super::{METACOPY, NewObject, Upper};

impl Upper {
    /// Copy a lower object into the upper as `dir/name`: built in the work
    /// dir with its data, owner, mode, xattrs and times, fsynced, then
    /// renamed into place, so a crash never leaves a partial copy visible.
    ///
    /// With `index_key` (a hard-linked lower file) the copy is also linked
    /// into the index, or, when an earlier name made it already, that copy
    /// is linked here instead of copying again. With `metacopy` (a regular
    /// file) no data is copied: see [`Upper::build_copy`].
    #[allow(clippy::too_many_arguments)]
    pub fn copy_up(
        &self,
        src_layer: &Layer,
        src: &RelPath,
        st: &Stat,
        dir: BorrowedFd<'_>,
        name: &OsStr,
        index_key: Option<&RelPath>,
        metacopy: bool,
    ) -> io::Result<Stat> {
        let tmp = self.tmp_name();
        let work = self.work.as_fd();
        // A copy-up is not a change the user made: the parent keeps its
        // times, as with the kernel's overlayfs.
        let parent = sys::fstat(dir)?;
        let idx = self.index.layer().root_fd();
        let indexed = index_key.is_some_and(|k| sys::fstatat_nofollow(idx, k.as_c_str()).is_ok());
        let build = || -> io::Result<()> {
            match index_key {
                Some(key) if indexed => {
                    link_at(idx, key.as_c_str(), work, &tmp)?;
                    // One more upper name, the same names in the union.
                    self.adjust_nlink(key, -1)
                }
                Some(key) => {
                    self.build_copy(src_layer, src, st, &tmp, metacopy)?;
                    self.set_origin(src_layer, src, Some(key), &tmp);
                    let shown = i64::try_from(st.nlink).unwrap_or(1);
                    // Upper count: the index entry and this name.
                    self.set_nlink_diff(work, &tmp, shown - 2)?;
                    link_at(work, &tmp, idx, key.as_c_str())?;
                    self.note_origin(key, st);
                    Ok(())
                }
                None => {
                    self.build_copy(src_layer, src, st, &tmp, metacopy)?;
                    self.set_origin(src_layer, src, None, &tmp);
                    Ok(())
                }
            }
        };
        let result = build()
            .and_then(|()| self.mark_impure(dir))
            .and_then(|()| self.install(&tmp, dir, name, false))
            .and_then(|()| set_fd_times(dir, parent.atime, parent.mtime));
        let copied = self.finish(&tmp, result, dir, name)?;
        if index_key.is_none() {
            self.index.note_origin(copied.ino, st);
        }
        Ok(copied)
    }

    /// Build the copy of a lower object as `work/tmp`. A `metacopy` copy of
    /// a regular file is the kernel's metadata-only copy-up (metacopy=on):
    /// the lower's size as a hole, every xattr, owner, mode and times, and
    /// an empty `overlay.metacopy` xattr saying the data is still below.
    pub(super) fn build_copy(
        &self,
        src_layer: &Layer,
        src: &RelPath,
        st: &Stat,
        tmp: &CStr,
        metacopy: bool,
    ) -> io::Result<()> {
        let work = self.work.as_fd();
        let kind =
            FileKind::from_mode(st.mode).ok_or_else(|| io::Error::from_raw_os_error(libc::EIO))?;
        let perm = st.mode & 0o7777;
        match kind {
            FileKind::Regular if metacopy => {
                let out = create_excl(work, tmp)?;
                let len = i64::try_from(st.size)
                    .map_err(|_| io::Error::from_raw_os_error(libc::EFBIG))?;
                nix::unistd::ftruncate(&out, len)?;
                set_xattr_at(work, tmp, &self.xattr_name(METACOPY), b"")?;
            }
            FileKind::Regular => {
                let input = src_layer.open_file(src)?;
                let out = create_excl(work, tmp)?;
                copy_data(input.as_fd(), out.as_fd(), st.size)?;
                if self.durable {
                    nix::unistd::fsync(&out)?;
                }
            }
            // Owners left as they are (u32::MAX): the real ones are set
            // below, and chown to root is refused to a rootless daemon.
            FileKind::Dir => make_object(work, tmp, &NewObject::Dir, 0o700, u32::MAX, u32::MAX)?,
            FileKind::Symlink => {
                let target = src_layer.readlink(src)?;
                make_object(
                    work,
                    tmp,
                    &NewObject::Symlink(OsStr::from_bytes(&target)),
                    0o777,
                    u32::MAX,
                    u32::MAX,
                )?
            }
            FileKind::Fifo | FileKind::CharDev | FileKind::BlockDev | FileKind::Socket => {
                make_object(
                    work,
                    tmp,
                    &NewObject::Node {
                        mode: st.mode,
                        rdev: st.rdev,
                    },
                    0o600,
                    u32::MAX,
                    u32::MAX,
                )?
            }
        }
        // xattrs first: setting some may need the owner's rights later on.
        let is_dir = kind == FileKind::Dir;
        for xname in src_layer.list_xattrs(src, is_dir)? {
            let value = src_layer.get_xattr(src, is_dir, &xname)?;
            let key = CString::new(whiteout::stored_xattr_name(xname.as_bytes()))
                .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
            set_xattr_at(work, tmp, &key, &value)?;
        }
        set_owner_mode(work, tmp, kind, st.uid, st.gid, perm)?;
        set_times(work, tmp, st.atime, st.mtime)
    }
}
