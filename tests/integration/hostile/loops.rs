//! Tasks that try to run forever: whatever a task raises or leaves invalid is its own
//! (workflow) error, counted against its retries; failures a runner reports as not the
//! task's own are capped like lost leases; a runner with one slot keeps serving other jobs
//! while a hostile task fails its way out.

use std::path::Path;
use std::time::Duration;

use super::*;
use crate::common::{TestServer, ask, client, stderr_of, uuid_of_id, wait_for_job_state};
use tilebox::api::workflows_v1::{ComputedTask, NextTaskRequest, TaskFailedRequest, TaskState};

/// A release whose `Hostile` task misbehaves as its input says, after appending that input
/// to `executions` (one line per execution), and whose `Fine` task computes.
fn hostile_app(executions: &Path) -> String {
    format!(
        r#"from tilebox.workflows import ExecutionContext, Runner, Task


class Custom(BaseException):
    pass


class Unprintable(Exception):
    def __str__(self):
        raise KeyboardInterrupt("from __str__")

    def __repr__(self):
        raise SystemExit("from __repr__")


class Leaf(Task):
    def execute(self, context: ExecutionContext) -> None:
        pass


class Hostile(Task):
    how: str

    def execute(self, context: ExecutionContext) -> None:
        with open({executions:?}, "a") as executions:
            executions.write(self.how + "\n")
        match self.how:
            case "exit":
                raise SystemExit(3)
            case "interrupt":
                raise KeyboardInterrupt
            case "custom":
                raise Custom("mine")
            case "unprintable":
                raise Unprintable
            case "surrogate":
                raise ValueError("bad \ud800 text")
            case "negative":
                context.progress("p").add(-1)
            case "fraction":
                context.progress("p").done(1.5)
            case "display-surrogate":
                context.current_task.display = "ab\ud800"
            case "display-long":
                context.current_task.display = "x" * 1025
            case "display-int":
                context.current_task.display = 42
            case "retries-huge":
                context.submit_subtask(Leaf(), max_retries=2**64)
            case "retries-negative":
                context.submit_subtask(Leaf(), max_retries=-1)


class Fine(Task):
    n: int

    def execute(self, context: ExecutionContext) -> None:
        context.current_task.display = f"fine {{self.n}}"


runner = Runner(tasks=[Hostile, Leaf, Fine])
"#
    )
}

/// `job submit` of one task with `input` and `max_retries`; answers the job id.
fn submit(server: &TestServer, task: &str, input: &str, max_retries: u32) -> String {
    let max_retries = max_retries.to_string();
    submit_job(
        server,
        task,
        &["--input", input, "--max-retries", &max_retries],
    )
}

/// How many lines of `executions` are `how`.
fn executions_of(executions: &Path, how: &str) -> usize {
    fs_err::read_to_string(executions)
        .unwrap_or_default()
        .lines()
        .filter(|line| *line == how)
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn whatever_a_task_raises_or_leaves_invalid_fails_it_as_a_workflow_error() {
    let server = TestServer::start_with(&["--long-poll-ms", "300"]);
    let scratch = tempfile::tempdir().expect("temp dir");
    let executions = scratch.path().join("executions.log");
    let project = crate::common::project("hostile", &hostile_app(&executions));
    let cases = [
        ("exit", "SystemExit(3)"),
        ("interrupt", "KeyboardInterrupt()"),
        ("custom", "Custom('mine')"),
        ("unprintable", "Unprintable(<repr() failed>)"),
        ("surrogate", r"ValueError('bad \ud800 text')"),
        (
            "negative",
            r#"InvalidProgressError("progress 'p': amount -1 is negative")"#,
        ),
        (
            "fraction",
            r#"InvalidProgressError("progress 'p': the amount must be an int, got float")"#,
        ),
        (
            "display-surrogate",
            r#"InvalidDisplayError("the task's display is not valid UTF-8 (lone surrogate at 2)")"#,
        ),
        (
            "display-long",
            r#"InvalidDisplayError("the task's display is 1025 characters; the limit is 1024")"#,
        ),
        (
            "display-int",
            r#"InvalidDisplayError("the task's display must be a str, got int")"#,
        ),
        (
            "retries-huge",
            "ValueError('max_retries must be from 0 to 2**63 - 1, got 18446744073709551616')",
        ),
        (
            "retries-negative",
            "ValueError('max_retries must be from 0 to 2**63 - 1, got -1')",
        ),
    ];
    let jobs: Vec<(&str, &str, String)> = cases
        .iter()
        .map(|(how, reason)| {
            (
                *how,
                *reason,
                submit(&server, "Hostile", &format!("{how:?}"), 1),
            )
        })
        .collect();
    let fine = submit(&server, "Fine", "7", 0);

    let output =
        crate::common::project_runner(server.url(), project.path(), &["--stop-when-idling"])
            .output()
            .expect("runner");
    let log = stderr_of(&output);
    assert!(output.status.success(), "{log}");

    let done = wait_for_job_state(&server, &fine, "completed", Duration::from_secs(10));
    assert_eq!(done["tasks"][0]["display"], "fine 7");
    for (how, reason, job) in jobs {
        let failed = wait_for_job_state(&server, &job, "failed", Duration::from_secs(10));
        let task = &failed["tasks"][0];
        assert_eq!(task["state"], "failed", "{how}: {failed}\n{log}");
        // A workflow error: with max_retries 1 the task ran exactly twice.
        assert_eq!(task["retry_count"], 1, "{how}: {task}");
        assert_eq!(executions_of(&executions, how), 2, "{how}");
        let display = task["display"].as_str().expect("display");
        let mut lines = display.lines();
        assert_eq!(lines.next(), Some("Hostile"), "{how}: {display}");
        assert!(
            lines.all(|line| line == reason),
            "{how}: every attempt failed with {reason}: {display}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_whose_runners_keep_failing_to_run_it_fails_after_eleven_attempts() {
    let server = TestServer::start_with(&["--long-poll-ms", "100"]);
    let mut client = client(&server).await;
    let mut request = one_task_job("Breaking", "v1.0", b"");
    request.tasks.as_mut().expect("tasks").task_groups[0].max_retries_values = vec![5];
    let job = client
        .jobs
        .submit_job(request)
        .await
        .expect("submit")
        .into_inner();
    let job = uuid_of_id(job.id.as_ref());

    // A runner (the SDK's one-at-a-time protocol) that cannot run the task, again and again.
    let mut attempts = 0;
    loop {
        let claimed = client
            .tasks
            .next_task(NextTaskRequest {
                computed_task: None,
                next_task_to_run: ask("Breaking", "v1.0"),
            })
            .await
            .expect("next task")
            .into_inner()
            .next_task;
        let Some(claimed) = claimed else {
            break;
        };
        attempts += 1;
        assert!(attempts <= 11, "the task is handed out again and again");
        let answer = client
            .tasks
            .task_failed(TaskFailedRequest {
                task_id: claimed.id.clone(),
                display: "Breaking\nRunnerError('cannot run it')".into(),
                was_workflow_error: false,
                ..TaskFailedRequest::default()
            })
            .await
            .expect("task failed")
            .into_inner();
        let expected = if attempts < 11 {
            TaskState::Queued
        } else {
            TaskState::Failed
        };
        assert_eq!(answer.state, expected as i32, "attempt {attempts}");
    }
    assert_eq!(attempts, 11);
    let document = wait_for_job_state(&server, &job.to_string(), "failed", Duration::from_secs(5));
    let task = &document["tasks"][0];
    assert_eq!(task["state"], "failed", "{document}");
    // Not the task's own failures: its retries are untouched.
    assert_failed_by_runners(task);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_one_slot_runner_serves_other_jobs_while_a_hostile_task_fails_its_way_out() {
    let server = TestServer::start_with(&["--long-poll-ms", "300"]);
    let scratch = tempfile::tempdir().expect("temp dir");
    let executions = scratch.path().join("executions.log");
    let project = crate::common::project("hostile", &hostile_app(&executions));
    // The hostile job first, so the one slot meets it first.
    let hostile = submit(&server, "Hostile", "\"exit\"", 2);
    let fine = submit(&server, "Fine", "1", 0);

    let output = crate::common::project_runner(
        server.url(),
        project.path(),
        &["-n", "1", "--stop-when-idling"],
    )
    .output()
    .expect("runner");
    let log = stderr_of(&output);
    assert!(output.status.success(), "{log}");

    let done = wait_for_job_state(&server, &fine, "completed", Duration::from_secs(10));
    assert_eq!(done["tasks"][0]["display"], "fine 1");
    let failed = wait_for_job_state(&server, &hostile, "failed", Duration::from_secs(10));
    let task = &failed["tasks"][0];
    assert_eq!(task["state"], "failed", "{failed}");
    assert_eq!(task["retry_count"], 2, "{task}");
    // Bounded by its retries: once, then twice more.
    assert_eq!(executions_of(&executions, "exit"), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reported_displays_over_1024_characters_fail_the_task_or_are_cut() {
    let server = TestServer::start_with(&["--long-poll-ms", "100"]);
    let mut client = client(&server).await;
    let mut submit_one = async |name: &str| {
        let job = client
            .jobs
            .submit_job(one_task_job(name, "v1.0", b""))
            .await
            .expect("submit")
            .into_inner();
        uuid_of_id(job.id.as_ref())
    };
    let computed_job = submit_one("Long").await;
    let failed_job = submit_one("LongFailure").await;
    let claim = async |client: &mut tilebox::client::Client, name: &str| {
        client
            .tasks
            .next_task(NextTaskRequest {
                computed_task: None,
                next_task_to_run: ask(name, "v1.0"),
            })
            .await
            .expect("next task")
            .into_inner()
            .next_task
            .expect("a task")
    };

    // A computed report with a display of 1,025 characters fails the task, saying why.
    let task = claim(&mut client, "Long").await;
    client
        .tasks
        .next_task(NextTaskRequest {
            computed_task: Some(ComputedTask {
                id: task.id.clone(),
                display: format!("Long\n{}", "x".repeat(1020)),
                ..ComputedTask::default()
            }),
            next_task_to_run: None,
        })
        .await
        .expect("the report is answered");
    let document = wait_for_job_state(
        &server,
        &computed_job.to_string(),
        "failed",
        Duration::from_secs(5),
    );
    let display = document["tasks"][0]["display"].as_str().expect("display");
    assert_eq!(display.chars().count(), 1024, "{display}");
    assert!(display.starts_with("Long\nxxx"), "{display}");
    assert!(
        display.ends_with(
            "\nInvalidDisplay('the reported display is 1025 characters; the limit is 1024')"
        ),
        "{display}"
    );

    // A failure report's display is cut to the limit, as the SDK cuts its own.
    let task = claim(&mut client, "LongFailure").await;
    client
        .tasks
        .task_failed(TaskFailedRequest {
            task_id: task.id.clone(),
            display: format!("LongFailure\nValueError('{}')", "y".repeat(5000)),
            was_workflow_error: true,
            ..TaskFailedRequest::default()
        })
        .await
        .expect("task failed");
    let document = wait_for_job_state(
        &server,
        &failed_job.to_string(),
        "failed",
        Duration::from_secs(5),
    );
    let display = document["tasks"][0]["display"].as_str().expect("display");
    assert_eq!(display.chars().count(), 1024, "{display}");
    assert!(
        display.starts_with("LongFailure\nValueError('yyy"),
        "{display}"
    );
}
