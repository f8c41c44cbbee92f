//! The execution tab: a timeline of the job's spans (every attempt of every task, with exact
//! times) on one time axis, a band per runner, overlapping spans of a runner packed into
//! sub-lanes (its slots), coloured by runner. Also decodes spans for the task detail (its
//! attempts and the exception of a failed one).
//!
//! A running attempt has no span until it ends (the runner exports it then); the tab
//! refreshes every 2 s while the job runs.

use std::collections::HashMap;

use maud::{Markup, html};
use prost::Message;
use uuid::Uuid;

use super::runners;
use super::{ConsoleError, ConsoleState, layout};
use crate::api::otlp::common::v1::{AnyValue, KeyValue, any_value};
use crate::api::otlp::trace::v1::{ResourceSpans, status};
use crate::server::services::telemetry::trace_id_of;
use crate::server::store::{Job, Page, TelemetryKind};

/// Most spans drawn (the official graph stops at 200 tasks).
pub const MAX_SPANS: usize = 2_000;
/// Spans read per query.
const SPAN_PAGE: usize = 1_000;
/// How many runner colours the stylesheet has (`runner-0` … `runner-11`).
const PALETTE: usize = 12;

/// The exception a failed attempt recorded (its span's `exception` event).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exception {
    pub kind: String,
    pub message: String,
    pub stacktrace: String,
}

/// One span, decoded for display.
#[derive(Debug, Clone, PartialEq)]
pub struct SpanView {
    pub name: String,
    pub runner: String,
    pub task: String,
    pub start_ns: u64,
    pub end_ns: u64,
    pub error: bool,
    pub retry_count: Option<i64>,
    pub exception: Option<Exception>,
}

/// An attribute's value as text (lists and maps as JSON-like text).
pub fn value_text(value: Option<&AnyValue>) -> String {
    match value.and_then(|value| value.value.as_ref()) {
        None => String::new(),
        Some(any_value::Value::StringValue(text)) => text.clone(),
        Some(any_value::Value::BoolValue(flag)) => flag.to_string(),
        Some(any_value::Value::IntValue(number)) => number.to_string(),
        Some(any_value::Value::DoubleValue(number)) => number.to_string(),
        Some(any_value::Value::BytesValue(bytes)) => hex::encode(bytes),
        Some(any_value::Value::ArrayValue(list)) => format!(
            "[{}]",
            list.values
                .iter()
                .map(|item| value_text(Some(item)))
                .collect::<Vec<_>>()
                .join(", ")
        ),
        Some(any_value::Value::KvlistValue(map)) => format!(
            "{{{}}}",
            map.values
                .iter()
                .map(|pair| format!("{}: {}", pair.key, value_text(pair.value.as_ref())))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

/// The text of attribute `key`, if present.
pub fn attribute<'a>(attributes: &'a [KeyValue], key: &str) -> Option<&'a KeyValue> {
    attributes.iter().find(|attribute| attribute.key == key)
}

fn attribute_text(attributes: &[KeyValue], key: &str) -> Option<String> {
    attribute(attributes, key)
        .map(|found| value_text(found.value.as_ref()))
        .filter(|text| !text.is_empty())
}

/// Which runner a record came from: the resource's `service.instance.id` (our runner sets
/// its id there), else the span's `runner.id` without its `/<slot>` suffix, else the
/// resource's `host.name` (an SDK runner sets that and little else), else `unknown`.
pub fn runner_of(resource: &[KeyValue], attributes: &[KeyValue]) -> String {
    attribute_text(resource, "service.instance.id")
        .or_else(|| {
            attribute_text(attributes, "runner.id").map(|id| match id.rsplit_once('/') {
                Some((runner, slot)) if slot.bytes().all(|byte| byte.is_ascii_digit()) => {
                    runner.to_string()
                }
                _ => id,
            })
        })
        .or_else(|| attribute_text(resource, "host.name"))
        .unwrap_or_else(|| "unknown".to_string())
}

/// Decodes stored single-span `ResourceSpans` records (undecodable ones are skipped).
pub fn decode_spans(rows: &[(Uuid, Vec<u8>)]) -> Vec<SpanView> {
    let mut spans = Vec::with_capacity(rows.len());
    for (_, encoded) in rows {
        let Ok(resource_spans) = ResourceSpans::decode(encoded.as_slice()) else {
            continue;
        };
        let resource = resource_spans
            .resource
            .map(|resource| resource.attributes)
            .unwrap_or_default();
        for scope in &resource_spans.scope_spans {
            for span in &scope.spans {
                let exception = span
                    .events
                    .iter()
                    .find(|event| event.name == "exception")
                    .map(|event| Exception {
                        kind: attribute_text(&event.attributes, "exception.type")
                            .unwrap_or_default(),
                        message: attribute_text(&event.attributes, "exception.message")
                            .unwrap_or_default(),
                        stacktrace: attribute_text(&event.attributes, "exception.stacktrace")
                            .unwrap_or_default(),
                    });
                let error = span
                    .status
                    .as_ref()
                    .is_some_and(|status| status.code == status::StatusCode::Error as i32)
                    || exception.is_some();
                spans.push(SpanView {
                    name: span.name.clone(),
                    runner: runner_of(&resource, &span.attributes),
                    task: attribute_text(&span.attributes, "task_id").unwrap_or_default(),
                    start_ns: span.start_time_unix_nano,
                    end_ns: span.end_time_unix_nano.max(span.start_time_unix_nano),
                    error,
                    retry_count: attribute(&span.attributes, "retry_count").and_then(|found| {
                        match found.value.as_ref().and_then(|value| value.value.as_ref()) {
                            Some(any_value::Value::IntValue(count)) => Some(*count),
                            _ => None,
                        }
                    }),
                    exception,
                });
            }
        }
    }
    spans
}

/// Packs intervals `[start, end)` into lanes so that no two in a lane overlap: answers each
/// interval's lane (greedy, by start time: the lane that freed up first, else a new one)
/// and the number of lanes.
pub fn lanes(intervals: &[(u64, u64)]) -> (Vec<usize>, usize) {
    let mut order: Vec<usize> = (0..intervals.len()).collect();
    order.sort_by_key(|&index| intervals[index]);
    let mut lane_ends: Vec<u64> = Vec::new();
    let mut assigned = vec![0; intervals.len()];
    for index in order {
        let (start, end) = intervals[index];
        let free = lane_ends
            .iter()
            .enumerate()
            .filter(|(_, lane_end)| **lane_end <= start)
            .min_by_key(|(_, lane_end)| **lane_end)
            .map(|(lane, _)| lane);
        let lane = match free {
            Some(lane) => lane,
            None => {
                lane_ends.push(0);
                lane_ends.len() - 1
            }
        };
        lane_ends[lane] = end.max(start);
        assigned[index] = lane;
    }
    (assigned, lane_ends.len())
}

/// The spans of `job`, at most [`MAX_SPANS`], and whether there are more.
async fn job_spans(state: &ConsoleState, job: &Job) -> Result<(Vec<SpanView>, bool), ConsoleError> {
    let Some(trace) = trace_id_of(&job.trace_parent) else {
        return Ok((Vec::new(), false));
    };
    let mut rows = Vec::new();
    let mut after = None;
    while rows.len() < MAX_SPANS {
        let page = state
            .store
            .query_telemetry(
                TelemetryKind::Span,
                trace.clone(),
                None,
                Vec::new(),
                Page {
                    after,
                    limit: SPAN_PAGE.min(MAX_SPANS - rows.len()),
                    descending: false,
                },
            )
            .await?;
        let full = page.len() == SPAN_PAGE.min(MAX_SPANS - rows.len());
        after = page.last().map(|(id, _)| *id);
        rows.extend(page);
        if !full {
            return Ok((decode_spans(&rows), false));
        }
    }
    let more = !state
        .store
        .query_telemetry(
            TelemetryKind::Span,
            trace,
            None,
            Vec::new(),
            Page {
                after,
                limit: 1,
                descending: false,
            },
        )
        .await?
        .is_empty();
    Ok((decode_spans(&rows), more))
}

/// The execution tab's content; it refreshes itself (`/jobs/{job}/execution`) while spans
/// may still arrive ([`telemetry_may_arrive`](super::jobs::telemetry_may_arrive)).
pub async fn tab(state: &ConsoleState, job: &Job) -> Result<Markup, ConsoleError> {
    let poll = super::jobs::telemetry_may_arrive(job, crate::api::convert::now_millis())
        .then(|| format!("/jobs/{}/execution", job.id));
    let (spans, more) = job_spans(state, job).await?;
    let hosts = runners::runner_hostnames(state).await;
    let label = |runner: &str| runners::runner_name(runner, hosts.get(runner).map(String::as_str));
    Ok(html! {
        section.tab data-tab="execution" data-poll=[poll.as_ref()]
            data-poll-ms=[poll.as_ref().map(|_| 2_000)] {
            (timeline(&spans, more, &label))
        }
    })
}

/// Geometry of the drawing, in SVG user units.
const WIDTH: f64 = 1_100.0;
const LABEL: f64 = 170.0;
const AXIS: f64 = 26.0;
const LANE: f64 = 14.0;
const LANE_GAP: f64 = 3.0;
const BAND_GAP: f64 = 10.0;

/// The summary line and the SVG of `spans`, each runner named by `label`.
pub fn timeline(spans: &[SpanView], more: bool, label: &dyn Fn(&str) -> String) -> Markup {
    let errors = spans.iter().filter(|span| span.error).count();
    // Runners in order of their first span.
    let mut runners: Vec<&str> = Vec::new();
    let mut by_runner: HashMap<&str, Vec<usize>> = HashMap::new();
    let mut order: Vec<usize> = (0..spans.len()).collect();
    order.sort_by_key(|&index| spans[index].start_ns);
    for index in order {
        let runner = spans[index].runner.as_str();
        by_runner
            .entry(runner)
            .or_insert_with(|| {
                runners.push(runner);
                Vec::new()
            })
            .push(index);
    }
    let summary = html! {
        p.timeline-summary data-spans=(spans.len()) data-runners=(runners.len()) data-errors=(errors) {
            (spans.len()) " spans | " (errors) " errors | " (runners.len()) " runners"
            @if more { span.muted { " (the first " (MAX_SPANS) " spans are shown)" } }
        }
    };
    if spans.is_empty() {
        return html! {
            (summary)
            p.muted { "No spans yet: a task's span arrives when its attempt ends." }
        };
    }
    let t0 = spans.iter().map(|span| span.start_ns).min().unwrap_or(0);
    let t1 = spans
        .iter()
        .map(|span| span.end_ns)
        .max()
        .unwrap_or(t0)
        .max(t0.saturating_add(1));
    let plot = WIDTH - LABEL - 10.0;
    // Saturating: a span exported with a hostile time (0, u64::MAX) squeezes the others
    // but cannot overflow or divide by zero.
    let range = t1.saturating_sub(t0).max(1);
    let x = |ns: u64| LABEL + ns.saturating_sub(t0) as f64 / range as f64 * plot;
    struct Band<'a> {
        runner: &'a str,
        colour: usize,
        top: f64,
        height: f64,
        bars: Vec<(usize, usize)>,
    }
    let mut bands = Vec::new();
    let mut top = AXIS;
    for (position, runner) in runners.iter().enumerate() {
        let members = &by_runner[runner];
        let intervals: Vec<(u64, u64)> = members
            .iter()
            .map(|&index| (spans[index].start_ns, spans[index].end_ns))
            .collect();
        let (assigned, count) = lanes(&intervals);
        let height = count as f64 * (LANE + LANE_GAP);
        bands.push(Band {
            runner,
            colour: position % PALETTE,
            top,
            height,
            bars: members.iter().copied().zip(assigned).collect(),
        });
        top += height + BAND_GAP;
    }
    let height = top;
    let ticks = ticks(range);
    html! {
        (summary)
        svg.timeline xmlns="http://www.w3.org/2000/svg" role="img"
            viewBox={ "0 0 " (WIDTH) " " (height) } width=(WIDTH) height=(height) {
            title { "Spans of the job's tasks by runner" }
            @for tick in &ticks {
                @let at = LABEL + *tick as f64 / range as f64 * plot;
                line.tick x1=(at) x2=(at) y1=(AXIS - 6.0) y2=(height) {}
                text.tick x=(at) y=(AXIS - 10.0) { (layout::duration((*tick / 1_000_000) as i64)) }
            }
            @for band in &bands {
                g.band data-runner=(band.runner) {
                    rect.band-background x="0" y=(band.top - LANE_GAP / 2.0) width=(WIDTH)
                        height=(band.height) {}
                    text.runner-label x="6" y=(band.top + LANE - 3.0) {
                        (short(&label(band.runner)))
                        title { (band.runner) }
                    }
                    @for (index, lane) in &band.bars {
                        @let span = &spans[*index];
                        @let left = x(span.start_ns);
                        rect class={ "span runner-" (band.colour) @if span.error { " error" } }
                            x=(left) y=(band.top + *lane as f64 * (LANE + LANE_GAP))
                            width=((x(span.end_ns) - left).max(1.0)) height=(LANE)
                            data-runner=(span.runner) data-start-ns=(span.start_ns)
                            data-end-ns=(span.end_ns) data-task=(span.task) {
                            title {
                                (span.name) " · " (label(&span.runner)) " · "
                                (layout::duration((span.end_ns.saturating_sub(span.start_ns) / 1_000_000) as i64))
                                @if let Some(retry) = span.retry_count { " · retry " (retry) }
                                @if span.error { " · failed" }
                            }
                        }
                    }
                }
            }
        }
    }
}

/// A long runner id cut for the label column (the whole id is its tooltip).
fn short(runner: &str) -> String {
    if runner.chars().count() <= 22 {
        runner.to_string()
    } else {
        let head: String = runner.chars().take(20).collect();
        format!("{head}…")
    }
}

/// Tick offsets (nanoseconds from the start) at a round step, about 8 over `span_ns`.
fn ticks(span_ns: u64) -> Vec<u64> {
    let target = (span_ns / 8).max(1);
    let mut step = 1_000_000u64; // 1 ms
    'search: loop {
        for factor in [1, 2, 5] {
            match step.checked_mul(factor) {
                Some(candidate) if candidate >= target => {
                    step = candidate;
                    break 'search;
                }
                Some(_) => {}
                // Only a hostile span's range gets here: one tick at the start.
                None => {
                    step = span_ns.max(1);
                    break 'search;
                }
            }
        }
        step = step.saturating_mul(10);
    }
    (0..=span_ns / step).map(|index| index * step).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overlapping_spans_take_two_lanes_and_sequential_ones_share_one() {
        let (assigned, count) = lanes(&[(0, 10), (5, 15), (10, 20)]);
        assert_eq!(count, 2);
        assert_ne!(assigned[0], assigned[1], "overlapping spans in one lane");
        assert_eq!(
            assigned[0], assigned[2],
            "the lane freed at 10 takes the span at 10"
        );
        let (_, count) = lanes(&[(0, 1), (1, 2), (2, 3)]);
        assert_eq!(count, 1);
        assert_eq!(lanes(&[]).1, 0);
    }

    #[test]
    fn hostile_span_times_neither_overflow_nor_divide_by_zero() {
        let span = |start, end| SpanView {
            name: "t".into(),
            runner: "r".into(),
            task: "t".into(),
            start_ns: start,
            end_ns: end,
            error: false,
            retry_count: Some(0),
            exception: None,
        };
        for spans in [
            vec![span(u64::MAX, u64::MAX)],
            vec![span(0, u64::MAX), span(u64::MAX, 0)],
            vec![span(5, 5), span(5, 5)],
        ] {
            let markup = timeline(&spans, false, &|runner| runner.to_string()).into_string();
            assert!(!markup.contains("NaN"), "{markup}");
            assert!(markup.contains("rect class=\"span"), "{markup}");
        }
    }

    #[test]
    fn the_runner_is_the_instance_else_the_runner_id_without_slot_else_the_host() {
        let pair = |key: &str, value: &str| KeyValue {
            key: key.into(),
            value: Some(AnyValue {
                value: Some(any_value::Value::StringValue(value.into())),
            }),
        };
        let resource = [pair("service.instance.id", "r-1"), pair("host.name", "h")];
        assert_eq!(runner_of(&resource, &[pair("runner.id", "x/0")]), "r-1");
        assert_eq!(runner_of(&[], &[pair("runner.id", "r-2/3")]), "r-2");
        assert_eq!(runner_of(&[pair("host.name", "h")], &[]), "h");
        assert_eq!(runner_of(&[], &[]), "unknown");
    }

    #[test]
    fn the_timeline_counts_runners_and_escapes_names() {
        let span = |runner: &str, start: u64, end: u64| SpanView {
            name: "task/<b>".into(),
            runner: runner.into(),
            task: "t".into(),
            start_ns: start,
            end_ns: end,
            error: false,
            retry_count: Some(0),
            exception: None,
        };
        let markup = timeline(
            &[
                span("a", 0, 1_000_000_000),
                span("a", 500_000_000, 2_000_000_000),
                span("<b>", 0, 10),
            ],
            false,
            &|runner| runner.to_string(),
        )
        .into_string();
        assert!(
            markup.contains("3 spans | 0 errors | 2 runners"),
            "{markup}"
        );
        assert_eq!(markup.matches("<rect class=\"span runner-").count(), 3);
        assert!(!markup.contains("<b>"), "{markup}");
        assert_eq!(
            ticks(2_000_000_000),
            [0, 500_000_000, 1_000_000_000, 1_500_000_000, 2_000_000_000]
        );
    }
}
