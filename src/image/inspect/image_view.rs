//! The reports over layer directories, for an image of the store: each
//! layer named by its diff_id and by the config's history entry
//! (`created_by`, `created`, `comment`), so a report says which build step
//! a whiteout or a file came from.
//!
//! History entries pair with layers in order, bottom first, the
//! `empty_layer` ones aside (they changed only the config); an image with
//! fewer entries than layers leaves the top layers without one.

use std::path::{Path, PathBuf};

use serde::Serialize;

use super::{HistoryReport, WhichReport, WhiteoutReport, history, which, whiteouts};
use crate::error::Result;
use crate::image::Digest;
use crate::image::spec::History;
use crate::image::store::Image;
use crate::layers::RelPath;

/// One layer of a stack, with what the image says of it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct LayerLabel {
    /// Its index in the report's stack (0 is the top).
    pub layer: usize,
    pub dir: PathBuf,
    /// The container's writable layer (not part of the image).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub upper: bool,
    pub diff_id: Option<Digest>,
    pub created: Option<String>,
    pub created_by: Option<String>,
    pub comment: Option<String>,
}

impl LayerLabel {
    /// `sha256:0123456789ab (created_by)`, or the directory.
    pub fn describe(&self) -> String {
        if self.upper {
            return format!("the container's layer {}", self.dir.display());
        }
        match (&self.diff_id, &self.created_by) {
            (Some(d), Some(by)) => format!("{} {}", short(d), by),
            (Some(d), None) => short(d),
            _ => self.dir.display().to_string(),
        }
    }
}

/// `sha256:` and the first 12 hex digits.
pub fn short(digest: &Digest) -> String {
    format!("sha256:{}", &digest.hex()[..12])
}

/// The history entry of each layer of `image`, bottom first (None for a
/// layer the history does not cover).
fn layer_history(image: &Image) -> Vec<Option<&History>> {
    let mut out: Vec<Option<&History>> = Vec::new();
    for h in image.config.history.iter().filter(|h| !h.empty_layer) {
        if out.len() < image.layer_dirs.len() {
            out.push(Some(h));
        }
    }
    out.resize(image.layer_dirs.len(), None);
    out
}

/// Name the layers of a stack `dirs` (top first): the upper, if `upper`
/// is given, and every directory that is a layer of `image` (the topmost
/// of a layer the image repeats).
pub fn label_layers(
    dirs: &[PathBuf],
    image: Option<&Image>,
    upper: Option<&Path>,
) -> Vec<LayerLabel> {
    let history = image.map(layer_history).unwrap_or_default();
    dirs.iter()
        .enumerate()
        .map(|(layer, dir)| {
            let mut label = LayerLabel {
                layer,
                dir: dir.clone(),
                upper: upper == Some(dir.as_path()),
                ..LayerLabel::default()
            };
            let found = image.filter(|_| !label.upper).and_then(|img| {
                img.layer_dirs
                    .iter()
                    .rposition(|d| d == dir)
                    .map(|i| (i, img))
            });
            if let Some((i, img)) = found {
                label.diff_id = img.config.rootfs.diff_ids.get(i).cloned();
                if let Some(Some(h)) = history.get(i) {
                    label.created = h.created.clone();
                    label.created_by = h.created_by.clone();
                    label.comment = h.comment.clone();
                }
            }
            label
        })
        .collect()
}

/// One entry of `history IMAGE`: a layer with its history entry, or a
/// history entry that made no layer (`empty_layer`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ImageHistoryEntry {
    /// The layer's index in the stack, top first; None for a config-only
    /// entry.
    pub layer: Option<usize>,
    pub diff_id: Option<Digest>,
    pub created: Option<String>,
    pub created_by: Option<String>,
    pub comment: Option<String>,
    pub empty_layer: bool,
    /// Regular-file bytes of the layer (0 for a config-only entry).
    pub size: u64,
    /// The layer's changes against the layers below; None for a
    /// config-only entry.
    pub added: Option<u64>,
    pub changed: Option<u64>,
    pub deleted: Option<u64>,
}

/// `history IMAGE`: every history entry and layer, top first.
pub fn image_history(image: &Image) -> Result<Vec<ImageHistoryEntry>> {
    let n = image.layer_dirs.len();
    let dirs: Vec<PathBuf> = image.layer_dirs.iter().rev().cloned().collect();
    // Top first: layer_dirs[i] is stack index n-1-i.
    let counts: HistoryReport = if dirs.is_empty() {
        Vec::new()
    } else {
        history(&dirs)?
    };
    let layer_entry = |i: usize, h: Option<&History>| {
        let c = &counts[n - 1 - i];
        ImageHistoryEntry {
            layer: Some(n - 1 - i),
            diff_id: image.config.rootfs.diff_ids.get(i).cloned(),
            created: h.and_then(|h| h.created.clone()),
            created_by: h.and_then(|h| h.created_by.clone()),
            comment: h.and_then(|h| h.comment.clone()),
            empty_layer: false,
            size: c.size,
            added: Some(c.added),
            changed: Some(c.changed),
            deleted: Some(c.deleted),
        }
    };
    let mut out = Vec::new();
    let mut next = 0;
    for h in &image.config.history {
        if h.empty_layer || next >= n {
            out.push(ImageHistoryEntry {
                layer: None,
                diff_id: None,
                created: h.created.clone(),
                created_by: h.created_by.clone(),
                comment: h.comment.clone(),
                empty_layer: h.empty_layer,
                size: 0,
                added: None,
                changed: None,
                deleted: None,
            });
        } else {
            out.push(layer_entry(next, Some(h)));
            next += 1;
        }
    }
    for i in next..n {
        out.push(layer_entry(i, None));
    }
    out.reverse();
    Ok(out)
}

/// `whiteouts IMAGE`: the report over the image's layers as mounted, and
/// what each layer is.
#[derive(Debug, Clone, Serialize)]
pub struct ImageWhiteoutReport {
    pub image: Digest,
    pub image_layers: Vec<LayerLabel>,
    #[serde(flatten)]
    pub report: WhiteoutReport,
}

pub fn image_whiteouts(image: &Image) -> Result<ImageWhiteoutReport> {
    let dirs = image.lowerdirs();
    Ok(ImageWhiteoutReport {
        image: image.record.id.clone(),
        image_layers: label_layers(&dirs, Some(image), None),
        report: whiteouts(&dirs)?,
    })
}

/// `which` over an image or a mount: the report and what each layer is.
#[derive(Debug, Clone, Serialize)]
pub struct LabelledWhich {
    pub image: Option<Digest>,
    pub image_layers: Vec<LayerLabel>,
    #[serde(flatten)]
    pub report: WhichReport,
}

/// Explain `path` in the stack `dirs` (top first; `upper` is the
/// container's layer when it is one of them), naming the layers `image`
/// holds.
pub fn labelled_which(
    path: &RelPath,
    dirs: &[PathBuf],
    image: Option<&Image>,
    upper: Option<&Path>,
) -> Result<LabelledWhich> {
    Ok(LabelledWhich {
        image: image.map(|i| i.record.id.clone()),
        image_layers: label_layers(dirs, image, upper),
        report: which(path, dirs)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::spec::{Descriptor, ImageConfig, Manifest, RootFs};
    use crate::image::store::ImageRecord;

    fn history(created_by: &str, empty_layer: bool) -> History {
        History {
            created_by: Some(created_by.to_string()),
            empty_layer,
            ..History::default()
        }
    }

    /// Two empty layers; the history has a config-only entry and one entry
    /// for the bottom layer, none for the top one.
    #[test]
    fn history_pairs_entries_with_layers_bottom_first() {
        let dir = tempfile::tempdir().unwrap();
        let (d0, d1) = (dir.path().join("d0"), dir.path().join("d1"));
        std::fs::create_dir(&d0).unwrap();
        std::fs::create_dir(&d1).unwrap();
        std::fs::write(d1.join("f"), b"abc").unwrap();
        let ids = [Digest::of(b"0"), Digest::of(b"1")];
        let id = Digest::of(b"config");
        let descriptor = |d: &Digest| Descriptor {
            media_type: String::new(),
            digest: d.clone(),
            size: 0,
            platform: None,
            annotations: Default::default(),
        };
        let image = Image {
            record: ImageRecord {
                id: id.clone(),
                manifest: id.clone(),
                config: id.clone(),
                names: Vec::new(),
                created: String::new(),
            },
            manifest: Manifest {
                schema_version: 2,
                media_type: None,
                config: descriptor(&id),
                layers: ids.iter().map(descriptor).collect(),
                annotations: Default::default(),
            },
            manifest_bytes: Vec::new(),
            config: ImageConfig {
                rootfs: RootFs {
                    fs_type: "layers".into(),
                    diff_ids: ids.to_vec(),
                },
                history: vec![history("ENV A=1", true), history("bottom", false)],
                ..ImageConfig::default()
            },
            config_bytes: Vec::new(),
            layer_dirs: vec![d0.clone(), d1.clone()],
        };
        let entries = image_history(&image).unwrap();
        type Row<'a> = (Option<usize>, Option<&'a str>, Option<u64>, u64);
        let got: Vec<Row<'_>> = entries
            .iter()
            .map(|e| (e.layer, e.created_by.as_deref(), e.added, e.size))
            .collect();
        assert_eq!(
            got,
            vec![
                (Some(0), None, Some(1), 3),
                (Some(1), Some("bottom"), Some(0), 0),
                (None, Some("ENV A=1"), None, 0),
            ]
        );
        assert_eq!(entries[0].diff_id.as_ref(), Some(&ids[1]));
        let labels = label_layers(&image.lowerdirs(), Some(&image), None);
        assert_eq!(labels[0].diff_id.as_ref(), Some(&ids[1]));
        assert_eq!(labels[0].created_by, None);
        assert_eq!(labels[1].created_by.as_deref(), Some("bottom"));
        assert_eq!(labels[1].describe(), format!("{} bottom", short(&ids[0])));
    }
}
