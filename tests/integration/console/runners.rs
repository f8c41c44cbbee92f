//! The console's runners page (`/runners`) with real runner processes connected: each is
//! listed under its cluster with its advertised tasks, slots and state, and a stopped one
//! is listed as stopped (shown with `?all=1`).

use std::time::Duration;

use crate::common::{RunnerProcess, TestServer, example, http_get, project_runner, wait_until};

/// The `<tr class="runner" …>` rows of a runners page.
fn runner_rows(html: &str) -> Vec<&str> {
    html.split(r#"<tr class="runner""#)
        .skip(1)
        .map(|row| &row[..row.find("</tr>").expect("a closed row")])
        .collect()
}

#[test]
fn the_runners_page_lists_a_connected_runner_with_its_tasks() {
    let server = TestServer::start_with(&["--presence-timeout-ms", "3000"]);
    let project = example("parallel-sleep");
    let mut runner = RunnerProcess::spawn(
        &mut project_runner(server.url(), project.path(), &["-n", "2"]),
        project.path().join("runner.log"),
    );

    wait_until(
        "the runner on the runners page",
        Duration::from_secs(120),
        || {
            runner_rows(&http_get(&server, "/runners", &[]).text())
                .iter()
                .any(|row| row.contains("SleepTask@"))
        },
    )
    .unwrap_or_else(|timed_out| panic!("{timed_out}\n--- runner ---\n{}", runner.log()));
    let page = http_get(&server, "/runners", &[]);
    assert_eq!(page.status, 200);
    assert_eq!(page.header("cache-control"), Some("no-store"));
    let html = page.text();
    assert!(html.starts_with("<!DOCTYPE html>"), "a whole page: {html}");
    assert!(
        html.contains(r#"data-poll="/runners""#),
        "it polls itself: {html}"
    );
    let rows = runner_rows(&html);
    assert_eq!(rows.len(), 1, "{html}");
    let row = rows[0];
    assert!(
        row.starts_with(r#" data-state="connected" data-cluster="default""#),
        "{row}"
    );
    assert!(
        row.contains(r#"<td class="tasks">"#) && row.contains("ParallelSleepWorkflow@"),
        "{row}"
    );
    assert!(row.contains(r#"data-busy="0" data-total="2""#), "{row}");
    assert!(row.contains("tilebox"), "{row}");
    assert!(row.contains("runner:"), "the runner's id: {row}");

    // The script's fragment is the view alone.
    let fragment = http_get(&server, "/runners", &[("X-Tilebox-Fragment", "1")]).text();
    assert!(
        fragment.starts_with(r#"<section class="runners-view""#),
        "{fragment}"
    );
    // Its cluster shows it, another cluster none; an unknown one is a 404 naming it.
    let filtered = http_get(&server, "/runners?cluster=default", &[]).text();
    assert_eq!(runner_rows(&filtered).len(), 1);
    let created = server.tilebox(&["cluster", "create", "Other", "--slug", "other"]);
    assert!(created.status.success(), "{created:?}");
    let other = http_get(&server, "/runners?cluster=other", &[]);
    assert_eq!(other.status, 200, "{}", other.text());
    assert!(runner_rows(&other.text()).is_empty(), "{}", other.text());
    let unknown = http_get(&server, "/runners?cluster=nowhere", &[]);
    assert_eq!(unknown.status, 404);
    assert!(unknown.text().contains("cluster `nowhere` not found"));

    runner.signal("-TERM");
    runner.wait_for_exit("the runner to stop", Duration::from_secs(60));
    wait_until("the runner to be stopped", Duration::from_secs(30), || {
        let all = http_get(&server, "/runners?all=1", &[]).text();
        runner_rows(&all)
            .iter()
            .any(|row| row.starts_with(r#" data-state="stopped""#))
    })
    .expect("a stopped runner is listed as stopped with ?all=1");
    assert!(
        runner_rows(&http_get(&server, "/runners", &[]).text()).is_empty(),
        "without ?all=1 only connected runners are listed"
    );
    server.stop();
}
