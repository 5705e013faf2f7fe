//! The container runtime: runs a command with a mounted union as its root
//! file system, in new mount, PID, UTS and IPC namespaces (and a network
//! namespace for `--net none`).
//!
//! Two processes: this one (the *monitor*, in the host's namespaces) and
//! the container's first process, started in the new namespaces as
//! `layerfs __init`, which prepares its root (proc, sys, dev, the files
//! under /etc, bind mounts), pivots into it, drops privileges and execs the
//! command, so the command itself is PID 1. The monitor forwards signals to
//! it and passes its exit status on. It knows nothing of images or of how
//! the root was mounted: `cli/` does that.

pub mod cgroup;
mod init;
pub mod initlayer;
mod rootfs;
mod spec;
mod tty;
mod user;

use std::ffi::CString;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;

use nix::sched::CloneFlags;
use nix::sys::signal::{SigSet, Signal, kill};
use nix::sys::signalfd::SignalFd;
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::{Pid, getpgid};

use crate::layers::spawn_in_namespaces;

pub use init::init_main;
pub use spec::{Bind, ImageDefaults, Network, Process, RunOptions, RunSpec};

/// The environment variable that carries the spec to `layerfs __init`.
const SPEC_ENV: &str = "LAYERFS_INIT_SPEC";

/// Exit status when the runtime itself failed (as docker run uses it).
pub const EXIT_RUNTIME_FAILED: i32 = 125;

/// Signals a user may send to `layerfs run`, passed on to the container.
const FORWARDED: [Signal; 6] = [
    Signal::SIGTERM,
    Signal::SIGINT,
    Signal::SIGHUP,
    Signal::SIGQUIT,
    Signal::SIGUSR1,
    Signal::SIGUSR2,
];

fn monitored_signals() -> SigSet {
    let mut set = SigSet::empty();
    for s in FORWARDED {
        set.add(s);
    }
    set.add(Signal::SIGCHLD);
    set
}

/// Run the container described by `spec` and wait for it. Returns its exit
/// status: its own code, or 128+N when signal N killed it.
pub fn run(spec: &RunSpec) -> io::Result<i32> {
    let mut spec = spec.clone();
    // Made first, so a refusal leaves nothing behind; removed on return.
    let cgroup = if spec.limits.is_empty() {
        None
    } else {
        let name = format!("run-{}", std::process::id());
        Some(cgroup::Cgroup::create(&spec.limits, &name).map_err(io::Error::other)?)
    };
    spec.cgroup = cgroup.as_ref().map(|c| c.path().to_path_buf());
    let console = if spec.tty {
        let (mine, theirs) = tty::console_socket()?;
        spec.console_socket = Some(theirs.as_raw_fd());
        Some((mine, theirs))
    } else {
        None
    };
    let json = serde_json::to_string(&spec).map_err(io::Error::other)?;
    let exe = CString::new("/proc/self/exe").map_err(io::Error::other)?;
    let argv = [
        CString::new("layerfs").map_err(io::Error::other)?,
        CString::new("__init").map_err(io::Error::other)?,
    ];
    let mut env: Vec<CString> = std::env::vars_os()
        .filter(|(k, _)| k != SPEC_ENV)
        .filter_map(|(k, v)| {
            let mut kv = k.as_bytes().to_vec();
            kv.push(b'=');
            kv.extend_from_slice(v.as_bytes());
            CString::new(kv).ok()
        })
        .collect();
    env.push(CString::new(format!("{SPEC_ENV}={json}")).map_err(io::Error::other)?);
    let mut flags = CloneFlags::CLONE_NEWNS
        | CloneFlags::CLONE_NEWPID
        | CloneFlags::CLONE_NEWUTS
        | CloneFlags::CLONE_NEWIPC;
    if spec.network == Network::None {
        flags |= CloneFlags::CLONE_NEWNET;
    }
    // Blocked before the child exists, so no signal is lost in between;
    // the child unblocks them before it execs the command.
    let mut signals = monitored_signals();
    if spec.tty {
        signals.add(Signal::SIGWINCH);
    }
    signals.thread_block().map_err(io::Error::from)?;
    let status = spawn_in_namespaces(&exe, &argv, &env, flags).and_then(|pid| {
        let terminal = match console {
            Some((mine, theirs)) => {
                drop(theirs);
                tty::Console::receive(mine, spec.interactive)?
            }
            None => None,
        };
        let status = monitor(pid, &signals, terminal.as_ref());
        if let Some(t) = terminal {
            t.finish();
        }
        status
    });
    let _ = signals.thread_unblock();
    drop(cgroup);
    status
}

/// Forward signals to `pid` until it ends; its exit status.
fn monitor(pid: Pid, signals: &SigSet, terminal: Option<&tty::Console>) -> io::Result<i32> {
    let incoming = SignalFd::new(signals).map_err(io::Error::from)?;
    // Without -t the container is in our process group, so what a terminal
    // sends that group (^C, ^\, a hangup) has reached it already: sent on
    // as well, a shell's trap would run twice.
    let shares_group = getpgid(Some(pid)).ok() == getpgid(None).ok();
    loop {
        let Some(info) = incoming.read_signal().map_err(io::Error::from)? else {
            continue;
        };
        let Ok(sig) = Signal::try_from(info.ssi_signo as i32) else {
            continue;
        };
        if sig == Signal::SIGWINCH {
            if let Some(t) = terminal {
                t.resize();
            }
            continue;
        }
        if sig != Signal::SIGCHLD {
            if shares_group && info.ssi_code == libc::SI_KERNEL {
                continue;
            }
            // The container may be gone already: nothing to forward to.
            let _ = kill(pid, sig);
            continue;
        }
        // Only our container: other children (a mount daemon) are not ours
        // to reap here.
        loop {
            match waitpid(pid, Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::Exited(_, code)) => return Ok(code),
                Ok(WaitStatus::Signaled(_, sig, _)) => return Ok(128 + sig as i32),
                Ok(WaitStatus::StillAlive) => break,
                Ok(_) => continue,
                Err(nix::errno::Errno::EINTR) => continue,
                Err(e) => return Err(io::Error::from(e)),
            }
        }
    }
}
