//! Mounting a `LayerFs` and serving it until it is unmounted or the
//! daemon is told to stop (SIGTERM, SIGINT, SIGHUP).

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use fuser::{Config, Session, SessionACL};
use nix::mount::{MntFlags, MsFlags};
use nix::sys::signal::{SigSet, Signal};
use tracing::{info, warn};

use super::LayerFs;
use super::guard::Guarded;

/// How to mount.
#[derive(Debug, Clone)]
pub struct MountConfig {
    pub mountpoint: PathBuf,
    /// Shown as the source in /proc/mounts.
    pub source: String,
    pub allow_other: bool,
    pub threads: usize,
    /// Generic mount flags as given (`nosuid`, `noexec`, `noatime`...).
    pub flags: Vec<String>,
    /// Mounted read-write (there is an upper layer).
    pub writable: bool,
}

/// A live mount whose requests are not served yet.
pub struct Mounted {
    session: Session<Guarded>,
    mountpoint: PathBuf,
}

/// Stop signals are blocked in every thread and taken by one watcher, so
/// a signal can never land in a FUSE worker halfway through a reply.
/// Call before any thread is spawned.
pub fn block_stop_signals() -> io::Result<()> {
    stop_signals().thread_block().map_err(io::Error::from)
}

fn stop_signals() -> SigSet {
    let mut set = SigSet::empty();
    set.add(Signal::SIGTERM);
    set.add(Signal::SIGINT);
    set.add(Signal::SIGHUP);
    set
}

/// Mount: returns once the kernel has completed the FUSE handshake.
pub fn mount(fs: LayerFs, cfg: &MountConfig, root_mode: u32) -> io::Result<Mounted> {
    let acl = if cfg.allow_other {
        SessionACL::All
    } else {
        SessionACL::Owner
    };
    let mut config = Config::default();
    config.acl = acl;
    config.n_threads = Some(cfg.threads.max(1));
    config.clone_fd = true;
    let notifier = fs.notifier_slot();
    // Root (also root of a user namespace) mounts itself; anyone else goes
    // through the setuid fusermount3, whatever the mode of /dev/fuse.
    let fd = if nix::unistd::geteuid().is_root() {
        mount_fuse(cfg, root_mode)?
    } else {
        super::fusermount::mount(&cfg.mountpoint, &fusermount_options(cfg))?
    };
    let session = Session::from_fd(Guarded::new(fs), fd, acl, config)?;
    let _ = notifier.set(session.notifier());
    Ok(Mounted {
        session,
        mountpoint: cfg.mountpoint.clone(),
    })
}

/// fusermount3's `-o`: what mount_fuse passes to mount(2), in words
/// (fusermount3 adds nosuid and nodev itself for a user).
fn fusermount_options(cfg: &MountConfig) -> String {
    let mut opts = vec![
        format!("fsname={}", cfg.source),
        "subtype=layerfs".to_string(),
        if cfg.writable { "rw" } else { "ro" }.to_string(),
        "default_permissions".to_string(),
    ];
    if cfg.allow_other {
        opts.push("allow_other".to_string());
    }
    opts.extend(cfg.flags.iter().cloned());
    opts.join(",")
}

/// mount(2) a FUSE filesystem of type `fuse.layerfs` and return its
/// /dev/fuse connection. Done here rather than by fuser, which always
/// mounts type `fuse`: /proc/mounts should say what is mounted.
fn mount_fuse(cfg: &MountConfig, root_mode: u32) -> io::Result<OwnedFd> {
    let dev = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/fuse")
        .map_err(|e| io::Error::new(e.kind(), format!("/dev/fuse: {e}")))?;
    let fd = OwnedFd::from(dev);
    let mut data = format!(
        "fd={},rootmode={:o},user_id={},group_id={},default_permissions",
        fd.as_raw_fd(),
        libc::S_IFDIR | (root_mode & 0o7777),
        nix::unistd::getuid(),
        nix::unistd::getgid(),
    );
    if cfg.allow_other {
        data.push_str(",allow_other");
    }
    // Read-only; and a container image needs its setuid binaries and
    // device nodes, so neither nosuid nor nodev unless asked for.
    let base = if cfg.writable {
        MsFlags::empty()
    } else {
        MsFlags::MS_RDONLY
    };
    let flags = cfg.flags.iter().fold(base, |acc, f| apply_flag(acc, f));
    nix::mount::mount(
        Some(cfg.source.as_str()),
        &cfg.mountpoint,
        Some("fuse.layerfs"),
        flags,
        Some(data.as_str()),
    )
    .map_err(|e| io::Error::from_raw_os_error(e as i32))?;
    Ok(fd)
}

/// One generic mount(8) flag onto the mount(2) flags; the last one given
/// wins, as with mount(8).
fn apply_flag(flags: MsFlags, name: &str) -> MsFlags {
    let atime = MsFlags::MS_NOATIME | MsFlags::MS_RELATIME | MsFlags::MS_STRICTATIME;
    match name {
        "nosuid" => flags | MsFlags::MS_NOSUID,
        "suid" => flags - MsFlags::MS_NOSUID,
        "nodev" => flags | MsFlags::MS_NODEV,
        "dev" => flags - MsFlags::MS_NODEV,
        "noexec" => flags | MsFlags::MS_NOEXEC,
        "exec" => flags - MsFlags::MS_NOEXEC,
        "sync" => flags | MsFlags::MS_SYNCHRONOUS,
        "async" => flags - MsFlags::MS_SYNCHRONOUS,
        "dirsync" => flags | MsFlags::MS_DIRSYNC,
        "noatime" => (flags - atime) | MsFlags::MS_NOATIME,
        "relatime" => (flags - atime) | MsFlags::MS_RELATIME,
        "strictatime" => (flags - atime) | MsFlags::MS_STRICTATIME,
        "atime" | "norelatime" | "nostrictatime" => flags - atime,
        "nodiratime" => flags | MsFlags::MS_NODIRATIME,
        "diratime" => flags - MsFlags::MS_NODIRATIME,
        "lazytime" => flags | MsFlags::MS_LAZYTIME,
        "nolazytime" => flags - MsFlags::MS_LAZYTIME,
        _ => flags,
    }
}

impl Mounted {
    /// Serve requests until the filesystem is unmounted, by anyone, or a
    /// stop signal unmounts it.
    pub fn serve(self) -> io::Result<()> {
        let mountpoint = self.mountpoint.clone();
        std::thread::Builder::new()
            .name("signals".into())
            .spawn(move || {
                let Ok(sig) = stop_signals().wait() else {
                    return;
                };
                info!(signal = ?sig, "unmounting");
                let result = match nix::mount::umount2(&mountpoint, MntFlags::empty()) {
                    // Mounted by fusermount3: undo it the same way.
                    Err(nix::errno::Errno::EPERM) => super::fusermount::unmount(&mountpoint, false),
                    other => other.map_err(io::Error::from),
                };
                if let Err(e) = result {
                    // Busy: detach now, the kernel finishes once the last
                    // user is gone and the session then ends by itself.
                    warn!(error = %e, "unmount failed; detaching lazily");
                    lazy_unmount(&mountpoint);
                }
            })?;
        match self.session.run() {
            // The kernel ends a connection at unmount (or `umount -f`) by
            // aborting it; a worker that was just taking a request then
            // reads ECONNABORTED instead of ENODEV. Either way the mount
            // is gone and nothing is left to serve.
            Err(e) if e.raw_os_error() == Some(libc::ECONNABORTED) => {
                info!("the kernel ended the connection while a request was read");
                Ok(())
            }
            other => other,
        }
    }
}

fn lazy_unmount(mountpoint: &Path) {
    let result = match nix::mount::umount2(mountpoint, MntFlags::MNT_DETACH) {
        Err(nix::errno::Errno::EPERM) => super::fusermount::unmount(mountpoint, true),
        other => other.map_err(io::Error::from),
    };
    if let Err(e) = result {
        warn!(error = %e, mountpoint = %mountpoint.display(), "lazy unmount failed");
    }
}
