//! Several `tilebox server` replicas on one PostgreSQL database (Debian's package, a
//! cluster started by the tests): any replica serves any client, work submitted through one
//! wakes runners long-polling on another, and the state survives the death of a replica.

use std::time::Duration;

use crate::common::postgres::TestCluster;
use crate::common::{
    Replicas, RunnerProcess, TestServer, job_document, json_of, project, project_runner, stderr_of,
    submit, wait_for_job_state,
};

/// One task that succeeds, one that fails, and one that fans out.
const APP: &str = r#"
import time
from tilebox.workflows import ExecutionContext, Runner, Task

class Hello(Task):
    def execute(self, context: ExecutionContext) -> None:
        # Long enough that a replica or the database goes away while tasks run.
        time.sleep(0.02)
        print("hello")

class Broken(Task):
    def execute(self, context: ExecutionContext) -> None:
        raise ValueError("broken on purpose")

# One field: its wire form is the bare number (`tilebox job submit --input 20`).
class FanOut(Task):
    count: int

    def execute(self, context: ExecutionContext) -> None:
        context.submit_subtasks([Hello() for _ in range(self.count)])

runner = Runner(tasks=[Hello, Broken, FanOut])
"#;

fn start_runner(server: &TestServer, project: &std::path::Path, name: &str) -> RunnerProcess {
    RunnerProcess::spawn(
        &mut project_runner(server.url(), project, &["--quiet"]),
        project.join(format!("{name}.log")),
    )
}

#[test]
fn a_bad_database_url_is_refused_without_printing_its_password() {
    let output = crate::common::tilebox_command(&[
        "server",
        "--listen",
        "127.0.0.1:0",
        "--database",
        "postgres://someone:hunter2secret@127.0.0.1:1/nowhere?connect_timeout=3",
    ])
    .output()
    .expect("run the server");
    let stderr = stderr_of(&output);
    assert!(
        !output.status.success(),
        "the server refused to start: {stderr}"
    );
    assert!(
        stderr.contains("127.0.0.1:1/nowhere"),
        "the error names the database it could not reach: {stderr}"
    );
    assert!(
        !stderr.contains("hunter2secret")
            && !String::from_utf8_lossy(&output.stdout).contains("hunter2secret"),
        "the password is never printed: {stderr}"
    );
}

/// A developer's exported `TILEBOX_DATABASE_URL` never reaches a server the tests start,
/// neither a [`TestServer`] nor `tilebox server` run through `tilebox_command`: without
/// `--database` they run on SQLite in their data dir and leave that database untouched.
#[test]
fn a_developers_database_url_never_reaches_the_servers_tests_start() {
    let database = crate::common::postgres::TestDatabase::create();
    // SAFETY (test set-up): nextest runs each test in its own process, and this is set
    // before the test spawns any child.
    unsafe { std::env::set_var(tilebox::env::DATABASE_URL, &database.url) };

    let server = TestServer::start();
    let job = submit(&server, "Hello", "{}");
    assert_eq!(job_document(&server, &job)["state"], "submitted");

    let data = tempfile::tempdir().expect("data dir");
    let mut cli_server = crate::common::tilebox_command(&["server", "--listen", "127.0.0.1:0"])
        .arg("--data-dir")
        .arg(data.path())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn tilebox server");
    let mut first_line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(cli_server.stdout.take().expect("stdout")),
        &mut first_line,
    )
    .expect("read the server's stdout");
    let _ = cli_server.kill();
    let _ = cli_server.wait();
    assert!(
        first_line.starts_with("listening on "),
        "the server started on SQLite: {first_line:?}"
    );

    let tables = TestCluster::psql(
        &database.url,
        "SELECT count(*) FROM pg_tables WHERE schemaname = 'public'",
    );
    assert_eq!(
        tables, "0",
        "no test server migrated or wrote the database TILEBOX_DATABASE_URL names"
    );
}

#[test]
fn jobs_and_reads_agree_across_replicas() {
    let replicas = Replicas::start(2, &[]);
    let (a, b) = (replicas.server(0), replicas.server(1));

    let job = submit(a, "Hello", "{}");
    let seen = job_document(b, &job);
    assert_eq!(
        seen["id"],
        job.as_str(),
        "a job submitted through A is read on B: {seen}"
    );
    assert_eq!(seen["state"], "submitted", "{seen}");
    let listed = json_of(&b.tilebox(&["--json", "job", "list"]));
    assert!(
        listed.to_string().contains(&job),
        "B lists the job submitted through A: {listed}"
    );

    // Canceled through B, the job is canceled for A too.
    json_of(&b.tilebox(&["--json", "job", "cancel", &job]));
    assert_eq!(job_document(a, &job)["state"], "canceled");

    // A failing job, failed by a runner on B, is retried through A.
    let project = project("replicas", APP);
    let broken = submit(a, "Broken", "{}");
    let mut runner = start_runner(b, project.path(), "runner-b");
    wait_for_job_state(a, &broken, "failed", Duration::from_secs(120));
    runner.kill();
    json_of(&a.tilebox(&["--json", "job", "retry", &broken]));
    let retried = job_document(b, &broken);
    assert_eq!(
        retried["execution_stats"]["tasks_by_state"],
        serde_json::json!({"queued": 1}),
        "B sees the retry made through A: {retried}"
    );
    let stored = TestCluster::psql(&replicas.database.url, "SELECT count(*) FROM jobs");
    assert_eq!(stored, "2", "both jobs are in the one PostgreSQL database");
}

#[test]
fn a_task_submitted_on_one_replica_wakes_a_runner_long_polling_on_the_other() {
    // A long poll of 60 s: a runner on B can only start A's second job within the deadline
    // below if B hears of it from A.
    let replicas = Replicas::start(2, &["--long-poll-ms", "60000"]);
    let (a, b) = (replicas.server(0), replicas.server(1));
    let project = project("replicas", APP);
    let _runner = start_runner(b, project.path(), "runner-b");

    let first = submit(a, "Hello", "{}");
    wait_for_job_state(b, &first, "completed", Duration::from_secs(120));
    // The runner reported the first task and is waiting in a new long poll on B.
    std::thread::sleep(Duration::from_millis(500));
    let second = submit(a, "FanOut", "20");
    let done = wait_for_job_state(a, &second, "completed", Duration::from_secs(20));
    assert_eq!(
        done["execution_stats"]["total_tasks"], 21,
        "the fan-out ran to the end on B: {done}"
    );
}

/// Four runners, two on each replica, work through fan-outs submitted through A; replica B
/// is killed with SIGKILL mid-run. Every job A acknowledged (before and after the kill)
/// completes with all of its tasks, every one of them in state computed: B's runners' leases
/// expire and A's reaper hands their tasks out again. Delivery is at-least-once, so a task
/// whose lease expired may have run twice; how often a task ran is not checked here.
/// B then comes back on its port, and its runners resume.
#[test]
fn killing_a_replica_under_load_loses_nothing_acknowledged() {
    const JOBS: usize = 12;
    const FAN_OUT: u64 = 150;
    let mut replicas = Replicas::start(2, &["--lease-seconds", "3", "--max-lease-seconds", "3"]);
    let project = project("replicas", APP);
    let mut runners: Vec<RunnerProcess> = (0..4)
        .map(|index| {
            start_runner(
                replicas.server(index % 2),
                project.path(),
                &format!("runner-{index}"),
            )
        })
        .collect();

    let a = replicas.server(0);
    let mut acknowledged: Vec<String> = (0..JOBS / 2)
        .map(|_| submit(a, "FanOut", &FAN_OUT.to_string()))
        .collect();
    // Under way on both replicas: some tasks computed, the work far from done.
    let mut computed_so_far = 0;
    crate::common::wait_until(
        "the first tasks to compute",
        Duration::from_secs(120),
        || {
            computed_so_far = acknowledged
                .iter()
                .map(|job| {
                    job_document(a, job)["execution_stats"]["tasks_by_state"]["computed"]
                        .as_u64()
                        .unwrap_or(0)
                })
                .sum::<u64>();
            computed_so_far >= 50
        },
    )
    .unwrap_or_else(|timed_out| panic!("{timed_out}: {computed_so_far} computed"));
    replicas.servers[1].kill();
    let total = (JOBS / 2) as u64 * (FAN_OUT + 1);
    assert!(
        computed_so_far < total,
        "the replica is killed mid-run: {computed_so_far} of {total} computed"
    );
    let a = replicas.server(0);
    acknowledged.extend((JOBS / 2..JOBS).map(|_| submit(a, "FanOut", &FAN_OUT.to_string())));

    for job in &acknowledged {
        let done = wait_for_job_state(a, job, "completed", Duration::from_secs(300));
        assert_eq!(
            done["execution_stats"]["total_tasks"],
            FAN_OUT + 1,
            "{done}"
        );
        assert_eq!(
            done["execution_stats"]["tasks_by_state"]["computed"],
            FAN_OUT + 1,
            "every task of job {job} computed: {done}"
        );
    }
    for runner in &mut runners {
        assert!(
            runner.is_running(),
            "a runner exited while its replica was away:\n{}",
            runner.log()
        );
    }

    // B comes back on its port; its runners find it again and run a job submitted to it.
    replicas.servers[1].restart();
    runners[0].kill();
    runners[2].kill();
    let b = replicas.server(1);
    let after = submit(b, "FanOut", "10");
    let done = wait_for_job_state(b, &after, "completed", Duration::from_secs(120));
    assert_eq!(
        done["execution_stats"]["tasks_by_state"]["computed"], 11,
        "{done}"
    );
}

/// PostgreSQL crashes (immediate shutdown: no checkpoint, every session cut, the WAL
/// replayed at the next start) in the middle of a run and comes back on its port: both
/// servers answer UNAVAILABLE meanwhile, reconnect, and every job acknowledged before the
/// crash, up to the last one submitted just before it, still exists and completes; a job
/// submitted after the restart through one replica wakes a runner on the other, so the
/// listening connections came back too.
#[test]
fn a_postgres_restart_mid_run_is_survived() {
    let cluster = std::sync::Arc::new(TestCluster::start());
    let database = crate::common::postgres::TestDatabase::create_on(cluster.clone());
    let replicas = Replicas::start_on(
        database,
        2,
        &[
            "--lease-seconds",
            "3",
            "--max-lease-seconds",
            "3",
            "--long-poll-ms",
            "60000",
        ],
    );
    let (a, b) = (replicas.server(0), replicas.server(1));
    let project = project("replicas", APP);
    let mut runners: Vec<RunnerProcess> = (0..2)
        .map(|index| {
            start_runner(
                replicas.server(index),
                project.path(),
                &format!("runner-{index}"),
            )
        })
        .collect();

    let jobs: Vec<String> = (0..4).map(|_| submit(a, "FanOut", "100")).collect();
    crate::common::wait_until(
        "the first tasks to compute",
        Duration::from_secs(120),
        || {
            job_document(a, &jobs[0])["execution_stats"]["tasks_by_state"]["computed"]
                .as_u64()
                .unwrap_or(0)
                >= 10
        },
    )
    .expect("work under way");
    // Acknowledged just before the crash: with synchronous commit, in the WAL already.
    let last_moment: Vec<String> = (0..4).map(|_| submit(a, "Hello", "{}")).collect();
    cluster.crash_restart();
    let computed: u64 = jobs
        .iter()
        .map(|job| {
            job_document(b, job)["execution_stats"]["tasks_by_state"]["computed"]
                .as_u64()
                .unwrap_or(0)
        })
        .sum();
    assert!(
        computed < 4 * 101,
        "PostgreSQL restarted mid-run: {computed} of 404 computed"
    );
    for job in &jobs {
        let done = wait_for_job_state(b, job, "completed", Duration::from_secs(300));
        assert_eq!(
            done["execution_stats"]["tasks_by_state"]["computed"], 101,
            "{done}"
        );
    }
    for job in &last_moment {
        let done = wait_for_job_state(a, job, "completed", Duration::from_secs(120));
        assert_eq!(
            done["execution_stats"]["tasks_by_state"]["computed"], 1,
            "the job acknowledged just before the crash ran: {done}"
        );
    }
    // B's runner alone, idle in a 60 s long poll: only a NOTIFY from A over the new
    // connections starts this job within the deadline.
    runners[0].kill();
    std::thread::sleep(Duration::from_millis(500));
    let after = submit(a, "FanOut", "10");
    let done = wait_for_job_state(b, &after, "completed", Duration::from_secs(20));
    assert_eq!(
        done["execution_stats"]["tasks_by_state"]["computed"], 11,
        "{done}"
    );
    for server in [a, b] {
        assert!(
            !server.stderr().contains("panicked"),
            "no server panicked:\n{}",
            server.stderr_tail()
        );
    }
}

const FIXABLE: &str = r#"
from tilebox.workflows import ExecutionContext, Runner, Task

class Root(Task):
    def execute(self, context: ExecutionContext) -> None:
        context.submit_subtask(Step())

class Step(Task):
    def execute(self, context: ExecutionContext) -> None:
        raise RuntimeError("broken step")

runner = Runner(tasks=[Root, Step])
"#;

/// A release published and deployed through A runs on a release runner of B (B serves the
/// artifact's bytes from the database); a fixed release deployed through A reaches B's
/// deployment watch, so the job retried through B completes there.
#[test]
fn releases_deployed_through_one_replica_run_on_a_release_runner_of_the_other() {
    let replicas = Replicas::start(2, &[]);
    let (a, b) = (replicas.server(0), replicas.server(1));
    let project = project("fixable", FIXABLE);
    assert!(
        a.tilebox(&["workflow", "create", "Fixable"])
            .status
            .success()
    );
    let deploy = |server: &TestServer| {
        json_of(&server.tilebox_in(project.path(), &["--json", "workflow", "publish-release"]));
        json_of(&server.tilebox_in(
            project.path(),
            &["--json", "workflow", "deploy-release", "--latest"],
        ))
    };
    deploy(a);
    let cache = tempfile::tempdir().expect("cache");
    let runner = RunnerProcess::spawn(
        crate::common::tilebox_command(&["runner", "start", "--cache-dir"])
            .arg(cache.path())
            .env("TILEBOX_API_URL", b.url()),
        cache.path().join("runner.log"),
    );
    let job = json_of(&a.tilebox(&[
        "--json", "job", "submit", "--name", "fix-me", "--task", "Root",
    ]));
    let id = job["id"].as_str().expect("id").to_string();
    wait_for_job_state(b, &id, "failed", Duration::from_secs(120));

    fs_err::write(
        project.path().join("app.py"),
        FIXABLE.replace("raise RuntimeError(\"broken step\")", "pass"),
    )
    .expect("fix the step");
    let deployed = deploy(a);
    // Retried before the runner has loaded the fix, the step would run the broken code again.
    crate::common::wait_until(
        "the runner to load the fixed release",
        Duration::from_secs(120),
        || crate::common::routes_a_second_release(&runner.log()),
    )
    .unwrap_or_else(|timed_out| panic!("{timed_out}\ndeployed: {deployed}\n{}", runner.log()));
    let retried = json_of(&b.tilebox(&["--json", "job", "retry", &id]));
    assert_eq!(retried["rescheduled_tasks"], 1, "{retried}");
    crate::common::wait_until(
        "the fixed release to complete the job",
        Duration::from_secs(120),
        || job_document(a, &id)["state"] == "completed",
    )
    .unwrap_or_else(|timed_out| panic!("{timed_out}\ndeployed: {deployed}\n{}", runner.log()));
}

/// A deploy through A reaches a deployment watch (`DeploymentService.WatchDeployments` on the
/// default cluster) on A and one on B: each delivers exactly one new snapshot, naming the
/// deployed release, and then nothing more for a few seconds (a duplicate notification that
/// changed the snapshot, or a second NOTIFY path, would show as a further message). B's
/// watch hears only through the database: it is never told by A directly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deploy_through_one_replica_reaches_watchers_on_both_exactly_once() {
    use tilebox::api::selfhosted_v1::{ClusterDeployments, WatchDeploymentsRequest};
    use tokio::time::timeout;

    /// How long the deploy may take to reach a watch.
    const DELIVERY: Duration = Duration::from_secs(20);
    /// How long a watch must then stay quiet.
    const QUIET: Duration = Duration::from_secs(3);

    let replicas = Replicas::start(2, &[]);
    let (a, b) = (replicas.server(0), replicas.server(1));
    let project = project("greeter", APP);
    assert!(
        a.tilebox(&["workflow", "create", "Greeter"])
            .status
            .success()
    );
    json_of(&a.tilebox_in(project.path(), &["--json", "workflow", "publish-release"]));

    let mut watches = Vec::new();
    for (name, server) in [("A", a), ("B", b)] {
        let mut client = tilebox::client::Client::connect(server.url(), None)
            .await
            .expect("client");
        let mut stream = client
            .deployments
            .watch_deployments(WatchDeploymentsRequest::default())
            .await
            .unwrap_or_else(|status| panic!("watch on {name}: {status:?}"))
            .into_inner();
        let first: ClusterDeployments = timeout(DELIVERY, stream.message())
            .await
            .unwrap_or_else(|_| panic!("the watch on {name} sends the current set at once"))
            .expect("the first snapshot")
            .expect("the stream stays open");
        assert!(
            first.releases.is_empty(),
            "nothing is deployed yet ({name}): {first:?}"
        );
        watches.push((name, client, stream));
    }

    let deployed = json_of(&a.tilebox_in(
        project.path(),
        &["--json", "workflow", "deploy-release", "--latest"],
    ));
    let release_id = deployed["release"]["id"]
        .as_str()
        .unwrap_or_else(|| panic!("the deployed release's id: {deployed}"))
        .to_string();

    for (name, _client, stream) in &mut watches {
        let next = timeout(DELIVERY, stream.message())
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "the watch on {name} heard of the deploy through A within {DELIVERY:?}\n\
                     deployed: {deployed}\n--- A ---\n{}\n--- B ---\n{}",
                    a.stderr_tail(),
                    b.stderr_tail()
                )
            })
            .unwrap_or_else(|status| panic!("the watch on {name} failed: {status:?}"))
            .unwrap_or_else(|| panic!("the watch on {name} ended"));
        let named: Vec<(String, Option<String>)> = next
            .releases
            .iter()
            .map(|deployed| {
                let id = tilebox::api::convert::uuid_of(
                    deployed
                        .release
                        .as_ref()
                        .and_then(|release| release.id.as_ref()),
                )
                .ok()
                .flatten()
                .map(|id| id.to_string());
                (deployed.workflow_slug.clone(), id)
            })
            .collect();
        assert_eq!(
            named,
            [("greeter".to_string(), Some(release_id.clone()))],
            "the watch on {name} names the release deployed through A: {next:?}"
        );
    }
    for (name, _client, stream) in &mut watches {
        if let Ok(further) = timeout(QUIET, stream.message()).await {
            panic!("the watch on {name} sent a second message for one deploy: {further:?}");
        }
    }
}
