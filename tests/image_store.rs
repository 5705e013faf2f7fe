//! The store under hostile archives, a held lock, and rmi / containers /
//! rm with images and containers in use.

mod common;

use std::fs;
use std::path::Path;
use std::process::Command;

use common::images::*;
use common::layerfs_bin;
use common::tmpfs::Tmpfs;

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
fn a_full_disk_fails_the_import_in_one_line_and_leaves_the_store_as_it_was() {
    common::require_root();
    let dir = common::tempdir("images-enospc-");
    // 3 MiB that do not compress, in a 2 MiB store.
    let mut data = vec![0u8; 3 << 20];
    let mut x: u32 = 1;
    for b in data.iter_mut() {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        *b = x as u8;
    }
    let t = raw_tar(&[(tar::EntryType::Regular, "noise", "", &data, None)]);
    let layout = dir.path().join("oci");
    let spec = ImageSpec {
        layers: vec![(&t, Comp::None)],
        arch: "amd64",
        tag: "x",
    };
    write_layout(&layout, &[spec], false);
    let small = Tmpfs::mount(&dir.path().join("small"), "size=2m");
    let store = small.path().join("store");
    layerfs_ok(&store, &["images".as_ref()]);
    let before = listing(&store);
    let out = import(&store, &layout, "full:1");
    let err = stderr_of(&out);
    assert!(!out.status.success());
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    assert!(err.contains("No space left on device"), "{err}");
    assert!(err.starts_with("layerfs: import "), "{err}");
    assert_eq!(listing(&store), before);
    drop(small);
}

#[test]
fn leftovers_of_an_interrupted_import_go_at_the_next_change() {
    common::require_root();
    let dir = common::tempdir("images-leftover-");
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
    // What a killed import leaves: a half-written blob and a half-unpacked layer.
    write(&store.join("tmp/blob-1-2-3"), b"half a blob");
    write(&store.join("tmp/layer-1-2-3/etc/half"), b"half a layer");
    // Readers leave them alone; the next change clears them.
    layerfs_ok(&store, &["images".as_ref()]);
    assert!(store.join("tmp/layer-1-2-3").exists());
    let out = import(&store, &layout, "next:1");
    assert!(out.status.success(), "{}", stderr_of(&out));
    assert_eq!(fs::read_dir(store.join("tmp")).unwrap().count(), 0);
}

#[test]
fn two_imports_at_once_unpack_each_layer_once() {
    common::require_root();
    let dir = common::tempdir("images-concurrent-");
    let files: Vec<(String, Vec<u8>)> = (0..2000)
        .map(|i| (format!("d{}/f{i}", i % 20), vec![i as u8; 2000]))
        .collect();
    let mut b = tar::Builder::new(Vec::new());
    for (name, data) in &files {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        b.append_data(&mut h, name, &data[..]).unwrap();
    }
    let t = b.into_inner().unwrap();
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
    let spawn = |name: &str| {
        Command::new(layerfs_bin())
            .args(["import", "--name", name, "--store"])
            .arg(&store)
            .arg(&layout)
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    };
    let (a, b) = (spawn("one:1"), spawn("two:1"));
    let (a, b) = (a.wait_with_output().unwrap(), b.wait_with_output().unwrap());
    assert!(
        a.status.success() && b.status.success(),
        "{}{}",
        stderr_of(&a),
        stderr_of(&b)
    );
    let unpacked = [&a, &b]
        .iter()
        .filter(|o| stderr_of(o).contains("1 layers, 1 unpacked"))
        .count();
    assert_eq!(unpacked, 1, "{}{}", stderr_of(&a), stderr_of(&b));
    let json = layerfs_ok(&store, &["images".as_ref(), "--json".as_ref()]);
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(v[0]["names"], serde_json::json!(["one:1", "two:1"]));
    assert_eq!(count_dirs(&store.join("layers/sha256")), 1);
}

#[test]
fn an_image_repeating_a_layer_mounts() {
    use tar::EntryType as T;
    common::require_root();
    let dir = common::tempdir("images-repeat-");
    let empty = raw_tar(&[]);
    let a = raw_tar(&[(T::Regular, "a", "", b"a", None)]);
    let b = raw_tar(&[
        (T::Regular, ".wh.a", "", b"", None),
        (T::Regular, "b", "", b"b", None),
    ]);
    let layers = vec![
        (&a[..], Comp::Gzip),
        (&empty[..], Comp::Gzip),
        (&b[..], Comp::Gzip),
        (&empty[..], Comp::Gzip),
    ];
    let layout = dir.path().join("oci");
    write_layout(
        &layout,
        &[ImageSpec {
            layers,
            arch: "amd64",
            tag: "x",
        }],
        false,
    );
    let store = dir.path().join("store");
    let out = import(&store, &layout, "rep:1");
    assert!(
        stderr_of(&out).contains("4 layers, 3 unpacked"),
        "{}",
        stderr_of(&out)
    );
    let m = mount_image(&store, "rep:1", None);
    let names: Vec<String> = fs::read_dir(m.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, vec!["b".to_string()]);
}

#[test]
fn a_legacy_docker_archive_with_a_linked_layer_imports() {
    use tar::EntryType as T;
    common::require_root();
    let dir = common::tempdir("images-legacy-");
    let layer = raw_tar(&[(T::Regular, "a", "", b"a", None)]);
    let diff_id = hex_digest(&layer);
    let config = serde_json::json!({"architecture": "amd64", "os": "linux",
        "rootfs": {"type": "layers", "diff_ids": [diff_id, diff_id]}});
    let config = serde_json::to_vec(&config).unwrap();
    let config_name = format!("{}.json", &hex_digest(&config)[7..]);
    let manifest = serde_json::json!([{"Config": config_name, "RepoTags": ["legacy:1"],
        "Layers": ["aaa/layer.tar", "bbb/layer.tar"]}]);
    let manifest = serde_json::to_vec(&manifest).unwrap();
    // docker save stores a repeated layer once, the second as a symlink.
    let mut b = tar::Builder::new(Vec::new());
    for (name, data) in [
        ("manifest.json", &manifest[..]),
        (config_name.as_str(), &config[..]),
        ("aaa/layer.tar", &layer[..]),
    ] {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        b.append_data(&mut h, name, data).unwrap();
    }
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(T::Symlink);
    h.set_size(0);
    h.set_mode(0o777);
    h.set_link_name("../aaa/layer.tar").unwrap();
    b.append_data(&mut h, "bbb/layer.tar", std::io::empty())
        .unwrap();
    let archive = dir.path().join("legacy.tar");
    fs::write(&archive, b.into_inner().unwrap()).unwrap();
    let store = dir.path().join("store");
    let out = layerfs(&store, &["import".as_ref(), archive.as_os_str()]);
    assert!(out.status.success(), "{}", stderr_of(&out));
    assert!(
        stderr_of(&out).contains("as legacy:1: 2 layers, 1 unpacked"),
        "{}",
        stderr_of(&out)
    );
    let m = mount_image(&store, "legacy:1", None);
    assert_eq!(fs::read(m.path().join("a")).unwrap(), b"a");
}
