//! Helpers for the image tests: OCI layouts written from tars, hostile
//! tars, running layerfs against a store, listings of a store.

use std::ffi::OsStr;
use std::fs;
use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use sha2::{Digest as _, Sha256};

use super::{LayerfsMount, layerfs_bin};

pub fn hex_digest(bytes: &[u8]) -> String {
    let h = Sha256::digest(bytes);
    let mut s = String::from("sha256:");
    for b in h.iter() {
        s.push_str(&format!("{b:02x}"));
    }
    s
}

pub fn run(cmd: &mut Command) -> Output {
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

pub fn layerfs(store: &Path, args: &[&OsStr]) -> Output {
    Command::new(layerfs_bin())
        .args(args)
        .arg("--store")
        .arg(store)
        .output()
        .expect("running layerfs")
}

pub fn layerfs_ok(store: &Path, args: &[&OsStr]) -> String {
    let out = layerfs(store, args);
    assert!(
        out.status.success(),
        "layerfs {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub fn import(store: &Path, path: &Path, name: &str) -> Output {
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
pub enum Comp {
    None,
    Gzip,
    Zstd,
}

/// A tar of `dir` made by GNU tar: POSIX format with xattrs, or GNU format
/// with sparse files.
pub fn tar_of(dir: &Path, sparse: bool) -> Vec<u8> {
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

pub fn compress(tar: &[u8], comp: Comp) -> Vec<u8> {
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

pub fn media_type(comp: Comp) -> &'static str {
    match comp {
        Comp::None => "application/vnd.oci.image.layer.v1.tar",
        Comp::Gzip => "application/vnd.oci.image.layer.v1.tar+gzip",
        Comp::Zstd => "application/vnd.oci.image.layer.v1.tar+zstd",
    }
}

pub fn put_blob(layout: &Path, bytes: &[u8]) -> (String, usize) {
    let d = hex_digest(bytes);
    let dir = layout.join("blobs/sha256");
    fs::create_dir_all(&dir).unwrap();
    fs::write(dir.join(&d[7..]), bytes).unwrap();
    (d, bytes.len())
}

/// One image of a layout: layers (tar, compression) and its architecture.
pub struct ImageSpec<'a> {
    pub layers: Vec<(&'a [u8], Comp)>,
    pub arch: &'a str,
    pub tag: &'a str,
}

/// Write an OCI layout holding `images`; with `platforms` the index says
/// each manifest's platform. Returns the manifest descriptors' digests.
pub fn write_layout(layout: &Path, images: &[ImageSpec<'_>], platforms: bool) -> Vec<String> {
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

pub fn write(p: &Path, content: &[u8]) {
    fs::create_dir_all(p.parent().unwrap()).unwrap();
    fs::write(p, content).unwrap();
}

pub fn chown(p: &Path, uid: u32, gid: u32) {
    std::os::unix::fs::lchown(p, Some(uid), Some(gid)).unwrap();
}

pub fn stderr_of(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Every path of a tree with its type, size and content digest, for
/// "nothing changed" checks.
pub fn listing(root: &Path) -> Vec<String> {
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
pub fn raw_entry(
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

pub type Entries<'a> = &'a [(tar::EntryType, &'a str, &'a str, &'a [u8], Option<u64>)];

pub fn raw_tar(entries: Entries<'_>) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (kind, path, link, data, declared) in entries {
        raw_entry(&mut b, *kind, path, link, data, *declared);
    }
    b.into_inner().unwrap()
}

/// The single layer blob of a one-image layout.
pub fn layer_blob(layout: &Path, manifest_digest: &str) -> PathBuf {
    let blobs = layout.join("blobs/sha256");
    let m: serde_json::Value =
        serde_json::from_slice(&fs::read(blobs.join(&manifest_digest[7..])).unwrap()).unwrap();
    blobs.join(&m["layers"][0]["digest"].as_str().unwrap()[7..])
}

pub fn mount_image(store: &Path, image: &str, container: Option<&str>) -> LayerfsMount {
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

pub fn count_dirs(p: &Path) -> usize {
    fs::read_dir(p)
        .unwrap()
        .filter(|e| e.as_ref().unwrap().path().is_dir())
        .count()
}
