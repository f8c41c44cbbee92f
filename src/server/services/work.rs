//! `tilebox.selfhosted.v1.WorkService`: the batched work protocol our runner speaks (one
//! call reports finished tasks and claims up to the free capacity; one call extends every
//! running task's lease). The reporter is the `tilebox-runner-id` header, or the peer.

use tonic::{Request, Response, Status};

use super::limits::{ConnectionLimits, OpenCall};
use super::{caller, messages, required_uuid, scheduler_status};
use crate::api::convert::{duration, std_duration, uuid_of};
use crate::api::selfhosted_v1::report_result::Outcome;
use crate::api::selfhosted_v1::work_report::Report;
use crate::api::selfhosted_v1::work_service_server::WorkService;
use crate::api::selfhosted_v1::{
    ExtendLeasesRequest, ExtendLeasesResponse, ReportResult, WorkRequest, WorkResponse,
};
use crate::api::workflows_v1::{TaskIdentifier, TaskLease, TaskState};
use crate::server::auth::{Action, Principal, principal};
use crate::server::presence::Contact;
use crate::server::scheduler::{ItemResult, Scheduler, may_wait};
use crate::server::store::RunnerKind;

pub struct Work {
    scheduler: Scheduler,
    limits: ConnectionLimits,
}

impl Work {
    /// A runner this server does not know (it restarted, or the runner's calls moved to
    /// another replica) whose slots are all busy only extends leases, maybe for hours: once
    /// an extension is granted (so it holds those tasks), it is recorded with what the
    /// extension tells (its cluster, from the tasks; its busy slots), until its next claim
    /// says the rest.
    async fn remember_busy_runner(
        &self,
        claimant: &str,
        key_name: &str,
        leases: &[(uuid::Uuid, std::time::Duration)],
        granted: &[Option<(std::time::Duration, std::time::Duration)>],
    ) {
        let held: Vec<uuid::Uuid> = leases
            .iter()
            .zip(granted)
            .filter(|(_, granted)| granted.is_some())
            .map(|((task, _), _)| *task)
            .collect();
        let Some(first) = held.first() else {
            return;
        };
        let store = self.scheduler.store();
        let Ok(clusters) = store.task_clusters(vec![*first]).await else {
            return;
        };
        let Some(Some(cluster)) = clusters.into_iter().next() else {
            return;
        };
        let busy = u32::try_from(held.len()).unwrap_or(u32::MAX);
        // What another replica, or this server before its restart, last wrote of it.
        let since = crate::api::convert::now_millis()
            - i64::try_from(crate::server::presence::FORGET_AFTER.as_millis()).unwrap_or(0);
        let stored = store
            .list_runners(Some(cluster.clone()), since)
            .await
            .ok()
            .and_then(|runners| runners.into_iter().find(|runner| runner.runner == claimant));
        let identifiers: Vec<TaskIdentifier> = stored
            .as_ref()
            .map(|runner| {
                runner
                    .identifiers
                    .iter()
                    .map(|(name, version)| TaskIdentifier {
                        name: name.clone(),
                        version: version.clone(),
                    })
                    .collect()
            })
            .unwrap_or_default();
        self.scheduler.presence().touch(Contact {
            runner: claimant,
            kind: RunnerKind::Tilebox,
            cluster: &cluster,
            key_name,
            hostname: stored
                .as_ref()
                .map_or("", |runner| runner.hostname.as_str()),
            version: stored.as_ref().map_or("", |runner| runner.version.as_str()),
            slots: stored
                .as_ref()
                .map_or(busy, |runner| runner.slots.max(busy)),
            free_slots: 0,
            identifiers: &identifiers,
        });
    }

    pub fn new(scheduler: Scheduler, limits: ConnectionLimits) -> Self {
        Self { scheduler, limits }
    }

    async fn authorize_tasks(
        &self,
        principal: &Principal,
        action: Action,
        tasks: Vec<uuid::Uuid>,
    ) -> Result<(), Status> {
        super::authorize_tasks(principal, self.scheduler.store().as_ref(), action, tasks).await
    }
}

fn report_result(result: ItemResult) -> ReportResult {
    let (outcome, state, message) = match result {
        ItemResult::Applied { state, note } => (Outcome::Applied, state, note.unwrap_or_default()),
        ItemResult::Stale(state) => (
            Outcome::Stale,
            state,
            "the task is no longer this runner's attempt (its lease was lost)".to_string(),
        ),
        ItemResult::Refused(reason) => (Outcome::Refused, TaskState::Unspecified, reason),
    };
    ReportResult {
        outcome: outcome as i32,
        state: state as i32,
        message,
    }
}

#[tonic::async_trait]
impl WorkService for Work {
    async fn work(&self, request: Request<WorkRequest>) -> Result<Response<WorkResponse>, Status> {
        let principal = principal(&request)?;
        let work = request.get_ref();
        if work.capacity > 0 || work.prefetch > 0 {
            principal.check_cluster(Action::Claim, &work.cluster_slug)?;
        }
        if !work.reports.is_empty() {
            let tasks = work
                .reports
                .iter()
                .filter_map(|report| {
                    let id = match report.report.as_ref()? {
                        Report::Computed(computed) => computed.id.as_ref(),
                        Report::Failed(failed) => failed.task_id.as_ref(),
                        Report::HandedBack(handed_back) => handed_back.task_id.as_ref(),
                    };
                    uuid_of(id).ok().flatten()
                })
                .collect();
            self.authorize_tasks(&principal, Action::Report, tasks)
                .await?;
        }
        // Only a call that may wait for work holds one of the connection's long-poll
        // permits; one that only reports (our runner sends its results that way while its
        // claim waits) or does not ask to wait answers at once and is never refused for it.
        // The permit is taken before anything of the call is applied: a refused call changes
        // nothing, and our runner sends the same reports again (RESOURCE_EXHAUSTED is
        // retryable in `client::runner`). Our runner has at most one waiting `Work` call in
        // flight per connection (`runner::work`), so a limit of one or more never refuses it.
        let _permit = if may_wait(request.get_ref()) {
            Some(
                self.limits
                    .acquire(request.remote_addr(), OpenCall::LongPoll)?,
            )
        } else {
            None
        };
        let claimant = caller(&request);
        // Presence: a call that claims says everything about the runner; one that only
        // reports moves its last contact.
        let presence = self.scheduler.presence();
        let claims = work.capacity > 0 || work.prefetch > 0;
        if work.stopping {
            presence.stop(&claimant);
        } else if claims {
            presence.touch(Contact {
                runner: &claimant,
                kind: RunnerKind::Tilebox,
                cluster: &work.cluster_slug,
                key_name: &principal.name,
                hostname: &work.hostname,
                version: &work.version,
                slots: work.slots.max(work.capacity),
                free_slots: work.capacity,
                identifiers: &work.identifiers,
            });
        } else {
            presence.refresh(&claimant, None);
        }
        let claims = claims && !work.stopping;
        let capacity = work.capacity;
        let subtask_clusters = super::subtask_clusters(&principal);
        let answer = self
            .scheduler
            .work(request.into_inner(), claimant.clone(), &subtask_clusters)
            .await
            .map_err(scheduler_status)?;
        if claims {
            let claimed = answer.tasks.len().min(u32::MAX as usize) as u32;
            presence.refresh(&claimant, Some(capacity.saturating_sub(claimed)));
        }
        let wait = self.scheduler.initial_wait();
        Ok(Response::new(WorkResponse {
            results: answer.results.into_iter().map(report_result).collect(),
            tasks: answer
                .tasks
                .iter()
                .map(|task| messages::claimed_task(task, wait))
                .collect(),
            suggested_idling: answer.idle.map(duration),
            claim_error: answer.claim_error.unwrap_or_default(),
        }))
    }

    async fn extend_leases(
        &self,
        request: Request<ExtendLeasesRequest>,
    ) -> Result<Response<ExtendLeasesResponse>, Status> {
        let tasks = request
            .get_ref()
            .leases
            .iter()
            .filter_map(|lease| uuid_of(lease.task_id.as_ref()).ok().flatten())
            .collect();
        self.authorize_tasks(&*principal(&request)?, Action::ExtendLease, tasks)
            .await?;
        let claimant = caller(&request);
        let known = self.scheduler.presence().refresh(&claimant, None);
        let key_name = principal(&request)?.name.clone();
        let leases = request
            .into_inner()
            .leases
            .iter()
            .enumerate()
            .map(|(index, lease)| {
                let task =
                    required_uuid(lease.task_id.as_ref(), &format!("leases[{index}].task_id"))?;
                let requested = lease
                    .requested_lease
                    .as_ref()
                    .map(std_duration)
                    .unwrap_or_default();
                Ok((task, requested))
            })
            .collect::<Result<Vec<_>, Status>>()?;
        let granted = self
            .scheduler
            .extend_leases(leases.clone(), claimant.clone())
            .await
            .map_err(scheduler_status)?;
        if !known {
            self.remember_busy_runner(&claimant, &key_name, &leases, &granted)
                .await;
        }
        let zero = || duration(std::time::Duration::ZERO);
        Ok(Response::new(ExtendLeasesResponse {
            leases: granted
                .into_iter()
                .map(|granted| match granted {
                    Some((lease, wait)) => TaskLease {
                        lease: Some(duration(lease)),
                        recommended_wait_until_next_extension: Some(duration(wait)),
                    },
                    None => TaskLease {
                        lease: Some(zero()),
                        recommended_wait_until_next_extension: Some(zero()),
                    },
                })
                .collect(),
        }))
    }
}
