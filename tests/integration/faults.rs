//! Faults against the real binary: leases lost again and again, `kill -9` of the server while
//! runner processes work through a large fan-out, a server that is away for 20 seconds, a
//! frozen runner when the server is asked to stop, and a runner asked to stop before it ever
//! reached its server. Each test starts its own server on a free port (loopback only) and its
//! own runner processes, and waits on conditions with deadlines; only the outage itself is a
//! sleep.

use std::collections::{BTreeMap, HashSet};
use std::path::Path;
use std::time::{Duration, Instant};

use crate::common::{
    RunnerProcess, TestServer, block_on, get_job, job_request, list_tasks, project, project_runner,
    submit, uuid_of_id, wait_until,
};
use tilebox::api::RUNNER_ID_HEADER;
use tilebox::api::convert::id;
use tilebox::api::workflows_v1::{
    ComputedTask, Job, JobState, NextTaskRequest, SubmitJobRequest, TaskLeaseRequest, TaskState,
    TaskSummary,
};
use tilebox::client::Client;
use uuid::Uuid;

/// A project whose root task fans out `count` subtasks that sleep `seconds` (0: no-op).
const FAN_OUT: &str = r#"
import time
from tilebox.workflows import ExecutionContext, Runner, Task

class FanOut(Task):
    count: int
    seconds: float

    def execute(self, context: ExecutionContext) -> None:
        if self.seconds:
            context.submit_subtasks([Nap(self.seconds) for _ in range(self.count)])
        else:
            context.submit_subtasks([Noop() for _ in range(self.count)])

class Noop(Task):
    def execute(self, context: ExecutionContext) -> None:
        pass

class Nap(Task):
    seconds: float

    def execute(self, context: ExecutionContext) -> None:
        time.sleep(self.seconds)

runner = Runner(tasks=[FanOut, Noop, Nap])
"#;

/// Runner processes (`tilebox runner start --project`), killed when dropped so a failing
/// test leaves nothing behind.
struct Runners(Vec<RunnerProcess>);

impl Runners {
    fn start(server: &TestServer, project: &Path, count: usize) -> Self {
        Self(
            (0..count)
                .map(|index| {
                    RunnerProcess::spawn(
                        &mut project_runner(server.url(), project, &["--quiet"]),
                        project.join(format!("runner-{index}.log")),
                    )
                })
                .collect(),
        )
    }

    /// Panics (with the logs) if a runner has exited.
    fn assert_alive(&mut self, when: &str) {
        for runner in &mut self.0 {
            assert!(
                runner.is_running(),
                "a runner exited {when}:\n{}",
                runner.log()
            );
        }
    }

    fn logs(&self) -> Vec<String> {
        self.0.iter().map(RunnerProcess::log).collect()
    }
}

fn submit_fan_out(server: &TestServer, count: usize, seconds: f64) -> Uuid {
    let input = format!(r#"{{"count": {count}, "seconds": {seconds}}}"#);
    submit(server, "FanOut", &input)
        .parse()
        .expect("the job id is a UUID")
}

/// The store's task counts of a job: total and per state.
fn counts(job: &Job) -> (u64, BTreeMap<&'static str, u64>) {
    let stats = job.execution_stats.clone().unwrap_or_default();
    let mut by_state = BTreeMap::new();
    for count in &stats.tasks_by_state {
        if count.count > 0 {
            *by_state
                .entry(tilebox::api::convert::task_state_name(count.state()))
                .or_default() += count.count;
        }
    }
    (stats.total_tasks, by_state)
}

/// Polls the job until `done` holds for it, or panics after `timeout` with what it saw.
fn wait_for_job(
    client: &mut Client,
    job: Uuid,
    timeout: Duration,
    what: &str,
    mut done: impl FnMut(&Job) -> bool,
) -> Job {
    let mut current = None;
    wait_until(format!("job {job}: {what}"), timeout, || {
        let polled = current.insert(block_on(get_job(client, job)));
        done(polled)
    })
    .unwrap_or_else(|timed_out| {
        let current = current.as_ref().expect("polled at least once");
        panic!(
            "{timed_out}; state {:?}, counts {:?}",
            current.state(),
            counts(current)
        )
    });
    current.expect("polled at least once")
}

/// Asserts the job completed with `expected` tasks, each computed and recorded once: the
/// store's counts, and the listing of the root and its children (unique ids, one root with
/// `expected - 1` children).
async fn assert_each_task_computed_once(client: &mut Client, job: Uuid, expected: u64) {
    let current = get_job(client, job).await;
    assert_eq!(current.state(), JobState::Completed);
    let (total, by_state) = counts(&current);
    assert_eq!(total, expected, "tasks in the store: {by_state:?}");
    assert_eq!(by_state, BTreeMap::from([("computed", expected)]));

    let roots = list_tasks(client, job, None).await;
    assert_eq!(roots.len(), 1, "one root task");
    let root = uuid_of_id(roots[0].id.as_ref());
    assert_eq!(roots[0].state(), TaskState::Computed);
    let children = list_tasks(client, job, Some(root)).await;
    assert_eq!(
        children.len() as u64,
        expected - 1,
        "the root's fan-out was recorded exactly once"
    );
    let unique: HashSet<Uuid> = children
        .iter()
        .map(|task| uuid_of_id(task.id.as_ref()))
        .collect();
    assert_eq!(unique.len(), children.len(), "no task listed twice");
    let not_computed: Vec<&TaskSummary> = children
        .iter()
        .filter(|task| task.state() != TaskState::Computed)
        .collect();
    assert!(not_computed.is_empty(), "{not_computed:?}");
}

fn with_runner_id<T>(message: T, runner: &str) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.metadata_mut().insert(
        RUNNER_ID_HEADER,
        runner.parse().expect("an ASCII runner id"),
    );
    request
}

/// A job of one `Lost` task with 3 retries.
fn lost_job() -> SubmitJobRequest {
    let mut job = job_request("Lost", "v0.0", 1, b"");
    job.job_name = "lost".into();
    job.tasks.as_mut().expect("tasks").task_groups[0].max_retries_values = vec![3];
    job
}

/// Claims a `Lost` task as `runner`, waiting (long polls) until one is handed out.
fn claim(client: &mut Client, runner: &str) -> Uuid {
    let mut claimed = None;
    wait_until(
        format!("{runner} to be handed the task again after its lease expired"),
        Duration::from_secs(15),
        || {
            let request = NextTaskRequest {
                computed_task: None,
                next_task_to_run: crate::common::ask("Lost", "v0.0"),
            };
            let answer = block_on(client.tasks.next_task(with_runner_id(request, runner)))
                .expect("next task")
                .into_inner();
            claimed = answer.next_task.map(|task| uuid_of_id(task.id.as_ref()));
            claimed.is_some()
        },
    )
    .unwrap();
    claimed.expect("a task was claimed")
}

async fn task_of(client: &mut Client, job: Uuid) -> TaskSummary {
    let mut tasks = list_tasks(client, job, None).await;
    assert_eq!(tasks.len(), 1);
    tasks.remove(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_whose_lease_is_lost_eleven_times_fails_the_job() {
    let server = TestServer::start_with(&["--lease-seconds", "2", "--long-poll-ms", "1000"]);
    let mut client = Client::connect(server.url(), None).await.expect("client");
    let job = client
        .jobs
        .submit_job(lost_job())
        .await
        .expect("submit")
        .into_inner();
    let job = uuid_of_id(job.id.as_ref());

    // Ten lost leases: each time the task comes back queued, without counting a retry.
    let mut task = None;
    for attempt in 1..=10 {
        let runner = format!("crashed-runner-{attempt}");
        let claimed = claim(&mut client, &runner);
        assert_eq!(
            *task.get_or_insert(claimed),
            claimed,
            "the same task returns"
        );
        let summary = task_of(&mut client, job).await;
        assert_eq!(summary.state(), TaskState::Running, "attempt {attempt}");
        if attempt == 2 {
            // A late result from the runner that lost the first lease is ignored.
            let late = NextTaskRequest {
                computed_task: Some(ComputedTask {
                    id: Some(id(claimed)),
                    display: "late".into(),
                    ..ComputedTask::default()
                }),
                next_task_to_run: None,
            };
            client
                .tasks
                .next_task(with_runner_id(late, "crashed-runner-1"))
                .await
                .expect("a stale report is answered");
            assert_eq!(
                task_of(&mut client, job).await.state(),
                TaskState::Running,
                "a stale report does not compute the task"
            );
        }
    }
    let job_state = get_job(&mut client, job).await.state();
    assert_eq!(
        job_state,
        JobState::Running,
        "ten lost leases do not fail the job"
    );

    // The eleventh loss fails it for good.
    let task = task.expect("claimed");
    assert_eq!(claim(&mut client, "crashed-runner-11"), task);
    let failed = wait_for_job(
        &mut client,
        job,
        Duration::from_secs(15),
        "failing",
        |job| job.state() == JobState::Failed,
    );
    assert_eq!(counts(&failed).1, BTreeMap::from([("failed", 1)]));
    let summary = task_of(&mut client, job).await;
    assert_eq!(summary.state(), TaskState::Failed);
    assert_eq!(
        summary.retry_count, 0,
        "lost leases are not retries (max_retries 3 was never used)"
    );
    assert!(
        summary
            .display
            .contains("LeaseExpired('the task lost its lease 11 times')"),
        "{}",
        summary.display
    );
    // The last claimant's lease is gone, and nothing hands the task out again.
    let extended = client
        .tasks
        .extend_task_lease(with_runner_id(
            TaskLeaseRequest {
                task_id: Some(id(task)),
                requested_lease: Some(tilebox::api::convert::duration(Duration::from_secs(10))),
            },
            "crashed-runner-11",
        ))
        .await
        .expect("extend")
        .into_inner();
    assert_eq!(
        extended.lease.map(|lease| lease.seconds),
        Some(0),
        "no lease for a failed task"
    );
    server.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_of_the_server_under_four_runners_loses_and_duplicates_nothing() {
    // Enough for the runners' batched work calls to be in flight at the kill.
    const LEAVES: u64 = 50_000;
    let mut server = TestServer::start_with(&["--lease-seconds", "5"]);
    let project = project("fan-out", FAN_OUT);
    let mut client = Client::connect(server.url(), None).await.expect("client");
    let job = submit_fan_out(&server, LEAVES as usize, 0.0);
    let mut runners = Runners::start(&server, project.path(), 4);

    // Kill the server once a fifth of the fan-out is done.
    let before_kill = wait_for_job(
        &mut client,
        job,
        Duration::from_secs(300),
        "10,000 computed tasks",
        |job| counts(job).1.get("computed").copied().unwrap_or(0) > LEAVES / 5,
    );
    server.kill();
    let (_, at_kill) = counts(&before_kill);
    assert!(
        at_kill.get("computed").copied().unwrap_or(0) < LEAVES,
        "the job must still be running at the kill: {at_kill:?}"
    );
    runners.assert_alive("while the server was down");

    server.restart();
    let mut client = Client::connect(server.url(), None).await.expect("client");
    let after_restart = get_job(&mut client, job).await;
    let (total, _) = counts(&after_restart);
    assert_eq!(
        total,
        LEAVES + 1,
        "the acknowledged fan-out survived the kill"
    );
    wait_for_job(
        &mut client,
        job,
        Duration::from_secs(300),
        "completing after the restart",
        |job| job.state() == JobState::Completed,
    );
    runners.assert_alive("after the restart");
    assert_each_task_computed_once(&mut client, job, LEAVES + 1).await;
    drop(runners);
    server.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runners_wait_out_a_20_second_outage_and_finish_the_job() {
    const LEAVES: u64 = 300;
    const OUTAGE: Duration = Duration::from_secs(20);
    let mut server = TestServer::start_with(&["--lease-seconds", "5"]);
    let project = project("fan-out", FAN_OUT);
    let mut client = Client::connect(server.url(), None).await.expect("client");
    let job = submit_fan_out(&server, LEAVES as usize, 0.02);
    let mut runners = Runners::start(&server, project.path(), 2);
    wait_for_job(
        &mut client,
        job,
        Duration::from_secs(120),
        "20 computed tasks",
        |job| counts(job).1.get("computed").copied().unwrap_or(0) > 20,
    );

    server.kill();
    // The fault is the duration itself.
    std::thread::sleep(OUTAGE);
    runners.assert_alive("during the outage");
    // A back-off shows only in the runner's log.
    for log in runners.logs() {
        assert!(
            log.contains("the server is unreachable; retrying in"),
            "each runner backs off while the server is away:\n{log}"
        );
    }

    let restarted = Instant::now();
    server.restart();
    let mut client = Client::connect(server.url(), None).await.expect("client");
    wait_for_job(
        &mut client,
        job,
        Duration::from_secs(60),
        "completing after the outage",
        |job| job.state() == JobState::Completed,
    );
    runners.assert_alive("after the outage");
    assert_each_task_computed_once(&mut client, job, LEAVES + 1).await;
    let logs = runners.logs();
    assert!(
        restarted.elapsed() < Duration::from_secs(45),
        "the runners resumed within their longest backoff: {:?}\n{}",
        restarted.elapsed(),
        logs.join("\n---\n")
    );
    drop(runners);
    server.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_runner_does_not_keep_the_server_from_stopping() {
    let server = TestServer::start();
    let project = project("fan-out", FAN_OUT);
    let mut client = Client::connect(server.url(), None).await.expect("client");
    let job = submit_fan_out(&server, 3, 0.0);
    let runners = Runners::start(&server, project.path(), 1);
    wait_for_job(
        &mut client,
        job,
        Duration::from_secs(60),
        "completing",
        |job| job.state() == JobState::Completed,
    );
    drop(client);
    // The runner is connected and long-polling; freeze it (as a hung or swapped-out host).
    runners.0[0].signal("-STOP");
    // SIGTERM must still end the server, within `TestServer::stop`'s deadline.
    server.stop();
    runners.0[0].signal("-CONT");
    drop(runners);
}

#[test]
fn a_runner_that_cannot_reach_its_server_stops_on_sigterm() {
    // A port nothing listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("a free port")
        .port();
    let project = project("fan-out", FAN_OUT);
    let mut runner = RunnerProcess::spawn(
        &mut project_runner(&format!("http://127.0.0.1:{port}"), project.path(), &[]),
        project.path().join("runner.log"),
    );
    // Only the runner's log shows that it is retrying, i.e. past its start-up.
    wait_until("the runner to retry", Duration::from_secs(30), || {
        runner.log().contains("cannot reach the server; retrying")
    })
    .unwrap_or_else(|timed_out| panic!("{timed_out}\n{}", runner.log()));
    runner.signal("-TERM");
    let status = runner.wait_for_exit(
        "SIGTERM to stop a runner still waiting for its server",
        Duration::from_secs(5),
    );
    assert!(status.success(), "{status}\n{}", runner.log());
}
