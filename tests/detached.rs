//! The detached daemon: `layerfs mount` returns only once the mount is
//! live, and every way of unmounting ends the daemon cleanly.
//!
//! One test in its own binary: it makes this process the subreaper of the
//! daemons it starts (process 1 here does not reap orphans), and reaping
//! "any child" must not race with other tests' children.

mod common;

use std::fs;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::mounts::{is_mounted, layerfs_bin, lowerdir_value, mount_fstype};

/// Unmounts lazily and kills the daemon by pid if a check failed half-way.
struct Cleanup {
    mnt: PathBuf,
    daemon: Option<i32>,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        if is_mounted(&self.mnt) {
            let _ = nix::mount::umount2(&self.mnt, nix::mount::MntFlags::MNT_DETACH);
        }
        if let Some(pid) = self.daemon.take() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
            let _ = nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(pid), None);
        }
    }
}

/// Our child processes (daemons re-parented to us) whose command line
/// names `mnt`.
fn daemon_of(mnt: &Path) -> Option<i32> {
    let me = std::process::id().to_string();
    for entry in fs::read_dir("/proc").ok()?.flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(status) = fs::read_to_string(entry.path().join("status")) else {
            continue;
        };
        let ppid = status
            .lines()
            .find_map(|l| l.strip_prefix("PPid:"))
            .map(str::trim);
        if ppid != Some(me.as_str()) {
            continue;
        }
        let cmdline = fs::read(entry.path().join("cmdline")).unwrap_or_default();
        let mnt_bytes = mnt.as_os_str().as_encoded_bytes();
        if cmdline.windows(mnt_bytes.len()).any(|w| w == mnt_bytes) {
            return Some(pid);
        }
    }
    None
}

/// Wait for the daemon to exit; its exit status.
fn reap(pid: i32) -> i32 {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match nix::sys::wait::waitpid(
            nix::unistd::Pid::from_raw(pid),
            Some(nix::sys::wait::WaitPidFlag::WNOHANG),
        ) {
            Ok(nix::sys::wait::WaitStatus::Exited(_, code)) => return code,
            Ok(nix::sys::wait::WaitStatus::Signaled(_, sig, _)) => {
                panic!("daemon {pid} was killed by {sig:?}")
            }
            Ok(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
            other => panic!("daemon {pid} did not exit after unmount: {other:?}"),
        }
    }
}

fn mount_detached(program: &Path, args: &[&str], mnt: &Path) -> Cleanup {
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("running {}: {e}", program.display()));
    assert!(
        out.status.success(),
        "{} {args:?} failed: {}",
        program.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    // Live the moment the command returns: no polling here.
    assert_eq!(mount_fstype(mnt).as_deref(), Some("fuse.layerfs"));
    assert_eq!(
        fs::read_to_string(mnt.join("hello")).unwrap(),
        "from the top\n"
    );
    let daemon = daemon_of(mnt).expect("the daemon, re-parented to this subreaper");
    Cleanup {
        mnt: mnt.to_path_buf(),
        daemon: Some(daemon),
    }
}

fn unmount_with(cleanup: &mut Cleanup, program: &str, args: &[&str]) {
    let status = Command::new(program)
        .args(args)
        .arg(&cleanup.mnt)
        .status()
        .unwrap_or_else(|e| panic!("running {program}: {e}"));
    assert!(status.success(), "{program} {args:?} failed");
    assert!(!is_mounted(&cleanup.mnt), "{program} left the mount");
    let pid = cleanup.daemon.take().expect("daemon pid");
    assert_eq!(reap(pid), 0, "daemon exit status after {program}");
}

#[test]
fn detached_mount_is_live_on_return_and_every_unmount_ends_the_daemon() {
    // SAFETY: prctl with plain integer arguments.
    let rc = unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
    assert_eq!(rc, 0, "PR_SET_CHILD_SUBREAPER");

    let tmp = tempfile::tempdir().unwrap();
    let top = tmp.path().join("top");
    let bottom = tmp.path().join("bottom");
    let mnt = tmp.path().join("mnt");
    for d in [&top, &bottom, &mnt] {
        fs::create_dir(d).unwrap();
    }
    fs::write(top.join("hello"), "from the top\n").unwrap();
    fs::write(bottom.join("hello"), "from the bottom\n").unwrap();
    let lower = format!(
        "lowerdir={}",
        lowerdir_value(&[top.clone(), bottom.clone()])
    );
    let mnt_s = mnt.to_str().unwrap();
    let bin = Path::new(layerfs_bin());

    let mut c = mount_detached(bin, &["mount", "-o", &lower, mnt_s], &mnt);
    unmount_with(&mut c, layerfs_bin(), &["umount"]);

    let mut c = mount_detached(bin, &["mount", "-o", &lower, mnt_s], &mnt);
    unmount_with(&mut c, "umount", &[]);

    let mut c = mount_detached(bin, &["mount", "-o", &lower, mnt_s], &mnt);
    unmount_with(&mut c, "fusermount3", &["-u"]);

    // As mount(8) runs a helper for `-t fuse.layerfs` and fstab lines.
    let helper = tmp.path().join("mount.fuse.layerfs");
    symlink(bin, &helper).unwrap();
    let mut c = mount_detached(&helper, &["layerfs", mnt_s, "-o", &lower], &mnt);
    unmount_with(&mut c, layerfs_bin(), &["umount"]);

    // SIGTERM to the detached daemon unmounts and exits 0.
    let mut c = mount_detached(bin, &["mount", "-o", &lower, mnt_s], &mnt);
    let pid = c.daemon.take().expect("daemon pid");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    assert_eq!(reap(pid), 0);
    assert!(!is_mounted(&mnt), "SIGTERM left the mount");
}
