//! The kernel's overlayfs is the oracle: for every fixture, what layerfs shows
//! must equal what `mount -t overlay` shows for the same layers.
//!
//! Needs root (mount, mknod, trusted.* xattrs).

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use common::{
    Dialect, DiffOptions, KernelOverlay, LayerfsMount, Tree, diff_with, fixture_names, layer_names,
    lookup_problems, materialize, meta, probe_paths, readdir_problems, snapshot,
};

/// The oracle for one fixture: the kernel's view of its OverlayTrusted form,
/// and the lookup probes derived from its OCI form.
struct Oracle {
    _dir: tempfile::TempDir,
    mount: KernelOverlay,
    tree: Tree,
    probes: BTreeSet<Vec<u8>>,
}

impl Oracle {
    fn new(fixture: &str) -> Oracle {
        let dir = common::tempdir("oracle-");
        let trusted = dir.path().join("trusted");
        let oci = dir.path().join("oci");
        std::fs::create_dir(&trusted).unwrap();
        std::fs::create_dir(&oci).unwrap();
        let layers = materialize(fixture, Dialect::OverlayTrusted, &trusted);
        let probes = probe_paths(&materialize(fixture, Dialect::Oci, &oci));
        let mount = KernelOverlay::mount(&layers, "");
        let mut tree = snapshot(mount.path());
        // Whiteouts the kernel lists but cannot look up are not there.
        tree.drop_listed_but_absent();
        Oracle {
            _dir: dir,
            mount,
            tree,
            probes,
        }
    }

    /// Everything `root` (a mount of this fixture) does differently. With
    /// `kernel`, `root` is a kernel overlayfs mount and gets the same
    /// allowance as the oracle for whiteouts it lists but cannot look up.
    fn problems(&self, root: &Path, opts: &DiffOptions, kernel: bool) -> Vec<String> {
        let mut actual = snapshot(root);
        if kernel {
            actual.drop_listed_but_absent();
        }
        let mut out = diff_with(&self.tree, &actual, opts);
        out.extend(lookup_problems(
            self.mount.path(),
            &self.tree,
            root,
            &self.probes,
        ));
        out
    }
}

/// A fresh copy of `fixture` in `dialect`, in its own temp dir.
fn copy_of(fixture: &str, dialect: Dialect) -> (tempfile::TempDir, Vec<PathBuf>) {
    let dir = common::tempdir(&format!("{dialect}-"));
    let layers = materialize(fixture, dialect, dir.path());
    (dir, layers)
}

/// Options for comparing a mount of `dialect` with the oracle. In OCI form a
/// layer dir holds an extra `.wh..wh..opq` entry where the oracle's has an
/// xattr, so directory sizes may legitimately differ on filesystems whose
/// dir size counts entries (tmpfs).
fn opts_for(dialect: Dialect) -> DiffOptions {
    DiffOptions {
        dir_sizes: dialect != Dialect::Oci,
        ..DiffOptions::default()
    }
}

fn report(failures: &[String]) {
    assert!(
        failures.is_empty(),
        "{} problem(s):\n{}",
        failures.len(),
        failures.join("\n")
    );
}

// ---- the fixtures and the helpers themselves ------------------------------

#[test]
fn fixtures_are_well_formed() {
    let names = fixture_names();
    assert!(
        (6..=9).contains(&names.len()),
        "expected 6-9 fixtures, found {names:?}"
    );
    assert!(
        names.iter().any(|n| n == "demo"),
        "the demo fixture is missing"
    );
    assert!(
        !common::fixtures_dir().join("demo/meta").exists(),
        "demo must mount straight from the checked-in tree: no meta"
    );
    for f in &names {
        let layers = layer_names(f);
        assert!(layers.len() >= 2, "{f}: needs at least two layers");
        for l in &layers {
            assert!(
                l.len() > 3 && l.as_bytes()[..2].iter().all(u8::is_ascii_digit) && &l[2..3] == "-",
                "{f}/{l}: layer dirs are named NN-label"
            );
        }
        let meta_path = common::fixtures_dir().join(f).join("meta");
        if meta_path.exists() {
            let text = std::fs::read_to_string(&meta_path).unwrap();
            if let Err(e) = meta::parse(&text) {
                panic!("{}: {e}", meta_path.display());
            }
        }
    }
}

#[test]
fn meta_format_parses() {
    use meta::{Op, parse, unescape};
    assert_eq!(unescape(r"a\sb\nc\\d\x41\0\t").unwrap(), b"a b\nc\\dA\0\t");
    assert_eq!(unescape("\"\"").unwrap(), b"");
    assert!(unescape(r"a\q").is_err());
    assert!(unescape(r"a\x4").is_err());
    assert!(unescape("a\\").is_err());
    let ops = parse("# c\n\nchmod 4755 00/a\\sb\nchown 1:2 00/x\nfile 00/big 1M\n").unwrap();
    assert_eq!(
        ops,
        vec![
            Op::Chmod(0o4755, b"00/a b".to_vec()),
            Op::Chown(1, 2, b"00/x".to_vec()),
            Op::File(b"00/big".to_vec(), 1 << 20),
        ]
    );
    assert_eq!(parse("bogus x").unwrap_err().line, 1);
    assert_eq!(parse("\nchmod 99 x").unwrap_err().line, 2);
    assert_eq!(parse("link a").unwrap_err().line, 1);
}

#[test]
fn materialize_converts_whiteouts() {
    common::require_root();
    use common::sys::lgetxattr;
    use std::os::unix::fs::FileTypeExt;
    let (_d, oci) = copy_of("whiteouts", Dialect::Oci);
    assert!(oci[2].join("etc/.wh.a.conf").is_file());
    let (_d, t) = copy_of("whiteouts", Dialect::OverlayTrusted);
    let md = std::fs::symlink_metadata(t[2].join("etc/a.conf")).unwrap();
    assert!(md.file_type().is_char_device());
    assert!(!t[2].join("etc/.wh.a.conf").exists());
    let (_d, x) = copy_of("opaque", Dialect::OverlayXwhiteout);
    let cfg = x[1].join("app/config");
    assert_eq!(
        lgetxattr(&cfg, b"trusted.overlay.opaque").unwrap(),
        Some(b"y".to_vec())
    );
    assert!(
        !cfg.join("a.yml").exists(),
        "no xwhiteout inside an opaque dir"
    );
    let (_d, x) = copy_of("whiteouts", Dialect::OverlayXwhiteout);
    let etc = x[2].join("etc");
    assert_eq!(
        lgetxattr(&etc, b"trusted.overlay.opaque").unwrap(),
        Some(b"x".to_vec())
    );
    assert_eq!(
        lgetxattr(&etc.join("a.conf"), b"trusted.overlay.whiteout").unwrap(),
        Some(b"y".to_vec())
    );
    let (_d, u) = copy_of("opaque", Dialect::OverlayUser);
    assert_eq!(
        lgetxattr(&u[1].join("app/config"), b"user.overlay.opaque").unwrap(),
        Some(b"y".to_vec())
    );
}

/// The converters, checked against the kernel alone: the kernel must see the
/// same tree in OverlayUser form (with `-o userxattr`) and in xwhiteout form
/// as in its default form.
#[test]
fn kernel_sees_every_overlay_dialect_alike() {
    common::require_root();
    let mut failures = Vec::new();
    for f in fixture_names() {
        let oracle = Oracle::new(&f);
        for (dialect, opts) in [
            (Dialect::OverlayUser, "userxattr"),
            (Dialect::OverlayXwhiteout, ""),
        ] {
            let (_d, layers) = copy_of(&f, dialect);
            let m = KernelOverlay::mount(&layers, opts);
            for p in oracle.problems(m.path(), &opts_for(dialect), true) {
                failures.push(format!("[{f} / kernel {dialect} {opts}] {p}"));
            }
        }
    }
    report(&failures);
}

/// What the fixtures are for: a few facts about the oracle view, so a broken
/// fixture or converter cannot make both sides agree on nonsense.
#[test]
fn oracle_shows_what_fixtures_promise() {
    common::require_root();
    let exists = |o: &Oracle, p: &str| o.tree.get(p).is_some();
    let content = |o: &Oracle, p: &str| std::fs::read(o.mount.path().join(p)).ok();

    let o = Oracle::new("whiteouts");
    assert!(!exists(&o, "etc/b.conf") || content(&o, "etc/b.conf").unwrap() == b"b=3\n");
    assert!(!exists(&o, "etc/a.conf"));
    assert!(!exists(&o, "etc/new.conf"));
    assert_eq!(content(&o, "var/cache/x").unwrap(), b"x is a file now\n");
    assert!(exists(&o, "opt/README-new") && !exists(&o, "opt/tool"));
    assert!(exists(&o, "srv/www/new.html") && !exists(&o, "srv/www/index.html"));
    assert!(!exists(&o, "srv/www/img/logo.txt") && exists(&o, "srv/www/img/logo2.txt"));

    let o = Oracle::new("opaque");
    let names = |o: &Oracle, dir: &str| -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(o.mount.path().join(dir))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        v.sort();
        v
    };
    assert_eq!(names(&o, "app/config"), ["late.yml", "new.yml"]);
    assert_eq!(names(&o, "app/data"), ["after-opaque"]);
    assert_eq!(names(&o, "app/plugins"), ["p4"]);
    assert_eq!(names(&o, "lib/x"), ["only-mid.txt", "y"]);
    assert_eq!(names(&o, "lib/x/y"), ["top.txt"]);

    let o = Oracle::new("replace");
    assert_eq!(content(&o, "thing").unwrap(), b"file v3\n");
    assert_eq!(names(&o, "dir2link"), ["fresh.txt"]);
    assert_eq!(names(&o, "link2dir"), ["more.txt", "own.txt"]);
    assert_eq!(names(&o, "d2f"), ["again.txt"]);
    assert_eq!(names(&o, "redo"), ["c"]);

    let o = Oracle::new("links");
    let hl: Vec<Vec<Vec<u8>>> = o.tree.hardlinks.iter().cloned().collect();
    assert!(
        hl.contains(&vec![
            b"hl/orig".to_vec(),
            b"hl/sub/third".to_vec(),
            b"other/fourth".to_vec()
        ]),
        "hard-link groups: {hl:?}"
    );
    assert_eq!(o.tree.get("hl/orig").unwrap().nlink, Some(4));

    let o = Oracle::new("special");
    let e = o.tree.get("dirs").unwrap();
    assert_eq!((e.perm, e.uid, e.gid), (0o750, 1000, 100));
    assert_eq!(
        e.xattrs.get(&b"user.dirattr"[..]).map(Vec::as_slice),
        Some(&b"top"[..])
    );
    assert!(!e.xattrs.contains_key(&b"user.baseonly"[..]));
    assert_eq!(o.tree.get("dirs/sticky").unwrap().perm, 0o1777);
    assert_eq!(o.tree.get("bin/su").unwrap().perm, 0o4755);
    assert_eq!(o.tree.get("dev/null").unwrap().rdev, Some((1, 3)));
    assert_eq!(o.tree.get("big").unwrap().size, 1 << 20);
}

/// The comparison is not blind: each kind of change to one copy of the
/// layers shows up as a difference between two kernel mounts.
#[test]
fn diff_notices_changes() {
    common::require_root();
    use common::sys::lsetxattr;
    use std::fs;
    use std::os::unix::fs::PermissionsExt;
    let oracle = Oracle::new("special");
    type Tweak = fn(&[PathBuf]);
    // (what is changed, a word its difference must mention, the change)
    let tweaks: Vec<(&str, &str, Tweak)> = vec![
        ("content", "sha256", |l| {
            fs::write(l[0].join("plain.txt"), "x").unwrap()
        }),
        ("mode", "mode", |l| {
            let p = l[1].join("exec.sh");
            fs::set_permissions(p, fs::Permissions::from_mode(0o700)).unwrap()
        }),
        ("owner", "owner", |l| {
            std::os::unix::fs::lchown(l[1].join("secret"), Some(7), None).unwrap()
        }),
        ("xattr", "xattrs", |l| {
            lsetxattr(&l[1].join("empty-file"), b"user.new", b"1").unwrap()
        }),
        ("mtime", "mtime", |l| {
            common::sys::set_times(&l[1].join("odd-size"), 5, 0).unwrap()
        }),
        ("extra file", "unexpected", |l| {
            fs::write(l[0].join("extra"), "").unwrap()
        }),
        ("missing file", "missing", |l| {
            fs::remove_file(l[1].join("empty-file")).unwrap()
        }),
        ("hard link", "hard-link group", |l| {
            let p = l[0].join("bin/newsu-link");
            fs::remove_file(&p).unwrap();
            fs::copy(l[0].join("bin/newsu"), &p).unwrap();
        }),
        ("file type", "type Symlink", |l| {
            fs::remove_file(l[1].join("dev/loop0")).unwrap();
            std::os::unix::fs::symlink("x", l[1].join("dev/loop0")).unwrap();
        }),
    ];
    for (what, needle, tweak) in tweaks {
        let (_d, layers) = copy_of("special", Dialect::OverlayTrusted);
        tweak(&layers);
        let m = KernelOverlay::mount(&layers, "");
        let found = oracle.problems(m.path(), &DiffOptions::default(), true);
        assert!(
            found.iter().any(|f| f.contains(needle)),
            "changing the {what} went unnoticed; differences found: {found:#?}"
        );
    }
}

/// The kernel itself passes the readdir checks applied to layerfs (validates
/// the checker).
#[test]
fn kernel_readdir_is_consistent() {
    common::require_root();
    let mut failures = Vec::new();
    for f in fixture_names() {
        let oracle = Oracle::new(&f);
        for p in common::readdir_problems_with(oracle.mount.path(), true) {
            failures.push(format!("[{f} / kernel] {p}"));
        }
    }
    report(&failures);
}

// ---- layerfs against the oracle -------------------------------------------

fn layerfs_matches_oracle(dialect: Dialect) {
    common::require_root();
    let mut failures = Vec::new();
    for f in fixture_names() {
        let oracle = Oracle::new(&f);
        let (_d, layers) = copy_of(&f, dialect);
        let m = LayerfsMount::mount(&layers, "");
        let tag = format!("[{f} / layerfs {dialect}]");
        for p in oracle.problems(m.path(), &opts_for(dialect), false) {
            failures.push(format!("{tag} {p}"));
        }
        for p in readdir_problems(m.path()) {
            failures.push(format!("{tag} readdir: {p}"));
        }
        let exit = m.unmount();
        if exit.status.is_none_or(|s| !s.success()) {
            failures.push(format!(
                "{tag} daemon ended with {:?} after unmount; output:\n{}",
                exit.status, exit.log
            ));
        }
    }
    report(&failures);
}

#[test]
fn layerfs_matches_kernel_oci() {
    layerfs_matches_oracle(Dialect::Oci);
}

#[test]
fn layerfs_matches_kernel_overlay_trusted() {
    layerfs_matches_oracle(Dialect::OverlayTrusted);
}

#[test]
fn layerfs_matches_kernel_overlay_user() {
    layerfs_matches_oracle(Dialect::OverlayUser);
}

#[test]
fn layerfs_matches_kernel_overlay_xwhiteout() {
    layerfs_matches_oracle(Dialect::OverlayXwhiteout);
}

/// The `--lower DIR ...` form of the command line gives the same view.
#[test]
fn layerfs_lower_flags_match_kernel() {
    common::require_root();
    let mut failures = Vec::new();
    for f in ["names", "replace"] {
        let oracle = Oracle::new(f);
        let (_d, layers) = copy_of(f, Dialect::Oci);
        let m = LayerfsMount::mount_lowers(&layers);
        for p in oracle.problems(m.path(), &opts_for(Dialect::Oci), false) {
            failures.push(format!("[{f} / layerfs --lower] {p}"));
        }
    }
    report(&failures);
}

/// The checked-in demo mounts as is, with no materializing.
#[test]
fn layerfs_mounts_demo_from_the_checkout() {
    common::require_root();
    let root = common::fixtures_dir().join("demo");
    let layers: Vec<PathBuf> = layer_names("demo")
        .iter()
        .rev()
        .map(|l| root.join(l))
        .collect();
    let m = LayerfsMount::mount(&layers, "");
    let read =
        |p: &str| std::fs::read_to_string(m.path().join(p)).unwrap_or_else(|e| panic!("{p}: {e}"));
    assert!(read("etc/os-release").contains("Layerix"));
    assert_eq!(read("etc/hostname"), "demo-app\n");
    assert!(!m.path().join("etc/motd").exists());
    assert!(!m.path().join("usr/share/doc/base").exists());
    assert!(m.path().join("usr/share/doc/app/README").exists());
    assert!(read("usr/bin/hello").contains("app layer"));
}

/// Not a check: prints what the kernel shows for every fixture.
/// `cargo test --test oracle -- --ignored --nocapture print_oracle_views`
#[test]
#[ignore]
fn print_oracle_views() {
    common::require_root();
    for f in fixture_names() {
        let dir = common::tempdir("oracle-");
        let layers = materialize(&f, Dialect::OverlayTrusted, dir.path());
        let mount = KernelOverlay::mount(&layers, "");
        let mut tree = snapshot(mount.path());
        let dropped = tree.drop_listed_but_absent();
        println!("==== {f}");
        for (p, e) in &tree.entries {
            let extra = match e.kind {
                common::Kind::File => format!("{}b", e.size),
                common::Kind::Symlink => {
                    format!("-> {}", e.target.as_ref().unwrap().escape_ascii())
                }
                common::Kind::CharDev | common::Kind::BlockDev => format!("{:?}", e.rdev),
                _ => String::new(),
            };
            println!(
                "{:<40} {:?} {:04o} {}:{} {extra} {}",
                common::tree::show(p),
                e.kind,
                e.perm,
                e.uid,
                e.gid,
                if e.xattrs.is_empty() {
                    String::new()
                } else {
                    format!("xattrs={}", e.xattrs.len())
                }
            );
        }
        for g in &tree.hardlinks {
            let names: Vec<String> = g.iter().map(|p| common::tree::show(p)).collect();
            println!("hard links: {}", names.join(" = "));
        }
        for p in dropped {
            println!(
                "listed by the kernel, absent for lookup: {}",
                common::tree::show(&p)
            );
        }
    }
}
