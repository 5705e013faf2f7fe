use super::validate::{parse_mountinfo, unescape_octal};
use super::*;
use std::fs;
use std::os::unix::fs::PermissionsExt;

fn o(s: &str) -> Vec<String> {
    vec![s.to_string()]
}

fn p(s: &str) -> PathBuf {
    PathBuf::from(s)
}

fn err(opts: &[&str]) -> OptionsError {
    let opts: Vec<String> = opts.iter().map(|s| s.to_string()).collect();
    parse_mount_options(&opts).expect_err("should fail")
}

// ---- parsing ----

#[test]
fn lowers_are_top_first() {
    let s = parse_mount_options(&o("lowerdir=/top:/mid:/bottom")).unwrap();
    assert_eq!(s.lowers, vec![p("/top"), p("/mid"), p("/bottom")]);
    assert_eq!(s.upper, None);
    assert!(!s.read_only);
    assert_eq!(s.whiteout, WhiteoutFormat::Overlay);
}

#[test]
fn escapes() {
    let s = parse_mount_options(&o(
        r"lowerdir=/a\:b:/c\,d:/e\\f,upperdir=/u\,1,workdir=/w\:2",
    ))
    .unwrap();
    assert_eq!(s.lowers, vec![p("/a:b"), p("/c,d"), p(r"/e\f")]);
    assert_eq!(s.upper, Some(p("/u,1")));
    assert_eq!(s.work, Some(p("/w:2")));
    // An escaped backslash does not escape the separator after it.
    let s = parse_mount_options(&o(r"lowerdir=/a\\:/b\\,ro")).unwrap();
    assert_eq!(s.lowers, vec![p(r"/a\"), p(r"/b\")]);
    assert!(s.read_only);
    // Any escaped character stands for itself.
    let s = parse_mount_options(&o(r"lowerdir=/x\y")).unwrap();
    assert_eq!(s.lowers, vec![p("/xy")]);
}

#[test]
fn comma_escaped_path_stays_one_option() {
    let s = parse_mount_options(&o(r"lowerdir=/data/a\,rw\,b,ro")).unwrap();
    assert_eq!(s.lowers, vec![p("/data/a,rw,b")]);
    assert!(s.read_only);
}

#[test]
fn several_o_arguments_add_up() {
    let opts = vec![
        "lowerdir=/l1:/l2".to_string(),
        "upperdir=/u,workdir=/w".to_string(),
        "ro,whiteout=oci".to_string(),
        "allow_other,default_permissions,userxattr".to_string(),
    ];
    let s = parse_mount_options(&opts).unwrap();
    assert_eq!(s.lowers, vec![p("/l1"), p("/l2")]);
    assert_eq!(s.upper, Some(p("/u")));
    assert_eq!(s.work, Some(p("/w")));
    assert!(s.read_only);
    assert_eq!(s.whiteout, WhiteoutFormat::Oci);
    assert!(s.allow_other && s.default_permissions && s.userxattr);
}

#[test]
fn last_ro_rw_wins_and_empty_options_are_skipped() {
    let s = parse_mount_options(&o("ro,lowerdir=/l,,rw,")).unwrap();
    assert!(!s.read_only);
    let s = parse_mount_options(&["rw".into(), "lowerdir=/l".into(), "ro".into()]).unwrap();
    assert!(s.read_only);
    let s = parse_mount_options(&o("whiteout=oci,lowerdir=/l,whiteout=overlay")).unwrap();
    assert_eq!(s.whiteout, WhiteoutFormat::Overlay);
}

#[test]
fn kernel_and_generic_options_are_accepted() {
    let s = parse_mount_options(&o(
        "lowerdir=/l,upperdir=/u,workdir=/w,redirect_dir=nofollow,index=off,xino=auto,\
         metacopy=off,nfs_export=off,uuid=null,userxattr,volatile,defaults,auto,noauto,\
         nofail,user,user=bob,nouser,users,_netdev,x-systemd.automount,\
         x-systemd.device-timeout=10,comment=hello world,suid,nosuid,dev,nodev,exec,\
         noexec,atime,noatime,relatime,strictatime,nodiratime,sync,async,dirsync",
    ))
    .unwrap();
    assert_eq!(
        s.mount_flags,
        [
            "suid",
            "nosuid",
            "dev",
            "nodev",
            "exec",
            "noexec",
            "atime",
            "noatime",
            "relatime",
            "strictatime",
            "nodiratime",
            "sync",
            "async",
            "dirsync"
        ]
    );
    assert_eq!(s.redirect_dir, crate::union::RedirectDir::NoFollow);
    assert!(s.userxattr);
    assert!(!s.metacopy);
}

#[test]
fn metacopy_takes_effect_and_needs_redirects() {
    let on = parse_mount_options(&o("lowerdir=/l,metacopy=on")).unwrap();
    assert!(on.metacopy);
    assert_eq!(on.redirect_dir, crate::union::RedirectDir::On);
    let off = parse_mount_options(&o("lowerdir=/l,metacopy=on,metacopy=off")).unwrap();
    assert!(!off.metacopy);
    assert!(
        parse_mount_options(&o("lowerdir=/l,redirect_dir=on,metacopy=on"))
            .unwrap()
            .metacopy
    );
    let err = parse_mount_options(&o("lowerdir=/l,metacopy=on,redirect_dir=follow"))
        .unwrap_err()
        .to_string();
    assert_eq!(
        err,
        "metacopy=on and a redirect_dir other than on cannot be used together"
    );
}

#[test]
fn lowerdir_plus_appends_top_first() {
    let s = parse_mount_options(&o(r"lowerdir+=/a:b,lowerdir+=/c")).unwrap();
    assert_eq!(s.lowers, vec![p("/a:b"), p("/c")]);
    assert!(matches!(
        err(&["lowerdir+=/a,lowerdir=/b"]),
        OptionsError::Unsupported { .. }
    ));
    assert!(matches!(
        err(&["lowerdir=/a,lowerdir+=/b"]),
        OptionsError::Unsupported { .. }
    ));
}

#[test]
fn spec_from_lowers_matches_o_form() {
    let a = spec_from_lowers(
        vec![p("/top"), p("/bottom")],
        Some(p("/u")),
        Some(p("/w")),
        &o("ro,whiteout=oci"),
    )
    .unwrap();
    let b = parse_mount_options(&o(
        "lowerdir=/top:/bottom,upperdir=/u,workdir=/w,ro,whiteout=oci",
    ))
    .unwrap();
    assert_eq!(a, b);
    // Upper and work may come from either side, but not both.
    let c = spec_from_lowers(vec![p("/top")], Some(p("/u")), None, &o("workdir=/w")).unwrap();
    assert_eq!(c.work, Some(p("/w")));
    // Paths from flags are taken literally: no escapes, colons allowed.
    let d = spec_from_lowers(vec![p(r"/a:b\c")], None, None, &[]).unwrap();
    assert_eq!(d.lowers, vec![p(r"/a:b\c")]);
}

#[test]
fn spec_from_lowers_errors() {
    let e = spec_from_lowers(vec![p("/a")], None, None, &o("lowerdir=/b")).unwrap_err();
    assert_eq!(
        e.to_string(),
        "--lower and -o lowerdir= cannot be used together"
    );
    let e = spec_from_lowers(
        vec![p("/a")],
        Some(p("/u")),
        Some(p("/w")),
        &o("upperdir=/v"),
    )
    .unwrap_err();
    assert!(e.to_string().contains("--upper and -o upperdir="), "{e}");
    let e = spec_from_lowers(vec![p("/a")], None, Some(p("/w")), &[]).unwrap_err();
    assert_eq!(e.to_string(), "workdir /w needs an upperdir as well");
    let e = spec_from_lowers(vec![p("")], None, None, &[]).unwrap_err();
    assert_eq!(e, OptionsError::EmptyValue("--lower".into()));
    let e = spec_from_lowers(Vec::new(), Some(p("/u")), Some(p("/w")), &[]).unwrap_err();
    assert_eq!(e, OptionsError::NoLower);
}

#[test]
fn parse_errors_name_the_option() {
    let cases: &[(&[&str], &str)] = &[
        (&["lowerdir=/a,foo"], "unknown mount option 'foo'"),
        (&["lowerdir=/a,foo=bar"], "unknown mount option 'foo'"),
        (
            &["lowerdir=/a", "loop"],
            "mount option 'loop' is not supported",
        ),
        (&["lowerdir=/a,datadir+=/d"], "mount option 'datadir+'"),
        (
            &["lowerdir="],
            "mount option 'lowerdir=' has an empty value",
        ),
        (&["lowerdir"], "mount option 'lowerdir' needs a value"),
        (&["lowerdir=/a::/b"], "lowerdir=/a::/b: empty layer path"),
        (&["lowerdir=:/a"], "lowerdir=:/a: empty layer path"),
        (&["lowerdir=/a:"], "lowerdir=/a:: empty layer path"),
        (
            &["lowerdir=/a", "lowerdir=/b"],
            "'lowerdir' is given more than once",
        ),
        (
            &["lowerdir=/a,upperdir=/u,upperdir=/v,workdir=/w"],
            "'upperdir' is given more than once",
        ),
        (
            &["lowerdir=/a,upperdir=/u,workdir=/w,workdir=/x"],
            "'workdir' is given more than once",
        ),
        (&["lowerdir=/a,upperdir="], "'upperdir=' has an empty value"),
        (
            &["lowerdir=/a,ro=1"],
            "mount option 'ro' takes no value (got '1')",
        ),
        (
            &["lowerdir=/a,nosuid=yes"],
            "mount option 'nosuid' takes no value",
        ),
        (
            &["lowerdir=/a,whiteout=docker"],
            "bad value 'docker' for mount option 'whiteout' (expected overlay or oci)",
        ),
        (
            &["lowerdir=/a,whiteout"],
            "mount option 'whiteout' needs a value",
        ),
        (
            &["lowerdir=/a,redirect_dir=maybe"],
            "bad value 'maybe' for mount option 'redirect_dir'",
        ),
        (
            &["lowerdir=/a,index=1"],
            "bad value '1' for mount option 'index'",
        ),
        (
            &["lowerdir=/a,xino=yes"],
            "bad value 'yes' for mount option 'xino'",
        ),
        (
            &["lowerdir=/a,metacopy=true"],
            "bad value 'true' for mount option 'metacopy'",
        ),
        (
            &["lowerdir=/a,nfs_export=no"],
            "bad value 'no' for mount option 'nfs_export'",
        ),
        (
            &["lowerdir=/a,uuid=random"],
            "bad value 'random' for mount option 'uuid'",
        ),
        (
            &["lowerdir=/a,volatile"],
            "mount option 'volatile' needs upperdir and workdir",
        ),
        (
            &[r"lowerdir=/a\"],
            "mount option 'lowerdir' ends in a lone backslash",
        ),
        (
            &["lowerdir=/a,upperdir=/u"],
            "upperdir /u needs a workdir as well",
        ),
        (
            &["lowerdir=/a,workdir=/w"],
            "workdir /w needs an upperdir as well",
        ),
        (&[], "no lower layer given"),
        (&["ro"], "no lower layer given"),
    ];
    for (opts, want) in cases {
        let msg = err(opts).to_string();
        assert!(msg.contains(want), "{opts:?}: got {msg:?}, want {want:?}");
        assert!(!msg.contains('\n'), "{msg:?}");
    }
}

#[test]
fn messages_stay_on_one_line() {
    let e = err(&["lowerdir=/a,bad\nname"]);
    assert_eq!(e.to_string(), r"unknown mount option 'bad\nname'");
    let e = OptionsError::Path {
        role: Role::Lower,
        path: p("/x\ny"),
        problem: PathProblem::NotFound,
    };
    assert_eq!(e.to_string(), r"lowerdir /x\ny: no such file or directory");
}

// ---- mountinfo ----

#[test]
fn mountinfo_is_parsed_and_unescaped() {
    let info = b"22 1 0:21 / /proc rw,nosuid shared:5 - proc proc rw\n\
        36 35 98:0 /x /mnt/with\\040space\\134back rw master:1 shared:2 - fuse.layerfs layerfs rw\n\
        37 35 98:0 / /plain rw - tmpfs tmpfs rw\n\
        garbage\n";
    let m = parse_mountinfo(info);
    assert_eq!(
        m,
        vec![
            (p("/proc"), "proc".to_string()),
            (p(r"/mnt/with space\back"), "fuse.layerfs".to_string()),
            (p("/plain"), "tmpfs".to_string()),
        ]
    );
    assert_eq!(unescape_octal(br"a\011b\012\999\0"), b"a\tb\n\\999\\0");
    assert!(
        mount_points()
            .unwrap()
            .iter()
            .any(|(p, _)| p == Path::new("/"))
    );
}

// ---- validation ----

struct Fixture {
    tmp: tempfile::TempDir,
}

impl Fixture {
    fn new() -> Self {
        Fixture {
            tmp: tempfile::tempdir().unwrap(),
        }
    }
    fn dir(&self, rel: &str) -> PathBuf {
        let p = self.tmp.path().join(rel);
        fs::create_dir_all(&p).unwrap();
        p
    }
    fn path(&self, rel: &str) -> PathBuf {
        self.tmp.path().join(rel)
    }
}

fn spec(lowers: &[&Path], upper: Option<&Path>, work: Option<&Path>) -> MountSpec {
    MountSpec {
        lowers: lowers.iter().map(|p| p.to_path_buf()).collect(),
        upper: upper.map(Path::to_path_buf),
        work: work.map(Path::to_path_buf),
        ..MountSpec::default()
    }
}

fn verr(s: &MountSpec, mnt: &Path) -> String {
    let msg = validate(s, mnt).expect_err("should fail").to_string();
    assert!(!msg.contains('\n'), "{msg:?}");
    msg
}

#[test]
fn validate_ok_read_only() {
    let f = Fixture::new();
    let (a, b, m) = (f.dir("a"), f.dir("b"), f.dir("m"));
    // A relative, non-canonical spelling comes back canonical.
    let b_odd = f.path("a/../b/.");
    let v = validate(&spec(&[&a, &b_odd], None, None), &m).unwrap();
    let canon = |p: &Path| fs::canonicalize(p).unwrap();
    assert_eq!(v.lowers, vec![canon(&a), canon(&b)]);
    assert_eq!(v.mountpoint, canon(&m));
    assert!(v.read_only);
    assert_eq!(v.upper, None);
    assert_eq!(v.work, None);
}

#[test]
fn validate_ok_writable_and_leftover_work_dir() {
    let f = Fixture::new();
    let (l, u, w, m) = (f.dir("l"), f.dir("u"), f.dir("w"), f.dir("m"));
    f.dir("w/work/leftover");
    f.dir("w/index");
    let mut s = spec(&[&l], Some(&u), Some(&w));
    s.whiteout = WhiteoutFormat::Oci;
    s.allow_other = true;
    let v = validate(&s, &m).unwrap();
    assert!(!v.read_only);
    assert!(v.allow_other);
    assert_eq!(v.whiteout, WhiteoutFormat::Oci);
    assert_eq!(v.upper, Some(fs::canonicalize(&u).unwrap()));
    assert_eq!(v.work, Some(fs::canonicalize(&w).unwrap()));
    s.read_only = true;
    assert!(validate(&s, &m).unwrap().read_only);
}

#[test]
fn validate_path_errors() {
    let f = Fixture::new();
    let (a, m) = (f.dir("a"), f.dir("m"));
    fs::write(f.path("file"), "x").unwrap();
    let missing = f.path("missing");
    let file = f.path("file");

    let msg = verr(&spec(&[&a, &missing], None, None), &m);
    assert_eq!(
        msg,
        format!("lowerdir {}: no such file or directory", missing.display())
    );
    let msg = verr(&spec(&[&file], None, None), &m);
    assert_eq!(msg, format!("lowerdir {}: not a directory", file.display()));
    let msg = verr(&spec(&[&file.join("x")], None, None), &m);
    assert!(msg.ends_with("not a directory"), "{msg}");
    let msg = verr(&spec(&[&a], None, None), &missing);
    assert_eq!(
        msg,
        format!(
            "mount point {}: no such file or directory",
            missing.display()
        )
    );
    let msg = verr(&spec(&[&a], None, None), &file);
    assert_eq!(
        msg,
        format!("mount point {}: not a directory", file.display())
    );
    let msg = verr(&spec(&[&a], Some(&missing), Some(&m)), &f.dir("m2"));
    assert!(msg.starts_with("upperdir "), "{msg}");
    let u = f.dir("u");
    let msg = verr(&spec(&[&a], Some(&u), Some(&file)), &m);
    assert!(
        msg.starts_with("workdir ") && msg.ends_with("not a directory"),
        "{msg}"
    );
    // Symlink loops and other errno values come out readable.
    std::os::unix::fs::symlink(f.path("loop"), f.path("loop")).unwrap();
    let msg = verr(&spec(&[&f.path("loop")], None, None), &m);
    assert!(msg.contains("too many levels of symbolic links"), "{msg}");
}

#[test]
fn validate_unreadable_lower() {
    if nix::unistd::geteuid().is_root() {
        // root may read anything; nothing to check.
        return;
    }
    let f = Fixture::new();
    let (a, m) = (f.dir("a"), f.dir("m"));
    fs::set_permissions(&a, fs::Permissions::from_mode(0o000)).unwrap();
    let msg = verr(&spec(&[&a], None, None), &m);
    assert!(msg.contains("permission denied"), "{msg}");
    fs::set_permissions(&a, fs::Permissions::from_mode(0o755)).unwrap();
}

#[test]
fn validate_overlaps() {
    let f = Fixture::new();
    let (a, b, m) = (f.dir("a"), f.dir("b"), f.dir("m"));
    let a_sub = f.dir("a/sub");
    let (u, w) = (f.dir("u"), f.dir("w"));
    let m_in_a = f.dir("a/mnt");
    let l_in_m = f.dir("m/lower");

    let cases: Vec<(MountSpec, PathBuf, String)> = vec![
        (
            spec(&[&a, &b, &a], None, None),
            m.clone(),
            format!("lowerdir {} is given twice", a.display()),
        ),
        (
            spec(&[&a, &a_sub], None, None),
            m.clone(),
            format!(
                "lowerdir {} is inside lowerdir {}",
                a_sub.display(),
                a.display()
            ),
        ),
        (
            spec(&[&a_sub, &a], None, None),
            m.clone(),
            format!(
                "lowerdir {} is inside lowerdir {}",
                a_sub.display(),
                a.display()
            ),
        ),
        (
            spec(&[&a], None, None),
            m_in_a.clone(),
            format!(
                "mount point {} is inside lowerdir {}",
                m_in_a.display(),
                a.display()
            ),
        ),
        (
            spec(&[&l_in_m], None, None),
            m.clone(),
            format!(
                "lowerdir {} is inside mount point {}",
                l_in_m.display(),
                m.display()
            ),
        ),
        (
            spec(&[&b], None, None),
            b.clone(),
            format!(
                "mount point {} is the same directory as lowerdir {}",
                b.display(),
                b.display()
            ),
        ),
        (
            spec(&[&a], Some(&a_sub), Some(&w)),
            m.clone(),
            format!(
                "upperdir {} is inside lowerdir {}",
                a_sub.display(),
                a.display()
            ),
        ),
        (
            spec(&[&a_sub], Some(&a), Some(&w)),
            m.clone(),
            format!(
                "lowerdir {} is inside upperdir {}",
                a_sub.display(),
                a.display()
            ),
        ),
        (
            spec(&[&b], Some(&u), Some(&u)),
            m.clone(),
            format!(
                "workdir {} is the same directory as upperdir {}",
                u.display(),
                u.display()
            ),
        ),
        (
            spec(&[&b], Some(&a), Some(&a_sub)),
            m.clone(),
            format!(
                "workdir {} is inside upperdir {}",
                a_sub.display(),
                a.display()
            ),
        ),
        (
            spec(&[&b], Some(&u), Some(&w)),
            f.path("u"),
            format!(
                "mount point {} is the same directory as upperdir {}",
                u.display(),
                u.display()
            ),
        ),
        (
            spec(&[&b], Some(&u), Some(&w)),
            f.dir("w/work/x"),
            format!(
                "mount point {} is inside workdir {}",
                f.path("w/work/x").display(),
                w.display()
            ),
        ),
    ];
    for (s, mnt, want) in cases {
        assert_eq!(verr(&s, &mnt), want);
    }
    // The same directory under another name (a symlink) is the same.
    std::os::unix::fs::symlink(&a, f.path("alias")).unwrap();
    let msg = verr(&spec(&[&a, &f.path("alias")], None, None), &m);
    assert!(msg.contains("is the same directory as lowerdir"), "{msg}");
}

#[test]
fn validate_work_not_empty() {
    let f = Fixture::new();
    let (l, u, w, m) = (f.dir("l"), f.dir("u"), f.dir("w"), f.dir("m"));
    fs::write(w.join("stray"), "").unwrap();
    let msg = verr(&spec(&[&l], Some(&u), Some(&w)), &m);
    assert_eq!(
        msg,
        format!("workdir {}: not empty (holds 'stray')", w.display())
    );
    // A file named `work` is not the kernel's layout.
    fs::remove_file(w.join("stray")).unwrap();
    fs::write(w.join("work"), "").unwrap();
    let msg = verr(&spec(&[&l], Some(&u), Some(&w)), &m);
    assert!(msg.ends_with("not empty (holds 'work')"), "{msg}");
    // The kernel refuses to reuse a volatile work dir; so do we.
    fs::remove_file(w.join("work")).unwrap();
    f.dir("w/incompat/volatile");
    let msg = verr(&spec(&[&l], Some(&u), Some(&w)), &m);
    assert!(msg.ends_with("not empty (holds 'incompat')"), "{msg}");
}

#[test]
fn validate_rejects_a_mount_point() {
    // `/` is always mounted; it also holds every layer, so use /proc,
    // which is a mount point and holds none of ours.
    let f = Fixture::new();
    let a = f.dir("a");
    let msg = verr(&spec(&[&a], None, None), Path::new("/proc"));
    assert_eq!(msg, "mount point /proc: something is already mounted there");
}

#[test]
fn validate_rejects_incomplete_specs() {
    let f = Fixture::new();
    let (a, m) = (f.dir("a"), f.dir("m"));
    assert_eq!(
        validate(&MountSpec::default(), &m).unwrap_err(),
        OptionsError::NoLower
    );
    let msg = verr(&spec(&[&a], Some(&a), None), &m);
    assert!(msg.contains("needs a workdir"), "{msg}");
}
