//! Leases: expiry, fencing of stale reports, extension.

use std::time::Duration;

use super::fixtures::*;
use crate::api::convert::now_millis;
use crate::api::workflows_v1::{JobState, TaskState};
use crate::server::store::{MAX_LEASE_REQUEUES, ReportOutcome, Store};

/// Rule 13: a running task whose lease ended is re-queued (and can be claimed again) up to
/// `MAX_LEASE_REQUEUES` times; the next expiry fails it and the job.
pub(crate) async fn lease_expiry_requeues_then_fails_the_task<S: Store>(store: S) {
    let lost = task("Lost");
    let lost_id = lost.id;
    let job_id = submit(&store, job("lost", vec![lost])).await;
    let lost_runner = runner(RUNNER_A, &["Lost"]);
    assert_eq!(
        store.next_lease_deadline().await.expect("next deadline"),
        None,
        "nothing runs"
    );

    for requeue in 0..MAX_LEASE_REQUEUES {
        let claimed = claim_one(&store, &lost_runner).await;
        assert_eq!(claimed.id, lost_id, "requeue {requeue}");
        let claimed_at = now_millis();
        assert!(
            store
                .next_lease_deadline()
                .await
                .expect("next deadline")
                .is_some()
        );
        assert_eq!(
            store
                .expire_leases(claimed_at - 1)
                .await
                .expect("expire leases"),
            0,
            "the lease holds"
        );
        assert_eq!(
            task_state(&store, job_id, lost_id).await,
            TaskState::Running
        );
        let expiry = claimed_at + LEASE.as_millis() as i64 + 1;
        assert_eq!(store.expire_leases(expiry).await.expect("expire leases"), 1);
        let summary = task_summary(&store, job_id, lost_id).await;
        assert_eq!(
            (summary.state, summary.retry_count),
            (TaskState::Queued, 0),
            "a lost lease re-queues without counting a retry (requeue {requeue})"
        );
        assert_ne!(job_state(&store, job_id).await, JobState::Failed);
    }

    claim_one(&store, &lost_runner).await;
    let expiry = now_millis() + LEASE.as_millis() as i64 + 1;
    assert_eq!(store.expire_leases(expiry).await.expect("expire leases"), 1);
    assert_eq!(
        task_state(&store, job_id, lost_id).await,
        TaskState::Failed,
        "too many lost leases"
    );
    assert_eq!(job_state(&store, job_id).await, JobState::Failed);
    assert!(claim(&store, &lost_runner).await.is_none());
    assert_eq!(
        store.next_lease_deadline().await.expect("next deadline"),
        None
    );
    assert_eq!(
        store.expire_leases(expiry).await.expect("expire leases"),
        0,
        "nothing is left to expire"
    );
}

/// Rule 14: once a lost lease was handed to another runner, the old claimant's reports are
/// stale and change nothing; the new claimant's report is applied.
pub(crate) async fn reports_from_a_lost_lease_are_stale<S: Store>(store: S) {
    let job_id = submit(&store, job("fenced", vec![task("Work")])).await;
    let first = claim_one(&store, &runner(RUNNER_A, &["Work"])).await;
    let expiry = now_millis() + LEASE.as_millis() as i64 + 1;
    assert_eq!(store.expire_leases(expiry).await.expect("expire leases"), 1);
    let second = claim_one(&store, &runner(RUNNER_B, &["Work"])).await;
    assert_eq!(second.id, first.id);

    let late = computed_with_subtasks(&first, RUNNER_A, vec![task("Sneaky")]);
    assert_eq!(
        report(&store, late).await,
        ReportOutcome::Stale(TaskState::Running)
    );
    assert_eq!(
        fail(&store, failed(&first, RUNNER_A, true)).await,
        ReportOutcome::Stale(TaskState::Running)
    );
    assert_eq!(
        fail(&store, failed(&first, RUNNER_A, false)).await,
        ReportOutcome::Stale(TaskState::Running)
    );
    assert_eq!(
        store
            .extend_lease(first.id, RUNNER_A.to_string(), LEASE)
            .await
            .expect("extend"),
        None
    );
    let summary = task_summary(&store, job_id, first.id).await;
    assert_eq!(
        (summary.state, summary.retry_count, summary.has_children),
        (TaskState::Running, 0, false)
    );
    assert_eq!(job_state(&store, job_id).await, JobState::Running);
    assert_eq!(
        store
            .get_job(job_id)
            .await
            .expect("get job")
            .stats
            .total_tasks,
        1,
        "no subtask was added"
    );

    assert_eq!(
        report(&store, computed(&second, RUNNER_B)).await,
        ReportOutcome::Applied(TaskState::Computed)
    );
    assert_eq!(job_state(&store, job_id).await, JobState::Completed);
    assert_eq!(
        report(&store, computed(&first, RUNNER_A)).await,
        ReportOutcome::Stale(TaskState::Computed),
        "a report for an ended task is stale"
    );
    assert_eq!(
        tasks_by_state(&store, job_id).await,
        [(TaskState::Computed, 1)]
    );
}

/// Rule 15: extending a running task's lease keeps it from expiring at the old deadline;
/// a task that is not running (or not the claimant's) is not extended.
pub(crate) async fn extend_lease_keeps_a_running_task<S: Store>(store: S) {
    let job_id = submit(&store, job("extended", vec![task("Long"), task("Queued")])).await;
    let long = claim_one(&store, &runner(RUNNER_A, &["Long"])).await;
    let old_expiry = now_millis() + LEASE.as_millis() as i64 + 1;

    let longer = Duration::from_secs(120);
    let before_extension = now_millis();
    let extended = store
        .extend_lease(long.id, RUNNER_A.to_string(), longer)
        .await
        .expect("extend lease");
    assert_eq!(extended, Some(longer));
    let deadline = store
        .next_lease_deadline()
        .await
        .expect("next deadline")
        .expect("a task runs");
    assert!(
        deadline >= before_extension + longer.as_millis() as i64,
        "the deadline {deadline} moved to at least {before_extension} + 120 s"
    );
    assert_eq!(
        store
            .expire_leases(old_expiry)
            .await
            .expect("expire leases"),
        0
    );
    assert_eq!(
        task_state(&store, job_id, long.id).await,
        TaskState::Running
    );
    assert_eq!(
        store
            .extend_lease(long.id, RUNNER_A.to_string(), LEASE)
            .await
            .expect("extend lease"),
        Some(LEASE)
    );
    assert_eq!(
        store
            .extend_lease(long.id, RUNNER_B.to_string(), longer)
            .await
            .expect("extend lease"),
        None,
        "another claimant cannot extend it"
    );

    let queued = all_tasks(&store, job_id)
        .await
        .into_iter()
        .find(|summary| summary.state == TaskState::Queued)
        .expect("a queued task");
    assert_eq!(
        store
            .extend_lease(queued.id, RUNNER_A.to_string(), LEASE)
            .await
            .expect("extend lease"),
        None
    );
    report(&store, computed(&long, RUNNER_A)).await;
    assert_eq!(
        store
            .extend_lease(long.id, RUNNER_A.to_string(), LEASE)
            .await
            .expect("extend lease"),
        None,
        "a computed task is not extended"
    );
    assert_eq!(
        task_state(&store, job_id, long.id).await,
        TaskState::Computed
    );
}

/// Rule 33: from the first claim on, a report or lease extension from anyone but the claimant
/// is stale and changes nothing. A runner id must match exactly; a claimant without one (the
/// official SDK, `host:<ip>:<port>`) is its host: its renewer and its reconnected main
/// connection on that host are the claimant, another host is not; once the task was fenced by
/// a lost lease, a report must come from the connection that claimed the current attempt.
pub(crate) async fn reports_and_extensions_from_another_claimant_are_stale_from_the_first_claim<
    S: Store,
>(
    store: S,
) {
    let job_id = submit(&store, job("first claim", vec![task("Work")])).await;
    let claimed = claim_one(&store, &runner(RUNNER_A, &["Work"])).await;
    assert_eq!(
        report(
            &store,
            computed_with_subtasks(&claimed, RUNNER_B, vec![task("Sneaky")])
        )
        .await,
        ReportOutcome::Stale(TaskState::Running)
    );
    for workflow_error in [true, false] {
        assert_eq!(
            fail(&store, failed(&claimed, RUNNER_B, workflow_error)).await,
            ReportOutcome::Stale(TaskState::Running)
        );
    }
    assert_eq!(
        hand_back(&store, &claimed, RUNNER_B).await,
        ReportOutcome::Stale(TaskState::Running)
    );
    assert_eq!(
        store
            .extend_lease(claimed.id, RUNNER_B.to_string(), LEASE)
            .await
            .expect("extend lease"),
        None,
        "another claimant's extension answers no lease"
    );
    assert_eq!(
        store
            .extend_leases(vec![(claimed.id, LEASE)], RUNNER_B.to_string())
            .await
            .expect("extend leases"),
        [None]
    );
    let summary = task_summary(&store, job_id, claimed.id).await;
    assert_eq!(
        (summary.state, summary.retry_count, summary.has_children),
        (TaskState::Running, 0, false),
        "nothing of the other claimant's was applied"
    );
    assert_eq!(
        report(&store, computed(&claimed, RUNNER_A)).await,
        ReportOutcome::Applied(TaskState::Computed)
    );
    assert_eq!(job_state(&store, job_id).await, JobState::Completed);

    // Claimants without a runner id are their host, with the name of the key they call with.
    const CLAIMING: &str = "host:fleet@10.0.0.1:5000";
    const RENEWER: &str = "host:fleet@10.0.0.1:5001";
    const OTHER_HOST: &str = "host:fleet@10.0.0.2:5000";
    const OTHER_KEY: &str = "host:other@10.0.0.1:5002";
    let job_id = submit(&store, job("hosts", vec![task("Host")])).await;
    let claimed = claim_one(&store, &runner(CLAIMING, &["Host"])).await;
    assert_eq!(
        store
            .extend_lease(claimed.id, OTHER_HOST.to_string(), LEASE)
            .await
            .expect("extend lease"),
        None,
        "another host cannot extend"
    );
    assert_eq!(
        store
            .extend_lease(claimed.id, OTHER_KEY.to_string(), LEASE)
            .await
            .expect("extend lease"),
        None,
        "another key on the same host cannot extend"
    );
    assert_eq!(
        fail(&store, failed(&claimed, OTHER_KEY, true)).await,
        ReportOutcome::Stale(TaskState::Running),
        "another key on the same host cannot report"
    );
    assert_eq!(
        fail(&store, failed(&claimed, OTHER_HOST, true)).await,
        ReportOutcome::Stale(TaskState::Running),
        "another host cannot report"
    );
    assert_eq!(
        store
            .extend_lease(claimed.id, RENEWER.to_string(), LEASE)
            .await
            .expect("extend lease"),
        Some(LEASE),
        "the claimant's renewer on its host extends"
    );
    let expiry = now_millis() + LEASE.as_millis() as i64 + 1;
    assert_eq!(store.expire_leases(expiry).await.expect("expire leases"), 1);
    let again = claim_one(&store, &runner("host:fleet@10.0.0.1:6000", &["Host"])).await;
    assert_eq!(again.id, claimed.id);
    assert_eq!(
        report(&store, computed(&claimed, CLAIMING)).await,
        ReportOutcome::Stale(TaskState::Running),
        "after a lost lease, the old attempt's connection is stale"
    );
    assert_eq!(
        report(&store, computed(&again, "host:fleet@10.0.0.1:6000")).await,
        ReportOutcome::Applied(TaskState::Computed)
    );
    assert_eq!(job_state(&store, job_id).await, JobState::Completed);
}
