//! The hard-link index is the kernel's (issue 11, item 4): an upper and
//! work dir written by layerfs, mounted by the kernel's overlayfs with
//! `index=on`, and the other way round, show every name of a copied-up
//! lower hard link with the new data and mode, as one inode with the
//! right link count; and an index entry an older layerfs left in
//! `WORK/layerfs-index` is moved to the kernel's `WORK/index` and still
//! shown. Trees are compared with a kernel-only run of the same steps on
//! a fresh copy of the `links` fixture (`hl/orig`, `hl/sub/third` and
//! `other/fourth` one file of the base layer; `hl2/x`, `hl2/y`, `hl2/z`
//! one file of the top layer).

mod common;

use std::fs;
use std::io::Write;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use common::stack::{Stack, step};
use common::{Dialect, DiffOptions, KernelOverlay, LayerfsMount, Tree, diff_with, snapshot};

const KERNEL_OPTS: &str = "redirect_dir=on,index=on";

/// Copy up hard-linked lower files through one name each: a chmod, a
/// write and a rename.
fn change_hard_links(root: &Path) {
    let p = |rel: &str| root.join(rel);
    step(
        "chmod 0711 hl/orig",
        fs::set_permissions(p("hl/orig"), fs::Permissions::from_mode(0o711)),
    );
    let mut f = step(
        "open hl/sub/third for append",
        fs::OpenOptions::new().append(true).open(p("hl/sub/third")),
    );
    step("append to hl/sub/third", f.write_all(b"through third\n"));
    drop(f);
    step(
        "rename other/fourth other/fifth",
        fs::rename(p("other/fourth"), p("other/fifth")),
    );
    step(
        "chmod 0600 hl2/y",
        fs::set_permissions(p("hl2/y"), fs::Permissions::from_mode(0o600)),
    );
}

fn kernel(s: &Stack) -> KernelOverlay {
    KernelOverlay::mount(&s.layers, &format!("{},{KERNEL_OPTS}", s.uw()))
}

fn unmount_layerfs(m: LayerfsMount) {
    let exit = m.unmount();
    exit.assert_clean();
}

/// The tree the kernel alone leaves after `change_hard_links`.
fn kernel_only() -> Tree {
    let s = Stack::new("kix-kernel-", "links", Dialect::OverlayTrusted);
    let k = kernel(&s);
    change_hard_links(k.path());
    drop(k);
    let k = kernel(&s);
    let tree = snapshot(k.path());
    drop(k);
    tree
}

/// Two mounts one after the other: times differ; directory sizes are the
/// upper filesystem's.
fn same_tree(what: &str, expected: &Tree, actual: &Tree) {
    let opts = DiffOptions {
        mtimes: false,
        dir_sizes: false,
        ..DiffOptions::default()
    };
    let problems = diff_with(expected, actual, &opts);
    assert!(problems.is_empty(), "{what}:\n  {}", problems.join("\n  "));
}

/// Every path (the root aside: FUSE numbers it 1) shows the same inode
/// number in both trees of one upper: copied-up objects keep their
/// lower's number (one filesystem, so no xino bits) in both.
fn same_inos(what: &str, expected: &Tree, actual: &Tree) {
    let problems: Vec<String> = expected
        .entries
        .iter()
        .filter(|(rel, _)| !rel.is_empty())
        .filter_map(|(rel, e)| {
            let got = actual.entries.get(rel).map(|a| a.ino);
            (got != Some(e.ino))
                .then(|| format!("{}: {} vs {got:?}", common::tree::show(rel), e.ino))
        })
        .collect();
    assert!(
        problems.is_empty(),
        "{what}: inode numbers differ:\n  {}",
        problems.join("\n  ")
    );
}

/// The names of the base layer's hard-linked file share one inode and
/// show the changes, and that inode is the lower file's (same filesystem,
/// so the kernel shows the lower's number), with the lower's link count
/// (one of its names is hidden by the top layer: the kernel counts it).
fn check_group(what: &str, root: &Path, lower: &fs::Metadata) {
    let lower_ino = lower.ino();
    let names = ["hl/orig", "hl/sub/third", "other/fifth"];
    let mds: Vec<_> = names
        .iter()
        .map(|n| {
            step(
                &format!("{what}: lstat {n}"),
                fs::symlink_metadata(root.join(n)),
            )
        })
        .collect();
    for (n, md) in names.iter().zip(&mds) {
        assert_eq!(md.mode() & 0o7777, 0o711, "{what}: mode of {n}");
        assert_eq!(md.ino(), lower_ino, "{what}: inode number of {n}");
        assert_eq!(md.nlink(), lower.nlink(), "{what}: link count of {n}");
    }
    let data = step("read hl/orig", fs::read(root.join("other/fifth")));
    assert!(
        data.ends_with(b"through third\n"),
        "{what}: other/fifth does not show the write through hl/sub/third"
    );
}

/// The layer holding `rel` (top first) and the lower file's metadata.
fn lower_of(s: &Stack, rel: &str) -> (PathBuf, fs::Metadata) {
    s.layers
        .iter()
        .find_map(|l| Some((l.clone(), fs::symlink_metadata(l.join(rel)).ok()?)))
        .unwrap_or_else(|| panic!("no layer holds {rel}"))
}

fn index_names(work: &Path, sub: &str) -> Vec<String> {
    let dir = work.join(sub);
    let mut names: Vec<String> = step(&format!("readdir {}", dir.display()), fs::read_dir(&dir))
        .map(|e| {
            step("readdir entry", e)
                .file_name()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    names.sort();
    names
}

#[test]
fn layerfs_writes_the_kernel_reads() {
    let expected = kernel_only();
    let s = Stack::new("kix-l2k-", "links", Dialect::OverlayTrusted);
    let lower = lower_of(&s, "hl/orig").1;
    let m = LayerfsMount::mount(&s.layers, &s.uw());
    change_hard_links(m.path());
    check_group("layerfs", m.path(), &lower);
    let ours = snapshot(m.path());
    unmount_layerfs(m);
    // Two hard-link groups copied up: two kernel index entries.
    let entries = index_names(&s.work, "index");
    assert_eq!(entries.len(), 2, "WORK/index holds {entries:?}");
    assert!(
        entries.iter().all(|n| n.starts_with("00fb")),
        "not the kernel's names: {entries:?}"
    );
    let k = kernel(&s);
    check_group("kernel over layerfs's upper", k.path(), &lower);
    let theirs = snapshot(k.path());
    drop(k);
    same_tree(
        "kernel-only run (left) vs the kernel reading layerfs's upper (right)",
        &expected,
        &theirs,
    );
    same_inos("layerfs (left) vs the kernel (right)", &ours, &theirs);
}

#[test]
fn the_kernel_writes_layerfs_reads() {
    let expected = kernel_only();
    let s = Stack::new("kix-k2l-", "links", Dialect::OverlayTrusted);
    let lower = lower_of(&s, "hl/orig").1;
    let k = kernel(&s);
    change_hard_links(k.path());
    let theirs = snapshot(k.path());
    drop(k);
    let m = LayerfsMount::mount(&s.layers, &s.uw());
    check_group("layerfs over the kernel's upper", m.path(), &lower);
    let ours = snapshot(m.path());
    unmount_layerfs(m);
    same_inos("the kernel (left) vs layerfs (right)", &theirs, &ours);
    same_tree(
        "kernel-only run (left) vs layerfs reading the kernel's upper (right)",
        &expected,
        &ours,
    );
    // And layerfs's own changes on top still reach the kernel.
    let m = LayerfsMount::mount(&s.layers, &s.uw());
    step(
        "chmod 0700 hl2/z",
        fs::set_permissions(m.path().join("hl2/z"), fs::Permissions::from_mode(0o700)),
    );
    let ours = snapshot(m.path());
    unmount_layerfs(m);
    let k = kernel(&s);
    let theirs = snapshot(k.path());
    drop(k);
    same_tree(
        "layerfs (left) vs the kernel (right) after more changes",
        &ours,
        &theirs,
    );
}

/// An entry made the way layerfs named entries before it wrote the
/// kernel's index: `WORK/layerfs-index/DEV-INO` (hex), the shared copy
/// with no upper name yet, its link count in `overlay.nlink`.
#[test]
fn an_old_layerfs_index_entry_migrates() {
    let s = Stack::new("kix-old-", "links", Dialect::OverlayTrusted);
    let (layer, md) = lower_of(&s, "hl/orig");
    let old_dir = s.work.join("layerfs-index");
    step("mkdir layerfs-index", fs::create_dir(&old_dir));
    let entry = old_dir.join(format!("{:x}-{:x}", md.dev(), md.ino()));
    step(
        "copy the lower file into the old index",
        fs::copy(layer.join("hl/orig"), &entry).map(drop),
    );
    step(
        "append to the old entry",
        fs::OpenOptions::new()
            .append(true)
            .open(&entry)
            .and_then(|mut f| f.write_all(b"through third\n")),
    );
    step(
        "chmod the old entry",
        fs::set_permissions(&entry, fs::Permissions::from_mode(0o711)),
    );
    // Upper count 1 (the entry), as many names as the lower has.
    let nlink = format!("U+{}", md.nlink() - 1);
    step(
        "set overlay.nlink",
        xattr_set(&entry, "trusted.overlay.nlink", nlink.as_bytes()),
    );

    let lower_nlink = md.nlink();
    let m = LayerfsMount::mount(&s.layers, &s.uw());
    for n in ["hl/orig", "hl/sub/third", "other/fourth"] {
        let md = step(
            &format!("lstat {n}"),
            fs::symlink_metadata(m.path().join(n)),
        );
        assert_eq!(md.mode() & 0o7777, 0o711, "layerfs: mode of {n}");
        assert_eq!(md.nlink(), lower_nlink, "layerfs: link count of {n}");
    }
    step(
        "rename other/fourth other/fifth",
        fs::rename(m.path().join("other/fourth"), m.path().join("other/fifth")),
    );
    let ours = snapshot(m.path());
    unmount_layerfs(m);
    assert!(!entry.exists(), "the old entry is still in layerfs-index");
    let entries = index_names(&s.work, "index");
    assert_eq!(entries.len(), 1, "WORK/index holds {entries:?}");

    let k = kernel(&s);
    check_group("kernel after the migration", k.path(), &md);
    let theirs = snapshot(k.path());
    drop(k);
    same_tree("layerfs (left) vs the kernel (right)", &ours, &theirs);
}

fn xattr_set(path: &Path, name: &str, value: &[u8]) -> std::io::Result<()> {
    let status = std::process::Command::new("setfattr")
        .arg("-n")
        .arg(name)
        .arg("-v")
        .arg(format!(
            "0x{}",
            value.iter().map(|b| format!("{b:02x}")).collect::<String>()
        ))
        .arg(path)
        .status()?;
    if status.success() {
        Ok(())
    } else {
        Err(std::io::Error::other(format!(
            "setfattr ended with {status}"
        )))
    }
}

/// A ramfs mounted for one test: a filesystem without file handles.
struct Ramfs(PathBuf);

impl Drop for Ramfs {
    fn drop(&mut self) {
        if nix::mount::umount2(&self.0, nix::mount::MntFlags::empty()).is_err() {
            let _ = nix::mount::umount2(&self.0, nix::mount::MntFlags::MNT_DETACH);
        }
    }
}

/// A lower on a filesystem without file handles (ramfs): the index entry
/// keeps layerfs's own name (`WORK/layerfs-index/DEV-INO`), the daemon
/// says so once, and the names still share the copy, also after a
/// remount.
#[test]
fn without_file_handles_the_index_keeps_layerfs_names() {
    common::require_root();
    let dir = common::tempdir("kix-ramfs-");
    let root = step("canonical temp dir", dir.path().canonicalize());
    let lower = root.join("lower");
    step("mkdir lower", fs::create_dir(&lower));
    step(
        "mount ramfs",
        nix::mount::mount(
            Some("ramfs"),
            &lower,
            Some("ramfs"),
            nix::mount::MsFlags::empty(),
            None::<&str>,
        )
        .map_err(std::io::Error::from),
    );
    let _ramfs = Ramfs(lower.clone());
    let (upper, work) = (root.join("upper"), root.join("work"));
    for d in [&upper, &work] {
        step(&format!("mkdir {}", d.display()), fs::create_dir(d));
    }
    step("write lower/a", fs::write(lower.join("a"), b"lower\n"));
    for n in ["b", "c"] {
        step(
            &format!("link {n}"),
            fs::hard_link(lower.join("a"), lower.join(n)),
        );
    }
    step(
        "chmod lower/a",
        fs::set_permissions(lower.join("a"), fs::Permissions::from_mode(0o644)),
    );
    let lower_md = step("lstat lower/a", fs::symlink_metadata(lower.join("a")));
    let opts = common::stack::uw(&upper, &work);
    let layers = [lower.clone()];

    let check = |what: &str, mnt: &Path| {
        let mds: Vec<_> = ["a", "b", "c"]
            .iter()
            .map(|n| {
                step(
                    &format!("{what}: lstat {n}"),
                    fs::symlink_metadata(mnt.join(n)),
                )
            })
            .collect();
        for (n, md) in ["a", "b", "c"].iter().zip(&mds) {
            assert_eq!(md.mode() & 0o7777, 0o711, "{what}: mode of {n}");
            assert_eq!(md.ino(), mds[0].ino(), "{what}: inode number of {n}");
            assert_eq!(md.nlink(), 3, "{what}: link count of {n}");
        }
        let data = step("read c", fs::read(mnt.join("c")));
        assert_eq!(data, b"lower\nmore\n", "{what}: data of c");
    };
    let m = LayerfsMount::mount(&layers, &opts);
    step(
        "chmod 0711 a",
        fs::set_permissions(m.path().join("a"), fs::Permissions::from_mode(0o711)),
    );
    step(
        "append to b",
        fs::OpenOptions::new()
            .append(true)
            .open(m.path().join("b"))
            .and_then(|mut f| f.write_all(b"more\n")),
    );
    check("layerfs", m.path());
    let exit = m.unmount();
    exit.assert_clean();
    assert_eq!(
        exit.log.matches("no file handles").count(),
        1,
        "the daemon should say once that the lower has no file handles:\n{}",
        exit.log
    );
    assert_eq!(index_names(&work, "index"), Vec::<String>::new());
    let old_name = format!("{:x}-{:x}", lower_md.dev(), lower_md.ino());
    assert!(
        index_names(&work, "layerfs-index").contains(&old_name),
        "no {old_name} in layerfs-index: {:?}",
        index_names(&work, "layerfs-index")
    );
    let m = LayerfsMount::mount(&layers, &opts);
    check("layerfs after a remount", m.path());
    unmount_layerfs(m);
}

/// `commit`'s layer tar reads the kernel's index: a hard-linked lower
/// file the kernel copied up through one name goes into the tar under
/// every name, as one hard-link group (as for layerfs's own upper:
/// tests/inspect.rs).
#[test]
fn the_layer_tar_reads_the_kernels_index() {
    common::require_root();
    let dir = common::tempdir("kix-tar-");
    let root = step("canonical temp dir", dir.path().canonicalize());
    let (low, upper, work) = (root.join("low"), root.join("upper"), root.join("work"));
    for d in [&low, &upper, &work, &low.join("sub/deeper")] {
        step(&format!("mkdir {}", d.display()), fs::create_dir_all(d));
    }
    step("write h1", fs::write(low.join("h1"), b"old\n"));
    step(
        "link h2",
        fs::hard_link(low.join("h1"), low.join("sub/deeper/h2")),
    );
    let layers = [low.clone()];
    let k = KernelOverlay::mount(
        &layers,
        &format!("{},{KERNEL_OPTS}", common::stack::uw(&upper, &work)),
    );
    step("write h1", fs::write(k.path().join("h1"), b"new\n"));
    drop(k);
    assert_eq!(index_names(&work, "index").len(), 1, "the kernel's index");
    let tar_path = root.join("layer.tar");
    let out = step("create layer.tar", fs::File::create(&tar_path));
    let summary = layerfs::image::inspect::write_container_layer_tar(
        &upper,
        Some(&work),
        std::slice::from_ref(&low),
        out,
    )
    .unwrap_or_else(|e| panic!("write_container_layer_tar: {e}"));
    assert_eq!((summary.files, summary.hardlinks), (1, 1), "{summary:?}");
    let listed = step(
        "tar -tf",
        std::process::Command::new("tar")
            .arg("-tf")
            .arg(&tar_path)
            .output(),
    );
    let listed = String::from_utf8_lossy(&listed.stdout);
    let names: Vec<&str> = listed.lines().collect();
    assert_eq!(names, ["h1", "sub", "sub/deeper", "sub/deeper/h2"]);
}
