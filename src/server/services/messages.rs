//! Store records to wire messages.

use crate::api::convert::{duration, id, timestamp_from_millis};
use crate::api::workflows_v1 as wire;
use prost::Message;

use crate::server::store::{
    ClaimedTask, Cluster, ExecutionStats, Identifier, Job, Progress, Release, TaskSummary, Workflow,
};

pub fn cluster(cluster: Cluster) -> wire::Cluster {
    wire::Cluster {
        slug: cluster.slug,
        display_name: cluster.name,
        deletable: cluster.deletable,
        deployed_releases: Vec::new(),
        description: cluster.description,
    }
}

pub fn identifier(identifier: &Identifier) -> wire::TaskIdentifier {
    wire::TaskIdentifier {
        name: identifier.name.clone(),
        version: identifier.version.clone(),
    }
}

pub fn progress(progress: &[Progress]) -> Vec<wire::Progress> {
    progress
        .iter()
        .map(|entry| wire::Progress {
            label: entry.label.clone().unwrap_or_default(),
            total: entry.total,
            done: entry.done,
        })
        .collect()
}

fn execution_stats(stats: &ExecutionStats) -> wire::ExecutionStats {
    wire::ExecutionStats {
        first_task_started_at: stats.first_task_started_at.map(timestamp_from_millis),
        last_task_stopped_at: stats.last_task_stopped_at.map(timestamp_from_millis),
        compute_time: Some(duration(stats.compute_time)),
        elapsed_time: Some(duration(stats.elapsed_time)),
        parallelism: stats.parallelism,
        total_tasks: stats.total_tasks,
        tasks_by_state: stats
            .tasks_by_state
            .iter()
            .map(|(state, count)| wire::TaskStateCount {
                state: *state as i32,
                count: *count,
            })
            .collect(),
    }
}

pub fn job(job: &Job) -> wire::Job {
    let legacy_state = match job.state {
        wire::JobState::Unspecified => wire::LegacyJobState::Unspecified,
        wire::JobState::Submitted => wire::LegacyJobState::Queued,
        wire::JobState::Completed => wire::LegacyJobState::Completed,
        _ => wire::LegacyJobState::Started,
    };
    wire::Job {
        id: Some(id(job.id)),
        name: job.name.clone(),
        trace_parent: job.trace_parent.clone(),
        canceled: job.state == wire::JobState::Canceled,
        legacy_state: legacy_state as i32,
        submitted_at: Some(timestamp_from_millis(job.submitted_at)),
        started_at: job.stats.first_task_started_at.map(timestamp_from_millis),
        automation_id: None,
        progress: progress(&job.progress),
        state: job.state as i32,
        execution_stats: Some(execution_stats(&job.stats)),
    }
}

pub fn claimed_task(task: &ClaimedTask, recommended_wait: std::time::Duration) -> wire::Task {
    wire::Task {
        id: Some(id(task.id)),
        identifier: Some(identifier(&task.identifier)),
        state: wire::TaskState::Running as i32,
        input: Some(task.input.clone()),
        display: Some(task.display.clone()),
        job: Some(job(&task.job)),
        parent_id: task.parent_id.map(id),
        depends_on: task.depends_on.iter().copied().map(id).collect(),
        lease: Some(wire::TaskLease {
            lease: Some(duration(task.lease)),
            recommended_wait_until_next_extension: Some(duration(recommended_wait)),
        }),
        retry_count: task.retry_count,
    }
}

pub fn task_summary(task: &TaskSummary) -> wire::TaskSummary {
    wire::TaskSummary {
        id: Some(id(task.id)),
        parent_id: task.parent_id.map(id),
        display: task.display.clone(),
        state: task.state as i32,
        submitted_at: Some(timestamp_from_millis(task.submitted_at)),
        started_at: task.started_at.map(timestamp_from_millis),
        stopped_at: task.stopped_at.map(timestamp_from_millis),
        input: Some(task.input.clone()),
        retry_count: task.retry_count,
        max_retries: task.max_retries,
        has_children: task.has_children,
        cluster_slug: task.cluster.clone(),
        optional: task.optional,
        identifier: Some(identifier(&task.identifier)),
    }
}

pub fn workflow(workflow: Workflow, releases: Vec<wire::WorkflowRelease>) -> wire::Workflow {
    wire::Workflow {
        slug: workflow.slug,
        name: workflow.name,
        description: workflow.description,
        releases,
        summary: workflow.summary,
        presentation: None,
    }
}

/// A release on the wire; `clusters` are the clusters it is deployed to.
pub fn release(release: &Release, clusters: Vec<wire::Cluster>) -> wire::WorkflowRelease {
    wire::WorkflowRelease {
        id: Some(id(release.id)),
        artifact: Some(wire::Artifact {
            id: Some(id(release.artifact.id)),
            digest: release.artifact.digest.clone(),
        }),
        content: wire::ReleaseContent::decode(release.content.as_slice()).ok(),
        created_at: Some(timestamp_from_millis(release.created_at)),
        clusters,
    }
}
