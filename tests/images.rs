//! Image import, the store, and `mount --image`, against umoci and skopeo.
//!
//! A test image is built at test time: layers prepared as directories (with
//! whiteouts, an opaque dir, a whiteout and a recreated entry in one layer,
//! hard links, symlinks, xattrs, devices, a fifo, a large sparse file, many
//! small files), packed with GNU tar, written as an OCI layout with gzip,
//! zstd and plain layers; skopeo converts it to an OCI archive and a docker
//! archive. Every import, mounted with `mount --image`, must equal
//! `umoci unpack` of the same image.

mod common;

use std::ffi::OsStr;
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use common::images::*;
use common::{DiffOptions, LayerfsMount, diff_with, snapshot};

/// The size of the sparse file: large next to its few data blocks.
const BIG: u64 = 16 << 20;

/// The three layers of the test image, as directories.
fn prepare_layers(base: &Path) -> [PathBuf; 3] {
    let l1 = base.join("l1");
    write(&l1.join("etc/gone"), b"to be deleted\n");
    write(&l1.join("etc/keep"), b"kept\n");
    chown(&l1.join("etc/keep"), 1000, 1001);
    fs::set_permissions(l1.join("etc/keep"), fs::Permissions::from_mode(0o640)).unwrap();
    write(&l1.join("opq/a"), b"a");
    write(&l1.join("opq/sub/c"), b"c");
    write(&l1.join("rec"), b"old rec\n");
    write(&l1.join("hl/a"), b"hard linked\n");
    fs::hard_link(l1.join("hl/a"), l1.join("hl/b")).unwrap();
    std::os::unix::fs::symlink("etc/keep", l1.join("sl")).unwrap();
    std::os::unix::fs::symlink("/nonexistent/abs", l1.join("abs")).unwrap();
    write(&l1.join("x"), b"with xattr");
    common::sys::lsetxattr(&l1.join("x"), b"user.test", b"hello").unwrap();
    fs::create_dir_all(l1.join("dev")).unwrap();
    common::sys::mknod(&l1.join("dev/null0"), libc::S_IFCHR, 0o666, 1, 3).unwrap();
    common::sys::mknod(&l1.join("dev/fifo"), libc::S_IFIFO, 0o644, 0, 0).unwrap();
    write(&l1.join("bin/su"), b"#!/bin/sh\n");
    fs::set_permissions(l1.join("bin/su"), fs::Permissions::from_mode(0o4755)).unwrap();
    fs::create_dir_all(l1.join("priv")).unwrap();
    chown(&l1.join("priv"), 1000, 1000);
    fs::set_permissions(l1.join("priv"), fs::Permissions::from_mode(0o700)).unwrap();
    for i in 0..400 {
        write(
            &l1.join(format!("many/f{i:04}")),
            format!("file {i}\n").as_bytes(),
        );
    }

    let l2 = base.join("l2");
    write(&l2.join("etc/.wh.gone"), b"");
    write(&l2.join("opq/.wh..wh..opq"), b"");
    write(&l2.join("opq/new"), b"new in opaque dir");
    write(&l2.join(".wh.rec"), b"");
    write(&l2.join("rec/inside"), b"rec is a dir now\n");
    write(&l2.join("many/.wh.f0007"), b"");
    write(&l2.join("hl/c"), b"other");

    let l3 = base.join("l3");
    fs::create_dir_all(&l3).unwrap();
    let big = fs::File::create(l3.join("big")).unwrap();
    big.set_len(BIG).unwrap();
    use std::os::unix::fs::FileExt;
    big.write_all_at(b"start", 0).unwrap();
    big.write_all_at(b"middle", BIG / 2).unwrap();
    big.write_all_at(b"end", BIG - 3).unwrap();
    // Fixed times, so layers made twice are the same bytes; whole seconds
    // in the GNU-format layer, which has no finer times.
    for (l, time) in [
        (&l1, "2024-05-01 12:00:00.123456789"),
        (&l2, "2024-05-02 12:00:00.5"),
        (&l3, "2024-05-03 12:00:00"),
    ] {
        run(Command::new("find")
            .arg(l)
            .args(["-exec", "touch", "-h", "-d", time, "{}", "+"]));
    }
    [l1, l2, l3]
}

/// The test image as an OCI layout at `<base>/oci` (tag `t`) and umoci's
/// unpack of it at `<base>/bundle/rootfs`.
struct Fixture {
    dir: tempfile::TempDir,
}

impl Fixture {
    fn new() -> Fixture {
        common::require_root();
        let dir = common::tempdir("images-");
        let [l1, l2, l3] = prepare_layers(dir.path());
        let (t1, t2, t3) = (tar_of(&l1, false), tar_of(&l2, false), tar_of(&l3, true));
        let spec = ImageSpec {
            layers: vec![(&t1, Comp::Gzip), (&t2, Comp::Zstd), (&t3, Comp::None)],
            arch: "amd64",
            tag: "t",
        };
        write_layout(&dir.path().join("oci"), &[spec], false);
        // The reference: umoci reads the same trees with gzip layers (and
        // the big file written out, as umoci knows no GNU sparse entries).
        let t3_plain = tar_of(&l3, false);
        let gz = ImageSpec {
            layers: vec![
                (&t1, Comp::Gzip),
                (&t2, Comp::Gzip),
                (&t3_plain, Comp::Gzip),
            ],
            arch: "amd64",
            tag: "t",
        };
        write_layout(&dir.path().join("oci-gz"), &[gz], false);
        // Docker archives know no zstd.
        let docker = ImageSpec {
            layers: vec![(&t1, Comp::Gzip), (&t2, Comp::None), (&t3, Comp::Gzip)],
            arch: "amd64",
            tag: "t",
        };
        write_layout(&dir.path().join("oci-docker"), &[docker], false);
        run(Command::new("umoci")
            .args(["unpack", "--image"])
            .arg(format!("{}:t", dir.path().join("oci-gz").display()))
            .arg(dir.path().join("bundle")));
        Fixture { dir }
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    fn store(&self) -> PathBuf {
        self.path("store")
    }
}

/// Mount `image` from `store` read-only and compare with umoci's unpack.
fn assert_mount_matches(fx: &Fixture, image: &str) {
    let store = fx.store();
    let m = LayerfsMount::mount_args([
        "--image".as_ref(),
        OsStr::new(image),
        "--store".as_ref(),
        store.as_os_str(),
    ]);
    let expected = snapshot(&fx.path("bundle/rootfs"));
    let actual = snapshot(m.path());
    let opts = DiffOptions {
        dir_sizes: false,
        ..DiffOptions::default()
    };
    let problems = diff_with(&expected, &actual, &opts);
    assert!(
        problems.is_empty(),
        "{image}: mount differs from umoci unpack:\n{}",
        problems.join("\n")
    );
    assert!(actual.get("big").is_some() && actual.get("rec/inside").is_some());
    drop(m);
}

#[test]
fn oci_layout_dir_imports_once_and_mounts_as_umoci_unpacks() {
    let fx = Fixture::new();
    let store = fx.store();
    let out = import(&store, &fx.path("oci"), "test/img:1");
    assert!(out.status.success(), "{}", stderr_of(&out));
    assert!(
        stderr_of(&out).contains("3 layers, 3 unpacked"),
        "{}",
        stderr_of(&out)
    );
    assert_mount_matches(&fx, "test/img:1");

    // Holes stay holes.
    let layers: Vec<PathBuf> = fs::read_dir(store.join("layers/sha256"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_dir())
        .collect();
    assert_eq!(layers.len(), 3);
    let big = layers
        .iter()
        .map(|l| l.join("big"))
        .find(|p| p.exists())
        .unwrap();
    let md = fs::symlink_metadata(&big).unwrap();
    assert_eq!(md.len(), BIG);
    assert!(
        md.blocks() * 512 < 1 << 20,
        "sparse file takes {} blocks",
        md.blocks()
    );
    // The OCI whiteouts are kept as files in the layer.
    assert!(layers.iter().any(|l| l.join("opq/.wh..wh..opq").is_file()));

    // A second import (another name) unpacks nothing and changes no layer.
    let before: Vec<(PathBuf, u64, i64)> = layers
        .iter()
        .map(|l| {
            let m = fs::metadata(l).unwrap();
            (l.clone(), m.ino(), m.mtime())
        })
        .collect();
    let out = import(&store, &fx.path("oci"), "test/img:2");
    assert!(
        stderr_of(&out).contains("3 layers, 0 unpacked"),
        "{}",
        stderr_of(&out)
    );
    for (l, ino, mtime) in before {
        let m = fs::metadata(&l).unwrap();
        assert_eq!(
            (m.ino(), m.mtime()),
            (ino, mtime),
            "{} changed",
            l.display()
        );
    }
    let listing = layerfs_ok(&store, &["images".as_ref(), "--json".as_ref()]);
    let images: serde_json::Value = serde_json::from_str(&listing).unwrap();
    assert_eq!(images.as_array().unwrap().len(), 1, "{listing}");
    assert_eq!(
        images[0]["names"],
        serde_json::json!(["test/img:1", "test/img:2"])
    );
    assert!(fs::read_dir(store.join("tmp")).unwrap().next().is_none());
}

#[test]
fn oci_archive_and_docker_archives_mount_as_umoci_unpacks() {
    let fx = Fixture::new();
    let store = fx.store();
    let src = format!("oci:{}:t", fx.path("oci").display());
    let oci_tar = fx.path("image.oci.tar");
    run(Command::new("skopeo")
        .args(["copy", "-q", &src])
        .arg(format!("oci-archive:{}:t", oci_tar.display())));
    let docker_tar = fx.path("image.docker.tar");
    run(Command::new("skopeo")
        .args(["copy", "-q"])
        .arg(format!("oci:{}:t", fx.path("oci-docker").display()))
        .arg(format!(
            "docker-archive:{}:example.com/d:7",
            docker_tar.display()
        )));
    for (file, name) in [(&oci_tar, "from/oci-tar"), (&docker_tar, "from/docker:1")] {
        let out = import(&store, file, name);
        assert!(out.status.success(), "{name}: {}", stderr_of(&out));
        assert_mount_matches(&fx, name);
    }
    // The docker archive's own tag works when no --name is given.
    let out = layerfs(&store, &["import".as_ref(), docker_tar.as_os_str()]);
    assert!(out.status.success(), "{}", stderr_of(&out));
    assert!(
        stderr_of(&out).contains("0 unpacked"),
        "{}",
        stderr_of(&out)
    );
    assert_mount_matches(&fx, "example.com/d:7");

    // The newer `docker save` form: manifest.json naming OCI blobs.
    let newer = fx.path("newer");
    run(Command::new("cp").arg("-a").arg(fx.path("oci")).arg(&newer));
    let index: serde_json::Value =
        serde_json::from_slice(&fs::read(newer.join("index.json")).unwrap()).unwrap();
    fs::remove_file(newer.join("index.json")).unwrap();
    let md = index["manifests"][0]["digest"].as_str().unwrap();
    let manifest: serde_json::Value =
        serde_json::from_slice(&fs::read(newer.join("blobs/sha256").join(&md[7..])).unwrap())
            .unwrap();
    let blob = |d: &serde_json::Value| format!("blobs/sha256/{}", &d.as_str().unwrap()[7..]);
    let layers: Vec<String> = manifest["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| blob(&l["digest"]))
        .collect();
    let mj = serde_json::json!([{"Config": blob(&manifest["config"]["digest"]),
        "RepoTags": ["newer:1"], "Layers": layers}]);
    fs::write(
        newer.join("manifest.json"),
        serde_json::to_vec(&mj).unwrap(),
    )
    .unwrap();
    let newer_tar = fx.path("newer.tar");
    run(Command::new("tar")
        .arg("-C")
        .arg(&newer)
        .arg("-cf")
        .arg(&newer_tar)
        .arg("."));
    let out = layerfs(&store, &["import".as_ref(), newer_tar.as_os_str()]);
    assert!(out.status.success(), "{}", stderr_of(&out));
    assert_mount_matches(&fx, "newer:1");
}

#[test]
fn an_index_picks_this_platform_unless_told() {
    common::require_root();
    let dir = common::tempdir("images-platform-");
    let one = |content: &str| {
        let d = dir.path().join(content);
        write(&d.join("arch"), content.as_bytes());
        tar_of(&d, false)
    };
    let (amd, arm) = (one("amd64"), one("arm64"));
    let images = [
        ImageSpec {
            layers: vec![(&arm, Comp::Gzip)],
            arch: "arm64",
            tag: "arm",
        },
        ImageSpec {
            layers: vec![(&amd, Comp::Gzip)],
            arch: "amd64",
            tag: "amd",
        },
    ];
    let layout = dir.path().join("multi");
    write_layout(&layout, &images, true);
    let store = dir.path().join("store");
    let out = import(&store, &layout, "multi:host");
    assert!(out.status.success(), "{}", stderr_of(&out));
    let s = layerfs::image::Store::open(&store).unwrap();
    let host = s.resolve_image("multi:host").unwrap();
    assert_eq!(host.config.architecture, "amd64");
    assert_eq!(fs::read(host.layer_dirs[0].join("arch")).unwrap(), b"amd64");
    let out = layerfs(
        &store,
        &[
            "import".as_ref(),
            layout.as_os_str(),
            "--name".as_ref(),
            "multi:arm".as_ref(),
            "--platform".as_ref(),
            "linux/arm64".as_ref(),
        ],
    );
    assert!(out.status.success(), "{}", stderr_of(&out));
    let arm = s.resolve_image("multi:arm").unwrap();
    assert_eq!(arm.config.architecture, "arm64");
    let out = layerfs(
        &store,
        &[
            "import".as_ref(),
            layout.as_os_str(),
            "--platform".as_ref(),
            "linux/s390x".as_ref(),
        ],
    );
    assert!(!out.status.success());
    assert!(
        stderr_of(&out).contains("no image for platform linux/s390x"),
        "{}",
        stderr_of(&out)
    );
}

#[test]
fn exports_are_read_by_skopeo_and_umoci_with_the_same_digests() {
    let fx = Fixture::new();
    let store = fx.store();
    // The gzip image with no GNU sparse entries: umoci unpacks it.
    let out = import(&store, &fx.path("oci-gz"), "exp/img:1");
    assert!(out.status.success(), "{}", stderr_of(&out));
    let s = layerfs::image::Store::open(&store).unwrap();
    let original = s.resolve_image("exp/img:1").unwrap();
    let expected = snapshot(&fx.path("bundle/rootfs"));
    let opts = DiffOptions {
        dir_sizes: false,
        ..DiffOptions::default()
    };
    for format in ["oci", "docker-archive"] {
        let file = fx.path(&format!("export.{format}.tar"));
        layerfs_ok(
            &store,
            &[
                "export".as_ref(),
                "exp/img:1".as_ref(),
                "-o".as_ref(),
                file.as_os_str(),
                "--format".as_ref(),
                format.as_ref(),
            ],
        );
        // skopeo reads it (as what it claims to be) into a plain layout...
        let layout = fx.path(&format!("copied-{format}"));
        let src = match format {
            "oci" => format!("oci-archive:{}:1", file.display()),
            _ => format!("docker-archive:{}", file.display()),
        };
        run(Command::new("skopeo")
            .args(["copy", "-q", &src])
            .arg(format!("oci:{}:c", layout.display())));
        // ...which umoci unpacks to the same tree.
        let bundle = fx.path(&format!("bundle-{format}"));
        run(Command::new("umoci")
            .args(["unpack", "--image"])
            .arg(format!("{}:c", layout.display()))
            .arg(&bundle));
        let problems = diff_with(&expected, &snapshot(&bundle.join("rootfs")), &opts);
        assert!(problems.is_empty(), "{format}: {}", problems.join("\n"));
        // Importing the export again gives the very same image.
        let again = fx.path(&format!("store-{format}"));
        let out = layerfs(&again, &["import".as_ref(), file.as_os_str()]);
        assert!(out.status.success(), "{format}: {}", stderr_of(&out));
        let back = layerfs::image::Store::open(&again)
            .unwrap()
            .resolve_image("exp/img:1")
            .unwrap();
        assert_eq!(back.record.id, original.record.id);
        assert_eq!(back.record.manifest, original.record.manifest, "{format}");
    }
    let missing = layerfs(
        &store,
        &[
            "export".as_ref(),
            "nope".as_ref(),
            "-o".as_ref(),
            fx.path("n.tar").as_os_str(),
        ],
    );
    assert!(
        stderr_of(&missing).contains("image nope: not found"),
        "{}",
        stderr_of(&missing)
    );
    assert!(!fx.path("n.tar").exists());
}

#[test]
fn a_layout_with_several_tags_takes_the_one_named() {
    common::require_root();
    let dir = common::tempdir("images-tags-");
    let one = raw_tar(&[(tar::EntryType::Regular, "which", "", b"one", None)]);
    let two = raw_tar(&[(tar::EntryType::Regular, "which", "", b"two", None)]);
    let layout = dir.path().join("tags");
    let images = [
        ImageSpec {
            layers: vec![(&one, Comp::Gzip)],
            arch: "amd64",
            tag: "one",
        },
        ImageSpec {
            layers: vec![(&two, Comp::Gzip)],
            arch: "amd64",
            tag: "two",
        },
    ];
    write_layout(&layout, &images, false);
    let store = dir.path().join("store");
    let out = layerfs(&store, &["import".as_ref(), layout.as_os_str()]);
    assert!(!out.status.success());
    let err = stderr_of(&out);
    assert!(
        err.contains("2 images for platform linux/amd64 (tags: one, two)"),
        "{err}"
    );
    assert!(import(&store, &layout, "mine:two").status.success());
    let s = layerfs::image::Store::open(&store).unwrap();
    let img = s.resolve_image("mine:two").unwrap();
    assert_eq!(fs::read(img.layer_dirs[0].join("which")).unwrap(), b"two");
}
