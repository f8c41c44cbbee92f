//! Per-job counters, so that reading a job (its statistics, progress and clusters) costs
//! the same for a job of one task as for one of 100,000, instead of a pass over its tasks.
//!
//! What is kept, and where:
//! - `job_task_states (job, state, count)`: tasks per state; moved at every state change
//!   ([`move_tasks`]);
//! - on `jobs`: `first_started_at` (earliest `started_at`), `compute_ms` (compute time of
//!   ended attempts) and `running_started_sum` (sum of `attempt_started_at` of running
//!   tasks, so running compute time is `running * now - running_started_sum`); kept by
//!   `tasks.rs` when an attempt starts or stops;
//! - `job_progress`: per job and label, the sums of its tasks' `task_progress` rows, how
//!   many rows, and the smallest `task * 4096 + position` (labels are listed in that
//!   order); changed by deltas when a task's progress is replaced ([`replace_progress`]);
//! - `job_clusters`: the clusters a job has tasks on (for `query_jobs`).
//!
//! Each counter is exactly what an aggregate over the job's tasks gives. The latest stop is
//! not a counter: a claim clears the task's `stopped_at`, so the job's latest stop can move
//! back, and the partial index `tasks_stopped` answers it with one probe instead.
//!
//! [`recount`] computes everything from the tasks: once when a database written before the
//! counters existed is opened ([`upgrade`]), and when a retry removes subtasks.

use std::collections::BTreeMap;

use rusqlite::{Connection, OptionalExtension, params};

use super::{db, execute, query_row};
use crate::server::store::{Progress, Result};

/// The schema version this code writes (`PRAGMA user_version`); a database from before the
/// counters has 0, one from before `tasks.runner_failures` has 1, one from before the
/// `runners` table (presence) has 2. Version 4 added the console sessions (`sessions.sql`,
/// created on open like `schema.sql`, so the upgrade to it only sets the version).
pub(super) const SCHEMA_VERSION: i64 = 4;

/// The columns of `jobs` added with the counters (also in `schema.sql`).
const JOB_COLUMNS: [(&str, &str); 3] = [
    ("first_started_at", "first_started_at INTEGER"),
    ("compute_ms", "compute_ms INTEGER NOT NULL DEFAULT 0"),
    (
        "running_started_sum",
        "running_started_sum INTEGER NOT NULL DEFAULT 0",
    ),
];

/// Brings a database written by an earlier version up to [`SCHEMA_VERSION`]: from 0, adds
/// the counter columns that are missing, drops the index the counters replace, and fills the
/// counters from the tasks (one pass over them, once); from 1, adds the count of non-workflow
/// failures of each task; from 2, nothing but the version (the `runners` table is new).
/// `schema.sql` ran before, so the new tables exist.
pub(super) fn upgrade(connection: &Connection) -> rusqlite::Result<()> {
    connection.execute_batch("BEGIN IMMEDIATE")?;
    let upgraded = upgrade_in_transaction(connection);
    match upgraded {
        Ok(()) => connection.execute_batch("COMMIT"),
        Err(error) => {
            let _ = connection.execute_batch("ROLLBACK");
            Err(error)
        }
    }
}

fn upgrade_in_transaction(connection: &Connection) -> rusqlite::Result<()> {
    let version: i64 = connection.pragma_query_value(None, "user_version", |row| row.get(0))?;
    if version >= SCHEMA_VERSION {
        return Ok(());
    }
    if version < 1 {
        add_missing_columns(connection, "jobs", &JOB_COLUMNS)?;
        // Kept only for the statistics, and moved at every state change of every task.
        connection.execute_batch("DROP INDEX IF EXISTS tasks_by_job_state")?;
        recount_all(connection)?;
    }
    add_missing_columns(connection, "tasks", &TASK_COLUMNS)?;
    connection.pragma_update(None, "user_version", SCHEMA_VERSION)
}

/// The columns of `tasks` added in schema version 2 (also in `schema.sql`).
const TASK_COLUMNS: [(&str, &str); 1] = [(
    "runner_failures",
    "runner_failures INTEGER NOT NULL DEFAULT 0",
)];

fn add_missing_columns(
    connection: &Connection,
    table: &str,
    columns: &[(&str, &str)],
) -> rusqlite::Result<()> {
    let existing: Vec<String> = {
        let mut statement =
            connection.prepare(&format!("SELECT name FROM pragma_table_info('{table}')"))?;
        statement
            .query_map([], |row| row.get(0))?
            .collect::<rusqlite::Result<_>>()?
    };
    for (name, definition) in columns {
        if !existing.iter().any(|column| column == name) {
            connection.execute_batch(&format!("ALTER TABLE {table} ADD COLUMN {definition}"))?;
        }
    }
    Ok(())
}

/// Recomputes the counters of `job` (all jobs when `None`) from its tasks.
pub(super) fn recount(connection: &Connection, job: Option<i64>) -> Result<()> {
    match job {
        None => recount_all(connection).map_err(db("recount")),
        Some(job) => recount_job(connection, job).map_err(db("recount")),
    }
}

fn recount_all(connection: &Connection) -> rusqlite::Result<()> {
    connection.execute_batch(
        "DELETE FROM job_task_states;
         INSERT INTO job_task_states (job, state, count)
             SELECT job, state, COUNT(*) FROM tasks GROUP BY job, state;
         DELETE FROM job_clusters;
         INSERT INTO job_clusters (job, cluster) SELECT DISTINCT job, cluster FROM tasks;
         DELETE FROM job_progress;
         INSERT INTO job_progress (job, label, total, done, entries, first)
             SELECT t.job, p.label, SUM(p.total), SUM(p.done), COUNT(*), MIN(p.task * 4096 + p.position)
             FROM task_progress p JOIN tasks t ON t.task = p.task GROUP BY t.job, p.label;
         UPDATE jobs SET first_started_at = NULL, compute_ms = 0, running_started_sum = 0;
         UPDATE jobs SET first_started_at = s.first_started, compute_ms = s.compute,
                         running_started_sum = s.running_started
         FROM (SELECT job, MIN(started_at) AS first_started, COALESCE(SUM(compute_ms), 0) AS compute,
                      COALESCE(SUM(CASE WHEN state = 2 THEN attempt_started_at END), 0) AS running_started
               FROM tasks GROUP BY job) AS s
         WHERE jobs.job = s.job;",
    )
}

fn recount_job(connection: &Connection, job: i64) -> rusqlite::Result<()> {
    let statements = [
        "DELETE FROM job_task_states WHERE job = ?1",
        "INSERT INTO job_task_states (job, state, count)
         SELECT job, state, COUNT(*) FROM tasks WHERE job = ?1 GROUP BY state",
        "DELETE FROM job_clusters WHERE job = ?1",
        "INSERT INTO job_clusters (job, cluster) SELECT DISTINCT job, cluster FROM tasks WHERE job = ?1",
        "DELETE FROM job_progress WHERE job = ?1",
        "INSERT INTO job_progress (job, label, total, done, entries, first)
         SELECT t.job, p.label, SUM(p.total), SUM(p.done), COUNT(*), MIN(p.task * 4096 + p.position)
         FROM task_progress p JOIN tasks t ON t.task = p.task WHERE t.job = ?1 GROUP BY p.label",
        "UPDATE jobs SET (first_started_at, compute_ms, running_started_sum) =
             (SELECT MIN(started_at), COALESCE(SUM(compute_ms), 0),
                     COALESCE(SUM(CASE WHEN state = 2 THEN attempt_started_at END), 0)
              FROM tasks WHERE job = ?1)
         WHERE job = ?1",
    ];
    for sql in statements {
        connection.prepare_cached(sql)?.execute([job])?;
    }
    Ok(())
}

/// Counts `count` tasks of `job` out of state `from` (none: new tasks) into state `to`.
pub(super) fn move_tasks(
    connection: &Connection,
    job: i64,
    from: Option<i32>,
    to: i32,
    count: i64,
) -> Result<()> {
    if let Some(from) = from {
        execute(
            connection,
            "UPDATE job_task_states SET count = count - ?3 WHERE job = ?1 AND state = ?2",
            params![job, from, count],
        )
        .map_err(db("count task states"))?;
    }
    execute(
        connection,
        "INSERT INTO job_task_states (job, state, count) VALUES (?1, ?2, ?3)
         ON CONFLICT (job, state) DO UPDATE SET count = count + excluded.count",
        params![job, to, count],
    )
    .map_err(db("count task states"))?;
    Ok(())
}

/// Records that `job` has tasks on `cluster`.
pub(super) fn add_cluster(connection: &Connection, job: i64, cluster: &str) -> Result<()> {
    execute(
        connection,
        "INSERT OR IGNORE INTO job_clusters (job, cluster) VALUES (?1, ?2)",
        params![job, cluster],
    )
    .map_err(db("record job cluster"))?;
    Ok(())
}

/// How one task's progress rows change one label of its job.
#[derive(Default)]
struct LabelDelta {
    total: i64,
    done: i64,
    entries: i64,
    /// Smallest `task * 4096 + position` of the task's rows with this label, before and
    /// after.
    old_first: Option<i64>,
    new_first: Option<i64>,
}

/// Replaces the `task_progress` rows of `task` (of `job`) with `progress`, and moves the
/// job's sums by the difference.
pub(super) fn replace_progress(
    connection: &Connection,
    job: i64,
    task: i64,
    progress: &[Progress],
) -> Result<()> {
    let mut deltas: BTreeMap<Option<String>, LabelDelta> = BTreeMap::new();
    {
        let mut statement = connection
            .prepare_cached(
                "DELETE FROM task_progress WHERE task = ?1 RETURNING position, label, total, done",
            )
            .map_err(db("store progress"))?;
        let mut rows = statement.query([task]).map_err(db("store progress"))?;
        while let Some(row) = rows.next().map_err(db("store progress"))? {
            let key = task * 4096 + row.get::<_, i64>(0).map_err(db("store progress"))?;
            let label: Option<String> = row.get(1).map_err(db("store progress"))?;
            let delta = deltas.entry(label).or_default();
            delta.total -= row.get::<_, i64>(2).map_err(db("store progress"))?;
            delta.done -= row.get::<_, i64>(3).map_err(db("store progress"))?;
            delta.entries -= 1;
            delta.old_first = Some(delta.old_first.map_or(key, |first| first.min(key)));
        }
    }
    let mut insert = connection
        .prepare_cached(
            "INSERT INTO task_progress (task, position, label, total, done) VALUES (?1, ?2, ?3, ?4, ?5)",
        )
        .map_err(db("store progress"))?;
    for (position, entry) in progress.iter().enumerate() {
        let total = entry.total.min(i64::MAX as u64) as i64;
        let done = entry.done.min(i64::MAX as u64) as i64;
        insert
            .execute(params![task, position as i64, entry.label, total, done])
            .map_err(db("store progress"))?;
        let key = task * 4096 + position as i64;
        let delta = deltas.entry(entry.label.clone()).or_default();
        delta.total += total;
        delta.done += done;
        delta.entries += 1;
        delta.new_first = Some(delta.new_first.map_or(key, |first| first.min(key)));
    }
    for (label, delta) in deltas {
        apply_label_delta(connection, job, label.as_deref(), &delta)?;
    }
    Ok(())
}

fn apply_label_delta(
    connection: &Connection,
    job: i64,
    label: Option<&str>,
    delta: &LabelDelta,
) -> Result<()> {
    let stored: Option<(i64, i64)> = query_row(
        connection,
        "SELECT entries, first FROM job_progress WHERE job = ?1 AND label IS ?2",
        params![job, label],
        |row| Ok((row.get(0)?, row.get(1)?)),
    )
    .optional()
    .map_err(db("sum progress"))?;
    let Some((entries, first)) = stored else {
        // Only new rows: the label is new to the job.
        let Some(new_first) = delta.new_first else {
            return Ok(());
        };
        execute(
            connection,
            "INSERT INTO job_progress (job, label, total, done, entries, first)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![
                job,
                label,
                delta.total,
                delta.done,
                delta.entries,
                new_first
            ],
        )
        .map_err(db("sum progress"))?;
        return Ok(());
    };
    if entries + delta.entries <= 0 {
        execute(
            connection,
            "DELETE FROM job_progress WHERE job = ?1 AND label IS ?2",
            params![job, label],
        )
        .map_err(db("sum progress"))?;
        return Ok(());
    }
    let first = match (delta.old_first, delta.new_first) {
        // The task's rows held the job's first row of this label and it now has none
        // that early: the first row is elsewhere (rare: a task that stopped reporting a
        // label it was the first to report).
        (Some(old), new) if old == first && new.is_none_or(|new| new > first) => {
            first_progress_row(connection, job, label)?
        }
        (_, Some(new)) => first.min(new),
        (_, None) => first,
    };
    execute(
        connection,
        "UPDATE job_progress SET total = total + ?3, done = done + ?4, entries = entries + ?5,
                                 first = ?6
         WHERE job = ?1 AND label IS ?2",
        params![job, label, delta.total, delta.done, delta.entries, first],
    )
    .map_err(db("sum progress"))?;
    Ok(())
}

/// The smallest `task * 4096 + position` among the job's progress rows with `label`.
fn first_progress_row(connection: &Connection, job: i64, label: Option<&str>) -> Result<i64> {
    query_row(
        connection,
        "SELECT MIN(p.task * 4096 + p.position) FROM task_progress p JOIN tasks t ON t.task = p.task
         WHERE t.job = ?1 AND p.label IS ?2",
        params![job, label],
        |row| row.get(0),
    )
    .map_err(db("sum progress"))
}

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::time::Duration;

    use rusqlite::{Connection, params};
    use uuid::Uuid;

    use super::recount;
    use crate::api::convert::now_millis;
    use crate::api::workflows_v1::{JobState, TaskState};
    use crate::server::store::conformance;
    use crate::server::store::sqlite::{DATABASE_FILE, SqliteStore};
    use crate::server::store::{
        ClaimRequest, ClaimedTask, ComputedReport, DEFAULT_CLUSTER_SLUG, FailedReport, Identifier,
        JobFilter, NewJob, NewTask, Page, Progress, ReportOutcome, Store,
    };

    /// The schema a database written before the counters has.
    const SCHEMA_V0: &str = include_str!("schema_v0.sql");

    /// Everything the counters hold (states with a count only), comparable.
    #[derive(Debug, PartialEq)]
    struct Counters {
        states: Vec<(i64, i64, i64)>,
        clusters: Vec<(i64, String)>,
        progress: Vec<(i64, Option<String>, i64, i64, i64, i64)>,
        jobs: Vec<(i64, Option<i64>, i64, i64)>,
    }

    fn rows<T>(
        connection: &Connection,
        sql: &str,
        map: impl FnMut(&rusqlite::Row<'_>) -> rusqlite::Result<T>,
    ) -> Vec<T> {
        connection
            .prepare(sql)
            .and_then(|mut statement| statement.query_map([], map)?.collect())
            .expect("read counters")
    }

    fn read_counters(connection: &Connection) -> Counters {
        Counters {
            states: rows(
                connection,
                "SELECT job, state, count FROM job_task_states WHERE count > 0 ORDER BY job, state",
                |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)),
            ),
            clusters: rows(
                connection,
                "SELECT job, cluster FROM job_clusters ORDER BY job, cluster",
                |row| Ok((row.get(0)?, row.get(1)?)),
            ),
            progress: rows(
                connection,
                "SELECT job, label, total, done, entries, first FROM job_progress ORDER BY job, first",
                |row| {
                    Ok((
                        row.get(0)?,
                        row.get(1)?,
                        row.get(2)?,
                        row.get(3)?,
                        row.get(4)?,
                        row.get(5)?,
                    ))
                },
            ),
            jobs: rows(
                connection,
                "SELECT job, first_started_at, compute_ms, running_started_sum FROM jobs ORDER BY job",
                |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?, row.get(3)?)),
            ),
        }
    }

    /// Asserts that what the store counted is what a recount from the tasks gives (the
    /// recount is rolled back).
    fn assert_counters_match_a_recount(directory: &Path) {
        let connection = Connection::open(directory.join(DATABASE_FILE)).expect("open");
        let kept = read_counters(&connection);
        connection.execute_batch("BEGIN").expect("begin");
        recount(&connection, None).expect("recount");
        let recounted = read_counters(&connection);
        connection.execute_batch("ROLLBACK").expect("rollback");
        assert_eq!(kept, recounted);
    }

    /// A job's progress as the store read it before the counters: an aggregate over its
    /// tasks' rows.
    fn progress_by_aggregate(directory: &Path, job: Uuid) -> Vec<Progress> {
        let connection = Connection::open(directory.join(DATABASE_FILE)).expect("open");
        let mut statement = connection
            .prepare(
                "SELECT p.label, SUM(p.total), SUM(p.done) FROM task_progress p JOIN tasks t ON t.task = p.task
                 JOIN jobs j ON j.job = t.job
                 WHERE j.uuid = ?1 GROUP BY p.label ORDER BY MIN(p.task * 4096 + p.position)",
            )
            .expect("prepare");
        statement
            .query_map([job.as_bytes()], |row| {
                Ok(Progress {
                    label: row.get(0)?,
                    total: row.get::<_, i64>(1)? as u64,
                    done: row.get::<_, i64>(2)? as u64,
                })
            })
            .and_then(|rows| rows.collect())
            .expect("aggregate progress")
    }

    fn identifier(name: &str) -> Identifier {
        Identifier {
            name: name.to_string(),
            version: "v1.0".to_string(),
            major: 1,
            minor: 0,
        }
    }

    fn task(name: &str) -> NewTask {
        NewTask {
            id: Uuid::now_v7(),
            identifier: identifier(name),
            input: Vec::new(),
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
            identifiers: vec![identifier(name)],
            claimant: "runner".to_string(),
            lease: Duration::from_secs(60),
        }
    }

    fn label(name: Option<&str>, total: u64, done: u64) -> Progress {
        Progress {
            label: name.map(str::to_string),
            total,
            done,
        }
    }

    async fn claim(store: &SqliteStore, name: &str) -> ClaimedTask {
        let (_, claimed) = store
            .report_and_claim(None, Some(runner(name)))
            .await
            .expect("claim");
        claimed.unwrap_or_else(|| panic!("{name} is claimable"))
    }

    async fn report(
        store: &SqliteStore,
        task: &ClaimedTask,
        progress: Vec<Progress>,
        subtasks: Vec<NewTask>,
    ) {
        let report = ComputedReport {
            task_id: task.id,
            claimant: "runner".to_string(),
            display: task.display.clone(),
            progress,
            subtasks,
        };
        let (outcome, _) = store
            .report_and_claim(Some(report), None)
            .await
            .expect("report");
        assert_eq!(outcome, Some(ReportOutcome::Applied(TaskState::Computed)));
    }

    async fn fail(store: &SqliteStore, task: &ClaimedTask, progress: Vec<Progress>) {
        let failure = FailedReport {
            task_id: task.id,
            claimant: "runner".to_string(),
            display: task.display.clone(),
            workflow_error: false,
            progress,
        };
        let outcome = store.fail_task(failure).await.expect("fail");
        assert_eq!(outcome, ReportOutcome::Applied(TaskState::Queued));
    }

    #[tokio::test]
    async fn counters_match_a_recount_after_a_mix_of_transitions() {
        let directory = tempfile::tempdir().expect("temp dir");
        let store = SqliteStore::open(directory.path()).expect("open");
        conformance::execution_stats_equal_a_recount_of_the_tasks(store.clone()).await;
        assert_counters_match_a_recount(directory.path());
    }

    /// Each report replaces its task's progress: the job's sums move by the difference, and
    /// labels keep the order of their first row, also when the task that reported a label
    /// first stops reporting it.
    #[tokio::test]
    async fn progress_sums_follow_replaced_reports() {
        let directory = tempfile::tempdir().expect("temp dir");
        let store = SqliteStore::open(directory.path()).expect("open");
        let job = NewJob {
            id: Uuid::now_v7(),
            name: "progress".to_string(),
            trace_parent: String::new(),
            tasks: vec![task("Root")],
        };
        let job_id = job.id;
        store.submit_job(job).await.expect("submit");
        let expect = |expected: Vec<Progress>| {
            let store = store.clone();
            let directory = directory.path().to_path_buf();
            async move {
                let progress = store.get_job(job_id).await.expect("get job").progress;
                assert_eq!(progress, expected);
                assert_eq!(progress_by_aggregate(&directory, job_id), expected);
                assert_counters_match_a_recount(&directory);
            }
        };

        let root = claim(&store, "Root").await;
        let root_progress = vec![label(Some("a"), 2, 0), label(Some("b"), 3, 0)];
        let children = vec![task("X"), task("Y"), task("Z")];
        report(&store, &root, root_progress, children).await;
        expect(vec![label(Some("a"), 2, 0), label(Some("b"), 3, 0)]).await;

        // X is the first to report `x`, and its failed attempt's rows count until replaced.
        let x = claim(&store, "X").await;
        fail(
            &store,
            &x,
            vec![label(Some("x"), 1, 0), label(Some("b"), 0, 1)],
        )
        .await;
        expect(vec![
            label(Some("a"), 2, 0),
            label(Some("b"), 3, 1),
            label(Some("x"), 1, 0),
        ])
        .await;
        let y = claim(&store, "Y").await;
        report(
            &store,
            &y,
            vec![label(None, 1, 0), label(Some("x"), 1, 1)],
            vec![],
        )
        .await;
        expect(vec![
            label(Some("a"), 2, 0),
            label(Some("b"), 3, 1),
            label(Some("x"), 2, 1),
            label(None, 1, 0),
        ])
        .await;

        // X's next attempt drops `x` and `b`: `x` now comes after Y's first row.
        let x = claim(&store, "X").await;
        let z = claim(&store, "Z").await;
        expect(vec![
            label(Some("a"), 2, 0),
            label(Some("b"), 3, 1),
            label(Some("x"), 2, 1),
            label(None, 1, 0),
        ])
        .await;
        report(&store, &x, vec![label(Some("c"), 1, 1)], vec![]).await;
        expect(vec![
            label(Some("a"), 2, 0),
            label(Some("b"), 3, 0),
            label(Some("c"), 1, 1),
            label(None, 1, 0),
            label(Some("x"), 1, 1),
        ])
        .await;

        // A report without progress removes the task's rows.
        fail(&store, &z, vec![label(Some("z"), 5, 5)]).await;
        let z = claim(&store, "Z").await;
        report(&store, &z, Vec::new(), vec![]).await;
        expect(vec![
            label(Some("a"), 2, 0),
            label(Some("b"), 3, 0),
            label(Some("c"), 1, 1),
            label(None, 1, 0),
            label(Some("x"), 1, 1),
        ])
        .await;
        assert_eq!(
            store.get_job(job_id).await.expect("get job").state,
            JobState::Completed
        );
    }

    /// A database written before the counters opens with them filled from its tasks, and
    /// they keep counting from there.
    #[tokio::test]
    async fn a_database_from_before_the_counters_opens_with_them_filled() {
        let directory = tempfile::tempdir().expect("temp dir");
        let path = directory.path().join(DATABASE_FILE);
        let base = now_millis() - 60_000;
        let (mid_run, finished) = (Uuid::now_v7(), Uuid::now_v7());
        {
            let old = Connection::open(&path).expect("create");
            old.execute_batch(SCHEMA_V0).expect("old schema");
            old.execute_batch(
                "INSERT INTO clusters VALUES ('default', 'Default', '', 0, 0), ('gpu', 'GPU', '', 1, 0);",
            )
            .expect("clusters");
            let add_job =
                |id: Uuid,
                 name: &str,
                 state: JobState,
                 total: i64,
                 incomplete: i64,
                 running: i64| {
                    old.execute(
                    "INSERT INTO jobs (uuid, name, trace_parent, state, submitted_at, total_tasks,
                                       incomplete_tasks, running_tasks, ever_started)
                     VALUES (?1, ?2, '', ?3, ?4, ?5, ?6, ?7, 1)",
                    params![id.as_bytes(), name, state as i32, base, total, incomplete, running],
                )
                .expect("job");
                    old.last_insert_rowid()
                };
            #[allow(clippy::type_complexity)]
            let add_task =
                |job: i64,
                 parent: Option<i64>,
                 name: &str,
                 cluster: &str,
                 state: TaskState,
                 times: (Option<i64>, Option<i64>, Option<i64>, i64)| {
                    let (started, stopped, attempt, compute) = times;
                    let offset = |time: Option<i64>| time.map(|time| base + time);
                    old.execute(
                    "INSERT INTO tasks (uuid, job, parent, name, version, major, minor, cluster, input,
                                        display, state, max_retries, optional, pending_deps, submitted_at,
                                        started_at, stopped_at, attempt_started_at, compute_ms, claimant,
                                        lease_expires_at, has_children)
                     VALUES (?1, ?2, ?3, ?4, 'v1.0', 1, 0, ?5, x'', ?4, ?6, 0, 0, 0, ?7, ?8, ?9, ?10, ?11,
                             'old-runner', ?12, ?3 IS NULL)",
                    params![
                        Uuid::now_v7().as_bytes(),
                        job,
                        parent,
                        name,
                        cluster,
                        state as i32,
                        base,
                        offset(started),
                        offset(stopped),
                        offset(attempt),
                        compute,
                        offset(attempt.map(|_| 600_000))
                    ],
                )
                .expect("task");
                    old.last_insert_rowid()
                };
            let add_progress =
                |task: i64, position: i64, label: Option<&str>, total: i64, done: i64| {
                    old.execute(
                        "INSERT INTO task_progress VALUES (?1, ?2, ?3, ?4, ?5)",
                        params![task, position, label, total, done],
                    )
                    .expect("progress");
                };
            let job = add_job(mid_run, "mid-run", JobState::Running, 7, 4, 1);
            let root = add_task(
                job,
                None,
                "Root",
                "default",
                TaskState::Computed,
                (Some(1_000), Some(2_000), None, 900),
            );
            let done = add_task(
                job,
                Some(root),
                "Leaf",
                "default",
                TaskState::Computed,
                (Some(2_100), Some(2_600), None, 500),
            );
            add_task(
                job,
                Some(root),
                "Busy",
                "default",
                TaskState::Running,
                (Some(2_200), None, Some(2_500), 100),
            );
            add_task(
                job,
                Some(root),
                "Leaf",
                "default",
                TaskState::Queued,
                (None, None, None, 0),
            );
            let optional = add_task(
                job,
                Some(root),
                "Optional",
                "default",
                TaskState::FailedOptional,
                (Some(2_300), Some(2_400), None, 100),
            );
            add_task(
                job,
                Some(root),
                "Skipped",
                "default",
                TaskState::Skipped,
                (None, None, None, 0),
            );
            add_task(
                job,
                Some(root),
                "Gpu",
                "gpu",
                TaskState::Queued,
                (None, None, None, 0),
            );
            add_progress(root, 0, Some("tiles"), 5, 0);
            add_progress(root, 1, None, 1, 1);
            add_progress(done, 0, Some("tiles"), 0, 1);
            add_progress(optional, 0, Some("tiles"), 0, 1);
            let other = add_job(finished, "finished", JobState::Completed, 1, 0, 0);
            add_task(
                other,
                None,
                "Root",
                "default",
                TaskState::Computed,
                (Some(10), Some(20), None, 10),
            );
        }

        let store = SqliteStore::open(directory.path()).expect("open the old database");
        let before = now_millis();
        let job = store.get_job(mid_run).await.expect("get job");
        let after = now_millis();
        assert_eq!(
            job.progress,
            [label(Some("tiles"), 5, 2), label(None, 1, 1)]
        );
        let stats = &job.stats;
        assert_eq!(stats.total_tasks, 7);
        assert_eq!(
            stats.tasks_by_state,
            [
                (TaskState::Queued, 2),
                (TaskState::Running, 1),
                (TaskState::Computed, 2),
                (TaskState::Skipped, 1),
                (TaskState::FailedOptional, 1)
            ]
        );
        assert_eq!(stats.first_task_started_at, Some(base + 1_000));
        assert_eq!(stats.last_task_stopped_at, Some(base + 2_600));
        // 1,600 ms of ended attempts, and the running one since base + 2,500.
        let running_since = base + 2_500;
        let compute = stats.compute_time.as_millis() as i64;
        assert!(
            (1_600 + before - running_since..=1_600 + after - running_since).contains(&compute),
            "{compute} ms"
        );
        let finished_job = store.get_job(finished).await.expect("get job");
        assert_eq!(
            finished_job.stats.tasks_by_state,
            [(TaskState::Computed, 1)]
        );
        assert_eq!(finished_job.stats.compute_time, Duration::from_millis(10));
        assert_eq!(finished_job.stats.elapsed_time, Duration::from_millis(10));
        let on_gpu = JobFilter {
            clusters: vec!["gpu".to_string()],
            ..JobFilter::default()
        };
        let everything = Page {
            after: None,
            limit: 10,
            descending: false,
        };
        let found = store.query_jobs(on_gpu, everything).await.expect("query");
        assert_eq!(
            found.iter().map(|job| job.id).collect::<Vec<_>>(),
            [mid_run]
        );
        assert_counters_match_a_recount(directory.path());

        // The counters go on from the backfill.
        let busy_report = ComputedReport {
            task_id: all_ids(&store, mid_run, "Busy").await,
            claimant: "old-runner".to_string(),
            display: "Busy".to_string(),
            progress: vec![label(Some("tiles"), 0, 1)],
            subtasks: Vec::new(),
        };
        let (outcome, claimed) = store
            .report_and_claim(Some(busy_report), Some(runner("Leaf")))
            .await
            .expect("report and claim");
        assert_eq!(outcome, Some(ReportOutcome::Applied(TaskState::Computed)));
        assert!(claimed.is_some(), "the queued leaf is handed out");
        let job = store.get_job(mid_run).await.expect("get job");
        assert_eq!(
            job.progress,
            [label(Some("tiles"), 5, 3), label(None, 1, 1)]
        );
        assert_eq!(
            job.stats.tasks_by_state,
            [
                (TaskState::Queued, 1),
                (TaskState::Running, 1),
                (TaskState::Computed, 3),
                (TaskState::Skipped, 1),
                (TaskState::FailedOptional, 1)
            ]
        );
        assert_counters_match_a_recount(directory.path());
        drop(store);

        let upgraded = Connection::open(&path).expect("open");
        let version: i64 = upgraded
            .pragma_query_value(None, "user_version", |row| row.get(0))
            .expect("version");
        assert_eq!(version, super::SCHEMA_VERSION);
        let old_index: bool = upgraded
            .query_row(
                "SELECT EXISTS (SELECT 1 FROM sqlite_master WHERE name = 'tasks_by_job_state')",
                [],
                |row| row.get(0),
            )
            .expect("schema");
        assert!(!old_index, "the index the counters replace is dropped");
    }

    /// A database of schema version 1 (before tasks counted their non-workflow failures) opens
    /// with the count added, and caps them from there.
    #[tokio::test]
    async fn a_database_from_before_the_runner_failure_count_opens_with_it() {
        let directory = tempfile::tempdir().expect("temp dir");
        drop(SqliteStore::open(directory.path()).expect("open"));
        {
            let old = Connection::open(directory.path().join(DATABASE_FILE)).expect("open");
            old.execute_batch(
                "ALTER TABLE tasks DROP COLUMN runner_failures; PRAGMA user_version = 1;",
            )
            .expect("the version 1 schema");
        }
        let store = SqliteStore::open(directory.path()).expect("open an old database");
        conformance::non_workflow_failures_are_capped_then_fail_the_task(store.clone()).await;
        drop(store);
        let upgraded = Connection::open(directory.path().join(DATABASE_FILE)).expect("open");
        let version: i64 = upgraded
            .pragma_query_value(None, "user_version", |row| row.get(0))
            .expect("version");
        assert_eq!(version, super::SCHEMA_VERSION);
    }

    /// A database of schema version 2 (before runner presence) opens with the `runners`
    /// table, keeps its jobs, and records presence from there.
    #[tokio::test]
    async fn a_version_2_database_is_upgraded_to_the_current_version() {
        let directory = tempfile::tempdir().expect("temp dir");
        let job_id = {
            let store = SqliteStore::open(directory.path()).expect("open");
            let job = crate::server::store::NewJob {
                id: Uuid::now_v7(),
                name: "kept".to_string(),
                trace_parent: String::new(),
                tasks: Vec::new(),
            };
            store.submit_job(job).await.expect("submit").id
        };
        {
            let old = Connection::open(directory.path().join(DATABASE_FILE)).expect("open");
            // Version 2 had neither the runners (3) nor the console sessions (4).
            old.execute_batch(
                "DROP TABLE runners; DROP TABLE console_sessions; PRAGMA user_version = 2;",
            )
            .expect("the version 2 schema");
        }
        let store = SqliteStore::open(directory.path()).expect("open a version 2 database");
        assert_eq!(store.get_job(job_id).await.expect("kept").name, "kept");
        conformance::old_runners_are_deleted(store.clone()).await;
        drop(store);
        let upgraded = Connection::open(directory.path().join(DATABASE_FILE)).expect("open");
        let version: i64 = upgraded
            .pragma_query_value(None, "user_version", |row| row.get(0))
            .expect("version");
        assert_eq!(version, super::SCHEMA_VERSION);
        assert_eq!(super::SCHEMA_VERSION, 4);
    }

    /// The id of the task of `job` named `name`.
    async fn all_ids(store: &SqliteStore, job: Uuid, name: &str) -> Uuid {
        let page = Page {
            after: None,
            limit: 100,
            descending: false,
        };
        let roots = store.list_tasks(job, None, page).await.expect("list");
        let children = store
            .list_tasks(job, Some(roots[0].id), page)
            .await
            .expect("list");
        children
            .into_iter()
            .find(|task| task.display == name)
            .map(|task| task.id)
            .unwrap_or_else(|| panic!("a task {name}"))
    }
}
