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
use std::io::Write;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::{DiffOptions, LayerfsMount, diff_with, layerfs_bin, snapshot};
use sha2::{Digest as _, Sha256};

fn hex_digest(bytes: &[u8]) -> String {
    let h = Sha256::digest(bytes);
    let mut s = String::from("sha256:");
    for b in h.iter() {
        s.push_str(&format!("{b:02x}"));
    }
    s
}

fn run(cmd: &mut Command) -> Output {
    let shown = format!("{cmd:?}");
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("running {shown}: {e}"));
    assert!(
        out.status.success(),
        "{shown} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn layerfs(store: &Path, args: &[&OsStr]) -> Output {
    Command::new(layerfs_bin())
        .args(args)
        .arg("--store")
        .arg(store)
        .output()
        .expect("running layerfs")
}

fn layerfs_ok(store: &Path, args: &[&OsStr]) -> String {
    let out = layerfs(store, args);
    assert!(
        out.status.success(),
        "layerfs {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn import(store: &Path, path: &Path, name: &str) -> Output {
    layerfs(
        store,
        &[
            "import".as_ref(),
            path.as_os_str(),
            "--name".as_ref(),
            name.as_ref(),
        ],
    )
}

#[derive(Clone, Copy)]
enum Comp {
    None,
    Gzip,
    Zstd,
}

/// A tar of `dir` made by GNU tar: POSIX format with xattrs, or GNU format
/// with sparse files.
fn tar_of(dir: &Path, sparse: bool) -> Vec<u8> {
    let mut cmd = Command::new("tar");
    cmd.arg("-C")
        .arg(dir)
        .args(["--sort=name", "--numeric-owner"]);
    if sparse {
        cmd.args(["--format=gnu", "--sparse"]);
    } else {
        cmd.args(["--format=posix", "--xattrs", "--xattrs-include=user.*"]);
    }
    cmd.args(["-cf", "-", "."]);
    run(&mut cmd).stdout
}

fn compress(tar: &[u8], comp: Comp) -> Vec<u8> {
    match comp {
        Comp::None => tar.to_vec(),
        Comp::Gzip => {
            let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            e.write_all(tar).expect("gzip");
            e.finish().expect("gzip")
        }
        Comp::Zstd => zstd::encode_all(tar, 3).expect("zstd"),
    }
}

fn media_type(comp: Comp) -> &'static str {
    match comp {
        Comp::None => "application/vnd.oci.image.layer.v1.tar",
        Comp::Gzip => "application/vnd.oci.image.layer.v1.tar+gzip",
        Comp::Zstd => "application/vnd.oci.image.layer.v1.tar+zstd",
    }
}

fn put_blob(layout: &Path, bytes: &[u8]) -> (String, usize) {
    let d = hex_digest(bytes);
    let dir = layout.join("blobs/sha256");
    fs::create_dir_all(&dir).unwrap();
    fs::write(dir.join(&d[7..]), bytes).unwrap();
    (d, bytes.len())
}

/// One image of a layout: layers (tar, compression) and its architecture.
struct ImageSpec<'a> {
    layers: Vec<(&'a [u8], Comp)>,
    arch: &'a str,
    tag: &'a str,
}

/// Write an OCI layout holding `images`; with `platforms` the index says
/// each manifest's platform. Returns the manifest descriptors' digests.
fn write_layout(layout: &Path, images: &[ImageSpec<'_>], platforms: bool) -> Vec<String> {
    fs::create_dir_all(layout).unwrap();
    fs::write(
        layout.join("oci-layout"),
        r#"{"imageLayoutVersion":"1.0.0"}"#,
    )
    .unwrap();
    let mut manifests = Vec::new();
    let mut digests = Vec::new();
    for img in images {
        let mut layer_descs = Vec::new();
        let mut diff_ids = Vec::new();
        for (tar, comp) in &img.layers {
            diff_ids.push(hex_digest(tar));
            let (d, size) = put_blob(layout, &compress(tar, *comp));
            layer_descs.push(
                serde_json::json!({"mediaType": media_type(*comp), "digest": d, "size": size}),
            );
        }
        let history: Vec<_> = diff_ids
            .iter()
            .map(|_| serde_json::json!({"created_by": "test"}))
            .collect();
        let config = serde_json::json!({
            "architecture": img.arch, "os": "linux",
            "config": {"Env": ["PATH=/bin"]},
            "rootfs": {"type": "layers", "diff_ids": diff_ids},
            "history": history,
        });
        let (cd, csize) = put_blob(layout, &serde_json::to_vec(&config).unwrap());
        let manifest = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cd, "size": csize},
            "layers": layer_descs,
        });
        let (md, msize) = put_blob(layout, &serde_json::to_vec(&manifest).unwrap());
        let mut desc = serde_json::json!({
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": md, "size": msize,
            "annotations": {"org.opencontainers.image.ref.name": img.tag},
        });
        if platforms {
            desc["platform"] = serde_json::json!({"architecture": img.arch, "os": "linux"});
        }
        manifests.push(desc);
        digests.push(md);
    }
    let index = serde_json::json!({"schemaVersion": 2, "manifests": manifests});
    fs::write(
        layout.join("index.json"),
        serde_json::to_vec(&index).unwrap(),
    )
    .unwrap();
    digests
}

fn write(p: &Path, content: &[u8]) {
    fs::create_dir_all(p.parent().unwrap()).unwrap();
    fs::write(p, content).unwrap();
}

fn chown(p: &Path, uid: u32, gid: u32) {
    std::os::unix::fs::lchown(p, Some(uid), Some(gid)).unwrap();
}

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
    big.set_len(64 << 20).unwrap();
    use std::os::unix::fs::FileExt;
    big.write_all_at(b"start", 0).unwrap();
    big.write_all_at(b"middle", 32 << 20).unwrap();
    big.write_all_at(b"end", (64 << 20) - 3).unwrap();
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

fn stderr_of(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
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
    assert_eq!(md.len(), 64 << 20);
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

/// Every path of a tree with its type, size and content digest, for
/// "nothing changed" checks.
fn listing(root: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            let md = fs::symlink_metadata(&p).unwrap();
            let content = if md.is_file() {
                hex_digest(&fs::read(&p).unwrap())
            } else {
                String::new()
            };
            out.push(format!(
                "{} {:o} {} {content}",
                p.strip_prefix(root).unwrap().display(),
                md.mode(),
                md.len()
            ));
            if md.is_dir() {
                stack.push(p);
            }
        }
    }
    out.sort();
    out
}

/// A tar entry written as given: no check of the path or link name, and
/// `declared` may claim more bytes than `data` holds.
fn raw_entry(
    b: &mut tar::Builder<Vec<u8>>,
    kind: tar::EntryType,
    path: &str,
    link: &str,
    data: &[u8],
    declared: Option<u64>,
) {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(kind);
    h.set_mode(if kind == tar::EntryType::Directory {
        0o755
    } else {
        0o644
    });
    h.set_mtime(1_700_000_000);
    h.set_uid(0);
    h.set_gid(0);
    h.set_size(declared.unwrap_or(data.len() as u64));
    {
        let g = h.as_gnu_mut().unwrap();
        g.name[..path.len()].copy_from_slice(path.as_bytes());
        g.linkname[..link.len()].copy_from_slice(link.as_bytes());
    }
    h.set_cksum();
    b.append(&h, data).unwrap();
}

type Entries<'a> = &'a [(tar::EntryType, &'a str, &'a str, &'a [u8], Option<u64>)];

fn raw_tar(entries: Entries<'_>) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (kind, path, link, data, declared) in entries {
        raw_entry(&mut b, *kind, path, link, data, *declared);
    }
    b.into_inner().unwrap()
}

/// The single layer blob of a one-image layout.
fn layer_blob(layout: &Path, manifest_digest: &str) -> PathBuf {
    let blobs = layout.join("blobs/sha256");
    let m: serde_json::Value =
        serde_json::from_slice(&fs::read(blobs.join(&manifest_digest[7..])).unwrap()).unwrap();
    blobs.join(&m["layers"][0]["digest"].as_str().unwrap()[7..])
}

#[test]
fn hostile_archives_are_refused_in_one_line_and_change_nothing() {
    use tar::EntryType as T;
    common::require_root();
    let dir = common::tempdir("images-hostile-");
    let base = dir.path();
    let decoy = base.join("decoy");
    write(&decoy.join("victim"), b"untouched\n");
    let decoy_before = listing(&decoy);
    let store = base.join("store");
    // A store with one good image in it, so "unchanged" means something.
    let good = raw_tar(&[(T::Regular, "ok", "", b"fine", None)]);
    let good_layout = base.join("good");
    write_layout(
        &good_layout,
        &[ImageSpec {
            layers: vec![(&good, Comp::Gzip)],
            arch: "amd64",
            tag: "g",
        }],
        false,
    );
    assert!(import(&store, &good_layout, "good:1").status.success());
    let store_before = listing(&store);

    // The store's temp dirs are <base>/store/tmp/<x>: three levels below base.
    let dec = decoy.display().to_string();
    let abs_victim = format!("{dec}/victim");
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "traversal",
            raw_tar(&[(T::Regular, "../../../decoy/victim", "", b"pwned", None)]),
            "'..'",
        ),
        (
            "absolute",
            raw_tar(&[(T::Regular, &abs_victim, "", b"pwned", None)]),
            "absolute path",
        ),
        (
            "through a symlink",
            raw_tar(&[
                (T::Symlink, "evil", &dec, b"", None),
                (T::Regular, "evil/victim", "", b"pwned", None),
            ]),
            "symlink",
        ),
        (
            "through a relative symlink",
            raw_tar(&[
                (T::Directory, "d/", "", b"", None),
                (T::Symlink, "d/up", "../../../../decoy", b"", None),
                (T::Regular, "d/up/new", "", b"pwned", None),
            ]),
            "symlink",
        ),
        (
            "hard link outside",
            raw_tar(&[(T::Link, "hl", &abs_victim, b"", None)]),
            "absolute path",
        ),
        (
            "hard link up",
            raw_tar(&[(T::Link, "hl", "../../../decoy/victim", b"", None)]),
            "'..'",
        ),
        (
            "hard link to nothing",
            raw_tar(&[(T::Link, "hl", "missing", b"", None)]),
            "not in the layer",
        ),
        (
            "absurd size",
            raw_tar(&[(T::Regular, "huge", "", b"tiny", Some(1 << 40))]),
            "more than the",
        ),
    ];
    let mut n = 0;
    let mut check = |what: &str, layout: &Path, expect: &str| {
        n += 1;
        let out = import(&store, layout, &format!("bad:{n}"));
        let err = stderr_of(&out);
        assert!(!out.status.success(), "{what}: import succeeded");
        assert_eq!(
            err.trim_end().lines().count(),
            1,
            "{what}: not one line:\n{err}"
        );
        assert!(err.starts_with("layerfs: import "), "{what}: {err}");
        assert!(
            err.contains(expect),
            "{what}: expected {expect:?} in: {err}"
        );
        assert_eq!(listing(&store), store_before, "{what}: the store changed");
        assert_eq!(listing(&decoy), decoy_before, "{what}: the decoy changed");
    };
    for (what, tar, expect) in &cases {
        let layout = base.join(format!("case-{}", what.replace(' ', "-")));
        write_layout(
            &layout,
            &[ImageSpec {
                layers: vec![(tar, Comp::None)],
                arch: "amd64",
                tag: "x",
            }],
            false,
        );
        check(what, &layout, expect);
    }

    // Blobs that are not what their digests say.
    let good2 = raw_tar(&[(T::Regular, "other", "", &[7u8; 5000], None)]);
    let spec = || ImageSpec {
        layers: vec![(&good2, Comp::Gzip)],
        arch: "amd64",
        tag: "x",
    };
    let tampered = base.join("tampered");
    let md = write_layout(&tampered, &[spec()], false);
    let blob = layer_blob(&tampered, &md[0]);
    let mut bytes = fs::read(&blob).unwrap();
    let last = bytes.len() - 9;
    bytes[last] ^= 0xff;
    fs::write(&blob, &bytes).unwrap();
    check(
        "wrong digest",
        &tampered,
        "digest mismatch: expected sha256:",
    );

    let truncated = base.join("truncated");
    let md = write_layout(&truncated, &[spec()], false);
    let blob = layer_blob(&truncated, &md[0]);
    let bytes = fs::read(&blob).unwrap();
    fs::write(&blob, &bytes[..bytes.len() / 2]).unwrap();
    check("truncated blob", &truncated, "layer sha256:");

    // A config whose diff_id does not match the layer.
    let wrong_diff = base.join("wrong-diff");
    let md = write_layout(&wrong_diff, &[spec()], false);
    let blobs = wrong_diff.join("blobs/sha256");
    let mpath = blobs.join(&md[0][7..]);
    let mut manifest: serde_json::Value =
        serde_json::from_slice(&fs::read(&mpath).unwrap()).unwrap();
    let cpath = blobs.join(&manifest["config"]["digest"].as_str().unwrap()[7..]);
    let mut config: serde_json::Value = serde_json::from_slice(&fs::read(&cpath).unwrap()).unwrap();
    config["rootfs"]["diff_ids"][0] = serde_json::json!(hex_digest(b"something else"));
    let (cd, cs) = put_blob(&wrong_diff, &serde_json::to_vec(&config).unwrap());
    manifest["config"]["digest"] = cd.into();
    manifest["config"]["size"] = cs.into();
    let (md2, ms) = put_blob(&wrong_diff, &serde_json::to_vec(&manifest).unwrap());
    let index = serde_json::json!({"schemaVersion": 2, "manifests": [
        {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": md2, "size": ms}]});
    fs::write(
        wrong_diff.join("index.json"),
        serde_json::to_vec(&index).unwrap(),
    )
    .unwrap();
    check(
        "wrong diff_id",
        &wrong_diff,
        "uncompressed: digest mismatch",
    );

    check("missing path", &base.join("nothing-here"), "No such file");
    assert!(
        fs::read_dir(store.join("tmp")).unwrap().next().is_none(),
        "tmp/ left behind"
    );
}

#[test]
fn a_locked_store_times_out_with_a_clear_error() {
    common::require_root();
    let dir = common::tempdir("images-lock-");
    let t = raw_tar(&[(tar::EntryType::Regular, "f", "", b"x", None)]);
    let layout = dir.path().join("oci");
    write_layout(
        &layout,
        &[ImageSpec {
            layers: vec![(&t, Comp::Gzip)],
            arch: "amd64",
            tag: "x",
        }],
        false,
    );
    let store = dir.path().join("store");
    layerfs_ok(&store, &["images".as_ref()]);
    let before = listing(&store);
    let lock = fs::OpenOptions::new()
        .write(true)
        .open(store.join("lock"))
        .unwrap();
    let held = nix::fcntl::Flock::lock(lock, nix::fcntl::FlockArg::LockExclusive).unwrap();
    let out = Command::new(layerfs_bin())
        .args(["import", "--store"])
        .arg(&store)
        .arg(&layout)
        .env("LAYERFS_LOCK_TIMEOUT", "0.5")
        .output()
        .unwrap();
    drop(held);
    assert!(!out.status.success());
    let err = stderr_of(&out);
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    assert!(err.contains("locked by another layerfs command"), "{err}");
    assert_eq!(listing(&store), before);
    let out = import(&store, &layout, "now:1");
    assert!(out.status.success(), "{}", stderr_of(&out));
}

fn mount_image(store: &Path, image: &str, container: Option<&str>) -> LayerfsMount {
    let mut args: Vec<&OsStr> = vec![
        "--image".as_ref(),
        image.as_ref(),
        "--store".as_ref(),
        store.as_os_str(),
    ];
    if let Some(c) = container {
        args.push("--container".as_ref());
        args.push(c.as_ref());
    }
    LayerfsMount::mount_args(args)
}

fn count_dirs(p: &Path) -> usize {
    fs::read_dir(p)
        .unwrap()
        .filter(|e| e.as_ref().unwrap().path().is_dir())
        .count()
}

#[test]
fn rmi_containers_and_rm_keep_what_is_in_use() {
    use tar::EntryType as T;
    common::require_root();
    let dir = common::tempdir("images-rmi-");
    let base_tar = raw_tar(&[(T::Regular, "base", "", b"base\n", None)]);
    let top_tar = raw_tar(&[(T::Regular, "top", "", b"top\n", None)]);
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    write_layout(
        &a,
        &[ImageSpec {
            layers: vec![(&base_tar, Comp::Gzip)],
            arch: "amd64",
            tag: "a",
        }],
        false,
    );
    let two = vec![(&base_tar[..], Comp::Gzip), (&top_tar[..], Comp::Zstd)];
    write_layout(
        &b,
        &[ImageSpec {
            layers: two,
            arch: "amd64",
            tag: "b",
        }],
        false,
    );
    let store = dir.path().join("store");
    assert!(import(&store, &a, "a").status.success());
    let out = import(&store, &b, "b:2");
    assert!(
        stderr_of(&out).contains("2 layers, 1 unpacked"),
        "{}",
        stderr_of(&out)
    );
    let layers = store.join("layers/sha256");
    assert_eq!(count_dirs(&layers), 2);

    // The shared layer stays while b uses it.
    layerfs_ok(&store, &["rmi".as_ref(), "a".as_ref()]);
    assert_eq!(count_dirs(&layers), 2);
    let out = layerfs(&store, &["rmi".as_ref(), "a".as_ref()]);
    assert!(
        stderr_of(&out).contains("image a: not found"),
        "{}",
        stderr_of(&out)
    );

    // A container: a named writable layer kept across mounts.
    {
        let m = mount_image(&store, "b:2", Some("c1"));
        assert_eq!(fs::read(m.path().join("base")).unwrap(), b"base\n");
        fs::write(m.path().join("written"), b"kept\n").unwrap();
        fs::remove_file(m.path().join("top")).unwrap();
        let err = stderr_of(&layerfs(&store, &["rm".as_ref(), "c1".as_ref()]));
        assert!(err.contains("container c1: mounted at"), "{err}");
        let err = stderr_of(&layerfs(
            &store,
            &["rmi".as_ref(), "--force".as_ref(), "b:2".as_ref()],
        ));
        assert!(err.contains("image b:2: mounted at"), "{err}");
        let json = layerfs_ok(&store, &["containers".as_ref(), "--json".as_ref()]);
        let v: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(v[0]["name"], "c1");
        assert_eq!(v[0]["image_names"], serde_json::json!(["b:2"]));
        assert!(v[0]["mounted_at"].is_string(), "{json}");
        drop(m);
    }
    let m = mount_image(&store, "b:2", Some("c1"));
    assert_eq!(fs::read(m.path().join("written")).unwrap(), b"kept\n");
    assert!(!m.path().join("top").exists());
    drop(m);
    // A read-only mount of the image itself still has everything.
    let m = mount_image(&store, "b:2", None);
    assert!(m.path().join("top").exists() && !m.path().join("written").exists());
    drop(m);

    let err = stderr_of(&layerfs(&store, &["rmi".as_ref(), "b:2".as_ref()]));
    assert!(err.contains("used by container c1"), "{err}");
    assert_eq!(err.trim_end().lines().count(), 1);
    layerfs_ok(&store, &["rm".as_ref(), "c1".as_ref()]);
    assert_eq!(count_dirs(&store.join("containers")), 0);
    // By id prefix this time.
    let id = layerfs::image::Store::open(&store)
        .unwrap()
        .find_image("b:2")
        .unwrap()
        .id;
    layerfs_ok(&store, &["rmi".as_ref(), id.hex()[..8].as_ref()]);
    assert_eq!(count_dirs(&layers), 0);
    assert_eq!(fs::read_dir(store.join("blobs/sha256")).unwrap().count(), 0);
    assert_eq!(fs::read_dir(store.join("images")).unwrap().count(), 0);
    assert_eq!(
        fs::read_dir(&layers).unwrap().count(),
        0,
        "layer records left"
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
