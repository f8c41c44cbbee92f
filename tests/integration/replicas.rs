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
from tilebox.workflows import ExecutionContext, Runner, Task

class Hello(Task):
    name: str

    def execute(self, context: ExecutionContext) -> None:
        print(f"hello {self.name}")

class Broken(Task):
    def execute(self, context: ExecutionContext) -> None:
        raise ValueError("broken on purpose")

class FanOut(Task):
    count: int

    def execute(self, context: ExecutionContext) -> None:
        context.submit_subtasks([Hello(str(index)) for index in range(self.count)])

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

#[test]
fn jobs_and_reads_agree_across_replicas() {
    let replicas = Replicas::start(2, &[]);
    let (a, b) = (replicas.server(0), replicas.server(1));

    let job = submit(a, "Hello", r#"{"name": "replica"}"#);
    let seen = job_document(b, &job);
    assert_eq!(
        seen["id"],
        job.as_str(),
        "a job submitted through A is read on B: {seen}"
    );
    assert_eq!(seen["state"], "queued", "{seen}");
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
        retried["state"], "queued",
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

    let first = submit(a, "Hello", r#"{"name": "first"}"#);
    wait_for_job_state(b, &first, "completed", Duration::from_secs(120));
    // The runner reported the first task and is waiting in a new long poll on B.
    std::thread::sleep(Duration::from_millis(500));
    let second = submit(a, "FanOut", r#"{"count": 20}"#);
    let done = wait_for_job_state(a, &second, "completed", Duration::from_secs(20));
    assert_eq!(
        done["execution_stats"]["total_tasks"], 21,
        "the fan-out ran to the end on B: {done}"
    );
}
