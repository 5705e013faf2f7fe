//! Several processes' worth of calls at once on one writable mount (needs
//! root). A deadlock in the daemon must fail the test, never hang it: a
//! watchdog kills the daemon (by pid) when no call has finished for a
//! while, which aborts the FUSE connection and frees every caller.
//!
//! * `renames_with_getattrs_do_not_deadlock`: renames inside one directory
//!   and across two, while other threads stat those directories (each stat
//!   after a rename reaches the daemon, which refreshes the attributes of
//!   the directory the rename holds).
//! * `reads_racing_writes_answer_as_a_serial_order`: one name that becomes a
//!   directory, nothing, a file and nothing again, in a lower directory and
//!   in an upper-only one, while other threads lstat and open it; then six
//!   threads of random changes and reads on two names. Every call must
//!   answer what some serial order of the calls could (reads: success or
//!   ENOENT): never EIO, EXDEV, ENXIO or ENOTDIR from a moment when the
//!   merged view and the upper on disk disagree.

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use common::LayerfsMount;
use common::load::{Load, Worker, run_with_watchdog};

/// How long the load runs, and how long without any finished call counts
/// as a hang.
const RUN_FOR: Duration = Duration::from_secs(6);
const STALL: Duration = Duration::from_secs(10);

/// Renames `a` to `b` and back; ENOENT is fine (another thread moved it).
fn swap_names(load: &Load, a: &Path, b: &Path) {
    for (from, to) in [(a, b), (b, a)] {
        match fs::rename(from, to) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {}
            Err(e) => panic!("rename {} -> {}: {e}", from.display(), to.display()),
        }
        load.done();
    }
}

fn stat_dir(load: &Load, dir: &Path) {
    if let Err(e) = fs::symlink_metadata(dir) {
        panic!("lstat {}: {e}", dir.display());
    }
    load.done();
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
    let calls = run_with_watchdog(&mount, workers, RUN_FOR, STALL);
    assert!(calls > 1000, "only {calls} calls ran in {RUN_FOR:?}");
    let exit = mount.unmount();
    exit.assert_clean();
}

/// Errors the load saw that no serial order of its calls could give.
#[derive(Default)]
struct Odd(std::sync::Mutex<Vec<String>>);

impl Odd {
    /// Notes `r` unless it is Ok or one of `allowed` errnos.
    fn check<T>(&self, what: &str, p: &Path, r: std::io::Result<T>, allowed: &[i32]) {
        if let Err(e) = r
            && !e.raw_os_error().is_some_and(|n| allowed.contains(&n))
        {
            let mut v = self
                .0
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if v.len() < 50 {
                v.push(format!("{what} {}: {e}", p.display()));
            }
        }
    }

    fn take(&self) -> Vec<String> {
        std::mem::take(
            &mut *self
                .0
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        )
    }
}

/// A writable mount over a lower holding the directory `low`, and an
/// upper-only directory `up` made through it.
fn racing_mount(root: &Path) -> LayerfsMount {
    let (lower, upper, work) = (root.join("lower"), root.join("upper"), root.join("work"));
    for d in [&lower, &upper, &work] {
        fs::create_dir(d).expect("mkdir");
    }
    fs::create_dir(lower.join("low")).expect("mkdir lower dir");
    fs::write(lower.join("low").join("other"), b"lower").expect("write lower file");
    let opts = format!(
        "upperdir={},workdir={}",
        common::escape_opt_path(&upper),
        common::escape_opt_path(&work)
    );
    let mount = LayerfsMount::mount(std::slice::from_ref(&lower), &opts);
    fs::create_dir(mount.path().join("up")).expect("mkdir upper-only dir");
    mount
}

/// The daemon's last log lines.
fn log_tail(mount: &LayerfsMount) -> String {
    let log = mount.log();
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}

/// Tiny deterministic generator for the random load.
fn next(state: &mut u64) -> u64 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    *state
}

#[test]
fn reads_racing_writes_answer_as_a_serial_order() {
    common::require_root();
    let tmp = common::tempdir("layerfs-race-");
    let root = tmp.path().canonicalize().expect("canonical temp dir");
    let mount = racing_mount(&root);
    let m = mount.path().to_path_buf();
    let odd = Arc::new(Odd::default());
    const NOENT: &[i32] = &[libc::ENOENT];

    // One name changing type, read by two threads, in each directory.
    let mut workers: Vec<Worker> = Vec::new();
    for dir in ["low", "up"] {
        let x = m.join(dir).join("x");
        let (o, p) = (odd.clone(), x.clone());
        workers.push(Box::new(move |l| {
            o.check("mkdir", &p, fs::create_dir(&p), &[]);
            o.check("rmdir", &p, fs::remove_dir(&p), &[]);
            o.check("create", &p, fs::File::create(&p), &[]);
            o.check("unlink", &p, fs::remove_file(&p), &[]);
            l.done_n(4);
        }));
        for _ in 0..2 {
            let (o, p) = (odd.clone(), x.clone());
            workers.push(Box::new(move |l| {
                o.check("lstat", &p, fs::symlink_metadata(&p), NOENT);
                o.check("open", &p, fs::File::open(&p), NOENT);
                l.done_n(2);
            }));
        }
    }
    run_with_watchdog(&mount, workers, RUN_FOR, STALL);
    let seen = odd.take();
    assert!(
        seen.is_empty(),
        "one name changing type:\n{}\ndaemon log (tail):\n{}",
        seen.join("\n"),
        log_tail(&mount)
    );

    // Six threads of random changes and reads on two names per directory.
    let mut workers: Vec<Worker> = Vec::new();
    for t in 0..6u64 {
        let (o, m) = (odd.clone(), m.clone());
        let state = std::sync::Mutex::new(0x9e37_79b9_7f4a_7c15u64 ^ (t + 1));
        workers.push(Box::new(move |l| {
            let mut st = state
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let r = next(&mut st);
            let dir = m.join(["low", "up"][(r & 1) as usize]);
            let (a, b) = (dir.join(["x", "y"][(r >> 1 & 1) as usize]), dir.join("y"));
            let changes = &[
                libc::ENOENT,
                libc::EEXIST,
                libc::ENOTDIR,
                libc::EISDIR,
                libc::ENOTEMPTY,
            ];
            match (r >> 8) % 9 {
                0 => o.check("mkdir", &a, fs::create_dir(&a), changes),
                1 => o.check("rmdir", &a, fs::remove_dir(&a), changes),
                2 => o.check("create", &a, fs::File::create(&a), changes),
                3 => o.check("unlink", &a, fs::remove_file(&a), changes),
                4 => o.check("rename", &a, fs::rename(&a, &b), changes),
                5 => {
                    let perm = std::os::unix::fs::PermissionsExt::from_mode(0o750);
                    o.check("chmod", &a, fs::set_permissions(&a, perm), NOENT)
                }
                6 => o.check("open", &a, fs::File::open(&a), NOENT),
                7 => o.check("readdir", &dir, fs::read_dir(&dir).map(|d| d.count()), &[]),
                _ => o.check("lstat", &a, fs::symlink_metadata(&a), NOENT),
            }
            l.done();
        }));
    }
    run_with_watchdog(&mount, workers, RUN_FOR, STALL);
    let seen = odd.take();
    let log = log_tail(&mount);
    let exit = mount.unmount();
    assert!(
        seen.is_empty(),
        "random load:\n{}\ndaemon log (tail):\n{log}",
        seen.join("\n"),
    );
    exit.assert_clean();
}
