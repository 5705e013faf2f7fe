//! Mounting without privilege through fusermount3, the setuid helper of
//! fuse3, as libfuse does: it opens /dev/fuse (whatever its mode), mounts,
//! and hands the connection back over a socket (`_FUSE_COMMFD`).

use std::io::{self, Read};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::Path;
use std::process::{Command, Stdio};

use nix::sys::socket::{AddressFamily, SockFlag, SockType, socketpair};

use crate::layers::sys;

const HELPER: &str = "fusermount3";

/// Mount `mountpoint` with `options` (fusermount3's `-o` list) and return
/// the /dev/fuse connection. Its refusal is returned as its own words.
pub fn mount(mountpoint: &Path, options: &str) -> io::Result<OwnedFd> {
    let (ours, theirs) = socketpair(
        AddressFamily::Unix,
        SockType::Stream,
        None,
        SockFlag::SOCK_CLOEXEC,
    )
    .map_err(io::Error::from)?;
    // The helper's end must survive exec: a dup without CLOEXEC.
    let inherited = nix::unistd::dup(&theirs).map_err(io::Error::from)?;
    drop(theirs);
    let mut child = Command::new(HELPER)
        .arg("-o")
        .arg(options)
        .arg("--")
        .arg(mountpoint)
        .env("_FUSE_COMMFD", inherited.as_raw_fd().to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| io::Error::new(e.kind(), format!("{HELPER}: {e}")))?;
    drop(inherited);
    let received = receive_fd(&ours);
    let mut stderr = String::new();
    if let Some(mut s) = child.stderr.take() {
        let _ = s.read_to_string(&mut stderr);
    }
    let status = child.wait()?;
    match received {
        Ok(fd) if status.success() => Ok(fd),
        _ => {
            let said = stderr.trim().replace('\n', "; ");
            let hint = if said.contains("user_allow_other") {
                " (add user_allow_other to /etc/fuse.conf, or mount without allow_other)"
            } else if said.contains("/dev/fuse") {
                // fusermount3 opens the device with the caller's rights.
                " (this user must be able to open /dev/fuse: it is usually mode 0666)"
            } else {
                ""
            };
            Err(io::Error::other(if said.is_empty() {
                format!("{HELPER} failed ({status})")
            } else {
                format!("{said}{hint}")
            }))
        }
    }
}

fn receive_fd(sock: &OwnedFd) -> io::Result<OwnedFd> {
    sys::receive_fd(sock.as_fd())?.ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "fusermount3 sent no /dev/fuse descriptor",
        )
    })
}

/// Unmount what fusermount3 mounted (`-z`: lazily, if busy).
pub fn unmount(mountpoint: &Path, lazy: bool) -> io::Result<()> {
    let mut cmd = Command::new(HELPER);
    cmd.arg("-u").arg("-q");
    if lazy {
        cmd.arg("-z");
    }
    let out = cmd.arg("--").arg(mountpoint).output()?;
    if out.status.success() {
        Ok(())
    } else {
        Err(io::Error::other(format!(
            "{HELPER} -u: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )))
    }
}
