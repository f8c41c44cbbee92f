//! `tilebox`: a self-hostable implementation of the Tilebox workflows stack.
//!
//! One crate, modules as boundaries (see `docs/ARCHITECTURE.md`):
//! - `api`: generated protobuf/gRPC code and conversions
//! - `client`: typed client over the API (used by the CLI and the runner)
//! - `server`: the orchestrator: gRPC services -> scheduler -> store
//! - `python`: embedded CPython (the only module using pyo3): sub-interpreters, child hosts
//! - `release`: tilebox.workflow.toml, file selection, deterministic archives
//! - `runner`: the release runner (deployments, slots, leases, artifacts)
//! - `cli`: the command tree; no business logic
//! - `progress`: how long work reports its steps (the CLI renders them, the runner logs them)
//! - `env`: every environment variable, declared once

pub mod api;
pub mod cli;
pub mod client;
pub mod env;
pub mod progress;
pub mod python;
pub mod release;
pub mod runner;
pub mod server;
