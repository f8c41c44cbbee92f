//! `tilebox.selfhosted.v1.RunnerService`: runner presence, for `tilebox runner list`.
//! Readable by admin and read-only keys only (`Action::ReadRunners`): the list names hosts
//! and addresses, which one runner key has no business learning of another's.

use tonic::{Request, Response, Status};

use super::store_status;
use crate::api::convert::timestamp_from_millis;
use crate::api::selfhosted_v1::runner_info::Kind;
use crate::api::selfhosted_v1::runner_service_server::RunnerService;
use crate::api::selfhosted_v1::{ListRunnersRequest, ListRunnersResponse, RunnerInfo};
use crate::api::workflows_v1::TaskIdentifier;
use crate::server::auth::{Action, authorize};
use crate::server::presence::Listed;
use crate::server::scheduler::Scheduler;
use crate::server::store::RunnerKind;

pub struct Runners {
    scheduler: Scheduler,
}

impl Runners {
    pub fn new(scheduler: Scheduler) -> Self {
        Self { scheduler }
    }
}

/// A listed runner as the wire has it.
pub fn runner_info(listed: &Listed) -> RunnerInfo {
    let seen = &listed.seen;
    RunnerInfo {
        id: seen.runner.clone(),
        kind: match seen.kind {
            RunnerKind::Tilebox => Kind::Tilebox,
            RunnerKind::Sdk => Kind::Sdk,
        } as i32,
        cluster_slug: seen.cluster.clone(),
        key_name: seen.key_name.clone(),
        hostname: seen.hostname.clone(),
        version: seen.version.clone(),
        slots: seen.slots,
        free_slots: seen.free_slots,
        identifiers: seen
            .identifiers
            .iter()
            .map(|(name, version)| TaskIdentifier {
                name: name.clone(),
                version: version.clone(),
            })
            .collect(),
        first_seen: Some(timestamp_from_millis(seen.first_seen_at)),
        last_seen: Some(timestamp_from_millis(seen.last_seen_at)),
        connected: listed.connected,
    }
}

#[tonic::async_trait]
impl RunnerService for Runners {
    async fn list_runners(
        &self,
        request: Request<ListRunnersRequest>,
    ) -> Result<Response<ListRunnersResponse>, Status> {
        authorize(&request, Action::ReadRunners)?;
        let request = request.into_inner();
        let store = self.scheduler.store();
        let cluster = if request.cluster_slug.is_empty() {
            None
        } else {
            // An unknown cluster is named as such, not answered with an empty list.
            store
                .get_cluster(&request.cluster_slug)
                .await
                .map_err(store_status)?;
            Some(request.cluster_slug.as_str())
        };
        let listed = self
            .scheduler
            .presence()
            .list(store.as_ref(), cluster, request.include_gone)
            .await
            .map_err(store_status)?;
        Ok(Response::new(ListRunnersResponse {
            runners: listed.iter().map(runner_info).collect(),
        }))
    }
}
