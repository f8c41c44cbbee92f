//! `tilebox dev`: the real binary serving a project copied to a temp dir, the official SDK's
//! script and runners against it, and reloads after edits (good, broken, fixed) while it runs.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use fs_err as fs;
use serde_json::Value;

use crate::common::{example, http_get_url, json_of, tilebox_command, wait_for_exit, wait_until};

/// How long dev may take to print its API address, and to load the project (a first
/// `uv sync` of the parallel-sleep example included).
const READY_TIMEOUT: Duration = Duration::from_secs(180);
/// How long a reload (or a failed one) may take to be told.
const RELOAD_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a job may take to complete.
const JOB_TIMEOUT: Duration = Duration::from_secs(60);

/// A `tilebox dev DIR --listen 127.0.0.1:0` process; stdout and stderr go to files (so no
/// pipe fills); killed when dropped.
struct Dev {
    child: Child,
    url: String,
    stdout: PathBuf,
    stderr: PathBuf,
    _logs: tempfile::TempDir,
}

impl Dev {
    /// Starts dev on `project` and waits until it has loaded the project (`ready:`).
    fn start(project: &Path) -> Self {
        Self::start_with(project, &[])
    }

    /// [`Dev::start`] with more arguments.
    fn start_with(project: &Path, args: &[&str]) -> Self {
        let mut dev = Self::spawn(project, args, &[]);
        dev.wait_for_stdout("the ready line", READY_TIMEOUT, |out| {
            out.lines().any(|line| line.starts_with("ready: "))
        });
        dev.url = dev
            .stdout()
            .lines()
            .find_map(|line| line.strip_prefix("API      "))
            .expect("dev prints `API      URL`")
            .trim()
            .to_string();
        assert!(dev.url.starts_with("http://127.0.0.1:"), "{}", dev.url);
        dev
    }

    /// Starts dev on `project` with `args` and `environment`, without waiting for anything.
    fn spawn(project: &Path, args: &[&str], environment: &[(&str, &Path)]) -> Self {
        let logs = tempfile::tempdir().expect("temp dir");
        let stdout = logs.path().join("dev.stdout");
        let stderr = logs.path().join("dev.stderr");
        let child = tilebox_command(&["dev"])
            .arg(project)
            .args(["--listen", "127.0.0.1:0", "--cache-dir"])
            .arg(logs.path().join("cache"))
            .args(args)
            .envs(environment.iter().copied())
            .stdout(fs::File::create(&stdout).expect("stdout file").into_file())
            .stderr(fs::File::create(&stderr).expect("stderr file").into_file())
            .spawn()
            .expect("cannot start `tilebox dev`");
        Self {
            child,
            url: String::new(),
            stdout,
            stderr,
            _logs: logs,
        }
    }

    fn stdout(&self) -> String {
        fs::read_to_string(&self.stdout).unwrap_or_default()
    }

    fn stderr(&self) -> String {
        fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    /// Waits until dev's stdout satisfies `condition`; panics with both streams otherwise.
    fn wait_for_stdout(&mut self, what: &str, timeout: Duration, condition: impl Fn(&str) -> bool) {
        let result = wait_until(what, timeout, || {
            condition(&self.stdout()) || self.child.try_wait().expect("poll dev").is_some()
        });
        let exited = self.child.try_wait().expect("poll dev");
        if result.is_err() || (exited.is_some() && !condition(&self.stdout())) {
            panic!(
                "waiting for {what}: {result:?}, exit {exited:?}\n--- stdout ---\n{}\n--- stderr ---\n{}",
                self.stdout(),
                self.stderr()
            );
        }
    }

    /// Waits until dev's stdout has `count` lines starting with `reloaded: `.
    fn wait_for_reloads(&mut self, count: usize) {
        self.wait_for_stdout(&format!("reload {count}"), RELOAD_TIMEOUT, |out| {
            out.lines()
                .filter(|line| line.starts_with("reloaded: "))
                .count()
                >= count
        });
    }

    /// Runs the CLI against dev's server.
    fn tilebox(&self, args: &[&str]) -> Output {
        tilebox_command(args)
            .env("TILEBOX_API_URL", &self.url)
            .output()
            .expect("cannot run the tilebox binary")
    }

    fn submit(&self, task: &str, input: &str) -> String {
        let job = json_of(&self.tilebox(&[
            "--json", "job", "submit", "--name", "dev", "--task", task, "--input", input,
        ]));
        job["id"].as_str().expect("the job's id").to_string()
    }

    fn job(&self, id: &str) -> Value {
        json_of(&self.tilebox(&["--json", "job", "get", id]))
    }

    /// Waits until job `id` is in `state`; answers its document.
    fn wait_for_job(&self, id: &str, state: &str) -> Value {
        let mut last = Value::Null;
        wait_until(format!("job {id} to be {state}"), JOB_TIMEOUT, || {
            last = self.job(id);
            last["state"] == state
        })
        .unwrap_or_else(|timed_out| {
            panic!(
                "{timed_out}; it is:\n{last:#}\n--- dev stderr ---\n{}",
                self.stderr()
            )
        });
        last
    }

    /// SIGTERM; dev stops its runner and server and exits 0.
    fn stop(mut self) {
        crate::common::signal(self.child.id(), "-TERM");
        let status = wait_for_exit(&mut self.child, "dev to exit after SIGTERM", JOB_TIMEOUT)
            .unwrap_or_else(|timed_out| panic!("{timed_out}\n{}", self.stderr()));
        assert!(
            status.success(),
            "dev exited with {status}:\n{}",
            self.stderr()
        );
    }
}

impl Drop for Dev {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `uv run ARGS` in `project` against `url`, with the embedded Python for uv.
fn uv_run(project: &Path, url: &str, program: &str, args: &[&str]) -> Output {
    let python = tilebox::python::environment::EMBEDDED_PYTHON.expect("embedded python");
    let mut command = if program == "uv" {
        Command::new("uv")
    } else {
        tilebox_command(&[])
    };
    command
        .args(args)
        .current_dir(project)
        .env("TILEBOX_API_URL", url)
        .env_remove("TILEBOX_API_KEY")
        .env("UV_PYTHON", python)
        .env("UV_PYTHON_DOWNLOADS", "never")
        .stdin(Stdio::null())
        .output()
        .expect("cannot run uv")
}

fn assert_success(output: &Output) {
    assert!(
        output.status.success(),
        "failed ({}):\n{}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

#[test]
fn dev_serves_the_parallel_sleep_guide_to_its_script_and_the_sdk_runners() {
    let project = example("parallel-sleep");
    let dev = Dev::start(project.path());
    let out = dev.stdout();
    assert!(
        out.contains(&format!("export TILEBOX_API_URL={}", dev.url)),
        "{out}"
    );
    assert!(
        out.contains("tasks    ParallelSleepWorkflow@v0.0, SleepTask@v0.0"),
        "{out}"
    );
    assert!(
        project.path().join(".tilebox/data").is_dir(),
        "the server's data is under .tilebox/"
    );

    // The guide's script submits; dev's own runner runs the job.
    let submitted = uv_run(
        project.path(),
        &dev.url,
        "uv",
        &[
            "run",
            "parallel_workflow.py",
            "--submit",
            "--count",
            "5",
            "--seconds",
            "0.2",
        ],
    );
    assert_success(&submitted);
    let id = String::from_utf8_lossy(&submitted.stdout)
        .lines()
        .find_map(|line| line.strip_prefix("Submitted job: "))
        .expect("the script prints the job id")
        .trim()
        .to_string();
    let done = dev.wait_for_job(&id, "completed");
    assert_eq!(done["execution_stats"]["tasks_by_state"]["computed"], 6);
    // Its "Open in Console" line is this server's page of the job.
    let console = String::from_utf8_lossy(&submitted.stdout)
        .lines()
        .find_map(|line| line.strip_prefix("Open in Console: "))
        .expect("the script prints the job's console page")
        .trim()
        .to_string();
    assert_eq!(console, format!("{}/jobs/{id}", dev.url));
    let page = http_get_url(&console);
    assert_eq!(page.status, 200, "{}", page.text());
    assert!(page.text().contains("6 tasks"), "{}", page.text());

    // The official SDK's runners join in; whoever takes the tasks, the job completes.
    let second = dev.submit("ParallelSleepWorkflow", r#"{"count": 5, "seconds": 0.2}"#);
    let runners = uv_run(
        project.path(),
        &dev.url,
        "tilebox",
        &[
            "parallel",
            "-n",
            "5",
            "--",
            "uv",
            "run",
            "parallel_workflow.py",
        ],
    );
    assert_success(&runners);
    let done = dev.wait_for_job(&second, "completed");
    assert_eq!(done["execution_stats"]["tasks_by_state"]["computed"], 6);

    // A dependency file changes: the environment is synced again before the reload.
    let pyproject = project.path().join("pyproject.toml");
    let mut text = fs::read_to_string(&pyproject).expect("pyproject.toml");
    text.push_str("# edited while tilebox dev runs\n");
    fs::write(&pyproject, text).expect("pyproject.toml");
    let mut dev = dev;
    dev.wait_for_reloads(1);
    assert!(
        dev.stdout().contains(
            "reloaded: 2 tasks (ParallelSleepWorkflow@v0.0, SleepTask@v0.0), environment synced"
        ),
        "{}",
        dev.stdout()
    );
    dev.stop();
}

/// A task that shows which code ran it and waits for its gate file, so a test decides when
/// it ends. The display text is what edits change. (Two fields, so `job submit --input`
/// takes a JSON object.)
fn gate_app(display: &str) -> String {
    format!(
        r#"import pathlib
import time

from tilebox.workflows import ExecutionContext, Runner, Task


class Gate(Task):
    path: str
    note: str

    def execute(self, context: ExecutionContext) -> None:
        context.current_task.display = "{display}"
        deadline = time.monotonic() + 120
        while not pathlib.Path(self.path).exists() and time.monotonic() < deadline:
            time.sleep(0.02)


runner = Runner(tasks=[Gate])
"#
    )
}

fn gate_project(display: &str) -> tempfile::TempDir {
    let project = crate::common::project("dev-gate", &gate_app(display));
    // Built releases of it must not carry what dev keeps in `.tilebox/`.
    let config = project.path().join("tilebox.workflow.toml");
    let text = fs::read_to_string(&config).expect("config");
    fs::write(
        &config,
        text.replace("include = [\"app.py\"]", "include = [\"**\"]"),
    )
    .expect("config");
    project
}

fn gate_input(path: &Path) -> String {
    serde_json::json!({ "path": path, "note": "gate" }).to_string()
}

fn display_of(job: &Value) -> String {
    job["tasks"][0]["display"]
        .as_str()
        .unwrap_or_else(|| panic!("a display in {job:#}"))
        .to_string()
}

#[test]
fn dev_reloads_an_edit_while_a_running_task_finishes_on_the_old_code() {
    let project = gate_project("old code");
    let mut dev = Dev::start(project.path());
    let gates = tempfile::tempdir().expect("gates");
    let running = dev.submit("Gate", &gate_input(&gates.path().join("first")));
    wait_until("the first task to run", JOB_TIMEOUT, || {
        dev.job(&running)["tasks"][0]["state"] == "running"
    })
    .unwrap();

    // Same length and, as an editor saving within a second may leave it, the same mtime:
    // CPython's bytecode cache of the old code would pass its check (size and whole seconds).
    let app = project.path().join("app.py");
    let modified = fs::metadata(&app)
        .and_then(|meta| meta.modified())
        .expect("mtime");
    fs::write(&app, gate_app("new code")).expect("edit app.py");
    fs::File::options()
        .write(true)
        .open(&app)
        .and_then(|file| file.file().set_modified(modified))
        .expect("keep app.py's mtime");
    dev.wait_for_reloads(1);
    assert!(
        dev.stdout().contains("reloaded: 1 task (Gate@v0.0)"),
        "{}",
        dev.stdout()
    );

    fs::write(gates.path().join("second"), "").expect("gate");
    let after = dev.submit("Gate", &gate_input(&gates.path().join("second")));
    assert_eq!(
        display_of(&dev.wait_for_job(&after, "completed")),
        "new code"
    );
    assert_eq!(
        dev.job(&running)["tasks"][0]["state"],
        "running",
        "the task that ran during the edit is still running"
    );
    fs::write(gates.path().join("first"), "").expect("gate");
    assert_eq!(
        display_of(&dev.wait_for_job(&running, "completed")),
        "old code",
        "a task running during the edit finishes on the old code"
    );

    // What dev keeps in `.tilebox/` never goes into a release.
    assert!(project.path().join(".tilebox/data").is_dir());
    let built = json_of(
        &tilebox_command(&["--json", "workflow", "build-release"])
            .current_dir(project.path())
            .env("XDG_CACHE_HOME", gates.path().join("cache"))
            .output()
            .expect("build-release"),
    );
    let files: Vec<&str> = built["files"]
        .as_array()
        .expect("files")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert!(files.contains(&"app.py"), "{files:?}");
    assert!(
        files.iter().all(|file| !file.starts_with(".tilebox/")),
        "{files:?}"
    );
    dev.stop();
}

#[test]
fn a_broken_edit_keeps_the_last_good_code_until_it_is_fixed() {
    let project = gate_project("good code");
    let mut dev = Dev::start(project.path());
    let gates = tempfile::tempdir().expect("gates");
    let gate = gates.path().join("open");
    fs::write(&gate, "").expect("gate");

    let broken = gate_app("broken").replace("class Gate(Task):", "class Gate(Task:");
    fs::write(project.path().join("app.py"), broken).expect("break app.py");
    // The hint ends the error's block.
    wait_until("the load error", RELOAD_TIMEOUT, || {
        dev.stderr()
            .contains("hint: still running the last good code")
    })
    .unwrap_or_else(|timed_out| panic!("{timed_out}\n{}", dev.stderr()));
    let stderr = dev.stderr();
    assert!(
        stderr.contains("error: cannot load the project"),
        "{stderr}"
    );
    assert!(stderr.contains("SyntaxError"), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "File \"{}\"",
            project.path().join("app.py").display()
        )),
        "the error names the file: {stderr}"
    );
    assert!(!dev.stdout().contains("reloaded: "), "{}", dev.stdout());

    let job = dev.submit("Gate", &gate_input(&gate));
    assert_eq!(
        display_of(&dev.wait_for_job(&job, "completed")),
        "good code",
        "the last good code still runs"
    );

    fs::write(project.path().join("app.py"), gate_app("fixed code")).expect("fix app.py");
    dev.wait_for_reloads(1);
    let job = dev.submit("Gate", &gate_input(&gate));
    assert_eq!(
        display_of(&dev.wait_for_job(&job, "completed")),
        "fixed code"
    );
    dev.stop();
}

#[test]
fn dev_refuses_a_network_address_and_a_directory_without_a_project() {
    let project = gate_project("unused");
    let output = tilebox_command(&["dev"])
        .arg(project.path())
        .args(["--listen", "0.0.0.0:0"])
        .output()
        .expect("tilebox dev");
    assert_eq!(output.status.code(), Some(1), "{output:?}");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("refusing to listen on the non-loopback address 0.0.0.0:0"),
        "{stderr}"
    );
    assert!(
        !project.path().join(".tilebox").exists(),
        "nothing is created"
    );

    let empty = tempfile::tempdir().expect("temp dir");
    let output = tilebox_command(&["dev"])
        .arg(empty.path())
        .args(["--listen", "127.0.0.1:0"])
        .output()
        .expect("tilebox dev");
    assert_eq!(output.status.code(), Some(1), "{output:?}");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("tilebox.workflow.toml"), "{stderr}");
    assert!(stderr.contains("hint: `tilebox workflow init`"), "{stderr}");
    assert!(
        !empty.path().join(".tilebox").exists(),
        "nothing is created"
    );
}

#[test]
fn a_project_from_init_without_a_server_runs_under_dev() {
    let directory = tempfile::tempdir().expect("temp dir");
    let project = directory.path().join("scene-qa");
    // No server anywhere: the URL points at a closed port.
    let init = tilebox_command(&["workflow", "init", "--no-server", "--name", "Scene QA"])
        .arg(&project)
        .env("TILEBOX_API_URL", "http://127.0.0.1:9")
        .env("XDG_CACHE_HOME", directory.path().join("cache"))
        .output()
        .expect("tilebox");
    assert_success(&init);
    let said = String::from_utf8_lossy(&init.stdout);
    assert!(said.contains("without a server"), "{said}");
    let dev = Dev::start(&project);
    assert!(dev.stdout().contains("HelloTask@v0.0"), "{}", dev.stdout());
    let job = dev.submit("HelloTask", "Ada");
    let done = dev.wait_for_job(&job, "completed");
    assert_eq!(display_of(&done), "Hello Ada");
    dev.stop();
}

/// Writes `content` to `path` and puts its mtime back, as an editor saving twice within a
/// second may leave it (CPython's bytecode check, size and whole seconds, then passes).
fn write_keeping_mtime(path: &Path, content: &str) {
    let modified = fs::metadata(path)
        .and_then(|meta| meta.modified())
        .expect("mtime");
    fs::write(path, content).expect("write");
    fs::File::options()
        .write(true)
        .open(path)
        .and_then(|file| file.file().set_modified(modified))
        .expect("keep the mtime");
}

/// How many polls dev's watch found nothing changed (told at `--log-level trace`).
fn unchanged_polls(dev: &Dev) -> usize {
    dev.stderr()
        .matches("the watched files are unchanged")
        .count()
}

/// Waits until the watch has compared the files twice more (so at least once wholly after
/// now) and found nothing to load.
fn wait_for_two_quiet_polls(dev: &Dev) {
    let seen = unchanged_polls(dev);
    wait_until(
        "two polls that find nothing changed",
        RELOAD_TIMEOUT,
        || unchanged_polls(dev) >= seen + 2,
    )
    .unwrap_or_else(|timed_out| {
        panic!(
            "{timed_out}\n--- stdout ---\n{}\n--- stderr (tail) ---\n{}",
            dev.stdout(),
            tail(&dev.stderr())
        )
    });
}

fn tail(text: &str) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}

#[test]
fn editor_temporaries_neither_reload_nor_block_a_reload() {
    let project = gate_project("first code");
    let mut dev = Dev::start_with(project.path(), &["--log-level", "trace"]);
    let root = project.path();
    // A modified Emacs buffer: a lock symlink to `user@host.pid:boot`, which does not exist.
    fs::os::unix::fs::symlink("ada@laptop.4242:1700000000", root.join(".#app.py"))
        .expect("emacs lock");
    // Vim: its swap file, its write probe; and a backup.
    fs::write(root.join(".app.py.swp"), "swap 1").expect("swap");
    fs::write(root.join("4913"), "").expect("probe");
    fs::write(root.join("app.py~"), gate_app("backup")).expect("backup");
    wait_for_two_quiet_polls(&dev);
    // The swap file is rewritten while the user types.
    fs::write(root.join(".app.py.swp"), "swap 2, longer").expect("swap");
    wait_for_two_quiet_polls(&dev);
    let stderr = dev.stderr();
    assert!(!stderr.contains("error: cannot load"), "{}", tail(&stderr));
    assert!(!dev.stdout().contains("reloaded: "), "{}", dev.stdout());

    // With the lock still there, a saved edit reloads.
    fs::write(root.join("app.py"), gate_app("second code")).expect("edit app.py");
    dev.wait_for_reloads(1);
    let gates = tempfile::tempdir().expect("gates");
    fs::write(gates.path().join("open"), "").expect("gate");
    let job = dev.submit("Gate", &gate_input(&gates.path().join("open")));
    assert_eq!(
        display_of(&dev.wait_for_job(&job, "completed")),
        "second code"
    );
    assert_eq!(
        dev.stdout().matches("reloaded: ").count(),
        1,
        "{}",
        dev.stdout()
    );
    dev.stop();
}

#[test]
fn an_undo_after_an_import_that_raised_loads_the_undone_code() {
    let good = gate_app("good code");
    let project = gate_project("good code");
    let mut dev = Dev::start(project.path());
    let app = project.path().join("app.py");

    // The same size and mtime, raising at import: CPython caches its bytecode, then runs it.
    let line = "runner = Runner(tasks=[Gate])";
    let raising = format!("{:<width$}", "raise RuntimeError('b')", width = line.len());
    let broken = good.replace(line, &raising);
    assert_eq!(broken.len(), good.len());
    write_keeping_mtime(&app, &broken);
    wait_until("the import error", RELOAD_TIMEOUT, || {
        dev.stderr().contains("RuntimeError")
    })
    .unwrap_or_else(|timed_out| panic!("{timed_out}\n{}", dev.stderr()));

    // Undone within the second: the good code loads, not the cached bytecode of the broken.
    write_keeping_mtime(&app, &good);
    dev.wait_for_reloads(1);
    assert_eq!(
        dev.stderr()
            .matches("error: cannot load the project")
            .count(),
        1,
        "{}",
        dev.stderr()
    );
    let gates = tempfile::tempdir().expect("gates");
    fs::write(gates.path().join("open"), "").expect("gate");
    let job = dev.submit("Gate", &gate_input(&gates.path().join("open")));
    assert_eq!(
        display_of(&dev.wait_for_job(&job, "completed")),
        "good code"
    );
    dev.stop();
}

/// Bytes process `pid` has read so far (`rchar` of `/proc/PID/io`).
fn bytes_read(pid: u32) -> u64 {
    let io = fs::read_to_string(format!("/proc/{pid}/io")).expect("/proc/PID/io");
    io.lines()
        .find_map(|line| line.strip_prefix("rchar: "))
        .and_then(|count| count.trim().parse().ok())
        .expect("rchar in /proc/PID/io")
}

#[test]
fn the_watch_reads_only_the_files_that_changed() {
    const DATA_BYTES: u64 = 256 << 20;
    let project = gate_project("edit 0");
    // A large data file the selection (`**`) picks up; sparse, so it costs no disk.
    let data = project.path().join("data.bin");
    fs::File::create(&data)
        .and_then(|file| file.set_len(DATA_BYTES))
        .expect("data.bin");
    let mut dev = Dev::start(project.path());
    // A file changed in the last seconds is read at every poll (its time stamps may not yet
    // tell the next change): wait until it is past that, then let one reload pass.
    wait_until("data.bin to settle", RELOAD_TIMEOUT, || {
        fs::metadata(&data)
            .and_then(|meta| meta.modified())
            .is_ok_and(|modified| {
                modified
                    .elapsed()
                    .is_ok_and(|age| age > Duration::from_secs(3))
            })
    })
    .expect("time passes");
    let app = project.path().join("app.py");
    fs::write(&app, gate_app("edit 1, longer")).expect("edit app.py");
    dev.wait_for_reloads(1);

    let before = bytes_read(dev.child.id());
    fs::write(&app, gate_app("edit 2")).expect("edit app.py");
    dev.wait_for_reloads(2);
    let read = bytes_read(dev.child.id()) - before;
    assert!(
        read < DATA_BYTES / 2,
        "dev read {read} bytes for an edit of app.py next to {DATA_BYTES} bytes of data"
    );
    dev.stop();
}

/// A project with a `pyproject.toml` (so it is synced) and a `uv` that syncs forever (with
/// a child of its own) after writing its pid: answers the project, uv's path and the pid
/// file.
fn project_with_a_slow_uv() -> (tempfile::TempDir, tempfile::TempDir, PathBuf, PathBuf) {
    let project = gate_project("unused");
    fs::write(
        project.path().join("pyproject.toml"),
        "[project]\nname = \"dev-gate\"\nversion = \"0.1.0\"\n",
    )
    .expect("pyproject.toml");
    let stubs = tempfile::tempdir().expect("stubs");
    let pid_file = stubs.path().join("uv.pid");
    let uv = stubs.path().join("uv");
    fs::write(
        &uv,
        format!(
            "#!/bin/sh\nif [ \"$1\" = \"--version\" ]; then echo 'uv 0.0.0'; exit 0; fi\necho $$ > {}\nsleep 600 & wait\n",
            pid_file.display()
        ),
    )
    .expect("uv stub");
    fs::set_permissions(&uv, std::os::unix::fs::PermissionsExt::from_mode(0o755))
        .expect("chmod uv stub");
    (project, stubs, uv, pid_file)
}

/// Waits until the slow uv wrote its pid; answers it.
fn wait_for_uv(pid_file: &Path, stderr: impl Fn() -> String) -> String {
    wait_until("uv sync to start", READY_TIMEOUT, || {
        fs::read_to_string(pid_file).is_ok_and(|pid| pid.ends_with('\n'))
    })
    .unwrap_or_else(|timed_out| panic!("{timed_out}\n{}", stderr()));
    fs::read_to_string(pid_file)
        .expect("pid")
        .trim()
        .to_string()
}

#[test]
fn interrupting_dev_during_uv_sync_stops_uv() {
    let (project, _stubs, uv, pid_file) = project_with_a_slow_uv();
    let mut dev = Dev::spawn(project.path(), &[], &[("TILEBOX_UV", uv.as_path())]);
    let pid = wait_for_uv(&pid_file, || dev.stderr());
    // The notice goes through dev's event channel, so it can reach stderr just after uv starts.
    wait_until("dev to say it syncs", READY_TIMEOUT, || {
        dev.stderr().contains("syncing the environment with uv…")
    })
    .unwrap_or_else(|timed_out| panic!("{timed_out}\n{}", dev.stderr()));

    crate::common::signal(dev.child.id(), "-INT");
    let status = wait_for_exit(&mut dev.child, "dev to exit after SIGINT", JOB_TIMEOUT)
        .unwrap_or_else(|timed_out| panic!("{timed_out}\n{}", dev.stderr()));
    assert!(
        status.success(),
        "dev exited with {status}:\n{}",
        dev.stderr()
    );
    assert!(
        !Path::new("/proc").join(&pid).exists(),
        "uv (pid {pid}) outlived dev:\n{}",
        dev.stderr()
    );
}

#[test]
fn interrupting_runner_start_during_its_projects_uv_sync_stops_uv() {
    let (project, stubs, uv, pid_file) = project_with_a_slow_uv();
    let stderr = stubs.path().join("runner.stderr");
    let mut runner = crate::common::project_runner("http://127.0.0.1:9", project.path(), &[])
        .env("TILEBOX_UV", &uv)
        .stderr(fs::File::create(&stderr).expect("stderr file").into_file())
        .spawn()
        .expect("runner start");
    let read_stderr = || fs::read_to_string(&stderr).unwrap_or_default();
    let pid = wait_for_uv(&pid_file, read_stderr);
    crate::common::signal(runner.id(), "-INT");
    let status = wait_for_exit(&mut runner, "the runner to exit after SIGINT", JOB_TIMEOUT)
        .unwrap_or_else(|timed_out| panic!("{timed_out}\n{}", read_stderr()));
    assert_eq!(status.code(), Some(130), "{}", read_stderr());
    assert!(
        read_stderr().contains("error: interrupted while preparing the project"),
        "{}",
        read_stderr()
    );
    assert!(
        !Path::new("/proc").join(&pid).exists(),
        "uv (pid {pid}) outlived the runner:\n{}",
        read_stderr()
    );
}
