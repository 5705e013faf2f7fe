//! The `meta` file of a fixture: what git cannot hold, applied after copying.
//!
//! The format is documented in `layers-fixtures/README.md`. In short: one
//! operation per line, fields separated by spaces or tabs, `#` starts a
//! comment line, and inside a field `\\`, `\n`, `\t`, `\s` (space), `\0` and
//! `\xHH` are escapes. A field that is exactly `""` is the empty string.
//! Paths are relative to the fixture directory (so they start with the layer
//! directory, e.g. `00-base/etc/passwd`).

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::fs;
use std::io::{Seek, SeekFrom, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::{Component, Path, PathBuf};

/// One parsed line of a meta file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    Mkdir(Vec<u8>),
    Write(Vec<u8>, Vec<u8>),
    File(Vec<u8>, u64),
    Sparse(Vec<u8>, u64),
    Symlink { target: Vec<u8>, path: Vec<u8> },
    Link { existing: Vec<u8>, new: Vec<u8> },
    Fifo(Vec<u8>),
    Socket(Vec<u8>),
    CharDev(Vec<u8>, u32, u32),
    BlockDev(Vec<u8>, u32, u32),
    Chmod(u32, Vec<u8>),
    Chown(u32, u32, Vec<u8>),
    Xattr(Vec<u8>, Vec<u8>, Vec<u8>),
    Rm(Vec<u8>),
    Mtime(Vec<u8>, i64),
}

/// A parse error with its line number (1-based).
#[derive(Debug)]
pub struct MetaError {
    pub line: usize,
    pub msg: String,
}

impl std::fmt::Display for MetaError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "line {}: {}", self.line, self.msg)
    }
}

/// Decodes the escapes of one field.
pub fn unescape(field: &str) -> Result<Vec<u8>, String> {
    if field == "\"\"" {
        return Ok(Vec::new());
    }
    let b = field.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] != b'\\' {
            out.push(b[i]);
            i += 1;
            continue;
        }
        let Some(&c) = b.get(i + 1) else {
            return Err(format!("field {field:?} ends with a lone backslash"));
        };
        match c {
            b'\\' => out.push(b'\\'),
            b'n' => out.push(b'\n'),
            b't' => out.push(b'\t'),
            b's' => out.push(b' '),
            b'0' => out.push(0),
            b'x' => {
                let hex = b
                    .get(i + 2..i + 4)
                    .and_then(|h| std::str::from_utf8(h).ok())
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                    .ok_or_else(|| format!("field {field:?}: \\x needs two hex digits"))?;
                out.push(hex);
                i += 2;
            }
            other => {
                return Err(format!(
                    "field {field:?}: unknown escape \\{}",
                    other as char
                ));
            }
        }
        i += 2;
    }
    Ok(out)
}

/// Parses a size: decimal digits with an optional binary suffix K, M or G.
fn parse_size(s: &str) -> Result<u64, String> {
    let (digits, mult) = match s.as_bytes().last() {
        Some(b'K') => (&s[..s.len() - 1], 1u64 << 10),
        Some(b'M') => (&s[..s.len() - 1], 1 << 20),
        Some(b'G') => (&s[..s.len() - 1], 1 << 30),
        _ => (s, 1),
    };
    digits
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(mult))
        .ok_or_else(|| format!("bad size {s:?}"))
}

fn parse_u32(s: &str, what: &str) -> Result<u32, String> {
    s.parse().map_err(|_| format!("bad {what} {s:?}"))
}

/// Parses a whole meta file.
pub fn parse(text: &str) -> Result<Vec<Op>, MetaError> {
    let mut ops = Vec::new();
    for (idx, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let err = |msg: String| MetaError { line: idx + 1, msg };
        let fields: Vec<&str> = line.split([' ', '\t']).filter(|f| !f.is_empty()).collect();
        let (op, args) = fields.split_first().expect("non-empty line has a field");
        let want = |n: usize| -> Result<(), MetaError> {
            if args.len() == n {
                Ok(())
            } else {
                Err(err(format!(
                    "`{op}` takes {n} argument(s), found {}",
                    args.len()
                )))
            }
        };
        let u = |i: usize| unescape(args[i]).map_err(err);
        let parsed = match *op {
            "mkdir" => {
                want(1)?;
                Op::Mkdir(u(0)?)
            }
            "write" => {
                want(2)?;
                Op::Write(u(0)?, u(1)?)
            }
            "file" => {
                want(2)?;
                Op::File(u(0)?, parse_size(args[1]).map_err(err)?)
            }
            "sparse" => {
                want(2)?;
                Op::Sparse(u(0)?, parse_size(args[1]).map_err(err)?)
            }
            "symlink" => {
                want(2)?;
                Op::Symlink {
                    target: u(0)?,
                    path: u(1)?,
                }
            }
            "link" => {
                want(2)?;
                Op::Link {
                    existing: u(0)?,
                    new: u(1)?,
                }
            }
            "fifo" => {
                want(1)?;
                Op::Fifo(u(0)?)
            }
            "socket" => {
                want(1)?;
                Op::Socket(u(0)?)
            }
            "chardev" | "blockdev" => {
                want(3)?;
                let major = parse_u32(args[1], "major").map_err(err)?;
                let minor = parse_u32(args[2], "minor").map_err(err)?;
                if *op == "chardev" {
                    Op::CharDev(u(0)?, major, minor)
                } else {
                    Op::BlockDev(u(0)?, major, minor)
                }
            }
            "chmod" => {
                want(2)?;
                let mode = u32::from_str_radix(args[0], 8)
                    .ok()
                    .filter(|m| *m <= 0o7777)
                    .ok_or_else(|| err(format!("bad octal mode {:?}", args[0])))?;
                Op::Chmod(mode, u(1)?)
            }
            "chown" => {
                want(2)?;
                let (uid, gid) = args[0]
                    .split_once(':')
                    .ok_or_else(|| err(format!("chown wants UID:GID, got {:?}", args[0])))?;
                Op::Chown(
                    parse_u32(uid, "uid").map_err(err)?,
                    parse_u32(gid, "gid").map_err(err)?,
                    u(1)?,
                )
            }
            "xattr" => {
                want(3)?;
                Op::Xattr(u(0)?, u(1)?, u(2)?)
            }
            "rm" => {
                want(1)?;
                Op::Rm(u(0)?)
            }
            "mtime" => {
                want(2)?;
                let secs = args[1]
                    .parse()
                    .map_err(|_| err(format!("bad seconds {:?}", args[1])))?;
                Op::Mtime(u(0)?, secs)
            }
            other => return Err(err(format!("unknown operation `{other}`"))),
        };
        ops.push(parsed);
    }
    Ok(ops)
}

/// Joins a meta path onto the fixture copy, refusing anything that could
/// leave it (absolute paths, `..`, empty components).
pub fn resolve(root: &Path, rel: &[u8]) -> PathBuf {
    let p = Path::new(OsStr::from_bytes(rel));
    assert!(
        !rel.is_empty() && p.components().all(|c| matches!(c, Component::Normal(_))),
        "meta path {:?} must be relative, without `.` or `..`",
        rel.escape_ascii().to_string()
    );
    root.join(p)
}

/// Deterministic, incompressible-looking bytes for generated files
/// (xorshift64 seeded from the path).
pub fn generated_bytes(seed_from: &[u8], size: u64) -> Vec<u8> {
    let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
    for &b in seed_from {
        state = (state ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01B3);
    }
    let mut out = Vec::with_capacity(size as usize + 8);
    while (out.len() as u64) < size {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        out.extend_from_slice(&state.to_le_bytes());
    }
    out.truncate(size as usize);
    out
}

fn mknod(p: &Path, kind: libc::mode_t, perm: libc::mode_t, major: u32, minor: u32) {
    super::sys::mknod(p, kind, perm, major, minor)
        .unwrap_or_else(|e| panic!("meta: mknod {}: {e}", p.display()));
}

/// Applies parsed operations to the copy of a fixture at `root`. Returns the
/// mtime overrides (applied later, once the layer is otherwise final).
pub fn apply(root: &Path, ops: &[Op]) -> BTreeMap<PathBuf, i64> {
    let mut mtimes = BTreeMap::new();
    for op in ops {
        match op {
            Op::Mkdir(p) => {
                let p = resolve(root, p);
                fs::create_dir_all(&p)
                    .unwrap_or_else(|e| panic!("meta: mkdir {}: {e}", p.display()));
            }
            Op::Write(p, content) => {
                let p = resolve(root, p);
                fs::write(&p, content)
                    .unwrap_or_else(|e| panic!("meta: write {}: {e}", p.display()));
                fs::set_permissions(&p, fs::Permissions::from_mode(0o644)).unwrap();
            }
            Op::File(rel, size) => {
                let p = resolve(root, rel);
                fs::write(&p, generated_bytes(rel, *size))
                    .unwrap_or_else(|e| panic!("meta: file {}: {e}", p.display()));
                fs::set_permissions(&p, fs::Permissions::from_mode(0o644)).unwrap();
            }
            Op::Sparse(p, size) => {
                let p = resolve(root, p);
                let mut f = fs::File::create(&p)
                    .unwrap_or_else(|e| panic!("meta: sparse {}: {e}", p.display()));
                // Data at the start and in the middle, holes elsewhere.
                f.write_all(b"sparse: start\n").unwrap();
                f.seek(SeekFrom::Start(size / 2)).unwrap();
                f.write_all(b"sparse: middle\n").unwrap();
                f.set_len(*size).unwrap();
                fs::set_permissions(&p, fs::Permissions::from_mode(0o644)).unwrap();
            }
            Op::Symlink { target, path } => {
                let p = resolve(root, path);
                symlink(OsStr::from_bytes(target), &p)
                    .unwrap_or_else(|e| panic!("meta: symlink {}: {e}", p.display()));
            }
            Op::Link { existing, new } => {
                let (a, b) = (resolve(root, existing), resolve(root, new));
                fs::hard_link(&a, &b)
                    .unwrap_or_else(|e| panic!("meta: link {} {}: {e}", a.display(), b.display()));
            }
            Op::Fifo(p) => mknod(&resolve(root, p), libc::S_IFIFO, 0o644, 0, 0),
            // A socket inode needs no listener: mknod(S_IFSOCK) makes one
            // without the 108-byte sun_path limit of bind().
            Op::Socket(p) => mknod(&resolve(root, p), libc::S_IFSOCK, 0o755, 0, 0),
            Op::CharDev(p, ma, mi) => mknod(&resolve(root, p), libc::S_IFCHR, 0o644, *ma, *mi),
            Op::BlockDev(p, ma, mi) => mknod(&resolve(root, p), libc::S_IFBLK, 0o644, *ma, *mi),
            Op::Chmod(mode, p) => {
                let p = resolve(root, p);
                let md = fs::symlink_metadata(&p)
                    .unwrap_or_else(|e| panic!("meta: chmod {}: {e}", p.display()));
                assert!(
                    !md.file_type().is_symlink(),
                    "meta: chmod {}: symlinks have no mode of their own",
                    p.display()
                );
                fs::set_permissions(&p, fs::Permissions::from_mode(*mode))
                    .unwrap_or_else(|e| panic!("meta: chmod {}: {e}", p.display()));
            }
            Op::Chown(uid, gid, p) => {
                let p = resolve(root, p);
                std::os::unix::fs::lchown(&p, Some(*uid), Some(*gid))
                    .unwrap_or_else(|e| panic!("meta: chown {}: {e}", p.display()));
            }
            Op::Xattr(p, name, value) => {
                let p = resolve(root, p);
                super::sys::lsetxattr(&p, name, value).unwrap_or_else(|e| {
                    panic!("meta: xattr {} {}: {e}", p.display(), name.escape_ascii())
                });
            }
            Op::Rm(p) => {
                let p = resolve(root, p);
                let md = fs::symlink_metadata(&p)
                    .unwrap_or_else(|e| panic!("meta: rm {}: {e}", p.display()));
                if md.is_dir() {
                    fs::remove_dir_all(&p)
                } else {
                    fs::remove_file(&p)
                }
                .unwrap_or_else(|e| panic!("meta: rm {}: {e}", p.display()));
            }
            Op::Mtime(p, secs) => {
                mtimes.insert(resolve(root, p), *secs);
            }
        }
    }
    mtimes
}
