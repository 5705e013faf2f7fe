//! How owners and modes are shown and stored for container engines: the id
//! mappings, `squash_to_*` and the `*.override_stat` xattrs of
//! fuse-overlayfs (`uidmapping=`, `gidmapping=`, `xattr_permissions=`).
//!
//! This is presentation, done once where attributes leave the daemon
//! ([`LayerFs::attr`](super::LayerFs)) and where owners and modes come in
//! (create, setattr): the union below keeps real on-disk metadata, so
//! copy-up, rename and whiteouts need not know about any of it.

use crate::layers::override_stat::{self, OverrideStat, OverrideXattr};
use crate::layers::{FileKind, Stat};
use crate::union::{INDEX_LAYER, LayerIdx, LayerStack, Resolved};

/// One `STORED:SHOWN:LEN` range of `uidmapping=`/`gidmapping=`: ids
/// `STORED..STORED+LEN` on disk are shown as `SHOWN..SHOWN+LEN`.
/// containers/storage passes `CONTAINER:HOST:LEN`, so files kept with
/// container ids are shown with host ids, which the container's user
/// namespace maps back to the container ids.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IdRange {
    pub stored: u32,
    pub shown: u32,
    pub len: u32,
}

/// The owner/mode presentation of one mount. The default changes nothing.
#[derive(Debug, Clone, Default)]
pub struct AttrView {
    pub uid_map: Vec<IdRange>,
    pub gid_map: Vec<IdRange>,
    pub squash_uid: Option<u32>,
    pub squash_gid: Option<u32>,
    /// Shown and stored for ids outside every range (the kernel's
    /// overflowuid/overflowgid, 65534 by default).
    pub overflow: (u32, u32),
    /// Directories always show one link (`static_nlink`).
    pub static_nlink: bool,
    /// Per layer (index = layer, top first): the override xattr it uses.
    pub overrides: Vec<Option<OverrideXattr>>,
    /// `xattr_permissions=1|2`: chmod/chown and new objects write the
    /// upper's override xattr instead of the inode.
    pub write_overrides: bool,
}

fn map_id(ranges: &[IdRange], id: u32, to_shown: bool, overflow: u32) -> u32 {
    if ranges.is_empty() {
        return id;
    }
    for r in ranges {
        let (from, to) = if to_shown {
            (r.stored, r.shown)
        } else {
            (r.shown, r.stored)
        };
        if id >= from && id - from < r.len {
            return to + (id - from);
        }
    }
    overflow
}

/// The kernel's overflow ids, which fuse-overlayfs also shows for
/// unmapped ids.
pub fn kernel_overflow_ids() -> (u32, u32) {
    let read = |p: &str| {
        std::fs::read_to_string(p)
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(65534)
    };
    (
        read("/proc/sys/kernel/overflowuid"),
        read("/proc/sys/kernel/overflowgid"),
    )
}

fn kind_bits(kind: FileKind) -> u32 {
    match kind {
        FileKind::Regular => libc::S_IFREG,
        FileKind::Dir => libc::S_IFDIR,
        FileKind::Symlink => libc::S_IFLNK,
        FileKind::Fifo => libc::S_IFIFO,
        FileKind::CharDev => libc::S_IFCHR,
        FileKind::BlockDev => libc::S_IFBLK,
        FileKind::Socket => libc::S_IFSOCK,
    }
}

impl AttrView {
    /// Whether anything is changed at all (fast path).
    pub fn is_identity(&self) -> bool {
        self.uid_map.is_empty()
            && self.gid_map.is_empty()
            && self.squash_uid.is_none()
            && self.squash_gid.is_none()
            && !self.static_nlink
            && !self.uses_overrides()
    }

    /// Whether any layer keeps owners in override xattrs (they are then
    /// hidden from the mount's xattr calls).
    pub fn uses_overrides(&self) -> bool {
        self.write_overrides || self.overrides.iter().any(Option::is_some)
    }

    fn override_of(&self, layer: LayerIdx) -> Option<OverrideXattr> {
        let idx = if layer == INDEX_LAYER { 0 } else { layer };
        self.overrides.get(idx as usize).copied().flatten()
    }

    /// The name the upper's overrides are written under.
    pub fn upper_override(&self) -> Option<OverrideXattr> {
        if self.write_overrides {
            self.override_of(0)
        } else {
            None
        }
    }

    /// What the mount shows for `obj` whose on-disk stat is `st`.
    pub fn shown(&self, stack: &LayerStack, obj: &Resolved, mut st: Stat) -> Stat {
        if let Some(name) = self.override_of(obj.layer) {
            let layer = stack.layer(obj.layer);
            if name.fits(obj.kind)
                && let Some(o) =
                    override_stat::read(layer, &obj.path, obj.kind == FileKind::Dir, name)
            {
                st.uid = o.uid;
                st.gid = o.gid;
                let mut kind_bits_now = st.mode & libc::S_IFMT;
                if let Some((kind, rdev)) = o.kind {
                    // A device kept as a plain file by rootless storage.
                    if matches!(kind, FileKind::CharDev | FileKind::BlockDev)
                        && obj.kind == FileKind::Regular
                    {
                        kind_bits_now = kind_bits(kind);
                        st.rdev = rdev;
                    }
                }
                st.mode = kind_bits_now | o.perm;
            }
        }
        st.uid = self
            .squash_uid
            .unwrap_or_else(|| map_id(&self.uid_map, st.uid, true, self.overflow.0));
        st.gid = self
            .squash_gid
            .unwrap_or_else(|| map_id(&self.gid_map, st.gid, true, self.overflow.1));
        st
    }

    /// The on-disk owner of what a caller with these (shown) ids creates
    /// or chowns to.
    pub fn stored_ids(&self, uid: u32, gid: u32) -> (u32, u32) {
        (
            map_id(&self.uid_map, uid, false, self.overflow.0),
            map_id(&self.gid_map, gid, false, self.overflow.1),
        )
    }

    /// Whether chown is answered without changing anything (`squash_to_*`:
    /// every owner is shown as the squashed one anyway).
    pub fn ignores_chown(&self) -> bool {
        self.squash_uid.is_some() || self.squash_gid.is_some()
    }

    /// The override value for an upper object.
    pub fn override_value(uid: u32, gid: u32, perm: u32, kind: FileKind, rdev: u64) -> String {
        OverrideStat {
            uid,
            gid,
            perm,
            kind: None,
        }
        .format(kind, rdev)
    }

    /// The override stored for an upper object, or what its inode says.
    pub fn stored_override(&self, stack: &LayerStack, obj: &Resolved) -> Option<OverrideStat> {
        let name = self.upper_override()?;
        let found = override_stat::read(
            stack.layer(obj.layer),
            &obj.path,
            obj.kind == FileKind::Dir,
            name,
        );
        Some(found.unwrap_or(OverrideStat {
            uid: obj.stat.uid,
            gid: obj.stat.gid,
            perm: obj.stat.mode & 0o7777,
            kind: None,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_map_both_ways_and_unmapped_overflow() {
        let ranges = [
            IdRange {
                stored: 0,
                shown: 100000,
                len: 65536,
            },
            IdRange {
                stored: 70000,
                shown: 5000,
                len: 10,
            },
        ];
        assert_eq!(map_id(&ranges, 0, true, 65534), 100000);
        assert_eq!(map_id(&ranges, 65535, true, 65534), 165535);
        assert_eq!(map_id(&ranges, 70003, true, 65534), 5003);
        assert_eq!(map_id(&ranges, 65536, true, 65534), 65534);
        assert_eq!(map_id(&ranges, 100001, false, 65534), 1);
        assert_eq!(map_id(&ranges, 5009, false, 65534), 70009);
        assert_eq!(map_id(&ranges, 99999, false, 65534), 65534);
        assert_eq!(map_id(&[], 42, true, 65534), 42);
        // No overflow arithmetic at the top of the id space.
        let top = [IdRange {
            stored: u32::MAX - 1,
            shown: 0,
            len: 2,
        }];
        assert_eq!(map_id(&top, u32::MAX, true, 7), 1);
    }

    #[test]
    fn squash_wins_and_identity_is_detected() {
        let v = AttrView::default();
        assert!(v.is_identity());
        let v = AttrView {
            squash_uid: Some(0),
            ..AttrView::default()
        };
        assert!(!v.is_identity());
        assert!(v.ignores_chown());
    }
}
