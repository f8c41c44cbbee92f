//! The console's job pages over HTTP, against a real server and real runners: the jobs
//! list and its filters, the job page's header and lazy task tree, the task detail (input,
//! traceback, logs), the execution timeline and the logs tab, escaping of task-written text,
//! a 100,000-task job, and the retry and cancel actions with their CSRF checks.

use std::path::Path;
use std::time::{Duration, Instant};

use crate::common::{
    RunnerProcess, TestServer, client, http_get, http_post, job_document, job_request, project,
    project_runner, submit, uuid_of_id,
};

const APP: &str = r#"
from tilebox.workflows import ExecutionContext, Runner, Task

class Fan(Task):
    count: int
    def execute(self, context: ExecutionContext) -> None:
        context.logger.info("fanning out </script><script>alert(1)</script>")
        context.submit_subtasks([Leaf(index=index, label="leaf") for index in range(self.count)])

class Leaf(Task):
    index: int
    label: str
    def execute(self, context: ExecutionContext) -> None:
        if self.index == 0:
            context.current_task.display = "<img src=x onerror=alert(1)>"
        else:
            context.current_task.display = f"Leaf({self.index})"
        context.logger.info("leaf done", index=self.index)

class Boom(Task):
    def execute(self, context: ExecutionContext) -> None:
        raise ValueError("kaboom")

runner = Runner(tasks=[Fan, Leaf, Boom])
"#;

const FRAGMENT: (&str, &str) = ("X-Tilebox-Fragment", "1");

/// Runs every queued task with a runner that stops when idle.
fn run_all(server: &TestServer, project: &Path) {
    let log = project.join(format!("runner-{}.log", uuid::Uuid::new_v4()));
    RunnerProcess::spawn(
        &mut project_runner(server.url(), project, &["--stop-when-idling", "--quiet"]),
        log,
    )
    .wait_for_success(Duration::from_secs(120));
}

/// A page's body, after checking it answered 200.
fn page(server: &TestServer, path: &str, headers: &[(&str, &str)]) -> String {
    let answer = http_get(server, path, headers);
    assert_eq!(answer.status, 200, "{path}: {}", answer.text());
    answer.text()
}

/// Attribute values as the browser reads them (maud escapes `&` in attributes).
fn unescape(text: &str) -> String {
    text.replace("&amp;", "&")
}

/// Every value of attribute `name` in `html`, in order.
fn attributes(html: &str, name: &str) -> Vec<String> {
    let needle = format!(" {name}=\"");
    html.match_indices(&needle)
        .map(|(start, _)| {
            let rest = &html[start + needle.len()..];
            unescape(&rest[..rest.find('"').expect("closing quote")])
        })
        .collect()
}

/// The `<tr>` element (opening tag to `</tr>`) that contains `marker`.
fn row_with<'a>(html: &'a str, marker: &str) -> &'a str {
    let at = html
        .find(marker)
        .unwrap_or_else(|| panic!("no {marker} in {html}"));
    let start = html[..at].rfind("<tr").expect("a row");
    let end = at + html[at..].find("</tr>").expect("row end");
    &html[start..end]
}

/// The level counts element (`<p class="log-counts" …>…</p>`) of a logs tab.
fn log_counts(html: &str) -> String {
    let start = html
        .find("<p class=\"log-counts\"")
        .unwrap_or_else(|| panic!("no level counts in {html}"));
    let end = start + html[start..].find("</p>").expect("the counts end");
    html[start..end].to_string()
}

/// A form post from `origin` with the open server's double-submitted CSRF token: the
/// `tilebox_csrf` cookie and the same value in the form, as a browser sends them.
fn post_form(server: &TestServer, path: &str, origin: &str) -> (u16, Option<String>, String) {
    let token = "5e".repeat(32);
    let answer = http_post(
        server,
        path,
        &[
            ("Content-Type", "application/x-www-form-urlencoded"),
            ("Origin", origin),
            ("Cookie", &format!("tilebox_csrf={token}")),
        ],
        format!("csrf={token}").as_bytes(),
    );
    let location = answer.header("location").map(str::to_string);
    (answer.status, location, answer.text())
}

#[test]
fn the_job_pages_show_a_run_job_with_its_tree_detail_timeline_and_logs_escaped() {
    let server = TestServer::start();
    let project = project("pages", APP);
    // One field: the input is its value.
    let fan = submit(&server, "Fan", "3");
    let boom = submit(&server, "Boom", "");
    run_all(&server, project.path());

    // The jobs page lists both, with their states and links; the state filter narrows it.
    let jobs = page(&server, "/jobs", &[]);
    for (job, state) in [(&fan, "completed"), (&boom, "failed")] {
        let row = row_with(&jobs, &format!("data-job=\"{job}\""));
        assert!(row.contains(&format!("data-state=\"{state}\"")), "{row}");
        assert!(row.contains(&format!("href=\"/jobs/{job}\"")), "{row}");
    }
    assert!(
        jobs.contains("data-poll=\"/jobs\""),
        "the first page refreshes"
    );
    let failed = page(&server, "/jobs?state=failed", &[]);
    assert!(failed.contains(&format!("data-job=\"{boom}\"")), "{failed}");
    assert!(!failed.contains(&format!("data-job=\"{fan}\"")), "{failed}");

    // The job page: header with the task total, one root row with an expander.
    let job_page = page(&server, &format!("/jobs/{fan}"), &[]);
    assert!(job_page.contains("data-tasks=\"4\""), "{job_page}");
    assert!(job_page.contains("4 tasks"), "{job_page}");
    assert_eq!(job_page.matches("<tr class=\"task\"").count(), 1);
    let children = attributes(&job_page, "data-children");
    assert_eq!(children.len(), 1, "{job_page}");

    // Its children load as a fragment: three rows, the hostile display escaped.
    let rows = page(&server, &children[0], &[FRAGMENT]);
    assert_eq!(rows.matches("<tr class=\"task\"").count(), 3, "{rows}");
    assert!(rows.contains("data-depth=\"1\""), "{rows}");
    assert!(
        rows.contains("&lt;img src=x onerror=alert(1)&gt;"),
        "{rows}"
    );
    assert!(!rows.contains("<img"), "{rows}");

    // The detail of Leaf(1): its decoded input and its logs.
    let leaf = row_with(&rows, "Leaf(1)");
    let detail_url = attributes(leaf, "href")
        .into_iter()
        .find(|href| href.contains("/tasks/"))
        .expect("a task link");
    let detail = page(&server, &detail_url, &[FRAGMENT]);
    assert!(
        detail.starts_with("<aside class=\"task-detail\""),
        "{detail}"
    );
    assert!(detail.contains("&quot;index&quot;: 1"), "{detail}");
    assert_eq!(detail.matches("class=\"log-row\"").count(), 1, "{detail}");
    assert!(detail.contains("leaf done"), "{detail}");
    // Without the script, the same URL is a whole page.
    assert!(page(&server, &detail_url, &[]).starts_with("<!DOCTYPE html>"));

    // Execution: one span per task, all from the one runner.
    let execution = page(&server, &format!("/jobs/{fan}?tab=execution"), &[]);
    assert!(execution.contains("data-spans=\"4\""), "{execution}");
    assert!(execution.contains("data-runners=\"1\""), "{execution}");
    assert_eq!(execution.matches("<rect class=\"span runner-0").count(), 4);

    // Logs: every record, the body with `</script>` as text; the level filter applies.
    let logs = page(&server, &format!("/jobs/{fan}?tab=logs"), &[FRAGMENT]);
    assert!(
        logs.starts_with("<section class=\"tab\" data-tab=\"logs\""),
        "{logs}"
    );
    assert_eq!(logs.matches("leaf done").count(), 3, "{logs}");
    assert!(
        logs.contains("fanning out &lt;/script&gt;&lt;script&gt;alert(1)&lt;/script&gt;"),
        "{logs}"
    );
    assert!(!logs.contains("</script>"), "{logs}");
    assert!(
        logs.contains("<span class=\"key\">index</span>=2"),
        "{logs}"
    );
    // The level counts above them: four info records. (They refresh for a while after the
    // job ended, `jobs::telemetry_may_arrive`; how long ago it ended depends on the machine.)
    let counts = log_counts(&logs);
    assert!(counts.contains("data-total=\"4\""), "{counts}");
    assert!(counts.contains("4 records"), "{counts}");
    assert!(
        counts.contains("data-level=\"info\" data-count=\"4\""),
        "{counts}"
    );
    assert!(!counts.contains("data-level=\"error\""), "{counts}");
    let fragment = log_counts(&page(
        &server,
        &format!("/jobs/{fan}/log-counts"),
        &[FRAGMENT],
    ));
    assert!(
        fragment.contains("data-total=\"4\"")
            && fragment.contains("data-level=\"info\" data-count=\"4\""),
        "the counts' own address answers the same counts: {fragment}"
    );
    // A queued job's counts refresh until it ends; canceled before any task ran, nothing
    // more can arrive and they stop.
    let queued = submit(&server, "Fan", "1");
    let queued_counts = || log_counts(&page(&server, &format!("/jobs/{queued}?tab=logs"), &[]));
    assert!(queued_counts().contains("0 records"), "{}", queued_counts());
    assert!(
        queued_counts().contains(&format!("data-poll=\"/jobs/{queued}/log-counts\"")),
        "{}",
        queued_counts()
    );
    assert!(server.tilebox(&["job", "cancel", &queued]).status.success());
    assert!(
        !queued_counts().contains("data-poll"),
        "{}",
        queued_counts()
    );
    let errors = page(&server, &format!("/jobs/{fan}?tab=logs&level=error"), &[]);
    assert_eq!(errors.matches("class=\"log-row\"").count(), 0, "{errors}");
    let after = attributes(&logs, "data-record");
    let rest = page(
        &server,
        &format!("/jobs/{fan}/logs?follow=1&after={}", after[0]),
        &[FRAGMENT],
    );
    assert_eq!(
        rest.matches("class=\"log-row\"").count(),
        after.len() - 1,
        "follow answers the records after the one named: {rest}"
    );

    // The failed job: its task's detail shows the exception and traceback.
    let boom_page = page(&server, &format!("/jobs/{boom}"), &[]);
    assert!(boom_page.contains("data-action=\"retry\""), "{boom_page}");
    assert!(!boom_page.contains("data-action=\"cancel\""), "{boom_page}");
    let boom_detail = attributes(&boom_page, "href")
        .into_iter()
        .find(|href| href.contains("/tasks/"))
        .expect("a task link");
    let detail = page(&server, &boom_detail, &[FRAGMENT]);
    assert!(detail.contains("<pre class=\"traceback\">"), "{detail}");
    assert!(detail.contains("ValueError"), "{detail}");
    assert!(
        detail.contains("raise ValueError(&quot;kaboom&quot;)"),
        "{detail}"
    );
}

#[test]
fn retry_and_cancel_post_through_the_job_service_and_refuse_other_origins() {
    let server = TestServer::start();
    let project = project("pages", APP);
    let boom = submit(&server, "Boom", "");
    run_all(&server, project.path());
    assert_eq!(job_document(&server, &boom)["state"], "failed");
    let origin = format!("http://{}", server.url().trim_start_matches("http://"));

    // Another site's page cannot retry it.
    let forged = post_form(
        &server,
        &format!("/jobs/{boom}/retry"),
        "http://evil.example",
    );
    assert_eq!(forged.0, 403, "{}", forged.2);
    assert_eq!(job_document(&server, &boom)["state"], "failed");

    let retried = post_form(&server, &format!("/jobs/{boom}/retry"), &origin);
    assert_eq!(retried.0, 303, "{}", retried.2);
    assert_eq!(retried.1, Some(format!("/jobs/{boom}")));
    // Its task is queued again (nothing runs it now), and the page offers cancel.
    let retried = job_document(&server, &boom);
    assert_eq!(retried["tasks"][0]["state"], "queued", "{retried:#}");
    assert_ne!(retried["state"], "failed", "{retried:#}");
    let job_page = page(&server, &format!("/jobs/{boom}"), &[]);
    assert!(job_page.contains("data-action=\"cancel\""), "{job_page}");
    assert!(job_page.contains("data-confirm=\"Cancel job"), "{job_page}");
    // The shell carries the one dialog the script asks in before such a form posts.
    assert!(job_page.contains("<dialog class=\"confirm\""), "{job_page}");
    assert!(job_page.contains("data-confirm-yes"), "{job_page}");

    let canceled = post_form(&server, &format!("/jobs/{boom}/cancel"), &origin);
    assert_eq!(canceled.0, 303, "{}", canceled.2);
    assert_eq!(job_document(&server, &boom)["state"], "canceled");
    let job_page = page(&server, &format!("/jobs/{boom}"), &[]);
    assert!(job_page.contains("data-state=\"canceled\""), "{job_page}");

    // An action on a job that does not exist answers 404.
    let missing = post_form(
        &server,
        &format!("/jobs/{}/cancel", uuid::Uuid::now_v7()),
        &origin,
    );
    assert_eq!(missing.0, 404, "{}", missing.2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_of_100000_tasks_opens_with_one_page_of_tasks() {
    let server = TestServer::start();
    let mut api = client(&server).await;
    let job = api
        .jobs
        .submit_job(job_request("Leaf", "v1.0", 100_000, b"{}"))
        .await
        .expect("submit 100,000 tasks")
        .into_inner();
    let job = uuid_of_id(job.id.as_ref());

    let started = Instant::now();
    let answer = http_get(&server, &format!("/jobs/{job}"), &[]);
    let took = started.elapsed();
    println!("GET /jobs/<100,000-task job> answered in {took:?}");
    assert_eq!(answer.status, 200, "{}", answer.text());
    let html = answer.text();
    assert!(html.contains("data-tasks=\"100000\""), "{html}");
    assert_eq!(html.matches("<tr class=\"task\"").count(), 200);
    let more = attributes(&html, "href")
        .into_iter()
        .find(|href| href.contains("/tasks?") && href.contains("after="))
        .expect("a load-more link");
    assert!(html.contains("load 200 more"));
    // A guard against unbounded work, not a performance assertion (see BENCHMARKS).
    assert!(took < Duration::from_secs(10), "took {took:?}");

    let next = http_get(&server, &more, &[FRAGMENT]).text();
    assert_eq!(next.matches("<tr class=\"task\"").count(), 200, "{next}");
    let first_page_ids = attributes(&html, "data-task");
    assert!(
        attributes(&next, "data-task")
            .iter()
            .all(|id| !first_page_ids.contains(id)),
        "the next page continues after the first"
    );
}
