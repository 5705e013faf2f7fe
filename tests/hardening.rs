//! The ways a mount ends or its upper stops taking writes (needs root):
//! unmounting while busy, SIGHUP, a backing filesystem remounted read-only,
//! a backing filesystem that fails with EIO (an ext4 image shut down).

mod common;

use std::fs;
use std::io::{Read, Seek};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::tmpfs::Tmpfs;
use common::{LayerfsMount, is_mounted};

/// A lower holding `f`, and an empty upper and work dir under `back`.
struct Layers {
    lower: PathBuf,
    upper: PathBuf,
    work: PathBuf,
}

impl Layers {
    fn new(root: &Path, back: &Path) -> Layers {
        let l = Layers {
            lower: root.join("lower"),
            upper: back.join("upper"),
            work: back.join("work"),
        };
        for d in [&l.lower, &l.upper, &l.work] {
            fs::create_dir_all(d).expect("mkdir");
        }
        fs::write(l.lower.join("f"), b"lower data").expect("write lower file");
        fs::write(l.lower.join("g"), b"another lower file").expect("write lower file");
        l
    }

    fn mount(&self) -> LayerfsMount {
        let opts = format!(
            "upperdir={},workdir={}",
            common::escape_opt_path(&self.upper),
            common::escape_opt_path(&self.work)
        );
        LayerfsMount::mount(std::slice::from_ref(&self.lower), &opts)
    }

    /// What the fault tests write before the fault: a new file, a
    /// copied-up lower file and a directory.
    fn write_before(m: &Path) {
        fs::write(m.join("new"), b"written before").expect("create in the upper");
        fs::write(m.join("f"), b"copied up").expect("copy-up");
        fs::create_dir(m.join("d")).expect("mkdir");
    }

    /// After an unmount: nothing left in the work dir.
    fn assert_work_dir_empty(&self) {
        let leftover: Vec<_> = fs::read_dir(self.work.join("work"))
            .map(|d| d.filter_map(|e| e.ok()).map(|e| e.file_name()).collect())
            .unwrap_or_default();
        assert!(leftover.is_empty(), "the work dir kept {leftover:?}");
    }
}

fn layerfs_umount(args: &[&str], mnt: &Path) -> (bool, String) {
    let out = Command::new(common::layerfs_bin())
        .arg("umount")
        .args(args)
        .arg(mnt)
        .output()
        .expect("running layerfs umount");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn wait_until(what: &str, limit: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !done() {
        assert!(Instant::now() < deadline, "{what}: not within {limit:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn unmounting_a_busy_mount_is_a_clear_error_and_lazy_detaches() {
    common::require_root();
    let tmp = common::tempdir("layerfs-busy-");
    let layers = Layers::new(tmp.path(), tmp.path());
    let mount = layers.mount();
    let m = mount.path().to_path_buf();
    let mut open = fs::File::open(m.join("f")).expect("open through the mount");

    let (ok, stderr) = layerfs_umount(&[], &m);
    assert!(!ok, "umount of a busy mount succeeded");
    assert_eq!(stderr.lines().count(), 1, "not one line: {stderr}");
    assert!(
        stderr.contains("busy") && stderr.contains("umount -l"),
        "unclear: {stderr}"
    );
    assert!(is_mounted(&m), "a refused umount took the mount away");
    assert_eq!(
        fs::read(m.join("g")).expect("read after a refused umount"),
        b"another lower file"
    );

    let (ok, stderr) = layerfs_umount(&["-l"], &m);
    assert!(ok, "umount -l failed: {stderr}");
    assert!(!is_mounted(&m), "still mounted after umount -l");
    // What was open stays usable until closed.
    let mut data = Vec::new();
    open.rewind().expect("seek");
    open.read_to_end(&mut data)
        .expect("read an fd opened before umount -l");
    assert_eq!(data, b"lower data");
    drop(open);
    // The last user gone, the daemon ends by itself, cleanly.
    let exit = mount.unmount();
    exit.assert_clean();
}

#[test]
fn sighup_detaches_a_busy_mount_and_the_daemon_ends_when_it_is_free() {
    common::require_root();
    let tmp = common::tempdir("layerfs-hup-");
    let layers = Layers::new(tmp.path(), tmp.path());
    let mount = layers.mount();
    let m = mount.path().to_path_buf();
    // A process living inside the mount keeps it busy.
    let mut inside = Command::new("sleep")
        .arg("60")
        .current_dir(&m)
        .stdin(Stdio::null())
        .spawn()
        .expect("spawning sleep inside the mount");
    let daemon = nix::unistd::Pid::from_raw(mount.pid().expect("daemon pid") as i32);
    nix::sys::signal::kill(daemon, nix::sys::signal::Signal::SIGHUP).expect("SIGHUP");
    wait_until("detached after SIGHUP", Duration::from_secs(5), || {
        !is_mounted(&m)
    });
    // Our own child, by pid.
    let _ = inside.kill();
    let _ = inside.wait();
    let exit = mount.unmount();
    exit.assert_clean();
}

/// `r` failed with `errno`.
fn assert_errno<T: std::fmt::Debug>(errno: i32, what: &str, r: std::io::Result<T>) {
    match r {
        Err(e) if e.raw_os_error() == Some(errno) => {}
        other => panic!(
            "{what}: {other:?}, expected {}",
            std::io::Error::from_raw_os_error(errno)
        ),
    }
}

fn assert_erofs<T: std::fmt::Debug>(what: &str, r: std::io::Result<T>) {
    assert_errno(libc::EROFS, &format!("{what} on a read-only upper"), r);
}

#[test]
fn an_upper_on_a_read_only_filesystem_fails_writes_and_keeps_serving_reads() {
    common::require_root();
    let tmp = common::tempdir("layerfs-rofs-");
    let back = Tmpfs::mount(&tmp.path().join("back"), "size=16m");
    let layers = Layers::new(tmp.path(), back.path());
    let mount = layers.mount();
    let m = mount.path().to_path_buf();
    Layers::write_before(&m);

    back.remount(true);
    assert_eq!(
        fs::read(m.join("new")).expect("read upper file"),
        b"written before"
    );
    assert_eq!(
        fs::read(m.join("f")).expect("read copied-up file"),
        b"copied up"
    );
    assert_eq!(
        fs::read(m.join("g")).expect("read lower file"),
        b"another lower file"
    );
    assert_erofs("create", fs::write(m.join("other"), b"x"));
    assert_erofs("write", fs::write(m.join("new"), b"overwrite"));
    assert_erofs("mkdir", fs::create_dir(m.join("e")));
    assert_erofs("unlink", fs::remove_file(m.join("new")));
    assert_erofs("unlink of a lower file", fs::remove_file(m.join("g")));
    assert_erofs(
        "chmod of a lower file (copy-up)",
        fs::set_permissions(m.join("g"), fs::Permissions::from_mode(0o600)),
    );
    assert_erofs("rename", fs::rename(m.join("new"), m.join("renamed")));
    let names: Vec<_> = fs::read_dir(&m)
        .expect("readdir")
        .map(|e| e.expect("dirent").file_name())
        .collect();
    assert_eq!(names.len(), 4, "listing on a read-only upper: {names:?}");

    // Writable again: nothing was lost and writes work.
    back.remount(false);
    fs::write(m.join("other"), b"after").expect("create after remount rw");
    fs::set_permissions(m.join("g"), fs::Permissions::from_mode(0o600))
        .expect("copy-up after remount rw");
    let exit = mount.unmount();
    exit.assert_clean();
    assert_eq!(
        fs::read(layers.upper.join("new")).expect("upper new"),
        b"written before"
    );
    assert_eq!(
        fs::read(layers.upper.join("f")).expect("upper f"),
        b"copied up"
    );
    assert_eq!(
        fs::read(layers.upper.join("other")).expect("upper other"),
        b"after"
    );
    assert!(layers.upper.join("d").is_dir());
    layers.assert_work_dir_empty();
}

/// An ext4 filesystem in an image file, loop-mounted at `dir`; unmounted
/// (and its loop device freed) when dropped.
struct Ext4Image {
    image: PathBuf,
    dir: PathBuf,
}

impl Ext4Image {
    fn new(image: &Path, dir: &Path) -> Ext4Image {
        fs::File::create(image)
            .and_then(|f| f.set_len(64 << 20))
            .expect("image file");
        let out = Command::new("mkfs.ext4")
            .args(["-q", "-F"])
            .arg(image)
            .output()
            .expect("running mkfs.ext4");
        assert!(out.status.success(), "mkfs.ext4: {out:?}");
        fs::create_dir_all(dir).expect("mount point");
        let fs = Ext4Image {
            image: image.to_path_buf(),
            dir: dir.to_path_buf(),
        };
        fs.mount();
        fs
    }

    fn mount(&self) {
        let out = Command::new("mount")
            .args(["-t", "ext4", "-o", "loop"])
            .arg(&self.image)
            .arg(&self.dir)
            .output()
            .expect("running mount");
        assert!(out.status.success(), "mount -o loop: {out:?}");
    }

    fn unmount(&self) {
        if is_mounted(&self.dir) {
            let _ = nix::mount::umount2(&self.dir, nix::mount::MntFlags::empty());
        }
    }
}

impl Drop for Ext4Image {
    fn drop(&mut self) {
        self.unmount();
        if is_mounted(&self.dir) {
            let _ = nix::mount::umount2(&self.dir, nix::mount::MntFlags::MNT_DETACH);
        }
    }
}

fn assert_eio<T: std::fmt::Debug>(what: &str, r: std::io::Result<T>) {
    assert_errno(libc::EIO, &format!("{what} on a failed upper"), r);
}

#[test]
fn an_upper_whose_filesystem_fails_with_eio_keeps_serving_lower_reads_and_loses_nothing() {
    common::require_root();
    let tmp = common::tempdir("layerfs-eio-");
    let back = Ext4Image::new(&tmp.path().join("upper.img"), &tmp.path().join("back"));
    let layers = Layers::new(tmp.path(), &back.dir);
    let mount = layers.mount();
    let m = mount.path().to_path_buf();
    Layers::write_before(&m);
    // What is written is what reached the disk: sync the upper's filesystem.
    fs::File::open(m.join("new"))
        .and_then(|f| f.sync_all())
        .expect("fsync through the mount");
    nix::unistd::syncfs(fs::File::open(&back.dir).expect("open the upper fs"))
        .expect("syncfs of the upper");

    common::sys::shut_down_filesystem(&back.dir).expect("FS_IOC_SHUTDOWN on the ext4 image");
    // The lower is on another filesystem: it still reads.
    assert_eq!(
        fs::read(m.join("g")).expect("read of a lower file"),
        b"another lower file"
    );
    // Everything that needs the upper fails with EIO, and only that (the
    // kernel's overlayfs answers each of these calls the same way).
    assert_eio("create", fs::write(m.join("other"), b"x"));
    assert_eio("mkdir", fs::create_dir(m.join("e")));
    assert_eio(
        "chmod of a lower file (copy-up)",
        fs::set_permissions(m.join("g"), fs::Permissions::from_mode(0o600)),
    );
    assert_eio("unlink of an upper file", fs::remove_file(m.join("new")));
    assert_eio("read of an upper file", fs::read(m.join("new")));
    // The lower file is still whole after the refused copy-up.
    assert_eq!(
        fs::read(m.join("g")).expect("read of a lower file after a failed copy-up"),
        b"another lower file"
    );
    let exit = mount.unmount();
    exit.assert_clean();

    // The filesystem back (a new mount clears the shutdown): nothing that
    // was written is lost, and the mount works again.
    back.unmount();
    back.mount();
    let mount = layers.mount();
    let m = mount.path().to_path_buf();
    assert_eq!(fs::read(m.join("new")).expect("new"), b"written before");
    assert_eq!(fs::read(m.join("f")).expect("f"), b"copied up");
    assert!(m.join("d").is_dir());
    assert_eq!(fs::read(m.join("g")).expect("g"), b"another lower file");
    fs::write(m.join("other"), b"after").expect("create after the repair");
    let exit = mount.unmount();
    exit.assert_clean();
    layers.assert_work_dir_empty();
}
