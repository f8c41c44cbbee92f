//! The web console: server-rendered HTML pages over the store, on the API port.
//!
//! Every view is one URL. A plain GET answers a whole page (links, the back button and a
//! browser without JavaScript work); with `X-Tilebox-Fragment: 1`, which only our
//! `console.js` sends, the same handler answers just the view, which the script swaps in
//! while it polls. HTML is rendered in one place (maud, which escapes every interpolation:
//! displays, inputs, log bodies and attributes are written by tasks) and the script never
//! builds HTML from data. Actions call the gRPC service implementations in-process, so
//! permission checks and wake-ups stay in one place.
//!
//! Layout:
//! - `mod.rs`: `ConsoleState`, the router, security headers, the Host check, `ConsoleError`
//! - `layout.rs`: the page shell, navigation, badges, durations and times
//! - `assets.rs`: the embedded stylesheet, script and icon, under content-hashed names
//! - `runners.rs`: the runners page, and `runner_name` (a runner's short label)
//! - `viewer.rs`: who is looking (`Viewer`), and the CSRF check of forms
//! - `jobs.rs`: the jobs page (filters, cursor paging)
//! - `job.rs`: the job page (header, tabs, the lazy task tree, task detail, retry/cancel)
//! - `execution.rs`: the execution tab (spans decoded, packed into lanes, drawn as SVG)
//! - `logs.rs`: the logs tab (levels, level counts, follow) and a task's logs
//! - `input.rs`: a task's input decoded for display
//! - `session.rs`: `/login`, `/logout`, sessions in the store, the open server's CSRF cookie

pub mod assets;
pub mod clusters;
pub mod execution;
pub mod input;
pub mod job;
pub mod jobs;
pub mod layout;
pub mod logs;
pub mod runners;
pub mod session;
pub mod viewer;
pub mod workflows;

use std::sync::Arc;

use axum::extract::{FromRequestParts, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header, request::Parts};
use axum::middleware::Next;
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;

use super::auth::Authenticate;
use super::scheduler::Scheduler;
use super::services;
use super::services::workflows::DeploymentChanges;
use super::store::{self, Store};
pub use viewer::Viewer;

/// What the console's handlers share.
#[derive(Clone)]
pub struct ConsoleState {
    pub store: Arc<dyn Store>,
    pub scheduler: Scheduler,
    pub authenticate: Authenticate,
    /// The job service, for retry and cancel (its permission checks and wake-ups).
    pub jobs: Arc<services::jobs::Jobs>,
    /// The workflows service, for clusters, deploy and undeploy (it pushes the deployment
    /// change to watching runners).
    pub workflows: Arc<services::workflows::Workflows>,
    /// Whether requests must name `localhost` or an IP address (an open server): stops DNS
    /// rebinding, which always goes through a name, from turning a web page into a client
    /// of a server that asks for no key.
    pub names_refused: bool,
    /// Whether the port speaks TLS (cookies get `Secure`).
    pub tls: bool,
    /// This replica's cache of console sessions.
    pub sessions: session::Sessions,
    /// Runners' hostnames, read at most every few seconds (`runners::runner_hostnames`).
    pub hosts: runners::HostsCache,
}

impl ConsoleState {
    pub fn new(
        scheduler: Scheduler,
        authenticate: Authenticate,
        changes: DeploymentChanges,
        tls: bool,
    ) -> Self {
        let store = scheduler.store().clone();
        Self {
            names_refused: authenticate.is_open(),
            jobs: Arc::new(services::jobs::Jobs::new(scheduler.clone())),
            workflows: Arc::new(services::workflows::Workflows::new(store.clone(), changes)),
            store,
            scheduler,
            authenticate,
            tls,
            sessions: session::Sessions::default(),
            hosts: runners::HostsCache::default(),
        }
    }
}

/// The console's routes, with their state. Merged into the gRPC port's router, so no path
/// may start with a gRPC package name and none is a fallback.
pub fn router(state: ConsoleState) -> axum::Router {
    let pages = axum::Router::new()
        .route("/", get(|| async { Redirect::to("/jobs") }))
        .merge(jobs::routes())
        .merge(job::routes())
        .merge(clusters::routes())
        .merge(workflows::routes())
        .merge(runners::routes())
        .merge(session::routes())
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            session::csrf_cookie,
        ))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            check_host,
        ))
        .layer(axum::middleware::map_response(security_headers))
        .with_state(state);
    pages.merge(assets::router())
}

/// A browser's GET of a path nobody serves gets the console's 404 page. Without this the
/// gRPC router's answer (HTTP 200 with `grpc-status: 12`) reaches the browser, which takes
/// the empty body for a download. gRPC calls (POST, `application/grpc`) pass untouched.
pub async fn not_found_for_browsers(request: Request, next: Next) -> Response {
    let from_a_browser = request.method() == axum::http::Method::GET
        && !request
            .headers()
            .get(header::CONTENT_TYPE)
            .is_some_and(|value| value.as_bytes().starts_with(b"application/grpc"));
    let response = next.run(request).await;
    if from_a_browser
        && response
            .headers()
            .get("grpc-status")
            .is_some_and(|status| status.as_bytes() == b"12")
    {
        return security_headers(
            ConsoleError::NotFound("there is no console page at this address".to_string())
                .into_response(),
        )
        .await;
    }
    response
}

/// Headers on every console page and fragment (not on the immutable assets): nothing is
/// kept in the browser's cache, where another user of the browser could read it after a
/// logout, and the strict policy forbids inline scripts and styles, so text that escaped
/// escaping still could not run.
async fn security_headers(mut response: Response) -> Response {
    let headers = response.headers_mut();
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
             connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
        ),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    response
}

/// Gives an HTTP/2 request (whose host is its `:authority`, in the URI) the `Host` header an
/// HTTP/1.1 request has, so the checks below and the forms' origin check read one place.
/// Then, on an open server, answers 421 unless the host is `localhost` or an IP address: a
/// page on `evil.example` that rebinds its name to the server's address sends
/// `Host: evil.example`.
async fn check_host(
    State(state): State<ConsoleState>,
    mut request: Request,
    next: Next,
) -> Response {
    if !request.headers().contains_key(header::HOST)
        && let Some(authority) = request.uri().authority()
        && let Ok(value) = HeaderValue::from_str(authority.as_str())
    {
        request.headers_mut().insert(header::HOST, value);
    }
    if state.names_refused && !host_is_address(request.headers()) {
        return (
            StatusCode::MISDIRECTED_REQUEST,
            "this open tilebox server answers its console only at localhost or an IP address \
             (a name could be another site's, rebound to this server); start it with --token \
             or --keys-file to serve it under a name",
        )
            .into_response();
    }
    next.run(request).await
}

/// Whether the `Host` header names `localhost` or an IP address, with any port.
fn host_is_address(headers: &HeaderMap) -> bool {
    headers
        .get(header::HOST)
        .and_then(|value| value.to_str().ok())
        .is_some_and(is_address_host)
}

fn is_address_host(host: &str) -> bool {
    // `[::1]:8083`, `[::1]`, `10.0.0.7:8083`, `localhost`, `localhost:8083`.
    let name = if let Some(rest) = host.strip_prefix('[') {
        match rest.split_once(']') {
            Some((inside, port)) if port.is_empty() || is_port(port) => inside,
            _ => return false,
        }
    } else {
        match host.rsplit_once(':') {
            Some((name, port)) if is_port(port) => name,
            Some(_) => return false,
            None => host,
        }
    };
    name.eq_ignore_ascii_case("localhost") || name.parse::<std::net::IpAddr>().is_ok()
}

fn is_port(text: &str) -> bool {
    let Some(digits) = text.strip_prefix(':').or(Some(text)) else {
        return false;
    };
    !digits.is_empty() && digits.len() <= 5 && digits.bytes().all(|byte| byte.is_ascii_digit())
}

/// Whether the request asked for just the view (`X-Tilebox-Fragment: 1`, sent by
/// `console.js`), not the whole page.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fragment(pub bool);

impl<S: Send + Sync> FromRequestParts<S> for Fragment {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        Ok(Self(
            parts
                .headers
                .get("x-tilebox-fragment")
                .is_some_and(|value| value.as_bytes() == b"1"),
        ))
    }
}

/// Why a console request failed; rendered as a page (or a short text for fragments) with
/// the status it maps to.
#[derive(Debug, thiserror::Error)]
pub enum ConsoleError {
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{}", .0.message())]
    Status(#[from] tonic::Status),
}

impl ConsoleError {
    fn status(&self) -> StatusCode {
        match self {
            ConsoleError::NotFound(_) => StatusCode::NOT_FOUND,
            ConsoleError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ConsoleError::Forbidden(_) => StatusCode::FORBIDDEN,
            ConsoleError::Conflict(_) => StatusCode::CONFLICT,
            ConsoleError::Status(status) => match status.code() {
                tonic::Code::NotFound => StatusCode::NOT_FOUND,
                tonic::Code::PermissionDenied => StatusCode::FORBIDDEN,
                tonic::Code::Unauthenticated => StatusCode::UNAUTHORIZED,
                tonic::Code::InvalidArgument | tonic::Code::OutOfRange => StatusCode::BAD_REQUEST,
                tonic::Code::FailedPrecondition | tonic::Code::AlreadyExists => {
                    StatusCode::CONFLICT
                }
                tonic::Code::Unavailable | tonic::Code::ResourceExhausted => {
                    StatusCode::SERVICE_UNAVAILABLE
                }
                _ => StatusCode::INTERNAL_SERVER_ERROR,
            },
        }
    }
}

/// A store error answers as the gRPC API would (`store_status` logs the server's faults).
impl From<store::Error> for ConsoleError {
    fn from(error: store::Error) -> Self {
        ConsoleError::Status(services::store_status(error))
    }
}

impl IntoResponse for ConsoleError {
    fn into_response(self) -> Response {
        let status = self.status();
        let body = layout::error_page(status, &self.to_string());
        (status, body).into_response()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_localhost_and_addresses_pass_the_host_check() {
        for host in [
            "localhost",
            "LOCALHOST:80",
            "127.0.0.1",
            "10.0.0.7:8083",
            "[::1]",
            "[::1]:9",
        ] {
            assert!(is_address_host(host), "{host}");
        }
        for host in [
            "evil.example",
            "evil.example:8083",
            "127.0.0.1.nip.io",
            "[::1",
            "[::1]x",
            "localhost:",
            "localhost:99999999",
            "",
        ] {
            assert!(!is_address_host(host), "{host}");
        }
    }
}
