//! `diff`: what a container layer changed, as `docker diff` prints it.
//!
//! The merged view of upper + lowers is compared with the view of the
//! lowers alone (docker's "naive" diff, which docker also uses whenever
//! overlay redirects are on): an object in both views is changed when its
//! type, mode, owner or device differ, or, for a non-directory, its size
//! or mtime; a directory holding changes is changed; a deleted directory
//! is one `D`; an added directory is `A` with all its content. Only
//! directories the upper holds are descended into.

use std::collections::{BTreeSet, HashSet};
use std::ffi::OsString;
use std::fmt;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use serde::Serialize;

use super::index::HardLinkIndex;
use super::show_path;
use crate::error::{Error, Result};
use crate::layers::{FileKind, RelPath, Stat, WhiteoutFormat};
use crate::union::{LayerStack, Listing, MergedDir, UpperSpec};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub enum ChangeKind {
    #[serde(rename = "A")]
    Added,
    #[serde(rename = "C")]
    Changed,
    #[serde(rename = "D")]
    Deleted,
}

impl ChangeKind {
    pub fn letter(self) -> char {
        match self {
            ChangeKind::Added => 'A',
            ChangeKind::Changed => 'C',
            ChangeKind::Deleted => 'D',
        }
    }
}

/// One line of `diff`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Change {
    pub kind: ChangeKind,
    pub path: String,
}

impl fmt::Display for Change {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.kind.letter(), self.path)
    }
}

/// A container's upper layer over its lowers, read through the union
/// engine (redirects, whiteouts in both dialects, opaque dirs). The work
/// dir the engine wants is a private temp dir: the container's own is
/// never touched, so this is safe while the container runs.
pub(super) struct ContainerView {
    pub stack: LayerStack,
    _work: tempfile::TempDir,
}

pub(super) fn open_container(upper: &Path, lowers: &[PathBuf]) -> Result<ContainerView> {
    let work = tempfile::Builder::new()
        .prefix("layerfs-inspect-")
        .tempdir()
        .map_err(|e| Error::io(e, "create temp dir", std::env::temp_dir().display()))?;
    let spec = UpperSpec {
        upper: upper.to_path_buf(),
        work: work.path().to_path_buf(),
        // Read `.wh.` names as whiteouts too: an upper may be in either
        // format.
        format: WhiteoutFormat::Oci,
        userxattr: false,
        durable: false,
    };
    let mut stack = LayerStack::open_writable(lowers, &spec)?;
    // A container mounted with metacopy=on holds metadata-only copies:
    // read them as that mount did (their data from below).
    stack.set_metacopy(true);
    Ok(ContainerView { stack, _work: work })
}

/// The changes of `upper` against `lowers` (top first), sorted by path
/// as docker sorts them (byte order, so a directory comes before what it
/// holds).
pub fn diff(upper: &Path, lowers: &[PathBuf]) -> Result<Vec<Change>> {
    diff_container(upper, None, lowers)
}

/// As [`diff`], for a container layerfs ran with the work dir `work`
/// (only read): lower names showing a copy from its hard-link index (a
/// hard-linked lower file changed through another name) are compared as
/// the container shows them.
pub fn diff_container(
    upper: &Path,
    work: Option<&Path>,
    lowers: &[PathBuf],
) -> Result<Vec<Change>> {
    let new = open_container(upper, lowers)?;
    let index = HardLinkIndex::open(work)?;
    let old = if lowers.is_empty() {
        None
    } else {
        Some(LayerStack::open(lowers)?)
    };
    let new_root = dir_of(new.stack.root()?.dir)?;
    let mut differ = Differ {
        new: &new.stack,
        old: old.as_ref(),
        out: Vec::new(),
        wanted: match &index {
            Some(i) => i.showing_names(&new.stack, &new_root)?,
            None => HashSet::new(),
        },
        index: index.as_ref(),
    };
    let old_root = match &old {
        Some(o) => Some(dir_of(o.root()?.dir)?),
        None => None,
    };
    differ.dir(&new_root, old_root.as_ref())?;
    let mut out = differ.out;
    out.sort_by(|a, b| a.0.as_os_str().as_bytes().cmp(b.0.as_os_str().as_bytes()));
    Ok(out
        .into_iter()
        .map(|(p, kind)| Change {
            kind,
            path: show_path(&p),
        })
        .collect())
}

fn dir_of(dir: Option<MergedDir>) -> Result<MergedDir> {
    dir.ok_or_else(|| Error::new(libc::EIO, "diff", "/", "root is not a directory"))
}

/// What docker compares (its `statDifferent`): for directories only type,
/// mode, owner and device; size and mtime say nothing there.
fn stat_differs(old: &Stat, new: &Stat) -> bool {
    old.mode != new.mode
        || old.uid != new.uid
        || old.gid != new.gid
        || old.rdev != new.rdev
        || (!new.is_dir() && (old.size != new.size || old.mtime != new.mtime))
}

struct Differ<'a> {
    new: &'a LayerStack,
    old: Option<&'a LayerStack>,
    out: Vec<(RelPath, ChangeKind)>,
    index: Option<&'a HardLinkIndex>,
    /// Lower-only names showing an index copy, and their parents.
    wanted: HashSet<Vec<u8>>,
}

impl Differ<'_> {
    /// Compare one directory; true when anything below it changed.
    fn dir(&mut self, new_dir: &MergedDir, old_dir: Option<&MergedDir>) -> Result<bool> {
        let new_list = self.new.read_dir(new_dir)?;
        let old_list = match (self.old, old_dir) {
            (Some(old), Some(d)) => old.read_dir(d)?,
            _ => Listing::default(),
        };
        // Below a renamed directory the lower objects differ from the old
        // view's at the same path: compare every one of them.
        let same_lower = new_dir.lower_path == new_dir.path;
        let names: BTreeSet<OsString> = new_list
            .entries
            .iter()
            .chain(old_list.entries.iter())
            .map(|c| c.name.clone())
            .collect();
        let mut changed = false;
        for name in names {
            let path = new_dir
                .path
                .join(&name)
                .map_err(|e| Error::io(e, "diff", show_path(&new_dir.path)))?;
            match (new_list.get(&name), old_list.get(&name)) {
                (Some(nc), None) => {
                    changed = true;
                    self.out.push((path, ChangeKind::Added));
                    if nc.kind == FileKind::Dir {
                        let r = self.new.resolve(new_dir, nc)?;
                        self.all_added(&dir_of(r.dir)?)?;
                    }
                }
                (None, Some(_)) => {
                    changed = true;
                    self.out.push((path, ChangeKind::Deleted));
                }
                (Some(nc), Some(oc)) => {
                    if same_lower
                        && nc.layer != 0
                        && !self.wanted.contains(path.as_os_str().as_bytes())
                    {
                        continue;
                    }
                    let (Some(old), Some(old_dir)) = (self.old, old_dir) else {
                        continue;
                    };
                    let rn = self.new.resolve(new_dir, nc)?;
                    let ro = old.resolve(old_dir, oc)?;
                    let shown = self
                        .index
                        .and_then(|i| i.copy_of(self.new, &rn))
                        .map_or(rn.stat, |(_, st)| st);
                    let differs = stat_differs(&ro.stat, &shown);
                    if differs {
                        self.out.push((path.clone(), ChangeKind::Changed));
                    }
                    let mut inner = false;
                    if rn.kind == FileKind::Dir {
                        let nd = dir_of(rn.dir)?;
                        if ro.kind == FileKind::Dir {
                            inner = self.dir(&nd, Some(&dir_of(ro.dir)?))?;
                        } else {
                            inner = self.all_added(&nd)?;
                        }
                        if inner && !differs {
                            self.out.push((path, ChangeKind::Changed));
                        }
                    }
                    changed |= differs || inner;
                }
                (None, None) => {}
            }
        }
        Ok(changed)
    }

    /// Everything below an added directory is added.
    fn all_added(&mut self, dir: &MergedDir) -> Result<bool> {
        let listing = self.new.read_dir(dir)?;
        for child in &listing.entries {
            let path = dir
                .path
                .join(&child.name)
                .map_err(|e| Error::io(e, "diff", show_path(&dir.path)))?;
            self.out.push((path, ChangeKind::Added));
            if child.kind == FileKind::Dir {
                let r = self.new.resolve(dir, child)?;
                self.all_added(&dir_of(r.dir)?)?;
            }
        }
        Ok(!listing.entries.is_empty())
    }
}
