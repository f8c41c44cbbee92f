//! Tasks on PostgreSQL: submit, claim, report, fail, hand back, leases, retry, cancel.

use std::time::Duration;

use uuid::Uuid;

use super::Tx;
use crate::server::store::{
    ClaimRequest, ClaimedTask, ComputedReport, FailedReport, NewJob, Report, ReportOutcome, Result,
};

pub(super) fn insert_job(_tx: &mut Tx<'_>, _job: &NewJob, _now: i64) -> Result<()> {
    unimplemented!("tasks on PostgreSQL")
}

pub(super) fn complete_task(
    _tx: &mut Tx<'_>,
    _report: &ComputedReport,
    _now: i64,
) -> Result<ReportOutcome> {
    unimplemented!("tasks on PostgreSQL")
}

pub(super) fn fail_task(
    _tx: &mut Tx<'_>,
    _report: &FailedReport,
    _now: i64,
) -> Result<ReportOutcome> {
    unimplemented!("tasks on PostgreSQL")
}

/// One report of a batch: its own outcome, or its own error (the others stay applied).
pub(super) fn apply_report(
    _tx: &mut Tx<'_>,
    _report: &Report,
    _now: i64,
) -> Result<Result<ReportOutcome>> {
    unimplemented!("tasks on PostgreSQL")
}

pub(super) fn claim_tasks(
    _tx: &mut Tx<'_>,
    _claim: &ClaimRequest,
    _count: usize,
    _now: i64,
) -> Result<Vec<ClaimedTask>> {
    unimplemented!("tasks on PostgreSQL")
}

pub(super) fn extend_leases(
    _tx: &mut Tx<'_>,
    _leases: &[(Uuid, Duration)],
    _claimant: &str,
    _now: i64,
) -> Result<Vec<Option<Duration>>> {
    unimplemented!("tasks on PostgreSQL")
}

pub(super) fn expire_leases(_tx: &mut Tx<'_>, _now: i64) -> Result<usize> {
    unimplemented!("tasks on PostgreSQL")
}

pub(super) fn retry_job(_tx: &mut Tx<'_>, _id: Uuid) -> Result<i64> {
    unimplemented!("tasks on PostgreSQL")
}

pub(super) fn cancel_job(_tx: &mut Tx<'_>, _id: Uuid) -> Result<()> {
    unimplemented!("tasks on PostgreSQL")
}
