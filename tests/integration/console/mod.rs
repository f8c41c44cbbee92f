//! The web console that `tilebox server` serves on its API port: HTTP-level behaviour
//! (headers, the Host check, `--no-console`) here; pages in their own modules.

mod admin;
mod auth;
mod browser;
mod pages;
mod runners;

use crate::common::{TestServer, http_get};

/// `/` sends to the jobs page, which comes with the headers that keep it out of caches and
/// forbid inline scripts; the embedded assets it links to are served, immutable.
#[test]
fn the_console_is_served_on_the_api_port_with_strict_headers() {
    let server = TestServer::start();
    let root = http_get(&server, "/", &[]);
    assert_eq!(root.status, 303, "{}", root.text());
    assert_eq!(root.header("location"), Some("/jobs"));

    let page = http_get(&server, "/jobs", &[]);
    assert_eq!(page.status, 200, "{}", page.text());
    assert_eq!(page.header("cache-control"), Some("no-store"));
    let policy = page.header("content-security-policy").expect("a CSP");
    assert!(policy.contains("script-src 'self'"), "{policy}");
    assert!(!policy.contains("unsafe-inline"), "{policy}");
    assert_eq!(page.header("x-content-type-options"), Some("nosniff"));
    let html = page.text();
    assert!(html.starts_with("<!DOCTYPE html>"), "{html}");

    for asset in ["console.", "favicon."] {
        let start = html
            .find(&format!("/assets/{asset}"))
            .unwrap_or_else(|| panic!("no {asset} asset in {html}"));
        let url = &html[start..start + html[start..].find('"').expect("closing quote")];
        let served = http_get(&server, url, &[]);
        assert_eq!(served.status, 200, "{url}: {}", served.text());
        assert!(
            served
                .header("cache-control")
                .is_some_and(|value| value.contains("immutable")),
            "{url}: {:?}",
            served.headers
        );
    }
    let unknown = http_get(&server, "/assets/console.0000000000000000.js", &[]);
    assert_eq!(unknown.status, 404);
}

/// Hostile and malformed addresses get a 4xx that says what was wrong, never a 500 or a
/// dropped connection, and the console serves on afterwards.
#[test]
fn malformed_addresses_are_refused_with_a_4xx() {
    let server = TestServer::start();
    let job = "01a22b74-cfcc-7528-a89e-4a7eae15861f";
    let long = "x".repeat(6_000);
    let cases: Vec<(String, u16)> = vec![
        ("/jobs?state=bogus".into(), 400),
        ("/jobs?after=not-an-id".into(), 400),
        ("/jobs?from=yesterday".into(), 400),
        ("/jobs?state=%ff%fe".into(), 400),
        (format!("/jobs?name={long}"), 400),
        ("/jobs/not-an-id".into(), 404),
        (format!("/jobs/{job}"), 404),
        (format!("/jobs/{job}?tab=nope"), 400),
        (format!("/jobs/{job}/logs?after=zzz"), 400),
        (format!("/jobs/{job}/tasks?parent=zzz"), 400),
        (format!("/jobs/{job}/tasks/not-a-task"), 404),
        ("/workflows/%00%ff".into(), 400),
        ("/runners?cluster=%3Cscript%3E".into(), 404),
    ];
    for (path, status) in &cases {
        let answer = http_get(&server, path, &[]);
        let shown: String = path.chars().take(80).collect();
        assert_eq!(answer.status, *status, "{shown}: {}", answer.text());
        assert!(
            !answer.text().contains("<script>"),
            "{shown}: {}",
            answer.text()
        );
    }
    // An error repeats at most a short piece of the address: a crafted link cannot put its
    // own sentence on the console's page.
    let sentence = "Your+session+expired,+log+in+again+at+evil.example+with+your+API+key";
    for (path, status) in [
        (format!("/jobs?state={sentence}"), 400),
        (format!("/jobs?after={sentence}"), 400),
        (format!("/jobs/{sentence}"), 404),
        (format!("/workflows/{sentence}"), 404),
        (format!("/jobs/{job}?tab={sentence}"), 400),
    ] {
        let answer = http_get(&server, &path, &[]);
        assert_eq!(answer.status, status, "{path}: {}", answer.text());
        assert!(
            !answer.text().contains("evil.example"),
            "{path}: {}",
            answer.text()
        );
    }
    assert_eq!(http_get(&server, "/jobs", &[]).status, 200);
}

/// The official Console's job address on this host (`/workflows/jobs/<id>`, which the
/// Tilebox guides print) leads to the job's page; a workflow named `jobs` keeps its page.
#[test]
fn the_official_consoles_job_address_leads_to_the_job() {
    let server = TestServer::start();
    let job = "01a22b74-cfcc-7528-a89e-4a7eae15861f";
    let moved = http_get(&server, &format!("/workflows/jobs/{job}"), &[]);
    assert_eq!(moved.status, 308, "{}", moved.text());
    assert_eq!(
        moved.header("location"),
        Some(format!("/jobs/{job}").as_str())
    );
    assert_eq!(http_get(&server, "/workflows/jobs/nope", &[]).status, 404);
    let workflow = http_get(&server, "/workflows/jobs", &[]);
    assert_eq!(
        workflow.status,
        404,
        "no workflow `jobs`: {}",
        workflow.text()
    );
    assert!(
        workflow.text().contains("workflow `jobs`"),
        "{}",
        workflow.text()
    );
}

/// A browser asking for a page nobody serves gets a 404 page, not the gRPC router's empty
/// answer (which it would take for a download).
#[test]
fn an_unknown_page_is_a_404_page() {
    let server = TestServer::start();
    let missing = http_get(&server, "/nope", &[]);
    assert_eq!(missing.status, 404, "{missing:?}");
    assert!(
        missing.text().contains("no console page"),
        "{}",
        missing.text()
    );
    assert_eq!(missing.header("cache-control"), Some("no-store"));
}

/// An open server answers its console only at `localhost` or an IP address: a page whose
/// name was rebound to the server's address sends its own name as `Host` and is refused.
#[test]
fn an_open_loopback_server_refuses_a_foreign_host() {
    let server = TestServer::start();
    let rebound = http_get(&server, "/jobs", &[("Host", "evil.example:8083")]);
    assert_eq!(rebound.status, 421, "{}", rebound.text());
    assert!(rebound.text().contains("localhost"), "{}", rebound.text());
    for host in [
        "localhost",
        "localhost:1234",
        "127.0.0.1:9",
        "[::1]:80",
        "10.1.2.3:8083",
    ] {
        let page = http_get(&server, "/jobs", &[("Host", host)]);
        assert_eq!(page.status, 200, "Host {host}: {}", page.text());
    }
}

/// `--no-console` serves no page (the port answers as gRPC does to an unknown method),
/// while the gRPC API on the same port works.
#[test]
fn no_console_serves_no_pages_but_the_api() {
    let server = TestServer::start_with(&["--no-console"]);
    for path in ["/jobs", "/"] {
        let answer = http_get(&server, path, &[]);
        assert_eq!(
            answer.header("grpc-status"),
            Some("12"),
            "{path}: {answer:?}"
        );
        assert!(
            !answer.text().contains("<html"),
            "{path}: {}",
            answer.text()
        );
    }
    let clusters = server.tilebox(&["cluster", "list", "--json"]);
    assert!(
        clusters.status.success(),
        "{}",
        String::from_utf8_lossy(&clusters.stderr)
    );
}
