//! Interop: the official Python SDK (`tilebox-workflows` from PyPI, version pinned in
//! `common/sdk.rs`) drives our server through the scenario scripts in `tests/interop/`.
//!
//! Each test starts its own server (free port, temp data dir), runs one script with the SDK
//! venv's Python and the official direct runner, and asserts on the `interop-summary:` JSON line
//! the script prints last: job states, task counts by state, and the execution events the tasks
//! recorded (task ids, parents and dependencies as the server handed them out, and their order).

use fs_err::File;
use std::collections::BTreeMap;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use crate::common::{Replicas, TestServer, sdk_python, tail_of_file, wait_for_exit};
use serde::Deserialize;

/// A scenario script is killed and the test fails after this long.
const SCRIPT_TIMEOUT: Duration = Duration::from_secs(120);
/// The prefix of the summary line every script prints last (see `tests/interop/harness.py`).
const SUMMARY_PREFIX: &str = "interop-summary: ";
/// How much of a script's output and the server's stderr goes into the test's captured output.
const OUTPUT_TAIL_BYTES: u64 = 16 * 1024;

/// Where a scenario runs: one server (SQLite), or two replicas on one PostgreSQL database,
/// with the jobs submitted and read through the first and the runners on the second.
pub(crate) enum Servers {
    One(TestServer),
    Two(Replicas),
}

impl Servers {
    /// The server the script submits, queries and reads through.
    fn submit(&self) -> &TestServer {
        match self {
            Servers::One(server) => server,
            Servers::Two(replicas) => replicas.server(0),
        }
    }

    /// The server the script submits through, to kill and restart it.
    fn submit_mut(&mut self) -> &mut TestServer {
        match self {
            Servers::One(server) => server,
            Servers::Two(replicas) => &mut replicas.servers[0],
        }
    }

    /// The URL the script's runners use (`TILEBOX_RUNNER_API_URL`).
    fn runner_url(&self) -> &str {
        match self {
            Servers::One(server) => server.url(),
            Servers::Two(replicas) => replicas.server(1).url(),
        }
    }

    /// Every server, the one submitted through first: their stderr goes into the output.
    fn all(&self) -> Vec<&TestServer> {
        match self {
            Servers::One(server) => vec![server],
            Servers::Two(replicas) => replicas.servers.iter().collect(),
        }
    }

    fn stop(self) {
        match self {
            Servers::One(server) => server.stop(),
            Servers::Two(replicas) => {
                let Replicas { servers, database } = replicas;
                servers.into_iter().for_each(TestServer::stop);
                drop(database);
            }
        }
    }
}

/// Each scenario twice: `one_server::NAME` and `two_replicas::NAME`.
macro_rules! scenarios {
    ($($name:ident),+ $(,)?) => {
        mod one_server {
            $(
                #[test]
                fn $name() {
                    super::$name(super::Servers::One(crate::common::TestServer::start()));
                }
            )+
        }
        mod two_replicas {
            $(
                #[test]
                fn $name() {
                    super::$name(super::Servers::Two(crate::common::Replicas::start(2, &[])));
                }
            )+
        }
    };
}

scenarios!(
    fanout_with_dependencies_completes_in_dependency_order,
    dependant_waits_for_the_descendants_of_its_dependency,
    retry_requeues_failed_tasks_and_the_job_completes,
    optional_failures_do_not_fail_the_job,
    default_cluster_resolves_and_runs_jobs_submitted_without_a_cluster,
    sdk_logs_and_spans_are_stored_and_read_back,
    sdk_queries_jobs_by_id_interval_and_automation,
    acknowledged_work_survives_a_server_kill,
);

fn fanout_with_dependencies_completes_in_dependency_order(servers: Servers) {
    #[derive(Deserialize)]
    struct Summary {
        cluster: ClusterSummary,
        submitted: JobSummary,
        job: JobSummary,
        expected_labels: BTreeMap<u64, String>,
        events: Vec<Event>,
    }
    const LEAVES: u64 = 25;

    let summary: Summary = run_script_on(&servers, "fanout.py", &[]);

    assert!(
        !summary.cluster.slug.is_empty(),
        "CreateCluster returned an empty slug"
    );
    assert_eq!(summary.cluster.display_name, "Interop fanout");
    assert_eq!(
        summary.submitted.state, "SUBMITTED",
        "state in the SubmitJob response"
    );
    assert_eq!(summary.job.id, summary.submitted.id);
    assert_eq!(summary.job.name, "interop-fanout");
    assert_eq!(summary.job.state, "COMPLETED");
    assert_eq!(summary.job.total_tasks, 1 + 2 * LEAVES);
    assert_eq!(
        summary.job.tasks_by_state,
        counts(&[("COMPUTED", 1 + 2 * LEAVES)])
    );

    let events = &summary.events;
    assert!(
        events.iter().all(|event| event.job_id == summary.job.id),
        "a task of another job ran"
    );
    let root = single(events, |event| event.kind == "root");
    assert_eq!(root.parent_id, None);
    assert_eq!(root.outcome, "computed");

    // Odd leaves fail once and are retried by the server, so they run twice: 1 + 25 + 12 + 25.
    assert_eq!(
        events.len() as u64,
        1 + LEAVES + LEAVES / 2 + LEAVES,
        "number of executions"
    );
    for index in 0..LEAVES {
        let attempts: Vec<(usize, &Event)> = events
            .iter()
            .enumerate()
            .filter(|(_, event)| event.kind == "leaf" && event.index == Some(index))
            .collect();
        let outcomes: Vec<(&str, u64)> = attempts
            .iter()
            .map(|(_, event)| (event.outcome.as_str(), event.retry_count))
            .collect();
        let expected = if index % 2 == 1 {
            vec![("failed", 0), ("computed", 1)]
        } else {
            vec![("computed", 0)]
        };
        assert_eq!(
            outcomes, expected,
            "leaf {index}: (outcome, retry_count) per attempt"
        );
        let (computed_at, leaf) = *attempts.last().expect("the leaf ran");
        assert!(
            attempts
                .iter()
                .all(|(_, attempt)| attempt.task_id == leaf.task_id),
            "leaf {index}: one task id"
        );
        assert_eq!(
            leaf.parent_id.as_ref(),
            Some(&root.task_id),
            "leaf {index}: parent"
        );
        assert!(
            leaf.depends_on.is_empty(),
            "leaf {index} has dependencies {:?}",
            leaf.depends_on
        );
        assert_eq!(
            leaf.label.as_ref(),
            Some(&summary.expected_labels[&index]),
            "leaf {index}: input"
        );

        let (dependant_at, dependant) = single_at(events, |event| {
            event.kind == "dependant" && event.index == Some(index)
        });
        assert_eq!(
            dependant.parent_id.as_ref(),
            Some(&root.task_id),
            "dependant {index}: parent"
        );
        assert_eq!(
            dependant.depends_on,
            [leaf.task_id.as_str()],
            "dependant {index}: dependencies"
        );
        assert!(
            dependant_at > computed_at,
            "dependant {index} ran (event {dependant_at}) before its leaf was computed (event {computed_at})"
        );
    }

    servers.stop();
}

fn dependant_waits_for_the_descendants_of_its_dependency(servers: Servers) {
    #[derive(Deserialize)]
    struct Summary {
        job: JobSummary,
        events: Vec<Event>,
    }

    let summary: Summary = run_script_on(&servers, "descendants.py", &[]);

    assert_eq!(summary.job.state, "COMPLETED");
    assert_eq!(summary.job.tasks_by_state, counts(&[("COMPUTED", 5)]));
    let kinds: Vec<&str> = summary
        .events
        .iter()
        .map(|event| event.kind.as_str())
        .collect();
    assert_eq!(
        kinds,
        ["root", "parent", "child", "grandchild", "after"],
        "execution order"
    );
    let parent = single(&summary.events, |event| event.kind == "parent");
    let after = single(&summary.events, |event| event.kind == "after");
    assert_eq!(after.depends_on, [parent.task_id.as_str()]);

    servers.stop();
}

fn retry_requeues_failed_tasks_and_the_job_completes(servers: Servers) {
    #[derive(Deserialize)]
    struct Summary {
        flaky: RetriedJob,
        halting: RetriedJob,
        events: Vec<Event>,
    }
    #[derive(Deserialize)]
    struct RetriedJob {
        id: String,
        steps: Vec<Step>,
    }
    /// (step, job state, tasks by state, RetryJob's num_tasks_rescheduled)
    type StepView<'a> = (&'a str, &'a str, BTreeMap<String, u64>, Option<u64>);
    #[derive(Deserialize)]
    struct Step {
        step: String,
        events_so_far: usize,
        job: JobSummary,
        rescheduled: Option<u64>,
    }

    let summary: Summary = run_script_on(&servers, "retry.py", &[]);

    // The flaky root task fails twice, then succeeds (the SDK's own recorded test).
    let steps: Vec<StepView> = summary
        .flaky
        .steps
        .iter()
        .map(|step| {
            (
                step.step.as_str(),
                step.job.state.as_str(),
                step.job.tasks_by_state.clone(),
                step.rescheduled,
            )
        })
        .collect();
    assert_eq!(
        steps,
        [
            ("first run", "FAILED", counts(&[("FAILED", 1)]), None),
            ("first retry", "RUNNING", counts(&[("QUEUED", 1)]), Some(1)),
            ("second run", "FAILED", counts(&[("FAILED", 1)]), None),
            ("second retry", "RUNNING", counts(&[("QUEUED", 1)]), Some(1)),
            ("third run", "COMPLETED", counts(&[("COMPUTED", 1)]), None),
        ],
        "(step, job state, tasks by state, RetryJob's num_tasks_rescheduled) of the flaky job"
    );
    let flaky_events = events_of(&summary.events, &summary.flaky.id);
    let outcomes: Vec<&str> = flaky_events
        .iter()
        .map(|(_, event)| event.outcome.as_str())
        .collect();
    assert_eq!(outcomes, ["failed", "failed", "computed"]);
    assert!(
        flaky_events
            .iter()
            .all(|(_, event)| event.task_id == flaky_events[0].1.task_id),
        "retry keeps the task id"
    );

    // The halting job: once `Broken` failed, nothing else of the job runs until the retry.
    let [first_run, retry, second_run] = &summary.halting.steps[..] else {
        panic!("expected 3 steps of the halting job");
    };
    assert_eq!(first_run.job.state, "FAILED", "after Broken failed");
    assert_eq!(
        first_run.job.tasks_by_state.get("FAILED"),
        Some(&1),
        "{:?}",
        first_run.job.tasks_by_state
    );
    assert_eq!(
        first_run.job.tasks_by_state.values().sum::<u64>(),
        4,
        "{:?}",
        first_run.job.tasks_by_state
    );
    assert_eq!(first_run.job.total_tasks, 4);
    let halting_events = events_of(&summary.events, &summary.halting.id);
    let (failed_at, broken) = halting_events
        .iter()
        .find(|(_, event)| event.kind == "broken")
        .expect("Broken ran");
    assert_eq!(broken.outcome, "failed");
    let ran_after_failure: Vec<&str> = halting_events
        .iter()
        .filter(|(at, _)| at > failed_at && *at < first_run.events_so_far)
        .map(|(_, event)| event.kind.as_str())
        .collect();
    assert!(
        ran_after_failure.is_empty(),
        "tasks of the FAILED job still ran: {ran_after_failure:?}"
    );

    assert_eq!(
        retry.rescheduled,
        Some(1),
        "RetryJob reschedules only the failed task"
    );
    assert!(
        ["RUNNING", "STARTED"].contains(&retry.job.state.as_str()),
        "job state right after retry: {}",
        retry.job.state
    );
    assert_eq!(second_run.job.state, "COMPLETED");
    assert_eq!(second_run.job.tasks_by_state, counts(&[("COMPUTED", 4)]));
    let mut executions: Vec<(&str, Option<u64>, &str)> = halting_events
        .iter()
        .map(|(_, event)| (event.kind.as_str(), event.index, event.outcome.as_str()))
        .collect();
    executions.sort();
    assert_eq!(
        executions,
        [
            ("broken", None, "computed"),
            ("broken", None, "failed"),
            ("fine", Some(1), "computed"),
            ("fine", Some(2), "computed"),
            ("halting", None, "computed"),
        ],
        "every task of the halting job computed once, Broken after one failure"
    );

    servers.stop();
}

fn optional_failures_do_not_fail_the_job(servers: Servers) {
    #[derive(Deserialize)]
    struct Summary {
        branch: JobSummary,
        subtask: JobSummary,
        events: Vec<Event>,
    }

    let summary: Summary = run_script_on(&servers, "optional.py", &[]);

    // Optional sub-branch: Failing is FAILED_OPTIONAL, its dependant "inner" SKIPPED.
    assert_eq!(summary.branch.state, "COMPLETED", "optional sub-branch job");
    assert_eq!(
        summary.branch.tasks_by_state,
        counts(&[("COMPUTED", 3), ("FAILED_OPTIONAL", 1), ("SKIPPED", 1)]),
        "optional sub-branch job"
    );
    assert_eq!(summary.branch.total_tasks, 5);
    let branch: Vec<(&str, Option<&str>, &str)> = events_of(&summary.events, &summary.branch.id)
        .iter()
        .map(|(_, event)| {
            (
                event.kind.as_str(),
                event.name.as_deref(),
                event.outcome.as_str(),
            )
        })
        .collect();
    let ran = |kind: &str, name: Option<&str>| {
        branch
            .iter()
            .filter(|(k, n, _)| *k == kind && *n == name)
            .count()
    };
    assert_eq!(ran("failing", None), 1, "Failing runs once: {branch:?}");
    assert_eq!(
        ran("succeeding", Some("outer")),
        1,
        "the sibling of the optional branch runs: {branch:?}"
    );
    assert_eq!(
        ran("succeeding", Some("inner")),
        0,
        "the dependant of the failed task is skipped: {branch:?}"
    );

    // Optional subtask: its dependant still runs, after it.
    assert_eq!(summary.subtask.state, "COMPLETED", "optional subtask job");
    assert_eq!(
        summary.subtask.tasks_by_state,
        counts(&[("COMPUTED", 2), ("FAILED_OPTIONAL", 1)]),
        "optional subtask job"
    );
    let subtask = events_of(&summary.events, &summary.subtask.id);
    let kinds: Vec<(&str, &str)> = subtask
        .iter()
        .map(|(_, event)| (event.kind.as_str(), event.outcome.as_str()))
        .collect();
    assert_eq!(
        kinds,
        [
            ("subtask-root", "computed"),
            ("failing", "failed"),
            ("succeeding", "computed")
        ]
    );
    assert_eq!(
        subtask[2].1.depends_on,
        [subtask[1].1.task_id.as_str()],
        "the dependant's dependencies"
    );

    servers.stop();
}

fn default_cluster_resolves_and_runs_jobs_submitted_without_a_cluster(servers: Servers) {
    #[derive(Deserialize)]
    struct Summary {
        default_cluster: ClusterSummary,
        other_cluster: ClusterSummary,
        all_slugs: Vec<String>,
        implicit: JobSummary,
        explicit: JobSummary,
        elsewhere_after_default_runner: JobSummary,
        events_after_default_runner: usize,
        elsewhere: JobSummary,
        events: Vec<Event>,
    }

    let summary: Summary = run_script_on(&servers, "default_cluster.py", &[]);

    let default = &summary.default_cluster.slug;
    assert!(
        !default.is_empty(),
        "GetCluster(\"\") returned an empty slug"
    );
    assert_ne!(default, &summary.other_cluster.slug);
    assert!(
        summary.all_slugs.contains(default),
        "ListClusters {:?} lacks the default {default}",
        summary.all_slugs
    );
    assert!(
        summary.all_slugs.contains(&summary.other_cluster.slug),
        "ListClusters {:?}",
        summary.all_slugs
    );

    for job in [&summary.implicit, &summary.explicit] {
        assert_eq!(job.state, "COMPLETED", "{}", job.name);
        assert_eq!(
            job.tasks_by_state,
            counts(&[("COMPUTED", 2)]),
            "{}",
            job.name
        );
    }

    let before = &summary.elsewhere_after_default_runner;
    assert_eq!(
        before.state, "SUBMITTED",
        "a job on another cluster, after the default cluster's runner"
    );
    assert_eq!(before.tasks_by_state, counts(&[("QUEUED", 1)]));
    let elsewhere = events_of(&summary.events, &summary.elsewhere.id);
    assert!(
        elsewhere
            .iter()
            .all(|(at, _)| *at >= summary.events_after_default_runner),
        "the default cluster's runner ran a task of another cluster"
    );
    assert_eq!(summary.elsewhere.state, "COMPLETED");
    assert_eq!(summary.elsewhere.tasks_by_state, counts(&[("COMPUTED", 2)]));

    servers.stop();
}

/// The job and cluster acknowledged through the submitting server survive its `kill -9`; with
/// two replicas, the runners keep using the other one meanwhile.
fn acknowledged_work_survives_a_server_kill(mut servers: Servers) {
    #[derive(Deserialize)]
    struct First {
        cluster: String,
        job: JobSummary,
        events: Vec<Event>,
    }
    #[derive(Deserialize)]
    struct Second {
        cluster: String,
        before: JobSummary,
        job: JobSummary,
        events: Vec<Event>,
    }

    let first: First = run_script_on(&servers, "durability.py", &["first"]);
    assert!(
        ["RUNNING", "STARTED"].contains(&first.job.state.as_str()),
        "job state with the root computed and 3 leaves queued: {}",
        first.job.state
    );
    assert_eq!(
        first.job.tasks_by_state,
        counts(&[("COMPUTED", 1), ("QUEUED", 3)])
    );
    let root = single(&first.events, |event| event.kind == "root");

    servers.submit_mut().kill();
    servers.submit_mut().restart();
    let second: Second = run_script_on(
        &servers,
        "durability.py",
        &["second", &first.cluster, &first.job.id],
    );

    assert_eq!(
        second.cluster, first.cluster,
        "the cluster after the restart"
    );
    assert_eq!(
        second.before.state, first.job.state,
        "job state after the restart"
    );
    assert_eq!(
        second.before.tasks_by_state, first.job.tasks_by_state,
        "tasks after the restart"
    );
    assert_eq!(second.job.state, "COMPLETED");
    assert_eq!(second.job.tasks_by_state, counts(&[("COMPUTED", 4)]));
    let mut leaves: Vec<u64> = second
        .events
        .iter()
        .filter_map(|event| event.index)
        .collect();
    leaves.sort();
    assert_eq!(leaves, [0, 1, 2], "leaves run after the restart");
    assert!(
        second
            .events
            .iter()
            .all(|event| event.kind == "leaf" && event.parent_id.as_ref() == Some(&root.task_id)),
        "after the restart only the leaves of the first root run: {:#?}",
        second.events
    );

    servers.stop();
}

fn sdk_logs_and_spans_are_stored_and_read_back(servers: Servers) {
    #[derive(Deserialize)]
    struct Summary {
        job: JobSummary,
        runner_exit_code: i32,
        runner_stderr_tail: String,
        runner_events: Option<Vec<Event>>,
        runner_export_problems: Vec<String>,
        logs: Vec<Log>,
        logs_error: Option<String>,
        spans: Vec<Span>,
        spans_error: Option<String>,
    }
    #[derive(Debug, Deserialize)]
    struct Log {
        body: String,
        severity: String,
        task_id: Option<String>,
    }
    #[derive(Debug, Deserialize)]
    struct Span {
        name: String,
        status: String,
        task_id: Option<String>,
    }

    let summary: Summary = run_script_on(&servers, "telemetry.py", &[]);

    assert_eq!(
        summary.runner_exit_code, 0,
        "the runner process failed:\n{}",
        summary.runner_stderr_tail
    );
    assert_eq!(summary.job.state, "COMPLETED");
    assert_eq!(summary.job.tasks_by_state, counts(&[("COMPUTED", 2)]));
    let events = summary
        .runner_events
        .expect("the runner printed its events");
    let root = single(&events, |event| event.kind == "root");
    let child = single(&events, |event| event.kind == "child");
    assert_eq!(
        summary.runner_export_problems,
        Vec::<String>::new(),
        "OTLP exports to /v1/logs and /v1/traces"
    );

    assert_eq!(summary.logs_error, None, "QueryJobLogs");
    for (body, task) in [("root starting", root), ("child says hi", child)] {
        let matching: Vec<&Log> = summary.logs.iter().filter(|log| log.body == body).collect();
        assert_eq!(
            matching.len(),
            1,
            "log records {body:?} in {:?}",
            summary.logs
        );
        assert_eq!(matching[0].severity, "INFO", "severity of {body:?}");
        assert_eq!(
            matching[0].task_id.as_ref(),
            Some(&task.task_id),
            "task_id of {body:?}"
        );
    }

    assert_eq!(summary.spans_error, None, "QueryJobSpans");
    for (name, task) in [("task/Root", root), ("task/Child", child)] {
        let matching: Vec<&Span> = summary
            .spans
            .iter()
            .filter(|span| span.name == name)
            .collect();
        assert_eq!(matching.len(), 1, "spans {name:?} in {:?}", summary.spans);
        assert_ne!(matching[0].status, "STATUS_CODE_ERROR", "status of {name}");
        assert_eq!(
            matching[0].task_id.as_ref(),
            Some(&task.task_id),
            "task_id of {name}"
        );
    }

    servers.stop();
}

fn sdk_queries_jobs_by_id_interval_and_automation(servers: Servers) {
    #[derive(Deserialize)]
    struct Summary {
        submitted: Vec<String>,
        tuple: Vec<String>,
        tuple_of_strings: Vec<String>,
        exclusive: Vec<String>,
        automation: Vec<String>,
        automation_and_ids: Vec<String>,
    }
    let summary: Summary = run_script_on(&servers, "query_filters.py", &[]);
    let jobs = &summary.submitted;
    assert_eq!(jobs.len(), 4);
    // The SDK's tuple is [start, end]: both ends included.
    assert_eq!(summary.tuple, jobs[..3]);
    assert_eq!(summary.tuple_of_strings, jobs[1..3]);
    assert_eq!(summary.exclusive, jobs[1..2]);
    // No job on this server was submitted by an automation.
    assert!(summary.automation.is_empty(), "{:?}", summary.automation);
    assert!(
        summary.automation_and_ids.is_empty(),
        "{:?}",
        summary.automation_and_ids
    );
    servers.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn query_jobs_filters_by_id_interval_and_automation_over_grpc() {
    use tilebox::api::convert::id;
    use tilebox::api::tilebox_v1::{Id, IdInterval, Pagination, SortDirection};
    use tilebox::api::workflows_v1::{QueryFilters, QueryJobsRequest};

    let server = TestServer::start();
    let mut client = crate::common::client(&server).await;
    let mut jobs = Vec::new();
    for index in 0..5 {
        let job = client
            .jobs
            .submit_job(crate::common::job_request(
                &format!("Ids{index}"),
                "v1.0",
                1,
                b"{}",
            ))
            .await
            .expect("submit")
            .into_inner();
        jobs.push(crate::common::uuid_of_id(job.id.as_ref()));
    }
    let query = |filters: QueryFilters, limit: Option<i64>, descending: bool| {
        let mut client = client.clone();
        async move {
            client
                .jobs
                .query_jobs(QueryJobsRequest {
                    filters: Some(filters),
                    page: Some(Pagination {
                        limit,
                        starting_after: None,
                    }),
                    sort_direction: if descending {
                        SortDirection::Descending as i32
                    } else {
                        SortDirection::Ascending as i32
                    },
                })
                .await
                .map(|response| {
                    response
                        .into_inner()
                        .jobs
                        .iter()
                        .map(|job| crate::common::uuid_of_id(job.id.as_ref()))
                        .collect::<Vec<_>>()
                })
        }
    };
    const NO_JOBS: [uuid::Uuid; 0] = [];
    let interval = |start: usize, end: usize, start_exclusive, end_inclusive| QueryFilters {
        id_interval: Some(IdInterval {
            start_id: Some(id(jobs[start])),
            end_id: Some(id(jobs[end])),
            start_exclusive,
            end_inclusive,
        }),
        ..QueryFilters::default()
    };
    // Without flags: [start, end).
    assert_eq!(
        query(interval(1, 3, false, false), None, false)
            .await
            .unwrap(),
        jobs[1..3]
    );
    assert_eq!(
        query(interval(1, 3, true, true), None, false)
            .await
            .unwrap(),
        jobs[2..4]
    );
    assert_eq!(
        query(interval(1, 1, false, true), None, false)
            .await
            .unwrap(),
        jobs[1..2]
    );
    assert_eq!(
        query(interval(3, 1, false, true), None, false)
            .await
            .unwrap(),
        NO_JOBS
    );
    // With other filters, a page size and descending order.
    let mut descending = jobs[0..4].to_vec();
    descending.reverse();
    assert_eq!(
        query(interval(0, 3, false, true), Some(2), true)
            .await
            .unwrap(),
        descending[..2]
    );
    let named = QueryFilters {
        name: "Ids2".into(),
        ..interval(0, 4, false, true)
    };
    assert_eq!(query(named, None, false).await.unwrap(), jobs[2..3]);
    // An open end: only the start id given.
    let open = QueryFilters {
        id_interval: Some(IdInterval {
            start_id: Some(id(jobs[3])),
            ..IdInterval::default()
        }),
        ..QueryFilters::default()
    };
    assert_eq!(query(open, None, false).await.unwrap(), jobs[3..]);

    // Automations: none submitted anything here, so none of the jobs match.
    let automations = QueryFilters {
        automation_ids: vec![id(uuid::Uuid::now_v7())],
        ..QueryFilters::default()
    };
    assert_eq!(query(automations, None, false).await.unwrap(), NO_JOBS);
    // Malformed ids are refused, naming the field.
    let malformed = QueryFilters {
        automation_ids: vec![
            id(uuid::Uuid::now_v7()),
            Id {
                uuid: vec![1, 2, 3],
            },
        ],
        ..QueryFilters::default()
    };
    let refused = query(malformed, None, false)
        .await
        .expect_err("a 3-byte id");
    assert_eq!(refused.code(), tonic::Code::InvalidArgument, "{refused}");
    assert!(
        refused.message().contains("filters.automation_ids[1]"),
        "{refused}"
    );
    let malformed = QueryFilters {
        id_interval: Some(IdInterval {
            end_id: Some(Id { uuid: vec![9; 5] }),
            ..IdInterval::default()
        }),
        ..QueryFilters::default()
    };
    let refused = query(malformed, None, false)
        .await
        .expect_err("a 5-byte id");
    assert!(
        refused.message().contains("filters.id_interval.end_id"),
        "{refused}"
    );
}

/// A job as the SDK decoded it from `GetJob` (see `job_summary` in `harness.py`).
#[derive(Debug, Deserialize)]
struct JobSummary {
    id: String,
    name: String,
    state: String,
    total_tasks: u64,
    tasks_by_state: BTreeMap<String, u64>,
}

#[derive(Debug, Deserialize)]
struct ClusterSummary {
    slug: String,
    #[serde(default)]
    display_name: String,
}

/// One execution of a task, recorded by the task itself (see `record` in `harness.py`).
#[derive(Debug, Deserialize)]
struct Event {
    kind: String,
    task_id: String,
    job_id: String,
    parent_id: Option<String>,
    depends_on: Vec<String>,
    retry_count: u64,
    outcome: String,
    index: Option<u64>,
    name: Option<String>,
    label: Option<String>,
}

fn counts(pairs: &[(&str, u64)]) -> BTreeMap<String, u64> {
    pairs
        .iter()
        .map(|(state, count)| ((*state).to_owned(), *count))
        .collect()
}

/// The events of one job, with their positions in the whole list.
fn events_of<'a>(events: &'a [Event], job_id: &str) -> Vec<(usize, &'a Event)> {
    events
        .iter()
        .enumerate()
        .filter(|(_, event)| event.job_id == job_id)
        .collect()
}

fn single_at(events: &[Event], predicate: impl Fn(&Event) -> bool) -> (usize, &Event) {
    let matching: Vec<(usize, &Event)> = events
        .iter()
        .enumerate()
        .filter(|(_, event)| predicate(event))
        .collect();
    match matching[..] {
        [one] => one,
        _ => panic!("expected exactly one matching execution, got {matching:#?}"),
    }
}

fn single(events: &[Event], predicate: impl Fn(&Event) -> bool) -> &Event {
    single_at(events, predicate).1
}

/// [`run_script`] on `servers`: submitting through one, its runners on the other
/// (`TILEBOX_RUNNER_API_URL`).
fn run_script_on<T: serde::de::DeserializeOwned>(
    servers: &Servers,
    name: &str,
    args: &[&str],
) -> T {
    run_script_for(
        servers.submit(),
        &servers.all(),
        name,
        args,
        &[("TILEBOX_RUNNER_API_URL", Path::new(servers.runner_url()))],
    )
}

/// Runs `tests/interop/<name> <args>` with the SDK venv's Python against `server` and returns its
/// summary. The script's output and the server's stderr go to the test's captured output, which
/// the test harness shows when an assertion fails.
pub(crate) fn run_script<T: serde::de::DeserializeOwned>(
    server: &TestServer,
    name: &str,
    args: &[&str],
) -> T {
    run_script_with_env(server, name, args, &[])
}

/// [`run_script`] with extra environment variables for the script (e.g. the CA to trust).
pub(crate) fn run_script_with_env<T: serde::de::DeserializeOwned>(
    server: &TestServer,
    name: &str,
    args: &[&str],
    env: &[(&str, &Path)],
) -> T {
    run_script_for(server, &[server], name, args, env)
}

/// Runs the script against `server` (`TILEBOX_API_URL`, and `TILEBOX_RUNNER_API_URL` unless
/// `env` names another), printing the stderr tail of every one of `servers`.
fn run_script_for<T: serde::de::DeserializeOwned>(
    server: &TestServer,
    servers: &[&TestServer],
    name: &str,
    args: &[&str],
    env: &[(&str, &Path)],
) -> T {
    static RUNS: AtomicUsize = AtomicUsize::new(0);
    let python = sdk_python();
    let script = scripts_dir().join(name);
    let run = RUNS.fetch_add(1, Ordering::Relaxed);
    let stdout_path = server.temp_dir().join(format!("{name}.{run}.stdout"));
    let stderr_path = server.temp_dir().join(format!("{name}.{run}.stderr"));
    let mut child = Command::new(&python)
        .arg(&script)
        .args(args)
        .current_dir(server.temp_dir())
        .env("TILEBOX_API_URL", server.url())
        // Always set (`harness.connect_runner` has no fallback); `env` may name another replica.
        .env("TILEBOX_RUNNER_API_URL", server.url())
        .env("PYTHONUNBUFFERED", "1")
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .env_remove("TILEBOX_API_KEY")
        .env_remove("TILEBOX_RUNTIME_DIR")
        .env_remove("TILEBOX_RUNTIME_TOKEN")
        .env_remove("TILEBOX_WORKER_ADDRESS")
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(
            File::create(&stdout_path)
                .expect("cannot create the script's stdout file")
                .into_file(),
        )
        .stderr(
            File::create(&stderr_path)
                .expect("cannot create the script's stderr file")
                .into_file(),
        )
        // Its own process group, so the SDK's lease-renewer process goes down with it.
        .process_group(0)
        .spawn()
        .unwrap_or_else(|error| {
            panic!(
                "cannot run {} {}: {error}",
                python.display(),
                script.display()
            )
        });

    let status = wait_for_exit(&mut child, format!("{name} to finish"), SCRIPT_TIMEOUT);
    kill_process_group(child.id());
    let _ = child.wait();

    let stdout = fs_err::read_to_string(&stdout_path).unwrap_or_default();
    println!(
        "--- {name} stdout (tail) ---\n{}",
        tail_of_file(&stdout_path, OUTPUT_TAIL_BYTES)
    );
    println!(
        "--- {name} stderr (tail) ---\n{}",
        tail_of_file(&stderr_path, OUTPUT_TAIL_BYTES)
    );
    for (index, each) in servers.iter().enumerate() {
        let label = match servers.len() {
            1 => "server".to_string(),
            _ => format!("replica {index} ({})", each.url()),
        };
        println!(
            "--- {label} stderr (tail) ---\n{}",
            tail_of_string(&each.stderr(), OUTPUT_TAIL_BYTES)
        );
    }

    let status = status
        .unwrap_or_else(|timed_out| panic!("{timed_out}; it was killed (its output is above)"));
    assert!(
        status.success(),
        "{name} failed with {status} (its output is above)"
    );
    let line = stdout
        .lines()
        .rev()
        .find_map(|line| line.strip_prefix(SUMMARY_PREFIX))
        .unwrap_or_else(|| panic!("{name} printed no `{SUMMARY_PREFIX}...` line"));
    println!("--- {name} summary ---\n{line}");
    serde_json::from_str(line)
        .unwrap_or_else(|error| panic!("{name}: the summary does not parse: {error}"))
}

fn scripts_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests")
        .join("interop")
}

/// SIGKILL to a process group that a test started; an empty group is fine.
fn kill_process_group(leader: u32) {
    let _ = Command::new("kill")
        .args(["-KILL", "--", &format!("-{leader}")])
        .stderr(Stdio::null())
        .status();
}

fn tail_of_string(text: &str, bytes: u64) -> &str {
    let mut start = text.len().saturating_sub(bytes as usize);
    while !text.is_char_boundary(start) {
        start += 1;
    }
    &text[start..]
}
