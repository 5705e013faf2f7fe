//! Bad input to the real binary: `layerfs mount` must exit non-zero with
//! exactly one line on stderr naming the offending path or option, mount
//! nothing and change nothing; `layerfs umount` of something that is not a
//! layerfs mount fails the same way.

mod common;

use std::collections::BTreeMap;
use std::ffi::{OsStr, OsString};
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use common::tmpfs::Tmpfs;

const BIN: &str = env!("CARGO_BIN_EXE_layerfs");

/// A temp dir holding every path a test uses. Dropping it first lazily
/// unmounts anything still mounted below it, so a failed test leaves
/// nothing behind.
struct Scene {
    _tmp: tempfile::TempDir,
    root: PathBuf,
}

impl Scene {
    fn new() -> Self {
        let tmp = tempfile::tempdir().expect("temp dir");
        let root = fs::canonicalize(tmp.path()).expect("canonical temp dir");
        Scene { _tmp: tmp, root }
    }

    fn dir(&self, rel: &str) -> PathBuf {
        let p = self.root.join(rel);
        fs::create_dir_all(&p).expect("create dir");
        p
    }

    fn file(&self, rel: &str) -> PathBuf {
        let p = self.root.join(rel);
        fs::write(&p, "some content\n").expect("write file");
        p
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.root.join(rel)
    }

    /// Mount points (with fstype) at or below the root, in mount order.
    fn mounts(&self) -> Vec<(PathBuf, String)> {
        mountinfo()
            .into_iter()
            .filter(|(p, _)| p.starts_with(&self.root))
            .collect()
    }

    /// Every entry below the root with its type, mode, size and times.
    fn snapshot(&self) -> BTreeMap<PathBuf, (u32, u64, i64, i64)> {
        let mut out = BTreeMap::new();
        let mut stack = vec![self.root.clone()];
        while let Some(dir) = stack.pop() {
            for entry in fs::read_dir(&dir).expect("read_dir") {
                let path = entry.expect("dir entry").path();
                let md = fs::symlink_metadata(&path).expect("lstat");
                out.insert(
                    path.clone(),
                    (md.mode(), md.size(), md.mtime_nsec(), md.ctime_nsec()),
                );
                if md.is_dir() {
                    stack.push(path);
                }
            }
        }
        out
    }
}

impl Drop for Scene {
    fn drop(&mut self) {
        for (mnt, _) in self.mounts().into_iter().rev() {
            let _ = nix::mount::umount2(&mnt, nix::mount::MntFlags::MNT_DETACH);
        }
    }
}

/// /proc/self/mountinfo as (mount point, fstype), octal escapes decoded.
fn mountinfo() -> Vec<(PathBuf, String)> {
    layerfs::cli::options::mount_points().expect("read /proc/self/mountinfo")
}

/// Escapes a path for an overlay option value (`\`, `:` and `,`).
fn esc(p: &Path) -> String {
    let mut out = String::new();
    for c in p.to_str().expect("test paths are UTF-8").chars() {
        if matches!(c, '\\' | ':' | ',') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

fn os(s: impl AsRef<OsStr>) -> OsString {
    s.as_ref().to_os_string()
}

struct Run {
    status: ExitStatus,
    stderr: String,
}

/// Runs `program args...` with no stdin; gives up (and kills it) after a
/// minute. Output goes to files so a stray daemon holding them cannot
/// block us.
fn run(program: &Path, args: &[OsString]) -> Run {
    let out_dir = tempfile::tempdir().expect("temp dir");
    let out = fs::File::create(out_dir.path().join("stdout")).expect("stdout file");
    let err = fs::File::create(out_dir.path().join("stderr")).expect("stderr file");
    let mut child = Command::new(program)
        .args(args)
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .spawn()
        .expect("spawn layerfs");
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "{} {args:?} did not finish within a minute",
                program.display()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let stderr = fs::read_to_string(out_dir.path().join("stderr")).expect("read stderr");
    Run { status, stderr }
}

/// Runs the binary (as `program`, default `layerfs`), expects failure with
/// one stderr line containing every one of `names`, and checks that the
/// scene's mounts and files are unchanged. Returns the line.
fn expect_failure_as(scene: &Scene, program: &Path, args: &[OsString], names: &[&str]) -> String {
    let mounts_before = scene.mounts();
    let tree_before = scene.snapshot();
    let r = run(program, args);
    assert_eq!(
        scene.mounts(),
        mounts_before,
        "mounts changed; args {args:?}, stderr {:?}",
        r.stderr
    );
    assert!(
        !r.status.success(),
        "succeeded but should fail: {args:?}; stderr {:?}",
        r.stderr
    );
    assert!(
        r.stderr.ends_with('\n') && r.stderr.matches('\n').count() == 1,
        "stderr must be exactly one line, got {:?} for {args:?}",
        r.stderr
    );
    let line = r.stderr.trim_end().to_string();
    for name in names {
        assert!(
            line.contains(name),
            "stderr {line:?} does not name {name:?} (args {args:?})"
        );
    }
    assert_eq!(scene.snapshot(), tree_before, "files changed: {args:?}");
    line
}

fn expect_failure(scene: &Scene, args: &[OsString], names: &[&str]) -> String {
    let line = expect_failure_as(scene, Path::new(BIN), args, names);
    assert!(line.starts_with("layerfs: "), "{line:?}");
    line
}

/// `layerfs mount -o OPTS MNT`
fn mount_o(opts: &str, mnt: &Path) -> Vec<OsString> {
    vec![os("mount"), os("-o"), os(opts), os(mnt)]
}

fn s(p: &Path) -> String {
    p.display().to_string()
}

#[test]
fn missing_lower() {
    let sc = Scene::new();
    let (l1, mnt) = (sc.dir("l1"), sc.dir("mnt"));
    sc.file("l1/keep");
    let missing = sc.path("missing");
    let opts = format!("lowerdir={}:{}", esc(&l1), esc(&missing));
    expect_failure(
        &sc,
        &mount_o(&opts, &mnt),
        &[&s(&missing), "no such file or directory"],
    );
}

#[test]
fn missing_lower_with_escaped_comma_and_colon() {
    let sc = Scene::new();
    let mnt = sc.dir("mnt");
    let weird = sc.path("we,ird:name");
    let opts = format!("lowerdir={},ro", esc(&weird));
    expect_failure(
        &sc,
        &mount_o(&opts, &mnt),
        &[&s(&weird), "no such file or directory"],
    );
}

#[test]
fn lower_is_a_file() {
    let sc = Scene::new();
    let (l1, mnt) = (sc.dir("l1"), sc.dir("mnt"));
    let file = sc.file("plain");
    let opts = format!("lowerdir={}:{}", esc(&l1), esc(&file));
    expect_failure(&sc, &mount_o(&opts, &mnt), &[&s(&file), "not a directory"]);
}

#[test]
fn empty_lowerdir() {
    let sc = Scene::new();
    let mnt = sc.dir("mnt");
    expect_failure(&sc, &mount_o("lowerdir=", &mnt), &["lowerdir"]);
    expect_failure(&sc, &mount_o("lowerdir=,ro", &mnt), &["lowerdir"]);
}

#[test]
fn empty_layer_in_lowerdir() {
    let sc = Scene::new();
    let (a, b, mnt) = (sc.dir("a"), sc.dir("b"), sc.dir("mnt"));
    let opts = format!("lowerdir={}::{}", esc(&a), esc(&b));
    expect_failure(&sc, &mount_o(&opts, &mnt), &["lowerdir", "::"]);
    let opts = format!("lowerdir={}:", esc(&a));
    expect_failure(&sc, &mount_o(&opts, &mnt), &["lowerdir", "empty"]);
}

#[test]
fn unknown_option() {
    let sc = Scene::new();
    let (l, mnt) = (sc.dir("l"), sc.dir("mnt"));
    let opts = format!("lowerdir={},frobnicate", esc(&l));
    expect_failure(&sc, &mount_o(&opts, &mnt), &["frobnicate"]);
    // In a second -o, with a value.
    let args = vec![
        os("mount"),
        os("-o"),
        os(format!("lowerdir={}", esc(&l))),
        os("-o"),
        os("colour=blue"),
        os(&mnt),
    ];
    expect_failure(&sc, &args, &["colour"]);
    let opts = format!("lowerdir={},loop", esc(&l));
    expect_failure(&sc, &mount_o(&opts, &mnt), &["loop"]);
}

#[test]
fn bad_option_value() {
    let sc = Scene::new();
    let (l, mnt) = (sc.dir("l"), sc.dir("mnt"));
    let opts = format!("lowerdir={},xino=maybe", esc(&l));
    expect_failure(&sc, &mount_o(&opts, &mnt), &["xino", "maybe"]);
    let opts = format!("lowerdir={},whiteout=docker", esc(&l));
    expect_failure(&sc, &mount_o(&opts, &mnt), &["whiteout", "docker"]);
    let opts = format!("lowerdir={},ro=yes", esc(&l));
    expect_failure(&sc, &mount_o(&opts, &mnt), &["ro", "yes"]);
}

#[test]
fn repeated_lowerdir() {
    let sc = Scene::new();
    let (a, b, mnt) = (sc.dir("a"), sc.dir("b"), sc.dir("mnt"));
    let args = vec![
        os("mount"),
        os("-o"),
        os(format!("lowerdir={}", esc(&a))),
        os("-o"),
        os(format!("lowerdir={}", esc(&b))),
        os(&mnt),
    ];
    expect_failure(&sc, &args, &["lowerdir", "more than once"]);
}

#[test]
fn mountpoint_missing() {
    let sc = Scene::new();
    let l = sc.dir("l");
    let mnt = sc.path("no-such-mnt");
    let opts = format!("lowerdir={}", esc(&l));
    expect_failure(
        &sc,
        &mount_o(&opts, &mnt),
        &[&s(&mnt), "no such file or directory"],
    );
}

#[test]
fn mountpoint_is_a_file() {
    let sc = Scene::new();
    let l = sc.dir("l");
    let mnt = sc.file("mnt-file");
    let opts = format!("lowerdir={}", esc(&l));
    expect_failure(&sc, &mount_o(&opts, &mnt), &[&s(&mnt), "not a directory"]);
}

#[test]
fn mountpoint_inside_a_lower() {
    let sc = Scene::new();
    let (top, bottom) = (sc.dir("top"), sc.dir("bottom"));
    let mnt = sc.dir("bottom/sub/mnt");
    sc.file("bottom/sub/other");
    let opts = format!("lowerdir={}:{}", esc(&top), esc(&bottom));
    expect_failure(&sc, &mount_o(&opts, &mnt), &[&s(&mnt), &s(&bottom)]);
    // The lower itself as the mount point.
    expect_failure(&sc, &mount_o(&opts, &top), &[&s(&top)]);
}

#[test]
fn lower_inside_mountpoint() {
    let sc = Scene::new();
    let mnt = sc.dir("mnt");
    let l = sc.dir("mnt/layers/l");
    sc.file("mnt/layers/l/data");
    let opts = format!("lowerdir={}", esc(&l));
    expect_failure(&sc, &mount_o(&opts, &mnt), &[&s(&l), &s(&mnt)]);
}

#[test]
fn mountpoint_already_mounted() {
    let sc = Scene::new();
    let (l, mnt) = (sc.dir("l"), sc.dir("mnt"));
    let _tmpfs = Tmpfs::mount(&mnt, "");
    fs::write(mnt.join("on-tmpfs"), "x").expect("write on tmpfs");
    let opts = format!("lowerdir={}", esc(&l));
    expect_failure(&sc, &mount_o(&opts, &mnt), &[&s(&mnt), "mount point"]);
    assert_eq!(sc.mounts(), vec![(mnt.clone(), "tmpfs".to_string())]);
    assert!(mnt.join("on-tmpfs").exists());
}

#[test]
fn lower_flag_with_lowerdir_option() {
    let sc = Scene::new();
    let (a, b, mnt) = (sc.dir("a"), sc.dir("b"), sc.dir("mnt"));
    let args = vec![
        os("mount"),
        os("--lower"),
        os(&a),
        os("-o"),
        os(format!("lowerdir={}", esc(&b))),
        os(&mnt),
    ];
    expect_failure(&sc, &args, &["--lower", "lowerdir"]);
}

#[test]
fn no_lower_at_all() {
    let sc = Scene::new();
    let mnt = sc.dir("mnt");
    expect_failure(&sc, &[os("mount"), os(&mnt)], &["lower"]);
    expect_failure(&sc, &mount_o("ro", &mnt), &["lower"]);
    let (u, w) = (sc.dir("u"), sc.dir("w"));
    let args = vec![
        os("mount"),
        os("--upper"),
        os(&u),
        os("--work"),
        os(&w),
        os(&mnt),
    ];
    expect_failure(&sc, &args, &["lower"]);
}

#[test]
fn upperdir_without_workdir() {
    let sc = Scene::new();
    let (l, u, mnt) = (sc.dir("l"), sc.dir("u"), sc.dir("mnt"));
    let opts = format!("lowerdir={},upperdir={}", esc(&l), esc(&u));
    expect_failure(&sc, &mount_o(&opts, &mnt), &[&s(&u), "workdir"]);
    let w = sc.dir("w");
    let opts = format!("lowerdir={},workdir={}", esc(&l), esc(&w));
    expect_failure(&sc, &mount_o(&opts, &mnt), &[&s(&w), "upperdir"]);
    let args = vec![
        os("mount"),
        os("--lower"),
        os(&l),
        os("--upper"),
        os(&u),
        os(&mnt),
    ];
    expect_failure(&sc, &args, &[&s(&u), "workdir"]);
}

#[test]
fn upper_inside_a_lower() {
    let sc = Scene::new();
    let (l, w, mnt) = (sc.dir("l"), sc.dir("w"), sc.dir("mnt"));
    let u = sc.dir("l/upper");
    let opts = format!(
        "lowerdir={},upperdir={},workdir={}",
        esc(&l),
        esc(&u),
        esc(&w)
    );
    expect_failure(&sc, &mount_o(&opts, &mnt), &[&s(&u), &s(&l)]);
}

#[test]
fn work_not_empty() {
    let sc = Scene::new();
    let (l, u, w, mnt) = (sc.dir("l"), sc.dir("u"), sc.dir("w"), sc.dir("mnt"));
    sc.file("w/stray");
    let opts = format!(
        "lowerdir={},upperdir={},workdir={}",
        esc(&l),
        esc(&u),
        esc(&w)
    );
    expect_failure(&sc, &mount_o(&opts, &mnt), &[&s(&w), "not empty"]);
}

#[test]
fn upper_and_work_on_different_filesystems() {
    let sc = Scene::new();
    let (l, u, mnt) = (sc.dir("l"), sc.dir("u"), sc.dir("mnt"));
    let other = sc.dir("other-fs");
    let _tmpfs = Tmpfs::mount(&other, "");
    let w = other.join("w");
    fs::create_dir(&w).expect("mkdir on tmpfs");
    let opts = format!(
        "lowerdir={},upperdir={},workdir={}",
        esc(&l),
        esc(&u),
        esc(&w)
    );
    expect_failure(
        &sc,
        &mount_o(&opts, &mnt),
        &[&s(&u), &s(&w), "different filesystems"],
    );
}

#[test]
fn mount_helper_form_rejects_bad_options() {
    let sc = Scene::new();
    let (l, mnt) = (sc.dir("l"), sc.dir("mnt"));
    let bin_dir = tempfile::tempdir().expect("temp dir");
    let helper = bin_dir.path().join("mount.fuse.layerfs");
    std::os::unix::fs::symlink(BIN, &helper).expect("symlink helper");
    let args = vec![
        os("layerfs"),
        os(&mnt),
        os("-o"),
        os(format!("rw,nosuid,nodev,lowerdir={},bogus", esc(&l))),
    ];
    expect_failure_as(&sc, &helper, &args, &["bogus"]);
    let missing = sc.path("missing");
    let args = vec![
        os("layerfs"),
        os(&mnt),
        os("-o"),
        os(format!("lowerdir={}", esc(&missing))),
    ];
    expect_failure_as(&sc, &helper, &args, &[&s(&missing)]);
}

#[test]
fn umount_of_a_plain_directory() {
    let sc = Scene::new();
    let dir = sc.dir("not-a-mount");
    sc.file("not-a-mount/file");
    expect_failure(&sc, &[os("umount"), os(&dir)], &[&s(&dir)]);
    let missing = sc.path("missing");
    expect_failure(&sc, &[os("umount"), os(&missing)], &[&s(&missing)]);
}

#[test]
fn umount_leaves_other_filesystems_alone() {
    let sc = Scene::new();
    let mnt = sc.dir("mnt");
    let _tmpfs = Tmpfs::mount(&mnt, "");
    expect_failure(&sc, &[os("umount"), os(&mnt)], &[&s(&mnt)]);
    assert_eq!(sc.mounts(), vec![(mnt.clone(), "tmpfs".to_string())]);
}

#[test]
fn option_paths_are_not_byte_mangled() {
    // A lower whose name holds a space and a backslash, missing: the
    // message shows it unescaped.
    let sc = Scene::new();
    let mnt = sc.dir("mnt");
    let odd = sc.path(r"sp ace\back");
    let opts = format!("lowerdir={}", esc(&odd));
    let line = expect_failure(&sc, &mount_o(&opts, &mnt), &[&s(&odd)]);
    assert!(line.ends_with("no such file or directory"), "{line}");
}
