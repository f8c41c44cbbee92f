//! Reading a job and its whole task tree (every page of every level of `ListJobTasks`).

use std::collections::{HashMap, HashSet};

use uuid::Uuid;

use crate::api::convert::{self, InvalidId};
use crate::api::tilebox_v1::Pagination;
use crate::api::workflows_v1::{GetJobRequest, Job, JobState, ListJobTasksRequest, TaskSummary};
use crate::client::Client;

/// Whether a job in `state` is done: completed, failed or canceled.
pub(crate) fn is_finished(state: JobState) -> bool {
    matches!(
        state,
        JobState::Completed | JobState::Failed | JobState::Canceled
    )
}

pub(crate) async fn get_job(client: &mut Client, id: Uuid) -> anyhow::Result<Job> {
    let request = GetJobRequest {
        job_id: Some(convert::id(id)),
    };
    Ok(client
        .jobs
        .get_job(request)
        .await
        .map_err(|status| client.error("GetJob", status))?
        .into_inner())
}

/// A task with its children, as `job get` shows it.
#[derive(Debug)]
pub(crate) struct TaskNode {
    pub(crate) summary: TaskSummary,
    pub(crate) children: Vec<TaskNode>,
}

/// The job's whole task tree: the root tasks, then the children of every task that has some.
pub(crate) async fn fetch_task_tree(
    client: &mut Client,
    job_id: Uuid,
) -> anyhow::Result<Vec<TaskNode>> {
    Ok(fetch_task_tree_up_to(client, job_id, usize::MAX).await?.0)
}

/// The job's task tree, fetching at most about `limit` tasks (whole pages; roots first, then
/// children level by level); answers whether it holds every task.
pub(crate) async fn fetch_task_tree_up_to(
    client: &mut Client,
    job_id: Uuid,
    limit: usize,
) -> anyhow::Result<(Vec<TaskNode>, bool)> {
    let roots = list_job_tasks(client, job_id, None).await?;
    let mut fetched = roots.len();
    let mut children = HashMap::new();
    // Each task's children are fetched once, even if a broken server lists a task twice.
    let mut seen = HashSet::new();
    let mut parents = std::collections::VecDeque::new();
    queue_parents(&roots, &mut seen, &mut parents)?;
    while let Some(parent) = parents.pop_front() {
        if fetched >= limit {
            return Ok((assemble_tree(roots, &mut children)?, false));
        }
        let tasks = list_job_tasks(client, job_id, Some(parent)).await?;
        fetched += tasks.len();
        queue_parents(&tasks, &mut seen, &mut parents)?;
        children.insert(parent, tasks);
    }
    Ok((assemble_tree(roots, &mut children)?, true))
}

/// Adds the ids of not yet seen tasks that have children to `parents`.
pub(crate) fn queue_parents(
    tasks: &[TaskSummary],
    seen: &mut HashSet<Uuid>,
    parents: &mut std::collections::VecDeque<Uuid>,
) -> Result<(), InvalidId> {
    for task in tasks {
        if let Some(id) = convert::uuid_of(task.id.as_ref())? {
            if seen.insert(id) && task.has_children {
                parents.push_back(id);
            }
        }
    }
    Ok(())
}

/// Every page of the direct children of `parent` (the root tasks when `None`).
pub(crate) async fn list_job_tasks(
    client: &mut Client,
    job_id: Uuid,
    parent: Option<Uuid>,
) -> anyhow::Result<Vec<TaskSummary>> {
    let mut tasks = Vec::new();
    let mut page: Option<Pagination> = None;
    loop {
        let request = ListJobTasksRequest {
            job_id: Some(convert::id(job_id)),
            parent_task_id: parent.map(convert::id),
            page: page.clone(),
            prefetch_children: None,
        };
        let response = client
            .jobs
            .list_job_tasks(request)
            .await
            .map_err(|status| client.error("ListJobTasks", status))?
            .into_inner();
        let Some(result) = response.page else {
            break;
        };
        let empty = result.tasks.is_empty();
        tasks.extend(result.tasks);
        match result.next_page {
            Some(next)
                if !empty
                    && next
                        .starting_after
                        .as_ref()
                        .is_some_and(|id| !id.uuid.is_empty())
                    && page.as_ref() != Some(&next) =>
            {
                page = Some(next);
            }
            _ => break,
        }
    }
    Ok(tasks)
}

/// Hangs each task's children (taken out of `children`, so each list is used once) under it.
pub(crate) fn assemble_tree(
    tasks: Vec<TaskSummary>,
    children: &mut HashMap<Uuid, Vec<TaskSummary>>,
) -> Result<Vec<TaskNode>, InvalidId> {
    tasks
        .into_iter()
        .map(|summary| {
            let own = match convert::uuid_of(summary.id.as_ref())? {
                Some(id) => children.remove(&id).unwrap_or_default(),
                None => Vec::new(),
            };
            Ok(TaskNode {
                children: assemble_tree(own, children)?,
                summary,
            })
        })
        .collect()
}
