//! What the console looks up: the claimant of each task, and tasks by id.

use uuid::Uuid;

use super::fixtures::*;
use crate::api::workflows_v1::TaskState;
use crate::server::store::{Error, Store, TaskSummary};

/// A task names who claimed its latest attempt: nobody while queued, the claimant while it
/// runs and after it ended (computed or failed); a job retry that queues a failed task again
/// clears it, and the next claim names the new claimant.
pub(crate) async fn tasks_name_the_claimant_of_their_latest_attempt<S: Store>(store: S) {
    let job_id = submit(&store, job("claimants", vec![task("Done"), task("Broken")])).await;
    let claimant_of = |id: Uuid| {
        let store = &store;
        async move { task_summary(store, job_id, id).await.claimant }
    };
    let done = claim_one(&store, &runner(RUNNER_A, &["Done"])).await;
    let broken_id = all_tasks(&store, job_id)
        .await
        .into_iter()
        .find(|task| task.display == "Broken")
        .expect("the second root")
        .id;
    assert_eq!(claimant_of(broken_id).await, None, "queued, never claimed");
    assert_eq!(claimant_of(done.id).await.as_deref(), Some(RUNNER_A));
    report(&store, computed(&done, RUNNER_A)).await;
    assert_eq!(
        claimant_of(done.id).await.as_deref(),
        Some(RUNNER_A),
        "kept after the task computed"
    );

    let broken = claim_one(&store, &runner(RUNNER_B, &["Broken"])).await;
    fail(&store, failed(&broken, RUNNER_B, true)).await;
    assert_eq!(
        task_state(&store, job_id, broken.id).await,
        TaskState::Failed
    );
    assert_eq!(
        claimant_of(broken.id).await.as_deref(),
        Some(RUNNER_B),
        "kept after the task failed"
    );
    assert_eq!(store.retry_job(job_id).await.expect("retry"), 1);
    assert_eq!(
        claimant_of(broken.id).await,
        None,
        "queued again by a retry"
    );
    let again = claim_one(&store, &runner(RUNNER_A, &["Broken"])).await;
    assert_eq!(again.id, broken.id);
    assert_eq!(claimant_of(broken.id).await.as_deref(), Some(RUNNER_A));
}

/// `get_tasks` answers the tasks of the job among the ids asked for, in the order asked,
/// each once, as `list_tasks` shows them; ids of another job's tasks or of no task are left
/// out, and an unknown job is an error.
pub(crate) async fn get_tasks_answers_the_asked_tasks_of_the_job_in_order<S: Store>(store: S) {
    let job_id = submit(
        &store,
        job("lookups", vec![task("A"), task("B"), task("C")]),
    )
    .await;
    let other_job = submit(&store, job("other", vec![task("Elsewhere")])).await;
    let a = claim_one(&store, &runner(RUNNER_A, &["A"])).await;
    report(
        &store,
        computed_with_subtasks(&a, RUNNER_A, vec![task("Child")]),
    )
    .await;
    let listed = all_tasks(&store, job_id).await;
    let by_display = |display: &str| -> TaskSummary {
        listed
            .iter()
            .find(|task| task.display == display)
            .cloned()
            .unwrap_or_else(|| panic!("a task {display}"))
    };
    let (a, c, child) = (by_display("A"), by_display("C"), by_display("Child"));
    let elsewhere = all_tasks(&store, other_job).await[0].id;

    let found = store
        .get_tasks(
            job_id,
            vec![c.id, Uuid::now_v7(), child.id, elsewhere, a.id, c.id],
        )
        .await
        .expect("get tasks");
    let described = |tasks: &[TaskSummary]| -> Vec<String> {
        tasks
            .iter()
            .map(|task| {
                format!(
                    "{} {:?} {} {:?} {:?} {:?}",
                    task.id, task.parent_id, task.display, task.state, task.claimant, task.input
                )
            })
            .collect()
    };
    assert_eq!(
        described(&found),
        described(&[c, child.clone(), a]),
        "asked order, each once, nothing of another job"
    );
    assert_eq!(child.parent_id, Some(found[2].id));
    assert!(
        store
            .get_tasks(job_id, Vec::new())
            .await
            .expect("nothing asked")
            .is_empty()
    );
    let unknown = Uuid::now_v7();
    assert!(matches!(
        store.get_tasks(unknown, vec![child.id]).await,
        Err(Error::JobNotFound { id }) if id == unknown
    ));
}
