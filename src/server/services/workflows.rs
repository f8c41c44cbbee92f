//! `workflows.v1.WorkflowsService`: clusters (workflows and releases come with the release
//! pipeline).

use rand::Rng;
use tonic::{Request, Response, Status};

use super::{messages, store_status};
use crate::api::workflows_v1::workflows_service_server::WorkflowsService;
use crate::api::workflows_v1::{
    Cluster, CreateClusterRequest, DeleteClusterRequest, DeleteClusterResponse, GetClusterRequest,
    ListClustersRequest, ListClustersResponse, UpdateClusterRequest,
};
use crate::server::store::{self, DEFAULT_CLUSTER_SLUG, Store};

/// Longest cluster slug accepted.
const MAX_SLUG_LENGTH: usize = 100;
/// Length of the random suffix of a generated slug (as the hosted API does).
const SLUG_SUFFIX_LENGTH: usize = 14;

pub struct Workflows {
    store: std::sync::Arc<dyn Store>,
}

impl Workflows {
    pub fn new(store: std::sync::Arc<dyn Store>) -> Self {
        Self { store }
    }
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
        let cluster = self
            .store
            .get_cluster(resolve(&request.get_ref().cluster_slug))
            .await
            .map_err(store_status)?;
        Ok(Response::new(messages::cluster(cluster)))
    }

    async fn update_cluster(
        &self,
        request: Request<UpdateClusterRequest>,
    ) -> Result<Response<Cluster>, Status> {
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
        self.store
            .delete_cluster(resolve(&request.get_ref().cluster_slug))
            .await
            .map_err(store_status)?;
        Ok(Response::new(DeleteClusterResponse {}))
    }

    async fn list_clusters(
        &self,
        _request: Request<ListClustersRequest>,
    ) -> Result<Response<ListClustersResponse>, Status> {
        let clusters = self.store.list_clusters().await.map_err(store_status)?;
        Ok(Response::new(ListClustersResponse {
            clusters: clusters.into_iter().map(messages::cluster).collect(),
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
