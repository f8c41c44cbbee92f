//! Replicas: two stores on one state (two `tilebox server` processes on one database, or
//! two SQLite stores on one file) writing at once. Each rule gets both stores from
//! [`replica_rules!`] and races them against each other; it asserts what no interleaving
//! may change: every task claimed once, every lost lease requeued once, every report
//! either applied or stale.

use std::collections::HashSet;

use tokio::task::JoinSet;
use uuid::Uuid;

use super::fixtures::*;
use crate::api::convert::now_millis;
use crate::api::workflows_v1::{JobState, TaskState};
use crate::server::store::{ClaimedTask, MAX_LEASE_REQUEUES, Report, ReportOutcome, Store};

/// One `#[tokio::test]` per replica rule, each on two fresh stores of one state from
/// `$open`: an expression whose future answers `(store_a, store_b, guard)`.
macro_rules! replica_rules {
    ($open:expr) => {
        $crate::server::store::conformance::replica_rules!(
            @rules $open;
            two_stores_claim_each_task_once,
            two_reapers_requeue_a_lost_lease_once,
            a_report_racing_the_reaper_is_applied_or_stale_never_both,
            presence_recorded_through_one_store_is_listed_by_the_other,
        );
    };
    (@rules $open:expr; $($rule:ident,)+) => {$(
        #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
        async fn $rule() {
            let (first, second, guard) = $open.await;
            $crate::server::store::conformance::$rule(first, second).await;
            drop(guard);
        }
    )+};
}
pub(crate) use replica_rules;

const TASKS: usize = 120;

/// Claims every task of a job of `count` tasks `Work` through both stores at once.
async fn claim_all_through_both<S: Store + Clone>(
    first: &S,
    second: &S,
    count: usize,
) -> Vec<ClaimedTask> {
    let mut claimers = JoinSet::new();
    for (index, store) in [first, second, first, second].into_iter().enumerate() {
        let store = store.clone();
        let claimant = format!("runner-{index}");
        claimers.spawn(async move {
            let mut claimed = Vec::new();
            loop {
                let (_, batch) = store
                    .report_and_claim_batch(Vec::new(), vec![(runner(&claimant, &["Work"]), 7)])
                    .await
                    .expect("claim a batch");
                if batch.is_empty() {
                    return claimed;
                }
                claimed.extend(batch);
            }
        });
    }
    let mut claimed = Vec::with_capacity(count);
    while let Some(batch) = claimers.join_next().await {
        claimed.extend(batch.expect("a claimer ends"));
    }
    claimed
}

async fn submit_work<S: Store>(store: &S, count: usize) -> (Uuid, Vec<Uuid>) {
    let tasks: Vec<_> = (0..count).map(|_| task("Work")).collect();
    let ids = tasks.iter().map(|task| task.id).collect();
    (submit(store, job("replicas", tasks)).await, ids)
}

/// Many tasks claimed concurrently through two stores: each is handed out exactly once,
/// and both stores' counters agree.
pub(crate) async fn two_stores_claim_each_task_once<S: Store + Clone>(first: S, second: S) {
    let (job_id, ids) = submit_work(&first, TASKS).await;
    let claimed = claim_all_through_both(&first, &second, TASKS).await;
    let claimed_ids: Vec<Uuid> = claimed.iter().map(|task| task.id).collect();
    let distinct: HashSet<Uuid> = claimed_ids.iter().copied().collect();
    assert_eq!(
        claimed_ids.len(),
        distinct.len(),
        "no task is claimed twice"
    );
    assert_eq!(sorted(claimed_ids), sorted(ids), "every task is claimed");
    for store in [&first, &second] {
        assert_eq!(
            tasks_by_state(store, job_id).await,
            [(TaskState::Running, TASKS as u64)]
        );
        assert_eq!(job_state(store, job_id).await, JobState::Running);
    }
}

/// Both stores expire the same lost leases at once, round after round: each round every
/// lease is requeued once (the touched counts sum to the tasks, the tasks are queued, not
/// counted twice), and only the lease loss after `MAX_LEASE_REQUEUES` fails the tasks: a
/// lease loss counted twice would fail them rounds earlier.
pub(crate) async fn two_reapers_requeue_a_lost_lease_once<S: Store + Clone>(first: S, second: S) {
    const LOST: usize = 24;
    let (job_id, _) = submit_work(&first, LOST).await;
    for round in 0..=MAX_LEASE_REQUEUES {
        let claimed = claim_all_through_both(&first, &second, LOST).await;
        assert_eq!(
            claimed.len(),
            LOST,
            "round {round}: every task is claimable"
        );
        let expiry = now_millis() + LEASE.as_millis() as i64 + 1;
        let (a, b) = (first.clone(), second.clone());
        let reaper_a = tokio::spawn(async move { a.expire_leases(expiry).await });
        let reaper_b = tokio::spawn(async move { b.expire_leases(expiry).await });
        let touched_a = reaper_a.await.expect("reaper a").expect("expire leases");
        let touched_b = reaper_b.await.expect("reaper b").expect("expire leases");
        assert_eq!(
            touched_a + touched_b,
            LOST,
            "round {round}: each lost lease is handled once ({touched_a} + {touched_b})"
        );
        if round < MAX_LEASE_REQUEUES {
            assert_eq!(
                tasks_by_state(&second, job_id).await,
                [(TaskState::Queued, LOST as u64)],
                "round {round}: requeued once each"
            );
            assert_ne!(job_state(&first, job_id).await, JobState::Failed);
        } else {
            assert_eq!(
                tasks_by_state(&second, job_id).await,
                [(TaskState::Failed, LOST as u64)],
                "the lease loss after {MAX_LEASE_REQUEUES} requeues fails each task"
            );
            assert_eq!(job_state(&first, job_id).await, JobState::Failed);
        }
    }
}

/// The claimant reports its tasks through one store while the other expires their leases:
/// each report is either applied (the task is computed, the reaper passed it by) or stale
/// (the reaper requeued it first), never both, never neither.
pub(crate) async fn a_report_racing_the_reaper_is_applied_or_stale_never_both<S: Store + Clone>(
    first: S,
    second: S,
) {
    let (job_id, _) = submit_work(&first, TASKS).await;
    let mut claimed = Vec::new();
    while claimed.len() < TASKS {
        let (_, batch) = first
            .report_and_claim_batch(Vec::new(), vec![(runner(RUNNER_A, &["Work"]), TASKS)])
            .await
            .expect("claim");
        assert!(!batch.is_empty(), "the tasks are claimable");
        claimed.extend(batch);
    }
    let expiry = now_millis() + LEASE.as_millis() as i64 + 1;
    let reporter = {
        let store = first.clone();
        tokio::spawn(async move {
            let mut outcomes = Vec::new();
            // Small batches, so the reaper's pass falls between some of them.
            for chunk in claimed.chunks(4) {
                let reports = chunk
                    .iter()
                    .map(|task| Report::Computed(computed(task, RUNNER_A)))
                    .collect();
                let (results, _) = store
                    .report_and_claim_batch(reports, Vec::new())
                    .await
                    .expect("report");
                for (task, result) in chunk.iter().zip(results) {
                    outcomes.push((task.id, result.expect("a report of a known task")));
                }
            }
            outcomes
        })
    };
    let reaper = {
        let store = second.clone();
        tokio::spawn(async move {
            let mut touched = 0;
            while touched == 0 {
                touched += store.expire_leases(expiry).await.expect("expire leases");
                if store
                    .next_lease_deadline()
                    .await
                    .expect("deadline")
                    .is_none()
                {
                    break;
                }
            }
            touched
        })
    };
    let outcomes = reporter.await.expect("reporter");
    let touched = reaper.await.expect("reaper");
    let applied = outcomes
        .iter()
        .filter(|(_, outcome)| *outcome == ReportOutcome::Applied(TaskState::Computed))
        .count();
    let stale = outcomes
        .iter()
        .filter(|(_, outcome)| *outcome == ReportOutcome::Stale(TaskState::Queued))
        .count();
    assert_eq!(
        applied + stale,
        TASKS,
        "every report is applied or stale (on a requeued task): {outcomes:?}"
    );
    assert_eq!(stale, touched, "a stale report is one the reaper requeued");
    for (id, outcome) in &outcomes {
        let state = task_state(&second, job_id, *id).await;
        let expected = match outcome {
            ReportOutcome::Applied(_) => TaskState::Computed,
            ReportOutcome::Stale(_) => TaskState::Queued,
        };
        assert_eq!(state, expected, "task {id}: {outcome:?}");
    }
    let mut expected_counts = Vec::new();
    if stale > 0 {
        expected_counts.push((TaskState::Queued, stale as u64));
    }
    if applied > 0 {
        expected_counts.push((TaskState::Computed, applied as u64));
    }
    assert_eq!(tasks_by_state(&first, job_id).await, expected_counts);
    let expected_job = if stale == 0 {
        JobState::Completed
    } else {
        JobState::Started
    };
    assert_eq!(job_state(&second, job_id).await, expected_job);
}

/// Runner contacts flushed by two stores at once (two replicas' presence) are listed by
/// either, each runner with the newest contact of the two.
pub(crate) async fn presence_recorded_through_one_store_is_listed_by_the_other<S: Store + Clone>(
    first: S,
    second: S,
) {
    use super::runners::seen;
    let runners = |at: i64| -> Vec<crate::server::store::RunnerSeen> {
        (0..20)
            .map(|index| {
                seen(
                    &format!("runner:ops/{index:02}"),
                    "default",
                    at + index,
                    &[("Work", "v1.0")],
                )
            })
            .collect()
    };
    let (older, newer) = (runners(1_000), runners(2_000));
    let writers = [
        (first.clone(), older.clone()),
        (second.clone(), newer.clone()),
    ]
    .into_iter()
    .map(|(store, batch)| tokio::spawn(async move { store.record_runners(batch).await }));
    for writer in writers.collect::<Vec<_>>() {
        writer.await.expect("join").expect("record runners");
    }
    for store in [&first, &second] {
        let mut listed = store.list_runners(None, 0).await.expect("list runners");
        listed.sort_by(|a, b| a.runner.cmp(&b.runner));
        // The older flush changes nothing when it lands last (its contacts are older), and
        // is replaced when it lands first: either way each runner's newest contact is listed.
        assert_eq!(
            listed
                .iter()
                .map(|runner| (runner.runner.clone(), runner.last_seen_at))
                .collect::<Vec<_>>(),
            newer
                .iter()
                .map(|runner| (runner.runner.clone(), runner.last_seen_at))
                .collect::<Vec<_>>()
        );
    }
}
