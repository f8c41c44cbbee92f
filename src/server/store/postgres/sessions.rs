//! The web console's sessions (migration `console_sessions`): one row per signed-in
//! browser, keyed by the SHA-256 of its session id. Written in short transactions of their
//! own on the pool, never in the writers' batches of claims and reports.

use super::{Tx, pg};
use crate::server::store::{ConsoleSession, Error, Result};

pub(super) fn create(tx: &mut Tx<'_>, session: &ConsoleSession) -> Result<()> {
    tx.execute(
        "INSERT INTO console_sessions (session_hash, key_digest, csrf, created_at, expires_at)
         VALUES ($1, $2, $3, $4, $5) ON CONFLICT (session_hash) DO NOTHING",
        &[
            &session.session_hash.as_slice(),
            &session.key_digest.as_slice(),
            &session.csrf.as_slice(),
            &session.created_at,
            &session.expires_at,
        ],
    )
    .map_err(pg("create a console session"))?;
    Ok(())
}

pub(super) fn get(
    tx: &mut Tx<'_>,
    session_hash: [u8; 32],
    now_millis: i64,
) -> Result<Option<ConsoleSession>> {
    let row = tx
        .query_opt(
            "SELECT key_digest, csrf, created_at, expires_at FROM console_sessions
             WHERE session_hash = $1 AND expires_at > $2",
            &[&session_hash.as_slice(), &now_millis],
        )
        .map_err(pg("read a console session"))?;
    let Some(row) = row else {
        return Ok(None);
    };
    Ok(Some(ConsoleSession {
        session_hash,
        key_digest: digest(row.get(0), "key_digest")?,
        csrf: digest(row.get(1), "csrf")?,
        created_at: row.get(2),
        expires_at: row.get(3),
    }))
}

pub(super) fn delete(tx: &mut Tx<'_>, session_hash: [u8; 32]) -> Result<bool> {
    let deleted = tx
        .execute(
            "DELETE FROM console_sessions WHERE session_hash = $1",
            &[&session_hash.as_slice()],
        )
        .map_err(pg("delete a console session"))?;
    Ok(deleted > 0)
}

pub(super) fn delete_expired(tx: &mut Tx<'_>, now_millis: i64) -> Result<usize> {
    let deleted = tx
        .execute(
            "DELETE FROM console_sessions WHERE expires_at <= $1",
            &[&now_millis],
        )
        .map_err(pg("delete expired console sessions"))?;
    Ok(usize::try_from(deleted).unwrap_or(usize::MAX))
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
