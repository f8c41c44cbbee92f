//! The conformance suite every `Store` backend passes: one async check per scheduling rule.
//!
//! A backend's tests invoke [`conformance_tests!`] with an expression that opens a fresh,
//! empty store and answers it with a guard that keeps its resources (e.g. a temp dir) alive;
//! it expands to one `#[tokio::test]` per rule, named after the rule, so a failing rule
//! hides none of the others. Each check drives its store only through the [`Store`] trait and
//! asserts the states and counts a reader (the API, the SDK) would see. The rules are
//! DESIGN.md §4 and the SDK reference §1.3, §5.5.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use uuid::Uuid;

use super::{
    Artifact, ClaimRequest, ClaimedTask, Cluster, ComputedReport, DEFAULT_CLUSTER_SLUG, Error,
    FailedReport, Identifier, JobFilter, MAX_LEASE_REQUEUES, NewJob, NewTask, Page, Progress,
    Release, ReportOutcome, Store, TaskSummary, TelemetryKind, TelemetryRecord, Workflow,
};
use crate::api::convert::now_millis;
use crate::api::workflows_v1::{JobState, TaskState};

/// One `#[tokio::test]` per rule of the suite, each on a fresh store from `$open`: an
/// expression whose future answers `(store, guard)`; the guard is dropped after the check.
///
/// ```ignore
/// mod conformance {
///     use super::*;
///     crate::server::store::conformance::conformance_tests!(async {
///         let directory = tempfile::tempdir().expect("temp dir");
///         (SqliteStore::open(directory.path()).expect("open store"), directory)
///     });
/// }
/// ```
macro_rules! conformance_tests {
    ($open:expr) => {
        $crate::server::store::conformance::conformance_tests!(
            @rules $open;
            clusters_have_a_fixed_default,
            submitting_to_an_unknown_cluster_stores_nothing,
            claims_match_cluster_name_and_compatible_version,
            claimed_task_runs_once_and_drives_job_state,
            dependants_wait_for_the_whole_dependency_tree,
            subtasks_run_after_their_parent_and_complete_the_job,
            workflow_errors_retry_until_max_retries_then_fail_the_job,
            non_workflow_errors_requeue_without_counting,
            failed_optional_subtask_lets_its_dependant_run,
            failure_inside_optional_branch_skips_the_rest_of_it,
            retry_job_requeues_failed_tasks_and_resumes,
            cancel_job_stops_queued_tasks_and_lets_running_ones_finish,
            lease_expiry_requeues_then_fails_the_task,
            reports_from_a_lost_lease_are_stale,
            extend_lease_keeps_a_running_task,
            progress_is_per_task_and_summed_per_job,
            list_tasks_pages_children_in_submission_order,
            query_jobs_filters_and_pages,
            execution_stats_follow_the_tasks,
            concurrent_submits_and_claims_complete_every_job_once,
            workflows_are_managed_and_kept_while_deployed,
            artifacts_are_registered_once_per_digest,
            publishing_is_idempotent_per_artifact_and_fingerprint,
            a_cluster_runs_one_release_per_workflow,
            telemetry_is_read_per_trace_in_arrival_order_and_expires,
            deleting_a_cluster_removes_its_deployments,
        );
    };
    (@rules $open:expr; $($rule:ident,)+) => {$(
        #[tokio::test]
        async fn $rule() {
            let (store, guard) = $open.await;
            $crate::server::store::conformance::$rule(store).await;
            drop(guard);
        }
    )+};
}
pub(crate) use conformance_tests;

const LEASE: Duration = Duration::from_secs(30);
const RUNNER_A: &str = "runner-a";
const RUNNER_B: &str = "runner-b";
/// A page large enough for every list in this suite.
const EVERYTHING: Page = Page {
    after: None,
    limit: 1_000,
    descending: false,
};

fn identifier(name: &str, major: u64, minor: u64) -> Identifier {
    Identifier {
        name: name.to_string(),
        version: format!("v{major}.{minor}"),
        major,
        minor,
    }
}

/// A task `name v1.0` on the default cluster: no retries, not optional, no dependencies.
fn task(name: &str) -> NewTask {
    NewTask {
        id: Uuid::now_v7(),
        identifier: identifier(name, 1, 0),
        input: format!("{name} input").into_bytes(),
        display: name.to_string(),
        cluster: DEFAULT_CLUSTER_SLUG.to_string(),
        max_retries: 0,
        optional: false,
        depends_on: Vec::new(),
    }
}

fn job(name: &str, tasks: Vec<NewTask>) -> NewJob {
    NewJob {
        id: Uuid::now_v7(),
        name: name.to_string(),
        trace_parent: "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".to_string(),
        tasks,
    }
}

/// A runner on `cluster` advertising `identifiers`.
fn claim_request(claimant: &str, cluster: &str, identifiers: Vec<Identifier>) -> ClaimRequest {
    ClaimRequest {
        cluster: cluster.to_string(),
        identifiers,
        claimant: claimant.to_string(),
        lease: LEASE,
    }
}

/// A runner on the default cluster advertising `name v1.0` for each of `names`.
fn runner(claimant: &str, names: &[&str]) -> ClaimRequest {
    let identifiers = names.iter().map(|name| identifier(name, 1, 0)).collect();
    claim_request(claimant, DEFAULT_CLUSTER_SLUG, identifiers)
}

fn computed(task: &ClaimedTask, claimant: &str) -> ComputedReport {
    ComputedReport {
        task_id: task.id,
        claimant: claimant.to_string(),
        display: task.display.clone(),
        progress: Vec::new(),
        subtasks: Vec::new(),
    }
}

fn computed_with_subtasks(
    task: &ClaimedTask,
    claimant: &str,
    subtasks: Vec<NewTask>,
) -> ComputedReport {
    ComputedReport {
        subtasks,
        ..computed(task, claimant)
    }
}

fn failed(task: &ClaimedTask, claimant: &str, workflow_error: bool) -> FailedReport {
    FailedReport {
        task_id: task.id,
        claimant: claimant.to_string(),
        display: format!("{}\nValueError('boom')", task.display),
        workflow_error,
        progress: Vec::new(),
    }
}

fn progress(label: Option<&str>, total: u64, done: u64) -> Progress {
    Progress {
        label: label.map(str::to_string),
        total,
        done,
    }
}

async fn submit<S: Store>(store: &S, new_job: NewJob) -> Uuid {
    let id = new_job.id;
    let submitted = store.submit_job(new_job).await.expect("submit a job");
    assert_eq!(submitted.id, id, "the stored job keeps its id");
    assert_eq!(
        submitted.state,
        JobState::Submitted,
        "a new job is submitted"
    );
    id
}

async fn claim<S: Store>(store: &S, request: &ClaimRequest) -> Option<ClaimedTask> {
    let (outcome, claimed) = store
        .report_and_claim(None, Some(request.clone()))
        .await
        .expect("claim a task");
    assert_eq!(
        outcome, None,
        "a claim without a report has no report outcome"
    );
    claimed
}

async fn claim_one<S: Store>(store: &S, request: &ClaimRequest) -> ClaimedTask {
    claim(store, request)
        .await
        .unwrap_or_else(|| panic!("a task should be claimable by {request:?}"))
}

async fn report<S: Store>(store: &S, report: ComputedReport) -> ReportOutcome {
    let (outcome, claimed) = store
        .report_and_claim(Some(report), None)
        .await
        .expect("report a task");
    assert!(
        claimed.is_none(),
        "a report without a claim hands out nothing"
    );
    outcome.expect("a report has an outcome")
}

async fn fail<S: Store>(store: &S, report: FailedReport) -> ReportOutcome {
    store.fail_task(report).await.expect("report a failure")
}

async fn job_state<S: Store>(store: &S, job: Uuid) -> JobState {
    store.get_job(job).await.expect("get job").state
}

async fn tasks_by_state<S: Store>(store: &S, job: Uuid) -> Vec<(TaskState, u64)> {
    store
        .get_job(job)
        .await
        .expect("get job")
        .stats
        .tasks_by_state
}

/// Every task of `job`, each after its parent, siblings in submission order.
async fn all_tasks<S: Store>(store: &S, job: Uuid) -> Vec<TaskSummary> {
    let mut found = Vec::new();
    let mut pending = vec![None];
    while let Some(parent) = pending.pop() {
        let children = store
            .list_tasks(job, parent, EVERYTHING)
            .await
            .expect("list tasks");
        pending.extend(
            children
                .iter()
                .rev()
                .filter(|child| child.has_children)
                .map(|child| Some(child.id)),
        );
        found.extend(children);
    }
    found
}

async fn task_summary<S: Store>(store: &S, job: Uuid, task: Uuid) -> TaskSummary {
    all_tasks(store, job)
        .await
        .into_iter()
        .find(|summary| summary.id == task)
        .unwrap_or_else(|| panic!("task {task} is listed in job {job}"))
}

async fn task_state<S: Store>(store: &S, job: Uuid, task: Uuid) -> TaskState {
    task_summary(store, job, task).await.state
}

fn sorted<T: Ord>(mut items: Vec<T>) -> Vec<T> {
    items.sort();
    items
}

/// Rule 1: the default cluster exists and cannot be deleted; clusters are created, read,
/// listed, updated and deleted; duplicates and unknown slugs are errors.
pub(crate) async fn clusters_have_a_fixed_default<S: Store>(store: S) {
    let clusters = store.list_clusters().await.expect("list clusters");
    assert_eq!(
        clusters.len(),
        1,
        "a fresh store has exactly the default cluster: {clusters:?}"
    );
    assert_eq!(clusters[0].slug, DEFAULT_CLUSTER_SLUG);
    assert!(
        !clusters[0].deletable,
        "the default cluster is not deletable"
    );
    let default = store
        .get_cluster(DEFAULT_CLUSTER_SLUG)
        .await
        .expect("get default cluster");
    assert_eq!(default, clusters[0]);
    let refused = store.delete_cluster(DEFAULT_CLUSTER_SLUG).await;
    assert!(
        matches!(&refused, Err(Error::ClusterNotDeletable { slug, .. }) if slug == DEFAULT_CLUSTER_SLUG),
        "deleting the default cluster is refused: {refused:?}"
    );

    let gpu = Cluster {
        slug: "gpu".to_string(),
        name: "GPU".to_string(),
        description: "machines with a GPU".to_string(),
        deletable: true,
    };
    assert_eq!(
        store
            .create_cluster(gpu.clone())
            .await
            .expect("create cluster"),
        gpu
    );
    assert_eq!(store.get_cluster("gpu").await.expect("get cluster"), gpu);
    let slugs: Vec<String> = store
        .list_clusters()
        .await
        .expect("list clusters")
        .into_iter()
        .map(|cluster| cluster.slug)
        .collect();
    assert_eq!(sorted(slugs), ["default", "gpu"]);
    let duplicate = store
        .create_cluster(Cluster {
            name: "Another GPU".to_string(),
            ..gpu.clone()
        })
        .await;
    assert!(
        matches!(&duplicate, Err(Error::ClusterExists { slug }) if slug == "gpu"),
        "a duplicate slug is refused: {duplicate:?}"
    );
    assert_eq!(
        store.get_cluster("gpu").await.expect("get cluster").name,
        "GPU",
        "the duplicate changed nothing"
    );

    let renamed = store
        .update_cluster("gpu", Some("Graphics".to_string()), None)
        .await
        .expect("rename cluster");
    assert_eq!(
        (renamed.name.as_str(), renamed.description.as_str()),
        ("Graphics", "machines with a GPU")
    );
    let described = store
        .update_cluster("gpu", None, Some("A100 nodes".to_string()))
        .await
        .expect("describe cluster");
    assert_eq!(
        (described.name.as_str(), described.description.as_str()),
        ("Graphics", "A100 nodes")
    );
    assert_eq!(
        store.get_cluster("gpu").await.expect("get cluster"),
        described
    );

    // A cluster with queued work is kept until the work is done.
    let work = NewTask {
        cluster: "gpu".to_string(),
        ..task("Work")
    };
    let job_id = submit(&store, job("on-gpu", vec![work])).await;
    let busy = store.delete_cluster("gpu").await;
    assert!(
        matches!(&busy, Err(Error::ClusterNotDeletable { slug, .. }) if slug == "gpu"),
        "a cluster with queued tasks is not deleted: {busy:?}"
    );
    let gpu_runner = claim_request(RUNNER_A, "gpu", vec![identifier("Work", 1, 0)]);
    let claimed = claim_one(&store, &gpu_runner).await;
    report(&store, computed(&claimed, RUNNER_A)).await;
    assert_eq!(job_state(&store, job_id).await, JobState::Completed);

    store.delete_cluster("gpu").await.expect("delete cluster");
    let gone = store.get_cluster("gpu").await;
    assert!(
        matches!(&gone, Err(Error::ClusterNotFound { slug }) if slug == "gpu"),
        "a deleted cluster is gone: {gone:?}"
    );
    let again = store.delete_cluster("gpu").await;
    assert!(
        matches!(&again, Err(Error::ClusterNotFound { .. })),
        "deleting twice: {again:?}"
    );
    let unknown = store
        .update_cluster("nowhere", Some("x".to_string()), None)
        .await;
    assert!(
        matches!(&unknown, Err(Error::ClusterNotFound { slug }) if slug == "nowhere"),
        "updating an unknown cluster: {unknown:?}"
    );
    assert_eq!(store.list_clusters().await.expect("list clusters").len(), 1);
}

/// Rule 2: a job naming an unknown cluster is refused whole.
pub(crate) async fn submitting_to_an_unknown_cluster_stores_nothing<S: Store>(store: S) {
    let stray = NewTask {
        cluster: "nowhere".to_string(),
        ..task("Stray")
    };
    let refused = job("half-valid", vec![task("Fine"), stray]);
    let id = refused.id;
    let result = store.submit_job(refused).await;
    assert!(
        matches!(&result, Err(Error::ClusterNotFound { slug }) if slug == "nowhere"),
        "an unknown cluster is refused: {result:?}"
    );
    let jobs = store
        .query_jobs(JobFilter::default(), EVERYTHING)
        .await
        .expect("query jobs");
    assert!(jobs.is_empty(), "nothing was stored: {jobs:?}");
    assert!(
        store
            .job_state_counts()
            .await
            .expect("count jobs")
            .is_empty()
    );
    let missing = store.get_job(id).await;
    assert!(
        matches!(&missing, Err(Error::JobNotFound { id: found }) if *found == id),
        "{missing:?}"
    );
    assert!(
        claim(&store, &runner(RUNNER_A, &["Fine", "Stray"]))
            .await
            .is_none(),
        "no task of the refused job can be claimed"
    );
}

/// Rule 3: a task goes only to a runner on its cluster advertising its name, its major and a
/// minor at least the submitted one; it is handed out carrying the runner's identifier.
pub(crate) async fn claims_match_cluster_name_and_compatible_version<S: Store>(store: S) {
    store
        .create_cluster(Cluster {
            slug: "gpu".to_string(),
            name: "GPU".to_string(),
            description: String::new(),
            deletable: true,
        })
        .await
        .expect("create cluster");
    let input = vec![0x00, 0x9f, 0x92, 0x96, 0xff, b'{', 0x00];
    let versioned = NewTask {
        identifier: identifier("Versioned", 1, 3),
        cluster: "gpu".to_string(),
        input: input.clone(),
        ..task("Versioned")
    };
    let task_id = versioned.id;
    let job_id = submit(&store, job("versions", vec![versioned])).await;

    let gpu = |identifiers: Vec<Identifier>| claim_request(RUNNER_A, "gpu", identifiers);
    let refusals = [
        (
            "another cluster",
            claim_request(
                RUNNER_A,
                DEFAULT_CLUSTER_SLUG,
                vec![identifier("Versioned", 1, 5)],
            ),
        ),
        ("another name", gpu(vec![identifier("Other", 1, 5)])),
        ("a lower minor", gpu(vec![identifier("Versioned", 1, 2)])),
        ("another major", gpu(vec![identifier("Versioned", 2, 5)])),
        (
            "neither",
            gpu(vec![
                identifier("Versioned", 1, 2),
                identifier("Versioned", 2, 5),
            ]),
        ),
        ("nothing advertised", gpu(Vec::new())),
    ];
    for (why, request) in &refusals {
        assert!(
            claim(&store, request).await.is_none(),
            "a runner with {why} gets nothing"
        );
    }
    assert_eq!(task_state(&store, job_id, task_id).await, TaskState::Queued);

    let claimed = claim_one(
        &store,
        &gpu(vec![
            identifier("Other", 1, 5),
            identifier("Versioned", 1, 5),
        ]),
    )
    .await;
    assert_eq!(claimed.id, task_id);
    assert_eq!(
        claimed.identifier,
        identifier("Versioned", 1, 5),
        "the runner's identifier is handed out"
    );
    assert_eq!(claimed.identifier.version, "v1.5");
    assert_eq!(claimed.input, input, "inputs are opaque bytes");
    assert_eq!(claimed.display, "Versioned");
    assert_eq!(claimed.lease, LEASE);
    assert_eq!(claimed.job.id, job_id);
    let summary = task_summary(&store, job_id, task_id).await;
    assert_eq!(
        summary.identifier,
        identifier("Versioned", 1, 3),
        "the submitted version is kept"
    );
    assert_eq!(summary.input, input);

    // Of several compatible versions, the highest advertised minor runs it.
    let second = NewTask {
        identifier: identifier("Versioned", 1, 3),
        cluster: "gpu".to_string(),
        ..task("Versioned")
    };
    let second_id = second.id;
    submit(&store, job("versions-again", vec![second])).await;
    let advertised = vec![
        identifier("Versioned", 1, 4),
        identifier("Versioned", 1, 7),
        identifier("Versioned", 1, 3),
        identifier("Versioned", 2, 9),
    ];
    let claimed = claim_one(&store, &gpu(advertised)).await;
    assert_eq!(claimed.id, second_id);
    assert_eq!(claimed.identifier, identifier("Versioned", 1, 7));
    assert!(
        claim(&store, &gpu(vec![identifier("Versioned", 1, 9)]))
            .await
            .is_none()
    );
}

/// Rule 4: a claimed task is RUNNING and handed out once; the job is SUBMITTED before any
/// claim, RUNNING while a task runs, STARTED when none runs and some wait.
pub(crate) async fn claimed_task_runs_once_and_drives_job_state<S: Store>(store: S) {
    let job_id = submit(&store, job("twice", vec![task("Work"), task("Work")])).await;
    assert_eq!(job_state(&store, job_id).await, JobState::Submitted);
    let workers = runner(RUNNER_A, &["Work"]);

    let first = claim_one(&store, &workers).await;
    assert_eq!(
        task_state(&store, job_id, first.id).await,
        TaskState::Running
    );
    assert_eq!(
        first.job.state,
        JobState::Running,
        "the claimed task carries its running job"
    );
    assert_eq!(job_state(&store, job_id).await, JobState::Running);
    let second = claim_one(&store, &runner(RUNNER_B, &["Work"])).await;
    assert_ne!(
        second.id, first.id,
        "a running task is not handed out again"
    );
    assert!(
        claim(&store, &workers).await.is_none(),
        "both tasks run; nothing is left"
    );
    assert_eq!(
        tasks_by_state(&store, job_id).await,
        [(TaskState::Running, 2)]
    );

    assert_eq!(
        report(&store, computed(&first, RUNNER_A)).await,
        ReportOutcome::Applied(TaskState::Computed)
    );
    assert_eq!(
        job_state(&store, job_id).await,
        JobState::Running,
        "one task still runs"
    );
    assert_eq!(
        report(&store, computed(&second, RUNNER_B)).await,
        ReportOutcome::Applied(TaskState::Computed)
    );
    assert_eq!(job_state(&store, job_id).await, JobState::Completed);
    assert_eq!(
        tasks_by_state(&store, job_id).await,
        [(TaskState::Computed, 2)]
    );
    assert!(
        claim(&store, &workers).await.is_none(),
        "a computed task is not handed out again"
    );

    let halfway = submit(&store, job("halfway", vec![task("Work"), task("Work")])).await;
    let claimed = claim_one(&store, &workers).await;
    report(&store, computed(&claimed, RUNNER_A)).await;
    assert_eq!(
        job_state(&store, halfway).await,
        JobState::Started,
        "none runs, one waits"
    );
}

/// Rule 5: a dependant runs only after its dependency is computed with all descendants done.
pub(crate) async fn dependants_wait_for_the_whole_dependency_tree<S: Store>(store: S) {
    let first = task("First");
    let first_id = first.id;
    let then = NewTask {
        depends_on: vec![0],
        ..task("Then")
    };
    let then_id = then.id;
    let job_id = submit(&store, job("dependencies", vec![first, then])).await;
    let everyone = runner(RUNNER_A, &["First", "Then", "Nested"]);

    let claimed = claim_one(&store, &everyone).await;
    assert_eq!(claimed.id, first_id, "only the dependency is claimable");
    assert!(
        claim(&store, &everyone).await.is_none(),
        "the dependant waits for a running dependency"
    );

    let nested = task("Nested");
    let nested_id = nested.id;
    let outcome = report(
        &store,
        computed_with_subtasks(&claimed, RUNNER_A, vec![nested]),
    )
    .await;
    assert_eq!(outcome, ReportOutcome::Applied(TaskState::Computed));
    let claimed = claim_one(&store, &everyone).await;
    assert_eq!(
        claimed.id, nested_id,
        "the dependency's subtask runs; the dependant still waits"
    );
    assert!(
        claim(&store, &everyone).await.is_none(),
        "the dependant waits for the dependency's subtasks"
    );
    assert_eq!(task_state(&store, job_id, then_id).await, TaskState::Queued);

    report(&store, computed(&claimed, RUNNER_A)).await;
    let claimed = claim_one(&store, &everyone).await;
    assert_eq!(
        claimed.id, then_id,
        "the dependant runs once the dependency's tree is done"
    );
    assert_eq!(claimed.depends_on, [first_id]);
    report(&store, computed(&claimed, RUNNER_A)).await;
    assert_eq!(job_state(&store, job_id).await, JobState::Completed);
    assert_eq!(
        tasks_by_state(&store, job_id).await,
        [(TaskState::Computed, 3)]
    );
}

/// Rule 6: subtasks of a computed parent are claimable; the parent stays COMPUTED and the
/// job completes only when every descendant is computed.
pub(crate) async fn subtasks_run_after_their_parent_and_complete_the_job<S: Store>(store: S) {
    let job_id = submit(&store, job("tree", vec![task("Root")])).await;
    let everyone = runner(RUNNER_A, &["Root", "Leaf", "Branch", "Twig"]);
    let root = claim_one(&store, &everyone).await;
    report(
        &store,
        computed_with_subtasks(&root, RUNNER_A, vec![task("Leaf"), task("Branch")]),
    )
    .await;

    assert_eq!(
        task_state(&store, job_id, root.id).await,
        TaskState::Computed
    );
    assert_eq!(job_state(&store, job_id).await, JobState::Started);
    let job = store.get_job(job_id).await.expect("get job");
    assert_eq!(job.stats.total_tasks, 3);
    assert_eq!(
        job.stats.tasks_by_state,
        [(TaskState::Queued, 2), (TaskState::Computed, 1)]
    );

    let leaf = claim_one(&store, &everyone).await;
    let branch = claim_one(&store, &everyone).await;
    assert_eq!(leaf.parent_id, Some(root.id));
    assert_eq!(branch.parent_id, Some(root.id));
    assert_eq!(job_state(&store, job_id).await, JobState::Running);
    assert_eq!(
        tasks_by_state(&store, job_id).await,
        [(TaskState::Running, 2), (TaskState::Computed, 1)]
    );

    report(&store, computed(&leaf, RUNNER_A)).await;
    report(
        &store,
        computed_with_subtasks(&branch, RUNNER_A, vec![task("Twig")]),
    )
    .await;
    assert_eq!(
        task_state(&store, job_id, root.id).await,
        TaskState::Computed,
        "the parent stays computed"
    );
    assert_eq!(
        job_state(&store, job_id).await,
        JobState::Started,
        "a grandchild is still queued"
    );
    assert_eq!(
        tasks_by_state(&store, job_id).await,
        [(TaskState::Queued, 1), (TaskState::Computed, 3)]
    );

    let twig = claim_one(&store, &everyone).await;
    assert_eq!(twig.parent_id, Some(branch.id));
    report(&store, computed(&twig, RUNNER_A)).await;
    let job = store.get_job(job_id).await.expect("get job");
    assert_eq!(job.state, JobState::Completed);
    assert_eq!(job.stats.total_tasks, 4);
    assert_eq!(job.stats.tasks_by_state, [(TaskState::Computed, 4)]);
}

/// Rule 7: a workflow error re-queues while retries remain, then fails the task and the
/// job, which stops its other tasks.
pub(crate) async fn workflow_errors_retry_until_max_retries_then_fail_the_job<S: Store>(store: S) {
    let flaky = NewTask {
        max_retries: 2,
        ..task("Flaky")
    };
    let flaky_id = flaky.id;
    let other = task("Other");
    let other_id = other.id;
    let job_id = submit(&store, job("retries", vec![flaky, other])).await;
    let flaky_runner = runner(RUNNER_A, &["Flaky"]);

    for attempt in 0..2 {
        let claimed = claim_one(&store, &flaky_runner).await;
        assert_eq!((claimed.id, claimed.retry_count), (flaky_id, attempt));
        let outcome = fail(&store, failed(&claimed, RUNNER_A, true)).await;
        assert_eq!(
            outcome,
            ReportOutcome::Applied(TaskState::Queued),
            "attempt {attempt} has retries left"
        );
        let summary = task_summary(&store, job_id, flaky_id).await;
        assert_eq!(
            (summary.state, summary.retry_count),
            (TaskState::Queued, attempt + 1)
        );
        assert_ne!(job_state(&store, job_id).await, JobState::Failed);
    }

    let claimed = claim_one(&store, &flaky_runner).await;
    assert_eq!(claimed.retry_count, 2);
    assert_eq!(
        fail(&store, failed(&claimed, RUNNER_A, true)).await,
        ReportOutcome::Applied(TaskState::Failed)
    );
    let summary = task_summary(&store, job_id, flaky_id).await;
    assert_eq!((summary.state, summary.retry_count), (TaskState::Failed, 2));
    assert_eq!(job_state(&store, job_id).await, JobState::Failed);
    assert!(
        claim(&store, &runner(RUNNER_B, &["Flaky", "Other"]))
            .await
            .is_none(),
        "a failed job hands out nothing"
    );
    assert_eq!(
        task_state(&store, job_id, other_id).await,
        TaskState::Queued
    );
    assert_eq!(
        tasks_by_state(&store, job_id).await,
        [(TaskState::Queued, 1), (TaskState::Failed, 1)]
    );
}

/// Rule 8: a failure that is not the task's own (the runner could not run it) re-queues the
/// task without counting a retry.
pub(crate) async fn non_workflow_errors_requeue_without_counting<S: Store>(store: S) {
    let shaky = task("Shaky");
    let shaky_id = shaky.id;
    let job_id = submit(&store, job("shaky", vec![shaky])).await;
    let shaky_runner = runner(RUNNER_A, &["Shaky"]);
    for _ in 0..3 {
        let claimed = claim_one(&store, &shaky_runner).await;
        assert_eq!((claimed.id, claimed.retry_count), (shaky_id, 0));
        let outcome = fail(&store, failed(&claimed, RUNNER_A, false)).await;
        assert_eq!(
            outcome,
            ReportOutcome::Applied(TaskState::Queued),
            "max_retries 0 does not matter"
        );
        let summary = task_summary(&store, job_id, shaky_id).await;
        assert_eq!((summary.state, summary.retry_count), (TaskState::Queued, 0));
        assert_ne!(job_state(&store, job_id).await, JobState::Failed);
    }
    let claimed = claim_one(&store, &shaky_runner).await;
    report(&store, computed(&claimed, RUNNER_A)).await;
    assert_eq!(job_state(&store, job_id).await, JobState::Completed);
}

/// Rule 9 (SDK reference §5.5, optional subtask): an optional task that fails ends
/// FAILED_OPTIONAL and its dependant still runs.
pub(crate) async fn failed_optional_subtask_lets_its_dependant_run<S: Store>(store: S) {
    let job_id = submit(&store, job("optional-subtask", vec![task("Root")])).await;
    let root = claim_one(&store, &runner(RUNNER_A, &["Root"])).await;
    let failing = NewTask {
        optional: true,
        ..task("Failing")
    };
    let failing_id = failing.id;
    let succeeding = NewTask {
        depends_on: vec![0],
        ..task("Succeeding")
    };
    report(
        &store,
        computed_with_subtasks(&root, RUNNER_A, vec![failing, succeeding]),
    )
    .await;

    assert!(
        claim(&store, &runner(RUNNER_A, &["Succeeding"]))
            .await
            .is_none(),
        "the dependant waits"
    );
    let claimed = claim_one(&store, &runner(RUNNER_A, &["Failing"])).await;
    assert_eq!(claimed.id, failing_id);
    let outcome = fail(&store, failed(&claimed, RUNNER_A, true)).await;
    assert_eq!(outcome, ReportOutcome::Applied(TaskState::FailedOptional));
    assert_ne!(
        job_state(&store, job_id).await,
        JobState::Failed,
        "an optional failure does not fail the job"
    );

    let claimed = claim_one(&store, &runner(RUNNER_A, &["Succeeding"])).await;
    assert_eq!(claimed.depends_on, [failing_id]);
    report(&store, computed(&claimed, RUNNER_A)).await;
    assert_eq!(job_state(&store, job_id).await, JobState::Completed);
    assert_eq!(
        tasks_by_state(&store, job_id).await,
        [(TaskState::Computed, 2), (TaskState::FailedOptional, 1)]
    );
}

/// Rule 10 (SDK reference §5.5, optional sub-branch): a failure below an optional task ends
/// FAILED_OPTIONAL and skips what still waits in that branch; the job completes.
pub(crate) async fn failure_inside_optional_branch_skips_the_rest_of_it<S: Store>(store: S) {
    let job_id = submit(&store, job("optional-branch", vec![task("Root")])).await;
    let root = claim_one(&store, &runner(RUNNER_A, &["Root"])).await;
    let branch = NewTask {
        optional: true,
        ..task("OptionalSubtasks")
    };
    report(
        &store,
        computed_with_subtasks(&root, RUNNER_A, vec![branch, task("Succeeding")]),
    )
    .await;

    let branch = claim_one(&store, &runner(RUNNER_A, &["OptionalSubtasks"])).await;
    let after_failing = NewTask {
        depends_on: vec![0],
        ..task("Succeeding2")
    };
    let after_failing_id = after_failing.id;
    report(
        &store,
        computed_with_subtasks(&branch, RUNNER_A, vec![task("Failing"), after_failing]),
    )
    .await;

    let succeeding = claim_one(&store, &runner(RUNNER_A, &["Succeeding"])).await;
    report(&store, computed(&succeeding, RUNNER_A)).await;
    let failing = claim_one(&store, &runner(RUNNER_A, &["Failing"])).await;
    assert_eq!(failing.parent_id, Some(branch.id));
    let outcome = fail(&store, failed(&failing, RUNNER_A, true)).await;
    assert_eq!(
        outcome,
        ReportOutcome::Applied(TaskState::FailedOptional),
        "it fails inside an optional scope"
    );

    assert!(
        claim(&store, &runner(RUNNER_A, &["Succeeding2"]))
            .await
            .is_none()
    );
    assert_eq!(
        task_state(&store, job_id, after_failing_id).await,
        TaskState::Skipped
    );
    assert_eq!(
        task_state(&store, job_id, branch.id).await,
        TaskState::Computed
    );
    assert_eq!(job_state(&store, job_id).await, JobState::Completed);
    assert_eq!(
        tasks_by_state(&store, job_id).await,
        [
            (TaskState::Computed, 3),
            (TaskState::Skipped, 1),
            (TaskState::FailedOptional, 1)
        ]
    );

    // A task of the branch that was running when it failed finishes; what it submits then
    // is skipped at once.
    let job_id = submit(&store, job("optional-branch-running", vec![task("Root")])).await;
    let root = claim_one(&store, &runner(RUNNER_A, &["Root"])).await;
    let branch = NewTask {
        optional: true,
        ..task("OptionalSubtasks")
    };
    report(
        &store,
        computed_with_subtasks(&root, RUNNER_A, vec![branch]),
    )
    .await;
    let branch = claim_one(&store, &runner(RUNNER_A, &["OptionalSubtasks"])).await;
    report(
        &store,
        computed_with_subtasks(&branch, RUNNER_A, vec![task("Busy"), task("Failing")]),
    )
    .await;
    let busy = claim_one(&store, &runner(RUNNER_A, &["Busy"])).await;
    let failing = claim_one(&store, &runner(RUNNER_B, &["Failing"])).await;
    let outcome = fail(&store, failed(&failing, RUNNER_B, true)).await;
    assert_eq!(outcome, ReportOutcome::Applied(TaskState::FailedOptional));
    assert_eq!(
        job_state(&store, job_id).await,
        JobState::Running,
        "Busy still runs"
    );
    let deep = task("Deep");
    let deep_id = deep.id;
    let outcome = report(&store, computed_with_subtasks(&busy, RUNNER_A, vec![deep])).await;
    assert_eq!(outcome, ReportOutcome::Applied(TaskState::Computed));
    assert_eq!(
        task_state(&store, job_id, deep_id).await,
        TaskState::Skipped
    );
    assert!(claim(&store, &runner(RUNNER_A, &["Deep"])).await.is_none());
    assert_eq!(job_state(&store, job_id).await, JobState::Completed);
    assert_eq!(
        tasks_by_state(&store, job_id).await,
        [
            (TaskState::Computed, 3),
            (TaskState::Skipped, 1),
            (TaskState::FailedOptional, 1)
        ]
    );
}

/// Rule 11: retrying a failed job re-queues its failed tasks and resumes it (RUNNING at
/// once, as the SDK's recorded tests read it); a completed job has nothing to retry.
pub(crate) async fn retry_job_requeues_failed_tasks_and_resumes<S: Store>(store: S) {
    let flaky = task("Flaky");
    let flaky_id = flaky.id;
    let job_id = submit(&store, job("flaky", vec![flaky, task("Other")])).await;
    let flaky_runner = runner(RUNNER_A, &["Flaky"]);

    for round in 0..2 {
        let claimed = claim_one(&store, &flaky_runner).await;
        assert_eq!(claimed.id, flaky_id);
        assert_eq!(
            fail(&store, failed(&claimed, RUNNER_A, true)).await,
            ReportOutcome::Applied(TaskState::Failed)
        );
        assert_eq!(
            job_state(&store, job_id).await,
            JobState::Failed,
            "round {round}"
        );
        assert_eq!(
            store.retry_job(job_id).await.expect("retry job"),
            1,
            "one failed task is re-queued"
        );
        assert_eq!(
            job_state(&store, job_id).await,
            JobState::Running,
            "a retried job is running at once"
        );
        assert_eq!(
            task_state(&store, job_id, flaky_id).await,
            TaskState::Queued
        );
    }

    let claimed = claim_one(&store, &flaky_runner).await;
    report(&store, computed(&claimed, RUNNER_A)).await;
    let other = claim_one(&store, &runner(RUNNER_A, &["Other"])).await;
    report(&store, computed(&other, RUNNER_A)).await;
    assert_eq!(job_state(&store, job_id).await, JobState::Completed);
    assert_eq!(
        tasks_by_state(&store, job_id).await,
        [(TaskState::Computed, 2)]
    );

    assert_eq!(
        store.retry_job(job_id).await.expect("retry completed job"),
        0
    );
    assert_eq!(job_state(&store, job_id).await, JobState::Completed);
    let missing = store.retry_job(Uuid::now_v7()).await;
    assert!(
        matches!(missing, Err(Error::JobNotFound { .. })),
        "{missing:?}"
    );
}

/// Rule 12: a canceled job starts nothing new, a running task's result is still taken, and
/// retry resumes the job.
pub(crate) async fn cancel_job_stops_queued_tasks_and_lets_running_ones_finish<S: Store>(store: S) {
    let waiting = task("Waiting");
    let waiting_id = waiting.id;
    let job_id = submit(&store, job("canceled", vec![task("Slow"), waiting])).await;
    let slow = claim_one(&store, &runner(RUNNER_A, &["Slow"])).await;

    store.cancel_job(job_id).await.expect("cancel job");
    assert_eq!(job_state(&store, job_id).await, JobState::Canceled);
    let everyone = runner(RUNNER_B, &["Slow", "Waiting", "Late"]);
    assert!(
        claim(&store, &everyone).await.is_none(),
        "a canceled job hands out nothing"
    );

    let late = task("Late");
    let late_id = late.id;
    let outcome = report(&store, computed_with_subtasks(&slow, RUNNER_A, vec![late])).await;
    assert_eq!(
        outcome,
        ReportOutcome::Applied(TaskState::Computed),
        "a running task finishes"
    );
    assert_eq!(job_state(&store, job_id).await, JobState::Canceled);
    assert!(
        claim(&store, &everyone).await.is_none(),
        "new subtasks of a canceled job do not start"
    );
    assert_eq!(
        task_state(&store, job_id, waiting_id).await,
        TaskState::Queued
    );
    assert_eq!(task_state(&store, job_id, late_id).await, TaskState::Queued);

    assert_eq!(
        store.retry_job(job_id).await.expect("retry canceled job"),
        0,
        "nothing had failed"
    );
    assert_eq!(
        job_state(&store, job_id).await,
        JobState::Running,
        "retry resumes a canceled job"
    );
    let mut resumed = HashSet::new();
    while let Some(claimed) = claim(&store, &everyone).await {
        resumed.insert(claimed.id);
        report(&store, computed(&claimed, RUNNER_B)).await;
    }
    assert_eq!(resumed, HashSet::from([waiting_id, late_id]));
    assert_eq!(job_state(&store, job_id).await, JobState::Completed);

    // Canceled while its last task ran: that task finishes, and a retry finds nothing left.
    let last = submit(&store, job("canceled-at-the-end", vec![task("Slow")])).await;
    let slow = claim_one(&store, &runner(RUNNER_A, &["Slow"])).await;
    store.cancel_job(last).await.expect("cancel job");
    report(&store, computed(&slow, RUNNER_A)).await;
    assert_eq!(
        job_state(&store, last).await,
        JobState::Canceled,
        "a canceled job stays canceled"
    );
    assert_eq!(store.retry_job(last).await.expect("retry canceled job"), 0);
    assert_eq!(
        job_state(&store, last).await,
        JobState::Completed,
        "a resumed job with every task done is completed"
    );
}

/// Rule 13: a running task whose lease ended is re-queued (and can be claimed again) up to
/// `MAX_LEASE_REQUEUES` times; the next expiry fails it and the job.
pub(crate) async fn lease_expiry_requeues_then_fails_the_task<S: Store>(store: S) {
    let lost = task("Lost");
    let lost_id = lost.id;
    let job_id = submit(&store, job("lost", vec![lost])).await;
    let lost_runner = runner(RUNNER_A, &["Lost"]);
    assert_eq!(
        store.next_lease_deadline().await.expect("next deadline"),
        None,
        "nothing runs"
    );

    for requeue in 0..MAX_LEASE_REQUEUES {
        let claimed = claim_one(&store, &lost_runner).await;
        assert_eq!(claimed.id, lost_id, "requeue {requeue}");
        let claimed_at = now_millis();
        assert!(
            store
                .next_lease_deadline()
                .await
                .expect("next deadline")
                .is_some()
        );
        assert_eq!(
            store
                .expire_leases(claimed_at - 1)
                .await
                .expect("expire leases"),
            0,
            "the lease holds"
        );
        assert_eq!(
            task_state(&store, job_id, lost_id).await,
            TaskState::Running
        );
        let expiry = claimed_at + LEASE.as_millis() as i64 + 1;
        assert_eq!(store.expire_leases(expiry).await.expect("expire leases"), 1);
        let summary = task_summary(&store, job_id, lost_id).await;
        assert_eq!(
            (summary.state, summary.retry_count),
            (TaskState::Queued, 0),
            "a lost lease re-queues without counting a retry (requeue {requeue})"
        );
        assert_ne!(job_state(&store, job_id).await, JobState::Failed);
    }

    claim_one(&store, &lost_runner).await;
    let expiry = now_millis() + LEASE.as_millis() as i64 + 1;
    assert_eq!(store.expire_leases(expiry).await.expect("expire leases"), 1);
    assert_eq!(
        task_state(&store, job_id, lost_id).await,
        TaskState::Failed,
        "too many lost leases"
    );
    assert_eq!(job_state(&store, job_id).await, JobState::Failed);
    assert!(claim(&store, &lost_runner).await.is_none());
    assert_eq!(
        store.next_lease_deadline().await.expect("next deadline"),
        None
    );
    assert_eq!(
        store.expire_leases(expiry).await.expect("expire leases"),
        0,
        "nothing is left to expire"
    );
}

/// Rule 14: once a lost lease was handed to another runner, the old claimant's reports are
/// stale and change nothing; the new claimant's report is applied.
pub(crate) async fn reports_from_a_lost_lease_are_stale<S: Store>(store: S) {
    let job_id = submit(&store, job("fenced", vec![task("Work")])).await;
    let first = claim_one(&store, &runner(RUNNER_A, &["Work"])).await;
    let expiry = now_millis() + LEASE.as_millis() as i64 + 1;
    assert_eq!(store.expire_leases(expiry).await.expect("expire leases"), 1);
    let second = claim_one(&store, &runner(RUNNER_B, &["Work"])).await;
    assert_eq!(second.id, first.id);

    let late = computed_with_subtasks(&first, RUNNER_A, vec![task("Sneaky")]);
    assert_eq!(
        report(&store, late).await,
        ReportOutcome::Stale(TaskState::Running)
    );
    assert_eq!(
        fail(&store, failed(&first, RUNNER_A, true)).await,
        ReportOutcome::Stale(TaskState::Running)
    );
    assert_eq!(
        fail(&store, failed(&first, RUNNER_A, false)).await,
        ReportOutcome::Stale(TaskState::Running)
    );
    assert_eq!(
        store
            .extend_lease(first.id, Some(RUNNER_A.to_string()), LEASE)
            .await
            .expect("extend"),
        None
    );
    let summary = task_summary(&store, job_id, first.id).await;
    assert_eq!(
        (summary.state, summary.retry_count, summary.has_children),
        (TaskState::Running, 0, false)
    );
    assert_eq!(job_state(&store, job_id).await, JobState::Running);
    assert_eq!(
        store
            .get_job(job_id)
            .await
            .expect("get job")
            .stats
            .total_tasks,
        1,
        "no subtask was added"
    );

    assert_eq!(
        report(&store, computed(&second, RUNNER_B)).await,
        ReportOutcome::Applied(TaskState::Computed)
    );
    assert_eq!(job_state(&store, job_id).await, JobState::Completed);
    assert_eq!(
        report(&store, computed(&first, RUNNER_A)).await,
        ReportOutcome::Stale(TaskState::Computed),
        "a report for an ended task is stale"
    );
    assert_eq!(
        tasks_by_state(&store, job_id).await,
        [(TaskState::Computed, 1)]
    );
}

/// Rule 15: extending a running task's lease keeps it from expiring at the old deadline;
/// a task that is not running (or not the claimant's) is not extended.
pub(crate) async fn extend_lease_keeps_a_running_task<S: Store>(store: S) {
    let job_id = submit(&store, job("extended", vec![task("Long"), task("Queued")])).await;
    let long = claim_one(&store, &runner(RUNNER_A, &["Long"])).await;
    let old_expiry = now_millis() + LEASE.as_millis() as i64 + 1;

    let longer = Duration::from_secs(120);
    let before_extension = now_millis();
    let extended = store
        .extend_lease(long.id, Some(RUNNER_A.to_string()), longer)
        .await
        .expect("extend lease");
    assert_eq!(extended, Some(longer));
    let deadline = store
        .next_lease_deadline()
        .await
        .expect("next deadline")
        .expect("a task runs");
    assert!(
        deadline >= before_extension + longer.as_millis() as i64,
        "the deadline {deadline} moved to at least {before_extension} + 120 s"
    );
    assert_eq!(
        store
            .expire_leases(old_expiry)
            .await
            .expect("expire leases"),
        0
    );
    assert_eq!(
        task_state(&store, job_id, long.id).await,
        TaskState::Running
    );
    assert_eq!(
        store
            .extend_lease(long.id, None, LEASE)
            .await
            .expect("extend lease"),
        Some(LEASE)
    );
    assert_eq!(
        store
            .extend_lease(long.id, Some(RUNNER_B.to_string()), longer)
            .await
            .expect("extend lease"),
        None,
        "another claimant cannot extend it"
    );

    let queued = all_tasks(&store, job_id)
        .await
        .into_iter()
        .find(|summary| summary.state == TaskState::Queued)
        .expect("a queued task");
    assert_eq!(
        store
            .extend_lease(queued.id, None, LEASE)
            .await
            .expect("extend lease"),
        None
    );
    report(&store, computed(&long, RUNNER_A)).await;
    assert_eq!(
        store
            .extend_lease(long.id, Some(RUNNER_A.to_string()), LEASE)
            .await
            .expect("extend lease"),
        None,
        "a computed task is not extended"
    );
    assert_eq!(
        task_state(&store, job_id, long.id).await,
        TaskState::Computed
    );
}

/// Rule 16: progress is kept per task and label, each report replacing the task's previous
/// one; a job's progress is the per-label sum over its tasks.
pub(crate) async fn progress_is_per_task_and_summed_per_job<S: Store>(store: S) {
    let job_id = submit(&store, job("progress", vec![task("Root")])).await;
    let root = claim_one(&store, &runner(RUNNER_A, &["Root"])).await;
    let tiles: Vec<NewTask> = (0..4).map(|_| task("Tile")).collect();
    let root_report = ComputedReport {
        progress: vec![progress(Some("tiles"), 4, 0), progress(None, 1, 1)],
        ..computed_with_subtasks(&root, RUNNER_A, tiles)
    };
    report(&store, root_report).await;
    let job_progress = || {
        let read = store.get_job(job_id);
        async move { sorted_progress(read.await.expect("get job").progress) }
    };
    assert_eq!(
        job_progress().await,
        [progress(None, 1, 1), progress(Some("tiles"), 4, 0)]
    );

    let tile_runner = runner(RUNNER_A, &["Tile"]);
    let one_tile = |claimed: &ClaimedTask| ComputedReport {
        progress: vec![progress(Some("tiles"), 0, 1)],
        ..computed(claimed, RUNNER_A)
    };
    let first = claim_one(&store, &tile_runner).await;
    report(&store, one_tile(&first)).await;
    assert_eq!(
        job_progress().await,
        [progress(None, 1, 1), progress(Some("tiles"), 4, 1)]
    );

    // A failed attempt's progress is replaced by the next attempt's, not added to it.
    let second = claim_one(&store, &tile_runner).await;
    let failure = FailedReport {
        progress: vec![progress(Some("tiles"), 0, 1)],
        ..failed(&second, RUNNER_A, false)
    };
    fail(&store, failure).await;
    let second = claim_one(&store, &tile_runner).await;
    report(&store, one_tile(&second)).await;
    assert_eq!(
        job_progress().await,
        [progress(None, 1, 1), progress(Some("tiles"), 4, 2)]
    );

    // A report sent again (its answer was lost) changes nothing.
    assert_eq!(
        report(&store, one_tile(&second)).await,
        ReportOutcome::Stale(TaskState::Computed)
    );
    assert_eq!(
        job_progress().await,
        [progress(None, 1, 1), progress(Some("tiles"), 4, 2)]
    );

    while let Some(claimed) = claim(&store, &tile_runner).await {
        report(&store, one_tile(&claimed)).await;
    }
    assert_eq!(
        job_progress().await,
        [progress(None, 1, 1), progress(Some("tiles"), 4, 4)]
    );
    assert_eq!(job_state(&store, job_id).await, JobState::Completed);
}

fn sorted_progress(mut progress: Vec<Progress>) -> Vec<Progress> {
    progress.sort_by(|a, b| a.label.cmp(&b.label));
    progress
}

/// Rule 17: `list_tasks` lists roots or a parent's children in submission order, pages with
/// `after` and `limit`, and flags tasks with children.
pub(crate) async fn list_tasks_pages_children_in_submission_order<S: Store>(store: S) {
    // Ids in descending order, so submission order and id order differ.
    let reversed = |names: [&str; 3]| -> Vec<NewTask> {
        let mut ids: Vec<Uuid> = (0..3).map(|_| Uuid::now_v7()).collect();
        ids.sort();
        ids.reverse();
        names
            .iter()
            .zip(ids)
            .map(|(name, id)| NewTask { id, ..task(name) })
            .collect()
    };
    let mut roots = reversed(["A", "B", "C"]);
    roots[1].input = vec![0xff, 0x00, 0xfe];
    roots[1].max_retries = 3;
    roots[1].optional = true;
    roots[1].identifier = identifier("B", 2, 7);
    let root_ids: Vec<Uuid> = roots.iter().map(|root| root.id).collect();
    let job_id = submit(&store, job("listing", roots)).await;

    let ids = |tasks: Vec<TaskSummary>| tasks.into_iter().map(|task| task.id).collect::<Vec<_>>();
    let page = |after: Option<Uuid>, limit: usize| Page {
        after,
        limit,
        descending: false,
    };
    let listed = store
        .list_tasks(job_id, None, EVERYTHING)
        .await
        .expect("list roots");
    assert_eq!(ids(listed.clone()), root_ids);
    let b = &listed[1];
    assert_eq!(b.parent_id, None);
    assert_eq!(b.display, "B");
    assert_eq!(b.state, TaskState::Queued);
    assert_eq!(b.identifier, identifier("B", 2, 7));
    assert_eq!(b.input, [0xff, 0x00, 0xfe]);
    assert_eq!((b.retry_count, b.max_retries, b.optional), (0, 3, true));
    assert_eq!(b.cluster, DEFAULT_CLUSTER_SLUG);
    assert_eq!(
        (b.started_at, b.stopped_at, b.has_children),
        (None, None, false)
    );
    let first_two = store
        .list_tasks(job_id, None, page(None, 2))
        .await
        .expect("list roots");
    assert_eq!(ids(first_two), root_ids[..2]);
    let rest = store
        .list_tasks(job_id, None, page(Some(root_ids[1]), 2))
        .await
        .expect("list roots");
    assert_eq!(ids(rest), root_ids[2..]);

    let a = claim_one(&store, &runner(RUNNER_A, &["A"])).await;
    let children = reversed(["X", "Y", "Z"]);
    let child_ids: Vec<Uuid> = children.iter().map(|child| child.id).collect();
    report(&store, computed_with_subtasks(&a, RUNNER_A, children)).await;

    let listed = store
        .list_tasks(job_id, None, EVERYTHING)
        .await
        .expect("list roots");
    assert_eq!(ids(listed.clone()), root_ids, "subtasks are not roots");
    assert_eq!(
        listed
            .iter()
            .map(|task| task.has_children)
            .collect::<Vec<_>>(),
        [true, false, false]
    );
    assert!(
        listed[0].started_at.is_some() && listed[0].stopped_at.is_some(),
        "A ran"
    );
    let listed = store
        .list_tasks(job_id, Some(a.id), EVERYTHING)
        .await
        .expect("list children");
    assert_eq!(ids(listed.clone()), child_ids);
    assert!(
        listed
            .iter()
            .all(|child| child.parent_id == Some(a.id) && !child.has_children)
    );
    let middle = store
        .list_tasks(job_id, Some(a.id), page(Some(child_ids[0]), 1))
        .await
        .expect("list children");
    assert_eq!(ids(middle), child_ids[1..2]);
    let none = store
        .list_tasks(job_id, Some(root_ids[2]), EVERYTHING)
        .await
        .expect("list children");
    assert!(none.is_empty(), "C has no children");

    let missing = store.list_tasks(Uuid::now_v7(), None, EVERYTHING).await;
    assert!(
        matches!(missing, Err(Error::JobNotFound { .. })),
        "{missing:?}"
    );
}

/// Rule 18: `query_jobs` filters by state, name and cluster and pages both ways;
/// `job_state_counts` counts jobs per state.
pub(crate) async fn query_jobs_filters_and_pages<S: Store>(store: S) {
    store
        .create_cluster(Cluster {
            slug: "gpu".to_string(),
            name: "GPU".to_string(),
            description: String::new(),
            deletable: true,
        })
        .await
        .expect("create cluster");
    let alpha = submit(&store, job("ingest-alpha", vec![task("Alpha")])).await;
    let on_gpu = NewTask {
        cluster: "gpu".to_string(),
        ..task("Beta")
    };
    let beta = submit(&store, job("ingest-beta", vec![on_gpu])).await;
    let report_job = submit(&store, job("report", vec![task("Report")])).await;

    let gpu_runner = claim_request(RUNNER_A, "gpu", vec![identifier("Beta", 1, 0)]);
    let claimed = claim_one(&store, &gpu_runner).await;
    fail(&store, failed(&claimed, RUNNER_A, true)).await;
    let claimed = claim_one(&store, &runner(RUNNER_A, &["Report"])).await;
    report(&store, computed(&claimed, RUNNER_A)).await;
    assert_eq!(job_state(&store, alpha).await, JobState::Submitted);
    assert_eq!(job_state(&store, beta).await, JobState::Failed);
    assert_eq!(job_state(&store, report_job).await, JobState::Completed);

    let query = |filter: JobFilter, page: Page| {
        let jobs = store.query_jobs(filter, page);
        async move {
            jobs.await
                .expect("query jobs")
                .into_iter()
                .map(|job| job.id)
                .collect::<Vec<_>>()
        }
    };
    let page = |after: Option<Uuid>, limit: usize, descending: bool| Page {
        after,
        limit,
        descending,
    };
    let states = |states: Vec<JobState>| JobFilter {
        states,
        ..JobFilter::default()
    };
    let named = |name: &str| JobFilter {
        name_contains: Some(name.to_string()),
        ..JobFilter::default()
    };
    let on = |cluster: &str| JobFilter {
        clusters: vec![cluster.to_string()],
        ..JobFilter::default()
    };

    const NO_JOBS: [Uuid; 0] = [];
    assert_eq!(
        query(JobFilter::default(), EVERYTHING).await,
        [alpha, beta, report_job]
    );
    assert_eq!(
        query(states(vec![JobState::Completed]), EVERYTHING).await,
        [report_job]
    );
    assert_eq!(
        query(
            states(vec![JobState::Submitted, JobState::Failed]),
            EVERYTHING
        )
        .await,
        [alpha, beta]
    );
    assert_eq!(
        query(states(vec![JobState::Canceled]), EVERYTHING).await,
        NO_JOBS
    );
    assert_eq!(query(named("ingest"), EVERYTHING).await, [alpha, beta]);
    assert_eq!(query(named("port"), EVERYTHING).await, [report_job]);
    assert_eq!(query(on("gpu"), EVERYTHING).await, [beta]);
    assert_eq!(
        query(on(DEFAULT_CLUSTER_SLUG), EVERYTHING).await,
        [alpha, report_job]
    );
    let combined = JobFilter {
        clusters: vec![DEFAULT_CLUSTER_SLUG.to_string()],
        ..named("ingest")
    };
    assert_eq!(query(combined, EVERYTHING).await, [alpha]);

    assert_eq!(
        query(JobFilter::default(), page(None, 2, false)).await,
        [alpha, beta]
    );
    assert_eq!(
        query(JobFilter::default(), page(Some(beta), 2, false)).await,
        [report_job]
    );
    assert_eq!(
        query(JobFilter::default(), page(None, 2, true)).await,
        [report_job, beta]
    );
    assert_eq!(
        query(JobFilter::default(), page(Some(beta), 2, true)).await,
        [alpha]
    );
    assert_eq!(
        query(named("ingest"), page(Some(alpha), 5, false)).await,
        [beta]
    );

    let submitted: Vec<i64> = store
        .query_jobs(JobFilter::default(), EVERYTHING)
        .await
        .expect("query jobs")
        .iter()
        .map(|job| job.submitted_at)
        .collect();
    let (first, last) = (submitted[0], submitted[submitted.len() - 1]);
    let window = |from: i64, to: i64| JobFilter {
        submitted_from: Some(from),
        submitted_to: Some(to),
        ..JobFilter::default()
    };
    assert_eq!(
        query(window(first, last + 1), EVERYTHING).await,
        [alpha, beta, report_job]
    );
    assert_eq!(
        query(window(last + 1, last + 1_000), EVERYTHING).await,
        NO_JOBS,
        "from is inclusive only"
    );
    assert_eq!(
        query(window(first - 1_000, first), EVERYTHING).await,
        NO_JOBS,
        "to is exclusive"
    );

    assert_eq!(
        sorted(store.job_state_counts().await.expect("count jobs")),
        [
            (JobState::Submitted, 1),
            (JobState::Completed, 1),
            (JobState::Failed, 1)
        ]
    );
    let missing = store.get_job(Uuid::now_v7()).await;
    assert!(
        matches!(missing, Err(Error::JobNotFound { .. })),
        "{missing:?}"
    );
    let missing = store.cancel_job(Uuid::now_v7()).await;
    assert!(
        matches!(missing, Err(Error::JobNotFound { .. })),
        "{missing:?}"
    );
}

/// Rule 19: execution statistics count tasks and time the attempts that ran.
pub(crate) async fn execution_stats_follow_the_tasks<S: Store>(store: S) {
    const WORK: Duration = Duration::from_millis(20);
    let job_id = submit(&store, job("stats", vec![task("Root")])).await;
    let stats = store.get_job(job_id).await.expect("get job").stats;
    assert_eq!(stats.total_tasks, 1);
    assert_eq!(stats.tasks_by_state, [(TaskState::Queued, 1)]);
    assert_eq!(
        (stats.first_task_started_at, stats.last_task_stopped_at),
        (None, None)
    );
    assert_eq!(stats.compute_time, Duration::ZERO);

    let before = now_millis();
    let everyone = runner(RUNNER_A, &["Root", "Child"]);
    let root = claim_one(&store, &everyone).await;
    // Time passes while the task "computes": compute time is measured, not guessed.
    tokio::time::sleep(WORK).await;
    report(
        &store,
        computed_with_subtasks(&root, RUNNER_A, vec![task("Child")]),
    )
    .await;
    let child = claim_one(&store, &everyone).await;
    tokio::time::sleep(WORK).await;
    report(&store, computed(&child, RUNNER_A)).await;
    let after = now_millis();

    let job = store.get_job(job_id).await.expect("get job");
    assert_eq!(job.state, JobState::Completed);
    let stats = job.stats;
    assert_eq!(stats.total_tasks, 2);
    assert_eq!(stats.tasks_by_state, [(TaskState::Computed, 2)]);
    let started = stats.first_task_started_at.expect("first task started");
    let stopped = stats.last_task_stopped_at.expect("last task stopped");
    assert!(
        job.submitted_at <= started,
        "submitted {} before started {started}",
        job.submitted_at
    );
    assert!(
        before <= started && started <= stopped && stopped <= after,
        "{before} {started} {stopped} {after}"
    );
    assert!(
        stats.compute_time >= WORK * 2,
        "two attempts of at least 20 ms: {:?}",
        stats.compute_time
    );
    assert!(
        stats.compute_time <= stats.elapsed_time,
        "one task at a time: compute {:?} within elapsed {:?}",
        stats.compute_time,
        stats.elapsed_time
    );
    assert!(stats.elapsed_time <= Duration::from_millis((after - before) as u64));
    assert!(
        stats.parallelism > 0.0 && stats.parallelism <= 1.0,
        "parallelism {}",
        stats.parallelism
    );
}

/// Rule 20: many concurrent submits, claims and reports (batched into shared commits by a
/// backend) all succeed, and every job completes with each task handed out once.
pub(crate) async fn concurrent_submits_and_claims_complete_every_job_once<S: Store>(store: S) {
    const WORKERS: usize = 8;
    const JOBS_PER_WORKER: usize = 50;
    let store = Arc::new(store);
    let handed_out = Arc::new(Mutex::new(HashSet::new()));
    let submitted_jobs = Arc::new(Mutex::new(HashSet::new()));

    let mut workers = tokio::task::JoinSet::new();
    for worker in 0..WORKERS {
        let store = store.clone();
        let handed_out = handed_out.clone();
        let submitted_jobs = submitted_jobs.clone();
        workers.spawn(async move {
            let claimant = format!("runner-{worker}");
            let request = runner(&claimant, &["Work"]);
            let mut pending: Option<ComputedReport> = None;
            let mut submitted = 0;
            loop {
                if submitted < JOBS_PER_WORKER {
                    // Not `submit`: another worker may claim the task before the job is read
                    // back, so the job need not be SUBMITTED any more.
                    let new_job = job(&format!("load-{worker}-{submitted}"), vec![task("Work")]);
                    let id = store
                        .submit_job(new_job)
                        .await
                        .expect("submit concurrently")
                        .id;
                    submitted_jobs.lock().expect("lock").insert(id);
                    submitted += 1;
                }
                let (outcome, claimed) = store
                    .report_and_claim(pending.take(), Some(request.clone()))
                    .await
                    .expect("report and claim concurrently");
                if let Some(outcome) = outcome {
                    assert_eq!(outcome, ReportOutcome::Applied(TaskState::Computed));
                }
                match claimed {
                    Some(claimed) => {
                        let first_time = handed_out.lock().expect("lock").insert(claimed.id);
                        assert!(first_time, "task {} was handed out twice", claimed.id);
                        pending = Some(computed(&claimed, &claimant));
                    }
                    None if submitted == JOBS_PER_WORKER => break,
                    None => {}
                }
            }
        });
    }
    while let Some(finished) = workers.join_next().await {
        finished.expect("a worker panicked");
    }

    let total = WORKERS * JOBS_PER_WORKER;
    assert_eq!(
        handed_out.lock().expect("lock").len(),
        total,
        "every task was handed out once"
    );
    let jobs = store
        .query_jobs(JobFilter::default(), EVERYTHING)
        .await
        .expect("query jobs");
    assert_eq!(jobs.len(), total);
    let listed: HashSet<Uuid> = jobs.iter().map(|job| job.id).collect();
    assert_eq!(listed, *submitted_jobs.lock().expect("lock"));
    let computed_tasks: u64 = jobs
        .iter()
        .flat_map(|job| job.stats.tasks_by_state.iter())
        .filter(|(state, _)| *state == TaskState::Computed)
        .map(|(_, count)| count)
        .sum();
    assert_eq!(
        computed_tasks, total as u64,
        "every submitted task computed exactly once"
    );
    assert!(jobs.iter().all(|job| job.state == JobState::Completed));
    assert_eq!(
        store.job_state_counts().await.expect("count jobs"),
        [(JobState::Completed, total as u64)]
    );
}

/// Creates a deletable cluster `slug`.
async fn add_cluster<S: Store>(store: &S, slug: &str) {
    store
        .create_cluster(Cluster {
            slug: slug.to_string(),
            name: slug.to_uppercase(),
            description: String::new(),
            deletable: true,
        })
        .await
        .expect("create cluster");
}

fn workflow(slug: &str) -> Workflow {
    Workflow {
        slug: slug.to_string(),
        name: format!("{slug} workflow"),
        summary: format!("what {slug} does"),
        description: format!("# {slug}\n\nThe long description."),
    }
}

async fn add_workflow<S: Store>(store: &S, slug: &str) -> Workflow {
    store
        .create_workflow(workflow(slug))
        .await
        .expect("create workflow")
}

/// A `sha256:` digest of 64 times `digit`.
fn digest(digit: char) -> String {
    format!("sha256:{}", digit.to_string().repeat(64))
}

/// Publishes `artifact` as a release of `workflow` with `fingerprint`.
async fn publish<S: Store>(
    store: &S,
    workflow: &str,
    artifact: &Artifact,
    fingerprint: &str,
) -> Release {
    store
        .publish_release(
            workflow,
            artifact.id,
            fingerprint.to_string(),
            format!("{workflow} {fingerprint}").into_bytes(),
        )
        .await
        .expect("publish release")
}

fn release_ids(releases: Vec<Release>) -> Vec<Uuid> {
    releases.into_iter().map(|release| release.id).collect()
}

/// The clusters a release is deployed to, sorted.
async fn deployed_to<S: Store>(store: &S, workflow: &str, release: Uuid) -> Vec<String> {
    let release = store
        .get_release(workflow, release)
        .await
        .expect("get release");
    sorted(release.clusters)
}

/// What runs on `cluster`: (workflow, release) pairs.
async fn deployments<S: Store>(store: &S, cluster: &str) -> Vec<(String, Uuid)> {
    store
        .cluster_deployments(cluster)
        .await
        .expect("cluster deployments")
        .into_iter()
        .map(|release| (release.workflow, release.id))
        .collect()
}

/// Rule 21: workflows are created, read, listed, updated and deleted; duplicates and unknown
/// slugs are errors; a deployed workflow is kept, and deleting it removes its releases.
pub(crate) async fn workflows_are_managed_and_kept_while_deployed<S: Store>(store: S) {
    assert_eq!(
        store.list_workflows().await.expect("list workflows"),
        [],
        "a fresh store has no workflows"
    );
    let ingest = workflow("ingest");
    assert_eq!(
        store
            .create_workflow(ingest.clone())
            .await
            .expect("create workflow"),
        ingest
    );
    assert_eq!(
        store.get_workflow("ingest").await.expect("get workflow"),
        ingest
    );
    let report = add_workflow(&store, "report").await;
    let mut listed = store.list_workflows().await.expect("list workflows");
    listed.sort_by(|a, b| a.slug.cmp(&b.slug));
    assert_eq!(listed, [ingest.clone(), report.clone()]);

    let duplicate = store
        .create_workflow(Workflow {
            name: "Another ingest".to_string(),
            ..ingest.clone()
        })
        .await;
    assert!(
        matches!(&duplicate, Err(Error::WorkflowExists { slug }) if slug == "ingest"),
        "a duplicate slug is refused: {duplicate:?}"
    );
    assert_eq!(
        store.get_workflow("ingest").await.expect("get workflow"),
        ingest,
        "the duplicate changed nothing"
    );

    let renamed = store
        .update_workflow("ingest", Some("Ingestion".to_string()), None, None)
        .await
        .expect("rename workflow");
    assert_eq!(
        renamed,
        Workflow {
            name: "Ingestion".to_string(),
            ..ingest.clone()
        }
    );
    let described = store
        .update_workflow(
            "ingest",
            None,
            Some("new summary".to_string()),
            Some("new description".to_string()),
        )
        .await
        .expect("describe workflow");
    assert_eq!(
        described,
        Workflow {
            slug: "ingest".to_string(),
            name: "Ingestion".to_string(),
            summary: "new summary".to_string(),
            description: "new description".to_string(),
        }
    );
    assert_eq!(
        store.get_workflow("ingest").await.expect("get workflow"),
        described
    );
    assert_eq!(
        store.get_workflow("report").await.expect("get workflow"),
        report,
        "other workflows are untouched"
    );

    let not_found = |result: &Result<(), Error>| matches!(result, Err(Error::WorkflowNotFound { slug }) if slug == "nowhere");
    let unknown = store.get_workflow("nowhere").await.map(drop);
    assert!(
        not_found(&unknown),
        "getting an unknown workflow: {unknown:?}"
    );
    let unknown = store
        .update_workflow("nowhere", Some("x".to_string()), None, None)
        .await
        .map(drop);
    assert!(
        not_found(&unknown),
        "updating an unknown workflow: {unknown:?}"
    );
    let unknown = store.delete_workflow("nowhere").await;
    assert!(
        not_found(&unknown),
        "deleting an unknown workflow: {unknown:?}"
    );

    // A deployed workflow is kept until it is undeployed everywhere.
    add_cluster(&store, "gpu").await;
    let artifact = store
        .register_artifact(digest('a'), 1_024)
        .await
        .expect("register artifact");
    let release = publish(&store, "ingest", &artifact, "first").await;
    store
        .deploy_release(
            "ingest",
            release.id,
            vec![DEFAULT_CLUSTER_SLUG.to_string(), "gpu".to_string()],
        )
        .await
        .expect("deploy release");
    let refused = store.delete_workflow("ingest").await;
    assert!(
        matches!(&refused, Err(Error::Conflict(message))
            if message.contains(DEFAULT_CLUSTER_SLUG) && message.contains("gpu")),
        "deleting a deployed workflow is refused, naming its clusters: {refused:?}"
    );
    assert_eq!(
        store.get_workflow("ingest").await.expect("get workflow"),
        described,
        "the refused delete changed nothing"
    );
    assert_eq!(
        release_ids(store.list_releases("ingest").await.expect("list releases")),
        [release.id]
    );
    store
        .undeploy_release("ingest", release.id, vec![DEFAULT_CLUSTER_SLUG.to_string()])
        .await
        .expect("undeploy release");
    let refused = store.delete_workflow("ingest").await;
    assert!(
        matches!(&refused, Err(Error::Conflict(message)) if message.contains("gpu")),
        "still deployed to gpu: {refused:?}"
    );
    store
        .undeploy_release("ingest", release.id, vec!["gpu".to_string()])
        .await
        .expect("undeploy release");

    store
        .delete_workflow("ingest")
        .await
        .expect("delete workflow");
    let gone = store.get_workflow("ingest").await;
    assert!(
        matches!(&gone, Err(Error::WorkflowNotFound { slug }) if slug == "ingest"),
        "a deleted workflow is gone: {gone:?}"
    );
    let gone = store.list_releases("ingest").await;
    assert!(
        matches!(&gone, Err(Error::WorkflowNotFound { .. })),
        "{gone:?}"
    );
    let gone = store.get_release("ingest", release.id).await;
    assert!(
        matches!(&gone, Err(Error::ReleaseNotFound { id, .. }) if *id == release.id),
        "{gone:?}"
    );
    assert_eq!(
        store.list_workflows().await.expect("list workflows"),
        [report]
    );
    assert_eq!(deployments(&store, "gpu").await, []);
    assert_eq!(deployments(&store, DEFAULT_CLUSTER_SLUG).await, []);

    // The releases are gone, not hidden: a workflow of the same slug starts empty.
    add_workflow(&store, "ingest").await;
    assert_eq!(
        store.list_releases("ingest").await.expect("list releases"),
        []
    );
    let republished = publish(&store, "ingest", &artifact, "first").await;
    assert_ne!(
        republished.id, release.id,
        "the old release is not answered"
    );
    store
        .delete_workflow("ingest")
        .await
        .expect("a workflow with undeployed releases is deleted");
    let again = store.delete_workflow("ingest").await;
    assert!(
        matches!(&again, Err(Error::WorkflowNotFound { .. })),
        "deleting twice: {again:?}"
    );
    let gone = store.get_release("ingest", republished.id).await;
    assert!(
        matches!(&gone, Err(Error::ReleaseNotFound { .. })),
        "{gone:?}"
    );
}

/// Rule 22: an artifact is registered once per digest and found by digest or by id.
pub(crate) async fn artifacts_are_registered_once_per_digest<S: Store>(store: S) {
    let first = store
        .register_artifact(digest('a'), 1_024)
        .await
        .expect("register artifact");
    assert_eq!(
        (first.digest.as_str(), first.size),
        (digest('a').as_str(), 1_024)
    );
    let again = store
        .register_artifact(digest('a'), 1_024)
        .await
        .expect("register artifact again");
    assert_eq!(again, first, "registering again answers the same record");
    let resized = store
        .register_artifact(digest('a'), 2_048)
        .await
        .expect("register artifact again");
    assert_eq!(resized, first, "the existing record is kept as it was");
    let other = store
        .register_artifact(digest('b'), 7)
        .await
        .expect("register another artifact");
    assert_ne!(other.id, first.id);
    assert_eq!(
        (other.digest.as_str(), other.size),
        (digest('b').as_str(), 7)
    );

    assert_eq!(
        store
            .get_artifact(Some(digest('a')), None)
            .await
            .expect("get artifact by digest"),
        first
    );
    assert_eq!(
        store
            .get_artifact(None, Some(first.id))
            .await
            .expect("get artifact by id"),
        first
    );
    assert_eq!(
        store
            .get_artifact(None, Some(other.id))
            .await
            .expect("get artifact by id"),
        other
    );
    assert_eq!(
        store
            .get_artifact(Some(digest('b')), None)
            .await
            .expect("get artifact by digest"),
        other
    );

    let unknown = store.get_artifact(Some(digest('c')), None).await;
    assert!(
        matches!(&unknown, Err(Error::ArtifactNotFound(name)) if name.contains(&digest('c'))),
        "an unknown digest: {unknown:?}"
    );
    let missing = Uuid::now_v7();
    let unknown = store.get_artifact(None, Some(missing)).await;
    assert!(
        matches!(&unknown, Err(Error::ArtifactNotFound(name)) if name.contains(&missing.to_string())),
        "an unknown id: {unknown:?}"
    );
}

/// Rule 23: publishing answers the existing release for the same artifact and fingerprint,
/// a new one otherwise; releases are listed newest first and belong to one workflow.
pub(crate) async fn publishing_is_idempotent_per_artifact_and_fingerprint<S: Store>(store: S) {
    add_workflow(&store, "ingest").await;
    add_workflow(&store, "report").await;
    let a = store
        .register_artifact(digest('a'), 100)
        .await
        .expect("register artifact");
    let b = store
        .register_artifact(digest('b'), 200)
        .await
        .expect("register artifact");

    let unknown = store
        .publish_release("nowhere", a.id, "one".to_string(), Vec::new())
        .await;
    assert!(
        matches!(&unknown, Err(Error::WorkflowNotFound { slug }) if slug == "nowhere"),
        "an unknown workflow: {unknown:?}"
    );
    let unknown = store
        .publish_release("ingest", Uuid::now_v7(), "one".to_string(), Vec::new())
        .await;
    assert!(
        matches!(&unknown, Err(Error::ArtifactNotFound(_))),
        "an unknown artifact: {unknown:?}"
    );
    assert_eq!(
        store.list_releases("ingest").await.expect("list releases"),
        [],
        "nothing was published"
    );

    let before = now_millis();
    let content = vec![0x0a, 0x00, 0xff, 0x10];
    let first = store
        .publish_release("ingest", a.id, "one".to_string(), content.clone())
        .await
        .expect("publish release");
    let after = now_millis();
    assert_eq!(first.workflow, "ingest");
    assert_eq!(first.artifact, a);
    assert_eq!(first.fingerprint, "one");
    assert_eq!(first.content, content, "the content is opaque bytes");
    assert!(
        before <= first.created_at && first.created_at <= after,
        "{before} {} {after}",
        first.created_at
    );
    assert!(first.clusters.is_empty(), "a new release is not deployed");

    let again = store
        .publish_release("ingest", a.id, "one".to_string(), b"changed".to_vec())
        .await
        .expect("publish release again");
    assert_eq!(
        again, first,
        "the same artifact and fingerprint answer the release"
    );
    let second = publish(&store, "ingest", &a, "two").await;
    assert_ne!(second.id, first.id, "another fingerprint is a new release");
    assert_eq!((second.fingerprint.as_str(), &second.artifact), ("two", &a));
    let third = publish(&store, "ingest", &b, "one").await;
    assert!(
        third.id != first.id && third.id != second.id,
        "another artifact is a new release"
    );
    assert_eq!(third.artifact, b);
    let elsewhere = publish(&store, "report", &a, "one").await;
    assert!(
        ![first.id, second.id, third.id].contains(&elsewhere.id),
        "another workflow's release is its own"
    );
    assert_eq!(elsewhere.workflow, "report");

    let listed = store.list_releases("ingest").await.expect("list releases");
    assert_eq!(
        listed,
        [third.clone(), second.clone(), first.clone()],
        "newest first"
    );
    assert_eq!(
        release_ids(store.list_releases("report").await.expect("list releases")),
        [elsewhere.id]
    );
    assert_eq!(
        store
            .get_release("ingest", second.id)
            .await
            .expect("get release"),
        second
    );
    let foreign = store.get_release("report", first.id).await;
    assert!(
        matches!(&foreign, Err(Error::ReleaseNotFound { workflow, id })
            if workflow == "report" && *id == first.id),
        "another workflow's release is not found: {foreign:?}"
    );
    let unknown = store.get_release("ingest", Uuid::now_v7()).await;
    assert!(
        matches!(&unknown, Err(Error::ReleaseNotFound { .. })),
        "{unknown:?}"
    );
    let unknown = store.list_releases("nowhere").await;
    assert!(
        matches!(&unknown, Err(Error::WorkflowNotFound { slug }) if slug == "nowhere"),
        "{unknown:?}"
    );

    store
        .unpublish_release("ingest", second.id)
        .await
        .expect("unpublish release");
    let gone = store.get_release("ingest", second.id).await;
    assert!(
        matches!(&gone, Err(Error::ReleaseNotFound { id, .. }) if *id == second.id),
        "{gone:?}"
    );
    assert_eq!(
        release_ids(store.list_releases("ingest").await.expect("list releases")),
        [third.id, first.id]
    );
    let again = store.unpublish_release("ingest", second.id).await;
    assert!(
        matches!(&again, Err(Error::ReleaseNotFound { .. })),
        "unpublishing twice: {again:?}"
    );
    let foreign = store.unpublish_release("report", first.id).await;
    assert!(
        matches!(&foreign, Err(Error::ReleaseNotFound { .. })),
        "unpublishing another workflow's release: {foreign:?}"
    );
    assert_eq!(
        store
            .get_release("ingest", first.id)
            .await
            .expect("get release"),
        first,
        "the refused unpublish changed nothing"
    );
}

/// Rule 24: a cluster runs at most one release per workflow: deploying replaces the
/// workflow's release on the named clusters only; unknown clusters change nothing;
/// undeploying removes the release from the named clusters only; a deployed release is kept.
pub(crate) async fn a_cluster_runs_one_release_per_workflow<S: Store>(store: S) {
    add_cluster(&store, "gpu").await;
    add_cluster(&store, "cpu").await;
    add_workflow(&store, "ingest").await;
    add_workflow(&store, "report").await;
    let artifact = store
        .register_artifact(digest('a'), 100)
        .await
        .expect("register artifact");
    let old = publish(&store, "ingest", &artifact, "old").await;
    let new = publish(&store, "ingest", &artifact, "new").await;
    let other = publish(&store, "report", &artifact, "report").await;
    let default = DEFAULT_CLUSTER_SLUG;
    let clusters = |slugs: &[&str]| {
        slugs
            .iter()
            .map(|slug| slug.to_string())
            .collect::<Vec<_>>()
    };
    let deployment = |workflow: &str, release: &Release| (workflow.to_string(), release.id);

    let deployed = store
        .deploy_release("ingest", old.id, clusters(&[default, "gpu"]))
        .await
        .expect("deploy release");
    assert_eq!(deployed.id, old.id);
    assert_eq!(sorted(deployed.clusters), [default, "gpu"]);
    store
        .deploy_release("report", other.id, clusters(&["gpu"]))
        .await
        .expect("deploy release");
    assert_eq!(
        deployments(&store, "gpu").await,
        [deployment("ingest", &old), deployment("report", &other)],
        "one release per workflow, by workflow slug"
    );
    assert_eq!(
        deployments(&store, default).await,
        [deployment("ingest", &old)]
    );
    assert_eq!(deployments(&store, "cpu").await, []);

    let replaced = store
        .deploy_release("ingest", new.id, clusters(&["gpu"]))
        .await
        .expect("deploy another release");
    assert_eq!(replaced.clusters, ["gpu"]);
    assert_eq!(
        deployed_to(&store, "ingest", old.id).await,
        [default],
        "replaced on gpu, kept on the default cluster"
    );
    assert_eq!(
        deployments(&store, "gpu").await,
        [deployment("ingest", &new), deployment("report", &other)],
        "another workflow's release stays"
    );
    assert_eq!(
        deployments(&store, default).await,
        [deployment("ingest", &old)]
    );
    let again = store
        .deploy_release("ingest", new.id, clusters(&["gpu"]))
        .await
        .expect("deploy again");
    assert_eq!(again.clusters, ["gpu"], "deploying again changes nothing");

    // An unknown cluster refuses the whole deployment.
    let unknown = store
        .deploy_release("ingest", new.id, clusters(&["cpu", "nowhere"]))
        .await;
    assert!(
        matches!(&unknown, Err(Error::ClusterNotFound { slug }) if slug == "nowhere"),
        "{unknown:?}"
    );
    let unknown = store
        .deploy_release("ingest", old.id, clusters(&["gpu", "nowhere"]))
        .await;
    assert!(
        matches!(&unknown, Err(Error::ClusterNotFound { slug }) if slug == "nowhere"),
        "{unknown:?}"
    );
    assert_eq!(deployed_to(&store, "ingest", new.id).await, ["gpu"]);
    assert_eq!(deployed_to(&store, "ingest", old.id).await, [default]);
    assert_eq!(deployments(&store, "cpu").await, [], "nothing changed");
    let unknown = store.cluster_deployments("nowhere").await;
    assert!(
        matches!(&unknown, Err(Error::ClusterNotFound { slug }) if slug == "nowhere"),
        "{unknown:?}"
    );
    let foreign = store
        .deploy_release("report", new.id, clusters(&["cpu"]))
        .await;
    assert!(
        matches!(&foreign, Err(Error::ReleaseNotFound { workflow, id })
            if workflow == "report" && *id == new.id),
        "another workflow's release is not deployed: {foreign:?}"
    );
    assert_eq!(deployments(&store, "cpu").await, []);

    // Undeploying removes the release from the named clusters only.
    let widened = store
        .deploy_release("ingest", new.id, clusters(&["cpu"]))
        .await
        .expect("deploy release");
    assert_eq!(sorted(widened.clusters), ["cpu", "gpu"]);
    let narrowed = store
        .undeploy_release("ingest", new.id, clusters(&["gpu"]))
        .await
        .expect("undeploy release");
    assert_eq!(narrowed.clusters, ["cpu"]);
    assert_eq!(
        deployments(&store, "gpu").await,
        [deployment("report", &other)]
    );
    let elsewhere = store
        .undeploy_release("ingest", new.id, clusters(&[default]))
        .await
        .expect("undeploy where another release runs");
    assert_eq!(elsewhere.clusters, ["cpu"]);
    assert_eq!(
        deployments(&store, default).await,
        [deployment("ingest", &old)],
        "the release deployed there is not removed"
    );
    let unknown = store
        .undeploy_release("ingest", new.id, clusters(&["cpu", "nowhere"]))
        .await;
    assert!(
        matches!(&unknown, Err(Error::ClusterNotFound { slug }) if slug == "nowhere"),
        "{unknown:?}"
    );
    assert_eq!(
        deployed_to(&store, "ingest", new.id).await,
        ["cpu"],
        "nothing changed"
    );

    // A deployed release is not unpublished.
    let refused = store.unpublish_release("ingest", new.id).await;
    assert!(
        matches!(&refused, Err(Error::Conflict(message)) if message.contains("cpu")),
        "unpublishing a deployed release is refused, naming its clusters: {refused:?}"
    );
    assert_eq!(deployed_to(&store, "ingest", new.id).await, ["cpu"]);
    store
        .undeploy_release("ingest", new.id, clusters(&["cpu"]))
        .await
        .expect("undeploy release");
    store
        .unpublish_release("ingest", new.id)
        .await
        .expect("unpublish an undeployed release");
    assert_eq!(
        release_ids(store.list_releases("ingest").await.expect("list releases")),
        [old.id]
    );
    let refused = store.unpublish_release("ingest", old.id).await;
    assert!(
        matches!(&refused, Err(Error::Conflict(message)) if message.contains(default)),
        "{refused:?}"
    );
    assert_eq!(deployments(&store, "cpu").await, []);
    assert_eq!(
        deployments(&store, "gpu").await,
        [deployment("report", &other)]
    );
}

/// Rule 25: telemetry is read per kind and trace in arrival order (or reversed), filtered by
/// task and inclusive severity ranges, paged; deleting by arrival time answers the count.
pub(crate) async fn telemetry_is_read_per_trace_in_arrival_order_and_expires<S: Store>(store: S) {
    const TRACE_A: [u8; 16] = [0xa1; 16];
    const TRACE_B: [u8; 16] = [0xb2; 16];
    // Ids newest first, so arrival order and id order differ.
    let mut ids: Vec<Uuid> = (0..10).map(|_| Uuid::now_v7()).collect();
    ids.sort();
    let mut next_id = move || ids.pop().expect("enough ids");
    let mut record = |trace: [u8; 16], task: Option<&str>, severity: i32, time: i64| {
        let id = next_id();
        TelemetryRecord {
            id,
            trace_id: trace.to_vec(),
            task_id: task.map(str::to_string),
            severity,
            // Event times out of arrival order: reads follow arrival, not event time.
            time_unix_nano: time,
            encoded: [id.as_bytes().as_slice(), &[0x00, 0xff]].concat(),
        }
    };
    let a1 = record(TRACE_A, Some("t1"), 1, 500);
    let a2 = record(TRACE_A, Some("t2"), 9, 100);
    let a3 = record(TRACE_A, Some("t1"), 13, 400);
    let a4 = record(TRACE_A, None, 17, 200);
    let a5 = record(TRACE_A, Some("t1"), 5, 300);
    let b1 = record(TRACE_B, Some("t1"), 9, 100);
    let s1 = record(TRACE_A, Some("t1"), 0, 900);
    let s2 = record(TRACE_A, Some("t2"), 0, 800);
    let s3 = record(TRACE_B, Some("t1"), 0, 700);
    let late = record(TRACE_B, Some("t1"), 9, 50);

    let before = now_millis();
    let insert = |kind: TelemetryKind, records: &[&TelemetryRecord]| {
        let records = records.iter().map(|&record| record.clone()).collect();
        let inserted = store.insert_telemetry(kind, records);
        async move { inserted.await.expect("insert telemetry") }
    };
    insert(TelemetryKind::Log, &[&a1, &a2]).await;
    insert(TelemetryKind::Span, &[&s1]).await;
    insert(TelemetryKind::Log, &[&b1]).await;
    insert(TelemetryKind::Log, &[&a3, &a4, &a5]).await;
    insert(TelemetryKind::Span, &[&s2, &s3]).await;

    let query = |kind: TelemetryKind,
                 trace: [u8; 16],
                 task: Option<&str>,
                 severities: Vec<(i32, i32)>,
                 page: Page| {
        let found = store.query_telemetry(
            kind,
            trace.to_vec(),
            task.map(str::to_string),
            severities,
            page,
        );
        async move { found.await.expect("query telemetry") }
    };
    let expected = |records: &[&TelemetryRecord]| {
        records
            .iter()
            .map(|record| (record.id, record.encoded.clone()))
            .collect::<Vec<_>>()
    };
    let page = |after: Option<&TelemetryRecord>, limit: usize, descending: bool| Page {
        after: after.map(|record| record.id),
        limit,
        descending,
    };
    let backwards = page(None, 1_000, true);
    use TelemetryKind::{Log, Span};

    assert_eq!(
        query(Log, TRACE_A, None, vec![], EVERYTHING).await,
        expected(&[&a1, &a2, &a3, &a4, &a5]),
        "a trace's logs in arrival order"
    );
    assert_eq!(
        query(Log, TRACE_A, None, vec![], backwards).await,
        expected(&[&a5, &a4, &a3, &a2, &a1])
    );
    assert_eq!(
        query(Log, TRACE_B, None, vec![], EVERYTHING).await,
        expected(&[&b1])
    );
    assert_eq!(
        query(Span, TRACE_A, None, vec![], EVERYTHING).await,
        expected(&[&s1, &s2])
    );
    assert_eq!(
        query(Span, TRACE_A, None, vec![], backwards).await,
        expected(&[&s2, &s1])
    );
    assert_eq!(
        query(Span, TRACE_B, None, vec![], EVERYTHING).await,
        expected(&[&s3])
    );
    assert_eq!(
        query(Log, [0x00; 16], None, vec![], EVERYTHING).await,
        [],
        "an unknown trace has no records"
    );

    assert_eq!(
        query(Log, TRACE_A, Some("t1"), vec![], EVERYTHING).await,
        expected(&[&a1, &a3, &a5])
    );
    assert_eq!(
        query(Log, TRACE_A, Some("t1"), vec![], backwards).await,
        expected(&[&a5, &a3, &a1])
    );
    assert_eq!(
        query(Span, TRACE_A, Some("t2"), vec![], EVERYTHING).await,
        expected(&[&s2])
    );
    assert_eq!(
        query(Log, TRACE_A, Some("t9"), vec![], EVERYTHING).await,
        []
    );

    assert_eq!(
        query(Log, TRACE_A, None, vec![(9, 13)], EVERYTHING).await,
        expected(&[&a2, &a3]),
        "both ends of a range are included"
    );
    assert_eq!(
        query(Log, TRACE_A, None, vec![(1, 1), (17, 24)], EVERYTHING).await,
        expected(&[&a1, &a4]),
        "any of several ranges"
    );
    assert_eq!(
        query(Log, TRACE_A, None, vec![(2, 4), (14, 16)], EVERYTHING).await,
        []
    );
    assert_eq!(
        query(Log, TRACE_A, Some("t1"), vec![(5, 24)], backwards).await,
        expected(&[&a5, &a3]),
        "task and severity filters combine"
    );

    assert_eq!(
        query(Log, TRACE_A, None, vec![], page(None, 2, false)).await,
        expected(&[&a1, &a2])
    );
    assert_eq!(
        query(Log, TRACE_A, None, vec![], page(Some(&a2), 2, false)).await,
        expected(&[&a3, &a4])
    );
    assert_eq!(
        query(Log, TRACE_A, None, vec![], page(Some(&a4), 2, false)).await,
        expected(&[&a5])
    );
    assert_eq!(
        query(Log, TRACE_A, None, vec![], page(Some(&a5), 2, false)).await,
        []
    );
    assert_eq!(
        query(Log, TRACE_A, None, vec![], page(None, 2, true)).await,
        expected(&[&a5, &a4])
    );
    assert_eq!(
        query(Log, TRACE_A, None, vec![], page(Some(&a4), 2, true)).await,
        expected(&[&a3, &a2])
    );
    assert_eq!(
        query(Log, TRACE_A, Some("t1"), vec![], page(Some(&a1), 1, false)).await,
        expected(&[&a3])
    );
    assert_eq!(
        query(Span, TRACE_A, None, vec![], page(Some(&s1), 5, false)).await,
        expected(&[&s2])
    );

    // Deleting by arrival time: a cutoff before the first arrival removes nothing; one after
    // a record arrived removes it and keeps what arrived later.
    assert_eq!(
        store
            .delete_telemetry_before(before)
            .await
            .expect("delete telemetry"),
        0
    );
    assert_eq!(query(Log, TRACE_A, None, vec![], EVERYTHING).await.len(), 5);
    let cutoff = now_millis() + 1;
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while now_millis() < cutoff {
        assert!(
            std::time::Instant::now() < deadline,
            "the clock stands still"
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    insert(TelemetryKind::Log, &[&late]).await;
    assert_eq!(
        store
            .delete_telemetry_before(cutoff)
            .await
            .expect("delete telemetry"),
        9,
        "every record received before the cutoff"
    );
    for (kind, trace) in [(Log, TRACE_A), (Span, TRACE_A), (Span, TRACE_B)] {
        assert_eq!(query(kind, trace, None, vec![], EVERYTHING).await, []);
    }
    assert_eq!(
        query(Log, TRACE_B, None, vec![], EVERYTHING).await,
        expected(&[&late]),
        "a record received after the cutoff is kept"
    );
    assert_eq!(
        store
            .delete_telemetry_before(now_millis() + 1)
            .await
            .expect("delete telemetry"),
        1
    );
    assert_eq!(query(Log, TRACE_B, None, vec![], EVERYTHING).await, []);
}

/// Deleting a cluster takes its deployments with it, so they pin no release.
pub(crate) async fn deleting_a_cluster_removes_its_deployments<S: Store>(store: S) {
    add_cluster(&store, "gone").await;
    add_workflow(&store, "ingest").await;
    let artifact = store
        .register_artifact(digest('b'), 10)
        .await
        .expect("register artifact");
    let release = publish(&store, "ingest", &artifact, "only").await;
    store
        .deploy_release("ingest", release.id, vec!["gone".into()])
        .await
        .expect("deploy");
    store
        .delete_cluster("gone")
        .await
        .expect("delete the cluster");
    assert!(
        deployed_to(&store, "ingest", release.id).await.is_empty(),
        "the deployment went with the cluster"
    );
    store
        .unpublish_release("ingest", release.id)
        .await
        .expect("nothing pins the release any more");
    store
        .delete_workflow("ingest")
        .await
        .expect("nor the workflow");
}
