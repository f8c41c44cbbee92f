//! Scoped API keys: `tilebox server keys` writes the keys file; the server refuses what a
//! key's scope does not allow (every refusal is checked), picks up revocations and rotations
//! without a restart, and the official SDK runs tasks with a runner key and queries with a
//! read-only key.

use std::time::Duration;

use serde::Deserialize;
use tilebox::api::otlp::collector::logs::v1::ExportLogsServiceRequest;
use tilebox::api::otlp::collector::trace::v1::ExportTraceServiceRequest;
use tilebox::api::selfhosted_v1::{
    ExtendLeasesRequest, UploadArtifactRequest, WatchDeploymentsRequest, WorkReport, WorkRequest,
    work_report,
};
use tilebox::api::workflows_v1::{
    CancelJobRequest, ComputedTask, CreateClusterRequest, CreateWorkflowRequest,
    DeleteClusterRequest, DeleteWorkflowRequest, DeployWorkflowReleaseRequest, GetClusterRequest,
    GetJobRequest, GetJobStateCountsRequest, ListClustersRequest, ListJobTasksRequest,
    ListWorkflowsRequest, NextTaskRequest, NextTaskToRun, PublishWorkflowReleaseRequest,
    QueryJobLogsRequest, QueryJobsRequest, RetryJobRequest, Task, TaskFailedRequest,
    TaskLeaseRequest, UndeployWorkflowReleaseRequest, UnpublishWorkflowReleaseRequest,
    UpdateClusterRequest, UpdateWorkflowRequest,
};
use tilebox::client::Client;
use uuid::Uuid;

use crate::common::{
    KeysFile, TestServer, block_on, identifier, job_request, json_of, stderr_of, tilebox,
    uuid_of_id, wait_until,
};

/// How long a change of the keys file may take to reach the server (it checks twice a
/// second).
const RELOAD_DEADLINE: Duration = Duration::from_secs(5);

async fn connect(server: &TestServer, key: &str) -> Client {
    Client::connect(server.url(), Some(key))
        .await
        .expect("client")
}

/// Asserts `result` is PERMISSION_DENIED naming `key` and saying `what`.
#[track_caller]
fn assert_denied<T: std::fmt::Debug>(
    call: &str,
    result: Result<tonic::Response<T>, tonic::Status>,
    key: &str,
    what: &str,
) {
    let status = result.expect_err(&format!("{call} was accepted"));
    assert_eq!(
        status.code(),
        tonic::Code::PermissionDenied,
        "{call}: {status:?}"
    );
    assert!(
        status.message().contains(&format!("key `{key}`")) && status.message().contains(what),
        "{call}: the refusal names neither the key `{key}` nor `{what}`: {}",
        status.message()
    );
}

fn ask_on(cluster: &str) -> Option<NextTaskToRun> {
    Some(NextTaskToRun {
        cluster_slug: cluster.into(),
        identifiers: vec![identifier("Scoped", "v1.0")],
    })
}

fn job_on(cluster: &str) -> tilebox::api::workflows_v1::SubmitJobRequest {
    let mut request = job_request("Scoped", "v1.0", 1, b"{}");
    if let Some(tasks) = request.tasks.as_mut() {
        tasks.cluster_slug_lookup = vec![cluster.into()];
    }
    request
}

async fn claim(client: &Client, cluster: &str) -> Task {
    client
        .tasks
        .clone()
        .next_task(NextTaskRequest {
            next_task_to_run: ask_on(cluster),
            computed_task: None,
        })
        .await
        .expect("claim")
        .into_inner()
        .next_task
        .expect("a task to claim")
}

/// A server with clusters `gpu` and `cpu`, an admin key, a runner key of `gpu` and a
/// read-only key.
struct Fixture {
    keys: KeysFile,
    server: TestServer,
    admin: String,
    runner: String,
    reader: String,
}

fn fixture() -> Fixture {
    let keys = KeysFile::new();
    let admin = keys.create("boss", "admin", &[]);
    let runner = keys.create("gpu-runner", "runner", &["gpu"]);
    let reader = keys.create("dashboard", "read-only", &[]);
    let server = TestServer::start_with(&["--keys-file", keys.path()]);
    block_on(async {
        let admin = connect(&server, &admin).await;
        for slug in ["gpu", "cpu"] {
            admin
                .workflows
                .clone()
                .create_cluster(CreateClusterRequest {
                    name: slug.into(),
                    slug: slug.into(),
                    ..CreateClusterRequest::default()
                })
                .await
                .expect("admin creates a cluster");
        }
    });
    Fixture {
        keys,
        server,
        admin,
        runner,
        reader,
    }
}

#[test]
fn keys_are_created_listed_rotated_and_revoked_from_the_cli_without_secrets_in_the_file() {
    let keys = KeysFile::new();
    let secret = keys.create("ci", "runner", &["gpu", "cpu"]);
    assert!(
        secret.starts_with("tbk_") && secret.len() == 4 + 64,
        "{secret}"
    );
    let other = keys.create("ops", "admin", &[]);
    assert_ne!(secret, other);
    let file = fs_err::read_to_string(keys.path()).expect("keys file");
    assert!(!file.contains(&secret[4..]), "the keys file holds a secret");

    let listed = keys.list();
    assert_eq!(listed[0]["name"], "ci");
    assert_eq!(listed[0]["scope"], "runner");
    assert_eq!(listed[0]["clusters"], serde_json::json!(["gpu", "cpu"]));
    assert!(
        listed[0]["created_at"]
            .as_str()
            .is_some_and(|at| at.ends_with('Z'))
    );
    assert_eq!(listed[1]["name"], "ops");
    let text = listed.to_string();
    assert!(
        !text.contains("secret") && !text.contains("sha256"),
        "{text}"
    );

    // A runner key without clusters, a second key of the same name: refused, file unchanged.
    let output = tilebox(&[
        "server",
        "keys",
        "create",
        "--keys-file",
        keys.path(),
        "--name",
        "lost",
        "--scope",
        "runner",
    ]);
    assert_eq!(output.status.code(), Some(1));
    assert!(
        stderr_of(&output).contains("has scope `runner` but no cluster"),
        "{}",
        stderr_of(&output)
    );
    let output = tilebox(&[
        "server",
        "keys",
        "create",
        "--keys-file",
        keys.path(),
        "--name",
        "ci",
        "--scope",
        "admin",
    ]);
    assert_eq!(output.status.code(), Some(1));
    assert!(
        stderr_of(&output).contains("key `ci` already exists"),
        "{}",
        stderr_of(&output)
    );

    let rotated = keys.run("rotate", "ci");
    assert_eq!(rotated["scope"], "runner");
    assert_ne!(rotated["secret"], secret.as_str());
    assert_eq!(keys.run("revoke", "ci")["revoked"], true);
    let listed = keys.list();
    assert_eq!(listed.as_array().map(Vec::len), Some(1));
    assert_eq!(listed[0]["name"], "ops");
    let output = tilebox(&[
        "server",
        "keys",
        "revoke",
        "--keys-file",
        keys.path(),
        "--name",
        "ci",
    ]);
    assert_eq!(output.status.code(), Some(1));
    assert!(stderr_of(&output).contains("no key named `ci`"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_runner_key_serves_its_clusters_and_is_refused_everything_else() {
    let fixture = fixture();
    let server = &fixture.server;
    let admin = connect(server, &fixture.admin).await;
    let runner = connect(server, &fixture.runner).await;
    let key = "gpu-runner";

    let gpu_job = admin
        .jobs
        .clone()
        .submit_job(job_on("gpu"))
        .await
        .expect("submit")
        .into_inner();
    admin
        .jobs
        .clone()
        .submit_job(job_on("cpu"))
        .await
        .expect("submit");
    admin
        .jobs
        .clone()
        .submit_job(job_on("cpu"))
        .await
        .expect("submit");

    // Claims: its cluster yes, another no (NextTask and Work).
    assert_denied(
        "NextTask on cpu",
        runner
            .tasks
            .clone()
            .next_task(NextTaskRequest {
                next_task_to_run: ask_on("cpu"),
                computed_task: None,
            })
            .await,
        key,
        "claim tasks of cluster `cpu`",
    );
    assert_denied(
        "Work claiming on cpu",
        runner
            .work
            .clone()
            .work(WorkRequest {
                capacity: 1,
                cluster_slug: "cpu".into(),
                identifiers: vec![identifier("Scoped", "v1.0")],
                ..WorkRequest::default()
            })
            .await,
        key,
        "claim tasks of cluster `cpu`",
    );
    assert_denied(
        "NextTask on the default cluster",
        runner
            .tasks
            .clone()
            .next_task(NextTaskRequest {
                next_task_to_run: ask_on(""),
                computed_task: None,
            })
            .await,
        key,
        "cluster `default`",
    );
    let own = claim(&runner, "gpu").await;
    assert_eq!(
        uuid_of_id(own.job.as_ref().and_then(|job| job.id.as_ref())),
        uuid_of_id(gpu_job.id.as_ref())
    );

    // Another cluster's tasks (claimed by the admin): no report, no extension, either protocol.
    let foreign = claim(&admin, "cpu").await;
    let foreign_id = foreign.id.clone();
    assert_denied(
        "TaskFailed of a cpu task",
        runner
            .tasks
            .clone()
            .task_failed(TaskFailedRequest {
                task_id: foreign_id.clone(),
                display: "x".into(),
                ..TaskFailedRequest::default()
            })
            .await,
        key,
        "report tasks of cluster `cpu`",
    );
    assert_denied(
        "NextTask reporting a cpu task computed",
        runner
            .tasks
            .clone()
            .next_task(NextTaskRequest {
                computed_task: Some(ComputedTask {
                    id: foreign_id.clone(),
                    display: "x".into(),
                    ..ComputedTask::default()
                }),
                next_task_to_run: ask_on("gpu"),
            })
            .await,
        key,
        "report tasks of cluster `cpu`",
    );
    assert_denied(
        "Work reporting a cpu task",
        runner
            .work
            .clone()
            .work(WorkRequest {
                reports: vec![WorkReport {
                    report: Some(work_report::Report::Computed(ComputedTask {
                        id: foreign_id.clone(),
                        display: "x".into(),
                        ..ComputedTask::default()
                    })),
                }],
                ..WorkRequest::default()
            })
            .await,
        key,
        "report tasks of cluster `cpu`",
    );
    assert_denied(
        "ExtendTaskLease of a cpu task",
        runner
            .tasks
            .clone()
            .extend_task_lease(TaskLeaseRequest {
                task_id: foreign_id.clone(),
                requested_lease: None,
            })
            .await,
        key,
        "extend task leases of cluster `cpu`",
    );
    assert_denied(
        "ExtendLeases of a cpu task",
        runner
            .work
            .clone()
            .extend_leases(ExtendLeasesRequest {
                leases: vec![TaskLeaseRequest {
                    task_id: foreign_id.clone(),
                    requested_lease: None,
                }],
            })
            .await,
        key,
        "extend task leases of cluster `cpu`",
    );
    // The admin's claim is untouched: it still completes the task.
    admin
        .tasks
        .clone()
        .next_task(NextTaskRequest {
            computed_task: Some(ComputedTask {
                id: foreign_id,
                display: "done".into(),
                ..ComputedTask::default()
            }),
            next_task_to_run: None,
        })
        .await
        .expect("the admin reports its claim");

    // Writes of every other kind.
    assert_denied(
        "SubmitJob",
        runner.jobs.clone().submit_job(job_on("gpu")).await,
        key,
        "may not submit jobs",
    );
    let job = gpu_job.id.clone();
    assert_denied(
        "CancelJob",
        runner
            .jobs
            .clone()
            .cancel_job(CancelJobRequest {
                job_id: job.clone(),
            })
            .await,
        key,
        "may not retry or cancel jobs",
    );
    assert_denied(
        "RetryJob",
        runner
            .jobs
            .clone()
            .retry_job(RetryJobRequest {
                job_id: job.clone(),
            })
            .await,
        key,
        "may not retry or cancel jobs",
    );
    assert_denied(
        "PublishWorkflowRelease",
        runner
            .workflows
            .clone()
            .publish_workflow_release(PublishWorkflowReleaseRequest::default())
            .await,
        key,
        "may not publish",
    );
    assert_denied(
        "DeployWorkflowRelease",
        runner
            .workflows
            .clone()
            .deploy_workflow_release(DeployWorkflowReleaseRequest::default())
            .await,
        key,
        "may not deploy",
    );
    assert_denied(
        "CreateCluster",
        runner
            .workflows
            .clone()
            .create_cluster(CreateClusterRequest {
                name: "mine".into(),
                ..CreateClusterRequest::default()
            })
            .await,
        key,
        "may not create, update or delete clusters",
    );
    assert_denied(
        "CreateWorkflow",
        runner
            .workflows
            .clone()
            .create_workflow(CreateWorkflowRequest::default())
            .await,
        key,
        "may not create, update or delete workflows",
    );
    assert_denied(
        "UploadArtifact",
        runner
            .artifacts
            .clone()
            .upload_artifact(tokio_stream::iter(vec![UploadArtifactRequest::default()]))
            .await,
        key,
        "may not upload artifacts",
    );
    // Reads outside its scope or clusters.
    assert_denied(
        "GetJob",
        runner
            .jobs
            .clone()
            .get_job(GetJobRequest {
                job_id: job.clone(),
            })
            .await,
        key,
        "may not read jobs",
    );
    assert_denied(
        "GetCluster cpu",
        runner
            .workflows
            .clone()
            .get_cluster(GetClusterRequest {
                cluster_slug: "cpu".into(),
            })
            .await,
        key,
        "cluster `cpu`",
    );
    assert_denied(
        "WatchDeployments cpu",
        runner
            .deployments
            .clone()
            .watch_deployments(WatchDeploymentsRequest {
                cluster_slug: "cpu".into(),
            })
            .await,
        key,
        "watch deployments of cluster `cpu`",
    );

    // What a runner needs works: its cluster, deployments, telemetry, its own task.
    runner
        .workflows
        .clone()
        .get_cluster(GetClusterRequest {
            cluster_slug: "gpu".into(),
        })
        .await
        .expect("GetCluster gpu");
    let listed = runner
        .workflows
        .clone()
        .list_clusters(ListClustersRequest::default())
        .await
        .expect("ListClusters")
        .into_inner();
    let slugs: Vec<_> = listed
        .clusters
        .iter()
        .map(|cluster| cluster.slug.as_str())
        .collect();
    assert_eq!(
        slugs,
        ["gpu"],
        "a runner key lists the clusters it serves only"
    );
    runner
        .deployments
        .clone()
        .watch_deployments(WatchDeploymentsRequest {
            cluster_slug: "gpu".into(),
        })
        .await
        .expect("watch gpu");
    runner
        .logs
        .clone()
        .export(ExportLogsServiceRequest::default())
        .await
        .expect("export logs");
    runner
        .traces
        .clone()
        .export(ExportTraceServiceRequest::default())
        .await
        .expect("export spans");
    runner
        .tasks
        .clone()
        .extend_task_lease(TaskLeaseRequest {
            task_id: own.id.clone(),
            requested_lease: None,
        })
        .await
        .expect("extend its own lease");
    runner
        .tasks
        .clone()
        .next_task(NextTaskRequest {
            computed_task: Some(ComputedTask {
                id: own.id.clone(),
                display: "done".into(),
                ..ComputedTask::default()
            }),
            next_task_to_run: None,
        })
        .await
        .expect("report its own task");
    let job = admin
        .jobs
        .clone()
        .get_job(GetJobRequest {
            job_id: gpu_job.id.clone(),
        })
        .await
        .expect("get job")
        .into_inner();
    assert_eq!(job.state(), tilebox::api::workflows_v1::JobState::Completed);
    drop(fixture.keys);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_only_key_reads_everything_and_writes_nothing() {
    let fixture = fixture();
    let server = &fixture.server;
    let admin = connect(server, &fixture.admin).await;
    let reader = connect(server, &fixture.reader).await;
    let key = "dashboard";
    let job = admin
        .jobs
        .clone()
        .submit_job(job_on("cpu"))
        .await
        .expect("submit")
        .into_inner()
        .id;
    let task = claim(&admin, "cpu").await.id;

    // Reads.
    reader
        .jobs
        .clone()
        .get_job(GetJobRequest {
            job_id: job.clone(),
        })
        .await
        .expect("GetJob");
    reader
        .jobs
        .clone()
        .query_jobs(QueryJobsRequest::default())
        .await
        .expect("QueryJobs");
    reader
        .jobs
        .clone()
        .list_job_tasks(ListJobTasksRequest {
            job_id: job.clone(),
            ..ListJobTasksRequest::default()
        })
        .await
        .expect("ListJobTasks");
    reader
        .jobs
        .clone()
        .get_job_state_counts(GetJobStateCountsRequest::default())
        .await
        .expect("GetJobStateCounts");
    reader
        .telemetry
        .clone()
        .query_job_logs(QueryJobLogsRequest {
            job_id: job.clone(),
            ..QueryJobLogsRequest::default()
        })
        .await
        .expect("QueryJobLogs");
    let clusters = reader
        .workflows
        .clone()
        .list_clusters(ListClustersRequest::default())
        .await
        .expect("ListClusters")
        .into_inner();
    assert_eq!(
        clusters.clusters.len(),
        3,
        "a read-only key sees every cluster"
    );
    reader
        .workflows
        .clone()
        .get_cluster(GetClusterRequest {
            cluster_slug: "cpu".into(),
        })
        .await
        .expect("GetCluster");
    reader
        .workflows
        .clone()
        .list_workflows(ListWorkflowsRequest::default())
        .await
        .expect("ListWorkflows");

    // Every write.
    macro_rules! denied {
        ($call:literal, $future:expr, $what:literal) => {
            assert_denied($call, $future.await, key, $what)
        };
    }
    denied!(
        "SubmitJob",
        reader.jobs.clone().submit_job(job_on("cpu")),
        "may not submit jobs"
    );
    denied!(
        "CancelJob",
        reader.jobs.clone().cancel_job(CancelJobRequest {
            job_id: job.clone()
        }),
        "may not retry or cancel jobs"
    );
    denied!(
        "RetryJob",
        reader.jobs.clone().retry_job(RetryJobRequest {
            job_id: job.clone()
        }),
        "may not retry or cancel jobs"
    );
    denied!(
        "CreateCluster",
        reader
            .workflows
            .clone()
            .create_cluster(CreateClusterRequest {
                name: "x".into(),
                ..CreateClusterRequest::default()
            }),
        "may not create, update or delete clusters"
    );
    denied!(
        "UpdateCluster",
        reader
            .workflows
            .clone()
            .update_cluster(UpdateClusterRequest {
                cluster_slug: "cpu".into(),
                ..UpdateClusterRequest::default()
            }),
        "may not create, update or delete clusters"
    );
    denied!(
        "DeleteCluster",
        reader
            .workflows
            .clone()
            .delete_cluster(DeleteClusterRequest {
                cluster_slug: "cpu".into()
            }),
        "may not create, update or delete clusters"
    );
    denied!(
        "CreateWorkflow",
        reader
            .workflows
            .clone()
            .create_workflow(CreateWorkflowRequest::default()),
        "may not create, update or delete workflows"
    );
    denied!(
        "UpdateWorkflow",
        reader
            .workflows
            .clone()
            .update_workflow(UpdateWorkflowRequest::default()),
        "may not create, update or delete workflows"
    );
    denied!(
        "DeleteWorkflow",
        reader
            .workflows
            .clone()
            .delete_workflow(DeleteWorkflowRequest::default()),
        "may not create, update or delete workflows"
    );
    denied!(
        "PublishWorkflowRelease",
        reader
            .workflows
            .clone()
            .publish_workflow_release(PublishWorkflowReleaseRequest::default()),
        "may not publish"
    );
    denied!(
        "UnpublishWorkflowRelease",
        reader
            .workflows
            .clone()
            .unpublish_workflow_release(UnpublishWorkflowReleaseRequest::default()),
        "may not publish"
    );
    denied!(
        "DeployWorkflowRelease",
        reader
            .workflows
            .clone()
            .deploy_workflow_release(DeployWorkflowReleaseRequest::default()),
        "may not deploy"
    );
    denied!(
        "UndeployWorkflowRelease",
        reader
            .workflows
            .clone()
            .undeploy_workflow_release(UndeployWorkflowReleaseRequest::default()),
        "may not deploy"
    );
    denied!(
        "UploadArtifact",
        reader
            .artifacts
            .clone()
            .upload_artifact(tokio_stream::iter(vec![UploadArtifactRequest::default()])),
        "may not upload artifacts"
    );
    denied!(
        "NextTask claim",
        reader.tasks.clone().next_task(NextTaskRequest {
            next_task_to_run: ask_on("cpu"),
            computed_task: None
        }),
        "may not claim tasks"
    );
    denied!(
        "NextTask report",
        reader.tasks.clone().next_task(NextTaskRequest {
            computed_task: Some(ComputedTask {
                id: task.clone(),
                ..ComputedTask::default()
            }),
            next_task_to_run: None
        }),
        "may not report tasks"
    );
    denied!(
        "TaskFailed",
        reader.tasks.clone().task_failed(TaskFailedRequest {
            task_id: task.clone(),
            ..TaskFailedRequest::default()
        }),
        "may not report tasks"
    );
    denied!(
        "ExtendTaskLease",
        reader.tasks.clone().extend_task_lease(TaskLeaseRequest {
            task_id: task.clone(),
            requested_lease: None
        }),
        "may not extend task leases"
    );
    denied!(
        "Work",
        reader.work.clone().work(WorkRequest {
            capacity: 1,
            identifiers: vec![identifier("Scoped", "v1.0")],
            ..WorkRequest::default()
        }),
        "may not claim tasks"
    );
    denied!(
        "ExtendLeases",
        reader.work.clone().extend_leases(ExtendLeasesRequest {
            leases: vec![TaskLeaseRequest {
                task_id: task.clone(),
                requested_lease: None
            }]
        }),
        "may not extend task leases"
    );
    denied!(
        "Export logs",
        reader
            .logs
            .clone()
            .export(ExportLogsServiceRequest::default()),
        "may not export logs and spans"
    );
    denied!(
        "Export spans",
        reader
            .traces
            .clone()
            .export(ExportTraceServiceRequest::default()),
        "may not export logs and spans"
    );

    // Nothing changed: the job is still running its claimed task.
    let job = admin
        .jobs
        .clone()
        .get_job(GetJobRequest { job_id: job })
        .await
        .expect("GetJob")
        .into_inner();
    assert_eq!(job.state(), tilebox::api::workflows_v1::JobState::Running);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_keys_and_flat_tokens_may_do_everything() {
    let keys = KeysFile::new();
    let admin_key = keys.create("boss", "admin", &[]);
    let server = TestServer::start_with(&["--keys-file", keys.path(), "--token", "flat-token"]);
    for key in [admin_key.as_str(), "flat-token"] {
        let admin = connect(&server, key).await;
        let slug = format!("c-{}", Uuid::new_v4().simple());
        admin
            .workflows
            .clone()
            .create_cluster(CreateClusterRequest {
                name: slug.clone(),
                slug: slug.clone(),
                ..CreateClusterRequest::default()
            })
            .await
            .expect("CreateCluster");
        admin
            .workflows
            .clone()
            .update_cluster(UpdateClusterRequest {
                cluster_slug: slug.clone(),
                name: Some("renamed".into()),
                ..UpdateClusterRequest::default()
            })
            .await
            .expect("UpdateCluster");
        let job = admin
            .jobs
            .clone()
            .submit_job(job_on(&slug))
            .await
            .expect("SubmitJob")
            .into_inner()
            .id;
        let task = claim(&admin, &slug).await;
        admin
            .tasks
            .clone()
            .extend_task_lease(TaskLeaseRequest {
                task_id: task.id.clone(),
                requested_lease: None,
            })
            .await
            .expect("ExtendTaskLease");
        admin
            .logs
            .clone()
            .export(ExportLogsServiceRequest::default())
            .await
            .expect("export");
        admin
            .deployments
            .clone()
            .watch_deployments(WatchDeploymentsRequest {
                cluster_slug: slug.clone(),
            })
            .await
            .expect("watch");
        admin
            .jobs
            .clone()
            .cancel_job(CancelJobRequest {
                job_id: job.clone(),
            })
            .await
            .expect("CancelJob");
        admin
            .jobs
            .clone()
            .query_jobs(QueryJobsRequest::default())
            .await
            .expect("QueryJobs");
        let name = format!("w-{}", Uuid::new_v4().simple());
        admin
            .workflows
            .clone()
            .create_workflow(CreateWorkflowRequest {
                name,
                ..CreateWorkflowRequest::default()
            })
            .await
            .expect("CreateWorkflow");
    }
}

/// The error a call with `key` gets now, if any.
async fn refusal_of(server: &TestServer, key: &str) -> Option<tonic::Code> {
    let client = connect(server, key).await;
    client
        .workflows
        .clone()
        .list_clusters(ListClustersRequest::default())
        .await
        .err()
        .map(|status| status.code())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoked_and_rotated_keys_take_effect_without_a_restart() {
    let fixture = fixture();
    let server = &fixture.server;
    assert_eq!(refusal_of(server, &fixture.reader).await, None);
    assert_eq!(refusal_of(server, &fixture.runner).await, None);

    // Revoked: refused within seconds.
    fixture.keys.run("revoke", "dashboard");
    wait_until("the revoked key to be refused", RELOAD_DEADLINE, || {
        block_on(refusal_of(server, &fixture.reader)) == Some(tonic::Code::Unauthenticated)
    })
    .unwrap();

    // Rotated: the new secret works, the old one no longer does.
    let rotated = fixture.keys.run("rotate", "gpu-runner");
    let new_secret = rotated["secret"].as_str().expect("secret").to_string();
    wait_until("the rotated key to work", RELOAD_DEADLINE, || {
        block_on(refusal_of(server, &new_secret)).is_none()
    })
    .unwrap();
    assert_eq!(
        refusal_of(server, &fixture.runner).await,
        Some(tonic::Code::Unauthenticated)
    );
    // Its scope came along: still a runner key of `gpu`.
    let runner = connect(server, &new_secret).await;
    assert_denied(
        "SubmitJob",
        runner.jobs.clone().submit_job(job_on("gpu")).await,
        "gpu-runner",
        "may not submit jobs",
    );

    // A new key works without a restart.
    let late = fixture.keys.create("late", "read-only", &[]);
    wait_until("the new key to work", RELOAD_DEADLINE, || {
        block_on(refusal_of(server, &late)).is_none()
    })
    .unwrap();

    // A malformed file keeps the keys in force and says where it is wrong.
    fs_err::write(
        fixture.keys.path(),
        "{\"keys\": [\n  {\"name\": \"broken\",\n  oops\n]}\n",
    )
    .expect("write");
    let path = fixture.keys.path().to_string();
    wait_until(
        "the server to log the malformed keys file",
        RELOAD_DEADLINE,
        || {
            let log = server.stderr();
            log.contains(&path)
                && log.contains("malformed at line 3")
                && log.contains("keeping the previous keys")
        },
    )
    .unwrap_or_else(|error| panic!("{error:?}\n{}", server.stderr_tail()));
    assert_eq!(refusal_of(server, &late).await, None);
    assert_eq!(refusal_of(server, &fixture.admin).await, None);
}

#[test]
fn a_missing_or_malformed_keys_file_stops_the_server_at_start() {
    let directory = tempfile::tempdir().expect("temp dir");
    let missing = directory.path().join("absent.json");
    let output = tilebox(&[
        "server",
        "--listen",
        "127.0.0.1:0",
        "--data-dir",
        &directory.path().join("d").display().to_string(),
        "--keys-file",
        missing.to_str().expect("utf-8"),
    ]);
    assert!(!output.status.success());
    assert!(
        stderr_of(&output).contains("cannot read the keys file"),
        "{}",
        stderr_of(&output)
    );
    let malformed = directory.path().join("bad.json");
    fs_err::write(&malformed, "{\"keys\": 3}").expect("write");
    let output = tilebox(&[
        "server",
        "--listen",
        "127.0.0.1:0",
        "--data-dir",
        &directory.path().join("d").display().to_string(),
        "--keys-file",
        malformed.to_str().expect("utf-8"),
    ]);
    assert!(!output.status.success());
    assert!(
        stderr_of(&output).contains("is malformed at line 1"),
        "{}",
        stderr_of(&output)
    );
}

#[derive(Deserialize)]
struct SdkSummary {
    job: SdkJob,
    listed: Vec<String>,
    runner_submit: String,
    reader_submit: String,
    events: Vec<serde_json::Value>,
}

#[derive(Deserialize)]
struct SdkJob {
    id: String,
    state: String,
    total_tasks: u64,
}

#[test]
fn the_official_sdk_runs_tasks_with_a_runner_key_and_queries_with_a_read_only_key() {
    let keys = KeysFile::new();
    let admin = keys.create("boss", "admin", &[]);
    let runner = keys.create("default-runner", "runner", &["default"]);
    let reader = keys.create("dashboard", "read-only", &[]);
    let server = TestServer::start_with(&["--keys-file", keys.path()]);
    let summary: SdkSummary =
        crate::interop::run_script(&server, "scoped_keys.py", &[&admin, &runner, &reader]);
    assert_eq!(summary.job.state, "COMPLETED");
    assert_eq!(summary.job.total_tasks, 2);
    assert_eq!(summary.events.len(), 2, "the parent and its subtask ran");
    assert!(
        summary.listed.contains(&summary.job.id),
        "QueryJobs with the read-only key"
    );
    for refusal in [&summary.runner_submit, &summary.reader_submit] {
        assert!(
            refusal.contains("may not submit jobs"),
            "SubmitJob was not refused: {refusal}"
        );
    }
    assert!(
        summary.runner_submit.contains("default-runner"),
        "{}",
        summary.runner_submit
    );
    assert!(
        summary.reader_submit.contains("dashboard"),
        "{}",
        summary.reader_submit
    );
}

const HELLO: &str = "from tilebox.workflows import ExecutionContext, Runner, Task\n\n\
class Hello(Task):\n    def execute(self, context: ExecutionContext) -> None:\n        context.submit_subtask(Child())\n\n\
class Child(Task):\n    def execute(self, context: ExecutionContext) -> None:\n        context.logger.info('child ran')\n\n\
runner = Runner(tasks=[Hello, Child])\n";

#[test]
fn our_release_runner_runs_deployed_tasks_with_a_runner_key() {
    let keys = KeysFile::new();
    let admin = keys.create("boss", "admin", &[]);
    let runner_key = keys.create("fix-runner", "runner", &["fix"]);
    let server = TestServer::start_with(&["--keys-file", keys.path()]);
    let project = tempfile::tempdir().expect("project");
    crate::common::write_project(project.path(), "hello", HELLO);
    let as_admin = |args: &[&str]| {
        let mut full = vec!["--api-key", admin.as_str(), "--json"];
        full.extend(args);
        json_of(&server.tilebox_in(project.path(), &full))
    };
    as_admin(&["workflow", "create", "Hello"]);
    as_admin(&["cluster", "create", "Fix", "--slug", "fix"]);
    as_admin(&["workflow", "publish-release"]);
    as_admin(&["workflow", "deploy-release", "--latest", "--cluster", "fix"]);

    // The runner key cannot publish (what a compromised runner host might try).
    let output = server.tilebox_in(
        project.path(),
        &["--api-key", &runner_key, "workflow", "publish-release"],
    );
    assert!(!output.status.success());
    assert!(
        stderr_of(&output).contains("key `fix-runner` (scope runner, clusters fix) may not"),
        "{}",
        stderr_of(&output)
    );

    let cache = tempfile::tempdir().expect("cache");
    let runner = crate::common::RunnerProcess::spawn(
        crate::common::tilebox_command(&["runner", "start", "--cluster", "fix", "--cache-dir"])
            .arg(cache.path())
            .env("TILEBOX_API_URL", server.url())
            .env("TILEBOX_API_KEY", &runner_key),
        cache.path().join("runner.log"),
    );
    let job = as_admin(&[
        "job",
        "submit",
        "--name",
        "keyed",
        "--task",
        "Hello",
        "--cluster",
        "fix",
    ]);
    let id = job["id"].as_str().expect("id").to_string();
    wait_until(
        "the runner key's runner to complete the job",
        Duration::from_secs(90),
        || {
            json_of(&server.tilebox(&["--api-key", &admin, "--json", "job", "get", &id]))["state"]
                == "completed"
        },
    )
    .unwrap_or_else(|timed_out| {
        panic!("{timed_out:?}\n{}\n{}", runner.log(), server.stderr_tail())
    });
    // The task's log reached the server through the runner key's OTLP export.
    wait_until("the child's log to arrive", Duration::from_secs(30), || {
        json_of(&server.tilebox(&["--api-key", &admin, "--json", "job", "logs", &id]))["logs"]
            .as_array()
            .is_some_and(|logs| logs.iter().any(|record| record["body"] == "child ran"))
    })
    .unwrap_or_else(|timed_out| panic!("{timed_out:?}\n{}", runner.log()));
    drop(runner);
}

/// The status code of an empty OTLP/HTTP log export with `key`.
fn post_empty_logs(server: &TestServer, key: &str) -> u16 {
    use std::io::{Read, Write};
    let address = server.url().trim_start_matches("http://");
    let mut stream = std::net::TcpStream::connect(address).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    write!(
        stream,
        "POST /v1/logs HTTP/1.1\r\nHost: {address}\r\nContent-Type: application/x-protobuf\r\nContent-Length: 0\r\nAuthorization: Bearer {key}\r\nConnection: close\r\n\r\n"
    )
    .expect("send");
    let mut response = String::new();
    let _ = stream.read_to_string(&mut response);
    response
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP response: {response:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn otlp_over_http_takes_runner_and_admin_keys_but_not_read_only_ones() {
    let fixture = fixture();
    assert_eq!(post_empty_logs(&fixture.server, &fixture.runner), 200);
    assert_eq!(post_empty_logs(&fixture.server, &fixture.admin), 200);
    assert_eq!(post_empty_logs(&fixture.server, &fixture.reader), 401);
    assert_eq!(post_empty_logs(&fixture.server, "tbk_not-a-key"), 401);
}

/// A runner key cannot reach another cluster's runners through the subtasks of a task it
/// ran: a computed report putting subtasks on a cluster the key does not serve fails the task
/// with the reason, and stores no subtask; subtasks on its own cluster are accepted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_runner_key_cannot_put_subtasks_on_a_cluster_it_does_not_serve() {
    let fixture = fixture();
    let server = &fixture.server;
    let admin = connect(server, &fixture.admin).await;
    let runner = connect(server, &fixture.runner).await;
    let subtasks_on = |cluster: &str| {
        let mut job = job_on(cluster);
        job.tasks.take()
    };
    for (cluster, state) in [("cpu", "failed"), ("gpu", "completed")] {
        let job = admin
            .jobs
            .clone()
            .submit_job(job_on("gpu"))
            .await
            .expect("submit")
            .into_inner();
        let task = claim(&runner, "gpu").await;
        let answer = runner
            .work
            .clone()
            .work(WorkRequest {
                reports: vec![WorkReport {
                    report: Some(work_report::Report::Computed(ComputedTask {
                        id: task.id.clone(),
                        display: "Scoped".into(),
                        sub_tasks: subtasks_on(cluster),
                        ..ComputedTask::default()
                    })),
                }],
                ..WorkRequest::default()
            })
            .await
            .expect("a work call with the report")
            .into_inner();
        let job_id = uuid_of_id(job.id.as_ref());
        if state == "failed" {
            let message = &answer.results[0].message;
            assert!(
                message.contains(
                    "key `gpu-runner` may not put subtasks on cluster `cpu`: it serves gpu"
                ),
                "{answer:?}"
            );
            let tasks = crate::common::list_tasks(&mut admin.clone(), job_id, None).await;
            assert_eq!(tasks.len(), 1, "no subtask was stored: {tasks:?}");
        } else {
            assert_eq!(answer.results[0].message, "", "{answer:?}");
            // The subtask on its own cluster is queued there, and the runner may run it.
            let subtask = claim(&runner, "gpu").await;
            runner
                .work
                .clone()
                .work(WorkRequest {
                    reports: vec![WorkReport {
                        report: Some(work_report::Report::Computed(ComputedTask {
                            id: subtask.id,
                            display: "Scoped".into(),
                            ..ComputedTask::default()
                        })),
                    }],
                    ..WorkRequest::default()
                })
                .await
                .expect("report the subtask");
        }
        let stored = crate::common::get_job(&mut admin.clone(), job_id).await;
        let expected = if state == "failed" {
            tilebox::api::workflows_v1::JobState::Failed
        } else {
            tilebox::api::workflows_v1::JobState::Completed
        };
        assert_eq!(stored.state, expected as i32, "{stored:?}");
    }
}
