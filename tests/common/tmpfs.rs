//! A tmpfs mounted for one test (a small or read-only filesystem to put
//! layers or a store on); unmounted when dropped.

use std::fs;
use std::path::{Path, PathBuf};

use nix::mount::{MntFlags, MsFlags};

pub struct Tmpfs(PathBuf);

impl Tmpfs {
    /// `mount -t tmpfs -o OPTS tmpfs DIR` (DIR made if missing); panics
    /// with the reason if it fails.
    pub fn mount(dir: &Path, opts: &str) -> Tmpfs {
        fs::create_dir_all(dir).expect("making the tmpfs mount point");
        let data = (!opts.is_empty()).then_some(opts);
        nix::mount::mount(Some("tmpfs"), dir, Some("tmpfs"), MsFlags::empty(), data)
            .unwrap_or_else(|e| panic!("mount -t tmpfs -o {opts} {}: {e}", dir.display()));
        Tmpfs(dir.to_path_buf())
    }

    pub fn path(&self) -> &Path {
        &self.0
    }

    /// `mount -o remount,ro` (or `rw`). Going read-only is refused (EBUSY)
    /// while a file on it is open for writing; a file closed through a FUSE
    /// mount is released by its daemon a moment later (RELEASE does not
    /// wait), so EBUSY is retried for up to 5 s.
    pub fn remount(&self, read_only: bool) {
        let ro = if read_only {
            MsFlags::MS_RDONLY
        } else {
            MsFlags::empty()
        };
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        loop {
            let r = nix::mount::mount(
                None::<&str>,
                &self.0,
                None::<&str>,
                MsFlags::MS_REMOUNT | ro,
                None::<&str>,
            );
            match r {
                Err(nix::errno::Errno::EBUSY) if std::time::Instant::now() < deadline => {
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
                r => {
                    r.unwrap_or_else(|e| {
                        panic!("remount {} (ro: {read_only}): {e}", self.0.display())
                    });
                    return;
                }
            }
        }
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        if nix::mount::umount2(&self.0, MntFlags::empty()).is_err() {
            let _ = nix::mount::umount2(&self.0, MntFlags::MNT_DETACH);
        }
    }
}
