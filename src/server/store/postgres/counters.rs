//! Per-job counters on PostgreSQL: the same counters as SQLite's (`../sqlite/counters.rs`
//! says what each holds), kept by summed deltas. An operation collects what it changes of
//! each job in [`Deltas`] and writes it once at its end ([`Deltas::flush`]), in ascending
//! job order: the `jobs` and `job_task_states` rows are the last rows an operation locks,
//! held the shortest time, and a claim of many tasks of one job updates its row once.

use std::collections::BTreeMap;

use super::{Tx, pg};
use crate::api::workflows_v1::JobState;
use crate::server::store::{Progress, Result};

/// What an operation changes of one job.
#[derive(Default)]
struct JobDelta {
    total: i64,
    incomplete: i64,
    running: i64,
    compute_ms: i64,
    running_started_sum: i64,
    first_started_at: Option<i64>,
    ever_started: bool,
    /// Tasks moved into (positive) or out of (negative) each state.
    states: BTreeMap<i64, i64>,
    /// Recompute the job's state from its counters (unless it ended).
    refresh: bool,
    /// A task failed for good: the job failed.
    fail: bool,
}

/// The counter changes of one operation, per job.
#[derive(Default)]
pub(super) struct Deltas {
    jobs: BTreeMap<i64, JobDelta>,
}

impl Deltas {
    fn job(&mut self, job: i64) -> &mut JobDelta {
        self.jobs.entry(job).or_default()
    }

    /// Counts `count` tasks of `job` out of state `from` (none: new tasks) into `to`.
    pub(super) fn move_tasks(&mut self, job: i64, from: Option<i64>, to: i64, count: i64) {
        let delta = self.job(job);
        if let Some(from) = from {
            *delta.states.entry(from).or_default() -= count;
        }
        *delta.states.entry(to).or_default() += count;
    }

    pub(super) fn add_tasks(&mut self, job: i64, total: i64, incomplete: i64) {
        let delta = self.job(job);
        delta.total += total;
        delta.incomplete += incomplete;
    }

    pub(super) fn complete_one(&mut self, job: i64) {
        self.job(job).incomplete -= 1;
    }

    /// `count` attempts started at `now`; the earliest first start among them.
    pub(super) fn start_attempts(&mut self, job: i64, count: i64, now: i64, first_started: i64) {
        let delta = self.job(job);
        delta.running += count;
        delta.running_started_sum += count * now;
        delta.ever_started = true;
        delta.first_started_at = Some(
            delta
                .first_started_at
                .map_or(first_started, |first| first.min(first_started)),
        );
        delta.refresh = true;
    }

    /// An attempt that started at `started` ended after `elapsed` milliseconds.
    pub(super) fn stop_attempt(&mut self, job: i64, started: i64, elapsed: i64) {
        let delta = self.job(job);
        delta.running -= 1;
        delta.compute_ms += elapsed;
        delta.running_started_sum -= started;
    }

    pub(super) fn refresh(&mut self, job: i64) {
        self.job(job).refresh = true;
    }

    pub(super) fn fail(&mut self, job: i64) {
        self.job(job).fail = true;
    }

    /// Writes every job's changes, in ascending job order.
    pub(super) fn flush(self, tx: &mut Tx<'_>) -> Result<()> {
        for (job, delta) in self.jobs {
            tx.execute(
                "UPDATE jobs SET
                     total_tasks = total_tasks + $2,
                     incomplete_tasks = incomplete_tasks + $3,
                     running_tasks = GREATEST(running_tasks + $4, 0),
                     compute_ms = compute_ms + $5,
                     running_started_sum = running_started_sum + $6,
                     first_started_at = LEAST(first_started_at, $7),
                     ever_started = ever_started OR $8,
                     state = CASE
                         WHEN $9 THEN $11
                         WHEN NOT $10 OR state IN ($12, $11, $13) THEN state
                         WHEN incomplete_tasks + $3 <= 0 THEN $12
                         WHEN running_tasks + $4 > 0 THEN $14
                         WHEN ever_started OR $8 THEN $15
                         ELSE $16 END
                 WHERE job = $1",
                &[
                    &job,
                    &delta.total,
                    &delta.incomplete,
                    &delta.running,
                    &delta.compute_ms,
                    &delta.running_started_sum,
                    &delta.first_started_at,
                    &delta.ever_started,
                    &delta.fail,
                    &delta.refresh,
                    &(JobState::Failed as i64),
                    &(JobState::Completed as i64),
                    &(JobState::Canceled as i64),
                    &(JobState::Running as i64),
                    &(JobState::Started as i64),
                    &(JobState::Submitted as i64),
                ],
            )
            .map_err(pg("count job"))?;
            let (states, counts): (Vec<i64>, Vec<i64>) = delta
                .states
                .into_iter()
                .filter(|(_, count)| *count != 0)
                .unzip();
            if states.is_empty() {
                continue;
            }
            // One statement for every state that moved (a report moves two).
            tx.execute(
                "INSERT INTO job_task_states (job, state, count)
                 SELECT $1, state, count FROM unnest($2::bigint[], $3::bigint[]) AS d(state, count)
                 ORDER BY state
                 ON CONFLICT (job, state) DO UPDATE SET count = job_task_states.count + excluded.count",
                &[&job, &states, &counts],
            )
            .map_err(pg("count task states"))?;
        }
        Ok(())
    }
}

/// Records that `job` has tasks on each of `clusters`.
pub(super) fn add_clusters(tx: &mut Tx<'_>, job: i64, clusters: &[String]) -> Result<()> {
    tx.execute(
        "INSERT INTO job_clusters (job, cluster) SELECT $1, unnest($2::text[])
         ON CONFLICT DO NOTHING",
        &[&job, &clusters],
    )
    .map_err(pg("record job cluster"))?;
    Ok(())
}

/// Recomputes the counters of `job` from its tasks (a retry removed subtasks).
pub(super) fn recount(tx: &mut Tx<'_>, job: i64) -> Result<()> {
    let statements = [
        "DELETE FROM job_task_states WHERE job = $1",
        "INSERT INTO job_task_states (job, state, count)
         SELECT job, state, COUNT(*) FROM tasks WHERE job = $1 GROUP BY job, state",
        "DELETE FROM job_clusters WHERE job = $1",
        "INSERT INTO job_clusters (job, cluster) SELECT DISTINCT job, cluster FROM tasks WHERE job = $1",
        "DELETE FROM job_progress WHERE job = $1",
        "INSERT INTO job_progress (job, label, total, done, entries, first)
         SELECT t.job, p.label, SUM(p.total), SUM(p.done), COUNT(*), MIN(p.task * 4096 + p.position)
         FROM task_progress p JOIN tasks t ON t.task = p.task WHERE t.job = $1 GROUP BY t.job, p.label",
        "UPDATE jobs SET (first_started_at, compute_ms, running_started_sum) =
             (SELECT MIN(started_at), COALESCE(SUM(compute_ms), 0),
                     COALESCE(SUM(CASE WHEN state = 2 THEN attempt_started_at END), 0)
              FROM tasks WHERE job = $1)
         WHERE job = $1",
    ];
    for sql in statements {
        tx.execute(sql, &[&job]).map_err(pg("recount"))?;
    }
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
    tx: &mut Tx<'_>,
    job: i64,
    task: i64,
    progress: &[Progress],
) -> Result<()> {
    let mut deltas: BTreeMap<Option<String>, LabelDelta> = BTreeMap::new();
    let removed = tx
        .query(
            "DELETE FROM task_progress WHERE task = $1 RETURNING position, label, total, done",
            &[&task],
        )
        .map_err(pg("store progress"))?;
    for row in removed {
        let key = task * 4096 + row.get::<_, i64>(0);
        let delta = deltas.entry(row.get(1)).or_default();
        delta.total -= row.get::<_, i64>(2);
        delta.done -= row.get::<_, i64>(3);
        delta.entries -= 1;
        delta.old_first = Some(delta.old_first.map_or(key, |first| first.min(key)));
    }
    if !progress.is_empty() {
        let positions: Vec<i64> = (0..progress.len() as i64).collect();
        let labels: Vec<Option<&str>> = progress.iter().map(|p| p.label.as_deref()).collect();
        let totals: Vec<i64> = progress
            .iter()
            .map(|p| p.total.min(i64::MAX as u64) as i64)
            .collect();
        let dones: Vec<i64> = progress
            .iter()
            .map(|p| p.done.min(i64::MAX as u64) as i64)
            .collect();
        tx.execute(
            "INSERT INTO task_progress (task, position, label, total, done)
             SELECT $1, * FROM unnest($2::bigint[], $3::text[], $4::bigint[], $5::bigint[])",
            &[&task, &positions, &labels, &totals, &dones],
        )
        .map_err(pg("store progress"))?;
        for (position, entry) in progress.iter().enumerate() {
            let key = task * 4096 + position as i64;
            let delta = deltas.entry(entry.label.clone()).or_default();
            delta.total += totals[position];
            delta.done += dones[position];
            delta.entries += 1;
            delta.new_first = Some(delta.new_first.map_or(key, |first| first.min(key)));
        }
    }
    for (label, delta) in deltas {
        apply_label_delta(tx, job, label.as_deref(), &delta)?;
    }
    Ok(())
}

fn apply_label_delta(
    tx: &mut Tx<'_>,
    job: i64,
    label: Option<&str>,
    delta: &LabelDelta,
) -> Result<()> {
    let stored = tx
        .query_opt(
            "SELECT entries, first FROM job_progress
             WHERE job = $1 AND label IS NOT DISTINCT FROM $2 FOR UPDATE",
            &[&job, &label],
        )
        .map_err(pg("sum progress"))?;
    let Some(stored) = stored else {
        // Only new rows: the label is new to the job (another replica may add it at the
        // same moment: then the sums add up).
        let Some(new_first) = delta.new_first else {
            return Ok(());
        };
        tx.execute(
            "INSERT INTO job_progress (job, label, total, done, entries, first)
             VALUES ($1, $2, $3, $4, $5, $6)
             ON CONFLICT (job, label) DO UPDATE SET
                 total = job_progress.total + excluded.total,
                 done = job_progress.done + excluded.done,
                 entries = job_progress.entries + excluded.entries,
                 first = LEAST(job_progress.first, excluded.first)",
            &[
                &job,
                &label,
                &delta.total,
                &delta.done,
                &delta.entries,
                &new_first,
            ],
        )
        .map_err(pg("sum progress"))?;
        return Ok(());
    };
    let (entries, first): (i64, i64) = (stored.get(0), stored.get(1));
    if entries + delta.entries <= 0 {
        tx.execute(
            "DELETE FROM job_progress WHERE job = $1 AND label IS NOT DISTINCT FROM $2",
            &[&job, &label],
        )
        .map_err(pg("sum progress"))?;
        return Ok(());
    }
    let first = match (delta.old_first, delta.new_first) {
        // The task's rows held the job's first row of this label and it now has none
        // that early: the first row is elsewhere (rare).
        (Some(old), new) if old == first && new.is_none_or(|new| new > first) => tx
            .query_one(
                "SELECT MIN(p.task * 4096 + p.position) FROM task_progress p
                 JOIN tasks t ON t.task = p.task
                 WHERE t.job = $1 AND p.label IS NOT DISTINCT FROM $2",
                &[&job, &label],
            )
            .map_err(pg("sum progress"))?
            .get::<_, Option<i64>>(0)
            .unwrap_or(first),
        (_, Some(new)) => first.min(new),
        (_, None) => first,
    };
    tx.execute(
        "UPDATE job_progress SET total = total + $3, done = done + $4, entries = entries + $5,
                                 first = $6
         WHERE job = $1 AND label IS NOT DISTINCT FROM $2",
        &[
            &job,
            &label,
            &delta.total,
            &delta.done,
            &delta.entries,
            &first,
        ],
    )
    .map_err(pg("sum progress"))?;
    Ok(())
}
