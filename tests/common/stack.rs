//! A fixture materialized as lower layers, with an empty upper and work
//! dir next to it: the starting point of the writable-mount tests.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use super::{Dialect, escape_opt_path, materialize};

pub struct Stack {
    /// The lower layers, top first.
    pub layers: Vec<PathBuf>,
    pub upper: PathBuf,
    pub work: PathBuf,
    _dir: tempfile::TempDir,
}

impl Stack {
    pub fn new(prefix: &str, fixture: &str, dialect: Dialect) -> Stack {
        super::require_root();
        let dir = super::tempdir(prefix);
        let root = dir.path().canonicalize().expect("canonical temp dir");
        let (lowers, upper, work) = (root.join("layers"), root.join("upper"), root.join("work"));
        for d in [&lowers, &upper, &work] {
            fs::create_dir(d).unwrap_or_else(|e| panic!("mkdir {}: {e}", d.display()));
        }
        let layers = materialize(fixture, dialect, &lowers);
        Stack {
            layers,
            upper,
            work,
            _dir: dir,
        }
    }

    /// `upperdir=U,workdir=W`.
    pub fn uw(&self) -> String {
        uw(&self.upper, &self.work)
    }
}

/// `upperdir=U,workdir=W`, escaped for a mount option string.
pub fn uw(upper: &Path, work: &Path) -> String {
    format!(
        "upperdir={},workdir={}",
        escape_opt_path(upper),
        escape_opt_path(work)
    )
}

/// The result of a test step, or a panic naming the step and the error.
pub fn step<T>(what: &str, r: io::Result<T>) -> T {
    r.unwrap_or_else(|e| panic!("{what}: {e}"))
}
