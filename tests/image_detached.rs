//! `mount --image` detached: the daemon records its mount in the store with
//! its own pid, so the container is not removed under it, and the record
//! goes when the daemon ends.
//!
//! One test in its own binary: this process becomes the subreaper of the
//! daemon it starts (process 1 here does not reap orphans).

mod common;

use std::fs;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use common::images::*;
use common::{is_mounted, layerfs_bin};

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
            let pid = nix::unistd::Pid::from_raw(pid);
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
            let _ = nix::sys::wait::waitpid(pid, None);
        }
    }
}

#[test]
fn a_detached_image_mount_is_recorded_until_its_daemon_ends() {
    common::require_root();
    // SAFETY: prctl with these arguments only changes this process's flags.
    let rc = unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
    assert_eq!(rc, 0, "PR_SET_CHILD_SUBREAPER");
    let dir = common::tempdir("images-detached-");
    let t = raw_tar(&[(tar::EntryType::Regular, "f", "", b"x", None)]);
    let layout = dir.path().join("oci");
    let spec = ImageSpec {
        layers: vec![(&t, Comp::Gzip)],
        arch: "amd64",
        tag: "x",
    };
    write_layout(&layout, &[spec], false);
    let store = dir.path().join("store");
    assert!(import(&store, &layout, "det:1").status.success());
    let mnt = dir.path().join("mnt");
    fs::create_dir(&mnt).unwrap();
    let mnt = mnt.canonicalize().unwrap();
    let mut cleanup = Cleanup {
        mnt: mnt.clone(),
        daemon: None,
    };
    let out = Command::new(layerfs_bin())
        .args(["mount", "--image", "det:1", "--container", "c", "--store"])
        .arg(&store)
        .arg(&mnt)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr_of(&out));
    let records: Vec<PathBuf> = fs::read_dir(store.join("mounts"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(records.len(), 1, "{records:?}");
    let record: serde_json::Value =
        serde_json::from_slice(&fs::read(&records[0]).unwrap()).unwrap();
    let pid = record["pid"].as_i64().unwrap() as i32;
    cleanup.daemon = Some(pid);
    assert_eq!(record["mountpoint"], mnt.to_str().unwrap());
    assert_eq!(record["container"], "c");
    let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let me = std::process::id().to_string();
    assert!(
        status
            .lines()
            .any(|l| l.strip_prefix("PPid:").map(str::trim) == Some(me.as_str())),
        "pid {pid} is not the daemon re-parented to us"
    );
    fs::write(mnt.join("new"), b"in the container").unwrap();
    let err = stderr_of(&layerfs(&store, &["rm".as_ref(), "c".as_ref()]));
    assert!(err.contains(&format!("(pid {pid})")), "{err}");

    let out = Command::new(layerfs_bin())
        .arg("umount")
        .arg(&mnt)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr_of(&out));
    let deadline = Instant::now() + Duration::from_secs(10);
    let code = loop {
        match nix::sys::wait::waitpid(
            nix::unistd::Pid::from_raw(pid),
            Some(nix::sys::wait::WaitPidFlag::WNOHANG),
        ) {
            Ok(nix::sys::wait::WaitStatus::Exited(_, code)) => break code,
            Ok(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
            other => panic!("daemon {pid} did not exit after unmount: {other:?}"),
        }
    };
    cleanup.daemon = None;
    assert_eq!(code, 0);
    assert!(!records[0].exists(), "the record outlived its daemon");
    let upper = store.join("containers/c/upper/new");
    assert_eq!(fs::read(upper).unwrap(), b"in the container");
    layerfs_ok(&store, &["rm".as_ref(), "c".as_ref()]);
}
