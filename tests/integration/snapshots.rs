//! Snapshots of what the CLI prints (insta; the files are in `snapshots/`): the tables and
//! `--json` documents of clusters and jobs, and error messages. Each snapshot is a
//! [`transcript`]: the command, its exit code, stdout and stderr, with ids, times, durations,
//! ports and temp paths filtered ([`snapshot_settings`]).
//!
//! A changed or missing snapshot fails the test; locally insta writes the new one next to it
//! as `.snap.new` for review (`cargo insta review`, or `INSTA_UPDATE=always` to accept), and
//! with `CI=true` it writes nothing.

use std::time::Duration;

use crate::common::{
    RunnerProcess, TestServer, json_of, project, project_runner, snapshot_settings, transcript,
    wait_for_job_state,
};

/// A root task that logs a line and submits a child.
const HELLO: &str = r#"
from tilebox.workflows import ExecutionContext, Runner, Task

class Hello(Task):
    name: str
    def execute(self, context: ExecutionContext) -> None:
        context.logger.info("hello", name=self.name)
        context.submit_subtask(Child())

class Child(Task):
    def execute(self, context: ExecutionContext) -> None:
        pass

runner = Runner(tasks=[Hello, Child])
"#;

#[test]
fn cluster_commands_print_tables_and_json() {
    let _snapshots = snapshot_settings().bind_to_scope();
    let server = TestServer::start();
    let commands: [(&str, &[&str]); 5] = [
        (
            "cluster_create",
            &["cluster", "create", "Scene QA", "--slug", "scene-qa"],
        ),
        ("cluster_list", &["cluster", "list"]),
        ("cluster_list_json", &["--json", "cluster", "list"]),
        ("cluster_get", &["cluster", "get", "scene-qa"]),
        (
            "cluster_get_json",
            &["--json", "cluster", "get", "scene-qa"],
        ),
    ];
    for (name, args) in commands {
        insta::assert_snapshot!(name, transcript(args, &server.tilebox(args)));
    }
    server.stop();
}

#[test]
fn job_commands_print_tables_and_json() {
    let _snapshots = snapshot_settings().bind_to_scope();
    let server = TestServer::start();
    let project = project("hello", HELLO);
    let submit = [
        "job", "submit", "--name", "greeting", "--task", "Hello", "--input", "\"Ada\"",
    ];
    insta::assert_snapshot!("job_submit", transcript(&submit, &server.tilebox(&submit)));
    let jobs = json_of(&server.tilebox(&["--json", "job", "list"]));
    let id = jobs["jobs"][0]["id"].as_str().expect("the job's id");
    RunnerProcess::spawn(
        &mut project_runner(server.url(), project.path(), &["--stop-when-idling"]),
        project.path().join("runner.log"),
    )
    .wait_for_success(Duration::from_secs(120));
    wait_for_job_state(&server, id, "completed", Duration::from_secs(10));

    let commands: [(&str, &[&str]); 4] = [
        ("job_list", &["job", "list"]),
        ("job_get", &["job", "get", id]),
        ("job_get_json", &["--json", "job", "get", id]),
        ("job_logs", &["job", "logs", id]),
    ];
    for (name, args) in commands {
        insta::assert_snapshot!(name, transcript(args, &server.tilebox(args)));
    }
    server.stop();
}

#[test]
fn errors_say_what_was_wrong_and_exit_with_1() {
    let _snapshots = snapshot_settings().bind_to_scope();
    let server = TestServer::start();
    let commands: [(&str, &[&str]); 4] = [
        (
            "error_unknown_cluster_on_submit",
            &[
                "job",
                "submit",
                "--name",
                "x",
                "--task",
                "Leaf",
                "--cluster",
                "nowhere",
            ],
        ),
        ("error_unknown_cluster", &["cluster", "get", "nowhere"]),
        (
            "error_unknown_job",
            &["job", "get", "01890000-0000-7000-8000-000000000000"],
        ),
        ("error_malformed_job_id", &["job", "get", "not-a-job-id"]),
    ];
    for (name, args) in commands {
        let output = server.tilebox(args);
        assert_eq!(
            output.status.code(),
            Some(1),
            "{}",
            transcript(args, &output)
        );
        insta::assert_snapshot!(name, transcript(args, &output));
    }
    let jobs = json_of(&server.tilebox(&["--json", "job", "list"]));
    assert_eq!(jobs["jobs"], serde_json::json!([]), "nothing was stored");
    server.stop();
}
