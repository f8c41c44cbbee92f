//! Faults against the real binary: leases lost again and again, `kill -9` of the server while
//! runner processes work through a large fan-out, a server that is away for 20 seconds, a
//! frozen runner when the server is asked to stop, and a runner asked to stop before it ever
//! reached its server. Each test starts its own server on a free port (loopback only) and its
//! own runner processes, and waits on conditions with deadlines; only the outage itself is a
//! sleep.

mod common;

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use common::TestServer;
use tilebox::api::RUNNER_ID_HEADER;
use tilebox::api::convert::{id, uuid_of};
use tilebox::api::tilebox_v1::Pagination;
use tilebox::api::workflows_v1::{
    ComputedTask, GetJobRequest, Job, JobState, ListJobTasksRequest, NextTaskRequest,
    NextTaskToRun, SubmitJobRequest, TaskIdentifier, TaskLeaseRequest, TaskState,
    TaskSubmissionGroup, TaskSubmissions, TaskSummary,
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

fn fan_out_project() -> tempfile::TempDir {
    let project = tempfile::Builder::new()
        .prefix("tilebox-faults-")
        .tempdir()
        .expect("project dir");
    std::fs::write(project.path().join("app.py"), FAN_OUT).expect("write app.py");
    std::fs::write(
        project.path().join("tilebox.workflow.toml"),
        "[workflow]\nslug = \"fan-out\"\nrunner = \"app:runner\"\n\n[build]\ninclude = [\"app.py\"]\n",
    )
    .expect("write tilebox.workflow.toml");
    project
}

/// Runner processes (`tilebox runner start --project`), killed when dropped so a failing
/// test leaves nothing behind.
struct Runners {
    children: Vec<Child>,
    logs: Vec<PathBuf>,
}

impl Runners {
    fn start(server: &TestServer, project: &Path, count: usize) -> Self {
        let mut runners = Self {
            children: Vec::new(),
            logs: Vec::new(),
        };
        for index in 0..count {
            let log = project.join(format!("runner-{index}.log"));
            let child = common::tilebox_command(&["runner", "start", "--quiet", "--project"])
                .arg(project)
                .arg("--cache-dir")
                .arg(project.join(".tilebox-cache"))
                .env("TILEBOX_API_URL", server.url())
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(&log).expect("runner log"))
                .spawn()
                .expect("start a runner");
            runners.children.push(child);
            runners.logs.push(log);
        }
        runners
    }

    /// Panics (with the logs) if a runner has exited.
    fn assert_alive(&mut self, when: &str) {
        for (child, log) in self.children.iter_mut().zip(&self.logs) {
            if let Some(status) = child.try_wait().expect("poll a runner") {
                panic!(
                    "a runner exited {when} ({status}):\n{}",
                    std::fs::read_to_string(log).unwrap_or_default()
                );
            }
        }
    }

    fn logs(&self) -> Vec<String> {
        self.logs
            .iter()
            .map(|log| std::fs::read_to_string(log).unwrap_or_default())
            .collect()
    }
}

impl Drop for Runners {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn submit_fan_out(server: &TestServer, count: usize, seconds: f64) -> Uuid {
    let input = format!(r#"{{"count": {count}, "seconds": {seconds}}}"#);
    let output = server.tilebox(&[
        "--json", "job", "submit", "--name", "fan-out", "--task", "FanOut", "--input", &input,
    ]);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let job: serde_json::Value = serde_json::from_slice(&output.stdout).expect("job JSON");
    job["id"]
        .as_str()
        .and_then(|id| id.parse().ok())
        .expect("job id")
}

async fn get_job(client: &mut Client, job: Uuid) -> Job {
    client
        .jobs
        .get_job(GetJobRequest {
            job_id: Some(id(job)),
        })
        .await
        .expect("get job")
        .into_inner()
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

/// Every task of a job below `parent` (the roots when `None`), paging through ListJobTasks.
async fn list_tasks(client: &mut Client, job: Uuid, parent: Option<Uuid>) -> Vec<TaskSummary> {
    let mut tasks = Vec::new();
    let mut after = None;
    loop {
        let page = client
            .jobs
            .list_job_tasks(ListJobTasksRequest {
                job_id: Some(id(job)),
                parent_task_id: parent.map(id),
                page: Some(Pagination {
                    limit: Some(1000),
                    starting_after: after,
                }),
                ..ListJobTasksRequest::default()
            })
            .await
            .expect("list tasks")
            .into_inner()
            .page
            .expect("page");
        tasks.extend(page.tasks);
        match page.next_page {
            Some(next) => after = next.starting_after,
            None => return tasks,
        }
    }
}

/// Polls the job until `done` holds for it, or panics after `timeout` with what it saw.
async fn wait_for_job(
    client: &mut Client,
    job: Uuid,
    timeout: Duration,
    what: &str,
    mut done: impl FnMut(&Job) -> bool,
) -> Job {
    let deadline = Instant::now() + timeout;
    loop {
        let current = get_job(client, job).await;
        if done(&current) {
            return current;
        }
        assert!(
            Instant::now() < deadline,
            "job {job}: {what} did not happen within {timeout:?}; state {:?}, counts {:?}",
            current.state(),
            counts(&current)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
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
    let root = uuid_of(roots[0].id.as_ref())
        .expect("root id")
        .expect("root id");
    assert_eq!(roots[0].state(), TaskState::Computed);
    let children = list_tasks(client, job, Some(root)).await;
    assert_eq!(
        children.len() as u64,
        expected - 1,
        "the root's fan-out was recorded exactly once"
    );
    let unique: HashSet<Uuid> = children
        .iter()
        .map(|task| uuid_of(task.id.as_ref()).expect("id").expect("id"))
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

fn lost_job() -> SubmitJobRequest {
    SubmitJobRequest {
        job_name: "lost".into(),
        tasks: Some(TaskSubmissions {
            task_groups: vec![TaskSubmissionGroup {
                inputs: vec![Vec::new()],
                identifier_pointers: vec![0],
                cluster_slug_pointers: vec![0],
                display_pointers: vec![0],
                max_retries_values: vec![3],
                ..TaskSubmissionGroup::default()
            }],
            cluster_slug_lookup: vec![String::new()],
            identifier_lookup: vec![TaskIdentifier {
                name: "Lost".into(),
                version: "v0.0".into(),
            }],
            display_lookup: vec!["Lost".into()],
        }),
        ..SubmitJobRequest::default()
    }
}

/// Claims a `Lost` task as `runner`, waiting (long polls) until one is handed out.
async fn claim(client: &mut Client, runner: &str) -> Uuid {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let request = NextTaskRequest {
            computed_task: None,
            next_task_to_run: Some(NextTaskToRun {
                cluster_slug: String::new(),
                identifiers: vec![TaskIdentifier {
                    name: "Lost".into(),
                    version: "v0.0".into(),
                }],
            }),
        };
        let answer = client
            .tasks
            .next_task(with_runner_id(request, runner))
            .await
            .expect("next task")
            .into_inner();
        if let Some(task) = answer.next_task {
            return uuid_of(task.id.as_ref()).expect("id").expect("id");
        }
        assert!(
            Instant::now() < deadline,
            "{runner}: the task was not handed out again after its lease expired"
        );
    }
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
    let job = uuid_of(job.id.as_ref()).expect("id").expect("id");

    // Ten lost leases: each time the task comes back queued, without counting a retry.
    let mut task = None;
    for attempt in 1..=10 {
        let runner = format!("crashed-runner-{attempt}");
        let claimed = claim(&mut client, &runner).await;
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
    assert_eq!(claim(&mut client, "crashed-runner-11").await, task);
    let failed = wait_for_job(
        &mut client,
        job,
        Duration::from_secs(15),
        "failing",
        |job| job.state() == JobState::Failed,
    )
    .await;
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
    const LEAVES: u64 = 5_000;
    let mut server = TestServer::start_with(&["--lease-seconds", "5"]);
    let project = fan_out_project();
    let mut client = Client::connect(server.url(), None).await.expect("client");
    let job = submit_fan_out(&server, LEAVES as usize, 0.0);
    let mut runners = Runners::start(&server, project.path(), 4);

    // Kill the server once a fifth of the fan-out is done.
    let before_kill = wait_for_job(
        &mut client,
        job,
        Duration::from_secs(120),
        "1,000 computed tasks",
        |job| counts(job).1.get("computed").copied().unwrap_or(0) > 1_000,
    )
    .await;
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
        Duration::from_secs(120),
        "completing after the restart",
        |job| job.state() == JobState::Completed,
    )
    .await;
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
    let project = fan_out_project();
    let mut client = Client::connect(server.url(), None).await.expect("client");
    let job = submit_fan_out(&server, LEAVES as usize, 0.02);
    let mut runners = Runners::start(&server, project.path(), 2);
    wait_for_job(
        &mut client,
        job,
        Duration::from_secs(120),
        "20 computed tasks",
        |job| counts(job).1.get("computed").copied().unwrap_or(0) > 20,
    )
    .await;

    server.kill();
    // The fault is the duration itself.
    std::thread::sleep(OUTAGE);
    runners.assert_alive("during the outage");
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
    )
    .await;
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
    let project = fan_out_project();
    let mut client = Client::connect(server.url(), None).await.expect("client");
    let job = submit_fan_out(&server, 3, 0.0);
    let runners = Runners::start(&server, project.path(), 1);
    wait_for_job(
        &mut client,
        job,
        Duration::from_secs(60),
        "completing",
        |job| job.state() == JobState::Completed,
    )
    .await;
    drop(client);
    // The runner is connected and long-polling; freeze it (as a hung or swapped-out host).
    let pid = runners.children[0].id().to_string();
    let stopped = std::process::Command::new("kill")
        .args(["-STOP", &pid])
        .status()
        .expect("kill -STOP");
    assert!(stopped.success());
    // SIGTERM must still end the server, within `TestServer::stop`'s deadline.
    server.stop();
    let _ = std::process::Command::new("kill")
        .args(["-CONT", &pid])
        .status();
    drop(runners);
}

#[test]
fn a_runner_that_cannot_reach_its_server_stops_on_sigterm() {
    // A port nothing listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("a free port")
        .port();
    let project = fan_out_project();
    let log = project.path().join("runner.log");
    let child = common::tilebox_command(&["runner", "start", "--project"])
        .arg(project.path())
        .arg("--cache-dir")
        .arg(project.path().join(".tilebox-cache"))
        .env("TILEBOX_API_URL", format!("http://127.0.0.1:{port}"))
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).expect("runner log"))
        .spawn()
        .expect("start a runner");
    let mut runners = Runners {
        children: vec![child],
        logs: vec![log.clone()],
    };
    assert!(
        common::wait_until(Duration::from_secs(30), || {
            std::fs::read_to_string(&log)
                .unwrap_or_default()
                .contains("cannot reach the server; retrying")
        }),
        "the runner retries: {}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    let pid = runners.children[0].id().to_string();
    let signalled = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .expect("kill -TERM");
    assert!(signalled.success());
    let child = &mut runners.children[0];
    let exited = common::wait_until(Duration::from_secs(5), || {
        child.try_wait().expect("poll the runner").is_some()
    });
    assert!(
        exited,
        "SIGTERM must stop a runner still waiting for its server:\n{}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    let status = child.wait().expect("reap");
    assert!(
        status.success(),
        "{status}\n{}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
}
