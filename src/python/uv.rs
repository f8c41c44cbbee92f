//! Finding `uv`, which builds every environment. A `uv` on `PATH` is not enough to trust: a
//! pyenv shim named `uv` exists wherever any pyenv Python has uv, and outside a directory that
//! selects that Python it only prints `uv: command not found`. So each candidate is run once
//! (`uv --version`) before it is used:
//!
//! 1. `$TILEBOX_UV`, when set: that program and nothing else;
//! 2. each `uv` on `PATH`, in order;
//! 3. `python -m uv` of the interpreter this binary embeds (uv installed with pip into it);
//! 4. `uv` in that interpreter's scripts directory (next to its executable).
//!
//! The first that runs is kept for the life of the process; a miss is not kept, so a uv
//! installed while `tilebox dev` or a runner is up is found on the next attempt. The probe
//! runs in `/`, and so does every later uv command (given the project with `--directory`), so
//! a shim cannot choose differently between the two. A probe that does not answer within
//! [`PROBE_TIMEOUT`] is stopped, with whatever it started.

use std::ffi::OsString;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use super::environment::EMBEDDED_PYTHON;

/// How to run uv: a program and the arguments that come before uv's own.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Uv {
    program: PathBuf,
    prefix: Vec<OsString>,
    /// What `uv --version` printed (`uv 0.9.2`).
    pub version: String,
}

impl Uv {
    /// A command that runs uv with the arguments given to it afterwards, in `/` (as it was
    /// probed; pass the project with `--directory`).
    pub fn command(&self) -> Command {
        let mut command = Command::new(&self.program);
        command.args(&self.prefix).current_dir("/");
        command
    }

    /// How it is run, for messages: `/usr/bin/uv`, `/opt/python/bin/python3 -m uv`.
    pub fn describe(&self) -> String {
        let mut text = self.program.display().to_string();
        for argument in &self.prefix {
            text.push(' ');
            text.push_str(&argument.to_string_lossy());
        }
        text
    }
}

/// How long `uv --version` may take.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(10);

/// uv could not be found, or the one named by `$TILEBOX_UV` does not run.
#[derive(Debug, Clone, thiserror::Error)]
pub enum Error {
    #[error(
        "`uv` was not found: {}. Install it into the Python tilebox embeds with `{}`, or set {} to a uv executable",
        .tried.join("; "), install_command(), crate::env::UV
    )]
    NotFound { tried: Vec<String> },
    #[error("{} is set to `{}`, which does not run: {reason}", crate::env::UV, .program.display())]
    Override { program: PathBuf, reason: String },
}

/// The command that installs uv for the embedded interpreter.
pub fn install_command() -> String {
    format!("{} -m pip install uv", EMBEDDED_PYTHON.unwrap_or("python3"))
}

static FOUND: OnceLock<Uv> = OnceLock::new();

/// The uv to run, searched for as the module describes.
pub fn find() -> Result<Uv, Error> {
    if let Some(uv) = FOUND.get() {
        return Ok(uv.clone());
    }
    let overridden = std::env::var_os(crate::env::UV).filter(|value| !value.is_empty());
    let uv = search(
        overridden.map(PathBuf::from),
        std::env::var_os("PATH"),
        EMBEDDED_PYTHON.map(Path::new),
        PROBE_TIMEOUT,
    )?;
    Ok(FOUND.get_or_init(|| uv).clone())
}

/// The search itself, over the given override, `PATH` and interpreter.
fn search(
    overridden: Option<PathBuf>,
    path: Option<OsString>,
    python: Option<&Path>,
    timeout: Duration,
) -> Result<Uv, Error> {
    if let Some(program) = overridden {
        return probe(&program, &[], timeout).map_err(|reason| Error::Override { program, reason });
    }
    let mut tried = Vec::new();
    let mut candidates: Vec<(PathBuf, Vec<OsString>)> = Vec::new();
    for dir in path.iter().flat_map(std::env::split_paths) {
        let program = dir.join("uv");
        if is_executable(&program) && !candidates.iter().any(|(seen, _)| *seen == program) {
            candidates.push((program, Vec::new()));
        }
    }
    if candidates.is_empty() {
        tried.push("no `uv` on PATH".to_string());
    }
    if let Some(python) = python {
        candidates.push((python.to_path_buf(), vec!["-m".into(), "uv".into()]));
        if let Some(scripts) = python.parent() {
            candidates.push((scripts.join("uv"), Vec::new()));
        }
    }
    for (program, prefix) in candidates {
        let shown = Uv {
            program: program.clone(),
            prefix: prefix.clone(),
            version: String::new(),
        }
        .describe();
        match probe(&program, &prefix, timeout) {
            Ok(uv) => return Ok(uv),
            Err(reason) => tried.push(format!("`{shown}` {reason}")),
        }
    }
    Err(Error::NotFound { tried })
}

/// Runs `program prefix... --version` in `/`: the uv it is, or why it is not one.
fn probe(program: &Path, prefix: &[OsString], timeout: Duration) -> Result<Uv, String> {
    let mut command = Command::new(program);
    command
        .args(prefix)
        .arg("--version")
        .current_dir("/")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    let output = output_within(command, timeout)
        .map_err(|error| match error.kind() {
            std::io::ErrorKind::NotFound => "does not exist".to_string(),
            _ => format!("cannot be started ({error})"),
        })?
        .ok_or_else(|| format!("did not answer within {} s", timeout.as_secs_f64()))?;
    let stdout = String::from_utf8_lossy(&output.stdout).trim().to_string();
    if !output.status.success() || !stdout.starts_with("uv ") {
        let stderr = String::from_utf8_lossy(&output.stderr);
        let said = stderr.lines().next().unwrap_or_default().trim();
        return Err(match output.status.code() {
            Some(code) if !said.is_empty() => format!("exited with {code}: {said}"),
            Some(code) if !output.status.success() => format!("exited with {code}"),
            _ if !output.status.success() => "was killed by a signal".to_string(),
            _ => format!("is not uv (its --version printed `{stdout}`)"),
        });
    }
    Ok(Uv {
        program: program.to_path_buf(),
        prefix: prefix.to_vec(),
        // `uv 0.9.2 (x86_64-unknown-linux-gnu)`: the name and the version.
        version: stdout
            .split_whitespace()
            .take(2)
            .collect::<Vec<_>>()
            .join(" "),
    })
}

/// Runs `command` (in its own process group) to its end, or answers `None` after `timeout`
/// with its group killed: a hung program, or one that leaves a process holding its output,
/// never holds up the caller.
fn output_within(
    mut command: Command,
    timeout: Duration,
) -> std::io::Result<Option<std::process::Output>> {
    let child = command.spawn()?;
    let group = child.id();
    let (sender, ended) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = sender.send(child.wait_with_output());
    });
    match ended.recv_timeout(timeout) {
        Ok(output) => output.map(Some),
        Err(_) => {
            super::environment::kill_group(group);
            Ok(None)
        }
    }
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    fs_err::metadata(path)
        .map(|metadata| metadata.is_file() && metadata.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn script(dir: &Path, name: &str, body: &str) -> PathBuf {
        use std::os::unix::fs::PermissionsExt;
        let path = dir.join(name);
        fs_err::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
        fs_err::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        path
    }

    /// A pyenv shim outside the pinned directory.
    const SHIM: &str = "echo 'pyenv: uv: command not found' >&2; exit 127";
    const WORKING: &str = "echo 'uv 9.9.9'";
    const TEST_TIMEOUT: Duration = Duration::from_secs(30);

    #[test]
    fn a_shim_that_cannot_run_uv_is_passed_over_for_the_interpreters_scripts() {
        let shims = tempfile::tempdir().unwrap();
        let python_bin = tempfile::tempdir().unwrap();
        script(shims.path(), "uv", SHIM);
        // An interpreter without the uv module, and uv beside it.
        let python = script(python_bin.path(), "python3", "exit 1");
        let uv = script(python_bin.path(), "uv", WORKING);
        let found = search(None, Some(shims.path().into()), Some(&python), TEST_TIMEOUT).unwrap();
        assert_eq!(found.describe(), uv.display().to_string());
        assert_eq!(found.version, "uv 9.9.9");
    }

    #[test]
    fn uv_as_a_module_of_the_interpreter_comes_before_its_scripts_directory() {
        let python_bin = tempfile::tempdir().unwrap();
        let python = script(
            python_bin.path(),
            "python3",
            r#"[ "$1 $2 $3" = "-m uv --version" ] && echo 'uv 1.2.3' || exit 1"#,
        );
        script(python_bin.path(), "uv", "echo 'uv 0.0.1'");
        let found = search(None, None, Some(&python), TEST_TIMEOUT).unwrap();
        assert_eq!(found.describe(), format!("{} -m uv", python.display()));
        assert_eq!(found.version, "uv 1.2.3");
    }

    #[test]
    fn the_error_lists_every_place_it_looked_and_how_to_install() {
        let shims = tempfile::tempdir().unwrap();
        let python_bin = tempfile::tempdir().unwrap();
        script(shims.path(), "uv", SHIM);
        let python = script(python_bin.path(), "python3", "exit 1");
        let error = search(None, Some(shims.path().into()), Some(&python), TEST_TIMEOUT)
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("exited with 127: pyenv: uv: command not found"),
            "{error}"
        );
        assert!(error.contains(&format!("`{} -m uv` exited with 1", python.display())));
        assert!(error.contains("does not exist"), "{error}");
        assert!(error.contains("-m pip install uv"), "{error}");
    }

    #[test]
    fn an_override_is_the_only_candidate() {
        let dir = tempfile::tempdir().unwrap();
        script(dir.path(), "uv", WORKING);
        let error = search(
            Some(dir.path().join("missing-uv")),
            Some(dir.path().into()),
            None,
            TEST_TIMEOUT,
        )
        .unwrap_err();
        assert!(matches!(error, Error::Override { .. }));
        assert!(error.to_string().contains("missing-uv"), "{error}");
        assert!(error.to_string().contains("does not exist"), "{error}");
    }

    #[test]
    fn every_uv_on_path_is_tried_in_order() {
        let shims = tempfile::tempdir().unwrap();
        let local = tempfile::tempdir().unwrap();
        script(shims.path(), "uv", SHIM);
        let uv = script(local.path(), "uv", WORKING);
        let path = std::env::join_paths([shims.path(), local.path()]).unwrap();
        let found = search(None, Some(path), None, TEST_TIMEOUT).unwrap();
        assert_eq!(found.describe(), uv.display().to_string());
    }

    #[test]
    fn a_uv_that_does_not_answer_is_stopped_and_passed_over() {
        let hung = tempfile::tempdir().unwrap();
        let python_bin = tempfile::tempdir().unwrap();
        // Leaves a child holding its output, and never exits itself.
        script(hung.path(), "uv", "sleep 600 & sleep 600");
        let python = script(python_bin.path(), "python3", "exit 1");
        let uv = script(python_bin.path(), "uv", WORKING);
        let found = search(
            None,
            Some(hung.path().into()),
            Some(&python),
            Duration::from_millis(500),
        )
        .unwrap();
        assert_eq!(found.describe(), uv.display().to_string());
    }

    #[test]
    fn a_program_that_is_not_uv_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let fake = script(dir.path(), "uv", "echo 'ruff 0.1'");
        let error = search(Some(fake), None, None, TEST_TIMEOUT)
            .unwrap_err()
            .to_string();
        assert!(error.contains("is not uv"), "{error}");
    }
}
