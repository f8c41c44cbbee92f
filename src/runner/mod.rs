//! The release runner: follows a cluster's deployments, loads each deployed release into
//! embedded CPython (`python`), and executes tasks in `-n` slots. Rust owns claiming, lease
//! extension, reporting, the artifact pipeline and shutdown.
//!
//! Layout:
//! - `mod.rs`: `Options`, `run`, deployments and shutdown
//! - `slot.rs`: the claim -> execute -> report loop of one slot
//! - `catalog.rs`: loaded releases and task routing
//! - `leases.rs`: one task extending every running task's lease
//! - `local.rs`: executing a task tree in-process without a server (`task run`)
//! - `prepare.rs`: code to a loadable release, for every command: artifact cache, staged
//!   extraction, environments (shared venvs, a project's own), build validation
//! - `telemetry.rs`: task logs and spans to the server (OTLP, batched)

mod catalog;
mod leases;
pub mod local;
pub mod prepare;
mod slot;
mod telemetry;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio_stream::StreamExt;

use crate::api::selfhosted_v1::{ClusterDeployments, WatchDeploymentsRequest};
use crate::api::workflows_v1::{GetClusterRequest, TaskFailedRequest};
use crate::client::{Backoff, Client};
use crate::python;
use catalog::{Catalog, LoadedSet};

/// How the runner runs.
#[derive(Debug, Clone)]
pub struct Options {
    /// The cluster's slug; empty for the default cluster.
    pub cluster: String,
    pub slots: usize,
    /// Exit once no work is left instead of waiting for more.
    pub stop_when_idling: bool,
    pub cache_dir: PathBuf,
    /// Direct mode: this local release instead of the cluster's deployments.
    pub project: Option<python::Release>,
    /// How long running tasks may take to finish after the first interrupt.
    pub grace: Duration,
    /// Do not print task logs.
    pub quiet: bool,
}

/// What can stop the runner.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cluster `{cluster}` not found on {url}")]
    UnknownCluster { cluster: String, url: String },
    #[error("cannot load the project")]
    Project(#[source] python::Error),
    /// The server refused a call for a reason retrying cannot fix (e.g. a wrong API key).
    #[error(transparent)]
    Refused(#[from] crate::client::Error),
}

/// Where the runner is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Running,
    /// First interrupt: no new tasks; running ones finish.
    Draining,
    /// Second interrupt: running tasks are handed back.
    HandingBack,
}

/// What every slot shares.
pub struct Shared {
    pub client: Client,
    pub cluster: String,
    pub options: Options,
    pub exporter: telemetry::Exporter,
}

/// Runs until drained (`phase` set to Draining or HandingBack) or, with
/// `stop_when_idling`, until there is no work.
pub async fn run(
    client: Client,
    mut options: Options,
    phase: watch::Receiver<Phase>,
) -> Result<(), Error> {
    // An interrupt while the server is still unreachable stops the runner: nothing runs yet.
    let cluster = tokio::select! {
        cluster = resolve_cluster(&client, &options.cluster) => cluster?,
        () = interrupted(phase.clone()) => return Ok(()),
    };
    options.cluster = cluster.clone();
    let runner_id = uuid::Uuid::new_v4().to_string();
    let exporter = telemetry::Exporter::start(client.clone(), runner_id.clone(), cluster.clone());
    let shared = Arc::new(Shared {
        client: client.clone(),
        cluster: cluster.clone(),
        options: options.clone(),
        exporter,
    });
    let (catalog_sender, catalog) = watch::channel(Arc::new(Catalog::default()));
    let leases = leases::Leases::default();
    let (stop_leases, leases_stopped) = watch::channel(false);
    let lease_task = tokio::spawn(leases.clone().run(client.clone(), leases_stopped));

    let mut watcher = None;
    match &options.project {
        Some(project) => {
            let set = LoadedSet::load(
                project.clone(),
                project.root.display().to_string(),
                options.slots,
            )
            .await
            .map_err(Error::Project)?;
            announce(&set);
            let mut direct = Catalog::default();
            direct.releases.insert(set.label.clone(), Arc::new(set));
            let _ = catalog_sender.send(Arc::new(direct));
        }
        None => {
            tracing::info!(%cluster, slots = options.slots, "runner started; following the cluster's deployments");
            let shared = shared.clone();
            let phase = phase.clone();
            watcher = Some(tokio::spawn(follow_deployments(
                shared,
                catalog_sender,
                phase,
            )));
            // With --stop-when-idling, wait for the first set of deployments to load.
        }
    }
    if options.stop_when_idling && watcher.is_some() {
        let mut catalog = catalog.clone();
        let _ = tokio::time::timeout(Duration::from_secs(300), catalog.changed()).await;
    }

    let slots: Vec<_> = (0..options.slots.max(1))
        .map(|index| {
            let slot = slot::Slot {
                index,
                runner_id: format!("{runner_id}/{index}"),
                shared: shared.clone(),
                leases: leases.clone(),
            };
            tokio::spawn(slot.run(catalog.clone(), phase.clone()))
        })
        .collect();

    // Hand back running tasks at once on the second interrupt.
    let hand_back = {
        let mut phase = phase.clone();
        let leases = leases.clone();
        let client = client.clone();
        tokio::spawn(async move {
            while *phase.borrow() != Phase::HandingBack {
                if phase.changed().await.is_err() {
                    return;
                }
            }
            hand_back_running(&client, &leases).await;
            std::process::exit(130);
        })
    };

    for slot in slots {
        let _ = slot.await;
    }
    hand_back.abort();
    if let Some(watcher) = watcher {
        watcher.abort();
    }
    let _ = stop_leases.send(true);
    let _ = lease_task.await;
    shared.exporter.flush().await;
    let catalog = catalog.borrow().clone();
    drop(catalog);
    Ok(())
}

/// Completes once the runner is asked to stop (never, if the phase sender is gone).
async fn interrupted(mut phase: watch::Receiver<Phase>) {
    while *phase.borrow_and_update() == Phase::Running {
        if phase.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

async fn resolve_cluster(client: &Client, cluster: &str) -> Result<String, Error> {
    let mut client = client.clone();
    let mut backoff = Backoff::for_server();
    loop {
        match client
            .workflows
            .get_cluster(GetClusterRequest {
                cluster_slug: cluster.to_string(),
            })
            .await
        {
            Ok(found) => return Ok(found.into_inner().slug),
            Err(status) if status.code() == tonic::Code::NotFound => {
                return Err(Error::UnknownCluster {
                    cluster: cluster.to_string(),
                    url: client.url().to_string(),
                });
            }
            Err(status) if slot::retryable(&status) => {
                let delay = backoff.next_delay();
                tracing::warn!(error = %status.message(), "cannot reach the server; retrying in {delay:?}");
                tokio::time::sleep(delay).await;
            }
            Err(status) => return Err(client.error("GetCluster", status).into()),
        }
    }
}

fn announce(set: &LoadedSet) {
    let identifiers: Vec<String> = set
        .identifiers
        .iter()
        .map(|(name, version)| format!("{name}@{version}"))
        .collect();
    match &set.fallback_reason {
        Some(reason) => tracing::info!(
            release = %set.label, isolation = %set.isolation, reason = %reason, tasks = %identifiers.join(", "),
            "loaded release"
        ),
        None => {
            tracing::info!(release = %set.label, isolation = %set.isolation, tasks = %identifiers.join(", "), "loaded release")
        }
    }
}

/// Sends `TaskFailed(was_workflow_error=false)` for every running task, so they are queued
/// again at once without counting a retry.
async fn hand_back_running(client: &Client, leases: &leases::Leases) {
    let mut client = client.clone();
    for (task, display, claimant) in leases.running() {
        let mut request = tonic::Request::new(TaskFailedRequest {
            task_id: Some(crate::api::convert::id(task)),
            display: python::failure_display(&display, "RunnerShutdown('Task was interrupted')"),
            was_workflow_error: false,
            progress_updates: Vec::new(),
        });
        if let Ok(value) = claimant.parse() {
            request
                .metadata_mut()
                .insert(crate::api::RUNNER_ID_HEADER, value);
        }
        match client.tasks.task_failed(request).await {
            Ok(_) => tracing::info!(%task, "handed the task back"),
            Err(status) => {
                tracing::error!(%task, error = %status.message(), "handing the task back failed")
            }
        }
    }
}

/// Keeps the catalog in step with the cluster's deployments: a pushed stream, reconnected
/// with backoff; new releases are loaded before the old ones are dropped (they finish their
/// running tasks first, since slots hold them while executing).
async fn follow_deployments(
    shared: Arc<Shared>,
    catalog: watch::Sender<Arc<Catalog>>,
    phase: watch::Receiver<Phase>,
) {
    let mut backoff = Backoff::for_server();
    let mut failed: HashMap<String, String> = HashMap::new();
    loop {
        if *phase.borrow() != Phase::Running {
            return;
        }
        let mut client = shared.client.clone();
        let stream = client
            .deployments
            .watch_deployments(WatchDeploymentsRequest {
                cluster_slug: shared.cluster.clone(),
            })
            .await;
        let mut stream = match stream {
            Ok(stream) => stream.into_inner(),
            Err(status) => {
                let delay = backoff.next_delay();
                tracing::warn!(error = %status.message(), "cannot watch deployments; retrying in {delay:?}");
                tokio::time::sleep(delay).await;
                continue;
            }
        };
        backoff.reset();
        while let Some(update) = stream.next().await {
            match update {
                Ok(deployments) => {
                    apply_deployments(&shared, &catalog, deployments, &mut failed).await
                }
                Err(status) => {
                    tracing::warn!(error = %status.message(), "the deployment watch ended; reconnecting");
                    break;
                }
            }
        }
        backoff.wait().await;
    }
}

async fn apply_deployments(
    shared: &Shared,
    catalog: &watch::Sender<Arc<Catalog>>,
    deployments: ClusterDeployments,
    failed: &mut HashMap<String, String>,
) {
    let current = catalog.borrow().clone();
    // Stop claiming for releases that changed or went away at once, before loading their
    // successors: a task claimed meanwhile would run on a superseded release.
    let unchanged = |workflow: &str, set: &Arc<LoadedSet>| {
        deployments.releases.iter().any(|deployed| {
            deployed.workflow_slug == workflow
                && deployed
                    .release
                    .as_ref()
                    .is_some_and(|release| release_key(release) == set.key)
        })
    };
    let mut kept = Catalog::default();
    for (workflow, set) in &current.releases {
        if unchanged(workflow, set) {
            kept.releases.insert(workflow.clone(), set.clone());
        }
    }
    if kept.releases.len() != current.releases.len() {
        let _ = catalog.send(Arc::new(kept));
    }
    let mut next = Catalog::default();
    for deployed in deployments.releases {
        let Some(release) = deployed.release else {
            continue;
        };
        let key = release_key(&release);
        if let Some(existing) = current.releases.get(&deployed.workflow_slug)
            && existing.key == key
        {
            next.releases
                .insert(deployed.workflow_slug.clone(), existing.clone());
            continue;
        }
        if failed.get(&deployed.workflow_slug) == Some(&key) {
            continue;
        }
        let loaded = async {
            let prepared = prepare::prepare(
                &shared.client,
                &shared.options.cache_dir,
                &deployed.workflow_slug,
                &release,
            )
            .await?;
            LoadedSet::load(prepared, key.clone(), shared.options.slots)
                .await
                .map_err(prepare::Error::from)
        }
        .await;
        match loaded {
            Ok(set) => {
                announce(&set);
                failed.remove(&deployed.workflow_slug);
                next.releases
                    .insert(deployed.workflow_slug.clone(), Arc::new(set));
            }
            Err(error) => {
                // As `dyn Error`, so the log line carries the causes (which entry, why).
                tracing::error!(workflow = %deployed.workflow_slug, error = &error as &dyn std::error::Error, "skipping a release that cannot be loaded");
                failed.insert(deployed.workflow_slug.clone(), key);
            }
        }
    }
    let removed: Vec<Arc<LoadedSet>> = current
        .releases
        .iter()
        .filter(|(workflow, set)| {
            next.releases
                .get(*workflow)
                .is_none_or(|kept| !Arc::ptr_eq(kept, set))
        })
        .map(|(_, set)| set.clone())
        .collect();
    let identifiers = next.identifiers();
    let _ = catalog.send(Arc::new(next));
    tracing::info!(
        tasks = identifiers.len(),
        "advertising the deployed releases' tasks"
    );
    for set in removed {
        tokio::spawn(retire(set));
    }
}

/// What identifies a deployed release's loadable content.
fn release_key(release: &crate::api::workflows_v1::WorkflowRelease) -> String {
    let digest = release
        .artifact
        .as_ref()
        .map(|artifact| artifact.digest.as_str())
        .unwrap_or_default();
    let runner = release
        .content
        .as_ref()
        .map(|content| content.runner_object_path.as_str())
        .unwrap_or_default();
    format!("{digest}|{runner}")
}

/// Unloads a release once no slot uses it any more.
async fn retire(mut set: Arc<LoadedSet>) {
    loop {
        match Arc::try_unwrap(set) {
            Ok(owned) => {
                tracing::info!(release = %owned.label, "unloading a release that is no longer deployed");
                owned.unload().await;
                return;
            }
            Err(shared) => {
                set = shared;
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
}
