//! `workflows.v1.WorkflowsService`: clusters, workflows, releases and deployments.

use rand::Rng;
use tonic::{Request, Response, Status};

use crate::server::auth::{Action, authorize, authorize_cluster};

use prost::Message;

use super::{messages, required_uuid, store_status};
use crate::api::submission::parse_identifier;
use crate::api::workflows_v1::workflows_service_server::WorkflowsService;
use crate::api::workflows_v1::{
    Cluster, CreateClusterRequest, CreateWorkflowRequest, DeleteClusterRequest,
    DeleteClusterResponse, DeleteWorkflowRequest, DeleteWorkflowResponse,
    DeployWorkflowReleaseRequest, DeployWorkflowReleaseResponse, GetClusterRequest,
    GetWorkflowRequest, ListClustersRequest, ListClustersResponse, ListWorkflowsRequest,
    ListWorkflowsResponse, PublishWorkflowReleaseRequest, ReleaseContent,
    UndeployWorkflowReleaseRequest, UndeployWorkflowReleaseResponse,
    UnpublishWorkflowReleaseRequest, UnpublishWorkflowReleaseResponse, UpdateClusterRequest,
    UpdateWorkflowRequest, Workflow, WorkflowRelease,
};
use crate::server::store::{self, DEFAULT_CLUSTER_SLUG, Store};

/// Bumped after every deployment change; deployment watches wait on it.
pub type DeploymentChanges = std::sync::Arc<tokio::sync::watch::Sender<u64>>;

/// Longest cluster slug accepted.
const MAX_SLUG_LENGTH: usize = 100;
/// Length of the random suffix of a generated slug (as the hosted API does).
const SLUG_SUFFIX_LENGTH: usize = 14;

pub struct Workflows {
    store: std::sync::Arc<dyn Store>,
    changes: DeploymentChanges,
}

impl Workflows {
    pub fn new(store: std::sync::Arc<dyn Store>, changes: DeploymentChanges) -> Self {
        Self { store, changes }
    }

    fn announce_deployment_change(&self) {
        self.changes.send_modify(|version| *version += 1);
    }

    /// A cluster with the releases deployed to it.
    async fn cluster_message(&self, cluster: store::Cluster) -> Result<Cluster, Status> {
        let deployed = self
            .store
            .cluster_deployments(&cluster.slug)
            .await
            .map_err(store_status)?;
        let mut message = messages::cluster(cluster);
        for release in deployed {
            let workflow = self
                .store
                .get_workflow(&release.workflow)
                .await
                .map_err(store_status)?;
            let release = self.release_message(&release).await?;
            message
                .deployed_releases
                .push(messages::workflow(workflow, vec![release]));
        }
        Ok(message)
    }

    /// A release with the clusters it is deployed to.
    async fn release_message(&self, release: &store::Release) -> Result<WorkflowRelease, Status> {
        let mut clusters = Vec::with_capacity(release.clusters.len());
        for slug in &release.clusters {
            clusters.push(messages::cluster(
                self.store.get_cluster(slug).await.map_err(store_status)?,
            ));
        }
        Ok(messages::release(release, clusters))
    }

    async fn workflow_message(&self, workflow: store::Workflow) -> Result<Workflow, Status> {
        let releases = self
            .store
            .list_releases(&workflow.slug)
            .await
            .map_err(store_status)?;
        let mut messages_out = Vec::with_capacity(releases.len());
        for release in &releases {
            messages_out.push(self.release_message(release).await?);
        }
        Ok(messages::workflow(workflow, messages_out))
    }

    /// The clusters a deploy or undeploy names (none: the default cluster), as messages.
    fn target_clusters(slugs: Vec<String>) -> Vec<String> {
        if slugs.is_empty() {
            vec![DEFAULT_CLUSTER_SLUG.to_string()]
        } else {
            slugs
                .into_iter()
                .map(|slug| resolve(&slug).to_string())
                .collect()
        }
    }

    async fn clusters_message(&self, slugs: &[String]) -> Result<Vec<Cluster>, Status> {
        let mut clusters = Vec::with_capacity(slugs.len());
        for slug in slugs {
            let cluster = self.store.get_cluster(slug).await.map_err(store_status)?;
            clusters.push(self.cluster_message(cluster).await?);
        }
        Ok(clusters)
    }
}

/// Checks what a release says about itself before it is published.
fn check_release_content(content: &ReleaseContent) -> Result<(), Status> {
    if content.fingerprint.is_empty() {
        return Err(Status::invalid_argument(
            "content.fingerprint must not be empty",
        ));
    }
    match (
        content.runner_object_path.is_empty(),
        content.command_override.is_empty(),
    ) {
        (true, true) => {
            return Err(Status::invalid_argument(
                "content needs a runner_object_path (module:object) or a command_override",
            ));
        }
        (false, false) => {
            return Err(Status::invalid_argument(
                "content has both a runner_object_path and a command_override; set one",
            ));
        }
        _ => {}
    }
    for (index, identifier) in content.tasks.iter().enumerate() {
        parse_identifier(identifier).map_err(|error| {
            Status::invalid_argument(format!("content.tasks[{index}]: {error}"))
        })?;
    }
    Ok(())
}

/// Lowercase words joined by dashes: `My Cluster!` -> `my-cluster`.
pub fn slugify(name: &str) -> String {
    let mut slug = String::new();
    for word in name
        .split(|c: char| !c.is_ascii_alphanumeric())
        .filter(|word| !word.is_empty())
    {
        if !slug.is_empty() {
            slug.push('-');
        }
        slug.push_str(&word.to_ascii_lowercase());
    }
    slug
}

fn check_slug(slug: &str) -> Result<(), Status> {
    let valid = !slug.is_empty()
        && slug.len() <= MAX_SLUG_LENGTH
        && slug
            .bytes()
            .all(|byte| byte.is_ascii_lowercase() || byte.is_ascii_digit() || byte == b'-')
        && !slug.starts_with('-')
        && !slug.ends_with('-');
    if valid {
        Ok(())
    } else {
        Err(Status::invalid_argument(format!(
            "invalid cluster slug `{slug}`: use 1 to {MAX_SLUG_LENGTH} lowercase letters, digits and inner dashes"
        )))
    }
}

fn generated_slug(name: &str) -> String {
    let base = match slugify(name) {
        base if base.is_empty() => "cluster".to_string(),
        base => base
            .chars()
            .take(MAX_SLUG_LENGTH - SLUG_SUFFIX_LENGTH - 1)
            .collect(),
    };
    let mut random = rand::rng();
    let suffix: String = (0..SLUG_SUFFIX_LENGTH)
        .map(|_| {
            let alphabet = b"abcdefghijklmnopqrstuvwxyz0123456789";
            alphabet[random.random_range(0..alphabet.len())] as char
        })
        .collect();
    format!("{}-{suffix}", base.trim_end_matches('-'))
}

fn resolve(slug: &str) -> &str {
    if slug.is_empty() {
        DEFAULT_CLUSTER_SLUG
    } else {
        slug
    }
}

#[tonic::async_trait]
impl WorkflowsService for Workflows {
    async fn create_cluster(
        &self,
        request: Request<CreateClusterRequest>,
    ) -> Result<Response<Cluster>, Status> {
        authorize(&request, Action::ManageClusters)?;
        let request = request.into_inner();
        if request.name.trim().is_empty() {
            return Err(Status::invalid_argument("cluster name must not be empty"));
        }
        let slug = if request.slug.is_empty() {
            generated_slug(&request.name)
        } else {
            request.slug
        };
        check_slug(&slug)?;
        let cluster = self
            .store
            .create_cluster(store::Cluster {
                slug,
                name: request.name,
                description: request.description,
                deletable: true,
            })
            .await
            .map_err(store_status)?;
        Ok(Response::new(messages::cluster(cluster)))
    }

    async fn get_cluster(
        &self,
        request: Request<GetClusterRequest>,
    ) -> Result<Response<Cluster>, Status> {
        authorize_cluster(
            &request,
            Action::ReadClusters,
            &request.get_ref().cluster_slug,
        )?;
        let cluster = self
            .store
            .get_cluster(resolve(&request.get_ref().cluster_slug))
            .await
            .map_err(store_status)?;
        Ok(Response::new(self.cluster_message(cluster).await?))
    }

    async fn update_cluster(
        &self,
        request: Request<UpdateClusterRequest>,
    ) -> Result<Response<Cluster>, Status> {
        authorize(&request, Action::ManageClusters)?;
        let request = request.into_inner();
        if request
            .name
            .as_deref()
            .is_some_and(|name| name.trim().is_empty())
        {
            return Err(Status::invalid_argument("cluster name must not be empty"));
        }
        let cluster = self
            .store
            .update_cluster(
                resolve(&request.cluster_slug),
                request.name,
                request.description,
            )
            .await
            .map_err(store_status)?;
        Ok(Response::new(messages::cluster(cluster)))
    }

    async fn delete_cluster(
        &self,
        request: Request<DeleteClusterRequest>,
    ) -> Result<Response<DeleteClusterResponse>, Status> {
        authorize(&request, Action::ManageClusters)?;
        self.store
            .delete_cluster(resolve(&request.get_ref().cluster_slug))
            .await
            .map_err(store_status)?;
        Ok(Response::new(DeleteClusterResponse {}))
    }

    async fn list_clusters(
        &self,
        request: Request<ListClustersRequest>,
    ) -> Result<Response<ListClustersResponse>, Status> {
        // A runner key sees the clusters it serves only.
        let principal = authorize(&request, Action::ReadClusters)?;
        let clusters = self.store.list_clusters().await.map_err(store_status)?;
        let mut messages_out = Vec::with_capacity(clusters.len());
        for cluster in clusters {
            if !principal.may_serve(&cluster.slug) {
                continue;
            }
            messages_out.push(self.cluster_message(cluster).await?);
        }
        Ok(Response::new(ListClustersResponse {
            clusters: messages_out,
        }))
    }

    async fn create_workflow(
        &self,
        request: Request<CreateWorkflowRequest>,
    ) -> Result<Response<Workflow>, Status> {
        authorize(&request, Action::ManageWorkflows)?;
        let request = request.into_inner();
        if request.name.trim().is_empty() {
            return Err(Status::invalid_argument("workflow name must not be empty"));
        }
        let slug = crate::release::config::workflow_slug(&request.name);
        check_slug(&slug).map_err(|_| {
            Status::invalid_argument(format!(
                "workflow name `{}` gives no usable slug",
                request.name
            ))
        })?;
        let workflow = self
            .store
            .create_workflow(store::Workflow {
                slug,
                name: request.name,
                summary: request.summary,
                description: request.description.unwrap_or_default(),
            })
            .await
            .map_err(store_status)?;
        Ok(Response::new(self.workflow_message(workflow).await?))
    }

    async fn list_workflows(
        &self,
        request: Request<ListWorkflowsRequest>,
    ) -> Result<Response<ListWorkflowsResponse>, Status> {
        authorize(&request, Action::ReadWorkflows)?;
        let workflows = self.store.list_workflows().await.map_err(store_status)?;
        let mut messages_out = Vec::with_capacity(workflows.len());
        for workflow in workflows {
            messages_out.push(self.workflow_message(workflow).await?);
        }
        Ok(Response::new(ListWorkflowsResponse {
            workflows: messages_out,
            next_page: None,
        }))
    }

    async fn get_workflow(
        &self,
        request: Request<GetWorkflowRequest>,
    ) -> Result<Response<Workflow>, Status> {
        authorize(&request, Action::ReadWorkflows)?;
        let workflow = self
            .store
            .get_workflow(&request.get_ref().workflow_slug)
            .await
            .map_err(store_status)?;
        Ok(Response::new(self.workflow_message(workflow).await?))
    }

    async fn update_workflow(
        &self,
        request: Request<UpdateWorkflowRequest>,
    ) -> Result<Response<Workflow>, Status> {
        authorize(&request, Action::ManageWorkflows)?;
        let request = request.into_inner();
        if request
            .name
            .as_deref()
            .is_some_and(|name| name.trim().is_empty())
        {
            return Err(Status::invalid_argument("workflow name must not be empty"));
        }
        let workflow = self
            .store
            .update_workflow(
                &request.workflow_slug,
                request.name,
                request.summary,
                request.description,
            )
            .await
            .map_err(store_status)?;
        Ok(Response::new(self.workflow_message(workflow).await?))
    }

    async fn delete_workflow(
        &self,
        request: Request<DeleteWorkflowRequest>,
    ) -> Result<Response<DeleteWorkflowResponse>, Status> {
        authorize(&request, Action::ManageWorkflows)?;
        self.store
            .delete_workflow(&request.get_ref().workflow_slug)
            .await
            .map_err(store_status)?;
        Ok(Response::new(DeleteWorkflowResponse {}))
    }

    async fn publish_workflow_release(
        &self,
        request: Request<PublishWorkflowReleaseRequest>,
    ) -> Result<Response<WorkflowRelease>, Status> {
        authorize(&request, Action::Publish)?;
        let request = request.into_inner();
        let artifact = required_uuid(request.artifact_id.as_ref(), "artifact_id")?;
        let content = request
            .content
            .ok_or_else(|| Status::invalid_argument("content is required"))?;
        check_release_content(&content)?;
        let release = self
            .store
            .publish_release(
                &request.workflow_slug,
                artifact,
                content.fingerprint.clone(),
                content.encode_to_vec(),
            )
            .await
            .map_err(store_status)?;
        Ok(Response::new(self.release_message(&release).await?))
    }

    async fn unpublish_workflow_release(
        &self,
        request: Request<UnpublishWorkflowReleaseRequest>,
    ) -> Result<Response<UnpublishWorkflowReleaseResponse>, Status> {
        authorize(&request, Action::Publish)?;
        let request = request.into_inner();
        let id = required_uuid(request.release_id.as_ref(), "release_id")?;
        self.store
            .unpublish_release(&request.workflow_slug, id)
            .await
            .map_err(store_status)?;
        Ok(Response::new(UnpublishWorkflowReleaseResponse {}))
    }

    async fn deploy_workflow_release(
        &self,
        request: Request<DeployWorkflowReleaseRequest>,
    ) -> Result<Response<DeployWorkflowReleaseResponse>, Status> {
        authorize(&request, Action::Deploy)?;
        let request = request.into_inner();
        let id = required_uuid(request.release_id.as_ref(), "release_id")?;
        let clusters = Self::target_clusters(request.cluster_slugs);
        let release = self
            .store
            .deploy_release(&request.workflow_slug, id, clusters.clone())
            .await
            .map_err(store_status)?;
        self.announce_deployment_change();
        Ok(Response::new(DeployWorkflowReleaseResponse {
            release: Some(self.release_message(&release).await?),
            clusters: self.clusters_message(&clusters).await?,
        }))
    }

    async fn undeploy_workflow_release(
        &self,
        request: Request<UndeployWorkflowReleaseRequest>,
    ) -> Result<Response<UndeployWorkflowReleaseResponse>, Status> {
        authorize(&request, Action::Deploy)?;
        let request = request.into_inner();
        let id = required_uuid(request.release_id.as_ref(), "release_id")?;
        let clusters = Self::target_clusters(request.cluster_slugs);
        let release = self
            .store
            .undeploy_release(&request.workflow_slug, id, clusters.clone())
            .await
            .map_err(store_status)?;
        self.announce_deployment_change();
        Ok(Response::new(UndeployWorkflowReleaseResponse {
            release: Some(self.release_message(&release).await?),
            clusters: self.clusters_message(&clusters).await?,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slugs_are_lowercase_words_with_dashes() {
        assert_eq!(slugify("My Cluster!"), "my-cluster");
        assert_eq!(slugify("  gpu__nodes 2 "), "gpu-nodes-2");
        let generated = generated_slug("Dev Cluster");
        assert!(generated.starts_with("dev-cluster-"), "{generated}");
        assert_eq!(generated.len(), "dev-cluster-".len() + SLUG_SUFFIX_LENGTH);
        assert!(check_slug(&generated).is_ok());
        assert!(generated_slug("!!!").starts_with("cluster-"));
    }

    #[test]
    fn invalid_slugs_are_refused_with_the_value() {
        for bad in ["", "Upper", "-lead", "trail-", "sp ace", &"x".repeat(101)] {
            let status = check_slug(bad).unwrap_err();
            assert_eq!(status.code(), tonic::Code::InvalidArgument);
            assert!(
                status.message().contains(bad),
                "{bad}: {}",
                status.message()
            );
        }
    }
}
