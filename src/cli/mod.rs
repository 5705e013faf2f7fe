//! The command line: clap definitions and one small function per
//! subcommand. Also the `mount.fuse.layerfs` helper form used by mount(8)
//! and /etc/fstab.

pub mod compat;
mod container_cmds;
mod daemon;
mod image_cmds;
mod inspect_cmds;
mod live_mounts;
mod logging;
pub mod options;
mod run_cmd;

use std::ffi::OsString;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};

use clap::{Parser, Subcommand};

use crate::fs::LayerFs;
use crate::fs::mount::{self, MountConfig};
use crate::union::{LayerStack, UpperSpec};

#[derive(Debug, Parser)]
#[command(
    name = "layerfs",
    version,
    about = "A union filesystem for container image layers"
)]
pub struct Cli {
    /// More log output (-v info, -vv debug, -vvv trace), before the
    /// subcommand (`run -v` is a volume); RUST_LOG overrides.
    #[arg(short, long, action = clap::ArgAction::Count)]
    verbose: u8,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Mount a stack of layers as one tree.
    Mount(MountArgs),
    /// Unmount a layerfs mount.
    Umount(UmountArgs),
    /// Import an OCI image layout (dir or tar) or a `docker save` archive.
    Import(image_cmds::ImportArgs),
    /// List the images in the store.
    Images(image_cmds::ListArgs),
    /// Remove an image (its layers go when no other image uses them).
    Rmi(image_cmds::RmiArgs),
    /// List the containers (named writable layers) in the store.
    Containers(image_cmds::ListArgs),
    /// Remove a container and its writable layer.
    Rm(image_cmds::RmArgs),
    /// Write an image from the store as an OCI or docker archive.
    Export(image_cmds::ExportArgs),
    /// Every whiteout and opaque dir of a stack of layers, what it hides, and the bytes.
    Whiteouts(inspect_cmds::WhiteoutsArgs),
    /// Per-layer counts of added, changed and deleted entries.
    History(inspect_cmds::HistoryArgs),
    /// Which layer provides a path, and what it hides.
    Which(inspect_cmds::WhichArgs),
    /// A container layer's changes, as `docker diff` prints them.
    Diff(inspect_cmds::DiffArgs),
    /// Run a command in a container.
    Run(run_cmd::RunArgs),
    /// Make a container's writable layer the top layer of a new image.
    Commit(image_cmds::CommitArgs),
    /// List the containers that run (-a: all, with how they ended).
    Ps(container_cmds::PsArgs),
    /// Run a container's command again, with the options it was run with.
    Start(container_cmds::StartArgs),
}

#[derive(Debug, clap::Args)]
struct MountArgs {
    /// Overlay-style options: lowerdir=TOP:...:BOTTOM[,upperdir=U,workdir=W][,ro]...
    #[arg(short = 'o', value_name = "OPTIONS")]
    options: Vec<String>,
    /// A lower layer; repeat it, top layer first.
    #[arg(long = "lower", value_name = "DIR")]
    lowers: Vec<PathBuf>,
    /// The writable upper layer.
    #[arg(long, value_name = "DIR")]
    upper: Option<PathBuf>,
    /// The work directory (same filesystem as the upper).
    #[arg(long, value_name = "DIR")]
    work: Option<PathBuf>,
    /// Stay attached to the terminal instead of running as a daemon.
    #[arg(short, long)]
    foreground: bool,
    /// FUSE worker threads (default: one per CPU, 2 to 4).
    #[arg(long, default_value_t = default_threads(), value_parser = clap::value_parser!(u16).range(1..=256))]
    threads: u16,
    /// Where the detached daemon writes its log (default: nowhere).
    #[arg(long, value_name = "FILE")]
    log_file: Option<PathBuf>,
    /// Mount this image from the store (NAME[:TAG], ID or ID prefix).
    #[arg(long, value_name = "NAME[:TAG]|ID")]
    image: Option<String>,
    /// With --image: a named writable layer kept in the store.
    #[arg(long, value_name = "NAME", requires = "image")]
    container: Option<String>,
    /// The image store (with --image).
    #[arg(long, value_name = "DIR")]
    store: Option<PathBuf>,
    /// Unmount when the process that started this one ends (`layerfs run`
    /// keeps its container's root this way, also if it is killed).
    #[arg(long, hide = true)]
    exit_with_parent: bool,
    /// Where to mount.
    mountpoint: PathBuf,
}

#[derive(Debug, clap::Args)]
struct UmountArgs {
    /// Detach now even if busy; the kernel finishes when it is unused.
    #[arg(short, long)]
    lazy: bool,
    /// Abort the FUSE connection first (a hung or killed daemon): calls
    /// waiting on it, and all later ones, fail with ENOTCONN; then unmount,
    /// detaching if still busy. Root only.
    #[arg(short, long)]
    force: bool,
    mountpoint: PathBuf,
}

/// FUSE worker threads by default: one per CPU, at least 2 (one would
/// let a long copy-up stall every caller) and at most 4 (more workers than
/// CPUs only add hand-offs between threads: docs/performance.md).
fn default_threads() -> u16 {
    let cpus = std::thread::available_parallelism().map_or(2, std::num::NonZeroUsize::get);
    u16::try_from(cpus.clamp(2, 4)).unwrap_or(2)
}

/// Entry point of the binary; returns the exit status.
pub fn main() -> i32 {
    let args: Vec<OsString> = std::env::args_os().collect();
    let program = args
        .first()
        .and_then(|a| Path::new(a).file_name())
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    if program.starts_with("mount.") {
        return match helper_args(&args[1..]) {
            Ok(mount_args) => {
                init_logging(0, false);
                run_mount(mount_args)
            }
            Err(msg) => {
                eprintln!("{program}: {msg}");
                1
            }
        };
    }
    // The container's first process, started by `layerfs run`.
    if args.get(1).is_some_and(|a| a == "__init") {
        return crate::runtime::init_main();
    }
    // The watcher of a `layerfs run --rm` (removes it if run is killed).
    if args.get(1).is_some_and(|a| a == "__reap") {
        return container_cmds::reap_main(&args[2..]);
    }
    // fuse-overlayfs's form, as container engines run their mount_program.
    if compat::is_engine_form(&args[1..]) {
        return match compat::engine_args(&args[1..]) {
            Ok(c) => {
                init_logging(if c.debug { 2 } else { 0 }, false);
                run_mount(MountArgs {
                    options: c.options,
                    lowers: Vec::new(),
                    upper: None,
                    work: None,
                    foreground: c.foreground,
                    threads: default_threads(),
                    log_file: None,
                    image: None,
                    container: None,
                    store: None,
                    exit_with_parent: false,
                    mountpoint: c.mountpoint,
                })
            }
            Err(msg) => {
                eprintln!("layerfs: {msg}");
                1
            }
        };
    }
    let cli = Cli::parse();
    // A detached daemon's stderr ends up in a log file: no colour codes.
    let attached = !matches!(&cli.command, Command::Mount(m) if !m.foreground);
    init_logging(cli.verbose, attached && std::io::stderr().is_terminal());
    match cli.command {
        Command::Mount(args) => run_mount(args),
        Command::Umount(args) => run_umount(args),
        Command::Import(args) => image_cmds::run_import(args),
        Command::Images(args) => image_cmds::run_images(args),
        Command::Rmi(args) => image_cmds::run_rmi(args),
        Command::Containers(args) => image_cmds::run_containers(args),
        Command::Rm(args) => image_cmds::run_rm(args),
        Command::Export(args) => image_cmds::run_export(args),
        Command::Whiteouts(args) => inspect_cmds::whiteouts(args),
        Command::History(args) => inspect_cmds::history(args),
        Command::Which(args) => inspect_cmds::which(args),
        Command::Diff(args) => inspect_cmds::diff(args),
        Command::Run(args) => run_cmd::run(args),
        Command::Commit(args) => image_cmds::run_commit(args),
        Command::Ps(args) => container_cmds::ps(args),
        Command::Start(args) => container_cmds::start(args),
    }
}

fn init_logging(verbose: u8, ansi: bool) {
    let default = match verbose {
        0 => "warn",
        1 => "info",
        2 => "debug",
        _ => "trace",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(ansi)
        .event_format(logging::DemoteDroppedReplies {
            inner: tracing_subscriber::fmt::format().with_ansi(ansi),
            debug: verbose >= 2,
        })
        .try_init();
}

/// `mount.fuse.layerfs SOURCE MNT [-o OPTS] [-n] [-s] [-f] [-v]`, as
/// mount(8) calls a helper. The source is free text and ignored.
fn helper_args(args: &[OsString]) -> Result<MountArgs, String> {
    let mut positional = Vec::new();
    let mut options = Vec::new();
    let mut iter = args.iter();
    while let Some(arg) = iter.next() {
        match arg.to_str() {
            Some("-o") => {
                let value = iter.next().ok_or("option -o needs a value")?;
                options.push(value.to_string_lossy().into_owned());
            }
            // -n (no mtab), -s (sloppy), -v (verbose) change nothing here.
            Some("-n" | "-s" | "-v" | "-f") => {}
            _ => positional.push(PathBuf::from(arg)),
        }
    }
    let [_source, mountpoint] = <[PathBuf; 2]>::try_from(positional)
        .map_err(|_| "usage: mount.fuse.layerfs SOURCE MOUNTPOINT -o lowerdir=...".to_string())?;
    Ok(MountArgs {
        options,
        lowers: Vec::new(),
        upper: None,
        work: None,
        foreground: false,
        threads: default_threads(),
        log_file: None,
        image: None,
        container: None,
        store: None,
        exit_with_parent: false,
        mountpoint,
    })
}

fn run_mount(args: MountArgs) -> i32 {
    if args.exit_with_parent {
        // SIGTERM is one of the daemon's stop signals: it unmounts.
        let parent = nix::unistd::getppid();
        if nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGTERM).is_err()
            || parent.as_raw() == 1
        {
            eprintln!("layerfs: mount: the parent process is gone");
            return 1;
        }
    }
    if args.image.is_some() {
        return image_cmds::run_image_mount(args);
    }
    run_mount_with(args, None)
}

/// Called in the daemon once the mount is live; what it returns is kept
/// until the mount ends (e.g. a record of the mount, removed on drop).
type OnLive = Box<dyn FnOnce() -> Result<Box<dyn std::any::Any>, String>>;

fn run_mount_with(args: MountArgs, on_live: Option<OnLive>) -> i32 {
    let spec = if args.lowers.is_empty() && args.upper.is_none() && args.work.is_none() {
        options::parse_mount_options(&args.options)
    } else {
        options::spec_from_lowers(
            args.lowers.clone(),
            args.upper.clone(),
            args.work.clone(),
            &args.options,
        )
    };
    let validated = match spec.and_then(|s| options::validate(&s, &args.mountpoint)) {
        Ok(v) => v,
        Err(e) => {
            eprintln!("layerfs: {e}");
            return 1;
        }
    };
    for ignored in &validated.engine.ignored {
        tracing::debug!(option = %ignored, "fuse-overlayfs option accepted; it has no effect in layerfs");
    }
    let opened = match (&validated.upper, &validated.work) {
        (Some(upper), Some(work)) if !validated.read_only => {
            let (userxattr, format) = upper_choices(&validated, work);
            let spec = UpperSpec {
                upper: upper.clone(),
                work: work.clone(),
                format,
                userxattr,
                durable: !validated.volatile,
            };
            LayerStack::open_writable(&validated.lowers, &spec)
        }
        // `ro` with an upper: the upper is just the top layer.
        (Some(upper), _) => {
            let mut all = vec![upper.clone()];
            all.extend(validated.lowers.iter().cloned());
            LayerStack::open(&all)
        }
        _ => LayerStack::open(&validated.lowers),
    };
    let mut stack = match opened {
        Ok(s) => s,
        Err(e) => {
            eprintln!("layerfs: {e}");
            return 1;
        }
    };
    stack.set_redirect_dir(validated.redirect_dir);
    stack.set_metacopy(validated.metacopy);
    let stack_writable = stack.is_writable();
    let root_mode = stack
        .layer(0)
        .stat(&crate::layers::RelPath::root())
        .map(|st| st.mode)
        .unwrap_or(0o755);
    let fs = match LayerFs::new(stack) {
        Ok(fs) => fs,
        Err(e) => {
            eprintln!("layerfs: {e}");
            return 1;
        }
    };
    let fs = match attr_view(&fs, &validated.engine) {
        Ok(view) => fs.with_view(view),
        Err(e) => {
            eprintln!("layerfs: {e}");
            return 1;
        }
    };
    let mut readiness = if args.foreground {
        daemon::Readiness::none()
    } else {
        match daemon::detach(&validated.mountpoint) {
            daemon::Role::Parent(status) => return status,
            daemon::Role::Daemon(r) => r,
        }
    };
    // New objects get exactly the mode the caller asked for (the kernel
    // applied the caller's umask already).
    nix::sys::stat::umask(nix::sys::stat::Mode::empty());
    if let Err(e) = mount::block_stop_signals() {
        readiness.failed(&format!("cannot block signals: {e}"));
        return 1;
    }
    let cfg = MountConfig {
        mountpoint: validated.mountpoint.clone(),
        source: "layerfs".to_string(),
        allow_other: validated.allow_other,
        threads: usize::from(args.threads),
        flags: validated.mount_flags.clone(),
        writable: stack_writable,
    };
    let mounted = match mount::mount(fs, &cfg, root_mode) {
        Ok(m) => m,
        Err(e) => {
            let msg = format!("mount {}: {e}", cfg.mountpoint.display());
            if args.foreground {
                eprintln!("layerfs: {msg}");
            }
            readiness.failed(&msg);
            return 1;
        }
    };
    if !args.foreground
        && let Err(e) = daemon::redirect_stdio(args.log_file.as_deref())
    {
        readiness.failed(&format!("log file: {e}"));
        return 1;
    }
    let _live = match on_live.map(|f| f()).transpose() {
        Ok(kept) => kept,
        Err(msg) => {
            readiness.failed(&msg);
            return 1;
        }
    };
    let _record = live_mounts::record(
        &validated,
        args.image.as_deref(),
        args.store.as_deref(),
        args.container.as_deref(),
    );
    readiness.ready();
    match mounted.serve() {
        Ok(()) => 0,
        Err(e) => {
            tracing::error!(error = %e, "session ended with an error");
            1
        }
    }
}

/// Markers and whiteouts the upper can take: `user.overlay.*` where
/// `trusted.*` is refused (rootless, user namespaces), OCI whiteouts where
/// mknod is; each said once.
fn upper_choices(
    v: &options::ValidatedMount,
    work: &Path,
) -> (bool, crate::layers::WhiteoutFormat) {
    let (mut userxattr, mut format) = (v.userxattr, v.whiteout);
    match crate::layers::probe::probe_upper(work) {
        Ok(can) => {
            if !userxattr && !can.trusted_xattrs {
                tracing::info!("trusted.* xattrs are refused here: markers go in user.overlay.*");
                userxattr = true;
            }
            if format == crate::layers::WhiteoutFormat::Overlay && !can.whiteout_devices {
                tracing::warn!("mknod is refused here: whiteouts are written as OCI .wh. files");
                format = crate::layers::WhiteoutFormat::Oci;
            }
        }
        Err(e) => tracing::debug!(error = %e, "cannot probe the work dir; keeping the options"),
    }
    (userxattr, format)
}

/// Owners and modes as fuse-overlayfs shows them (see `fs::view`).
fn attr_view(
    fs: &LayerFs,
    engine: &compat::EngineOptions,
) -> Result<crate::fs::view::AttrView, String> {
    use crate::layers::override_stat::{OverrideXattr, mark_layer_root};
    let stack = fs.stack();
    let mut overrides: Vec<Option<OverrideXattr>> = (0..stack.len())
        .map(|i| OverrideXattr::of_layer(stack.layer(i as crate::union::LayerIdx)))
        .collect();
    let level = engine.xattr_permissions;
    let write_overrides = level > 0 && stack.is_writable();
    if write_overrides && overrides.first().is_some_and(Option::is_none) {
        let name = OverrideXattr::for_level(level).ok_or("bad xattr_permissions")?;
        mark_layer_root(stack.layer(0), name)
            .map_err(|e| format!("upperdir: cannot set {}: {e}", name.name()))?;
        overrides[0] = Some(name);
    }
    Ok(crate::fs::view::AttrView {
        uid_map: engine.uid_map.clone(),
        gid_map: engine.gid_map.clone(),
        squash_uid: engine.shown_uid(),
        squash_gid: engine.shown_gid(),
        overflow: crate::fs::view::kernel_overflow_ids(),
        static_nlink: engine.static_nlink,
        overrides,
        write_overrides,
    })
}

fn run_umount(args: UmountArgs) -> i32 {
    let mnt = match std::fs::canonicalize(&args.mountpoint) {
        Ok(p) => p,
        // A dead FUSE mount answers ENOTCONN; its path is still right.
        Err(_) => args.mountpoint.clone(),
    };
    if !is_layerfs_mount(&mnt) {
        eprintln!(
            "layerfs: umount {}: not a layerfs mount",
            args.mountpoint.display()
        );
        return 1;
    }
    let flags = if args.lazy {
        nix::mount::MntFlags::MNT_DETACH
    } else if args.force {
        // The kernel's fuse umount_begin aborts the connection.
        nix::mount::MntFlags::MNT_FORCE
    } else {
        nix::mount::MntFlags::empty()
    };
    match nix::mount::umount2(&mnt, flags) {
        Ok(()) => 0,
        Err(nix::errno::Errno::EBUSY) if args.force => {
            match nix::mount::umount2(&mnt, nix::mount::MntFlags::MNT_DETACH) {
                Ok(()) => 0,
                Err(e) => {
                    eprintln!("layerfs: umount -f {}: {}", mnt.display(), e.desc());
                    1
                }
            }
        }
        Err(nix::errno::Errno::EPERM) if args.force => {
            eprintln!(
                "layerfs: umount -f {}: aborting a FUSE connection needs root \
                 (kill the daemon, then `layerfs umount -l`)",
                mnt.display()
            );
            1
        }
        Err(nix::errno::Errno::EPERM) => {
            // Not root: the setuid helper may unmount what this user mounted.
            let mut cmd = std::process::Command::new("fusermount3");
            cmd.arg("-u");
            if args.lazy {
                cmd.arg("-z");
            }
            match cmd.arg(&mnt).status() {
                Ok(s) if s.success() => 0,
                Ok(_) => 1,
                Err(e) => {
                    eprintln!("layerfs: umount {}: fusermount3: {e}", mnt.display());
                    1
                }
            }
        }
        Err(nix::errno::Errno::EBUSY) => {
            eprintln!(
                "layerfs: umount {}: busy (files open or processes inside); \
                 `layerfs umount -l` detaches it now and ends it when the last user is gone",
                mnt.display()
            );
            1
        }
        Err(e) => {
            eprintln!("layerfs: umount {}: {}", mnt.display(), e.desc());
            1
        }
    }
}

/// Whether `path` is the mount point of a live layerfs mount.
pub fn is_layerfs_mount(path: &Path) -> bool {
    options::mount_points()
        .map(|mounts| {
            mounts
                .iter()
                .any(|(mnt, fstype)| mnt == path && fstype == "fuse.layerfs")
        })
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    /// clap checks its definitions (unique short options across global and
    /// subcommand arguments...) only when a command line is parsed in a
    /// debug build: check them all here, without running anything.
    #[test]
    fn the_command_line_definitions_are_consistent() {
        <super::Cli as clap::CommandFactory>::command().debug_assert();
    }
}
