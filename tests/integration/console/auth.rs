//! Signing in to the console of a keyed server: the login form, server-side sessions in
//! HttpOnly SameSite=Lax cookies, logout with the CSRF token, keys revoked in the keys
//! file, scopes that may not log in, flat `--token`s, and sessions across a restart. And
//! the open server's double-submit CSRF cookie.

use std::time::Duration;

use crate::common::{HttpResponse, KeysFile, TestServer, http_get, http_request, wait_until};

/// How long a change of the keys file may take to reach the server (it checks twice a
/// second).
const RELOAD_DEADLINE: Duration = Duration::from_secs(5);

/// A server with a keys file holding an admin key, a read-only key and a runner key.
struct Keyed {
    keys: KeysFile,
    admin: String,
    viewer: String,
    runner: String,
    server: TestServer,
}

impl Keyed {
    fn start() -> Self {
        let keys = KeysFile::new();
        let admin = keys.create("ops", "admin", &[]);
        let viewer = keys.create("dashboard", "read-only", &[]);
        let runner = keys.create("gpu-runner", "runner", &["*"]);
        let server = TestServer::start_with(&["--keys-file", keys.path()]);
        Self {
            keys,
            admin,
            viewer,
            runner,
            server,
        }
    }
}

/// The `Set-Cookie` headers of a response.
fn set_cookies(response: &HttpResponse) -> Vec<&str> {
    response
        .headers
        .iter()
        .filter(|(name, _)| name == "set-cookie")
        .map(|(_, value)| value.as_str())
        .collect()
}

/// `POST /login` with `key` (and `next`), as the login form sends it.
fn log_in(server: &TestServer, key: &str, next: &str) -> HttpResponse {
    let body = format!("key={key}&next={}", next.replace('/', "%2F"));
    http_request(
        server,
        "POST",
        "/login",
        &[("Content-Type", "application/x-www-form-urlencoded")],
        body.as_bytes(),
    )
}

/// Logs in with `key` and answers the `Cookie` header value of the session.
fn session_of(server: &TestServer, key: &str) -> String {
    let answer = log_in(server, key, "/jobs");
    assert_eq!(answer.status, 303, "{}", answer.text());
    let cookie = set_cookies(&answer)
        .into_iter()
        .find(|cookie| cookie.starts_with("tilebox_session="))
        .unwrap_or_else(|| panic!("no session cookie: {:?}", answer.headers));
    cookie
        .split(';')
        .next()
        .expect("a name=value first")
        .to_string()
}

fn get_with(server: &TestServer, path: &str, cookie: &str) -> HttpResponse {
    http_get(server, path, &[("Cookie", cookie)])
}

/// The value of the hidden `csrf` field in a page.
fn csrf_in(page: &str) -> String {
    let marker = "name=\"csrf\" value=\"";
    let start = page
        .find(marker)
        .unwrap_or_else(|| panic!("no csrf field in {page}"))
        + marker.len();
    page[start..start + page[start..].find('"').expect("closing quote")].to_string()
}

fn post_form(server: &TestServer, path: &str, cookie: &str, body: &str) -> HttpResponse {
    http_request(
        server,
        "POST",
        path,
        &[
            ("Cookie", cookie),
            ("Content-Type", "application/x-www-form-urlencoded"),
        ],
        body.as_bytes(),
    )
}

/// Without a session, a page goes to the login with the way back in `next`; the script's
/// fragment request gets 401; the login form is served with `form#login`.
#[test]
fn without_a_session_pages_go_to_the_login_and_fragments_get_401() {
    let keyed = Keyed::start();
    let server = &keyed.server;
    let page = http_get(server, "/jobs?state=failed", &[]);
    assert_eq!(page.status, 303, "{}", page.text());
    assert_eq!(
        page.header("location"),
        Some("/login?next=%2Fjobs%3Fstate%3Dfailed")
    );
    let fragment = http_get(server, "/jobs", &[("X-Tilebox-Fragment", "1")]);
    assert_eq!(fragment.status, 401, "{}", fragment.text());
    let forged = get_with(
        server,
        "/jobs",
        &format!("tilebox_session={}", "ab".repeat(32)),
    );
    assert_eq!(forged.status, 303, "an unknown session id logs in nobody");

    let login = http_get(server, "/login?next=%2Fjobs%3Fstate%3Dfailed", &[]);
    assert_eq!(login.status, 200, "{}", login.text());
    assert_eq!(login.header("cache-control"), Some("no-store"));
    let html = login.text();
    assert!(html.contains("<form id=\"login\""), "{html}");
    assert!(html.contains("name=\"key\""), "{html}");
    assert!(
        html.contains("name=\"next\" value=\"/jobs?state=failed\""),
        "{html}"
    );
    let unsafe_next = http_get(server, "/login?next=%2F%2Fevil.example%2F", &[]);
    assert!(
        unsafe_next.text().contains("name=\"next\" value=\"/jobs\""),
        "an off-site next is replaced: {}",
        unsafe_next.text()
    );
}

/// A wrong key gets the form again with the error, no cookie, and a log line naming the
/// peer; a runner key is refused by name and scope; a login post from another site is 403.
#[test]
fn wrong_keys_runner_keys_and_foreign_origins_cannot_log_in() {
    let keyed = Keyed::start();
    let server = &keyed.server;
    let wrong = log_in(server, "tbk_0000", "/jobs");
    assert_eq!(wrong.status, 200, "{}", wrong.text());
    assert!(set_cookies(&wrong).is_empty(), "{:?}", wrong.headers);
    let html = wrong.text();
    assert!(html.contains("class=\"flash error\""), "{html}");
    assert!(html.contains("not an API key of this server"), "{html}");
    wait_until(
        "the refused login to be logged with the peer's address",
        RELOAD_DEADLINE,
        || {
            server
                .stderr()
                .lines()
                .any(|line| line.contains("console login refused") && line.contains("127.0.0.1"))
        },
    )
    .unwrap_or_else(|timed_out| panic!("{timed_out}\n{}", server.stderr_tail()));

    let runner = log_in(server, &keyed.runner, "/jobs");
    assert_eq!(runner.status, 200, "{}", runner.text());
    assert!(set_cookies(&runner).is_empty(), "{:?}", runner.headers);
    let html = runner.text();
    assert!(
        html.contains("class=\"flash error\"")
            && html.contains("key `gpu-runner` (scope runner")
            && html.contains("may not read jobs"),
        "{html}"
    );

    let body = format!("key={}&next=%2Fjobs", keyed.admin);
    for (name, value) in [
        ("Origin", "http://evil.example"),
        ("Sec-Fetch-Site", "cross-site"),
    ] {
        let foreign = http_request(
            server,
            "POST",
            "/login",
            &[
                ("Content-Type", "application/x-www-form-urlencoded"),
                (name, value),
            ],
            body.as_bytes(),
        );
        assert_eq!(foreign.status, 403, "{name}: {}", foreign.text());
        assert!(set_cookies(&foreign).is_empty(), "{:?}", foreign.headers);
    }
}

/// The right key gets an HttpOnly, SameSite=Lax session cookie and goes to `next` (an
/// off-site `next` goes to the jobs instead); the session shows pages (no-store); logout
/// needs the session's token and then the session is gone.
#[test]
fn a_session_shows_pages_until_logout_with_its_token() {
    let keyed = Keyed::start();
    let server = &keyed.server;
    let login = log_in(server, &keyed.viewer, "/jobs?state=failed");
    assert_eq!(login.status, 303, "{}", login.text());
    assert_eq!(login.header("location"), Some("/jobs?state=failed"));
    let cookie = set_cookies(&login)
        .into_iter()
        .find(|cookie| cookie.starts_with("tilebox_session="))
        .unwrap_or_else(|| panic!("{:?}", login.headers))
        .to_string();
    for attribute in ["HttpOnly", "SameSite=Lax", "Path=/"] {
        assert!(cookie.contains(attribute), "{attribute}: {cookie}");
    }
    assert!(!cookie.contains("Secure"), "no TLS, no Secure: {cookie}");
    let session = cookie.split(';').next().expect("name=value").to_string();
    assert_eq!(
        session.len(),
        "tilebox_session=".len() + 64,
        "32 random bytes in hex: {session}"
    );

    let offsite = log_in(server, &keyed.viewer, "//evil.example/");
    assert_eq!(offsite.header("location"), Some("/jobs"));

    let page = get_with(server, "/jobs", &session);
    assert_eq!(page.status, 200, "{}", page.text());
    assert_eq!(page.header("cache-control"), Some("no-store"));
    let html = page.text();
    assert!(
        html.contains("dashboard"),
        "the key's name is shown: {html}"
    );
    assert!(html.contains("data-action=\"logout\""), "{html}");
    let csrf = csrf_in(&html);
    assert_eq!(csrf.len(), 64, "{csrf}");

    let without = post_form(server, "/logout", &session, "");
    assert_eq!(without.status, 403, "{}", without.text());
    let wrong = post_form(
        server,
        "/logout",
        &session,
        &format!("csrf={}", "0".repeat(64)),
    );
    assert_eq!(wrong.status, 403, "{}", wrong.text());
    assert_eq!(
        get_with(server, "/jobs", &session).status,
        200,
        "a refused logout leaves the session"
    );

    let logout = post_form(server, "/logout", &session, &format!("csrf={csrf}"));
    assert_eq!(logout.status, 303, "{}", logout.text());
    assert_eq!(logout.header("location"), Some("/login"));
    assert!(
        set_cookies(&logout)
            .iter()
            .any(|cookie| cookie.starts_with("tilebox_session=;") && cookie.contains("Max-Age=0")),
        "{:?}",
        logout.headers
    );
    let after = get_with(server, "/jobs", &session);
    assert_eq!(after.status, 303, "the session is gone: {}", after.text());
    assert!(
        after
            .header("location")
            .is_some_and(|location| location.starts_with("/login")),
        "{:?}",
        after.headers
    );
}

/// A key revoked in the keys file ends its sessions: the next request with the cookie goes
/// to the login, while another key's session stays.
#[test]
fn a_key_revoked_in_the_keys_file_ends_its_sessions() {
    let keyed = Keyed::start();
    let server = &keyed.server;
    let viewer = session_of(server, &keyed.viewer);
    let admin = session_of(server, &keyed.admin);
    assert_eq!(get_with(server, "/jobs", &viewer).status, 200);
    keyed.keys.revoke("dashboard");
    wait_until(
        "the revoked key's session to be sent to the login",
        RELOAD_DEADLINE,
        || get_with(server, "/jobs", &viewer).status == 303,
    )
    .unwrap_or_else(|timed_out| panic!("{timed_out}\n{}", server.stderr_tail()));
    let refused = get_with(server, "/jobs", &viewer);
    assert!(
        refused
            .header("location")
            .is_some_and(|location| location.starts_with("/login?next=")),
        "{:?}",
        refused.headers
    );
    assert_eq!(
        get_with(server, "/jobs", &admin).status,
        200,
        "the other key's session stays"
    );
}

/// A flat `--token` logs in as an admin, and a session survives a restart of the server
/// (SQLite keeps it).
#[test]
fn flat_tokens_log_in_and_sessions_survive_a_restart() {
    let mut server = TestServer::start_with(&["--token", "s3cret-flat-token"]);
    assert_eq!(
        log_in(&server, "wrong-token", "/jobs").status,
        200,
        "a wrong token gets the form again"
    );
    let session = session_of(&server, "s3cret-flat-token");
    let page = get_with(&server, "/jobs", &session);
    assert_eq!(page.status, 200, "{}", page.text());
    assert!(page.text().contains("--token"), "{}", page.text());

    server.restart();
    let page = get_with(&server, "/jobs", &session);
    assert_eq!(page.status, 200, "the session survived: {}", page.text());
}

/// An open server needs no login (`/login` goes to the jobs) and gives the browser a
/// `tilebox_csrf` cookie; its forms must repeat that cookie's value (double submit).
#[test]
fn an_open_console_needs_no_login_and_checks_forms_against_its_csrf_cookie() {
    let server = TestServer::start();
    let login = http_get(&server, "/login", &[]);
    assert_eq!(login.status, 303, "{}", login.text());
    assert_eq!(login.header("location"), Some("/jobs"));

    let page = http_get(&server, "/jobs", &[]);
    assert_eq!(page.status, 200, "{}", page.text());
    let cookie = set_cookies(&page)
        .into_iter()
        .find(|cookie| cookie.starts_with("tilebox_csrf="))
        .unwrap_or_else(|| panic!("no csrf cookie: {:?}", page.headers))
        .to_string();
    assert!(
        cookie.contains("HttpOnly") && cookie.contains("SameSite=Lax"),
        "{cookie}"
    );
    let pair = cookie.split(';').next().expect("name=value").to_string();
    let token = pair.strip_prefix("tilebox_csrf=").expect("the name");
    assert_eq!(token.len(), 64, "{token}");
    let again = get_with(&server, "/jobs", &pair);
    assert!(
        set_cookies(&again).is_empty(),
        "a browser with the cookie keeps it: {:?}",
        again.headers
    );

    let forged = post_form(&server, "/logout", "", &format!("csrf={token}"));
    assert_eq!(forged.status, 403, "without the cookie: {}", forged.text());
    let mismatched = post_form(
        &server,
        "/logout",
        &pair,
        &format!("csrf={}", "0".repeat(64)),
    );
    assert_eq!(mismatched.status, 403, "{}", mismatched.text());
    let matching = post_form(&server, "/logout", &pair, &format!("csrf={token}"));
    assert_eq!(matching.status, 303, "{}", matching.text());
}

/// Behind a load balancer over PostgreSQL replicas, a session made on one replica is
/// honoured by the other, and a logout on one ends it on the other within the per-replica
/// cache time.
#[test]
fn sessions_are_shared_by_postgresql_replicas() {
    let keys = KeysFile::new();
    let admin = keys.create("ops", "admin", &[]);
    let replicas = crate::common::Replicas::start(2, &["--keys-file", keys.path()]);
    let (first, second) = (replicas.server(0), replicas.server(1));
    let session = session_of(first, &admin);
    let page = get_with(second, "/jobs", &session);
    assert_eq!(page.status, 200, "{}", page.text());
    let csrf = csrf_in(&page.text());
    let logout = post_form(first, "/logout", &session, &format!("csrf={csrf}"));
    assert_eq!(logout.status, 303, "{}", logout.text());
    assert_eq!(get_with(first, "/jobs", &session).status, 303);
    wait_until(
        "the other replica to end the session (it caches a row for 5 s)",
        Duration::from_secs(15),
        || get_with(second, "/jobs", &session).status == 303,
    )
    .unwrap_or_else(|timed_out| panic!("{timed_out}\n{}", second.stderr_tail()));
}
