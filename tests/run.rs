//! `layerfs run` end to end (needs root and busybox-static): containers on
//! a writable layerfs mount of a busybox layer.
//!
//! Each test mounts its own layer stack; the container's own mounts live
//! in its mount namespace and vanish with it, which the tests check in
//! /proc/mounts.

mod common;

use std::fs;
use std::io::{BufRead, BufReader};
use std::os::unix::fs::{MetadataExt, symlink};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use common::{LayerfsMount, layerfs_bin};

/// A busybox layer, its writable layer and a mount of both.
struct Container {
    layer: PathBuf,
    upper: PathBuf,
    mount: LayerfsMount,
    _dir: tempfile::TempDir,
}

impl Container {
    fn new() -> Container {
        common::require_root();
        let dir = common::tempdir("layerfs-run-");
        let root = dir.path().canonicalize().expect("canonical temp dir");
        let (layer, upper, work) = (root.join("layer"), root.join("upper"), root.join("work"));
        for d in [&layer, &upper, &work] {
            fs::create_dir(d).expect("mkdir");
        }
        common::busybox::fill_layer(&layer);
        let opts = format!(
            "upperdir={},workdir={}",
            common::escape_opt_path(&upper),
            common::escape_opt_path(&work)
        );
        let mount = LayerfsMount::mount(std::slice::from_ref(&layer), &opts);
        Container {
            layer,
            upper,
            mount,
            _dir: dir,
        }
    }

    fn command(&self, opts: &[&str], cmd: &[&str]) -> Command {
        let mut c = Command::new(layerfs_bin());
        c.arg("run")
            .args(opts)
            .arg("--rootfs")
            .arg(self.mount.path())
            .args(cmd)
            .stdin(Stdio::null());
        c
    }

    fn run(&self, opts: &[&str], cmd: &[&str]) -> Output {
        let out = self
            .command(opts, cmd)
            .output()
            .expect("spawning layerfs run");
        assert_no_container_mounts(self.mount.path());
        out
    }
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn explain(o: &Output) -> String {
    format!(
        "status {:?}\nstdout:\n{}\nstderr:\n{}",
        o.status.code(),
        stdout(o),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Nothing the container mounted is visible here.
fn assert_no_container_mounts(root: &Path) {
    let mounts = fs::read_to_string("/proc/self/mounts").expect("/proc/self/mounts");
    let inside = format!("{}/", root.display());
    let leaked: Vec<&str> = mounts.lines().filter(|l| l.contains(&inside)).collect();
    assert!(
        leaked.is_empty(),
        "container mounts left behind: {leaked:?}"
    );
}

#[test]
fn command_is_pid_one_and_changes_land_in_the_upper() {
    let c = Container::new();
    let before = common::manifest::manifest(&c.layer);
    let o = c.run(
        &["--hostname", "box1"],
        &["sh", "-c", "echo hi > /f; rm /bin/true; echo $$; hostname"],
    );
    assert!(o.status.success(), "{}", explain(&o));
    assert_eq!(stdout(&o), "1\nbox1\n");
    assert_eq!(
        fs::read(c.upper.join("f")).expect("f in the upper"),
        b"hi\n"
    );
    let wh = fs::symlink_metadata(c.upper.join("bin/true")).expect("whiteout for bin/true");
    assert_eq!((wh.mode() & libc::S_IFMT, wh.rdev()), (libc::S_IFCHR, 0));
    assert_eq!(
        common::manifest::manifest(&c.layer),
        before,
        "the image layer changed"
    );
    // /etc/hostname and /etc/hosts were bound over, never written: the
    // mount points made for them are empty.
    for f in ["etc/hostname", "etc/hosts", "etc/resolv.conf"] {
        let size = fs::metadata(c.upper.join(f)).map(|m| m.len()).unwrap_or(0);
        assert_eq!(size, 0, "{f} was written into the upper");
    }
}

#[test]
fn exit_status_passes_through() {
    let c = Container::new();
    let o = c.run(&[], &["sh", "-c", "exit 42"]);
    assert_eq!(o.status.code(), Some(42), "{}", explain(&o));
    let o = c.run(&[], &["no-such-command"]);
    assert_eq!(o.status.code(), Some(127), "{}", explain(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(err.lines().count(), 1, "one error line: {err}");
    assert!(err.contains("no-such-command"), "{err}");
}

/// Starts a container that prints `ready` once its trap is set; returns
/// the child and the lines it printed so far.
fn start_waiting(c: &Container, script: &str) -> (std::process::Child, impl BufRead) {
    let mut child = c
        .command(&[], &["sh", "-c", script])
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawning layerfs run");
    let mut out = BufReader::new(child.stdout.take().expect("stdout pipe"));
    let mut line = String::new();
    out.read_line(&mut line).expect("reading ready");
    assert_eq!(line, "ready\n");
    (child, out)
}

fn wait_with_limit(child: &mut std::process::Child) -> std::process::ExitStatus {
    common::wait_within(child, Duration::from_secs(20)).unwrap_or_else(|| {
        let _ = child.kill();
        let _ = child.wait();
        panic!("layerfs run did not end")
    })
}

#[test]
fn signals_are_forwarded_and_a_kill_is_128_plus_n() {
    let c = Container::new();
    let (mut child, mut out) = start_waiting(
        &c,
        "trap 'echo got TERM; exit 3' TERM; echo ready; while :; do sleep 0.05; done",
    );
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).expect("kill -TERM");
    let status = wait_with_limit(&mut child);
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut out, &mut rest).expect("rest of stdout");
    assert_eq!(rest, "got TERM\n");
    assert_eq!(status.code(), Some(3));

    // SIGKILL to the container's PID 1 from here: 128 + 9.
    let (mut child, _out) = start_waiting(&c, "echo ready; while :; do sleep 0.05; done");
    let children = fs::read_to_string(format!("/proc/{0}/task/{0}/children", child.id()))
        .expect("children of layerfs run");
    let init: i32 = children
        .split_whitespace()
        .next()
        .and_then(|p| p.parse().ok())
        .expect("the container's pid");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(init),
        nix::sys::signal::Signal::SIGKILL,
    )
    .expect("kill -KILL");
    assert_eq!(wait_with_limit(&mut child).code(), Some(137));
    assert_no_container_mounts(c.mount.path());
}

#[test]
fn env_workdir_user_and_volumes() {
    let c = Container::new();
    let host = common::tempdir("layerfs-run-volume-");
    fs::write(host.path().join("in"), b"from host").expect("host file");
    // The container's user (1000) writes there.
    fs::set_permissions(
        host.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o777),
    )
    .expect("chmod volume");
    let rw = format!("{}:/data", host.path().display());
    let o = c.run(
        &["-e", "FOO=bar", "-w", "/work/dir", "-u", "app", "-v", &rw],
        &[
            "sh",
            "-c",
            "echo $FOO; pwd; id -u; id -G; echo $HOME; cat /data/in; echo out > /data/out",
        ],
    );
    assert!(o.status.success(), "{}", explain(&o));
    assert_eq!(
        stdout(&o),
        "bar\n/work/dir\n1000\n1000 10\n/home/app\nfrom host"
    );
    assert_eq!(
        fs::read(host.path().join("out")).expect("written through -v"),
        b"out\n"
    );

    let ro = format!("{}:/data:ro", host.path().display());
    let o = c.run(&["-v", &ro], &["sh", "-c", "echo x > /data/new"]);
    assert!(!o.status.success(), "{}", explain(&o));
    assert!(!host.path().join("new").exists());
}

#[test]
fn namespaces_isolate_network_and_processes() {
    let c = Container::new();
    let o = c.run(&["--net", "none"], &["ls", "/sys/class/net"]);
    assert!(o.status.success(), "{}", explain(&o));
    assert_eq!(stdout(&o), "lo\n");
    let o = c.run(&["--net", "none"], &["cat", "/sys/class/net/lo/operstate"]);
    assert!(o.status.success(), "{}", explain(&o));
    let o = c.run(&[], &["sh", "-c", "ls -d /proc/[0-9]* | wc -l"]);
    // sh, ls and wc: nothing of the host.
    assert!(o.status.success(), "{}", explain(&o));
    let n: u32 = stdout(&o).trim().parse().expect("a count");
    assert!(n <= 3, "the container sees {n} processes");
    // Capabilities: the default set, and no_new_privs.
    let o = c.run(
        &[],
        &["grep", "-E", "^(CapBnd|NoNewPrivs)", "/proc/self/status"],
    );
    assert_eq!(stdout(&o), "CapBnd:\t00000000a80425fb\nNoNewPrivs:\t1\n");
}

#[test]
fn two_containers_of_one_root_at_once() {
    let c = Container::new();
    let (mut a, _oa) = start_waiting(&c, "echo ready; sleep 1; hostname");
    let (mut b, _ob) = start_waiting(&c, "echo ready; sleep 1; hostname");
    assert!(wait_with_limit(&mut a).success());
    assert!(wait_with_limit(&mut b).success());
    assert_no_container_mounts(c.mount.path());
}

#[test]
fn a_symlink_in_the_image_cannot_aim_a_mount_at_the_host() {
    let c = Container::new();
    // /etc is a symlink to / inside the image: /etc/hosts must resolve to
    // the container's /hosts, never to a host file.
    let decoy = common::tempdir("layerfs-run-decoy-");
    fs::write(decoy.path().join("hosts"), b"decoy").expect("decoy");
    let etc = c.mount.path().join("etc");
    fs::rename(&etc, c.mount.path().join("etc.real")).expect("move etc");
    symlink(decoy.path(), &etc).expect("symlink etc to the decoy dir");
    let o = c.run(&[], &["cat", "/etc.real/passwd"]);
    // Whether the run goes ahead or refuses, the host's decoy dir is
    // untouched: nothing was mounted on or created in it.
    assert_eq!(
        fs::read(decoy.path().join("hosts")).expect("decoy"),
        b"decoy"
    );
    let names: Vec<_> = fs::read_dir(decoy.path())
        .expect("decoy dir")
        .map(|e| e.expect("entry").file_name())
        .collect();
    assert_eq!(names, ["hosts"], "{}", explain(&o));
    if !o.status.success() {
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(err.lines().count(), 1, "one error line: {err}");
    }
}
