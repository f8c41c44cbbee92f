//! `tilebox workflow init`: a new workflow project, all or nothing.
//!
//! Every prerequisite is checked before anything is written or created: the directory holds
//! none of the files init writes, the name gives a slug, a `uv` that runs is found, and the
//! server answers. Then the files are written and `uv sync` locks and installs the
//! dependencies; the workflow is created on the server last. A failure at any step removes
//! what the earlier steps made: the files, `uv.lock`, the `.venv` uv made, the directory
//! when init made it, and the workflow when init created it. So does an interrupt (SIGINT,
//! SIGTERM), which also stops uv (it runs in its own process group, so the terminal's
//! Ctrl-C does not reach it).

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use serde_json::json;

use super::workflow::InitArgs;
use super::{ApiArgs, UserError, output};
use crate::api::workflows_v1::{
    CreateWorkflowRequest, DeleteWorkflowRequest, GetWorkflowRequest, Workflow,
};
use crate::python;
use crate::release::config;

/// The files init writes, and the lock file `uv sync` adds.
const FILES: [&str; 4] = [
    "tilebox.workflow.toml",
    "pyproject.toml",
    "runner.py",
    "uv.lock",
];

const RUNNER_TEMPLATE: &str = r#"from tilebox.workflows import ExecutionContext, Runner, Task


class HelloTask(Task):
    """An example task: greets, and reports its progress."""

    name: str = "World"

    def execute(self, context: ExecutionContext) -> None:
        context.logger.info("Hello", name=self.name)
        context.current_task.display = f"Hello {self.name}"


runner = Runner(tasks=[HelloTask])
"#;

pub async fn init(arguments: InitArgs, api: &ApiArgs) -> anyhow::Result<ExitCode> {
    let directory = match arguments.directory {
        Some(directory) => directory,
        None => std::env::current_dir().context("cannot read the current directory")?,
    };
    // Prerequisites: nothing is written or created before all of them hold.
    // A `.venv` of another interpreter would be replaced by `uv sync`, and could not be
    // restored if a later step failed.
    let existing: Vec<&str> = FILES
        .into_iter()
        .chain([".venv"])
        .filter(|file| directory.join(file).exists())
        .collect();
    if !existing.is_empty() {
        return Err(UserError::with_hint(
            format!(
                "{} already has {}; nothing was changed",
                directory.display(),
                existing.join(", ")
            ),
            "run init in an empty directory",
        )
        .into());
    }
    let name = match arguments.name {
        Some(name) => name,
        None => std::path::absolute(&directory)
            .ok()
            .and_then(|path| {
                path.file_name()
                    .map(|name| name.to_string_lossy().into_owned())
            })
            .unwrap_or_else(|| "workflow".to_string()),
    };
    let slug = config::workflow_slug(&name);
    if slug.is_empty() {
        return Err(UserError::with_hint(
            format!("the name `{name}` gives no slug; nothing was changed"),
            "pass --name with letters or digits",
        )
        .into());
    }
    let uv = tokio::task::spawn_blocking(python::uv::find)
        .await
        .context("the search for uv panicked")?
        .map_err(|error| {
            UserError::caused_by(
                error,
                Some("nothing was changed; install uv (or set TILEBOX_UV) and run init again"),
            )
        })?;
    let (mut client, found) = if arguments.no_server {
        (None, None)
    } else {
        let mut client = api.connect().await?;
        let found = match client
            .workflows
            .get_workflow(GetWorkflowRequest {
                workflow_slug: slug.clone(),
            })
            .await
        {
            Ok(workflow) => Some(workflow.into_inner()),
            Err(status) if status.code() == tonic::Code::NotFound => None,
            Err(status) => return Err(client.error("GetWorkflow", status).into()),
        };
        (Some(client), found)
    };

    // The project's files, removed again unless every later step succeeds. An interrupt
    // (Ctrl-C, SIGTERM) stops uv and undoes the same way.
    let mut made = Made::start(&directory)?;
    let creating = std::cell::Cell::new(false);
    let steps = make_project(
        &mut made,
        client.as_mut(),
        Names {
            name: &name,
            slug: &slug,
        },
        found,
        (!api.json).then_some(uv.version.as_str()),
        &creating,
    );
    let outcome = tokio::select! {
        outcome = steps => Some(outcome),
        () = interrupted() => None,
    };
    let (workflow, created) = match outcome {
        Some(Ok(done)) => done,
        Some(Err(error)) => return Err(error),
        None => {
            let stopped = tokio::task::spawn_blocking(|| {
                python::environment::stop_running(std::time::Duration::from_secs(5))
            })
            .await
            .unwrap_or(false);
            let mut left = Vec::new();
            if !stopped {
                left.push("uv did not stop within 5 s".to_string());
            }
            // Interrupted while the server was asked to create the workflow: whether this call
            // or another client created it is unknown, so it is not deleted, only named.
            if creating.get() {
                left.push(format!(
                    "the server was creating the workflow {slug}; `tilebox workflow get {slug}` shows whether it exists"
                ));
            }
            drop(made);
            eprintln!(
                "error: interrupted; {}",
                if left.is_empty() {
                    "nothing was changed".to_string()
                } else {
                    format!("undone, except: {}", left.join("; "))
                }
            );
            return Ok(ExitCode::from(130));
        }
    };
    made.keep();

    if api.json {
        output::print_json(&json!({
            "workflow_slug": workflow.slug,
            "name": workflow.name,
            "directory": std::path::absolute(&directory).unwrap_or(directory).display().to_string(),
            "files": FILES,
            "created_on_server": created,
        }))?;
    } else {
        let text = if arguments.no_server {
            format!(
                "Wrote the project of workflow {} in {}, without a server\nNext: tilebox dev (a server and a runner of the project in one process); before publishing to another server, tilebox workflow create {:?}\n",
                workflow.slug,
                directory.display(),
                name
            )
        } else {
            let what = if created {
                format!("Created workflow {}", workflow.slug)
            } else {
                format!("Set up the existing workflow {}", workflow.slug)
            };
            format!(
                "{what} in {}\nNext: tilebox workflow publish-release, then tilebox workflow deploy-release --latest\n",
                directory.display()
            )
        };
        output::print_text(&text)?;
    }
    Ok(ExitCode::SUCCESS)
}

/// The workflow's name and the slug derived from it.
#[derive(Clone, Copy)]
struct Names<'a> {
    name: &'a str,
    slug: &'a str,
}

/// Writes the project's files, syncs its environment (announced with `uv` when given), and
/// creates the workflow when it was not `found` (with a `client`; without one, the workflow
/// is the project's own); answers the workflow and whether this created it. `creating` is
/// set while the server is asked to create it.
async fn make_project(
    made: &mut Made,
    client: Option<&mut crate::client::Client>,
    names: Names<'_>,
    found: Option<Workflow>,
    uv: Option<&str>,
    creating: &std::cell::Cell<bool>,
) -> anyhow::Result<(Workflow, bool)> {
    let package = names.slug.replace('-', "_");
    let toml_slug = found
        .as_ref()
        .map_or_else(|| names.slug.to_string(), |workflow| workflow.slug.clone());
    made.write("tilebox.workflow.toml", &workflow_toml(&toml_slug))?;
    made.write(
        "pyproject.toml",
        &format!(
            "[project]\nname = \"{package}\"\nversion = \"0.1.0\"\ndescription = \"{}\"\nrequires-python = \">=3.13\"\ndependencies = [\"tilebox\"]\n",
            toml_string(names.name)
        ),
    )?;
    made.write("runner.py", RUNNER_TEMPLATE)?;
    if let Some(uv) = uv {
        eprintln!("syncing the environment with {uv} (this resolves and locks the dependencies)");
    }
    let root = made.directory.clone();
    tokio::task::spawn_blocking(move || {
        python::environment::sync(&root, false, python::environment::DEFAULT_SYNC_TIMEOUT)
    })
    .await
    .context("uv sync panicked")?
    .map_err(|error| UserError::caused_by(error, Some("nothing was changed")))?;

    // The workflow on the server, last.
    let Some(client) = client else {
        let workflow = Workflow {
            slug: toml_slug,
            name: names.name.to_string(),
            ..Workflow::default()
        };
        return Ok((workflow, false));
    };
    let (workflow, created) = match found {
        Some(workflow) => (workflow, false),
        None => {
            creating.set(true);
            let created = create_workflow(client, names.name, names.slug).await?;
            creating.set(false);
            created
        }
    };
    if workflow.slug != toml_slug
        && let Err(error) = made.write("tilebox.workflow.toml", &workflow_toml(&workflow.slug))
    {
        if created && let Err(left) = delete_workflow(client, &workflow.slug).await {
            return Err(error.context(left));
        }
        return Err(error);
    }
    Ok((workflow, created))
}

/// Removes the workflow `slug` that init created; the error says what is left.
async fn delete_workflow(client: &mut crate::client::Client, slug: &str) -> Result<(), String> {
    match client
        .workflows
        .delete_workflow(DeleteWorkflowRequest {
            workflow_slug: slug.to_string(),
        })
        .await
    {
        Ok(_) => Ok(()),
        Err(status) if status.code() == tonic::Code::NotFound => Ok(()),
        Err(status) => Err(format!(
            "the workflow {slug} init created is still on the server ({}); remove it with the API",
            status.message()
        )),
    }
}

/// Resolves on the first SIGINT or SIGTERM.
pub(super) async fn interrupted() {
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        () = terminate => {}
    }
}

/// Creates the workflow; answers it and whether this call created it (another client may
/// have created it since the check).
async fn create_workflow(
    client: &mut crate::client::Client,
    name: &str,
    slug: &str,
) -> anyhow::Result<(Workflow, bool)> {
    match client
        .workflows
        .create_workflow(CreateWorkflowRequest {
            name: name.to_string(),
            description: None,
            summary: String::new(),
        })
        .await
    {
        Ok(workflow) => Ok((workflow.into_inner(), true)),
        Err(status) if status.code() == tonic::Code::AlreadyExists => {
            let workflow = client
                .workflows
                .get_workflow(GetWorkflowRequest {
                    workflow_slug: slug.to_string(),
                })
                .await
                .map_err(|status| client.error("GetWorkflow", status))?
                .into_inner();
            Ok((workflow, false))
        }
        Err(status) => Err(client.error("CreateWorkflow", status).into()),
    }
}

fn workflow_toml(slug: &str) -> String {
    format!(
        "[workflow]\nslug = \"{}\"\nrunner = \"runner:runner\"\n\n[build]\ninclude = [\"pyproject.toml\", \"uv.lock\", \"runner.py\"]\nexclude = [\"**/__pycache__/**\"]\n",
        toml_string(slug)
    )
}

/// `text` escaped for a TOML basic string.
fn toml_string(text: &str) -> String {
    let mut escaped = String::with_capacity(text.len());
    for character in text.chars() {
        match character {
            '"' => escaped.push_str("\\\""),
            '\\' => escaped.push_str("\\\\"),
            character if character.is_control() => {
                escaped.push_str(&format!("\\u{:04X}", u32::from(character)));
            }
            character => escaped.push(character),
        }
    }
    escaped
}

/// What init has made so far, undone on drop unless [`Made::keep`] was called.
struct Made {
    directory: PathBuf,
    /// The directories init made, the project's first, up to the first that existed.
    made_directories: Vec<PathBuf>,
    files: Vec<PathBuf>,
    kept: bool,
}

impl Made {
    fn start(directory: &Path) -> anyhow::Result<Self> {
        let made_directories: Vec<PathBuf> = directory
            .ancestors()
            .take_while(|ancestor| !ancestor.as_os_str().is_empty() && !ancestor.exists())
            .map(Path::to_path_buf)
            .collect();
        fs_err::create_dir_all(directory)?;
        Ok(Self {
            directory: directory.to_path_buf(),
            made_directories,
            files: Vec::new(),
            kept: false,
        })
    }

    fn write(&mut self, file: &str, contents: &str) -> anyhow::Result<()> {
        let path = self.directory.join(file);
        if !self.files.contains(&path) {
            self.files.push(path.clone());
        }
        fs_err::write(&path, contents)?;
        Ok(())
    }

    fn keep(mut self) {
        self.kept = true;
    }
}

impl Drop for Made {
    fn drop(&mut self) {
        if self.kept {
            return;
        }
        for file in self
            .files
            .iter()
            .chain(std::iter::once(&self.directory.join("uv.lock")))
        {
            let _ = fs_err::remove_file(file);
        }
        // Init refuses a directory that has a `.venv`: this one is uv's, made by init.
        let _ = fs_err::remove_dir_all(self.directory.join(".venv"));
        // Each only when empty: whatever else is in one is not init's.
        for directory in &self.made_directories {
            if fs_err::remove_dir(directory).is_err() {
                break;
            }
        }
    }
}
