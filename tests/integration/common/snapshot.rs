//! Snapshots of CLI output: a transcript of one command, and insta filters for what changes
//! from run to run (ids, times, durations, ports, temp paths).

use std::process::Output;

use serde_json::Value;

/// insta settings with the filters every CLI snapshot needs; bind them for the whole test
/// with `let _snapshots = snapshot_settings().bind_to_scope();`.
///
/// A table pads each column to its widest value, so a filtered value must have had the same
/// width in every run for the table to snapshot alike: ids do, and so do the CLI's times to
/// the second; times with a fraction (which drops trailing zeros) do not, so a table with
/// them (`job spans`) is not snapshotted.
pub fn snapshot_settings() -> insta::Settings {
    let mut settings = insta::Settings::clone_current();
    // One directory for every area's snapshots, whatever file the test is in.
    settings.set_snapshot_path(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/integration/snapshots"
    ));
    // Temp dirs (tempfile's `.tmpXXXXXX` or `<prefix>XXXXXX`), keeping what is below them.
    let temp = std::env::temp_dir();
    let temp = regex::escape(
        temp.to_str()
            .expect("a UTF-8 temp dir")
            .trim_end_matches('/'),
    );
    settings.add_filter(&format!(r"{temp}/[^/\s:'`]+"), "[temp]");
    settings.add_filter(
        r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}",
        "[uuid]",
    );
    // Digests and fingerprints, trace ids, span ids (in trace parents too).
    settings.add_filter(r"\b[0-9a-f]{64}\b", "[digest]");
    settings.add_filter(r"\b[0-9a-f]{32}\b", "[trace-id]");
    settings.add_filter(r"\b[0-9a-f]{16}\b", "[span-id]");
    settings.add_filter(
        r"\b\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?Z\b",
        "[time]",
    );
    settings.add_filter(r"\b\d+\.\d+s\b", "[duration]");
    settings.add_filter(
        r#""(compute_time_seconds|elapsed_time_seconds|parallelism)": [0-9.e+-]+"#,
        r#""$1": [number]"#,
    );
    settings.add_filter(r"127\.0\.0\.1:\d+", "127.0.0.1:[port]");
    settings
}

/// A command and what it did, for a snapshot: the command line, the exit code, and stdout
/// (pretty-printed when it is JSON) and stderr when they are not empty.
pub fn transcript(args: &[&str], output: &Output) -> String {
    let command: Vec<String> = args
        .iter()
        .map(|arg| {
            if arg.is_empty() || arg.contains(char::is_whitespace) {
                format!("'{arg}'")
            } else {
                (*arg).to_string()
            }
        })
        .collect();
    let mut text = format!("$ tilebox {}\n", command.join(" "));
    match output.status.code() {
        Some(code) => text.push_str(&format!("exit code: {code}\n")),
        None => text.push_str(&format!("exit: {}\n", output.status)),
    }
    let stdout = String::from_utf8_lossy(&output.stdout);
    if !stdout.is_empty() {
        let stdout = match serde_json::from_str::<Value>(&stdout) {
            Ok(document) => serde_json::to_string_pretty(&document).expect("JSON prints"),
            Err(_) => stdout.trim_end().to_string(),
        };
        text.push_str(&format!("--- stdout ---\n{stdout}\n"));
    }
    let stderr = String::from_utf8_lossy(&output.stderr);
    if !stderr.is_empty() {
        text.push_str(&format!("--- stderr ---\n{}\n", stderr.trim_end()));
    }
    text
}
