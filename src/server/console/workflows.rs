//! The workflows pages: every workflow with its releases and where they are deployed, and
//! one workflow's releases, newest first, with deploy, undeploy and roll back (through
//! `WorkflowsService`, in-process, which pushes the change to watching runners).
//!
//! A cluster holds at most one release of a workflow: deploying a release replaces the
//! workflow's release there (store `deploy_release`, `ON CONFLICT (cluster, workflow)`). So
//! rolling back a cluster to an older release is one deploy of that release, with no gap in
//! which the cluster has none.

use std::collections::{BTreeSet, HashMap};

use axum::Form;
use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use maud::{Markup, html};
use prost::Message;
use serde::Deserialize;
use uuid::Uuid;

use super::clusters::{Flash, slug_shaped};
use super::layout::{self, Section};
use super::viewer::urlencode;
use super::{ConsoleError, ConsoleState, Fragment, Viewer};
use crate::api::convert::id;
use crate::api::workflows_v1::workflows_service_server::WorkflowsService;
use crate::api::workflows_v1::{
    DeployWorkflowReleaseRequest, ReleaseContent, UndeployWorkflowReleaseRequest,
};
use crate::server::auth::Action;
use crate::server::store::{Cluster, Release};

pub fn routes() -> axum::Router<ConsoleState> {
    axum::Router::new()
        .route("/workflows", get(list))
        .route("/workflows/{slug}", get(show))
        .route("/workflows/{slug}/releases/{release}/deploy", post(deploy))
        .route(
            "/workflows/{slug}/releases/{release}/undeploy",
            post(undeploy),
        )
}

async fn list(
    viewer: Viewer,
    fragment: Fragment,
    State(state): State<ConsoleState>,
) -> Result<Response, ConsoleError> {
    viewer.principal.check(Action::ReadWorkflows)?;
    let mut rows = Vec::new();
    for workflow in state.store.list_workflows().await? {
        let releases = state.store.list_releases(&workflow.slug).await?;
        let deployed: BTreeSet<String> = releases
            .iter()
            .flat_map(|release| release.clusters.iter().cloned())
            .collect();
        rows.push((workflow, releases.len(), deployed));
    }
    let body = html! {
        section.workflows {
            h1 { "Workflows" }
            table.workflows {
                thead { tr { th { "Name" } th { "Slug" } th { "Summary" } th { "Releases" } th { "Deployed to" } } }
                tbody {
                    @for (workflow, releases, deployed) in &rows {
                        tr.workflow data-slug=(workflow.slug) {
                            td.name { a href={ "/workflows/" (urlencode(&workflow.slug)) } { (workflow.name) } }
                            td.slug { code { (workflow.slug) } }
                            td.summary { (workflow.summary) }
                            td.releases data-releases=(releases) { (releases) }
                            td.deployed {
                                @for cluster in deployed {
                                    span.cluster-chip data-cluster=(cluster) { (cluster) }
                                }
                            }
                        }
                    }
                }
            }
            @if rows.is_empty() {
                p.muted { "No workflows. Create one with " code { "tilebox workflow create <name>" } "." }
            }
        }
    };
    Ok(layout::page(
        &viewer,
        fragment,
        Section::Workflows,
        "Workflows",
        body,
    ))
}

/// What the redirect after an action says it did.
#[derive(Debug, Default, Deserialize)]
struct Done {
    deployed: Option<String>,
    undeployed: Option<String>,
    cluster: Option<String>,
}

impl Done {
    /// Only a release id and a slug-shaped cluster reach the page (see `slug_shaped`).
    fn flash(&self) -> Option<Flash> {
        let cluster = self.cluster.as_deref().filter(|slug| slug_shaped(slug))?;
        let (verb, release) = match (&self.deployed, &self.undeployed) {
            (Some(release), _) => ("Deployed", release),
            (_, Some(release)) => ("Undeployed", release),
            _ => return None,
        };
        let release = Uuid::parse_str(release).ok()?;
        let preposition = if verb == "Deployed" { "to" } else { "from" };
        Some(Flash::done(format!(
            "{verb} release {} {preposition} cluster {cluster}.",
            short(release)
        )))
    }
}

async fn show(
    viewer: Viewer,
    fragment: Fragment,
    State(state): State<ConsoleState>,
    Path(slug): Path<String>,
    Query(done): Query<Done>,
) -> Result<Response, ConsoleError> {
    let (title, body) = render(&state, &viewer, &slug, done.flash().as_ref()).await?;
    Ok(layout::page(
        &viewer,
        fragment,
        Section::Workflows,
        &title,
        body,
    ))
}

#[derive(Debug, Deserialize)]
struct ClusterForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    cluster: String,
}

fn release_id(text: &str) -> Result<Uuid, ConsoleError> {
    Uuid::parse_str(text).map_err(|_| {
        ConsoleError::BadRequest(format!(
            "`{}` is not a release id (a UUID)",
            super::layout::echo(text)
        ))
    })
}

/// Deploys the release to the form's cluster, replacing the workflow's release there: the
/// deploy button, and the roll back button of an older release.
async fn deploy(
    viewer: Viewer,
    State(state): State<ConsoleState>,
    Path((slug, release)): Path<(String, String)>,
    headers: HeaderMap,
    Form(form): Form<ClusterForm>,
) -> Result<Response, ConsoleError> {
    viewer.check_form(&headers, &form.csrf)?;
    let release = release_id(&release)?;
    let cluster = chosen_cluster(&form)?;
    let request = viewer.request(DeployWorkflowReleaseRequest {
        workflow_slug: slug.clone(),
        release_id: Some(id(release)),
        cluster_slugs: vec![cluster.clone()],
    });
    match state.workflows.deploy_workflow_release(request).await {
        Ok(_) => Ok(redirect(&slug, "deployed", release, &cluster)),
        Err(status) => failed(&state, &viewer, &slug, status).await,
    }
}

async fn undeploy(
    viewer: Viewer,
    State(state): State<ConsoleState>,
    Path((slug, release)): Path<(String, String)>,
    headers: HeaderMap,
    Form(form): Form<ClusterForm>,
) -> Result<Response, ConsoleError> {
    viewer.check_form(&headers, &form.csrf)?;
    let release = release_id(&release)?;
    let cluster = chosen_cluster(&form)?;
    let request = viewer.request(UndeployWorkflowReleaseRequest {
        workflow_slug: slug.clone(),
        release_id: Some(id(release)),
        cluster_slugs: vec![cluster.clone()],
    });
    match state.workflows.undeploy_workflow_release(request).await {
        Ok(_) => Ok(redirect(&slug, "undeployed", release, &cluster)),
        Err(status) => failed(&state, &viewer, &slug, status).await,
    }
}

/// The form's cluster; an empty one is refused rather than read as the default cluster.
fn chosen_cluster(form: &ClusterForm) -> Result<String, ConsoleError> {
    let cluster = form.cluster.trim();
    if cluster.is_empty() {
        return Err(ConsoleError::BadRequest(
            "choose a cluster (the form's `cluster` is empty)".to_string(),
        ));
    }
    Ok(cluster.to_string())
}

fn redirect(slug: &str, verb: &str, release: Uuid, cluster: &str) -> Response {
    Redirect::to(&format!(
        "/workflows/{}?{verb}={release}&cluster={}",
        urlencode(slug),
        urlencode(cluster)
    ))
    .into_response()
}

/// The workflow's page again, with why the action failed, answered with the status the
/// refusal maps to.
async fn failed(
    state: &ConsoleState,
    viewer: &Viewer,
    slug: &str,
    status: tonic::Status,
) -> Result<Response, ConsoleError> {
    let error = ConsoleError::Status(status);
    let code = error.status();
    let flash = Flash {
        error: true,
        text: error.to_string(),
    };
    let (title, body) = render(state, viewer, slug, Some(&flash)).await?;
    let page = layout::shell(Some((viewer, Section::Workflows)), &title, body);
    Ok((code, page).into_response())
}

/// The first 8 hex digits of a release id, as the CLI's tables show it.
fn short(release: Uuid) -> String {
    release.simple().to_string()[..8].to_string()
}

/// `1.2 MiB`.
fn bytes(size: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if size < 1024 {
        return format!("{size} B");
    }
    let mut value = size as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

/// The task identifiers a release provides, as `name@version` (or `name`).
fn tasks_of(release: &Release) -> Vec<String> {
    ReleaseContent::decode(release.content.as_slice())
        .map(|content| {
            content
                .tasks
                .iter()
                .map(|task| {
                    if task.version.is_empty() {
                        task.name.clone()
                    } else {
                        format!("{}@{}", task.name, task.version)
                    }
                })
                .collect()
        })
        .unwrap_or_default()
}

async fn render(
    state: &ConsoleState,
    viewer: &Viewer,
    slug: &str,
    flash: Option<&Flash>,
) -> Result<(String, Markup), ConsoleError> {
    viewer.principal.check(Action::ReadWorkflows)?;
    // No slug has other characters: the address is not repeated into the page.
    if !slug_shaped(slug) {
        return Err(ConsoleError::NotFound(
            "no workflow has this address; workflow slugs are lowercase letters, digits and `-`"
                .to_string(),
        ));
    }
    let workflow = state.store.get_workflow(slug).await?;
    let releases = state.store.list_releases(slug).await?;
    let clusters: Vec<Cluster> = if viewer.allows(Action::ReadClusters) {
        state
            .store
            .list_clusters()
            .await?
            .into_iter()
            .filter(|cluster| viewer.principal.may_serve(&cluster.slug))
            .collect()
    } else {
        Vec::new()
    };
    // Releases are newest first; a cluster holds at most one release of a workflow.
    let deployed_at: HashMap<&str, usize> = releases
        .iter()
        .enumerate()
        .flat_map(|(index, release)| {
            release
                .clusters
                .iter()
                .map(move |cluster| (cluster.as_str(), index))
        })
        .collect();
    let deploy = viewer.allows(Action::Deploy);
    let base = format!("/workflows/{}/releases", urlencode(&workflow.slug));
    let body = html! {
        section.workflow data-slug=(workflow.slug) {
            p.breadcrumb { a href="/workflows" { "Workflows" } " / " code { (workflow.slug) } }
            h1 { (workflow.name) }
            @if !workflow.summary.is_empty() { p.summary { (workflow.summary) } }
            @if !workflow.description.is_empty() { p.description { (workflow.description) } }
            (Flash::render(flash))
            table.releases {
                thead { tr {
                    th { "Release" } th { "Published" } th { "Tasks" } th { "Artifact" }
                    th { "Deployed to" } th { "Actions" }
                } }
                tbody {
                    @for (index, release) in releases.iter().enumerate() {
                        @let action = format!("{base}/{}", release.id);
                        // Clusters where this release may be deployed: none there yet, or
                        // an older release of the workflow (a newer one: roll back below).
                        @let targets: Vec<&Cluster> = clusters.iter()
                            .filter(|cluster| deployed_at.get(cluster.slug.as_str()).is_none_or(|at| *at > index))
                            .collect();
                        @let newer: Vec<&Cluster> = clusters.iter()
                            .filter(|cluster| deployed_at.get(cluster.slug.as_str()).is_some_and(|at| *at < index))
                            .collect();
                        tr.release data-release=(release.id) {
                            td.id {
                                code title=(release.id) { (short(release.id)) }
                                @if index == 0 { " " span.latest { "latest" } }
                            }
                            td.published { (layout::time(release.created_at)) }
                            td.tasks {
                                @for task in tasks_of(release) { code.task { (task) } " " }
                            }
                            td.artifact {
                                code title=(release.artifact.digest) {
                                    (release.artifact.digest.chars().take(19).collect::<String>()) "…"
                                }
                                " " span.size data-bytes=(release.artifact.size) { (bytes(release.artifact.size)) }
                            }
                            td.deployed {
                                @for cluster in &release.clusters {
                                    span.deployment data-cluster=(cluster) {
                                        span.cluster-chip { (cluster) }
                                        @if deploy {
                                            form method="post" action={ (action) "/undeploy" }
                                                data-action="undeploy"
                                                data-confirm={ "Undeploy release " (short(release.id)) " of "
                                                    (workflow.name) " from cluster " (cluster)
                                                    "? Its runners stop running it." } {
                                                input type="hidden" name="csrf" value=(viewer.csrf);
                                                input type="hidden" name="cluster" value=(cluster);
                                                button.link-danger type="submit" title="Undeploy" { "Undeploy" }
                                            }
                                        }
                                    }
                                }
                            }
                            td.actions {
                                @if deploy {
                                    @if !targets.is_empty() {
                                        form.deploy method="post" action={ (action) "/deploy" } data-action="deploy" {
                                            input type="hidden" name="csrf" value=(viewer.csrf);
                                            select name="cluster" aria-label="cluster" {
                                                @for cluster in &targets {
                                                    option value=(cluster.slug) { (cluster.name) " (" (cluster.slug) ")" }
                                                }
                                            }
                                            button.primary type="submit" { "Deploy" }
                                        }
                                    }
                                    @for cluster in &newer {
                                        form method="post" action={ (action) "/deploy" }
                                            data-action="rollback" data-cluster=(cluster.slug)
                                            data-confirm={ "Roll cluster " (cluster.slug) " back to release "
                                                (short(release.id)) " of " (workflow.name)
                                                "? It replaces the newer release deployed there." } {
                                            input type="hidden" name="csrf" value=(viewer.csrf);
                                            input type="hidden" name="cluster" value=(cluster.slug);
                                            button type="submit" { "Roll back " (cluster.slug) }
                                        }
                                    }
                                }
                            }
                        }
                    }
                }
            }
            @if releases.is_empty() {
                p.muted { "No releases. Publish one with " code { "tilebox workflow publish-release" } "." }
            }
        }
    };
    Ok((workflow.name, body))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_read_naturally() {
        assert_eq!(bytes(512), "512 B");
        assert_eq!(bytes(2048), "2.0 KiB");
        assert_eq!(bytes(5 * 1024 * 1024 + 1024 * 512), "5.5 MiB");
    }

    #[test]
    fn the_flash_names_only_an_id_and_a_slug() {
        let release = Uuid::now_v7();
        let done = Done {
            deployed: Some(release.to_string()),
            undeployed: None,
            cluster: Some("east".to_string()),
        };
        assert_eq!(
            done.flash().map(|flash| flash.text),
            Some(format!(
                "Deployed release {} to cluster east.",
                short(release)
            ))
        );
        let crafted = Done {
            deployed: Some("your key leaked, mail it to x".to_string()),
            undeployed: None,
            cluster: Some("east".to_string()),
        };
        assert!(crafted.flash().is_none());
        let crafted = Done {
            deployed: Some(release.to_string()),
            undeployed: None,
            cluster: Some("East Cluster!".to_string()),
        };
        assert!(crafted.flash().is_none());
    }
}
