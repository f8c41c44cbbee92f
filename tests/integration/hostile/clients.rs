//! Calls without a valid API key, and runner objects that do not exist.

use std::time::{Duration, Instant};

use super::*;
use crate::common::{TestServer, ask, json_of, snapshot_settings, stderr_of, transcript};
use tilebox::api::selfhosted_v1::{
    GetArtifactRequest, UploadArtifactRequest, WatchDeploymentsRequest,
};
use tilebox::api::workflows_v1::{
    CreateWorkflowRequest, ListClustersRequest, NextTaskRequest, QueryJobsRequest,
};
use tilebox::client::Client;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_service_refuses_calls_without_a_valid_token_and_stores_nothing() {
    let server = TestServer::start_with(&["--token", "s3cret"]);
    let bytes = archive(&[Entry("app.py", b'0', "", HOSTILE_APP.as_bytes())]);
    let digest = sha256_hex(&bytes);
    for key in [None, Some("wrong"), Some("s3cret ")] {
        let mut client = Client::connect(server.url(), key).await.expect("client");
        let mut codes = Vec::new();
        codes.push((
            "SubmitJob",
            client
                .jobs
                .submit_job(one_task_job("Leaf", "v0.0", b""))
                .await
                .map(drop),
        ));
        codes.push((
            "QueryJobs",
            client
                .jobs
                .query_jobs(QueryJobsRequest::default())
                .await
                .map(drop),
        ));
        codes.push((
            "NextTask",
            client
                .tasks
                .next_task(NextTaskRequest {
                    computed_task: None,
                    next_task_to_run: ask("Leaf", "v0.0"),
                })
                .await
                .map(drop),
        ));
        codes.push((
            "ListClusters",
            client
                .workflows
                .list_clusters(ListClustersRequest::default())
                .await
                .map(drop),
        ));
        codes.push((
            "CreateWorkflow",
            client
                .workflows
                .create_workflow(CreateWorkflowRequest {
                    name: "Sneaky".into(),
                    ..CreateWorkflowRequest::default()
                })
                .await
                .map(drop),
        ));
        codes.push((
            "UploadArtifact",
            client
                .artifacts
                .upload_artifact(tokio_stream::iter(vec![UploadArtifactRequest {
                    digest: digest.clone(),
                    size: bytes.len() as u64,
                    chunk: bytes.clone(),
                }]))
                .await
                .map(drop),
        ));
        codes.push((
            "WatchDeployments",
            client
                .deployments
                .watch_deployments(WatchDeploymentsRequest::default())
                .await
                .map(drop),
        ));
        for (call, result) in codes {
            let status = result.expect_err(call);
            assert_eq!(
                status.code(),
                tonic::Code::Unauthenticated,
                "{call} with {key:?}: {status:?}"
            );
        }
    }

    let mut client = Client::connect(server.url(), Some("s3cret"))
        .await
        .expect("client");
    assert_eq!(job_count(&mut client).await, 0, "no job was stored");
    let artifact = client
        .artifacts
        .get_artifact(GetArtifactRequest { digest, id: None })
        .await
        .expect_err("no artifact was stored");
    assert_eq!(artifact.code(), tonic::Code::NotFound);
    let workflows =
        json_of(&server.tilebox(&["--api-key", "s3cret", "--json", "workflow", "list"]));
    assert_eq!(workflows, serde_json::json!([]), "no workflow was created");

    // A runner with a wrong key stops at once with the reason, instead of retrying forever.
    let started = Instant::now();
    let cache = server.temp_dir().join("runner-cache");
    let runner = [
        "runner",
        "start",
        "--api-key",
        "wrong",
        "--cache-dir",
        cache.to_str().expect("a UTF-8 path"),
    ];
    let output = crate::common::tilebox_command(&runner)
        .env("TILEBOX_API_URL", server.url())
        .output()
        .expect("runner");
    let stderr = stderr_of(&output);
    assert!(started.elapsed() < Duration::from_secs(30), "{stderr}");
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    let _snapshots = snapshot_settings().bind_to_scope();
    insta::assert_snapshot!("runner_with_a_wrong_api_key", transcript(&runner, &output));
    server.stop();
}

// ---- runner objects --------------------------------------------------------------------------

const NOT_A_RUNNER: &str = "from tilebox.workflows import ExecutionContext, Runner, Task\n\n\
class Hello(Task):\n    def execute(self, context: ExecutionContext) -> None:\n        pass\n\n\
runner = Runner(tasks=[Hello])\nnot_a_runner = 42\n";

#[test]
fn a_runner_object_that_is_missing_or_not_a_runner_is_a_clear_error() {
    let _snapshots = snapshot_settings().bind_to_scope();
    let project = tempfile::tempdir().expect("project");
    fs_err::write(project.path().join("app.py"), NOT_A_RUNNER).expect("app.py");
    let project_path = project.path().to_str().expect("a UTF-8 path");
    let cache = project.path().join(".cache");
    let cache = cache.to_str().expect("a UTF-8 path");
    // A module that does not exist, an attribute that does not, and an `int`. The errors
    // name the Python exception (`ModuleNotFoundError`, `AttributeError`, `TypeError`) and
    // are in the snapshot `missing_or_wrong_runner_objects`.
    let runners = ["missing:runner", "app:nothing", "app:not_a_runner"];
    let mut errors = String::new();
    for runner in runners {
        let task_run = [
            "task",
            "run",
            "Hello",
            "--runner",
            runner,
            "--project",
            project_path,
            "--cache-dir",
            cache,
        ];
        let output = crate::common::tilebox_command(&task_run)
            .output()
            .expect("task run");
        assert_eq!(
            output.status.code(),
            Some(1),
            "task run --runner {runner}: {}",
            stderr_of(&output)
        );
        errors.push_str(&transcript(&task_run, &output));
    }

    // `runner start --project` reads the runner from tilebox.workflow.toml.
    let server = TestServer::start();
    for runner in runners {
        fs_err::write(
            project.path().join("tilebox.workflow.toml"),
            format!(
                "[workflow]\nslug = \"broken\"\nrunner = \"{runner}\"\n\n[build]\ninclude = [\"app.py\"]\n"
            ),
        )
        .expect("tilebox.workflow.toml");
        let started = Instant::now();
        let runner_start = [
            "runner",
            "start",
            "--project",
            project_path,
            "--cache-dir",
            cache,
        ];
        let output = crate::common::tilebox_command(&runner_start)
            .env("TILEBOX_API_URL", server.url())
            .output()
            .expect("runner start");
        let stderr = stderr_of(&output);
        assert!(started.elapsed() < Duration::from_secs(60), "{stderr}");
        assert_eq!(
            output.status.code(),
            Some(1),
            "runner start with {runner}: {stderr}"
        );
        errors.push_str(&format!("# runner = \"{runner}\"\n"));
        errors.push_str(&transcript(&runner_start, &output));
    }
    insta::assert_snapshot!("missing_or_wrong_runner_objects", errors);
    server.stop();
}
