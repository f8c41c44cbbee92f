//! `tilebox cluster ...`: create, list, get and delete clusters.

use std::process::ExitCode;

use clap::{Args, Subcommand};
use serde_json::{Value, json};

use super::ApiArgs;
use super::output::{self, Table};
use crate::api::workflows_v1::{
    Cluster, CreateClusterRequest, DeleteClusterRequest, GetClusterRequest, ListClustersRequest,
};

#[derive(Debug, Subcommand)]
pub enum ClusterCommand {
    /// Create a cluster; its slug is derived from the name unless given.
    Create(CreateArgs),
    /// List clusters.
    List(ListArgs),
    /// Show one cluster.
    Get(GetArgs),
    /// Delete a cluster.
    Delete(DeleteArgs),
}

#[derive(Debug, Args)]
pub struct CreateArgs {
    /// Display name of the cluster.
    name: String,
    /// Slug of the cluster (default: derived from the name by the server).
    #[arg(long)]
    slug: Option<String>,
    /// Description of the cluster.
    #[arg(long)]
    description: Option<String>,
}

#[derive(Debug, Args)]
pub struct ListArgs {}

#[derive(Debug, Args)]
pub struct GetArgs {
    /// Slug of the cluster.
    slug: String,
}

#[derive(Debug, Args)]
pub struct DeleteArgs {
    /// Slug of the cluster.
    slug: String,
}

pub async fn run(command: ClusterCommand, api: &ApiArgs) -> anyhow::Result<ExitCode> {
    match command {
        ClusterCommand::Create(arguments) => create(arguments, api).await?,
        ClusterCommand::List(arguments) => list(arguments, api).await?,
        ClusterCommand::Get(arguments) => get(arguments, api).await?,
        ClusterCommand::Delete(arguments) => delete(arguments, api).await?,
    }
    Ok(ExitCode::SUCCESS)
}

async fn create(arguments: CreateArgs, api: &ApiArgs) -> anyhow::Result<()> {
    let mut client = api.connect().await?;
    let request = CreateClusterRequest {
        name: arguments.name,
        description: arguments.description.unwrap_or_default(),
        slug: arguments.slug.unwrap_or_default(),
    };
    let cluster = client
        .workflows
        .create_cluster(request)
        .await
        .map_err(|status| client.error("CreateCluster", status))?
        .into_inner();
    print_cluster(&cluster, api.json)
}

async fn list(_arguments: ListArgs, api: &ApiArgs) -> anyhow::Result<()> {
    let mut client = api.connect().await?;
    let clusters = client
        .workflows
        .list_clusters(ListClustersRequest {})
        .await
        .map_err(|status| client.error("ListClusters", status))?
        .into_inner()
        .clusters;
    if api.json {
        return output::print_json(&Value::Array(
            clusters.iter().map(cluster_document).collect(),
        ));
    }
    output::print_text(&clusters_table(&clusters).render())
}

async fn get(arguments: GetArgs, api: &ApiArgs) -> anyhow::Result<()> {
    let mut client = api.connect().await?;
    let request = GetClusterRequest {
        cluster_slug: arguments.slug,
    };
    let cluster = client
        .workflows
        .get_cluster(request)
        .await
        .map_err(|status| client.error("GetCluster", status))?
        .into_inner();
    print_cluster(&cluster, api.json)
}

async fn delete(arguments: DeleteArgs, api: &ApiArgs) -> anyhow::Result<()> {
    let mut client = api.connect().await?;
    let request = DeleteClusterRequest {
        cluster_slug: arguments.slug.clone(),
    };
    client
        .workflows
        .delete_cluster(request)
        .await
        .map_err(|status| client.error("DeleteCluster", status))?;
    if api.json {
        return output::print_json(&json!({ "slug": arguments.slug, "deleted": true }));
    }
    output::print_text(&format!("Deleted cluster {}", arguments.slug))
}

fn print_cluster(cluster: &Cluster, json: bool) -> anyhow::Result<()> {
    if json {
        return output::print_json(&cluster_document(cluster));
    }
    output::print_text(&cluster_rows(cluster))
}

/// A cluster as JSON, with the API's field names (`name` is the display name).
fn cluster_document(cluster: &Cluster) -> Value {
    json!({
        "slug": cluster.slug,
        "name": cluster.display_name,
        "description": cluster.description,
        "deletable": cluster.deletable,
    })
}

/// A cluster as key/value rows; the description only when there is one.
fn cluster_rows(cluster: &Cluster) -> String {
    let mut rows = vec![
        ("Slug", cluster.slug.clone()),
        ("Name", cluster.display_name.clone()),
    ];
    if !cluster.description.is_empty() {
        rows.push(("Description", cluster.description.clone()));
    }
    rows.push(("Deletable", cluster.deletable.to_string()));
    output::key_values(&rows)
}

fn clusters_table(clusters: &[Cluster]) -> Table {
    let mut table = Table::new(&["SLUG", "NAME", "DELETABLE", "DESCRIPTION"]);
    for cluster in clusters {
        table.push(vec![
            cluster.slug.clone(),
            cluster.display_name.clone(),
            cluster.deletable.to_string(),
            cluster.description.clone(),
        ]);
    }
    table
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cluster(slug: &str, name: &str, description: &str, deletable: bool) -> Cluster {
        Cluster {
            slug: slug.to_string(),
            display_name: name.to_string(),
            deletable,
            deployed_releases: Vec::new(),
            description: description.to_string(),
        }
    }

    #[test]
    fn cluster_document_uses_api_field_names() {
        let document = cluster_document(&cluster("dev-9xK2", "Dev", "for testing", true));
        assert_eq!(
            document,
            json!({"slug": "dev-9xK2", "name": "Dev", "description": "for testing", "deletable": true})
        );
    }

    #[test]
    fn cluster_rows_show_slug_name_and_deletable() {
        assert_eq!(
            cluster_rows(&cluster("dev-9xK2", "Dev", "", true)),
            "Slug       dev-9xK2\nName       Dev\nDeletable  true"
        );
        assert_eq!(
            cluster_rows(&cluster("default", "Default", "the default", false)),
            "Slug         default\nName         Default\nDescription  the default\nDeletable    false"
        );
    }

    #[test]
    fn clusters_table_has_one_row_per_cluster() {
        let table = clusters_table(&[
            cluster("default", "Default", "", false),
            cluster("gpu-1", "GPU", "big machines", true),
        ]);
        assert_eq!(
            table.render(),
            "SLUG     NAME     DELETABLE  DESCRIPTION\n\
             default  Default  false\n\
             gpu-1    GPU      true       big machines"
        );
    }
}
