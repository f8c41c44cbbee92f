//! Workflow releases: the project configuration (`tilebox.workflow.toml`), which files a
//! release holds, the deterministic archive they are written to, its content fingerprint, and
//! the safe extraction of untrusted archives. No network and no async here.
//!
//! The build pipeline (`tilebox workflow build-release`) puts these together and then
//! validates what it archived: it extracts the archive, builds its environment and imports the
//! runner object.
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
