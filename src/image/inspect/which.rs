//! `which`: the layer that provides a path, and every lower object at the
//! path or one of its parents that is not shown, with the reason. The
//! stack is walked top-down one component at a time, as a lookup does.

use std::path::PathBuf;

use serde::Serialize;

use super::{at, kind_name, open_layers, show_path};
use crate::error::{Error, Result};
use crate::layers::{FileKind, Probe, RelPath};

/// Why a lower object is not shown.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "by", rename_all = "snake_case")]
pub enum HideReason {
    /// A higher layer has an object of the same name.
    Shadowed { layer: usize },
    /// A whiteout in `layer` at `path` (this path or a parent).
    Whiteout { layer: usize, path: String },
    /// An opaque directory in `layer` at `path`.
    Opaque { layer: usize, path: String },
    /// A non-directory in `layer` at the parent `path`.
    NonDirectory { layer: usize, path: String },
}

/// One object of one layer at the asked path or a parent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct WhichEntry {
    pub layer: usize,
    pub dir: PathBuf,
    pub path: String,
    pub kind: &'static str,
    pub size: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<HideReason>,
}

/// `layerfs which PATH`.
#[derive(Debug, Clone, Serialize)]
pub struct WhichReport {
    pub path: String,
    /// The object shown at the path; None when the stack shows nothing.
    pub provider: Option<WhichEntry>,
    /// For a directory: every layer whose directory merges into it.
    pub merged_from: Vec<usize>,
    /// Objects of lower layers at the path or its parents not shown.
    pub hidden: Vec<WhichEntry>,
}

/// Explain `path` in the stack `dirs` (top first). For a container, pass
/// its upper dir first: a renamed directory's redirect is followed into
/// the layers below it, and each entry reports its path in its own layer.
pub fn which(path: &RelPath, dirs: &[PathBuf]) -> Result<WhichReport> {
    let layers = open_layers(dirs)?;
    let n = layers.len();
    let entry = |j: usize, rel: &RelPath, kind: FileKind, size: u64, reason| WhichEntry {
        layer: j,
        dir: dirs[j].clone(),
        path: show_path(rel),
        kind: kind_name(kind),
        size: if kind == FileKind::Regular { size } else { 0 },
        reason,
    };
    let root_kind = (FileKind::Dir, 0u64);
    let mut provider = Some((0usize, RelPath::root(), root_kind));
    let mut merged_from: Vec<usize> = (0..n).collect();
    let mut closed: Vec<Option<HideReason>> = vec![None; n];
    let mut hidden = Vec::new();
    let mut prefix = RelPath::root();
    // Where the path lies in each layer: past a renamed directory (a
    // redirect) the layers below it hold it under its old name.
    let mut paths: Vec<RelPath> = vec![RelPath::root(); n];
    let bytes = std::os::unix::ffi::OsStrExt::as_bytes(path.as_os_str()).to_vec();
    let comps: Vec<&[u8]> = if path.is_root() {
        Vec::new()
    } else {
        bytes.split(|&b| b == b'/').collect()
    };
    for comp in comps {
        let name = std::os::unix::ffi::OsStrExt::from_bytes(comp);
        let bad = |e| Error::io(e, "which", show_path(path));
        prefix = prefix.join(name).map_err(bad)?;
        let parents = paths.clone();
        for (p, parent) in paths.iter_mut().zip(&parents) {
            *p = parent.join(name).map_err(bad)?;
        }
        // `here` hides the objects at this prefix in the layers still to
        // come; `deeper` is what then hides their content.
        let mut here: Option<HideReason> = None;
        let mut deeper: Option<HideReason> = None;
        let mut found: Option<(usize, FileKind, u64, RelPath)> = None;
        merged_from.clear();
        for j in 0..n {
            let here_path = paths[j].clone();
            let shown = show_path(&here_path);
            let probe = layers[j]
                .probe(&here_path)
                .map_err(|e| Error::io(e, "which", at(&dirs[j], &here_path)))?;
            let reason = closed[j].clone().or_else(|| here.clone());
            if let Some(reason) = reason {
                if let Probe::Object { kind, stat, .. } = probe {
                    hidden.push(entry(j, &here_path, kind, stat.size, Some(reason.clone())));
                }
                closed[j] = closed[j].clone().or_else(|| deeper.clone());
                continue;
            }
            let (kind, stat, opaque, whiteout_too) = match probe {
                Probe::Absent => continue,
                Probe::Whiteout => {
                    here = Some(HideReason::Whiteout {
                        layer: j,
                        path: shown.clone(),
                    });
                    deeper = here.clone();
                    continue;
                }
                Probe::Object {
                    kind,
                    stat,
                    opaque,
                    whiteout_too,
                } => (kind, stat, opaque, whiteout_too),
            };
            match found {
                None => {
                    found = Some((j, kind, stat.size, here_path.clone()));
                    if kind == FileKind::Dir {
                        merged_from.push(j);
                    } else {
                        here = Some(HideReason::Shadowed { layer: j });
                        deeper = Some(HideReason::NonDirectory {
                            layer: j,
                            path: shown.clone(),
                        });
                    }
                }
                // Only a directory leaves `here` unset: lower directories
                // merge into it, a lower non-directory ends the merge.
                Some((top, ..)) => {
                    if kind == FileKind::Dir {
                        merged_from.push(j);
                    } else {
                        hidden.push(entry(
                            j,
                            &here_path,
                            kind,
                            stat.size,
                            Some(HideReason::Shadowed { layer: top }),
                        ));
                        here = Some(HideReason::Shadowed { layer: top });
                        deeper = Some(HideReason::NonDirectory {
                            layer: j,
                            path: shown.clone(),
                        });
                        continue;
                    }
                }
            }
            if kind == FileKind::Dir {
                let redirect = layers[j]
                    .redirect(&here_path)
                    .map_err(|e| Error::io(e, "which", at(&dirs[j], &here_path)))?;
                if let Some(target) = redirect {
                    for k in j + 1..n {
                        paths[k] = redirected(&parents[k], &target).ok_or_else(|| {
                            Error::new(libc::EIO, "which", at(&dirs[j], &here_path), "bad redirect")
                        })?;
                    }
                }
            }
            if here.is_none() && opaque {
                here = Some(HideReason::Opaque {
                    layer: j,
                    path: shown.clone(),
                });
                deeper = here.clone();
            }
            if here.is_none() && whiteout_too {
                here = Some(HideReason::Whiteout {
                    layer: j,
                    path: shown.clone(),
                });
                deeper = here.clone();
            }
        }
        provider = found.map(|(j, kind, size, at)| (j, at, (kind, size)));
    }
    let provider = provider.map(|(j, rel, (kind, size))| entry(j, &rel, kind, size, None));
    if provider.as_ref().is_none_or(|p| p.kind != "dir") {
        merged_from.clear();
    }
    Ok(WhichReport {
        path: show_path(path),
        provider,
        merged_from,
        hidden,
    })
}

/// Where a redirect points, for a lower layer holding the parent at
/// `parent`: absolute from the root, else a sibling's name.
fn redirected(parent: &RelPath, target: &[u8]) -> Option<RelPath> {
    match target.strip_prefix(b"/") {
        Some(abs) => RelPath::from_bytes(abs),
        None if !target.contains(&b'/') => parent
            .join(std::os::unix::ffi::OsStrExt::from_bytes(target))
            .ok(),
        None => None,
    }
}
