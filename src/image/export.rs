//! `layerfs export`: an image from the store as a tar that other tools
//! read — an OCI image layout archive, or a docker archive. The blobs are
//! copied as stored, so every digest (manifest included) is the one the
//! image was imported or committed with.

use std::fs::{self, File};
use std::io::{self, BufWriter, Write};
use std::path::Path;

use super::digest::Digest;
use super::spec::{self, Descriptor, Index};
use super::store::{Image, Store};
use super::{ImageError, Result};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExportFormat {
    /// An OCI image layout in a tar (`oci-archive:` to skopeo).
    Oci,
    /// The `docker save` form of Docker 25+: an OCI layout plus a
    /// `manifest.json` naming the same blobs (`docker-archive:` to skopeo,
    /// `docker load`).
    DockerArchive,
}

impl ExportFormat {
    pub fn parse(text: &str) -> Option<ExportFormat> {
        match text {
            "oci" | "oci-archive" => Some(ExportFormat::Oci),
            "docker" | "docker-archive" => Some(ExportFormat::DockerArchive),
            _ => None,
        }
    }
}

/// The tag of a `name:tag` (what `org.opencontainers.image.ref.name`
/// holds in a layout).
fn tag_of(name: &str) -> &str {
    let last = name.rsplit('/').next().unwrap_or(name);
    last.rsplit_once(':').map_or("latest", |(_, t)| t)
}

/// Write `reference`'s image to `out` (atomically: a temp file beside it,
/// renamed when complete). Returns the image.
pub fn export(store: &Store, reference: &str, out: &Path, format: ExportFormat) -> Result<Image> {
    let _lock = store.lock(false)?;
    let image = store.resolve_image(reference)?;
    let file_name = out
        .file_name()
        .ok_or_else(|| ImageError::new(format!("export {}: not a file name", out.display())))?;
    let tmp = out.with_file_name(format!(
        ".{}.layerfs-{}",
        file_name.to_string_lossy(),
        std::process::id()
    ));
    let res = write_archive(store, &image, &tmp, format)
        .and_then(|()| fs::rename(&tmp, out).map_err(|e| ImageError::io("rename", out, e)));
    if let Err(e) = res {
        let _ = fs::remove_file(&tmp);
        return Err(e.context(format!("export {reference}")));
    }
    Ok(image)
}

fn write_archive(store: &Store, image: &Image, path: &Path, format: ExportFormat) -> Result<()> {
    let file = File::create(path).map_err(|e| ImageError::io("create", path, e))?;
    let mut tar = tar::Builder::new(BufWriter::new(file));
    let io_err = |e: io::Error| ImageError::io("write", path, e);
    let manifest_media = image
        .manifest
        .media_type
        .clone()
        .unwrap_or_else(|| spec::MEDIA_OCI_MANIFEST.to_string());
    let names = if image.record.names.is_empty() {
        vec![None]
    } else {
        image.record.names.iter().map(Some).collect()
    };
    let index = Index {
        schema_version: 2,
        media_type: Some(spec::MEDIA_OCI_INDEX.to_string()),
        manifests: names
            .iter()
            .map(|name| Descriptor {
                media_type: manifest_media.clone(),
                digest: image.record.manifest.clone(),
                size: image.manifest_bytes.len() as u64,
                platform: None,
                annotations: name
                    .map(|n| {
                        [
                            (spec::ANNOTATION_IMAGE_NAME.to_string(), n.clone()),
                            (spec::ANNOTATION_REF_NAME.to_string(), tag_of(n).to_string()),
                        ]
                        .into_iter()
                        .collect()
                    })
                    .unwrap_or_default(),
            })
            .collect(),
    };
    append_bytes(&mut tar, "oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#).map_err(io_err)?;
    append_bytes(&mut tar, "index.json", &json(&index)).map_err(io_err)?;
    for dir in ["blobs/", "blobs/sha256/"] {
        let mut h = header(0);
        h.set_entry_type(tar::EntryType::Directory);
        h.set_mode(0o755);
        tar.append_data(&mut h, dir, io::empty()).map_err(io_err)?;
    }
    let mut blobs: Vec<Digest> = vec![image.record.manifest.clone(), image.record.config.clone()];
    blobs.extend(image.manifest.layers.iter().map(|l| l.digest.clone()));
    blobs.dedup();
    for d in &blobs {
        let src = store.blob_path(d);
        let mut f = File::open(&src).map_err(|e| ImageError::io("open", &src, e))?;
        let size = f
            .metadata()
            .map_err(|e| ImageError::io("stat", &src, e))?
            .len();
        let mut header = header(size);
        tar.append_data(&mut header, format!("blobs/sha256/{}", d.hex()), &mut f)
            .map_err(io_err)?;
    }
    if format == ExportFormat::DockerArchive {
        let blob = |d: &Digest| format!("blobs/sha256/{}", d.hex());
        let manifest = serde_json::json!([{
            "Config": blob(&image.record.config),
            "RepoTags": image.record.names,
            "Layers": image.manifest.layers.iter().map(|l| blob(&l.digest)).collect::<Vec<_>>(),
        }]);
        append_bytes(&mut tar, "manifest.json", &json(&manifest)).map_err(io_err)?;
    }
    let mut w = tar.into_inner().map_err(io_err)?;
    w.flush().map_err(io_err)?;
    w.get_ref().sync_all().map_err(io_err)
}

fn json<T: serde::Serialize>(value: &T) -> Vec<u8> {
    serde_json::to_vec(value).unwrap_or_default()
}

fn header(size: u64) -> tar::Header {
    let mut h = tar::Header::new_ustar();
    h.set_entry_type(tar::EntryType::Regular);
    h.set_mode(0o644);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(0);
    h.set_size(size);
    h
}

fn append_bytes<W: Write>(tar: &mut tar::Builder<W>, name: &str, bytes: &[u8]) -> io::Result<()> {
    let mut h = header(bytes.len() as u64);
    tar.append_data(&mut h, name, bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_and_formats() {
        assert_eq!(tag_of("example.com:5000/a/b:v1"), "v1");
        assert_eq!(tag_of("example.com:5000/a/b"), "latest");
        assert_eq!(ExportFormat::parse("oci"), Some(ExportFormat::Oci));
        assert_eq!(
            ExportFormat::parse("docker-archive"),
            Some(ExportFormat::DockerArchive)
        );
        assert_eq!(ExportFormat::parse("zip"), None);
    }
}
