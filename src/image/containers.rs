//! Containers (a named writable layer over an image, kept in the store)
//! and the records of live mounts, so an image or container in use is
//! never removed.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::digest::Digest;
use super::store::{Store, StoreLock, now_rfc3339, remove_dir_tree};
use super::{ImageError, Result};

/// containers/<name>/container.json
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ContainerRecord {
    pub name: String,
    /// The image id the container's layer sits on.
    pub image: Digest,
    #[serde(default)]
    pub created: String,
}

/// A container and where its writable layer lives.
#[derive(Debug, Clone)]
pub struct Container {
    pub record: ContainerRecord,
    pub dir: PathBuf,
    /// The overlay-format upper directory.
    pub upper: PathBuf,
    pub work: PathBuf,
}

/// mounts/<pid>.json: a mount made from the store.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct MountRecord {
    pub pid: u32,
    pub mountpoint: PathBuf,
    pub image: Digest,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container: Option<String>,
    #[serde(default)]
    pub created: String,
}

/// Removes its mount record when the mount ends.
#[derive(Debug)]
pub struct MountRecordGuard {
    path: PathBuf,
}

impl Drop for MountRecordGuard {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.path);
    }
}

/// Container names: a letter or digit, then letters, digits, `_.-`.
pub fn valid_container_name(name: &str) -> bool {
    let mut chars = name.chars();
    name.len() <= 128
        && chars.next().is_some_and(|c| c.is_ascii_alphanumeric())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
}

/// Whether process `pid` exists (a record's owner is gone when not).
pub fn pid_alive(pid: u32) -> bool {
    let Ok(raw) = i32::try_from(pid) else {
        return false;
    };
    match nix::sys::signal::kill(nix::unistd::Pid::from_raw(raw), None) {
        Ok(()) | Err(nix::errno::Errno::EPERM) => true,
        Err(_) => false,
    }
}

impl Store {
    fn container_dir(&self, name: &str) -> PathBuf {
        self.root().join("containers").join(name)
    }

    fn load_container(&self, name: &str) -> Result<Option<Container>> {
        if !valid_container_name(name) {
            return Err(ImageError::new(format!("invalid container name {name:?}")));
        }
        let dir = self.container_dir(name);
        let path = dir.join("container.json");
        let bytes = match fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(ImageError::io("read", &path, e)),
        };
        let record: ContainerRecord = serde_json::from_slice(&bytes)
            .map_err(|e| ImageError::new(format!("{}: {e}", path.display())))?;
        Ok(Some(Container {
            record,
            upper: dir.join("upper"),
            work: dir.join("work"),
            dir,
        }))
    }

    /// The container called `name`, if there is one.
    pub fn container(&self, name: &str) -> Result<Option<Container>> {
        self.load_container(name)
    }

    /// Every container, by name.
    pub fn container_records(&self) -> Result<Vec<ContainerRecord>> {
        let dir = self.root().join("containers");
        let mut out = Vec::new();
        let rd = fs::read_dir(&dir).map_err(|e| ImageError::io("read", &dir, e))?;
        for entry in rd.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if let Ok(Some(c)) = self.load_container(&name) {
                out.push(c.record);
            }
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    /// The container `name` on `image`: created (empty upper and work) on
    /// first use, reused after. Reusing it over another image is an error.
    pub fn create_container(
        &self,
        lock: &StoreLock,
        name: &str,
        image: &Digest,
    ) -> Result<Container> {
        self.require_exclusive(lock)?;
        if let Some(c) = self.load_container(name)? {
            if &c.record.image != image {
                return Err(ImageError::new(format!(
                    "container {name}: made from image {}, not {image}",
                    c.record.image
                )));
            }
            return Ok(c);
        }
        // Built in tmp/ and renamed, so a half-made container never shows.
        let tmp = self
            .tmp_dir()
            .join(format!("container-{name}-{}", std::process::id()));
        let record = ContainerRecord {
            name: name.to_string(),
            image: image.clone(),
            created: now_rfc3339(),
        };
        let res = (|| -> io::Result<()> {
            fs::create_dir(&tmp)?;
            fs::create_dir(tmp.join("upper"))?;
            fs::create_dir(tmp.join("work"))?;
            let json = serde_json::to_vec_pretty(&record).unwrap_or_default();
            fs::write(tmp.join("container.json"), json)?;
            fs::rename(&tmp, self.container_dir(name))
        })();
        if let Err(e) = res {
            let _ = remove_dir_tree(&tmp);
            return Err(ImageError::io(
                "create container",
                &self.container_dir(name),
                e,
            ));
        }
        self.load_container(name)?
            .ok_or_else(|| ImageError::new(format!("container {name}: vanished after creation")))
    }

    /// An error naming the mount if the container `name` is mounted.
    pub fn require_unmounted(&self, name: &str) -> Result<()> {
        match self
            .live_mounts()?
            .into_iter()
            .find(|m| m.container.as_deref() == Some(name))
        {
            Some(m) => Err(ImageError::new(format!(
                "container {name}: mounted at {} (pid {}); unmount it first",
                m.mountpoint.display(),
                m.pid
            ))),
            None => Ok(()),
        }
    }

    /// Remove a container and its writable layer; refused while mounted.
    pub fn remove_container(&self, lock: &StoreLock, name: &str) -> Result<ContainerRecord> {
        self.require_exclusive(lock)?;
        let c = self
            .load_container(name)?
            .ok_or_else(|| ImageError::new(format!("container {name}: not found")))?;
        self.require_unmounted(name)?;
        let doomed = self
            .tmp_dir()
            .join(format!("rm-container-{name}-{}", std::process::id()));
        fs::rename(&c.dir, &doomed).map_err(|e| ImageError::io("remove", &c.dir, e))?;
        remove_dir_tree(&doomed).map_err(|e| ImageError::io("remove", &c.dir, e))?;
        Ok(c.record)
    }

    fn mount_records(&self) -> Vec<(PathBuf, MountRecord)> {
        let dir = self.root().join("mounts");
        let Ok(rd) = fs::read_dir(&dir) else {
            return Vec::new();
        };
        rd.flatten()
            .filter(|e| e.file_name().to_string_lossy().ends_with(".json"))
            .filter_map(|e| {
                let bytes = fs::read(e.path()).ok()?;
                let rec = serde_json::from_slice(&bytes).ok()?;
                Some((e.path(), rec))
            })
            .collect()
    }

    fn is_live(&self, m: &MountRecord) -> bool {
        pid_alive(m.pid) && self.mount_check.is_none_or(|check| check(&m.mountpoint))
    }

    /// The mounts made from this store that are still live: the daemon's
    /// pid runs and (when the store knows how to tell) the mount point is
    /// a layerfs mount.
    pub fn live_mounts(&self) -> Result<Vec<MountRecord>> {
        Ok(self
            .mount_records()
            .into_iter()
            .map(|(_, m)| m)
            .filter(|m| self.is_live(m))
            .collect())
    }

    /// Drop the records of mounts that are gone (under the exclusive lock).
    pub(super) fn forget_dead_mounts(&self, _lock: &StoreLock) {
        for (path, m) in self.mount_records() {
            if !self.is_live(&m) {
                let _ = fs::remove_file(path);
            }
        }
    }

    /// Record a live mount of this process; the record goes when the guard
    /// is dropped. Call with the store locked (shared is enough: each
    /// process writes only its own record).
    pub fn record_mount(
        &self,
        _lock: &StoreLock,
        mountpoint: &Path,
        image: &Digest,
        container: Option<&str>,
    ) -> Result<MountRecordGuard> {
        let pid = std::process::id();
        let record = MountRecord {
            pid,
            mountpoint: mountpoint.to_path_buf(),
            image: image.clone(),
            container: container.map(str::to_string),
            created: now_rfc3339(),
        };
        let path = self.root().join("mounts").join(format!("{pid}.json"));
        let json = serde_json::to_vec_pretty(&record).unwrap_or_default();
        // Written beside its final name: tmp/ is emptied under the
        // exclusive lock, which a shared holder does not have.
        let tmp = self.root().join("mounts").join(format!(".{pid}.tmp"));
        write_atomic_in(&tmp, &path, &json)?;
        Ok(MountRecordGuard { path })
    }
}

fn write_atomic_in(tmp: &Path, path: &Path, bytes: &[u8]) -> Result<()> {
    let res = fs::write(tmp, bytes).and_then(|()| fs::rename(tmp, path));
    if let Err(e) = res {
        let _ = fs::remove_file(tmp);
        return Err(ImageError::io("write", path, e));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn container_names() {
        assert!(valid_container_name("web-1.a_b"));
        assert!(!valid_container_name(""));
        assert!(!valid_container_name("../x"));
        assert!(!valid_container_name("-x"));
        assert!(!valid_container_name("a/b"));
    }
}
