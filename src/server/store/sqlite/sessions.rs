//! The web console's sessions (schema version 4, `sessions.sql`): one row per signed-in
//! browser, keyed by the SHA-256 of its session id.

use rusqlite::{Connection, OptionalExtension, params};

use super::{db, execute, query_row};
use crate::server::store::{ConsoleSession, Error, Result};

/// The table and index, created on every open (after `schema.sql`).
pub(super) const SCHEMA: &str = include_str!("sessions.sql");

pub(super) fn create(connection: &Connection, session: &ConsoleSession) -> Result<()> {
    execute(
        connection,
        "INSERT INTO console_sessions (session_hash, key_digest, csrf, created_at, expires_at)
         VALUES (?1, ?2, ?3, ?4, ?5) ON CONFLICT (session_hash) DO NOTHING",
        params![
            session.session_hash.as_slice(),
            session.key_digest.as_slice(),
            session.csrf.as_slice(),
            session.created_at,
            session.expires_at
        ],
    )
    .map_err(db("create a console session"))?;
    Ok(())
}

pub(super) fn get(
    connection: &Connection,
    session_hash: [u8; 32],
    now_millis: i64,
) -> Result<Option<ConsoleSession>> {
    let row = query_row(
        connection,
        "SELECT key_digest, csrf, created_at, expires_at FROM console_sessions
         WHERE session_hash = ?1 AND expires_at > ?2",
        params![session_hash.as_slice(), now_millis],
        |row| {
            Ok((
                row.get::<_, Vec<u8>>(0)?,
                row.get::<_, Vec<u8>>(1)?,
                row.get::<_, i64>(2)?,
                row.get::<_, i64>(3)?,
            ))
        },
    )
    .optional()
    .map_err(db("read a console session"))?;
    let Some((key_digest, csrf, created_at, expires_at)) = row else {
        return Ok(None);
    };
    Ok(Some(ConsoleSession {
        session_hash,
        key_digest: digest(key_digest, "key_digest")?,
        csrf: digest(csrf, "csrf")?,
        created_at,
        expires_at,
    }))
}

pub(super) fn delete(connection: &Connection, session_hash: [u8; 32]) -> Result<bool> {
    let deleted = execute(
        connection,
        "DELETE FROM console_sessions WHERE session_hash = ?1",
        [session_hash.as_slice()],
    )
    .map_err(db("delete a console session"))?;
    Ok(deleted > 0)
}

pub(super) fn delete_expired(connection: &Connection, now_millis: i64) -> Result<usize> {
    execute(
        connection,
        "DELETE FROM console_sessions WHERE expires_at <= ?1",
        [now_millis],
    )
    .map_err(db("delete expired console sessions"))
}

/// A stored 32-byte value; any other length is a corrupt row.
fn digest(bytes: Vec<u8>, column: &str) -> Result<[u8; 32]> {
    let length = bytes.len();
    bytes.try_into().map_err(|_| {
        Error::Corrupt(format!(
            "console_sessions.{column} holds {length} bytes, not 32"
        ))
    })
}

#[cfg(test)]
mod tests {
    use rusqlite::Connection;

    use super::super::{DATABASE_FILE, SqliteStore, counters};
    use crate::server::store::{ConsoleSession, Store};

    /// A database of schema version 2 (before the console sessions) opens at version 4 with
    /// the sessions table, and keeps its sessions across a reopen.
    #[tokio::test]
    async fn a_version_2_database_is_upgraded_to_4_with_console_sessions() {
        let directory = tempfile::tempdir().expect("temp dir");
        drop(SqliteStore::open(directory.path()).expect("open"));
        let path = directory.path().join(DATABASE_FILE);
        Connection::open(&path)
            .expect("open the file")
            .execute_batch(
                "DROP TABLE runners; DROP TABLE console_sessions; PRAGMA user_version = 2;",
            )
            .expect("the version 2 schema");

        let store = SqliteStore::open(directory.path()).expect("open a version 2 database");
        let session = ConsoleSession {
            session_hash: [7; 32],
            key_digest: [8; 32],
            csrf: [9; 32],
            created_at: 1,
            expires_at: i64::MAX,
        };
        store
            .create_console_session(session.clone())
            .await
            .expect("create a session");
        drop(store);
        let version: i64 = Connection::open(&path)
            .expect("open the file")
            .pragma_query_value(None, "user_version", |row| row.get(0))
            .expect("version");
        assert_eq!(version, counters::SCHEMA_VERSION);
        assert_eq!(version, 4);

        let reopened = SqliteStore::open(directory.path()).expect("reopen");
        assert_eq!(
            reopened
                .get_console_session(session.session_hash, 2)
                .await
                .expect("get"),
            Some(session),
            "the session survives a restart"
        );
    }
}
