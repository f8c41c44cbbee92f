//! The batched work protocol (`tilebox.selfhosted.v1.WorkService`) on a real server: every
//! item of a batch succeeds or fails on its own.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use tilebox::api::selfhosted_v1::report_result::Outcome;
use tilebox::api::selfhosted_v1::{
    ExtendLeasesRequest, HandedBackTask, WorkReport, WorkRequest, WorkResponse, work_report,
};
use tilebox::api::workflows_v1::{
    ComputedTask, JobState, Task, TaskFailedRequest, TaskLeaseRequest, TaskState, TaskSubmissions,
};
use tilebox::client::Client;
use uuid::Uuid;

use crate::common::{
    RunnerProcess, TestServer, client, get_job, identifier, job_request, list_tasks, project,
    project_runner, submit, task_group, uuid_of_id, wait_for_job_state, wait_until,
};

/// Sends a `Work` call as runner `runner`.
async fn work(client: &Client, runner: &str, request: WorkRequest) -> WorkResponse {
    let mut request = tonic::Request::new(request);
    request
        .metadata_mut()
        .insert("tilebox-runner-id", runner.parse().expect("header"));
    client
        .work
        .clone()
        .work(request)
        .await
        .expect("work call")
        .into_inner()
}

fn claim(capacity: u32) -> WorkRequest {
    WorkRequest {
        capacity,
        identifiers: vec![identifier("Batch", "v1.0")],
        ..WorkRequest::default()
    }
}

fn computed(task: &Task, sub_tasks: Option<TaskSubmissions>) -> WorkReport {
    WorkReport {
        report: Some(work_report::Report::Computed(ComputedTask {
            id: task.id.clone(),
            display: "done".into(),
            sub_tasks,
            ..ComputedTask::default()
        })),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_applies_each_report_on_its_own() {
    let server = TestServer::start();
    let client = client(&server).await;
    let job = client
        .jobs
        .clone()
        .submit_job(job_request("Batch", "v1.0", 3, b"1"))
        .await
        .expect("submit")
        .into_inner();
    let job_id = uuid_of_id(job.id.as_ref());

    let claimed = work(&client, "runner-a", claim(2)).await;
    assert_eq!(claimed.tasks.len(), 2, "the capacity bounds the claim");
    assert!(claimed.suggested_idling.is_none());
    let (good, bad) = (&claimed.tasks[0], &claimed.tasks[1]);
    assert_eq!(
        good.identifier.as_ref().map(|id| id.version.as_str()),
        Some("v1.0")
    );

    // A subtask list the server refuses: an identifier pointer out of range.
    let mut invalid = task_group(&[], 1, b"2");
    invalid.identifier_pointers = vec![5];
    let invalid = TaskSubmissions {
        task_groups: vec![invalid],
        cluster_slug_lookup: vec![String::new()],
        identifier_lookup: vec![identifier("Batch", "v1.0")],
        display_lookup: vec!["Child".into()],
    };
    let unknown = tilebox::api::convert::id(Uuid::now_v7());
    let reports = vec![
        computed(good, None),
        computed(bad, Some(invalid)),
        // The same task again: stale now.
        computed(good, None),
        WorkReport {
            report: Some(work_report::Report::Failed(TaskFailedRequest {
                task_id: Some(unknown),
                display: "x".into(),
                ..TaskFailedRequest::default()
            })),
        },
        WorkReport { report: None },
    ];
    let answer = work(
        &client,
        "runner-a",
        WorkRequest {
            reports,
            ..claim(5)
        },
    )
    .await;
    let outcomes: Vec<(Outcome, TaskState)> = answer
        .results
        .iter()
        .map(|result| (result.outcome(), result.state()))
        .collect();
    assert_eq!(
        outcomes,
        [
            (Outcome::Applied, TaskState::Computed),
            (Outcome::Applied, TaskState::Failed),
            (Outcome::Stale, TaskState::Computed),
            (Outcome::Refused, TaskState::Unspecified),
            (Outcome::Refused, TaskState::Unspecified),
        ]
    );
    assert!(
        answer.results[1].message.contains("InvalidSubtasks"),
        "{:?}",
        answer.results[1]
    );
    assert!(
        answer.results[3].message.contains("does not exist"),
        "{:?}",
        answer.results[3]
    );
    // The failed task failed the job, so nothing more is handed out.
    assert!(answer.tasks.is_empty());

    let mut reader = client.clone();
    let tasks = list_tasks(&mut reader, job_id, None).await;
    let states: Vec<TaskState> = tasks.iter().map(|task| task.state()).collect();
    assert_eq!(
        states,
        [TaskState::Computed, TaskState::Failed, TaskState::Queued]
    );
    assert!(
        tasks.iter().all(|task| !task.has_children),
        "no refused subtask was stored"
    );
    assert_eq!(get_job(&mut reader, job_id).await.state(), JobState::Failed);
    server.stop();
}

/// One `Work` call as `runner-a`: `reports`, and a claim of one task of `name`.
async fn report_and_claim_one(
    client: &Client,
    name: &str,
    reports: Vec<WorkReport>,
) -> WorkResponse {
    work(
        client,
        "runner-a",
        WorkRequest {
            reports,
            capacity: 1,
            identifiers: vec![identifier(name, "v0.0")],
            ..WorkRequest::default()
        },
    )
    .await
}

fn outcomes(answer: &WorkResponse) -> Vec<(Outcome, TaskState)> {
    answer
        .results
        .iter()
        .map(|result| (result.outcome(), result.state()))
        .collect()
}

/// A task handed back unrun (a runner shutting down, a host that went down with an earlier
/// task, a replaced release) is queued again without counting anything, however often: handed
/// back 12 times, more than the 11 runner failures that fail a task, it still runs and
/// computes with no retry counted. A runner's genuine failures (`failed`, not a workflow
/// error) stay capped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_handed_back_more_often_than_the_runner_failure_cap_still_runs() {
    const HAND_BACKS: usize = 12;
    let server = TestServer::start();
    let client = client(&server).await;
    let submitted = client
        .jobs
        .clone()
        .submit_job(job_request("Patient", "v0.0", 1, b"1"))
        .await
        .expect("submit")
        .into_inner();
    let job_id = uuid_of_id(submitted.id.as_ref());
    let hand_back = |task: &Task| WorkReport {
        report: Some(work_report::Report::HandedBack(HandedBackTask {
            task_id: task.id.clone(),
            display: "Patient\nRunnerShutdown('Task was interrupted')".into(),
        })),
    };

    let mut answer = report_and_claim_one(&client, "Patient", Vec::new()).await;
    for round in 0..HAND_BACKS {
        assert_eq!(answer.tasks.len(), 1, "round {round}: {answer:?}");
        let claimed = answer.tasks[0].clone();
        assert_eq!(claimed.retry_count, 0, "round {round}");
        // The same attempt handed back twice in one call: the second is stale.
        answer = report_and_claim_one(
            &client,
            "Patient",
            vec![hand_back(&claimed), hand_back(&claimed)],
        )
        .await;
        assert_eq!(
            outcomes(&answer),
            [
                (Outcome::Applied, TaskState::Queued),
                (Outcome::Stale, TaskState::Queued)
            ],
            "round {round}"
        );
    }
    let claimed = answer.tasks.first().expect("claimed after the hand-backs");
    assert_eq!(
        claimed.display.as_deref(),
        Some("Patient\nRunnerShutdown('Task was interrupted')")
    );
    let answer = work(
        &client,
        "runner-a",
        WorkRequest {
            reports: vec![computed(claimed, None)],
            ..WorkRequest::default()
        },
    )
    .await;
    assert_eq!(outcomes(&answer), [(Outcome::Applied, TaskState::Computed)]);

    let mut reader = client.clone();
    assert_eq!(
        get_job(&mut reader, job_id).await.state(),
        JobState::Completed
    );
    let tasks = list_tasks(&mut reader, job_id, None).await;
    assert_eq!(tasks.len(), 1);
    assert_eq!(
        (
            tasks[0].state(),
            tasks[0].retry_count,
            tasks[0].display.as_str()
        ),
        (TaskState::Computed, 0, "done")
    );

    // The same protocol's runner failures are capped: the 11th fails the task.
    let submitted = client
        .jobs
        .clone()
        .submit_job(job_request("Breaking", "v0.0", 1, b"1"))
        .await
        .expect("submit")
        .into_inner();
    let job_id = uuid_of_id(submitted.id.as_ref());
    let mut answer = report_and_claim_one(&client, "Breaking", Vec::new()).await;
    let mut failures = 0;
    while let Some(claimed) = answer.tasks.first().cloned() {
        failures += 1;
        assert!(failures <= 11, "the task is handed out again and again");
        answer = report_and_claim_one(
            &client,
            "Breaking",
            vec![WorkReport {
                report: Some(work_report::Report::Failed(TaskFailedRequest {
                    task_id: claimed.id.clone(),
                    display: "Breaking\nRunnerError('cannot run it')".into(),
                    was_workflow_error: false,
                    ..TaskFailedRequest::default()
                })),
            }],
        )
        .await;
        let expected = if failures < 11 {
            TaskState::Queued
        } else {
            TaskState::Failed
        };
        assert_eq!(
            outcomes(&answer),
            [(Outcome::Applied, expected)],
            "failure {failures}"
        );
    }
    assert_eq!(failures, 11);
    assert_eq!(get_job(&mut reader, job_id).await.state(), JobState::Failed);
    let tasks = list_tasks(&mut reader, job_id, None).await;
    assert_eq!(
        (tasks[0].state(), tasks[0].retry_count),
        (TaskState::Failed, 0)
    );
    assert!(
        tasks[0]
            .display
            .ends_with("RunnerFailed('the runners could not run the task 11 times')"),
        "{}",
        tasks[0].display
    );
    server.stop();
}

/// A task whose display is at the limit (1,024 characters) that runners failed until the
/// server gave up: the reason the server appends keeps the display within the limit (the
/// head of the old display is cut), so after a job retry a real runner, whose task leaves the
/// display handed to it, reports it back and the task computes (instead of failing with
/// `InvalidDisplay`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_display_failed_by_runners_stays_within_the_limit_and_runs_clean_after_a_retry() {
    let server = TestServer::start();
    let client = client(&server).await;
    let full = "é".repeat(1024);
    let mut request = job_request("Keep", "v0.0", 1, b"");
    request.tasks.as_mut().expect("tasks").display_lookup = vec![full.clone()];
    let submitted = client
        .jobs
        .clone()
        .submit_job(request)
        .await
        .expect("submit")
        .into_inner();
    let job_id = uuid_of_id(submitted.id.as_ref());

    let mut answer = report_and_claim_one(&client, "Keep", Vec::new()).await;
    let mut failures = 0;
    while let Some(claimed) = answer.tasks.first().cloned() {
        failures += 1;
        assert!(failures <= 11, "the task is handed out again and again");
        assert_eq!(claimed.display.as_deref(), Some(full.as_str()));
        // As our runner reports it: the reason appended, cut to the limit.
        let display = tilebox::api::convert::failure_display(&full, "RunnerError('no host')");
        answer = report_and_claim_one(
            &client,
            "Keep",
            vec![WorkReport {
                report: Some(work_report::Report::Failed(TaskFailedRequest {
                    task_id: claimed.id.clone(),
                    display,
                    was_workflow_error: false,
                    ..TaskFailedRequest::default()
                })),
            }],
        )
        .await;
    }
    assert_eq!(failures, 11);
    let mut reader = client.clone();
    let tasks = list_tasks(&mut reader, job_id, None).await;
    assert_eq!(tasks[0].state(), TaskState::Failed);
    let stored = tasks[0].display.clone();
    assert_eq!(stored.chars().count(), 1024, "{stored}");
    assert!(
        stored.ends_with("é\nRunnerFailed('the runners could not run the task 11 times')"),
        "{stored}"
    );

    let job = job_id.to_string();
    server.tilebox(&["--json", "job", "retry", &job]);
    let project = project(
        "keep",
        "from tilebox.workflows import ExecutionContext, Runner, Task\n\n\
         class Keep(Task):\n    def execute(self, context: ExecutionContext) -> None:\n        \
         pass\n\nrunner = Runner(tasks=[Keep])\n",
    );
    let output = project_runner(
        server.url(),
        project.path(),
        &["-n", "1", "--stop-when-idling"],
    )
    .output()
    .expect("runner");
    let log = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{log}");
    let done = wait_for_job_state(&server, &job, "completed", Duration::from_secs(10));
    assert_eq!(done["tasks"][0]["state"], "computed", "{done}\n{log}");
    assert_eq!(done["tasks"][0]["display"], stored.as_str(), "{log}");
    server.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leases_are_extended_in_one_call_only_for_the_claimant() {
    let server = TestServer::start();
    let client = client(&server).await;
    client
        .jobs
        .clone()
        .submit_job(job_request("Batch", "v1.0", 2, b"1"))
        .await
        .expect("submit");
    let mine = work(&client, "runner-a", claim(1)).await.tasks;
    let theirs = work(&client, "runner-b", claim(1)).await.tasks;
    let lease = |task: &Task| TaskLeaseRequest {
        task_id: task.id.clone(),
        requested_lease: Some(prost_types::Duration {
            seconds: 40,
            nanos: 0,
        }),
    };
    let mut request = tonic::Request::new(ExtendLeasesRequest {
        leases: vec![lease(&mine[0]), lease(&theirs[0])],
    });
    request
        .metadata_mut()
        .insert("tilebox-runner-id", "runner-a".parse().expect("header"));
    let granted = client
        .work
        .clone()
        .extend_leases(request)
        .await
        .expect("extend")
        .into_inner()
        .leases;
    let seconds: Vec<i64> = granted
        .iter()
        .map(|lease| lease.lease.map_or(0, |lease| lease.seconds))
        .collect();
    assert_eq!(seconds, [40, 0], "only runner-a's own task is extended");
    server.stop();
}

/// The official SDK's runner (`NextTask`) and ours (`Work`) share one job: every task is
/// executed and computed exactly once, and both runners take part.
#[test]
fn one_job_worked_by_the_official_runner_and_ours_computes_every_task_once() {
    const COUNT: usize = 80;
    let server = TestServer::start();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/interop/mark_sdk.py");
    let python = crate::common::sdk_python();
    let source = Command::new(&python)
        .arg(&script)
        .arg("source")
        .output()
        .expect("the task source");
    let tasks = String::from_utf8(source.stdout).expect("UTF-8");
    let project = project(
        "mark",
        &format!(
            "{tasks}\nfrom tilebox.workflows import Runner\nrunner = Runner(tasks=[MarkFanOut, Mark])\n"
        ),
    );
    let marker = server.temp_dir().join("marker");
    let gate = server.temp_dir().join("gate");
    // A one-field task is sent as the bare value, as the SDK encodes it.
    let id = submit(&server, "MarkFanOut", &COUNT.to_string());

    // The official runner starts first and holds its first task until ours has one too.
    let official = Command::new(&python)
        .arg(&script)
        .arg("run")
        .env("TILEBOX_API_URL", server.url())
        .env("MARKER", &marker)
        .env("GATE", &gate)
        .env("MARK_AS", "official")
        .env_remove("TILEBOX_API_KEY")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the official runner");
    let marks = || {
        fs_err::read_to_string(&marker)
            .unwrap_or_default()
            .lines()
            .map(str::to_string)
            .collect::<Vec<_>>()
    };
    wait_until(
        "the official runner to run a task",
        Duration::from_secs(120),
        || !marks().is_empty(),
    )
    .unwrap_or_else(|timed_out| panic!("{timed_out}"));
    let log = project.path().join("runner.log");
    let mut ours = RunnerProcess::spawn(
        project_runner(
            server.url(),
            project.path(),
            &["-n", "1", "--stop-when-idling"],
        )
        .env("MARKER", &marker)
        .env("GATE", &gate)
        .env("MARK_AS", "ours"),
        log,
    );
    wait_until("our runner to run a task", Duration::from_secs(120), || {
        marks().iter().any(|line| line.ends_with("ours"))
    })
    .unwrap_or_else(|timed_out| panic!("{timed_out}\n{}", ours.log()));
    fs_err::write(&gate, "").expect("open the gate");
    ours.wait_for_success(Duration::from_secs(120));
    let official = official
        .wait_with_output()
        .expect("the official runner ends");
    assert!(
        official.status.success(),
        "{}",
        String::from_utf8_lossy(&official.stderr)
    );

    let done = wait_for_job_state(&server, &id, "completed", Duration::from_secs(10));
    assert_eq!(
        done["execution_stats"]["tasks_by_state"]["computed"],
        COUNT + 1
    );
    let marks = marks();
    let mut indices: Vec<usize> = marks
        .iter()
        .map(|line| {
            line.split(' ')
                .next()
                .and_then(|index| index.parse().ok())
                .expect("an index")
        })
        .collect();
    indices.sort_unstable();
    assert_eq!(
        indices,
        (0..COUNT).collect::<Vec<_>>(),
        "each task ran exactly once"
    );
    for runner in ["official", "ours"] {
        assert!(
            marks.iter().any(|line| line.ends_with(runner)),
            "{runner} ran no task: {marks:?}"
        );
    }
    let children = done["tasks"][0]["children"].as_array().expect("children");
    assert!(children.iter().all(|child| child["retry_count"] == 0));
}
