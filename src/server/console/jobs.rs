//! The jobs page, `/jobs`: one row per job, newest first, filtered by state, name, cluster
//! and submission time (a GET form, so a filtered view is a link), paged by a cursor (the
//! last job's id: job ids are time-ordered v7 UUIDs). The first page refreshes itself.

use axum::Router;
use axum::extract::{Query, State};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use maud::{Markup, html};
use uuid::Uuid;

use super::viewer::urlencode;
use super::{ConsoleError, ConsoleState, Fragment, Viewer, layout};
use crate::api::convert::task_state_name;
use crate::api::workflows_v1::JobState;
use crate::server::auth::Action;
use crate::server::store::{Job, JobFilter, Page, Progress};

/// Jobs per page.
const PAGE: usize = 50;
/// How often the first page refreshes, in milliseconds.
const REFRESH_MS: u32 = 3_000;

/// The job states a user filters by, with the word the console shows for each.
const STATES: [(JobState, &str); 6] = [
    (JobState::Submitted, "queued"),
    (JobState::Started, "started"),
    (JobState::Running, "running"),
    (JobState::Completed, "completed"),
    (JobState::Failed, "failed"),
    (JobState::Canceled, "canceled"),
];

pub fn routes() -> Router<ConsoleState> {
    Router::new().route("/jobs", get(list))
}

/// The word for a job state in the console (`queued` for a job no task of which started).
pub fn job_state_word(state: JobState) -> &'static str {
    STATES
        .iter()
        .find(|(known, _)| *known == state)
        .map_or("unknown", |(_, word)| word)
}

/// Whether a job may still change without anyone acting on it.
pub fn unfinished(state: JobState) -> bool {
    matches!(
        state,
        JobState::Submitted | JobState::Started | JobState::Running
    )
}

/// How long after a job's last task stopped its spans and logs may still arrive: runners
/// export them apart from the results (every 250 ms), so the last come a moment after the
/// job ended.
pub const TELEMETRY_SETTLE_MS: i64 = 10_000;

/// Whether views of a job's spans and logs should keep refreshing: it is unfinished, or
/// its last task stopped less than [`TELEMETRY_SETTLE_MS`] before `now_millis`.
pub fn telemetry_may_arrive(job: &Job, now_millis: i64) -> bool {
    unfinished(job.state)
        || job
            .stats
            .last_task_stopped_at
            .is_some_and(|stopped| now_millis.saturating_sub(stopped) < TELEMETRY_SETTLE_MS)
}

/// Longest name or cluster filter, in characters.
const MAX_FILTER_CHARS: usize = 100;

/// The filters and cursor of the jobs page, as given in its query.
#[derive(Debug, Default, PartialEq)]
struct Filters {
    states: Vec<JobState>,
    name: String,
    cluster: String,
    /// As typed (`2026-05-01T12:00`, UTC), to show in the form again.
    from: String,
    to: String,
    after: Option<Uuid>,
}

impl Filters {
    fn parse(pairs: &[(String, String)]) -> Result<Self, ConsoleError> {
        let mut filters = Filters::default();
        for (key, value) in pairs {
            let value = value.trim();
            match key.as_str() {
                "state" if !value.is_empty() => {
                    let (state, _) =
                        STATES
                            .iter()
                            .find(|(_, word)| *word == value)
                            .ok_or_else(|| {
                                ConsoleError::BadRequest(format!(
                                    "unknown job state `{}`; the states are {}",
                                    layout::echo(value),
                                    STATES.map(|(_, word)| word).join(", ")
                                ))
                            })?;
                    filters.states.push(*state);
                }
                "name" => filters.name = value.to_string(),
                "cluster" => filters.cluster = value.to_string(),
                "from" => filters.from = value.to_string(),
                "to" => filters.to = value.to_string(),
                "after" if !value.is_empty() => {
                    filters.after = Some(Uuid::parse_str(value).map_err(|_| {
                        ConsoleError::BadRequest(format!(
                            "`after={}` is not a job id",
                            layout::echo(value)
                        ))
                    })?);
                }
                _ => {}
            }
        }
        // What the form shows again: another site's link can put at most this much text on
        // the page.
        for (what, value) in [("name", &filters.name), ("cluster", &filters.cluster)] {
            let length = value.chars().count();
            if length > MAX_FILTER_CHARS {
                return Err(ConsoleError::BadRequest(format!(
                    "the {what} filter is {length} characters; at most {MAX_FILTER_CHARS} are allowed"
                )));
            }
        }
        Ok(filters)
    }

    fn store_filter(&self) -> Result<JobFilter, ConsoleError> {
        Ok(JobFilter {
            states: self.states.clone(),
            name_contains: Some(self.name.clone()).filter(|name| !name.is_empty()),
            clusters: Some(self.cluster.clone())
                .filter(|cluster| !cluster.is_empty())
                .into_iter()
                .collect(),
            submitted_from: parse_utc("from", &self.from)?,
            submitted_to: parse_utc("to", &self.to)?,
            ..JobFilter::default()
        })
    }

    /// The query of this view without its cursor (`state=failed&name=x`).
    fn query(&self) -> String {
        let mut parts: Vec<String> = self
            .states
            .iter()
            .map(|state| format!("state={}", job_state_word(*state)))
            .collect();
        for (key, value) in [
            ("name", &self.name),
            ("cluster", &self.cluster),
            ("from", &self.from),
            ("to", &self.to),
        ] {
            if !value.is_empty() {
                parts.push(format!("{key}={}", urlencode(value)));
            }
        }
        parts.join("&")
    }

    fn url(&self, after: Option<Uuid>) -> String {
        let mut query = self.query();
        if let Some(after) = after {
            if !query.is_empty() {
                query.push('&');
            }
            query.push_str(&format!("after={after}"));
        }
        if query.is_empty() {
            "/jobs".to_string()
        } else {
            format!("/jobs?{query}")
        }
    }
}

/// A UTC time as typed in the form (`2026-05-01T12:00`, `2026-05-01 12:00:30`,
/// `2026-05-01`, or RFC 3339 with `Z`) as milliseconds since the epoch.
fn parse_utc(field: &str, text: &str) -> Result<Option<i64>, ConsoleError> {
    if text.is_empty() {
        return Ok(None);
    }
    let mut normalized = text.trim_end_matches(['Z', 'z']).replace('T', " ");
    match normalized.len() {
        10 => normalized.push_str(" 00:00:00"),
        16 => normalized.push_str(":00"),
        _ => {}
    }
    let time = humantime::parse_rfc3339_weak(&normalized).map_err(|error| {
        ConsoleError::BadRequest(format!(
            "`{field}={}` is not a UTC time like 2026-05-01T12:00 ({error})",
            layout::echo(text)
        ))
    })?;
    let millis = time
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |since| since.as_millis());
    Ok(Some(i64::try_from(millis).unwrap_or(i64::MAX)))
}

async fn list(
    State(state): State<ConsoleState>,
    viewer: Viewer,
    fragment: Fragment,
    Query(pairs): Query<Vec<(String, String)>>,
) -> Result<Response, ConsoleError> {
    viewer.principal.check(Action::ReadJobs)?;
    let filters = Filters::parse(&pairs)?;
    let jobs = state
        .store
        .query_jobs(
            filters.store_filter()?,
            Page {
                after: filters.after,
                limit: PAGE,
                descending: true,
            },
        )
        .await?;
    // The cluster of each job's first root task: one indexed read of one row per job.
    let mut clusters = Vec::with_capacity(jobs.len());
    for job in &jobs {
        let first = state
            .store
            .list_tasks(
                job.id,
                None,
                Page {
                    after: None,
                    limit: 1,
                    descending: false,
                },
            )
            .await?;
        clusters.push(first.into_iter().next().map(|task| task.cluster));
    }
    let table = jobs_list(&filters, &jobs, &clusters);
    if fragment.0 {
        return Ok(table.into_response());
    }
    Ok(layout::page(
        &viewer,
        fragment,
        layout::Section::Jobs,
        "Jobs",
        html! {
            h1 { "Jobs" }
            (filter_form(&filters))
            (table)
        },
    ))
}

fn filter_form(filters: &Filters) -> Markup {
    html! {
        form.filters method="get" action="/jobs" {
            fieldset.states {
                legend { "State" }
                @for (state, word) in STATES {
                    label {
                        input type="checkbox" name="state" value=(word)
                            checked[filters.states.contains(&state)];
                        " " (word)
                    }
                }
            }
            label { "Name " input type="search" name="name" value=(filters.name) maxlength="100"; }
            label { "Cluster " input type="text" name="cluster" value=(filters.cluster) size="12"; }
            label { "From (UTC) " input type="datetime-local" name="from" value=(filters.from); }
            label { "To (UTC) " input type="datetime-local" name="to" value=(filters.to); }
            button.primary type="submit" { "Filter" }
            a.button href="/jobs" { "Clear" }
        }
    }
}

/// The table with its paging links; on the first page it refreshes itself.
fn jobs_list(filters: &Filters, jobs: &[Job], clusters: &[Option<String>]) -> Markup {
    let first_page = filters.after.is_none();
    let older = (jobs.len() >= PAGE)
        .then(|| jobs.last().map(|job| filters.url(Some(job.id))))
        .flatten();
    html! {
        div.jobs-list data-poll=[first_page.then(|| filters.url(None))]
            data-poll-ms=[first_page.then_some(REFRESH_MS)] {
            @if jobs.is_empty() {
                p.empty.muted {
                    @if first_page { "No jobs match." } @else { "No older jobs." }
                }
            } @else {
                table.jobs {
                    thead { tr {
                        th { "State" } th { "Name" } th { "Cluster" } th { "Progress" }
                        th { "Tasks" } th { "Submitted" } th { "Duration" }
                    } }
                    tbody {
                        @for (job, cluster) in jobs.iter().zip(clusters) {
                            (job_row(job, cluster.as_deref()))
                        }
                    }
                }
            }
            nav.paging {
                @if !first_page { a href=(filters.url(None)) { "← Newest" } }
                @if let Some(older) = older { a href=(older) { "Older →" } }
            }
        }
    }
}

fn job_row(job: &Job, cluster: Option<&str>) -> Markup {
    let word = job_state_word(job.state);
    let href = format!("/jobs/{}", job.id);
    html! {
        tr.job data-job=(job.id) data-state=(word) {
            td { (layout::badge(word)) }
            td.name {
                a href=(href) {
                    @if job.name.is_empty() { (job.id) } @else { (job.name) }
                }
            }
            td.cluster { (cluster.unwrap_or("")) }
            td.progress { (progress_bars(&job.progress)) }
            td.counts { (task_counts(job)) }
            td.submitted { (layout::time(job.submitted_at)) }
            td.duration { (layout::duration(job.stats.elapsed_time.as_millis() as i64)) }
        }
    }
}

/// One `<progress>` per label, with `done/total`.
pub fn progress_bars(progress: &[Progress]) -> Markup {
    let shown = &progress[..progress.len().min(MAX_PROGRESS_BARS)];
    let hidden = progress.len() - shown.len();
    html! {
        @for indicator in shown {
            div.progress-bar {
                span.label { (indicator.label.as_deref().unwrap_or("progress")) }
                progress value=(indicator.done.min(indicator.total))
                    max=(indicator.total.max(1)) {}
                span.numbers { (indicator.done) "/" (indicator.total) }
            }
        }
        @if hidden > 0 {
            span.muted.more-progress { "and " (hidden) " more labels (tilebox job get shows them)" }
        }
    }
}

/// Progress bars drawn per job: a workflow may label progress per item, and the header and
/// the jobs page redraw them every few seconds.
const MAX_PROGRESS_BARS: usize = 12;

/// The job's task counts per state (`3 computed · 1 failed`).
pub fn task_counts(job: &Job) -> Markup {
    html! {
        span.task-counts {
            @for (state, count) in &job.stats.tasks_by_state {
                span class={ "count count-" (task_state_name(*state)) } {
                    (count) " " (task_state_name(*state))
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(query: &[(&str, &str)]) -> Vec<(String, String)> {
        query
            .iter()
            .map(|(key, value)| (key.to_string(), value.to_string()))
            .collect()
    }

    #[test]
    fn telemetry_views_refresh_until_a_while_after_the_last_task_stopped() {
        let job = |state: JobState, stopped: Option<i64>| Job {
            id: Uuid::nil(),
            name: String::new(),
            trace_parent: String::new(),
            state,
            submitted_at: 0,
            progress: Vec::new(),
            stats: crate::server::store::ExecutionStats {
                last_task_stopped_at: stopped,
                ..Default::default()
            },
        };
        let now = 1_000_000;
        assert!(telemetry_may_arrive(&job(JobState::Running, None), now));
        assert!(telemetry_may_arrive(&job(JobState::Running, Some(0)), now));
        let ended = now - TELEMETRY_SETTLE_MS;
        assert!(telemetry_may_arrive(
            &job(JobState::Completed, Some(ended + 1)),
            now
        ));
        assert!(!telemetry_may_arrive(
            &job(JobState::Completed, Some(ended)),
            now
        ));
        assert!(!telemetry_may_arrive(&job(JobState::Canceled, None), now));
        assert!(
            telemetry_may_arrive(&job(JobState::Failed, Some(i64::MAX)), i64::MIN),
            "a clock that went back saturates"
        );
    }

    #[test]
    fn filters_round_trip_through_the_query() {
        let filters = Filters::parse(&pairs(&[
            ("state", "failed"),
            ("state", "queued"),
            ("name", "a b&c"),
            ("cluster", ""),
            ("from", "2026-05-01T12:00"),
        ]))
        .expect("valid");
        assert_eq!(filters.states, [JobState::Failed, JobState::Submitted]);
        assert_eq!(
            filters.query(),
            "state=failed&state=queued&name=a%20b%26c&from=2026-05-01T12%3A00"
        );
        let filter = filters.store_filter().expect("valid");
        assert_eq!(filter.submitted_from, Some(1_777_636_800_000));
        assert_eq!(filter.name_contains.as_deref(), Some("a b&c"));
        assert!(filter.clusters.is_empty());
    }

    #[test]
    fn bad_filters_say_what_is_wrong() {
        let error = Filters::parse(&pairs(&[("state", "sleeping")])).unwrap_err();
        assert!(error.to_string().contains("`sleeping`"), "{error}");
        let long = "c".repeat(101);
        for key in ["name", "cluster"] {
            let error = Filters::parse(&pairs(&[(key, &long)])).unwrap_err();
            assert_eq!(
                error.to_string(),
                format!("the {key} filter is 101 characters; at most 100 are allowed")
            );
        }
        assert!(Filters::parse(&pairs(&[("cluster", &long[1..])])).is_ok());
        assert!(parse_utc("to", "yesterday").is_err());
        assert_eq!(
            parse_utc("to", "2026-05-01").expect("a date"),
            Some(1_777_593_600_000)
        );
    }
}
