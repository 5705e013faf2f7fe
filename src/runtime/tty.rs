//! `-t`: a pseudo-terminal made inside the container (in its own devpts
//! instance), whose master end is sent to the monitor over a unix socket.
//! The monitor puts its own terminal in raw mode, copies bytes both ways
//! and passes window size changes on.

use std::io::{self, Read, Write};
use std::os::fd::{AsFd, OwnedFd, RawFd};
use std::path::Path;
use std::thread::JoinHandle;

use nix::fcntl::OFlag;
use nix::mount::MsFlags;
use nix::sys::socket::{AddressFamily, SockFlag, SockType, socketpair};
use nix::sys::stat::Mode;
use nix::sys::termios::{SetArg, Termios, cfmakeraw, tcgetattr, tcsetattr};

use crate::layers::{receive_fd, send_fd, set_window_size, take_inherited_fd, window_size};

/// The monitor's end and the container's end of the console socket.
pub fn console_socket() -> io::Result<(OwnedFd, OwnedFd)> {
    // The container's end must survive the exec into `layerfs __init`.
    let (mine, theirs) = socketpair(
        AddressFamily::Unix,
        SockType::Stream,
        None,
        SockFlag::empty(),
    )
    .map_err(io::Error::from)?;
    nix::fcntl::fcntl(
        &mine,
        nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC),
    )
    .map_err(io::Error::from)?;
    Ok((mine, theirs))
}

/// Inside the container, after pivot_root: a new pty from the container's
/// devpts, its master sent over `socket`, its slave the controlling
/// terminal and stdin/stdout/stderr, and bound over /dev/console.
pub fn attach_console(socket: RawFd) -> io::Result<()> {
    let socket = take_inherited_fd(socket).map_err(|e| context(e, "console socket"))?;
    let pty = nix::pty::openpty(None, None).map_err(|e| context(e, "openpty"))?;
    send_fd(socket.as_fd(), pty.master.as_fd()).map_err(|e| context(e, "sending the terminal"))?;
    drop(pty.master);
    drop(socket);
    nix::unistd::setsid().map_err(|e| context(e, "setsid"))?;
    let name = nix::unistd::ttyname(&pty.slave).map_err(|e| context(e, "ttyname"))?;
    // A session leader opening a terminal without O_NOCTTY takes it as its
    // controlling terminal.
    let tty = nix::fcntl::open(&name, OFlag::O_RDWR, Mode::empty())
        .map_err(|e| context(e, &name.display().to_string()))?;
    drop(pty.slave);
    nix::unistd::dup2_stdin(&tty).map_err(|e| context(e, "stdin"))?;
    nix::unistd::dup2_stdout(&tty).map_err(|e| context(e, "stdout"))?;
    nix::unistd::dup2_stderr(&tty).map_err(|e| context(e, "stderr"))?;
    nix::mount::mount(
        Some(&name),
        Path::new("/dev/console"),
        None::<&str>,
        MsFlags::MS_BIND,
        None::<&str>,
    )
    .map_err(|e| context(e, "/dev/console"))?;
    Ok(())
}

fn context(e: impl Into<io::Error>, what: &str) -> io::Error {
    let e = e.into();
    io::Error::new(e.kind(), format!("terminal: {what}: {e}"))
}

/// The monitor's side: the terminal it reads and writes, in raw mode
/// while the container runs.
pub struct Console {
    master: OwnedFd,
    saved: Option<Termios>,
    output: Option<JoinHandle<()>>,
}

impl Console {
    /// Wait for the container's master end; None if it ended first.
    pub fn receive(socket: OwnedFd, interactive: bool) -> io::Result<Option<Console>> {
        let Some(master) = receive_fd(socket.as_fd())? else {
            return Ok(None);
        };
        let stdin = io::stdin();
        let saved = tcgetattr(stdin.as_fd()).ok();
        if let Some(t) = &saved {
            let mut raw = t.clone();
            cfmakeraw(&mut raw);
            tcsetattr(stdin.as_fd(), SetArg::TCSANOW, &raw).map_err(io::Error::from)?;
        }
        let console = Console {
            master,
            saved,
            output: None,
        };
        console.resize();
        let mut console = console;
        let mut from = std::fs::File::from(console.master.try_clone()?);
        console.output = Some(std::thread::spawn(move || {
            // Ends with EIO once every process holding the slave is gone.
            let _ = io::copy(&mut from, &mut io::stdout().lock());
            let _ = io::stdout().flush();
        }));
        if interactive {
            let mut to = std::fs::File::from(console.master.try_clone()?);
            // Never joined: it may sit in a read of our stdin at exit.
            std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                while let Ok(n) = io::stdin().lock().read(&mut buf) {
                    if n == 0 || to.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            });
        }
        Ok(Some(console))
    }

    /// Our terminal's size, given to the container's.
    pub fn resize(&self) {
        if let Ok(ws) = window_size(io::stdin().as_fd()) {
            let _ = set_window_size(self.master.as_fd(), &ws);
        }
    }

    /// The container ended: wait for its last output, restore our terminal.
    pub fn finish(mut self) {
        if let Some(h) = self.output.take() {
            let _ = h.join();
        }
    }
}

impl Drop for Console {
    fn drop(&mut self) {
        if let Some(t) = &self.saved {
            let _ = tcsetattr(io::stdin().as_fd(), SetArg::TCSANOW, t);
        }
    }
}
