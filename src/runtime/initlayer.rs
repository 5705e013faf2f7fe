//! A container's init layer: the mount points the runtime needs (/proc,
//! /sys, /dev, /etc/hostname, /etc/hosts, /etc/resolv.conf) that the image
//! lacks, as a thin read-only layer between the image and the container's
//! writable layer. So nothing the runtime needs is ever written into the
//! container's own layer, and `layerfs diff` shows only what the command
//! did (Docker keeps a layer of the same kind).

use std::io;
use std::os::unix::fs::{PermissionsExt, lchown};
use std::path::{Path, PathBuf};

use crate::layers::FileKind;
use crate::union::LayerStack;

/// The directories and files a container's root must have.
const DIRS: [&str; 4] = ["proc", "sys", "dev", "etc"];
const FILES: [&str; 3] = ["etc/hostname", "etc/hosts", "etc/resolv.conf"];

fn context(e: impl Into<io::Error>, what: &str, path: &Path) -> io::Error {
    let e = e.into();
    io::Error::new(e.kind(), format!("{what} {}: {e}", path.display()))
}

/// Fill `dir` (empty) with what `image` (layers, top first) lacks. A
/// directory the image has is created with the image's owner, mode and
/// mtime, so the merged view shows it unchanged.
pub fn build(image_top_first: &[PathBuf], dir: &Path) -> io::Result<()> {
    let image = LayerStack::open(image_top_first).map_err(io::Error::other)?;
    let found = |path: &str| -> io::Result<Option<FileKind>> {
        let r = image.lookup_path(path).map_err(io::Error::other)?;
        Ok(r.map(|r| r.kind))
    };
    let mut usable_dirs: Vec<&str> = Vec::new();
    for d in DIRS {
        match found(d)? {
            None => make_dir(dir, d, &image)?,
            // The image's own directory: only needed here if a file goes
            // below it.
            Some(FileKind::Dir) => {}
            // Something else (a symlink /etc -> ...): resolved at run time,
            // inside the root.
            Some(_) => continue,
        }
        usable_dirs.push(d);
    }
    for f in FILES {
        let (parent, _) = f.split_once('/').unwrap_or(("", f));
        if !usable_dirs.contains(&parent) || found(f)?.is_some() {
            continue;
        }
        if !dir.join(parent).is_dir() {
            make_dir(dir, parent, &image)?;
        }
        let p = dir.join(f);
        std::fs::write(&p, b"").map_err(|e| context(e, "create", &p))?;
    }
    Ok(())
}

/// Make `dir/rel`, with the attributes the image gives `rel` if it has it.
fn make_dir(dir: &Path, rel: &str, image: &LayerStack) -> io::Result<()> {
    let p = dir.join(rel);
    std::fs::create_dir(&p).map_err(|e| context(e, "mkdir", &p))?;
    let shown = image.lookup_path(rel).map_err(io::Error::other)?;
    let (mode, uid, gid, mtime) = match shown {
        Some(r) => (
            r.stat.mode & 0o7777,
            r.stat.uid,
            r.stat.gid,
            Some(r.stat.mtime),
        ),
        None => (0o755, 0, 0, None),
    };
    lchown(&p, Some(uid), Some(gid)).map_err(|e| context(e, "chown", &p))?;
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode))
        .map_err(|e| context(e, "chmod", &p))?;
    if let Some((secs, nsecs)) = mtime {
        let t = nix::sys::time::TimeSpec::new(secs, nsecs);
        nix::sys::stat::utimensat(
            nix::fcntl::AT_FDCWD,
            &p,
            &t,
            &t,
            nix::sys::stat::UtimensatFlags::NoFollowSymlink,
        )
        .map_err(|e| context(e, "set times", &p))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn only_what_the_image_lacks_with_the_images_attributes() {
        let tmp = tempfile::tempdir().unwrap();
        let (top, bottom, init) = (
            tmp.path().join("top"),
            tmp.path().join("bottom"),
            tmp.path().join("init"),
        );
        std::fs::create_dir_all(bottom.join("etc")).unwrap();
        std::fs::create_dir_all(bottom.join("sys")).unwrap();
        std::fs::write(bottom.join("etc/hosts"), b"image's").unwrap();
        std::fs::create_dir_all(&top).unwrap();
        // The top layer deletes the image's /sys (an OCI whiteout).
        std::fs::write(top.join(".wh.sys"), b"").unwrap();
        std::fs::set_permissions(bottom.join("etc"), std::fs::Permissions::from_mode(0o750))
            .unwrap();
        lchown(bottom.join("etc"), Some(7), Some(8)).unwrap();
        std::fs::create_dir(&init).unwrap();
        build(&[top, bottom], &init).unwrap();
        let mut names: Vec<String> = walk(&init);
        names.sort();
        assert_eq!(
            names,
            [
                "dev",
                "etc",
                "etc/hostname",
                "etc/resolv.conf",
                "proc",
                "sys"
            ]
        );
        let etc = std::fs::metadata(init.join("etc")).unwrap();
        assert_eq!((etc.mode() & 0o7777, etc.uid(), etc.gid()), (0o750, 7, 8));
    }

    fn walk(root: &Path) -> Vec<String> {
        let mut out = Vec::new();
        for e in std::fs::read_dir(root).unwrap() {
            let p = e.unwrap().path();
            let rel = p.strip_prefix(root).unwrap().to_string_lossy().into_owned();
            if p.is_dir() {
                out.extend(walk(&p).into_iter().map(|c| format!("{rel}/{c}")));
            }
            out.push(rel);
        }
        out
    }
}
