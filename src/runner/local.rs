//! Executing a task, and with `recursive` the subtasks it submits, in-process and without a
//! server (`tilebox task run`): depth first, each subtask only after the subtasks it depends
//! on (and their descendants) completed, stopping at the first failure that is not optional.
//!
//! Subtasks are expanded by the server's own rules (`server::scheduler::submission`), so a
//! submission the server would refuse fails the task here too, with the server's message.

use serde_json::Value;

use super::slot::task_submissions;
use crate::api::submission;
use crate::python::{self, LoadedRelease, Submissions, TaskOutcome, TaskRequest};

/// The job name local executions run under.
const JOB_NAME: &str = "task run";
/// The cluster local executions report.
const CLUSTER: &str = "local";
/// The exception `q` in the debugger raises (`breakpoint()`, `--pdb`): the run stops there.
pub const DEBUGGER_QUIT: &str = "BdbQuit";

/// One task to execute locally.
#[derive(Debug, Clone)]
pub struct LocalTask {
    pub name: String,
    pub version: String,
    pub input: Vec<u8>,
    pub display: String,
    pub optional: bool,
    /// Indexes of the sibling subtasks this one waits for.
    pub depends_on: Vec<usize>,
}

/// What happened to one executed task.
#[derive(Debug)]
pub struct Executed {
    /// 0 for the task asked for, 1 for its subtasks, and so on.
    pub depth: usize,
    pub task: LocalTask,
    pub outcome: TaskOutcome,
    /// The log records it emitted, as the runtime sent them.
    pub logs: Vec<Value>,
    /// Its subtasks, expanded (empty unless it computed and submitted some).
    pub subtasks: Vec<LocalTask>,
}

impl Executed {
    /// Whether the user quit the debugger in this task (which then failed with `BdbQuit`).
    pub fn quit_debugger(&self) -> bool {
        matches!(&self.outcome, TaskOutcome::Failed { error: Some(error), .. } if error.kind == DEBUGGER_QUIT)
    }
}

/// Everything one `execute_tree` call executed, in execution order.
#[derive(Debug, Default)]
pub struct Execution {
    pub executed: Vec<Executed>,
    /// Whether every task that ran computed, or failed inside an optional subtask.
    pub succeeded: bool,
}

/// Called with the task's display and each log record while a task runs.
pub type LogSink<'a> = &'a (dyn Fn(&str, &Value) + Sync);

/// Expands the subtasks a task submitted, by the server's rules.
pub fn subtasks(submissions: &Submissions) -> Result<Vec<LocalTask>, submission::Error> {
    let limits = submission::Limits::default();
    let expanded = submission::expand(&task_submissions(submissions.clone()), CLUSTER, limits)?;
    Ok(expanded
        .into_iter()
        .map(|task| LocalTask {
            name: task.identifier.name,
            version: task.identifier.version,
            input: task.input,
            display: task.display,
            optional: task.optional,
            depends_on: task.depends_on,
        })
        .collect())
}

/// Executes `root` (and with `recursive` its subtasks) in `loaded`, as tasks of the job
/// `job_id` (a fresh one if `None`: the job id names the tasks' cache group). Stops at the
/// first failure that is not optional, and at a task whose debugger the user quit.
pub async fn execute_tree(
    loaded: &LoadedRelease,
    root: LocalTask,
    job_id: Option<uuid::Uuid>,
    recursive: bool,
    log: LogSink<'_>,
) -> Result<Execution, python::Error> {
    let job_id = job_id.unwrap_or_else(uuid::Uuid::now_v7).to_string();
    let mut execution = Execution::default();
    execution.succeeded = execute(
        loaded,
        root,
        &job_id,
        recursive,
        0,
        &mut execution.executed,
        log,
    )
    .await?;
    Ok(execution)
}

async fn execute(
    loaded: &LoadedRelease,
    task: LocalTask,
    job_id: &str,
    recursive: bool,
    depth: usize,
    executed: &mut Vec<Executed>,
    log: LogSink<'_>,
) -> Result<bool, python::Error> {
    let (mut outcome, logs) = execute_one(loaded, &task, job_id, log).await?;
    let subtasks = match &outcome {
        TaskOutcome::Computed {
            subtasks: Some(submitted),
            progress,
            display,
        } if !submitted.task_groups.is_empty() => match subtasks(submitted) {
            Ok(subtasks) => subtasks,
            // The server fails a task whose subtasks it refuses; so does this.
            Err(error) => {
                outcome = TaskOutcome::Failed {
                    display: submission::invalid_subtasks_display(display, &error),
                    progress: progress.clone(),
                    workflow_error: true,
                    error: None,
                };
                Vec::new()
            }
        },
        _ => Vec::new(),
    };
    let failed = matches!(outcome, TaskOutcome::Failed { .. });
    executed.push(Executed {
        depth,
        task,
        outcome,
        logs,
        subtasks: subtasks.clone(),
    });
    if failed {
        return Ok(false);
    }
    if !recursive {
        return Ok(true);
    }
    // The server refused cycles above, so some subtask is always ready.
    let mut done = vec![false; subtasks.len()];
    while let Some(next) = (0..subtasks.len())
        .find(|&index| !done[index] && subtasks[index].depends_on.iter().all(|&d| done[d]))
    {
        done[next] = true;
        let child = subtasks[next].clone();
        let optional = child.optional;
        let ok = Box::pin(execute(
            loaded,
            child,
            job_id,
            recursive,
            depth + 1,
            executed,
            log,
        ))
        .await?;
        if (!ok && !optional) || executed.last().is_some_and(Executed::quit_debugger) {
            return Ok(false);
        }
    }
    Ok(true)
}

async fn execute_one(
    loaded: &LoadedRelease,
    task: &LocalTask,
    job_id: &str,
    log: LogSink<'_>,
) -> Result<(TaskOutcome, Vec<Value>), python::Error> {
    let request = TaskRequest {
        name: task.name.clone(),
        version: task.version.clone(),
        input: task.input.clone(),
        id: uuid::Uuid::now_v7().to_string(),
        display: task.display.clone(),
        retry_count: 0,
        parent_id: None,
        depends_on: Vec::new(),
        job: python::JobInfo {
            id: job_id.to_string(),
            name: JOB_NAME.into(),
            trace_parent: String::new(),
        },
        cluster: CLUSTER.into(),
    };
    let (sender, mut events) = tokio::sync::mpsc::unbounded_channel::<python::Event>();
    let execution = loaded.execute(request, sender);
    let collect = async {
        let mut logs = Vec::new();
        while let Some(event) = events.recv().await {
            if event.kind != "log" {
                continue;
            }
            let record: Value =
                serde_json::from_str(&event.payload).unwrap_or(Value::String(event.payload));
            log(&task.display, &record);
            logs.push(record);
        }
        logs
    };
    let (outcome, logs) = tokio::join!(execution, collect);
    Ok((outcome?, logs))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::python::protocol::SubmissionGroup;

    fn submissions(identifier_pointer: u64) -> Submissions {
        Submissions {
            task_groups: vec![
                SubmissionGroup {
                    inputs: vec![b"1".to_vec()],
                    identifier_pointers: vec![0],
                    cluster_slug_pointers: vec![0],
                    display_pointers: vec![0],
                    ..Default::default()
                },
                SubmissionGroup {
                    dependencies_on_other_groups: vec![0],
                    inputs: vec![b"2".to_vec()],
                    identifier_pointers: vec![identifier_pointer],
                    cluster_slug_pointers: vec![0],
                    display_pointers: vec![0],
                    optional_values: vec![true],
                    ..Default::default()
                },
            ],
            cluster_slug_lookup: vec![String::new()],
            identifier_lookup: vec![("Leaf".into(), "v1.2".into())],
            display_lookup: vec!["Leaf".into()],
        }
    }

    #[test]
    fn subtasks_expand_with_their_dependencies() {
        let tasks = subtasks(&submissions(0)).expect("valid");
        assert_eq!(tasks.len(), 2);
        assert_eq!(
            (tasks[1].name.as_str(), tasks[1].version.as_str()),
            ("Leaf", "v1.2")
        );
        assert_eq!(tasks[1].input, b"2");
        assert_eq!(tasks[1].depends_on, vec![0]);
        assert!(tasks[1].optional && !tasks[0].optional);
    }

    #[test]
    fn subtasks_the_server_refuses_are_refused_with_its_message() {
        // The CLI's own expansion used to fall back to entry 0 for a pointer out of range.
        let error = subtasks(&submissions(7)).unwrap_err();
        assert!(
            matches!(
                error,
                submission::Error::PointerOutOfRange {
                    group: 1,
                    pointer: 7,
                    ..
                }
            ),
            "{error}"
        );
        let display = submission::invalid_subtasks_display("Root", &error);
        assert!(
            display.starts_with("Root\nInvalidSubtasks(\"task group 1, task 0"),
            "{display}"
        );
    }
}
