//! `layerfs run IMAGE`, `ps`, `start`, `rm` end to end (root, busybox-static):
//! containers kept in a temp store, on an image built at test time.

mod common;
mod run_fixture;

use std::fs;
use std::io::Read;
use std::os::unix::fs::MetadataExt;

use common::manifest::manifest;
use nix::sys::signal::Signal;
use run_fixture::{Store, assert_refused, explain, stdout};

#[test]
fn a_container_of_an_image_writes_only_its_own_layer() {
    let s = Store::new();
    let layers = s.path.join("layers");
    let before = manifest(&layers);
    let o = s.run(&[
        "--name",
        "c1",
        "--hostname",
        "box1",
        "img:1",
        "sh",
        "-c",
        "echo hi > /f; rm /bin/true; echo $$; hostname; cat /srv/hello; ls /bin/false",
    ]);
    // ls of the file the image's top layer deleted fails: the status.
    assert_eq!(o.status.code(), Some(1), "{}", explain(&o));
    assert_eq!(stdout(&o), "1\nbox1\nhello\n");
    assert_eq!(manifest(&layers), before, "the store's layers changed");
    let upper = s.container_dir("c1").join("upper");
    assert_eq!(fs::read(upper.join("f")).expect("/f in the upper"), b"hi\n");
    let wh = fs::symlink_metadata(upper.join("bin/true")).expect("whiteout for /bin/true");
    assert_eq!((wh.mode() & libc::S_IFMT, wh.rdev()), (libc::S_IFCHR, 0));
    // The mount points the runtime needed are in the init layer, never in
    // the container's own.
    for f in ["proc", "sys", "dev", "etc/hostname", "etc/hosts"] {
        assert!(!upper.join(f).exists(), "{f} in the upper");
    }
    // Without --hostname: the container's name.
    let o = s.run(&["--name", "c2", "img:1", "hostname"]);
    assert!(o.status.success(), "{}", explain(&o));
    assert_eq!(stdout(&o), "c2\n");
    assert_eq!(manifest(&layers), before, "the store's layers changed");
}

#[test]
fn exit_status_missing_image_and_missing_command() {
    let s = Store::new();
    let o = s.run(&["--rm", "img:1", "sh", "-c", "exit 42"]);
    assert_eq!(o.status.code(), Some(42), "{}", explain(&o));
    let o = s.run(&["--name", "x", "img:1", "no-such-command"]);
    assert_refused(&o, 127, &["no-such-command", "not found"]);
    let o = s.run(&["nosuch:9", "sh"]);
    assert_refused(&o, 125, &["nosuch:9", "not found"]);
    // Only the container of the missing command remains.
    assert_eq!(s.container_names(), ["x"]);
    let ps = s.ps(true);
    assert_eq!(ps.len(), 1, "{ps:?}");
    assert_eq!(ps[0]["exit_code"], 127);
}

#[test]
fn rm_leaves_nothing_behind() {
    let s = Store::new();
    let o = s.run(&["--rm", "img:1", "sh", "-c", "echo x > /y; exit 5"]);
    assert_eq!(o.status.code(), Some(5), "{}", explain(&o));
    assert!(s.container_names().is_empty(), "{:?}", s.container_names());
    let records: Vec<_> = fs::read_dir(s.path.join("mounts"))
        .expect("mounts/")
        .collect();
    assert!(records.is_empty(), "mount records left: {records:?}");
    let tmp: Vec<_> = fs::read_dir(s.path.join("tmp")).expect("tmp/").collect();
    assert!(tmp.is_empty(), "tmp/ left: {tmp:?}");
    assert!(s.ps(true).is_empty());
}

#[test]
fn image_config_gives_defaults_and_options_override_them() {
    let s = Store::new();
    // Entrypoint + Cmd, Env, WorkingDir and User from the image.
    let o = s.run(&["--rm", "app:1"]);
    assert!(o.status.success(), "{}", explain(&o));
    assert_eq!(stdout(&o), "dflt img yes 1000 /srv\n");
    // A command replaces Cmd, never the Entrypoint.
    let o = s.run(&["--rm", "app:1", "given"]);
    assert!(o.status.success(), "{}", explain(&o));
    assert_eq!(stdout(&o), "given img yes 1000 /srv\n");
    // -e replaces by key and keeps the rest, -w and -u replace.
    let o = s.run(&[
        "--rm", "-e", "FOO=cli", "-w", "/tmp", "-u", "0:0", "app:1", "given",
    ]);
    assert!(o.status.success(), "{}", explain(&o));
    assert_eq!(stdout(&o), "given cli yes 0 /tmp\n");
    // A user the image does not know: refused, one line.
    let o = s.run(&["--rm", "-u", "nobody", "app:1"]);
    assert_refused(&o, 125, &["nobody"]);
    assert!(s.container_names().is_empty());
}

#[test]
fn ps_shows_the_exited_and_start_runs_it_again() {
    let s = Store::new();
    let script =
        "echo run >> /home/app/log; wc -l < /home/app/log; echo $N $(pwd) $(id -u); exit 7";
    let o = s.run(&[
        "--name", "s1", "-e", "N=opt", "-w", "/srv", "-u", "app", "img:1", "sh", "-c", script,
    ]);
    assert_eq!(o.status.code(), Some(7), "{}", explain(&o));
    assert_eq!(stdout(&o), "1\nopt /srv 1000\n");
    assert!(
        s.ps(false).is_empty(),
        "ps without -a lists only running ones"
    );
    let all = s.ps(true);
    assert_eq!(all.len(), 1, "{all:?}");
    let row = &all[0];
    assert_eq!(row["name"], "s1");
    assert_eq!(row["image"], "img:1");
    assert_eq!(row["state"], "exited");
    assert_eq!(row["exit_code"], 7);
    assert_eq!(row["command"], serde_json::json!(["sh", "-c", script]));
    let status = row["status"].as_str().expect("status");
    assert!(status.starts_with("Exited (7) "), "{status}");
    let table = s.layerfs("ps", &["-a"]);
    assert!(stdout(&table).contains("Exited (7)"), "{}", explain(&table));

    // start: the same command, on the same writable layer.
    let o = s.layerfs("start", &["s1"]);
    assert_eq!(o.status.code(), Some(7), "{}", explain(&o));
    assert_eq!(stdout(&o), "2\nopt /srv 1000\n", "the same options");
    s.assert_nothing_mounted();
    assert_eq!(
        fs::read(s.container_dir("s1").join("upper/home/app/log")).expect("log"),
        b"run\nrun\n"
    );
    let all = s.ps(true);
    assert_eq!(all[0]["exit_code"], 7);
    let o = s.layerfs("start", &["nosuch"]);
    assert_refused(&o, 125, &["nosuch", "not found"]);
    // The name is reused only on its own image.
    let o = s.run(&["--name", "s1", "app:1"]);
    assert_refused(&o, 125, &["s1", "made from image"]);
    // A run with the name reuses the container: its layer, a new command.
    let o = s.run(&["--name", "s1", "img:1", "cat", "/home/app/log"]);
    assert!(o.status.success(), "{}", explain(&o));
    assert_eq!(stdout(&o), "run\nrun\n");
    // rm of a stopped container: gone.
    let o = s.layerfs("rm", &["s1"]);
    assert!(o.status.success(), "{}", explain(&o));
    assert!(s.container_names().is_empty());
}

const WAIT_FOR_TERM: &str =
    "trap 'echo bye; exit 0' TERM; echo ready; while :; do sleep 0.05; done";

#[test]
fn a_running_container_is_refused_a_second_run_start_rm_and_rmi() {
    let mut s = Store::new();
    let (pid, mut out) = s.spawn_ready(&["--name", "busy", "img:1", "sh", "-c", WAIT_FOR_TERM]);
    let running = s.ps(false);
    assert_eq!(running.len(), 1, "{running:?}");
    assert_eq!(running[0]["name"], "busy");
    assert_eq!(running[0]["state"], "running");
    assert_eq!(running[0]["pid"], pid);
    let o = s.layerfs("run", &["--name", "busy", "img:1", "true"]);
    assert_refused(&o, 125, &["busy", "already running"]);
    let o = s.layerfs("start", &["busy"]);
    assert_refused(&o, 125, &["busy", "already running"]);
    let o = s.layerfs("rm", &["busy"]);
    assert_refused(&o, 1, &["busy", "running"]);
    let o = s.layerfs("rmi", &["img:1"]);
    assert_refused(&o, 1, &["img:1", "mounted"]);
    assert!(s.container_dir("busy").join("upper").is_dir());

    // A container `mount --image --container` holds: never mounted twice.
    {
        let _held = common::images::mount_image(&s.path, "img:1", Some("held"));
        let o = s.layerfs("run", &["--name", "held", "img:1", "true"]);
        assert_refused(&o, 125, &["held", "mounted at"]);
    }
    assert!(s.layerfs("rm", &["held"]).status.success());

    s.signal(pid, Signal::SIGTERM);
    let status = s.wait(pid);
    let mut rest = String::new();
    out.read_to_string(&mut rest).expect("rest of stdout");
    assert_eq!((status.code(), rest.as_str()), (Some(0), "bye\n"));
    s.assert_nothing_mounted();
    let o = s.layerfs("rm", &["busy"]);
    assert!(o.status.success(), "{}", explain(&o));
    assert!(s.container_names().is_empty());
}

#[test]
fn two_containers_of_one_image_at_once_share_its_layers() {
    let mut s = Store::new();
    let layers_before = manifest(&s.path.join("layers"));
    let script = |name: &str| format!("echo {name} > /who; {WAIT_FOR_TERM}");
    let (a, mut out_a) = s.spawn_ready(&["--name", "a", "img:1", "sh", "-c", &script("a")]);
    let (b, mut out_b) = s.spawn_ready(&["--name", "b", "img:1", "sh", "-c", &script("b")]);
    let names: Vec<String> = s
        .ps(false)
        .iter()
        .map(|r| r["name"].as_str().unwrap_or_default().to_string())
        .collect();
    assert_eq!(names, ["a", "b"]);
    // Both roots are mounted at once, each from its own container dir.
    let mounts = s.mounts();
    assert_eq!(mounts.len(), 2, "{mounts:?}");
    for pid in [a, b] {
        s.signal(pid, Signal::SIGTERM);
        assert!(s.wait(pid).success());
    }
    for out in [&mut out_a, &mut out_b] {
        let mut rest = String::new();
        out.read_to_string(&mut rest).expect("stdout");
        assert_eq!(rest, "bye\n");
    }
    s.assert_nothing_mounted();
    for name in ["a", "b"] {
        let who = s.container_dir(name).join("upper/who");
        assert_eq!(fs::read_to_string(&who).expect("/who"), format!("{name}\n"));
    }
    // The two images' layers are the same two directories, unchanged.
    let layer_dirs = fs::read_dir(s.path.join("layers/sha256"))
        .expect("layers/")
        .filter(|e| e.as_ref().is_ok_and(|e| e.path().is_dir()))
        .count();
    assert_eq!(layer_dirs, 2);
    assert_eq!(manifest(&s.path.join("layers")), layers_before);
}

#[test]
fn a_ctrl_c_reaches_the_container_not_its_mount_daemon() {
    let mut s = Store::new();
    let script = "trap 'cat /srv/hello; exit 4' INT; echo ready; while :; do sleep 0.05; done";
    let (pid, mut out, terminal) =
        s.spawn_ready_on_terminal(&["--rm", "img:1", "sh", "-c", script]);
    // The mount daemon and the --rm watcher are out of run's process group
    // (the terminal's foreground job), the container in it.
    let children = fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .expect("children of layerfs run");
    let mut helpers = 0;
    for child in children.split_whitespace() {
        let cmdline = fs::read(format!("/proc/{child}/cmdline")).unwrap_or_default();
        let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
        let pgid = nix::unistd::getpgid(Some(nix::unistd::Pid::from_raw(
            child.parse().expect("a pid"),
        )))
        .expect("getpgid");
        let helper = matches!(args.get(1), Some(&b"mount") | Some(&b"__reap"));
        helpers += usize::from(helper);
        assert_eq!(
            pgid.as_raw() == pid as i32,
            !helper,
            "{:?}",
            String::from_utf8_lossy(&cmdline)
        );
    }
    assert_eq!(helpers, 2);
    // ^C on the terminal: the kernel signals the foreground job, the
    // container included, once (run does not send it a second one).
    nix::unistd::write(&terminal, b"\x03").expect("^C to the terminal");
    let status = s.wait(pid);
    let mut rest = String::new();
    out.read_to_string(&mut rest).expect("rest of stdout");
    // The trap read the image through the mount: the daemon kept serving.
    assert_eq!((status.code(), rest.as_str()), (Some(4), "hello\n"));
    s.assert_nothing_mounted();
    assert!(s.container_names().is_empty());
}

/// Whether this machine has a cgroup v2 hierarchy with the memory
/// controller (unified mode, or a hybrid one that leaves memory to v2).
fn cgroup_v2_memory() -> bool {
    ["/sys/fs/cgroup", "/sys/fs/cgroup/unified"]
        .iter()
        .any(|root| {
            nix::sys::statfs::statfs(*root)
                .is_ok_and(|s| s.filesystem_type() == nix::sys::statfs::CGROUP2_SUPER_MAGIC)
                && fs::read_to_string(format!("{root}/cgroup.controllers"))
                    .is_ok_and(|c| c.split_whitespace().any(|w| w == "memory"))
        })
}

#[test]
fn memory_and_pids_limits_go_through_cgroup_v2_or_are_refused() {
    let s = Store::new();
    if !cgroup_v2_memory() {
        let o = s.run(&["--memory", "64m", "img:1", "true"]);
        assert_refused(&o, 125, &["--memory", "cgroup v2"]);
        let hybrid = nix::sys::statfs::statfs("/sys/fs/cgroup")
            .is_ok_and(|s| s.filesystem_type() != nix::sys::statfs::CGROUP2_SUPER_MAGIC);
        if hybrid {
            assert!(stdout(&o).is_empty());
            assert_refused(&o, 125, &["hybrid"]);
        }
        assert!(s.container_names().is_empty(), "nothing made");
        let o = s.run(&["--memory", "lots", "img:1", "true"]);
        assert_refused(&o, 125, &["--memory lots"]);
        return;
    }
    let o = s.run(&[
        "--rm",
        "--memory",
        "64m",
        "--pids-limit",
        "20",
        "img:1",
        "cat",
        "/proc/self/cgroup",
    ]);
    assert!(o.status.success(), "{}", explain(&o));
    let line = stdout(&o);
    let path = line
        .lines()
        .find_map(|l| l.strip_prefix("0::"))
        .expect("a cgroup v2 line");
    assert!(path.contains("/layerfs/run-"), "{line}");
    // Removed with the container.
    let root = if nix::sys::statfs::statfs("/sys/fs/cgroup")
        .is_ok_and(|s| s.filesystem_type() == nix::sys::statfs::CGROUP2_SUPER_MAGIC)
    {
        "/sys/fs/cgroup"
    } else {
        "/sys/fs/cgroup/unified"
    };
    assert!(!std::path::Path::new(&format!("{root}{path}")).exists());
}
