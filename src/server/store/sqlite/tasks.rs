//! The transactional task logic of the SQLite store. Every function runs inside the
//! writer's transaction and keeps these counters true:
//! - `tasks.pending_deps`: dependencies not yet complete; a queued task with 0 can run;
//! - `tasks.pending_children`: children not yet complete;
//! - `jobs.incomplete_tasks` / `jobs.running_tasks`;
//! - what reads show of a job (`counters.rs`): tasks per state, attempt times, progress sums.
//!
//! A task is *complete* when it is computed and all its descendants are complete, or when
//! it ended failed-optional or skipped. Completing a task releases its dependants and may
//! complete its parent; a job whose tasks are all complete is completed.

use std::time::Duration;

use rusqlite::{Connection, OptionalExtension, params};
use uuid::Uuid;

use super::{counters, read};
use super::{db, execute, query_row};
use crate::api::workflows_v1::{JobState, TaskState};
use crate::server::store::rules::{self, Act, Attempt, with_reason};
use crate::server::store::{
    ClaimRequest, ClaimedTask, ComputedReport, Error, FailedReport, HandedBackReport, Identifier,
    MAX_LEASE_REQUEUES, MAX_RUNNER_FAILURE_REQUEUES, NewJob, NewTask, ReportOutcome, Result,
};

const QUEUED: i32 = TaskState::Queued as i32;
const RUNNING: i32 = TaskState::Running as i32;
const COMPUTED: i32 = TaskState::Computed as i32;
const FAILED: i32 = TaskState::Failed as i32;
const SKIPPED: i32 = TaskState::Skipped as i32;
const FAILED_OPTIONAL: i32 = TaskState::FailedOptional as i32;

/// Where new tasks hang in the tree.
struct Placement {
    job: i64,
    parent: Option<i64>,
    /// Nearest optional ancestor of the new tasks.
    scope: Option<i64>,
    /// The scope already failed: the new tasks are skipped at once.
    skipped: bool,
    job_active: bool,
}

/// Checks that the clusters of `tasks` exist; answers them, each once.
fn check_clusters(connection: &Connection, tasks: &[NewTask]) -> Result<Vec<String>> {
    let mut seen: Vec<&str> = Vec::new();
    let mut statement = connection
        .prepare_cached("SELECT 1 FROM clusters WHERE slug = ?1")
        .map_err(db("check cluster"))?;
    for task in tasks {
        // Tasks mostly share one or two clusters: a short list beats hashing each name.
        if !seen.contains(&task.cluster.as_str()) {
            let exists = statement
                .exists([&task.cluster])
                .map_err(db("check cluster"))?;
            if !exists {
                return Err(Error::ClusterNotFound {
                    slug: task.cluster.clone(),
                });
            }
            seen.push(&task.cluster);
        }
    }
    Ok(seen.into_iter().map(str::to_string).collect())
}

/// Inserts a job with its root tasks (the savepoint drops the job if a cluster is unknown).
pub(super) fn insert_job(connection: &Connection, job: NewJob, now: i64) -> Result<()> {
    execute(
        connection,
        "INSERT INTO jobs (uuid, name, trace_parent, state, submitted_at, total_tasks, incomplete_tasks)
         VALUES (?1, ?2, ?3, ?4, ?5, 0, 0)",
        params![job.id.as_bytes(), job.name, job.trace_parent, JobState::Submitted as i32, now],
    )
    .map_err(db("insert job"))?;
    let job_row = connection.last_insert_rowid();
    let placement = Placement {
        job: job_row,
        parent: None,
        scope: None,
        skipped: false,
        job_active: true,
    };
    insert_tasks(connection, &placement, &job.tasks, now)?;
    Ok(())
}

/// Inserts tasks under `placement`, with their dependencies; returns how many count as
/// incomplete (all unless skipped).
fn insert_tasks(
    connection: &Connection,
    placement: &Placement,
    tasks: &[NewTask],
    now: i64,
) -> Result<i64> {
    if tasks.is_empty() {
        return Ok(0);
    }
    for cluster in check_clusters(connection, tasks)? {
        counters::add_cluster(connection, placement.job, &cluster)?;
    }
    let state = if placement.skipped { SKIPPED } else { QUEUED };
    let mut rows = Vec::with_capacity(tasks.len());
    {
        let mut insert = connection
            .prepare_cached(
                "INSERT INTO tasks (uuid, job, parent, name, version, major, minor, cluster, input, display, state,
                                    max_retries, optional, optional_scope, pending_deps, job_active, submitted_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17)",
            )
            .map_err(db("insert task"))?;
        // Reused for every task: distinct dependencies without an allocation per task.
        let mut distinct = Vec::new();
        for task in tasks {
            let pending = if placement.skipped {
                0
            } else {
                distinct_count(&task.depends_on, &mut distinct) as i64
            };
            insert
                .execute(params![
                    task.id.as_bytes(),
                    placement.job,
                    placement.parent,
                    task.identifier.name,
                    task.identifier.version,
                    task.identifier.major as i64,
                    task.identifier.minor as i64,
                    task.cluster,
                    task.input,
                    task.display,
                    state,
                    task.max_retries,
                    task.optional,
                    placement.scope,
                    pending,
                    placement.job_active,
                    now,
                ])
                .map_err(db("insert task"))?;
            rows.push(connection.last_insert_rowid());
        }
    }
    {
        let mut insert = connection
            .prepare_cached(
                "INSERT OR IGNORE INTO task_dependencies (depends_on, task) VALUES (?1, ?2)",
            )
            .map_err(db("insert dependency"))?;
        for (index, task) in tasks.iter().enumerate() {
            for &dependency in &task.depends_on {
                let dependency_row = rows.get(dependency).ok_or_else(|| {
                    Error::Corrupt(format!("dependency index {dependency} out of range"))
                })?;
                insert
                    .execute(params![dependency_row, rows[index]])
                    .map_err(db("insert dependency"))?;
            }
        }
    }
    let count = tasks.len() as i64;
    let incomplete = if placement.skipped { 0 } else { count };
    execute(
        connection,
        "UPDATE jobs SET total_tasks = total_tasks + ?2, incomplete_tasks = incomplete_tasks + ?3
         WHERE job = ?1",
        params![placement.job, count, incomplete],
    )
    .map_err(db("count tasks"))?;
    counters::move_tasks(connection, placement.job, None, state, count)?;
    if let Some(parent) = placement.parent {
        execute(
            connection,
            "UPDATE tasks SET has_children = 1, pending_children = pending_children + ?2
             WHERE task = ?1",
            params![parent, incomplete],
        )
        .map_err(db("count children"))?;
    }
    Ok(incomplete)
}

/// How many distinct values `values` holds (`scratch` is working space).
fn distinct_count(values: &[usize], scratch: &mut Vec<usize>) -> usize {
    if values.len() < 2 {
        return values.len();
    }
    scratch.clear();
    scratch.extend_from_slice(values);
    scratch.sort_unstable();
    scratch.dedup();
    scratch.len()
}

/// The fields of a task row the logic here needs.
struct TaskRow {
    row: i64,
    job: i64,
    parent: Option<i64>,
    state: i32,
    retry_count: i64,
    max_retries: i64,
    optional: bool,
    optional_scope: Option<i64>,
    scope_failed: bool,
    pending_children: i64,
    claimant: Option<String>,
    fenced: bool,
    lease_losses: i64,
    runner_failures: i64,
    attempt_started_at: Option<i64>,
}

const TASK_ROW_COLUMNS: &str = "task, job, parent, state, retry_count, max_retries, optional, optional_scope, \
                                scope_failed, pending_children, claimant, fenced, lease_losses, attempt_started_at, \
                                runner_failures";

fn map_task_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<TaskRow> {
    Ok(TaskRow {
        row: row.get(0)?,
        job: row.get(1)?,
        parent: row.get(2)?,
        state: row.get(3)?,
        retry_count: row.get(4)?,
        max_retries: row.get(5)?,
        optional: row.get(6)?,
        optional_scope: row.get(7)?,
        scope_failed: row.get(8)?,
        pending_children: row.get(9)?,
        claimant: row.get(10)?,
        fenced: row.get(11)?,
        lease_losses: row.get(12)?,
        attempt_started_at: row.get(13)?,
        runner_failures: row.get(14)?,
    })
}

fn task_by_uuid(connection: &Connection, id: Uuid) -> Result<TaskRow> {
    connection
        .prepare_cached(&format!(
            "SELECT {TASK_ROW_COLUMNS} FROM tasks WHERE uuid = ?1"
        ))
        .and_then(|mut statement| {
            statement
                .query_row([id.as_bytes()], map_task_row)
                .optional()
        })
        .map_err(db("load task"))?
        .ok_or(Error::TaskNotFound { id })
}

fn task_by_row(connection: &Connection, row: i64) -> Result<TaskRow> {
    connection
        .prepare_cached(&format!(
            "SELECT {TASK_ROW_COLUMNS} FROM tasks WHERE task = ?1"
        ))
        .and_then(|mut statement| statement.query_row([row], map_task_row))
        .map_err(db("load task"))
}

fn task_state(state: i32) -> TaskState {
    TaskState::try_from(state).unwrap_or(TaskState::Unspecified)
}

/// Whether a report from `caller` may change this task: it must be running and `caller`
/// its claimant, from the first claim on.
fn accepts_report(task: &TaskRow, caller: &str) -> bool {
    is_claimant(task, caller, Act::Report)
}

/// Whether `caller` is the claimant of the task's current attempt, for `act`
/// ([`rules::is_claimant`]).
fn is_claimant(task: &TaskRow, caller: &str, act: Act) -> bool {
    let attempt = Attempt {
        running: task.state == RUNNING,
        claimant: task.claimant.as_deref(),
        fenced: task.fenced,
    };
    rules::is_claimant(attempt, caller, act)
}

/// The start of applying any report (computed, failed, handed back): the reported task with
/// its attempt ended, when `claimant` is the claimant of that attempt; otherwise the stale
/// outcome to answer, and nothing changed.
fn end_reported_attempt(
    connection: &Connection,
    task_id: Uuid,
    claimant: &str,
    now: i64,
) -> Result<std::result::Result<TaskRow, ReportOutcome>> {
    let task = task_by_uuid(connection, task_id)?;
    if !accepts_report(&task, claimant) {
        return Ok(Err(ReportOutcome::Stale(task_state(task.state))));
    }
    stop_attempt(connection, &task, now)?;
    Ok(Ok(task))
}

/// Ends the current attempt of a running task: accounts its compute time, and the job's
/// running count and attempt times.
fn stop_attempt(connection: &Connection, task: &TaskRow, now: i64) -> Result<()> {
    let elapsed = task
        .attempt_started_at
        .map(|start| (now - start).max(0))
        .unwrap_or(0);
    execute(
        connection,
        "UPDATE tasks SET stopped_at = ?2, compute_ms = compute_ms + ?3, lease_expires_at = NULL,
                          attempt_started_at = NULL WHERE task = ?1",
        params![task.row, now, elapsed],
    )
    .map_err(db("stop attempt"))?;
    execute(
        connection,
        "UPDATE jobs SET running_tasks = MAX(running_tasks - 1, 0), compute_ms = compute_ms + ?2,
                         running_started_sum = running_started_sum - ?3
         WHERE job = ?1",
        params![task.job, elapsed, task.attempt_started_at.unwrap_or(0)],
    )
    .map_err(db("stop attempt"))?;
    Ok(())
}

/// Moves a task from state `from` to `to`.
fn set_state(connection: &Connection, task: &TaskRow, from: i32, to: i32) -> Result<()> {
    execute(
        connection,
        "UPDATE tasks SET state = ?2 WHERE task = ?1",
        params![task.row, to],
    )
    .map_err(db("set task state"))?;
    counters::move_tasks(connection, task.job, Some(from), to, 1)
}

/// Marks `row` complete and propagates: dependants lose a pending dependency, the parent
/// loses a pending child (and completes when computed with none left), the job completes
/// when nothing is incomplete.
fn complete(connection: &Connection, row: i64) -> Result<()> {
    let mut next = Some(row);
    while let Some(row) = next.take() {
        let task = task_by_row(connection, row)?;
        execute(
            connection,
            "UPDATE tasks SET pending_deps = pending_deps - 1
             WHERE task IN (SELECT task FROM task_dependencies WHERE depends_on = ?1)",
            [row],
        )
        .map_err(db("release dependants"))?;
        execute(
            connection,
            "UPDATE jobs SET incomplete_tasks = incomplete_tasks - 1 WHERE job = ?1",
            [task.job],
        )
        .map_err(db("complete task"))?;
        if let Some(parent) = task.parent {
            execute(
                connection,
                "UPDATE tasks SET pending_children = pending_children - 1 WHERE task = ?1",
                [parent],
            )
            .map_err(db("complete task"))?;
            let parent_task = task_by_row(connection, parent)?;
            if parent_task.state == COMPUTED && parent_task.pending_children == 0 {
                next = Some(parent);
            }
        }
        if next.is_none() {
            refresh_job_state(connection, task.job)?;
        }
    }
    Ok(())
}

/// Recomputes a job's state from its counters, unless it already ended.
pub(super) fn refresh_job_state(connection: &Connection, job: i64) -> Result<()> {
    let (state, incomplete, running, ever_started): (i32, i64, i64, bool) = query_row(
        connection,
        "SELECT state, incomplete_tasks, running_tasks, ever_started FROM jobs WHERE job = ?1",
        [job],
        |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?, row.get(3)?)),
    )
    .map_err(db("load job"))?;
    let ended =
        [JobState::Completed, JobState::Failed, JobState::Canceled].map(|state| state as i32);
    if ended.contains(&state) {
        return Ok(());
    }
    let next = if incomplete <= 0 {
        JobState::Completed
    } else if running > 0 {
        JobState::Running
    } else if ever_started {
        JobState::Started
    } else {
        JobState::Submitted
    };
    if next as i32 != state {
        execute(
            connection,
            "UPDATE jobs SET state = ?2 WHERE job = ?1",
            params![job, next as i32],
        )
        .map_err(db("set job state"))?;
    }
    Ok(())
}

/// Applies a computed report: the task is computed, its progress stored, its subtasks
/// inserted as its children.
pub(super) fn complete_task(
    connection: &Connection,
    report: ComputedReport,
    now: i64,
) -> Result<ReportOutcome> {
    let task = match end_reported_attempt(connection, report.task_id, &report.claimant, now)? {
        Ok(task) => task,
        Err(stale) => return Ok(stale),
    };
    execute(
        connection,
        "UPDATE tasks SET state = ?2, display = ?3 WHERE task = ?1",
        params![task.row, COMPUTED, report.display],
    )
    .map_err(db("complete task"))?;
    counters::move_tasks(connection, task.job, Some(RUNNING), COMPUTED, 1)?;
    counters::replace_progress(connection, task.job, task.row, &report.progress)?;
    let job_active: bool = query_row(
        connection,
        "SELECT state NOT IN (?2, ?3) FROM jobs WHERE job = ?1",
        params![task.job, JobState::Failed as i32, JobState::Canceled as i32],
        |row| row.get(0),
    )
    .map_err(db("load job"))?;
    let scope = if task.optional {
        Some(task.row)
    } else {
        task.optional_scope
    };
    let skipped = task.scope_failed
        || match scope {
            Some(scope) if scope != task.row => task_by_row(connection, scope)?.scope_failed,
            _ => false,
        };
    let placement = Placement {
        job: task.job,
        parent: Some(task.row),
        scope,
        skipped,
        job_active,
    };
    let incomplete_children = insert_tasks(connection, &placement, &report.subtasks, now)?;
    if incomplete_children == 0 {
        complete(connection, task.row)?;
    } else {
        refresh_job_state(connection, task.job)?;
    }
    Ok(ReportOutcome::Applied(TaskState::Computed))
}

/// Applies a failure report.
pub(super) fn fail_task(
    connection: &Connection,
    report: FailedReport,
    now: i64,
) -> Result<ReportOutcome> {
    let task = match end_reported_attempt(connection, report.task_id, &report.claimant, now)? {
        Ok(task) => task,
        Err(stale) => return Ok(stale),
    };
    execute(
        connection,
        "UPDATE tasks SET display = ?2 WHERE task = ?1",
        params![task.row, report.display],
    )
    .map_err(db("fail task"))?;
    if !report.progress.is_empty() {
        counters::replace_progress(connection, task.job, task.row, &report.progress)?;
    }
    let state = if !report.workflow_error {
        execute(
            connection,
            "UPDATE tasks SET runner_failures = runner_failures + 1 WHERE task = ?1",
            [task.row],
        )
        .map_err(db("fail task"))?;
        if task.runner_failures < MAX_RUNNER_FAILURE_REQUEUES {
            requeue(connection, &task, false)?;
            QUEUED
        } else {
            append_display(
                connection,
                &task,
                &format!(
                    "RunnerFailed('the runners could not run the task {} times')",
                    task.runner_failures + 1
                ),
            )?;
            fail_for_good(connection, &task)?
        }
    } else if task.retry_count < task.max_retries {
        requeue(connection, &task, true)?;
        QUEUED
    } else {
        fail_for_good(connection, &task)?
    };
    refresh_job_state(connection, task.job)?;
    Ok(ReportOutcome::Applied(task_state(state)))
}

/// Applies a hand-back: the claimant did not run the task, which is queued again with the
/// reported display, counting neither a retry nor a runner failure. The task is fenced: the
/// claimant let go, so a late report of that attempt is stale once another runner claimed it.
pub(super) fn hand_back(
    connection: &Connection,
    report: HandedBackReport,
    now: i64,
) -> Result<ReportOutcome> {
    let task = match end_reported_attempt(connection, report.task_id, &report.claimant, now)? {
        Ok(task) => task,
        Err(stale) => return Ok(stale),
    };
    execute(
        connection,
        "UPDATE tasks SET display = ?2, fenced = 1 WHERE task = ?1",
        params![task.row, report.display],
    )
    .map_err(db("hand back task"))?;
    requeue(connection, &task, false)?;
    refresh_job_state(connection, task.job)?;
    Ok(ReportOutcome::Applied(TaskState::Queued))
}

/// Queues a task whose attempt ended (it was running) again.
fn requeue(connection: &Connection, task: &TaskRow, count_retry: bool) -> Result<()> {
    execute(
        connection,
        "UPDATE tasks SET state = ?2, retry_count = retry_count + ?3 WHERE task = ?1",
        params![task.row, QUEUED, i64::from(count_retry)],
    )
    .map_err(db("requeue task"))?;
    counters::move_tasks(connection, task.job, Some(RUNNING), QUEUED, 1)
}

/// A task (whose attempt ended: it was running) failed with no retries left:
/// failed-optional inside an optional scope (skipping what is still queued in that scope),
/// otherwise failed, which fails the job.
fn fail_for_good(connection: &Connection, task: &TaskRow) -> Result<i32> {
    if task.optional {
        set_state(connection, task, RUNNING, FAILED_OPTIONAL)?;
        complete(connection, task.row)?;
        return Ok(FAILED_OPTIONAL);
    }
    if let Some(scope) = task.optional_scope {
        set_state(connection, task, RUNNING, FAILED_OPTIONAL)?;
        skip_scope(connection, task.job, scope)?;
        complete(connection, task.row)?;
        return Ok(FAILED_OPTIONAL);
    }
    set_state(connection, task, RUNNING, FAILED)?;
    execute(
        connection,
        "UPDATE jobs SET state = ?2 WHERE job = ?1",
        params![task.job, JobState::Failed as i32],
    )
    .map_err(db("fail job"))?;
    execute(
        connection,
        "UPDATE tasks SET job_active = 0 WHERE job = ?1 AND job_active = 1",
        [task.job],
    )
    .map_err(db("fail job"))?;
    Ok(FAILED)
}

/// Marks the optional scope rooted at `scope` failed: every queued task in its subtree is
/// skipped (and completes), and optional tasks inside it remember the failure so subtasks
/// they submit later are skipped too.
fn skip_scope(connection: &Connection, job: i64, scope: i64) -> Result<()> {
    let subtree: Vec<(i64, i32, bool)> = {
        let mut statement = connection
            .prepare_cached(
                "WITH RECURSIVE subtree(task) AS (
                     SELECT ?1 UNION ALL SELECT t.task FROM tasks t JOIN subtree s ON t.parent = s.task)
                 SELECT t.task, t.state, t.optional FROM tasks t JOIN subtree s ON t.task = s.task",
            )
            .map_err(db("skip scope"))?;
        statement
            .query_map([scope], |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)))
            .and_then(|rows| rows.collect::<rusqlite::Result<Vec<_>>>())
            .map_err(db("skip scope"))?
    };
    execute(
        connection,
        "UPDATE tasks SET scope_failed = 1 WHERE task = ?1",
        [scope],
    )
    .map_err(db("skip scope"))?;
    for (row, state, optional) in subtree {
        if optional {
            execute(
                connection,
                "UPDATE tasks SET scope_failed = 1 WHERE task = ?1",
                [row],
            )
            .map_err(db("skip scope"))?;
        }
        if state == QUEUED && row != scope {
            execute(
                connection,
                "UPDATE tasks SET state = ?2 WHERE task = ?1",
                params![row, SKIPPED],
            )
            .map_err(db("skip scope"))?;
            counters::move_tasks(connection, job, Some(QUEUED), SKIPPED, 1)?;
            complete(connection, row)?;
        }
    }
    Ok(())
}

/// Claims the oldest runnable task that one of the runner's identifiers can run.
pub(super) fn claim_task(
    connection: &Connection,
    claim: &ClaimRequest,
    now: i64,
) -> Result<Option<ClaimedTask>> {
    let best = rules::best_identifiers(&claim.identifiers);
    let mut found: Option<(i64, &Identifier)> = None;
    {
        let mut statement = connection
            .prepare_cached(
                "SELECT task FROM tasks INDEXED BY tasks_claimable
                 WHERE cluster = ?1 AND name = ?2 AND major = ?3 AND minor <= ?4
                   AND state = 1 AND pending_deps = 0 AND job_active = 1
                 ORDER BY task LIMIT 1",
            )
            .map_err(db("claim task"))?;
        for identifier in best {
            let candidate: Option<i64> = statement
                .query_row(
                    params![
                        claim.cluster,
                        identifier.name,
                        identifier.major as i64,
                        identifier.minor as i64
                    ],
                    |row| row.get(0),
                )
                .optional()
                .map_err(db("claim task"))?;
            if let Some(row) = candidate
                && found.is_none_or(|(current, _)| row < current)
            {
                found = Some((row, identifier));
            }
        }
    }
    let Some((row, identifier)) = found else {
        return Ok(None);
    };
    let lease_millis = claim.lease.as_millis() as i64;
    let (job, started_at): (i64, i64) = query_row(
        connection,
        "UPDATE tasks SET state = ?2, claimant = ?3, lease_expires_at = ?4, attempt_started_at = ?5,
                          started_at = COALESCE(started_at, ?5), stopped_at = NULL
         WHERE task = ?1 RETURNING job, started_at",
        params![row, RUNNING, claim.claimant, now + lease_millis, now],
        |row| Ok((row.get(0)?, row.get(1)?)),
    )
    .map_err(db("claim task"))?;
    // The job's counts follow every claim; its state becomes running unless it ended (which
    // cannot happen while it has a claimable task).
    execute(
        connection,
        "UPDATE jobs SET running_tasks = running_tasks + 1, ever_started = 1,
                         state = CASE WHEN state IN (?3, ?4, ?5) THEN state ELSE ?2 END,
                         first_started_at = MIN(COALESCE(first_started_at, ?6), ?6),
                         running_started_sum = running_started_sum + ?7
         WHERE job = ?1",
        params![
            job,
            JobState::Running as i32,
            JobState::Completed as i32,
            JobState::Failed as i32,
            JobState::Canceled as i32,
            started_at,
            now
        ],
    )
    .map_err(db("claim task"))?;
    counters::move_tasks(connection, job, Some(QUEUED), RUNNING, 1)?;
    let claimed = read::claimed_task(connection, row, identifier.clone(), claim.lease, now)?;
    Ok(Some(claimed))
}

/// Extends a running task's lease; `None` when it is not running or not `caller`'s.
pub(super) fn extend_lease(
    connection: &Connection,
    id: Uuid,
    caller: &str,
    lease: Duration,
    now: i64,
) -> Result<Option<Duration>> {
    let task = task_by_uuid(connection, id)?;
    if !is_claimant(&task, caller, Act::Extend) {
        return Ok(None);
    }
    execute(
        connection,
        "UPDATE tasks SET lease_expires_at = ?2 WHERE task = ?1",
        params![task.row, now + lease.as_millis() as i64],
    )
    .map_err(db("extend lease"))?;
    Ok(Some(lease))
}

/// Handles running tasks whose lease ended: re-queued (and fenced: see `is_claimant`)
/// up to `MAX_LEASE_REQUEUES` times, then failed.
pub(super) fn expire_leases(connection: &Connection, now: i64) -> Result<usize> {
    let expired: Vec<i64> = {
        // Without INDEXED BY, SQLite reads the whole table in task order rather than sort
        // the few expired rows: a pass over every task ever stored, every second.
        let mut statement = connection
            .prepare_cached(
                "SELECT task FROM tasks INDEXED BY tasks_leased
                 WHERE state = 2 AND lease_expires_at < ?1 ORDER BY task",
            )
            .map_err(db("expire leases"))?;
        statement
            .query_map([now], |row| row.get(0))
            .and_then(|rows| rows.collect::<rusqlite::Result<Vec<_>>>())
            .map_err(db("expire leases"))?
    };
    for row in &expired {
        let task = task_by_row(connection, *row)?;
        stop_attempt(connection, &task, now)?;
        execute(
            connection,
            "UPDATE tasks SET lease_losses = lease_losses + 1, fenced = 1 WHERE task = ?1",
            [task.row],
        )
        .map_err(db("expire lease"))?;
        if task.lease_losses < MAX_LEASE_REQUEUES {
            requeue(connection, &task, false)?;
        } else {
            append_display(
                connection,
                &task,
                &format!(
                    "LeaseExpired('the task lost its lease {} times')",
                    task.lease_losses + 1
                ),
            )?;
            fail_for_good(connection, &task)?;
        }
        refresh_job_state(connection, task.job)?;
    }
    Ok(expired.len())
}

/// Adds a line saying why the task failed to its display, within the display limit
/// ([`with_reason`]).
fn append_display(connection: &Connection, task: &TaskRow, line: &str) -> Result<()> {
    let display: String = query_row(
        connection,
        "SELECT display FROM tasks WHERE task = ?1",
        [task.row],
        |row| row.get(0),
    )
    .map_err(db("fail task"))?;
    execute(
        connection,
        "UPDATE tasks SET display = ?2 WHERE task = ?1",
        params![task.row, with_reason(&display, line)],
    )
    .map_err(db("fail task"))?;
    Ok(())
}

fn job_row(connection: &Connection, id: Uuid) -> Result<(i64, i32)> {
    query_row(
        connection,
        "SELECT job, state FROM jobs WHERE uuid = ?1",
        [id.as_bytes()],
        |row| Ok((row.get(0)?, row.get(1)?)),
    )
    .optional()
    .map_err(db("load job"))?
    .ok_or(Error::JobNotFound { id })
}

/// Re-queues a job's failed tasks (removing anything their failed attempts left below
/// them) and resumes the job.
pub(super) fn retry_job(connection: &Connection, id: Uuid) -> Result<i64> {
    let (job, state) = job_row(connection, id)?;
    if state == JobState::Completed as i32 {
        return Ok(0);
    }
    let failed: Vec<i64> = {
        // `state = 4` (FAILED) spelled out, so the partial index `tasks_failed` applies.
        let mut statement = connection
            .prepare_cached("SELECT task FROM tasks WHERE job = ?1 AND state = 4")
            .map_err(db("retry job"))?;
        statement
            .query_map([job], |row| row.get(0))
            .and_then(|rows| rows.collect::<rusqlite::Result<Vec<_>>>())
            .map_err(db("retry job"))?
    };
    for row in &failed {
        remove_descendants(connection, job, *row)?;
        execute(
            connection,
            "UPDATE tasks SET state = ?2, fenced = 0, claimant = NULL, lease_losses = 0,
                             runner_failures = 0
             WHERE task = ?1",
            params![row, QUEUED],
        )
        .map_err(db("retry job"))?;
        counters::move_tasks(connection, job, Some(FAILED), QUEUED, 1)?;
    }
    let halted = state == JobState::Failed as i32 || state == JobState::Canceled as i32;
    if halted {
        execute(
            connection,
            "UPDATE tasks SET job_active = 1 WHERE job = ?1 AND job_active = 0",
            [job],
        )
        .map_err(db("retry job"))?;
    }
    if halted || !failed.is_empty() {
        // A job canceled while its last tasks ran has nothing incomplete left: resumed, it
        // is completed (no later report would ever move it out of RUNNING).
        execute(
            connection,
            "UPDATE jobs SET state = CASE WHEN incomplete_tasks <= 0 THEN ?3 ELSE ?2 END
             WHERE job = ?1",
            params![job, JobState::Running as i32, JobState::Completed as i32],
        )
        .map_err(db("retry job"))?;
    }
    Ok(failed.len() as i64)
}

/// Deletes every descendant of `row` and fixes the counters they held.
fn remove_descendants(connection: &Connection, job: i64, row: i64) -> Result<()> {
    let removed: Vec<(i64, i32)> = {
        let mut statement = connection
            .prepare_cached(
                "WITH RECURSIVE subtree(task) AS (
                     SELECT task FROM tasks WHERE parent = ?1
                     UNION ALL SELECT t.task FROM tasks t JOIN subtree s ON t.parent = s.task)
                 SELECT t.task, t.state FROM tasks t JOIN subtree s ON t.task = s.task",
            )
            .map_err(db("remove subtasks"))?;
        statement
            .query_map([row], |row| Ok((row.get(0)?, row.get(1)?)))
            .and_then(|rows| rows.collect::<rusqlite::Result<Vec<_>>>())
            .map_err(db("remove subtasks"))?
    };
    if removed.is_empty() {
        return Ok(());
    }
    let incomplete = removed
        .iter()
        .filter(|(_, state)| ![SKIPPED, FAILED_OPTIONAL].contains(state))
        .count() as i64;
    let running = removed
        .iter()
        .filter(|(_, state)| *state == RUNNING)
        .count() as i64;
    for (task, _) in &removed {
        execute(connection, "DELETE FROM tasks WHERE task = ?1", [task])
            .map_err(db("remove subtasks"))?;
        execute(
            connection,
            "DELETE FROM task_dependencies WHERE task = ?1 OR depends_on = ?1",
            [task],
        )
        .map_err(db("remove subtasks"))?;
        execute(
            connection,
            "DELETE FROM task_progress WHERE task = ?1",
            [task],
        )
        .map_err(db("remove subtasks"))?;
    }
    execute(
        connection,
        "UPDATE jobs SET total_tasks = total_tasks - ?2, incomplete_tasks = incomplete_tasks - ?3,
         running_tasks = MAX(running_tasks - ?4, 0) WHERE job = ?1",
        params![job, removed.len() as i64, incomplete, running],
    )
    .map_err(db("remove subtasks"))?;
    execute(
        connection,
        "UPDATE tasks SET pending_children = 0, has_children = 0 WHERE task = ?1",
        [row],
    )
    .map_err(db("remove subtasks"))?;
    // Rare (a retry of a task that left subtasks): recounting the job is simpler than
    // subtracting what each removed task held.
    counters::recount(connection, Some(job))
}

/// Cancels a job: nothing queued starts any more; running tasks finish.
pub(super) fn cancel_job(connection: &Connection, id: Uuid) -> Result<()> {
    let (job, state) = job_row(connection, id)?;
    if state == JobState::Completed as i32 {
        return Ok(());
    }
    execute(
        connection,
        "UPDATE jobs SET state = ?2 WHERE job = ?1",
        params![job, JobState::Canceled as i32],
    )
    .map_err(db("cancel job"))?;
    execute(
        connection,
        "UPDATE tasks SET job_active = 0 WHERE job = ?1 AND job_active = 1",
        [job],
    )
    .map_err(db("cancel job"))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use uuid::Uuid;

    use crate::api::limits::MAX_DISPLAY_CHARS;
    use crate::api::workflows_v1::TaskState;
    use crate::server::store::rules::with_reason;
    use crate::server::store::sqlite::SqliteStore;
    use crate::server::store::{
        ClaimRequest, ComputedReport, DEFAULT_CLUSTER_SLUG, Identifier, NewJob, NewTask, Page,
        ReportOutcome, Store,
    };

    fn task(name: &str, index: usize) -> NewTask {
        NewTask {
            id: Uuid::now_v7(),
            identifier: Identifier {
                name: name.to_string(),
                version: "v1.0".to_string(),
                major: 1,
                minor: 0,
            },
            input: format!("{{\"index\": {index}}}").into_bytes(),
            display: name.to_string(),
            cluster: DEFAULT_CLUSTER_SLUG.to_string(),
            max_retries: 0,
            optional: false,
            depends_on: Vec::new(),
        }
    }

    fn runner(name: &str) -> ClaimRequest {
        ClaimRequest {
            cluster: DEFAULT_CLUSTER_SLUG.to_string(),
            identifiers: vec![task(name, 0).identifier],
            claimant: "runner".to_string(),
            lease: Duration::from_secs(60),
        }
    }

    /// A running task that submits 100,000 subtasks in one report, the last of them waiting
    /// for all the others (99,999 dependency edges, some given twice): all are stored with
    /// the report, in submission order, and only the independent ones can run. The time it
    /// took is printed (`--nocapture`), not asserted.
    #[test]
    fn a_reason_is_appended_whole_and_the_display_cut_from_its_head() {
        let reason = "LeaseExpired('the task lost its lease 11 times')";
        assert_eq!(with_reason("Task", reason), format!("Task\n{reason}"));
        assert_eq!(with_reason("", reason), format!("\n{reason}"));

        // Multi-byte characters count as one each, and are never split.
        for filler in ["x", "é", "日", "🦀"] {
            let full = filler.repeat(MAX_DISPLAY_CHARS);
            let display = with_reason(&full, reason);
            assert_eq!(display.chars().count(), MAX_DISPLAY_CHARS, "{filler}");
            assert!(display.ends_with(&format!("\n{reason}")), "{filler}");
            let kept = MAX_DISPLAY_CHARS - reason.chars().count() - 1;
            assert_eq!(display, format!("{}\n{reason}", filler.repeat(kept)));
        }

        // The head goes, the latest lines stay.
        let display = format!("{}\nfirst reason", "a".repeat(MAX_DISPLAY_CHARS - 13));
        let appended = with_reason(&display, "second reason");
        assert_eq!(appended.chars().count(), MAX_DISPLAY_CHARS);
        assert!(appended.ends_with("a\nfirst reason\nsecond reason"));

        // Just fits: nothing is cut.
        let display = "d".repeat(MAX_DISPLAY_CHARS - 7);
        assert_eq!(
            with_reason(&display, "reason"),
            format!("{display}\nreason")
        );

        // A reason at or over the limit by itself is all that is kept, cut to the limit.
        let long = "r".repeat(MAX_DISPLAY_CHARS + 5);
        assert_eq!(with_reason("Task", &long), "r".repeat(MAX_DISPLAY_CHARS));
    }

    #[tokio::test]
    async fn a_report_with_100_000_subtasks_stores_them_all() {
        const SUBTASKS: usize = 100_000;
        let directory = tempfile::tempdir().expect("temp dir");
        let store = SqliteStore::open(directory.path()).expect("open");
        let job = NewJob {
            id: Uuid::now_v7(),
            name: "fan-out".to_string(),
            trace_parent: String::new(),
            tasks: vec![task("FanOut", 0)],
        };
        let job_id = job.id;
        store.submit_job(job).await.expect("submit");
        let (_, root) = store
            .report_and_claim(None, Some(runner("FanOut")))
            .await
            .expect("claim");
        let root = root.expect("the root is claimable");
        let mut subtasks: Vec<NewTask> =
            (0..SUBTASKS - 1).map(|index| task("Leaf", index)).collect();
        let mut gather = task("Gather", SUBTASKS - 1);
        gather.depends_on = (0..SUBTASKS - 1).chain([0, 1, 2]).collect();
        subtasks.push(gather);
        let ids: Vec<Uuid> = subtasks.iter().map(|subtask| subtask.id).collect();
        let report = ComputedReport {
            task_id: root.id,
            claimant: "runner".to_string(),
            display: "FanOut".to_string(),
            progress: Vec::new(),
            subtasks,
        };

        let started = Instant::now();
        let (outcome, _) = store
            .report_and_claim(Some(report), None)
            .await
            .expect("report");
        println!(
            "a report with {SUBTASKS} subtasks and {} dependency edges stored in {:.2} s",
            SUBTASKS - 1,
            started.elapsed().as_secs_f64()
        );

        assert_eq!(outcome, Some(ReportOutcome::Applied(TaskState::Computed)));
        let stats = store.get_job(job_id).await.expect("get job").stats;
        assert_eq!(stats.total_tasks, SUBTASKS as u64 + 1);
        assert_eq!(
            stats.tasks_by_state,
            [
                (TaskState::Queued, SUBTASKS as u64),
                (TaskState::Computed, 1)
            ]
        );
        let page = |after: Option<Uuid>| Page {
            after,
            limit: 2,
            descending: false,
        };
        let first = store
            .list_tasks(job_id, Some(root.id), page(None))
            .await
            .expect("list");
        assert_eq!(
            first.iter().map(|task| task.id).collect::<Vec<_>>(),
            ids[..2]
        );
        let last = store
            .list_tasks(job_id, Some(root.id), page(Some(ids[SUBTASKS - 2])))
            .await
            .expect("list");
        assert_eq!(
            last.iter().map(|task| task.id).collect::<Vec<_>>(),
            ids[SUBTASKS - 1..]
        );

        let (_, gather) = store
            .report_and_claim(None, Some(runner("Gather")))
            .await
            .expect("claim");
        assert!(gather.is_none(), "the gathering task waits for the others");
        let (_, leaf) = store
            .report_and_claim(None, Some(runner("Leaf")))
            .await
            .expect("claim");
        assert_eq!(leaf.expect("a leaf is claimable").id, ids[0]);
    }
}
