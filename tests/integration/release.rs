//! The release pipeline end to end: init, build, publish (idempotent), deploy (replacing,
//! --latest, targets), undeploy, artifact verification, and a release runner picking up a
//! fixed release live to finish a retried job.

use std::path::Path;
use std::time::Duration;

use crate::common::{
    RunnerProcess, TestServer, example, job_document, json_of, snapshot_settings, transcript,
    wait_for_job_state, wait_until,
};
use serde_json::Value;
use tilebox::api::selfhosted_v1::UploadArtifactRequest;

/// A workflow project whose single module is `app.py`, with a target `both` for the
/// clusters `east` and `west`.
fn write_project(directory: &Path, slug: &str, app: &str) {
    crate::common::write_project(directory, slug, app);
    let config = directory.join("tilebox.workflow.toml");
    let mut text = fs_err::read_to_string(&config).expect("tilebox.workflow.toml");
    text.push_str("\n[targets.both]\nclusters = [\"east\", \"west\"]\n");
    fs_err::write(config, text).expect("tilebox.workflow.toml");
}

const HELLO: &str = "from tilebox.workflows import ExecutionContext, Runner, Task\n\n\
class Hello(Task):\n    def execute(self, context: ExecutionContext) -> None:\n        pass\n\nrunner = Runner(tasks=[Hello])\n";

#[test]
fn init_publish_and_deploy_work_as_a_new_user_types_them() {
    let _snapshots = snapshot_settings().bind_to_scope();
    let server = TestServer::start();
    let directory = tempfile::tempdir().expect("project dir");
    let project = directory.path().join("scene-qa");
    fs_err::create_dir(&project).expect("mkdir");
    let init = json_of(&server.tilebox_in(
        &project,
        &["--json", "workflow", "init", "--name", "Scene QA"],
    ));
    assert_eq!(init["workflow_slug"], "scene-qa");
    for file in [
        "tilebox.workflow.toml",
        "pyproject.toml",
        "runner.py",
        "uv.lock",
    ] {
        assert!(project.join(file).is_file(), "init writes {file}");
    }
    // A second init refuses and changes nothing.
    let before = fs_err::read(project.join("runner.py")).expect("runner.py");
    let again = ["workflow", "init"];
    let output = server.tilebox_in(&project, &again);
    assert_eq!(output.status.code(), Some(1));
    insta::assert_snapshot!("init_in_a_project", transcript(&again, &output));
    assert_eq!(
        fs_err::read(project.join("runner.py")).expect("runner.py"),
        before
    );

    assert!(
        server
            .tilebox_in(&project, &["cluster", "create", "X", "--slug", "x"])
            .status
            .success()
    );
    let published =
        json_of(&server.tilebox_in(&project, &["--json", "workflow", "publish-release"]));
    assert_eq!(published["tasks"][0]["name"], "HelloTask");
    let deployed = json_of(&server.tilebox_in(
        &project,
        &[
            "--json",
            "workflow",
            "deploy-release",
            "--latest",
            "--cluster",
            "x",
        ],
    ));
    assert_eq!(deployed["clusters"], serde_json::json!(["x"]));
    assert_eq!(deployed["release"]["id"], published["id"]);
    let cluster = json_of(&server.tilebox(&["--json", "cluster", "get", "x"]));
    assert_eq!(cluster["slug"], "x");
}

/// An executable shell script `name` in `directory`.
fn script(directory: &Path, name: &str, body: &str) -> std::path::PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let path = directory.join(name);
    fs_err::write(&path, format!("#!/bin/sh\n{body}\n")).expect("script");
    fs_err::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    path
}

/// Runs `workflow init --name Scene QA` in `project` against `server` with `TILEBOX_UV` set
/// to `uv`.
fn init_with_uv(server: &TestServer, project: &Path, uv: &Path) -> std::process::Output {
    crate::common::tilebox_command(&["workflow", "init", "--name", "Scene QA"])
        .current_dir(project.parent().expect("parent"))
        .arg(project)
        .env("TILEBOX_API_URL", server.url())
        .env("TILEBOX_UV", uv)
        .output()
        .expect("tilebox")
}

fn workflows_on(server: &TestServer) -> Value {
    json_of(&server.tilebox(&["--json", "workflow", "list"]))
}

#[test]
fn init_without_a_working_uv_writes_and_creates_nothing() {
    let server = TestServer::start();
    let directory = tempfile::tempdir().expect("dir");
    // What a pyenv shim prints outside the directory that selects its Python.
    let shim = script(
        directory.path(),
        "uv",
        "echo 'pyenv: uv: command not found' >&2; exit 127",
    );
    let project = directory.path().join("scene-qa");
    let output = init_with_uv(&server, &project, &shim);
    assert_eq!(output.status.code(), Some(1));
    let stderr = crate::common::stderr_of(&output);
    assert!(
        stderr.contains("TILEBOX_UV")
            && stderr.contains("exited with 127: pyenv: uv: command not found"),
        "{stderr}"
    );
    assert!(stderr.contains("nothing was changed"), "{stderr}");
    assert!(!project.exists(), "init made {}", project.display());
    assert_eq!(workflows_on(&server), serde_json::json!([]));
}

#[test]
fn init_whose_uv_sync_fails_removes_what_it_made() {
    let server = TestServer::start();
    let directory = tempfile::tempdir().expect("dir");
    // A uv that runs, and whose sync fails half-way: after making the venv and the lock.
    let uv = script(
        directory.path(),
        "uv",
        r#"if [ "$1" = "--version" ]; then echo 'uv 0.0.0'; exit 0; fi
cd "$4" && mkdir -p .venv/lib && touch uv.lock ../sync-ran
echo 'error: Failed to fetch: `https://pypi.org/simple/tilebox/`' >&2; exit 2"#,
    );
    let project = directory.path().join("scene-qa");
    fs_err::create_dir(&project).expect("mkdir");
    fs_err::write(project.join("notes.txt"), "mine").expect("notes");
    let output = init_with_uv(&server, &project, &uv);
    assert_eq!(output.status.code(), Some(1));
    let stderr = crate::common::stderr_of(&output);
    assert!(stderr.contains("Failed to fetch"), "{stderr}");
    let mut left: Vec<String> = fs_err::read_dir(&project)
        .expect("project")
        .map(|entry| {
            entry
                .expect("entry")
                .file_name()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    left.sort();
    assert!(
        directory.path().join("sync-ran").exists(),
        "the sync made its venv and lock in the project"
    );
    assert_eq!(left, ["notes.txt"], "only the user's own file is left");
    assert_eq!(workflows_on(&server), serde_json::json!([]));
}

#[test]
fn init_interrupted_during_uv_sync_stops_uv_and_removes_what_it_made() {
    let server = TestServer::start();
    let directory = tempfile::tempdir().expect("dir");
    let pid_file = directory.path().join("uv.pid");
    // A sync that makes the venv and the lock, then takes its time (with a child of its own).
    let uv = script(
        directory.path(),
        "uv",
        &format!(
            r#"if [ "$1" = "--version" ]; then echo 'uv 0.0.0'; exit 0; fi
cd "$4" && mkdir -p .venv/lib && touch uv.lock && echo $$ > {}
sleep 600 & wait"#,
            pid_file.display()
        ),
    );
    // Both directories init makes on the way are removed again.
    let project = directory.path().join("work").join("scene-qa");
    let mut init = crate::common::tilebox_command(&["workflow", "init", "--name", "Scene QA"])
        .arg(&project)
        .env("TILEBOX_API_URL", server.url())
        .env("TILEBOX_UV", &uv)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("tilebox");
    wait_until("uv sync to start", Duration::from_secs(30), || {
        fs_err::read_to_string(&pid_file).is_ok_and(|pid| pid.ends_with('\n'))
    })
    .expect("uv sync started");
    crate::common::signal(init.id(), "-INT");
    let status = crate::common::wait_for_exit(&mut init, "init to stop", Duration::from_secs(30))
        .expect("init stops");
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut init.stderr.take().expect("stderr"), &mut stderr)
        .expect("stderr");
    assert_eq!(status.code(), Some(130), "{stderr}");
    assert!(
        stderr.contains("interrupted; nothing was changed"),
        "{stderr}"
    );
    assert!(
        !directory.path().join("work").exists(),
        "init left {}",
        project.display()
    );
    let pid = fs_err::read_to_string(&pid_file).expect("pid");
    assert!(
        !Path::new("/proc").join(pid.trim()).exists(),
        "uv (pid {}) was stopped",
        pid.trim()
    );
    assert_eq!(workflows_on(&server), serde_json::json!([]));
}

#[test]
fn init_refuses_a_directory_with_a_venv() {
    let server = TestServer::start();
    let project = tempfile::tempdir().expect("dir");
    fs_err::create_dir(project.path().join(".venv")).expect(".venv");
    let output = server.tilebox_in(project.path(), &["workflow", "init", "--name", "Scene QA"]);
    assert_eq!(output.status.code(), Some(1));
    let stderr = crate::common::stderr_of(&output);
    assert!(
        stderr.contains("already has .venv; nothing was changed"),
        "{stderr}"
    );
    assert_eq!(workflows_on(&server), serde_json::json!([]));
}

#[test]
fn publishing_is_idempotent_and_deploys_replace_and_undeploy() {
    let _snapshots = snapshot_settings().bind_to_scope();
    let server = TestServer::start();
    let project = tempfile::tempdir().expect("project");
    write_project(project.path(), "greeter", HELLO);
    assert!(
        server
            .tilebox(&["workflow", "create", "Greeter"])
            .status
            .success()
    );
    for slug in ["east", "west"] {
        assert!(
            server
                .tilebox(&["cluster", "create", slug, "--slug", slug])
                .status
                .success()
        );
    }
    let first =
        json_of(&server.tilebox_in(project.path(), &["--json", "workflow", "publish-release"]));
    let again =
        json_of(&server.tilebox_in(project.path(), &["--json", "workflow", "publish-release"]));
    assert_eq!(
        first["id"], again["id"],
        "unchanged content publishes the same release"
    );
    assert_eq!(first["digest"], again["digest"]);
    let built =
        json_of(&server.tilebox_in(project.path(), &["--json", "workflow", "build-release"]));
    assert_eq!(
        built["digest"], first["digest"],
        "the build is reproducible"
    );

    let first_id = first["id"].as_str().expect("id").to_string();
    let deployed = json_of(&server.tilebox_in(
        project.path(),
        &[
            "--json",
            "workflow",
            "deploy-release",
            "--release",
            &first_id,
            "--target",
            "both",
        ],
    ));
    assert_eq!(deployed["clusters"], serde_json::json!(["east", "west"]));

    fs_err::write(
        project.path().join("app.py"),
        HELLO.replace("pass", "context.current_task.display = 'v2'"),
    )
    .expect("edit");
    let second =
        json_of(&server.tilebox_in(project.path(), &["--json", "workflow", "publish-release"]));
    assert_ne!(
        second["id"], first["id"],
        "changed content is a new release"
    );
    json_of(&server.tilebox_in(
        project.path(),
        &[
            "--json",
            "workflow",
            "deploy-release",
            "--latest",
            "--cluster",
            "east",
        ],
    ));
    let releases = json_of(&server.tilebox(&["--json", "workflow", "releases", "greeter"]));
    let clusters_of = |id: &Value| {
        releases["releases"]
            .as_array()
            .expect("releases")
            .iter()
            .find(|release| release["id"] == *id)
            .expect("release")["clusters"]
            .clone()
    };
    assert_eq!(
        clusters_of(&second["id"]),
        serde_json::json!(["east"]),
        "--latest deployed the new release"
    );
    assert_eq!(
        clusters_of(&first["id"]),
        serde_json::json!(["west"]),
        "the new release replaced the old one on east only"
    );

    json_of(&server.tilebox_in(
        project.path(),
        &[
            "--json",
            "workflow",
            "undeploy-release",
            "--release",
            &first_id,
            "--cluster",
            "west",
        ],
    ));
    let releases = json_of(&server.tilebox(&["--json", "workflow", "releases", "greeter"]));
    let first_release = releases["releases"]
        .as_array()
        .expect("releases")
        .iter()
        .find(|release| release["id"] == first["id"])
        .cloned()
        .expect("first");
    assert_eq!(first_release["clusters"], serde_json::json!([]));

    let both = server.tilebox_in(
        project.path(),
        &[
            "workflow",
            "deploy-release",
            "--latest",
            "--target",
            "both",
            "--cluster",
            "east",
        ],
    );
    assert_eq!(
        both.status.code(),
        Some(2),
        "clap refuses --target with --cluster"
    );
    let unknown = ["workflow", "deploy-release", "--latest", "--target", "nope"];
    let output = server.tilebox_in(project.path(), &unknown);
    assert_eq!(output.status.code(), Some(1));
    insta::assert_snapshot!("deploy_to_an_unknown_target", transcript(&unknown, &output));
}

#[tokio::test]
async fn an_upload_whose_bytes_do_not_match_its_digest_is_refused() {
    let server = TestServer::start();
    let mut client = tilebox::client::Client::connect(server.url(), None)
        .await
        .expect("client");
    let wrong = "0".repeat(64);
    let request = UploadArtifactRequest {
        digest: wrong.clone(),
        size: 5,
        chunk: b"hello".to_vec(),
    };
    let status = client
        .artifacts
        .upload_artifact(tokio_stream::iter(vec![request]))
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    assert!(
        status.message().contains("hash to 2cf24dba"),
        "{}",
        status.message()
    );
    let missing = client
        .artifacts
        .get_artifact(tilebox::api::selfhosted_v1::GetArtifactRequest {
            digest: wrong,
            id: None,
        })
        .await
        .unwrap_err();
    assert_eq!(missing.code(), tonic::Code::NotFound, "nothing was stored");
    let artifacts = fs_err::read_dir(server.data_dir().join("artifacts"))
        .map(|entries| entries.count())
        .unwrap_or(0);
    assert_eq!(artifacts, 0, "no partial file is left behind");
}

const FLAKY_V1: &str = r#"
import os
from tilebox.workflows import ExecutionContext, Runner, Task

class Root(Task):
    def execute(self, context: ExecutionContext) -> None:
        with open(os.environ["MARKER"], "a") as marker:
            marker.write("root\n")
        context.submit_subtask(Step())

class Step(Task):
    def execute(self, context: ExecutionContext) -> None:
        raise RuntimeError("broken step")

runner = Runner(tasks=[Root, Step])
"#;

/// A release runner for the cluster `fix` whose tasks append to `marker`.
fn start_release_runner(server: &TestServer, cache: &Path, marker: &Path) -> RunnerProcess {
    RunnerProcess::spawn(
        crate::common::tilebox_command(&["runner", "start", "--cluster", "fix", "--cache-dir"])
            .arg(cache)
            .env("TILEBOX_API_URL", server.url())
            .env("MARKER", marker),
        cache.with_extension("log"),
    )
}

#[test]
fn a_failed_job_is_fixed_by_deploying_a_new_release_and_retrying() {
    let server = TestServer::start();
    let project = tempfile::tempdir().expect("project");
    let scratch = tempfile::tempdir().expect("scratch");
    let marker = scratch.path().join("marker");
    write_project(project.path(), "fixable", FLAKY_V1);
    assert!(
        server
            .tilebox(&["workflow", "create", "Fixable"])
            .status
            .success()
    );
    assert!(
        server
            .tilebox(&["cluster", "create", "Fix", "--slug", "fix"])
            .status
            .success()
    );
    json_of(&server.tilebox_in(project.path(), &["--json", "workflow", "publish-release"]));
    json_of(&server.tilebox_in(
        project.path(),
        &[
            "--json",
            "workflow",
            "deploy-release",
            "--latest",
            "--cluster",
            "fix",
        ],
    ));

    let runner = start_release_runner(&server, &scratch.path().join("cache"), &marker);
    let job = json_of(&server.tilebox(&[
        "--json",
        "job",
        "submit",
        "--name",
        "fix-me",
        "--task",
        "Root",
        "--cluster",
        "fix",
    ]));
    let id = job["id"].as_str().expect("id").to_string();
    // The broken step fails the job.
    wait_for_job_state(&server, &id, "failed", Duration::from_secs(60));

    fs_err::write(
        project.path().join("app.py"),
        FLAKY_V1.replace("raise RuntimeError(\"broken step\")", "pass"),
    )
    .expect("fix");
    json_of(&server.tilebox_in(project.path(), &["--json", "workflow", "publish-release"]));
    json_of(&server.tilebox_in(
        project.path(),
        &[
            "--json",
            "workflow",
            "deploy-release",
            "--latest",
            "--cluster",
            "fix",
        ],
    ));
    // Retried before the runner has loaded the fix, the step would run the broken code again.
    wait_until(
        "the runner to load the fixed release",
        Duration::from_secs(60),
        || crate::common::routes_a_second_release(&runner.log()),
    )
    .unwrap_or_else(|timed_out| panic!("{timed_out}\n{}", runner.log()));
    let retried = json_of(&server.tilebox(&["--json", "job", "retry", &id]));
    assert_eq!(retried["rescheduled_tasks"], 1);
    wait_until(
        "the fixed release to complete the job",
        Duration::from_secs(60),
        || job_document(&server, &id)["state"] == "completed",
    )
    .unwrap_or_else(|timed_out| panic!("{timed_out}\n{}", runner.log()));
    drop(runner);
    let lines = fs_err::read_to_string(&marker).expect("marker");
    assert_eq!(
        lines.lines().count(),
        1,
        "the computed root did not run again"
    );
}

#[test]
fn the_examples_build_publish_deploy_and_run_on_a_release_runner() {
    let server = TestServer::start();
    let scratch = tempfile::tempdir().expect("scratch");
    assert!(
        server
            .tilebox(&["cluster", "create", "Scene QA", "--slug", "scene-qa"])
            .status
            .success()
    );
    let scene = example("scene-qa");
    let sleep = example("parallel-sleep");
    for (project, name) in [(&scene, "My Workflow"), (&sleep, "Parallel Sleep")] {
        assert!(
            server
                .tilebox(&["workflow", "create", name])
                .status
                .success()
        );
        let published =
            json_of(&server.tilebox_in(project.path(), &["--json", "workflow", "publish-release"]));
        assert!(
            !published["tasks"].as_array().expect("tasks").is_empty(),
            "{published}"
        );
    }
    json_of(&server.tilebox_in(
        scene.path(),
        &[
            "--json",
            "workflow",
            "deploy-release",
            "--latest",
            "--target",
            "qa",
        ],
    ));
    json_of(&server.tilebox_in(
        sleep.path(),
        &[
            "--json",
            "workflow",
            "deploy-release",
            "--latest",
            "--cluster",
            "scene-qa",
        ],
    ));
    let scene_job = json_of(&server.tilebox(&[
        "--json",
        "job",
        "submit",
        "--name",
        "scene",
        "--task",
        "tilebox.com/example/ProcessScene",
        "--version",
        "v1.0",
        "--input",
        "S2A_001",
        "--cluster",
        "scene-qa",
    ]));
    let sleep_job = json_of(&server.tilebox(&[
        "--json",
        "job",
        "submit",
        "--name",
        "sleep",
        "--task",
        "ParallelSleepWorkflow",
        "--cluster",
        "scene-qa",
        "--input",
        r#"{"count": 4, "seconds": 0.1}"#,
    ]));
    let runner = crate::common::tilebox_command(&[
        "runner",
        "start",
        "--cluster",
        "scene-qa",
        "-n",
        "2",
        "--stop-when-idling",
        "--cache-dir",
    ])
    .arg(scratch.path().join("cache"))
    .current_dir(scratch.path())
    .env("TILEBOX_API_URL", server.url())
    .output()
    .expect("runner");
    let log = String::from_utf8_lossy(&runner.stderr);
    assert!(runner.status.success(), "{log}");
    // Both releases load: this runner, the only one, completes a job of each.
    for job in [&scene_job, &sleep_job] {
        let id = job["id"].as_str().expect("id");
        let state = job_document(&server, id);
        assert_eq!(state["state"], "completed", "{state}\n{log}");
    }
    let scene = job_document(&server, scene_job["id"].as_str().expect("id"));
    assert_eq!(scene["tasks"][0]["display"], "ProcessScene(S2A_001)");
}
