//! Shared by tests/run_image*.rs: a small image built at test time (a
//! busybox-static base layer and a second layer that adds /srv/hello and
//! deletes /bin/false), imported into a temp store, and a guard that leaves
//! no mount, process or store behind.
#![allow(dead_code)]

use std::fs;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::common;
use crate::common::images::{put_blob, tar_of};

/// A temp store holding `img:1` (no User, no Entrypoint) and `app:1` (the
/// same layers; Entrypoint, Cmd, Env, WorkingDir and User set).
pub struct Store {
    pub path: PathBuf,
    children: Vec<Child>,
    _dir: tempfile::TempDir,
}

/// An OCI layout at `dir` of one image: `layers` (tars, bottom first) and
/// the config's `config` object.
fn write_layout(dir: &Path, layers: &[Vec<u8>], config: serde_json::Value) {
    fs::create_dir_all(dir).expect("layout dir");
    fs::write(dir.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#).expect("oci-layout");
    let mut descs = Vec::new();
    let mut diff_ids = Vec::new();
    for tar in layers {
        let (d, size) = put_blob(dir, tar);
        diff_ids.push(d.clone());
        descs.push(serde_json::json!({
            "mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": d, "size": size}));
    }
    let config = serde_json::json!({
        "architecture": "amd64", "os": "linux", "config": config,
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
        "history": [{"created_by": "busybox"}, {"created_by": "srv"}],
    });
    let (cd, csize) = put_blob(dir, &serde_json::to_vec(&config).expect("json"));
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cd, "size": csize},
        "layers": descs,
    });
    let (md, msize) = put_blob(dir, &serde_json::to_vec(&manifest).expect("json"));
    let index = serde_json::json!({"schemaVersion": 2, "manifests": [{
        "mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": md, "size": msize}]});
    fs::write(
        dir.join("index.json"),
        serde_json::to_vec(&index).expect("json"),
    )
    .expect("index.json");
}

impl Store {
    pub fn new() -> Store {
        common::require_root();
        let dir = common::tempdir("layerfs-run-image-");
        let root = dir.path().canonicalize().expect("canonical temp dir");
        let (base, top) = (root.join("base"), root.join("top"));
        common::busybox::fill_layer(&base);
        fs::create_dir_all(top.join("srv")).expect("mkdir");
        fs::create_dir_all(top.join("bin")).expect("mkdir");
        fs::write(top.join("srv/hello"), b"hello\n").expect("hello");
        fs::write(top.join("bin/.wh.false"), b"").expect("whiteout");
        let layers = [tar_of(&base, false), tar_of(&top, false)];
        let store = root.join("store");
        let images = [
            ("img:1", serde_json::json!({"Env": ["PATH=/bin"]})),
            (
                "app:1",
                serde_json::json!({
                    "Env": ["PATH=/bin", "FOO=img", "KEEP=yes"],
                    "Entrypoint": ["sh", "-c", "echo \"$0 $FOO $KEEP $(id -u) $(pwd)\""],
                    "Cmd": ["dflt"],
                    "WorkingDir": "/srv",
                    "User": "app",
                }),
            ),
        ];
        for (i, (name, config)) in images.into_iter().enumerate() {
            let layout = root.join(format!("layout{i}"));
            write_layout(&layout, &layers, config);
            let out = Command::new(common::layerfs_bin())
                .args(["import", "--store"])
                .arg(&store)
                .arg(&layout)
                .args(["--name", name])
                .output()
                .expect("layerfs import");
            assert!(
                out.status.success(),
                "import: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Store {
            path: store,
            children: Vec::new(),
            _dir: dir,
        }
    }

    /// `layerfs SUBCOMMAND --store S ARGS...` (the store before the image
    /// and command, which take every argument after them).
    pub fn command(&self, subcommand: &str, args: &[&str]) -> Command {
        let mut c = Command::new(common::layerfs_bin());
        c.arg(subcommand)
            .arg("--store")
            .arg(&self.path)
            .args(args)
            .stdin(Stdio::null());
        c
    }

    pub fn layerfs(&self, subcommand: &str, args: &[&str]) -> Output {
        self.command(subcommand, args)
            .output()
            .expect("running layerfs")
    }

    /// `layerfs run`, waited for; nothing of it may stay mounted.
    pub fn run(&self, args: &[&str]) -> Output {
        let out = self.layerfs("run", args);
        self.assert_nothing_mounted();
        out
    }

    /// `layerfs run ARGS` in the background; returns once it printed
    /// `ready` (the command must print it first), with its stdout and pid.
    pub fn spawn_ready(&mut self, args: &[&str]) -> (u32, BufReader<ChildStdout>) {
        let mut cmd = self.command("run", args);
        // Its own process group, as a shell gives a foreground job (so
        // `signal_group` reaches it and only it).
        std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
        let mut child = cmd
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawning layerfs run");
        let mut out = BufReader::new(child.stdout.take().expect("stdout pipe"));
        let pid = child.id();
        self.children.push(child);
        let mut line = String::new();
        out.read_line(&mut line).expect("reading ready");
        assert_eq!(line, "ready\n", "layerfs run {args:?} did not start");
        (pid, out)
    }

    /// Like [`Store::spawn_ready`], but `layerfs run` leads a session of
    /// its own whose controlling terminal is a new pty (stdin), as a shell
    /// in a terminal runs a foreground job; the pty's master is returned:
    /// writing `^C` there makes the kernel send SIGINT to that job.
    pub fn spawn_ready_on_terminal(
        &mut self,
        args: &[&str],
    ) -> (u32, BufReader<ChildStdout>, std::os::fd::OwnedFd) {
        let pty = nix::pty::openpty(None, None).expect("openpty");
        let run = self.command("run", args);
        let mut cmd = Command::new("setsid");
        cmd.arg("--ctty")
            .arg(run.get_program())
            .args(run.get_args())
            .stdin(Stdio::from(pty.slave))
            .stdout(Stdio::piped());
        let mut child = cmd.spawn().expect("spawning setsid layerfs run");
        let mut out = BufReader::new(child.stdout.take().expect("stdout pipe"));
        let pid = child.id();
        self.children.push(child);
        let mut line = String::new();
        out.read_line(&mut line).expect("reading ready");
        assert_eq!(line, "ready\n", "layerfs run {args:?} did not start");
        (pid, out, pty.master)
    }

    /// Wait for a spawned `layerfs run` (killed after 30 s: a test failure).
    pub fn wait(&mut self, pid: u32) -> std::process::ExitStatus {
        let i = self
            .children
            .iter()
            .position(|c| c.id() == pid)
            .expect("a child we spawned");
        let mut child = self.children.remove(i);
        common::wait_within(&mut child, Duration::from_secs(30)).unwrap_or_else(|| {
            let _ = child.kill();
            let _ = child.wait();
            panic!("layerfs run (pid {pid}) did not end")
        })
    }

    pub fn signal(&self, pid: u32, sig: nix::sys::signal::Signal) {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), sig).expect("kill");
    }

    /// A signal to the process group of a spawned `layerfs run` (what a
    /// terminal's ^C does).
    pub fn signal_group(&self, pid: u32, sig: nix::sys::signal::Signal) {
        nix::sys::signal::killpg(nix::unistd::Pid::from_raw(pid as i32), sig).expect("killpg");
    }

    /// `ps [-a] --json`, parsed.
    pub fn ps(&self, all: bool) -> Vec<serde_json::Value> {
        let args: &[&str] = if all { &["-a", "--json"] } else { &["--json"] };
        let out = self.layerfs("ps", args);
        assert!(out.status.success(), "ps: {}", explain(&out));
        serde_json::from_slice(&out.stdout).expect("ps --json")
    }

    pub fn container_dir(&self, name: &str) -> PathBuf {
        self.path.join("containers").join(name)
    }

    pub fn container_names(&self) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(self.path.join("containers"))
            .expect("containers/")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    /// The mounts under the store that this process sees.
    pub fn mounts(&self) -> Vec<String> {
        let mounts = fs::read_to_string("/proc/self/mounts").expect("/proc/self/mounts");
        let inside = format!("{}/", self.path.display());
        mounts
            .lines()
            .filter(|l| l.contains(&inside))
            .map(str::to_string)
            .collect()
    }

    pub fn assert_nothing_mounted(&self) {
        let left = self.mounts();
        assert!(left.is_empty(), "mounts left behind: {left:?}");
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        for mut c in self.children.drain(..) {
            let _ = c.kill();
            let _ = c.wait();
        }
        // A failed test may leave a container's root mounted: detach it
        // before the temp dir goes (never remove through a mount).
        let deadline = Instant::now() + Duration::from_secs(10);
        while !self.mounts().is_empty() && Instant::now() < deadline {
            for line in self.mounts() {
                if let Some(mnt) = line.split(' ').nth(1) {
                    let _ = nix::mount::umount2(mnt, nix::mount::MntFlags::MNT_DETACH);
                }
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

pub fn explain(o: &Output) -> String {
    format!(
        "status {:?}\nstdout:\n{}\nstderr:\n{}",
        o.status.code(),
        stdout(o),
        stderr(o)
    )
}

/// One error line, exit status `code`, mentioning every one of `words`.
pub fn assert_refused(o: &Output, code: i32, words: &[&str]) {
    assert_eq!(o.status.code(), Some(code), "{}", explain(o));
    let err = stderr(o);
    assert_eq!(err.lines().count(), 1, "one error line: {err}");
    for w in words {
        assert!(err.contains(w), "{w:?} not in {err:?}");
    }
}
