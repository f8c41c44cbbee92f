//! The release runner against a real server: the seed scenarios in direct mode (local
//! projects loaded in-process), crashes, shutdown, and interop with the official SDK.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, SystemTime};

use common::{TestServer, wait_until};
use serde_json::Value;

const SLEEP_EXAMPLE: &str = "examples/parallel-sleep";

/// A copy of the parallel-sleep example project in a temp dir.
fn sleep_project() -> tempfile::TempDir {
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join(SLEEP_EXAMPLE);
    let project = tempfile::tempdir().expect("project");
    for file in [
        "parallel_workflow.py",
        "pyproject.toml",
        "tilebox.workflow.toml",
        "uv.lock",
    ] {
        std::fs::copy(example.join(file), project.path().join(file)).expect("copy the example");
    }
    project
}

/// A project of one module `app.py` with `source`, no dependencies.
fn project(slug: &str, source: &str) -> tempfile::TempDir {
    let project = tempfile::tempdir().expect("project");
    std::fs::write(project.path().join("app.py"), source).expect("write app.py");
    std::fs::write(
        project.path().join("tilebox.workflow.toml"),
        format!("[workflow]\nslug = \"{slug}\"\nrunner = \"app:runner\"\n\n[build]\ninclude = [\"app.py\"]\n"),
    )
    .expect("write tilebox.workflow.toml");
    project
}

/// Starts `tilebox runner start --project DIR` with extra arguments; stderr goes to a file.
fn start_runner(server: &TestServer, project: &Path, extra: &[&str]) -> (Child, PathBuf) {
    let log = project.join(format!("runner-{}.log", uuid::Uuid::new_v4()));
    let child = common::tilebox_command(&["runner", "start", "--project"])
        .arg(project)
        .arg("--cache-dir")
        .arg(project.join(".tilebox-cache"))
        .args(extra)
        .env("TILEBOX_API_URL", server.url())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).expect("runner log"))
        .spawn()
        .expect("start the runner");
    (child, log)
}

fn submit(server: &TestServer, task: &str, input: &str) -> String {
    let output = server.tilebox(&[
        "--json", "job", "submit", "--name", "test", "--task", task, "--input", input,
    ]);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let job: Value = serde_json::from_slice(&output.stdout).expect("job JSON");
    job["id"].as_str().expect("job id").to_string()
}

fn job(server: &TestServer, id: &str) -> Value {
    let output = server.tilebox(&["--json", "job", "get", id]);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).expect("job JSON")
}

fn wait_for_state(server: &TestServer, id: &str, state: &str, timeout: Duration) -> Value {
    let mut last = Value::Null;
    let reached = wait_until(timeout, || {
        last = job(server, id);
        last["state"] == state
    });
    assert!(reached, "job {id} did not become {state}: {last}");
    last
}

fn run_to_completion(mut child: Child, log: &Path) {
    let finished = wait_until(Duration::from_secs(120), || {
        child.try_wait().expect("wait").is_some()
    });
    if !finished {
        let _ = child.kill();
    }
    let status = child.wait().expect("runner status");
    assert!(
        finished && status.success(),
        "runner failed ({status}):\n{}",
        std::fs::read_to_string(log).unwrap_or_default()
    );
}

/// An RFC 3339 timestamp of the CLI's JSON as a time. Compared as strings, times with a
/// variable-length fraction misorder (`17.022Z` sorts before `17.02Z`).
fn time_of(value: &Value) -> SystemTime {
    let text = value
        .as_str()
        .unwrap_or_else(|| panic!("expected an RFC 3339 string, got {value}"));
    humantime::parse_rfc3339(text).unwrap_or_else(|error| panic!("{text:?}: {error}"))
}

fn parallelism(job: &Value) -> f64 {
    job["execution_stats"]["parallelism"]
        .as_f64()
        .expect("parallelism")
}

#[test]
fn parallel_sleep_runs_five_at_once_with_five_slots() {
    let server = TestServer::start();
    let project = sleep_project();
    let input = r#"{"count": 10, "seconds": 0.4}"#;

    let one = submit(&server, "ParallelSleepWorkflow", input);
    let (child, log) = start_runner(&server, project.path(), &["-n", "1", "--stop-when-idling"]);
    run_to_completion(child, &log);
    let one = wait_for_state(&server, &one, "completed", Duration::from_secs(10));
    assert!(
        parallelism(&one) < 1.3,
        "one slot runs one task at a time: {one}"
    );

    let five = submit(&server, "ParallelSleepWorkflow", input);
    let (child, log) = start_runner(&server, project.path(), &["-n", "5", "--stop-when-idling"]);
    run_to_completion(child, &log);
    let five = wait_for_state(&server, &five, "completed", Duration::from_secs(10));
    assert_eq!(five["execution_stats"]["tasks_by_state"]["computed"], 11);
    assert!(
        parallelism(&five) > 3.0,
        "five slots overlap the sleeps: {five}"
    );
    let log = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(
        log.contains("isolation=sub-interpreter"),
        "a pure-Python project runs in sub-interpreters:\n{log}"
    );
}

#[test]
fn parallel_starts_five_runners_that_share_the_work() {
    let server = TestServer::start();
    let project = sleep_project();
    // Build the environment once, so five runners do not sync it at the same time.
    let (child, log) = start_runner(&server, project.path(), &["--stop-when-idling"]);
    run_to_completion(child, &log);
    let id = submit(
        &server,
        "ParallelSleepWorkflow",
        r#"{"count": 10, "seconds": 0.4}"#,
    );
    let project_path = project.path().to_str().expect("utf-8 path");
    let cache = project.path().join(".tilebox-cache");
    let output = common::tilebox_command(&["parallel", "-n", "5", "--"])
        .arg(common::tilebox_binary())
        .args([
            "runner",
            "start",
            "--stop-when-idling",
            "--project",
            project_path,
            "--cache-dir",
        ])
        .arg(&cache)
        .env("TILEBOX_API_URL", server.url())
        .output()
        .expect("tilebox parallel");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    for index in 0..5 {
        assert!(
            stderr.contains(&format!("[{index}] ")),
            "copy {index} prefixes its lines:\n{stderr}"
        );
    }
    let done = wait_for_state(&server, &id, "completed", Duration::from_secs(10));
    assert!(
        parallelism(&done) > 2.5,
        "five runner processes overlap: {done}"
    );
}

#[test]
fn parallel_exits_with_the_first_failing_code() {
    let output = common::tilebox(&[
        "parallel",
        "-n",
        "3",
        "--",
        "sh",
        "-c",
        "echo out-$TILEBOX_PARALLEL_INDEX; exit $TILEBOX_PARALLEL_INDEX",
    ]);
    assert_eq!(output.status.code(), Some(1));
    let stdout = String::from_utf8_lossy(&output.stdout);
    for index in 0..3 {
        assert!(
            stdout.contains(&format!("[{index}] out-{index}")),
            "{stdout}"
        );
    }
}

const DISTRIBUTED: &str = r#"
import time
from tilebox.workflows import ExecutionContext, Runner, Task

class DistributedWorkflow(Task):
    def execute(self, context: ExecutionContext) -> None:
        download = context.submit_subtask(DownloadData())
        context.submit_subtask(ProcessData(), depends_on=[download])

class DownloadData(Task):
    def execute(self, context: ExecutionContext) -> None:
        time.sleep(0.3)

class ProcessData(Task):
    def execute(self, context: ExecutionContext) -> None:
        pass
"#;

#[test]
fn two_runners_with_different_tasks_complete_a_distributed_workflow_in_order() {
    let server = TestServer::start();
    let download = project(
        "download",
        &format!("{DISTRIBUTED}\nrunner = Runner(tasks=[DownloadData, DistributedWorkflow])\n"),
    );
    let gpu = project(
        "gpu",
        &format!("{DISTRIBUTED}\nrunner = Runner(tasks=[ProcessData, DistributedWorkflow])\n"),
    );
    let (mut first, first_log) = start_runner(&server, download.path(), &[]);
    let (mut second, second_log) = start_runner(&server, gpu.path(), &[]);
    let id = submit(&server, "DistributedWorkflow", "");
    let done = wait_for_state(&server, &id, "completed", Duration::from_secs(60));
    for child in [&mut first, &mut second] {
        let _ = child.kill();
        let _ = child.wait();
    }
    let children = done["tasks"][0]["children"].as_array().expect("children");
    let (download_task, process_task) = (&children[0], &children[1]);
    assert_eq!(download_task["display"], "DownloadData");
    assert_eq!(process_task["display"], "ProcessData");
    let stopped = time_of(&download_task["stopped_at"]);
    let started = time_of(&process_task["started_at"]);
    assert!(
        started >= stopped,
        "ProcessData started at {}, before DownloadData stopped at {}",
        process_task["started_at"],
        download_task["stopped_at"]
    );
    let first_log = std::fs::read_to_string(first_log).unwrap_or_default();
    let second_log = std::fs::read_to_string(second_log).unwrap_or_default();
    assert!(
        first_log.contains("DownloadData@v0.0") && !first_log.contains("ProcessData@v0.0"),
        "{first_log}"
    );
    assert!(second_log.contains("ProcessData@v0.0"), "{second_log}");
}

const SLOW: &str = r#"
import os, time
from tilebox.workflows import ExecutionContext, Runner, Task

class Slow(Task):
    seconds: float
    def execute(self, context: ExecutionContext) -> None:
        with open(os.environ["MARKER"], "a") as marker:
            marker.write("started\n")
        time.sleep(self.seconds)
        with open(os.environ["MARKER"], "a") as marker:
            marker.write("finished\n")

runner = Runner(tasks=[Slow])
"#;

fn marker_lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect()
}

fn start_slow_runner(server: &TestServer, project: &Path, marker: &Path) -> (Child, PathBuf) {
    let log = project.join(format!("runner-{}.log", uuid::Uuid::new_v4()));
    let child = common::tilebox_command(&["runner", "start", "--project"])
        .arg(project)
        .arg("--cache-dir")
        .arg(project.join(".tilebox-cache"))
        .env("TILEBOX_API_URL", server.url())
        .env("MARKER", marker)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).expect("log"))
        .spawn()
        .expect("start the runner");
    (child, log)
}

#[test]
fn a_task_of_a_killed_runner_is_completed_by_another_after_its_lease_expires() {
    let server = TestServer::start_with(&["--lease-seconds", "2"]);
    let project = project("slow", SLOW);
    let marker = project.path().join("marker");
    let id = submit(&server, "Slow", "2.0");
    let (mut first, _) = start_slow_runner(&server, project.path(), &marker);
    assert!(
        wait_until(Duration::from_secs(60), || marker_lines(&marker).len() == 1),
        "the first runner starts the task"
    );
    first.kill().expect("kill -9 the runner");
    first.wait().expect("reap");
    let (mut second, log) = start_slow_runner(&server, project.path(), &marker);
    let done = wait_for_state(&server, &id, "completed", Duration::from_secs(60));
    let _ = second.kill();
    let _ = second.wait();
    assert_eq!(
        marker_lines(&marker),
        ["started", "started", "finished"],
        "{}",
        std::fs::read_to_string(log).unwrap_or_default()
    );
    assert_eq!(
        done["tasks"][0]["retry_count"], 0,
        "a lost lease does not count as a retry"
    );
}

#[test]
fn a_task_busy_longer_than_its_lease_keeps_it() {
    // The runner extends leases from Rust timers; the task holds its GIL in a tight loop.
    let server = TestServer::start_with(&["--lease-seconds", "2", "--max-lease-seconds", "2"]);
    let project = project(
        "busy",
        "import time\nfrom tilebox.workflows import ExecutionContext, Runner, Task\n\n\
         class Busy(Task):\n    def execute(self, context: ExecutionContext) -> None:\n        \
         end = time.monotonic() + 5\n        while time.monotonic() < end:\n            pass\n\n\
         runner = Runner(tasks=[Busy])\n",
    );
    let id = submit(&server, "Busy", "");
    let (child, log) = start_runner(&server, project.path(), &["--stop-when-idling"]);
    run_to_completion(child, &log);
    let done = wait_for_state(&server, &id, "completed", Duration::from_secs(10));
    assert_eq!(done["tasks"][0]["retry_count"], 0);
    let log = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(!log.contains("lease was not extended"), "{log}");
}

fn signal(child: &Child, signal: &str) {
    let status = Command::new("kill")
        .args([signal, &child.id().to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
}

#[test]
fn the_first_sigterm_lets_the_running_task_finish() {
    let server = TestServer::start();
    let project = project("slow", SLOW);
    let marker = project.path().join("marker");
    let id = submit(&server, "Slow", "2.0");
    let (mut child, log) = start_slow_runner(&server, project.path(), &marker);
    assert!(wait_until(Duration::from_secs(60), || marker_lines(
        &marker
    )
    .len()
        == 1));
    signal(&child, "-TERM");
    let status = child.wait().expect("runner exits");
    assert!(
        status.success(),
        "{}",
        std::fs::read_to_string(log).unwrap_or_default()
    );
    assert_eq!(marker_lines(&marker), ["started", "finished"]);
    wait_for_state(&server, &id, "completed", Duration::from_secs(10));
}

#[test]
fn a_second_sigterm_hands_the_running_task_back() {
    let server = TestServer::start();
    let project = project("slow", SLOW);
    let marker = project.path().join("marker");
    let id = submit(&server, "Slow", "30.0");
    let (mut child, log) = start_slow_runner(&server, project.path(), &marker);
    assert!(wait_until(Duration::from_secs(60), || marker_lines(
        &marker
    )
    .len()
        == 1));
    signal(&child, "-TERM");
    std::thread::sleep(Duration::from_millis(300));
    signal(&child, "-TERM");
    assert!(
        wait_until(Duration::from_secs(10), || child
            .try_wait()
            .expect("wait")
            .is_some()),
        "the runner exits at once"
    );
    let job = job(&server, &id);
    let task = &job["tasks"][0];
    assert_eq!(
        task["state"],
        "queued",
        "handed back: {job}\n{}",
        std::fs::read_to_string(log).unwrap_or_default()
    );
    assert_eq!(task["retry_count"], 0, "a hand-back is not a retry");
    assert_eq!(
        task["display"], "Slow\nRunnerShutdown('Task was interrupted')",
        "the display is kept, as the SDK does"
    );
}

fn sdk_script(server: &TestServer, args: &[&str]) -> std::process::Output {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/interop/sleep_sdk.py");
    let output = Command::new(common::sdk_python())
        .arg(script)
        .args(args)
        .env("TILEBOX_API_URL", server.url())
        .env_remove("TILEBOX_API_KEY")
        .output()
        .expect("run the SDK script");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

#[test]
fn a_job_submitted_with_the_official_sdk_runs_on_this_runner() {
    let server = TestServer::start();
    let project = sleep_project();
    let output = sdk_script(&server, &["submit", "4", "0.05"]);
    let id = String::from_utf8_lossy(&output.stdout).trim().to_string();
    let (child, log) = start_runner(&server, project.path(), &["-n", "2", "--stop-when-idling"]);
    run_to_completion(child, &log);
    let done = wait_for_state(&server, &id, "completed", Duration::from_secs(10));
    let children = done["tasks"][0]["children"].as_array().expect("children");
    let displays: Vec<&str> = children
        .iter()
        .filter_map(|child| child["display"].as_str())
        .collect();
    assert_eq!(
        displays,
        [
            "SleepTask(0)",
            "SleepTask(1)",
            "SleepTask(2)",
            "SleepTask(3)"
        ]
    );
}

#[test]
fn a_job_submitted_with_this_cli_runs_on_the_official_sdk_runner() {
    let server = TestServer::start();
    let id = submit(
        &server,
        "ParallelSleepWorkflow",
        r#"{"count": 3, "seconds": 0.05}"#,
    );
    sdk_script(&server, &["run"]);
    let done = wait_for_state(&server, &id, "completed", Duration::from_secs(10));
    assert_eq!(done["execution_stats"]["tasks_by_state"]["computed"], 4);
}

#[test]
fn the_guides_parallel_workflow_script_runs_five_times_in_parallel_against_this_server() {
    let server = TestServer::start();
    let project = sleep_project();
    let python = tilebox::python::environment::EMBEDDED_PYTHON.expect("embedded python");
    let uv_run = |args: &[&str]| {
        common::tilebox_command(args)
            .current_dir(project.path())
            .env("TILEBOX_API_URL", server.url())
            .env("UV_PYTHON", python)
            .env("UV_PYTHON_DOWNLOADS", "never")
            .env_remove("TILEBOX_API_KEY")
            .output()
            .expect("tilebox parallel")
    };
    let submitted = Command::new("uv")
        .args([
            "run",
            "parallel_workflow.py",
            "--submit",
            "--count",
            "10",
            "--seconds",
            "0.5",
        ])
        .current_dir(project.path())
        .env("TILEBOX_API_URL", server.url())
        .env("UV_PYTHON", python)
        .env("UV_PYTHON_DOWNLOADS", "never")
        .output()
        .expect("uv run");
    assert!(
        submitted.status.success(),
        "{}",
        String::from_utf8_lossy(&submitted.stderr)
    );
    let stdout = String::from_utf8_lossy(&submitted.stdout);
    let id = stdout
        .lines()
        .find_map(|line| line.strip_prefix("Submitted job: "))
        .expect("the script prints the job id")
        .trim()
        .to_string();
    let output = uv_run(&[
        "parallel",
        "-n",
        "5",
        "--",
        "uv",
        "run",
        "parallel_workflow.py",
    ]);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let done = wait_for_state(&server, &id, "completed", Duration::from_secs(10));
    assert_eq!(done["execution_stats"]["tasks_by_state"]["computed"], 11);
    assert!(
        parallelism(&done) > 2.0,
        "five official runners overlap: {done}"
    );
}
