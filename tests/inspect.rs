//! Explaining layers, end to end (needs root):
//!
//! * `known_stack_through_the_cli`: a hand-made stack whose answers are
//!   known exactly; `whiteouts`, `history` and `which` with `--json` must
//!   give those numbers, and the text forms must run.
//! * `layerfs_upper_diff_and_commit`, `layerfs_oci_upper_diff_and_commit`,
//!   `kernel_upper_diff_and_commit`: changes made through a real writable
//!   mount (layerfs with an overlay-format upper, layerfs with
//!   `whiteout=oci`, the kernel's overlayfs): create, modify, delete,
//!   rename of lower directories in one directory and across (relative and
//!   absolute redirects) and changes inside a renamed one, hard link of a
//!   lower file, chmod, xattr, symlink, fifo. Then `diff` must list exactly
//!   the expected lines, and the layer tar of the upper, unpacked as a new
//!   top layer over the same lowers and mounted read-only, must show the
//!   tree the container showed; `whiteouts` over that stack must charge
//!   exactly the bytes the changes left hidden and shadowed.
//! * `bad_input_is_one_line`: missing layers and bad paths.
//! * `known_image_through_the_cli`: the known stack as an image of the
//!   store (with an `empty_layer` history entry): `history`, `whiteouts`
//!   and `which --image` give the same numbers with each layer named by
//!   diff_id and history; `which PATH` on a live mount of the image, of a
//!   container and of plain directories finds the layers through the
//!   daemon's record, which goes with the daemon; `diff CONTAINER` on a
//!   mounted container; bad references are one line.

mod common;

use std::fs;
use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::{Path, PathBuf};
use std::process::Command;

use common::{DiffOptions, LayerfsMount, Tree, diff_with, snapshot};
use serde_json::Value;

fn file(root: &Path, rel: &str, content: &[u8]) {
    let p = root.join(rel);
    fs::create_dir_all(p.parent().expect("a parent")).expect("mkdir -p");
    fs::write(p, content).expect("write");
}

fn run(args: &[&str], extra: &[&Path]) -> (i32, String, String) {
    let out = Command::new(common::layerfs_bin())
        .args(args)
        .args(extra)
        .output()
        .expect("running layerfs");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn json(args: &[&str], extra: &[&Path]) -> Value {
    let (code, out, err) = run(args, extra);
    assert_eq!(code, 0, "layerfs {args:?} failed: {err}");
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("bad JSON ({e}): {out}"))
}

/// Layer 2 (bottom): /big 1000, /dir/{a 10,b 20}, /keep 5.
/// Layer 1: .wh.big, dir/.wh..wh..opq, dir/c 30, keep 50.
/// Layer 0: keep as a 0/0 char device (overlay whiteout), dir/d 40.
fn known_stack(root: &Path) -> Vec<PathBuf> {
    let (l0, l1, l2) = (root.join("l0"), root.join("l1"), root.join("l2"));
    file(&l2, "big", &[b'b'; 1000]);
    file(&l2, "dir/a", &[b'a'; 10]);
    file(&l2, "dir/b", &[b'b'; 20]);
    file(&l2, "keep", &[b'k'; 5]);
    file(&l1, ".wh.big", b"");
    file(&l1, "dir/.wh..wh..opq", b"");
    file(&l1, "dir/c", &[b'c'; 30]);
    file(&l1, "keep", &[b'k'; 50]);
    file(&l0, "dir/d", &[b'd'; 40]);
    common::sys::mknod(&l0.join("keep"), libc::S_IFCHR, 0o600, 0, 0).expect("mknod whiteout");
    vec![l0, l1, l2]
}

#[test]
fn known_stack_through_the_cli() {
    common::require_root();
    let dir = common::tempdir("layerfs-inspect-known-");
    let layers = known_stack(dir.path());
    let l: Vec<&Path> = layers.iter().map(PathBuf::as_path).collect();

    let w = json(&["whiteouts", "--json"], &l);
    let marks: Vec<(u64, &str, &str, usize, u64)> = w["whiteouts"]
        .as_array()
        .expect("whiteouts array")
        .iter()
        .map(|m| {
            (
                m["layer"].as_u64().unwrap(),
                m["path"].as_str().unwrap(),
                m["mark"].as_str().unwrap(),
                m["hides"].as_array().unwrap().len(),
                m["hidden_bytes"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        marks,
        vec![
            (1, "/big", "whiteout", 1, 1000),
            (0, "/keep", "whiteout", 1, 50),
            (1, "/dir", "opaque", 2, 30),
        ]
    );
    assert_eq!(w["shadowed"][0]["path"], "/keep");
    assert_eq!(w["shadowed"][0]["layer"], 1);
    assert_eq!(w["shadowed"][0]["shadowed_bytes"], 5);
    let per: Vec<(u64, u64, u64)> = w["per_layer"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            (
                t["layer"].as_u64().unwrap(),
                t["hidden_bytes"].as_u64().unwrap(),
                t["shadowed_bytes"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(per, vec![(1, 1030, 5), (0, 50, 0), (2, 0, 0)]);
    assert_eq!(w["total"]["hidden_bytes"], 1080);
    assert_eq!(w["total"]["wasted_bytes"], 1085);
    assert_eq!(w["total"]["whiteouts"], 2);
    assert_eq!(w["total"]["opaque_dirs"], 1);

    let mut args = vec!["history", "--json"];
    for p in &layers {
        args.push("--layers");
        args.push(p.to_str().expect("utf-8 temp path"));
    }
    let h = json(&args, &[]);
    let got: Vec<(u64, u64, u64, u64)> = h
        .as_array()
        .unwrap()
        .iter()
        .map(|l| {
            (
                l["added"].as_u64().unwrap(),
                l["changed"].as_u64().unwrap(),
                l["deleted"].as_u64().unwrap(),
                l["size"].as_u64().unwrap(),
            )
        })
        .collect();
    // Layer 0 adds dir/d and deletes keep; layer 1 adds dir/c, replaces
    // keep, deletes big, dir/a and dir/b; layer 2 adds 5 entries.
    assert_eq!(got, vec![(1, 0, 1, 40), (1, 1, 3, 80), (5, 0, 0, 1035)]);

    let mut args = vec!["which", "/dir/a", "--json"];
    for p in &layers {
        args.push("--layers");
        args.push(p.to_str().unwrap());
    }
    let r = json(&args, &[]);
    assert_eq!(r["provider"], Value::Null);
    let hidden: Vec<(u64, &str, &str, &str)> = r["hidden"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| {
            (
                h["layer"].as_u64().unwrap(),
                h["path"].as_str().unwrap(),
                h["reason"]["by"].as_str().unwrap(),
                h["reason"]["path"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        hidden,
        vec![
            (2, "/dir", "opaque", "/dir"),
            (2, "/dir/a", "opaque", "/dir")
        ]
    );
    args[1] = "/dir/c";
    let r = json(&args, &[]);
    assert_eq!(r["provider"]["layer"], 1);
    assert_eq!(r["provider"]["size"], 30);
    args[1] = "/dir";
    let r = json(&args, &[]);
    assert_eq!(r["provider"]["layer"], 0);
    assert_eq!(r["merged_from"], serde_json::json!([0, 1]));

    // The text forms run and say something.
    let (code, out, err) = run(&["whiteouts"], &l);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("/big") && out.contains("1000"), "{out}");
    args.retain(|a| *a != "--json");
    let (code, out, err) = run(&args, &[]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("from layer 0"), "{out}");
}

#[test]
fn bad_input_is_one_line() {
    common::require_root();
    let dir = common::tempdir("layerfs-inspect-bad-");
    let missing = dir.path().join("missing");
    let (code, out, err) = run(&["whiteouts"], &[&missing]);
    assert_eq!(code, 1);
    assert!(out.is_empty());
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("missing"), "{err}");
    let a_file = dir.path().join("file");
    fs::write(&a_file, "x").unwrap();
    let (code, _, err) = run(&["diff", "--lower"], &[&a_file, dir.path()]);
    assert_eq!(code, 1, "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    let (code, _, err) = run(&["which", "/a/../b", "--layers"], &[dir.path()]);
    assert_eq!(code, 1);
    assert!(err.contains("not a plain path"), "{err}");
    // Nothing was changed by looking.
    assert_eq!(fs::read(&a_file).unwrap(), b"x");
}

/// Two lower layers (top first) of a small image.
fn lowers(root: &Path) -> Vec<PathBuf> {
    let (l1, l2) = (root.join("l1"), root.join("l2"));
    file(&l2, "etc/passwd", b"root:x:0:0::/root:/bin/sh\n");
    file(&l2, "etc/hosts", b"127.0.0.1 localhost\n");
    common::sys::lsetxattr(&l2.join("etc/hosts"), b"user.origin", b"l2").unwrap();
    file(&l2, "usr/share/doc/readme", b"read me\n");
    file(&l2, "usr/share/doc/sub/deep", b"deep\n");
    file(&l2, "data/big", &[7u8; 5000]);
    file(&l2, "srv/keep", b"keep\n");
    file(&l2, "mod/f", b"mode\n");
    fs::set_permissions(l2.join("mod/f"), fs::Permissions::from_mode(0o644)).unwrap();
    file(&l2, "lone", b"one name\n");
    file(&l2, "opq/old", b"old\n");
    symlink("etc/passwd", l2.join("link")).unwrap();
    file(&l1, "etc/extra", b"extra\n");
    file(&l1, "usr/share/doc/readme2", b"second\n");
    file(&l1, "var/log/x", b"log\n");
    vec![l1, l2]
}

/// The changes a container makes, through whichever mount is at `mnt`.
fn make_changes(mnt: &Path) {
    let p = |r: &str| mnt.join(r);
    file(mnt, "new/dir/file", b"hello\n");
    file(mnt, "etc/newfile", b"new\n");
    common::sys::lsetxattr(&p("etc/newfile"), b"user.note", b"\x00binary\xff").unwrap();
    let mut passwd = fs::read(p("etc/passwd")).unwrap();
    passwd.extend_from_slice(b"app:x:1000:1000::/home/app:/bin/sh\n");
    fs::write(p("etc/passwd"), passwd).unwrap();
    fs::remove_file(p("srv/keep")).unwrap();
    fs::remove_dir_all(p("data")).unwrap();
    // Removed and made again: an opaque directory.
    fs::remove_dir_all(p("opq")).unwrap();
    file(mnt, "opq/fresh", b"fresh\n");
    // Same directory: a relative redirect; then changes inside it.
    fs::rename(p("usr/share/doc"), p("usr/share/docs2")).unwrap();
    fs::remove_file(p("usr/share/docs2/readme2")).unwrap();
    file(mnt, "usr/share/docs2/sub/new", b"inside\n");
    // Across directories: an absolute redirect.
    fs::rename(p("var/log"), p("logs")).unwrap();
    fs::hard_link(p("lone"), p("lone2")).unwrap();
    fs::set_permissions(p("mod/f"), fs::Permissions::from_mode(0o600)).unwrap();
    symlink("file", p("new/ln")).unwrap();
    nix::unistd::mkfifo(
        &p("new/fifo"),
        nix::sys::stat::Mode::from_bits_truncate(0o640),
    )
    .unwrap();
}

const EXPECTED_DIFF: [&str; 29] = [
    "D /data",
    "C /etc",
    "A /etc/newfile",
    "C /etc/passwd",
    "A /logs",
    "A /logs/x",
    "A /lone2",
    "C /mod",
    "C /mod/f",
    "A /new",
    "A /new/dir",
    "A /new/dir/file",
    "A /new/fifo",
    "A /new/ln",
    "C /opq",
    "A /opq/fresh",
    "D /opq/old",
    "C /srv",
    "D /srv/keep",
    "C /usr",
    "C /usr/share",
    "D /usr/share/doc",
    "A /usr/share/docs2",
    "A /usr/share/docs2/readme",
    "A /usr/share/docs2/sub",
    "A /usr/share/docs2/sub/deep",
    "A /usr/share/docs2/sub/new",
    "C /var",
    "D /var/log",
];

/// Which mount makes the changes, and so which form the upper takes.
#[derive(Clone, Copy, Debug)]
enum Writer {
    /// layerfs, overlay-format upper (char devices, xattrs).
    Layerfs,
    /// layerfs with `whiteout=oci` (`.wh.` files in the upper).
    LayerfsOci,
    /// The kernel's overlayfs (redirect_dir=on, index=on).
    Kernel,
}

fn round_trip(writer: Writer) {
    common::require_root();
    let dir = common::tempdir("layerfs-inspect-commit-");
    let root = dir.path().canonicalize().unwrap();
    let lowers = lowers(&root);
    let (upper, work, new) = (root.join("upper"), root.join("work"), root.join("new"));
    for d in [&upper, &work, &new] {
        fs::create_dir(d).unwrap();
    }
    let before: Tree = match writer {
        Writer::Layerfs | Writer::LayerfsOci => {
            let mut args: Vec<PathBuf> = Vec::new();
            for l in &lowers {
                args.push("--lower".into());
                args.push(l.clone());
            }
            args.extend([
                "--upper".into(),
                upper.clone(),
                "--work".into(),
                work.clone(),
            ]);
            if matches!(writer, Writer::LayerfsOci) {
                args.extend(["-o".into(), "whiteout=oci".into()]);
            }
            let m = LayerfsMount::mount_args(&args);
            make_changes(m.path());
            let snap = snapshot(m.path());
            let exit = m.unmount();
            assert!(
                exit.status.is_some_and(|s| s.success()),
                "daemon: {}",
                exit.log
            );
            snap
        }
        Writer::Kernel => {
            let opts = format!(
                "upperdir={},workdir={},redirect_dir=on,index=on",
                common::escape_opt_path(&upper),
                common::escape_opt_path(&work)
            );
            let m = common::KernelOverlay::mount(&lowers, &opts);
            make_changes(m.path());
            snapshot(m.path())
        }
    };
    assert!(
        common::sys::lgetxattr(&upper.join("logs"), b"trusted.overlay.redirect")
            .unwrap()
            .is_some(),
        "the renames should have left redirects (the test means to cover them)"
    );
    if matches!(writer, Writer::LayerfsOci) {
        assert!(
            upper.join(".wh.data").exists(),
            "expected OCI whiteouts in the upper"
        );
    }

    let changes: Vec<String> = layerfs::image::inspect::diff(&upper, &lowers)
        .unwrap()
        .iter()
        .map(ToString::to_string)
        .collect();
    assert_eq!(changes, EXPECTED_DIFF, "{writer:?}");
    // The CLI prints the same lines.
    let mut cli: Vec<&Path> = vec![&upper];
    for l in &lowers {
        cli.push(Path::new("--lower"));
        cli.push(l);
    }
    let (code, out, err) = run(&["diff"], &cli);
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.lines().collect::<Vec<_>>(), EXPECTED_DIFF);

    // which over the container's layers follows the redirects.
    let mut container = vec![upper.clone()];
    container.extend(lowers.iter().cloned());
    let which = |p: &str| {
        let rel = layerfs::image::inspect::parse_path(p).unwrap();
        let r = layerfs::image::inspect::which(&rel, &container).unwrap();
        r.provider.map(|e| (e.layer, e.path))
    };
    assert_eq!(
        which("/usr/share/docs2/sub/deep"),
        Some((2, "/usr/share/doc/sub/deep".into()))
    );
    assert_eq!(which("/usr/share/docs2/readme2"), None);
    assert_eq!(which("/logs/x"), Some((1, "/var/log/x".into())));
    assert_eq!(which("/etc/passwd"), Some((0, "/etc/passwd".into())));

    let tar_path = root.join("layer.tar");
    let summary = {
        let out = fs::File::create(&tar_path).unwrap();
        layerfs::image::inspect::write_container_layer_tar(&upper, Some(&work), &lowers, out)
            .unwrap()
    };
    assert_eq!(summary.redirected_dirs, 2, "{summary:?}");
    assert_eq!(summary.hardlinks, 1, "{summary:?}");
    let names = Command::new("tar")
        .arg("-tf")
        .arg(&tar_path)
        .output()
        .unwrap();
    let names = String::from_utf8_lossy(&names.stdout);
    for want in [
        ".wh.data",
        "srv/.wh.keep",
        "usr/share/.wh.doc",
        "var/.wh.log",
        "logs/.wh..wh..opq",
        "logs/x",
        "usr/share/docs2/.wh..wh..opq",
        "usr/share/docs2/sub/deep",
        "opq/.wh..wh..opq",
    ] {
        assert!(
            names.lines().any(|l| l == want),
            "{want} not in tar:\n{names}"
        );
    }
    assert!(!names.contains("readme2"), "{names}");
    assert!(!names.contains("overlay"), "{names}");
    // The same upper gives the same bytes (no lower hard-link group was
    // changed here, so the work dir adds nothing).
    let mut again = Vec::new();
    layerfs::image::inspect::write_layer_tar(&upper, &lowers, &mut again).unwrap();
    assert_eq!(
        again,
        fs::read(&tar_path).unwrap(),
        "tar is not deterministic"
    );

    let st = Command::new("tar")
        .args([
            "-x",
            "--xattrs",
            "--xattrs-include=*",
            "--numeric-owner",
            "-p",
        ])
        .arg("-f")
        .arg(&tar_path)
        .arg("-C")
        .arg(&new)
        .status()
        .unwrap();
    assert!(st.success(), "tar -x failed");
    let mut stack = vec![new.clone()];
    stack.extend(lowers.iter().cloned());
    let after = {
        let m = LayerfsMount::mount_lowers(&stack);
        let snap = snapshot(m.path());
        let exit = m.unmount();
        assert!(
            exit.status.is_some_and(|s| s.success()),
            "daemon: {}",
            exit.log
        );
        snap
    };
    let strip_root = |mut t: Tree| {
        t.entries.remove(&Vec::new());
        t
    };
    let opts = DiffOptions {
        dir_sizes: false,
        ..DiffOptions::default()
    };
    let problems = diff_with(&strip_root(before), &strip_root(after), &opts);
    assert!(
        problems.is_empty(),
        "{writer:?}: the committed layer shows another tree:\n{}",
        problems.join("\n")
    );

    // The committed layer, explained: what it hides and replaces below.
    let report = layerfs::image::inspect::whiteouts(&stack).unwrap();
    // data/big 5000, srv/keep 5, doc/{readme 8, readme2 7, sub/deep 5},
    // var/log/x 4 (the renamed dirs are copies now: their old names hide),
    // opq/old 4.
    assert_eq!(report.total.hidden_bytes, 5033, "{:#?}", report.whiteouts);
    // etc/passwd 26, mod/f 5, lone 9.
    assert_eq!(report.total.shadowed_bytes, 40, "{:#?}", report.shadowed);
    assert_eq!(report.total.wasted_bytes, 5073);
    assert_eq!(report.per_layer[0].layer, 0);
}

#[test]
fn layerfs_upper_diff_and_commit() {
    round_trip(Writer::Layerfs);
}

#[test]
fn layerfs_oci_upper_diff_and_commit() {
    round_trip(Writer::LayerfsOci);
}

#[test]
fn kernel_upper_diff_and_commit() {
    round_trip(Writer::Kernel);
}

/// A lower file with two names (one in a directory only the lower holds),
/// changed through one: the container shows the change under both names
/// (the shared copy lives in its work dir's hard-link index). The layer
/// tar written with the work dir holds both names as one hard-link group;
/// without it, only the name the upper holds.
#[test]
fn lower_hard_link_group_changed_through_one_name() {
    common::require_root();
    let dir = common::tempdir("layerfs-inspect-hl-");
    let root = dir.path().canonicalize().unwrap();
    let (low, upper, work, new) = (
        root.join("low"),
        root.join("upper"),
        root.join("work"),
        root.join("new"),
    );
    file(&low, "h1", b"old\n");
    file(&low, "sub/other", b"other\n");
    fs::create_dir(low.join("sub/deeper")).unwrap();
    fs::hard_link(low.join("h1"), low.join("sub/deeper/h2")).unwrap();
    for d in [&upper, &work, &new] {
        fs::create_dir(d).unwrap();
    }
    let args: Vec<PathBuf> = vec![
        "--lower".into(),
        low.clone(),
        "--upper".into(),
        upper.clone(),
        "--work".into(),
        work.clone(),
    ];
    let before = {
        let m = LayerfsMount::mount_args(&args);
        fs::write(m.path().join("h1"), b"new\n").unwrap();
        let snap = snapshot(m.path());
        let exit = m.unmount();
        assert!(
            exit.status.is_some_and(|s| s.success()),
            "daemon: {}",
            exit.log
        );
        snap
    };
    let tar_path = root.join("layer.tar");
    let out = fs::File::create(&tar_path).unwrap();
    let summary = layerfs::image::inspect::write_container_layer_tar(
        &upper,
        Some(&work),
        std::slice::from_ref(&low),
        out,
    )
    .unwrap();
    assert_eq!((summary.files, summary.hardlinks), (1, 1), "{summary:?}");
    let names = Command::new("tar")
        .arg("-tf")
        .arg(&tar_path)
        .output()
        .unwrap();
    let names = String::from_utf8_lossy(&names.stdout);
    let names: Vec<&str> = names.lines().collect();
    assert_eq!(names, ["h1", "sub", "sub/deeper", "sub/deeper/h2"]);
    // Without the work dir only the upper's name is written.
    let mut plain = Vec::new();
    let summary =
        layerfs::image::inspect::write_layer_tar(&upper, std::slice::from_ref(&low), &mut plain)
            .unwrap();
    assert_eq!((summary.files, summary.hardlinks), (1, 0), "{summary:?}");
    // diff sees the change under both names only with the work dir.
    let lines = |work: Option<&Path>| -> Vec<String> {
        layerfs::image::inspect::diff_container(&upper, work, std::slice::from_ref(&low))
            .unwrap()
            .iter()
            .map(ToString::to_string)
            .collect()
    };
    assert_eq!(
        lines(Some(&work)),
        ["C /h1", "C /sub", "C /sub/deeper", "C /sub/deeper/h2"]
    );
    assert_eq!(lines(None), ["C /h1"]);
    let st = Command::new("tar")
        .args([
            "-x",
            "--xattrs",
            "--xattrs-include=*",
            "--numeric-owner",
            "-p",
            "-f",
        ])
        .arg(&tar_path)
        .arg("-C")
        .arg(&new)
        .status()
        .unwrap();
    assert!(st.success());
    let after = {
        let m = LayerfsMount::mount_lowers(&[new.clone(), low.clone()]);
        let snap = snapshot(m.path());
        let exit = m.unmount();
        assert!(
            exit.status.is_some_and(|s| s.success()),
            "daemon: {}",
            exit.log
        );
        snap
    };
    let opts = DiffOptions {
        dir_sizes: false,
        ..DiffOptions::default()
    };
    let mut before = before;
    let mut after = after;
    before.entries.remove(&Vec::new());
    after.entries.remove(&Vec::new());
    let problems = diff_with(&before, &after, &opts);
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// The known stack as an image: OCI whiteouts (`.wh.keep` for the char
/// device), history `L2`, `L1`, an `ENV` entry that made no layer, `L0`.
/// Returns the store (with the image as `known:1`) and the diff_ids, top
/// first.
fn known_image(root: &Path) -> (PathBuf, Vec<String>) {
    use common::images::{Comp, compress, hex_digest, put_blob, tar_of};
    let layers = known_stack(root);
    fs::remove_file(layers[0].join("keep")).unwrap();
    file(&layers[0], ".wh.keep", b"");
    let layout = root.join("layout");
    let mut descs = Vec::new();
    let mut diff_ids = Vec::new();
    for l in layers.iter().rev() {
        let tar = tar_of(l, false);
        diff_ids.push(hex_digest(&tar));
        let (d, size) = put_blob(&layout, &compress(&tar, Comp::Gzip));
        descs.push(serde_json::json!({
            "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": d, "size": size}));
    }
    let config = serde_json::json!({
        "architecture": "amd64", "os": "linux",
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
        "history": [
            {"created": "2024-01-01T00:00:00Z", "created_by": "L2"},
            {"created": "2024-01-02T00:00:00Z", "created_by": "L1"},
            {"created": "2024-01-03T00:00:00Z", "created_by": "ENV X=1", "empty_layer": true},
            {"created": "2024-01-04T00:00:00Z", "created_by": "L0", "comment": "top"},
        ],
    });
    let (cd, csize) = put_blob(&layout, &serde_json::to_vec(&config).unwrap());
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cd, "size": csize},
        "layers": descs,
    });
    let (md, msize) = put_blob(&layout, &serde_json::to_vec(&manifest).unwrap());
    let index = serde_json::json!({"schemaVersion": 2, "manifests": [{
        "mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": md, "size": msize,
        "annotations": {"org.opencontainers.image.ref.name": "1"}}]});
    fs::write(
        layout.join("oci-layout"),
        r#"{"imageLayoutVersion":"1.0.0"}"#,
    )
    .unwrap();
    fs::write(
        layout.join("index.json"),
        serde_json::to_vec(&index).unwrap(),
    )
    .unwrap();
    let store = root.join("store");
    let out = common::images::import(&store, &layout, "known:1");
    assert!(out.status.success(), "{}", common::images::stderr_of(&out));
    diff_ids.reverse();
    (store, diff_ids)
}

/// `(layer, created_by, diff_id)` of a report's `image_layers`.
fn labels(v: &Value) -> Vec<(u64, Value, Value)> {
    v["image_layers"]
        .as_array()
        .expect("image_layers")
        .iter()
        .map(|l| {
            (
                l["layer"].as_u64().unwrap(),
                l["created_by"].clone(),
                l["diff_id"].clone(),
            )
        })
        .collect()
}

/// `history`, `whiteouts` and `which` over an image of the store give the
/// numbers the known stack gives, with each layer named by its diff_id
/// and history entry; `which PATH` on live mounts (of the image, of a
/// container on it, and a plain `-o lowerdir=` mount) finds their layers
/// through the daemon's record, which goes with the daemon.
#[test]
fn known_image_through_the_cli() {
    common::require_root();
    let dir = common::tempdir("layerfs-inspect-image-");
    let root = dir.path().canonicalize().unwrap();
    let (store, ids) = known_image(&root);
    let st = store.to_str().unwrap();

    let h = json(&["history", "known:1", "--json", "--store", st], &[]);
    let got: Vec<(Value, Value, Value, Value, Value, Value, u64)> = h
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["layer"].clone(),
                e["diff_id"].clone(),
                e["created_by"].clone(),
                e["added"].clone(),
                e["changed"].clone(),
                e["deleted"].clone(),
                e["size"].as_u64().unwrap(),
            )
        })
        .collect();
    let j = |v: serde_json::Value| v;
    assert_eq!(
        got,
        vec![
            (
                j(0.into()),
                j(ids[0].clone().into()),
                j("L0".into()),
                j(1.into()),
                j(0.into()),
                j(1.into()),
                40
            ),
            (
                Value::Null,
                Value::Null,
                j("ENV X=1".into()),
                Value::Null,
                Value::Null,
                Value::Null,
                0
            ),
            (
                j(1.into()),
                j(ids[1].clone().into()),
                j("L1".into()),
                j(1.into()),
                j(1.into()),
                j(3.into()),
                80
            ),
            (
                j(2.into()),
                j(ids[2].clone().into()),
                j("L2".into()),
                j(5.into()),
                j(0.into()),
                j(0.into()),
                1035
            ),
        ]
    );
    assert_eq!(h[0]["comment"], "top");
    assert_eq!(h[1]["empty_layer"], true);
    assert_eq!(h[1]["created"], "2024-01-03T00:00:00Z");

    let want_labels: Vec<(u64, Value, Value)> = (0..3)
        .map(|i| {
            (
                i as u64,
                Value::from(format!("L{i}")),
                Value::from(ids[i].clone()),
            )
        })
        .collect();
    let w = json(&["whiteouts", "known:1", "--json", "--store", st], &[]);
    assert_eq!(labels(&w), want_labels);
    assert_eq!(w["total"]["hidden_bytes"], 1080);
    assert_eq!(w["total"]["wasted_bytes"], 1085);
    let marks: Vec<(u64, &str, &str)> = w["whiteouts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (
                m["layer"].as_u64().unwrap(),
                m["path"].as_str().unwrap(),
                m["mark"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        marks,
        vec![
            (1, "/big", "whiteout"),
            (0, "/keep", "whiteout"),
            (1, "/dir", "opaque")
        ]
    );

    let r = json(
        &[
            "which", "--image", "known:1", "/dir/c", "--json", "--store", st,
        ],
        &[],
    );
    assert_eq!(r["provider"]["layer"], 1);
    assert_eq!(r["provider"]["size"], 30);
    assert_eq!(labels(&r), want_labels);
    let (code, out, err) = run(
        &["which", "--image", "known:1", "/dir/c", "--store", st],
        &[],
    );
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("from layer 1") && out.contains(" L1"), "{out}");
    let (code, out, err) = run(&["history", "known:1", "--store", st], &[]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("ENV X=1") && out.contains("L0 (top)"), "{out}");
    let (code, out, err) = run(&["whiteouts", "known:1", "--store", st], &[]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("/big") && out.contains(" L1"), "{out}");

    // A live mount of the image: `which PATH` finds its layers.
    let runtime = std::env::var_os("LAYERFS_RUNTIME_DIR")
        .filter(|d| !d.is_empty())
        .map_or_else(|| PathBuf::from("/run/layerfs"), PathBuf::from);
    let record_of = |pid: u32| runtime.join("mounts").join(format!("{pid}.json"));
    let m = common::images::mount_image(&store, "known:1", None);
    let pid = m.pid().unwrap();
    assert!(record_of(pid).is_file());
    let r = json(&["which", "--json"], &[&m.path().join("dir/c")]);
    assert_eq!(r["provider"]["layer"], 1);
    let id = layerfs::image::Store::open(&store)
        .unwrap()
        .resolve_image("known:1")
        .unwrap()
        .record
        .id;
    assert_eq!(r["image"], id.as_str());
    assert_eq!(labels(&r), want_labels);
    let r = json(&["which", "--json"], &[&m.path().join("dir/a")]);
    assert_eq!(r["provider"], Value::Null);
    assert_eq!(r["hidden"][1]["reason"]["by"], "opaque");
    let (code, out, err) = run(&["which"], &[&m.path().join("keep")]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("/keep: not in the merged tree"), "{out}");
    assert!(out.contains("whited out by layer 0 at /keep"), "{out}");
    // Nothing of the record shows in the mount.
    let names: Vec<_> = fs::read_dir(m.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, ["dir"]);
    drop(m);
    assert!(!record_of(pid).exists(), "the record outlived its mount");

    // A container on it: its layer comes first.
    let m = common::images::mount_image(&store, "known:1", Some("c"));
    file(m.path(), "dir/new", b"new");
    let r = json(&["which", "--json"], &[&m.path().join("dir/new")]);
    assert_eq!(r["provider"]["layer"], 0);
    assert_eq!(r["image_layers"][0]["upper"], true);
    assert_eq!(r["image_layers"][1]["created_by"], "L0");
    assert_eq!(r["merged_from"], serde_json::json!([]));
    let r = json(&["which", "--json"], &[&m.path().join("dir")]);
    assert_eq!(r["merged_from"], serde_json::json!([0, 1, 2]));
    // diff CONTAINER reads a mounted container too.
    let (code, out, err) = run(&["diff", "c", "--store", st], &[]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.lines().collect::<Vec<_>>(), ["C /dir", "A /dir/new"]);
    drop(m);

    // A plain mount of directories.
    let layers: Vec<PathBuf> = ["l0", "l1", "l2"].iter().map(|l| root.join(l)).collect();
    let m = LayerfsMount::mount(&layers, "");
    let r = json(&["which", "--json"], &[&m.path().join("dir/c")]);
    assert_eq!(r["provider"]["layer"], 1);
    assert_eq!(r["provider"]["dir"], layers[1].to_str().unwrap());
    assert_eq!(r["image"], Value::Null);
    assert_eq!(r["image_layers"][1]["created_by"], Value::Null);
    // Relative to the current directory, too.
    let out = Command::new(common::layerfs_bin())
        .args(["which", "dir/d"])
        .current_dir(m.path())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("/dir/d file from layer 0"), "{text}");
    drop(m);

    // Bad input: one line each.
    for (args, extra, wanted) in [
        (
            vec!["history", "nope", "--store", st],
            vec![],
            "image nope: not found",
        ),
        (
            vec!["whiteouts", "nope", "--store", st],
            vec![],
            "image nope: not found",
        ),
        (
            vec!["which"],
            vec![root.join("l0")],
            "not on a live layerfs mount",
        ),
        (
            vec!["diff", "nope", "--store", st],
            vec![],
            "no container nope",
        ),
        (
            vec!["which", "--image", "nope", "/x", "--store", st],
            vec![],
            "image nope: not found",
        ),
    ] {
        let extra: Vec<&Path> = extra.iter().map(PathBuf::as_path).collect();
        let (code, out, err) = run(&args, &extra);
        assert_eq!(code, 1, "{args:?}: {out}");
        assert_eq!(err.lines().count(), 1, "{args:?}: {err}");
        assert!(err.contains(wanted), "{args:?}: {err}");
    }
    let out = Command::new(common::layerfs_bin())
        .args(["rm", "c", "--store", st])
        .output()
        .unwrap();
    assert!(out.status.success());
}
