//! The batched work protocol (`tilebox.selfhosted.v1.WorkService`) on the scheduler's
//! rules: every report of a call is applied on its own, then up to the runner's free
//! capacity is claimed, all in one store transaction; leases are extended in one
//! transaction too. The official `NextTask` path (`Scheduler::next_task`) shares the rules.

use std::time::Duration;

use uuid::Uuid;

use super::{Error, Result, Scheduler, claim_identifiers, recommended_wait, required_id};
use crate::api::selfhosted_v1::work_report;
use crate::api::selfhosted_v1::{HandedBackTask, WorkRequest};
use crate::api::workflows_v1::{TaskFailedRequest, TaskState};
use crate::server::store::{
    self, ClaimRequest, ClaimedTask, FailedReport, HandedBackReport, Report, ReportOutcome,
};

pub use crate::api::limits::MAX_REPORTS_PER_CALL;
/// Most tasks one call claims, whatever capacity it asks for.
pub const MAX_CLAIM_PER_CALL: usize = 1_000;

/// What became of one report of a batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ItemResult {
    /// The report changed the task, which is now in this state; `note` says why a computed
    /// report failed the task instead (its subtasks were refused).
    Applied {
        state: TaskState,
        note: Option<String>,
    },
    /// The task is no longer the reporter's attempt: nothing changed.
    Stale(TaskState),
    /// The report itself is invalid: nothing changed.
    Refused(String),
}

/// The answer to a `Work` call.
#[derive(Debug)]
pub struct WorkAnswer {
    /// One result per report, in order.
    pub results: Vec<ItemResult>,
    pub tasks: Vec<ClaimedTask>,
    /// Set when nothing was claimed: how long to wait before asking again.
    pub idle: Option<Duration>,
    /// Why the claim part was refused (the reports were applied all the same).
    pub claim_error: Option<String>,
}

/// Whether a `Work` call may wait for work (a long poll): it asks to wait and to claim
/// something. A call that only reports, or does not ask to wait, answers at once.
pub fn may_wait(request: &WorkRequest) -> bool {
    request.wait
        && (request.capacity > 0
            || (request.prefetch > 0 && !request.prefetch_identifiers.is_empty()))
}

impl Scheduler {
    /// Applies the reports of `request`, each on its own, and claims up to its capacity
    /// (waiting up to the long poll for work when it asks to and finds none). A refused claim
    /// (invalid identifiers, an unknown cluster) claims nothing and is answered in
    /// `claim_error`; the reports are applied all the same, so no result is lost to it.
    pub async fn work(
        &self,
        request: WorkRequest,
        claimant: String,
        subtask_clusters: &super::SubtaskClusters,
    ) -> Result<WorkAnswer> {
        if request.reports.len() > MAX_REPORTS_PER_CALL {
            return Err(Error::InvalidRequest(format!(
                "a work call may carry at most {MAX_REPORTS_PER_CALL} reports, got {}",
                request.reports.len()
            )));
        }
        let (claims, claim_error) = match self.work_claims(&request, &claimant).await {
            Ok(claims) => (claims, None),
            Err(error @ (Error::Submission(_) | Error::InvalidRequest(_))) => {
                (Vec::new(), Some(error.to_string()))
            }
            Err(Error::Store(error @ store::Error::ClusterNotFound { .. })) => {
                (Vec::new(), Some(error.to_string()))
            }
            Err(error) => return Err(error),
        };

        // Turn each report into a store report, or a refusal in its place.
        let mut results: Vec<Option<ItemResult>> = Vec::with_capacity(request.reports.len());
        let mut notes: Vec<Option<String>> = Vec::new();
        let mut reports = Vec::new();
        for report in request.reports {
            match self
                .store_report(report.report, &claimant, subtask_clusters)
                .await
            {
                Ok((report, note)) => {
                    results.push(None);
                    notes.push(note);
                    reports.push(report);
                }
                Err(reason) => results.push(Some(ItemResult::Refused(reason))),
            }
        }

        let (outcomes, mut tasks) = self
            .store
            .report_and_claim_batch(reports, claims.clone())
            .await?;
        let mut applied = false;
        let mut outcomes = outcomes.into_iter().zip(notes);
        for slot in results.iter_mut().filter(|slot| slot.is_none()) {
            let Some((outcome, note)) = outcomes.next() else {
                break;
            };
            *slot = Some(match outcome {
                Ok(ReportOutcome::Applied(state)) => {
                    applied = true;
                    ItemResult::Applied { state, note }
                }
                Ok(ReportOutcome::Stale(state)) => ItemResult::Stale(state),
                Err(store::Error::TaskNotFound { id }) => {
                    ItemResult::Refused(format!("task {id} does not exist"))
                }
                Err(error) => ItemResult::Refused(error.to_string()),
            });
        }
        if applied {
            self.announce_work();
        }

        let mut idle = claim_error.as_ref().map(|_| self.options.idle);
        if tasks.is_empty() && !claims.is_empty() {
            if request.wait {
                tasks = self.wait_for_work(&claims).await?;
            }
            if tasks.is_empty() {
                idle = Some(self.options.idle);
            }
        }
        Ok(WorkAnswer {
            results: results
                .into_iter()
                .map(|result| result.unwrap_or_else(|| ItemResult::Refused("not applied".into())))
                .collect(),
            tasks,
            idle,
            claim_error,
        })
    }

    /// Extends the leases of several running tasks of `claimant`; answers, per item, the
    /// granted lease and the recommended wait before the next extension, or `None` for a
    /// task that is not `claimant`'s running attempt (or does not exist).
    pub async fn extend_leases(
        &self,
        leases: Vec<(Uuid, Duration)>,
        claimant: String,
    ) -> Result<Vec<Option<(Duration, Duration)>>> {
        if leases.len() > MAX_CLAIM_PER_CALL {
            return Err(Error::InvalidRequest(format!(
                "at most {MAX_CLAIM_PER_CALL} leases may be extended at once, got {}",
                leases.len()
            )));
        }
        let leases = leases
            .into_iter()
            .map(|(task, requested)| {
                (
                    task,
                    requested.clamp(super::MIN_LEASE, self.options.max_lease),
                )
            })
            .collect();
        let granted = self.store.extend_leases(leases, claimant).await?;
        Ok(granted
            .into_iter()
            .map(|lease| lease.map(|lease| (lease, recommended_wait(lease))))
            .collect())
    }

    /// The claims of a work call, in order: up to `capacity` of any advertised identifier,
    /// then up to `prefetch` of the prefetch identifiers; none when it only reports. Together
    /// they claim at most [`MAX_CLAIM_PER_CALL`] tasks.
    async fn work_claims(
        &self,
        request: &WorkRequest,
        claimant: &str,
    ) -> Result<Vec<(ClaimRequest, usize)>> {
        let capacity = (request.capacity as usize).min(MAX_CLAIM_PER_CALL);
        let prefetch = (request.prefetch as usize).min(MAX_CLAIM_PER_CALL - capacity);
        if capacity == 0 && prefetch == 0 {
            return Ok(Vec::new());
        }
        let identifiers = claim_identifiers("identifiers", &request.identifiers)?;
        let prefetch_identifiers =
            claim_identifiers("prefetch_identifiers", &request.prefetch_identifiers)?;
        let cluster = Self::cluster_slug(&request.cluster_slug);
        // An unknown cluster is the runner's misconfiguration: say so.
        self.store.get_cluster(&cluster).await?;
        let claim = |identifiers| ClaimRequest {
            cluster: cluster.clone(),
            identifiers,
            claimant: claimant.to_string(),
            lease: self.options.lease,
        };
        let mut claims = Vec::new();
        if capacity > 0 {
            claims.push((claim(identifiers), capacity));
        }
        if prefetch > 0 && !prefetch_identifiers.is_empty() {
            claims.push((claim(prefetch_identifiers), prefetch));
        }
        Ok(claims)
    }

    /// A wire report as a store report (with the note of a computed report that fails its
    /// task), or why it is refused.
    async fn store_report(
        &self,
        report: Option<work_report::Report>,
        claimant: &str,
        subtask_clusters: &super::SubtaskClusters,
    ) -> std::result::Result<(Report, Option<String>), String> {
        match report {
            Some(work_report::Report::Computed(computed)) => {
                match self
                    .computed_report(computed, claimant, subtask_clusters)
                    .await
                {
                    Ok(Report::Failed(failed)) => {
                        let note = failed.display.lines().last().map(str::to_string);
                        Ok((Report::Failed(failed), note))
                    }
                    Ok(report) => Ok((report, None)),
                    Err(error) => Err(error.to_string()),
                }
            }
            Some(work_report::Report::Failed(failed)) => failed_report(failed, claimant)
                .map(|report| (report, None))
                .map_err(|error| error.to_string()),
            Some(work_report::Report::HandedBack(handed_back)) => {
                handed_back_report(handed_back, claimant)
                    .map(|report| (report, None))
                    .map_err(|error| error.to_string())
            }
            None => {
                Err("the report is empty: neither computed, failed nor handed back".to_string())
            }
        }
    }

    /// Claims again whenever work is announced, until something is claimed or the long
    /// poll ends.
    async fn wait_for_work(&self, claims: &[(ClaimRequest, usize)]) -> Result<Vec<ClaimedTask>> {
        let deadline = tokio::time::Instant::now() + self.options.long_poll;
        loop {
            let notified = self.signals.work().notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let (_, tasks) = self
                .store
                .report_and_claim_batch(Vec::new(), claims.to_vec())
                .await?;
            if !tasks.is_empty() {
                return Ok(tasks);
            }
            tokio::select! {
                _ = &mut notified => continue,
                _ = tokio::time::sleep_until(deadline) => return Ok(Vec::new()),
            }
        }
    }
}

/// A `TaskFailedRequest` as a store report.
fn failed_report(request: TaskFailedRequest, claimant: &str) -> Result<Report> {
    Ok(Report::Failed(FailedReport {
        task_id: required_id(request.task_id.as_ref(), "failed.task_id")?,
        claimant: claimant.to_string(),
        display: super::capped_failure_display(request.display),
        workflow_error: request.was_workflow_error,
        progress: super::progress_of(&request.progress_updates),
    }))
}

/// A `HandedBackTask` as a store report.
fn handed_back_report(request: HandedBackTask, claimant: &str) -> Result<Report> {
    Ok(Report::HandedBack(HandedBackReport {
        task_id: required_id(request.task_id.as_ref(), "handed_back.task_id")?,
        claimant: claimant.to_string(),
        display: super::capped_failure_display(request.display),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::workflows_v1::TaskIdentifier;

    #[test]
    fn only_a_call_that_asks_to_wait_and_to_claim_may_wait() {
        let claim = WorkRequest {
            wait: true,
            capacity: 1,
            ..WorkRequest::default()
        };
        assert!(may_wait(&claim));
        assert!(!may_wait(&WorkRequest {
            wait: false,
            ..claim.clone()
        }));
        // Report only: nothing to claim, nothing to wait for.
        let report_only = WorkRequest {
            wait: true,
            ..WorkRequest::default()
        };
        assert!(!may_wait(&report_only));
        // Prefetch claims only with identifiers to prefetch.
        assert!(!may_wait(&WorkRequest {
            prefetch: 4,
            ..report_only.clone()
        }));
        assert!(may_wait(&WorkRequest {
            prefetch: 4,
            prefetch_identifiers: vec![TaskIdentifier {
                name: "Short".into(),
                version: "v1.0".into(),
            }],
            ..report_only
        }));
    }
}
