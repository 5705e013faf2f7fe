//! What the upper's filesystem lets this process write, asked once before
//! mounting: rootless (or user-namespaced) daemons cannot set `trusted.*`
//! xattrs, and where mknod is refused overlay whiteouts cannot be made.

use std::ffi::CString;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

/// What an upper can hold, as found by trying it in its work dir.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UpperAbilities {
    /// `trusted.overlay.*` markers can be set (needs CAP_SYS_ADMIN in the
    /// initial user namespace).
    pub trusted_xattrs: bool,
    /// A 0/0 character device (an overlay whiteout) can be made.
    pub whiteout_devices: bool,
}

/// Tries both in a fresh entry of `work_dir`, removed afterwards.
pub fn probe_upper(work_dir: &Path) -> io::Result<UpperAbilities> {
    let name = format!(".layerfs-probe-{}", std::process::id());
    let file = work_dir.join(&name);
    std::fs::File::create(&file)?;
    let path = CString::new(file.as_os_str().as_bytes())
        .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    let trusted_xattrs = super::sys::set_xattr(
        super::sys::XattrTarget::Path(&path),
        c"trusted.overlay.probe",
        b"y",
    )
    .is_ok();
    std::fs::remove_file(&file)?;
    let dev = work_dir.join(format!("{name}-wh"));
    let made = nix::sys::stat::mknod(
        &dev,
        nix::sys::stat::SFlag::S_IFCHR,
        nix::sys::stat::Mode::empty(),
        0,
    );
    let whiteout_devices = made.is_ok();
    if whiteout_devices {
        std::fs::remove_file(&dev)?;
    }
    Ok(UpperAbilities {
        trusted_xattrs,
        whiteout_devices,
    })
}
