//! Failures: retries, non-workflow errors, optional scopes, job retry and cancel.

use std::collections::HashSet;

use uuid::Uuid;

use super::fixtures::*;
use crate::api::convert::now_millis;
use crate::api::limits::MAX_DISPLAY_CHARS;
use crate::api::workflows_v1::{JobState, TaskState};
use crate::server::store::{
    ClaimedTask, Error, FailedReport, MAX_LEASE_REQUEUES, MAX_RUNNER_FAILURE_REQUEUES, NewTask,
    ReportOutcome, Store,
};

/// Rule 7: a workflow error re-queues while retries remain, then fails the task and the
/// job, which stops its other tasks.
pub(crate) async fn workflow_errors_retry_until_max_retries_then_fail_the_job<S: Store>(store: S) {
    let flaky = NewTask {
        max_retries: 2,
        ..task("Flaky")
    };
    let flaky_id = flaky.id;
    let other = task("Other");
    let other_id = other.id;
    let job_id = submit(&store, job("retries", vec![flaky, other])).await;
    let flaky_runner = runner(RUNNER_A, &["Flaky"]);

    for attempt in 0..2 {
        let claimed = claim_one(&store, &flaky_runner).await;
        assert_eq!((claimed.id, claimed.retry_count), (flaky_id, attempt));
        let outcome = fail(&store, failed(&claimed, RUNNER_A, true)).await;
        assert_eq!(
            outcome,
            ReportOutcome::Applied(TaskState::Queued),
            "attempt {attempt} has retries left"
        );
        let summary = task_summary(&store, job_id, flaky_id).await;
        assert_eq!(
            (summary.state, summary.retry_count),
            (TaskState::Queued, attempt + 1)
        );
        assert_ne!(job_state(&store, job_id).await, JobState::Failed);
    }

    let claimed = claim_one(&store, &flaky_runner).await;
    assert_eq!(claimed.retry_count, 2);
    assert_eq!(
        fail(&store, failed(&claimed, RUNNER_A, true)).await,
        ReportOutcome::Applied(TaskState::Failed)
    );
    let summary = task_summary(&store, job_id, flaky_id).await;
    assert_eq!((summary.state, summary.retry_count), (TaskState::Failed, 2));
    assert_eq!(job_state(&store, job_id).await, JobState::Failed);
    assert!(
        claim(&store, &runner(RUNNER_B, &["Flaky", "Other"]))
            .await
            .is_none(),
        "a failed job hands out nothing"
    );
    assert_eq!(
        task_state(&store, job_id, other_id).await,
        TaskState::Queued
    );
    assert_eq!(
        tasks_by_state(&store, job_id).await,
        [(TaskState::Queued, 1), (TaskState::Failed, 1)]
    );
}

/// Rule 8: a failure that is not the task's own (the runner could not run it) re-queues the
/// task without counting a retry (up to `MAX_RUNNER_FAILURE_REQUEUES` times: rule 30).
pub(crate) async fn non_workflow_errors_requeue_without_counting<S: Store>(store: S) {
    let shaky = task("Shaky");
    let shaky_id = shaky.id;
    let job_id = submit(&store, job("shaky", vec![shaky])).await;
    let shaky_runner = runner(RUNNER_A, &["Shaky"]);
    for _ in 0..3 {
        let claimed = claim_one(&store, &shaky_runner).await;
        assert_eq!((claimed.id, claimed.retry_count), (shaky_id, 0));
        let outcome = fail(&store, failed(&claimed, RUNNER_A, false)).await;
        assert_eq!(
            outcome,
            ReportOutcome::Applied(TaskState::Queued),
            "max_retries 0 does not matter"
        );
        let summary = task_summary(&store, job_id, shaky_id).await;
        assert_eq!((summary.state, summary.retry_count), (TaskState::Queued, 0));
        assert_ne!(job_state(&store, job_id).await, JobState::Failed);
    }
    let claimed = claim_one(&store, &shaky_runner).await;
    report(&store, computed(&claimed, RUNNER_A)).await;
    assert_eq!(job_state(&store, job_id).await, JobState::Completed);
}

/// Rule 30: non-workflow failures are capped like lost leases: the task is re-queued after
/// each of the first `MAX_RUNNER_FAILURE_REQUEUES` without counting a retry, and the next one
/// fails it (whatever retries it has left) and the job, with a display naming the cause and
/// the count. A job retry starts the count afresh.
pub(crate) async fn non_workflow_failures_are_capped_then_fail_the_task<S: Store>(store: S) {
    let breaking = NewTask {
        max_retries: 3,
        ..task("Breaking")
    };
    let breaking_id = breaking.id;
    let job_id = submit(&store, job("breaking", vec![breaking])).await;
    let breaking_runner = runner(RUNNER_A, &["Breaking"]);
    for requeue in 0..MAX_RUNNER_FAILURE_REQUEUES {
        let claimed = claim_one(&store, &breaking_runner).await;
        assert_eq!(claimed.id, breaking_id, "requeue {requeue}");
        let outcome = fail(&store, failed(&claimed, RUNNER_A, false)).await;
        assert_eq!(
            outcome,
            ReportOutcome::Applied(TaskState::Queued),
            "requeue {requeue}"
        );
        let summary = task_summary(&store, job_id, breaking_id).await;
        assert_eq!((summary.state, summary.retry_count), (TaskState::Queued, 0));
        assert_ne!(job_state(&store, job_id).await, JobState::Failed);
    }
    let claimed = claim_one(&store, &breaking_runner).await;
    let outcome = fail(&store, failed(&claimed, RUNNER_A, false)).await;
    assert_eq!(outcome, ReportOutcome::Applied(TaskState::Failed));
    let summary = task_summary(&store, job_id, breaking_id).await;
    assert_eq!((summary.state, summary.retry_count), (TaskState::Failed, 0));
    let cause = format!(
        "RunnerFailed('the runners could not run the task {} times')",
        MAX_RUNNER_FAILURE_REQUEUES + 1
    );
    assert_eq!(summary.display.lines().last(), Some(cause.as_str()));
    assert_eq!(job_state(&store, job_id).await, JobState::Failed);
    assert!(claim(&store, &breaking_runner).await.is_none());

    // A retry of the job starts the count afresh: the next runner failure re-queues.
    assert_eq!(store.retry_job(job_id).await.expect("retry job"), 1);
    let claimed = claim_one(&store, &breaking_runner).await;
    let outcome = fail(&store, failed(&claimed, RUNNER_A, false)).await;
    assert_eq!(outcome, ReportOutcome::Applied(TaskState::Queued));
    let claimed = claim_one(&store, &breaking_runner).await;
    report(&store, computed(&claimed, RUNNER_A)).await;
    assert_eq!(job_state(&store, job_id).await, JobState::Completed);
}

/// Rule 31: a hand-back (the runner gives a claimed task back unrun: it shuts down, its host
/// went down with an earlier task, its release was replaced) re-queues the task with the
/// reported display, any number of times, counting neither a retry nor a runner failure: the
/// runner-failure count of rule 30 is neither raised nor reset by it. Like every report it is
/// applied only to the claimant's running attempt: a second hand-back of the same attempt, or
/// one from a runner that lost the task, is stale; and once handed back and claimed by
/// another runner, the task takes no report of the attempt handed back.
pub(crate) async fn a_hand_back_requeues_without_counting_any_number_of_times<S: Store>(store: S) {
    let patient = NewTask {
        max_retries: 0,
        ..task("Patient")
    };
    let patient_id = patient.id;
    let job_id = submit(&store, job("handed-back", vec![patient])).await;
    let patient_runner = runner(RUNNER_A, &["Patient"]);
    let shutdown_display = "Patient\nRunnerShutdown('Task was interrupted')";

    // Half the runner-failure allowance first.
    let half = MAX_RUNNER_FAILURE_REQUEUES / 2;
    for _ in 0..half {
        let claimed = claim_one(&store, &patient_runner).await;
        let outcome = fail(&store, failed(&claimed, RUNNER_A, false)).await;
        assert_eq!(outcome, ReportOutcome::Applied(TaskState::Queued));
    }
    // Then far more hand-backs than any cap.
    let hand_backs = 3 * (MAX_RUNNER_FAILURE_REQUEUES + 1);
    for round in 0..hand_backs {
        let claimed = claim_one(&store, &patient_runner).await;
        assert_eq!(
            (claimed.id, claimed.retry_count),
            (patient_id, 0),
            "round {round}"
        );
        let claimed = ClaimedTask {
            display: "Patient".to_string(),
            ..claimed
        };
        assert_eq!(
            hand_back(&store, &claimed, RUNNER_A).await,
            ReportOutcome::Applied(TaskState::Queued),
            "round {round}"
        );
        assert_eq!(
            hand_back(&store, &claimed, RUNNER_A).await,
            ReportOutcome::Stale(TaskState::Queued),
            "the same attempt handed back twice (round {round})"
        );
        let summary = task_summary(&store, job_id, patient_id).await;
        assert_eq!(
            (summary.state, summary.retry_count, summary.display.as_str()),
            (TaskState::Queued, 0, shutdown_display),
            "round {round}"
        );
        assert_ne!(job_state(&store, job_id).await, JobState::Failed);
    }

    // A runner that handed the task back and reports it later anyway: stale once another
    // runner claimed it.
    let handed = claim_one(&store, &patient_runner).await;
    hand_back(&store, &handed, RUNNER_A).await;
    let current = claim_one(&store, &runner(RUNNER_B, &["Patient"])).await;
    assert_eq!(
        report(&store, computed(&handed, RUNNER_A)).await,
        ReportOutcome::Stale(TaskState::Running)
    );
    assert_eq!(
        hand_back(&store, &current, RUNNER_B).await,
        ReportOutcome::Applied(TaskState::Queued)
    );

    // A runner that lost the task hands it back late: stale, the new attempt runs on.
    let lost = claim_one(&store, &patient_runner).await;
    let expiry = now_millis() + LEASE.as_millis() as i64 + 1;
    assert_eq!(store.expire_leases(expiry).await.expect("expire leases"), 1);
    let current = claim_one(&store, &runner(RUNNER_B, &["Patient"])).await;
    assert_eq!(current.id, patient_id);
    assert_eq!(
        hand_back(&store, &lost, RUNNER_A).await,
        ReportOutcome::Stale(TaskState::Running)
    );
    assert_eq!(
        task_state(&store, job_id, patient_id).await,
        TaskState::Running
    );
    assert_eq!(
        hand_back(&store, &current, RUNNER_B).await,
        ReportOutcome::Applied(TaskState::Queued)
    );

    // The runner failures counted before the hand-backs still count: the rest of the
    // allowance re-queues, the next one fails the task.
    for requeue in half..MAX_RUNNER_FAILURE_REQUEUES {
        let claimed = claim_one(&store, &patient_runner).await;
        let outcome = fail(&store, failed(&claimed, RUNNER_A, false)).await;
        assert_eq!(
            outcome,
            ReportOutcome::Applied(TaskState::Queued),
            "runner failure {requeue}"
        );
    }
    let claimed = claim_one(&store, &patient_runner).await;
    let outcome = fail(&store, failed(&claimed, RUNNER_A, false)).await;
    assert_eq!(outcome, ReportOutcome::Applied(TaskState::Failed));
    let summary = task_summary(&store, job_id, patient_id).await;
    assert_eq!((summary.state, summary.retry_count), (TaskState::Failed, 0));
    let cause = format!(
        "RunnerFailed('the runners could not run the task {} times')",
        MAX_RUNNER_FAILURE_REQUEUES + 1
    );
    assert_eq!(summary.display.lines().last(), Some(cause.as_str()));

    // A hand-back of a task that computes is just one more claim: it completes.
    let job_id = submit(&store, job("handed-back-then-run", vec![task("Patient")])).await;
    for _ in 0..hand_backs {
        let claimed = claim_one(&store, &patient_runner).await;
        hand_back(&store, &claimed, RUNNER_A).await;
    }
    let claimed = claim_one(&store, &patient_runner).await;
    assert_eq!(claimed.retry_count, 0);
    report(&store, computed(&claimed, RUNNER_A)).await;
    assert_eq!(job_state(&store, job_id).await, JobState::Completed);
}

/// Rule 32: a reason the store appends to a display (a runner failure or a lost lease past
/// its cap) keeps the display within its limit of 1,024 characters: the reason is kept whole
/// and ends the display, the head of the old display is cut. A stored display is handed to
/// the next attempt, which reports it back; over the limit, that report would fail the task.
pub(crate) async fn appended_failure_reasons_keep_the_display_within_its_limit<S: Store>(store: S) {
    let full = "é".repeat(MAX_DISPLAY_CHARS);
    let breaking = NewTask {
        display: full.clone(),
        ..task("Breaking")
    };
    let breaking_id = breaking.id;
    let broken_job = submit(&store, job("breaking-long-display", vec![breaking])).await;
    let breaking_runner = runner(RUNNER_A, &["Breaking"]);
    for _ in 0..=MAX_RUNNER_FAILURE_REQUEUES {
        let claimed = claim_one(&store, &breaking_runner).await;
        assert_eq!(claimed.display.chars().count(), MAX_DISPLAY_CHARS);
        let report = FailedReport {
            display: full.clone(),
            ..failed(&claimed, RUNNER_A, false)
        };
        fail(&store, report).await;
    }
    let summary = task_summary(&store, broken_job, breaking_id).await;
    assert_eq!(summary.state, TaskState::Failed);
    let cause = format!(
        "RunnerFailed('the runners could not run the task {} times')",
        MAX_RUNNER_FAILURE_REQUEUES + 1
    );
    assert_eq!(summary.display.chars().count(), MAX_DISPLAY_CHARS);
    assert!(
        summary.display.ends_with(&format!("é\n{cause}")),
        "{}",
        summary.display
    );

    let lost = NewTask {
        display: "x".repeat(MAX_DISPLAY_CHARS),
        ..task("Lost")
    };
    let lost_id = lost.id;
    let lost_job = submit(&store, job("lost-long-display", vec![lost])).await;
    let lost_runner = runner(RUNNER_A, &["Lost"]);
    for _ in 0..=MAX_LEASE_REQUEUES {
        claim_one(&store, &lost_runner).await;
        let expiry = now_millis() + LEASE.as_millis() as i64 + 1;
        assert_eq!(store.expire_leases(expiry).await.expect("expire leases"), 1);
    }
    let summary = task_summary(&store, lost_job, lost_id).await;
    assert_eq!(summary.state, TaskState::Failed);
    let cause = format!(
        "LeaseExpired('the task lost its lease {} times')",
        MAX_LEASE_REQUEUES + 1
    );
    assert_eq!(summary.display.chars().count(), MAX_DISPLAY_CHARS);
    assert!(
        summary.display.ends_with(&format!("x\n{cause}")),
        "{}",
        summary.display
    );

    // A retry hands the stored display to the next attempt: within the limit.
    assert_eq!(store.retry_job(lost_job).await.expect("retry job"), 1);
    let claimed = claim_one(&store, &lost_runner).await;
    assert_eq!(claimed.display, summary.display);
}

/// Rule 9 (SDK reference §5.5, optional subtask): an optional task that fails ends
/// FAILED_OPTIONAL and its dependant still runs.
pub(crate) async fn failed_optional_subtask_lets_its_dependant_run<S: Store>(store: S) {
    let job_id = submit(&store, job("optional-subtask", vec![task("Root")])).await;
    let root = claim_one(&store, &runner(RUNNER_A, &["Root"])).await;
    let failing = NewTask {
        optional: true,
        ..task("Failing")
    };
    let failing_id = failing.id;
    let succeeding = NewTask {
        depends_on: vec![0],
        ..task("Succeeding")
    };
    report(
        &store,
        computed_with_subtasks(&root, RUNNER_A, vec![failing, succeeding]),
    )
    .await;

    assert!(
        claim(&store, &runner(RUNNER_A, &["Succeeding"]))
            .await
            .is_none(),
        "the dependant waits"
    );
    let claimed = claim_one(&store, &runner(RUNNER_A, &["Failing"])).await;
    assert_eq!(claimed.id, failing_id);
    let outcome = fail(&store, failed(&claimed, RUNNER_A, true)).await;
    assert_eq!(outcome, ReportOutcome::Applied(TaskState::FailedOptional));
    assert_ne!(
        job_state(&store, job_id).await,
        JobState::Failed,
        "an optional failure does not fail the job"
    );

    let claimed = claim_one(&store, &runner(RUNNER_A, &["Succeeding"])).await;
    assert_eq!(claimed.depends_on, [failing_id]);
    report(&store, computed(&claimed, RUNNER_A)).await;
    assert_eq!(job_state(&store, job_id).await, JobState::Completed);
    assert_eq!(
        tasks_by_state(&store, job_id).await,
        [(TaskState::Computed, 2), (TaskState::FailedOptional, 1)]
    );
}

/// Rule 10 (SDK reference §5.5, optional sub-branch): a failure below an optional task ends
/// FAILED_OPTIONAL and skips what still waits in that branch; the job completes.
pub(crate) async fn failure_inside_optional_branch_skips_the_rest_of_it<S: Store>(store: S) {
    let job_id = submit(&store, job("optional-branch", vec![task("Root")])).await;
    let root = claim_one(&store, &runner(RUNNER_A, &["Root"])).await;
    let branch = NewTask {
        optional: true,
        ..task("OptionalSubtasks")
    };
    report(
        &store,
        computed_with_subtasks(&root, RUNNER_A, vec![branch, task("Succeeding")]),
    )
    .await;

    let branch = claim_one(&store, &runner(RUNNER_A, &["OptionalSubtasks"])).await;
    let after_failing = NewTask {
        depends_on: vec![0],
        ..task("Succeeding2")
    };
    let after_failing_id = after_failing.id;
    report(
        &store,
        computed_with_subtasks(&branch, RUNNER_A, vec![task("Failing"), after_failing]),
    )
    .await;

    let succeeding = claim_one(&store, &runner(RUNNER_A, &["Succeeding"])).await;
    report(&store, computed(&succeeding, RUNNER_A)).await;
    let failing = claim_one(&store, &runner(RUNNER_A, &["Failing"])).await;
    assert_eq!(failing.parent_id, Some(branch.id));
    let outcome = fail(&store, failed(&failing, RUNNER_A, true)).await;
    assert_eq!(
        outcome,
        ReportOutcome::Applied(TaskState::FailedOptional),
        "it fails inside an optional scope"
    );

    assert!(
        claim(&store, &runner(RUNNER_A, &["Succeeding2"]))
            .await
            .is_none()
    );
    assert_eq!(
        task_state(&store, job_id, after_failing_id).await,
        TaskState::Skipped
    );
    assert_eq!(
        task_state(&store, job_id, branch.id).await,
        TaskState::Computed
    );
    assert_eq!(job_state(&store, job_id).await, JobState::Completed);
    assert_eq!(
        tasks_by_state(&store, job_id).await,
        [
            (TaskState::Computed, 3),
            (TaskState::Skipped, 1),
            (TaskState::FailedOptional, 1)
        ]
    );

    // A task of the branch that was running when it failed finishes; what it submits then
    // is skipped at once.
    let job_id = submit(&store, job("optional-branch-running", vec![task("Root")])).await;
    let root = claim_one(&store, &runner(RUNNER_A, &["Root"])).await;
    let branch = NewTask {
        optional: true,
        ..task("OptionalSubtasks")
    };
    report(
        &store,
        computed_with_subtasks(&root, RUNNER_A, vec![branch]),
    )
    .await;
    let branch = claim_one(&store, &runner(RUNNER_A, &["OptionalSubtasks"])).await;
    report(
        &store,
        computed_with_subtasks(&branch, RUNNER_A, vec![task("Busy"), task("Failing")]),
    )
    .await;
    let busy = claim_one(&store, &runner(RUNNER_A, &["Busy"])).await;
    let failing = claim_one(&store, &runner(RUNNER_B, &["Failing"])).await;
    let outcome = fail(&store, failed(&failing, RUNNER_B, true)).await;
    assert_eq!(outcome, ReportOutcome::Applied(TaskState::FailedOptional));
    assert_eq!(
        job_state(&store, job_id).await,
        JobState::Running,
        "Busy still runs"
    );
    let deep = task("Deep");
    let deep_id = deep.id;
    let outcome = report(&store, computed_with_subtasks(&busy, RUNNER_A, vec![deep])).await;
    assert_eq!(outcome, ReportOutcome::Applied(TaskState::Computed));
    assert_eq!(
        task_state(&store, job_id, deep_id).await,
        TaskState::Skipped
    );
    assert!(claim(&store, &runner(RUNNER_A, &["Deep"])).await.is_none());
    assert_eq!(job_state(&store, job_id).await, JobState::Completed);
    assert_eq!(
        tasks_by_state(&store, job_id).await,
        [
            (TaskState::Computed, 3),
            (TaskState::Skipped, 1),
            (TaskState::FailedOptional, 1)
        ]
    );
}

/// Rule 11: retrying a failed job re-queues its failed tasks and resumes it (RUNNING at
/// once, as the SDK's recorded tests read it); a completed job has nothing to retry.
pub(crate) async fn retry_job_requeues_failed_tasks_and_resumes<S: Store>(store: S) {
    let flaky = task("Flaky");
    let flaky_id = flaky.id;
    let job_id = submit(&store, job("flaky", vec![flaky, task("Other")])).await;
    let flaky_runner = runner(RUNNER_A, &["Flaky"]);

    for round in 0..2 {
        let claimed = claim_one(&store, &flaky_runner).await;
        assert_eq!(claimed.id, flaky_id);
        assert_eq!(
            fail(&store, failed(&claimed, RUNNER_A, true)).await,
            ReportOutcome::Applied(TaskState::Failed)
        );
        assert_eq!(
            job_state(&store, job_id).await,
            JobState::Failed,
            "round {round}"
        );
        assert_eq!(
            store.retry_job(job_id).await.expect("retry job"),
            1,
            "one failed task is re-queued"
        );
        assert_eq!(
            job_state(&store, job_id).await,
            JobState::Running,
            "a retried job is running at once"
        );
        assert_eq!(
            task_state(&store, job_id, flaky_id).await,
            TaskState::Queued
        );
    }

    let claimed = claim_one(&store, &flaky_runner).await;
    report(&store, computed(&claimed, RUNNER_A)).await;
    let other = claim_one(&store, &runner(RUNNER_A, &["Other"])).await;
    report(&store, computed(&other, RUNNER_A)).await;
    assert_eq!(job_state(&store, job_id).await, JobState::Completed);
    assert_eq!(
        tasks_by_state(&store, job_id).await,
        [(TaskState::Computed, 2)]
    );

    assert_eq!(
        store.retry_job(job_id).await.expect("retry completed job"),
        0
    );
    assert_eq!(job_state(&store, job_id).await, JobState::Completed);
    let missing = store.retry_job(Uuid::now_v7()).await;
    assert!(
        matches!(missing, Err(Error::JobNotFound { .. })),
        "{missing:?}"
    );
}

/// Rule 12: a canceled job starts nothing new, a running task's result is still taken, and
/// retry resumes the job.
pub(crate) async fn cancel_job_stops_queued_tasks_and_lets_running_ones_finish<S: Store>(store: S) {
    let waiting = task("Waiting");
    let waiting_id = waiting.id;
    let job_id = submit(&store, job("canceled", vec![task("Slow"), waiting])).await;
    let slow = claim_one(&store, &runner(RUNNER_A, &["Slow"])).await;

    store.cancel_job(job_id).await.expect("cancel job");
    assert_eq!(job_state(&store, job_id).await, JobState::Canceled);
    let everyone = runner(RUNNER_B, &["Slow", "Waiting", "Late"]);
    assert!(
        claim(&store, &everyone).await.is_none(),
        "a canceled job hands out nothing"
    );

    let late = task("Late");
    let late_id = late.id;
    let outcome = report(&store, computed_with_subtasks(&slow, RUNNER_A, vec![late])).await;
    assert_eq!(
        outcome,
        ReportOutcome::Applied(TaskState::Computed),
        "a running task finishes"
    );
    assert_eq!(job_state(&store, job_id).await, JobState::Canceled);
    assert!(
        claim(&store, &everyone).await.is_none(),
        "new subtasks of a canceled job do not start"
    );
    assert_eq!(
        task_state(&store, job_id, waiting_id).await,
        TaskState::Queued
    );
    assert_eq!(task_state(&store, job_id, late_id).await, TaskState::Queued);

    assert_eq!(
        store.retry_job(job_id).await.expect("retry canceled job"),
        0,
        "nothing had failed"
    );
    assert_eq!(
        job_state(&store, job_id).await,
        JobState::Running,
        "retry resumes a canceled job"
    );
    let mut resumed = HashSet::new();
    while let Some(claimed) = claim(&store, &everyone).await {
        resumed.insert(claimed.id);
        report(&store, computed(&claimed, RUNNER_B)).await;
    }
    assert_eq!(resumed, HashSet::from([waiting_id, late_id]));
    assert_eq!(job_state(&store, job_id).await, JobState::Completed);

    // Canceled while its last task ran: that task finishes, and a retry finds nothing left.
    let last = submit(&store, job("canceled-at-the-end", vec![task("Slow")])).await;
    let slow = claim_one(&store, &runner(RUNNER_A, &["Slow"])).await;
    store.cancel_job(last).await.expect("cancel job");
    report(&store, computed(&slow, RUNNER_A)).await;
    assert_eq!(
        job_state(&store, last).await,
        JobState::Canceled,
        "a canceled job stays canceled"
    );
    assert_eq!(store.retry_job(last).await.expect("retry canceled job"), 0);
    assert_eq!(
        job_state(&store, last).await,
        JobState::Completed,
        "a resumed job with every task done is completed"
    );
}
