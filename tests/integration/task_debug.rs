//! Debugging in-process with `tilebox task run`: a failed task of a real job replayed
//! locally (`--from-job`) without touching the server, the post-mortem debugger (`--pdb`)
//! and `breakpoint()` driven through a pseudo-terminal, and `--input` given as an object of
//! the task's fields.

use std::path::Path;
use std::process::Output;
use std::time::Duration;

use serde_json::Value;

use crate::common::pty::{Step, run_in_pty};
use crate::common::{
    RunnerProcess, TestServer, job_document, json_of, project, project_runner, stderr_of, submit,
    tilebox_binary, tilebox_command, wait_for_job_state, wait_until,
};

/// `Root(n)` submits `Scene(name, size)` for sizes 0..n; a scene of size 2 or more fails.
const SCENES: &str = r#"from tilebox.workflows import ExecutionContext, Runner, Task

class Scene(Task):
    name: str
    size: int

    def execute(self, context: ExecutionContext) -> None:
        limit = 2
        if self.size >= limit:
            raise ValueError(f"scene {self.name} too large: {self.size} >= {limit}")
        context.current_task.display = f"scene {self.name} ok"

class Root(Task):
    n: int

    def execute(self, context: ExecutionContext) -> None:
        for size in range(self.n):
            context.submit_subtask(Scene(name=f"s{size}", size=size))

runner = Runner(tasks=[Root, Scene])
"#;

const TIMEOUT: Duration = Duration::from_secs(120);

/// `tilebox task run --project DIR --cache-dir DIR/.tilebox-cache ARGS` against `server`.
fn task_run(server: Option<&TestServer>, project: &Path, args: &[&str]) -> Output {
    let mut command = tilebox_command(&["task", "run", "--project"]);
    command
        .arg(project)
        .arg("--cache-dir")
        .arg(project.join(".tilebox-cache"))
        .args(args);
    if let Some(server) = server {
        command.env("TILEBOX_API_URL", server.url());
    }
    command.output().expect("tilebox task run")
}

/// `tilebox task run ARGS --isolation ISOLATION` in `project` (its cache inside it) at a
/// pseudo-terminal through `steps`; answers the driver's output and the transcript.
fn task_run_in_pty(
    project: &Path,
    args: &[&str],
    isolation: &str,
    steps: &[Step<'_>],
) -> (Output, String) {
    let cache = project.join(".tilebox-cache");
    let mut arguments = vec!["task", "run"];
    arguments.extend_from_slice(args);
    arguments.extend([
        "--isolation",
        isolation,
        "--cache-dir",
        cache.to_str().expect("utf-8 path"),
    ]);
    let output = run_in_pty(tilebox_binary(), &arguments, project, steps, TIMEOUT);
    let transcript = String::from_utf8_lossy(&output.stdout).into_owned();
    (output, transcript)
}

/// The tasks of a `job get --json` document, by display.
fn task_ids(job: &Value) -> Vec<(String, String, String)> {
    fn walk(tasks: &Value, into: &mut Vec<(String, String, String)>) {
        for task in tasks.as_array().into_iter().flatten() {
            into.push((
                task["display"].as_str().unwrap_or_default().to_string(),
                task["id"].as_str().unwrap_or_default().to_string(),
                task["state"].as_str().unwrap_or_default().to_string(),
            ));
            walk(&task["children"], into);
        }
    }
    let mut tasks = Vec::new();
    walk(&job["tasks"], &mut tasks);
    tasks
}

#[test]
fn from_job_reproduces_a_failed_tasks_exception_and_leaves_the_job_unchanged() {
    let server = TestServer::start();
    let project = project("scenes", SCENES);
    let log = project.path().join("runner.log");
    let mut runner =
        RunnerProcess::spawn(&mut project_runner(server.url(), project.path(), &[]), log);
    let failed = submit(&server, "Root", "4");
    let completed = submit(&server, "Root", "2");
    wait_for_job_state(&server, &failed, "failed", TIMEOUT);
    wait_for_job_state(&server, &completed, "completed", TIMEOUT);
    // A scene claimed before the job failed still reports after it.
    wait_until("the failed job's running tasks to end", TIMEOUT, || {
        task_ids(&job_document(&server, &failed))
            .iter()
            .all(|(_, _, state)| state != "running")
    })
    .unwrap_or_else(|timed_out| panic!("{timed_out}\n{}", runner.log()));
    let failed_job = job_document(&server, &failed);
    // Nothing may change the job from here on but `task run`.
    runner.kill();
    let before = job_document(&server, &failed);
    assert_eq!(
        before, failed_job,
        "the job was settled before the runner stopped"
    );

    // The first failed task in tree order: scene s2 (s3 fails too, after it).
    let output = task_run(
        Some(&server),
        project.path(),
        &["--json", "--from-job", &failed],
    );
    assert_eq!(output.status.code(), Some(1), "{}", stderr_of(&output));
    let document: Value = serde_json::from_slice(&output.stdout).expect("one JSON document");
    let tasks = document["tasks"].as_array().expect("tasks");
    assert_eq!(tasks.len(), 1, "{document:#}");
    assert_eq!(tasks[0]["identifier"]["name"], "Scene");
    assert_eq!(tasks[0]["input"], r#"{"name":"s2","size":2}"#);
    assert_eq!(tasks[0]["error"]["type"], "ValueError");
    assert_eq!(tasks[0]["error"]["message"], "scene s2 too large: 2 >= 2");
    // The same exception text as on the server (the display the runner reported).
    let on_server = task_ids(&before)
        .into_iter()
        .find(|(_, _, state)| state == "failed")
        .expect("a failed task on the server");
    assert!(
        on_server
            .0
            .ends_with("ValueError('scene s2 too large: 2 >= 2')"),
        "{on_server:?}"
    );
    assert_eq!(
        tasks[0]["display"], on_server.0,
        "the local failure is displayed as the server's"
    );

    // --task: the root, with its subtasks submitted and run locally.
    let root = task_ids(&before)
        .into_iter()
        .find(|(display, _, _)| display == "Root")
        .expect("the root task")
        .1;
    let output = task_run(
        Some(&server),
        project.path(),
        &[
            "--json",
            "--from-job",
            &failed,
            "--task",
            &root,
            "--recursive",
        ],
    );
    assert_eq!(output.status.code(), Some(1), "{}", stderr_of(&output));
    let document: Value = serde_json::from_slice(&output.stdout).expect("one JSON document");
    let states: Vec<(&str, &str)> = document["tasks"]
        .as_array()
        .expect("tasks")
        .iter()
        .map(|task| {
            (
                task["display"].as_str().unwrap_or_default(),
                task["state"].as_str().unwrap_or_default(),
            )
        })
        .collect();
    assert_eq!(
        states,
        [
            ("Root", "computed"),
            ("scene s0 ok", "computed"),
            ("scene s1 ok", "computed"),
            ("Scene\nValueError('scene s2 too large: 2 >= 2')", "failed"),
        ]
    );

    // Clear errors: a task of another job, a job without failures, an unregistered task.
    let stranger = uuid::Uuid::now_v7().to_string();
    let output = task_run(
        Some(&server),
        project.path(),
        &["--from-job", &failed, "--task", &stranger],
    );
    assert_eq!(output.status.code(), Some(1));
    assert!(
        stderr_of(&output).contains(&format!("task {stranger} is not a task of job {failed}")),
        "{}",
        stderr_of(&output)
    );
    let output = task_run(Some(&server), project.path(), &["--from-job", &completed]);
    assert_eq!(output.status.code(), Some(1));
    assert!(
        stderr_of(&output).contains(&format!(
            "job {completed} has no failed task (its 3 tasks are 3 computed)"
        )),
        "{}",
        stderr_of(&output)
    );
    fs_err::write(
        project.path().join("other.py"),
        "from tilebox.workflows import Runner\nfrom app import Root\n\nrunner = Runner(tasks=[Root])\n",
    )
    .expect("write other.py");
    let output = task_run(
        Some(&server),
        project.path(),
        &["--from-job", &failed, "--runner", "other:runner"],
    );
    assert_eq!(output.status.code(), Some(1));
    assert!(
        stderr_of(&output).contains(
            "is Scene@v0.0, which the local project does not register (it registers Root@v0.0)"
        ),
        "{}",
        stderr_of(&output)
    );

    // Read-only: the job and every task are as they were.
    assert_eq!(job_document(&server, &failed), before);
    server.stop();
}

#[test]
fn pdb_stops_at_the_failing_frame_in_a_terminal_and_exits_1() {
    let project = project(
        "pdb",
        "from tilebox.workflows import ExecutionContext, Runner, Task\n\n\
         class Sum(Task):\n    n: int\n\n    def execute(self, context: ExecutionContext) -> None:\n        \
         total = self.n * 2\n        raise ValueError(f'bad total {total}')\n\n\
         runner = Runner(tasks=[Sum])\n",
    );
    for isolation in ["sub-interpreter", "child-process"] {
        let (output, transcript) = task_run_in_pty(
            project.path(),
            &["Sum", "--input", r#"{"n": 21}"#, "--pdb"],
            isolation,
            &[
                Step::Expect("(Pdb) "),
                Step::Send("p total\n"),
                Step::Expect("42"),
                Step::Expect("(Pdb) "),
                Step::Send("q\n"),
            ],
        );
        assert_eq!(
            output.status.code(),
            Some(1),
            "{isolation}: {transcript}\n{}",
            stderr_of(&output)
        );
        // The debugger starts at the task's own frame, not the runtime's.
        assert!(
            transcript.contains("app.py(8)execute()")
                && transcript.contains("raise ValueError(f'bad total {total}')"),
            "{isolation}: {transcript}"
        );
        assert!(
            transcript.contains(match isolation {
                "sub-interpreter" => "in a sub-interpreter",
                _ => "in a child process",
            }),
            "{isolation}: {transcript}"
        );
        // After the debugger, the task's error as usual (the report after the last prompt,
        // not the banner before the debugger).
        let report = after_last_prompt(&transcript);
        assert!(
            report.contains("Sum  failed  Sum@v0.0") && report.contains("ValueError: bad total 42"),
            "{isolation}: {report}"
        );
    }
}

/// What the terminal showed after the debugger's last prompt (`(Pdb) `).
fn after_last_prompt(transcript: &str) -> &str {
    let (_, after) = transcript
        .rsplit_once("(Pdb) ")
        .unwrap_or_else(|| panic!("no debugger prompt in: {transcript}"));
    after
}

#[test]
fn quit_at_a_breakpoint_stops_the_run_without_post_mortem() {
    let project = project(
        "quit",
        "from tilebox.workflows import ExecutionContext, Runner, Task\n\n\
         class Leaf(Task):\n    n: int\n\n    def execute(self, context: ExecutionContext) -> None:\n        \
         context.current_task.display = f'leaf {self.n}'\n\n\
         class Stop(Task):\n    n: int\n\n    def execute(self, context: ExecutionContext) -> None:\n        \
         context.submit_subtask(Leaf(1))\n        breakpoint()\n        context.submit_subtask(Leaf(2))\n\n\
         class Root(Task):\n    def execute(self, context: ExecutionContext) -> None:\n        \
         context.submit_subtask(Stop(1), optional=True)\n        context.submit_subtask(Leaf(3))\n\n\
         runner = Runner(tasks=[Root, Stop, Leaf])\n",
    );
    for isolation in ["sub-interpreter", "child-process"] {
        let (output, transcript) = task_run_in_pty(
            project.path(),
            &["Root", "--recursive", "--pdb"],
            isolation,
            &[Step::Expect("(Pdb) "), Step::Send("q\n")],
        );
        // Quitting is not a success: exit 1, as for a failed task.
        assert_eq!(
            output.status.code(),
            Some(1),
            "{isolation}: {transcript}\n{}",
            stderr_of(&output)
        );
        // One debugger only: no post-mortem after `q`, and the report says what happened.
        assert_eq!(
            transcript.matches("(Pdb) ").count(),
            1,
            "{isolation}: {transcript}"
        );
        let report = after_last_prompt(&transcript);
        assert!(
            !report.contains("post-mortem") && !report.contains("BdbQuit"),
            "{isolation}: {report}"
        );
        assert!(
            report.contains("Stop  failed  Stop@v0.0")
                && report.contains("quit in the debugger: the run stopped here"),
            "{isolation}: {report}"
        );
        // The run stopped there, although Stop is optional: Root's other subtask never ran.
        assert!(!report.contains("leaf 3"), "{isolation}: {report}");
    }
}

#[test]
fn breakpoint_stops_task_run_in_a_terminal() {
    let project = project(
        "breakpoint",
        "from tilebox.workflows import ExecutionContext, Runner, Task\n\n\
         class Stop(Task):\n    n: int\n\n    def execute(self, context: ExecutionContext) -> None:\n        \
         secret = self.n + 100\n        breakpoint()\n        context.current_task.display = f'after {secret}'\n\n\
         runner = Runner(tasks=[Stop])\n",
    );
    for isolation in ["sub-interpreter", "child-process"] {
        let (output, transcript) = task_run_in_pty(
            project.path(),
            &["Stop", "--input", "5"],
            isolation,
            &[
                Step::Expect("(Pdb) "),
                Step::Send("p secret\n"),
                Step::Expect("105"),
                Step::Expect("(Pdb) "),
                Step::Send("secret = 7\n"),
                Step::Expect("(Pdb) "),
                Step::Send("c\n"),
            ],
        );
        assert_eq!(
            output.status.code(),
            Some(0),
            "{isolation}: {transcript}\n{}",
            stderr_of(&output)
        );
        // The value set in the debugger is the one the task goes on with.
        assert!(
            transcript.contains("after 7  computed  Stop@v0.0"),
            "{isolation}: {transcript}"
        );
    }
}

#[test]
fn input_takes_an_object_of_the_tasks_fields() {
    let project = project(
        "fields",
        "from tilebox.workflows import ExecutionContext, Runner, Task\n\n\
         class One(Task):\n    x: int\n\n    def execute(self, context: ExecutionContext) -> None:\n        \
         context.current_task.display = f'one {self.x!r}'\n\n\
         class Two(Task):\n    a: int\n    b: str = 'dflt'\n\n    def execute(self, context: ExecutionContext) -> None:\n        \
         context.current_task.display = f'two {self.a!r} {self.b!r}'\n\n\
         from dataclasses import dataclass\n\n\
         @dataclass\nclass Opts:\n    limit: int = 10\n    verbose: bool = False\n\n\
         class Scan(Task):\n    options: Opts\n\n    def execute(self, context: ExecutionContext) -> None:\n        \
         context.current_task.display = f'scan {self.options.limit}'\n\n\
         runner = Runner(tasks=[One, Two, Scan])\n",
    );
    let run = |args: &[&str]| -> Value { json_of(&task_run(None, project.path(), args)) };
    // A one-field task: the object of its fields, and its wire form, both encode as `1`.
    for input in [r#"{"x": 1}"#, "1"] {
        let document = run(&["--json", "One", "--input", input]);
        assert_eq!(document["tasks"][0]["display"], "one 1", "{input}");
        assert_eq!(document["tasks"][0]["input"], "1", "{input}");
    }
    // A multi-field task: fields in any order, defaults filled, encoded in field order.
    let document = run(&["--json", "Two", "--input", r#"{"b": "q", "a": 2}"#]);
    assert_eq!(document["tasks"][0]["display"], "two 2 'q'");
    assert_eq!(document["tasks"][0]["input"], r#"{"a":2,"b":"q"}"#);
    let document = run(&["--json", "Two", "--input", r#"{"a": 3}"#]);
    assert_eq!(document["tasks"][0]["input"], r#"{"a":3,"b":"dflt"}"#);
    // Nested dataclasses are built with their defaults, as the SDK submits `Scan(Opts())`.
    for input in [r#"{"options": {}}"#, "{}"] {
        let document = run(&["--json", "Scan", "--input", input]);
        assert_eq!(document["tasks"][0]["display"], "scan 10", "{input}");
        assert_eq!(
            document["tasks"][0]["input"], r#"{"limit":10,"verbose":false}"#,
            "{input}"
        );
    }
    // A wrong field names the task, the field and the expected fields; nothing runs.
    for (task, input, message) in [
        (
            "One",
            r#"{"y": 1}"#,
            "error: invalid --input for One@v0.0: task One has no field 'y'; expected fields: x",
        ),
        (
            "Two",
            r#"{"a": 1, "c": 2}"#,
            "error: invalid --input for Two@v0.0: task Two has no field 'c'; expected fields: a, b",
        ),
        (
            "Two",
            r#"{"b": "x"}"#,
            "error: invalid --input for Two@v0.0: task Two needs field 'a'; expected fields: a, b",
        ),
        // Typos inside a dataclass, or of a one-field task's only field, never run with defaults.
        (
            "Scan",
            r#"{"options": {"limt": 99}}"#,
            "error: invalid --input for Scan@v0.0: task Scan has no field 'options.limt'; expected fields of options (Opts): limit, verbose",
        ),
        (
            "Scan",
            r#"{"option": {"limit": 99}}"#,
            "error: invalid --input for Scan@v0.0: task Scan has no field 'option'; expected fields: options",
        ),
    ] {
        let output = task_run(None, project.path(), &["--json", task, "--input", input]);
        assert_eq!(output.status.code(), Some(1), "{input}");
        assert!(output.stdout.is_empty(), "{input}: nothing ran");
        assert!(
            stderr_of(&output).contains(message),
            "{input}: {}",
            stderr_of(&output)
        );
    }
}

#[test]
fn child_process_output_follows_redirection_when_stdin_is_no_terminal() {
    let project = project(
        "prints",
        "from tilebox.workflows import ExecutionContext, Runner, Task\n\n\
         class Hello(Task):\n    def execute(self, context: ExecutionContext) -> None:\n        \
         print('hello from the task', flush=True)\n\n\
         runner = Runner(tasks=[Hello])\n",
    );
    let cache = project.path().join(".tilebox-cache");
    // On a terminal (the pty is the controlling one, /dev/tty), but with stdin and both output
    // streams redirected: the task's print must land in the redirected stderr, not on /dev/tty.
    let script = format!(
        "exec '{}' task run Hello --isolation child-process --cache-dir '{}' </dev/null >out.txt 2>err.txt",
        tilebox_binary().display(),
        cache.display()
    );
    let output = run_in_pty(
        Path::new("/bin/sh"),
        &["-c", &script],
        project.path(),
        &[],
        TIMEOUT,
    );
    let transcript = String::from_utf8_lossy(&output.stdout);
    let err = fs_err::read_to_string(project.path().join("err.txt")).expect("err.txt");
    let out = fs_err::read_to_string(project.path().join("out.txt")).expect("out.txt");
    assert_eq!(output.status.code(), Some(0), "{transcript}\n{err}");
    assert!(
        !transcript.contains("hello from the task"),
        "the task wrote to the terminal: {transcript}"
    );
    assert!(err.contains("hello from the task\n"), "stderr: {err}");
    assert!(out.contains("Hello  computed  Hello@v0.0"), "stdout: {out}");
}

#[test]
fn empty_and_broken_inputs() {
    let project = project(
        "empty",
        "from tilebox.workflows import ExecutionContext, Runner, Task\n\n\
         class Nothing(Task):\n    def execute(self, context: ExecutionContext) -> None:\n        \
         context.current_task.display = 'nothing ran'\n\n\
         class Name(Task):\n    name: str\n\n    def execute(self, context: ExecutionContext) -> None:\n        \
         context.current_task.display = f'name {self.name!r}'\n\n\
         runner = Runner(tasks=[Nothing, Name])\n",
    );
    // A task without fields takes empty input, as without --input.
    for input in ["", "{}"] {
        let document = json_of(&task_run(
            None,
            project.path(),
            &["--json", "Nothing", "--input", input],
        ));
        assert_eq!(document["tasks"][0]["display"], "nothing ran", "{input:?}");
        assert_eq!(document["tasks"][0]["input"], "", "{input:?}");
    }
    // Text that is not JSON is a string; a broken object is refused, with the position.
    let document = json_of(&task_run(
        None,
        project.path(),
        &["--json", "Name", "--input", "Bob"],
    ));
    assert_eq!(document["tasks"][0]["display"], "name 'Bob'");
    let output = task_run(
        None,
        project.path(),
        &["--json", "Name", "--input", r#"{"name": "Bob""#],
    );
    assert_eq!(output.status.code(), Some(1), "{}", stderr_of(&output));
    assert!(output.stdout.is_empty(), "nothing ran");
    assert!(
        stderr_of(&output).contains(
            "error: --input is not valid JSON: EOF while parsing an object at line 1 column 14"
        ),
        "{}",
        stderr_of(&output)
    );
    // `job submit --input` reads text the same way.
    let output = tilebox_command(&[
        "job", "submit", "--name", "x", "--task", "Name", "--input", "[1,",
    ])
    .env("TILEBOX_API_URL", "http://127.0.0.1:9")
    .output()
    .expect("tilebox job submit");
    assert_eq!(output.status.code(), Some(1), "{}", stderr_of(&output));
    assert!(
        stderr_of(&output).contains(
            "error: --input is not valid JSON: EOF while parsing a value at line 1 column 3"
        ),
        "{}",
        stderr_of(&output)
    );
}

/// `Root(must)` submits an optional `Maybe` that fails, then with `must` a `Must` (after
/// it) that fails the job.
const OPTIONAL_FIRST: &str = r#"from tilebox.workflows import ExecutionContext, Runner, Task

class Maybe(Task):
    def execute(self, context: ExecutionContext) -> None:
        raise ValueError(f"optional failed in job {context.current_task.job.id}")

class Must(Task):
    n: int

    def execute(self, context: ExecutionContext) -> None:
        raise ValueError(f"must failed in job {context.current_task.job.id}")

class Root(Task):
    must: bool

    def execute(self, context: ExecutionContext) -> None:
        maybe = context.submit_subtask(Maybe(), optional=True)
        if self.must:
            context.submit_subtask(Must(1), depends_on=[maybe])

runner = Runner(tasks=[Root, Maybe, Must])
"#;

#[test]
fn from_job_runs_the_task_that_failed_the_job_under_its_id() {
    let server = TestServer::start();
    let project = project("optional", OPTIONAL_FIRST);
    let log = project.path().join("runner.log");
    let mut runner =
        RunnerProcess::spawn(&mut project_runner(server.url(), project.path(), &[]), log);
    let failed = submit(&server, "Root", "true");
    let completed = submit(&server, "Root", "false");
    let failed_document = wait_for_job_state(&server, &failed, "failed", TIMEOUT);
    let completed_document = wait_for_job_state(&server, &completed, "completed", TIMEOUT);
    runner.kill();
    let states = |document: &Value| -> Vec<String> {
        task_ids(document)
            .into_iter()
            .map(|(display, _, state)| {
                format!("{} {state}", display.lines().next().unwrap_or_default())
            })
            .collect()
    };
    assert_eq!(
        states(&failed_document),
        ["Root computed", "Maybe failed_optional", "Must failed"]
    );
    assert_eq!(
        states(&completed_document),
        ["Root computed", "Maybe failed_optional"]
    );

    // The task that failed the job, run under the job's own id (the cache group its parent
    // wrote to), not a fresh one; and in a job that completed, its optional failure.
    for (job, task, message) in [
        (&failed, "Must", "must failed"),
        (&completed, "Maybe", "optional failed"),
    ] {
        let output = task_run(
            Some(&server),
            project.path(),
            &["--json", "--from-job", job],
        );
        assert_eq!(output.status.code(), Some(1), "{}", stderr_of(&output));
        let document: Value = serde_json::from_slice(&output.stdout).expect("one JSON document");
        assert_eq!(
            document["tasks"][0]["identifier"]["name"], task,
            "{document:#}"
        );
        assert_eq!(
            document["tasks"][0]["error"]["message"],
            format!("{message} in job {job}")
        );
    }
    server.stop();
}
