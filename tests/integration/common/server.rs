//! [`TestServer`]: a `tilebox server` on `127.0.0.1:0` in a temp dir; and running the
//! `tilebox` CLI with a clean environment.

use fs_err::{self as fs, File};
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::Duration;

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

    /// The server process's id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("the server is running").id()
    }

    /// The API URL, `http://127.0.0.1:PORT` (`https://` with `--tls-cert`).
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
            .split_once("://")
            .expect("the server URL starts with http:// or https://")
            .1
            .to_owned();
        self.spawn();
    }

    /// Stops the server with SIGTERM and asserts that it exits successfully within
    /// [`SHUTDOWN_TIMEOUT`].
    pub fn stop(mut self) {
        let mut child = self.child.take().expect("the server is running");
        super::signal(child.id(), "-TERM");
        let status = super::wait_for_exit(
            &mut child,
            "the server to exit after SIGTERM",
            SHUTDOWN_TIMEOUT,
        )
        .unwrap_or_else(|timed_out| {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "{timed_out}\n--- server stderr (tail) ---\n{}",
                self.stderr_tail()
            )
        });
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

    /// Runs the `tilebox` CLI in `directory` against this server, with its caches
    /// (`XDG_CACHE_HOME`) inside `directory`.
    pub fn tilebox_in(&self, directory: &Path, args: &[&str]) -> Output {
        tilebox_command(args)
            .current_dir(directory)
            .env("TILEBOX_API_URL", &self.url)
            .env("XDG_CACHE_HOME", directory.join(".cache-home"))
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
            // A developer's exported URL must never send a test server to their database:
            // replicas pass `--database` explicitly.
            .env_remove("TILEBOX_DATABASE_URL")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr.into_file())
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
        if !url.starts_with("http://127.0.0.1:") && !url.starts_with("https://127.0.0.1:") {
            let reason = format!("it listens on {url:?}, expected http(s)://127.0.0.1:PORT");
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

/// A `tilebox` command with the test environment: no API key, API URL or database URL from
/// the developer's shell (a `tilebox server` it starts uses SQLite unless given `--database`).
pub fn tilebox_command(args: &[&str]) -> Command {
    let mut command = Command::new(tilebox_binary());
    command
        .args(args)
        .env_remove("TILEBOX_API_KEY")
        .env_remove("TILEBOX_API_URL")
        .env_remove("TILEBOX_DATABASE_URL")
        .env_remove("TILEBOX_CA_CERT")
        .env_remove("TILEBOX_UV")
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
