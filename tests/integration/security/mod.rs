//! Security: who may call what.
//!
//! Layout:
//! - `keys.rs`: scoped API keys (admin, runner, read-only), the keys file and its CLI
mod keys;
