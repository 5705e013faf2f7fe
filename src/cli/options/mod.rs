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

use std::fmt;
use std::path::{Path, PathBuf};

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
    /// Overlay `metacopy=on`: metadata-only copy-up (off unless given).
    pub metacopy: bool,
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
    pub metacopy: bool,
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
    check_layers_given(&spec)?;
    if parsed.volatile && spec.upper.is_none() {
        return Err(OptionsError::NeedsUpper("volatile"));
    }
    // fuse-overlayfs's fsync=0 is volatile where there is something to sync.
    spec.volatile = parsed.volatile || (spec.engine.no_fsync && spec.upper.is_some());
    Ok(spec)
}

/// At least one lower layer, and an upper only with a work dir (checked
/// when parsing, and again for a spec built another way).
pub(super) fn check_layers_given(spec: &MountSpec) -> Result<(), OptionsError> {
    if spec.lowers.is_empty() {
        return Err(OptionsError::NoLower);
    }
    match (&spec.upper, &spec.work) {
        (Some(u), None) => Err(OptionsError::UpperWithoutWork(u.clone())),
        (None, Some(w)) => Err(OptionsError::WorkWithoutUpper(w.clone())),
        _ => Ok(()),
    }
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
    let mut redirect_given = false;
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
                    redirect_given = true;
                    spec.redirect_dir =
                        match choice(key, value, &allowed, "on, off, follow or nofollow")? {
                            "on" => RedirectDir::On,
                            // `off` is `follow` where the kernel is built with
                            // redirect_always_follow (its default).
                            "off" | "follow" => RedirectDir::Follow,
                            _ => RedirectDir::NoFollow,
                        };
                }
                "metacopy" => {
                    spec.metacopy = choice(key, value, ON_OFF.0, ON_OFF.1)? == "on";
                }
                "index" | "nfs_export" => {
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
    // The kernel's rule: metacopy files are found through redirects, so
    // metacopy=on refuses a redirect_dir that does not create them.
    if spec.metacopy && redirect_given && spec.redirect_dir != crate::union::RedirectDir::On {
        return Err(OptionsError::Conflict {
            first: "metacopy=on",
            second: "a redirect_dir other than on",
        });
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

mod validate;

pub use validate::{mount_points, validate};

#[cfg(test)]
mod tests;
