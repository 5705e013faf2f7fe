//! buildah and podman with `mount_program = layerfs`: a base image made
//! from busybox, a container that creates, modifies, deletes and renames,
//! its commit pushed to an OCI layout (whose last layer must hold the
//! changes and `.wh.` whiteouts), and the committed image run by podman.

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use super::{become_subreaper, reap_layerfs_daemons, run, serial, stdout, unmount_below};
use crate::common::{layerfs_bin, require_root, tempdir};

/// A private containers/storage (graph root, run root, storage.conf with
/// layerfs as mount_program) and everything made in it, removed on drop.
struct Engine {
    root: PathBuf,
    conf: PathBuf,
}

impl Engine {
    fn new(root: &Path) -> Engine {
        Engine::with_overlay_options(root, "")
    }

    /// `extra` goes into `[storage.options.overlay]`.
    fn with_overlay_options(root: &Path, extra: &str) -> Engine {
        // A copy of the binary, so the store names a path only it uses.
        let bin = root.join("layerfs");
        fs::copy(layerfs_bin(), &bin).expect("copying layerfs");
        let conf = root.join("storage.conf");
        fs::write(
            &conf,
            format!(
                "[storage]\ndriver = \"overlay\"\ngraphroot = \"{0}/graph\"\nrunroot = \"{0}/run\"\n\
                 [storage.options.overlay]\nmount_program = \"{1}\"\n{2}\n",
                root.display(),
                bin.display(),
                extra
            ),
        )
        .unwrap();
        Engine {
            root: root.to_path_buf(),
            conf,
        }
    }

    fn buildah(&self) -> Command {
        let mut c = Command::new("buildah");
        c.env("CONTAINERS_STORAGE_CONF", &self.conf)
            .env("TMPDIR", self.root.join("tmp"));
        c
    }

    fn podman(&self) -> Command {
        let mut c = Command::new("podman");
        c.env("CONTAINERS_STORAGE_CONF", &self.conf)
            .env("TMPDIR", self.root.join("tmp"))
            .args(["--cgroup-manager", "cgroupfs", "--events-backend", "file"])
            .args(["--runtime", "runc"])
            .arg("--tmpdir")
            .arg(self.root.join("libpod"));
        c
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        for args in [&["rm", "--all"][..], &["rmi", "--all", "--force"][..]] {
            let _ = self.buildah().args(args).output();
        }
        let _ = self.podman().args(["rm", "--all", "--force"]).output();
        unmount_below(&self.root);
        reap_layerfs_daemons();
    }
}

/// A busybox root: /bin/busybox, applet links, and a few files to change.
fn base_tree(dir: &Path) {
    fs::create_dir_all(dir.join("bin")).unwrap();
    fs::copy("/bin/busybox", dir.join("bin/busybox")).expect("busybox-static");
    for applet in [
        "sh", "ls", "cat", "echo", "mkdir", "rm", "mv", "test", "stat",
    ] {
        std::os::unix::fs::symlink("busybox", dir.join("bin").join(applet)).unwrap();
    }
    fs::create_dir_all(dir.join("etc")).unwrap();
    fs::write(dir.join("etc/conf"), "v1\n").unwrap();
    fs::write(dir.join("gone"), "bye\n").unwrap();
    fs::create_dir_all(dir.join("gonedir/deep")).unwrap();
    fs::write(dir.join("gonedir/deep/x"), "x\n").unwrap();
    fs::create_dir_all(dir.join("olddir")).unwrap();
    fs::write(dir.join("olddir/file"), "moved\n").unwrap();
}

/// The entries of the top layer of an OCI layout's only image.
fn top_layer_entries(layout: &Path) -> Vec<String> {
    let json = |p: PathBuf| -> String {
        fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
    };
    let blob = |digest: &str| {
        layout
            .join("blobs/sha256")
            .join(digest.trim_start_matches("sha256:"))
    };
    let digests = |text: &str, key: &str| -> Vec<String> {
        // Every "digest" after `key`: enough JSON for an index and a manifest.
        let after = text.split_once(key).map(|(_, a)| a).unwrap_or("");
        after
            .split("\"digest\":\"")
            .skip(1)
            .filter_map(|s| s.split('"').next())
            .map(str::to_string)
            .collect()
    };
    let index = json(layout.join("index.json"));
    let manifest = json(blob(&digests(&index, "\"manifests\"")[0]));
    let layers = digests(&manifest, "\"layers\"");
    let top = blob(layers.last().expect("a layer"));
    let out = run(Command::new("tar").arg("-tf").arg(&top));
    stdout(&out)
        .lines()
        .map(|l| l.trim_start_matches("./").trim_end_matches('/').to_string())
        .collect()
}

#[test]
fn buildah_and_podman_with_layerfs_as_mount_program() {
    require_root();
    let _serial = serial();
    become_subreaper();
    let tmp = tempdir("layerfs-engine-ctr-");
    for d in ["tmp", "libpod", "base"] {
        fs::create_dir_all(tmp.path().join(d)).unwrap();
    }
    let engine = Engine::new(tmp.path());
    base_tree(&tmp.path().join("base"));

    // The base image, made from scratch.
    let ctr = stdout(&run(engine.buildah().args(["from", "scratch"])));
    run(engine
        .buildah()
        .args(["copy", &ctr])
        .arg(tmp.path().join("base"))
        .arg("/"));
    run(engine.buildah().args(["config", "--cmd", "/bin/sh", &ctr]));
    run(engine
        .buildah()
        .args(["commit", "-q", &ctr, "layerfs-test-base:1"]));
    run(engine.buildah().args(["rm", &ctr]));

    // A container on it, mounted by layerfs, changed by a script.
    let ctr = stdout(&run(engine.buildah().args(["from", "layerfs-test-base:1"])));
    let mnt = stdout(&run(engine.buildah().args(["mount", &ctr])));
    assert_eq!(
        crate::common::mount_fstype(Path::new(&mnt)).as_deref(),
        Some("fuse.layerfs"),
        "buildah mounted {mnt} without layerfs"
    );
    let script = "set -e; echo v2 >> /etc/conf; rm /gone; rm -r /gonedir; mv /olddir /newdir; \
                  mkdir -p /data/sub; echo one > /data/a; echo two > /data/sub/b; \
                  cat /etc/conf /newdir/file; test ! -e /gone";
    let out =
        run(engine
            .buildah()
            .args(["run", "--runtime", "runc", &ctr, "--", "sh", "-c", script]));
    assert_eq!(stdout(&out), "v1\nv2\nmoved");
    // What the container wrote is in its mount, as seen from the host.
    assert_eq!(
        fs::read_to_string(Path::new(&mnt).join("data/a")).unwrap(),
        "one\n"
    );
    assert!(!Path::new(&mnt).join("gone").exists());
    run(engine.buildah().args(["umount", &ctr]));
    run(engine
        .buildah()
        .args(["commit", "-q", &ctr, "layerfs-test-derived:1"]));

    // The committed layer holds the changes and OCI whiteouts.
    let layout = tmp.path().join("layout");
    run(engine
        .buildah()
        .args(["push", "-q", "layerfs-test-derived:1"])
        .arg(format!("oci:{}", layout.display())));
    let entries = top_layer_entries(&layout);
    for want in [
        "etc/conf",
        ".wh.gone",
        ".wh.gonedir",
        ".wh.olddir",
        "newdir/file",
        "data/a",
        "data/sub/b",
    ] {
        assert!(
            entries.iter().any(|e| e == want),
            "{want} missing from the committed layer: {entries:?}"
        );
    }
    for never in ["gone", "gonedir/deep/x", "olddir/file", "bin/busybox"] {
        assert!(
            !entries.iter().any(|e| e == never),
            "{never} must not be in the committed layer: {entries:?}"
        );
    }

    // podman runs the committed image, again through layerfs.
    let out = run(engine.podman().args([
        "run",
        "--rm",
        "--net",
        "none",
        "--ulimit",
        "nofile=1024:1024",
        "--ulimit",
        "nproc=1024:1024",
        "layerfs-test-derived:1",
        "sh",
        "-c",
        "cat /etc/conf /newdir/file /data/a /data/sub/b; test ! -e /gone; test ! -e /olddir; test ! -e /gonedir; echo ok",
    ]));
    assert_eq!(stdout(&out), "v1\nv2\nmoved\none\ntwo\nok");
}

#[test]
fn buildah_uidmap_shows_what_fuse_overlayfs_shows() {
    require_root();
    let _serial = serial();
    become_subreaper();
    let tmp = tempdir("layerfs-engine-map-");
    for d in ["tmp", "libpod", "base"] {
        fs::create_dir_all(tmp.path().join(d)).unwrap();
    }
    let engine = Engine::new(tmp.path());
    base_tree(&tmp.path().join("base"));
    let ctr = stdout(&run(engine.buildah().args(["from", "scratch"])));
    run(engine
        .buildah()
        .args(["copy", &ctr])
        .arg(tmp.path().join("base"))
        .arg("/"));
    run(engine
        .buildah()
        .args(["commit", "-q", &ctr, "layerfs-test-base:1"]));
    let ctr = stdout(&run(engine.buildah().args([
        "from",
        "--userns-uid-map",
        "0:100000:65536",
        "--userns-gid-map",
        "0:100000:65536",
        "layerfs-test-base:1",
    ])));
    // (`buildah run` cannot be used here: this containers/storage also
    // id-maps the lower layers it hands a mount_program, so the image's
    // directories show unmapped under fuse-overlayfs and layerfs alike.)
    // Made through the mount by the container's root (host id 100000):
    let mnt = PathBuf::from(stdout(&run(engine.buildah().args(["mount", &ctr]))));
    fs::write(mnt.join("etc/new"), "new\n").unwrap();
    fs::create_dir(mnt.join("made")).unwrap();
    for p in [mnt.join("etc/new"), mnt.join("made")] {
        std::os::unix::fs::lchown(&p, Some(100000), Some(100000)).unwrap();
    }
    run(engine.buildah().args(["umount", &ctr]));
    // Kept on disk with the container's ids.
    let diff = mnt.parent().unwrap().join("diff");
    for p in ["etc/new", "made"] {
        let m = fs::symlink_metadata(diff.join(p)).unwrap();
        assert_eq!((m.uid(), m.gid()), (0, 0), "{p} on disk");
    }
    // The same container mounted by layerfs and by fuse-overlayfs shows
    // the same owners on the host.
    let mut seen = Vec::new();
    for program in [
        tmp.path().join("layerfs"),
        PathBuf::from("/usr/bin/fuse-overlayfs"),
    ] {
        let conf = fs::read_to_string(&engine.conf).unwrap();
        let line = conf
            .lines()
            .find(|l| l.starts_with("mount_program"))
            .unwrap()
            .to_string();
        fs::write(
            &engine.conf,
            conf.replace(&line, &format!("mount_program = \"{}\"", program.display())),
        )
        .unwrap();
        let mnt = stdout(&run(engine.buildah().args(["mount", &ctr])));
        seen.push(super::owners(Path::new(&mnt)));
        run(engine.buildah().args(["umount", &ctr]));
    }
    for v in seen.iter_mut().flat_map(|m| m.values_mut()) {
        v.3 = 0; // link counts of merged directories differ by design
    }
    assert_eq!(seen[0], seen[1], "layerfs and fuse-overlayfs disagree");
    // And on disk the upper keeps container ids.
    assert!(seen[0].get("etc/new").is_some_and(|o| o.0 == 100000));
}

#[test]
fn force_mask_owners_and_modes_come_from_override_xattrs() {
    require_root();
    let _serial = serial();
    become_subreaper();
    let tmp = tempdir("layerfs-engine-mask-");
    for d in ["tmp", "libpod", "base"] {
        fs::create_dir_all(tmp.path().join(d)).unwrap();
    }
    let engine = Engine::with_overlay_options(tmp.path(), "force_mask = \"shared\"");
    base_tree(&tmp.path().join("base"));
    let secret = tmp.path().join("base/etc/secret");
    fs::write(&secret, "s\n").unwrap();
    fs::set_permissions(&secret, fs::Permissions::from_mode(0o600)).unwrap();
    let ctr = stdout(&run(engine.buildah().args(["from", "scratch"])));
    run(engine
        .buildah()
        .args(["copy", "--chown", "7:8", &ctr])
        .arg(tmp.path().join("base"))
        .arg("/"));
    run(engine
        .buildah()
        .args(["commit", "-q", &ctr, "layerfs-test-mask:1"]));
    let ctr = stdout(&run(engine.buildah().args(["from", "layerfs-test-mask:1"])));
    let out = run(engine.buildah().args([
        "run",
        "--runtime",
        "runc",
        &ctr,
        "--",
        "sh",
        "-c",
        "stat -c '%u:%g %a %n' /etc/secret; echo n > /new; chmod 640 /new; \
         busybox chown 9:10 /new; stat -c '%u:%g %a %n' /new",
    ]));
    // Not the 0755 root:root that force_mask leaves on the inodes.
    assert_eq!(stdout(&out), "7:8 600 /etc/secret\n9:10 640 /new");
    // On disk: the masked inode and the xattr that holds the truth.
    let mnt = PathBuf::from(stdout(&run(engine.buildah().args(["mount", &ctr]))));
    let diff = mnt.parent().unwrap().join("diff");
    let new = fs::symlink_metadata(diff.join("new")).unwrap();
    // Created 0644 (umask 022), owned by the daemon; chmod and chown
    // went to the xattr only.
    assert_eq!((new.uid(), new.mode() & 0o777), (0, 0o644));
    let value = Command::new("getfattr")
        .args(["--only-values", "-n", "user.containers.override_stat"])
        .arg(diff.join("new"))
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&value.stdout), "9:10:0640:file");
    run(engine.buildah().args(["umount", &ctr]));
}
