//! Explaining layers: which whiteouts hide what and how many bytes that
//! costs (`whiteouts`), what each layer adds, changes and deletes
//! (`history`), which layer provides a path (`which`), what a container
//! layer changed (`diff`), and writing a container layer as an OCI layer
//! tar (`commit`). For an image of the store the same reports name each
//! layer by its diff_id and history entry (`image_view.rs`).
//!
//! Everything here works on layer directories as they lie on disk (either
//! whiteout dialect, opaque marks, redirects in an upper); how a layer's
//! entries are read is `layers/`'s business and the union's rules are
//! `union/`'s: this module only walks and reports.

mod analysis;
mod diff;
mod image_view;
mod index;
mod tar_writer;
mod which;

#[cfg(test)]
mod tests;

use std::path::{Path, PathBuf};

use serde::Serialize;

pub use analysis::{
    HistoryReport, LayerChanges, LayerTotals, MarkKind, ShadowRecord, StackTotals, WhiteoutRecord,
    WhiteoutReport, history, whiteouts,
};
pub use diff::{Change, ChangeKind, diff, diff_container};
pub use image_view::{
    ImageHistoryEntry, ImageWhiteoutReport, LabelledWhich, LayerLabel, image_history,
    image_whiteouts, label_layers, labelled_which, short,
};
pub use tar_writer::{LayerTarSummary, write_container_layer_tar, write_layer_tar};
pub use which::{HideReason, WhichEntry, WhichReport, which};

use crate::error::{Error, Result};
use crate::layers::{FileKind, Layer, RelPath};

/// One object of one layer that something above keeps from being seen.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HiddenEntry {
    /// Index of the layer holding it (0 is the top).
    pub layer: usize,
    /// Its path in that layer.
    pub path: String,
    pub kind: &'static str,
    /// Bytes of a regular file; 0 for anything else.
    pub size: u64,
}

/// The name of an object type in reports.
pub fn kind_name(kind: FileKind) -> &'static str {
    match kind {
        FileKind::Regular => "file",
        FileKind::Dir => "dir",
        FileKind::Symlink => "symlink",
        FileKind::Fifo => "fifo",
        FileKind::CharDev => "chardev",
        FileKind::BlockDev => "blockdev",
        FileKind::Socket => "socket",
    }
}

/// A path inside a layer as reports show it: `/a/b`, `/` for the root.
pub fn show_path(rel: &RelPath) -> String {
    rel.to_string()
}

/// Open every layer (top first), with messages naming the bad one.
fn open_layers(dirs: &[PathBuf]) -> Result<Vec<Layer>> {
    if dirs.is_empty() {
        return Err(Error::new(libc::EINVAL, "inspect", "", "no layer given"));
    }
    dirs.iter()
        .map(|d| Layer::open(d).map_err(|e| Error::io(e, "open layer", d.display())))
        .collect()
}

/// `LAYER/PATH` for messages.
fn at(layer: &Path, rel: &RelPath) -> String {
    if rel.is_root() {
        layer.display().to_string()
    } else {
        format!("{}/{}", layer.display(), rel.as_os_str().to_string_lossy())
    }
}

/// A path given on the command line (`/a/b`, `a/b`, `/`) as a path
/// inside a layer; None when it has `.`/`..`/empty components.
pub fn parse_path(text: &str) -> Option<RelPath> {
    let trimmed = text.trim_start_matches('/');
    RelPath::from_bytes(trimmed.as_bytes())
}
