//! Releases that try to stall a runner's deployment loop: an import that never ends, a
//! `uv sync` against an index that never answers or whose build leaves a process holding
//! uv's stderr, a release that floods its pipes at import, and a preparation that fails for
//! a while.

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

/// A runner killed with SIGKILL cleans nothing up: the python host it started for a release
/// that hangs at import ends with it all the same, instead of running on as an orphan.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_python_host_hung_at_import_ends_with_its_runner() {
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
        &["--import-timeout-seconds", "600"],
    );
    deploy_files(
        &mut client,
        "sleepy",
        &[("app.py", SLEEPS_AT_IMPORT)],
        CLUSTER,
    )
    .await;
    wait_until(
        "a python host hung in the release's import",
        Duration::from_secs(60),
        || !hosts_of(&cache).is_empty(),
    )
    .unwrap_or_else(|error| panic!("{error}\n{}", runner.log()));
    runner.kill();
    wait_until(
        "the runner's python hosts to end with it",
        Duration::from_secs(15),
        || hosts_of(&cache).is_empty(),
    )
    .unwrap_or_else(|error| panic!("{error}: {:?}", hosts_of(&cache)));
    server.stop();
}

/// The `tilebox python-host` processes working on releases in `cache`, by command line.
fn hosts_of(cache: &std::path::Path) -> Vec<String> {
    let cache = cache.display().to_string();
    let Ok(entries) = fs_err::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(Result::ok)
        .filter_map(|entry| fs_err::read(entry.path().join("cmdline")).ok())
        .map(|bytes| String::from_utf8_lossy(&bytes).replace('\0', " "))
        .filter(|command| command.contains("python-host") && command.contains(&cache))
        .collect()
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

/// A PEP 517 backend in the project whose build starts a process that holds the stderr of
/// `uv` itself (reopened through `/proc`) for an hour and writes its pid to `pid_file`; uv
/// finishes the build and exits at once.
fn daemon_backend(pid_file: &std::path::Path) -> String {
    format!(
        r#"import os
import subprocess
import zipfile


def _wheel(directory):
    daemon = subprocess.Popen(
        ["sleep", "3600"],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=open(f"/proc/{{os.getppid()}}/fd/2", "w"),
    )
    with open({pid_file:?}, "w") as pid:
        pid.write(str(daemon.pid))
    name = "daemonic-0.1.0-py3-none-any.whl"
    with zipfile.ZipFile(os.path.join(directory, name), "w") as wheel:
        info = "daemonic-0.1.0.dist-info/"
        wheel.writestr(info + "METADATA", "Metadata-Version: 2.1\nName: daemonic\nVersion: 0.1.0\n")
        wheel.writestr(
            info + "WHEEL",
            "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
        )
        wheel.writestr(info + "RECORD", "")
    return name


def build_wheel(directory, config_settings=None, metadata_directory=None):
    return _wheel(directory)


def build_editable(directory, config_settings=None, metadata_directory=None):
    return _wheel(directory)


def get_requires_for_build_wheel(config_settings=None):
    return []


def get_requires_for_build_editable(config_settings=None):
    return []
"#
    )
}

/// Whether process `pid` runs (a zombie waiting to be reaped does not).
fn running(pid: u32) -> bool {
    fs_err::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        stat.rsplit_once(") ")
            .is_some_and(|(_, rest)| !rest.starts_with('Z'))
    })
}

#[test]
fn a_process_the_sync_leaves_holding_uvs_stderr_does_not_hold_up_the_runner() {
    let server = TestServer::start();
    let scratch = tempfile::tempdir().expect("scratch");
    let pid_file = scratch.path().join("daemon.pid");
    let project = crate::common::project("daemonic", HELLO);
    fs_err::write(
        project.path().join("pyproject.toml"),
        "[project]\nname = \"daemonic\"\nversion = \"0.1.0\"\nrequires-python = \">=3.13\"\n\n\
         [build-system]\nrequires = []\nbuild-backend = \"backend\"\nbackend-path = [\".\"]\n",
    )
    .expect("pyproject.toml");
    fs_err::write(project.path().join("backend.py"), daemon_backend(&pid_file)).expect("backend");
    let job = submit_job(&server, "Hello", &[]);

    // Without a bound on reading uv's stderr the runner would wait for the hour-long process.
    let mut runner = RunnerProcess::spawn(
        crate::common::project_runner(server.url(), project.path(), &["--stop-when-idling"])
            .env("UV_NO_CACHE", "1"),
        scratch.path().join("runner.log"),
    );
    runner.wait_for_success(Duration::from_secs(120));
    let log = runner.log();
    let done = wait_for_job_state(&server, &job, "completed", Duration::from_secs(10));
    assert_eq!(
        done["tasks"][0]["display"], "hello from the good release",
        "{log}"
    );
    // The build did start the process, and the runner stopped it.
    let pid: u32 = fs_err::read_to_string(&pid_file)
        .expect("the backend ran")
        .trim()
        .parse()
        .expect("pid");
    assert!(
        log.contains("still holds its output open after it exited"),
        "{log}"
    );
    wait_until(
        format!("the left-behind process {pid} to end"),
        Duration::from_secs(10),
        || !running(pid),
    )
    .unwrap_or_else(|timed_out| panic!("{timed_out}\n{log}"));
    server.stop();
}
