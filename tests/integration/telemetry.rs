//! Task logs and spans from the in-process runner to the server to the CLI: attribution,
//! failures, streaming while a task runs, pagination and retention; OTLP/HTTP exports in
//! JSON and gzip, as collectors send them. (The official SDK's OTLP exports are covered in
//! the `interop` module; refused exports in `hostile::server_limits`.)

use std::path::Path;
use std::time::Duration;

use crate::common::{
    RunnerProcess, TestServer, http_post, json_of, project, project_runner, snapshot_settings,
    submit, transcript, wait_until,
};
use serde_json::Value;

const APP: &str = r#"
import time
import logging
from tilebox.workflows import ExecutionContext, Runner, Task

class Chatty(Task):
    lines: int
    def execute(self, context: ExecutionContext) -> None:
        for index in range(self.lines):
            context.logger.info("line", index=index)
        logging.getLogger("user.module").warning("from stdlib logging")

class Broken(Task):
    def execute(self, context: ExecutionContext) -> None:
        context.logger.error("about to fail")
        raise ValueError("kaboom")

class Long(Task):
    def execute(self, context: ExecutionContext) -> None:
        context.logger.info("started the long task")
        time.sleep(6)

runner = Runner(tasks=[Chatty, Broken, Long])
"#;

/// A runner of the `APP` project; its log goes to a file in the project.
fn runner(server: &TestServer, project: &Path, args: &[&str]) -> RunnerProcess {
    let mut args = args.to_vec();
    args.push("--quiet");
    let log = project.join(format!("runner-{}.log", uuid::Uuid::new_v4()));
    RunnerProcess::spawn(&mut project_runner(server.url(), project, &args), log)
}

fn json(server: &TestServer, args: &[&str]) -> Value {
    json_of(&server.tilebox(args))
}

/// Runs every queued task with a runner that stops when idle.
fn run_all(server: &TestServer, project: &Path) {
    runner(server, project, &["--stop-when-idling"]).wait_for_exit(
        "the runner to finish the queued tasks",
        Duration::from_secs(120),
    );
}

#[test]
fn task_logs_and_spans_reach_the_cli_attributed_to_job_and_task() {
    let server = TestServer::start();
    let project = project("chatty", APP);
    let job = submit(&server, "Chatty", "3");
    run_all(&server, project.path());
    let logs = json(&server, &["--json", "job", "logs", &job]);
    let records = logs["logs"].as_array().expect("logs");
    let bodies: Vec<&str> = records
        .iter()
        .filter_map(|record| record["body"].as_str())
        .collect();
    assert_eq!(
        bodies,
        ["line", "line", "line", "from stdlib logging"],
        "{logs}"
    );
    let task = json(&server, &["--json", "job", "get", &job])["tasks"][0]["id"]
        .as_str()
        .expect("task")
        .to_string();
    for (index, record) in records[..3].iter().enumerate() {
        assert_eq!(record["attributes"]["index"], index);
        assert_eq!(record["task_id"], task);
        assert_eq!(record["severity_text"], "INFO");
        assert_eq!(record["trace_id"].as_str().map(str::len), Some(32));
    }
    assert_eq!(records[3]["severity_text"], "WARN");

    let spans = json(&server, &["--json", "job", "spans", &job]);
    let span = &spans["spans"][0];
    assert_eq!(span["name"], "task/Chatty");
    assert_eq!(span["task_id"], task);
    assert_eq!(span["status_code"], "STATUS_CODE_OK");
    assert_eq!(
        span["trace_id"], records[0]["trace_id"],
        "logs and span share the job's trace"
    );
    assert_eq!(
        span["span_id"], records[0]["span_id"],
        "the logs were written inside the task's span"
    );
    assert_eq!(span["attributes"]["identifier.name"], "Chatty");

    let _snapshots = snapshot_settings().bind_to_scope();
    let logs = ["job", "logs", &job];
    insta::assert_snapshot!("chatty_job_logs", transcript(&logs, &server.tilebox(&logs)));
    // The timeline's bars scale with the spans' durations: not a snapshot.
    let timeline = server.tilebox(&["job", "spans", &job, "--timeline"]);
    assert!(
        String::from_utf8_lossy(&timeline.stdout).contains("Chatty"),
        "{timeline:?}"
    );
}

#[test]
fn a_failed_task_span_carries_the_exception() {
    let server = TestServer::start();
    let project = project("chatty", APP);
    let job = submit(&server, "Broken", "");
    run_all(&server, project.path());
    let span = json(&server, &["--json", "job", "spans", &job])["spans"][0].clone();
    assert_eq!(span["status_code"], "STATUS_CODE_ERROR");
    let event = &span["events"][0];
    assert_eq!(event["name"], "exception");
    assert_eq!(event["attributes"]["exception.type"], "ValueError");
    assert_eq!(event["attributes"]["exception.message"], "kaboom");
    assert!(
        event["attributes"]["exception.stacktrace"]
            .as_str()
            .expect("stack")
            .contains("raise ValueError")
    );
    let errors = json(
        &server,
        &["--json", "job", "logs", &job, "--level", "error"],
    );
    assert_eq!(errors["logs"][0]["body"], "about to fail");
    let info = json(&server, &["--json", "job", "logs", &job, "--level", "info"]);
    assert_eq!(
        info["logs"],
        serde_json::json!([]),
        "the level filter applies"
    );
}

#[test]
fn the_runners_own_line_about_a_failed_task_shows_in_job_logs() {
    let server = TestServer::start();
    let project = project("chatty", APP);
    let job = submit(&server, "Broken", "");
    run_all(&server, project.path());
    let task = json(&server, &["--json", "job", "get", &job])["tasks"][0]["id"]
        .as_str()
        .expect("task")
        .to_string();
    let logs = json(&server, &["--json", "job", "logs", &job]);
    let records = logs["logs"].as_array().expect("logs");
    let own = records
        .iter()
        .find(|record| record["body"] == "about to fail")
        .unwrap_or_else(|| panic!("the task's own line is missing: {logs}"));
    let runner_line = records
        .iter()
        .find(|record| record["scope"] == "tilebox.runner")
        .unwrap_or_else(|| panic!("no line of the runner's own: {logs}"));
    assert!(
        runner_line["body"]
            .as_str()
            .is_some_and(|body| body.starts_with("task failed") && body.contains("kaboom")),
        "{runner_line}"
    );
    assert_eq!(runner_line["severity_text"], "WARN");
    assert_eq!(runner_line["task_id"], task.as_str());
    assert_eq!(
        runner_line["trace_id"], own["trace_id"],
        "in the job's trace"
    );
    assert_eq!(runner_line["span_id"], own["span_id"], "in the task's span");
    // Filtering by the task keeps it; people see it in the plain listing.
    let by_task = json(&server, &["--json", "job", "logs", &job, "--task", &task]);
    assert!(
        by_task["logs"]
            .as_array()
            .expect("logs")
            .iter()
            .any(|record| record["scope"] == "tilebox.runner"),
        "{by_task}"
    );
    let listing = server.tilebox(&["job", "logs", &job]);
    assert!(
        String::from_utf8_lossy(&listing.stdout).contains("task failed"),
        "{listing:?}"
    );
}

#[test]
fn logs_of_a_running_task_are_visible_before_it_ends() {
    let server = TestServer::start();
    let project = project("chatty", APP);
    let job = submit(&server, "Long", "");
    let mut runner = runner(&server, project.path(), &[]);
    let mut seen_while_running = false;
    let found = wait_until("the task's first log line", Duration::from_secs(60), || {
        let logs = json(&server, &["--json", "job", "logs", &job]);
        let state = json(&server, &["--json", "job", "get", &job])["state"].clone();
        if logs["logs"]
            .as_array()
            .is_some_and(|records| !records.is_empty())
        {
            seen_while_running = state == "running";
            return true;
        }
        false
    });
    runner.kill();
    found.unwrap_or_else(|timed_out| panic!("{timed_out}\n{}", runner.log()));
    assert!(
        seen_while_running,
        "the log line arrived while the task still ran"
    );
}

#[test]
fn logs_page_with_a_cursor() {
    let server = TestServer::start();
    let project = project("chatty", APP);
    let job = submit(&server, "Chatty", "24");
    run_all(&server, project.path());
    let mut cursor: Option<String> = None;
    let mut pages = Vec::new();
    loop {
        let mut args = vec!["--json", "job", "logs", job.as_str(), "--limit", "10"];
        if let Some(cursor) = &cursor {
            args.extend(["--cursor", cursor.as_str()]);
        }
        let page = json(&server, &args);
        let indexes: Vec<i64> = page["logs"]
            .as_array()
            .expect("logs")
            .iter()
            .filter_map(|record| record["attributes"]["index"].as_i64())
            .collect();
        pages.push(page["logs"].as_array().expect("logs").len());
        if let Some(first) = indexes.first() {
            assert_eq!(
                *first,
                (pages.len() as i64 - 1) * 10,
                "pages continue where the last ended"
            );
        }
        match page["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_string()),
            None => break,
        }
    }
    assert_eq!(
        pages,
        [10, 10, 5],
        "24 lines and the stdlib warning, in pages of 10"
    );
    let newest = json(
        &server,
        &[
            "--json", "job", "logs", &job, "--limit", "1", "--sort", "desc",
        ],
    );
    assert_eq!(newest["logs"][0]["body"], "from stdlib logging");
}

#[test]
fn logs_past_their_retention_are_deleted() {
    // Long enough that the logs are still there when the runner has gone and a CLI has started.
    let server = TestServer::start_with(&["--telemetry-retention", "8s"]);
    let project = project("chatty", APP);
    let job = submit(&server, "Chatty", "1");
    run_all(&server, project.path());
    let count = |what: &str| {
        json(&server, &["--json", "job", what, &job])[what]
            .as_array()
            .map(Vec::len)
            .unwrap_or(0)
    };
    assert!(
        count("logs") > 0,
        "the logs are stored until their retention"
    );
    assert!(
        count("spans") > 0,
        "the spans are stored until their retention"
    );
    // The runner sends logs and spans in two calls, so one cleanup pass can delete the logs
    // and the next the spans.
    wait_until(
        "the cleanup to delete the logs and spans",
        Duration::from_secs(30),
        || count("logs") == 0 && count("spans") == 0,
    )
    .unwrap();
}

/// Logs a line that would clear the screen, set the window title and ring the bell, and
/// carriage-return over itself.
const HOSTILE_LOG: &str = r#"
from tilebox.workflows import ExecutionContext, Runner, Task

class Hostile(Task):
    def execute(self, context: ExecutionContext) -> None:
        context.logger.info("before\x1b[2J\x1b]0;pwned\x07\rafter")

runner = Runner(tasks=[Hostile])
"#;

#[test]
fn job_logs_escapes_control_characters_on_a_terminal_and_keeps_them_in_a_pipe() {
    let server = TestServer::start();
    let project = project("hostile-log", HOSTILE_LOG);
    let job = submit(&server, "Hostile", "");
    run_all(&server, project.path());

    // Under a pseudo-terminal (`script` gives the command one): escaped.
    let command = format!(
        "{} job logs {job}",
        crate::common::tilebox_binary().display()
    );
    let output = std::process::Command::new("script")
        .args(["-qec", &command, "/dev/null"])
        .env("TILEBOX_API_URL", server.url())
        .env_remove("TILEBOX_API_KEY")
        .output()
        .expect("run `script` (util-linux)");
    assert!(output.status.success(), "{output:?}");
    let shown = String::from_utf8_lossy(&output.stdout);
    assert!(
        shown.contains(r"before\x1b[2J\x1b]0;pwned\x07\rafter"),
        "the escaped form is shown: {shown:?}"
    );
    assert!(
        !output.stdout.contains(&0x1b) && !output.stdout.contains(&0x07),
        "no raw ESC or BEL reaches the terminal: {shown:?}"
    );

    // Piped: the text as it was logged.
    let piped = server.tilebox(&["job", "logs", &job]);
    assert!(piped.status.success(), "{piped:?}");
    assert!(
        String::from_utf8_lossy(&piped.stdout).contains("before\x1b[2J\x1b]0;pwned\x07\rafter"),
        "{piped:?}"
    );
    // And JSON keeps the exact text either way.
    let logs = json(&server, &["--json", "job", "logs", &job]);
    assert_eq!(
        logs["logs"][0]["body"],
        "before\x1b[2J\x1b]0;pwned\x07\rafter"
    );
}

/// `data` gzip-compressed, as an exporter with `compression: gzip` sends it.
fn gzip(data: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    encoder.write_all(data).expect("compress");
    encoder.finish().expect("compress")
}

#[test]
fn otlp_json_and_gzip_exports_show_in_job_logs_and_spans() {
    use prost::Message;
    use tilebox::api::otlp::collector::logs::v1::ExportLogsServiceRequest;
    use tilebox::api::otlp::common::v1::{AnyValue, any_value};
    use tilebox::api::otlp::logs::v1::{LogRecord, ResourceLogs, ScopeLogs};

    let server = TestServer::start();
    // A job nobody runs: its trace is what the exports below are linked by.
    let job = submit(&server, "Nobody", "1");
    let trace_parent = json(&server, &["--json", "job", "get", &job])["trace_parent"]
        .as_str()
        .expect("trace_parent")
        .to_string();
    let trace = trace_parent
        .split('-')
        .nth(1)
        .expect("trace id")
        .to_string();
    let task = "0190a8c4-5e2b-7c1d-9f00-1a2b3c4d5e6f";

    let json_log = |body: &str| {
        serde_json::json!({"resourceLogs": [{
            "resource": {"attributes": [{"key": "service.name", "value": {"stringValue": "collector"}}]},
            "scopeLogs": [{"scope": {"name": "otel-json"}, "logRecords": [{
                "timeUnixNano": "1700000000000000000",
                "severityNumber": 13,
                "severityText": "WARN",
                "traceId": trace,
                "spanId": "b7ad6b7169203331",
                "body": {"stringValue": body},
                "attributes": [
                    {"key": "task_id", "value": {"stringValue": task}},
                    {"key": "attempt", "value": {"intValue": "2"}},
                ],
            }]}],
        }]})
        .to_string()
    };
    let json_span = |name: &str| {
        serde_json::json!({"resourceSpans": [{"scopeSpans": [{"spans": [{
            "traceId": trace,
            "spanId": "00f067aa0ba902b7",
            "parentSpanId": "",
            "name": name,
            "kind": 2,
            "startTimeUnixNano": 1_700_000_000_000_000_000u64,
            "endTimeUnixNano": "1700000001500000000",
            "status": {"code": 2, "message": "boom"},
        }]}]}]})
        .to_string()
    };
    let protobuf_log = ExportLogsServiceRequest {
        resource_logs: vec![ResourceLogs {
            scope_logs: vec![ScopeLogs {
                log_records: vec![LogRecord {
                    time_unix_nano: 1_700_000_000_000_000_001,
                    trace_id: hex::decode(&trace).expect("hex"),
                    body: Some(AnyValue {
                        value: Some(any_value::Value::StringValue("gzip protobuf line".into())),
                    }),
                    ..LogRecord::default()
                }],
                ..ScopeLogs::default()
            }],
            ..ResourceLogs::default()
        }],
    }
    .encode_to_vec();

    const JSON: (&str, &str) = ("Content-Type", "application/json");
    const PROTOBUF: (&str, &str) = ("Content-Type", "application/x-protobuf");
    const GZIP: (&str, &str) = ("Content-Encoding", "gzip");
    let exports = [
        ("/v1/logs", vec![JSON], json_log("json line").into_bytes()),
        (
            "/v1/logs",
            vec![JSON, GZIP],
            gzip(json_log("gzip json line").as_bytes()),
        ),
        ("/v1/logs", vec![PROTOBUF, GZIP], gzip(&protobuf_log)),
        (
            "/v1/traces",
            vec![JSON],
            json_span("json span").into_bytes(),
        ),
        (
            "/v1/traces",
            vec![JSON, GZIP],
            gzip(json_span("gzip json span").as_bytes()),
        ),
    ];
    for (path, headers, body) in &exports {
        let response = http_post(&server, path, headers, body);
        assert_eq!(
            response.status,
            200,
            "{path} {headers:?}: {}",
            response.text()
        );
        // The answer is in the request's encoding: an empty export response.
        if headers.contains(&JSON) {
            assert_eq!(response.header("content-type"), Some("application/json"));
            assert_eq!(response.text(), "{}");
        } else {
            assert_eq!(
                response.header("content-type"),
                Some("application/x-protobuf")
            );
            assert!(response.body.is_empty());
        }
    }

    let logs = json(&server, &["--json", "job", "logs", &job]);
    let records = logs["logs"].as_array().expect("logs");
    let bodies: Vec<&str> = records
        .iter()
        .filter_map(|record| record["body"].as_str())
        .collect();
    assert_eq!(
        bodies,
        ["json line", "gzip json line", "gzip protobuf line"],
        "{logs}"
    );
    let json_record = &records[0];
    // The hex ids were read as hex (not base64): the record is in the job's trace.
    assert_eq!(json_record["trace_id"], trace.as_str());
    assert_eq!(json_record["span_id"], "b7ad6b7169203331");
    assert_eq!(json_record["task_id"], task);
    assert_eq!(json_record["severity_number"], 13);
    assert_eq!(json_record["severity_text"], "WARN");
    assert_eq!(json_record["attributes"]["attempt"], 2);
    assert_eq!(json_record["scope"], "otel-json");
    assert!(
        json_record["time"]
            .as_str()
            .is_some_and(|time| time.starts_with("2023-11-14T22:13:20")),
        "{json_record}"
    );

    let spans = json(&server, &["--json", "job", "spans", &job]);
    let spans = spans["spans"].as_array().expect("spans");
    let names: Vec<&str> = spans
        .iter()
        .filter_map(|span| span["name"].as_str())
        .collect();
    assert_eq!(names, ["json span", "gzip json span"], "{spans:?}");
    assert_eq!(spans[0]["span_id"], "00f067aa0ba902b7");
    assert_eq!(spans[0]["duration_seconds"], 1.5);
    assert_eq!(spans[0]["status_code"], "STATUS_CODE_ERROR");
    assert_eq!(spans[0]["status_message"], "boom");
    // And people see them: the table names the spans.
    let table = server.tilebox(&["job", "spans", &job]);
    assert!(
        String::from_utf8_lossy(&table.stdout).contains("gzip json span"),
        "{table:?}"
    );
}
