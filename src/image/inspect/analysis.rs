//! `whiteouts` and `history`: the stack is applied bottom-up, one layer at
//! a time, onto an in-memory model of what the layers below show. Each
//! whiteout, opaque mark and replaced object of a layer is recorded with
//! the lower objects it makes invisible, and each layer's objects are
//! counted as added or changed against the model.

use std::collections::{BTreeMap, HashSet};
use std::ffi::OsString;
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;

use serde::Serialize;

use super::{HiddenEntry, at, kind_name, open_layers, show_path};
use crate::error::{Error, Result};
use crate::layers::{FileKind, Layer, RawKind, RelPath};

/// What hides the lower content: a whiteout of the name, or an opaque
/// directory hiding everything below it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum MarkKind {
    Whiteout,
    Opaque,
}

/// One whiteout or opaque directory and what it hides.
#[derive(Debug, Clone, Serialize)]
pub struct WhiteoutRecord {
    /// The layer holding the mark (0 is the top).
    pub layer: usize,
    /// The whited-out path, or the opaque directory.
    pub path: String,
    pub mark: MarkKind,
    /// Every lower object it hides (a directory's whole content).
    pub hides: Vec<HiddenEntry>,
    /// Regular-file bytes of `hides`; a hard-linked inode counts once.
    pub hidden_bytes: u64,
}

/// An object that replaces lower objects of the same name.
#[derive(Debug, Clone, Serialize)]
pub struct ShadowRecord {
    pub layer: usize,
    pub path: String,
    pub shadows: Vec<HiddenEntry>,
    pub shadowed_bytes: u64,
}

/// The totals of one layer's marks and replacements.
#[derive(Debug, Clone, Serialize)]
pub struct LayerTotals {
    pub layer: usize,
    pub dir: PathBuf,
    pub whiteouts: usize,
    pub opaque_dirs: usize,
    pub hidden_entries: usize,
    pub hidden_bytes: u64,
    pub shadowed_entries: usize,
    pub shadowed_bytes: u64,
}

/// Totals over the whole stack; an inode counts once per layer.
#[derive(Debug, Clone, Default, Serialize)]
pub struct StackTotals {
    pub whiteouts: usize,
    pub opaque_dirs: usize,
    pub hidden_entries: usize,
    pub hidden_bytes: u64,
    pub shadowed_entries: usize,
    pub shadowed_bytes: u64,
    /// Bytes the stack stores but never shows (hidden or shadowed).
    pub wasted_bytes: u64,
}

/// `layerfs whiteouts`: every mark, every shadowing, and the totals.
#[derive(Debug, Clone, Serialize)]
pub struct WhiteoutReport {
    /// The layer dirs, top first.
    pub layers: Vec<PathBuf>,
    /// Largest first, then by layer and path.
    pub whiteouts: Vec<WhiteoutRecord>,
    /// Largest first, then by layer and path.
    pub shadowed: Vec<ShadowRecord>,
    /// Largest (hidden + shadowed bytes) first.
    pub per_layer: Vec<LayerTotals>,
    pub total: StackTotals,
}

/// One layer's changes against the layers below it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct LayerChanges {
    pub layer: usize,
    pub dir: PathBuf,
    /// Objects (files, directories, links, ...) with no counterpart below.
    pub added: u64,
    /// Objects replacing a lower object of the same name (a directory
    /// merging into a lower directory is not counted).
    pub changed: u64,
    /// Lower names whited out or hidden by an opaque directory, and not
    /// replaced in this layer (a removed directory counts once).
    pub deleted: u64,
    /// Regular-file bytes stored in the layer; a hard-linked inode once.
    pub size: u64,
}

/// `history`: one entry per layer, top first.
pub type HistoryReport = Vec<LayerChanges>;

/// Explain every whiteout and shadowed object of a stack (top first).
pub fn whiteouts(dirs: &[PathBuf]) -> Result<WhiteoutReport> {
    Ok(analyze(dirs)?.report)
}

/// Per-layer change counts of a stack (top first).
pub fn history(dirs: &[PathBuf]) -> Result<HistoryReport> {
    Ok(analyze(dirs)?.history)
}

struct Analysis {
    report: WhiteoutReport,
    history: HistoryReport,
}

/// One layer's tree as read from disk.
#[derive(Debug, Default)]
struct RawNode {
    kind: Option<FileKind>,
    size: u64,
    ino: u64,
    redirect: Option<Vec<u8>>,
    opaque: bool,
    whiteouts: Vec<OsString>,
    children: BTreeMap<OsString, RawNode>,
}

/// One object of one layer, as the model remembers it.
#[derive(Debug, Clone)]
struct Source {
    layer: usize,
    path: RelPath,
    kind: FileKind,
    size: u64,
    ino: u64,
}

/// One name of the merged view of the layers applied so far.
#[derive(Debug, Clone)]
struct Node {
    kind: FileKind,
    /// The objects shown here: every layer's copy of a merged directory.
    sources: Vec<Source>,
    children: BTreeMap<OsString, Node>,
}

struct Pending {
    layer: usize,
    path: RelPath,
    /// None: a shadowing.
    mark: Option<MarkKind>,
    hidden: Vec<Source>,
}

fn read_layer(layer: &Layer, rel: &RelPath, has_redirect: &mut bool) -> Result<RawNode> {
    let raw = layer
        .read_dir(rel)
        .map_err(|e| Error::io(e, "readdir", at(layer.path(), rel)))?;
    let mut node = RawNode {
        kind: Some(FileKind::Dir),
        opaque: raw.marks.opaque,
        ..RawNode::default()
    };
    for entry in raw.entries {
        let child = rel
            .join(&entry.name)
            .map_err(|e| Error::io(e, "readdir", at(layer.path(), rel)))?;
        match entry.kind {
            RawKind::Whiteout => node.whiteouts.push(entry.name),
            RawKind::Object(FileKind::Dir) => {
                let mut sub = read_layer(layer, &child, has_redirect)?;
                sub.ino = entry.ino;
                sub.redirect = layer
                    .redirect(&child)
                    .map_err(|e| Error::io(e, "read redirect", at(layer.path(), &child)))?;
                *has_redirect |= sub.redirect.is_some();
                node.children.insert(entry.name, sub);
            }
            RawKind::Object(kind) => {
                let size = if kind == FileKind::Regular {
                    layer
                        .stat(&child)
                        .map_err(|e| Error::io(e, "stat", at(layer.path(), &child)))?
                        .size
                } else {
                    0
                };
                node.children.insert(
                    entry.name,
                    RawNode {
                        kind: Some(kind),
                        size,
                        ino: entry.ino,
                        ..RawNode::default()
                    },
                );
            }
        }
    }
    node.whiteouts.sort();
    Ok(node)
}

fn flatten(node: &Node, out: &mut Vec<Source>) {
    out.extend(node.sources.iter().cloned());
    for child in node.children.values() {
        flatten(child, out);
    }
}

/// The node at `path` (a redirect target) in the model of the layers
/// below, if it is there.
fn find<'a>(root: &'a Node, path: &RelPath) -> Option<&'a Node> {
    let mut node = root;
    if path.is_root() {
        return Some(node);
    }
    for comp in path.as_os_str().as_bytes().split(|&b| b == b'/') {
        node = node.children.get(std::ffi::OsStr::from_bytes(comp))?;
    }
    Some(node)
}

/// Where a redirect of the directory `rel` points: absolute from the root,
/// else relative to its parent.
fn redirect_target(rel: &RelPath, target: &[u8]) -> Option<RelPath> {
    match target.strip_prefix(b"/") {
        Some(abs) => RelPath::from_bytes(abs),
        None => rel.split().0.join(std::ffi::OsStr::from_bytes(target)).ok(),
    }
}

struct Applier<'a> {
    layer: usize,
    below: Option<&'a Node>,
    pending: &'a mut Vec<Pending>,
    changes: &'a mut LayerChanges,
    inos: HashSet<u64>,
}

impl Applier<'_> {
    fn apply(&mut self, raw: &RawNode, rel: &RelPath, merged: &mut Node) -> Result<()> {
        let join = |name: &OsString| {
            rel.join(name)
                .map_err(|e| Error::io(e, "inspect", show_path(rel)))
        };
        // Lower names this layer removes; one it also provides is replaced.
        let mut removed: HashSet<OsString> = HashSet::new();
        if raw.opaque && !rel.is_root() {
            let taken = std::mem::take(&mut merged.children);
            let mut hidden = Vec::new();
            for (name, node) in taken {
                flatten(&node, &mut hidden);
                if !raw.children.contains_key(&name) {
                    self.changes.deleted += 1;
                }
                removed.insert(name);
            }
            self.pending.push(Pending {
                layer: self.layer,
                path: rel.clone(),
                mark: Some(MarkKind::Opaque),
                hidden,
            });
        }
        for name in &raw.whiteouts {
            let mut hidden = Vec::new();
            if let Some(node) = merged.children.remove(name) {
                flatten(&node, &mut hidden);
                if !raw.children.contains_key(name) {
                    self.changes.deleted += 1;
                }
                removed.insert(name.clone());
            }
            self.pending.push(Pending {
                layer: self.layer,
                path: join(name)?,
                mark: Some(MarkKind::Whiteout),
                hidden,
            });
        }
        for (name, rc) in &raw.children {
            let kind = rc.kind.unwrap_or(FileKind::Regular);
            let path = join(name)?;
            if kind == FileKind::Regular && self.inos.insert(rc.ino) {
                self.changes.size += rc.size;
            }
            let source = Source {
                layer: self.layer,
                path: path.clone(),
                kind,
                size: rc.size,
                ino: rc.ino,
            };
            if let Some(existing) = merged.children.get_mut(name)
                && existing.kind == FileKind::Dir
                && kind == FileKind::Dir
                && rc.redirect.is_none()
            {
                existing.sources.push(source);
                self.apply(rc, &path, existing)?;
                continue;
            }
            match merged.children.remove(name) {
                Some(old) => {
                    self.changes.changed += 1;
                    let mut hidden = Vec::new();
                    flatten(&old, &mut hidden);
                    self.pending.push(Pending {
                        layer: self.layer,
                        path: path.clone(),
                        mark: None,
                        hidden,
                    });
                }
                None if removed.contains(name) => self.changes.changed += 1,
                None => self.changes.added += 1,
            }
            let mut node = Node {
                kind,
                sources: vec![source],
                children: BTreeMap::new(),
            };
            if kind == FileKind::Dir {
                // A renamed directory shows the lower directory it came
                // from (as the layers below showed it before this layer).
                let moved = rc
                    .redirect
                    .as_deref()
                    .and_then(|t| redirect_target(&path, t))
                    .and_then(|t| self.below.and_then(|b| find(b, &t)))
                    .filter(|n| n.kind == FileKind::Dir);
                if let Some(from) = moved {
                    node.sources.extend(from.sources.iter().cloned());
                    node.children = from.children.clone();
                }
                self.apply(rc, &path, &mut node)?;
            }
            merged.children.insert(name.clone(), node);
        }
        Ok(())
    }
}

fn collect_visible(node: &Node, out: &mut HashSet<(usize, Vec<u8>)>) {
    for s in &node.sources {
        out.insert((s.layer, s.path.as_os_str().as_bytes().to_vec()));
    }
    for c in node.children.values() {
        collect_visible(c, out);
    }
}

/// Regular-file bytes of `sources`, an inode once per layer, adding the
/// counted (layer, inode) pairs to `seen`.
fn bytes_of<'a>(
    sources: impl Iterator<Item = &'a Source>,
    seen: &mut HashSet<(usize, u64)>,
) -> u64 {
    sources
        .filter(|s| s.kind == FileKind::Regular && seen.insert((s.layer, s.ino)))
        .map(|s| s.size)
        .sum()
}

fn analyze(dirs: &[PathBuf]) -> Result<Analysis> {
    let layers = open_layers(dirs)?;
    let root_source = |layer: usize| Source {
        layer,
        path: RelPath::root(),
        kind: FileKind::Dir,
        size: 0,
        ino: 0,
    };
    let mut merged = Node {
        kind: FileKind::Dir,
        sources: Vec::new(),
        children: BTreeMap::new(),
    };
    let mut pending = Vec::new();
    let mut history = vec![LayerChanges::default(); layers.len()];
    for (idx, layer) in layers.iter().enumerate().rev() {
        let mut has_redirect = false;
        let raw = read_layer(layer, &RelPath::root(), &mut has_redirect)?;
        let below = has_redirect.then(|| merged.clone());
        let changes = &mut history[idx];
        changes.layer = idx;
        changes.dir = dirs[idx].clone();
        merged.sources.push(root_source(idx));
        let mut applier = Applier {
            layer: idx,
            below: below.as_ref(),
            pending: &mut pending,
            changes,
            inos: HashSet::new(),
        };
        applier.apply(&raw, &RelPath::root(), &mut merged)?;
    }
    // What a redirect moved is still shown: it is not hidden.
    let mut visible = HashSet::new();
    collect_visible(&merged, &mut visible);
    for p in &mut pending {
        p.hidden
            .retain(|s| !visible.contains(&(s.layer, s.path.as_os_str().as_bytes().to_vec())));
    }
    Ok(Analysis {
        report: build_report(dirs, &pending),
        history,
    })
}

fn entries(sources: &[Source]) -> Vec<HiddenEntry> {
    let mut out: Vec<HiddenEntry> = sources
        .iter()
        .map(|s| HiddenEntry {
            layer: s.layer,
            path: show_path(&s.path),
            kind: kind_name(s.kind),
            size: if s.kind == FileKind::Regular {
                s.size
            } else {
                0
            },
        })
        .collect();
    out.sort_by(|a, b| (a.layer, &a.path).cmp(&(b.layer, &b.path)));
    out
}

fn build_report(dirs: &[PathBuf], pending: &[Pending]) -> WhiteoutReport {
    let mut per_layer: Vec<LayerTotals> = dirs
        .iter()
        .enumerate()
        .map(|(layer, dir)| LayerTotals {
            layer,
            dir: dir.clone(),
            whiteouts: 0,
            opaque_dirs: 0,
            hidden_entries: 0,
            hidden_bytes: 0,
            shadowed_entries: 0,
            shadowed_bytes: 0,
        })
        .collect();
    let mut layer_hidden: Vec<HashSet<(usize, u64)>> = vec![HashSet::new(); dirs.len()];
    let mut layer_shadowed: Vec<HashSet<(usize, u64)>> = vec![HashSet::new(); dirs.len()];
    let (mut all_hidden, mut all_shadowed) = (HashSet::new(), HashSet::new());
    let mut total = StackTotals::default();
    let mut whiteouts = Vec::new();
    let mut shadowed = Vec::new();
    for p in pending {
        let own = bytes_of(p.hidden.iter(), &mut HashSet::new());
        let t = &mut per_layer[p.layer];
        match p.mark {
            Some(mark) => {
                if mark == MarkKind::Whiteout {
                    t.whiteouts += 1;
                    total.whiteouts += 1;
                } else {
                    t.opaque_dirs += 1;
                    total.opaque_dirs += 1;
                }
                t.hidden_entries += p.hidden.len();
                total.hidden_entries += p.hidden.len();
                t.hidden_bytes += bytes_of(p.hidden.iter(), &mut layer_hidden[p.layer]);
                total.hidden_bytes += bytes_of(p.hidden.iter(), &mut all_hidden);
                whiteouts.push(WhiteoutRecord {
                    layer: p.layer,
                    path: show_path(&p.path),
                    mark,
                    hides: entries(&p.hidden),
                    hidden_bytes: own,
                });
            }
            None => {
                t.shadowed_entries += p.hidden.len();
                total.shadowed_entries += p.hidden.len();
                t.shadowed_bytes += bytes_of(p.hidden.iter(), &mut layer_shadowed[p.layer]);
                total.shadowed_bytes += bytes_of(p.hidden.iter(), &mut all_shadowed);
                shadowed.push(ShadowRecord {
                    layer: p.layer,
                    path: show_path(&p.path),
                    shadows: entries(&p.hidden),
                    shadowed_bytes: own,
                });
            }
        }
    }
    total.wasted_bytes = bytes_of(
        pending.iter().flat_map(|p| p.hidden.iter()),
        &mut HashSet::new(),
    );
    whiteouts.sort_by(|a, b| {
        b.hidden_bytes
            .cmp(&a.hidden_bytes)
            .then(a.layer.cmp(&b.layer))
            .then(a.path.cmp(&b.path))
    });
    shadowed.sort_by(|a, b| {
        b.shadowed_bytes
            .cmp(&a.shadowed_bytes)
            .then(a.layer.cmp(&b.layer))
            .then(a.path.cmp(&b.path))
    });
    per_layer.sort_by(|a, b| {
        (b.hidden_bytes + b.shadowed_bytes)
            .cmp(&(a.hidden_bytes + a.shadowed_bytes))
            .then(a.layer.cmp(&b.layer))
    });
    WhiteoutReport {
        layers: dirs.to_vec(),
        whiteouts,
        shadowed,
        per_layer,
        total,
    }
}
