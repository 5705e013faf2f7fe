//! Metadata-only copy-up (`-o metacopy=on`) in the kernel's format: a
//! chmod, chown, utimes, setxattr, rename or link of a lower regular file
//! copies up its metadata only (a sparse upper file marked
//! `trusted.overlay.metacopy`), and the kernel's overlayfs mounted with
//! `metacopy=on,redirect_dir=on,index=on` reads what layerfs wrote and the
//! other way round. The kernel is the oracle: the same steps run on it,
//! on a copy of the same lower layer, give the same tree and the same
//! overlay xattrs in the upper.

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::os::unix::fs::{FileExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use common::stack::{step, uw};
use common::{DiffOptions, KernelOverlay, LayerfsMount, Tree, diff_with, snapshot};

const KERNEL_OPTS: &str = "redirect_dir=on,index=on,metacopy=on";
const BIG: usize = 4 << 20;

/// A lower layer with an empty upper and work dir beside it.
struct Setup {
    lower: PathBuf,
    upper: PathBuf,
    work: PathBuf,
    _dir: tempfile::TempDir,
}

fn big_data() -> Vec<u8> {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    (0..BIG)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

impl Setup {
    /// lower: big (4 MiB), small, d/x (64 KiB, 2 names: d/x and
    /// d/x-link), d/keep, mv-same, mv-other, linked, e/ (empty dir).
    fn new(prefix: &str) -> Setup {
        common::require_root();
        let dir = common::tempdir(prefix);
        let root = dir.path().canonicalize().expect("canonical temp dir");
        let (lower, upper, work) = (root.join("lower"), root.join("upper"), root.join("work"));
        for d in [&lower, &upper, &work, &lower.join("d"), &lower.join("e")] {
            step(&format!("mkdir {}", d.display()), fs::create_dir(d));
        }
        let files: [(&str, Vec<u8>); 7] = [
            ("big", big_data()),
            ("small", b"small file\n".to_vec()),
            ("d/x", vec![b'x'; 64 << 10]),
            ("d/keep", b"keep\n".to_vec()),
            ("mv-same", b"renamed in its dir\n".to_vec()),
            ("mv-other", b"moved to another dir\n".to_vec()),
            ("linked", b"hard-linked\n".to_vec()),
        ];
        for (rel, data) in files {
            step(&format!("write {rel}"), fs::write(lower.join(rel), data));
        }
        step(
            "link d/x d/x-link",
            fs::hard_link(lower.join("d/x"), lower.join("d/x-link")),
        );
        Setup {
            lower,
            upper,
            work,
            _dir: dir,
        }
    }

    fn opts(&self, extra: &str) -> String {
        format!("{},{extra}", uw(&self.upper, &self.work))
    }

    fn layerfs(&self, extra: &str) -> LayerfsMount {
        LayerfsMount::mount(std::slice::from_ref(&self.lower), &self.opts(extra))
    }

    fn kernel(&self, extra: &str) -> KernelOverlay {
        KernelOverlay::mount(std::slice::from_ref(&self.lower), &self.opts(extra))
    }
}

/// Whether `p` (on the host, not followed) has the xattr `name`.
fn has_xattr(p: &Path, name: &str) -> bool {
    matches!(common::sys::lgetxattr(p, name.as_bytes()), Ok(Some(_)))
}

/// Changes of metadata only, through the mount at `root`.
fn change_metadata(root: &Path) {
    let p = |rel: &str| root.join(rel);
    step(
        "chmod 0600 big",
        fs::set_permissions(p("big"), fs::Permissions::from_mode(0o600)),
    );
    step(
        "chown 1234:5678 small",
        std::os::unix::fs::lchown(p("small"), Some(1234), Some(5678)),
    );
    step(
        "utimes d/keep",
        common::sys::set_times(&p("d/keep"), 2_000_000, 5),
    );
    step(
        "setxattr user.test d/x",
        common::sys::lsetxattr(&p("d/x"), b"user.test", b"value"),
    );
    step("rename mv-same", fs::rename(p("mv-same"), p("mv-renamed")));
    step("rename mv-other", fs::rename(p("mv-other"), p("e/moved")));
    step("link linked", fs::hard_link(p("linked"), p("d/linked2")));
    step("rename small", fs::rename(p("small"), p("e/small")));
}

fn same_tree(what: &str, expected: &Tree, actual: &Tree, mtimes: bool) {
    let opts = DiffOptions {
        mtimes,
        dir_sizes: false,
        ..DiffOptions::default()
    };
    let problems = diff_with(expected, actual, &opts);
    assert!(problems.is_empty(), "{what}:\n  {}", problems.join("\n  "));
}

/// Overlay's xattrs that hold lower file handles or marks the kernel sets
/// at mount: their values differ between two copies of a lower layer.
const HANDLE_XATTRS: &[&[u8]] = &[
    b"trusted.overlay.origin",
    b"trusted.overlay.uuid",
    b"trusted.overlay.upper",
    b"trusted.overlay.index",
    b"trusted.overlay.impure",
];

/// The upper dir as two writers must agree on it: everything (sparse
/// contents, metacopy marks, redirects, user xattrs) but lower handles.
fn upper_view(upper: &Path) -> Tree {
    let mut t = snapshot(upper);
    for e in t.entries.values_mut() {
        e.xattrs
            .retain(|k, _| !HANDLE_XATTRS.contains(&k.as_slice()));
    }
    t
}

/// The overlay xattrs of every upper entry (values of handles left out).
fn overlay_xattrs(t: &Tree) -> BTreeMap<String, Vec<(String, Vec<u8>)>> {
    t.entries
        .iter()
        .map(|(rel, e)| {
            let x = e
                .xattrs
                .iter()
                .filter(|(k, _)| k.starts_with(b"trusted.overlay."))
                .map(|(k, v)| (String::from_utf8_lossy(k).into_owned(), v.clone()))
                .collect();
            (String::from_utf8_lossy(rel).into_owned(), x)
        })
        .collect()
}

/// What the kernel alone makes of the same steps: its merged tree and its
/// upper.
fn kernel_only() -> (Tree, Tree) {
    let s = Setup::new("mc-kernel-");
    let k = s.kernel(KERNEL_OPTS);
    change_metadata(k.path());
    let tree = snapshot(k.path());
    drop(k);
    (tree, upper_view(&s.upper))
}

/// layerfs writes metadata-only copies; the kernel (metacopy=on) reads
/// that upper as layerfs showed it, and it is the upper the kernel itself
/// writes for the same steps, byte for byte but for lower handles.
#[test]
fn layerfs_metacopy_upper_is_the_kernels() {
    let s = Setup::new("mc-layerfs-");
    let m = s.layerfs("metacopy=on");
    change_metadata(m.path());
    let shown = snapshot(m.path());
    m.unmount().assert_clean();
    let upper = upper_view(&s.upper);

    // No data was copied: the 4 MiB file is a hole in the upper.
    let big = step("stat upper/big", fs::symlink_metadata(s.upper.join("big")));
    assert_eq!(big.size(), BIG as u64);
    assert!(
        big.blocks() * 512 < 64 << 10,
        "upper/big holds {} blocks: its data was copied",
        big.blocks()
    );
    assert!(has_xattr(&s.upper.join("big"), "trusted.overlay.metacopy"));

    let (kernel_tree, kernel_upper) = kernel_only();
    same_tree("layerfs vs the kernel alone", &kernel_tree, &shown, false);
    let problems = diff_with(
        &kernel_upper,
        &upper,
        &DiffOptions {
            dir_sizes: false,
            mtimes: false,
            ..DiffOptions::default()
        },
    );
    assert!(
        problems.is_empty(),
        "upper dirs (kernel's expected):\n  {}",
        problems.join("\n  ")
    );
    assert_eq!(overlay_xattrs(&kernel_upper), overlay_xattrs(&upper));

    // The kernel mounts what layerfs wrote and shows the same tree, times
    // included.
    let k = s.kernel(KERNEL_OPTS);
    let read_back = snapshot(k.path());
    drop(k);
    same_tree(
        "the kernel reading layerfs's upper",
        &shown,
        &read_back,
        true,
    );
}

/// The kernel writes metacopy files; layerfs reads them as it showed them,
/// then a write through layerfs copies the data in place (same inode, the
/// mark gone, a handle opened before reads the new data), and the kernel
/// reads that result.
#[test]
fn kernel_metacopy_upper_reads_and_copies_up_in_layerfs() {
    let s = Setup::new("mc-kernel-first-");
    let k = s.kernel(KERNEL_OPTS);
    change_metadata(k.path());
    let kernel_tree = snapshot(k.path());
    drop(k);

    let m = s.layerfs("metacopy=on");
    same_tree(
        "layerfs reading the kernel's upper",
        &kernel_tree,
        &snapshot(m.path()),
        true,
    );
    let st = step("stat big", fs::symlink_metadata(m.path().join("big")));
    assert!(
        st.blocks() * 512 >= BIG as u64,
        "st_blocks of a metacopy file are its data's ({})",
        st.blocks()
    );

    let upper_big = s.upper.join("big");
    let ino = step("stat upper/big", fs::symlink_metadata(&upper_big)).ino();
    let reader = step("open big", fs::File::open(m.path().join("big")));
    let mut head = vec![0u8; 4096];
    step("read big", reader.read_exact_at(&mut head, 0));
    assert_eq!(head, big_data()[..4096]);
    let writer = step(
        "open big for write",
        fs::OpenOptions::new()
            .write(true)
            .open(m.path().join("big")),
    );
    step("write big", writer.write_all_at(b"NEW HEAD", 0));
    step("write big", writer.write_all_at(b"NEW TAIL", 3 << 20));
    drop(writer);
    // Drop what the page cache holds, so the daemon is asked again.
    // SAFETY: a valid fd.
    unsafe { libc::posix_fadvise(std::os::fd::AsRawFd::as_raw_fd(&reader), 0, 0, 4) };
    let mut got = vec![0u8; 8];
    step("read big again", reader.read_exact_at(&mut got, 0));
    assert_eq!(&got, b"NEW HEAD");
    step("read big again", reader.read_exact_at(&mut got, 3 << 20));
    assert_eq!(&got, b"NEW TAIL");
    let mut mid = vec![0u8; 4096];
    step("read big again", reader.read_exact_at(&mut mid, 2 << 20));
    assert_eq!(mid, big_data()[2 << 20..(2 << 20) + 4096]);
    drop(reader);

    let after = step("stat upper/big", fs::symlink_metadata(&upper_big));
    assert_eq!(after.ino(), ino, "the data is copied into the same inode");
    assert!(after.blocks() * 512 >= BIG as u64);
    assert!(!has_xattr(&upper_big, "trusted.overlay.metacopy"));
    assert!(has_xattr(&upper_big, "trusted.overlay.origin"));
    let shown = snapshot(m.path());
    m.unmount().assert_clean();

    let k = s.kernel(KERNEL_OPTS);
    same_tree(
        "the kernel reading layerfs's data copy-up",
        &shown,
        &snapshot(k.path()),
        true,
    );
}

/// The errno of `stat PATH`.
fn stat_errno(p: &Path) -> Option<i32> {
    fs::symlink_metadata(p).err().and_then(|e| e.raw_os_error())
}

/// Without metacopy=on a metacopy file is refused on lookup, with the
/// kernel's errno (EPERM: "refusing to follow metacopy origin"); other
/// files still show.
#[test]
fn metacopy_upper_without_the_option_is_refused_as_the_kernel_does() {
    let s = Setup::new("mc-off-");
    let m = s.layerfs("metacopy=on");
    change_metadata(m.path());
    m.unmount().assert_clean();

    let errnos =
        |root: &Path| ["big", "d/keep", "e/moved", "d"].map(|rel| stat_errno(&root.join(rel)));
    let k = s.kernel("redirect_dir=on,index=on");
    let kernel = errnos(k.path());
    drop(k);
    let m = s.layerfs("");
    let layerfs = errnos(m.path());
    m.unmount().assert_clean();
    let eperm = Some(libc::EPERM);
    assert_eq!(kernel, [eperm, eperm, eperm, None]);
    assert_eq!(layerfs, kernel);
}

/// A file that is not a metacopy one copies its data as before: an open
/// for write, a truncate, and everything with metacopy off.
#[test]
fn data_changes_and_metacopy_off_copy_the_data() {
    let s = Setup::new("mc-data-");
    let m = s.layerfs("metacopy=on");
    let f = step(
        "open small for write",
        fs::OpenOptions::new()
            .write(true)
            .open(m.path().join("small")),
    );
    drop(f);
    step(
        "truncate mv-same",
        fs::OpenOptions::new()
            .write(true)
            .open(m.path().join("mv-same"))
            .and_then(|f| f.set_len(5)),
    );
    m.unmount().assert_clean();
    for rel in ["small", "mv-same"] {
        assert!(!has_xattr(&s.upper.join(rel), "trusted.overlay.metacopy"));
    }
    assert_eq!(
        step("read upper/small", fs::read(s.upper.join("small"))),
        b"small file\n"
    );

    let off = Setup::new("mc-default-");
    let m = off.layerfs("");
    change_metadata(m.path());
    m.unmount().assert_clean();
    let big = step(
        "stat upper/big",
        fs::symlink_metadata(off.upper.join("big")),
    );
    assert!(big.blocks() * 512 >= BIG as u64);
    assert!(!has_xattr(
        &off.upper.join("big"),
        "trusted.overlay.metacopy"
    ));
}

/// An upper with metacopy files stacked as a lower layer (a committed
/// layer under a new container): with metacopy=on its metacopy files read
/// the data below them, as in the kernel; a chmod copies one up as a
/// metacopy file again, a write copies the data from the bottom layer.
#[test]
fn metacopy_files_in_a_lower_layer_read_the_data_below() {
    let s = Setup::new("mc-restack-");
    let m = s.layerfs("metacopy=on");
    change_metadata(m.path());
    m.unmount().assert_clean();
    let top = s._dir.path().join("top");
    step("rename upper", fs::rename(&s.upper, &top));
    let (upper, work) = (s._dir.path().join("upper2"), s._dir.path().join("work2"));
    for d in [&upper, &work] {
        step("mkdir", fs::create_dir(d));
    }
    let layers = [top, s.lower.clone()];
    let opts = |extra: &str| format!("{},{extra}", uw(&upper, &work));

    let k = KernelOverlay::mount(&layers, &opts(KERNEL_OPTS));
    let kernel_tree = snapshot(k.path());
    drop(k);
    step("clear the work dir", fs::remove_dir_all(&work));
    step("mkdir work2", fs::create_dir(&work));
    let m = LayerfsMount::mount(&layers, &opts("metacopy=on"));
    same_tree(
        "layerfs over a metacopy lower",
        &kernel_tree,
        &snapshot(m.path()),
        true,
    );
    step(
        "chmod e/moved",
        fs::set_permissions(m.path().join("e/moved"), fs::Permissions::from_mode(0o640)),
    );
    let f = step(
        "open big for append",
        fs::OpenOptions::new()
            .append(true)
            .open(m.path().join("big")),
    );
    step("append to big", (&f).write_all(b"appended"));
    drop(f);
    let shown = snapshot(m.path());
    m.unmount().assert_clean();
    assert!(has_xattr(
        &upper.join("e/moved"),
        "trusted.overlay.metacopy"
    ));
    let mut want = big_data();
    want.extend_from_slice(b"appended");
    assert_eq!(step("read upper2/big", fs::read(upper.join("big"))), want);

    let k = KernelOverlay::mount(&layers, &opts(KERNEL_OPTS));
    same_tree(
        "the kernel reading it back",
        &shown,
        &snapshot(k.path()),
        true,
    );
}
