//! Releases that try to stall a runner's deployment loop: an import that never ends, a
//! `uv sync` against an index that never answers, a release that floods its pipes at import,
//! and a preparation that fails for a while.

use std::net::TcpListener;
use std::time::Duration;

use super::*;
use crate::common::{TestServer, client, wait_for_job_state, wait_until};

/// The cluster every release and runner of these tests is on.
pub(super) const CLUSTER: &str = "stalls";

/// A runtime module whose import never ends.
const SLEEPS_AT_IMPORT: &str = "import time\ntime.sleep(3600)\n\n\
from tilebox.workflows import ExecutionContext, Runner, Task\n\n\
class Sleepy(Task):\n    def execute(self, context: ExecutionContext) -> None:\n        pass\n\n\
runner = Runner(tasks=[Sleepy])\n";

/// Prints 200 KB to stdout and 200 KB to stderr at import, more than a pipe holds.
const FLOODS_AT_IMPORT: &str = "import sys\nsys.stdout.write('o' * 200_000 + '\\n')\n\
sys.stderr.write('e' * 200_000 + '\\n')\nsys.stdout.flush()\nsys.stderr.flush()\n\n\
from tilebox.workflows import ExecutionContext, Runner, Task\n\n\
class Noisy(Task):\n    def execute(self, context: ExecutionContext) -> None:\n        \
context.current_task.display = 'noisy ran'\n\nrunner = Runner(tasks=[Noisy])\n";

/// The runner log's lines that mention workflow `slug` and contain `text`.
fn lines_about(log: &str, slug: &str, text: &str) -> Vec<String> {
    log.lines()
        .filter(|line| line.contains(&format!("workflow={slug} ")) && line.contains(text))
        .map(str::to_string)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn releases_that_hang_in_uv_sync_or_at_import_are_skipped_and_later_deploys_apply() {
    let server = TestServer::start();
    let mut client = client(&server).await;
    let scratch = tempfile::tempdir().expect("scratch");
    create_cluster(&mut client, CLUSTER).await;
    // An index that accepts connections and never answers.
    let black_hole = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = black_hole.local_addr().expect("address").port();
    let mut runner = start_runner(
        &server,
        CLUSTER,
        &scratch.path().join("cache"),
        scratch.path().join("runner.log"),
        &[
            "--import-timeout-seconds",
            "2",
            "--sync-timeout-seconds",
            "3",
        ],
    );

    deploy_files(
        &mut client,
        "sleepy",
        &[("app.py", SLEEPS_AT_IMPORT)],
        CLUSTER,
    )
    .await;
    let pyproject = format!(
        "[project]\nname = \"stuck\"\nversion = \"0.1.0\"\nrequires-python = \">=3.13\"\n\
         dependencies = [\"tilebox-package-that-does-not-exist\"]\n\n\
         [[tool.uv.index]]\nname = \"black-hole\"\nurl = \"http://127.0.0.1:{port}/simple\"\n\
         default = true\n"
    );
    deploy_files(
        &mut client,
        "stuck",
        &[("app.py", HOSTILE_APP), ("pyproject.toml", &pyproject)],
        CLUSTER,
    )
    .await;
    // Deployed after both: it is applied, and its tasks run.
    deploy_files(&mut client, "greeter", &[("app.py", HELLO)], CLUSTER).await;
    let job = submit_to(&server, "Hello", CLUSTER);
    let done = wait_for_job_state(&server, &job, "completed", Duration::from_secs(90));
    assert_eq!(done["tasks"][0]["display"], "hello from the good release");

    let log = runner.log();
    let sleepy = lines_about(&log, "sleepy", "skipping a release");
    assert!(
        sleepy
            .iter()
            .any(|line| line.contains("loading sleepy@") && line.contains("within 2 s")),
        "the skip names the release and the import timeout:\n{log}"
    );
    let stuck = lines_about(&log, "stuck", "skipping a release");
    assert!(
        stuck
            .iter()
            .any(|line| line.contains("`uv sync` in") && line.contains("within 3 s")),
        "the skip names the sync timeout:\n{log}"
    );
    assert!(runner.is_running(), "{log}");
    drop(black_hole);
    drop(runner);
    server.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_release_that_floods_its_pipes_at_import_loads_in_a_sub_interpreter() {
    let server = TestServer::start();
    let mut client = client(&server).await;
    let scratch = tempfile::tempdir().expect("scratch");
    create_cluster(&mut client, CLUSTER).await;
    // A timeout longer than the job's deadline: a probe blocked on a full pipe would still be
    // waiting when the deadline passes.
    let runner = start_runner(
        &server,
        CLUSTER,
        &scratch.path().join("cache"),
        scratch.path().join("runner.log"),
        &["--import-timeout-seconds", "300"],
    );
    deploy_files(
        &mut client,
        "noisy",
        &[("app.py", FLOODS_AT_IMPORT)],
        CLUSTER,
    )
    .await;
    let job = submit_to(&server, "Noisy", CLUSTER);
    let done = wait_for_job_state(&server, &job, "completed", Duration::from_secs(60));
    assert_eq!(done["tasks"][0]["display"], "noisy ran");
    let log = runner.log();
    assert!(
        log.lines()
            .any(|line| line.contains("loaded release release=noisy@")
                && line.contains("isolation=sub-interpreter")),
        "the probe finished and chose a sub-interpreter:\n{}",
        log.lines()
            .filter(|line| line.len() < 1000)
            .collect::<Vec<_>>()
            .join("\n")
    );
    drop(runner);
    server.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_release_whose_preparation_fails_for_a_while_is_loaded_without_a_redeploy() {
    let server = TestServer::start();
    let mut client = client(&server).await;
    let scratch = tempfile::tempdir().expect("scratch");
    create_cluster(&mut client, CLUSTER).await;
    let cache = scratch.path().join("cache");
    let mut runner = start_runner(
        &server,
        CLUSTER,
        &cache,
        scratch.path().join("runner.log"),
        &[],
    );
    // A permanent failure: never tried again, however often the deployments are applied.
    deploy_files(
        &mut client,
        "garbage",
        &[("app.py", "this is not python(\n")],
        CLUSTER,
    )
    .await;
    wait_until(
        "the runner to skip the release that does not import",
        Duration::from_secs(60),
        || !lines_about(&runner.log(), "garbage", "skipping a release").is_empty(),
    )
    .unwrap_or_else(|timed_out| panic!("{timed_out}\n{}", runner.log()));
    // The release cannot be put in place while a file stands where it goes.
    let digest = sha256_hex(&archive(&[Entry("app.py", b'0', "", HELLO.as_bytes())]));
    let blocker = cache.join("releases").join(&digest);
    fs_err::write(&blocker, b"not a directory").expect("blocker");
    assert_eq!(
        deploy_files(&mut client, "greeter", &[("app.py", HELLO)], CLUSTER).await,
        digest
    );
    wait_until(
        "the runner to fail to prepare the release twice",
        Duration::from_secs(60),
        || lines_about(&runner.log(), "greeter", "trying again later").len() >= 2,
    )
    .unwrap_or_else(|timed_out| panic!("{timed_out}\n{}", runner.log()));
    fs_err::remove_file(&blocker).expect("remove the blocker");
    let job = submit_to(&server, "Hello", CLUSTER);
    let done = wait_for_job_state(&server, &job, "completed", Duration::from_secs(60));
    assert_eq!(done["tasks"][0]["display"], "hello from the good release");

    let log = runner.log();
    let transient = lines_about(&log, "greeter", "trying again later");
    assert!(
        transient
            .iter()
            .all(|line| line.contains("cache I/O failed") && line.contains("retry_in=")),
        "{transient:#?}"
    );
    let permanent = lines_about(&log, "garbage", "skipping a release");
    assert!(transient.len() >= 2);
    assert_eq!(
        permanent.len(),
        1,
        "an import error is permanent and tried once:\n{log}"
    );
    assert!(permanent[0].contains("SyntaxError"), "{}", permanent[0]);
    assert!(runner.is_running(), "{log}");
    drop(runner);
    server.stop();
}
