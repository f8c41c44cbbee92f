//! Security: who may talk to the server and what crosses the network.
//!
//! Layout:
//! - `tls.rs`: the server over TLS with a test CA; the CLI, a runner and the official SDK

mod tls;
