//! `--memory` and `--pids-limit`: one cgroup v2 per container, made by the
//! monitor under `<cgroup2>/layerfs/`, joined by the container's first
//! process before it execs anything, removed when the container ends.
//!
//! Only cgroup v2: a hierarchy at /sys/fs/cgroup (unified mode) or at
//! /sys/fs/cgroup/unified (hybrid mode) that offers the controllers the
//! limits need and that we may write. Anything else (a hybrid machine whose
//! memory and pids controllers belong to cgroup v1) is refused with one
//! line saying so, before anything is made.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::sys::statfs::{CGROUP2_SUPER_MAGIC, statfs};
use serde::{Deserialize, Serialize};

/// Where systemd and container engines mount cgroup v2: alone (unified
/// mode) or beside the v1 hierarchies (hybrid mode).
const UNIFIED_ROOT: &str = "/sys/fs/cgroup";
const HYBRID_ROOT: &str = "/sys/fs/cgroup/unified";

/// The resource limits of a container.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Limits {
    /// memory.max, bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<u64>,
    /// pids.max.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pids: Option<u64>,
}

impl Limits {
    pub fn is_empty(&self) -> bool {
        self.memory.is_none() && self.pids.is_none()
    }

    /// The cgroup v2 controllers these limits need, with the option that
    /// asks for each.
    fn controllers(&self) -> Vec<(&'static str, &'static str)> {
        let mut out = Vec::new();
        if self.memory.is_some() {
            out.push(("memory", "--memory"));
        }
        if self.pids.is_some() {
            out.push(("pids", "--pids-limit"));
        }
        out
    }
}

/// `512m`, `1g`, `65536k`, `1048576` (bytes; b, k, m, g as docker reads them).
pub fn parse_size(text: &str) -> Result<u64, String> {
    let t = text.trim().to_ascii_lowercase();
    let (digits, unit) = match t.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => t.split_at(i),
        None => (t.as_str(), ""),
    };
    let shift = match unit.trim_end_matches('b') {
        "" => 0,
        "k" => 10,
        "m" => 20,
        "g" => 30,
        _ => return Err(format!("--memory {text}: want a size such as 512m or 1g")),
    };
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("--memory {text}: want a size such as 512m or 1g"))?;
    n.checked_mul(1 << shift)
        .filter(|b| *b > 0)
        .ok_or_else(|| format!("--memory {text}: out of range"))
}

fn is_cgroup2(path: &str) -> bool {
    statfs(path).is_ok_and(|s| s.filesystem_type() == CGROUP2_SUPER_MAGIC)
}

/// The controllers `limits` need that a hierarchy offering `offered` (its
/// root's cgroup.controllers) lacks.
fn missing(limits: &Limits, offered: &str) -> Vec<(&'static str, &'static str)> {
    let offered: Vec<&str> = offered.split_whitespace().collect();
    limits
        .controllers()
        .into_iter()
        .filter(|(c, _)| !offered.contains(c))
        .collect()
}

/// The cgroup v2 hierarchy that can enforce `limits`, or the one line that
/// says why there is none.
pub fn hierarchy_for(limits: &Limits) -> Result<PathBuf, String> {
    let options: Vec<&str> = limits.controllers().iter().map(|(_, o)| *o).collect();
    let asked = options.join(" and ");
    let root = if is_cgroup2(UNIFIED_ROOT) {
        UNIFIED_ROOT
    } else if is_cgroup2(HYBRID_ROOT) {
        HYBRID_ROOT
    } else {
        return Err(format!(
            "{asked} need a cgroup v2 hierarchy, and none is mounted (at {UNIFIED_ROOT} or {HYBRID_ROOT}); layerfs does not use cgroup v1"
        ));
    };
    let offered = fs::read_to_string(Path::new(root).join("cgroup.controllers"))
        .map_err(|e| format!("{asked}: {root}/cgroup.controllers: {e}"))?;
    let lacking = missing(limits, &offered);
    if !lacking.is_empty() {
        let names: Vec<&str> = lacking.iter().map(|(c, _)| *c).collect();
        let (names, verb) = (
            names.join(" and "),
            if names.len() > 1 { "are" } else { "is" },
        );
        let why = if root == HYBRID_ROOT {
            format!(
                "this machine has hybrid cgroups: {root} is cgroup v2, but its {names} controller {verb} held by cgroup v1 under {UNIFIED_ROOT}"
            )
        } else {
            format!("{root} does not offer the {names} controller")
        };
        return Err(format!(
            "{asked}: no writable cgroup v2 hierarchy with the {names} controller ({why}); layerfs sets limits only through cgroup v2"
        ));
    }
    nix::unistd::access(root, nix::unistd::AccessFlags::W_OK)
        .map_err(|e| format!("{asked}: cgroup v2 at {root} is not writable here: {e}"))?;
    Ok(PathBuf::from(root))
}

/// A container's cgroup, removed when dropped.
#[derive(Debug)]
pub struct Cgroup {
    dir: PathBuf,
}

fn write(path: &Path, value: &str) -> Result<(), String> {
    fs::write(path, value).map_err(|e| format!("write {value:?} to {}: {e}", path.display()))
}

impl Cgroup {
    /// `<cgroup2>/layerfs/<name>` with `limits` set.
    pub fn create(limits: &Limits, name: &str) -> Result<Cgroup, String> {
        Cgroup::create_in(&hierarchy_for(limits)?, limits, name)
    }

    /// `<root>/layerfs/<name>`, `root` a cgroup v2 hierarchy's root.
    fn create_in(root: &Path, limits: &Limits, name: &str) -> Result<Cgroup, String> {
        let enable: Vec<String> = limits
            .controllers()
            .iter()
            .map(|(c, _)| format!("+{c}"))
            .collect();
        let enable = enable.join(" ");
        // Controllers reach a cgroup only through its parents'
        // subtree_control; a process-free `layerfs` parent keeps the
        // no-internal-processes rule.
        write(&root.join("cgroup.subtree_control"), &enable)?;
        let parent = root.join("layerfs");
        match fs::create_dir(&parent) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(format!("mkdir {}: {e}", parent.display())),
        }
        write(&parent.join("cgroup.subtree_control"), &enable)?;
        let dir = parent.join(name);
        fs::create_dir(&dir).map_err(|e| format!("mkdir {}: {e}", dir.display()))?;
        let cgroup = Cgroup { dir };
        if let Some(bytes) = limits.memory {
            write(&cgroup.dir.join("memory.max"), &bytes.to_string())?;
            // As docker: no swap beyond the limit, where swap is accounted.
            let swap = cgroup.dir.join("memory.swap.max");
            if swap.exists() {
                write(&swap, "0")?;
            }
        }
        if let Some(n) = limits.pids {
            write(&cgroup.dir.join("pids.max"), &n.to_string())?;
        }
        Ok(cgroup)
    }

    pub fn path(&self) -> &Path {
        &self.dir
    }
}

impl Drop for Cgroup {
    fn drop(&mut self) {
        // The container's last processes may still be on their way out.
        let deadline = Instant::now() + Duration::from_secs(5);
        while let Err(e) = fs::remove_dir(&self.dir) {
            if e.kind() == io::ErrorKind::NotFound {
                break;
            }
            if Instant::now() > deadline {
                tracing::warn!(cgroup = %self.dir.display(), error = %e, "cannot remove the container's cgroup");
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        if let Some(parent) = self.dir.parent() {
            // Shared with other containers: gone only when the last is.
            let _ = fs::remove_dir(parent);
        }
    }
}

/// Move the calling process into the cgroup at `dir` (the container's
/// first process, before it execs).
pub fn join(dir: &Path) -> io::Result<()> {
    fs::write(dir.join("cgroup.procs"), "0")
        .map_err(|e| io::Error::new(e.kind(), format!("joining cgroup {}: {e}", dir.display())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_as_docker_reads_them() {
        assert_eq!(parse_size("1048576"), Ok(1 << 20));
        assert_eq!(parse_size("512m"), Ok(512 << 20));
        assert_eq!(parse_size("2G"), Ok(2 << 30));
        assert_eq!(parse_size("64kb"), Ok(64 << 10));
        assert!(parse_size("12x").is_err());
        assert!(parse_size("m").is_err());
        assert!(parse_size("0").is_err());
        assert!(parse_size("99999999999g").is_err());
    }

    #[test]
    fn a_cgroup_gets_its_limits_and_its_parents_the_controllers() {
        // A plain directory stands in for cgroupfs: the files written are
        // what the kernel would be told.
        let root = tempfile::tempdir().unwrap();
        let limits = Limits {
            memory: Some(64 << 20),
            pids: Some(20),
        };
        let cg = Cgroup::create_in(root.path(), &limits, "run-7").unwrap();
        let read = |p: &str| fs::read_to_string(root.path().join(p)).unwrap();
        assert_eq!(cg.path(), root.path().join("layerfs/run-7"));
        assert_eq!(read("cgroup.subtree_control"), "+memory +pids");
        assert_eq!(read("layerfs/cgroup.subtree_control"), "+memory +pids");
        assert_eq!(read("layerfs/run-7/memory.max"), "67108864");
        assert_eq!(read("layerfs/run-7/pids.max"), "20");
        // cgroupfs lets a cgroup's interface files go with it; here they
        // must go first.
        for f in ["memory.max", "pids.max"] {
            fs::remove_file(cg.path().join(f)).unwrap();
        }
        drop(cg);
        assert!(!root.path().join("layerfs/run-7").exists());
        let pids_only = Limits {
            memory: None,
            pids: Some(5),
        };
        let cg = Cgroup::create_in(root.path(), &pids_only, "run-8").unwrap();
        assert_eq!(read("layerfs/cgroup.subtree_control"), "+pids");
        assert!(!cg.path().join("memory.max").exists());
        fs::remove_file(cg.path().join("pids.max")).unwrap();
    }

    #[test]
    fn missing_controllers_are_named() {
        let both = Limits {
            memory: Some(1),
            pids: Some(2),
        };
        let names = |offered: &str| -> Vec<&str> {
            missing(&both, offered).iter().map(|(c, _)| *c).collect()
        };
        assert_eq!(names("hugetlb"), ["memory", "pids"]);
        assert_eq!(names("cpu memory io"), ["pids"]);
        assert!(names("cpuset cpu io memory hugetlb pids rdma").is_empty());
        let pids_only = Limits {
            memory: None,
            pids: Some(2),
        };
        assert!(missing(&pids_only, "pids").is_empty());
    }
}
