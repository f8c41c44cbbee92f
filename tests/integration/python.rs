//! The embedding layer with real CPython and real uv venvs: sub-interpreter isolation, two
//! versions of a package in one process, crash containment, the child-process fallback for
//! C extensions that refuse sub-interpreters, and `tilebox task run`.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;
use tilebox::python::{self, Isolation, Placement, Release, TaskOutcome, TaskRequest};

/// A release directory with `files` (path, contents).
fn release_dir(files: &[(&str, &str)]) -> tempfile::TempDir {
    let directory = tempfile::tempdir().expect("temp dir");
    for (path, contents) in files {
        let path = directory.path().join(path);
        fs_err::create_dir_all(path.parent().expect("parent")).expect("mkdir");
        fs_err::write(path, contents).expect("write");
    }
    directory
}

/// A venv in `directory/.venv` for the embedded interpreter with `packages` installed.
fn venv_with(directory: &Path, packages: &[&str]) -> PathBuf {
    let python =
        python::environment::EMBEDDED_PYTHON.expect("the build records the embedded interpreter");
    let venv = directory.join(".venv");
    let run = |command: &mut Command| {
        let output = command
            .env("UV_PYTHON_DOWNLOADS", "never")
            .output()
            .expect("uv runs (python3 -m pip install uv)");
        assert!(
            output.status.success(),
            "{command:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    };
    run(Command::new("uv")
        .args(["venv", "--quiet", "--python", python])
        .arg(&venv));
    if !packages.is_empty() {
        run(Command::new("uv")
            .args(["pip", "install", "--quiet", "--python"])
            .arg(venv.join("bin/python"))
            .args(packages));
    }
    venv
}

fn release(label: &str, root: &Path, venv: Option<&Path>, runner: &str, cache: &Path) -> Release {
    Release {
        label: label.into(),
        runtime: python::runtime::unpack(cache).expect("unpack runtime"),
        root: root.to_path_buf(),
        site_packages: venv
            .map(python::environment::site_packages_of)
            .unwrap_or_default(),
        venv: venv.map(Path::to_path_buf),
        runner: runner.into(),
    }
}

fn request(name: &str, input: &str) -> TaskRequest {
    TaskRequest {
        name: name.into(),
        version: "v0.0".into(),
        input: input.as_bytes().to_vec(),
        id: uuid::Uuid::now_v7().to_string(),
        display: name.into(),
        retry_count: 0,
        parent_id: None,
        depends_on: vec![],
        job: python::JobInfo {
            id: uuid::Uuid::now_v7().to_string(),
            name: "test".into(),
            trace_parent: String::new(),
        },
        cluster: "default".into(),
    }
}

async fn run(loaded: &python::LoadedRelease, request: TaskRequest) -> TaskOutcome {
    let (events, _received) = tokio::sync::mpsc::unbounded_channel();
    loaded.execute(request, events).await.expect("execute")
}

fn display(outcome: &TaskOutcome) -> &str {
    match outcome {
        TaskOutcome::Computed { display, .. } | TaskOutcome::Failed { display, .. } => display,
    }
}

const ATTRS_RUNNER: &str = r#"
import attrs
from tilebox.workflows import ExecutionContext, Runner, Task

class Version(Task):
    def execute(self, context: ExecutionContext) -> None:
        import _interpreters
        context.current_task.display = f"attrs {attrs.__version__} in interpreter {_interpreters.get_current()[0]}"

runner = Runner(tasks=[Version])
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_sub_interpreters_hold_two_versions_of_one_package() {
    let cache = tempfile::tempdir().expect("cache");
    let old = release_dir(&[("app.py", ATTRS_RUNNER)]);
    let new = release_dir(&[("app.py", ATTRS_RUNNER)]);
    let old_venv = venv_with(old.path(), &["attrs==23.2.0"]);
    let new_venv = venv_with(new.path(), &["attrs==26.1.0"]);
    let first = python::load(
        release(
            "old",
            old.path(),
            Some(&old_venv),
            "app:runner",
            cache.path(),
        ),
        Placement::SubInterpreter,
    )
    .await
    .expect("load the first release");
    let second = python::load(
        release(
            "new",
            new.path(),
            Some(&new_venv),
            "app:runner",
            cache.path(),
        ),
        Placement::SubInterpreter,
    )
    .await
    .expect("load the second release");
    assert_eq!(first.isolation(), Isolation::SubInterpreter);
    assert_eq!(
        first.identifiers(),
        [("Version".to_string(), "v0.0".to_string())]
    );
    let (a, b) = tokio::join!(
        run(&first, request("Version", "")),
        run(&second, request("Version", ""))
    );
    assert!(
        display(&a).starts_with("attrs 23.2.0 in interpreter "),
        "{a:?}"
    );
    assert!(
        display(&b).starts_with("attrs 26.1.0 in interpreter "),
        "{b:?}"
    );
    assert_ne!(
        display(&a),
        display(&b).replace("26.1.0", "23.2.0"),
        "each release has its own interpreter"
    );
    assert!(
        !display(&a).ends_with(" 0"),
        "not the main interpreter: {a:?}"
    );
    first.unload().await;
    second.unload().await;
}

const CRASHING_RUNNER: &str = r#"
import ctypes
from tilebox.workflows import ExecutionContext, Runner, Task

def in_sub_interpreter():
    import _interpreters
    return _interpreters.get_current()[0] != 0

if in_sub_interpreter():
    ctypes.string_at(0)  # segfaults: this release cannot live in a sub-interpreter

class Hello(Task):
    name: str
    def execute(self, context: ExecutionContext) -> None:
        context.current_task.display = f"Hello {self.name}"

class Crash(Task):
    def execute(self, context: ExecutionContext) -> None:
        ctypes.string_at(0)

runner = Runner(tasks=[Hello, Crash])
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_release_that_crashes_in_a_sub_interpreter_runs_in_a_child_process() {
    // SAFETY (test set-up): set before any child is spawned by this test binary.
    unsafe { std::env::set_var(tilebox::env::PYTHON_HOST, crate::common::tilebox_binary()) };
    let cache = tempfile::tempdir().expect("cache");
    let project = release_dir(&[("app.py", CRASHING_RUNNER)]);
    let loaded = python::load(
        release("crashy", project.path(), None, "app:runner", cache.path()),
        Placement::Auto,
    )
    .await
    .expect("the release loads through the fallback");
    assert_eq!(loaded.isolation(), Isolation::ChildProcess);
    let reason = loaded.fallback_reason.clone().expect("a reason");
    assert!(reason.contains("signal 11"), "{reason}");

    let outcome = run(&loaded, request("Hello", "\"Ada\"")).await;
    assert_eq!(display(&outcome), "Hello Ada");
    // A task that segfaults fails as a workflow error; the next task runs in a new child.
    match run(&loaded, request("Crash", "")).await {
        TaskOutcome::Failed {
            display,
            workflow_error,
            ..
        } => {
            assert!(workflow_error);
            assert!(
                display.starts_with("Crash\nWorkerCrashed(") && display.contains("signal 11"),
                "{display}"
            );
        }
        other => panic!("the crash must fail the task: {other:?}"),
    }
    let outcome = run(&loaded, request("Hello", "\"Grace\"")).await;
    assert_eq!(display(&outcome), "Hello Grace");
    loaded.unload().await;
}

const BATCH_RUNNER: &str = r#"
from tilebox.workflows import ExecutionContext, Runner, Task

class Say(Task):
    text: str
    def execute(self, context: ExecutionContext) -> None:
        context.logger.info(f"saying {self.text}")
        context.current_task.display = self.text

class Exit(Task):
    def execute(self, context: ExecutionContext) -> None:
        raise SystemExit(3)

class Stop(KeyboardInterrupt):
    pass

class Interrupt(Task):
    def execute(self, context: ExecutionContext) -> None:
        raise Stop("stop here")

class Boom(Task):
    def execute(self, context: ExecutionContext) -> None:
        raise ValueError("boom")

class Nap(Task):
    seconds: float
    def execute(self, context: ExecutionContext) -> None:
        import time
        time.sleep(self.seconds)

runner = Runner(tasks=[Say, Exit, Interrupt, Boom, Nap])
"#;

/// The failure of a failed outcome: (workflow error, exception type).
fn failure(outcome: &TaskOutcome) -> Option<(bool, String)> {
    match outcome {
        TaskOutcome::Failed {
            workflow_error,
            error,
            ..
        } => Some((
            *workflow_error,
            error
                .as_ref()
                .map(|error| error.kind.clone())
                .unwrap_or_default(),
        )),
        TaskOutcome::Computed { .. } => None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_gives_every_task_its_own_outcome_and_events_even_after_base_exceptions() {
    // SAFETY (test set-up): set before any child is spawned by this test binary.
    unsafe { std::env::set_var(tilebox::env::PYTHON_HOST, crate::common::tilebox_binary()) };
    let cache = tempfile::tempdir().expect("cache");
    let project = release_dir(&[("app.py", BATCH_RUNNER)]);
    for placement in [Placement::SubInterpreter, Placement::ChildProcess] {
        let loaded = python::load(
            release("batch", project.path(), None, "app:runner", cache.path()),
            placement,
        )
        .await
        .expect("load the release");
        let requests = [
            request("Say", "\"first\""),
            request("Exit", ""),
            request("Say", "\"second\""),
            request("Interrupt", ""),
            request("Boom", ""),
            request("Say", "\"third\""),
        ];
        let ids: Vec<String> = requests.iter().map(|request| request.id.clone()).collect();
        let mut receivers = Vec::new();
        let mut batch = Vec::new();
        for request in requests {
            let (events, received) = tokio::sync::mpsc::unbounded_channel();
            batch.push((request, events));
            receivers.push(received);
        }
        let outcomes: Vec<TaskOutcome> = loaded
            .execute_batch(batch)
            .await
            .into_iter()
            .map(|outcome| outcome.expect("every task of the batch ran"))
            .collect();
        assert_eq!(outcomes.len(), 6, "{placement:?}");
        let said: Vec<&str> = [0, 2, 5].map(|index| display(&outcomes[index])).to_vec();
        assert_eq!(said, ["first", "second", "third"], "{placement:?}");
        // A BaseException raised by a task fails that task only, as its own (workflow)
        // error: a runner fault would re-queue it without counting, forever.
        assert_eq!(failure(&outcomes[1]), Some((true, "SystemExit".into())));
        assert_eq!(failure(&outcomes[3]), Some((true, "Stop".into())));
        assert_eq!(failure(&outcomes[4]), Some((true, "ValueError".into())));
        for (index, (received, id)) in receivers.iter_mut().zip(&ids).enumerate() {
            let mut logged = Vec::new();
            while let Ok(event) = received.try_recv() {
                assert_eq!(event.kind, "log", "{placement:?}");
                let record: Value = serde_json::from_str(&event.payload).expect("a JSON record");
                assert_eq!(record["task_id"], id.as_str(), "{placement:?} task {index}");
                logged.push(record["message"].as_str().unwrap_or_default().to_string());
            }
            let expected = match index {
                0 => vec!["saying first"],
                2 => vec!["saying second"],
                5 => vec!["saying third"],
                _ => vec![],
            };
            assert_eq!(logged, expected, "{placement:?} task {index}");
        }
        loaded.unload().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_child_that_dies_mid_batch_keeps_the_earlier_outcomes_and_hands_back_the_rest() {
    // SAFETY (test set-up): set before any child is spawned by this test binary.
    unsafe { std::env::set_var(tilebox::env::PYTHON_HOST, crate::common::tilebox_binary()) };
    let cache = tempfile::tempdir().expect("cache");
    let project = release_dir(&[("app.py", CRASHING_RUNNER)]);
    let loaded = python::load(
        release("crashy", project.path(), None, "app:runner", cache.path()),
        Placement::ChildProcess,
    )
    .await
    .expect("load the release");
    let requests = [
        request("Hello", "\"Ada\""),
        request("Hello", "\"Bob\""),
        request("Crash", ""),
        request("Hello", "\"Cy\""),
        request("Hello", "\"Di\""),
    ];
    let ids: Vec<String> = requests.iter().map(|request| request.id.clone()).collect();
    let batch = requests
        .into_iter()
        .map(|request| (request, tokio::sync::mpsc::unbounded_channel().0))
        .collect();
    let mut results = loaded.execute_batch(batch).await.into_iter();
    for expected in ["Hello Ada", "Hello Bob"] {
        let outcome = results.next().expect("an outcome").expect("it ran");
        assert_eq!(display(&outcome), expected);
        assert!(failure(&outcome).is_none(), "{outcome:?}");
    }
    let crashed = results.next().expect("an outcome").expect("it ran");
    assert_eq!(failure(&crashed), Some((true, "WorkerCrashed".into())));
    assert!(display(&crashed).contains("signal 11"), "{crashed:?}");
    for id in &ids[3..] {
        match results.next().expect("a result") {
            Err(python::Error::NotRun { task, reason }) => {
                assert_eq!(&task, id);
                assert!(
                    reason.contains(&ids[2]),
                    "names the task that crashed: {reason}"
                );
            }
            other => panic!("a task after the crash must come back not run: {other:?}"),
        }
    }
    assert!(results.next().is_none());
    // The next batch runs in a new child.
    let batch = vec![(
        request("Hello", "\"Grace\""),
        tokio::sync::mpsc::unbounded_channel().0,
    )];
    let outcome = loaded.execute_batch(batch).await.remove(0).expect("it ran");
    assert_eq!(display(&outcome), "Hello Grace");
    loaded.unload().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_abandoned_halfway_does_not_leak_its_outcomes_into_the_next_call() {
    // SAFETY (test set-up): set before any child is spawned by this test binary.
    unsafe { std::env::set_var(tilebox::env::PYTHON_HOST, crate::common::tilebox_binary()) };
    let cache = tempfile::tempdir().expect("cache");
    let project = release_dir(&[("app.py", BATCH_RUNNER)]);
    for placement in [Placement::SubInterpreter, Placement::ChildProcess] {
        let loaded = python::load(
            release("batch", project.path(), None, "app:runner", cache.path()),
            placement,
        )
        .await
        .expect("load the release");
        let (events, _received) = tokio::sync::mpsc::unbounded_channel();
        let abandoned = loaded.execute_batch(vec![
            (request("Nap", "0.5"), events.clone()),
            (request("Say", "\"abandoned\""), events.clone()),
        ]);
        // The caller gives up while the first task still runs.
        let given_up = tokio::time::timeout(std::time::Duration::from_millis(50), abandoned).await;
        assert!(
            given_up.is_err(),
            "{placement:?}: the nap outlasts the timeout"
        );
        let outcome = run(&loaded, request("Say", "\"next\"")).await;
        assert_eq!(display(&outcome), "next", "{placement:?}");
        loaded.unload().await;
    }
}

fn task_run(project: &Path, args: &[&str]) -> (std::process::Output, Value) {
    let output = crate::common::tilebox_command(&["task", "run", "--json", "--cache-dir"])
        .arg(project.join(".tilebox-cache"))
        .arg("--project")
        .arg(project)
        .args(args)
        .output()
        .expect("tilebox task run");
    let document = serde_json::from_slice(&output.stdout).unwrap_or_else(|error| {
        panic!(
            "task run printed no JSON ({error}):\nstdout: {}\nstderr: {}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        )
    });
    (output, document)
}

#[test]
fn a_release_using_numpy_runs_through_the_child_process_fallback() {
    let project = release_dir(&[
        (
            "pyproject.toml",
            "[project]\nname = \"numeric\"\nversion = \"0.1.0\"\nrequires-python = \">=3.13\"\ndependencies = [\"numpy\"]\n",
        ),
        (
            "tilebox.workflow.toml",
            "[workflow]\nslug = \"numeric\"\nrunner = \"numeric_app:runner\"\n\n[build]\ninclude = [\"numeric_app.py\"]\n",
        ),
        (
            "numeric_app.py",
            "import numpy as np\nfrom tilebox.workflows import ExecutionContext, Runner, Task\n\n\
             class Sum(Task):\n    n: int\n    def execute(self, context: ExecutionContext) -> None:\n        \
             context.current_task.display = f\"sum {int(np.arange(self.n).sum())}\"\n\nrunner = Runner(tasks=[Sum])\n",
        ),
    ]);
    let (output, document) = task_run(project.path(), &["Sum", "--input", "10"]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    // The isolation shows only in the `loaded ...` line `task run` prints to stderr.
    assert!(
        stderr.contains("in a child process"),
        "numpy refuses sub-interpreters: {stderr}"
    );
    assert_eq!(document["tasks"][0]["display"], "sum 45");
    assert_eq!(document["tasks"][0]["state"], "computed");
}

#[test]
fn task_run_recursive_runs_the_parallel_sleep_workflow_in_process() {
    let project = crate::common::example("parallel-sleep");
    let (output, document) = task_run(
        project.path(),
        &[
            "ParallelSleepWorkflow",
            "--input",
            r#"{"count": 20, "seconds": 0.01}"#,
            "--recursive",
        ],
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    // The isolation shows only in the `loaded ...` line `task run` prints to stderr.
    assert!(
        stderr.contains("in a sub-interpreter"),
        "a pure-Python release runs in a sub-interpreter: {stderr}"
    );
    let tasks = document["tasks"].as_array().expect("tasks");
    assert_eq!(tasks.len(), 21, "the root and its 20 sleep subtasks");
    assert!(
        tasks.iter().all(|task| task["state"] == "computed"),
        "{document}"
    );
    assert_eq!(tasks[0]["subtasks"].as_array().expect("subtasks").len(), 20);
    for (index, task) in tasks[1..].iter().enumerate() {
        assert_eq!(task["display"], format!("SleepTask({index})"));
        let messages: Vec<&str> = task["logs"]
            .as_array()
            .expect("logs")
            .iter()
            .filter_map(|log| log["message"].as_str())
            .collect();
        assert_eq!(
            messages,
            ["Starting sleep task", "Finished sleep task"],
            "task {index}"
        );
        assert_eq!(task["logs"][0]["fields"]["index"], index);
    }
}

#[test]
fn task_run_reports_a_failing_task_with_its_traceback_and_exit_code_1() {
    let project = release_dir(&[(
        "app.py",
        "from tilebox.workflows import ExecutionContext, Runner, Task\n\n\
         class Boom(Task):\n    def execute(self, context: ExecutionContext) -> None:\n        raise ValueError('kaboom')\n\n\
         runner = Runner(tasks=[Boom])\n",
    )]);
    let output = crate::common::tilebox_command(&[
        "task",
        "run",
        "Boom",
        "--runner",
        "app:runner",
        "--cache-dir",
    ])
    .arg(project.path().join(".cache"))
    .arg("--project")
    .arg(project.path())
    .output()
    .expect("tilebox task run");
    assert_eq!(output.status.code(), Some(1));
    // The summary on stdout, not a snapshot: its traceback runs through the SDK runtime's
    // frames, whose paths and line numbers change with the runtime.
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.contains("Boom  failed"), "{stdout}");
    assert!(
        stdout.contains("ValueError: kaboom") && stdout.contains("Traceback"),
        "{stdout}"
    );
}
