//! The console in a real headless Chromium (`common::browser`): the driver itself, the
//! parallel-sleep example seen through the console with five runners, and a server with
//! keys. Run one at a time (the nextest group `browser`).

use std::path::Path;
use std::process::Output;
use std::time::Duration;

use serde_json::Value;

use crate::common::browser::Browser;
use crate::common::{
    KeysFile, RunnerProcess, TestServer, example, job_document, json_of, project_runner, submit,
    tilebox_command, wait_for_job_state, wait_until, write_project,
};

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

/// When Chromium dies, the next command panics naming its stderr; dropping the `Browser`
/// leaves no process of its group behind.
#[test]
fn the_driver_reports_a_dead_browser_and_leaves_no_process() {
    let browser = Browser::launch();
    browser.goto("data:text/html,<title>alive</title>");
    assert_eq!(browser.eval("document.title"), "alive");
    let group = browser.pid() as libc::pid_t;
    // SAFETY: kill(2) of the browser's own process group.
    assert_eq!(unsafe { libc::kill(-group, 0) }, 0, "the group runs");
    crate::common::signal(browser.pid(), "-KILL");
    let failed = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        browser.eval("document.title")
    }));
    let message = failed
        .expect_err("a command to a dead browser panics")
        .downcast::<String>()
        .map(|message| *message)
        .unwrap_or_default();
    assert!(message.contains("Chromium failed"), "{message}");
    assert!(
        message.contains("--- chromium stderr (tail) ---"),
        "{message}"
    );
    drop(browser);
    wait_until("the browser's processes to be gone", PAGE_TIMEOUT, || {
        // SAFETY: kill(2) with signal 0 only checks whether the group has a process.
        let alive = unsafe { libc::kill(-group, 0) } == 0;
        !alive
    })
    .unwrap();

    let browser = Browser::launch();
    let group = browser.pid() as libc::pid_t;
    browser.goto("data:text/html,<title>alive</title>");
    drop(browser);
    // Killed at once; its children are gone once their new parent has reaped them.
    wait_until(
        "the dropped browser's processes to be gone",
        PAGE_TIMEOUT,
        || {
            // SAFETY: as above.
            let alive = unsafe { libc::kill(-group, 0) } == 0;
            !alive
        },
    )
    .unwrap();
}

/// Where screenshots always go (`target/console-screenshots/`), and, with
/// `TILEBOX_UPDATE_SCREENSHOTS=1`, the committed copies the README shows (`docs/console/`).
fn save_screenshot(browser: &Browser, name: &str) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    browser.screenshot(&root.join("target/console-screenshots").join(name));
    if std::env::var_os(UPDATE_SCREENSHOTS_VARIABLE).is_some_and(|value| value == "1") {
        browser.screenshot(&root.join("docs/console").join(name));
    }
}

/// Set to `1` to write the screenshots to `docs/console/` as well.
const UPDATE_SCREENSHOTS_VARIABLE: &str = "TILEBOX_UPDATE_SCREENSHOTS";

/// A `tilebox runner start --project DIR -n 1` with its log in the project.
fn start_runner(server: &TestServer, project: &Path, name: &str, args: &[&str]) -> RunnerProcess {
    RunnerProcess::spawn(
        &mut project_runner(server.url(), project, args),
        project.join(format!("{name}.log")),
    )
}

/// `tilebox runner list --json`: the runners the server saw, with whether each is connected.
fn connected_runners(server: &TestServer) -> Vec<Value> {
    let listed = json_of(&server.tilebox(&["--json", "runner", "list"]));
    listed
        .as_array()
        .unwrap_or_else(|| panic!("`runner list --json` prints an array: {listed}"))
        .iter()
        .filter(|runner| runner["state"] == "connected")
        .cloned()
        .collect()
}

/// A JavaScript string literal of `text`.
fn js(text: &str) -> String {
    serde_json::to_string(text).expect("a string serializes")
}

/// The parallel-sleep example run by five runners, then seen through the console as a user
/// sees it (the issue's "Tested in a real browser" list): the jobs page lists the job, its
/// page shows 21 tasks each with the runner that ran it, the timeline has overlapping bars
/// of two runners, the logs tab has the 20 "Finished sleep task" lines, a task's detail
/// shows its input; the runners page lists the five runners; a failed task shows its
/// traceback; retry re-queues a failed job and cancel stops a queued one, each only after
/// its confirmation.
#[test]
fn parallel_sleep_with_five_runners() {
    let server = TestServer::start();
    let project = example("parallel-sleep");
    // Build the environment once, so five runners do not sync it at the same time.
    start_runner(&server, project.path(), "build", &["--stop-when-idling"])
        .wait_for_success(Duration::from_secs(120));
    let mut runners: Vec<RunnerProcess> = (0..5)
        .map(|index| {
            start_runner(
                &server,
                project.path(),
                &format!("runner-{index}"),
                &["-n", "1"],
            )
        })
        .collect();
    // All five poll before the job exists, so its sleeps overlap on several of them.
    for runner in &runners {
        wait_until(
            "the runner to load its release",
            Duration::from_secs(60),
            || runner.log().contains("loaded release"),
        )
        .unwrap_or_else(|timed_out| panic!("{timed_out}\n--- runner log ---\n{}", runner.log()));
    }
    let job = submit(
        &server,
        "ParallelSleepWorkflow",
        r#"{"count": 20, "seconds": 1.0}"#,
    );
    let done = wait_for_job_state(&server, &job, "completed", Duration::from_secs(60));
    assert_eq!(
        done["execution_stats"]["tasks_by_state"]["computed"], 21,
        "{done}"
    );
    // Spans and logs come through the runners' telemetry exports (every 250 ms), not with the
    // results, and a finished job's tabs do not refresh: wait until all are stored.
    wait_until(
        "the runners' spans and logs to reach the server",
        Duration::from_secs(30),
        || {
            let spans = json_of(&server.tilebox(&["--json", "job", "spans", &job]));
            let logs =
                json_of(&server.tilebox(&["--json", "job", "logs", &job, "--limit", "1000"]));
            let finished = logs["logs"].as_array().map_or(0, |logs| {
                logs.iter()
                    .filter(|record| record["body"] == "Finished sleep task")
                    .count()
            });
            spans["spans"].as_array().map_or(0, Vec::len) >= 21 && finished == 20
        },
    )
    .unwrap_or_else(|timed_out| panic!("{timed_out}\n{}", server.stderr_tail()));

    let browser = Browser::launch();
    let base = server.url();

    // 1. The jobs page lists the job, completed, with a link to its page.
    browser.goto(&format!("{base}/jobs"));
    let row = format!("table.jobs tr.job[data-job={}]", js(&job));
    browser.wait_for(
        "the jobs page to list the completed job with a link to it",
        &format!(
            "document.querySelector({row_js})?.dataset.state === 'completed' && \
             document.querySelector({row_js} + ' a[href=\"/jobs/{job}\"]') !== null",
            row_js = js(&row)
        ),
        PAGE_TIMEOUT,
    );
    save_screenshot(&browser, "jobs.png");
    browser.assert_no_page_errors();

    // 2. The job page says 21 tasks; expanding the root shows them all, each with its runner.
    browser.click(&format!("{row} a[href=\"/jobs/{job}\"]"));
    browser.wait_for(
        "the job page's header to count 21 tasks",
        "document.querySelector('section.job-header')?.dataset.tasks === '21' && \
         document.querySelector('section.job-header').innerText.includes('21 tasks')",
        PAGE_TIMEOUT,
    );
    assert_eq!(browser.eval("location.pathname"), format!("/jobs/{job}"));
    browser.click("table.tasks tr.task[data-depth=\"0\"] button.expand");
    browser.wait_for(
        "the expanded tree to show the root and its 20 sleep tasks, each with its runner",
        "(() => { const rows = document.querySelectorAll('table.tasks tr.task'); \
           return rows.length === 21 && Array.from(rows).every(row => \
             (row.querySelector('td.runner')?.textContent ?? '').trim() !== '' && row.dataset.state); })()",
        PAGE_TIMEOUT,
    );
    assert_eq!(
        browser.eval(
            "document.querySelector('table.tasks tr.task[data-depth=\"0\"] button.expand')\
             .getAttribute('aria-expanded')"
        ),
        "true"
    );
    let sleep_rows = browser.eval(
        "Array.from(document.querySelectorAll('table.tasks tr.task[data-depth=\"1\"] td.display'), \
         cell => cell.textContent.trim()).filter(text => text.startsWith('SleepTask(')).length",
    );
    assert_eq!(sleep_rows, 20, "20 SleepTask(index) rows under the root");
    save_screenshot(&browser, "job-tasks.png");
    browser.assert_no_page_errors();

    // 3. The execution timeline: 21 spans, and two of different runners overlap in time.
    browser.click("nav.tabs a[data-tab=\"execution\"]");
    browser.wait_for(
        "the timeline to draw one span per task",
        "document.querySelectorAll('section.tab[data-tab=\"execution\"] svg.timeline rect.span').length === 21",
        PAGE_TIMEOUT,
    );
    let overlap = browser.eval(
        "(() => { \
           const spans = Array.from(document.querySelectorAll('svg.timeline rect.span'), rect => ({ \
             runner: rect.dataset.runner, start: BigInt(rect.dataset.startNs), end: BigInt(rect.dataset.endNs) })); \
           for (const a of spans) for (const b of spans) \
             if (a.runner !== b.runner && a.start < b.end && b.start < a.end) return [a.runner, b.runner]; \
           return null; })()",
    );
    assert!(
        overlap.is_array(),
        "two spans of different runners overlap in time on the timeline"
    );
    let summary = browser.eval(
        "(() => { const summary = document.querySelector('.timeline-summary'); \
           return [Number(summary.dataset.spans), Number(summary.dataset.runners), \
             new Set(Array.from(document.querySelectorAll('svg.timeline rect.span'), rect => rect.dataset.runner)).size]; })()",
    );
    assert_eq!(summary[0], 21, "the summary counts 21 spans: {summary}");
    assert!(
        summary[1].as_u64().is_some_and(|runners| runners >= 2) && summary[1] == summary[2],
        "the summary counts the runners that drew spans, at least 2: {summary}"
    );
    assert_eq!(browser.eval("location.search"), "?tab=execution");
    save_screenshot(&browser, "job-execution.png");
    browser.assert_no_page_errors();

    // 4. The logs tab: each sleep task's "Finished sleep task" line, with runner and task.
    browser.click("nav.tabs a[data-tab=\"logs\"]");
    let finished = "Array.from(document.querySelectorAll('section.tab[data-tab=\"logs\"] table.logs tr.log-row'))\
                    .filter(row => row.querySelector('td.body')?.textContent.includes('Finished sleep task'))";
    browser.wait_for(
        "the logs tab to show the 20 \"Finished sleep task\" lines",
        &format!("{finished}.length === 20"),
        PAGE_TIMEOUT,
    );
    // Above them, the count per level: the root's "Submitting" line and a Starting and a
    // Finished line per sleep task, all info.
    let counts = browser.eval(
        "(() => { const counts = document.querySelector('p.log-counts'); \
           return [Number(counts.dataset.total), \
             Number(counts.querySelector('span.level-count[data-level=\"info\"]')?.dataset.count), \
             counts.querySelectorAll('span.level-count').length]; })()",
    );
    assert_eq!(
        counts,
        serde_json::json!([41, 41, 1]),
        "total, info, levels shown"
    );
    assert_eq!(
        browser.eval(&format!(
            "{finished}.every(row => row.dataset.level === 'info' && \
               row.querySelector('td.runner').textContent.trim() !== '' && \
               row.querySelector('td.task').textContent.includes('SleepTask('))"
        )),
        true,
        "each line names its level, runner and task"
    );
    assert!(
        browser
            .eval("document.querySelectorAll('input[name=level]').length")
            .as_u64()
            .is_some_and(|levels| levels >= 2),
        "the level filter"
    );
    save_screenshot(&browser, "job-logs.png");
    browser.assert_no_page_errors();

    // 5. A task's detail: its decoded input and its logs (from a freshly loaded page, whose
    // tree starts collapsed).
    browser.goto(&format!("{base}/jobs/{job}"));
    browser.click("table.tasks tr.task[data-depth=\"0\"] button.expand");
    let third = "Array.from(document.querySelectorAll('table.tasks tr.task'))\
                 .find(row => row.querySelector('td.display')?.textContent.trim() === 'SleepTask(3)')";
    browser.wait_for(
        "the SleepTask(3) row",
        &format!("{third} !== undefined"),
        PAGE_TIMEOUT,
    );
    let third_id = browser.eval(&format!("{third}.dataset.task"));
    let third_id = third_id.as_str().expect("the row names its task");
    browser.click(&format!(
        "table.tasks tr.task[data-task={}] td.display a.task-link",
        js(third_id)
    ));
    browser.wait_for(
        "the task detail of SleepTask(3) with its input and its logs",
        &format!(
            "(() => {{ const detail = document.querySelector('aside.task-detail[data-task={}]'); \
               return detail && detail.querySelector('pre.input').textContent.includes('\"index\": 3') && \
                 Array.from(detail.querySelectorAll('tr.log-row')).some(row => row.textContent.includes('Finished sleep task')); }})()",
            js(third_id)
        ),
        PAGE_TIMEOUT,
    );
    browser.assert_no_page_errors();

    // 6. The runners page and `runner list`: five runners connected, advertising SleepTask.
    browser.goto(&format!("{base}/runners"));
    browser.wait_for(
        "the runners page to list 5 connected runners advertising SleepTask",
        "(() => { const rows = document.querySelectorAll('table.runners tr.runner[data-state=\"connected\"]'); \
           return rows.length === 5 && Array.from(rows).every(row => \
             row.querySelector('td.tasks').textContent.includes('SleepTask')); })()",
        PAGE_TIMEOUT,
    );
    save_screenshot(&browser, "runners.png");
    let listed = connected_runners(&server);
    assert_eq!(
        listed.len(),
        5,
        "`runner list` shows 5 connected: {listed:?}"
    );
    assert!(
        listed
            .iter()
            .all(|runner| runner.to_string().contains("SleepTask")),
        "each advertises SleepTask: {listed:?}"
    );
    browser.assert_no_page_errors();

    // 7. A task that fails on a real runner (its input does not decode: ValidationError)
    // shows its traceback; then the runners stop, so
    // nothing claims what follows.
    let failed = submit(&server, "SleepTask", r#"{"index": 0, "seconds": "x"}"#);
    wait_for_job_state(&server, &failed, "failed", Duration::from_secs(60));
    for runner in &runners {
        runner.signal("-TERM");
    }
    for runner in &mut runners {
        runner.wait_for_exit("the runner to stop after SIGTERM", Duration::from_secs(30));
    }
    browser.goto(&format!("{base}/jobs/{failed}"));
    browser.wait_for(
        "the failed job's page",
        "document.querySelector('section.job-header')?.dataset.state === 'failed'",
        PAGE_TIMEOUT,
    );
    browser.click("table.tasks tr.task a.task-link");
    browser.wait_for(
        "the failed task's traceback",
        "(() => { const traceback = document.querySelector('aside.task-detail pre.traceback'); \
           return traceback && traceback.textContent.includes('ValidationError') && \
             traceback.textContent.includes('Traceback'); })()",
        PAGE_TIMEOUT,
    );
    browser.assert_no_page_errors();

    // 8. Retry asks first: "no" changes nothing; "yes" re-queues the failed job.
    browser.click("form[data-action=\"retry\"] button");
    confirm_dialog_is_open(&browser, "form[data-action=\"retry\"]");
    browser.click("dialog.confirm[open] button[data-confirm-no]");
    browser.wait_for(
        "the dialog to close",
        "document.querySelector('dialog.confirm[open]') === null",
        PAGE_TIMEOUT,
    );
    assert_eq!(
        job_document(&server, &failed)["state"],
        "failed",
        "no retry without yes"
    );
    browser.click("form[data-action=\"retry\"] button");
    confirm_dialog_is_open(&browser, "form[data-action=\"retry\"]");
    assert_eq!(
        job_document(&server, &failed)["state"],
        "failed",
        "the dialog alone changes nothing"
    );
    browser.click("dialog.confirm[open] button[data-confirm-yes]");
    browser.wait_for(
        "the retried job no longer failed, its task queued again",
        "(() => { const state = document.querySelector('section.job-header')?.dataset.state; \
           return state !== undefined && state !== 'failed' && \
             document.querySelector('table.tasks tr.task')?.dataset.state === 'queued'; })()",
        PAGE_TIMEOUT,
    );
    let retried = job_document(&server, &failed);
    assert_ne!(retried["state"], "failed", "{retried}");
    assert_eq!(
        retried["execution_stats"]["tasks_by_state"],
        serde_json::json!({"queued": 1}),
        "{retried}"
    );
    browser.assert_no_page_errors();

    // 9. Cancel asks first, then stops a queued job (no runner is left to claim it).
    let queued = submit(
        &server,
        "ParallelSleepWorkflow",
        r#"{"count": 2, "seconds": 1.0}"#,
    );
    browser.goto(&format!("{base}/jobs/{queued}"));
    browser.click("form[data-action=\"cancel\"] button");
    confirm_dialog_is_open(&browser, "form[data-action=\"cancel\"]");
    assert_eq!(job_document(&server, &queued)["state"], "submitted");
    browser.click("dialog.confirm[open] button[data-confirm-yes]");
    browser.wait_for(
        "the header to show the job canceled",
        "document.querySelector('section.job-header')?.dataset.state === 'canceled'",
        PAGE_TIMEOUT,
    );
    assert_eq!(job_document(&server, &queued)["state"], "canceled");
    browser.assert_no_page_errors();
}

/// The shared confirmation dialog is open and shows the question of the form `form`.
fn confirm_dialog_is_open(browser: &Browser, form: &str) {
    browser.wait_for(
        &format!("the confirmation dialog of {form}"),
        &format!(
            "(() => {{ const dialog = document.querySelector('dialog.confirm[open]'); \
               const question = document.querySelector({}).dataset.confirm; \
               return dialog && question && dialog.textContent.includes(question) && \
                 dialog.querySelector('button[data-confirm-yes]') && dialog.querySelector('button[data-confirm-no]'); }})()",
            js(form)
        ),
        PAGE_TIMEOUT,
    );
}

/// HELLO: a one-task workflow project, published to have a release on the workflows page.
const HELLO: &str = "from tilebox.workflows import ExecutionContext, Runner, Task\n\n\
class Hello(Task):\n    def execute(self, context: ExecutionContext) -> None:\n        pass\n\n\
runner = Runner(tasks=[Hello])\n";

/// The CLI in `directory` against `server` with API key `key`; panics unless it succeeds.
fn tilebox_as(server: &TestServer, key: &str, directory: &Path, args: &[&str]) -> Output {
    let output = tilebox_command(args)
        .current_dir(directory)
        .env("TILEBOX_API_URL", server.url())
        .env("TILEBOX_API_KEY", key)
        .env("XDG_CACHE_HOME", directory.join(".cache-home"))
        .output()
        .expect("cannot run the tilebox binary");
    assert!(
        output.status.success(),
        "tilebox {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

/// Action buttons and forms on the page, apart from the top bar's logout.
const ACTIONS: &str = "document.querySelectorAll('[data-action]:not([data-action=logout])').length";

/// The page errors a refused request leaves (the browser logs a document answered with
/// 4xx): forgets them after checking that they are nothing else.
fn take_refusals(browser: &Browser) {
    for error in browser.take_page_errors() {
        assert!(
            error.contains("the server responded with a status of 4"),
            "only the refusal is a page error: {error}"
        );
    }
}

/// Logs in with `key` on the login page the browser is at; lands on the page `next` named.
/// Types `key` into the login form and submits it, waiting for the page the post leads to
/// (the form again, or the page it came from), so the next step never reads the old one.
fn log_in(browser: &Browser, key: &str) {
    browser.fill("form#login input[name=key]", key);
    browser.navigating("the login's answer", |browser| {
        browser.click("form#login button")
    });
}

/// With keys configured the console asks for a key: a wrong one is refused with a message;
/// a read-only key reads the job, cluster and workflow pages but sees no action on them;
/// logging out ends the session; an admin key sees the actions; and a key revoked in the
/// keys file is sent back to the login on its next page.
#[test]
fn keys_and_read_only_viewers() {
    let directory = tempfile::tempdir().expect("temp dir");
    let keys = KeysFile::new();
    let admin = keys.create("boss", "admin", &[]);
    let reader = keys.create("dashboard", "read-only", &[]);
    let server = TestServer::start_with(&["--keys-file", keys.path()]);
    let project = directory.path().join("greeter");
    fs_err::create_dir(&project).expect("mkdir");
    write_project(&project, "greeter", HELLO);
    tilebox_as(
        &server,
        &admin,
        &project,
        &["--json", "workflow", "create", "Greeter"],
    );
    tilebox_as(
        &server,
        &admin,
        &project,
        &["cluster", "create", "east", "--slug", "east"],
    );
    let release = json_of(&tilebox_as(
        &server,
        &admin,
        &project,
        &["--json", "workflow", "publish-release"],
    ));
    let release = release["id"].as_str().expect("the release's id").to_owned();
    // Queued (no runner): it can be canceled.
    let job = json_of(&tilebox_as(
        &server,
        &admin,
        &project,
        &[
            "--json", "job", "submit", "--name", "queued", "--task", "Hello", "--input", "{}",
        ],
    ));
    let job = job["id"].as_str().expect("the job's id").to_owned();
    let base = server.url();
    let browser = Browser::launch();

    // Without a session every page sends to the login, which comes back to it.
    browser.goto(&format!("{base}/jobs/{job}"));
    browser.wait_for(
        "the login form",
        "location.pathname === '/login' && document.querySelector('form#login input[name=key]') !== null",
        PAGE_TIMEOUT,
    );
    log_in(&browser, "tbx_not-a-key");
    browser.wait_for(
        "the login to refuse a wrong key",
        "location.pathname === '/login' && (document.querySelector('.flash.error')?.textContent ?? '').trim() !== ''",
        PAGE_TIMEOUT,
    );
    take_refusals(&browser);
    browser.assert_no_page_errors();

    // A read-only key reads everything and is offered no action.
    log_in(&browser, &reader);
    browser.wait_for(
        "the job page after the login",
        &format!(
            "location.pathname === '/jobs/{job}' && document.querySelector('section.job-header') !== null"
        ),
        PAGE_TIMEOUT,
    );
    assert_eq!(
        browser.eval(ACTIONS),
        0,
        "no action on the job page for a read-only key"
    );
    browser.goto(&format!("{base}/clusters"));
    browser.wait_for(
        "the clusters page",
        "document.querySelector('tr.cluster[data-slug=\"east\"]') !== null",
        PAGE_TIMEOUT,
    );
    assert_eq!(
        browser.eval(ACTIONS),
        0,
        "no action on the clusters page for a read-only key"
    );
    browser.goto(&format!("{base}/workflows/greeter"));
    browser.wait_for(
        "the workflow page with its release",
        &format!(
            "document.querySelector('tr.release[data-release={}]') !== null",
            js(&release)
        ),
        PAGE_TIMEOUT,
    );
    assert_eq!(
        browser.eval(ACTIONS),
        0,
        "no action on the workflow page for a read-only key"
    );
    browser.assert_no_page_errors();

    // Logging out ends the session: the next page asks for a key again.
    browser.click("button[data-action=\"logout\"]");
    browser.wait_for(
        "the login after logging out",
        "location.pathname === '/login'",
        PAGE_TIMEOUT,
    );
    browser.goto(&format!("{base}/jobs/{job}"));
    browser.wait_for(
        "the login for the next page",
        "location.pathname === '/login' && document.querySelector('form#login') !== null",
        PAGE_TIMEOUT,
    );

    // An admin key sees the actions.
    log_in(&browser, &admin);
    browser.wait_for(
        "the job page with its cancel button",
        "document.querySelector('form[data-action=\"cancel\"]') !== null",
        PAGE_TIMEOUT,
    );
    browser.goto(&format!("{base}/clusters"));
    browser.wait_for(
        "the clusters page with its create and delete forms",
        "document.querySelector('form[data-action=\"create-cluster\"] input[name=name]') !== null && \
         document.querySelector('tr.cluster[data-slug=\"east\"] form[data-action=\"delete-cluster\"]') !== null",
        PAGE_TIMEOUT,
    );
    browser.goto(&format!("{base}/workflows/greeter"));
    browser.wait_for(
        "the workflow page with its deploy form",
        "document.querySelector('form[data-action=\"deploy\"]') !== null",
        PAGE_TIMEOUT,
    );
    browser.assert_no_page_errors();

    // A link to the job followed from another site (a chat, an issue; here `localhost`,
    // another site than 127.0.0.1) opens it signed in: the session cookie is SameSite=Lax.
    let other_site = base.replacen("127.0.0.1", "localhost", 1);
    assert_ne!(other_site, base, "the server listens on 127.0.0.1: {base}");
    browser.goto(&format!("{other_site}/login"));
    browser.wait_for(
        "a page of the other site",
        "location.hostname === 'localhost' && document.body !== null",
        PAGE_TIMEOUT,
    );
    browser.eval(&format!(
        "(() => {{ const link = document.createElement('a'); link.id = 'shared-link'; \
           link.href = {}; link.textContent = 'the job'; document.body.prepend(link); return true; }})()",
        js(&format!("{base}/jobs/{job}"))
    ));
    browser.click("a#shared-link");
    browser.wait_for(
        "the shared job page, signed in, with its cancel button",
        &format!(
            "location.hostname === '127.0.0.1' && location.pathname === '/jobs/{job}' && \
             document.querySelector('form[data-action=\"cancel\"]') !== null"
        ),
        PAGE_TIMEOUT,
    );
    // But another site's form posting a cancel (a page of its own: the console's
    // `form-action 'self'` would not even send it) carries no session (Lax), a forged token
    // and a foreign origin: the job stays queued.
    browser.goto(&format!(
        "data:text/html,<form id=forged method=post action={base}/jobs/{job}/cancel>\
         <input name=csrf value={}></form>",
        "00".repeat(32)
    ));
    browser.navigating("the forged post's answer", |browser| {
        browser.eval("document.getElementById('forged').submit(), true");
    });
    assert_eq!(browser.eval("location.hostname"), "127.0.0.1");
    let state = json_of(&tilebox_as(
        &server,
        &admin,
        &project,
        &["--json", "job", "get", &job],
    ))["state"]
        .clone();
    assert_eq!(state, "submitted", "a cross-site post canceled nothing");
    take_refusals(&browser);

    // A key revoked in the keys file loses its session: its next page is the login.
    keys.revoke("boss");
    wait_until(
        "the revoked key's next page to be the login",
        PAGE_TIMEOUT,
        || {
            browser.goto(&format!("{base}/jobs"));
            browser.eval("location.pathname") == "/login"
        },
    )
    .unwrap_or_else(|timed_out| panic!("{timed_out}; the page is at {}", browser.url()));
    take_refusals(&browser);
    browser.assert_no_page_errors();
}

/// Over TLS a browser speaks HTTP/2 to the console (ALPN), so the host is the request's
/// `:authority`, not a `Host` header. An open server's Host check, and with keys the
/// origin check of the login and logout forms, work on it; Chromium did use HTTP/2.
#[test]
fn the_console_works_over_tls_and_http2() {
    let pki = crate::security::tls::TestPki::new();
    let (cert, key) = (pki.path("server.pem"), pki.path("server.key"));
    let tls = [
        "--tls-cert",
        cert.to_str().expect("utf-8 temp path"),
        "--tls-key",
        key.to_str().expect("utf-8 temp path"),
    ];
    let browser = Browser::launch_with(&["--ignore-certificate-errors"]);
    let protocol = "performance.getEntriesByType('navigation')[0].nextHopProtocol";

    let open = TestServer::start_with(&tls);
    assert!(open.url().starts_with("https://"), "{}", open.url());
    browser.goto(&format!("{}/jobs", open.url()));
    browser.wait_for(
        "the jobs page of the open server",
        "document.querySelector('table.jobs, p.no-jobs, main') !== null && location.pathname === '/jobs'",
        PAGE_TIMEOUT,
    );
    assert_eq!(
        browser.eval(protocol),
        "h2",
        "the console is served over HTTP/2"
    );
    assert_eq!(
        browser.eval("document.querySelector('nav a[aria-current=page]')?.getAttribute('href')"),
        "/jobs",
        "the page, not the Host check's refusal"
    );
    browser.assert_no_page_errors();

    let keys = KeysFile::new();
    let admin = keys.create("boss", "admin", &[]);
    let mut arguments = tls.to_vec();
    arguments.extend(["--keys-file", keys.path()]);
    let keyed = TestServer::start_with(&arguments);
    browser.goto(&format!("{}/jobs", keyed.url()));
    browser.wait_for(
        "the login form",
        "location.pathname === '/login' && document.querySelector('form#login input[name=key]') !== null",
        PAGE_TIMEOUT,
    );
    log_in(&browser, &admin);
    browser.wait_for(
        "the jobs page after the login",
        "location.pathname === '/jobs' && document.querySelector('button[data-action=\"logout\"]') !== null",
        PAGE_TIMEOUT,
    );
    assert_eq!(browser.eval(protocol), "h2");
    browser.navigating("the logout", |browser| {
        browser.click("button[data-action=\"logout\"]")
    });
    browser.wait_for(
        "the login after logging out",
        "location.pathname === '/login'",
        PAGE_TIMEOUT,
    );
    browser.goto(&format!("{}/jobs", keyed.url()));
    browser.wait_for(
        "the login again: the session ended",
        "location.pathname === '/login'",
        PAGE_TIMEOUT,
    );
    browser.assert_no_page_errors();
}
