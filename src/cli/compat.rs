//! fuse-overlayfs compatibility: the command line container engines run as
//! their overlay `mount_program` (`PROG [-f] [-d] -o OPTS TARGET`) and the
//! options fuse-overlayfs takes beyond the kernel overlay's, so one
//! containers/storage store works with either program.

use std::ffi::OsString;
use std::path::PathBuf;

use super::options::OptionsError;
use crate::fs::view::IdRange;

/// fuse-overlayfs's own options, as parsed from `-o`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct EngineOptions {
    pub uid_map: Vec<IdRange>,
    pub gid_map: Vec<IdRange>,
    pub squash_uid: Option<u32>,
    pub squash_gid: Option<u32>,
    pub squash_to_root: bool,
    /// 0 (off), 1 (`security.fuseoverlayfs.override_stat`) or 2
    /// (`user.containers.override_stat`).
    pub xattr_permissions: u8,
    pub static_nlink: bool,
    /// `fsync=0`: as `volatile` when there is an upper.
    pub no_fsync: bool,
    /// Accepted and without effect here, as given (one debug line each).
    pub ignored: Vec<String>,
}

impl EngineOptions {
    /// The uid shown for every file, if squashed (`squash_to_uid` wins over
    /// `squash_to_root`, as in fuse-overlayfs).
    pub fn shown_uid(&self) -> Option<u32> {
        self.squash_uid.or(self.squash_to_root.then_some(0))
    }

    pub fn shown_gid(&self) -> Option<u32> {
        self.squash_gid.or(self.squash_to_root.then_some(0))
    }
}

/// Options fuse-overlayfs takes that change nothing in layerfs: libfuse
/// tuning (`threaded`, `max_idle_threads`, `writeback`), its plugins, the
/// SELinux `context` (the kernel applies it to the mount, not the daemon),
/// `noxattrs` (layerfs passes xattrs through), `noacl` (layerfs never asks
/// the kernel for POSIX ACL handling), `debug`, `fast_ino` and `timeout`.
const NO_EFFECT: &[&str] = &[
    "threaded",
    "plugins",
    "writeback",
    "max_idle_threads",
    "context",
    "fscontext",
    "defcontext",
    "rootcontext",
    "debug",
    "noxattrs",
    "noacl",
    "fast_ino",
    "timeout",
];

/// One option fuse-overlayfs defines; `Ok(false)` when it is not one.
pub fn parse_option(
    key: &str,
    value: Option<&str>,
    engine: &mut EngineOptions,
) -> Result<bool, OptionsError> {
    match key {
        "uidmapping" | "gidmapping" => {
            let ranges = parse_mapping(key, value)?;
            if key == "uidmapping" {
                engine.uid_map = ranges;
            } else {
                engine.gid_map = ranges;
            }
        }
        "squash_to_uid" | "squash_to_gid" => {
            let id = parse_id(key, value)?;
            if key == "squash_to_uid" {
                engine.squash_uid = Some(id);
            } else {
                engine.squash_gid = Some(id);
            }
        }
        "squash_to_root" => {
            flag(key, value)?;
            engine.squash_to_root = true;
        }
        "xattr_permissions" => {
            engine.xattr_permissions = match value {
                Some("0") => 0,
                Some("1") => 1,
                Some("2") => 2,
                None => return Err(OptionsError::MissingValue(key.into())),
                Some(v) => {
                    return Err(OptionsError::BadValue {
                        option: key.into(),
                        value: v.into(),
                        expected: "0, 1 or 2",
                    });
                }
            }
        }
        "static_nlink" => {
            flag(key, value)?;
            engine.static_nlink = true;
        }
        "fsync" => match value {
            Some("0") => engine.no_fsync = true,
            Some("1") => engine.no_fsync = false,
            None => return Err(OptionsError::MissingValue(key.into())),
            Some(v) => {
                return Err(OptionsError::BadValue {
                    option: key.into(),
                    value: v.into(),
                    expected: "0 or 1",
                });
            }
        },
        k if NO_EFFECT.contains(&k) => {
            engine.ignored.push(match value {
                Some(v) => format!("{k}={v}"),
                None => k.to_string(),
            });
        }
        _ => return Ok(false),
    }
    Ok(true)
}

fn flag(key: &str, value: Option<&str>) -> Result<(), OptionsError> {
    match value {
        None => Ok(()),
        Some(v) => Err(OptionsError::UnexpectedValue {
            option: key.into(),
            value: v.into(),
        }),
    }
}

fn parse_id(key: &str, value: Option<&str>) -> Result<u32, OptionsError> {
    let v = match value {
        None => return Err(OptionsError::MissingValue(key.into())),
        Some("") => return Err(OptionsError::EmptyValue(key.into())),
        Some(v) => v,
    };
    v.parse().map_err(|_| OptionsError::BadValue {
        option: key.into(),
        value: v.into(),
        expected: "a numeric id",
    })
}

/// `STORED:SHOWN:LEN[:STORED:SHOWN:LEN...]`, with or without the leading
/// `:` containers/storage puts there.
fn parse_mapping(key: &str, value: Option<&str>) -> Result<Vec<IdRange>, OptionsError> {
    let v = match value {
        None => return Err(OptionsError::MissingValue(key.into())),
        Some(v) => v,
    };
    let body = v.strip_prefix(':').unwrap_or(v);
    if body.is_empty() {
        return Err(OptionsError::EmptyValue(key.into()));
    }
    let bad = || OptionsError::BadValue {
        option: key.into(),
        value: v.into(),
        expected: "ID:ID:LENGTH triples separated by ':'",
    };
    let numbers = body
        .split(':')
        .map(|n| n.parse::<u32>().map_err(|_| bad()))
        .collect::<Result<Vec<_>, _>>()?;
    if numbers.len() % 3 != 0 {
        return Err(bad());
    }
    let ranges: Vec<IdRange> = numbers
        .chunks_exact(3)
        .map(|c| IdRange {
            stored: c[0],
            shown: c[1],
            len: c[2],
        })
        .collect();
    let overflows = |start: u32, len: u32| start.checked_add(len.saturating_sub(1)).is_none();
    if ranges
        .iter()
        .any(|r| r.len == 0 || overflows(r.stored, r.len) || overflows(r.shown, r.len))
    {
        return Err(bad());
    }
    Ok(ranges)
}

/// Splits an `-o` argument at commas, except inside a double-quoted value
/// (`context="system_u:object_r:container_file_t:s0:c1,c2"`), whose quotes
/// are removed. A backslash still escapes the next character (kept for the
/// next level).
pub fn split_options(s: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut escaped = false;
    let mut quoted = false;
    for c in s.chars() {
        if escaped {
            cur.push(c);
            escaped = false;
        } else if c == '\\' {
            cur.push(c);
            escaped = true;
        } else if quoted {
            if c == '"' {
                quoted = false;
            } else {
                cur.push(c);
            }
        } else if c == '"' && cur.ends_with('=') {
            quoted = true;
        } else if c == ',' {
            out.push(std::mem::take(&mut cur));
        } else {
            cur.push(c);
        }
    }
    out.push(cur);
    out
}

/// The command line of `PROG [-f] [-d|--debug] -o OPTS TARGET`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EngineCommand {
    pub options: Vec<String>,
    pub foreground: bool,
    pub debug: bool,
    pub mountpoint: PathBuf,
}

/// Whether the arguments (after the program name) are fuse-overlayfs's
/// form rather than a subcommand.
pub fn is_engine_form(args: &[OsString]) -> bool {
    args.first()
        .and_then(|a| a.to_str())
        .is_some_and(|a| a.starts_with("-o") || matches!(a, "-f" | "-d" | "--debug"))
}

/// Parses fuse-overlayfs's command line. libfuse's `-d` implies `-f`.
pub fn engine_args(args: &[OsString]) -> Result<EngineCommand, String> {
    let mut options = Vec::new();
    let mut positional = Vec::new();
    let (mut foreground, mut debug) = (false, false);
    let mut iter = args.iter();
    while let Some(arg) = iter.next() {
        match arg.to_str() {
            Some("-o") => {
                let v = iter.next().ok_or("option -o needs a value")?;
                options.push(v.to_string_lossy().into_owned());
            }
            Some(o) if o.starts_with("-o") => options.push(o[2..].to_string()),
            Some("-f") => foreground = true,
            Some("-d" | "--debug") => {
                debug = true;
                foreground = true;
            }
            Some(o) if o.starts_with('-') && o.len() > 1 => {
                return Err(format!("unknown argument '{o}'"));
            }
            _ => positional.push(PathBuf::from(arg)),
        }
    }
    let [mountpoint] = <[PathBuf; 1]>::try_from(positional)
        .map_err(|_| "usage: layerfs [-f] [-d] -o lowerdir=...[,OPTIONS] MOUNTPOINT".to_string())?;
    Ok(EngineCommand {
        options,
        foreground,
        debug,
        mountpoint,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(list: &[(&str, Option<&str>)]) -> Result<EngineOptions, OptionsError> {
        let mut e = EngineOptions::default();
        for (k, v) in list {
            assert!(parse_option(k, *v, &mut e)?, "{k} not recognised");
        }
        Ok(e)
    }

    #[test]
    fn mappings_in_every_form() {
        let want = vec![IdRange {
            stored: 0,
            shown: 100000,
            len: 65536,
        }];
        for v in [":0:100000:65536", "0:100000:65536"] {
            assert_eq!(opts(&[("uidmapping", Some(v))]).unwrap().uid_map, want);
            assert_eq!(opts(&[("gidmapping", Some(v))]).unwrap().gid_map, want);
        }
        let two = opts(&[("uidmapping", Some("0:1000:1:1:110000:65536"))]).unwrap();
        assert_eq!(two.uid_map.len(), 2);
        assert_eq!(
            two.uid_map[1],
            IdRange {
                stored: 1,
                shown: 110000,
                len: 65536
            }
        );
        for bad in ["0:1", "a:b:c", "0:0:0", ":", "0:4294967295:2", "0:1:2:3"] {
            let e = opts(&[("uidmapping", Some(bad))]).unwrap_err();
            assert!(e.to_string().contains("uidmapping"), "{e}");
        }
        assert!(matches!(
            opts(&[("uidmapping", None)]),
            Err(OptionsError::MissingValue(_))
        ));
    }

    #[test]
    fn squash_and_permissions() {
        let e = opts(&[("squash_to_root", None)]).unwrap();
        assert_eq!((e.shown_uid(), e.shown_gid()), (Some(0), Some(0)));
        let e = opts(&[
            ("squash_to_root", None),
            ("squash_to_uid", Some("1000")),
            ("squash_to_gid", Some("100")),
        ])
        .unwrap();
        assert_eq!((e.shown_uid(), e.shown_gid()), (Some(1000), Some(100)));
        assert!(opts(&[("squash_to_uid", Some("x"))]).is_err());
        assert!(opts(&[("squash_to_uid", Some(""))]).is_err());
        assert!(opts(&[("squash_to_root", Some("1"))]).is_err());
        for (v, n) in [("0", 0), ("1", 1), ("2", 2)] {
            let e = opts(&[("xattr_permissions", Some(v))]).unwrap();
            assert_eq!(e.xattr_permissions, n);
        }
        assert!(opts(&[("xattr_permissions", Some("3"))]).is_err());
        assert!(opts(&[("fsync", Some("0"))]).unwrap().no_fsync);
        assert!(opts(&[("fsync", Some("2"))]).is_err());
        assert!(opts(&[("static_nlink", None)]).unwrap().static_nlink);
    }

    #[test]
    fn no_effect_options_are_remembered() {
        let e = opts(&[
            ("threaded", Some("1")),
            ("plugins", Some("")),
            ("writeback", Some("0")),
            ("max_idle_threads", Some("10")),
            ("noxattrs", Some("1")),
            ("noacl", None),
            ("debug", None),
            (
                "context",
                Some("system_u:object_r:container_file_t:s0:c1,c2"),
            ),
        ])
        .unwrap();
        assert_eq!(e.ignored.len(), 8);
        assert!(!parse_option("nosuchthing", None, &mut EngineOptions::default()).unwrap());
    }

    #[test]
    fn quoted_values_keep_their_commas() {
        assert_eq!(
            split_options(r#"lowerdir=/a,context="system_u:object_r:c:s0:c1,c2",,volatile,"#),
            vec![
                "lowerdir=/a",
                "context=system_u:object_r:c:s0:c1,c2",
                "",
                "volatile",
                ""
            ]
        );
        assert_eq!(split_options(r"a\,b,c"), vec![r"a\,b", "c"]);
        // A quote that does not open a value is an ordinary character.
        assert_eq!(
            split_options(r#"lowerdir=/x"y,ro"#),
            vec![r#"lowerdir=/x"y"#, "ro"]
        );
    }

    #[test]
    fn engine_command_lines() {
        let a = |v: &[&str]| v.iter().map(OsString::from).collect::<Vec<_>>();
        let args = a(&[
            "-o",
            "lowerdir=/s/overlay/l/ABC:/s/overlay/l/DEF,upperdir=/s/overlay/1/diff,workdir=/s/overlay/1/work,,volatile",
            "/s/overlay/1/merged",
        ]);
        assert!(is_engine_form(&args));
        let c = engine_args(&args).unwrap();
        assert_eq!(c.mountpoint, PathBuf::from("/s/overlay/1/merged"));
        assert!(!c.foreground && !c.debug);
        let c = engine_args(&a(&["-d", "-olowerdir=/a", "/m"])).unwrap();
        assert!(c.debug && c.foreground);
        assert_eq!(c.options, vec!["lowerdir=/a"]);
        assert!(engine_args(&a(&["-o", "lowerdir=/a"])).is_err());
        assert!(engine_args(&a(&["-o", "lowerdir=/a", "/m", "/n"])).is_err());
        assert!(engine_args(&a(&["-x", "/m"])).is_err());
        assert!(!is_engine_form(&a(&["mount", "-o", "x", "/m"])));
    }
}
