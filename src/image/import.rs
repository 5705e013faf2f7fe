//! `layerfs import`: an OCI image layout (directory or tar) or a `docker
//! save` archive (the legacy `manifest.json` + `<id>/layer.tar` form, or
//! the newer one with OCI blobs inside) into the store.

use std::path::Path;

use super::archive::Source;
use super::digest::{self, Digest};
use super::layer_add::LayerExpect;
use super::progress::Progress;
use super::spec::{self, Descriptor, DockerArchiveImage, ImageConfig, Index, Manifest, Platform};
use super::store::{ImageRecord, MAX_JSON_SIZE, Store, normalize_name};
use super::{ImageError, Result};

#[derive(Debug, Clone, Default)]
pub struct ImportOptions {
    /// `name[:tag]` to give the image (else the names the archive carries).
    pub name: Option<String>,
    /// The platform to pick from an index (default: this machine's).
    pub platform: Option<Platform>,
    /// Show a progress bar (only ever on a terminal).
    pub progress: bool,
}

#[derive(Debug, Clone)]
pub struct ImportReport {
    pub image: ImageRecord,
    pub layers: usize,
    /// Layers that were not in the store yet and were unpacked.
    pub layers_unpacked: usize,
}

/// One layer to bring in: where its blob is and what it must be.
struct LayerPlan {
    file: String,
    expect: LayerExpect,
}

/// The image found in the source, before any layer is read.
struct Plan {
    config_bytes: Vec<u8>,
    /// The manifest as the source has it (None for a legacy docker
    /// archive, whose manifest is written from the layers as stored).
    manifest_bytes: Option<Vec<u8>>,
    layers: Vec<LayerPlan>,
    names: Vec<String>,
}

/// Import the image at `path` into `store`.
pub fn import(store: &Store, path: &Path, opts: &ImportOptions) -> Result<ImportReport> {
    let shown = path.display().to_string();
    let source = Source::open(path).map_err(|e| e.context(format!("import {shown}")))?;
    let plan = plan(&source, opts).map_err(|e| e.context(format!("import {shown}")))?;
    let lock = store.lock(true)?;
    let total: u64 = plan.layers.iter().filter_map(|l| l.expect.size).sum();
    let progress = if opts.progress {
        Progress::new(total, plan.layers.len())
    } else {
        Progress::hidden()
    };
    let mut added = Vec::new();
    for (i, layer) in plan.layers.iter().enumerate() {
        progress.layer(i + 1, plan.layers.len());
        let done = |d: &Digest| store.has_layer(d);
        let have_blob = layer
            .expect
            .digest
            .as_ref()
            .is_some_and(|d| store.has_blob(d));
        let what = layer
            .expect
            .digest
            .as_ref()
            .map_or(layer.file.clone(), Digest::to_string);
        if let (Some(diff_id), Some(digest), Some(size), true) = (
            &layer.expect.diff_id,
            &layer.expect.digest,
            layer.expect.size,
            have_blob,
        ) && done(diff_id)
        {
            progress.add(size);
            added.push(super::AddedLayer {
                diff_id: diff_id.clone(),
                digest: digest.clone(),
                size,
                compression: spec::Compression::from_media_type(
                    layer.expect.media_type.as_deref().unwrap_or(""),
                )
                .unwrap_or(spec::Compression::None),
                unpacked: false,
            });
            continue;
        }
        let (reader, _) = source
            .open_file(&layer.file)
            .map_err(|e| e.context(format!("import {shown}")))?;
        let a = store
            .add_layer(&lock, reader, &layer.expect, &progress)
            .map_err(|e| e.context(format!("import {shown}: layer {what}")))?;
        added.push(a);
    }
    progress.finish();
    let manifest_bytes = match plan.manifest_bytes {
        Some(b) => b,
        None => {
            let manifest = Manifest {
                schema_version: 2,
                media_type: Some(spec::MEDIA_OCI_MANIFEST.to_string()),
                config: Descriptor {
                    media_type: spec::MEDIA_OCI_CONFIG.to_string(),
                    digest: Digest::of(&plan.config_bytes),
                    size: plan.config_bytes.len() as u64,
                    platform: None,
                    annotations: Default::default(),
                },
                layers: added
                    .iter()
                    .map(|a| Descriptor {
                        media_type: a.media_type().to_string(),
                        digest: a.digest.clone(),
                        size: a.size,
                        platform: None,
                        annotations: Default::default(),
                    })
                    .collect(),
                annotations: Default::default(),
            };
            serde_json::to_vec(&manifest)
                .map_err(|e| ImageError::new(format!("import {shown}: manifest: {e}")))?
        }
    };
    let mut names = plan.names;
    if let Some(n) = &opts.name {
        names = vec![normalize_name(n)?];
    }
    let record = store
        .add_image(&lock, &plan.config_bytes, &manifest_bytes, &names)
        .map_err(|e| e.context(format!("import {shown}")))?;
    Ok(ImportReport {
        image: record,
        layers: added.len(),
        layers_unpacked: added.iter().filter(|a| a.unpacked).count(),
    })
}

fn blob_name(d: &Digest) -> String {
    format!("blobs/sha256/{}", d.hex())
}

/// Read a small blob of an OCI layout, checking its digest and size.
fn read_blob(source: &Source, desc: &Descriptor) -> Result<Vec<u8>> {
    if desc.size > MAX_JSON_SIZE {
        return Err(ImageError::new(format!(
            "blob {}: {} bytes is too large for a manifest or config",
            desc.digest, desc.size
        )));
    }
    let bytes = source.read_small(&blob_name(&desc.digest), MAX_JSON_SIZE)?;
    digest::verify(
        &format!("blob {}", desc.digest),
        &desc.digest,
        &Digest::of(&bytes),
    )?;
    if bytes.len() as u64 != desc.size {
        return Err(ImageError::new(format!(
            "blob {}: size mismatch: expected {} bytes, got {}",
            desc.digest,
            desc.size,
            bytes.len()
        )));
    }
    Ok(bytes)
}

fn json<T: serde::de::DeserializeOwned>(what: &str, bytes: &[u8]) -> Result<T> {
    serde_json::from_slice(bytes).map_err(|e| ImageError::new(format!("{what}: {e}")))
}

fn plan(source: &Source, opts: &ImportOptions) -> Result<Plan> {
    if source.exists("index.json") {
        plan_oci(source, opts)
    } else if source.exists("manifest.json") {
        plan_docker(source, opts)
    } else {
        Err(ImageError::new(
            "neither an OCI image layout (index.json) nor a docker archive (manifest.json)",
        ))
    }
}

fn is_index(media_type: &str) -> bool {
    media_type == spec::MEDIA_OCI_INDEX || media_type == spec::MEDIA_DOCKER_LIST
}

/// Walk the index (and nested indexes) down to the manifests that fit the
/// platform; each comes with the name its descriptor carries.
fn candidates(
    source: &Source,
    index: &Index,
    wanted: &Platform,
    name: Option<String>,
    depth: usize,
    out: &mut Vec<(Descriptor, Option<String>)>,
) -> Result<()> {
    if depth > 4 {
        return Err(ImageError::new("indexes nested too deep"));
    }
    for desc in &index.manifests {
        if desc.platform.as_ref().is_some_and(|p| !p.matches(wanted)) {
            continue;
        }
        let own = desc
            .annotations
            .get(spec::ANNOTATION_IMAGE_NAME)
            .or_else(|| desc.annotations.get(spec::ANNOTATION_REF_NAME))
            .cloned()
            .or_else(|| name.clone());
        if is_index(&desc.media_type) {
            let bytes = read_blob(source, desc)?;
            let nested: Index = json(&format!("index {}", desc.digest), &bytes)?;
            candidates(source, &nested, wanted, own, depth + 1, out)?;
        } else {
            out.push((desc.clone(), own));
        }
    }
    Ok(())
}

/// One image of several: the only one, or the one whose name (or tag)
/// is the tag `--name` gives, as `umoci`/`skopeo` layouts tag images.
fn choose(
    found: Vec<(Descriptor, Option<String>)>,
    name: Option<&str>,
    wanted: &Platform,
) -> Result<(Descriptor, Option<String>)> {
    let mut distinct: Vec<&(Descriptor, Option<String>)> = Vec::new();
    for f in &found {
        if !distinct.iter().any(|d| d.0.digest == f.0.digest) {
            distinct.push(f);
        }
    }
    if distinct.len() > 1
        && let Some(full) = name.and_then(|n| normalize_name(n).ok())
    {
        let tag = full.rsplit_once(':').map_or("latest", |(_, t)| t);
        let named = |n: &Option<String>| n.as_deref().is_some_and(|n| n == full || n == tag);
        if let Some(hit) = found.iter().find(|(_, n)| named(n)) {
            return Ok(hit.clone());
        }
    }
    match distinct.as_slice() {
        [] => Err(ImageError::new(format!("no image for platform {wanted}"))),
        [one] => Ok((*one).clone()),
        several => {
            let tags: Vec<&str> = several
                .iter()
                .map(|(_, n)| n.as_deref().unwrap_or("<untagged>"))
                .collect();
            Err(ImageError::new(format!(
                "{} images for platform {wanted} (tags: {}): choose one with --name NAME:TAG",
                several.len(),
                tags.join(", ")
            )))
        }
    }
}

fn plan_oci(source: &Source, opts: &ImportOptions) -> Result<Plan> {
    let index: Index = json(
        "index.json",
        &source.read_small("index.json", MAX_JSON_SIZE)?,
    )?;
    let wanted = opts.platform.clone().unwrap_or_else(spec::host_platform);
    let mut found = Vec::new();
    candidates(source, &index, &wanted, None, 0, &mut found)?;
    let (desc, name) = choose(found, opts.name.as_deref(), &wanted)?;
    let manifest_bytes = read_blob(source, &desc)?;
    let manifest: Manifest = json(&format!("manifest {}", desc.digest), &manifest_bytes)?;
    let config_bytes = read_blob(source, &manifest.config)?;
    let config: ImageConfig = json(&format!("config {}", manifest.config.digest), &config_bytes)?;
    if manifest.layers.len() != config.rootfs.diff_ids.len() {
        return Err(ImageError::new(format!(
            "manifest {} lists {} layers, its config {} diff_ids",
            desc.digest,
            manifest.layers.len(),
            config.rootfs.diff_ids.len()
        )));
    }
    let layers = manifest
        .layers
        .iter()
        .zip(&config.rootfs.diff_ids)
        .map(|(l, diff_id)| LayerPlan {
            file: blob_name(&l.digest),
            expect: LayerExpect {
                digest: Some(l.digest.clone()),
                size: Some(l.size),
                diff_id: Some(diff_id.clone()),
                media_type: Some(l.media_type.clone()),
            },
        })
        .collect();
    // A bare tag (as `oci:DIR:TAG` writes it) is not a name: only a full
    // reference is taken.
    let names = name
        .filter(|n| n.contains(':') || n.contains('/'))
        .and_then(|n| normalize_name(&n).ok())
        .into_iter()
        .collect();
    Ok(Plan {
        config_bytes,
        manifest_bytes: Some(manifest_bytes),
        layers,
        names,
    })
}

/// The digest a file name in a docker archive carries, if any
/// (`blobs/sha256/<hex>`, `<hex>.json`, `<hex>.tar`, `<hex>/layer.tar`).
fn digest_in_name(name: &str) -> Option<Digest> {
    let stem = name
        .strip_prefix("blobs/sha256/")
        .or_else(|| name.strip_suffix(".json"))
        .or_else(|| name.strip_suffix(".tar"))?;
    Digest::parse(&format!("sha256:{stem}")).ok()
}

fn plan_docker(source: &Source, opts: &ImportOptions) -> Result<Plan> {
    let images: Vec<DockerArchiveImage> = json(
        "manifest.json",
        &source.read_small("manifest.json", MAX_JSON_SIZE)?,
    )?;
    let wanted = opts.name.as_deref().and_then(|n| normalize_name(n).ok());
    let image = images
        .iter()
        .find(|i| {
            wanted
                .as_ref()
                .is_some_and(|w| i.repo_tags.iter().flatten().any(|t| t == w))
        })
        .or_else(|| images.first())
        .ok_or_else(|| ImageError::new("manifest.json lists no image"))?;
    let config_bytes = source.read_small(&image.config, MAX_JSON_SIZE)?;
    let config_digest = Digest::of(&config_bytes);
    if let Some(named) = digest_in_name(&image.config) {
        digest::verify(&format!("config {}", image.config), &named, &config_digest)?;
    }
    let config: ImageConfig = json(&format!("config {}", image.config), &config_bytes)?;
    if image.layers.len() != config.rootfs.diff_ids.len() {
        return Err(ImageError::new(format!(
            "manifest.json lists {} layers, the config {} diff_ids",
            image.layers.len(),
            config.rootfs.diff_ids.len()
        )));
    }
    let mut layers = Vec::new();
    for (file, diff_id) in image.layers.iter().zip(&config.rootfs.diff_ids) {
        let (_, size) = source.open_file(file)?;
        // `<hex>.tar` (skopeo) and `<id>/layer.tar` (docker) hold the
        // uncompressed tar; only `blobs/sha256/<hex>` names its digest.
        let digest = file
            .strip_prefix("blobs/sha256/")
            .and_then(|h| Digest::parse(&format!("sha256:{h}")).ok());
        layers.push(LayerPlan {
            file: file.clone(),
            expect: LayerExpect {
                digest,
                size: Some(size),
                diff_id: Some(diff_id.clone()),
                media_type: None,
            },
        });
    }
    let names = image
        .repo_tags
        .iter()
        .flatten()
        .filter_map(|t| normalize_name(t).ok())
        .collect();
    Ok(Plan {
        config_bytes,
        manifest_bytes: None,
        layers,
        names,
    })
}
