//! A copy-up of a hard-linked lower file takes the name that was used, as
//! the kernel's overlayfs does, whatever the kernel caches of the other
//! names (a guard for any caching of them, issue 9): after a lookup of one name, a
//! change through another name (in another directory, or in the same one)
//! must copy up that other name. Checked against the kernel on identical
//! copies of the `links` fixture, by the names and modes each leaves in
//! its upper directory and by the merged trees.

mod common;

use std::fs;
use std::io::Write;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use common::stack::{Stack, step};
use common::{Dialect, KernelOverlay, LayerfsMount, snapshot};

/// Look names up, then change the file through other names. `hl/orig`,
/// `hl/sub/third` and `other/fourth` are one file of the base layer;
/// `hl2/x`, `hl2/y` and `hl2/z` one file (in one directory) of the top.
fn look_up_one_name_change_another(root: &Path) {
    let stat = |rel: &str| {
        step(
            &format!("lstat {rel}"),
            fs::symlink_metadata(root.join(rel)),
        )
    };
    let chmod = |rel: &str, mode: u32| {
        step(
            &format!("chmod {mode:o} {rel}"),
            fs::set_permissions(root.join(rel), fs::Permissions::from_mode(mode)),
        )
    };
    // Another directory: the name walked last is not the one changed.
    stat("hl/orig");
    stat("other/fourth");
    chmod("hl/orig", 0o640);
    // Data, through a name walked before another one.
    stat("hl/sub/third");
    stat("other/fourth");
    let mut f = step(
        "open hl/sub/third for append",
        fs::OpenOptions::new()
            .append(true)
            .open(root.join("hl/sub/third")),
    );
    step("append to hl/sub/third", f.write_all(b"through third\n"));
    drop(f);
    // The same directory.
    stat("hl2/x");
    stat("hl2/y");
    chmod("hl2/x", 0o600);
    stat("hl2/z");
    stat("hl2/y");
    chmod("hl2/z", 0o604);
    // A listing (READDIRPLUS: the kernel is handed every name with its
    // inode) names both links and uses neither: a change through a handle
    // opened before still copies up the name it was opened by.
    let fifo = step(
        "open hl/pipe",
        fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(root.join("hl/pipe")),
    );
    let listed = step("list hl", fs::read_dir(root.join("hl"))).count();
    assert!(listed > 2, "hl lists {listed} names");
    step(
        "fchmod hl/pipe",
        fifo.set_permissions(fs::Permissions::from_mode(0o604)),
    );
}

/// Every name under `upper` with its type and mode (the work dir is not in
/// it), sorted.
fn upper_names(upper: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut todo = vec![PathBuf::new()];
    while let Some(rel) = todo.pop() {
        let dir = upper.join(&rel);
        for e in step(&format!("readdir {}", dir.display()), fs::read_dir(&dir)) {
            let e = step("readdir entry", e);
            let rel = rel.join(e.file_name());
            let md = step(
                &format!("lstat {}", rel.display()),
                fs::symlink_metadata(upper.join(&rel)),
            );
            out.push(format!("{} {:o}", rel.display(), md.mode()));
            if md.is_dir() {
                todo.push(rel);
            }
        }
    }
    out.sort();
    out
}

#[test]
fn a_copy_up_takes_the_name_used_although_names_are_cached() {
    let ours = Stack::new("hln-layerfs-", "links", Dialect::OverlayTrusted);
    let m = LayerfsMount::mount(&ours.layers, &ours.uw());
    look_up_one_name_change_another(m.path());
    let our_tree = snapshot(m.path());
    let exit = m.unmount();
    exit.assert_clean();

    let theirs = Stack::new("hln-kernel-", "links", Dialect::OverlayTrusted);
    let k = KernelOverlay::mount(
        &theirs.layers,
        &format!("{},redirect_dir=on,index=on", theirs.uw()),
    );
    look_up_one_name_change_another(k.path());
    let their_tree = snapshot(k.path());
    drop(k);

    let (ours_up, theirs_up) = (upper_names(&ours.upper), upper_names(&theirs.upper));
    // The case worth checking: the kernel copied up the name used
    // (hl/orig), not the one walked last (other/fourth).
    assert!(
        theirs_up.iter().any(|n| n.starts_with("hl/orig "))
            && !theirs_up.iter().any(|n| n.starts_with("other/fourth ")),
        "the kernel's upper is not what this test expects: {theirs_up:?}"
    );
    assert_eq!(
        ours_up, theirs_up,
        "names in the upper: layerfs (left) vs the kernel (right)"
    );
    // (Two mounts, one after the other: times differ; directory sizes
    // are the upper filesystem's.)
    let opts = common::DiffOptions {
        mtimes: false,
        dir_sizes: false,
        ..common::DiffOptions::default()
    };
    let problems = common::diff_with(&their_tree, &our_tree, &opts);
    assert!(
        problems.is_empty(),
        "merged trees differ (kernel vs layerfs):\n  {}",
        problems.join("\n  ")
    );
}
