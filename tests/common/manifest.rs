//! A byte-for-byte manifest of a directory tree, to show a layer was not
//! changed (by a container run on top of it, for one).

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// One entry: type and mode, owner, size, mtime (ns), rdev, content or link
/// target, xattrs.
pub type EntryFacts = (u32, u32, u32, u64, i128, u64, Vec<u8>, XattrMap);
pub type XattrMap = BTreeMap<Vec<u8>, Vec<u8>>;
/// Path -> facts of every entry under `root`, not following symlinks.
pub type Manifest = BTreeMap<PathBuf, EntryFacts>;

pub fn manifest(root: &Path) -> Manifest {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for e in fs::read_dir(&dir).expect("read_dir") {
            let p = e.expect("dir entry").path();
            let m = fs::symlink_metadata(&p).expect("lstat");
            let content = if m.file_type().is_file() {
                fs::read(&p).expect("read")
            } else if m.file_type().is_symlink() {
                fs::read_link(&p)
                    .expect("readlink")
                    .into_os_string()
                    .into_encoded_bytes()
            } else {
                Vec::new()
            };
            if m.is_dir() {
                stack.push(p.clone());
            }
            let xattrs = super::sys::lxattrs(&p).expect("xattrs");
            out.insert(
                p,
                (
                    m.mode(),
                    m.uid(),
                    m.gid(),
                    m.size(),
                    i128::from(m.mtime()) * 1_000_000_000 + i128::from(m.mtime_nsec()),
                    m.rdev(),
                    content,
                    xattrs,
                ),
            );
        }
    }
    out
}
