//! Tasks on PostgreSQL: submit, claim, report, fail, hand back, leases, retry, cancel. The
//! rules are SQLite's (`../sqlite/tasks.rs` says what each counter means); what differs is
//! how concurrent writers of several replicas are ordered (READ COMMITTED, explicit locks):
//!
//! - an operation locks the tasks it was asked about first (`FOR UPDATE`, ascending
//!   `task`), then the claimed rows, then dependants and parents (each decremented by one
//!   `UPDATE … RETURNING`, so the writer that brings a count to 0 is the one that sees it),
//!   and the job rows last ([`Deltas::flush`]);
//! - a report is applied only by the current claimant ([`rules::is_claimant`]), decided on
//!   the locked row;
//! - claims skip rows another transaction holds (`FOR UPDATE SKIP LOCKED`);
//! - domain outcomes (unknown task or cluster, stale claimant) are found by reads before
//!   anything is written, so they never raise an SQL error.

use std::collections::HashMap;
use std::time::Duration;

use postgres::Row;
use uuid::Uuid;

use super::counters::{self, Deltas};
use super::{Tx, pg};
use crate::api::workflows_v1::{JobState, TaskState};
use crate::server::store::rules::{self, Act, Attempt, with_reason};
use crate::server::store::{
    ClaimRequest, ClaimedTask, ComputedReport, Error, ExecutionStats, FailedReport,
    HandedBackReport, Identifier, Job, MAX_LEASE_REQUEUES, MAX_RUNNER_FAILURE_REQUEUES, NewJob,
    NewTask, Report, ReportOutcome, Result,
};

const QUEUED: i64 = TaskState::Queued as i64;
const RUNNING: i64 = TaskState::Running as i64;
const COMPUTED: i64 = TaskState::Computed as i64;
const FAILED: i64 = TaskState::Failed as i64;
const SKIPPED: i64 = TaskState::Skipped as i64;
const FAILED_OPTIONAL: i64 = TaskState::FailedOptional as i64;

/// The key of the advisory lock one reaper at a time holds across replicas.
const REAPER_LOCK: i64 = 0x7469_6c65_626f_7802;

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

/// Checks what could refuse `tasks` before anything is written: their clusters exist
/// (locked against deletion until the commit) and their dependencies are in range.
/// Answers the clusters, each once.
fn check_tasks(tx: &mut Tx<'_>, tasks: &[NewTask]) -> Result<Vec<String>> {
    let mut clusters: Vec<String> = Vec::new();
    for task in tasks {
        // Tasks mostly share one or two clusters: a short list beats hashing each name.
        if !clusters.contains(&task.cluster) {
            clusters.push(task.cluster.clone());
        }
        if let Some(dependency) = task.depends_on.iter().find(|index| **index >= tasks.len()) {
            return Err(Error::Corrupt(format!(
                "dependency index {dependency} out of range"
            )));
        }
    }
    if clusters.is_empty() {
        return Ok(clusters);
    }
    let found: Vec<String> = tx
        .query(
            "SELECT slug FROM clusters WHERE slug = ANY($1) ORDER BY slug FOR KEY SHARE",
            &[&clusters],
        )
        .map_err(pg("check cluster"))?
        .iter()
        .map(|row| row.get(0))
        .collect();
    if let Some(missing) = clusters.iter().find(|slug| !found.contains(slug)) {
        return Err(Error::ClusterNotFound {
            slug: missing.clone(),
        });
    }
    Ok(clusters)
}

/// Inserts a job with its root tasks; a job id already stored changes nothing (a client
/// retrying a submission whose answer it lost gets the one job).
pub(super) fn insert_job(tx: &mut Tx<'_>, job: &NewJob, now: i64) -> Result<()> {
    let clusters = check_tasks(tx, &job.tasks)?;
    let inserted = tx
        .query_opt(
            "INSERT INTO jobs (uuid, name, trace_parent, state, submitted_at, total_tasks, incomplete_tasks)
             VALUES ($1, $2, $3, $4, $5, 0, 0) ON CONFLICT (uuid) DO NOTHING RETURNING job",
            &[&job.id, &job.name, &job.trace_parent, &(JobState::Submitted as i64), &now],
        )
        .map_err(pg("insert job"))?;
    let Some(inserted) = inserted else {
        return Ok(());
    };
    let placement = Placement {
        job: inserted.get(0),
        parent: None,
        scope: None,
        skipped: false,
        job_active: true,
    };
    let mut deltas = Deltas::default();
    insert_tasks(tx, &mut deltas, &placement, &job.tasks, &clusters, now)?;
    deltas.flush(tx)
}

/// Inserts tasks under `placement` in bulk, with their dependencies (checked by
/// [`check_tasks`]); returns how many count as incomplete (all unless skipped).
fn insert_tasks(
    tx: &mut Tx<'_>,
    deltas: &mut Deltas,
    placement: &Placement,
    tasks: &[NewTask],
    clusters: &[String],
    now: i64,
) -> Result<i64> {
    if tasks.is_empty() {
        return Ok(0);
    }
    counters::add_clusters(tx, placement.job, clusters)?;
    let state = if placement.skipped { SKIPPED } else { QUEUED };
    let ids: Vec<Uuid> = tasks.iter().map(|task| task.id).collect();
    let names: Vec<&str> = tasks.iter().map(|t| t.identifier.name.as_str()).collect();
    let versions: Vec<&str> = tasks
        .iter()
        .map(|t| t.identifier.version.as_str())
        .collect();
    let majors: Vec<i64> = tasks.iter().map(|t| t.identifier.major as i64).collect();
    let minors: Vec<i64> = tasks.iter().map(|t| t.identifier.minor as i64).collect();
    let task_clusters: Vec<&str> = tasks.iter().map(|t| t.cluster.as_str()).collect();
    let inputs: Vec<&[u8]> = tasks.iter().map(|t| t.input.as_slice()).collect();
    let displays: Vec<&str> = tasks.iter().map(|t| t.display.as_str()).collect();
    let max_retries: Vec<i64> = tasks.iter().map(|t| t.max_retries).collect();
    let optional: Vec<bool> = tasks.iter().map(|t| t.optional).collect();
    let pending: Vec<i64> = tasks
        .iter()
        .map(|task| {
            if placement.skipped {
                0
            } else {
                let mut distinct = task.depends_on.clone();
                distinct.sort_unstable();
                distinct.dedup();
                distinct.len() as i64
            }
        })
        .collect();
    // Identities follow the order of the rows given: submission order is `task` order.
    let inserted = tx
        .query(
            "INSERT INTO tasks (uuid, job, parent, name, version, major, minor, cluster, input, display, state,
                                max_retries, optional, optional_scope, pending_deps, job_active, submitted_at)
             SELECT u.uuid, $1, $2, u.name, u.version, u.major, u.minor, u.cluster, u.input, u.display, $3,
                    u.max_retries, u.optional, $4, u.pending, $5, $6
             FROM unnest($7::uuid[], $8::text[], $9::text[], $10::bigint[], $11::bigint[], $12::text[],
                         $13::bytea[], $14::text[], $15::bigint[], $16::boolean[], $17::bigint[])
                  WITH ORDINALITY AS u(uuid, name, version, major, minor, cluster, input, display,
                                       max_retries, optional, pending, position)
             ORDER BY u.position
             RETURNING uuid, task",
            &[
                &placement.job,
                &placement.parent,
                &state,
                &placement.scope,
                &placement.job_active,
                &now,
                &ids,
                &names,
                &versions,
                &majors,
                &minors,
                &task_clusters,
                &inputs,
                &displays,
                &max_retries,
                &optional,
                &pending,
            ],
        )
        .map_err(pg("insert task"))?;
    let rows: HashMap<Uuid, i64> = inserted
        .iter()
        .map(|row| (row.get(0), row.get(1)))
        .collect();
    let row_of = |index: usize| -> Result<i64> {
        rows.get(&tasks[index].id)
            .copied()
            .ok_or_else(|| Error::Corrupt(format!("task {} was not inserted", tasks[index].id)))
    };
    let mut depends_on = Vec::new();
    let mut dependants = Vec::new();
    for (index, task) in tasks.iter().enumerate() {
        for &dependency in &task.depends_on {
            depends_on.push(row_of(dependency)?);
            dependants.push(row_of(index)?);
        }
    }
    if !depends_on.is_empty() {
        tx.execute(
            "INSERT INTO task_dependencies (depends_on, task)
             SELECT * FROM unnest($1::bigint[], $2::bigint[]) ON CONFLICT DO NOTHING",
            &[&depends_on, &dependants],
        )
        .map_err(pg("insert dependency"))?;
    }
    let count = tasks.len() as i64;
    let incomplete = if placement.skipped { 0 } else { count };
    deltas.add_tasks(placement.job, count, incomplete);
    deltas.move_tasks(placement.job, None, state, count);
    if let Some(parent) = placement.parent {
        tx.execute(
            "UPDATE tasks SET has_children = true, pending_children = pending_children + $2
             WHERE task = $1",
            &[&parent, &incomplete],
        )
        .map_err(pg("count children"))?;
    }
    Ok(incomplete)
}

/// The fields of a task row the logic here needs.
struct TaskRow {
    row: i64,
    job: i64,
    parent: Option<i64>,
    state: i64,
    retry_count: i64,
    max_retries: i64,
    optional: bool,
    optional_scope: Option<i64>,
    scope_failed: bool,
    claimant: Option<String>,
    fenced: bool,
    lease_losses: i64,
    runner_failures: i64,
    attempt_started_at: Option<i64>,
    display: String,
}

const TASK_ROW_COLUMNS: &str = "task, job, parent, state, retry_count, max_retries, optional, optional_scope, \
                                scope_failed, claimant, fenced, lease_losses, runner_failures, attempt_started_at, \
                                display";

fn map_task_row(row: &Row) -> TaskRow {
    TaskRow {
        row: row.get(0),
        job: row.get(1),
        parent: row.get(2),
        state: row.get(3),
        retry_count: row.get(4),
        max_retries: row.get(5),
        optional: row.get(6),
        optional_scope: row.get(7),
        scope_failed: row.get(8),
        claimant: row.get(9),
        fenced: row.get(10),
        lease_losses: row.get(11),
        runner_failures: row.get(12),
        attempt_started_at: row.get(13),
        display: row.get(14),
    }
}

/// The task `id`, its row locked until the commit.
fn lock_task(tx: &mut Tx<'_>, id: Uuid) -> Result<TaskRow> {
    tx.query_opt(
        &format!("SELECT {TASK_ROW_COLUMNS} FROM tasks WHERE uuid = $1 FOR UPDATE"),
        &[&id],
    )
    .map_err(pg("load task"))?
    .map(|row| map_task_row(&row))
    .ok_or(Error::TaskNotFound { id })
}

fn task_state(state: i64) -> TaskState {
    TaskState::try_from(state as i32).unwrap_or(TaskState::Unspecified)
}

fn is_claimant(task: &TaskRow, caller: &str, act: Act) -> bool {
    let attempt = Attempt {
        running: task.state == RUNNING,
        claimant: task.claimant.as_deref(),
        fenced: task.fenced,
    };
    rules::is_claimant(attempt, caller, act)
}

/// A reported task, locked, with whether its job (locked too) still hands tasks out.
struct Locked {
    task: TaskRow,
    job_active: bool,
}

/// The start of applying any report: the reported task, locked, when `claimant` is the
/// claimant of its attempt; otherwise the stale outcome to answer, and nothing changed.
fn lock_reported(
    tx: &mut Tx<'_>,
    task_id: Uuid,
    claimant: &str,
) -> Result<std::result::Result<Locked, ReportOutcome>> {
    let task = lock_task(tx, task_id)?;
    if !is_claimant(&task, claimant, Act::Report) {
        return Ok(Err(ReportOutcome::Stale(task_state(task.state))));
    }
    // The job's row, before anything of the job is read or decided: a report reads the
    // job's state (are new subtasks active?) and its optional scopes, while a failure on
    // another writer deactivates the job's tasks or skips a scope. Holding the job row
    // orders the two, so neither decides on what the other is changing.
    let row = tx
        .query_one(
            "SELECT state NOT IN ($2, $3) FROM jobs WHERE job = $1 FOR NO KEY UPDATE",
            &[
                &task.job,
                &(JobState::Failed as i64),
                &(JobState::Canceled as i64),
            ],
        )
        .map_err(pg("lock job"))?;
    Ok(Ok(Locked {
        task,
        job_active: row.get(0),
    }))
}

/// What the statement that ends an attempt sets besides: the report's new state and
/// display, and the fence of a hand-back, so a report ends its attempt in one statement.
#[derive(Default)]
struct Ending<'a> {
    state: Option<i64>,
    display: Option<&'a str>,
    fence: bool,
}

/// Ends the current attempt of a running task, with `ending`: accounts its compute time,
/// and the job's running count and attempt times.
fn stop_attempt(
    tx: &mut Tx<'_>,
    deltas: &mut Deltas,
    task: &TaskRow,
    now: i64,
    ending: Ending<'_>,
) -> Result<()> {
    let elapsed = task
        .attempt_started_at
        .map(|start| (now - start).max(0))
        .unwrap_or(0);
    tx.execute(
        "UPDATE tasks SET stopped_at = $2, compute_ms = compute_ms + $3, lease_expires_at = NULL,
                          attempt_started_at = NULL, state = COALESCE($4, state),
                          display = COALESCE($5, display), fenced = fenced OR $6
         WHERE task = $1",
        &[
            &task.row,
            &now,
            &elapsed,
            &ending.state,
            &ending.display,
            &ending.fence,
        ],
    )
    .map_err(pg("stop attempt"))?;
    deltas.stop_attempt(task.job, task.attempt_started_at.unwrap_or(0), elapsed);
    Ok(())
}

/// Moves a task from state `from` to `to`.
fn set_state(
    tx: &mut Tx<'_>,
    deltas: &mut Deltas,
    task: &TaskRow,
    from: i64,
    to: i64,
) -> Result<()> {
    tx.execute(
        "UPDATE tasks SET state = $2 WHERE task = $1",
        &[&task.row, &to],
    )
    .map_err(pg("set task state"))?;
    deltas.move_tasks(task.job, Some(from), to, 1);
    Ok(())
}

/// Marks `row` (of `job`, under `parent`) complete and propagates: dependants lose a
/// pending dependency, the parent loses a pending child (and completes when computed with
/// none left), the job is refreshed (completed when nothing is incomplete).
fn complete(
    tx: &mut Tx<'_>,
    deltas: &mut Deltas,
    job: i64,
    row: i64,
    parent: Option<i64>,
) -> Result<()> {
    let mut next = Some((row, parent));
    while let Some((row, parent)) = next.take() {
        tx.execute(
            "UPDATE tasks SET pending_deps = pending_deps - 1
             WHERE task IN (SELECT task FROM task_dependencies WHERE depends_on = $1)",
            &[&row],
        )
        .map_err(pg("release dependants"))?;
        deltas.complete_one(job);
        if let Some(parent) = parent {
            // One statement: of siblings completing at once on several replicas, the one
            // that brings the count to 0 is the one that sees it.
            let updated = tx
                .query_one(
                    "UPDATE tasks SET pending_children = pending_children - 1 WHERE task = $1
                     RETURNING state, pending_children, parent",
                    &[&parent],
                )
                .map_err(pg("complete task"))?;
            let (state, pending, grandparent): (i64, i64, Option<i64>) =
                (updated.get(0), updated.get(1), updated.get(2));
            if state == COMPUTED && pending == 0 {
                next = Some((parent, grandparent));
            }
        }
    }
    deltas.refresh(job);
    Ok(())
}

/// Applies a computed report: the task is computed, its progress stored, its subtasks
/// inserted as its children.
pub(super) fn complete_task(
    tx: &mut Tx<'_>,
    report: &ComputedReport,
    now: i64,
) -> Result<ReportOutcome> {
    let Locked { task, job_active } = match lock_reported(tx, report.task_id, &report.claimant)? {
        Ok(locked) => locked,
        Err(stale) => return Ok(stale),
    };
    let clusters = check_tasks(tx, &report.subtasks)?;
    let mut deltas = Deltas::default();
    stop_attempt(
        tx,
        &mut deltas,
        &task,
        now,
        Ending {
            state: Some(COMPUTED),
            display: Some(&report.display),
            fence: false,
        },
    )?;
    deltas.move_tasks(task.job, Some(RUNNING), COMPUTED, 1);
    counters::replace_progress(tx, task.job, task.row, &report.progress)?;
    let scope = if task.optional {
        Some(task.row)
    } else {
        task.optional_scope
    };
    let skipped = task.scope_failed
        || match scope {
            Some(scope) if scope != task.row => tx
                .query_one("SELECT scope_failed FROM tasks WHERE task = $1", &[&scope])
                .map_err(pg("load task"))?
                .get(0),
            _ => false,
        };
    // Tasks of a failed or canceled job are not handed out: neither are its new ones
    // (`job_active`, read with the job's row locked).
    let placement = Placement {
        job: task.job,
        parent: Some(task.row),
        scope,
        skipped,
        job_active,
    };
    let incomplete = insert_tasks(
        tx,
        &mut deltas,
        &placement,
        &report.subtasks,
        &clusters,
        now,
    )?;
    if incomplete == 0 {
        complete(tx, &mut deltas, task.job, task.row, task.parent)?;
    } else {
        deltas.refresh(task.job);
    }
    deltas.flush(tx)?;
    Ok(ReportOutcome::Applied(TaskState::Computed))
}

/// Applies a failure report.
pub(super) fn fail_task(tx: &mut Tx<'_>, report: &FailedReport, now: i64) -> Result<ReportOutcome> {
    let task = match lock_reported(tx, report.task_id, &report.claimant)? {
        Ok(locked) => locked.task,
        Err(stale) => return Ok(stale),
    };
    let mut deltas = Deltas::default();
    stop_attempt(
        tx,
        &mut deltas,
        &task,
        now,
        Ending {
            display: Some(&report.display),
            ..Ending::default()
        },
    )?;
    if !report.progress.is_empty() {
        counters::replace_progress(tx, task.job, task.row, &report.progress)?;
    }
    let state = if !report.workflow_error {
        tx.execute(
            "UPDATE tasks SET runner_failures = runner_failures + 1 WHERE task = $1",
            &[&task.row],
        )
        .map_err(pg("fail task"))?;
        if task.runner_failures < MAX_RUNNER_FAILURE_REQUEUES {
            requeue(tx, &mut deltas, &task, false)?;
            QUEUED
        } else {
            let reason = format!(
                "RunnerFailed('the runners could not run the task {} times')",
                task.runner_failures + 1
            );
            append_reason(tx, &task, &report.display, &reason)?;
            fail_for_good(tx, &mut deltas, &task)?
        }
    } else if task.retry_count < task.max_retries {
        requeue(tx, &mut deltas, &task, true)?;
        QUEUED
    } else {
        fail_for_good(tx, &mut deltas, &task)?
    };
    deltas.refresh(task.job);
    deltas.flush(tx)?;
    Ok(ReportOutcome::Applied(task_state(state)))
}

/// Applies a hand-back: queued again with the reported display, counting neither a retry
/// nor a runner failure, and fenced (see [`rules::is_claimant`]).
fn hand_back(tx: &mut Tx<'_>, report: &HandedBackReport, now: i64) -> Result<ReportOutcome> {
    let task = match lock_reported(tx, report.task_id, &report.claimant)? {
        Ok(locked) => locked.task,
        Err(stale) => return Ok(stale),
    };
    let mut deltas = Deltas::default();
    stop_attempt(
        tx,
        &mut deltas,
        &task,
        now,
        Ending {
            state: None,
            display: Some(&report.display),
            fence: true,
        },
    )?;
    requeue(tx, &mut deltas, &task, false)?;
    deltas.refresh(task.job);
    deltas.flush(tx)?;
    Ok(ReportOutcome::Applied(TaskState::Queued))
}

/// One report of a batch: its own outcome, or its own error (nothing of it written); only a
/// lost connection or a conflict, which the whole operation meets, fails the batch.
pub(super) fn apply_report(
    tx: &mut Tx<'_>,
    report: &Report,
    now: i64,
) -> Result<Result<ReportOutcome>> {
    // Its own savepoint, as SQLite's `in_item_savepoint`: a report the database refuses (a
    // display holding NUL, which PostgreSQL text cannot) fails alone, and the other reports
    // and claims of the call stand; otherwise a runner would send the same call forever.
    tx.batch_execute("SAVEPOINT report")
        .map_err(pg("savepoint"))?;
    let result = match report {
        Report::Computed(report) => complete_task(tx, report, now),
        Report::Failed(report) => fail_task(tx, report, now),
        Report::HandedBack(report) => hand_back(tx, report, now),
    };
    match result {
        Ok(outcome) => {
            tx.batch_execute("RELEASE SAVEPOINT report")
                .map_err(pg("savepoint"))?;
            Ok(Ok(outcome))
        }
        // The connection, or a conflict the whole operation runs again for.
        Err(error @ (Error::Unavailable { .. } | Error::Closed)) => Err(error),
        Err(error) if super::is_conflict(&error) => Err(error),
        Err(error) => {
            tx.batch_execute("ROLLBACK TO SAVEPOINT report; RELEASE SAVEPOINT report")
                .map_err(pg("savepoint"))?;
            Ok(Err(error))
        }
    }
}

/// Queues a task whose attempt ended (it was running) again.
fn requeue(tx: &mut Tx<'_>, deltas: &mut Deltas, task: &TaskRow, count_retry: bool) -> Result<()> {
    tx.execute(
        "UPDATE tasks SET state = $2, retry_count = retry_count + $3 WHERE task = $1",
        &[&task.row, &QUEUED, &i64::from(count_retry)],
    )
    .map_err(pg("requeue task"))?;
    deltas.move_tasks(task.job, Some(RUNNING), QUEUED, 1);
    Ok(())
}

/// Sets the display of a task failing for good to `display` with `reason` appended.
fn append_reason(tx: &mut Tx<'_>, task: &TaskRow, display: &str, reason: &str) -> Result<()> {
    tx.execute(
        "UPDATE tasks SET display = $2 WHERE task = $1",
        &[&task.row, &with_reason(display, reason)],
    )
    .map_err(pg("fail task"))?;
    Ok(())
}

/// A task (whose attempt ended) failed with no retries left: failed-optional inside an
/// optional scope (skipping what is still queued in that scope), otherwise failed, which
/// fails the job.
fn fail_for_good(tx: &mut Tx<'_>, deltas: &mut Deltas, task: &TaskRow) -> Result<i64> {
    if task.optional {
        set_state(tx, deltas, task, RUNNING, FAILED_OPTIONAL)?;
        complete(tx, deltas, task.job, task.row, task.parent)?;
        return Ok(FAILED_OPTIONAL);
    }
    if let Some(scope) = task.optional_scope {
        set_state(tx, deltas, task, RUNNING, FAILED_OPTIONAL)?;
        skip_scope(tx, deltas, task.job, scope)?;
        complete(tx, deltas, task.job, task.row, task.parent)?;
        return Ok(FAILED_OPTIONAL);
    }
    set_state(tx, deltas, task, RUNNING, FAILED)?;
    deltas.fail(task.job);
    tx.execute(
        "UPDATE tasks SET job_active = false WHERE job = $1 AND job_active",
        &[&task.job],
    )
    .map_err(pg("fail job"))?;
    Ok(FAILED)
}

/// Marks the optional scope rooted at `scope` failed: every queued task in its subtree is
/// skipped (and completes), and optional tasks inside it remember the failure.
fn skip_scope(tx: &mut Tx<'_>, deltas: &mut Deltas, job: i64, scope: i64) -> Result<()> {
    let subtree = tx
        .query(
            "WITH RECURSIVE subtree(task) AS (
                 SELECT $1::bigint UNION ALL SELECT t.task FROM tasks t JOIN subtree s ON t.parent = s.task)
             SELECT t.task, t.optional FROM tasks t JOIN subtree s ON t.task = s.task ORDER BY t.task",
            &[&scope],
        )
        .map_err(pg("skip scope"))?;
    let mut scopes = vec![scope];
    let mut queued = Vec::new();
    for row in &subtree {
        let (task, optional): (i64, bool) = (row.get(0), row.get(1));
        if optional {
            scopes.push(task);
        }
        if task != scope {
            queued.push(task);
        }
    }
    tx.execute(
        "UPDATE tasks SET scope_failed = true WHERE task = ANY($1)",
        &[&scopes],
    )
    .map_err(pg("skip scope"))?;
    // Only what is still queued once locked: a task claimed meanwhile by another replica
    // runs to its end.
    let skipped = tx
        .query(
            "UPDATE tasks SET state = $2 WHERE task = ANY($1) AND state = $3 RETURNING task, parent",
            &[&queued, &SKIPPED, &QUEUED],
        )
        .map_err(pg("skip scope"))?;
    let mut skipped: Vec<(i64, Option<i64>)> =
        skipped.iter().map(|row| (row.get(0), row.get(1))).collect();
    skipped.sort_unstable();
    for (task, parent) in skipped {
        deltas.move_tasks(job, Some(QUEUED), SKIPPED, 1);
        complete(tx, deltas, job, task, parent)?;
    }
    Ok(())
}

/// Claims up to `count` of the oldest runnable tasks the runner's identifiers can run, in
/// one go: per identifier one locking read that skips rows other writers hold, one update
/// of the chosen rows, the job counters once per job.
pub(super) fn claim_tasks(
    tx: &mut Tx<'_>,
    claim: &ClaimRequest,
    count: usize,
    now: i64,
) -> Result<Vec<ClaimedTask>> {
    if count == 0 {
        return Ok(Vec::new());
    }
    let limit = count as i64;
    let mut candidates: Vec<(i64, &Identifier)> = Vec::new();
    for identifier in rules::best_identifiers(&claim.identifiers) {
        let rows = tx
            .query(
                "SELECT task FROM tasks
                 WHERE cluster = $1 AND name = $2 AND major = $3 AND minor <= $4
                   AND state = 1 AND pending_deps = 0 AND job_active
                 ORDER BY task LIMIT $5 FOR UPDATE SKIP LOCKED",
                &[
                    &claim.cluster,
                    &identifier.name,
                    &(identifier.major as i64),
                    &(identifier.minor as i64),
                    &limit,
                ],
            )
            .map_err(pg("claim task"))?;
        candidates.extend(rows.iter().map(|row| (row.get::<_, i64>(0), identifier)));
    }
    candidates.sort_unstable_by_key(|(task, _)| *task);
    candidates.truncate(count);
    if candidates.is_empty() {
        return Ok(Vec::new());
    }
    let chosen: Vec<i64> = candidates.iter().map(|(task, _)| *task).collect();
    let lease_millis = claim.lease.as_millis() as i64;
    let claimed = tx
        .query(
            "UPDATE tasks SET state = $2, claimant = $3, lease_expires_at = $4, attempt_started_at = $5,
                              started_at = COALESCE(started_at, $5), stopped_at = NULL
             WHERE task = ANY($1)
             RETURNING task, job, started_at, uuid, input, display, parent, retry_count,
                       (SELECT p.uuid FROM tasks p WHERE p.task = tasks.parent)",
            &[&chosen, &RUNNING, &claim.claimant, &(now + lease_millis), &now],
        )
        .map_err(pg("claim task"))?;
    let mut deltas = Deltas::default();
    for row in &claimed {
        let (job, started_at): (i64, i64) = (row.get(1), row.get(2));
        deltas.start_attempts(job, 1, now, started_at);
        deltas.move_tasks(job, Some(QUEUED), RUNNING, 1);
    }
    deltas.flush(tx)?;
    let mut depends_on: HashMap<i64, Vec<Uuid>> = HashMap::new();
    for row in tx
        .query(
            "SELECT d.task, t.uuid FROM task_dependencies d JOIN tasks t ON t.task = d.depends_on
             WHERE d.task = ANY($1) ORDER BY d.task, d.depends_on",
            &[&chosen],
        )
        .map_err(pg("load claimed task"))?
    {
        depends_on.entry(row.get(0)).or_default().push(row.get(1));
    }
    let jobs: Vec<i64> = claimed.iter().map(|row| row.get(1)).collect();
    let mut headers: HashMap<i64, Job> = HashMap::new();
    for row in tx
        .query(
            "SELECT job, uuid, name, trace_parent, state, submitted_at, total_tasks
             FROM jobs WHERE job = ANY($1)",
            &[&jobs],
        )
        .map_err(pg("get job"))?
    {
        headers.insert(
            row.get(0),
            Job {
                id: row.get(1),
                name: row.get(2),
                trace_parent: row.get(3),
                state: JobState::try_from(row.get::<_, i64>(4) as i32)
                    .unwrap_or(JobState::Unspecified),
                submitted_at: row.get(5),
                progress: Vec::new(),
                stats: ExecutionStats {
                    total_tasks: row.get::<_, i64>(6).max(0) as u64,
                    ..ExecutionStats::default()
                },
            },
        );
    }
    let identifiers: HashMap<i64, &Identifier> = candidates.into_iter().collect();
    let mut tasks: Vec<(i64, ClaimedTask)> = Vec::with_capacity(claimed.len());
    for row in &claimed {
        let task: i64 = row.get(0);
        let job: i64 = row.get(1);
        let identifier = identifiers
            .get(&task)
            .map(|identifier| (*identifier).clone())
            .ok_or_else(|| Error::Corrupt(format!("claimed task row {task} was not chosen")))?;
        let job = headers
            .get(&job)
            .cloned()
            .ok_or_else(|| Error::Corrupt(format!("job row {job} of a claimed task is missing")))?;
        tasks.push((
            task,
            ClaimedTask {
                id: row.get(3),
                identifier,
                input: row.get(4),
                display: row.get(5),
                parent_id: row.get::<_, Option<Uuid>>(8),
                depends_on: depends_on.remove(&task).unwrap_or_default(),
                retry_count: row.get(7),
                lease: claim.lease,
                job,
            },
        ));
    }
    tasks.sort_unstable_by_key(|(task, _)| *task);
    Ok(tasks.into_iter().map(|(_, task)| task).collect())
}

/// Extends the leases of running tasks; `None` for a task not running, not `caller`'s, or
/// gone (its job was retried away).
pub(super) fn extend_leases(
    tx: &mut Tx<'_>,
    leases: &[(Uuid, Duration)],
    caller: &str,
    now: i64,
) -> Result<Vec<Option<Duration>>> {
    let ids: Vec<Uuid> = leases.iter().map(|(id, _)| *id).collect();
    let rows: HashMap<Uuid, TaskRow> = tx
        .query(
            &format!(
                "SELECT uuid, {TASK_ROW_COLUMNS} FROM tasks WHERE uuid = ANY($1) ORDER BY task FOR UPDATE"
            ),
            &[&ids],
        )
        .map_err(pg("extend lease"))?
        .iter()
        .map(|row| {
            let task = TaskRow {
                row: row.get(1),
                job: row.get(2),
                parent: row.get(3),
                state: row.get(4),
                retry_count: row.get(5),
                max_retries: row.get(6),
                optional: row.get(7),
                optional_scope: row.get(8),
                scope_failed: row.get(9),
                claimant: row.get(10),
                fenced: row.get(11),
                lease_losses: row.get(12),
                runner_failures: row.get(13),
                attempt_started_at: row.get(14),
                display: row.get(15),
            };
            (row.get(0), task)
        })
        .collect();
    let mut extended = Vec::with_capacity(leases.len());
    for (id, lease) in leases {
        match rows.get(id) {
            Some(task) if is_claimant(task, caller, Act::Extend) => {
                tx.execute(
                    "UPDATE tasks SET lease_expires_at = $2 WHERE task = $1",
                    &[&task.row, &(now + lease.as_millis() as i64)],
                )
                .map_err(pg("extend lease"))?;
                extended.push(Some(*lease));
            }
            _ => extended.push(None),
        }
    }
    Ok(extended)
}

/// Handles running tasks whose lease ended: re-queued (and fenced) up to
/// `MAX_LEASE_REQUEUES` times, then failed. Safe with several replicas reaping at once:
/// one holds the reaper's advisory lock (the others answer 0), and an expired row another
/// writer holds (a report, an extension) is skipped, then re-checked once it is free.
pub(super) fn expire_leases(tx: &mut Tx<'_>, now: i64) -> Result<usize> {
    let reaper: bool = tx
        .query_one("SELECT pg_try_advisory_xact_lock($1)", &[&REAPER_LOCK])
        .map_err(pg("expire leases"))?
        .get(0);
    if !reaper {
        return Ok(0);
    }
    let expired: Vec<TaskRow> = tx
        .query(
            &format!(
                "SELECT {TASK_ROW_COLUMNS} FROM tasks WHERE state = 2 AND lease_expires_at < $1
                 ORDER BY task FOR UPDATE SKIP LOCKED"
            ),
            &[&now],
        )
        .map_err(pg("expire leases"))?
        .iter()
        .map(map_task_row)
        .collect();
    let mut deltas = Deltas::default();
    for task in &expired {
        stop_attempt(tx, &mut deltas, task, now, Ending::default())?;
        tx.execute(
            "UPDATE tasks SET lease_losses = lease_losses + 1, fenced = true WHERE task = $1",
            &[&task.row],
        )
        .map_err(pg("expire lease"))?;
        if task.lease_losses < MAX_LEASE_REQUEUES {
            requeue(tx, &mut deltas, task, false)?;
        } else {
            let reason = format!(
                "LeaseExpired('the task lost its lease {} times')",
                task.lease_losses + 1
            );
            append_reason(tx, task, &task.display, &reason)?;
            fail_for_good(tx, &mut deltas, task)?;
        }
        deltas.refresh(task.job);
    }
    deltas.flush(tx)?;
    Ok(expired.len())
}

/// The job's row and state, locked: a retry or a cancel decides on the state it read, so a
/// completion on another replica must wait for it (or it for the completion). Rare calls,
/// so taking the job before its tasks (against the usual order) costs at most a retried
/// deadlock.
fn job_row(tx: &mut Tx<'_>, id: Uuid) -> Result<(i64, i64)> {
    tx.query_opt(
        "SELECT job, state FROM jobs WHERE uuid = $1 FOR UPDATE",
        &[&id],
    )
    .map_err(pg("load job"))?
    .map(|row| (row.get(0), row.get(1)))
    .ok_or(Error::JobNotFound { id })
}

/// Re-queues a job's failed tasks (removing anything their failed attempts left below
/// them) and resumes the job.
pub(super) fn retry_job(tx: &mut Tx<'_>, id: Uuid) -> Result<i64> {
    let (job, state) = job_row(tx, id)?;
    if state == JobState::Completed as i64 {
        return Ok(0);
    }
    let failed: Vec<i64> = tx
        .query(
            "SELECT task FROM tasks WHERE job = $1 AND state = 4 ORDER BY task FOR UPDATE",
            &[&job],
        )
        .map_err(pg("retry job"))?
        .iter()
        .map(|row| row.get(0))
        .collect();
    let mut removed_any = false;
    for row in &failed {
        removed_any |= remove_descendants(tx, job, *row)?;
    }
    tx.execute(
        "UPDATE tasks SET state = $2, fenced = false, claimant = NULL, lease_losses = 0,
                          runner_failures = 0
         WHERE task = ANY($1)",
        &[&failed, &QUEUED],
    )
    .map_err(pg("retry job"))?;
    let halted = state == JobState::Failed as i64 || state == JobState::Canceled as i64;
    if halted {
        tx.execute(
            "UPDATE tasks SET job_active = true WHERE job = $1 AND NOT job_active",
            &[&job],
        )
        .map_err(pg("retry job"))?;
    }
    if removed_any {
        // Rare (a retry of a task that left subtasks): recounting the job is simpler than
        // subtracting what each removed task held.
        counters::recount(tx, job)?;
    } else if !failed.is_empty() {
        let mut deltas = Deltas::default();
        deltas.move_tasks(job, Some(FAILED), QUEUED, failed.len() as i64);
        deltas.flush(tx)?;
    }
    if halted || !failed.is_empty() {
        // A job canceled while its last tasks ran has nothing incomplete left: resumed, it
        // is completed (no later report would ever move it out of RUNNING).
        tx.execute(
            "UPDATE jobs SET state = CASE WHEN incomplete_tasks <= 0 THEN $3::bigint ELSE $2::bigint END
             WHERE job = $1",
            &[
                &job,
                &(JobState::Running as i64),
                &(JobState::Completed as i64),
            ],
        )
        .map_err(pg("retry job"))?;
    }
    Ok(failed.len() as i64)
}

/// Deletes every descendant of `row` and fixes the job's totals they held; answers whether
/// there were any (the caller recounts the job's other counters).
fn remove_descendants(tx: &mut Tx<'_>, job: i64, row: i64) -> Result<bool> {
    let removed: Vec<(i64, i64)> = tx
        .query(
            "WITH RECURSIVE subtree(task) AS (
                 SELECT task FROM tasks WHERE parent = $1
                 UNION ALL SELECT t.task FROM tasks t JOIN subtree s ON t.parent = s.task)
             SELECT t.task, t.state FROM tasks t JOIN subtree s ON t.task = s.task
             ORDER BY t.task FOR UPDATE OF t",
            &[&row],
        )
        .map_err(pg("remove subtasks"))?
        .iter()
        .map(|row| (row.get(0), row.get(1)))
        .collect();
    if removed.is_empty() {
        return Ok(false);
    }
    let incomplete = removed
        .iter()
        .filter(|(_, state)| ![SKIPPED, FAILED_OPTIONAL].contains(state))
        .count() as i64;
    let running = removed
        .iter()
        .filter(|(_, state)| *state == RUNNING)
        .count() as i64;
    let tasks: Vec<i64> = removed.iter().map(|(task, _)| *task).collect();
    for sql in [
        "DELETE FROM tasks WHERE task = ANY($1)",
        "DELETE FROM task_dependencies WHERE task = ANY($1) OR depends_on = ANY($1)",
        "DELETE FROM task_progress WHERE task = ANY($1)",
    ] {
        tx.execute(sql, &[&tasks]).map_err(pg("remove subtasks"))?;
    }
    tx.execute(
        "UPDATE tasks SET pending_children = 0, has_children = false WHERE task = $1",
        &[&row],
    )
    .map_err(pg("remove subtasks"))?;
    tx.execute(
        "UPDATE jobs SET total_tasks = total_tasks - $2, incomplete_tasks = incomplete_tasks - $3,
                         running_tasks = GREATEST(running_tasks - $4, 0) WHERE job = $1",
        &[&job, &(removed.len() as i64), &incomplete, &running],
    )
    .map_err(pg("remove subtasks"))?;
    Ok(true)
}

/// Cancels a job: nothing queued starts any more; running tasks finish.
pub(super) fn cancel_job(tx: &mut Tx<'_>, id: Uuid) -> Result<()> {
    let (job, state) = job_row(tx, id)?;
    if state == JobState::Completed as i64 {
        return Ok(());
    }
    tx.execute(
        "UPDATE tasks SET job_active = false WHERE job = $1 AND job_active",
        &[&job],
    )
    .map_err(pg("cancel job"))?;
    tx.execute(
        "UPDATE jobs SET state = $2 WHERE job = $1",
        &[&job, &(JobState::Canceled as i64)],
    )
    .map_err(pg("cancel job"))?;
    Ok(())
}
