//! The gRPC services of the Tilebox workflows API, thin adapters from wire messages to the
//! scheduler and the store.
//!
//! Layout:
//! - `mod.rs`: error to status mapping, the caller's identity, pagination
//! - `jobs.rs`: `JobService`
//! - `tasks.rs`: `TaskService` (what the official SDK's runners call)
//! - `work.rs`: our `WorkService` (the batched work protocol of our runner)
//! - `runners.rs`: our `RunnerService` (runner presence, for `runner list`)
//! - `workflows.rs`: `WorkflowsService` (clusters, workflows, releases, deployments)
//! - `artifacts.rs`: our `ArtifactService` (streamed upload and download by sha256)
//! - `deployments.rs`: our `DeploymentService` (a cluster's deployments, pushed)
//! - `telemetry.rs`: OTLP logs and spans in (gRPC and HTTP), `TelemetryQueryService` out
//! - `otlp_grpc.rs`: the OTLP collector services over gRPC, counted before decoded
//! - `messages.rs`: store records to wire messages
//! - `limits.rs`: per-connection limits on long polls and watches

pub mod artifacts;
pub mod deployments;
pub mod jobs;
pub mod limits;
mod messages;
pub mod otlp_grpc;
pub mod runners;
pub mod tasks;
pub mod telemetry;
pub mod work;
pub mod workflows;

use tonic::{Code, Status};
use uuid::Uuid;

use crate::api::tilebox_v1::Pagination;
use crate::server::store::{self, Page};
use crate::server::{auth, scheduler};

pub use crate::api::RUNNER_ID_HEADER;
/// Items per page when the request does not say.
const DEFAULT_PAGE_SIZE: usize = 100;
/// Largest page served.
const MAX_PAGE_SIZE: usize = 1000;

/// The status a store error answers with. Faults of the server itself are `INTERNAL`, which
/// official runners retry; everything else ends in the caller's hands.
pub fn store_status(error: store::Error) -> Status {
    let code = match &error {
        store::Error::ClusterNotFound { .. }
        | store::Error::JobNotFound { .. }
        | store::Error::TaskNotFound { .. }
        | store::Error::WorkflowNotFound { .. }
        | store::Error::ReleaseNotFound { .. }
        | store::Error::ArtifactNotFound(_) => Code::NotFound,
        store::Error::Unstorable { .. } => Code::InvalidArgument,
        store::Error::ClusterExists { .. } | store::Error::WorkflowExists { .. } => {
            Code::AlreadyExists
        }
        store::Error::ClusterNotDeletable { .. } | store::Error::Conflict(_) => {
            Code::FailedPrecondition
        }
        // The operator's to fix; clients retry it, and writes resume when space returns.
        store::Error::StorageFull { .. } => Code::ResourceExhausted,
        // Official clients retry UNAVAILABLE with backoff.
        store::Error::Unavailable { .. } => Code::Unavailable,
        store::Error::Corrupt(_)
        | store::Error::Database { .. }
        | store::Error::Open { .. }
        | store::Error::SchemaTooNew { .. }
        | store::Error::DataDirectory { .. }
        | store::Error::Closed => Code::Internal,
    };
    if matches!(code, Code::Internal | Code::ResourceExhausted) {
        tracing::error!(error = %error, source = ?std::error::Error::source(&error), "store failure");
    }
    Status::new(code, error.to_string())
}

/// The status a scheduler error answers with.
pub fn scheduler_status(error: scheduler::Error) -> Status {
    match error {
        scheduler::Error::Submission(error) => Status::invalid_argument(error.to_string()),
        scheduler::Error::InvalidRequest(message) => Status::invalid_argument(message),
        scheduler::Error::Store(error) => store_status(error),
    }
}

/// `PERMISSION_DENIED` unless `principal` may perform `action` on every one of `tasks`
/// (reports and lease extensions): a runner key only on tasks of its clusters. Unknown tasks
/// pass here and are answered by the scheduler as always.
pub async fn authorize_tasks(
    principal: &auth::Principal,
    store: &dyn store::Store,
    action: auth::Action,
    tasks: Vec<Uuid>,
) -> Result<(), Status> {
    principal.check(action)?;
    if principal.scope != crate::server::keys::Scope::Runner
        || principal.may_serve_every_cluster()
        || tasks.is_empty()
    {
        return Ok(());
    }
    let clusters = store.task_clusters(tasks).await.map_err(store_status)?;
    for cluster in clusters.iter().flatten() {
        principal.check_cluster(action, cluster)?;
    }
    Ok(())
}

/// The clusters `principal` may put subtasks on: a runner key only its own, so it cannot reach
/// another cluster's runners through the subtasks of a task it ran.
pub fn subtask_clusters(principal: &auth::Principal) -> scheduler::SubtaskClusters {
    if principal.may_serve_every_cluster() {
        scheduler::SubtaskClusters::Any
    } else {
        scheduler::SubtaskClusters::Only {
            key: principal.name.clone(),
            clusters: principal.clusters.clone(),
        }
    }
}

/// Who is calling, as the claimant a task is fenced to: only its claimant may report it or
/// extend its lease, from the first claim on (the store's `is_claimant` compares them).
///
/// - Our runner sends the `tilebox-runner-id` header on every call: `runner:<key>/<id>`,
///   strict per runner process and bound to the key it calls with.
/// - The official SDK sends no runner identity: its lease renewer is a separate process with
///   its own connection, its `tilebox-client` metadata is the same for every SDK on a host
///   (name, versions, OS), and `Client(client_id=…)` is never sent. So the claimant is the
///   peer and the name of its API key, `host:<key name>@<ip>:<port>`, and the store takes
///   the same key from the same IP for the same runner (the renewer, a reconnect): callers
///   on other hosts, or with another key, are fenced off from the first claim. The key's
///   name is no secret (the keys file and `keys list` show it).
///
/// Limit: SDK runners on one host (or behind one NAT address) with the same key are told
/// apart only by their connection, and only once a task was fenced by a lost lease or a
/// hand-back.
pub fn caller<T>(request: &tonic::Request<T>) -> String {
    let key = request
        .extensions()
        .get::<std::sync::Arc<auth::Principal>>()
        .map_or("", |principal| principal.name.as_str());
    if let Some(id) = request
        .metadata()
        .get(RUNNER_ID_HEADER)
        .and_then(|value| value.to_str().ok())
        && !id.is_empty()
    {
        // Bound to the key: a runner id is no secret (it names a runner in its spans), so
        // another key's holder who learns it must not report as that runner.
        return format!("runner:{key}/{id}");
    }
    match request.remote_addr() {
        Some(address) => format!(
            "host:{key}@{}",
            std::net::SocketAddr::new(address.ip().to_canonical(), address.port())
        ),
        None => "unknown".to_string(),
    }
}

/// A required id field, with a message naming the field.
pub fn required_uuid(id: Option<&crate::api::tilebox_v1::Id>, field: &str) -> Result<Uuid, Status> {
    crate::api::convert::uuid_of(id)
        .map_err(|error| Status::invalid_argument(format!("{field}: {error}")))?
        .ok_or_else(|| Status::invalid_argument(format!("{field} is required")))
}

/// An optional id field.
pub fn optional_uuid(
    id: Option<&crate::api::tilebox_v1::Id>,
    field: &str,
) -> Result<Option<Uuid>, Status> {
    crate::api::convert::uuid_of(id)
        .map_err(|error| Status::invalid_argument(format!("{field}: {error}")))
}

/// The page a request asks for.
pub fn page_of(pagination: Option<&Pagination>, descending: bool) -> Result<Page, Status> {
    let limit = match pagination.and_then(|page| page.limit) {
        None => DEFAULT_PAGE_SIZE,
        Some(limit) if limit <= 0 => DEFAULT_PAGE_SIZE,
        Some(limit) => (limit as usize).min(MAX_PAGE_SIZE),
    };
    let after = optional_uuid(
        pagination.and_then(|page| page.starting_after.as_ref()),
        "page.starting_after",
    )?;
    Ok(Page {
        after,
        limit,
        descending,
    })
}

/// The next page marker: set only when the page came back full.
pub fn next_page(page: &Page, count: usize, last: Option<Uuid>) -> Option<Pagination> {
    match last {
        Some(last) if count >= page.limit => Some(Pagination {
            limit: Some(page.limit as i64),
            starting_after: Some(crate::api::convert::id(last)),
        }),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::server::keys::Scope;

    fn request(key: Option<&str>, runner_id: Option<&str>) -> tonic::Request<()> {
        let mut request = tonic::Request::new(());
        if let Some(id) = runner_id {
            request
                .metadata_mut()
                .insert(RUNNER_ID_HEADER, id.parse().expect("header"));
        }
        if let Some(name) = key {
            request.extensions_mut().insert(Arc::new(auth::Principal {
                name: name.to_string(),
                scope: Scope::Runner,
                clusters: vec!["cpu".into()],
            }));
        }
        request
    }

    #[test]
    fn a_runner_id_is_bound_to_the_key_it_calls_with() {
        let fleet = caller(&request(Some("cpu-fleet"), Some("r-1")));
        assert_eq!(fleet, "runner:cpu-fleet/r-1");
        assert_ne!(
            caller(&request(Some("other-fleet"), Some("r-1"))),
            fleet,
            "the same runner id under another key is another claimant"
        );
        assert_eq!(caller(&request(None, Some("r-1"))), "runner:/r-1");
        // Without a runner id and without a peer address (not over TCP): nobody's.
        assert_eq!(caller(&request(Some("cpu-fleet"), None)), "unknown");
    }
}
