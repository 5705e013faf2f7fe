//! Checking a mount's directories before anything is mounted: each exists,
//! is a directory we may use, none contains another, the work dir is
//! empty, and nothing is mounted at the mount point yet.

use std::ffi::OsString;
use std::fs;
use std::io;
use std::os::unix::ffi::OsStringExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use nix::unistd::AccessFlags;

use super::{MountSpec, OptionsError, Overlap, PathProblem, Role, ValidatedMount};

// ---------------------------------------------------------------------------
// Validation
// ---------------------------------------------------------------------------

/// One checked directory.
struct Dir {
    role: Role,
    given: PathBuf,
    canon: PathBuf,
    dev: u64,
    ino: u64,
}

impl Dir {
    fn err(&self, problem: PathProblem) -> OptionsError {
        OptionsError::Path {
            role: self.role,
            path: self.given.clone(),
            problem,
        }
    }
}

/// Checks `spec` and `mountpoint` against the filesystem without changing
/// anything. The first problem found is returned.
pub fn validate(spec: &MountSpec, mountpoint: &Path) -> Result<ValidatedMount, OptionsError> {
    super::check_layers_given(spec)?;
    let read_only = spec.read_only || spec.upper.is_none();

    let lowers = spec
        .lowers
        .iter()
        .map(|p| open_dir(Role::Lower, p, AccessFlags::R_OK | AccessFlags::X_OK))
        .collect::<Result<Vec<_>, _>>()?;
    let rw = if read_only {
        AccessFlags::R_OK | AccessFlags::X_OK
    } else {
        AccessFlags::R_OK | AccessFlags::W_OK | AccessFlags::X_OK
    };
    let upper = spec
        .upper
        .as_deref()
        .map(|p| open_dir(Role::Upper, p, rw))
        .transpose()?;
    let work = spec
        .work
        .as_deref()
        .map(|p| open_dir(Role::Work, p, rw))
        .transpose()?;
    let mnt = open_dir(Role::MountPoint, mountpoint, AccessFlags::empty())?;

    // Layers among themselves, as the kernel checks them.
    for (i, a) in lowers.iter().enumerate() {
        for b in &lowers[..i] {
            check_apart(a, b)?;
        }
    }
    if let (Some(u), Some(w)) = (&upper, &work) {
        check_apart(w, u)?;
        if u.dev != w.dev {
            return Err(OptionsError::DifferentFilesystems {
                upper: u.given.clone(),
                work: w.given.clone(),
            });
        }
        for l in &lowers {
            check_apart(u, l)?;
            check_apart(w, l)?;
        }
        check_work_empty(w)?;
    }
    // The mount point against every layer.
    for layer in lowers.iter().chain(upper.iter()).chain(work.iter()) {
        check_apart(&mnt, layer)?;
    }
    if is_mount_point(&mnt.canon) {
        return Err(mnt.err(PathProblem::AlreadyMounted));
    }

    Ok(ValidatedMount {
        lowers: lowers.into_iter().map(|d| d.canon).collect(),
        upper: upper.map(|d| d.canon),
        work: work.map(|d| d.canon),
        mountpoint: mnt.canon,
        read_only,
        whiteout: spec.whiteout,
        allow_other: spec.allow_other || nix::unistd::geteuid().is_root(),
        default_permissions: spec.default_permissions,
        userxattr: spec.userxattr,
        volatile: spec.volatile,
        redirect_dir: spec.redirect_dir,
        metacopy: spec.metacopy,
        mount_flags: spec.mount_flags.clone(),
        engine: spec.engine.clone(),
    })
}

fn problem_of(e: &io::Error) -> PathProblem {
    match e.raw_os_error() {
        Some(libc::ENOENT) => PathProblem::NotFound,
        Some(libc::ENOTDIR) => PathProblem::NotADirectory,
        Some(raw) => PathProblem::Io(errno_text(raw)),
        None => PathProblem::Io(e.to_string()),
    }
}

/// The C library's text for an errno, lowercased: "permission denied".
fn errno_text(raw: i32) -> String {
    let text = io::Error::from_raw_os_error(raw).to_string();
    let text = match text.rfind(" (os error ") {
        Some(i) => &text[..i],
        None => &text,
    };
    lowercase_first(text)
}

fn lowercase_first(s: &str) -> String {
    let mut c = s.chars();
    match c.next() {
        Some(first) => first.to_lowercase().chain(c).collect(),
        None => String::new(),
    }
}

/// Canonicalizes `given`, checks it is a directory we may use as asked.
fn open_dir(role: Role, given: &Path, access: AccessFlags) -> Result<Dir, OptionsError> {
    let fail = |problem| OptionsError::Path {
        role,
        path: given.to_path_buf(),
        problem,
    };
    if given.as_os_str().is_empty() {
        return Err(fail(PathProblem::NotFound));
    }
    let canon = fs::canonicalize(given).map_err(|e| fail(problem_of(&e)))?;
    let md = fs::metadata(&canon).map_err(|e| fail(problem_of(&e)))?;
    if !md.is_dir() {
        return Err(fail(PathProblem::NotADirectory));
    }
    if !access.is_empty() {
        nix::unistd::eaccess(&canon, access).map_err(|e| {
            fail(PathProblem::Io(format!(
                "{} ({} access needed)",
                errno_text(e as i32),
                access_words(access)
            )))
        })?;
    }
    Ok(Dir {
        role,
        given: given.to_path_buf(),
        canon,
        dev: md.dev(),
        ino: md.ino(),
    })
}

fn access_words(a: AccessFlags) -> &'static str {
    if a.contains(AccessFlags::W_OK) {
        "read, write and search"
    } else {
        "read and search"
    }
}

/// Fails when `a` and `b` are the same directory or one is inside the other.
fn check_apart(a: &Dir, b: &Dir) -> Result<(), OptionsError> {
    let overlap = |x: &Dir, how, y: &Dir| OptionsError::Overlap {
        role: x.role,
        path: x.given.clone(),
        how,
        other_role: y.role,
        other: y.given.clone(),
    };
    if a.canon == b.canon || (a.dev == b.dev && a.ino == b.ino) {
        Err(overlap(a, Overlap::Same, b))
    } else if a.canon.starts_with(&b.canon) {
        Err(overlap(a, Overlap::Inside, b))
    } else if b.canon.starts_with(&a.canon) {
        Err(overlap(b, Overlap::Inside, a))
    } else {
        Ok(())
    }
}

/// The work dir may hold only the `work` and `index` directories an
/// earlier overlay mount leaves behind.
fn check_work_empty(w: &Dir) -> Result<(), OptionsError> {
    let entries = fs::read_dir(&w.canon).map_err(|e| w.err(problem_of(&e)))?;
    let mut names = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| w.err(problem_of(&e)))?;
        let name = entry.file_name();
        let leftover = (name == "work" || name == "index" || name == "layerfs-index")
            && entry.file_type().map(|t| t.is_dir()).unwrap_or(false);
        if !leftover {
            names.push(name.to_string_lossy().into_owned());
        }
    }
    names.sort();
    match names.into_iter().next() {
        Some(first) => Err(w.err(PathProblem::NotEmpty(first))),
        None => Ok(()),
    }
}

/// Whether something is mounted exactly at `canon`.
fn is_mount_point(canon: &Path) -> bool {
    match mount_points() {
        Ok(mounts) => mounts.iter().any(|(p, _)| p == canon),
        // No /proc: a mount point sits on another device than its parent
        // (this misses bind mounts within one filesystem).
        Err(_) => match (canon.parent(), fs::metadata(canon)) {
            (None, _) => true,
            (Some(parent), Ok(md)) => fs::metadata(parent)
                .map(|pm| pm.dev() != md.dev())
                .unwrap_or(false),
            (Some(_), Err(_)) => false,
        },
    }
}

/// Every mount of this process's namespace as (mount point, fstype), in
/// /proc/self/mountinfo order (later entries are mounted on top).
pub fn mount_points() -> io::Result<Vec<(PathBuf, String)>> {
    let info = fs::read("/proc/self/mountinfo")?;
    Ok(parse_mountinfo(&info))
}

pub(super) fn parse_mountinfo(info: &[u8]) -> Vec<(PathBuf, String)> {
    let mut out = Vec::new();
    for line in info.split(|b| *b == b'\n') {
        let fields: Vec<&[u8]> = line.split(|b| *b == b' ').collect();
        // id parent maj:min root mountpoint opts [optional...] - fstype src superopts
        let Some(mp) = fields.get(4) else { continue };
        let Some(sep) = fields.iter().skip(6).position(|f| *f == b"-") else {
            continue;
        };
        let Some(fstype) = fields.get(6 + sep + 1) else {
            continue;
        };
        let mp = PathBuf::from(OsString::from_vec(unescape_octal(mp)));
        out.push((
            mp,
            String::from_utf8_lossy(&unescape_octal(fstype)).into_owned(),
        ));
    }
    out
}

/// Decodes the `\ooo` escapes the kernel writes for space, tab, newline
/// and backslash in mountinfo fields.
pub(super) fn unescape_octal(field: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(field.len());
    let mut i = 0;
    while i < field.len() {
        let octal = (field[i] == b'\\')
            .then(|| field.get(i + 1..i + 4))
            .flatten()
            .filter(|digits| digits.iter().all(|d| (b'0'..=b'7').contains(d)))
            .and_then(|digits| {
                let v = digits
                    .iter()
                    .fold(0u32, |acc, d| acc * 8 + u32::from(d - b'0'));
                u8::try_from(v).ok()
            });
        if let Some(byte) = octal {
            out.push(byte);
            i += 4;
            continue;
        }
        out.push(field[i]);
        i += 1;
    }
    out
}
