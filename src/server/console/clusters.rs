//! The clusters page: the clusters with the number of releases deployed to each, and
//! forms to create and delete them (through `WorkflowsService`, in-process).

use axum::Form;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use maud::{Markup, html};
use serde::Deserialize;

use super::layout::{self, Section};
use super::viewer::urlencode;
use super::{ConsoleError, ConsoleState, Fragment, Viewer};
use crate::api::workflows_v1::workflows_service_server::WorkflowsService;
use crate::api::workflows_v1::{CreateClusterRequest, DeleteClusterRequest};
use crate::server::auth::Action;

pub fn routes() -> axum::Router<ConsoleState> {
    axum::Router::new()
        .route("/clusters", get(list).post(create))
        .route("/clusters/{slug}/delete", post(delete))
}

/// A one-line message above a page: what an action did, or why it failed.
pub(super) struct Flash {
    pub error: bool,
    pub text: String,
}

impl Flash {
    pub fn done(text: String) -> Self {
        Self { error: false, text }
    }

    pub fn render(flash: Option<&Flash>) -> Markup {
        html! {
            @if let Some(flash) = flash {
                @if flash.error {
                    p.flash.error role="alert" { (flash.text) }
                } @else {
                    p.flash.done role="status" { (flash.text) }
                }
            }
        }
    }
}

/// Whether `text` looks like a slug (lowercase letters, digits, dashes; at most 100 bytes).
/// The redirect after an action names what it changed in the query; the page shows it only
/// in this shape, so a crafted link can put no sentence of its own on the page.
pub(super) fn slug_shaped(text: &str) -> bool {
    !text.is_empty()
        && text.len() <= 100
        && text
            .bytes()
            .all(|byte| byte.is_ascii_lowercase() || byte.is_ascii_digit() || byte == b'-')
}

/// What the redirect after an action says it did.
#[derive(Debug, Default, Deserialize)]
struct Done {
    created: Option<String>,
    deleted: Option<String>,
}

impl Done {
    fn flash(&self) -> Option<Flash> {
        match (&self.created, &self.deleted) {
            (Some(slug), _) if slug_shaped(slug) => {
                Some(Flash::done(format!("Created cluster {slug}.")))
            }
            (_, Some(slug)) if slug_shaped(slug) => {
                Some(Flash::done(format!("Deleted cluster {slug}.")))
            }
            _ => None,
        }
    }
}

async fn list(
    viewer: Viewer,
    fragment: Fragment,
    State(state): State<ConsoleState>,
    Query(done): Query<Done>,
) -> Result<Response, ConsoleError> {
    let body = render(&state, &viewer, done.flash().as_ref()).await?;
    Ok(layout::page(
        &viewer,
        fragment,
        Section::Clusters,
        "Clusters",
        body,
    ))
}

#[derive(Debug, Deserialize)]
struct CreateForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    name: String,
    /// Empty: the server derives one from the name (with a random suffix).
    #[serde(default)]
    slug: String,
}

async fn create(
    viewer: Viewer,
    State(state): State<ConsoleState>,
    headers: HeaderMap,
    Form(form): Form<CreateForm>,
) -> Result<Response, ConsoleError> {
    viewer.check_form(&headers, &form.csrf)?;
    let request = viewer.request(CreateClusterRequest {
        name: form.name.trim().to_string(),
        description: String::new(),
        slug: form.slug.trim().to_string(),
    });
    match state.workflows.create_cluster(request).await {
        Ok(cluster) => Ok(Redirect::to(&format!(
            "/clusters?created={}",
            urlencode(&cluster.into_inner().slug)
        ))
        .into_response()),
        Err(status) => failed(&state, &viewer, status).await,
    }
}

#[derive(Debug, Deserialize)]
struct DeleteForm {
    #[serde(default)]
    csrf: String,
}

async fn delete(
    viewer: Viewer,
    State(state): State<ConsoleState>,
    Path(slug): Path<String>,
    headers: HeaderMap,
    Form(form): Form<DeleteForm>,
) -> Result<Response, ConsoleError> {
    viewer.check_form(&headers, &form.csrf)?;
    let request = viewer.request(DeleteClusterRequest {
        cluster_slug: slug.clone(),
    });
    match state.workflows.delete_cluster(request).await {
        Ok(_) => {
            Ok(Redirect::to(&format!("/clusters?deleted={}", urlencode(&slug))).into_response())
        }
        Err(status) => failed(&state, &viewer, status).await,
    }
}

/// The clusters page again, with why the action failed, answered with the status the
/// refusal maps to (409 for a duplicate slug or an undeletable cluster, 403, 404, …).
async fn failed(
    state: &ConsoleState,
    viewer: &Viewer,
    status: tonic::Status,
) -> Result<Response, ConsoleError> {
    let error = ConsoleError::Status(status);
    let code: StatusCode = error.status();
    let flash = Flash {
        error: true,
        text: error.to_string(),
    };
    let body = render(state, viewer, Some(&flash)).await?;
    let page = layout::shell(Some((viewer, Section::Clusters)), "Clusters", body);
    Ok((code, page).into_response())
}

/// A cluster as listed: the releases deployed to it counted.
struct Row {
    cluster: crate::server::store::Cluster,
    deployed: usize,
}

async fn render(
    state: &ConsoleState,
    viewer: &Viewer,
    flash: Option<&Flash>,
) -> Result<Markup, ConsoleError> {
    viewer.principal.check(Action::ReadClusters)?;
    let mut rows = Vec::new();
    for cluster in state.store.list_clusters().await? {
        // A runner key sees the clusters it serves only, as in `ListClusters`.
        if !viewer.principal.may_serve(&cluster.slug) {
            continue;
        }
        let deployed = state.store.cluster_deployments(&cluster.slug).await?.len();
        rows.push(Row { cluster, deployed });
    }
    let manage = viewer.allows(Action::ManageClusters);
    Ok(html! {
        section.clusters {
            h1 { "Clusters" }
            (Flash::render(flash))
            @if manage {
                form.create-cluster method="post" action="/clusters" data-action="create-cluster" {
                    input type="hidden" name="csrf" value=(viewer.csrf);
                    label { "Name " input type="text" name="name" required maxlength="200"; }
                    label {
                        "Slug "
                        input type="text" name="slug" placeholder="derived from the name"
                            pattern="[a-z0-9]([a-z0-9-]*[a-z0-9])?" maxlength="100";
                    }
                    button.primary type="submit" { "Create cluster" }
                }
            }
            table.clusters {
                thead { tr { th { "Name" } th { "Slug" } th { "Deployed releases" } th { "Runners" } th {} } }
                tbody {
                    @for row in &rows {
                        @let slug = &row.cluster.slug;
                        tr.cluster data-slug=(slug) {
                            td.name { (row.cluster.name) }
                            td.slug { code { (slug) } }
                            td.deployed data-deployed=(row.deployed) { (row.deployed) }
                            td.runners {
                                a href={ "/runners?cluster=" (urlencode(slug)) } { "Runners" }
                            }
                            td.actions {
                                @if manage && row.cluster.deletable {
                                    form method="post"
                                        action={ "/clusters/" (urlencode(slug)) "/delete" }
                                        data-action="delete-cluster"
                                        data-confirm={ "Delete cluster " (row.cluster.name) " (" (slug) ")? "
                                            "Its " (row.deployed) " deployments are removed with it." } {
                                        input type="hidden" name="csrf" value=(viewer.csrf);
                                        button.danger type="submit" { "Delete" }
                                    }
                                } @else if !row.cluster.deletable {
                                    span.muted { "default" }
                                }
                            }
                        }
                    }
                }
            }
            @if rows.is_empty() {
                p.muted { "No clusters." }
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_slug_shaped_names_reach_the_flash() {
        let done = Done {
            created: Some("Your session expired, log in at evil.example".to_string()),
            deleted: None,
        };
        assert!(done.flash().is_none());
        let done = Done {
            created: Some("gpu-2".to_string()),
            deleted: None,
        };
        assert_eq!(
            done.flash().map(|flash| flash.text),
            Some("Created cluster gpu-2.".to_string())
        );
    }
}
