//! Stress: threads of seeded random operations on one writable mount, each
//! checking what it reads back, under a watchdog (needs root).
//!
//! Each thread owns a subtree (a lower directory, so its files start as
//! lower files and get copied up) and keeps a model of it; all threads also
//! create, rename and remove their own names in one shared directory. At
//! the end the mount must equal the models (paths, types, modes, contents,
//! link counts); so must a remount of the same upper, and the kernel's
//! overlayfs over the same layers. The daemon's open fds and memory must be
//! back near where they started once the kernel forgets its inodes.
//!
//! `LAYERFS_STRESS_SECS` (default 5) and `LAYERFS_STRESS_SEED` choose the
//! run; `make stress` runs it long with a fresh seed. A failure prints the
//! seed.

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::io::{Read, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::load::{Load, Worker, run_with_watchdog};
use common::rng::Rng;
use common::{KernelOverlay, LayerfsMount, Tree};

const THREADS: usize = 4;
const STALL: Duration = Duration::from_secs(20);
/// Lower files per thread subtree.
const LOWER_FILES: usize = 12;

/// One file's data and mode, shared by its hard links.
#[derive(Clone, Debug, PartialEq)]
struct Inode {
    data: Vec<u8>,
    perm: u32,
}

/// What a thread expects under its subtree: relative path -> a directory
/// or a file (an index into `inodes`).
#[derive(Default)]
struct Model {
    entries: BTreeMap<String, Option<usize>>,
    inodes: Vec<Inode>,
    /// Names in the shared directory this thread owns -> inode.
    shared: BTreeMap<String, usize>,
}

impl Model {
    fn files(&self) -> Vec<&String> {
        self.entries
            .iter()
            .filter(|(_, v)| v.is_some())
            .map(|(k, _)| k)
            .collect()
    }

    fn dirs(&self) -> Vec<&String> {
        self.entries
            .iter()
            .filter(|(_, v)| v.is_none())
            .map(|(k, _)| k)
            .collect()
    }

    fn is_empty_dir(&self, dir: &str) -> bool {
        let prefix = format!("{dir}/");
        !self.entries.keys().any(|k| k.starts_with(&prefix))
    }

    fn links(&self, inode: usize) -> usize {
        self.entries.values().filter(|v| **v == Some(inode)).count()
            + self.shared.values().filter(|v| **v == inode).count()
    }
}

/// One thread's state: its subtree under the mount, its model, its rng.
struct Actor {
    id: usize,
    root: PathBuf,
    shared: PathBuf,
    model: Arc<Mutex<Model>>,
    rng: Rng,
    next_name: u64,
}

fn fail(what: &str, path: &Path, e: std::io::Error) -> ! {
    panic!("{what} {}: {e}", path.display())
}

fn read_all(path: &Path) -> Vec<u8> {
    let mut f = fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
        .unwrap_or_else(|e| fail("open", path, e));
    let mut v = Vec::new();
    f.read_to_end(&mut v)
        .unwrap_or_else(|e| fail("read", path, e));
    v
}

impl Actor {
    fn fresh_name(&mut self) -> String {
        self.next_name += 1;
        format!("n{}", self.next_name)
    }

    /// A random directory of the subtree ("" is its root), or a new name in
    /// one.
    fn some_dir(&mut self, m: &Model) -> String {
        let dirs = m.dirs();
        let i = self.rng.below(dirs.len() + 1);
        dirs.get(i).map(|s| s.to_string()).unwrap_or_default()
    }

    fn new_path(&mut self, m: &Model) -> String {
        let dir = self.some_dir(m);
        let name = self.fresh_name();
        if dir.is_empty() {
            name
        } else {
            format!("{dir}/{name}")
        }
    }

    fn some_file(&mut self, m: &Model) -> Option<String> {
        let files = m.files();
        let i = self.rng.below(files.len());
        files.get(i).map(|s| s.to_string())
    }

    fn check_file(&self, m: &Model, rel: &str, path: &Path) {
        let Some(Some(ino)) = m.entries.get(rel) else {
            return;
        };
        let got = read_all(path);
        let want = &m.inodes[*ino].data;
        assert!(
            got == *want,
            "thread {}: {} reads {} bytes, expected {} bytes (what was written)",
            self.id,
            path.display(),
            got.len(),
            want.len()
        );
    }

    /// One random operation, then a read-back of what it changed.
    fn step(&mut self, load: &Load) {
        let model = self.model.clone();
        let mut m = model.lock().unwrap_or_else(|e| e.into_inner());
        let op = self.rng.below(13);
        match op {
            // Create (or overwrite) a file with fresh data.
            0 | 1 => {
                let rel = match self.rng.below(3) {
                    0 => self.some_file(&m).unwrap_or_else(|| self.new_path(&m)),
                    _ => self.new_path(&m),
                };
                let path = self.root.join(&rel);
                let data = {
                    let n = self.rng.below(48 * 1024);
                    self.rng.bytes(n)
                };
                let mut f = fs::OpenOptions::new()
                    .write(true)
                    .create(true)
                    .truncate(true)
                    .mode(0o644)
                    .custom_flags(libc::O_NOFOLLOW)
                    .open(&path)
                    .unwrap_or_else(|e| fail("create", &path, e));
                f.write_all(&data)
                    .unwrap_or_else(|e| fail("write", &path, e));
                drop(f);
                match m.entries.get(&rel).copied() {
                    Some(Some(ino)) => m.inodes[ino].data = data,
                    _ => {
                        m.inodes.push(Inode { data, perm: 0o644 });
                        let ino = m.inodes.len() - 1;
                        m.entries.insert(rel.clone(), Some(ino));
                    }
                }
                self.check_file(&m, &rel, &path);
            }
            // Append.
            2 => {
                let Some(rel) = self.some_file(&m) else {
                    return;
                };
                let path = self.root.join(&rel);
                let extra = {
                    let n = self.rng.below(8192);
                    self.rng.bytes(n)
                };
                let mut f = fs::OpenOptions::new()
                    .append(true)
                    .custom_flags(libc::O_NOFOLLOW)
                    .open(&path)
                    .unwrap_or_else(|e| fail("open for append", &path, e));
                f.write_all(&extra)
                    .unwrap_or_else(|e| fail("append", &path, e));
                drop(f);
                let ino = m.entries[&rel].expect("a file");
                m.inodes[ino].data.extend_from_slice(&extra);
                self.check_file(&m, &rel, &path);
            }
            // Truncate, shorter or longer.
            3 => {
                let Some(rel) = self.some_file(&m) else {
                    return;
                };
                let path = self.root.join(&rel);
                let ino = m.entries[&rel].expect("a file");
                let len = self.rng.below(m.inodes[ino].data.len() * 2 + 16);
                fs::OpenOptions::new()
                    .write(true)
                    .custom_flags(libc::O_NOFOLLOW)
                    .open(&path)
                    .and_then(|f| f.set_len(len as u64))
                    .unwrap_or_else(|e| fail("truncate", &path, e));
                m.inodes[ino].data.resize(len, 0);
                self.check_file(&m, &rel, &path);
            }
            // Unlink.
            4 => {
                let Some(rel) = self.some_file(&m) else {
                    return;
                };
                let path = self.root.join(&rel);
                fs::remove_file(&path).unwrap_or_else(|e| fail("unlink", &path, e));
                m.entries.remove(&rel);
                if let Err(e) = fs::symlink_metadata(&path) {
                    assert_eq!(e.raw_os_error(), Some(libc::ENOENT), "{}", path.display());
                } else {
                    panic!("{} still there after unlink", path.display());
                }
            }
            // Rename a file, maybe over another.
            5 => {
                let Some(from) = self.some_file(&m) else {
                    return;
                };
                let to = match self.rng.below(3) {
                    0 => self.some_file(&m).unwrap_or_else(|| self.new_path(&m)),
                    _ => self.new_path(&m),
                };
                if from != to && m.entries.get(&to) == m.entries.get(&from) {
                    return; // two links of one file: rename does nothing
                }
                let (pf, pt) = (self.root.join(&from), self.root.join(&to));
                fs::rename(&pf, &pt).unwrap_or_else(|e| fail("rename", &pf, e));
                let ino = m.entries.remove(&from).expect("a file");
                m.entries.insert(to.clone(), ino);
                self.check_file(&m, &to, &pt);
            }
            // Make a directory.
            6 => {
                let rel = self.new_path(&m);
                let path = self.root.join(&rel);
                fs::create_dir(&path).unwrap_or_else(|e| fail("mkdir", &path, e));
                m.entries.insert(rel, None);
            }
            // Remove an empty directory.
            7 => {
                let empty: Vec<String> = m
                    .dirs()
                    .into_iter()
                    .filter(|d| m.is_empty_dir(d))
                    .cloned()
                    .collect();
                let Some(rel) = empty.get(self.rng.below(empty.len())).cloned() else {
                    return;
                };
                let path = self.root.join(&rel);
                fs::remove_dir(&path).unwrap_or_else(|e| fail("rmdir", &path, e));
                m.entries.remove(&rel);
            }
            // Rename a directory (lower ones too: a redirect) to a new name.
            8 => {
                let dirs: Vec<String> = m.dirs().into_iter().cloned().collect();
                let Some(from) = dirs.get(self.rng.below(dirs.len())).cloned() else {
                    return;
                };
                let to = self.new_path(&m);
                if to.starts_with(&format!("{from}/")) {
                    return; // into itself
                }
                let (pf, pt) = (self.root.join(&from), self.root.join(&to));
                fs::rename(&pf, &pt).unwrap_or_else(|e| fail("rename dir", &pf, e));
                let prefix = format!("{from}/");
                let moved: Vec<(String, Option<usize>)> = m
                    .entries
                    .iter()
                    .filter(|(k, _)| **k == from || k.starts_with(&prefix))
                    .map(|(k, v)| (k.clone(), *v))
                    .collect();
                for (k, v) in moved {
                    m.entries.remove(&k);
                    m.entries.insert(format!("{to}{}", &k[from.len()..]), v);
                }
            }
            // chmod.
            9 => {
                let Some(rel) = self.some_file(&m) else {
                    return;
                };
                let path = self.root.join(&rel);
                let perm = 0o600 | (self.rng.below(0o100) as u32);
                fs::set_permissions(&path, fs::Permissions::from_mode(perm))
                    .unwrap_or_else(|e| fail("chmod", &path, e));
                let ino = m.entries[&rel].expect("a file");
                m.inodes[ino].perm = perm;
            }
            // Hard link.
            10 => {
                let Some(from) = self.some_file(&m) else {
                    return;
                };
                let to = self.new_path(&m);
                let (pf, pt) = (self.root.join(&from), self.root.join(&to));
                fs::hard_link(&pf, &pt).unwrap_or_else(|e| fail("link", &pf, e));
                let ino = m.entries[&from];
                m.entries.insert(to.clone(), ino);
                self.check_file(&m, &to, &pt);
            }
            // Read a file back.
            11 => {
                let Some(rel) = self.some_file(&m) else {
                    return;
                };
                let path = self.root.join(&rel);
                self.check_file(&m, &rel, &path);
            }
            // The shared directory: create, or remove one of ours.
            _ => {
                let names: Vec<String> = m.shared.keys().cloned().collect();
                if let (false, Some(name)) = (
                    self.rng.below(2) == 0,
                    names.get(self.rng.below(names.len())),
                ) {
                    let path = self.shared.join(name);
                    fs::remove_file(&path).unwrap_or_else(|e| fail("unlink", &path, e));
                    m.shared.remove(name);
                } else {
                    let fresh = self.fresh_name();
                    let name = format!("t{}-{fresh}", self.id);
                    let path = self.shared.join(&name);
                    let data = {
                        let n = self.rng.below(4096);
                        self.rng.bytes(n)
                    };
                    fs::write(&path, &data).unwrap_or_else(|e| fail("create", &path, e));
                    assert_eq!(read_all(&path), data, "{}", path.display());
                    m.inodes.push(Inode { data, perm: 0o644 });
                    let ino = m.inodes.len() - 1;
                    m.shared.insert(name, ino);
                }
            }
        }
        load.done();
    }
}

/// The differences between a thread's model and a snapshot of its subtree
/// (and of its names in the shared directory).
fn compare(id: usize, m: &Model, tree: &Tree, shared: &Tree) -> Vec<String> {
    let mut problems = Vec::new();
    let mut check = |rel: &str, ino: Option<usize>, got: Option<&common::Entry>| {
        let Some(got) = got else {
            problems.push(format!("thread {id}: {rel} is missing"));
            return;
        };
        match ino {
            None if got.kind != common::Kind::Dir => {
                problems.push(format!("thread {id}: {rel} is {:?}, not a dir", got.kind))
            }
            Some(ino) => {
                let want = &m.inodes[ino];
                let sha = common::images::hex_digest(&want.data);
                let sha = sha.trim_start_matches("sha256:");
                if got.kind != common::Kind::File || got.sha256.as_deref() != Some(sha) {
                    problems.push(format!(
                        "thread {id}: {rel}: {:?} of {} bytes, expected a file of {} bytes",
                        got.kind,
                        got.size,
                        want.data.len()
                    ));
                }
                if got.perm != want.perm {
                    problems.push(format!(
                        "thread {id}: {rel}: mode {:o}, expected {:o}",
                        got.perm, want.perm
                    ));
                }
                if got.nlink != Some(m.links(ino) as u64) {
                    problems.push(format!(
                        "thread {id}: {rel}: nlink {:?}, expected {}",
                        got.nlink,
                        m.links(ino)
                    ));
                }
            }
            None => {}
        }
    };
    for (rel, ino) in &m.entries {
        check(rel, *ino, tree.get(rel));
    }
    for (name, ino) in &m.shared {
        check(&format!("shared/{name}"), Some(*ino), shared.get(name));
    }
    for p in tree.paths() {
        let rel = String::from_utf8_lossy(p);
        if !rel.is_empty() && !m.entries.contains_key(rel.as_ref()) {
            problems.push(format!("thread {id}: {rel} is there but was never made"));
        }
    }
    let prefix = format!("t{id}-");
    for p in shared.paths() {
        let name = String::from_utf8_lossy(p);
        if name.starts_with(&prefix) && !m.shared.contains_key(name.as_ref()) {
            problems.push(format!(
                "thread {id}: shared/{name} was removed but is there"
            ));
        }
    }
    problems
}

/// Compares every thread's model with the tree under `root`.
fn check_models(what: &str, root: &Path, models: &[Arc<Mutex<Model>>], seed: u64) {
    let shared = common::snapshot(&root.join("shared"));
    let mut problems = Vec::new();
    for (id, model) in models.iter().enumerate() {
        let m = model.lock().unwrap_or_else(|e| e.into_inner());
        let tree = common::snapshot(&root.join(format!("t{id}")));
        problems.extend(compare(id, &m, &tree, &shared));
    }
    problems.truncate(40);
    assert!(
        problems.is_empty(),
        "{what} differs from the model (seed {seed}):\n{}",
        problems.join("\n")
    );
}

/// Open fds and resident KiB of process `pid`.
fn fds_and_rss(pid: u32) -> (usize, u64) {
    let fds = fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count());
    let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let rss = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0);
    (fds, rss)
}

/// Makes the kernel forget what it can (dentries and inodes), so the
/// daemon gets its FORGETs.
fn drop_kernel_caches() {
    let _ = fs::write("/proc/sys/vm/drop_caches", "2");
    std::thread::sleep(Duration::from_millis(500));
}

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.parse().ok())
}

#[test]
fn random_operations_keep_every_byte() {
    common::require_root();
    let secs = env_u64("LAYERFS_STRESS_SECS").unwrap_or(5);
    let seed = env_u64("LAYERFS_STRESS_SEED").unwrap_or(0x5eed_1a7e_0f5f);
    eprintln!("stress: {THREADS} threads for {secs} s, LAYERFS_STRESS_SEED={seed}");
    let tmp = common::tempdir("layerfs-stress-");
    let root = tmp.path().canonicalize().expect("canonical temp dir");
    let (lower, upper, work) = (root.join("lower"), root.join("upper"), root.join("work"));
    for d in [&lower, &upper, &work] {
        fs::create_dir(d).expect("mkdir");
    }
    fs::create_dir(lower.join("shared")).expect("mkdir shared");
    let mut seeds = Rng::new(seed);
    let mut models = Vec::new();
    for id in 0..THREADS {
        let mut m = Model::default();
        let sub = lower.join(format!("t{id}"));
        fs::create_dir_all(sub.join("d/e")).expect("mkdir lower subtree");
        m.entries.insert("d".into(), None);
        m.entries.insert("d/e".into(), None);
        for i in 0..LOWER_FILES {
            let rel = ["", "d/", "d/e/"][i % 3].to_string() + &format!("l{i}");
            let data = seeds.bytes(1000 + i * 700);
            fs::write(sub.join(&rel), &data).expect("write lower file");
            fs::set_permissions(sub.join(&rel), fs::Permissions::from_mode(0o644))
                .expect("chmod lower file");
            m.inodes.push(Inode { data, perm: 0o644 });
            m.entries.insert(rel, Some(m.inodes.len() - 1));
        }
        models.push(Arc::new(Mutex::new(m)));
    }
    let manifest_before = common::snapshot(&lower);
    let opts = format!(
        "upperdir={},workdir={}",
        common::escape_opt_path(&upper),
        common::escape_opt_path(&work)
    );
    let mount = LayerfsMount::mount(std::slice::from_ref(&lower), &opts);
    let mnt = mount.path().to_path_buf();
    let pid = mount.pid().expect("daemon pid");
    common::snapshot(&mnt);
    drop_kernel_caches();
    let (fds0, rss0) = fds_and_rss(pid);

    let workers: Vec<Worker> = models
        .iter()
        .enumerate()
        .map(|(id, model)| {
            let mut actor = Actor {
                id,
                root: mnt.join(format!("t{id}")),
                shared: mnt.join("shared"),
                model: model.clone(),
                rng: Rng::new(seeds.next()),
                next_name: 0,
            };
            Box::new(move |l: &Load| actor.step(l)) as Worker
        })
        .collect();
    let calls = run_with_watchdog(&mount, workers, Duration::from_secs(secs), STALL);
    eprintln!("stress: {calls} operations checked");
    assert!(calls > 100, "only {calls} operations ran (seed {seed})");
    check_models("the mount", &mnt, &models, seed);

    drop_kernel_caches();
    let (fds1, rss1) = fds_and_rss(pid);
    eprintln!("stress: daemon fds {fds0} -> {fds1}, RSS {rss0} -> {rss1} KiB");
    assert!(
        fds1 <= fds0 + 8,
        "the daemon holds {fds1} fds after the load, {fds0} before (seed {seed})"
    );
    // Caches the daemon keeps on purpose are bounded; what the load made
    // and removed must not stay.
    assert!(
        rss1 <= rss0 + 64 * 1024,
        "the daemon's RSS grew from {rss0} KiB to {rss1} KiB (seed {seed})"
    );
    let exit = mount.unmount();
    exit.assert_clean();

    // What was written stays written: a remount, and the kernel.
    let again = LayerfsMount::mount(std::slice::from_ref(&lower), &opts);
    check_models("a remount", again.path(), &models, seed);
    drop(again);
    let kernel = KernelOverlay::mount(
        std::slice::from_ref(&lower),
        &format!("{opts},redirect_dir=on"),
    );
    check_models("the kernel's overlayfs", kernel.path(), &models, seed);
    drop(kernel);
    let problems = common::diff(&manifest_before, &common::snapshot(&lower));
    assert!(
        problems.is_empty(),
        "the lower layer changed:\n{}",
        problems.join("\n")
    );
}
