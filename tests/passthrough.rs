//! FUSE passthrough on writable mounts (needs root):
//!
//! * `handles_across_copy_up_as_the_kernel`: one script of handles held
//!   open across a copy-up, a write through another handle, mmap, O_APPEND
//!   and a write by another user to a setuid file runs on layerfs and on
//!   the kernel's overlayfs; everything read back, and the merged trees,
//!   must be equal. Mixing a page-cache handle and a passthrough handle on
//!   one inode makes the kernel fail the open (EIO), so this also checks
//!   that layerfs never does.
//! * `handles_across_metacopy_data_copy_up_as_the_kernel`: the same with
//!   `metacopy=on` on both sides, the lower file chmod-ed first (its data
//!   stays below until the write copies it into the upper file in place).
//! * `upper_file_reads_bypass_the_daemon`: reading a file whose data is in
//!   the upper layer must not go through the daemon (its read bytes, from
//!   /proc/PID/io, stay far below the file's size), while a lower file on
//!   the same mount still does (it stays in the page cache, see
//!   docs/architecture.md).

mod common;

use std::fs;
use std::io::{Read, Write};
use std::os::unix::fs::{FileExt, PermissionsExt};
use std::path::Path;
use std::process::Command;

use common::stack::{Stack, step};
use common::{Dialect, DiffOptions, KernelOverlay, LayerfsMount, diff_with, snapshot};

/// The script; returns what each step read, to compare between the two.
/// `chmod_first`: the lower file is chmod-ed before it is opened (with
/// metacopy=on, copied up without its data).
fn run_script(root: &Path, chmod_first: bool) -> Vec<String> {
    let p = |rel: &str| root.join(rel);
    let mut seen = Vec::new();
    if chmod_first {
        step(
            "chmod lower file",
            fs::set_permissions(p("etc/hostname"), fs::Permissions::from_mode(0o640)),
        );
    }
    let read_at = |f: &fs::File, what: &str, seen: &mut Vec<String>| {
        let mut buf = vec![0; 256];
        let n = step(what, f.read_at(&mut buf, 0));
        seen.push(format!("{what}: {:?}", String::from_utf8_lossy(&buf[..n])));
    };

    // A lower file held open read-only while another handle copies it up.
    let lower_ro = step("open lower ro", fs::File::open(p("etc/hostname")));
    read_at(&lower_ro, "lower before copy-up", &mut seen);
    {
        let mut w = step(
            "open lower for append",
            fs::OpenOptions::new().append(true).open(p("etc/hostname")),
        );
        step("append", w.write_all(b"appended\n"));
    }
    read_at(&lower_ro, "old handle after copy-up", &mut seen);
    let again = step("reopen", fs::File::open(p("etc/hostname")));
    read_at(&again, "new handle after copy-up", &mut seen);
    drop((lower_ro, again));

    // Now an upper file: readers and writers opened in turn, all at once.
    let copied = step(
        "open copied-up rw",
        fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(p("etc/hostname")),
    );
    let copied_ro = step("open copied-up ro", fs::File::open(p("etc/hostname")));
    step("pwrite", copied.write_all_at(b"HOST", 0));
    read_at(&copied_ro, "reader sees pwrite", &mut seen);
    seen.push(format!(
        "size after pwrite: {}",
        step("stat", fs::metadata(p("etc/hostname"))).len()
    ));
    drop((copied, copied_ro));

    // A new file: created, written, read by a handle opened before a
    // second writer, extended through a shared mapping.
    step("create new", fs::write(p("new"), "0123456789\n"));
    let reader = step("open new ro", fs::File::open(p("new")));
    let writer = step(
        "open new rw",
        fs::OpenOptions::new().read(true).write(true).open(p("new")),
    );
    step("extend", writer.set_len(8192));
    step(
        "write through a shared mapping",
        common::sys::write_through_shared_map(&writer, 8192, 4096, b"mapped"),
    );
    let mut tail = vec![0; 6];
    step("read mapped bytes", reader.read_exact_at(&mut tail, 4096));
    seen.push(format!("mapped: {:?}", String::from_utf8_lossy(&tail)));
    seen.push(format!(
        "size after mmap: {}",
        step("stat", fs::metadata(p("new"))).len()
    ));
    drop((reader, writer));

    // O_APPEND through two handles open at once.
    step("create log", fs::write(p("log"), ""));
    let append = || fs::OpenOptions::new().append(true).open(p("log"));
    let (mut first, mut second) = (step("open append", append()), step("open append", append()));
    step("append one", first.write_all(b"one\n"));
    step("append two", second.write_all(b"two\n"));
    step("append three", first.write_all(b"three\n"));
    drop((first, second));
    seen.push(format!(
        "log: {:?}",
        step("read log", fs::read_to_string(p("log")))
    ));

    // A write by another user to a setuid file clears the bit.
    step("create suid", fs::write(p("suid"), "x"));
    step(
        "chmod 4777",
        fs::set_permissions(p("suid"), fs::Permissions::from_mode(0o4777)),
    );
    let keep_open = step("hold suid open", fs::File::open(p("suid")));
    let status = step(
        "write as uid 1000",
        Command::new("setpriv")
            .args(["--reuid=1000", "--regid=1000", "--clear-groups", "--"])
            .args(["sh", "-c", "printf y >> \"$0\""])
            .arg(p("suid"))
            .status(),
    );
    assert!(status.success(), "the write as uid 1000 failed: {status}");
    drop(keep_open);
    let meta = step("stat suid", fs::metadata(p("suid")));
    seen.push(format!(
        "suid after write: mode {:o} size {}",
        meta.permissions().mode(),
        meta.len()
    ));
    seen
}

/// Run the script on the kernel's overlayfs and on layerfs with the same
/// extra options; the reads and the merged trees must be equal.
fn same_as_the_kernel(prefix: &str, extra: &str, chmod_first: bool) {
    let kernel = Stack::new(&format!("{prefix}-kernel"), "demo", Dialect::OverlayTrusted);
    let ours = Stack::new(
        &format!("{prefix}-layerfs"),
        "demo",
        Dialect::OverlayTrusted,
    );

    let k = KernelOverlay::mount(&kernel.layers, &format!("{},index=on{extra}", kernel.uw()));
    let want = run_script(k.path(), chmod_first);
    let want_tree = snapshot(k.path());
    drop(k);

    let m = LayerfsMount::mount(&ours.layers, &format!("{}{extra}", ours.uw()));
    let got = run_script(m.path(), chmod_first);
    let got_tree = snapshot(m.path());
    m.unmount().assert_clean();

    assert_eq!(got, want, "what the handles read differs from the kernel");
    // The two runs write at different moments: mtimes of what they wrote
    // differ by that much.
    let opts = DiffOptions {
        dir_sizes: false,
        mtimes: false,
        ..DiffOptions::default()
    };
    let d = diff_with(&want_tree, &got_tree, &opts);
    assert!(d.is_empty(), "merged trees differ:\n{}", d.join("\n"));
}

#[test]
fn handles_across_copy_up_as_the_kernel() {
    same_as_the_kernel("passthrough", "", false);
}

/// With metacopy=on a chmod leaves the data below: the handles then meet
/// the data copy-up, in place, of a file whose metadata is in the upper.
#[test]
fn handles_across_metacopy_data_copy_up_as_the_kernel() {
    same_as_the_kernel("passthrough-metacopy", ",metacopy=on,redirect_dir=on", true);
}

/// Bytes the process has read through read(2) and friends so far.
fn read_bytes(pid: u32) -> u64 {
    let io = step(
        "read /proc/PID/io",
        fs::read_to_string(format!("/proc/{pid}/io")),
    );
    io.lines()
        .find_map(|l| l.strip_prefix("rchar: "))
        .and_then(|v| v.trim().parse().ok())
        .expect("rchar in /proc/PID/io")
}

#[test]
fn upper_file_reads_bypass_the_daemon() {
    const SIZE: usize = 16 << 20;
    let s = Stack::new("passthrough-reads", "demo", Dialect::OverlayTrusted);
    let big: Vec<u8> = (0..SIZE).map(|i| (i * 7 % 251) as u8).collect();
    step(
        "lower big file",
        fs::write(s.layers[0].join("lowerbig"), &big),
    );
    let m = LayerfsMount::mount(&s.layers, &s.uw());
    let pid = m.pid().expect("daemon pid");
    step(
        "write upper file",
        fs::write(m.path().join("upperbig"), &big),
    );

    let through_daemon = |name: &str| {
        // Each read starts with an empty page cache, so the data must come
        // from the backing file or from the daemon.
        step("sync", Command::new("sync").status());
        step("drop caches", fs::write("/proc/sys/vm/drop_caches", "3"));
        let before = read_bytes(pid);
        let mut got = Vec::new();
        step(
            name,
            fs::File::open(m.path().join(name)).and_then(|mut f| f.read_to_end(&mut got)),
        );
        assert!(got == big, "{name}: wrong data read back");
        read_bytes(pid) - before
    };
    let upper = through_daemon("upperbig");
    let lower = through_daemon("lowerbig");
    m.unmount().assert_clean();
    assert!(
        upper < SIZE as u64 / 16,
        "reading the upper file went through the daemon ({upper} bytes read by it)"
    );
    assert!(
        lower >= SIZE as u64,
        "a lower file on a writable mount is read by the daemon ({lower} bytes)"
    );
}
