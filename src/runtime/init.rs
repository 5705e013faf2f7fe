//! The container's first process (`layerfs __init`), already in its new
//! namespaces: it builds the root's mounts, pivots into it, becomes the
//! container's user with the default capabilities, and execs the command,
//! which so becomes PID 1.

use std::collections::HashSet;
use std::ffi::CString;
use std::io;
use std::os::fd::OwnedFd;
use std::path::Path;

use caps::{CapSet, Capability};
use nix::mount::{MntFlags, MsFlags};
use nix::sys::signal::{SigSet, Signal};

use super::rootfs::{Root, Target, fd_path, mount_on};
use super::spec::{Network, RunSpec};
use super::user::Identity;
use super::{EXIT_RUNTIME_FAILED, SPEC_ENV};

/// Exit status for a command that is not there.
const EXIT_NOT_FOUND: i32 = 127;

/// The capabilities container engines leave a container's root (Docker's
/// and Podman's default set).
const DEFAULT_CAPS: [Capability; 14] = [
    Capability::CAP_CHOWN,
    Capability::CAP_DAC_OVERRIDE,
    Capability::CAP_FSETID,
    Capability::CAP_FOWNER,
    Capability::CAP_MKNOD,
    Capability::CAP_NET_RAW,
    Capability::CAP_SETGID,
    Capability::CAP_SETUID,
    Capability::CAP_SETFCAP,
    Capability::CAP_SETPCAP,
    Capability::CAP_NET_BIND_SERVICE,
    Capability::CAP_SYS_CHROOT,
    Capability::CAP_KILL,
    Capability::CAP_AUDIT_WRITE,
];

/// Device nodes of the host bound into the container's /dev.
const DEVICES: [&str; 6] = ["null", "zero", "full", "random", "urandom", "tty"];

/// Entry point of `layerfs __init`; returns only on failure.
pub fn init_main() -> i32 {
    // The monitor gone (killed) means the container goes too.
    let _ = nix::sys::prctl::set_pdeathsig(Signal::SIGKILL);
    let spec = match std::env::var(SPEC_ENV)
        .map_err(|e| e.to_string())
        .and_then(|j| serde_json::from_str::<RunSpec>(&j).map_err(|e| e.to_string()))
    {
        Ok(s) => s,
        Err(e) => {
            eprintln!("layerfs: run: no container spec ({e})");
            return EXIT_RUNTIME_FAILED;
        }
    };
    // Before anything else runs in it: the limits hold from the start.
    if let Some(dir) = &spec.cgroup
        && let Err(e) = super::cgroup::join(dir)
    {
        eprintln!("layerfs: run: {e}");
        return EXIT_RUNTIME_FAILED;
    }
    match prepare(&spec) {
        Ok(ready) => exec(&spec, ready),
        Err(e) => {
            eprintln!("layerfs: run: {e}");
            // A command the image lacks: 127, as shells answer.
            if e.kind() == io::ErrorKind::NotFound && e.to_string().contains("not found in $PATH") {
                EXIT_NOT_FOUND
            } else {
                EXIT_RUNTIME_FAILED
            }
        }
    }
}

fn context(e: impl Into<io::Error>, what: &str) -> io::Error {
    let e = e.into();
    io::Error::new(e.kind(), format!("{what}: {e}"))
}

/// What `prepare` leaves for the exec.
struct Ready {
    program: CString,
    argv: Vec<CString>,
    env: Vec<CString>,
    user: Identity,
}

/// Mount everything, pivot, find the user and the program.
fn prepare(spec: &RunSpec) -> io::Result<Ready> {
    nix::mount::mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None::<&str>,
    )
    .map_err(|e| context(e, "making / private"))?;
    // pivot_root wants a mount point: a bind of the root onto itself.
    nix::mount::mount(
        Some(&spec.rootfs),
        &spec.rootfs,
        None::<&str>,
        MsFlags::MS_BIND | MsFlags::MS_REC,
        None::<&str>,
    )
    .map_err(|e| context(e, &format!("bind {}", spec.rootfs.display())))?;
    let root = Root::open(&spec.rootfs)?;
    mount_kernel_filesystems(&root)?;
    mount_dev(&root)?;
    if spec.tty {
        root.ensure("/dev/console", Target::File)?;
    }
    for (file, source) in [
        ("/etc/hostname", &spec.etc_hostname),
        ("/etc/hosts", &spec.etc_hosts),
        ("/etc/resolv.conf", &spec.etc_resolv_conf),
    ] {
        let target = root.ensure(file, Target::File)?;
        mount_on(Some(source), &target, None, MsFlags::MS_BIND, None, file)?;
    }
    for bind in &spec.binds {
        let kind = if bind.host.is_dir() {
            Target::Dir
        } else {
            Target::File
        };
        let target = root.ensure(&bind.container, kind)?;
        let flags = MsFlags::MS_BIND | MsFlags::MS_REC;
        mount_on(
            Some(&bind.host),
            &target,
            None,
            flags,
            None,
            &bind.container,
        )?;
        if bind.read_only {
            let mounted = root.open_path(&bind.container)?;
            let ro = MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY;
            mount_on(None, &mounted, None, ro, None, &bind.container)?;
        }
    }
    if spec.read_only {
        let flags = MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY;
        nix::mount::mount(
            None::<&str>,
            &spec.rootfs,
            None::<&str>,
            flags,
            None::<&str>,
        )
        .map_err(|e| context(e, "read-only root"))?;
    }
    if spec.network == Network::None {
        loopback_up()?;
    }
    nix::unistd::sethostname(&spec.hostname).map_err(|e| context(e, "sethostname"))?;
    pivot_into(&spec.rootfs)?;
    if let (true, Some(socket)) = (spec.tty, spec.console_socket) {
        super::tty::attach_console(socket)?;
    }
    let user = Identity::resolve(
        &spec.user,
        &std::fs::read_to_string("/etc/passwd").unwrap_or_default(),
        &std::fs::read_to_string("/etc/group").unwrap_or_default(),
    )?;
    enter_workdir(&spec.cwd)?;
    let env = with_home(&spec.env, &user.home);
    let program = find_program(&spec.argv[0], &env)?;
    let cstrings = |v: &[String]| -> io::Result<Vec<CString>> {
        v.iter()
            .map(|s| {
                CString::new(s.as_str())
                    .map_err(|_| context(io::Error::from_raw_os_error(libc::EINVAL), s))
            })
            .collect()
    };
    Ok(Ready {
        program: CString::new(program).map_err(io::Error::other)?,
        argv: cstrings(&spec.argv)?,
        env: cstrings(&env)?,
        user,
    })
}

fn mount_kernel_filesystems(root: &Root) -> io::Result<()> {
    let safe = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    let proc_dir = root.ensure("/proc", Target::Dir)?;
    mount_on(
        Some(Path::new("proc")),
        &proc_dir,
        Some("proc"),
        safe,
        None,
        "/proc",
    )?;
    let sys_dir = root.ensure("/sys", Target::Dir)?;
    let sysfs = mount_on(
        Some(Path::new("sysfs")),
        &sys_dir,
        Some("sysfs"),
        safe | MsFlags::MS_RDONLY,
        None,
        "/sys",
    );
    if sysfs.is_err() {
        // A fresh sysfs needs our own network namespace: with the host's,
        // show the host's, read-only.
        mount_on(
            Some(Path::new("/sys")),
            &sys_dir,
            None,
            MsFlags::MS_BIND | MsFlags::MS_REC,
            None,
            "/sys",
        )?;
        let bound = root.open_path("/sys")?;
        let ro = MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY | safe;
        mount_on(None, &bound, None, ro, None, "/sys")?;
    }
    Ok(())
}

/// A small /dev: a few host devices, a private pts instance, shm.
fn mount_dev(root: &Root) -> io::Result<()> {
    let dev_dir = root.ensure("/dev", Target::Dir)?;
    let flags = MsFlags::MS_NOSUID | MsFlags::MS_STRICTATIME;
    mount_on(
        Some(Path::new("tmpfs")),
        &dev_dir,
        Some("tmpfs"),
        flags,
        Some("mode=755,size=65536k"),
        "/dev",
    )?;
    for name in DEVICES {
        let target = root.ensure(&format!("/dev/{name}"), Target::File)?;
        let host = format!("/dev/{name}");
        mount_on(
            Some(Path::new(&host)),
            &target,
            None,
            MsFlags::MS_BIND,
            None,
            &host,
        )?;
    }
    let pts = root.ensure("/dev/pts", Target::Dir)?;
    mount_on(
        Some(Path::new("devpts")),
        &pts,
        Some("devpts"),
        MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
        Some("newinstance,ptmxmode=0666,mode=0620"),
        "/dev/pts",
    )?;
    let shm = root.ensure("/dev/shm", Target::Dir)?;
    let safe = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    mount_on(
        Some(Path::new("shm")),
        &shm,
        Some("tmpfs"),
        safe,
        Some("mode=1777,size=65536k"),
        "/dev/shm",
    )?;
    let dev = root.open_path("/dev")?;
    for (link, to) in [
        ("ptmx", "pts/ptmx"),
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
    ] {
        // The fresh tmpfs: nothing there yet to follow.
        let dir = nix::fcntl::open(
            &fd_path(&dev),
            nix::fcntl::OFlag::O_PATH | nix::fcntl::OFlag::O_DIRECTORY,
            nix::sys::stat::Mode::empty(),
        )?;
        nix::unistd::symlinkat(to, &dir, link).map_err(|e| context(e, &format!("/dev/{link}")))?;
    }
    Ok(())
}

/// `lo` up in a new network namespace, with the host's `ip` (the root is
/// not entered yet).
fn loopback_up() -> io::Result<()> {
    let status = std::process::Command::new("ip")
        .args(["link", "set", "lo", "up"])
        .status()
        .map_err(|e| context(e, "ip link set lo up"))?;
    if status.success() {
        Ok(())
    } else {
        Err(io::Error::other(format!("ip link set lo up: {status}")))
    }
}

/// Make `rootfs` the root and detach the old one.
fn pivot_into(rootfs: &Path) -> io::Result<()> {
    nix::unistd::chdir(rootfs).map_err(|e| context(e, "chdir to the root"))?;
    // The old root is stacked under the new one, then detached.
    nix::unistd::pivot_root(".", ".").map_err(|e| context(e, "pivot_root"))?;
    nix::mount::umount2(".", MntFlags::MNT_DETACH)
        .map_err(|e| context(e, "detaching the old root"))?;
    nix::unistd::chdir("/").map_err(|e| context(e, "chdir /"))?;
    Ok(())
}

fn enter_workdir(cwd: &str) -> io::Result<()> {
    if nix::unistd::chdir(cwd).is_ok() {
        return Ok(());
    }
    // As docker: a working directory the image lacks is made.
    std::fs::create_dir_all(cwd).map_err(|e| context(e, &format!("working directory {cwd}")))?;
    nix::unistd::chdir(cwd).map_err(|e| context(e, &format!("working directory {cwd}")))
}

fn with_home(env: &[String], home: &str) -> Vec<String> {
    env.iter()
        .map(|kv| {
            if kv == "HOME=" {
                format!("HOME={home}")
            } else {
                kv.clone()
            }
        })
        .collect()
}

/// The program as execve wants it: a path, searched in the container's
/// PATH when the name has no slash. Not found: exit 127, as shells do.
fn find_program(name: &str, env: &[String]) -> io::Result<String> {
    if name.contains('/') {
        return Ok(name.to_string());
    }
    let path = env
        .iter()
        .find_map(|kv| kv.strip_prefix("PATH="))
        .unwrap_or("/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin");
    for dir in path.split(':').filter(|d| !d.is_empty()) {
        let candidate = format!("{dir}/{name}");
        if let Ok(meta) = std::fs::metadata(&candidate)
            && meta.is_file()
        {
            return Ok(candidate);
        }
    }
    Err(io::Error::new(
        io::ErrorKind::NotFound,
        format!("{name}: executable file not found in $PATH"),
    ))
}

/// Drop to the container's identity and capabilities, then exec.
fn exec(spec: &RunSpec, ready: Ready) -> i32 {
    if let Err(e) = drop_privileges(&ready.user) {
        eprintln!("layerfs: run: {e}");
        return EXIT_RUNTIME_FAILED;
    }
    if !spec.interactive
        && !spec.tty
        && let Err(e) = stdin_from_null()
    {
        eprintln!("layerfs: run: {e}");
        return EXIT_RUNTIME_FAILED;
    }
    let _ = SigSet::all().thread_unblock();
    let err = nix::unistd::execve(&ready.program, &ready.argv, &ready.env).unwrap_err();
    eprintln!("layerfs: run: {}: {}", spec.argv[0], err.desc());
    match err {
        nix::errno::Errno::ENOENT => EXIT_NOT_FOUND,
        _ => 126,
    }
}

fn drop_privileges(user: &Identity) -> io::Result<()> {
    let keep: HashSet<Capability> = DEFAULT_CAPS.into_iter().collect();
    for cap in caps::all() {
        if !keep.contains(&cap) {
            caps::drop(None, CapSet::Bounding, cap)
                .map_err(|e| io::Error::other(format!("dropping {cap}: {e}")))?;
        }
    }
    nix::unistd::setgroups(&user.groups).map_err(|e| context(e, "setgroups"))?;
    nix::unistd::setgid(user.gid).map_err(|e| context(e, "setgid"))?;
    nix::unistd::setuid(user.uid).map_err(|e| context(e, "setuid"))?;
    if user.uid.is_root() {
        // Effective first: it must stay within the permitted set.
        for set in [CapSet::Effective, CapSet::Permitted, CapSet::Inheritable] {
            caps::set(None, set, &keep)
                .map_err(|e| io::Error::other(format!("capabilities: {e}")))?;
        }
    }
    let _ = caps::clear(None, CapSet::Ambient);
    nix::sys::prctl::set_no_new_privs().map_err(|e| context(e, "no_new_privs"))?;
    Ok(())
}

fn stdin_from_null() -> io::Result<()> {
    let null: OwnedFd = std::fs::File::open("/dev/null")?.into();
    nix::unistd::dup2_stdin(&null).map_err(|e| context(e, "stdin"))?;
    Ok(())
}
