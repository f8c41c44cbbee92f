//! `tilebox task run`: executes one task of a local project in-process (and, with
//! `--recursive`, the subtasks it submits, in dependency order), with no server.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Subcommand, ValueEnum};
use serde_json::{Value, json};

use super::UserError;
use super::job::{task_input, validate_version};
use super::output;
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

async fn run_task(arguments: RunArgs, json: bool) -> anyhow::Result<ExitCode> {
    let (name, version) = match arguments.task.split_once('@') {
        Some((name, version)) => {
            validate_version(version)?;
            (name.to_string(), Some(version.to_string()))
        }
        None => (arguments.task.clone(), None),
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
    let version = match version {
        Some(version) => version,
        None => registered_version(loaded.identifiers(), &name)?,
    };
    let root = LocalTask {
        display: name.rsplit('/').next().unwrap_or(&name).to_string(),
        name,
        version,
        input: task_input(arguments.input.as_deref()),
        optional: false,
        depends_on: Vec::new(),
    };
    let print_log = |display: &str, record: &Value| {
        if !json {
            eprintln!("{}", log_line(display, record));
        }
    };
    let execution = local::execute_tree(&loaded, root, arguments.recursive, &print_log).await;
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
