//! Read queries of the SQLite store and the mapping of rows to records. A job's progress
//! and statistics come from its counters (`counters.rs`), never from a pass over its tasks.

use std::time::Duration;

use rusqlite::{Connection, OptionalExtension, params};
use uuid::Uuid;

use super::db;
use crate::api::workflows_v1::{JobState, TaskState};
use crate::server::store::{
    ClaimedTask, Error, ExecutionStats, Identifier, Job, JobFilter, Page, Progress, Result,
    TaskSummary,
};

fn uuid_from(bytes: Vec<u8>) -> Result<Uuid> {
    Uuid::from_slice(&bytes)
        .map_err(|_| Error::Corrupt(format!("a stored id has {} bytes", bytes.len())))
}

const JOB_COLUMNS: &str = "job, uuid, name, trace_parent, state, submitted_at, total_tasks, \
     first_started_at, compute_ms, running_started_sum";

struct JobRow {
    row: i64,
    uuid: Vec<u8>,
    name: String,
    trace_parent: String,
    state: i32,
    submitted_at: i64,
    total_tasks: i64,
    first_started_at: Option<i64>,
    compute_ms: i64,
    running_started_sum: i64,
}

fn map_job_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<JobRow> {
    Ok(JobRow {
        row: row.get(0)?,
        uuid: row.get(1)?,
        name: row.get(2)?,
        trace_parent: row.get(3)?,
        state: row.get(4)?,
        submitted_at: row.get(5)?,
        total_tasks: row.get(6)?,
        first_started_at: row.get(7)?,
        compute_ms: row.get(8)?,
        running_started_sum: row.get(9)?,
    })
}

/// A job with its progress and statistics.
pub(super) fn job_by_uuid(connection: &Connection, id: Uuid, now: i64) -> Result<Job> {
    let row = connection
        .prepare_cached(&format!("SELECT {JOB_COLUMNS} FROM jobs WHERE uuid = ?1"))
        .and_then(|mut statement| statement.query_row([id.as_bytes()], map_job_row).optional())
        .map_err(db("get job"))?
        .ok_or(Error::JobNotFound { id })?;
    complete_job(connection, row, now)
}

fn job_by_row(connection: &Connection, row: i64, now: i64) -> Result<Job> {
    let row = connection
        .prepare_cached(&format!("SELECT {JOB_COLUMNS} FROM jobs WHERE job = ?1"))
        .and_then(|mut statement| statement.query_row([row], map_job_row))
        .map_err(db("get job"))?;
    complete_job(connection, row, now)
}

fn complete_job(connection: &Connection, row: JobRow, now: i64) -> Result<Job> {
    let state = JobState::try_from(row.state).unwrap_or(JobState::Unspecified);
    let progress = job_progress(connection, row.row)?;
    let stats = job_stats(connection, &row, state, now)?;
    Ok(Job {
        id: uuid_from(row.uuid)?,
        name: row.name,
        trace_parent: row.trace_parent,
        state,
        submitted_at: row.submitted_at,
        progress,
        stats,
    })
}

fn job_progress(connection: &Connection, job: i64) -> Result<Vec<Progress>> {
    let mut statement = connection
        .prepare_cached("SELECT label, total, done FROM job_progress WHERE job = ?1 ORDER BY first")
        .map_err(db("job progress"))?;
    statement
        .query_map([job], |row| {
            Ok(Progress {
                label: row.get(0)?,
                total: row.get::<_, i64>(1)?.max(0) as u64,
                done: row.get::<_, i64>(2)?.max(0) as u64,
            })
        })
        .and_then(|rows| rows.collect::<rusqlite::Result<Vec<_>>>())
        .map_err(db("job progress"))
}

fn job_stats(
    connection: &Connection,
    job: &JobRow,
    state: JobState,
    now: i64,
) -> Result<ExecutionStats> {
    let counts: Vec<(i32, i64)> = {
        let mut statement = connection
            .prepare_cached(
                "SELECT state, count FROM job_task_states WHERE job = ?1 AND count > 0 ORDER BY state",
            )
            .map_err(db("job statistics"))?;
        statement
            .query_map([job.row], |row| Ok((row.get(0)?, row.get(1)?)))
            .and_then(|rows| rows.collect::<rusqlite::Result<Vec<_>>>())
            .map_err(db("job statistics"))?
    };
    let running = counts
        .iter()
        .find(|(task_state, _)| *task_state == TaskState::Running as i32)
        .map_or(0, |(_, count)| *count);
    let tasks_by_state = counts
        .into_iter()
        .map(|(task_state, count)| {
            (
                TaskState::try_from(task_state).unwrap_or(TaskState::Unspecified),
                count as u64,
            )
        })
        .collect();
    // Not a counter: claiming a task clears its `stopped_at`, so this can move back. One
    // probe at the end of the job's range of `tasks_stopped`.
    let last_stopped: Option<i64> = connection
        .prepare_cached(
            "SELECT MAX(stopped_at) FROM tasks INDEXED BY tasks_stopped
             WHERE job = ?1 AND stopped_at IS NOT NULL",
        )
        .and_then(|mut statement| statement.query_row([job.row], |row| row.get(0)))
        .map_err(db("job statistics"))?;
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

/// Jobs matching `filter`, paged by job id (which is time ordered for ids we create).
pub(super) fn query_jobs(
    connection: &Connection,
    filter: &JobFilter,
    page: Page,
    now: i64,
) -> Result<Vec<Job>> {
    let mut sql = String::from("SELECT job FROM jobs WHERE 1 = 1");
    let mut values: Vec<rusqlite::types::Value> = Vec::new();
    if let Some(after) = page.after {
        let after_row: Option<i64> = connection
            .query_row(
                "SELECT job FROM jobs WHERE uuid = ?1",
                [after.as_bytes()],
                |row| row.get(0),
            )
            .optional()
            .map_err(db("query jobs"))?;
        if let Some(after_row) = after_row {
            sql.push_str(if page.descending {
                " AND job < ?"
            } else {
                " AND job > ?"
            });
            values.push(after_row.into());
        }
    }
    if !filter.states.is_empty() {
        sql.push_str(&format!(
            " AND state IN ({})",
            vec!["?"; filter.states.len()].join(",")
        ));
        values.extend(filter.states.iter().map(|state| (*state as i64).into()));
    }
    if let Some(name) = &filter.name_contains {
        sql.push_str(" AND instr(lower(name), lower(?)) > 0");
        values.push(name.clone().into());
    }
    if let Some(from) = filter.submitted_from {
        sql.push_str(" AND submitted_at >= ?");
        values.push(from.into());
    }
    if let Some(to) = filter.submitted_to {
        sql.push_str(" AND submitted_at < ?");
        values.push(to.into());
    }
    {
        use std::ops::Bound;
        // UUIDs are stored as their 16 bytes; SQLite compares blobs with memcmp.
        for (bound, inclusive, exclusive) in [
            (filter.ids.start, " AND uuid >= ?", " AND uuid > ?"),
            (filter.ids.end, " AND uuid <= ?", " AND uuid < ?"),
        ] {
            match bound {
                Bound::Included(id) => {
                    sql.push_str(inclusive);
                    values.push(id.as_bytes().to_vec().into());
                }
                Bound::Excluded(id) => {
                    sql.push_str(exclusive);
                    values.push(id.as_bytes().to_vec().into());
                }
                Bound::Unbounded => {}
            }
        }
    }
    if !filter.clusters.is_empty() {
        sql.push_str(&format!(
            " AND EXISTS (SELECT 1 FROM job_clusters c WHERE c.job = jobs.job AND c.cluster IN ({}))",
            vec!["?"; filter.clusters.len()].join(",")
        ));
        values.extend(filter.clusters.iter().map(|slug| slug.clone().into()));
    }
    sql.push_str(if page.descending {
        " ORDER BY job DESC"
    } else {
        " ORDER BY job"
    });
    sql.push_str(" LIMIT ?");
    values.push((page.limit as i64).into());
    let rows: Vec<i64> = {
        let mut statement = connection.prepare(&sql).map_err(db("query jobs"))?;
        statement
            .query_map(rusqlite::params_from_iter(values), |row| row.get(0))
            .and_then(|rows| rows.collect::<rusqlite::Result<Vec<_>>>())
            .map_err(db("query jobs"))?
    };
    rows.into_iter()
        .map(|row| job_by_row(connection, row, now))
        .collect()
}

/// The row of job `job`, or `JobNotFound`.
fn job_row_of(connection: &Connection, job: Uuid, operation: &'static str) -> Result<i64> {
    connection
        .query_row(
            "SELECT job FROM jobs WHERE uuid = ?1",
            [job.as_bytes()],
            |row| row.get(0),
        )
        .optional()
        .map_err(db(operation))?
        .ok_or(Error::JobNotFound { id: job })
}

/// Direct children of `parent` (root tasks when `None`) in submission order.
pub(super) fn list_tasks(
    connection: &Connection,
    job: Uuid,
    parent: Option<Uuid>,
    page: Page,
) -> Result<Vec<TaskSummary>> {
    let job_row = job_row_of(connection, job, "list tasks")?;
    let parent_row: Option<i64> = match parent {
        None => None,
        Some(parent) => Some(
            connection
                .query_row(
                    "SELECT task FROM tasks WHERE uuid = ?1 AND job = ?2",
                    params![parent.as_bytes(), job_row],
                    |row| row.get(0),
                )
                .optional()
                .map_err(db("list tasks"))?
                .ok_or(Error::TaskNotFound { id: parent })?,
        ),
    };
    let after_row: i64 = match page.after {
        None => 0,
        Some(after) => connection
            .query_row(
                "SELECT task FROM tasks WHERE uuid = ?1",
                [after.as_bytes()],
                |row| row.get(0),
            )
            .optional()
            .map_err(db("list tasks"))?
            .unwrap_or(0),
    };
    let mut statement = connection
        .prepare_cached(&format!(
            "{TASK_SUMMARY_COLUMNS} WHERE t.job = ?1 AND t.parent IS ?2 AND t.task > ?3 ORDER BY t.task LIMIT ?4"
        ))
        .map_err(db("list tasks"))?;
    let rows = statement
        .query_map(
            params![job_row, parent_row, after_row, page.limit as i64],
            map_task_summary_row,
        )
        .and_then(|rows| rows.collect::<rusqlite::Result<Vec<_>>>())
        .map_err(db("list tasks"))?;
    rows.into_iter().map(task_summary).collect()
}

/// The tasks of `job` among `ids`, in the order of `ids` (one probe of the unique index on
/// `uuid` each); ids of other jobs' tasks, or of none, are left out.
pub(super) fn get_tasks(
    connection: &Connection,
    job: Uuid,
    ids: &[Uuid],
) -> Result<Vec<TaskSummary>> {
    let job_row = job_row_of(connection, job, "get tasks")?;
    let mut statement = connection
        .prepare_cached(&format!(
            "{TASK_SUMMARY_COLUMNS} WHERE t.uuid = ?1 AND t.job = ?2"
        ))
        .map_err(db("get tasks"))?;
    let mut seen = std::collections::HashSet::with_capacity(ids.len());
    let mut found = Vec::with_capacity(ids.len());
    for id in ids {
        if !seen.insert(*id) {
            continue;
        }
        if let Some(row) = statement
            .query_row(params![id.as_bytes(), job_row], map_task_summary_row)
            .optional()
            .map_err(db("get tasks"))?
        {
            found.push(task_summary(row)?);
        }
    }
    Ok(found)
}

/// The columns [`map_task_summary_row`] reads, from `tasks t` with its parent `p`.
const TASK_SUMMARY_COLUMNS: &str =
    "SELECT t.uuid, p.uuid, t.display, t.state, t.name, t.version, t.major, t.minor,
            t.submitted_at, t.started_at, t.stopped_at, t.input, t.retry_count, t.max_retries,
            t.has_children, t.cluster, t.optional, t.claimant
     FROM tasks t LEFT JOIN tasks p ON p.task = t.parent";

type TaskSummaryRow = (Vec<u8>, Option<Vec<u8>>, TaskSummaryFields);

fn map_task_summary_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<TaskSummaryRow> {
    Ok((
        row.get(0)?,
        row.get(1)?,
        TaskSummaryFields {
            display: row.get(2)?,
            state: row.get(3)?,
            identifier: Identifier {
                name: row.get(4)?,
                version: row.get(5)?,
                major: row.get::<_, i64>(6)? as u64,
                minor: row.get::<_, i64>(7)? as u64,
            },
            submitted_at: row.get(8)?,
            started_at: row.get(9)?,
            stopped_at: row.get(10)?,
            input: row.get(11)?,
            retry_count: row.get(12)?,
            max_retries: row.get(13)?,
            has_children: row.get(14)?,
            cluster: row.get(15)?,
            optional: row.get(16)?,
            claimant: row.get(17)?,
        },
    ))
}

fn task_summary((id, parent_id, row): TaskSummaryRow) -> Result<TaskSummary> {
    Ok(TaskSummary {
        id: uuid_from(id)?,
        parent_id: parent_id.map(uuid_from).transpose()?,
        display: row.display,
        state: TaskState::try_from(row.state).unwrap_or(TaskState::Unspecified),
        identifier: row.identifier,
        submitted_at: row.submitted_at,
        started_at: row.started_at,
        stopped_at: row.stopped_at,
        input: row.input,
        retry_count: row.retry_count,
        max_retries: row.max_retries,
        has_children: row.has_children,
        cluster: row.cluster,
        optional: row.optional,
        claimant: row.claimant,
    })
}

struct TaskSummaryFields {
    display: String,
    state: i32,
    identifier: Identifier,
    submitted_at: i64,
    started_at: Option<i64>,
    stopped_at: Option<i64>,
    input: Vec<u8>,
    retry_count: i64,
    max_retries: i64,
    has_children: bool,
    cluster: String,
    optional: bool,
    claimant: Option<String>,
}

/// Counts of jobs per state.
pub(super) fn job_state_counts(connection: &Connection) -> Result<Vec<(JobState, u64)>> {
    let mut statement = connection
        .prepare_cached("SELECT state, COUNT(*) FROM jobs GROUP BY state ORDER BY state")
        .map_err(db("job state counts"))?;
    let rows = statement
        .query_map([], |row| Ok((row.get::<_, i32>(0)?, row.get::<_, i64>(1)?)))
        .and_then(|rows| rows.collect::<rusqlite::Result<Vec<_>>>())
        .map_err(db("job state counts"))?;
    Ok(rows
        .into_iter()
        .map(|(state, count)| {
            (
                JobState::try_from(state).unwrap_or(JobState::Unspecified),
                count as u64,
            )
        })
        .collect())
}

/// The record of a task just claimed, with its job.
pub(super) fn claimed_task(
    connection: &Connection,
    row: i64,
    identifier: Identifier,
    lease: Duration,
    now: i64,
) -> Result<ClaimedTask> {
    /// (uuid, input, display, parent uuid, retry count, job row) of the claimed task.
    type ClaimedRow = (Vec<u8>, Vec<u8>, String, Option<Vec<u8>>, i64, i64);
    let (id, input, display, parent, retry_count, job): ClaimedRow = connection
        .prepare_cached(
            "SELECT t.uuid, t.input, t.display, p.uuid, t.retry_count, t.job
                 FROM tasks t LEFT JOIN tasks p ON p.task = t.parent WHERE t.task = ?1",
        )
        .and_then(|mut statement| {
            statement.query_row([row], |row| {
                Ok((
                    row.get(0)?,
                    row.get(1)?,
                    row.get(2)?,
                    row.get(3)?,
                    row.get(4)?,
                    row.get(5)?,
                ))
            })
        })
        .map_err(db("load claimed task"))?;
    let depends_on: Vec<Vec<u8>> = {
        let mut statement = connection
            .prepare_cached(
                "SELECT t.uuid FROM task_dependencies d JOIN tasks t ON t.task = d.depends_on
                 WHERE d.task = ?1 ORDER BY d.depends_on",
            )
            .map_err(db("load claimed task"))?;
        statement
            .query_map([row], |row| row.get(0))
            .and_then(|rows| rows.collect::<rusqlite::Result<Vec<_>>>())
            .map_err(db("load claimed task"))?
    };
    let job = job_header(connection, job, now)?;
    Ok(ClaimedTask {
        id: uuid_from(id)?,
        identifier,
        input,
        display,
        parent_id: parent.map(uuid_from).transpose()?,
        depends_on: depends_on
            .into_iter()
            .map(uuid_from)
            .collect::<Result<_>>()?,
        retry_count,
        lease,
        job,
    })
}

/// A job without progress and statistics (cheap; what a claimed task carries).
fn job_header(connection: &Connection, job: i64, _now: i64) -> Result<Job> {
    let row = connection
        .prepare_cached(&format!("SELECT {JOB_COLUMNS} FROM jobs WHERE job = ?1"))
        .and_then(|mut statement| statement.query_row([job], map_job_row))
        .map_err(db("get job"))?;
    Ok(Job {
        id: uuid_from(row.uuid)?,
        name: row.name,
        trace_parent: row.trace_parent,
        state: JobState::try_from(row.state).unwrap_or(JobState::Unspecified),
        submitted_at: row.submitted_at,
        progress: Vec::new(),
        stats: ExecutionStats {
            total_tasks: row.total_tasks.max(0) as u64,
            ..ExecutionStats::default()
        },
    })
}

/// Severity counts of a trace's first `limit` records.
pub(super) fn count_telemetry_by_severity(
    connection: &Connection,
    kind: crate::server::store::TelemetryKind,
    trace_id: &[u8],
    limit: usize,
) -> Result<Vec<(i32, u64)>> {
    let mut statement = connection
        .prepare_cached(
            "SELECT severity, COUNT(*) FROM (
                 SELECT severity FROM telemetry WHERE kind = ?1 AND trace_id = ?2
                 ORDER BY record LIMIT ?3
             ) GROUP BY severity ORDER BY severity",
        )
        .map_err(db("count telemetry"))?;
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    let rows = statement
        .query_map(rusqlite::params![kind as i64, trace_id, limit], |row| {
            Ok((row.get::<_, i64>(0)?, row.get::<_, i64>(1)?))
        })
        .map_err(db("count telemetry"))?;
    rows.map(|row| {
        row.map(|(severity, count)| {
            (
                i32::try_from(severity).unwrap_or(0),
                u64::try_from(count).unwrap_or(0),
            )
        })
        .map_err(db("count telemetry"))
    })
    .collect()
}

/// Telemetry records of a trace, paged by arrival.
pub(super) fn query_telemetry(
    connection: &Connection,
    kind: crate::server::store::TelemetryKind,
    trace_id: &[u8],
    task_id: Option<&str>,
    severities: &[(i32, i32)],
    page: Page,
) -> Result<Vec<(Uuid, Vec<u8>)>> {
    let mut sql =
        String::from("SELECT uuid, encoded FROM telemetry WHERE kind = ? AND trace_id = ?");
    let mut values: Vec<rusqlite::types::Value> =
        vec![(kind as i64).into(), trace_id.to_vec().into()];
    if let Some(after) = page.after {
        let after_row: Option<i64> = connection
            .query_row(
                "SELECT record FROM telemetry WHERE uuid = ?1",
                [after.as_bytes()],
                |row| row.get(0),
            )
            .optional()
            .map_err(db("query telemetry"))?;
        if let Some(after_row) = after_row {
            sql.push_str(if page.descending {
                " AND record < ?"
            } else {
                " AND record > ?"
            });
            values.push(after_row.into());
        }
    }
    if let Some(task_id) = task_id {
        sql.push_str(" AND task_id = ?");
        values.push(task_id.to_string().into());
    }
    if !severities.is_empty() {
        let ranges: Vec<String> = severities
            .iter()
            .map(|_| "(severity BETWEEN ? AND ?)".to_string())
            .collect();
        sql.push_str(&format!(" AND ({})", ranges.join(" OR ")));
        for (low, high) in severities {
            values.push(i64::from(*low).into());
            values.push(i64::from(*high).into());
        }
    }
    sql.push_str(if page.descending {
        " ORDER BY record DESC"
    } else {
        " ORDER BY record"
    });
    sql.push_str(" LIMIT ?");
    values.push((page.limit as i64).into());
    let mut statement = connection.prepare(&sql).map_err(db("query telemetry"))?;
    let rows = statement
        .query_map(rusqlite::params_from_iter(values), |row| {
            Ok((row.get::<_, Vec<u8>>(0)?, row.get::<_, Vec<u8>>(1)?))
        })
        .and_then(|rows| rows.collect::<rusqlite::Result<Vec<_>>>())
        .map_err(db("query telemetry"))?;
    rows.into_iter()
        .map(|(id, encoded)| Ok((uuid_from(id)?, encoded)))
        .collect()
}
