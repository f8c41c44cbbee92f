//! `tilebox.selfhosted.v1.DeploymentService`: a cluster's deployed releases, pushed to
//! runners when they change (no polling interval between a deploy and a runner seeing it).
//!
//! A watch subscribes to changes before it reads its first snapshot, so a deploy landing
//! in between is seen; it ends as soon as its client goes (not at the next deploy), and
//! each connection may hold a bounded number of watches (`limits.rs`).

use std::future::Future;
use std::pin::Pin;

use tokio::sync::{mpsc, watch};
use tokio_stream::Stream;
use tonic::{Request, Response, Status};

use super::limits::{ConnectionLimits, OpenCall, Permit};
use super::{messages, store_status};
use crate::api::selfhosted_v1::deployment_service_server::DeploymentService;
use crate::api::selfhosted_v1::{ClusterDeployments, DeployedRelease, WatchDeploymentsRequest};
use crate::server::auth::{Action, authorize_cluster};
use crate::server::store::{DEFAULT_CLUSTER_SLUG, Store};

pub struct Deployments {
    store: std::sync::Arc<dyn Store>,
    changes: watch::Receiver<u64>,
    limits: ConnectionLimits,
}

impl Deployments {
    pub fn new(
        store: std::sync::Arc<dyn Store>,
        changes: watch::Receiver<u64>,
        limits: ConnectionLimits,
    ) -> Self {
        Self {
            store,
            changes,
            limits,
        }
    }
}

async fn snapshot(store: &dyn Store, cluster: &str) -> Result<ClusterDeployments, Status> {
    let releases = store
        .cluster_deployments(cluster)
        .await
        .map_err(store_status)?;
    Ok(ClusterDeployments {
        cluster_slug: cluster.to_string(),
        releases: releases
            .iter()
            .map(|release| DeployedRelease {
                workflow_slug: release.workflow.clone(),
                release: Some(messages::release(release, Vec::new())),
            })
            .collect(),
    })
}

type Snapshots = mpsc::Receiver<Result<ClusterDeployments, Status>>;

/// Opens a watch: subscribes to `changes` first, then reads the first snapshot (an error
/// there is the call's error), then sends every changed snapshot until the client goes.
/// `permit` is held as long as the watch runs.
async fn open_watch<R, F>(
    mut changes: watch::Receiver<u64>,
    mut read: R,
    permit: Permit,
    limits: ConnectionLimits,
) -> Result<Snapshots, Status>
where
    R: FnMut() -> F + Send + 'static,
    F: Future<Output = Result<ClusterDeployments, Status>> + Send,
{
    // Subscribe before reading: a change after this point wakes the loop below, even one
    // that lands while the first snapshot is read.
    changes.mark_unchanged();
    let first = read().await?;
    let (sender, receiver) = mpsc::channel(4);
    tokio::spawn(async move {
        follow(changes, read, first, sender).await;
        // Counted after this watch's permit is given back: two watches ending at once
        // then never both report the count from before either ended, and the last to end
        // reports what is left.
        drop(permit);
        tracing::info!(
            live_watches = limits.open_calls(OpenCall::Watch),
            "deployment watch ended"
        );
    });
    Ok(receiver)
}

async fn follow<R, F>(
    mut changes: watch::Receiver<u64>,
    mut read: R,
    first: ClusterDeployments,
    sender: mpsc::Sender<Result<ClusterDeployments, Status>>,
) where
    R: FnMut() -> F,
    F: Future<Output = Result<ClusterDeployments, Status>>,
{
    let mut last = first;
    if sender.send(Ok(last.clone())).await.is_err() {
        return;
    }
    loop {
        tokio::select! {
            // The client went: stop now rather than at the next deploy.
            () = sender.closed() => return,
            changed = changes.changed() => if changed.is_err() { return },
        }
        let send = match read().await {
            Ok(next) if next == last => continue,
            Ok(next) => {
                last = next.clone();
                Ok(next)
            }
            Err(status) => Err(status),
        };
        let failed = send.is_err();
        if sender.send(send).await.is_err() || failed {
            return;
        }
    }
}

#[tonic::async_trait]
impl DeploymentService for Deployments {
    type WatchDeploymentsStream =
        Pin<Box<dyn Stream<Item = Result<ClusterDeployments, Status>> + Send>>;

    async fn watch_deployments(
        &self,
        request: Request<WatchDeploymentsRequest>,
    ) -> Result<Response<Self::WatchDeploymentsStream>, Status> {
        authorize_cluster(
            &request,
            Action::WatchDeployments,
            &request.get_ref().cluster_slug,
        )?;
        let permit = self
            .limits
            .acquire(request.remote_addr(), OpenCall::Watch)?;
        let cluster = match request.into_inner().cluster_slug {
            slug if slug.is_empty() => DEFAULT_CLUSTER_SLUG.to_string(),
            slug => slug,
        };
        tracing::info!(
            %cluster,
            live_watches = self.limits.open_calls(OpenCall::Watch),
            "deployment watch opened"
        );
        let store = self.store.clone();
        let read = move || {
            let (store, cluster) = (store.clone(), cluster.clone());
            async move { snapshot(store.as_ref(), &cluster).await }
        };
        let receiver = open_watch(self.changes.clone(), read, permit, self.limits.clone()).await?;
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(receiver),
        )))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    fn deployments(marker: &str) -> ClusterDeployments {
        ClusterDeployments {
            cluster_slug: marker.to_string(),
            releases: Vec::new(),
        }
    }

    #[tokio::test]
    async fn a_deploy_landing_while_the_first_snapshot_is_read_is_sent() {
        let (changes, watched) = watch::channel(0u64);
        let changes = Arc::new(changes);
        let reads = Arc::new(AtomicUsize::new(0));
        let limits = ConnectionLimits::new(1);
        let permit = limits.acquire(None, OpenCall::Watch).unwrap();
        let read = {
            let (changes, reads) = (changes.clone(), reads.clone());
            move || {
                let (changes, reads) = (changes.clone(), reads.clone());
                async move {
                    if reads.fetch_add(1, Ordering::SeqCst) == 0 {
                        // A deploy commits just after this read saw the old state.
                        changes.send_modify(|version| *version += 1);
                        Ok(deployments("before"))
                    } else {
                        Ok(deployments("after"))
                    }
                }
            }
        };
        let mut snapshots = open_watch(watched, read, permit, limits).await.unwrap();
        assert_eq!(
            snapshots.recv().await.unwrap().unwrap().cluster_slug,
            "before"
        );
        assert_eq!(
            snapshots.recv().await.unwrap().unwrap().cluster_slug,
            "after",
            "the deploy made during the first read reaches the watcher"
        );
    }

    #[tokio::test]
    async fn a_watch_ends_when_its_client_goes_without_waiting_for_a_deploy() {
        let (_changes, watched) = watch::channel(0u64);
        let limits = ConnectionLimits::new(4);
        let peer = Some("127.0.0.1:9".parse().unwrap());
        let permit = limits.acquire(peer, OpenCall::Watch).unwrap();
        let read = || async { Ok(deployments("only")) };
        let mut snapshots = open_watch(watched, read, permit, limits.clone())
            .await
            .unwrap();
        snapshots.recv().await.unwrap().unwrap();
        assert_eq!(limits.open_calls(OpenCall::Watch), 1);
        drop(snapshots);
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
        while limits.open_calls(OpenCall::Watch) != 0 {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the watch task outlived its client"
            );
            tokio::task::yield_now().await;
        }
    }
}
