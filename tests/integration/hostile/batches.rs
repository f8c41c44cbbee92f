//! Reports larger than the server's message limit together: a runner sends its reports in
//! batches, splits a batch the server refuses as too large, and never gives up a report
//! that fits on its own (no task runs twice).

use std::path::Path;
use std::time::Duration;

use super::*;
use crate::common::{project_runner, wait_for_job_state};

/// How many `Big` tasks run at once (one per slot).
const BIG_TASKS: usize = 4;

/// A release whose `Big` task waits until every `Big` task started (so their reports finish
/// together), then submits four `Leaf` subtasks of about 10 KB input each: a report of about
/// 40 KB. Each execution appends a line to `executions`.
fn big_reports_app(executions: &Path, started: &Path) -> String {
    format!(
        r#"import time

from tilebox.workflows import ExecutionContext, Runner, Task


class Leaf(Task):
    payload: str

    def execute(self, context: ExecutionContext) -> None:
        # Slower than the runner's prefetch threshold, so a claim holds at most one leaf per
        # slot and its answer stays within the server's small message limit.
        time.sleep(0.005)
        with open({executions:?}, "a") as executions:
            executions.write("leaf " + self.payload.split("|")[0] + "\n")


class Big(Task):
    n: int

    def execute(self, context: ExecutionContext) -> None:
        with open({executions:?}, "a") as executions:
            executions.write(f"big {{self.n}}\n")
        with open({started:?}, "a") as started:
            started.write(f"{{self.n}}\n")
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            with open({started:?}) as started:
                if len(started.read().split()) >= {BIG_TASKS}:
                    break
            time.sleep(0.001)
        for index in range(4):
            context.submit_subtask(Leaf(payload=f"{{self.n}}-{{index}}|" + "x" * 10_000))


runner = Runner(tasks=[Big, Leaf])
"#
    )
}

#[test]
fn reports_over_the_message_limit_together_are_split_and_none_is_dropped() {
    // Two 40 KB reports exceed 64 KiB; one fits.
    let server = TestServer::start_with(&[
        "--max-message-bytes",
        "65536",
        "--max-input-bytes",
        "16384",
        "--long-poll-ms",
        "200",
    ]);
    let scratch = tempfile::tempdir().expect("temp dir");
    let executions = scratch.path().join("executions.log");
    let started = scratch.path().join("started.log");
    let project = crate::common::project("batches", &big_reports_app(&executions, &started));
    let jobs: Vec<String> = (0..BIG_TASKS)
        .map(|n| submit_job(&server, "Big", &["--input", &n.to_string()]))
        .collect();

    let slots = BIG_TASKS.to_string();
    let mut runner = RunnerProcess::spawn(
        &mut project_runner(
            server.url(),
            project.path(),
            &["-n", &slots, "--stop-when-idling"],
        ),
        scratch.path().join("runner.log"),
    );
    runner.wait_for_success(Duration::from_secs(120));
    let log = runner.log();

    for job in &jobs {
        let done = wait_for_job_state(&server, job, "completed", Duration::from_secs(10));
        assert_eq!(done["execution_stats"]["total_tasks"], 5, "{log}");
    }
    // Every task ran exactly once: no report was given up (its task would have run again).
    let lines = fs_err::read_to_string(&executions).expect("executions");
    let mut lines: Vec<&str> = lines.lines().collect();
    lines.sort_unstable();
    let mut expected: Vec<String> = (0..BIG_TASKS)
        .flat_map(|n| {
            std::iter::once(format!("big {n}"))
                .chain((0..4).map(move |index| format!("leaf {n}-{index}")))
        })
        .collect();
    expected.sort_unstable();
    assert_eq!(lines, expected, "{log}");
    // The reports finished together and went out in one batch the server refused; it was
    // split, and nothing was given up.
    assert!(
        log.contains("the server refused a batch of reports as too large"),
        "{log}"
    );
    assert!(!log.contains("giving up"), "{log}");
    assert!(!log.contains("giving it up"), "{log}");
}
