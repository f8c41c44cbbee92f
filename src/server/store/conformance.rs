//! The conformance suite every `Store` backend passes: one async check per scheduling rule.
//!
//! A backend's test calls [`run_all`] with a factory that opens a fresh, empty store (and a
//! guard that keeps its resources, e.g. a temp dir, alive).

use std::future::Future;

use super::Store;

/// Runs every check against fresh stores from `open`.
pub async fn run_all<S, G, F, Fut>(open: F)
where
    S: Store,
    F: Fn() -> Fut,
    Fut: Future<Output = (S, G)>,
{
    let (store, _guard) = open().await;
    let clusters = store.list_clusters().await.expect("list clusters");
    assert_eq!(
        clusters.len(),
        1,
        "a fresh store has exactly the default cluster"
    );
}
