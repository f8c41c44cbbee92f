//! `tilebox task run`: executes one task of a local project in-process (and, with
//! `--recursive`, the subtasks it submits, in dependency order). The task is named with its
//! input (`--input`, an object of its fields), or fetched from a job on a server
//! (`--from-job`: its identifier and exact input bytes, read-only). `breakpoint()` and
//! `--pdb` (post-mortem at the failing frame) get the terminal.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Subcommand, ValueEnum};
use serde_json::{Value, json};
use uuid::Uuid;

use super::job::tree::{TaskNode, fetch_task_tree, get_job};
use super::job::{input_json, validate_version};
use super::output;
use super::{ApiArgs, UserError, parse_id};
use crate::api::convert::{self, task_state_name};
use crate::api::workflows_v1::{TaskState, TaskSummary};
use crate::python::{self, Placement, TaskOutcome};
use crate::runner::local::{self, Executed, LocalTask};
use crate::runner::prepare::{self, EnvironmentSource};

#[derive(Debug, Subcommand)]
pub enum TaskCommand {
    /// Execute a task of a local project in-process, for debugging.
    Run(RunArgs),
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Isolation {
    /// Probe the release, then pick.
    Auto,
    SubInterpreter,
    ChildProcess,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// The task: `NAME` or `NAME@vX.Y` (without a version: the one the runner registered).
    #[arg(value_name = "TASK", required_unless_present = "from_job")]
    identifier: Option<String>,
    /// The project directory [default: the nearest directory with tilebox.workflow.toml].
    #[arg(long)]
    project: Option<PathBuf>,
    /// The runner object, `module:object` (instead of the one in tilebox.workflow.toml).
    #[arg(long)]
    runner: Option<String>,
    /// The task's input: a JSON object of its fields (`{"field": value, ...}`), encoded as the
    /// SDK submits it; for a one-field task also the field's value alone. Unknown fields are
    /// errors, at any depth. Text that is not JSON is a JSON string (but text starting with `{`
    /// or `[` must be valid JSON); empty text is no input for a task without fields.
    #[arg(long, conflicts_with = "from_job")]
    input: Option<String>,
    /// Run a task of this job on the server (`--api-url`), with its identifier and exact input:
    /// the task that failed the job (the first failed task that is not optional, depth first
    /// in the job's task tree; else the first failed optional one), or `--task`. Runs under the
    /// job's id (its cache group). Only reads from the server.
    #[arg(long, value_name = "JOB", conflicts_with = "identifier")]
    from_job: Option<String>,
    /// With `--from-job`: this task of the job instead of the first failed one.
    #[arg(long = "task", value_name = "TASK_ID", requires = "from_job")]
    task_id: Option<String>,
    /// When the task raises, enter the post-mortem debugger (pdb) at its failing frame; the
    /// command still exits 1 with the task's error once the debugger quits. `q` at a
    /// `breakpoint()` stops the run there (no post-mortem, exit 1).
    #[arg(long)]
    pdb: bool,
    /// Also execute the subtasks the task submits, depth first, in dependency order.
    #[arg(long)]
    recursive: bool,
    /// Where the release runs.
    #[arg(long, value_enum, default_value = "auto")]
    isolation: Isolation,
    /// Cache directory (the unpacked Python runtime) [default: ~/.cache/tilebox].
    #[arg(long)]
    cache_dir: Option<PathBuf>,
    /// Skip `uv sync` (use the project's existing .venv as it is).
    #[arg(long)]
    no_sync: bool,
}

pub async fn run(command: TaskCommand, api: &ApiArgs) -> anyhow::Result<ExitCode> {
    match command {
        TaskCommand::Run(arguments) => run_task(arguments, api).await,
    }
}

/// What to run: a task named on the command line, or one fetched from a job.
enum Target {
    Named {
        name: String,
        version: Option<String>,
        input: Option<String>,
    },
    FromJob(Box<JobTask>),
}

/// A task of a job on the server, as `--from-job` runs it.
struct JobTask {
    job: Uuid,
    id: Uuid,
    name: String,
    version: String,
    input: Vec<u8>,
    display: String,
    state: TaskState,
}

async fn run_task(arguments: RunArgs, api: &ApiArgs) -> anyhow::Result<ExitCode> {
    let json = api.json;
    if arguments.pdb && json {
        return Err(UserError::with_hint(
            "--pdb cannot be combined with --json: the debugger talks on stdout",
            "leave out --json to debug",
        )
        .into());
    }
    // The server is asked first, so a wrong job or task fails before the environment sync.
    let target = match &arguments.from_job {
        Some(job) => Target::FromJob(Box::new(
            fetch_job_task(api, job, arguments.task_id.as_deref()).await?,
        )),
        None => {
            let task = arguments
                .identifier
                .clone()
                .expect("clap requires TASK without --from-job");
            let (name, version) = match task.split_once('@') {
                Some((name, version)) => {
                    validate_version(version)?;
                    (name.to_string(), Some(version.to_string()))
                }
                None => (task, None),
            };
            Target::Named {
                name,
                version,
                input: arguments.input.clone(),
            }
        }
    };
    let cache_dir = super::cache_dir(arguments.cache_dir.as_deref())?;
    let start = match &arguments.project {
        Some(project) => project.clone(),
        None => std::env::current_dir().context("cannot read the current directory")?,
    };
    let environment = if arguments.no_sync {
        EnvironmentSource::Existing
    } else {
        EnvironmentSource::Project
    };
    let source = prepare::project_source(&start, arguments.runner.as_deref(), environment)
        .map_err(|error| {
            prepare_error(
                error,
                "pass --runner module:object, or run inside a workflow project",
            )
        })?;
    if environment == EnvironmentSource::Project && source.root.join("pyproject.toml").is_file() {
        eprintln!(
            "syncing the environment of {} with uv",
            source.root.display()
        );
    }
    let release = prepare::release(source, &cache_dir)
        .await
        .map_err(|error| {
            prepare_error(error, "debug the environment with `uv sync` in the project")
        })?;
    // Debuggers (`breakpoint()`, `--pdb`) get this terminal, in either placement: a
    // sub-interpreter shares this process's descriptors, a child host opens /dev/tty. Only
    // with a terminal on stdin: else a child host's prints stay on its stderr (pipes, files).
    python::set_terminal(std::io::stdin().is_terminal());
    python::set_post_mortem(arguments.pdb);
    let placement = match arguments.isolation {
        Isolation::Auto => Placement::Auto,
        Isolation::SubInterpreter => Placement::SubInterpreter,
        Isolation::ChildProcess => Placement::ChildProcess,
    };
    let loaded = python::load(release.clone(), placement)
        .await
        .map_err(|error| UserError::caused_by(error, None))?;
    eprintln!(
        "loaded {} from {} in a {}{}; tasks: {}",
        release.runner,
        release.root.display(),
        loaded.isolation(),
        loaded
            .fallback_reason
            .as_ref()
            .map(|reason| format!(" ({reason})"))
            .unwrap_or_default(),
        loaded
            .identifiers()
            .iter()
            .map(|(name, version)| format!("{name}@{version}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let root = match root_task(&loaded, target).await {
        Ok(root) => root,
        Err(error) => {
            loaded.unload().await;
            return Err(error);
        }
    };
    let print_log = |display: &str, record: &Value| {
        if !json {
            eprintln!("{}", log_line(display, record));
        }
    };
    let execution = local::execute_tree(
        &loaded,
        root.task,
        root.job,
        arguments.recursive,
        &print_log,
    )
    .await;
    loaded.unload().await;
    let execution = execution?;
    if json {
        output::print_json(&json!({
            "tasks": execution.executed.iter().map(document).collect::<Vec<_>>(),
            "succeeded": execution.succeeded,
        }))?;
    } else {
        print_summary(&execution.executed)?;
    }
    Ok(if execution.succeeded {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// The task to run first and the job it runs in (`--from-job`: that job's id).
struct Root {
    task: LocalTask,
    job: Option<Uuid>,
}

/// The task to run first, with its input encoded, checked against what the release registers.
async fn root_task(loaded: &python::LoadedRelease, target: Target) -> anyhow::Result<Root> {
    match target {
        Target::Named {
            name,
            version,
            input,
        } => {
            let version = match version {
                Some(version) => version,
                None => registered_version(loaded.identifiers(), &name)?,
            };
            let input = match input {
                None => Vec::new(),
                Some(text) => encode_input(loaded, &name, &version, &text).await?,
            };
            Ok(Root {
                task: LocalTask {
                    display: name.rsplit('/').next().unwrap_or(&name).to_string(),
                    name,
                    version,
                    input,
                    optional: false,
                    depends_on: Vec::new(),
                },
                job: None,
            })
        }
        Target::FromJob(task) => {
            let version = local_version(loaded.identifiers(), &task)?;
            if version != task.version {
                eprintln!(
                    "note: task {} was submitted as {}@{}; the local project registers {}@{version}, which a runner would run it as (same major, newer minor)",
                    task.id, task.name, task.version, task.name
                );
            }
            eprintln!(
                "running task {} ({}, {} on the server) of job {} with its input ({} bytes)",
                task.id,
                task.display.lines().next().unwrap_or_default(),
                task_state_name(task.state),
                task.job,
                task.input.len()
            );
            Ok(Root {
                task: LocalTask {
                    display: task
                        .name
                        .rsplit('/')
                        .next()
                        .unwrap_or(&task.name)
                        .to_string(),
                    name: task.name,
                    version,
                    input: task.input,
                    optional: false,
                    depends_on: Vec::new(),
                },
                job: Some(task.job),
            })
        }
    }
}

/// `text` given by hand as the task's input bytes: JSON (see [`input_json`]; empty text as it
/// is, no input for a task without fields), encoded by the release's runtime as a submission
/// of the task built from it.
async fn encode_input(
    loaded: &python::LoadedRelease,
    name: &str,
    version: &str,
    text: &str,
) -> anyhow::Result<Vec<u8>> {
    let json = if text.trim().is_empty() {
        text.to_string()
    } else {
        input_json(text)?
    };
    match loaded.encode_input(name, version, &json).await {
        Ok(Ok(bytes)) => Ok(bytes),
        Ok(Err(error)) if error.kind == "InputError" => Err(UserError::with_hint(
            format!("invalid --input for {name}@{version}: {}", error.message),
            "pass the task's fields as a JSON object, e.g. --input '{\"field\": 1}'",
        )
        .into()),
        Ok(Err(error)) => Err(UserError::new(format!(
            "cannot encode --input for {name}@{version}: {error}"
        ))
        .into()),
        Err(error) => Err(UserError::caused_by(error, None).into()),
    }
}

/// Fetches task `task_id` of `job` (by default its first failed task) with read-only calls.
async fn fetch_job_task(
    api: &ApiArgs,
    job: &str,
    task_id: Option<&str>,
) -> anyhow::Result<JobTask> {
    let job = parse_id("job id", job)?;
    let task_id = task_id.map(|id| parse_id("task id", id)).transpose()?;
    let mut client = api.connect().await?;
    get_job(&mut client, job).await?;
    let tree = fetch_task_tree(&mut client, job).await?;
    let mut tasks = Vec::new();
    flatten(&tree, &mut tasks);
    let summary = match task_id {
        Some(id) => tasks
            .iter()
            .find(|task| convert::uuid_of(task.id.as_ref()).ok().flatten() == Some(id))
            .ok_or_else(|| {
                UserError::with_hint(
                    format!("task {id} is not a task of job {job}"),
                    format!("`tilebox job get {job}` lists its tasks"),
                )
            })?,
        None => first_failed(&tasks).ok_or_else(|| {
            UserError::with_hint(
                format!(
                    "job {job} has no failed task (its {} tasks are {})",
                    tasks.len(),
                    state_counts(&tasks)
                ),
                "pick one with --task TASK_ID (`tilebox job get` lists them)",
            )
        })?,
    };
    let id = convert::uuid_of(summary.id.as_ref())?.unwrap_or_default();
    let identifier = summary.identifier.clone().ok_or_else(|| {
        UserError::with_hint(
            format!("the server sent no identifier for task {id} of job {job}"),
            "--from-job needs a tilebox server of this version",
        )
    })?;
    Ok(JobTask {
        job,
        id,
        name: identifier.name,
        version: identifier.version,
        input: summary.input.clone().unwrap_or_default(),
        display: summary.display.clone(),
        state: summary.state(),
    })
}

/// The job's tasks depth first: each task, then its children, in the server's order.
fn flatten<'a>(nodes: &'a [TaskNode], into: &mut Vec<&'a TaskSummary>) {
    for node in nodes {
        into.push(&node.summary);
        flatten(&node.children, into);
    }
}

/// The task that failed the job: the first failed task in depth-first tree order (the first
/// one a reader of `job get` meets: for a failed subtask, the subtask rather than its
/// ancestors) that is not optional; else the first failed optional one (a server may report
/// those as failed too, though their failure did not fail the job), else the first one
/// failed-optional.
fn first_failed<'a>(tasks: &[&'a TaskSummary]) -> Option<&'a TaskSummary> {
    let in_state = |state: TaskState| {
        tasks
            .iter()
            .copied()
            .filter(move |task| task.state() == state)
    };
    in_state(TaskState::Failed)
        .find(|task| !task.optional)
        .or_else(|| in_state(TaskState::Failed).next())
        .or_else(|| in_state(TaskState::FailedOptional).next())
}

/// `3 computed, 1 queued`: how many tasks are in each state.
fn state_counts(tasks: &[&TaskSummary]) -> String {
    let mut counts: Vec<(&str, usize)> = Vec::new();
    for task in tasks {
        let name = task_state_name(task.state());
        match counts.iter_mut().find(|(state, _)| *state == name) {
            Some((_, count)) => *count += 1,
            None => counts.push((name, 1)),
        }
    }
    counts
        .iter()
        .map(|(state, count)| format!("{count} {state}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The version of the job's task the local release runs it as: its own, or as a runner
/// would (same name and major, the highest registered minor at least the task's).
fn local_version(identifiers: &[(String, String)], task: &JobTask) -> Result<String, UserError> {
    let parse = |version: &str| -> Option<(u64, u64)> {
        let (major, minor) = version.strip_prefix('v')?.split_once('.')?;
        Some((major.parse().ok()?, minor.parse().ok()?))
    };
    let wanted = parse(&task.version);
    let registered: Vec<&String> = identifiers
        .iter()
        .filter(|(name, _)| *name == task.name)
        .map(|(_, version)| version)
        .collect();
    let compatible = registered
        .iter()
        .filter_map(|version| Some((parse(version)?, *version)))
        .filter(|((major, minor), _)| {
            wanted.is_some_and(|(want_major, want_minor)| {
                *major == want_major && *minor >= want_minor
            })
        })
        .max_by_key(|(parsed, _)| *parsed);
    if let Some((_, version)) = compatible {
        return Ok(version.clone());
    }
    let listed = identifiers
        .iter()
        .map(|(name, version)| format!("{name}@{version}"))
        .collect::<Vec<_>>()
        .join(", ");
    Err(if registered.is_empty() {
        UserError::with_hint(
            format!(
                "task {} of job {} is {}@{}, which the local project does not register (it registers {listed})",
                task.id, task.job, task.name, task.version
            ),
            "run inside the project the job's runner ran, or pass --project / --runner",
        )
    } else {
        UserError::with_hint(
            format!(
                "task {} of job {} is {}@{}, but the local project registers {} only in {}: a runner of those would not run it",
                task.id,
                task.job,
                task.name,
                task.version,
                task.name,
                registered
                    .iter()
                    .map(|version| version.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            "check out the code the job's runner ran (the same major version, a minor at least the task's)",
        )
    })
}

/// A user error for a release that could not be prepared, with the hint for its kind.
fn prepare_error(error: prepare::Error, config_hint: &str) -> anyhow::Error {
    let hint = match &error {
        prepare::Error::Config(_) => Some(config_hint),
        prepare::Error::CustomCommand { .. } => Some("pass --runner module:object"),
        _ => None,
    };
    UserError::caused_by(error, hint).into()
}

/// The version of `name` the runner registered, when it registered exactly one.
fn registered_version(identifiers: &[(String, String)], name: &str) -> Result<String, UserError> {
    let versions: Vec<&String> = identifiers
        .iter()
        .filter(|(registered, _)| registered == name)
        .map(|(_, version)| version)
        .collect();
    match versions.as_slice() {
        [one] => Ok((*one).clone()),
        [] => Err(UserError::with_hint(
            format!("the runner has no task named `{name}`"),
            "the loaded tasks are listed above",
        )),
        _ => Err(UserError::with_hint(
            format!("the runner registers `{name}` in several versions"),
            "name one: NAME@vX.Y",
        )),
    }
}

/// `[Display] LEVEL message key=value ...`
fn log_line(display: &str, record: &Value) -> String {
    let level = record
        .get("level")
        .and_then(Value::as_str)
        .unwrap_or("INFO");
    let message = record
        .get("message")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let mut line = format!("[{display}] {level} {message}");
    if let Some(fields) = record.get("fields").and_then(Value::as_object) {
        for (key, value) in fields {
            if key == "task_id" {
                continue;
            }
            match value {
                Value::String(text) => line.push_str(&format!(" {key}={text}")),
                other => line.push_str(&format!(" {key}={other}")),
            }
        }
    }
    line
}

fn outcome_parts(outcome: &TaskOutcome) -> (&'static str, &str, &[python::Progress]) {
    match outcome {
        TaskOutcome::Computed {
            display, progress, ..
        } => ("computed", display, progress),
        TaskOutcome::Failed {
            display, progress, ..
        } => ("failed", display, progress),
    }
}

fn document(executed: &Executed) -> Value {
    let (state, display, progress) = outcome_parts(&executed.outcome);
    let mut document = json!({
        "identifier": { "name": executed.task.name, "version": executed.task.version },
        "input": String::from_utf8_lossy(&executed.task.input),
        "display": display,
        "state": state,
        "depth": executed.depth,
        "progress": progress.iter().map(|p| json!({"label": p.label, "total": p.total, "done": p.done})).collect::<Vec<_>>(),
        "logs": executed.logs,
    });
    match &executed.outcome {
        TaskOutcome::Computed { .. } => {
            document["subtasks"] = executed
                .subtasks
                .iter()
                .map(|task| {
                    json!({
                        "identifier": { "name": task.name, "version": task.version },
                        "input": String::from_utf8_lossy(&task.input),
                        "display": task.display,
                        "depends_on": task.depends_on,
                        "optional": task.optional,
                    })
                })
                .collect::<Value>();
        }
        TaskOutcome::Failed {
            workflow_error,
            error,
            ..
        } => {
            document["workflow_error"] = json!(workflow_error);
            document["error"] = json!(error.as_ref().map(|error| json!({
                "type": error.kind, "message": error.message, "traceback": error.traceback,
            })));
        }
    }
    document
}

fn print_summary(executed: &[Executed]) -> anyhow::Result<()> {
    let mut text = String::new();
    for item in executed {
        let (state, display, progress) = outcome_parts(&item.outcome);
        let indent = "  ".repeat(item.depth);
        let first_line = display.lines().next().unwrap_or_default();
        text.push_str(&format!(
            "{indent}{first_line}  {state}  {}@{}",
            item.task.name, item.task.version
        ));
        for entry in progress {
            text.push_str(&format!(
                "  {} {}/{}",
                entry.label.as_deref().unwrap_or("progress"),
                entry.done,
                entry.total
            ));
        }
        text.push('\n');
        if !item.subtasks.is_empty() {
            text.push_str(&format!(
                "{indent}  submitted {} subtasks\n",
                item.subtasks.len()
            ));
        }
        if item.quit_debugger() {
            text.push_str(&format!(
                "{indent}  quit in the debugger: the run stopped here\n"
            ));
        } else if let TaskOutcome::Failed {
            error: Some(error), ..
        } = &item.outcome
        {
            let traceback = if error.traceback.is_empty() {
                format!("{error}\n")
            } else {
                error.traceback.clone()
            };
            for line in traceback.lines() {
                text.push_str(&format!("{indent}  {line}\n"));
            }
        }
    }
    output::print_text(&text)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job_task(version: &str) -> JobTask {
        JobTask {
            job: Uuid::nil(),
            id: Uuid::nil(),
            name: "Scene".into(),
            version: version.into(),
            input: Vec::new(),
            display: "Scene".into(),
            state: TaskState::Failed,
        }
    }

    fn registered(versions: &[&str]) -> Vec<(String, String)> {
        let mut identifiers = vec![("Other".to_string(), "v9.9".to_string())];
        identifiers.extend(
            versions
                .iter()
                .map(|version| ("Scene".to_string(), version.to_string())),
        );
        identifiers
    }

    #[test]
    fn the_default_task_of_a_job_is_the_one_that_failed_it() {
        let summary = |display: &str, state: TaskState, optional: bool| TaskSummary {
            display: display.into(),
            state: state as i32,
            optional,
            ..Default::default()
        };
        let pick = |tasks: &[TaskSummary]| {
            let tasks: Vec<&TaskSummary> = tasks.iter().collect();
            first_failed(&tasks).map(|task| task.display.clone())
        };
        let optional = summary("optional", TaskState::Failed, true);
        let required = summary("required", TaskState::Failed, false);
        let failed_optional = summary("failed optional", TaskState::FailedOptional, true);
        let computed = summary("computed", TaskState::Computed, false);
        for (tasks, expected) in [
            // A failed optional task ahead of the one that failed the job.
            (
                vec![computed.clone(), optional.clone(), required.clone()],
                Some("required"),
            ),
            (
                vec![failed_optional.clone(), required.clone()],
                Some("required"),
            ),
            // Only optional failures: the first of them, reported as failed or not.
            (
                vec![failed_optional.clone(), optional.clone()],
                Some("optional"),
            ),
            (
                vec![computed.clone(), failed_optional.clone()],
                Some("failed optional"),
            ),
            (vec![computed.clone()], None),
        ] {
            assert_eq!(pick(&tasks).as_deref(), expected, "{tasks:?}");
        }
    }

    #[test]
    fn a_job_task_runs_as_the_version_a_runner_would_claim_it_with() {
        let task = job_task("v1.2");
        // Exact, or the highest minor of the same major that is at least the task's.
        for (versions, expected) in [
            (&["v1.2"][..], "v1.2"),
            (&["v1.3", "v1.5", "v2.0"][..], "v1.5"),
        ] {
            assert_eq!(
                local_version(&registered(versions), &task).expect(expected),
                expected
            );
        }
        // An older minor or another major is refused, naming what is registered.
        for versions in [&["v1.1"][..], &["v0.9", "v2.2"][..]] {
            let error = local_version(&registered(versions), &task).unwrap_err();
            assert!(
                error
                    .message
                    .contains(&format!("registers Scene only in {}", versions.join(", "))),
                "{}",
                error.message
            );
        }
        let error = local_version(&registered(&[]), &task).unwrap_err();
        assert!(
            error.message.contains(
                "is Scene@v1.2, which the local project does not register (it registers Other@v9.9)"
            ),
            "{}",
            error.message
        );
    }
}
