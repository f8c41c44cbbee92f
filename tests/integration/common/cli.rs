//! The CLI's output as data: `--json` documents, submissions, job states and times.

use std::process::Output;
use std::time::{Duration, SystemTime};

use serde_json::Value;

use super::{TestServer, wait_until};

/// The JSON document a successful command printed; panics with its output otherwise.
pub fn json_of(output: &Output) -> Value {
    assert!(
        output.status.success(),
        "command failed ({}):\nstdout: {}\nstderr: {}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).unwrap_or_else(|error| {
        panic!(
            "stdout is not one JSON document ({error}):\n{}",
            String::from_utf8_lossy(&output.stdout)
        )
    })
}

/// A command's stderr, lossily decoded.
pub fn stderr_of(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// Submits a job of one `task` with `input` on the default cluster (`tilebox job submit`);
/// answers its id.
pub fn submit(server: &TestServer, task: &str, input: &str) -> String {
    let job = json_of(&server.tilebox(&[
        "--json", "job", "submit", "--name", "test", "--task", task, "--input", input,
    ]));
    job["id"].as_str().expect("the job's id").to_string()
}

/// `tilebox job get --json ID`: the job with its task tree.
pub fn job_document(server: &TestServer, id: &str) -> Value {
    json_of(&server.tilebox(&["--json", "job", "get", id]))
}

/// Waits until job `id` is in `state` (`"completed"`, `"failed"`, ...) and answers its
/// document; panics with the last document seen after `timeout`.
pub fn wait_for_job_state(server: &TestServer, id: &str, state: &str, timeout: Duration) -> Value {
    let mut last = Value::Null;
    wait_until(format!("job {id} to be {state}"), timeout, || {
        last = job_document(server, id);
        last["state"] == state
    })
    .unwrap_or_else(|timed_out| panic!("{timed_out}; it is:\n{last:#}"));
    last
}

/// An RFC 3339 timestamp of the CLI's JSON as a time. Times must be compared as times: with
/// a variable-length fraction, `17.022Z` sorts before `17.02Z` as a string.
pub fn time_of(value: &Value) -> SystemTime {
    let text = value
        .as_str()
        .unwrap_or_else(|| panic!("expected an RFC 3339 string, got {value}"));
    humantime::parse_rfc3339(text).unwrap_or_else(|error| panic!("{text:?}: {error}"))
}
