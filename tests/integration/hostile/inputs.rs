//! Malformed configs, undecodable inputs, bad identifiers, dependency cycles and over-limit inputs.

use std::time::Duration;

use super::*;
use crate::common::{
    TestServer, ask, client, get_job, json_of, snapshot_settings, stderr_of, task_group,
    transcript, uuid_of_id, wait_for_job_state,
};
use tilebox::api::convert::id;
use tilebox::api::workflows_v1::{
    ComputedTask, JobState, ListJobTasksRequest, NextTaskRequest, TaskState, TaskSubmissionGroup,
};

#[test]
fn malformed_workflow_configs_are_refused_with_file_line_and_column_and_nothing_is_written() {
    const VALID: &str = "[workflow]\nslug = \"greeter\"\nrunner = \"app:runner\"\n\n[build]\ninclude = [\"app.py\"]\n";
    let _snapshots = snapshot_settings().bind_to_scope();
    // What is wrong, and the config's text. The errors (`error: FILE:LINE:COLUMN: ...`) are
    // in the snapshot `malformed_workflow_configs`.
    let cases: Vec<(&str, Vec<u8>)> = vec![
        (
            "an unknown key in [workflow]",
            VALID
                .replace("runner = ", "colour = \"blue\"\nrunner = ")
                .into(),
        ),
        (
            "an unknown table",
            format!("{VALID}\n[deploy]\nclusters = [\"x\"]\n").into(),
        ),
        (
            "an unknown key in [targets.dev]",
            format!("{VALID}\n[targets.dev]\ncluster = [\"x\"]\n").into(),
        ),
        (
            "an unknown key in [build]",
            VALID.replace("include", "includes").into(),
        ),
        (
            "a TOML syntax error",
            VALID
                .replace("slug = \"greeter\"", "slug = \"greeter")
                .into(),
        ),
        (
            "a wrong type",
            VALID.replace("slug = \"greeter\"", "slug = 5").into(),
        ),
        (
            "an invalid slug",
            VALID.replace("\"greeter\"", "\"no spaces allowed\"").into(),
        ),
        (
            "a runner that is not module:object",
            VALID.replace("app:runner", "app.runner").into(),
        ),
        (
            "an include that leaves the project",
            VALID.replace("\"app.py\"", "\"../outside.py\"").into(),
        ),
        (
            "a file that is not UTF-8",
            b"[workflow]\nslug = \"\xff\xfe\"\n".to_vec(),
        ),
    ];
    let mut errors = String::new();
    for (what, text) in cases {
        let project = tempfile::tempdir().expect("project");
        fs_err::write(project.path().join("app.py"), HELLO).expect("app.py");
        fs_err::write(project.path().join("tilebox.workflow.toml"), &text).expect("config");
        let before = tree(project.path());
        let output = crate::common::tilebox_command(&["workflow", "build-release"])
            .arg(project.path())
            .arg("--cache-dir")
            .arg(project.path().join("cache"))
            .output()
            .expect("build-release");
        let stderr = stderr_of(&output);
        let text = String::from_utf8_lossy(&text);
        assert_eq!(output.status.code(), Some(1), "{what}:\n{text}\n{stderr}");
        assert_eq!(tree(project.path()), before, "nothing is written: {what}");
        errors.push_str(&format!("# {what}\n{stderr}\n"));
    }
    insta::assert_snapshot!("malformed_workflow_configs", errors);
}

// ---- task inputs -----------------------------------------------------------------------------

const COUNTER: &str = "from tilebox.workflows import ExecutionContext, Runner, Task\n\n\
class Count(Task):\n    n: int\n\n    def execute(self, context: ExecutionContext) -> None:\n        \
context.current_task.display = f'counted {self.n}'\n\nrunner = Runner(tasks=[Count])\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn undecodable_task_inputs_fail_the_task_as_a_workflow_error_with_the_decode_message() {
    let server = TestServer::start_with(&["--long-poll-ms", "300"]);
    let project = crate::common::project("counter", COUNTER);
    let submit = |input: &str, retries: &str| {
        let job = json_of(&server.tilebox(&[
            "--json",
            "job",
            "submit",
            "--name",
            "count",
            "--task",
            "Count",
            "--input",
            input,
            "--max-retries",
            retries,
        ]));
        job["id"].as_str().expect("id").to_string()
    };
    let good = submit("7", "0");
    let wrong_type = submit("abc", "0");
    let wrong_type_retried = submit("abc", "1");
    let mut client = client(&server).await;
    let not_json = client
        .jobs
        .submit_job(one_task_job("Count", "v0.0", b"\xff"))
        .await
        .expect("the server never decodes inputs")
        .into_inner();
    let not_json = uuid_of_id(not_json.id.as_ref()).to_string();

    let output =
        crate::common::tilebox_command(&["runner", "start", "--stop-when-idling", "--project"])
            .arg(project.path())
            .arg("--cache-dir")
            .arg(project.path().join(".cache"))
            .env("TILEBOX_API_URL", server.url())
            .output()
            .expect("runner");
    let log = stderr_of(&output);
    assert!(output.status.success(), "{log}");

    let done = wait_for_job_state(&server, &good, "completed", Duration::from_secs(10));
    assert_eq!(done["tasks"][0]["display"], "counted 7");
    let failed_task = |job: &str| {
        let failed = wait_for_job_state(&server, job, "failed", Duration::from_secs(10));
        let task = failed["tasks"][0].clone();
        assert_eq!(task["state"], "failed", "{failed}\n{log}");
        task
    };
    let decode_message = "ValidationError('Expected `int`, got `str`')";
    let task = failed_task(&wrong_type);
    assert_eq!(task["display"], format!("Count\n{decode_message}"));
    assert_eq!(task["retry_count"], 0);

    // A workflow error uses up the retries (a runner fault would not).
    let task = failed_task(&wrong_type_retried);
    assert_eq!(task["retry_count"], 1, "{task}");
    let display = task["display"].as_str().expect("display");
    let mut lines = display.lines();
    assert_eq!(lines.next(), Some("Count"), "{display}");
    assert!(
        lines.all(|line| line == decode_message),
        "every attempt failed decoding: {display}"
    );

    let task = failed_task(&not_json);
    let display = task["display"].as_str().expect("display");
    assert!(
        display.starts_with("Count\nDecodeError('JSON is malformed: "),
        "{display}"
    );
    // The runner's log reports the failure as well; that line is its only trace there.
    assert!(
        log.contains("task failed: DecodeError: JSON is malformed"),
        "{log}"
    );
}

// ---- identifiers, cycles, limits -------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identifiers_with_bad_versions_or_names_are_refused_and_nothing_is_stored() {
    let server = TestServer::start();
    let mut client = client(&server).await;
    let long_name = "n".repeat(257);
    let cases = [
        ("Leaf", "", "has version ``; expected the form vMAJOR.MINOR"),
        ("Leaf", "v1", "has version `v1`"),
        ("Leaf", "1.0", "has version `1.0`"),
        ("Leaf", "v1.0.0", "has version `v1.0.0`"),
        ("Leaf", "v1.x", "has version `v1.x`"),
        ("Leaf", "v-1.0", "has version `v-1.0`"),
        ("Leaf", "v+1.0", "has version `v+1.0`"),
        ("Leaf", "V1.0", "has version `V1.0`"),
        ("Leaf", "v1.0 ", "has version `v1.0 `"),
        (
            "Leaf",
            "v99999999999999999999.0",
            "has version `v99999999999999999999.0`",
        ),
        ("", "v1.0", "name must be 1 to 256 bytes, got 0 bytes"),
        (long_name.as_str(), "v1.0", "got 257 bytes"),
    ];
    for (name, version, message) in cases {
        let status = client
            .jobs
            .submit_job(one_task_job(name, version, b""))
            .await
            .expect_err("refused");
        assert_eq!(
            status.code(),
            tonic::Code::InvalidArgument,
            "{name:?}@{version:?}"
        );
        assert!(
            status.message().contains(message),
            "{name:?}@{version:?}: {}",
            status.message()
        );
        // A runner advertising it is refused the same way.
        let status = client
            .tasks
            .next_task(NextTaskRequest {
                computed_task: None,
                next_task_to_run: ask(name, version),
            })
            .await
            .expect_err("refused");
        assert_eq!(status.code(), tonic::Code::InvalidArgument);
        assert!(status.message().contains(message), "{}", status.message());
    }
    assert_eq!(job_count(&mut client).await, 0, "nothing was stored");

    let submit = [
        "job",
        "submit",
        "--name",
        "x",
        "--task",
        "Leaf",
        "--version",
        "1.0",
    ];
    let output = server.tilebox(&submit);
    assert_eq!(output.status.code(), Some(1), "{}", stderr_of(&output));
    let _snapshots = snapshot_settings().bind_to_scope();
    insta::assert_snapshot!("submit_with_a_bad_version", transcript(&submit, &output));
    assert_eq!(job_count(&mut client).await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dependency_cycles_are_refused_at_submission_and_fail_a_task_that_submits_them() {
    let server = TestServer::start_with(&["--long-poll-ms", "200"]);
    let mut client = client(&server).await;
    let with_groups = |groups: Vec<TaskSubmissionGroup>| {
        let mut job = one_task_job("Leaf", "v0.0", b"");
        job.tasks.as_mut().expect("tasks").task_groups = groups;
        job
    };
    let cases = [
        (
            vec![task_group(&[0], 1, b"")],
            "task group 0 depends on itself",
        ),
        (
            vec![
                task_group(&[2], 1, b""),
                task_group(&[0], 1, b""),
                task_group(&[1], 1, b""),
            ],
            "the dependencies between task groups form a cycle",
        ),
        (
            vec![
                task_group(&[], 1, b""),
                task_group(&[2], 1, b""),
                task_group(&[1], 1, b""),
            ],
            "the dependencies between task groups form a cycle",
        ),
        (
            vec![task_group(&[1], 1, b"")],
            "task group 0 depends on group 1, which does not exist",
        ),
    ];
    for (groups, message) in cases {
        let status = client
            .jobs
            .submit_job(with_groups(groups))
            .await
            .expect_err("refused");
        assert_eq!(status.code(), tonic::Code::InvalidArgument);
        assert!(
            status.message().contains(message),
            "expected {message:?}: {}",
            status.message()
        );
    }
    assert_eq!(job_count(&mut client).await, 0, "nothing was stored");

    // A task whose result submits a cycle fails, with the reason; no subtask is stored.
    let job = client
        .jobs
        .submit_job(one_task_job("Parent", "v0.0", b""))
        .await
        .expect("submit")
        .into_inner();
    let job = uuid_of_id(job.id.as_ref());
    let task = client
        .tasks
        .next_task(NextTaskRequest {
            computed_task: None,
            next_task_to_run: ask("Parent", "v0.0"),
        })
        .await
        .expect("claim")
        .into_inner()
        .next_task
        .expect("a task");
    let mut cyclic = one_task_job("Leaf", "v0.0", b"").tasks.expect("tasks");
    cyclic.task_groups = vec![task_group(&[1], 2, b""), task_group(&[0], 2, b"")];
    client
        .tasks
        .next_task(NextTaskRequest {
            computed_task: Some(ComputedTask {
                id: task.id,
                display: "Parent".into(),
                sub_tasks: Some(cyclic),
                ..ComputedTask::default()
            }),
            next_task_to_run: None,
        })
        .await
        .expect("the report is answered; the task fails instead");
    let state = get_job(&mut client, job).await;
    assert_eq!(state.state(), JobState::Failed);
    let stats = state.execution_stats.expect("stats");
    assert_eq!(stats.total_tasks, 1, "no subtask was stored");
    let tasks = client
        .jobs
        .list_job_tasks(ListJobTasksRequest {
            job_id: Some(id(job)),
            ..ListJobTasksRequest::default()
        })
        .await
        .expect("tasks")
        .into_inner()
        .page
        .expect("page")
        .tasks;
    assert_eq!(tasks[0].state(), TaskState::Failed);
    assert!(
        tasks[0].display.starts_with("Parent\nInvalidSubtasks(")
            && tasks[0].display.contains("form a cycle"),
        "{}",
        tasks[0].display
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inputs_over_the_limit_are_refused_at_submission_and_fail_a_task_that_submits_them() {
    let server = TestServer::start_with(&["--max-input-bytes", "64", "--long-poll-ms", "200"]);
    let mut client = client(&server).await;
    let status = client
        .jobs
        .submit_job(one_task_job("Leaf", "v0.0", &[b'x'; 65]))
        .await
        .expect_err("refused");
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    assert!(
        status
            .message()
            .contains("task group 0, task 0: input is 65 bytes; the limit is 64"),
        "{}",
        status.message()
    );
    // One big input among small ones refuses the whole job.
    let mut mixed = one_task_job("Leaf", "v0.0", b"1");
    mixed.tasks.as_mut().expect("tasks").task_groups[0]
        .inputs
        .push(vec![b'y'; 1000]);
    let group = &mut mixed.tasks.as_mut().expect("tasks").task_groups[0];
    for pointers in [
        &mut group.identifier_pointers,
        &mut group.cluster_slug_pointers,
        &mut group.display_pointers,
    ] {
        pointers.push(0);
    }
    group.max_retries_values.push(0);
    group.optional_values.push(false);
    let status = client.jobs.submit_job(mixed).await.expect_err("refused");
    assert!(
        status.message().contains("task 1: input is 1000 bytes"),
        "{}",
        status.message()
    );
    let big = "z".repeat(100);
    let submit = [
        "job", "submit", "--name", "big", "--task", "Leaf", "--input", &big,
    ];
    let cli = server.tilebox(&submit);
    assert_eq!(cli.status.code(), Some(1), "{}", stderr_of(&cli));
    let _snapshots = snapshot_settings().bind_to_scope();
    insta::assert_snapshot!("submit_over_the_input_limit", transcript(&submit, &cli));
    assert_eq!(job_count(&mut client).await, 0, "nothing was stored");

    // Exactly at the limit is fine.
    client
        .jobs
        .submit_job(one_task_job("Parent", "v0.0", &[b'7'; 64]))
        .await
        .expect("64 bytes are accepted");
    // A subtask over the limit fails the task that submitted it.
    let task = client
        .tasks
        .next_task(NextTaskRequest {
            computed_task: None,
            next_task_to_run: ask("Parent", "v0.0"),
        })
        .await
        .expect("claim")
        .into_inner()
        .next_task
        .expect("a task");
    let job = uuid_of_id(task.job.as_ref().and_then(|job| job.id.as_ref()));
    let oversized = one_task_job("Leaf", "v0.0", &[b'x'; 65]).tasks;
    client
        .tasks
        .next_task(NextTaskRequest {
            computed_task: Some(ComputedTask {
                id: task.id,
                display: "Parent".into(),
                sub_tasks: oversized,
                ..ComputedTask::default()
            }),
            next_task_to_run: None,
        })
        .await
        .expect("answered");
    let state = get_job(&mut client, job).await;
    assert_eq!(state.state(), JobState::Failed);
    assert_eq!(state.execution_stats.expect("stats").total_tasks, 1);
    let tasks = client
        .jobs
        .list_job_tasks(ListJobTasksRequest {
            job_id: Some(id(job)),
            ..ListJobTasksRequest::default()
        })
        .await
        .expect("tasks")
        .into_inner()
        .page
        .expect("page")
        .tasks;
    assert!(
        tasks[0]
            .display
            .contains("input is 65 bytes; the limit is 64"),
        "{}",
        tasks[0].display
    );
}

// ---- authentication --------------------------------------------------------------------------
