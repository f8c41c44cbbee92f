//! The release runner against a real server: the seed scenarios in direct mode (local
//! projects loaded in-process), crashes, shutdown, and interop with the official SDK.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use crate::common::{
    RunnerProcess, TestServer, example, job_document, project, project_runner, submit, time_of,
    wait_for_job_state, wait_until,
};
use serde_json::Value;

/// Starts `tilebox runner start --project DIR ARGS`; its log goes to a file in the project.
fn start_runner(server: &TestServer, project: &Path, args: &[&str]) -> RunnerProcess {
    let log = project.join(format!("runner-{}.log", uuid::Uuid::new_v4()));
    RunnerProcess::spawn(&mut project_runner(server.url(), project, args), log)
}

fn parallelism(job: &Value) -> f64 {
    job["execution_stats"]["parallelism"]
        .as_f64()
        .expect("parallelism")
}

#[test]
fn parallel_sleep_runs_five_at_once_with_five_slots() {
    let server = TestServer::start();
    let project = example("parallel-sleep");
    let input = r#"{"count": 10, "seconds": 0.4}"#;

    let one = submit(&server, "ParallelSleepWorkflow", input);
    start_runner(&server, project.path(), &["-n", "1", "--stop-when-idling"])
        .wait_for_success(Duration::from_secs(120));
    let one = wait_for_job_state(&server, &one, "completed", Duration::from_secs(10));
    assert!(
        parallelism(&one) < 1.3,
        "one slot runs one task at a time: {one}"
    );

    let five = submit(&server, "ParallelSleepWorkflow", input);
    let mut runner = start_runner(&server, project.path(), &["-n", "5", "--stop-when-idling"]);
    runner.wait_for_success(Duration::from_secs(120));
    let five = wait_for_job_state(&server, &five, "completed", Duration::from_secs(10));
    assert_eq!(five["execution_stats"]["tasks_by_state"]["computed"], 11);
    assert!(
        parallelism(&five) > 3.0,
        "five slots overlap the sleeps: {five}"
    );
    // The isolation shows only in the runner's `loaded release` log line.
    let log = runner.log();
    assert!(
        log.contains("isolation=sub-interpreter"),
        "a pure-Python project runs in sub-interpreters:\n{log}"
    );
}

#[test]
fn parallel_starts_five_runners_that_share_the_work() {
    let server = TestServer::start();
    let project = example("parallel-sleep");
    // Build the environment once, so five runners do not sync it at the same time.
    start_runner(&server, project.path(), &["--stop-when-idling"])
        .wait_for_success(Duration::from_secs(120));
    let id = submit(
        &server,
        "ParallelSleepWorkflow",
        r#"{"count": 10, "seconds": 0.4}"#,
    );
    let project_path = project.path().to_str().expect("utf-8 path");
    let cache = project.path().join(".tilebox-cache");
    let output = crate::common::tilebox_command(&["parallel", "-n", "5", "--"])
        .arg(crate::common::tilebox_binary())
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
    let done = wait_for_job_state(&server, &id, "completed", Duration::from_secs(10));
    assert!(
        parallelism(&done) > 2.5,
        "five runner processes overlap: {done}"
    );
}

#[test]
fn parallel_exits_with_the_first_failing_code() {
    let output = crate::common::tilebox(&[
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

/// Each task appends `<task> ran on <RUNNER_NAME>` to `MARKER`.
const DISTRIBUTED: &str = r#"
import os, time
from tilebox.workflows import ExecutionContext, Runner, Task

def record(task: Task) -> None:
    with open(os.environ["MARKER"], "a") as marker:
        marker.write(f"{type(task).__name__} ran on {os.environ['RUNNER_NAME']}\n")

class DistributedWorkflow(Task):
    def execute(self, context: ExecutionContext) -> None:
        record(self)
        download = context.submit_subtask(DownloadData())
        context.submit_subtask(ProcessData(), depends_on=[download])

class DownloadData(Task):
    def execute(self, context: ExecutionContext) -> None:
        record(self)
        time.sleep(0.3)

class ProcessData(Task):
    def execute(self, context: ExecutionContext) -> None:
        record(self)
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
    let marker = download.path().join("marker");
    let mut first = start_marking_runner(&server, download.path(), &marker, &[]);
    let mut second = start_marking_runner(&server, gpu.path(), &marker, &[]);
    let id = submit(&server, "DistributedWorkflow", "");
    let done = wait_for_job_state(&server, &id, "completed", Duration::from_secs(60));
    first.kill();
    second.kill();
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
    let mut ran = marker_lines(&marker);
    ran.sort();
    assert_eq!(
        ran[1..],
        ["DownloadData ran on download", "ProcessData ran on gpu"],
        "each task runs once, on the runner that registers it: {ran:?}"
    );
    assert!(ran[0].starts_with("DistributedWorkflow ran on "), "{ran:?}");
    // What a runner advertises is visible only in its `loaded release` log line.
    let (first_log, second_log) = (first.log(), second.log());
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
    fs_err::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect()
}

/// A runner of `project` whose tasks append to `marker` (`MARKER`); its `RUNNER_NAME` is the
/// project's workflow slug (its directory's `tilebox.workflow.toml`).
fn start_marking_runner(
    server: &TestServer,
    project: &Path,
    marker: &Path,
    args: &[&str],
) -> RunnerProcess {
    let config = fs_err::read_to_string(project.join("tilebox.workflow.toml")).expect("config");
    let slug = config
        .lines()
        .find_map(|line| line.strip_prefix("slug = "))
        .expect("a slug")
        .trim_matches('"');
    let log = project.join(format!("runner-{}.log", uuid::Uuid::new_v4()));
    RunnerProcess::spawn(
        project_runner(server.url(), project, args)
            .env("MARKER", marker)
            .env("RUNNER_NAME", slug),
        log,
    )
}

/// A runner of the `SLOW` project that appends to `marker`.
fn start_slow_runner(server: &TestServer, project: &Path, marker: &Path) -> RunnerProcess {
    start_marking_runner(server, project, marker, &[])
}

/// Waits until the slow task has written its `started` line.
fn wait_for_slow_start(marker: &Path, runner: &RunnerProcess) {
    wait_until(
        "the runner to start the task",
        Duration::from_secs(60),
        || marker_lines(marker).len() == 1,
    )
    .unwrap_or_else(|timed_out| panic!("{timed_out}\n{}", runner.log()));
}

#[test]
fn a_task_of_a_killed_runner_is_completed_by_another_after_its_lease_expires() {
    let server = TestServer::start_with(&["--lease-seconds", "2"]);
    let project = project("slow", SLOW);
    let marker = project.path().join("marker");
    let id = submit(&server, "Slow", "2.0");
    let mut first = start_slow_runner(&server, project.path(), &marker);
    wait_for_slow_start(&marker, &first);
    first.kill();
    let mut second = start_slow_runner(&server, project.path(), &marker);
    let done = wait_for_job_state(&server, &id, "completed", Duration::from_secs(60));
    second.kill();
    assert_eq!(
        marker_lines(&marker),
        ["started", "started", "finished"],
        "{}",
        second.log()
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
        "import os, time\nfrom tilebox.workflows import ExecutionContext, Runner, Task\n\n\
         class Busy(Task):\n    def execute(self, context: ExecutionContext) -> None:\n        \
         with open(os.environ['MARKER'], 'a') as marker:\n            marker.write('started\\n')\n        \
         end = time.monotonic() + 5\n        while time.monotonic() < end:\n            pass\n\n\
         runner = Runner(tasks=[Busy])\n",
    );
    let marker = project.path().join("marker");
    let id = submit(&server, "Busy", "");
    let mut runner =
        start_marking_runner(&server, project.path(), &marker, &["--stop-when-idling"]);
    runner.wait_for_success(Duration::from_secs(120));
    let done = wait_for_job_state(&server, &id, "completed", Duration::from_secs(10));
    assert_eq!(done["tasks"][0]["retry_count"], 0);
    // A lost lease would hand the task out again (a lost lease is not a retry): it ran once.
    assert_eq!(marker_lines(&marker), ["started"], "{}", runner.log());
}

#[test]
fn the_first_sigterm_lets_the_running_task_finish() {
    let server = TestServer::start();
    let project = project("slow", SLOW);
    let marker = project.path().join("marker");
    let id = submit(&server, "Slow", "2.0");
    let mut runner = start_slow_runner(&server, project.path(), &marker);
    wait_for_slow_start(&marker, &runner);
    runner.signal("-TERM");
    runner.wait_for_success(Duration::from_secs(60));
    assert_eq!(marker_lines(&marker), ["started", "finished"]);
    wait_for_job_state(&server, &id, "completed", Duration::from_secs(10));
}

#[test]
fn a_second_sigterm_hands_the_running_task_back() {
    let server = TestServer::start();
    let project = project("slow", SLOW);
    let marker = project.path().join("marker");
    let id = submit(&server, "Slow", "30.0");
    let mut runner = start_slow_runner(&server, project.path(), &marker);
    wait_for_slow_start(&marker, &runner);
    runner.signal("-TERM");
    // Two signals in quick succession could be coalesced into one; the second must come after
    // the runner handled the first. Its log line is the only sign of that.
    wait_until(
        "the runner to handle the first SIGTERM",
        Duration::from_secs(10),
        || runner.log().contains("stopping: no new tasks"),
    )
    .unwrap_or_else(|timed_out| panic!("{timed_out}\n{}", runner.log()));
    runner.signal("-TERM");
    runner.wait_for_exit("the runner to exit at once", Duration::from_secs(10));
    let job = job_document(&server, &id);
    let task = &job["tasks"][0];
    assert_eq!(
        task["state"],
        "queued",
        "handed back: {job}\n{}",
        runner.log()
    );
    assert_eq!(task["retry_count"], 0, "a hand-back is not a retry");
    assert_eq!(
        task["display"], "Slow\nRunnerShutdown('Task was interrupted')",
        "the display is kept, as the SDK does"
    );
}

/// `Linger` leaves a non-daemon thread sleeping for an hour; `Spin` never returns.
const LINGERING: &str = r#"
import os, threading, time
from tilebox.workflows import ExecutionContext, Runner, Task

def mark(text):
    with open(os.environ["MARKER"], "a") as marker:
        marker.write(text + "\n")

class Linger(Task):
    def execute(self, context: ExecutionContext) -> None:
        threading.Thread(target=lambda: time.sleep(3600)).start()
        mark("linger")

class Spin(Task):
    def execute(self, context: ExecutionContext) -> None:
        mark("spin")
        while True:
            pass

runner = Runner(tasks=[Linger, Spin])
"#;

/// Sends SIGTERM twice, the second once the runner's log shows `after_first`, and waits
/// (15 s at most) for it to exit.
fn interrupt_twice(runner: &mut RunnerProcess, after_first: &str) -> std::process::ExitStatus {
    runner.signal("-TERM");
    wait_until(
        format!("the runner to log `{after_first}`"),
        Duration::from_secs(10),
        || runner.log().contains(after_first),
    )
    .unwrap_or_else(|timed_out| panic!("{timed_out}\n{}", runner.log()));
    runner.signal("-TERM");
    runner.wait_for_exit(
        "the runner to exit after the second SIGTERM",
        Duration::from_secs(15),
    )
}

#[test]
fn a_runner_whose_task_left_a_non_daemon_thread_exits_on_the_second_sigterm() {
    let server = TestServer::start();
    let project = project("lingering", LINGERING);
    let marker = project.path().join("marker");
    let id = submit(&server, "Linger", "");
    let mut runner = start_marking_runner(&server, project.path(), &marker, &[]);
    wait_for_job_state(&server, &id, "completed", Duration::from_secs(60));
    // Drained, the runner waits for the thread as Python's own exit would (an hour); the
    // second SIGTERM ends that wait.
    let status = interrupt_twice(
        &mut runner,
        "every task is reported; unloading the releases",
    );
    assert!(
        status.success(),
        "nothing was running: {status}\n{}",
        runner.log()
    );
    assert_eq!(marker_lines(&marker), ["linger"]);
    assert!(
        runner
            .log()
            .contains("stopped waiting for threads the tasks left running"),
        "the unload was waiting for the thread:\n{}",
        runner.log()
    );
}

#[test]
fn a_runner_whose_task_hangs_next_to_a_non_daemon_thread_hands_it_back_on_the_second_sigterm() {
    let server = TestServer::start();
    let project = project("lingering", LINGERING);
    let marker = project.path().join("marker");
    let lingering = submit(&server, "Linger", "");
    let mut runner = start_marking_runner(&server, project.path(), &marker, &[]);
    wait_for_job_state(&server, &lingering, "completed", Duration::from_secs(60));
    let spinning = submit(&server, "Spin", "");
    wait_until(
        "the runner to start the spinning task",
        Duration::from_secs(30),
        || marker_lines(&marker).len() == 2,
    )
    .unwrap_or_else(|timed_out| panic!("{timed_out}\n{}", runner.log()));
    let status = interrupt_twice(&mut runner, "stopping: no new tasks");
    assert_eq!(status.code(), Some(130), "{}", runner.log());
    let job = job_document(&server, &spinning);
    let task = &job["tasks"][0];
    assert_eq!(
        task["state"],
        "queued",
        "handed back: {job}\n{}",
        runner.log()
    );
    assert_eq!(task["retry_count"], 0, "a hand-back is not a retry");
    assert_eq!(marker_lines(&marker), ["linger", "spin"]);
}

fn sdk_script(server: &TestServer, args: &[&str]) -> std::process::Output {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/interop/sleep_sdk.py");
    let output = Command::new(crate::common::sdk_python())
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
    let project = example("parallel-sleep");
    let output = sdk_script(&server, &["submit", "4", "0.05"]);
    let id = String::from_utf8_lossy(&output.stdout).trim().to_string();
    start_runner(&server, project.path(), &["-n", "2", "--stop-when-idling"])
        .wait_for_success(Duration::from_secs(120));
    let done = wait_for_job_state(&server, &id, "completed", Duration::from_secs(10));
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
    let done = wait_for_job_state(&server, &id, "completed", Duration::from_secs(10));
    assert_eq!(done["execution_stats"]["tasks_by_state"]["computed"], 4);
}

#[test]
fn the_guides_parallel_workflow_script_runs_five_times_in_parallel_against_this_server() {
    let server = TestServer::start();
    let project = example("parallel-sleep");
    let python = tilebox::python::environment::EMBEDDED_PYTHON.expect("embedded python");
    let uv_run = |args: &[&str]| {
        crate::common::tilebox_command(args)
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
            // Long enough that the five runners' staggered starts (each a `uv run` and an
            // SDK import, seconds apart on a loaded machine) leave them overlapping.
            "--seconds",
            "1.0",
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
    let done = wait_for_job_state(&server, &id, "completed", Duration::from_secs(10));
    assert_eq!(done["execution_stats"]["tasks_by_state"]["computed"], 11);
    assert!(
        parallelism(&done) > 1.5,
        "five official runners overlap: {done}"
    );
}
