//! `layerfs run`: the options, the files a container gets under /etc, and
//! the hand-over to `runtime::run`.

use std::path::{Path, PathBuf};

use crate::runtime::cgroup::{self, Limits};
use crate::runtime::{self, Bind, ImageDefaults, Network, Process, RunOptions, RunSpec};

#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// A name for the container (reused when it exists).
    #[arg(long)]
    pub name: Option<String>,
    /// Remove the container's writable layer when it exits.
    #[arg(long)]
    pub rm: bool,
    /// Keep stdin open (otherwise the command reads /dev/null).
    #[arg(short, long)]
    pub interactive: bool,
    /// Give the command a pseudo-terminal (raw mode, window size).
    #[arg(short, long)]
    pub tty: bool,
    /// The container's hostname.
    #[arg(long)]
    pub hostname: Option<String>,
    /// Set an environment variable (K=V, or K to pass this one's value).
    #[arg(short = 'e', long = "env", value_name = "K=V")]
    pub env: Vec<String>,
    /// Working directory inside the container.
    #[arg(short = 'w', long = "workdir", value_name = "DIR")]
    pub workdir: Option<String>,
    /// USER[:GROUP], names or numbers from the image.
    #[arg(short = 'u', long = "user", value_name = "USER[:GROUP]")]
    pub user: Option<String>,
    /// Bind a host directory or file: HOSTDIR:CTRDIR[:ro].
    #[arg(short = 'v', long = "volume", value_name = "HOST:CTR[:ro]")]
    pub volumes: Vec<String>,
    /// host (the host's network) or none (only `lo`).
    #[arg(long = "net", default_value = "host", value_parser = ["host", "none"])]
    pub net: String,
    /// Mount the container's root read-only.
    #[arg(long)]
    pub read_only: bool,
    /// Memory limit (bytes, or 512k, 64m, 1g), through cgroup v2.
    #[arg(long, value_name = "SIZE")]
    pub memory: Option<String>,
    /// Most processes the container may have, through cgroup v2.
    #[arg(long = "pids-limit", value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub pids_limit: Option<u64>,
    #[command(flatten)]
    pub store: super::image_cmds::StoreArg,
    /// Run on this directory (or mounted tree) instead of an image: the
    /// positional arguments are then all the command.
    #[arg(long, value_name = "DIR")]
    pub rootfs: Option<PathBuf>,
    /// The image, then the command and its arguments.
    #[arg(
        trailing_var_arg = true,
        allow_hyphen_values = true,
        value_name = "IMAGE [CMD]..."
    )]
    pub args: Vec<String>,
}

/// A short random-looking id for hostnames and names (not security).
pub fn short_id() -> String {
    use sha2::Digest;
    let seed = format!(
        "{}-{:?}-{:?}",
        std::process::id(),
        std::time::SystemTime::now(),
        std::thread::current().id()
    );
    let digest = sha2::Sha256::digest(seed.as_bytes());
    digest.iter().take(6).map(|b| format!("{b:02x}")).collect()
}

/// /etc/hostname, /etc/hosts and /etc/resolv.conf for the container, in
/// `dir`; they are bind-mounted, never written into a layer.
pub fn write_etc_files(dir: &Path, hostname: &str) -> std::io::Result<(PathBuf, PathBuf, PathBuf)> {
    std::fs::create_dir_all(dir)?;
    let (h, hosts, resolv) = (
        dir.join("hostname"),
        dir.join("hosts"),
        dir.join("resolv.conf"),
    );
    std::fs::write(&h, format!("{hostname}\n"))?;
    std::fs::write(
        &hosts,
        format!(
            "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n127.0.1.1\t{hostname}\n"
        ),
    )?;
    // The host's resolvers, as container engines copy them.
    let host_resolv = std::fs::read("/etc/resolv.conf").unwrap_or_default();
    std::fs::write(&resolv, host_resolv)?;
    Ok((h, hosts, resolv))
}

/// `--memory` and `--pids-limit`, checked against the machine: a cgroup v2
/// hierarchy that can enforce them, else the one line saying why not.
pub fn limits(args: &RunArgs) -> Result<Limits, String> {
    let limits = Limits {
        memory: args.memory.as_deref().map(cgroup::parse_size).transpose()?,
        pids: args.pids_limit,
    };
    if !limits.is_empty() {
        cgroup::hierarchy_for(&limits)?;
    }
    Ok(limits)
}

/// The spec for a container on `rootfs`, from the image's defaults and the
/// user's options.
pub fn build_spec(
    args: &RunArgs,
    command: &[String],
    image: &ImageDefaults,
    rootfs: &Path,
    etc_dir: &Path,
    default_hostname: &str,
) -> Result<RunSpec, String> {
    let opts = RunOptions {
        command: command.to_vec(),
        env: args.env.clone(),
        workdir: args.workdir.clone(),
        user: args.user.clone(),
    };
    let hostname = args
        .hostname
        .clone()
        .unwrap_or_else(|| default_hostname.to_string());
    let binds = args
        .volumes
        .iter()
        .map(|v| Bind::parse(v))
        .collect::<Result<Vec<_>, _>>()?;
    let (etc_hostname, etc_hosts, etc_resolv_conf) =
        write_etc_files(etc_dir, &hostname).map_err(|e| format!("{}: {e}", etc_dir.display()))?;
    let process = Process::new(image, &opts, &hostname)?;
    let limits = limits(args)?;
    Ok(RunSpec {
        rootfs: rootfs.to_path_buf(),
        argv: process.argv,
        env: process.env,
        cwd: process.cwd,
        user: process.user,
        hostname,
        etc_hostname,
        etc_hosts,
        etc_resolv_conf,
        binds,
        network: if args.net == "none" {
            Network::None
        } else {
            Network::Host
        },
        read_only: args.read_only,
        interactive: args.interactive,
        tty: args.tty,
        console_socket: None,
        limits,
        cgroup: None,
    })
}

/// `layerfs run --rootfs DIR [CMD...]`: no image, no store.
fn run_on_rootfs(args: &RunArgs, rootfs: &Path) -> i32 {
    let rootfs = match std::fs::canonicalize(rootfs) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("layerfs: run: {}: {e}", rootfs.display());
            return runtime::EXIT_RUNTIME_FAILED;
        }
    };
    if let Err(e) = limits(args) {
        eprintln!("layerfs: run: {e}");
        return runtime::EXIT_RUNTIME_FAILED;
    }
    let id = short_id();
    let etc_dir = std::env::temp_dir().join(format!("layerfs-run-{id}"));
    let defaults = ImageDefaults::default();
    let result = build_spec(args, &args.args, &defaults, &rootfs, &etc_dir, &id)
        .and_then(|spec| runtime::run(&spec).map_err(|e| e.to_string()));
    let _ = std::fs::remove_dir_all(&etc_dir);
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("layerfs: run: {e}");
            runtime::EXIT_RUNTIME_FAILED
        }
    }
}

pub fn run(args: RunArgs) -> i32 {
    if let Some(rootfs) = args.rootfs.clone() {
        return run_on_rootfs(&args, &rootfs);
    }
    super::container_cmds::run_image(&args)
}
