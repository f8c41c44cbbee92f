//! Workflow releases: the project configuration (`tilebox.workflow.toml`), and (coming)
//! file selection, deterministic archives and validation. No network and no async here.
//!
//! Layout:
//! - `mod.rs`: module docs
//! - `config.rs`: finding and parsing `tilebox.workflow.toml`

pub mod config;
