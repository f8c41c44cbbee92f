//! The console in a real headless Chromium (`common::browser`): the driver itself, the
//! parallel-sleep example seen through the console with five runners, and a server with
//! keys. Run one at a time (the nextest group `browser`).

use std::time::Duration;

use crate::common::browser::Browser;
use crate::common::{TestServer, wait_until};

/// How long a page may take to show what it is waited for: pages poll every 1–3 s.
const PAGE_TIMEOUT: Duration = Duration::from_secs(20);

/// The driver loads the console's jobs page with its shell, reads the DOM, and reports a
/// page's uncaught exceptions and `console.error` calls as page errors, while a predicate
/// that throws inside `wait_for` is not one.
#[test]
fn the_driver_runs_pages_and_catches_page_errors() {
    let server = TestServer::start();
    let browser = Browser::launch();

    browser.goto(&format!("{}/", server.url()));
    assert_eq!(
        browser.url(),
        format!("{}/jobs", server.url()),
        "/ sends to /jobs"
    );
    assert_eq!(browser.eval("document.title"), "Jobs · tilebox");
    let sections = browser.eval(
        "Array.from(document.querySelectorAll('header.topbar nav a'), link => link.getAttribute('href'))",
    );
    assert_eq!(
        sections,
        serde_json::json!(["/jobs", "/clusters", "/workflows", "/runners"]),
        "the shell's navigation"
    );
    assert_eq!(
        browser.eval("document.querySelector('nav a[aria-current=page]').getAttribute('href')"),
        "/jobs"
    );
    // The console's own script and stylesheet loaded under its CSP, without errors.
    browser.wait_for(
        "the console's stylesheet to apply",
        "getComputedStyle(document.body).fontFamily !== ''",
        PAGE_TIMEOUT,
    );
    browser.assert_no_page_errors();

    // A predicate that throws (the element does not exist yet) is "not yet", not an error.
    browser.eval(
        "setTimeout(() => { const late = document.createElement('p'); late.id = 'late'; \
         late.textContent = 'here'; document.body.append(late); }, 200)",
    );
    browser.wait_for(
        "the late paragraph",
        "document.querySelector('#late').textContent === 'here'",
        PAGE_TIMEOUT,
    );
    assert!(browser.try_eval("null.property").is_err());
    browser.assert_no_page_errors();

    // An exception nobody catches, thrown by a page's script, is a page error.
    browser.goto(
        r#"data:text/html,<title>boom</title><script>throw new Error("boom at load")</script>"#,
    );
    browser.eval("setTimeout(() => { throw new Error('boom later'); }, 0); 1");
    browser.eval("console.error('something', 42)");
    wait_until("the late exception to be reported", PAGE_TIMEOUT, || {
        browser.page_errors().len() >= 3
    })
    .unwrap_or_else(|timed_out| panic!("{timed_out}: {:?}", browser.page_errors()));
    let errors = browser.page_errors();
    assert!(
        errors.iter().any(|error| error.contains("boom at load")),
        "{errors:?}"
    );
    assert!(
        errors.iter().any(|error| error.contains("boom later")),
        "{errors:?}"
    );
    assert!(
        errors
            .iter()
            .any(|error| error.contains("console.error: something 42")),
        "{errors:?}"
    );
    let reported = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        browser.assert_no_page_errors()
    }));
    let message = reported
        .expect_err("assert_no_page_errors fails on a page that threw")
        .downcast::<String>()
        .map(|message| *message)
        .unwrap_or_default();
    assert!(message.contains("boom at load"), "{message}");
    assert_eq!(browser.take_page_errors().len(), errors.len());
    browser.assert_no_page_errors();

    // On a console page, what its Content-Security-Policy blocks (an inline style, an
    // inline script) is a page error too: the browser tests catch markup that breaks it.
    browser.goto(&format!("{}/jobs", server.url()));
    browser.eval(
        "const styled = document.createElement('p'); styled.setAttribute('style', 'color: red'); \
         document.body.append(styled); const inline = document.createElement('script'); \
         inline.textContent = 'window.ranInline = true'; document.body.append(inline); 1",
    );
    wait_until("the CSP violations to be reported", PAGE_TIMEOUT, || {
        browser.page_errors().len() >= 2
    })
    .unwrap_or_else(|timed_out| panic!("{timed_out}: {:?}", browser.page_errors()));
    assert_eq!(browser.eval("window.ranInline === true"), false);
    let violations = browser.take_page_errors();
    assert!(
        violations
            .iter()
            .any(|error| error.contains("Content Security Policy") && error.contains("style-src")),
        "{violations:?}"
    );
    assert!(
        violations
            .iter()
            .any(|error| error.contains("Content Security Policy") && error.contains("script-src")),
        "{violations:?}"
    );
}
