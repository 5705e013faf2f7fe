//! The image subcommands: import, images, rmi, containers, rm, and the
//! `--image/--container` form of mount. One small function each; the work
//! is done in `image/`.

use std::io::IsTerminal;
use std::path::PathBuf;

use serde::Serialize;

use super::MountArgs;
use crate::image::{self, ImportOptions, Store, spec};

#[derive(Debug, clap::Args)]
pub struct StoreArg {
    /// The image store (default: $LAYERFS_STORE, /var/lib/layerfs as root,
    /// else $XDG_DATA_HOME/layerfs).
    #[arg(long, value_name = "DIR")]
    pub store: Option<PathBuf>,
}

#[derive(Debug, clap::Args)]
pub struct ImportArgs {
    /// An OCI image layout (directory or tar) or a `docker save` archive.
    pub path: PathBuf,
    /// Name the image NAME[:TAG] (default: the names the archive carries).
    #[arg(long, value_name = "NAME[:TAG]")]
    pub name: Option<String>,
    /// The platform to take from a multi-platform index (default: this
    /// machine's).
    #[arg(long, value_name = "OS/ARCH[/VARIANT]")]
    pub platform: Option<String>,
    #[command(flatten)]
    pub store: StoreArg,
}

#[derive(Debug, clap::Args)]
pub struct ListArgs {
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub store: StoreArg,
}

#[derive(Debug, clap::Args)]
pub struct RmiArgs {
    /// NAME[:TAG], ID or a unique ID prefix.
    pub image: String,
    /// Remove it even if a container uses it (never while mounted).
    #[arg(short, long)]
    pub force: bool,
    #[command(flatten)]
    pub store: StoreArg,
}

#[derive(Debug, clap::Args)]
pub struct RmArgs {
    /// The container's name.
    pub name: String,
    #[command(flatten)]
    pub store: StoreArg,
}

#[derive(Debug, clap::Args)]
pub struct ExportArgs {
    /// NAME[:TAG], ID or a unique ID prefix.
    pub image: String,
    /// The tar to write.
    #[arg(short, long, value_name = "FILE")]
    pub output: PathBuf,
    /// oci (an OCI layout archive) or docker-archive (also an OCI layout,
    /// plus the manifest.json of `docker save`).
    #[arg(long, default_value = "oci", value_name = "FORMAT")]
    pub format: String,
    #[command(flatten)]
    pub store: StoreArg,
}

pub(super) fn open_store(dir: Option<&std::path::Path>) -> Result<Store, String> {
    Store::open(&Store::resolve_dir(dir))
        .map(|s| s.with_mount_check(super::is_layerfs_mount))
        .map_err(|e| e.to_string())
}

/// Print a failure as one line and give the exit status.
fn report(res: Result<(), String>) -> i32 {
    match res {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("layerfs: {e}");
            1
        }
    }
}

pub fn run_import(args: ImportArgs) -> i32 {
    report((|| {
        let store = open_store(args.store.store.as_deref())?;
        let platform = match &args.platform {
            Some(p) => Some(
                spec::parse_platform(p)
                    .ok_or_else(|| format!("--platform {p}: want OS/ARCH[/VARIANT]"))?,
            ),
            None => None,
        };
        let opts = ImportOptions {
            name: args.name.clone(),
            platform,
            progress: std::io::stderr().is_terminal(),
        };
        let r = image::import(&store, &args.path, &opts).map_err(|e| e.to_string())?;
        let names = if r.image.names.is_empty() {
            String::new()
        } else {
            format!(" as {}", r.image.names.join(", "))
        };
        eprintln!(
            "layerfs: imported {}{names}: {} layers, {} unpacked",
            r.image.id, r.layers, r.layers_unpacked
        );
        println!("{}", r.image.id);
        Ok(())
    })())
}

#[derive(Serialize)]
struct ImageRow {
    id: String,
    names: Vec<String>,
    created: String,
    layers: usize,
    /// Bytes of the layers' files, unpacked.
    size: u64,
    manifest: String,
    containers: Vec<String>,
    mounted: bool,
}

pub fn run_images(args: ListArgs) -> i32 {
    report((|| {
        let store = open_store(args.store.store.as_deref())?;
        let _lock = store.lock(false).map_err(|e| e.to_string())?;
        let containers = store.container_records().map_err(|e| e.to_string())?;
        let mounts = store.live_mounts().map_err(|e| e.to_string())?;
        let mut rows = Vec::new();
        for r in store.image_records().map_err(|e| e.to_string())? {
            let img = store.load_image(r.clone()).map_err(|e| e.to_string())?;
            let size = img
                .config
                .rootfs
                .diff_ids
                .iter()
                .filter_map(|d| store.layer_record(d).ok())
                .map(|l| l.size)
                .sum();
            rows.push(ImageRow {
                id: r.id.to_string(),
                names: r.names.clone(),
                created: r.created.clone(),
                layers: img.layer_dirs.len(),
                size,
                manifest: r.manifest.to_string(),
                containers: containers
                    .iter()
                    .filter(|c| c.image == r.id)
                    .map(|c| c.name.clone())
                    .collect(),
                mounted: mounts.iter().any(|m| m.image == r.id),
            });
        }
        if args.json {
            let text = serde_json::to_string_pretty(&rows).map_err(|e| e.to_string())?;
            println!("{text}");
            return Ok(());
        }
        println!(
            "{:<40} {:<14} {:<22} {:>6} {:>12}",
            "NAME", "ID", "CREATED", "LAYERS", "SIZE"
        );
        for row in &rows {
            let short = row.id.get(7..19).unwrap_or(&row.id);
            let names: Vec<&str> = if row.names.is_empty() {
                vec!["<none>"]
            } else {
                row.names.iter().map(String::as_str).collect()
            };
            for n in names {
                println!(
                    "{n:<40} {short:<14} {:<22} {:>6} {:>12}",
                    row.created, row.layers, row.size
                );
            }
        }
        Ok(())
    })())
}

pub fn run_rmi(args: RmiArgs) -> i32 {
    report((|| {
        let store = open_store(args.store.store.as_deref())?;
        let lock = store.lock(true).map_err(|e| e.to_string())?;
        let r = store
            .remove_image(&lock, &args.image, args.force)
            .map_err(|e| e.to_string())?;
        println!("{}", r.id);
        Ok(())
    })())
}

pub fn run_export(args: ExportArgs) -> i32 {
    report((|| {
        let format = image::ExportFormat::parse(&args.format)
            .ok_or_else(|| format!("--format {}: want oci or docker-archive", args.format))?;
        let store = open_store(args.store.store.as_deref())?;
        let img =
            image::export(&store, &args.image, &args.output, format).map_err(|e| e.to_string())?;
        println!("{}", img.record.id);
        Ok(())
    })())
}

#[derive(Serialize)]
struct ContainerRow {
    name: String,
    image: String,
    image_names: Vec<String>,
    created: String,
    mounted_at: Option<PathBuf>,
}

pub fn run_containers(args: ListArgs) -> i32 {
    report((|| {
        let store = open_store(args.store.store.as_deref())?;
        let _lock = store.lock(false).map_err(|e| e.to_string())?;
        let images = store.image_records().map_err(|e| e.to_string())?;
        let mounts = store.live_mounts().map_err(|e| e.to_string())?;
        let rows: Vec<ContainerRow> = store
            .container_records()
            .map_err(|e| e.to_string())?
            .into_iter()
            .map(|c| ContainerRow {
                image_names: images
                    .iter()
                    .find(|i| i.id == c.image)
                    .map(|i| i.names.clone())
                    .unwrap_or_default(),
                mounted_at: mounts
                    .iter()
                    .find(|m| m.container.as_deref() == Some(c.name.as_str()))
                    .map(|m| m.mountpoint.clone()),
                image: c.image.to_string(),
                created: c.created,
                name: c.name,
            })
            .collect();
        if args.json {
            let text = serde_json::to_string_pretty(&rows).map_err(|e| e.to_string())?;
            println!("{text}");
            return Ok(());
        }
        println!("{:<24} {:<30} {:<22} MOUNTED", "NAME", "IMAGE", "CREATED");
        for r in &rows {
            let image = r
                .image_names
                .first()
                .cloned()
                .unwrap_or_else(|| r.image.get(7..19).unwrap_or(&r.image).to_string());
            let mounted = r
                .mounted_at
                .as_ref()
                .map_or(String::from("-"), |p| p.display().to_string());
            println!("{:<24} {image:<30} {:<22} {mounted}", r.name, r.created);
        }
        Ok(())
    })())
}

pub fn run_rm(args: RmArgs) -> i32 {
    report((|| {
        let store = open_store(args.store.store.as_deref())?;
        let lock = store.lock(true).map_err(|e| e.to_string())?;
        let r = store
            .remove_container(&lock, &args.name)
            .map_err(|e| e.to_string())?;
        println!("{}", r.name);
        Ok(())
    })())
}

/// `mount --image REF [--container NAME] MNT`: the image's layers (top
/// first) as lowers, the container's upper and work when named; then the
/// ordinary mount path. The daemon records the mount in the store once it
/// is live, so the image and container are not removed under it.
pub fn run_image_mount(mut args: MountArgs) -> i32 {
    let Some(reference) = args.image.clone() else {
        return super::run_mount_with(args, None);
    };
    let prepared = (|| -> Result<_, String> {
        if !args.lowers.is_empty() || args.upper.is_some() || args.work.is_some() {
            return Err("mount --image: --lower, --upper and --work come from the store".into());
        }
        if args.options.iter().any(|o| {
            o.split(',').any(|opt| {
                ["lowerdir=", "upperdir=", "workdir="]
                    .iter()
                    .any(|p| opt.starts_with(p))
            })
        }) {
            return Err("mount --image: lowerdir/upperdir/workdir come from the store".into());
        }
        let store = open_store(args.store.as_deref())?;
        let lock = store
            .lock(args.container.is_some())
            .map_err(|e| e.to_string())?;
        let image = store.resolve_image(&reference).map_err(|e| e.to_string())?;
        if image.layer_dirs.is_empty() {
            return Err(format!(
                "mount --image {reference}: the image has no layers"
            ));
        }
        let mountpoint = std::fs::canonicalize(&args.mountpoint)
            .map_err(|e| format!("mount {}: {e}", args.mountpoint.display()))?;
        let container = match &args.container {
            Some(name) => {
                let live = store.live_mounts().map_err(|e| e.to_string())?;
                if let Some(m) = live.iter().find(|m| m.container.as_deref() == Some(name)) {
                    return Err(format!(
                        "container {name}: already mounted at {}",
                        m.mountpoint.display()
                    ));
                }
                Some(
                    store
                        .create_container(&lock, name, &image.record.id)
                        .map_err(|e| e.to_string())?,
                )
            }
            None => None,
        };
        Ok((store, lock, image, container, mountpoint))
    })();
    let (store, lock, image, container, mountpoint) = match prepared {
        Ok(p) => p,
        Err(e) => {
            eprintln!("layerfs: {e}");
            return 1;
        }
    };
    args.lowers = image.lowerdirs();
    if let Some(c) = &container {
        args.upper = Some(c.upper.clone());
        args.work = Some(c.work.clone());
    }
    let image_id = image.record.id.clone();
    let container_name = container.map(|c| c.record.name);
    // What the daemon's live-mount record says (for `which PATH`).
    args.image = Some(image_id.to_string());
    args.store = Some(store.root().to_path_buf());
    // Runs in the daemon once the mount is live; the store stays locked
    // until the record is written.
    let on_live: super::OnLive = Box::new(move || {
        let guard = store
            .record_mount(&lock, &mountpoint, &image_id, container_name.as_deref())
            .map_err(|e| e.to_string())?;
        drop(lock);
        Ok(Box::new(guard) as Box<dyn std::any::Any>)
    });
    super::run_mount_with(args, Some(on_live))
}

#[derive(Debug, clap::Args)]
pub struct CommitArgs {
    /// The container whose writable layer becomes the new image's top layer.
    pub container: String,
    /// The new image's NAME[:TAG]; an image that has it loses it, as with
    /// `docker commit`.
    #[arg(long, value_name = "NAME[:TAG]")]
    pub image: String,
    /// The comment of the new history entry.
    #[arg(short, long, value_name = "TEXT")]
    pub message: Option<String>,
    /// How the layer blob is compressed: gzip, zstd or none.
    #[arg(long, default_value = "gzip", value_name = "gzip|zstd|none")]
    pub compress: String,
    #[command(flatten)]
    pub store: StoreArg,
}

/// `commit CONTAINER --image NAME[:TAG]`: prints the new image's id.
pub fn run_commit(args: CommitArgs) -> i32 {
    report((|| {
        let compression = image::commit::parse_compression(&args.compress).ok_or_else(|| {
            format!(
                "commit {}: --compress {}: want gzip, zstd or none",
                args.container, args.compress
            )
        })?;
        let store = open_store(args.store.store.as_deref())?;
        let opts = image::commit::CommitOptions {
            name: args.image.clone(),
            message: args.message.clone(),
            compression,
        };
        let r = image::commit::commit(&store, &args.container, &opts).map_err(|e| e.to_string())?;
        let s = &r.summary;
        eprintln!(
            "layerfs: committed {} as {}: layer {} ({} entries, {} whiteouts, {} bytes of files)",
            args.container,
            r.image.names.join(", "),
            r.layer.diff_id,
            s.entries,
            s.whiteouts,
            s.bytes
        );
        if let Some(old) = &r.name_taken_from {
            eprintln!(
                "layerfs: the name {} was taken from image {old}",
                args.image
            );
        }
        println!("{}", r.image.id);
        Ok(())
    })())
}
