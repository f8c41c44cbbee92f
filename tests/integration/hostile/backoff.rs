//! A runner that cannot run a task: it backs off from the task's identifier (the task is
//! left to other runners meanwhile, and its failures stay capped) and keeps serving other
//! jobs.

use std::path::Path;
use std::time::Duration;

use super::stalls::{create_cluster, deploy_files, start_runner, submit_to_cluster};
use super::*;
use crate::common::{TestServer, client, job_document, wait_for_job_state, wait_until};

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
    create_cluster(&mut client).await;
    let scratch = tempfile::tempdir().expect("temp dir");
    let marker = scratch.path().join("broken");
    deploy_files(
        &mut client,
        "breaking",
        &[("app.py", &breaking_app(&marker))],
    )
    .await;
    deploy_files(&mut client, "greeter", &[("app.py", HELLO)]).await;
    let cache = tempfile::tempdir().expect("cache");
    let mut runner = start_runner(
        &server,
        cache.path(),
        scratch.path().join("runner.log"),
        &["-n", "1", "--failure-backoff-max-seconds", "1"],
    );

    // Its own code ended its host: that is the task's own (workflow) error.
    let crash = submit_to_cluster(&server, "Crash");
    let crashed = wait_for_job_state(&server, &crash, "failed", Duration::from_secs(120));
    let display = crashed["tasks"][0]["display"].as_str().expect("display");
    assert!(display.contains("WorkerCrashed("), "{display}");
    assert!(marker.exists());

    // From now on this runner cannot run `Victim`: the host does not start again.
    let victim = submit_to_cluster(&server, "Victim");
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
    let hello = submit_to_cluster(&server, "Hello");
    let done = wait_for_job_state(&server, &hello, "completed", Duration::from_secs(30));
    assert_eq!(done["tasks"][0]["display"], "hello from the good release");
    let meanwhile = job_document(&server, &victim);
    assert_ne!(meanwhile["state"], "failed", "{meanwhile:#}");

    // The runner failures stay capped: after eleven attempts the task fails, its retries
    // untouched.
    let failed = wait_for_job_state(&server, &victim, "failed", Duration::from_secs(120));
    let task = &failed["tasks"][0];
    assert_eq!(task["retry_count"], 0, "{task}");
    let display = task["display"].as_str().expect("display");
    assert_eq!(
        display.lines().last(),
        Some("RunnerFailed('the runners could not run the task 11 times')"),
        "{display}"
    );

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
