//! The integration tests: the real `tilebox` binary (`CARGO_BIN_EXE_tilebox`) in temp dirs,
//! servers on `127.0.0.1:0`, runner processes, the CLI, and the official Python SDK. One test
//! binary, one module per area, so they link once; filter an area with its module name
//! (`cargo nextest run --test integration runner::`).
//!
//! Layout:
//! - `common/`: the helpers every area uses (test server, waiting, CLI JSON, gRPC, projects)
//! - `server.rs`: authentication, error codes, version matching, long-polling, `kill -9`
//! - `runner.rs`: the runner in direct mode, slots, leases, shutdown, SDK interop
//! - `dev.rs`: `tilebox dev`: the parallel-sleep guide against it, reloads after edits
//! - `release.rs`: init, build, publish, deploy, a release runner fixing a failed job
//! - `telemetry.rs`: task logs and spans from the runner to the CLI
//! - `faults.rs`: lost leases, server kills and outages, frozen and unreachable runners
//! - `storage_faults.rs`: the data directory on a tmpfs that fills up
//! - `hostile.rs`: hostile artifacts, malformed configs and inputs, bad keys
//! - `interop.rs`: the official SDK against our server (scripts in `tests/interop/`)
//! - `progress.rs`: progress bars on a terminal (a pseudo-terminal), none when piped or `--json`
//! - `security/`: authentication that fails closed, API keys, TLS
//! - `python.rs`: the embedding layer with real CPython and uv venvs
//! - `snapshots.rs`: what the CLI prints (insta; `.snap` files in `snapshots/`)
//! - `task_debug.rs`: `task run --from-job`, `--pdb` and `breakpoint()` at a pseudo-terminal,
//!   `--input` as an object of the task's fields
//! - `shell.rs`: `tilebox --version` and `tilebox completions`
//! - `console/`: the web console: HTTP behaviour, auth, and pages in headless Chromium

mod common;

mod console;
mod dev;
mod faults;
mod hostile;
mod interop;
mod presence;
mod progress;
mod python;
mod release;
mod replicas;
mod runner;
mod security;
mod server;
mod shell;
mod snapshots;
mod storage_faults;
mod task_debug;
mod telemetry;
mod work;
