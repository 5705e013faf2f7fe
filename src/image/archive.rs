//! Where an import reads from: a directory (an OCI layout) or a tar of one
//! (an OCI archive, a `docker save` archive). A tar is indexed once, then
//! each file is read in place, so a blob is never copied before it is
//! checked.

use std::collections::HashMap;
use std::ffi::CString;
use std::fs::File;
use std::io::{self, Read};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use super::{ImageError, Result};
use crate::layers::sys as lsys;

/// How many links to follow inside an archive before giving up.
const MAX_LINK_HOPS: usize = 8;

pub enum Source {
    Dir {
        path: PathBuf,
        fd: OwnedFd,
    },
    Tar {
        path: PathBuf,
        file: File,
        /// Regular files: name -> (offset of the data, size).
        files: HashMap<String, (u64, u64)>,
        /// Symlinks and hard links: name -> the name they lead to.
        links: HashMap<String, String>,
    },
}

/// A file's name inside the source: components without `.`, refusing
/// absolute paths and `..` (names come from hostile manifests too).
fn normalize(name: &str) -> Option<String> {
    let mut parts = Vec::new();
    for c in name.split('/') {
        match c {
            "" | "." => {}
            ".." => return None,
            c => parts.push(c),
        }
    }
    if parts.is_empty() || name.starts_with('/') {
        return None;
    }
    Some(parts.join("/"))
}

/// A link target inside a tar, `..` resolved by name; None when it climbs
/// above the archive's root.
fn resolve_in_archive(path: &str) -> Option<String> {
    let mut parts: Vec<&str> = Vec::new();
    for c in path.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                parts.pop()?;
            }
            c => parts.push(c),
        }
    }
    if parts.is_empty() || path.starts_with('/') {
        return None;
    }
    Some(parts.join("/"))
}

impl Source {
    pub fn open(path: &Path) -> Result<Source> {
        let meta = std::fs::metadata(path).map_err(|e| ImageError::io("open", path, e))?;
        if meta.is_dir() {
            let fd = lsys::open_dir_path(path).map_err(|e| ImageError::io("open", path, e))?;
            return Ok(Source::Dir {
                path: path.to_path_buf(),
                fd,
            });
        }
        let file = File::open(path).map_err(|e| ImageError::io("open", path, e))?;
        let mut files = HashMap::new();
        let mut links = HashMap::new();
        let bad = |e: io::Error| {
            ImageError::new(format!(
                "{}: not a directory or a readable tar archive: {e}",
                path.display()
            ))
        };
        let mut archive = tar::Archive::new(&file);
        for entry in archive.entries().map_err(bad)? {
            let entry = entry.map_err(bad)?;
            let raw = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
            let Some(name) = normalize(&raw) else {
                continue;
            };
            match entry.header().entry_type() {
                tar::EntryType::Regular | tar::EntryType::Continuous => {
                    files.insert(name, (entry.raw_file_position(), entry.size()));
                }
                kind @ (tar::EntryType::Symlink | tar::EntryType::Link) => {
                    let Some(target) = entry.link_name_bytes() else {
                        continue;
                    };
                    let target = String::from_utf8_lossy(&target).into_owned();
                    // A symlink is relative to its directory; a hard link
                    // names a path from the archive's root.
                    let joined = match (kind, name.rsplit_once('/')) {
                        (tar::EntryType::Symlink, Some((dir, _))) => format!("{dir}/{target}"),
                        _ => target,
                    };
                    if let Some(t) = resolve_in_archive(&joined) {
                        links.insert(name, t);
                    }
                }
                _ => {}
            }
        }
        if files.is_empty() {
            return Err(ImageError::new(format!(
                "{}: not a directory or a tar archive holding an image",
                path.display()
            )));
        }
        Ok(Source::Tar {
            path: path.to_path_buf(),
            file,
            files,
            links,
        })
    }

    pub fn path(&self) -> &Path {
        match self {
            Source::Dir { path, .. } | Source::Tar { path, .. } => path,
        }
    }

    pub fn exists(&self, name: &str) -> bool {
        self.open_file(name).is_ok()
    }

    /// Open one file of the source: a reader and its size.
    pub fn open_file(&self, name: &str) -> Result<(Box<dyn Read + '_>, u64)> {
        let missing = || {
            ImageError::new(format!(
                "{}: {name} not found in the image",
                self.path().display()
            ))
        };
        let norm = normalize(name).ok_or_else(missing)?;
        match self {
            Source::Dir { fd, path } => {
                let c = CString::new(norm.as_bytes()).map_err(|_| missing())?;
                let f = lsys::openat_beneath(fd.as_fd(), &c, libc::O_RDONLY).map_err(|e| {
                    if e.raw_os_error() == Some(libc::ENOENT) {
                        missing()
                    } else {
                        ImageError::io("open", &path.join(&norm), e)
                    }
                })?;
                let file = File::from(f);
                let meta = file
                    .metadata()
                    .map_err(|e| ImageError::io("stat", &path.join(&norm), e))?;
                if !meta.is_file() {
                    return Err(missing());
                }
                Ok((Box::new(file), meta.len()))
            }
            Source::Tar {
                file, files, links, ..
            } => {
                let mut cur = norm;
                for _ in 0..MAX_LINK_HOPS {
                    if let Some(&(offset, size)) = files.get(&cur) {
                        let section = Section {
                            file,
                            pos: offset,
                            end: offset + size,
                        };
                        return Ok((Box::new(section), size));
                    }
                    cur = links.get(&cur).ok_or_else(missing)?.clone();
                }
                Err(missing())
            }
        }
    }

    /// A small file (index, manifest, config) read whole, at most `limit`
    /// bytes.
    pub fn read_small(&self, name: &str, limit: u64) -> Result<Vec<u8>> {
        let (reader, size) = self.open_file(name)?;
        if size > limit {
            return Err(ImageError::new(format!(
                "{}: {name} is {size} bytes, more than the {limit} allowed",
                self.path().display()
            )));
        }
        let mut buf = Vec::with_capacity(size as usize);
        reader
            .take(limit)
            .read_to_end(&mut buf)
            .map_err(|e| ImageError::new(format!("{}: {name}: {e}", self.path().display())))?;
        Ok(buf)
    }
}

/// One file's bytes inside a tar, read in place.
struct Section<'a> {
    file: &'a File,
    pos: u64,
    end: u64,
}

impl Read for Section<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let left = self.end.saturating_sub(self.pos);
        let want = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
        if want == 0 {
            return Ok(0);
        }
        let n = self.file.read_at(&mut buf[..want], self.pos)?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the archive ends inside a file",
            ));
        }
        self.pos += n as u64;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::normalize;

    #[test]
    fn names_stay_inside() {
        assert_eq!(
            normalize("./blobs//sha256/ab").as_deref(),
            Some("blobs/sha256/ab")
        );
        assert_eq!(normalize("../x"), None);
        assert_eq!(normalize("/etc/passwd"), None);
        assert_eq!(normalize("."), None);
        assert_eq!(
            super::resolve_in_archive("bbb/../aaa/layer.tar").as_deref(),
            Some("aaa/layer.tar")
        );
        assert_eq!(super::resolve_in_archive("a/../../x"), None);
    }
}
