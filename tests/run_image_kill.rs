//! `layerfs run --rm` killed with SIGKILL: its mount goes (the daemon
//! follows its parent), its watcher removes the container, and nothing is
//! left in the store or in /proc/mounts.
//!
//! One test in its own binary: this process becomes the subreaper of the
//! mount daemon, watcher and container the killed `layerfs run` leaves, to
//! wait for them by pid (process 1 here does not reap orphans).

mod common;
mod run_fixture;

use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::Pid;
use run_fixture::Store;

/// The pids of `pid`'s children.
fn children(pid: u32) -> Vec<i32> {
    std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect()
}

/// Wait for an orphan we now reap, by pid.
fn reap(pid: i32) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match waitpid(Pid::from_raw(pid), Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::StillAlive) => {}
            // Ended (or never became ours): done either way.
            _ => return,
        }
        if Instant::now() > deadline {
            let _ = nix::sys::signal::kill(Pid::from_raw(pid), Signal::SIGKILL);
            let _ = waitpid(Pid::from_raw(pid), None);
            panic!("process {pid} did not end");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn become_subreaper() {
    // SAFETY: prctl with these arguments only changes this process's flags.
    let rc = unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
    assert_eq!(rc, 0, "PR_SET_CHILD_SUBREAPER");
}

/// The pid of the mount daemon among `pids`.
fn mount_daemon(pids: &[i32]) -> i32 {
    *pids
        .iter()
        .find(|p| {
            let cmdline = std::fs::read(format!("/proc/{p}/cmdline")).unwrap_or_default();
            cmdline.split(|b| *b == 0).nth(1) == Some(b"mount")
        })
        .expect("the mount daemon")
}

#[test]
fn a_killed_run_rm_leaves_nothing() {
    become_subreaper();
    let mut s = Store::new();
    let (pid, _out) = s.spawn_ready(&[
        "--rm",
        "--name",
        "k",
        "img:1",
        "sh",
        "-c",
        "echo x > /x; echo ready; while :; do sleep 0.05; done",
    ]);
    let orphans = children(pid);
    assert_eq!(
        orphans.len(),
        3,
        "the watcher, the mount daemon and the container"
    );
    assert_eq!(s.mounts().len(), 1, "{:?}", s.mounts());
    s.signal(pid, Signal::SIGKILL);
    let status = s.wait(pid);
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&status),
        Some(9)
    );
    for o in orphans {
        reap(o);
    }
    s.assert_nothing_mounted();
    assert!(s.container_names().is_empty(), "{:?}", s.container_names());
    let all = s.ps(true);
    assert!(all.is_empty(), "{all:?}");
    assert!(s.container_names().is_empty(), "{:?}", s.container_names());
    let records = std::fs::read_dir(s.path.join("mounts"))
        .expect("mounts/")
        .count();
    assert_eq!(records, 0);
}

#[test]
fn a_root_left_mounted_by_a_killed_daemon_does_not_block_the_next_run() {
    become_subreaper();
    let mut s = Store::new();
    let (pid, _out) = s.spawn_ready(&[
        "--name",
        "z",
        "img:1",
        "sh",
        "-c",
        "echo ready; while :; do sleep 0.05; done",
    ]);
    let orphans = children(pid);
    let daemon = mount_daemon(&orphans);
    // The daemon first (no unmount: the dead mount stays), then run.
    nix::sys::signal::kill(Pid::from_raw(daemon), Signal::SIGKILL).expect("kill daemon");
    reap(daemon);
    s.signal(pid, Signal::SIGKILL);
    s.wait(pid);
    for o in orphans {
        reap(o);
    }
    assert_eq!(s.mounts().len(), 1, "the dead mount is still there");
    let all = s.ps(true);
    assert_eq!(
        all[0]["status"]
            .as_str()
            .map(|t| t.starts_with("Exited (unknown)")),
        Some(true),
        "{all:?}"
    );
    let o = s.run(&["--name", "z", "img:1", "cat", "/srv/hello"]);
    assert!(o.status.success(), "{}", run_fixture::explain(&o));
    assert_eq!(run_fixture::stdout(&o), "hello\n");
    s.assert_nothing_mounted();
}
