//! One slot: executes the tasks the dispatcher (`work.rs`) hands it, in order, each routed
//! to the release that registered its identifier (consecutive queued tasks of one release go
//! to its interpreter in one handoff), and hands each result back as a report. `-n N` slots
//! run at most N tasks at once.
//!
//! Each handoff runs on its own tokio task, supervised: should it panic, every task of it
//! not yet reported is reported as failed by the runner (not the task's own failure: it is
//! re-queued, and the server caps how often), so no lease is held for a task nobody runs,
//! and the slot carries on with the next tasks.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use uuid::Uuid;

use super::Shared;
use super::catalog::{Catalog, LoadedSet};
use crate::api::convert::{id, uuid_of};
use crate::api::selfhosted_v1::{HandedBackTask, WorkReport, work_report};
use crate::api::workflows_v1::{
    ComputedTask, Progress, Task, TaskFailedRequest, TaskIdentifier, TaskSubmissionGroup,
    TaskSubmissions,
};
use crate::python::{self, Batch, Submissions, TaskOutcome, TaskRequest};

/// The most queued tasks a slot hands its interpreter at once.
const MAX_HANDOFF: usize = 64;

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
    /// Set when this runner could not run the task (its release's host failed, or the
    /// handoff panicked): the failure, for the dispatcher's back-off from its identifier.
    /// `None` when the task's own code ran (however it ended) or no release runs it any more.
    pub runner_failure: Option<String>,
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

/// What executes a slot's handoffs and reports their tasks; shared with the tokio task each
/// handoff runs on.
struct Executor {
    index: usize,
    runner_id: String,
    shared: Arc<Shared>,
    finished: mpsc::UnboundedSender<Finished>,
}

/// A task ready to run: what its report and span need once it ran.
struct Prepared {
    task_id: Uuid,
    identifier: TaskIdentifier,
    display: String,
    retry_count: i64,
    trace: super::telemetry::TaskTrace,
    /// Links the runner's own lines about the task to its job while it runs.
    remembered: super::telemetry::Remembered,
    started: u64,
    /// Forwards the task's log records while it runs; ends when the task does.
    printer: tokio::task::JoinHandle<()>,
}

impl Slot {
    /// Runs the tasks handed to it until the dispatcher hangs up: whatever is queued at once,
    /// consecutive tasks of one release in one handoff to its interpreter.
    pub async fn run(self) {
        let Slot {
            index,
            runner_id,
            shared,
            mut tasks,
            finished,
            catalog,
        } = self;
        let executor = Arc::new(Executor {
            index,
            runner_id,
            shared,
            finished,
        });
        while let Some(first) = tasks.recv().await {
            let mut handed = vec![first];
            while handed.len() < MAX_HANDOFF {
                match tasks.try_recv() {
                    Ok(task) => handed.push(task),
                    Err(_) => break,
                }
            }
            // Route with the newest catalog: a release superseded since the claim must not
            // run the task (it is handed back and claimed again).
            let catalog = catalog.borrow().clone();
            let mut handed = handed.into_iter().peekable();
            while let Some(task) = handed.next() {
                let identifier = task.identifier.clone().unwrap_or_default();
                let Some(release) = catalog.route(&identifier.name, &identifier.version) else {
                    let report = unroutable(&task);
                    if !executor.send(&task, report, Duration::ZERO, None) {
                        return;
                    }
                    continue;
                };
                let mut group = vec![task];
                while let Some(next) = handed.next_if(|next| {
                    let identifier = next.identifier.clone().unwrap_or_default();
                    catalog
                        .route(&identifier.name, &identifier.version)
                        .is_some_and(|other| Arc::ptr_eq(&other, &release))
                }) {
                    group.push(next);
                }
                let heads: Vec<Task> = group.iter().map(head).collect();
                let sent = Arc::new(AtomicUsize::new(0));
                let work = executor.clone().execute(release, group, sent.clone());
                let alive = supervise(heads, sent, work, |task, report, failure| {
                    executor.send(task, report, Duration::ZERO, Some(failure.to_string()))
                })
                .await;
                if !alive {
                    return;
                }
            }
        }
    }
}

/// What a report of a task needs (its id, identifier and display), without its input.
fn head(task: &Task) -> Task {
    Task {
        id: task.id.clone(),
        identifier: task.identifier.clone(),
        display: task.display.clone(),
        ..Task::default()
    }
}

/// Runs `work` (a handoff of `heads`, which counts in `sent` the reports it handed on) on
/// its own tokio task. If it panics, each task it had not reported yet is reported failed
/// through `send` (with the failure, `SlotFailed(...)`), as the runner's failure (not the
/// task's own), naming the panic. Answers false once the dispatcher hung up.
async fn supervise(
    heads: Vec<Task>,
    sent: Arc<AtomicUsize>,
    work: impl Future<Output = bool> + Send + 'static,
    send: impl Fn(&Task, WorkReport, &str) -> bool,
) -> bool {
    let panic = match tokio::spawn(work).await {
        Ok(alive) => return alive,
        Err(error) => match error.try_into_panic() {
            Ok(panic) => panic
                .downcast_ref::<&str>()
                .map(|text| text.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "a panic without a message".to_string()),
            Err(error) => error.to_string(),
        },
    };
    let unreported = &heads[sent.load(Ordering::SeqCst).min(heads.len())..];
    tracing::error!(
        tasks = unreported.len(),
        panic = %panic,
        "a slot failed running its tasks; reporting them failed and carrying on"
    );
    let failure = format!("SlotFailed({panic:?})");
    unreported.iter().all(|task| {
        let display = task.display.clone().unwrap_or_default();
        send(
            task,
            failed(TaskFailedRequest {
                task_id: task.id.clone(),
                display: python::failure_display(&display, &failure),
                was_workflow_error: false,
                progress_updates: Vec::new(),
            }),
            &failure,
        )
    })
}

impl Executor {
    /// Hands a finished task's report to the dispatcher; false once it hung up.
    fn send(
        &self,
        task: &Task,
        report: WorkReport,
        elapsed: Duration,
        runner_failure: Option<String>,
    ) -> bool {
        let identifier = task.identifier.clone().unwrap_or_default();
        self.finished
            .send(Finished {
                slot: self.index,
                task: task_uuid(task),
                identifier: (identifier.name, identifier.version),
                report,
                elapsed,
                runner_failure,
            })
            .is_ok()
    }

    /// Executes `group` (tasks of `release`) in one handoff and reports each, counting the
    /// reports in `sent`; false once the dispatcher hung up.
    async fn execute(
        self: Arc<Self>,
        release: Arc<LoadedSet>,
        group: Vec<Task>,
        sent: Arc<AtomicUsize>,
    ) -> bool {
        let started = Instant::now();
        let (prepared, batch): (Vec<Prepared>, Batch) =
            group.iter().map(|task| self.prepare(task)).unzip();
        let outcomes = release.execute_batch(batch).await;
        // Each task's share of the handoff, for the dispatcher's prefetch averages.
        let elapsed = started.elapsed() / group.len().max(1) as u32;
        for ((task, prepared), outcome) in group.iter().zip(prepared).zip(outcomes) {
            // The release could not run the task; but a task not run because an earlier one
            // of the handoff took the host down is not its identifier's fault.
            let failure = match &outcome {
                Err(python::Error::NotRun { .. }) | Ok(_) => None,
                Err(error) => Some(format!("RunnerError({:?})", error.to_string())),
            };
            let report = self.finish(prepared, outcome).await;
            if !self.send(task, report, elapsed, failure) {
                return false;
            }
            sent.fetch_add(1, Ordering::SeqCst);
        }
        true
    }

    /// The request of a task, and what its report needs; starts forwarding its log records.
    fn prepare(&self, task: &Task) -> (Prepared, (TaskRequest, python::EventSender)) {
        let task_id = task_uuid(task);
        let identifier = task.identifier.clone().unwrap_or_default();
        let display = task.display.clone().unwrap_or_default();
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
        let remembered = self.shared.exporter.remember(&trace);
        let exporter = self.shared.exporter.clone();
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
        let prepared = Prepared {
            task_id,
            identifier,
            display,
            retry_count: task.retry_count,
            trace,
            remembered,
            started: super::telemetry::now_nanos(),
            printer,
        };
        (prepared, (request, events))
    }

    /// Records a task's span and turns its outcome into its report.
    async fn finish(
        &self,
        prepared: Prepared,
        outcome: Result<TaskOutcome, python::Error>,
    ) -> WorkReport {
        let Prepared {
            task_id,
            identifier,
            display,
            retry_count,
            trace,
            // Kept to the end: the lines below about the task still link to its job.
            remembered: _remembered,
            started,
            printer,
        } = prepared;
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
            retry_count,
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
            // Not attempted: handed back, counting nothing against the task.
            Err(error @ python::Error::NotRun { .. }) => {
                tracing::warn!(%task_id, %error, "handing the task back unrun");
                handed_back(HandedBackTask {
                    task_id: Some(id(task_id)),
                    display: python::failure_display(
                        &display,
                        &format!("NotRun({:?})", error.to_string()),
                    ),
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

/// The id of a claimed task (nil if the server sent none).
fn task_uuid(task: &Task) -> Uuid {
    uuid_of(task.id.as_ref())
        .ok()
        .flatten()
        .unwrap_or_else(Uuid::nil)
}

/// The report of a task no loaded release runs (its release was replaced since the claim):
/// handed back unrun, its display unchanged.
fn unroutable(task: &Task) -> WorkReport {
    let identifier = task.identifier.clone().unwrap_or_default();
    tracing::warn!(task_id = %task_uuid(task), name = %identifier.name, version = %identifier.version, "no loaded release runs this task; handing it back");
    handed_back(HandedBackTask {
        task_id: task.id.clone(),
        display: task.display.clone().unwrap_or_default(),
    })
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

fn handed_back(handed_back: HandedBackTask) -> WorkReport {
    WorkReport {
        report: Some(work_report::Report::HandedBack(handed_back)),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;

    fn task(name: &str) -> Task {
        Task {
            id: Some(id(Uuid::now_v7())),
            identifier: Some(TaskIdentifier {
                name: name.into(),
                version: "v1.0".into(),
            }),
            display: Some(name.into()),
            input: Some(b"big input".to_vec()),
            ..Task::default()
        }
    }

    /// The reports `supervise` handed on: (task display, report).
    fn reports_of(reports: &Mutex<Vec<(String, WorkReport)>>) -> Vec<(String, TaskFailedRequest)> {
        reports
            .lock()
            .unwrap()
            .iter()
            .map(|(display, report)| match &report.report {
                Some(work_report::Report::Failed(failed)) => (display.clone(), failed.clone()),
                other => panic!("expected a failure report, got {other:?}"),
            })
            .collect()
    }

    #[tokio::test]
    async fn a_handoff_that_panics_reports_its_unreported_tasks_failed_by_the_runner() {
        let group = [task("First"), task("Second"), task("Third")];
        let heads: Vec<Task> = group.iter().map(head).collect();
        assert!(heads.iter().all(|head| head.input.is_none()));
        let sent = Arc::new(AtomicUsize::new(0));
        let work = {
            let sent = sent.clone();
            async move {
                // The first task was reported, then the slot broke.
                sent.fetch_add(1, Ordering::SeqCst);
                if sent.load(Ordering::SeqCst) > 0 {
                    panic!("the slot breaks");
                }
                true
            }
        };
        let reports = Mutex::new(Vec::new());
        let alive = supervise(heads, sent, work, |task, report, failure| {
            assert_eq!(failure, "SlotFailed(\"the slot breaks\")");
            reports
                .lock()
                .unwrap()
                .push((task.display.clone().unwrap_or_default(), report));
            true
        })
        .await;

        assert!(alive, "the slot carries on");
        let reports = reports_of(&reports);
        assert_eq!(
            reports
                .iter()
                .map(|(display, _)| display.as_str())
                .collect::<Vec<_>>(),
            ["Second", "Third"]
        );
        for ((display, failed), original) in reports.iter().zip(&group[1..]) {
            assert_eq!(failed.task_id, original.id);
            assert!(!failed.was_workflow_error, "not the task's own failure");
            assert_eq!(
                failed.display,
                format!("{display}\nSlotFailed(\"the slot breaks\")")
            );
        }
    }

    #[tokio::test]
    async fn a_handoff_that_ends_is_not_reported_again() {
        let reports = Mutex::new(Vec::new());
        let send = |task: &Task, report, _: &str| {
            reports
                .lock()
                .unwrap()
                .push((task.display.clone().unwrap_or_default(), report));
            true
        };
        let heads = vec![head(&task("Only"))];
        let sent = Arc::new(AtomicUsize::new(1));
        assert!(supervise(heads.clone(), sent.clone(), async { true }, send).await);
        assert!(!supervise(heads, sent, async { false }, send).await);
        assert!(reports.lock().unwrap().is_empty());
    }
}
