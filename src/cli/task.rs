//! `tilebox task run`: executes one task of a local project in-process (and, with
//! `--recursive`, the subtasks it submits, in dependency order), with no server.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Subcommand, ValueEnum};
use serde_json::{Value, json};

use super::UserError;
use super::job::{task_input, validate_version};
use super::output;
use crate::python::{
    self, LoadedRelease, Placement, Release, Submissions, TaskOutcome, TaskRequest,
};
use crate::release::config::{self, Entry};

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
    task: String,
    /// The project directory [default: the nearest directory with tilebox.workflow.toml].
    #[arg(long)]
    project: Option<PathBuf>,
    /// The runner object, `module:object` (instead of the one in tilebox.workflow.toml).
    #[arg(long)]
    runner: Option<String>,
    /// The task's input: JSON is passed as is, other text as a JSON string.
    #[arg(long)]
    input: Option<String>,
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

pub async fn run(command: TaskCommand, json: bool) -> anyhow::Result<ExitCode> {
    match command {
        TaskCommand::Run(arguments) => run_task(arguments, json).await,
    }
}

/// The cache directory: `$XDG_CACHE_HOME/tilebox`, else `~/.cache/tilebox`.
pub fn default_cache_dir() -> anyhow::Result<PathBuf> {
    dirs::cache_dir()
        .map(|directory| directory.join("tilebox"))
        .context("cannot find the user's cache directory; pass --cache-dir")
}

/// The release described by a local project.
fn local_release(arguments: &RunArgs, cache_dir: &Path) -> anyhow::Result<Release> {
    let start = match &arguments.project {
        Some(project) => project.clone(),
        None => std::env::current_dir().context("cannot read the current directory")?,
    };
    let (root, runner, label) = match &arguments.runner {
        Some(runner) => (
            std::path::absolute(&start).unwrap_or(start.clone()),
            runner.clone(),
            "local".to_string(),
        ),
        None => {
            let path = config::find(&start).map_err(|error| {
                UserError::with_hint(
                    error.to_string(),
                    "pass --runner module:object, or run inside a workflow project",
                )
            })?;
            let config = config::load(&path).map_err(|error| UserError::new(error.to_string()))?;
            let runner = match config.entry {
                Entry::Runner(runner) => runner,
                Entry::Command(command) => {
                    return Err(UserError::with_hint(
                        format!(
                            "{} starts a custom worker command ({}); it cannot run in-process",
                            path.display(),
                            command.join(" ")
                        ),
                        "pass --runner module:object",
                    )
                    .into());
                }
            };
            (config.root, runner, config.slug)
        }
    };
    let (venv, site_packages) = if root.join("pyproject.toml").is_file() && !arguments.no_sync {
        eprintln!("syncing the environment of {} with uv", root.display());
        let environment = python::environment::sync(&root, false).map_err(|error| match error {
            python::environment::EnvironmentError::UvMissing => UserError::with_hint(
                "`uv` is not installed or not on PATH",
                "install it with `python3 -m pip install uv`",
            )
            .into(),
            other => anyhow::Error::new(other),
        })?;
        (Some(environment.venv), environment.site_packages)
    } else {
        let venv = root.join(".venv");
        let sites = python::environment::site_packages_of(&venv);
        (venv.is_dir().then_some(venv), sites)
    };
    Ok(Release {
        label,
        runtime: python::runtime::unpack(cache_dir)?,
        root,
        site_packages,
        venv,
        runner,
    })
}

/// One task to execute locally.
#[derive(Debug, Clone)]
struct LocalTask {
    name: String,
    version: String,
    input: Vec<u8>,
    display: String,
    optional: bool,
    depends_on: Vec<usize>,
}

/// What happened to one executed task.
struct Executed {
    depth: usize,
    task: LocalTask,
    outcome: TaskOutcome,
    logs: Vec<Value>,
}

async fn run_task(arguments: RunArgs, json: bool) -> anyhow::Result<ExitCode> {
    let (name, version) = match arguments.task.split_once('@') {
        Some((name, version)) => {
            validate_version(version)?;
            (name.to_string(), Some(version.to_string()))
        }
        None => (arguments.task.clone(), None),
    };
    let cache_dir = match &arguments.cache_dir {
        Some(directory) => directory.clone(),
        None => default_cache_dir()?,
    };
    let release = local_release(&arguments, &cache_dir)?;
    let placement = match arguments.isolation {
        Isolation::Auto => Placement::Auto,
        Isolation::SubInterpreter => Placement::SubInterpreter,
        Isolation::ChildProcess => Placement::ChildProcess,
    };
    let loaded = python::load(release.clone(), placement)
        .await
        .map_err(|error| UserError::new(error.to_string()))?;
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
    let version = match version {
        Some(version) => version,
        None => {
            let versions: Vec<&String> = loaded
                .identifiers()
                .iter()
                .filter(|(registered, _)| *registered == name)
                .map(|(_, version)| version)
                .collect();
            match versions.as_slice() {
                [one] => (*one).clone(),
                [] => {
                    return Err(UserError::with_hint(
                        format!("the runner has no task named `{name}`"),
                        "the loaded tasks are listed above",
                    )
                    .into());
                }
                _ => {
                    return Err(UserError::with_hint(
                        format!("the runner registers `{name}` in several versions"),
                        "name one: NAME@vX.Y",
                    )
                    .into());
                }
            }
        }
    };
    let root = LocalTask {
        display: name.rsplit('/').next().unwrap_or(&name).to_string(),
        name,
        version,
        input: task_input(arguments.input.as_deref()),
        optional: false,
        depends_on: Vec::new(),
    };
    let job_id = uuid::Uuid::now_v7().to_string();
    let mut executed = Vec::new();
    let succeeded = execute_tree(
        &loaded,
        root,
        &job_id,
        arguments.recursive,
        0,
        &mut executed,
        json,
    )
    .await?;
    loaded.unload().await;
    if json {
        output::print_json(
            &json!({ "tasks": executed.iter().map(document).collect::<Vec<_>>(), "succeeded": succeeded }),
        )?;
    } else {
        print_summary(&executed)?;
    }
    Ok(if succeeded {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// Executes `task`, then (recursively) its subtasks depth first, each only after the
/// subtasks it depends on (and their descendants) completed. Stops at the first failure
/// that is not optional.
async fn execute_tree(
    loaded: &LoadedRelease,
    task: LocalTask,
    job_id: &str,
    recursive: bool,
    depth: usize,
    executed: &mut Vec<Executed>,
    json: bool,
) -> anyhow::Result<bool> {
    let (outcome, logs) = execute_one(loaded, &task, job_id, json).await?;
    let subtasks = match &outcome {
        TaskOutcome::Computed {
            subtasks: Some(subtasks),
            ..
        } => expand(subtasks),
        _ => Vec::new(),
    };
    let failed = matches!(outcome, TaskOutcome::Failed { .. });
    executed.push(Executed {
        depth,
        task,
        outcome,
        logs,
    });
    if failed {
        return Ok(false);
    }
    if !recursive {
        return Ok(true);
    }
    let mut done = vec![false; subtasks.len()];
    for _ in 0..subtasks.len() {
        let Some(next) = (0..subtasks.len())
            .find(|&index| !done[index] && subtasks[index].depends_on.iter().all(|&d| done[d]))
        else {
            anyhow::bail!("the subtasks' dependencies form a cycle");
        };
        done[next] = true;
        let child = subtasks[next].clone();
        let optional = child.optional;
        let ok = Box::pin(execute_tree(
            loaded,
            child,
            job_id,
            recursive,
            depth + 1,
            executed,
            json,
        ))
        .await?;
        if !ok && !optional {
            return Ok(false);
        }
    }
    Ok(true)
}

async fn execute_one(
    loaded: &LoadedRelease,
    task: &LocalTask,
    job_id: &str,
    json: bool,
) -> anyhow::Result<(TaskOutcome, Vec<Value>)> {
    let id = uuid::Uuid::now_v7().to_string();
    let request = TaskRequest {
        name: task.name.clone(),
        version: task.version.clone(),
        input: task.input.clone(),
        id: id.clone(),
        display: task.display.clone(),
        retry_count: 0,
        parent_id: None,
        depends_on: Vec::new(),
        job: python::JobInfo {
            id: job_id.to_string(),
            name: "task run".into(),
            trace_parent: String::new(),
        },
        cluster: "local".into(),
    };
    let (sender, mut events) = tokio::sync::mpsc::unbounded_channel::<python::Event>();
    let display = task.display.clone();
    let printer = tokio::spawn(async move {
        let mut logs = Vec::new();
        while let Some(event) = events.recv().await {
            if event.kind != "log" {
                continue;
            }
            let record: Value =
                serde_json::from_str(&event.payload).unwrap_or(Value::String(event.payload));
            if !json {
                eprintln!("{}", log_line(&display, &record));
            }
            logs.push(record);
        }
        logs
    });
    let outcome = loaded.execute(request, sender).await?;
    let logs = printer.await.unwrap_or_default();
    Ok((outcome, logs))
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

/// Subtasks of a computed task as local tasks, with dependencies as indexes.
fn expand(submissions: &Submissions) -> Vec<LocalTask> {
    let mut tasks = Vec::new();
    let mut ranges = Vec::new();
    for group in &submissions.task_groups {
        let start = tasks.len();
        let depends_on: Vec<usize> = group
            .dependencies_on_other_groups
            .iter()
            .filter_map(|&dependency| ranges.get(dependency as usize).cloned())
            .flat_map(|range: std::ops::Range<usize>| range)
            .collect();
        for (index, input) in group.inputs.iter().enumerate() {
            let lookup = |pointers: &[u64]| pointers.get(index).copied().unwrap_or(0) as usize;
            let (name, version) = submissions
                .identifier_lookup
                .get(lookup(&group.identifier_pointers))
                .cloned()
                .unwrap_or_default();
            tasks.push(LocalTask {
                name,
                version,
                input: input.clone(),
                display: submissions
                    .display_lookup
                    .get(lookup(&group.display_pointers))
                    .cloned()
                    .unwrap_or_default(),
                optional: group.optional_values.get(index).copied().unwrap_or(false),
                depends_on: depends_on.clone(),
            });
        }
        ranges.push(start..tasks.len());
    }
    tasks
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
        TaskOutcome::Computed { subtasks, .. } => {
            let subtasks = subtasks.as_ref().map(expand).unwrap_or_default();
            document["subtasks"] = subtasks
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
        if let TaskOutcome::Computed {
            subtasks: Some(subtasks),
            ..
        } = &item.outcome
        {
            text.push_str(&format!(
                "{indent}  submitted {} subtasks\n",
                expand(subtasks).len()
            ));
        }
        if let TaskOutcome::Failed {
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
