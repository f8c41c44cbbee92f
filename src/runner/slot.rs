//! One slot: executes the tasks the dispatcher (`work.rs`) hands it, one after another,
//! each routed to the release that registered its identifier, and hands each result back as
//! a report. `-n N` slots run at most N tasks at once.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use uuid::Uuid;

use super::Shared;
use super::catalog::Catalog;
use crate::api::convert::{id, uuid_of};
use crate::api::selfhosted_v1::{WorkReport, work_report};
use crate::api::workflows_v1::{
    ComputedTask, Progress, Task, TaskFailedRequest, TaskIdentifier, TaskSubmissionGroup,
    TaskSubmissions,
};
use crate::python::{self, Submissions, TaskOutcome, TaskRequest};

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

/// A task a slot finished, with its report.
pub struct Finished {
    pub slot: usize,
    pub task: Uuid,
    /// Its identifier, `(name, version)`.
    pub identifier: (String, String),
    pub report: WorkReport,
    /// How long it ran.
    pub elapsed: Duration,
}

pub struct Slot {
    pub index: usize,
    /// `<runner id>/<index>`: names the slot in the spans of its tasks.
    pub runner_id: String,
    pub shared: Arc<Shared>,
    /// The tasks handed to this slot, in the order to run them.
    pub tasks: mpsc::UnboundedReceiver<Task>,
    pub finished: mpsc::UnboundedSender<Finished>,
    pub catalog: watch::Receiver<Arc<Catalog>>,
}

impl Slot {
    /// Runs the tasks handed to it until the dispatcher hangs up.
    pub async fn run(mut self) {
        while let Some(task) = self.tasks.recv().await {
            let task_id = uuid_of(task.id.as_ref())
                .ok()
                .flatten()
                .unwrap_or_else(Uuid::nil);
            let identifier = task.identifier.clone().unwrap_or_default();
            let started = Instant::now();
            // Route with the newest catalog: a release superseded since the claim must not
            // run the task (it is handed back and claimed again).
            let catalog = self.catalog.borrow().clone();
            let report = self.execute(&catalog, task).await;
            let finished = Finished {
                slot: self.index,
                task: task_id,
                identifier: (identifier.name, identifier.version),
                report,
                elapsed: started.elapsed(),
            };
            if self.finished.send(finished).is_err() {
                return;
            }
        }
    }

    async fn execute(&self, catalog: &Catalog, task: Task) -> WorkReport {
        let task_id = uuid_of(task.id.as_ref())
            .ok()
            .flatten()
            .unwrap_or_else(Uuid::nil);
        let identifier = task.identifier.clone().unwrap_or_default();
        let display = task.display.clone().unwrap_or_default();
        let Some(release) = catalog.route(&identifier.name, &identifier.version) else {
            tracing::warn!(%task_id, name = %identifier.name, version = %identifier.version, "no loaded release runs this task; handing it back");
            return failed(TaskFailedRequest {
                task_id: task.id,
                display,
                was_workflow_error: false,
                progress_updates: Vec::new(),
            });
        };
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
        match outcome {
            Ok(TaskOutcome::Computed {
                display,
                progress: updates,
                subtasks,
            }) => computed(ComputedTask {
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
                failed(TaskFailedRequest {
                    task_id: Some(id(task_id)),
                    display,
                    was_workflow_error: workflow_error,
                    progress_updates: progress(&updates),
                })
            }
            Err(error) => {
                tracing::error!(%task_id, %error, "the release could not run the task; handing it back");
                failed(TaskFailedRequest {
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

fn computed(computed: ComputedTask) -> WorkReport {
    WorkReport {
        report: Some(work_report::Report::Computed(computed)),
    }
}

fn failed(failed: TaskFailedRequest) -> WorkReport {
    WorkReport {
        report: Some(work_report::Report::Failed(failed)),
    }
}
