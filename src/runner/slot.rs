//! One slot: claims a task (reporting the previous result in the same call), routes it to
//! the release that registered its identifier, executes it, and reports. A slot takes work
//! only when it is free, so `-n N` slots run at most N tasks.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use uuid::Uuid;

use super::catalog::Catalog;
use super::leases::Leases;
use super::{Phase, Shared};
use crate::api::convert::{id, std_duration, uuid_of};
use crate::api::workflows_v1::{
    ComputedTask, NextTaskRequest, NextTaskToRun, Progress, Task, TaskFailedRequest,
    TaskIdentifier, TaskSubmissionGroup, TaskSubmissions,
};
use crate::client::Backoff;
use crate::python::{self, Submissions, TaskOutcome, TaskRequest};

/// An idle answer that took at least this long came from a server that long-polls.
const LONG_POLL_SEEN: Duration = Duration::from_millis(200);
/// How often a slot that is stopping tries to deliver its last computed result.
const LAST_REPORT_ATTEMPTS: usize = 5;

fn progress(progress: &[python::Progress]) -> Vec<Progress> {
    progress
        .iter()
        .map(|entry| Progress {
            label: entry.label.clone().unwrap_or_default(),
            total: entry.total,
            done: entry.done,
        })
        .collect()
}

/// The subtasks a task submitted, as `workflows.v1.TaskSubmissions`.
pub(super) fn task_submissions(submissions: Submissions) -> TaskSubmissions {
    TaskSubmissions {
        task_groups: submissions
            .task_groups
            .into_iter()
            .map(|group| TaskSubmissionGroup {
                dependencies_on_other_groups: group.dependencies_on_other_groups,
                inputs: group.inputs,
                identifier_pointers: group.identifier_pointers,
                cluster_slug_pointers: group.cluster_slug_pointers,
                display_pointers: group.display_pointers,
                max_retries_values: group.max_retries_values,
                optional_values: group.optional_values,
            })
            .collect(),
        cluster_slug_lookup: submissions.cluster_slug_lookup,
        identifier_lookup: submissions
            .identifier_lookup
            .into_iter()
            .map(|(name, version)| TaskIdentifier { name, version })
            .collect(),
        display_lookup: submissions.display_lookup,
    }
}

/// What a finished execution leaves to report.
enum Report {
    Computed(ComputedTask),
    Failed(TaskFailedRequest),
    /// The lease was lost meanwhile: another runner owns the task now.
    Nothing,
}

pub struct Slot {
    pub index: usize,
    pub runner_id: String,
    pub shared: Arc<Shared>,
    pub leases: Leases,
}

impl Slot {
    fn request<T>(&self, message: T) -> tonic::Request<T> {
        let mut request = tonic::Request::new(message);
        if let Ok(value) = self.runner_id.parse() {
            request
                .metadata_mut()
                .insert(crate::api::RUNNER_ID_HEADER, value);
        }
        request
    }

    /// Runs until the runner drains (or, with `stop_when_idling`, until there is no work).
    pub async fn run(
        self,
        mut catalog: watch::Receiver<Arc<Catalog>>,
        mut phase: watch::Receiver<Phase>,
    ) {
        let mut client = self.shared.client.clone();
        let mut pending: Option<ComputedTask> = None;
        let mut backoff = Backoff::for_server();
        loop {
            let draining = *phase.borrow() != Phase::Running;
            let current = catalog.borrow().clone();
            let identifiers = current.identifiers();
            if draining || (identifiers.is_empty() && pending.is_none()) {
                if let Some(computed) = pending.take() {
                    self.report_last(computed).await;
                }
                if draining || self.shared.options.stop_when_idling {
                    return;
                }
                // Nothing deployed yet: wait for a deployment (or shutdown).
                tokio::select! {
                    _ = catalog.changed() => {}
                    _ = phase.changed() => {}
                }
                continue;
            }
            let request = NextTaskRequest {
                computed_task: pending.clone(),
                next_task_to_run: Some(NextTaskToRun {
                    cluster_slug: self.shared.cluster.clone(),
                    identifiers: identifiers
                        .iter()
                        .map(|(name, version)| TaskIdentifier {
                            name: name.clone(),
                            version: version.clone(),
                        })
                        .collect(),
                }),
            };
            let asked_at = tokio::time::Instant::now();
            let answer = match client.tasks.next_task(self.request(request)).await {
                Ok(answer) => {
                    backoff.reset();
                    pending = None;
                    answer.into_inner()
                }
                Err(status) if retryable(&status) => {
                    let delay = backoff.next_delay();
                    tracing::warn!(slot = self.index, error = %status.message(), "the server is unreachable; retrying in {delay:?}");
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => {}
                        _ = phase.changed() => {}
                    }
                    continue;
                }
                Err(status) => {
                    tracing::error!(slot = self.index, code = ?status.code(), error = %status.message(), "the server refused the request");
                    pending = None;
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            };
            let Some(task) = answer
                .next_task
                .filter(|task| task.id.as_ref().is_some_and(|id| !id.uuid.is_empty()))
            else {
                if self.shared.options.stop_when_idling {
                    // The long poll already waited for work: there is none.
                    return;
                }
                // A server that held the request open (long poll) already waited for work:
                // ask again at once, so new work is picked up in milliseconds. Only a server
                // that answered idle straight away gets its suggested pause.
                let idle = if asked_at.elapsed() >= LONG_POLL_SEEN {
                    Duration::ZERO
                } else {
                    answer
                        .idling
                        .and_then(|idling| idling.suggested_idling_duration)
                        .map(|duration| std_duration(&duration))
                        .unwrap_or(Duration::from_secs(1))
                        .clamp(Duration::from_millis(1), Duration::from_secs(5))
                };
                tokio::select! {
                    _ = tokio::time::sleep(idle) => {}
                    _ = phase.changed() => {}
                    _ = catalog.changed() => {}
                }
                continue;
            };
            // Route with the newest catalog: a release superseded while this request waited
            // must not run the task (it is handed back and claimed again).
            let latest = catalog.borrow().clone();
            match self.execute(&latest, task).await {
                Report::Computed(computed) => pending = Some(computed),
                Report::Failed(failed) => self.report_failure(failed).await,
                Report::Nothing => {}
            }
        }
    }

    /// Sends the last computed result without asking for more work.
    async fn report_last(&self, computed: ComputedTask) {
        let mut client = self.shared.client.clone();
        let request = NextTaskRequest {
            computed_task: Some(computed),
            next_task_to_run: None,
        };
        let mut backoff = Backoff::for_server();
        for _ in 0..LAST_REPORT_ATTEMPTS {
            match client.tasks.next_task(self.request(request.clone())).await {
                Ok(_) => return,
                Err(status) if retryable(&status) => {
                    backoff.wait().await;
                }
                Err(status) => {
                    tracing::error!(error = %status.message(), "reporting the last result failed");
                    return;
                }
            }
        }
    }

    async fn report_failure(&self, failed: TaskFailedRequest) {
        let mut client = self.shared.client.clone();
        let mut backoff = Backoff::for_server();
        loop {
            match client.tasks.task_failed(self.request(failed.clone())).await {
                Ok(_) => return,
                Err(status) if retryable(&status) => {
                    backoff.wait().await;
                }
                Err(status) => {
                    tracing::error!(error = %status.message(), "reporting a failure failed");
                    return;
                }
            }
        }
    }

    async fn execute(&self, catalog: &Catalog, task: Task) -> Report {
        let task_id = uuid_of(task.id.as_ref())
            .ok()
            .flatten()
            .unwrap_or_else(Uuid::nil);
        let identifier = task.identifier.clone().unwrap_or_default();
        let display = task.display.clone().unwrap_or_default();
        let Some(release) = catalog.route(&identifier.name, &identifier.version) else {
            tracing::warn!(%task_id, name = %identifier.name, version = %identifier.version, "no loaded release runs this task; handing it back");
            return Report::Failed(TaskFailedRequest {
                task_id: task.id,
                display,
                was_workflow_error: false,
                progress_updates: Vec::new(),
            });
        };
        let lease = task.lease.unwrap_or_default();
        self.leases.hold(
            task_id,
            lease
                .lease
                .as_ref()
                .map(std_duration)
                .unwrap_or(Duration::from_secs(30)),
            lease
                .recommended_wait_until_next_extension
                .as_ref()
                .map(std_duration)
                .unwrap_or(Duration::from_secs(5))
                .max(Duration::from_millis(500)),
            &self.runner_id,
            &display,
        );
        let job = task.job.clone().unwrap_or_default();
        let request = TaskRequest {
            name: identifier.name.clone(),
            version: identifier.version.clone(),
            input: task.input.clone().unwrap_or_default(),
            id: task_id.to_string(),
            display: display.clone(),
            retry_count: task.retry_count,
            parent_id: uuid_of(task.parent_id.as_ref())
                .ok()
                .flatten()
                .map(|id| id.to_string()),
            depends_on: task
                .depends_on
                .iter()
                .filter_map(|id| uuid_of(Some(id)).ok().flatten())
                .map(|id| id.to_string())
                .collect(),
            job: python::JobInfo {
                id: uuid_of(job.id.as_ref())
                    .ok()
                    .flatten()
                    .map(|id| id.to_string())
                    .unwrap_or_default(),
                name: job.name.clone(),
                trace_parent: job.trace_parent.clone(),
            },
            cluster: self.shared.cluster.clone(),
        };
        let (events, mut received) = tokio::sync::mpsc::unbounded_channel::<python::Event>();
        let quiet = self.shared.options.quiet;
        let label = display.clone();
        let trace = super::telemetry::TaskTrace::new(&job.trace_parent, &task_id.to_string());
        let exporter = self.shared.exporter.clone();
        let started = super::telemetry::now_nanos();
        let forward_trace = trace.clone();
        let printer = tokio::spawn(async move {
            while let Some(event) = received.recv().await {
                if event.kind != "log" {
                    continue;
                }
                exporter.log(&forward_trace, &event.payload);
                if !quiet {
                    let record: serde_json::Value =
                        serde_json::from_str(&event.payload).unwrap_or_default();
                    let message = record
                        .get("message")
                        .and_then(|value| value.as_str())
                        .unwrap_or_default();
                    let level = record
                        .get("level")
                        .and_then(|value| value.as_str())
                        .unwrap_or("INFO");
                    tracing::info!(target: "tilebox::task", task = %label, level, "{message}");
                }
            }
        });
        let outcome = release.execute(request, events).await;
        let _ = printer.await;
        let failure = match &outcome {
            Ok(TaskOutcome::Failed {
                error: Some(error), ..
            }) => Some((
                error.kind.clone(),
                error.message.clone(),
                error.traceback.clone(),
            )),
            Ok(TaskOutcome::Failed { display, .. }) => {
                Some(("TaskFailed".into(), display.clone(), String::new()))
            }
            Err(error) => Some(("RunnerError".into(), error.to_string(), String::new())),
            Ok(TaskOutcome::Computed { .. }) => None,
        };
        let span_name = identifier
            .name
            .rsplit('/')
            .next()
            .unwrap_or(&identifier.name)
            .to_string();
        self.shared.exporter.task_span(
            &trace,
            &span_name,
            started,
            (&identifier.name, &identifier.version),
            &self.runner_id,
            task.retry_count,
            failure.as_ref().map(|(kind, message, traceback)| {
                (kind.as_str(), message.as_str(), traceback.as_str())
            }),
        );
        let lost = self.leases.release(task_id);
        if lost {
            tracing::warn!(%task_id, "abandoning the result: the task's lease was lost");
            return Report::Nothing;
        }
        match outcome {
            Ok(TaskOutcome::Computed {
                display,
                progress: updates,
                subtasks,
            }) => Report::Computed(ComputedTask {
                id: Some(id(task_id)),
                display,
                legacy_sub_tasks: Vec::new(),
                progress_updates: progress(&updates),
                sub_tasks: subtasks.map(task_submissions),
            }),
            Ok(TaskOutcome::Failed {
                display,
                workflow_error,
                progress: updates,
                error,
            }) => {
                if let Some(error) = &error {
                    let first_line = display.lines().next().unwrap_or_default().to_string();
                    tracing::warn!(%task_id, task = %first_line, "task failed: {error}");
                }
                Report::Failed(TaskFailedRequest {
                    task_id: Some(id(task_id)),
                    display,
                    was_workflow_error: workflow_error,
                    progress_updates: progress(&updates),
                })
            }
            Err(error) => {
                tracing::error!(%task_id, %error, "the release could not run the task; handing it back");
                Report::Failed(TaskFailedRequest {
                    task_id: Some(id(task_id)),
                    display: python::failure_display(
                        &display,
                        &format!("RunnerError({:?})", error.to_string()),
                    ),
                    was_workflow_error: false,
                    progress_updates: Vec::new(),
                })
            }
        }
    }
}

/// Faults worth retrying: the server is away or overloaded, or failed internally.
pub fn retryable(status: &tonic::Status) -> bool {
    matches!(
        status.code(),
        tonic::Code::Unavailable
            | tonic::Code::Unknown
            | tonic::Code::Internal
            | tonic::Code::DeadlineExceeded
            | tonic::Code::ResourceExhausted
            | tonic::Code::Aborted
            | tonic::Code::Cancelled
    )
}
