//! The job page, `/jobs/{job}`: a header (state, progress, execution statistics, task
//! counts, the retry and cancel actions), and the tabs Tasks (a tree whose children load
//! lazily), Execution (`execution.rs`) and Logs (`logs.rs`); a task's detail.
//!
//! Every read is bounded: the header comes from the job's counters, the tree shows one
//! page of 200 tasks below one parent at a time (nothing counts or walks a job's tasks), so
//! a job of 100,000 tasks opens as fast as one of ten.

use axum::Router;
use axum::extract::{Form, Path, Query, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use maud::{Markup, html};
use uuid::Uuid;

use super::execution;
use super::input;
use super::jobs::{job_state_word, progress_bars, task_counts, unfinished};
use super::logs;
use super::runners::{self, Hosts};
use super::{ConsoleError, ConsoleState, Fragment, Viewer, layout};
use crate::api::convert::{id as wire_id, now_millis, task_state_name};
use crate::api::workflows_v1::job_service_server::JobService;
use crate::api::workflows_v1::{CancelJobRequest, JobState, RetryJobRequest, TaskState};
use crate::server::auth::Action;
use crate::server::services::telemetry::trace_id_of;
use crate::server::store::{Job, Page, TaskSummary, TelemetryKind};

/// Tasks per page of the tree (roots, or children of one task).
pub const TREE_PAGE: usize = 200;

pub fn routes() -> Router<ConsoleState> {
    Router::new()
        .route("/jobs/{job}", get(show))
        .route("/jobs/{job}/header", get(header_fragment))
        .route("/jobs/{job}/tasks", get(children))
        .route("/jobs/{job}/tasks/{task}", get(task_detail))
        .route("/jobs/{job}/execution", get(execution_tab))
        .route("/jobs/{job}/logs", get(logs::more))
        .route("/jobs/{job}/log-counts", get(logs::counts_fragment))
        .route("/jobs/{job}/retry", post(retry))
        .route("/jobs/{job}/cancel", post(cancel))
        // The official Console's job address (`console.tilebox.com/workflows/jobs/<id>`,
        // which the Tilebox guides print), on this host: the same job here.
        .route(
            "/workflows/jobs/{job}",
            get(|Path(job): Path<String>| async move {
                Ok::<_, ConsoleError>(Redirect::permanent(&format!(
                    "/jobs/{}",
                    parse_id("job", &job)?
                )))
            }),
        )
}

/// The log record cursor of a query (`after=`), if given; a malformed one is a bad
/// request.
pub fn log_cursor(pairs: &[(String, String)]) -> Result<Option<Uuid>, ConsoleError> {
    query_value(pairs, "after").map(parse_cursor).transpose()
}

fn parse_cursor(text: &str) -> Result<Uuid, ConsoleError> {
    Uuid::parse_str(text).map_err(|_| {
        ConsoleError::BadRequest(format!(
            "`after={}` is not a log record id",
            layout::echo(text)
        ))
    })
}

/// An id from the path; a malformed one is a page that does not exist.
pub fn parse_id(what: &str, text: &str) -> Result<Uuid, ConsoleError> {
    Uuid::parse_str(text)
        .map_err(|_| ConsoleError::NotFound(format!("`{}` is not a {what} id", layout::echo(text))))
}

/// The value of `key` in a query, if given and not empty.
fn query_value<'a>(pairs: &'a [(String, String)], key: &str) -> Option<&'a str> {
    pairs
        .iter()
        .find(|(name, value)| name == key && !value.is_empty())
        .map(|(_, value)| value.as_str())
}

fn optional_id(pairs: &[(String, String)], key: &str) -> Result<Option<Uuid>, ConsoleError> {
    query_value(pairs, key)
        .map(|text| {
            Uuid::parse_str(text).map_err(|_| {
                ConsoleError::BadRequest(format!("`{key}={}` is not a task id", layout::echo(text)))
            })
        })
        .transpose()
}

/// Which tab is open.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Tab {
    Tasks,
    Execution,
    Logs,
}

impl Tab {
    fn parse(text: Option<&str>) -> Result<Self, ConsoleError> {
        match text {
            None | Some("tasks") => Ok(Tab::Tasks),
            Some("execution") => Ok(Tab::Execution),
            Some("logs") => Ok(Tab::Logs),
            Some(other) => Err(ConsoleError::BadRequest(format!(
                "no tab `{}`; the tabs are tasks, execution and logs",
                layout::echo(other)
            ))),
        }
    }
}

async fn show(
    State(state): State<ConsoleState>,
    viewer: Viewer,
    fragment: Fragment,
    Path(job): Path<String>,
    Query(pairs): Query<Vec<(String, String)>>,
) -> Result<Response, ConsoleError> {
    viewer.principal.check(Action::ReadJobs)?;
    let id = parse_id("job", &job)?;
    let tab = Tab::parse(query_value(&pairs, "tab"))?;
    let job = state.store.get_job(id).await?;
    let running = unfinished(job.state);
    let content = match tab {
        Tab::Tasks => tasks_tab(&state, &job).await?,
        Tab::Execution => {
            viewer.principal.check(Action::ReadTelemetry)?;
            execution::tab(&state, &job).await?
        }
        Tab::Logs => {
            viewer.principal.check(Action::ReadTelemetry)?;
            let levels = logs::levels_of(&pairs)?;
            let after = log_cursor(&pairs)?;
            logs::tab(&state, &job, &levels, after, running).await?
        }
    };
    if fragment.0 {
        return Ok(content.into_response());
    }
    let title = if job.name.is_empty() {
        format!("Job {id}")
    } else {
        job.name.clone()
    };
    Ok(layout::page(
        &viewer,
        fragment,
        layout::Section::Jobs,
        &title,
        html! {
            nav.breadcrumbs { a href="/jobs" { "Jobs" } " / " span.mono { (id) } }
            h1 { (title) }
            (header(&job, &viewer))
            nav.tabs {
                @for (name, label, href) in [
                    (Tab::Tasks, "Tasks", format!("/jobs/{id}")),
                    (Tab::Execution, "Execution", format!("/jobs/{id}?tab=execution")),
                    (Tab::Logs, "Logs", format!("/jobs/{id}?tab=logs")),
                ] {
                    a href=(href) data-tab=(label.to_ascii_lowercase())
                        aria-current=[(name == tab).then_some("page")] { (label) }
                }
            }
            div.job-body {
                (content)
                // The task detail panel, filled by the script.
                div.detail-slot {}
            }
        },
    ))
}

/// `GET /jobs/{job}/header`: the header alone (the script polls it while the job runs).
async fn header_fragment(
    State(state): State<ConsoleState>,
    viewer: Viewer,
    Path(job): Path<String>,
) -> Result<Response, ConsoleError> {
    viewer.principal.check(Action::ReadJobs)?;
    let job = state.store.get_job(parse_id("job", &job)?).await?;
    Ok(header(&job, &viewer).into_response())
}

/// The header: state, task total, statistics, progress, counts and the actions the viewer
/// may take; polled every second while the job is unfinished.
pub fn header(job: &Job, viewer: &Viewer) -> Markup {
    let word = job_state_word(job.state);
    let stats = &job.stats;
    let poll = unfinished(job.state).then(|| format!("/jobs/{}/header", job.id));
    let may_manage = viewer.allows(Action::ManageJobs);
    let retryable = matches!(job.state, JobState::Failed | JobState::Canceled);
    html! {
        section.job-header data-state=(word) data-tasks=(stats.total_tasks)
            data-poll=[poll.as_ref()] data-poll-ms=[poll.as_ref().map(|_| 1_000)] {
            div.headline {
                (layout::badge(word))
                span.total { (stats.total_tasks) " tasks" }
                (task_counts(job))
                div.actions {
                    @if may_manage && retryable {
                        (action_form(job, viewer, "retry", "Retry", &format!(
                            "Retry job {}? Its failed tasks are queued again.", job_label(job))))
                    }
                    @if may_manage && unfinished(job.state) {
                        (action_form(job, viewer, "cancel", "Cancel", &format!(
                            "Cancel job {}? No queued task of it will start; running ones finish.",
                            job_label(job))))
                    }
                }
            }
            dl.stats {
                div { dt { "Submitted" } dd { (layout::time(job.submitted_at)) } }
                div { dt { "Elapsed" } dd.elapsed { (layout::duration(stats.elapsed_time.as_millis() as i64)) } }
                div { dt { "Compute" } dd.compute { (layout::duration(stats.compute_time.as_millis() as i64)) } }
                div { dt { "Parallelism" } dd.parallelism { (format!("{:.1}×", stats.parallelism)) } }
            }
            @if !job.progress.is_empty() {
                div.progress-list { (progress_bars(&job.progress)) }
            }
        }
    }
}

fn job_label(job: &Job) -> String {
    if job.name.is_empty() {
        job.id.to_string()
    } else {
        format!("“{}”", job.name)
    }
}

/// A form that posts an action, confirmed by the shared dialog first (without the script it
/// posts at once).
fn action_form(job: &Job, viewer: &Viewer, action: &str, label: &str, confirm: &str) -> Markup {
    html! {
        form method="post" action={ "/jobs/" (job.id) "/" (action) } data-action=(action)
            data-confirm=(confirm) {
            input type="hidden" name="csrf" value=(viewer.csrf);
            button type="submit" class=(if action == "cancel" { "danger" } else { "primary" }) { (label) }
        }
    }
}

async fn tasks_tab(state: &ConsoleState, job: &Job) -> Result<Markup, ConsoleError> {
    let roots = state
        .store
        .list_tasks(
            job.id,
            None,
            Page {
                after: None,
                limit: TREE_PAGE,
                descending: false,
            },
        )
        .await?;
    let refresh = unfinished(job.state).then(|| format!("/jobs/{}/tasks", job.id));
    let hosts = runners::runner_hostnames(state).await;
    Ok(html! {
        section.tab data-tab="tasks" {
            (tasks_table(job.id, refresh, task_rows(job.id, None, 0, &roots, &hosts)))
        }
    })
}

fn tasks_table(job: Uuid, refresh: Option<String>, rows: Markup) -> Markup {
    html! {
        table.tasks data-job=(job) data-refresh=[refresh] {
            thead { tr {
                th { "Task" } th { "Identifier" } th { "State" } th { "Retries" }
                th { "Duration" } th { "Runner" }
            } }
            tbody { (rows) }
        }
    }
}

/// The rows of one page of tasks below `parent` (roots when `None`) at `depth`, after the
/// cursor `after`, and a "load more" row when the page is full.
fn task_rows(
    job: Uuid,
    parent: Option<Uuid>,
    depth: usize,
    tasks: &[TaskSummary],
    hosts: &Hosts,
) -> Markup {
    let more = (tasks.len() >= TREE_PAGE)
        .then(|| {
            tasks
                .last()
                .map(|last| children_url(job, parent, depth, Some(last.id)))
        })
        .flatten();
    html! {
        @for task in tasks {
            (task_row(job, task, depth, hosts))
        }
        @if let Some(more) = more {
            tr.more data-depth=(depth) data-parent=[parent] {
                td colspan="6" {
                    a.load-more href=(more) { "load " (TREE_PAGE) " more" }
                }
            }
        }
    }
}

fn children_url(job: Uuid, parent: Option<Uuid>, depth: usize, after: Option<Uuid>) -> String {
    let mut url = format!("/jobs/{job}/tasks?depth={depth}");
    if let Some(parent) = parent {
        url.push_str(&format!("&parent={parent}"));
    }
    if let Some(after) = after {
        url.push_str(&format!("&after={after}"));
    }
    url
}

fn task_row(job: Uuid, task: &TaskSummary, depth: usize, hosts: &Hosts) -> Markup {
    let state = task_state_name(task.state);
    html! {
        tr.task data-task=(task.id) data-state=(state) data-depth=(depth)
            data-parent=[task.parent_id] {
            td.display {
                @if task.has_children {
                    button.expand type="button" aria-expanded="false"
                        aria-label="Show subtasks"
                        data-children=(children_url(job, Some(task.id), depth + 1, None)) {}
                } @else {
                    span.leaf {}
                }
                a.task-link href={ "/jobs/" (job) "/tasks/" (task.id) } { (task_title(task)) }
            }
            td.identifier { (task.identifier.name) " " span.muted { (task.identifier.version) } }
            td.state { (layout::badge(state)) }
            td.retries { (task.retry_count) "/" (task.max_retries) }
            td.duration { (task_duration(task)) }
            td.runner { (runner_cell(task, hosts)) }
        }
    }
}

/// What a task is called: its display, else its identifier's name.
fn task_title(task: &TaskSummary) -> &str {
    if task.display.is_empty() {
        &task.identifier.name
    } else {
        &task.display
    }
}

fn task_duration(task: &TaskSummary) -> String {
    match (task.started_at, task.stopped_at) {
        (Some(start), Some(stop)) => layout::duration(stop - start),
        (Some(start), None) if task.state == TaskState::Running => {
            format!("{} so far", layout::duration(now_millis() - start))
        }
        _ => String::new(),
    }
}

/// The runner that ran (or runs) the task's latest attempt, as `host·id8` (the whole
/// claimant is its tooltip); empty while no runner claimed it.
fn runner_cell(task: &TaskSummary, hosts: &Hosts) -> Markup {
    html! {
        @if let Some(claimant) = &task.claimant {
            span title=(claimant) {
                (runners::runner_name(claimant, hosts.get(claimant).map(String::as_str)))
            }
        }
    }
}

/// `GET /jobs/{job}/tasks?parent=&after=&depth=`: one page of a task's children (rows for
/// the script to insert), or of the roots; a table page without the script.
async fn children(
    State(state): State<ConsoleState>,
    viewer: Viewer,
    fragment: Fragment,
    Path(job): Path<String>,
    Query(pairs): Query<Vec<(String, String)>>,
) -> Result<Response, ConsoleError> {
    viewer.principal.check(Action::ReadJobs)?;
    let id = parse_id("job", &job)?;
    let parent = optional_id(&pairs, "parent")?;
    let after = optional_id(&pairs, "after")?;
    let depth = query_value(&pairs, "depth")
        .and_then(|depth| depth.parse::<usize>().ok())
        .unwrap_or(usize::from(parent.is_some()))
        .min(64);
    let tasks = state
        .store
        .list_tasks(
            id,
            parent,
            Page {
                after,
                limit: TREE_PAGE,
                descending: false,
            },
        )
        .await?;
    let hosts = runners::runner_hostnames(&state).await;
    let rows = task_rows(id, parent, depth, &tasks, &hosts);
    if fragment.0 {
        return Ok(rows.into_response());
    }
    Ok(layout::page(
        &viewer,
        fragment,
        layout::Section::Jobs,
        "Tasks",
        html! {
            nav.breadcrumbs { a href="/jobs" { "Jobs" } " / " a href={ "/jobs/" (id) } { (id) } }
            h1 { "Tasks" }
            (tasks_table(id, None, rows))
        },
    ))
}

/// One task of `job`, by id (one indexed read whatever the job's size).
async fn find_task(
    state: &ConsoleState,
    job: Uuid,
    task: Uuid,
) -> Result<TaskSummary, ConsoleError> {
    state
        .store
        .get_tasks(job, vec![task])
        .await?
        .into_iter()
        .next()
        .ok_or_else(|| ConsoleError::NotFound(format!("task {task} not found in job {job}")))
}

/// `GET /jobs/{job}/tasks/{task}`: the task's detail (a side panel the script shows; a
/// page of its own without the script).
async fn task_detail(
    State(state): State<ConsoleState>,
    viewer: Viewer,
    fragment: Fragment,
    Path((job, task)): Path<(String, String)>,
) -> Result<Response, ConsoleError> {
    viewer.principal.check(Action::ReadJobs)?;
    let job_id = parse_id("job", &job)?;
    let task_id = parse_id("task", &task)?;
    let job = state.store.get_job(job_id).await?;
    let task = find_task(&state, job_id, task_id).await?;
    let hosts = runners::runner_hostnames(&state).await;
    let telemetry = viewer.allows(Action::ReadTelemetry);
    let (attempts, task_logs) = match trace_id_of(&job.trace_parent) {
        Some(trace) if telemetry => {
            let spans = state
                .store
                .query_telemetry(
                    TelemetryKind::Span,
                    trace,
                    Some(task_id.to_string()),
                    Vec::new(),
                    Page {
                        after: None,
                        limit: 20,
                        descending: true,
                    },
                )
                .await?;
            let logs = logs::read(&state, &job, Some(task_id), &[], None).await?;
            (execution::decode_spans(&spans), logs)
        }
        _ => (Vec::new(), Vec::new()),
    };
    let panel = detail(&job, &task, &attempts, &task_logs, &hosts);
    if fragment.0 {
        return Ok(panel.into_response());
    }
    Ok(layout::page(
        &viewer,
        fragment,
        layout::Section::Jobs,
        task_title(&task),
        html! {
            nav.breadcrumbs {
                a href="/jobs" { "Jobs" } " / " a href={ "/jobs/" (job_id) } { (job_id) }
            }
            (panel)
        },
    ))
}

/// The task detail: what it was given, where and when it ran, how it failed, its logs.
fn detail(
    job: &Job,
    task: &TaskSummary,
    attempts: &[execution::SpanView],
    task_logs: &[logs::LogView],
    hosts: &Hosts,
) -> Markup {
    let state = task_state_name(task.state);
    let decoded = input::decode(&task.input);
    let failed = matches!(task.state, TaskState::Failed | TaskState::FailedOptional);
    // The newest attempt's exception (the spans come newest first).
    let exception = attempts
        .iter()
        .find_map(|attempt| attempt.exception.as_ref());
    html! {
        aside.task-detail data-task=(task.id) data-state=(state) {
            header {
                h2 { (task_title(task)) }
                a.close-detail href={ "/jobs/" (job.id) } aria-label="Close" { "×" }
            }
            dl.facts {
                div { dt { "State" } dd { (layout::badge(state)) } }
                div { dt { "Identifier" } dd { (task.identifier.name) " " (task.identifier.version) } }
                div { dt { "Display" } dd.display { (task.display) } }
                div { dt { "Cluster" } dd { (task.cluster) } }
                div { dt { "Task id" } dd.mono { (task.id) } }
                div { dt { "Submitted" } dd { (layout::time(task.submitted_at)) } }
                @if let Some(started) = task.started_at { div { dt { "Started" } dd { (layout::time(started)) } } }
                @if let Some(stopped) = task.stopped_at { div { dt { "Stopped" } dd { (layout::time(stopped)) } } }
                div { dt { "Duration" } dd { (task_duration(task)) } }
                div { dt { "Retries" } dd.retries { (task.retry_count) "/" (task.max_retries) } }
                div { dt { "Runner" } dd.runner { (runner_cell(task, hosts)) } }
            }
            h3 { "Input " span.muted { "(" (decoded.kind) ", " (decoded.size) " bytes" @if decoded.cut { ", cut" } ")" } }
            pre.input data-kind=(decoded.kind) { (decoded.text) }
            @if let Some(base64) = &decoded.base64 {
                p.muted { "base64: " code.base64 { (base64) } }
            }
            @if failed || exception.is_some() {
                h3 { "Failure" }
                @if let Some(exception) = exception {
                    p.exception { strong { (exception.kind) } ": " (exception.message) }
                    pre.traceback { (exception.stacktrace) }
                } @else {
                    p.muted { "No exception was recorded for this task (its spans may be past retention); its display says:" }
                    pre.traceback { (task.display) }
                }
            }
            @if !attempts.is_empty() {
                h3 { "Attempts" }
                table.attempts {
                    thead { tr { th { "Retry" } th { "Runner" } th { "Started" } th { "Duration" } th { "Result" } } }
                    tbody {
                        @for attempt in attempts {
                            tr {
                                td { (attempt.retry_count.map(|count| count.to_string()).unwrap_or_default()) }
                                td { (attempt.runner) }
                                td { (layout::time((attempt.start_ns / 1_000_000) as i64)) }
                                td { (layout::duration((attempt.end_ns.saturating_sub(attempt.start_ns) / 1_000_000) as i64)) }
                                td { @if attempt.error { (layout::badge("failed")) } @else { (layout::badge("computed")) } }
                            }
                        }
                    }
                }
            }
            h3 { "Logs" }
            @if task_logs.is_empty() {
                p.muted { "No log records." }
            } @else {
                (logs::table(job.id, task_logs, None))
            }
        }
    }
}

/// `GET /jobs/{job}/execution`: the execution tab alone (polled while the job runs).
async fn execution_tab(
    State(state): State<ConsoleState>,
    viewer: Viewer,
    fragment: Fragment,
    Path(job): Path<String>,
) -> Result<Response, ConsoleError> {
    let id = parse_id("job", &job)?;
    if !fragment.0 {
        return Ok(Redirect::to(&format!("/jobs/{id}?tab=execution")).into_response());
    }
    viewer.principal.check(Action::ReadJobs)?;
    viewer.principal.check(Action::ReadTelemetry)?;
    let job = state.store.get_job(id).await?;
    Ok(execution::tab(&state, &job).await?.into_response())
}

/// The form of an action: only the viewer's CSRF token.
#[derive(Debug, serde::Deserialize)]
struct ActionForm {
    #[serde(default)]
    csrf: String,
}

/// `POST /jobs/{job}/retry`: queues the job's failed tasks again (through the job
/// service: its permission check and wake-ups), then back to the job.
async fn retry(
    State(state): State<ConsoleState>,
    viewer: Viewer,
    headers: HeaderMap,
    Path(job): Path<String>,
    Form(form): Form<ActionForm>,
) -> Result<Response, ConsoleError> {
    viewer.check_form(&headers, &form.csrf)?;
    let id = parse_id("job", &job)?;
    state
        .jobs
        .retry_job(viewer.request(RetryJobRequest {
            job_id: Some(wire_id(id)),
        }))
        .await?;
    Ok(Redirect::to(&format!("/jobs/{id}")).into_response())
}

/// `POST /jobs/{job}/cancel`: no queued task of the job starts any more.
async fn cancel(
    State(state): State<ConsoleState>,
    viewer: Viewer,
    headers: HeaderMap,
    Path(job): Path<String>,
    Form(form): Form<ActionForm>,
) -> Result<Response, ConsoleError> {
    viewer.check_form(&headers, &form.csrf)?;
    let id = parse_id("job", &job)?;
    state
        .jobs
        .cancel_job(viewer.request(CancelJobRequest {
            job_id: Some(wire_id(id)),
        }))
        .await?;
    Ok(Redirect::to(&format!("/jobs/{id}")).into_response())
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use super::*;
    use crate::server::auth::Principal;
    use crate::server::keys::Scope;
    use crate::server::store::{ExecutionStats, Progress};

    fn viewer(scope: Scope) -> Viewer {
        Viewer {
            principal: Arc::new(Principal {
                name: "key".into(),
                scope,
                clusters: Vec::new(),
            }),
            csrf: "token".into(),
            signed_in: true,
        }
    }

    fn job(state: JobState) -> Job {
        Job {
            id: Uuid::nil(),
            name: "<b>fan</b>".into(),
            trace_parent: String::new(),
            state,
            submitted_at: 0,
            progress: vec![Progress {
                label: Some("tiles".into()),
                total: 20,
                done: 5,
            }],
            stats: ExecutionStats {
                compute_time: Duration::from_secs(25),
                elapsed_time: Duration::from_secs(10),
                parallelism: 2.5,
                total_tasks: 21,
                tasks_by_state: vec![(TaskState::Running, 5), (TaskState::Computed, 16)],
                ..ExecutionStats::default()
            },
        }
    }

    #[test]
    fn the_header_shows_the_statistics_and_polls_while_the_job_runs() {
        let header = header(&job(JobState::Running), &viewer(Scope::Admin)).into_string();
        assert!(header.contains("data-tasks=\"21\""), "{header}");
        assert!(header.contains("21 tasks"), "{header}");
        assert!(header.contains("25.0 s"), "compute: {header}");
        assert!(header.contains("10.0 s"), "elapsed: {header}");
        assert!(header.contains("2.5×"), "parallelism: {header}");
        assert!(header.contains("16 computed"), "{header}");
        assert!(
            header.contains("<progress value=\"5\" max=\"20\">"),
            "{header}"
        );
        assert!(header.contains("data-poll=\"/jobs/"), "{header}");
        assert!(header.contains("data-action=\"cancel\""), "{header}");
        assert!(header.contains("name=\"csrf\" value=\"token\""), "{header}");
        assert!(!header.contains("data-action=\"retry\""), "{header}");
        assert!(!header.contains("<b>"), "the name is escaped: {header}");
    }

    #[test]
    fn a_finished_header_stops_polling_and_a_read_only_viewer_gets_no_actions() {
        let failed = header(&job(JobState::Failed), &viewer(Scope::Admin)).into_string();
        assert!(!failed.contains("data-poll"), "{failed}");
        assert!(failed.contains("data-action=\"retry\""), "{failed}");
        let read_only = header(&job(JobState::Failed), &viewer(Scope::ReadOnly)).into_string();
        assert!(!read_only.contains("data-action"), "{read_only}");
    }
}
