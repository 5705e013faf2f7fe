//! Images: importing OCI image layouts and `docker save` archives into a
//! content-addressed store, and the store itself — blobs, unpacked layers
//! keyed by diff_id, image records, containers' writable layers and the
//! records of live mounts. Knows nothing of FUSE: a mount gets plain layer
//! directories from here. The layout is written down in docs/formats.md.

pub mod archive;
pub mod commit;
pub mod containers;
pub mod digest;
pub mod export;
pub mod import;
pub mod inspect;
pub mod layer_add;
pub mod progress;
pub mod spec;
pub mod store;
pub mod unpack;

pub use containers::{Container, ContainerRecord, MountRecord, MountRecordGuard};
pub use digest::Digest;
pub use export::{ExportFormat, export};
pub use import::{ImportOptions, ImportReport, import};
pub use layer_add::{AddedLayer, LayerExpect};
pub use store::{Image, ImageRecord, LayerRecord, Store, StoreLock};

use std::fmt;

/// An image or store error: one line that names the image, blob or path
/// and the cause.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageError {
    message: String,
}

pub type Result<T> = std::result::Result<T, ImageError>;

impl ImageError {
    pub fn new(message: impl Into<String>) -> ImageError {
        ImageError {
            message: message.into(),
        }
    }

    /// The same error with what it concerns in front: `context: message`.
    pub fn context(self, context: impl fmt::Display) -> ImageError {
        ImageError {
            message: format!("{context}: {}", self.message),
        }
    }

    pub fn io(op: &str, path: &std::path::Path, err: std::io::Error) -> ImageError {
        ImageError::new(format!("{op} {}: {err}", path.display()))
    }
}

impl fmt::Display for ImageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for ImageError {}
