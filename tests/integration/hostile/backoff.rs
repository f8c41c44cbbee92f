//! A runner that cannot run a task: it backs off from the task's identifier (the task is
//! left to other runners meanwhile, and its failures stay capped) and keeps serving other
//! jobs; a release host killed from outside is replaced without failing a task; `os._exit`
//! in a sub-interpreter fails its task instead of ending the runner.

use std::path::Path;
use std::time::Duration;

use super::stalls::CLUSTER;
use super::*;
use crate::common::{
    RunnerProcess, TestServer, client, job_document, project_runner, wait_for_job_state, wait_until,
};

/// A release that cannot live in a sub-interpreter (it segfaults there at import), so it is
/// hosted in a child process. `Crash` leaves `marker` behind and ends its host; from then on
/// the host cannot start again (its import raises), so this runner cannot run `Victim`.
fn breaking_app(marker: &Path) -> String {
    format!(
        r#"import ctypes
import os

from tilebox.workflows import ExecutionContext, Runner, Task


def in_sub_interpreter():
    import _interpreters
    return _interpreters.get_current()[0] != 0


if in_sub_interpreter():
    ctypes.string_at(0)  # this release lives in a child process
if os.path.exists({marker:?}):
    raise RuntimeError("this host cannot start again")


class Crash(Task):
    def execute(self, context: ExecutionContext) -> None:
        open({marker:?}, "w").close()
        os._exit(1)


class Victim(Task):
    def execute(self, context: ExecutionContext) -> None:
        context.current_task.display = "victim ran"


class Pid(Task):
    def execute(self, context: ExecutionContext) -> None:
        context.current_task.display = f"hello from pid {{os.getpid()}}"


runner = Runner(tasks=[Crash, Victim, Pid])
"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_runner_backs_off_from_a_task_it_cannot_run_and_serves_other_jobs() {
    let server = TestServer::start_with(&["--long-poll-ms", "300"]);
    let mut client = client(&server).await;
    create_cluster(&mut client, CLUSTER).await;
    let scratch = tempfile::tempdir().expect("temp dir");
    let marker = scratch.path().join("broken");
    deploy_files(
        &mut client,
        "breaking",
        &[("app.py", &breaking_app(&marker))],
        CLUSTER,
    )
    .await;
    deploy_files(&mut client, "greeter", &[("app.py", HELLO)], CLUSTER).await;
    let cache = tempfile::tempdir().expect("cache");
    let mut runner = start_runner(
        &server,
        CLUSTER,
        cache.path(),
        scratch.path().join("runner.log"),
        &["-n", "1", "--failure-backoff-max-seconds", "1"],
    );

    // Its own code ended its host: that is the task's own (workflow) error.
    let crash = submit_to(&server, "Crash", CLUSTER);
    let crashed = wait_for_job_state(&server, &crash, "failed", Duration::from_secs(120));
    let display = crashed["tasks"][0]["display"].as_str().expect("display");
    assert!(display.contains("WorkerCrashed("), "{display}");
    assert!(marker.exists());

    // From now on this runner cannot run `Victim`: the host does not start again.
    let victim = submit_to(&server, "Victim", CLUSTER);
    wait_until(
        "the runner to back off from Victim",
        Duration::from_secs(30),
        || {
            runner
                .log()
                .lines()
                .any(|line| line.contains("backing off") && line.contains("name=Victim"))
        },
    )
    .unwrap_or_else(|timed_out| panic!("{timed_out}\n{}", runner.log()));
    // Meanwhile its one slot serves another job, long before `Victim` used up its attempts.
    let hello = submit_to(&server, "Hello", CLUSTER);
    let done = wait_for_job_state(&server, &hello, "completed", Duration::from_secs(30));
    assert_eq!(done["tasks"][0]["display"], "hello from the good release");
    let meanwhile = job_document(&server, &victim);
    assert_ne!(meanwhile["state"], "failed", "{meanwhile:#}");

    // The runner failures stay capped: after eleven attempts the task fails, its retries
    // untouched.
    let failed = wait_for_job_state(&server, &victim, "failed", Duration::from_secs(120));
    assert_failed_by_runners(&failed["tasks"][0]);

    let log = runner.log();
    let backoffs: Vec<&str> = log
        .lines()
        .filter(|line| line.contains("backing off") && line.contains("name=Victim"))
        .collect();
    // One line per failure, naming the identifier, the failure and the pause.
    assert_eq!(backoffs.len(), 11, "{log}");
    assert!(
        backoffs.iter().all(|line| line.contains("version=v0.0")
            && line.contains("this host cannot start again")
            && line.contains("period=1s")),
        "{log}"
    );
    assert!(
        backoffs[0].contains("failures=1") && backoffs[10].contains("failures=11"),
        "{log}"
    );
    // `Hello` and `Crash` ran: no back-off from them.
    assert_eq!(
        log.lines()
            .filter(|line| line.contains("backing off"))
            .count(),
        11,
        "{log}"
    );
    assert!(runner.is_running(), "{log}");
    drop(runner);
    server.stop();
}

/// The `tilebox python-host` children (not probes) of process `parent`.
fn python_hosts(parent: u32) -> Vec<u32> {
    let Ok(threads) = fs_err::read_dir(format!("/proc/{parent}/task")) else {
        return Vec::new();
    };
    let mut hosts = Vec::new();
    for thread in threads.flatten() {
        let children = fs_err::read_to_string(thread.path().join("children")).unwrap_or_default();
        for child in children.split_whitespace() {
            let Ok(pid) = child.parse::<u32>() else {
                continue;
            };
            let command = fs_err::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let command = String::from_utf8_lossy(&command);
            if command.contains("python-host") && !command.contains("--probe") {
                hosts.push(pid);
            }
        }
    }
    hosts
}

/// Whether process `pid` ended (a zombie its parent has not reaped yet, or gone).
fn ended(pid: u32) -> bool {
    match fs_err::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the command name in parentheses.
        Ok(stat) => stat
            .rsplit_once(") ")
            .is_some_and(|(_, rest)| rest.starts_with('Z')),
        Err(_) => true,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_release_host_killed_while_idle_is_replaced_and_the_next_task_runs() {
    let server = TestServer::start_with(&["--long-poll-ms", "300"]);
    let scratch = tempfile::tempdir().expect("temp dir");
    let marker = scratch.path().join("never-written");
    let project = crate::common::project("breaking", &breaking_app(&marker));
    let runner = RunnerProcess::spawn(
        &mut project_runner(server.url(), project.path(), &["-n", "1"]),
        scratch.path().join("runner.log"),
    );
    let first = crate::common::submit(&server, "Pid", "{}");
    let done = wait_for_job_state(&server, &first, "completed", Duration::from_secs(120));
    let first_display = done["tasks"][0]["display"]
        .as_str()
        .expect("display")
        .to_string();
    assert!(
        first_display.starts_with("hello from pid "),
        "{first_display}"
    );

    // Kill the release's host from outside while it is idle.
    let hosts = python_hosts(runner.id());
    assert_eq!(hosts.len(), 1, "one host for one slot: {hosts:?}");
    let host = hosts[0];
    assert_eq!(first_display, format!("hello from pid {host}"));
    crate::common::signal(host, "-KILL");
    wait_until("the host to end", Duration::from_secs(10), || ended(host)).expect("the host ends");

    // The next task runs in a new host, at its first attempt: nothing failed for the host.
    let second = crate::common::submit(&server, "Pid", "{}");
    let done = wait_for_job_state(&server, &second, "completed", Duration::from_secs(60));
    let display = done["tasks"][0]["display"].as_str().expect("display");
    assert!(display.starts_with("hello from pid "), "{display}");
    assert_ne!(display, first_display, "a new host ran it");
    let log = runner.log();
    assert!(
        !log.contains("could not run the task") && !log.contains("backing off"),
        "no task failed for the host killed while idle:\n{log}"
    );
    assert!(
        log.contains("the child process hosting the release died")
            && log.contains("killed by signal 9"),
        "the replaced host is named with why it ended:\n{log}"
    );
    drop(runner);
    server.stop();
}

/// A release that lives in a sub-interpreter, whose `Exit` task calls `os._exit`.
const EXITS: &str = r#"import os

from tilebox.workflows import ExecutionContext, Runner, Task


class Exit(Task):
    def execute(self, context: ExecutionContext) -> None:
        os._exit(7)


class Fine(Task):
    def execute(self, context: ExecutionContext) -> None:
        context.current_task.display = "fine"


runner = Runner(tasks=[Exit, Fine])
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_calling_os_exit_in_a_sub_interpreter_fails_and_the_runner_keeps_serving() {
    let server = TestServer::start_with(&["--long-poll-ms", "300"]);
    let project = crate::common::project("exits", EXITS);
    let exit = crate::common::submit(&server, "Exit", "{}");
    let fine = crate::common::submit(&server, "Fine", "{}");

    let output = project_runner(
        server.url(),
        project.path(),
        &["-n", "1", "--stop-when-idling"],
    )
    .output()
    .expect("runner");
    let log = crate::common::stderr_of(&output);
    // Before, `os._exit(7)` ended the whole runner with status 7.
    assert!(output.status.success(), "{}: {log}", output.status);
    assert!(log.contains("isolation=sub-interpreter"), "{log}");

    let failed = wait_for_job_state(&server, &exit, "failed", Duration::from_secs(10));
    let task = &failed["tasks"][0];
    assert_eq!(task["retry_count"], 0, "{task}");
    let display = task["display"].as_str().expect("display");
    assert_eq!(
        display.lines().last(),
        Some(
            "RuntimeError('os._exit(7) would end the runner process hosting this sub-interpreter; raise an exception to fail the task instead')"
        ),
        "its own (workflow) error: {display}"
    );
    let done = wait_for_job_state(&server, &fine, "completed", Duration::from_secs(10));
    assert_eq!(done["tasks"][0]["display"], "fine");
    server.stop();
}
