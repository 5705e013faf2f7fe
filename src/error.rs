//! The one error type of the filesystem: an errno, the operation and the
//! path it concerns, so it can be logged once and answered to the kernel.

use std::fmt;
use std::io;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Error {
    errno: i32,
    op: &'static str,
    path: String,
    detail: Option<String>,
}

pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    pub fn new(errno: i32, op: &'static str, path: impl fmt::Display, detail: &str) -> Error {
        Error {
            errno,
            op,
            path: path.to_string(),
            detail: Some(detail.to_string()),
        }
    }

    /// Just an errno, as the kernel expects for routine answers (ENOENT).
    pub fn errno(errno: i32, op: &'static str, path: impl fmt::Display) -> Error {
        Error {
            errno,
            op,
            path: path.to_string(),
            detail: None,
        }
    }

    pub fn io(err: io::Error, op: &'static str, path: impl fmt::Display) -> Error {
        Error {
            errno: err.raw_os_error().unwrap_or(libc::EIO),
            op,
            path: path.to_string(),
            detail: None,
        }
    }

    pub fn raw_errno(&self) -> i32 {
        self.errno
    }

    /// Errors that are an ordinary answer, not a fault worth a warning.
    pub fn is_routine(&self) -> bool {
        matches!(
            self.errno,
            libc::ENOENT
                | libc::ENODATA
                | libc::ERANGE
                | libc::ENOTDIR
                | libc::EISDIR
                | libc::ENOTEMPTY
                | libc::EEXIST
                | libc::ENAMETOOLONG
                | libc::EXDEV
                | libc::EPERM
                | libc::EACCES
                | libc::EROFS
                | libc::ENOTSUP
                | libc::EINVAL
                | libc::ENOSYS
        )
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let reason = match &self.detail {
            Some(d) => d.clone(),
            None => io::Error::from_raw_os_error(self.errno).to_string(),
        };
        write!(f, "{} {}: {}", self.op, self.path, reason)
    }
}

impl std::error::Error for Error {}
