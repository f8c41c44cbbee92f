//! Workflows, artifacts, releases, deployments and telemetry on PostgreSQL.

use uuid::Uuid;

use super::Tx;
use crate::server::store::{
    Artifact, Page, Release, Result, TelemetryKind, TelemetryRecord, Workflow,
};

pub(super) fn create_workflow(
    _tx: &mut Tx<'_>,
    _workflow: &Workflow,
    _now: i64,
) -> Result<Workflow> {
    unimplemented!("releases on PostgreSQL")
}

pub(super) fn get_workflow(_tx: &mut Tx<'_>, _slug: &str) -> Result<Workflow> {
    unimplemented!("releases on PostgreSQL")
}

pub(super) fn list_workflows(_tx: &mut Tx<'_>) -> Result<Vec<Workflow>> {
    unimplemented!("releases on PostgreSQL")
}

pub(super) fn update_workflow(
    _tx: &mut Tx<'_>,
    _slug: &str,
    _name: &Option<String>,
    _summary: &Option<String>,
    _description: &Option<String>,
) -> Result<Workflow> {
    unimplemented!("releases on PostgreSQL")
}

pub(super) fn delete_workflow(_tx: &mut Tx<'_>, _slug: &str) -> Result<()> {
    unimplemented!("releases on PostgreSQL")
}

pub(super) fn register_artifact(
    _tx: &mut Tx<'_>,
    _digest: &str,
    _size: u64,
    _now: i64,
) -> Result<Artifact> {
    unimplemented!("releases on PostgreSQL")
}

pub(super) fn get_artifact(
    _tx: &mut Tx<'_>,
    _digest: Option<&str>,
    _id: Option<Uuid>,
) -> Result<Artifact> {
    unimplemented!("releases on PostgreSQL")
}

pub(super) fn publish_release(
    _tx: &mut Tx<'_>,
    _workflow: &str,
    _artifact: Uuid,
    _fingerprint: &str,
    _content: &[u8],
    _now: i64,
) -> Result<Release> {
    unimplemented!("releases on PostgreSQL")
}

pub(super) fn list_releases(_tx: &mut Tx<'_>, _workflow: &str) -> Result<Vec<Release>> {
    unimplemented!("releases on PostgreSQL")
}

pub(super) fn get_release(_tx: &mut Tx<'_>, _workflow: &str, _id: Uuid) -> Result<Release> {
    unimplemented!("releases on PostgreSQL")
}

pub(super) fn unpublish_release(_tx: &mut Tx<'_>, _workflow: &str, _id: Uuid) -> Result<()> {
    unimplemented!("releases on PostgreSQL")
}

pub(super) fn deploy_release(
    _tx: &mut Tx<'_>,
    _workflow: &str,
    _id: Uuid,
    _clusters: &[String],
    _now: i64,
) -> Result<Release> {
    unimplemented!("releases on PostgreSQL")
}

pub(super) fn undeploy_release(
    _tx: &mut Tx<'_>,
    _workflow: &str,
    _id: Uuid,
    _clusters: &[String],
) -> Result<Release> {
    unimplemented!("releases on PostgreSQL")
}

pub(super) fn cluster_deployments(_tx: &mut Tx<'_>, _cluster: &str) -> Result<Vec<Release>> {
    unimplemented!("releases on PostgreSQL")
}

pub(super) fn insert_telemetry(
    _tx: &mut Tx<'_>,
    _kind: TelemetryKind,
    _records: &[TelemetryRecord],
    _now: i64,
) -> Result<()> {
    unimplemented!("releases on PostgreSQL")
}

pub(super) fn query_telemetry(
    _tx: &mut Tx<'_>,
    _kind: TelemetryKind,
    _trace_id: &[u8],
    _task_id: Option<&str>,
    _severities: &[(i32, i32)],
    _page: Page,
) -> Result<Vec<(Uuid, Vec<u8>)>> {
    unimplemented!("releases on PostgreSQL")
}

pub(super) fn delete_telemetry_before(_tx: &mut Tx<'_>, _before: i64) -> Result<usize> {
    unimplemented!("releases on PostgreSQL")
}
