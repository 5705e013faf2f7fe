//! Behaviour of a live read-only mount beyond tree equality: many layers,
//! stable inode numbers, resumable readdir, signals, read-only errors.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::CString;
use std::fs;
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use common::mounts::LayerfsMount;
use sha2::{Digest, Sha256};

fn make_layers(root: &Path, count: usize) -> Vec<PathBuf> {
    // Bottom first on disk; returned top first.
    let mut layers: Vec<PathBuf> = (0..count)
        .map(|i| {
            let p = root.join(format!("{i:04}"));
            fs::create_dir_all(&p).unwrap();
            p
        })
        .collect();
    layers.reverse();
    layers
}

#[test]
fn a_thousand_layers_mount_and_merge() {
    const N: usize = 1000;
    let tmp = tempfile::tempdir().unwrap();
    let top_first = make_layers(tmp.path(), N);
    let mut expected = BTreeSet::new();
    for b in 0..N {
        let layer = &top_first[N - 1 - b];
        fs::create_dir_all(layer.join("d")).unwrap();
        fs::write(layer.join("d").join(format!("f{b}")), b.to_string()).unwrap();
        fs::write(layer.join("shared"), b.to_string()).unwrap();
        expected.insert(format!("f{b}"));
        // Every third layer deletes what the layer below added.
        if b % 3 == 0 && b > 0 {
            fs::write(layer.join("d").join(format!(".wh.f{}", b - 1)), "").unwrap();
            expected.remove(&format!("f{}", b - 1));
        }
    }
    let m = LayerfsMount::mount(&top_first, "");
    let seen: BTreeSet<String> = fs::read_dir(m.path().join("d"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(seen, expected);
    assert_eq!(
        fs::read_to_string(m.path().join("shared")).unwrap(),
        (N - 1).to_string()
    );
    assert_eq!(fs::read_to_string(m.path().join("d/f0")).unwrap(), "0");
    assert!(!m.path().join("d/f2").exists(), "whited out by layer 3");
}

fn inode_map(root: &Path) -> BTreeMap<PathBuf, u64> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for e in fs::read_dir(&dir).unwrap() {
            let e = e.unwrap();
            let md = fs::symlink_metadata(e.path()).unwrap();
            out.insert(e.path().strip_prefix(root).unwrap().to_path_buf(), md.ino());
            if md.is_dir() {
                stack.push(e.path());
            }
        }
    }
    out
}

#[test]
fn inode_numbers_are_unique_and_survive_a_remount() {
    let tmp = tempfile::tempdir().unwrap();
    let layers = make_layers(tmp.path(), 3);
    for (i, l) in layers.iter().enumerate() {
        for d in ["a", "a/b", "c"] {
            fs::create_dir_all(l.join(d)).unwrap();
            fs::write(l.join(d).join(format!("file{i}")), "x").unwrap();
        }
        fs::write(l.join("same-name"), i.to_string()).unwrap();
    }
    fs::hard_link(layers[2].join("c/file2"), layers[2].join("c/link2")).unwrap();
    let first = {
        let m = LayerfsMount::mount(&layers, "");
        inode_map(m.path())
    };
    let second = {
        let m = LayerfsMount::mount_lowers(&layers);
        inode_map(m.path())
    };
    assert_eq!(first, second, "same layers, same inode numbers");
    let mut by_ino: BTreeMap<u64, Vec<&PathBuf>> = BTreeMap::new();
    for (p, ino) in &first {
        by_ino.entry(*ino).or_default().push(p);
    }
    for (ino, paths) in by_ino {
        if paths.len() > 1 {
            let names: BTreeSet<_> = paths
                .iter()
                .map(|p| p.to_string_lossy().into_owned())
                .collect();
            assert_eq!(
                names,
                BTreeSet::from(["c/file2".to_string(), "c/link2".to_string()]),
                "inode {ino} shared by unrelated paths"
            );
        }
    }
}

/// getdents64 into a small buffer: (name, d_off) of each entry read.
fn getdents(fd: i32, buf: &mut [u8]) -> Vec<(Vec<u8>, i64)> {
    // SAFETY: buf is valid for its length.
    let n = unsafe { libc::syscall(libc::SYS_getdents64, fd, buf.as_mut_ptr(), buf.len()) };
    assert!(n >= 0, "getdents64: {}", std::io::Error::last_os_error());
    let mut out = Vec::new();
    let mut pos = 0usize;
    while pos < n as usize {
        let reclen = u16::from_ne_bytes([buf[pos + 16], buf[pos + 17]]) as usize;
        let d_off = i64::from_ne_bytes(buf[pos + 8..pos + 16].try_into().unwrap());
        let name = &buf[pos + 19..pos + reclen];
        let end = name.iter().position(|&b| b == 0).unwrap_or(name.len());
        out.push((name[..end].to_vec(), d_off));
        pos += reclen;
    }
    out
}

#[test]
fn readdir_resumed_at_an_offset_loses_and_repeats_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let layers = make_layers(tmp.path(), 3);
    let mut expected = BTreeSet::from([b".".to_vec(), b"..".to_vec()]);
    for (i, l) in layers.iter().enumerate() {
        fs::create_dir(l.join("big")).unwrap();
        for j in 0..700 {
            // Overlapping names across layers, so merging matters.
            let name = format!("entry-{}-{}", j % 500, if j < 500 { i } else { 9 });
            fs::write(l.join("big").join(&name), "").unwrap();
            expected.insert(name.into_bytes());
        }
    }
    let m = LayerfsMount::mount(&layers, "");
    let dir = CString::new(m.path().join("big").as_os_str().as_bytes()).unwrap();
    let mut seen = Vec::new();
    let mut offset: i64 = 0;
    let mut buf = vec![0u8; 1024];
    loop {
        // A fresh open for every batch: only the offset carries over.
        // SAFETY: valid C string; fd closed below.
        let fd = unsafe { libc::open(dir.as_ptr(), libc::O_RDONLY | libc::O_DIRECTORY) };
        assert!(fd >= 0);
        // SAFETY: fd is ours.
        assert_eq!(unsafe { libc::lseek(fd, offset, libc::SEEK_SET) }, offset);
        let batch = getdents(fd, &mut buf);
        // SAFETY: fd is ours.
        unsafe { libc::close(fd) };
        let Some(&(_, last)) = batch.last() else {
            break;
        };
        offset = last;
        seen.extend(batch.into_iter().map(|(n, _)| n));
    }
    let unique: BTreeSet<_> = seen.iter().cloned().collect();
    assert_eq!(unique.len(), seen.len(), "an entry was repeated");
    assert_eq!(unique, expected);
}

#[test]
fn stop_signals_unmount_a_foreground_daemon() {
    let tmp = tempfile::tempdir().unwrap();
    let layers = make_layers(tmp.path(), 2);
    for sig in [libc::SIGTERM, libc::SIGINT] {
        let m = LayerfsMount::mount(&layers, "");
        let pid = m.pid().expect("daemon running") as i32;
        // SAFETY: signalling our own child by pid.
        assert_eq!(unsafe { libc::kill(pid, sig) }, 0);
        let exit = m.unmount();
        assert!(
            exit.status.is_some_and(|s| s.success()),
            "signal {sig}: daemon ended with {:?}; log:\n{}",
            exit.status,
            exit.log
        );
    }
}

#[test]
fn big_files_read_back_exactly_and_writes_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let layers = make_layers(tmp.path(), 2);
    let mut data = vec![0u8; 8 << 20];
    let mut x: u64 = 0x1234_5678;
    for b in data.iter_mut() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *b = x as u8;
    }
    fs::write(layers[1].join("blob"), &data).unwrap();
    let m = LayerfsMount::mount(&layers, "");
    let mut got = Vec::new();
    fs::File::open(m.path().join("blob"))
        .unwrap()
        .read_to_end(&mut got)
        .unwrap();
    assert_eq!(Sha256::digest(&got), Sha256::digest(&data));
    // Two handles open at once (with passthrough they must reuse the
    // inode's backing id) read the same data.
    let mut a = fs::File::open(m.path().join("blob")).unwrap();
    let mut b = fs::File::open(m.path().join("blob")).unwrap();
    let (mut ha, mut hb) = (vec![0; 4096], vec![0; 4096]);
    a.read_exact(&mut ha).unwrap();
    b.read_exact(&mut hb).unwrap();
    assert_eq!(ha, hb);

    let err = fs::write(m.path().join("new"), "x").unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EROFS));
    let err = fs::create_dir(m.path().join("newdir")).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EROFS));
    let err = fs::OpenOptions::new()
        .append(true)
        .open(m.path().join("blob"))
        .unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EROFS));
    assert!(!layers[0].join("new").exists() && !layers[1].join("new").exists());
}

#[test]
fn generic_mount_flags_reach_the_kernel() {
    let tmp = tempfile::tempdir().unwrap();
    let layers = make_layers(tmp.path(), 2);
    let m = LayerfsMount::mount(&layers, "nosuid,noexec,noatime");
    let info = fs::read_to_string("/proc/self/mountinfo").unwrap();
    let mnt = m.path().to_str().unwrap();
    let line = info
        .lines()
        .find(|l| l.split(' ').nth(4) == Some(mnt))
        .expect("the mount in mountinfo");
    let opts: BTreeSet<&str> = line.split(' ').nth(5).unwrap().split(',').collect();
    for want in ["ro", "nosuid", "noexec", "noatime"] {
        assert!(opts.contains(want), "{want} missing from {line}");
    }
    assert!(
        !opts.contains("nodev"),
        "devices stay usable unless asked: {line}"
    );
}

/// A panic in a request handler (injected for a request naming `boom`)
/// answers EIO, is logged with the operation and path, and the mount keeps
/// serving: more panics than the daemon has worker threads, then ordinary
/// reads and writes, then a clean unmount.
#[test]
fn a_panic_in_a_handler_is_eio_and_the_mount_lives_on() {
    common::require_root();
    let tmp = common::tempdir("layerfs-panic-");
    let root = tmp.path();
    let (lower, upper, work) = (root.join("lower"), root.join("upper"), root.join("work"));
    for d in [&lower, &upper, &work] {
        fs::create_dir(d).unwrap();
    }
    fs::create_dir(lower.join("d")).unwrap();
    fs::write(lower.join("d/f"), b"lower data").unwrap();
    let opts = format!(
        "lowerdir={},upperdir={},workdir={}",
        common::escape_opt_path(&lower),
        common::escape_opt_path(&upper),
        common::escape_opt_path(&work)
    );
    let mount = LayerfsMount::try_mount_args_env(
        ["-o", opts.as_str()],
        &[("LAYERFS_INJECT_PANIC_NAME", "boom")],
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let m = mount.path().to_path_buf();
    for _ in 0..12 {
        let err = fs::symlink_metadata(m.join("d/boom")).expect_err("lookup of boom");
        assert_eq!(
            err.raw_os_error(),
            Some(libc::EIO),
            "lookup of d/boom: {err}"
        );
        let err = fs::write(m.join("boom"), b"x").expect_err("create of boom");
        assert_eq!(err.raw_os_error(), Some(libc::EIO), "create of boom: {err}");
    }
    assert_eq!(fs::read(m.join("d/f")).unwrap(), b"lower data");
    fs::write(m.join("d/f"), b"new").unwrap();
    assert_eq!(fs::read(m.join("d/f")).unwrap(), b"new");
    assert!(fs::read_dir(m.join("d")).unwrap().count() == 1);
    let log = mount.log();
    assert!(
        log.contains("panic in the handler") && log.contains("/d/boom") && log.contains("lookup"),
        "the daemon's log does not say which request panicked:\n{log}"
    );
    let exit = mount.unmount();
    exit.assert_clean();
    assert_eq!(fs::read(upper.join("d/f")).unwrap(), b"new");
}
