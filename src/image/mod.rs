//! Images: OCI import, the layer store, commit, and explaining layers.

pub mod inspect;
