//! Queries on PostgreSQL: jobs, tasks, counts. Each runs in one read-only snapshot; a job's
//! progress and statistics come from its counters (`counters.rs`), never from a pass over
//! its tasks.

use std::time::Duration;

use postgres::Row;
use postgres::types::ToSql;
use uuid::Uuid;

use super::{Tx, pg};
use crate::api::workflows_v1::{JobState, TaskState};
use crate::server::store::{
    Error, ExecutionStats, Identifier, Job, JobFilter, Page, Progress, Result, TaskSummary,
};

const JOB_COLUMNS: &str = "job, uuid, name, trace_parent, state, submitted_at, total_tasks, \
     first_started_at, compute_ms, running_started_sum";

struct JobRow {
    row: i64,
    uuid: Uuid,
    name: String,
    trace_parent: String,
    state: i64,
    submitted_at: i64,
    total_tasks: i64,
    first_started_at: Option<i64>,
    compute_ms: i64,
    running_started_sum: i64,
}

fn map_job_row(row: &Row) -> JobRow {
    JobRow {
        row: row.get(0),
        uuid: row.get(1),
        name: row.get(2),
        trace_parent: row.get(3),
        state: row.get(4),
        submitted_at: row.get(5),
        total_tasks: row.get(6),
        first_started_at: row.get(7),
        compute_ms: row.get(8),
        running_started_sum: row.get(9),
    }
}

/// A job with its progress and statistics.
pub(super) fn job_by_uuid(tx: &mut Tx<'_>, id: Uuid, now: i64) -> Result<Job> {
    let row = tx
        .query_opt(
            &format!("SELECT {JOB_COLUMNS} FROM jobs WHERE uuid = $1"),
            &[&id],
        )
        .map_err(pg("get job"))?
        .ok_or(Error::JobNotFound { id })?;
    complete_job(tx, map_job_row(&row), now)
}

fn complete_job(tx: &mut Tx<'_>, row: JobRow, now: i64) -> Result<Job> {
    let state = JobState::try_from(row.state as i32).unwrap_or(JobState::Unspecified);
    let progress = tx
        .query(
            "SELECT label, total, done FROM job_progress WHERE job = $1 ORDER BY first",
            &[&row.row],
        )
        .map_err(pg("job progress"))?
        .iter()
        .map(|row| Progress {
            label: row.get(0),
            total: row.get::<_, i64>(1).max(0) as u64,
            done: row.get::<_, i64>(2).max(0) as u64,
        })
        .collect();
    let stats = job_stats(tx, &row, state, now)?;
    Ok(Job {
        id: row.uuid,
        name: row.name,
        trace_parent: row.trace_parent,
        state,
        submitted_at: row.submitted_at,
        progress,
        stats,
    })
}

fn job_stats(tx: &mut Tx<'_>, job: &JobRow, state: JobState, now: i64) -> Result<ExecutionStats> {
    let counts: Vec<(i64, i64)> = tx
        .query(
            "SELECT state, count FROM job_task_states WHERE job = $1 AND count > 0 ORDER BY state",
            &[&job.row],
        )
        .map_err(pg("job statistics"))?
        .iter()
        .map(|row| (row.get(0), row.get(1)))
        .collect();
    let running = counts
        .iter()
        .find(|(task_state, _)| *task_state == TaskState::Running as i64)
        .map_or(0, |(_, count)| *count);
    let tasks_by_state = counts
        .into_iter()
        .map(|(task_state, count)| {
            (
                TaskState::try_from(task_state as i32).unwrap_or(TaskState::Unspecified),
                count as u64,
            )
        })
        .collect();
    // Not a counter: claiming a task clears its `stopped_at`, so this can move back. One
    // probe at the end of the job's range of `tasks_stopped`.
    let last_stopped: Option<i64> = tx
        .query_one(
            "SELECT MAX(stopped_at) FROM tasks WHERE job = $1 AND stopped_at IS NOT NULL",
            &[&job.row],
        )
        .map_err(pg("job statistics"))?
        .get(0);
    // Each running attempt has computed `now - attempt_started_at` so far.
    let running_ms = running * now - job.running_started_sum;
    let compute_ms = job.compute_ms + running_ms.max(0);
    let ended = matches!(
        state,
        JobState::Completed | JobState::Failed | JobState::Canceled
    );
    let end = if ended || running == 0 {
        last_stopped
    } else {
        Some(now)
    };
    let elapsed_ms = match (job.first_started_at, end) {
        (Some(start), Some(end)) => (end - start).max(0),
        _ => 0,
    };
    let parallelism = if elapsed_ms > 0 {
        compute_ms as f64 / elapsed_ms as f64
    } else {
        0.0
    };
    Ok(ExecutionStats {
        first_task_started_at: job.first_started_at,
        last_task_stopped_at: last_stopped,
        compute_time: Duration::from_millis(compute_ms.max(0) as u64),
        elapsed_time: Duration::from_millis(elapsed_ms as u64),
        parallelism,
        total_tasks: job.total_tasks.max(0) as u64,
        tasks_by_state,
    })
}

/// Jobs matching `filter`, paged by job row (in submission order).
pub(super) fn query_jobs(
    tx: &mut Tx<'_>,
    filter: &JobFilter,
    page: Page,
    now: i64,
) -> Result<Vec<Job>> {
    let mut sql = format!("SELECT {JOB_COLUMNS} FROM jobs WHERE true");
    let mut values: Vec<Box<dyn ToSql + Sync>> = Vec::new();
    let mut push = |sql: &mut String, clause: &str, value: Box<dyn ToSql + Sync>| {
        values.push(value);
        sql.push_str(&clause.replace('?', &format!("${}", values.len())));
    };
    if let Some(after) = page.after {
        let after_row: Option<i64> = tx
            .query_opt("SELECT job FROM jobs WHERE uuid = $1", &[&after])
            .map_err(pg("query jobs"))?
            .map(|row| row.get(0));
        if let Some(after_row) = after_row {
            let clause = if page.descending {
                " AND job < ?"
            } else {
                " AND job > ?"
            };
            push(&mut sql, clause, Box::new(after_row));
        }
    }
    if !filter.states.is_empty() {
        let states: Vec<i64> = filter.states.iter().map(|state| *state as i64).collect();
        push(&mut sql, " AND state = ANY(?)", Box::new(states));
    }
    if let Some(name) = &filter.name_contains {
        push(
            &mut sql,
            " AND strpos(lower(name), lower(?)) > 0",
            Box::new(name.clone()),
        );
    }
    if let Some(from) = filter.submitted_from {
        push(&mut sql, " AND submitted_at >= ?", Box::new(from));
    }
    if let Some(to) = filter.submitted_to {
        push(&mut sql, " AND submitted_at < ?", Box::new(to));
    }
    {
        use std::ops::Bound;
        // PostgreSQL orders uuids by their bytes, as SQLite orders the blobs it stores.
        for (bound, inclusive, exclusive) in [
            (filter.ids.start, " AND uuid >= ?", " AND uuid > ?"),
            (filter.ids.end, " AND uuid <= ?", " AND uuid < ?"),
        ] {
            match bound {
                Bound::Included(id) => push(&mut sql, inclusive, Box::new(id)),
                Bound::Excluded(id) => push(&mut sql, exclusive, Box::new(id)),
                Bound::Unbounded => {}
            }
        }
    }
    if !filter.clusters.is_empty() {
        push(
            &mut sql,
            " AND EXISTS (SELECT 1 FROM job_clusters c WHERE c.job = jobs.job AND c.cluster = ANY(?))",
            Box::new(filter.clusters.clone()),
        );
    }
    sql.push_str(if page.descending {
        " ORDER BY job DESC"
    } else {
        " ORDER BY job"
    });
    push(&mut sql, " LIMIT ?", Box::new(page.limit as i64));
    let params: Vec<&(dyn ToSql + Sync)> = values.iter().map(|value| value.as_ref()).collect();
    // The filters vary from call to call: not one of the connection's cached statements.
    let rows = tx
        .transaction
        .query(sql.as_str(), &params)
        .map_err(pg("query jobs"))?;
    rows.iter()
        .map(|row| complete_job(tx, map_job_row(row), now))
        .collect()
}

/// The row of job `job`, or `JobNotFound`.
fn job_row_of(tx: &mut Tx<'_>, job: Uuid, operation: &'static str) -> Result<i64> {
    Ok(tx
        .query_opt("SELECT job FROM jobs WHERE uuid = $1", &[&job])
        .map_err(pg(operation))?
        .ok_or(Error::JobNotFound { id: job })?
        .get(0))
}

/// Direct children of `parent` (root tasks when `None`) in submission order.
pub(super) fn list_tasks(
    tx: &mut Tx<'_>,
    job: Uuid,
    parent: Option<Uuid>,
    page: Page,
) -> Result<Vec<TaskSummary>> {
    let job_row = job_row_of(tx, job, "list tasks")?;
    let parent_row: Option<i64> = match parent {
        None => None,
        Some(parent) => Some(
            tx.query_opt(
                "SELECT task FROM tasks WHERE uuid = $1 AND job = $2",
                &[&parent, &job_row],
            )
            .map_err(pg("list tasks"))?
            .ok_or(Error::TaskNotFound { id: parent })?
            .get(0),
        ),
    };
    let after_row: i64 = match page.after {
        None => 0,
        Some(after) => tx
            .query_opt("SELECT task FROM tasks WHERE uuid = $1", &[&after])
            .map_err(pg("list tasks"))?
            .map_or(0, |row| row.get(0)),
    };
    const COLUMNS: &str = TASK_SUMMARY_COLUMNS;
    let limit = page.limit as i64;
    // Two statements, so each probes `tasks_by_parent` (`IS NOT DISTINCT FROM` would not).
    let rows = match parent_row {
        None => tx.query(
            &format!(
                "{COLUMNS} WHERE t.job = $1 AND t.parent IS NULL AND t.task > $2 ORDER BY t.task LIMIT $3"
            ),
            &[&job_row, &after_row, &limit],
        ),
        Some(parent_row) => tx.query(
            &format!(
                "{COLUMNS} WHERE t.job = $1 AND t.parent = $2 AND t.task > $3 ORDER BY t.task LIMIT $4"
            ),
            &[&job_row, &parent_row, &after_row, &limit],
        ),
    }
    .map_err(pg("list tasks"))?;
    Ok(rows.iter().map(task_summary).collect())
}

/// The tasks of `job` among `ids`, in the order of `ids`, each once; ids of other jobs'
/// tasks, or of none, are left out.
pub(super) fn get_tasks(tx: &mut Tx<'_>, job: Uuid, ids: &[Uuid]) -> Result<Vec<TaskSummary>> {
    let job_row = job_row_of(tx, job, "get tasks")?;
    let rows = tx
        .query(
            &format!("{TASK_SUMMARY_COLUMNS} WHERE t.uuid = ANY($1) AND t.job = $2"),
            &[&ids, &job_row],
        )
        .map_err(pg("get tasks"))?;
    let mut found: std::collections::HashMap<Uuid, TaskSummary> = rows
        .iter()
        .map(|row| {
            let task = task_summary(row);
            (task.id, task)
        })
        .collect();
    Ok(ids.iter().filter_map(|id| found.remove(id)).collect())
}

/// The columns [`task_summary`] reads, from `tasks t` with its parent `p`.
const TASK_SUMMARY_COLUMNS: &str =
    "SELECT t.uuid, p.uuid, t.display, t.state, t.name, t.version, t.major, t.minor,
            t.submitted_at, t.started_at, t.stopped_at, t.input, t.retry_count,
            t.max_retries, t.has_children, t.cluster, t.optional, t.claimant
     FROM tasks t LEFT JOIN tasks p ON p.task = t.parent";

fn task_summary(row: &Row) -> TaskSummary {
    TaskSummary {
        id: row.get(0),
        parent_id: row.get(1),
        display: row.get(2),
        state: TaskState::try_from(row.get::<_, i64>(3) as i32).unwrap_or(TaskState::Unspecified),
        identifier: Identifier {
            name: row.get(4),
            version: row.get(5),
            major: row.get::<_, i64>(6) as u64,
            minor: row.get::<_, i64>(7) as u64,
        },
        submitted_at: row.get(8),
        started_at: row.get(9),
        stopped_at: row.get(10),
        input: row.get(11),
        retry_count: row.get(12),
        max_retries: row.get(13),
        has_children: row.get(14),
        cluster: row.get(15),
        optional: row.get(16),
        claimant: row.get(17),
    }
}

/// Counts of jobs per state.
pub(super) fn job_state_counts(tx: &mut Tx<'_>) -> Result<Vec<(JobState, u64)>> {
    Ok(tx
        .query(
            "SELECT state, COUNT(*) FROM jobs GROUP BY state ORDER BY state",
            &[],
        )
        .map_err(pg("job state counts"))?
        .iter()
        .map(|row| {
            (
                JobState::try_from(row.get::<_, i64>(0) as i32).unwrap_or(JobState::Unspecified),
                row.get::<_, i64>(1) as u64,
            )
        })
        .collect())
}
