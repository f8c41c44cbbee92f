//! Hostile and malformed input against the real binary: artifacts that try to escape their
//! directory or exhaust the runner, malformed `tilebox.workflow.toml`, task inputs that do
//! not decode, invalid identifiers, dependency cycles, over-limit inputs, missing or wrong
//! API keys, and runner objects that do not exist. Each ends in a clear error and changes
//! nothing it should not.
//!
//! Layout:
//! - `mod.rs`: helpers the areas share
//! - `artifacts.rs`: release artifacts that try to escape or exhaust the runner
//! - `inputs.rs`: malformed configs, undecodable inputs, bad identifiers, cycles, limits
//! - `clients.rs`: missing or wrong API keys, runner objects that do not exist
//! - `server_limits.rs`: message sizes, OTLP limits, open calls per connection, uploads cut short
//! - `releases.rs`: releases registering identifiers the server refuses, refused claims
//!   carrying results, version and retention arithmetic
//! - `limits_submit.rs`: submission limits (names, trace parents, displays, cluster slugs,
//!   tasks per submission)
//! - `loops.rs`: tasks that try to run forever (exceptions, invalid outcomes, runner failures)
//! - `backoff.rs`: a runner that cannot run a task backs off from it and serves other jobs;
//!   a release host killed while idle is replaced
//! - `stalls.rs`: releases that hang `uv sync` or their import, flood their pipes, or fail
//!   to prepare for a while
//! - `batches.rs`: results that exceed the server's message limit together

mod artifacts;
mod backoff;
mod batches;
mod clients;
mod inputs;
mod limits_submit;
mod loops;
mod releases;
mod server_limits;
mod stalls;

use std::io::Write;
use std::path::{Path, PathBuf};

use crate::common::{RunnerProcess, TestServer, job_request, json_of};
use sha2::{Digest, Sha256};
use tilebox::api::selfhosted_v1::UploadArtifactRequest;
use tilebox::api::tilebox_v1::Id;
use tilebox::api::workflows_v1::{
    CreateClusterRequest, CreateWorkflowRequest, DeployWorkflowReleaseRequest,
    PublishWorkflowReleaseRequest, QueryJobsRequest, ReleaseContent, SubmitJobRequest,
    TaskIdentifier,
};
use tilebox::client::Client;

/// The code inside every hostile archive: a valid runner, so a refusal is the archive's fault.
pub(super) const HOSTILE_APP: &str = "from tilebox.workflows import ExecutionContext, Runner, Task\n\n\
class Hostile(Task):\n    def execute(self, context: ExecutionContext) -> None:\n        pass\n\n\
runner = Runner(tasks=[Hostile])\n";

pub(super) const HELLO: &str = "from tilebox.workflows import ExecutionContext, Runner, Task\n\n\
class Hello(Task):\n    def execute(self, context: ExecutionContext) -> None:\n        \
context.current_task.display = 'hello from the good release'\n\nrunner = Runner(tasks=[Hello])\n";

// ---- helpers ---------------------------------------------------------------------------------

/// Every file and directory under `root`, relative, sorted.
pub(super) fn tree(root: &Path) -> Vec<String> {
    fn walk(root: &Path, directory: &Path, found: &mut Vec<String>) {
        let Ok(entries) = fs_err::read_dir(directory) else {
            return;
        };
        for entry in entries {
            let entry = entry.expect("dir entry");
            let path = entry.path();
            found.push(
                path.strip_prefix(root)
                    .expect("below root")
                    .display()
                    .to_string(),
            );
            if entry.file_type().expect("file type").is_dir() {
                walk(root, &path, found);
            }
        }
    }
    let mut found = Vec::new();
    walk(root, root, &mut found);
    found.sort();
    found
}

/// A job `one-task` of one task `name@version` with `input`, on the default cluster (the
/// job's name stays valid whatever the task's name).
pub(super) fn one_task_job(name: &str, version: &str, input: &[u8]) -> SubmitJobRequest {
    SubmitJobRequest {
        job_name: "one-task".into(),
        ..job_request(name, version, 1, input)
    }
}

pub(super) async fn job_count(client: &mut Client) -> usize {
    client
        .jobs
        .query_jobs(QueryJobsRequest::default())
        .await
        .expect("query jobs")
        .into_inner()
        .jobs
        .len()
}

/// Creates cluster `slug` through the API, named as `slug` with a capital first letter.
pub(super) async fn create_cluster(client: &mut Client, slug: &str) {
    let mut letters = slug.chars();
    let name: String = letters
        .next()
        .map(|first| first.to_uppercase().chain(letters).collect())
        .unwrap_or_default();
    client
        .workflows
        .create_cluster(CreateClusterRequest {
            name,
            slug: slug.into(),
            ..CreateClusterRequest::default()
        })
        .await
        .expect("create cluster");
}

/// Publishes the good release (workflow `Greeter`, task `Hello` of [`HELLO`]) with the CLI from
/// a project in `scratch/greeter`, and deploys it to `cluster`.
pub(super) fn deploy_greeter(server: &TestServer, scratch: &Path, cluster: &str) {
    let project = scratch.join("greeter");
    fs_err::create_dir(&project).expect("project");
    crate::common::write_project(&project, "greeter", HELLO);
    json_of(&server.tilebox(&["--json", "workflow", "create", "Greeter"]));
    json_of(&server.tilebox_in(&project, &["--json", "workflow", "publish-release"]));
    json_of(&server.tilebox_in(
        &project,
        &[
            "--json",
            "workflow",
            "deploy-release",
            "--latest",
            "--cluster",
            cluster,
        ],
    ));
}

/// `tilebox runner start --cluster CLUSTER --cache-dir CACHE ARGS` against `server`, logging
/// to `log`.
pub(super) fn start_runner(
    server: &TestServer,
    cluster: &str,
    cache: &Path,
    log: PathBuf,
    args: &[&str],
) -> RunnerProcess {
    RunnerProcess::spawn(
        crate::common::tilebox_command(&["runner", "start", "--cluster", cluster, "--cache-dir"])
            .arg(cache)
            .args(args)
            .env("TILEBOX_API_URL", server.url()),
        log,
    )
}

/// `tilebox job submit` of a job named `task` of one task `task`, with `args` added; answers
/// the job id.
pub(super) fn submit_job(server: &TestServer, task: &str, args: &[&str]) -> String {
    let mut command = vec!["--json", "job", "submit", "--name", task, "--task", task];
    command.extend_from_slice(args);
    let job = json_of(&server.tilebox(&command));
    job["id"].as_str().expect("id").to_string()
}

/// Submits a job of one task `task` to `cluster` with the CLI; answers the job id.
pub(super) fn submit_to(server: &TestServer, task: &str, cluster: &str) -> String {
    submit_job(server, task, &["--cluster", cluster])
}

/// Asserts that job document `task` is a task the runners failed to run eleven times: its
/// display ends in `RunnerFailed`, and its own retries are untouched.
pub(super) fn assert_failed_by_runners(task: &serde_json::Value) {
    assert_eq!(task["retry_count"], 0, "{task}");
    let display = task["display"].as_str().expect("display");
    assert_eq!(
        display.lines().last(),
        Some("RunnerFailed('the runners could not run the task 11 times')"),
        "{display}"
    );
}

// ---- raw releases ----------------------------------------------------------------------------

/// Uploads `bytes` as an artifact in chunks of 1 MiB (the digest and size in the first);
/// answers the artifact id.
pub(super) async fn upload(client: &mut Client, bytes: &[u8]) -> Id {
    let digest = sha256_hex(bytes);
    let mut messages = Vec::new();
    for (index, chunk) in bytes.chunks(1 << 20).enumerate() {
        messages.push(UploadArtifactRequest {
            digest: if index == 0 {
                digest.clone()
            } else {
                String::new()
            },
            size: if index == 0 { bytes.len() as u64 } else { 0 },
            chunk: chunk.to_vec(),
        });
    }
    let info = client
        .artifacts
        .upload_artifact(tokio_stream::iter(messages))
        .await
        .expect("the server stores any bytes whose digest checks out")
        .into_inner();
    assert_eq!(info.digest, digest);
    info.id.expect("artifact id")
}

/// The content of a release of one task `task@v0.0` whose runner object is `app:runner`.
pub(super) fn release_content(fingerprint: &str, task: &str) -> ReleaseContent {
    ReleaseContent {
        fingerprint: fingerprint.into(),
        tasks: vec![TaskIdentifier {
            name: task.into(),
            version: "v0.0".into(),
        }],
        runner_object_path: "app:runner".into(),
        ..ReleaseContent::default()
    }
}

/// Creates workflow `slug`, uploads `bytes` and publishes them as its release with `content`,
/// without a build step; answers the release id.
pub(super) async fn publish(
    client: &mut Client,
    slug: &str,
    bytes: &[u8],
    content: ReleaseContent,
) -> Id {
    let workflow = client
        .workflows
        .create_workflow(CreateWorkflowRequest {
            name: slug.into(),
            ..CreateWorkflowRequest::default()
        })
        .await
        .expect("create workflow")
        .into_inner();
    assert_eq!(workflow.slug, slug);
    let artifact = upload(client, bytes).await;
    client
        .workflows
        .publish_workflow_release(PublishWorkflowReleaseRequest {
            workflow_slug: slug.into(),
            artifact_id: Some(artifact),
            content: Some(content),
        })
        .await
        .expect("publish")
        .into_inner()
        .id
        .expect("release id")
}

/// [`publish`] of `bytes` as the release of workflow `slug`, claiming one task `Hostile`.
pub(super) async fn publish_hostile(client: &mut Client, slug: &str, bytes: &[u8]) -> Id {
    let content = release_content(&format!("hostile-{slug}"), "Hostile");
    publish(client, slug, bytes, content).await
}

/// Deploys `release` of workflow `slug` to `cluster`.
pub(super) async fn deploy(client: &mut Client, slug: &str, release: Id, cluster: &str) {
    client
        .workflows
        .deploy_workflow_release(DeployWorkflowReleaseRequest {
            workflow_slug: slug.into(),
            release_id: Some(release),
            cluster_slugs: vec![cluster.into()],
        })
        .await
        .expect("deploy");
}

/// Publishes an archive of `files` (path, text) as the release of workflow `slug`, claiming
/// one task named `slug`, and deploys it to `cluster`; answers the archive's digest. No build
/// step: `build-release` would load it.
pub(super) async fn deploy_files(
    client: &mut Client,
    slug: &str,
    files: &[(&str, &str)],
    cluster: &str,
) -> String {
    let entries: Vec<Entry> = files
        .iter()
        .map(|(path, text)| Entry(path, b'0', "", text.as_bytes()))
        .collect();
    let bytes = archive(&entries);
    let content = release_content(&format!("stalls-{slug}"), slug);
    let release = publish(client, slug, &bytes, content).await;
    deploy(client, slug, release, cluster).await;
    sha256_hex(&bytes)
}

// ---- archives --------------------------------------------------------------------------------

pub(super) const BLOCK: usize = 512;

/// A ustar header block: mode 0644, owner 0, mtime 0, a correct checksum.
pub(super) fn tar_header(path: &str, typeflag: u8, link: &str, size: u64) -> [u8; BLOCK] {
    assert!(
        path.len() <= 100 && link.len() <= 100,
        "ustar fields hold 100 bytes"
    );
    let mut block = [0u8; BLOCK];
    block[..path.len()].copy_from_slice(path.as_bytes());
    block[100..108].copy_from_slice(b"0000644\0");
    block[108..116].copy_from_slice(b"0000000\0");
    block[116..124].copy_from_slice(b"0000000\0");
    block[124..136].copy_from_slice(format!("{size:011o}\0").as_bytes());
    block[136..148].copy_from_slice(b"00000000000\0");
    block[156] = typeflag;
    block[157..157 + link.len()].copy_from_slice(link.as_bytes());
    block[257..263].copy_from_slice(b"ustar\0");
    block[263..265].copy_from_slice(b"00");
    if matches!(typeflag, b'3' | b'4') {
        // /dev/null's device numbers.
        block[329..337].copy_from_slice(b"0000001\0");
        block[337..345].copy_from_slice(b"0000003\0");
    }
    block[148..156].fill(b' ');
    let checksum: u32 = block.iter().map(|&byte| u32::from(byte)).sum();
    block[148..156].copy_from_slice(format!("{checksum:06o}\0 ").as_bytes());
    block
}

/// One tar entry: path, type flag, link target, data.
pub(super) struct Entry<'a>(
    pub(super) &'a str,
    pub(super) u8,
    pub(super) &'a str,
    pub(super) &'a [u8],
);

/// A tar stream of `entries`, without the end-of-archive blocks.
pub(super) fn tar_entries(entries: &[Entry]) -> Vec<u8> {
    let mut tar = Vec::new();
    for Entry(path, typeflag, link, data) in entries {
        tar.extend_from_slice(&tar_header(path, *typeflag, link, data.len() as u64));
        tar.extend_from_slice(data);
        tar.resize(tar.len().next_multiple_of(BLOCK), 0);
    }
    tar
}

/// A complete `.tar.zst` of `entries`.
pub(super) fn archive(entries: &[Entry]) -> Vec<u8> {
    let mut tar = tar_entries(entries);
    tar.extend_from_slice(&[0; 2 * BLOCK]);
    zstd::encode_all(&tar[..], 3).expect("zstd")
}

/// A small valid release archive followed, after its end, by `zeros` bytes of zeros: tiny
/// compressed, it unpacks past the runner's 4 GiB limit.
pub(super) fn zstd_bomb(zeros: u64) -> Vec<u8> {
    let mut encoder = zstd::Encoder::new(Vec::new(), 1).expect("zstd");
    encoder
        .write_all(&tar_entries(&[Entry(
            "app.py",
            b'0',
            "",
            HOSTILE_APP.as_bytes(),
        )]))
        .expect("compress");
    let chunk = vec![0u8; 1 << 20];
    let mut left = zeros;
    while left > 0 {
        let length = left.min(chunk.len() as u64) as usize;
        encoder.write_all(&chunk[..length]).expect("compress");
        left -= length as u64;
    }
    encoder.finish().expect("compress")
}

pub(super) fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

// ---- hostile artifacts -----------------------------------------------------------------------
