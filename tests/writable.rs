//! Writable mounts end to end, with real mounts (needs root):
//!
//! * `layerfs_upper_mounts_in_the_kernel` / `kernel_upper_mounts_in_layerfs`:
//!   one fixed script of changes runs through one implementation; the same
//!   lowers + upper + work are then mounted by the other, and the merged
//!   trees must be equal.
//! * `crash_during_copy_up_leaves_nothing_half_copied`: the daemon is killed
//!   (SIGKILL) while it copies a 256 MiB file up; the client must get an
//!   error, not hang, and a remount must show the lower file intact.
//! * `copy_up_without_space_fails_cleanly`: upper and work on a 2 MiB tmpfs,
//!   a 4 MiB lower file opened for write: ENOSPC, and nothing left behind.
//! * `oci_whiteouts_in_the_upper`: with `whiteout=oci` the upper holds
//!   `.wh.` files and can itself serve as a lower layer.
//! * `bad_writable_*`: mount refusals that `tests/bad_input.rs` does not
//!   already cover.
//! * `lower_hard_links_interop`, `lower_hard_links_survive_a_remount`:
//!   a lower file with several names, changed through one, read back by
//!   the other implementation or after a remount.
//!
//! About mtimes in the tree comparisons: they are compared exactly. Both
//! sides read the same directories on disk, and neither implementation
//! changes an mtime by looking (a lookup, readdir or read changes atimes
//! only, which are never compared): a merged object shows the mtime of its
//! topmost real object, which is the same inode for both. So an mtime
//! difference means one side reports something it did not store (a stale
//! attribute cache, a copy-up that did not keep the lower's times, a
//! parent touched by a copy-up). Directory sizes are not compared: a merged
//! directory shows its topmost real directory's size, which depends on
//! that filesystem, and the kernel reports it the same way.

mod common;

use std::fs;
use std::io::{self, Read, Write};
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt, lchown, symlink};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::stack::{Stack, step, uw};
use common::tmpfs::Tmpfs;
use common::{
    Dialect, DiffOptions, KernelOverlay, Kind, LayerfsMount, Tree, diff_with, escape_opt_path,
    is_mounted, snapshot,
};

/// The fixed script of changes, for the `demo` fixture (merged: /etc with
/// motd deleted, /usr/lib/python3.11 from two layers, /var/lib/dpkg in two
/// layers, /app in the top layer only, /bin and /lib symlinks).
fn run_script(root: &Path) {
    let p = |rel: &str| root.join(rel);
    // Files: create, overwrite (O_TRUNC) and append to lower files.
    step("create etc/newfile", fs::write(p("etc/newfile"), "new\n"));
    step(
        "overwrite etc/hostname",
        fs::write(p("etc/hostname"), "renamed-host\n"),
    );
    {
        let mut f = step(
            "open etc/passwd for append",
            fs::OpenOptions::new().append(true).open(p("etc/passwd")),
        );
        step(
            "append to etc/passwd",
            f.write_all(b"extra:x:1000:1000::/home/extra:/bin/sh\n"),
        );
    }
    // Metadata of lower objects.
    step(
        "chmod 0600 etc/group",
        fs::set_permissions(p("etc/group"), fs::Permissions::from_mode(0o600)),
    );
    step(
        "chmod 0700 root",
        fs::set_permissions(p("root"), fs::Permissions::from_mode(0o700)),
    );
    step(
        "chown 1000:1000 root/.profile",
        lchown(p("root/.profile"), Some(1000), Some(1000)),
    );
    step(
        "chown 123:456 usr/bin/hello",
        lchown(p("usr/bin/hello"), Some(123), Some(456)),
    );
    // New directories, at the root and inside a lower-only directory.
    step("mkdir srv/data", fs::create_dir_all(p("srv/data")));
    step("mkdir app/static/img", fs::create_dir(p("app/static/img")));
    // rm -r of a merged lower directory, rm of lower files.
    step(
        "rm -r usr/lib/python3.11",
        fs::remove_dir_all(p("usr/lib/python3.11")),
    );
    step("rm etc/issue", fs::remove_file(p("etc/issue")));
    step("rm usr/bin/uname", fs::remove_file(p("usr/bin/uname")));
    // A directory made again where a lower one was removed (opaque).
    step(
        "mkdir usr/lib/python3.11",
        fs::create_dir(p("usr/lib/python3.11")),
    );
    step(
        "create usr/lib/python3.11/site.py",
        fs::write(p("usr/lib/python3.11/site.py"), "# new\n"),
    );
    // Renames: a lower file; a merged directory to another parent
    // (trusted.overlay.redirect), then changes below its new name.
    step(
        "rename etc/os-release etc/os-release.orig",
        fs::rename(p("etc/os-release"), p("etc/os-release.orig")),
    );
    step(
        "rename var/lib/dpkg srv/dpkg",
        fs::rename(p("var/lib/dpkg"), p("srv/dpkg")),
    );
    {
        let mut f = step(
            "open srv/dpkg/status for append",
            fs::OpenOptions::new()
                .append(true)
                .open(p("srv/dpkg/status")),
        );
        step(
            "append to srv/dpkg/status",
            f.write_all(b"Package: extra\n"),
        );
    }
    step("mkdir srv/dpkg/info", fs::create_dir(p("srv/dpkg/info")));
    // A merged directory holding an opaque upper subdir, moved; below its
    // new name a lower file removed and one moved into the other moved
    // directory, which then moves again (its redirect stays absolute).
    step(
        "rename usr/lib srv/lib",
        fs::rename(p("usr/lib"), p("srv/lib")),
    );
    step(
        "rm srv/lib/libc.so.6",
        fs::remove_file(p("srv/lib/libc.so.6")),
    );
    step(
        "rename srv/lib/os-release srv/dpkg/os-release",
        fs::rename(p("srv/lib/os-release"), p("srv/dpkg/os-release")),
    );
    step(
        "rename srv/dpkg srv/lib/dpkg",
        fs::rename(p("srv/dpkg"), p("srv/lib/dpkg")),
    );
    step(
        "chmod 0640 srv/lib/libssl.so.3",
        fs::set_permissions(p("srv/lib/libssl.so.3"), fs::Permissions::from_mode(0o640)),
    );
    // A symlink, a hard link of an upper file (across directories).
    step(
        "symlink srv/passwd-link",
        symlink("../etc/passwd", p("srv/passwd-link")),
    );
    step(
        "create srv/data/upper-file",
        fs::write(p("srv/data/upper-file"), "linked\n"),
    );
    step(
        "link srv/data/upper-file etc/upper-link",
        fs::hard_link(p("srv/data/upper-file"), p("etc/upper-link")),
    );
    // In an overlay-format upper `.wh.` names are ordinary files: a
    // directory holding only such files is not empty.
    step("mkdir srv/wh", fs::create_dir(p("srv/wh")));
    for name in ["srv/wh/.wh.not-a-whiteout", "srv/wh/.wh..wh..opq"] {
        step(&format!("create {name}"), fs::write(p(name), ""));
    }
    let rmdir = fs::remove_dir(p("srv/wh"));
    assert_eq!(
        rmdir.as_ref().map_err(io::Error::raw_os_error),
        Err(Some(libc::ENOTEMPTY)),
        "rmdir srv/wh holding .wh. files: {rmdir:?}"
    );
    // user.* xattrs on a lower file, a lower directory and a new directory.
    for (rel, value) in [
        ("etc/profile", &b"on a lower file"[..]),
        ("usr/share", b"on a lower dir"),
        ("srv", b"\x00\x01binary"),
    ] {
        step(
            &format!("setxattr user.note {rel}"),
            common::sys::lsetxattr(&p(rel), b"user.note", value),
        );
    }
    // Other namespaces: trusted.*, and an overlay xattr of the user's own
    // (stored escaped as trusted.overlay.overlay.*, Linux 6.7+).
    step(
        "setxattr trusted.note etc/newfile",
        common::sys::lsetxattr(&p("etc/newfile"), b"trusted.note", b"t"),
    );
    step(
        "setxattr trusted.overlay.mine etc/hostname",
        common::sys::lsetxattr(&p("etc/hostname"), b"trusted.overlay.mine", b"m"),
    );
}

/// What the script must have done, checked on the merged tree (so that a
/// comparison of two trees cannot pass because both sides did nothing).
fn check_script_result(t: &Tree, who: &str) {
    let has = |rel: &str| t.get(rel).is_some();
    let problems: Vec<String> = [
        ("etc/newfile", true),
        ("etc/issue", false),
        ("etc/os-release", false),
        ("etc/os-release.orig", true),
        ("var/lib/dpkg", false),
        ("usr/lib", false),
        ("srv/dpkg", false),
        ("srv/lib/dpkg/status", true),
        ("srv/lib/dpkg/info", true),
        ("srv/lib/dpkg/os-release", true),
        ("srv/lib/os-release", false),
        ("srv/lib/libc.so.6", false),
        ("srv/lib/libssl.so.3", true),
        ("srv/lib/python3.11/site.py", true),
        ("srv/lib/python3.11/os.py", false),
        ("srv/lib/python3.11/json", false),
        ("usr/bin/uname", false),
        ("app/static/img", true),
        ("etc/upper-link", true),
        ("srv/wh/.wh.not-a-whiteout", true),
        ("srv/wh/.wh..wh..opq", true),
    ]
    .iter()
    .filter(|(rel, want)| has(rel) != *want)
    .map(|(rel, want)| format!("/{rel}: {}", if *want { "missing" } else { "still there" }))
    .collect();
    assert!(
        problems.is_empty(),
        "{who}: the script's changes are not all visible:\n  {}",
        problems.join("\n  ")
    );
    assert_eq!(
        t.get("etc/hostname")
            .and_then(|e| e.xattrs.get(&b"trusted.overlay.mine"[..]))
            .map(Vec::as_slice),
        Some(&b"m"[..]),
        "{who}: trusted.overlay.mine on etc/hostname"
    );
    let e = t.get("usr/bin/hello").expect("usr/bin/hello");
    assert_eq!((e.uid, e.gid), (123, 456), "{who}: chown of usr/bin/hello");
    assert_eq!(
        t.get("etc/group").expect("etc/group").perm,
        0o600,
        "{who}: chmod"
    );
    assert!(
        t.hardlinks
            .iter()
            .any(|g| g.contains(&b"etc/upper-link".to_vec())),
        "{who}: etc/upper-link is not a hard link: {:?}",
        t.hardlinks
    );
    assert_eq!(
        t.get("srv")
            .and_then(|e| e.xattrs.get(&b"user.note"[..]))
            .map(Vec::as_slice),
        Some(&b"\x00\x01binary"[..]),
        "{who}: user.note on srv"
    );
}

/// The tree comparison: everything but directory sizes (see the module doc).
fn tree_problems(expected: &Tree, actual: &Tree) -> Vec<String> {
    let opts = DiffOptions {
        dir_sizes: false,
        ..DiffOptions::default()
    };
    diff_with(expected, actual, &opts)
}

fn kernel_snapshot(root: &Path) -> Tree {
    let mut t = snapshot(root);
    // Whiteouts the kernel lists but cannot look up are not there.
    t.drop_listed_but_absent();
    t
}

fn assert_same(what: &str, expected: &Tree, actual: &Tree) {
    let problems = tree_problems(expected, actual);
    assert!(
        problems.is_empty(),
        "{what}: {} difference(s):\n  {}",
        problems.len(),
        problems.join("\n  ")
    );
}

fn unmount_layerfs(m: LayerfsMount) {
    let mnt = m.path().to_path_buf();
    let exit = m.unmount();
    exit.assert_clean();
    assert!(!is_mounted(&mnt), "{} is still mounted", mnt.display());
}

fn xattr(p: &Path, name: &[u8]) -> Option<Vec<u8>> {
    common::sys::lgetxattr(p, name)
        .unwrap_or_else(|e| panic!("getxattr {} {}: {e}", p.display(), name.escape_ascii()))
}

const KERNEL_RW: &str = "redirect_dir=on";

#[test]
fn layerfs_upper_mounts_in_the_kernel() {
    let s = Stack::new("wr-l2k-", "demo", Dialect::OverlayTrusted);
    let m = LayerfsMount::mount(&s.layers, &s.uw());
    run_script(m.path());
    let ours = snapshot(m.path());
    check_script_result(&ours, "layerfs");
    unmount_layerfs(m);

    // The upper is in overlay format.
    for (rel, origin) in [("srv/lib", "/usr/lib"), ("srv/lib/dpkg", "/var/lib/dpkg")] {
        assert_eq!(
            xattr(&s.upper.join(rel), b"trusted.overlay.redirect").as_deref(),
            Some(origin.as_bytes()),
            "upper/{rel}: a merged dir moved to another parent needs an absolute redirect"
        );
    }
    assert_eq!(
        xattr(
            &s.upper.join("srv/lib/python3.11"),
            b"trusted.overlay.opaque"
        )
        .as_deref(),
        Some(&b"y"[..]),
        "a dir made where a lower one was removed must be opaque"
    );
    let wh = fs::symlink_metadata(s.upper.join("etc/issue")).expect("whiteout etc/issue");
    assert!(
        wh.file_type().is_char_device() && wh.rdev() == 0,
        "etc/issue in the upper is not a 0/0 char device whiteout"
    );

    // The kernel, without and then with index=on, on the same directories.
    for opts in [KERNEL_RW.to_string(), format!("{KERNEL_RW},index=on")] {
        let k = KernelOverlay::try_mount(&s.layers, &format!("{},{opts}", s.uw()))
            .unwrap_or_else(|e| panic!("the kernel refuses layerfs's upper with {opts}: {e}"));
        let theirs = kernel_snapshot(k.path());
        drop(k);
        assert_same(
            &format!("layerfs's merged tree vs the kernel's ({opts}) on the same upper"),
            &ours,
            &theirs,
        );
    }

    // And layerfs again, after the kernel has used the work dir.
    let m = LayerfsMount::mount(&s.layers, &s.uw());
    let again = snapshot(m.path());
    unmount_layerfs(m);
    assert_same("layerfs before vs after the kernel's mounts", &ours, &again);
}

#[test]
fn kernel_upper_mounts_in_layerfs() {
    let s = Stack::new("wr-k2l-", "demo", Dialect::OverlayTrusted);
    let k = KernelOverlay::mount(&s.layers, &format!("{},{KERNEL_RW},index=on", s.uw()));
    run_script(k.path());
    let theirs = kernel_snapshot(k.path());
    check_script_result(&theirs, "kernel");
    drop(k);

    let m = LayerfsMount::mount(&s.layers, &s.uw());
    let ours = snapshot(m.path());
    unmount_layerfs(m);
    assert_same(
        "the kernel's merged tree vs layerfs's on the same upper",
        &theirs,
        &ours,
    );
}

/// Names in a directory (empty when it does not exist).
fn names_in(dir: &Path) -> Vec<String> {
    match fs::read_dir(dir) {
        Ok(rd) => {
            let mut v: Vec<String> = rd
                .map(|e| {
                    e.expect("readdir entry")
                        .file_name()
                        .to_string_lossy()
                        .into_owned()
                })
                .collect();
            v.sort();
            v
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => Vec::new(),
        Err(e) => panic!("reading {}: {e}", dir.display()),
    }
}

/// `sha256sum FILE` (the external tool: hashing hundreds of MiB in an
/// unoptimized test build would take too long).
fn sha256sum(p: &Path) -> String {
    let out = Command::new("sha256sum")
        .arg(p)
        .stdin(Stdio::null())
        .output()
        .expect("running sha256sum");
    assert!(
        out.status.success(),
        "sha256sum {}: {}",
        p.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .expect("sha256sum prints a hash")
        .to_string()
}

/// Writes `size` bytes of data that differ in every MiB (each MiB starts
/// with its index), quickly.
fn write_pattern(p: &Path, size: usize) {
    const CHUNK: usize = 1 << 20;
    let mut buf = vec![0u8; CHUNK];
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    for b in buf.iter_mut() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *b = x as u8;
    }
    let mut f = step("create pattern file", fs::File::create(p));
    let mut done = 0;
    let mut i: u64 = 0;
    while done < size {
        buf[..8].copy_from_slice(&i.to_le_bytes());
        let n = CHUNK.min(size - done);
        step("write pattern", f.write_all(&buf[..n]));
        done += n;
        i += 1;
    }
    step("fsync pattern", f.sync_all());
}

fn errno_name(e: Option<i32>) -> String {
    match e {
        Some(libc::ENOTCONN) => "ENOTCONN".into(),
        Some(libc::ECONNABORTED) => "ECONNABORTED".into(),
        Some(libc::ENOSPC) => "ENOSPC".into(),
        Some(n) => format!("errno {n} ({})", io::Error::from_raw_os_error(n)),
        None => "no errno".into(),
    }
}

#[test]
fn crash_during_copy_up_leaves_nothing_half_copied() {
    const SIZE: usize = 256 << 20;
    common::require_root();
    let dir = common::tempdir("wr-crash-");
    let root = dir.path().canonicalize().expect("canonical temp dir");
    let (lower, upper, work) = (root.join("lower"), root.join("upper"), root.join("work"));
    for d in [&lower, &upper, &work] {
        fs::create_dir(d).unwrap_or_else(|e| panic!("mkdir {}: {e}", d.display()));
    }
    let big = lower.join("big.bin");
    write_pattern(&big, SIZE);
    fs::write(lower.join("small"), "small\n").expect("write small");
    let before = sha256sum(&big);
    let layers = vec![lower.clone()];
    let opts = uw(&upper, &work);
    let tmp_area = work.join("work");

    let m = LayerfsMount::mount(&layers, &opts);
    let pid = m.pid().expect("the daemon runs") as libc::pid_t;
    let target = m.path().join("big.bin");
    let (tx, rx) = mpsc::channel();
    // The open may hang if the kill does not abort the connection: the
    // thread is then abandoned (the test fails and the guard tears the
    // mount down).
    std::thread::spawn(move || {
        let r = fs::OpenOptions::new().append(true).open(&target);
        let _ = tx.send(r.map(drop).map_err(|e| e.raw_os_error()));
    });
    let deadline = Instant::now() + Duration::from_secs(20);
    let seen = loop {
        let names = names_in(&tmp_area);
        if !names.is_empty() {
            break names;
        }
        if let Ok(r) = rx.try_recv() {
            panic!(
                "the open finished ({:?}) before a temp file was seen in {}",
                r.map_err(errno_name),
                tmp_area.display()
            );
        }
        assert!(
            Instant::now() < deadline,
            "no temp file appeared in {} within 20 s; daemon output:\n{}",
            tmp_area.display(),
            m.log()
        );
        std::thread::yield_now();
    };
    // SAFETY: kill(2) of our own child, by its pid.
    let rc = unsafe { libc::kill(pid, libc::SIGKILL) };
    assert_eq!(rc, 0, "kill -9 {pid}: {}", io::Error::last_os_error());
    let client = rx.recv_timeout(Duration::from_secs(10));
    // Later calls on the dead mount fail at once too (not tried when the
    // client hangs: so would this).
    let later = match client {
        Ok(_) => fs::symlink_metadata(m.path().join("small")).map(drop),
        Err(_) => Ok(()),
    };
    let exit = m.unmount();
    let client = client.unwrap_or_else(|_| {
        panic!("the client's open did not return within 10 s of the daemon's death")
    });
    let errno = match client {
        Ok(()) => panic!(
            "the open succeeded although the daemon was killed while copying up \
             (temp seen: {seen:?})"
        ),
        Err(e) => e,
    };
    assert!(
        matches!(errno, Some(libc::ENOTCONN | libc::ECONNABORTED)),
        "the client's open failed with {}, expected ENOTCONN (or ECONNABORTED)",
        errno_name(errno)
    );
    // (ECONNABORTED when the request was queued before the last of the
    // daemon's /dev/fuse fds closed, ENOTCONN after.)
    let later = later.map_err(|e| e.raw_os_error());
    assert!(
        matches!(later, Err(Some(libc::ENOTCONN | libc::ECONNABORTED))),
        "stat on the dead mount: {:?}",
        later.map_err(errno_name)
    );
    let partial = fs::symlink_metadata(tmp_area.join(&seen[0])).map(|m| m.len());
    eprintln!(
        "killed mid copy-up (temp {seen:?}, {partial:?} of {SIZE} bytes copied); \
         the client's open got {}; daemon status {:?}",
        errno_name(errno),
        exit.status
    );
    assert!(
        !exit.status.is_some_and(|s| s.success()),
        "the daemon was not killed"
    );
    // What the crash left: never the file itself in the upper, unless the
    // copy was complete.
    let leftover = names_in(&tmp_area);
    if upper.join("big.bin").exists() {
        assert_eq!(
            sha256sum(&upper.join("big.bin")),
            before,
            "a partial copy of big.bin is visible in the upper"
        );
        eprintln!("note: the copy was already in place when the daemon died");
    }
    eprintln!("left in W/work by the crash: {leftover:?}");

    let m = LayerfsMount::mount(&layers, &opts);
    assert_eq!(
        names_in(&tmp_area),
        Vec::<String>::new(),
        "W/work is not emptied by the remount"
    );
    let through = m.path().join("big.bin");
    assert_eq!(
        fs::symlink_metadata(&through).expect("stat big.bin").len(),
        SIZE as u64
    );
    assert_eq!(
        sha256sum(&through),
        before,
        "big.bin read through the remount differs from the lower"
    );
    unmount_layerfs(m);
    assert_eq!(sha256sum(&big), before, "the lower file changed");
    assert_eq!(
        names_in(&tmp_area),
        Vec::<String>::new(),
        "W/work is not empty after the remount"
    );
}

/// Bytes in use on the filesystem holding `p`.
fn used_bytes(p: &Path) -> u64 {
    let c = common::sys::cpath(p);
    // SAFETY: zeroed statvfs is a valid out-parameter.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: valid path and out pointer.
    let rc = unsafe { libc::statvfs(c.as_ptr(), &mut st) };
    assert_eq!(rc, 0, "statvfs: {}", io::Error::last_os_error());
    (st.f_blocks - st.f_bfree) * st.f_frsize
}

#[test]
fn copy_up_without_space_fails_cleanly() {
    const SIZE: usize = 4 << 20;
    common::require_root();
    let dir = common::tempdir("wr-enospc-");
    let root = dir.path().canonicalize().expect("canonical temp dir");
    let (lower, small_fs) = (root.join("lower"), root.join("small-fs"));
    for d in [&lower, &small_fs] {
        fs::create_dir(d).unwrap_or_else(|e| panic!("mkdir {}: {e}", d.display()));
    }
    let big = lower.join("big.bin");
    write_pattern(&big, SIZE);
    let content = fs::read(&big).expect("read big.bin");
    let tmpfs = Tmpfs::mount(&small_fs, "size=2m,mode=0755");
    let (upper, work) = (small_fs.join("upper"), small_fs.join("work"));
    for d in [&upper, &work] {
        fs::create_dir(d).unwrap_or_else(|e| panic!("mkdir {}: {e}", d.display()));
    }
    let used_before = used_bytes(&small_fs);

    let m = LayerfsMount::mount(std::slice::from_ref(&lower), &uw(&upper, &work));
    let target = m.path().join("big.bin");
    for attempt in 1..=2 {
        match fs::OpenOptions::new().write(true).open(&target) {
            Ok(_) => {
                panic!("attempt {attempt}: opening a 4 MiB file for write with 2 MiB free worked")
            }
            Err(e) => assert_eq!(
                e.raw_os_error(),
                Some(libc::ENOSPC),
                "attempt {attempt}: open for write failed with {}, expected ENOSPC",
                errno_name(e.raw_os_error())
            ),
        }
        assert_eq!(
            names_in(&upper),
            Vec::<String>::new(),
            "attempt {attempt}: the failed copy-up left something in the upper"
        );
        assert_eq!(
            names_in(&work.join("work")),
            Vec::<String>::new(),
            "attempt {attempt}: the failed copy-up left something in W/work"
        );
    }
    let used = used_bytes(&small_fs);
    assert!(
        used <= used_before + (64 << 10),
        "the tmpfs still has {used} bytes in use (was {used_before} before the mount): \
         a removed temp file kept open?"
    );
    let mut seen = Vec::new();
    step(
        "read big.bin after the failure",
        fs::File::open(&target).and_then(|mut f| f.read_to_end(&mut seen)),
    );
    assert!(
        seen == content,
        "big.bin reads differently after the failure"
    );
    // Something small still fits.
    step(
        "create small.txt",
        fs::write(m.path().join("small.txt"), "still room\n"),
    );
    assert_eq!(
        step(
            "read small.txt",
            fs::read_to_string(m.path().join("small.txt"))
        ),
        "still room\n"
    );
    unmount_layerfs(m);
    assert_eq!(
        fs::read_to_string(upper.join("small.txt")).ok().as_deref(),
        Some("still room\n"),
        "small.txt is not in the upper"
    );
    assert_eq!(names_in(&upper), vec!["small.txt".to_string()]);
    assert!(
        fs::read(&big).expect("read lower") == content,
        "the lower changed"
    );
    drop(tmpfs);
    assert!(!is_mounted(&small_fs));
}

#[test]
fn oci_whiteouts_in_the_upper() {
    let s = Stack::new("wr-oci-", "demo", Dialect::Oci);
    let m = LayerfsMount::mount(&s.layers, &format!("{},whiteout=oci", s.uw()));
    let p = |rel: &str| m.path().join(rel);
    step("rm etc/issue", fs::remove_file(p("etc/issue")));
    step(
        "rm -r usr/lib/python3.11",
        fs::remove_dir_all(p("usr/lib/python3.11")),
    );
    step("rm -r app/static", fs::remove_dir_all(p("app/static")));
    step("mkdir app/static", fs::create_dir(p("app/static")));
    step(
        "create app/static/new.html",
        fs::write(p("app/static/new.html"), "<p>new</p>\n"),
    );
    // A lower file removed, then made again.
    step("rm etc/passwd", fs::remove_file(p("etc/passwd")));
    step(
        "create etc/passwd",
        fs::write(p("etc/passwd"), "root:x:0:0::/root:/bin/sh\n"),
    );
    step(
        "rename etc/os-release etc/os-release.orig",
        fs::rename(p("etc/os-release"), p("etc/os-release.orig")),
    );
    step("create etc/newfile", fs::write(p("etc/newfile"), "new\n"));
    step(
        "overwrite etc/hostname",
        fs::write(p("etc/hostname"), "renamed-host\n"),
    );
    step("mkdir srv/data", fs::create_dir_all(p("srv/data")));
    let ours = snapshot(m.path());
    unmount_layerfs(m);
    for (rel, gone) in [
        ("etc/issue", true),
        ("usr/lib/python3.11", true),
        ("app/static/index.html", true),
        ("app/static/new.html", false),
        ("etc/passwd", false),
        ("etc/os-release", true),
        ("etc/os-release.orig", false),
    ] {
        assert_eq!(
            ours.get(rel).is_none(),
            gone,
            "/{rel} through the writable mount"
        );
    }

    let u = |rel: &str| s.upper.join(rel);
    let empty_file = |rel: &str| {
        let md = fs::symlink_metadata(u(rel)).unwrap_or_else(|e| {
            panic!(
                "upper/{rel}: {e} (upper holds {:?})",
                upper_listing(&s.upper)
            )
        });
        assert!(
            md.is_file() && md.len() == 0,
            "upper/{rel} is not an empty regular file"
        );
    };
    empty_file("etc/.wh.issue");
    empty_file("usr/lib/.wh.python3.11");
    empty_file("etc/.wh.os-release");
    empty_file("app/static/.wh..wh..opq");
    let absent = |rel: &str| {
        assert!(
            fs::symlink_metadata(u(rel)).is_err(),
            "upper/{rel} should not exist (upper holds {:?})",
            upper_listing(&s.upper)
        );
    };
    // The whiteout goes when the name is made again; and the lower dir's
    // removal leaves no whiteout where an opaque dir replaced it.
    absent("etc/.wh.passwd");
    absent("app/.wh.static");
    absent("usr/lib/python3.11");
    // Nothing in overlay format: no char devices, no overlay xattrs.
    let upper_tree = snapshot(&s.upper);
    for (rel, e) in &upper_tree.entries {
        assert!(
            !matches!(e.kind, Kind::CharDev),
            "upper {}: a char device in an OCI-format upper",
            common::tree::show(rel)
        );
        for k in e.xattrs.keys() {
            assert!(
                !k.starts_with(b"trusted.overlay.") && !k.starts_with(b"user.overlay."),
                "upper {}: overlay xattr {} in an OCI-format upper",
                common::tree::show(rel),
                k.escape_ascii()
            );
        }
    }

    // The upper as the top lower layer shows the same tree.
    let mut stacked = vec![s.upper.clone()];
    stacked.extend(s.layers.iter().cloned());
    let m = LayerfsMount::mount(&stacked, "");
    let as_lower = snapshot(m.path());
    unmount_layerfs(m);
    assert_same(
        "the writable mount vs its upper mounted as a lower layer",
        &ours,
        &as_lower,
    );
}

fn upper_listing(upper: &Path) -> Vec<String> {
    snapshot(upper)
        .paths()
        .map(|p| p.escape_ascii().to_string())
        .collect()
}

// ---------------------------------------------------------------------
// Bad input for writable mounts. tests/bad_input.rs covers: work not
// empty, upper inside a lower, upper and work on different filesystems,
// upperdir without workdir and the reverse. Here: the rest.

/// A temp dir for one bad-input case; anything left mounted below it is
/// detached on drop.
struct Scene {
    root: PathBuf,
    _tmp: tempfile::TempDir,
}

impl Scene {
    fn new() -> Scene {
        common::require_root();
        let tmp = common::tempdir("wr-bad-");
        let root = tmp.path().canonicalize().expect("canonical temp dir");
        Scene { root, _tmp: tmp }
    }

    fn dir(&self, rel: &str) -> PathBuf {
        let p = self.root.join(rel);
        fs::create_dir_all(&p).unwrap_or_else(|e| panic!("mkdir {}: {e}", p.display()));
        p
    }

    fn mounts(&self) -> Vec<PathBuf> {
        let info = fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
        info.lines()
            .filter_map(|l| l.split(' ').nth(4))
            .map(PathBuf::from)
            .filter(|p| p.starts_with(&self.root))
            .collect()
    }

    /// Path -> (mode, size, mtime, ctime) for everything below the root.
    fn state(&self) -> Vec<(PathBuf, u32, u64, i64, i64, i64, i64)> {
        let mut out = Vec::new();
        let mut stack = vec![self.root.clone()];
        while let Some(d) = stack.pop() {
            for e in fs::read_dir(&d).expect("readdir") {
                let p = e.expect("entry").path();
                let md = fs::symlink_metadata(&p).expect("lstat");
                if md.is_dir() {
                    stack.push(p.clone());
                }
                out.push((
                    p,
                    md.mode(),
                    md.size(),
                    md.mtime(),
                    md.mtime_nsec(),
                    md.ctime(),
                    md.ctime_nsec(),
                ));
            }
        }
        out.sort();
        out
    }

    /// `layerfs mount ARGS` must fail: non-zero, one stderr line starting
    /// `layerfs: ` and containing each of `names`, nothing mounted or
    /// changed below the root.
    fn expect_failure(&self, args: &[&std::ffi::OsStr], names: &[&str]) {
        let (mounts, state) = (self.mounts(), self.state());
        let out_dir = common::tempdir("wr-bad-out-");
        let err_path = out_dir.path().join("stderr");
        let mut child = Command::new(common::layerfs_bin())
            .arg("mount")
            .args(args)
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(fs::File::create(&err_path).expect("stderr file"))
            .spawn()
            .expect("spawn layerfs");
        let deadline = Instant::now() + Duration::from_secs(20);
        let status = loop {
            if let Some(s) = child.try_wait().expect("wait") {
                break s;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("layerfs mount {args:?} did not finish within 20 s");
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        let stderr = fs::read_to_string(&err_path).expect("read stderr");
        assert_eq!(self.mounts(), mounts, "mounts changed: {args:?}");
        assert!(
            !status.success(),
            "succeeded but should fail: {args:?}; stderr {stderr:?}"
        );
        assert!(
            stderr.ends_with('\n') && stderr.matches('\n').count() == 1,
            "stderr must be one line, got {stderr:?} for {args:?}"
        );
        assert!(stderr.starts_with("layerfs: "), "{stderr:?}");
        for n in names {
            assert!(stderr.contains(n), "stderr {stderr:?} does not name {n:?}");
        }
        assert!(self.state() == state, "files changed: {args:?}");
    }
}

impl Drop for Scene {
    fn drop(&mut self) {
        for mnt in self.mounts().into_iter().rev() {
            let c = common::sys::cpath(&mnt);
            // SAFETY: valid path.
            unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
        }
    }
}

fn s(p: &Path) -> String {
    p.display().to_string()
}

/// `-o lowerdir=L,upperdir=U,workdir=W MNT` as arguments.
fn o_args(l: &Path, u: &Path, w: &Path, mnt: &Path) -> Vec<std::ffi::OsString> {
    vec![
        "-o".into(),
        format!("lowerdir={},{}", escape_opt_path(l), uw(u, w)).into(),
        mnt.as_os_str().to_owned(),
    ]
}

fn refs(v: &[std::ffi::OsString]) -> Vec<&std::ffi::OsStr> {
    v.iter().map(|a| a.as_os_str()).collect()
}

#[test]
fn bad_writable_overlapping_upper_work_and_lower() {
    let sc = Scene::new();
    let (l, u, mnt) = (sc.dir("l"), sc.dir("u"), sc.dir("mnt"));
    fs::write(l.join("f"), "x").expect("write");
    // The work dir inside the upper.
    let w_in_u = sc.dir("u/w");
    sc.expect_failure(
        &refs(&o_args(&l, &u, &w_in_u, &mnt)),
        &[&s(&w_in_u), &s(&u), "inside"],
    );
    // The upper inside the work dir.
    let w = sc.dir("w");
    let u_in_w = sc.dir("w2/u");
    let w2 = sc.root.join("w2");
    sc.expect_failure(
        &refs(&o_args(&l, &u_in_w, &w2, &mnt)),
        &[&s(&u_in_w), &s(&w2), "inside"],
    );
    // Upper and work the same directory.
    sc.expect_failure(&refs(&o_args(&l, &u, &u, &mnt)), &[&s(&u), "same"]);
    // A lower inside the upper.
    let l_in_u = sc.dir("u/lower");
    sc.expect_failure(
        &refs(&o_args(&l_in_u, &u, &w, &mnt)),
        &[&s(&l_in_u), &s(&u), "inside"],
    );
    // The mount point inside the upper, and inside the work dir.
    let m_in_u = sc.dir("u/mnt");
    sc.expect_failure(
        &refs(&o_args(&l, &u, &w, &m_in_u)),
        &[&s(&m_in_u), &s(&u), "inside"],
    );
    let m_in_w = sc.dir("w/mnt");
    let u2 = sc.dir("u2");
    // (Refused as "inside workdir" or as "workdir not empty".)
    sc.expect_failure(&refs(&o_args(&l, &u2, &w, &m_in_w)), &[&s(&w)]);
}

#[test]
fn bad_writable_missing_or_unusable_dirs() {
    let sc = Scene::new();
    let (l, u, w, mnt) = (sc.dir("l"), sc.dir("u"), sc.dir("w"), sc.dir("mnt"));
    // A missing upper, a missing work dir.
    let missing = sc.root.join("missing");
    sc.expect_failure(
        &refs(&o_args(&l, &missing, &w, &mnt)),
        &[&s(&missing), "upperdir"],
    );
    sc.expect_failure(
        &refs(&o_args(&l, &u, &missing, &mnt)),
        &[&s(&missing), "workdir"],
    );
    // An upper that is a file.
    let file = sc.root.join("file");
    fs::write(&file, "x").expect("write");
    sc.expect_failure(
        &refs(&o_args(&l, &file, &w, &mnt)),
        &[&s(&file), "not a directory"],
    );
    // A leftover `work` that is not a directory makes the work dir not empty.
    fs::write(w.join("work"), "").expect("write");
    sc.expect_failure(&refs(&o_args(&l, &u, &w, &mnt)), &[&s(&w), "not empty"]);
    fs::remove_file(w.join("work")).expect("rm");
    // The --upper/--work form checks the same: a stray file in work.
    fs::write(w.join("stray"), "").expect("write");
    let args: Vec<std::ffi::OsString> = vec![
        "--lower".into(),
        l.clone().into(),
        "--upper".into(),
        u.clone().into(),
        "--work".into(),
        w.clone().into(),
        mnt.clone().into(),
    ];
    sc.expect_failure(&refs(&args), &[&s(&w), "not empty"]);
    fs::remove_file(w.join("stray")).expect("rm");
    // Upper and work on a read-only filesystem.
    let ro = sc.dir("ro");
    let tmpfs = Tmpfs::mount(&ro, "size=1m");
    let (ru, rw) = (ro.join("u"), ro.join("w"));
    fs::create_dir(&ru).expect("mkdir");
    fs::create_dir(&rw).expect("mkdir");
    tmpfs.remount(true);
    sc.expect_failure(&refs(&o_args(&l, &ru, &rw, &mnt)), &[&s(&ru), "read-only"]);
    drop(tmpfs);
}

/// Changes one name of each lower hard-link group of the `links` fixture
/// (hl/orig, hl/sub/third and other/fourth are one file in the base;
/// hl2/x, y and z one file in the top layer).
fn change_lower_hard_links(root: &Path) {
    let mut f = step(
        "open hl/orig for append",
        fs::OpenOptions::new()
            .append(true)
            .open(root.join("hl/orig")),
    );
    step("append to hl/orig", f.write_all(b"changed\n"));
    drop(f);
    step(
        "chmod 0600 hl2/x",
        fs::set_permissions(root.join("hl2/x"), fs::Permissions::from_mode(0o600)),
    );
}

/// Copied-up lower hard links, across implementations: after a change to
/// one name, every name shows the change, in both directions. Only the
/// kernel with index=on keeps the names together, so that is the kernel
/// side here.
#[test]
fn lower_hard_links_interop() {
    let kernel_opts = format!("{KERNEL_RW},index=on");
    let mut problems = Vec::new();

    let s = Stack::new("wr-hl-l2k-", "links", Dialect::OverlayTrusted);
    let m = LayerfsMount::mount(&s.layers, &s.uw());
    change_lower_hard_links(m.path());
    let ours = snapshot(m.path());
    unmount_layerfs(m);
    let k = KernelOverlay::mount(&s.layers, &format!("{},{kernel_opts}", s.uw()));
    let theirs = kernel_snapshot(k.path());
    drop(k);
    for p in tree_problems(&ours, &theirs) {
        problems.push(format!("layerfs wrote, kernel reads: {p}"));
    }

    let s = Stack::new("wr-hl-k2l-", "links", Dialect::OverlayTrusted);
    let k = KernelOverlay::mount(&s.layers, &format!("{},{kernel_opts}", s.uw()));
    change_lower_hard_links(k.path());
    let theirs = kernel_snapshot(k.path());
    drop(k);
    let m = LayerfsMount::mount(&s.layers, &s.uw());
    let ours = snapshot(m.path());
    unmount_layerfs(m);
    for p in tree_problems(&theirs, &ours) {
        problems.push(format!("kernel wrote, layerfs reads: {p}"));
    }
    assert!(
        problems.is_empty(),
        "{} difference(s):\n  {}",
        problems.len(),
        problems.join("\n  ")
    );
}

/// layerfs alone: a lower hard-link group changed through one name is
/// still one group (one st_ino, one content) after a remount.
#[test]
fn lower_hard_links_survive_a_remount() {
    let s = Stack::new("wr-hl-l2l-", "links", Dialect::OverlayTrusted);
    let m = LayerfsMount::mount(&s.layers, &s.uw());
    change_lower_hard_links(m.path());
    let before = snapshot(m.path());
    unmount_layerfs(m);
    let m = LayerfsMount::mount(&s.layers, &s.uw());
    let after = snapshot(m.path());
    unmount_layerfs(m);
    assert_same("layerfs before vs after a remount", &before, &after);
}

/// A lower object keeps its inode number when it is copied up, and after a
/// remount (the origin log in the work dir), as with the kernel. A file
/// copied up and then hard-linked shows one number for both names.
#[test]
fn copied_up_objects_keep_their_inode_numbers() {
    let s = Stack::new("wr-ino-", "demo", Dialect::OverlayTrusted);
    let ino = |root: &Path, rel: &str| {
        step(
            &format!("lstat {rel}"),
            fs::symlink_metadata(root.join(rel)),
        )
        .ino()
    };
    let m = LayerfsMount::mount(&s.layers, &s.uw());
    let (file, dir) = (ino(m.path(), "etc/hostname"), ino(m.path(), "usr/share"));
    {
        let mut f = step(
            "open etc/hostname for append",
            fs::OpenOptions::new()
                .append(true)
                .open(m.path().join("etc/hostname")),
        );
        step("append to etc/hostname", f.write_all(b"more\n"));
    }
    step(
        "chmod 0700 usr/share",
        fs::set_permissions(
            m.path().join("usr/share"),
            fs::Permissions::from_mode(0o700),
        ),
    );
    step(
        "link etc/hostname srv-hostname",
        fs::hard_link(m.path().join("etc/hostname"), m.path().join("srv-hostname")),
    );
    let copied = [
        ino(m.path(), "etc/hostname"),
        ino(m.path(), "usr/share"),
        ino(m.path(), "srv-hostname"),
    ];
    unmount_layerfs(m);
    assert!(
        s.upper.join("etc/hostname").exists() && s.upper.join("usr/share").exists(),
        "nothing was copied up"
    );
    let m = LayerfsMount::mount(&s.layers, &s.uw());
    let remounted = [
        ino(m.path(), "etc/hostname"),
        ino(m.path(), "usr/share"),
        ino(m.path(), "srv-hostname"),
    ];
    unmount_layerfs(m);
    assert_eq!(copied, [file, dir, file], "after copy-up (file, dir, link)");
    assert_eq!(
        remounted,
        [file, dir, file],
        "after a remount (file, dir, link)"
    );
}
