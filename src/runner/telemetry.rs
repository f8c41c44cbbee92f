//! Task logs and spans from the runner to the server, as OTLP over gRPC: every task
//! execution becomes a span (a child of its job's trace) and its log records are attributed
//! to the job (trace id) and task (`task_id`). Records are batched and sent while the task
//! runs (at most `FLUSH_EVERY` late), so logging costs little and shows up promptly.
//!
//! The runner's own log lines about a task ("task failed", a lease not extended, a result
//! the server refused: `tracing` events with a `task_id` or `task` field) go to the task's
//! job too, through the [`RunnerLogs`] layer, under the `tilebox.runner` scope.

use std::collections::{HashMap, VecDeque};
use std::sync::{LazyLock, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::Value;
use tokio::sync::mpsc;

use crate::api::otlp::collector::logs::v1::ExportLogsServiceRequest;
use crate::api::otlp::collector::trace::v1::ExportTraceServiceRequest;
use crate::api::otlp::common::v1::{
    AnyValue, ArrayValue, InstrumentationScope, KeyValue, any_value,
};
use crate::api::otlp::logs::v1::{LogRecord, ResourceLogs, ScopeLogs};
use crate::api::otlp::resource::v1::Resource;
use crate::api::otlp::trace::v1::{ResourceSpans, ScopeSpans, Span, Status, span, status};
use crate::client::Client;

/// The scope of the runner's own log lines about a task.
pub const RUNNER_SCOPE: &str = "tilebox.runner";
/// How many tasks that ended the runner's own log lines can still be linked to (a running
/// task is linked until it ends, however long it runs): about 0.4 s of ends at 10,000
/// tasks/s, time for the answer to their report. Each costs about 550 bytes of runner memory
/// (measured: 16,384 held 9 MiB).
const REMEMBERED_TASKS: usize = 4_096;

/// How often batched records are sent.
const FLUSH_EVERY: Duration = Duration::from_millis(250);
/// Most records per export call.
const BATCH: usize = 512;

enum Item {
    Log {
        scope: String,
        record: LogRecord,
    },
    Span(Span),
    /// Send what is buffered now, then answer.
    Flush(tokio::sync::oneshot::Sender<()>),
}

/// Sends telemetry to the server; cheap to clone.
#[derive(Clone)]
pub struct Exporter {
    sender: mpsc::UnboundedSender<Item>,
}

/// Where a task's telemetry belongs.
#[derive(Debug, Clone)]
pub struct TaskTrace {
    pub trace_id: Vec<u8>,
    pub parent_span_id: Vec<u8>,
    pub span_id: Vec<u8>,
    pub task_id: String,
}

impl TaskTrace {
    /// A new span under the job's `trace_parent` (`00-<trace>-<span>-<flags>`).
    pub fn new(trace_parent: &str, task_id: &str) -> Self {
        let mut parts = trace_parent.split('-').skip(1);
        let trace_id = parts
            .next()
            .and_then(|text| hex::decode(text).ok())
            .filter(|id| id.len() == 16)
            .unwrap_or_else(|| random_bytes(16));
        let parent_span_id = parts
            .next()
            .and_then(|text| hex::decode(text).ok())
            .filter(|id| id.len() == 8)
            .unwrap_or_default();
        Self {
            trace_id,
            parent_span_id,
            span_id: random_bytes(8),
            task_id: task_id.to_string(),
        }
    }
}

fn random_bytes(count: usize) -> Vec<u8> {
    let random = uuid::Uuid::new_v4();
    random.as_bytes()[..count].to_vec()
}

pub fn now_nanos() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|elapsed| elapsed.as_nanos() as u64)
        .unwrap_or(0)
}

fn string(value: impl Into<String>) -> AnyValue {
    AnyValue {
        value: Some(any_value::Value::StringValue(value.into())),
    }
}

fn attribute(key: &str, value: AnyValue) -> KeyValue {
    KeyValue {
        key: key.to_string(),
        value: Some(value),
    }
}

/// A JSON value as an OTLP attribute value (objects and nulls as JSON text, as the SDK does).
fn any_value_of(value: &Value) -> AnyValue {
    let value = match value {
        Value::Bool(flag) => any_value::Value::BoolValue(*flag),
        Value::Number(number) => match number.as_i64() {
            Some(integer) => any_value::Value::IntValue(integer),
            None => any_value::Value::DoubleValue(number.as_f64().unwrap_or(0.0)),
        },
        Value::String(text) => any_value::Value::StringValue(text.clone()),
        Value::Array(items) => any_value::Value::ArrayValue(ArrayValue {
            values: items.iter().map(any_value_of).collect(),
        }),
        other => any_value::Value::StringValue(other.to_string()),
    };
    AnyValue { value: Some(value) }
}

impl Exporter {
    /// Starts the sender task.
    pub fn start(client: Client, runner_id: String, cluster: String) -> Self {
        let (sender, receiver) = mpsc::unbounded_channel();
        let resource = Resource {
            attributes: vec![
                attribute("service.namespace", string("tilebox.workflows")),
                attribute("service.name", string("tilebox-runner")),
                attribute("service.instance.id", string(runner_id)),
                attribute("service.version", string(env!("CARGO_PKG_VERSION"))),
                attribute(
                    "process.pid",
                    AnyValue {
                        value: Some(any_value::Value::IntValue(i64::from(std::process::id()))),
                    },
                ),
                attribute("host.name", string(hostname())),
                attribute("tilebox.cluster", string(cluster)),
            ],
            dropped_attributes_count: 0,
        };
        tokio::spawn(run(client, resource, receiver));
        links().sender = Some(sender.clone());
        Self { sender }
    }

    /// Links the runner's own log lines about `trace`'s task to its job while the task runs
    /// (until the answer is dropped), and then for the [`REMEMBERED_TASKS`] tasks that ended
    /// most recently.
    pub fn remember(&self, trace: &TaskTrace) -> Remembered {
        link(trace)
    }

    /// A log record the task runtime emitted (its JSON form), attributed to `trace`.
    pub fn log(&self, trace: &TaskTrace, payload: &str) {
        let record: Value = serde_json::from_str(payload).unwrap_or(Value::Null);
        let mut attributes = vec![attribute("task_id", string(trace.task_id.clone()))];
        if let Some(fields) = record.get("fields").and_then(Value::as_object) {
            for (key, value) in fields {
                if key != "task_id" {
                    attributes.push(attribute(key, any_value_of(value)));
                }
            }
        }
        attributes.push(attribute("trace_id", string(hex::encode(&trace.trace_id))));
        attributes.push(attribute("span_id", string(hex::encode(&trace.span_id))));
        let level = record
            .get("level")
            .and_then(Value::as_str)
            .unwrap_or("INFO")
            .to_string();
        let severity = record
            .get("severity_number")
            .and_then(Value::as_i64)
            .unwrap_or(9) as i32;
        let time = record
            .get("time_unix_nano")
            .and_then(Value::as_u64)
            .unwrap_or_else(now_nanos);
        let scope = record
            .get("logger")
            .and_then(Value::as_str)
            .unwrap_or("tilebox.workflows.tasks")
            .to_string();
        let message = record
            .get("message")
            .and_then(Value::as_str)
            .unwrap_or(payload)
            .to_string();
        let record = LogRecord {
            time_unix_nano: time,
            observed_time_unix_nano: now_nanos(),
            severity_number: severity,
            severity_text: level,
            body: Some(string(message)),
            attributes,
            dropped_attributes_count: 0,
            flags: 1,
            trace_id: trace.trace_id.clone(),
            span_id: trace.span_id.clone(),
            event_name: String::new(),
        };
        let _ = self.sender.send(Item::Log { scope, record });
    }

    /// Sends everything buffered so far (before the runner exits).
    pub async fn flush(&self) {
        let (done, flushed) = tokio::sync::oneshot::channel();
        if self.sender.send(Item::Flush(done)).is_ok() {
            let _ = tokio::time::timeout(Duration::from_secs(5), flushed).await;
        }
    }

    /// The span of one task execution.
    #[allow(clippy::too_many_arguments)]
    pub fn task_span(
        &self,
        trace: &TaskTrace,
        name: &str,
        start: u64,
        identifier: (&str, &str),
        runner_id: &str,
        retry_count: i64,
        failure: Option<(&str, &str, &str)>,
    ) {
        let end = now_nanos();
        let mut attributes = vec![
            attribute("task_id", string(trace.task_id.clone())),
            attribute("identifier.name", string(identifier.0)),
            attribute("identifier.version", string(identifier.1)),
            attribute("runner.id", string(runner_id)),
            attribute(
                "retry_count",
                AnyValue {
                    value: Some(any_value::Value::IntValue(retry_count)),
                },
            ),
        ];
        let mut events = Vec::new();
        let status = match failure {
            None => Status {
                message: String::new(),
                code: status::StatusCode::Ok as i32,
            },
            Some((kind, message, traceback)) => {
                events.push(span::Event {
                    time_unix_nano: end,
                    name: "exception".into(),
                    attributes: vec![
                        attribute("exception.type", string(kind)),
                        attribute("exception.message", string(message)),
                        attribute("exception.stacktrace", string(traceback)),
                    ],
                    dropped_attributes_count: 0,
                });
                attributes.push(attribute(
                    "error",
                    AnyValue {
                        value: Some(any_value::Value::BoolValue(true)),
                    },
                ));
                Status {
                    message: "Task failed with exception".into(),
                    code: status::StatusCode::Error as i32,
                }
            }
        };
        let span = Span {
            trace_id: trace.trace_id.clone(),
            span_id: trace.span_id.clone(),
            trace_state: String::new(),
            parent_span_id: trace.parent_span_id.clone(),
            name: format!("task/{name}"),
            kind: span::SpanKind::Internal as i32,
            start_time_unix_nano: start,
            end_time_unix_nano: end,
            attributes,
            dropped_attributes_count: 0,
            events,
            dropped_events_count: 0,
            links: Vec::new(),
            dropped_links_count: 0,
            status: Some(status),
            flags: 1,
        };
        let _ = self.sender.send(Item::Span(span));
    }
}

/// Where [`RunnerLogs`] sends a runner log line about a task: the exporter of the runner in
/// this process, and the traces of the tasks it ran recently. Process-wide, as the `tracing`
/// subscriber the layer is part of.
static LINKS: LazyLock<Mutex<Links>> = LazyLock::new(|| {
    Mutex::new(Links {
        sender: None,
        running: HashMap::new(),
        ended: HashMap::new(),
        order: VecDeque::new(),
    })
});

fn links() -> std::sync::MutexGuard<'static, Links> {
    LINKS
        .lock()
        .expect("the task links are never poisoned: no code panics holding them")
}

struct Links {
    sender: Option<mpsc::UnboundedSender<Item>>,
    /// The tasks running now.
    running: HashMap<String, TaskTrace>,
    /// Tasks that ended, the most recent [`REMEMBERED_TASKS`].
    ended: HashMap<String, TaskTrace>,
    /// The ids of `ended`, oldest first.
    order: VecDeque<String>,
}

impl Links {
    fn trace(&self, task_id: &str) -> Option<&TaskTrace> {
        self.running
            .get(task_id)
            .or_else(|| self.ended.get(task_id))
    }
}

/// Links `trace`'s task as running (see [`Exporter::remember`]).
fn link(trace: &TaskTrace) -> Remembered {
    links().running.insert(trace.task_id.clone(), trace.clone());
    Remembered {
        task_id: trace.task_id.clone(),
        span_id: trace.span_id.clone(),
    }
}

/// A running task's link (see [`Exporter::remember`]); dropped when the task ended.
#[must_use = "the task is linked only while this lives"]
pub struct Remembered {
    task_id: String,
    /// This attempt's span: a task claimed again while an earlier attempt still runs here
    /// (after a lost lease) is linked to the newer attempt, which the older one's end leaves.
    span_id: Vec<u8>,
}

impl Drop for Remembered {
    fn drop(&mut self) {
        let mut links = links();
        if links
            .running
            .get(&self.task_id)
            .is_none_or(|trace| trace.span_id != self.span_id)
        {
            return;
        }
        let Some(trace) = links.running.remove(&self.task_id) else {
            return;
        };
        if links.ended.insert(self.task_id.clone(), trace).is_some() {
            // Ended again: it moves to the back, as the most recent.
            links.order.retain(|task_id| *task_id != self.task_id);
        }
        links.order.push_back(self.task_id.clone());
        while links.order.len() > REMEMBERED_TASKS {
            if let Some(oldest) = links.order.pop_front() {
                links.ended.remove(&oldest);
            }
        }
    }
}

/// A `tracing` layer that sends the runner's own log events about a task (a `task_id` or
/// `task` field naming a task the runner ran recently) to that task's job, as log records
/// in the task's trace with its `task_id`: `tilebox job logs` then shows why the runner
/// failed, handed back or lost a task next to the task's own lines. Events about no known
/// task are left to the other layers only.
pub struct RunnerLogs;

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for RunnerLogs {
    fn on_event(&self, event: &tracing::Event<'_>, _: tracing_subscriber::layer::Context<'_, S>) {
        let mut fields = EventFields::default();
        event.record(&mut fields);
        let candidates = fields
            .values
            .iter()
            .filter(|(name, _)| *name == "task_id" || *name == "task")
            .map(|(_, value)| value.as_str());
        let (sender, trace) = {
            let Ok(links) = LINKS.lock() else { return };
            let Some(sender) = links.sender.clone() else {
                return;
            };
            let Some(trace) = candidates
                .into_iter()
                .find_map(|candidate| links.trace(candidate).cloned())
            else {
                return;
            };
            (sender, trace)
        };
        let level = *event.metadata().level();
        let (severity, severity_text) = match level {
            tracing::Level::ERROR => (17, "ERROR"),
            tracing::Level::WARN => (13, "WARN"),
            tracing::Level::INFO => (9, "INFO"),
            tracing::Level::DEBUG => (5, "DEBUG"),
            tracing::Level::TRACE => (1, "TRACE"),
        };
        let mut attributes = vec![attribute("task_id", string(trace.task_id.clone()))];
        for (name, value) in &fields.values {
            if *name != "task_id" && *value != trace.task_id {
                attributes.push(attribute(name, string(value.clone())));
            }
        }
        attributes.push(attribute("logger", string(event.metadata().target())));
        let now = now_nanos();
        let record = LogRecord {
            time_unix_nano: now,
            observed_time_unix_nano: now,
            severity_number: severity,
            severity_text: severity_text.into(),
            body: Some(string(fields.message)),
            attributes,
            dropped_attributes_count: 0,
            flags: 1,
            trace_id: trace.trace_id,
            span_id: trace.span_id,
            event_name: String::new(),
        };
        let _ = sender.send(Item::Log {
            scope: RUNNER_SCOPE.into(),
            record,
        });
    }
}

/// An event's message and its other fields, as text.
#[derive(Default)]
struct EventFields {
    message: String,
    values: Vec<(&'static str, String)>,
}

impl tracing::field::Visit for EventFields {
    fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
        if field.name() == "message" {
            self.message = value.to_string();
        } else {
            self.values.push((field.name(), value.to_string()));
        }
    }

    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        self.record_str(field, &format!("{value:?}"));
    }
}

/// The host's name, as the kernel has it (empty when unreadable).
pub(super) fn hostname() -> String {
    fs_err::read_to_string("/proc/sys/kernel/hostname")
        .map(|name| name.trim().to_string())
        .unwrap_or_default()
}

async fn run(client: Client, resource: Resource, mut receiver: mpsc::UnboundedReceiver<Item>) {
    let mut client = client;
    loop {
        let Some(first) = receiver.recv().await else {
            return;
        };
        let mut items = vec![first];
        let deadline = tokio::time::Instant::now() + FLUSH_EVERY;
        while items.len() < BATCH && !matches!(items.last(), Some(Item::Flush(_))) {
            match tokio::time::timeout_at(deadline, receiver.recv()).await {
                Ok(Some(item)) => items.push(item),
                Ok(None) | Err(_) => break,
            }
        }
        let mut logs: Vec<ScopeLogs> = Vec::new();
        let mut spans = Vec::new();
        let mut flushed = Vec::new();
        for item in items {
            match item {
                Item::Flush(done) => flushed.push(done),
                Item::Log { scope, record } => match logs
                    .iter_mut()
                    .find(|group| group.scope.as_ref().is_some_and(|s| s.name == scope))
                {
                    Some(group) => group.log_records.push(record),
                    None => logs.push(ScopeLogs {
                        scope: Some(InstrumentationScope {
                            name: scope,
                            ..InstrumentationScope::default()
                        }),
                        log_records: vec![record],
                        schema_url: String::new(),
                    }),
                },
                Item::Span(span) => spans.push(span),
            }
        }
        if !logs.is_empty() {
            let request = ExportLogsServiceRequest {
                resource_logs: vec![ResourceLogs {
                    resource: Some(resource.clone()),
                    scope_logs: logs,
                    schema_url: String::new(),
                }],
            };
            if let Err(status) = client.logs.export(request).await {
                tracing::warn!(error = %status.message(), "sending task logs to the server failed; they are dropped");
            }
        }
        if !spans.is_empty() {
            let request = ExportTraceServiceRequest {
                resource_spans: vec![ResourceSpans {
                    resource: Some(resource.clone()),
                    scope_spans: vec![ScopeSpans {
                        scope: Some(InstrumentationScope {
                            name: "tilebox.workflows.runner".into(),
                            ..InstrumentationScope::default()
                        }),
                        spans,
                        schema_url: String::new(),
                    }],
                    schema_url: String::new(),
                }],
            };
            if let Err(status) = client.traces.export(request).await {
                tracing::warn!(error = %status.message(), "sending task spans to the server failed; they are dropped");
            }
        }
        for done in flushed {
            let _ = done.send(());
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_long_running_task_stays_linked_however_many_others_end_meanwhile() {
        let parent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
        let long = super::link(&TaskTrace::new(parent, "long-task"));
        for index in 0..=super::REMEMBERED_TASKS {
            drop(super::link(&TaskTrace::new(
                parent,
                &format!("short-{index}"),
            )));
        }
        let links = super::links();
        assert!(links.trace("long-task").is_some(), "the running task");
        assert!(
            links.trace("short-0").is_none(),
            "the oldest ended task is forgotten"
        );
        assert!(
            links
                .trace(&format!("short-{}", super::REMEMBERED_TASKS))
                .is_some()
        );
        drop(links);
        drop(long);
        assert!(
            super::links().trace("long-task").is_some(),
            "ended, still linked"
        );
    }

    use super::*;

    #[test]
    fn a_task_trace_continues_the_jobs_trace() {
        let trace = TaskTrace::new(
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            "t",
        );
        assert_eq!(
            hex::encode(&trace.trace_id),
            "0af7651916cd43dd8448eb211c80319c"
        );
        assert_eq!(hex::encode(&trace.parent_span_id), "b7ad6b7169203331");
        assert_eq!(trace.span_id.len(), 8);
        let orphan = TaskTrace::new("", "t");
        assert_eq!(orphan.trace_id.len(), 16);
        assert!(orphan.parent_span_id.is_empty());
    }

    #[test]
    fn a_non_ascii_trace_parent_starts_a_new_trace() {
        // Byte slicing used to panic in the middle of a multi-byte character.
        let trace = TaskTrace::new(
            "00-é0af7651916cd43dd8448eb211c8031-ü7ad6b7169203331-01",
            "t",
        );
        assert_eq!(trace.trace_id.len(), 16);
        assert!(trace.parent_span_id.is_empty());
    }

    #[test]
    fn malformed_trace_parents_start_a_new_trace_and_never_panic() {
        let malformed = [
            "garbage",
            "-",
            "----",
            "00-",
            "00--",
            "00-0af7651916cd43dd8448eb211c80319c",
            // A trace id one byte short and one byte long, a span id of the wrong length.
            "00-0af7651916cd43dd8448eb211c8031-b7ad6b7169203331-01",
            "00-0af7651916cd43dd8448eb211c80319c00-b7ad6b7169203331-01",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b71692033-01",
            // Odd lengths, non-hex, multi-byte characters on and off a hex boundary.
            "00-0af7651916cd43dd8448eb211c80319-b7ad6b716920333-01",
            "00-zzf7651916cd43dd8448eb211c80319c-b7ad6b716920333z-01",
            "00-ééééééééééééééééé-üüüüüüüü-01",
            "\u{0}\u{0}-\u{0}-\u{ffff}",
        ];
        for trace_parent in malformed {
            let trace = TaskTrace::new(trace_parent, "t");
            assert_eq!(trace.trace_id.len(), 16, "{trace_parent:?}");
            assert_eq!(trace.span_id.len(), 8, "{trace_parent:?}");
            assert!(
                trace.parent_span_id.is_empty() || trace.parent_span_id.len() == 8,
                "{trace_parent:?}"
            );
        }
        let long = format!("00-{}-{}-01", "a".repeat(1 << 20), "b".repeat(1 << 20));
        assert_eq!(TaskTrace::new(&long, "t").trace_id.len(), 16);
    }

    #[test]
    fn json_fields_become_attribute_values() {
        assert_eq!(
            any_value_of(&serde_json::json!(3)).value,
            Some(any_value::Value::IntValue(3))
        );
        assert_eq!(
            any_value_of(&serde_json::json!("x")).value,
            Some(any_value::Value::StringValue("x".into()))
        );
        assert_eq!(
            any_value_of(&serde_json::json!({"a": [1, 2]})).value,
            Some(any_value::Value::StringValue("{\"a\":[1,2]}".into()))
        );
    }
}
