//! layerfs: a union filesystem for container image layers, served over
//! FUSE. Data flows one way: `cli` → `union` (over `layers`) → `fs` → kernel.

pub mod cli;
pub mod error;
pub mod fs;
pub mod image;
pub mod layers;
pub mod runtime;
pub mod union;
