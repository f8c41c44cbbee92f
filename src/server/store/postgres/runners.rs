//! Runner presence on PostgreSQL: the `runners` table, upserted by every replica's presence
//! flush in one statement per flush (a newer contact wins, whichever replica flushes it).

use std::collections::BTreeMap;

use super::{Tx, pg};
use crate::server::store::rules::{identifiers_from_json, identifiers_json};
use crate::server::store::{Result, RunnerKind, RunnerSeen};

/// Upserts each runner's contact: a stored row newer than the contact stays as it is, and
/// `first_seen_at` keeps the earliest. Rows are written in `runner` order, so two replicas
/// flushing the same runners lock them in one order.
pub(super) fn record_runners(tx: &mut Tx<'_>, runners: &[RunnerSeen]) -> Result<()> {
    // One row per runner per statement (ON CONFLICT may not touch a row twice): the latest.
    let mut latest: BTreeMap<&str, &RunnerSeen> = BTreeMap::new();
    for runner in runners {
        let entry = latest.entry(runner.runner.as_str()).or_insert(runner);
        if runner.last_seen_at >= entry.last_seen_at {
            *entry = runner;
        }
    }
    let rows: Vec<&RunnerSeen> = latest.into_values().collect();
    let names: Vec<&str> = rows.iter().map(|row| row.runner.as_str()).collect();
    let kinds: Vec<i64> = rows.iter().map(|row| row.kind as i64).collect();
    let clusters: Vec<&str> = rows.iter().map(|row| row.cluster.as_str()).collect();
    let keys: Vec<&str> = rows.iter().map(|row| row.key_name.as_str()).collect();
    let hostnames: Vec<&str> = rows.iter().map(|row| row.hostname.as_str()).collect();
    let versions: Vec<&str> = rows.iter().map(|row| row.version.as_str()).collect();
    let slots: Vec<i64> = rows.iter().map(|row| i64::from(row.slots)).collect();
    let free: Vec<i64> = rows.iter().map(|row| i64::from(row.free_slots)).collect();
    let identifiers: Vec<String> = rows
        .iter()
        .map(|row| identifiers_json(&row.identifiers))
        .collect();
    let first: Vec<i64> = rows.iter().map(|row| row.first_seen_at).collect();
    let last: Vec<i64> = rows.iter().map(|row| row.last_seen_at).collect();
    tx.execute(
        "INSERT INTO runners AS r (runner, kind, cluster, key_name, hostname, version, slots,
                                   free_slots, identifiers, first_seen_at, last_seen_at)
         SELECT runner, kind, cluster, key_name, hostname, version, slots, free_slots,
                identifiers::jsonb, first_seen_at, last_seen_at
         FROM unnest($1::text[], $2::bigint[], $3::text[], $4::text[], $5::text[], $6::text[],
                     $7::bigint[], $8::bigint[], $9::text[], $10::bigint[], $11::bigint[])
              AS u(runner, kind, cluster, key_name, hostname, version, slots, free_slots,
                   identifiers, first_seen_at, last_seen_at)
         ORDER BY runner
         ON CONFLICT (runner) DO UPDATE SET
             kind = excluded.kind, cluster = excluded.cluster, key_name = excluded.key_name,
             hostname = excluded.hostname, version = excluded.version, slots = excluded.slots,
             free_slots = excluded.free_slots, identifiers = excluded.identifiers,
             first_seen_at = LEAST(r.first_seen_at, excluded.first_seen_at),
             last_seen_at = excluded.last_seen_at
         WHERE excluded.last_seen_at >= r.last_seen_at",
        &[
            &names,
            &kinds,
            &clusters,
            &keys,
            &hostnames,
            &versions,
            &slots,
            &free,
            &identifiers,
            &first,
            &last,
        ],
    )
    .map_err(pg("record runners"))?;
    Ok(())
}

/// Runners last seen at or after `seen_since`, of `cluster` when given.
pub(super) fn list_runners(
    tx: &mut Tx<'_>,
    cluster: Option<&str>,
    seen_since: i64,
) -> Result<Vec<RunnerSeen>> {
    let rows = tx
        .query(
            "SELECT runner, kind, cluster, key_name, hostname, version, slots, free_slots,
                    identifiers::text, first_seen_at, last_seen_at
             FROM runners WHERE last_seen_at >= $1 AND ($2::text IS NULL OR cluster = $2)
             ORDER BY last_seen_at DESC LIMIT 10000",
            &[&seen_since, &cluster],
        )
        .map_err(pg("list runners"))?;
    rows.iter()
        .map(|row| {
            let runner: String = row.get(0);
            let identifiers = identifiers_from_json(&runner, row.get(8))?;
            Ok(RunnerSeen {
                runner,
                kind: RunnerKind::from_number(row.get(1)),
                cluster: row.get(2),
                key_name: row.get(3),
                hostname: row.get(4),
                version: row.get(5),
                slots: u32::try_from(row.get::<_, i64>(6)).unwrap_or(u32::MAX),
                free_slots: u32::try_from(row.get::<_, i64>(7)).unwrap_or(u32::MAX),
                identifiers,
                first_seen_at: row.get(9),
                last_seen_at: row.get(10),
            })
        })
        .collect()
}

/// Forgets runners last seen before `seen_before`.
pub(super) fn delete_runners_before(tx: &mut Tx<'_>, seen_before: i64) -> Result<usize> {
    tx.execute(
        "DELETE FROM runners WHERE last_seen_at < $1",
        &[&seen_before],
    )
    .map(|count| count as usize)
    .map_err(pg("delete runners"))
}
