//! `tilebox.selfhosted.v1.DeploymentService`: a cluster's deployed releases, pushed to
//! runners when they change (no polling interval between a deploy and a runner seeing it).

use std::pin::Pin;

use tokio_stream::Stream;
use tonic::{Request, Response, Status};

use super::{messages, store_status};
use crate::api::selfhosted_v1::deployment_service_server::DeploymentService;
use crate::api::selfhosted_v1::{ClusterDeployments, DeployedRelease, WatchDeploymentsRequest};
use crate::server::store::{DEFAULT_CLUSTER_SLUG, Store};

pub struct Deployments {
    store: std::sync::Arc<dyn Store>,
    changes: tokio::sync::watch::Receiver<u64>,
}

impl Deployments {
    pub fn new(
        store: std::sync::Arc<dyn Store>,
        changes: tokio::sync::watch::Receiver<u64>,
    ) -> Self {
        Self { store, changes }
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

#[tonic::async_trait]
impl DeploymentService for Deployments {
    type WatchDeploymentsStream =
        Pin<Box<dyn Stream<Item = Result<ClusterDeployments, Status>> + Send>>;

    async fn watch_deployments(
        &self,
        request: Request<WatchDeploymentsRequest>,
    ) -> Result<Response<Self::WatchDeploymentsStream>, Status> {
        let cluster = match request.into_inner().cluster_slug {
            slug if slug.is_empty() => DEFAULT_CLUSTER_SLUG.to_string(),
            slug => slug,
        };
        let first = snapshot(self.store.as_ref(), &cluster).await?;
        let store = self.store.clone();
        let mut changes = self.changes.clone();
        changes.mark_unchanged();
        let (sender, receiver) = tokio::sync::mpsc::channel(4);
        tokio::spawn(async move {
            let mut last = first;
            if sender.send(Ok(last.clone())).await.is_err() {
                return;
            }
            while changes.changed().await.is_ok() {
                let next = snapshot(store.as_ref(), &cluster).await;
                let send = match next {
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
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(receiver),
        )))
    }
}
