//! `layerfs commit`: a container's writable layer becomes a new image.
//!
//! The upper (with the work dir's hard-link index) is written as an OCI
//! layer tar by `inspect::write_container_layer_tar`, compressed, hashed on
//! the way (diff_id of the tar, digest of the blob), and added to the store
//! with [`Store::add_layer`], which checks both again while it unpacks the
//! layer, so the new image mounts like any imported one. The new config is
//! the base image's config (every field kept) with the diff_id appended and
//! a history entry; the manifest is an OCI manifest over the base's layer
//! blobs plus the new one. All under the store's exclusive lock; a mounted
//! container is refused (its upper would change while it is read).

use std::fs::{self, File};
use std::io::{self, BufWriter, Write};

use serde_json::{Value, json};
use sha2::{Digest as _, Sha256};

use super::digest::{self, Digest};
use super::inspect::{self, LayerTarSummary};
use super::layer_add::{AddedLayer, LayerExpect};
use super::progress::Progress;
use super::spec::{self, Compression};
use super::store::{ImageRecord, Store, normalize_name, now_rfc3339, temp_name};
use super::{ImageError, Result};

/// What `history` shows as the command of a committed layer.
pub const CREATED_BY: &str = "layerfs commit";

/// How to commit.
#[derive(Debug, Clone)]
pub struct CommitOptions {
    /// `name[:tag]` of the new image; taken from any image that has it.
    pub name: String,
    /// The history entry's comment.
    pub message: Option<String>,
    pub compression: Compression,
}

/// What a commit made.
#[derive(Debug, Clone)]
pub struct CommitReport {
    pub image: ImageRecord,
    pub layer: AddedLayer,
    pub summary: LayerTarSummary,
    /// The image the name was taken from, if another had it.
    pub name_taken_from: Option<Digest>,
}

/// `gzip`, `zstd` or `none`.
pub fn parse_compression(text: &str) -> Option<Compression> {
    match text {
        "gzip" => Some(Compression::Gzip),
        "zstd" => Some(Compression::Zstd),
        "none" => Some(Compression::None),
        _ => None,
    }
}

/// Commit the container `container` of `store` as a new image.
pub fn commit(store: &Store, container: &str, opts: &CommitOptions) -> Result<CommitReport> {
    let context = format!("commit {container}");
    commit_in(store, container, opts).map_err(|e| e.context(context))
}

fn commit_in(store: &Store, name: &str, opts: &CommitOptions) -> Result<CommitReport> {
    let image_name = normalize_name(&opts.name)?;
    let lock = store.lock(true)?;
    let container = store
        .container(name)?
        .ok_or_else(|| ImageError::new(format!("container {name}: not found")))?;
    // A mount starts only under the exclusive lock held here, so none can
    // begin while the layer is read.
    store.require_unmounted(name)?;
    let base = store
        .resolve_image(container.record.image.as_str())
        .map_err(|e| e.context(format!("container {name}: its image")))?;
    let previous = store
        .image_records()?
        .into_iter()
        .find(|r| r.names.contains(&image_name))
        .map(|r| r.id);

    // The layer blob, compressed, into tmp/ (emptied by the next locked
    // change if this one dies).
    let blob_path = store.tmp_dir().join(temp_name("commit"));
    let written = (|| {
        let file = File::create(&blob_path).map_err(|e| ImageError::io("create", &blob_path, e))?;
        let mut blob = Hashing::new(BufWriter::new(file));
        let compress_err = |e| ImageError::io("compress", &blob_path, e);
        let (summary, diff_id) = match opts.compression {
            // Uncompressed, the blob is the tar: its digest is the diff_id.
            Compression::None => (write_tar(&container, &base, &mut blob)?, None),
            Compression::Gzip => {
                let encoder =
                    flate2::write::GzEncoder::new(&mut blob, flate2::Compression::default());
                let mut tar = Hashing::new(encoder);
                let summary = write_tar(&container, &base, &mut tar)?;
                let (encoder, diff_id) = tar.finish()?;
                encoder.finish().map_err(compress_err)?;
                (summary, Some(diff_id))
            }
            Compression::Zstd => {
                let encoder =
                    zstd::stream::write::Encoder::new(&mut blob, 3).map_err(compress_err)?;
                let mut tar = Hashing::new(encoder);
                let summary = write_tar(&container, &base, &mut tar)?;
                let (encoder, diff_id) = tar.finish()?;
                encoder.finish().map_err(compress_err)?;
                (summary, Some(diff_id))
            }
        };
        let (out, digest) = blob.finish()?;
        let file = out
            .into_inner()
            .map_err(|e| ImageError::io("write", &blob_path, e.into_error()))?;
        file.sync_all()
            .map_err(|e| ImageError::io("write", &blob_path, e))?;
        Ok((summary, diff_id, digest))
    })();
    let result = written.and_then(|(summary, diff_id, digest)| {
        let blob = File::open(&blob_path).map_err(|e| ImageError::io("open", &blob_path, e))?;
        let expect = LayerExpect {
            digest: Some(digest.clone()),
            size: None,
            diff_id: Some(diff_id.unwrap_or(digest)),
            media_type: None,
        };
        let layer = store.add_layer(&lock, blob, &expect, &Progress::hidden())?;
        let (config, manifest) = new_image(&base, &layer, opts.message.as_deref())?;
        let image =
            store.add_image(&lock, &config, &manifest, std::slice::from_ref(&image_name))?;
        Ok(CommitReport {
            name_taken_from: previous.filter(|p| *p != image.id),
            image,
            layer,
            summary,
        })
    });
    let _ = fs::remove_file(&blob_path);
    result
}

fn write_tar(
    container: &super::Container,
    base: &super::Image,
    out: impl Write,
) -> Result<LayerTarSummary> {
    inspect::write_container_layer_tar(
        &container.upper,
        Some(&container.work),
        &base.lowerdirs(),
        out,
    )
    .map_err(|e| ImageError::new(e.to_string()))
}

/// The new config and manifest (JSON bytes): the base's config as it is,
/// plus the layer and its history; an OCI manifest over the base's blobs
/// plus the new one.
fn new_image(
    base: &super::Image,
    layer: &AddedLayer,
    message: Option<&str>,
) -> Result<(Vec<u8>, Vec<u8>)> {
    let bad = |what: &str| ImageError::new(format!("image {}: {what}", base.record.id));
    let mut config: Value =
        serde_json::from_slice(&base.config_bytes).map_err(|e| bad(&format!("config: {e}")))?;
    let obj = config
        .as_object_mut()
        .ok_or_else(|| bad("the config is no JSON object"))?;
    let now = created_now();
    obj.insert("created".into(), json!(now));
    let rootfs = obj
        .entry("rootfs")
        .or_insert_with(|| json!({"type": "layers", "diff_ids": []}));
    let diff_ids = rootfs
        .as_object_mut()
        .ok_or_else(|| bad("rootfs is no JSON object"))?
        .entry("diff_ids")
        .or_insert_with(|| json!([]))
        .as_array_mut()
        .ok_or_else(|| bad("rootfs.diff_ids is no array"))?;
    let layers_before = diff_ids.len();
    diff_ids.push(json!(layer.diff_id));
    let history = obj
        .entry("history")
        .or_insert_with(|| json!([]))
        .as_array_mut()
        .ok_or_else(|| bad("history is no array"))?;
    // History entries pair with layers in order, empty_layer ones aside:
    // an image with fewer gets blank entries first, so the new entry
    // pairs with the new layer.
    let with_layer = history
        .iter()
        .filter(|h| h.get("empty_layer").and_then(Value::as_bool) != Some(true))
        .count();
    for _ in with_layer..layers_before {
        history.push(json!({}));
    }
    let mut entry = json!({"created": now, "created_by": CREATED_BY});
    if let Some(m) = message {
        entry["comment"] = json!(m);
    }
    history.push(entry);
    let config_bytes = serde_json::to_vec(&config).map_err(|e| bad(&e.to_string()))?;

    let mut layers: Vec<Value> = base
        .manifest
        .layers
        .iter()
        .map(|d| {
            let mut d = d.clone();
            d.media_type = oci_layer_media_type(&d.media_type);
            serde_json::to_value(d).unwrap_or(Value::Null)
        })
        .collect();
    layers.push(json!({
        "mediaType": layer.media_type(),
        "digest": layer.digest,
        "size": layer.size,
    }));
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": spec::MEDIA_OCI_MANIFEST,
        "config": {
            "mediaType": spec::MEDIA_OCI_CONFIG,
            "digest": Digest::of(&config_bytes),
            "size": config_bytes.len(),
        },
        "layers": layers,
    });
    let manifest_bytes = serde_json::to_vec(&manifest).map_err(|e| bad(&e.to_string()))?;
    Ok((config_bytes, manifest_bytes))
}

/// Now, RFC 3339 with nanoseconds (as docker writes `created`): two
/// commits of the same layer are two images, never one config whose
/// manifest the second would replace.
fn created_now() -> String {
    let since_epoch = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
    };
    loop {
        let before = since_epoch();
        let text = now_rfc3339();
        if since_epoch().as_secs() == before.as_secs() {
            let whole = text.strip_suffix('Z').unwrap_or(&text);
            return format!("{whole}.{:09}Z", before.subsec_nanos());
        }
    }
}

/// A Docker layer media type as its OCI equivalent (the blob is the same
/// bytes); OCI and unknown types as they are.
fn oci_layer_media_type(media_type: &str) -> String {
    match media_type {
        "application/vnd.docker.image.rootfs.diff.tar.gzip" => spec::MEDIA_OCI_LAYER_GZIP.into(),
        "application/vnd.docker.image.rootfs.diff.tar" | "" => spec::MEDIA_OCI_LAYER.into(),
        "application/vnd.docker.image.rootfs.diff.tar.zstd" => {
            "application/vnd.oci.image.layer.v1.tar+zstd".into()
        }
        other => other.into(),
    }
}

/// A writer that hashes what goes through it.
struct Hashing<W> {
    inner: W,
    hasher: Sha256,
}

impl<W: Write> Hashing<W> {
    fn new(inner: W) -> Hashing<W> {
        Hashing {
            inner,
            hasher: Sha256::new(),
        }
    }

    fn finish(self) -> Result<(W, Digest)> {
        let hex = digest::hex(&self.hasher.finalize());
        let digest = Digest::parse(&format!("sha256:{hex}"))?;
        Ok((self.inner, digest))
    }
}

impl<W: Write> Write for Hashing<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compression_names() {
        assert_eq!(parse_compression("gzip"), Some(Compression::Gzip));
        assert_eq!(parse_compression("zstd"), Some(Compression::Zstd));
        assert_eq!(parse_compression("none"), Some(Compression::None));
        assert_eq!(parse_compression("xz"), None);
        assert_eq!(
            oci_layer_media_type("application/vnd.docker.image.rootfs.diff.tar.gzip"),
            spec::MEDIA_OCI_LAYER_GZIP
        );
    }

    #[test]
    fn hashing_writer() {
        let mut h = Hashing::new(Vec::new());
        h.write_all(b"abc").unwrap();
        let (bytes, digest) = h.finish().unwrap();
        assert_eq!(bytes, b"abc");
        assert_eq!(digest, Digest::of(b"abc"));
    }
}
