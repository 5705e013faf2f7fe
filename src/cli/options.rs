//! Parsing and validation of mount options (`-o lowerdir=...` and friends).
//!
//! Two steps, so that nothing is touched before everything is known to be
//! right:
//!
//! 1. [`parse_mount_options`] / [`spec_from_lowers`] turn the command line
//!    into a [`MountSpec`] without looking at the filesystem. The `-o`
//!    syntax is the one `mount -t overlay` takes: options are split at
//!    commas, `lowerdir=` at colons (top layer first), and a backslash
//!    escapes the next character (`\,` `\:` `\\`).
//! 2. [`validate`] checks the spec against the filesystem (read-only: it
//!    never creates, changes or mounts anything) and returns canonical
//!    paths in a [`ValidatedMount`].
//!
//! Every failure is one [`OptionsError`] whose `Display` is a single line
//! naming the option or path and the problem.
//!
//! Rules chosen where the kernel leaves room:
//! - `lowerdir=`, `lowerdir+=`, `upperdir=` and `workdir=` may each be given
//!   once; any other option may repeat and the last one wins (as with
//!   mount(8), where the command line overrides fstab). `ro`/`rw` likewise.
//! - `lowerdir+=DIR` (kernel 6.8+) appends one layer; it cannot be mixed with
//!   `lowerdir=`. Data-only layers (`::` and `datadir+=`) are rejected.
//! - Like the kernel, the same lower directory given twice, or one lower
//!   inside another, is an error.
//! - A work dir is "empty" when it holds nothing but the `work` and `index`
//!   directories that an earlier layerfs or overlayfs mount leaves there.

use std::ffi::OsString;
use std::fmt;
use std::fs;
use std::io;
use std::os::unix::ffi::OsStringExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use nix::unistd::AccessFlags;

pub use crate::layers::WhiteoutFormat;

/// Everything `layerfs mount` was asked to do, before it touches the filesystem.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct MountSpec {
    /// Lower layers, top first, exactly as given (not yet canonicalized).
    pub lowers: Vec<PathBuf>,
    pub upper: Option<PathBuf>,
    pub work: Option<PathBuf>,
    /// `ro` was given (a mount without upper is read-only anyway).
    pub read_only: bool,
    pub whiteout: WhiteoutFormat,
    /// FUSE `allow_other` (default on when running as root).
    pub allow_other: bool,
    /// FUSE `default_permissions`: let the kernel check permissions.
    pub default_permissions: bool,
    /// Overlay `userxattr`: use `user.overlay.*` instead of `trusted.overlay.*`.
    pub userxattr: bool,
    /// Overlay `volatile`: no fsync of the upper layer.
    pub volatile: bool,
    /// Overlay `redirect_dir` (`on` unless given).
    pub redirect_dir: crate::union::RedirectDir,
    /// Generic mount flags as given, in order (`nosuid`, `nodev`, `noexec`,
    /// `noatime`, `sync`, ...), for the caller to pass on to the FUSE mount.
    pub mount_flags: Vec<String>,
    /// fuse-overlayfs's options (see [`super::compat`]).
    pub engine: super::compat::EngineOptions,
}

/// A [`MountSpec`] checked against the filesystem, with canonical paths.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValidatedMount {
    /// Canonical, top first.
    pub lowers: Vec<PathBuf>,
    /// Canonical; `Some` exactly when `work` is.
    pub upper: Option<PathBuf>,
    /// Canonical; `Some` exactly when `upper` is.
    pub work: Option<PathBuf>,
    /// Canonical.
    pub mountpoint: PathBuf,
    /// `ro` was given or there is no upper.
    pub read_only: bool,
    pub whiteout: WhiteoutFormat,
    /// Asked for with `allow_other`, or running as root.
    pub allow_other: bool,
    pub default_permissions: bool,
    pub userxattr: bool,
    pub volatile: bool,
    pub redirect_dir: crate::union::RedirectDir,
    pub mount_flags: Vec<String>,
    pub engine: super::compat::EngineOptions,
}

/// What a path is for; names it in error messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Lower,
    Upper,
    Work,
    MountPoint,
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Role::Lower => "lowerdir",
            Role::Upper => "upperdir",
            Role::Work => "workdir",
            Role::MountPoint => "mount point",
        })
    }
}

/// What is wrong with one path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PathProblem {
    NotFound,
    NotADirectory,
    /// An access check or a system call failed; the text is the errno's.
    Io(String),
    /// Something is already mounted there.
    AlreadyMounted,
    /// The work dir holds this entry.
    NotEmpty(String),
}

impl fmt::Display for PathProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PathProblem::NotFound => f.write_str("no such file or directory"),
            PathProblem::NotADirectory => f.write_str("not a directory"),
            PathProblem::Io(msg) => f.write_str(msg),
            PathProblem::AlreadyMounted => f.write_str("something is already mounted there"),
            PathProblem::NotEmpty(entry) => {
                write!(f, "not empty (holds '{}')", Escaped(entry))
            }
        }
    }
}

/// How two layer paths collide.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Overlap {
    /// The same directory (equal canonical paths or the same inode).
    Same,
    /// The first is inside the second.
    Inside,
}

/// Why a mount cannot be done. `Display` is one line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OptionsError {
    /// An option name we do not know.
    UnknownOption(String),
    /// An option we know but refuse, and why.
    Unsupported {
        option: String,
        reason: &'static str,
    },
    /// `key` given without `=value`.
    MissingValue(String),
    /// `key=` given with nothing after the `=`.
    EmptyValue(String),
    /// A flag such as `ro` given as `ro=...`.
    UnexpectedValue { option: String, value: String },
    /// A value outside the allowed set.
    BadValue {
        option: String,
        value: String,
        expected: &'static str,
    },
    /// An option that may be given once was given again.
    Repeated(String),
    /// A value ends in a lone backslash.
    TrailingBackslash(String),
    /// An empty element in `lowerdir=` (`a::b`, `:a`, `a:`).
    EmptyLayer(String),
    /// Two ways of saying the same thing were both used.
    Conflict {
        first: &'static str,
        second: &'static str,
    },
    /// No lower layer at all.
    NoLower,
    /// `upperdir=` without `workdir=`.
    UpperWithoutWork(PathBuf),
    /// `workdir=` without `upperdir=`.
    WorkWithoutUpper(PathBuf),
    /// An option that only makes sense with an upper layer.
    NeedsUpper(&'static str),
    /// One path has a problem.
    Path {
        role: Role,
        path: PathBuf,
        problem: PathProblem,
    },
    /// Two paths collide.
    Overlap {
        role: Role,
        path: PathBuf,
        how: Overlap,
        other_role: Role,
        other: PathBuf,
    },
    /// Upper and work are on different filesystems.
    DifferentFilesystems { upper: PathBuf, work: PathBuf },
}

impl fmt::Display for OptionsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            OptionsError::UnknownOption(o) => write!(f, "unknown mount option '{}'", Escaped(o)),
            OptionsError::Unsupported { option, reason } => {
                write!(
                    f,
                    "mount option '{}' is not supported: {reason}",
                    Escaped(option)
                )
            }
            OptionsError::MissingValue(o) => {
                write!(f, "mount option '{0}' needs a value ({0}=...)", Escaped(o))
            }
            OptionsError::EmptyValue(o) => {
                write!(f, "mount option '{}=' has an empty value", Escaped(o))
            }
            OptionsError::UnexpectedValue { option, value } => write!(
                f,
                "mount option '{}' takes no value (got '{}')",
                Escaped(option),
                Escaped(value)
            ),
            OptionsError::BadValue {
                option,
                value,
                expected,
            } => write!(
                f,
                "bad value '{}' for mount option '{}' (expected {expected})",
                Escaped(value),
                Escaped(option)
            ),
            OptionsError::Repeated(o) => {
                write!(f, "mount option '{}' is given more than once", Escaped(o))
            }
            OptionsError::TrailingBackslash(o) => {
                write!(f, "mount option '{}' ends in a lone backslash", Escaped(o))
            }
            OptionsError::EmptyLayer(v) => write!(
                f,
                "lowerdir={}: empty layer path (data-only layers '::' are not supported)",
                Escaped(v)
            ),
            OptionsError::Conflict { first, second } => {
                write!(f, "{first} and {second} cannot be used together")
            }
            OptionsError::NoLower => {
                f.write_str("no lower layer given (use -o lowerdir=TOP:...:BOTTOM or --lower DIR)")
            }
            OptionsError::UpperWithoutWork(p) => {
                write!(f, "upperdir {} needs a workdir as well", Shown(p))
            }
            OptionsError::WorkWithoutUpper(p) => {
                write!(f, "workdir {} needs an upperdir as well", Shown(p))
            }
            OptionsError::NeedsUpper(o) => {
                write!(f, "mount option '{o}' needs upperdir and workdir")
            }
            OptionsError::Path {
                role,
                path,
                problem,
            } => write!(f, "{role} {}: {problem}", Shown(path)),
            OptionsError::Overlap {
                role,
                path,
                how,
                other_role,
                other,
            } => match how {
                Overlap::Same if role == other_role && path == other => {
                    write!(f, "{role} {} is given twice", Shown(path))
                }
                Overlap::Same => write!(
                    f,
                    "{role} {} is the same directory as {other_role} {}",
                    Shown(path),
                    Shown(other)
                ),
                Overlap::Inside => write!(
                    f,
                    "{role} {} is inside {other_role} {}",
                    Shown(path),
                    Shown(other)
                ),
            },
            OptionsError::DifferentFilesystems { upper, work } => write!(
                f,
                "upperdir {} and workdir {} are on different filesystems",
                Shown(upper),
                Shown(work)
            ),
        }
    }
}

impl std::error::Error for OptionsError {}

/// Shows a path on one line: control characters (a newline in a file
/// name) are escaped.
struct Shown<'a>(&'a Path);

impl fmt::Display for Shown<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&Escaped(&self.0.to_string_lossy()), f)
    }
}

/// Shows user text on one line (control characters escaped).
struct Escaped<'a>(&'a str);

impl fmt::Display for Escaped<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for c in self.0.chars() {
            if c.is_control() {
                write!(f, "{}", c.escape_default())?;
            } else {
                write!(f, "{c}")?;
            }
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------
// Parsing
// ---------------------------------------------------------------------------

/// Parses the `-o` arguments (each may hold several comma-separated
/// options) of `layerfs mount -o lowerdir=TOP:...:BOTTOM[,upperdir=U,workdir=W]`.
pub fn parse_mount_options(opts: &[String]) -> Result<MountSpec, OptionsError> {
    spec_from_lowers(Vec::new(), None, None, opts)
}

/// Builds the spec of `layerfs mount --lower DIR ... [--upper U --work W]
/// [-o OPTS]`: `lowers` top first. A layer may come from a flag or from
/// `-o`, not from both.
pub fn spec_from_lowers(
    lowers: Vec<PathBuf>,
    upper: Option<PathBuf>,
    work: Option<PathBuf>,
    opts: &[String],
) -> Result<MountSpec, OptionsError> {
    let parsed = parse_options(opts)?;
    let mut spec = parsed.spec;
    if !lowers.is_empty() {
        if !spec.lowers.is_empty() {
            return Err(OptionsError::Conflict {
                first: "--lower",
                second: "-o lowerdir=",
            });
        }
        if lowers.iter().any(|p| p.as_os_str().is_empty()) {
            return Err(OptionsError::EmptyValue("--lower".into()));
        }
        spec.lowers = lowers;
    }
    merge_path(&mut spec.upper, upper, "--upper", "-o upperdir=")?;
    merge_path(&mut spec.work, work, "--work", "-o workdir=")?;
    if spec.lowers.is_empty() {
        return Err(OptionsError::NoLower);
    }
    match (&spec.upper, &spec.work) {
        (Some(u), None) => return Err(OptionsError::UpperWithoutWork(u.clone())),
        (None, Some(w)) => return Err(OptionsError::WorkWithoutUpper(w.clone())),
        _ => {}
    }
    if parsed.volatile && spec.upper.is_none() {
        return Err(OptionsError::NeedsUpper("volatile"));
    }
    // fuse-overlayfs's fsync=0 is volatile where there is something to sync.
    spec.volatile = parsed.volatile || (spec.engine.no_fsync && spec.upper.is_some());
    Ok(spec)
}

fn merge_path(
    slot: &mut Option<PathBuf>,
    flag: Option<PathBuf>,
    flag_name: &'static str,
    opt_name: &'static str,
) -> Result<(), OptionsError> {
    if let Some(p) = flag {
        if slot.is_some() {
            return Err(OptionsError::Conflict {
                first: flag_name,
                second: opt_name,
            });
        }
        if p.as_os_str().is_empty() {
            return Err(OptionsError::EmptyValue(flag_name.into()));
        }
        *slot = Some(p);
    }
    Ok(())
}

struct Parsed {
    spec: MountSpec,
    volatile: bool,
}

/// Generic mount flags the kernel knows for any filesystem: kept in
/// [`MountSpec::mount_flags`].
const MOUNT_FLAGS: &[&str] = &[
    "suid",
    "nosuid",
    "dev",
    "nodev",
    "exec",
    "noexec",
    "atime",
    "noatime",
    "diratime",
    "nodiratime",
    "relatime",
    "norelatime",
    "strictatime",
    "nostrictatime",
    "lazytime",
    "nolazytime",
    "sync",
    "async",
    "dirsync",
];

/// mount(8) / fstab options that mean nothing to the filesystem itself.
const IGNORED_FLAGS: &[&str] = &[
    "defaults", "auto", "noauto", "nofail", "nouser", "users", "owner", "group", "_netdev",
];

const ON_OFF: (&[&str], &str) = (&["on", "off"], "on or off");

fn parse_options(opts: &[String]) -> Result<Parsed, OptionsError> {
    let mut spec = MountSpec::default();
    let mut volatile = false;
    // Which of lowerdir= / lowerdir+= gave the lowers.
    let mut lower_key: Option<&'static str> = None;
    for arg in opts {
        for raw in super::compat::split_options(arg) {
            let raw = raw.as_str();
            if raw.is_empty() {
                continue;
            }
            let (key, value) = match raw.split_once('=') {
                Some((k, v)) => (k, Some(v)),
                None => (raw, None),
            };
            match key {
                "lowerdir" => {
                    let v = need_value(key, value)?;
                    match lower_key {
                        Some("lowerdir") => return Err(OptionsError::Repeated(key.into())),
                        Some(other) => {
                            return Err(OptionsError::Unsupported {
                                option: key.into(),
                                reason: mixing_reason(other),
                            });
                        }
                        _ => {}
                    }
                    lower_key = Some("lowerdir");
                    spec.lowers = parse_lowerdir(v)?;
                }
                "lowerdir+" => {
                    let v = need_value(key, value)?;
                    if lower_key == Some("lowerdir") {
                        return Err(OptionsError::Unsupported {
                            option: key.into(),
                            reason: mixing_reason("lowerdir"),
                        });
                    }
                    lower_key = Some("lowerdir+");
                    spec.lowers.push(PathBuf::from(unescape(key, v)?));
                }
                "datadir+" => {
                    return Err(OptionsError::Unsupported {
                        option: key.into(),
                        reason: "data-only layers are not supported",
                    });
                }
                "upperdir" | "workdir" => {
                    let v = need_value(key, value)?;
                    let slot = if key == "upperdir" {
                        &mut spec.upper
                    } else {
                        &mut spec.work
                    };
                    if slot.is_some() {
                        return Err(OptionsError::Repeated(key.into()));
                    }
                    *slot = Some(PathBuf::from(unescape(key, v)?));
                }
                "ro" | "rw" => {
                    no_value(key, value)?;
                    spec.read_only = key == "ro";
                }
                "whiteout" => {
                    spec.whiteout = match choice(key, value, &["overlay", "oci"], "overlay or oci")?
                    {
                        "oci" => WhiteoutFormat::Oci,
                        _ => WhiteoutFormat::Overlay,
                    };
                }
                "allow_other" => {
                    no_value(key, value)?;
                    spec.allow_other = true;
                }
                "default_permissions" => {
                    no_value(key, value)?;
                    spec.default_permissions = true;
                }
                "userxattr" => {
                    no_value(key, value)?;
                    spec.userxattr = true;
                }
                "volatile" => {
                    no_value(key, value)?;
                    volatile = true;
                }
                // Kernel overlay options, accepted for compatibility.
                "redirect_dir" => {
                    use crate::union::RedirectDir;
                    let allowed = ["on", "off", "follow", "nofollow"];
                    spec.redirect_dir =
                        match choice(key, value, &allowed, "on, off, follow or nofollow")? {
                            "on" => RedirectDir::On,
                            // `off` is `follow` where the kernel is built with
                            // redirect_always_follow (its default).
                            "off" | "follow" => RedirectDir::Follow,
                            _ => RedirectDir::NoFollow,
                        };
                }
                "index" | "metacopy" | "nfs_export" => {
                    choice(key, value, ON_OFF.0, ON_OFF.1)?;
                }
                "xino" => {
                    choice(key, value, &["on", "off", "auto"], "on, off or auto")?;
                }
                "uuid" => {
                    choice(
                        key,
                        value,
                        &["on", "off", "null", "auto"],
                        "on, off, null or auto",
                    )?;
                }
                "loop" => {
                    return Err(OptionsError::Unsupported {
                        option: key.into(),
                        reason: "layerfs mounts directories, not image files",
                    });
                }
                // mount(8) passes user=NAME to helpers for user mounts.
                "user" | "comment" => {}
                k if k.starts_with("x-") => {}
                k if MOUNT_FLAGS.contains(&k) => {
                    no_value(key, value)?;
                    spec.mount_flags.push(k.to_string());
                }
                k if IGNORED_FLAGS.contains(&k) => no_value(key, value)?,
                _ => {
                    if !super::compat::parse_option(key, value, &mut spec.engine)? {
                        return Err(OptionsError::UnknownOption(key.into()));
                    }
                }
            }
        }
    }
    Ok(Parsed { spec, volatile })
}

fn mixing_reason(other: &str) -> &'static str {
    if other == "lowerdir" {
        "it cannot be combined with lowerdir="
    } else {
        "it cannot be combined with lowerdir+="
    }
}

fn need_value<'a>(key: &str, value: Option<&'a str>) -> Result<&'a str, OptionsError> {
    match value {
        None => Err(OptionsError::MissingValue(key.into())),
        Some("") => Err(OptionsError::EmptyValue(key.into())),
        Some(v) => Ok(v),
    }
}

fn no_value(key: &str, value: Option<&str>) -> Result<(), OptionsError> {
    match value {
        None => Ok(()),
        Some(v) => Err(OptionsError::UnexpectedValue {
            option: key.into(),
            value: v.into(),
        }),
    }
}

fn choice<'a>(
    key: &str,
    value: Option<&str>,
    allowed: &[&'a str],
    expected: &'static str,
) -> Result<&'a str, OptionsError> {
    let v = need_value(key, value)?;
    allowed
        .iter()
        .find(|a| **a == v)
        .copied()
        .ok_or_else(|| OptionsError::BadValue {
            option: key.into(),
            value: v.into(),
            expected,
        })
}

/// `lowerdir=` value (still escaped) into layers, top first.
fn parse_lowerdir(value: &str) -> Result<Vec<PathBuf>, OptionsError> {
    let parts = split_unescaped(value, ':');
    if parts.iter().any(|p| p.is_empty()) {
        return Err(OptionsError::EmptyLayer(value.into()));
    }
    parts
        .into_iter()
        .map(|p| unescape("lowerdir", p).map(PathBuf::from))
        .collect()
}

/// Splits at every `sep` not escaped by a backslash; escapes are kept for
/// the next level.
fn split_unescaped(s: &str, sep: char) -> Vec<&str> {
    let mut out = Vec::new();
    let mut start = 0;
    let mut escaped = false;
    for (i, c) in s.char_indices() {
        if escaped {
            escaped = false;
        } else if c == '\\' {
            escaped = true;
        } else if c == sep {
            out.push(&s[start..i]);
            start = i + c.len_utf8();
        }
    }
    out.push(&s[start..]);
    out
}

/// `\X` becomes `X`.
fn unescape(key: &str, s: &str) -> Result<String, OptionsError> {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            match chars.next() {
                Some(n) => out.push(n),
                None => return Err(OptionsError::TrailingBackslash(key.into())),
            }
        } else {
            out.push(c);
        }
    }
    Ok(out)
}

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
    if spec.lowers.is_empty() {
        return Err(OptionsError::NoLower);
    }
    match (&spec.upper, &spec.work) {
        (Some(u), None) => return Err(OptionsError::UpperWithoutWork(u.clone())),
        (None, Some(w)) => return Err(OptionsError::WorkWithoutUpper(w.clone())),
        _ => {}
    }
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

fn parse_mountinfo(info: &[u8]) -> Vec<(PathBuf, String)> {
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
fn unescape_octal(field: &[u8]) -> Vec<u8> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn o(s: &str) -> Vec<String> {
        vec![s.to_string()]
    }

    fn p(s: &str) -> PathBuf {
        PathBuf::from(s)
    }

    fn err(opts: &[&str]) -> OptionsError {
        let opts: Vec<String> = opts.iter().map(|s| s.to_string()).collect();
        parse_mount_options(&opts).expect_err("should fail")
    }

    // ---- parsing ----

    #[test]
    fn lowers_are_top_first() {
        let s = parse_mount_options(&o("lowerdir=/top:/mid:/bottom")).unwrap();
        assert_eq!(s.lowers, vec![p("/top"), p("/mid"), p("/bottom")]);
        assert_eq!(s.upper, None);
        assert!(!s.read_only);
        assert_eq!(s.whiteout, WhiteoutFormat::Overlay);
    }

    #[test]
    fn escapes() {
        let s = parse_mount_options(&o(
            r"lowerdir=/a\:b:/c\,d:/e\\f,upperdir=/u\,1,workdir=/w\:2",
        ))
        .unwrap();
        assert_eq!(s.lowers, vec![p("/a:b"), p("/c,d"), p(r"/e\f")]);
        assert_eq!(s.upper, Some(p("/u,1")));
        assert_eq!(s.work, Some(p("/w:2")));
        // An escaped backslash does not escape the separator after it.
        let s = parse_mount_options(&o(r"lowerdir=/a\\:/b\\,ro")).unwrap();
        assert_eq!(s.lowers, vec![p(r"/a\"), p(r"/b\")]);
        assert!(s.read_only);
        // Any escaped character stands for itself.
        let s = parse_mount_options(&o(r"lowerdir=/x\y")).unwrap();
        assert_eq!(s.lowers, vec![p("/xy")]);
    }

    #[test]
    fn comma_escaped_path_stays_one_option() {
        let s = parse_mount_options(&o(r"lowerdir=/data/a\,rw\,b,ro")).unwrap();
        assert_eq!(s.lowers, vec![p("/data/a,rw,b")]);
        assert!(s.read_only);
    }

    #[test]
    fn several_o_arguments_add_up() {
        let opts = vec![
            "lowerdir=/l1:/l2".to_string(),
            "upperdir=/u,workdir=/w".to_string(),
            "ro,whiteout=oci".to_string(),
            "allow_other,default_permissions,userxattr".to_string(),
        ];
        let s = parse_mount_options(&opts).unwrap();
        assert_eq!(s.lowers, vec![p("/l1"), p("/l2")]);
        assert_eq!(s.upper, Some(p("/u")));
        assert_eq!(s.work, Some(p("/w")));
        assert!(s.read_only);
        assert_eq!(s.whiteout, WhiteoutFormat::Oci);
        assert!(s.allow_other && s.default_permissions && s.userxattr);
    }

    #[test]
    fn last_ro_rw_wins_and_empty_options_are_skipped() {
        let s = parse_mount_options(&o("ro,lowerdir=/l,,rw,")).unwrap();
        assert!(!s.read_only);
        let s = parse_mount_options(&["rw".into(), "lowerdir=/l".into(), "ro".into()]).unwrap();
        assert!(s.read_only);
        let s = parse_mount_options(&o("whiteout=oci,lowerdir=/l,whiteout=overlay")).unwrap();
        assert_eq!(s.whiteout, WhiteoutFormat::Overlay);
    }

    #[test]
    fn kernel_and_generic_options_are_accepted() {
        let s = parse_mount_options(&o(
            "lowerdir=/l,upperdir=/u,workdir=/w,redirect_dir=nofollow,index=off,xino=auto,\
             metacopy=on,nfs_export=off,uuid=null,userxattr,volatile,defaults,auto,noauto,\
             nofail,user,user=bob,nouser,users,_netdev,x-systemd.automount,\
             x-systemd.device-timeout=10,comment=hello world,suid,nosuid,dev,nodev,exec,\
             noexec,atime,noatime,relatime,strictatime,nodiratime,sync,async,dirsync",
        ))
        .unwrap();
        assert_eq!(
            s.mount_flags,
            [
                "suid",
                "nosuid",
                "dev",
                "nodev",
                "exec",
                "noexec",
                "atime",
                "noatime",
                "relatime",
                "strictatime",
                "nodiratime",
                "sync",
                "async",
                "dirsync"
            ]
        );
        assert_eq!(s.redirect_dir, crate::union::RedirectDir::NoFollow);
        assert!(s.userxattr);
    }

    #[test]
    fn lowerdir_plus_appends_top_first() {
        let s = parse_mount_options(&o(r"lowerdir+=/a:b,lowerdir+=/c")).unwrap();
        assert_eq!(s.lowers, vec![p("/a:b"), p("/c")]);
        assert!(matches!(
            err(&["lowerdir+=/a,lowerdir=/b"]),
            OptionsError::Unsupported { .. }
        ));
        assert!(matches!(
            err(&["lowerdir=/a,lowerdir+=/b"]),
            OptionsError::Unsupported { .. }
        ));
    }

    #[test]
    fn spec_from_lowers_matches_o_form() {
        let a = spec_from_lowers(
            vec![p("/top"), p("/bottom")],
            Some(p("/u")),
            Some(p("/w")),
            &o("ro,whiteout=oci"),
        )
        .unwrap();
        let b = parse_mount_options(&o(
            "lowerdir=/top:/bottom,upperdir=/u,workdir=/w,ro,whiteout=oci",
        ))
        .unwrap();
        assert_eq!(a, b);
        // Upper and work may come from either side, but not both.
        let c = spec_from_lowers(vec![p("/top")], Some(p("/u")), None, &o("workdir=/w")).unwrap();
        assert_eq!(c.work, Some(p("/w")));
        // Paths from flags are taken literally: no escapes, colons allowed.
        let d = spec_from_lowers(vec![p(r"/a:b\c")], None, None, &[]).unwrap();
        assert_eq!(d.lowers, vec![p(r"/a:b\c")]);
    }

    #[test]
    fn spec_from_lowers_errors() {
        let e = spec_from_lowers(vec![p("/a")], None, None, &o("lowerdir=/b")).unwrap_err();
        assert_eq!(
            e.to_string(),
            "--lower and -o lowerdir= cannot be used together"
        );
        let e = spec_from_lowers(
            vec![p("/a")],
            Some(p("/u")),
            Some(p("/w")),
            &o("upperdir=/v"),
        )
        .unwrap_err();
        assert!(e.to_string().contains("--upper and -o upperdir="), "{e}");
        let e = spec_from_lowers(vec![p("/a")], None, Some(p("/w")), &[]).unwrap_err();
        assert_eq!(e.to_string(), "workdir /w needs an upperdir as well");
        let e = spec_from_lowers(vec![p("")], None, None, &[]).unwrap_err();
        assert_eq!(e, OptionsError::EmptyValue("--lower".into()));
        let e = spec_from_lowers(Vec::new(), Some(p("/u")), Some(p("/w")), &[]).unwrap_err();
        assert_eq!(e, OptionsError::NoLower);
    }

    #[test]
    fn parse_errors_name_the_option() {
        let cases: &[(&[&str], &str)] = &[
            (&["lowerdir=/a,foo"], "unknown mount option 'foo'"),
            (&["lowerdir=/a,foo=bar"], "unknown mount option 'foo'"),
            (
                &["lowerdir=/a", "loop"],
                "mount option 'loop' is not supported",
            ),
            (&["lowerdir=/a,datadir+=/d"], "mount option 'datadir+'"),
            (
                &["lowerdir="],
                "mount option 'lowerdir=' has an empty value",
            ),
            (&["lowerdir"], "mount option 'lowerdir' needs a value"),
            (&["lowerdir=/a::/b"], "lowerdir=/a::/b: empty layer path"),
            (&["lowerdir=:/a"], "lowerdir=:/a: empty layer path"),
            (&["lowerdir=/a:"], "lowerdir=/a:: empty layer path"),
            (
                &["lowerdir=/a", "lowerdir=/b"],
                "'lowerdir' is given more than once",
            ),
            (
                &["lowerdir=/a,upperdir=/u,upperdir=/v,workdir=/w"],
                "'upperdir' is given more than once",
            ),
            (
                &["lowerdir=/a,upperdir=/u,workdir=/w,workdir=/x"],
                "'workdir' is given more than once",
            ),
            (&["lowerdir=/a,upperdir="], "'upperdir=' has an empty value"),
            (
                &["lowerdir=/a,ro=1"],
                "mount option 'ro' takes no value (got '1')",
            ),
            (
                &["lowerdir=/a,nosuid=yes"],
                "mount option 'nosuid' takes no value",
            ),
            (
                &["lowerdir=/a,whiteout=docker"],
                "bad value 'docker' for mount option 'whiteout' (expected overlay or oci)",
            ),
            (
                &["lowerdir=/a,whiteout"],
                "mount option 'whiteout' needs a value",
            ),
            (
                &["lowerdir=/a,redirect_dir=maybe"],
                "bad value 'maybe' for mount option 'redirect_dir'",
            ),
            (
                &["lowerdir=/a,index=1"],
                "bad value '1' for mount option 'index'",
            ),
            (
                &["lowerdir=/a,xino=yes"],
                "bad value 'yes' for mount option 'xino'",
            ),
            (
                &["lowerdir=/a,metacopy=true"],
                "bad value 'true' for mount option 'metacopy'",
            ),
            (
                &["lowerdir=/a,nfs_export=no"],
                "bad value 'no' for mount option 'nfs_export'",
            ),
            (
                &["lowerdir=/a,uuid=random"],
                "bad value 'random' for mount option 'uuid'",
            ),
            (
                &["lowerdir=/a,volatile"],
                "mount option 'volatile' needs upperdir and workdir",
            ),
            (
                &[r"lowerdir=/a\"],
                "mount option 'lowerdir' ends in a lone backslash",
            ),
            (
                &["lowerdir=/a,upperdir=/u"],
                "upperdir /u needs a workdir as well",
            ),
            (
                &["lowerdir=/a,workdir=/w"],
                "workdir /w needs an upperdir as well",
            ),
            (&[], "no lower layer given"),
            (&["ro"], "no lower layer given"),
        ];
        for (opts, want) in cases {
            let msg = err(opts).to_string();
            assert!(msg.contains(want), "{opts:?}: got {msg:?}, want {want:?}");
            assert!(!msg.contains('\n'), "{msg:?}");
        }
    }

    #[test]
    fn messages_stay_on_one_line() {
        let e = err(&["lowerdir=/a,bad\nname"]);
        assert_eq!(e.to_string(), r"unknown mount option 'bad\nname'");
        let e = OptionsError::Path {
            role: Role::Lower,
            path: p("/x\ny"),
            problem: PathProblem::NotFound,
        };
        assert_eq!(e.to_string(), r"lowerdir /x\ny: no such file or directory");
    }

    // ---- mountinfo ----

    #[test]
    fn mountinfo_is_parsed_and_unescaped() {
        let info = b"22 1 0:21 / /proc rw,nosuid shared:5 - proc proc rw\n\
            36 35 98:0 /x /mnt/with\\040space\\134back rw master:1 shared:2 - fuse.layerfs layerfs rw\n\
            37 35 98:0 / /plain rw - tmpfs tmpfs rw\n\
            garbage\n";
        let m = parse_mountinfo(info);
        assert_eq!(
            m,
            vec![
                (p("/proc"), "proc".to_string()),
                (p(r"/mnt/with space\back"), "fuse.layerfs".to_string()),
                (p("/plain"), "tmpfs".to_string()),
            ]
        );
        assert_eq!(unescape_octal(br"a\011b\012\999\0"), b"a\tb\n\\999\\0");
        assert!(
            mount_points()
                .unwrap()
                .iter()
                .any(|(p, _)| p == Path::new("/"))
        );
    }

    // ---- validation ----

    struct Fixture {
        tmp: tempfile::TempDir,
    }

    impl Fixture {
        fn new() -> Self {
            Fixture {
                tmp: tempfile::tempdir().unwrap(),
            }
        }
        fn dir(&self, rel: &str) -> PathBuf {
            let p = self.tmp.path().join(rel);
            fs::create_dir_all(&p).unwrap();
            p
        }
        fn path(&self, rel: &str) -> PathBuf {
            self.tmp.path().join(rel)
        }
    }

    fn spec(lowers: &[&Path], upper: Option<&Path>, work: Option<&Path>) -> MountSpec {
        MountSpec {
            lowers: lowers.iter().map(|p| p.to_path_buf()).collect(),
            upper: upper.map(Path::to_path_buf),
            work: work.map(Path::to_path_buf),
            ..MountSpec::default()
        }
    }

    fn verr(s: &MountSpec, mnt: &Path) -> String {
        let msg = validate(s, mnt).expect_err("should fail").to_string();
        assert!(!msg.contains('\n'), "{msg:?}");
        msg
    }

    #[test]
    fn validate_ok_read_only() {
        let f = Fixture::new();
        let (a, b, m) = (f.dir("a"), f.dir("b"), f.dir("m"));
        // A relative, non-canonical spelling comes back canonical.
        let b_odd = f.path("a/../b/.");
        let v = validate(&spec(&[&a, &b_odd], None, None), &m).unwrap();
        let canon = |p: &Path| fs::canonicalize(p).unwrap();
        assert_eq!(v.lowers, vec![canon(&a), canon(&b)]);
        assert_eq!(v.mountpoint, canon(&m));
        assert!(v.read_only);
        assert_eq!(v.upper, None);
        assert_eq!(v.work, None);
    }

    #[test]
    fn validate_ok_writable_and_leftover_work_dir() {
        let f = Fixture::new();
        let (l, u, w, m) = (f.dir("l"), f.dir("u"), f.dir("w"), f.dir("m"));
        f.dir("w/work/leftover");
        f.dir("w/index");
        let mut s = spec(&[&l], Some(&u), Some(&w));
        s.whiteout = WhiteoutFormat::Oci;
        s.allow_other = true;
        let v = validate(&s, &m).unwrap();
        assert!(!v.read_only);
        assert!(v.allow_other);
        assert_eq!(v.whiteout, WhiteoutFormat::Oci);
        assert_eq!(v.upper, Some(fs::canonicalize(&u).unwrap()));
        assert_eq!(v.work, Some(fs::canonicalize(&w).unwrap()));
        s.read_only = true;
        assert!(validate(&s, &m).unwrap().read_only);
    }

    #[test]
    fn validate_path_errors() {
        let f = Fixture::new();
        let (a, m) = (f.dir("a"), f.dir("m"));
        fs::write(f.path("file"), "x").unwrap();
        let missing = f.path("missing");
        let file = f.path("file");

        let msg = verr(&spec(&[&a, &missing], None, None), &m);
        assert_eq!(
            msg,
            format!("lowerdir {}: no such file or directory", missing.display())
        );
        let msg = verr(&spec(&[&file], None, None), &m);
        assert_eq!(msg, format!("lowerdir {}: not a directory", file.display()));
        let msg = verr(&spec(&[&file.join("x")], None, None), &m);
        assert!(msg.ends_with("not a directory"), "{msg}");
        let msg = verr(&spec(&[&a], None, None), &missing);
        assert_eq!(
            msg,
            format!(
                "mount point {}: no such file or directory",
                missing.display()
            )
        );
        let msg = verr(&spec(&[&a], None, None), &file);
        assert_eq!(
            msg,
            format!("mount point {}: not a directory", file.display())
        );
        let msg = verr(&spec(&[&a], Some(&missing), Some(&m)), &f.dir("m2"));
        assert!(msg.starts_with("upperdir "), "{msg}");
        let u = f.dir("u");
        let msg = verr(&spec(&[&a], Some(&u), Some(&file)), &m);
        assert!(
            msg.starts_with("workdir ") && msg.ends_with("not a directory"),
            "{msg}"
        );
        // Symlink loops and other errno values come out readable.
        std::os::unix::fs::symlink(f.path("loop"), f.path("loop")).unwrap();
        let msg = verr(&spec(&[&f.path("loop")], None, None), &m);
        assert!(msg.contains("too many levels of symbolic links"), "{msg}");
    }

    #[test]
    fn validate_unreadable_lower() {
        if nix::unistd::geteuid().is_root() {
            // root may read anything; nothing to check.
            return;
        }
        let f = Fixture::new();
        let (a, m) = (f.dir("a"), f.dir("m"));
        fs::set_permissions(&a, fs::Permissions::from_mode(0o000)).unwrap();
        let msg = verr(&spec(&[&a], None, None), &m);
        assert!(msg.contains("permission denied"), "{msg}");
        fs::set_permissions(&a, fs::Permissions::from_mode(0o755)).unwrap();
    }

    #[test]
    fn validate_overlaps() {
        let f = Fixture::new();
        let (a, b, m) = (f.dir("a"), f.dir("b"), f.dir("m"));
        let a_sub = f.dir("a/sub");
        let (u, w) = (f.dir("u"), f.dir("w"));
        let m_in_a = f.dir("a/mnt");
        let l_in_m = f.dir("m/lower");

        let cases: Vec<(MountSpec, PathBuf, String)> = vec![
            (
                spec(&[&a, &b, &a], None, None),
                m.clone(),
                format!("lowerdir {} is given twice", a.display()),
            ),
            (
                spec(&[&a, &a_sub], None, None),
                m.clone(),
                format!(
                    "lowerdir {} is inside lowerdir {}",
                    a_sub.display(),
                    a.display()
                ),
            ),
            (
                spec(&[&a_sub, &a], None, None),
                m.clone(),
                format!(
                    "lowerdir {} is inside lowerdir {}",
                    a_sub.display(),
                    a.display()
                ),
            ),
            (
                spec(&[&a], None, None),
                m_in_a.clone(),
                format!(
                    "mount point {} is inside lowerdir {}",
                    m_in_a.display(),
                    a.display()
                ),
            ),
            (
                spec(&[&l_in_m], None, None),
                m.clone(),
                format!(
                    "lowerdir {} is inside mount point {}",
                    l_in_m.display(),
                    m.display()
                ),
            ),
            (
                spec(&[&b], None, None),
                b.clone(),
                format!(
                    "mount point {} is the same directory as lowerdir {}",
                    b.display(),
                    b.display()
                ),
            ),
            (
                spec(&[&a], Some(&a_sub), Some(&w)),
                m.clone(),
                format!(
                    "upperdir {} is inside lowerdir {}",
                    a_sub.display(),
                    a.display()
                ),
            ),
            (
                spec(&[&a_sub], Some(&a), Some(&w)),
                m.clone(),
                format!(
                    "lowerdir {} is inside upperdir {}",
                    a_sub.display(),
                    a.display()
                ),
            ),
            (
                spec(&[&b], Some(&u), Some(&u)),
                m.clone(),
                format!(
                    "workdir {} is the same directory as upperdir {}",
                    u.display(),
                    u.display()
                ),
            ),
            (
                spec(&[&b], Some(&a), Some(&a_sub)),
                m.clone(),
                format!(
                    "workdir {} is inside upperdir {}",
                    a_sub.display(),
                    a.display()
                ),
            ),
            (
                spec(&[&b], Some(&u), Some(&w)),
                f.path("u"),
                format!(
                    "mount point {} is the same directory as upperdir {}",
                    u.display(),
                    u.display()
                ),
            ),
            (
                spec(&[&b], Some(&u), Some(&w)),
                f.dir("w/work/x"),
                format!(
                    "mount point {} is inside workdir {}",
                    f.path("w/work/x").display(),
                    w.display()
                ),
            ),
        ];
        for (s, mnt, want) in cases {
            assert_eq!(verr(&s, &mnt), want);
        }
        // The same directory under another name (a symlink) is the same.
        std::os::unix::fs::symlink(&a, f.path("alias")).unwrap();
        let msg = verr(&spec(&[&a, &f.path("alias")], None, None), &m);
        assert!(msg.contains("is the same directory as lowerdir"), "{msg}");
    }

    #[test]
    fn validate_work_not_empty() {
        let f = Fixture::new();
        let (l, u, w, m) = (f.dir("l"), f.dir("u"), f.dir("w"), f.dir("m"));
        fs::write(w.join("stray"), "").unwrap();
        let msg = verr(&spec(&[&l], Some(&u), Some(&w)), &m);
        assert_eq!(
            msg,
            format!("workdir {}: not empty (holds 'stray')", w.display())
        );
        // A file named `work` is not the kernel's layout.
        fs::remove_file(w.join("stray")).unwrap();
        fs::write(w.join("work"), "").unwrap();
        let msg = verr(&spec(&[&l], Some(&u), Some(&w)), &m);
        assert!(msg.ends_with("not empty (holds 'work')"), "{msg}");
        // The kernel refuses to reuse a volatile work dir; so do we.
        fs::remove_file(w.join("work")).unwrap();
        f.dir("w/incompat/volatile");
        let msg = verr(&spec(&[&l], Some(&u), Some(&w)), &m);
        assert!(msg.ends_with("not empty (holds 'incompat')"), "{msg}");
    }

    #[test]
    fn validate_rejects_a_mount_point() {
        // `/` is always mounted; it also holds every layer, so use /proc,
        // which is a mount point and holds none of ours.
        let f = Fixture::new();
        let a = f.dir("a");
        let msg = verr(&spec(&[&a], None, None), Path::new("/proc"));
        assert_eq!(msg, "mount point /proc: something is already mounted there");
    }

    #[test]
    fn validate_rejects_incomplete_specs() {
        let f = Fixture::new();
        let (a, m) = (f.dir("a"), f.dir("m"));
        assert_eq!(
            validate(&MountSpec::default(), &m).unwrap_err(),
            OptionsError::NoLower
        );
        let msg = verr(&spec(&[&a], Some(&a), None), &m);
        assert!(msg.contains("needs a workdir"), "{msg}");
    }
}
