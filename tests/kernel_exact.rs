//! Where layerfs must do exactly what the kernel's overlayfs does, each
//! checked against the kernel on the same layers (needs root):
//!
//! * `chown_minus_one_touches_ctime`: `chown(path, -1, -1)` changes nothing
//!   but ctime, on an upper file, a lower file (copied up) and a directory.
//! * `deep_paths`: a tree deeper than two PATH_MAX below the layer root,
//!   built through the mount and in a lower layer, worked at the bottom
//!   (create, open, read, write, chmod, chown, truncate, link, unlink,
//!   rmdir, copy-up), then removed as `rm -rf` would.
//! * `redirects_in_lower_layers`: an upper with redirects (a renamed lower
//!   directory) stacked as a lower layer of the next mount, also chained and
//!   pointing into an opaque directory; whole trees compared.
//! * `redirect_dir_follow_and_nofollow`: the kernel's other redirect modes
//!   (redirects followed or refused, directories with lower content not
//!   moved), read-only and writable.

mod common;

use std::ffi::CString;
use std::fs;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{KernelOverlay, LayerfsMount, escape_opt_path};

/// A lower layer, an upper and a work dir, in a fresh temp dir.
struct Dirs {
    lower: PathBuf,
    upper: PathBuf,
    work: PathBuf,
    _tmp: tempfile::TempDir,
}

impl Dirs {
    fn new(prefix: &str, fill_lower: impl FnOnce(&Path)) -> Dirs {
        common::require_root();
        let tmp = common::tempdir(prefix);
        let root = tmp.path().canonicalize().expect("canonical temp dir");
        let (lower, upper, work) = (root.join("lower"), root.join("upper"), root.join("work"));
        for d in [&lower, &upper, &work] {
            fs::create_dir(d).unwrap_or_else(|e| panic!("mkdir {}: {e}", d.display()));
        }
        fill_lower(&lower);
        Dirs {
            lower,
            upper,
            work,
            _tmp: tmp,
        }
    }

    fn uw(&self) -> String {
        common::stack::uw(&self.upper, &self.work)
    }

    fn kernel(&self) -> KernelOverlay {
        KernelOverlay::mount(
            std::slice::from_ref(&self.lower),
            &format!("{},redirect_dir=on,index=on", self.uw()),
        )
    }

    fn layerfs(&self) -> LayerfsMount {
        LayerfsMount::mount(std::slice::from_ref(&self.lower), &self.uw())
    }
}

/// Runs `f` on a kernel overlay mount and on a layerfs mount of two copies
/// of one lower layer; returns what each gave, kernel first.
fn both<T>(prefix: &str, fill: impl Fn(&Path), f: impl Fn(&Path) -> T) -> (T, T) {
    let k = Dirs::new(prefix, &fill);
    let kernel = {
        let m = k.kernel();
        f(m.path())
    };
    let l = Dirs::new(prefix, &fill);
    let m = l.layerfs();
    let ours = f(m.path());
    let exit = m.unmount();
    exit.assert_clean();
    (kernel, ours)
}

fn ctime(p: &Path) -> (i64, i64) {
    let md = fs::symlink_metadata(p).unwrap_or_else(|e| panic!("lstat {}: {e}", p.display()));
    (md.ctime(), md.ctime_nsec())
}

/// `fchownat(AT_FDCWD, p, -1, -1, AT_SYMLINK_NOFOLLOW)`.
fn chown_nothing(p: &Path) {
    let c = CString::new(p.as_os_str().as_bytes()).expect("no NUL");
    // SAFETY: a valid C string; -1, -1 changes no id.
    let rc = unsafe {
        libc::fchownat(
            libc::AT_FDCWD,
            c.as_ptr(),
            u32::MAX,
            u32::MAX,
            libc::AT_SYMLINK_NOFOLLOW,
        )
    };
    assert_eq!(
        rc,
        0,
        "chown -1:-1 {}: {}",
        p.display(),
        std::io::Error::last_os_error()
    );
}

#[test]
fn chown_minus_one_touches_ctime() {
    let fill = |l: &Path| {
        fs::write(l.join("lower-file"), b"lower").expect("write lower file");
        fs::create_dir(l.join("lower-dir")).expect("mkdir lower dir");
    };
    let run = |m: &Path| -> Vec<(String, bool)> {
        fs::write(m.join("upper-file"), b"upper").expect("create upper file");
        fs::create_dir(m.join("upper-dir")).expect("mkdir upper dir");
        let mut seen = Vec::new();
        for name in ["upper-file", "upper-dir", "lower-file", "lower-dir"] {
            let p = m.join(name);
            let before = ctime(&p);
            // The clock the filesystem stamps ctime with moves in ticks: a
            // pause of several ticks makes any new stamp a later one.
            std::thread::sleep(Duration::from_millis(30));
            chown_nothing(&p);
            seen.push((name.to_string(), ctime(&p) > before));
        }
        seen
    };
    let (kernel, ours) = both("layerfs-ctime-", fill, run);
    assert!(
        kernel.iter().all(|(_, changed)| *changed),
        "the kernel is the reference: {kernel:?}"
    );
    assert_eq!(
        ours, kernel,
        "ctime changed after chown -1:-1 (layerfs vs kernel)"
    );
}

// ---- deep paths --------------------------------------------------------

/// One path component of the deep trees (200 bytes, so 21 of them make a
/// path longer than PATH_MAX).
fn long_name(c: u8) -> Vec<u8> {
    vec![c; 200]
}

/// Levels of the deep trees: 45 x 201 bytes, over two PATH_MAX.
const DEPTH: usize = 45;

fn cname(name: &[u8]) -> CString {
    CString::new(name).expect("no NUL in a test name")
}

fn last_err(what: &str) -> String {
    format!("{what}: {}", std::io::Error::last_os_error())
}

/// `openat(dir, name, flags | O_NOFOLLOW | O_CLOEXEC, mode)`.
fn openat(dir: &OwnedFd, name: &[u8], flags: i32, mode: u32) -> Result<OwnedFd, String> {
    let c = cname(name);
    let flags = flags | libc::O_NOFOLLOW | libc::O_CLOEXEC;
    // SAFETY: valid fd and C string.
    let fd = unsafe { libc::openat(dir.as_raw_fd(), c.as_ptr(), flags, mode) };
    if fd < 0 {
        return Err(last_err("openat"));
    }
    // SAFETY: a fresh fd we own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn open_dir(dir: &OwnedFd, name: &[u8]) -> Result<OwnedFd, String> {
    openat(dir, name, libc::O_RDONLY | libc::O_DIRECTORY, 0)
}

fn open_root(p: &Path) -> OwnedFd {
    let f = fs::File::open(p).unwrap_or_else(|e| panic!("open {}: {e}", p.display()));
    OwnedFd::from(f)
}

/// Runs a libc call that returns -1 on failure; Ok or the errno's text.
fn ok(what: &str, rc: libc::c_int) -> Result<(), String> {
    if rc < 0 { Err(last_err(what)) } else { Ok(()) }
}

fn mkdirat(dir: &OwnedFd, name: &[u8], mode: u32) -> Result<(), String> {
    let c = cname(name);
    // SAFETY: valid fd and C string.
    ok("mkdirat", unsafe {
        libc::mkdirat(dir.as_raw_fd(), c.as_ptr(), mode)
    })
}

fn write_file(dir: &OwnedFd, name: &[u8], data: &[u8]) -> Result<(), String> {
    let fd = openat(
        dir,
        name,
        libc::O_WRONLY | libc::O_CREAT | libc::O_TRUNC,
        0o644,
    )?;
    let mut f = fs::File::from(fd);
    std::io::Write::write_all(&mut f, data).map_err(|e| format!("write: {e}"))
}

fn read_file(dir: &OwnedFd, name: &[u8]) -> Result<Vec<u8>, String> {
    let fd = openat(dir, name, libc::O_RDONLY, 0)?;
    let mut out = Vec::new();
    std::io::Read::read_to_end(&mut fs::File::from(fd), &mut out)
        .map_err(|e| format!("read: {e}"))?;
    Ok(out)
}

/// Builds DEPTH levels of `long_name(c)` below `root`, a file `f` at every
/// level, and returns the bottom directory.
fn build_deep(root: &OwnedFd, c: u8) -> Result<OwnedFd, String> {
    let name = long_name(c);
    let mut dir = root.try_clone().map_err(|e| e.to_string())?;
    for level in 0..DEPTH {
        mkdirat(&dir, &name, 0o755).map_err(|e| format!("level {level}: {e}"))?;
        dir = open_dir(&dir, &name).map_err(|e| format!("level {level}: {e}"))?;
        write_file(&dir, b"f", format!("level {level}\n").as_bytes())
            .map_err(|e| format!("level {level}: {e}"))?;
    }
    Ok(dir)
}

/// Opens the bottom of a deep tree, one level at a time.
fn descend(root: &OwnedFd, c: u8) -> Result<OwnedFd, String> {
    let name = long_name(c);
    let mut dir = root.try_clone().map_err(|e| e.to_string())?;
    for level in 0..DEPTH {
        dir = open_dir(&dir, &name).map_err(|e| format!("level {level}: {e}"))?;
    }
    Ok(dir)
}

/// Every call made at the bottom of a deep tree, with its outcome.
fn work_at_bottom(bottom: &OwnedFd, log: &mut Vec<String>) {
    let fd = bottom.as_raw_fd();
    let mut note = |what: &str, r: Result<String, String>| {
        log.push(format!(
            "{what}: {}",
            r.unwrap_or_else(|e| format!("ERR {e}"))
        ));
    };
    note(
        "read f",
        read_file(bottom, b"f").map(|d| String::from_utf8_lossy(&d).into_owned()),
    );
    note(
        "write f",
        write_file(bottom, b"f", b"rewritten\n").map(|()| "ok".into()),
    );
    note(
        "create g",
        write_file(bottom, b"g", b"new file\n").map(|()| "ok".into()),
    );
    note(
        "read g",
        read_file(bottom, b"g").map(|d| String::from_utf8_lossy(&d).into_owned()),
    );
    // SAFETY (all below): valid fd and C strings.
    note(
        "chmod g",
        ok("fchmodat", unsafe {
            libc::fchmodat(fd, c"g".as_ptr(), 0o600, 0)
        })
        .map(|()| "ok".into()),
    );
    note(
        "chown f",
        ok("fchownat", unsafe {
            libc::fchownat(fd, c"f".as_ptr(), 12, 34, libc::AT_SYMLINK_NOFOLLOW)
        })
        .map(|()| "ok".into()),
    );
    note(
        "truncate g",
        openat(bottom, b"g", libc::O_WRONLY, 0).and_then(|f| {
            ok("ftruncate", unsafe { libc::ftruncate(f.as_raw_fd(), 3) }).map(|()| "ok".into())
        }),
    );
    note(
        "truncate f (O_TRUNC)",
        openat(bottom, b"f", libc::O_WRONLY | libc::O_TRUNC, 0).map(|_| "ok".into()),
    );
    note(
        "link g h",
        ok("linkat", unsafe {
            libc::linkat(fd, c"g".as_ptr(), fd, c"h".as_ptr(), 0)
        })
        .map(|()| "ok".into()),
    );
    note(
        "unlink g",
        ok("unlinkat", unsafe { libc::unlinkat(fd, c"g".as_ptr(), 0) }).map(|()| "ok".into()),
    );
    note(
        "mkdir sub",
        mkdirat(bottom, b"sub", 0o700).map(|()| "ok".into()),
    );
    note(
        "rmdir sub",
        ok("unlinkat", unsafe {
            libc::unlinkat(fd, c"sub".as_ptr(), libc::AT_REMOVEDIR)
        })
        .map(|()| "ok".into()),
    );
    note(
        "mkdir keep",
        mkdirat(bottom, b"keep", 0o750).map(|()| "ok".into()),
    );
    note(
        "mkfifo p",
        ok("mkfifoat", unsafe {
            libc::mkfifoat(fd, c"p".as_ptr(), 0o640)
        })
        .map(|()| "ok".into()),
    );
    note(
        "symlink s",
        ok("symlinkat", unsafe {
            libc::symlinkat(c"target".as_ptr(), fd, c"s".as_ptr())
        })
        .map(|()| "ok".into()),
    );
    note(
        "rename s t",
        ok("renameat", unsafe {
            libc::renameat(fd, c"s".as_ptr(), fd, c"t".as_ptr())
        })
        .map(|()| "ok".into()),
    );
}

/// What a walk by fds sees below `dir`: one line per object (depth, name
/// shortened, type, mode, owner, size, content or link target).
fn deep_listing(dir: &OwnedFd, depth: usize, out: &mut Vec<String>) {
    let dup = dir.try_clone().expect("dup dir fd");
    let mut d = nix::dir::Dir::from_fd(dup).expect("fdopendir");
    let mut names: Vec<Vec<u8>> = d
        .iter()
        .map(|e| e.expect("readdir").file_name().to_bytes().to_vec())
        .filter(|n| n != b"." && n != b"..")
        .collect();
    names.sort();
    for name in names {
        let c = cname(&name);
        // SAFETY: zeroed stat is valid; valid fd and C string.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        let rc = unsafe {
            libc::fstatat(
                dir.as_raw_fd(),
                c.as_ptr(),
                &mut st,
                libc::AT_SYMLINK_NOFOLLOW,
            )
        };
        let shown = if name.len() > 20 {
            format!("{}x{}", name[0] as char, name.len())
        } else {
            String::from_utf8_lossy(&name).into_owned()
        };
        if rc < 0 {
            out.push(format!("{depth} {shown} {}", last_err("lstat")));
            continue;
        }
        let kind = st.st_mode & libc::S_IFMT;
        let what = match kind {
            libc::S_IFREG => format!("{:?}", read_file(dir, &name).map(String::from_utf8)),
            libc::S_IFLNK => {
                let mut buf = [0u8; 256];
                // SAFETY: valid fd, C string and buffer.
                let n = unsafe {
                    libc::readlinkat(dir.as_raw_fd(), c.as_ptr(), buf.as_mut_ptr().cast(), 256)
                };
                String::from_utf8_lossy(&buf[..n.max(0) as usize]).into_owned()
            }
            _ => String::new(),
        };
        let size = if kind == libc::S_IFDIR { 0 } else { st.st_size };
        out.push(format!(
            "{depth} {shown} {:o} {}:{} n{} size {size} {what}",
            st.st_mode,
            st.st_uid,
            st.st_gid,
            if kind == libc::S_IFDIR {
                0
            } else {
                st.st_nlink
            }
        ));
        if kind == libc::S_IFDIR {
            let sub = open_dir(dir, &name).expect("open a listed directory");
            deep_listing(&sub, depth + 1, out);
        }
    }
}

/// The deep work, through the mount at `m`; everything it saw.
fn deep_run(m: &Path) -> Vec<String> {
    let root = open_root(m);
    let mut log = Vec::new();
    // A tree made through the mount.
    match build_deep(&root, b'n') {
        Ok(bottom) => {
            log.push("built n".into());
            work_at_bottom(&bottom, &mut log);
            // The fd opened before the changes lists them (rewinddir).
            let mut seen = Vec::new();
            deep_listing(&bottom, 0, &mut seen);
            log.extend(
                seen.into_iter()
                    .map(|l| format!("bottom of n (old fd): {l}")),
            );
        }
        Err(e) => log.push(format!("build n: ERR {e}")),
    }
    // The tree in the lower layer: copy-ups far down.
    match descend(&root, b'l') {
        Ok(bottom) => work_at_bottom(&bottom, &mut log),
        Err(e) => log.push(format!("descend l: ERR {e}")),
    }
    deep_listing(&root, 0, &mut log);
    // rm -rf through the mount (it walks by fds).
    for c in [b'n', b'l'] {
        let top = m.join(std::ffi::OsStr::from_bytes(&long_name(c)));
        let out = std::process::Command::new("rm")
            .arg("-rf")
            .arg(&top)
            .output()
            .expect("running rm");
        log.push(format!(
            "rm -rf {}: {} {}",
            c as char,
            out.status,
            String::from_utf8_lossy(&out.stderr)
                .chars()
                .take(200)
                .collect::<String>()
        ));
    }
    let mut after = Vec::new();
    deep_listing(&open_root(m), 0, &mut after);
    log.extend(after.into_iter().map(|l| format!("after rm: {l}")));
    log
}

#[test]
fn deep_paths() {
    let fill = |l: &Path| {
        let root = open_root(l);
        let bottom = build_deep(&root, b'l').expect("building the deep lower tree");
        write_file(&bottom, b"g", b"lower g\n").expect("lower g");
    };
    let (kernel, ours) = both("layerfs-deep-", fill, deep_run);
    assert!(
        kernel.iter().all(|l| !l.contains("ERR")) && kernel.iter().any(|l| l.contains("lx200")),
        "the kernel is the reference:\n{}",
        kernel.join("\n")
    );
    let diff: Vec<String> = kernel
        .iter()
        .zip(ours.iter())
        .filter(|(k, o)| k != o)
        .map(|(k, o)| format!("kernel:  {k}\nlayerfs: {o}"))
        .collect();
    assert!(
        diff.is_empty() && kernel.len() == ours.len(),
        "layerfs differs from the kernel ({} vs {} lines):\n{}",
        kernel.len(),
        ours.len(),
        diff.join("\n")
    );
}

// ---- redirects in lower layers -------------------------------------------

/// Who writes an upper layer, or reads a stack.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Side {
    Kernel,
    Layerfs,
}

fn mkdirs(p: &Path) {
    fs::create_dir_all(p).unwrap_or_else(|e| panic!("mkdir {}: {e}", p.display()));
}

fn put(p: &Path, data: &str) {
    mkdirs(p.parent().expect("a parent"));
    fs::write(p, data).unwrap_or_else(|e| panic!("write {}: {e}", p.display()));
}

fn set_xattr(p: &Path, name: &str, value: &[u8]) {
    common::sys::lsetxattr(p, name.as_bytes(), value)
        .unwrap_or_else(|e| panic!("setxattr {} {name}: {e}", p.display()));
}

fn rename(m: &Path, from: &str, to: &str) {
    fs::rename(m.join(from), m.join(to)).unwrap_or_else(|e| panic!("mv {from} {to}: {e}"));
}

/// Writes a new upper over `lowers` (top first) with `side`, running
/// `change` through the mount; returns the upper.
fn write_upper(
    side: Side,
    root: &Path,
    name: &str,
    lowers: &[PathBuf],
    change: impl Fn(&Path),
) -> PathBuf {
    let (upper, work) = (root.join(name), root.join(format!("{name}.work")));
    mkdirs(&upper);
    mkdirs(&work);
    let uw = format!(
        "upperdir={},workdir={}",
        escape_opt_path(&upper),
        escape_opt_path(&work)
    );
    match side {
        Side::Kernel => {
            let m = KernelOverlay::mount(lowers, &format!("{uw},redirect_dir=on,index=on"));
            change(m.path());
        }
        Side::Layerfs => {
            let m = LayerfsMount::mount(lowers, &uw);
            change(m.path());
            let exit = m.unmount();
            exit.assert_clean();
        }
    }
    upper
}

/// The merged tree of `layers` (top first), read-only, as `side` shows it.
fn read_stack(side: Side, layers: &[PathBuf]) -> common::Tree {
    match side {
        Side::Kernel => {
            let m = KernelOverlay::mount(layers, "redirect_dir=on");
            let mut t = common::snapshot(m.path());
            t.drop_listed_but_absent();
            t
        }
        Side::Layerfs => {
            let m = LayerfsMount::mount(layers, "");
            common::snapshot(m.path())
        }
    }
}

fn assert_same_tree(what: &str, expected: &common::Tree, actual: &common::Tree) {
    let opts = common::DiffOptions {
        dir_sizes: false,
        ..common::DiffOptions::default()
    };
    let problems = common::diff_with(expected, actual, &opts);
    assert!(
        problems.is_empty(),
        "{what}: {} difference(s):\n  {}",
        problems.len(),
        problems.join("\n  ")
    );
}

fn names(t: &common::Tree) -> Vec<String> {
    t.entries
        .keys()
        .map(|k| String::from_utf8_lossy(k).into_owned())
        .collect()
}

/// The bottom layer: directories to move, and an opaque one.
fn fill_bottom(l0: &Path) {
    put(&l0.join("a/dir/f"), "f\n");
    put(&l0.join("a/dir/sub/g"), "g\n");
    put(&l0.join("o/in/from-l0"), "l0\n");
    put(&l0.join("keep/k"), "k\n");
}

/// A layer above it, made by hand: `o` opaque there, hiding L0's `o/in`.
fn fill_opaque(l1: &Path) {
    put(&l1.join("o/in/from-l1"), "l1\n");
    set_xattr(&l1.join("o"), "trusted.overlay.opaque", b"y");
}

#[test]
fn redirects_in_lower_layers() {
    common::require_root();
    for writer in [Side::Kernel, Side::Layerfs] {
        let tmp = common::tempdir("layerfs-redirect-");
        let root = tmp.path().canonicalize().expect("canonical temp dir");
        let (l0, l1) = (root.join("l0"), root.join("l1"));
        fill_bottom(&l0);
        fill_opaque(&l1);
        let base = vec![l1.clone(), l0.clone()];
        // First mount: a relative redirect (same parent), an absolute one
        // (another parent, below a renamed directory), and one into the
        // opaque directory of L1.
        let u1 = write_upper(writer, &root, "u1", &base, |m| {
            rename(m, "a/dir", "a/x");
            mkdirs(&m.join("b"));
            rename(m, "a/x/sub", "b/moved");
            rename(m, "o/in", "top-in");
        });
        let mut stack = vec![u1.clone()];
        stack.extend(base.iter().cloned());
        let kernel = read_stack(Side::Kernel, &stack);
        let shown = names(&kernel);
        for want in ["a/x/f", "b/moved/g", "top-in/from-l1"] {
            assert!(
                shown.iter().any(|n| n == want),
                "{writer:?} wrote u1; the kernel shows no {want}: {shown:?}"
            );
        }
        assert!(
            !shown.iter().any(|n| n == "top-in/from-l0"),
            "the opaque o of l1 hides l0's o/in: {shown:?}"
        );
        let ours = read_stack(Side::Layerfs, &stack);
        assert_same_tree(&format!("u1 by {writer:?} as a lower"), &kernel, &ours);
        // Second mount on that stack: move the redirected directories on
        // (a chain of redirects through u1), then stack both uppers.
        let u2 = write_upper(writer, &root, "u2", &stack, |m| {
            rename(m, "a/x", "c");
            rename(m, "b/moved", "c/again");
            rename(m, "top-in", "keep/in");
            fs::write(m.join("c/f"), "changed\n").expect("write c/f");
        });
        let mut stack2 = vec![u2];
        stack2.extend(stack.iter().cloned());
        let kernel = read_stack(Side::Kernel, &stack2);
        let shown = names(&kernel);
        for want in ["c/f", "c/again/g", "keep/in/from-l1"] {
            assert!(
                shown.iter().any(|n| n == want),
                "{writer:?} wrote u2; the kernel shows no {want}: {shown:?}"
            );
        }
        let ours = read_stack(Side::Layerfs, &stack2);
        assert_same_tree(&format!("u2 by {writer:?} over u1"), &kernel, &ours);
    }
}

#[test]
fn hand_made_redirects_in_lower_layers() {
    common::require_root();
    let tmp = common::tempdir("layerfs-redirect-hand-");
    let root = tmp.path().canonicalize().expect("canonical temp dir");
    let (l0, l1, l2) = (root.join("l0"), root.join("l1"), root.join("l2"));
    // A chain of relative redirects: c/one -> two (l1) -> three (l0).
    put(&l0.join("c/three/f0"), "0\n");
    put(&l1.join("c/two/f1"), "1\n");
    put(&l2.join("c/one/f2"), "2\n");
    set_xattr(&l2.join("c/one"), "trusted.overlay.redirect", b"two");
    set_xattr(&l1.join("c/two"), "trusted.overlay.redirect", b"three");
    // An absolute redirect whose walk meets another on the way: y -> /z/sub
    // (l2); l1's z -> /abs, so l0 is asked for abs/sub.
    put(&l2.join("y/fy"), "y\n");
    set_xattr(&l2.join("y"), "trusted.overlay.redirect", b"/z/sub");
    mkdirs(&l1.join("z"));
    set_xattr(&l1.join("z"), "trusted.overlay.redirect", b"/abs");
    put(&l0.join("abs/sub/deep"), "deep\n");
    // An absolute redirect into an opaque directory: l1's o hides l0's.
    put(&l2.join("p/fp"), "p\n");
    set_xattr(&l2.join("p"), "trusted.overlay.redirect", b"/o/in");
    put(&l1.join("o/in/from-l1"), "l1\n");
    set_xattr(&l1.join("o"), "trusted.overlay.opaque", b"y");
    put(&l0.join("o/in/from-l0"), "l0\n");
    // An opaque directory's redirect is not followed.
    put(&l2.join("q/fq"), "q\n");
    set_xattr(&l2.join("q"), "trusted.overlay.redirect", b"/abs");
    set_xattr(&l2.join("q"), "trusted.overlay.opaque", b"y");
    let stack = vec![l2, l1, l0];
    let kernel = read_stack(Side::Kernel, &stack);
    let shown = names(&kernel);
    for want in ["c/one/f0", "c/one/f1", "c/one/f2", "y/sub", "p/from-l1"] {
        let found = shown.iter().any(|n| n == want);
        // y/sub: the walk finds abs/sub in l0, whose content shows in y.
        let want_found = want != "y/sub";
        assert_eq!(found, want_found, "kernel, {want}: {shown:?}");
    }
    assert!(shown.iter().any(|n| n == "y/deep"), "kernel: {shown:?}");
    assert!(!shown.iter().any(|n| n == "p/from-l0"), "kernel: {shown:?}");
    assert!(!shown.iter().any(|n| n == "q/sub"), "kernel: {shown:?}");
    let ours = read_stack(Side::Layerfs, &stack);
    assert_same_tree("hand-made redirects", &kernel, &ours);
}

/// With `nofollow`, a snapshot without `a/x`, which both sides refuse to
/// look up (checked separately); the error the snapshot records for it
/// would be counted as a difference.
fn comparable(t: &common::Tree, mode: &str) -> common::Tree {
    let mut t = t.clone();
    if mode == "nofollow" {
        t.entries.retain(|k, _| !k.starts_with(b"a/x"));
        t.errors.retain(|k, _| !k.starts_with(b"a/x"));
    }
    t
}

/// `redirect_dir=follow` and `=nofollow`, as the kernel has them: the
/// redirects of a lower layer followed or not, and a directory with lower
/// content that cannot move without a redirect (EXDEV, so mv copies it),
/// while an upper-only directory moves.
#[test]
fn redirect_dir_follow_and_nofollow() {
    common::require_root();
    let tmp = common::tempdir("layerfs-redirect-mode-");
    let root = tmp.path().canonicalize().expect("canonical temp dir");
    let l0 = root.join("l0");
    fill_bottom(&l0);
    let u1 = write_upper(Side::Kernel, &root, "u1", std::slice::from_ref(&l0), |m| {
        rename(m, "a/dir", "a/x");
    });
    let stack = vec![u1, l0];
    for mode in ["follow", "nofollow"] {
        let opts = format!("redirect_dir={mode}");
        let kernel = {
            let m = KernelOverlay::mount(&stack, &opts);
            let mut t = common::snapshot(m.path());
            t.drop_listed_but_absent();
            t
        };
        let followed = names(&kernel).iter().any(|n| n == "a/x/f");
        assert_eq!(followed, mode == "follow", "the kernel with {opts}");
        let (ours, refused) = {
            let m = LayerfsMount::mount(&stack, &opts);
            let refused = fs::symlink_metadata(m.path().join("a/x")).map_err(|e| e.raw_os_error());
            (common::snapshot(m.path()), refused.err())
        };
        if mode == "nofollow" {
            // The kernel refuses to look below a redirect: EPERM for the
            // redirected directory.
            assert_eq!(refused, Some(Some(libc::EPERM)), "lstat a/x with {opts}");
        }
        assert_same_tree(
            &format!("read-only, {opts}"),
            &comparable(&kernel, mode),
            &comparable(&ours, mode),
        );

        // Writable: the same renames on both, each with its own upper.
        let outcomes = |side: Side| -> (Vec<String>, common::Tree) {
            let name = format!("{mode}-{side:?}");
            let (upper, work) = (root.join(&name), root.join(format!("{name}.work")));
            mkdirs(&upper);
            mkdirs(&work);
            let uw = format!("{},{opts}", common::stack::uw(&upper, &work));
            let run = |m: &Path| -> Vec<String> {
                mkdirs(&m.join("fresh"));
                [
                    ("keep", "kept"),
                    ("a/x", "a/y"),
                    ("fresh", "fresh2"),
                    ("a", "b"),
                ]
                .iter()
                .map(|(from, to)| {
                    let r = fs::rename(m.join(from), m.join(to));
                    format!("mv {from} {to}: {:?}", r.map_err(|e| e.raw_os_error()))
                })
                .collect()
            };
            match side {
                Side::Kernel => {
                    let m = KernelOverlay::mount(&stack, &uw);
                    let said = run(m.path());
                    let mut t = common::snapshot(m.path());
                    t.drop_listed_but_absent();
                    (said, t)
                }
                Side::Layerfs => {
                    let m = LayerfsMount::mount(&stack, &uw);
                    let said = run(m.path());
                    (said, common::snapshot(m.path()))
                }
            }
        };
        let (k_said, k_tree) = outcomes(Side::Kernel);
        let (l_said, l_tree) = outcomes(Side::Layerfs);
        assert!(
            k_said
                .iter()
                .any(|s| s.contains(&format!("{:?}", Some(libc::EXDEV)))),
            "the kernel moved every directory with {opts}: {k_said:?}"
        );
        assert_eq!(l_said, k_said, "renames with {opts}");
        // Made at different moments on the two sides: mtimes differ.
        let opts_no_mtimes = common::DiffOptions {
            dir_sizes: false,
            mtimes: false,
            ..common::DiffOptions::default()
        };
        let problems = common::diff_with(
            &comparable(&k_tree, mode),
            &comparable(&l_tree, mode),
            &opts_no_mtimes,
        );
        assert!(
            problems.is_empty(),
            "after the renames, {opts}: {problems:?}"
        );
    }
}
