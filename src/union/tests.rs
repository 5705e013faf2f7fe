//! Union semantics on real directories, without a mount.

use std::ffi::OsStr;
use std::fs;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};

use super::*;

/// Layers `names` (top first) under a fresh temp dir.
fn layers(names: &[&str]) -> (tempfile::TempDir, Vec<PathBuf>) {
    let tmp = tempfile::tempdir().expect("temp dir");
    let paths: Vec<PathBuf> = names.iter().map(|n| tmp.path().join(n)).collect();
    for p in &paths {
        fs::create_dir(p).expect("mkdir layer");
    }
    (tmp, paths)
}

fn write(path: impl AsRef<Path>, data: &str) {
    let path = path.as_ref();
    fs::create_dir_all(path.parent().expect("parent")).expect("mkdir -p");
    fs::write(path, data).expect("write");
}

fn names(listing: &Listing) -> Vec<String> {
    let mut v: Vec<String> = listing
        .entries
        .iter()
        .map(|c| c.name.to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

/// Resolve a slash-separated path from the root, listing each directory.
fn walk(stack: &LayerStack, path: &str) -> Result<Resolved> {
    let mut cur = stack.root()?;
    for comp in path.split('/').filter(|c| !c.is_empty()) {
        let dir = cur.dir.clone().expect("a directory on the way");
        let listing = stack.read_dir(&dir)?;
        let child = listing
            .get(OsStr::new(comp))
            .ok_or_else(|| Error::errno(libc::ENOENT, "lookup", comp))?
            .clone();
        cur = stack.resolve(&dir, &child)?;
    }
    Ok(cur)
}

fn list(stack: &LayerStack, path: &str) -> Vec<String> {
    let dir = walk(stack, path).expect("walk").dir.expect("dir");
    names(&stack.read_dir(&dir).expect("read_dir"))
}

#[test]
fn top_layer_wins_and_dirs_merge() {
    let (_t, l) = layers(&["top", "bottom"]);
    write(l[0].join("etc/hostname"), "top");
    write(l[1].join("etc/hostname"), "bottom");
    write(l[1].join("etc/passwd"), "root");
    let stack = LayerStack::open(&l).unwrap();
    assert_eq!(list(&stack, "etc"), ["hostname", "passwd"]);
    let host = walk(&stack, "etc/hostname").unwrap();
    assert_eq!(host.layer, 0);
    let passwd = walk(&stack, "etc/passwd").unwrap();
    assert_eq!(passwd.layer, 1);
}

#[test]
fn oci_whiteouts_and_opaque_dirs() {
    let (_t, l) = layers(&["top", "mid", "bottom"]);
    write(l[2].join("a/x"), "");
    write(l[2].join("a/y"), "");
    write(l[2].join("gone/deep/file"), "");
    write(l[2].join("keep"), "");
    write(l[1].join(".wh.gone"), "");
    write(l[1].join("a/.wh.x"), "");
    write(l[1].join(".wh.never-existed"), "");
    write(l[0].join("a/.wh..wh..opq"), "");
    write(l[0].join("a/z"), "");
    // Re-added above its whiteout.
    write(l[0].join("gone/new"), "");
    let stack = LayerStack::open(&l).unwrap();
    assert_eq!(list(&stack, ""), ["a", "gone", "keep"]);
    assert_eq!(list(&stack, "a"), ["z"], "opaque hides everything below");
    assert_eq!(
        list(&stack, "gone"),
        ["new"],
        "the whiteout hid the old dir"
    );
}

#[test]
fn whiteout_does_not_hide_its_own_layer() {
    let (_t, l) = layers(&["top", "bottom"]);
    write(l[1].join("d/old"), "");
    write(l[0].join(".wh.d"), "");
    write(l[0].join("d/new"), "");
    let stack = LayerStack::open(&l).unwrap();
    assert_eq!(list(&stack, "d"), ["new"]);
}

#[test]
fn non_directory_hides_directory_and_back() {
    let (_t, l) = layers(&["l0", "l1", "l2", "l3"]);
    write(l[3].join("p/below"), "");
    write(l[2].join("p"), "a file now");
    write(l[1].join("p/above"), "");
    symlink("/", l[0].join("q")).unwrap();
    write(l[1].join("q/hidden"), "");
    let stack = LayerStack::open(&l).unwrap();
    assert_eq!(
        list(&stack, "p"),
        ["above"],
        "the file in l2 ends the merge"
    );
    let q = walk(&stack, "q").unwrap();
    assert_eq!(q.kind, FileKind::Symlink);
    assert!(q.dir.is_none());
}

#[test]
fn overlay_char_device_whiteouts_and_opaque_xattr() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipped: mknod needs root");
        return;
    }
    let (_t, l) = layers(&["top", "bottom"]);
    write(l[1].join("f"), "");
    write(l[1].join("d/x"), "");
    write(l[1].join("e/x"), "");
    nix::sys::stat::mknod(
        &l[0].join("f"),
        nix::sys::stat::SFlag::S_IFCHR,
        nix::sys::stat::Mode::empty(),
        0,
    )
    .unwrap();
    fs::create_dir(l[0].join("d")).unwrap();
    xattr_set(&l[0].join("d"), "trusted.overlay.opaque", b"y");
    fs::create_dir(l[0].join("e")).unwrap();
    xattr_set(&l[0].join("e"), "user.overlay.opaque", b"y");
    let stack = LayerStack::open(&l).unwrap();
    assert_eq!(list(&stack, ""), ["d", "e"]);
    assert!(list(&stack, "d").is_empty());
    assert!(list(&stack, "e").is_empty());
}

#[test]
fn xattr_whiteouts_need_the_marked_parent() {
    let (_t, l) = layers(&["top", "bottom"]);
    write(l[1].join("marked/gone"), "");
    write(l[1].join("plain/kept"), "");
    write(l[0].join("marked/gone"), "");
    write(l[0].join("plain/kept"), "");
    xattr_set(&l[0].join("marked/gone"), "user.overlay.whiteout", b"");
    xattr_set(&l[0].join("marked"), "user.overlay.opaque", b"x");
    xattr_set(&l[0].join("plain/kept"), "user.overlay.whiteout", b"");
    let stack = LayerStack::open(&l).unwrap();
    assert!(list(&stack, "marked").is_empty());
    assert_eq!(list(&stack, "plain"), ["kept"]);
}

#[test]
fn symlinks_in_a_layer_are_never_followed() {
    let (_t, l) = layers(&["top"]);
    symlink("/", l[0].join("etc")).unwrap();
    symlink("../../../../..", l[0].join("up")).unwrap();
    let layer = Layer::open(&l[0]).unwrap();
    let through = RelPath::root()
        .join(OsStr::new("etc"))
        .unwrap()
        .join(OsStr::new("passwd"))
        .unwrap();
    let err = layer
        .stat(&through)
        .expect_err("must not reach the host's /etc/passwd");
    assert_eq!(err.raw_os_error(), Some(libc::ELOOP));
    let up = RelPath::root().join(OsStr::new("up")).unwrap();
    assert!(layer.read_dir(&up).is_err());
    assert_eq!(layer.readlink(&up).unwrap(), b"../../../../..");
}

#[test]
fn hard_links_share_an_inode_number() {
    let (_t, l) = layers(&["top"]);
    write(l[0].join("a"), "data");
    fs::hard_link(l[0].join("a"), l[0].join("b")).unwrap();
    let stack = LayerStack::open(&l).unwrap();
    let a = walk(&stack, "a").unwrap();
    let b = walk(&stack, "b").unwrap();
    assert_eq!(a.ino, b.ino);
    assert_eq!(a.stat.nlink, 2);
    let root = stack.root().unwrap().dir.unwrap();
    let listing = stack.read_dir(&root).unwrap();
    assert_eq!(
        listing.get(OsStr::new("a")).unwrap().ino,
        a.ino,
        "d_ino == st_ino"
    );
}

fn xattr_set(path: &Path, name: &str, value: &[u8]) {
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
    let n = std::ffi::CString::new(name).unwrap();
    // SAFETY: valid C strings and a buffer of the given length.
    let r = unsafe {
        libc::lsetxattr(
            c.as_ptr(),
            n.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    };
    assert_eq!(
        r,
        0,
        "setxattr {name} on {}: {}",
        path.display(),
        std::io::Error::last_os_error()
    );
}
