//! How jobs and task trees are shown: `--json` documents with the API's field names, and
//! human tables.

use std::collections::BTreeMap;

use serde_json::{Map, Value, json};

use super::tree::TaskNode;
use crate::api::convert::{self, InvalidId, job_state_name, task_state_name};
use crate::api::workflows_v1::Job;
use crate::cli::output::{self, Table};

/// A job as JSON, with the API's field names.
pub(super) fn job_document(job: &Job) -> Result<Map<String, Value>, InvalidId> {
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
pub(super) fn tasks_by_state(job: &Job) -> BTreeMap<&'static str, u64> {
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
pub(super) fn tasks_document(tasks: &[TaskNode]) -> Result<Value, InvalidId> {
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
pub(super) fn job_rows(job: &Job) -> Result<String, InvalidId> {
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
pub(super) fn task_table(tasks: &[TaskNode]) -> Result<Table, InvalidId> {
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
pub(super) fn jobs_table(jobs: &[Job]) -> Result<Table, InvalidId> {
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
