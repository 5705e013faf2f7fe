//! Mount guards: the kernel's overlayfs (the oracle) and a layerfs daemon.
//! Both unmount in `Drop`, so a panicking test leaves nothing mounted.

use std::ffi::{CString, OsStr, OsString};
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use tempfile::TempDir;

use super::sys;

/// Escapes one path for a `lowerdir=`/`upperdir=` option value: `\` -> `\\`,
/// `:` -> `\:`, `,` -> `\,`.
pub fn escape_opt_path(p: &Path) -> String {
    let s = p
        .to_str()
        .unwrap_or_else(|| panic!("option paths must be UTF-8: {}", p.display()));
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if matches!(c, '\\' | ':' | ',') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// `lowerdir=` value for layers given top first.
pub fn lowerdir_value(layers_top_first: &[PathBuf]) -> String {
    layers_top_first
        .iter()
        .map(|p| escape_opt_path(p))
        .collect::<Vec<_>>()
        .join(":")
}

/// The fstype of the topmost mount at exactly `mnt` (from this process's
/// mountinfo), or None when nothing is mounted there.
pub fn mount_fstype(mnt: &Path) -> Option<String> {
    let mounts = layerfs::cli::options::mount_points().expect("reading /proc/self/mountinfo");
    mounts
        .into_iter()
        .rev()
        .find(|(mp, _)| mp == mnt)
        .map(|(_, fstype)| fstype)
}

/// True when anything is mounted at `mnt`.
pub fn is_mounted(mnt: &Path) -> bool {
    mount_fstype(mnt).is_some()
}

fn umount2(mnt: &Path, flags: libc::c_int) -> std::io::Result<()> {
    let c = sys::cpath(mnt);
    // SAFETY: valid path.
    let rc = unsafe { libc::umount2(c.as_ptr(), flags) };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Last lines the kernel logged about overlayfs (for mount failure messages).
fn kernel_log_tail() -> String {
    let out = Command::new("dmesg").output();
    match out {
        Ok(o) => {
            let text = String::from_utf8_lossy(&o.stdout);
            let lines: Vec<&str> = text.lines().filter(|l| l.contains("overlay")).collect();
            lines[lines.len().saturating_sub(3)..].join("\n")
        }
        Err(e) => format!("(dmesg unavailable: {e})"),
    }
}

/// A fresh temp dir holding an empty `mnt` directory, with canonical paths
/// (mountinfo shows canonical paths).
fn mount_dir(prefix: &str) -> (TempDir, PathBuf) {
    let dir = tempfile::Builder::new()
        .prefix(prefix)
        .tempdir()
        .expect("creating a temp dir");
    let mnt = dir.path().join("mnt");
    fs::create_dir(&mnt).expect("creating the mount point");
    let mnt = mnt.canonicalize().expect("canonicalizing the mount point");
    (dir, mnt)
}

/// Unmounts whatever is at `mnt`, trying gentler ways first. Returns true
/// when nothing is left mounted there.
fn unmount_all(mnt: &Path, fuse: bool) -> bool {
    for attempt in 0..50 {
        if !is_mounted(mnt) {
            return true;
        }
        if umount2(mnt, 0).is_ok() {
            continue;
        }
        if fuse && attempt == 0 {
            let _ = Command::new("fusermount3")
                .arg("-u")
                .arg("-q")
                .arg(mnt)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
            continue;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    while is_mounted(mnt) {
        if umount2(mnt, libc::MNT_DETACH).is_err() {
            break;
        }
    }
    !is_mounted(mnt)
}

/// Removes the temp dir only if nothing is mounted in it: deleting through a
/// live mount would modify the layers.
fn release_dir(dir: Option<TempDir>, clean: bool, mnt: &Path) {
    if let Some(dir) = dir {
        if clean {
            drop(dir);
        } else {
            let kept = dir.keep();
            eprintln!(
                "warning: {} is still mounted; leaving {} in place",
                mnt.display(),
                kept.display()
            );
        }
    }
}

/// A read-only (unless `upperdir=` is given) kernel overlayfs mount.
pub struct KernelOverlay {
    mnt: PathBuf,
    dir: Option<TempDir>,
}

impl KernelOverlay {
    /// Mounts `layers_top_first` with `mount -t overlay`; `extra_opts` is
    /// appended to the option string (e.g. "userxattr"). Panics with the
    /// kernel's complaint on failure.
    pub fn mount(layers_top_first: &[PathBuf], extra_opts: &str) -> KernelOverlay {
        Self::try_mount(layers_top_first, extra_opts).unwrap_or_else(|e| panic!("{e}"))
    }

    pub fn try_mount(
        layers_top_first: &[PathBuf],
        extra_opts: &str,
    ) -> Result<KernelOverlay, String> {
        assert!(
            !layers_top_first.is_empty(),
            "KernelOverlay::mount needs at least one layer"
        );
        let (dir, mnt) = mount_dir("kovl-");
        let mut layers = layers_top_first.to_vec();
        let has_upper = extra_opts.split(',').any(|o| o.starts_with("upperdir="));
        if layers.len() == 1 && !has_upper {
            // The kernel wants two lowers when there is no upper; an empty
            // bottom layer changes nothing visible.
            let empty = dir.path().join("empty-bottom");
            fs::create_dir(&empty).expect("creating the empty bottom layer");
            layers.push(empty);
        }
        let mut data = format!("lowerdir={}", lowerdir_value(&layers));
        if !extra_opts.is_empty() {
            data.push(',');
            data.push_str(extra_opts);
        }
        let flags = if has_upper { 0 } else { libc::MS_RDONLY };
        let (src, fstype) = (c"overlay", c"overlay");
        let target = sys::cpath(&mnt);
        let cdata = CString::new(data.clone()).expect("options without NUL");
        // SAFETY: valid NUL-terminated strings.
        let rc = unsafe {
            libc::mount(
                src.as_ptr(),
                target.as_ptr(),
                fstype.as_ptr(),
                flags,
                cdata.as_ptr().cast(),
            )
        };
        if rc != 0 {
            let err = std::io::Error::last_os_error();
            return Err(format!(
                "mount -t overlay -o {data} {}: {err}\nkernel log:\n{}",
                mnt.display(),
                kernel_log_tail()
            ));
        }
        Ok(KernelOverlay {
            mnt,
            dir: Some(dir),
        })
    }

    pub fn path(&self) -> &Path {
        &self.mnt
    }
}

impl Drop for KernelOverlay {
    fn drop(&mut self) {
        let clean = unmount_all(&self.mnt, false);
        release_dir(self.dir.take(), clean, &self.mnt);
    }
}

/// What a layerfs daemon left behind once unmounted.
#[derive(Debug)]
pub struct DaemonExit {
    /// None when it had to be killed.
    pub status: Option<ExitStatus>,
    /// Its stdout and stderr.
    pub log: String,
}

impl DaemonExit {
    /// The daemon ended by itself with status 0.
    pub fn assert_clean(&self) {
        assert!(
            self.status.is_some_and(|s| s.success()),
            "the daemon ended with {:?}:\n{}",
            self.status,
            self.log
        );
    }
}

/// A `layerfs mount --foreground` child process and its mount.
pub struct LayerfsMount {
    mnt: PathBuf,
    child: Option<Child>,
    log_path: PathBuf,
    dir: Option<TempDir>,
}

/// The layerfs binary under test.
pub fn layerfs_bin() -> &'static str {
    env!("CARGO_BIN_EXE_layerfs")
}

impl LayerfsMount {
    /// `layerfs mount --foreground -o lowerdir=TOP:...:BOTTOM[,extra] MNT`.
    pub fn mount(layers_top_first: &[PathBuf], extra_opts: &str) -> LayerfsMount {
        let mut o = format!("lowerdir={}", lowerdir_value(layers_top_first));
        if !extra_opts.is_empty() {
            o.push(',');
            o.push_str(extra_opts);
        }
        Self::mount_args(["-o", o.as_str()])
    }

    /// `layerfs mount --foreground --lower TOP ... --lower BOTTOM MNT`.
    pub fn mount_lowers(layers_top_first: &[PathBuf]) -> LayerfsMount {
        let mut args: Vec<OsString> = Vec::new();
        for l in layers_top_first {
            args.push("--lower".into());
            args.push(l.clone().into_os_string());
        }
        Self::mount_args(args)
    }

    /// `layerfs mount --foreground ARGS... MNT` with any raw arguments.
    /// Panics with the daemon's output if it does not come up.
    pub fn mount_args<I, S>(args: I) -> LayerfsMount
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        Self::try_mount_args(args).unwrap_or_else(|e| panic!("{e}"))
    }

    /// As [`Self::mount_args`], but returns the failure (with the daemon's
    /// output) instead of panicking.
    pub fn try_mount_args<I, S>(args: I) -> Result<LayerfsMount, String>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        Self::try_mount_args_env(args, &[])
    }

    /// As [`Self::try_mount_args`], with these environment variables set
    /// for the daemon.
    pub fn try_mount_args_env<I, S>(args: I, env: &[(&str, &str)]) -> Result<LayerfsMount, String>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let (dir, mnt) = mount_dir("layerfs-");
        let log_path = dir.path().join("daemon.log");
        let log = fs::File::create(&log_path).expect("creating the daemon log");
        let mut cmd = Command::new(layerfs_bin());
        cmd.arg("mount").arg("--foreground").args(args).arg(&mnt);
        let shown = format!("{cmd:?}");
        cmd.stdin(Stdio::null())
            .stdout(log.try_clone().expect("dup log fd"))
            .stderr(log)
            .env("RUST_BACKTRACE", "1")
            .envs(env.iter().copied());
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("spawning {shown}: {e}"));
        let mut m = LayerfsMount {
            mnt,
            child: Some(child),
            log_path,
            dir: Some(dir),
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let child = m.child.as_mut().expect("child present while mounting");
            if let Some(status) = child.try_wait().expect("waitpid on layerfs") {
                m.child = None;
                return Err(format!(
                    "{shown} exited with {status} before the mount was live; its output:\n{}",
                    m.log()
                ));
            }
            if mount_fstype(&m.mnt).as_deref() == Some("fuse.layerfs")
                && stat_within(&m.mnt, Duration::from_secs(2))
            {
                return Ok(m);
            }
            if Instant::now() > deadline {
                let fstype = mount_fstype(&m.mnt);
                return Err(format!(
                    "{shown}: mount not live after 10 s (mountinfo fstype at MNT: {fstype:?}); its output:\n{}",
                    m.log()
                ));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Abort the mount's FUSE connection, as `umount -f` does (the
    /// kernel's fuse umount_begin): every pending and later call fails
    /// with ENOTCONN. Only while it is still mounted at its own mount point
    /// (a detached connection cannot be told from another one). False if
    /// there was nothing to abort.
    pub fn abort_connection(&self) -> bool {
        if mount_fstype(&self.mnt).as_deref() != Some("fuse.layerfs") {
            return false;
        }
        // EBUSY when calls are pending: the connection is aborted anyway.
        match umount2(&self.mnt, libc::MNT_FORCE) {
            Ok(()) => true,
            Err(e) => e.raw_os_error() == Some(libc::EBUSY),
        }
    }

    pub fn path(&self) -> &Path {
        &self.mnt
    }

    /// The daemon's pid (None once it exited).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// The daemon's stdout+stderr so far.
    pub fn log(&self) -> String {
        fs::read(&self.log_path)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_else(|e| format!("(no log: {e})"))
    }

    /// Unmounts now and reports how the daemon ended.
    pub fn unmount(mut self) -> DaemonExit {
        let status = self.shutdown();
        DaemonExit {
            status,
            log: self.log(),
        }
    }

    /// Unmount, then reap the child (killing it after 5 s). Idempotent.
    fn shutdown(&mut self) -> Option<ExitStatus> {
        let clean = unmount_all(&self.mnt, true);
        let mut status = None;
        if let Some(mut child) = self.child.take() {
            status = wait_within(&mut child, Duration::from_secs(5));
            if status.is_none() {
                // Kills exactly our child, by pid. A killed daemon with a
                // thread stuck in the kernel exits only once its connection
                // is aborted.
                let _ = child.kill();
                if wait_within(&mut child, Duration::from_secs(3)).is_none() {
                    self.abort_connection();
                    if wait_within(&mut child, Duration::from_secs(10)).is_none() {
                        eprintln!(
                            "warning: layerfs daemon {} for {} does not exit even killed",
                            child.id(),
                            self.mnt.display()
                        );
                    }
                }
            }
        }
        // A killed daemon can leave a dead ("transport endpoint not
        // connected") mount behind; take it down too.
        if !clean {
            unmount_all(&self.mnt, true);
        }
        status
    }
}

/// `child`'s exit status if it exits (and is reaped) within `limit`.
pub fn wait_within(child: &mut Child, limit: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + limit;
    loop {
        match child.try_wait() {
            Ok(Some(s)) => return Some(s),
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(10)),
            _ => return None,
        }
    }
}

impl Drop for LayerfsMount {
    fn drop(&mut self) {
        self.shutdown();
        // LAYERFS_TEST_LOG=1 (with RUST_LOG for the level) shows what each
        // daemon logged, which is otherwise lost with its temp dir.
        if std::env::var_os("LAYERFS_TEST_LOG").is_some() {
            eprintln!(
                "---- layerfs daemon log ({}) ----\n{}",
                self.mnt.display(),
                self.log()
            );
        }
        let clean = !is_mounted(&self.mnt);
        release_dir(self.dir.take(), clean, &self.mnt);
    }
}

/// `stat(path)` in a helper thread so a daemon that never answers cannot
/// hang the test: true when it succeeded within `limit`.
fn stat_within(path: &Path, limit: Duration) -> bool {
    let (tx, rx) = mpsc::channel();
    let p = path.to_path_buf();
    std::thread::spawn(move || {
        let _ = tx.send(fs::metadata(&p).is_ok());
    });
    rx.recv_timeout(limit).unwrap_or(false)
}
