//! Submission limits: job names, trace parents, displays, cluster slugs and tasks per
//! submission. Each refusal says what, the value and the limit, and stores nothing.

use super::*;
use crate::common::{TestServer, ask, client, job_request, list_tasks, task_group, uuid_of_id};
use tilebox::api::workflows_v1::{
    ComputedTask, NextTaskRequest, SubmitJobRequest, TaskState, TaskSubmissions,
};

const TRACE: &str = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn submissions_over_a_limit_are_refused_with_the_value_and_the_limit_and_nothing_is_stored() {
    let server = TestServer::start();
    let mut client = client(&server).await;
    let with = |change: &dyn Fn(&mut SubmitJobRequest)| {
        let mut request = job_request("Leaf", "v1.0", 1, b"{}");
        change(&mut request);
        request
    };
    let huge_slug = |request: &mut SubmitJobRequest| {
        let tasks = request.tasks.as_mut().expect("tasks");
        tasks.task_groups = vec![task_group(&[], 2000, b"{}")];
        tasks.cluster_slug_lookup = vec!["c".repeat(10 << 20)];
    };
    let huge_version = |request: &mut SubmitJobRequest| {
        let tasks = request.tasks.as_mut().expect("tasks");
        tasks.task_groups = vec![task_group(&[], 2000, b"{}")];
        tasks.identifier_lookup[0].version = format!("v{}1.0", "0".repeat(10 << 20));
    };
    let cases: Vec<(&str, SubmitJobRequest, &str)> = vec![
        (
            "a 257-byte job name",
            with(&|request| request.job_name = "n".repeat(257)),
            "job_name is 257 bytes long; the limit is 256",
        ),
        (
            "a 300-byte trace parent",
            with(&|request| request.trace_parent = format!("{TRACE}-{}", "0".repeat(244))),
            "trace_parent is 300 bytes long; the limit is 256",
        ),
        (
            "a non-ASCII trace parent",
            with(&|request| {
                request.trace_parent =
                    "00-0af7651916cd43dd8448eb211c8031é-b7ad6b7169203331-01".into()
            }),
            "is not a W3C traceparent (00-<32 hex>-<16 hex>-<2 hex>, lowercase): it holds non-ASCII characters",
        ),
        (
            "an uppercase trace parent",
            with(&|request| request.trace_parent = TRACE.to_uppercase()),
            "the trace id must be 32 lowercase hex digits",
        ),
        (
            "an all-zero trace id",
            with(&|request| {
                request.trace_parent =
                    "00-00000000000000000000000000000000-b7ad6b7169203331-01".into()
            }),
            "the trace id must not be all zeros",
        ),
        (
            "a trace parent that is not one",
            with(&|request| request.trace_parent = "hello".into()),
            "it needs four fields separated by `-`",
        ),
        (
            "a 1,025-character display",
            with(&|request| {
                request.tasks.as_mut().expect("tasks").display_lookup = vec!["é".repeat(1025)]
            }),
            "display name 0 is 1025 characters long; the limit is 1024",
        ),
        (
            "a 10 MB cluster slug under 2,000 tasks",
            with(&huge_slug),
            "cluster slug 0 is 10485760 bytes long; the limit is 100",
        ),
        (
            "a 10 MB version under 2,000 tasks",
            with(&huge_version),
            "task identifier `Leaf` has a version of 10485764 bytes (`v000000000000000…`); the limit is 64",
        ),
    ];
    for (what, request, message) in cases {
        let status = client.jobs.submit_job(request).await.expect_err(what);
        assert_eq!(status.code(), tonic::Code::InvalidArgument, "{what}");
        assert!(
            status.message().contains(message),
            "{what}: {}",
            status.message()
        );
        assert!(
            status.message().len() < 1024,
            "{what}: the value is not echoed in full"
        );
    }
    assert_eq!(job_count(&mut client).await, 0, "nothing was stored");

    // What the official SDK sends passes: flags 03, and no trace parent at all; a display of
    // exactly 1,024 characters and a 256-byte name too.
    for request in [
        with(&|request| request.trace_parent = TRACE.replace("-01", "-03")),
        with(&|request| request.trace_parent = String::new()),
        with(&|request| {
            request.job_name = "n".repeat(256);
            request.tasks.as_mut().expect("tasks").display_lookup = vec!["é".repeat(1024)];
        }),
    ] {
        client.jobs.submit_job(request).await.expect("accepted");
    }
    assert_eq!(job_count(&mut client).await, 3);
    server.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn too_many_tasks_are_refused_at_submit_and_fail_a_task_that_submits_them() {
    let server =
        TestServer::start_with(&["--max-tasks-per-submission", "5", "--long-poll-ms", "200"]);
    let mut client = client(&server).await;
    let status = client
        .jobs
        .submit_job(job_request("Leaf", "v1.0", 6, b"{}"))
        .await
        .expect_err("six tasks");
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    assert!(
        status
            .message()
            .contains("the submission holds 6 tasks; the limit is 5"),
        "{}",
        status.message()
    );
    assert_eq!(job_count(&mut client).await, 0, "nothing was stored");

    // A task whose execution submits six subtasks fails with the reason; none is stored.
    let job = client
        .jobs
        .submit_job(job_request("Leaf", "v1.0", 5, b"{}"))
        .await
        .expect("five tasks")
        .into_inner();
    let job = uuid_of_id(job.id.as_ref());
    let task = client
        .tasks
        .next_task(NextTaskRequest {
            computed_task: None,
            next_task_to_run: ask("Leaf", "v1.0"),
        })
        .await
        .expect("claim")
        .into_inner()
        .next_task
        .expect("a task");
    let subtasks = |count| TaskSubmissions {
        task_groups: vec![task_group(&[], count, b"{}")],
        cluster_slug_lookup: vec![String::new()],
        identifier_lookup: vec![crate::common::identifier("Leaf", "v1.0")],
        display_lookup: vec!["Leaf".into()],
    };
    client
        .tasks
        .next_task(NextTaskRequest {
            computed_task: Some(ComputedTask {
                id: task.id.clone(),
                display: "Fan".into(),
                sub_tasks: Some(subtasks(6)),
                ..ComputedTask::default()
            }),
            next_task_to_run: None,
        })
        .await
        .expect("the report is taken");
    let task_id = uuid_of_id(task.id.as_ref());
    let tasks = list_tasks(&mut client, job, None).await;
    assert_eq!(tasks.len(), 5, "no subtask was stored");
    let failed = tasks
        .iter()
        .find(|summary| uuid_of_id(summary.id.as_ref()) == task_id)
        .expect("the task");
    assert_eq!(failed.state, TaskState::Failed as i32);
    assert!(
        failed
            .display
            .contains("the submission holds 6 tasks; the limit is 5"),
        "{}",
        failed.display
    );
    server.stop();
}
