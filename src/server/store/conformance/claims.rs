//! Clusters, claims and the order tasks run in: matching, dependencies, subtasks.

use super::fixtures::*;
use crate::api::workflows_v1::{JobState, TaskState};
use crate::server::store::{
    Cluster, DEFAULT_CLUSTER_SLUG, Error, Identifier, JobFilter, NewTask, ReportOutcome, Store,
};

/// Rule 1: the default cluster exists and cannot be deleted; clusters are created, read,
/// listed, updated and deleted; duplicates and unknown slugs are errors.
pub(crate) async fn clusters_have_a_fixed_default<S: Store>(store: S) {
    let clusters = store.list_clusters().await.expect("list clusters");
    assert_eq!(
        clusters.len(),
        1,
        "a fresh store has exactly the default cluster: {clusters:?}"
    );
    assert_eq!(clusters[0].slug, DEFAULT_CLUSTER_SLUG);
    assert!(
        !clusters[0].deletable,
        "the default cluster is not deletable"
    );
    let default = store
        .get_cluster(DEFAULT_CLUSTER_SLUG)
        .await
        .expect("get default cluster");
    assert_eq!(default, clusters[0]);
    let refused = store.delete_cluster(DEFAULT_CLUSTER_SLUG).await;
    assert!(
        matches!(&refused, Err(Error::ClusterNotDeletable { slug, .. }) if slug == DEFAULT_CLUSTER_SLUG),
        "deleting the default cluster is refused: {refused:?}"
    );

    let gpu = Cluster {
        slug: "gpu".to_string(),
        name: "GPU".to_string(),
        description: "machines with a GPU".to_string(),
        deletable: true,
    };
    assert_eq!(
        store
            .create_cluster(gpu.clone())
            .await
            .expect("create cluster"),
        gpu
    );
    assert_eq!(store.get_cluster("gpu").await.expect("get cluster"), gpu);
    let slugs: Vec<String> = store
        .list_clusters()
        .await
        .expect("list clusters")
        .into_iter()
        .map(|cluster| cluster.slug)
        .collect();
    assert_eq!(sorted(slugs), ["default", "gpu"]);
    let duplicate = store
        .create_cluster(Cluster {
            name: "Another GPU".to_string(),
            ..gpu.clone()
        })
        .await;
    assert!(
        matches!(&duplicate, Err(Error::ClusterExists { slug }) if slug == "gpu"),
        "a duplicate slug is refused: {duplicate:?}"
    );
    assert_eq!(
        store.get_cluster("gpu").await.expect("get cluster").name,
        "GPU",
        "the duplicate changed nothing"
    );

    let renamed = store
        .update_cluster("gpu", Some("Graphics".to_string()), None)
        .await
        .expect("rename cluster");
    assert_eq!(
        (renamed.name.as_str(), renamed.description.as_str()),
        ("Graphics", "machines with a GPU")
    );
    let described = store
        .update_cluster("gpu", None, Some("A100 nodes".to_string()))
        .await
        .expect("describe cluster");
    assert_eq!(
        (described.name.as_str(), described.description.as_str()),
        ("Graphics", "A100 nodes")
    );
    assert_eq!(
        store.get_cluster("gpu").await.expect("get cluster"),
        described
    );

    // A cluster with queued work is kept until the work is done.
    let work = NewTask {
        cluster: "gpu".to_string(),
        ..task("Work")
    };
    let job_id = submit(&store, job("on-gpu", vec![work])).await;
    let busy = store.delete_cluster("gpu").await;
    assert!(
        matches!(&busy, Err(Error::ClusterNotDeletable { slug, .. }) if slug == "gpu"),
        "a cluster with queued tasks is not deleted: {busy:?}"
    );
    let gpu_runner = claim_request(RUNNER_A, "gpu", vec![identifier("Work", 1, 0)]);
    let claimed = claim_one(&store, &gpu_runner).await;
    report(&store, computed(&claimed, RUNNER_A)).await;
    assert_eq!(job_state(&store, job_id).await, JobState::Completed);

    store.delete_cluster("gpu").await.expect("delete cluster");
    let gone = store.get_cluster("gpu").await;
    assert!(
        matches!(&gone, Err(Error::ClusterNotFound { slug }) if slug == "gpu"),
        "a deleted cluster is gone: {gone:?}"
    );
    let again = store.delete_cluster("gpu").await;
    assert!(
        matches!(&again, Err(Error::ClusterNotFound { .. })),
        "deleting twice: {again:?}"
    );
    let unknown = store
        .update_cluster("nowhere", Some("x".to_string()), None)
        .await;
    assert!(
        matches!(&unknown, Err(Error::ClusterNotFound { slug }) if slug == "nowhere"),
        "updating an unknown cluster: {unknown:?}"
    );
    assert_eq!(store.list_clusters().await.expect("list clusters").len(), 1);
}

/// Rule 2: a job naming an unknown cluster is refused whole.
pub(crate) async fn submitting_to_an_unknown_cluster_stores_nothing<S: Store>(store: S) {
    let stray = NewTask {
        cluster: "nowhere".to_string(),
        ..task("Stray")
    };
    let refused = job("half-valid", vec![task("Fine"), stray]);
    let id = refused.id;
    let result = store.submit_job(refused).await;
    assert!(
        matches!(&result, Err(Error::ClusterNotFound { slug }) if slug == "nowhere"),
        "an unknown cluster is refused: {result:?}"
    );
    let jobs = store
        .query_jobs(JobFilter::default(), EVERYTHING)
        .await
        .expect("query jobs");
    assert!(jobs.is_empty(), "nothing was stored: {jobs:?}");
    assert!(
        store
            .job_state_counts()
            .await
            .expect("count jobs")
            .is_empty()
    );
    let missing = store.get_job(id).await;
    assert!(
        matches!(&missing, Err(Error::JobNotFound { id: found }) if *found == id),
        "{missing:?}"
    );
    assert!(
        claim(&store, &runner(RUNNER_A, &["Fine", "Stray"]))
            .await
            .is_none(),
        "no task of the refused job can be claimed"
    );
}

/// Rule 3: a task goes only to a runner on its cluster advertising its name, its major and a
/// minor at least the submitted one; it is handed out carrying the runner's identifier.
pub(crate) async fn claims_match_cluster_name_and_compatible_version<S: Store>(store: S) {
    store
        .create_cluster(Cluster {
            slug: "gpu".to_string(),
            name: "GPU".to_string(),
            description: String::new(),
            deletable: true,
        })
        .await
        .expect("create cluster");
    let input = vec![0x00, 0x9f, 0x92, 0x96, 0xff, b'{', 0x00];
    let versioned = NewTask {
        identifier: identifier("Versioned", 1, 3),
        cluster: "gpu".to_string(),
        input: input.clone(),
        ..task("Versioned")
    };
    let task_id = versioned.id;
    let job_id = submit(&store, job("versions", vec![versioned])).await;

    let gpu = |identifiers: Vec<Identifier>| claim_request(RUNNER_A, "gpu", identifiers);
    let refusals = [
        (
            "another cluster",
            claim_request(
                RUNNER_A,
                DEFAULT_CLUSTER_SLUG,
                vec![identifier("Versioned", 1, 5)],
            ),
        ),
        ("another name", gpu(vec![identifier("Other", 1, 5)])),
        ("a lower minor", gpu(vec![identifier("Versioned", 1, 2)])),
        ("another major", gpu(vec![identifier("Versioned", 2, 5)])),
        (
            "neither",
            gpu(vec![
                identifier("Versioned", 1, 2),
                identifier("Versioned", 2, 5),
            ]),
        ),
        ("nothing advertised", gpu(Vec::new())),
    ];
    for (why, request) in &refusals {
        assert!(
            claim(&store, request).await.is_none(),
            "a runner with {why} gets nothing"
        );
    }
    assert_eq!(task_state(&store, job_id, task_id).await, TaskState::Queued);

    let claimed = claim_one(
        &store,
        &gpu(vec![
            identifier("Other", 1, 5),
            identifier("Versioned", 1, 5),
        ]),
    )
    .await;
    assert_eq!(claimed.id, task_id);
    assert_eq!(
        claimed.identifier,
        identifier("Versioned", 1, 5),
        "the runner's identifier is handed out"
    );
    assert_eq!(claimed.identifier.version, "v1.5");
    assert_eq!(claimed.input, input, "inputs are opaque bytes");
    assert_eq!(claimed.display, "Versioned");
    assert_eq!(claimed.lease, LEASE);
    assert_eq!(claimed.job.id, job_id);
    let summary = task_summary(&store, job_id, task_id).await;
    assert_eq!(
        summary.identifier,
        identifier("Versioned", 1, 3),
        "the submitted version is kept"
    );
    assert_eq!(summary.input, input);

    // Of several compatible versions, the highest advertised minor runs it.
    let second = NewTask {
        identifier: identifier("Versioned", 1, 3),
        cluster: "gpu".to_string(),
        ..task("Versioned")
    };
    let second_id = second.id;
    submit(&store, job("versions-again", vec![second])).await;
    let advertised = vec![
        identifier("Versioned", 1, 4),
        identifier("Versioned", 1, 7),
        identifier("Versioned", 1, 3),
        identifier("Versioned", 2, 9),
    ];
    let claimed = claim_one(&store, &gpu(advertised)).await;
    assert_eq!(claimed.id, second_id);
    assert_eq!(claimed.identifier, identifier("Versioned", 1, 7));
    assert!(
        claim(&store, &gpu(vec![identifier("Versioned", 1, 9)]))
            .await
            .is_none()
    );
}

/// Rule 4: a claimed task is RUNNING and handed out once; the job is SUBMITTED before any
/// claim, RUNNING while a task runs, STARTED when none runs and some wait.
pub(crate) async fn claimed_task_runs_once_and_drives_job_state<S: Store>(store: S) {
    let job_id = submit(&store, job("twice", vec![task("Work"), task("Work")])).await;
    assert_eq!(job_state(&store, job_id).await, JobState::Submitted);
    let workers = runner(RUNNER_A, &["Work"]);

    let first = claim_one(&store, &workers).await;
    assert_eq!(
        task_state(&store, job_id, first.id).await,
        TaskState::Running
    );
    assert_eq!(
        first.job.state,
        JobState::Running,
        "the claimed task carries its running job"
    );
    assert_eq!(job_state(&store, job_id).await, JobState::Running);
    let second = claim_one(&store, &runner(RUNNER_B, &["Work"])).await;
    assert_ne!(
        second.id, first.id,
        "a running task is not handed out again"
    );
    assert!(
        claim(&store, &workers).await.is_none(),
        "both tasks run; nothing is left"
    );
    assert_eq!(
        tasks_by_state(&store, job_id).await,
        [(TaskState::Running, 2)]
    );

    assert_eq!(
        report(&store, computed(&first, RUNNER_A)).await,
        ReportOutcome::Applied(TaskState::Computed)
    );
    assert_eq!(
        job_state(&store, job_id).await,
        JobState::Running,
        "one task still runs"
    );
    assert_eq!(
        report(&store, computed(&second, RUNNER_B)).await,
        ReportOutcome::Applied(TaskState::Computed)
    );
    assert_eq!(job_state(&store, job_id).await, JobState::Completed);
    assert_eq!(
        tasks_by_state(&store, job_id).await,
        [(TaskState::Computed, 2)]
    );
    assert!(
        claim(&store, &workers).await.is_none(),
        "a computed task is not handed out again"
    );

    let halfway = submit(&store, job("halfway", vec![task("Work"), task("Work")])).await;
    let claimed = claim_one(&store, &workers).await;
    report(&store, computed(&claimed, RUNNER_A)).await;
    assert_eq!(
        job_state(&store, halfway).await,
        JobState::Started,
        "none runs, one waits"
    );
}

/// Rule 5: a dependant runs only after its dependency is computed with all descendants done.
pub(crate) async fn dependants_wait_for_the_whole_dependency_tree<S: Store>(store: S) {
    let first = task("First");
    let first_id = first.id;
    let then = NewTask {
        depends_on: vec![0],
        ..task("Then")
    };
    let then_id = then.id;
    let job_id = submit(&store, job("dependencies", vec![first, then])).await;
    let everyone = runner(RUNNER_A, &["First", "Then", "Nested"]);

    let claimed = claim_one(&store, &everyone).await;
    assert_eq!(claimed.id, first_id, "only the dependency is claimable");
    assert!(
        claim(&store, &everyone).await.is_none(),
        "the dependant waits for a running dependency"
    );

    let nested = task("Nested");
    let nested_id = nested.id;
    let outcome = report(
        &store,
        computed_with_subtasks(&claimed, RUNNER_A, vec![nested]),
    )
    .await;
    assert_eq!(outcome, ReportOutcome::Applied(TaskState::Computed));
    let claimed = claim_one(&store, &everyone).await;
    assert_eq!(
        claimed.id, nested_id,
        "the dependency's subtask runs; the dependant still waits"
    );
    assert!(
        claim(&store, &everyone).await.is_none(),
        "the dependant waits for the dependency's subtasks"
    );
    assert_eq!(task_state(&store, job_id, then_id).await, TaskState::Queued);

    report(&store, computed(&claimed, RUNNER_A)).await;
    let claimed = claim_one(&store, &everyone).await;
    assert_eq!(
        claimed.id, then_id,
        "the dependant runs once the dependency's tree is done"
    );
    assert_eq!(claimed.depends_on, [first_id]);
    report(&store, computed(&claimed, RUNNER_A)).await;
    assert_eq!(job_state(&store, job_id).await, JobState::Completed);
    assert_eq!(
        tasks_by_state(&store, job_id).await,
        [(TaskState::Computed, 3)]
    );
}

/// Rule 6: subtasks of a computed parent are claimable; the parent stays COMPUTED and the
/// job completes only when every descendant is computed.
pub(crate) async fn subtasks_run_after_their_parent_and_complete_the_job<S: Store>(store: S) {
    let job_id = submit(&store, job("tree", vec![task("Root")])).await;
    let everyone = runner(RUNNER_A, &["Root", "Leaf", "Branch", "Twig"]);
    let root = claim_one(&store, &everyone).await;
    report(
        &store,
        computed_with_subtasks(&root, RUNNER_A, vec![task("Leaf"), task("Branch")]),
    )
    .await;

    assert_eq!(
        task_state(&store, job_id, root.id).await,
        TaskState::Computed
    );
    assert_eq!(job_state(&store, job_id).await, JobState::Started);
    let job = store.get_job(job_id).await.expect("get job");
    assert_eq!(job.stats.total_tasks, 3);
    assert_eq!(
        job.stats.tasks_by_state,
        [(TaskState::Queued, 2), (TaskState::Computed, 1)]
    );

    let leaf = claim_one(&store, &everyone).await;
    let branch = claim_one(&store, &everyone).await;
    assert_eq!(leaf.parent_id, Some(root.id));
    assert_eq!(branch.parent_id, Some(root.id));
    assert_eq!(job_state(&store, job_id).await, JobState::Running);
    assert_eq!(
        tasks_by_state(&store, job_id).await,
        [(TaskState::Running, 2), (TaskState::Computed, 1)]
    );

    report(&store, computed(&leaf, RUNNER_A)).await;
    report(
        &store,
        computed_with_subtasks(&branch, RUNNER_A, vec![task("Twig")]),
    )
    .await;
    assert_eq!(
        task_state(&store, job_id, root.id).await,
        TaskState::Computed,
        "the parent stays computed"
    );
    assert_eq!(
        job_state(&store, job_id).await,
        JobState::Started,
        "a grandchild is still queued"
    );
    assert_eq!(
        tasks_by_state(&store, job_id).await,
        [(TaskState::Queued, 1), (TaskState::Computed, 3)]
    );

    let twig = claim_one(&store, &everyone).await;
    assert_eq!(twig.parent_id, Some(branch.id));
    report(&store, computed(&twig, RUNNER_A)).await;
    let job = store.get_job(job_id).await.expect("get job");
    assert_eq!(job.state, JobState::Completed);
    assert_eq!(job.stats.total_tasks, 4);
    assert_eq!(job.stats.tasks_by_state, [(TaskState::Computed, 4)]);
}
