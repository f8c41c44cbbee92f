//! Signing in to the console: `/login`, `/logout`, server-side sessions, and the CSRF
//! cookie of an open server.
//!
//! A session is a random 32-byte id in the `tilebox_session` cookie (HttpOnly, SameSite=Lax
//! so a shared link opens signed in, `Secure` under TLS); the store keeps its SHA-256, the
//! SHA-256 of the key it signed in with, and the token its forms carry ([`ConsoleSession`]).
//! The key itself is kept nowhere: every request resolves the key's digest again
//! ([`Authenticate::resolve_digest`](crate::server::auth::Authenticate::resolve_digest)),
//! so a key revoked or rotated in the keys file ends its sessions within the file's poll.
//! Sessions are in the store, so they survive a restart and work across PostgreSQL
//! replicas; each replica caches a row for at most [`CACHE_FOR`], so a logout on one
//! replica is honoured by the others within that time. A session ends [`SESSION_LIFETIME`]
//! after the login, whatever the browser does with the cookie.
//!
//! An open server has no sessions: every viewer is the anonymous admin, and its forms carry
//! the value of a `tilebox_csrf` cookie (double submit), set on the first page.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{Query, Request, State};
use axum::http::{Extensions, HeaderMap, HeaderValue, StatusCode, header, request::Parts};
use axum::middleware::Next;
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{Form, Router};
use maud::{Markup, html};
use rand::RngCore;
use serde::Deserialize;
use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};

use super::{ConsoleError, ConsoleState, Viewer, layout};
use crate::api::convert::now_millis;
use crate::server::auth::{Action, key_digest};
use crate::server::store::{self, ConsoleSession, Store};

/// The cookie holding a session id.
pub const SESSION_COOKIE: &str = "tilebox_session";
/// The cookie an open server's forms repeat (double submit).
pub const CSRF_COOKIE: &str = "tilebox_csrf";
/// How long a session lasts after the login.
pub const SESSION_LIFETIME: Duration = Duration::from_secs(12 * 3600);
/// How long a replica answers a session from its cache before it reads the store again.
pub const CACHE_FOR: Duration = Duration::from_secs(5);
/// At most this many sessions are cached per replica; past it, the cache starts over.
const CACHE_CAPACITY: usize = 10_000;
/// Where a login goes when it names nowhere (or somewhere unsafe).
const DEFAULT_NEXT: &str = "/jobs";

/// The login and logout routes.
pub fn routes() -> Router<ConsoleState> {
    Router::new()
        .route("/login", get(login_form).post(login))
        .route("/logout", post(logout))
}

/// Session rows by the hash of their id, each with when it was read.
type SessionCache = HashMap<[u8; 32], (Instant, ConsoleSession)>;

/// A per-replica cache of session rows (found ones only, so random cookies cannot fill it).
#[derive(Clone, Default)]
pub struct Sessions {
    cache: Arc<Mutex<SessionCache>>,
}

impl Sessions {
    /// The unexpired session whose id hashes to `hash`: from the cache when read within
    /// [`CACHE_FOR`], else from the store.
    async fn find(
        &self,
        store: &dyn Store,
        hash: [u8; 32],
    ) -> Result<Option<ConsoleSession>, store::Error> {
        let now = now_millis();
        {
            let cache = self.cache.lock().expect("no code panics holding this lock");
            if let Some((read_at, session)) = cache.get(&hash)
                && read_at.elapsed() < CACHE_FOR
                && session.expires_at > now
            {
                return Ok(Some(session.clone()));
            }
        }
        let found = store.get_console_session(hash, now).await?;
        let mut cache = self.cache.lock().expect("no code panics holding this lock");
        match &found {
            Some(session) => {
                if cache.len() >= CACHE_CAPACITY {
                    cache.retain(|_, (read_at, _)| read_at.elapsed() < CACHE_FOR);
                    if cache.len() >= CACHE_CAPACITY {
                        cache.clear();
                    }
                }
                cache.insert(hash, (Instant::now(), session.clone()));
            }
            None => {
                cache.remove(&hash);
            }
        }
        Ok(found)
    }

    fn forget(&self, hash: &[u8; 32]) {
        self.cache
            .lock()
            .expect("no code panics holding this lock")
            .remove(hash);
    }
}

/// Every value of cookie `name` among the request's `Cookie` headers, in order (HTTP/2 may
/// send several headers). Read as bytes: another site's cookie with non-ASCII bytes on the
/// same host hides nothing, and a cookie of the same name set for a narrower path (sent
/// first) does not hide ours.
pub fn cookies<'h>(headers: &'h HeaderMap, name: &'h str) -> impl Iterator<Item = &'h str> + 'h {
    headers
        .get_all(header::COOKIE)
        .iter()
        .flat_map(|value| value.as_bytes().split(|byte| *byte == b';'))
        .filter_map(move |pair| {
            let pair = pair.trim_ascii();
            let at = pair.iter().position(|byte| *byte == b'=')?;
            if &pair[..at] != name.as_bytes() {
                return None;
            }
            std::str::from_utf8(pair[at + 1..].trim_ascii()).ok()
        })
}

/// The first value of cookie `name`.
pub fn cookie<'h>(headers: &'h HeaderMap, name: &'h str) -> Option<&'h str> {
    cookies(headers, name).next()
}

/// The first value of cookie `name` that is a token.
fn cookie_token(headers: &HeaderMap, name: &str) -> Option<[u8; 32]> {
    cookies(headers, name).find_map(parse_token)
}

/// A token as the cookies carry it: exactly 64 hex digits.
fn parse_token(text: &str) -> Option<[u8; 32]> {
    let mut token = [0u8; 32];
    (text.len() == 64)
        .then(|| hex::decode_to_slice(text, &mut token).ok())
        .flatten()?;
    Some(token)
}

/// 32 bytes from the OS-seeded generator.
fn new_token() -> [u8; 32] {
    let mut token = [0u8; 32];
    rand::rng().fill_bytes(&mut token);
    token
}

fn sha256(bytes: &[u8]) -> [u8; 32] {
    use sha2::Digest;
    sha2::Sha256::digest(bytes).into()
}

/// A cookie no script can read, `SameSite=Lax`: a link followed from another site (a job's
/// address shared in a chat or an issue) carries it, so the page opens signed in and an open
/// server's CSRF cookie is not replaced under the viewer's other tabs. Only such GETs carry
/// it, and they change nothing; every POST checks its origin and token
/// ([`Viewer::check_form`](super::viewer::Viewer::check_form)). No `Max-Age`, so it ends
/// with the browser (the server ends a session after [`SESSION_LIFETIME`]).
fn set_cookie(name: &str, value: &str, tls: bool) -> HeaderValue {
    let secure = if tls { "; Secure" } else { "" };
    HeaderValue::from_str(&format!(
        "{name}={value}; HttpOnly; SameSite=Lax; Path=/{secure}"
    ))
    .expect("cookie names and hex values are valid header text")
}

fn clear_cookie(name: &str, tls: bool) -> HeaderValue {
    let secure = if tls { "; Secure" } else { "" };
    HeaderValue::from_str(&format!(
        "{name}=; HttpOnly; SameSite=Lax; Path=/; Max-Age=0{secure}"
    ))
    .expect("a cookie name is valid header text")
}

/// `next` if it is a path of this site: exactly one `/` first, no `//` and no backslash
/// anywhere (browsers read `/\evil` as `//evil`), and only visible ASCII (it goes into a
/// `Location` header). Anything else could send a fresh login to another site.
pub fn safe_next(next: &str) -> Option<&str> {
    let safe = next.starts_with('/')
        && !next.contains("//")
        && !next.contains('\\')
        && next.bytes().all(|byte| byte.is_ascii_graphic());
    safe.then_some(next)
}

/// The CSRF token of an open server's viewer: its `tilebox_csrf` cookie, or the one
/// [`csrf_cookie`] is setting on this response; failing both, a token no form carries.
pub fn open_csrf(parts: &Parts) -> String {
    if let Some(token) =
        cookies(&parts.headers, CSRF_COOKIE).find(|value| parse_token(value).is_some())
    {
        return token.to_string();
    }
    match parts.extensions.get::<NewCsrfCookie>() {
        Some(NewCsrfCookie(token)) => token.clone(),
        None => hex::encode(new_token()),
    }
}

/// The token [`csrf_cookie`] sets on this response.
#[derive(Clone)]
struct NewCsrfCookie(String);

/// On an open server, gives a browser without a valid `tilebox_csrf` cookie one.
pub async fn csrf_cookie(
    State(state): State<ConsoleState>,
    mut request: Request,
    next: Next,
) -> Response {
    let missing =
        state.authenticate.is_open() && cookie_token(request.headers(), CSRF_COOKIE).is_none();
    if !missing {
        return next.run(request).await;
    }
    let token = hex::encode(new_token());
    request
        .extensions_mut()
        .insert(NewCsrfCookie(token.clone()));
    let mut response = next.run(request).await;
    response.headers_mut().append(
        header::SET_COOKIE,
        set_cookie(CSRF_COOKIE, &token, state.tls),
    );
    response
}

/// The signed-in viewer of a keyed server's request: its session, not expired, whose key
/// is still in the keys file (or a `--token`) with a scope that may read jobs. `None`: the
/// request must log in.
pub async fn signed_in(
    parts: &Parts,
    state: &ConsoleState,
) -> Result<Option<Viewer>, ConsoleError> {
    let Some(id) = cookie_token(&parts.headers, SESSION_COOKIE) else {
        return Ok(None);
    };
    let Some(session) = state
        .sessions
        .find(state.store.as_ref(), sha256(&id))
        .await?
    else {
        return Ok(None);
    };
    let Some(principal) = state.authenticate.resolve_digest(&session.key_digest) else {
        return Ok(None);
    };
    if !principal.allows(Action::ReadJobs) {
        return Ok(None);
    }
    Ok(Some(Viewer {
        principal,
        csrf: hex::encode(session.csrf),
        signed_in: true,
    }))
}

/// Where the request came from, as the transport saw it (plain TCP or TLS).
fn peer(extensions: &Extensions) -> Option<SocketAddr> {
    extensions
        .get::<TcpConnectInfo>()
        .and_then(TcpConnectInfo::remote_addr)
        .or_else(|| {
            extensions
                .get::<TlsConnectInfo<TcpConnectInfo>>()
                .and_then(|info| info.get_ref().remote_addr())
        })
        .map(|address| SocketAddr::new(address.ip().to_canonical(), address.port()))
}

#[derive(Debug, Deserialize)]
struct LoginQuery {
    next: Option<String>,
}

#[derive(Debug, Deserialize)]
struct LoginForm {
    #[serde(default)]
    key: String,
    #[serde(default)]
    next: String,
}

#[derive(Debug, Deserialize)]
struct LogoutForm {
    #[serde(default)]
    csrf: String,
}

/// `GET /login`: the form (an open server needs none and goes to the jobs).
async fn login_form(
    State(state): State<ConsoleState>,
    Query(query): Query<LoginQuery>,
) -> Response {
    let next = query
        .next
        .as_deref()
        .and_then(safe_next)
        .unwrap_or(DEFAULT_NEXT);
    if state.authenticate.is_open() {
        return Redirect::to(next).into_response();
    }
    login_page(next, None).into_response()
}

/// `POST /login`: a key that may read jobs gets a session and goes to `next`; any other
/// key gets the form again with what was wrong (logged with the peer's address).
async fn login(
    State(state): State<ConsoleState>,
    extensions: Extensions,
    headers: HeaderMap,
    Form(form): Form<LoginForm>,
) -> Result<Response, ConsoleError> {
    Viewer::check_origin(&headers)?;
    let next = safe_next(&form.next).unwrap_or(DEFAULT_NEXT);
    if state.authenticate.is_open() {
        return Ok(Redirect::to(next).into_response());
    }
    let peer = peer(&extensions).map_or_else(|| "unknown".to_string(), |peer| peer.to_string());
    let digest = key_digest(form.key.trim().as_bytes());
    let Some(principal) = state.authenticate.resolve_digest(&digest) else {
        tracing::warn!(%peer, "console login refused: not a key of this server");
        return Ok(
            login_page(next, Some("This is not an API key of this server.")).into_response(),
        );
    };
    if let Err(refusal) = principal.check(Action::ReadJobs) {
        tracing::warn!(%peer, key = %principal.name, scope = %principal.scope, "console login refused: {}", refusal.message());
        let message = format!(
            "{}: the console needs a key that may read jobs (scope admin or read-only).",
            refusal.message()
        );
        return Ok(login_page(next, Some(&message)).into_response());
    }
    let id = new_token();
    let now = now_millis();
    let lifetime = i64::try_from(SESSION_LIFETIME.as_millis()).expect("12 hours fit in i64");
    state
        .store
        .create_console_session(ConsoleSession {
            session_hash: sha256(&id),
            key_digest: digest,
            csrf: new_token(),
            created_at: now,
            expires_at: now + lifetime,
        })
        .await?;
    // A browser that logs in again (another key, or back after expiry) leaves no session
    // behind that its old cookie could still use.
    if let Some(old) = cookie_token(&headers, SESSION_COOKIE) {
        let hash = sha256(&old);
        state.store.delete_console_session(hash).await?;
        state.sessions.forget(&hash);
    }
    tracing::info!(%peer, key = %principal.name, "console login");
    let mut response = Redirect::to(next).into_response();
    response.headers_mut().append(
        header::SET_COOKIE,
        set_cookie(SESSION_COOKIE, &hex::encode(id), state.tls),
    );
    Ok(response)
}

/// `POST /logout`: ends the session (its row is deleted) and goes to the login.
async fn logout(
    State(state): State<ConsoleState>,
    viewer: Viewer,
    headers: HeaderMap,
    Form(form): Form<LogoutForm>,
) -> Result<Response, ConsoleError> {
    viewer.check_form(&headers, &form.csrf)?;
    if !viewer.signed_in {
        return Ok(Redirect::to(DEFAULT_NEXT).into_response());
    }
    if let Some(id) = cookie_token(&headers, SESSION_COOKIE) {
        let hash = sha256(&id);
        state.store.delete_console_session(hash).await?;
        state.sessions.forget(&hash);
    }
    let mut response = Redirect::to("/login").into_response();
    response
        .headers_mut()
        .append(header::SET_COOKIE, clear_cookie(SESSION_COOKIE, state.tls));
    Ok(response)
}

/// The answer to a request without a session: a page goes to the login (and back to
/// `path` after it), a fragment (the script's poll) gets 401 and reloads the page.
pub fn log_in_first(parts: &Parts) -> Response {
    let fragment = parts
        .headers
        .get("x-tilebox-fragment")
        .is_some_and(|value| value.as_bytes() == b"1");
    if fragment {
        return (
            StatusCode::UNAUTHORIZED,
            "not signed in to the console: reload the page to log in",
        )
            .into_response();
    }
    // After the login the browser GETs `next`: an action (a POST) comes back to the page it
    // was on, never to its POST-only address.
    let path = parts
        .uri
        .path_and_query()
        .map_or(DEFAULT_NEXT, |path| path.as_str());
    let next = if parts.method == axum::http::Method::GET {
        path.to_string()
    } else {
        page_of_action(parts.uri.path())
    };
    let next = safe_next(&next).unwrap_or(DEFAULT_NEXT);
    Redirect::to(&format!("/login?next={}", super::viewer::urlencode(next))).into_response()
}

/// The page an action's form was on: `/jobs/J/retry` → `/jobs/J`, `/workflows/W/releases/
/// R/deploy` → `/workflows/W`, `/clusters/C/delete` → `/clusters`.
fn page_of_action(path: &str) -> String {
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    match segments.as_slice() {
        ["jobs", job, ..] => format!("/jobs/{job}"),
        ["workflows", workflow, ..] => format!("/workflows/{workflow}"),
        [first, ..] if !first.is_empty() => format!("/{first}"),
        _ => DEFAULT_NEXT.to_string(),
    }
}

fn login_page(next: &str, error: Option<&str>) -> Markup {
    layout::shell(
        None,
        "Log in",
        html! {
            section.login {
                h1 { "Log in" }
                @if let Some(error) = error {
                    p.flash.error role="alert" { (error) }
                }
                form #login method="post" action="/login" {
                    input type="hidden" name="next" value=(next);
                    label for="key" { "API key" }
                    input #key type="password" name="key" autocomplete="current-password"
                        required autofocus;
                    button type="submit" { "Log in" }
                }
                p.hint {
                    "An admin or read-only key (" code { "tilebox server keys create" }
                    "), or one of the server's " code { "--token" } "s."
                }
            }
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cookies_are_found_by_exact_name_in_every_cookie_header() {
        let mut headers = HeaderMap::new();
        headers.append(
            header::COOKIE,
            HeaderValue::from_static("a=1; tilebox_sessionx=2"),
        );
        headers.append(
            header::COOKIE,
            HeaderValue::from_static("other=3;tilebox_session= abc ; z=="),
        );
        assert_eq!(cookie(&headers, "tilebox_session"), Some("abc"));
        assert_eq!(cookie(&headers, "a"), Some("1"));
        assert_eq!(cookie(&headers, "z"), Some("="));
        assert_eq!(cookie(&headers, "missing"), None);
        assert_eq!(cookie(&HeaderMap::new(), "a"), None);
        // Another site's non-ASCII cookie hides nothing; a junk value of the same name sent
        // first does not hide the token after it.
        let token = "ab".repeat(32);
        let mut hostile = HeaderMap::new();
        hostile.append(
            header::COOKIE,
            axum::http::HeaderValue::from_bytes(
                format!("other=\u{e9}t\u{e9}; tilebox_session=junk; tilebox_session={token}")
                    .as_bytes(),
            )
            .expect("a header value"),
        );
        assert_eq!(cookie(&hostile, "tilebox_session"), Some("junk"));
        assert_eq!(cookie_token(&hostile, "tilebox_session"), Some([0xab; 32]));
    }

    #[test]
    fn tokens_are_exactly_64_hex_digits() {
        let token = new_token();
        assert_eq!(parse_token(&hex::encode(token)), Some(token));
        assert_ne!(new_token(), token, "tokens are random");
        assert_eq!(parse_token(&hex::encode(token)[..63]), None);
        assert_eq!(parse_token(&format!("{}0", hex::encode(token))), None);
        assert_eq!(parse_token(&"g".repeat(64)), None);
        assert_eq!(parse_token(""), None);
    }

    #[test]
    fn an_action_sends_back_to_the_page_its_form_was_on() {
        assert_eq!(page_of_action("/jobs/abc/retry"), "/jobs/abc");
        assert_eq!(
            page_of_action("/workflows/w/releases/r/deploy"),
            "/workflows/w"
        );
        assert_eq!(page_of_action("/clusters/gpu/delete"), "/clusters");
        assert_eq!(page_of_action("/clusters"), "/clusters");
        assert_eq!(page_of_action("/"), DEFAULT_NEXT);
    }

    #[test]
    fn next_must_be_a_path_of_this_site() {
        for safe in ["/jobs", "/jobs/1?tab=logs&x=%2F%2F", "/"] {
            assert_eq!(safe_next(safe), Some(safe), "{safe}");
        }
        for unsafe_next in [
            "",
            "jobs",
            "//evil.example/",
            "/\\evil.example",
            "/jobs//x",
            "https://evil.example/",
            "/jobs\r\nSet-Cookie: x=1",
            "/jobs x",
            "/jöbs",
        ] {
            assert_eq!(safe_next(unsafe_next), None, "{unsafe_next:?}");
        }
    }

    #[test]
    fn cookies_are_http_only_lax_and_secure_under_tls() {
        let plain = set_cookie(SESSION_COOKIE, "ab", false);
        assert_eq!(
            plain.to_str().unwrap(),
            "tilebox_session=ab; HttpOnly; SameSite=Lax; Path=/"
        );
        let secure = set_cookie(CSRF_COOKIE, "cd", true);
        assert_eq!(
            secure.to_str().unwrap(),
            "tilebox_csrf=cd; HttpOnly; SameSite=Lax; Path=/; Secure"
        );
        assert_eq!(
            clear_cookie(SESSION_COOKIE, false).to_str().unwrap(),
            "tilebox_session=; HttpOnly; SameSite=Lax; Path=/; Max-Age=0"
        );
    }
}
