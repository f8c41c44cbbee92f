//! The release runner: follows a cluster's deployments, loads each deployed release into
//! embedded CPython (`python`), and executes tasks in `-n` slots. Rust owns claiming, lease
//! extension, reporting, the artifact pipeline and shutdown.
//!
//! Layout:
//! - `mod.rs`: `Options`, `Runner::new(options, client).run(shutdown)`, deployments, shutdown
//! - `work.rs`: the dispatcher: one conversation with the server's batched work protocol
//!   (reports and claims in batches) that keeps every slot supplied
//! - `slot.rs`: one slot executing the tasks handed to it
//! - `catalog.rs`: loaded releases and task routing
//! - `leases.rs`: the lease manager, extending every held task's lease in one call
//! - `local.rs`: executing a task tree in-process without a server (`task run`)
//! - `reload.rs`: direct mode that loads the project again when its files change
//!   (`tilebox dev`)
//! - `prepare.rs`: code to a loadable release, for every command: artifact cache, staged
//!   extraction, environments (shared venvs, a project's own), build validation
//! - `telemetry.rs`: task logs and spans to the server (OTLP, batched)

mod catalog;
mod leases;
pub mod local;
pub mod prepare;
pub mod reload;
mod slot;
mod telemetry;
mod work;

pub use telemetry::RunnerLogs;
pub use work::FAILURE_BACKOFF_MAX;

/// How long handing running tasks back may take before the runner gives up on it.
pub const HAND_BACK_TIMEOUT: Duration = Duration::from_secs(5);

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio_stream::StreamExt;
use tokio_util::sync::CancellationToken;

use crate::api::selfhosted_v1::{
    ClusterDeployments, HandedBackTask, WatchDeploymentsRequest, WorkReport, WorkRequest,
    work_report,
};
use crate::api::workflows_v1::GetClusterRequest;
use crate::client::{Backoff, Client, RunnerClient, retryable};
use crate::progress::{self, Progress, Reporter, Step};
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
    /// Direct mode that follows a project's files (`tilebox dev`), loading it again when
    /// they change; takes the place of `project`.
    pub watch: Option<reload::Watch>,
    /// How long running tasks may take to finish after the first interrupt.
    pub grace: Duration,
    /// Do not print task logs.
    pub quiet: bool,
    /// How long `uv sync` of a deployed release may take.
    pub sync_timeout: Duration,
    /// The longest this runner stays away from a task identifier it could not run
    /// (`work::Backoffs`; pauses double from 1 s up to this).
    pub failure_backoff_max: Duration,
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

/// How a runner is asked to stop: `drain` (no new tasks; running ones finish), then
/// `hand_back` (running tasks are handed back at once). Cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct Shutdown {
    pub drain: CancellationToken,
    pub hand_back: CancellationToken,
}

impl Shutdown {
    /// The phase these tokens describe, kept current in a watch channel.
    fn phases(&self) -> watch::Receiver<Phase> {
        let (sender, phases) = watch::channel(Phase::Running);
        let shutdown = self.clone();
        tokio::spawn(async move {
            tokio::select! {
                _ = shutdown.drain.cancelled() => { let _ = sender.send(Phase::Draining); }
                _ = shutdown.hand_back.cancelled() => {}
                _ = sender.closed() => return,
            }
            tokio::select! {
                _ = shutdown.hand_back.cancelled() => { let _ = sender.send(Phase::HandingBack); }
                _ = sender.closed() => {}
            }
        });
        phases
    }
}

/// How a runner ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stopped {
    /// Every task it took was reported (drained, or no work left with `stop_when_idling`).
    Finished,
    /// Interrupted twice: its running tasks were handed back.
    HandedBack,
}

/// What every part of a runner shares.
pub struct Shared {
    pub client: Client,
    pub cluster: String,
    pub options: Options,
    pub exporter: telemetry::Exporter,
    /// Where each release's preparation is shown (each step is also logged).
    pub progress: Arc<dyn Reporter>,
}

/// A release runner: `Runner::new(options, client)`, then `run(shutdown)`.
pub struct Runner {
    options: Options,
    client: Client,
    progress: Arc<dyn Reporter>,
}

impl Runner {
    pub fn new(options: Options, client: Client) -> Self {
        Self {
            options,
            client,
            progress: Arc::new(progress::Silent),
        }
    }

    /// Shows each deployed release's preparation on `progress` (e.g. a terminal line).
    pub fn with_progress(self, progress: Arc<dyn Reporter>) -> Self {
        Self { progress, ..self }
    }

    /// Runs until drained (or, with `stop_when_idling`, until there is no work), or until
    /// handed back.
    pub async fn run(self, shutdown: Shutdown) -> Result<Stopped, Error> {
        let Self {
            mut options,
            client,
            progress,
        } = self;
        let phase = shutdown.phases();
        // An interrupt while the server is still unreachable stops the runner: nothing runs yet.
        let cluster = tokio::select! {
            cluster = resolve_cluster(&client, &options.cluster) => cluster?,
            () = interrupted(phase.clone()) => return Ok(Stopped::Finished),
        };
        options.cluster = cluster.clone();
        let runner_id = uuid::Uuid::new_v4().to_string();
        let runner_client = RunnerClient::new(client.clone(), &runner_id);
        let exporter =
            telemetry::Exporter::start(client.clone(), runner_id.clone(), cluster.clone());
        let shared = Arc::new(Shared {
            client: client.clone(),
            cluster: cluster.clone(),
            options: options.clone(),
            exporter,
            progress,
        });
        let (catalog_sender, catalog) = watch::channel(Arc::new(Catalog::default()));
        let (lease_manager, leases) = leases::LeaseManager::new(runner_client.clone());
        let stop_leases = CancellationToken::new();
        let lease_task = tokio::spawn(lease_manager.run(stop_leases.clone()));

        let mut watcher = None;
        // Held here only in direct mode; dropped with the loaded releases at the end.
        let mut direct_sender = None;
        match (&options.watch, &options.project) {
            (Some(watch), _) => {
                tracing::info!(directory = %watch.directory.display(), slots = options.slots, "runner started; following the project's files");
                watcher = Some(tokio::spawn(reload::follow_project(
                    shared.clone(),
                    catalog_sender,
                    phase.clone(),
                    watch.clone(),
                )));
            }
            (None, Some(project)) => {
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
                direct_sender = Some(catalog_sender);
            }
            (None, None) => {
                tracing::info!(%cluster, slots = options.slots, "runner started; following the cluster's deployments");
                watcher = Some(tokio::spawn(follow_deployments(
                    shared.clone(),
                    catalog_sender,
                    phase.clone(),
                )));
            }
        }
        // With --stop-when-idling, wait for the first set of deployments to load.
        if options.stop_when_idling && options.project.is_none() && watcher.is_some() {
            let mut catalog = catalog.clone();
            let _ = tokio::time::timeout(Duration::from_secs(300), catalog.changed()).await;
        }

        let (finished_sender, finished) = mpsc::unbounded_channel();
        let mut slot_senders = Vec::new();
        let slots: Vec<_> = (0..options.slots.max(1))
            .map(|index| {
                let (sender, tasks) = mpsc::unbounded_channel();
                slot_senders.push(sender);
                let slot = slot::Slot {
                    index,
                    runner_id: format!("{runner_id}/{index}"),
                    shared: shared.clone(),
                    tasks,
                    finished: finished_sender.clone(),
                    catalog: catalog.clone(),
                };
                tokio::spawn(slot.run())
            })
            .collect();
        drop(finished_sender);
        let dispatcher = work::Dispatcher {
            shared: shared.clone(),
            client: runner_client.clone(),
            leases: leases.clone(),
            slots: slot_senders,
            finished,
            catalog: catalog.clone(),
            phase: phase.clone(),
            stop: shutdown.hand_back.clone(),
        };
        let mut dispatched = tokio::spawn(dispatcher.run());

        let stopped = tokio::select! {
            _ = &mut dispatched => Stopped::Finished,
            _ = shutdown.hand_back.cancelled() => {
                dispatched.abort();
                hand_back_running(&runner_client, &leases).await;
                Stopped::HandedBack
            }
        };
        if let Some(watcher) = &watcher {
            watcher.abort();
        }
        if let Some(watcher) = watcher {
            let _ = watcher.await;
        }
        // Aborting does not stop a `uv sync` the watch (or a release's preparation) runs on a
        // blocking thread, and uv runs in a process group of its own, which the user's Ctrl-C
        // does not reach: stopped here, or it would outlive the runner.
        stop_environment_syncs().await;
        // The last reference to the loaded releases, besides those of slots still running.
        let loaded = catalog.borrow().clone();
        drop(catalog);
        drop(direct_sender);
        if stopped == Stopped::Finished {
            // The dispatcher hung up on the slots; they end after their current task.
            for slot in slots {
                let _ = slot.await;
            }
            // Ending an interpreter waits for the non-daemon threads its tasks left running,
            // as Python's own exit does; the second interrupt (or the end of the grace
            // period) stops waiting, and the process exits with them still running.
            tracing::info!("every task is reported; unloading the releases");
            let unloading = tokio::task::spawn_blocking(move || drop(loaded));
            tokio::select! {
                _ = unloading => {}
                _ = shutdown.hand_back.cancelled() => tracing::warn!(
                    "stopped waiting for threads the tasks left running; they end with the process"
                ),
            }
        } else {
            for slot in &slots {
                slot.abort();
            }
            // The interpreters are still busy with the tasks just handed back; dropping the
            // loaded releases would join their threads and wait for those tasks. The process
            // is about to exit, so they are left to it.
            std::mem::forget(loaded);
        }
        stop_leases.cancel();
        let _ = lease_task.await;
        say_stopping(&runner_client).await;
        shared.exporter.flush().await;
        Ok(stopped)
    }
}

/// Completes once the runner is asked to stop (never, if the phase sender is gone).
/// How long stopping the running `uv sync` commands may take.
const STOP_SYNC_TIMEOUT: Duration = Duration::from_secs(5);

/// Kills every `uv sync` this process runs (with what it started) and waits for them.
async fn stop_environment_syncs() {
    let stopped =
        tokio::task::spawn_blocking(|| python::environment::stop_running(STOP_SYNC_TIMEOUT))
            .await
            .unwrap_or(false);
    if !stopped {
        tracing::warn!(
            timeout_seconds = STOP_SYNC_TIMEOUT.as_secs(),
            "a `uv sync` did not stop in time; it may still be running"
        );
    }
}

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
            Err(status) if retryable(&status) => {
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

/// Hands every task the runner holds back, so they are queued again at once, counting
/// neither a retry nor a runner failure.
async fn hand_back_running(client: &RunnerClient, leases: &leases::LeasesHandle) {
    let held = leases.held().await;
    if held.is_empty() {
        return;
    }
    let reports = held
        .iter()
        .map(|(task, display)| WorkReport {
            report: Some(work_report::Report::HandedBack(HandedBackTask {
                task_id: Some(crate::api::convert::id(*task)),
                display: python::failure_display(display, "RunnerShutdown('Task was interrupted')"),
            })),
        })
        .collect();
    let request = WorkRequest {
        reports,
        ..WorkRequest::default()
    };
    // Handing back is best effort: a task not handed back runs again after its lease ends.
    let give_up = CancellationToken::new();
    let deadline = tokio::time::sleep(HAND_BACK_TIMEOUT);
    tokio::select! {
        answer = client.work(request, &give_up) => match answer {
            Ok(_) => tracing::info!(count = held.len(), "handed the running tasks back"),
            Err(error) => tracing::error!(%error, "handing the running tasks back failed"),
        },
        _ = deadline => tracing::error!("the server did not answer; the running tasks run again after their leases end"),
    }
}

/// Tells the server this runner stops (its last `Work` call), so it is listed as stopped at
/// once. Best effort: without it the runner is shown gone after the presence timeout.
async fn say_stopping(client: &RunnerClient) {
    let request = WorkRequest {
        stopping: true,
        ..WorkRequest::default()
    };
    let give_up = CancellationToken::new();
    tokio::select! {
        answer = client.work(request, &give_up) => if let Err(error) = answer {
            tracing::debug!(%error, "could not tell the server this runner stops");
        },
        _ = tokio::time::sleep(HAND_BACK_TIMEOUT) => {}
    }
}

/// The first pause before preparing a release again after a transient failure.
const PREPARE_RETRY_FIRST_DELAY: Duration = Duration::from_secs(1);
/// The longest pause between two attempts to prepare a release.
const PREPARE_RETRY_MAX_DELAY: Duration = Duration::from_secs(300);

/// A deployed release that could not be loaded, remembered by workflow until it is
/// redeployed (or, if the failure was transient, until its next attempt is due).
struct Failure {
    /// The release's [`release_key`].
    key: String,
    /// `None` for a permanent failure: the same release is never tried again.
    retry: Option<Retry>,
}

struct Retry {
    at: tokio::time::Instant,
    backoff: Backoff,
}

/// Keeps the catalog in step with the cluster's deployments: a pushed stream, reconnected
/// with backoff; new releases are loaded before the old ones are dropped (they finish their
/// running tasks first, since slots hold them while executing). A release that failed for a
/// transient reason is tried again with backoff, without waiting for a redeploy.
async fn follow_deployments(
    shared: Arc<Shared>,
    catalog: watch::Sender<Arc<Catalog>>,
    phase: watch::Receiver<Phase>,
) {
    let mut backoff = Backoff::for_server();
    let mut failed: HashMap<String, Failure> = HashMap::new();
    let mut latest: Option<ClusterDeployments> = None;
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
        loop {
            let next_retry = failed
                .values()
                .filter_map(|failure| failure.retry.as_ref().map(|retry| retry.at))
                .min();
            let retry_due = async {
                match next_retry {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                update = stream.next() => match update {
                    Some(Ok(deployments)) => {
                        latest = Some(deployments.clone());
                        apply_deployments(&shared, &catalog, deployments, &mut failed).await;
                    }
                    Some(Err(status)) => {
                        tracing::warn!(error = %status.message(), "the deployment watch ended; reconnecting");
                        break;
                    }
                    None => break,
                },
                () = retry_due => {
                    if let Some(deployments) = latest.clone() {
                        apply_deployments(&shared, &catalog, deployments, &mut failed).await;
                    }
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
    failed: &mut HashMap<String, Failure>,
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
    // A failure is remembered only while its release is the one deployed.
    failed.retain(|workflow, failure| {
        deployments.releases.iter().any(|deployed| {
            &deployed.workflow_slug == workflow
                && deployed
                    .release
                    .as_ref()
                    .is_some_and(|release| release_key(release) == failure.key)
        })
    });
    let mut next = Catalog::default();
    // Releases that failed before go last, so one that keeps timing out does not delay the
    // others on every attempt.
    let mut releases = deployments.releases;
    releases.sort_by_key(|deployed| failed.contains_key(&deployed.workflow_slug));
    for deployed in releases {
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
        let not_due =
            failed
                .get(&deployed.workflow_slug)
                .is_some_and(|failure| match &failure.retry {
                    None => true,
                    Some(retry) => tokio::time::Instant::now() < retry.at,
                });
        if not_due {
            continue;
        }
        let label = prepare::release_label(&deployed.workflow_slug, &release);
        let progress = progress::Logged::new(label.clone(), shared.progress.start(&label));
        let loaded = async {
            let prepared = prepare::prepare(
                &shared.client,
                &shared.options.cache_dir,
                &deployed.workflow_slug,
                &release,
                shared.options.sync_timeout,
                &progress,
            )
            .await?;
            progress.begin(Step::Load, None);
            let loaded = LoadedSet::load(prepared, key.clone(), shared.options.slots).await;
            progress.end(Step::Load);
            loaded.map_err(prepare::Error::from)
        }
        .await;
        drop(progress);
        match loaded {
            Ok(set) => {
                announce(&set);
                failed.remove(&deployed.workflow_slug);
                next.releases
                    .insert(deployed.workflow_slug.clone(), Arc::new(set));
            }
            Err(error) if error.is_transient() => {
                let mut backoff = failed
                    .remove(&deployed.workflow_slug)
                    .and_then(|failure| failure.retry)
                    .map(|retry| retry.backoff)
                    .unwrap_or_else(|| {
                        Backoff::new(PREPARE_RETRY_FIRST_DELAY, PREPARE_RETRY_MAX_DELAY)
                    });
                let delay = backoff.next_delay();
                // As `dyn Error`, so the log line carries the causes.
                tracing::error!(workflow = %deployed.workflow_slug, error = &error as &dyn std::error::Error, retry_in = ?delay, "skipping a release that cannot be loaded for now; trying again later");
                failed.insert(
                    deployed.workflow_slug.clone(),
                    Failure {
                        key,
                        retry: Some(Retry {
                            at: tokio::time::Instant::now() + delay,
                            backoff,
                        }),
                    },
                );
            }
            Err(error) => {
                // As `dyn Error`, so the log line carries the causes (which entry, why).
                tracing::error!(workflow = %deployed.workflow_slug, error = &error as &dyn std::error::Error, "skipping a release that cannot be loaded");
                failed.insert(deployed.workflow_slug.clone(), Failure { key, retry: None });
            }
        }
    }
    let identifiers = next.identifiers();
    replace_catalog(catalog, &current, next);
    tracing::info!(
        tasks = identifiers.len(),
        "advertising the deployed releases' tasks"
    );
}

/// Publishes `next` as the catalog that replaces `current`: tasks are routed to its releases
/// from now on. Each release of `current` that `next` does not keep is retired: it finishes
/// the tasks slots are running on it, then unloads. (`current` is passed, not read: a caller
/// may already have published a catalog without some of its releases.)
fn replace_catalog(catalog: &watch::Sender<Arc<Catalog>>, current: &Catalog, next: Catalog) {
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
    let _ = catalog.send(Arc::new(next));
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

/// Unloads a release once no slot uses it any more (it has left the catalog).
async fn retire(mut set: Arc<LoadedSet>) {
    loop {
        match Arc::try_unwrap(set) {
            Ok(owned) => {
                tracing::info!(release = %owned.label, "unloading a release that was replaced or is no longer deployed");
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
