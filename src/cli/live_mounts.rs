//! Records of live mounts, so `layerfs which PATH` can tell the layers of
//! the mount PATH is on. The daemon writes `mounts/<pid>.json` in the
//! runtime dir once the mount is live and removes it when it ends; nothing
//! goes into the mount or its layers. A record whose pid is gone (a killed
//! daemon) is ignored, and removed by the next `which` that sees it.

use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::options::ValidatedMount;
use crate::image::containers::pid_alive;
use crate::layers::RelPath;

/// mounts/<pid>.json in the runtime dir.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LiveMount {
    pub pid: u32,
    pub mountpoint: PathBuf,
    /// The layers the mount shows, top first (the upper first).
    pub layers: Vec<PathBuf>,
    /// The writable layer, when the mount is writable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upper: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub work: Option<PathBuf>,
    /// For `mount --image`: the image id, its store and the container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub store: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container: Option<String>,
    #[serde(default)]
    pub created: String,
}

/// Removes the record when the daemon ends.
pub struct LiveRecordGuard {
    path: PathBuf,
}

impl Drop for LiveRecordGuard {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.path);
    }
}

/// `$LAYERFS_RUNTIME_DIR`, else /run/layerfs as root, else
/// `$XDG_RUNTIME_DIR/layerfs`, else `/tmp/layerfs-<uid>`.
pub fn runtime_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("LAYERFS_RUNTIME_DIR").filter(|d| !d.is_empty()) {
        return PathBuf::from(d);
    }
    let uid = nix::unistd::geteuid();
    if uid.is_root() {
        return PathBuf::from("/run/layerfs");
    }
    match std::env::var_os("XDG_RUNTIME_DIR").filter(|d| !d.is_empty()) {
        Some(d) => PathBuf::from(d).join("layerfs"),
        None => std::env::temp_dir().join(format!("layerfs-{uid}")),
    }
}

fn records_dir() -> PathBuf {
    runtime_dir().join("mounts")
}

/// A directory of ours: records in a directory someone else made (in a
/// shared /tmp) are neither written nor believed.
fn ours(dir: &Path) -> bool {
    fs::symlink_metadata(dir)
        .is_ok_and(|m| m.is_dir() && m.uid() == nix::unistd::geteuid().as_raw())
}

/// Record the live mount `v` of this process. A failure is logged, never
/// fatal: the mount works without it, only `which PATH` cannot find it.
pub fn record(
    v: &ValidatedMount,
    image: Option<&str>,
    store: Option<&Path>,
    container: Option<&str>,
) -> Option<LiveRecordGuard> {
    let pid = std::process::id();
    let mut layers: Vec<PathBuf> = v.upper.iter().cloned().collect();
    layers.extend(v.lowers.iter().cloned());
    let writable = !v.read_only && v.upper.is_some();
    let rec = LiveMount {
        pid,
        mountpoint: v.mountpoint.clone(),
        layers,
        upper: v.upper.clone().filter(|_| writable),
        work: v.work.clone().filter(|_| writable),
        image: image.map(str::to_string),
        store: store.map(Path::to_path_buf),
        container: container.map(str::to_string),
        created: crate::image::store::now_rfc3339(),
    };
    let dir = records_dir();
    let path = dir.join(format!("{pid}.json"));
    let tmp = dir.join(format!(".{pid}.tmp"));
    let res = (|| -> std::io::Result<()> {
        std::os::unix::fs::DirBuilderExt::mode(fs::DirBuilder::new().recursive(true), 0o700)
            .create(&dir)?;
        if !ours(&runtime_dir()) || !ours(&dir) {
            return Err(std::io::Error::other(
                "the directory belongs to another user",
            ));
        }
        // Only its owner writes records there (the daemon runs with umask
        // 0). The runtime dir itself may be a shared one given by
        // LAYERFS_RUNTIME_DIR: left as it is.
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o700))?;
        let json = serde_json::to_vec_pretty(&rec).map_err(std::io::Error::other)?;
        fs::write(&tmp, json)?;
        fs::set_permissions(&tmp, fs::Permissions::from_mode(0o644))?;
        fs::rename(&tmp, &path)
    })();
    match res {
        Ok(()) => Some(LiveRecordGuard { path }),
        Err(e) => {
            let _ = fs::remove_file(&tmp);
            tracing::warn!(path = %path.display(), error = %e, "cannot record the mount; `which` will not find it");
            None
        }
    }
}

/// `path` made absolute without following its last component (which may
/// be a symlink or missing); its parents are resolved.
fn absolute(path: &Path) -> Result<PathBuf, String> {
    let abs = if path.is_absolute() {
        path.to_path_buf()
    } else {
        std::env::current_dir()
            .map_err(|e| format!("which {}: current dir: {e}", path.display()))?
            .join(path)
    };
    let plain_last = matches!(abs.components().next_back(), Some(Component::Normal(_)));
    let resolved = match (plain_last, abs.parent(), abs.file_name()) {
        (true, Some(parent), Some(name)) => fs::canonicalize(parent).map(|p| p.join(name)),
        _ => fs::canonicalize(&abs),
    };
    resolved.map_err(|e| format!("which {}: {e}", path.display()))
}

/// The live mount `path` is on, and `path` inside it.
pub fn find(path: &Path) -> Result<(LiveMount, RelPath), String> {
    let abs = absolute(path)?;
    let dev = fs::symlink_metadata(&abs)
        .or_else(|_| fs::symlink_metadata(abs.parent().unwrap_or(Path::new("/"))))
        .map_err(|e| format!("which {}: {e}", path.display()))?
        .dev();
    let dir = records_dir();
    let mut best: Option<LiveMount> = None;
    let listed = if ours(&runtime_dir()) && ours(&dir) {
        fs::read_dir(&dir).ok()
    } else {
        None
    };
    for entry in listed.into_iter().flatten().flatten() {
        let p = entry.path();
        if p.extension().is_none_or(|e| e != "json") {
            continue;
        }
        let Some(rec) = fs::read(&p)
            .ok()
            .and_then(|b| serde_json::from_slice::<LiveMount>(&b).ok())
        else {
            continue;
        };
        if !pid_alive(rec.pid) {
            let _ = fs::remove_file(&p);
            continue;
        }
        let same_dev = fs::symlink_metadata(&rec.mountpoint).is_ok_and(|m| m.dev() == dev);
        if same_dev
            && abs.starts_with(&rec.mountpoint)
            && best
                .as_ref()
                .is_none_or(|b| rec.mountpoint.as_os_str().len() > b.mountpoint.as_os_str().len())
        {
            best = Some(rec);
        }
    }
    let rec = best.ok_or_else(|| {
        format!(
            "which {}: not on a live layerfs mount (no record in {} matches; give --layers or --image)",
            path.display(),
            dir.display()
        )
    })?;
    let rel = abs
        .strip_prefix(&rec.mountpoint)
        .ok()
        .and_then(|r| RelPath::from_bytes(r.as_os_str().as_bytes()))
        .ok_or_else(|| {
            format!(
                "which {}: not under {}",
                path.display(),
                rec.mountpoint.display()
            )
        })?;
    Ok((rec, rel))
}
