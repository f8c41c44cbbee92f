//! Scheduling policy between the gRPC services and the store: validates submissions,
//! resolves clusters, long-polls `NextTask` so an idle runner gets new work in
//! milliseconds, sizes leases, and expires lost ones.
//!
//! Layout:
//! - `mod.rs`: `Scheduler`, its `Options` and `Error`; the official `NextTask` path
//! - `work.rs`: the batched work protocol (reports and claims in batches, leases at once)

mod work;

pub use work::{ItemResult, MAX_CLAIM_PER_CALL, MAX_REPORTS_PER_CALL, WorkAnswer, may_wait};

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use uuid::Uuid;

use crate::api::convert::now_millis;
use crate::api::limits::{self, MAX_DISPLAY_CHARS, MAX_IDENTIFIERS_PER_CLAIM};
use crate::api::submission::{self, Limits};
use crate::api::workflows_v1::{NextTaskRequest, SubmitJobRequest, TaskFailedRequest, TaskState};
use crate::server::presence::{self, Presence};
use crate::server::signals::Signals;
use crate::server::store::{
    self, ClaimRequest, ClaimedTask, ComputedReport, DEFAULT_CLUSTER_SLUG, FailedReport, Job,
    NewJob, Progress, Report, ReportOutcome, Store,
};

/// Why a scheduling request was refused.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid task submission: {0}")]
    Submission(#[from] submission::Error),
    #[error("{0}")]
    InvalidRequest(String),
    #[error(transparent)]
    Store(#[from] store::Error),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Tunables of the scheduler.
#[derive(Debug, Clone)]
pub struct Options {
    /// Lease granted when a task is handed out.
    pub lease: Duration,
    /// Longest lease an extension grants.
    pub max_lease: Duration,
    /// How long `NextTask` waits for work before answering "idle".
    pub long_poll: Duration,
    /// Idling duration suggested to a runner that got no task.
    pub idle: Duration,
    /// Largest task input accepted, in bytes.
    pub max_input_bytes: usize,
    /// Most tasks one submission (a job, or one execution's subtasks) may hold.
    pub max_tasks_per_submission: usize,
    /// How long a runner stays connected without a contact (`--presence-timeout-ms`); by
    /// default [`presence::DEFAULT_TIMEOUT`], or one and a half lease extension intervals
    /// when leases are long (a busy runner may only extend its leases).
    pub presence_timeout: Option<Duration>,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            lease: Duration::from_secs(30),
            max_lease: Duration::from_secs(60),
            long_poll: Duration::from_secs(1),
            idle: Duration::from_millis(300),
            max_input_bytes: submission::DEFAULT_MAX_INPUT_BYTES,
            max_tasks_per_submission: limits::DEFAULT_MAX_TASKS_PER_SUBMISSION,
            presence_timeout: None,
        }
    }
}

/// The clusters a reporter may put subtasks on: any (admin keys, runner keys serving every
/// cluster, open servers), or only those a runner key serves, so a runner key cannot reach
/// another cluster's runners through the subtasks of a task it ran.
#[derive(Debug, Clone, Default)]
pub enum SubtaskClusters {
    #[default]
    Any,
    Only {
        key: String,
        clusters: Vec<String>,
    },
}

impl SubtaskClusters {
    fn check(&self, cluster: &str) -> Result<(), submission::Error> {
        match self {
            SubtaskClusters::Any => Ok(()),
            SubtaskClusters::Only { key, clusters } => {
                if clusters.iter().any(|served| served == cluster) {
                    Ok(())
                } else {
                    Err(submission::Error::ClusterNotServed {
                        key: key.clone(),
                        cluster: cluster.to_string(),
                        clusters: clusters.join(", "),
                    })
                }
            }
        }
    }
}

/// Shortest lease handed out: runners wait whole seconds before extending.
const MIN_LEASE: Duration = Duration::from_secs(2);

/// What a `NextTask` call ends with.
#[derive(Debug)]
pub enum NextTask {
    /// The caller did not ask for a task.
    NotAsked,
    Task(Box<ClaimedTask>),
    Idle(Duration),
}

/// The scheduler; cheap to clone.
#[derive(Clone)]
pub struct Scheduler {
    store: Arc<dyn Store>,
    options: Arc<Options>,
    signals: Signals,
    presence: Presence,
}

impl Scheduler {
    /// A scheduler whose work announcements go through `signals` (see
    /// [`Signals`](crate::server::signals::Signals): local, or shared by the replicas of a
    /// PostgreSQL database).
    pub fn new(store: Arc<dyn Store>, mut options: Options, signals: Signals) -> Self {
        options.lease = options.lease.max(MIN_LEASE);
        options.max_lease = options.max_lease.max(options.lease);
        // A runner with every slot busy only extends leases: it asks for up to
        // `max_lease`, and extends after a third of what it was granted; a waiting one
        // calls at least every long poll.
        let presence_timeout = options.presence_timeout.unwrap_or_else(|| {
            presence::DEFAULT_TIMEOUT
                .max(recommended_wait(options.max_lease) * 3 / 2 + options.long_poll)
        });
        Self {
            store,
            options: Arc::new(options),
            signals,
            presence: Presence::new(presence_timeout),
        }
    }

    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// The runners that asked this server for work (see [`Presence`]).
    pub fn presence(&self) -> &Presence {
        &self.presence
    }

    pub fn options(&self) -> &Options {
        &self.options
    }

    fn limits(&self) -> Limits {
        Limits {
            max_input_bytes: self.options.max_input_bytes,
            max_tasks: self.options.max_tasks_per_submission,
        }
    }

    /// Wakes every `NextTask` waiting for work (on every replica).
    fn announce_work(&self) {
        self.signals.announce_work();
    }

    pub fn signals(&self) -> &Signals {
        &self.signals
    }

    /// Resolves `""` to the default cluster.
    fn cluster_slug(slug: &str) -> String {
        if slug.is_empty() {
            DEFAULT_CLUSTER_SLUG.to_string()
        } else {
            slug.to_string()
        }
    }

    /// Validates and stores a job.
    pub async fn submit_job(&self, request: SubmitJobRequest) -> Result<Job> {
        submission::check_job(&request.job_name, &request.trace_parent)
            .map_err(|error| Error::InvalidRequest(error.to_string()))?;
        let tasks = match &request.tasks {
            Some(submissions) if !submissions.task_groups.is_empty() => {
                submission::expand(submissions, DEFAULT_CLUSTER_SLUG, self.limits())?
            }
            _ if !request.legacy_tasks.is_empty() => submission::expand_legacy(
                &request.legacy_tasks,
                DEFAULT_CLUSTER_SLUG,
                self.limits(),
            )?,
            _ => return Err(submission::Error::NoGroups.into()),
        };
        let job = self
            .store
            .submit_job(NewJob {
                id: Uuid::now_v7(),
                name: request.job_name,
                trace_parent: request.trace_parent,
                tasks,
            })
            .await?;
        self.announce_work();
        Ok(job)
    }

    /// Applies the computed report (if any) and, if asked, hands out the next task,
    /// waiting up to the long-poll duration for one. A refused claim never drops the report:
    /// the report is applied first, then the claim's error is answered.
    pub async fn next_task(
        &self,
        request: NextTaskRequest,
        claimant: String,
        subtask_clusters: &SubtaskClusters,
    ) -> Result<NextTask> {
        let report = match request.computed_task {
            Some(computed) => Some(
                self.computed_report(computed, &claimant, subtask_clusters)
                    .await?,
            ),
            None => None,
        };
        let claim = match request.next_task_to_run {
            None => Ok(None),
            Some(next) => self.next_task_claim(&next, &claimant).await.map(Some),
        };
        // A failure report (invalid subtasks) is applied on its own; a computed one rides
        // in the same transaction as the claim.
        let mut computed = match report {
            Some(Report::Computed(computed)) => Some(computed),
            Some(report) => {
                self.apply_report(report).await?;
                None
            }
            None => None,
        };
        let claim = match claim {
            Ok(claim) => claim,
            Err(error) => {
                if let Some(computed) = computed {
                    self.apply_report(Report::Computed(computed)).await?;
                }
                return Err(error);
            }
        };
        let Some(claim) = claim else {
            if let Some(computed) = computed {
                self.apply_report(Report::Computed(computed)).await?;
            }
            return Ok(NextTask::NotAsked);
        };
        let deadline = tokio::time::Instant::now() + self.options.long_poll;
        loop {
            let notified = self.signals.work().notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let (outcome, claimed) = self
                .store
                .report_and_claim(computed.take(), Some(claim.clone()))
                .await?;
            if let Some(outcome) = outcome {
                self.after_report(outcome);
            }
            if let Some(task) = claimed {
                return Ok(NextTask::Task(Box::new(task)));
            }
            tokio::select! {
                _ = &mut notified => continue,
                _ = tokio::time::sleep_until(deadline) => return Ok(NextTask::Idle(self.options.idle)),
            }
        }
    }

    /// The claim a `NextTask` call asks for: its cluster must exist and its identifiers be
    /// valid, at most [`MAX_IDENTIFIERS_PER_CLAIM`] of them.
    async fn next_task_claim(
        &self,
        next: &crate::api::workflows_v1::NextTaskToRun,
        claimant: &str,
    ) -> Result<ClaimRequest> {
        let identifiers = claim_identifiers("next_task_to_run.identifiers", &next.identifiers)?;
        let cluster = Self::cluster_slug(&next.cluster_slug);
        // An unknown cluster is the runner's misconfiguration: say so.
        self.store.get_cluster(&cluster).await?;
        Ok(ClaimRequest {
            cluster,
            identifiers,
            claimant: claimant.to_string(),
            lease: self.options.lease,
        })
    }

    /// Turns a `ComputedTask` into a report; subtasks that fail validation turn it into a
    /// failure report instead, so the task fails with the reason rather than the runner.
    async fn computed_report(
        &self,
        computed: crate::api::workflows_v1::ComputedTask,
        claimant: &str,
        subtask_clusters: &SubtaskClusters,
    ) -> Result<Report> {
        let task_id = required_id(computed.id.as_ref(), "computed_task.id")?;
        let progress = progress_of(&computed.progress_updates);
        if let Some(display) = display_over_the_limit(&computed.display) {
            return Ok(Report::Failed(FailedReport {
                task_id,
                claimant: claimant.to_string(),
                display,
                workflow_error: true,
                progress,
            }));
        }
        let subtasks = match self.expand_subtasks(&computed, subtask_clusters).await {
            Ok(subtasks) => subtasks,
            Err(reason) => {
                let display = submission::invalid_subtasks_display(&computed.display, &reason);
                return Ok(Report::Failed(FailedReport {
                    task_id,
                    claimant: claimant.to_string(),
                    display,
                    workflow_error: true,
                    progress,
                }));
            }
        };
        Ok(Report::Computed(ComputedReport {
            task_id,
            claimant: claimant.to_string(),
            display: computed.display,
            progress,
            subtasks,
        }))
    }

    async fn expand_subtasks(
        &self,
        computed: &crate::api::workflows_v1::ComputedTask,
        subtask_clusters: &SubtaskClusters,
    ) -> Result<Vec<store::NewTask>, submission::Error> {
        let subtasks = match &computed.sub_tasks {
            Some(submissions) if !submissions.task_groups.is_empty() => {
                submission::expand(submissions, DEFAULT_CLUSTER_SLUG, self.limits())?
            }
            _ if !computed.legacy_sub_tasks.is_empty() => submission::expand_legacy(
                &computed.legacy_sub_tasks,
                DEFAULT_CLUSTER_SLUG,
                self.limits(),
            )?,
            _ => Vec::new(),
        };
        let mut checked = std::collections::HashSet::new();
        for task in &subtasks {
            if checked.insert(task.cluster.clone()) {
                subtask_clusters.check(&task.cluster)?;
                if self.store.get_cluster(&task.cluster).await.is_err() {
                    return Err(submission::Error::UnknownCluster {
                        cluster: task.cluster.clone(),
                    });
                }
            }
        }
        Ok(subtasks)
    }

    async fn apply_report(&self, report: Report) -> Result<()> {
        match report {
            Report::Computed(computed) => {
                let (outcome, _) = self.store.report_and_claim(Some(computed), None).await?;
                if let Some(outcome) = outcome {
                    self.after_report(outcome);
                }
            }
            Report::Failed(failed) => {
                let outcome = self.store.fail_task(failed).await?;
                self.after_report(outcome);
            }
            handed_back @ Report::HandedBack(_) => {
                let (outcomes, _) = self
                    .store
                    .report_and_claim_batch(vec![handed_back], Vec::new())
                    .await?;
                for outcome in outcomes {
                    self.after_report(outcome?);
                }
            }
        }
        Ok(())
    }

    fn after_report(&self, outcome: ReportOutcome) {
        match outcome {
            ReportOutcome::Applied(_) => self.announce_work(),
            ReportOutcome::Stale(state) => {
                tracing::info!(
                    ?state,
                    "ignored a report for a task that is no longer the reporter's attempt"
                );
            }
        }
    }

    /// Applies a failure report; answers the task's state afterwards.
    pub async fn task_failed(
        &self,
        request: TaskFailedRequest,
        claimant: String,
    ) -> Result<TaskState> {
        let task_id = required_id(request.task_id.as_ref(), "task_id")?;
        let outcome = self
            .store
            .fail_task(FailedReport {
                task_id,
                claimant,
                display: capped_failure_display(request.display),
                workflow_error: request.was_workflow_error,
                progress: progress_of(&request.progress_updates),
            })
            .await?;
        self.after_report(outcome);
        Ok(match outcome {
            ReportOutcome::Applied(state) | ReportOutcome::Stale(state) => state,
        })
    }

    /// Extends a lease; answers (granted lease, recommended wait before the next extension),
    /// or `None` when the task is not running any more or not `claimant`'s.
    pub async fn extend_lease(
        &self,
        task: Uuid,
        requested: Duration,
        claimant: String,
    ) -> Result<Option<(Duration, Duration)>> {
        let granted = requested.clamp(MIN_LEASE, self.options.max_lease);
        let lease = self.store.extend_lease(task, claimant, granted).await?;
        Ok(lease.map(|lease| (lease, recommended_wait(lease))))
    }

    /// The recommended wait before the first extension of a fresh lease.
    pub fn initial_wait(&self) -> Duration {
        recommended_wait(self.options.lease)
    }

    pub async fn retry_job(&self, id: Uuid) -> Result<i64> {
        let count = self.store.retry_job(id).await?;
        self.announce_work();
        Ok(count)
    }

    pub async fn cancel_job(&self, id: Uuid) -> Result<()> {
        Ok(self.store.cancel_job(id).await?)
    }

    /// Expires lost leases until `shutdown` turns true: sleeps until the earliest lease
    /// deadline (at most a second, so new leases are seen), then re-queues what expired.
    pub async fn run_lease_reaper(self, mut shutdown: watch::Receiver<bool>) {
        loop {
            let now = now_millis();
            match self.store.expire_leases(now).await {
                Ok(0) => {}
                Ok(count) => {
                    tracing::info!(count, "re-queued tasks whose lease expired");
                    self.announce_work();
                }
                Err(error) => tracing::error!(%error, "expiring leases failed"),
            }
            let wait = match self.store.next_lease_deadline().await {
                Ok(Some(deadline)) => {
                    Duration::from_millis((deadline - now_millis()).clamp(10, 1000) as u64)
                }
                Ok(None) => Duration::from_secs(1),
                Err(error) => {
                    tracing::error!(%error, "reading lease deadlines failed");
                    Duration::from_secs(1)
                }
            };
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = shutdown.changed() => return,
            }
            if *shutdown.borrow() {
                return;
            }
        }
    }
}

/// How long a runner should wait before extending a lease of this length: a third of it,
/// in whole seconds (runners truncate to seconds), at least one.
fn recommended_wait(lease: Duration) -> Duration {
    Duration::from_secs((lease.as_secs() / 3).max(1))
}

/// The failure display of a task that reported a display over the limit
/// ([`MAX_DISPLAY_CHARS`], the hosted API's): its start, then what was wrong, within
/// the limit; `None` for a display within it.
fn display_over_the_limit(display: &str) -> Option<String> {
    let length = display.chars().count();
    if length <= MAX_DISPLAY_CHARS {
        return None;
    }
    let reason = format!(
        "InvalidDisplay('the reported display is {length} characters; the limit is {MAX_DISPLAY_CHARS}')"
    );
    let kept: String = display
        .chars()
        .take(MAX_DISPLAY_CHARS - reason.chars().count() - 1)
        .collect();
    Some(format!("{kept}\n{reason}"))
}

/// A failure display cut to [`MAX_DISPLAY_CHARS`], as the SDK cuts its own.
fn capped_failure_display(display: String) -> String {
    if display.chars().count() <= MAX_DISPLAY_CHARS {
        return display;
    }
    display.chars().take(MAX_DISPLAY_CHARS).collect()
}

fn required_id(id: Option<&crate::api::tilebox_v1::Id>, field: &str) -> Result<Uuid> {
    crate::api::convert::uuid_of(id)
        .map_err(|error| Error::InvalidRequest(format!("{field}: {error}")))?
        .ok_or_else(|| Error::InvalidRequest(format!("{field} is required")))
}

fn progress_of(updates: &[crate::api::workflows_v1::Progress]) -> Vec<Progress> {
    updates
        .iter()
        .map(|update| Progress {
            label: if update.label.is_empty() {
                None
            } else {
                Some(update.label.clone())
            },
            total: update.total,
            done: update.done,
        })
        .collect()
}

/// The identifiers a claim advertises, parsed: at most [`MAX_IDENTIFIERS_PER_CLAIM`], each
/// valid; `field` names them in the error.
fn claim_identifiers(
    field: &str,
    identifiers: &[crate::api::workflows_v1::TaskIdentifier],
) -> Result<Vec<store::Identifier>> {
    if identifiers.len() > MAX_IDENTIFIERS_PER_CLAIM {
        return Err(Error::InvalidRequest(format!(
            "`{field}` holds {} identifiers; the limit is {MAX_IDENTIFIERS_PER_CLAIM}",
            identifiers.len()
        )));
    }
    identifiers
        .iter()
        .map(submission::parse_identifier)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|error| Error::Submission(error.into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recommended_wait_is_a_third_in_whole_seconds() {
        assert_eq!(
            recommended_wait(Duration::from_secs(30)),
            Duration::from_secs(10)
        );
        assert_eq!(
            recommended_wait(Duration::from_secs(2)),
            Duration::from_secs(1)
        );
        assert_eq!(
            recommended_wait(Duration::from_millis(500)),
            Duration::from_secs(1)
        );
    }

    #[test]
    fn reported_displays_over_the_limit_are_failures_within_it() {
        assert_eq!(display_over_the_limit(&"d".repeat(1024)), None);
        let display =
            display_over_the_limit(&format!("Task\n{}", "d".repeat(2000))).expect("over the limit");
        assert_eq!(display.chars().count(), 1024);
        assert!(display.starts_with("Task\nddd"), "{display}");
        assert!(
            display.ends_with(
                "\nInvalidDisplay('the reported display is 2005 characters; the limit is 1024')"
            ),
            "{display}"
        );
        assert_eq!(capped_failure_display("é".repeat(1025)), "é".repeat(1024));
        assert_eq!(capped_failure_display("short".into()), "short");
    }

    #[test]
    fn failure_display_is_capped_at_1024_characters() {
        let display = crate::api::convert::failure_display("Task", &"x".repeat(5000));
        assert_eq!(display.chars().count(), 1024);
        assert!(display.starts_with("Task\nxxx"));
    }
}
