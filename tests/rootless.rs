//! layerfs as an unprivileged user: mounted through fusermount3, and as
//! root of a user namespace (`unshare -Urm`) through /dev/fuse directly;
//! writes, copy-up, whiteouts and directory renames with `user.overlay.*`
//! markers; unmounted with `layerfs umount` and `fusermount3 -u`.
//!
//! The user is `nobody` (65534). fusermount3 opens /dev/fuse with the
//! caller's rights, so the device must be usable by that user: a guard
//! makes it mode 0666 (as udev does on most systems) for the test and puts
//! the old mode back. Daemons re-parented to this process are reaped by pid.

mod common;

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::{is_mounted, layerfs_bin, mount_fstype, require_root, tempdir};

const NOBODY: u32 = 65534;

/// /dev/fuse made usable by everyone, its mode restored on drop.
struct DevFuseMode {
    old: u32,
}

impl DevFuseMode {
    fn open_to_all() -> DevFuseMode {
        let old = fs::metadata("/dev/fuse").expect("/dev/fuse").mode() & 0o7777;
        fs::set_permissions("/dev/fuse", fs::Permissions::from_mode(0o666)).unwrap();
        DevFuseMode { old }
    }
}

impl Drop for DevFuseMode {
    fn drop(&mut self) {
        let _ = fs::set_permissions("/dev/fuse", fs::Permissions::from_mode(self.old));
    }
}

/// Everything under the test dir unmounted and every daemon reaped, even
/// when a check fails half-way.
struct Cleanup {
    root: PathBuf,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        let info = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        for mnt in info.lines().filter_map(|l| l.split(' ').nth(4)) {
            if Path::new(mnt).starts_with(&self.root) {
                let _ = nix::mount::umount2(mnt, nix::mount::MntFlags::MNT_DETACH);
            }
        }
        reap_layerfs_daemons();
    }
}

fn reap_layerfs_daemons() {
    let me = std::process::id().to_string();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let mut left = Vec::new();
        for entry in fs::read_dir("/proc").into_iter().flatten().flatten() {
            let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
                continue;
            };
            let status = fs::read_to_string(entry.path().join("status")).unwrap_or_default();
            let field = |k: &str| {
                status
                    .lines()
                    .find_map(|l| l.strip_prefix(k))
                    .map(|v| v.trim().to_string())
            };
            if field("PPid:").as_deref() == Some(me.as_str())
                && field("Name:").as_deref() == Some("layerfs")
            {
                left.push(nix::unistd::Pid::from_raw(pid));
            }
        }
        if left.is_empty() {
            return;
        }
        for pid in &left {
            if Instant::now() > deadline {
                let _ = nix::sys::signal::kill(*pid, nix::sys::signal::Signal::SIGKILL);
                let _ = nix::sys::wait::waitpid(*pid, None);
            } else {
                let _ = nix::sys::wait::waitpid(*pid, Some(nix::sys::wait::WaitPidFlag::WNOHANG));
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `setpriv` to nobody, no supplementary groups, no capabilities.
fn as_nobody() -> Command {
    let mut c = Command::new("setpriv");
    c.args([
        "--reuid=65534",
        "--regid=65534",
        "--clear-groups",
        "--inh-caps=-all",
        "--",
    ]);
    c.stdin(Stdio::null());
    c
}

fn check(out: Output, what: &str) -> String {
    assert!(
        out.status.success(),
        "{what} failed ({}):\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A world-readable test dir with a lower layer, an upper, a work dir and
/// a mount point, all nobody's.
fn layout(root: &Path) -> (PathBuf, PathBuf, PathBuf, PathBuf) {
    fs::set_permissions(root, fs::Permissions::from_mode(0o755)).unwrap();
    let (l, u, w, m) = (
        root.join("lower"),
        root.join("upper"),
        root.join("work"),
        root.join("mnt"),
    );
    fs::create_dir_all(l.join("dir/sub")).unwrap();
    fs::write(l.join("file"), "lower\n").unwrap();
    fs::write(l.join("gone"), "bye\n").unwrap();
    fs::write(l.join("dir/sub/inner"), "inner\n").unwrap();
    for d in [&u, &w, &m] {
        fs::create_dir_all(d).unwrap();
    }
    for p in [&l, &l.join("dir"), &l.join("dir/sub"), &u, &w, &m] {
        std::os::unix::fs::lchown(p, Some(NOBODY), Some(NOBODY)).unwrap();
    }
    for f in ["file", "gone", "dir/sub/inner"] {
        std::os::unix::fs::lchown(l.join(f), Some(NOBODY), Some(NOBODY)).unwrap();
    }
    (l, u, w, m)
}

/// The changes every variant makes, run by `sh` in the mount.
const CHANGES: &str = "set -e; echo new > new; echo more >> file; rm gone; mv dir moved; \
                       cat file moved/sub/inner; test ! -e gone; test ! -e dir";

/// What the upper must hold afterwards: the data, a whiteout for `gone`
/// and for `dir`, a redirect on `moved`, and only `user.overlay.*` markers.
fn check_upper(upper: &Path) {
    assert_eq!(fs::read_to_string(upper.join("new")).unwrap(), "new\n");
    assert_eq!(
        fs::read_to_string(upper.join("file")).unwrap(),
        "lower\nmore\n"
    );
    for wh in ["gone", "dir"] {
        let m = fs::symlink_metadata(upper.join(wh)).unwrap();
        assert!(
            m.file_type().is_char_device() && m.rdev() == 0,
            "{wh} is no whiteout in the upper"
        );
    }
    assert_eq!(fs::metadata(upper.join("new")).unwrap().uid(), NOBODY);
    let out = Command::new("getfattr")
        .args(["--absolute-names", "-h", "-R", "-d", "-m", "-"])
        .arg(upper)
        .output()
        .unwrap();
    let xattrs = String::from_utf8_lossy(&out.stdout);
    assert!(xattrs.contains("user.overlay.redirect"), "{xattrs}");
    assert!(!xattrs.contains("trusted."), "{xattrs}");
}

use std::os::unix::fs::FileTypeExt;

#[test]
fn rootless_mounts_through_fusermount3_and_in_a_user_namespace() {
    require_root();
    // SAFETY: prctl with integer arguments only.
    assert_eq!(
        unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) },
        0
    );
    let tmp = tempdir("layerfs-rootless-");
    let _cleanup = Cleanup {
        root: tmp.path().to_path_buf(),
    };
    let _dev = DevFuseMode::open_to_all();
    // The binary where nobody may run it.
    let bin = tmp.path().join("layerfs");
    fs::copy(layerfs_bin(), &bin).unwrap();
    fs::set_permissions(&bin, fs::Permissions::from_mode(0o755)).unwrap();

    // 1. Through fusermount3, unmounted with `layerfs umount`.
    let one = tmp.path().join("one");
    fs::create_dir(&one).unwrap();
    let (l, u, w, m) = layout(&one);
    let opts = format!(
        "lowerdir={},upperdir={},workdir={}",
        l.display(),
        u.display(),
        w.display()
    );
    check(
        as_nobody()
            .arg(&bin)
            .args(["mount", "-o", &opts])
            .arg(&m)
            .output()
            .unwrap(),
        "layerfs mount as nobody",
    );
    assert_eq!(mount_fstype(&m).as_deref(), Some("fuse.layerfs"));
    let info = fs::read_to_string("/proc/self/mountinfo").unwrap();
    let line = info
        .lines()
        .find(|l| l.split(' ').nth(4) == Some(m.to_str().unwrap()))
        .unwrap();
    assert!(line.contains("user_id=65534"), "{line}");
    assert!(
        !line.contains("allow_other"),
        "allow_other was not asked for: {line}"
    );
    // Without allow_other, nobody else may look in: not another user, not
    // even root (the kernel's FUSE rule), and the user's files stay whole.
    let other = Command::new("setpriv")
        .args(["--reuid=1", "--regid=1", "--clear-groups", "--", "ls"])
        .arg(&m)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(!other.status.success(), "another user listed the mount");
    assert!(
        String::from_utf8_lossy(&other.stderr).contains("Permission denied"),
        "{}",
        String::from_utf8_lossy(&other.stderr)
    );
    let by_root = fs::symlink_metadata(m.join("file")).map(|_| ());
    assert_eq!(
        by_root.map_err(|e| e.raw_os_error()),
        Err(Some(libc::EACCES)),
        "root without allow_other"
    );
    let out = check(
        // Not current_dir: the chdir would be root's, and root may not
        // enter a mount without allow_other.
        as_nobody()
            .args(["sh", "-c", &format!("cd {} && {CHANGES}", m.display())])
            .output()
            .unwrap(),
        "changes as nobody",
    );
    assert_eq!(out, "lower\nmore\ninner\n");
    check(
        as_nobody()
            .arg(&bin)
            .arg("umount")
            .arg(&m)
            .output()
            .unwrap(),
        "layerfs umount as nobody",
    );
    assert!(!is_mounted(&m));
    reap_layerfs_daemons();
    check_upper(&u);

    // 2. The same upper again, unmounted with fusermount3 -u: the changes
    // are all still there.
    fs::remove_dir_all(&w).unwrap();
    fs::create_dir(&w).unwrap();
    std::os::unix::fs::lchown(&w, Some(NOBODY), Some(NOBODY)).unwrap();
    check(
        as_nobody()
            .arg(&bin)
            .args(["mount", "-o", &opts])
            .arg(&m)
            .output()
            .unwrap(),
        "second mount as nobody",
    );
    let listing = check(
        as_nobody().args(["ls", "-A"]).arg(&m).output().unwrap(),
        "ls",
    );
    assert_eq!(
        listing.split_whitespace().collect::<Vec<_>>(),
        ["file", "moved", "new"]
    );
    check(
        as_nobody()
            .arg("fusermount3")
            .arg("-u")
            .arg(&m)
            .output()
            .unwrap(),
        "fusermount3 -u",
    );
    assert!(!is_mounted(&m));
    reap_layerfs_daemons();

    // 3. allow_other without user_allow_other in /etc/fuse.conf: refused,
    // in one line that says what to do, and nothing mounted.
    let conf = fs::read_to_string("/etc/fuse.conf").unwrap_or_default();
    if !conf.lines().any(|l| l.trim() == "user_allow_other") {
        let out = as_nobody()
            .arg(&bin)
            .args(["mount", "-o", &format!("{opts},allow_other")])
            .arg(&m)
            .output()
            .unwrap();
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("user_allow_other"), "{err}");
        assert_eq!(err.trim().lines().count(), 1, "{err}");
        assert!(!is_mounted(&m));
        reap_layerfs_daemons();
    }

    // 4. Root of a user namespace: /dev/fuse directly, no fusermount3.
    let two = tmp.path().join("two");
    fs::create_dir(&two).unwrap();
    let (l, u, w, m) = layout(&two);
    let script = format!(
        "set -e; {bin} mount -o lowerdir={l},upperdir={u},workdir={w} {m}; \
         grep -q ' {m} fuse.layerfs ' /proc/mounts; cd {m}; {CHANGES}; cd /; {bin} umount {m}",
        bin = bin.display(),
        l = l.display(),
        u = u.display(),
        w = w.display(),
        m = m.display()
    );
    let out = check(
        as_nobody()
            .args(["unshare", "-Urm", "sh", "-c", &script])
            .output()
            .unwrap(),
        "layerfs in unshare -Urm",
    );
    assert_eq!(out, "lower\nmore\ninner\n");
    reap_layerfs_daemons();
    check_upper(&u);
}
