//! Progress on long work: bars on a terminal (driven through a pseudo-terminal) for
//! `job submit --wait` and `workflow publish-release`; nothing when the output is piped or
//! `--json`; and the release runner's one log line per preparation step.

use std::path::Path;
use std::time::Duration;

use crate::common::pty::run_on_terminal;
use crate::common::{
    RunnerProcess, TestServer, json_of, project, project_runner, stderr_of, tilebox_command,
    wait_until,
};

/// A job of a `Scan` root that announces 3 scenes and submits one `Scene` subtask per scene,
/// each marking one scene done: 4 tasks, and the labelled indicator `scenes` at 3/3.
const SCENES: &str = r#"from tilebox.workflows import ExecutionContext, Runner, Task


class Scene(Task):
    def execute(self, context: ExecutionContext) -> None:
        context.progress("scenes").done(1)


class Scan(Task):
    def execute(self, context: ExecutionContext) -> None:
        context.progress("scenes").add(3)
        context.submit_subtasks([Scene() for _ in range(3)])


runner = Runner(tasks=[Scan, Scene])
"#;

const TIMEOUT: Duration = Duration::from_secs(120);

/// Asserts that `text` has nothing our bars and spinners draw: no escape code, no 30-wide bar,
/// no step summary.
fn assert_no_progress(what: &str, text: &str) {
    assert!(!text.contains('\x1b'), "{what} has escape codes:\n{text:?}");
    let bar = regex::Regex::new(r"\[[=> ]{30}\]").expect("a valid regex");
    assert!(!bar.is_match(text), "{what} has a bar:\n{text}");
    for step in ["done select", "done upload"] {
        assert!(!text.contains(step), "{what} shows `{step}`:\n{text}");
    }
}

/// A direct-mode runner of `project` against `server`.
fn start_runner(server: &TestServer, project: &Path) -> RunnerProcess {
    RunnerProcess::spawn(
        &mut project_runner(server.url(), project, &[]),
        project.join("runner.log"),
    )
}

fn submit_and_wait(json: bool) -> Vec<&'static str> {
    let mut args = vec![
        "job", "submit", "--name", "scan", "--task", "Scan", "--wait",
    ];
    if json {
        args.insert(0, "--json");
    }
    args
}

#[test]
fn job_submit_wait_on_a_terminal_shows_tasks_and_labelled_progress() {
    let server = TestServer::start();
    let project = project("scenes", SCENES);
    let _runner = start_runner(&server, project.path());
    let mut command = tilebox_command(&submit_and_wait(false));
    command.env("TILEBOX_API_URL", server.url());
    let run = run_on_terminal(&command, b"", TIMEOUT);
    assert_eq!(run.code, Some(0), "{}", run.transcript);
    let transcript = &run.transcript;
    let lines = run.screen_lines();
    // The last drawing of each bar: every task done, every scene done.
    let bar_line = |label: &str, counts: &str| {
        let full = format!("[{}] {counts}", "=".repeat(30));
        lines
            .iter()
            .any(|line| line.starts_with(label) && line.trim_end().ends_with(&full))
    };
    assert!(
        bar_line("tasks", "4/4"),
        "no tasks bar at 4/4:\n{transcript}"
    );
    assert!(
        bar_line("scenes", "3/3"),
        "no scenes bar at 3/3:\n{transcript}"
    );
    assert!(
        transcript.contains("completed"),
        "the final state line is printed:\n{transcript}"
    );
}

#[test]
fn job_submit_wait_piped_or_json_prints_no_progress() {
    let server = TestServer::start();
    let project = project("scenes", SCENES);
    let _runner = start_runner(&server, project.path());

    let piped = server.tilebox(&submit_and_wait(false));
    assert!(piped.status.success(), "{}", stderr_of(&piped));
    assert_no_progress("piped stderr", &stderr_of(&piped));
    let stdout = String::from_utf8_lossy(&piped.stdout).into_owned();
    assert_no_progress("piped stdout", &stdout);
    assert!(stdout.contains("completed"), "{stdout}");

    let json = server.tilebox(&submit_and_wait(true));
    let document = json_of(&json);
    assert_eq!(document["state"], "completed");
    assert_eq!(document["progress"][0]["done"], 3);
    assert_eq!(stderr_of(&json), "", "--json writes nothing to stderr");

    // --json on a terminal: still no progress, and the terminal shows one JSON document.
    let mut command = tilebox_command(&submit_and_wait(true));
    command.env("TILEBOX_API_URL", server.url());
    let run = run_on_terminal(&command, b"", TIMEOUT);
    assert_eq!(run.code, Some(0), "{}", run.transcript);
    assert_no_progress("--json on a terminal", &run.transcript);
    let document: serde_json::Value = serde_json::from_str(&run.transcript.replace("\r\n", "\n"))
        .unwrap_or_else(|error| panic!("not one JSON document ({error}):\n{}", run.transcript));
    assert_eq!(document["state"], "completed");
}

const HELLO: &str = "from tilebox.workflows import ExecutionContext, Runner, Task\n\n\
class Hello(Task):\n    def execute(self, context: ExecutionContext) -> None:\n        pass\n\nrunner = Runner(tasks=[Hello])\n";

/// `tilebox workflow publish-release` (with `--json` first if `json`) in `project`, with its
/// caches inside it.
fn publish_command(server: &TestServer, project: &Path, json: bool) -> std::process::Command {
    let mut args = vec!["workflow", "publish-release"];
    if json {
        args.insert(0, "--json");
    }
    let mut command = tilebox_command(&args);
    command
        .current_dir(project)
        .env("TILEBOX_API_URL", server.url())
        .env("XDG_CACHE_HOME", project.join(".cache-home"));
    command
}

#[test]
fn publish_release_on_a_terminal_shows_each_step_and_the_upload() {
    let server = TestServer::start();
    let project = project("greeter", HELLO);
    assert!(
        server
            .tilebox(&["workflow", "create", "Greeter"])
            .status
            .success()
    );
    let run = run_on_terminal(
        &publish_command(&server, project.path(), false),
        b"",
        TIMEOUT,
    );
    assert_eq!(run.code, Some(0), "{}", run.transcript);
    let transcript = &run.transcript;
    // Each step's summary line stays: the files, the steps of validation, the bytes sent.
    for line in [
        "done select      1 files in ",
        "done archive     1 files in ",
        "done unpack      in ",
        "done load        in ",
    ] {
        assert!(transcript.contains(line), "no `{line}`:\n{transcript}");
    }
    let upload = transcript
        .lines()
        .find(|line| line.contains("done upload"))
        .unwrap_or_else(|| panic!("no upload step:\n{transcript}"));
    assert!(
        upload.contains(" B in ") || upload.contains(" KiB in "),
        "the upload line shows its bytes: {upload}"
    );
    assert!(transcript.contains("Published release"), "{transcript}");
}

#[test]
fn publish_release_piped_or_json_prints_no_progress() {
    let server = TestServer::start();
    let project = project("greeter", HELLO);
    assert!(
        server
            .tilebox(&["workflow", "create", "Greeter"])
            .status
            .success()
    );
    let piped = publish_command(&server, project.path(), false)
        .output()
        .expect("run tilebox");
    assert!(piped.status.success(), "{}", stderr_of(&piped));
    assert_eq!(stderr_of(&piped), "", "piped: nothing on stderr");
    assert_no_progress("piped stdout", &String::from_utf8_lossy(&piped.stdout));

    // A new release, so this one uploads too.
    fs_err::write(
        project.path().join("app.py"),
        HELLO.replace("pass", "context.current_task.display = 'v2'"),
    )
    .expect("edit app.py");
    let json = publish_command(&server, project.path(), true)
        .output()
        .expect("run tilebox");
    let document = json_of(&json);
    assert_eq!(document["workflow_slug"], "greeter");
    assert_eq!(stderr_of(&json), "", "--json: nothing on stderr");
}

/// A server with the greeter project published and deployed to its default cluster.
fn deployed_greeter() -> (TestServer, tempfile::TempDir) {
    let server = TestServer::start();
    let project = project("greeter", HELLO);
    assert!(
        server
            .tilebox(&["workflow", "create", "Greeter"])
            .status
            .success()
    );
    json_of(&server.tilebox_in(project.path(), &["--json", "workflow", "publish-release"]));
    json_of(&server.tilebox_in(
        project.path(),
        &["--json", "workflow", "deploy-release", "--latest"],
    ));
    (server, project)
}

#[test]
fn the_release_runner_logs_each_preparation_step_with_its_duration() {
    let (server, project) = deployed_greeter();
    let cache = tempfile::tempdir().expect("cache");
    let runner = RunnerProcess::spawn(
        tilebox_command(&["runner", "start", "--cache-dir"])
            .arg(cache.path())
            .env("TILEBOX_API_URL", server.url()),
        cache.path().join("runner.log"),
    );
    wait_until("the runner to load the release", TIMEOUT, || {
        runner.log().contains("loaded release")
    })
    .unwrap_or_else(|timed_out| panic!("{timed_out}\n{}", runner.log()));
    let log = runner.log();
    let steps: Vec<&str> = log
        .lines()
        .filter(|line| line.contains("release step done") && line.contains("release=greeter@"))
        .collect();
    let names: Vec<&str> = steps
        .iter()
        .filter_map(|line| line.split("step=\"").nth(1)?.split('"').next())
        .collect();
    assert_eq!(names, ["download", "unpack", "load"], "{log}");
    assert!(
        steps.iter().all(|line| line.contains("elapsed=")),
        "each step line has its duration:\n{log}"
    );
    let size = fs_err::metadata(project.path().join("greeter.tar.zst"))
        .expect("the built archive")
        .len();
    assert!(
        steps[0].contains(&format!("bytes={size}")),
        "the download line has the artifact's bytes ({size}):\n{log}"
    );
    assert!(
        !log.contains('\x1b'),
        "a piped runner log has no escape codes:\n{log}"
    );
}

#[test]
fn a_release_runner_on_a_terminal_keeps_its_log_lines_whole() {
    let (server, _project) = deployed_greeter();
    let cache = tempfile::tempdir().expect("cache");
    let mut command = tilebox_command(&["runner", "start", "--stop-when-idling", "--cache-dir"]);
    command
        .arg(cache.path())
        .env("TILEBOX_API_URL", server.url())
        .env("NO_COLOR", "1");
    let run = run_on_terminal(&command, b"", TIMEOUT);
    assert_eq!(run.code, Some(0), "{}", run.transcript);
    // The bars are cleared before each log line and drawn again after it: every step's line
    // arrives whole, with no escape code or bar inside it.
    for step in ["download", "unpack", "load"] {
        let whole = regex::Regex::new(&format!(
            "release step done release=greeter@[0-9a-f]{{8}} step=\"{step}\" [^\x1b\\[]*elapsed=[0-9.]+[mµn]?s\r?\n"
        ))
        .expect("a valid regex");
        assert!(
            whole.is_match(&run.transcript),
            "no whole `{step}` line:\n{:?}",
            run.transcript
        );
    }
    // The live line of the release being prepared.
    assert!(
        run.screen_lines()
            .iter()
            .any(|line| line.starts_with("greeter@") && line.contains("download")),
        "no live line for the release:\n{}",
        run.transcript
    );
}
