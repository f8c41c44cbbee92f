//! Builders and small steps the rules share.

use std::time::Duration;

use uuid::Uuid;

use crate::api::workflows_v1::{JobState, TaskState};
use crate::server::store::{
    Artifact, ClaimRequest, ClaimedTask, Cluster, ComputedReport, DEFAULT_CLUSTER_SLUG,
    FailedReport, HandedBackReport, Identifier, NewJob, NewTask, Page, Progress, Release, Report,
    ReportOutcome, Store, TaskSummary, Workflow,
};

pub(super) const LEASE: Duration = Duration::from_secs(30);
pub(super) const RUNNER_A: &str = "runner-a";
pub(super) const RUNNER_B: &str = "runner-b";
/// A page large enough for every list in this suite.
pub(super) const EVERYTHING: Page = Page {
    after: None,
    limit: 1_000,
    descending: false,
};

pub(super) fn identifier(name: &str, major: u64, minor: u64) -> Identifier {
    Identifier {
        name: name.to_string(),
        version: format!("v{major}.{minor}"),
        major,
        minor,
    }
}

/// A task `name v1.0` on the default cluster: no retries, not optional, no dependencies.
pub(super) fn task(name: &str) -> NewTask {
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

pub(super) fn job(name: &str, tasks: Vec<NewTask>) -> NewJob {
    NewJob {
        id: Uuid::now_v7(),
        name: name.to_string(),
        trace_parent: "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".to_string(),
        tasks,
    }
}

/// A runner on `cluster` advertising `identifiers`.
pub(super) fn claim_request(
    claimant: &str,
    cluster: &str,
    identifiers: Vec<Identifier>,
) -> ClaimRequest {
    ClaimRequest {
        cluster: cluster.to_string(),
        identifiers,
        claimant: claimant.to_string(),
        lease: LEASE,
    }
}

/// A runner on the default cluster advertising `name v1.0` for each of `names`.
pub(super) fn runner(claimant: &str, names: &[&str]) -> ClaimRequest {
    let identifiers = names.iter().map(|name| identifier(name, 1, 0)).collect();
    claim_request(claimant, DEFAULT_CLUSTER_SLUG, identifiers)
}

pub(super) fn computed(task: &ClaimedTask, claimant: &str) -> ComputedReport {
    ComputedReport {
        task_id: task.id,
        claimant: claimant.to_string(),
        display: task.display.clone(),
        progress: Vec::new(),
        subtasks: Vec::new(),
    }
}

pub(super) fn computed_with_subtasks(
    task: &ClaimedTask,
    claimant: &str,
    subtasks: Vec<NewTask>,
) -> ComputedReport {
    ComputedReport {
        subtasks,
        ..computed(task, claimant)
    }
}

pub(super) fn failed(task: &ClaimedTask, claimant: &str, workflow_error: bool) -> FailedReport {
    FailedReport {
        task_id: task.id,
        claimant: claimant.to_string(),
        display: format!("{}\nValueError('boom')", task.display),
        workflow_error,
        progress: Vec::new(),
    }
}

pub(super) fn progress(label: Option<&str>, total: u64, done: u64) -> Progress {
    Progress {
        label: label.map(str::to_string),
        total,
        done,
    }
}

pub(super) async fn submit<S: Store>(store: &S, new_job: NewJob) -> Uuid {
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

pub(super) async fn claim<S: Store>(store: &S, request: &ClaimRequest) -> Option<ClaimedTask> {
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

pub(super) async fn claim_one<S: Store>(store: &S, request: &ClaimRequest) -> ClaimedTask {
    claim(store, request)
        .await
        .unwrap_or_else(|| panic!("a task should be claimable by {request:?}"))
}

pub(super) async fn report<S: Store>(store: &S, report: ComputedReport) -> ReportOutcome {
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

pub(super) async fn fail<S: Store>(store: &S, report: FailedReport) -> ReportOutcome {
    store.fail_task(report).await.expect("report a failure")
}

/// Hands `task` back unrun as `claimant` (the only way to: a batch of one report).
pub(super) async fn hand_back<S: Store>(
    store: &S,
    task: &ClaimedTask,
    claimant: &str,
) -> ReportOutcome {
    let report = Report::HandedBack(HandedBackReport {
        task_id: task.id,
        claimant: claimant.to_string(),
        display: format!("{}\nRunnerShutdown('Task was interrupted')", task.display),
    });
    let (mut outcomes, claimed) = store
        .report_and_claim_batch(vec![report], Vec::new())
        .await
        .expect("hand a task back");
    assert!(claimed.is_empty(), "a report-only batch claims nothing");
    assert_eq!(outcomes.len(), 1, "one outcome per report");
    outcomes.remove(0).expect("a hand-back of a known task")
}

pub(super) async fn job_state<S: Store>(store: &S, job: Uuid) -> JobState {
    store.get_job(job).await.expect("get job").state
}

pub(super) async fn tasks_by_state<S: Store>(store: &S, job: Uuid) -> Vec<(TaskState, u64)> {
    store
        .get_job(job)
        .await
        .expect("get job")
        .stats
        .tasks_by_state
}

/// Every task of `job`, each after its parent, siblings in submission order.
pub(super) async fn all_tasks<S: Store>(store: &S, job: Uuid) -> Vec<TaskSummary> {
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

pub(super) async fn task_summary<S: Store>(store: &S, job: Uuid, task: Uuid) -> TaskSummary {
    all_tasks(store, job)
        .await
        .into_iter()
        .find(|summary| summary.id == task)
        .unwrap_or_else(|| panic!("task {task} is listed in job {job}"))
}

pub(super) async fn task_state<S: Store>(store: &S, job: Uuid, task: Uuid) -> TaskState {
    task_summary(store, job, task).await.state
}

pub(super) fn sorted<T: Ord>(mut items: Vec<T>) -> Vec<T> {
    items.sort();
    items
}

/// Creates a deletable cluster `slug`.
pub(super) async fn add_cluster<S: Store>(store: &S, slug: &str) {
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

pub(super) fn workflow(slug: &str) -> Workflow {
    Workflow {
        slug: slug.to_string(),
        name: format!("{slug} workflow"),
        summary: format!("what {slug} does"),
        description: format!("# {slug}\n\nThe long description."),
    }
}

pub(super) async fn add_workflow<S: Store>(store: &S, slug: &str) -> Workflow {
    store
        .create_workflow(workflow(slug))
        .await
        .expect("create workflow")
}

/// A `sha256:` digest of 64 times `digit`.
pub(super) fn digest(digit: char) -> String {
    format!("sha256:{}", digit.to_string().repeat(64))
}

/// Publishes `artifact` as a release of `workflow` with `fingerprint`.
pub(super) async fn publish<S: Store>(
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

pub(super) fn release_ids(releases: Vec<Release>) -> Vec<Uuid> {
    releases.into_iter().map(|release| release.id).collect()
}

/// The clusters a release is deployed to, sorted.
pub(super) async fn deployed_to<S: Store>(store: &S, workflow: &str, release: Uuid) -> Vec<String> {
    let release = store
        .get_release(workflow, release)
        .await
        .expect("get release");
    sorted(release.clusters)
}

/// What runs on `cluster`: (workflow, release) pairs.
pub(super) async fn deployments<S: Store>(store: &S, cluster: &str) -> Vec<(String, Uuid)> {
    store
        .cluster_deployments(cluster)
        .await
        .expect("cluster deployments")
        .into_iter()
        .map(|release| (release.workflow, release.id))
        .collect()
}
