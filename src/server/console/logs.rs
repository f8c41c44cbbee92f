//! The logs tab (and a task's logs in its detail): level, time, runner, task, body and
//! attributes of a job's log records, oldest first, 500 a page, filtered by level, under a
//! count of the job's records per level (as the official Console shows). Follow mode asks
//! for the records after the last one shown (`/jobs/{job}/logs?after=<record>`) and appends
//! them; the counts refresh on their own (`/jobs/{job}/log-counts`) while the job runs.

use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse, Redirect, Response};
use maud::{Markup, html};
use prost::Message;
use uuid::Uuid;

use super::execution::{runner_of, value_text};
use super::{ConsoleError, ConsoleState, Fragment, Viewer, layout};
use crate::api::otlp::logs::v1::ResourceLogs;
use crate::api::workflows_v1::LogSeverityGroup;
use crate::server::auth::Action;
use crate::server::services::telemetry::{severity_ranges, trace_id_of};
use crate::server::store::{Job, Page, TelemetryKind};

/// Records per page.
pub const LOG_PAGE: usize = 500;

/// The level filter's choices: the word shown, and the OTLP severity group.
pub const LEVELS: [(&str, LogSeverityGroup); 5] = [
    ("trace", LogSeverityGroup::Trace),
    ("debug", LogSeverityGroup::Debug),
    ("info", LogSeverityGroup::Info),
    ("warn", LogSeverityGroup::Warning),
    ("error", LogSeverityGroup::Error),
];

/// Most records the level counts read per job: a job with more shows the counts of its
/// first 100,000 ("100000 or more records"), so a job with millions costs a bounded read.
pub const COUNT_LIMIT: usize = 100_000;

/// How often the level counts refresh while the job runs.
const COUNTS_POLL_MS: u64 = 5_000;

/// Attributes the runner adds to every record, shown elsewhere (the task column) or not at
/// all (the trace ids).
const HIDDEN_ATTRIBUTES: [&str; 3] = ["task_id", "trace_id", "span_id"];

/// One log record, decoded for display.
#[derive(Debug, Clone, PartialEq)]
pub struct LogView {
    pub id: Uuid,
    pub level: &'static str,
    pub time_ns: u64,
    pub runner: String,
    /// The runner as people read it (`host·id8`).
    pub runner_label: String,
    pub task: String,
    /// The task's display (else its identifier's name), when the task is of this job.
    pub task_title: Option<String>,
    pub body: String,
    pub attributes: Vec<(String, String)>,
}

/// The level word of an OTLP severity number (1–4 trace … 17–24 error), else of its text.
pub fn level_of(severity: i32, text: &str) -> &'static str {
    match severity {
        1..=4 => "trace",
        5..=8 => "debug",
        9..=12 => "info",
        13..=16 => "warn",
        17..=24 => "error",
        _ => match text.to_ascii_lowercase().as_str() {
            "trace" => "trace",
            "debug" => "debug",
            "warn" | "warning" => "warn",
            "error" | "fatal" | "critical" => "error",
            _ => "info",
        },
    }
}

/// The level words in `pairs` (`level=info&level=error`), checked; empty means all.
pub fn levels_of(pairs: &[(String, String)]) -> Result<Vec<&'static str>, ConsoleError> {
    let mut levels: Vec<&'static str> = pairs
        .iter()
        .filter(|(key, value)| key == "level" && !value.is_empty())
        .map(|(_, value)| {
            LEVELS
                .iter()
                .find(|(word, _)| word == value)
                .map(|(word, _)| *word)
                .ok_or_else(|| {
                    ConsoleError::BadRequest(format!(
                        "unknown log level `{}`; the levels are trace, debug, info, warn, error",
                        super::layout::echo(value)
                    ))
                })
        })
        .collect::<Result<_, _>>()?;
    levels.sort_unstable();
    levels.dedup();
    // Every level ticked is no filter: records without a severity number (labelled by
    // their text) stay listed.
    if levels.len() == LEVELS.len() {
        levels.clear();
    }
    Ok(levels)
}

/// Decodes stored single-record `ResourceLogs` (undecodable ones are skipped).
pub fn decode_logs(rows: &[(Uuid, Vec<u8>)]) -> Vec<LogView> {
    let mut logs = Vec::with_capacity(rows.len());
    for (id, encoded) in rows {
        let Ok(resource_logs) = ResourceLogs::decode(encoded.as_slice()) else {
            continue;
        };
        let resource = resource_logs
            .resource
            .map(|resource| resource.attributes)
            .unwrap_or_default();
        for scope in &resource_logs.scope_logs {
            for record in &scope.log_records {
                let time = if record.time_unix_nano > 0 {
                    record.time_unix_nano
                } else {
                    record.observed_time_unix_nano
                };
                logs.push(LogView {
                    id: *id,
                    level: level_of(record.severity_number, &record.severity_text),
                    time_ns: time,
                    runner: runner_of(&resource, &[]),
                    runner_label: String::new(),
                    task: record
                        .attributes
                        .iter()
                        .find(|attribute| attribute.key == "task_id")
                        .map(|attribute| value_text(attribute.value.as_ref()))
                        .unwrap_or_default(),
                    task_title: None,
                    body: value_text(record.body.as_ref()),
                    attributes: record
                        .attributes
                        .iter()
                        .filter(|attribute| !HIDDEN_ATTRIBUTES.contains(&attribute.key.as_str()))
                        .map(|attribute| {
                            (attribute.key.clone(), value_text(attribute.value.as_ref()))
                        })
                        .collect(),
                });
            }
        }
    }
    logs
}

/// Up to [`LOG_PAGE`] records of `job` (of one `task`, if given) after `after`, oldest
/// first, of the given levels (all when empty).
pub async fn read(
    state: &ConsoleState,
    job: &Job,
    task: Option<Uuid>,
    levels: &[&str],
    after: Option<Uuid>,
) -> Result<Vec<LogView>, ConsoleError> {
    let Some(trace) = trace_id_of(&job.trace_parent) else {
        return Ok(Vec::new());
    };
    let groups: Vec<i32> = LEVELS
        .iter()
        .filter(|(word, _)| levels.contains(word))
        .map(|(_, group)| *group as i32)
        .collect();
    let rows = state
        .store
        .query_telemetry(
            TelemetryKind::Log,
            trace,
            task.map(|task| task.to_string()),
            severity_ranges(&groups)?,
            Page {
                after,
                limit: LOG_PAGE,
                descending: false,
            },
        )
        .await?;
    let mut logs = decode_logs(&rows);
    name_tasks(state, job.id, &mut logs).await?;
    let hosts = super::runners::runner_hostnames(state).await;
    for log in &mut logs {
        log.runner_label =
            super::runners::runner_name(&log.runner, hosts.get(&log.runner).map(String::as_str));
    }
    Ok(logs)
}

/// Fills each record's task title from one read of the page's tasks (`get_tasks`: at most
/// [`LOG_PAGE`] ids, so bounded whatever the job's size). Ids that are not this job's
/// tasks keep no title.
async fn name_tasks(
    state: &ConsoleState,
    job: Uuid,
    logs: &mut [LogView],
) -> Result<(), ConsoleError> {
    let mut ids: Vec<Uuid> = logs
        .iter()
        .filter_map(|log| Uuid::parse_str(&log.task).ok())
        .collect();
    ids.sort_unstable();
    ids.dedup();
    if ids.is_empty() {
        return Ok(());
    }
    let titles: std::collections::HashMap<String, String> = state
        .store
        .get_tasks(job, ids)
        .await?
        .into_iter()
        .map(|task| {
            let title = if task.display.is_empty() {
                task.identifier.name
            } else {
                task.display
            };
            (task.id.to_string(), title)
        })
        .collect();
    for log in logs {
        log.task_title = titles.get(&log.task).cloned();
    }
    Ok(())
}

/// The table rows of `logs`.
pub fn rows(job: Uuid, logs: &[LogView]) -> Markup {
    html! {
        @for log in logs {
            tr.log-row data-level=(log.level) data-record=(log.id) {
                td.level { span class={ "level level-" (log.level) } { (log.level) } }
                td.time { (layout::time((log.time_ns / 1_000_000) as i64)) }
                td.runner title=(log.runner) { (log.runner_label) }
                td.task { (task_cell(job, log)) }
                td.body { (log.body) }
                td.attributes {
                    @for (key, value) in &log.attributes {
                        span.chip { span.key { (key) } "=" (value) }
                    }
                }
            }
        }
    }
}

/// The task column: the task's title linking to its detail, else (a task of no known
/// job, or a record without one) the id as it came.
fn task_cell(job: Uuid, log: &LogView) -> Markup {
    html! {
        @if let Some(title) = &log.task_title {
            a.task-link href={ "/jobs/" (job) "/tasks/" (log.task) } title=(log.task) { (title) }
        } @else {
            span.muted { (log.task) }
        }
    }
}

/// A table of logs (the tab's, or a task's in its detail).
pub fn table(job: Uuid, logs: &[LogView], more_url: Option<String>) -> Markup {
    html! {
        table.logs {
            thead { tr {
                th { "Level" } th { "Time" } th { "Runner" } th { "Task" } th { "Body" } th { "Attributes" }
            } }
            tbody data-rows=[more_url] { (rows(job, logs)) }
        }
    }
}

/// Records per level, from the (severity, count) pairs of a job's first [`COUNT_LIMIT`]
/// records: the total, the five levels' counts (in [`LEVELS`] order), those without a
/// severity number, and whether the limit was reached (there may be more).
#[derive(Debug, Default, PartialEq)]
pub struct LevelCounts {
    pub total: u64,
    pub levels: [u64; 5],
    pub without_level: u64,
    pub at_limit: bool,
}

impl LevelCounts {
    pub fn of(severities: &[(i32, u64)]) -> Self {
        let mut counts = LevelCounts::default();
        for &(severity, count) in severities {
            counts.total += count;
            match severity {
                1..=24 => {
                    let word = level_of(severity, "");
                    let index = LEVELS
                        .iter()
                        .position(|(level, _)| *level == word)
                        .expect("level_of answers a level of LEVELS");
                    counts.levels[index] += count;
                }
                _ => counts.without_level += count,
            }
        }
        counts.at_limit = counts.total >= COUNT_LIMIT as u64;
        counts
    }
}

/// The line above the logs: how many records of each level the job has (of its first
/// [`COUNT_LIMIT`]); refreshed every [`COUNTS_POLL_MS`] (`/jobs/{job}/log-counts`) while
/// records may still arrive and the limit is not reached (the first records never change).
pub async fn counts(state: &ConsoleState, job: &Job) -> Result<Markup, ConsoleError> {
    let counts = match trace_id_of(&job.trace_parent) {
        Some(trace) => LevelCounts::of(
            &state
                .store
                .count_telemetry_by_severity(TelemetryKind::Log, trace, COUNT_LIMIT)
                .await?,
        ),
        None => LevelCounts::default(),
    };
    let poll = (!counts.at_limit
        && super::jobs::telemetry_may_arrive(job, crate::api::convert::now_millis()))
    .then(|| format!("/jobs/{}/log-counts", job.id));
    Ok(html! {
        p.log-counts data-total=(counts.total) data-poll=[poll.as_ref()]
            data-poll-ms=[poll.as_ref().map(|_| COUNTS_POLL_MS)] {
            @if counts.at_limit {
                (COUNT_LIMIT) " or more records; of the first " (COUNT_LIMIT) ":"
            } @else {
                (counts.total) @if counts.total == 1 { " record" } @else { " records" }
            }
            @for ((word, _), count) in LEVELS.iter().zip(counts.levels) {
                @if count > 0 {
                    " "
                    span.level-count data-level=(word) data-count=(count) {
                        span class={ "level level-" (word) } { (word) } " " (count)
                    }
                }
            }
            @if counts.without_level > 0 {
                " " span.muted { (counts.without_level) " without a level" }
            }
        }
    })
}

/// `GET /jobs/{job}/log-counts`: the level counts alone (the script polls them).
pub async fn counts_fragment(
    State(state): State<ConsoleState>,
    viewer: Viewer,
    Path(job): Path<String>,
) -> Result<Response, ConsoleError> {
    viewer.principal.check(Action::ReadJobs)?;
    viewer.principal.check(Action::ReadTelemetry)?;
    let job = state
        .store
        .get_job(super::job::parse_id("job", &job)?)
        .await?;
    Ok(counts(&state, &job).await?.into_response())
}

/// The logs tab's content.
pub async fn tab(
    state: &ConsoleState,
    job: &Job,
    levels: &[&str],
    after: Option<Uuid>,
    unfinished: bool,
) -> Result<Markup, ConsoleError> {
    let logs = read(state, job, None, levels, after).await?;
    let counts = counts(state, job).await?;
    let level_query: String = levels
        .iter()
        .map(|level| format!("&level={level}"))
        .collect();
    let rows_url = format!("/jobs/{}/logs?follow=1{level_query}", job.id);
    let next = logs.last().map(|log| log.id).or(after);
    Ok(html! {
        section.tab data-tab="logs" {
            form.log-filter method="get" action={ "/jobs/" (job.id) } {
                input type="hidden" name="tab" value="logs";
                span.muted { "Levels" }
                @for (word, _) in LEVELS {
                    label {
                        input type="checkbox" name="level" value=(word)
                            checked[levels.is_empty() || levels.contains(&word)];
                        " " (word)
                    }
                }
                label.follow {
                    input #follow type="checkbox" checked[unfinished];
                    " Follow"
                }
                button type="submit" { "Apply" }
            }
            (counts)
            @if logs.is_empty() && after.is_none() {
                p.muted.no-logs { "No log records yet." }
            }
            table.logs {
                thead { tr {
                    th { "Level" } th { "Time" } th { "Runner" } th { "Task" } th { "Body" } th { "Attributes" }
                } }
                tbody data-rows=(rows_url) data-after=[next] { (rows(job.id, &logs)) }
            }
            @if logs.len() >= LOG_PAGE {
                @if let Some(next) = next {
                    a.more-logs href={ "/jobs/" (job.id) "?tab=logs" (level_query) "&after=" (next) } {
                        "Next " (LOG_PAGE) " →"
                    }
                }
            }
        }
    })
}

/// `GET /jobs/{job}/logs?level=..&after=<record>`: the rows after a record (the script
/// appends them); without the script, the logs tab.
pub async fn more(
    State(state): State<ConsoleState>,
    viewer: Viewer,
    fragment: Fragment,
    Path(job): Path<String>,
    Query(pairs): Query<Vec<(String, String)>>,
) -> Result<Response, ConsoleError> {
    viewer.principal.check(Action::ReadJobs)?;
    viewer.principal.check(Action::ReadTelemetry)?;
    let id = super::job::parse_id("job", &job)?;
    let levels = levels_of(&pairs)?;
    let after = super::job::log_cursor(&pairs)?;
    if !fragment.0 {
        let mut url = format!("/jobs/{id}?tab=logs");
        for level in &levels {
            url.push_str(&format!("&level={level}"));
        }
        if let Some(after) = after {
            url.push_str(&format!("&after={after}"));
        }
        return Ok(Redirect::to(&url).into_response());
    }
    let job = state.store.get_job(id).await?;
    let logs = read(&state, &job, None, &levels, after).await?;
    Ok(rows(id, &logs).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn level_counts_add_severities_up_by_level() {
        let counts = LevelCounts::of(&[(0, 2), (3, 1), (9, 4), (12, 1), (13, 2), (21, 5)]);
        assert_eq!(
            counts,
            LevelCounts {
                total: 15,
                levels: [1, 0, 5, 2, 5],
                without_level: 2,
                at_limit: false,
            }
        );
        assert!(!LevelCounts::of(&[(9, COUNT_LIMIT as u64 - 1)]).at_limit);
        assert!(LevelCounts::of(&[(9, COUNT_LIMIT as u64 - 1), (17, 1)]).at_limit);
        assert_eq!(LevelCounts::of(&[]), LevelCounts::default());
    }

    #[test]
    fn levels_follow_the_otlp_severity_numbers() {
        assert_eq!(level_of(9, "INFO"), "info");
        assert_eq!(level_of(13, ""), "warn");
        assert_eq!(level_of(17, ""), "error");
        assert_eq!(level_of(0, "WARNING"), "warn");
        assert_eq!(level_of(0, ""), "info");
        let pairs = vec![("level".to_string(), "loud".to_string())];
        assert!(levels_of(&pairs).is_err());
        let every: Vec<(String, String)> = LEVELS
            .iter()
            .map(|(word, _)| ("level".to_string(), word.to_string()))
            .collect();
        assert!(
            levels_of(&every).unwrap().is_empty(),
            "all ticked is no filter"
        );
    }
}
