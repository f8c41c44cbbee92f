//! Commands driven through a pseudo-terminal (`pty_driver.py`, Python's `pty` module): what a
//! person at a terminal sees and types, for debuggers (`task run --pdb`, `breakpoint()`).

use std::process::{Command, Output};
use std::time::Duration;

/// One step of a terminal session.
pub enum Step<'a> {
    /// Wait for this text (after the previous match).
    Expect(&'a str),
    /// Type this text.
    Send(&'a str),
}

/// Runs `program args` in a pseudo-terminal, in `directory`, through `steps`; answers the
/// driver's output: the transcript on stdout, the command's exit status (124 with the reason
/// on stderr if an expected text did not come within `timeout`).
pub fn run_in_pty(
    program: &std::path::Path,
    args: &[&str],
    directory: &std::path::Path,
    steps: &[Step<'_>],
    timeout: Duration,
) -> Output {
    let mut argv = vec![program.to_string_lossy().into_owned()];
    argv.extend(args.iter().map(|arg| arg.to_string()));
    let steps: Vec<[&str; 2]> = steps
        .iter()
        .map(|step| match step {
            Step::Expect(text) => ["expect", text],
            Step::Send(text) => ["send", text],
        })
        .collect();
    let spec = serde_json::json!({
        "argv": argv,
        "steps": steps,
        "timeout": timeout.as_secs_f64(),
    });
    let driver = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/integration/common/pty_driver.py"
    );
    Command::new("python3")
        .arg(driver)
        .arg(spec.to_string())
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
