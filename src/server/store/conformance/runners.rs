//! Runner presence: contacts upserted per runner, listed by last contact and cluster, and
//! forgotten when old.

use super::fixtures::*;
use crate::server::store::{RunnerKind, RunnerSeen, Store};

/// A contact of `runner` on `cluster` at `last_seen_at`, advertising `identifiers`.
pub(super) fn seen(
    runner: &str,
    cluster: &str,
    last_seen_at: i64,
    identifiers: &[(&str, &str)],
) -> RunnerSeen {
    RunnerSeen {
        runner: runner.to_string(),
        kind: RunnerKind::Tilebox,
        cluster: cluster.to_string(),
        key_name: "ops".to_string(),
        hostname: "worker-1".to_string(),
        version: "0.1.0".to_string(),
        slots: 4,
        free_slots: 3,
        identifiers: identifiers
            .iter()
            .map(|(name, version)| (name.to_string(), version.to_string()))
            .collect(),
        first_seen_at: last_seen_at,
        last_seen_at,
    }
}

/// The listed runners, by cluster then runner (the store answers newest first).
async fn listed<S: Store>(store: &S, cluster: Option<&str>, seen_since: i64) -> Vec<RunnerSeen> {
    let mut runners = store
        .list_runners(cluster.map(str::to_string), seen_since)
        .await
        .expect("list runners");
    runners.sort_by(|a, b| (&a.cluster, &a.runner).cmp(&(&b.cluster, &b.runner)));
    runners
}

/// A newer contact replaces what a runner advertised (identifiers, slots, host) and moves
/// its last contact on, keeping its first; a late, older contact (another replica's flush)
/// changes nothing.
pub(crate) async fn presence_upsert_keeps_the_latest_contact_and_the_new_identifiers<S: Store>(
    store: S,
) {
    let first = seen("runner:ops/1", "default", 1_000, &[("Tile", "v1.0")]);
    store
        .record_runners(vec![first.clone()])
        .await
        .expect("record");
    assert_eq!(listed(&store, None, 0).await, vec![first.clone()]);

    let sdk = RunnerSeen {
        kind: RunnerKind::Sdk,
        hostname: String::new(),
        ..seen("host:ops@127.0.0.1:5000", "default", 1_500, &[])
    };
    let newer = RunnerSeen {
        free_slots: 0,
        first_seen_at: 2_000,
        hostname: "worker-2".to_string(),
        ..seen(
            "runner:ops/1",
            "default",
            2_000,
            &[("Tile", "v1.2"), ("Mosaic", "v2.0")],
        )
    };
    store
        .record_runners(vec![newer.clone(), sdk.clone()])
        .await
        .expect("record");
    let expected = RunnerSeen {
        first_seen_at: 1_000,
        ..newer.clone()
    };
    assert_eq!(
        listed(&store, None, 0).await,
        vec![sdk.clone(), expected.clone()],
        "by cluster, then runner; the first contact kept"
    );

    let late = seen("runner:ops/1", "default", 1_800, &[("Stale", "v0.1")]);
    store.record_runners(vec![late]).await.expect("record");
    assert_eq!(
        listed(&store, None, 0).await,
        vec![sdk, expected],
        "an older contact does not move the runner back"
    );
    store.record_runners(Vec::new()).await.expect("nothing");
}

/// Only runners last seen at or after the given time are listed.
pub(crate) async fn runners_unseen_since_are_not_listed<S: Store>(store: S) {
    store
        .record_runners(vec![
            seen("runner:ops/old", "default", 1_000, &[]),
            seen("runner:ops/new", "default", 5_000, &[("Tile", "v1.0")]),
        ])
        .await
        .expect("record");
    let names = |runners: Vec<RunnerSeen>| -> Vec<String> {
        runners.into_iter().map(|runner| runner.runner).collect()
    };
    assert_eq!(
        names(listed(&store, None, 0).await),
        ["runner:ops/new", "runner:ops/old"]
    );
    assert_eq!(names(listed(&store, None, 5_000).await), ["runner:ops/new"]);
    assert!(listed(&store, None, 5_001).await.is_empty());
}

/// A cluster's listing holds only the runners asking for its work.
pub(crate) async fn runners_are_listed_per_cluster<S: Store>(store: S) {
    add_cluster(&store, "gpu").await;
    store
        .record_runners(vec![
            seen("runner:ops/a", "gpu", 1_000, &[("Train", "v1.0")]),
            seen("runner:ops/b", "default", 1_000, &[("Tile", "v1.0")]),
            seen("runner:ops/c", "gpu", 1_000, &[]),
        ])
        .await
        .expect("record");
    let names = |runners: Vec<RunnerSeen>| -> Vec<String> {
        runners.into_iter().map(|runner| runner.runner).collect()
    };
    assert_eq!(
        names(listed(&store, Some("gpu"), 0).await),
        ["runner:ops/a", "runner:ops/c"]
    );
    assert_eq!(
        names(listed(&store, Some("default"), 0).await),
        ["runner:ops/b"]
    );
    assert!(listed(&store, Some("nowhere"), 0).await.is_empty());
    assert_eq!(listed(&store, None, 0).await.len(), 3);
}

/// Runners last seen before the cutoff are forgotten; the others stay.
pub(crate) async fn old_runners_are_deleted<S: Store>(store: S) {
    store
        .record_runners(vec![
            seen("runner:ops/1", "default", 1_000, &[]),
            seen("runner:ops/2", "default", 2_000, &[]),
            seen("runner:ops/3", "default", 3_000, &[]),
        ])
        .await
        .expect("record");
    assert_eq!(store.delete_runners_before(2_500).await.expect("delete"), 2);
    let left: Vec<String> = listed(&store, None, 0)
        .await
        .into_iter()
        .map(|runner| runner.runner)
        .collect();
    assert_eq!(left, ["runner:ops/3"]);
    assert_eq!(store.delete_runners_before(2_500).await.expect("again"), 0);
}
