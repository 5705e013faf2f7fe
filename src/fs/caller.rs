//! Who made a request, as far as the setuid and setgid bits go. With
//! FUSE_HANDLE_KILLPRIV_V2 the kernel leaves clearing them on a truncate
//! to the filesystem, and says only that the caller lacks CAP_FSETID, in
//! a flag fuser does not pass on: the daemon reads the caller's
//! capabilities and groups from /proc itself.

use std::fs;

use fuser::Request;

/// CAP_FSETID, linux/capability.h.
const CAP_FSETID: u32 = 4;

#[derive(Debug, Default)]
pub(super) struct Caller {
    fsetid: bool,
    fsgid: u32,
    groups: Vec<u32>,
}

impl Caller {
    /// The caller of `req`. A process gone meanwhile counts as having no
    /// capability and no group: the bits are cleared, the safe side.
    pub(super) fn of(req: &Request) -> Caller {
        let status = fs::read_to_string(format!("/proc/{}/status", req.pid())).unwrap_or_default();
        parse_status(&status)
    }

    /// The mode a file keeps after this caller writes or truncates it, as
    /// the kernel's setattr_should_drop_suidgid decides: setuid goes;
    /// setgid goes where group members may execute, or the caller is not
    /// in the file's group; all this only for callers without CAP_FSETID.
    pub(super) fn mode_after_write(&self, mode: u32, file_gid: u32) -> u32 {
        if self.fsetid || mode & libc::S_IFMT != libc::S_IFREG {
            return mode;
        }
        let in_group = self.fsgid == file_gid || self.groups.contains(&file_gid);
        let mut kept = mode & !libc::S_ISUID;
        if mode & libc::S_ISGID != 0 && (mode & libc::S_IXGRP != 0 || !in_group) {
            kept &= !libc::S_ISGID;
        }
        kept
    }
}

fn parse_status(status: &str) -> Caller {
    let mut caller = Caller::default();
    for line in status.lines() {
        let Some((key, value)) = line.split_once(':') else {
            continue;
        };
        let fields = value.split_whitespace();
        match key {
            "CapEff" => {
                let caps = fields
                    .last()
                    .and_then(|h| u64::from_str_radix(h, 16).ok())
                    .unwrap_or(0);
                caller.fsetid = caps & (1 << CAP_FSETID) != 0;
            }
            // Real, effective, saved, filesystem.
            "Gid" => caller.fsgid = fields.last().and_then(|g| g.parse().ok()).unwrap_or(0),
            "Groups" => caller.groups = fields.filter_map(|g| g.parse().ok()).collect(),
            _ => {}
        }
    }
    caller
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOBODY: &str = "Name:\tsh\nUid:\t65534\t65534\t65534\t65534\n\
        Gid:\t65534\t65534\t65534\t65534\nGroups:\t100 \nCapEff:\t0000000000000000\n";
    const ROOT: &str = "Gid:\t0\t0\t0\t0\nGroups:\t0 \nCapEff:\t000001ffffffffff\n";

    #[test]
    fn setuid_and_setgid_as_the_kernel_clears_them() {
        let nobody = parse_status(NOBODY);
        let root = parse_status(ROOT);
        let reg = libc::S_IFREG;
        assert_eq!(nobody.mode_after_write(reg | 0o4755, 0), reg | 0o755);
        // setgid without group execute: cleared unless in the group.
        assert_eq!(nobody.mode_after_write(reg | 0o2644, 0), reg | 0o644);
        assert_eq!(nobody.mode_after_write(reg | 0o2644, 100), reg | 0o2644);
        assert_eq!(nobody.mode_after_write(reg | 0o2654, 100), reg | 0o654);
        assert_eq!(root.mode_after_write(reg | 0o6755, 100), reg | 0o6755);
        // Only regular files.
        let dir = libc::S_IFDIR | 0o2755;
        assert_eq!(nobody.mode_after_write(dir, 0), dir);
        // Unknown process: no capability.
        assert_eq!(
            parse_status("").mode_after_write(reg | 0o4755, 0),
            reg | 0o755
        );
    }
}
