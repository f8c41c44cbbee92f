//! `tilebox job logs` and `tilebox job spans`: a job's telemetry read back from the server,
//! as lines and tables, one JSON document, or (`--timeline`) bars over time.

use std::collections::HashMap;
use std::process::ExitCode;
use std::time::Duration;

use clap::Args;
use serde_json::{Map, Value, json};
use uuid::Uuid;

use super::job::tree::{TaskNode, fetch_task_tree, get_job, is_finished};
use super::parse_id;
use super::{ApiArgs, UserError, output};
use crate::api::convert::id;
use crate::api::otlp::common::v1::{AnyValue, KeyValue, any_value};
use crate::api::otlp::logs::v1::ResourceLogs;
use crate::api::otlp::trace::v1::ResourceSpans;
use crate::api::tilebox_v1::{Pagination, SortDirection};
use crate::api::workflows_v1::{
    LogQueryFilters, LogSeverityGroup, QueryJobLogsRequest, QueryJobSpansRequest,
};
use crate::client::Client;

#[derive(Debug, Args)]
pub struct LogsArgs {
    /// The job.
    id: String,
    /// Only this task's records.
    #[arg(long)]
    task: Option<String>,
    /// Only these levels (comma-separated): trace, debug, info, warning, error.
    #[arg(long, value_delimiter = ',')]
    level: Vec<String>,
    /// Keep printing new records until the job ends.
    #[arg(long, conflicts_with = "cursor")]
    follow: bool,
    /// Records per page.
    #[arg(long, default_value_t = 100)]
    limit: i64,
    /// `asc` (oldest first, the default) or `desc`.
    #[arg(long, default_value = "asc", value_parser = ["asc", "desc"])]
    sort: String,
    /// Continue after this record: the `next_cursor` of the previous page.
    #[arg(long)]
    cursor: Option<String>,
}

#[derive(Debug, Args)]
pub struct SpansArgs {
    /// The job.
    id: String,
    /// Only this task's spans.
    #[arg(long)]
    task: Option<String>,
    /// Spans per page.
    #[arg(long, default_value_t = 1000)]
    limit: i64,
    /// `asc` (the default) or `desc`.
    #[arg(long, default_value = "asc", value_parser = ["asc", "desc"])]
    sort: String,
    /// Continue after this span: the `next_cursor` of the previous page.
    #[arg(long)]
    cursor: Option<String>,
    /// Draw the task executions as bars over time.
    #[arg(long)]
    timeline: bool,
}

fn value_json(value: Option<&AnyValue>) -> Value {
    match value.and_then(|value| value.value.as_ref()) {
        Some(any_value::Value::StringValue(text)) => json!(text),
        Some(any_value::Value::BoolValue(flag)) => json!(flag),
        Some(any_value::Value::IntValue(integer)) => json!(integer),
        Some(any_value::Value::DoubleValue(number)) => json!(number),
        Some(any_value::Value::BytesValue(bytes)) => json!(hex::encode(bytes)),
        Some(any_value::Value::ArrayValue(array)) => Value::Array(
            array
                .values
                .iter()
                .map(|item| value_json(Some(item)))
                .collect(),
        ),
        Some(any_value::Value::KvlistValue(list)) => Value::Object(attributes_json(&list.values)),
        None => Value::Null,
    }
}

fn attributes_json(attributes: &[KeyValue]) -> Map<String, Value> {
    attributes
        .iter()
        .map(|attribute| (attribute.key.clone(), value_json(attribute.value.as_ref())))
        .collect()
}

fn time_text(nanos: u64) -> String {
    let timestamp = prost_types::Timestamp {
        seconds: (nanos / 1_000_000_000) as i64,
        nanos: (nanos % 1_000_000_000) as i32,
    };
    output::rfc3339(&timestamp)
}

fn severity_group(level: &str) -> Result<i32, UserError> {
    Ok(match level {
        "trace" => LogSeverityGroup::Trace,
        "debug" => LogSeverityGroup::Debug,
        "info" => LogSeverityGroup::Info,
        "warning" | "warn" => LogSeverityGroup::Warning,
        "error" => LogSeverityGroup::Error,
        other => {
            return Err(UserError::with_hint(
                format!("unknown log level `{other}`"),
                "use trace, debug, info, warning or error",
            ));
        }
    } as i32)
}

/// Task id -> display, from the job's task tree.
async fn task_displays(client: &mut Client, job: Uuid) -> anyhow::Result<HashMap<String, String>> {
    fn walk(nodes: &[TaskNode], displays: &mut HashMap<String, String>) {
        for node in nodes {
            if let Some(Ok(Some(id))) = node
                .summary
                .id
                .as_ref()
                .map(|id| crate::api::convert::uuid_of(Some(id)))
            {
                let display = node
                    .summary
                    .display
                    .lines()
                    .next()
                    .unwrap_or_default()
                    .to_string();
                displays.insert(id.to_string(), display);
            }
            walk(&node.children, displays);
        }
    }
    let mut displays = HashMap::new();
    walk(&fetch_task_tree(client, job).await?, &mut displays);
    Ok(displays)
}

/// One log record, flattened.
fn log_document(resource: &ResourceLogs) -> Option<Value> {
    let scope = resource.scope_logs.first()?;
    let record = scope.log_records.first()?;
    let attributes = attributes_json(&record.attributes);
    Some(json!({
        "time": time_text(record.time_unix_nano),
        "severity_number": record.severity_number,
        "severity_text": record.severity_text,
        "body": value_json(record.body.as_ref()),
        "task_id": attributes.get("task_id").cloned().unwrap_or(Value::Null),
        "trace_id": hex::encode(&record.trace_id),
        "span_id": hex::encode(&record.span_id),
        "scope": scope.scope.as_ref().map(|scope| scope.name.clone()),
        "attributes": attributes,
    }))
}

fn log_line(record: &Value, displays: &HashMap<String, String>) -> String {
    let task = record["task_id"].as_str().map(|task| {
        displays
            .get(task)
            .cloned()
            .unwrap_or_else(|| task.chars().take(8).collect())
    });
    let body = match &record["body"] {
        Value::String(text) => text.clone(),
        other => other.to_string(),
    };
    let mut line = format!(
        "{}  {:<5}  {}{}",
        record["time"].as_str().unwrap_or_default(),
        record["severity_text"].as_str().unwrap_or_default(),
        task.map(|task| format!("[{task}] ")).unwrap_or_default(),
        body
    );
    if let Some(attributes) = record["attributes"].as_object() {
        for (key, value) in attributes {
            if ["task_id", "trace_id", "span_id"].contains(&key.as_str()) {
                continue;
            }
            match value {
                Value::String(text) => line.push_str(&format!(" {key}={text}")),
                other => line.push_str(&format!(" {key}={other}")),
            }
        }
    }
    line
}

struct LogPage {
    records: Vec<Value>,
    next: Option<Uuid>,
    last: Option<Uuid>,
}

/// A page of `limit` records after the cursor `after`.
fn page(limit: i64, after: Option<Uuid>) -> Pagination {
    Pagination {
        limit: Some(limit),
        starting_after: after.map(id),
    }
}

/// The sort direction of `--sort asc|desc`.
fn sort_direction(sort: &str) -> i32 {
    if sort == "desc" {
        SortDirection::Descending as i32
    } else {
        SortDirection::Ascending as i32
    }
}

/// The cursor of the next page, if the server gave one.
fn next_cursor(next_page: Option<Pagination>) -> Option<Uuid> {
    next_page
        .and_then(|page| page.starting_after)
        .and_then(|cursor| crate::api::convert::uuid_of(Some(&cursor)).ok().flatten())
}

async fn fetch_logs(
    client: &mut Client,
    job: Uuid,
    arguments: &LogsArgs,
    after: Option<Uuid>,
) -> anyhow::Result<LogPage> {
    let task = arguments
        .task
        .as_deref()
        .map(|task| parse_id("task id", task))
        .transpose()?;
    let levels = arguments
        .level
        .iter()
        .map(|level| severity_group(level))
        .collect::<Result<Vec<_>, _>>()?;
    let response = client
        .telemetry
        .query_job_logs(QueryJobLogsRequest {
            job_id: Some(id(job)),
            page: Some(page(arguments.limit, after)),
            sort_direction: Some(sort_direction(&arguments.sort)),
            task_id: task.map(id),
            filters: Some(LogQueryFilters {
                severity_levels: levels,
            }),
        })
        .await
        .map_err(|status| client.error("QueryJobLogs", status))?
        .into_inner();
    let next = next_cursor(response.next_page);
    let records: Vec<Value> = response
        .resource_logs
        .iter()
        .filter_map(log_document)
        .collect();
    Ok(LogPage {
        last: next,
        next,
        records,
    })
}

pub async fn logs(arguments: LogsArgs, api: &ApiArgs) -> anyhow::Result<ExitCode> {
    let job = parse_id("job id", &arguments.id)?;
    let after = arguments
        .cursor
        .as_deref()
        .map(|cursor| parse_id("cursor", cursor))
        .transpose()?;
    let mut client = api.connect().await?;
    let mut displays = task_displays(&mut client, job).await?;
    if !arguments.follow {
        let mut page = fetch_logs(&mut client, job, &arguments, after).await?;
        if (page.records.len() as i64) < arguments.limit {
            page.next = None;
        }
        if api.json {
            output::print_json(
                &json!({ "logs": page.records, "next_cursor": page.next.map(|id| id.to_string()) }),
            )?;
        } else {
            for record in &page.records {
                output::print_text(&log_line(record, &displays))?;
            }
            if let Some(next) = page.next {
                eprintln!("More records: pass --cursor {next}");
            }
        }
        return Ok(ExitCode::SUCCESS);
    }
    // Follow: page forward until the job has ended and nothing new arrives.
    let mut cursor = after;
    let mut seen_end = false;
    loop {
        let page = fetch_logs(&mut client, job, &arguments, cursor).await?;
        let count = page.records.len();
        if count > 0
            && page.records.iter().any(|record| {
                record["task_id"]
                    .as_str()
                    .is_some_and(|task| !displays.contains_key(task))
            })
        {
            displays = task_displays(&mut client, job).await?;
        }
        for record in &page.records {
            if api.json {
                output::print_json(record)?;
            } else {
                output::print_text(&log_line(record, &displays))?;
            }
        }
        // The server answers a cursor after every non-empty page.
        if let Some(last) = page.last {
            cursor = Some(last);
            if count as i64 >= arguments.limit {
                continue;
            }
        }
        if seen_end {
            return Ok(ExitCode::SUCCESS);
        }
        let state = get_job(&mut client, job).await?.state();
        seen_end = is_finished(state);
        tokio::time::sleep(Duration::from_millis(if seen_end { 2500 } else { 500 })).await;
    }
}

/// One span, flattened.
fn span_document(resource: &ResourceSpans) -> Option<Value> {
    let span = resource.scope_spans.first()?.spans.first()?;
    let attributes = attributes_json(&span.attributes);
    let status = span.status.clone().unwrap_or_default();
    let code = match status.code {
        1 => "STATUS_CODE_OK",
        2 => "STATUS_CODE_ERROR",
        _ => "STATUS_CODE_UNSET",
    };
    Some(json!({
        "name": span.name,
        "trace_id": hex::encode(&span.trace_id),
        "span_id": hex::encode(&span.span_id),
        "parent_span_id": hex::encode(&span.parent_span_id),
        "start_time": time_text(span.start_time_unix_nano),
        "end_time": time_text(span.end_time_unix_nano),
        "start_unix_nano": span.start_time_unix_nano,
        "end_unix_nano": span.end_time_unix_nano,
        "duration_seconds": span.end_time_unix_nano.saturating_sub(span.start_time_unix_nano) as f64 / 1e9,
        "status_code": code,
        "status_message": status.message,
        "task_id": attributes.get("task_id").cloned().unwrap_or(Value::Null),
        "attributes": attributes,
        "events": span.events.iter().map(|event| json!({
            "time": time_text(event.time_unix_nano),
            "name": event.name,
            "attributes": attributes_json(&event.attributes),
        })).collect::<Vec<_>>(),
        "runner_attributes": resource.resource.as_ref().map(|resource| Value::Object(attributes_json(&resource.attributes))),
    }))
}

pub async fn spans(arguments: SpansArgs, api: &ApiArgs) -> anyhow::Result<ExitCode> {
    let job = parse_id("job id", &arguments.id)?;
    let task = arguments
        .task
        .as_deref()
        .map(|task| parse_id("task id", task))
        .transpose()?;
    let after = arguments
        .cursor
        .as_deref()
        .map(|cursor| parse_id("cursor", cursor))
        .transpose()?;
    let mut client = api.connect().await?;
    let response = client
        .telemetry
        .query_job_spans(QueryJobSpansRequest {
            job_id: Some(id(job)),
            page: Some(page(arguments.limit, after)),
            sort_direction: Some(sort_direction(&arguments.sort)),
            task_id: task.map(id),
        })
        .await
        .map_err(|status| client.error("QueryJobSpans", status))?
        .into_inner();
    let next = next_cursor(response.next_page).map(|id| id.to_string());
    let spans: Vec<Value> = response
        .resource_spans
        .iter()
        .filter_map(span_document)
        .collect();
    let next = next.filter(|_| spans.len() as i64 >= arguments.limit);
    if api.json {
        output::print_json(&json!({ "spans": spans, "next_cursor": next }))?;
        return Ok(ExitCode::SUCCESS);
    }
    let displays = task_displays(&mut client, job).await?;
    let text = if arguments.timeline {
        timeline(&spans, &displays, terminal_width())
    } else {
        let mut table = output::Table::new(&["SPAN", "TASK", "START", "DURATION", "STATUS"]);
        for span in &spans {
            let task = span["task_id"]
                .as_str()
                .and_then(|task| displays.get(task))
                .cloned()
                .unwrap_or_default();
            table.push(vec![
                span["name"].as_str().unwrap_or_default().to_string(),
                task,
                span["start_time"].as_str().unwrap_or_default().to_string(),
                format!("{:.3}s", span["duration_seconds"].as_f64().unwrap_or(0.0)),
                span["status_code"]
                    .as_str()
                    .unwrap_or_default()
                    .trim_start_matches("STATUS_CODE_")
                    .to_lowercase(),
            ]);
        }
        table.render()
    };
    output::print_text(&text)?;
    if let Some(next) = next {
        eprintln!("More spans: pass --cursor {next}");
    }
    Ok(ExitCode::SUCCESS)
}

fn terminal_width() -> usize {
    std::env::var("COLUMNS")
        .ok()
        .and_then(|columns| columns.parse().ok())
        .unwrap_or(100)
}

/// The spans as bars on a shared time axis: one row per span, overlap visible at a glance.
fn timeline(spans: &[Value], displays: &HashMap<String, String>, width: usize) -> String {
    let times: Vec<(u64, u64)> = spans
        .iter()
        .map(|span| {
            (
                span["start_unix_nano"].as_u64().unwrap_or(0),
                span["end_unix_nano"].as_u64().unwrap_or(0),
            )
        })
        .collect();
    let Some(start) = times.iter().map(|(start, _)| *start).min() else {
        return "No spans.\n".to_string();
    };
    let end = times
        .iter()
        .map(|(_, end)| *end)
        .max()
        .unwrap_or(start)
        .max(start + 1);
    let labels: Vec<String> = spans
        .iter()
        .map(|span| {
            span["task_id"]
                .as_str()
                .and_then(|task| displays.get(task))
                .cloned()
                .unwrap_or_else(|| span["name"].as_str().unwrap_or_default().to_string())
        })
        .collect();
    let label_width = labels
        .iter()
        .map(|label| label.chars().count())
        .max()
        .unwrap_or(0)
        .min(40);
    let bar_width = width.saturating_sub(label_width + 12).max(10);
    let scale = |time: u64| {
        ((time - start) as f64 / (end - start) as f64 * bar_width as f64).round() as usize
    };
    let mut text = format!(
        "{:label_width$}  0s{:>width$}\n",
        "",
        format!("{:.2}s", (end - start) as f64 / 1e9),
        width = bar_width
    );
    for ((label, (span_start, span_end)), span) in labels.iter().zip(&times).zip(spans) {
        let from = scale(*span_start).min(bar_width.saturating_sub(1));
        let to = scale(*span_end).max(from + 1).min(bar_width);
        let mark = if span["status_code"] == "STATUS_CODE_ERROR" {
            '!'
        } else {
            '#'
        };
        let label: String = label.chars().take(label_width).collect();
        text.push_str(&format!(
            "{label:label_width$}  |{}{}{}| {:.2}s\n",
            " ".repeat(from),
            mark.to_string().repeat(to - from),
            " ".repeat(bar_width - to),
            (*span_end - *span_start) as f64 / 1e9
        ));
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_timeline_shows_overlap() {
        let spans = vec![
            json!({"name": "task/A", "task_id": "a", "start_unix_nano": 0u64, "end_unix_nano": 1_000_000_000u64, "status_code": "STATUS_CODE_OK"}),
            json!({"name": "task/B", "task_id": "b", "start_unix_nano": 500_000_000u64, "end_unix_nano": 2_000_000_000u64, "status_code": "STATUS_CODE_ERROR"}),
        ];
        let displays = HashMap::from([
            ("a".to_string(), "A".to_string()),
            ("b".to_string(), "B".to_string()),
        ]);
        let text = timeline(&spans, &displays, 40);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3, "{text}");
        assert!(lines[0].trim_end().ends_with("2.00s"));
        let a = lines[1].find('#').unwrap();
        let b = lines[2].find('!').unwrap();
        assert!(a < b, "B starts later than A:\n{text}");
        assert!(lines[1].rfind('#').unwrap() > b, "A and B overlap:\n{text}");
    }

    #[test]
    fn levels_map_to_severity_groups() {
        assert_eq!(
            severity_group("warning").unwrap(),
            LogSeverityGroup::Warning as i32
        );
        assert!(severity_group("loud").unwrap_err().message.contains("loud"));
    }
}
