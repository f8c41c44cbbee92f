//! Security: authentication that fails closed, fencing, API keys, TLS (issue #13). One module per
//! concern; each asserts its refusals through the real `tilebox` binary.

mod auth;
mod fencing;
