//! Authentication fails closed: an empty token or an open server on a non-loopback address is
//! a start-up error, never an open server; `--allow-unauthenticated` is the explicit way out.
//! (OTLP bodies are authenticated before they are read:
//! `hostile::server_limits::an_unauthenticated_otlp_export_is_refused_before_its_body_is_read`.)

use std::io::{BufRead, BufReader};
use std::process::{Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use crate::common::tilebox_command;

/// How long a server may take to print its `listening on` line.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(30);

/// Runs `tilebox server` with `args` and `environment` to its exit; it must refuse to start.
fn refused_start(args: &[&str], environment: &[(&str, &str)]) -> Output {
    let data = tempfile::tempdir().expect("data dir");
    let mut command = tilebox_command(&["server"]);
    command
        .args(args)
        .arg("--data-dir")
        .arg(data.path())
        .env_remove("TILEBOX_SERVER_TOKENS");
    for (name, value) in environment {
        command.env(name, value);
    }
    command.output().expect("cannot run `tilebox server`")
}

/// Asserts a refused start: exit 1, `expected` in the message, no `listening on`.
fn assert_refused(output: &Output, expected: &[&str]) {
    let stderr = String::from_utf8_lossy(&output.stderr);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(1), "a user error: {stderr}");
    for part in expected {
        assert!(stderr.contains(part), "expected {part:?} in: {stderr}");
    }
    assert!(
        !stdout.contains("listening on"),
        "the server never listened: {stdout}"
    );
}

#[test]
fn an_empty_token_flag_is_a_start_up_error() {
    let output = refused_start(&["--listen", "127.0.0.1:0", "--token", ""], &[]);
    assert_refused(&output, &["--token is empty", "give a non-empty API key"]);
    let output = refused_start(
        &["--listen", "127.0.0.1:0", "--token", "alpha", "--token", ""],
        &[],
    );
    assert_refused(&output, &["--token is empty"]);
}

#[test]
fn an_empty_tokens_variable_is_a_start_up_error() {
    for value in ["", "alpha,,beta", "alpha,"] {
        let output = refused_start(
            &["--listen", "127.0.0.1:0"],
            &[("TILEBOX_SERVER_TOKENS", value)],
        );
        assert_refused(
            &output,
            &[
                "TILEBOX_SERVER_TOKENS is set but empty or holds an empty token",
                "comma-separated with none empty",
            ],
        );
    }
}

/// An unset secret in a deployment (`TILEBOX_SERVER_KEYS_FILE=`) never starts an open server:
/// the empty path is refused before anything else.
#[test]
fn an_empty_keys_file_variable_is_a_start_up_error() {
    let output = refused_start(
        &["--listen", "127.0.0.1:0"],
        &[("TILEBOX_SERVER_KEYS_FILE", "")],
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "a usage error: {stderr}");
    assert!(
        stderr.contains("a value is required for '--keys-file"),
        "{stderr}"
    );
    assert!(!String::from_utf8_lossy(&output.stdout).contains("listening on"));
}

#[test]
fn an_open_server_on_a_non_loopback_address_does_not_start() {
    for listen in ["0.0.0.0:0", "[::]:0"] {
        let output = refused_start(&["--listen", listen], &[]);
        assert_refused(
            &output,
            &[
                "refusing to start an unauthenticated server on the non-loopback address",
                "--allow-unauthenticated",
                "--token",
            ],
        );
    }
}

/// A server started in `temp` with `args`, its first stdout line, and its stderr file.
struct Started {
    child: std::process::Child,
    line: String,
    stderr_path: std::path::PathBuf,
}

impl Started {
    fn spawn(temp: &std::path::Path, args: &[&str]) -> Self {
        let stderr_path = temp.join("server.stderr");
        let stderr = fs_err::File::create(&stderr_path).expect("stderr file");
        let mut child = tilebox_command(&["server"])
            .args(args)
            .arg("--data-dir")
            .arg(temp)
            .env_remove("TILEBOX_SERVER_TOKENS")
            .stdout(Stdio::piped())
            .stderr(stderr.into_file())
            .spawn()
            .expect("cannot spawn `tilebox server`");
        let stdout = child.stdout.take().expect("stdout is piped");
        let (sender, receiver) = mpsc::channel();
        std::thread::spawn(move || {
            let mut reader = BufReader::new(stdout);
            let mut line = String::new();
            let _ = sender.send(reader.read_line(&mut line).map(|_| line));
            let _ = std::io::copy(&mut reader, &mut std::io::sink());
        });
        let mut started = Self {
            child,
            line: String::new(),
            stderr_path,
        };
        match receiver.recv_timeout(STARTUP_TIMEOUT) {
            Ok(Ok(line)) if line.starts_with("listening on ") => started.line = line,
            other => panic!("no `listening on` line: {other:?}\n{}", started.stderr()),
        }
        started
    }

    fn stderr(&self) -> String {
        fs_err::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    /// The port it listens on, when its address starts with `prefix` (`http://0.0.0.0:`).
    fn port(&self, prefix: &str) -> String {
        self.line
            .trim_end()
            .strip_prefix("listening on ")
            .and_then(|url| url.strip_prefix(prefix))
            .unwrap_or_else(|| panic!("expected {prefix}PORT: {:?}", self.line))
            .to_owned()
    }

    /// Runs `tilebox --json job list` against it on loopback, without a key.
    fn list_jobs(&self, port: &str) -> Output {
        tilebox_command(&["--json", "job", "list"])
            .env("TILEBOX_API_URL", format!("http://127.0.0.1:{port}"))
            .output()
            .expect("cannot run the CLI")
    }
}

impl Drop for Started {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `--allow-unauthenticated` starts the open server on `0.0.0.0` and says loudly what that
/// means; an unauthenticated client is then answered.
#[test]
fn allow_unauthenticated_starts_an_open_server_on_all_interfaces_with_a_warning() {
    let temp = tempfile::tempdir().expect("temp dir");
    let server = Started::spawn(
        temp.path(),
        &["--listen", "0.0.0.0:0", "--allow-unauthenticated"],
    );
    let port = server.port("http://0.0.0.0:");
    let jobs = server.list_jobs(&port);
    assert!(
        jobs.status.success(),
        "an open server answers: {}",
        String::from_utf8_lossy(&jobs.stderr)
    );
    let warning = server.stderr();
    assert!(
        warning.contains("UNAUTHENTICATED SERVER on a non-loopback address")
            && warning.contains("may publish, deploy, cancel and claim tasks"),
        "{warning}"
    );
}

/// A loopback server without tokens stays open for local development; `localhost` is
/// loopback.
#[test]
fn an_open_server_on_localhost_starts_without_the_flag() {
    let temp = tempfile::tempdir().expect("temp dir");
    let server = Started::spawn(temp.path(), &["--listen", "localhost:0"]);
    let port = server.port("http://127.0.0.1:");
    let jobs = server.list_jobs(&port);
    assert!(
        jobs.status.success(),
        "{}",
        String::from_utf8_lossy(&jobs.stderr)
    );
    let stderr = server.stderr();
    assert!(
        !stderr.contains("UNAUTHENTICATED SERVER"),
        "loopback is local development: {stderr}"
    );
}
