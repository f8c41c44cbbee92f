//! `workflows.v1.JobService`.

use tonic::{Request, Response, Status};

use crate::server::auth::{Action, authorize};

use super::{
    messages, next_page, optional_uuid, page_of, required_uuid, scheduler_status, store_status,
};
use crate::api::convert::millis_from_timestamp;
use crate::api::tilebox_v1::SortDirection;
use crate::api::workflows_v1::job_service_server::JobService;
use crate::api::workflows_v1::{
    CancelJobRequest, CancelJobResponse, GetJobRequest, GetJobStateCountsRequest,
    GetJobStateCountsResponse, Job, JobState, JobStateCount, JobTaskPage, ListJobTasksRequest,
    ListJobTasksResponse, QueryJobsRequest, QueryJobsResponse, RetryJobRequest, RetryJobResponse,
    SubmitJobRequest,
};
use crate::server::scheduler::Scheduler;
use crate::server::store::{IdBounds, JobFilter, Page};

pub struct Jobs {
    scheduler: Scheduler,
}

impl Jobs {
    pub fn new(scheduler: Scheduler) -> Self {
        Self { scheduler }
    }
}

#[tonic::async_trait]
impl JobService for Jobs {
    async fn submit_job(
        &self,
        request: Request<SubmitJobRequest>,
    ) -> Result<Response<Job>, Status> {
        authorize(&request, Action::SubmitJob)?;
        let job = self
            .scheduler
            .submit_job(request.into_inner())
            .await
            .map_err(scheduler_status)?;
        Ok(Response::new(messages::job(&job)))
    }

    async fn get_job(&self, request: Request<GetJobRequest>) -> Result<Response<Job>, Status> {
        authorize(&request, Action::ReadJobs)?;
        let id = required_uuid(request.get_ref().job_id.as_ref(), "job_id")?;
        let job = self
            .scheduler
            .store()
            .get_job(id)
            .await
            .map_err(store_status)?;
        Ok(Response::new(messages::job(&job)))
    }

    async fn list_job_tasks(
        &self,
        request: Request<ListJobTasksRequest>,
    ) -> Result<Response<ListJobTasksResponse>, Status> {
        authorize(&request, Action::ReadJobs)?;
        let request = request.into_inner();
        let job = required_uuid(request.job_id.as_ref(), "job_id")?;
        let parent = optional_uuid(request.parent_task_id.as_ref(), "parent_task_id")?;
        let page = page_of(request.page.as_ref(), false)?;
        let store = self.scheduler.store();
        let tasks = store
            .list_tasks(job, parent, page)
            .await
            .map_err(store_status)?;
        let mut prefetched = Vec::new();
        let prefetch_limit = request
            .prefetch_children
            .map(|prefetch| prefetch.limit)
            .unwrap_or(0);
        if prefetch_limit > 0 {
            let child_page = Page {
                after: None,
                limit: (prefetch_limit as usize).min(1000),
                descending: false,
            };
            for task in tasks.iter().filter(|task| task.has_children) {
                let children = store
                    .list_tasks(job, Some(task.id), child_page)
                    .await
                    .map_err(store_status)?;
                prefetched.push(JobTaskPage {
                    parent_task_id: Some(crate::api::convert::id(task.id)),
                    next_page: next_page(
                        &child_page,
                        children.len(),
                        children.last().map(|child| child.id),
                    ),
                    tasks: children.iter().map(messages::task_summary).collect(),
                });
            }
        }
        Ok(Response::new(ListJobTasksResponse {
            page: Some(JobTaskPage {
                parent_task_id: request.parent_task_id,
                next_page: next_page(&page, tasks.len(), tasks.last().map(|task| task.id)),
                tasks: tasks.iter().map(messages::task_summary).collect(),
            }),
            prefetched_child_pages: prefetched,
        }))
    }

    async fn retry_job(
        &self,
        request: Request<RetryJobRequest>,
    ) -> Result<Response<RetryJobResponse>, Status> {
        authorize(&request, Action::ManageJobs)?;
        let id = required_uuid(request.get_ref().job_id.as_ref(), "job_id")?;
        let count = self
            .scheduler
            .retry_job(id)
            .await
            .map_err(scheduler_status)?;
        Ok(Response::new(RetryJobResponse {
            num_tasks_rescheduled: count,
        }))
    }

    async fn cancel_job(
        &self,
        request: Request<CancelJobRequest>,
    ) -> Result<Response<CancelJobResponse>, Status> {
        authorize(&request, Action::ManageJobs)?;
        let id = required_uuid(request.get_ref().job_id.as_ref(), "job_id")?;
        self.scheduler
            .cancel_job(id)
            .await
            .map_err(scheduler_status)?;
        Ok(Response::new(CancelJobResponse {}))
    }

    async fn query_jobs(
        &self,
        request: Request<QueryJobsRequest>,
    ) -> Result<Response<QueryJobsResponse>, Status> {
        authorize(&request, Action::ReadJobs)?;
        let request = request.into_inner();
        let descending = request.sort_direction == SortDirection::Descending as i32;
        let page = page_of(request.page.as_ref(), descending)?;
        let mut filter = JobFilter::default();
        if let Some(filters) = request.filters {
            let automations = filters
                .automation_ids
                .iter()
                .enumerate()
                .map(|(index, id)| {
                    required_uuid(Some(id), &format!("filters.automation_ids[{index}]"))
                })
                .collect::<Result<Vec<_>, _>>()?;
            if !automations.is_empty() {
                // This server has no automations: every job was submitted directly (it keeps
                // no `automation_id` of a submission), so no job was submitted by any of them.
                return Ok(Response::new(QueryJobsResponse {
                    jobs: Vec::new(),
                    next_page: None,
                }));
            }
            if let Some(interval) = filters.id_interval {
                filter.ids = id_bounds(&interval)?;
            }
            if filters.name.len() > 100 {
                return Err(Status::invalid_argument(format!(
                    "filters.name is {} characters; at most 100 are allowed",
                    filters.name.len()
                )));
            }
            filter.name_contains = Some(filters.name).filter(|name| !name.is_empty());
            filter.states = filters
                .states
                .iter()
                .map(|state| {
                    JobState::try_from(*state).map_err(|_| {
                        Status::invalid_argument(format!(
                            "filters.states: unknown job state {state}"
                        ))
                    })
                })
                .collect::<Result<_, _>>()?;
            filter.clusters = filters.cluster_slugs;
            if let Some(interval) = filters.time_interval {
                filter.submitted_from = interval.start_time.as_ref().map(|start| {
                    millis_from_timestamp(start).saturating_add(i64::from(interval.start_exclusive))
                });
                filter.submitted_to = interval.end_time.as_ref().map(|end| {
                    millis_from_timestamp(end).saturating_add(i64::from(interval.end_inclusive))
                });
            }
        }
        let jobs = self
            .scheduler
            .store()
            .query_jobs(filter, page)
            .await
            .map_err(store_status)?;
        Ok(Response::new(QueryJobsResponse {
            next_page: next_page(&page, jobs.len(), jobs.last().map(|job| job.id)),
            jobs: jobs.iter().map(messages::job).collect(),
        }))
    }

    async fn get_job_state_counts(
        &self,
        request: Request<GetJobStateCountsRequest>,
    ) -> Result<Response<GetJobStateCountsResponse>, Status> {
        authorize(&request, Action::ReadJobs)?;
        let counts = self
            .scheduler
            .store()
            .job_state_counts()
            .await
            .map_err(store_status)?;
        let total = counts.iter().map(|(_, count)| *count as i64).sum();
        Ok(Response::new(GetJobStateCountsResponse {
            state_counts: counts
                .into_iter()
                .map(|(state, count)| JobStateCount {
                    state: state as i32,
                    count,
                })
                .collect(),
            total_jobs: total,
        }))
    }
}

/// The bounds of an `IDInterval`: the start inclusive unless `start_exclusive`, the end
/// exclusive unless `end_inclusive` (as `TimeInterval`); a missing id leaves its end open.
fn id_bounds(interval: &crate::api::tilebox_v1::IdInterval) -> Result<IdBounds, Status> {
    use std::ops::Bound;
    let start = optional_uuid(interval.start_id.as_ref(), "filters.id_interval.start_id")?;
    let end = optional_uuid(interval.end_id.as_ref(), "filters.id_interval.end_id")?;
    Ok(IdBounds {
        start: match start {
            None => Bound::Unbounded,
            Some(id) if interval.start_exclusive => Bound::Excluded(id),
            Some(id) => Bound::Included(id),
        },
        end: match end {
            None => Bound::Unbounded,
            Some(id) if interval.end_inclusive => Bound::Included(id),
            Some(id) => Bound::Excluded(id),
        },
    })
}
