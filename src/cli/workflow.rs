//! `tilebox workflow ...`: creating workflows, and the release pipeline: init, build,
//! publish, deploy and undeploy.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use clap::{Args, Subcommand};
use serde_json::{Value, json};

use super::{ApiArgs, UserError, output, progress};
use crate::api::convert::{id, uuid_of};
use crate::api::workflows_v1::{
    CreateWorkflowRequest, DeployWorkflowReleaseRequest, GetWorkflowRequest, ListWorkflowsRequest,
    PublishWorkflowReleaseRequest, UndeployWorkflowReleaseRequest, Workflow, WorkflowRelease,
};
use crate::release::archive::ArchiveInfo;
use crate::release::build::Built;
use crate::release::config::{self, Config};
use crate::release::{self};
use crate::runner::prepare;

#[derive(Debug, Subcommand)]
pub enum WorkflowCommand {
    /// Create a workflow project here: the workflow on the server, tilebox.workflow.toml,
    /// pyproject.toml, runner.py, and its environment (uv sync).
    Init(InitArgs),
    /// Create a workflow.
    Create(CreateArgs),
    /// List workflows.
    List,
    /// Show a workflow [default: the one of the project here].
    Get { slug: Option<String> },
    /// List a workflow's releases with the clusters they are deployed to.
    Releases { slug: Option<String> },
    /// Build the release artifact (deterministic .tar.zst) and validate it.
    BuildRelease(BuildArgs),
    /// Build, upload (if the server lacks it) and register a release.
    PublishRelease(BuildArgs),
    /// Deploy a release to clusters (replacing the workflow's release there).
    DeployRelease(DeployArgs),
    /// Remove a release from clusters.
    UndeployRelease(DeployArgs),
}

#[derive(Debug, Args)]
pub struct InitArgs {
    /// The workflow's name [default: the directory's name].
    #[arg(long)]
    pub name: Option<String>,
    /// The project directory [default: the current directory].
    pub directory: Option<PathBuf>,
    /// Write the project without creating the workflow on a server (for `tilebox dev`,
    /// which needs none; `workflow create` makes it later).
    #[arg(long)]
    pub no_server: bool,
}

#[derive(Debug, Args)]
pub struct CreateArgs {
    name: String,
    #[arg(long, default_value = "")]
    summary: String,
    #[arg(long)]
    description: Option<String>,
}

#[derive(Debug, Args)]
pub struct BuildArgs {
    /// The project directory (or a directory below it) [default: the current directory].
    path: Option<PathBuf>,
    /// Cache directory (environments, the Python runtime) [default: ~/.cache/tilebox].
    #[arg(long)]
    cache_dir: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct DeployArgs {
    /// The workflow [default: the slug in tilebox.workflow.toml].
    #[arg(long)]
    workflow: Option<String>,
    /// The release to deploy.
    #[arg(long, conflicts_with = "latest", required_unless_present = "latest")]
    release: Option<String>,
    /// The newest release of the workflow.
    #[arg(long)]
    latest: bool,
    /// Clusters (comma-separated) [default: the default cluster].
    #[arg(long, value_delimiter = ',', conflicts_with = "target")]
    cluster: Vec<String>,
    /// A named group of clusters from tilebox.workflow.toml's [targets].
    #[arg(long)]
    target: Option<String>,
}

pub async fn run(command: WorkflowCommand, api: &ApiArgs) -> anyhow::Result<ExitCode> {
    match command {
        WorkflowCommand::Init(arguments) => super::init::init(arguments, api).await,
        WorkflowCommand::Create(arguments) => {
            let mut client = api.connect().await?;
            let workflow = client
                .workflows
                .create_workflow(CreateWorkflowRequest {
                    name: arguments.name,
                    description: arguments.description,
                    summary: arguments.summary,
                })
                .await
                .map_err(|status| client.error("CreateWorkflow", status))?
                .into_inner();
            print_workflow(&workflow, api.json)
        }
        WorkflowCommand::List => {
            let mut client = api.connect().await?;
            let workflows = client
                .workflows
                .list_workflows(ListWorkflowsRequest { page: None })
                .await
                .map_err(|status| client.error("ListWorkflows", status))?
                .into_inner()
                .workflows;
            if api.json {
                output::print_json(&Value::Array(
                    workflows.iter().map(workflow_document).collect(),
                ))?;
            } else {
                let mut table = output::Table::new(&["SLUG", "NAME", "RELEASES"]);
                for workflow in &workflows {
                    table.push(vec![
                        workflow.slug.clone(),
                        workflow.name.clone(),
                        workflow.releases.len().to_string(),
                    ]);
                }
                output::print_text(&table.render())?;
            }
            Ok(ExitCode::SUCCESS)
        }
        WorkflowCommand::Get { slug } => {
            let workflow = fetch_workflow(api, slug).await?;
            print_workflow(&workflow, api.json)
        }
        WorkflowCommand::Releases { slug } => {
            let workflow = fetch_workflow(api, slug).await?;
            if api.json {
                output::print_json(&json!({
                    "workflow_slug": workflow.slug,
                    "releases": workflow.releases.iter().map(release_document).collect::<Vec<_>>(),
                }))?;
            } else {
                let mut table = output::Table::new(&["RELEASE", "CREATED", "TASKS", "CLUSTERS"]);
                for release in &workflow.releases {
                    let document = release_document(release);
                    table.push(vec![
                        document["id"].as_str().unwrap_or("-").to_string(),
                        document["created_at"].as_str().unwrap_or("-").to_string(),
                        document["tasks"]
                            .as_array()
                            .map(|tasks| tasks.len())
                            .unwrap_or(0)
                            .to_string(),
                        release
                            .clusters
                            .iter()
                            .map(|cluster| cluster.slug.clone())
                            .collect::<Vec<_>>()
                            .join(","),
                    ]);
                }
                output::print_text(&table.render())?;
            }
            Ok(ExitCode::SUCCESS)
        }
        WorkflowCommand::BuildRelease(arguments) => {
            let built = build(&arguments, &progress::Display::new(api.json).steps()).await?;
            if api.json {
                output::print_json(&built_document(&built))?;
            } else {
                output::print_text(&format!(
                    "Built {} ({} bytes, {} files)\nDigest       sha256:{}\nFingerprint  {}\nTasks        {}\nRuns in      a {}\n",
                    built.archive.path.display(),
                    built.archive.size,
                    built.archive.files.len(),
                    built.archive.sha256,
                    built.fingerprint,
                    built.task_names().join(", "),
                    built.isolation,
                ))?;
            }
            Ok(ExitCode::SUCCESS)
        }
        WorkflowCommand::PublishRelease(arguments) => publish(arguments, api).await,
        WorkflowCommand::DeployRelease(arguments) => deploy(arguments, api, true).await,
        WorkflowCommand::UndeployRelease(arguments) => deploy(arguments, api, false).await,
    }
}

fn workflow_document(workflow: &Workflow) -> Value {
    json!({
        "slug": workflow.slug,
        "name": workflow.name,
        "summary": workflow.summary,
        "description": workflow.description,
        "releases": workflow.releases.iter().map(release_document).collect::<Vec<_>>(),
    })
}

fn release_document(release: &WorkflowRelease) -> Value {
    let content = release.content.clone().unwrap_or_default();
    json!({
        "id": uuid_of(release.id.as_ref()).ok().flatten().map(|id| id.to_string()),
        "digest": release.artifact.as_ref().map(|artifact| artifact.digest.clone()),
        "fingerprint": content.fingerprint,
        "tasks": content.tasks.iter().map(|task| json!({"name": task.name, "version": task.version})).collect::<Vec<_>>(),
        "runner_object_path": content.runner_object_path,
        "created_at": release.created_at.as_ref().map(output::rfc3339),
        "clusters": release.clusters.iter().map(|cluster| cluster.slug.clone()).collect::<Vec<_>>(),
    })
}

fn print_workflow(workflow: &Workflow, json: bool) -> anyhow::Result<ExitCode> {
    if json {
        output::print_json(&workflow_document(workflow))?;
    } else {
        output::print_text(&output::key_values(&[
            ("Slug", workflow.slug.clone()),
            ("Name", workflow.name.clone()),
            ("Releases", workflow.releases.len().to_string()),
        ]))?;
    }
    Ok(ExitCode::SUCCESS)
}

/// The project configuration found from `path` (or the current directory).
fn project_config(path: Option<&Path>) -> anyhow::Result<Config> {
    let start = match path {
        Some(path) => path.to_path_buf(),
        None => std::env::current_dir().context("cannot read the current directory")?,
    };
    let file = config::find(&start).map_err(|error| {
        UserError::caused_by(
            error,
            Some("run `tilebox workflow init` to create a workflow project"),
        )
    })?;
    Ok(config::load(&file).map_err(|error| UserError::caused_by(error, None))?)
}

async fn fetch_workflow(api: &ApiArgs, slug: Option<String>) -> anyhow::Result<Workflow> {
    let slug = match slug {
        Some(slug) => slug,
        None => project_config(None)?.slug,
    };
    let mut client = api.connect().await?;
    Ok(client
        .workflows
        .get_workflow(GetWorkflowRequest {
            workflow_slug: slug,
        })
        .await
        .map_err(|status| client.error("GetWorkflow", status))?
        .into_inner())
}

fn built_document(built: &Built) -> Value {
    json!({
        "workflow_slug": built.config.slug,
        "fingerprint": built.fingerprint,
        "digest": built.archive.sha256,
        "artifact": built.archive.path.display().to_string(),
        "size": built.archive.size,
        "files": built.archive.files,
        "tasks": built.tasks.iter().map(|(name, version)| json!({"name": name, "version": version})).collect::<Vec<_>>(),
        "isolation": built.isolation,
    })
}

/// Builds and validates the project's release (`release::build`): validation extracts the
/// archive, builds its environment and loads its runner object (`runner::prepare`). Every
/// step is reported to `progress`.
async fn build(
    arguments: &BuildArgs,
    progress: &Arc<dyn crate::progress::Progress>,
) -> anyhow::Result<Built> {
    let config = project_config(arguments.path.as_deref())?;
    let cache = super::cache_dir(arguments.cache_dir.as_deref())?;
    let runtime = tokio::runtime::Handle::current();
    let label = config.slug.clone();
    let progress = progress.clone();
    let built = tokio::task::spawn_blocking(move || {
        let validate = |archive: &ArchiveInfo, runner: &str| {
            runtime
                .block_on(prepare::validate_artifact(
                    archive, &label, runner, &cache, &progress,
                ))
                .map_err(Into::into)
        };
        release::build::build(config, validate, &progress)
    })
    .await
    .context("the build panicked")?;
    built.map_err(|error| match &error {
        release::build::Error::NothingSelected { .. } => UserError::caused_by(
            error,
            Some("check the include globs in tilebox.workflow.toml"),
        )
        .into(),
        release::build::Error::Select { .. } => UserError::caused_by(error, None).into(),
        release::build::Error::Validation { source, .. } => {
            let hint = match source.downcast_ref::<prepare::Error>() {
                Some(prepare::Error::Environment(_)) => {
                    "run `uv lock` in the project and include uv.lock"
                }
                _ => "try `tilebox task run` on the project to debug the import",
            };
            UserError::caused_by(error, Some(hint)).into()
        }
        release::build::Error::InvalidIdentifier { .. } => UserError::caused_by(
            error,
            Some(
                "return a version of the form vMAJOR.MINOR (numbers up to 9223372036854775807) \
                 and a name of 1 to 256 bytes from the task class's identifier()",
            ),
        )
        .into(),
        release::build::Error::TooManyIdentifiers { .. } => UserError::caused_by(
            error,
            Some("split the task classes over several workflows' releases"),
        )
        .into(),
        release::build::Error::Archive { .. } | release::build::Error::Rename { .. } => {
            anyhow::Error::new(error)
        }
    })
}

async fn publish(arguments: BuildArgs, api: &ApiArgs) -> anyhow::Result<ExitCode> {
    let progress = progress::Display::new(api.json).steps();
    let built = build(&arguments, &progress).await?;
    let mut client = api.connect().await?;
    let artifact = client
        .upload_artifact(&built.archive.path, &built.archive.sha256, progress)
        .await?;
    let release = client
        .workflows
        .publish_workflow_release(PublishWorkflowReleaseRequest {
            workflow_slug: built.config.slug.clone(),
            artifact_id: artifact.id,
            content: Some(built.content()),
        })
        .await
        .map_err(|status| client.error("PublishWorkflowRelease", status))?
        .into_inner();
    let document = release_document(&release);
    if api.json {
        let mut document = document;
        document["workflow_slug"] = json!(built.config.slug);
        document["files"] = json!(built.archive.files);
        output::print_json(&document)?;
    } else {
        output::print_text(&format!(
            "Published release {} of {}\nDigest  sha256:{}\nTasks   {}\n",
            document["id"].as_str().unwrap_or("-"),
            built.config.slug,
            built.archive.sha256,
            built.task_names().join(", ")
        ))?;
    }
    Ok(ExitCode::SUCCESS)
}

async fn deploy(arguments: DeployArgs, api: &ApiArgs, deploy: bool) -> anyhow::Result<ExitCode> {
    let local = project_config(None).ok();
    let slug = match (&arguments.workflow, &local) {
        (Some(slug), _) => slug.clone(),
        (None, Some(config)) => config.slug.clone(),
        (None, None) => {
            return Err(UserError::with_hint(
                "which workflow?",
                "pass --workflow SLUG or run inside a workflow project",
            )
            .into());
        }
    };
    let clusters = match &arguments.target {
        Some(target) => {
            let config = local
                .as_ref()
                .ok_or_else(|| UserError::new("--target needs a tilebox.workflow.toml"))?;
            config.targets.get(target).cloned().ok_or_else(|| {
                UserError::with_hint(
                    format!("{} has no target `{target}`", config.path.display()),
                    format!(
                        "targets: {}",
                        config
                            .targets
                            .keys()
                            .cloned()
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                )
            })?
        }
        None => arguments.cluster.clone(),
    };
    let mut client = api.connect().await?;
    let release_id = if arguments.latest {
        let workflow = client
            .workflows
            .get_workflow(GetWorkflowRequest {
                workflow_slug: slug.clone(),
            })
            .await
            .map_err(|status| client.error("GetWorkflow", status))?
            .into_inner();
        let newest = workflow
            .releases
            .iter()
            .max_by_key(|release| release.created_at.map(|time| (time.seconds, time.nanos)))
            .ok_or_else(|| {
                UserError::with_hint(
                    format!("workflow `{slug}` has no releases"),
                    "publish one with `tilebox workflow publish-release`",
                )
            })?;
        uuid_of(newest.id.as_ref())?
            .ok_or_else(|| UserError::new("the newest release has no id"))?
    } else {
        let text = arguments.release.clone().unwrap_or_default();
        uuid::Uuid::parse_str(&text)
            .map_err(|_| UserError::new(format!("invalid release id `{text}`: not a UUID")))?
    };
    let (release, clusters) = if deploy {
        let response = client
            .workflows
            .deploy_workflow_release(DeployWorkflowReleaseRequest {
                workflow_slug: slug.clone(),
                release_id: Some(id(release_id)),
                cluster_slugs: clusters,
            })
            .await
            .map_err(|status| client.error("DeployWorkflowRelease", status))?
            .into_inner();
        (response.release, response.clusters)
    } else {
        let response = client
            .workflows
            .undeploy_workflow_release(UndeployWorkflowReleaseRequest {
                workflow_slug: slug.clone(),
                release_id: Some(id(release_id)),
                cluster_slugs: clusters,
            })
            .await
            .map_err(|status| client.error("UndeployWorkflowRelease", status))?
            .into_inner();
        (response.release, response.clusters)
    };
    let cluster_slugs: Vec<String> = clusters
        .iter()
        .map(|cluster| cluster.slug.clone())
        .collect();
    if api.json {
        output::print_json(&json!({
            "workflow_slug": slug,
            "release": release.as_ref().map(release_document),
            "clusters": cluster_slugs,
        }))?;
    } else {
        let verb = if deploy { "Deployed" } else { "Undeployed" };
        output::print_text(&format!(
            "{verb} release {release_id} of {slug} {} {}\n",
            if deploy { "to" } else { "from" },
            cluster_slugs.join(", ")
        ))?;
    }
    Ok(ExitCode::SUCCESS)
}
