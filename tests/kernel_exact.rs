//! Where layerfs must do exactly what the kernel's overlayfs does, each
//! checked against the kernel on the same layers (needs root):
//!
//! * `chown_minus_one_touches_ctime`: `chown(path, -1, -1)` changes nothing
//!   but ctime, on an upper file, a lower file (copied up) and a directory.
//! * `deep_paths`: a tree deeper than two PATH_MAX below the layer root,
//!   built through the mount and in a lower layer, worked at the bottom
//!   (create, open, read, write, chmod, chown, truncate, link, unlink,
//!   rmdir, copy-up), then removed as `rm -rf` would.
//! * `redirects_in_lower_layers`: an upper with redirects (a renamed lower
//!   directory) stacked as a lower layer of the next mount, also chained and
//!   pointing into an opaque directory; whole trees compared.

mod common;

use std::ffi::CString;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{KernelOverlay, LayerfsMount, escape_opt_path};

/// A lower layer, an upper and a work dir, in a fresh temp dir.
struct Dirs {
    lower: PathBuf,
    upper: PathBuf,
    work: PathBuf,
    _tmp: tempfile::TempDir,
}

impl Dirs {
    fn new(prefix: &str, fill_lower: impl FnOnce(&Path)) -> Dirs {
        common::require_root();
        let tmp = common::tempdir(prefix);
        let root = tmp.path().canonicalize().expect("canonical temp dir");
        let (lower, upper, work) = (root.join("lower"), root.join("upper"), root.join("work"));
        for d in [&lower, &upper, &work] {
            fs::create_dir(d).unwrap_or_else(|e| panic!("mkdir {}: {e}", d.display()));
        }
        fill_lower(&lower);
        Dirs {
            lower,
            upper,
            work,
            _tmp: tmp,
        }
    }

    fn uw(&self) -> String {
        format!(
            "upperdir={},workdir={}",
            escape_opt_path(&self.upper),
            escape_opt_path(&self.work)
        )
    }

    fn kernel(&self) -> KernelOverlay {
        KernelOverlay::mount(
            std::slice::from_ref(&self.lower),
            &format!("{},redirect_dir=on,index=on", self.uw()),
        )
    }

    fn layerfs(&self) -> LayerfsMount {
        LayerfsMount::mount(std::slice::from_ref(&self.lower), &self.uw())
    }
}

/// Runs `f` on a kernel overlay mount and on a layerfs mount of two copies
/// of one lower layer; returns what each gave, kernel first.
fn both<T>(prefix: &str, fill: impl Fn(&Path), f: impl Fn(&Path) -> T) -> (T, T) {
    let k = Dirs::new(prefix, &fill);
    let kernel = {
        let m = k.kernel();
        f(m.path())
    };
    let l = Dirs::new(prefix, &fill);
    let m = l.layerfs();
    let ours = f(m.path());
    let exit = m.unmount();
    assert!(
        exit.status.is_some_and(|s| s.success()),
        "daemon ended with {:?}:\n{}",
        exit.status,
        exit.log
    );
    (kernel, ours)
}

fn ctime(p: &Path) -> (i64, i64) {
    let md = fs::symlink_metadata(p).unwrap_or_else(|e| panic!("lstat {}: {e}", p.display()));
    (md.ctime(), md.ctime_nsec())
}

/// `fchownat(AT_FDCWD, p, -1, -1, AT_SYMLINK_NOFOLLOW)`.
fn chown_nothing(p: &Path) {
    let c = CString::new(p.as_os_str().as_bytes()).expect("no NUL");
    // SAFETY: a valid C string; -1, -1 changes no id.
    let rc = unsafe {
        libc::fchownat(
            libc::AT_FDCWD,
            c.as_ptr(),
            u32::MAX,
            u32::MAX,
            libc::AT_SYMLINK_NOFOLLOW,
        )
    };
    assert_eq!(
        rc,
        0,
        "chown -1:-1 {}: {}",
        p.display(),
        std::io::Error::last_os_error()
    );
}

#[test]
fn chown_minus_one_touches_ctime() {
    let fill = |l: &Path| {
        fs::write(l.join("lower-file"), b"lower").expect("write lower file");
        fs::create_dir(l.join("lower-dir")).expect("mkdir lower dir");
    };
    let run = |m: &Path| -> Vec<(String, bool)> {
        fs::write(m.join("upper-file"), b"upper").expect("create upper file");
        fs::create_dir(m.join("upper-dir")).expect("mkdir upper dir");
        let mut seen = Vec::new();
        for name in ["upper-file", "upper-dir", "lower-file", "lower-dir"] {
            let p = m.join(name);
            let before = ctime(&p);
            // The clock the filesystem stamps ctime with moves in ticks: a
            // pause of several ticks makes any new stamp a later one.
            std::thread::sleep(Duration::from_millis(30));
            chown_nothing(&p);
            seen.push((name.to_string(), ctime(&p) > before));
        }
        seen
    };
    let (kernel, ours) = both("layerfs-ctime-", fill, run);
    assert!(
        kernel.iter().all(|(_, changed)| *changed),
        "the kernel is the reference: {kernel:?}"
    );
    assert_eq!(
        ours, kernel,
        "ctime changed after chown -1:-1 (layerfs vs kernel)"
    );
}
