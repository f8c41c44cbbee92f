//! `tilebox job ...`: submit, list, get, wait for, retry and cancel jobs.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::{Args, Subcommand};
use serde_json::{Map, Value, json};
use uuid::Uuid;

use super::output::{self, Table};
use super::{ApiArgs, UserError};
use crate::api::convert::{self, InvalidId, job_state_name, task_state_name};
use crate::api::tilebox_v1::{Pagination, SortDirection};
use crate::api::workflows_v1::{
    CancelJobRequest, GetJobRequest, Job, JobState, ListJobTasksRequest, QueryFilters,
    QueryJobsRequest, RetryJobRequest, SubmitJobRequest, TaskIdentifier, TaskSubmissionGroup,
    TaskSubmissions, TaskSummary,
};
use crate::client::Client;

/// The first pause between two polls of `job wait`; each pause doubles up to `WAIT_POLL_MAX`.
const WAIT_POLL_START: Duration = Duration::from_millis(50);
/// The longest pause between two polls of `job wait`.
const WAIT_POLL_MAX: Duration = Duration::from_millis(500);

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
    /// Input of the root task: valid JSON is sent unchanged, any other text as a JSON string.
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
        }
        return wait_for(&mut client, id, arguments.timeout, api.json).await;
    }
    if api.json {
        output::print_json(&Value::Object(job_document(&job)?))?;
    } else {
        output::print_text(&format!("Job submitted: {id}"))?;
    }
    Ok(ExitCode::SUCCESS)
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
    let tasks = fetch_task_tree(&mut client, id).await?;
    if api.json {
        let mut document = job_document(&job)?;
        document.insert("tasks".to_string(), tasks_document(&tasks)?);
        output::print_json(&Value::Object(document))?;
    } else {
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
    let mut pause = WAIT_POLL_START;
    let job = loop {
        let job = get_job(client, id).await?;
        if is_finished(job.state()) {
            break job;
        }
        let pause_now = match deadline {
            Some(deadline) => {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    let seconds = timeout_seconds.unwrap_or_default();
                    return Err(timed_out(id, job.state(), seconds).into());
                }
                pause.min(left)
            }
            None => pause,
        };
        tokio::time::sleep(pause_now).await;
        pause = (pause * 2).min(WAIT_POLL_MAX);
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

fn timed_out(id: Uuid, state: JobState, seconds: u64) -> UserError {
    UserError::with_hint(
        format!("job {id} still {} after {seconds}s", job_state_name(state)),
        format!(
            "wait longer with a larger --timeout, or see its tasks with `tilebox job get {id}`"
        ),
    )
}

pub(super) fn is_finished(state: JobState) -> bool {
    matches!(
        state,
        JobState::Completed | JobState::Failed | JobState::Canceled
    )
}

pub(super) async fn get_job(client: &mut Client, id: Uuid) -> anyhow::Result<Job> {
    let request = GetJobRequest {
        job_id: Some(convert::id(id)),
    };
    Ok(client
        .jobs
        .get_job(request)
        .await
        .map_err(|status| client.error("GetJob", status))?
        .into_inner())
}

/// A task with its children, as `job get` shows it.
#[derive(Debug)]
pub(super) struct TaskNode {
    pub(super) summary: TaskSummary,
    pub(super) children: Vec<TaskNode>,
}

/// The job's whole task tree: the root tasks, then the children of every task that has some.
pub(super) async fn fetch_task_tree(
    client: &mut Client,
    job_id: Uuid,
) -> anyhow::Result<Vec<TaskNode>> {
    let roots = list_job_tasks(client, job_id, None).await?;
    let mut children = HashMap::new();
    // Each task's children are fetched once, even if a broken server lists a task twice.
    let mut seen = HashSet::new();
    let mut parents = Vec::new();
    queue_parents(&roots, &mut seen, &mut parents)?;
    while let Some(parent) = parents.pop() {
        let tasks = list_job_tasks(client, job_id, Some(parent)).await?;
        queue_parents(&tasks, &mut seen, &mut parents)?;
        children.insert(parent, tasks);
    }
    Ok(assemble_tree(roots, &mut children)?)
}

/// Adds the ids of not yet seen tasks that have children to `parents`.
fn queue_parents(
    tasks: &[TaskSummary],
    seen: &mut HashSet<Uuid>,
    parents: &mut Vec<Uuid>,
) -> Result<(), InvalidId> {
    for task in tasks {
        if let Some(id) = convert::uuid_of(task.id.as_ref())? {
            if seen.insert(id) && task.has_children {
                parents.push(id);
            }
        }
    }
    Ok(())
}

/// Every page of the direct children of `parent` (the root tasks when `None`).
async fn list_job_tasks(
    client: &mut Client,
    job_id: Uuid,
    parent: Option<Uuid>,
) -> anyhow::Result<Vec<TaskSummary>> {
    let mut tasks = Vec::new();
    let mut page: Option<Pagination> = None;
    loop {
        let request = ListJobTasksRequest {
            job_id: Some(convert::id(job_id)),
            parent_task_id: parent.map(convert::id),
            page: page.clone(),
            prefetch_children: None,
        };
        let response = client
            .jobs
            .list_job_tasks(request)
            .await
            .map_err(|status| client.error("ListJobTasks", status))?
            .into_inner();
        let Some(result) = response.page else {
            break;
        };
        let empty = result.tasks.is_empty();
        tasks.extend(result.tasks);
        match result.next_page {
            Some(next)
                if !empty
                    && next
                        .starting_after
                        .as_ref()
                        .is_some_and(|id| !id.uuid.is_empty())
                    && page.as_ref() != Some(&next) =>
            {
                page = Some(next);
            }
            _ => break,
        }
    }
    Ok(tasks)
}

/// Hangs each task's children (taken out of `children`, so each list is used once) under it.
fn assemble_tree(
    tasks: Vec<TaskSummary>,
    children: &mut HashMap<Uuid, Vec<TaskSummary>>,
) -> Result<Vec<TaskNode>, InvalidId> {
    tasks
        .into_iter()
        .map(|summary| {
            let own = match convert::uuid_of(summary.id.as_ref())? {
                Some(id) => children.remove(&id).unwrap_or_default(),
                None => Vec::new(),
            };
            Ok(TaskNode {
                children: assemble_tree(own, children)?,
                summary,
            })
        })
        .collect()
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
        inputs: vec![task_input(arguments.input.as_deref())],
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

/// The bytes sent as a task's input: valid JSON unchanged, other text as a JSON string, no
/// input as no bytes.
pub(super) fn task_input(input: Option<&str>) -> Vec<u8> {
    match input {
        None => Vec::new(),
        Some(text) if serde_json::from_str::<Value>(text).is_ok() => text.as_bytes().to_vec(),
        Some(text) => Value::String(text.to_string()).to_string().into_bytes(),
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

/// A UUID given on the command line; `what` names it in the error (`job id`, `cursor`).
pub(super) fn parse_id(what: &str, value: &str) -> Result<Uuid, UserError> {
    Uuid::parse_str(value).map_err(|_| {
        UserError::with_hint(
            format!("invalid {what} `{value}`: not a UUID"),
            "job ids look like 0190a8c4-5e2b-7c1d-9f00-1a2b3c4d5e6f; `tilebox job list` shows them",
        )
    })
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

/// A job as JSON, with the API's field names.
fn job_document(job: &Job) -> Result<Map<String, Value>, InvalidId> {
    let stats = job.execution_stats.clone().unwrap_or_default();
    let seconds = |duration: Option<&prost_types::Duration>| {
        duration.map_or(Value::Null, |duration| {
            json!(convert::std_duration(duration).as_secs_f64())
        })
    };
    let execution_stats = json!({
        "first_task_started_at": output::timestamp_json(stats.first_task_started_at.as_ref()),
        "last_task_stopped_at": output::timestamp_json(stats.last_task_stopped_at.as_ref()),
        "compute_time_seconds": seconds(stats.compute_time.as_ref()),
        "elapsed_time_seconds": seconds(stats.elapsed_time.as_ref()),
        "parallelism": stats.parallelism,
        "total_tasks": stats.total_tasks,
        "tasks_by_state": tasks_by_state(job),
    });
    let progress: Vec<Value> = job
        .progress
        .iter()
        .map(|progress| {
            json!({ "label": progress.label, "total": progress.total, "done": progress.done })
        })
        .collect();
    let mut document = Map::new();
    document.insert("id".to_string(), output::id_json(job.id.as_ref())?);
    document.insert("name".to_string(), json!(job.name));
    document.insert("state".to_string(), json!(job_state_name(job.state())));
    document.insert("trace_parent".to_string(), json!(job.trace_parent));
    document.insert(
        "submitted_at".to_string(),
        output::timestamp_json(job.submitted_at.as_ref()),
    );
    document.insert("progress".to_string(), Value::Array(progress));
    document.insert("execution_stats".to_string(), execution_stats);
    Ok(document)
}

/// Task counts per state name, summed should a state appear twice.
fn tasks_by_state(job: &Job) -> BTreeMap<&'static str, u64> {
    let mut counts = BTreeMap::new();
    for count in job
        .execution_stats
        .iter()
        .flat_map(|stats| &stats.tasks_by_state)
    {
        *counts.entry(task_state_name(count.state())).or_default() += count.count;
    }
    counts
}

/// A task tree as JSON: nested arrays under `children`.
fn tasks_document(tasks: &[TaskNode]) -> Result<Value, InvalidId> {
    tasks
        .iter()
        .map(|node| {
            let task = &node.summary;
            Ok(json!({
                "id": output::id_json(task.id.as_ref())?,
                "display": task.display,
                "state": task_state_name(task.state()),
                "retry_count": task.retry_count,
                "max_retries": task.max_retries,
                "cluster_slug": task.cluster_slug,
                "optional": task.optional,
                "submitted_at": output::timestamp_json(task.submitted_at.as_ref()),
                "started_at": output::timestamp_json(task.started_at.as_ref()),
                "stopped_at": output::timestamp_json(task.stopped_at.as_ref()),
                "children": tasks_document(&node.children)?,
            }))
        })
        .collect::<Result<Vec<_>, _>>()
        .map(Value::Array)
}

/// The job header of `job get`: key/value rows.
fn job_rows(job: &Job) -> Result<String, InvalidId> {
    let mut rows = vec![
        (
            "Job",
            output::id_text(job.id.as_ref())?.unwrap_or_else(|| "-".to_string()),
        ),
        ("Name", job.name.clone()),
        ("State", job_state_name(job.state()).to_string()),
        (
            "Submitted",
            output::timestamp_text(job.submitted_at.as_ref()),
        ),
    ];
    for (index, progress) in job.progress.iter().enumerate() {
        let key = if index == 0 { "Progress" } else { "" };
        let counts = format!("{}/{}", progress.done, progress.total);
        let value = if progress.label.is_empty() {
            counts
        } else {
            format!("{} {counts}", progress.label)
        };
        rows.push((key, value));
    }
    let total = job
        .execution_stats
        .as_ref()
        .map_or(0, |stats| stats.total_tasks);
    let by_state: Vec<String> = tasks_by_state(job)
        .into_iter()
        .filter(|(_, count)| *count > 0)
        .map(|(state, count)| format!("{state} {count}"))
        .collect();
    let tasks = if by_state.is_empty() {
        total.to_string()
    } else {
        format!("{total} ({})", by_state.join(", "))
    };
    rows.push(("Tasks", tasks));
    Ok(output::key_values(&rows))
}

/// The task tree of `job get`: one row per task, children indented under their parent.
fn task_table(tasks: &[TaskNode]) -> Result<Table, InvalidId> {
    fn push_rows(table: &mut Table, tasks: &[TaskNode], depth: usize) -> Result<(), InvalidId> {
        for node in tasks {
            let task = &node.summary;
            // One line per task: the display's first line, then (for failures) the error.
            let mut lines = task.display.lines();
            let mut display = match lines.next() {
                None | Some("") => "(unnamed)".to_string(),
                Some(first) => first.to_string(),
            };
            let rest: String = lines.collect::<Vec<_>>().join(" ");
            if !rest.is_empty() {
                let shortened: String = rest.chars().take(80).collect();
                let ellipsis = if rest.chars().count() > 80 { "..." } else { "" };
                display.push_str(&format!(": {shortened}{ellipsis}"));
            }
            let duration = match (&task.started_at, &task.stopped_at) {
                (Some(start), Some(stop)) => {
                    let millis = convert::millis_from_timestamp(stop)
                        - convert::millis_from_timestamp(start);
                    format!("{:.3}s", millis.max(0) as f64 / 1000.0)
                }
                (Some(_), None) => "running".to_string(),
                _ => "-".to_string(),
            };
            table.push(vec![
                format!("{}{display}", "  ".repeat(depth)),
                task_state_name(task.state()).to_string(),
                duration,
                format!("{}/{}", task.retry_count, task.max_retries),
                output::id_text(task.id.as_ref())?.unwrap_or_else(|| "-".to_string()),
            ]);
            push_rows(table, &node.children, depth + 1)?;
        }
        Ok(())
    }
    let mut table = Table::new(&["TASK", "STATE", "DURATION", "RETRIES", "ID"]);
    push_rows(&mut table, tasks, 0)?;
    Ok(table)
}

/// The table of `job list`.
fn jobs_table(jobs: &[Job]) -> Result<Table, InvalidId> {
    let mut table = Table::new(&["ID", "NAME", "STATE", "SUBMITTED", "TASKS"]);
    for job in jobs {
        table.push(vec![
            output::id_text(job.id.as_ref())?.unwrap_or_else(|| "-".to_string()),
            job.name.clone(),
            job_state_name(job.state()).to_string(),
            output::timestamp_text(job.submitted_at.as_ref()),
            job.execution_stats
                .as_ref()
                .map_or(0, |stats| stats.total_tasks)
                .to_string(),
        ]);
    }
    Ok(table)
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use clap::{CommandFactory, Parser};

    use super::*;
    use crate::api::workflows_v1::{ExecutionStats, Progress, TaskState, TaskStateCount};

    #[derive(Debug, Parser)]
    struct JobCli {
        #[command(subcommand)]
        command: JobCommand,
    }

    fn submit_args(arguments: &[&str]) -> SubmitArgs {
        let command = JobCli::try_parse_from(["job", "submit"].iter().chain(arguments))
            .expect("valid arguments")
            .command;
        match command {
            JobCommand::Submit(arguments) => arguments,
            other => panic!("parsed {other:?}"),
        }
    }

    fn timestamp(seconds: i64) -> prost_types::Timestamp {
        prost_types::Timestamp { seconds, nanos: 0 }
    }

    fn uuid(text: &str) -> Uuid {
        Uuid::parse_str(text).expect("a valid test uuid")
    }

    fn summary(id: Uuid, display: &str, state: TaskState, has_children: bool) -> TaskSummary {
        TaskSummary {
            id: Some(convert::id(id)),
            display: display.to_string(),
            state: state as i32,
            retry_count: 1,
            max_retries: 3,
            has_children,
            cluster_slug: "gpu".to_string(),
            submitted_at: Some(timestamp(0)),
            ..TaskSummary::default()
        }
    }

    #[test]
    fn command_tree_is_consistent() {
        crate::cli::Cli::command().debug_assert();
    }

    #[test]
    fn json_input_passes_through_byte_for_byte() {
        for input in [
            "5",
            "{\"a\": 1,  \"b\":[true]}",
            " \"quoted\" ",
            "null",
            "[1,2]",
        ] {
            assert_eq!(task_input(Some(input)), input.as_bytes());
        }
    }

    #[test]
    fn text_input_becomes_a_json_string() {
        assert_eq!(task_input(Some("S2A_001")), b"\"S2A_001\"");
        assert_eq!(task_input(Some("say \"hi\"")), br#""say \"hi\"""#);
        assert_eq!(task_input(Some("")), b"\"\"");
        assert_eq!(task_input(Some("{broken")), b"\"{broken\"");
    }

    #[test]
    fn no_input_is_no_bytes() {
        assert!(task_input(None).is_empty());
    }

    #[test]
    fn versions_must_be_v_major_dot_minor() {
        for version in ["v0.0", "v1.2", "v10.123"] {
            assert!(validate_version(version).is_ok(), "{version}");
        }
        for version in [
            "", "1.0", "v1", "v1.", "v.1", "v1.0.0", "va.b", "V1.0", "v1.0 ", "v-1.0",
        ] {
            let error = validate_version(version).expect_err(version);
            assert!(
                error.message.contains(&format!("`{version}`")),
                "{}",
                error.message
            );
        }
    }

    #[test]
    fn trace_parent_is_a_w3c_traceparent() {
        let value = trace_parent();
        let parts: Vec<&str> = value.split('-').collect();
        assert_eq!(parts.len(), 4, "{value}");
        assert_eq!(parts[0], "00");
        assert_eq!(parts[1].len(), 32);
        assert_eq!(parts[2].len(), 16);
        assert_eq!(parts[3], "01");
        assert!(
            value
                .bytes()
                .all(|byte| byte == b'-' || byte.is_ascii_digit() || (b'a'..=b'f').contains(&byte)),
            "{value}"
        );
        assert_ne!(trace_parent()[3..35], value[3..35]);
    }

    #[test]
    fn display_is_the_last_path_segment() {
        assert_eq!(display_of("MyTask"), "MyTask");
        assert_eq!(display_of("tilebox.com/example/MyTask"), "MyTask");
        assert_eq!(display_of("trailing/"), "trailing/");
    }

    #[test]
    fn submit_request_has_one_group_with_one_task() {
        let arguments = submit_args(&[
            "--name",
            "ingest",
            "--task",
            "tilebox.com/example/Ingest",
            "--version",
            "v1.2",
            "--input",
            "S2A_001",
            "--cluster",
            "gpu",
            "--max-retries",
            "3",
        ]);
        let request = submit_request(&arguments, "00-trace".to_string()).unwrap();
        assert_eq!(request.job_name, "ingest");
        assert_eq!(request.trace_parent, "00-trace");
        let tasks = request.tasks.unwrap();
        assert_eq!(
            tasks.identifier_lookup,
            vec![TaskIdentifier {
                name: "tilebox.com/example/Ingest".to_string(),
                version: "v1.2".to_string()
            }]
        );
        assert_eq!(tasks.cluster_slug_lookup, vec!["gpu".to_string()]);
        assert_eq!(tasks.display_lookup, vec!["Ingest".to_string()]);
        assert_eq!(
            tasks.task_groups,
            vec![TaskSubmissionGroup {
                dependencies_on_other_groups: vec![],
                inputs: vec![b"\"S2A_001\"".to_vec()],
                identifier_pointers: vec![0],
                cluster_slug_pointers: vec![0],
                display_pointers: vec![0],
                max_retries_values: vec![3],
                optional_values: vec![false],
            }]
        );
    }

    #[test]
    fn submit_request_defaults_to_v0_0_default_cluster_and_no_retries() {
        let arguments = submit_args(&["--name", "n", "--task", "Noop"]);
        let tasks = submit_request(&arguments, String::new())
            .unwrap()
            .tasks
            .unwrap();
        assert_eq!(tasks.identifier_lookup[0].version, "v0.0");
        assert_eq!(tasks.cluster_slug_lookup, vec![String::new()]);
        assert_eq!(tasks.task_groups[0].max_retries_values, vec![0]);
        assert_eq!(tasks.task_groups[0].inputs, vec![Vec::<u8>::new()]);
    }

    #[test]
    fn submit_request_rejects_a_bad_version_by_name() {
        let arguments = submit_args(&["--name", "n", "--task", "Noop", "--version", "1.0"]);
        let error = submit_request(&arguments, String::new()).unwrap_err();
        assert!(error.message.contains("`1.0`"), "{}", error.message);
    }

    #[test]
    fn bad_ids_are_user_errors_naming_the_value() {
        let error = parse_id("job id", "not-a-job").unwrap_err();
        assert_eq!(error.message, "invalid job id `not-a-job`: not a UUID");
        assert!(error.hint.is_some());
        assert_eq!(
            parse_id("job id", "0190A8C4-5E2B-7C1D-9F00-1A2B3C4D5E6F")
                .unwrap()
                .to_string(),
            "0190a8c4-5e2b-7c1d-9f00-1a2b3c4d5e6f"
        );
    }

    #[test]
    fn job_states_parse_by_lowercase_name() {
        assert_eq!(parse_job_state("failed"), Ok(JobState::Failed));
        assert_eq!(parse_job_state("Running"), Ok(JobState::Running));
        let error = parse_job_state("queued").unwrap_err();
        assert!(
            error.contains("`queued`") && error.contains("canceled"),
            "{error}"
        );
    }

    fn sample_job() -> Job {
        Job {
            id: Some(convert::id(uuid("0190a8c4-5e2b-7c1d-9f00-1a2b3c4d5e6f"))),
            name: "ingest".to_string(),
            trace_parent: "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".to_string(),
            submitted_at: Some(timestamp(1_700_000_000)),
            progress: vec![Progress {
                label: "tiles".to_string(),
                total: 10,
                done: 4,
            }],
            state: JobState::Running as i32,
            execution_stats: Some(ExecutionStats {
                first_task_started_at: Some(timestamp(1_700_000_001)),
                last_task_stopped_at: None,
                compute_time: Some(prost_types::Duration {
                    seconds: 2,
                    nanos: 500_000_000,
                }),
                elapsed_time: Some(prost_types::Duration {
                    seconds: 4,
                    nanos: 0,
                }),
                parallelism: 0.625,
                total_tasks: 5,
                tasks_by_state: vec![
                    TaskStateCount {
                        state: TaskState::Computed as i32,
                        count: 3,
                    },
                    TaskStateCount {
                        state: TaskState::Running as i32,
                        count: 1,
                    },
                    TaskStateCount {
                        state: TaskState::FailedOptional as i32,
                        count: 1,
                    },
                ],
            }),
            ..Job::default()
        }
    }

    #[test]
    fn job_document_uses_api_field_names_and_lowercase_states() {
        let document = Value::Object(job_document(&sample_job()).unwrap());
        assert_eq!(
            document,
            json!({
                "id": "0190a8c4-5e2b-7c1d-9f00-1a2b3c4d5e6f",
                "name": "ingest",
                "state": "running",
                "trace_parent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
                "submitted_at": "2023-11-14T22:13:20Z",
                "progress": [{"label": "tiles", "total": 10, "done": 4}],
                "execution_stats": {
                    "first_task_started_at": "2023-11-14T22:13:21Z",
                    "last_task_stopped_at": null,
                    "compute_time_seconds": 2.5,
                    "elapsed_time_seconds": 4.0,
                    "parallelism": 0.625,
                    "total_tasks": 5,
                    "tasks_by_state": {"computed": 3, "running": 1, "failed_optional": 1},
                },
            })
        );
    }

    #[test]
    fn job_document_without_stats_has_zero_counts() {
        let job = Job {
            execution_stats: None,
            ..sample_job()
        };
        let document = job_document(&job).unwrap();
        assert_eq!(
            document["execution_stats"],
            json!({
                "first_task_started_at": null,
                "last_task_stopped_at": null,
                "compute_time_seconds": null,
                "elapsed_time_seconds": null,
                "parallelism": 0.0,
                "total_tasks": 0,
                "tasks_by_state": {},
            })
        );
    }

    #[test]
    fn job_rows_show_progress_and_counts() {
        assert_eq!(
            job_rows(&sample_job()).unwrap(),
            "Job        0190a8c4-5e2b-7c1d-9f00-1a2b3c4d5e6f\n\
             Name       ingest\n\
             State      running\n\
             Submitted  2023-11-14T22:13:20Z\n\
             Progress   tiles 4/10\n\
             Tasks      5 (computed 3, failed_optional 1, running 1)"
        );
    }

    fn sample_tree() -> Vec<TaskNode> {
        let root = uuid("00000000-0000-7000-8000-000000000001");
        let child = uuid("00000000-0000-7000-8000-000000000002");
        let grandchild = uuid("00000000-0000-7000-8000-000000000003");
        let mut children = HashMap::from([
            (
                root,
                vec![summary(child, "Child", TaskState::Running, true)],
            ),
            (
                child,
                vec![summary(grandchild, "Leaf", TaskState::Queued, false)],
            ),
        ]);
        let tree = assemble_tree(
            vec![summary(root, "Root", TaskState::Computed, true)],
            &mut children,
        )
        .unwrap();
        assert!(children.is_empty(), "every child list is used once");
        tree
    }

    #[test]
    fn task_tree_nests_children_in_json() {
        let document = tasks_document(&sample_tree()).unwrap();
        assert_eq!(document[0]["display"], "Root");
        assert_eq!(document[0]["state"], "computed");
        assert_eq!(document[0]["id"], "00000000-0000-7000-8000-000000000001");
        assert_eq!(document[0]["retry_count"], 1);
        assert_eq!(document[0]["max_retries"], 3);
        assert_eq!(document[0]["cluster_slug"], "gpu");
        assert_eq!(document[0]["optional"], false);
        assert_eq!(document[0]["submitted_at"], "1970-01-01T00:00:00Z");
        assert_eq!(document[0]["started_at"], Value::Null);
        assert_eq!(document[0]["children"][0]["display"], "Child");
        assert_eq!(document[0]["children"][0]["children"][0]["state"], "queued");
        assert_eq!(
            document[0]["children"][0]["children"][0]["children"],
            json!([])
        );
    }

    #[test]
    fn task_table_indents_children() {
        assert_eq!(
            task_table(&sample_tree()).unwrap().render(),
            "TASK      STATE     DURATION  RETRIES  ID\n\
             Root      computed  -         1/3      00000000-0000-7000-8000-000000000001\n  \
             Child   running   -         1/3      00000000-0000-7000-8000-000000000002\n    \
             Leaf  queued    -         1/3      00000000-0000-7000-8000-000000000003"
        );
    }

    #[test]
    fn queue_parents_skips_leaves_and_repeats() {
        let parent = uuid("00000000-0000-7000-8000-000000000001");
        let leaf = uuid("00000000-0000-7000-8000-000000000002");
        let tasks = vec![
            summary(parent, "P", TaskState::Computed, true),
            summary(leaf, "L", TaskState::Queued, false),
            summary(parent, "P", TaskState::Computed, true),
        ];
        let mut seen = HashSet::new();
        let mut parents = Vec::new();
        queue_parents(&tasks, &mut seen, &mut parents).unwrap();
        assert_eq!(parents, vec![parent]);
    }

    #[test]
    fn jobs_table_lists_id_name_state_submitted_and_tasks() {
        assert_eq!(
            jobs_table(&[sample_job()]).unwrap().render(),
            "ID                                    NAME    STATE    SUBMITTED             TASKS\n\
             0190a8c4-5e2b-7c1d-9f00-1a2b3c4d5e6f  ingest  running  2023-11-14T22:13:20Z  5"
        );
    }

    /// A job service that answers `GetJob` with a scripted series of states and `ListJobTasks`
    /// with a two-page root list and one child; everything else is unimplemented.
    mod fake {
        use std::sync::Mutex;

        use tonic::{Request, Response, Status};

        use super::*;
        use crate::api::workflows_v1::job_service_server::{JobService, JobServiceServer};
        use crate::api::workflows_v1::{
            CancelJobResponse, GetJobStateCountsRequest, GetJobStateCountsResponse, JobTaskPage,
            ListJobTasksResponse, QueryJobsResponse, RetryJobResponse,
        };

        pub const ROOT_A: &str = "00000000-0000-7000-8000-00000000000a";
        pub const ROOT_B: &str = "00000000-0000-7000-8000-00000000000b";
        pub const CHILD: &str = "00000000-0000-7000-8000-00000000000c";

        pub struct Jobs {
            pub states: Mutex<Vec<JobState>>,
        }

        #[tonic::async_trait]
        impl JobService for Jobs {
            async fn submit_job(
                &self,
                _: Request<SubmitJobRequest>,
            ) -> Result<Response<Job>, Status> {
                Err(Status::unimplemented("submit"))
            }

            async fn get_job(
                &self,
                request: Request<GetJobRequest>,
            ) -> Result<Response<Job>, Status> {
                let mut states = self.states.lock().expect("not poisoned");
                let state = if states.len() > 1 {
                    states.remove(0)
                } else {
                    states[0]
                };
                Ok(Response::new(Job {
                    id: request.into_inner().job_id,
                    state: state as i32,
                    ..Job::default()
                }))
            }

            async fn list_job_tasks(
                &self,
                request: Request<ListJobTasksRequest>,
            ) -> Result<Response<ListJobTasksResponse>, Status> {
                let request = request.into_inner();
                let parent = convert::uuid_of(request.parent_task_id.as_ref()).expect("valid id");
                let after = request.page.and_then(|page| {
                    convert::uuid_of(page.starting_after.as_ref()).expect("valid id")
                });
                let (tasks, next) = match (parent, after) {
                    (None, None) => (
                        vec![summary(uuid(ROOT_A), "A", TaskState::Computed, true)],
                        Some(uuid(ROOT_A)),
                    ),
                    (None, Some(_)) => (
                        vec![summary(uuid(ROOT_B), "B", TaskState::Queued, false)],
                        None,
                    ),
                    (Some(parent), None) if parent == uuid(ROOT_A) => (
                        vec![summary(uuid(CHILD), "C", TaskState::Running, false)],
                        None,
                    ),
                    _ => return Err(Status::invalid_argument("unexpected page")),
                };
                Ok(Response::new(ListJobTasksResponse {
                    page: Some(JobTaskPage {
                        parent_task_id: request.parent_task_id,
                        tasks,
                        next_page: next.map(|id| Pagination {
                            limit: None,
                            starting_after: Some(convert::id(id)),
                        }),
                    }),
                    prefetched_child_pages: Vec::new(),
                }))
            }

            async fn retry_job(
                &self,
                _: Request<RetryJobRequest>,
            ) -> Result<Response<RetryJobResponse>, Status> {
                Err(Status::unimplemented("retry"))
            }

            async fn cancel_job(
                &self,
                _: Request<CancelJobRequest>,
            ) -> Result<Response<CancelJobResponse>, Status> {
                Err(Status::unimplemented("cancel"))
            }

            async fn query_jobs(
                &self,
                _: Request<QueryJobsRequest>,
            ) -> Result<Response<QueryJobsResponse>, Status> {
                Err(Status::unimplemented("query"))
            }

            async fn get_job_state_counts(
                &self,
                _: Request<GetJobStateCountsRequest>,
            ) -> Result<Response<GetJobStateCountsResponse>, Status> {
                Err(Status::unimplemented("counts"))
            }
        }

        /// Serves `jobs` on a free local port until the returned sender is dropped.
        pub async fn serve(jobs: Jobs) -> (Client, tokio::sync::oneshot::Sender<()>) {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                .await
                .expect("a free port");
            let address = listener.local_addr().expect("a bound address");
            let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
            tokio::spawn(
                tonic::transport::Server::builder()
                    .add_service(JobServiceServer::new(jobs))
                    .serve_with_incoming_shutdown(
                        tokio_stream::wrappers::TcpListenerStream::new(listener),
                        async {
                            let _ = stopped.await;
                        },
                    ),
            );
            let client = Client::connect(&format!("http://{address}"), None)
                .await
                .expect("a client");
            (client, stop)
        }
    }

    #[tokio::test]
    async fn task_tree_follows_pages_and_children() {
        let (mut client, _stop) = fake::serve(fake::Jobs {
            states: Mutex::new(vec![JobState::Running]),
        })
        .await;
        let tree = fetch_task_tree(&mut client, Uuid::nil()).await.unwrap();
        let document = tasks_document(&tree).unwrap();
        assert_eq!(document[0]["id"], fake::ROOT_A);
        assert_eq!(document[0]["children"][0]["id"], fake::CHILD);
        assert_eq!(document[1]["id"], fake::ROOT_B);
        assert_eq!(document.as_array().map(Vec::len), Some(2));
    }

    #[tokio::test]
    async fn wait_polls_until_finished_and_fails_with_exit_code_one() {
        let (mut client, _stop) = fake::serve(fake::Jobs {
            states: Mutex::new(vec![
                JobState::Submitted,
                JobState::Running,
                JobState::Failed,
            ]),
        })
        .await;
        let code = wait_for(&mut client, Uuid::nil(), Some(10), true)
            .await
            .unwrap();
        assert_eq!(code, ExitCode::from(1));
    }

    #[tokio::test]
    async fn wait_for_a_completed_job_exits_zero() {
        let (mut client, _stop) = fake::serve(fake::Jobs {
            states: Mutex::new(vec![JobState::Running, JobState::Completed]),
        })
        .await;
        let code = wait_for(&mut client, Uuid::nil(), None, true)
            .await
            .unwrap();
        assert_eq!(code, ExitCode::SUCCESS);
    }

    #[tokio::test]
    async fn wait_times_out_with_a_user_error_naming_the_state() {
        let (mut client, _stop) = fake::serve(fake::Jobs {
            states: Mutex::new(vec![JobState::Started]),
        })
        .await;
        let error = wait_for(&mut client, Uuid::nil(), Some(0), true)
            .await
            .unwrap_err();
        let error = error.downcast_ref::<UserError>().expect("a user error");
        assert_eq!(
            error.message,
            "job 00000000-0000-0000-0000-000000000000 still started after 0s"
        );
    }
}
