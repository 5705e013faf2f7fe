//! Permissions for other users (needs root): the same script of calls, run
//! as `nobody` inside a layerfs mount and inside the kernel's overlayfs over
//! identical copies of the layers, gives the same transcript (each call's
//! exit status and message) and leaves the same trees: access checks,
//! sticky directories, setuid/setgid cleared on write and on chown,
//! timestamps only for the owner, protected hard links, owners of new
//! objects, copy-up with the mounter's credentials.

mod common;

use std::fs;
use std::os::unix::fs::{PermissionsExt, chown};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Command;

use common::{KernelOverlay, LayerfsMount};

const NOBODY: u32 = 65534;
const NOGROUP: u32 = 65534;

/// The lower layer, as root made it.
fn make_lower(lower: &Path) {
    let dir = |rel: &str, mode: u32, owner: u32| {
        let p = lower.join(rel);
        fs::create_dir_all(&p).unwrap();
        chown(&p, Some(owner), Some(owner)).unwrap();
        fs::set_permissions(&p, fs::Permissions::from_mode(mode)).unwrap();
    };
    let file = |rel: &str, mode: u32, owner: u32| {
        let p = lower.join(rel);
        fs::write(&p, format!("{rel}\n")).unwrap();
        chown(&p, Some(owner), Some(owner)).unwrap();
        fs::set_permissions(&p, fs::Permissions::from_mode(mode)).unwrap();
    };
    fs::set_permissions(lower, fs::Permissions::from_mode(0o755)).unwrap();
    dir("pub", 0o777, 0);
    dir("sticky", 0o1777, 0);
    dir("private", 0o700, 0);
    dir("mine", 0o755, NOBODY);
    dir("sgid", 0o2777, 0);
    file("private/secret", 0o644, 0);
    file("sticky/roots", 0o666, 0);
    file("sticky/nobodys", 0o644, NOBODY);
    file("ro", 0o644, 0);
    file("rw", 0o666, 0);
    file("noread", 0o600, 0);
    file("mine/suid", 0o4755, NOBODY);
    file("mine/sgid-exec", 0o2775, NOBODY);
    file("mine/plain", 0o644, NOBODY);
    file("pub/roots-in-pub", 0o666, 0);
    // Written or truncated by nobody, and by root (who keeps the bits).
    file("mine/suid-trunc", 0o4755, NOBODY);
    file("pub/suid-root", 0o4777, 0);
    file("pub/suid-otrunc", 0o4777, 0);
    file("pub/sgid-exec", 0o2777, 0);
    file("pub/sgid-noexec", 0o2666, 0);
    file("pub/root-writes-suid", 0o4777, NOBODY);
    file("pub/root-truncates-sgid", 0o2777, NOBODY);
}

/// Each line is one call; the transcript has its exit status and output.
const SCRIPT: &str = r#"
t() { out=$("$@" 2>&1); echo "$? $* :: $(echo "$out" | sed 's/^[^:]*: //' | head -1)"; }
t cat private/secret
t ls private
t cat noread
t sh -c 'echo x >> ro'
t sh -c 'echo x >> rw'
t cat rw
t rm sticky/roots
t rm sticky/nobodys
t mv sticky/roots pub/moved
t sh -c 'echo y >> mine/suid'
t stat -c '%a %u %g' mine/suid
t chown 65534:0 mine/sgid-exec
t stat -c '%a %u %g' mine/sgid-exec
t chmod 4755 mine/plain
t stat -c '%a' mine/plain
t chmod 777 ro
t chown 65534 ro
t touch -d @0 ro
t touch ro
t touch -d @0 rw
t touch rw
t touch -d @86400 mine/plain
t stat -c '%Y' mine/plain
t ln ro pub/link-to-ro
t ln rw pub/link-to-rw
t ln mine/plain pub/link-to-plain
t ln -s ro pub/sym
t readlink pub/sym
t touch pub/new
t stat -c '%a %u %g' pub/new
t mkdir pub/d
t stat -c '%a %u %g' pub/d
t touch sgid/new
t stat -c '%a %u %g' sgid/new
t mkdir sgid/d
t stat -c '%a %u %g' sgid/d
t mv pub/roots-in-pub pub/renamed
t rm pub/renamed
t rmdir private
t mkdir private/d
t touch mine/new
t mv mine/new mine/newer
t rm mine/newer
t rmdir sgid/d
t mkfifo pub/fifo
t mknod pub/null c 1 3
t setfattr -n user.x -v 1 ro
t setfattr -n user.x -v 1 mine/plain
t getfattr -n user.x --only-values mine/plain
t setfattr -n trusted.x -v 1 mine/plain
t ls sgid
t ls -1 pub
t truncate -s 1 mine/suid-trunc
t stat -c '%a' mine/suid-trunc
t sh -c 'echo y >> pub/suid-root'
t sh -c ': > pub/suid-otrunc'
t sh -c 'echo y >> pub/sgid-exec'
t sh -c 'echo y >> pub/sgid-noexec'
t stat -c '%a' pub/suid-root pub/suid-otrunc pub/sgid-exec pub/sgid-noexec
t ls -1 mine
"#;

/// Run as root afterwards: CAP_FSETID keeps setuid and setgid bits on a
/// write and a truncate.
const ROOT_SCRIPT: &str = r#"
t() { out=$("$@" 2>&1); echo "$? $* :: $(echo "$out" | sed 's/^[^:]*: //' | head -1)"; }
t sh -c 'echo y >> pub/root-writes-suid'
t truncate -s 1 pub/root-truncates-sgid
t stat -c '%a' pub/root-writes-suid pub/root-truncates-sgid
"#;

/// Runs the script as nobody, then the root script, with `dir` as the
/// working directory.
fn transcript(dir: &Path) -> String {
    // The mount point's temp parent must let nobody through.
    if let Some(parent) = dir.parent() {
        fs::set_permissions(parent, fs::Permissions::from_mode(0o755)).unwrap();
    }
    let run = |script: &str, as_nobody: bool| {
        let mut cmd = Command::new("sh");
        cmd.arg("-c")
            .arg(script)
            .current_dir(dir)
            .env_clear()
            .env("PATH", "/usr/bin:/bin:/usr/sbin:/sbin")
            .env("LC_ALL", "C");
        if as_nobody {
            cmd.uid(NOBODY).gid(NOGROUP);
        }
        let out = cmd.output().expect("running the script");
        assert!(
            out.status.success(),
            "the script failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    run(SCRIPT, true) + &run(ROOT_SCRIPT, false)
}

#[test]
fn other_users_meet_the_kernels_permission_checks() {
    common::require_root();
    let tmp = common::tempdir("layerfs-perm-");
    let root = tmp.path();
    // Other users must reach the layers' parent dirs as in a real setup.
    fs::set_permissions(root, fs::Permissions::from_mode(0o755)).unwrap();
    let mut tx = Vec::new();
    let mut trees = Vec::new();
    for side in ["kernel", "layerfs"] {
        let base = root.join(side);
        let (lower, upper, work) = (base.join("lower"), base.join("upper"), base.join("work"));
        for d in [&base, &lower, &upper, &work] {
            fs::create_dir_all(d).unwrap();
        }
        fs::set_permissions(&base, fs::Permissions::from_mode(0o755)).unwrap();
        make_lower(&lower);
        let opts = format!(
            "upperdir={},workdir={}",
            common::escape_opt_path(&upper),
            common::escape_opt_path(&work)
        );
        let layers = vec![lower.clone()];
        if side == "kernel" {
            let m = KernelOverlay::mount(&layers, &format!("{opts},redirect_dir=on,index=on"));
            tx.push(transcript(m.path()));
            trees.push(common::snapshot(m.path()));
        } else {
            let m = LayerfsMount::mount(&layers, &opts);
            tx.push(transcript(m.path()));
            trees.push(common::snapshot(m.path()));
        }
    }
    let (kernel, ours) = (&tx[0], &tx[1]);
    let differ: Vec<String> = kernel
        .lines()
        .zip(ours.lines())
        .filter(|(k, o)| k != o)
        .map(|(k, o)| format!("kernel:  {k}\nlayerfs: {o}"))
        .collect();
    assert!(
        differ.is_empty() && kernel.lines().count() == ours.lines().count(),
        "the transcripts differ:\n{}\n\nkernel's:\n{kernel}",
        differ.join("\n")
    );
    // The script must have met refusals and successes alike.
    assert!(kernel.contains("Permission denied") && kernel.contains("Operation not permitted"));
    // Everything but times, which the script's calls set at two moments.
    let opts = common::DiffOptions {
        mtimes: false,
        ..Default::default()
    };
    let problems = common::diff_with(&trees[0], &trees[1], &opts);
    assert!(
        problems.is_empty(),
        "the trees differ after the script:\n{}",
        problems.join("\n")
    );
}
