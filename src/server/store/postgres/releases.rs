//! Workflows, artifacts, releases, deployments and telemetry on PostgreSQL; the same rules
//! as SQLite's (`../sqlite/releases.rs`), in PostgreSQL's SQL.

use postgres::Row;
use uuid::Uuid;

use super::{Tx, pg};
use crate::server::store::{
    Artifact, Error, Page, Release, Result, TelemetryKind, TelemetryRecord, Workflow,
};

/// Telemetry rows one retention statement deletes at most: retention runs as many short
/// transactions, never one long one holding back vacuum.
pub(super) const TELEMETRY_DELETE_BATCH: i64 = 10_000;

fn row_to_workflow(row: &Row) -> Workflow {
    Workflow {
        slug: row.get(0),
        name: row.get(1),
        summary: row.get(2),
        description: row.get(3),
    }
}

pub(super) fn get_workflow(tx: &mut Tx<'_>, slug: &str) -> Result<Workflow> {
    tx.query_opt(
        "SELECT slug, name, summary, description FROM workflows WHERE slug = $1",
        &[&slug],
    )
    .map_err(pg("get workflow"))?
    .map(|row| row_to_workflow(&row))
    .ok_or_else(|| Error::WorkflowNotFound {
        slug: slug.to_string(),
    })
}

pub(super) fn create_workflow(tx: &mut Tx<'_>, workflow: &Workflow, now: i64) -> Result<Workflow> {
    let inserted = tx
        .execute(
            "INSERT INTO workflows (slug, name, summary, description, created_at)
             VALUES ($1, $2, $3, $4, $5) ON CONFLICT (slug) DO NOTHING",
            &[
                &workflow.slug,
                &workflow.name,
                &workflow.summary,
                &workflow.description,
                &now,
            ],
        )
        .map_err(pg("create workflow"))?;
    if inserted == 0 {
        return Err(Error::WorkflowExists {
            slug: workflow.slug.clone(),
        });
    }
    Ok(workflow.clone())
}

pub(super) fn list_workflows(tx: &mut Tx<'_>) -> Result<Vec<Workflow>> {
    let rows = tx
        .query(
            "SELECT slug, name, summary, description FROM workflows ORDER BY created_at, slug",
            &[],
        )
        .map_err(pg("list workflows"))?;
    Ok(rows.iter().map(row_to_workflow).collect())
}

pub(super) fn update_workflow(
    tx: &mut Tx<'_>,
    slug: &str,
    name: &Option<String>,
    summary: &Option<String>,
    description: &Option<String>,
) -> Result<Workflow> {
    let mut workflow = get_workflow(tx, slug)?;
    if let Some(name) = name {
        workflow.name = name.clone();
    }
    if let Some(summary) = summary {
        workflow.summary = summary.clone();
    }
    if let Some(description) = description {
        workflow.description = description.clone();
    }
    tx.execute(
        "UPDATE workflows SET name = $2, summary = $3, description = $4 WHERE slug = $1",
        &[
            &slug,
            &workflow.name,
            &workflow.summary,
            &workflow.description,
        ],
    )
    .map_err(pg("update workflow"))?;
    Ok(workflow)
}

fn deployed_clusters(tx: &mut Tx<'_>, release: i64) -> Result<Vec<String>> {
    let rows = tx
        .query(
            "SELECT cluster FROM deployments WHERE release = $1 ORDER BY cluster",
            &[&release],
        )
        .map_err(pg("deployed clusters"))?;
    Ok(rows.iter().map(|row| row.get(0)).collect())
}

pub(super) fn delete_workflow(tx: &mut Tx<'_>, slug: &str) -> Result<()> {
    // Locked, so a deployment of it racing on another replica waits for the outcome.
    tx.query_opt(
        "SELECT slug FROM workflows WHERE slug = $1 FOR UPDATE",
        &[&slug],
    )
    .map_err(pg("delete workflow"))?
    .ok_or_else(|| Error::WorkflowNotFound {
        slug: slug.to_string(),
    })?;
    // Its releases locked before their deployments are read: a deployment racing on
    // another replica has then committed (and is seen) or waits (and finds no release).
    tx.query(
        "SELECT release FROM releases WHERE workflow = $1 FOR UPDATE",
        &[&slug],
    )
    .map_err(pg("delete workflow"))?;
    let deployed: Vec<String> = tx
        .query(
            "SELECT cluster FROM deployments WHERE workflow = $1 ORDER BY cluster",
            &[&slug],
        )
        .map_err(pg("delete workflow"))?
        .iter()
        .map(|row| row.get(0))
        .collect();
    if !deployed.is_empty() {
        return Err(Error::Conflict(format!(
            "workflow `{slug}` is deployed to {}; undeploy it first",
            deployed.join(", ")
        )));
    }
    tx.execute("DELETE FROM releases WHERE workflow = $1", &[&slug])
        .map_err(pg("delete workflow"))?;
    tx.execute("DELETE FROM workflows WHERE slug = $1", &[&slug])
        .map_err(pg("delete workflow"))?;
    Ok(())
}

fn row_to_artifact(row: &Row, first: usize) -> Artifact {
    Artifact {
        digest: row.get(first),
        id: row.get(first + 1),
        size: row.get::<_, i64>(first + 2).max(0) as u64,
    }
}

pub(super) fn register_artifact(
    tx: &mut Tx<'_>,
    digest: &str,
    size: u64,
    now: i64,
) -> Result<Artifact> {
    let size = i64::try_from(size).map_err(|_| {
        Error::Conflict(format!(
            "artifact {digest} announces {size} bytes, more than the store can record"
        ))
    })?;
    tx.execute(
        "INSERT INTO artifacts (digest, uuid, size, created_at) VALUES ($1, $2, $3, $4)
         ON CONFLICT (digest) DO NOTHING",
        &[&digest, &Uuid::now_v7(), &size, &now],
    )
    .map_err(pg("register artifact"))?;
    get_artifact(tx, Some(digest), None)
}

pub(super) fn get_artifact(
    tx: &mut Tx<'_>,
    digest: Option<&str>,
    id: Option<Uuid>,
) -> Result<Artifact> {
    let row = match (digest, id) {
        (Some(digest), _) => tx.query_opt(
            "SELECT digest, uuid, size FROM artifacts WHERE digest = $1",
            &[&digest],
        ),
        (None, Some(id)) => tx.query_opt(
            "SELECT digest, uuid, size FROM artifacts WHERE uuid = $1",
            &[&id],
        ),
        (None, None) => return Err(Error::ArtifactNotFound("(no digest or id given)".into())),
    }
    .map_err(pg("get artifact"))?;
    let name = digest
        .map(str::to_string)
        .or(id.map(|id| id.to_string()))
        .unwrap_or_default();
    row.map(|row| row_to_artifact(&row, 0))
        .ok_or(Error::ArtifactNotFound(name))
}

const RELEASE_SELECT: &str = "SELECT r.release, r.uuid, r.workflow, r.fingerprint, r.content, r.created_at, a.digest, a.uuid, a.size
     FROM releases r JOIN artifacts a ON a.digest = r.artifact";

fn releases_from(tx: &mut Tx<'_>, rows: Vec<Row>) -> Result<Vec<Release>> {
    rows.iter()
        .map(|row| {
            Ok(Release {
                id: row.get(1),
                workflow: row.get(2),
                fingerprint: row.get(3),
                content: row.get(4),
                created_at: row.get(5),
                artifact: row_to_artifact(row, 6),
                clusters: deployed_clusters(tx, row.get(0))?,
            })
        })
        .collect()
}

/// How a read of a release row locks it until the transaction ends.
#[derive(Clone, Copy)]
enum Lock {
    None,
    /// Deploying: an unpublish of the release waits for the deployment, then sees it.
    Share,
    /// Unpublishing: a deployment of the release waits, then finds it gone.
    Update,
}

/// A release of `workflow` and its key.
fn find_release(tx: &mut Tx<'_>, workflow: &str, id: Uuid, lock: Lock) -> Result<(i64, Release)> {
    let not_found = || Error::ReleaseNotFound {
        workflow: workflow.to_string(),
        id,
    };
    let lock = match lock {
        Lock::None => "",
        Lock::Share => " FOR SHARE OF r",
        Lock::Update => " FOR UPDATE OF r",
    };
    let row = tx
        .query_opt(
            &format!("{RELEASE_SELECT} WHERE r.uuid = $1 AND r.workflow = $2{lock}"),
            &[&id, &workflow],
        )
        .map_err(pg("get release"))?
        .ok_or_else(not_found)?;
    let key: i64 = row.get(0);
    let release = releases_from(tx, vec![row])?.pop().ok_or_else(not_found)?;
    Ok((key, release))
}

pub(super) fn get_release(tx: &mut Tx<'_>, workflow: &str, id: Uuid) -> Result<Release> {
    Ok(find_release(tx, workflow, id, Lock::None)?.1)
}

pub(super) fn list_releases(tx: &mut Tx<'_>, workflow: &str) -> Result<Vec<Release>> {
    get_workflow(tx, workflow)?;
    let rows = tx
        .query(
            &format!("{RELEASE_SELECT} WHERE r.workflow = $1 ORDER BY r.release DESC"),
            &[&workflow],
        )
        .map_err(pg("list releases"))?;
    releases_from(tx, rows)
}

pub(super) fn publish_release(
    tx: &mut Tx<'_>,
    workflow: &str,
    artifact: Uuid,
    fingerprint: &str,
    content: &[u8],
    now: i64,
) -> Result<Release> {
    // Shared lock: a concurrent delete of the workflow waits for the release to be in.
    tx.query_opt(
        "SELECT slug FROM workflows WHERE slug = $1 FOR SHARE",
        &[&workflow],
    )
    .map_err(pg("publish release"))?
    .ok_or_else(|| Error::WorkflowNotFound {
        slug: workflow.to_string(),
    })?;
    let artifact = get_artifact(tx, None, Some(artifact))?;
    // Two replicas publishing the same release at once: one inserts, the other finds it.
    tx.execute(
        "INSERT INTO releases (uuid, workflow, artifact, fingerprint, content, created_at)
         VALUES ($1, $2, $3, $4, $5, $6)
         ON CONFLICT (workflow, artifact, fingerprint) DO NOTHING",
        &[
            &Uuid::now_v7(),
            &workflow,
            &artifact.digest,
            &fingerprint,
            &content,
            &now,
        ],
    )
    .map_err(pg("publish release"))?;
    let id: Uuid = tx
        .query_one(
            "SELECT uuid FROM releases WHERE workflow = $1 AND artifact = $2 AND fingerprint = $3",
            &[&workflow, &artifact.digest, &fingerprint],
        )
        .map_err(pg("publish release"))?
        .get(0);
    get_release(tx, workflow, id)
}

pub(super) fn unpublish_release(tx: &mut Tx<'_>, workflow: &str, id: Uuid) -> Result<()> {
    // Locked first, so its deployments are read after any deployment racing on another
    // replica committed (each statement reads afresh at READ COMMITTED).
    let (key, release) = find_release(tx, workflow, id, Lock::Update)?;
    if !release.clusters.is_empty() {
        return Err(Error::Conflict(format!(
            "release {id} is deployed to {}; undeploy it first",
            release.clusters.join(", ")
        )));
    }
    tx.execute("DELETE FROM releases WHERE release = $1", &[&key])
        .map_err(pg("unpublish release"))?;
    Ok(())
}

/// Checks the clusters exist; `lock` keeps them until the transaction ends, so a deletion
/// of one (which takes its deployments along) waits for a deployment to it.
fn check_clusters(tx: &mut Tx<'_>, clusters: &[String], lock: bool) -> Result<()> {
    for cluster in clusters {
        if !lock {
            super::get_cluster(tx, cluster)?;
            continue;
        }
        tx.query_opt(
            "SELECT slug FROM clusters WHERE slug = $1 FOR SHARE",
            &[cluster],
        )
        .map_err(pg("deploy release"))?
        .ok_or_else(|| Error::ClusterNotFound {
            slug: cluster.clone(),
        })?;
    }
    Ok(())
}

pub(super) fn deploy_release(
    tx: &mut Tx<'_>,
    workflow: &str,
    id: Uuid,
    clusters: &[String],
    now: i64,
) -> Result<Release> {
    // The release locked (shared), so an unpublish or a workflow deletion racing on another
    // replica (both lock it for update before they read its deployments) waits for the
    // deployment and then refuses, or went first and the release is not found.
    let (key, _) = find_release(tx, workflow, id, Lock::Share)?;
    check_clusters(tx, clusters, true)?;
    for cluster in clusters {
        tx.execute(
            "INSERT INTO deployments (cluster, workflow, release, deployed_at) VALUES ($1, $2, $3, $4)
             ON CONFLICT (cluster, workflow) DO UPDATE SET release = excluded.release, deployed_at = excluded.deployed_at",
            &[cluster, &workflow, &key, &now],
        )
        .map_err(pg("deploy release"))?;
    }
    get_release(tx, workflow, id)
}

pub(super) fn undeploy_release(
    tx: &mut Tx<'_>,
    workflow: &str,
    id: Uuid,
    clusters: &[String],
) -> Result<Release> {
    let (key, _) = find_release(tx, workflow, id, Lock::None)?;
    check_clusters(tx, clusters, false)?;
    for cluster in clusters {
        tx.execute(
            "DELETE FROM deployments WHERE cluster = $1 AND workflow = $2 AND release = $3",
            &[cluster, &workflow, &key],
        )
        .map_err(pg("undeploy release"))?;
    }
    get_release(tx, workflow, id)
}

pub(super) fn cluster_deployments(tx: &mut Tx<'_>, cluster: &str) -> Result<Vec<Release>> {
    super::get_cluster(tx, cluster)?;
    let rows = tx
        .query(
            &format!(
                "{RELEASE_SELECT} WHERE r.release IN (SELECT release FROM deployments WHERE cluster = $1)
                 ORDER BY r.workflow"
            ),
            &[&cluster],
        )
        .map_err(pg("cluster deployments"))?;
    releases_from(tx, rows)
}

/// Inserts records; one already stored (the same id, e.g. an exporter's retry through
/// another replica) is left as it is.
pub(super) fn insert_telemetry(
    tx: &mut Tx<'_>,
    kind: TelemetryKind,
    records: &[TelemetryRecord],
    now: i64,
) -> Result<()> {
    if records.is_empty() {
        return Ok(());
    }
    // One statement for the whole export, in its order (identities follow it).
    let ids: Vec<Uuid> = records.iter().map(|record| record.id).collect();
    let traces: Vec<&[u8]> = records
        .iter()
        .map(|record| record.trace_id.as_slice())
        .collect();
    let tasks: Vec<Option<&str>> = records
        .iter()
        .map(|record| record.task_id.as_deref())
        .collect();
    let severities: Vec<i64> = records
        .iter()
        .map(|record| i64::from(record.severity))
        .collect();
    let times: Vec<i64> = records.iter().map(|record| record.time_unix_nano).collect();
    let encoded: Vec<&[u8]> = records
        .iter()
        .map(|record| record.encoded.as_slice())
        .collect();
    tx.execute(
        "INSERT INTO telemetry (uuid, kind, trace_id, task_id, severity, time_unix_nano, received_at, encoded)
         SELECT id, $2, trace, task, severity, time, $7, encoded
         FROM unnest($1::uuid[], $3::bytea[], $4::text[], $5::bigint[], $6::bigint[], $8::bytea[])
              WITH ORDINALITY AS r(id, trace, task, severity, time, encoded, position)
         ORDER BY position
         ON CONFLICT (uuid) DO NOTHING",
        &[
            &ids,
            &(kind as i64),
            &traces,
            &tasks,
            &severities,
            &times,
            &now,
            &encoded,
        ],
    )
    .map_err(pg("insert telemetry"))?;
    Ok(())
}

/// A page of telemetry records, (id, encoded) pairs, and the newest transaction (an xid8,
/// as text) holding further records back, if any.
pub(super) type TelemetryPage = (Vec<(Uuid, Vec<u8>)>, Option<String>);

/// Severity counts of a trace's first `limit` records (what is committed: a count needs no
/// settling, the next one includes what commits later).
pub(super) fn count_telemetry_by_severity(
    tx: &mut Tx<'_>,
    kind: TelemetryKind,
    trace_id: &[u8],
    limit: usize,
) -> Result<Vec<(i32, u64)>> {
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    let rows = tx
        .query(
            "SELECT severity, COUNT(*) FROM (
                 SELECT severity FROM telemetry WHERE kind = $1 AND trace_id = $2
                 ORDER BY record LIMIT $3
             ) AS first GROUP BY severity ORDER BY severity",
            &[&(kind as i64), &trace_id, &limit],
        )
        .map_err(pg("count telemetry"))?;
    Ok(rows
        .iter()
        .map(|row| {
            (
                i32::try_from(row.get::<_, i64>(0)).unwrap_or(0),
                u64::try_from(row.get::<_, i64>(1)).unwrap_or(0),
            )
        })
        .collect())
}

/// Records of a trace, and for an ascending read whether records are held back: inserted by
/// transactions that some snapshot may still see as running.
///
/// Several replicas insert at once, so records commit out of identity order: one with a
/// smaller `record` may commit after a reader already paged past it. Ascending reads (what a
/// follower pages with) therefore return only records whose inserting transaction is older
/// than the snapshot's xmin, ordered by `(xid, record)`, and resolve the cursor to its
/// `(xid, record)` position: every record committed later has a larger xid than the cutoff,
/// so it comes after the cursor. Descending reads (the newest records) take no cutoff.
pub(super) fn query_telemetry(
    tx: &mut Tx<'_>,
    kind: TelemetryKind,
    trace_id: &[u8],
    task_id: Option<&str>,
    severities: &[(i32, i32)],
    page: Page,
) -> Result<TelemetryPage> {
    let kind = kind as i64;
    let limit = i64::try_from(page.limit).unwrap_or(i64::MAX);
    let lows: Vec<i64> = severities.iter().map(|(low, _)| i64::from(*low)).collect();
    let highs: Vec<i64> = severities
        .iter()
        .map(|(_, high)| i64::from(*high))
        .collect();
    let task_id = task_id.map(str::to_string);
    // $1 kind, $2 trace, $3 task (NULL: any), $4/$5 severity ranges (empty: any).
    let filters = "kind = $1 AND trace_id = $2
         AND ($3::text IS NULL OR task_id = $3)
         AND (cardinality($4::bigint[]) = 0 OR EXISTS (
              SELECT 1 FROM unnest($4::bigint[], $5::bigint[]) AS s(low, high)
              WHERE severity BETWEEN s.low AND s.high))";
    if page.descending {
        let after = match page.after {
            Some(after) => tx
                .query_opt("SELECT record FROM telemetry WHERE uuid = $1", &[&after])
                .map_err(pg("query telemetry"))?
                .map(|row| row.get::<_, i64>(0)),
            None => None,
        };
        let rows = tx
            .query(
                &format!(
                    "SELECT uuid, encoded FROM telemetry WHERE {filters}
                     AND ($6::bigint IS NULL OR record < $6)
                     ORDER BY record DESC LIMIT $7"
                ),
                &[&kind, &trace_id, &task_id, &lows, &highs, &after, &limit],
            )
            .map_err(pg("query telemetry"))?;
        return Ok((
            rows.iter().map(|row| (row.get(0), row.get(1))).collect(),
            None,
        ));
    }
    // The cursor's position; an unknown (e.g. expired) cursor reads from the start, as on
    // SQLite.
    let (after_xid, after_record) = match page.after {
        Some(after) => tx
            .query_opt(
                "SELECT xid::text, record FROM telemetry WHERE uuid = $1",
                &[&after],
            )
            .map_err(pg("query telemetry"))?
            .map(|row| (Some(row.get::<_, String>(0)), Some(row.get::<_, i64>(1))))
            .unwrap_or((None, None)),
        None => (None, None),
    };
    let rows = tx
        .query(
            &format!(
                "SELECT uuid, encoded FROM telemetry WHERE {filters}
                 AND xid < pg_snapshot_xmin(pg_current_snapshot())
                 AND ($6::text IS NULL OR (xid, record) > ($6::text::xid8, $7::bigint))
                 ORDER BY xid, record LIMIT $8"
            ),
            &[
                &kind,
                &trace_id,
                &task_id,
                &lows,
                &highs,
                &after_xid,
                &after_record,
                &limit,
            ],
        )
        .map_err(pg("query telemetry"))?;
    let records = rows.iter().map(|row| (row.get(0), row.get(1))).collect();
    // The newest transaction holding records of this read back, if any: the caller may wait
    // for it to settle (it usually commits within milliseconds) before answering.
    let held_back: Option<String> = if rows.len() < page.limit {
        tx.query_one(
            &format!(
                "SELECT max(xid)::text FROM telemetry WHERE {filters}
                 AND xid >= pg_snapshot_xmin(pg_current_snapshot())"
            ),
            &[&kind, &trace_id, &task_id, &lows, &highs],
        )
        .map_err(pg("query telemetry"))?
        .get(0)
    } else {
        None
    };
    Ok((records, held_back))
}

/// Whether every transaction up to `xid` has finished, as a new snapshot sees it.
pub(super) fn settled(tx: &mut Tx<'_>, xid: &str) -> Result<bool> {
    tx.query_one(
        "SELECT $1::text::xid8 < pg_snapshot_xmin(pg_current_snapshot())",
        &[&xid],
    )
    .map(|row| row.get(0))
    .map_err(pg("query telemetry"))
}

/// Deletes up to [`TELEMETRY_DELETE_BATCH`] records received before `before`; rows another
/// replica's retention is deleting are skipped, not waited for.
pub(super) fn delete_telemetry_batch(tx: &mut Tx<'_>, before: i64) -> Result<usize> {
    tx.execute(
        "DELETE FROM telemetry WHERE record IN (
             SELECT record FROM telemetry WHERE received_at < $1
             LIMIT $2 FOR UPDATE SKIP LOCKED)",
        &[&before, &TELEMETRY_DELETE_BATCH],
    )
    .map(|count| count as usize)
    .map_err(pg("delete telemetry"))
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, mpsc};

    use super::super::test_cluster::{TestCluster, TestDatabase};
    use super::super::{Options, PgStore};
    use crate::server::store::{Page, Store, TelemetryKind, TelemetryRecord};

    const TRACE: [u8; 16] = [0x7e; 16];

    fn record(encoded: &[u8]) -> TelemetryRecord {
        TelemetryRecord {
            id: uuid::Uuid::now_v7(),
            trace_id: TRACE.to_vec(),
            task_id: None,
            severity: 9,
            time_unix_nano: 1,
            encoded: encoded.to_vec(),
        }
    }

    async fn follow(store: &PgStore, after: Option<&TelemetryRecord>) -> Vec<Vec<u8>> {
        let page = Page {
            after: after.map(|record| record.id),
            limit: 100,
            descending: false,
        };
        read(store, page).await
    }

    async fn read(store: &PgStore, page: Page) -> Vec<Vec<u8>> {
        store
            .query_telemetry(TelemetryKind::Log, TRACE.to_vec(), None, vec![], page)
            .await
            .expect("query telemetry")
            .into_iter()
            .map(|(_, encoded)| encoded)
            .collect()
    }

    /// A session of its own holding a transaction open: what another replica's writer is
    /// while its batch has not committed yet.
    struct OpenTransaction {
        commit: mpsc::Sender<()>,
        done: std::thread::JoinHandle<()>,
    }

    impl OpenTransaction {
        /// Inserts `record` in a transaction left open until [`commit`](Self::commit).
        fn insert(url: &str, record: &TelemetryRecord) -> Self {
            let (url, record) = (url.to_string(), record.clone());
            let (inserted, wait_inserted) = mpsc::channel();
            let (commit, wait_commit) = mpsc::channel::<()>();
            let done = std::thread::spawn(move || {
                let mut client = postgres::Client::connect(&url, postgres::NoTls).expect("connect");
                let mut transaction = client.transaction().expect("begin");
                transaction
                    .execute(
                        "INSERT INTO telemetry (uuid, kind, trace_id, task_id, severity, time_unix_nano, received_at, encoded)
                         VALUES ($1, 0, $2, NULL, 9, 1, 0, $3)",
                        &[&record.id, &record.trace_id, &record.encoded],
                    )
                    .expect("insert in the open transaction");
                inserted.send(()).expect("the test waits");
                wait_commit.recv().expect("the test commits");
                transaction.commit().expect("commit");
            });
            wait_inserted.recv().expect("the insert ran");
            Self { commit, done }
        }

        fn commit(self) {
            self.commit.send(()).expect("the session waits");
            self.done.join().expect("the session committed");
        }
    }

    /// Records commit out of identity order across replicas; a follower paging ascending
    /// gets each exactly once, in an order every later page continues.
    #[tokio::test]
    async fn a_follower_gets_records_committed_out_of_order_once_each() {
        // A cluster of its own: the transaction this test holds open would hold back the
        // followers of every other test on a shared one.
        let database =
            tokio::task::spawn_blocking(|| TestDatabase::create_on(Arc::new(TestCluster::start())))
                .await
                .expect("create a database");
        let writer = PgStore::connect(&database.url, Options::default())
            .await
            .expect("connect the writing replica");
        let follower = PgStore::connect(&database.url, Options::default())
            .await
            .expect("connect the following replica");

        let first = record(b"first");
        writer
            .insert_telemetry(TelemetryKind::Log, vec![first.clone()])
            .await
            .expect("insert");
        assert_eq!(follow(&follower, None).await, [b"first".to_vec()]);

        // `late` takes its identity first but commits last; `early` commits in between.
        let late = record(b"late");
        let open = {
            let url = database.url.clone();
            let late = late.clone();
            tokio::task::spawn_blocking(move || OpenTransaction::insert(&url, &late))
                .await
                .expect("open a transaction")
        };
        let early = record(b"early");
        writer
            .insert_telemetry(TelemetryKind::Log, vec![early.clone()])
            .await
            .expect("insert");

        assert_eq!(
            follow(&follower, Some(&first)).await,
            Vec::<Vec<u8>>::new(),
            "`early` is held back while a transaction older than it runs, and `late` is unseen"
        );
        assert_eq!(
            follow(&follower, None).await,
            [b"first".to_vec()],
            "from the start too"
        );
        let newest = Page {
            after: None,
            limit: 100,
            descending: true,
        };
        assert_eq!(
            read(&follower, newest).await,
            [b"early".to_vec(), b"first".to_vec()],
            "a descending read (the newest records) takes no cutoff"
        );

        tokio::task::spawn_blocking(move || open.commit())
            .await
            .expect("commit");
        assert_eq!(
            follow(&follower, Some(&first)).await,
            [b"late".to_vec(), b"early".to_vec()],
            "after the cursor the follower had: both, each once, in commit-safe order"
        );
        assert_eq!(follow(&follower, Some(&early)).await, Vec::<Vec<u8>>::new());
        assert_eq!(
            follow(&follower, Some(&late)).await,
            [b"early".to_vec()],
            "a cursor resolves to its (xid, record) position"
        );
        assert_eq!(
            follow(&follower, None).await,
            [b"first".to_vec(), b"late".to_vec(), b"early".to_vec()]
        );
        assert!(
            late.id < early.id,
            "the ids are in the order opposite to commit"
        );
        drop((writer, follower));
    }

    /// Retention deletes in batches of `TELEMETRY_DELETE_BATCH`, and two replicas running it
    /// at once delete every old record once between them, keeping the new ones.
    #[tokio::test]
    async fn two_replicas_expire_telemetry_together_in_batches() {
        let (one, database) = super::super::tests::open().await;
        let other = PgStore::connect(&database.url, Options::default())
            .await
            .expect("connect the second replica");
        let old = 2 * super::TELEMETRY_DELETE_BATCH + 5_000;
        let url = database.url.clone();
        tokio::task::spawn_blocking(move || {
            TestCluster::psql(
                &url,
                &format!(
                    "INSERT INTO telemetry (uuid, kind, trace_id, severity, time_unix_nano, received_at, encoded)
                     SELECT gen_random_uuid(), 0, '\\x00', 9, n, 1000, '\\x00' FROM generate_series(1, {old}) AS n;
                     INSERT INTO telemetry (uuid, kind, trace_id, severity, time_unix_nano, received_at, encoded)
                     SELECT gen_random_uuid(), 0, '\\x00', 9, n, 3000, '\\x00' FROM generate_series(1, 7) AS n"
                ),
            )
        })
        .await
        .expect("insert old records");
        let (a, b) = tokio::join!(
            one.delete_telemetry_before(2000),
            other.delete_telemetry_before(2000)
        );
        let (a, b) = (a.expect("delete"), b.expect("delete"));
        assert_eq!(
            (a + b) as i64,
            old,
            "every old record deleted once: {a} + {b}"
        );
        let url = database.url.clone();
        let left = tokio::task::spawn_blocking(move || {
            TestCluster::psql(&url, "SELECT count(*) FROM telemetry")
        })
        .await
        .expect("count");
        assert_eq!(left.trim(), "7", "the new records are kept");
        assert_eq!(one.delete_telemetry_before(2000).await.expect("delete"), 0);
    }
}

#[cfg(test)]
mod races {
    use std::time::{Duration, Instant};

    use super::super::test_cluster::TestCluster;
    use super::super::tests::open;
    use super::super::{Options, PgStore};
    use crate::server::store::{Cluster, Error, Store, Workflow};

    /// Sessions of this database waiting for a lock.
    fn waiting(url: &str) -> usize {
        TestCluster::psql(
            url,
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'",
        )
        .parse()
        .expect("a count")
    }

    async fn wait_for_waiters(url: &str, count: usize) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let url = url.to_string();
            let found = tokio::task::spawn_blocking(move || waiting(&url))
                .await
                .expect("count waiters");
            if found >= count {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{count} sessions never waited for a lock ({found} did)"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// A deployment on one replica and an unpublish (or a workflow deletion) of the same
    /// release on another, at once: the one that waited sees the other's outcome, and no
    /// deployment is left naming a release that is gone.
    #[tokio::test]
    async fn a_deployment_racing_an_unpublish_or_a_deletion_leaves_no_dangling_deployment() {
        let (one, database) = open().await;
        let other = PgStore::connect(&database.url, Options::default())
            .await
            .expect("connect the second replica");
        one.create_cluster(Cluster {
            slug: "gpu".into(),
            name: "GPU".into(),
            description: String::new(),
            deletable: true,
        })
        .await
        .expect("create cluster");
        one.create_workflow(Workflow {
            slug: "ingest".into(),
            name: "Ingest".into(),
            summary: String::new(),
            description: String::new(),
        })
        .await
        .expect("create workflow");
        let artifact = one
            .register_artifact("a".repeat(64), 1)
            .await
            .expect("register artifact");
        let release = one
            .publish_release("ingest", artifact.id, "f".into(), vec![])
            .await
            .expect("publish");

        for deletion in ["unpublish", "delete the workflow"] {
            // Holding the cluster row stops the deployment after it locked the release.
            let (hold, held) = std::sync::mpsc::channel::<()>();
            let (locked, wait_locked) = std::sync::mpsc::channel::<()>();
            let url = database.url.clone();
            let holder = std::thread::spawn(move || {
                let mut client = postgres::Client::connect(&url, postgres::NoTls).expect("connect");
                let mut transaction = client.transaction().expect("begin");
                transaction
                    .execute("SELECT 1 FROM clusters WHERE slug = 'gpu' FOR UPDATE", &[])
                    .expect("lock the cluster");
                locked.send(()).expect("the test waits");
                held.recv().expect("the test releases");
                transaction.commit().expect("commit");
            });
            wait_locked.recv().expect("locked");
            let deploy = {
                let other = other.clone();
                tokio::spawn(async move {
                    other
                        .deploy_release("ingest", release.id, vec!["gpu".into()])
                        .await
                })
            };
            wait_for_waiters(&database.url, 1).await;
            let delete = {
                let one = one.clone();
                tokio::spawn(async move {
                    match deletion {
                        "unpublish" => one.unpublish_release("ingest", release.id).await,
                        _ => one.delete_workflow("ingest").await,
                    }
                })
            };
            wait_for_waiters(&database.url, 2).await;
            hold.send(()).expect("release the cluster");
            holder.join().expect("the holder committed");
            let deployed = deploy.await.expect("deploy task").expect("the deployment");
            assert_eq!(deployed.clusters, ["gpu"]);
            let refused = delete.await.expect("delete task");
            assert!(
                matches!(&refused, Err(Error::Conflict(message)) if message.contains("gpu")),
                "{deletion} waited for the deployment and refused: {refused:?}"
            );
            assert_eq!(
                one.get_release("ingest", release.id)
                    .await
                    .expect("the release is kept")
                    .clusters,
                ["gpu"]
            );
            one.undeploy_release("ingest", release.id, vec!["gpu".into()])
                .await
                .expect("undeploy");
        }
    }
}
