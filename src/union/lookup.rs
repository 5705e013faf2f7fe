//! Which layers merge into a directory, found as the kernel's overlayfs
//! finds them (fs/overlayfs/namei.c, `ovl_lookup`): the name is asked of
//! each layer of the parent in turn, top first. A redirect on the way, in
//! any layer, renames what the layers below are asked for: a relative one
//! replaces the name in the parent, an absolute one is walked from the
//! root of every layer below (and so can reach a directory whose parent
//! holds nothing there). A whiteout or a non-directory ends the search, and
//! so does an opaque directory, whose redirect is not read; an opaque
//! directory on the way of an absolute walk ends it unless a redirect
//! further down that walk says where to go on.

use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::OsStrExt;

use super::{Child, LayerIdx, LayerStack, MergedDir, layer_display};
use crate::error::{Error, Result};
use crate::layers::{DirLookup, Redirect, RelPath};

/// What the next layers are asked for.
#[derive(Debug, Clone)]
enum Name {
    /// One name, in each layer's copy of the parent.
    InParent(OsString),
    /// A path from each layer's root (after an absolute redirect).
    FromRoot(RelPath),
}

/// How the search stands after one layer.
struct Search {
    name: Name,
    /// The layers below are not asked (a whiteout, a non-directory or an
    /// opaque directory was met).
    stop: bool,
}

impl LayerStack {
    /// The layers merging into the directory `child` of `parent`, whose
    /// union path is `upath`.
    pub fn child_dir(
        &self,
        parent: &MergedDir,
        child: &Child,
        upath: &RelPath,
    ) -> Result<MergedDir> {
        let has_upper = self.upper.is_some();
        let lookup_err = |e: std::io::Error| Error::io(e, "lookup", upath.to_string());
        let mut search = Search {
            name: Name::InParent(child.name.clone()),
            stop: false,
        };
        let mut lower_path = parent.lower_path.join(&child.name).map_err(lookup_err)?;
        // The layers to ask, each with the parent's path in it; layers above
        // the child's topmost one hold nothing of it (it would not show).
        let mut ask: Vec<(LayerIdx, RelPath)> = parent
            .layers
            .iter()
            .filter(|(l, _)| *l >= child.layer)
            .map(|(l, _)| (*l, parent.path_in(*l, has_upper).clone()))
            .collect();
        let mut from_root = matches!(search.name, Name::FromRoot(_));
        let mut parts = Vec::new();
        let mut i = 0;
        while i < ask.len() && !search.stop {
            let (idx, ref at_parent) = ask[i];
            i += 1;
            let found = match search.name.clone() {
                Name::InParent(name) => {
                    let at = at_parent.join(&name).map_err(lookup_err)?;
                    self.step(idx, &at, None, &mut search)?.then_some(at)
                }
                Name::FromRoot(path) => self.walk(idx, &path, &mut search)?,
            };
            if idx == 0 && has_upper {
                // A redirect of the upper's is where new redirects point.
                lower_path = match &search.name {
                    Name::InParent(n) => parent.lower_path.join(n).map_err(lookup_err)?,
                    Name::FromRoot(p) => p.clone(),
                };
                // Its own entry is kept at the union path.
                parts.push((idx, upath.clone()));
            } else if let Some(at) = found {
                parts.push((idx, at));
            }
            if !from_root && let Name::FromRoot(_) = search.name {
                // Every layer below this one, from its root.
                from_root = true;
                let below = idx + 1..self.layers.len() as LayerIdx;
                ask = below.map(|l| (l, RelPath::root())).collect();
                i = 0;
            }
        }
        Ok(MergedDir {
            path: upath.clone(),
            lower_path,
            layers: parts,
        })
    }

    /// The layers from `first` down holding the directory at `path` as a
    /// walk from their roots finds it (an absolute redirect's target),
    /// each with where it is in that layer.
    pub(super) fn dirs_from_root(
        &self,
        path: &RelPath,
        first: LayerIdx,
    ) -> Result<Vec<(LayerIdx, RelPath)>> {
        let mut search = Search {
            name: Name::FromRoot(path.clone()),
            stop: false,
        };
        let mut found = Vec::new();
        for idx in first..self.layers.len() as LayerIdx {
            let Name::FromRoot(p) = search.name.clone() else {
                break;
            };
            if search.stop {
                break;
            }
            if let Some(at) = self.walk(idx, &p, &mut search)? {
                found.push((idx, at));
            }
        }
        Ok(found)
    }

    /// Ask layer `idx` for the directory at `at`: whether it is one there.
    /// A whiteout or non-directory stops the search; a directory is opaque
    /// (stop) or may carry a redirect, which renames what the layers below
    /// are asked for. `walk` is, inside an absolute walk, the part of the
    /// path before this component and the part after it.
    fn step(
        &self,
        idx: LayerIdx,
        at: &RelPath,
        walk: Option<(&RelPath, &[u8])>,
        search: &mut Search,
    ) -> Result<bool> {
        let layer = self.layer(idx);
        match layer.lookup_dir(at) {
            DirLookup::Absent => Ok(false),
            DirLookup::Stop => {
                search.stop = true;
                Ok(false)
            }
            DirLookup::Dir { opaque: true, .. } => {
                search.stop = true;
                Ok(true)
            }
            DirLookup::Dir {
                opaque: false,
                redirect: None,
            } => Ok(true),
            // redirect_dir=nofollow: the kernel refuses to look below a
            // redirect (EPERM: following one is like a symlink into the
            // layers below, without their permission checks).
            DirLookup::Dir { opaque: false, .. } if !self.redirect_dir.follows() => {
                if idx as usize + 1 < self.layers.len() {
                    return Err(Error::new(
                        libc::EPERM,
                        "lookup",
                        layer_display(layer, at),
                        "refusing to follow a redirect (redirect_dir=nofollow)",
                    ));
                }
                Ok(true)
            }
            DirLookup::Dir {
                opaque: false,
                redirect: Some(target),
            } => {
                let bad = || {
                    Error::new(
                        libc::EIO,
                        "lookup",
                        layer_display(layer, at),
                        "bad redirect",
                    )
                };
                search.name = match Redirect::parse(&target).ok_or_else(bad)? {
                    Redirect::FromRoot(abs) => {
                        // An absolute redirect starts the search over from
                        // the layers' roots, even past an opaque directory
                        // above.
                        search.stop = false;
                        let post = walk.map_or(&b""[..], |w| w.1);
                        Name::FromRoot(RelPath::from_bytes(&[abs, post].concat()).ok_or_else(bad)?)
                    }
                    Redirect::Renamed(name) => match walk {
                        None => Name::InParent(name.to_os_string()),
                        Some((before, post)) => {
                            let renamed = before.join(name).map_err(|_| bad())?;
                            let mut bytes = renamed.as_os_str().as_bytes().to_vec();
                            bytes.extend_from_slice(post);
                            Name::FromRoot(RelPath::from_bytes(&bytes).ok_or_else(bad)?)
                        }
                    },
                };
                Ok(true)
            }
        }
    }

    /// Walk `path` from the root of layer `idx`, one component at a time:
    /// where the directory is in that layer, if it is there. Each
    /// component may stop the search or redirect it (the rest of the path
    /// follows the new name in the layers below, this layer's walk goes
    /// on as it began).
    fn walk(&self, idx: LayerIdx, path: &RelPath, search: &mut Search) -> Result<Option<RelPath>> {
        let bytes = path.as_os_str().as_bytes().to_vec();
        if path.is_root() {
            return Ok(Some(RelPath::root()));
        }
        let comps: Vec<&[u8]> = bytes.split(|&b| b == b'/').collect();
        let mut at = RelPath::root();
        for (k, comp) in comps.iter().enumerate() {
            let before = at.clone();
            at = at
                .join(OsStr::from_bytes(comp))
                .map_err(|e| Error::io(e, "lookup", path.to_string()))?;
            // The rest of the path, with its leading `/`.
            let post_start: usize = comps[..=k].iter().map(|c| c.len() + 1).sum::<usize>() - 1;
            let post = &bytes[post_start.min(bytes.len())..];
            // `before` is this layer's path; a relative redirect renames the
            // last component of the name asked for, whose prefix is
            // `before` as long as no redirect came earlier in this walk.
            let name_before = match &search.name {
                Name::FromRoot(p) => prefix_of(p, post.len(), comp.len()),
                Name::InParent(_) => Some(before.clone()),
            }
            .unwrap_or(before);
            if !self.step(idx, &at, Some((&name_before, post)), search)? {
                return Ok(None);
            }
        }
        Ok(Some(at))
    }
}

/// The part of `name` before its component that ends `post_len` bytes
/// from the end and is `comp_len` long.
fn prefix_of(name: &RelPath, post_len: usize, comp_len: usize) -> Option<RelPath> {
    let b = name.as_os_str().as_bytes();
    let end = b.len().checked_sub(post_len + comp_len)?;
    let prefix = b[..end].strip_suffix(b"/").unwrap_or(&b[..end]);
    RelPath::from_bytes(prefix)
}
