//! Hand-made layer dirs whose answers are known exactly. Run as root
//! (character-device whiteouts, trusted.* xattrs), like the other tests.

use std::fs;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::process::Command;

use super::*;

fn file(root: &Path, rel: &str, size: usize) {
    let p = root.join(rel);
    fs::create_dir_all(p.parent().unwrap()).unwrap();
    fs::write(p, vec![b'x'; size]).unwrap();
}

fn dir(root: &Path, rel: &str) {
    fs::create_dir_all(root.join(rel)).unwrap();
}

fn chardev_whiteout(root: &Path, rel: &str) {
    nix::sys::stat::mknod(
        &root.join(rel),
        nix::sys::stat::SFlag::S_IFCHR,
        nix::sys::stat::Mode::from_bits_truncate(0o600),
        0,
    )
    .unwrap();
}

fn setfattr(path: &Path, name: &str, value: &str) {
    let st = Command::new("setfattr")
        .args(["-h", "-n", name, "-v", value])
        .arg(path)
        .status()
        .unwrap();
    assert!(st.success(), "setfattr {name} on {}", path.display());
}

/// layer 2 (bottom): /big 1000, /dir/{a 10,b 20}, /keep 5, /hl1 = /hl2
///   100 (one inode), /sub/x 7
/// layer 1 (OCI): .wh.big, dir/.wh..wh..opq, dir/c 30, keep 50, .wh.hl1,
///   .wh.hl2, .wh.sub
/// layer 0 (overlay): keep as a 0/0 char device, dir/d 40, new 3
fn stack(root: &Path) -> Vec<PathBuf> {
    let (l0, l1, l2) = (root.join("l0"), root.join("l1"), root.join("l2"));
    file(&l2, "big", 1000);
    file(&l2, "dir/a", 10);
    file(&l2, "dir/b", 20);
    file(&l2, "keep", 5);
    file(&l2, "hl1", 100);
    fs::hard_link(l2.join("hl1"), l2.join("hl2")).unwrap();
    file(&l2, "sub/x", 7);
    file(&l1, ".wh.big", 0);
    file(&l1, "dir/.wh..wh..opq", 0);
    file(&l1, "dir/c", 30);
    file(&l1, "keep", 50);
    file(&l1, ".wh.hl1", 0);
    file(&l1, ".wh.hl2", 0);
    file(&l1, ".wh.sub", 0);
    dir(&l0, "dir");
    chardev_whiteout(&l0, "keep");
    file(&l0, "dir/d", 40);
    file(&l0, "new", 3);
    vec![l0, l1, l2]
}

fn tmp() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("layerfs-inspect-unit-")
        .tempdir()
        .unwrap()
}

#[test]
fn whiteouts_of_a_known_stack() {
    let t = tmp();
    let layers = stack(t.path());
    let r = whiteouts(&layers).unwrap();
    let got: Vec<(usize, &str, MarkKind, usize, u64)> = r
        .whiteouts
        .iter()
        .map(|w| {
            (
                w.layer,
                w.path.as_str(),
                w.mark,
                w.hides.len(),
                w.hidden_bytes,
            )
        })
        .collect();
    use MarkKind::{Opaque, Whiteout};
    assert_eq!(
        got,
        vec![
            (1, "/big", Whiteout, 1, 1000),
            (1, "/hl1", Whiteout, 1, 100),
            (1, "/hl2", Whiteout, 1, 100),
            (0, "/keep", Whiteout, 1, 50),
            (1, "/dir", Opaque, 2, 30),
            (1, "/sub", Whiteout, 2, 7),
        ]
    );
    let sub = r.whiteouts.iter().find(|w| w.path == "/sub").unwrap();
    assert_eq!(
        sub.hides,
        vec![
            HiddenEntry {
                layer: 2,
                path: "/sub".into(),
                kind: "dir",
                size: 0
            },
            HiddenEntry {
                layer: 2,
                path: "/sub/x".into(),
                kind: "file",
                size: 7
            },
        ]
    );
    assert_eq!(r.shadowed.len(), 1);
    assert_eq!(
        (r.shadowed[0].layer, r.shadowed[0].path.as_str()),
        (1, "/keep")
    );
    assert_eq!(r.shadowed[0].shadowed_bytes, 5);
    let per: Vec<(usize, usize, usize, usize, u64, usize, u64)> = r
        .per_layer
        .iter()
        .map(|t| {
            (
                t.layer,
                t.whiteouts,
                t.opaque_dirs,
                t.hidden_entries,
                t.hidden_bytes,
                t.shadowed_entries,
                t.shadowed_bytes,
            )
        })
        .collect();
    // The hard-linked pair counts once in layer 1's total.
    assert_eq!(
        per,
        vec![
            (1, 4, 1, 7, 1137, 1, 5),
            (0, 1, 0, 1, 50, 0, 0),
            (2, 0, 0, 0, 0, 0, 0)
        ]
    );
    let tot = &r.total;
    assert_eq!(
        (
            tot.whiteouts,
            tot.opaque_dirs,
            tot.hidden_entries,
            tot.hidden_bytes,
            tot.shadowed_entries,
            tot.shadowed_bytes,
            tot.wasted_bytes
        ),
        (5, 1, 8, 1187, 1, 5, 1192)
    );
}

#[test]
fn history_of_a_known_stack() {
    let t = tmp();
    let layers = stack(t.path());
    let h = history(&layers).unwrap();
    let got: Vec<(usize, u64, u64, u64, u64)> = h
        .iter()
        .map(|l| (l.layer, l.added, l.changed, l.deleted, l.size))
        .collect();
    assert_eq!(
        got,
        vec![(0, 2, 0, 1, 43), (1, 1, 1, 6, 80), (2, 9, 0, 0, 1142)]
    );
}

#[test]
fn which_explains_hidden_and_merged() {
    let t = tmp();
    let layers = stack(t.path());
    let p = |s: &str| parse_path(s).unwrap();

    let r = which(&p("/dir/a"), &layers).unwrap();
    assert!(r.provider.is_none());
    let opaque = Some(HideReason::Opaque {
        layer: 1,
        path: "/dir".into(),
    });
    let hidden: Vec<_> = r
        .hidden
        .iter()
        .map(|h| (h.layer, h.path.as_str(), h.kind, h.size, h.reason.clone()))
        .collect();
    assert_eq!(
        hidden,
        vec![
            (2, "/dir", "dir", 0, opaque.clone()),
            (2, "/dir/a", "file", 10, opaque)
        ]
    );

    let r = which(&p("/dir"), &layers).unwrap();
    assert_eq!(r.provider.as_ref().map(|e| e.layer), Some(0));
    assert_eq!(r.merged_from, vec![0, 1]);
    assert_eq!(r.hidden.len(), 1);

    let r = which(&p("/dir/c"), &layers).unwrap();
    let prov = r.provider.unwrap();
    assert_eq!((prov.layer, prov.kind, prov.size), (1, "file", 30));

    let r = which(&p("keep"), &layers).unwrap();
    assert!(r.provider.is_none());
    let wh = Some(HideReason::Whiteout {
        layer: 0,
        path: "/keep".into(),
    });
    let hidden: Vec<_> = r
        .hidden
        .iter()
        .map(|h| (h.layer, h.size, h.reason.clone()))
        .collect();
    assert_eq!(hidden, vec![(1, 50, wh.clone()), (2, 5, wh)]);

    let r = which(&p("/sub/x"), &layers).unwrap();
    assert!(r.provider.is_none());
    assert_eq!(r.hidden.len(), 2);
    assert!(r.hidden.iter().all(|h| h.reason
        == Some(HideReason::Whiteout {
            layer: 1,
            path: "/sub".into()
        })));

    let r = which(&p("/"), &layers).unwrap();
    assert_eq!(r.merged_from, vec![0, 1, 2]);
}

#[test]
fn a_file_over_a_directory_hides_its_content() {
    let t = tmp();
    let (top, bottom) = (t.path().join("top"), t.path().join("bottom"));
    file(&bottom, "d/f", 4);
    file(&top, "d", 1);
    let layers = vec![top, bottom];
    let r = which(&parse_path("/d/f").unwrap(), &layers).unwrap();
    assert!(r.provider.is_none());
    let reasons: Vec<_> = r.hidden.iter().map(|h| h.reason.clone()).collect();
    assert_eq!(
        reasons,
        vec![
            Some(HideReason::Shadowed { layer: 0 }),
            Some(HideReason::NonDirectory {
                layer: 0,
                path: "/d".into()
            })
        ]
    );
    let w = whiteouts(&layers).unwrap();
    assert_eq!(w.total.shadowed_entries, 2);
    assert_eq!(w.total.shadowed_bytes, 4);
    let h = history(&layers).unwrap();
    assert_eq!((h[0].added, h[0].changed, h[0].deleted), (0, 1, 0));
}

#[test]
fn a_redirected_directory_is_moved_not_hidden() {
    let t = tmp();
    let (up, low) = (t.path().join("up"), t.path().join("low"));
    file(&low, "old/f", 9);
    dir(&up, "new");
    setfattr(&up.join("new"), "trusted.overlay.redirect", "/old");
    chardev_whiteout(&up, "old");
    let layers = vec![up.clone(), low.clone()];
    let w = whiteouts(&layers).unwrap();
    assert_eq!(w.whiteouts.len(), 1);
    assert!(w.whiteouts[0].hides.is_empty(), "{:?}", w.whiteouts[0]);
    assert_eq!(w.total.wasted_bytes, 0);
    let h = history(&layers).unwrap();
    assert_eq!((h[0].added, h[0].changed, h[0].deleted), (1, 0, 1));

    // which follows the redirect into the layer below.
    let r = which(&parse_path("/new/f").unwrap(), &layers).unwrap();
    let prov = r.provider.unwrap();
    assert_eq!(
        (prov.layer, prov.path.as_str(), prov.size),
        (1, "/old/f", 9)
    );
    let r = which(&parse_path("/new").unwrap(), &layers).unwrap();
    assert_eq!(r.merged_from, vec![0, 1]);
    // A relative redirect names a sibling in the lower layer.
    setfattr(&up.join("new"), "trusted.overlay.redirect", "old");
    let r = which(&parse_path("/new/f").unwrap(), &layers).unwrap();
    assert_eq!(r.provider.map(|p| p.path), Some("/old/f".to_string()));
    assert_eq!(
        whiteouts(&layers).unwrap().total.wasted_bytes,
        0,
        "relative redirect"
    );
    setfattr(&up.join("new"), "trusted.overlay.redirect", "a/b");
    assert!(which(&parse_path("/new/f").unwrap(), &layers).is_err());
    setfattr(&up.join("new"), "trusted.overlay.redirect", "/old");

    let changes: Vec<String> = diff(&up, &[low])
        .unwrap()
        .iter()
        .map(|c| c.to_string())
        .collect();
    assert_eq!(changes, vec!["A /new", "A /new/f", "D /old"]);
}

#[test]
fn diff_lists_parents_and_sorts_by_path() {
    let t = tmp();
    let (up, low) = (t.path().join("up"), t.path().join("low"));
    file(&low, "a/b/keep", 1);
    file(&low, "a-b", 1);
    file(&low, "gone/x", 1);
    symlink("keep", low.join("a/b/link")).unwrap();
    // The upper copies of /a and /a/b carry the lower's metadata.
    dir(&up, "a/b");
    for d in ["a", "a/b"] {
        let st = fs::metadata(low.join(d)).unwrap();
        fs::set_permissions(up.join(d), st.permissions()).unwrap();
    }
    file(&up, "a/b/new", 2);
    chardev_whiteout(&up, "gone");
    file(&up, ".wh.a-b", 0);
    let changes: Vec<String> = diff(&up, &[low])
        .unwrap()
        .iter()
        .map(|c| c.to_string())
        .collect();
    assert_eq!(
        changes,
        // Byte order, as docker sorts: `-` comes before `/`.
        vec!["C /a", "D /a-b", "C /a/b", "A /a/b/new", "D /gone"]
    );
}

#[test]
fn bad_input_names_the_layer() {
    let t = tmp();
    let missing = t.path().join("missing");
    let e = whiteouts(std::slice::from_ref(&missing)).unwrap_err();
    assert!(e.to_string().contains("missing"), "{e}");
    assert!(whiteouts(&[]).is_err());
    assert!(parse_path("/a/../b").is_none());
}

#[test]
fn pax_records_count_their_own_length() {
    let rec = tar_writer_pax_record(b"path", b"a");
    assert_eq!(rec, b"9 path=a\n");
    let long = vec![b'x'; 95];
    let rec = tar_writer_pax_record(b"path", &long);
    assert_eq!(rec.len(), 105);
    assert!(rec.starts_with(b"105 path="));
}

fn tar_writer_pax_record(k: &[u8], v: &[u8]) -> Vec<u8> {
    super::tar_writer::pax_record(k, v)
}

/// Every entry of a tar: (path, type, link target, pax records, size).
type TarEntry = (
    Vec<u8>,
    tar::EntryType,
    Option<Vec<u8>>,
    Vec<(Vec<u8>, Vec<u8>)>,
    u64,
);

fn read_tar(bytes: &[u8]) -> Vec<TarEntry> {
    let mut ar = tar::Archive::new(bytes);
    let mut out = Vec::new();
    for e in ar.entries().unwrap() {
        let mut e = e.unwrap();
        let pax: Vec<(Vec<u8>, Vec<u8>)> = match e.pax_extensions().unwrap() {
            Some(exts) => exts
                .map(|x| {
                    let x = x.unwrap();
                    (x.key_bytes().to_vec(), x.value_bytes().to_vec())
                })
                .collect(),
            None => Vec::new(),
        };
        out.push((
            e.path_bytes().into_owned(),
            e.header().entry_type(),
            e.link_name_bytes().map(|l| l.into_owned()),
            pax,
            e.header().size().unwrap(),
        ));
    }
    out
}

#[test]
fn layer_tar_edge_forms() {
    let t = tmp();
    let (up, low) = (t.path().join("up"), t.path().join("low"));
    dir(&low, "");
    let long_dir = "d".repeat(120);
    let long = format!("{long_dir}/{}", "f".repeat(120));
    file(&up, &long, 3);
    let target = "t".repeat(150);
    symlink(&target, up.join("longlink")).unwrap();
    nix::sys::stat::mknod(
        &up.join("null"),
        nix::sys::stat::SFlag::S_IFCHR,
        nix::sys::stat::Mode::from_bits_truncate(0o666),
        nix::sys::stat::makedev(1, 3),
    )
    .unwrap();
    file(&up, "x", 1);
    setfattr(&up.join("x"), "user.bin", "0x00ff");
    setfattr(&up.join("x"), "trusted.overlay.origin", "0x00");
    Command::new("touch")
        .args(["-h", "-d", "@1577934245.123456789"])
        .arg(up.join("x"))
        .status()
        .unwrap();
    let mut bytes = Vec::new();
    let summary = write_layer_tar(&up, std::slice::from_ref(&low), &mut bytes).unwrap();
    assert_eq!(
        (
            summary.files,
            summary.dirs,
            summary.symlinks,
            summary.specials
        ),
        (2, 1, 1, 1)
    );
    let entries = read_tar(&bytes);
    let paths: Vec<String> = entries
        .iter()
        .map(|e| String::from_utf8_lossy(&e.0).into_owned())
        .collect();
    assert_eq!(
        paths,
        vec![
            long_dir.clone(),
            long.clone(),
            "longlink".into(),
            "null".into(),
            "x".into()
        ]
    );
    assert_eq!(entries[1].1, tar::EntryType::Regular);
    assert_eq!(entries[1].4, 3);
    assert_eq!(entries[2].1, tar::EntryType::Symlink);
    assert_eq!(entries[2].2.as_deref(), Some(target.as_bytes()));
    assert_eq!(entries[3].1, tar::EntryType::Char);
    let x = &entries[4];
    assert!(
        x.3.contains(&(b"SCHILY.xattr.user.bin".to_vec(), vec![0u8, 0xff])),
        "{:?}",
        x.3
    );
    assert!(
        !x.3.iter()
            .any(|(k, _)| k.windows(7).any(|w| w == b"overlay"))
    );
    assert!(
        x.3.contains(&(b"mtime".to_vec(), b"1577934245.123456789".to_vec())),
        "{:?}",
        x.3
    );
}

#[test]
fn a_name_removed_and_provided_by_one_layer_is_changed() {
    let t = tmp();
    let (top, bottom) = (t.path().join("top"), t.path().join("bottom"));
    file(&bottom, "x", 3);
    file(&bottom, "o/a", 1);
    file(&bottom, "o/b", 1);
    // OCI allows a whiteout and an object of one name in one layer.
    file(&top, ".wh.x", 0);
    file(&top, "x/y", 4);
    file(&top, "o/.wh..wh..opq", 0);
    file(&top, "o/a", 2);
    let layers = vec![top, bottom];
    let h = history(&layers).unwrap();
    assert_eq!(
        (h[0].added, h[0].changed, h[0].deleted, h[0].size),
        (1, 2, 1, 6)
    );
    let w = whiteouts(&layers).unwrap();
    let got: Vec<(&str, MarkKind, u64)> = w
        .whiteouts
        .iter()
        .map(|m| (m.path.as_str(), m.mark, m.hidden_bytes))
        .collect();
    assert_eq!(
        got,
        vec![("/x", MarkKind::Whiteout, 3), ("/o", MarkKind::Opaque, 2)]
    );
    let r = which(&parse_path("/x/y").unwrap(), &layers).unwrap();
    assert_eq!(r.provider.map(|p| (p.layer, p.size)), Some((0, 4)));
    let r = which(&parse_path("/x").unwrap(), &layers).unwrap();
    assert_eq!(
        r.hidden
            .iter()
            .map(|h| h.reason.clone())
            .collect::<Vec<_>>(),
        vec![Some(HideReason::Whiteout {
            layer: 0,
            path: "/x".into()
        })]
    );
}

/// A metacopy file (metacopy=on: metadata copied up, data left below) goes
/// into the layer with its data, read where the union reads it: by its
/// name, or through its redirect (relative or absolute).
#[test]
fn metacopy_files_are_written_with_their_data() {
    let t = tmp();
    let (up, low) = (t.path().join("up"), t.path().join("low"));
    for (rel, data) in [
        ("f", "data of f\n"),
        ("old", "renamed\n"),
        ("d/far", "far\n"),
    ] {
        let p = low.join(rel);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(p, data).unwrap();
    }
    dir(&up, "e");
    for (rel, len, redirect) in [
        ("f", 10, None),
        ("new", 8, Some("old")),
        ("e/moved", 4, Some("/d/far")),
    ] {
        let p = up.join(rel);
        fs::File::create(&p).unwrap().set_len(len).unwrap();
        let st = Command::new("setfattr")
            .args(["-n", "trusted.overlay.metacopy"])
            .arg(&p)
            .status()
            .unwrap();
        assert!(st.success());
        if let Some(r) = redirect {
            setfattr(&p, "trusted.overlay.redirect", r);
        }
    }
    let mut bytes = Vec::new();
    write_layer_tar(&up, std::slice::from_ref(&low), &mut bytes).unwrap();
    let mut ar = tar::Archive::new(bytes.as_slice());
    let mut files = Vec::new();
    for e in ar.entries().unwrap() {
        let mut e = e.unwrap();
        if e.header().entry_type() != tar::EntryType::Regular {
            continue;
        }
        let path = String::from_utf8_lossy(&e.path_bytes()).into_owned();
        let mut data = String::new();
        std::io::Read::read_to_string(&mut e, &mut data).unwrap();
        files.push((path, data));
    }
    let want = [
        ("e/moved", "far\n"),
        ("f", "data of f\n"),
        ("new", "renamed\n"),
    ];
    let want: Vec<(String, String)> = want
        .iter()
        .map(|(p, d)| (p.to_string(), d.to_string()))
        .collect();
    assert_eq!(files, want);
}
