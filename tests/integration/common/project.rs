//! Workflow projects in temp dirs, and `tilebox runner start` processes.

use fs_err as fs;
use std::fmt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::Duration;

use super::{signal, tilebox_command, wait_for_exit};

/// A project of one module `app.py` with `app`, its runner `app:runner`, no dependencies.
pub fn project(slug: &str, app: &str) -> tempfile::TempDir {
    let project = tempfile::Builder::new()
        .prefix("tilebox-project-")
        .tempdir()
        .expect("cannot create a project dir");
    write_project(project.path(), slug, app);
    project
}

/// Writes `app.py` with `app` and a `tilebox.workflow.toml` for workflow `slug` that
/// includes it, with the runner `app:runner`.
pub fn write_project(directory: &Path, slug: &str, app: &str) {
    fs::write(directory.join("app.py"), app).expect("cannot write app.py");
    fs::write(
        directory.join("tilebox.workflow.toml"),
        format!(
            "[workflow]\nslug = \"{slug}\"\nrunner = \"app:runner\"\n\n[build]\ninclude = [\"app.py\"]\n"
        ),
    )
    .expect("cannot write tilebox.workflow.toml");
}

/// A copy of `examples/<name>` (without venvs, bytecode and built archives) in a temp dir.
pub fn example(name: &str) -> tempfile::TempDir {
    fn copy(from: &Path, to: &Path) {
        fs::create_dir_all(to).expect("mkdir");
        for entry in fs::read_dir(from).expect("read the example") {
            let entry = entry.expect("entry");
            let name = entry.file_name();
            if [".venv", "__pycache__"].contains(&name.to_str().unwrap_or_default())
                || name.to_string_lossy().ends_with(".tar.zst")
            {
                continue;
            }
            if entry.file_type().expect("type").is_dir() {
                copy(&entry.path(), &to.join(&name));
            } else {
                fs::copy(entry.path(), to.join(&name)).expect("copy");
            }
        }
    }
    let directory = tempfile::tempdir().expect("temp dir");
    copy(
        &Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("examples")
            .join(name),
        directory.path(),
    );
    directory
}

/// `tilebox runner start --project DIR --cache-dir DIR/.tilebox-cache ARGS` against the
/// server at `url`.
pub fn project_runner(url: &str, project: &Path, args: &[&str]) -> Command {
    let mut command = tilebox_command(&["runner", "start", "--project"]);
    command
        .arg(project)
        .arg("--cache-dir")
        .arg(project.join(".tilebox-cache"))
        .args(args)
        .env("TILEBOX_API_URL", url);
    command
}

/// A `tilebox runner start` process whose stderr (its log) goes to a file; killed when
/// dropped, so a failing test leaves nothing behind.
pub struct RunnerProcess {
    child: Child,
    log: PathBuf,
}

impl RunnerProcess {
    /// Spawns `command` with stdout discarded and stderr to `log`.
    pub fn spawn(command: &mut Command, log: PathBuf) -> Self {
        let child = command
            .stdout(Stdio::null())
            .stderr(
                fs::File::create(&log)
                    .expect("cannot create the runner's log")
                    .into_file(),
            )
            .spawn()
            .expect("cannot start the runner");
        Self { child, log }
    }

    /// The runner's log (stderr) so far.
    pub fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The runner's process id.
    pub fn id(&self) -> u32 {
        self.child.id()
    }

    /// Whether the process is still running (not exited).
    pub fn is_running(&mut self) -> bool {
        self.child
            .try_wait()
            .expect("cannot poll the runner")
            .is_none()
    }

    /// Sends `signal` (`"-TERM"`, ...) to the runner.
    pub fn signal(&self, name: &str) {
        signal(self.child.id(), name);
    }

    /// Waits for the runner to exit and answers its status; panics with its log after
    /// `timeout`.
    pub fn wait_for_exit(&mut self, what: impl fmt::Display, timeout: Duration) -> ExitStatus {
        wait_for_exit(&mut self.child, what, timeout)
            .unwrap_or_else(|timed_out| panic!("{timed_out}\n--- runner log ---\n{}", self.log()))
    }

    /// Waits for the runner to exit successfully; panics with its log otherwise.
    pub fn wait_for_success(&mut self, timeout: Duration) {
        let status = self.wait_for_exit("the runner to exit", timeout);
        assert!(
            status.success(),
            "the runner failed ({status}):\n{}",
            self.log()
        );
    }

    /// Kills the runner with SIGKILL and reaps it.
    pub fn kill(&mut self) {
        // An error means it already exited, which is fine: `wait` reaps it either way.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for RunnerProcess {
    fn drop(&mut self) {
        self.kill();
    }
}
