//! Helpers shared by the integration tests: a `tilebox server` in a temp dir, running the CLI,
//! waiting on conditions, and the Python venv with the official SDK for the interop tests.
//!
//! Layout:
//! - [`TestServer`]: start, kill, restart and stop a server on `127.0.0.1:0`
//! - [`tilebox`]: run the `tilebox` binary and collect its output
//! - [`wait_until`]: poll a condition until a deadline
//! - [`sdk_python`]: the Python interpreter of a venv with `tilebox-workflows` [`SDK_VERSION`]

#![allow(dead_code)]

use std::fs::{self, File};
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// The official Python SDK release the interop tests run against.
pub const SDK_VERSION: &str = "0.66.0";
/// The Python version of the SDK venv.
pub const SDK_PYTHON_VERSION: &str = "3.13";

/// How long a server may take from spawn to printing its `listening on` line.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a server may take to exit after SIGTERM.
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(10);
/// How much of the server's stderr goes into panic messages.
const STDERR_TAIL_BYTES: u64 = 8 * 1024;
/// The prefix of the one line a server prints to stdout once it accepts connections.
const LISTENING_PREFIX: &str = "listening on ";

/// The `tilebox` binary under test.
pub fn tilebox_binary() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_tilebox"))
}

/// A `tilebox server` on `127.0.0.1` with its own data directory, stopped when dropped.
///
/// Its stderr goes to `server.stderr` in the temp dir (appended across restarts), so the pipe
/// can never fill; panics include its tail.
pub struct TestServer {
    child: Option<Child>,
    url: String,
    listen: String,
    extra_args: Vec<String>,
    data_dir: PathBuf,
    stderr_path: PathBuf,
    // Last, so the directory outlives the child in `Drop`.
    temp: tempfile::TempDir,
}

impl TestServer {
    /// Starts an open dev server (no token) on a free port.
    pub fn start() -> Self {
        Self::start_with(&[])
    }

    /// Starts a server with extra arguments after `--listen` and `--data-dir`.
    pub fn start_with(args: &[&str]) -> Self {
        let temp = tempfile::Builder::new()
            .prefix("tilebox-server-")
            .tempdir()
            .expect("cannot create a temp dir for the server");
        let data_dir = temp.path().join("data");
        fs::create_dir(&data_dir).expect("cannot create the server's data dir");
        let stderr_path = temp.path().join("server.stderr");
        let mut server = Self {
            child: None,
            url: String::new(),
            listen: "127.0.0.1:0".to_owned(),
            extra_args: args.iter().map(|arg| (*arg).to_owned()).collect(),
            data_dir,
            stderr_path,
            temp,
        };
        server.spawn();
        server
    }

    /// The API URL, `http://127.0.0.1:PORT`.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The server's data directory (kept across restarts).
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// A scratch directory that lives as long as the server, for test files.
    pub fn temp_dir(&self) -> &Path {
        self.temp.path()
    }

    /// The server's stderr so far.
    pub fn stderr(&self) -> String {
        fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    /// The last few KiB of the server's stderr, for panic messages.
    pub fn stderr_tail(&self) -> String {
        tail_of_file(&self.stderr_path, STDERR_TAIL_BYTES)
    }

    /// Kills the server with SIGKILL and reaps it; no chance to clean up.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            // An error means it already exited, which is fine: `wait` reaps it either way.
            let _ = child.kill();
            child.wait().expect("cannot reap the killed server");
        }
    }

    /// Kills the server if it is running and starts it again on the same port and data dir, so
    /// `url()` stays valid.
    pub fn restart(&mut self) {
        self.kill();
        self.listen = self
            .url
            .strip_prefix("http://")
            .expect("the server URL starts with http://")
            .to_owned();
        self.spawn();
    }

    /// Stops the server with SIGTERM and asserts that it exits successfully within
    /// [`SHUTDOWN_TIMEOUT`].
    pub fn stop(mut self) {
        let mut child = self.child.take().expect("the server is running");
        let status = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .expect("cannot run `kill`");
        assert!(status.success(), "`kill -TERM` failed: {status}");
        let deadline = Instant::now() + SHUTDOWN_TIMEOUT;
        let status = loop {
            if let Some(status) = child.try_wait().expect("cannot wait for the server") {
                break status;
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "the server did not exit within {SHUTDOWN_TIMEOUT:?} of SIGTERM\n--- server stderr (tail) ---\n{}",
                    self.stderr_tail()
                );
            }
            thread::sleep(Duration::from_millis(20));
        };
        assert!(
            status.success(),
            "the server exited with {status} after SIGTERM\n--- server stderr (tail) ---\n{}",
            self.stderr_tail()
        );
    }

    /// Runs the `tilebox` CLI against this server (`TILEBOX_API_URL` set, no API key).
    pub fn tilebox(&self, args: &[&str]) -> Output {
        tilebox_command(args)
            .env("TILEBOX_API_URL", &self.url)
            .output()
            .expect("cannot run the tilebox binary")
    }

    fn spawn(&mut self) {
        let stderr = File::options()
            .create(true)
            .append(true)
            .open(&self.stderr_path)
            .expect("cannot open the server's stderr file");
        let mut child = Command::new(tilebox_binary())
            .arg("server")
            .args(["--listen", &self.listen])
            .arg("--data-dir")
            .arg(&self.data_dir)
            .args(&self.extra_args)
            .env_remove("TILEBOX_SERVER_TOKENS")
            .env_remove("TILEBOX_API_KEY")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .expect("cannot spawn `tilebox server`");

        // The reader sends the first line, then drains stdout so the server never blocks on it.
        let stdout = child.stdout.take().expect("stdout is piped");
        let (sender, receiver) = mpsc::channel();
        thread::spawn(move || {
            let mut reader = BufReader::new(stdout);
            let mut line = String::new();
            let first = reader.read_line(&mut line).map(|_| line);
            let _ = sender.send(first);
            let _ = std::io::copy(&mut reader, &mut std::io::sink());
        });

        let line = match receiver.recv_timeout(STARTUP_TIMEOUT) {
            Ok(Ok(line)) => line,
            Ok(Err(error)) => {
                self.fail_start(child, &format!("reading its stdout failed: {error}"))
            }
            Err(_) => self.fail_start(
                child,
                &format!("no `listening on` line within {STARTUP_TIMEOUT:?}"),
            ),
        };
        let Some(url) = line.trim_end().strip_prefix(LISTENING_PREFIX) else {
            let reason = if line.is_empty() {
                "it closed stdout without printing `listening on http://...`".to_owned()
            } else {
                format!(
                    "its first stdout line is {line:?}, expected `listening on http://127.0.0.1:PORT`"
                )
            };
            self.fail_start(child, &reason)
        };
        if !url.starts_with("http://127.0.0.1:") {
            let reason = format!("it listens on {url:?}, expected http://127.0.0.1:PORT");
            self.fail_start(child, &reason);
        }
        self.url = url.to_owned();
        self.child = Some(child);
    }

    fn fail_start(&self, mut child: Child, reason: &str) -> ! {
        let _ = child.kill();
        let status = child
            .wait()
            .map(|status| status.to_string())
            .unwrap_or_default();
        panic!(
            "`tilebox server --listen {}` did not start: {reason} (exit: {status})\n--- server stderr (tail) ---\n{}",
            self.listen,
            self.stderr_tail()
        );
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A `tilebox` command with the test environment: no API key or URL from the developer's shell.
pub fn tilebox_command(args: &[&str]) -> Command {
    let mut command = Command::new(tilebox_binary());
    command
        .args(args)
        .env_remove("TILEBOX_API_KEY")
        .env_remove("TILEBOX_API_URL")
        .env("NO_COLOR", "1")
        .stdin(Stdio::null());
    command
}

/// Runs the `tilebox` binary with `args` and returns its output.
pub fn tilebox(args: &[&str]) -> Output {
    tilebox_command(args)
        .output()
        .expect("cannot run the tilebox binary")
}

/// Polls `condition` every 20 ms until it holds (true) or `timeout` has passed (false).
pub fn wait_until(timeout: Duration, mut condition: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if condition() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        thread::sleep(Duration::from_millis(20));
    }
}

/// The last `bytes` bytes of a file, lossily decoded; empty if it cannot be read.
pub fn tail_of_file(path: &Path, bytes: u64) -> String {
    let Ok(mut file) = File::open(path) else {
        return String::new();
    };
    let length = file.metadata().map(|metadata| metadata.len()).unwrap_or(0);
    let _ = file.seek(SeekFrom::Start(length.saturating_sub(bytes)));
    let mut tail = Vec::new();
    let _ = file.read_to_end(&mut tail);
    String::from_utf8_lossy(&tail).into_owned()
}

/// The Python interpreter of a venv with the official SDK (`tilebox-workflows==SDK_VERSION`).
///
/// Created once with `uv` under `target/tmp/interop-venv-<version>` and shared by all tests and
/// test runs. Concurrent test processes each build in a private directory and rename it into
/// place; the first rename wins and the others remove their copy, so a half-built venv is never
/// visible.
pub fn sdk_python() -> PathBuf {
    static PYTHON: OnceLock<PathBuf> = OnceLock::new();
    PYTHON.get_or_init(create_sdk_venv).clone()
}

fn create_sdk_venv() -> PathBuf {
    let root = Path::new(env!("CARGO_TARGET_TMPDIR"));
    let venv = root.join(format!("interop-venv-{SDK_VERSION}"));
    let python = venv.join("bin").join("python");
    let ready = venv.join(".tilebox-interop-ready");
    if ready.exists() {
        return python;
    }
    assert!(
        !venv.exists(),
        "{} exists but is incomplete (no {}); delete it and run the tests again",
        venv.display(),
        ready.display()
    );

    let uv = find_uv();
    fs::create_dir_all(root).expect("cannot create CARGO_TARGET_TMPDIR");
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|time| time.as_nanos())
        .unwrap_or(0);
    let building = root.join(format!(
        "interop-venv-{SDK_VERSION}.building-{}-{nanos}",
        std::process::id()
    ));
    let cleanup = RemoveOnDrop(building.clone());

    run_uv(
        Command::new(&uv)
            .args(["venv", "--quiet", "--python", SDK_PYTHON_VERSION])
            .arg(&building),
        "create the SDK venv",
    );
    run_uv(
        Command::new(&uv)
            .args(["pip", "install", "--quiet", "--python"])
            .arg(building.join("bin").join("python"))
            .arg(format!("tilebox-workflows=={SDK_VERSION}")),
        "install the official SDK",
    );
    fs::write(building.join(".tilebox-interop-ready"), SDK_VERSION)
        .expect("cannot mark the SDK venv ready");

    if let Err(error) = fs::rename(&building, &venv) {
        // Another test process won the race (`cleanup` removes our copy); use its venv.
        assert!(
            ready.exists(),
            "cannot move the SDK venv into {}: {error}",
            venv.display()
        );
    }
    drop(cleanup);
    python
}

/// Removes a directory when dropped, also when a panic unwinds past it.
struct RemoveOnDrop(PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        // After a successful rename the directory is gone, which is fine.
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// `uv` from PATH, or a panic that says how to install it.
fn find_uv() -> PathBuf {
    let hint = "the interop tests need `uv` to create the SDK venv; install it with `python3 -m pip install uv`";
    match Command::new("uv").arg("--version").output() {
        Ok(output) if output.status.success() => PathBuf::from("uv"),
        Ok(output) => panic!(
            "`uv --version` failed ({}): {}\n{hint}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        ),
        Err(error) => panic!("cannot run `uv`: {error}\n{hint}"),
    }
}

fn run_uv(command: &mut Command, what: &str) {
    let output = command
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|error| panic!("cannot run uv to {what}: {error}"));
    assert!(
        output.status.success(),
        "uv failed to {what} ({}): {:?}\n--- stdout ---\n{}\n--- stderr ---\n{}",
        output.status,
        command,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}
