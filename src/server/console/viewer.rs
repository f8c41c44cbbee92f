//! Who is looking at the console, and the CSRF check of the forms they post.

use std::sync::Arc;

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::response::{IntoResponse, Redirect, Response};

use super::ConsoleState;
use crate::server::auth::{Action, Principal};

/// The principal a console request acts as, and the token its forms must carry.
#[derive(Debug, Clone)]
pub struct Viewer {
    pub principal: Arc<Principal>,
    /// Put in every form as `csrf`; a POST without it is refused.
    pub csrf: String,
    /// Whether there is a session to log out of (an open server has none).
    pub signed_in: bool,
}

impl Viewer {
    /// Whether the key may perform `action`: buttons it may not use are not shown.
    pub fn allows(&self, action: Action) -> bool {
        self.principal.allows(action)
    }

    /// The key's name, shown in the navigation.
    pub fn name(&self) -> &str {
        &self.principal.name
    }
}

impl FromRequestParts<ConsoleState> for Viewer {
    type Rejection = Response;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &ConsoleState,
    ) -> Result<Self, Self::Rejection> {
        if state.authenticate.is_open() {
            let principal = state
                .authenticate
                .resolve(None)
                .expect("an open server accepts every caller");
            return Ok(Viewer {
                principal,
                csrf: String::new(),
                signed_in: false,
            });
        }
        let next = parts
            .uri
            .path_and_query()
            .map_or("/jobs", |path| path.as_str());
        Err(Redirect::to(&format!("/login?next={}", urlencode(next))).into_response())
    }
}

/// Percent-encodes everything but unreserved characters (RFC 3986).
pub fn urlencode(text: &str) -> String {
    let mut encoded = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
            encoded.push(char::from(byte));
        } else {
            encoded.push_str(&format!("%{byte:02X}"));
        }
    }
    encoded
}
