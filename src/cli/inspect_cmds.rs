//! `whiteouts`, `history`, `which` and `diff` over layer directories: one
//! small function each, printing a table or, with `--json`, the report.

use std::io::Write;
use std::path::PathBuf;

use serde::Serialize;

use crate::image::inspect;

#[derive(Debug, clap::Args)]
pub struct WhiteoutsArgs {
    /// Layer directories, top layer first.
    #[arg(required = true, value_name = "DIR")]
    pub layers: Vec<PathBuf>,
    /// Print the full report as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, clap::Args)]
pub struct HistoryArgs {
    /// A layer directory; repeat it, top layer first.
    #[arg(long = "layers", required = true, num_args = 1.., value_name = "DIR")]
    pub layers: Vec<PathBuf>,
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, clap::Args)]
pub struct WhichArgs {
    /// The path to explain, as the merged tree shows it (`/etc/passwd`).
    pub path: String,
    /// A layer directory; repeat it, top layer first.
    #[arg(long = "layers", required = true, num_args = 1.., value_name = "DIR")]
    pub layers: Vec<PathBuf>,
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, clap::Args)]
pub struct DiffArgs {
    /// The container's upper directory (overlay or OCI whiteouts).
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

pub fn whiteouts(args: WhiteoutsArgs) -> i32 {
    let report = match inspect::whiteouts(&args.layers) {
        Ok(r) => r,
        Err(e) => return fail(e),
    };
    if args.json {
        return print_json(&report);
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
        "{:<6} {:>9} {:>7} {:>8} {:>12} {:>9} {:>14}  DIR",
        "LAYER", "WHITEOUTS", "OPAQUE", "HIDDEN", "HIDDEN_BYTES", "SHADOWED", "SHADOWED_BYTES"
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
            t.dir.display()
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

pub fn history(args: HistoryArgs) -> i32 {
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

pub fn which(args: WhichArgs) -> i32 {
    let Some(path) = inspect::parse_path(&args.path) else {
        return fail(format!("which {}: not a plain path", args.path));
    };
    let report = match inspect::which(&path, &args.layers) {
        Ok(r) => r,
        Err(e) => return fail(e),
    };
    if args.json {
        return print_json(&report);
    }
    match &report.provider {
        Some(p) => println!(
            "{} {} from layer {} ({})",
            report.path,
            p.kind,
            p.layer,
            p.dir.display()
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

pub fn diff(args: DiffArgs) -> i32 {
    let changes = match inspect::diff_container(&args.upper, args.work.as_deref(), &args.lowers) {
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
