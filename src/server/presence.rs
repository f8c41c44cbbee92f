//! Runner presence: which runners ask this server for work, what they advertise, and when
//! they were last seen (`tilebox runner list`, the console's runners page).
//!
//! The services touch a [`Presence`] handle on every `Work`, `NextTask` and lease extension
//! call: one map update under a mutex, no store write, so presence stays off the claim and
//! report path. [`Presence::run`] (spawned by `Server::serve`, like the lease reaper) writes
//! the contacts that changed to the store in one batch every [`FLUSH_PERIOD`], and once more
//! at shutdown, so replicas behind one database see each other's runners (at most a flush
//! late); it also forgets runners unseen for [`FORGET_AFTER`].
//!
//! A runner is *connected* while its last contact is within the presence timeout (at least
//! 15 s; 31 s with the default leases: a busy runner may only extend leases, every third of
//! the longest lease); older ones are *gone* until forgotten.
//!
//! What a runner says about itself is bounded before it is kept: hostnames and versions are
//! cut and cleaned of control characters (a NUL would make PostgreSQL refuse the flush), the
//! identifiers are capped as a claim caps them, and this server keeps at most
//! [`MAX_RUNNERS`] runners, so a hostile client cannot grow the map or the table.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::api::convert::now_millis;
use crate::api::workflows_v1::TaskIdentifier;
use crate::server::store::{self, RunnerKind, RunnerSeen, Store};

/// How often changed contacts are written to the store.
pub const FLUSH_PERIOD: Duration = Duration::from_secs(2);
/// The default presence timeout: a runner not seen for longer is gone. Well above a waiting
/// runner's rhythm (a 1 s long poll, then a 0.3 s pause).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(15);
/// Runners unseen for this long are forgotten (deleted from the store).
pub const FORGET_AFTER: Duration = Duration::from_secs(24 * 3600);
/// How often forgotten runners are deleted.
const FORGET_PERIOD: Duration = Duration::from_secs(600);
/// Most runners one server keeps; contacts of new runners beyond it are not recorded.
pub const MAX_RUNNERS: usize = 10_000;
/// Longest runner (claimant), hostname and version kept, in bytes.
const MAX_RUNNER_BYTES: usize = 256;
const MAX_TEXT_BYTES: usize = 255;
/// Longest identifier name and version kept, in bytes.
const MAX_IDENTIFIER_BYTES: usize = 256;
/// How long the final flush at shutdown may take (the store may be unreachable).
const FINAL_FLUSH_TIMEOUT: Duration = Duration::from_secs(2);

/// One contact of a runner, as a service saw it.
#[derive(Debug, Clone, Copy)]
pub struct Contact<'a> {
    /// The caller (`services::caller`): `runner:<key>/<id>` or `host:<key>@<ip>:<port>`.
    pub runner: &'a str,
    pub kind: RunnerKind,
    /// The cluster asked for (`""` is the default cluster).
    pub cluster: &'a str,
    pub key_name: &'a str,
    pub hostname: &'a str,
    pub version: &'a str,
    pub slots: u32,
    pub free_slots: u32,
    pub identifiers: &'a [TaskIdentifier],
}

struct Entry {
    seen: RunnerSeen,
    /// Hash of the advertised identifiers, so an unchanged list is not copied again.
    identifiers_hash: u64,
    /// Changed since the last flush.
    dirty: bool,
}

/// The presence of runners as this server sees them; cheap to clone.
#[derive(Clone)]
pub struct Presence {
    entries: Arc<Mutex<HashMap<String, Entry>>>,
    timeout: Duration,
}

/// A runner as listed: its latest contact and whether it is connected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listed {
    pub seen: RunnerSeen,
    pub connected: bool,
}

fn identifiers_hash(identifiers: &[TaskIdentifier]) -> u64 {
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    for identifier in identifiers {
        identifier.name.hash(&mut hasher);
        identifier.version.hash(&mut hasher);
    }
    hasher.finish()
}

/// `text` with control characters replaced, within `max` bytes (cut on a character
/// boundary).
fn bounded(text: &str, max: usize) -> String {
    let mut clean = String::with_capacity(text.len().min(max));
    for character in text.chars() {
        let character = if character.is_control() {
            '\u{FFFD}'
        } else {
            character
        };
        if clean.len() + character.len_utf8() > max {
            break;
        }
        clean.push(character);
    }
    clean
}

fn cluster_slug(cluster: &str) -> &str {
    if cluster.is_empty() {
        store::DEFAULT_CLUSTER_SLUG
    } else {
        cluster
    }
}

impl Presence {
    /// A presence whose runners are gone after `timeout` without a contact.
    pub fn new(timeout: Duration) -> Self {
        Self {
            entries: Arc::new(Mutex::new(HashMap::new())),
            timeout,
        }
    }

    /// How long a runner stays connected without a contact.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Records a contact that says everything about the runner (a claim or a wait).
    pub fn touch(&self, contact: Contact<'_>) {
        self.touch_at(contact, now_millis());
    }

    fn touch_at(&self, contact: Contact<'_>, now: i64) {
        if contact.runner.len() > MAX_RUNNER_BYTES {
            return;
        }
        let identifiers = &contact.identifiers[..contact
            .identifiers
            .len()
            .min(crate::api::limits::MAX_IDENTIFIERS_PER_CLAIM)];
        let hash = identifiers_hash(identifiers);
        let hostname = bounded(contact.hostname, MAX_TEXT_BYTES);
        let version = bounded(contact.version, MAX_TEXT_BYTES);
        let cluster = bounded(cluster_slug(contact.cluster), MAX_TEXT_BYTES);
        let cluster = cluster.as_str();
        let Ok(mut entries) = self.entries.lock() else {
            return;
        };
        let full = entries.len() >= MAX_RUNNERS;
        match entries.get_mut(contact.runner) {
            Some(entry) => {
                let seen = &mut entry.seen;
                seen.kind = contact.kind;
                if seen.cluster != cluster {
                    seen.cluster = cluster.to_string();
                }
                if seen.key_name != contact.key_name {
                    seen.key_name = contact.key_name.to_string();
                }
                if seen.hostname != hostname {
                    seen.hostname = hostname;
                }
                if seen.version != version {
                    seen.version = version;
                }
                seen.slots = contact.slots;
                seen.free_slots = contact.free_slots;
                if entry.identifiers_hash != hash {
                    seen.identifiers = owned(identifiers);
                    entry.identifiers_hash = hash;
                }
                seen.last_seen_at = seen.last_seen_at.max(now);
                entry.dirty = true;
            }
            None if full => {}
            None => {
                entries.insert(
                    bounded(contact.runner, MAX_RUNNER_BYTES),
                    Entry {
                        seen: RunnerSeen {
                            runner: bounded(contact.runner, MAX_RUNNER_BYTES),
                            kind: contact.kind,
                            cluster: cluster.to_string(),
                            key_name: contact.key_name.to_string(),
                            hostname,
                            version,
                            slots: contact.slots,
                            free_slots: contact.free_slots,
                            identifiers: owned(identifiers),
                            first_seen_at: now,
                            last_seen_at: now,
                        },
                        identifiers_hash: hash,
                        dirty: true,
                    },
                );
            }
        }
    }

    /// Records that `runner` called (a report, a lease extension, or the end of a claim with
    /// `free_slots` left), if it is known here: only its last contact (and free slots)
    /// moves. Answers whether it was known.
    pub fn refresh(&self, runner: &str, free_slots: Option<u32>) -> bool {
        self.refresh_at(runner, free_slots, now_millis())
    }

    fn refresh_at(&self, runner: &str, free_slots: Option<u32>, now: i64) -> bool {
        let Ok(mut entries) = self.entries.lock() else {
            return false;
        };
        match entries.get_mut(runner) {
            Some(entry) => {
                entry.seen.last_seen_at = entry.seen.last_seen_at.max(now);
                if let Some(free_slots) = free_slots {
                    entry.seen.free_slots = free_slots.min(entry.seen.slots);
                }
                entry.dirty = true;
                true
            }
            None => false,
        }
    }

    /// Records that `runner` said it stops (its last call): it is listed as stopped from now
    /// on, not connected until its timeout. Kept as no slots, which no running runner has.
    pub fn stop(&self, runner: &str) {
        let now = now_millis();
        if let Ok(mut entries) = self.entries.lock()
            && let Some(entry) = entries.get_mut(runner)
        {
            entry.seen.last_seen_at = entry.seen.last_seen_at.max(now);
            entry.seen.slots = 0;
            entry.seen.free_slots = 0;
            entry.dirty = true;
        }
    }

    /// Records a lease extension by `caller`: the runner itself, or, for the official SDK
    /// (whose lease renewer is a process of its own, on another connection), every runner of
    /// that key on that host (`host:<key>@<ip>`, any port).
    pub fn refresh_extension(&self, caller: &str) {
        if self.refresh(caller, None) {
            return;
        }
        let Some(host) = sdk_host(caller) else {
            return;
        };
        let now = now_millis();
        if let Ok(mut entries) = self.entries.lock() {
            for entry in entries.values_mut() {
                if sdk_host(&entry.seen.runner) == Some(host) {
                    entry.seen.last_seen_at = entry.seen.last_seen_at.max(now);
                    entry.dirty = true;
                }
            }
        }
    }

    /// Takes the contacts changed since the last flush, and drops entries gone for longer
    /// than the timeout twice over that are flushed (the store keeps them).
    fn take_dirty(&self, now: i64) -> Vec<RunnerSeen> {
        let Ok(mut entries) = self.entries.lock() else {
            return Vec::new();
        };
        let stale_before = now - 2 * millis(self.timeout);
        entries.retain(|_, entry| entry.dirty || entry.seen.last_seen_at >= stale_before);
        entries
            .values_mut()
            .filter(|entry| entry.dirty)
            .map(|entry| {
                entry.dirty = false;
                entry.seen.clone()
            })
            .collect()
    }

    /// Marks the contacts of a failed flush changed again, so the next flush writes them.
    fn mark_dirty(&self, runners: &[RunnerSeen]) {
        if let Ok(mut entries) = self.entries.lock() {
            for runner in runners {
                if let Some(entry) = entries.get_mut(&runner.runner) {
                    entry.dirty = true;
                }
            }
        }
    }

    /// Writes the changed contacts to the store in one batch.
    pub async fn flush(&self, store: &dyn Store) -> store::Result<()> {
        let changed = self.take_dirty(now_millis());
        if changed.is_empty() {
            return Ok(());
        }
        let Err(error) = store.record_runners(changed.clone()).await else {
            return Ok(());
        };
        // One row the store refuses must not hold back every other runner forever: each is
        // written alone; a row refused alone is dropped, a store that refuses them all is
        // down, and they are all written again at the next flush.
        let mut refused = Vec::new();
        for runner in &changed {
            if let Err(alone) = store.record_runners(vec![runner.clone()]).await {
                refused.push((runner, alone));
            }
        }
        if refused.len() == changed.len() {
            self.mark_dirty(&changed);
            return Err(error);
        }
        for (runner, alone) in refused {
            tracing::warn!(runner = %runner.runner, error = %alone, "the store refused a runner's presence; dropped it");
        }
        Ok(())
    }

    /// Flushes every [`FLUSH_PERIOD`] and forgets old runners now and then, until
    /// `shutdown`; then flushes once more.
    pub async fn run(
        self,
        store: Arc<dyn Store>,
        mut shutdown: tokio::sync::watch::Receiver<bool>,
    ) {
        let mut tick = tokio::time::interval(FLUSH_PERIOD);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut next_forget = tokio::time::Instant::now();
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = shutdown.changed() => break,
            }
            if let Err(error) = self.flush(store.as_ref()).await {
                tracing::warn!(%error, "cannot record runner presence; retrying at the next flush");
            }
            if tokio::time::Instant::now() >= next_forget {
                next_forget = tokio::time::Instant::now() + FORGET_PERIOD;
                let before = now_millis() - millis(FORGET_AFTER);
                match store.delete_runners_before(before).await {
                    Ok(0) => {}
                    Ok(count) => tracing::info!(count, "forgot runners unseen for a day"),
                    Err(error) => tracing::warn!(%error, "cannot forget old runners"),
                }
            }
        }
        match tokio::time::timeout(FINAL_FLUSH_TIMEOUT, self.flush(store.as_ref())).await {
            Ok(Ok(())) => {}
            Ok(Err(error)) => tracing::warn!(%error, "cannot record runner presence at shutdown"),
            Err(_) => {
                tracing::warn!(timeout = ?FINAL_FLUSH_TIMEOUT, "runner presence not recorded at shutdown: the store did not answer in time")
            }
        }
    }

    /// The runners of `cluster` (every cluster when `None`): those connected, and with
    /// `include_gone` those gone but not yet forgotten. The store's rows (every replica's
    /// flushes) with this server's newer contacts over them, by cluster, then runner.
    pub async fn list(
        &self,
        store: &dyn Store,
        cluster: Option<&str>,
        include_gone: bool,
    ) -> store::Result<Vec<Listed>> {
        let now = now_millis();
        let connected_since = now - millis(self.timeout);
        let since = if include_gone {
            now - millis(FORGET_AFTER)
        } else {
            connected_since
        };
        let cluster = cluster.map(cluster_slug);
        let mut runners: HashMap<String, RunnerSeen> = store
            .list_runners(cluster.map(str::to_string), since)
            .await?
            .into_iter()
            .map(|runner| (runner.runner.clone(), runner))
            .collect();
        if let Ok(entries) = self.entries.lock() {
            for entry in entries.values() {
                let seen = &entry.seen;
                if seen.last_seen_at < since || cluster.is_some_and(|slug| slug != seen.cluster) {
                    continue;
                }
                match runners.get_mut(&seen.runner) {
                    Some(stored) if stored.last_seen_at >= seen.last_seen_at => {}
                    Some(stored) => {
                        let first_seen_at = stored.first_seen_at.min(seen.first_seen_at);
                        *stored = RunnerSeen {
                            first_seen_at,
                            ..seen.clone()
                        };
                    }
                    None => {
                        runners.insert(seen.runner.clone(), seen.clone());
                    }
                }
            }
        }
        let mut listed: Vec<Listed> = runners
            .into_values()
            .map(|seen| Listed {
                connected: seen.last_seen_at >= connected_since && seen.slots > 0,
                seen,
            })
            // Without `include_gone`, a runner that said it stopped is left out too.
            .filter(|listed| include_gone || listed.connected)
            .collect();
        listed.sort_by(|a, b| {
            (&a.seen.cluster, &a.seen.runner).cmp(&(&b.seen.cluster, &b.seen.runner))
        });
        Ok(listed)
    }
}

/// `host:<key>@<ip>:<port>` answers `<key>@<ip>` (as `store::rules::host_of`).
fn sdk_host(caller: &str) -> Option<&str> {
    Some(caller.strip_prefix("host:")?.rsplit_once(':')?.0)
}

fn owned(identifiers: &[TaskIdentifier]) -> Vec<(String, String)> {
    identifiers
        .iter()
        .map(|identifier| {
            (
                bounded(&identifier.name, MAX_IDENTIFIER_BYTES),
                bounded(&identifier.version, MAX_IDENTIFIER_BYTES),
            )
        })
        .collect()
}

fn millis(duration: Duration) -> i64 {
    i64::try_from(duration.as_millis()).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::server::store::sqlite::SqliteStore;

    fn identifiers(names: &[&str]) -> Vec<TaskIdentifier> {
        names
            .iter()
            .map(|name| TaskIdentifier {
                name: name.to_string(),
                version: "v1.0".to_string(),
            })
            .collect()
    }

    fn contact<'a>(runner: &'a str, identifiers: &'a [TaskIdentifier]) -> Contact<'a> {
        Contact {
            runner,
            kind: RunnerKind::Tilebox,
            cluster: "",
            key_name: "ops",
            hostname: "worker-1",
            version: "0.1.0",
            slots: 2,
            free_slots: 1,
            identifiers,
        }
    }

    #[test]
    fn a_runner_that_says_it_stops_is_not_connected() {
        let presence = Presence::new(DEFAULT_TIMEOUT);
        presence.touch(contact("runner:ops/a", &[]));
        presence.touch(contact("runner:ops/b", &[]));
        presence.stop("runner:ops/a");
        presence.stop("runner:ops/unknown");
        let entries = presence.entries.lock().expect("lock");
        assert_eq!(entries["runner:ops/a"].seen.slots, 0);
        assert!(entries["runner:ops/a"].dirty);
        assert_eq!(entries["runner:ops/b"].seen.slots, 2);
        assert_eq!(entries.len(), 2, "an unknown runner is not added");
    }

    #[test]
    fn what_a_runner_says_of_itself_is_bounded() {
        let presence = Presence::new(DEFAULT_TIMEOUT);
        let many: Vec<TaskIdentifier> = (0..1_500)
            .map(|index| TaskIdentifier {
                name: format!("T{index}{}", "x".repeat(400)),
                version: "v1.0".into(),
            })
            .collect();
        let hostname = format!("a\u{0}b\nc{}", "é".repeat(300));
        presence.touch_at(
            Contact {
                hostname: &hostname,
                version: "1\u{0}",
                ..contact("runner:ops/a", &many)
            },
            1_000,
        );
        let seen = presence.take_dirty(1_000).pop().expect("recorded");
        assert!(
            seen.hostname.len() <= MAX_TEXT_BYTES,
            "{}",
            seen.hostname.len()
        );
        assert!(
            seen.hostname.starts_with("a\u{FFFD}b\u{FFFD}c"),
            "{}",
            seen.hostname
        );
        assert!(!seen.version.contains('\0'));
        assert_eq!(
            seen.identifiers.len(),
            crate::api::limits::MAX_IDENTIFIERS_PER_CLAIM
        );
        assert!(
            seen.identifiers
                .iter()
                .all(|(name, _)| name.len() <= MAX_IDENTIFIER_BYTES)
        );
        // A runner id past the limit is not recorded; nor are runners past MAX_RUNNERS.
        let long = format!("runner:ops/{}", "r".repeat(MAX_RUNNER_BYTES));
        presence.touch_at(contact(&long, &[]), 1_000);
        for index in 0..MAX_RUNNERS + 5 {
            presence.touch_at(contact(&format!("runner:ops/{index}"), &[]), 1_000);
        }
        let entries = presence.entries.lock().expect("lock");
        assert_eq!(entries.len(), MAX_RUNNERS);
        assert!(!entries.contains_key(&long));
    }

    #[test]
    fn touches_update_one_entry_and_only_changed_entries_flush() {
        let presence = Presence::new(DEFAULT_TIMEOUT);
        let tile = identifiers(&["Tile"]);
        presence.touch_at(contact("runner:ops/a", &tile), 1_000);
        let both = identifiers(&["Tile", "Mosaic"]);
        presence.touch_at(contact("runner:ops/a", &both), 2_000);
        let flushed = presence.take_dirty(2_000);
        assert_eq!(flushed.len(), 1);
        assert_eq!(flushed[0].cluster, store::DEFAULT_CLUSTER_SLUG);
        assert_eq!(
            (flushed[0].first_seen_at, flushed[0].last_seen_at),
            (1_000, 2_000)
        );
        assert_eq!(
            flushed[0].identifiers,
            [
                ("Tile".to_string(), "v1.0".to_string()),
                ("Mosaic".to_string(), "v1.0".to_string())
            ]
        );
        assert!(
            presence.take_dirty(2_000).is_empty(),
            "nothing changed since"
        );
        assert!(presence.refresh_at("runner:ops/a", Some(0), 3_000));
        assert!(!presence.refresh_at("runner:ops/unknown", None, 3_000));
        let refreshed = presence.take_dirty(3_000);
        assert_eq!(
            (refreshed[0].last_seen_at, refreshed[0].free_slots),
            (3_000, 0)
        );
        // Long unseen and flushed: dropped from memory.
        assert!(presence.take_dirty(3_000 + 2 * 15_000 + 1).is_empty());
        assert!(presence.entries.lock().expect("lock").is_empty());
    }

    #[test]
    fn an_sdk_lease_renewer_refreshes_the_runners_of_its_key_on_its_host() {
        let presence = Presence::new(DEFAULT_TIMEOUT);
        let none = identifiers(&[]);
        presence.touch_at(contact("host:ops@10.0.0.5:4000", &none), 1_000);
        presence.touch_at(contact("host:ci@10.0.0.5:4001", &none), 1_000);
        presence.take_dirty(1_000);
        presence.refresh_extension("host:ops@10.0.0.5:5123");
        let refreshed = presence.take_dirty(1_000);
        assert_eq!(refreshed.len(), 1, "{refreshed:?}");
        assert_eq!(refreshed[0].runner, "host:ops@10.0.0.5:4000");
    }

    #[tokio::test]
    async fn listing_merges_the_store_with_newer_local_contacts() {
        let directory = tempfile::tempdir().expect("temp dir");
        let store = SqliteStore::open(directory.path()).expect("open");
        let presence = Presence::new(Duration::from_secs(5));
        let now = now_millis();
        let tile = identifiers(&["Tile"]);
        presence.touch_at(contact("runner:ops/here", &tile), now);
        let mut elsewhere = RunnerSeen {
            runner: "runner:ops/elsewhere".to_string(),
            kind: RunnerKind::Sdk,
            cluster: "default".to_string(),
            key_name: "ops".to_string(),
            hostname: String::new(),
            version: String::new(),
            slots: 1,
            free_slots: 1,
            identifiers: Vec::new(),
            first_seen_at: now - 60_000,
            last_seen_at: now - 60_000,
        };
        store
            .record_runners(vec![elsewhere.clone()])
            .await
            .expect("record");
        let listed = presence.list(&store, None, false).await.expect("list");
        assert_eq!(listed.len(), 1, "the gone runner is left out: {listed:?}");
        assert!(listed[0].connected);
        assert_eq!(listed[0].seen.runner, "runner:ops/here");

        let all = presence.list(&store, Some(""), true).await.expect("list");
        elsewhere.identifiers = Vec::new();
        assert_eq!(
            all.iter()
                .map(|runner| (runner.seen.runner.as_str(), runner.connected))
                .collect::<Vec<_>>(),
            [("runner:ops/elsewhere", false), ("runner:ops/here", true)]
        );
        assert!(
            presence
                .list(&store, Some("gpu"), true)
                .await
                .expect("list")
                .is_empty()
        );
        presence.flush(&store).await.expect("flush");
        assert_eq!(store.list_runners(None, 0).await.expect("list").len(), 2);
    }
}
