//! Releases that register task identifiers the server refuses, or more than a claim may
//! advertise: `build-release` refuses them, a runner that loads one anyway skips only that
//! task class (or that release), and a refused claim never drops the results that travel
//! with it.

use std::time::Duration;

use super::*;
use crate::common::{
    TestServer, ask, client, identifier, job_request, json_of, stderr_of, uuid_of_id,
    wait_for_job_state,
};
use tilebox::api::selfhosted_v1::report_result::Outcome;
use tilebox::api::selfhosted_v1::{WorkReport, WorkRequest, work_report};
use tilebox::api::tilebox_v1::TimeInterval;
use tilebox::api::workflows_v1::{
    ComputedTask, NextTaskRequest, NextTaskToRun, QueryFilters, QueryJobsRequest, TaskState,
};
use tilebox::client::Client;

/// A runner with one good task class and one whose identifier has a trailing newline (the
/// official SDK's `re.match` check lets it through).
const MIXED_APP: &str = "from tilebox.workflows import ExecutionContext, Runner, Task\n\n\
class Hostile(Task):\n    def execute(self, context: ExecutionContext) -> None:\n        \
context.current_task.display = 'hello from the good class of a mixed release'\n\n\
class Newline(Task):\n    @staticmethod\n    def identifier() -> tuple[str, str]:\n        \
return ('X', 'v1.0\\n')\n\n    def execute(self, context: ExecutionContext) -> None:\n        pass\n\n\
runner = Runner(tasks=[Hostile, Newline])\n";

/// A runner whose one task class has a minor version beyond the store's range.
const HUGE_VERSION_APP: &str = "from tilebox.workflows import ExecutionContext, Runner, Task\n\n\
class Huge(Task):\n    @staticmethod\n    def identifier() -> tuple[str, str]:\n        \
return ('Huge', 'v1.9223372036854775808')\n\n    def execute(self, context: ExecutionContext) -> None:\n        pass\n\n\
runner = Runner(tasks=[Huge])\n";

#[test]
fn build_release_refuses_a_task_class_with_a_bad_identifier_and_leaves_no_archive() {
    for (slug, app, class, shown) in [
        ("mixed", MIXED_APP, "app.Newline", r#"("X", "v1.0\n")"#),
        (
            "huge",
            HUGE_VERSION_APP,
            "app.Huge",
            r#"("Huge", "v1.9223372036854775808")"#,
        ),
    ] {
        let project = crate::common::project(slug, app);
        let output = crate::common::tilebox_command(&["workflow", "build-release"])
            .current_dir(project.path())
            .env("XDG_CACHE_HOME", project.path().join(".cache-home"))
            .output()
            .expect("build-release");
        let stderr = stderr_of(&output);
        assert_eq!(output.status.code(), Some(1), "{slug}: {stderr}");
        assert!(
            stderr.contains(&format!(
                "release {slug}: {class} registers the invalid identifier {shown}"
            )),
            "{slug}: {stderr}"
        );
        assert!(stderr.contains("vMAJOR.MINOR"), "{slug}: {stderr}");
        let left: Vec<String> = tree(project.path())
            .into_iter()
            .filter(|path| path.contains(".tar.zst"))
            .collect();
        assert_eq!(left, Vec::<String>::new(), "{slug}: no archive is left");
    }

    // The same project without the bad class builds, and its archive is in place.
    let good = HOSTILE_APP;
    let project = crate::common::project("good", good);
    let output = crate::common::tilebox_command(&["--json", "workflow", "build-release"])
        .current_dir(project.path())
        .env("XDG_CACHE_HOME", project.path().join(".cache-home"))
        .output()
        .expect("build-release");
    let built = json_of(&output);
    assert_eq!(built["tasks"][0]["name"], "Hostile");
    assert!(project.path().join("good.tar.zst").is_file());
    assert!(!project.path().join("good.tar.zst.partial").exists());
}

/// A runner with 1,001 task classes, made in a loop: one more than a claim may advertise.
const CROWDED_APP: &str = "from tilebox.workflows import ExecutionContext, Runner, Task\n\n\
def execute(self, context: ExecutionContext) -> None:\n    pass\n\n\
classes = [type(f'Crowd{index}', (Task,), {'execute': execute}) for index in range(1001)]\n\
runner = Runner(tasks=classes)\n";

#[test]
fn build_release_refuses_more_task_identifiers_than_a_claim_may_advertise() {
    let project = crate::common::project("crowded", CROWDED_APP);
    let output = crate::common::tilebox_command(&["workflow", "build-release"])
        .current_dir(project.path())
        .env("XDG_CACHE_HOME", project.path().join(".cache-home"))
        .output()
        .expect("build-release");
    let stderr = stderr_of(&output);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(
            "release crowded registers 1001 task identifiers; a runner advertises at most 1000"
        ),
        "{stderr}"
    );
    let left: Vec<String> = tree(project.path())
        .into_iter()
        .filter(|path| path.contains(".tar.zst"))
        .collect();
    assert_eq!(left, Vec::<String>::new(), "no archive is left");

    // At the limit the release builds.
    let project = crate::common::project(
        "thousand",
        &CROWDED_APP.replace("range(1001)", "range(1000)"),
    );
    let output = crate::common::tilebox_command(&["--json", "workflow", "build-release"])
        .current_dir(project.path())
        .env("XDG_CACHE_HOME", project.path().join(".cache-home"))
        .output()
        .expect("build-release");
    let built = json_of(&output);
    assert_eq!(built["tasks"].as_array().map(Vec::len), Some(1000));
    assert!(project.path().join("thousand.tar.zst").is_file());
}

/// A cluster `slug` with the good greeter release (built with the CLI) and a release `slug`
/// made by hand from `app` (build-release would refuse it) deployed to it, and a runner serving
/// it.
async fn serve_beside_the_greeter(
    server: &TestServer,
    scratch: &std::path::Path,
    slug: &str,
    app: &str,
) -> crate::common::RunnerProcess {
    let mut client = client(server).await;
    create_cluster(&mut client, slug).await;
    deploy_greeter(server, scratch, slug);
    let bytes = archive(&[Entry("app.py", b'0', "", app.as_bytes())]);
    let release = publish_hostile(&mut client, slug, &bytes).await;
    deploy(&mut client, slug, release, slug).await;
    start_runner(
        server,
        slug,
        &scratch.join("cache"),
        scratch.join("runner.log"),
        &[],
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_release_with_a_bad_identifier_loads_without_it_and_every_other_task_class_runs() {
    let server = TestServer::start();
    let scratch = tempfile::Builder::new()
        .prefix("tilebox-releases-")
        .tempdir()
        .expect("scratch");
    let mut runner = serve_beside_the_greeter(&server, scratch.path(), "mixed", MIXED_APP).await;
    let submit = |task: &str| submit_to(&server, task, "mixed");
    let hello = submit("Hello");
    let hostile = submit("Hostile");
    for job in [&hello, &hostile] {
        wait_for_job_state(&server, job, "completed", Duration::from_secs(90));
    }

    let log = runner.log();
    let skipped: Vec<&str> = log
        .lines()
        .filter(|line| line.contains("skipping a task class with an invalid identifier"))
        .collect();
    assert!(!skipped.is_empty(), "{log}");
    assert!(
        skipped.iter().all(|line| line.contains(r#"name="X""#)
            && line.contains(r#"version="v1.0\n""#)
            && line.contains("expected the form vMAJOR.MINOR")
            && line.contains("release=mixed")
            && line.contains("class=app.Newline")),
        "{skipped:#?}"
    );
    assert!(
        !log.contains("refused to hand out tasks"),
        "the runner never advertised the bad identifier: {log}"
    );
    runner.signal("-INT");
    runner.wait_for_success(Duration::from_secs(30));
    server.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_release_over_the_identifier_limit_is_skipped_and_the_other_releases_run() {
    let server = TestServer::start();
    let scratch = tempfile::Builder::new()
        .prefix("tilebox-releases-")
        .tempdir()
        .expect("scratch");
    let mut runner =
        serve_beside_the_greeter(&server, scratch.path(), "crowded", CROWDED_APP).await;
    let hello = submit_to(&server, "Hello", "crowded");
    wait_for_job_state(&server, &hello, "completed", Duration::from_secs(90));

    let log = runner.log();
    let skipped: Vec<&str> = log
        .lines()
        .filter(|line| line.contains("skipping a release: advertising its task identifiers"))
        .collect();
    assert!(!skipped.is_empty(), "{log}");
    assert!(
        skipped.iter().all(|line| line.contains("workflow=crowded")
            && line.contains("identifiers=1001")
            && line.contains("limit=1000")),
        "{skipped:#?}"
    );
    assert!(
        !log.contains("refused to hand out tasks"),
        "the runner never advertised more than the limit: {log}"
    );
    runner.signal("-INT");
    runner.wait_for_success(Duration::from_secs(30));
    server.stop();
}

/// Claims one task `Leaf@v1.0` through `NextTask`; answers its id.
async fn claim_leaf(client: &mut Client) -> tilebox::api::tilebox_v1::Id {
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
    task.id.expect("task id")
}

async fn task_state(client: &mut Client, job: uuid::Uuid) -> TaskState {
    let tasks = crate::common::list_tasks(client, job, None).await;
    TaskState::try_from(tasks[0].state).expect("a state")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_claim_never_drops_the_result_it_carries() {
    let server = TestServer::start();
    let mut client = client(&server).await;
    let too_many: Vec<_> = (0..1001)
        .map(|index| identifier(&format!("T{index}"), "v1.0"))
        .collect();
    let bad_claims = [
        (
            vec![identifier("X", "v1.0\n")],
            String::new(),
            "task identifier `X` has version `v1.0\n`",
        ),
        (
            vec![identifier("Leaf", "v1.9223372036854775808")],
            String::new(),
            "major and minor may be at most 9223372036854775807",
        ),
        (
            too_many,
            String::new(),
            "holds 1001 identifiers; the limit is 1000",
        ),
        (
            vec![identifier("Leaf", "v1.0")],
            "nowhere".to_string(),
            "cluster `nowhere` not found",
        ),
    ];

    // The official protocol: a computed task and a bad next_task_to_run in one NextTask.
    for (identifiers, cluster, message) in &bad_claims {
        let job = client
            .jobs
            .submit_job(job_request("Leaf", "v1.0", 1, b"{}"))
            .await
            .expect("submit")
            .into_inner();
        let job = uuid_of_id(job.id.as_ref());
        let task = claim_leaf(&mut client).await;
        let status = client
            .tasks
            .next_task(NextTaskRequest {
                computed_task: Some(ComputedTask {
                    id: Some(task),
                    display: "computed".into(),
                    ..ComputedTask::default()
                }),
                next_task_to_run: Some(NextTaskToRun {
                    cluster_slug: cluster.clone(),
                    identifiers: identifiers.clone(),
                }),
            })
            .await
            .expect_err("the claim is refused");
        assert!(
            matches!(
                status.code(),
                tonic::Code::InvalidArgument | tonic::Code::NotFound
            ),
            "{status:?}"
        );
        assert!(status.message().contains(message), "{}", status.message());
        assert_eq!(
            task_state(&mut client, job).await,
            TaskState::Computed,
            "the report was applied: {message}"
        );
    }

    // Our runner's protocol: the reports are applied and the claim's error is answered.
    for (identifiers, cluster, message) in bad_claims {
        let job = client
            .jobs
            .submit_job(job_request("Leaf", "v1.0", 1, b"{}"))
            .await
            .expect("submit")
            .into_inner();
        let job = uuid_of_id(job.id.as_ref());
        let task = claim_leaf(&mut client).await;
        let answer = client
            .work
            .work(WorkRequest {
                reports: vec![WorkReport {
                    report: Some(work_report::Report::Computed(ComputedTask {
                        id: Some(task),
                        display: "computed".into(),
                        ..ComputedTask::default()
                    })),
                }],
                capacity: 1,
                cluster_slug: cluster,
                identifiers,
                ..WorkRequest::default()
            })
            .await
            .expect("a refused claim does not fail the call")
            .into_inner();
        assert!(
            answer.claim_error.contains(message),
            "{}",
            answer.claim_error
        );
        assert!(answer.tasks.is_empty());
        assert_eq!(answer.results.len(), 1);
        assert_eq!(answer.results[0].outcome, Outcome::Applied as i32);
        assert_eq!(task_state(&mut client, job).await, TaskState::Computed);
    }

    // A version past the store's range is refused at submit: it never becomes a task a
    // `v1.0` runner could claim.
    let status = client
        .jobs
        .submit_job(job_request("Leaf", "v1.9223372036854775808", 1, b"{}"))
        .await
        .expect_err("refused");
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    assert!(
        status
            .message()
            .contains("major and minor may be at most 9223372036854775807"),
        "{}",
        status.message()
    );
    let idle = client
        .tasks
        .next_task(NextTaskRequest {
            computed_task: None,
            next_task_to_run: ask("Leaf", "v1.0"),
        })
        .await
        .expect("claim")
        .into_inner();
    assert!(idle.next_task.is_none(), "nothing was stored to claim");
    server.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn query_times_at_the_edges_of_a_timestamp_saturate_instead_of_failing() {
    let server = TestServer::start();
    let mut client = client(&server).await;
    client
        .jobs
        .submit_job(job_request("Leaf", "v1.0", 1, b"{}"))
        .await
        .expect("submit");
    let query = |start: i64, end: i64| QueryJobsRequest {
        filters: Some(QueryFilters {
            time_interval: Some(TimeInterval {
                start_time: Some(prost_types::Timestamp {
                    seconds: start,
                    nanos: 0,
                }),
                end_time: Some(prost_types::Timestamp {
                    seconds: end,
                    nanos: 0,
                }),
                start_exclusive: true,
                end_inclusive: true,
            }),
            ..QueryFilters::default()
        }),
        ..QueryJobsRequest::default()
    };
    for (start, end, expected) in [(i64::MIN, i64::MAX, 1), (i64::MAX, i64::MAX, 0)] {
        let jobs = client
            .jobs
            .query_jobs(query(start, end))
            .await
            .expect("an answer, not a failed handler")
            .into_inner()
            .jobs;
        assert_eq!(jobs.len(), expected, "from {start} to {end}");
    }
    server.stop();
}

#[test]
fn a_telemetry_retention_past_a_hundred_years_is_refused_at_start() {
    let data = tempfile::tempdir().expect("data dir");
    let output = crate::common::tilebox_command(&[
        "server",
        "--listen",
        "127.0.0.1:0",
        "--telemetry-retention",
        "1000000000years",
        "--data-dir",
    ])
    .arg(data.path())
    .output()
    .expect("server");
    let stderr = stderr_of(&output);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(
            "--telemetry-retention of 1000000000years is too long; the limit is 100years"
        ),
        "{stderr}"
    );
    assert!(
        output.stdout.is_empty(),
        "the server never listened: {}",
        String::from_utf8_lossy(&output.stdout)
    );
}
