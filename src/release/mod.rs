//! Workflow releases: the project configuration (`tilebox.workflow.toml`), file selection and
//! deterministic archives, and (coming) validation. No network and no async here.
//!
//! Layout:
//! - `mod.rs`: module docs
//! - `config.rs`: finding and parsing `tilebox.workflow.toml`
//! - `select.rs`: which files go into a release (globs, `.gitignore`, symlink rules)
//! - `archive/`: the deterministic `.tar.zst` writer, the content fingerprint, and safe
//!   extraction of untrusted archives

pub mod archive;
pub mod config;
pub mod select;
