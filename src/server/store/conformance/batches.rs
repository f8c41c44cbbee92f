//! The batched work protocol's operations: reports applied each on their own, claims up to a
//! capacity, leases extended together.

use std::time::Duration;

use uuid::Uuid;

use super::fixtures::*;
use crate::api::workflows_v1::TaskState;
use crate::server::store::{Error, Report, ReportOutcome, Store};

/// Rule 28: one batch applies each report on its own — an applied one, a stale one (the
/// task already computed) and one for an unknown task come back as such, and the unknown one
/// changes nothing — and then claims up to each claim's count, in order, oldest first.
pub(crate) async fn batched_reports_apply_each_on_its_own_and_claim_up_to_capacity<S: Store>(
    store: S,
) {
    let names = ["A", "B", "C", "D"];
    let job_id = submit(
        &store,
        job("batch", names.iter().map(|_| task("Batch")).collect()),
    )
    .await;
    let workers = runner(RUNNER_A, &["Batch"]);

    let (outcomes, claimed) = store
        .report_and_claim_batch(Vec::new(), vec![(workers.clone(), 2)])
        .await
        .expect("claim two");
    assert!(outcomes.is_empty());
    assert_eq!(claimed.len(), 2, "the capacity bounds the claim");
    assert!(
        claimed[0].id < claimed[1].id,
        "oldest first (ids are time-ordered)"
    );
    let (first, second) = (&claimed[0], &claimed[1]);

    let unknown = Uuid::now_v7();
    let mut stray = failed(first, RUNNER_A, false);
    stray.task_id = unknown;
    let reports = vec![
        Report::Computed(computed(first, RUNNER_A)),
        // The same task again: it is computed now, so this one is stale.
        Report::Computed(computed(first, RUNNER_A)),
        Report::Failed(stray),
        // A runner fault: re-queued without counting, and claimable again in this batch.
        Report::Failed(failed(second, RUNNER_A, false)),
    ];
    let (outcomes, claimed) = store
        .report_and_claim_batch(reports, vec![(workers.clone(), 10)])
        .await
        .expect("a batch with bad items is still answered");
    assert_eq!(outcomes.len(), 4, "one outcome per report");
    assert!(matches!(
        outcomes[0],
        Ok(ReportOutcome::Applied(TaskState::Computed))
    ));
    assert!(matches!(
        outcomes[1],
        Ok(ReportOutcome::Stale(TaskState::Computed))
    ));
    assert!(
        matches!(&outcomes[2], Err(Error::TaskNotFound { id }) if *id == unknown),
        "{:?}",
        outcomes[2]
    );
    assert!(matches!(
        outcomes[3],
        Ok(ReportOutcome::Applied(TaskState::Queued))
    ));
    assert_eq!(
        claimed.iter().map(|task| task.id).collect::<Vec<_>>()[..1],
        [second.id],
        "the re-queued task is the oldest claimable"
    );
    assert_eq!(claimed.len(), 3, "everything left, within the capacity");
    assert_eq!(
        task_state(&store, job_id, first.id).await,
        TaskState::Computed
    );
    assert_eq!(
        task_summary(&store, job_id, second.id).await.retry_count,
        0,
        "a runner fault is not a retry"
    );

    // Claims apply in order, each only to its identifiers: `Missing` matches nothing, and
    // the `Other` task waits for a runner of its own.
    submit(&store, job("more", vec![task("Batch"), task("Other")])).await;
    let (_, mixed) = store
        .report_and_claim_batch(
            Vec::new(),
            vec![
                (runner(RUNNER_A, &["Missing"]), 5),
                (runner(RUNNER_A, &["Batch"]), 5),
            ],
        )
        .await
        .expect("two claims");
    assert_eq!(
        mixed
            .iter()
            .map(|task| task.identifier.name.as_str())
            .collect::<Vec<_>>(),
        ["Batch"],
        "only what a claim's identifiers match"
    );

    // Report-only batches claim nothing.
    let reports = claimed
        .iter()
        .map(|task| Report::Computed(computed(task, RUNNER_A)))
        .collect();
    let (outcomes, nothing) = store
        .report_and_claim_batch(reports, vec![(workers, 0)])
        .await
        .expect("report the rest");
    assert!(
        outcomes
            .iter()
            .all(|outcome| matches!(outcome, Ok(ReportOutcome::Applied(TaskState::Computed))))
    );
    assert!(nothing.is_empty());
    assert_eq!(
        tasks_by_state(&store, job_id).await,
        [(TaskState::Computed, 4)]
    );
}

/// Rule 29: leases are extended together, each only for its claimant's running attempt; a
/// task that ended or does not exist is answered `None` without failing the others.
pub(crate) async fn leases_extend_together_only_for_their_claimant<S: Store>(store: S) {
    submit(
        &store,
        job("leases", vec![task("Hold"), task("Hold"), task("Hold")]),
    )
    .await;
    let mine = claim_one(&store, &runner(RUNNER_A, &["Hold"])).await;
    let done = claim_one(&store, &runner(RUNNER_A, &["Hold"])).await;
    let theirs = claim_one(&store, &runner(RUNNER_B, &["Hold"])).await;
    report(&store, computed(&done, RUNNER_A)).await;
    let lease = Duration::from_secs(45);
    let granted = store
        .extend_leases(
            vec![
                (mine.id, lease),
                (Uuid::now_v7(), lease),
                (done.id, lease),
                (theirs.id, lease),
            ],
            RUNNER_A.to_string(),
        )
        .await
        .expect("extend");
    assert_eq!(granted, [Some(lease), None, None, None]);
}
