//! Runner presence on SQLite: the `runners` table, one row per runner, upserted from the
//! presence flush (a newer contact wins, whichever server flushes it).

use rusqlite::{Connection, params};

use super::db;
use crate::server::store::rules::{identifiers_from_json, identifiers_json};
use crate::server::store::{Result, RunnerKind, RunnerSeen};

/// Upserts each runner's contact: a stored row newer than the contact stays as it is, and
/// `first_seen_at` keeps the earliest.
pub(super) fn record_runners(connection: &Connection, runners: &[RunnerSeen]) -> Result<()> {
    let mut upsert = connection
        .prepare_cached(
            "INSERT INTO runners (runner, kind, cluster, key_name, hostname, version, slots,
                                  free_slots, identifiers, first_seen_at, last_seen_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)
             ON CONFLICT (runner) DO UPDATE SET
                 kind = excluded.kind, cluster = excluded.cluster, key_name = excluded.key_name,
                 hostname = excluded.hostname, version = excluded.version,
                 slots = excluded.slots, free_slots = excluded.free_slots,
                 identifiers = excluded.identifiers,
                 first_seen_at = MIN(runners.first_seen_at, excluded.first_seen_at),
                 last_seen_at = excluded.last_seen_at
             WHERE excluded.last_seen_at >= runners.last_seen_at",
        )
        .map_err(db("record runners"))?;
    for runner in runners {
        upsert
            .execute(params![
                runner.runner,
                runner.kind as i64,
                runner.cluster,
                runner.key_name,
                runner.hostname,
                runner.version,
                runner.slots,
                runner.free_slots,
                identifiers_json(&runner.identifiers),
                runner.first_seen_at,
                runner.last_seen_at,
            ])
            .map_err(db("record runners"))?;
    }
    Ok(())
}

/// Runners last seen at or after `seen_since`, of `cluster` when given.
pub(super) fn list_runners(
    connection: &Connection,
    cluster: Option<&str>,
    seen_since: i64,
) -> Result<Vec<RunnerSeen>> {
    let mut statement = connection
        .prepare_cached(
            "SELECT runner, kind, cluster, key_name, hostname, version, slots, free_slots,
                    identifiers, first_seen_at, last_seen_at
             FROM runners WHERE last_seen_at >= ?1 AND (?2 IS NULL OR cluster = ?2)
             ORDER BY last_seen_at DESC LIMIT 10000",
        )
        .map_err(db("list runners"))?;
    let rows = statement
        .query_map(params![seen_since, cluster], |row| {
            Ok((
                RunnerSeen {
                    runner: row.get(0)?,
                    kind: RunnerKind::from_number(row.get(1)?),
                    cluster: row.get(2)?,
                    key_name: row.get(3)?,
                    hostname: row.get(4)?,
                    version: row.get(5)?,
                    slots: row.get(6)?,
                    free_slots: row.get(7)?,
                    identifiers: Vec::new(),
                    first_seen_at: row.get(9)?,
                    last_seen_at: row.get(10)?,
                },
                row.get::<_, String>(8)?,
            ))
        })
        .and_then(|rows| rows.collect::<rusqlite::Result<Vec<_>>>())
        .map_err(db("list runners"))?;
    rows.into_iter()
        .map(|(mut runner, identifiers)| {
            runner.identifiers = identifiers_from_json(&runner.runner, &identifiers)?;
            Ok(runner)
        })
        .collect()
}

/// Forgets runners last seen before `seen_before`.
pub(super) fn delete_runners_before(connection: &Connection, seen_before: i64) -> Result<usize> {
    connection
        .execute("DELETE FROM runners WHERE last_seen_at < ?1", [seen_before])
        .map_err(db("delete runners"))
}
