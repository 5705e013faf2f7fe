//! Detaching the daemon: `layerfs mount` returns only once the mount is
//! live, and reports any failure of the daemon's start as its own.

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::OwnedFd;
use std::path::Path;
use std::time::{Duration, Instant};

use nix::unistd::{ForkResult, fork, pipe, setsid};

/// The message the daemon sends once it has mounted.
const READY: &[u8] = b"ready\n";

/// The child end: tell the waiting parent how the start went.
pub struct Readiness {
    pipe: Option<File>,
}

impl Readiness {
    /// For `--foreground`: nobody is waiting.
    pub fn none() -> Readiness {
        Readiness { pipe: None }
    }

    pub fn ready(&mut self) {
        if let Some(mut p) = self.pipe.take() {
            let _ = p.write_all(READY);
        }
    }

    pub fn failed(&mut self, message: &str) {
        if let Some(mut p) = self.pipe.take() {
            let _ = p.write_all(message.as_bytes());
        }
    }
}

/// Which side of the fork we are on.
pub enum Role {
    /// The daemon, which must report how its start went.
    Daemon(Readiness),
    /// The caller's process, done: exit with this status.
    Parent(i32),
}

/// Fork. The parent waits for the daemon's word and for the mount to
/// answer. Must be called before any thread is spawned.
pub fn detach(mountpoint: &Path) -> Role {
    let (read_end, write_end) = match pipe() {
        Ok(p) => p,
        Err(e) => {
            eprintln!("layerfs: cannot create a pipe: {e}");
            return Role::Parent(1);
        }
    };
    // SAFETY: no other thread exists yet (see above), so the child may do
    // anything the parent could.
    match unsafe { fork() } {
        Err(e) => {
            eprintln!("layerfs: cannot fork the daemon: {e}");
            Role::Parent(1)
        }
        Ok(ForkResult::Child) => {
            drop(read_end);
            // Leave the caller's session, so its terminal and its signals
            // do not reach the daemon.
            let _ = setsid();
            Role::Daemon(Readiness {
                pipe: Some(File::from(write_end)),
            })
        }
        Ok(ForkResult::Parent { .. }) => {
            drop(write_end);
            Role::Parent(wait_for_daemon(read_end, mountpoint))
        }
    }
}

fn wait_for_daemon(read_end: OwnedFd, mountpoint: &Path) -> i32 {
    let mut msg = Vec::new();
    let _ = File::from(read_end).read_to_end(&mut msg);
    if msg != READY {
        let text = String::from_utf8_lossy(&msg);
        let text = text.trim();
        if text.is_empty() {
            eprintln!(
                "layerfs: mount {}: the daemon exited before the mount was live",
                mountpoint.display()
            );
        } else {
            eprintln!("layerfs: {text}");
        }
        return 1;
    }
    // The kernel has finished the handshake; a stat goes through the
    // daemon, so once it answers the mount is serving.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let live = super::is_layerfs_mount(mountpoint) && std::fs::metadata(mountpoint).is_ok();
        if live {
            return 0;
        }
        if Instant::now() > deadline {
            eprintln!(
                "layerfs: mount {}: the mount did not answer within 30 s",
                mountpoint.display()
            );
            return 1;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Point stdin/stdout/stderr at /dev/null (or stderr at the log file), so
/// the daemon holds no pipe of whoever started it.
pub fn redirect_stdio(log_file: Option<&Path>) -> std::io::Result<()> {
    let null = File::options().read(true).write(true).open("/dev/null")?;
    let err_target = match log_file {
        Some(p) => File::options().create(true).append(true).open(p)?,
        None => null.try_clone()?,
    };
    nix::unistd::dup2_stdin(&null)?;
    nix::unistd::dup2_stdout(&null)?;
    nix::unistd::dup2_stderr(&err_target)?;
    Ok(())
}
