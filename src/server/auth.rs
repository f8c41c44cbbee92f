//! Bearer-token authentication of API calls.

use std::sync::Arc;

use tonic::service::Interceptor;
use tonic::{Request, Status};

/// Checks `authorization: Bearer <token>` against the configured tokens; with none
/// configured every call passes (an open local development server).
#[derive(Clone, Default)]
pub struct Authenticate {
    tokens: Arc<Vec<Vec<u8>>>,
}

impl Authenticate {
    pub fn new(tokens: &[String]) -> Self {
        Self {
            tokens: Arc::new(
                tokens
                    .iter()
                    .map(|token| token.as_bytes().to_vec())
                    .collect(),
            ),
        }
    }

    /// Whether `header` (the whole `authorization` value) carries a configured token.
    pub fn accepts(&self, header: Option<&[u8]>) -> bool {
        if self.tokens.is_empty() {
            return true;
        }
        let Some(token) = header.and_then(|header| header.strip_prefix(b"Bearer ")) else {
            return false;
        };
        // Compare against every token without stopping early, in constant time per token.
        self.tokens.iter().fold(false, |found, candidate| {
            found | constant_time_equal(candidate, token)
        })
    }
}

fn constant_time_equal(left: &[u8], right: &[u8]) -> bool {
    if left.len() != right.len() {
        return false;
    }
    left.iter()
        .zip(right)
        .fold(0u8, |difference, (a, b)| difference | (a ^ b))
        == 0
}

impl Interceptor for Authenticate {
    fn call(&mut self, request: Request<()>) -> Result<Request<()>, Status> {
        let header = request
            .metadata()
            .get("authorization")
            .map(|value| value.as_bytes());
        if self.accepts(header) {
            Ok(request)
        } else if header.is_none() {
            Err(Status::unauthenticated(
                "missing `authorization: Bearer <token>`: this server requires an API key",
            ))
        } else {
            Err(Status::unauthenticated("invalid API key"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn open_server_accepts_everything() {
        assert!(Authenticate::new(&[]).accepts(None));
    }

    #[test]
    fn configured_tokens_are_required() {
        let auth = Authenticate::new(&["alpha".into(), "beta".into()]);
        assert!(auth.accepts(Some(b"Bearer alpha")));
        assert!(auth.accepts(Some(b"Bearer beta")));
        assert!(!auth.accepts(Some(b"Bearer gamma")));
        assert!(!auth.accepts(Some(b"Bearer alph")));
        assert!(!auth.accepts(Some(b"alpha")));
        assert!(!auth.accepts(None));
    }
}
