//! Writing the upper layer: whiteouts and opaque markers in the chosen
//! format, objects built in the work directory and renamed into place,
//! and copying a lower object's data and metadata. Policy (when to copy
//! up, when a whiteout is needed) is the union's; this is only how. The
//! single calls on a directory fd (make, remove, copy data, set times and
//! owners) are in `at.rs`.

mod copy_up;

use std::ffi::{CStr, CString, OsStr};
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

use super::at::{
    copy_data, create_empty, link_at, make_object, remove_contents, remove_entry, set_xattr_at,
    with_proc_path,
};
pub use super::at::{rename2, set_owner_mode, set_times};
use super::index::{self, Index};
use super::{Layer, RelPath, Stat, sys, whiteout};

/// How whiteouts and opaque directories are written into the upper layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum WhiteoutFormat {
    /// Character device 0/0 and `trusted.overlay.opaque=y`, as the kernel
    /// writes them, so the kernel can mount the same upper.
    #[default]
    Overlay,
    /// `.wh.NAME` files and `.wh..wh..opq` markers.
    Oci,
}

/// What a new object is.
#[derive(Debug, Clone)]
pub enum NewObject<'a> {
    File,
    Dir,
    Symlink(&'a OsStr),
    /// Fifo, socket or device: the full mode (type bits included) and rdev.
    Node {
        mode: u32,
        rdev: u64,
    },
}

/// The upper layer with its work directory.
#[derive(Debug)]
pub struct Upper {
    work: OwnedFd,
    format: WhiteoutFormat,
    /// `trusted.overlay.*` or, with `userxattr`, `user.overlay.*`.
    xattr_prefix: &'static str,
    /// fsync copied-up files before they become visible (not with volatile).
    durable: bool,
    counter: AtomicU64,
    /// The upper filesystem refused O_TMPFILE once: new files go through
    /// the work dir.
    no_tmpfile: std::sync::atomic::AtomicBool,
    /// Copies of hard-linked lower files, by lower identity, so every name
    /// of one lower file shares one upper inode (the kernel's index=on).
    /// ... and where each copy-up's origin is recorded.
    index: Index,
}

/// The xattr (after the prefix) marking a metadata-only copy.
const METACOPY: &str = "metacopy";

/// The longest name a filesystem takes.
const NAME_MAX: usize = 255;

/// The name the kernel's overlayfs uses for its temporary area inside the
/// work dir; sharing it keeps an upper/work pair mountable by either.
const WORK_SUBDIR: &CStr = c"work";

pub(super) fn cstr(name: &OsStr) -> io::Result<CString> {
    CString::new(name.as_bytes()).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))
}

pub(super) fn cvt(ret: libc::c_int) -> io::Result<()> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

impl Upper {
    /// Open the work dir, creating `WORK/work` and clearing what a crashed
    /// run left in it, so no half-built object survives a crash.
    pub fn open(
        work_dir: &Path,
        format: WhiteoutFormat,
        userxattr: bool,
        durable: bool,
        lowers: &[Layer],
    ) -> io::Result<Upper> {
        let root = sys::open_dir_path(work_dir)?;
        // SAFETY: valid fd and C string.
        let made = unsafe { libc::mkdirat(root.as_raw_fd(), WORK_SUBDIR.as_ptr(), 0o700) };
        if made < 0 {
            let e = io::Error::last_os_error();
            if e.raw_os_error() != Some(libc::EEXIST) {
                return Err(e);
            }
        }
        let work = sys::openat_beneath(
            root.as_fd(),
            WORK_SUBDIR,
            libc::O_RDONLY | libc::O_DIRECTORY,
        )?;
        remove_contents(work.as_fd())?;
        let xattr_prefix = if userxattr {
            "user.overlay."
        } else {
            "trusted.overlay."
        };
        let index = Index::open_writable(work_dir, lowers, xattr_prefix)?;
        Ok(Upper {
            index,
            work,
            format,
            xattr_prefix,
            durable,
            counter: AtomicU64::new(0),
            no_tmpfile: std::sync::atomic::AtomicBool::new(false),
        })
    }

    pub fn format(&self) -> WhiteoutFormat {
        self.format
    }

    /// The hard-link index: its keys are paths in [`Index::layer`].
    pub fn index(&self) -> &Index {
        &self.index
    }

    /// The lower (dev, ino) an upper inode is a copy of.
    pub fn origin_of(&self, upper_ino: u64) -> Option<(u64, u64)> {
        self.index.origin_of(upper_ino)
    }

    /// Whether the upper directory `dir` is marked impure (holds copied-up
    /// objects: the kernel's `overlay.impure`).
    pub fn dir_is_impure(&self, upper: &Layer, dir: &RelPath) -> bool {
        upper.open_dir(dir).is_ok_and(|fd| {
            sys::fget_xattr_opt(fd.as_fd(), &self.xattr_name("impure")).is_ok_and(|v| v.is_some())
        })
    }

    /// The lower (dev, ino) the upper object `dir/name` (inode
    /// `upper_ino`) is a copy of by its `overlay.origin` xattr (a copy-up
    /// the kernel made), decoded against `lowers`; remembered for the
    /// mount, a miss too.
    pub fn kernel_origin(
        &self,
        upper: &Layer,
        dir: &RelPath,
        name: &OsStr,
        upper_ino: u64,
        lowers: &[Layer],
    ) -> Option<(u64, u64)> {
        if self.index.known_without_origin(upper_ino) {
            return None;
        }
        let fb = upper
            .open_beneath(dir, libc::O_PATH | libc::O_DIRECTORY)
            .ok()
            .and_then(|pfd| {
                with_proc_path(pfd.as_fd(), &cstr(name).ok()?, |p| {
                    sys::get_xattr(sys::XattrTarget::Path(p), &self.xattr_name("origin"))
                })
                .ok()
            });
        self.index.remember_origin(upper_ino, fb.as_deref(), lowers)
    }

    fn note_origin(&self, key: &RelPath, st: &Stat) {
        if let Ok(entry) = self.index.layer().stat(key) {
            self.index.note_origin(entry.ino, st);
        }
    }

    /// Record the kernel's origin of `src` (a lower object) on the new
    /// copy `work/tmp` (the index entry `key`, if any), so the kernel's
    /// overlayfs sees it as a copy-up. Only for the kernel: nothing in an
    /// OCI upper or where the lower has no file handles, and a refusal
    /// (user xattrs on a symlink, no trusted xattrs for a rootless daemon)
    /// costs nothing layerfs reads.
    fn set_origin(&self, src_layer: &Layer, src: &RelPath, key: Option<&RelPath>, tmp: &CStr) {
        if self.format != WhiteoutFormat::Overlay {
            return;
        }
        let fb = match key.and_then(index::key_origin) {
            Some(fb) => fb,
            None => match self.index.encode(src_layer, src) {
                Ok(fb) => fb,
                Err(_) => return,
            },
        };
        if let Err(e) = set_xattr_at(self.work.as_fd(), tmp, &self.xattr_name("origin"), &fb) {
            tracing::debug!(error = %e, path = %src, "cannot record a copy-up's origin xattr");
        }
    }

    /// How many more (or fewer) names the union shows for an indexed
    /// inode than the upper filesystem counts: the kernel's
    /// `overlay.nlink` xattr, "U+N" relative to the upper link count.
    pub fn nlink_diff(&self, layer: &Layer, rel: &RelPath) -> Option<i64> {
        let (parent, name) = rel.split();
        let pfd = layer
            .open_beneath(&parent, libc::O_PATH | libc::O_DIRECTORY)
            .ok()?;
        let key = self.xattr_name("nlink");
        let value = with_proc_path(pfd.as_fd(), &cstr(name).ok()?, |p| {
            sys::get_xattr(sys::XattrTarget::Path(p), &key)
        })
        .ok()?;
        std::str::from_utf8(value.strip_prefix(b"U")?)
            .ok()?
            .parse()
            .ok()
    }

    /// Make sure a hard-linked lower file has its index copy (made without
    /// any upper name), so a name of it can go while the others stay;
    /// `metacopy`: without its data (see [`Upper::build_copy`]).
    pub fn ensure_indexed(
        &self,
        src_layer: &Layer,
        src: &RelPath,
        st: &Stat,
        key: &RelPath,
        metacopy: bool,
    ) -> io::Result<()> {
        let idx = self.index.layer().root_fd();
        if sys::fstatat_nofollow(idx, key.as_c_str()).is_ok() {
            return Ok(());
        }
        let tmp = self.tmp_name();
        let work = self.work.as_fd();
        let result = self
            .build_copy(src_layer, src, st, &tmp, metacopy)
            .and_then(|()| {
                self.set_origin(src_layer, src, Some(key), &tmp);
                // Upper count: the index entry alone.
                self.set_nlink_diff(work, &tmp, i64::try_from(st.nlink).unwrap_or(1) - 1)?;
                link_at(work, &tmp, idx, key.as_c_str())
            });
        let _ = remove_entry(work, &tmp);
        if result.is_ok() {
            self.note_origin(key, st);
        }
        result
    }

    /// Change the name count of an indexed inode by `delta`.
    pub fn adjust_nlink(&self, key: &RelPath, delta: i64) -> io::Result<()> {
        let diff = self.nlink_diff(self.index.layer(), key).unwrap_or(0) + delta;
        let (dir, name) = key.split();
        let dir = self.index.layer().open_dir(&dir)?;
        self.set_nlink_diff(dir.as_fd(), &cstr(name)?, diff)
    }

    fn set_nlink_diff(&self, dir: BorrowedFd<'_>, name: &CStr, diff: i64) -> io::Result<()> {
        let key = self.xattr_name("nlink");
        let value = format!("U{diff:+}");
        match set_xattr_at(dir, name, &key, value.as_bytes()) {
            // `user.*` xattrs go on files and directories only: a hard-
            // linked fifo or device shows its upper link count.
            Err(e)
                if e.raw_os_error() == Some(libc::EPERM)
                    && self.xattr_prefix.starts_with("user.") =>
            {
                tracing::debug!(?name, "no link-count xattr on a special file (userxattr)");
                Ok(())
            }
            other => other,
        }
    }

    fn tmp_name(&self) -> CString {
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        CString::new(format!("#lfs{}.{n}", std::process::id()))
            .unwrap_or_else(|_| CString::from(c"#lfs"))
    }

    fn xattr_name(&self, what: &str) -> CString {
        CString::new(format!("{}{what}", self.xattr_prefix))
            .unwrap_or_else(|_| CString::from(c"trusted.overlay.opaque"))
    }

    /// Create a new object named `name` in `dir`, owned by uid/gid with
    /// exactly `perm`, replacing the whiteout there if `over_whiteout`. A
    /// directory is made opaque when the name is `hidden` below, so nothing
    /// below shows through it. Returns its stat.
    #[allow(clippy::too_many_arguments)]
    pub fn create(
        &self,
        dir: BorrowedFd<'_>,
        name: &OsStr,
        obj: &NewObject<'_>,
        perm: u32,
        uid: u32,
        gid: u32,
        over_whiteout: bool,
        hidden: bool,
    ) -> io::Result<Stat> {
        let tmp = self.tmp_name();
        let work = self.work.as_fd();
        let made = make_object(work, &tmp, obj, perm, uid, gid);
        let result = made.and_then(|()| {
            if hidden && matches!(obj, NewObject::Dir) {
                self.mark_opaque(work, &tmp)?;
            }
            self.install(&tmp, dir, name, over_whiteout)
        });
        self.finish(&tmp, result, dir, name)
    }

    /// Create `obj` as `dir/name`, where no whiteout is to be replaced,
    /// owned by uid/gid with exactly `perm`: made as its owner
    /// (at::create_as_owner), or else, for a regular file, unnamed in
    /// `dir` (O_TMPFILE), its owner and mode set through the fd, then
    /// linked in; so it is never seen half made and needs neither the work
    /// dir nor a rename (the kernel's overlayfs, too, creates in place
    /// where no whiteout is replaced). Returns its stat, and a regular
    /// file open read-write; None where neither way is open here (the
    /// caller then goes through the work dir).
    pub fn create_in_place(
        &self,
        dir: BorrowedFd<'_>,
        name: &OsStr,
        obj: &NewObject<'_>,
        perm: u32,
        uid: u32,
        gid: u32,
    ) -> io::Result<Option<(Option<OwnedFd>, Stat)>> {
        use nix::errno::Errno;
        use nix::sys::stat::Mode;
        if let Some(made) = super::at::create_as_owner(dir, &cstr(name)?, obj, perm, uid, gid)? {
            return Ok(Some(made));
        }
        if !matches!(obj, NewObject::File) {
            return Ok(None);
        }
        if self.no_tmpfile.load(Ordering::Relaxed) {
            return Ok(None);
        }
        let flags =
            nix::fcntl::OFlag::O_TMPFILE | nix::fcntl::OFlag::O_RDWR | nix::fcntl::OFlag::O_CLOEXEC;
        let fd = match nix::fcntl::openat(dir, c".", flags, Mode::from_bits_truncate(0o600)) {
            Ok(fd) => fd,
            Err(Errno::EOPNOTSUPP | Errno::EISDIR | Errno::EINVAL) => {
                self.no_tmpfile.store(true, Ordering::Relaxed);
                return Ok(None);
            }
            Err(e) => return Err(e.into()),
        };
        nix::unistd::fchown(
            &fd,
            Some(nix::unistd::Uid::from_raw(uid)),
            Some(nix::unistd::Gid::from_raw(gid)),
        )?;
        // After chown, which clears setuid/setgid.
        nix::sys::stat::fchmod(&fd, Mode::from_bits_truncate(perm & 0o7777))?;
        let proc = format!("/proc/self/fd/{}", fd.as_raw_fd());
        nix::unistd::linkat(
            nix::fcntl::AT_FDCWD,
            proc.as_str(),
            dir,
            &*cstr(name)?,
            nix::fcntl::AtFlags::AT_SYMLINK_FOLLOW,
        )?;
        let st = sys::fstat(fd.as_fd())?;
        Ok(Some((Some(fd), st)))
    }

    /// After building `work/tmp` and installing it as `dir/name`: on
    /// failure nothing is left in the work dir; on success, its stat.
    fn finish(
        &self,
        tmp: &CStr,
        result: io::Result<()>,
        dir: BorrowedFd<'_>,
        name: &OsStr,
    ) -> io::Result<Stat> {
        if result.is_err() {
            let _ = remove_entry(self.work.as_fd(), tmp);
        }
        result?;
        sys::fstatat_nofollow(dir, &cstr(name)?)
    }

    /// Move `work/tmp` to `dir/name`; with `over_whiteout`, the whiteout
    /// there is replaced in the same step.
    fn install(
        &self,
        tmp: &CStr,
        dir: BorrowedFd<'_>,
        name: &OsStr,
        over_whiteout: bool,
    ) -> io::Result<()> {
        let cname = cstr(name)?;
        let work = self.work.as_fd();
        if !over_whiteout {
            return rename2(work, tmp, dir, &cname, libc::RENAME_NOREPLACE);
        }
        if self.whiteout_is_char_dev(name) {
            // Exchange, so a directory can take a char device's place.
            rename2(work, tmp, dir, &cname, libc::RENAME_EXCHANGE)?;
            remove_entry(work, tmp)
        } else {
            rename2(work, tmp, dir, &cname, libc::RENAME_NOREPLACE)?;
            self.remove_whiteout(dir, name)
        }
    }

    /// Mark an upper directory as holding copied-up objects (the kernel's
    /// `overlay.impure`), so the kernel's readdir shows their origins'
    /// inode numbers. Only where the upper keeps overlay xattrs, and only
    /// once (setting it again would touch the directory's ctime).
    fn mark_impure(&self, dir: BorrowedFd<'_>) -> io::Result<()> {
        if self.format != WhiteoutFormat::Overlay {
            return Ok(());
        }
        let key = self.xattr_name("impure");
        let marked = with_proc_path(dir, c".", |p| {
            sys::get_xattr(sys::XattrTarget::Path(p), &key)
        });
        if marked.is_ok() {
            return Ok(());
        }
        match with_proc_path(dir, c".", |p| {
            sys::set_xattr(sys::XattrTarget::Path(p), &key, b"y")
        }) {
            Err(e) => {
                tracing::debug!(error = %e, "cannot mark an upper directory impure");
                Ok(())
            }
            Ok(()) => Ok(()),
        }
    }

    /// Make `dir/name` (in the upper) opaque.
    pub fn mark_opaque(&self, dir: BorrowedFd<'_>, name: &CStr) -> io::Result<()> {
        let fd = sys::openat_beneath(
            dir,
            name,
            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW,
        )?;
        match self.format {
            WhiteoutFormat::Overlay => {
                let key = self.xattr_name("opaque");
                // SAFETY: valid fd, C string and buffer.
                cvt(unsafe {
                    libc::fsetxattr(fd.as_raw_fd(), key.as_ptr(), b"y".as_ptr().cast(), 1, 0)
                })
            }
            WhiteoutFormat::Oci => {
                // A marker file is an entry: keep the directory's times, as
                // the kernel's opaque xattr does.
                let before = sys::fstat(fd.as_fd())?;
                let marker = CString::new(whiteout::OCI_OPAQUE_MARKER).unwrap_or_default();
                match create_empty(fd.as_fd(), &marker) {
                    // Opaque already.
                    Err(e) if e.raw_os_error() == Some(libc::EEXIST) => return Ok(()),
                    other => other?,
                }
                set_times(fd.as_fd(), c".", before.atime, before.mtime)
            }
        }
    }

    /// Record where the lower content of the upper directory `dir/name`
    /// (or the data of the metacopy file there) lives, as the kernel's
    /// overlayfs does with redirect_dir=on.
    pub fn set_redirect(&self, dir: BorrowedFd<'_>, name: &OsStr, target: &[u8]) -> io::Result<()> {
        set_xattr_at(dir, &cstr(name)?, &self.xattr_name("redirect"), target)
    }

    /// Whether metadata-only copies can be written here: the kernel's
    /// format only (an OCI upper is never mounted by the kernel).
    pub fn writes_metacopy(&self) -> bool {
        self.format == WhiteoutFormat::Overlay
    }

    /// Copy the data of the metacopy file `rel` of the upper layer `upper`
    /// from `src` in `src_layer` into it, in place (the inode stays, as
    /// with the kernel's `ovl_copy_up_meta_inode_data`), fsynced, then
    /// drop its `overlay.metacopy` mark. A crash before that leaves it a
    /// metacopy file, which still reads the lower data.
    pub fn copy_data_in_place(
        &self,
        upper: &Layer,
        rel: &RelPath,
        src_layer: &Layer,
        src: &RelPath,
        size: u64,
    ) -> io::Result<Stat> {
        let out = upper.open_beneath(rel, libc::O_WRONLY | libc::O_NOFOLLOW)?;
        let input = src_layer.open_file(src)?;
        copy_data(input.as_fd(), out.as_fd(), size)?;
        if self.durable {
            nix::unistd::fsync(&out)?;
        }
        sys::fremove_xattr_opt(out.as_fd(), &self.xattr_name(METACOPY))?;
        sys::fstat(out.as_fd())
    }

    /// Put a whiteout for `name` into `dir`, where nothing is. It is made
    /// in the work dir and renamed into place, as the kernel does, so it
    /// never takes the group of a setgid directory.
    pub fn whiteout(&self, dir: BorrowedFd<'_>, name: &OsStr) -> io::Result<()> {
        let (target, char_dev) = self.whiteout_entry(name)?;
        let tmp = self.tmp_name();
        let work = self.work.as_fd();
        let made = if char_dev {
            // SAFETY: valid fd and C string.
            cvt(unsafe { libc::mknodat(work.as_raw_fd(), tmp.as_ptr(), libc::S_IFCHR, 0) })
        } else {
            create_empty(work, &tmp)
        };
        let result = made.and_then(|()| rename2(work, &tmp, dir, &target, libc::RENAME_NOREPLACE));
        if result.is_err() {
            let _ = remove_entry(work, &tmp);
        }
        result
    }

    /// Replace the upper object `dir/name` by a whiteout in one step (the
    /// old object goes to the work dir and is removed there, with its
    /// content when it is a directory of whiteouts).
    pub fn replace_with_whiteout(&self, dir: BorrowedFd<'_>, name: &OsStr) -> io::Result<()> {
        let cname = cstr(name)?;
        self.check_only_whiteouts(dir, &cname)?;
        let work = self.work.as_fd();
        match self.format {
            WhiteoutFormat::Overlay => {
                let tmp = self.tmp_name();
                // SAFETY: valid fd and C string.
                cvt(unsafe { libc::mknodat(work.as_raw_fd(), tmp.as_ptr(), libc::S_IFCHR, 0) })?;
                if let Err(e) = rename2(work, &tmp, dir, &cname, libc::RENAME_EXCHANGE) {
                    let _ = remove_entry(work, &tmp);
                    return Err(e);
                }
                remove_entry(work, &tmp)
            }
            WhiteoutFormat::Oci => {
                let tmp = self.tmp_name();
                rename2(dir, &cname, work, &tmp, 0)?;
                remove_entry(work, &tmp)?;
                self.whiteout(dir, name)
            }
        }
    }

    /// Remove the upper object `dir/name`; a directory may still hold
    /// whiteouts and markers (it is empty as seen through the mount).
    pub fn remove(&self, dir: BorrowedFd<'_>, name: &OsStr, is_dir: bool) -> io::Result<()> {
        let cname = cstr(name)?;
        if !is_dir {
            // One step, as the kernel unlinks an upper-only file; EISDIR
            // should it be a directory after all.
            return nix::unistd::unlinkat(dir, &*cname, nix::unistd::UnlinkatFlags::NoRemoveDir)
                .map_err(io::Error::from);
        }
        self.check_only_whiteouts(dir, &cname)?;
        let tmp = self.tmp_name();
        // Through the work dir, so a crash never leaves it half removed.
        rename2(dir, &cname, self.work.as_fd(), &tmp, 0)?;
        remove_entry(self.work.as_fd(), &tmp)
    }

    /// Remove every whiteout and opaque marker inside the upper directory
    /// `dir/name` (it must hold nothing else), so rename(2) can replace it.
    /// With `hide_lower` (a directory with lower content) it is left
    /// opaque and without a redirect, as the kernel leaves the merge
    /// directory it empties, which shows should the rename still fail.
    pub fn clear(&self, dir: BorrowedFd<'_>, name: &OsStr, hide_lower: bool) -> io::Result<()> {
        let cname = cstr(name)?;
        let flags = libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW;
        let fd = sys::openat_beneath(dir, &cname, flags)?;
        self.holds_only_whiteouts(fd.as_fd())?;
        remove_contents(fd.as_fd())?;
        if !hide_lower {
            return Ok(());
        }
        self.mark_opaque(dir, &cname)?;
        sys::fremove_xattr_opt(fd.as_fd(), &self.xattr_name("redirect")).map(drop)
    }

    /// ENOTEMPTY unless the upper directory `dir/name` (if it is one)
    /// holds only whiteouts and markers of this upper's format: the last
    /// guard before its content is deleted, should the merged view that
    /// called it empty ever be wrong.
    fn check_only_whiteouts(&self, dir: BorrowedFd<'_>, name: &CStr) -> io::Result<()> {
        let flags = libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW;
        match sys::openat_beneath(dir, name, flags) {
            Ok(fd) => self.holds_only_whiteouts(fd.as_fd()),
            Err(e) if e.raw_os_error() == Some(libc::ENOTDIR) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// ENOTEMPTY unless the directory open at `fd` holds only whiteouts
    /// and markers of this upper's format.
    fn holds_only_whiteouts(&self, fd: BorrowedFd<'_>) -> io::Result<()> {
        let oci = self.format == WhiteoutFormat::Oci;
        let mut d = nix::dir::Dir::from_fd(fd.try_clone_to_owned()?).map_err(io::Error::from)?;
        for entry in d.iter() {
            let entry = entry.map_err(io::Error::from)?;
            let n = entry.file_name();
            if matches!(n.to_bytes(), b"." | b"..") {
                continue;
            }
            let marks = whiteout::DirMarks::default();
            if let whiteout::Classified::Object(_) =
                whiteout::classify(fd, n, entry.file_type(), marks, oci)?
            {
                return Err(io::Error::from_raw_os_error(libc::ENOTEMPTY));
            }
        }
        Ok(())
    }

    /// Rename within the upper; `flags` as renameat2 takes them. With
    /// `leave_whiteout` the source name is left whited out.
    pub fn rename(
        &self,
        from_dir: BorrowedFd<'_>,
        from: &OsStr,
        to_dir: BorrowedFd<'_>,
        to: &OsStr,
        flags: u32,
        leave_whiteout: bool,
    ) -> io::Result<()> {
        let (cf, ct) = (cstr(from)?, cstr(to)?);
        match (leave_whiteout, self.format) {
            (true, WhiteoutFormat::Overlay) => {
                rename2(from_dir, &cf, to_dir, &ct, flags | libc::RENAME_WHITEOUT)
            }
            (true, WhiteoutFormat::Oci) => {
                rename2(from_dir, &cf, to_dir, &ct, flags)?;
                self.whiteout(from_dir, from)
            }
            (false, _) => rename2(from_dir, &cf, to_dir, &ct, flags),
        }
    }

    /// Rename onto a name that holds only a whiteout: the whiteout goes,
    /// and with `leave_whiteout` the source name is whited out. In the
    /// overlay format the two swap places in one step, as the kernel does
    /// (the whiteout keeps its owner).
    pub fn rename_over_whiteout(
        &self,
        from_dir: BorrowedFd<'_>,
        from: &OsStr,
        to_dir: BorrowedFd<'_>,
        to: &OsStr,
        leave_whiteout: bool,
    ) -> io::Result<()> {
        // Swapping works when the whiteout there is the one the source
        // name needs (a char device under either name).
        let swap =
            self.whiteout_is_char_dev(to) && (!leave_whiteout || self.whiteout_is_char_dev(from));
        if !swap {
            self.remove_whiteout(to_dir, to)?;
            return self.rename(from_dir, from, to_dir, to, 0, leave_whiteout);
        }
        let cf = cstr(from)?;
        rename2(from_dir, &cf, to_dir, &cstr(to)?, libc::RENAME_EXCHANGE)?;
        if leave_whiteout {
            Ok(())
        } else {
            remove_entry(from_dir, &cf)
        }
    }

    /// Remove the whiteout for `name` in `dir` (before a rename lands on it).
    fn remove_whiteout(&self, dir: BorrowedFd<'_>, name: &OsStr) -> io::Result<()> {
        remove_entry(dir, &self.whiteout_entry(name)?.0)
    }

    /// The entry that whites `name` out in this upper, and whether it is a
    /// char device (else an empty `.wh.NAME` file).
    fn whiteout_entry(&self, name: &OsStr) -> io::Result<(CString, bool)> {
        if self.whiteout_is_char_dev(name) {
            Ok((cstr(name)?, true))
        } else {
            Ok((oci_whiteout_name(name)?, false))
        }
    }

    /// Whether this upper whites `name` out with a char device 0/0 of that
    /// name (the overlay format, and names too long for `.wh.NAME`).
    fn whiteout_is_char_dev(&self, name: &OsStr) -> bool {
        self.format == WhiteoutFormat::Overlay || !oci_fits(name)
    }

    /// Set an xattr on an upper object, by the name the mount shows.
    pub fn set_xattr(
        &self,
        dir: BorrowedFd<'_>,
        name: &OsStr,
        key: &OsStr,
        value: &[u8],
        flags: i32,
    ) -> io::Result<()> {
        with_proc_path(dir, &cstr(name)?, |p| {
            let k = cstr(OsStr::from_bytes(&whiteout::stored_xattr_name(
                key.as_bytes(),
            )))?;
            // SAFETY: valid C strings and buffer.
            cvt(unsafe {
                libc::lsetxattr(
                    p.as_ptr(),
                    k.as_ptr(),
                    value.as_ptr().cast(),
                    value.len(),
                    flags,
                )
            })
        })
    }

    /// Remove an xattr of an upper object, by the name the mount shows.
    pub fn remove_xattr(&self, dir: BorrowedFd<'_>, name: &OsStr, key: &OsStr) -> io::Result<()> {
        with_proc_path(dir, &cstr(name)?, |p| {
            let k = cstr(OsStr::from_bytes(&whiteout::stored_xattr_name(
                key.as_bytes(),
            )))?;
            // SAFETY: valid C strings.
            cvt(unsafe { libc::lremovexattr(p.as_ptr(), k.as_ptr()) })
        })
    }

    /// Hard-link the upper object `from_dir/from` as `to_dir/to`.
    pub fn link(
        &self,
        from_dir: BorrowedFd<'_>,
        from: &OsStr,
        to_dir: BorrowedFd<'_>,
        to: &OsStr,
        over_whiteout: bool,
    ) -> io::Result<Stat> {
        let cf = cstr(from)?;
        if over_whiteout {
            let tmp = self.tmp_name();
            let work = self.work.as_fd();
            link_at(from_dir, &cf, work, &tmp)?;
            if let Err(e) = self.install(&tmp, to_dir, to, true) {
                let _ = remove_entry(work, &tmp);
                return Err(e);
            }
        } else {
            let ct = cstr(to)?;
            link_at(from_dir, &cf, to_dir, &ct)?;
        }
        sys::fstatat_nofollow(to_dir, &cstr(to)?)
    }
}

/// Whether `.wh.NAME` is a valid name. For the longest names an OCI upper
/// gets the overlay form of a whiteout, which every reader of ours
/// understands too.
fn oci_fits(name: &OsStr) -> bool {
    name.len() + whiteout::OCI_WHITEOUT_PREFIX.len() <= NAME_MAX
}

fn oci_whiteout_name(name: &OsStr) -> io::Result<CString> {
    let mut v = whiteout::OCI_WHITEOUT_PREFIX.to_vec();
    v.extend_from_slice(name.as_bytes());
    CString::new(v).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))
}
