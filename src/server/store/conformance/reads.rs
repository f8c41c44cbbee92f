//! What readers see: progress, task pages, job queries, execution statistics, and concurrency.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use uuid::Uuid;

use super::fixtures::*;
use crate::api::convert::now_millis;
use crate::api::workflows_v1::{JobState, TaskState};
use crate::server::store::{
    ClaimedTask, Cluster, ComputedReport, DEFAULT_CLUSTER_SLUG, Error, FailedReport, IdBounds,
    JobFilter, NewTask, Page, Progress, ReportOutcome, Store, TaskSummary,
};

/// Rule 16: progress is kept per task and label, each report replacing the task's previous
/// one; a job's progress is the per-label sum over its tasks.
pub(crate) async fn progress_is_per_task_and_summed_per_job<S: Store>(store: S) {
    let job_id = submit(&store, job("progress", vec![task("Root")])).await;
    let root = claim_one(&store, &runner(RUNNER_A, &["Root"])).await;
    let tiles: Vec<NewTask> = (0..4).map(|_| task("Tile")).collect();
    let root_report = ComputedReport {
        progress: vec![progress(Some("tiles"), 4, 0), progress(None, 1, 1)],
        ..computed_with_subtasks(&root, RUNNER_A, tiles)
    };
    report(&store, root_report).await;
    let job_progress = || {
        let read = store.get_job(job_id);
        async move { sorted_progress(read.await.expect("get job").progress) }
    };
    assert_eq!(
        job_progress().await,
        [progress(None, 1, 1), progress(Some("tiles"), 4, 0)]
    );

    let tile_runner = runner(RUNNER_A, &["Tile"]);
    let one_tile = |claimed: &ClaimedTask| ComputedReport {
        progress: vec![progress(Some("tiles"), 0, 1)],
        ..computed(claimed, RUNNER_A)
    };
    let first = claim_one(&store, &tile_runner).await;
    report(&store, one_tile(&first)).await;
    assert_eq!(
        job_progress().await,
        [progress(None, 1, 1), progress(Some("tiles"), 4, 1)]
    );

    // A failed attempt's progress is replaced by the next attempt's, not added to it.
    let second = claim_one(&store, &tile_runner).await;
    let failure = FailedReport {
        progress: vec![progress(Some("tiles"), 0, 1)],
        ..failed(&second, RUNNER_A, false)
    };
    fail(&store, failure).await;
    let second = claim_one(&store, &tile_runner).await;
    report(&store, one_tile(&second)).await;
    assert_eq!(
        job_progress().await,
        [progress(None, 1, 1), progress(Some("tiles"), 4, 2)]
    );

    // A report sent again (its answer was lost) changes nothing.
    assert_eq!(
        report(&store, one_tile(&second)).await,
        ReportOutcome::Stale(TaskState::Computed)
    );
    assert_eq!(
        job_progress().await,
        [progress(None, 1, 1), progress(Some("tiles"), 4, 2)]
    );

    while let Some(claimed) = claim(&store, &tile_runner).await {
        report(&store, one_tile(&claimed)).await;
    }
    assert_eq!(
        job_progress().await,
        [progress(None, 1, 1), progress(Some("tiles"), 4, 4)]
    );
    assert_eq!(job_state(&store, job_id).await, JobState::Completed);
}

fn sorted_progress(mut progress: Vec<Progress>) -> Vec<Progress> {
    progress.sort_by(|a, b| a.label.cmp(&b.label));
    progress
}

/// Rule 17: `list_tasks` lists roots or a parent's children in submission order, pages with
/// `after` and `limit`, and flags tasks with children.
pub(crate) async fn list_tasks_pages_children_in_submission_order<S: Store>(store: S) {
    // Ids in descending order, so submission order and id order differ.
    let reversed = |names: [&str; 3]| -> Vec<NewTask> {
        let mut ids: Vec<Uuid> = (0..3).map(|_| Uuid::now_v7()).collect();
        ids.sort();
        ids.reverse();
        names
            .iter()
            .zip(ids)
            .map(|(name, id)| NewTask { id, ..task(name) })
            .collect()
    };
    let mut roots = reversed(["A", "B", "C"]);
    roots[1].input = vec![0xff, 0x00, 0xfe];
    roots[1].max_retries = 3;
    roots[1].optional = true;
    roots[1].identifier = identifier("B", 2, 7);
    let root_ids: Vec<Uuid> = roots.iter().map(|root| root.id).collect();
    let job_id = submit(&store, job("listing", roots)).await;

    let ids = |tasks: Vec<TaskSummary>| tasks.into_iter().map(|task| task.id).collect::<Vec<_>>();
    let page = |after: Option<Uuid>, limit: usize| Page {
        after,
        limit,
        descending: false,
    };
    let listed = store
        .list_tasks(job_id, None, EVERYTHING)
        .await
        .expect("list roots");
    assert_eq!(ids(listed.clone()), root_ids);
    let b = &listed[1];
    assert_eq!(b.parent_id, None);
    assert_eq!(b.display, "B");
    assert_eq!(b.state, TaskState::Queued);
    assert_eq!(b.identifier, identifier("B", 2, 7));
    assert_eq!(b.input, [0xff, 0x00, 0xfe]);
    assert_eq!((b.retry_count, b.max_retries, b.optional), (0, 3, true));
    assert_eq!(b.cluster, DEFAULT_CLUSTER_SLUG);
    assert_eq!(
        (b.started_at, b.stopped_at, b.has_children),
        (None, None, false)
    );
    let first_two = store
        .list_tasks(job_id, None, page(None, 2))
        .await
        .expect("list roots");
    assert_eq!(ids(first_two), root_ids[..2]);
    let rest = store
        .list_tasks(job_id, None, page(Some(root_ids[1]), 2))
        .await
        .expect("list roots");
    assert_eq!(ids(rest), root_ids[2..]);

    let a = claim_one(&store, &runner(RUNNER_A, &["A"])).await;
    let children = reversed(["X", "Y", "Z"]);
    let child_ids: Vec<Uuid> = children.iter().map(|child| child.id).collect();
    report(&store, computed_with_subtasks(&a, RUNNER_A, children)).await;

    let listed = store
        .list_tasks(job_id, None, EVERYTHING)
        .await
        .expect("list roots");
    assert_eq!(ids(listed.clone()), root_ids, "subtasks are not roots");
    assert_eq!(
        listed
            .iter()
            .map(|task| task.has_children)
            .collect::<Vec<_>>(),
        [true, false, false]
    );
    assert!(
        listed[0].started_at.is_some() && listed[0].stopped_at.is_some(),
        "A ran"
    );
    let listed = store
        .list_tasks(job_id, Some(a.id), EVERYTHING)
        .await
        .expect("list children");
    assert_eq!(ids(listed.clone()), child_ids);
    assert!(
        listed
            .iter()
            .all(|child| child.parent_id == Some(a.id) && !child.has_children)
    );
    let middle = store
        .list_tasks(job_id, Some(a.id), page(Some(child_ids[0]), 1))
        .await
        .expect("list children");
    assert_eq!(ids(middle), child_ids[1..2]);
    let none = store
        .list_tasks(job_id, Some(root_ids[2]), EVERYTHING)
        .await
        .expect("list children");
    assert!(none.is_empty(), "C has no children");

    let missing = store.list_tasks(Uuid::now_v7(), None, EVERYTHING).await;
    assert!(
        matches!(missing, Err(Error::JobNotFound { .. })),
        "{missing:?}"
    );
}

/// Rule 18: `query_jobs` filters by state, name, cluster and id bounds and pages both ways;
/// `job_state_counts` counts jobs per state.
pub(crate) async fn query_jobs_filters_and_pages<S: Store>(store: S) {
    store
        .create_cluster(Cluster {
            slug: "gpu".to_string(),
            name: "GPU".to_string(),
            description: String::new(),
            deletable: true,
        })
        .await
        .expect("create cluster");
    let alpha = submit(&store, job("ingest-alpha", vec![task("Alpha")])).await;
    let on_gpu = NewTask {
        cluster: "gpu".to_string(),
        ..task("Beta")
    };
    let beta = submit(&store, job("ingest-beta", vec![on_gpu])).await;
    let report_job = submit(&store, job("report", vec![task("Report")])).await;

    let gpu_runner = claim_request(RUNNER_A, "gpu", vec![identifier("Beta", 1, 0)]);
    let claimed = claim_one(&store, &gpu_runner).await;
    fail(&store, failed(&claimed, RUNNER_A, true)).await;
    let claimed = claim_one(&store, &runner(RUNNER_A, &["Report"])).await;
    report(&store, computed(&claimed, RUNNER_A)).await;
    assert_eq!(job_state(&store, alpha).await, JobState::Submitted);
    assert_eq!(job_state(&store, beta).await, JobState::Failed);
    assert_eq!(job_state(&store, report_job).await, JobState::Completed);

    let query = |filter: JobFilter, page: Page| {
        let jobs = store.query_jobs(filter, page);
        async move {
            jobs.await
                .expect("query jobs")
                .into_iter()
                .map(|job| job.id)
                .collect::<Vec<_>>()
        }
    };
    let page = |after: Option<Uuid>, limit: usize, descending: bool| Page {
        after,
        limit,
        descending,
    };
    let states = |states: Vec<JobState>| JobFilter {
        states,
        ..JobFilter::default()
    };
    let named = |name: &str| JobFilter {
        name_contains: Some(name.to_string()),
        ..JobFilter::default()
    };
    let on = |cluster: &str| JobFilter {
        clusters: vec![cluster.to_string()],
        ..JobFilter::default()
    };

    const NO_JOBS: [Uuid; 0] = [];
    assert_eq!(
        query(JobFilter::default(), EVERYTHING).await,
        [alpha, beta, report_job]
    );
    assert_eq!(
        query(states(vec![JobState::Completed]), EVERYTHING).await,
        [report_job]
    );
    assert_eq!(
        query(
            states(vec![JobState::Submitted, JobState::Failed]),
            EVERYTHING
        )
        .await,
        [alpha, beta]
    );
    assert_eq!(
        query(states(vec![JobState::Canceled]), EVERYTHING).await,
        NO_JOBS
    );
    assert_eq!(query(named("ingest"), EVERYTHING).await, [alpha, beta]);
    assert_eq!(query(named("port"), EVERYTHING).await, [report_job]);
    assert_eq!(query(on("gpu"), EVERYTHING).await, [beta]);
    assert_eq!(
        query(on(DEFAULT_CLUSTER_SLUG), EVERYTHING).await,
        [alpha, report_job]
    );
    let combined = JobFilter {
        clusters: vec![DEFAULT_CLUSTER_SLUG.to_string()],
        ..named("ingest")
    };
    assert_eq!(query(combined, EVERYTHING).await, [alpha]);
    {
        use std::ops::Bound::{Excluded, Included, Unbounded};
        let ids = |start, end| JobFilter {
            ids: IdBounds { start, end },
            ..JobFilter::default()
        };
        assert_eq!(
            query(ids(Included(alpha), Excluded(report_job)), EVERYTHING).await,
            [alpha, beta]
        );
        assert_eq!(
            query(ids(Excluded(alpha), Included(report_job)), EVERYTHING).await,
            [beta, report_job]
        );
        assert_eq!(
            query(ids(Unbounded, Included(beta)), page(None, 1, true)).await,
            [beta]
        );
        assert_eq!(
            query(ids(Included(beta), Excluded(beta)), EVERYTHING).await,
            NO_JOBS
        );
    }

    assert_eq!(
        query(JobFilter::default(), page(None, 2, false)).await,
        [alpha, beta]
    );
    assert_eq!(
        query(JobFilter::default(), page(Some(beta), 2, false)).await,
        [report_job]
    );
    assert_eq!(
        query(JobFilter::default(), page(None, 2, true)).await,
        [report_job, beta]
    );
    assert_eq!(
        query(JobFilter::default(), page(Some(beta), 2, true)).await,
        [alpha]
    );
    assert_eq!(
        query(named("ingest"), page(Some(alpha), 5, false)).await,
        [beta]
    );

    let submitted: Vec<i64> = store
        .query_jobs(JobFilter::default(), EVERYTHING)
        .await
        .expect("query jobs")
        .iter()
        .map(|job| job.submitted_at)
        .collect();
    let (first, last) = (submitted[0], submitted[submitted.len() - 1]);
    let window = |from: i64, to: i64| JobFilter {
        submitted_from: Some(from),
        submitted_to: Some(to),
        ..JobFilter::default()
    };
    assert_eq!(
        query(window(first, last + 1), EVERYTHING).await,
        [alpha, beta, report_job]
    );
    assert_eq!(
        query(window(last + 1, last + 1_000), EVERYTHING).await,
        NO_JOBS,
        "from is inclusive only"
    );
    assert_eq!(
        query(window(first - 1_000, first), EVERYTHING).await,
        NO_JOBS,
        "to is exclusive"
    );

    assert_eq!(
        sorted(store.job_state_counts().await.expect("count jobs")),
        [
            (JobState::Submitted, 1),
            (JobState::Completed, 1),
            (JobState::Failed, 1)
        ]
    );
    let missing = store.get_job(Uuid::now_v7()).await;
    assert!(
        matches!(missing, Err(Error::JobNotFound { .. })),
        "{missing:?}"
    );
    let missing = store.cancel_job(Uuid::now_v7()).await;
    assert!(
        matches!(missing, Err(Error::JobNotFound { .. })),
        "{missing:?}"
    );
}

/// Rule 19: execution statistics count tasks and time the attempts that ran.
pub(crate) async fn execution_stats_follow_the_tasks<S: Store>(store: S) {
    const WORK: Duration = Duration::from_millis(20);
    let job_id = submit(&store, job("stats", vec![task("Root")])).await;
    let stats = store.get_job(job_id).await.expect("get job").stats;
    assert_eq!(stats.total_tasks, 1);
    assert_eq!(stats.tasks_by_state, [(TaskState::Queued, 1)]);
    assert_eq!(
        (stats.first_task_started_at, stats.last_task_stopped_at),
        (None, None)
    );
    assert_eq!(stats.compute_time, Duration::ZERO);

    let before = now_millis();
    let everyone = runner(RUNNER_A, &["Root", "Child"]);
    let root = claim_one(&store, &everyone).await;
    // Time passes while the task "computes": compute time is measured, not guessed.
    tokio::time::sleep(WORK).await;
    report(
        &store,
        computed_with_subtasks(&root, RUNNER_A, vec![task("Child")]),
    )
    .await;
    let child = claim_one(&store, &everyone).await;
    tokio::time::sleep(WORK).await;
    report(&store, computed(&child, RUNNER_A)).await;
    let after = now_millis();

    let job = store.get_job(job_id).await.expect("get job");
    assert_eq!(job.state, JobState::Completed);
    let stats = job.stats;
    assert_eq!(stats.total_tasks, 2);
    assert_eq!(stats.tasks_by_state, [(TaskState::Computed, 2)]);
    let started = stats.first_task_started_at.expect("first task started");
    let stopped = stats.last_task_stopped_at.expect("last task stopped");
    assert!(
        job.submitted_at <= started,
        "submitted {} before started {started}",
        job.submitted_at
    );
    assert!(
        before <= started && started <= stopped && stopped <= after,
        "{before} {started} {stopped} {after}"
    );
    assert!(
        stats.compute_time >= WORK * 2,
        "two attempts of at least 20 ms: {:?}",
        stats.compute_time
    );
    assert!(
        stats.compute_time <= stats.elapsed_time,
        "one task at a time: compute {:?} within elapsed {:?}",
        stats.compute_time,
        stats.elapsed_time
    );
    assert!(stats.elapsed_time <= Duration::from_millis((after - before) as u64));
    assert!(
        stats.parallelism > 0.0 && stats.parallelism <= 1.0,
        "parallelism {}",
        stats.parallelism
    );
}

/// Rule 27: a job's statistics are what a count over its tasks gives, whatever moved them:
/// claims, reports with subtasks, workflow and runner failures, lost leases, a failure that
/// skips an optional branch, a failed job retried, a job canceled while a task runs. Once
/// no task runs, `query_jobs` shows the same statistics as `get_job`.
pub(crate) async fn execution_stats_equal_a_recount_of_the_tasks<S: Store>(store: S) {
    add_cluster(&store, "gpu").await;
    let flaky = NewTask {
        max_retries: 1,
        ..task("Flaky")
    };
    let on_gpu = NewTask {
        cluster: "gpu".to_string(),
        ..task("Gpu")
    };
    let mixed = submit(&store, job("mixed", vec![task("Root"), flaky, on_gpu])).await;
    let canceled = submit(&store, job("canceled", vec![task("Slow"), task("Waiting")])).await;
    let lost = submit(&store, job("lost", vec![task("Lost")])).await;
    let jobs = [mixed, canceled, lost];
    let one = |name: &str| runner(RUNNER_A, &[name]);

    let root = claim_one(&store, &one("Root")).await;
    let branch = NewTask {
        optional: true,
        ..task("Branch")
    };
    let after_tiles = NewTask {
        depends_on: vec![0, 1],
        ..task("AfterTiles")
    };
    let subtasks = vec![task("Tile"), task("Tile"), branch, after_tiles];
    report(&store, computed_with_subtasks(&root, RUNNER_A, subtasks)).await;
    expect_recount(&store, &jobs).await;

    // A workflow error with a retry left re-queues; the next fails the task and the job,
    // and a job retry queues it again.
    let flaky = claim_one(&store, &one("Flaky")).await;
    fail(&store, failed(&flaky, RUNNER_A, true)).await;
    let flaky = claim_one(&store, &one("Flaky")).await;
    fail(&store, failed(&flaky, RUNNER_A, true)).await;
    assert_eq!(job_state(&store, mixed).await, JobState::Failed);
    expect_recount(&store, &jobs).await;
    assert_eq!(store.retry_job(mixed).await.expect("retry job"), 1);
    expect_recount(&store, &jobs).await;

    // A failure inside the optional branch skips what waits there.
    let branch = claim_one(&store, &one("Branch")).await;
    let after_failing = NewTask {
        depends_on: vec![0],
        ..task("AfterFailing")
    };
    report(
        &store,
        computed_with_subtasks(&branch, RUNNER_A, vec![task("Failing"), after_failing]),
    )
    .await;
    let failing = claim_one(&store, &one("Failing")).await;
    fail(&store, failed(&failing, RUNNER_A, true)).await;
    expect_recount(&store, &jobs).await;

    // A runner error re-queues without a retry; a job is canceled while its task runs; then
    // every lease is lost at once.
    let tile = claim_one(&store, &one("Tile")).await;
    fail(&store, failed(&tile, RUNNER_A, false)).await;
    claim_one(&store, &one("Slow")).await;
    store.cancel_job(canceled).await.expect("cancel job");
    claim_one(&store, &one("Lost")).await;
    claim_one(&store, &one("Tile")).await;
    expect_recount(&store, &jobs).await;
    let expiry = now_millis() + LEASE.as_millis() as i64 + 1;
    assert_eq!(store.expire_leases(expiry).await.expect("expire leases"), 3);
    expect_recount(&store, &jobs).await;

    // Everything left runs to the end (the canceled job's tasks stay queued).
    let everyone = runner(
        RUNNER_B,
        &[
            "Root",
            "Flaky",
            "Tile",
            "AfterTiles",
            "Lost",
            "Slow",
            "Waiting",
        ],
    );
    let gpu = claim_request(RUNNER_B, "gpu", vec![identifier("Gpu", 1, 0)]);
    for request in [everyone, gpu] {
        while let Some(claimed) = claim(&store, &request).await {
            let progress = vec![progress(Some("tiles"), 1, 1)];
            let computed = ComputedReport {
                progress,
                ..computed(&claimed, RUNNER_B)
            };
            report(&store, computed).await;
        }
    }
    assert_eq!(job_state(&store, mixed).await, JobState::Completed);
    assert_eq!(job_state(&store, lost).await, JobState::Completed);
    assert_eq!(job_state(&store, canceled).await, JobState::Canceled);
    expect_recount(&store, &jobs).await;

    let listed = store
        .query_jobs(JobFilter::default(), EVERYTHING)
        .await
        .expect("query jobs");
    assert_eq!(listed.len(), jobs.len());
    for listed in listed {
        let read = store.get_job(listed.id).await.expect("get job");
        assert_eq!(listed.stats, read.stats, "job {}", listed.name);
        assert_eq!(listed.progress, read.progress, "job {}", listed.name);
    }
    let on_gpu = JobFilter {
        clusters: vec!["gpu".to_string()],
        ..JobFilter::default()
    };
    let found = store.query_jobs(on_gpu, EVERYTHING).await.expect("query");
    assert_eq!(found.iter().map(|job| job.id).collect::<Vec<_>>(), [mixed]);
}

/// Checks every job's statistics against a count over its listed tasks.
async fn expect_recount<S: Store>(store: &S, jobs: &[Uuid]) {
    for &id in jobs {
        let tasks = all_tasks(store, id).await;
        let job = store.get_job(id).await.expect("get job");
        let stats = &job.stats;
        let mut by_state: Vec<(TaskState, u64)> = Vec::new();
        for state in sorted(tasks.iter().map(|task| task.state as i32).collect()) {
            let state = TaskState::try_from(state).expect("a known state");
            match by_state.last_mut() {
                Some((last, count)) if *last == state => *count += 1,
                _ => by_state.push((state, 1)),
            }
        }
        let context = format!("job {} after {:?}", job.name, by_state);
        assert_eq!(stats.total_tasks, tasks.len() as u64, "{context}");
        assert_eq!(stats.tasks_by_state, by_state, "{context}");
        let first_started = tasks.iter().filter_map(|task| task.started_at).min();
        assert_eq!(stats.first_task_started_at, first_started, "{context}");
        let last_stopped = tasks.iter().filter_map(|task| task.stopped_at).max();
        assert_eq!(stats.last_task_stopped_at, last_stopped, "{context}");
        let running = tasks.iter().any(|task| task.state == TaskState::Running);
        if !running {
            let elapsed = match (first_started, last_stopped) {
                (Some(start), Some(stop)) => Duration::from_millis((stop - start) as u64),
                _ => Duration::ZERO,
            };
            assert_eq!(stats.elapsed_time, elapsed, "{context}");
        }
    }
}

/// Rule 20: many concurrent submits, claims and reports (batched into shared commits by a
/// backend) all succeed, and every job completes with each task handed out once.
pub(crate) async fn concurrent_submits_and_claims_complete_every_job_once<S: Store>(store: S) {
    const WORKERS: usize = 8;
    const JOBS_PER_WORKER: usize = 50;
    let store = Arc::new(store);
    let handed_out = Arc::new(Mutex::new(HashSet::new()));
    let submitted_jobs = Arc::new(Mutex::new(HashSet::new()));

    let mut workers = tokio::task::JoinSet::new();
    for worker in 0..WORKERS {
        let store = store.clone();
        let handed_out = handed_out.clone();
        let submitted_jobs = submitted_jobs.clone();
        workers.spawn(async move {
            let claimant = format!("runner-{worker}");
            let request = runner(&claimant, &["Work"]);
            let mut pending: Option<ComputedReport> = None;
            let mut submitted = 0;
            loop {
                if submitted < JOBS_PER_WORKER {
                    // Not `submit`: another worker may claim the task before the job is read
                    // back, so the job need not be SUBMITTED any more.
                    let new_job = job(&format!("load-{worker}-{submitted}"), vec![task("Work")]);
                    let id = store
                        .submit_job(new_job)
                        .await
                        .expect("submit concurrently")
                        .id;
                    submitted_jobs.lock().expect("lock").insert(id);
                    submitted += 1;
                }
                let (outcome, claimed) = store
                    .report_and_claim(pending.take(), Some(request.clone()))
                    .await
                    .expect("report and claim concurrently");
                if let Some(outcome) = outcome {
                    assert_eq!(outcome, ReportOutcome::Applied(TaskState::Computed));
                }
                match claimed {
                    Some(claimed) => {
                        let first_time = handed_out.lock().expect("lock").insert(claimed.id);
                        assert!(first_time, "task {} was handed out twice", claimed.id);
                        pending = Some(computed(&claimed, &claimant));
                    }
                    None if submitted == JOBS_PER_WORKER => break,
                    None => {}
                }
            }
        });
    }
    while let Some(finished) = workers.join_next().await {
        finished.expect("a worker panicked");
    }

    let total = WORKERS * JOBS_PER_WORKER;
    assert_eq!(
        handed_out.lock().expect("lock").len(),
        total,
        "every task was handed out once"
    );
    let jobs = store
        .query_jobs(JobFilter::default(), EVERYTHING)
        .await
        .expect("query jobs");
    assert_eq!(jobs.len(), total);
    let listed: HashSet<Uuid> = jobs.iter().map(|job| job.id).collect();
    assert_eq!(listed, *submitted_jobs.lock().expect("lock"));
    let computed_tasks: u64 = jobs
        .iter()
        .flat_map(|job| job.stats.tasks_by_state.iter())
        .filter(|(state, _)| *state == TaskState::Computed)
        .map(|(_, count)| count)
        .sum();
    assert_eq!(
        computed_tasks, total as u64,
        "every submitted task computed exactly once"
    );
    assert!(jobs.iter().all(|job| job.state == JobState::Completed));
    assert_eq!(
        store.job_state_counts().await.expect("count jobs"),
        [(JobState::Completed, total as u64)]
    );
}
