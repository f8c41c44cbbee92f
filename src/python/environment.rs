//! A project's Python environment: `uv sync` against the interpreter this binary embeds,
//! and the venv's site-packages. Every `uv sync` runs within a timeout.

use std::io::Read;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

/// The CPython executable this binary was built against (release venvs must match it).
pub const EMBEDDED_PYTHON: Option<&str> = option_env!("TILEBOX_EMBEDDED_PYTHON");

/// What can go wrong building an environment.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    UvMissing(#[from] super::uv::Error),
    #[error("`uv sync` failed in {root}:\n{output}")]
    SyncFailed { root: PathBuf, output: String },
    #[error("`uv sync` in {root} did not finish within {} s; it was stopped", timeout.as_secs_f64())]
    TimedOut { root: PathBuf, timeout: Duration },
    #[error("cannot run uv in {root}")]
    Run {
        root: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// How long one `uv sync` may take by default (resolving, downloading and installing a large
/// environment from a slow index takes minutes; a hung index never answers).
pub const DEFAULT_SYNC_TIMEOUT: Duration = Duration::from_secs(600);

/// A synced environment.
#[derive(Debug, Clone)]
pub struct Environment {
    pub venv: PathBuf,
    pub site_packages: Vec<PathBuf>,
}

/// Runs `uv sync --quiet [--frozen] [extra...]` in `root` against the embedded interpreter,
/// into `environment` when given (else the project's `.venv`). Past `timeout` uv and every
/// process it started (its own process group) are killed.
fn run_uv_sync(
    root: &Path,
    frozen: bool,
    extra: &[&str],
    environment: Option<&Path>,
    timeout: Duration,
) -> Result<(), Error> {
    // uv runs in `/` (see `uv.rs`), so the project is given by its absolute path.
    let absolute = std::path::absolute(root).map_err(|source| Error::Run {
        root: root.to_path_buf(),
        source,
    })?;
    let mut command = super::uv::find()?.command();
    command
        .args(["sync", "--quiet", "--directory"])
        .arg(&absolute)
        .args(extra)
        .env(crate::env::UV_PYTHON_DOWNLOADS, "never")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .process_group(0);
    match environment {
        Some(environment) => {
            command.env(
                crate::env::UV_PROJECT_ENVIRONMENT,
                std::path::absolute(environment).unwrap_or_else(|_| environment.to_path_buf()),
            );
        }
        // The project's own `.venv`, whatever the caller's environment says.
        None => {
            command.env_remove(crate::env::UV_PROJECT_ENVIRONMENT);
        }
    }
    if frozen {
        command.arg("--frozen");
    }
    if let Some(python) = EMBEDDED_PYTHON {
        command.arg("--python").arg(python);
    }
    let run_failed = |source: std::io::Error| Error::Run {
        root: root.to_path_buf(),
        source,
    };
    let (status, stderr) = match run_bounded(&mut command, timeout, STDERR_GRACE) {
        Ok(Bounded::Exited { status, stderr }) => (status, stderr),
        Ok(Bounded::TimedOut) => {
            return Err(Error::TimedOut {
                root: root.to_path_buf(),
                timeout,
            });
        }
        Err(source) => return Err(run_failed(source)),
    };
    if !status.success() {
        return Err(Error::SyncFailed {
            root: root.to_path_buf(),
            output: String::from_utf8_lossy(&stderr).trim().to_string(),
        });
    }
    Ok(())
}

/// How long uv's stderr may stay open after uv exited before whatever still holds it (a
/// process the sync started and left behind) is killed and the sync goes on with what was read.
const STDERR_GRACE: Duration = Duration::from_secs(2);

/// How a command run by [`run_bounded`] ended.
#[derive(Debug)]
enum Bounded {
    /// It exited within its time; `stderr` is what it (and its group) wrote until the pipe
    /// closed or the grace after its exit ran out.
    Exited {
        status: std::process::ExitStatus,
        stderr: Vec<u8>,
    },
    /// It did not exit within its time: it and its process group were killed.
    TimedOut,
}

/// Spawns `command` (which runs in its own process group, with stderr piped) and waits at
/// most `timeout` for it to exit; past it the process group is killed. Once the command
/// exited, its stderr is read for at most `grace` more (within what is left of `timeout`): a
/// process it left behind may hold the pipe open forever, so that process's group is killed
/// and the output read so far is kept. The exit status decides the outcome, the output only
/// explains it.
fn run_bounded(
    command: &mut Command,
    timeout: Duration,
    grace: Duration,
) -> std::io::Result<Bounded> {
    let deadline = std::time::Instant::now() + timeout;
    let (mut child, _running) = Running::spawn(command)?;
    let group = child.id();
    let stderr = child.stderr.take();
    // The reader sends what it reads as it reads it, so a pipe that never closes does not
    // withhold what was written before.
    let (chunks, output) = std::sync::mpsc::channel::<Vec<u8>>();
    std::thread::spawn(move || {
        let Some(mut stderr) = stderr else { return };
        let mut buffer = [0u8; 8192];
        loop {
            match stderr.read(&mut buffer) {
                Ok(0) => return,
                Ok(read) => {
                    if chunks.send(buffer[..read].to_vec()).is_err() {
                        return;
                    }
                }
                Err(error) if error.kind() == std::io::ErrorKind::Interrupted => {}
                Err(_) => return,
            }
        }
    });
    // `wait` blocks, so it waits on its own thread and this one waits with a deadline.
    let (sender, exited) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = sender.send(child.wait());
    });
    let status = match exited.recv_timeout(timeout) {
        Ok(status) => status?,
        Err(_) => {
            kill_group(group);
            let _ = exited.recv();
            // The reader is left to end with the pipe: a process that left the group may
            // hold it open.
            return Ok(Bounded::TimedOut);
        }
    };
    let read_until = deadline
        .min(std::time::Instant::now() + grace)
        .max(std::time::Instant::now());
    let mut stderr = Vec::new();
    loop {
        let left = read_until.saturating_duration_since(std::time::Instant::now());
        match output.recv_timeout(left) {
            Ok(chunk) => stderr.extend_from_slice(&chunk),
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => break,
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                // The command exited but something it started still holds its stderr: end
                // what is left of its group (the group outlives the command while a member
                // does, so its id is not reused meanwhile) and keep what was read.
                tracing::warn!(
                    pid = group,
                    "a process left behind by the command still holds its output open after it exited; stopping its process group"
                );
                kill_group(group);
                break;
            }
        }
    }
    Ok(Bounded::Exited { status, stderr })
}

/// The process groups of the commands [`run_bounded`] runs now, so an interrupted caller can
/// stop them ([`stop_running`]); once that was called, no new command starts.
static RUNNING: std::sync::Mutex<Registry> = std::sync::Mutex::new(Registry {
    groups: Vec::new(),
    stopping: false,
});

struct Registry {
    groups: Vec<u32>,
    stopping: bool,
}

fn registry() -> std::sync::MutexGuard<'static, Registry> {
    RUNNING
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// A running command's place in [`RUNNING`], taken out again on drop.
struct Running(u32);

impl Running {
    /// Spawns `command` and registers its group under one lock, so [`stop_running`] sees
    /// every command that started, and none starts after it.
    fn spawn(command: &mut Command) -> std::io::Result<(std::process::Child, Self)> {
        let mut registry = registry();
        if registry.stopping {
            return Err(std::io::Error::new(
                std::io::ErrorKind::Interrupted,
                "not started: this process is stopping its commands",
            ));
        }
        let child = command.spawn()?;
        registry.groups.push(child.id());
        let group = child.id();
        Ok((child, Self(group)))
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        registry().groups.retain(|group| *group != self.0);
    }
}

/// Kills every `uv sync` running now (with what it started) and lets no new one start, then
/// waits up to `wait` for each to be reaped, so nothing writes after this answers `true`.
pub fn stop_running(wait: Duration) -> bool {
    let deadline = std::time::Instant::now() + wait;
    registry().stopping = true;
    loop {
        let groups = registry().groups.clone();
        if groups.is_empty() {
            return true;
        }
        if std::time::Instant::now() >= deadline {
            return false;
        }
        for group in groups {
            kill_group(group);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Kills the process group `group` (uv and whatever it started: builds, interpreters).
pub(super) fn kill_group(group: u32) {
    let Ok(group) = libc::pid_t::try_from(group) else {
        return;
    };
    // SAFETY: a plain signal to a process group this process created.
    unsafe {
        libc::killpg(group, libc::SIGKILL);
    }
}

/// Runs `uv sync` in `root` (which has a `pyproject.toml`), with `--frozen` when asked,
/// against the embedded interpreter, within `timeout`; answers the venv.
pub fn sync(root: &Path, frozen: bool, timeout: Duration) -> Result<Environment, Error> {
    run_uv_sync(root, frozen, &[], None, timeout)?;
    let venv = root.join(".venv");
    Ok(Environment {
        site_packages: site_packages_of(&venv),
        venv,
    })
}

/// The site-packages directories of a venv (`lib/python3.X/site-packages`).
pub fn site_packages_of(venv: &Path) -> Vec<PathBuf> {
    let Ok(entries) = fs_err::read_dir(venv.join("lib")) else {
        return Vec::new();
    };
    let mut found: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .map(|entry| entry.path().join("site-packages"))
        .filter(|path| path.is_dir())
        .collect();
    found.sort();
    found
}

/// Runs `uv sync --frozen --no-install-project` for the project in `root` into a venv under
/// `cache/venvs/` keyed by the hash of its `uv.lock` and the Python version, so releases with
/// the same lock file share one environment and a redeploy builds nothing. The project's own
/// code is imported from `root`, not installed. The sync runs within `timeout`.
pub fn sync_shared(root: &Path, cache: &Path, timeout: Duration) -> Result<Environment, Error> {
    use sha2::{Digest, Sha256};
    let lock = fs_err::read(root.join("uv.lock")).unwrap_or_default();
    let pyproject = fs_err::read(root.join("pyproject.toml")).unwrap_or_default();
    let mut hasher = Sha256::new();
    hasher.update(&lock);
    hasher.update(&pyproject);
    let hash = hex::encode(&hasher.finalize()[..12]);
    let version = EMBEDDED_PYTHON
        .unwrap_or("python3")
        .rsplit('/')
        .next()
        .unwrap_or("python3")
        .to_string();
    let venv = cache
        .join("venvs")
        .join(format!("{hash}-{}", version.replace('/', "_")));
    if venv.join(".complete").exists() {
        return Ok(Environment {
            site_packages: site_packages_of(&venv),
            venv,
        });
    }
    run_uv_sync(
        root,
        !lock.is_empty(),
        &["--no-install-project"],
        Some(&venv),
        timeout,
    )?;
    let _ = fs_err::write(venv.join(".complete"), b"");
    Ok(Environment {
        site_packages: site_packages_of(&venv),
        venv,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shell(script: &str) -> Command {
        let mut command = Command::new("sh");
        command
            .args(["-c", script])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .process_group(0);
        command
    }

    /// Whether process `pid` still runs (a zombie waiting to be reaped does not).
    fn running(pid: u32) -> bool {
        fs_err::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
            stat.rsplit_once(") ")
                .is_some_and(|(_, rest)| !rest.starts_with('Z'))
        })
    }

    #[test]
    fn a_process_left_holding_stderr_does_not_hold_up_a_command_that_exited() {
        let started = std::time::Instant::now();
        let outcome = run_bounded(
            &mut shell("echo before >&2; sleep 100 >&2 & echo $! >&2; exit 0"),
            Duration::from_secs(60),
            Duration::from_millis(300),
        )
        .unwrap();
        let Bounded::Exited { status, stderr } = outcome else {
            panic!("the command exited at once: {outcome:?}");
        };
        assert!(status.success());
        // Well before the 100 s the left-behind process would hold the pipe.
        assert!(started.elapsed() < Duration::from_secs(30));
        let text = String::from_utf8(stderr).unwrap();
        let mut lines = text.lines();
        assert_eq!(lines.next(), Some("before"));
        let pid: u32 = lines.next().unwrap().parse().unwrap();
        // The process left behind in the command's group was stopped.
        let gone = std::time::Instant::now() + Duration::from_secs(10);
        while running(pid) && std::time::Instant::now() < gone {
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(!running(pid), "process {pid} still runs");
    }

    #[test]
    fn a_failed_command_keeps_its_output_when_a_process_it_left_holds_stderr() {
        let outcome = run_bounded(
            &mut shell("echo broken >&2; sleep 100 >&2 & exit 3"),
            Duration::from_secs(60),
            Duration::from_millis(300),
        )
        .unwrap();
        let Bounded::Exited { status, stderr } = outcome else {
            panic!("the command exited at once: {outcome:?}");
        };
        assert_eq!(status.code(), Some(3));
        assert_eq!(String::from_utf8(stderr).unwrap(), "broken\n");
    }

    #[test]
    fn a_command_past_its_time_is_stopped() {
        let outcome = run_bounded(
            &mut shell("sleep 100"),
            Duration::from_millis(200),
            Duration::from_millis(200),
        )
        .unwrap();
        assert!(matches!(outcome, Bounded::TimedOut), "{outcome:?}");
    }

    #[test]
    fn a_command_that_closes_stderr_gives_all_of_it() {
        let outcome = run_bounded(
            &mut shell("head -c 100000 /dev/zero | tr '\\0' x >&2; exit 0"),
            Duration::from_secs(60),
            Duration::from_secs(30),
        )
        .unwrap();
        let Bounded::Exited { status, stderr } = outcome else {
            panic!("{outcome:?}");
        };
        assert!(status.success());
        assert_eq!(stderr.len(), 100_000);
        assert!(stderr.iter().all(|byte| *byte == b'x'));
    }
}
