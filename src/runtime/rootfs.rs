//! Paths inside the container's root, resolved as the container will see
//! them: every symlink (even `etc -> /`) stays inside the root, so setting
//! up mounts can never touch the host's files. Mounts go onto
//! `/proc/self/fd/N` of a file descriptor opened that way.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};

use nix::fcntl::{OFlag, OpenHow, ResolveFlag};
use nix::mount::MsFlags;
use nix::sys::stat::Mode;

/// What to create at a mount target that does not exist yet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    Dir,
    File,
}

/// A directory fd treated as `/`.
pub struct Root {
    fd: OwnedFd,
}

fn context(e: impl Into<io::Error>, what: &str, path: &str) -> io::Error {
    let e = e.into();
    io::Error::new(e.kind(), format!("{what} {path}: {e}"))
}

impl Root {
    pub fn open(dir: &Path) -> io::Result<Root> {
        let fd = nix::fcntl::open(
            dir,
            OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| context(e, "open", &dir.display().to_string()))?;
        Ok(Root { fd })
    }

    /// An O_PATH fd of `path` inside the root.
    pub fn open_path(&self, path: &str) -> io::Result<OwnedFd> {
        let rel = path.trim_start_matches('/');
        let rel = if rel.is_empty() { "." } else { rel };
        // RESOLVE_IN_ROOT: the fd is `/` for this lookup, so even an
        // absolute symlink resolves inside it.
        let how = OpenHow::new()
            .flags(OFlag::O_PATH | OFlag::O_CLOEXEC)
            .resolve(ResolveFlag::RESOLVE_IN_ROOT | ResolveFlag::RESOLVE_NO_MAGICLINKS);
        loop {
            match nix::fcntl::openat2(self.fd.as_fd(), rel, how) {
                // A rename elsewhere on the file system: try again.
                Err(nix::errno::Errno::EAGAIN) => continue,
                other => return other.map_err(|e| context(e, "open", path)),
            }
        }
    }

    /// An O_PATH fd of `path`, creating it (and missing parents, as
    /// directories) when absent.
    pub fn ensure(&self, path: &str, kind: Target) -> io::Result<OwnedFd> {
        if let Ok(fd) = self.open_path(path) {
            return Ok(fd);
        }
        let components: Vec<&str> = path
            .split('/')
            .filter(|c| !c.is_empty() && *c != ".")
            .collect();
        let mut prefix = String::from("/");
        for (i, name) in components.iter().enumerate() {
            if *name == ".." {
                return Err(context(
                    io::Error::from_raw_os_error(libc::EINVAL),
                    "create",
                    path,
                ));
            }
            let parent = self.open_path(&prefix)?;
            let here = format!("{}{}", prefix, name);
            if self.open_path(&here).is_err() {
                let last = i + 1 == components.len();
                create_in(parent.as_fd(), name, if last { kind } else { Target::Dir })
                    .map_err(|e| context(e, "create", &here))?;
            }
            prefix = format!("{here}/");
        }
        self.open_path(path)
    }
}

fn create_in(parent: BorrowedFd<'_>, name: &str, kind: Target) -> io::Result<()> {
    let result = match kind {
        Target::Dir => nix::sys::stat::mkdirat(parent, name, Mode::from_bits_truncate(0o755)),
        Target::File => nix::fcntl::openat(
            parent,
            name,
            OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_WRONLY | OFlag::O_CLOEXEC | OFlag::O_NOFOLLOW,
            Mode::from_bits_truncate(0o644),
        )
        .map(drop),
    };
    match result {
        Ok(()) | Err(nix::errno::Errno::EEXIST) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// The path the kernel resolves to exactly the object `fd` refers to.
pub fn fd_path(fd: &OwnedFd) -> PathBuf {
    PathBuf::from(format!("/proc/self/fd/{}", fd.as_raw_fd()))
}

/// mount(2) onto the object `target` refers to.
pub fn mount_on(
    source: Option<&Path>,
    target: &OwnedFd,
    fstype: Option<&str>,
    flags: MsFlags,
    data: Option<&str>,
    shown: &str,
) -> io::Result<()> {
    nix::mount::mount(source, &fd_path(target), fstype, flags, data)
        .map_err(|e| context(e, "mount", shown))
}
