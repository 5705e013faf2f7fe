//! layerfs as a container engine's overlay `mount_program`: the
//! fuse-overlayfs command line and options, checked against fuse-overlayfs
//! itself where both run, and a whole buildah/podman round trip (build,
//! run, commit, push, run again) with layerfs mounting every container.
//!
//! Daemons started detached (by us or by buildah/podman) are re-parented
//! to this process (a subreaper); each test reaps them by pid.

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt, symlink};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::{is_mounted, layerfs_bin, mount_fstype, require_root, tempdir};

/// Unmount everything mounted at or below `root`, deepest first.
fn unmount_below(root: &Path) {
    for _ in 0..3 {
        let info = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        let mut mounts: Vec<PathBuf> = info
            .lines()
            .filter_map(|l| l.split(' ').nth(4))
            .map(|p| PathBuf::from(p.replace("\\040", " ")))
            .filter(|p| p.starts_with(root))
            .collect();
        if mounts.is_empty() {
            return;
        }
        mounts.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
        for m in mounts {
            let _ = nix::mount::umount2(&m, nix::mount::MntFlags::MNT_DETACH);
        }
    }
}

/// Our children (daemons re-parented to us) named layerfs: waited for by
/// pid, killed by pid if they outlive their mount.
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

/// Tests here reap daemons re-parented to this process: one at a time,
/// so no test reaps another's child.
fn serial() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn become_subreaper() {
    // SAFETY: prctl with integer arguments only.
    let r = unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
    assert_eq!(r, 0, "prctl(PR_SET_CHILD_SUBREAPER)");
}

fn run(cmd: &mut Command) -> Output {
    let shown = format!("{cmd:?}");
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("{shown}: {e}"));
    assert!(
        out.status.success(),
        "{shown} failed ({}):\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Owner, group, mode and link count of every entry below `root` (not
/// following symlinks), by relative path.
fn owners(root: &Path) -> BTreeMap<String, (u32, u32, u32, u64)> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, (u32, u32, u32, u64)>) {
        for e in fs::read_dir(dir).expect("readdir").flatten() {
            let p = e.path();
            let m = fs::symlink_metadata(&p).expect("lstat");
            let rel = p.strip_prefix(root).unwrap().to_string_lossy().into_owned();
            out.insert(rel, (m.uid(), m.gid(), m.mode(), m.nlink()));
            if m.is_dir() {
                walk(root, &p, out);
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(root, root, &mut out);
    out
}

/// `fuse-overlayfs -f -o OPTS MNT`, the oracle for its own options.
struct FuseOverlayfs {
    mnt: PathBuf,
    child: Child,
}

impl FuseOverlayfs {
    fn mount(opts: &str, mnt: &Path) -> FuseOverlayfs {
        let child = Command::new("fuse-overlayfs")
            .arg("-f")
            .arg("-o")
            .arg(opts)
            .arg(mnt)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawning fuse-overlayfs");
        let m = FuseOverlayfs {
            mnt: mnt.to_path_buf(),
            child,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while mount_fstype(mnt).as_deref() != Some("fuse.fuse-overlayfs") {
            assert!(Instant::now() < deadline, "fuse-overlayfs did not mount");
            std::thread::sleep(Duration::from_millis(10));
        }
        m
    }
}

impl Drop for FuseOverlayfs {
    fn drop(&mut self) {
        let _ = nix::mount::umount2(&self.mnt, nix::mount::MntFlags::MNT_DETACH);
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A detached `layerfs -o OPTS MNT` (the engine form); unmounted and its
/// daemon reaped on drop.
struct Detached {
    mnt: PathBuf,
}

impl Detached {
    fn mount(opts: &str, mnt: &Path) -> Result<Detached, String> {
        let out = Command::new(layerfs_bin())
            .arg("-o")
            .arg(opts)
            .arg(mnt)
            .stdin(Stdio::null())
            .output()
            .expect("running layerfs");
        if !out.status.success() {
            return Err(String::from_utf8_lossy(&out.stderr).into_owned());
        }
        Ok(Detached {
            mnt: mnt.to_path_buf(),
        })
    }
}

impl Drop for Detached {
    fn drop(&mut self) {
        unmount_below(&self.mnt);
        reap_layerfs_daemons();
    }
}

fn set_owner(p: &Path, uid: u32, gid: u32, mode: u32) {
    std::os::unix::fs::lchown(p, Some(uid), Some(gid)).expect("chown");
    fs::set_permissions(p, fs::Permissions::from_mode(mode)).expect("chmod");
}

/// A lower layer whose files have owners inside and outside the mapped
/// range.
fn owned_lower(dir: &Path) -> PathBuf {
    let l = dir.join("lower");
    fs::create_dir_all(l.join("d")).unwrap();
    for (name, uid, gid, mode) in [
        ("f", 0, 0, 0o644),
        ("g", 5, 6, 0o600),
        ("h", 70000, 70000, 0o755),
        ("d/x", 1000, 1000, 0o640),
    ] {
        fs::write(l.join(name), name).unwrap();
        set_owner(&l.join(name), uid, gid, mode);
    }
    set_owner(&l.join("d"), 0, 0, 0o755);
    l
}

/// Mount the same lower under fuse-overlayfs and layerfs with `extra`
/// options; both must show the same owners, and store the same owners
/// for what is created and chowned through them.
fn same_as_fuse_overlayfs(extra: &str) {
    let tmp = tempdir("layerfs-engine-");
    let lower = owned_lower(tmp.path());
    let mut shown = Vec::new();
    let mut stored = Vec::new();
    for which in ["fo", "lf"] {
        let base = tmp.path().join(which);
        for d in ["up", "wk", "mnt"] {
            fs::create_dir_all(base.join(d)).unwrap();
        }
        let opts = format!(
            "lowerdir={},upperdir={},workdir={},{extra}",
            lower.display(),
            base.join("up").display(),
            base.join("wk").display()
        );
        let mnt = base.join("mnt");
        let (_fo, _lf) = if which == "fo" {
            (Some(FuseOverlayfs::mount(&opts, &mnt)), None)
        } else {
            let m = Detached::mount(&opts, &mnt).unwrap_or_else(|e| panic!("{opts}: {e}"));
            (None, Some(m))
        };
        let mut seen = owners(&mnt);
        // Link counts of directories differ by design (layerfs shows 1
        // for merged directories); compare them only under static_nlink.
        if !extra.contains("static_nlink") {
            for v in seen.values_mut() {
                v.3 = 0;
            }
        }
        shown.push(seen);
        fs::write(mnt.join("new"), "n").unwrap();
        let _ = std::os::unix::fs::lchown(mnt.join("g"), Some(100007), Some(100008));
        fs::create_dir(mnt.join("nd")).unwrap();
        let _ = std::os::unix::fs::lchown(mnt.join("nd"), Some(100001), None);
        let after = owners(&mnt);
        shown.push(
            ["new", "g", "nd"]
                .iter()
                .map(|n| (n.to_string(), (after[*n].0, after[*n].1, 0, 0)))
                .collect(),
        );
        drop((_fo, _lf));
        let up = owners(&base.join("up"));
        stored.push(
            ["new", "g", "nd"]
                .iter()
                .map(|n| (n.to_string(), (up[*n].0, up[*n].1)))
                .collect::<BTreeMap<_, _>>(),
        );
    }
    assert_eq!(shown[0], shown[2], "{extra}: shown owners differ");
    assert_eq!(shown[1], shown[3], "{extra}: owners after changes differ");
    assert_eq!(stored[0], stored[1], "{extra}: stored owners differ");
}

#[test]
fn id_mappings_and_squash_match_fuse_overlayfs() {
    require_root();
    let _serial = serial();
    become_subreaper();
    for extra in [
        "uidmapping=0:100000:65536,gidmapping=0:100000:65536",
        "uidmapping=:0:100000:65536,gidmapping=:0:100000:65536",
        "uidmapping=0:100000:1:1:200000:65535,gidmapping=0:100000:65536",
        "squash_to_uid=1000,squash_to_gid=100",
        "squash_to_root",
        "squash_to_root,squash_to_uid=7",
        "static_nlink",
    ] {
        same_as_fuse_overlayfs(extra);
    }
}

#[test]
fn engine_command_line_and_bad_options() {
    require_root();
    let _serial = serial();
    become_subreaper();
    let tmp = tempdir("layerfs-engine-");
    let lower = owned_lower(tmp.path());
    for d in ["up", "wk", "mnt"] {
        fs::create_dir_all(tmp.path().join(d)).unwrap();
    }
    let (up, wk, mnt) = (
        tmp.path().join("up"),
        tmp.path().join("wk"),
        tmp.path().join("mnt"),
    );
    // What containers/storage passes, with an SELinux context and the
    // fuse-overlayfs tuning options thrown in; a link as lowerdir, as in
    // overlay/l/.
    symlink(&lower, tmp.path().join("link")).unwrap();
    let opts = format!(
        "lowerdir={},upperdir={},workdir={},,volatile,context=\"system_u:object_r:container_file_t:s0:c1,c2\",threaded=1,max_idle_threads=4,writeback=0,noacl,fsync=0,plugins=,noxattrs=0,",
        tmp.path().join("link").display(),
        up.display(),
        wk.display()
    );
    {
        let _m = Detached::mount(&opts, &mnt).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(mount_fstype(&mnt).as_deref(), Some("fuse.layerfs"));
        assert_eq!(fs::read(mnt.join("d/x")).unwrap(), b"d/x");
        fs::write(mnt.join("w"), "w").unwrap();
        let out = Command::new(layerfs_bin())
            .arg("umount")
            .arg(&mnt)
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        assert!(!is_mounted(&mnt));
    }
    assert_eq!(fs::read(up.join("w")).unwrap(), b"w");
    // Options nobody defines, and malformed ones: one line naming them,
    // nothing mounted.
    fs::remove_dir_all(&wk).unwrap();
    fs::create_dir(&wk).unwrap();
    for (bad, named) in [
        ("nosuchoption", "nosuchoption"),
        ("uidmapping=0:1", "uidmapping"),
        ("xattr_permissions=3", "xattr_permissions"),
        ("squash_to_uid=root", "squash_to_uid"),
        ("fsync=yes", "fsync"),
    ] {
        let o = format!(
            "lowerdir={},upperdir={},workdir={},{bad}",
            lower.display(),
            up.display(),
            wk.display()
        );
        let err = Detached::mount(&o, &mnt)
            .map(|_| ())
            .expect_err("a bad option must be refused");
        assert_eq!(err.trim().lines().count(), 1, "{err}");
        assert!(err.contains(named), "{bad}: {err}");
        assert!(!is_mounted(&mnt));
    }
    let out = Command::new(layerfs_bin())
        .args(["-o", "lowerdir=/nonexistent"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("usage"));
}

fn xattr(p: &Path, name: &str) -> Option<String> {
    let out = Command::new("getfattr")
        .args(["--absolute-names", "--only-values", "-h", "-n", name])
        .arg(p)
        .output()
        .unwrap();
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

fn xattr_names(p: &Path) -> String {
    let out = Command::new("getfattr")
        .args(["--absolute-names", "-h", "-d", "-m", "-"])
        .arg(p)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn xattr_permissions_keep_owners_in_override_xattrs() {
    require_root();
    let _serial = serial();
    become_subreaper();
    let tmp = tempdir("layerfs-engine-");
    let lower = owned_lower(tmp.path());
    for d in ["up", "wk", "mnt", "up2", "wk2"] {
        fs::create_dir_all(tmp.path().join(d)).unwrap();
    }
    let p = |n: &str| tmp.path().join(n);
    let opts = format!(
        "lowerdir={},upperdir={},workdir={},xattr_permissions=2",
        lower.display(),
        p("up").display(),
        p("wk").display()
    );
    {
        let _m = Detached::mount(&opts, &p("mnt")).unwrap_or_else(|e| panic!("{e}"));
        let mnt = p("mnt");
        // The lower has no override xattrs: its real owners show.
        assert_eq!(fs::metadata(mnt.join("g")).unwrap().uid(), 5);
        // chown first: a chown clears setuid, as on any filesystem.
        std::os::unix::fs::chown(mnt.join("g"), Some(33), Some(44)).unwrap();
        fs::set_permissions(mnt.join("g"), fs::Permissions::from_mode(0o4750)).unwrap();
        fs::create_dir(mnt.join("nd")).unwrap();
        std::os::unix::fs::chown(mnt.join("nd"), Some(1234), Some(5678)).unwrap();
        let g = fs::metadata(mnt.join("g")).unwrap();
        assert_eq!((g.uid(), g.gid(), g.mode() & 0o7777), (33, 44, 0o4750));
        let nd = fs::metadata(mnt.join("nd")).unwrap();
        assert_eq!(
            (nd.uid(), nd.gid(), nd.mode() & 0o7777),
            (1234, 5678, 0o755)
        );
        // Never shown through the mount, nor settable.
        assert!(!xattr_names(&mnt.join("g")).contains("override_stat"));
        assert!(xattr(&mnt.join("g"), "user.containers.override_stat").is_none());
        let set = Command::new("setfattr")
            .args(["-n", "user.containers.override_stat", "-v", "0:0:0777"])
            .arg(mnt.join("g"))
            .status()
            .unwrap();
        assert!(!set.success());
    }
    // On disk: the xattrs in the format containers/storage reads; the inode
    // itself keeps the daemon's owner.
    let up = p("up");
    assert_eq!(
        xattr(&up.join("g"), "user.containers.override_stat").as_deref(),
        Some("33:44:4750:file")
    );
    assert_eq!(
        xattr(&up.join("nd"), "user.containers.override_stat").as_deref(),
        Some("1234:5678:0755:dir")
    );
    assert!(xattr(&up, "user.containers.override_stat").is_some());
    assert_eq!(fs::metadata(up.join("nd")).unwrap().uid(), 0);
    // The upper as a lower layer of a plain read-only mount: its root says
    // which xattr it uses, so the owners still show.
    {
        let o = format!("lowerdir={}:{}", up.display(), lower.display());
        let _m = Detached::mount(&o, &p("mnt")).unwrap_or_else(|e| panic!("{e}"));
        let g = fs::metadata(p("mnt").join("g")).unwrap();
        assert_eq!((g.uid(), g.gid(), g.mode() & 0o7777), (33, 44, 0o4750));
    }
    // An upper that already uses fuse-overlayfs's user.* name keeps it.
    let up2 = p("up2");
    fs::write(up2.join("f"), "mine").unwrap();
    for (path, value) in [(&up2, "0:0:0755"), (&up2.join("f"), "7:8:0600")] {
        let ok = Command::new("setfattr")
            .args(["-n", "user.fuseoverlayfs.override_stat", "-v", value])
            .arg(path)
            .status()
            .unwrap();
        assert!(ok.success());
    }
    {
        let o = format!(
            "lowerdir={},upperdir={},workdir={},xattr_permissions=2",
            lower.display(),
            up2.display(),
            p("wk2").display()
        );
        let _m = Detached::mount(&o, &p("mnt")).unwrap_or_else(|e| panic!("{e}"));
        let f = fs::metadata(p("mnt").join("f")).unwrap();
        assert_eq!((f.uid(), f.gid(), f.mode() & 0o7777), (7, 8, 0o600));
        fs::set_permissions(p("mnt").join("f"), fs::Permissions::from_mode(0o640)).unwrap();
    }
    assert_eq!(
        xattr(&up2.join("f"), "user.fuseoverlayfs.override_stat").as_deref(),
        Some("7:8:0640:file")
    );
    assert!(xattr(&up2.join("f"), "user.containers.override_stat").is_none());
}

#[path = "engine/containers.rs"]
mod containers;
