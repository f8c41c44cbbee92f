//! The versioned schema of the PostgreSQL store: `migrations/NNNN_name.sql`, applied in
//! order at start, each in its own transaction with its row in `schema_migrations`.
//! Replicas starting together serialise on an advisory lock, so each migration runs once;
//! a database whose schema is newer than this build knows is refused, untouched.

use postgres::Client;

use super::pg;
use crate::api::convert::now_millis;
use crate::server::store::{DEFAULT_CLUSTER_SLUG, Error, Result};

/// The migrations, in order; version N is `MIGRATIONS[N - 1]`.
const MIGRATIONS: &[(&str, &str)] = &[
    ("initial", include_str!("migrations/0001_initial.sql")),
    ("runners", include_str!("migrations/0002_runners.sql")),
    (
        "console_sessions",
        include_str!("migrations/0003_console_sessions.sql"),
    ),
];

/// The schema version this build writes.
pub const SCHEMA_VERSION: i64 = MIGRATIONS.len() as i64;

/// The advisory lock key replicas take while migrating (`tilebox` in ASCII, as a number).
const MIGRATION_LOCK: i64 = 0x7469_6c65_626f_7801;

/// Brings the database up to [`SCHEMA_VERSION`], or refuses a newer one.
pub(super) fn migrate(client: &mut Client, target: &str) -> Result<()> {
    client
        .execute("SELECT pg_advisory_lock($1)", &[&MIGRATION_LOCK])
        .map_err(pg("lock for migrations"))?;
    let migrated = migrate_locked(client, target);
    let unlocked = client
        .execute("SELECT pg_advisory_unlock($1)", &[&MIGRATION_LOCK])
        .map_err(pg("unlock after migrations"));
    migrated?;
    unlocked?;
    Ok(())
}

/// The oldest PostgreSQL the schema needs (`UNIQUE NULLS NOT DISTINCT`).
const MIN_SERVER_VERSION: i64 = 150_000;

fn migrate_locked(client: &mut Client, target: &str) -> Result<()> {
    let version: String = client
        .query_one("SHOW server_version_num", &[])
        .map_err(pg("read the server version"))?
        .get(0);
    if version.parse::<i64>().unwrap_or(0) < MIN_SERVER_VERSION {
        return Err(Error::Open {
            target: target.to_string(),
            source: format!(
                "PostgreSQL {version} (server_version_num) is too old: tilebox needs PostgreSQL 15 or newer"
            )
            .into(),
        });
    }
    client
        .batch_execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations (
                 version    bigint PRIMARY KEY,
                 name       text NOT NULL,
                 applied_at bigint NOT NULL
             )",
        )
        .map_err(pg("create schema_migrations"))?;
    let found: i64 = client
        .query_one(
            "SELECT COALESCE(MAX(version), 0) FROM schema_migrations",
            &[],
        )
        .map_err(pg("read the schema version"))?
        .get(0);
    if found > SCHEMA_VERSION {
        return Err(Error::SchemaTooNew {
            target: target.to_string(),
            found,
            supported: SCHEMA_VERSION,
        });
    }
    for (index, (name, sql)) in MIGRATIONS.iter().enumerate().skip(found as usize) {
        let version = index as i64 + 1;
        tracing::info!(database = %target, version, name, "applying a schema migration");
        let mut transaction = client.transaction().map_err(pg("begin a migration"))?;
        transaction
            .batch_execute(sql)
            .map_err(pg("apply a migration"))?;
        transaction
            .execute(
                "INSERT INTO schema_migrations (version, name, applied_at) VALUES ($1, $2, $3)",
                &[&version, name, &now_millis()],
            )
            .map_err(pg("record a migration"))?;
        transaction.commit().map_err(pg("commit a migration"))?;
    }
    client
        .execute(
            "INSERT INTO clusters (slug, name, description, deletable, created_at)
             VALUES ($1, 'Default', 'The cluster tasks run on when none is named', false, $2)
             ON CONFLICT (slug) DO NOTHING",
            &[&DEFAULT_CLUSTER_SLUG, &now_millis()],
        )
        .map_err(pg("create the default cluster"))?;
    Ok(())
}
