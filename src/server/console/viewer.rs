//! Who is looking at the console, and the CSRF check of the forms they post.

use std::sync::Arc;

use axum::extract::FromRequestParts;
use axum::http::{HeaderMap, header, request::Parts};
use axum::response::{IntoResponse, Response};

use super::{ConsoleError, ConsoleState, session};
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

    /// `message` as an in-process gRPC request made by this viewer: its principal in the
    /// extensions, exactly where the auth interceptor puts it, so the service checks the
    /// viewer's permissions as for any API call.
    pub fn request<T>(&self, message: T) -> tonic::Request<T> {
        let mut request = tonic::Request::new(message);
        request.extensions_mut().insert(self.principal.clone());
        request
    }

    /// The key's name, shown in the navigation.
    pub fn name(&self) -> &str {
        &self.principal.name
    }

    /// Refuses a form post that another site could have made: the browser must say the
    /// request came from this origin, and the form must carry this viewer's token.
    pub fn check_form(&self, headers: &HeaderMap, token: &str) -> Result<(), ConsoleError> {
        Self::check_origin(headers)?;
        if self.csrf.is_empty() || !constant_time_equal(self.csrf.as_bytes(), token.as_bytes()) {
            return Err(ConsoleError::Forbidden(
                "this form's token is missing or stale; reload the page and try again".to_string(),
            ));
        }
        Ok(())
    }
}

impl Viewer {
    /// Refuses a post that the browser says another site sent. The whole check for the
    /// login form, which has no viewer yet (and part of [`Viewer::check_form`]).
    pub fn check_origin(headers: &HeaderMap) -> Result<(), ConsoleError> {
        if same_origin(headers) {
            Ok(())
        } else {
            Err(ConsoleError::Forbidden(
                "this form was not sent from the console's own pages (Origin or \
                 Sec-Fetch-Site names another site)"
                    .to_string(),
            ))
        }
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

/// An open server's viewer is the anonymous admin, whose forms repeat the `tilebox_csrf`
/// cookie; a keyed server's is the key of the request's session, and a request without a
/// valid session is sent to the login (a fragment gets 401).
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
                csrf: session::open_csrf(parts),
                signed_in: false,
            });
        }
        match session::signed_in(parts, state).await {
            Ok(Some(viewer)) => Ok(viewer),
            Ok(None) => Err(session::log_in_first(parts)),
            Err(error) => Err(error.into_response()),
        }
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

#[cfg(test)]
mod tests {
    use axum::http::HeaderValue;

    use super::*;
    use crate::server::auth::Principal;
    use crate::server::keys::Scope;

    fn viewer(csrf: &str) -> Viewer {
        Viewer {
            principal: Arc::new(Principal {
                name: "admin".into(),
                scope: Scope::Admin,
                clusters: Vec::new(),
            }),
            csrf: csrf.into(),
            signed_in: true,
        }
    }

    #[test]
    fn tokens_compare_equal_only_when_identical() {
        assert!(constant_time_equal(b"abc", b"abc"));
        assert!(!constant_time_equal(b"abc", b"abd"));
        assert!(!constant_time_equal(b"abc", b"ab"));
        assert!(!constant_time_equal(b"", b"a"));
    }

    #[test]
    fn a_form_needs_the_viewers_token_and_this_origin() {
        let headers = |pairs: &[(&'static str, &'static str)]| {
            let mut map = HeaderMap::new();
            for (name, value) in pairs {
                map.insert(*name, HeaderValue::from_static(value));
            }
            map
        };
        let same = headers(&[
            ("host", "localhost:8083"),
            ("origin", "http://localhost:8083"),
        ]);
        assert!(viewer("t0k3n").check_form(&same, "t0k3n").is_ok());
        assert!(viewer("t0k3n").check_form(&same, "t0k3m").is_err());
        assert!(viewer("t0k3n").check_form(&same, "").is_err());
        assert!(
            viewer("").check_form(&same, "").is_err(),
            "an empty token matches nothing"
        );
        let foreign = headers(&[
            ("host", "localhost:8083"),
            ("origin", "http://evil.example"),
        ]);
        assert!(viewer("t0k3n").check_form(&foreign, "t0k3n").is_err());
        let cross_site = headers(&[("sec-fetch-site", "cross-site")]);
        assert!(Viewer::check_origin(&cross_site).is_err());
        assert!(Viewer::check_origin(&headers(&[("sec-fetch-site", "same-origin")])).is_ok());
    }
}
