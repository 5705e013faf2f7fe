//! What a container runs and how: the image's defaults, overridden by the
//! user's options as `docker run` overrides them.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// What the image's config says a container runs (empty when unset).
#[derive(Debug, Clone, Default)]
pub struct ImageDefaults {
    pub entrypoint: Vec<String>,
    pub cmd: Vec<String>,
    pub env: Vec<String>,
    pub working_dir: String,
    pub user: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Network {
    /// The host's network namespace.
    Host,
    /// A new network namespace with only `lo`, up.
    None,
}

/// `-v HOST:CTR[:ro]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Bind {
    pub host: PathBuf,
    pub container: String,
    pub read_only: bool,
}

impl Bind {
    /// Parse `HOST:CTR[:ro|:rw]`; HOST must exist (it is made absolute).
    pub fn parse(text: &str) -> Result<Bind, String> {
        let parts: Vec<&str> = text.split(':').collect();
        let (host, container, read_only) = match parts.as_slice() {
            [h, c] => (*h, *c, false),
            [h, c, "ro"] => (*h, *c, true),
            [h, c, "rw"] => (*h, *c, false),
            [_, _, mode] => return Err(format!("volume {text}: unknown mode '{mode}' (ro or rw)")),
            _ => return Err(format!("volume {text}: expected HOSTDIR:CTRDIR[:ro]")),
        };
        if !container.starts_with('/') {
            return Err(format!(
                "volume {text}: {container} is not an absolute path"
            ));
        }
        let host =
            std::fs::canonicalize(host).map_err(|e| format!("volume {text}: {host}: {e}"))?;
        Ok(Bind {
            host,
            container: container.to_string(),
            read_only,
        })
    }
}

/// The user's `layerfs run` options that shape the process.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// CMD ARGS... after the image name (replaces the image's Cmd).
    pub command: Vec<String>,
    /// `-e K=V` (or `-e K`: the value of K here, if set).
    pub env: Vec<String>,
    pub workdir: Option<String>,
    pub user: Option<String>,
}

/// Everything the container's first process needs, handed to it as JSON.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunSpec {
    /// The mounted root file system, as the host sees it.
    pub rootfs: PathBuf,
    pub argv: Vec<String>,
    pub env: Vec<String>,
    pub cwd: String,
    /// `USER[:GROUP]`, names or numbers, resolved inside the root.
    pub user: String,
    pub hostname: String,
    /// Files bind-mounted over /etc/hostname, /etc/hosts, /etc/resolv.conf.
    pub etc_hostname: PathBuf,
    pub etc_hosts: PathBuf,
    pub etc_resolv_conf: PathBuf,
    pub binds: Vec<Bind>,
    pub network: Network,
    pub read_only: bool,
    /// stdin passed on (`-i`); otherwise /dev/null.
    pub interactive: bool,
    /// `-t`: a pseudo-terminal, its master sent over this inherited unix
    /// socket (set by the monitor).
    pub tty: bool,
    pub console_socket: Option<i32>,
    /// `--memory`, `--pids-limit` (through cgroup v2).
    #[serde(default)]
    pub limits: super::cgroup::Limits,
    /// The cgroup the first process joins (set by the monitor).
    #[serde(default)]
    pub cgroup: Option<PathBuf>,
}

/// The process a container runs: the image's defaults with the user's
/// options applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Process {
    pub argv: Vec<String>,
    pub env: Vec<String>,
    pub cwd: String,
    pub user: String,
}

impl Process {
    pub fn new(
        image: &ImageDefaults,
        opts: &RunOptions,
        hostname: &str,
    ) -> Result<Process, String> {
        Ok(Process {
            argv: argv(image, opts)?,
            env: environment(image, opts, hostname),
            cwd: workdir(image, opts),
            user: user(image, opts),
        })
    }
}

const DEFAULT_PATH: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// The command line: Entrypoint, then the user's command or else the
/// image's Cmd.
fn argv(image: &ImageDefaults, opts: &RunOptions) -> Result<Vec<String>, String> {
    let mut argv = image.entrypoint.clone();
    if opts.command.is_empty() {
        argv.extend(image.cmd.iter().cloned());
    } else {
        argv.extend(opts.command.iter().cloned());
    }
    if argv.is_empty() {
        return Err("no command given, and the image names none".to_string());
    }
    Ok(argv)
}

/// The environment: the image's, then `-e` (same key replaces), PATH and
/// HOSTNAME as docker sets them.
fn environment(image: &ImageDefaults, opts: &RunOptions, hostname: &str) -> Vec<String> {
    let mut env: Vec<String> = Vec::new();
    let mut set = |kv: String| {
        let key = kv.split('=').next().unwrap_or_default().to_string();
        env.retain(|e| e.split('=').next() != Some(key.as_str()));
        env.push(kv);
    };
    set(DEFAULT_PATH.to_string());
    set(format!("HOSTNAME={hostname}"));
    for kv in &image.env {
        set(kv.clone());
    }
    for kv in &opts.env {
        if kv.contains('=') {
            set(kv.clone());
        } else if let Ok(v) = std::env::var(kv) {
            set(format!("{kv}={v}"));
        }
    }
    if !env.iter().any(|e| e.starts_with("HOME=")) {
        // Filled in from the user's passwd entry inside, as docker does.
        env.push("HOME=".to_string());
    }
    env
}

fn workdir(image: &ImageDefaults, opts: &RunOptions) -> String {
    opts.workdir
        .clone()
        .or_else(|| (!image.working_dir.is_empty()).then(|| image.working_dir.clone()))
        .unwrap_or_else(|| "/".to_string())
}

fn user(image: &ImageDefaults, opts: &RunOptions) -> String {
    opts.user.clone().unwrap_or_else(|| image.user.clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image() -> ImageDefaults {
        ImageDefaults {
            entrypoint: vec![],
            cmd: vec!["sh".into()],
            env: vec!["PATH=/bin".into(), "A=1".into()],
            working_dir: "/srv".into(),
            user: "daemon".into(),
        }
    }

    #[test]
    fn the_users_command_replaces_cmd_but_not_entrypoint() {
        let mut img = image();
        let opts = RunOptions {
            command: vec!["ls".into(), "-l".into()],
            ..Default::default()
        };
        assert_eq!(argv(&img, &opts).unwrap(), ["ls", "-l"]);
        img.entrypoint = vec!["/init".into()];
        assert_eq!(argv(&img, &opts).unwrap(), ["/init", "ls", "-l"]);
        assert_eq!(argv(&img, &RunOptions::default()).unwrap(), ["/init", "sh"]);
        img.entrypoint.clear();
        img.cmd.clear();
        assert!(argv(&img, &RunOptions::default()).is_err());
    }

    #[test]
    fn env_options_override_the_image_by_key() {
        let opts = RunOptions {
            env: vec!["A=2".into(), "B=3".into()],
            ..Default::default()
        };
        let env = environment(&image(), &opts, "box");
        assert!(env.contains(&"PATH=/bin".to_string()));
        assert!(env.contains(&"A=2".to_string()));
        assert!(!env.contains(&"A=1".to_string()));
        assert!(env.contains(&"B=3".to_string()));
        assert!(env.contains(&"HOSTNAME=box".to_string()));
    }

    #[test]
    fn workdir_and_user_default_to_the_image() {
        let img = image();
        assert_eq!(workdir(&img, &RunOptions::default()), "/srv");
        assert_eq!(user(&img, &RunOptions::default()), "daemon");
        let opts = RunOptions {
            workdir: Some("/tmp".into()),
            user: Some("0:0".into()),
            ..Default::default()
        };
        assert_eq!(workdir(&img, &opts), "/tmp");
        assert_eq!(user(&img, &opts), "0:0");
        assert_eq!(
            workdir(&ImageDefaults::default(), &RunOptions::default()),
            "/"
        );
    }

    #[test]
    fn volumes_parse_with_their_mode() {
        let tmp = std::env::temp_dir();
        let b = Bind::parse(&format!("{}:/data:ro", tmp.display())).unwrap();
        assert!(b.read_only);
        assert_eq!(b.container, "/data");
        assert!(Bind::parse(&format!("{}:data", tmp.display())).is_err());
        assert!(Bind::parse(&format!("{}:/d:xx", tmp.display())).is_err());
        assert!(Bind::parse("/no/such/dir/here:/d").is_err());
    }
}
