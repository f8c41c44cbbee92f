//! Commands driven through a pseudo-terminal (`pty_driver.py`, Python's `pty` module, no extra
//! crate): what a person at a terminal sees and types. The command's stdin, stdout and stderr
//! are the terminal; the transcript is everything the terminal received.
//! - [`run_in_pty`]: a dialogue of expected texts and typed answers (debuggers: `--pdb`,
//!   `breakpoint()`), `TERM=dumb` so no readline escapes reach the transcript;
//! - [`run_on_terminal`]: a command as configured, with what is typed up front, on a
//!   120×40 `xterm` (progress bars); [`TerminalRun::screen_lines`] splits its drawings.

use std::process::{Command, Output};
use std::time::Duration;

/// The terminal's width for [`run_on_terminal`]: a line drawn full width wraps without a
/// line break.
pub const COLUMNS: usize = 120;

/// One step of a terminal session.
pub enum Step<'a> {
    /// Wait for this text (after the previous match).
    Expect(&'a str),
    /// Type this text.
    Send(&'a str),
}

/// The driver command for `argv` through `steps`, with `timeout` and an optional window size.
fn driver(
    argv: Vec<String>,
    steps: &[Step<'_>],
    timeout: Duration,
    size: Option<[usize; 2]>,
) -> Command {
    let steps: Vec<[&str; 2]> = steps
        .iter()
        .map(|step| match step {
            Step::Expect(text) => ["expect", text],
            Step::Send(text) => ["send", text],
        })
        .collect();
    let mut spec = serde_json::json!({
        "argv": argv,
        "steps": steps,
        "timeout": timeout.as_secs_f64(),
    });
    if let Some(size) = size {
        spec["size"] = serde_json::json!(size);
    }
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/integration/common/pty_driver.py"
    );
    let mut command = Command::new("python3");
    command.arg(script).arg(spec.to_string());
    command
}

/// Runs `program args` in a pseudo-terminal, in `directory`, through `steps`; answers the
/// driver's output: the transcript on stdout, the command's exit status (124 with the reason
/// on stderr if an expected text did not come, or the command did not exit, within `timeout`).
pub fn run_in_pty(
    program: &std::path::Path,
    args: &[&str],
    directory: &std::path::Path,
    steps: &[Step<'_>],
    timeout: Duration,
) -> Output {
    let mut argv = vec![program.to_string_lossy().into_owned()];
    argv.extend(args.iter().map(|arg| arg.to_string()));
    driver(argv, steps, timeout, None)
        .current_dir(directory)
        // No colours or readline escapes in the transcript.
        .env("TERM", "dumb")
        .env("NO_COLOR", "1")
        .env_remove("TILEBOX_API_KEY")
        .env_remove("TILEBOX_API_URL")
        .env_remove("TILEBOX_CA_CERT")
        .output()
        .expect("cannot run python3 with the pty driver")
}

/// What a command did on a terminal.
#[derive(Debug)]
pub struct TerminalRun {
    /// Its exit code (`None` if a signal ended it).
    pub code: Option<i32>,
    /// Everything the terminal received, escape codes included, lossily decoded.
    pub transcript: String,
}

impl TerminalRun {
    /// The transcript as lines: every escape code (cursor moves, clears) and carriage return
    /// breaks a line, and so does the terminal's width, so each drawing of a full-width line
    /// (a progress bar's) is a line of its own.
    pub fn screen_lines(&self) -> Vec<String> {
        let escape = regex::Regex::new(r"\x1b\[[0-9;?]*[A-Za-z]|\r").expect("a valid regex");
        escape
            .replace_all(&self.transcript, "\n")
            .lines()
            .flat_map(|line| {
                let characters: Vec<char> = line.chars().collect();
                characters
                    .chunks(COLUMNS)
                    .map(|chunk| chunk.iter().collect::<String>())
                    .collect::<Vec<_>>()
            })
            .collect()
    }
}

/// Runs `command` (its program, arguments, environment and directory) on a 120×40 `xterm`
/// pseudo-terminal, typing `input` into it; panics with the transcript after `timeout`.
pub fn run_on_terminal(command: &Command, input: &[u8], timeout: Duration) -> TerminalRun {
    let mut argv = vec![command.get_program().to_string_lossy().into_owned()];
    argv.extend(
        command
            .get_args()
            .map(|arg| arg.to_string_lossy().into_owned()),
    );
    let typed = String::from_utf8_lossy(input);
    let steps: Vec<Step<'_>> = if typed.is_empty() {
        Vec::new()
    } else {
        vec![Step::Send(&typed)]
    };
    let mut driver = driver(argv, &steps, timeout, Some([40, COLUMNS]));
    driver.env("TERM", "xterm");
    for (name, value) in command.get_envs() {
        match value {
            Some(value) => driver.env(name, value),
            None => driver.env_remove(name),
        };
    }
    if let Some(directory) = command.get_current_dir() {
        driver.current_dir(directory);
    }
    let output = driver
        .output()
        .expect("cannot run python3 with the pty driver");
    let transcript = String::from_utf8_lossy(&output.stdout).into_owned();
    if output.status.code() == Some(124) && output.stderr.starts_with(b"timed out") {
        panic!(
            "{}\n--- terminal ---\n{transcript}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    TerminalRun {
        code: output.status.code(),
        transcript,
    }
}
