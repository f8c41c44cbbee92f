//! `workflows.v1.TaskService`: what runners call to claim tasks, report results and keep
//! their leases.

use tonic::{Request, Response, Status};

use super::limits::{ConnectionLimits, OpenCall};
use super::{caller, messages, required_uuid, scheduler_status};
use crate::api::convert::{duration, std_duration};
use crate::api::workflows_v1::task_service_server::TaskService;
use crate::api::workflows_v1::{
    IdlingResponse, NextTaskRequest, NextTaskResponse, TaskFailedRequest, TaskLease,
    TaskLeaseRequest, TaskStateResponse,
};
use crate::server::auth::{Action, Principal, principal};
use crate::server::presence::Contact;
use crate::server::scheduler::{NextTask, Scheduler};
use crate::server::store::RunnerKind;

pub struct Tasks {
    scheduler: Scheduler,
    limits: ConnectionLimits,
}

impl Tasks {
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

#[tonic::async_trait]
impl TaskService for Tasks {
    async fn next_task(
        &self,
        request: Request<NextTaskRequest>,
    ) -> Result<Response<NextTaskResponse>, Status> {
        let principal = principal(&request)?;
        if let Some(claim) = &request.get_ref().next_task_to_run {
            principal.check_cluster(Action::Claim, &claim.cluster_slug)?;
        }
        if let Some(computed) = &request.get_ref().computed_task {
            let task = required_uuid(computed.id.as_ref(), "computed_task.id")?;
            self.authorize_tasks(&principal, Action::Report, vec![task])
                .await?;
        }
        // A `NextTask` that asks for a task may wait for one: it holds one of the
        // connection's long-poll permits, taken before its computed task is applied, so a
        // refused call changes nothing. One that only reports answers at once and holds none.
        let _permit = if request.get_ref().next_task_to_run.is_some() {
            Some(
                self.limits
                    .acquire(request.remote_addr(), OpenCall::LongPoll)?,
            )
        } else {
            None
        };
        let claimant = caller(&request);
        // Presence: the SDK's runner runs one task at a time and says nothing of its host.
        let presence = self.scheduler.presence();
        let claims = match &request.get_ref().next_task_to_run {
            Some(claim) => {
                presence.touch(Contact {
                    runner: &claimant,
                    kind: RunnerKind::Sdk,
                    cluster: &claim.cluster_slug,
                    key_name: &principal.name,
                    hostname: "",
                    version: "",
                    slots: 1,
                    free_slots: 1,
                    identifiers: &claim.identifiers,
                });
                true
            }
            None => {
                presence.refresh(&claimant, None);
                false
            }
        };
        let subtask_clusters = super::subtask_clusters(&principal);
        let answer = self
            .scheduler
            .next_task(request.into_inner(), claimant.clone(), &subtask_clusters)
            .await
            .map_err(scheduler_status)?;
        if claims && matches!(answer, NextTask::Task(_)) {
            presence.refresh(&claimant, Some(0));
        }
        let response = match answer {
            NextTask::NotAsked => NextTaskResponse::default(),
            NextTask::Task(task) => NextTaskResponse {
                next_task: Some(messages::claimed_task(&task, self.scheduler.initial_wait())),
                idling: None,
            },
            NextTask::Idle(idle) => NextTaskResponse {
                next_task: None,
                idling: Some(IdlingResponse {
                    suggested_idling_duration: Some(duration(idle)),
                }),
            },
        };
        Ok(Response::new(response))
    }

    async fn task_failed(
        &self,
        request: Request<TaskFailedRequest>,
    ) -> Result<Response<TaskStateResponse>, Status> {
        let task = required_uuid(request.get_ref().task_id.as_ref(), "task_id")?;
        self.authorize_tasks(&*principal(&request)?, Action::Report, vec![task])
            .await?;
        let claimant = caller(&request);
        let state = self
            .scheduler
            .task_failed(request.into_inner(), claimant)
            .await
            .map_err(scheduler_status)?;
        Ok(Response::new(TaskStateResponse {
            state: state as i32,
        }))
    }

    async fn extend_task_lease(
        &self,
        request: Request<TaskLeaseRequest>,
    ) -> Result<Response<TaskLease>, Status> {
        let task = required_uuid(request.get_ref().task_id.as_ref(), "task_id")?;
        self.authorize_tasks(&*principal(&request)?, Action::ExtendLease, vec![task])
            .await?;
        // Fenced like every report: only the claimant extends (see `caller` for how the SDK's
        // separate lease-renewer process is recognised as its runner).
        let claimant = caller(&request);
        self.scheduler.presence().refresh_extension(&claimant);
        let request = request.into_inner();
        let task = required_uuid(request.task_id.as_ref(), "task_id")?;
        let requested = request
            .requested_lease
            .as_ref()
            .map(std_duration)
            .unwrap_or_default();
        let granted = self
            .scheduler
            .extend_lease(task, requested, claimant)
            .await
            .map_err(scheduler_status)?;
        let lease = match granted {
            Some((lease, wait)) => TaskLease {
                lease: Some(duration(lease)),
                recommended_wait_until_next_extension: Some(duration(wait)),
            },
            None => TaskLease {
                lease: Some(duration(std::time::Duration::ZERO)),
                recommended_wait_until_next_extension: Some(duration(std::time::Duration::ZERO)),
            },
        };
        Ok(Response::new(lease))
    }
}
