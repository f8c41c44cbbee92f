//! Fencing from the first claim: through the real server, only a task's claimant may report
//! it or extend its lease, over every path (the `Work` batch, `NextTask`, `TaskFailed`,
//! `ExtendTaskLease`, `ExtendLeases`); anyone else's report is stale and their extension
//! answers a lease of 0, before any lease was ever lost.

use tilebox::api::selfhosted_v1::report_result::Outcome;
use tilebox::api::selfhosted_v1::{
    ExtendLeasesRequest, HandedBackTask, WorkReport, WorkRequest, work_report,
};
use tilebox::api::workflows_v1::{
    ComputedTask, JobState, NextTaskRequest, Task, TaskFailedRequest, TaskLeaseRequest, TaskState,
    TaskSubmissions,
};
use tilebox::client::Client;

use crate::common::{
    TestServer, client, get_job, identifier, job_request, list_tasks, task_group, uuid_of_id,
};

/// `message` as a request from runner `runner` (the `tilebox-runner-id` header), or from a
/// caller without a runner id (`None`: its host is its identity).
fn from<T>(message: T, runner: Option<&str>) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    if let Some(runner) = runner {
        request
            .metadata_mut()
            .insert("tilebox-runner-id", runner.parse().expect("header"));
    }
    request
}

/// One `Child` subtask with `input`.
fn subtask(input: &[u8]) -> Option<TaskSubmissions> {
    Some(TaskSubmissions {
        task_groups: vec![task_group(&[], 1, input)],
        cluster_slug_lookup: vec![String::new()],
        identifier_lookup: vec![identifier("Child", "v1.0")],
        display_lookup: vec!["Child".into()],
    })
}

fn computed(task: &Task, sub_tasks: Option<TaskSubmissions>) -> ComputedTask {
    ComputedTask {
        id: task.id.clone(),
        display: "done".into(),
        sub_tasks,
        ..ComputedTask::default()
    }
}

fn lease(task: &Task) -> TaskLeaseRequest {
    TaskLeaseRequest {
        task_id: task.id.clone(),
        requested_lease: Some(prost_types::Duration {
            seconds: 40,
            nanos: 0,
        }),
    }
}

/// The lease `runner` is granted for `task` by `ExtendTaskLease` and by `ExtendLeases`.
async fn extensions(client: &Client, task: &Task, runner: Option<&str>) -> (i64, i64) {
    let single = client
        .tasks
        .clone()
        .extend_task_lease(from(lease(task), runner))
        .await
        .expect("extend task lease")
        .into_inner();
    let batch = client
        .work
        .clone()
        .extend_leases(from(
            ExtendLeasesRequest {
                leases: vec![lease(task)],
            },
            runner,
        ))
        .await
        .expect("extend leases")
        .into_inner();
    assert_eq!(batch.leases.len(), 1);
    let seconds = |lease: Option<&prost_types::Duration>| lease.map_or(-1, |lease| lease.seconds);
    (
        seconds(single.lease.as_ref()),
        seconds(batch.leases[0].lease.as_ref()),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_claimant_reports_or_extends_from_the_first_claim() {
    let server = TestServer::start();
    let mut client = client(&server).await;
    let job = client
        .jobs
        .clone()
        .submit_job(job_request("Fenced", "v1.0", 1, b"1"))
        .await
        .expect("submit")
        .into_inner();
    let job_id = uuid_of_id(job.id.as_ref());
    let claim = WorkRequest {
        capacity: 1,
        identifiers: vec![identifier("Fenced", "v1.0")],
        ..WorkRequest::default()
    };
    let claimed = client
        .work
        .clone()
        .work(from(claim, Some("runner-a")))
        .await
        .expect("claim")
        .into_inner()
        .tasks;
    assert_eq!(claimed.len(), 1, "runner-a claims the task");
    let task = &claimed[0];

    // Runner b, and a caller without a runner id, are not the claimant.
    for other in [Some("runner-b"), None] {
        let reports = vec![
            WorkReport {
                report: Some(work_report::Report::Computed(computed(task, subtask(b"2")))),
            },
            WorkReport {
                report: Some(work_report::Report::Failed(TaskFailedRequest {
                    task_id: task.id.clone(),
                    display: "Fenced\nValueError('not mine')".into(),
                    was_workflow_error: true,
                    ..TaskFailedRequest::default()
                })),
            },
            WorkReport {
                report: Some(work_report::Report::HandedBack(HandedBackTask {
                    task_id: task.id.clone(),
                    display: "Fenced\nRunnerShutdown('not mine')".into(),
                })),
            },
        ];
        let answer = client
            .work
            .clone()
            .work(from(
                WorkRequest {
                    reports,
                    ..WorkRequest::default()
                },
                other,
            ))
            .await
            .expect("work")
            .into_inner();
        let outcomes: Vec<(Outcome, TaskState)> = answer
            .results
            .iter()
            .map(|result| (result.outcome(), result.state()))
            .collect();
        assert_eq!(
            outcomes,
            [(Outcome::Stale, TaskState::Running); 3],
            "{other:?}'s Work reports are stale"
        );

        client
            .tasks
            .clone()
            .next_task(from(
                NextTaskRequest {
                    computed_task: Some(computed(task, subtask(b"3"))),
                    next_task_to_run: None,
                },
                other,
            ))
            .await
            .expect("next task");
        let failed = client
            .tasks
            .clone()
            .task_failed(from(
                TaskFailedRequest {
                    task_id: task.id.clone(),
                    display: "Fenced\nValueError('not mine')".into(),
                    was_workflow_error: true,
                    ..TaskFailedRequest::default()
                },
                other,
            ))
            .await
            .expect("task failed")
            .into_inner();
        assert_eq!(failed.state(), TaskState::Running, "{other:?}: stale");
        assert_eq!(
            extensions(&client, task, other).await,
            (0, 0),
            "{other:?}'s extensions answer a lease of 0"
        );

        let tasks = list_tasks(&mut client, job_id, None).await;
        assert_eq!(tasks.len(), 1, "no subtask was added: {tasks:?}");
        assert_eq!(
            (tasks[0].state(), tasks[0].retry_count),
            (TaskState::Running, 0),
            "{other:?} changed nothing"
        );
        assert_eq!(
            get_job(&mut client, job_id).await.state(),
            JobState::Running
        );
    }

    // The claimant extends and reports.
    let (single, batch) = extensions(&client, task, Some("runner-a")).await;
    assert!(single > 0 && batch > 0, "runner-a's extensions are granted");
    client
        .tasks
        .clone()
        .next_task(from(
            NextTaskRequest {
                computed_task: Some(computed(task, None)),
                next_task_to_run: None,
            },
            Some("runner-a"),
        ))
        .await
        .expect("next task");
    assert_eq!(
        get_job(&mut client, job_id).await.state(),
        JobState::Completed
    );
    server.stop();
}
