//! Queries on PostgreSQL: jobs, tasks, counts.

use uuid::Uuid;

use super::Tx;
use crate::api::workflows_v1::JobState;
use crate::server::store::{Job, JobFilter, Page, Result, TaskSummary};

pub(super) fn job_by_uuid(_tx: &mut Tx<'_>, _id: Uuid, _now: i64) -> Result<Job> {
    unimplemented!("reads on PostgreSQL")
}

pub(super) fn query_jobs(
    _tx: &mut Tx<'_>,
    _filter: &JobFilter,
    _page: Page,
    _now: i64,
) -> Result<Vec<Job>> {
    unimplemented!("reads on PostgreSQL")
}

pub(super) fn list_tasks(
    _tx: &mut Tx<'_>,
    _job: Uuid,
    _parent: Option<Uuid>,
    _page: Page,
) -> Result<Vec<TaskSummary>> {
    unimplemented!("reads on PostgreSQL")
}

pub(super) fn job_state_counts(_tx: &mut Tx<'_>) -> Result<Vec<(JobState, u64)>> {
    unimplemented!("reads on PostgreSQL")
}
