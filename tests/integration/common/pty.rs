//! Running a command on a pseudo-terminal, as a person at a terminal runs it: its stdin,
//! stdout and stderr are one terminal (120 columns, 40 rows). Driven by Python's `pty` module
//! (a small script, no extra crate); the transcript is what the terminal received.

use std::io::{Read, Write};
use std::process::{Command, Stdio};
use std::time::Duration;

use super::wait_for_exit;

/// The terminal's width: a line drawn full width wraps without a line break.
pub const COLUMNS: usize = 120;

/// Forks `argv` on a pseudo-terminal, writes stdin's bytes to it, copies what the terminal
/// shows to stdout until the command closes it, and exits with the command's exit code.
const DRIVER: &str = r#"
import fcntl, os, pty, struct, sys, termios
argv = sys.argv[1:]
pid, terminal = pty.fork()
if pid == 0:
    fcntl.ioctl(0, termios.TIOCSWINSZ, struct.pack("HHHH", 40, COLUMNS, 0, 0))
    os.execvp(argv[0], argv)
typed = sys.stdin.buffer.read()
if typed:
    os.write(terminal, typed)
while True:
    try:
        chunk = os.read(terminal, 65536)
    except OSError:
        break
    if not chunk:
        break
    sys.stdout.buffer.write(chunk)
    sys.stdout.buffer.flush()
_, status = os.waitpid(pid, 0)
sys.exit(os.waitstatus_to_exitcode(status))
"#;

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

/// Runs `command` (its program, arguments, environment and directory) on a pseudo-terminal,
/// typing `input` into it; panics with the transcript so far after `timeout`.
pub fn run_on_terminal(command: &Command, input: &[u8], timeout: Duration) -> TerminalRun {
    let mut driver = Command::new("python3");
    driver
        .arg("-c")
        .arg(DRIVER.replace("COLUMNS", &COLUMNS.to_string()))
        .arg(command.get_program())
        .args(command.get_args())
        .env("TERM", "xterm")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    for (name, value) in command.get_envs() {
        match value {
            Some(value) => driver.env(name, value),
            None => driver.env_remove(name),
        };
    }
    if let Some(directory) = command.get_current_dir() {
        driver.current_dir(directory);
    }
    let mut child = driver
        .spawn()
        .expect("cannot start the pty driver (python3)");
    let mut stdin = child.stdin.take().expect("piped stdin");
    stdin
        .write_all(input)
        .expect("cannot type into the terminal");
    drop(stdin);
    let mut stdout = child.stdout.take().expect("piped stdout");
    let reader = std::thread::spawn(move || {
        let mut transcript = Vec::new();
        let _ = stdout.read_to_end(&mut transcript);
        transcript
    });
    let status = match wait_for_exit(&mut child, "the command on the terminal to exit", timeout) {
        Ok(status) => status,
        Err(timed_out) => {
            let _ = child.kill();
            let _ = child.wait();
            let transcript = reader.join().unwrap_or_default();
            panic!(
                "{timed_out}\n--- terminal ---\n{}",
                String::from_utf8_lossy(&transcript)
            );
        }
    };
    let transcript = reader.join().expect("the terminal reader panicked");
    TerminalRun {
        code: status.code(),
        transcript: String::from_utf8_lossy(&transcript).into_owned(),
    }
}
