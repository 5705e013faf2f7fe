//! Several processes' worth of calls at once on one writable mount (needs
//! root). A deadlock in the daemon must fail the test, never hang it: a
//! watchdog kills the daemon (by pid) when no call has finished for a
//! while, which aborts the FUSE connection and frees every caller.
//!
//! * `renames_with_getattrs_do_not_deadlock`: renames inside one directory
//!   and across two, while other threads stat those directories (each stat
//!   after a rename reaches the daemon, which refreshes the attributes of
//!   the directory the rename holds).

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use common::LayerfsMount;

/// How long the load runs, and how long without any finished call counts
/// as a hang.
const RUN_FOR: Duration = Duration::from_secs(6);
const STALL: Duration = Duration::from_secs(10);

/// One thread's loop body, run until the load stops.
type Worker = Box<dyn Fn(&Load) + Send + Sync>;

struct Load {
    stop: AtomicBool,
    done_calls: AtomicU64,
}

/// Runs `workers` until RUN_FOR has passed; kills the daemon and panics if
/// the calls stop finishing for STALL. Returns the number of calls made.
fn run_with_watchdog(mount: &LayerfsMount, workers: Vec<Worker>) -> u64 {
    let load = Arc::new(Load {
        stop: AtomicBool::new(false),
        done_calls: AtomicU64::new(0),
    });
    let handles: Vec<_> = workers
        .into_iter()
        .map(|w| {
            let load = load.clone();
            thread::spawn(move || {
                while !load.stop.load(Ordering::Relaxed) {
                    w(&load);
                }
            })
        })
        .collect();
    let start = Instant::now();
    let (mut last_count, mut last_change) = (0, Instant::now());
    let mut hung = false;
    while start.elapsed() < RUN_FOR {
        thread::sleep(Duration::from_millis(100));
        let n = load.done_calls.load(Ordering::Relaxed);
        if n != last_count {
            (last_count, last_change) = (n, Instant::now());
        } else if last_change.elapsed() > STALL {
            hung = true;
            break;
        }
    }
    load.stop.store(true, Ordering::Relaxed);
    // Workers finish their current call; a hung one only when the daemon
    // dies, so give them STALL before killing it.
    let deadline = Instant::now() + STALL;
    while !hung && handles.iter().any(|h| !h.is_finished()) {
        if Instant::now() > deadline {
            hung = true;
        }
        thread::sleep(Duration::from_millis(50));
    }
    if hung {
        let log = mount.log();
        if let Some(pid) = mount.pid() {
            // Our own child, by pid: its death aborts the connection.
            let pid = nix::unistd::Pid::from_raw(pid as i32);
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
        }
        for h in handles {
            let _ = h.join();
        }
        panic!(
            "no call finished for {STALL:?} after {last_count} calls: the daemon hung; its log:\n{log}"
        );
    }
    for h in handles {
        h.join().expect("worker thread panicked");
    }
    load.done_calls.load(Ordering::Relaxed)
}

/// Renames `a` to `b` and back; ENOENT is fine (another thread moved it).
fn swap_names(load: &Load, a: &Path, b: &Path) {
    for (from, to) in [(a, b), (b, a)] {
        match fs::rename(from, to) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {}
            Err(e) => panic!("rename {} -> {}: {e}", from.display(), to.display()),
        }
        load.done_calls.fetch_add(1, Ordering::Relaxed);
    }
}

fn stat_dir(load: &Load, dir: &Path) {
    if let Err(e) = fs::symlink_metadata(dir) {
        panic!("lstat {}: {e}", dir.display());
    }
    load.done_calls.fetch_add(1, Ordering::Relaxed);
}

#[test]
fn renames_with_getattrs_do_not_deadlock() {
    common::require_root();
    let tmp = common::tempdir("layerfs-concurrency-");
    let root = tmp.path().canonicalize().expect("canonical temp dir");
    let (lower, upper, work) = (root.join("lower"), root.join("upper"), root.join("work"));
    for d in [&lower, &upper, &work] {
        fs::create_dir(d).expect("mkdir");
    }
    // Lower directories, so every rename also copies up.
    for d in ["one", "two"] {
        fs::create_dir(lower.join(d)).expect("mkdir lower dir");
        for i in 0..4 {
            fs::write(lower.join(d).join(format!("a{i}")), b"data").expect("write lower file");
        }
    }
    let opts = format!(
        "upperdir={},workdir={}",
        common::escape_opt_path(&upper),
        common::escape_opt_path(&work)
    );
    let mount = LayerfsMount::mount(std::slice::from_ref(&lower), &opts);
    let m: PathBuf = mount.path().to_path_buf();
    let (one, two) = (m.join("one"), m.join("two"));
    let mut workers: Vec<Worker> = Vec::new();
    for i in 0..2 {
        // Inside one directory: the source and target parent are one node.
        let (a, b) = (one.join(format!("a{i}")), one.join(format!("b{i}")));
        workers.push(Box::new(move |l| swap_names(l, &a, &b)));
        // Across two directories.
        let (a, b) = (two.join(format!("a{i}")), one.join(format!("x{i}")));
        workers.push(Box::new(move |l| swap_names(l, &a, &b)));
    }
    for d in [one.clone(), two.clone(), one, two] {
        workers.push(Box::new(move |l| stat_dir(l, &d)));
    }
    let calls = run_with_watchdog(&mount, workers);
    assert!(calls > 1000, "only {calls} calls ran in {RUN_FOR:?}");
    let exit = mount.unmount();
    assert!(
        exit.status.is_some_and(|s| s.success()),
        "daemon ended with {:?}:\n{}",
        exit.status,
        exit.log
    );
}
