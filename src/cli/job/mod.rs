//! `tilebox job ...`: submit, list, get, wait for, retry and cancel jobs (logs and spans are
//! `cli/telemetry.rs`).
//!
//! Layout:
//! - `mod.rs`: the commands and their arguments
//! - `tree.rs`: reading a job and its task tree
//! - `render.rs`: `--json` documents and tables
//! - `tests.rs`: unit tests, with a scripted job service

mod render;
pub(super) mod tree;

use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::{Args, Subcommand};
use serde_json::{Value, json};
use uuid::Uuid;

use super::{ApiArgs, UserError, parse_id};
use super::{output, progress};
use crate::api::convert::{self, job_state_name};
use crate::api::tilebox_v1::{Pagination, SortDirection};
use crate::api::workflows_v1::{
    CancelJobRequest, Job, JobState, QueryFilters, QueryJobsRequest, RetryJobRequest,
    SubmitJobRequest, TaskIdentifier, TaskState, TaskSubmissionGroup, TaskSubmissions,
};
use crate::client::{Backoff, Client};
use render::{job_document, job_rows, jobs_table, task_table, tasks_document};
use tree::{fetch_task_tree_up_to, get_job, is_finished};

/// The first pause between two polls of `job wait`; pauses double (with jitter) up to
/// `WAIT_POLL_MAX`.
const WAIT_POLL_START: Duration = Duration::from_millis(50);
/// The longest pause between two polls of `job wait`.
const WAIT_POLL_MAX: Duration = Duration::from_millis(500);

/// About how many tasks `job get` shows without `--all`: a job of any size prints quickly.
const GET_TASK_LIMIT: usize = 1_000;

/// The job states `--state` accepts, in lifecycle order.
const JOB_STATES: [JobState; 6] = [
    JobState::Submitted,
    JobState::Running,
    JobState::Started,
    JobState::Completed,
    JobState::Failed,
    JobState::Canceled,
];

#[derive(Debug, Subcommand)]
pub enum JobCommand {
    /// Submit a job with one root task.
    Submit(SubmitArgs),
    /// List jobs, one page at a time.
    List(ListArgs),
    /// Show a job and its task tree.
    Get(GetArgs),
    /// Wait until a job is completed, failed or canceled; exit code 1 unless completed.
    Wait(WaitArgs),
    /// Send a job's failed tasks back to the queue.
    Retry(RetryArgs),
    /// Cancel a job: no new task starts, running tasks finish.
    Cancel(CancelArgs),
    /// Show the log records a job's tasks wrote.
    Logs(super::telemetry::LogsArgs),
    /// Show the spans of a job's task executions (with --timeline, as bars over time).
    Spans(super::telemetry::SpansArgs),
}

#[derive(Debug, Args)]
pub struct SubmitArgs {
    /// Name of the job.
    #[arg(long)]
    name: String,
    /// Identifier name of the root task, e.g. `MyTask` or `tilebox.com/example/MyTask`.
    #[arg(long)]
    task: String,
    /// Identifier version of the root task, `vMAJOR.MINOR`.
    #[arg(long, default_value = "v0.0")]
    version: String,
    /// Input of the root task: valid JSON is sent unchanged, any other text as a JSON string
    /// (text starting with `{` or `[` must be valid JSON).
    #[arg(long)]
    input: Option<String>,
    /// Cluster to run the root task on (default: the default cluster).
    #[arg(long)]
    cluster: Option<String>,
    /// How many times a failed root task is retried.
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(i64).range(0..))]
    max_retries: i64,
    /// Wait for the job to finish, like `tilebox job wait`.
    #[arg(long)]
    wait: bool,
    /// With --wait: give up after this many seconds.
    #[arg(long, value_name = "SECONDS", requires = "wait")]
    timeout: Option<u64>,
}

#[derive(Debug, Args)]
pub struct ListArgs {
    /// Only jobs in these states (comma-separated): submitted, running, started, completed,
    /// failed, canceled.
    #[arg(long, value_delimiter = ',', value_parser = parse_job_state)]
    state: Vec<JobState>,
    /// Only jobs whose name contains this text.
    #[arg(long)]
    name: Option<String>,
    /// Only jobs with tasks on these clusters (comma-separated slugs).
    #[arg(long, value_delimiter = ',')]
    cluster: Vec<String>,
    /// At most this many jobs.
    #[arg(long, value_parser = clap::value_parser!(i64).range(1..))]
    limit: Option<i64>,
    /// Continue after this job: the `next_cursor` of the previous page.
    #[arg(long, value_name = "ID")]
    cursor: Option<String>,
    /// Order by submission: `desc` (newest first, the default) or `asc`.
    #[arg(long, default_value = "desc", value_parser = ["asc", "desc"])]
    sort: String,
}

#[derive(Debug, Args)]
pub struct GetArgs {
    /// Id of the job.
    id: String,
    /// Show every task; without it, about the first 1,000 (roots first, then level by level).
    #[arg(long)]
    all: bool,
}

#[derive(Debug, Args)]
pub struct WaitArgs {
    /// Id of the job.
    id: String,
    /// Give up after this many seconds (default: wait forever).
    #[arg(long, value_name = "SECONDS")]
    timeout: Option<u64>,
}

#[derive(Debug, Args)]
pub struct RetryArgs {
    /// Id of the job.
    id: String,
}

#[derive(Debug, Args)]
pub struct CancelArgs {
    /// Id of the job.
    id: String,
}

pub async fn run(command: JobCommand, api: &ApiArgs) -> anyhow::Result<ExitCode> {
    match command {
        JobCommand::Submit(arguments) => submit(arguments, api).await,
        JobCommand::List(arguments) => list(arguments, api).await,
        JobCommand::Get(arguments) => get(arguments, api).await,
        JobCommand::Wait(arguments) => wait(arguments, api).await,
        JobCommand::Retry(arguments) => retry(arguments, api).await,
        JobCommand::Cancel(arguments) => cancel(arguments, api).await,
        JobCommand::Logs(arguments) => super::telemetry::logs(arguments, api).await,
        JobCommand::Spans(arguments) => super::telemetry::spans(arguments, api).await,
    }
}

async fn submit(arguments: SubmitArgs, api: &ApiArgs) -> anyhow::Result<ExitCode> {
    let request = submit_request(&arguments, trace_parent())?;
    let mut client = api.connect().await?;
    let job = client
        .jobs
        .submit_job(request)
        .await
        .map_err(|status| client.error("SubmitJob", status))?
        .into_inner();
    let id = job_id(&job)?;
    if arguments.wait {
        if !api.json {
            output::print_text(&format!("Job submitted: {id}"))?;
            print_console_link(&api.api_url, id);
        }
        return wait_for(&mut client, id, arguments.timeout, api.json).await;
    }
    if api.json {
        let mut document = job_document(&job)?;
        insert_console_url(&mut document, &api.api_url, id);
        output::print_json(&Value::Object(document))?;
    } else {
        output::print_text(&format!("Job submitted: {id}"))?;
        print_console_link(&api.api_url, id);
    }
    Ok(ExitCode::SUCCESS)
}

/// The job's page in the web console that a tilebox server serves on its API port; `None`
/// for the hosted Tilebox API, whose console lives elsewhere.
fn console_url(api_url: &str, id: Uuid) -> Option<String> {
    let base = api_url.trim_end_matches('/');
    let host = base
        .split_once("://")
        .map_or(base, |(_, rest)| rest)
        .split(['/', ':'])
        .next()
        .unwrap_or_default();
    if host == "tilebox.com" || host.ends_with(".tilebox.com") {
        return None;
    }
    Some(format!("{base}/jobs/{id}"))
}

/// `Console: <url>` on stderr, beside the human output (stdout stays the job's own lines).
fn print_console_link(api_url: &str, id: Uuid) {
    if let Some(url) = console_url(api_url, id) {
        eprintln!("Console: {url}");
    }
}

fn insert_console_url(document: &mut serde_json::Map<String, Value>, api_url: &str, id: Uuid) {
    if let Some(url) = console_url(api_url, id) {
        document.insert("console_url".to_string(), Value::String(url));
    }
}

async fn list(arguments: ListArgs, api: &ApiArgs) -> anyhow::Result<ExitCode> {
    let cursor = arguments
        .cursor
        .as_deref()
        .map(|cursor| parse_id("cursor", cursor))
        .transpose()?;
    let page = (arguments.limit.is_some() || cursor.is_some()).then(|| Pagination {
        limit: arguments.limit,
        starting_after: cursor.map(convert::id),
    });
    let request = QueryJobsRequest {
        filters: Some(QueryFilters {
            states: arguments.state.iter().map(|state| *state as i32).collect(),
            name: arguments.name.unwrap_or_default(),
            cluster_slugs: arguments.cluster,
            ..QueryFilters::default()
        }),
        page,
        sort_direction: if arguments.sort == "asc" {
            SortDirection::Ascending as i32
        } else {
            SortDirection::Descending as i32
        },
    };
    let mut client = api.connect().await?;
    let response = client
        .jobs
        .query_jobs(request)
        .await
        .map_err(|status| client.error("QueryJobs", status))?
        .into_inner();
    let next_cursor = output::id_text(
        response
            .next_page
            .as_ref()
            .and_then(|page| page.starting_after.as_ref()),
    )?;
    if api.json {
        let jobs = response
            .jobs
            .iter()
            .map(|job| job_document(job).map(Value::Object))
            .collect::<Result<Vec<_>, _>>()?;
        output::print_json(&json!({ "jobs": jobs, "next_cursor": next_cursor }))?;
        return Ok(ExitCode::SUCCESS);
    }
    if response.jobs.is_empty() {
        eprintln!("No jobs found.");
    } else {
        output::print_text(&jobs_table(&response.jobs)?.render())?;
    }
    if let Some(cursor) = next_cursor {
        eprintln!("More jobs: pass --cursor {cursor}");
    }
    Ok(ExitCode::SUCCESS)
}

async fn get(arguments: GetArgs, api: &ApiArgs) -> anyhow::Result<ExitCode> {
    let id = parse_id("job id", &arguments.id)?;
    let mut client = api.connect().await?;
    let job = get_job(&mut client, id).await?;
    let limit = if arguments.all {
        usize::MAX
    } else {
        GET_TASK_LIMIT
    };
    let (tasks, complete) = fetch_task_tree_up_to(&mut client, id, limit).await?;
    if !complete {
        let total = job
            .execution_stats
            .as_ref()
            .map_or(0, |stats| stats.total_tasks);
        eprintln!(
            "showing the first tasks of {total}, roots first; `tilebox job get {id} --all` shows every task"
        );
    }
    if api.json {
        let mut document = job_document(&job)?;
        document.insert("tasks".to_string(), tasks_document(&tasks)?);
        if !complete {
            document.insert("tasks_truncated".to_string(), Value::Bool(true));
        }
        insert_console_url(&mut document, &api.api_url, id);
        output::print_json(&Value::Object(document))?;
    } else {
        print_console_link(&api.api_url, id);
        output::print_text(&job_rows(&job)?)?;
        if !tasks.is_empty() {
            output::print_text("")?;
            output::print_text(&task_table(&tasks)?.render())?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn wait(arguments: WaitArgs, api: &ApiArgs) -> anyhow::Result<ExitCode> {
    let id = parse_id("job id", &arguments.id)?;
    let mut client = api.connect().await?;
    wait_for(&mut client, id, arguments.timeout, api.json).await
}

async fn retry(arguments: RetryArgs, api: &ApiArgs) -> anyhow::Result<ExitCode> {
    let id = parse_id("job id", &arguments.id)?;
    let mut client = api.connect().await?;
    let rescheduled = client
        .jobs
        .retry_job(RetryJobRequest {
            job_id: Some(convert::id(id)),
        })
        .await
        .map_err(|status| client.error("RetryJob", status))?
        .into_inner()
        .num_tasks_rescheduled;
    if api.json {
        output::print_json(&json!({ "id": id.to_string(), "rescheduled_tasks": rescheduled }))?;
    } else {
        output::print_text(&format!("Rescheduled {rescheduled} tasks of job {id}"))?;
    }
    Ok(ExitCode::SUCCESS)
}

async fn cancel(arguments: CancelArgs, api: &ApiArgs) -> anyhow::Result<ExitCode> {
    let id = parse_id("job id", &arguments.id)?;
    let mut client = api.connect().await?;
    client
        .jobs
        .cancel_job(CancelJobRequest {
            job_id: Some(convert::id(id)),
        })
        .await
        .map_err(|status| client.error("CancelJob", status))?;
    if api.json {
        output::print_json(&json!({ "id": id.to_string(), "canceled": true }))?;
    } else {
        output::print_text(&format!("Job {id} canceled"))?;
    }
    Ok(ExitCode::SUCCESS)
}

/// Polls the job until it is completed, failed or canceled, prints it, and answers exit code
/// 0 for completed and 1 otherwise. Running out of time is a user error.
async fn wait_for(
    client: &mut Client,
    id: Uuid,
    timeout_seconds: Option<u64>,
    json: bool,
) -> anyhow::Result<ExitCode> {
    // A timeout too large to represent is no timeout.
    let deadline = timeout_seconds
        .and_then(|seconds| Instant::now().checked_add(Duration::from_secs(seconds)));
    let mut pause = Backoff::new(WAIT_POLL_START, WAIT_POLL_MAX);
    let mut bars = progress::Display::new(json).job();
    let job = loop {
        let job = get_job(client, id).await?;
        show_progress(&mut bars, &job);
        if is_finished(job.state()) {
            bars.finish();
            break job;
        }
        let pause_now = pause.next_delay();
        let pause_now = match deadline {
            Some(deadline) => {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    let seconds = timeout_seconds.unwrap_or_default();
                    return Err(timed_out(id, job.state(), seconds).into());
                }
                pause_now.min(left)
            }
            None => pause_now,
        };
        tokio::time::sleep(pause_now).await;
    };
    let state = job.state();
    if json {
        output::print_json(&Value::Object(job_document(&job)?))?;
    } else {
        output::print_text(&format!("Job {id} {}", job_state_name(state)))?;
        if state == JobState::Failed {
            eprintln!(
                "hint: see which tasks failed with `tilebox job get {id}`, retry with `tilebox job retry {id}`"
            );
        }
    }
    Ok(if state == JobState::Completed {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// Shows the job's tasks done (computed, skipped, or failed but optional) of its total, and
/// each labelled progress indicator.
fn show_progress(bars: &mut progress::JobBars, job: &Job) {
    let stats = job.execution_stats.clone().unwrap_or_default();
    let count = |states: &[TaskState]| -> u64 {
        stats
            .tasks_by_state
            .iter()
            .filter(|count| states.contains(&count.state()))
            .map(|count| count.count)
            .sum()
    };
    let done = count(&[
        TaskState::Computed,
        TaskState::Skipped,
        TaskState::FailedOptional,
    ]);
    let failed = count(&[TaskState::Failed]);
    let indicators: Vec<progress::Indicator<'_>> = job
        .progress
        .iter()
        .map(|indicator| (indicator.label.as_str(), indicator.done, indicator.total))
        .collect();
    bars.update(done, stats.total_tasks, failed, &indicators);
}

fn timed_out(id: Uuid, state: JobState, seconds: u64) -> UserError {
    UserError::with_hint(
        format!("job {id} still {} after {seconds}s", job_state_name(state)),
        format!(
            "wait longer with a larger --timeout, or see its tasks with `tilebox job get {id}`"
        ),
    )
}

/// The submission for a job with one root task, validated.
fn submit_request(
    arguments: &SubmitArgs,
    trace_parent: String,
) -> Result<SubmitJobRequest, UserError> {
    validate_version(&arguments.version)?;
    if arguments.task.is_empty() {
        return Err(UserError::with_hint(
            "the task name must not be empty",
            "pass the task's identifier name, e.g. --task MyTask",
        ));
    }
    let group = TaskSubmissionGroup {
        dependencies_on_other_groups: Vec::new(),
        inputs: vec![task_input(arguments.input.as_deref())?],
        identifier_pointers: vec![0],
        cluster_slug_pointers: vec![0],
        display_pointers: vec![0],
        max_retries_values: vec![arguments.max_retries],
        optional_values: vec![false],
    };
    Ok(SubmitJobRequest {
        legacy_tasks: Vec::new(),
        job_name: arguments.name.clone(),
        trace_parent,
        automation_id: None,
        tasks: Some(TaskSubmissions {
            task_groups: vec![group],
            cluster_slug_lookup: vec![arguments.cluster.clone().unwrap_or_default()],
            identifier_lookup: vec![TaskIdentifier {
                name: arguments.task.clone(),
                version: arguments.version.clone(),
            }],
            display_lookup: vec![display_of(&arguments.task).to_string()],
        }),
    })
}

/// The bytes sent as a task's input: no input as no bytes, otherwise [`input_json`].
pub(super) fn task_input(input: Option<&str>) -> Result<Vec<u8>, UserError> {
    match input {
        None => Ok(Vec::new()),
        Some(text) => Ok(input_json(text)?.into_bytes()),
    }
}

/// `--input` text as JSON: valid JSON unchanged, other text as a JSON string, except text that
/// starts with `{` or `[` (a broken object or array, never meant as a string): an error with
/// the parser's position.
pub(super) fn input_json(text: &str) -> Result<String, UserError> {
    match serde_json::from_str::<Value>(text) {
        Ok(_) => Ok(text.to_string()),
        Err(error) if text.trim_start().starts_with(['{', '[']) => Err(UserError::with_hint(
            format!("--input is not valid JSON: {error}"),
            "fix the JSON, or quote text that starts with { or [ as a JSON string: '\"{...\"'",
        )),
        Err(_) => Ok(Value::String(text.to_string()).to_string()),
    }
}

/// A task's display name from its identifier name: the last `/` segment, or the whole name if
/// that segment is empty.
fn display_of(task: &str) -> &str {
    match task.rsplit('/').next() {
        Some(last) if !last.is_empty() => last,
        _ => task,
    }
}

/// Accepts `vMAJOR.MINOR` with decimal numbers, e.g. `v0.0` or `v1.12`.
pub(super) fn validate_version(version: &str) -> Result<(), UserError> {
    let is_number = |text: &str| !text.is_empty() && text.bytes().all(|byte| byte.is_ascii_digit());
    let valid = version
        .strip_prefix('v')
        .and_then(|rest| rest.split_once('.'))
        .is_some_and(|(major, minor)| is_number(major) && is_number(minor));
    if valid {
        Ok(())
    } else {
        Err(UserError::with_hint(
            format!("invalid task version `{version}`: expected vMAJOR.MINOR"),
            "versions look like v0.0 or v1.2",
        ))
    }
}

/// A W3C trace context `traceparent` for a new trace: version 00, random non-zero trace and
/// span ids, sampled.
fn trace_parent() -> String {
    let trace_id = loop {
        let id: u128 = rand::random();
        if id != 0 {
            break id;
        }
    };
    let span_id = loop {
        let id: u64 = rand::random();
        if id != 0 {
            break id;
        }
    };
    format!("00-{trace_id:032x}-{span_id:016x}-01")
}

fn parse_job_state(value: &str) -> Result<JobState, String> {
    let lowercase = value.to_ascii_lowercase();
    JOB_STATES
        .into_iter()
        .find(|state| job_state_name(*state) == lowercase)
        .ok_or_else(|| {
            let names: Vec<&str> = JOB_STATES.into_iter().map(job_state_name).collect();
            format!(
                "unknown job state `{value}`, expected one of: {}",
                names.join(", ")
            )
        })
}

/// The job's id; a job without one is a server fault.
fn job_id(job: &Job) -> anyhow::Result<Uuid> {
    convert::uuid_of(job.id.as_ref())?
        .ok_or_else(|| anyhow::anyhow!("the server answered with a job without an id"))
}

#[cfg(test)]
mod tests;
