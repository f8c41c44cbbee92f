//! The server through its real binary and gRPC API: authentication, error codes, version
//! matching, long-polling, and durability under `kill -9`.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::common::{
    TestServer, block_on, client, get_job, identifier, job_request, json_of, list_tasks,
    snapshot_settings, transcript, uuid_of_id, wait_until,
};
use serde_json::{Value, json};
use tilebox::api::convert::{id, uuid_of};
use tilebox::api::workflows_v1::{
    ComputedTask, GetJobRequest, JobState, NextTaskRequest, NextTaskToRun, TaskIdentifier,
    TaskState,
};
use tilebox::client::Client;
use uuid::Uuid;

/// What a runner on the `default` cluster (named explicitly) advertising `identifiers` asks
/// for.
fn ask(identifiers: Vec<TaskIdentifier>) -> Option<NextTaskToRun> {
    Some(NextTaskToRun {
        cluster_slug: "default".into(),
        identifiers,
    })
}

#[test]
fn calls_without_a_valid_token_are_unauthenticated() {
    let _snapshots = snapshot_settings().bind_to_scope();
    let server = TestServer::start_with(&["--token", "s3cret", "--token", "other"]);
    let missing = ["cluster", "list"];
    let output = server.tilebox(&missing);
    assert_eq!(output.status.code(), Some(1));
    insta::assert_snapshot!("missing_api_key", transcript(&missing, &output));

    let wrong = ["--api-key", "nope", "cluster", "list"];
    let output = server.tilebox(&wrong);
    assert_eq!(output.status.code(), Some(1));
    insta::assert_snapshot!("wrong_api_key", transcript(&wrong, &output));

    for key in ["s3cret", "other"] {
        let clusters = json_of(&server.tilebox(&["--api-key", key, "--json", "cluster", "list"]));
        let slugs: Vec<&Value> = clusters
            .as_array()
            .expect("a list of clusters")
            .iter()
            .map(|cluster| &cluster["slug"])
            .collect();
        assert_eq!(slugs, ["default"], "with the key {key:?}");
    }
}

#[tokio::test]
async fn bad_submissions_are_refused_with_a_code_and_a_reason() {
    let server = TestServer::start();
    let mut client = client(&server).await;

    let mut cycle = job_request("Leaf", "v0.0", 1, b"");
    let submissions = cycle.tasks.as_mut().expect("tasks");
    let mut second = submissions.task_groups[0].clone();
    second.dependencies_on_other_groups = vec![0];
    submissions.task_groups[0].dependencies_on_other_groups = vec![1];
    submissions.task_groups.push(second);
    let status = client.jobs.submit_job(cycle).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    assert!(status.message().contains("cycle"), "{}", status.message());

    let status = client
        .jobs
        .submit_job(job_request("Leaf", "1.0", 1, b""))
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    assert!(
        status.message().contains("vMAJOR.MINOR"),
        "{}",
        status.message()
    );

    let status = client
        .jobs
        .submit_job(job_request("Leaf", "v0.0", 1, &[b'x'; 2049]))
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    assert!(
        status.message().contains("2049 bytes"),
        "{}",
        status.message()
    );

    let mut unknown_cluster = job_request("Leaf", "v0.0", 1, b"");
    unknown_cluster
        .tasks
        .as_mut()
        .expect("tasks")
        .cluster_slug_lookup = vec!["nowhere".into()];
    let status = client.jobs.submit_job(unknown_cluster).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::NotFound);
    assert!(status.message().contains("nowhere"), "{}", status.message());

    let status = client
        .jobs
        .get_job(GetJobRequest {
            job_id: Some(id(Uuid::now_v7())),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::NotFound);

    // Nothing of the refused submissions was stored.
    let listed = json_of(&server.tilebox(&["--json", "job", "list"]));
    assert_eq!(listed["jobs"], json!([]), "{listed}");
}

#[tokio::test]
async fn a_task_goes_to_a_compatible_runner_carrying_the_runners_identifier() {
    let server = TestServer::start();
    let mut client = client(&server).await;
    client
        .jobs
        .submit_job(job_request("Versioned", "v1.3", 1, b"\"x\""))
        .await
        .expect("submit");

    for incompatible in ["v1.2", "v2.5", "v0.9"] {
        let answer = client
            .tasks
            .next_task(NextTaskRequest {
                computed_task: None,
                next_task_to_run: ask(vec![identifier("Versioned", incompatible)]),
            })
            .await
            .expect("next task")
            .into_inner();
        assert!(
            answer.next_task.is_none(),
            "a runner with {incompatible} must not get a v1.3 task"
        );
        assert!(
            answer.idling.is_some(),
            "an idle answer suggests how long to idle"
        );
    }
    let task = client
        .tasks
        .next_task(NextTaskRequest {
            computed_task: None,
            next_task_to_run: ask(vec![
                identifier("Other", "v1.0"),
                identifier("Versioned", "v1.5"),
            ]),
        })
        .await
        .expect("next task")
        .into_inner()
        .next_task
        .expect("a v1.5 runner runs a v1.3 task");
    assert_eq!(task.identifier, Some(identifier("Versioned", "v1.5")));
    assert_eq!(task.state, TaskState::Running as i32);
    assert_eq!(task.input.as_deref(), Some(&b"\"x\""[..]));
    let lease = task.lease.expect("lease");
    assert!(lease.lease.expect("lease").seconds >= 2);
    assert!(
        lease
            .recommended_wait_until_next_extension
            .expect("wait")
            .seconds
            >= 1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_runner_gets_work_submitted_while_it_waits() {
    // Far longer than the test: the waiting call can only get the task by being woken up.
    const LONG_POLL: Duration = Duration::from_secs(60);
    let server = TestServer::start_with(&["--long-poll-ms", &LONG_POLL.as_millis().to_string()]);
    let mut runner = client(&server).await;
    let mut submitter = client(&server).await;

    // The runner claims a warm-up task, so that its waiting call can carry the result.
    let warm_up_job = submitter
        .jobs
        .submit_job(job_request("WarmUp", "v0.0", 1, b""))
        .await
        .expect("submit the warm-up job")
        .into_inner();
    let warm_up_job = uuid_of_id(warm_up_job.id.as_ref());
    let warm_up = runner
        .tasks
        .next_task(NextTaskRequest {
            computed_task: None,
            next_task_to_run: ask(vec![identifier("WarmUp", "v0.0")]),
        })
        .await
        .expect("claim the warm-up task")
        .into_inner()
        .next_task
        .expect("the warm-up task");

    // The server applies a computed report in the transaction of the call's first claim
    // attempt, before it waits. So once the warm-up job reads completed, the call has looked
    // for `Late` work, found none (none is submitted yet), and waits.
    let waiting = tokio::spawn(async move {
        let started = Instant::now();
        let answer = runner
            .tasks
            .next_task(NextTaskRequest {
                computed_task: Some(ComputedTask {
                    id: warm_up.id,
                    display: "WarmUp".into(),
                    ..ComputedTask::default()
                }),
                next_task_to_run: ask(vec![identifier("Late", "v0.0")]),
            })
            .await
            .expect("next task")
            .into_inner();
        (answer, started.elapsed())
    });
    wait_until(
        "the waiting call to report the warm-up task computed",
        Duration::from_secs(30),
        || block_on(get_job(&mut submitter, warm_up_job)).state() == JobState::Completed,
    )
    .unwrap();
    assert!(
        !waiting.is_finished(),
        "a call that found no work waits for the long-poll"
    );

    submitter
        .jobs
        .submit_job(job_request("Late", "v0.0", 1, b""))
        .await
        .expect("submit");
    let (answer, waited) = waiting.await.expect("runner");
    let task = answer
        .next_task
        .expect("the waiting call receives the task submitted meanwhile");
    assert_eq!(task.identifier, Some(identifier("Late", "v0.0")));
    assert!(
        waited < LONG_POLL,
        "it did not wait for the long-poll to end: {waited:?}"
    );
}

/// Records what the server acknowledged.
#[derive(Default)]
struct Acknowledged {
    jobs: Mutex<Vec<Uuid>>,
    computed: Mutex<HashSet<Uuid>>,
}

/// A runner loop: claims `Leaf` tasks and reports each computed in the next claim, until
/// `stop` is set or the server goes away.
async fn run_worker(url: String, acknowledged: Arc<Acknowledged>, stop: Arc<AtomicBool>) {
    let Ok(mut client) = Client::connect(&url, None).await else {
        return;
    };
    let mut previous: Option<Uuid> = None;
    while !stop.load(Ordering::Relaxed) {
        let request = NextTaskRequest {
            computed_task: previous.map(|task| ComputedTask {
                id: Some(id(task)),
                display: "Leaf".into(),
                ..ComputedTask::default()
            }),
            next_task_to_run: ask(vec![identifier("Leaf", "v0.0")]),
        };
        match client.tasks.next_task(request).await {
            Ok(answer) => {
                if let Some(task) = previous.take() {
                    acknowledged.computed.lock().expect("lock").insert(task);
                }
                previous = answer
                    .into_inner()
                    .next_task
                    .and_then(|task| uuid_of(task.id.as_ref()).ok().flatten());
            }
            Err(_) => return,
        }
    }
}

async fn run_submitter(url: String, acknowledged: Arc<Acknowledged>, stop: Arc<AtomicBool>) {
    let Ok(mut client) = Client::connect(&url, None).await else {
        return;
    };
    while !stop.load(Ordering::Relaxed) {
        match client
            .jobs
            .submit_job(job_request("Leaf", "v0.0", 5, b"1"))
            .await
        {
            Ok(job) => {
                let job = uuid_of(job.into_inner().id.as_ref())
                    .ok()
                    .flatten()
                    .expect("job id");
                acknowledged.jobs.lock().expect("lock").push(job);
            }
            Err(_) => return,
        }
    }
}

async fn task_states(client: &mut Client, job: Uuid) -> HashMap<Uuid, TaskState> {
    list_tasks(client, job, None)
        .await
        .into_iter()
        .map(|task| (uuid_of_id(task.id.as_ref()), task.state()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_work_survives_kill_9_under_load_and_every_job_finishes() {
    let mut server = TestServer::start_with(&["--lease-seconds", "2", "--long-poll-ms", "200"]);
    let url = server.url().to_string();
    let acknowledged = Arc::new(Acknowledged::default());
    let stop = Arc::new(AtomicBool::new(false));
    let mut load = Vec::new();
    for _ in 0..2 {
        load.push(tokio::spawn(run_submitter(
            url.clone(),
            acknowledged.clone(),
            stop.clone(),
        )));
        load.push(tokio::spawn(run_worker(
            url.clone(),
            acknowledged.clone(),
            stop.clone(),
        )));
    }
    wait_until(
        "100 acknowledged jobs and 200 acknowledged completions",
        Duration::from_secs(60),
        || {
            acknowledged.jobs.lock().expect("lock").len() >= 100
                && acknowledged.computed.lock().expect("lock").len() >= 200
        },
    )
    .unwrap_or_else(|timed_out| panic!("{timed_out}\n{}", server.stderr_tail()));
    server.kill();
    for task in load {
        let _ = tokio::time::timeout(Duration::from_secs(30), task)
            .await
            .expect("load stops when the server dies");
    }
    let jobs = acknowledged.jobs.lock().expect("lock").clone();
    let computed = acknowledged.computed.lock().expect("lock").clone();

    server.restart();
    let mut client = client(&server).await;
    let mut seen_computed = 0;
    for job in &jobs {
        let states = task_states(&mut client, *job).await;
        assert_eq!(states.len(), 5, "job {job} lost tasks");
        for (task, state) in &states {
            if computed.contains(task) {
                assert_eq!(
                    *state,
                    TaskState::Computed,
                    "acknowledged computed task {task} is {state:?}"
                );
                seen_computed += 1;
            }
        }
    }
    assert_eq!(
        seen_computed,
        computed.len(),
        "every acknowledged completion belongs to an acknowledged job"
    );

    // Drain: tasks that were running at the kill come back after their lease expires.
    let stop = Arc::new(AtomicBool::new(false));
    let drain = Arc::new(Acknowledged::default());
    let workers: Vec<_> = (0..2)
        .map(|_| {
            tokio::spawn(run_worker(
                server.url().to_string(),
                drain.clone(),
                stop.clone(),
            ))
        })
        .collect();
    // Jobs complete for good, so each is polled only until it has.
    let mut completed = 0;
    let mut last = None;
    wait_until(
        "every job to complete after the restart",
        Duration::from_secs(60),
        || {
            while let Some(job) = jobs.get(completed) {
                let state = block_on(get_job(&mut client, *job)).state();
                if state != JobState::Completed {
                    last = Some((*job, state));
                    return false;
                }
                completed += 1;
            }
            true
        },
    )
    .unwrap_or_else(|timed_out| panic!("{timed_out}; job and state: {last:?}"));
    stop.store(true, Ordering::Relaxed);
    for worker in workers {
        let _ = tokio::time::timeout(Duration::from_secs(10), worker).await;
    }
    for job in &jobs {
        let states = task_states(&mut client, *job).await;
        assert!(
            states.values().all(|state| *state == TaskState::Computed),
            "job {job}: {states:?}"
        );
    }
}
