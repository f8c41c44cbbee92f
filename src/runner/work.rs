//! The dispatcher: the runner's one conversation with the server's batched work protocol.
//!
//! It keeps every slot supplied and every result reported with as few round trips as the
//! work allows:
//! - one `Work` call at a time carries every report that finished since the last call and
//!   claims up to the free capacity; while it is in flight, new reports wait for the next;
//! - when that call is a long poll (nothing was ready to claim), reports that finish
//!   meanwhile go out at once in a report-only call, so dependants are not held up;
//! - an idle slot asks for one task of any identifier; beyond that, slots queue up to
//!   `PREFETCH_TARGET` worth of tasks (at most `MAX_PREFETCH`), but only of identifiers seen
//!   to take under `PREFETCH_BELOW` on average, so a long task never waits in a runner's
//!   queue, claimed but not started, while another runner is idle;
//! - a task's lease is held from its claim until its report is acknowledged;
//! - when this runner could not run a task (a failure that is not the task's own: its
//!   release's host is gone or will not start), it stops advertising that task's identifier
//!   for a while ([`Backoffs`]), so it keeps serving other jobs and a healthy runner may take
//!   the task meanwhile;
//! - reports go out in batches ([`Outbox`]) of at most `MAX_REPORTS_PER_CALL` and
//!   [`REPORT_BYTES_PER_CALL`] encoded bytes (a larger report alone); a batch the server
//!   refuses as too large is sent again in batches of half its size, and only a report
//!   refused as too large on its own is given up.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::catalog::Catalog;
use super::leases::LeasesHandle;
use super::slot::Finished;
use super::{Phase, Shared};
use crate::api::convert::{std_duration, uuid_of};
use crate::api::limits::MAX_REPORTS_PER_CALL;
use crate::api::selfhosted_v1::report_result::Outcome;
use crate::api::selfhosted_v1::{WorkReport, WorkRequest, WorkResponse, work_report};
use crate::api::workflows_v1::{Task, TaskIdentifier};
use crate::client::{CallError, RunnerClient};

/// The host this runner says it runs on (presence: `tilebox runner list`).
static HOSTNAME: std::sync::LazyLock<String> = std::sync::LazyLock::new(super::telemetry::hostname);

/// How long one slot's queue of claimed tasks should take to run, at most.
const PREFETCH_TARGET: Duration = Duration::from_millis(10);
/// Tasks of an identifier are prefetched only when they take less than this on average.
const PREFETCH_BELOW: Duration = Duration::from_millis(1);
/// The most tasks one slot holds (running and queued).
const MAX_PREFETCH: usize = 64;
/// An empty answer to a waiting call that took at least this long came from a server that
/// long-polls: ask again at once.
const LONG_POLL_SEEN: Duration = Duration::from_millis(200);
/// How often reports refused as a whole are sent again before they are given up (their
/// tasks then run again after their leases end).
const MAX_REFUSALS: u32 = 5;

/// The most encoded report bytes one `Work` call carries; a single larger report goes alone.
/// Well under the server's default `--max-message-bytes` (256 MiB) and the client's own
/// 512 MiB, so one large result never takes the reports of other tasks down with it; a
/// server configured lower answers OUT_OF_RANGE, and the [`Outbox`] learns its size.
pub const REPORT_BYTES_PER_CALL: usize = 4 * 1024 * 1024;

/// The first pause from an identifier after this runner could not run a task of it.
pub const FAILURE_BACKOFF_FIRST: Duration = Duration::from_secs(1);
/// The longest pause from an identifier (the default of `--failure-backoff-max-seconds`).
pub const FAILURE_BACKOFF_MAX: Duration = Duration::from_secs(60);

/// What a `Work` call ended with.
struct CallOutcome {
    reports: Vec<(Uuid, WorkReport)>,
    /// Tasks it asked for: of any identifier, and of short ones for the queues.
    capacity: usize,
    queue: usize,
    waited: bool,
    elapsed: Duration,
    answer: Result<WorkResponse, CallError>,
}

/// Reports waiting to be sent, in the order their tasks finished, and the size of the
/// batches they go out in.
struct Outbox {
    pending: Vec<(Uuid, WorkReport)>,
    max_reports: usize,
    /// Starts at [`REPORT_BYTES_PER_CALL`]; halved below each batch the server refused as
    /// too large.
    max_bytes: usize,
}

impl Outbox {
    fn new(max_reports: usize, max_bytes: usize) -> Self {
        Self {
            pending: Vec::new(),
            max_reports: max_reports.max(1),
            max_bytes: max_bytes.max(1),
        }
    }

    fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }

    fn push(&mut self, task: Uuid, report: WorkReport) {
        self.pending.push((task, report));
    }

    /// The reports of the next call, oldest first: as many as fit in `max_reports` and
    /// `max_bytes`, at least one (a report larger than `max_bytes` goes alone).
    fn next_batch(&mut self) -> Vec<(Uuid, WorkReport)> {
        let mut bytes = 0usize;
        let mut count = 0usize;
        for (_, report) in &self.pending {
            let size = report_bytes(report);
            if count == self.max_reports || (count > 0 && bytes + size > self.max_bytes) {
                break;
            }
            bytes += size;
            count += 1;
        }
        self.pending.drain(..count).collect()
    }

    /// Puts the reports of a call that failed back first in line.
    fn requeue(&mut self, mut reports: Vec<(Uuid, WorkReport)>) {
        reports.append(&mut self.pending);
        self.pending = reports;
    }

    /// The server refused `reports` (more than one) as too large: they go again first in
    /// line, in batches of at most half their size from now on.
    fn split(&mut self, reports: Vec<(Uuid, WorkReport)>) {
        let bytes = batch_bytes(&reports);
        self.max_bytes = self.max_bytes.min(bytes / 2).max(1);
        self.requeue(reports);
    }
}

/// What one report adds to an encoded `WorkRequest` (its field tag, length and bytes).
fn report_bytes(report: &WorkReport) -> usize {
    let len = prost::Message::encoded_len(report);
    1 + prost::length_delimiter_len(len) + len
}

fn batch_bytes(reports: &[(Uuid, WorkReport)]) -> usize {
    reports.iter().map(|(_, report)| report_bytes(report)).sum()
}

/// Whether the server (or the client's own limit) refused a call for the size of its
/// message: tonic answers OUT_OF_RANGE ("decoded message length too large").
fn too_large(error: &CallError) -> bool {
    match error {
        CallError::Refused { status, .. } => {
            status.code() == tonic::Code::OutOfRange || status.message().contains("too large")
        }
        CallError::Cancelled { .. } => false,
    }
}

/// What became of a finished call.
enum Settled {
    Answered(WorkResponse),
    /// Refused as too large: its reports are queued in smaller batches (or the one report
    /// was given up); send again at once.
    Resend,
    /// Failed otherwise: pause before the next call.
    Failed,
}

/// Which identifiers are short enough to queue, and how deep, from a moving average of each
/// identifier's task durations.
#[derive(Default)]
struct Prefetch {
    averages: HashMap<(String, String), Duration>,
}

impl Prefetch {
    /// The advertised identifiers seen to take under [`PREFETCH_BELOW`] on average.
    fn short(&self, identifiers: &[(String, String)]) -> Vec<(String, String)> {
        identifiers
            .iter()
            .filter(|identifier| {
                self.averages
                    .get(*identifier)
                    .is_some_and(|average| *average < PREFETCH_BELOW)
            })
            .cloned()
            .collect()
    }

    /// How many tasks of `short` identifiers a slot may hold: what the slowest allows.
    fn depth(&self, short: &[(String, String)]) -> usize {
        short
            .iter()
            .filter_map(|identifier| self.averages.get(identifier))
            .map(|average| {
                let nanos = average.as_nanos().max(1);
                ((PREFETCH_TARGET.as_nanos() / nanos) as usize).clamp(1, MAX_PREFETCH)
            })
            .min()
            .unwrap_or(1)
    }

    fn observe(&mut self, identifier: (String, String), elapsed: Duration) {
        let average = self.averages.entry(identifier).or_insert(elapsed);
        // An exponential moving average weighting the newest task by 1/8.
        *average = (*average * 7 + elapsed) / 8;
    }
}

/// The identifiers this runner stays away from because it could not run their tasks: after
/// the `n`th such failure in a row, for `first * 2^(n-1)`, at most `max`; a run that reached
/// the task's own code (computed, or failed with the task's own error) starts again from
/// `first`. Deterministic, without jitter (unlike `client::Backoff`): it paces one runner's
/// claims of one identifier, not a fleet's reconnects, and the schedule is testable.
#[derive(Debug)]
pub struct Backoffs {
    first: Duration,
    max: Duration,
    entries: HashMap<(String, String), Backoff>,
}

#[derive(Debug, Clone, Copy)]
struct Backoff {
    /// Runner failures in a row.
    failures: u32,
    until: Instant,
}

impl Backoffs {
    pub fn new(first: Duration, max: Duration) -> Self {
        Self {
            first: first.min(max),
            max,
            entries: HashMap::new(),
        }
    }

    /// The pause after `failures` runner failures in a row.
    pub fn period(&self, failures: u32) -> Duration {
        let doublings = failures.saturating_sub(1).min(31);
        self.first.saturating_mul(1u32 << doublings).min(self.max)
    }

    /// Records that this runner could not run a task of `identifier` at `now`; answers the
    /// pause from it and how many failures in a row that makes.
    pub fn failed(&mut self, identifier: (String, String), now: Instant) -> (Duration, u32) {
        let failures = self
            .entries
            .get(&identifier)
            .map_or(1, |backoff| backoff.failures.saturating_add(1));
        let period = self.period(failures);
        self.entries.insert(
            identifier,
            Backoff {
                failures,
                until: now + period,
            },
        );
        (period, failures)
    }

    /// Records that a task of `identifier` ran (its own code decided how it ended).
    pub fn ran(&mut self, identifier: &(String, String)) {
        self.entries.remove(identifier);
    }

    /// Records how a finished task ended for its identifier's pause: a runner failure starts
    /// or lengthens one (answered, to be logged), a run of the task's own code ends it, and a
    /// task handed back unrun says nothing either way.
    pub fn observe(
        &mut self,
        identifier: &(String, String),
        report: &WorkReport,
        runner_failure: Option<&str>,
        now: Instant,
    ) -> Option<(Duration, u32)> {
        match runner_failure {
            Some(_) => Some(self.failed(identifier.clone(), now)),
            None if matches!(report.report, Some(work_report::Report::HandedBack(_))) => None,
            None => {
                self.ran(identifier);
                None
            }
        }
    }

    /// `identifiers` without those this runner stays away from at `now`.
    pub fn allowed(
        &self,
        identifiers: Vec<(String, String)>,
        now: Instant,
    ) -> Vec<(String, String)> {
        identifiers
            .into_iter()
            .filter(|identifier| {
                self.entries
                    .get(identifier)
                    .is_none_or(|backoff| backoff.until <= now)
            })
            .collect()
    }

    /// When the next pause still running at `now` ends.
    pub fn next_end(&self, now: Instant) -> Option<Instant> {
        self.entries
            .values()
            .map(|backoff| backoff.until)
            .filter(|until| *until > now)
            .min()
    }
}

pub struct Dispatcher {
    pub shared: Arc<Shared>,
    pub client: RunnerClient,
    pub leases: LeasesHandle,
    /// One sender per slot.
    pub slots: Vec<mpsc::UnboundedSender<Task>>,
    pub finished: mpsc::UnboundedReceiver<Finished>,
    pub catalog: watch::Receiver<Arc<Catalog>>,
    pub phase: watch::Receiver<Phase>,
    /// Fires on the second interrupt: calls in flight give up.
    pub stop: CancellationToken,
}

impl Dispatcher {
    /// Runs until the runner drains (or, with `stop_when_idling`, until there is no work),
    /// with every result reported.
    pub async fn run(mut self) {
        let mut outstanding = vec![0usize; self.slots.len()];
        let mut prefetch = Prefetch::default();
        let mut backoffs = Backoffs::new(
            FAILURE_BACKOFF_FIRST,
            self.shared.options.failure_backoff_max,
        );
        let mut outbox = Outbox::new(MAX_REPORTS_PER_CALL, REPORT_BYTES_PER_CALL);
        let mut claim_call: Option<(JoinHandle<CallOutcome>, bool)> = None;
        let mut report_call: Option<JoinHandle<CallOutcome>> = None;
        let mut idle_until: Option<Instant> = None;
        let mut refusals = 0u32;
        let mut idle_seen = false;
        // A call that only filled queues found nothing: ask again once a slot frees up.
        let mut prefetch_exhausted = false;
        loop {
            let draining = *self.phase.borrow() != Phase::Running;
            let running: usize = outstanding.iter().sum();
            let quiet =
                running == 0 && outbox.is_empty() && claim_call.is_none() && report_call.is_none();
            if quiet && (draining || (idle_seen && self.shared.options.stop_when_idling)) {
                return;
            }
            let now = Instant::now();
            if idle_until.is_some_and(|until| until <= now) {
                idle_until = None;
            }
            if claim_call.is_none() && idle_until.is_none() {
                let advertised = self.catalog.borrow().identifiers();
                let backing_off = advertised.len();
                let identifiers = backoffs.allowed(advertised, now);
                let backing_off = backing_off - identifiers.len();
                let short = prefetch.short(&identifiers);
                let depth = prefetch.depth(&short);
                let (capacity, queue) = if draining || identifiers.is_empty() {
                    (0, 0)
                } else {
                    let idle = outstanding.iter().filter(|held| **held == 0).count();
                    let free: usize = outstanding
                        .iter()
                        .map(|held| depth.saturating_sub(*held))
                        .sum();
                    let queue = if short.is_empty() || prefetch_exhausted {
                        0
                    } else {
                        free.saturating_sub(idle)
                    };
                    (idle, queue)
                };
                if capacity > 0 || queue > 0 || !outbox.is_empty() {
                    let reports = outbox.next_batch();
                    // Only an idle slot waits for work; a call that only fills queues answers
                    // at once.
                    let wait = capacity > 0 && reports.is_empty();
                    claim_call = Some((
                        self.call(reports, (capacity, queue), wait, &identifiers, &short),
                        wait,
                    ));
                } else if identifiers.is_empty()
                    && backing_off == 0
                    && !draining
                    && running == 0
                    && self.shared.options.stop_when_idling
                {
                    idle_seen = true;
                }
            } else if claim_call.as_ref().is_some_and(|(_, waiting)| *waiting)
                && report_call.is_none()
                && !outbox.is_empty()
            {
                let reports = outbox.next_batch();
                report_call = Some(self.call(reports, (0, 0), false, &[], &[]));
            }

            let backoff_end = backoffs.next_end(now);
            tokio::select! {
                finished = self.finished.recv() => {
                    let Some(finished) = finished else { return };
                    let mut next = Some(finished);
                    prefetch_exhausted = false;
                    while let Some(finished) = next.take() {
                        outstanding[finished.slot] = outstanding[finished.slot].saturating_sub(1);
                        let failure = finished.runner_failure.as_deref();
                        if let Some((period, failures)) = backoffs.observe(
                            &finished.identifier,
                            &finished.report,
                            failure,
                            Instant::now(),
                        ) {
                            let (name, version) = &finished.identifier;
                            tracing::warn!(
                                %name, %version, failure = failure.unwrap_or_default(), failures, period = ?period,
                                "backing off from a task identifier this runner could not run; its tasks are left to other runners meanwhile, and this runner serves other jobs"
                            );
                        }
                        prefetch.observe(finished.identifier, finished.elapsed);
                        outbox.push(finished.task, finished.report);
                        next = self.finished.try_recv().ok();
                    }
                }
                outcome = join(claim_call.as_mut().map(|(handle, _)| handle)) => {
                    claim_call = None;
                    let asked = outcome.capacity > 0;
                    let only_queued = !asked && outcome.queue > 0;
                    let waited = outcome.waited;
                    let elapsed = outcome.elapsed;
                    match self.settle(outcome, &mut outbox, &mut refusals) {
                        Settled::Answered(answer) if !answer.claim_error.is_empty() => {
                            // The claim was refused (the results were delivered all the
                            // same): ask again after a pause, as the catalog may change.
                            self.assign(answer.tasks, &mut outstanding);
                            idle_until = Some(Instant::now() + Duration::from_secs(1));
                        }
                        Settled::Answered(answer) => {
                            let claimed = answer.tasks.len();
                            prefetch_exhausted = only_queued && claimed == 0;
                            self.assign(answer.tasks, &mut outstanding);
                            if asked && claimed == 0 {
                                // Not idle while tasks this runner backs off from may wait.
                                idle_seen =
                                    waited && backoffs.next_end(Instant::now()).is_none();
                                // A server that held the waiting call open already waited for
                                // work: ask again at once. One that answered at once gets
                                // its suggested pause.
                                if !waited || elapsed < LONG_POLL_SEEN {
                                    let pause = answer
                                        .suggested_idling
                                        .as_ref()
                                        .map(std_duration)
                                        .unwrap_or(Duration::from_secs(1))
                                        .clamp(Duration::from_millis(1), Duration::from_secs(5));
                                    if waited {
                                        idle_until = Some(Instant::now() + pause);
                                    }
                                }
                            } else if claimed > 0 {
                                idle_seen = false;
                            }
                        }
                        Settled::Resend => {}
                        Settled::Failed => {
                            idle_until = Some(Instant::now() + Duration::from_secs(1));
                        }
                    }
                }
                outcome = join(report_call.as_mut()) => {
                    report_call = None;
                    if matches!(self.settle(outcome, &mut outbox, &mut refusals), Settled::Failed) {
                        idle_until = Some(Instant::now() + Duration::from_secs(1));
                    }
                }
                _ = sleep_until(idle_until) => {}
                // A pause ended: advertise the identifier again.
                _ = sleep_until(backoff_end) => {}
                _ = self.catalog.changed() => {
                    idle_until = None;
                    prefetch_exhausted = false;
                }
                _ = self.phase.changed() => idle_until = None,
            }
        }
    }

    /// Starts a `Work` call in its own task: `reports`, then `capacity` tasks of any of
    /// `identifiers` and `queue` more of `short` ones.
    fn call(
        &self,
        reports: Vec<(Uuid, WorkReport)>,
        (capacity, queue): (usize, usize),
        wait: bool,
        identifiers: &[(String, String)],
        short: &[(String, String)],
    ) -> JoinHandle<CallOutcome> {
        let wire = |identifiers: &[(String, String)]| {
            identifiers
                .iter()
                .map(|(name, version)| TaskIdentifier {
                    name: name.clone(),
                    version: version.clone(),
                })
                .collect()
        };
        let request = WorkRequest {
            reports: reports.iter().map(|(_, report)| report.clone()).collect(),
            capacity: capacity.min(u32::MAX as usize) as u32,
            cluster_slug: self.shared.cluster.clone(),
            identifiers: wire(identifiers),
            wait,
            prefetch: queue.min(u32::MAX as usize) as u32,
            prefetch_identifiers: wire(short),
            slots: self.slots.len().min(u32::MAX as usize) as u32,
            hostname: HOSTNAME.clone(),
            version: env!("CARGO_PKG_VERSION").to_string(),
            stopping: false,
        };
        let client = self.client.clone();
        let stop = self.stop.clone();
        tokio::spawn(async move {
            let started = Instant::now();
            let answer = client.work(request, &stop).await;
            CallOutcome {
                reports,
                capacity,
                queue,
                waited: wait,
                elapsed: started.elapsed(),
                answer,
            }
        })
    }

    /// Releases the leases of acknowledged reports and logs what the server made of them;
    /// answers the response, or how the call failed: its reports are kept for the next call
    /// (in smaller batches when they were refused as too large), unless they were refused too
    /// often, or one report was refused as too large on its own.
    fn settle(&self, outcome: CallOutcome, outbox: &mut Outbox, refusals: &mut u32) -> Settled {
        match outcome.answer {
            Ok(answer) => {
                *refusals = 0;
                for ((task, _), result) in outcome.reports.iter().zip(&answer.results) {
                    self.leases.release(*task);
                    match Outcome::try_from(result.outcome).unwrap_or(Outcome::Unspecified) {
                        Outcome::Applied => {}
                        Outcome::Stale => {
                            tracing::warn!(%task, "the server ignored a result: {}", result.message)
                        }
                        Outcome::Refused | Outcome::Unspecified => {
                            tracing::error!(%task, "the server refused a result: {}", result.message)
                        }
                    }
                }
                if !answer.claim_error.is_empty() {
                    tracing::error!(
                        delivered = outcome.reports.len(),
                        "the server refused to hand out tasks: {}",
                        answer.claim_error
                    );
                }
                Settled::Answered(answer)
            }
            Err(error) if too_large(&error) && outcome.reports.len() > 1 => {
                let bytes = batch_bytes(&outcome.reports);
                tracing::warn!(
                    error = %error, reports = outcome.reports.len(), bytes,
                    "the server refused a batch of reports as too large; sending them again in batches of half the size"
                );
                outbox.split(outcome.reports);
                Settled::Resend
            }
            Err(error) if too_large(&error) && !outcome.reports.is_empty() => {
                for (task, report) in &outcome.reports {
                    tracing::error!(
                        %task, bytes = report_bytes(report), error = %error,
                        "the server refused a task's report as too large on its own; giving it up: the task runs again after its lease ends"
                    );
                    self.leases.release(*task);
                }
                Settled::Resend
            }
            Err(error) => {
                *refusals += 1;
                if *refusals >= MAX_REFUSALS || matches!(error, CallError::Cancelled { .. }) {
                    tracing::error!(error = %error, count = outcome.reports.len(), "giving up reporting these results; their tasks will run again after their leases end");
                    for (task, _) in &outcome.reports {
                        self.leases.release(*task);
                    }
                } else {
                    tracing::error!(error = %error, "the server refused a work call; retrying");
                    outbox.requeue(outcome.reports);
                }
                Settled::Failed
            }
        }
    }

    /// Holds the claimed tasks' leases and hands each to the slot with the fewest tasks.
    fn assign(&self, tasks: Vec<Task>, outstanding: &mut [usize]) {
        for task in tasks {
            let task_id = uuid_of(task.id.as_ref())
                .ok()
                .flatten()
                .unwrap_or_else(Uuid::nil);
            let lease = task.lease.unwrap_or_default();
            self.leases.hold(
                task_id,
                lease
                    .lease
                    .as_ref()
                    .map(std_duration)
                    .unwrap_or(Duration::from_secs(30)),
                lease
                    .recommended_wait_until_next_extension
                    .as_ref()
                    .map(std_duration)
                    .unwrap_or(Duration::from_secs(5)),
                task.display.as_deref().unwrap_or_default(),
            );
            let Some((slot, _)) = outstanding
                .iter()
                .enumerate()
                .min_by_key(|(_, held)| **held)
            else {
                return;
            };
            outstanding[slot] += 1;
            if self.slots[slot].send(task).is_err() {
                outstanding[slot] -= 1;
            }
        }
    }
}

/// The outcome of the call in flight; pending forever when there is none.
async fn join(call: Option<&mut JoinHandle<CallOutcome>>) -> CallOutcome {
    let Some(handle) = call else {
        return std::future::pending().await;
    };
    match handle.await {
        Ok(outcome) => outcome,
        // The call's task panicked: nothing is known of its reports; keep none (their
        // leases end and the tasks run again).
        Err(_) => CallOutcome {
            reports: Vec::new(),
            capacity: 0,
            queue: 0,
            waited: false,
            elapsed: Duration::ZERO,
            answer: Err(CallError::Cancelled { operation: "Work" }),
        },
    }
}

async fn sleep_until(until: Option<Instant>) {
    match until {
        Some(until) => tokio::time::sleep_until(until).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn identifier(name: &str) -> (String, String) {
        (name.to_string(), "v1.0".to_string())
    }

    #[test]
    fn pauses_double_from_the_first_to_the_most_and_a_run_starts_again() {
        let mut backoffs = Backoffs::new(Duration::from_secs(1), Duration::from_secs(60));
        let now = Instant::now();
        let periods: Vec<u64> = (0..9)
            .map(|_| backoffs.failed(identifier("X"), now).0.as_secs())
            .collect();
        assert_eq!(periods, [1, 2, 4, 8, 16, 32, 60, 60, 60]);
        assert_eq!(backoffs.period(u32::MAX), Duration::from_secs(60));
        // Failures of another identifier keep their own count.
        assert_eq!(
            backoffs.failed(identifier("Y"), now),
            (Duration::from_secs(1), 1)
        );
        backoffs.ran(&identifier("X"));
        assert_eq!(
            backoffs.failed(identifier("X"), now),
            (Duration::from_secs(1), 1)
        );
        // A first pause longer than the most is cut to it.
        let short = Backoffs::new(Duration::from_secs(1), Duration::from_millis(300));
        assert_eq!(short.period(1), Duration::from_millis(300));
    }

    #[test]
    fn a_hand_back_neither_starts_nor_ends_a_pause() {
        use crate::api::selfhosted_v1::HandedBackTask;
        let report = |report| WorkReport {
            report: Some(report),
        };
        let handed_back = report(work_report::Report::HandedBack(HandedBackTask::default()));
        let computed = report(work_report::Report::Computed(Default::default()));
        let mut backoffs = Backoffs::new(Duration::from_secs(1), Duration::from_secs(60));
        let now = Instant::now();
        let x = identifier("X");
        assert_eq!(
            backoffs.observe(&x, &handed_back, Some("RunnerError('host gone')"), now),
            Some((Duration::from_secs(1), 1)),
            "a runner failure starts a pause, whatever the report"
        );
        assert_eq!(backoffs.observe(&x, &handed_back, None, now), None);
        assert_eq!(
            backoffs.allowed(vec![x.clone()], now),
            Vec::<(String, String)>::new(),
            "the pause goes on after a hand-back"
        );
        assert_eq!(
            backoffs.observe(&x, &handed_back, Some("again"), now),
            Some((Duration::from_secs(2), 2)),
            "and the count of failures in a row too"
        );
        assert_eq!(backoffs.observe(&x, &computed, None, now), None);
        assert_eq!(backoffs.allowed(vec![x.clone()], now), vec![x]);
    }

    #[test]
    fn claims_leave_out_an_identifier_while_backing_off_from_it() {
        let mut backoffs = Backoffs::new(Duration::from_secs(1), Duration::from_secs(60));
        let now = Instant::now();
        let advertised = vec![identifier("A"), identifier("X"), identifier("Z")];
        assert_eq!(backoffs.allowed(advertised.clone(), now), advertised);
        assert_eq!(backoffs.next_end(now), None);

        backoffs.failed(identifier("X"), now);
        assert_eq!(
            backoffs.allowed(advertised.clone(), now),
            [identifier("A"), identifier("Z")]
        );
        let end = now + Duration::from_secs(1);
        assert_eq!(backoffs.next_end(now), Some(end));
        // Still away just before the pause ends; advertised again once it did.
        assert_eq!(
            backoffs
                .allowed(advertised.clone(), end - Duration::from_millis(1))
                .len(),
            2
        );
        assert_eq!(backoffs.allowed(advertised.clone(), end), advertised);
        assert_eq!(backoffs.next_end(end), None);

        // The next failure in a row keeps it away twice as long.
        backoffs.failed(identifier("X"), end);
        assert_eq!(backoffs.next_end(end), Some(end + Duration::from_secs(2)));
        assert!(
            !backoffs
                .allowed(advertised, end + Duration::from_secs(1))
                .contains(&identifier("X"))
        );
    }

    /// A report of about `bytes` encoded bytes.
    fn report(bytes: usize) -> (Uuid, WorkReport) {
        use crate::api::selfhosted_v1::work_report::Report;
        use crate::api::workflows_v1::ComputedTask;
        let report = WorkReport {
            report: Some(Report::Computed(ComputedTask {
                display: "x".repeat(bytes),
                ..ComputedTask::default()
            })),
        };
        (Uuid::new_v4(), report)
    }

    fn tasks(batch: &[(Uuid, WorkReport)]) -> Vec<Uuid> {
        batch.iter().map(|(task, _)| *task).collect()
    }

    #[test]
    fn batches_hold_at_most_the_reports_one_call_may_carry() {
        let mut outbox = Outbox::new(MAX_REPORTS_PER_CALL, REPORT_BYTES_PER_CALL);
        let reports: Vec<_> = (0..MAX_REPORTS_PER_CALL + 1).map(|_| report(1)).collect();
        for (task, report) in reports.clone() {
            outbox.push(task, report);
        }
        let first = outbox.next_batch();
        assert_eq!(first.len(), MAX_REPORTS_PER_CALL);
        assert_eq!(tasks(&first), tasks(&reports[..MAX_REPORTS_PER_CALL]));
        assert_eq!(
            tasks(&outbox.next_batch()),
            tasks(&reports[MAX_REPORTS_PER_CALL..])
        );
        assert!(outbox.is_empty());
        assert!(outbox.next_batch().is_empty());
    }

    #[test]
    fn batches_stay_within_the_byte_budget_and_a_larger_report_goes_alone() {
        let mut outbox = Outbox::new(MAX_REPORTS_PER_CALL, 100_000);
        let reports = vec![
            report(40_000),
            report(40_000),
            report(40_000),
            report(250_000),
            report(10),
            report(10),
        ];
        for (task, report) in reports.clone() {
            outbox.push(task, report);
        }
        let batches: Vec<Vec<Uuid>> = std::iter::from_fn(|| {
            let batch = outbox.next_batch();
            (!batch.is_empty()).then(|| tasks(&batch))
        })
        .collect();
        let ids = tasks(&reports);
        assert_eq!(
            batches,
            vec![
                ids[0..2].to_vec(),
                ids[2..3].to_vec(),
                ids[3..4].to_vec(),
                ids[4..6].to_vec()
            ]
        );
        // The budget counts what the reports add to the encoded request.
        let request = WorkRequest {
            reports: reports[..2]
                .iter()
                .map(|(_, report)| report.clone())
                .collect(),
            ..WorkRequest::default()
        };
        assert_eq!(
            prost::Message::encoded_len(&request),
            batch_bytes(&reports[..2])
        );
    }

    #[test]
    fn a_batch_refused_as_too_large_goes_again_first_in_halves_until_one_report_is_alone() {
        let mut outbox = Outbox::new(MAX_REPORTS_PER_CALL, REPORT_BYTES_PER_CALL);
        let reports: Vec<_> = (0..4).map(|_| report(40_000)).collect();
        for (task, report) in reports.clone() {
            outbox.push(task, report);
        }
        let all = outbox.next_batch();
        assert_eq!(all.len(), 4);
        // One more finished meanwhile: it waits behind the refused ones.
        let late = report(10);
        outbox.push(late.0, late.1.clone());
        outbox.split(all);
        let ids = tasks(&reports);
        let half = outbox.next_batch();
        assert_eq!(tasks(&half), ids[0..2]);
        outbox.split(half);
        let single = outbox.next_batch();
        assert_eq!(tasks(&single), ids[0..1]);
        assert_eq!(tasks(&outbox.next_batch()), ids[1..2]);
        // The smaller budget holds for later batches too.
        assert_eq!(tasks(&outbox.next_batch()), ids[2..3]);
        assert_eq!(tasks(&outbox.next_batch()), ids[3..4]);
        assert_eq!(tasks(&outbox.next_batch()), vec![late.0]);
        assert!(outbox.is_empty());
    }

    #[test]
    fn only_a_refusal_for_size_splits_a_batch() {
        let refused = |status: tonic::Status| CallError::Refused {
            operation: "Work",
            status,
        };
        assert!(too_large(&refused(tonic::Status::out_of_range(
            "Error, decoded message length too large: found 200000 bytes, the limit is: 65536 bytes"
        ))));
        assert!(too_large(&refused(tonic::Status::internal(
            "message too large"
        ))));
        assert!(!too_large(&refused(tonic::Status::invalid_argument(
            "a work call may carry at most 10000 reports, got 10001"
        ))));
        assert!(!too_large(&CallError::Cancelled { operation: "Work" }));
    }
}
