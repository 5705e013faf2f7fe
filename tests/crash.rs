//! Crash injection (needs root): the daemon is killed with SIGKILL at
//! seeded random moments while a client copies up, renames (files, and
//! lower directories: redirects), unlinks lower files, links, sets xattrs
//! and replaces files; hard-linked lower files go through the index. After
//! each kill the same upper is mounted again and must hold every file
//! whole: each regular file's content says which file it is and how long,
//! so a half copy shows wherever it lands. The work dir must be empty after
//! each mount, the lower byte for byte unchanged, and at the end the
//! kernel's overlayfs must mount the upper and show the same names and
//! contents.
//!
//! `LAYERFS_CRASH_RUNS` (default 20) and `LAYERFS_CRASH_SEED` choose the
//! run; a failure names the seed and the run.

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::rng::Rng;
use common::{KernelOverlay, LayerfsMount};

/// The content of file `id`: a header naming it and its length, then bytes
/// that depend on both.
fn content(id: u64, len: usize) -> Vec<u8> {
    let mut v = format!("file {id} {len}\n").into_bytes();
    let mut x = id.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    while v.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.push(x as u8);
    }
    v.truncate(len);
    v
}

/// Why `data` is not a whole file as [`content`] writes them, if it is not.
fn not_whole(data: &[u8]) -> Option<String> {
    let Some(header_end) = data.iter().position(|&b| b == b'\n') else {
        return Some(format!("no header in {} bytes", data.len()));
    };
    let header = String::from_utf8_lossy(&data[..header_end]);
    let mut words = header.split(' ');
    let (Some("file"), Some(id), Some(len)) = (words.next(), words.next(), words.next()) else {
        return Some(format!("no header: {header:?}"));
    };
    let (Ok(id), Ok(len)) = (id.parse::<u64>(), len.parse::<usize>()) else {
        return Some(format!("bad header: {header:?}"));
    };
    if data.len() != len {
        return Some(format!("file {id}: {} bytes of {len}", data.len()));
    }
    (content(id, len) != data).then(|| format!("file {id}: wrong bytes"))
}

/// Regular files and directories under `root` (relative paths, the root
/// left out), without reading contents.
fn walk(root: &Path) -> (Vec<String>, Vec<String>) {
    let (mut files, mut dirs) = (Vec::new(), Vec::new());
    let mut todo = vec![String::new()];
    while let Some(dir) = todo.pop() {
        let Ok(entries) = fs::read_dir(root.join(&dir)) else {
            continue;
        };
        for e in entries.filter_map(|e| e.ok()) {
            let rel = if dir.is_empty() {
                e.file_name().to_string_lossy().into_owned()
            } else {
                format!("{dir}/{}", e.file_name().to_string_lossy())
            };
            match e.file_type() {
                Ok(t) if t.is_dir() => {
                    dirs.push(rel.clone());
                    todo.push(rel);
                }
                Ok(t) if t.is_file() => files.push(rel),
                _ => {}
            }
        }
    }
    (files, dirs)
}

/// Every regular file under `root` (by relative path) that is not whole.
/// Names starting with `tmp` are files being written: any content goes.
fn broken_files(root: &Path) -> Vec<String> {
    let mut broken = Vec::new();
    for rel in walk(root).0 {
        let name = rel.rsplit('/').next().unwrap_or_default();
        if name.starts_with("tmp") {
            continue;
        }
        match fs::read(root.join(&rel)) {
            Ok(data) => {
                if let Some(why) = not_whole(&data) {
                    broken.push(format!("{rel}: {why}"));
                }
            }
            Err(e) => broken.push(format!("{rel}: read: {e}")),
        }
    }
    broken
}

fn names_in(dir: &Path) -> Vec<String> {
    fs::read_dir(dir)
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// Lower layer: directories with files of 1 KiB to 1 MiB (so copy-ups take
/// a while), and hard-link groups.
fn make_lower(lower: &Path, rng: &mut Rng) {
    let mut id = 0;
    for d in ["a", "a/b", "c", "c/d", "e"] {
        fs::create_dir_all(lower.join(d)).expect("mkdir lower");
        for i in 0..6 {
            id += 1;
            let len = [1024, 40_000, 300_000, 1 << 20][rng.below(4)] + rng.below(1000);
            let path = lower.join(d).join(format!("f{i}"));
            fs::write(&path, content(id, len)).expect("write lower file");
            if i == 5 {
                fs::hard_link(&path, lower.join(d).join("link-to-f5")).expect("lower link");
            }
        }
    }
}

/// The client: random changes until the mount dies (or `stop`).
fn client(mnt: &Path, mut rng: Rng, next_id: u64, stop: &AtomicBool) {
    let mut id = next_id;
    while !stop.load(Ordering::Relaxed) {
        if fs::symlink_metadata(mnt).is_err() {
            return; // the daemon is gone
        }
        let (mut files, dirs) = walk(mnt);
        // A temp file a kill cut short is no file to pass on under another
        // name.
        files.retain(|f| !f.rsplit('/').next().unwrap_or_default().starts_with("tmp"));
        let Some(file) = files.get(rng.below(files.len())).cloned() else {
            return;
        };
        let dir = dirs.get(rng.below(dirs.len())).cloned().unwrap_or_default();
        id += 1;
        let fresh = mnt.join(&dir).join(format!("n{id}"));
        let f = mnt.join(&file);
        // Errors are expected once the daemon is killed.
        let _ = match rng.below(8) {
            0 | 1 => {
                fs::set_permissions(&f, fs::Permissions::from_mode(0o600 | rng.below(64) as u32))
            }
            2 => fs::rename(&f, &fresh),
            3 => fs::remove_file(&f),
            4 => fs::hard_link(&f, &fresh),
            5 => xattr_set(&f, id),
            6 => {
                // Replace a file the safe way: write a temp file, rename.
                let tmp = mnt.join(&dir).join(format!("tmp{id}"));
                fs::File::create(&tmp)
                    .and_then(|mut t| {
                        t.write_all(&content(id, 1000 + rng.below(200_000)))?;
                        t.sync_all()
                    })
                    .and_then(|()| fs::rename(&tmp, &f))
            }
            _ => match dirs.get(rng.below(dirs.len())) {
                Some(d) if !dir.starts_with(d.as_str()) => {
                    fs::rename(mnt.join(d), mnt.join(&dir).join(format!("dir{id}")))
                }
                _ => Ok(()),
            },
        };
    }
}

fn xattr_set(path: &Path, id: u64) -> std::io::Result<()> {
    let out = std::process::Command::new("setfattr")
        .args(["-h", "-n", "user.crash", "-v"])
        .arg(id.to_string())
        .arg(path)
        .output()?;
    if out.status.success() {
        Ok(())
    } else {
        Err(std::io::Error::other("setfattr failed"))
    }
}

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.parse().ok())
}

#[test]
fn killed_at_random_moments_nothing_is_half_done() {
    common::require_root();
    let runs = env_u64("LAYERFS_CRASH_RUNS").unwrap_or(20);
    let seed = env_u64("LAYERFS_CRASH_SEED").unwrap_or(0xc4a5_4ed5);
    eprintln!("crash: {runs} kills, LAYERFS_CRASH_SEED={seed}");
    let mut rng = Rng::new(seed);
    let tmp = common::tempdir("layerfs-crash-");
    let root = tmp.path().canonicalize().expect("canonical temp dir");
    let (lower, upper, work) = (root.join("lower"), root.join("upper"), root.join("work"));
    for d in [&lower, &upper, &work] {
        fs::create_dir(d).expect("mkdir");
    }
    make_lower(&lower, &mut rng);
    let lower_before = common::snapshot(&lower);
    let opts = format!(
        "upperdir={},workdir={}",
        common::escape_opt_path(&upper),
        common::escape_opt_path(&work)
    );
    let layers = vec![lower.clone()];
    let mut kills = 0;
    for run in 0..runs {
        let mount = LayerfsMount::mount(&layers, &opts);
        let left: Vec<String> = names_in(&work.join("work"));
        assert!(
            left.is_empty(),
            "run {run} (seed {seed}): the work dir holds {left:?} after the mount"
        );
        let broken = broken_files(mount.path());
        assert!(
            broken.is_empty(),
            "run {run} (seed {seed}): after the kill before, files are not whole:\n{}",
            broken.join("\n")
        );
        let stop = Arc::new(AtomicBool::new(false));
        let client_thread = {
            let (mnt, stop) = (mount.path().to_path_buf(), stop.clone());
            let client_rng = Rng::new(rng.next());
            let first_id = 1_000_000 * (run + 1);
            std::thread::spawn(move || client(&mnt, client_rng, first_id, &stop))
        };
        std::thread::sleep(Duration::from_millis(20 + rng.below(200) as u64));
        if let Some(pid) = mount.pid() {
            // Our own child, by pid.
            let pid = nix::unistd::Pid::from_raw(pid as i32);
            if nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL).is_ok() {
                kills += 1;
            }
        }
        stop.store(true, Ordering::Relaxed);
        // A killed daemon must let go of its callers at once (ENOTCONN).
        // One that cannot finish exiting (a thread stuck in the kernel, as
        // an entry invalidation behind a directory lock once was) leaves
        // them waiting: abort its connection so nothing hangs, and fail.
        let deadline = Instant::now() + Duration::from_secs(5);
        while !client_thread.is_finished() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        let stuck = !client_thread.is_finished();
        if stuck {
            mount.abort_connection();
        }
        client_thread.join().expect("the client thread panicked");
        let exit = mount.unmount();
        assert!(
            !stuck,
            "run {run} (seed {seed}): 5 s after the kill the client still waits in the mount:\n{}",
            exit.log
        );
        assert!(
            !exit.status.is_some_and(|s| s.success()),
            "run {run}: the daemon was not killed:\n{}",
            exit.log
        );
    }
    eprintln!("crash: {kills} daemons killed mid-work");

    // After the last kill: a clean mount, then the kernel over the same upper.
    let ours = LayerfsMount::mount(&layers, &opts);
    let broken = broken_files(ours.path());
    assert!(broken.is_empty(), "seed {seed}: {}", broken.join("\n"));
    let ours_tree = common::snapshot(ours.path());
    drop(ours);
    assert!(
        names_in(&work.join("work")).is_empty(),
        "the work dir is not empty after a clean unmount"
    );
    let kernel = KernelOverlay::mount(&layers, &format!("{opts},redirect_dir=on"));
    let kernel_tree = common::snapshot(kernel.path());
    drop(kernel);
    // Names, types and contents (modes and link groups of hard-linked lower
    // files copied up differ until the kernel's index is shared: see
    // docs/reliability.md).
    let contents = |t: &common::Tree| -> BTreeMap<Vec<u8>, (common::Kind, Option<String>)> {
        t.entries
            .iter()
            .map(|(p, e)| (p.clone(), (e.kind, e.sha256.clone())))
            .collect()
    };
    let (a, b) = (contents(&ours_tree), contents(&kernel_tree));
    let differ: Vec<String> = a
        .keys()
        .chain(b.keys())
        .filter(|p| a.get(*p) != b.get(*p))
        .map(|p| String::from_utf8_lossy(p).into_owned())
        .take(20)
        .collect();
    assert!(
        differ.is_empty(),
        "seed {seed}: the kernel shows another tree at: {differ:?}"
    );
    let changed = common::diff(&lower_before, &common::snapshot(&lower));
    assert!(
        changed.is_empty(),
        "the lower changed:\n{}",
        changed.join("\n")
    );
}

#[test]
fn contents_are_recognised_whole_or_not() {
    let whole = content(7, 5000);
    assert_eq!(not_whole(&whole), None);
    assert!(not_whole(&whole[..4000]).is_some());
    let mut flipped = whole.clone();
    flipped[4000] ^= 1;
    assert!(not_whole(&flipped).is_some());
}
