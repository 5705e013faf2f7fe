//! Shared helpers for the integration tests: fixtures, mounts, snapshots.
//!
//! Include with `mod common;` from a file in `tests/`. Not every test file
//! uses every helper, hence the `dead_code` allowance.
#![allow(dead_code, unused_imports)]

pub mod busybox;
pub mod images;
pub mod load;
pub mod manifest;
pub mod materialize;
pub mod meta;
pub mod mounts;
pub mod ops;
pub mod rng;
pub mod stack;
pub mod sys;
pub mod tmpfs;
pub mod tree;

pub use materialize::{Dialect, fixture_names, fixtures_dir, layer_names, materialize};
pub use mounts::{
    DaemonExit, KernelOverlay, LayerfsMount, escape_opt_path, is_mounted, layerfs_bin,
    lowerdir_value, mount_fstype, wait_within,
};
pub use sys::{RawDirEntry, read_dir_raw};
pub use tree::{
    DiffOptions, Entry, Kind, SnapError, Tree, diff, diff_with, lookup_problems, probe_paths,
    readdir_problems, readdir_problems_with, snapshot,
};

/// Panics with a clear message unless running as root: the mount tests need
/// mount(2), mknod and trusted.* xattrs.
pub fn require_root() {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(
        euid, 0,
        "these tests need root (mount, mknod, trusted.* xattrs); run them as root"
    );
}

/// A fresh unique temp dir.
pub fn tempdir(prefix: &str) -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix(prefix)
        .tempdir()
        .expect("creating a temp dir")
}
