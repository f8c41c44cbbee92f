//! Who is looking at the console, and the CSRF check of the forms they post.

use std::sync::Arc;

use axum::extract::FromRequestParts;
use axum::http::{HeaderMap, header, request::Parts};
use axum::response::{IntoResponse, Redirect, Response};

use super::{ConsoleError, ConsoleState};
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

    /// Refuses a form post that another site could have made: the browser must say the
    /// request came from this origin, and the form must carry this viewer's token.
    pub fn check_form(&self, headers: &HeaderMap, token: &str) -> Result<(), ConsoleError> {
        if !same_origin(headers) {
            return Err(ConsoleError::Forbidden(
                "this form was not sent from the console's own pages (Origin or \
                 Sec-Fetch-Site names another site)"
                    .to_string(),
            ));
        }
        if !constant_time_equal(self.csrf.as_bytes(), token.as_bytes()) {
            return Err(ConsoleError::Forbidden(
                "this form's token is missing or stale; reload the page and try again".to_string(),
            ));
        }
        Ok(())
    }
}

/// Whether the browser says the request comes from this origin: `Sec-Fetch-Site` is
/// `same-origin` (or `none`: typed by the user), or else `Origin` names the `Host`. A
/// request with neither (not from a browser that could be tricked) passes to the token.
pub fn same_origin(headers: &HeaderMap) -> bool {
    if let Some(site) = headers.get("sec-fetch-site") {
        return matches!(site.as_bytes(), b"same-origin" | b"none");
    }
    let Some(origin) = headers.get(header::ORIGIN) else {
        return true;
    };
    let Some(host) = headers
        .get(header::HOST)
        .and_then(|host| host.to_str().ok())
    else {
        return false;
    };
    let Ok(origin) = origin.to_str() else {
        return false;
    };
    origin
        .strip_prefix("http://")
        .or_else(|| origin.strip_prefix("https://"))
        .is_some_and(|authority| authority.eq_ignore_ascii_case(host))
}

fn constant_time_equal(left: &[u8], right: &[u8]) -> bool {
    left.len() == right.len()
        && left
            .iter()
            .zip(right)
            .fold(0u8, |difference, (a, b)| difference | (a ^ b))
            == 0
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
