//! `whiteouts`, `history`, `which` and `diff` over layer directories: one
//! small function each, printing a table or, with `--json`, the report.

use std::io::Write;
use std::path::PathBuf;

use serde::Serialize;

use super::image_cmds::{StoreArg, open_store};
use super::live_mounts;
use crate::image::inspect::{self, LayerLabel};
use crate::image::{Image, Store};

#[derive(Debug, clap::Args)]
pub struct WhiteoutsArgs {
    /// Layer directories, top layer first; or one image of the store
    /// (NAME[:TAG], ID or ID prefix) when it is not a directory.
    #[arg(required = true, value_name = "IMAGE|DIR")]
    pub layers: Vec<PathBuf>,
    /// Print the full report as JSON.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub store: StoreArg,
}

#[derive(Debug, clap::Args)]
pub struct HistoryArgs {
    /// An image of the store: NAME[:TAG], ID or ID prefix.
    #[arg(value_name = "IMAGE", required_unless_present = "layers")]
    pub image: Option<String>,
    /// A layer directory; repeat it, top layer first.
    #[arg(long = "layers", num_args = 1.., value_name = "DIR", conflicts_with = "image")]
    pub layers: Vec<PathBuf>,
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub store: StoreArg,
}

#[derive(Debug, clap::Args)]
pub struct WhichArgs {
    /// The path to explain: on a live layerfs mount (`/mnt/etc/passwd`),
    /// or as the merged tree shows it (`/etc/passwd`) with --layers or
    /// --image.
    pub path: PathBuf,
    /// A layer directory; repeat it, top layer first.
    #[arg(long = "layers", num_args = 1.., value_name = "DIR")]
    pub layers: Vec<PathBuf>,
    /// An image of the store: NAME[:TAG], ID or ID prefix.
    #[arg(long, value_name = "IMAGE", conflicts_with = "layers")]
    pub image: Option<String>,
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub store: StoreArg,
}

#[derive(Debug, clap::Args)]
pub struct DiffArgs {
    /// A container of the store, or the upper directory of a container
    /// layer (overlay or OCI whiteouts; a path with a `/`, or with
    /// --lower/--work).
    #[arg(value_name = "CONTAINER|UPPER")]
    pub upper: PathBuf,
    /// A lower layer; repeat it, top layer first.
    #[arg(long = "lower", value_name = "DIR")]
    pub lowers: Vec<PathBuf>,
    /// The container's work dir (only read): lower hard-link groups
    /// changed through one name are then shown as the container shows them.
    #[arg(long, value_name = "DIR")]
    pub work: Option<PathBuf>,
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub store: StoreArg,
}

fn fail(e: impl std::fmt::Display) -> i32 {
    eprintln!("layerfs: {e}");
    1
}

/// Print `value` as JSON; a closed stdout is not an error worth a trace.
fn print_json(value: &impl Serialize) -> i32 {
    let mut out = std::io::stdout().lock();
    match serde_json::to_writer_pretty(&mut out, value) {
        Ok(()) => {
            let _ = writeln!(out);
            0
        }
        Err(e) => fail(format!("writing JSON: {e}")),
    }
}

/// The store `--store` (or the default) names, if there is one: looking
/// never creates a store.
fn existing_store(arg: &StoreArg) -> Result<Store, String> {
    let dir = Store::resolve_dir(arg.store.as_deref());
    if !dir.is_dir() {
        return Err(format!("no image store at {}", dir.display()));
    }
    open_store(Some(&dir))
}

/// The image `reference` of the store, read under the shared lock.
fn load_image(store: &Store, reference: &str) -> Result<Image, String> {
    let _lock = store.lock(false).map_err(|e| e.to_string())?;
    store.resolve_image(reference).map_err(|e| e.to_string())
}

/// The last column of a layer's row: its label, else its directory.
fn layer_name(labels: &[LayerLabel], layer: usize, dir: &std::path::Path) -> String {
    labels
        .get(layer)
        .map_or_else(|| dir.display().to_string(), LayerLabel::describe)
}

/// `IMAGE` (one argument that is no directory) or `DIR...`.
pub fn whiteouts(args: WhiteoutsArgs) -> i32 {
    let image = match args.layers.as_slice() {
        [one] if !one.is_dir() && !one.is_absolute() => {
            let reference = one.to_string_lossy().into_owned();
            let res = existing_store(&args.store)
                .and_then(|store| load_image(&store, &reference))
                .map_err(|e| format!("whiteouts {reference}: no such directory, and {e}"));
            match res {
                Ok(img) => Some(img),
                Err(e) => return fail(e),
            }
        }
        _ => None,
    };
    let (report, labels) = match &image {
        Some(img) => match inspect::image_whiteouts(img) {
            Ok(r) if args.json => return print_json(&r),
            Ok(r) => (r.report, r.image_layers),
            Err(e) => return fail(e),
        },
        None => match inspect::whiteouts(&args.layers) {
            Ok(r) if args.json => return print_json(&r),
            Ok(r) => (r, Vec::new()),
            Err(e) => return fail(e),
        },
    };
    if let Some(img) = &image {
        println!("image {}", img.record.id);
        print_labels(&labels);
        println!();
    }
    println!(
        "{:<6} {:<9} {:>8} {:>12}  PATH",
        "LAYER", "MARK", "HIDES", "BYTES"
    );
    for w in &report.whiteouts {
        let mark = match w.mark {
            inspect::MarkKind::Whiteout => "whiteout",
            inspect::MarkKind::Opaque => "opaque",
        };
        println!(
            "{:<6} {:<9} {:>8} {:>12}  {}",
            w.layer,
            mark,
            w.hides.len(),
            w.hidden_bytes,
            w.path
        );
    }
    if !report.shadowed.is_empty() {
        println!();
        println!(
            "{:<6} {:<9} {:>8} {:>12}  PATH",
            "LAYER", "SHADOWED", "ENTRIES", "BYTES"
        );
        for s in &report.shadowed {
            println!(
                "{:<6} {:<9} {:>8} {:>12}  {}",
                s.layer,
                "",
                s.shadows.len(),
                s.shadowed_bytes,
                s.path
            );
        }
    }
    println!();
    println!(
        "{:<6} {:>9} {:>7} {:>8} {:>12} {:>9} {:>14}  {}",
        "LAYER",
        "WHITEOUTS",
        "OPAQUE",
        "HIDDEN",
        "HIDDEN_BYTES",
        "SHADOWED",
        "SHADOWED_BYTES",
        if image.is_some() { "LAYER" } else { "DIR" }
    );
    for t in &report.per_layer {
        println!(
            "{:<6} {:>9} {:>7} {:>8} {:>12} {:>9} {:>14}  {}",
            t.layer,
            t.whiteouts,
            t.opaque_dirs,
            t.hidden_entries,
            t.hidden_bytes,
            t.shadowed_entries,
            t.shadowed_bytes,
            layer_name(&labels, t.layer, &t.dir)
        );
    }
    let t = &report.total;
    println!(
        "{:<6} {:>9} {:>7} {:>8} {:>12} {:>9} {:>14}  (wasted bytes: {})",
        "total",
        t.whiteouts,
        t.opaque_dirs,
        t.hidden_entries,
        t.hidden_bytes,
        t.shadowed_entries,
        t.shadowed_bytes,
        t.wasted_bytes
    );
    0
}

/// The layers of a stack with what the image says of each.
fn print_labels(labels: &[LayerLabel]) {
    println!("{:<6} {:<20} {:<22} CREATED BY", "LAYER", "ID", "CREATED");
    for l in labels {
        let id = match (&l.diff_id, l.upper) {
            (_, true) => "container".to_string(),
            (Some(d), _) => inspect::short(d),
            (None, _) => l.dir.display().to_string(),
        };
        println!(
            "{:<6} {id:<20} {:<22} {}",
            l.layer,
            l.created.as_deref().unwrap_or("-"),
            l.created_by.as_deref().unwrap_or("-")
        );
    }
}

pub fn history(args: HistoryArgs) -> i32 {
    if let Some(reference) = &args.image {
        return image_history(reference, &args);
    }
    let report = match inspect::history(&args.layers) {
        Ok(r) => r,
        Err(e) => return fail(e),
    };
    if args.json {
        return print_json(&report);
    }
    println!(
        "{:<6} {:>8} {:>8} {:>8} {:>12}  DIR",
        "LAYER", "ADDED", "CHANGED", "DELETED", "SIZE"
    );
    for l in &report {
        println!(
            "{:<6} {:>8} {:>8} {:>8} {:>12}  {}",
            l.layer,
            l.added,
            l.changed,
            l.deleted,
            l.size,
            l.dir.display()
        );
    }
    0
}

/// `history IMAGE`: top first, config-only entries among the layers.
fn image_history(reference: &str, args: &HistoryArgs) -> i32 {
    let res = existing_store(&args.store)
        .and_then(|store| load_image(&store, reference))
        .and_then(|img| inspect::image_history(&img).map_err(|e| e.to_string()));
    let entries = match res {
        Ok(e) => e,
        Err(e) => return fail(format!("history {reference}: {e}")),
    };
    if args.json {
        return print_json(&entries);
    }
    let count = |n: Option<u64>| n.map_or_else(|| "-".to_string(), |n| n.to_string());
    println!(
        "{:<6} {:<20} {:<22} {:>12} {:>7} {:>7} {:>7}  CREATED BY",
        "LAYER", "ID", "CREATED", "SIZE", "ADDED", "CHANGED", "DELETED"
    );
    for e in &entries {
        let mut by = e.created_by.clone().unwrap_or_default();
        if let Some(c) = &e.comment {
            by.push_str(&format!(" ({c})"));
        }
        println!(
            "{:<6} {:<20} {:<22} {:>12} {:>7} {:>7} {:>7}  {by}",
            e.layer.map_or_else(|| "-".to_string(), |l| l.to_string()),
            e.diff_id
                .as_ref()
                .map_or_else(|| "<config only>".to_string(), inspect::short),
            e.created.as_deref().unwrap_or("-"),
            e.size,
            count(e.added),
            count(e.changed),
            count(e.deleted),
        );
    }
    0
}

/// The stack, image and upper `which` explains, and the path in it.
type WhichTarget = (
    Vec<PathBuf>,
    Option<Image>,
    Option<PathBuf>,
    crate::layers::RelPath,
);

fn which_target(args: &WhichArgs) -> Result<WhichTarget, String> {
    let shown = args.path.display();
    let plain = || {
        inspect::parse_path(&args.path.to_string_lossy())
            .ok_or_else(|| format!("which {shown}: not a plain path"))
    };
    if !args.layers.is_empty() {
        return Ok((args.layers.clone(), None, None, plain()?));
    }
    if let Some(reference) = &args.image {
        let rel = plain()?;
        let img = existing_store(&args.store)
            .and_then(|store| load_image(&store, reference))
            .map_err(|e| format!("which {shown}: {e}"))?;
        return Ok((img.lowerdirs(), Some(img), None, rel));
    }
    // A path on a live mount: its record names the layers.
    let (rec, rel) = live_mounts::find(&args.path)?;
    let image = match (&rec.image, &rec.store) {
        (Some(id), Some(store)) => Store::open(store)
            .map_err(|e| e.to_string())
            .and_then(|s| load_image(&s, id))
            .map_err(|e| tracing::info!(error = %e, "the mounted image is not readable"))
            .ok(),
        _ => None,
    };
    Ok((rec.layers, image, rec.upper, rel))
}

pub fn which(args: WhichArgs) -> i32 {
    let (dirs, image, upper, path) = match which_target(&args) {
        Ok(t) => t,
        Err(e) => return fail(e),
    };
    let report = match inspect::labelled_which(&path, &dirs, image.as_ref(), upper.as_deref()) {
        Ok(r) => r,
        Err(e) => return fail(e),
    };
    if args.json {
        return print_json(&report);
    }
    let labels = &report.image_layers;
    let report = &report.report;
    match &report.provider {
        Some(p) => println!(
            "{} {} from layer {} ({})",
            report.path,
            p.kind,
            p.layer,
            layer_name(labels, p.layer, &p.dir)
        ),
        None => println!("{}: not in the merged tree", report.path),
    }
    if report.merged_from.len() > 1 {
        let layers: Vec<String> = report.merged_from.iter().map(|l| l.to_string()).collect();
        println!("  directory merged from layers {}", layers.join(", "));
    }
    for h in &report.hidden {
        let why = match &h.reason {
            Some(inspect::HideReason::Shadowed { layer }) => format!("shadowed by layer {layer}"),
            Some(inspect::HideReason::Whiteout { layer, path }) => {
                format!("whited out by layer {layer} at {path}")
            }
            Some(inspect::HideReason::Opaque { layer, path }) => {
                format!("hidden by opaque dir {path} of layer {layer}")
            }
            Some(inspect::HideReason::NonDirectory { layer, path }) => {
                format!("hidden: {path} is no directory in layer {layer}")
            }
            None => String::new(),
        };
        println!(
            "  hidden: layer {} {} {} ({} bytes): {}",
            h.layer, h.kind, h.path, h.size, why
        );
    }
    0
}

/// A container's upper, work and lowers, when `args` names a container
/// of the store: a name with no `/` and neither --lower nor --work. A
/// name the store does not know is still an upper dir if one is there.
fn diff_container_layers(
    args: &DiffArgs,
) -> Result<Option<(PathBuf, PathBuf, Vec<PathBuf>)>, String> {
    let text = args.upper.to_string_lossy();
    if !args.lowers.is_empty() || args.work.is_some() || text.contains('/') {
        return Ok(None);
    }
    let dir = Store::resolve_dir(args.store.store.as_deref());
    let found = if dir.is_dir() {
        let store = open_store(Some(&dir))?;
        let _lock = store.lock(false).map_err(|e| e.to_string())?;
        match store.container(&text) {
            Ok(Some(c)) => {
                let img = store
                    .resolve_image(c.record.image.as_str())
                    .map_err(|e| format!("diff {text}: container {text}: its image: {e}"))?;
                Some((c.upper, c.work, img.lowerdirs()))
            }
            _ => None,
        }
    } else {
        None
    };
    match found {
        Some(f) => Ok(Some(f)),
        None if args.upper.is_dir() => Ok(None),
        None => Err(format!(
            "diff {text}: no container {text} in the store {} and no directory {text}",
            dir.display()
        )),
    }
}

pub fn diff(args: DiffArgs) -> i32 {
    let res = diff_container_layers(&args).and_then(|found| {
        let (upper, work, lowers) = match found {
            Some((u, w, l)) => (u, Some(w), l),
            None => (args.upper.clone(), args.work.clone(), args.lowers.clone()),
        };
        inspect::diff_container(&upper, work.as_deref(), &lowers).map_err(|e| e.to_string())
    });
    let changes = match res {
        Ok(c) => c,
        Err(e) => return fail(e),
    };
    if args.json {
        return print_json(&changes);
    }
    let mut out = std::io::stdout().lock();
    for c in &changes {
        if writeln!(out, "{c}").is_err() {
            return 1;
        }
    }
    0
}
