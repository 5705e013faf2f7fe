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

/// containers/<name>/state.json: what the container runs and how its last
/// run went; written under the exclusive store lock. `image/` keeps it and
/// tells running from stopped; what `spec` holds is the runtime's business.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct ContainerState {
    /// The command line it runs (what `ps` shows).
    #[serde(default)]
    pub command: Vec<String>,
    /// Everything needed to run it again (`layerfs start`), opaque here.
    #[serde(default)]
    pub spec: serde_json::Value,
    /// When the last run started and finished (RFC 3339).
    #[serde(default)]
    pub started: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished: Option<String>,
    /// The `layerfs run` (or `start`) process while it runs, with its start
    /// time (clock ticks after boot, /proc/PID/stat), so a reused pid is
    /// never taken for it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid_start: Option<u64>,
    /// The last run's exit status (absent while running, and when the
    /// runner was killed before it could write it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    /// `run --rm`: removed when the run ends, or, if its runner was killed,
    /// by the next `reap_containers`.
    #[serde(default)]
    pub auto_remove: bool,
}

/// Where a container's last run stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ContainerStatus {
    /// Never run.
    Created,
    Running {
        pid: u32,
    },
    /// Ended; the code is unknown when the runner was killed.
    Exited {
        code: Option<i32>,
        finished: Option<String>,
    },
}

impl ContainerState {
    /// The state of a run starting now in this process.
    pub fn started_here(command: Vec<String>, spec: serde_json::Value, auto_remove: bool) -> Self {
        let pid = std::process::id();
        ContainerState {
            command,
            spec,
            started: now_rfc3339(),
            finished: None,
            pid: Some(pid),
            pid_start: process_start_time(pid),
            exit_code: None,
            auto_remove,
        }
    }

    /// The run ended with `code`.
    pub fn finish(&mut self, code: i32) {
        self.pid = None;
        self.pid_start = None;
        self.exit_code = Some(code);
        self.finished = Some(now_rfc3339());
    }

    pub fn status(&self) -> ContainerStatus {
        match self.pid {
            Some(pid) if self.pid_start.is_some() && process_start_time(pid) == self.pid_start => {
                ContainerStatus::Running { pid }
            }
            Some(_) => ContainerStatus::Exited {
                code: None,
                finished: None,
            },
            None if self.started.is_empty() => ContainerStatus::Created,
            None => ContainerStatus::Exited {
                code: self.exit_code,
                finished: self.finished.clone(),
            },
        }
    }
}

/// A process's start time in clock ticks after boot (field 22 of
/// /proc/PID/stat), or None when it is gone or a zombie (ended, not yet
/// waited for).
pub fn process_start_time(pid: u32) -> Option<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces and parentheses: count
    // from after its last ')'.
    let mut fields = stat[stat.rfind(')')? + 1..].split_whitespace();
    if matches!(fields.next(), Some("Z" | "X" | "x")) {
        return None;
    }
    fields.nth(18)?.parse().ok()
}

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

    /// The state of the container's runs; None when there is no such
    /// container.
    pub fn container_state(&self, name: &str) -> Result<Option<ContainerState>> {
        let Some(c) = self.load_container(name)? else {
            return Ok(None);
        };
        let path = c.dir.join("state.json");
        match fs::read(&path) {
            Ok(b) => serde_json::from_slice(&b)
                .map(Some)
                .map_err(|e| ImageError::new(format!("{}: {e}", path.display()))),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Some(ContainerState::default())),
            Err(e) => Err(ImageError::io("read", &path, e)),
        }
    }

    /// Record the state of a container's run (under the exclusive lock).
    pub fn set_container_state(
        &self,
        lock: &StoreLock,
        name: &str,
        state: &ContainerState,
    ) -> Result<()> {
        self.require_exclusive(lock)?;
        let c = self
            .load_container(name)?
            .ok_or_else(|| ImageError::new(format!("container {name}: not found")))?;
        let json = serde_json::to_vec_pretty(state)
            .map_err(|e| ImageError::new(format!("container {name}: state: {e}")))?;
        super::store::write_atomic(&self.tmp_dir(), &c.dir.join("state.json"), &json)
    }

    /// Remove the `--rm` containers whose runner is gone without removing
    /// them (killed). Returns their names.
    pub fn reap_containers(&self, lock: &StoreLock) -> Result<Vec<String>> {
        self.require_exclusive(lock)?;
        let mut reaped = Vec::new();
        for rec in self.container_records()? {
            let Some(state) = self.container_state(&rec.name)? else {
                continue;
            };
            let ended = matches!(state.status(), ContainerStatus::Exited { .. });
            if state.auto_remove && ended && self.remove_container(lock, &rec.name).is_ok() {
                reaped.push(rec.name);
            }
        }
        Ok(reaped)
    }

    /// Remove a container and its writable layer; refused while it runs or
    /// is mounted.
    pub fn remove_container(&self, lock: &StoreLock, name: &str) -> Result<ContainerRecord> {
        self.require_exclusive(lock)?;
        let c = self
            .load_container(name)?
            .ok_or_else(|| ImageError::new(format!("container {name}: not found")))?;
        if let Some(ContainerStatus::Running { pid }) =
            self.container_state(name)?.map(|s| s.status())
        {
            return Err(ImageError::new(format!(
                "container {name}: running (layerfs run, pid {pid}); stop it first"
            )));
        }
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
    fn a_state_runs_while_its_process_does() {
        assert_eq!(ContainerState::default().status(), ContainerStatus::Created);
        let mut state =
            ContainerState::started_here(vec!["sh".into()], serde_json::Value::Null, false);
        let me = std::process::id();
        assert_eq!(state.status(), ContainerStatus::Running { pid: me });
        // The same pid, started at another time: a reused pid, not ours.
        let mut reused = state.clone();
        reused.pid_start = reused.pid_start.map(|t| t + 1);
        let killed = ContainerStatus::Exited {
            code: None,
            finished: None,
        };
        assert_eq!(reused.status(), killed);
        // Ended, not yet waited for: a zombie does not run.
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while process_start_time(child.id()).is_some() && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        assert_eq!(process_start_time(child.id()), None);
        child.wait().unwrap();
        state.finish(3);
        assert!(matches!(
            state.status(),
            ContainerStatus::Exited {
                code: Some(3),
                finished: Some(_)
            }
        ));
    }

    #[test]
    fn container_names() {
        assert!(valid_container_name("web-1.a_b"));
        assert!(!valid_container_name(""));
        assert!(!valid_container_name("../x"));
        assert!(!valid_container_name("-x"));
        assert!(!valid_container_name("a/b"));
    }
}
