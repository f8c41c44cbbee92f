//! Console sessions: stored by the hash of their id, gone once expired or deleted.

use crate::server::store::{ConsoleSession, Store};

fn session(seed: u8, created_at: i64, expires_at: i64) -> ConsoleSession {
    ConsoleSession {
        session_hash: [seed; 32],
        key_digest: [seed.wrapping_add(100); 32],
        csrf: [seed.wrapping_add(200); 32],
        created_at,
        expires_at,
    }
}

/// Rule 34: a console session is read back as stored until it expires (a read at or after
/// `expires_at` finds none); creating it again changes nothing; deleting it answers whether
/// it was there; the expiry sweep deletes exactly the expired ones and answers how many.
pub(crate) async fn console_sessions_expire_and_end_at_logout<S: Store>(store: S) {
    let early = session(1, 1_000, 5_000);
    let late = session(2, 1_000, 9_000);
    let other = session(3, 2_000, 9_000);
    for stored in [&early, &late, &other] {
        store
            .create_console_session(stored.clone())
            .await
            .expect("create a session");
    }
    let again = ConsoleSession {
        key_digest: [0xee; 32],
        ..early.clone()
    };
    store
        .create_console_session(again)
        .await
        .expect("creating a session again is no error");

    let get = |hash: [u8; 32], now: i64| {
        let found = store.get_console_session(hash, now);
        async move { found.await.expect("get a session") }
    };
    assert_eq!(get(early.session_hash, 4_999).await, Some(early.clone()));
    assert_eq!(
        get(early.session_hash, 5_000).await,
        None,
        "expired at 5000"
    );
    assert_eq!(get([9; 32], 0).await, None, "an unknown session");

    assert!(
        store
            .delete_console_session(other.session_hash)
            .await
            .expect("delete")
    );
    assert!(
        !store
            .delete_console_session(other.session_hash)
            .await
            .expect("delete again"),
        "a second logout finds nothing"
    );
    assert_eq!(get(other.session_hash, 0).await, None);

    assert_eq!(
        store
            .delete_expired_console_sessions(5_000)
            .await
            .expect("sweep"),
        1,
        "only the session expired at 5000"
    );
    assert_eq!(
        get(early.session_hash, 0).await,
        None,
        "the expired row is gone"
    );
    assert_eq!(get(late.session_hash, 8_999).await, Some(late.clone()));
    assert_eq!(
        store
            .delete_expired_console_sessions(5_000)
            .await
            .expect("sweep again"),
        0
    );
}
