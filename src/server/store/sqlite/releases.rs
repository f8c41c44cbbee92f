//! Workflows, artifacts, releases and deployments in the SQLite store.

use rusqlite::{Connection, OptionalExtension, params};
use uuid::Uuid;

use super::db;
use crate::server::store::{Artifact, Error, Release, Result, Workflow};

fn uuid_from(bytes: Vec<u8>) -> Result<Uuid> {
    Uuid::from_slice(&bytes)
        .map_err(|_| Error::Corrupt(format!("a stored id has {} bytes", bytes.len())))
}

fn map_workflow(row: &rusqlite::Row<'_>) -> rusqlite::Result<Workflow> {
    Ok(Workflow {
        slug: row.get(0)?,
        name: row.get(1)?,
        summary: row.get(2)?,
        description: row.get(3)?,
    })
}

pub(super) fn get_workflow(connection: &Connection, slug: &str) -> Result<Workflow> {
    connection
        .prepare_cached("SELECT slug, name, summary, description FROM workflows WHERE slug = ?1")
        .and_then(|mut statement| statement.query_row([slug], map_workflow).optional())
        .map_err(db("get workflow"))?
        .ok_or_else(|| Error::WorkflowNotFound {
            slug: slug.to_string(),
        })
}

pub(super) fn create_workflow(
    connection: &Connection,
    workflow: Workflow,
    now: i64,
) -> Result<Workflow> {
    let inserted = connection
        .execute(
            "INSERT OR IGNORE INTO workflows (slug, name, summary, description, created_at) VALUES (?1, ?2, ?3, ?4, ?5)",
            params![workflow.slug, workflow.name, workflow.summary, workflow.description, now],
        )
        .map_err(db("create workflow"))?;
    if inserted == 0 {
        return Err(Error::WorkflowExists {
            slug: workflow.slug,
        });
    }
    Ok(workflow)
}

pub(super) fn list_workflows(connection: &Connection) -> Result<Vec<Workflow>> {
    connection
        .prepare_cached(
            "SELECT slug, name, summary, description FROM workflows ORDER BY created_at, slug",
        )
        .and_then(|mut statement| {
            statement
                .query_map([], map_workflow)?
                .collect::<rusqlite::Result<Vec<_>>>()
        })
        .map_err(db("list workflows"))
}

pub(super) fn update_workflow(
    connection: &Connection,
    slug: &str,
    name: Option<String>,
    summary: Option<String>,
    description: Option<String>,
) -> Result<Workflow> {
    let mut workflow = get_workflow(connection, slug)?;
    if let Some(name) = name {
        workflow.name = name;
    }
    if let Some(summary) = summary {
        workflow.summary = summary;
    }
    if let Some(description) = description {
        workflow.description = description;
    }
    connection
        .execute(
            "UPDATE workflows SET name = ?2, summary = ?3, description = ?4 WHERE slug = ?1",
            params![slug, workflow.name, workflow.summary, workflow.description],
        )
        .map_err(db("update workflow"))?;
    Ok(workflow)
}

fn deployed_clusters(connection: &Connection, release: i64) -> Result<Vec<String>> {
    connection
        .prepare_cached("SELECT cluster FROM deployments WHERE release = ?1 ORDER BY cluster")
        .and_then(|mut statement| {
            statement
                .query_map([release], |row| row.get(0))?
                .collect::<rusqlite::Result<Vec<_>>>()
        })
        .map_err(db("deployed clusters"))
}

pub(super) fn delete_workflow(connection: &Connection, slug: &str) -> Result<()> {
    get_workflow(connection, slug)?;
    let deployed: Vec<String> = connection
        .prepare_cached("SELECT cluster FROM deployments WHERE workflow = ?1 ORDER BY cluster")
        .and_then(|mut statement| {
            statement
                .query_map([slug], |row| row.get(0))?
                .collect::<rusqlite::Result<Vec<_>>>()
        })
        .map_err(db("delete workflow"))?;
    if !deployed.is_empty() {
        return Err(Error::Conflict(format!(
            "workflow `{slug}` is deployed to {}; undeploy it first",
            deployed.join(", ")
        )));
    }
    connection
        .execute("DELETE FROM releases WHERE workflow = ?1", [slug])
        .map_err(db("delete workflow"))?;
    connection
        .execute("DELETE FROM workflows WHERE slug = ?1", [slug])
        .map_err(db("delete workflow"))?;
    Ok(())
}

fn map_artifact(row: &rusqlite::Row<'_>) -> rusqlite::Result<(String, Vec<u8>, i64)> {
    Ok((row.get(0)?, row.get(1)?, row.get(2)?))
}

fn artifact_of((digest, uuid, size): (String, Vec<u8>, i64)) -> Result<Artifact> {
    Ok(Artifact {
        id: uuid_from(uuid)?,
        digest,
        size: size.max(0) as u64,
    })
}

pub(super) fn register_artifact(
    connection: &Connection,
    digest: String,
    size: u64,
    now: i64,
) -> Result<Artifact> {
    connection
        .execute(
            "INSERT OR IGNORE INTO artifacts (digest, uuid, size, created_at) VALUES (?1, ?2, ?3, ?4)",
            params![digest, Uuid::now_v7().as_bytes(), size as i64, now],
        )
        .map_err(db("register artifact"))?;
    get_artifact(connection, Some(&digest), None)
}

pub(super) fn get_artifact(
    connection: &Connection,
    digest: Option<&str>,
    id: Option<Uuid>,
) -> Result<Artifact> {
    let row = match (digest, id) {
        (Some(digest), _) => connection
            .prepare_cached("SELECT digest, uuid, size FROM artifacts WHERE digest = ?1")
            .and_then(|mut statement| statement.query_row([digest], map_artifact).optional()),
        (None, Some(id)) => connection
            .prepare_cached("SELECT digest, uuid, size FROM artifacts WHERE uuid = ?1")
            .and_then(|mut statement| {
                statement
                    .query_row([id.as_bytes()], map_artifact)
                    .optional()
            }),
        (None, None) => return Err(Error::ArtifactNotFound("(no digest or id given)".into())),
    }
    .map_err(db("get artifact"))?;
    let name = digest
        .map(str::to_string)
        .or(id.map(|id| id.to_string()))
        .unwrap_or_default();
    artifact_of(row.ok_or(Error::ArtifactNotFound(name))?)
}

const RELEASE_COLUMNS: &str = "r.release, r.uuid, r.workflow, r.fingerprint, r.content, r.created_at, a.digest, a.uuid, a.size";

fn map_release(connection: &Connection, row: &rusqlite::Row<'_>) -> Result<Release> {
    let read = |row: &rusqlite::Row<'_>| -> rusqlite::Result<_> {
        Ok((
            row.get::<_, i64>(0)?,
            row.get::<_, Vec<u8>>(1)?,
            row.get::<_, String>(2)?,
            row.get::<_, String>(3)?,
            row.get::<_, Vec<u8>>(4)?,
            row.get::<_, i64>(5)?,
            (
                row.get::<_, String>(6)?,
                row.get::<_, Vec<u8>>(7)?,
                row.get::<_, i64>(8)?,
            ),
        ))
    };
    let (key, uuid, workflow, fingerprint, content, created_at, artifact) =
        read(row).map_err(db("read release"))?;
    Ok(Release {
        id: uuid_from(uuid)?,
        workflow,
        artifact: artifact_of(artifact)?,
        fingerprint,
        content,
        created_at,
        clusters: deployed_clusters(connection, key)?,
    })
}

fn releases_where(
    connection: &Connection,
    condition: &str,
    values: &[&dyn rusqlite::ToSql],
) -> Result<Vec<Release>> {
    let sql = format!(
        "SELECT {RELEASE_COLUMNS} FROM releases r JOIN artifacts a ON a.digest = r.artifact WHERE {condition}"
    );
    let mut statement = connection
        .prepare_cached(&sql)
        .map_err(db("read releases"))?;
    let mut rows = statement.query(values).map_err(db("read releases"))?;
    let mut releases = Vec::new();
    while let Some(row) = rows.next().map_err(db("read releases"))? {
        releases.push(map_release(connection, row)?);
    }
    Ok(releases)
}

pub(super) fn get_release(
    connection: &Connection,
    workflow: &str,
    id: Uuid,
) -> Result<(i64, Release)> {
    let key: i64 = connection
        .query_row(
            "SELECT release FROM releases WHERE uuid = ?1 AND workflow = ?2",
            params![id.as_bytes(), workflow],
            |row| row.get(0),
        )
        .optional()
        .map_err(db("get release"))?
        .ok_or_else(|| Error::ReleaseNotFound {
            workflow: workflow.to_string(),
            id,
        })?;
    let release = releases_where(connection, "r.release = ?1", &[&key])?
        .pop()
        .ok_or_else(|| Error::ReleaseNotFound {
            workflow: workflow.to_string(),
            id,
        })?;
    Ok((key, release))
}

pub(super) fn list_releases(connection: &Connection, workflow: &str) -> Result<Vec<Release>> {
    get_workflow(connection, workflow)?;
    releases_where(
        connection,
        "r.workflow = ?1 ORDER BY r.release DESC",
        &[&workflow],
    )
}

pub(super) fn publish_release(
    connection: &Connection,
    workflow: &str,
    artifact: Uuid,
    fingerprint: String,
    content: Vec<u8>,
    now: i64,
) -> Result<Release> {
    get_workflow(connection, workflow)?;
    let artifact = get_artifact(connection, None, Some(artifact))?;
    let existing: Option<Vec<u8>> = connection
        .query_row(
            "SELECT uuid FROM releases WHERE workflow = ?1 AND artifact = ?2 AND fingerprint = ?3",
            params![workflow, artifact.digest, fingerprint],
            |row| row.get(0),
        )
        .optional()
        .map_err(db("publish release"))?;
    let id = match existing {
        Some(uuid) => uuid_from(uuid)?,
        None => {
            let id = Uuid::now_v7();
            connection
                .execute(
                    "INSERT INTO releases (uuid, workflow, artifact, fingerprint, content, created_at)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                    params![id.as_bytes(), workflow, artifact.digest, fingerprint, content, now],
                )
                .map_err(db("publish release"))?;
            id
        }
    };
    Ok(get_release(connection, workflow, id)?.1)
}

pub(super) fn unpublish_release(connection: &Connection, workflow: &str, id: Uuid) -> Result<()> {
    let (key, release) = get_release(connection, workflow, id)?;
    if !release.clusters.is_empty() {
        return Err(Error::Conflict(format!(
            "release {id} is deployed to {}; undeploy it first",
            release.clusters.join(", ")
        )));
    }
    connection
        .execute("DELETE FROM releases WHERE release = ?1", [key])
        .map_err(db("unpublish release"))?;
    Ok(())
}

fn check_clusters(connection: &Connection, clusters: &[String]) -> Result<()> {
    for cluster in clusters {
        super::get_cluster(connection, cluster)?;
    }
    Ok(())
}

pub(super) fn deploy_release(
    connection: &Connection,
    workflow: &str,
    id: Uuid,
    clusters: &[String],
    now: i64,
) -> Result<Release> {
    let (key, _) = get_release(connection, workflow, id)?;
    check_clusters(connection, clusters)?;
    for cluster in clusters {
        connection
            .execute(
                "INSERT INTO deployments (cluster, workflow, release, deployed_at) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (cluster, workflow) DO UPDATE SET release = excluded.release, deployed_at = excluded.deployed_at",
                params![cluster, workflow, key, now],
            )
            .map_err(db("deploy release"))?;
    }
    Ok(get_release(connection, workflow, id)?.1)
}

pub(super) fn undeploy_release(
    connection: &Connection,
    workflow: &str,
    id: Uuid,
    clusters: &[String],
) -> Result<Release> {
    let (key, _) = get_release(connection, workflow, id)?;
    check_clusters(connection, clusters)?;
    for cluster in clusters {
        connection
            .execute(
                "DELETE FROM deployments WHERE cluster = ?1 AND workflow = ?2 AND release = ?3",
                params![cluster, workflow, key],
            )
            .map_err(db("undeploy release"))?;
    }
    Ok(get_release(connection, workflow, id)?.1)
}

pub(super) fn cluster_deployments(connection: &Connection, cluster: &str) -> Result<Vec<Release>> {
    super::get_cluster(connection, cluster)?;
    releases_where(
        connection,
        "r.release IN (SELECT release FROM deployments WHERE cluster = ?1) ORDER BY r.workflow",
        &[&cluster],
    )
}
