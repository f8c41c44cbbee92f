//! Workflow releases: the project configuration (`tilebox.workflow.toml`), which files a
//! release holds, the deterministic archive they are written to, its content fingerprint, the
//! safe extraction of untrusted archives, and the build pipeline that validates and
//! fingerprints a release. No network and no async here: validation, which loads Python, is
//! a step the caller passes in.
//!
//! Layout:
//! - `mod.rs`: module docs
//! - `config.rs`: finding and parsing `tilebox.workflow.toml`
//! - `select.rs`: which files go into a release (globs, `.gitignore`, symlink rules)
//! - `build.rs`: the build pipeline (select, archive, validate, fingerprint) and the release
//!   content it publishes
//! - `archive/`: the deterministic `.tar.zst` writer, the content fingerprint, and safe
//!   extraction of untrusted archives

pub mod archive;
pub mod build;
pub mod config;
pub mod select;
