//! Containers kept in the store: `layerfs run IMAGE`, `start`, `ps`.
//!
//! A container lives in containers/<name>/ (docs/formats.md): its writable
//! layer (`upper/`, `work/`), its init layer (`init/`: the mount points its
//! image lacks), the files bound over /etc (`etc/`), the mount point of its
//! root (`rootfs/`) and its state (`state.json`: what it runs, the pid of
//! the `layerfs run` running it, how its last run ended), changed only
//! under the store's exclusive lock.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde::Serialize;

use super::run_cmd::{RunArgs, build_spec, short_id, write_etc_files};
use crate::image::containers::{ContainerState, ContainerStatus};
use crate::image::{Container, Image, Store};
use crate::runtime::{self, ImageDefaults, RunSpec, cgroup, initlayer};

fn fail(e: impl std::fmt::Display) -> i32 {
    eprintln!("layerfs: {e}");
    runtime::EXIT_RUNTIME_FAILED
}

fn open_store(dir: Option<&Path>) -> Result<Store, String> {
    Store::open(&Store::resolve_dir(dir))
        .map(|s| s.with_mount_check(super::is_layerfs_mount))
        .map_err(|e| e.to_string())
}

/// The image config's process defaults (Entrypoint, Cmd, Env, WorkingDir,
/// User); absent or null fields are empty.
pub fn image_defaults(image: &Image) -> ImageDefaults {
    let Some(cfg) = image.config.config.as_ref() else {
        return ImageDefaults::default();
    };
    let strings = |key: &str| -> Vec<String> {
        cfg.get(key)
            .and_then(|v| v.as_array())
            .map(|a| {
                a.iter()
                    .filter_map(|s| s.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default()
    };
    let string = |key: &str| -> String {
        cfg.get(key)
            .and_then(|v| v.as_str())
            .unwrap_or_default()
            .to_string()
    };
    ImageDefaults {
        entrypoint: strings("Entrypoint"),
        cmd: strings("Cmd"),
        env: strings("Env"),
        working_dir: string("WorkingDir"),
        user: string("User"),
    }
}

/// Where a container's runtime files live, beside its writable layer.
struct Paths {
    init: PathBuf,
    etc: PathBuf,
    rootfs: PathBuf,
}

impl Paths {
    fn of(c: &Container) -> Paths {
        Paths {
            init: c.dir.join("init"),
            etc: c.dir.join("etc"),
            rootfs: c.dir.join("rootfs"),
        }
    }
}

/// A container ready to run: its state written (running, with our pid).
struct Prepared {
    image: Image,
    container: Container,
    spec: RunSpec,
    state: ContainerState,
}

/// `layerfs run [OPTIONS] IMAGE [CMD...]`.
pub fn run_image(args: &RunArgs) -> i32 {
    let Some((image_ref, command)) = args.args.split_first() else {
        return fail("run: name an image (or --rootfs DIR)");
    };
    // Refused before anything is made.
    if let Err(e) = super::run_cmd::limits(args) {
        return fail(format!("run: {e}"));
    }
    let store = match open_store(args.store.store.as_deref()) {
        Ok(s) => s,
        Err(e) => return fail(format!("run: {e}")),
    };
    let name = args
        .name
        .clone()
        .unwrap_or_else(|| format!("run-{}", short_id()));
    let prepared = (|| -> Result<Prepared, String> {
        let lock = store.lock(true).map_err(|e| e.to_string())?;
        let _ = store.reap_containers(&lock);
        let image = store.resolve_image(image_ref).map_err(|e| e.to_string())?;
        let existed = match store.container_state(&name).map_err(|e| e.to_string())? {
            Some(state) => {
                if let ContainerStatus::Running { pid } = state.status() {
                    return Err(format!(
                        "container {name}: already running (layerfs run, pid {pid})"
                    ));
                }
                store.require_unmounted(&name).map_err(|e| e.to_string())?;
                true
            }
            None => false,
        };
        let container = store
            .create_container(&lock, &name, &image.record.id)
            .map_err(|e| e.to_string())?;
        let made = (|| {
            let paths = Paths::of(&container);
            prepare_dirs(&image, &paths)?;
            let hostname = args
                .hostname
                .clone()
                .unwrap_or_else(|| name.chars().take(63).collect());
            let spec = build_spec(
                args,
                command,
                &image_defaults(&image),
                &paths.rootfs,
                &paths.etc,
                &hostname,
            )?;
            let json = serde_json::to_value(&spec).map_err(|e| e.to_string())?;
            let state = ContainerState::started_here(spec.argv.clone(), json, args.rm);
            store
                .set_container_state(&lock, &name, &state)
                .map_err(|e| e.to_string())?;
            Ok((spec, state))
        })();
        match made {
            Ok((spec, state)) => Ok(Prepared {
                image,
                container,
                spec,
                state,
            }),
            Err(e) => {
                // A container this run made for nothing is not kept.
                if !existed {
                    let _ = store.remove_container(&lock, &name);
                }
                Err(e)
            }
        }
    })();
    match prepared {
        Ok(p) => run_and_record(&store, p),
        Err(e) => fail(format!("run: {e}")),
    }
}

/// `layerfs start NAME`: run the container's recorded command again, with
/// the options it was run with, attached.
pub fn start(args: StartArgs) -> i32 {
    let (name, store_dir) = (args.name.as_str(), args.store.store.as_deref());
    let store = match open_store(store_dir) {
        Ok(s) => s,
        Err(e) => return fail(format!("start: {e}")),
    };
    let prepared = (|| -> Result<Prepared, String> {
        let lock = store.lock(true).map_err(|e| e.to_string())?;
        let _ = store.reap_containers(&lock);
        let container = store
            .container(name)
            .map_err(|e| e.to_string())?
            .ok_or_else(|| format!("container {name}: not found"))?;
        let old = store
            .container_state(name)
            .map_err(|e| e.to_string())?
            .unwrap_or_default();
        if let ContainerStatus::Running { pid } = old.status() {
            return Err(format!(
                "container {name}: already running (layerfs run, pid {pid})"
            ));
        }
        store.require_unmounted(name).map_err(|e| e.to_string())?;
        if old.spec.is_null() {
            return Err(format!(
                "container {name}: never run, so there is no command to start (use layerfs run)"
            ));
        }
        let mut spec: RunSpec = serde_json::from_value(old.spec.clone())
            .map_err(|e| format!("container {name}: state.json: {e}"))?;
        if !spec.limits.is_empty() {
            cgroup::hierarchy_for(&spec.limits)?;
        }
        let image = store
            .find_image(&container.record.image.to_string())
            .and_then(|r| store.load_image(r))
            .map_err(|e| format!("container {name}: {e}"))?;
        let paths = Paths::of(&container);
        prepare_dirs(&image, &paths)?;
        // Where the store is now (it may have moved since), fresh /etc files.
        spec.rootfs = paths.rootfs.clone();
        (spec.etc_hostname, spec.etc_hosts, spec.etc_resolv_conf) =
            write_etc_files(&paths.etc, &spec.hostname)
                .map_err(|e| format!("{}: {e}", paths.etc.display()))?;
        let state = ContainerState::started_here(old.command, old.spec, old.auto_remove);
        store
            .set_container_state(&lock, name, &state)
            .map_err(|e| e.to_string())?;
        Ok(Prepared {
            image,
            container,
            spec,
            state,
        })
    })();
    match prepared {
        Ok(p) => run_and_record(&store, p),
        Err(e) => fail(format!("start: {e}")),
    }
}

/// Run a prepared container, then record how it ended (or remove it, for
/// `--rm`). Its exit status.
fn run_and_record(store: &Store, p: Prepared) -> i32 {
    // For --rm: removes the container if this process is killed.
    let watcher = if p.state.auto_remove {
        match spawn_watcher(store, &p.container.record.name) {
            Ok(w) => Some(w),
            Err(e) => return fail(format!("run: {e}")),
        }
    } else {
        None
    };
    let code = match run_container(store, &p) {
        Ok(code) => code,
        Err(e) => fail(format!("run: {e}")),
    };
    let name = &p.container.record.name;
    let mut state = p.state;
    state.finish(code);
    let recorded = store.lock(true).and_then(|lock| {
        store.set_container_state(&lock, name, &state)?;
        if state.auto_remove {
            store.remove_container(&lock, name)?;
        }
        Ok(())
    });
    if let Err(e) = recorded {
        eprintln!("layerfs: run: container {name}: {e}");
    }
    if let Some(mut w) = watcher {
        // Its stdin closed: it finds the container gone and ends.
        drop(w.stdin.take());
        let _ = w.wait();
    }
    code
}

/// `layerfs __reap STORE NAME`: waits until its stdin closes (the `layerfs
/// run --rm` that started it ended, even killed), then for the container's
/// root to be unmounted (its daemon follows the same parent), and removes
/// the container if its run is over and nobody removed it.
fn spawn_watcher(store: &Store, name: &str) -> Result<Child, String> {
    use std::os::unix::process::CommandExt;
    Command::new("/proc/self/exe")
        .arg("__reap")
        .arg(store.root())
        .arg(name)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        // Out of the terminal's foreground group: a ^C is for the container.
        .process_group(0)
        .spawn()
        .map_err(|e| format!("starting the --rm watcher: {e}"))
}

/// The watcher's side (see [`spawn_watcher`]).
pub fn reap_main(args: &[std::ffi::OsString]) -> i32 {
    let [store_dir, name] = args else {
        eprintln!("layerfs: __reap: want STORE NAME");
        return 2;
    };
    let mut sink = [0u8; 64];
    while !matches!(
        std::io::Read::read(&mut std::io::stdin(), &mut sink),
        Ok(0) | Err(_)
    ) {}
    let name = name.to_string_lossy();
    let rootfs = Path::new(store_dir)
        .join("containers")
        .join(&*name)
        .join("rootfs");
    let deadline = Instant::now() + Duration::from_secs(30);
    while super::is_layerfs_mount(&rootfs) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let reaped = open_store(Some(Path::new(store_dir))).and_then(|store| {
        let lock = store.lock(true).map_err(|e| e.to_string())?;
        store.reap_containers(&lock).map_err(|e| e.to_string())
    });
    match reaped {
        Ok(_) => 0,
        Err(e) => {
            eprintln!("layerfs: run --rm: container {name}: {e}");
            1
        }
    }
}

/// The init layer (made once per container) and the mount point. Called
/// under the exclusive lock for a container that neither runs nor is
/// mounted: a mount still at its root is what a run left whose daemon was
/// killed with it (the kernel answers ENOTCONN there), detached here.
fn prepare_dirs(image: &Image, paths: &Paths) -> Result<(), String> {
    if super::is_layerfs_mount(&paths.rootfs) {
        nix::mount::umount2(&paths.rootfs, nix::mount::MntFlags::MNT_DETACH)
            .map_err(|e| format!("a stale mount at {}: {e}", paths.rootfs.display()))?;
    }
    if !paths.init.is_dir() {
        // Built beside and renamed, so a half-made init layer never shows.
        let tmp = paths.init.with_extension("tmp");
        let _ = std::fs::remove_dir_all(&tmp);
        std::fs::create_dir(&tmp).map_err(|e| format!("{}: {e}", tmp.display()))?;
        let top_first: Vec<PathBuf> = image.layer_dirs.iter().rev().cloned().collect();
        initlayer::build(&top_first, &tmp).map_err(|e| format!("init layer: {e}"))?;
        std::fs::rename(&tmp, &paths.init).map_err(|e| format!("{}: {e}", paths.init.display()))?;
    }
    std::fs::create_dir_all(&paths.rootfs).map_err(|e| format!("{}: {e}", paths.rootfs.display()))
}

/// Mount the container's root, run it, unmount; its exit status.
fn run_container(store: &Store, p: &Prepared) -> Result<i32, String> {
    let paths = Paths::of(&p.container);
    let mut daemon = mount_root(&p.image, &p.container, &paths)?;
    // Recorded as a mount of the image, so `rmi` refuses it meanwhile.
    let result = store
        .lock(false)
        .and_then(|lock| {
            store.record_mount(
                &lock,
                &paths.rootfs,
                &p.image.record.id,
                Some(&p.container.record.name),
            )
        })
        .map_err(|e| e.to_string())
        .and_then(|guard| {
            let code = runtime::run(&p.spec).map_err(|e| e.to_string());
            drop(guard);
            code
        });
    unmount_root(&paths.rootfs, &mut daemon);
    result
}

/// A foreground `layerfs mount` of the init layer and the image's layers
/// under the container's upper. It unmounts when told (SIGTERM) and when
/// this process ends, even killed (`--exit-with-parent`).
fn mount_root(image: &Image, container: &Container, paths: &Paths) -> Result<Child, String> {
    let mut cmd = Command::new("/proc/self/exe");
    cmd.args(["mount", "--foreground", "--exit-with-parent"]);
    cmd.arg("--lower").arg(&paths.init);
    for layer in image.lowerdirs() {
        cmd.arg("--lower").arg(layer);
    }
    cmd.arg("--upper").arg(&container.upper);
    cmd.arg("--work").arg(&container.work);
    cmd.arg(&paths.rootfs);
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit());
    // Out of the terminal's foreground group: a ^C is for the container
    // (the monitor passes it on), not a stop signal for the daemon.
    std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
    let mut child = cmd
        .spawn()
        .map_err(|e| format!("starting the mount: {e}"))?;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Err(format!(
                "mounting {}: the daemon ended ({status})",
                paths.rootfs.display()
            ));
        }
        if super::is_layerfs_mount(&paths.rootfs) {
            return Ok(child);
        }
        if Instant::now() > deadline {
            stop_daemon(&mut child);
            return Err(format!(
                "mounting {}: not live after 30 s",
                paths.rootfs.display()
            ));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// SIGTERM makes the daemon unmount (lazily when the dying container still
/// holds the mount) and end; SIGKILL if it does not.
fn stop_daemon(daemon: &mut Child) {
    if let Ok(pid) = i32::try_from(daemon.id()) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGTERM,
        );
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if let Ok(Some(_)) = daemon.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let _ = daemon.kill();
    let _ = daemon.wait();
}

fn unmount_root(rootfs: &Path, daemon: &mut Child) {
    stop_daemon(daemon);
    if super::is_layerfs_mount(rootfs) {
        let _ = nix::mount::umount2(rootfs, nix::mount::MntFlags::MNT_DETACH);
    }
}

#[derive(Debug, clap::Args)]
pub struct PsArgs {
    /// All containers, not only the running ones.
    #[arg(short, long)]
    pub all: bool,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub store: super::image_cmds::StoreArg,
}

#[derive(Debug, clap::Args)]
pub struct StartArgs {
    /// The container's name.
    pub name: String,
    #[command(flatten)]
    pub store: super::image_cmds::StoreArg,
}

/// One line of `layerfs ps`.
#[derive(Debug, Serialize)]
struct PsRow {
    name: String,
    image: String,
    image_id: String,
    command: Vec<String>,
    created: String,
    /// created, running or exited.
    state: &'static str,
    /// As docker shows it: `Up 5 seconds`, `Exited (N) 3 minutes ago`,
    /// `Created`.
    status: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pid: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    exit_code: Option<i32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    started: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    finished: Option<String>,
}

/// Seconds since the epoch of an RFC 3339 UTC time as the store writes it
/// (`2026-01-02T03:04:05Z`).
fn epoch_seconds(t: &str) -> Option<i64> {
    let num = |r: std::ops::Range<usize>| t.get(r)?.parse::<i64>().ok();
    let (y, m, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (hh, mm, ss) = (num(11..13)?, num(14..16)?, num(17..19)?);
    // Days from civil (Howard Hinnant's algorithm), the inverse of the
    // store's now_rfc3339.
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(days * 86_400 + hh * 3600 + mm * 60 + ss)
}

/// `5 seconds ago`, `3 minutes ago`... as docker ps says it; the time
/// itself when it cannot be read.
fn ago(t: &str) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    let Some(then) = epoch_seconds(t) else {
        return t.to_string();
    };
    let secs = (now - then).max(0);
    let (n, unit) = match secs {
        0..60 => (secs, "second"),
        60..3600 => (secs / 60, "minute"),
        3600..86_400 => (secs / 3600, "hour"),
        _ => (secs / 86_400, "day"),
    };
    let s = if n == 1 { "" } else { "s" };
    format!("{n} {unit}{s} ago")
}

/// `layerfs ps [-a] [--json]`: the running containers, or all of them.
/// Also removes `--rm` containers whose `layerfs run` was killed.
pub fn ps(args: PsArgs) -> i32 {
    let (all, json, store_dir) = (args.all, args.json, args.store.store.as_deref());
    let listed = (|| -> Result<Vec<PsRow>, String> {
        let store = open_store(store_dir)?;
        let lock = store.lock(true).map_err(|e| e.to_string())?;
        let _ = store.reap_containers(&lock);
        let images = store.image_records().map_err(|e| e.to_string())?;
        let mut rows = Vec::new();
        for rec in store.container_records().map_err(|e| e.to_string())? {
            let state = store
                .container_state(&rec.name)
                .map_err(|e| e.to_string())?
                .unwrap_or_default();
            let status = state.status();
            if !all && !matches!(status, ContainerStatus::Running { .. }) {
                continue;
            }
            let (kind, shown, pid, exit_code, finished) = match status {
                ContainerStatus::Created => ("created", "Created".to_string(), None, None, None),
                ContainerStatus::Running { pid } => (
                    "running",
                    format!("Up {}", ago(&state.started).trim_end_matches(" ago")),
                    Some(pid),
                    None,
                    None,
                ),
                ContainerStatus::Exited { code, finished } => {
                    let code_text = code.map_or("unknown".to_string(), |c| c.to_string());
                    let when = finished
                        .as_deref()
                        .map_or("(its layerfs run was killed)".to_string(), ago);
                    (
                        "exited",
                        format!("Exited ({code_text}) {when}"),
                        None,
                        code,
                        finished,
                    )
                }
            };
            let image = images
                .iter()
                .find(|i| i.id == rec.image)
                .and_then(|i| i.names.first().cloned())
                .unwrap_or_else(|| rec.image.hex().chars().take(12).collect());
            rows.push(PsRow {
                name: rec.name.clone(),
                image,
                image_id: rec.image.to_string(),
                command: state.command.clone(),
                created: rec.created.clone(),
                state: kind,
                status: shown,
                pid,
                exit_code,
                started: (!state.started.is_empty()).then(|| state.started.clone()),
                finished,
            });
        }
        Ok(rows)
    })();
    let rows = match listed {
        Ok(r) => r,
        Err(e) => {
            eprintln!("layerfs: ps: {e}");
            return 1;
        }
    };
    if json {
        match serde_json::to_string_pretty(&rows) {
            Ok(text) => println!("{text}"),
            Err(e) => {
                eprintln!("layerfs: ps: {e}");
                return 1;
            }
        }
        return 0;
    }
    println!(
        "{:<24} {:<24} {:<30} {:<22} STATUS",
        "NAME", "IMAGE", "COMMAND", "CREATED"
    );
    for r in &rows {
        let mut cmd = format!("{:?}", r.command.join(" "));
        if cmd.chars().count() > 30 {
            cmd = cmd.chars().take(27).collect::<String>() + "...";
        }
        println!(
            "{:<24} {:<24} {cmd:<30} {:<22} {}",
            r.name,
            r.image,
            ago(&r.created),
            r.status
        );
    }
    0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_times_read_back() {
        assert_eq!(epoch_seconds("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(epoch_seconds("2000-03-01T00:00:01Z"), Some(951_868_801));
        assert_eq!(epoch_seconds("2024-02-29T23:59:59Z"), Some(1_709_251_199));
        assert_eq!(epoch_seconds("garbage"), None);
        let now = crate::image::store::now_rfc3339();
        assert_eq!(ago(&now).split(' ').nth(1), Some("seconds"));
        assert_eq!(ago("1970-01-01T00:00:00Z").split(' ').nth(1), Some("days"));
    }
}
