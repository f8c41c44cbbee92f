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
//!   the task meanwhile.

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
use crate::api::selfhosted_v1::report_result::Outcome;
use crate::api::selfhosted_v1::{WorkReport, WorkRequest, WorkResponse};
use crate::api::workflows_v1::{Task, TaskIdentifier};
use crate::client::{CallError, RunnerClient};

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
        let mut pending: Vec<(Uuid, WorkReport)> = Vec::new();
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
                running == 0 && pending.is_empty() && claim_call.is_none() && report_call.is_none();
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
                if capacity > 0 || queue > 0 || !pending.is_empty() {
                    let reports = std::mem::take(&mut pending);
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
                && !pending.is_empty()
            {
                let reports = std::mem::take(&mut pending);
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
                        match &finished.runner_failure {
                            Some(failure) => {
                                let (period, failures) =
                                    backoffs.failed(finished.identifier.clone(), Instant::now());
                                let (name, version) = &finished.identifier;
                                tracing::warn!(
                                    %name, %version, failure = %failure, failures, period = ?period,
                                    "backing off from a task identifier this runner could not run; its tasks are left to other runners meanwhile, and this runner serves other jobs"
                                );
                            }
                            None => backoffs.ran(&finished.identifier),
                        }
                        prefetch.observe(finished.identifier, finished.elapsed);
                        pending.push((finished.task, finished.report));
                        next = self.finished.try_recv().ok();
                    }
                }
                outcome = join(claim_call.as_mut().map(|(handle, _)| handle)) => {
                    claim_call = None;
                    let asked = outcome.capacity > 0;
                    let only_queued = !asked && outcome.queue > 0;
                    let waited = outcome.waited;
                    let elapsed = outcome.elapsed;
                    match self.settle(outcome, &mut pending, &mut refusals) {
                        Some(answer) if !answer.claim_error.is_empty() => {
                            // The claim was refused (the results were delivered all the
                            // same): ask again after a pause, as the catalog may change.
                            self.assign(answer.tasks, &mut outstanding);
                            idle_until = Some(Instant::now() + Duration::from_secs(1));
                        }
                        Some(answer) => {
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
                        None => idle_until = Some(Instant::now() + Duration::from_secs(1)),
                    }
                }
                outcome = join(report_call.as_mut()) => {
                    report_call = None;
                    if self.settle(outcome, &mut pending, &mut refusals).is_none() {
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
    /// answers the response, or `None` when the call failed (its reports are kept for the
    /// next call, unless they were refused too often).
    fn settle(
        &self,
        outcome: CallOutcome,
        pending: &mut Vec<(Uuid, WorkReport)>,
        refusals: &mut u32,
    ) -> Option<WorkResponse> {
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
                Some(answer)
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
                    let mut reports = outcome.reports;
                    reports.append(pending);
                    *pending = reports;
                }
                None
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
}
