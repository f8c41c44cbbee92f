//! Hostile and malformed input against the real binary: artifacts that try to escape their
//! directory or exhaust the runner, malformed `tilebox.workflow.toml`, task inputs that do
//! not decode, invalid identifiers, dependency cycles, over-limit inputs, missing or wrong
//! API keys, and runner objects that do not exist. Each ends in a clear error and changes
//! nothing it should not.

use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

use crate::common::{
    RunnerProcess, TestServer, ask, client, job_request, json_of, snapshot_settings, stderr_of,
    task_group, transcript, uuid_of_id, wait_for_job_state, wait_until,
};
use sha2::{Digest, Sha256};
use tilebox::api::convert::id;
use tilebox::api::selfhosted_v1::{
    GetArtifactRequest, UploadArtifactRequest, WatchDeploymentsRequest,
};
use tilebox::api::workflows_v1::{
    ComputedTask, CreateClusterRequest, CreateWorkflowRequest, DeployWorkflowReleaseRequest,
    GetJobRequest, JobState, ListClustersRequest, ListJobTasksRequest, NextTaskRequest,
    PublishWorkflowReleaseRequest, QueryJobsRequest, ReleaseContent, SubmitJobRequest,
    TaskIdentifier, TaskState, TaskSubmissionGroup,
};
use tilebox::client::Client;
use uuid::Uuid;

// ---- hand-made archives ----------------------------------------------------------------------

const BLOCK: usize = 512;

/// A ustar header block: mode 0644, owner 0, mtime 0, a correct checksum.
fn tar_header(path: &str, typeflag: u8, link: &str, size: u64) -> [u8; BLOCK] {
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
struct Entry<'a>(&'a str, u8, &'a str, &'a [u8]);

/// A tar stream of `entries`, without the end-of-archive blocks.
fn tar_entries(entries: &[Entry]) -> Vec<u8> {
    let mut tar = Vec::new();
    for Entry(path, typeflag, link, data) in entries {
        tar.extend_from_slice(&tar_header(path, *typeflag, link, data.len() as u64));
        tar.extend_from_slice(data);
        tar.resize(tar.len().next_multiple_of(BLOCK), 0);
    }
    tar
}

/// A complete `.tar.zst` of `entries`.
fn archive(entries: &[Entry]) -> Vec<u8> {
    let mut tar = tar_entries(entries);
    tar.extend_from_slice(&[0; 2 * BLOCK]);
    zstd::encode_all(&tar[..], 3).expect("zstd")
}

/// A small valid release archive followed, after its end, by `zeros` bytes of zeros: tiny
/// compressed, it unpacks past the runner's 4 GiB limit.
fn zstd_bomb(zeros: u64) -> Vec<u8> {
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

fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect()
}

/// The code inside every hostile archive: a valid runner, so a refusal is the archive's fault.
const HOSTILE_APP: &str = "from tilebox.workflows import ExecutionContext, Runner, Task\n\n\
class Hostile(Task):\n    def execute(self, context: ExecutionContext) -> None:\n        pass\n\n\
runner = Runner(tasks=[Hostile])\n";

const HELLO: &str = "from tilebox.workflows import ExecutionContext, Runner, Task\n\n\
class Hello(Task):\n    def execute(self, context: ExecutionContext) -> None:\n        \
context.current_task.display = 'hello from the good release'\n\nrunner = Runner(tasks=[Hello])\n";

// ---- helpers ---------------------------------------------------------------------------------

/// Every file and directory under `root`, relative, sorted.
fn tree(root: &Path) -> Vec<String> {
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

/// A job of one task `name@version` with `input`, on the default cluster.
fn one_task_job(name: &str, version: &str, input: &[u8]) -> SubmitJobRequest {
    job_request(name, version, 1, input)
}

async fn job_count(client: &mut Client) -> usize {
    client
        .jobs
        .query_jobs(QueryJobsRequest::default())
        .await
        .expect("query jobs")
        .into_inner()
        .jobs
        .len()
}

// ---- hostile artifacts -----------------------------------------------------------------------

/// A hostile artifact: its workflow slug, its bytes, and what the runner's log must say.
struct Hostile {
    slug: &'static str,
    bytes: Vec<u8>,
    reason: String,
}

async fn upload(client: &mut Client, bytes: &[u8]) -> tilebox::api::tilebox_v1::Id {
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

/// Creates workflow `slug` and publishes `bytes` as its release; answers the release id.
async fn publish(client: &mut Client, slug: &str, bytes: &[u8]) -> tilebox::api::tilebox_v1::Id {
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
            content: Some(ReleaseContent {
                fingerprint: format!("hostile-{slug}"),
                tasks: vec![TaskIdentifier {
                    name: "Hostile".into(),
                    version: "v0.0".into(),
                }],
                runner_object_path: "app:runner".into(),
                ..ReleaseContent::default()
            }),
        })
        .await
        .expect("publish")
        .into_inner()
        .id
        .expect("release id")
}

async fn deploy(
    client: &mut Client,
    slug: &str,
    release: tilebox::api::tilebox_v1::Id,
    cluster: &str,
) {
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_artifacts_are_skipped_and_the_runner_keeps_serving_good_releases() {
    let server = TestServer::start();
    let mut client = client(&server).await;
    let scratch = tempfile::Builder::new()
        .prefix("tilebox-hostile-")
        .tempdir()
        .expect("scratch");
    let cache = scratch.path().join("cache");
    let absolute_target = format!("/tmp/tilebox-pwned-{}", Uuid::new_v4());
    client
        .workflows
        .create_cluster(CreateClusterRequest {
            name: "Hostile".into(),
            slug: "hostile".into(),
            ..CreateClusterRequest::default()
        })
        .await
        .expect("create cluster");

    // A good release, published with the CLI, served before and after the hostile ones.
    let project = scratch.path().join("greeter");
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
            "hostile",
        ],
    ));
    let mut runner = RunnerProcess::spawn(
        crate::common::tilebox_command(&["runner", "start", "--cluster", "hostile", "--cache-dir"])
            .arg(&cache)
            .env("TILEBOX_API_URL", server.url()),
        scratch.path().join("runner.log"),
    );
    let submit_hello = || {
        let job = json_of(&server.tilebox(&[
            "--json",
            "job",
            "submit",
            "--name",
            "hello",
            "--task",
            "Hello",
            "--cluster",
            "hostile",
        ]));
        job["id"].as_str().expect("id").to_string()
    };
    let first = submit_hello();
    wait_for_job_state(&server, &first, "completed", Duration::from_secs(60));

    // A valid archive, to cut short and to corrupt on the server's disk.
    let filler: Vec<u8> = (0..200_000u32).flat_map(|n| n.to_le_bytes()).collect();
    let valid = archive(&[
        Entry("app.py", b'0', "", HOSTILE_APP.as_bytes()),
        Entry("data.bin", b'0', "", &filler),
    ]);
    let mut at_rest = valid.clone();
    at_rest.extend_from_slice(b"!");
    let hostile = vec![
        Hostile {
            slug: "dotdot",
            bytes: archive(&[
                Entry("app.py", b'0', "", HOSTILE_APP.as_bytes()),
                Entry("../../../pwned-dotdot", b'0', "", b"pwned"),
            ]),
            reason: "archive entry `../../../pwned-dotdot`: the path contains `..`".into(),
        },
        Hostile {
            slug: "absolute",
            bytes: archive(&[
                Entry("app.py", b'0', "", HOSTILE_APP.as_bytes()),
                Entry(&absolute_target, b'0', "", b"pwned"),
            ]),
            reason: format!("archive entry `{absolute_target}`: absolute path"),
        },
        Hostile {
            slug: "symlink",
            bytes: archive(&[
                Entry("app.py", b'0', "", HOSTILE_APP.as_bytes()),
                Entry("escape", b'2', "../../../..", b""),
            ]),
            reason: "archive entry `escape`: link target `../../../..` leaves the destination"
                .into(),
        },
        Hostile {
            slug: "device",
            bytes: archive(&[
                Entry("app.py", b'0', "", HOSTILE_APP.as_bytes()),
                Entry("null", b'3', "", b""),
            ]),
            reason: "archive entry `null`: character device entries are not allowed".into(),
        },
        Hostile {
            slug: "bomb",
            bytes: zstd_bomb((4 << 30) + (256 << 20)),
            reason: "the archive unpacks to more than 4294967296 bytes".into(),
        },
        Hostile {
            slug: "truncated",
            bytes: valid[..valid.len() / 2].to_vec(),
            reason: "the archive is truncated".into(),
        },
        Hostile {
            slug: "garbage",
            bytes: b"this is not a zstd frame, just text".to_vec(),
            reason: "cannot decompress".into(),
        },
        Hostile {
            slug: "corrupted",
            bytes: at_rest,
            reason: "refusing it".into(),
        },
    ];
    let bomb = hostile
        .iter()
        .find(|case| case.slug == "bomb")
        .expect("bomb");
    assert!(
        bomb.bytes.len() < 1 << 20,
        "the bomb is small: {} bytes",
        bomb.bytes.len()
    );
    for case in &hostile {
        let release = publish(&mut client, case.slug, &case.bytes).await;
        if case.slug == "corrupted" {
            // Flip a byte of the stored artifact: the server now serves wrong bytes.
            let stored = server
                .data_dir()
                .join("artifacts")
                .join(sha256_hex(&case.bytes));
            let mut bytes = fs_err::read(&stored).expect("stored artifact");
            let last = bytes.len() - 1;
            bytes[last] ^= 0xff;
            fs_err::write(&stored, bytes).expect("corrupt the stored artifact");
        }
        deploy(&mut client, case.slug, release, "hostile").await;
    }

    // Each is reported as skipped, with its workflow and the reason, on one line: a skipped
    // release shows only in the runner's log.
    let skipped = |log: &str, slug: &str| -> Option<String> {
        log.lines()
            .find(|line| {
                line.contains("skipping a release that cannot be loaded")
                    && line.contains(&format!("workflow={slug} "))
            })
            .map(str::to_string)
    };
    wait_until(
        "the runner to skip every hostile release",
        Duration::from_secs(180),
        || {
            let log = runner.log();
            hostile
                .iter()
                .all(|case| skipped(&log, case.slug).is_some())
        },
    )
    .unwrap_or_else(|timed_out| panic!("{timed_out}\n{}", runner.log()));
    let log_text = runner.log();
    for case in &hostile {
        let line = skipped(&log_text, case.slug).expect("reported");
        assert!(
            line.contains(&case.reason),
            "{}: the skip line must say why ({:?}):\n{line}",
            case.slug,
            case.reason
        );
    }
    assert!(
        runner.is_running(),
        "the runner survives hostile releases:\n{log_text}"
    );

    // The good release still runs tasks.
    let second = submit_hello();
    let done = wait_for_job_state(&server, &second, "completed", Duration::from_secs(60));
    assert_eq!(done["tasks"][0]["display"], "hello from the good release");
    assert!(runner.is_running(), "{}", runner.log());
    drop(runner);

    // Nothing escaped, and no hostile release left anything in the cache.
    assert!(
        !Path::new(&absolute_target).exists(),
        "{absolute_target} was written"
    );
    let everything = tree(scratch.path());
    let escaped: Vec<&String> = everything
        .iter()
        .filter(|path| path.contains("pwned"))
        .collect();
    assert!(escaped.is_empty(), "{escaped:?}");
    for case in &hostile {
        let digest = sha256_hex(&case.bytes);
        let leftovers: Vec<&String> = everything
            .iter()
            .filter(|path| path.starts_with("cache/releases/") && path.contains(&digest))
            .collect();
        assert!(
            leftovers.is_empty(),
            "{}: a refused release leaves nothing behind in the cache: {leftovers:?}",
            case.slug
        );
    }
    server.stop();
}

// ---- malformed configuration -----------------------------------------------------------------

#[test]
fn malformed_workflow_configs_are_refused_with_file_line_and_column_and_nothing_is_written() {
    const VALID: &str = "[workflow]\nslug = \"greeter\"\nrunner = \"app:runner\"\n\n[build]\ninclude = [\"app.py\"]\n";
    let _snapshots = snapshot_settings().bind_to_scope();
    // What is wrong, and the config's text. The errors (`error: FILE:LINE:COLUMN: ...`) are
    // in the snapshot `malformed_workflow_configs`.
    let cases: Vec<(&str, Vec<u8>)> = vec![
        (
            "an unknown key in [workflow]",
            VALID
                .replace("runner = ", "colour = \"blue\"\nrunner = ")
                .into(),
        ),
        (
            "an unknown table",
            format!("{VALID}\n[deploy]\nclusters = [\"x\"]\n").into(),
        ),
        (
            "an unknown key in [targets.dev]",
            format!("{VALID}\n[targets.dev]\ncluster = [\"x\"]\n").into(),
        ),
        (
            "an unknown key in [build]",
            VALID.replace("include", "includes").into(),
        ),
        (
            "a TOML syntax error",
            VALID
                .replace("slug = \"greeter\"", "slug = \"greeter")
                .into(),
        ),
        (
            "a wrong type",
            VALID.replace("slug = \"greeter\"", "slug = 5").into(),
        ),
        (
            "an invalid slug",
            VALID.replace("\"greeter\"", "\"no spaces allowed\"").into(),
        ),
        (
            "a runner that is not module:object",
            VALID.replace("app:runner", "app.runner").into(),
        ),
        (
            "an include that leaves the project",
            VALID.replace("\"app.py\"", "\"../outside.py\"").into(),
        ),
        (
            "a file that is not UTF-8",
            b"[workflow]\nslug = \"\xff\xfe\"\n".to_vec(),
        ),
    ];
    let mut errors = String::new();
    for (what, text) in cases {
        let project = tempfile::tempdir().expect("project");
        fs_err::write(project.path().join("app.py"), HELLO).expect("app.py");
        fs_err::write(project.path().join("tilebox.workflow.toml"), &text).expect("config");
        let before = tree(project.path());
        let output = crate::common::tilebox_command(&["workflow", "build-release"])
            .arg(project.path())
            .arg("--cache-dir")
            .arg(project.path().join("cache"))
            .output()
            .expect("build-release");
        let stderr = stderr_of(&output);
        let text = String::from_utf8_lossy(&text);
        assert_eq!(output.status.code(), Some(1), "{what}:\n{text}\n{stderr}");
        assert_eq!(tree(project.path()), before, "nothing is written: {what}");
        errors.push_str(&format!("# {what}\n{stderr}\n"));
    }
    insta::assert_snapshot!("malformed_workflow_configs", errors);
}

// ---- task inputs -----------------------------------------------------------------------------

const COUNTER: &str = "from tilebox.workflows import ExecutionContext, Runner, Task\n\n\
class Count(Task):\n    n: int\n\n    def execute(self, context: ExecutionContext) -> None:\n        \
context.current_task.display = f'counted {self.n}'\n\nrunner = Runner(tasks=[Count])\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn undecodable_task_inputs_fail_the_task_as_a_workflow_error_with_the_decode_message() {
    let server = TestServer::start_with(&["--long-poll-ms", "300"]);
    let project = crate::common::project("counter", COUNTER);
    let submit = |input: &str, retries: &str| {
        let job = json_of(&server.tilebox(&[
            "--json",
            "job",
            "submit",
            "--name",
            "count",
            "--task",
            "Count",
            "--input",
            input,
            "--max-retries",
            retries,
        ]));
        job["id"].as_str().expect("id").to_string()
    };
    let good = submit("7", "0");
    let wrong_type = submit("abc", "0");
    let wrong_type_retried = submit("abc", "1");
    let mut client = client(&server).await;
    let not_json = client
        .jobs
        .submit_job(one_task_job("Count", "v0.0", b"\xff"))
        .await
        .expect("the server never decodes inputs")
        .into_inner();
    let not_json = uuid_of_id(not_json.id.as_ref()).to_string();

    let output =
        crate::common::tilebox_command(&["runner", "start", "--stop-when-idling", "--project"])
            .arg(project.path())
            .arg("--cache-dir")
            .arg(project.path().join(".cache"))
            .env("TILEBOX_API_URL", server.url())
            .output()
            .expect("runner");
    let log = stderr_of(&output);
    assert!(output.status.success(), "{log}");

    let done = wait_for_job_state(&server, &good, "completed", Duration::from_secs(10));
    assert_eq!(done["tasks"][0]["display"], "counted 7");
    let failed_task = |job: &str| {
        let failed = wait_for_job_state(&server, job, "failed", Duration::from_secs(10));
        let task = failed["tasks"][0].clone();
        assert_eq!(task["state"], "failed", "{failed}\n{log}");
        task
    };
    let decode_message = "ValidationError('Expected `int`, got `str`')";
    let task = failed_task(&wrong_type);
    assert_eq!(task["display"], format!("Count\n{decode_message}"));
    assert_eq!(task["retry_count"], 0);

    // A workflow error uses up the retries (a runner fault would not).
    let task = failed_task(&wrong_type_retried);
    assert_eq!(task["retry_count"], 1, "{task}");
    let display = task["display"].as_str().expect("display");
    let mut lines = display.lines();
    assert_eq!(lines.next(), Some("Count"), "{display}");
    assert!(
        lines.all(|line| line == decode_message),
        "every attempt failed decoding: {display}"
    );

    let task = failed_task(&not_json);
    let display = task["display"].as_str().expect("display");
    assert!(
        display.starts_with("Count\nDecodeError('JSON is malformed: "),
        "{display}"
    );
    // The runner's log reports the failure as well; that line is its only trace there.
    assert!(
        log.contains("task failed: DecodeError: JSON is malformed"),
        "{log}"
    );
}

// ---- identifiers, cycles, limits -------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identifiers_with_bad_versions_or_names_are_refused_and_nothing_is_stored() {
    let server = TestServer::start();
    let mut client = client(&server).await;
    let long_name = "n".repeat(257);
    let cases = [
        ("Leaf", "", "has version ``; expected the form vMAJOR.MINOR"),
        ("Leaf", "v1", "has version `v1`"),
        ("Leaf", "1.0", "has version `1.0`"),
        ("Leaf", "v1.0.0", "has version `v1.0.0`"),
        ("Leaf", "v1.x", "has version `v1.x`"),
        ("Leaf", "v-1.0", "has version `v-1.0`"),
        ("Leaf", "v+1.0", "has version `v+1.0`"),
        ("Leaf", "V1.0", "has version `V1.0`"),
        ("Leaf", "v1.0 ", "has version `v1.0 `"),
        (
            "Leaf",
            "v99999999999999999999.0",
            "has version `v99999999999999999999.0`",
        ),
        ("", "v1.0", "name must be 1 to 256 bytes, got 0 bytes"),
        (long_name.as_str(), "v1.0", "got 257 bytes"),
    ];
    for (name, version, message) in cases {
        let status = client
            .jobs
            .submit_job(one_task_job(name, version, b""))
            .await
            .expect_err("refused");
        assert_eq!(
            status.code(),
            tonic::Code::InvalidArgument,
            "{name:?}@{version:?}"
        );
        assert!(
            status.message().contains(message),
            "{name:?}@{version:?}: {}",
            status.message()
        );
        // A runner advertising it is refused the same way.
        let status = client
            .tasks
            .next_task(NextTaskRequest {
                computed_task: None,
                next_task_to_run: ask(name, version),
            })
            .await
            .expect_err("refused");
        assert_eq!(status.code(), tonic::Code::InvalidArgument);
        assert!(status.message().contains(message), "{}", status.message());
    }
    assert_eq!(job_count(&mut client).await, 0, "nothing was stored");

    let submit = [
        "job",
        "submit",
        "--name",
        "x",
        "--task",
        "Leaf",
        "--version",
        "1.0",
    ];
    let output = server.tilebox(&submit);
    assert_eq!(output.status.code(), Some(1), "{}", stderr_of(&output));
    let _snapshots = snapshot_settings().bind_to_scope();
    insta::assert_snapshot!("submit_with_a_bad_version", transcript(&submit, &output));
    assert_eq!(job_count(&mut client).await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dependency_cycles_are_refused_at_submission_and_fail_a_task_that_submits_them() {
    let server = TestServer::start_with(&["--long-poll-ms", "200"]);
    let mut client = client(&server).await;
    let with_groups = |groups: Vec<TaskSubmissionGroup>| {
        let mut job = one_task_job("Leaf", "v0.0", b"");
        job.tasks.as_mut().expect("tasks").task_groups = groups;
        job
    };
    let cases = [
        (
            vec![task_group(&[0], 1, b"")],
            "task group 0 depends on itself",
        ),
        (
            vec![
                task_group(&[2], 1, b""),
                task_group(&[0], 1, b""),
                task_group(&[1], 1, b""),
            ],
            "the dependencies between task groups form a cycle",
        ),
        (
            vec![
                task_group(&[], 1, b""),
                task_group(&[2], 1, b""),
                task_group(&[1], 1, b""),
            ],
            "the dependencies between task groups form a cycle",
        ),
        (
            vec![task_group(&[1], 1, b"")],
            "task group 0 depends on group 1, which does not exist",
        ),
    ];
    for (groups, message) in cases {
        let status = client
            .jobs
            .submit_job(with_groups(groups))
            .await
            .expect_err("refused");
        assert_eq!(status.code(), tonic::Code::InvalidArgument);
        assert!(
            status.message().contains(message),
            "expected {message:?}: {}",
            status.message()
        );
    }
    assert_eq!(job_count(&mut client).await, 0, "nothing was stored");

    // A task whose result submits a cycle fails, with the reason; no subtask is stored.
    let job = client
        .jobs
        .submit_job(one_task_job("Parent", "v0.0", b""))
        .await
        .expect("submit")
        .into_inner();
    let job = uuid_of_id(job.id.as_ref());
    let task = client
        .tasks
        .next_task(NextTaskRequest {
            computed_task: None,
            next_task_to_run: ask("Parent", "v0.0"),
        })
        .await
        .expect("claim")
        .into_inner()
        .next_task
        .expect("a task");
    let mut cyclic = one_task_job("Leaf", "v0.0", b"").tasks.expect("tasks");
    cyclic.task_groups = vec![task_group(&[1], 2, b""), task_group(&[0], 2, b"")];
    client
        .tasks
        .next_task(NextTaskRequest {
            computed_task: Some(ComputedTask {
                id: task.id,
                display: "Parent".into(),
                sub_tasks: Some(cyclic),
                ..ComputedTask::default()
            }),
            next_task_to_run: None,
        })
        .await
        .expect("the report is answered; the task fails instead");
    let state = client
        .jobs
        .get_job(GetJobRequest {
            job_id: Some(id(job)),
        })
        .await
        .expect("job")
        .into_inner();
    assert_eq!(state.state(), JobState::Failed);
    let stats = state.execution_stats.expect("stats");
    assert_eq!(stats.total_tasks, 1, "no subtask was stored");
    let tasks = client
        .jobs
        .list_job_tasks(ListJobTasksRequest {
            job_id: Some(id(job)),
            ..ListJobTasksRequest::default()
        })
        .await
        .expect("tasks")
        .into_inner()
        .page
        .expect("page")
        .tasks;
    assert_eq!(tasks[0].state(), TaskState::Failed);
    assert!(
        tasks[0].display.starts_with("Parent\nInvalidSubtasks(")
            && tasks[0].display.contains("form a cycle"),
        "{}",
        tasks[0].display
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inputs_over_the_limit_are_refused_at_submission_and_fail_a_task_that_submits_them() {
    let server = TestServer::start_with(&["--max-input-bytes", "64", "--long-poll-ms", "200"]);
    let mut client = client(&server).await;
    let status = client
        .jobs
        .submit_job(one_task_job("Leaf", "v0.0", &[b'x'; 65]))
        .await
        .expect_err("refused");
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    assert!(
        status
            .message()
            .contains("task group 0, task 0: input is 65 bytes; the limit is 64"),
        "{}",
        status.message()
    );
    // One big input among small ones refuses the whole job.
    let mut mixed = one_task_job("Leaf", "v0.0", b"1");
    mixed.tasks.as_mut().expect("tasks").task_groups[0]
        .inputs
        .push(vec![b'y'; 1000]);
    let group = &mut mixed.tasks.as_mut().expect("tasks").task_groups[0];
    for pointers in [
        &mut group.identifier_pointers,
        &mut group.cluster_slug_pointers,
        &mut group.display_pointers,
    ] {
        pointers.push(0);
    }
    group.max_retries_values.push(0);
    group.optional_values.push(false);
    let status = client.jobs.submit_job(mixed).await.expect_err("refused");
    assert!(
        status.message().contains("task 1: input is 1000 bytes"),
        "{}",
        status.message()
    );
    let big = "z".repeat(100);
    let submit = [
        "job", "submit", "--name", "big", "--task", "Leaf", "--input", &big,
    ];
    let cli = server.tilebox(&submit);
    assert_eq!(cli.status.code(), Some(1), "{}", stderr_of(&cli));
    let _snapshots = snapshot_settings().bind_to_scope();
    insta::assert_snapshot!("submit_over_the_input_limit", transcript(&submit, &cli));
    assert_eq!(job_count(&mut client).await, 0, "nothing was stored");

    // Exactly at the limit is fine.
    client
        .jobs
        .submit_job(one_task_job("Parent", "v0.0", &[b'7'; 64]))
        .await
        .expect("64 bytes are accepted");
    // A subtask over the limit fails the task that submitted it.
    let task = client
        .tasks
        .next_task(NextTaskRequest {
            computed_task: None,
            next_task_to_run: ask("Parent", "v0.0"),
        })
        .await
        .expect("claim")
        .into_inner()
        .next_task
        .expect("a task");
    let job = uuid_of_id(task.job.as_ref().and_then(|job| job.id.as_ref()));
    let oversized = one_task_job("Leaf", "v0.0", &[b'x'; 65]).tasks;
    client
        .tasks
        .next_task(NextTaskRequest {
            computed_task: Some(ComputedTask {
                id: task.id,
                display: "Parent".into(),
                sub_tasks: oversized,
                ..ComputedTask::default()
            }),
            next_task_to_run: None,
        })
        .await
        .expect("answered");
    let state = client
        .jobs
        .get_job(GetJobRequest {
            job_id: Some(id(job)),
        })
        .await
        .expect("job")
        .into_inner();
    assert_eq!(state.state(), JobState::Failed);
    assert_eq!(state.execution_stats.expect("stats").total_tasks, 1);
    let tasks = client
        .jobs
        .list_job_tasks(ListJobTasksRequest {
            job_id: Some(id(job)),
            ..ListJobTasksRequest::default()
        })
        .await
        .expect("tasks")
        .into_inner()
        .page
        .expect("page")
        .tasks;
    assert!(
        tasks[0]
            .display
            .contains("input is 65 bytes; the limit is 64"),
        "{}",
        tasks[0].display
    );
}

// ---- authentication --------------------------------------------------------------------------

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
