//! `layerfs commit`, end to end (needs root).
//!
//! A two-layer image with busybox is built at test time and imported; a
//! container on it is mounted and changed (create, modify, delete a lower
//! file and a lower directory, rename lower directories, hard links new
//! and to a lower group, xattrs, chmod/chown, symlink, fifo), unmounted and
//! committed. The committed image, mounted read-only, must show the very
//! tree the container showed; exported and unpacked by umoci, too. Every
//! compression gives the same tree. `diff CONTAINER` prints what `diff
//! UPPER --lower ... --work` prints. Bad input is one line and changes
//! nothing in the store.

mod common;

use std::ffi::OsStr;
use std::fs;
use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::{Path, PathBuf};
use std::process::Command;

use common::images::*;
use common::{DiffOptions, Tree, diff_with, snapshot};
use serde_json::Value;

/// The base image's two layers, as directories.
fn base_layers(base: &Path) -> [PathBuf; 2] {
    let l1 = base.join("l1");
    fs::create_dir_all(l1.join("bin")).unwrap();
    fs::copy("/bin/busybox", l1.join("bin/busybox")).unwrap();
    symlink("busybox", l1.join("bin/sh")).unwrap();
    symlink("busybox", l1.join("bin/ls")).unwrap();
    write(&l1.join("etc/passwd"), b"root:x:0:0::/root:/bin/sh\n");
    write(&l1.join("etc/group"), b"root:x:0:\n");
    write(&l1.join("etc/hosts"), b"127.0.0.1 localhost\n");
    common::sys::lsetxattr(&l1.join("etc/hosts"), b"user.origin", b"base").unwrap();
    write(&l1.join("etc/motd"), b"hello\n");
    write(&l1.join("usr/share/doc/pkg/README"), b"read me\n");
    write(&l1.join("usr/share/doc/pkg/sub/deep"), b"deep\n");
    write(&l1.join("usr/lib/app/mod.so"), &[9u8; 3000]);
    write(&l1.join("var/cache/a"), &[1u8; 100]);
    write(&l1.join("var/cache/sub/b"), &[2u8; 200]);
    write(&l1.join("srv/data"), b"data\n");
    write(&l1.join("hl/one"), b"linked\n");
    fs::hard_link(l1.join("hl/one"), l1.join("hl/two")).unwrap();
    write(&l1.join("home/app/.profile"), b"export A=1\n");
    chown(&l1.join("home/app/.profile"), 1000, 1000);
    chown(&l1.join("home/app"), 1000, 1000);
    fs::set_permissions(l1.join("home/app"), fs::Permissions::from_mode(0o750)).unwrap();
    write(&l1.join("opt/f"), b"mode\n");
    fs::set_permissions(l1.join("opt/f"), fs::Permissions::from_mode(0o644)).unwrap();
    fs::create_dir_all(l1.join("tmp")).unwrap();
    fs::set_permissions(l1.join("tmp"), fs::Permissions::from_mode(0o1777)).unwrap();

    let l2 = base.join("l2");
    write(&l2.join("etc/.wh.motd"), b"");
    write(&l2.join("etc/os-release"), b"NAME=test\n");
    write(&l2.join("usr/lib/app/.wh..wh..opq"), b"");
    write(&l2.join("usr/lib/app/new.so"), &[8u8; 500]);
    for (l, time) in [
        (&l1, "2024-05-01 12:00:00.25"),
        (&l2, "2024-05-02 12:00:00.5"),
    ] {
        run(Command::new("find")
            .arg(l)
            .args(["-exec", "touch", "-h", "-d", time, "{}", "+"]));
    }
    [l1, l2]
}

/// A temp dir with the base image imported as `base:1` into `store/`.
struct Fixture {
    dir: tempfile::TempDir,
}

impl Fixture {
    fn new(prefix: &str) -> Fixture {
        common::require_root();
        let dir = common::tempdir(prefix);
        let [l1, l2] = base_layers(dir.path());
        let (t1, t2) = (tar_of(&l1, false), tar_of(&l2, false));
        let spec = ImageSpec {
            layers: vec![(&t1, Comp::Gzip), (&t2, Comp::Gzip)],
            arch: "amd64",
            tag: "1",
        };
        write_layout(&dir.path().join("oci"), &[spec], false);
        let fx = Fixture { dir };
        let out = import(&fx.store(), &fx.path("oci"), "base:1");
        assert!(out.status.success(), "{}", stderr_of(&out));
        fx
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    fn store(&self) -> PathBuf {
        self.path("store")
    }

    fn layerfs(&self, args: &[&str]) -> std::process::Output {
        let args: Vec<&OsStr> = args.iter().map(OsStr::new).collect();
        layerfs(&self.store(), &args)
    }

    fn ok(&self, args: &[&str]) -> String {
        let out = self.layerfs(args);
        assert!(
            out.status.success(),
            "layerfs {args:?}: {}",
            stderr_of(&out)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

/// What the container does.
fn make_changes(mnt: &Path) {
    let p = |r: &str| mnt.join(r);
    write(&p("new/dir/file"), b"hello\n");
    symlink("dir/file", p("new/ln")).unwrap();
    nix::unistd::mkfifo(
        &p("new/fifo"),
        nix::sys::stat::Mode::from_bits_truncate(0o640),
    )
    .unwrap();
    write(&p("new/h1"), b"new hard link group\n");
    fs::hard_link(p("new/h1"), p("new/h2")).unwrap();
    common::sys::lsetxattr(&p("new/h1"), b"user.note", b"\x00bin\xff").unwrap();
    let mut passwd = fs::read(p("etc/passwd")).unwrap();
    passwd.extend_from_slice(b"app:x:1000:1000::/home/app:/bin/sh\n");
    fs::write(p("etc/passwd"), passwd).unwrap();
    common::sys::lsetxattr(&p("etc/group"), b"user.changed", b"yes").unwrap();
    fs::remove_file(p("srv/data")).unwrap();
    fs::remove_dir_all(p("var/cache")).unwrap();
    // A relative and an absolute redirect, and a change inside one.
    fs::rename(p("usr/share/doc/pkg"), p("usr/share/doc/pkg2")).unwrap();
    write(&p("usr/share/doc/pkg2/sub/added"), b"added\n");
    fs::rename(p("home/app"), p("app-home")).unwrap();
    // A lower hard-link group grows by a name.
    fs::hard_link(p("hl/one"), p("hl/three")).unwrap();
    fs::set_permissions(p("opt/f"), fs::Permissions::from_mode(0o600)).unwrap();
    chown(&p("opt/f"), 7, 8);
}

/// The tree without its root (whose attributes are the top layer
/// directory's own).
fn without_root(mut t: Tree) -> Tree {
    t.entries.remove(&Vec::new());
    t
}

fn same_tree(what: &str, expected: &Tree, actual: &Tree) {
    let opts = DiffOptions {
        dir_sizes: false,
        ..DiffOptions::default()
    };
    let problems = diff_with(expected, actual, &opts);
    assert!(
        problems.is_empty(),
        "{what} differs from the container:\n{}",
        problems.join("\n")
    );
}

fn mounted_tree(store: &Path, image: &str) -> Tree {
    let m = mount_image(store, image, None);
    let t = without_root(snapshot(m.path()));
    let exit = m.unmount();
    assert!(exit.status.is_some_and(|s| s.success()), "{}", exit.log);
    t
}

#[test]
fn commit_mount_export_and_diff() {
    let fx = Fixture::new("layerfs-commit-");
    let store = fx.store();
    let container = {
        let m = mount_image(&store, "base:1", Some("c1"));
        make_changes(m.path());
        let t = without_root(snapshot(m.path()));
        // Committing a mounted container is refused, and changes nothing.
        let before = listing(&store);
        let out = fx.layerfs(&["commit", "c1", "--image", "refused:1"]);
        assert!(!out.status.success());
        let err = stderr_of(&out);
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(
            err.contains("mounted at") && err.contains("unmount it first"),
            "{err}"
        );
        assert_eq!(listing(&store), before);
        let exit = m.unmount();
        assert!(exit.status.is_some_and(|s| s.success()), "{}", exit.log);
        t
    };
    assert!(container.get("new/h2").is_some() && container.get("app-home/.profile").is_some());
    assert!(
        container.hardlinks.iter().any(|g| g.len() == 3),
        "the lower group should show three names: {:?}",
        container.hardlinks
    );

    // diff CONTAINER is diff UPPER --lower ... --work of the same layer.
    let s = layerfs::image::Store::open(&store).unwrap();
    let base = s.resolve_image("base:1").unwrap();
    let c = s.container("c1").unwrap().unwrap();
    let mut args: Vec<&OsStr> = vec!["diff".as_ref(), c.upper.as_os_str()];
    let lowers = base.lowerdirs();
    for l in &lowers {
        args.push("--lower".as_ref());
        args.push(l.as_os_str());
    }
    args.push("--work".as_ref());
    args.push(c.work.as_os_str());
    let by_dirs = layerfs_ok(&store, &args);
    let by_name = fx.ok(&["diff", "c1"]);
    assert_eq!(by_name, by_dirs);
    for line in [
        "A /app-home",
        "A /app-home/.profile",
        "C /etc/passwd",
        "A /hl/three",
        "A /new/h2",
        "D /home/app",
        "D /srv/data",
        "D /usr/share/doc/pkg",
        "A /usr/share/doc/pkg2/sub/added",
        "D /var/cache",
    ] {
        assert!(
            by_name.lines().any(|l| l == line),
            "{line} not in:\n{by_name}"
        );
    }
    let json: Value = serde_json::from_str(&fx.ok(&["diff", "c1", "--json"])).unwrap();
    assert_eq!(json.as_array().unwrap().len(), by_name.lines().count());
    assert!(
        json.as_array()
            .unwrap()
            .contains(&serde_json::json!({"kind": "D", "path": "/var/cache"}))
    );

    // Commit: the new image shows what the container showed.
    let out = fx.layerfs(&["commit", "c1", "--image", "committed:1", "-m", "my change"]);
    assert!(out.status.success(), "{}", stderr_of(&out));
    let id = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert!(id.starts_with("sha256:") && id.len() == 71, "{id}");
    let img = s.resolve_image("committed:1").unwrap();
    assert_eq!(img.record.id.as_str(), id);
    assert_eq!(img.layer_dirs.len(), 3);
    assert_eq!(&img.layer_dirs[..2], &base.layer_dirs[..]);
    assert_eq!(
        img.manifest.layers[2].media_type,
        "application/vnd.oci.image.layer.v1.tar+gzip"
    );
    // Every field of the base config is kept.
    assert_eq!(img.config.config, base.config.config);
    assert_eq!(img.config.history.len(), base.config.history.len() + 1);
    let h = img.config.history.last().unwrap();
    assert_eq!(h.created_by.as_deref(), Some("layerfs commit"));
    assert_eq!(h.comment.as_deref(), Some("my change"));
    let committed = mounted_tree(&store, "committed:1");
    same_tree("the committed image", &container, &committed);
    assert!(fs::read_dir(store.join("tmp")).unwrap().next().is_none());

    // history IMAGE: the new layer on top, with its entry.
    let hist: Value = serde_json::from_str(&fx.ok(&["history", "committed:1", "--json"])).unwrap();
    let top = &hist[0];
    assert_eq!(top["created_by"], "layerfs commit");
    assert_eq!(top["comment"], "my change");
    assert_eq!(top["diff_id"], img.config.rootfs.diff_ids[2].as_str());
    assert_eq!(top["layer"], 0);
    assert_eq!(hist.as_array().unwrap().len(), 3);

    // Exported and unpacked by umoci: the same tree.
    let tar = fx.path("committed.tar");
    fx.ok(&["export", "committed:1", "-o", tar.to_str().unwrap()]);
    let layout = fx.path("exported");
    fs::create_dir(&layout).unwrap();
    run(Command::new("tar")
        .arg("-xf")
        .arg(&tar)
        .arg("-C")
        .arg(&layout));
    let bundle = fx.path("bundle");
    run(Command::new("umoci")
        .args(["unpack", "--image"])
        .arg(format!("{}:1", layout.display()))
        .arg(&bundle));
    let unpacked = without_root(snapshot(&bundle.join("rootfs")));
    same_tree("umoci's unpack of the export", &container, &unpacked);

    // Other compressions: the same tree.
    for comp in ["zstd", "none"] {
        let name = format!("committed:{comp}");
        fx.ok(&["commit", "c1", "--image", &name, "--compress", comp]);
        let img = s.resolve_image(&name).unwrap();
        let want = if comp == "zstd" {
            "application/vnd.oci.image.layer.v1.tar+zstd"
        } else {
            "application/vnd.oci.image.layer.v1.tar"
        };
        assert_eq!(img.manifest.layers[2].media_type, want);
        same_tree(&name, &container, &mounted_tree(&store, &name));
    }

    // The images and containers listings know them.
    let images: Value = serde_json::from_str(&fx.ok(&["images", "--json"])).unwrap();
    assert_eq!(images.as_array().unwrap().len(), 4, "{images}");
    let containers: Value = serde_json::from_str(&fx.ok(&["containers", "--json"])).unwrap();
    assert_eq!(containers[0]["name"], "c1");
    assert_eq!(containers[0]["image"], base.record.id.as_str());
    fx.ok(&["rm", "c1"]);
    for name in ["committed:1", "committed:zstd", "committed:none", "base:1"] {
        fx.ok(&["rmi", name]);
    }
    assert!(
        fs::read_dir(store.join("layers/sha256"))
            .unwrap()
            .next()
            .is_none()
    );
}

#[test]
fn bad_commits_are_one_line_and_change_nothing() {
    let fx = Fixture::new("layerfs-commit-bad-");
    let store = fx.store();
    {
        let m = mount_image(&store, "base:1", Some("c1"));
        write(&m.path().join("added"), b"x");
        let exit = m.unmount();
        assert!(exit.status.is_some_and(|s| s.success()), "{}", exit.log);
    }
    let before = listing(&store);
    for (args, wanted) in [
        (
            vec!["commit", "nope", "--image", "x:1"],
            "commit nope: container nope: not found",
        ),
        (
            vec!["commit", "c1", "--image", "x:1", "--compress", "xz"],
            "--compress xz: want gzip, zstd or none",
        ),
        (
            vec!["commit", "c1", "--image", "bad name"],
            "invalid image name",
        ),
        (
            vec!["commit", "../c1", "--image", "x:1"],
            "invalid container name",
        ),
    ] {
        let out = fx.layerfs(&args);
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        let err = stderr_of(&out);
        assert_eq!(err.lines().count(), 1, "{args:?}: {err}");
        assert!(
            err.starts_with("layerfs: ") && err.contains(wanted),
            "{args:?}: {err}"
        );
        assert!(out.stdout.is_empty());
        assert_eq!(listing(&store), before, "{args:?} changed the store");
    }

    // A name another image has moves to the new image, as docker does;
    // the old image stays, nameless, and is still used by the container.
    let s = layerfs::image::Store::open(&store).unwrap();
    let old = s.resolve_image("base:1").unwrap().record.id;
    let out = fx.layerfs(&["commit", "c1", "--image", "base:1"]);
    assert!(out.status.success(), "{}", stderr_of(&out));
    assert!(
        stderr_of(&out).contains(&format!("taken from image {old}")),
        "{}",
        stderr_of(&out)
    );
    let new = s.resolve_image("base:1").unwrap();
    assert_ne!(new.record.id, old);
    let old_img = s.resolve_image(old.as_str()).unwrap();
    assert!(old_img.record.names.is_empty());
    assert_eq!(s.container("c1").unwrap().unwrap().record.image, old);
    let tree = mounted_tree(&store, "base:1");
    assert!(tree.get("added").is_some());

    // A container whose image was removed (rmi --force) cannot be
    // committed: one line, nothing changed.
    fx.ok(&["rmi", "--force", old.as_str()]);
    let before = listing(&store);
    let out = fx.layerfs(&["commit", "c1", "--image", "orphan:1"]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr_of(&out);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.contains("container c1: its image") && err.contains("not found"),
        "{err}"
    );
    assert_eq!(listing(&store), before);
    fx.ok(&["rm", "c1"]);
}
