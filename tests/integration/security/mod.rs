//! Security (issue #13): authentication that fails closed, fencing, scoped API keys, TLS.
//! Each module asserts its refusals through the real `tilebox` binary.
//!
//! Layout:
//! - `auth.rs`: empty tokens and open servers on the network are start-up errors
//! - `fencing.rs`: only a task's claimant reports it or extends its lease
//! - `keys.rs`: scoped API keys (admin, runner, read-only), the keys file and its CLI
//! - `tls.rs`: the server over TLS with a test CA; our CLI, runner and the official SDK

mod auth;
mod fencing;
mod keys;
pub(crate) mod tls;
